//! The request body of an HTTP/2 stream, the connection's count of body
//! bytes its frames go into (which counts those no stream record took
//! when it drops, [`ConnBodyBytes`]), what a body shares with its
//! stream's exchange ([`BodyShare`]: the count of its bytes for the
//! stream's record, and its cut by `min_request_body_rate`), and where a
//! connection's readers say they took a DATA frame ([`ReadCredit`]: the
//! tiny-DATA budget's give-back), and the growth of a stream's receive
//! window while its reader keeps up ([`RecvBody`]'s `kept_up`, bounded by
//! `http2_max_grown_stream_window` a stream and `http2_grown_windows_budget`
//! for the server: [`ConnBodyBytes::take_growth`]). It lives with the service
//! glue (not in `proto/http2.rs`) because [`Body`](crate::Body) wraps it:
//! the body a service sees must not depend on a protocol module.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use h2::RecvStream;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use crate::conn::config::MAX_WINDOW;
use crate::error::BodyError;
use crate::observe::clock::{self, LazyDeadline};
use crate::observe::human::Timeout;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{gauge, incr, WorkerStats};
use crate::service::body_rate::{BodyRate, MinRate};

/// Where a connection's readers (request bodies, upgraded streams,
/// `service/h2_stream.rs`) report each DATA frame they take out of h2:
/// the connection's tiny-DATA budget (`proto/http2/flood.rs`,
/// `HTTP2_TINY_DATA_BUDGET`) gives a tiny frame back when a handler reads
/// it, as work done, so that it bounds the tiny frames nobody reads, not
/// an honest stream of small messages at the pace its handler takes them.
/// Implemented in `proto/http2.rs` (this layer does not name the budget).
/// `Send + Sync`: a body is read on whichever thread its handler runs.
pub(crate) trait ReadCredit: Send + Sync + std::fmt::Debug {
    /// A reader took a DATA frame of `len` bytes.
    fn data_read(&self, len: usize);
}

/// No budget to give back to (unit tests of the body's counts).
impl ReadCredit for () {
    fn data_read(&self, _: usize) {}
}

/// Counts a connection's request-body bytes, shared by its request
/// bodies, for `request_body_bytes`: the stream records take their share
/// ([`take`](Self::take)), and what none took (bodies kept past their
/// record, or past the connection) is counted when it drops, with the last
/// of the connection and its bodies. So every byte a body took in is
/// counted once, wherever and whenever it was read, at no allocation per
/// stream, as long as the body is dropped at all.
///
/// It used to count the tiny DATA frames handlers read too, and close a
/// connection past a lifetime allowance of 10,000 (plus one per KiB of
/// body), which only cut long honest streams of near-empty messages (a
/// gRPC stream's 10,001st). The tiny-DATA budget at the wire
/// (`proto/http2/flood.rs`, `HTTP2_TINY_DATA_BUDGET`) bounds tiny frames
/// now, and each frame recorded here gives its unit back ([`ReadCredit`]).
///
/// Atomics, not `Cell`s, because [`Body`](crate::Body) is `Send` (frameworks
/// such as axum require it): a handler may read its body on another thread,
/// and two of a connection's bodies may be polled at once.
#[derive(Debug)]
pub(crate) struct ConnBodyBytes {
    bytes: AtomicU64,
    /// Of `bytes`, those the stream records took (written only by the
    /// connection's worker thread, where the records drop).
    reported: AtomicU64,
    /// The connection's worker's counters: where its bodies count the
    /// limits they enforce, and this the bytes no record took.
    stats: Arc<WorkerStats>,
    /// The connection's budget that a frame read gives back to.
    credit: Arc<dyn ReadCredit>,
    /// `min_request_body_rate`, if on, which its bodies are held to
    /// (kept here, once a connection, not in each body: a body is inline
    /// in every request, and in the stream's future).
    min_rate: Option<MinRate>,
    /// The access log is on: a stream's record takes its own body's
    /// count ([`take`](Self::take)).
    own_counts: bool,
    /// What its bodies are held to, from the configuration.
    bounds: BodyBounds,
    /// What the connection's bodies' windows have grown by, together: the
    /// connection's task raises the connection window by as much
    /// (`proto/http2/upload.rs`), as a stream window larger than the
    /// connection's would not be used. 64 bits: 128 streams grown to
    /// 2^31 - 1 each would wrap 32.
    grown: AtomicU64,
    /// What the server's streams' windows have grown by, in all (the
    /// configuration's `http2_grown_windows`, one per server), held to
    /// `bounds.grown_budget` ([`take_growth`](Self::take_growth)).
    server_grown: Arc<AtomicU64>,
    /// How long the connection's window has been full of unread request
    /// bodies, in all: the client could send nothing then, and
    /// `min_request_body_rate` does not charge it ([`FullClock`]).
    full: Mutex<FullClock>,
}

/// What a connection's request bodies are held to, from its configuration:
/// kept once a connection, not in each body (a body is inline in every
/// request and in its stream's future, whose size `proto/http2.rs`
/// guards).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyBounds {
    /// `max_body_bytes`.
    pub(crate) limit: u64,
    /// With `read_timeout` off, `idle_timeout`: how long a reader may wait
    /// for DATA that does not come ([`RecvBody`]'s `stalled`), if its body
    /// is paced.
    pub(crate) stall_after: Option<Duration>,
    /// The window a stream starts with; its body's grows from it while its
    /// reader keeps up (0: it does not).
    pub(crate) stream_window: u32,
    /// `http2_max_grown_stream_window`: the most a stream's window grows
    /// to (0, or at most `stream_window`: it does not grow).
    pub(crate) grown_max: u32,
    /// `http2_grown_windows_budget`: the most the server's streams'
    /// windows grow by together (0: they do not).
    pub(crate) grown_budget: u64,
}

