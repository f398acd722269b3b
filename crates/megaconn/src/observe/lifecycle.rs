//! Connection lifecycle events: an `on_connection` hook sees every connection
//! open and close, with why it closed, how long it lived, how many requests it
//! served and how many bytes crossed it.
//!
//! Tracking costs nothing unless a hook is installed. With one, each connection
//! has a small [`ConnTrack`] (about 120 bytes). The engine does not carry it
//! through its types: a worker polls one connection at a time, so while a
//! connection's task runs its track is the thread's *current* track, and the
//! engine counts requests and bytes into it from wherever it is.
//!
//! A parked connection's track is kept by value in the parking lot's
//! per-descriptor array (given back once none is parked), and its listing
//! by value in its registry ([`ConnTrack::park`]): nothing of a parked
//! connection stays allocated on its own, among what its task freed. A
//! parked connection that closes is reported from that value, not woken
//! first. (Each track and entry, allocated at
//! accept between the tasks' allocations and kept while parked, held the
//! pages around them: ~950 B per parked connection with
//! `--debug-connections` against 24 B without; kept by value, ~210 B,
//! `bench/ALLOCATORS.md`.)

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::observe::close::CloseReason;
use crate::observe::registry::{Entry, Registry};
use crate::observe::stats::{incr, WorkerStats};

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
        /// Requests served on it (HTTP/1.1 requests, HTTP/2 streams).
        requests: u64,
        /// Bytes read from it (after TLS decryption; an upgraded socket's
        /// included).
        bytes_in: u64,
        /// Bytes written to it (before TLS encryption; an upgraded socket's
        /// included).
        bytes_out: u64,
        /// Why it closed.
        reason: CloseReason,
    },
}

/// What a live connection is doing, for every protocol (Go's `ConnState`,
/// with parking added).
///
/// ```text
///                 accept
///                   |
///                   v
///   +--------> ReadingHead --> ReadingBody --> Handling --> Writing --+
///   |               ^   (active: a message is in flight)             |
///   |               |                                                |
///   |             Idle <---------------------------------------------+
///   |          (a task, no buffers)                                  |
///   |               |  idle for park_idle_after                      +--> Upgraded
///   |               v                                                     (a handler
///   +--------- Parked  (a bare socket in the lot; bytes, a hang-up        owns the socket)
///      woken       or a timer wake it; it resumes in its protocol)
///
///   any state --> closed (reported once, with a CloseReason)
/// ```
///
/// HTTP/2 connections are `ReadingHead` until their handshake is done, then
/// `Handling` while streams are open and `Idle` between them.
///
/// Against Go's: an HTTP/1.1 connection is `ReadingHead` from its accept
/// until its first head is whole, before its first byte too: the span of
/// Go's `StateNew` (a `ReadingHead` connection with no request served is
/// Go's new one). It is `Idle` only between requests; from the first byte
/// of the next head it is `ReadingHead` again, where Go stays `StateIdle`
/// until that head is whole. Graceful shutdown closes a new connection as
/// Go does, once it is 5 s old (at the drain's start at the earliest; a
/// later head begun, 5 s into the drain), as
/// [`CloseReason::ShutdownBeforeRequest`], one still in its TLS or HTTP/2
/// handshake (`ReadingHead` too) included. Go calls its `ConnState` hook
/// at every change; these states are read
/// ([`ServerHandle::connections`](crate::ServerHandle::connections)),
/// and the `on_connection` hook hears only [`ConnectionEvent::Opened`] and
/// [`ConnectionEvent::Closed`]: a call per change would cost every request,
/// and a parked connection changes state outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum ConnectionState {
    /// Waiting for its next message (a task).
    Idle,
    /// Idle and parked outside the runtime (a bare socket).
    Parked,
    /// Receiving a request head (or a protocol handshake); a new
    /// connection from its accept, before its first byte too.
    ReadingHead,
    /// Receiving a request body.
    ReadingBody,
    /// The handler is running.
    Handling,
    /// Sending a response.
    Writing,
    /// Handed to a handler after an upgrade (`101`); still counted open.
    Upgraded,
}

