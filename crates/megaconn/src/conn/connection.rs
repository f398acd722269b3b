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
//!
//! A connection woken from the parking lot holds its slot as the lot did,
//! detached, and borrows the worker's counters and the server's limits
//! through the lot's one `Rc` ([`WorkerAccounts`], [`Held::Lot`]): a
//! heartbeat's wake and re-park take no `Arc` count, whose locked
//! increments and decrements were four a heartbeat. Only its close (or its
//! hand-over with an upgraded socket) turns the slot back into an owned one.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use crate::conn::limit::{ConnectionLimit, ConnectionSlot};
use crate::observe::close::{CloseReason, ProtocolDetail};
use crate::observe::lifecycle::{ConnTrack, DetachedTrack};
use crate::observe::stats::{gauge, incr, WorkerStats};

/// A lifecycle track that a close reports to.
pub(crate) trait CloseTrack {
    /// How a connection with this track holds its accounts: through its
    /// worker ([`Held`]) while the worker serves it, all its own
    /// ([`Owned`], `Send`) once handed over with an upgraded socket.
    type Home: Home + std::fmt::Debug;

    /// Reports the close (once); a panic in the hook counts in `stats`.
    fn close(&self, reason: CloseReason, stats: &WorkerStats);
}

impl CloseTrack for Rc<ConnTrack> {
    type Home = Held;

    fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        ConnTrack::close(self, reason, stats);
    }
}

/// A parked connection's track, as the parking lot keeps it: closed as it
/// is, not woken first (`ParkingLot::closed`).
impl CloseTrack for ConnTrack {
    type Home = Held;

    fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        ConnTrack::close(self, reason, stats);
    }
}

impl CloseTrack for DetachedTrack {
    type Home = Owned;

    fn close(&self, reason: CloseReason, stats: &WorkerStats) {
        DetachedTrack::close(self, reason, stats);
    }
}

/// Where an open connection's accounts go: the worker's counters it counts
/// into, and its places in the server's limits, given back at its close.
pub(crate) trait Home {
    /// The worker's counters.
    fn stats(&self) -> &Arc<WorkerStats>;

    /// The connection closed: gives its places in the limits back, then
    /// hands the counters to `then` (the lifecycle hook's report comes
    /// after the places are free, [`Connection::close`]).
    fn free_places(self, then: impl FnOnce(&WorkerStats));
}

/// A connection's own claim on the limits and count on the worker's
/// counters: an accepted connection's, and a handed-over one's (`Send`).
#[derive(Debug)]
pub(crate) struct Owned {
    slot: ConnectionSlot,
    stats: Arc<WorkerStats>,
}

impl Home for Owned {
    fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    fn free_places(self, then: impl FnOnce(&WorkerStats)) {
        let Owned { slot, stats } = self;
        drop(slot);
        then(&stats);
    }
}

/// A worker's counters and the server's limits, lent by its parking lot to
/// the connections it wakes ([`Held::Lot`]): one `Rc` a worker, whose
/// count (not atomic) is all a wake-up takes. A woken connection took its
/// own `Arc`s of both before, two locked increments a heartbeat and two
/// locked decrements at its re-park (`bench/HEARTBEAT.md`, session 52).
#[derive(Debug)]
pub(crate) struct WorkerAccounts {
    stats: Arc<WorkerStats>,
    limit: ConnectionLimit,
}

impl WorkerAccounts {
    /// The accounts of the worker whose counters are `stats`, under `limit`.
    pub(crate) fn new(stats: Arc<WorkerStats>, limit: ConnectionLimit) -> Rc<WorkerAccounts> {
        Rc::new(WorkerAccounts { stats, limit })
    }

    /// The worker's counters.
    #[inline]
    pub(crate) fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }
}

/// How a connection its worker serves holds its accounts.
#[derive(Debug)]
pub(crate) enum Held {
    /// Accepted (or adopted): its own slot and `Arc`, as it was given them.
    Own(Owned),
    /// Woken from the parking lot: its places stay as the lot held them,
    /// detached (taken, with no owner), and the worker's accounts free
    /// them at its close; parking again only hands the client IP back.
    Lot {
        accounts: Rc<WorkerAccounts>,
        /// The client IP whose per-IP place it holds (with a per-IP limit).
        ip: Option<IpAddr>,
    },
}

