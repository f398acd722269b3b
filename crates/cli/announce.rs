//! The lines `megaconn serve` prints on stdout for scripts, process managers
//! and its own supervisor to wait for, written here only, so that one
//! process and a supervisor of worker processes (`--processes`) say them
//! alike:
//!
//! | line | said |
//! |---|---|
//! | `megaconn serving on URL, URL (…)` | once its listeners listen (taking over: before it serves, see below) |
//! | `megaconn upgrade done: took over …` | `serve --upgrade`: it serves, and a next upgrade may come (deploy/README.md) |
//! | `megaconn upgrade done, but not all of it …` | as above, with something missing, said above it |
//!
//! A supervisor reads its worker processes' lines (by these prefixes) to
//! know when each serves, and says its own once every one does. It used to
//! say only `megaconn serving on ADDR` (no scheme) after an upgrade, never
//! `megaconn upgrade done`, which deploy scripts wait for.
//!
//! With `--log-format json` these lines are JSON too ([`say`]), as every
//! line the process writes is: a log pipeline reading a container's output
//! (stdout and stderr as one stream, under Kubernetes) met plain lines
//! among its JSON ones. Each is then a log line of the subscriber's shape
//! whose message is the plain line, unchanged, still on stdout:
//! `{"timestamp":…,"level":"INFO","fields":{"message":"megaconn serving on
//! …"},"target":"megaconn::announce"}`. A script that waits for a line
//! by its words (`grep -m1 'megaconn upgrade done'`) finds it in either
//! format, one anchored at the line's start (`^megaconn`) reads the
//! message (`jq -r .fields.message`), and a supervisor reads its worker
//! processes' lines through [`message_of`]. The human format (the default)
//! writes them as before. So do the last words of a process that exits
//! ([`last_words`]): its error, a second signal's exit.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The target of the JSON lines [`say`] writes.
const TARGET: &str = "megaconn::announce";

/// Writes `line` on stdout (a closed stdout is no error: a supervisor or
/// pipe that went away must not turn into a panic); in JSON mode as the
/// message of a JSON log line ([`json_line`]).
pub fn say(line: fmt::Arguments<'_>) {
    let _ = std::io::stdout().write_all(format_line("INFO", TARGET, line).as_bytes());
}

/// Writes the last words of a process about to exit on stderr, unfiltered
/// (whatever `RUST_LOG` says): as they are, or in JSON mode as an ERROR
/// line's message; a worker process's with its index, as its log lines
/// (`worker_process=K`): the worker processes share the supervisor's
/// stderr, and one's error could not be told from another's. A failed
/// write is ignored (see [`say`]).
pub fn last_words(line: fmt::Arguments<'_>) {
    let line = crate::logging::tag_worker_process(format_line("ERROR", "megaconn", line));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `line` as the log format wants it, ending in a newline: as it is, or as
/// the message of a JSON line at `level` from `target`.
fn format_line(level: &str, target: &str, line: fmt::Arguments<'_>) -> String {
    match crate::logging::format() {
        crate::logging::LogFormat::Human => format!("{line}\n"),
        crate::logging::LogFormat::Json => {
            format!("{}\n", json_line(level, target, &line.to_string()))
        }
    }
}

/// A JSON log line as the subscriber writes one (`--log-format json`):
/// its time, `level`, `message` and `target`.
fn json_line(level: &str, target: &str, message: &str) -> String {
    use tracing_subscriber::fmt::time::FormatTime as _;
    let mut now = String::new();
    let _ = tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut now));
    let text = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\"timestamp\":{},\"level\":{},\"fields\":{{\"message\":{}}},\"target\":{}}}",
        text(&now),
        text(level),
        text(message),
        text(target)
    )
}

/// What a line [`say`] wrote says: the line itself, or the message of a
/// JSON one. A supervisor reads its worker processes' lines with it.
pub fn message_of(line: &str) -> std::borrow::Cow<'_, str> {
    if line.starts_with('{') {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(message) = value["fields"]["message"].as_str() {
                return message.to_owned().into();
            }
        }
    }
    line.into()
}

