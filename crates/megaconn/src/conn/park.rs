//! The parking lot: cold idle connections leave tokio altogether.
//!
//! A keep-alive connection that has been idle for `park_idle_after` gives up its
//! task, its tokio registration and its buffers, and becomes a bare socket in
//! this worker's private epoll set. Tokio watches that one epoll descriptor
//! through a single `AsyncFd`; when a parked socket turns readable (a request,
//! or the client hanging up) it becomes a `TcpStream` and a task again. What a
//! parked connection costs in user space is one 8-byte slot in an fd-indexed
//! array (its deadline, protocol, when it parked and which worker's lot
//! holds it), one array per process whatever its worker count
//! (`park/slots.rs`); with a per-IP limit, 17 bytes more for its client IP,
//! with `max_connection_age`, 4 more for when it is to be retired (those two
//! per descriptor in each worker) — against ~1 KB for a
//! task per connection (task cell, `ScheduledIo`, timer entry), which is why
//! the million-connection target needs this.
//!
//! Idle timeouts of parked sockets are not timers: a sweep walks the deadline
//! array (a few hundred microseconds per million entries) and closes the
//! expired ones. It runs once a second after a burst of parkings or
//! closes (until the heap is trimmed; a heartbeat's wake and re-park are no
//! churn), and otherwise when the earliest
//! deadline is due, or every ten seconds: a quiet lot costs an idle worker
//! almost no wake-ups.
//!
//! The price of parking is CPU per idle→active cycle, so only cold
//! connections are parked and busy keep-alive connections stay tasks; and
//! the cycle is kept cheap for the common cold case, a heartbeat,
//! which is served without registering with tokio unless it has to wait
//! (`woken.rs`) and makes no `epoll_ctl` at all.
//!
//! # One registration across wake-ups
//!
//! A socket is added once, edge-triggered (`EPOLLIN | EPOLLRDHUP | EPOLLET`),
//! and stays in the set while it is awake. Re-parking it is then free: with
//! `EPOLLONESHOT` (as before) every re-park was an `EPOLL_CTL_MOD`, an rbtree
//! lookup in a set of ~20,000 sockets plus a poll of the socket, ~9% of the
//! server's CPU at a million connections with 30 s heartbeats. The price is
//! that the set keeps firing while the socket is awake, and an edge is
//! reported once. The rules that keep every byte heard:
//!
//! ```text
//!  parked ──edge──> AWAKE (still in the set, the edge consumed)
//!    ^                 │ served on the lot's turn, or as a task
//!    │                 ├─ it registers with tokio to wait (`woken.rs`): tokio's
//!    │                 │  epoll watches it now ─> EPOLL_CTL_DEL, ABSENT; else
//!    │                 │  each request of a busy connection would wake the lot
//!    │                 │  too, for bytes the task reads first (the kernel then
//!    │                 │  drops the event: not readable any more)
//!    │                 ├─ an edge reaches the lot while AWAKE (a task that
//!    │                 │  waits on something else, an upgraded socket) ─> the
//!    │                 │  same DEL: its task reads it, not the lot
//!    │                 └─ closed: the kernel takes it out; the state goes stale
//!    └── park: AWAKE and the transport says "still watched" (`Parking::watched`:
//!        every byte since the wake was read up to a short read, or came after
//!        it and raised an edge of its own) ──> nothing
//!        AWAKE, not watched (a new connection on a reused descriptor, bytes
//!        possibly unread) ──> MOD (re-polls: an event if readable), ENOENT ──> ADD
//!        ABSENT ──> ADD (which polls too)
//! ```
//!
//! Only the socket the lot woke can say "watched" (`WokenSocket`), so a stale
//! `AWAKE` left by a closed socket never skips the `ADD` of a new connection
//! on the same descriptor. Bytes that come while a woken socket is served
//! and are read before it parks raise an edge, but epoll polls the socket
//! again before it reports one, finds nothing to read and drops it: no
//! wake-up for nothing. Counts: a cold wake served and re-parked, none (main
//! had one MOD); a wake that has to wait as a task, DEL + tokio's ADD and
//! DEL + ADD (one more than the MOD before).
//!
//! # Batching wake-ups (`park_wake_batch`, off by default)
//!
//! Tokio hears of the lot through one descriptor: the lot's set itself, or,
//! with batching on, a [`Relay`] set holding only the lot's. A lot that
//! served a turn less than two windows ago switches the relay off for one
//! window (an `EPOLL_CTL_MOD` on a set of one item), so parked sockets that
//! wake meanwhile queue in the lot's set and wake no one; then it switches
//! it on and serves them in one turn. Fewer, larger turns of the worker,
//! for up to one window more latency on a parked connection's request, only
//! while the lot is that busy (a quiet lot answers at once).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use crate::conn::connection::{Connection, ParkedAccounts, WorkerAccounts};
use crate::conn::context::WorkerContext;
use crate::conn::limit::ConnectionLimit;
use crate::conn::{Incoming, ProtoTag, Wake};
use crate::observe::close::CloseReason;
use crate::observe::lifecycle::{ConnTrack, ParkedTrack, TrackHandles};
use crate::observe::ratelog;
use crate::observe::stats::{gauge_own, incr, incr_own, WorkerStats};

mod awake;
mod owed;
mod slots;

pub(crate) use owed::wake_owed;

use slots::{Claim, GROW_BY};

/// Per-fd state: not in the private epoll set.
const ABSENT: u32 = 0;

/// Per-fd state: parked with no idle timeout.
const NO_DEADLINE: u32 = u32::MAX;

/// Per-fd state: woken and being served, still in the epoll set (edge-armed).
/// The state goes stale when the connection closes the socket (closing takes
/// it out of the set); `park` trusts it only for a socket that says it is the
/// one the lot woke (`Parking::watched`).
const AWAKE: u32 = u32::MAX - 1;

/// The largest deadline tick, below the special states.
const MAX_TICK: u32 = u32::MAX - 2;

/// What a parked socket waits for. Edge-triggered, not one-shot: it stays in
/// the set, armed, while awake, so re-parking needs no `epoll_ctl` (see the
/// module doc for what keeps edges from being lost).
const PARKED_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// The longest a quiet lot sleeps between sweeps: one with nothing parked,
/// or nothing due, still looks this often at the worker's buffer pool, which
/// connections that never park fill too. (Every second, as before, was two
/// wake-ups a second of an idle worker: tokio's timer wheel reaches a
/// deadline past 64 ms in two steps.)
const QUIET_SWEEP: Duration = Duration::from_secs(10);

/// The most parked connections one [`ParkingLot::evict`] closes (nginx's
/// `ngx_drain_connections` closes up to 32 reusable ones at a time).
const EVICT_MAX: usize = 32;

/// Events taken from the private epoll set per wake-up.
const MAX_EVENTS: usize = 256;

/// After this many parkings or wake-ups, give freed task memory back to the OS.
const TRIM_EVERY: usize = 1024;

/// After at least this many parkings or wake-ups followed by a quiet second
/// (none), give freed memory back too: the tail of a ramp, fewer than
/// [`TRIM_EVERY`] since the last trim, would otherwise stay with the
/// allocator until more churn comes (at 5,000 new framed connections a
/// second into one process: ~50 B per connection, bench/FRAMED.md).
const TRIM_AFTER_BURST: usize = 64;

/// Per-fd flag (in the slot's protocol byte): at the deadline, wake the
/// connection instead of closing it as idle.
const WAKE_AT_DEADLINE: u8 = 0x80;

/// Per-fd flag (in the slot's protocol byte): parked straight after serving
/// a wake-up, so its stamp says when a wake-up was served (hot/cold
/// detection); without it the stamp only says when it parked (shutdown's
/// grace, [`ParkingLot::close_all`]).
const PARKED_AT_ONCE: u8 = 0x40;

/// The flags of a slot's protocol byte; the protocol's tag is the rest.
const FLAGS: u8 = WAKE_AT_DEADLINE | PARKED_AT_ONCE;

/// The resolution of a slot's parked-at stamp, in milliseconds: 16 bits of
/// 4 ms wrap every ~262 s, and only differences below `hot_within` (clamped
/// to half that: ~131 s) and the shutdown's idle grace (half a second) are
/// ever taken. A stamp that old is cleared by the lot's sweep before it can
/// wrap ([`STAMP_AGED`]).
const STAMP_MS: u64 = 4;

/// The stamp's bits (it shares a word with the owner and protocol bytes).
const STAMP_MASK: u32 = 0xFFFF;

/// A parked slot's stamp this many units old (half the wrap, ~131 s, past
/// any difference the lot asks about) is cleared to 0, "parked long ago",
/// by the lot's walk of [`ParkingLot::age_stamps`]: left alone, a
/// connection woken a whole number of wraps (k × ~262 s) plus a few units
/// after it parked read as parked just now: hot, kept awake as a task for
/// `park_idle_after`, and given the shutdown's grace.
const STAMP_AGED: u32 = STAMP_MASK / 2 + 1;

/// How often a sweep also walks the array to clear old stamps
/// ([`ParkingLot::age_stamps`]): a stamp is cleared between [`STAMP_AGED`]
/// (~131 s) and that plus this plus a sweep's interval ([`QUIET_SWEEP`]),
/// ~205 s, inside the ~262 s wrap. Not at every sweep: the sweep's walk
/// runs every second while connections come and go, over every slot of
/// the process (~5.5 instructions each), and the stamp's test there would
/// have added ~4 a parked slot to it (`bench/FRAMED.md`, session 43).
const AGE_EVERY: Duration = Duration::from_secs(64);

/// One descriptor's entry in the process's array (`park/slots.rs`): 8
/// bytes, so that a wake-up and the park after it touch one cache line per
/// connection. (Three arrays, as before, were three cache misses per
/// heartbeat at a million connections, where no process's arrays stay in
/// the cache between its heartbeats.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// [`ABSENT`], [`AWAKE`], [`NO_DEADLINE`], or the idle deadline's
    /// second + 1 (counted from its lot's `epoch`).
    deadline: u32,
    /// Low byte: the protocol it resumes in (`ProtoTag`, low 6 bits),
    /// [`WAKE_AT_DEADLINE`] and [`PARKED_AT_ONCE`]. Next byte: the lot
    /// that holds it (its owner id, `slots::Claim`), which alone serves it.
    /// High 16 bits: when it was parked (a [`ParkingLot::stamp_now`], never
    /// 0; cleared to 0, "long ago", by a sweep once [`STAMP_AGED`] old):
    /// with [`PARKED_AT_ONCE`], to tell, on wake-up, a connection that
    /// turned busy from a cold one; for every connection, to give one that
    /// parked just before a graceful shutdown the grace of an idle task.
    mark: u32,
}

impl Slot {
    /// Whether a parked socket holds it (not [`ABSENT`], not [`AWAKE`]).
    fn is_parked(self) -> bool {
        self.deadline != ABSENT && self.deadline != AWAKE
    }

    /// Whether a lot holds it, parked or awake (not [`ABSENT`]): a page of
    /// the array with one of these is not given back.
    fn is_live(self) -> bool {
        self.deadline != ABSENT
    }

    fn proto(self) -> u8 {
        self.mark as u8
    }

    fn tag(self) -> ProtoTag {
        ProtoTag(self.proto() & !FLAGS)
    }

    /// The owner id of the lot that holds it (meaningful while live).
    fn owner(self) -> u8 {
        (self.mark >> 8) as u8
    }

    fn parked_at(self) -> u32 {
        self.mark >> 16
    }

    /// The same slot with its stamp cleared: parked long ago
    /// ([`STAMP_AGED`]).
    fn aged(self) -> Slot {
        Slot {
            mark: self.mark & 0xFFFF,
            ..self
        }
    }

    /// The same slot in `to` ([`ABSENT`], [`AWAKE`]).
    fn now(self, to: u32) -> Slot {
        Slot {
            deadline: to,
            ..self
        }
    }

    fn bits(self) -> u64 {
        u64::from(self.deadline) | u64::from(self.mark) << 32
    }

    fn from_bits(bits: u64) -> Slot {
        Slot {
            deadline: bits as u32,
            mark: (bits >> 32) as u32,
        }
    }

    /// When it parked straight after serving a wake-up; 0 if it parked
    /// after idling as a task (never hot).
    fn served_wake_at(self) -> u32 {
        if self.proto() & PARKED_AT_ONCE != 0 {
            self.parked_at()
        } else {
            0
        }
    }
}

/// Turns a woken socket back into a served connection.
pub(crate) type Respawn = Rc<dyn Fn(Incoming, Connection)>;

/// Told when the lot closes a parked socket itself (its deadline, shutdown,
/// a failed re-arm), with the socket's protocol tag, while the descriptor is
/// still open: a protocol that keeps state for its parked connections
/// (framed) drops it here.
pub(crate) type OnParkedClose = Rc<dyn Fn(RawFd, ProtoTag, CloseReason)>;

/// What a parked connection's deadline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtDeadline {
    /// Close it as idle (`idle_timeout`).
    Close,
    /// Wake it (a protocol's timer: the framed protocol's heartbeat
    /// deadline, a server-sent heartbeat or ping).
    Wake,
}

/// An epoll descriptor as tokio watches it (the lot's set or its
/// [`Relay`]), borrowed: its owner outlives the watch (both are fields of
/// the lot, the watch declared first, so dropped first).
struct LotFd(RawFd);