impl Held {
    /// The connection parks: its places stay taken, detached; returns the
    /// client IP whose per-IP place it holds, for the lot to keep.
    fn detach(self) -> Option<IpAddr> {
        match self {
            Held::Own(own) => own.slot.detach(),
            Held::Lot { ip, .. } => ip,
        }
    }

    /// The same places and counters, owned (to leave the worker's thread).
    fn into_owned(self) -> Owned {
        match self {
            Held::Own(own) => own,
            Held::Lot { accounts, ip } => Owned {
                slot: accounts.limit.reattach(ip),
                stats: accounts.stats.clone(),
            },
        }
    }
}

impl Home for Held {
    fn stats(&self) -> &Arc<WorkerStats> {
        match self {
            Held::Own(own) => &own.stats,
            Held::Lot { accounts, .. } => &accounts.stats,
        }
    }

    fn free_places(self, then: impl FnOnce(&WorkerStats)) {
        match self {
            Held::Own(own) => own.free_places(then),
            Held::Lot { accounts, ip } => {
                // The places detached while it was parked go back as an
                // owned slot's do, without a slot made only to be dropped.
                accounts.limit.release_detached(ip);
                then(&accounts.stats);
            }
        }
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
struct Open<K: CloseTrack> {
    home: K::Home,
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
        Connection {
            open: Some(Open {
                home: Held::Own(Owned { slot, stats }),
                track,
            }),
        }
    }

    /// The lifecycle track, if connections are tracked.
    pub(crate) fn track(&self) -> Option<&Rc<ConnTrack>> {
        self.open.as_ref().and_then(|o| o.track.as_ref())
    }

    /// Gives a connection accepted untracked its track: one from a
    /// trusted balancer is tracked once its PROXY header named the
    /// client (`dispatch::serve_proxied`), so that the hook, the registry
    /// and the access log see the client, not the balancer.
    pub(crate) fn set_track(&mut self, track: Rc<ConnTrack>) {
        if let Some(open) = self.open.as_mut() {
            open.track = Some(track);
        }
    }

    /// Claims a place for `ip` under `limit`'s per-IP limit, for a
    /// connection accepted without one (a trusted balancer's, whose
    /// client its PROXY header named); true without a per-IP limit.
    pub(crate) fn admit_ip(&mut self, limit: &ConnectionLimit, ip: IpAddr) -> bool {
        match self.open.as_mut().map(|o| &mut o.home) {
            Some(Held::Own(own)) => limit.admit_ip(&mut own.slot, ip),
            _ => true,
        }
    }

    /// The connection goes to the parking lot: still open, its slot detached
    /// (the lot releases it when the socket closes); returns what the lot
    /// keeps for it.
    pub(crate) fn park(mut self) -> ParkedAccounts {
        let Some(open) = self.open.take() else {
            return ParkedAccounts::default();
        };
        ParkedAccounts {
            ip: open.home.detach(),
            track: open.track,
        }
    }

    /// The connection leaves the worker's task with an upgraded socket: the
    /// returned accounts are `Send` and close the connection when they drop.
    pub(crate) fn into_send(mut self) -> SendConnection {
        let open = self.open.take().expect("a connection is handed over once");
        Connection {
            open: Some(Open {
                home: open.home.into_owned(),
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
            open: open.map(|Open { home, track }| Open {
                home,
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

impl<K: CloseTrack<Home = Held>> Connection<K> {
    /// A parked connection leaving the lot (it never stopped counting as
    /// open), its places still held as the lot held them (`ip`: the one
    /// [`park`](Connection::park) gave), through the worker's `accounts`;
    /// with its track as the lot kept it (`ConnTrack`) or as its task will
    /// share it (`Rc<ConnTrack>`).
    pub(crate) fn resume(
        accounts: &Rc<WorkerAccounts>,
        ip: Option<IpAddr>,
        track: Option<K>,
    ) -> Self {
        Connection {
            open: Some(Open {
                home: Held::Lot {
                    accounts: accounts.clone(),
                    ip,
                },
                track,
            }),
        }
    }
}

impl<K: CloseTrack> Connection<K> {
    /// Closes the connection's accounts: frees its slot, counts the close by
    /// reason and reports it. The one place a close is counted.
    pub(crate) fn close(mut self, reason: CloseReason) {
        self.close_once(reason);
    }

    /// The worker's counters, while the connection is open (a protocol run
    /// on an upgraded socket counts its errors there).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn stats(&self) -> Option<&Arc<WorkerStats>> {
        self.open.as_ref().map(|o| o.home.stats())
    }

    /// The lifecycle track, to count into (a handed-over connection counts
    /// the bytes crossing its socket).
    pub(crate) fn track_mut(&mut self) -> Option<&mut K> {
        self.open.as_mut().and_then(|o| o.track.as_mut())
    }

    fn close_once(&mut self, reason: CloseReason) {
        let Some(Open { home, track }) = self.open.take() else {
            return;
        };
        let stats = home.stats();
        // `SeqCst`, as in `count_drain_pending`, whose count this keeps.
        let open = stats.connections_open.fetch_sub(1, SeqCst) - 1;
        drain_closed(stats, open);
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
        home.free_places(|stats| {
            if let Some(track) = track {
                track.close(reason, stats);
            }
        });
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

/// A paced drain begins on the worker whose counters are `stats`: its
/// count of what is left (`megaconn_shutdown_drain_pending`) is the
/// worker's connections still open, of every kind (idle, parked, awake,
/// new ones within their 5 s, busy ones finishing an answer), and each
/// close ([`Connection::close`], the one place a close is counted) counts
/// it down until the drain ends (the worker sets it to 0 then). Nothing
/// opens during a drain (the accept loops and adoptions stopped first), so
/// the count only falls, and each close leaves it at the lowest count of
/// open connections seen yet (`fetch_min`), whatever the order in which
/// closes on several threads (a handed-over connection's, dropped on a
/// handler's task) reach it.
///
/// Why not the drain's own tally: it counted the turns it gave, not the
/// closes, and a new connection younger than 5 s is given its turn but
/// closes only at its cut (5 s after its accept,
/// `conn::shutdown::NEW_CONNECTION_GRACE`): the count read that many low
/// for up to 5 s, and 0 once the turns ran out, while they (and answers
/// under way, goodbyes being written) were still open. Connections busy
/// when the drain began were never in it.
pub(crate) fn count_drain_pending(stats: &WorkerStats) {
    let (open, pending) = (&stats.connections_open, &stats.drain_pending);
    pending.store(open.load(SeqCst), SeqCst);
    // A close on another thread between that load and the store found the
    // count not yet armed (0) and left it: its close is in this load.
    pending.fetch_min(open.load(SeqCst), SeqCst);
}

/// A close of one of the connections `stats` counts, leaving `open` open:
/// during a paced drain ([`count_drain_pending`]: its count above 0), the
/// drain's count falls to it. Outside a drain, one load.
fn drain_closed(stats: &WorkerStats, open: i64) {
    if stats.drain_pending.load(SeqCst) > 0 {
        stats.drain_pending.fetch_min(open, SeqCst);
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

#[cfg(test)]
mod tests {
    //! A woken connection's accounts, held through its worker.

    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    /// A connection woken from the lot takes no count on the worker's
    /// counters (an `Arc` clone, a locked increment, at every wake-up, and
    /// a decrement at the re-park), and still counts into them; its places
    /// in the limits stay taken across wakes and re-parks, and come back
    /// at its close, its per-IP place too.
    #[test]
    fn a_woken_connection_borrows_its_workers_accounts_and_frees_its_places_at_close() {
        let stats = Arc::new(WorkerStats::default());
        let limit = ConnectionLimit::new(1, Some(1));
        let accounts = WorkerAccounts::new(stats.clone(), limit.clone());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut slot = limit.try_acquire().unwrap();
        assert!(limit.admit_ip(&mut slot, ip));
        let mut parked = Connection::open(slot, stats.clone(), None).park();
        let counts = Arc::strong_count(&stats);
        for round in 0..3 {
            let woken = Connection::<ConnTrack>::resume(&accounts, parked.ip, None).wake();
            assert_eq!(
                Arc::strong_count(&stats),
                counts,
                "round {round}: the wake-up took an Arc count"
            );
            assert!(Arc::ptr_eq(woken.stats().unwrap(), &stats));
            assert!(limit.is_full(), "round {round}: its place stays taken");
            parked = woken.park();
            assert_eq!(parked.ip, Some(ip), "round {round}: the lot keeps the IP");
        }
        assert!(limit.is_full(), "parked, its place stays taken");
        assert_eq!(stats.connections_open.load(Relaxed), 1);
        Connection::<ConnTrack>::resume(&accounts, parked.ip, None)
            .wake()
            .close(CloseReason::Shutdown);
        assert_eq!(stats.connections_open.load(Relaxed), 0, "counted closed");
        assert_eq!(stats.closed.load(Relaxed), 1);
        assert_eq!(Arc::strong_count(&stats), counts);
        let mut again = limit.try_acquire().expect("its place came back");
        assert!(limit.admit_ip(&mut again, ip), "and its IP's");
        // Once: a place given back twice would admit one over the limit.
        assert!(limit.try_acquire().is_none(), "its place came back twice");
        drop(again);
        let mut other = limit.try_acquire().expect("again's place came back");
        assert!(limit.admit_ip(&mut other, ip), "its IP's place, once");
    }

    /// The per-IP place of a woken connection comes back once at its close
    /// (room for two connections in all, one per IP: a place given back
    /// twice would let a second connection of that IP in).
    #[test]
    fn a_woken_connections_ip_place_comes_back_once() {
        let stats = Arc::new(WorkerStats::default());
        let limit = ConnectionLimit::new(2, Some(1));
        let accounts = WorkerAccounts::new(stats.clone(), limit.clone());
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let mut slot = limit.try_acquire().unwrap();
        assert!(limit.admit_ip(&mut slot, ip));
        let parked = Connection::open(slot, stats.clone(), None).park();
        Connection::<ConnTrack>::resume(&accounts, parked.ip, None)
            .wake()
            .close(CloseReason::Shutdown);
        let mut first = limit.try_acquire().expect("its place came back");
        assert!(limit.admit_ip(&mut first, ip), "its IP's place came back");
        let mut second = limit.try_acquire().expect("the other place");
        assert!(
            !limit.admit_ip(&mut second, ip),
            "its IP's place came back twice"
        );
    }

    /// A paced drain's count ([`count_drain_pending`]) is the connections
    /// open when it begins, and each close takes it down to what is still
    /// open, also a close on another thread (a handed-over connection);
    /// outside a drain a close leaves it at 0.
    #[test]
    fn a_drains_count_is_what_is_still_open() {
        let stats = Arc::new(WorkerStats::default());
        let limit = ConnectionLimit::new(8, None);
        let mut open: Vec<_> = (0..4)
            .map(|_| Connection::open(limit.try_acquire().unwrap(), stats.clone(), None))
            .collect();
        open.pop().unwrap().close(CloseReason::ClientClosed);
        assert_eq!(stats.drain_pending.load(Relaxed), 0, "no drain yet");
        count_drain_pending(&stats);
        assert_eq!(stats.drain_pending.load(Relaxed), 3);
        open.pop().unwrap().close(CloseReason::Shutdown);
        assert_eq!(stats.drain_pending.load(Relaxed), 2, "a close counted");
        let sent = open.pop().unwrap().into_send();
        std::thread::spawn(move || drop(sent)).join().unwrap();
        assert_eq!(stats.drain_pending.load(Relaxed), 1, "on another thread");
        drop(open);
        assert_eq!(stats.drain_pending.load(Relaxed), 0);
        assert_eq!(stats.connections_open.load(Relaxed), 0);
    }

    /// A woken connection handed over with an upgraded socket owns its
    /// places from then on (`Send`): they come back when it drops, on
    /// whichever thread.
    #[test]
    fn a_woken_connection_handed_over_owns_its_places() {
        let stats = Arc::new(WorkerStats::default());
        let limit = ConnectionLimit::new(1, Some(1));
        let accounts = WorkerAccounts::new(stats.clone(), limit.clone());
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let mut slot = limit.try_acquire().unwrap();
        assert!(limit.admit_ip(&mut slot, ip));
        let parked = Connection::open(slot, stats.clone(), None).park();
        let sent = Connection::<ConnTrack>::resume(&accounts, parked.ip, None)
            .wake()
            .into_send();
        drop(accounts);
        assert!(limit.is_full());
        std::thread::spawn(move || drop(sent)).join().unwrap();
        assert_eq!(stats.connections_open.load(Relaxed), 0, "dropped: closed");
        let mut again = limit.try_acquire().expect("its place came back");
        assert!(limit.admit_ip(&mut again, ip), "and its IP's");
    }
}
