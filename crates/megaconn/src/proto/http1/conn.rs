//! A connection's life: wait for bytes holding no buffers, read a head, run the
//! exchange, and again — until a close or an upgrade.
//!
//! Timeouts follow Go's `http.Server`: `read_header_timeout` runs from accept (for
//! the first request) or from the first byte of the next one, `idle_timeout`
//! bounds the wait between requests. Like Go we wait for the first byte before
//! starting the header clock, so a keep-alive connection is charged the idle
//! timeout, not the header timeout, while it is quiet.
//!
//! Graceful shutdown closes a connection idle between requests (after
//! `conn::shutdown::IDLE_GRACE`), and one still waiting for a request head,
//! its first (nothing sent yet, or part of it) or a later one begun, at its
//! cut: `conn::shutdown::NEW_CONNECTION_GRACE` (5 s, Go's) after its accept
//! (the drain's start at the earliest) or into the drain
//! ([`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut)),
//! as `closed{reason="shutdown_before_request"}`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::{Method, Request, StatusCode};
use tokio::time::{Instant, Sleep};

use super::decode::Decoder;
use super::exchange::{Continue, Exchange, ExchangeSetup, Rare, WRITES, WRITE_HIGH_WATER};
use super::head::{self, BodyFraming};
use super::{encode, CloseReason, Outcome};
use crate::conn::blocks::CachedBox;
use crate::conn::context::WorkerContext;
use crate::conn::io::{read_more, ConnIo, WriteBound};
use crate::conn::transport::{Parkable, Transport};
use crate::conn::ConnInfo;
use crate::observe::human::Timeout;
use crate::observe::lifecycle::{self, ConnectionState};
use crate::observe::metrics::{AccessLine, MethodLabel, RequestRecord};
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, incr_own, IdleOwn};
use crate::proto::{self, HandOver};
use crate::service::body::Body;
use crate::service::grpc::Grpc;
use crate::service::upgrade::{self, NativeUpgrade, UpgradeSender};
use crate::service::HttpService;

/// Serves HTTP/1.1 on `io` until the connection closes, goes cold (park it),
/// or changes protocol (h2c, upgrade); the dispatcher acts on which.
///
/// Takes the service by value and gives it back, so the caller need not
/// keep it (and its own copy of the arguments) across the whole connection.
///
/// `retire_at` (`max_connection_age`): as drawn at the accept, for a
/// connection just accepted; `None` for one woken from the parking lot,
/// which noted it at the accept (to the second, rounded up), as this may be
/// a wake-up after many requests; `None` too with the option off.
///
/// An `async fn`, so its `ConnIo` is built in place in the task on the first
/// poll. (As a plain function building the `ConnIo` before an async block,
/// the future was 64 bytes smaller, as an `async fn` keeps its arguments
/// beside the connection they moved into; but the `ConnIo` and the block
/// were built on the stack and copied into place at every wake-up from the
/// parking lot: ~200 more instructions per heartbeat, +2.4 %,
/// `bench/park-instructions.sh`. A parked connection has no future at all,
/// so its size counts only while the connection is awake.)
pub(crate) async fn serve_connection<T, S>(
    io: T,
    mut service: S,
    ctx: Rc<WorkerContext>,
    info: Option<Box<ConnInfo>>,
    retire_at: Option<Instant>,
) -> (proto::Ended<T>, S)
where
    T: Parkable,
    S: HttpService,
{
    // `ctx` kept too (a reference count more): the loop borrows the
    // worker's context from it (its exchanges' blocks, its idle gauge)
    // beside the connection, which it borrows mutably.
    let mut conn = ConnIo::new(io, ctx.clone());
    conn.retire_at = retire_at.or_else(|| {
        let fd = conn.io.lot_fd()?;
        conn.ctx.park.as_ref()?.retire_at(fd)
    });
    conn.info = info.filter(|_| conn.ctx.config.connect_info);
    let ended = match run(&mut conn, &mut service, &ctx).await {
        Ended::Close(reason) => {
            tracing::trace!(%reason, "connection closed");
            Box::pin(conn.close_unless_unheard(reason)).await;
            proto::Ended::Close(reason)
        }
        Ended::Upgrade(tx, native) => {
            let read_ahead = conn.buffers.take_read_ahead();
            proto::Ended::HandOver(match native {
                // The request's `OnUpgrade` (tx dropped) resolves to an error.
                Some(to) => HandOver::Native {
                    io: conn.io,
                    read_ahead,
                    to,
                },
                None => HandOver::Upgrade {
                    io: conn.io,
                    read_ahead,
                    tx,
                },
            })
        }
        Ended::H2c(since) => {
            let read_ahead = conn.buffers.take_read_ahead();
            proto::Ended::HandOver(HandOver::H2c {
                io: conn.io,
                read_ahead,
                info: conn.info,
                since,
            })
        }
        Ended::Park(deadline) => {
            let at_once = conn.io.reparks_a_wake();
            let watched = conn.io.still_watched();
            proto::Ended::Park {
                io: conn.io,
                deadline,
                at_once,
                watched,
            }
        }
    };
    (ended, service)
}

enum Ended {
    Close(CloseReason),
    Upgrade(UpgradeSender, Option<NativeUpgrade>),
    /// Idle past `park_idle_after`: park until readable or the idle deadline.
    Park(Option<Instant>),
    /// The client spoke HTTP/2 with prior knowledge: hand over to HTTP/2,
    /// with when its first request began to be awaited (`HandOver::H2c`).
    H2c(Option<Instant>),
}

/// Said where the loop takes back what it lends an exchange: it holds the
/// connection and the service at every step but [`Step::Exchange`].
const LENT: &str = "the HTTP/1.1 loop lends its connection only to a running exchange";

/// What an exchange gives back ([`exchange`]): how it ended, and the
/// connection and the service it was lent. Given back by the exchange
/// itself: the loop ([`Run`]) holds them between requests, and a future it
/// keeps cannot borrow them from it while it holds them. (Session 58 gave
/// them back through an `async fn` wrapped around the exchange: a level of
/// state machine more, set up and polled every request.)
type Lent<'a, T, S> = (Outcome, &'a mut ConnIo<T>, &'a mut S);

/// The loop of [`serve_connection`] on `conn`: wait for bytes holding no
/// buffer, find the head, run the exchange, and again, until the
/// connection closes, goes cold (park it) or changes protocol. `ctx`:
/// `conn`'s worker's (its exchanges' blocks, its idle gauge). Inlined
/// (as is [`run_with`]), so that the loop is built where it is awaited.
#[inline(always)]
fn run<'a, T, S>(
    conn: &'a mut ConnIo<T>,
    service: &'a mut S,
    ctx: &'a WorkerContext,
) -> impl Future<Output = Ended> + 'a
where
    T: Parkable,
    S: HttpService,
{
    run_with(conn, service, ctx, exchange::<T, S>)
}