impl AsRawFd for LotFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers `fd` with the worker's runtime, for reading.
fn watch_fd(fd: &OwnedFd) -> io::Result<AsyncFd<LotFd>> {
    // SAFETY: `fd` stays open while the returned handle lives: the lot owns
    // both and drops the handle first (see `ParkingLot::watch`).
    unsafe { AsyncFd::register_with_interest(LotFd(fd.as_raw_fd()), tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Batching wake-ups (`park_wake_batch`): an epoll set between tokio's and
/// the lot's, holding only the lot's, which can be switched off and on.
///
/// Why: at a million connections with 30 s heartbeats a worker process gets
/// a heartbeat every 1–2 ms, and each one woke it alone: a context switch,
/// and for the client an inter-processor wake-up in its `send`. That lone
/// wake-up costs about as much again as serving the heartbeat
/// (bench/HEARTBEAT.md). While switched off, bytes on a parked socket still
/// queue it in the lot's set, but wake no one; switched on again, the lot
/// serves all of them in one turn.
///
/// Why not take the lot's set out of tokio's instead: adding an epoll set
/// to another checks the nested set for loops, item by item, which took
/// 2.6 ms per `EPOLL_CTL_ADD` with 15,000 parked sockets (strace). A
/// `EPOLL_CTL_MOD` on a set of one item does no such check.
struct Relay {
    fd: OwnedFd,
    lot: RawFd,
    /// `park_wake_batch`: how long the relay stays off.
    window: Duration,
}

impl Relay {
    /// A relay holding `lot`, switched on, batching over `window`.
    fn new(lot: &OwnedFd, window: Duration) -> io::Result<Relay> {
        // SAFETY: epoll_create1 has no memory arguments; we own the returned fd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let relay = Relay {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            lot: lot.as_raw_fd(),
            window,
        };
        relay.ctl(libc::EPOLL_CTL_ADD, true)?;
        Ok(relay)
    }

    /// Switches the relay on (the lot's events wake the worker again, and
    /// any that came while it was off do now) or off.
    fn switch(&self, on: bool) -> io::Result<()> {
        if on {
            // The relay's own ready list still holds the lot from its last
            // report (nothing reads the relay): empty it, or switching on
            // would not announce events the lot already has. Edge-triggered,
            // so reading it takes the lot off the list.
            let mut event = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: room for one event; timeout 0 never blocks.
            if unsafe { libc::epoll_wait(self.fd.as_raw_fd(), &mut event, 1, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.ctl(libc::EPOLL_CTL_MOD, on)
    }

    fn ctl(&self, op: i32, on: bool) -> io::Result<()> {
        // Off: no event asked for, so the lot's readiness stops here (epoll
        // ignores a wake-up for an item that asks for nothing).
        let events = if on {
            (libc::EPOLLIN | libc::EPOLLET) as u32
        } else {
            libc::EPOLLET as u32
        };
        let mut event = libc::epoll_event { events, u64: 0 };
        // SAFETY: both descriptors are open epoll sets; `event` is initialised.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, self.lot, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One worker's parking lot.
pub(crate) struct ParkingLot {
    /// What tokio watches: `epoll` itself, or the `relay` that holds it.
    /// Declared first, so that it is dropped (deregistered) while both
    /// descriptors are still open.
    watch: AsyncFd<LotFd>,
    /// With `park_wake_batch`: the relay set tokio watches instead.
    relay: Option<Relay>,
    /// The private epoll set of parked sockets.
    epoll: OwnedFd,
    /// Its place in the process's slot array (per file descriptor: its
    /// [`Slot`]), shared with every other lot (`park/slots.rs`).
    claim: Claim,
    /// Re-parked at once and woken again within this many stamp units
    /// ([`STAMP_MS`]): the connection is hot.
    hot_within: u32,
    parked: Cell<usize>,
    churn_since_trim: Cell<usize>,
    /// `churn_since_trim` at the last sweep (unchanged since: quiet).
    churn_at_sweep: Cell<usize>,
    /// Heap trims so far (for tests).
    trims: Cell<usize>,
    /// The worker's `closed` counter at the last sweep: closes since then
    /// count toward the next trim too. A burst of connections that never
    /// parked (an HTTP/2 client's streams, a flood of uploads) leaves their
    /// tasks' memory with glibc otherwise: 1 GB stayed in RSS after 1,000
    /// such connections closed (session 37's memory audit).
    closed_at_sweep: Cell<u64>,
    /// The earliest deadline tick of a parked connection, as far as known
    /// (lowered by parks, recomputed by sweeps; an earlier one that went
    /// away only costs a sweep with nothing to do). [`NO_DEADLINE`]: none.
    next_due: Cell<u32>,
    /// A park lowered `next_due` since the run loop last looked, and the
    /// run loop's waker, to move its sweep earlier.
    due_moved: Cell<bool>,
    sweep_waker: Cell<Option<std::task::Waker>>,
    /// Parked sockets the hub asked to wake to write what a push left owed
    /// (`owed.rs`), until the lot's next turn serves them, and the run
    /// loop's waker. Empty but for that moment.
    /// Each with its slot as it was asked for (`owed.rs`: a socket that
    /// closed meanwhile and whose descriptor parked again is not woken).
    owed: RefCell<Vec<(RawFd, Slot)>>,
    owed_waker: Cell<Option<std::task::Waker>>,
    epoch: Instant,
    /// The last instant [`ParkingLot::tick_of`] converted, and its tick; the
    /// same for [`ParkingLot::stamp_now`]. Within a turn every wake and park
    /// converts the turn's one clock reading and the same idle deadline
    /// (`observe/clock.rs`), so one conversion (a checked `Timespec`
    /// subtraction and a division, ~60 instructions) serves them all.
    last_tick: Cell<(Instant, u32)>,
    last_stamp: Cell<(Instant, u32)>,
    /// When a sweep last cleared old stamps ([`ParkingLot::age_stamps`]).
    aged_at: Cell<Instant>,
    /// The worker's counters (the lot's own counts go there too:
    /// [`ParkingLot::stats`]) and the server's limits, lent to the
    /// connections it wakes (`Connection::resume`): no `Arc` count a
    /// wake-up.
    accounts: Rc<WorkerAccounts>,
    respawn: RefCell<Option<Respawn>>,
    on_close: RefCell<Option<OnParkedClose>>,
    /// Per file descriptor: the lifecycle track of the connection parked on
    /// it (only with connection tracking: an `on_connection` hook, the
    /// access log or `track_connections`; empty otherwise), by value: its
    /// id, peer, open time and counts, ~88 B per descriptor up to the
    /// highest one a tracked connection parked on (the worker's hook and
    /// registry, which each kept too, ~120 B, are in `track_handles`).
    /// Indexed by descriptor (in this worker's own array, not the process's
    /// like the slots: only tracked connections pay it), not an `Rc` in a
    /// map: a track allocated at accept and kept while parked sat among the freed
    /// allocations of the connections' tasks, one every ~1.7 KB, and held
    /// their pages from `malloc_trim` (`ConnTrack::park`; a parked
    /// connection was ~950 B with `--debug-connections`, 24 B without,
    /// bench/ALLOCATORS.md). Given back whole by the sweep once no tracked
    /// connection is parked (`tracks_parked`), or a peak of
    /// parked connections would keep it to the process's end.
    tracks: RefCell<Vec<Option<ParkedTrack>>>,
    /// How many entries of `tracks` hold a track.
    tracks_parked: Cell<usize>,
    /// The hook and registry every track in `tracks` reports to: the
    /// worker's, taken from the first track parked.
    track_handles: RefCell<Option<TrackHandles>>,
    /// Per file descriptor: the client IP whose per-IP place a parked
    /// connection holds (only with a per-IP limit; empty otherwise). Kept
    /// here because reading it back from the socket fails once the peer
    /// reset it. Indexed by descriptor, not hashed: 17 B per descriptor in
    /// each worker (its own array, unlike the slots) with the limit on,
    /// where a map cost ~50-90 B per parked connection and a hash per park
    /// and wake.
    ips: RefCell<Vec<Option<IpAddr>>>,
    /// Per file descriptor: when the connection on it is to be retired
    /// (`max_connection_age`), as a deadline tick (rounded up: retired up to
    /// a second late), 0 for none. Written at accept, for every connection
    /// (so a reused descriptor never shows the previous connection's), read
    /// each time HTTP/1.1 serves it: a connection that parks between
    /// requests keeps its age, where one drawn at each wake-up never came.
    /// Only with that option on (empty otherwise; 4 B per descriptor in each
    /// worker with it). Kept here, not in the connection's accounts, which every
    /// connection's task carries.
    retire: RefCell<Vec<u32>>,
}

impl std::fmt::Debug for ParkingLot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot")
            .field("parked", &self.parked.get())
            .finish_non_exhaustive()
    }
}

/// A parking lot's descriptors, registered with its worker's runtime: what
/// making a lot can fail at (`EMFILE` and the like). Made on the thread
/// that starts the server, so that the failure fails the start
/// (`Server::start`), and moved into the worker's thread, where the lot
/// (not `Send`) is built on them ([`ParkingLot::new`]).
pub(crate) struct LotFds {
    /// Declared first, dropped first (as `ParkingLot::watch`).
    watch: AsyncFd<LotFd>,
    relay: Option<Relay>,
    epoll: OwnedFd,
    claim: Claim,
}

impl LotFds {
    /// Creates the private epoll set (and with `batch`, `park_wake_batch`,
    /// its relay; zero: tokio watches the set itself). Must run inside the
    /// worker's runtime (`Runtime::enter` will do, on any thread).
    pub(crate) fn new(batch: Duration) -> io::Result<LotFds> {
        LotFds::on(batch, Claim::new()?)
    }

    /// [`LotFds::new`] with its place in the slot array given.
    fn on(batch: Duration, claim: Claim) -> io::Result<LotFds> {
        // SAFETY: epoll_create1 has no memory arguments; we own the returned fd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let relay = if batch.is_zero() {
            None
        } else {
            Some(Relay::new(&epoll, batch)?)
        };
        let watch = watch_fd(relay.as_ref().map_or(&epoll, |r| &r.fd))?;
        Ok(LotFds {
            watch,
            relay,
            epoll,
            claim,
        })
    }
}

impl ParkingLot {
    /// A lot on `fds`, on the worker's thread.
    pub(crate) fn new(
        fds: LotFds,
        limit: ConnectionLimit,
        stats: Arc<WorkerStats>,
        hot_within: Duration,
    ) -> ParkingLot {
        let LotFds {
            watch,
            relay,
            epoll,
            claim,
        } = fds;
        let epoch = Instant::now();
        ParkingLot {
            watch,
            relay,
            epoll,
            claim,
            hot_within: (hot_within.as_millis() / u128::from(STAMP_MS))
                .min(u128::from(STAMP_MASK / 2)) as u32,
            parked: Cell::new(0),
            churn_since_trim: Cell::new(0),
            churn_at_sweep: Cell::new(0),
            trims: Cell::new(0),
            closed_at_sweep: Cell::new(0),
            next_due: Cell::new(NO_DEADLINE),
            due_moved: Cell::new(false),
            sweep_waker: Cell::new(None),
            owed: RefCell::new(Vec::new()),
            owed_waker: Cell::new(None),
            epoch,
            last_tick: Cell::new((epoch, 1)),
            last_stamp: Cell::new((epoch, 1)),
            aged_at: Cell::new(epoch),
            accounts: WorkerAccounts::new(stats, limit),
            respawn: RefCell::new(None),
            on_close: RefCell::new(None),
            tracks: RefCell::new(Vec::new()),
            tracks_parked: Cell::new(0),
            track_handles: RefCell::new(None),
            ips: RefCell::new(Vec::new()),
            retire: RefCell::new(Vec::new()),
        }
    }

    /// The worker's counters, which the lot counts its parks, wakes and
    /// closes into: its accounts' (one field, not a second `Arc` of them).
    #[inline]
    fn stats(&self) -> &Arc<WorkerStats> {
        self.accounts.stats()
    }

    /// Sets (or, with `None`, clears) how woken sockets are served again.
    pub(crate) fn set_respawn(&self, respawn: Option<Respawn>) {
        *self.respawn.borrow_mut() = respawn;
    }

    /// Sets (or, with `None`, clears) who hears of the lot's own closes.
    pub(crate) fn set_on_close(&self, hook: Option<OnParkedClose>) {
        *self.on_close.borrow_mut() = hook;
    }

    /// Tells the protocol that the lot closed its parked socket `fd` (still
    /// open: the caller lets it go after). The
    /// protocol calls its handler's `on_close` (framed, WebSocket): a panic
    /// there is caught, counted and logged, or it would end the lot's task
    /// and strand every connection parked here.
    fn tell_closed(&self, fd: RawFd, proto: ProtoTag, reason: CloseReason) {
        // A proxied connection's client goes with it, while the descriptor
        // is still its own (`proxy_header::closing`).
        crate::conn::proxy_header::closing(fd);
        let hook = self.on_close.borrow().clone();
        if let Some(hook) = hook {
            let told =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(fd, proto, reason)));
            if told.is_err() {
                incr(&self.stats().panics);
                tracing::error!(
                    %reason,
                    "a handler's on_close panicked on a parked connection the lot closed"
                );
            }
        }
    }

    /// How many connections are parked now.
    pub(crate) fn len(&self) -> usize {
        self.parked.get()
    }

    /// Parks an idle connection's socket until it is readable or `deadline`
    /// passes (then closed as idle, or woken, as `at_deadline` says); it
    /// resumes in protocol `proto`. Its slot stays taken (detached) until it
    /// closes. `at_once`: parked straight after serving a wake-up, not after
    /// idling.
    pub(crate) fn park(&self, socket: OwnedFd, parking: Parking, conn: Connection) {
        let Parking {
            deadline,
            at_once,
            proto,
            at_deadline,
            watched,
        } = parking;
        let fd = socket.as_raw_fd();
        let idx = fd as usize;
        let slots = self.claim.slots();
        if !slots.holds(idx) {
            // Above the array (`park/slots.rs`: the hard open-file limit
            // raised since it was reserved, or the reservation refused
            // and halved): it stays awake instead (`park/awake.rs`).
            return self.refuse(socket, parking, conn);
        }
        let before = slots.get(idx);
        // Awake here, in this lot: a stale `AWAKE` of another lot (its
        // socket closed elsewhere) is no registration in this one's set.
        let was_awake = before.deadline == AWAKE && before.owner() == self.claim.owner();
        if let Err(error) = self.arm(fd, was_awake, watched) {
            ratelog::cannot_watch(&error, "cannot park a connection");
            if was_awake {
                slots.set(idx, before.now(ABSENT));
            }
            let reason = CloseReason::io(&error);
            conn.close(reason);
            self.tell_closed(fd, proto, reason);
            return;
        }
        let deadline = deadline.map_or(NO_DEADLINE, |d| self.tick_of(d));
        if deadline < self.next_due.get() {
            self.next_due.set(deadline);
            self.move_sweep();
        }
        debug_assert_eq!(proto.0 & FLAGS, 0, "a protocol tag fits in 6 bits");
        let stamp = self.stamp_now();
        let mut flags = if at_deadline == AtDeadline::Wake {
            WAKE_AT_DEADLINE
        } else {
            0
        };
        if at_once {
            flags |= PARKED_AT_ONCE;
        }
        let slot = Slot {
            deadline,
            mark: stamp << 16
                | u32::from(self.claim.owner()) << 8
                | u32::from((proto.0 & !FLAGS) | flags),
        };
        if was_awake {
            // A heartbeat's re-park: its slot was live throughout, so no
            // release can take its page (`park/slots.rs`).
            slots.set(idx, slot);
        } else {
            slots.claim(idx, slot);
        }
        let ParkedAccounts { track, ip } = conn.park();
        if let Some(track) = track {
            // Listed as parked through its own track (an adopted connection
            // was listed as `reading_head` while parked), kept by value.
            let mut handles = self.track_handles.borrow_mut();
            if !handles.as_ref().is_some_and(|h| track.shares(h)) {
                // Once per lot: its worker's tracks all share them.
                debug_assert!(
                    handles.is_none(),
                    "one worker's tracks share a hook and registry"
                );
                *handles = Some(track.handles());
            }
            drop(handles);
            set_side(&self.tracks, idx, Some(track.park()));
            self.tracks_parked.set(self.tracks_parked.get() + 1);
        }
        if let Some(ip) = ip {
            set_side(&self.ips, idx, Some(ip));
        }
        // The lot owns the descriptor from here on.
        let _ = socket.into_raw_fd();
        self.parked.set(self.parked.get() + 1);
        // A heartbeat (woken, served without waiting, parked again at
        // once) frees in its turn what it took, from caches mostly: its
        // cycle leaves the heap as it found it, and counted as churn it
        // made every lot of a steady load sweep each second, walking the
        // whole slot array (~410,000 instructions a sweep at 18,500
        // connections) and trimming a heap with nothing new to give back
        // (~50 `madvise` calls a trim), ~10 % of the server's instructions
        // a heartbeat (`bench/MILLION.md`, session 49). Its wake-up is not
        // counted either (`wake_ready`): a wake that waits as a task counts
        // when it parks again, or closes.
        if !at_once {
            self.churned();
        }
        // Plain stores, not locked adds: only this worker's thread writes
        // these (the lot is not `Send`), and a heartbeat moved each twice.
        gauge_own(&self.stats().connections_parked, 1);
        gauge_own(&self.stats().connections_idle, 1);
        incr_own(&self.stats().parks);
    }

    /// Seconds since `epoch`, rounded down, plus one: the tick a sweep at
    /// `at` has reached. Rounded down, where deadlines round up
    /// ([`ParkingLot::tick_of`]), so that a deadline expires only once it
    /// has passed: with both rounded up, a sweep up to a second before it
    /// found it expired (an idle timeout closed early; a protocol timer woke
    /// its connection before the protocol's own deadline, which found
    /// nothing to do, parked again and woke a second later as hot).
    fn tick_reached(&self, at: Instant) -> u32 {
        let secs = at.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs + 1).unwrap_or(MAX_TICK).min(MAX_TICK)
    }

    /// Seconds since `epoch`, rounded up, plus one (0 means "not parked"),
    /// remembering `at` for the next call ([`ParkingLot::last_tick`]).
    fn tick_of(&self, at: Instant) -> u32 {
        let (last, tick) = self.last_tick.get();
        if last == at {
            return tick;
        }
        let tick = self.tick_up(at);
        self.last_tick.set((at, tick));
        tick
    }

    /// [`ParkingLot::tick_of`] without its memory: for an instant converted
    /// once (a connection's retire time), which would evict the turn's.
    fn tick_up(&self, at: Instant) -> u32 {
        let secs = at
            .saturating_duration_since(self.epoch)
            .as_secs_f64()
            .ceil() as u64;
        u32::try_from(secs + 1).unwrap_or(MAX_TICK).min(MAX_TICK)
    }

    /// The parked-at stamp for now: [`STAMP_MS`] units since `epoch`,
    /// wrapping in 16 bits (every ~262 s) (only differences are used), never 0.
    fn stamp_now(&self) -> u32 {
        let now = crate::observe::clock::now();
        let (last, stamp) = self.last_stamp.get();
        if last == now {
            return stamp;
        }
        let units = now.saturating_duration_since(self.epoch).as_millis() as u64 / STAMP_MS;
        let stamp = (units as u32 & STAMP_MASK).max(1);
        self.last_stamp.set((now, stamp));
        stamp
    }

    /// Makes sure a socket about to park is in the private set with its
    /// edge armed for every byte not read yet: the one place that decides
    /// which `epoll_ctl` parking costs (see the module doc). `was_awake`: the
    /// lot's state for the descriptor is [`AWAKE`]; `watched`: the transport
    /// says it is that woken socket and nothing reached it unheard.
    fn arm(&self, fd: RawFd, was_awake: bool, watched: bool) -> io::Result<()> {
        if was_awake && watched {
            return Ok(());
        }
        // A woken socket still in the set, bytes maybe unread: MOD re-polls
        // it (an event now if it is readable). If it was closed since and the
        // descriptor is a new connection, the kernel took the old one out
        // and MOD says so; then add it.
        let rc = if was_awake {
            self.ctl(libc::EPOLL_CTL_MOD, fd)
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        };
        match rc {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.ctl(libc::EPOLL_CTL_ADD, fd),
            rc => rc,
        }
    }

    /// One `epoll_ctl` on the private set (ADD, MOD or DEL), counted.
    fn ctl(&self, op: libc::c_int, fd: RawFd) -> io::Result<()> {
        incr_own(&self.stats().parking_epoll_ctl);
        let mut event = libc::epoll_event {
            events: PARKED_EVENTS,
            u64: fd as u64,
        };
        // SAFETY: valid epoll fd, valid socket fd, event outlives the call
        // (DEL ignores it).
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Takes an awake socket out of the set: a task serves it and tokio's
    /// own epoll watches it now, so that a busy connection costs the lot
    /// nothing per request (its edges would wake the lot for bytes the task
    /// reads first). It is added again when it parks, and the add polls it,
    /// so bytes it leaves unread still wake it. Does nothing unless `fd` is
    /// [`AWAKE`] here.
    fn unwatch_awake(&self, fd: RawFd) {
        if !self.forget_awake(fd) {
            return;
        }
        // A socket closed meanwhile is out already (EBADF, or ENOENT for a
        // descriptor reused by another socket): nothing to undo either way.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd);
    }

    /// Marks `fd` [`ABSENT`] if it is [`AWAKE`] in this lot; whether it
    /// was. A compare-and-swap: the socket may have closed elsewhere and
    /// another lot parked a new one on the number (`park/slots.rs`). And a
    /// load first, so that a released page is not written (faulted back in)
    /// for nothing.
    fn forget_awake(&self, fd: RawFd) -> bool {
        let slots = self.claim.slots();
        let slot = slots.get(fd as usize);
        slot.deadline == AWAKE
            && slot.owner() == self.claim.owner()
            && slots.replace(fd as usize, slot, slot.now(ABSENT))
    }

    /// Takes a socket parked in this lot out of its care, leaving its slot
    /// in `to` ([`ABSENT`] for a socket about to be closed, which also takes
    /// it out of the epoll set; [`AWAKE`] for one being woken). The caller
    /// owns the fd, and gets the slot as it was (read nothing from the array
    /// after an `ABSENT`: its page may be given back meanwhile). None for a
    /// descriptor not parked here, another lot's included: a connection is
    /// only ever served by the lot it parked in.
    fn unpark(&self, fd: RawFd, to: u32) -> Option<(OwnedFd, Slot)> {
        let slots = self.claim.slots();
        let slot = slots.get(fd as usize);
        if !slot.is_parked() || slot.owner() != self.claim.owner() {
            return None;
        }
        slots.set(fd as usize, slot.now(to));
        self.parked.set(self.parked.get() - 1);
        gauge_own(&self.stats().connections_parked, -1);
        gauge_own(&self.stats().connections_idle, -1);
        // SAFETY: the lot owned this descriptor since `park`.
        Some((unsafe { OwnedFd::from_raw_fd(fd) }, slot))
    }

    /// Notes when the connection just accepted (or adopted) on `fd` is to be
    /// retired (`max_connection_age`); `None`: the option is off. Converted
    /// without [`ParkingLot::tick_of`]'s memory: each connection's retire
    /// time is its own, and the idle deadlines of the turn's parks share one.
    pub(crate) fn note_retire_at(&self, fd: RawFd, at: Option<Instant>) {
        if let Some(at) = at {
            set_side(&self.retire, fd as usize, self.tick_up(at));
        }
    }

    /// When the connection on `fd` is to be retired, as noted at its accept.
    pub(crate) fn retire_at(&self, fd: RawFd) -> Option<Instant> {
        let tick = self.retire.borrow().get(fd as usize).copied()?;
        (tick != 0).then(|| self.due_at(tick)).flatten()
    }

    /// The accounts of a parked connection leaving the lot: its slot held
    /// as the lot held it, with the client IP it was parked with (freed by
    /// the worker's accounts at its close), its track taken
    /// back as the lot kept it (a woken connection's task shares it again,
    /// [`ConnTrack::wake`]; a closing one's is closed as it is).
    fn connection(&self, socket: &OwnedFd) -> Connection<ConnTrack> {
        let fd = socket.as_raw_fd();
        // Empty unless connections are tracked: then a wake-up finds nothing.
        let track = self
            .tracks
            .borrow_mut()
            .get_mut(fd as usize)
            .and_then(Option::take);
        let track = track.map(|track| {
            self.tracks_parked.set(self.tracks_parked.get() - 1);
            let handles = self.track_handles.borrow();
            track.resume(handles.as_ref().expect("set when a track parked"))
        });
        let ip = self
            .ips
            .borrow_mut()
            .get_mut(fd as usize)
            .and_then(Option::take);
        Connection::resume(&self.accounts, ip, track)
    }

    /// A parked connection is closing: count it and report it. Its track is
    /// closed as the lot kept it, not woken first: a wake takes the
    /// registry's lock and allocates the entry's `Arc` and the track's `Rc`,
    /// only for the close to take the lock again and free both.
    fn closed(&self, socket: &OwnedFd, slot: Slot, reason: CloseReason) {
        self.connection(socket).close(reason);
        self.tell_closed(socket.as_raw_fd(), slot.tag(), reason);
    }

    /// Hands a parked socket that woke up back to its protocol.
    fn wake(&self, socket: OwnedFd, slot: Slot, wake: Wake, respawn: &Respawn) {
        let hot = is_hot(slot.served_wake_at(), self.stamp_now(), self.hot_within);
        let proto = slot.tag();
        incr_own(if hot {
            &self.stats().wakes_hot
        } else {
            &self.stats().wakes_cold
        });
        let conn = self.connection(&socket).wake();
        respawn(
            Incoming::Woken {
                socket,
                hot,
                proto,
                wake,
            },
            conn,
        );
    }

    /// Serves every socket that woke up.
    fn wake_ready(&self) -> io::Result<usize> {
        // Not zeroed: epoll_wait fills what it returns, and zeroing all 3 KiB
        // for the one or two events of a quiet wake-up cost ~400 instructions
        // per heartbeat.
        let mut events =
            [const { std::mem::MaybeUninit::<libc::epoll_event>::uninit() }; MAX_EVENTS];
        // SAFETY: the buffer holds MAX_EVENTS events; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr().cast(),
                MAX_EVENTS as i32,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n > 0 {
            incr_own(&self.stats().parking_wakeups);
        }
        // SAFETY: epoll_wait initialised the first `n` (<= MAX_EVENTS) events.
        let events: &[libc::epoll_event] =
            unsafe { std::slice::from_raw_parts(events.as_ptr().cast(), n as usize) };
        let respawn = self.respawn.borrow().clone();
        for event in events {
            let fd = event.u64 as RawFd;
            let Some((socket, slot)) = self.unpark(fd, AWAKE) else {
                // An edge for an awake socket that no runtime watches (a
                // task waits on something else, and it has not read yet):
                // from here on its task reads it, not the lot.
                self.unwatch_awake(fd);
                continue;
            };
            // Not counted toward a trim (see `park`): the task memory of a
            // wake that has to wait is counted when it parks again, or by
            // its close (the sweep counts the worker's closes).
            match &respawn {
                Some(respawn) => {
                    let hung_up = event.events
                        & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                        != 0;
                    let wake = if hung_up {
                        Wake::HungUp
                    } else {
                        Wake::Readable
                    };
                    self.wake(socket, slot, wake, respawn)
                }
                None => {
                    self.claim.slots().set(fd as usize, slot.now(ABSENT));
                    self.closed(&socket, slot, CloseReason::Shutdown);
                }
            }
        }
        Ok(n as usize)
    }

    /// Closes parked sockets whose idle deadline passed (or wakes them, as
    /// their [`AtDeadline`] says), notes the earliest deadline left, and
    /// gives freed memory back after a burst.
    fn sweep(&self) {
        let now = self.tick_reached(Instant::now());
        let mut expired = Vec::new();
        let mut next = NO_DEADLINE;
        let owner = self.claim.owner();
        // The walk of the whole process's array: the owner is looked at
        // only where a deadline would count (expired, or earlier than the
        // earliest so far), so a slot costs what it did in a lot's own
        // array (a callgrind run had the walk at ~12 instructions a slot
        // with the owner and the highest live slot taken at every one,
        // against ~5.5: bench/FRAMED.md).
        for (fd, slot) in self.claim.slots().iter() {
            match slot.deadline {
                ABSENT | AWAKE | NO_DEADLINE => {}
                d if d <= now && slot.owner() == owner => {
                    expired.push((fd as RawFd, slot.proto()));
                }
                // Another lot's deadline, expired or not, matches neither.
                d if d > now && d < next && slot.owner() == owner => next = d,
                _ => {}
            }
        }
        let at = Instant::now();
        if at.saturating_duration_since(self.aged_at.get()) >= AGE_EVERY {
            self.aged_at.set(at);
            self.age_stamps(self.stamp_now());
        }
        // Before the expired are handled: one woken at its deadline may
        // park again, lowering it.
        self.next_due.set(next);
        let respawn = self.respawn.borrow().clone();
        for (fd, proto) in expired {
            match (proto & WAKE_AT_DEADLINE != 0, &respawn) {
                (true, Some(respawn)) => {
                    if let Some((socket, slot)) = self.unpark(fd, AWAKE) {
                        self.wake(socket, slot, Wake::Timer, respawn);
                    }
                }
                _ => {
                    if let Some((socket, slot)) = self.unpark(fd, ABSENT) {
                        incr(&self.stats().timeouts);
                        self.closed(&socket, slot, CloseReason::IdleTimeout);
                    }
                }
            }
        }
        self.claim.slots().release_empty_tail();
        // Only once tracking has parked a connection (the array is empty
        // otherwise): given back when none is parked now (see `tracks`).
        if self.tracks_parked.get() == 0 && self.tracks.borrow().capacity() != 0 {
            *self.tracks.borrow_mut() = Vec::new();
        }
        // Closes of connections this lot never held, since the last sweep
        // (one load of the worker's counter per sweep; those the lot closed
        // itself count twice, which only brings a trim forward).
        let closed = self
            .stats()
            .closed
            .load(std::sync::atomic::Ordering::Relaxed);
        let closes = closed.wrapping_sub(self.closed_at_sweep.replace(closed));
        let churn = self
            .churn_since_trim
            .get()
            .saturating_add(usize::try_from(closes).unwrap_or(usize::MAX));
        self.churn_since_trim.set(churn);
        if trim_due(churn, self.churn_at_sweep.get()) {
            self.churn_since_trim.set(0);
            self.trims.set(self.trims.get() + 1);
            trim_heap();
        }
        self.churn_at_sweep.set(self.churn_since_trim.get());
    }

    /// Clears the stamps of this lot's parked slots that are [`STAMP_AGED`]
    /// old at stamp `now` (0: "parked long ago"), before their 16 bits can
    /// wrap: a walk of the array once every [`AGE_EVERY`], with a sweep.
    /// Only the owner writes a parked slot, and only its stamp changes.
    fn age_stamps(&self, now: u32) {
        let owner = self.claim.owner();
        let slots = self.claim.slots();
        for (fd, slot) in slots.iter() {
            if slot.is_parked() && stamp_aged(slot.parked_at(), now) && slot.owner() == owner {
                slots.set(fd, slot.aged());
            }
        }
    }

    /// When the next sweep is needed, after one: in a second while a trim is
    /// pending (it is due once connections stop coming and going) or
    /// `settled` is false (the worker's buffer pool still has buffers to give
    /// back, or a paced shutdown drain waits for the lot to empty); else when
    /// the earliest deadline is due, at the latest in [`QUIET_SWEEP`] (the
    /// pool also fills from connections the lot never sees).
    fn next_sweep(&self, settled: bool) -> Instant {
        let now = Instant::now();
        if self.trim_pending() || !settled {
            return now + Duration::from_secs(1);
        }
        let quiet = now + QUIET_SWEEP;
        self.due_at(self.next_due.get())
            .map_or(quiet, |due| due.min(quiet))
    }

    /// Enough churn for a trim once it goes quiet: the lot sweeps every
    /// second until then (a trickle below that needs no sweep of its own).
    fn trim_pending(&self) -> bool {
        self.churn_since_trim.get() >= TRIM_AFTER_BURST
    }

    /// When a sweep closes a deadline of tick `tick`: from the start of the
    /// second `tick_of` rounds up to `tick`, when [`ParkingLot::tick_reached`]
    /// reaches it (so never before the deadline, at most a second after it,
    /// as with a sweep every second).
    fn due_at(&self, tick: u32) -> Option<Instant> {
        (tick != NO_DEADLINE)
            .then(|| self.epoch + Duration::from_secs(u64::from(tick.saturating_sub(1))))
    }

    /// Counts a parking toward the next heap trim (not a heartbeat's: see
    /// [`ParkingLot::park`]). The one that
    /// makes a trim pending moves the run loop's sweep up to a second from
    /// now ([`ParkingLot::next_sweep`]): planned while none was pending, it
    /// may be [`QUIET_SWEEP`] away, and a burst's freed memory would stay
    /// with the allocator that long (RSS ~1 KB a connection above the parked
    /// figure for up to 10 s after 15,000 new connections parked).
    fn churned(&self) {
        let churn = self.churn_since_trim.get() + 1;
        self.churn_since_trim.set(churn);
        if churn == TRIM_AFTER_BURST {
            self.move_sweep();
        }
    }

    /// Tells the run loop to look again at when it sweeps
    /// ([`ParkingLot::moved_sweep`]).
    fn move_sweep(&self) {
        self.due_moved.set(true);
        if let Some(waker) = self.sweep_waker.take() {
            waker.wake();
        }
    }

    /// Where the run loop's sweep moves to when told ([`ParkingLot::due_moved`]):
    /// the earliest deadline's sweep, or in a second when a trim is pending,
    /// whichever is sooner.
    fn moved_sweep(&self) -> Option<Instant> {
        let trim = self
            .trim_pending()
            .then(|| Instant::now() + Duration::from_secs(1));
        self.due_at(self.next_due.get())
            .into_iter()
            .chain(trim)
            .min()
    }

    /// Resolves when a park moved the earliest deadline earlier, or made a
    /// trim pending, since the last time (the run loop then moves its sweep).
    async fn due_moved(&self) {
        std::future::poll_fn(|cx| {
            if self.due_moved.replace(false) {
                return std::task::Poll::Ready(());
            }
            match self.sweep_waker.take() {
                Some(w) if w.will_wake(cx.waker()) => self.sweep_waker.set(Some(w)),
                _ => self.sweep_waker.set(Some(cx.waker().clone())),
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Takes every parked connection that `export` lets go out of the lot,
    /// for another process (an upgrade, `handover.rs`): asked each parked
    /// descriptor, its protocol and what its deadline does, `export` gives the protocol's payload
    /// for the next process (empty for HTTP/1.1; a framed connection's
    /// state, taken from its side table) or `None` for one that stays (and
    /// closes as at shutdown). Each taken one leaves the private epoll set
    /// (the socket outlives this process's descriptor there) and counts as
    /// closed here, `handed_over`.
    pub(crate) fn take_portable(
        &self,
        mut export: impl FnMut(RawFd, ProtoTag, AtDeadline) -> Option<Vec<u8>>,
    ) -> Vec<crate::conn::handover::ParkedConnection> {
        let now = self.tick_of(Instant::now());
        let chosen: Vec<(RawFd, u32, u8)> = self
            .own_parked()
            .map(|(fd, s)| (fd, s.deadline, s.proto()))
            .collect();
        let mut out = Vec::with_capacity(chosen.len());
        for (fd, deadline, proto) in chosen {
            let at = if proto & WAKE_AT_DEADLINE != 0 {
                AtDeadline::Wake
            } else {
                AtDeadline::Close
            };
            let tag = ProtoTag(proto & !FLAGS);
            let Some(payload) = export(fd, tag, at) else {
                continue;
            };
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd);
            let Some((socket, _)) = self.unpark(fd, ABSENT) else {
                continue;
            };
            // Deadlines are whole ticks (seconds): the next process gets the
            // time left to this one's tick, never more.
            let left = (deadline != NO_DEADLINE)
                .then(|| Duration::from_secs(u64::from(deadline.saturating_sub(now))));
            crate::conn::handover::handed_over(self.connection(&socket));
            out.push(crate::conn::handover::ParkedConnection {
                socket,
                state: crate::conn::handover::ParkedState::new(tag, left, payload),
            });
        }
        out
    }

    /// Closes parked connections to make room for new ones at
    /// `max_connections` (`accept.rs`), as nginx reuses idle keep-alive
    /// connections: up to an eighth of those parked here, at least one, at
    /// most [`EVICT_MAX`] (nginx's numbers), of the protocols `evictable`
    /// accepts (HTTP/1.1 keep-alive, whose clients reconnect on a closed idle
    /// connection), longest idle first: earliest idle deadline, which the
    /// protocol sets at the end of the connection's last exchange, so no
    /// stamp is added to the slot for it. Never one with a timer
    /// ([`AtDeadline::Wake`]), nor one whose next request already reached
    /// its socket (one `MSG_PEEK` per candidate, asked only here): that one
    /// is about to be served. Returns how many it closed
    /// (`CloseReason::Evicted`).
    ///
    /// One walk of the slot array (~1 ms per million descriptors), only
    /// while a connection waits at the limit.
    pub(crate) fn evict(&self, evictable: fn(ProtoTag) -> bool) -> usize {
        let want = (self.parked.get() / 8).clamp(1, EVICT_MAX);
        // The `want` earliest deadlines: a max-heap holding at most `want`.
        let mut oldest = std::collections::BinaryHeap::with_capacity(want + 1);
        for (fd, slot) in self.own_parked() {
            if slot.proto() & WAKE_AT_DEADLINE == 0 && evictable(slot.tag()) {
                oldest.push((slot.deadline, fd));
                if oldest.len() > want {
                    oldest.pop();
                }
            }
        }
        let mut evicted = 0;
        for (_, fd) in oldest.into_sorted_vec() {
            // SAFETY: the lot owns `fd` while it is parked (chosen above,
            // and nothing ran since).
            if crate::conn::sys::input_waiting(unsafe { BorrowedFd::borrow_raw(fd) }) {
                continue;
            }
            if let Some((socket, slot)) = self.unpark(fd, ABSENT) {
                self.closed(&socket, slot, CloseReason::Evicted);
                evicted += 1;
            }
        }
        evicted
    }

    /// Graceful shutdown of every parked socket ([`close_parked`](ParkingLot::close_parked)
    /// each: closed, or woken if a request waits). Returns how many left the lot.
    pub(crate) fn close_all(&self) -> usize {
        self.parked_fds()
            .into_iter()
            .filter(|&fd| self.close_parked(fd))
            .count()
    }

    /// Graceful shutdown of the parked sockets that parked more than
    /// `grace` ago ([`close_parked`](ParkingLot::close_parked) each); the
    /// others get the grace an idle task gets (`IDLE_GRACE`), then
    /// [`close_all`](ParkingLot::close_all). A connection parks straight
    /// after its first answer (and after a cold wake-up's), so a busy
    /// client's next request, sent as it read that answer, was on its way
    /// when the shutdown closed its connection under it: it saw the end of
    /// the stream. Returns how many are left for later.
    pub(crate) fn close_all_but_recent(&self, grace: Duration) -> usize {
        let now = self.stamp_now();
        let within = (grace.as_millis() / u128::from(STAMP_MS)) as u32 + 1;
        let (recent, old): (Vec<_>, Vec<_>) = self
            .own_parked()
            .partition(|(_, slot)| stamped_within(slot.parked_at(), now, within));
        for (fd, _) in old {
            self.close_parked(fd);
        }
        recent.len()
    }

    /// Closes every parked socket as it is, bytes waiting or not: at the
    /// shutdown deadline, and when the lot goes. Returns how many.
    pub(crate) fn close_all_now(&self) -> usize {
        self.parked_fds()
            .into_iter()
            .filter(|&fd| self.close_now(fd))
            .count()
    }

    /// The descriptors parked now (a paced shutdown drain closes them a few
    /// at a time: one that woke or closed since is skipped by
    /// [`close_parked`](ParkingLot::close_parked)).
    pub(crate) fn parked_fds(&self) -> Vec<RawFd> {
        self.own_parked().map(|(fd, _)| fd).collect()
    }

    /// The sockets parked in this lot, with their slots: the process's
    /// array, less what other lots hold.
    fn own_parked(&self) -> impl Iterator<Item = (RawFd, Slot)> + '_ {
        let owner = self.claim.owner();
        self.claim
            .slots()
            .iter()
            .filter(move |(_, s)| s.is_parked() && s.owner() == owner)
            .map(|(fd, s)| (fd as RawFd, s))
    }

    /// Shutdown for `fd` if it is still parked (true if it was): closed,
    /// unless bytes wait in its socket, which the kernel is asked first
    /// (one `recv` with `MSG_PEEK` per parked connection, at shutdown only):
    /// then it is woken and served as on any wake-up, its answer saying
    /// `Connection: close` (HTTP/1.1; a message protocol's says goodbye).
    /// Its readiness in the lot's set is no answer: an edge that came since
    /// the lot's last turn is still unread, and one that comes while a drain
    /// of many works through the list too. Closed with a request unread,
    /// the socket would answer it with a reset. What comes after the peek
    /// is what the client sent after the close (or as good as: a few
    /// microseconds), as Go's `Shutdown` and nginx close idle keep-alive
    /// connections too.
    pub(crate) fn close_parked(&self, fd: RawFd) -> bool {
        self.shut_parked(fd).is_some()
    }

    /// [`close_parked`](ParkingLot::close_parked), saying which it did:
    /// `None` if `fd` was not parked. A paced drain counts a connection
    /// woken here as still to go (a message connection stays awake until
    /// its turn: `server/worker.rs`, `drain_paced`).
    pub(crate) fn shut_parked(&self, fd: RawFd) -> Option<Shut> {
        let slot = self.claim.slots().get(fd as usize);
        if !slot.is_parked() || slot.owner() != self.claim.owner() {
            return None;
        }
        // SAFETY: the lot owns `fd` while it is parked (checked above).
        let waiting = crate::conn::sys::input_waiting(unsafe { BorrowedFd::borrow_raw(fd) });
        let respawn = self.respawn.borrow().clone();
        match (waiting, respawn) {
            (true, Some(respawn)) => {
                let (socket, slot) = self.unpark(fd, AWAKE)?;
                self.churned();
                self.wake(socket, slot, Wake::Readable, &respawn);
                Some(Shut::Woken)
            }
            _ => self.close_now(fd).then_some(Shut::Closed),
        }
    }

    /// Closes `fd` for shutdown if it is still parked; true if it was.
    fn close_now(&self, fd: RawFd) -> bool {
        match self.unpark(fd, ABSENT) {
            Some((socket, slot)) => {
                self.closed(&socket, slot, CloseReason::Shutdown);
                true
            }
            None => false,
        }
    }
}

/// What shutdown did with a parked socket ([`ParkingLot::shut_parked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shut {
    /// Closed (its goodbye, if its protocol has one, written by the lot).
    Closed,
    /// Woken, bytes waiting in it: its task serves them, then closes.
    Woken,
}

/// How a connection parks: what the protocol says when it hands an idle
/// connection to the dispatcher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parking {
    /// The idle deadline (or the timer, with [`AtDeadline::Wake`]).
    pub deadline: Option<Instant>,
    /// Parked straight after serving a wake-up (hot/cold detection).
    pub at_once: bool,
    /// The protocol it resumes in.
    pub proto: ProtoTag,
    /// What the deadline does.
    pub at_deadline: AtDeadline,
    /// The socket is the one the lot woke, still in its epoll set, and every
    /// byte that reached it since was read or raised an edge of its own
    /// ([`Parkable::still_watched`](crate::conn::transport::Parkable::still_watched)):
    /// it parks with no `epoll_ctl`. False is always safe (it costs one).
    pub watched: bool,
}

impl Parking {
    /// The terms for a protocol's `Ended::Park` (its `deadline`, `at_once`
    /// and `watched`), resuming in `proto`, `at_deadline` as its protocol
    /// wants.
    pub(crate) fn of(
        deadline: Option<Instant>,
        at_once: bool,
        watched: bool,
        proto: ProtoTag,
        at_deadline: AtDeadline,
    ) -> Parking {
        Parking {
            deadline,
            at_once,
            proto,
            at_deadline,
            watched,
        }
    }
}

impl Drop for ParkingLot {
    fn drop(&mut self) {
        self.close_all_now();
        // Its sockets still awake leave it too: the owner id goes back with
        // the claim, and the next lot to take it must not find them its own.
        let awake: Vec<RawFd> = self
            .claim
            .slots()
            .iter()
            .filter(|(_, s)| s.deadline == AWAKE && s.owner() == self.claim.owner())
            .map(|(fd, _)| fd as RawFd)
            .collect();
        for fd in awake {
            self.forget_awake(fd);
        }
    }
}

/// Runs a worker's parking lot until shutdown, when every parked (idle)
/// connection is closed, or served if a request already waits in it
/// ([`ParkingLot::close_parked`]).
pub(crate) async fn run(ctx: Rc<WorkerContext>) {
    let Some(lot) = ctx.park.as_ref() else {
        return;
    };
    // A sleep moved from sweep to sweep (`next_sweep`), not an interval:
    // a quiet lot sleeps until its earliest deadline (or QUIET_SWEEP).
    let mut sweep_sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
    let mut sweep = SweepTimer::new(sweep_sleep.as_mut());
    // With a shutdown drain rate the worker closes parked connections a few
    // at a time; the lot keeps serving the ones that wake meanwhile (their
    // answer says `Connection: close`) until it is empty.
    let mut draining = false;
    // Without one, connections that parked within the idle grace get it
    // (`close_all_but_recent`): the lot serves them meanwhile, then closes
    // what is left at `grace_end`.
    let mut graced = false;
    let mut grace_end = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    // Pinned once: a fresh `begun()` per turn would join and leave the
    // `Notify`'s waiter list (a lock each way) on every wake-up of the lot,
    // which at a million connections is every few heartbeats. And polled
    // only to register the task's waker (`poll_begun`): polled while it
    // waits, it takes that lock too, twice a turn.
    let mut shutdown = std::pin::pin!(ctx.shutdown.begun());
    let mut shutdown_waker: Option<std::task::Waker> = None;
    let relay = lot.relay.as_ref();
    // Batching: when the relay is off, and when it goes on again.
    let mut muted = false;
    let mut unmute = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut last_turn: Option<Instant> = None;
    loop {
        if (draining || graced) && lot.len() == 0 {
            return;
        }
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| {
                poll_begun(&ctx.shutdown, shutdown.as_mut(), &mut shutdown_waker, cx)
            }), if !draining && !graced => {
                if ctx.config.shutdown_drain_rate.is_none() {
                    let grace = crate::conn::shutdown::idle_grace(&ctx.config);
                    if lot.close_all_but_recent(grace) == 0 {
                        return;
                    }
                    graced = true;
                    grace_end.as_mut().reset(Instant::now() + grace);
                    continue;
                }
                draining = true;
                // The paced drain closes parked connections from its own
                // task: look every second whether the lot is empty.
                sweep.reset(Instant::now() + Duration::from_secs(1));
            }
            () = grace_end.as_mut(), if graced => {
                lot.close_all();
                return;
            }
            () = unmute.as_mut(), if muted => {
                muted = false;
                if let Some(Err(e)) = relay.map(|r| r.switch(true)) {
                    tracing::error!(error = %e, "cannot switch the parking lot's relay on");
                }
            }
            // `poll_read_ready`, not `readable()`: that future joins the
            // descriptor's waiter list under its lock when it waits, and
            // takes the lock again to look and to leave (its drop), three
            // lock round trips a turn where this takes one.
            ready = std::future::poll_fn(|cx| lot.watch.poll_read_ready(cx)), if !muted => {
                let Ok(mut guard) = ready else {
                    tracing::error!(
                        worker = ctx.index,
                        parked = lot.len(),
                        "the parking lot's epoll set failed; parked connections are no longer served"
                    );
                    return;
                };
                // One clock reading for every connection served on this turn.
                match crate::observe::clock::turn(|| lot.wake_ready()) {
                    Ok(n) if n < MAX_EVENTS => {
                        guard.clear_ready();
                        // A lot that served a turn within twice the window is
                        // busy: its next turn waits for the window's end and
                        // serves every socket that woke meanwhile. A quiet
                        // one answers at once.
                        if let (Some(relay), true) = (relay, n > 0) {
                            let now = crate::observe::clock::now();
                            if last_turn.is_some_and(|t| now.saturating_duration_since(t) < relay.window * 2) {
                                match relay.switch(false) {
                                    Ok(()) => {
                                        incr(&lot.stats().parking_wake_batches);
                                        muted = true;
                                        unmute.as_mut().reset(now + relay.window);
                                    }
                                    Err(e) => tracing::error!(error = %e, "cannot switch the parking lot's relay off"),
                                }
                            }
                            last_turn = Some(now);
                        }
                    }
                    // More are waiting. Let the connections just woken run
                    // first: when every parked client hangs up at once, waking
                    // them all before any runs would hold a task per connection
                    // at the same time, a heap peak glibc keeps afterwards.
                    Ok(_) => {
                        drop(guard);
                        tokio::task::yield_now().await;
                        // The readiness is still set, and `biased` polls it
                        // before the sweep: a lot whose turns stay full (a
                        // flood of wake-ups) would never sweep. A due sweep
                        // runs between such turns (moved up first if a
                        // park asked for an earlier one meanwhile).
                        if lot.due_moved.replace(false) {
                            move_sweep_up(lot, &mut sweep);
                        }
                        if sweep.deadline() <= Instant::now() {
                            let next = sweep_turn(lot, &ctx, draining);
                            sweep.reset(next);
                        }
                        // So would a wake the hub asked for (an owed push's
                        // rest, `owed.rs`): served between full turns too,
                        // or it waited for the flood's end while its queue
                        // filled (merge review D3, session 45).
                        if !lot.owed.borrow().is_empty() {
                            crate::observe::clock::turn(|| lot.wake_owed_now());
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "parking lot epoll_wait failed"),
                }
            }
            // Behind a muted relay too: a wake the hub asked for is a
            // wake-up like a request's, served in the batch's turn.
            () = lot.owed_asked(), if !muted => {
                crate::observe::clock::turn(|| lot.wake_owed_now());
            }
            () = std::future::poll_fn(|cx| sweep.poll_due(cx)) => {
                let next = sweep_turn(lot, &ctx, draining);
                sweep.reset(next);
            }
            () = lot.due_moved() => move_sweep_up(lot, &mut sweep),
        }
    }
}

/// Whether the worker's shutdown has begun, for the lot's run loop: its
/// flag, looked at on every turn, and `begun` (the pinned
/// [`LocalShutdown::begun`](crate::conn::shutdown::LocalShutdown::begun))
/// polled only while `registered` is not the task's waker, to put that
/// waker in the `Notify`'s list, which the start wakes (it sets the flag
/// first). Polled on every turn, a waiting `Notified` takes the `Notify`'s
/// lock each time only to find the same waker there.
fn poll_begun(
    shutdown: &crate::conn::shutdown::LocalShutdown,
    begun: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    registered: &mut Option<std::task::Waker>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    if shutdown.is_started() {
        return std::task::Poll::Ready(());
    }
    if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        return std::task::Poll::Pending;
    }
    *registered = Some(cx.waker().clone());
    std::future::Future::poll(begun, cx)
}

