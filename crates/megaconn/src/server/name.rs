//! A server's name ([`Builder::name`](crate::Builder::name)): what tells two
//! servers of one process apart (a public API and an internal admin one,
//! or two protocols) in their threads' names, their log lines and their
//! metrics. This file owns what a name may be and the threads' names made
//! from it; the span is `log_scope.rs`'s, the `server` label
//! `observe/metrics.rs`'s.

use crate::error::Error;
use crate::observe::ratelog::WORKER_THREAD;
use crate::server::builder::Builder;

/// The longest name a server may have, in bytes. A thread's name shows 15
/// bytes in `top -H`, `ps -L` and `perf` (the kernel's `comm`), so the
/// short names (`public`, `admin`) read best.
pub(crate) const MAX_SERVER_NAME_BYTES: usize = 64;

impl Builder {
    /// Names this server, to tell it apart from the others of its process
    /// (a public API and an internal admin or metrics one, or two
    /// protocols). Default: none, and everything is as without this.
    ///
    /// - **Threads:** its workers are `NAME-worker-N` (unnamed:
    ///   `megaconn-worker-N`), their blocking threads (a handler's
    ///   `spawn_blocking`) `NAME-blocking-N` (unnamed: `megaconn-blocking-N`),
    ///   its stall watchdog `NAME-stall-watch`, the thread that joins its
    ///   workers `NAME-join` (unnamed: `megaconn-join`); an
    ///   [`Error::Thread`] names a thread that could not be started the
    ///   same way. `top -H`, `ps -L` and `perf`
    ///   show a thread name's first 15 bytes: a short name shows whole.
    /// - **Logs:** every line logged on those threads, megaconn's and its
    ///   handlers', is inside a span `megaconn` with a field `server=NAME`
    ///   (`fmt` writes `megaconn{server=NAME}: ` before the target; its
    ///   JSON has it in `span` and `spans`). The span is entered once on
    ///   each thread, for the thread's life: nothing per request or per
    ///   connection; a line costs its subscriber one more span to write.
    ///   At `ERROR` level, so that a level filter never leaves it out.
    /// - **Metrics:** the series
    ///   [`ServerHandle::register_metrics`](crate::ServerHandle::register_metrics)
    ///   puts into an application's registry carry `server="NAME"`, so
    ///   several named servers share one registry (each family once, a
    ///   series per server). [`ServerHandle::render_metrics`](crate::ServerHandle::render_metrics),
    ///   the server's own exposition, stays without it.
    ///
    /// A span a handler opens without a parent of its own is a child of
    /// the name's span, as of any span current where it is opened: an
    /// application exporting `tracing` spans as OpenTelemetry traces
    /// (`tracing-opentelemetry`) keeps the name's span out of that layer
    /// with a per-layer filter (`filter_fn(|m| !(m.is_span() && m.name() ==
    /// "megaconn"))`), else its request spans would all join one trace.
    ///
    /// 1 to 64 ASCII letters, digits, `-`, `_` or `.` (it goes unescaped
    /// into thread names, a label and log lines), else
    /// [`listen`](Builder::listen) returns [`Error::Config`].
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        let name: String = name.into();
        self.name = Some(name.into());
        self
    }
}

/// Why `name` cannot name a server: empty, longer than
/// [`MAX_SERVER_NAME_BYTES`], or with a byte other than an ASCII letter,
/// digit, `-`, `_` or `.`. Those are refused because the name goes
/// unescaped into a thread's name (no NUL), a `server` label's value (no
/// quote, backslash or newline) and log lines (no control character).
pub(crate) fn check(name: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > MAX_SERVER_NAME_BYTES || !name.bytes().all(allowed) {
        return Err(Error::Config(format!(
            "server name {name:?}: 1 to {MAX_SERVER_NAME_BYTES} ASCII letters, digits, \
             '-', '_' or '.' (it names threads, a metrics label and a log field)"
        )));
    }
    Ok(())
}

/// Worker `index`'s thread: `megaconn-worker-0` unnamed (as before names
/// existed), `public-worker-0` for a server named `public`.
pub(crate) fn worker_thread(name: Option<&str>, index: usize) -> String {
    match name {
        None => format!("{WORKER_THREAD}{index}"),
        Some(name) => format!("{name}-worker-{index}"),
    }
}

/// The threads of worker `index`'s blocking pool (a handler's
/// `spawn_blocking`; tokio's default is `tokio-rt-worker`).
pub(crate) fn blocking_thread(name: Option<&str>, index: usize) -> String {
    format!("{}-blocking-{index}", name.unwrap_or("megaconn"))
}

/// The stall watchdog's thread (`stall::THREAD_NAME` unnamed).
pub(crate) fn watchdog_thread(name: Option<&str>) -> String {
    match name {
        None => crate::server::stall::THREAD_NAME.to_owned(),
        Some(name) => format!("{name}-stall-watch"),
    }
}

/// The thread that joins the server's workers (`Server::start`'s first):
/// `megaconn-join` unnamed, `public-join` for a server named `public`.
pub(crate) fn join_thread(name: Option<&str>) -> String {
    format!("{}-join", name.unwrap_or("megaconn"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_short_and_plain() {
        for good in [
            "public",
            "admin-1",
            "a.b_c",
            &"x".repeat(MAX_SERVER_NAME_BYTES),
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_SERVER_NAME_BYTES + 1);
        for bad in ["", "a b", "a\"b", "a\\b", "a\nb", "a\0b", "é", &long] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn threads_are_named_after_the_server() {
        assert_eq!(worker_thread(None, 2), "megaconn-worker-2");
        assert_eq!(worker_thread(Some("public"), 0), "public-worker-0");
        assert_eq!(blocking_thread(None, 1), "megaconn-blocking-1");
        assert_eq!(blocking_thread(Some("admin"), 0), "admin-blocking-0");
        assert_eq!(watchdog_thread(None), "megaconn-stall-watch");
        assert_eq!(watchdog_thread(Some("admin")), "admin-stall-watch");
        assert_eq!(join_thread(None), "megaconn-join");
        assert_eq!(join_thread(Some("admin")), "admin-join");
    }
}