/// A clock that runs while a connection's receive window is full of
/// request bodies that their handlers have not read: set by the
/// connection's task, which sees the window (`proto/http2/upload.rs`),
/// read by the bodies held to `min_request_body_rate`, whose waits are
/// not charged its time (`BodyRate`, Kestrel's rule too: its clock stops
/// while the connection's window is exhausted). Without it, two bodies
/// their handlers held unread (64 KiB each, the stream window, fill the
/// 128 KiB default) made a third stream's client too slow.
#[derive(Debug, Default)]
struct FullClock {
    /// The time it ran, up to `since`.
    total: Duration,
    /// It runs, since then.
    since: Option<Instant>,
}

impl ConnBodyBytes {
    /// The count of a new connection of the worker that counts in
    /// `stats`, whose bodies' reads give back to `credit`, held to
    /// `min_rate`, their records taking their own counts when
    /// `access_log` is on.
    pub(crate) fn new(
        stats: Arc<WorkerStats>,
        credit: Arc<dyn ReadCredit>,
        (min_rate, access_log): (Option<MinRate>, bool),
    ) -> ConnBodyBytes {
        ConnBodyBytes {
            bytes: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            stats,
            credit,
            min_rate,
            own_counts: access_log,
            bounds: BodyBounds {
                limit: u64::MAX,
                stall_after: None,
                stream_window: 0,
                grown_max: 0,
                grown_budget: 0,
            },
            grown: AtomicU64::new(0),
            server_grown: Arc::default(),
            full: Mutex::default(),
        }
    }

    /// Its bodies are held to `bounds`.
    pub(crate) fn bounded(mut self, bounds: BodyBounds) -> ConnBodyBytes {
        self.bounds = bounds;
        self
    }

    /// Its bodies' windows' growth is counted in `server_grown`, the
    /// server's (`Config::http2_grown_windows`), against
    /// `bounds.grown_budget`.
    pub(crate) fn growing_in(mut self, server_grown: Arc<AtomicU64>) -> ConnBodyBytes {
        self.server_grown = server_grown;
        self
    }

    /// What the connection's bodies' windows have grown by, together (no
    /// more than a window can be: the connection's is capped there).
    pub(crate) fn grown(&self) -> u32 {
        let grown = self.grown.load(Acquire).min(u64::from(MAX_WINDOW));
        u32::try_from(grown).unwrap_or(MAX_WINDOW)
    }

    /// Takes `by` bytes of growth for a stream's window from the server's
    /// budget (`http2_grown_windows_budget`), if it has them, counting them
    /// in the connection's growth and its worker's gauge
    /// (`megaconn_http2_grown_windows_bytes`). If not, the refusal is
    /// counted (`limit_hits{limit="http2_grown_windows_budget"}`) and
    /// logged at INFO (one line per 5 s per worker, as the other limits'):
    /// the stream keeps the `window` it has, nothing is refused, and the
    /// operator learns which setting to raise. A line once a process, as
    /// it was, said nothing of a budget spent again later, and nothing
    /// counted it.
    fn take_growth(&self, by: u32, window: u32) -> bool {
        let budget = self.bounds.grown_budget;
        let taken = self
            .server_grown
            .fetch_update(AcqRel, Acquire, |used| {
                used.checked_add(u64::from(by)).filter(|&now| now <= budget)
            })
            .is_ok();
        if taken {
            self.grown.fetch_add(u64::from(by), AcqRel);
            gauge(&self.stats.http2_grown_windows, i64::from(by));
            return true;
        }
        LimitHit::Http2GrownWindowsBudget.count(&self.stats);
        ratelog::log(Flood::Http2GrownWindows, |suppressed| {
            tracing::info!(
                suppressed,
                "HTTP/2 uploads' receive windows have grown by {budget} bytes in all \
                 (http2_grown_windows_budget): an upload whose handler keeps up keeps its \
                 {window}-byte window (slower over long paths) until grown ones are given \
                 back; raise http2_grown_windows_budget (--http2-grown-windows-budget) if \
                 memory allows"
            )
        });
        false
    }

    /// Gives `by` bytes of a stream's window growth back
    /// ([`take_growth`](Self::take_growth)).
    fn give_growth(&self, by: u32) {
        self.server_grown.fetch_sub(u64::from(by), AcqRel);
        self.grown.fetch_sub(u64::from(by), AcqRel);
        gauge(&self.stats.http2_grown_windows, -i64::from(by));
    }

    /// Whether its bodies are held to `min_request_body_rate` (then the
    /// connection's task keeps the [`FullClock`]).
    pub(crate) fn clocks_full_window(&self) -> bool {
        self.min_rate.is_some()
    }

    /// The connection's window became full of unread bodies (`full`), or
    /// not, `now`.
    pub(crate) fn window_full(&self, full: bool, now: Instant) {
        let mut clock = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        match (clock.since, full) {
            (None, true) => clock.since = Some(now),
            (Some(since), false) => {
                clock.total += now.saturating_duration_since(since);
                clock.since = None;
            }
            _ => {}
        }
    }

