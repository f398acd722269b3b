//! Where the server's own threads log: the `tracing` subscriber of the
//! thread that started the server, when that one is scoped to it, under
//! the server's span when it has a name.
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
//! The threads of each worker runtime's blocking pool (a handler's
//! `tokio::task::spawn_blocking`) are the runtime's, started when a
//! handler first asks for one: the runtime's `on_thread_start` hook
//! carries the subscriber (and the span) there, for the thread's life. With
//! a global subscriber and no name the hooks are not installed at all.
//!
//! The server's name ([`Builder::name`](crate::Builder::name)) is a span,
//! `megaconn{server=NAME}`, entered once on each of the server's threads
//! for its whole life (never per request or per connection), so every line
//! logged there carries it: megaconn's own and its handlers'. Entered at
//! `ERROR` level, so that no level filter that lets any line through
//! leaves it out. An unnamed server has none, as before.
//!
//! The caller's current span is not carried: a worker's connections are not
//! its children, as `axum::serve`'s spawned connection tasks are not (and
//! with `tracing-opentelemetry`, every request span of the server's life
//! would join one trace). The name's span is a parent in the same way, of
//! any span a handler opens without a parent of its own: an application
//! that exports `tracing` spans as OpenTelemetry traces keeps it out of
//! that layer (`Builder::name`'s doc says how).

use std::cell::RefCell;
use std::sync::Arc;

use tracing::dispatcher::DefaultGuard;

use crate::observe::caller_log::CallerLog;

/// What each thread of one server logs under: the caller's scoped
/// subscriber (if it had one) and the server's span (if it has a name).
/// `Clone` for each of the server's threads.
#[derive(Clone, Debug)]
pub(crate) struct ServerScope {
    log: CallerLog,
    name: Option<Arc<str>>,
}

/// A thread's hold on its [`ServerScope`]: the span is left, then the
/// subscriber, when it is dropped (fields drop in their order).
pub(crate) struct Entered {
    _span: Option<tracing::span::EnteredSpan>,
    _log: Option<DefaultGuard>,
}

thread_local! {
    /// A blocking-pool thread's [`Entered`], from the runtime's
    /// `on_thread_start` to its `on_thread_stop`.
    static BLOCKING: RefCell<Option<Entered>> = const { RefCell::new(None) };
}

impl ServerScope {
    /// The scope of a server named `name`, started on this thread.
    pub(crate) fn of_this_thread(name: Option<Arc<str>>) -> ServerScope {
        ServerScope {
            log: CallerLog::of_this_thread(),
            name,
        }
    }

    /// The server's name, if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Enters it on this thread until the guard is dropped (for a thread's
    /// whole life: its first statement).
    pub(crate) fn enter(&self) -> Entered {
        // The subscriber first: the span is made in it.
        let log = self.log.enter();
        let span = self
            .name
            .as_deref()
            .map(|name| tracing::error_span!("megaconn", server = %name).entered());
        Entered {
            _span: span,
            _log: log,
        }
    }

    /// Makes each blocking-pool thread of `runtime` enter it for its life.
    /// Nothing is installed when there is nothing to carry.
    pub(crate) fn on_blocking_threads(&self, runtime: &mut tokio::runtime::Builder) {
        if self.log.is_global() && self.name.is_none() {
            return;
        }
        let scope = self.clone();
        runtime.on_thread_start(move || {
            let entered = scope.enter();
            BLOCKING.with(|held| *held.borrow_mut() = Some(entered));
        });
        runtime.on_thread_stop(|| {
            // Taken out before it is dropped: the span's exit may log.
            let entered = BLOCKING.with(|held| held.borrow_mut().take());
            drop(entered);
        });
    }
}