/// The start of the line that says a process serves its listeners.
pub const SERVING_ON: &str = "megaconn serving on";

/// The start of the line that says a process taking over (`serve
/// --upgrade`) serves: the old one has stopped accepting and handed its
/// parked connections over. What deploy scripts wait for.
pub const UPGRADE_DONE: &str = "megaconn upgrade done";

/// How a listener is addressed: `tcp://` for a framed one, `https://` for
/// TLS, else `http://`.
pub fn listen_url(addr: SocketAddr, framed: bool, tls: bool) -> String {
    let scheme = if framed {
        "tcp"
    } else if tls {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// `megaconn serving on URL, URL (details)`.
pub fn serving_line(urls: &[String], details: fmt::Arguments<'_>) -> String {
    format!("{SERVING_ON} {} ({details})", urls.join(", "))
}

/// `n` and its noun, singular for one: `1 worker`, `2 workers`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `megaconn stopped: …`, what a server did over its life, `processes`
/// when a supervisor adds up its worker processes'. "Served" are the
/// requests handed to the service but for those the forced shutdown (at
/// `shutdown_timeout`) cut off, said apart when there are any (`1 cut off
/// by the forced shutdown`; `ServerStats::requests_forced`): it counted
/// them as served. The HTTP requests refused (a malformed
/// or oversized head, a body over its limit: `megaconn_requests_total`
/// counts them too, by their status) are said apart. It said `0 requests`
/// after four refused heads. So are the other protocol errors (a
/// WebSocket's bad frame, a framed connection's broken framing, an HTTP/2
/// `GOAWAY`, a failed TLS handshake), which it used to count as refused
/// requests.
pub fn stopped_line(processes: Option<usize>, stats: &megaconn::ServerStats) -> String {
    let processes = processes.map_or(String::new(), |p| {
        format!(
            "{}, ",
            count(p as u64, "worker process", "worker processes")
        )
    });
    // Every refusal is a protocol error too (`ServerStats::requests_refused`).
    let other = stats.protocol_errors.saturating_sub(stats.requests_refused);
    let served = stats.requests.saturating_sub(stats.requests_forced);
    let forced = match stats.requests_forced {
        0 => String::new(),
        n => format!(", {n} cut off by the forced shutdown (shutdown_timeout)"),
    };
    format!(
        "megaconn stopped: {processes}{} accepted, {} served{forced}, {} refused as malformed or over a limit, {} closed for another protocol error (WebSocket, framed, HTTP/2, TLS)",
        count(stats.accepted, "connection", "connections"),
        count(served, "request", "requests"),
        stats.requests_refused,
        count(other, "connection", "connections"),
    )
}

/// From this many connections left to a drain that closes them all at once
/// (no `--shutdown-drain-rate`), the upgrade's and the stop's lines warn:
/// their clients all reconnect in the same second (10,000 WebSockets all
/// got their `1001` within one at an SRE review's upgrade).
pub const RECONNECT_STORM_AT: usize = 1_000;

/// What the storm warning says after the counts.
const STORM: &str = "will be closed at once; clients reconnect together: set --shutdown-drain-rate";

/// What a drain is left with as it begins: the connections that did not
/// move to the new process at an upgrade (idle cleartext HTTP/1.1 ones
/// and idle cleartext framed ones whose handler exports move), or all of
/// them at a stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Draining {
    /// Connections left to the drain.
    pub left: usize,
    /// Of them, WebSockets and framed connections (ws and wss, framed over
    /// TLS or not): they are told goodbye and closed, and their clients
    /// reconnect.
    pub messages: usize,
    /// `--shutdown-drain-rate`, if set.
    pub drain_rate: Option<u32>,
}

impl Draining {
    /// What an upgrade's drain is left with, as the old server's workers
    /// counted it at the hand-over (`ParkedHandOver::left_to_drain`). It
    /// was the connections open before the hand-over less those taken out
    /// of the lots: a batch dropped unsent after a failed send stayed
    /// counted, and without a hub the awake message connections that
    /// parked to move were taken out of a count they were never in.
    pub fn left(left: megaconn::LeftToDrain, drain_rate: Option<u32>) -> Draining {
        Draining {
            left: left.connections,
            messages: left.message_connections,
            drain_rate,
        }
    }

    /// What the drain is left with: `4 connections (3 WebSocket/framed/SSE)`.
    pub fn counts(self) -> String {
        format!(
            "{} ({} WebSocket/framed/SSE)",
            count(self.left as u64, "connection", "connections"),
            self.messages
        )
    }

    /// The warning for a drain that closes at least [`RECONNECT_STORM_AT`]
    /// connections at once; `None` otherwise (or with a drain rate).
    pub fn storm_warning(self) -> Option<String> {
        (self.drain_rate.is_none() && self.left >= RECONNECT_STORM_AT)
            .then(|| format!("{} {STORM}", self.counts()))
    }
}

/// The old process's line once it handed over: what moved, and what is
/// left to its drain (`draining`), which cannot move: WebSockets, framed
/// connections busy or not opted in, TLS and HTTP/2 connections, and
/// requests in flight.
pub fn handed_over_line(new_pid: u32, listeners: usize, sent: usize, draining: Draining) -> String {
    // The counts are said once; the warning's own, for the log, repeats them.
    let storm = match draining.storm_warning() {
        Some(_) => format!("; they {STORM}"),
        None => String::new(),
    };
    format!(
        "megaconn handed over to pid {new_pid}: {listeners} listening sockets, {sent} parked connections; draining {} that cannot move (WebSocket, framed, SSE, TLS, HTTP/2, busy){storm}",
        draining.counts()
    )
}

/// What an upgrade took over, as `megaconn upgrade done` says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Listening sockets.
    pub sockets: usize,
    /// Parked (idle) connections.
    pub parked: usize,
}

