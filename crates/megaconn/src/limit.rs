//! The server-wide connection limit. A [`ConnectionSlot`] travels with its
//! connection (as axum's `ConnLimiterIo` keeps its permit), so dropping the
//! connection frees the slot and the limit cannot leak.
//!
//! A parked connection (see `park.rs`) has no task to carry a slot, so its slot
//! is *detached*: still counted as taken, released by the parking lot when the
//! socket closes, or re-attached when the connection wakes up.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Shared by every worker's acceptor.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One connection's claim on the limit; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    slots: Option<Arc<Semaphore>>,
}

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
        let permit = self.slots.try_acquire().ok()?;
        permit.forget();
        Some(self.attached())
    }

    /// Waits for a free slot.
    pub(crate) async fn acquire(&self) -> ConnectionSlot {
        let permit = self
            .slots
            .acquire()
            .await
            .expect("the connection semaphore is never closed");
        permit.forget();
        self.attached()
    }

    /// The slot of a parked connection coming back to life (it never gave its
    /// slot up).
    pub(crate) fn reattach(&self) -> ConnectionSlot {
        self.attached()
    }

    /// Frees the detached slot of a parked connection that closed.
    pub(crate) fn release_detached(&self) {
        self.slots.add_permits(1);
    }

    fn attached(&self) -> ConnectionSlot {
        ConnectionSlot {
            slots: Some(self.slots.clone()),
        }
    }
}

impl ConnectionSlot {
    /// Keeps the slot taken without an owner; the parking lot releases it.
    pub(crate) fn detach(mut self) {
        self.slots = None;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(slots) = &self.slots {
            slots.add_permits(1);
        }
    }
}
