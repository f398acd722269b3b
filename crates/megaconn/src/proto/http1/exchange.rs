//! One request/response exchange, driven as a single future.
//!
//! Three things happen at once and none may starve the others:
//!
//! ```text
//!              +-------------------+
//!   socket --> | request body pump | --(one-slot channel)--> handler's Body
//!              +-------------------+
//!              +-------------------+
//!              |     handler       | --> Response<B>
//!              +-------------------+
//!              +-------------------+
//!   socket <-- |   response writer | <-- B::poll_frame
//!              +-------------------+
//! ```
//!
//! The pump reads body bytes only when the handler asks for them (that is when
//! `100 Continue` goes out); the writer frames response bytes into the write
//! buffer and pushes them while the exchange runs (a large frame goes out
//! from its own bytes behind the buffer's, and the body is asked for the
//! next only once it went: [`LARGE_FRAME`]); when the body is done the
//! pump keeps one eye on the socket so a client that hangs up cancels the
//! handler. A handler's wait for body bytes that do not come is bounded
//! ([`BodyStall`]). [`Exchange::poll`] runs the three steps in a loop until
//! none makes progress. The whole exchange (the response body inline, the
//! handler's future beside it in the caller's frame) is boxed by the
//! caller, so an idle connection's future stays small.
//!
//! A gRPC-web call (`ExchangeSetup::grpc`) still open when the drain's
//! deadline nears ends with `grpc-status: 14` (UNAVAILABLE), as HTTP/2's
//! calls do, rather than cut with the connection at the deadline
//! ([`poll_call_end`]); a handler that panics, in its future or in the
//! service's `call` ([`Exchange::call_panicked`]), answers it
//! `grpc-status: 13`, not a text `500`.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{Response, StatusCode, Version};
use http_body::Body as HttpBody;
use tokio::time::Sleep;

use super::decode::{Decoded, Decoder};
use super::encode::{self, EncodeError, Encoder, HeadContext};
use super::{CloseReason, Outcome};
use crate::conn::io::{read_more, ConnIo, Unbuffered, WriteBound, Writes};
use crate::conn::shutdown::CallSlot;
use crate::conn::transport::{Parkable, Transport};
use crate::error::BodyError;
use crate::message::MessageSettings;
use crate::observe::clock::{self, LazyDeadline};
use crate::observe::close::client_left_kind;
use crate::observe::human::{Causes, Timeout};
use crate::observe::limits::LimitHit;
use crate::observe::metrics::{AccessLine, MethodLabel, RequestRecord};
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::incr;
use crate::observe::trace::{ErrorClass, SpanSlot};
use crate::service::body::{BodySender, Demand};
use crate::service::body_rate::BodyRate;
use crate::service::grpc::{self, Grpc};
use crate::service::panic_message;
use crate::service::upgrade::{NativeUpgrade, UpgradeSender};
use crate::BoxError;

/// Largest body chunk handed to the handler at once.
const MAX_BODY_CHUNK: usize = 64 * 1024;

/// The writer stops pulling response frames once this much is buffered;
/// past it, the connection writes the answers to pipelined requests before
/// it reads the next (`conn.rs`).
pub(super) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A response data frame at least this large goes out from its own bytes
/// ([`Unbuffered`], one `writev` behind what is buffered), not copied into
/// the write buffer, and the body is asked for its next frame only once it
/// is all written: at most one such frame is held per response. Copied,
/// each frame was held twice while a slow client read it (the body's, and
/// the write buffer's, which took frames up to [`WRITE_HIGH_WATER`] and a
/// frame past it, and doubled its room for it): 274 KB a slow download of
/// `ServeDir`'s 64 KiB chunks, nginx 9.8 KB (session 56's file-serving
/// review), and a copy a byte. Smaller frames are still copied: many of
/// them (answers to pipelined requests, a stream's small events) go out
/// together in one write, which one `writev` per frame would not do, and
/// the copy of a few bytes costs less than the slice. 16 KiB is
/// `ServeDir`'s smallest chunk worth setting and a TLS record's payload
/// (`bench/FILES.md`, session 57).
pub(super) const LARGE_FRAME: usize = 16 * 1024;

/// How a response write that has to wait is bounded, here and when the
/// connection writes what the exchange left (`conn.rs`): by
/// `write_timeout`, the whole write, else by `write_stall_timeout`, a
/// stall (HTTP/1.1 has no heartbeat), the rule WebSocket and framed
/// writes follow ([`WriteLimit::resolve`]). A client that asks for a large
/// response and never reads it would otherwise hold its connection, its
/// task and the response's buffers for good. (Within the exchange,
/// `write_timeout` also runs from the head, to the response's last byte:
/// see `write_head` and `write_rest`.)
pub(super) const WRITES: Writes = Writes {
    limit: MessageSettings::write_limit_without_heartbeat,
    kind: Flood::Http1WriteTimeout,
    peer: "an HTTP/1.1 client",
};

/// Where `Expect: 100-continue` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Continue {
    /// The client did not ask.
    NotExpected,
    /// The client waits for `100 Continue` before sending the body.
    Awaiting,
    /// `100 Continue` was sent.
    Sent,
}

/// Which timeout passed: the exchange's deadline's (`Read`, `Write`) or
/// its handler's wait for body bytes ([`BodyStall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadlineKind {
    Read,
    Write,
    BodyStall,
    BodyRate,
}

/// A handler's wait for request body bytes that the socket does not have,
/// bounded, with `read_timeout` off, by `idle_timeout` ([`body_stalled`]).
///
/// Why a default bound: a handler waiting on a body holds its connection
/// and its task, and a connection under way is not idle, so a client that
/// sent a head announcing a body (or half of one) and then nothing held
/// both for good. nginx answers `408` after `client_body_timeout` (60 s
/// between two reads); `idle_timeout` is that bound here, as on HTTP/2
/// (`service/h2_body.rs`): the client is idle mid-request, and its
/// connection would have been closed after as long between requests.
///
/// Made only when the handler waits and the socket has nothing (a body
/// whose bytes are there when read costs none, a request without a body
/// nothing at all), dropped when the handler is found not waiting: a
/// handler that stopped reading (it holds the body and does something
/// else) is never cut by it. (A body the handler dropped unread is drained
/// under the same bound once the handler and its response are done.)
/// Nothing is done per read but setting a flag while it exists: when the
/// bound passes, any bytes of the body received since it (re)started
/// restart it, so a client is cut one to two bounds after its last byte,
/// and a slow but steady upload is not.
///
/// Any bytes, not only the body's data: a chunked body's framing (size
/// lines, their extensions, the CRLFs, trailers) is the body too, and an
/// honest client whose size line or trailers come slowly was cut while it
/// sent them. What a client pays to hold the connection is the same
/// either way, a byte per bound at least; and framing cannot stand in for
/// data for long: a size line is at most 4 KiB (then data follows, or the
/// end), extensions at most 16 KiB per body, trailers at most
/// `max_header_bytes` (`decode.rs`), so the framing between two data
/// bytes is at most one size line and a CRLF, and the data is bounded by
/// `max_body_bytes`. (A bound on the whole body is `read_timeout`'s.)
#[derive(Debug)]
struct BodyStall {
    bound: LazyDeadline,
    /// Bytes of the body were read since the bound (re)started.
    progressed: bool,
    /// The bound passed with no bytes, and the handler's wait was woken
    /// to see whether it still waits ([`BodySender::ask_again`]); its
    /// answer, a poll of the body, is awaited for one more bound.
    asked: bool,
}

/// The per-request facts the exchange needs from the request head.
#[derive(Debug)]
pub(crate) struct ExchangeSetup {
    pub method: MethodLabel,
    pub version: Version,
    pub is_head: bool,
    pub is_connect: bool,
    pub keep_alive: bool,
    pub decoder: Option<Decoder>,
    pub body_tx: Rare<BodySender>,
    pub expect: Continue,
    pub upgrade: Rare<UpgradeSender>,
    /// The request said `TE: trailers`: response trailers may be sent.
    pub te_trailers: bool,
    /// Which gRPC (gRPC-web) the request speaks, if it has a body: how a
    /// failed handler is answered ([`answer_grpc`]).
    pub grpc: Grpc,
}

/// An `Option` whose drop tests for `None` inline, where its owner drops,
/// and calls out of line only for a value: for what an exchange seldom
/// holds (a request body's sender, an upgrade's, declared trailers). The
/// drop of an `Option` of such a type is a function of its own, which
/// saves its registers before it tests (17 user-space instructions a
/// request for `Option<Box<[HeaderName]>>`, bench/CPU-PER-REQUEST.md,
/// session 45); the exchange's drop made three such calls a request.
/// Used as the `Option` it derefs to.
#[derive(Debug)]
pub(crate) struct Rare<T>(std::mem::ManuallyDrop<Option<T>>);

impl<T> Rare<T> {
    /// Holds `value`, or nothing.
    #[inline(always)]
    pub(crate) fn new(value: Option<T>) -> Rare<T> {
        Rare(std::mem::ManuallyDrop::new(value))
    }
}

impl<T> std::ops::Deref for Rare<T> {
    type Target = Option<T>;
    #[inline(always)]
    fn deref(&self) -> &Option<T> {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Rare<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Option<T> {
        &mut self.0
    }
}

impl<T> Drop for Rare<T> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.0.is_some() {
            drop_rare(&mut self.0);
        }
    }
}

/// [`Rare`]'s value dropped, out of line: the `None` left behind in the
/// `ManuallyDrop` needs none.
#[cold]
#[inline(never)]
fn drop_rare<T>(value: &mut Option<T>) {
    drop(value.take());
}