impl ConnectionState {
    /// Every state. A new one fails to compile in [`from_index`](Self::from_index)
    /// until it is added here too.
    const ALL: [ConnectionState; 7] = [
        ConnectionState::Idle,
        ConnectionState::Parked,
        ConnectionState::ReadingHead,
        ConnectionState::ReadingBody,
        ConnectionState::Handling,
        ConnectionState::Writing,
        ConnectionState::Upgraded,
    ];

    /// The state whose discriminant is `index` (an [`Entry`] keeps its state
    /// so, in an atomic), found by value, never by position: a table indexed
    /// by the discriminant that missed a new state would panic inside a
    /// listing, with the registry's lock held.
    pub(super) fn from_index(index: u8) -> Option<ConnectionState> {
        Self::ALL.into_iter().find(|&state| {
            // Exhaustive inside the crate (`non_exhaustive` binds only other
            // crates): a new state is a compile error here, not a gap in ALL.
            match state {
                ConnectionState::Idle
                | ConnectionState::Parked
                | ConnectionState::ReadingHead
                | ConnectionState::ReadingBody
                | ConnectionState::Handling
                | ConnectionState::Writing
                | ConnectionState::Upgraded => state as u8 == index,
            }
        })
    }

    /// A short lowercase name (`idle`, `parked`, `reading_head`, …).
    pub fn label(self) -> &'static str {
        match self {
            ConnectionState::Idle => "idle",
            ConnectionState::Parked => "parked",
            ConnectionState::ReadingHead => "reading_head",
            ConnectionState::ReadingBody => "reading_body",
            ConnectionState::Handling => "handling",
            ConnectionState::Writing => "writing",
            ConnectionState::Upgraded => "upgraded",
        }
    }
}

/// One live connection, as [`ServerHandle::connections`](crate::ServerHandle::connections)
/// lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection's id (as in [`ConnectionEvent`]).
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The worker serving it.
    pub worker: usize,
    /// How long it has been open.
    pub age: Duration,
    /// What it is doing.
    pub state: ConnectionState,
    /// Requests served on it so far.
    pub requests: u64,
}

/// The installed hook.
#[derive(Clone)]
pub(crate) struct ConnectionHook(pub(crate) Arc<dyn Fn(&ConnectionEvent) + Send + Sync>);

impl ConnectionHook {
    /// Calls the user's hook with `event`. A panic in it is caught, counted
    /// in `stats.panics` and logged: it would otherwise unwind through
    /// whoever reports the event, the accept loop or the parking lot, and
    /// end that task for good (the worker's listener would stay open with no
    /// one accepting; its parked connections would never wake or time out).
    fn call(&self, event: &ConnectionEvent, stats: &WorkerStats) {
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(event)));
        if called.is_err() {
            incr(&stats.panics);
            let (hook_event, id) = match event {
                ConnectionEvent::Opened { id, .. } => ("opened", id),
                ConnectionEvent::Closed { id, .. } => ("closed", id),
            };
            tracing::error!(
                event = hook_event,
                id,
                "the on_connection hook panicked; the connection is served on"
            );
        }
    }
}

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
    hook: Option<ConnectionHook>,
    registry: Option<Arc<Registry>>,
    /// Its entry in `registry`, updated in place (see [`Registry`]).
    entry: Option<Arc<Entry>>,
}

thread_local! {
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    /// The track of the connection being polled ([`Tracked`]), null when none.
    /// A raw pointer, not an `Option<Rc<_>>` in a `RefCell`: the engine asks
    /// for it several times per request, and a plain `Cell` of a pointer has
    /// no destructor to register and no borrow flag to check (~10
    /// instructions instead of ~45 per use).
    static CURRENT: Cell<*const ConnTrack> = const { Cell::new(std::ptr::null()) };
}

impl ConnTrack {
    /// Starts tracking a connection: reports `Opened` to the hook and lists the
    /// connection in the registry, whichever are enabled. A panic in the hook
    /// counts in `stats`.
    pub(crate) fn open(
        hook: Option<&ConnectionHook>,
        registry: Option<&Arc<Registry>>,
        peer: SocketAddr,
        local: SocketAddr,
        worker: usize,
        stats: &WorkerStats,
    ) -> Rc<ConnTrack> {
        let seq = NEXT_ID.with(|n| {
            let v = n.get();
            n.set(v + 1);
            v
        });
        let id = ((worker as u64) << 48) | (seq & ((1 << 48) - 1));
        if let Some(hook) = hook {
            let opened = ConnectionEvent::Opened {
                id,
                peer,
                local,
                worker,
            };
            hook.call(&opened, stats);
        }
        let entry = registry.map(|registry| registry.open(id, peer, worker));
        Rc::new(ConnTrack {
            id,
            peer,
            opened: Instant::now(),
            requests: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            closed: Cell::new(false),
            hook: hook.cloned(),
            registry: registry.cloned(),
            entry,
        })
    }