    /// How long the connection's window has been full, in all, as of `now`.
    fn full_reading(&self, now: Instant) -> Duration {
        let clock = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        clock.total
            + clock
                .since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Whether a stream's body needs a [`BodyShare`]: for the access
    /// log's count, or for a cut by the rate.
    pub(crate) fn needs_share(&self) -> bool {
        self.own_counts || self.min_rate.is_some()
    }

    /// Records a DATA frame of `len` payload bytes that a body's reader
    /// took, and says so to the connection's budget ([`ReadCredit`]).
    pub(crate) fn record(&self, len: usize) {
        // One read-modify-write: bodies of one connection polled on two
        // threads at once would lose counts between a load and a store.
        self.bytes.fetch_add(len as u64, Relaxed);
        self.credit.data_read(len);
    }

    /// The bytes a stream's record counts, as it drops (on the connection's
    /// worker thread, the only one that writes `reported`: a load and a
    /// store): with the access log on, its own body's, in `own` (0 if the
    /// body has not dropped yet: then the guard counts them later); with
    /// it off, whatever arrived since the last record took (only the sum
    /// is counted then).
    pub(crate) fn take(&self, own: Option<&BodyShare>) -> u64 {
        let reported = self.reported.load(Relaxed);
        let (taken, now) = match own.filter(|_| self.own_counts) {
            Some(own) => {
                let n = own.get();
                (n, reported + n)
            }
            None => {
                let bytes = self.bytes.load(Relaxed);
                (bytes - reported, bytes)
            }
        };
        self.reported.store(now, Relaxed);
        taken
    }
}

impl Drop for ConnBodyBytes {
    /// Counts the bytes no stream record took: the last of the connection
    /// and its bodies is gone, so none can come. Runs on whichever thread
    /// dropped the last (a body handed to a task elsewhere may be it),
    /// hence the worker's counter written from any thread.
    fn drop(&mut self) {
        let left = *self.bytes.get_mut() - *self.reported.get_mut();
        self.stats.request_body_bytes(left);
    }
}

/// What an HTTP/2 stream's request body shares with the stream's
/// exchange, made only when one of its two uses is on (one allocation
/// per stream with a body; none with both off):
///
/// - the count of the bytes it took in, for the stream's `RequestRecord`
///   to count as HTTP/1.1's exchange counts the body it reads
///   (`request_bytes`), when the access log is on, whose line needs each
///   request's own count (without the log, the connection's
///   [`ConnBodyBytes`] count serves). The body is `Send` and the handler
///   may read it anywhere, while the record is the stream's: the body
///   counts in a plain field of its own as frames come and stores the sum
///   here once, when it drops (its stream's exchange has then ended with
///   it, unless the handler kept the body past its response: then the
///   record takes 0 and the [`ConnBodyBytes`] counts them when it drops);
/// - its cut by `min_request_body_rate` ([`RateCut`]), while the rate is
///   on.
#[derive(Debug, Default)]
pub(crate) struct BodyShare {
    bytes: AtomicU64,
    /// Where the body tells the exchange it was cut.
    pub(crate) cut: RateCut,
}

impl BodyShare {
    /// The bytes the body took in, once it dropped (0 before).
    pub(crate) fn get(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
}

/// How an HTTP/2 request body held to `min_request_body_rate` tells its
/// stream's exchange (`proto/http2.rs`, `run_stream`) that its client sent
/// too slowly while the handler waited ([`RecvBody::too_slow`]): the
/// exchange then ends the stream as HTTP/1.1's ends its connection, the
/// handler dropped, `408` if no response head went out, else
/// `RST_STREAM(CANCEL)`; the connection serves on. The body sees the
/// handler's waits (it is what the handler polls, in whatever task), the
/// exchange owns the stream's answer: hence this, shared by the two
/// ([`BodyShare`]).
///
/// The count and the line: the body counts the cut
/// (`limit_hits{limit="min_request_body_rate"}`, `timeouts`) when it
/// happens, whoever acts on it; the line, which names the peer, comes from
/// the connection's task, which can ask the socket (the stream's end says
/// so, `StreamEnd::TooSlow`), or from the body when no exchange listens
/// any more (its response went out before: [`leave`](Self::leave)).
#[derive(Debug, Default)]
pub(crate) struct RateCut {
    /// [`LISTENING`], [`CUT`] or [`LEFT`].
    state: AtomicU8,
    /// The exchange's task, woken by the cut (the body may be read in a
    /// task of the handler's own, on another thread).
    exchange: AtomicWaker,
}

/// The exchange runs, and no cut came.
const LISTENING: u8 = 0;
/// The body was cut while the exchange ran: the exchange acts on it.
const CUT: u8 = 1;
/// The exchange ended before any cut: a cut after is only the body's.
const LEFT: u8 = 2;

impl RateCut {
    /// The exchange's look: whether the body was cut; else the exchange's
    /// task is woken when it is.
    pub(crate) fn poll_cut(&self, cx: &mut Context<'_>) -> bool {
        if self.state.load(Acquire) == CUT {
            return true;
        }
        self.exchange.register(cx.waker());
        // Again, after the registration: a cut between the two woke the
        // waker registered before (or none).
        self.state.load(Acquire) == CUT
    }

    /// The exchange ended: a cut after it is no longer its to act on.
    pub(crate) fn leave(&self) {
        let _ = self
            .state
            .compare_exchange(LISTENING, LEFT, AcqRel, Acquire);
    }

