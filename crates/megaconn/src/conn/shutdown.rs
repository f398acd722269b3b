//! Graceful shutdown, as Go's `Server.Shutdown` orders it: stop accepting, close
//! idle connections at once, let in-flight exchanges finish (their responses carry
//! `Connection: close`), and force-close what is left at the deadline.
//!
//! Across threads the signal is a `watch` channel owned by the server; inside a
//! worker it is a [`LocalShutdown`] flag plus a `Notify`, so a connection waiting
//! idle pays no atomic operation or channel slot for it.

use std::cell::Cell;

use tokio::sync::Notify;

/// A worker's view of shutdown.
#[derive(Debug, Default)]
pub(crate) struct LocalShutdown {
    started: Cell<bool>,
    notify: Notify,
}

impl LocalShutdown {
    /// True once graceful shutdown began.
    pub(crate) fn is_started(&self) -> bool {
        self.started.get()
    }

    /// Marks shutdown as begun and wakes every waiter.
    pub(crate) fn start(&self) {
        self.started.set(true);
        self.notify.notify_waiters();
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub(crate) async fn wait(&self) {
        let notified = self.notify.notified();
        if self.started.get() {
            return;
        }
        notified.await;
    }
}