pin_project_lite::pin_project! {
    /// One request/response exchange on a connection.
    #[project = ExchangeProj]
    pub(crate) struct Exchange<'c, T, F, B> {
        conn: &'c mut ConnIo<T>,
        // The handler's future, in the caller's frame: the service's
        // `call` builds it there (`service::call_into`), where built here
        // it was returned and moved three times first (~90 user-space
        // instructions a request; bench/CPU-PER-REQUEST.md, session 38).
        // Emptied first when the exchange drops ([`PinnedDrop`]), as when
        // it was the first field: the handler goes before the request
        // body's sender, the upgrade's and the request's record.
        handler: Pin<&'c mut Option<F>>,
        #[pin]
        body: Option<B>,
        #[pin]
        deadline: Option<Sleep>,
        // Every field that is not pinned, in one: the exchange's
        // projection, made at each poll and kept on the stack for the
        // functions it is handed to, is then five pointers, where one per
        // field was eighteen (~45 user-space instructions a poll; callgrind,
        // bench/CPU-PER-REQUEST.md, session 41).
        st: State,
    }

    impl<'c, T, F, B> PinnedDrop for Exchange<'c, T, F, B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.handler.is_some() {
                this.handler.set(None);
            }
            if let Some(slot) = this.st.call.as_mut() {
                this.conn.ctx.shutdown.leave_calls(slot);
            }
        }
    }
}

/// What an [`Exchange`] keeps besides its pinned parts.
struct State {
    deadline_kind: DeadlineKind,
    // The bound of a response write that waits (`WRITES`), made only
    // then: one word while none does.
    write_bound: Option<Box<WriteBound>>,
    // A large response frame not all written yet ([`LARGE_FRAME`]): the
    // body is not asked for more until it is, and nothing is buffered
    // behind it. Boxed, as the other rare states here: one word in every
    // exchange, where inline it was 48 bytes (a `Bytes` and its tail) for
    // what only a large body's frames hold; the box is one small
    // allocation a frame of 16 KiB or more.
    unbuffered: Option<Box<Unbuffered>>,
    // The bound of the handler's wait for body bytes (`BodyStall`),
    // made only then: one word while it does not wait.
    body_stall: Option<Box<BodyStall>>,
    // The body's client held to `min_request_body_rate` (`BodyRate`),
    // made at the handler's first wait: one word until then.
    body_rate: Option<Box<BodyRate>>,
    setup: ExchangeSetup,
    body_bytes: u64,
    drained: u64,
    encoder: Option<Encoder>,
    // The trailer fields the response declared (`Trailer`), kept when
    // the client takes trailers and the body is chunked: the only ones
    // sent (`encode::declared_trailers`).
    declared_trailers: Rare<Box<[http::HeaderName]>>,
    response_done: bool,
    upgrading: Option<UpgradeSender>,
    native: Option<NativeUpgrade>,
    close_reason: Option<CloseReason>,
    deferred_head: Option<(ResponseHead, Option<u64>)>,
    record: RequestRecord,
    // A gRPC(-web) call's place in the worker's list of open calls, which
    // the drain ends a margin before its deadline ([`poll_call_end`]):
    // from its start (a handler that waits is polled by nothing else when
    // the time comes) until it ends or is ended; `None` for any other
    // request. Given back when the exchange drops.
    call: Option<CallSlot>,
}

impl<'c, T, F, B, E> Exchange<'c, T, F, B>
where
    T: Transport,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Inlined so that the exchange is built where it is awaited, not built
    // and then moved there (~800 bytes per request). `handler`: the
    // service's future, already in place (see the field). `span`: the
    // request's, if it is traced; `access`: its access-log line, when the
    // log is on (both the record's: not kept in `setup`, whose drop would
    // test them again). `queued`: the request was whole in the read buffer
    // when the one before it ended, and is timed from that end
    // (`RequestRecord::started`).
    #[inline(always)]
    pub(crate) fn new(
        conn: &'c mut ConnIo<T>,
        handler: Pin<&'c mut Option<F>>,
        setup: ExchangeSetup,
        span: SpanSlot,
        access: Option<Box<AccessLine>>,
        queued: bool,
    ) -> Self {
        let deadline = match (&setup.decoder, conn.ctx.config.read_timeout) {
            (Some(_), Some(t)) => Some(tokio::time::sleep(t)),
            _ => None,
        };
        let ctx = conn.ctx.stats_source();
        let record = RequestRecord::started(ctx, setup.method, span, access, queued);
        let call = (setup.grpc != Grpc::No).then(CallSlot::default);
        Exchange {
            conn,
            handler,
            body: None,
            deadline,
            st: State {
                deadline_kind: DeadlineKind::Read,
                write_bound: None,
                unbuffered: None,
                body_stall: None,
                body_rate: None,
                setup,
                body_bytes: 0,
                drained: 0,
                encoder: None,
                declared_trailers: Rare::new(None),
                response_done: false,
                upgrading: None,
                native: None,
                close_reason: None,
                deferred_head: None,
                record,
                call,
            },
        }
    }

    /// An exchange whose handler never ran (the service failed before): only the
    /// error response and the close remain.
    pub(crate) fn failed(
        conn: &mut ConnIo<T>,
        mut record: RequestRecord,
        status: StatusCode,
        reason: &'static str,
        close: CloseReason,
    ) -> Outcome {
        record.status(status);
        drop(record);
        let wbuf = conn.wbuf();
        encode::encode_error(wbuf, status, reason);
        Outcome::Close(close)
    }

    /// An exchange whose service panicked in `call` (counted and logged
    /// there, `service::call_into`): a gRPC(-web) call (`grpc`) is
    /// answered as when the handler's future panics ([`handler_panicked`]:
    /// `200`, `grpc-status: 13` in the head), any other request `500`;
    /// the connection closes after it.
    #[cold]
    pub(crate) fn call_panicked(
        conn: &mut ConnIo<T>,
        mut record: RequestRecord,
        grpc: Grpc,
    ) -> Outcome {
        let (status, reason) = (StatusCode::INTERNAL_SERVER_ERROR, grpc::PANICKED.message);
        if grpc == Grpc::No {
            return Self::failed(conn, record, status, reason, CloseReason::Panic);
        }
        encode_grpc(grpc::PANICKED, grpc, conn.wbuf());
        record.status(StatusCode::OK);
        Outcome::Close(CloseReason::Panic)
    }
}

type Step = Result<bool, Outcome>;

impl<T, F, B, E> Future for Exchange<'_, T, F, B>
where
    T: Parkable,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        loop {
            if let Some(deadline) = this.deadline.as_mut().as_pin_mut() {
                if deadline.poll(cx).is_ready() {
                    let kind = this.st.deadline_kind;
                    if kind == DeadlineKind::Read && body_received(&mut this, cx) {
                        this.deadline.set(None);
                    } else {
                        this.st.record.error(ErrorClass::Timeout);
                        return Poll::Ready(timed_out(&mut this, kind));
                    }
                }
            }
            let mut step = || -> Step {
                let handled = poll_handler(&mut this, cx)?;
                let read = poll_request_body(&mut this, cx)?;
                let framed = poll_response_body(&mut this, cx)?;
                let written = poll_write(&mut this, cx)?;
                Ok(handled | read | framed | written)
            };
            let mut progress = match step() {
                Ok(progress) => progress,
                Err(outcome) => return Poll::Ready(ended_early(&mut this, outcome)),
            };
            if this.handler.is_none()
                && this.st.response_done
                && this.st.setup.decoder.is_none()
                && this.st.unbuffered.is_none()
            {
                if this.st.deadline_kind == DeadlineKind::Write {
                    // What is still buffered is written here, under
                    // `write_timeout` (see `write_rest`).
                    match write_rest(&mut this, cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(outcome)) => {
                            return Poll::Ready(ended_early(&mut this, outcome))
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                return Poll::Ready(finished(&mut this));
            }
            // Only when everything else waits do we read ahead for a hang-up: a
            // response that completes at once then costs no extra `read`.
            if !progress && this.st.setup.decoder.is_none() {
                progress = match poll_hang_up(&mut this, cx) {
                    Ok(progress) => progress,
                    Err(outcome) => return Poll::Ready(ended_early(&mut this, outcome)),
                };
            }
            // Only when nothing moves either: a call that answered in
            // time is sent, and a response body waits between frames.
            if !progress && this.st.call.is_some() {
                progress = match poll_call_end(&mut this, cx) {
                    Ok(progress) => progress,
                    Err(outcome) => return Poll::Ready(ended_early(&mut this, outcome)),
                };
            }
            if !progress {
                // Waiting (a handler that long-polls, a body between two
                // events): the buffers go back to the pool while empty, and
                // come again with the next bytes either way (see
                // `poll_hang_up`). Held, they cost every pending long-poll
                // 8 KiB and every held SSE stream 16 KiB. Never reached on
                // a response that completes at once.
                this.conn.buffers.release();
                return Poll::Pending;
            }
        }
    }
}

type Proj<'p, 'c, T, F, B> = ExchangeProj<'p, 'c, T, F, B>;

fn finished<T, F, B>(this: &mut Proj<'_, '_, T, F, B>) -> Outcome {
    if let Some(tx) = this.st.upgrading.take() {
        return Outcome::Upgrade(tx, this.st.native.take());
    }
    // A native stream's `200` (no `OnUpgrade`: the request asked for none,
    // and the sender is only there to fit the hand-over's shape).
    if let Some(to) = this.st.native.take() {
        return Outcome::Upgrade(tokio::sync::oneshot::channel().0, Some(to));
    }
    if this.st.setup.keep_alive {
        Outcome::KeepAlive
    } else {
        let reason = this.st.close_reason.unwrap_or(CloseReason::ServerClosed);
        Outcome::Close(reason.answered(this.st.record.sent()))
    }
}

/// An exchange cut short: its close reason is the request's error class
/// (panic, timeout, client gone), for its span.
fn ended_early<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, mut outcome: Outcome) -> Outcome {
    if let Outcome::Close(reason) = &mut outcome {
        *reason = reason.answered(this.st.record.sent());
        this.st.record.closed(reason);
    }
    outcome
}