/// [`run`], its exchanges made by `make` (a function item: the type of
/// the future it makes, `X`, is named by it, where an `async fn`'s cannot
/// be written).
#[inline(always)]
fn run_with<'a, T, S, M, X>(
    conn: &'a mut ConnIo<T>,
    service: &'a mut S,
    ctx: &'a WorkerContext,
    make: M,
) -> Run<'a, T, S, M, X>
where
    M: Fn(&'a mut ConnIo<T>, &'a mut S, HeadEnd, bool) -> X,
{
    Run {
        hot: Hot {
            step: Step::Top,
            first: true,
            polled: false,
            timer_waker: false,
            phase: Phase::New,
            parks: false,
            kept: false,
            conn: Some(conn),
            service: Some(service),
            ctx,
            exchange: None,
            now: None,
            deadline: None,
            timer_at: None,
            idle: None,
            bound: None,
        },
        cold: Cold {
            since: Some(crate::observe::clock::now()),
            clock: HeaderClock::Off,
            head_deadline: None,
            searched: 0,
            upgrade: None,
        },
        make,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The keep-alive loop ([`run`]): a `Future` written out, its hot
    /// fields first and together.
    ///
    /// It was three nested `async fn`s (the loop, its wait for bytes, the
    /// wait's `poll_fn`), each with its own state and its own copy of what
    /// it was handed, the 120-byte timer between them: a keep-alive
    /// request read and wrote ~9 cache lines of the connection's future,
    /// spread over 540 bytes, each a miss at 512 connections (callgrind's
    /// cache model, `bench/CPU-PER-REQUEST.md`, session 57). Here what a
    /// request touches is in [`Hot`], first (112 bytes: two lines, or
    /// three where it straddles); what a first request, a head that did
    /// not come whole and an upgrade use is in [`Cold`]; the timer is
    /// last, and its deadline is kept in `Hot`, so that the usual wait
    /// does not read it ([`poll_timer`]).
    #[repr(C)]
    struct Run<'a, T, S, M, X> {
        hot: Hot<'a, T, S, X>,
        cold: Cold,
        // The exchange's maker: a function item, no bytes.
        make: M,
        // The connection's one timer, moved in place from deadline to
        // deadline (moving it later is an atomic store, not a new
        // registration; registered afresh only when it would otherwise
        // fire early, `aim_ahead`), and polled only when the connection
        // would otherwise block. Its deadline is `Hot::timer_at`.
        #[pin]
        timer: Option<Sleep>,
    }
}

/// What a keep-alive request reads and writes of the loop ([`Run`]), in
/// one place. The settings are read where used, not kept: every field
/// here is carried by every waiting connection.
#[repr(C)]
struct Hot<'a, T, S, X> {
    step: Step,
    /// No request was served yet: the wait is for the first, within its
    /// header deadline (and a drain's cut).
    first: bool,
    /// The wait was polled before: a later poll comes from a wake, and
    /// reads at once (see [`Hot::poll_wait`]).
    polled: bool,
    /// The timer holds the waker the shutdown slot holds: a wait then
    /// reads its state instead of polling it (see [`poll_timer`]).
    timer_waker: bool,
    phase: Phase,
    /// The wait's deadline is `park_idle_after`'s: at it the connection
    /// parks, rather than closing.
    parks: bool,
    /// The wait kept the timer of an earlier one, due after its clock
    /// reading (`aim_ahead`): its first poll need not look at it.
    kept: bool,
    /// Lent to the exchange while it runs (`None` then), which gives them
    /// back ([`Lent`]).
    conn: Option<&'a mut ConnIo<T>>,
    service: Option<&'a mut S>,
    ctx: &'a WorkerContext,
    /// The running exchange, in one of the worker's blocks: the request
    /// and the whole exchange live there only while it runs, so a waiting
    /// connection does not carry their size, and the block is cached (no
    /// malloc and free a request), the future built in it, not copied
    /// there. The head is parsed in there too: parsed here, it was copied
    /// whole four more times on its way into the request (−146
    /// instructions a request, callgrind).
    exchange: Option<CachedBox<'a, X>>,
    /// The clock, read as the wait began, in the same poll of the task as
    /// its first poll; `None` with neither `idle_timeout` nor
    /// `park_idle_after` set.
    now: Option<Instant>,
    /// The wait's deadline.
    deadline: Option<Instant>,
    /// The timer's deadline (`None`: no timer), kept beside the rest:
    /// reading it from the timer cost a miss a request at 512
    /// connections (`aim_ahead`'s, session 57).
    timer_at: Option<Instant>,
    /// The connection's place in the idle gauge while it waits.
    idle: Option<IdleOwn<'a>>,
    /// The bound of a flush that has to wait ([`WRITES`]), made only then.
    bound: Option<Box<WriteBound>>,
}

/// What the loop ([`Run`]) keeps for a first request, a head that did not
/// come whole, and an upgrade: not read by a keep-alive request.
struct Cold {
    /// When the first request began to be awaited (the accept, or the wake
    /// from the lot); `None` once one was served. The first head's
    /// deadline runs from it (`read_header_timeout`, after a TLS handshake
    /// as Go's), and so does a drain's grace for it
    /// (`conn::shutdown::NEW_CONNECTION_GRACE`), but from the accept over
    /// TLS (`head_cut`).
    since: Option<Instant>,
    /// A head not whole at once: its clock ...
    clock: HeaderClock,
    /// ... its deadline, once known ...
    head_deadline: Option<Instant>,
    /// ... and how far its end was looked for ([`ConnIo::whole_head`]).
    searched: usize,
    /// An upgrade's, while its `101` is written.
    upgrade: Option<(UpgradeSender, Option<NativeUpgrade>)>,
}

/// Where the loop ([`Run`]) is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The top: wait when the read buffer is empty, else find the head.
    Top,
    /// Writing the answers buffered, before the wait.
    Flush,
    /// Waiting for the next request's first bytes ([`Hot::poll_wait`]).
    Wait,
    /// Bytes came (or were there): find the head.
    Head,
    /// Reading the rest of a head that did not come whole
    /// ([`Hot::poll_read_head`]).
    ReadHead,
    /// The exchange runs.
    Exchange,
    /// Writing answers past the exchange's high-water mark.
    FlushHigh,
    /// Writing the `101` before the hand-over.
    FlushUpgrade,
    /// Ended.
    Done,
}