    /// The body was cut: whether its exchange listens (and was woken).
    fn cut(&self) -> bool {
        let listening = self
            .state
            .compare_exchange(LISTENING, CUT, AcqRel, Acquire)
            .is_ok();
        if listening {
            self.exchange.wake();
        }
        listening
    }
}

/// The line for an HTTP/2 request body cut by `min_request_body_rate`
/// (`rate`), naming its client's address, `peer`'s answer (asked only for
/// a line that goes out): at INFO, rate-limited with HTTP/1.1's
/// ([`Flood::BodyTooSlow`]), as a client can drip at will and an operator
/// needs its address to block it.
pub(crate) fn too_slow_line(rate: Option<u32>, peer: impl FnOnce() -> Option<SocketAddr>) {
    ratelog::log(Flood::BodyTooSlow, |suppressed| {
        tracing::info!(
            min_request_body_rate = rate,
            suppressed,
            "an HTTP/2 request body from {} came slower than min_request_body_rate \
             (bytes a second) while it was awaited; ending its stream (408 if its \
             response had not begun, else RST_STREAM(CANCEL))",
            ratelog::peer_name(peer())
        )
    });
}

/// The bounds of a body's reader's waits ([`RecvBody::waits`]).
#[derive(Debug, Default)]
struct Waits {
    /// `idle_timeout`'s bound, and `received` when it (re)started
    /// ([`RecvBody::stalled`]).
    stall: Option<(LazyDeadline, u64)>,
    /// The client held to `min_request_body_rate`, or the body's DATA
    /// taken out of h2 once all of it came ([`Arrived`]).
    arrived: Option<Arrived>,
    /// What the stream's window has grown by ([`RecvBody::kept_up`]),
    /// taken from the server's budget and counted in the connection's
    /// `grown`.
    grown: u32,
    /// `received` when it last grew (or 0).
    grown_at: u64,
}

impl Waits {
    /// The client held to `min_request_body_rate`, if it is.
    fn rate(&mut self) -> Option<&mut RateWait> {
        match &mut self.arrived {
            Some(Arrived::Rate(wait)) => Some(wait),
            _ => None,
        }
    }