/// `kind` passed: the handler's body read fails, a response not begun is
/// a `408`, and the connection closes. (A body that stalls is a read
/// timeout too, of the request's phase, whichever setting bounded it.)
fn timed_out<T: Parkable, F, B>(this: &mut Proj<'_, '_, T, F, B>, kind: DeadlineKind) -> Outcome {
    let stats = &this.conn.ctx.stats;
    incr(&stats.timeouts);
    let (reason, knob, answer) = match kind {
        DeadlineKind::Read => (
            CloseReason::ReadTimeout,
            "read_timeout",
            "the request was not received within read_timeout",
        ),
        // Runs from the response's head: no `408` after it.
        DeadlineKind::Write => (CloseReason::WriteTimeout, "write_timeout", ""),
        DeadlineKind::BodyStall => (
            CloseReason::ReadTimeout,
            "idle_timeout",
            "the request body sent nothing within idle_timeout",
        ),
        DeadlineKind::BodyRate => (
            CloseReason::ReadTimeout,
            "min_request_body_rate",
            "the request body came slower than min_request_body_rate",
        ),
    };
    if let Some(tx) = this.st.setup.body_tx.take() {
        tx.fail(BodyError::TimedOut);
    }
    match kind {
        // A client can stall a body at will: the line is rate-limited.
        DeadlineKind::BodyStall => ratelog::log(Flood::BodyStall, |suppressed| {
            tracing::info!(
                idle_timeout = %Timeout(this.conn.ctx.config.idle_timeout),
                suppressed,
                "an HTTP/1.1 request body sent nothing for idle_timeout while it was \
                 awaited; closing the connection"
            )
        }),
        // And a drip (a byte every few seconds): the line names the peer,
        // which an operator needs to block it.
        DeadlineKind::BodyRate => {
            LimitHit::MinRequestBodyRate.count(stats);
            ratelog::log(Flood::BodyTooSlow, |suppressed| {
                tracing::info!(
                    min_request_body_rate = this.conn.ctx.config.min_request_body_rate,
                    suppressed,
                    "an HTTP/1.1 request body from {} came slower than \
                     min_request_body_rate (bytes a second) while it was awaited; \
                     closing the connection",
                    super::conn::peer_name(this.conn)
                )
            })
        }
        // So is a slow request (a slowloris): at debug only, an operator
        // saw `closed{read_timeout}` counted but not from whom.
        DeadlineKind::Read => ratelog::log(Flood::Http1ReadTimeout, |suppressed| {
            tracing::info!(
                read_timeout = %Timeout(this.conn.ctx.config.read_timeout),
                suppressed,
                "an HTTP/1.1 request from {} did not complete within read_timeout; \
                 closing the connection",
                super::conn::peer_name(this.conn)
            )
        }),
        // The whole response's bound, from its head: a download longer
        // than it is cut here, also while its client reads steadily (a
        // write that waits logs its own line, `WRITES`). It logged at
        // debug only: counted, with no line saying which setting cut it.
        DeadlineKind::Write => ratelog::log(Flood::Http1WriteTimeout, |suppressed| {
            tracing::info!(
                write_timeout = %Timeout(this.conn.ctx.config.write_timeout),
                suppressed,
                "an HTTP/1.1 response to {} was not all written within {knob}; \
                 closing the connection",
                super::conn::peer_name(this.conn)
            )
        }),
    }
    if this.st.encoder.is_none() {
        answer_error(this, StatusCode::REQUEST_TIMEOUT, answer);
    }
    Outcome::Close(reason)
}

/// Answers `status` (with `reason` in its body) in place of the handler's
/// answer, which has not begun; the connection closes after it.
fn answer_error<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, status: StatusCode, reason: &str) {
    this.st.record.status(status);
    encode::encode_error(this.conn.wbuf(), status, reason);
}

/// Polls the handler; when it answers, writes the response head.
///
/// A panic in the handler's poll is caught here, around the poll, rather
/// than by a `CatchUnwind` around the future: its poll gave the answer back
/// inside one more `Result`, and the answer (a `Response`, 256 bytes for
/// the demo's) was moved once more for it (bench/CPU-PER-REQUEST.md,
/// session 38).
///
/// The poll's answer is written in a slot here, and a response is taken
/// apart where it lies ([`start_response`]): returned through the catch,
/// it was copied whole out of it, into `start_response`'s binding, and
/// again by `into_parts`, where the write into the slot is now the one
/// copy (~60 user-space instructions a request fewer, with `write_head`
/// inlined; bench/CPU-PER-REQUEST.md, session 43).
fn poll_handler<T, F, B, E>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let Some(handler) = this.handler.as_mut().as_pin_mut() else {
        return Ok(false);
    };
    let mut polled = std::mem::MaybeUninit::<Poll<Result<Response<B>, E>>>::uninit();
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| {
        polled.write(handler.poll(cx));
    })) {
        this.handler.set(None);
        return Err(handler_panicked(this, &panic));
    }
    // SAFETY: the closure returned, so it wrote `polled`. What it holds is
    // owned from here on by exactly one of the arms below; `polled` itself
    // is never dropped (a `MaybeUninit`).
    match unsafe { polled.assume_init_mut() } {
        Poll::Pending => Ok(false),
        Poll::Ready(Ok(response)) => {
            // Should the handler's future panic in its drop here, the
            // response in `polled` is dropped by this guard as the panic
            // unwinds (it would leak: `polled` is never dropped; a leaked
            // body holding a channel's end would keep its other side
            // waiting). Taken apart before this drop instead, it cost 43
            // user-space instructions a request more, as its parts were
            // kept across the call (bench/CPU-PER-REQUEST.md, session 43);
            // the guard is forgotten on the way that does not panic.
            let unwinding = DropOnUnwind(std::ptr::from_mut(response));
            this.handler.set(None);
            std::mem::forget(unwinding);
            // SAFETY: `response` is in `polled`, which is neither dropped
            // nor used after this call, which takes it apart.
            unsafe { start_response(this, response) }
        }
        Poll::Ready(Err(_)) => {
            this.handler.set(None);
            // SAFETY: initialised (above), read once, and not used after.
            let Poll::Ready(Err(e)) = (unsafe { polled.assume_init_read() }) else {
                unreachable!("matched as an error just above")
            };
            Err(service_failed(this, e.into()))
        }
    }
}

/// Drops what it points to if it is dropped: made just before a call
/// that may panic and forgotten after it, so that it runs only while that
/// panic unwinds (`poll_handler`: the response in its slot, which is never
/// dropped otherwise).
struct DropOnUnwind<R>(*mut R);

impl<R> Drop for DropOnUnwind<R> {
    fn drop(&mut self) {
        // SAFETY: only reached while a panic unwinds out of the call the
        // guard spans (it is forgotten after it), when what it points to
        // is initialised, not yet taken apart, and used by nothing after.
        unsafe { std::ptr::drop_in_place(self.0) }
    }
}

/// A response's head, taken out of the handler's response where its poll
/// left it ([`ResponseHead::take`]): what `write_head` encodes, and all
/// of the response but its body. (`http::response::Parts` cannot be made
/// from a `Response`'s fields without moving the whole response.)
struct ResponseHead {
    status: StatusCode,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl ResponseHead {
    /// Takes `response`'s head out of it: its headers and extensions each
    /// moved once; its body is left where it is, for the caller to move
    /// or drop in place (`start_response`).
    ///
    /// # Safety
    /// `response`'s headers and extensions must not be used or dropped
    /// after this call, nor the response as a whole (it lies in a
    /// `MaybeUninit` or a `ManuallyDrop`): they are moved out of it
    /// bitwise. What stays behind besides the body (the status and the
    /// version, both `Copy`, and `Parts`' private unit field) needs no
    /// drop; the test `response_head_takes_every_field_that_needs_a_drop`
    /// fails if `http` adds a field that may.
    #[inline(always)]
    unsafe fn take<B>(response: &mut Response<B>) -> ResponseHead {
        // SAFETY: each field is read once, and the caller neither uses nor
        // drops them after (above), so none is dropped twice.
        unsafe {
            ResponseHead {
                status: response.status(),
                headers: std::ptr::read(response.headers()),
                extensions: std::ptr::read(response.extensions()),
            }
        }
    }
}

/// The service's future failed: answer 500 and close.
#[cold]
fn service_failed<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, e: BoxError) -> Outcome {
    tracing::warn!(error = %e, "service returned an error; answering 500 (gRPC: grpc-status 13)");
    if answer_grpc(this, grpc::FAILED) {
        return Outcome::Close(CloseReason::ServerError);
    }
    fail_before_response(this, "the service failed", CloseReason::ServerError)
}

/// Answers a gRPC-web call whose handler failed as HTTP/2 answers one
/// (`200`, `grpc-status: 13` in the head: `service/grpc.rs`), where a text
/// `500` is read as a transport failure; false if it is no gRPC call.
#[cold]
fn answer_grpc<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, status: grpc::Status) -> bool {
    if !encode_grpc(status, this.st.setup.grpc, this.conn.wbuf()) {
        return false;
    }
    this.st.record.status(StatusCode::OK);
    true
}

/// Writes the HTTP/1.1 answer of a gRPC(-web) call that ends with `status`
/// before its response began (`grpc::Status::encode_http1`), with the
/// `Date` of proto's clock; false, writing nothing, for a request that is
/// no gRPC call.
fn encode_grpc(status: grpc::Status, grpc: Grpc, dst: &mut bytes::BytesMut) -> bool {
    crate::proto::date::with_now(|now| status.encode_http1(grpc, now.as_bytes(), dst))
}

/// The handler's future panicked: counted, logged; answer 500 and close.
#[cold]
fn handler_panicked<T, F, B>(
    this: &mut Proj<'_, '_, T, F, B>,
    panic: &Box<dyn std::any::Any + Send>,
) -> Outcome {
    incr(&this.conn.ctx.stats.panics);
    ratelog::panicked(
        "handler panicked; answering 500 (gRPC: grpc-status 13)",
        Some(panic_message(panic)),
    );
    if answer_grpc(this, grpc::PANICKED) {
        return Outcome::Close(CloseReason::Panic);
    }
    fail_before_response(this, "the handler panicked", CloseReason::Panic)
}