impl<'a, T, S, M, X> Future for Run<'a, T, S, M, X>
where
    T: Parkable,
    S: HttpService,
    M: Fn(&'a mut ConnIo<T>, &'a mut S, HeadEnd, bool) -> X,
    X: Future<Output = Lent<'a, T, S>>,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.project();
        let (hot, cold, make, mut timer) = (this.hot, this.cold, this.make, this.timer);
        let ctx = hot.ctx;
        // The step is a local while the poll runs, stored back only where
        // it returns: each step then goes on to the next one's code
        // directly, where one read back from the loop's state was
        // dispatched on afresh at every step (a keep-alive request goes
        // through five in one poll: the wait, the head, the exchange, the
        // top and the next wait).
        let mut step = hot.step;
        let ended = loop {
            match step {
                // The read buffer is empty here once a flush waited:
                // nothing reads while it does.
                Step::Top | Step::Flush => {
                    let conn = hot.conn.as_deref_mut().expect(LENT);
                    if conn.buffers.rbuf_len() != 0 {
                        step = Step::Head;
                        continue;
                    }
                    // Polled again after it waited, even if the buffer
                    // were empty: its bound goes with its end.
                    if conn.wbuf_len() != 0 || step == Step::Flush {
                        match conn.poll_flush_bounded(cx, &mut hot.bound, &WRITES) {
                            Poll::Pending => {
                                hot.step = Step::Flush;
                                return Poll::Pending;
                            }
                            Poll::Ready(Err(reason)) => break Ended::Close(reason),
                            Poll::Ready(Ok(())) => {}
                        }
                    }
                    if let Some(ended) = hot.start_wait(cold.since, timer.as_mut()) {
                        break ended;
                    }
                    step = Step::Wait;
                }
                Step::Wait => {
                    let waited = match hot.poll_wait(cx, timer.as_mut()) {
                        Poll::Ready(waited) => waited,
                        Poll::Pending => {
                            hot.step = Step::Wait;
                            return Poll::Pending;
                        }
                    };
                    // Left when the wait ends (or when the loop is dropped).
                    hot.idle = None;
                    lifecycle::set_state(ConnectionState::ReadingHead);
                    if let Waited::Bytes = waited {
                        step = Step::Head;
                        continue;
                    }
                    match hot.waited(waited, cold.since) {
                        Some(ended) => break ended,
                        // A first request's wait heard the drain begin:
                        // waited for again, until its cut.
                        None => step = Step::Top,
                    }
                }
                // A head already whole in the buffer (the usual case: it came
                // in one read) is found here; only one that is not is read on
                // (`Step::ReadHead`), where its future (set up, polled,
                // dropped) took ~60 user-space instructions a request for a
                // head it found at once (callgrind, session 42).
                Step::Head => {
                    let conn = hot.conn.as_deref_mut().expect(LENT);
                    let mut searched = 0;
                    if let Some(end) = conn.whole_head(&mut searched) {
                        // Whole at once, behind an answer still buffered (no
                        // wait, no flush since it: both empty the write
                        // buffer): pipelined, it was here when the request
                        // before it ended, and is timed from that end, a
                        // clock read fewer (`Stopwatch::queued`).
                        let queued = !hot.first && conn.wbuf_len() != 0;
                        hot.start_exchange(make, end, queued);
                        step = Step::Exchange;
                        continue;
                    }
                    start_read_head(cold, ctx, searched);
                    step = Step::ReadHead;
                }
                Step::ReadHead => {
                    let read = match hot.poll_read_head(cold, cx, timer.as_mut()) {
                        Poll::Ready(read) => read,
                        Poll::Pending => {
                            hot.step = Step::ReadHead;
                            return Poll::Pending;
                        }
                    };
                    // The read's write bound ends with it.
                    hot.bound = None;
                    match read {
                        HeadRead::Whole(end) => {
                            hot.start_exchange(make, end, false);
                            step = Step::Exchange;
                        }
                        read => break hot.head_unread(read),
                    }
                }
                Step::Exchange => {
                    let exchange = hot.exchange.as_mut().expect("an exchange runs");
                    let (outcome, conn, service) = match Pin::new(exchange).poll(cx) {
                        Poll::Ready(lent) => lent,
                        Poll::Pending => {
                            hot.step = Step::Exchange;
                            return Poll::Pending;
                        }
                    };
                    // The block goes back before the outcome is acted on.
                    drop(hot.exchange.take());
                    hot.service = Some(service);
                    let conn: &mut ConnIo<T> = hot.conn.insert(conn);
                    match outcome {
                        // The answers to pipelined requests wait in the write
                        // buffer, to go out together, while their requests
                        // are read from the read buffer (the flush before a
                        // wait empties it). Past the exchange's high-water
                        // mark they are written, bounded as any response
                        // ([`WRITES`]), before the next request is read: an
                        // answer without a body (HEAD, 204, 304) never meets
                        // that mark in the exchange, so a client that
                        // pipelined such requests without reading grew the
                        // buffer without limit, and with writes ending
                        // mid-request it never met the flush before a wait
                        // or its bound either (+65 MB in 14 s from two
                        // clients).
                        Outcome::KeepAlive if conn.wbuf_len() >= WRITE_HIGH_WATER => {
                            step = Step::FlushHigh;
                        }
                        Outcome::KeepAlive => {
                            next_request(hot, cold);
                            step = Step::Top;
                        }
                        Outcome::Upgrade(tx, native) if conn.wbuf_len() != 0 => {
                            cold.upgrade = Some((tx, native));
                            step = Step::FlushUpgrade;
                        }
                        outcome => break hot.exchange_ended(outcome, cold.since),
                    }
                }
                Step::FlushHigh | Step::FlushUpgrade => {
                    let conn = hot.conn.as_deref_mut().expect(LENT);
                    match conn.poll_flush_bounded(cx, &mut hot.bound, &WRITES) {
                        Poll::Pending => {
                            hot.step = step;
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(reason)) => break Ended::Close(reason),
                        Poll::Ready(Ok(())) => {}
                    }
                    if step == Step::FlushHigh {
                        next_request(hot, cold);
                        step = Step::Top;
                    } else {
                        let (tx, native) =
                            cold.upgrade.take().expect("an upgrade waits for its 101");
                        break Ended::Upgrade(tx, native);
                    }
                }
                Step::Done => panic!("the HTTP/1.1 loop was polled after it ended"),
            }
        };
        hot.step = Step::Done;
        Poll::Ready(ended)
    }
}

/// A request was served: the next one is not the first (its header clock
/// starts with its first bytes; it is read only if its head does not come
/// whole).
#[inline]
fn next_request<T, S, X>(hot: &mut Hot<'_, T, S, X>, cold: &mut Cold) {
    if hot.first {
        hot.first = false;
        cold.since = None;
    }
}

/// A first request's wait: its deadline, within its header deadline and,
/// during a drain, until its cut (`LocalShutdown::head_cut`: recomputed
/// where needed, not kept across the wait, where it would grow every
/// connection's future), and its phase. `since`: when it began to be
/// awaited ([`Cold::since`]). Out of line: once a connection.
#[inline(never)]
fn first_wait<T: Parkable>(conn: &ConnIo<T>, since: Option<Instant>) -> (Option<Instant>, Phase) {
    let deadline = earliest(header_deadline(conn, since), head_cut(conn, since));
    let phase = match conn.ctx.shutdown.is_started() {
        true => Phase::NewInDrain,
        false => Phase::New,
    };
    (deadline, phase)
}

/// Readies the read of a head that did not come whole ([`Step::ReadHead`]):
/// its clock and deadline, and how far its end was looked for
/// (`searched`). Out of line, as the read itself: a keep-alive request's
/// head comes whole.
#[inline(never)]
fn start_read_head(cold: &mut Cold, ctx: &WorkerContext, searched: usize) {
    let read_header_timeout = ctx.config.read_header_timeout;
    (cold.clock, cold.head_deadline) = match (cold.since, read_header_timeout) {
        (Some(since), _) => (
            HeaderClock::First(since),
            later(Some(since), read_header_timeout),
        ),
        (None, Some(after)) => (HeaderClock::After(after), None),
        (None, None) => (HeaderClock::Off, None),
    };
    cold.searched = searched;
}

