//! [`Session`]: a message connection as its handler sees it while handling
//! one message (its id, the frames it sends, a close).

use std::cell::{Cell, RefCell};

use bytes::Bytes;

use crate::message::hub::ConnectionId;

/// A connection as its handler sees it while handling one message: where
/// replies go. Frames sent are written, in order, when the handler returns.
#[derive(Debug)]
pub struct Session {
    id: ConnectionId,
    out: RefCell<Vec<Bytes>>,
    closing: Cell<bool>,
}

impl Session {
    pub(crate) fn new(id: ConnectionId) -> Session {
        Session {
            id,
            out: RefCell::default(),
            closing: Cell::default(),
        }
    }

    /// This connection's id, for pushing to it later with a [`Hub`](crate::Hub)
    /// (from any task or thread).
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Queues a frame to the peer (framed as the listener frames: a length
    /// header or a line ending is added).
    pub fn send(&self, frame: impl Into<Bytes>) {
        self.out.borrow_mut().push(frame.into());
    }

    /// Closes the connection once the queued frames are written (reported as
    /// [`CloseReason::ServerClosed`]).
    pub fn close(&self) {
        self.closing.set(true);
    }

    /// The frames queued so far, taken.
    pub(crate) fn take_out(&self) -> Vec<Bytes> {
        std::mem::take(&mut *self.out.borrow_mut())
    }

    /// True when the handler asked to close.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.get()
    }
}
