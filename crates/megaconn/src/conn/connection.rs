//! One connection's life in the core: its slot under the limits, its place in
//! the counters and its lifecycle track, from accept to the one close.
//!
//! ```text
//!            accept ──> Connection::open ──> protocol ──┬──> close(reason)   counted here, once
//!                                               ^       ├──> park()          slot detached; track
//!   parking lot: Connection::resume (woken) ────┘       │                    and client IP kept by the lot
//!                                                       └──> into_send()     handed over (upgrade):
//!                                                                            the Upgraded carries it
//! ```
//!
//! Whatever path a connection takes — refused by a limit, closed by its
//! protocol, timed out while parked, handed to a WebSocket handler after
//! `101` — its close is counted by [`Connection::close`] (or by dropping the
//! connection, which closes it as [`CloseReason::Shutdown`]: a task dropped
//! by a forced shutdown still reports; or as [`CloseReason::Panic`] when its
//! serving future panicked, [`dropping_after_panic`]). The slot travels with the connection,
//! as axum's `ConnLimiterIo` keeps its permit.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::conn::limit::ConnectionSlot;
use crate::observe::close::{CloseReason, ProtocolDetail};
use crate::observe::lifecycle::{ConnTrack, DetachedTrack};
use crate::observe::stats::{gauge, incr, WorkerStats};

/// A lifecycle track that a close reports to.
pub(crate) trait CloseTrack {
    /// Reports the close (once); a panic in the hook counts in `stats`.
    fn close(&self, reason: CloseReason, stats: &WorkerStats);
}

impl CloseTrack for Rc<ConnTrack> {
    fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        ConnTrack::close(self, reason, stats);
    }
}

/// A parked connection's track, as the parking lot keeps it: closed as it
/// is, not woken first (`ParkingLot::closed`).
impl CloseTrack for ConnTrack {
    fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        ConnTrack::close(self, reason, stats);
    }
}

impl CloseTrack for DetachedTrack {
    fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        DetachedTrack::close(self, reason, stats);
    }
}

/// One open connection's accounts. `K` is its lifecycle track: the worker's
/// `Rc` one while a worker task serves it, a `Send` copy once handed over.
#[derive(Debug)]
pub(crate) struct Connection<K: CloseTrack = Rc<ConnTrack>> {
    /// `None` once closed, parked or handed over.
    open: Option<Open<K>>,
}

/// A connection's accounts once handed over with an upgraded socket: `Send`,
/// so they cross threads with it.
pub(crate) type SendConnection = Connection<DetachedTrack>;

/// What a parked connection leaves with the parking lot, to be given back to
/// [`Connection::resume`]: both `None` unless an `on_connection` hook or a
/// per-IP limit needs them, so that the lot keeps nothing more per
/// connection then.
#[derive(Debug, Default)]
pub(crate) struct ParkedAccounts {
    /// The lifecycle track (with an `on_connection` hook or a registry).
    pub(crate) track: Option<Rc<ConnTrack>>,
    /// The client IP whose per-IP place the detached slot holds.
    pub(crate) ip: Option<IpAddr>,
}

#[derive(Debug)]
struct Open<K> {
    slot: ConnectionSlot,
    stats: Arc<WorkerStats>,
    track: Option<K>,
}

impl Connection {
    /// A connection just accepted: counted open.
    pub(crate) fn open(
        slot: ConnectionSlot,
        stats: Arc<WorkerStats>,
        track: Option<Rc<ConnTrack>>,
    ) -> Connection {
        gauge(&stats.connections_open, 1);
        Connection::resume(slot, stats, track)
    }

    /// The lifecycle track, if connections are tracked.
    pub(crate) fn track(&self) -> Option<&Rc<ConnTrack>> {
        self.open.as_ref().and_then(|o| o.track.as_ref())
    }

    /// The connection goes to the parking lot: still open, its slot detached
    /// (the lot releases it when the socket closes); returns what the lot
    /// keeps for it.
    pub(crate) fn park(mut self) -> ParkedAccounts {
        let Some(open) = self.open.take() else {
            return ParkedAccounts::default();
        };
        ParkedAccounts {
            ip: open.slot.detach(),
            track: open.track,
        }
    }