impl<'a, T, S, X> Hot<'a, T, S, X>
where
    T: Parkable,
    S: HttpService,
{
    /// Starts the exchange of the request whose head ends at `end`, made
    /// by `make` in one of the worker's blocks and lent the connection and
    /// the service.
    #[inline(always)]
    fn start_exchange<M>(&mut self, make: &M, end: HeadEnd, queued: bool)
    where
        M: Fn(&'a mut ConnIo<T>, &'a mut S, HeadEnd, bool) -> X,
        X: Future,
    {
        let (conn, service) = (
            self.conn.take().expect(LENT),
            self.service.take().expect(LENT),
        );
        let ctx: &'a WorkerContext = self.ctx;
        let exchange = ctx.blocks.pin_with(|| make(conn, service, end, queued));
        // The slot is empty (the loop takes each exchange out as it ends):
        // an assignment would drop what it held all the same, a call of the
        // exchange's drop glue to find nothing (15 instructions a request,
        // callgrind). Forgotten, an exchange left there would only leak.
        let empty = self.exchange.replace(exchange);
        debug_assert!(empty.is_none(), "one exchange at a time");
        #[allow(clippy::mem_forget)]
        std::mem::forget(empty);
    }

    /// Readies the wait for the next request's first bytes (the answers
    /// are out, the read buffer empty): gives the buffers back, and sets
    /// the wait's deadline and phase (`since`: when the first request
    /// began to be awaited, [`Cold::since`]). `Some`: the loop ends
    /// instead (a woken cold connection goes back to the lot).
    ///
    /// Inlined (its one caller is the loop's poll): out of line, as session
    /// 58 had it, it took 181 instructions a request, some 70 more than the
    /// same work inline in the `async fn` loop before it.
    #[inline(always)]
    fn start_wait(
        &mut self,
        since: Option<Instant>,
        timer: Pin<&mut Option<Sleep>>,
    ) -> Option<Ended> {
        let ctx = self.ctx;
        let conn = self.conn.as_deref_mut().expect(LENT);
        conn.buffers.release();
        // One clock read for both deadlines.
        let (idle_timeout, park_idle_after) = (ctx.config.idle_timeout, ctx.config.park_idle_after);
        let now =
            (idle_timeout.is_some() || park_idle_after.is_some()).then(crate::observe::clock::now);
        let first = self.first;
        // A woken cold connection that served its request without waiting
        // goes straight back to the lot: waiting as a task first would cost
        // a registration and a timer for what is, most likely, a heartbeat.
        if !first && conn.io.repark_when_idle() && ctx.park.is_some() {
            return Some(Ended::Park(later(now, idle_timeout)));
        }
        // A cold connection is parked rather than kept as a waiting task,
        // when `park_idle_after` comes before the idle timeout. (Compared
        // as durations from the same `now`: the idle deadline is made
        // only where it is used, an `Instant` addition fewer per request.)
        let parks = T::PARKABLE
            && !first
            && ctx.park.is_some()
            && park_idle_after.is_some_and(|p| idle_timeout.is_none_or(|i| p < i));
        let span = if parks { park_idle_after } else { idle_timeout };
        // A first request is waited for within its header deadline and,
        // during a drain, until its cut (`first_wait`).
        let (deadline, phase) = if first {
            first_wait(conn, since)
        } else {
            (later(now, span), Phase::Idle)
        };
        // The timer, left at an earlier wait's deadline, is moved now if
        // it would come due within half of this wait (see `aim_ahead`).
        self.kept = match (first, now, span) {
            (false, Some(now), Some(span)) => aim_ahead(timer, &mut self.timer_at, now + span / 2),
            _ => false,
        };
        (self.now, self.deadline, self.phase, self.parks) = (now, deadline, phase, parks);
        self.polled = false;
        self.idle = Some(IdleOwn::enter(&ctx.stats.connections_idle));
        // Idle only between requests: a fresh connection is reading its
        // first head from its accept (it was listed `idle` before its first
        // byte, where the states' diagram and Go say new).
        lifecycle::set_state(match phase {
            Phase::Idle => ConnectionState::Idle,
            Phase::New | Phase::NewInDrain => ConnectionState::ReadingHead,
        });
        None
    }

    /// How a wait that brought no bytes ends the loop (`None`: it is made
    /// again). `since`: when the first request began to be awaited
    /// ([`Cold::since`]). Out of line: a keep-alive request's wait brings
    /// bytes.
    #[inline(never)]
    fn waited(&mut self, waited: Waited, since: Option<Instant>) -> Option<Ended> {
        let ctx = self.ctx;
        let conn = self.conn.as_deref_mut().expect(LENT);
        let first = self.first;
        Some(match waited {
            Waited::Bytes => return None,
            Waited::Eof => Ended::Close(CloseReason::ClientClosed),
            Waited::TimedOut if self.parks => Ended::Park(later(self.now, ctx.config.idle_timeout)),
            // The drain's cut, not the header deadline: closed as the
            // drain's, not counted a timeout.
            Waited::TimedOut if first && cut_passed(conn, since) => {
                Ended::Close(closed_before_request(conn))
            }
            Waited::TimedOut => {
                incr(&ctx.stats.timeouts);
                Ended::Close(if first {
                    header_timed_out(conn)
                } else {
                    CloseReason::IdleTimeout
                })
            }
            // A first request's wait heard the drain begin: waited for
            // again, until its cut.
            Waited::Shutdown if first => return None,
            Waited::Shutdown => Ended::Close(CloseReason::Shutdown),
            Waited::ParkNow => Ended::Park(later(self.now, ctx.config.idle_timeout)),
            // A reset (or a broken pipe) while nothing of a request has
            // come is the client leaving. A reset midway through a request
            // stays an I/O error (`HeadRead::Error`, `head_unread`).
            Waited::Error(e) => Ended::Close(CloseReason::io_between(&e, true)),
        })
    }

    /// How a head that was read on but did not come whole ends the loop
    /// (`read`: anything but [`HeadRead::Whole`]).
    #[inline(never)]
    fn head_unread(&mut self, read: HeadRead) -> Ended {
        let ctx = self.ctx;
        let conn = self.conn.as_deref_mut().expect(LENT);
        Ended::Close(match read {
            HeadRead::Whole(_) | HeadRead::Closed => CloseReason::ClientClosed,
            HeadRead::NoRequest => closed_before_request(conn),
            HeadRead::TimedOut => {
                incr(&ctx.stats.timeouts);
                if conn.buffers.rbuf_len() > 0 {
                    answer_unserved(
                        conn,
                        StatusCode::REQUEST_TIMEOUT,
                        "the request head was not received within read_header_timeout",
                    );
                }
                header_timed_out(conn)
            }
            HeadRead::Error(e) => CloseReason::io(&e),
            HeadRead::Unwritten(reason) => reason,
        })
    }

    /// How an exchange that leaves no request to read next ends the loop:
    /// a close, a refused head (or HTTP/2's preface), an upgrade with
    /// nothing left to write (`outcome`: not [`Outcome::KeepAlive`], which
    /// the loop acts on itself, nor an upgrade behind buffered answers).
    /// `since`: when the first request began to be awaited. Out of line: a
    /// keep-alive request's exchange keeps the connection.
    #[inline(never)]
    fn exchange_ended(&mut self, outcome: Outcome, since: Option<Instant>) -> Ended {
        let ctx = self.ctx;
        let conn = self.conn.as_deref_mut().expect(LENT);
        match outcome {
            Outcome::KeepAlive => unreachable!("the loop reads a kept connection's next request"),
            Outcome::Close(reason) => Ended::Close(reason),
            // HTTP/2 with prior knowledge (h2c): its preface reads as a
            // request line of version 2.0. h2.rs takes the connection over.
            // Only in cleartext: over TLS, HTTP/2 is what ALPN chose (RFC
            // 9113 §3.3), and here it chose http/1.1 or nothing, so an
            // operator who leaves `h2` out of `TlsConfig::alpn_protocols`
            // serves none.
            Outcome::Rejected(_)
                if self.first
                    && !T::SECURE
                    && ctx.config.http2.prior_knowledge
                    && proto::is_h2_preface(conn.rbuf_and_io().0) =>
            {
                // Counted from where `head_cut` counts the first head's.
                Ended::H2c(since.map(|s| conn.io.accepted_at().unwrap_or(s)))
            }
            Outcome::Rejected(rejection) => {
                incr(&ctx.stats.protocol_errors);
                rejection.limit().count(&ctx.stats);
                log_refused(conn, rejection);
                answer_unserved(conn, rejection.status, rejection.reason);
                Ended::Close(CloseReason::status(rejection.status))
            }
            // Nothing buffered: handed over at once, without the stream's
            // own flush (as an empty flush was).
            Outcome::Upgrade(tx, native) => Ended::Upgrade(tx, native),
        }
    }

    /// Waits for the first bytes of the next request without holding a buffer
    /// (on transports that report readiness), then reads them.
    ///
    /// Shutdown is a flag checked on every poll; the connection's waker is
    /// registered for it (and the timer armed) only when it would block.
    ///
    /// The phase: between requests ([`Phase::Idle`]: shutdown closes it, and
    /// it is listed [`Idle`](ConnectionState::Idle)), or the first request
    /// (listed [`ReadingHead`](ConnectionState::ReadingHead), as from its
    /// accept: Go's `StateNew`). A fresh connection still gets its first
    /// request served, with `Connection: close`, when it comes within
    /// [`NEW_CONNECTION_GRACE`](crate::conn::shutdown::NEW_CONNECTION_GRACE)
    /// of its accept (the drain's start at the earliest; and within
    /// `read_header_timeout` and `shutdown_timeout`), as Go spares a new
    /// connection 5 s: its client connected just before the listener
    /// stopped (an upgrade hands the listener on at that moment) and its
    /// request is on the way. So a first request's wait that hears the
    /// drain begin ([`Phase::New`]) returns [`Waited::Shutdown`], and is
    /// made again ([`Phase::NewInDrain`]) with the cut in its deadline;
    /// at the cut it closes: a socket preconnected and left silent held
    /// the drain. (The cut is the caller's to add, and to tell from the
    /// header deadline when the wait times out: kept here, the accept's
    /// instant grew every connection's future.)
    ///
    /// An idle connection parks when the worker asks every idle one to (an
    /// upgrade hands the lot over), unless it speaks TLS, which cannot move.
    ///
    /// Inlined: its one caller is the loop's poll, and a keep-alive request
    /// polls it twice.
    #[inline(always)]
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Option<Sleep>>,
    ) -> Poll<Waited> {
        let ctx = self.ctx;
        let conn = self.conn.as_deref_mut().expect(LENT);
        // Shutdown is checked after the read: a request that arrived as
        // shutdown began (or during a paced drain) is served, with
        // `Connection: close`, rather than cut off.
        //
        // The first poll, right after a response, asks for readiness before
        // taking a buffer: the next request is seldom there yet. A later poll
        // comes from a wake, so it reads at once: the read checks readiness
        // itself, and a second check first cost ~100 instructions a request.
        let after_wake = std::mem::replace(&mut self.polled, true);
        let ready = match after_wake {
            true => Poll::Ready(Ok(())),
            false => conn.io.poll_read_ready(cx),
        };
        let read = match ready {
            Poll::Ready(Ok(())) => {
                let (rbuf, io) = conn.rbuf_and_io();
                // The task was polled afresh for this read, and the first
                // poll registered its waker: the stream may try the read
                // on the readiness it knows (`WokenSocket::poll_read`).
                if after_wake {
                    io.read_follows_wake();
                }
                read_more(io, rbuf, cx)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
        match read {
            Poll::Ready(Ok(0)) => return Poll::Ready(Waited::Eof),
            Poll::Ready(Ok(_)) => return Poll::Ready(Waited::Bytes),
            Poll::Ready(Err(e)) => return Poll::Ready(Waited::Error(e)),
            // A bare socket (woken, or just accepted) says it is ready
            // without knowing, so the read took a buffer: give it back,
            // or the connection would wait holding it.
            Poll::Pending => conn.buffers.release(),
        }
        // Not over TLS: its session cannot move with the socket, so
        // parked it would only be closed, at once, under a busy
        // client's next request; as a task it gets shutdown's idle
        // grace (`IDLE_GRACE`), and that request is served.
        if self.phase == Phase::Idle
            && T::PARKABLE
            && !T::SECURE
            && ctx.park.is_some()
            && ctx.shutdown.parking_all()
        {
            return Poll::Ready(Waited::ParkNow);
        }
        // The read above may have found nothing only because the
        // runtime has not polled its driver since the bytes came (the
        // shutdown wakes every idle connection in one turn): the
        // kernel is asked before closing, or a request already in the
        // socket would be reset unanswered. With bytes there, the
        // wait goes on; the runtime's readiness brings them.
        if self.phase != Phase::NewInDrain && ctx.shutdown.is_started() && !conn.io.input_waiting()
        {
            return Poll::Ready(Waited::Shutdown);
        }
        if !ctx
            .shutdown
            .watch(&mut conn.buffers.shutdown_slot, cx.waker())
        {
            self.timer_waker = false;
        }
        // The first poll is in the same poll of the task as the clock
        // reading `now` (`start_wait`): a timer `aim_ahead` kept, due after
        // it, has not fired.
        let unfired = !after_wake && self.kept;
        let deadline = self.deadline;
        match deadline {
            Some(d)
                if poll_timer(
                    &mut timer,
                    &mut self.timer_at,
                    d,
                    cx,
                    &mut self.timer_waker,
                    unfired,
                ) =>
            {
                Poll::Ready(Waited::TimedOut)
            }
            _ => Poll::Pending,
        }
    }

    /// Reads until a whole request head is buffered (or more than a head may
    /// be): parsing it is the exchange's first step. `cold`: the head's
    /// clock, deadline, and how far [`whole_head`](ConnIo::whole_head)
    /// looked in the buffer already.
    ///
    /// Parses only once the end of the head may be in the buffer: re-parsing
    /// on every read would let a client that sends one byte at a time make
    /// us scan the head quadratically.
    ///
    /// During a drain the head is waited for until its cut
    /// ([`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut),
    /// from the accept for a first request, [`HeaderClock::First`]), then
    /// the connection closes ([`HeadRead::NoRequest`]): a head that trickles
    /// held the drain until `read_header_timeout` (with that off, to the
    /// deadline). So a wait here watches shutdown too, as an idle one does.
    ///
    /// Out of line: a keep-alive request's head comes whole (`Step::Head`),
    /// and the loop's poll is smaller without this.
    #[inline(never)]
    fn poll_read_head(
        &mut self,
        cold: &mut Cold,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Option<Sleep>>,
    ) -> Poll<HeadRead> {
        let conn = self.conn.as_deref_mut().expect(LENT);
        loop {
            if let Some(end) = conn.whole_head(&mut cold.searched) {
                return Poll::Ready(HeadRead::Whole(end));
            }
            // Responses to earlier pipelined requests go out before we block,
            // bounded as any response's write.
            if conn.wbuf_len() > 0 {
                if let Poll::Ready(Err(reason)) =
                    conn.poll_flush_bounded(cx, &mut self.bound, &WRITES)
                {
                    return Poll::Ready(HeadRead::Unwritten(reason));
                }
            }
            let (rbuf, io) = conn.rbuf_and_io();
            match read_more(io, rbuf, cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(HeadRead::Closed),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(HeadRead::Error(e)),
                Poll::Pending => {}
            }
            if let HeaderClock::After(after) = cold.clock {
                cold.head_deadline
                    .get_or_insert_with(|| Instant::now() + after);
            }
            // Not known to be the waker the shutdown slot holds.
            self.timer_waker = false;
            // Before the drain: heard of at its start (a watch set
            // after it is never woken). During it: until the cut,
            // unless the rest is in the socket already (the drain's
            // wake may come before the runtime has heard of it).
            let shutdown = &self.ctx.shutdown;
            let first = match cold.clock {
                HeaderClock::First(since) => Some(since),
                HeaderClock::After(_) | HeaderClock::Off => None,
            };
            let cut =
                head_cut(conn, first).filter(|&c| Instant::now() < c || !conn.io.input_waiting());
            if !shutdown.is_started() {
                shutdown.watch(&mut conn.buffers.shutdown_slot, cx.waker());
            }
            return match earliest(cold.head_deadline, cut) {
                Some(d) if poll_timer(&mut timer, &mut self.timer_at, d, cx, &mut false, false) => {
                    Poll::Ready(match cut.is_some_and(|c| c <= d) {
                        true => HeadRead::NoRequest,
                        false => HeadRead::TimedOut,
                    })
                }
                _ => Poll::Pending,
            };
        }
    }
}

/// Answers `status` to a request no service saw (a head refused, or one
/// not whole within `read_header_timeout`), whose bytes are still in the
/// read buffer; the connection closes after it. The request is counted in
/// requests_total with its status and, when its head parsed, its method, as
/// h2's 413 is, and has its access-log line, as nginx logs its 400s and
/// 413s: a log of the requests served that left out the refused ones would
/// hide the clients that send them.
fn answer_unserved<T: Transport>(conn: &mut ConnIo<T>, status: StatusCode, reason: &'static str) {
    let (limits, on) = (conn.ctx.limits, conn.ctx.config.access_log);
    let (method, access) = head::refused(conn.rbuf_and_io().0, &limits, on);
    let mut record = RequestRecord::untimed(conn.ctx.stats_source(), method).logged(access);
    record.status(status);
    encode::encode_error(conn.buffers.wbuf(), status, reason);
}

/// Logs a refused request head at INFO, held to one line per interval per
/// worker and status ([`ratelog::refused_head`]: a peer can send them at
/// will), naming the status, why, and the peer: at debug only, an operator
/// saw the refusals counted (`megaconn_limit_hits_total`, the close
/// reasons) but not who sent them or what was wrong.
fn log_refused<T: Parkable>(conn: &ConnIo<T>, rejection: head::Rejection) {
    ratelog::refused_head(
        || peer_of(conn),
        rejection.status,
        rejection.reason,
        "answered and closing",
    );
}

/// The client's address for a log line, `-` if unknown ([`peer_of`]):
/// asked of the socket only for a line that goes out.
pub(super) fn peer_name<T: Parkable>(conn: &ConnIo<T>) -> String {
    peer_of(conn).map_or_else(|| "-".to_string(), |p| p.to_string())
}

/// The client's address: kept with the connection (`connect_info`) or
/// its lifecycle track when either is on, else asked of its socket (two
/// system calls: for a log line, not per request). `None` for a stream
/// that is no socket of ours.
fn peer_of<T: Parkable>(conn: &ConnIo<T>) -> Option<SocketAddr> {
    if let Some(info) = conn.info.as_deref() {
        return Some(info.peer);
    }
    if let (_, Some(peer)) = lifecycle::current_id_and_peer() {
        return Some(peer);
    }
    let fd = conn.io.lot_fd()?;
    // SAFETY: `fd` is this connection's socket, open while `conn` lives.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    ConnInfo::of(&socket).map(|info| info.peer)
}

/// Both of the connection's addresses, for a traced request's span: kept
/// with the connection (`connect_info`), else asked of its socket (two
/// system calls, for a sampled request only). `None` for a stream that is
/// no socket of ours.
fn addrs_of<T: Parkable>(conn: &ConnIo<T>) -> Option<ConnInfo> {
    if let Some(info) = conn.info.as_deref() {
        return Some(*info);
    }
    let fd = conn.io.lot_fd()?;
    // SAFETY: `fd` is this connection's socket, open while `conn` lives.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    ConnInfo::of(&socket)
}

/// Parses the request head that ends at `end` (see [`HeadRead::Whole`]),
/// hands the request to the service and drives the exchange to its end.
/// `queued`: the head was whole in the buffer when the request before it
/// ended ([`Exchange::new`]). Gives back the connection and the service
/// with its outcome ([`Lent`]).
async fn exchange<'a, T, S>(
    conn: &'a mut ConnIo<T>,
    service: &'a mut S,
    end: HeadEnd,
    queued: bool,
) -> Lent<'a, T, S>
where
    T: Parkable,
    S: HttpService,
{
    let limits = conn.ctx.limits;
    // Parsed in place, in this future's box (see `HeadPlace`).
    let mut slot = std::mem::MaybeUninit::uninit();
    let mut place = head::HeadPlace::new(&mut slot);
    match head::parse_from(conn.rbuf_and_io().0, end.0, &limits, &mut place) {
        Ok(true) => {}
        Ok(false) => return (Outcome::Rejected(head::MALFORMED_HEAD), conn, service),
        Err(rejection) => return (Outcome::Rejected(rejection), conn, service),
    }
    let head = place.get();
    incr_own(&conn.ctx.stats.requests);
    lifecycle::count_request();
    lifecycle::set_state(if head.framing == BodyFraming::None {
        ConnectionState::Handling
    } else {
        ConnectionState::ReadingBody
    });
    let method = MethodLabel::of(&head.method);
    // Taken before the service owns the request, for every answer from here
    // on, the 503 and the 500 below included (one word, `None` with the log
    // off).
    let access = AccessLine::of(conn.ctx.config.access_log, &head.method, &head.uri);
    // Waited for before the request is built, so that only the head is kept
    // across this await (the exchange's box is sized by what is kept).
    if !crate::service::ready(service).await {
        let outcome = Exchange::<T, S::Future, S::ResBody>::failed(
            conn,
            RequestRecord::untimed(conn.ctx.stats_source(), method).logged(access),
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is not available",
            CloseReason::ServerError,
        );
        return (outcome, conn, service);
    }
    let config = &conn.ctx.config;
    let (decoder, body_tx, body) = match head.framing {
        BodyFraming::None => (None, None, Body::empty()),
        BodyFraming::Length(n) => {
            let (tx, body) = Body::channel(Some(n));
            (Some(Decoder::length(n)), Some(tx), body)
        }
        BodyFraming::Chunked => {
            let (tx, body) = Body::channel(None);
            (
                Some(Decoder::chunked(config.max_header_bytes)),
                Some(tx),
                body,
            )
        }
    };
    // gRPC-web has a body: a request without one pays no header lookup.
    let grpc = match decoder {
        Some(_) => Grpc::of(&head.headers),
        None => Grpc::No,
    };
    let expect = if head.expect_continue && decoder.is_some() {
        Continue::Awaiting
    } else {
        Continue::NotExpected
    };
    // The method told by its label, a byte, where it can be: two
    // comparisons of `Method`s took 16 user-space instructions a request
    // (bench/CPU-PER-REQUEST.md, session 56). `CONNECT` has no label of
    // its own (`other`).
    let setup_head = (
        head.version,
        method == MethodLabel::of(&Method::HEAD),
        method == MethodLabel::of(&Method::CONNECT) && head.method == Method::CONNECT,
    );
    let (keep_alive, te_trailers, wants_upgrade) =
        (head.keep_alive, head.te_trailers, head.wants_upgrade);

    // The handler's future is built here, in this future's frame, where the
    // exchange polls it (`service::call_into`).
    let mut handler = std::pin::pin!(None::<S::Future>);
    // The request is built where the service's `call` takes it
    // (`service::call_into`): built here, it was copied twice on its way
    // there, 368 bytes each time (~128 user-space instructions a request;
    // bench/CPU-PER-REQUEST.md, session 38).
    let mut upgrade = None;
    let info = conn.info.as_deref();
    // A TLS client's verified chain (`ClientAuth`): a constant `None` on
    // cleartext, one branch over TLS without client auth.
    let peer = if T::SECURE {
        conn.io.shared_peer_certificates()
    } else {
        None
    };
    // Made apart and moved into the request whole, so that nothing is
    // handed the request's address before its `call`: see `call_into`.
    let extensions = (info.is_some() || peer.is_some() || wants_upgrade)
        .then(|| request_extensions(info, peer, wants_upgrade.then_some(&mut upgrade)));
    let fill = |request: &mut Request<Body>| {
        // SAFETY: the place is full: `parse_from` put a head there (it
        // answered `Ok(true)`), and only `get` has borrowed it since.
        unsafe { place.move_into(request) };
        if let Some(extensions) = extensions {
            // `Request::new`'s are empty (no map): nothing to drop.
            std::mem::forget(std::mem::replace(request.extensions_mut(), extensions));
        }
    };
    let (called, span) = crate::service::call_into(
        service,
        &conn.ctx,
        T::SECURE,
        || addrs_of(conn),
        body,
        fill,
        |future| handler.set(Some(future)),
    );
    if !called {
        let outcome = Exchange::<T, S::Future, S::ResBody>::call_panicked(
            conn,
            RequestRecord::untimed(conn.ctx.stats_source(), method)
                .traced(span)
                .logged(access),
            grpc,
        );
        return (outcome, conn, service);
    }
    let setup = ExchangeSetup {
        method,
        version: setup_head.0,
        is_head: setup_head.1,
        is_connect: setup_head.2,
        keep_alive,
        decoder,
        body_tx: Rare::new(body_tx),
        expect,
        upgrade: Rare::new(upgrade),
        te_trailers,
        grpc,
    };
    // Pinned where it is built and awaited through the pin: awaited by
    // value, it was moved whole into the await's slot first (a copy of
    // some 600 bytes, ~50 user-space instructions a request; callgrind,
    // bench/CPU-PER-REQUEST.md, session 37). In a block of its own, so
    // that its borrow of the connection ends with it.
    let outcome = {
        let exchange = std::pin::pin!(Exchange::new(
            &mut *conn, handler, setup, span, access, queued
        ));
        exchange.await
    };
    (outcome, conn, service)
}