/// The run loop's sweep timer, polled only when it may have fired.
///
/// The loop polls it each time it goes back to waiting, once a turn of
/// the lot, and polling a waiting `Sleep` spent the task's budget and
/// registered the task's waker with the timer again (two locked
/// instructions) only to find it not due: per heartbeat at a million
/// connections, where a worker wakes for nearly every one. Here it is polled after each reset, when the task's waker is
/// not the one it holds, and once the timer has fired (`is_elapsed`: the
/// runtime fires it, then wakes the waker it holds, the task's).
struct SweepTimer<'a> {
    sleep: std::pin::Pin<&'a mut tokio::time::Sleep>,
    /// The waker the timer holds since its last poll; `None` after a reset
    /// (polled again to be sure the timer holds it).
    armed: Option<std::task::Waker>,
}

impl<'a> SweepTimer<'a> {
    fn new(sleep: std::pin::Pin<&'a mut tokio::time::Sleep>) -> SweepTimer<'a> {
        SweepTimer { sleep, armed: None }
    }

    /// When it fires.
    fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Moves it to `at`.
    fn reset(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = None;
    }

    /// Ready once its deadline has passed (as the `Sleep`).
    fn poll_due(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let armed = self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if armed && !self.sleep.is_elapsed() {
            return std::task::Poll::Pending;
        }
        // With the task's coop budget spent, `Sleep` returns Pending before
        // it registers the waker: not armed then (polled again next turn).
        let budget = tokio::task::coop::has_budget_remaining();
        let polled = std::future::Future::poll(self.sleep.as_mut(), cx);
        self.armed = (polled.is_pending() && budget).then(|| cx.waker().clone());
        polled
    }
}

/// One sweep of the run loop: the lot's deadlines and heap, and the
/// worker's buffer pool. Returns when the next one is due.
fn sweep_turn(lot: &ParkingLot, ctx: &WorkerContext, draining: bool) -> Instant {
    lot.sweep();
    // Buffers a burst left in the pool go back to the OS (`pool.rs`); 64 of
    // them is half a MiB worth trimming.
    if ctx.pool.decay() >= 64 {
        trim_heap();
    }
    lot.next_sweep(ctx.pool.settled() && !draining)
}

/// Moves the run loop's `sweep` earlier if a park asked for an earlier one
/// ([`ParkingLot::moved_sweep`]).
fn move_sweep_up(lot: &ParkingLot, sweep: &mut SweepTimer<'_>) {
    if let Some(at) = lot.moved_sweep() {
        if at < sweep.deadline() {
            sweep.reset(at);
        }
    }
}

/// A woken socket (`woken.rs`) registered with tokio to wait: this thread's
/// lot, if it has `fd` awake, takes it out of its set
/// ([`ParkingLot::unwatch_awake`]). The worker is found through the thread
/// (the socket is `Send` and holds no context); on any other thread (an
/// upgraded socket that left its worker) nothing happens, and the lot lets
/// the socket go at its first edge instead. Another worker's lot never has
/// `fd` awake, since `fd` is this socket now: at worst it forgets a stale state.
pub(crate) fn left_for_runtime(fd: RawFd) {
    if let Some(ctx) = crate::conn::pool::this_worker() {
        if let Some(lot) = ctx.park.as_ref() {
            lot.unwatch_awake(fd);
        }
    }
}

/// A woken socket still in the lot's set (`woken.rs`) is closing: this
/// thread's lot, if it has `fd` awake, marks it [`ABSENT`] (closing the
/// socket takes it out of the set; no `epoll_ctl`). Without this its slot
/// stayed `AWAKE` after the close, and a peak of connections that closed
/// after a wake-up (every client's hang-up wakes its parked connection)
/// left the array's pages live, never given back (`park/slots.rs`).
pub(crate) fn woken_closing(fd: RawFd) {
    // A proxied connection's client goes with it (`proxy_header::closing`).
    crate::conn::proxy_header::closing(fd);
    if let Some(ctx) = crate::conn::pool::this_worker() {
        if let Some(lot) = ctx.park.as_ref() {
            lot.forget_awake(fd);
        }
    }
}

/// Sets entry `idx` of a per-descriptor side array (`ips`, `retire`, `tracks`),
/// grown like the slots when it is too short.
fn set_side<T: Default>(side: &RefCell<Vec<T>>, idx: usize, value: T) {
    let mut side = side.borrow_mut();
    if side.len() <= idx {
        side.resize_with((idx + 1).next_multiple_of(GROW_BY), T::default);
    }
    side[idx] = value;
}

/// Whether a connection parked straight after a wake-up at stamp
/// `parked_at` (0: parked after idling as a task, or long ago) and woken at
/// stamp `now` is hot: woken again within `within` stamp units.
fn is_hot(parked_at: u32, now: u32, within: u32) -> bool {
    stamped_within(parked_at, now, within)
}

/// Whether stamp `at` is less than `within` units before stamp `now`
/// (`within` at most [`STAMP_AGED`]); 0 is never. Stamps wrap in 16 bits
/// (~262 s): one a whole number of wraps old, plus less than `within`,
/// would read as recent, which the sweep prevents by clearing a parked
/// slot's stamp to 0 once [`STAMP_AGED`] old ([`stamp_aged`]).
fn stamped_within(at: u32, now: u32, within: u32) -> bool {
    at != 0 && now.wrapping_sub(at) & STAMP_MASK < within
}

/// Whether a sweep at stamp `now` clears stamp `at`: not 0 already, and at
/// least [`STAMP_AGED`] units old (half the wrap).
fn stamp_aged(at: u32, now: u32) -> bool {
    at != 0 && now.wrapping_sub(at) & STAMP_MASK >= STAMP_AGED
}

/// Whether a sweep gives freed memory back, with `churn` parkings and
/// wake-ups since the last trim, `churn_at_last_sweep` of them already at the
/// last sweep: after every [`TRIM_EVERY`], and once a burst of at least
/// [`TRIM_AFTER_BURST`] is over (a sweep interval without any). A steady
/// trickle never looks quiet, so it trims by count alone; a quiet lot trims
/// at most once per burst.
fn trim_due(churn: usize, churn_at_last_sweep: usize) -> bool {
    churn >= TRIM_EVERY || (churn >= TRIM_AFTER_BURST && churn == churn_at_last_sweep)
}

/// Gives freed heap pages back to the OS. Tasks of connections that were parked
/// leave holes glibc keeps; without this, RSS would not show what parking saves.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The lot on its own: real socket pairs, a respawn that keeps what it
    //! woke, paused time for the deadlines (the sweep is called directly).

    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::Ordering::Relaxed;

