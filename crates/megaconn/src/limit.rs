//! The server-wide connection limit. A [`ConnectionSlot`] travels with its
//! connection (as axum's `ConnLimiterIo` keeps its permit), so dropping the
//! connection frees the slot and the limit cannot leak.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared by every worker's acceptor.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One connection's claim on the limit; dropping it frees the slot.
pub(crate) type ConnectionSlot = OwnedSemaphorePermit;

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
        }
    }

    /// The configured maximum.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot at once if one is free.
    pub(crate) fn try_acquire(&self) -> Option<ConnectionSlot> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Waits for a free slot.
    pub(crate) async fn acquire(&self) -> ConnectionSlot {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed")
    }
}