/// A request's extensions, when it has any: its connection's addresses
/// (`info`, with `connect_info`), a TLS client's verified chain (`peer`),
/// and, when it asks to upgrade, its `OnUpgrade`, whose sender goes in
/// `upgrade`. Out of line: a request seldom has any.
#[inline(never)]
fn request_extensions(
    info: Option<&ConnInfo>,
    peer: Option<crate::conn::client_auth::PeerCertificates>,
    upgrade: Option<&mut Option<UpgradeSender>>,
) -> http::Extensions {
    let mut extensions = http::Extensions::new();
    if let Some(info) = info {
        crate::service::insert_conn_info(&mut extensions, *info);
    }
    if let Some(peer) = peer {
        extensions.insert(peer);
    }
    if let Some(upgrade) = upgrade {
        let (tx, on_upgrade) = upgrade::pending();
        extensions.insert(on_upgrade);
        *upgrade = Some(tx);
    }
    extensions
}

enum Waited {
    Bytes,
    Eof,
    TimedOut,
    /// Graceful shutdown began: an idle connection closes, a first
    /// request's wait is made again with the drain's cut.
    Shutdown,
    /// The worker parks every idle connection (an upgrade).
    ParkNow,
    Error(io::Error),
}

enum HeadRead {
    /// The head is in the read buffer, ending where [`head::End`] says,
    /// or the buffer holds `max_header_bytes` without its end
    /// ([`head::End::Missing`]), which the parse refuses. Parsed by the
    /// exchange.
    Whole(HeadEnd),
    Closed,
    TimedOut,
    /// A drain's cut came before the head was whole
    /// ([`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut)).
    NoRequest,
    Error(io::Error),
    /// The answers to earlier pipelined requests could not be written
    /// while the head came: the write failed, or its bound passed
    /// ([`WRITES`]; a client that stops reading them must not be held
    /// until `read_header_timeout`, or for good with it off).
    Unwritten(CloseReason),
}

