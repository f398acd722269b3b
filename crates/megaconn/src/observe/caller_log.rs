//! The `tracing` subscriber scoped to the thread that starts something of
//! megaconn's (a server, the OpenTelemetry export), carried to the threads
//! megaconn makes for it. Why, and why a global one is not carried:
//! `server/log_scope.rs`, which carries it with the server's name.

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

    /// Whether there is nothing to carry: the caller's subscriber is the
    /// global one (or none).
    pub(crate) fn is_global(&self) -> bool {
        self.0.is_none()
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
