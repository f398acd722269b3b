//! Log output: human-readable on a terminal, JSON lines with `--log-format json`.
//! The level comes from `RUST_LOG` (default [`DEFAULT_FILTER`]: `info`, and
//! the `h2` crate's own lines only at `error`).
//!
//! One more layer sits on the subscriber: a test gate that makes a worker
//! panic at its hand-over's line (`upgrade::WorkerPanic`, debug builds
//! only, when a test sets its variable). Otherwise it is `None`, and an
//! `Option` of a layer that is `None` is a layer that does nothing (it
//! takes no event and filters none out), so that the subscriber is built
//! the same way in every build. Being a layer, it sees only what the
//! filter above lets through.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
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

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
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
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(panic)
            .init(),
        LogFormat::Json => builder.json().finish().with(panic).init(),
    }
    if let Some((value, error)) = bad {
        tracing::warn!(RUST_LOG = %value, %error, "RUST_LOG is not a valid filter (e.g. info, megaconn=debug,warn); logging at the default ({DEFAULT_FILTER})");
    }
    // A panic on a worker (caught, the worker serves on) is one log line in
    // this format, rate-limited, not the standard hook's stderr lines.
    megaconn::install_panic_hook();
}