    /// Reports `Closed` (once; later calls do nothing). A panic in the hook
    /// counts in `stats`.
    pub(crate) fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        if self.closed.replace(true) {
            return;
        }
        if let Some(registry) = &self.registry {
            registry.close(self.id);
        }
        if let Some(hook) = &self.hook {
            hook.call(&self.counts().closed(reason), stats);
        }
    }

    /// Its id, peer and counts as they are now, for a track that goes on
    /// from them (parked, detached) or a `Closed` event.
    fn counts(&self) -> Counts {
        Counts {
            id: self.id,
            peer: self.peer,
            opened: self.opened,
            requests: self.requests.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
        }
    }
}

impl ConnTrack {
    /// Records what this connection is doing (for `/debug/connections`),
    /// whether or not it is the thread's current one (a connection parked
    /// from outside its task, as an adopted one is).
    pub(crate) fn set_state(&self, state: ConnectionState) {
        if let Some(entry) = &self.entry {
            entry.set_state(state);
        }
    }

    /// The connection parks: returns its track as the parking lot keeps it,
    /// by value, with the listing's entry kept by value in the registry
    /// ([`Registry::park`]): neither stays allocated on its own among what
    /// the connection's task frees (see the module doc). The state is set
    /// through its own entry, not the thread's current track: an adopted
    /// connection (`handover::adopt`) is parked from the worker's loop, where
    /// none is current. This track reports nothing more; the returned one,
    /// given its worker's [`TrackHandles`] back ([`ParkedTrack::resume`]),
    /// reports the close.
    pub(crate) fn park(&self) -> ParkedTrack {
        if let Some(registry) = &self.registry {
            registry.park(self.id);
        }
        ParkedTrack {
            counts: self.counts(),
            closed: self.closed.replace(true),
        }
    }

    /// Whether this track reports to `handles`' hook and registry.
    pub(crate) fn shares(&self, handles: &TrackHandles) -> bool {
        fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
        }
        same(
            self.hook.as_ref().map(|h| &h.0),
            handles.hook.as_ref().map(|h| &h.0),
        ) && same(self.registry.as_ref(), handles.registry.as_ref())
    }

    /// The worker's hook and registry this track reports to.
    pub(crate) fn handles(&self) -> TrackHandles {
        TrackHandles {
            hook: self.hook.clone(),
            registry: self.registry.clone(),
        }
    }

    /// A parked connection wakes ([`ParkedTrack::resume`]'s track): its track as
    /// its task shares it, with its entry shared with the registry again.
    pub(crate) fn wake(self) -> Rc<ConnTrack> {
        let entry = self.registry.as_ref().and_then(|r| r.wake(self.id));
        Rc::new(ConnTrack { entry, ..self })
    }

    /// Hands the track over with an upgraded connection, which may leave this
    /// thread: the returned copy reports the close (and counts the bytes
    /// that cross the upgraded socket); this one reports nothing more.
    pub(crate) fn detach(&self) -> DetachedTrack {
        self.closed.set(true);
        self.set_state(ConnectionState::Upgraded);
        DetachedTrack {
            counts: self.counts(),
            hook: self.hook.clone(),
            registry: self.registry.clone(),
        }
    }
}

/// A parked connection's track as the parking lot keeps it
/// ([`ConnTrack::park`]), by value: its own fields only (~88 B). The hook and
/// registry it reports to are its worker's, the same for all its
/// connections: the lot keeps them once ([`TrackHandles`]) and puts them
/// back when the connection leaves ([`ParkedTrack::resume`]), where each
/// parked track kept its own (~120 B).
#[derive(Debug)]
pub(crate) struct ParkedTrack {
    counts: Counts,
    /// Its `Closed` was reported (it parked after a close: none to come).
    closed: bool,
}

