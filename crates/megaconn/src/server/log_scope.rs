//! Where the server's own threads log: the `tracing` subscriber of the
//! thread that started the server, when that one is scoped to it.
//!
//! A worker, and the stall watchdog, is a thread of megaconn's, made by
//! `Server::start` on the caller's thread. A new thread logs to the global
//! default subscriber and never sees one the caller set for its own thread
//! (`tracing::subscriber::set_default`, `with_default`): an application's
//! test that captures its logs so got none of megaconn's lines (its access
//! log, its warnings), where under `axum::serve` in a `#[tokio::test]` (one
//! thread) it got every line. So such a subscriber is carried to the
//! server's threads. A global one needs nothing (every thread has it), and
//! is not carried: setting a thread's scoped default costs every event
//! logged in the process a thread-local lookup from then on (`tracing-core`
//! reads the global directly while no thread has a scoped one), and a
//! subscriber set globally after the start would be hidden by one taken
//! before it.
//!
//! The caller's current span is not carried: a worker's connections are not
//! its children, as `axum::serve`'s spawned connection tasks are not (and
//! with `tracing-opentelemetry`, every request span of the server's life
//! would join one trace).

use tracing::dispatcher::{self, DefaultGuard, Dispatch};

/// The subscriber scoped to the thread that made it, if one was; `Clone`
/// for each of the server's threads.
#[derive(Clone, Default)]
pub(crate) struct CallerLog(Option<Dispatch>);

impl CallerLog {
    /// The subscriber of the current thread, if it is one scoped to this
    /// thread (not the global default, nor none).
    pub(crate) fn of_this_thread() -> CallerLog {
        CallerLog(dispatcher::get_default(|current| {
            is_scoped(current).then(|| current.clone())
        }))
    }

    /// Makes it this thread's default until the guard is dropped (for a
    /// thread's whole life: its first statement).
    pub(crate) fn enter(&self) -> Option<DefaultGuard> {
        self.0.as_ref().map(dispatcher::set_default)
    }
}

impl std::fmt::Debug for CallerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "CallerLog(scoped)",
            None => "CallerLog(global)",
        })
    }
}

/// Whether `dispatch` is a scoped subscriber (`set_default`,
/// `with_default`), not the global default nor none. `tracing-core` tells
/// them apart only in its `Debug` text (`Dispatch::Scoped(…)`,
/// `Dispatch::Global(…)`, the latter for none too): it offers no way to
/// read the global default while a scoped one is set, to compare. Should
/// that text change, nothing is carried (as before), and the test
/// `embed54::megaconn_logs_to_the_callers_scoped_subscriber` fails.
fn is_scoped(dispatch: &Dispatch) -> bool {
    format!("{dispatch:?}").starts_with("Dispatch::Scoped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_scoped_subscriber_is_carried() {
        assert!(!is_scoped(&Dispatch::none()));
        // A test's thread has no scoped subscriber of its own (another
        // test may have set a global one: not carried either).
        assert!(CallerLog::of_this_thread().0.is_none());
        let scoped = Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _guard = dispatcher::set_default(&scoped);
        assert!(CallerLog::of_this_thread().0.is_some());
    }
}