    /// The connection leaves the worker's task with an upgraded socket: the
    /// returned accounts are `Send` and close the connection when they drop.
    pub(crate) fn into_send(mut self) -> SendConnection {
        let open = self.open.take().expect("a connection is handed over once");
        Connection {
            open: Some(Open {
                slot: open.slot,
                stats: open.stats,
                track: open.track.map(|t| t.detach()),
            }),
        }
    }
}

impl Connection<ConnTrack> {
    /// A parked connection wakes: its track shared with its task again
    /// ([`ConnTrack::wake`]).
    pub(crate) fn wake(mut self) -> Connection {
        let open = self.open.take();
        Connection {
            open: open.map(|Open { slot, stats, track }| Open {
                slot,
                stats,
                track: track.map(ConnTrack::wake),
            }),
        }
    }
}

impl SendConnection {
    /// Accounts already closed: what is left behind after `close` took them.
    pub(crate) fn closed() -> SendConnection {
        Connection { open: None }
    }
}

impl<K: CloseTrack> Connection<K> {
    /// A parked connection coming back (it never stopped counting as open),
    /// with its track as the lot kept it (`ConnTrack`) or as its task will
    /// share it (`Rc<ConnTrack>`).
    pub(crate) fn resume(slot: ConnectionSlot, stats: Arc<WorkerStats>, track: Option<K>) -> Self {
        Connection {
            open: Some(Open { slot, stats, track }),
        }
    }

    /// Closes the connection's accounts: frees its slot, counts the close by
    /// reason and reports it. The one place a close is counted.
    pub(crate) fn close(mut self, reason: CloseReason) {
        self.close_once(reason);
    }

    /// The worker's counters, while the connection is open (a protocol run
    /// on an upgraded socket counts its errors there).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn stats(&self) -> Option<&Arc<WorkerStats>> {
        self.open.as_ref().map(|o| &o.stats)
    }

    /// The lifecycle track, to count into (a handed-over connection counts
    /// the bytes crossing its socket).
    pub(crate) fn track_mut(&mut self) -> Option<&mut K> {
        self.open.as_mut().and_then(|o| o.track.as_mut())
    }

    fn close_once(&mut self, reason: CloseReason) {
        let Some(Open { slot, stats, track }) = self.open.take() else {
            return;
        };
        gauge(&stats.connections_open, -1);
        incr(&stats.closed);
        // The TLS stream fails for its peer's protocol error under whichever
        // protocol runs on it, and every one of them closes here.
        if reason == CloseReason::Protocol(ProtocolDetail::Tls) {
            incr(&stats.protocol_errors);
        }
        stats.connection_closed(reason);
        // The slot goes only once the close is counted: a newcomer the freed
        // slot admits (on another worker's thread, maybe) is served after
        // the counters show why there was room (an eviction's `evicted`),
        // never before. Before the lifecycle hook, which may take its time.
        drop(slot);
        if let Some(track) = track {
            track.close(reason, &stats);
        }
    }
}

impl<K: CloseTrack> Drop for Connection<K> {
    /// A connection dropped without a close was cut off by the server: its
    /// task was dropped at a forced shutdown, or its handler dropped it, or
    /// (within [`dropping_after_panic`]) its serving future panicked.
    fn drop(&mut self) {
        if self.open.is_some() {
            self.close_once(dropped_reason());
        }
    }
}

/// Why something that closes when dropped (a connection's accounts, a
/// message handler's session) closed, dropped without a close:
/// [`CloseReason::Panic`] while a panic unwinds through it (an `async fn`
/// that holds it, `serve_tls`'s, drops it as the panic passes, before any
/// catch) or within [`dropping_after_panic`]; else
/// [`CloseReason::Shutdown`], cut off by the server.
pub(crate) fn dropped_reason() -> CloseReason {
    if AFTER_PANIC.with(Cell::get) || std::thread::panicking() {
        CloseReason::Panic
    } else {
        CloseReason::Shutdown
    }
}

thread_local! {
    /// Set while [`dropping_after_panic`] runs.
    static AFTER_PANIC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `drop_it`, which drops a connection's serving future after it
/// panicked: a connection dropped meanwhile closes as [`CloseReason::Panic`],
/// not as cut off by the server (the flag is cleared after, also if a drop
/// panics in turn).
pub(crate) fn dropping_after_panic(drop_it: impl FnOnce()) {
    crate::observe::metrics::dropping_with(&AFTER_PANIC, drop_it);
}
