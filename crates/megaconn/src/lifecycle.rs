//! Connection lifecycle events: an `on_connection` hook sees every connection
//! open and close, with why it closed, how long it lived, how many requests it
//! served and how many bytes crossed it.
//!
//! Tracking costs nothing unless a hook is installed. With one, each connection
//! has a small [`ConnTrack`] (about 80 bytes, also kept for parked connections).
//! The engine does not carry it through its types: a worker polls one
//! connection at a time, so while a connection's task runs its track is the
//! thread's *current* track, and the engine counts requests and bytes into it
//! from wherever it is.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::http1::CloseReason;

/// What the `on_connection` hook receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A connection was accepted.
    Opened {
        /// Unique per server run (the worker index is in the top 16 bits).
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The listening address it arrived on.
        local: SocketAddr,
        /// The worker serving it.
        worker: usize,
    },
    /// A connection closed (reported exactly once per `Opened`).
    Closed {
        /// The `id` of its `Opened` event.
        id: u64,
        /// The client's address.
        peer: SocketAddr,
        /// How long it was open.
        duration: Duration,
        /// Requests served on it (HTTP/1.1).
        requests: u64,
        /// Bytes read from it (HTTP/1.1; after TLS decryption).
        bytes_in: u64,
        /// Bytes written to it (HTTP/1.1; before TLS encryption).
        bytes_out: u64,
        /// Why it closed.
        reason: CloseReason,
    },
}

/// The installed hook.
#[derive(Clone)]
pub(crate) struct ConnectionHook(pub(crate) Arc<dyn Fn(&ConnectionEvent) + Send + Sync>);

impl fmt::Debug for ConnectionHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionHook(..)")
    }
}

/// One tracked connection.
#[derive(Debug)]
pub(crate) struct ConnTrack {
    id: u64,
    peer: SocketAddr,
    opened: Instant,
    requests: Cell<u64>,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    closed: Cell<bool>,
    hook: ConnectionHook,
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    static CURRENT: RefCell<Option<Rc<ConnTrack>>> = const { RefCell::new(None) };
}

impl ConnTrack {
    /// Starts tracking a connection and reports `Opened`.
    pub(crate) fn open(
        hook: &ConnectionHook,
        peer: SocketAddr,
        local: SocketAddr,
        worker: usize,
    ) -> Rc<ConnTrack> {
        let seq = NEXT_ID.with(|n| {
            let v = n.get();
            n.set(v + 1);
            v
        });
        let id = ((worker as u64) << 48) | (seq & ((1 << 48) - 1));
        (hook.0)(&ConnectionEvent::Opened {
            id,
            peer,
            local,
            worker,
        });
        Rc::new(ConnTrack {
            id,
            peer,
            opened: Instant::now(),
            requests: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            closed: Cell::new(false),
            hook: hook.clone(),
        })
    }

    /// Reports `Closed` (once; later calls do nothing).
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.closed.replace(true) {
            return;
        }
        (self.hook.0)(&ConnectionEvent::Closed {
            id: self.id,
            peer: self.peer,
            duration: self.opened.elapsed(),
            requests: self.requests.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            reason,
        });
    }
}

/// The track of the connection whose task is running on this thread, if any.
pub(crate) fn current() -> Option<Rc<ConnTrack>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Counts a request on the current connection.
#[inline]
pub(crate) fn count_request() {
    with_current(|t| t.requests.set(t.requests.get() + 1));
}

/// Counts bytes read from the current connection.
#[inline]
pub(crate) fn count_in(n: usize) {
    with_current(|t| t.bytes_in.set(t.bytes_in.get() + n as u64));
}

/// Counts bytes written to the current connection.
#[inline]
pub(crate) fn count_out(n: usize) {
    with_current(|t| t.bytes_out.set(t.bytes_out.get() + n as u64));
}

#[inline]
fn with_current(f: impl FnOnce(&ConnTrack)) {
    CURRENT.with(|c| {
        if let Some(t) = &*c.borrow() {
            f(t);
        }
    });
}

pin_project_lite::pin_project! {
    /// Makes `track` the current track while `inner` is polled.
    pub(crate) struct Tracked<F> {
        #[pin]
        inner: F,
        track: Option<Rc<ConnTrack>>,
    }
}

impl<F> Tracked<F> {
    pub(crate) fn new(inner: F, track: Option<Rc<ConnTrack>>) -> Tracked<F> {
        Tracked { inner, track }
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(track) = this.track else {
            return this.inner.poll(cx);
        };
        let previous = CURRENT.with(|c| c.replace(Some(track.clone())));
        let out = this.inner.poll(cx);
        CURRENT.with(|c| *c.borrow_mut() = previous);
        out
    }
}