/// A connection's id, peer and counts, as a track that leaves its task
/// carries them on ([`ParkedTrack`], [`DetachedTrack`]) and as its `Closed`
/// event reports them.
#[derive(Debug, Clone, Copy)]
struct Counts {
    id: u64,
    peer: SocketAddr,
    opened: Instant,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    /// The connection's `Closed` event, as it closes now.
    fn closed(&self, reason: CloseReason) -> ConnectionEvent {
        ConnectionEvent::Closed {
            id: self.id,
            peer: self.peer,
            duration: self.opened.elapsed(),
            requests: self.requests,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            reason,
        }
    }
}

/// The hook and registry a worker's tracks report to.
#[derive(Debug, Clone)]
pub(crate) struct TrackHandles {
    hook: Option<ConnectionHook>,
    registry: Option<Arc<Registry>>,
}

impl ParkedTrack {
    /// The connection leaves the lot: its track again, reporting to
    /// `handles` (its worker's), still parked in its listing until woken
    /// ([`ConnTrack::wake`]); closed as it is, it is not woken first.
    pub(crate) fn resume(self, handles: &TrackHandles) -> ConnTrack {
        let Counts {
            id,
            peer,
            opened,
            requests,
            bytes_in,
            bytes_out,
        } = self.counts;
        ConnTrack {
            id,
            peer,
            opened,
            requests: Cell::new(requests),
            bytes_in: Cell::new(bytes_in),
            bytes_out: Cell::new(bytes_out),
            closed: Cell::new(self.closed),
            hook: handles.hook.clone(),
            registry: handles.registry.clone(),
            entry: None,
        }
    }
}

/// A connection's track after an upgrade handed it to a handler: `Send`,
/// owned by the upgraded socket, reporting `Closed` when it closes.
#[derive(Debug)]
pub(crate) struct DetachedTrack {
    counts: Counts,
    hook: Option<ConnectionHook>,
    registry: Option<Arc<Registry>>,
}

impl DetachedTrack {
    /// Counts bytes read from the upgraded socket.
    pub(crate) fn count_in(&mut self, n: usize) {
        self.counts.bytes_in += n as u64;
    }

    /// Counts bytes written to the upgraded socket.
    pub(crate) fn count_out(&mut self, n: usize) {
        self.counts.bytes_out += n as u64;
    }

    /// Reports `Closed` and leaves the live-connection list. A panic in the
    /// hook counts in `stats`.
    pub(crate) fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        if let Some(registry) = &self.registry {
            registry.close(self.counts.id);
        }
        if let Some(hook) = &self.hook {
            hook.call(&self.counts.closed(reason), stats);
        }
    }
}

/// The current connection's id and peer (for the access log).
pub(crate) fn current_id_and_peer() -> (u64, Option<SocketAddr>) {
    let mut out = (0, None);
    with_current(|t| out = (t.id, Some(t.peer)));
    out
}

/// Counts a request on the current connection.
#[inline]
pub(crate) fn count_request() {
    with_current(|t| {
        t.requests.set(t.requests.get() + 1);
        if let Some(entry) = &t.entry {
            entry.count_request();
        }
    });
}

/// Records what the current connection is doing (for `/debug/connections`).
#[inline]
pub(crate) fn set_state(state: ConnectionState) {
    with_current(|t| t.set_state(state));
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
    let current = CURRENT.with(Cell::get);
    // SAFETY: non-null only while a `Tracked` polls its inner future, and
    // then it points into the `Rc` that `Tracked` holds for the whole poll
    // (restored on return and on unwinding by `Restore`).
    if let Some(t) = unsafe { current.as_ref() } {
        f(t);
    }
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

    /// The future, its track let go.
    pub(crate) fn into_inner(self) -> F {
        self.inner
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(track) = this.track else {
            return this.inner.poll(cx);
        };
        /// Puts the outer track back, also when the inner poll unwinds (a
        /// task's panic is caught by the runtime, which goes on polling
        /// other connections: none may see this one's pointer).
        struct Restore(*const ConnTrack);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Rc::as_ptr(track))));
        this.inner.poll(cx)
    }
}