/// Whether this gRPC(-web) call is to end for the drain
/// (`LocalShutdown::end_calls`, a margin before its deadline), and if so
/// ends it with `grpc-status: 14` (UNAVAILABLE, which gRPC clients retry)
/// as HTTP/2 ends its calls (`proto/http2.rs`, `CutWatch`), where the close
/// at the deadline left its client a broken response; else the exchange
/// is woken when it is. Asked only when nothing else in the exchange
/// moves, so a response body waits between frames: each of its frames
/// went whole into the write buffer (tonic-web's frames hold whole
/// messages).
///
/// - No response yet (the handler runs, or its head waits for `100
///   Continue`): the handler and what it answered are dropped, and the
///   call answered trailers-only (`200`, the status in the head), as a
///   panicking handler's is; the connection closes after it.
/// - The response streams (chunked, or close-delimited on HTTP/1.0): the
///   body is dropped, a gRPC-web trailer frame with the status goes where
///   its next message would, and the body ends there; the connection
///   closes once it is written (its head may have said keep-alive, sent
///   before the drain began).
/// - Else it is left to the deadline, as before: a body of a declared
///   length has no room for a frame, native gRPC over HTTP/1.1 has no
///   trailer frame (and its client no HTTP/1.1), and a response whose
///   body ended has nothing more to say (what of it waits in the buffer,
///   for a client that does not read, stays there: see the README).
#[inline(never)]
fn poll_call_end<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step {
    let Some(slot) = this.st.call.as_mut() else {
        return Ok(false);
    };
    if !this.conn.ctx.shutdown.poll_call_end(slot, cx) {
        return Ok(false);
    }
    // Its slot went back as it ended.
    this.st.call = None;
    end_call(this)
}

/// [`poll_call_end`]'s end of the call, once it is to end.
#[cold]
fn end_call<T, F, B>(this: &mut Proj<'_, '_, T, F, B>) -> Step {
    let status = grpc::SHUTTING_DOWN;
    if this.st.encoder.is_none() {
        this.handler.set(None);
        this.body.set(None);
        this.st.deferred_head = None;
        this.st.record.error(ErrorClass::Shutdown);
        // Any gRPC `content-type`: written.
        answer_grpc(this, status);
        return Err(Outcome::Close(CloseReason::Shutdown));
    }
    let streams = this.body.is_some() && this.st.upgrading.is_none();
    let framed = matches!(
        this.st.encoder,
        Some(Encoder::Chunked | Encoder::CloseDelimited)
    );
    if !(streams && framed) {
        return Ok(false);
    }
    let Some(frame) = status.web_trailer_frame(this.st.setup.grpc) else {
        return Ok(false);
    };
    this.body.set(None);
    this.st.response_done = true;
    this.st.record.error(ErrorClass::Shutdown);
    this.st.record.response_bytes(frame.len());
    let encoder = this.st.encoder.as_mut().expect("head written before body");
    let wbuf = this.conn.wbuf();
    // A large frame not all written goes first (copied: nothing may be
    // buffered behind it).
    if let Some(held) = this.st.unbuffered.take() {
        (*held).copy_into(wbuf);
    }
    encoded(encoder.encode_data(&frame, wbuf))?;
    encoded(encoder.finish(None, &[], wbuf))?;
    this.st.setup.keep_alive = false;
    this.st.close_reason = Some(CloseReason::Shutdown);
    Ok(true)
}

/// The handler failed without a response: answer 500 and close.
fn fail_before_response<T, F, B>(
    this: &mut Proj<'_, '_, T, F, B>,
    reason: &'static str,
    close: CloseReason,
) -> Outcome {
    answer_error(this, StatusCode::INTERNAL_SERVER_ERROR, reason);
    Outcome::Close(close)
}

// Inlined into its one caller, so that the response is taken apart where
// the handler's poll left it, not copied first into this function's
// argument (256 bytes for the demo's; bench/CPU-PER-REQUEST.md, session 38).
//
// # Safety
// As [`ResponseHead::take`]'s: `response` is not used or dropped after.
#[inline(always)]
unsafe fn start_response<T, F, B>(
    this: &mut Proj<'_, '_, T, F, B>,
    response: &mut Response<B>,
) -> Step
where
    T: Parkable,
    B: HttpBody<Data = Bytes>,
{
    // What decides where the body goes is read from the response where
    // it lies, and the body is then moved once, straight into its pinned
    // place (or dropped where it is): taken out with the head first, it
    // was copied to the stack and from there into its place, two 144-byte
    // `memcpy` calls for the demo's (bench/CPU-PER-REQUEST.md, session 44).
    let status = response.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS
        || (this.st.setup.is_connect && status.is_success());
    // A `200` a protocol of the server's own streams the body of (the SSE
    // route's): its head goes as a body of unknown length's (chunked, or
    // close-delimited for HTTP/1.0), the body is that protocol's, which
    // gets the socket as after a native `101` (`finished`).
    let native_stream = !switching
        && status == StatusCode::OK
        && !this.st.setup.is_head
        && response.extensions().get::<NativeUpgrade>().is_some();
    // (A switch without an upgrade to take, and a 1xx other than 101, are
    // answered 500 below, and have no body either.)
    let has_body = !(this.st.setup.is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || switching
        || native_stream);
    // (The handler's `Content-Length` takes precedence: `encode_head`.)
    // `size_hint` is the handler's code: should it panic, the whole
    // response is dropped as the panic unwinds, as when its parts were
    // locals here (the guard is forgotten on the way that does not panic).
    let unwinding = DropOnUnwind(std::ptr::from_mut(response));
    let body_length = response
        .body()
        .size_hint()
        .exact()
        .filter(|_| !native_stream);
    std::mem::forget(unwinding);
    // SAFETY: passed on from this function's contract; the body is moved
    // or dropped just below, once, and nothing of `response` is used after.
    let mut head = unsafe { ResponseHead::take(response) };
    if has_body {
        // SAFETY: the body is read once, here, and never dropped in place.
        this.body
            .set(Some(unsafe { std::ptr::read(response.body()) }));
    } else {
        // SAFETY: the body is dropped once, here, and never read. (Should
        // its drop panic, the head, a local by now, is dropped as before.)
        unsafe { std::ptr::drop_in_place(response.body_mut()) };
    }
    if native_stream {
        this.st.native = head.extensions.remove::<NativeUpgrade>();
    }
    if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
        // A 1xx is interim: sent as the answer, the client would wait for a
        // final one that never comes. hyper answers 500 and closes too.
        tracing::warn!(
            status = head.status.as_u16(),
            "handler returned an informational (1xx) status as its response; answering 500. \
             Return a final status (200 or more): interim responses cannot be sent from a \
             handler (megaconn sends `100 Continue` itself when the handler reads the body)"
        );
        return Err(fail_before_response(
            this,
            "the handler answered with an informational status",
            CloseReason::ServerError,
        ));
    }
    // Not for the native route's own refusals (a bad handshake's `426`),
    // and held to one line per interval: a peer can send such requests at
    // will.
    #[cfg(feature = "axum")]
    if head.status == StatusCode::UPGRADE_REQUIRED
        && this.st.setup.upgrade.is_some()
        && head
            .extensions
            .get::<crate::service::upgrade::NativeRefusal>()
            .is_none()
    {
        ratelog::log(Flood::UnclaimedUpgrade, |suppressed| {
            tracing::warn!(
                suppressed,
                "{}",
                crate::service::ws_axum::WRONG_EXTRACTOR_HINT
            );
        });
    }
    if switching {
        match this.st.setup.upgrade.take() {
            Some(tx) => {
                this.st.upgrading = Some(tx);
                this.st.native = head.extensions.remove::<NativeUpgrade>();
            }
            None => {
                tracing::error!("handler answered 101 to a request that did not ask to upgrade");
                return Err(fail_before_response(
                    this,
                    "the handler switched protocols without an upgrade request",
                    CloseReason::ServerError,
                ));
            }
        }
    }
    if !has_body {
        this.st.response_done = true;
    }
    // While the client waits for `100 Continue`, the head waits for the body's
    // first frame: a body that streams the request (an echo) asks for the
    // request body first, and `100 Continue` must precede the final head.
    if has_body && this.st.setup.expect == Continue::Awaiting && this.st.setup.decoder.is_some() {
        this.st.deferred_head = Some((head, body_length));
    } else {
        write_head(this, head, body_length);
    }
    Ok(true)
}

/// [`write_head`] for a head held for `100 Continue` (`deferred_head`),
/// taken out of its slot here: the rare path keeps its own copy of it out
/// of line, and the body's frames, which call this only when a head is
/// held, do not take the slot (a 140-byte `Option`) apart each time.
#[inline(never)]
fn write_held_head<T, F, B>(this: &mut Proj<'_, '_, T, F, B>)
where
    T: Parkable,
{
    if let Some((head, body_length)) = this.st.deferred_head.take() {
        write_head(this, head, body_length);
    }
}