    use crate::observe::lifecycle::tests::opened_and_closed;
    use crate::observe::lifecycle::{ConnectionEvent, ConnectionHook};

    use super::*;

    /// A slot is 8 bytes, its fields survive the round trip through the
    /// array's word, and the hot test holds across the stamp's wrap.
    #[test]
    fn slots_are_eight_bytes_and_hot_wakes_survive_the_stamp_wrap() {
        assert_eq!(std::mem::size_of::<Slot>(), 8);
        let slot = Slot {
            deadline: 7,
            mark: STAMP_MASK << 16 | 0xA5 << 8 | u32::from(WAKE_AT_DEADLINE | 3),
        };
        assert_eq!(
            (slot.parked_at(), slot.owner(), slot.tag(), slot.proto()),
            (STAMP_MASK, 0xA5, ProtoTag(3), 0x83)
        );
        assert_eq!(Slot::from_bits(slot.bits()), slot);
        assert_eq!(
            Slot::from_bits(0),
            Slot::default(),
            "zeroed pages are ABSENT"
        );
        assert!(!Slot::default().is_live());
        assert!(is_hot(STAMP_MASK, 2, 10), "3 units later, across the wrap");
        assert!(!is_hot(STAMP_MASK, 20, 10), "21 units later");
        assert!(!is_hot(0, 1, 10), "parked after idling: never hot");
        assert!(is_hot(100, 109, 10) && !is_hot(100, 110, 10));
        // The sweep clears a stamp half a wrap old, before it can wrap.
        assert!(!stamp_aged(100, 100 + STAMP_AGED - 1));
        assert!(stamp_aged(100, 100 + STAMP_AGED));
        assert!(stamp_aged(STAMP_MASK, STAMP_AGED - 1), "across the wrap");
        assert!(!stamp_aged(0, STAMP_AGED), "cleared already");
        let aged = slot.aged();
        assert_eq!(
            (aged.parked_at(), aged.owner(), aged.proto(), aged.deadline),
            (0, 0xA5, 0x83, 7)
        );
        assert!(!stamped_within(0, 3, 10), "parked long ago: never recent");
    }