    /// The frames [`RecvBody::all_came`] took out of h2 and the reader
    /// has not taken yet, last first (none if it took none).
    fn ahead(&mut self) -> Option<&mut Vec<Bytes>> {
        match &mut self.arrived {
            Some(Arrived::AllCame(ahead)) => Some(ahead),
            _ => None,
        }
    }
}

/// What a body's reader keeps of its client's DATA beyond h2: one or the
/// other, never both, so they share a slot of [`Waits`].
#[derive(Debug)]
enum Arrived {
    /// The client held to `min_request_body_rate` while the reader waits
    /// ([`RecvBody::too_slow`]).
    Rate(RateWait),
    /// The DATA of a body that had all come when `read_timeout` passed,
    /// taken out of h2 to know it ([`RecvBody::all_came`]), last frame
    /// first: handed to the reader before h2 is asked again. The reader
    /// never waits on its client again (all of it came), so the rate,
    /// which bounds those waits, is dropped for them: in a field of its
    /// own they made every waiting body's `Waits` 24 bytes larger
    /// (session 53; `waits_are_no_larger_than_before_all_came`).
    AllCame(Vec<Bytes>),
}

/// A body's client held to `min_request_body_rate`, made at its reader's
/// first wait ([`RecvBody::too_slow`]): its credit, and the waker the
/// stream is polled with from then on, which notes when a wait ends.
#[derive(Debug)]
struct RateWait {
    rate: BodyRate,
    arrival: Arc<Arrival>,
    /// `arrival` as a waker, made once (h2 keeps a clone of it only when
    /// it is not the one it holds).
    waker: Waker,
}

impl RateWait {
    /// The first wait of a body that has `received` bytes so far, begun
    /// `now` with the connection's [`FullClock`] reading `off`.
    fn new(min: MinRate, received: u64, (now, off): (Instant, Duration)) -> RateWait {
        let arrival = Arc::new(Arrival::default());
        RateWait {
            rate: BodyRate::new(min.grace, received, min.per_second, now).off_at_start(off),
            waker: Waker::from(arrival.clone()),
            arrival,
        }
    }
}

/// When a reader's wait for DATA ended on its client's side: the first
/// wake h2 gave the stream's poll since it last found nothing (a DATA
/// frame came, or the trailers, the end, a reset), passed on to the
/// reader's waker. A reader does not always poll at once when woken (a
/// handler in a `select!` busy with its other branch, writing its
/// response): the time until it does is its own, not its client's, as
/// HTTP/1.1's exchange, which reads the socket itself, ends the wait when
/// the bytes come (`body_progressed`). Without it, a handler that left
/// its body for 10 s with the DATA there cost its client 10 s of credit.
#[derive(Debug, Default)]
struct Arrival(Mutex<ArrivalState>);

#[derive(Debug, Default)]
struct ArrivalState {
    /// The first wake since the stream's last poll.
    at: Option<Instant>,
    /// The reader's waker, as of its last poll.
    reader: Option<Waker>,
}

impl Arrival {
    /// At a poll of the stream by `reader`: when the wait the last poll
    /// left open ended, if it did (a wake came since).
    fn polled_by(&self, reader: &Waker) -> Option<Instant> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &state.reader {
            Some(w) if w.will_wake(reader) => {}
            _ => state.reader = Some(reader.clone()),
        }
        state.at.take()
    }
}

impl Wake for Arrival {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let reader = {
            let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            // The connection's turn: when its read brought the frame.
            state.at.get_or_insert_with(clock::now);
            state.reader.clone()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

/// [`RecvBody`]'s `remaining` when the client sent no `content-length`
/// (one of `u64::MAX` is more than `max_body_bytes` admits anyway).
const NO_LENGTH: u64 = u64::MAX;

/// A request body arriving in HTTP/2 DATA frames. Each frame's bytes are given
/// back to the flow-control window as the handler takes them, so a handler that
/// does not read stops the client (after one window) instead of making us buffer.
#[derive(Debug)]
pub(crate) struct RecvBody {
    stream: RecvStream,
    data_done: bool,
    /// Bytes still expected when the client sent `content-length`; else
    /// [`NO_LENGTH`] (not an `Option`: 8 bytes less in every request).
    remaining: u64,
    /// Bytes taken in, every DATA frame's, refused or not.
    received: u64,
    /// What it shares with its stream's exchange: where `received` goes
    /// when the body drops, when the access log is on (otherwise the
    /// record takes its share of the connection's count, `conn_bytes`),
    /// and where a cut by the rate is told.
    share: Option<Arc<BodyShare>>,
    /// The connection's count of body bytes (and its worker's counters),
    /// and what its bodies are held to (`max_body_bytes`, the stall's
    /// bound: [`BodyBounds`]).
    conn_bytes: Arc<ConnBodyBytes>,
    /// `read_timeout`, from when the request's head arrived: the whole body
    /// must have arrived by then (as on HTTP/1.1), read or not
    /// ([`all_came`](Self::all_came)).
    deadline: LazyDeadline,
    /// The bounds of the reader's waits, made when it first waits (a body
    /// whose DATA is there when read costs none): boxed, as a body is
    /// inline in every request and in its stream's future.
    waits: Option<Box<Waits>>,
    /// Whether its client's pauses are bounded, by `idle_timeout`
    /// ([`stalled`](Self::stalled)) and `min_request_body_rate`
    /// ([`too_slow`](Self::too_slow)): not a gRPC request's (`proto/http2.rs`
    /// says why), whose body only `read_timeout` bounds, if set.
    paced: bool,
    /// An error was returned: the body ends there (a reader that goes on
    /// must not wait for a client that stalled, or for the rest of an
    /// upload refused as too large).
    failed: bool,
    /// The body went past its limit, and the bytes up to one past it were
    /// handed over: the next poll fails (`body::up_to_one_past`).
    past_limit: bool,
}

impl RecvBody {
    /// A body of `stream` counted in the connection's `conn_bytes` and held
    /// to its bounds ([`BodyBounds`]: `max_body_bytes`, and with
    /// `read_timeout` off, `idle_timeout` between DATA), complete within
    /// `read_timeout` from now, its client held to the connection's
    /// `min_request_body_rate` while the reader waits, that shares the
    /// count of its bytes and its cut with its stream's exchange through
    /// `share`, if given. Not `paced`: no bound on its client's pauses but
    /// `read_timeout` (gRPC).
    pub(crate) fn new(
        stream: RecvStream,
        content_length: Option<u64>,
        read_timeout: Option<Duration>,
        paced: bool,
        conn_bytes: Arc<ConnBodyBytes>,
        share: Option<Arc<BodyShare>>,
    ) -> RecvBody {
        RecvBody {
            stream,
            data_done: false,
            remaining: content_length.unwrap_or(NO_LENGTH),
            received: 0,
            share,
            conn_bytes,
            deadline: LazyDeadline::after(read_timeout),
            waits: None,
            paced,
            failed: false,
            past_limit: false,
        }
    }

    /// How long a reader may wait for DATA that does not come: with
    /// `read_timeout` off, `idle_timeout`, if the body is paced.
    fn stall_after(&self) -> Option<Duration> {
        self.conn_bytes.bounds.stall_after.filter(|_| self.paced)
    }

    /// The most body it takes (`max_body_bytes`).
    fn limit(&self) -> u64 {
        self.conn_bytes.bounds.limit
    }

    /// Whether the reader, waiting now, has waited for DATA `stall_after`
    /// with none coming; else the task is woken when it would have. The
    /// bound is made when the reader first waits (a body whose DATA is
    /// there when read costs none) and nothing is done per frame: when it
    /// passes, bytes taken in since it (re)started restart it. So a client
    /// that sends nothing more is cut one to two bounds after its last
    /// DATA (one, if it never sent any), as a peer that stops reading is
    /// by `write_stall_timeout`; a slow but steady upload is not. Why a
    /// default bound: a handler waiting on a body holds its stream open,
    /// and an open stream keeps the connection from its idle timeout, so
    /// 250 streams a connection whose bodies never come were held for
    /// good (nginx resets such a stream after `client_body_timeout`, 60 s
    /// between two reads). `idle_timeout` is that bound here: the client
    /// is idle on the stream, and its connection would have been closed
    /// after as long with no stream open. Not for gRPC: `proto/http2.rs`
    /// gives a gRPC request's body no such bound (not `paced`), nor
    /// `min_request_body_rate`'s, whose client- or bidi-streaming calls pause as long as their
    /// application has nothing to say (tonic's server bounds no such wait;
    /// behind nginx they were cut, session 50's review); a dead peer is
    /// then found by `http2_keep_alive_interval` or `tcp_keepalive`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(after) = self.stall_after() else {
            return false;
        };
        let received = self.received;
        let waits = self.waits.get_or_insert_with(Box::default);
        let (bound, mark) = waits
            .stall
            .get_or_insert_with(|| (LazyDeadline::after(Some(after)), received));
        bound.poll_stalled(cx, after, || std::mem::replace(mark, received) != received)
    }