/// Encodes the response head and picks the body encoder.
///
/// Inlined where the handler's response is taken apart (`start_response`),
/// so that the head is not copied into this function's argument (~20
/// user-space instructions a request; bench/CPU-PER-REQUEST.md, session 43).
#[inline(always)]
fn write_head<T, F, B>(
    this: &mut Proj<'_, '_, T, F, B>,
    head: ResponseHead,
    body_length: Option<u64>,
) where
    T: Parkable,
{
    let ctx = &this.conn.ctx;
    let mut keep_alive =
        this.st.setup.keep_alive && ctx.config.keep_alive && !ctx.shutdown.is_started();
    if keep_alive
        && this
            .conn
            .retire_at
            .is_some_and(|t| tokio::time::Instant::now() >= t)
    {
        // max_connection_age: this answer says `Connection: close`.
        keep_alive = false;
        ctx.aged_out();
    }
    if this.st.setup.expect != Continue::NotExpected && expect_unfinished(this.st) {
        keep_alive = false;
    }
    let server_header = ctx.config.server_header.clone();
    this.st.record.response(head.status, &head.extensions);
    let head_ctx = HeadContext {
        request_method_is_head: this.st.setup.is_head,
        request_version: this.st.setup.version,
        keep_alive,
        body_length,
        switching: this.st.upgrading.is_some(),
    };
    crate::observe::lifecycle::set_state(crate::ConnectionState::Writing);
    let (encoder, keep_alive) = encode::encode_head(
        this.conn.wbuf(),
        head.status,
        &head.headers,
        head_ctx,
        server_header.as_ref(),
    );
    if this.st.setup.te_trailers && encoder == Encoder::Chunked {
        *this.st.declared_trailers = encode::declared_trailers(&head.headers);
    }
    // (An event stream has no length known ahead: a sized response, the
    // usual one, pays no header lookup for this.)
    if body_length.is_none() && is_event_stream(&head.headers) {
        bound_event_stream(this.conn);
    }
    super::header_maps::give(head.headers);
    this.st.setup.keep_alive = keep_alive && this.st.upgrading.is_none();
    this.st.encoder = Some(encoder);
    // `write_timeout` runs from the head, not from the handler's answer: a
    // head held back for `100 Continue` waits on the request body, which
    // `read_timeout` bounds (and a 408 would name the wrong timeout).
    if let Some(t) = this.conn.ctx.config.write_timeout {
        this.deadline.set(Some(tokio::time::sleep(t)));
        this.st.deadline_kind = DeadlineKind::Write;
    }
}

/// Whether the head of an answer to `Expect: 100-continue` goes out
/// before the body was read to its end: then the connection closes after
/// it, and the head says so (`Connection: close`). Go's rule
/// (`chunkWriter.writeHeader`, Go issue 11549); RFC 9110 §10.1.1 (a
/// server that answers with a final status before reading the whole
/// content should say whether it will close the connection or read on)
/// and RFC 9112 §9.6 (`close` in the last answer of a connection that
/// closes). The client may be sending the body after a timer of its own
/// (curl waits 1 s), so the next bytes may be that body or a next
/// request: nothing here can tell. And where `100 Continue` went out (a
/// proxy's upstream client polled the body at once; its upstream then
/// answered without reading it) the handler may drop the body unread, so
/// that the close came after a head that said keep-alive: found by
/// session 55's proxy review, a 10 MB upload answered early.
///
/// Read to its end: its end decoded, or all of a `Content-Length` body in
/// (its end is then decoded at the next read, nothing of it left on the
/// wire: an echo of a small body, whose head waits for its first frame,
/// keeps its connection).
///
/// Without `100 Continue` sent, the client holds the body back and nobody
/// asked for it: nothing of it is read (`UnreadBody`, which lingers). With
/// it sent, a handler still reading reads on (a streamed echo); one that
/// drops the body leaves it to the drain, which closes at once after a
/// head that said close (`drain_body`).
#[cold]
fn expect_unfinished(st: &mut State) -> bool {
    let unfinished = st
        .setup
        .decoder
        .as_ref()
        .is_some_and(|d| d.remaining() != Some(0));
    if unfinished && st.setup.expect == Continue::Awaiting {
        st.close_reason = Some(CloseReason::UnreadBody);
    }
    unfinished
}

/// Whether a response is a stream of server-sent events
/// (`Content-Type: text/event-stream`, any parameters, any case).
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let essence = value.as_bytes().split(|&b| b == b';').next().unwrap_or(&[]);
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"text/event-stream")
}

/// Gives an event stream's connection the send buffer of a message
/// connection ([`Builder::message_send_buffer_size`](crate::Builder::message_send_buffer_size),
/// 256 KiB by default), as a WebSocket's at its upgrade: it is one in all
/// but name, a response held for good that the server pushes small events
/// down. With the kernel's autotuning a reader that stopped reading held up
/// to `tcp_wmem`'s maximum (4 MiB by default) of the server's memory until
/// `write_stall_timeout` cut it, 60 s later; bounded, the events queue
/// behind that much at most, and the stall bound still cuts it.
///
/// Only event streams, at their head: a rule for every long-lived or
/// unknown-length response would cap downloads, which need a send buffer
/// of their bandwidth-delay product (a 256 KiB buffer caps a 100 ms round
/// trip at ~2.6 MB/s), and a response's length says nothing of its life.
/// A long-poll is one small response (it needs no bound: it is written at
/// once when its event comes), and any other stream of the server's own
/// making can say `text/event-stream`, or use a WebSocket. The connection
/// keeps the smaller buffer for the requests after the stream ends, which
/// an event stream's client seldom sends. On a socket that is no TCP
/// socket of ours (a caller's transport) nothing is done; on HTTP/2 a
/// stream shares its connection's buffer, which keeps the autotuning.
///
/// Its peer gone without a FIN (a phone off the network) is found as the
/// native protocols' are, by `TCP_USER_TIMEOUT` at twice their write bound
/// and a second (`socket::bound_unacknowledged`): an event stream's writes
/// are small and the socket takes them, so no write of ours stalls to find
/// it, and it lingered until the kernel's ~16 minutes of retransmissions
/// (found by helper `halfopen`, session 46).
fn bound_event_stream<T: Parkable>(conn: &ConnIo<T>) {
    if let Some(fd) = conn.io.lot_fd() {
        crate::conn::socket::bound_message_send_buffer(fd, &conn.ctx.config);
        crate::conn::socket::bound_unacknowledged(
            Some(fd),
            crate::message::MessageSettings::write_limit_without_heartbeat(&conn.ctx.config),
        );
    }
}

/// Moves request body bytes from the socket to the handler, or drains what the
/// handler left unread; once the body is done, watches for the client hanging up.
fn poll_request_body<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
{
    if this.st.setup.decoder.is_none() {
        return Ok(false);
    }
    if let Some(tx) = this.st.setup.body_tx.as_mut() {
        match tx.poll_demand(cx) {
            Poll::Pending => return Ok(false),
            Poll::Ready(Demand::Gone) => {
                // What is left is drained, under a bound of its own.
                *this.st.setup.body_tx = None;
                this.st.body_stall = None;
                if let Some(rate) = this.st.body_rate.as_deref_mut() {
                    // (The drain's waits are the client's again once the
                    // response is done: `body_too_slow`.)
                    rate.handler_gone(clock::now());
                }
                return Ok(true);
            }
            Poll::Ready(Demand::Ready) => {}
        }
        // Only before the final head: after it, a `100 Continue` would land
        // in the response (its body, even). The body is then read only if
        // the client sends it unasked (hyper does the same); `Awaiting`
        // stays, so that a body nobody reads in the end is not waited for.
        if this.st.setup.expect == Continue::Awaiting && this.st.encoder.is_none() {
            this.conn.wbuf().extend_from_slice(encode::CONTINUE);
            this.st.setup.expect = Continue::Sent;
        }
        return feed_body(this, cx);
    }
    if this.st.setup.expect == Continue::Awaiting {
        // Nobody will read the body and the client will not send it unasked.
        body_done(this);
        this.st.setup.keep_alive = false;
        this.st.close_reason = Some(CloseReason::UnreadBody);
        return Ok(true);
    }
    drain_body(this, cx)
}

/// Decodes one event for the handler, reading from the socket if needed.
fn feed_body<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
{
    let max_body = this.conn.ctx.config.max_body_bytes;
    loop {
        let (rbuf, io) = this.conn.rbuf_and_io();
        let decoder = this.st.setup.decoder.as_mut().expect("checked by caller");
        let event = decoder.decode(rbuf, MAX_BODY_CHUNK);
        match event {
            Ok(Decoded::Data(data)) => {
                this.st.body_bytes += data.len() as u64;
                this.st.record.request_bytes(data.len());
                let tx = this.st.setup.body_tx.as_mut().expect("checked by caller");
                if this.st.body_bytes > max_body {
                    tx.send_past_limit(data, this.st.body_bytes - max_body);
                    return body_too_large(this, max_body);
                }
                tx.send_data(data);
                return Ok(true);
            }
            Ok(Decoded::End(trailers)) => {
                body_done(this);
                if this.st.encoder.is_none() {
                    crate::observe::lifecycle::set_state(crate::ConnectionState::Handling);
                }
                if let Some(tx) = this.st.setup.body_tx.take() {
                    tx.finish(trailers);
                }
                return Ok(true);
            }
            Ok(Decoded::NeedMore) => match ready_or_pending(read_more(io, rbuf, cx))? {
                None if body_stalled(this, cx) => {
                    return Err(timed_out(this, DeadlineKind::BodyStall));
                }
                None if body_too_slow(this, cx) => {
                    return Err(timed_out(this, DeadlineKind::BodyRate));
                }
                None => return Ok(false),
                Some(0) => {
                    give_up_body(this, BodyError::Incomplete);
                    this.st.close_reason = Some(CloseReason::ClientClosed);
                    return Ok(true);
                }
                Some(n) => body_progressed(this, n),
            },
            Err(why) => {
                body_malformed(this, why);
                return Ok(true);
            }
        }
    }
}

/// The request body went over `max_body_bytes` (`limit`) as it came (a
/// chunked one; a Content-Length over it is refused with the head,
/// `head.rs`). Counted and logged as that one, and it closes with the same
/// reason (`protocol_error`; it said `unread_body`), whose status is the
/// one the handler answered ([`CloseReason::answered`]). The
/// handler's body read fails ([`BodyError::TooLarge`], axum's
/// `LengthLimitError`, after the bytes up to one past the limit:
/// `BodySender::send_past_limit`) and the handler answers, as
/// under `axum::serve` (an app that streams an upload to a file answers
/// its own `413`: replacing it with megaconn's broke that drop-in); the
/// connection closes after the answer.
fn body_too_large<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, limit: u64) -> Step {
    ratelog::log(Flood::BodyTooLarge, |suppressed| {
        tracing::info!(
            limit,
            suppressed,
            "request body over max_body_bytes; closing after the response"
        )
    });
    incr(&this.conn.ctx.stats.protocol_errors);
    LimitHit::MaxBodyBytes.count(&this.conn.ctx.stats);
    give_up_body(this, BodyError::TooLarge { limit });
    this.st.close_reason = Some(CloseReason::status(StatusCode::PAYLOAD_TOO_LARGE));
    Ok(true)
}