impl Moved {
    /// The line for an upgrade done in full: `self` moved in `elapsed`,
    /// `by` says by whom when not one process (` by 3 worker processes`),
    /// `next` is the `--upgrade-socket` of the next upgrade.
    pub fn done_line(self, elapsed: Duration, by: &str, next: &Path) -> String {
        format!(
            "{UPGRADE_DONE}: took over {} listening sockets and {} parked connections in {} ms{by}; next upgrade on {}",
            self.sockets,
            self.parked,
            elapsed.as_millis(),
            next.display()
        )
    }

    /// What a [`done_line`](Moved::done_line) says was moved; `None` for any
    /// other line (a partly done upgrade's among them).
    pub fn parse(line: &str) -> Option<Moved> {
        let rest = line
            .strip_prefix(UPGRADE_DONE)?
            .strip_prefix(": took over ")?;
        let (sockets, rest) = rest.split_once(" listening sockets and ")?;
        let (parked, _) = rest.split_once(" parked connections in ")?;
        Some(Moved {
            sockets: sockets.parse().ok()?,
            parked: parked.parse().ok()?,
        })
    }
}

/// The line for an upgrade done, but not in full: `what` it serves, and
/// without what (the error is logged above it).
pub fn partly_done_line(what: fmt::Arguments<'_>) -> String {
    format!("{UPGRADE_DONE}, but not all of it (see the error above): {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One is singular, in the stop line as anywhere `count` is used.
    #[test]
    fn the_stopped_line_says_one_in_the_singular() {
        let mut stats = megaconn::ServerStats::default();
        stats.accepted = 1;
        stats.requests = 1;
        assert_eq!(
            stopped_line(Some(1), &stats),
            "megaconn stopped: 1 worker process, 1 connection accepted, 1 request served, 0 refused as malformed or over a limit, 0 connections closed for another protocol error (WebSocket, framed, HTTP/2, TLS)"
        );
        stats.accepted = 5;
        stats.requests = 0;
        stats.protocol_errors = 5;
        stats.requests_refused = 4;
        assert_eq!(
            stopped_line(None, &stats),
            "megaconn stopped: 5 connections accepted, 0 requests served, 4 refused as malformed or over a limit, 1 connection closed for another protocol error (WebSocket, framed, HTTP/2, TLS)"
        );
        stats.requests = 3;
        stats.requests_forced = 2;
        assert_eq!(
            stopped_line(None, &stats),
            "megaconn stopped: 5 connections accepted, 1 request served, 2 cut off by the forced shutdown (shutdown_timeout), 4 refused as malformed or over a limit, 1 connection closed for another protocol error (WebSocket, framed, HTTP/2, TLS)"
        );
    }

    /// The hand-over line says what is left to the drain, and warns of a
    /// reconnect storm from [`RECONNECT_STORM_AT`] on, naming the flag,
    /// unless a drain rate is set. It said only what moved ("0 parked
    /// connections; draining") while 10,000 WebSockets were about to be
    /// closed in the same second.
    #[test]
    fn the_hand_over_line_counts_what_cannot_move_and_warns_of_a_storm() {
        let few = Draining {
            left: 4,
            messages: 3,
            drain_rate: None,
        };
        assert_eq!(
            handed_over_line(7, 5, 2, few),
            "megaconn handed over to pid 7: 5 listening sockets, 2 parked connections; draining 4 connections (3 WebSocket/framed/SSE) that cannot move (WebSocket, framed, SSE, TLS, HTTP/2, busy)"
        );
        assert_eq!(few.storm_warning(), None);
        let many = Draining {
            left: RECONNECT_STORM_AT,
            messages: RECONNECT_STORM_AT - 1,
            drain_rate: None,
        };
        let line = handed_over_line(7, 5, 0, many);
        assert!(
            line.ends_with("draining 1000 connections (999 WebSocket/framed/SSE) that cannot move (WebSocket, framed, SSE, TLS, HTTP/2, busy); they will be closed at once; clients reconnect together: set --shutdown-drain-rate"),
            "{line}"
        );
        assert_eq!(
            many.storm_warning().unwrap(),
            "1000 connections (999 WebSocket/framed/SSE) will be closed at once; clients reconnect together: set --shutdown-drain-rate"
        );
        let paced = Draining {
            drain_rate: Some(500),
            ..many
        };
        assert_eq!(paced.storm_warning(), None);
        assert!(!handed_over_line(7, 5, 0, paced).contains("--shutdown-drain-rate"));
        let just_under = Draining {
            left: RECONNECT_STORM_AT - 1,
            ..many
        };
        assert_eq!(just_under.storm_warning(), None);
    }

    /// A JSON line says the plain line as its message, which a supervisor
    /// reads back; a plain line reads as itself.
    #[test]
    fn a_json_line_carries_the_plain_line() {
        let plain = "megaconn serving on http://127.0.0.1:1 (1 worker, \"quoted\")";
        let line = json_line("INFO", TARGET, plain);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["fields"]["message"], plain, "{line}");
        assert_eq!(value["level"], "INFO", "{line}");
        assert_eq!(value["target"], TARGET, "{line}");
        assert!(
            value["timestamp"].as_str().unwrap().starts_with("20"),
            "{line}"
        );
        assert_eq!(message_of(&line), plain);
        assert_eq!(message_of(plain), plain);
    }

    /// A supervisor adds up its worker processes' figures from their lines.
    #[test]
    fn a_done_line_parses_back() {
        let moved = Moved {
            sockets: 3,
            parked: 15_000,
        };
        let line = moved.done_line(Duration::from_millis(42), "", Path::new("/run/m.sock"));
        assert!(line.starts_with(UPGRADE_DONE), "{line}");
        assert_eq!(Moved::parse(&line), Some(moved));
        let partly = partly_done_line(format_args!("serving"));
        assert!(partly.starts_with(UPGRADE_DONE), "{partly}");
        assert_eq!(Moved::parse(&partly), None);
    }
}