impl<T: Parkable> ConnIo<T> {
    /// Where the request head in the buffer ends, once it is whole (or the
    /// buffer holds more than a head may: the parse refuses it); `None`
    /// while more bytes are needed. Empty lines before the request line
    /// are dropped first. `searched`: how far an earlier call looked (see
    /// [`head::find_end`]), moved on.
    ///
    /// A buffer that ends with an empty line holds a whole head: its end
    /// is left to the parse, which finds it as it reads the head
    /// ([`head::End::InBuffer`]), rather than searched for here first.
    #[inline]
    fn whole_head(&mut self, searched: &mut usize) -> Option<HeadEnd> {
        let max_header_bytes = self.ctx.limits.max_header_bytes;
        let (rbuf, _) = self.rbuf_and_io();
        // Empty lines before a request line are ignored (RFC 9112 §2.2);
        // dropped here, they cannot pass for the blank line that ends a
        // head when a read happens to end just after them.
        while rbuf.starts_with(b"\r\n") || rbuf.starts_with(b"\n") {
            let n = if rbuf[0] == b'\r' { 2 } else { 1 };
            rbuf.advance(n);
            *searched = searched.saturating_sub(n);
        }
        if rbuf.ends_with(b"\r\n\r\n") {
            return Some(HeadEnd(head::End::InBuffer));
        }
        match head::find_end(rbuf, searched) {
            Some(end) => Some(HeadEnd(head::End::At(end))),
            None if rbuf.len() >= max_header_bytes => Some(HeadEnd(head::End::Missing)),
            None => None,
        }
    }
}

