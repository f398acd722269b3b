//! Pushing frames to connections from anywhere: [`Hub`] (cheap to clone,
//! `Send`) sends a frame to one connection by its [`ConnectionId`] from any
//! task or thread. Each worker drains its own channel in one task and
//! delivers on its own thread, so no lock is taken on a connection's path.
//!
//! Delivery depends on where the connection is:
//! - awake (a task): the frame joins its inbox and is written between the
//!   peer's frames, in order with the handler's replies;
//! - parked: the frame is written straight to the socket, one `send`, and the
//!   connection stays parked (no task, no buffer kept). If the socket cannot
//!   take the whole frame at once the peer is not reading: the connection is
//!   closed as [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer).
//!
//! A push to a connection that has closed (its id is stale, even if its
//! descriptor was reused) is dropped.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

/// Identifies one framed connection for [`Hub::send`], from
/// [`Session::id`](crate::Session::id). Unique for the server's life: a
/// closed connection's id never names another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    worker: u32,
    fd: RawFd,
    generation: u32,
}

/// Sends frames to framed connections by id, from any task or thread. Get
/// it from [`Server::hub`](crate::Server::hub); clones share it.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// One frame on its way to a connection.
#[derive(Debug)]
pub(crate) struct Push {
    pub to: ConnectionId,
    pub frame: Bytes,
}

/// The hub's channels, one per worker; each worker takes its receiver when
/// it serves its first framed connection.
#[derive(Debug)]
pub(crate) struct HubInner {
    senders: Vec<mpsc::UnboundedSender<Push>>,
    receivers: Vec<Mutex<Option<mpsc::UnboundedReceiver<Push>>>>,
}

impl HubInner {
    pub(crate) fn new(workers: usize) -> HubInner {
        let (senders, receivers) = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Mutex::new(Some(rx)))
            })
            .unzip();
        HubInner { senders, receivers }
    }

    /// Worker `index`'s receiver, once.
    pub(crate) fn take_receiver(&self, index: usize) -> Option<mpsc::UnboundedReceiver<Push>> {
        self.receivers.get(index)?.lock().ok()?.take()
    }
}

impl Hub {
    pub(crate) fn new(inner: Arc<HubInner>) -> Hub {
        Hub { inner }
    }

    /// Sends `frame` to connection `to` (framed as its listener frames).
    /// Returns at once; false only when the server is gone. Delivery is
    /// best-effort: a connection that closed meanwhile drops it.
    pub fn send(&self, to: ConnectionId, frame: impl Into<Bytes>) -> bool {
        let Some(sender) = self.inner.senders.get(to.worker as usize) else {
            return false;
        };
        sender
            .send(Push {
                to,
                frame: frame.into(),
            })
            .is_ok()
    }
}

/// An awake connection's pushed frames, waiting to be written between the
/// peer's frames.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub queue: RefCell<VecDeque<Bytes>>,
    pub notify: Notify,
}

/// One worker's hub bookkeeping (inside its side table).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Awake connections' inboxes, with their generation.
    pub awake: RefCell<std::collections::HashMap<RawFd, (u32, Rc<Inbox>)>>,
    next_generation: Cell<u32>,
    pump_started: Cell<bool>,
}

impl Registry {
    /// A fresh id for a connection accepted on this worker.
    pub(crate) fn new_id(&self, worker: usize, fd: RawFd) -> ConnectionId {
        let generation = self.next_generation.get().wrapping_add(1);
        self.next_generation.set(generation);
        ConnectionId {
            worker: worker as u32,
            fd,
            generation,
        }
    }

    /// Whether the worker's pump still has to be started (true once).
    pub(crate) fn start_pump(&self) -> bool {
        !self.pump_started.replace(true)
    }
}

impl ConnectionId {
    /// The id of this worker's connection `fd` with `generation`.
    pub(crate) fn new(worker: usize, fd: RawFd, generation: u32) -> ConnectionId {
        ConnectionId {
            worker: worker as u32,
            fd,
            generation,
        }
    }

    pub(crate) fn generation(self) -> u32 {
        self.generation
    }

    pub(crate) fn fd(self) -> RawFd {
        self.fd
    }
}

/// What a push to a parked connection did.
pub(crate) enum Delivered {
    /// Written whole.
    Sent,
    /// The socket took less than the frame: the peer is behind.
    Behind,
    /// Not a parked connection of that generation.
    NotParked,
}

/// Writes `bytes` to a parked socket without blocking: true when all went.
pub(crate) fn send_all_now(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: `fd` is a parked socket, open for as long as the lot keeps it
    // (the caller checked it is parked, on the lot's own thread); `bytes` is
    // valid readable memory of the given length.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 && n as usize == bytes.len()
}

/// Makes a parked socket wake its connection at once (readable: hung up),
/// so the protocol closes it through the usual path.
pub(crate) fn hang_up(fd: RawFd) {
    // SAFETY: as in `send_all_now`; shutdown takes no memory arguments.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}