/// The request body broke its chunked framing (`why`), whether the handler
/// reads it or the exchange drains what it left unread: counted
/// (`protocol_errors`, `limit_hits{malformed_request}`), logged
/// (rate-limited), and the connection closes after the response, as
/// `protocol_error` with that response's status ([`CloseReason::answered`]:
/// a handler that answered `200` without reading closed as a `400` no one
/// was sent). A body drained was given up silently, closing as
/// `unread_body`: the same bytes were seen or not as the handler read its
/// body or not.
fn body_malformed<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, why: &'static str) {
    ratelog::log(Flood::MalformedBody, |suppressed| {
        tracing::info!(
            reason = why,
            suppressed,
            "malformed request body; closing after the response"
        )
    });
    incr(&this.conn.ctx.stats.protocol_errors);
    LimitHit::MalformedRequest.count(&this.conn.ctx.stats);
    give_up_body(this, BodyError::Malformed(why));
    this.st.close_reason = Some(CloseReason::status(StatusCode::BAD_REQUEST));
}

/// Whether the handler, waiting for body bytes the socket does not have,
/// has waited `idle_timeout` with none coming ([`BodyStall`]); else the
/// task is woken when it would have. Only with `read_timeout` off, which
/// otherwise bounds the whole body. A body the handler left unread is
/// drained by the exchange, which, once the handler and its response are
/// done, has nothing else to wait for: its wait is bounded the same way.
///
/// A bound that passes with no bytes first wakes the handler's wait
/// ([`BodySender::ask_again`]) and then awaits its answer: a handler that
/// still waits polls the body again (in this task or in its own, which
/// wakes this one), and is cut then; one that polled the body once and
/// then gave up that wait (a timeout of its own), keeping the body, does
/// not, and after one more bound without an answer it is taken for not
/// waiting. (The answer used to be looked for at this task's next poll
/// only: a body read in a task of its own had not polled again yet, so
/// its wait was taken for given up, and the bound started over, at every
/// pass: such a body was never cut.)
fn body_stalled<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> bool {
    let config = &this.conn.ctx.config;
    let (None, Some(after)) = (config.read_timeout, config.idle_timeout) else {
        return false;
    };
    let waiting = match this.st.setup.body_tx.as_mut() {
        Some(tx) => tx.poll_awaited(cx),
        None => this.handler.is_none() && this.st.response_done,
    };
    let asked = this.st.body_stall.as_ref().is_some_and(|stall| stall.asked);
    if !waiting && !asked {
        this.st.body_stall = None;
        return false;
    }
    let stall = this.st.body_stall.get_or_insert_with(|| {
        Box::new(BodyStall {
            bound: LazyDeadline::after(Some(after)),
            progressed: false,
            asked: false,
        })
    });
    if stall.asked {
        if waiting && !stall.progressed {
            // Woken, the handler still waits, and nothing came.
            return true;
        }
        if !stall.progressed && !stall.bound.poll_passed(cx) {
            return false;
        }
        // Bytes came since (a new wait), or no answer within a bound (the
        // wait was given up).
        stall.asked = false;
        if !waiting {
            this.st.body_stall = None;
            return false;
        }
        stall.progressed = false;
        stall.bound.restart(after);
    }
    let progressed = &mut stall.progressed;
    if !stall
        .bound
        .poll_stalled(cx, after, || std::mem::take(progressed))
    {
        return false;
    }
    let Some(tx) = this.st.setup.body_tx.as_mut() else {
        return true;
    };
    tx.ask_again(cx);
    stall.asked = true;
    stall.bound.restart(after);
    // Arms the timer of the wait for an answer.
    let _ = stall.bound.poll_passed(cx);
    false
}

/// `n` bytes of the body came: a bound of the handler's wait, if one
/// runs, starts again when it would pass ([`BodyStall`]), and they earn
/// their client waiting time ([`BodyRate`]).
fn body_progressed<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, n: usize) {
    if let Some(stall) = this.st.body_stall.as_deref_mut() {
        stall.progressed = true;
    }
    if let (Some(rate), Some(per_second)) = (
        this.st.body_rate.as_deref_mut(),
        this.conn.ctx.config.min_request_body_rate,
    ) {
        rate.earned(n, per_second);
    }
}

/// Whether the client of a body the handler waits for (or the exchange
/// drains, its response done) has spent the waiting its bytes earned
/// ([`BodyRate`], `min_request_body_rate`); else the task is woken when
/// it would have. Called where [`body_stalled`] is: the handler's wait
/// found the socket empty.
///
/// A wait that spends the credit is cut at once while the exchange
/// drains. A handler's is first woken ([`BodySender::ask_again`]), as the
/// stall's bound does, and cut when it polls again with nothing come
/// since: one that polled once and then gave up that wait, keeping the
/// body, is not cut for a silence it does not wait on (its time is not
/// spent meanwhile: no wait is open until it polls again, and then, the
/// credit spent, it is cut unless bytes came).
fn body_too_slow<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> bool {
    let config = &this.conn.ctx.config;
    let Some(per_second) = config.min_request_body_rate else {
        return false;
    };
    let grace = config.min_request_body_rate_grace;
    let waiting = match this.st.setup.body_tx.as_mut() {
        Some(tx) => tx.poll_awaited(cx),
        None => this.handler.is_none() && this.st.response_done,
    };
    let now = clock::now();
    let rate = match this.st.body_rate.as_deref_mut() {
        Some(rate) => rate,
        None if !waiting => return false,
        None => {
            // What came before the first wait counts (a client that sent
            // 64 KiB at once, then paused, is not cut at the grace).
            let bytes = this.st.body_bytes + this.st.drained;
            let rate = BodyRate::new(grace, bytes, per_second, now);
            this.st.body_rate.insert(Box::new(rate))
        }
    };
    if !waiting {
        // Its wait was woken (by this or by the stall's bound) and not
        // taken up again yet: not the client's time.
        rate.close_wait(now);
        return false;
    }
    if rate.is_asked() {
        // Woken with its credit spent, it waits again, and nothing came.
        return true;
    }
    if !rate.poll_spent(now, cx) {
        return false;
    }
    let Some(tx) = this.st.setup.body_tx.as_mut() else {
        return true;
    };
    rate.asking(now);
    tx.ask_again(cx);
    false
}

/// Most of a request body looked for when `read_timeout` passes
/// ([`body_received`]): the buffer is read into up to this much.
const RECEIVED_LOOK_AHEAD: usize = 64 * 1024;

/// Whether the rest of the request body has been received, though the
/// handler has not read it yet (it is in the read buffer, or in the
/// socket's and fits [`RECEIVED_LOOK_AHEAD`]): asked when `read_timeout`
/// passes, which then stops, as it does when the body is read. It bounds
/// the client's sending, not the handler: one that authenticated or
/// queried a database for longer before it read a small body that came
/// with its head got its client a `408` (review52, defect 1; Go's
/// `ReadTimeout` answers `200` there, the bytes being in its buffer). A
/// body still on its way, or more of it than the look-ahead, is cut as
/// before. Looked at only then, so a request pays nothing for it; a
/// chunked body is decoded to its end on a copy (at most the look-ahead).
#[cold]
#[inline(never)]
fn body_received<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> bool
where
    T: Parkable,
{
    loop {
        let Some(decoder) = this.st.setup.decoder.as_ref() else {
            return false;
        };
        let (rbuf, io) = this.conn.rbuf_and_io();
        let whole = match decoder.remaining() {
            Some(left) => left <= rbuf.len() as u64,
            None => {
                let (mut decoder, mut copy) = (decoder.clone(), BytesMut::from(&rbuf[..]));
                loop {
                    match decoder.decode(&mut copy, usize::MAX) {
                        Ok(Decoded::Data(_)) => {}
                        Ok(Decoded::End(_)) => break true,
                        Ok(Decoded::NeedMore) | Err(_) => break false,
                    }
                }
            }
        };
        if whole || rbuf.len() >= RECEIVED_LOOK_AHEAD {
            return whole;
        }
        match read_more(io, rbuf, cx) {
            Poll::Ready(Ok(n)) if n > 0 => body_progressed(this, n),
            // Nothing more came (or the client left): on its way, if at all.
            _ => return false,
        }
    }
}

/// Nothing more of the request is read: `read_timeout`, which bounds only
/// that, stops (a handler slower than it, after the body, is not a 408),
/// and so does the bound of the handler's wait for it.
fn body_done<T, F, B>(this: &mut Proj<'_, '_, T, F, B>) {
    this.st.setup.decoder = None;
    if this.st.deadline_kind == DeadlineKind::Read {
        this.deadline.set(None);
    }
    this.st.body_stall = None;
    this.st.body_rate = None;
}

/// Why the connection closes when the response body failed mid-stream.
///
/// When the request's body failed first (`close_reason` set) and the
/// response's error comes from it (a handler streaming back an upload the
/// client framed wrong, broke off or made larger than `max_body_bytes`),
/// the client did it: that was counted and logged, rate-limited, when the
/// request body failed, and the close keeps that reason. Otherwise the
/// service's own body failed, a server error, logged at warn, rate-limited
/// too: a peer can make a handler's body fail request after request.
fn response_body_failed(close_reason: &Option<CloseReason>, e: &BoxError) -> CloseReason {
    let source: &(dyn std::error::Error + 'static) = &**e;
    let from_request = std::iter::successors(Some(source), |e| e.source())
        .any(|e| e.is::<BodyError>() || e.is::<http_body_util::LengthLimitError>());
    match close_reason {
        Some(reason) if from_request => {
            tracing::debug!(error = %e, "response body failed with the request body; closing");
            *reason
        }
        _ => {
            ratelog::log(
                Flood::ResponseBodyFailed,
                |suppressed| tracing::warn!(error = %Causes(source), suppressed, "response body failed mid-stream; closing"),
            );
            CloseReason::ServerError
        }
    }
}

/// Stops reading the body: the handler sees `error`, the connection closes.
fn give_up_body<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, error: BodyError) {
    body_done(this);
    this.st.setup.keep_alive = false;
    if this.st.close_reason.is_none() {
        this.st.close_reason = Some(CloseReason::UnreadBody);
    }
    if let Some(tx) = this.st.setup.body_tx.take() {
        tx.fail(error);
    }
}