pin_project_lite::pin_project! {
    /// Counts the bytes crossing a stream into the current connection's
    /// track (for protocols whose reads and writes happen inside a library,
    /// as HTTP/2's do inside h2).
    #[derive(Debug)]
    pub(crate) struct CountedIo<I> {
        #[pin]
        io: I,
    }
}

impl<I> CountedIo<I> {
    pub(crate) fn new(io: I) -> CountedIo<I> {
        CountedIo { io }
    }
}

impl<I: tokio::io::AsyncRead> tokio::io::AsyncRead for CountedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::task::ready!(self.project().io.poll_read(cx, buf));
        count_in(buf.filled().len() - before);
        Poll::Ready(result)
    }
}

impl<I: tokio::io::AsyncWrite> tokio::io::AsyncWrite for CountedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = std::task::ready!(self.project().io.poll_write(cx, data));
        if let Ok(n) = &result {
            count_out(*n);
        }
        Poll::Ready(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = std::task::ready!(self.project().io.poll_write_vectored(cx, bufs));
        if let Ok(n) = &result {
            count_out(*n);
        }
        Poll::Ready(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::observe::registry::tests::LOCKS;
    use crate::observe::registry::{page, Listed};

    #[test]
    fn every_state_is_found_by_its_discriminant() {
        for state in ConnectionState::ALL {
            assert_eq!(ConnectionState::from_index(state as u8), Some(state));
        }
        assert_eq!(ConnectionState::from_index(u8::MAX), None);
    }

    /// A request and state changes on a listed connection take no lock of
    /// the registry (they took one, and an ordered-map lookup, each), and
    /// the listing shows them: its requests, its state, `upgraded` after an
    /// upgrade, and no entry once it closed.
    #[test]
    fn a_request_updates_the_listing_without_locking_the_registry() {
        let registry = Arc::new(Registry::default());
        let peer = SocketAddr::from(([127, 0, 0, 1], 7));
        let stats = WorkerStats::default();
        let track = ConnTrack::open(None, Some(&registry), peer, peer, 0, &stats);
        let listed = || page(std::slice::from_ref(&registry), 0, 10).1;
        let first = &listed()[0];
        assert_eq!(
            (first.id, first.peer, first.state, first.requests),
            (track.id, peer, ConnectionState::ReadingHead, 0)
        );

        let mut exchange = std::pin::pin!(Tracked::new(
            std::future::poll_fn(|_| {
                let before = LOCKS.with(|l| l.replace(0));
                count_request();
                set_state(ConnectionState::Handling);
                count_request();
                set_state(ConnectionState::Idle);
                Poll::Ready((before, LOCKS.with(|l| l.replace(0))))
            }),
            Some(track.clone()),
        ));
        let Poll::Ready((_, locks)) = poll(exchange.as_mut()) else {
            panic!("the future is ready at once");
        };
        assert_eq!(locks, 0, "registry locks taken by two requests");
        let [c] = &listed()[..] else {
            panic!("one connection listed")
        };
        assert_eq!((c.state, c.requests), (ConnectionState::Idle, 2));

        let detached = track.detach();
        assert_eq!(listed()[0].state, ConnectionState::Upgraded);
        detached.close(CloseReason::Shutdown, &stats);
        assert!(listed().is_empty());
    }

    /// A connection parks and wakes: its listing stays (`parked`, its
    /// requests), kept by value while it is parked (the registry lets the
    /// entry it shared with the track go, and the lot keeps a track with
    /// none: nothing left allocated on its own); the track it parked from
    /// reports nothing more; woken, its counts go on from where they were,
    /// into the listing and its `Closed` event.
    #[test]
    fn a_parked_track_and_its_listing_are_kept_by_value_and_go_on_when_woken() {
        let registry = Arc::new(Registry::default());
        let peer = SocketAddr::from(([127, 0, 0, 1], 7));
        let stats = WorkerStats::default();
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        let hook = ConnectionHook(Arc::new(move |e: &ConnectionEvent| {
            seen.lock().unwrap().push(e.clone());
        }));
        let serve = |track: &Rc<ConnTrack>| {
            let mut exchange = std::pin::pin!(Tracked::new(
                std::future::poll_fn(|_| {
                    count_request();
                    count_in(10);
                    count_out(20);
                    Poll::Ready(())
                }),
                Some(track.clone()),
            ));
            assert!(poll(exchange.as_mut()).is_ready());
        };
        let listed = || -> Vec<(u64, ConnectionState, u64)> {
            page(std::slice::from_ref(&registry), 0, 10)
                .1
                .iter()
                .map(|c| (c.id, c.state, c.requests))
                .collect()
        };
        let track = ConnTrack::open(Some(&hook), Some(&registry), peer, peer, 0, &stats);
        serve(&track);

        let parked = track.park().resume(&track.handles());
        assert!(parked.entry.is_none());
        assert!(matches!(
            registry.lock().get_mut(track.id),
            Some(Listed::Parked(_))
        ));
        let shared = track.entry.as_ref().expect("listed");
        assert_eq!(Arc::strong_count(shared), 1, "let go by the registry");
        assert_eq!(listed(), [(track.id, ConnectionState::Parked, 1)]);
        track.close(CloseReason::Shutdown, &stats);
        assert_eq!(listed().len(), 1, "the track it parked from closes nothing");

        let woken = parked.wake();
        serve(&woken);
        assert_eq!(listed(), [(track.id, ConnectionState::Parked, 2)]);
        woken.close(CloseReason::IdleTimeout, &stats);
        assert!(listed().is_empty());
        assert_eq!(
            opened_and_closed(&events.lock().unwrap()),
            (track.id, 2, 20, 40, CloseReason::IdleTimeout)
        );
    }

    /// The one connection of `events`, opened then closed once: its id,
    /// requests, bytes in and out and close reason.
    pub(crate) fn opened_and_closed(
        events: &[ConnectionEvent],
    ) -> (u64, u64, u64, u64, CloseReason) {
        let [ConnectionEvent::Opened { .. }, ConnectionEvent::Closed {
            id,
            requests,
            bytes_in,
            bytes_out,
            reason,
            ..
        }] = events
        else {
            panic!("opened and closed once: {events:?}")
        };
        (*id, *requests, *bytes_in, *bytes_out, *reason)
    }

    fn track(port: u16) -> Rc<ConnTrack> {
        let peer = SocketAddr::from(([127, 0, 0, 1], port));
        ConnTrack::open(None, None, peer, peer, 0, &WorkerStats::default())
    }

    fn poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// The current track is the polled connection's, only while it is
    /// polled, the outer one again after a nested poll, and none after a
    /// poll that unwound (the runtime goes on polling other connections).
    #[test]
    fn current_track_is_set_while_polled_and_restored_on_return_and_unwind() {
        let (outer, inner) = (track(1), track(2));
        assert_eq!(current_id_and_peer(), (0, None));
        let inner_seen = Cell::new((0, None));
        let mut nested = std::pin::pin!(Tracked::new(
            std::future::poll_fn(|_| {
                let before = current_id_and_peer();
                let mut inner = std::pin::pin!(Tracked::new(
                    std::future::poll_fn(|_| Poll::Ready(current_id_and_peer())),
                    Some(inner.clone()),
                ));
                if let Poll::Ready(seen) = poll(inner.as_mut()) {
                    inner_seen.set(seen);
                }
                Poll::Ready((before, current_id_and_peer()))
            }),
            Some(outer.clone()),
        ));
        let Poll::Ready((before, after)) = poll(nested.as_mut()) else {
            panic!("the future is ready at once");
        };
        assert_eq!(before, (outer.id, Some(outer.peer)));
        assert_eq!(inner_seen.get(), (inner.id, Some(inner.peer)));
        assert_eq!(
            after,
            (outer.id, Some(outer.peer)),
            "the outer track is back"
        );
        assert_eq!(current_id_and_peer(), (0, None));

        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut panics = std::pin::pin!(Tracked::new(
                std::future::poll_fn(|_| -> Poll<()> { panic!("a connection's bug") }),
                Some(inner.clone()),
            ));
            let _ = poll(panics.as_mut());
        }));
        assert!(unwound.is_err());
        assert_eq!(current_id_and_peer(), (0, None), "no dangling track");
        count_request();
        assert_eq!(
            inner.requests.get(),
            0,
            "nothing counted into a stale track"
        );
    }
}