    /// Ends the body: the client sent no DATA for `idle_timeout` while the
    /// reader waited ([`stalled`](Self::stalled)).
    fn stall_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        ratelog::log(Flood::BodyStall, |suppressed| {
            tracing::info!(
                idle_timeout = %Timeout(self.stall_after()),
                suppressed,
                "an HTTP/2 request body sent no DATA for idle_timeout; failing its read"
            )
        });
        incr(&self.conn_bytes.stats.timeouts);
        self.fail(BodyError::TimedOut)
    }

    /// Whether the client, its reader waiting now, has spent the waiting
    /// its DATA earned under `min_request_body_rate` ([`BodyRate`], the
    /// rule HTTP/1.1's exchange holds a body to); else the task is woken
    /// when it would have. A wait runs from a poll that found no DATA to
    /// when the client's next frame came ([`Arrival`]), or to the next
    /// poll: the reader polls again when the bound passes (its timer wakes
    /// the reader's task) if it still waits, and is cut then; one that
    /// gave up that wait, keeping the body, is cut only if it waits again
    /// with nothing come, as on HTTP/1.1 (where the exchange wakes the
    /// wait to ask, `BodySender::ask_again`: here the reader's own poll is
    /// the answer). What came before the first wait counts (a client that
    /// sent 64 KiB at once, then paused, is not cut at the grace).
    ///
    /// What is charged is the reader's wait less the time the connection's
    /// window was full of other streams' bodies that their handlers hold
    /// unread (two at 64 KiB each, the stream window, fill the 128 KiB
    /// default; `proto/http2/unread.rs`): the client could not send then
    /// (Kestrel stops its clock then too; [`FullClock`]).
    fn too_slow(&mut self, cx: &mut Context<'_>) -> bool {
        match self.waits.as_deref_mut().and_then(Waits::rate) {
            Some(wait) => {
                let now = clock::now();
                let off = self.conn_bytes.full_reading(now);
                wait.rate.poll_spent_off(now, off, cx)
            }
            None => false,
        }
    }

    /// The reader waits with the whole body so far taken (h2 holds none of
    /// it): it keeps up with its client. Once it has taken a whole window
    /// since the window last grew, the stream's window doubles, up to
    /// `http2_max_grown_stream_window`, the server's budget allowing
    /// (`http2_grown_windows_budget`, [`ConnBodyBytes::take_growth`]), and
    /// the connection's grows by as much (its task sees `grown`). Why: an
    /// upload over a long path moves one window per round trip, 64 KiB by
    /// default, and the window a reader keeps up with holds nothing unread,
    /// so the unread-body bound is kept while the reader reads: it costs
    /// memory only if the reader stops with a grown window in flight, at
    /// most the cap a stream and the budget in all. A reader slower than
    /// its client never waits, and its window never grows (what it would
    /// let in would wait unread); nor does one blocked elsewhere (an echo
    /// whose client does not read the response: the memory audit's
    /// `h2-post`). Not measured against the round trip (hyper's BDP
    /// pings): a client slower than its window gets a larger window than
    /// it needs, unused while its reader reads.
    fn kept_up(&mut self) {
        let bounds = self.conn_bytes.bounds;
        let (base, max) = (bounds.stream_window, bounds.grown_max);
        let received = self.received;
        // Growth off (a cap at or below the start, or no budget): nothing
        // to ask, and no refusal to count.
        if received < u64::from(base) || base >= max || bounds.grown_budget == 0 {
            return;
        }
        let waits = self.waits.get_or_insert_with(Box::default);
        let window = base + waits.grown;
        if received - waits.grown_at < u64::from(window) || window >= max {
            return;
        }
        // A window's worth more is taken before it is asked again, grown
        // or not (the budget may have room by then).
        waits.grown_at = received;
        let by = window.min(max - window);
        if !self.conn_bytes.take_growth(by, window) {
            return;
        }
        if self.stream.flow_control().grow_window(by).is_err() {
            self.conn_bytes.give_growth(by);
            return;
        }
        waits.grown += by;
    }

    /// Gives the stream's window growth back to the server's budget and
    /// the connection (its body is done: nothing more comes to it).
    fn give_back_window(&mut self) {
        let Some(waits) = self.waits.as_deref_mut() else {
            return;
        };
        let grown = std::mem::take(&mut waits.grown);
        if grown > 0 {
            self.conn_bytes.give_growth(grown);
        }
    }