/// Whether the handler dropped the request body with more of it left, by
/// its `Content-Length`, than `max_drain_bytes` lets the exchange read
/// away ([`drain_refused`]). A chunked body's length is not known: it is
/// drained up to the bound.
#[inline(never)]
fn unread_past_drain<T, F, B>(this: &Proj<'_, '_, T, F, B>) -> bool {
    let Some(left) = this.st.setup.decoder.as_ref().and_then(Decoder::remaining) else {
        return false;
    };
    let dropped = this
        .st
        .setup
        .body_tx
        .as_ref()
        .is_none_or(BodySender::is_dropped);
    dropped
        && left
            > this
                .conn
                .ctx
                .config
                .max_drain_bytes
                .saturating_sub(this.st.drained)
}

/// A body the handler left unread is longer than `max_drain_bytes`, known
/// by its length or found by draining it: nothing more of it is read, and
/// the connection closes after the response; counted. Reading megabytes
/// nobody wants to save a handshake is a bad trade, and a client can send
/// them at will; Go stops at the same 256 KiB (`maxPostHandlerReadBytes`).
///
/// The response's head is not changed for it (Go's says `Connection:
/// close`): hyper, under `axum::serve`, sends its head as it is and closes
/// after it, and a drop-in's answers are the same bytes
/// (`tests/dropin/files.rs` compares them). The close tells the client,
/// and the lingering close reads what it is still sending for a moment,
/// so that it sees the answer, not a reset.
#[cold]
fn drain_refused<T, F, B>(this: &mut Proj<'_, '_, T, F, B>) {
    let limit = this.conn.ctx.config.max_drain_bytes;
    LimitHit::MaxDrainBytes.count(&this.conn.ctx.stats);
    tracing::debug!(
        limit,
        "unread request body over max_drain_bytes; closing after the response"
    );
    give_up_body(this, BodyError::Incomplete);
}

/// Reads and discards a body the handler did not read, up to `max_drain_bytes`,
/// so the next request on the connection starts in the right place.
fn drain_body<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
{
    // Answered, and nothing after this answer will be read here (its
    // `Connection: close`, an HTTP/1.0 client's): a body nobody reads is
    // not worth waiting for, and a client that declared one and never
    // sends it would hold the connection. The close reads away what came
    // for a moment, so the client sees the answer, not a reset.
    if this.st.response_done && !this.st.setup.keep_alive {
        body_done(this);
        // A reason that lingers: the body may still be on its way, and a
        // close with unread bytes would reset the answer.
        this.st.close_reason.get_or_insert(CloseReason::UnreadBody);
        return Ok(true);
    }
    if unread_past_drain(this) {
        drain_refused(this);
        return Ok(true);
    }
    let max_drain = this.conn.ctx.config.max_drain_bytes;
    let mut progress = false;
    loop {
        let (rbuf, io) = this.conn.rbuf_and_io();
        let decoder = this.st.setup.decoder.as_mut().expect("checked by caller");
        match decoder.decode(rbuf, usize::MAX) {
            Ok(Decoded::Data(data)) => {
                this.st.drained += data.len() as u64;
                this.st.record.request_bytes(data.len());
                progress = true;
                if this.st.drained > max_drain {
                    drain_refused(this);
                    return Ok(true);
                }
            }
            Ok(Decoded::End(_)) => {
                body_done(this);
                return Ok(true);
            }
            Ok(Decoded::NeedMore) => match ready_or_pending(read_more(io, rbuf, cx))? {
                None if body_stalled(this, cx) => {
                    return Err(timed_out(this, DeadlineKind::BodyStall));
                }
                None if body_too_slow(this, cx) => {
                    return Err(timed_out(this, DeadlineKind::BodyRate));
                }
                None => return Ok(progress),
                Some(0) => {
                    give_up_body(this, BodyError::Incomplete);
                    this.st.close_reason = Some(CloseReason::ClientClosed);
                    return Ok(true);
                }
                Some(n) => {
                    body_progressed(this, n);
                    progress = true;
                }
            },
            Err(why) => {
                body_malformed(this, why);
                return Ok(true);
            }
        }
    }
}

/// While the handler runs (or the response streams) with the request fully read,
/// reads ahead: EOF means the client left, which cancels the handler.
///
/// Only while the read buffer is empty, as hyper does: once it holds bytes
/// (a pipelined request), an EOF behind them is a client that sent all it
/// had and half-closed, and it still waits for the answers. The connection
/// reads on, and finds the EOF, after those requests.
///
/// It waits for the socket's readiness holding no buffer, and takes one
/// from the pool only to read; a read that finds nothing leaves it empty,
/// and the exchange gives it back as it waits (`Exchange::poll`). Bytes
/// that do come are the next pipelined request's, and stay in the read
/// buffer for the connection. (The read buffer kept across the wait held
/// 8 KiB for every pending long-poll and held SSE stream.)
fn poll_hang_up<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Transport,
{
    if this.st.response_done || this.st.upgrading.is_some() || this.conn.rbuf_len() > 0 {
        return Ok(false);
    }
    match this.conn.io.poll_read_ready(cx) {
        Poll::Pending => return Ok(false),
        Poll::Ready(Err(e)) => return Err(left_by_error(this, CloseReason::io(&e))),
        Poll::Ready(Ok(())) => {}
    }
    let (rbuf, io) = this.conn.rbuf_and_io();
    match ready_or_pending(read_more(io, rbuf, cx)) {
        Err(Outcome::Close(reason)) => Err(left_by_error(this, reason)),
        Err(outcome) => Err(outcome),
        Ok(None) => Ok(false),
        Ok(Some(0)) => {
            count_client_left(this);
            Err(Outcome::Close(CloseReason::ClientClosed))
        }
        Ok(Some(_)) => Ok(true),
    }
}

/// Counts the client gone while the exchange ran: the handler it cancels,
/// or the response body it cut.
fn count_client_left<T, F, B>(this: &Proj<'_, '_, T, F, B>) {
    if this.handler.is_some() {
        incr(&this.conn.ctx.stats.cancelled);
        tracing::debug!("client closed the connection while the handler ran; handler cancelled");
    } else if this.body.is_some() {
        // Answered, the body still streaming (SSE, chunked tokens):
        // counted apart, or the cut would look like a whole 2xx.
        incr(&this.conn.ctx.stats.responses_cut);
        tracing::debug!("client closed the connection while the response body streamed");
    }
}

/// The close for socket error `reason` met while the exchange ran, counted
/// as the client gone ([`count_client_left`]) when it is a reset, an abort
/// or a broken pipe: a client that closes with our bytes unread (an
/// aborted download, a proxy's client leaving mid-body) resets rather than
/// sends a FIN. Before session 55 only a FIN was counted.
fn left_by_error<T, F, B>(this: &Proj<'_, '_, T, F, B>, reason: CloseReason) -> Outcome {
    if let CloseReason::Io(kind) = reason {
        if client_left_kind(kind) {
            count_client_left(this);
        }
    }
    Outcome::Close(reason)
}

/// Pulls response frames into the write buffer, up to the high-water mark,
/// or until a large one ([`LARGE_FRAME`]) waits to be written from its own
/// bytes.
///
/// A body that says, after a data frame, that it has no more
/// (`is_end_stream`: a `Full`'s once its data is out, which is most sized
/// answers, axum's included) is finished then, as hyper finishes it,
/// rather than polled once more for its `None`: that poll, its catch and
/// its match took ~43 user-space instructions a request more than the
/// check (callgrind, bench/CPU-PER-REQUEST.md, session 48).
fn poll_response_body<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut progress = false;
    while let Some(body) = this.body.as_mut().as_pin_mut() {
        if this.conn.wbuf_len() >= WRITE_HIGH_WATER || this.st.unbuffered.is_some() {
            break;
        }
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| body.poll_frame(cx)));
        let frame = match polled {
            Ok(Poll::Pending) => break,
            Ok(Poll::Ready(frame)) => frame,
            Err(panic) => return Err(body_panicked(this, &panic)),
        };
        progress = true;
        if this.st.deferred_head.is_some() {
            write_held_head(this);
        }
        let encoder = this.st.encoder.as_mut().expect("head written before body");
        let wbuf = this.conn.wbuf();
        let mut data_sent = false;
        let mut overran = false;
        let result = match frame {
            None => {
                this.body.set(None);
                this.st.response_done = true;
                encoder.finish(None, &[], wbuf)
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let len = data.remaining();
                    let r = if len >= LARGE_FRAME {
                        let r = hold_large(data, encoder, wbuf, &mut this.st.unbuffered);
                        // Its end is asked for once it is written: what
                        // ends the body goes behind it.
                        data_sent = this.st.unbuffered.is_none();
                        r
                    } else {
                        let r = encoder.encode_data(&data, wbuf);
                        data.advance(data.remaining());
                        data_sent = true;
                        r
                    };
                    // Not counted: what went past the `Content-Length`
                    // (dropped, `body_overran`). A HEAD's or a bodiless
                    // status's frames are counted whole, as before.
                    match r {
                        Err(EncodeError::TooLong { sent }) => {
                            this.st.record.response_bytes(sent);
                            overran = true;
                            Ok(())
                        }
                        r => {
                            this.st.record.response_bytes(len);
                            r
                        }
                    }
                }
                Err(frame) => {
                    // Only to a client that said it takes them, and only
                    // the fields the response declared, as hyper does (RFC
                    // 9110 §6.5.1: a recipient may not take them).
                    let declared = this.st.declared_trailers.take();
                    let trailers = frame.into_trailers().ok().filter(|_| declared.is_some());
                    this.body.set(None);
                    this.st.response_done = true;
                    encoder.finish(trailers.as_ref(), declared.as_deref().unwrap_or(&[]), wbuf)
                }
            },
            Some(Err(e)) => {
                let e: BoxError = e.into();
                return Err(Outcome::Close(response_body_failed(
                    &this.st.close_reason,
                    &e,
                )));
            }
        };
        encoded(result)?;
        if overran {
            body_overran(this);
            continue;
        }
        if data_sent {
            // `is_end_stream` is the body's code: a panic in it is the
            // body's, as one in its poll.
            let ended = match this.body.as_ref().as_pin_ref() {
                Some(body) => std::panic::catch_unwind(AssertUnwindSafe(|| body.is_end_stream())),
                None => Ok(false),
            };
            match ended {
                Ok(false) => {}
                Ok(true) => {
                    this.body.set(None);
                    this.st.response_done = true;
                    let encoder = this.st.encoder.as_mut().expect("head written before body");
                    encoded(encoder.finish(None, &[], this.conn.wbuf()))?;
                }
                Err(panic) => return Err(body_panicked(this, &panic)),
            }
        }
    }
    Ok(progress)
}