    type Woken = Rc<RefCell<Vec<(ProtoTag, Wake, OwnedFd)>>>;

    struct Fixture {
        lot: ParkingLot,
        limit: ConnectionLimit,
        stats: Arc<WorkerStats>,
        woken: Woken,
    }

    /// The relay (`park_wake_batch`) announces the lot's events while on,
    /// none while off, and on switching on those that came while it was off;
    /// a lot it cannot hold is an error, not a silent relay.
    #[test]
    fn the_relay_passes_the_lots_events_only_while_on() {
        // SAFETY: no memory arguments; the descriptor is owned at once.
        let lot = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors open; `event` initialised.
        let added = unsafe {
            libc::epoll_ctl(
                lot.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                a.as_raw_fd(),
                &mut event,
            )
        };
        assert_eq!(added, 0);
        let relay = Relay::new(&lot, Duration::from_millis(1)).unwrap();
        let announced = || {
            let mut event = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: room for one event; timeout 0 never blocks.
            unsafe { libc::epoll_wait(relay.fd.as_raw_fd(), &mut event, 1, 0) == 1 }
        };
        assert!(!announced(), "nothing in the lot yet");
        b.write_all(b"x").unwrap();
        // Switching on a relay that is on, with an event on its list, keeps
        // it on (its own list emptied first, then re-armed from the lot's).
        relay.switch(true).unwrap();
        assert!(announced(), "on: the lot's event passes");
        relay.switch(false).unwrap();
        b.write_all(b"y").unwrap();
        assert!(!announced(), "off: nothing passes");
        relay.switch(true).unwrap();
        assert!(announced(), "on again: what came while off is announced");
        // Something that is no epoll set cannot be held: said, not ignored.
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(Relay::new(&null, Duration::from_millis(1)).is_err());
        let stale = Relay {
            fd: relay.fd.try_clone().unwrap(),
            lot: null.as_raw_fd(),
            window: relay.window,
        };
        assert!(stale.switch(true).is_err(), "MOD of an item never added");
        drop(a);
    }

    /// A lot of `max_connections` places, with nothing to serve woken
    /// sockets yet.
    fn bare_lot(max_connections: usize) -> (ParkingLot, ConnectionLimit, Arc<WorkerStats>) {
        lot_of(ConnectionLimit::new(max_connections, None))
    }

    /// A lot under `limit`, with nothing to serve woken sockets yet.
    fn lot_of(limit: ConnectionLimit) -> (ParkingLot, ConnectionLimit, Arc<WorkerStats>) {
        lot_on(limit, Claim::new().unwrap())
    }

    /// [`lot_of`] at `claim`'s place in a slot array.
    pub(super) fn lot_on(
        limit: ConnectionLimit,
        claim: Claim,
    ) -> (ParkingLot, ConnectionLimit, Arc<WorkerStats>) {
        let stats = Arc::new(WorkerStats::default());
        let lot = ParkingLot::new(
            LotFds::on(Duration::ZERO, claim).unwrap(),
            limit.clone(),
            stats.clone(),
            Duration::from_secs(2),
        );
        (lot, limit, stats)
    }

    fn fixture() -> Fixture {
        fixture_of(ConnectionLimit::new(4, None))
    }

    /// [`fixture`] under `limit`.
    fn fixture_of(limit: ConnectionLimit) -> Fixture {
        fixture_on(limit, Claim::new().unwrap())
    }

    /// [`fixture_of`] at `claim`'s place in a slot array.
    fn fixture_on(limit: ConnectionLimit, claim: Claim) -> Fixture {
        let (lot, limit, stats) = lot_on(limit, claim);
        let woken: Woken = Rc::default();
        let record = woken.clone();
        lot.set_respawn(Some(Rc::new(move |incoming, conn: Connection| {
            if let Incoming::Woken {
                proto,
                wake,
                socket,
                ..
            } = incoming
            {
                record.borrow_mut().push((proto, wake, socket));
            }
            conn.close(CloseReason::ServerClosed);
        })));
        Fixture {
            lot,
            limit,
            stats,
            woken,
        }
    }

    impl Fixture {
        /// What woke, in order, without the sockets.
        fn woken(&self) -> Vec<(ProtoTag, Wake)> {
            self.woken
                .borrow()
                .iter()
                .map(|(p, w, _)| (*p, *w))
                .collect()
        }

        /// The socket woken last, taken back (to serve or park again).
        fn take_woken(&self) -> OwnedFd {
            self.woken.borrow_mut().pop().expect("a woken socket").2
        }

        fn ctl_calls(&self) -> u64 {
            self.stats.parking_epoll_ctl.load(Relaxed)
        }

        /// Waits until the lot's epoll set reports an event, and serves it:
        /// how many events there were.
        async fn wake_ready(&self) -> usize {
            let guard = tokio::time::timeout(Duration::from_secs(20), self.lot.watch.readable())
                .await
                .expect("the lot's epoll turns readable")
                .unwrap();
            drop(guard);
            self.lot.wake_ready().unwrap()
        }
    }