    /// Polls the stream for its next DATA. Held to the rate, from the
    /// first wait on, with the waker that notes when a wait ends
    /// ([`Arrival`]): the stream is polled again with it right away, to
    /// leave it with h2 (a frame come in between is taken then).
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, h2::Error>>> {
        if self.waits.as_deref_mut().and_then(Waits::rate).is_none() {
            let polled = self.stream.poll_data(cx);
            let min = self.conn_bytes.min_rate.filter(|_| self.paced);
            let (Poll::Pending, Some(min)) = (&polled, min) else {
                return polled;
            };
            let received = self.received;
            let now = clock::now();
            let off = self.conn_bytes.full_reading(now);
            let waits = self.waits.get_or_insert_with(Box::default);
            waits.arrived = Some(Arrived::Rate(RateWait::new(min, received, (now, off))));
        }
        let wait = self
            .waits
            .as_deref_mut()
            .and_then(Waits::rate)
            .expect("made above");
        let ended = wait.arrival.polled_by(cx.waker());
        let polled = self.stream.poll_data(&mut Context::from_waker(&wait.waker));
        if let (Poll::Ready(_), Some(at)) = (&polled, ended) {
            // The full window's clock as of now: it may have run since
            // `at`, which only leaves the wait less charged.
            let off = self.conn_bytes.full_reading(clock::now());
            wait.rate.close_wait_off(at, off);
        }
        polled
    }