/// A large data frame ([`LARGE_FRAME`]) framed by `encoder` (a chunk's
/// size line into `wbuf`) and held in `slot` to be written from its own
/// bytes behind what `wbuf` holds, with what its framing puts after it
/// (`write_unbuffered`). Past a `Content-Length`, only what it declares is
/// held (`TooLong`, as `Encoder::encode_data`).
#[inline(never)]
fn hold_large(
    mut data: Bytes,
    encoder: &mut Encoder,
    wbuf: &mut BytesMut,
    slot: &mut Option<Box<Unbuffered>>,
) -> Result<(), EncodeError> {
    let framed = encoder.encode_large(&mut data, wbuf);
    let tail: &'static [u8] = match framed {
        Ok(tail) => tail,
        Err(_) => b"",
    };
    let frame = Unbuffered::new(data, tail);
    if !frame.is_empty() {
        *slot = Some(Box::new(frame));
    }
    framed.map(|_| ())
}

/// The response body went on past its `Content-Length`, which went out
/// whole ([`Encoder::encode_data`]): the response ends there and the rest
/// of the body is dropped unread, as hyper ends it; the connection stays
/// open. A file that grows while `ServeDir` serves it does this (nginx
/// sends the size it found at the open). It closed the connection, the
/// chunk that crossed the length unsent: a truncated download.
#[cold]
fn body_overran<T, F, B>(this: &mut Proj<'_, '_, T, F, B>) {
    crate::proto::log_body_overran();
    this.body.set(None);
    this.st.response_done = true;
}

/// A response body that broke its own framing (`result`) closes the
/// connection: what was sent cannot be taken back.
#[inline(always)]
fn encoded(result: Result<(), EncodeError>) -> Result<(), Outcome> {
    result.map_err(encode_failed)
}

/// [`encoded`]'s error, out of line.
#[cold]
fn encode_failed(e: EncodeError) -> Outcome {
    tracing::error!(error = %e, "closing");
    Outcome::Close(CloseReason::ServerError)
}

/// The response body panicked (its poll, or its `is_end_stream`):
/// counted, logged; the connection closes.
#[cold]
fn body_panicked<T, F, B>(
    this: &mut Proj<'_, '_, T, F, B>,
    panic: &Box<dyn std::any::Any + Send>,
) -> Outcome {
    incr(&this.conn.ctx.stats.panics);
    ratelog::panicked(
        "response body panicked; closing",
        Some(panic_message(panic)),
    );
    Outcome::Close(CloseReason::Panic)
}

/// Pushes buffered response bytes to the socket while the exchange runs,
/// bounded when a write has to wait ([`WRITES`]). What is left when it ends
/// is written by the connection, which can batch it with the responses to
/// pipelined requests.
fn poll_write<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
{
    if this.st.unbuffered.is_some() {
        return write_unbuffered(this, cx);
    }
    let exchange_done =
        this.handler.is_none() && this.st.response_done && this.st.setup.decoder.is_none();
    if exchange_done || this.conn.wbuf_len() == 0 {
        return Ok(false);
    }
    match this
        .conn
        .poll_flush_bounded(cx, &mut this.st.write_bound, &WRITES)
    {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(reason)) => Err(left_by_error(this, reason)),
        Poll::Pending => Ok(false),
    }
}

/// [`poll_write`] with a large frame held ([`LARGE_FRAME`]): what is
/// buffered, then the frame, bounded as any response write; once all of it
/// went, the body may be asked for its next frame. Also after the exchange
/// is otherwise done: its last frame is the exchange's to write (the
/// exchange ends only once it went).
#[inline(never)]
fn write_unbuffered<T, F, B>(this: &mut Proj<'_, '_, T, F, B>, cx: &mut Context<'_>) -> Step
where
    T: Parkable,
{
    let frame = this.st.unbuffered.as_mut().expect("checked by the caller");
    match this
        .conn
        .poll_flush_with_bounded(cx, frame, &mut this.st.write_bound, &WRITES)
    {
        Poll::Ready(Ok(())) => {
            this.st.unbuffered = None;
            Ok(true)
        }
        Poll::Ready(Err(reason)) => Err(left_by_error(this, reason)),
        Poll::Pending => Ok(false),
    }
}

/// Writes what the exchange, its response done, still buffered, while
/// `write_timeout` runs (from the response's head), so that it bounds the
/// whole response. Left to the connection, as it is otherwise (where it
/// goes out with the answers to pipelined requests), the rest would get a
/// bound of its own, and a response could take up to twice
/// `write_timeout`. (The price, with `write_timeout` set: answers to
/// pipelined requests are written one by one, not batched.) The exchange's
/// deadline, polled first in each turn of its loop, closes the connection
/// when it passes.
fn write_rest<T, F, B>(
    this: &mut Proj<'_, '_, T, F, B>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Outcome>>
where
    T: Parkable,
{
    if this.conn.wbuf_len() == 0 {
        return Poll::Ready(Ok(()));
    }
    this.conn
        .poll_flush_bounded(cx, &mut this.st.write_bound, &WRITES)
        .map_err(Outcome::Close)
}

/// Turns a poll of an IO result into `Ok(None)` for pending, `Ok(Some(n))`, or
/// the outcome for an error.
fn ready_or_pending(p: Poll<io::Result<usize>>) -> Result<Option<usize>, Outcome> {
    match p {
        Poll::Pending => Ok(None),
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(Outcome::Close(CloseReason::io(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    /// Counts its drops.
    #[derive(Clone)]
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// A regression guard for what every exchange carries besides its
    /// pinned parts (the exchange lives in one of the worker's cached
    /// blocks while it runs, `conn.rs`): rare states go in a box. The held
    /// large frame's slot was 48 bytes inline (session 57); boxed, 8.
    /// Measured when written: 400 bytes with megaconn's own features (440
    /// with the frame's slot inline), 408 with the workspace's (CI's
    /// `cargo test --workspace` unifies the CLI's features into the
    /// library's): the bound is the larger.
    #[test]
    fn size_guard_exchange_state() {
        let state = std::mem::size_of::<State>();
        let (boxed, inline) = (
            std::mem::size_of::<Option<Box<Unbuffered>>>(),
            std::mem::size_of::<Option<Unbuffered>>(),
        );
        eprintln!(
            "exchange state: {state} bytes; a held frame's slot {boxed} boxed, {inline} inline"
        );
        assert_eq!(boxed, 8, "a held frame's slot is one word");
        assert!(state <= 408, "the exchange's state is {state} bytes");
    }

    /// `ResponseHead::take` leaves behind only what needs no drop: if
    /// `http` adds a field to a response's head (`Parts` has a private one
    /// for that), this fails, and `take` must move the new field out too.
    #[test]
    fn response_head_takes_every_field_that_needs_a_drop() {
        #[allow(dead_code)]
        struct Known {
            status: StatusCode,
            version: Version,
            headers: http::HeaderMap,
            extensions: http::Extensions,
        }
        assert_eq!(
            std::mem::size_of::<http::response::Parts>(),
            std::mem::size_of::<Known>(),
            "http::response::Parts has a field ResponseHead::take does not know"
        );
        // And `Response` itself is its head and its body, nothing beside.
        assert_eq!(
            std::mem::size_of::<Response<()>>(),
            std::mem::size_of::<http::response::Parts>(),
            "http::Response has a field beside its head and body that ResponseHead::take does not know"
        );
        assert!(!std::mem::needs_drop::<StatusCode>() && !std::mem::needs_drop::<Version>());
    }

    /// A response taken apart in place gives its status, headers,
    /// extensions and body each once: dropped after, each is dropped
    /// exactly once, and nothing of it twice.
    #[test]
    fn a_response_taken_apart_drops_each_part_once() {
        let (bodies, extensions) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut response = Response::new(Counted(bodies.clone()));
        *response.status_mut() = StatusCode::CREATED;
        response
            .headers_mut()
            .insert("x-a", http::HeaderValue::from_static("b"));
        response
            .extensions_mut()
            .insert(Counted(extensions.clone()));
        let mut slot = std::mem::MaybeUninit::new(response);
        // SAFETY: `slot` is a `MaybeUninit`, never dropped or used after.
        let (head, body) = unsafe {
            let response = slot.assume_init_mut();
            (
                ResponseHead::take(response),
                std::ptr::read(response.body()),
            )
        };
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers["x-a"], "b");
        assert!(head.extensions.get::<Counted>().is_some());
        assert_eq!((bodies.load(SeqCst), extensions.load(SeqCst)), (0, 0));
        drop(body);
        drop(head);
        assert_eq!((bodies.load(SeqCst), extensions.load(SeqCst)), (1, 1));
    }
}