/// Where a whole request head ends ([`HeadRead::Whole`]). Not `Copy`: once
/// moved into the exchange, no copy of it is left in the connection's
/// future across the exchange's await (16 bytes in every connection:
/// `size_guard`).
struct HeadEnd(head::End);

/// When a request head times out.
#[derive(Clone, Copy)]
enum HeaderClock {
    /// The first request: `read_header_timeout` (if set) after this
    /// instant, its accept (or its wake from the lot), from which a
    /// drain's cut runs too.
    First(Instant),
    /// This long after the head is first found incomplete.
    After(Duration),
    Off,
}

/// What a wait for the first bytes of a request is for
/// ([`Hot::poll_wait`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next request on a connection that served one: idle.
    Idle,
    /// A connection's first request, before a drain.
    New,
    /// A connection's first request during a drain: its deadline holds
    /// the drain's cut.
    NewInDrain,
}

/// The earlier of two deadlines, either of which may be unset.
#[inline]
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `after` past `now`, if both are set.
#[inline]
fn later(now: Option<Instant>, after: Option<Duration>) -> Option<Instant> {
    after.zip(now).map(|(after, now)| now + after)
}

/// Drops the connection's timer if it is set to come due before `by` (half
/// of the coming wait), so that [`poll_timer`] registers it afresh at the
/// wait's own deadline. `at`: the timer's deadline ([`Hot::timer_at`]),
/// read instead of the timer's own.
///
/// `poll_timer` moves a timer only when it must fire earlier: a later
/// deadline would be a new registration per request, and tokio moves a
/// registered timer later only lazily, where it is (the wheel still comes
/// due at the old time and then files it again). So a connection asking
/// more often than its wait (`park_idle_after`, 2 s by default) had its
/// timer come due at every such span: a wake-up of the worker that served
/// nothing, for each connection, when the worker was otherwise asleep. At
/// 500 requests/s over 64 connections that was ~6 % more wake-ups than
/// requests, ~1,800 user-space instructions each (`bench/CPU-PER-REQUEST.md`,
/// round 11). Moved once it is within half of a wait of coming due, the
/// timer is registered anew (deregistered and filed again, a few hundred
/// instructions) about once per half span per connection, and a
/// connection that keeps asking never sees it fire.
///
/// True when it keeps a timer: one due after `by`, so after the clock
/// reading `by` was made from (see [`poll_timer`]'s `unfired`).
fn aim_ahead(mut timer: Pin<&mut Option<Sleep>>, at: &mut Option<Instant>, by: Instant) -> bool {
    match *at {
        Some(at) if at > by => true,
        Some(_) => {
            timer.set(None);
            *at = None;
            false
        }
        None => false,
    }
}