    /// Ends the body: its client sent slower than `min_request_body_rate`
    /// while the reader waited ([`too_slow`](Self::too_slow)). Counted
    /// here, as HTTP/1.1 counts it, whoever acts on it; the stream's
    /// exchange, if it still runs, ends the stream and has the line
    /// written ([`RateCut`]), else the line is written here (no peer).
    fn rate_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let stats = &self.conn_bytes.stats;
        incr(&stats.timeouts);
        LimitHit::MinRequestBodyRate.count(stats);
        if !self.share.as_ref().is_some_and(|share| share.cut.cut()) {
            let rate = self.conn_bytes.min_rate.map(|m| m.per_second);
            too_slow_line(rate, || None);
        }
        self.fail(BodyError::TimedOut)
    }

    /// Ends the body with `error`.
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.data_done = true;
        self.failed = true;
        Poll::Ready(Some(Err(error)))
    }

    /// Whether the rest of the body has come (its `END_STREAM` received,
    /// trailers or not), though the reader has not taken it: asked when a
    /// frame is taken after `read_timeout` passed, which then no longer
    /// bounds the body, as on HTTP/1.1 (`exchange.rs`'s `body_received`).
    /// `read_timeout` bounds the client's sending, not the handler: one
    /// that worked longer than it before reading a body that came with its
    /// head had its read fail (session 52's review; Go serves it from its
    /// buffer). A body still on its way is cut as before.
    ///
    /// h2 says a stream's `END_STREAM` came only once its frames are all
    /// taken (`RecvStream::is_end_stream`), so they are taken out to know
    /// it (at most the stream's window: what h2 held already) and kept in
    /// the body's [`Waits`] (the allocation a waiting body has anyway),
    /// handed over before h2 is asked again. Only past the deadline: a
    /// body read in time pays nothing for it. h2 is polled with a waker
    /// that does nothing: when it finds the body incomplete (pending, and
    /// keeping that waker), the body fails at once, and no wake is needed.
    #[cold]
    #[inline(never)]
    fn all_came(&mut self) -> bool {
        let mut ahead = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match self.stream.poll_data(&mut cx) {
                Poll::Ready(Some(Ok(data))) => ahead.push(data),
                Poll::Ready(None) => break,
                // On its way, or reset: the frames taken drop with the
                // body, and h2 frees their window with the stream.
                Poll::Pending | Poll::Ready(Some(Err(_))) => return false,
            }
        }
        self.deadline.clear();
        if !ahead.is_empty() {
            ahead.reverse();
            // In the rate's place: no wait on the client is left to bound.
            self.waits.get_or_insert_with(Box::default).arrived = Some(Arrived::AllCame(ahead));
        }
        true
    }

    /// The next frame [`all_came`](Self::all_came) took out of h2, if any.
    fn take_ahead(&mut self) -> Option<Bytes> {
        self.waits.as_deref_mut()?.ahead()?.pop()
    }

    /// Ends the body: `read_timeout` passed.
    fn time_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // The stream's exchange ends when the handler drops the body: h2
        // then resets the stream, as a stall or a trickle must not hold it
        // for good.
        tracing::debug!("HTTP/2 request body not complete within read_timeout");
        incr(&self.conn_bytes.stats.timeouts);
        self.fail(BodyError::TimedOut)
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if std::mem::take(&mut self.past_limit) {
            return self.fail(BodyError::TooLarge {
                limit: self.limit(),
            });
        }
        if !self.data_done {
            // The deadline is looked at (and its timer set up) only when the
            // body makes its reader wait, or when a frame comes after it.
            let polled = match self.take_ahead() {
                Some(data) => Some(Ok(data)),
                None => match self.poll_stream(cx) {
                    Poll::Pending if self.deadline.poll_passed(cx) => return self.time_out(),
                    Poll::Pending if self.stalled(cx) => return self.stall_out(),
                    Poll::Pending if self.too_slow(cx) => return self.rate_out(),
                    Poll::Pending => {
                        self.kept_up();
                        return Poll::Pending;
                    }
                    Poll::Ready(polled) => polled,
                },
            };
            match polled {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    // Counted as it comes, as HTTP/1.1 counts what it
                    // decodes, whether or not a limit refuses it.
                    self.received += data.len() as u64;
                    // Before the deadline's check: the connection's byte
                    // count is what `request_body_bytes` counts (the
                    // records their share, it the rest), and must see
                    // every frame `received` does.
                    self.conn_bytes.record(data.len());
                    let rate = self.waits.as_deref_mut().and_then(Waits::rate);
                    if let (Some(wait), Some(min)) = (rate, self.conn_bytes.min_rate) {
                        // A wait still open (no wake was noted) ends now,
                        // less the full window's time.
                        if wait.rate.is_waiting() {
                            let now = clock::now();
                            let off = self.conn_bytes.full_reading(now);
                            wait.rate.close_wait_off(now, off);
                        }
                        wait.rate.earned(data.len(), min.per_second);
                    }
                    if self.deadline.is_past() && !self.all_came() {
                        return self.time_out();
                    }
                    let limit = self.limit();
                    if self.received > limit {
                        ratelog::log(Flood::BodyTooLarge, |suppressed| {
                            tracing::info!(
                                limit,
                                suppressed,
                                "HTTP/2 request body over max_body_bytes; refusing the rest"
                            )
                        });
                        incr(&self.conn_bytes.stats.protocol_errors);
                        LimitHit::MaxBodyBytes.count(&self.conn_bytes.stats);
                        self.past_limit = true;
                        let past = self.received - limit;
                        let data = crate::service::body::up_to_one_past(data, past);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if self.remaining != NO_LENGTH {
                        self.remaining = self.remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 request body failed");
                    return self.fail(BodyError::Incomplete);
                }
                None => {
                    self.data_done = true;
                    self.deadline.clear();
                    self.give_back_window();
                }
            }
        }
        match std::task::ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(mut trailers)) => {
                if crate::service::has_padded_value(&trailers) {
                    // Malformed (RFC 9113 §8.2.1), as in a request head
                    // (`proto/http2.rs`): counted as HTTP/1.1 counts a
                    // malformed body; the handler's read fails and the
                    // stream is reset when it drops the body.
                    ratelog::log(Flood::MalformedBody, |suppressed| {
                        tracing::info!(
                            suppressed,
                            "malformed HTTP/2 request trailers (a value with leading or trailing whitespace); failing the body"
                        )
                    });
                    incr(&self.conn_bytes.stats.protocol_errors);
                    LimitHit::MalformedRequest.count(&self.conn_bytes.stats);
                    return self.fail(BodyError::Malformed("whitespace around a trailer value"));
                }
                // As HTTP/1.1 decodes them: no framing, routing or
                // authentication field (RFC 9110 §6.5.1).
                crate::service::drop_not_trailers(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 request trailers failed");
                if e.is_library() && e.reason() == Some(h2::Reason::PROTOCOL_ERROR) {
                    // h2 reset the stream over a malformed trailer block (a
                    // pseudo-header, patches/h2; a body shorter than its
                    // content-length): counted as HTTP/1.1 counts one.
                    incr(&self.conn_bytes.stats.protocol_errors);
                    LimitHit::MalformedRequest.count(&self.conn_bytes.stats);
                }
                Poll::Ready(Some(Err(BodyError::Incomplete)))
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        // Frames taken out of h2 ahead of the reader are not the end.
        self.stream.is_end_stream()
            && !matches!(
                self.waits.as_deref().and_then(|w| w.arrived.as_ref()),
                Some(Arrived::AllCame(ahead)) if !ahead.is_empty()
            )
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.remaining {
            NO_LENGTH => SizeHint::default(),
            n => SizeHint::with_exact(n),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        self.give_back_window();
        if let Some(share) = &self.share {
            share.bytes.store(self.received, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting body's [`Waits`] is no larger than before
    /// [`RecvBody::all_came`] kept its frames: they share the rate's slot
    /// ([`Arrived`]). In a field of their own (session 53) they made it
    /// 176 bytes, from 152, on x86_64 (a `Vec`'s 24; glibc's chunk for
    /// the box 192 bytes from 160): fails so ("176 > 152").
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn waits_are_no_larger_than_before_all_came() {
        const WAITS_BEFORE_53: usize = 152;
        let size = std::mem::size_of::<Waits>();
        assert!(size <= WAITS_BEFORE_53, "{size} > {WAITS_BEFORE_53}");
    }

    /// A cut wakes the exchange that looked and is its to act on; after the
    /// exchange left, a cut is the body's alone (it writes the line).
    #[test]
    fn a_cut_is_the_exchanges_while_it_listens() {
        struct Woken(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Relaxed);
            }
        }
        let woken = Arc::new(Woken(Default::default()));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let cut = RateCut::default();
        assert!(!cut.poll_cut(&mut cx));
        assert!(cut.cut(), "the exchange listens");
        assert!(woken.0.load(Relaxed), "and was woken");
        assert!(cut.poll_cut(&mut cx));
        let left = RateCut::default();
        left.leave();
        assert!(!left.cut(), "no exchange listens");
        assert!(!left.poll_cut(&mut cx));
    }

    /// Bodies of one connection read on two threads at once (a handler may
    /// hand its body anywhere) count every byte: with a load and a store,
    /// frames counted between another thread's two were lost (135,000 to
    /// 383,000 of these 2 M, in each of three runs, when this counted tiny
    /// frames too).
    #[test]
    fn frames_read_on_two_threads_at_once_are_all_counted() {
        const EACH: u64 = 1_000_000;
        let guard = ConnBodyBytes::new(Arc::default(), Arc::new(()), (None, false));
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..EACH {
                        guard.record(1);
                    }
                });
            }
        });
        assert_eq!(guard.bytes.load(Relaxed), 2 * EACH);
    }
}
