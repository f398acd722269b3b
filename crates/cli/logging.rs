//! Log output: human-readable on a terminal, JSON lines with `--log-format json`.
//! The level comes from `RUST_LOG` (default [`DEFAULT_FILTER`]: `info`, and
//! the `h2` crate's own lines only at `error`).
//!
//! A worker process of a supervisor (`serve --processes`) tags every line
//! it logs with its index, `worker_process=K` (JSON: a top-level
//! `"worker_process":K`), [`Tagged`]: the processes share the supervisor's
//! stderr, and their lines could not be told apart. A field of the
//! formatter, not a span: a span is entered per thread, and a process has
//! many (its runtimes' workers, the control socket's, a panic's).
//!
//! The format chosen is kept ([`format`]) for the lines written outside the
//! subscriber: `announce.rs`'s lines on stdout, and the last words of a
//! process that exits, which are JSON too in JSON mode; so is the worker
//! process's index, which its last words on the shared stderr carry as its
//! log lines do ([`tag_worker_process`]).
//!
//! One more layer sits on the subscriber: a test gate that makes a worker
//! panic at its hand-over's line (`upgrade::WorkerPanic`, debug builds
//! only, when a test sets its variable). Otherwise it is `None`, and an
//! `Option` of a layer that is `None` is a layer that does nothing (it
//! takes no event and filters none out), so that the subscriber is built
//! the same way in every build. Being a layer, it sees only what the
//! filter above lets through.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self as format_, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable (colours on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// The filter without `RUST_LOG`. `h2` logs some of a client's abuse
/// itself, at WARN and once per connection, not rate-limited (a rapid
/// reset's "remotely-reset pending-accept streams reached limit", a PING
/// ack never asked for): one client could write a line per connection at
/// will. megaconn counts the closes these end in
/// (`megaconn_limit_hits_total{limit="h2_enhance_your_calm"}`) and logs them
/// itself at most once per 5 s per worker, so h2's own lines add nothing
/// but the flood. A `RUST_LOG` replaces the whole filter (`RUST_LOG=info`
/// brings h2's lines back).
pub const DEFAULT_FILTER: &str = "info,h2=error";

/// The format [`init_for`] installed.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The index [`init_for`] was given: this is that worker process.
static WORKER_PROCESS: OnceLock<usize> = OnceLock::new();

/// The log format of this process: what [`init_for`] installed, human before.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Human)
}

/// The field a worker process's lines carry: its index.
pub const WORKER_PROCESS_FIELD: &str = "worker_process";

/// `line` (one line, ending in a newline: plain, or a JSON object in JSON
/// mode) with this worker process's index added as its log lines carry it
/// ([`tag`]); as it is in any other process.
pub fn tag_worker_process(line: String) -> String {
    match WORKER_PROCESS.get() {
        Some(&index) => tag(&line, index, format() == LogFormat::Json, false),
        None => line,
    }
}

/// Chooses the format of the lines written outside the subscriber (the
/// last words of a process that fails before [`init_for`]: a configuration
/// error) before the subscriber is installed; [`init_for`] later installs
/// the same one.
pub fn choose(format: LogFormat) {
    let _ = FORMAT.set(format);
}

/// Installs the global subscriber; `worker_process`: this process is the
/// supervisor's worker process of that index, and every line says so.
pub fn init_for(format: LogFormat, worker_process: Option<usize>) {
    let _ = FORMAT.set(format);
    if let Some(index) = worker_process {
        let _ = WORKER_PROCESS.set(index);
    }
    // A `RUST_LOG` that does not parse falls back to the default, and says so
    // once the subscriber is up (it used to fall back in silence).
    let mut bad = None;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|e| {
        if let Ok(value) = std::env::var(EnvFilter::DEFAULT_ENV) {
            bad = Some((value, e));
        }
        EnvFilter::new(DEFAULT_FILTER)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A test's worker panic (debug builds only; none otherwise).
    let panic = crate::upgrade::WorkerPanic::from_env();
    match format {
        LogFormat::Human => {
            let ansi = std::io::stderr().is_terminal();
            builder
                .with_ansi(ansi)
                .event_format(Tagged {
                    // Told here: it formats into a buffer of `Tagged`'s,
                    // which has no say on colours.
                    inner: format_::Format::default().with_ansi(ansi),
                    worker_process,
                    json: false,
                    ansi,
                })
                .finish()
                .with(panic)
                .init()
        }
        LogFormat::Json => builder
            .json()
            .event_format(Tagged {
                inner: format_::Format::default().json(),
                worker_process,
                json: true,
                ansi: false,
            })
            .finish()
            .with(panic)
            .init(),
    }
    if let Some((value, error)) = bad {
        tracing::warn!(RUST_LOG = %value, %error, "RUST_LOG is not a valid filter (e.g. info, megaconn=debug,warn); logging at the default ({DEFAULT_FILTER})");
    }
    // A panic on a worker (caught, the worker serves on) is one log line in
    // this format, rate-limited, not the standard hook's stderr lines.
    megaconn::install_panic_hook();
}

/// The line formatter: `inner`'s line, with the worker process's index
/// added last when there is one (the line as it is otherwise, written
/// straight through).
struct Tagged<F> {
    inner: F,
    worker_process: Option<usize>,
    json: bool,
    ansi: bool,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(index) = self.worker_process else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&tag(&line, index, self.json, self.ansi))
    }
}

/// `line` (one formatted event, ending in a newline) with the field
/// `worker_process` = `index` added last: in a JSON object, or as the
/// human format writes a field (in its colours with `ansi`). A line of
/// another shape is left as it is.
fn tag(line: &str, index: usize, json: bool, ansi: bool) -> String {
    let mut out = String::with_capacity(line.len() + 24);
    if json {
        match line.strip_suffix("}\n") {
            Some(object) => {
                let _ = writeln!(out, "{object},\"{WORKER_PROCESS_FIELD}\":{index}}}");
            }
            None => out.push_str(line),
        }
        return out;
    }
    let (body, end) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    out.push_str(body);
    if ansi {
        // As tracing-subscriber writes a field: the name in italics, `=`
        // dimmed.
        let _ = write!(
            out,
            " \x1b[3m{WORKER_PROCESS_FIELD}\x1b[0m\x1b[2m=\x1b[0m{index}"
        );
    } else {
        let _ = write!(out, " {WORKER_PROCESS_FIELD}={index}");
    }
    out.push_str(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index is a field like the line's others, last: a JSON object's
    /// key, or `name=value`.
    #[test]
    fn a_worker_process_line_is_tagged_with_its_index() {
        assert_eq!(
            tag(
                "{\"level\":\"INFO\",\"fields\":{\"message\":\"hi\"}}\n",
                3,
                true,
                false
            ),
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"hi\"},\"worker_process\":3}\n"
        );
        assert_eq!(
            tag("2026 INFO megaconn: hi a=1\n", 0, false, false),
            "2026 INFO megaconn: hi a=1 worker_process=0\n"
        );
    }
}