/// Polls the connection's timer for `deadline`: true once it has passed.
/// `at`: the timer's deadline ([`Hot::timer_at`], `None` with no timer),
/// kept here as the timer is set or moved.
///
/// The timer is moved only when it must fire earlier. A timer left at an
/// earlier deadline (the last wait's) fires early at worst, and is then moved
/// to the real one: a connection that waits once per request moves its timer
/// once per deadline that passes, not once per request. (Between requests,
/// [`aim_ahead`] registers it afresh before it would fire early.)
///
/// `registered`: the timer already holds the current waker (the caller knows:
/// it is the one the shutdown slot holds). Its state is then read, not polled
/// (a poll re-registers the waker and spends task budget); set here after a
/// poll that registered it. Not even read when `unfired`: the caller knows
/// it is due after a clock reading taken in this poll of the task
/// ([`aim_ahead`] kept it), and a timer fires only in the runtime's turn
/// of its driver, between the polls of its tasks, and never before its
/// deadline (tokio rounds it up to its next millisecond). So the usual
/// wait reads nothing of the timer (its line was a miss a request at 512
/// connections, session 57). (A flag, where session 58 compared the
/// timer's deadline with the reading here: 8–10 instructions a request
/// more than main's read of the timer's state.)
fn poll_timer(
    timer: &mut Pin<&mut Option<Sleep>>,
    at: &mut Option<Instant>,
    deadline: Instant,
    cx: &mut Context<'_>,
    registered: &mut bool,
    unfired: bool,
) -> bool {
    match *at {
        Some(set) if set > deadline => {
            if let Some(sleep) = timer.as_mut().as_pin_mut() {
                sleep.reset(deadline);
            }
            *at = Some(deadline);
            *registered = false;
        }
        Some(_) if *registered && unfired => return false,
        Some(_) => {}
        None => {
            timer.set(Some(tokio::time::sleep_until(deadline)));
            *at = Some(deadline);
            *registered = false;
        }
    }
    let Some(mut sleep) = timer.as_mut().as_pin_mut() else {
        return false;
    };
    loop {
        let fired = if *registered {
            sleep.is_elapsed()
        } else {
            // Out of budget, the poll returns early without registering.
            *registered = tokio::task::coop::has_budget_remaining();
            sleep.as_mut().poll(cx).is_ready()
        };
        if !fired {
            return false;
        }
        if sleep.deadline() >= deadline {
            return true;
        }
        // An earlier deadline passed: wait on for this one.
        sleep.as_mut().reset(deadline);
        *at = Some(deadline);
        *registered = false;
    }
}

/// The first request head's deadline: `read_header_timeout` after `since`
/// (the accept, or the wake from the lot); `None` for a later request
/// (`since` `None`: its clock starts with its first bytes) or with the
/// setting off.
#[inline]
fn header_deadline<T: Parkable>(conn: &ConnIo<T>, since: Option<Instant>) -> Option<Instant> {
    later(since, conn.ctx.config.read_header_timeout)
}

/// True once the drain's cut for a first request awaited since `since`
/// has passed ([`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut)).
fn cut_passed<T: Parkable>(conn: &ConnIo<T>, since: Option<Instant>) -> bool {
    head_cut(conn, since).is_some_and(|cut| Instant::now() >= cut)
}

/// The drain's cut for a request head awaited since `since` (`None`: a
/// later request's), [`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut):
/// a first request's counts from the accept when a step before it took
/// time since (a TLS handshake, [`Parkable::accepted_at`]), as Go's
/// `StateNew` spans the handshake; `read_header_timeout` counts from
/// `since`, after it, as Go's does.
///
/// The accept is asked only once a drain has begun: every first request's
/// wait comes here, and before a drain (nearly always) there is no cut,
/// so a cleartext connection's stream (`TcpStream`, whose `accepted_at`
/// reads the task's `ProxiedTask`, a thread-local) is asked nothing.
fn head_cut<T: Parkable>(conn: &ConnIo<T>, since: Option<Instant>) -> Option<Instant> {
    let shutdown = &conn.ctx.shutdown;
    if !shutdown.is_started() {
        return None;
    }
    let since = since.map(|s| conn.io.accepted_at().unwrap_or(s));
    shutdown.head_cut(since)
}

/// A connection whose request head had not come whole at its drain's cut
/// ([`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut)):
/// logged (the drain's first at INFO, the peer named), and its close reason.
fn closed_before_request<T: Parkable>(conn: &ConnIo<T>) -> CloseReason {
    conn.ctx.shutdown.closing_before_request(|| peer_name(conn));
    CloseReason::ShutdownBeforeRequest
}

/// A request head that did not come within `read_header_timeout`: logged
/// at INFO, the setting and the peer named, one line per interval per
/// worker ([`Flood::Http1HeaderTimeout`]: a peer can let heads time out at
/// will, a slowloris does), and its close reason. At debug only, an
/// operator saw `closed{header_timeout}` counted but not from whom.
fn header_timed_out<T: Parkable>(conn: &ConnIo<T>) -> CloseReason {
    ratelog::log(Flood::Http1HeaderTimeout, |suppressed| {
        tracing::info!(
            read_header_timeout = %Timeout(conn.ctx.config.read_header_timeout),
            suppressed,
            "no whole request head from {} within read_header_timeout; closing the connection",
            peer_name(conn)
        )
    });
    CloseReason::HeaderTimeout
}

#[cfg(test)]
mod tests {
    //! The waits between requests on a real socket, on paused time, with a
    //! worker context that has a parking lot or not: `park_idle_after`'s
    //! wait needs one, which `Builder::serve_connection` (whose stream never
    //! parks) cannot give.

    use std::cell::Cell;
    use std::future::poll_fn;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::conn::config::Config;
    use crate::conn::limit::ConnectionLimit;
    use crate::conn::park::{LotFds, ParkingLot};
    use crate::observe::stats::WorkerStats;

    /// The wait between requests, in both tests.
    const WAIT: Duration = Duration::from_millis(100);

    /// A keep-alive connection that asks again well within its idle timeout
    /// is not woken by its own timer (see [`aim_ahead`]).
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_keeps_asking_is_not_woken_by_its_timer() {
        let config = Config {
            idle_timeout: Some(WAIT),
            ..Config::default()
        };
        not_woken_by_its_timer(config, None).await;
    }

    /// The same for the wait of `park_idle_after`, which a connection on a
    /// worker with a parking lot waits instead (the shorter of the two).
    #[tokio::test(start_paused = true)]
    async fn a_connection_asking_within_park_idle_after_is_not_woken_by_its_timer() {
        let config = Config {
            park_idle_after: Some(WAIT),
            ..Config::default()
        };
        let stats = Arc::new(WorkerStats::default());
        let lot = ParkingLot::new(
            LotFds::new(Duration::ZERO).unwrap(),
            ConnectionLimit::new(4, None),
            stats,
            WAIT,
        );
        not_woken_by_its_timer(config, Some(lot)).await;
    }

    /// Checks that a connection served with `config` (and `lot`, if any),
    /// whose wait between requests is [`WAIT`], is not woken by its timer:
    /// spread over six waits, twenty requests take as many polls of the
    /// connection as twenty sent back to back. (The timer was left at the
    /// first wait's deadline and came due once per wait, early, to be moved
    /// on: a wake-up of the worker each time that served nothing.)
    async fn not_woken_by_its_timer(config: Config, lot: Option<ParkingLot>) {
        let stats = Arc::new(WorkerStats::default());
        let ctx = Rc::new(WorkerContext::new(0, Arc::new(config), stats, lot));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_end, _) = listener.accept().await.unwrap();
        let app = tower::service_fn(|_: Request<Body>| async {
            let ok = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"));
            Ok::<_, std::convert::Infallible>(http::Response::new(ok))
        });
        let polls = Rc::new(Cell::new(0u32));
        let counted = polls.clone();
        let mut serve = Box::pin(serve_connection(server_end, app, ctx, None, None));
        let local = tokio::task::LocalSet::new();
        local.spawn_local(poll_fn(move |cx| {
            counted.set(counted.get() + 1);
            serve.as_mut().poll(cx).map(drop)
        }));
        local
            .run_until(async {
                ask(&mut c).await;
                // Each phase: 20 requests, a pause after each.
                let mut phase = async |pause: Duration| {
                    let before = polls.get();
                    for _ in 0..20 {
                        ask(&mut c).await;
                        tokio::time::sleep(pause).await;
                    }
                    polls.get() - before
                };
                let back_to_back = phase(Duration::from_millis(1)).await;
                let spread = phase(WAIT * 3 / 10).await;
                assert_eq!(
                    spread, back_to_back,
                    "polls of the connection: 20 requests 30 ms apart took {spread}, back to back {back_to_back}"
                );
            })
            .await;
    }

    /// One keep-alive request, and its whole answer (`ok`).
    async fn ask(c: &mut TcpStream) {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut chunk = [0u8; 512];
            let n = c.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
    }
}