    /// A connected pair: the server's end (to park, or to wake: `woken.rs`'s
    /// tests use it too) and the client's.
    pub(in crate::conn) fn pair() -> (OwnedFd, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server.into(), client)
    }

    fn park(f: &Fixture, socket: OwnedFd, proto: u8, at_deadline: AtDeadline) {
        park_as(f, socket, proto, at_deadline, false);
    }

    fn park_as(f: &Fixture, socket: OwnedFd, proto: u8, at_deadline: AtDeadline, watched: bool) {
        let deadline = Instant::now() + Duration::from_secs(1);
        park_until(f, socket, proto, at_deadline, watched, deadline, None);
    }

    /// Parks `socket` as a connection with `track` (its lifecycle track,
    /// if any).
    fn park_until(
        f: &Fixture,
        socket: OwnedFd,
        proto: u8,
        at_deadline: AtDeadline,
        watched: bool,
        deadline: Instant,
        track: Option<Rc<ConnTrack>>,
    ) {
        let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), track);
        f.lot.park(
            socket,
            Parking {
                deadline: Some(deadline),
                at_once: false,
                proto: ProtoTag(proto),
                at_deadline,
                watched,
            },
            conn,
        );
    }

    /// Reads what the socket holds, as a woken connection would (a short read).
    fn drain(socket: &OwnedFd) -> Vec<u8> {
        let mut stream = TcpStream::from(socket.try_clone().unwrap());
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    /// A connection parked from outside its task (as `handover::adopt`
    /// parks an adopted one, from the worker's loop: no connection is
    /// current there) is listed as parked: its state is set through its own
    /// track, not the thread's current one (it was listed `reading_head`).
    #[tokio::test]
    async fn a_connection_parked_outside_its_task_is_listed_as_parked() {
        use crate::observe::registry::{page, Registry};
        let f = fixture();
        let registry = Arc::new(Registry::default());
        let (server, _client) = pair();
        let peer = TcpStream::from(server.try_clone().unwrap())
            .peer_addr()
            .unwrap();
        let track = ConnTrack::open(None, Some(&registry), peer, peer, 0, &f.stats);
        let listed = || page(std::slice::from_ref(&registry), 0, 10).1;
        assert_eq!(listed()[0].state, crate::ConnectionState::ReadingHead);
        let deadline = Instant::now() + Duration::from_secs(1);
        park_until(
            &f,
            server,
            1,
            AtDeadline::Close,
            false,
            deadline,
            Some(track),
        );
        let [c] = &listed()[..] else {
            panic!("one connection listed")
        };
        assert_eq!(c.state, crate::ConnectionState::Parked);
    }

    /// A parked connection's track is kept by value: the lot holds no `Rc`
    /// of it (one allocated at accept and kept while parked held the pages
    /// of its task's freed memory from `malloc_trim`). A descriptor reused
    /// by a new connection lists the new one, parked, beside one parked
    /// throughout: no connection confused with another.
    #[tokio::test]
    async fn a_reused_descriptor_lists_its_own_parked_connection() {
        use crate::observe::registry::{page, Registry};
        use crate::ConnectionState::Parked;
        let f = fixture();
        let registry = Arc::new(Registry::default());
        let deadline = Instant::now() + Duration::from_secs(60);
        let park_tracked = |socket: OwnedFd| {
            let peer = TcpStream::from(socket.try_clone().unwrap())
                .peer_addr()
                .unwrap();
            let track = ConnTrack::open(None, Some(&registry), peer, peer, 0, &f.stats);
            let kept = Some(track.clone());
            park_until(&f, socket, 1, AtDeadline::Close, false, deadline, kept);
            (track, peer)
        };
        let listed = || -> Vec<_> {
            page(std::slice::from_ref(&registry), 0, 10)
                .1
                .iter()
                .map(|c| (c.peer, c.state))
                .collect()
        };
        let (kept, _kept_client) = pair();
        let (kept, kept_peer) = park_tracked(kept);
        assert_eq!(Rc::strong_count(&kept), 1, "the lot keeps no Rc of it");
        let (a, mut client_a) = pair();
        let (_, a_peer) = park_tracked(a);
        assert_eq!(listed(), [(kept_peer, Parked), (a_peer, Parked)]);
        // Woken and closed (the fixture's respawn closes what it wakes).
        client_a.write_all(b"a").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(listed(), [(kept_peer, Parked)]);
        let a = f.take_woken();
        let fd = a.as_raw_fd();
        // A new connection on its number, as in
        // `a_reused_descriptor_is_added_when_it_parks`.
        let (b, _client_b) = pair();
        // SAFETY: both descriptors are open and ours; `a` is given up.
        assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), fd) }, fd);
        let _ = a.into_raw_fd();
        drop(b);
        // SAFETY: dup2 made `fd` a descriptor of its own for socket b.
        let reused = unsafe { OwnedFd::from_raw_fd(fd) };
        let (_, b_peer) = park_tracked(reused);
        assert_eq!(listed(), [(kept_peer, Parked), (b_peer, Parked)]);
        drop(client_a);
    }

    /// A worker's hook (recording what it hears) and registry.
    struct Tracking {
        hook: ConnectionHook,
        events: Arc<std::sync::Mutex<Vec<ConnectionEvent>>>,
        registry: Arc<crate::observe::registry::Registry>,
    }

    fn tracking() -> Tracking {
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        let hook = ConnectionHook(Arc::new(move |e: &ConnectionEvent| {
            seen.lock().unwrap().push(e.clone());
        }));
        Tracking {
            hook,
            events,
            registry: Arc::default(),
        }
    }

    /// A connection tracked by `t`, served one request (10 bytes in, 20
    /// out) and parked: its client.
    fn park_served(f: &Fixture, t: &Tracking) -> TcpStream {
        use crate::observe::lifecycle::{count_in, count_out, count_request, Tracked};
        let (hook, registry) = (&t.hook, &t.registry);
        let (server, client) = pair();
        let peer = client.local_addr().unwrap();
        let track = ConnTrack::open(Some(hook), Some(registry), peer, peer, 0, &f.stats);
        let mut served = std::pin::pin!(Tracked::new(
            std::future::poll_fn(|_| {
                count_request();
                count_in(10);
                count_out(20);
                std::task::Poll::Ready(())
            }),
            Some(track.clone()),
        ));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(served.as_mut().poll(&mut cx).is_ready());
        let deadline = Instant::now() + Duration::from_secs(60);
        park_until(
            f,
            server,
            1,
            AtDeadline::Close,
            false,
            deadline,
            Some(track),
        );
        client
    }

    /// Closing a parked connection (shutdown here; an idle timeout and a
    /// hand-over close the same way) closes its track as the lot kept it:
    /// one lock of the registry, where waking it first took two (and
    /// allocated the entry's `Arc` and the track's `Rc` for nothing). It
    /// leaves the listing, and its hook hears one `Closed` with its counts.
    #[tokio::test]
    async fn closing_a_parked_connection_takes_the_registry_lock_once() {
        use crate::observe::registry::{page, tests::LOCKS};
        let f = fixture();
        let t = tracking();
        let registry = &t.registry;
        let _client = park_served(&f, &t);
        assert_eq!(page(std::slice::from_ref(registry), 0, 10).0, 1);
        LOCKS.with(|l| l.set(0));
        assert_eq!(f.lot.close_all(), 1);
        assert_eq!(
            LOCKS.with(Cell::get),
            1,
            "registry locks taken by the close"
        );
        assert!(page(std::slice::from_ref(registry), 0, 10).1.is_empty());
        let (_, requests, bytes_in, bytes_out, reason) =
            opened_and_closed(&t.events.lock().unwrap());
        assert_eq!(
            (requests, bytes_in, bytes_out, reason),
            (1, 10, 20, CloseReason::Shutdown)
        );
    }

    /// The per-descriptor track array (~88 B a descriptor) is given back by
    /// the first sweep that finds no tracked connection parked, whether the
    /// last one woke or closed: a peak of parked connections does not keep
    /// it for the process's life.
    #[tokio::test]
    async fn the_track_array_is_given_back_once_none_is_parked() {
        let f = fixture();
        let t = tracking();
        let mut woken = park_served(&f, &t);
        let _closed = park_served(&f, &t);
        f.lot.sweep();
        assert_ne!(f.lot.tracks.borrow().capacity(), 0, "two parked: kept");
        woken.write_all(b"a").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        f.lot.sweep();
        assert_ne!(f.lot.tracks.borrow().capacity(), 0, "one parked: kept");
        assert_eq!(f.lot.close_all(), 1);
        f.lot.sweep();
        assert_eq!(f.lot.tracks.borrow().capacity(), 0, "none parked: freed");
        // And grown again by the next one.
        let _again = park_served(&f, &t);
        assert!(f.lot.tracks.borrow().iter().any(Option::is_some));
    }

    /// A parked track keeps its own fields only, not its worker's hook and
    /// registry (120 B with them).
    #[test]
    fn a_parked_track_is_88_bytes() {
        assert_eq!(std::mem::size_of::<Option<ParkedTrack>>(), 88);
    }

    #[test]
    fn the_heap_is_trimmed_by_count_and_once_a_burst_is_over() {
        assert!(trim_due(TRIM_EVERY, 0) && trim_due(TRIM_EVERY, TRIM_EVERY));
        // Still coming: wait; quiet since the last sweep: trim.
        assert!(!trim_due(TRIM_AFTER_BURST * 2, TRIM_AFTER_BURST));
        assert!(trim_due(TRIM_AFTER_BURST * 2, TRIM_AFTER_BURST * 2));
        // Too little to be worth a trim, quiet or not.
        assert!(!trim_due(TRIM_AFTER_BURST - 1, TRIM_AFTER_BURST - 1));
        assert!(!trim_due(0, 0));
    }

    #[tokio::test]
    async fn a_sweep_trims_once_after_a_burst_goes_quiet() {
        let f = fixture();
        // A burst's churn (as parkings count it), then sweeps.
        f.lot.churn_since_trim.set(TRIM_AFTER_BURST + 10);
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 0, "the burst may still be going on");
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 1, "a quiet second after it");
        f.lot.sweep();
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 1, "once per burst");
        // Real churn counts: a parking.
        let (server, _client) = pair();
        f.lot.churn_since_trim.set(TRIM_AFTER_BURST - 1);
        f.lot.churn_at_sweep.set(TRIM_AFTER_BURST - 1);
        park(&f, server, 1, AtDeadline::Close);
        f.lot.sweep();
        assert_eq!(
            f.lot.trims.get(),
            1,
            "a parking since the last sweep: not quiet"
        );
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 2);
        // Connections the lot never held closing count too (an HTTP/2
        // flood's connections never park).
        f.lot.sweep();
        f.lot.stats().closed.fetch_add(
            TRIM_AFTER_BURST as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 2, "the closes may still be going on");
        f.lot.sweep();
        assert_eq!(
            f.lot.trims.get(),
            3,
            "a quiet sweep after a burst of closes"
        );
    }

    /// The parking that makes a trim pending moves a sweep
    /// planned [`QUIET_SWEEP`] away to a second from now, once per burst
    /// (that parkings count: the test above).
    #[tokio::test(start_paused = true)]
    async fn a_burst_moves_a_quiet_sweep_up() {
        let f = fixture();
        f.lot.sweep();
        assert_eq!(f.lot.next_sweep(true), Instant::now() + QUIET_SWEEP);
        for _ in 1..TRIM_AFTER_BURST {
            f.lot.churned();
        }
        assert!(!f.lot.due_moved.get(), "below a burst: no sweep of its own");
        assert_eq!(f.lot.moved_sweep(), None);
        f.lot.churned();
        assert!(f.lot.due_moved.replace(false), "the run loop is told");
        assert_eq!(
            f.lot.moved_sweep(),
            Some(Instant::now() + Duration::from_secs(1))
        );
        f.lot.churned();
        assert!(!f.lot.due_moved.get(), "once per burst");
        f.lot.sweep();
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 1, "trimmed once it went quiet");
    }

    /// A heartbeat's cycle (woken, then parked again at once) counts
    /// nothing toward a heap trim, so a steady heartbeat load leaves the
    /// lot's sweep at its earliest deadline (or [`QUIET_SWEEP`]); a
    /// parking after idling as a task still counts. Before, the wake and
    /// the re-park counted two, and every lot of a steady load swept and
    /// trimmed each second.
    #[tokio::test]
    async fn a_heartbeats_wake_and_repark_count_nothing_toward_a_trim() {
        let f = fixture();
        let (server, mut client) = pair();
        park(&f, server, 1, AtDeadline::Close);
        let churn = f.lot.churn_since_trim.get();
        for beat in 0..3 {
            client.write_all(b"ping").unwrap();
            assert_eq!(f.wake_ready().await, 1, "beat {beat}: one wake-up");
            let socket = f.take_woken();
            assert_eq!(drain(&socket), b"ping");
            let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), None);
            let deadline = Some(Instant::now() + Duration::from_secs(60));
            let parking = Parking::of(deadline, true, true, ProtoTag(1), AtDeadline::Close);
            f.lot.park(socket, parking, conn);
            assert_eq!(
                f.lot.churn_since_trim.get(),
                churn,
                "beat {beat}: the wake and re-park counted toward a trim"
            );
        }
        // Parked after idling (not at once): counted.
        client.write_all(b"ping").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        let socket = f.take_woken();
        drain(&socket);
        let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), None);
        let deadline = Some(Instant::now() + Duration::from_secs(60));
        let parking = Parking::of(deadline, false, true, ProtoTag(1), AtDeadline::Close);
        f.lot.park(socket, parking, conn);
        assert_eq!(f.lot.churn_since_trim.get(), churn + 1);
    }

    /// A retire time noted at an accept (`max_connection_age`) is kept to
    /// the second, rounded up, and converted without the memory the turn's
    /// parks share: the idle deadline's tick is still remembered after it.
    /// Before, every accept with the option on evicted it.
    #[tokio::test(start_paused = true)]
    async fn a_noted_retire_time_keeps_the_turns_tick() {
        let f = fixture();
        let epoch = f.lot.epoch;
        let idle_deadline = epoch + Duration::from_millis(2500);
        assert_eq!(f.lot.tick_of(idle_deadline), 4);
        let drawn = epoch + Duration::from_millis(7300);
        f.lot.note_retire_at(5, Some(drawn));
        assert_eq!(f.lot.retire_at(5), Some(epoch + Duration::from_secs(8)));
        assert_eq!(
            f.lot.last_tick.get(),
            (idle_deadline, 4),
            "the turn's conversion is still remembered"
        );
        f.lot.note_retire_at(6, None);
        assert_eq!(f.lot.retire_at(6), None, "the option off");
    }

    /// The conversions to ticks and stamps remember their last instant (one
    /// per turn) and are redone, with the same result as before, when it
    /// moves.
    #[tokio::test(start_paused = true)]
    async fn tick_and_stamp_conversions_follow_the_clock() {
        let f = fixture();
        let epoch = f.lot.epoch;
        assert_eq!(f.lot.tick_of(epoch), 1);
        let later = epoch + Duration::from_millis(2500);
        assert_eq!(f.lot.tick_of(later), 4, "2.5 s rounds up to 3, plus one");
        assert_eq!(f.lot.tick_of(later), 4);
        assert_eq!(f.lot.tick_of(epoch + Duration::from_secs(10)), 11);
        assert_eq!(f.lot.tick_of(epoch), 1);
        // Past stamp 0 (read as 1: 0 means "not parked at once").
        tokio::time::advance(Duration::from_millis(100)).await;
        let (a, b) = crate::observe::clock::turn(|| (f.lot.stamp_now(), f.lot.stamp_now()));
        assert_eq!(a, b);
        tokio::time::advance(Duration::from_millis(40)).await;
        let c = f.lot.stamp_now();
        assert_eq!(
            c.wrapping_sub(a) & STAMP_MASK,
            10,
            "40 ms is 10 stamp units"
        );
        assert_eq!(f.lot.stamp_now(), c);
    }

    /// A quiet lot sweeps only when a deadline is due: with nothing parked,
    /// every [`QUIET_SWEEP`]; after a burst, every second until it is
    /// trimmed; then at the deadline, where the sweep closes it.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_lot_sweeps_only_when_a_deadline_is_due() {
        let f = fixture();
        f.lot.sweep();
        let start = Instant::now();
        assert_eq!(
            f.lot.next_sweep(true),
            start + QUIET_SWEEP,
            "nothing parked"
        );
        assert_eq!(
            f.lot.next_sweep(false),
            start + Duration::from_secs(1),
            "buffers to give back"
        );
        tokio::time::advance(Duration::from_millis(10_500)).await;
        let (a, _ca) = pair();
        park(&f, a, 1, AtDeadline::Close);
        assert!(f.lot.due_moved.replace(false), "the run loop is told");
        // A burst's churn: every second until it is over and trimmed.
        f.lot.churn_since_trim.set(TRIM_AFTER_BURST + 10);
        f.lot.sweep();
        assert_eq!(
            f.lot.next_sweep(true),
            Instant::now() + Duration::from_secs(1),
            "a trim pending"
        );
        f.lot.sweep();
        assert_eq!(f.lot.trims.get(), 1);
        let due = f.lot.next_sweep(true);
        assert_eq!(
            due,
            f.lot.epoch + Duration::from_secs(12),
            "the deadline, 11.5 s, to the next second"
        );
        tokio::time::advance(due - Instant::now()).await;
        f.lot.sweep();
        assert_eq!(f.stats.timeouts.load(Relaxed), 1, "closed when due");
        f.lot.sweep();
        assert_eq!(f.lot.next_sweep(true), Instant::now() + QUIET_SWEEP);
    }

    /// A sweep closes or wakes a parked connection only once its deadline
    /// has passed, and the sweep planned for it comes at or after it. The
    /// sweep's tick was rounded up as the deadline's is, so a sweep 1.05 s
    /// in found a deadline of 1.9 s expired: idle timeouts closed early, and
    /// a protocol timer woke its connection before the protocol's deadline.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_never_expires_before_it_passes() {
        let f = fixture();
        let (a, _ca) = pair();
        let (b, _cb) = pair();
        let deadline = f.lot.epoch + Duration::from_millis(1900);
        park_until(&f, a, 1, AtDeadline::Close, false, deadline, None);
        park_until(&f, b, 7, AtDeadline::Wake, false, deadline, None);
        let early = f.lot.epoch + Duration::from_millis(1050);
        tokio::time::advance(early.saturating_duration_since(Instant::now())).await;
        f.lot.sweep();
        assert_eq!(f.stats.timeouts.load(Relaxed), 0, "not closed early");
        assert!(f.woken().is_empty(), "not woken early");
        let due = f.lot.next_sweep(true);
        assert!(due >= deadline, "the sweep comes after the deadline");
        assert!(due <= deadline + Duration::from_secs(1), "within a second");
        tokio::time::advance(due - Instant::now()).await;
        f.lot.sweep();
        assert_eq!(f.stats.timeouts.load(Relaxed), 1, "closed when due");
        assert_eq!(f.woken(), [(ProtoTag(7), Wake::Timer)], "woken when due");
    }

    /// A lot whose every turn is full (`MAX_EVENTS` wake-ups, as in a
    /// flood) still sweeps when a sweep is due. A full turn leaves the lot's
    /// readiness set, and the run loop's `biased` select took the next turn
    /// before looking at the sweep: idle deadlines (and timers) waited for
    /// the flood to end. Here every woken socket parks again at once with
    /// its byte unread, so the re-park re-polls it and it is ready again:
    /// with more than `MAX_EVENTS` of them, no turn is ever short. The same
    /// for a wake the hub asks for (`ask_wake_owed`): served between full
    /// turns, not after the flood.
    #[tokio::test(start_paused = true)]
    async fn full_turns_do_not_starve_the_sweep_or_an_owed_wake() {
        let local = tokio::task::LocalSet::new();
        local.run_until(full_turns_sweep()).await;
    }

    async fn full_turns_sweep() {
        let (lot, limit, stats) = bare_lot(MAX_EVENTS + 8);
        let config = Arc::new(crate::conn::config::Config::default());
        let ctx = Rc::new(WorkerContext::new(0, config, stats.clone(), Some(lot)));
        let lot = ctx.park.as_ref().unwrap();
        let park_in = |lot: &ParkingLot, socket, conn, deadline| {
            let parking = Parking::of(deadline, false, false, ProtoTag(1), AtDeadline::Close);
            lot.park(socket, parking, conn);
        };
        let weak = Rc::downgrade(&ctx);
        // The owed wake's connection parks as protocol 2; what woke it.
        let owed_woke: Rc<Cell<Option<Wake>>> = Rc::default();
        let woke = owed_woke.clone();
        lot.set_respawn(Some(Rc::new(move |incoming, conn: Connection| {
            match (weak.upgrade(), incoming) {
                (
                    Some(_),
                    Incoming::Woken {
                        proto: ProtoTag(2),
                        wake,
                        ..
                    },
                ) => {
                    woke.set(Some(wake));
                    drop(conn);
                }
                (Some(ctx), Incoming::Woken { socket, .. }) => {
                    park_in(ctx.park.as_ref().unwrap(), socket, conn, None);
                }
                _ => {}
            }
        })));
        let mut clients = Vec::new();
        for _ in 0..MAX_EVENTS + 4 {
            let (server, mut client) = pair();
            client.write_all(b"x").unwrap();
            let conn = Connection::open(limit.try_acquire().unwrap(), stats.clone(), None);
            park_in(lot, server, conn, None);
            clients.push(client);
        }
        // A silent one, due to time out at the first sweep.
        let (idle, _idle_client) = pair();
        let conn = Connection::open(limit.try_acquire().unwrap(), stats.clone(), None);
        park_in(
            lot,
            idle,
            conn,
            Some(Instant::now() + Duration::from_secs(1)),
        );
        // A silent one a push will owe its rest to.
        let (owing, _owing_client) = pair();
        let owing_fd = owing.as_raw_fd();
        let conn = Connection::open(limit.try_acquire().unwrap(), stats.clone(), None);
        let parking = Parking::of(None, false, false, ProtoTag(2), AtDeadline::Close);
        lot.park(owing, parking, conn);
        let running = tokio::task::spawn_local(run(ctx.clone()));
        // Each yield lets the lot take one turn: they stay full.
        for _ in 0..200 {
            if stats.parking_wakeups.load(Relaxed) >= 5 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let full = stats.wakes_cold.load(Relaxed) + stats.wakes_hot.load(Relaxed);
        assert!(full >= 4 * MAX_EVENTS as u64, "full turns: {full} wake-ups");
        assert!(lot.ask_wake_owed(owing_fd), "parked here");
        for _ in 0..200 {
            if owed_woke.get().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            owed_woke.get(),
            Some(Wake::Owed),
            "owed wake served between full turns"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        for _ in 0..200 {
            if stats.timeouts.load(Relaxed) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.timeouts.load(Relaxed), 1, "swept between full turns");
        ctx.shutdown.start();
        // They all parked just now: shutdown's idle grace, which paused
        // time never reaches by itself (the lot's turns, always full, never
        // leave the runtime idle).
        while !running.is_finished() {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_wakes_a_parked_connection_in_its_protocol() {
        let f = fixture();
        let (socket, _client) = pair();
        park(&f, socket, 7, AtDeadline::Wake);
        assert_eq!(f.lot.len(), 1);
        f.lot.sweep();
        assert!(f.woken().is_empty(), "not before its deadline");
        tokio::time::advance(Duration::from_secs(3)).await;
        f.lot.sweep();
        assert_eq!(f.woken(), [(ProtoTag(7), Wake::Timer)]);
        assert_eq!(f.lot.len(), 0);
        assert_eq!(f.stats.timeouts.load(Relaxed), 0, "a wake, not a timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_deadline_closes_and_frees_the_slot() {
        let f = fixture();
        let (a, _ca) = pair();
        let (b, _cb) = pair();
        park(&f, a, 1, AtDeadline::Close);
        park(&f, b, 1, AtDeadline::Close);
        let _others = (f.limit.try_acquire(), f.limit.try_acquire());
        assert!(
            f.limit.try_acquire().is_none(),
            "both slots held while parked"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        f.lot.sweep();
        assert!(f.woken().is_empty());
        assert_eq!(f.stats.timeouts.load(Relaxed), 2);
        assert_eq!(f.stats.connections_open.load(Relaxed), 0);
        assert_eq!(f.stats.closed.load(Relaxed), 2);
        assert!(f.limit.try_acquire().is_some(), "slots freed");
    }

    #[tokio::test]
    async fn bytes_wake_a_parked_connection_in_its_protocol() {
        let f = fixture();
        let (socket, mut client) = pair();
        park(&f, socket, 3, AtDeadline::Close);
        client.write_all(b"ping").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(f.woken(), [(ProtoTag(3), Wake::Readable)]);
        assert_eq!(f.stats.wakes_cold.load(Relaxed), 1);
    }

    /// The heartbeat cycle: a woken socket that read all it had parks
    /// again with no `epoll_ctl`, and its next bytes still wake it.
    #[tokio::test]
    async fn a_woken_socket_parks_again_without_epoll_ctl_and_still_wakes() {
        let f = fixture();
        let (socket, mut client) = pair();
        park(&f, socket, 3, AtDeadline::Close);
        assert_eq!(f.ctl_calls(), 1, "added once");
        for round in 0..3 {
            client.write_all(b"beat").unwrap();
            assert_eq!(f.wake_ready().await, 1, "round {round}");
            let socket = f.take_woken();
            assert_eq!(drain(&socket), b"beat");
            park_as(&f, socket, 3, AtDeadline::Close, true);
            assert_eq!(f.lot.len(), 1);
        }
        assert_eq!(f.ctl_calls(), 1, "no epoll_ctl after the first park");
    }

    /// Bytes a woken socket left unread (a read that filled its buffer)
    /// raise no new edge: parked as not watched, the lot re-polls it, and
    /// they wake it again.
    #[tokio::test]
    async fn bytes_left_unread_at_a_wake_wake_it_again() {
        let f = fixture();
        let (socket, mut client) = pair();
        park(&f, socket, 3, AtDeadline::Close);
        client.write_all(b"one two").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        let socket = f.take_woken();
        let mut first = [0u8; 3];
        TcpStream::from(socket.try_clone().unwrap())
            .read_exact(&mut first)
            .unwrap();
        park_as(&f, socket, 3, AtDeadline::Close, false);
        assert_eq!(f.ctl_calls(), 2, "re-polled (MOD)");
        assert_eq!(f.wake_ready().await, 1, "the rest wakes it");
        assert_eq!(drain(&f.take_woken()), b" two");
    }

    /// An edge for a socket that is awake (its task has it): the lot takes
    /// it out of its set at once, so a busy connection costs it one edge,
    /// not one per request; parked again it is added back, and the bytes
    /// that came while it was awake and were not read still wake it.
    #[tokio::test]
    async fn an_edge_while_awake_takes_the_socket_out_and_loses_nothing() {
        let f = fixture();
        let (socket, mut client) = pair();
        park(&f, socket, 3, AtDeadline::Close);
        client.write_all(b"first").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        let socket = f.take_woken();
        assert_eq!(drain(&socket), b"first");
        // Awake (a task serves it); more bytes come.
        client.write_all(b"second").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert!(f.woken().is_empty(), "an awake socket is not woken twice");
        assert_eq!(f.ctl_calls(), 2, "taken out of the set (DEL)");
        // Out of the set: further bytes reach the lot no more.
        client.write_all(b"third").unwrap();
        assert_eq!(f.lot.wake_ready().unwrap(), 0);
        // The task parks it without reading them (its transport says watched,
        // but the lot knows better): added back, and they wake it.
        park_as(&f, socket, 3, AtDeadline::Close, true);
        assert_eq!(f.ctl_calls(), 3, "added back (ADD)");
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(drain(&f.take_woken()), b"secondthird");
    }

    /// A woken socket closed by its task leaves a stale `AWAKE`; a new
    /// connection on the same descriptor number is not in the set and must
    /// be added when it parks (it never says "watched": only the woken
    /// socket's transport does).
    #[tokio::test]
    async fn a_reused_descriptor_is_added_when_it_parks() {
        let f = fixture();
        let (a, client_a) = parked_and_woken(&f, 3).await;
        let fd = a.as_raw_fd();
        // The new connection takes the old one's number in one step (dup2
        // closes the old socket, which leaves the set): no other thread of
        // the test process can take the number in between.
        let (b, mut client_b) = pair();
        // SAFETY: both descriptors are open and ours; `a` is given up.
        assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), fd) }, fd);
        let _ = a.into_raw_fd();
        drop(b);
        // SAFETY: dup2 made `fd` a descriptor of its own for socket b.
        let reused = unsafe { OwnedFd::from_raw_fd(fd) };
        let before = f.ctl_calls();
        park(&f, reused, 3, AtDeadline::Close);
        assert_eq!(f.ctl_calls() - before, 2, "MOD found nothing, then ADD");
        client_b.write_all(b"b").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(drain(&f.take_woken()), b"b");
        drop(client_a);
    }

    /// A connection parked in `f`'s lot as protocol `proto` and woken by a
    /// byte: the woken socket (the byte unread) and its client.
    async fn parked_and_woken(f: &Fixture, proto: u8) -> (OwnedFd, TcpStream) {
        let (server, mut client) = pair();
        park(f, server, proto, AtDeadline::Close);
        client.write_all(b"a").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        (f.take_woken(), client)
    }

    /// Sends `bytes` to a parked connection, lets the lot wake it, and reads
    /// them from the woken socket: that socket.
    async fn wake_with(f: &Fixture, client: &mut TcpStream, bytes: &[u8]) -> OwnedFd {
        client.write_all(bytes).unwrap();
        assert_eq!(f.wake_ready().await, 1);
        let socket = f.take_woken();
        assert_eq!(drain(&socket), bytes);
        socket
    }

    /// Hot or cold: only a connection parked straight after a wake-up
    /// (`at_once`) and woken again within `hot_within` (2 s here) is hot;
    /// one parked after idling as a task is cold however soon it wakes, and
    /// so is one parked at once that stayed parked longer. Paused time, so
    /// the stamps do not move unless the test moves them.
    #[tokio::test(start_paused = true)]
    async fn only_a_connection_parked_at_once_and_woken_soon_wakes_hot() {
        let f = fixture();
        let (socket, mut client) = pair();
        let wakes = || {
            (
                f.stats.wakes_hot.load(Relaxed),
                f.stats.wakes_cold.load(Relaxed),
            )
        };
        let park_after = |socket, at_once| {
            let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), None);
            let parking = Parking::of(None, at_once, true, ProtoTag(3), AtDeadline::Close);
            f.lot.park(socket, parking, conn);
        };
        park_after(socket, false);
        let socket = wake_with(&f, &mut client, b"a").await;
        assert_eq!(wakes(), (0, 1), "parked after idling: cold");
        park_after(socket, true);
        let socket = wake_with(&f, &mut client, b"b").await;
        assert_eq!(wakes(), (1, 1), "parked at once, woken at once: hot");
        park_after(socket, true);
        tokio::time::advance(Duration::from_secs(3)).await;
        wake_with(&f, &mut client, b"c").await;
        assert_eq!(wakes(), (1, 2), "parked at once, woken 3 s later: cold");
    }

    /// A connection parked at once, with no deadline, and woken a whole
    /// wrap of the 16-bit stamp later plus a unit (~262 s) is cold: the
    /// sweeps in between (the run loop's, at least every ten seconds)
    /// cleared its stamp (`age_stamps`, once a minute). It read as woken a
    /// unit after it parked before:
    /// hot, kept awake as a task for `park_idle_after`. Paused time.
    #[tokio::test(start_paused = true)]
    async fn a_connection_woken_a_stamp_wrap_after_it_parked_is_cold() {
        let f = fixture();
        let (socket, mut client) = pair();
        let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), None);
        let parking = Parking::of(None, true, true, ProtoTag(3), AtDeadline::Close);
        f.lot.park(socket, parking, conn);
        let wrap = Duration::from_millis(STAMP_MS * (u64::from(STAMP_MASK) + 1));
        let mut gone = Duration::ZERO;
        while gone + QUIET_SWEEP < wrap {
            tokio::time::advance(QUIET_SWEEP).await;
            gone += QUIET_SWEEP;
            f.lot.sweep();
        }
        assert_eq!(f.lot.len(), 1, "no deadline: still parked");
        tokio::time::advance(wrap - gone + Duration::from_millis(STAMP_MS)).await;
        wake_with(&f, &mut client, b"a").await;
        assert_eq!(
            (
                f.stats.wakes_hot.load(Relaxed),
                f.stats.wakes_cold.load(Relaxed)
            ),
            (0, 1),
            "woken a wrap and a unit after it parked: cold"
        );
    }

    /// A parked socket whose client hung up wakes as `HungUp` (its
    /// protocol must then read to the end: no later edge will say so),
    /// bytes alone as `Readable`; the lot counts a turn that woke
    /// something, not one that found nothing.
    #[tokio::test]
    async fn a_hang_up_wakes_as_such_and_only_turns_with_events_count() {
        let f = fixture();
        let (a, mut client_a) = pair();
        let (b, mut client_b) = pair();
        park(&f, a, 3, AtDeadline::Close);
        park(&f, b, 4, AtDeadline::Close);
        assert_eq!(f.lot.wake_ready().unwrap(), 0, "nothing yet");
        assert_eq!(f.stats.parking_wakeups.load(Relaxed), 0);
        client_a.write_all(b"bye").unwrap();
        client_a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(f.woken(), [(ProtoTag(3), Wake::HungUp)]);
        assert_eq!(f.stats.parking_wakeups.load(Relaxed), 1);
        client_b.write_all(b"hi").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(
            f.woken(),
            [(ProtoTag(3), Wake::HungUp), (ProtoTag(4), Wake::Readable)]
        );
        assert_eq!(f.stats.parking_wakeups.load(Relaxed), 2);
        assert_eq!(f.lot.wake_ready().unwrap(), 0);
        assert_eq!(f.stats.parking_wakeups.load(Relaxed), 2, "an empty turn");
    }

    /// The parked and idle gauges count a connection while it is parked,
    /// and give it back when it wakes or closes.
    #[tokio::test(start_paused = true)]
    async fn the_parked_gauges_follow_parks_wakes_and_closes() {
        let f = fixture();
        let gauges = || {
            (
                f.stats.connections_parked.load(Relaxed),
                f.stats.connections_idle.load(Relaxed),
            )
        };
        let (a, mut client_a) = pair();
        let (b, _client_b) = pair();
        park(&f, a, 3, AtDeadline::Close);
        park(&f, b, 3, AtDeadline::Close);
        assert_eq!((gauges(), f.lot.len()), ((2, 2), 2));
        client_a.write_all(b"a").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!((gauges(), f.lot.len()), ((1, 1), 1), "one woke");
        tokio::time::advance(Duration::from_secs(3)).await;
        f.lot.sweep();
        assert_eq!((gauges(), f.lot.len()), ((0, 0), 0), "one timed out");
    }

    /// A descriptor numbered at the per-descriptor arrays' growth step (a
    /// multiple of [`GROW_BY`], where an array sized to the number and no
    /// more ends just before it) parks, keeps its client's per-IP place
    /// and its retire time, and wakes; its place is given back after.
    #[tokio::test]
    async fn a_descriptor_at_the_arrays_growth_step_parks_and_wakes() {
        let f = fixture_of(ConnectionLimit::new(4, Some(1)));
        let (server, mut client) = pair();
        // The lowest free number from a multiple of GROW_BY up: that one,
        // unless another test's socket holds it; then try the next step.
        let step = (1..20)
            .map(|k| k * GROW_BY as RawFd)
            .find_map(|at| {
                // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, ours.
                let fd = unsafe { libc::fcntl(server.as_raw_fd(), libc::F_DUPFD_CLOEXEC, at) };
                assert!(fd >= at, "{}", io::Error::last_os_error());
                // SAFETY: a fresh descriptor nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                (fd.as_raw_fd() == at).then_some(fd)
            })
            .expect("a free descriptor at a multiple of GROW_BY");
        drop(server);
        let fd = step.as_raw_fd();
        let ip = client.local_addr().unwrap().ip();
        let mut slot = f.limit.try_acquire().unwrap();
        assert!(f.limit.admit_ip(&mut slot, ip));
        let retire = Instant::now() + Duration::from_secs(60);
        f.lot.note_retire_at(fd, Some(retire));
        let conn = Connection::open(slot, f.stats.clone(), None);
        let parking = Parking::of(None, false, false, ProtoTag(5), AtDeadline::Close);
        f.lot.park(step, parking, conn);
        assert_eq!(f.lot.parked_fds(), [fd]);
        assert!(f.lot.retire_at(fd).is_some_and(|at| at >= retire));
        let mut other = f.limit.try_acquire().unwrap();
        assert!(!f.limit.admit_ip(&mut other, ip), "its place is held");
        client.write_all(b"x").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(f.woken(), [(ProtoTag(5), Wake::Readable)]);
        // The fixture's respawn closed the woken connection: its place is
        // free again.
        assert!(f.limit.admit_ip(&mut other, ip), "its place given back");
    }

    /// An upgrade takes the parked connections the protocols let go (here:
    /// protocol 1's but the one with a timer, and protocol 3's with its
    /// payload), each with the idle time it had left and what its protocol
    /// exported; they leave the lot's set (bytes for them wake it no more)
    /// and count as closed here. The others stay.
    #[tokio::test(start_paused = true)]
    async fn take_portable_takes_the_portable_ones_with_their_time_left() {
        use crate::conn::handover::ParkedState;
        let f = fixture_of(ConnectionLimit::new(8, None));
        let park_for = |proto, deadline, at_deadline| {
            let (socket, client) = pair();
            let fd = socket.as_raw_fd();
            let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), None);
            let parking = Parking::of(deadline, false, false, ProtoTag(proto), at_deadline);
            f.lot.park(socket, parking, conn);
            (fd, client)
        };
        let minute = Instant::now() + Duration::from_secs(60);
        let (idle, mut idle_client) = park_for(1, Some(minute), AtDeadline::Close);
        let (forever, _c) = park_for(1, None, AtDeadline::Close);
        let (timer, _c) = park_for(1, Some(minute), AtDeadline::Wake);
        let (other, _c) = park_for(2, Some(minute), AtDeadline::Close);
        let (framed, _c) = park_for(3, Some(minute), AtDeadline::Wake);
        let mut taken: Vec<_> = f
            .lot
            .take_portable(|_, tag, at| match tag.0 {
                1 => (at == AtDeadline::Close).then(Vec::new),
                3 => Some(vec![9, 9]),
                _ => None,
            })
            .into_iter()
            .map(|p| (p.socket.as_raw_fd(), p.state, p.socket))
            .collect();
        taken.sort_by_key(|t| t.0);
        let states: Vec<_> = taken.iter().map(|t| (t.0, t.1.clone())).collect();
        let minute_left = Some(Duration::from_secs(60));
        let mut expected = [
            (idle, ParkedState::new(ProtoTag(1), minute_left, vec![])),
            (forever, ParkedState::new(ProtoTag(1), None, vec![])),
            (
                framed,
                ParkedState::new(ProtoTag(3), minute_left, vec![9, 9]),
            ),
        ];
        expected.sort_by_key(|t| t.0);
        assert_eq!(states, expected);
        let mut left = f.lot.parked_fds();
        left.sort_unstable();
        let mut kept = [timer, other];
        kept.sort_unstable();
        assert_eq!((left, f.lot.len()), (kept.to_vec(), 2));
        assert_eq!(f.stats.closed.load(Relaxed), 3, "handed over");
        idle_client.write_all(b"late").unwrap();
        assert_eq!(f.lot.wake_ready().unwrap(), 0, "out of the lot's set");
    }

    /// At the limit the lot closes the longest idle of its evictable
    /// connections (earliest idle deadline), an eighth of those parked and
    /// at least one; never one with a timer, one of a protocol not
    /// evictable, nor one whose next request already came.
    #[tokio::test(start_paused = true)]
    async fn evict_closes_the_longest_idle_evictable_one() {
        let f = fixture_of(ConnectionLimit::new(16, None));
        let park_for = |proto, secs, at_deadline| park_in(&f, proto, secs, at_deadline);
        let evictable = |tag| tag == ProtoTag(1);
        let _timer = park_for(1, 1, AtDeadline::Wake);
        let _other = park_for(2, 1, AtDeadline::Close);
        let mut young = park_for(1, 10, AtDeadline::Close);
        let mut old = park_for(1, 5, AtDeadline::Close);
        assert_eq!(f.lot.evict(evictable), 1, "one of 4 parked: at least one");
        assert_eq!(f.lot.len(), 3);
        let mut rest = Vec::new();
        assert_eq!(old.read_to_end(&mut rest).unwrap(), 0, "the oldest closed");
        young.set_nonblocking(true).unwrap();
        let still = young.read(&mut [0u8; 1]).unwrap_err().kind();
        assert_eq!(still, io::ErrorKind::WouldBlock, "the younger one open");
        // Its request came: left to be served.
        let mut busy = park_for(1, 2, AtDeadline::Close);
        busy.write_all(b"GET").unwrap();
        assert_eq!(f.lot.evict(evictable), 0);
        assert_eq!(f.lot.len(), 4);
        // Sixteen parked: two go, the two longest idle.
        let f = fixture_of(ConnectionLimit::new(16, None));
        let mut clients: Vec<_> = (0..16)
            .map(|i| park_in(&f, 1, 1 + i, AtDeadline::Close))
            .collect();
        assert_eq!(f.lot.evict(evictable), 2);
        assert_eq!(f.lot.len(), 14);
        for c in &mut clients[..2] {
            assert_eq!(c.read_to_end(&mut rest).unwrap(), 0);
        }
    }

    /// Parks a new connection in `f`'s lot, of protocol `proto`, with its
    /// deadline `secs` from now: its client.
    fn park_in(f: &Fixture, proto: u8, secs: u64, at_deadline: AtDeadline) -> TcpStream {
        let (socket, client) = pair();
        let conn = Connection::open(f.limit.try_acquire().unwrap(), f.stats.clone(), None);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let parking = Parking::of(Some(deadline), false, false, ProtoTag(proto), at_deadline);
        f.lot.park(socket, parking, conn);
        client
    }

    /// A graceful shutdown closes the connections parked longer than the
    /// grace and leaves the recent ones (their client's next request may
    /// be on its way); one whose request already came is woken to be
    /// answered, not closed.
    #[tokio::test(start_paused = true)]
    async fn shutdown_spares_the_recent_and_wakes_the_one_with_a_request() {
        let f = fixture();
        // Past the first stamps (0 is read as 1), in stamp units of 4 ms.
        tokio::time::advance(Duration::from_millis(100)).await;
        let mut old = park_in(&f, 1, 60, AtDeadline::Close);
        tokio::time::advance(Duration::from_millis(4)).await;
        let mut recent = park_in(&f, 1, 60, AtDeadline::Close);
        // The grace is 500 units and one: the old one parked 501 ago, the
        // recent one 500.
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert_eq!(f.lot.close_all_but_recent(Duration::from_secs(2)), 1);
        assert_eq!(f.lot.len(), 1);
        assert_eq!(old.read_to_end(&mut Vec::new()).unwrap(), 0, "closed");
        recent.write_all(b"GET").unwrap();
        assert_eq!(f.lot.close_all(), 1);
        assert_eq!(f.woken(), [(ProtoTag(1), Wake::Readable)], "woken");
    }

    /// Two lots of one process share one slot array, a slot each, each
    /// knowing its own: an edge that reaches the wrong lot's set (here: the
    /// socket added to both) wakes nothing there, and no walk of the other
    /// lot (its parked list, its shutdown, its evictions) takes it; the
    /// lot it parked in serves it.
    #[tokio::test]
    async fn a_connection_parked_in_one_lot_is_never_woken_by_another() {
        let claim = Claim::private().unwrap();
        let b = fixture_on(ConnectionLimit::new(4, None), claim.beside());
        let a = fixture_on(ConnectionLimit::new(4, None), claim);
        assert!(std::ptr::eq(a.lot.claim.slots(), b.lot.claim.slots()));
        let (server, mut client) = pair();
        let fd = server.as_raw_fd();
        park(&a, server, 1, AtDeadline::Close);
        b.lot.ctl(libc::EPOLL_CTL_ADD, fd).unwrap();
        client.write_all(b"x").unwrap();
        assert_eq!(b.wake_ready().await, 1, "the edge reached the other lot");
        assert!(b.woken().is_empty(), "and woke nothing there");
        assert!(b.lot.parked_fds().is_empty());
        assert_eq!(b.lot.evict(|_| true), 0);
        assert_eq!(b.lot.close_all_now(), 0);
        b.lot.sweep();
        assert_eq!((a.lot.len(), b.lot.len()), (1, 0));
        assert_eq!(a.lot.parked_fds(), [fd]);
        assert_eq!(a.wake_ready().await, 1);
        assert_eq!(a.woken(), [(ProtoTag(1), Wake::Readable)]);
        assert_eq!(drain(&a.take_woken()), b"x");
    }

    /// A descriptor woken in one lot whose socket closes while awake leaves
    /// its slot `ABSENT` (`woken_closing`); a new connection on the number,
    /// parked in another lot, starts clean there: added (no `MOD` for a
    /// state that was never that lot's), and the first lot, hearing late of
    /// a close it had not been told of, does not take the slot back.
    #[tokio::test]
    async fn a_descriptor_reused_after_a_close_starts_clean_in_any_lot() {
        let claim = Claim::private().unwrap();
        let b = fixture_on(ConnectionLimit::new(4, None), claim.beside());
        let a = fixture_on(ConnectionLimit::new(4, None), claim);
        let slots = a.lot.claim.slots();
        // Woken in A, then closed while awake: told, its slot is ABSENT.
        let (first, client_a) = parked_and_woken(&a, 3).await;
        let fd = first.as_raw_fd();
        assert_eq!(slots.get(fd as usize).deadline, AWAKE);
        assert!(a.lot.forget_awake(fd), "what woken_closing does");
        assert_eq!(slots.get(fd as usize).deadline, ABSENT);
        // Woken in A again and closed without telling (a socket that left
        // its worker): the stale AWAKE is A's.
        let reuse = |old: OwnedFd| {
            let (new, client) = pair();
            // SAFETY: both descriptors are open and ours; `old` is given up.
            assert_eq!(unsafe { libc::dup2(new.as_raw_fd(), fd) }, fd);
            let _ = old.into_raw_fd();
            // SAFETY: dup2 made `fd` a descriptor of its own for `new`.
            (unsafe { OwnedFd::from_raw_fd(fd) }, client)
        };
        let (second, mut client_b) = reuse(first);
        park(&a, second, 3, AtDeadline::Close);
        client_b.write_all(b"b").unwrap();
        assert_eq!(a.wake_ready().await, 1);
        let second = a.take_woken();
        assert_eq!(slots.get(fd as usize).deadline, AWAKE);
        // A new connection on the number parks in B: one ADD, B's slot.
        let (third, mut client_c) = reuse(second);
        let ctl = b.ctl_calls();
        park(&b, third, 4, AtDeadline::Close);
        assert_eq!(b.ctl_calls() - ctl, 1, "added, no MOD first");
        let slot = slots.get(fd as usize);
        assert!(slot.is_parked() && slot.owner() == b.lot.claim.owner());
        // A hears of its closed socket late: the slot stays B's.
        assert!(!a.lot.forget_awake(fd));
        a.lot.unwatch_awake(fd);
        assert_eq!(slots.get(fd as usize), slot);
        assert_eq!((a.lot.parked_fds(), b.lot.parked_fds()), (vec![], vec![fd]));
        client_c.write_all(b"c").unwrap();
        assert_eq!(b.wake_ready().await, 1);
        assert_eq!(b.woken(), [(ProtoTag(4), Wake::Readable)]);
        assert_eq!(drain(&b.take_woken()), b"c");
        assert_eq!(a.lot.wake_ready().unwrap(), 0, "A hears nothing of it");
        assert!(a.woken().is_empty());
        drop((client_a, client_b));
    }

    /// The array's pages above the highest slot in use go back to the OS
    /// once a peak closed (a sweep gives them back), and a descriptor
    /// there parks and wakes again afterwards.
    #[tokio::test]
    async fn a_sweep_gives_back_the_pages_of_a_peak_that_closed() {
        let f = fixture_on(ConnectionLimit::new(4, None), Claim::private().unwrap());
        let slots = f.lot.claim.slots();
        let high = || {
            let (server, client) = pair();
            // The lowest free number from 8 steps up (past RELEASE_MIN).
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, ours.
            let fd = unsafe {
                libc::fcntl(
                    server.as_raw_fd(),
                    libc::F_DUPFD_CLOEXEC,
                    8 * GROW_BY as RawFd,
                )
            };
            assert!(fd > 0, "{}", io::Error::last_os_error());
            // SAFETY: a fresh descriptor nobody else owns.
            (unsafe { OwnedFd::from_raw_fd(fd) }, client)
        };
        let (server, client) = high();
        let fd = server.as_raw_fd();
        park(&f, server, 1, AtDeadline::Close);
        assert!(slots.top() > fd as usize);
        f.lot.sweep();
        assert_eq!(slots.released(), 0, "a live slot keeps its pages");
        assert_eq!(f.lot.close_all_now(), 1);
        drop(client);
        f.lot.sweep();
        assert_eq!(slots.top(), 0, "nothing live: nothing walked");
        assert!(slots.released() >= (fd as usize + 1) / 512);
        // Parked again up there: the array takes it back.
        let (server, mut client) = high();
        let fd = server.as_raw_fd();
        park(&f, server, 2, AtDeadline::Close);
        assert_eq!(f.lot.parked_fds(), [fd]);
        client.write_all(b"y").unwrap();
        assert_eq!(f.wake_ready().await, 1);
        assert_eq!(f.woken(), [(ProtoTag(2), Wake::Readable)]);
    }

    /// The run loop's sweep comes back in a second, not after the quiet
    /// period, while the worker's buffer pool holds more free buffers than
    /// it keeps warm (each sweep decays it a step) or a paced shutdown drain
    /// runs (the loop ends at the first sweep that finds the lot empty),
    /// and after the quiet period once neither holds. (docs/MUTANTS.md:
    /// `sweep_turn`'s `settled() && !draining` → `||` was missed.)
    #[tokio::test(start_paused = true)]
    async fn the_sweep_comes_back_in_a_second_while_the_pool_is_unsettled_or_a_drain_runs() {
        let (lot, _limit, stats) = bare_lot(4);
        let config = Arc::new(crate::conn::config::Config::default());
        let ctx = WorkerContext::new(0, config, stats, Some(lot));
        let lot = ctx.park.as_ref().unwrap();
        let in_a_second = Instant::now() + Duration::from_secs(1);
        assert!(ctx.pool.settled());
        assert_eq!(
            sweep_turn(lot, &ctx, false),
            Instant::now() + QUIET_SWEEP,
            "quiet"
        );
        assert_eq!(sweep_turn(lot, &ctx, true), in_a_second, "draining");
        // A burst's buffers back in the pool: more than it keeps warm, and
        // none of them decays at the first sweep after (the burst used them).
        let burst: Vec<_> = (0..crate::conn::pool::KEEP_WARM + 8)
            .map(|_| ctx.pool.take())
            .collect();
        burst.into_iter().for_each(|b| ctx.pool.give(b));
        assert!(!ctx.pool.settled());
        assert_eq!(sweep_turn(lot, &ctx, false), in_a_second, "unsettled");
        assert!(
            !ctx.pool.settled(),
            "nothing decayed yet: the burst used them all"
        );
        assert_eq!(
            sweep_turn(lot, &ctx, false),
            Instant::now() + QUIET_SWEEP,
            "settled"
        );
    }

    /// The run loop's shutdown wait (`poll_begun`): the task's waker goes
    /// into the `Notify`'s list once (polled again with it, the wait is not
    /// polled: no lock), a new waker is registered in its place, and the
    /// start wakes the last one registered and resolves the wait.
    #[test]
    fn the_lots_shutdown_wait_registers_once_and_is_woken_by_the_start() {
        use std::task::{Poll, Waker};

        let shutdown = crate::conn::shutdown::LocalShutdown::default();
        let polled = Cell::new(0);
        let mut wait = std::pin::pin!(shutdown.begun());
        let mut begun = std::pin::pin!(std::future::poll_fn(|cx| {
            polled.set(polled.get() + 1);
            wait.as_mut().poll(cx)
        }));
        let mut registered = None;
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut poll = |waker: &Waker| {
            let mut cx = std::task::Context::from_waker(waker);
            poll_begun(&shutdown, begun.as_mut(), &mut registered, &mut cx)
        };
        assert_eq!(poll(&wa), Poll::Pending);
        assert_eq!(poll(&wa), Poll::Pending);
        assert_eq!(polled.get(), 1, "the same waker: the wait is not polled");
        assert_eq!(poll(&wb), Poll::Pending, "another waker: registered");
        shutdown.start();
        assert_eq!(
            (a.woken(), b.woken()),
            (0, 1),
            "the start wakes the waker registered last"
        );
        assert_eq!(poll(&wb), Poll::Ready(()));
        assert_eq!(
            poll(&wa),
            Poll::Ready(()),
            "started: ready whatever the waker"
        );
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    impl Count {
        fn woken(&self) -> usize {
            self.0.load(Relaxed)
        }
    }

    /// The run loop's sweep timer (`SweepTimer`) waits as its `Sleep`
    /// does: not due, it stays pending with the waker it was last polled
    /// with registered (a new waker is registered in its place), which its
    /// deadline wakes; due, it is ready; reset, it waits for the new
    /// deadline.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_timer_fires_at_its_deadline_and_again_after_a_reset() {
        use std::task::Waker;

        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
        let mut timer = SweepTimer::new(sleep.as_mut());
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let poll = |timer: &mut SweepTimer<'_>, waker: &Waker| {
            timer
                .poll_due(&mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        assert!(!poll(&mut timer, &wa));
        assert!(!poll(&mut timer, &wa), "held: not polled again");
        assert!(!poll(&mut timer, &wb), "another waker: registered");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!poll(&mut timer, &wb));
        assert_eq!((a.woken(), b.woken()), (0, 0));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(
            (a.woken(), b.woken()),
            (0, 1),
            "the deadline wakes the waker registered last"
        );
        assert!(poll(&mut timer, &wb), "due");
        timer.reset(Instant::now() + Duration::from_secs(2));
        assert!(!poll(&mut timer, &wb), "reset: waits again");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!poll(&mut timer, &wb));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.woken(), 2);
        assert!(poll(&mut timer, &wb), "due again");
    }

    /// A poll right after a reset that the task's coop budget cuts short
    /// (`Sleep` returns Pending before it registers any waker) must not
    /// leave `armed` set: the timer would then pass its deadline with no
    /// waker, and the task would never wake (merge review, session 50).
    #[tokio::test(start_paused = true)]
    async fn a_poll_without_coop_budget_still_wakes_at_the_deadline() {
        use std::task::{Poll, Waker};
        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
        let mut timer = SweepTimer::new(sleep.as_mut());
        let b = Arc::new(Count::default());
        let wb = Waker::from(b.clone());
        let poll = |timer: &mut SweepTimer<'_>, waker: &Waker| {
            timer
                .poll_due(&mut std::task::Context::from_waker(waker))
                .is_ready()
        };
        assert!(!poll(&mut timer, &wb));
        tokio::time::advance(Duration::from_millis(1001)).await;
        // As the full-turn path does (`sweep.deadline() <= now`): fired (its
        // waker taken), swept and reset without a poll; then polled again
        // in the same turn, here with the budget spent.
        timer.reset(Instant::now() + Duration::from_secs(2));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        std::future::poll_fn(|_| {
            let mut cx = std::task::Context::from_waker(&wb);
            while rx.poll_recv(&mut cx).is_ready() {}
            assert!(!tokio::task::coop::has_budget_remaining());
            assert!(timer.poll_due(&mut cx).is_pending());
            Poll::Ready(())
        })
        .await;
        tokio::task::yield_now().await; // a fresh budget: the next turn
        assert!(!poll(&mut timer, &wb), "not due yet");
        let before = b.woken();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.woken(), before + 1, "the deadline wakes the task");
    }
}
