//! HTTP/2 (RFC 9113) on the `h2` crate: framing, HPACK and flow control are
//! h2's; the connection loop, the per-stream exchange and the limits are ours.
//!
//! A connection arrives here two ways: TLS with ALPN `h2` (`tls.rs`), or
//! cleartext with prior knowledge (h2c), when the first bytes of a connection
//! are the HTTP/2 preface (`http1/conn.rs` hands it over with the bytes it
//! had already read).
//!
//! ```text
//!  serve():  one task per connection, a select loop over
//!            accept()        -> new stream: build Request<Body>, call the service
//!                               once it is ready (while it is not, one request
//!                               waits and no other stream is accepted)
//!            streams         -> FuturesUnordered of per-stream exchanges
//!                               (handler, then response head, body, trailers)
//!            shutdown        -> GOAWAY, let open streams finish
//!            idle timer      -> no open stream for idle_timeout: GOAWAY, close
//!            keep-alive PING -> no PONG within the timeout: close
//! ```
//!
//! `CONNECT` (RFC 9113 §8.5) and extended `CONNECT` (RFC 8441: WebSockets,
//! advertised with `SETTINGS_ENABLE_CONNECT_PROTOCOL` unless turned off):
//! the request carries an [`OnUpgrade`](crate::OnUpgrade) as an HTTP/1.1
//! upgrade does; a 2xx hands the handler the stream as an [`Upgraded`] over
//! [`H2Stream`], and the stream's exchange waits until the handler drops
//! it, so an open tunnel counts as an open stream (no idle GOAWAY).
//!
//! At shutdown a connection sends `GOAWAY` and its open streams run on
//! until `shutdown_timeout`, when the worker drops what is left (the
//! connection closes under them). gRPC calls are ended first, a margin
//! before (`conn::shutdown::goodbye_margin`), with `grpc-status: 14`
//! (UNAVAILABLE), which gRPC clients retry ([`CutWatch`]).
//!
//! Streams run inside the connection's task rather than as spawned tasks: the
//! worker is single-threaded either way, no `'static` bounds are needed, and a
//! closed connection cancels its handlers, as on HTTP/1.1.
//!
//! Abuse limits: h2's own rapid-reset (CVE-2023-44487) and "MadeYouReset"
//! (CVE-2025-8671) counters are set explicitly, and on top of them a connection
//! whose client cancels more than [`RAPID_RESET_LIMIT`] young streams before
//! their response head, and more than it lets finish, is closed with
//! `GOAWAY(ENHANCE_YOUR_CALM)`. Streams reset after their head (a watch or
//! download cancelled mid-body) are ordinary and not counted, nor are those
//! that ran their ordinary age first ([`ordinary_cancel_age`]: a second, or
//! half the call's `grpc-timeout`): a gRPC deadline expiring on a slow
//! handler, 150 calls at once, is the client doing what it announced, and
//! closed the connection with its live streams before (session 50).
//!
//! A client that keeps a stream's window shut (`SETTINGS_INITIAL_WINDOW_SIZE`
//! 0 and no `WINDOW_UPDATE`) would hold the stream, and with it the
//! connection (not idle while a stream is open), for good: a wait for room
//! is bounded by `write_stall_timeout` when `write_timeout` is off
//! ([`stall_bound`]), and the stream reset with `CANCEL`. So is a
//! handler's wait for request DATA that does not come, by `idle_timeout`
//! when `read_timeout` is off (`RecvBody::stalled`; HTTP/1.1's is
//! `exchange::body_stalled`), except a gRPC request's (`Grpc`: its
//! streaming calls pause at will, as tonic's server allows). A body (not
//! a gRPC request's either) whose client sends, but slower than
//! `min_request_body_rate` while its handler waits (a byte every few
//! seconds restarts that bound each time), is held to the rate HTTP/1.1's
//! are held to, by the same accounting (`service/body_rate.rs`, checked
//! where the handler's read waits, `RecvBody::too_slow`): past it the
//! read fails, and the stream's exchange ends the stream, the handler
//! dropped, with a `408` if no response head went out (then h2 ends the
//! stream with `RST_STREAM(NO_ERROR)`, RFC 9113 §8.1: the client stops
//! sending and keeps the answer), else with `RST_STREAM(CANCEL)`
//! ([`StreamEnd::TooSlow`] says why that code); the connection serves
//! on, its other streams untouched.
//!
//! How many such streams a connection may hold is bounded too: past
//! `http2_max_stalled_streams` streams waiting for their first room, the
//! connection takes no new stream until one gets room or ends (`stall.rs`,
//! [`StallGate`]); a client that keeps its windows shut holds that many
//! exchanges, not `http2_max_concurrent_streams` (CVE-2019-9517 class).
//!
//! CONTINUATION floods (CVE-2024-27316 class) are h2's to stop, in its frame
//! decoder (`codec/framed_read.rs` in h2 0.4): a header block may have at
//! most `max_header_list_size / max_frame_size` CONTINUATION frames plus a
//! quarter, and at least 5 (5 with our defaults); a block that decodes past
//! four times `max_header_list_size` (an HPACK bomb) is refused as it
//! decodes; either ends the connection with `GOAWAY(ENHANCE_YOUR_CALM)`.
//! [`close_reason`] counts such closes in `protocol_errors`.
//!
//! Small-DATA floods (CVE-2019-9518 class) are shared. h2 bounds memory: a
//! connection may send 100 empty DATA frames, and DATA frames under 256 bytes
//! that wait unread draw on a budget of half the connection window (about
//! 2,000 such frames with our 1 MiB); past either it sends
//! `GOAWAY(ENHANCE_YOUR_CALM)` (`proto/streams/counts.rs`, `record_data_frame`).
//! A frame the handler reads gives its share back, so a client that sends
//! tiny frames no faster than they are read is never stopped by h2, and each
//! frame costs a wake-up and a poll of the handler whatever its size.
//! The tiny-DATA budget (`flood.rs`, [`HTTP2_TINY_DATA_BUDGET`]) bounds
//! the CPU of those that do no work, at the wire: ~2,000 DATA frames under
//! 16 bytes that no handler has read, 1,000 a second back, one more per
//! KiB of larger DATA; past it `GOAWAY(ENHANCE_YOUR_CALM)`, counted as
//! `http2_data_flood`. A frame a handler reads gives its unit back (its
//! body's `ReadCredit`, since session 45): an honest stream of small
//! messages is never cut, whatever its pace, while h2 frees unread frames
//! of a reset stream without its budget noticing, and ours still counts
//! them. h2's bound on small frames never comes first, nor its count of
//! 100 empty ones (no payload, padding aside, not ending their stream):
//! each read is held to what is left of h2's budget and of its count
//! (read through h2, `patches/h2`), and the frame that would run either
//! out is refused by ours, with its count and its line (`flood.rs`,
//! `FloodBudget::h2_refuses`; session 53: a flood read over more than
//! ~50 ms, or padded to 16 bytes, met h2's `GOAWAY` first; session 54:
//! empty frames, which ours charged only 9 bytes of the control budget
//! each, always did).
//!
//! Control-frame floods (CVE-2019-9512 PING, CVE-2019-9515 SETTINGS, and
//! WINDOW_UPDATE, PRIORITY, RST_STREAM, empty DATA and unknown frames) are
//! ours: h2 bounds only the memory of their answers. The connection's IO
//! is metered ([`MeteredIo`], `flood.rs`): frames that do no work spend a
//! budget of [`HTTP2_CONTROL_BUDGET`] bytes that requests, DATA sent (64
//! bytes a frame) and time give back; once it runs out, nothing more is
//! read and the connection is closed with `GOAWAY(ENHANCE_YOUR_CALM)`,
//! counted as `http2_control_flood`. The read that ran any budget out
//! reaches h2 up to the frame that did: what came before it is processed
//! (a PING answered) before the GOAWAY goes out, and nothing after it.
//!
//! A window opened a few bytes at a time (CVE-2019-9511's "data dribble":
//! `WINDOW_UPDATE` of 1, each answered by a 1-byte DATA frame, ~35 µs of
//! server CPU a round) is counted where a response waits for room
//! (`send_body`): a wait ended by a grant under 256 bytes with more of the
//! response waiting is a round, [`HTTP2_WINDOW_DRIP_BUDGET`] of them at
//! once and 64 a second after; past it each round waits for time to give
//! it back (slowed, not closed), counted once as `http2_window_drip`
//! (`flood.rs` says why rounds and not bytes, and why not a close). Writes
//! of an upgraded stream (`service/h2_stream.rs`: CONNECT tunnels,
//! WebSocket over HTTP/2) spend the same budget by the same rule
//! ([`drip_wait`], through [`DripGate`]). A small grant after 256 bytes or
//! more of DATA went out since the last one is not a round (several
//! downloads sharing a small connection window).
//!
//! PINGs with nothing of ours sent between them (no HEADERS, no DATA) have
//! a budget of their own, [`HTTP2_PING_BUDGET`], 1 a second back; past it
//! `GOAWAY(ENHANCE_YOUR_CALM)`, counted as `http2_ping_flood`: paced one
//! per round trip, the control budget alone let ~3,860 through at ~35 µs
//! each (`flood.rs` argues the numbers).
//!
//! A request is refused before any service sees it, as HTTP/1.1 refuses a
//! head, for the same two limits (with HTTP/1.1's reasons, its limit hits
//! and its rate-limited line, `ratelog::refused_head`): `431` for more
//! header fields than `max_headers`, `413` for a Content-Length over
//! `max_body_bytes`; the stream ends, the connection serves on. Two limits
//! are h2's alone, enforced before a stream reaches us: a header list over
//! `http2_max_header_list_size` (h2 answers `431`) and a stream past
//! `http2_max_concurrent_streams` (`RST_STREAM(REFUSED_STREAM)`). Our h2
//! patch counts both on the connection (`refused_streams`,
//! `oversized_header_lists`; `patches/README.md`), and each poll of the
//! connection counts and logs what is new ([`H2Refusals`]): limit hits
//! named after the settings, the 431 also a protocol error and the refused
//! head's line, the refused stream a line of its own. Neither reaches the
//! service. The 431 is a request all the same, as HTTP/1.1's refused head
//! is: counted in `requests_total` (its method unread: h2 keeps nothing of
//! the head) with an access line (`-` for its method and path); the
//! refused stream is not (nothing was processed; the client retries it).
//!
//! What a stream counts (`RequestRecord`: `requests_total`, the access
//! line), and when:
//!
//! - Its status only once h2 took the head ([`send_head`], the one way a
//!   head goes out, megaconn's own 413/500/503 included): a head the
//!   client's reset refused leaves none (the `none` class, status 0), as a
//!   reset before the handler answered does.
//! - Its request body's bytes when the record drops, at the end of the
//!   exchange (`StreamRecord`): with the access log on, the body's own count
//!   if the body has dropped by then; with it off, what the connection's
//!   bodies took in since the last record took (only the sum is counted).
//!   Bytes no record took (a body kept past its response, read after its
//!   record or even its connection ended) are counted into
//!   `request_body_bytes` when the [`ConnBodyBytes`] drops, with the last
//!   of the connection and its bodies, on whichever thread that is.
//!
//! What stays uncounted: the bytes of a body that is never dropped (leaked,
//! or held by a task that never ends), until it is; in the access line,
//! the bytes a body takes in after its stream's record dropped (the line
//! is written then; the metric has them); and DATA that h2 received but
//! no body read (left in h2's buffer when the stream or connection ends):
//! only the connection's bytes (`ConnectionEvent::Closed`) have those.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::os::fd::{BorrowedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::conn::client_auth::PeerCertificates;
use crate::conn::config::Http2Config;
use crate::conn::context::WorkerContext;
use crate::conn::io::WriteBound;
use crate::conn::shutdown::CallEnd;
use crate::conn::ConnInfo;
use crate::message::MessageSettings;
use crate::observe::clock::{self, LazyDeadline};
use crate::observe::close::{CloseReason, ProtocolDetail};
use crate::observe::human::Timeout;
use crate::observe::lifecycle::{self, CountedIo};
use crate::observe::limits::LimitHit;
use crate::observe::metrics::{AccessLine, MethodLabel, RequestRecord};
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, IdleMark, WorkerStats};
use crate::observe::trace::ErrorClass;
use crate::service::body::Body;
use crate::service::body_rate::MinRate;
use crate::service::grpc::{self, Grpc};
use crate::service::h2_body::{self, BodyBounds, BodyShare, ConnBodyBytes, RecvBody};
use crate::service::h2_stream::{DripGate, H2Stream, MAX_RESERVE};
use crate::service::panic_message;
use crate::service::upgrade::{self, UpgradeSender, Upgraded};
use crate::service::HttpService;
use crate::BoxError;

mod flood;
mod stall;
mod unread;
mod upload;

use flood::{FloodBudget, Flooded, MeteredIo, REQUEST_CREDIT};
pub use flood::{
    HTTP2_CONTROL_BUDGET, HTTP2_PING_BUDGET, HTTP2_TINY_DATA_BUDGET, HTTP2_WINDOW_DRIP_BUDGET,
};
use stall::StallGate;
use unread::UnreadBudget;
use upload::UploadWindows;

/// Streams reset by the client before we accepted them that a connection may
/// hold; past it h2 sends `GOAWAY(ENHANCE_YOUR_CALM)` (rapid reset).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams we had to reset because of the client's protocol errors before the
/// connection is closed with `ENHANCE_YOUR_CALM` ("MadeYouReset").
const MAX_LOCAL_ERROR_RESETS: usize = 200;

/// Streams the client may cancel while their handler runs, before the
/// response head (and more than it lets finish), before the connection is
/// closed with `ENHANCE_YOUR_CALM`. Streams cancelled in their body do not
/// count, nor those cancelled once they ran their ordinary age (1 s, or
/// half a `grpc-timeout` down to 10 ms).
pub const RAPID_RESET_LIMIT: u64 = 100;

/// How long a stream runs before a reset of it (before its response head)
/// is an ordinary cancellation, not counted by the rapid-reset guard, when
/// the request announces no deadline. Why an age: the attack
/// (CVE-2023-44487) is streams opened and reset at once, which never count
/// against `http2_max_concurrent_streams`, so their rate is bounded by
/// nothing. A stream that ran this long held a slot of that limit as long:
/// streams reset at this age come at most `max_concurrent_streams` a
/// second on a connection (128 by default), the load of honest requests
/// that take as long, and cost the server no more than those. A reset
/// younger than this counts, whatever the client's reason (a flood's, a
/// user cancelling 101 calls right after starting them).
const ORDINARY_CANCEL_AGE: Duration = Duration::from_secs(1);

/// The least age at which a reset is ordinary for a call that announced its
/// deadline (`grpc-timeout`): the reset of a call that ran half its deadline
/// is the deadline expiring (the client starts its clock before the request
/// leaves, so a reset at the deadline reaches us a little before our clock
/// says so; half leaves room). A flood announcing deadlines of nanoseconds
/// is still held to this: at most `max_concurrent_streams` resets each
/// 10 ms, the rate of honest 10 ms calls.
const MIN_DEADLINE_CANCEL_AGE: Duration = Duration::from_millis(10);

/// h2's budget for small DATA frames (under 256 bytes) buffered unread
/// on a connection, in units of 256 bytes less each frame's payload:
/// ~2,050 frames of 1 byte. h2 makes it half the connection window unless
/// told (`DataFrameBudget::Auto`), so capping the window at
/// `http2_max_unread_body_bytes` (128 KiB) would have cut it to ~257
/// frames: h2 then closed honest bursts of small gRPC messages with
/// `GOAWAY(ENHANCE_YOUR_CALM)` (`too_many_data_frames`) before any handler
/// could read them, and before our own tiny-DATA budget, which counts and
/// logs, could see them (five of the six tests that failed when the
/// windows were first lowered, session 48). Fixed at what the 1 MiB
/// window gave: the frames it admits are bounded in bytes by the window
/// anyway, and in number by `HTTP2_TINY_DATA_BUDGET` at the wire.
const H2_DATA_FRAME_BUDGET: usize = 512 * 1024;

/// h2's bound on empty DATA frames that do not end their stream, over a
/// connection's life (`MAX_RECV_EMPTY_DATA_FRAMES` in `patches/h2`'s
/// `proto/mod.rs`, not a setting; a stream's first such frame and one
/// after each non-empty frame it received are not counted). Named in the
/// line of the close ours makes first (`flood.rs`, `h2_refuses`), which
/// reads h2's own count, not this.
const H2_EMPTY_DATA_FRAMES: usize = 100;

/// How long a connection told to go away may take to finish (idle timeout),
/// or stay open with no stream open (shutdown, `max_connection_age`).
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

fn h2_builder(cfg: &Http2Config) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(cfg.max_concurrent_streams)
        .initial_window_size(unread::stream_window(cfg))
        .initial_connection_window_size(unread::connection_window(cfg))
        .max_frame_size(cfg.max_frame_size.clamp(16_384, 16_777_215))
        .max_header_list_size(cfg.max_header_list_size)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        // (`Builder::validate` keeps it in 1 ..= 2^31 - 1.)
        .max_send_buffer_size(cfg.max_send_buffer as usize)
        .data_frame_budget(H2_DATA_FRAME_BUDGET);
    if cfg.enable_connect_protocol {
        b.enable_connect_protocol();
    }
    b
}

/// Serves HTTP/2 on `io` until the connection closes; returns why it closed.
/// `addrs`: what is known of its addresses, or where to ask, and when the
/// connection was accepted; boxed, as little of it is read (log lines, and
/// with `connect_info` each request's addresses): inline it was 80 bytes of
/// every HTTP/2 connection's future.
/// `retire_at`: when it is to go away for its age (`max_connection_age`,
/// drawn once per connection by the caller; `None`: the option is off).
pub(crate) async fn serve<I, S>(
    io: I,
    service: &mut S,
    ctx: Rc<WorkerContext>,
    addrs: Box<Addrs>,
    retire_at: Option<Instant>,
) -> CloseReason
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: HttpService,
{
    let cfg = ctx.config.http2;
    // Bytes in and out count into the connection's lifecycle event, as on
    // HTTP/1.1 (plaintext, after TLS); its frames into the flood guard's
    // budgets, control frames and tiny DATA (`flood.rs`; the third, drip
    // rounds, is spent by the streams' responses through `gate`).
    let control = Arc::new(FloodBudget::new());
    let io = MeteredIo::new(CountedIo::new(io), control.clone());
    // The handshake runs in its own box, freed when it ends, so that its
    // state (h2's whole codec, a timer) is not kept in the connection's
    // future for the connection's life next to the connection itself.
    let mut conn = match Box::pin(handshake(io, &ctx, &addrs)).await {
        Ok(conn) => conn,
        Err(reason) => return reason,
    };
    // No read hands h2 the DATA frame that would run its own small-DATA
    // budget out: ours closes first, counted and logged (`flood.rs`).
    control.watch_h2(conn.data_frame_budget_probe());
    let mut idle = IdleMark::new(&ctx.stats);
    idle.set(true);
    let mut keep_alive = KeepAlive::new(conn.ping_pong(), &cfg);
    // Before `streams`, whose exchanges borrow it.
    let gate = StallGate::new(cfg.max_stalled_streams, control.clone());
    let mut streams = FuturesUnordered::new();
    let idle_timeout = ctx.config.idle_timeout;
    // One timer: the idle deadline while no stream is open, then the grace
    // period after an idle GOAWAY; after another GOAWAY (shutdown, age), the
    // time the client gets to open the streams it had on the way while none
    // is open. h2 closes a connection that went away gracefully only once
    // the client acknowledged the GOAWAY's PING: one that never does would
    // otherwise be held for good.
    let mut timer = pin!(tokio::time::sleep(
        idle_timeout.unwrap_or(Duration::MAX / 4)
    ));
    let mut timer_armed = idle_timeout.is_some();
    // The timer is the grace period after an idle GOAWAY.
    let mut grace = false;
    let mut going_away = false;
    // max_connection_age: a GOAWAY then, open streams finishing first.
    let mut retire = pin!(tokio::time::sleep_until(
        retire_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1 << 30))
    ));
    let mut resets = ResetGuard::default();
    let mut waiting: Option<Waiting> = None;
    // Whether h2 still had a stream when the connection was last polled
    // and had nothing for us: see `poll_turn`.
    let mut h2_busy = false;
    // Its bodies' reads give tiny frames back to the budget (`flood.rs`).
    // And its bodies are held to `min_request_body_rate` (`RecvBody::too_slow`).
    let min_rate = MinRate::of(
        ctx.config.min_request_body_rate,
        ctx.config.min_request_body_rate_grace,
    );
    // Its bodies' bounds, once (not in each body); their windows grow while
    // their readers keep up (`upload.rs`).
    let conn_bytes = Arc::new(
        ConnBodyBytes::new(
            ctx.stats.clone(),
            control.clone(),
            (min_rate, ctx.config.access_log),
        )
        .bounded(BodyBounds {
            limit: ctx.config.max_body_bytes,
            stall_after: ctx
                .config
                .idle_timeout
                .filter(|_| ctx.config.read_timeout.is_none()),
            stream_window: unread::stream_window(&cfg),
            grown_max: cfg.max_grown_stream_window,
            grown_budget: cfg.grown_windows_budget,
        })
        .growing_in(ctx.config.http2_grown_windows.clone()),
    );
    let mut refusals = H2Refusals::default();
    let mut unread = UnreadBudget::default();
    let mut upload = UploadWindows::default();
    let mut reason = CloseReason::ClientClosed;
    // The control-frame flood guard tripped and was acted on.
    let mut flooded = false;
    loop {
        // Fixed for this round: a stream that ends ends the round.
        let streams_open = !streams.is_empty();
        tokio::select! {
            biased;
            () = ctx.shutdown.wait(), if !going_away => {
                conn.graceful_shutdown();
                going_away = true;
                reason = CloseReason::Shutdown;
                if streams.is_empty() && waiting.is_none() {
                    timer.as_mut().reset(Instant::now() + GOAWAY_GRACE);
                    timer_armed = true;
                }
            }
            () = &mut retire, if retire_at.is_some() && !going_away => {
                conn.graceful_shutdown();
                going_away = true;
                reason = CloseReason::ServerClosed;
                ctx.aged_out();
                if streams.is_empty() && waiting.is_none() {
                    timer.as_mut().reset(Instant::now() + GOAWAY_GRACE);
                    timer_armed = true;
                }
            }
            // Before the connection's poll: once a budget ran out, h2
            // reads nothing more, and only this closes the connection.
            // Also after a graceful GOAWAY, whose streams would otherwise
            // run on unread.
            which = control.tripped(), if !flooded => {
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                going_away = true;
                flooded = true;
                reason = frame_flooded(which, &ctx, &addrs);
            }
            // One poll for the connection and the service together (both
            // need this task's context, and the service `&mut`): see
            // `poll_turn`. Its handler does not await, so a new stream's
            // request is never kept in this future. What h2 refused on its
            // own in that poll is counted right after it.
            turn = poll_fn(|cx| {
                let turn = poll_turn(&mut conn, service, waiting.is_some(), streams_open, &mut h2_busy, &ctx, &conn_bytes, &gate, &addrs, cx);
                refusals.count(&conn, &ctx, &addrs);
                upload.after_poll(&mut conn, &cfg, &control, &conn_bytes);
                unread.look(&conn, upload.window(&cfg), &control, &ctx.stats, &addrs);
                turn
            }) => {
                let start = match turn {
                    Turn::Closed(None) => break,
                    Turn::Closed(Some(e)) => {
                        if reason == CloseReason::ClientClosed {
                            // "Between requests": no stream task runs, none
                            // waits for the service, and h2 had no stream
                            // either when last polled (`h2_busy`): not a
                            // finished stream's response still queued in h2
                            // (a stream counts until its frames are sent),
                            // nor a request h2 opened that `poll_accept` had
                            // not handed over yet. What h2 does not show is
                            // bytes in its codec's buffers (its encoder's
                            // write buffer, a partial frame in its read
                            // buffer): a reset then is still read as the
                            // client leaving between requests
                            // (`ClientClosed`'s docs say so), a label only.
                            let between = streams.is_empty() && waiting.is_none() && !h2_busy;
                            reason = close_reason(&e, &ctx, between);
                        }
                        break;
                    }
                    Turn::Answered(start, respond) => Some((start, respond)),
                    Turn::New(prepared, respond, Poll::Ready(ready)) => {
                        Some((call_service(service, prepared, ready, &ctx, &addrs), respond))
                    }
                    Turn::New(prepared, respond, Poll::Pending) => {
                        waiting = Some(Box::new((prepared, respond)));
                        None
                    }
                    Turn::Ready(ready) => waiting.take().map(|w| {
                        let (prepared, respond) = *w;
                        (call_service(service, prepared, ready, &ctx, &addrs), respond)
                    }),
                };
                if let Some((start, respond)) = start {
                    // A request is work: the client's frames about it
                    // (resets, priorities) are paid for.
                    control.credit(REQUEST_CREDIT);
                    gate.taken();
                    streams.push(run_stream(start, respond, ctx.clone(), &gate));
                }
                // A stream is open (or waits for the service): the idle
                // timer stops, whether or not a GOAWAY went out (a stream
                // the first GOAWAY of a shutdown admits must not be cut at
                // the idle deadline); only the grace period after an idle
                // GOAWAY runs on.
                idle.set(false);
                if !grace {
                    timer_armed = false;
                }
            }
            Some(end) = streams.next(), if !streams.is_empty() => {
                // Take every other stream that is done too before going round
                // the loop: polling `accept` flushes the connection, and once
                // per finished stream would mean a write per response instead
                // of one for all the responses ready together.
                let mut ended = Some(end);
                while let Some(end) = ended {
                    if end == StreamEnd::TooSlow {
                        h2_body::too_slow_line(ctx.config.min_request_body_rate, || addrs.peer());
                    }
                    // Once (the guard says so for every later end while
                    // resets outnumber completions: the streams ending in
                    // this batch or after the GOAWAY are not new floods).
                    if resets.record(end) && !going_away {
                        conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                        going_away = true;
                        reason = calmed(&ctx, &"the client cancels streams faster than it completes them (rapid reset)");
                    }
                    ended = poll_fn(|cx| match streams.poll_next_unpin(cx) {
                        Poll::Ready(end) => Poll::Ready(end),
                        Poll::Pending => Poll::Ready(None),
                    })
                    .await;
                }
                // A request waiting for the service is an open stream too.
                let none_open = streams.is_empty() && waiting.is_none();
                if none_open {
                    idle.set(true);
                }
                if none_open && !going_away {
                    if let Some(t) = idle_timeout {
                        timer.as_mut().reset(Instant::now() + t);
                        timer_armed = true;
                    }
                } else if none_open && !grace {
                    // Gone away and its streams done: see `timer`.
                    timer.as_mut().reset(Instant::now() + GOAWAY_GRACE);
                    timer_armed = true;
                }
            }
            () = &mut timer, if timer_armed => {
                if going_away {
                    // The grace period after an idle GOAWAY ended, or, after
                    // another GOAWAY, no stream was open for GOAWAY_GRACE.
                    break;
                }
                incr(&ctx.stats.timeouts);
                conn.graceful_shutdown();
                going_away = true;
                reason = CloseReason::IdleTimeout;
                timer.as_mut().reset(Instant::now() + GOAWAY_GRACE);
                grace = true;
            }
            () = keep_alive.expired() => {
                tracing::debug!(
                    http2_keep_alive_timeout = ?cfg.keep_alive_timeout,
                    "no answer to keep-alive PING within http2_keep_alive_timeout; closing"
                );
                incr(&ctx.stats.timeouts);
                // The peer's liveness check failed, as a framed or WebSocket
                // heartbeat does: not a socket error.
                reason = CloseReason::HeartbeatTimeout;
                break;
            }
        }
    }
    // The body bytes no stream record took (bodies kept past their record,
    // a request waiting for the service) are counted when their count
    // (`conn_bytes`) drops:
    // here, unless a body outlives the connection (then when it drops).
    drop((streams, waiting, conn_bytes));
    reason
}

/// What one poll of the connection and the service brought.
// Returned and matched at once, never kept: boxing `New` would cost every
// stream an allocation.
#[allow(clippy::large_enum_variant)]
enum Turn<S: HttpService> {
    /// The connection ended: cleanly, or with h2's error.
    Closed(Option<h2::Error>),
    /// A new stream answered at once (413), without the service.
    Answered(Start<S::Future>, SendResponse<Bytes>),
    /// A new stream's request, and the service's readiness polled for it.
    New(Prepared, SendResponse<Bytes>, Poll<Result<(), S::Error>>),
    /// The service is ready for the request that waited for it.
    Ready(Result<(), S::Error>),
}

/// Drives the connection and takes its next stream, whose request is built
/// and the service's readiness polled for it in the same turn (with a
/// request in hand: an idle connection holds no permit of a limit). While
/// a request waits for readiness, no stream is accepted (h2 queues them, up
/// to `max_concurrent_streams`) but the connection is still driven, and the
/// loop goes on driving the open streams: a service not ready (a
/// concurrency limit whose permits this connection's own streams hold)
/// must not stop what would make it ready. So did hyper 0.14's HTTP/2
/// server (`poll_ready`, then `poll_closed` while not ready); axum::serve
/// waits for readiness per request (`Oneshot`), which a connection's
/// streams also get here, in order.
///
/// Each time the connection has nothing for us, `h2_busy` records whether
/// h2 still has a stream (`has_streams`): sampled then, not when the poll
/// fails, because h2 clears its streams on a connection error. It is asked
/// (a lock of h2's stream store) only when no stream of ours runs
/// (`streams_open`) or waits: otherwise h2 has one too, and the answer
/// cannot make the close "between requests".
///
/// Past `http2_max_stalled_streams` (`gate`), no stream is accepted either,
/// the connection driven the same way, until a stalled stream gets room or
/// ends ([`StallGate`]).
#[allow(clippy::too_many_arguments)]
fn poll_turn<I, S>(
    conn: &mut h2::server::Connection<I, Bytes>,
    service: &mut S,
    waiting: bool,
    streams_open: bool,
    h2_busy: &mut bool,
    ctx: &Rc<WorkerContext>,
    conn_bytes: &Arc<ConnBodyBytes>,
    gate: &StallGate,
    addrs: &Addrs,
    cx: &mut Context<'_>,
) -> Poll<Turn<S>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: HttpService,
{
    if waiting {
        if let Poll::Ready(ready) = service.poll_ready(cx) {
            return Poll::Ready(Turn::Ready(ready));
        }
        return drive_only(conn, h2_busy, cx);
    }
    if !gate.admits(cx, ctx) {
        return drive_only(conn, h2_busy, cx);
    }
    // `poll_accept` is what h2's `accept` polls (and hyper's server calls).
    let accepted = conn.poll_accept(cx);
    if accepted.is_pending() {
        *h2_busy = streams_open || conn.has_streams();
    }
    Poll::Ready(match std::task::ready!(accepted) {
        None => Turn::Closed(None),
        Some(Err(e)) => Turn::Closed(Some(e)),
        Some(Ok((request, respond))) => match prepare(request, ctx, conn_bytes, addrs) {
            Ok(prepared) => Turn::New(prepared, respond, service.poll_ready(cx)),
            Err(answered) => Turn::Answered(answered, respond),
        },
    })
}

/// Drives the connection without taking a stream (a request waits for the
/// service, or streams for the client's window): only its end is news.
fn drive_only<I, S>(
    conn: &mut h2::server::Connection<I, Bytes>,
    h2_busy: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Turn<S>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: HttpService,
{
    let closed = conn.poll_closed(cx).map(|r| Turn::Closed(r.err()));
    if closed.is_pending() {
        // A stream of ours is open (or waits): h2 has one too.
        *h2_busy = true;
    }
    closed
}

/// What an HTTP/2 client with prior knowledge is sent when an admission
/// limit (`--max-connections-per-ip`, `--accept-rate`) refuses its
/// connection at accept (`conn/admission.rs`, `server/dispatch.rs`), in
/// place of HTTP/1.1's `503`, which it read as a protocol error: the
/// server's connection preface, an empty SETTINGS frame (RFC 9113 §3.4:
/// the first frame the server sends; a GOAWAY without it is itself a
/// protocol error to the client), then `GOAWAY` with last-stream-id 0,
/// which says no stream was processed, so every request the client sent
/// or had meant to send is safe to retry (§6.8, §8.7).
///
/// Its code is `ENHANCE_YOUR_CALM` (§7: "the peer is exhibiting a
/// behavior that might be generating excessive load"), for both limits:
/// too many connections from its address, or too many new connections at
/// once, which it is one of. `REFUSED_STREAM` says the same of one stream
/// (§8.7), and a code of a stream has no defined meaning on a connection
/// (§7); what it would add, nothing processed, the last-stream-id 0
/// already says. `NO_ERROR` is a graceful shutdown: a client would
/// reconnect at once, into the same limit. The debug data says how long
/// to wait, HTTP/1.1's `Retry-After`, for whoever reads it (HTTP/2 has no
/// field for it at the connection's level).
pub(crate) fn refused_at_accept(retry_after: u64) -> Box<[u8]> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    let debug = format!("connection refused; retry after {retry_after} s");
    let mut out = Vec::with_capacity(9 + 9 + 8 + debug.len());
    // A frame's head: 24-bit length, type, flags (none), stream 0.
    let head = |out: &mut Vec<u8>, kind: u8, len: usize| {
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
    };
    head(&mut out, SETTINGS, 0);
    head(&mut out, GOAWAY, 8 + debug.len());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&u32::from(Reason::ENHANCE_YOUR_CALM).to_be_bytes());
    out.extend_from_slice(debug.as_bytes());
    out.into_boxed_slice()
}

/// The HTTP/2 handshake (the client's preface and SETTINGS, ours sent),
/// bounded by `read_header_timeout` (from its start, after a TLS
/// handshake); during graceful shutdown, cut as
/// a new connection's first request head is, 5 s after the accept
/// (`Addrs::accepted_at`: over TLS, and on h2c, whose hand-over from
/// HTTP/1.1 carries it), at the drain's start at
/// the earliest (`WorkerContext::handshake`: a client whose preface and
/// request come in the grace is served, its answer then followed by
/// `GOAWAY`).
async fn handshake<I>(
    io: I,
    ctx: &WorkerContext,
    addrs: &Addrs,
) -> Result<h2::server::Connection<I, Bytes>, CloseReason>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2_builder(&ctx.config.http2).handshake::<_, Bytes>(io);
    ctx.handshake(
        ctx.config.read_header_timeout,
        handshake,
        CloseReason::HeaderTimeout,
        |e| close_reason(&e, ctx, false),
        addrs.accepted.unwrap_or_else(Instant::now),
        || ratelog::peer_name(addrs.peer()),
    )
    .await
}

/// Why a connection that h2 ended with `e` closed. A `GOAWAY` that h2 sent
/// itself is the client's protocol error or abuse (a CONTINUATION flood, a
/// header list far over the limit, rapid reset past h2's own counter): it is
/// counted in `protocol_errors`, as our own guards' closes are, with the
/// `GOAWAY` code as the close reason's detail. A reset with no stream open
/// (`between`) is the client leaving, as between HTTP/1.1 requests, also
/// when h2's codec buffers held part of a next frame or the end of a
/// response ([`CloseReason::ClientClosed`]).
fn close_reason(e: &h2::Error, ctx: &WorkerContext, between: bool) -> CloseReason {
    if let Some(io) = e.get_io() {
        // h2 kept the TLS stream's error's kind, not its type: only that
        // stream fails with `InvalidData` (`TlsFailure`), for the peer's
        // protocol error, which it logged; counted where the close is.
        if io.kind() == std::io::ErrorKind::InvalidData {
            return CloseReason::Protocol(ProtocolDetail::Tls);
        }
        return CloseReason::io_between(io, between);
    }
    if e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR) {
        return CloseReason::ClientClosed;
    }
    tracing::debug!(error = %e, "HTTP/2 connection error");
    if e.is_go_away() && e.is_library() {
        if e.reason() == Some(Reason::ENHANCE_YOUR_CALM) {
            // h2's own guard: its error names the cause in its debug data
            // where h2 gives one (`too_many_data_frames`, say).
            return calmed(ctx, e);
        }
        incr(&ctx.stats.protocol_errors);
    }
    CloseReason::Protocol(ProtocolDetail::Http2(
        e.reason().unwrap_or(Reason::PROTOCOL_ERROR).into(),
    ))
}

/// Counts a connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` for abuse,
/// by our guards (rapid reset, small-DATA flood) or h2's: a protocol error
/// and an `h2_enhance_your_calm` limit hit, and a line naming `cause`
/// (at most one per 5 s per worker: a client can repeat it at will, and
/// the counters have them all). Returns its close reason.
fn calmed(ctx: &WorkerContext, cause: &dyn std::fmt::Display) -> CloseReason {
    incr(&ctx.stats.protocol_errors);
    LimitHit::H2EnhanceYourCalm.count(&ctx.stats);
    ratelog::log(Flood::Http2Calm, |suppressed| {
        tracing::info!(
            suppressed,
            "HTTP/2 connection closed with GOAWAY(ENHANCE_YOUR_CALM): {cause}"
        )
    });
    CloseReason::Protocol(ProtocolDetail::Http2(Reason::ENHANCE_YOUR_CALM.into()))
}

/// Counts a connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` for a
/// frame flood (`flood.rs`): a control-frame flood
/// ([`HTTP2_CONTROL_BUDGET`] run out), a tiny-DATA flood
/// ([`HTTP2_TINY_DATA_BUDGET`]), an empty-DATA flood (h2's count,
/// [`H2_EMPTY_DATA_FRAMES`], met by ours first) or a PING flood
/// ([`HTTP2_PING_BUDGET`]). A protocol error and a limit hit of its
/// own, `http2_control_flood`, `http2_data_flood` (both DATA floods) or
/// `http2_ping_flood` (not `h2_enhance_your_calm`: a close counts once),
/// and a line naming the peer and the constant (at most one per 5 s per
/// worker, a kind of its own each). Returns its close reason.
fn frame_flooded(which: Flooded, ctx: &WorkerContext, addrs: &Addrs) -> CloseReason {
    incr(&ctx.stats.protocol_errors);
    let (hit, kind) = match which {
        Flooded::Control => (LimitHit::Http2ControlFlood, Flood::Http2ControlFrames),
        Flooded::TinyData => (LimitHit::Http2DataFlood, Flood::Http2TinyData),
        Flooded::EmptyData => (LimitHit::Http2DataFlood, Flood::Http2EmptyData),
        Flooded::Pings => (LimitHit::Http2PingFlood, Flood::Http2Pings),
    };
    hit.count(&ctx.stats);
    ratelog::log(kind, |suppressed| {
        tracing::info!(
            suppressed,
            "HTTP/2 connection from {} closed with GOAWAY(ENHANCE_YOUR_CALM): {}",
            ratelog::peer_name(addrs.peer()),
            flood_cause(which)
        )
    });
    CloseReason::Protocol(ProtocolDetail::Http2(Reason::ENHANCE_YOUR_CALM.into()))
}

/// What a frame flood's line says of it ([`frame_flooded`]): what the
/// client sent past which budget (named, with its size), and the flood's
/// name. Made only for a line that goes out.
fn flood_cause(which: Flooded) -> String {
    match which {
        Flooded::Control => format!(
            "its control frames (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, empty DATA, unknown types) cost more than HTTP2_CONTROL_BUDGET ({HTTP2_CONTROL_BUDGET} bytes) beyond what its requests and responses earned (control-frame flood)"
        ),
        Flooded::TinyData => format!(
            "it sent more tiny DATA frames (under 16 bytes) that no handler read than HTTP2_TINY_DATA_BUDGET ({HTTP2_TINY_DATA_BUDGET}) beyond what time and its larger DATA frames earned, or more small ones (under 256 bytes) than h2 holds unread (H2_DATA_FRAME_BUDGET, {H2_DATA_FRAME_BUDGET} bytes at 256 less each frame's size) (small-DATA flood)"
        ),
        Flooded::EmptyData => format!(
            "it sent more empty DATA frames (no payload, padding aside, not ending their stream) than h2 takes on a connection (H2_EMPTY_DATA_FRAMES, {H2_EMPTY_DATA_FRAMES} over its life, beyond a stream's first and one after each non-empty frame) (empty-DATA flood)"
        ),
        Flooded::Pings => format!(
            "it sent more PINGs with nothing sent to it in between than HTTP2_PING_BUDGET ({HTTP2_PING_BUDGET}) beyond what time gave back, {} a second (PING flood)",
            flood::PINGS_PER_SECOND
        ),
    }
}

/// A wait for room in the client's windows ended with `granted` bytes of
/// the `wanted` a response (`send_body`) or an upgraded stream
/// ([`H2Stream`]) waits to send: charged to the connection's drip budget
/// ([`FloodBudget::room_granted`]); `Some` if the round is to be held back
/// that long, the connection counted and logged at its first
/// ([`window_drip_slowed`]). The one rule for both writers.
fn drip_wait(
    budget: &FloodBudget,
    stats: &WorkerStats,
    granted: usize,
    wanted: usize,
) -> Option<Duration> {
    let (wait, first) = budget.room_granted(granted, wanted)?;
    if first {
        window_drip_slowed(stats);
    }
    Some(wait)
}

/// A connection's drip budget as its upgraded streams spend it
/// ([`DripGate`]: an [`H2Stream`] may move to another thread with its
/// handler, so it holds the budget and the worker's stats, not the
/// connection's context).
struct TunnelDrip {
    budget: Arc<FloodBudget>,
    stats: Arc<WorkerStats>,
}

impl DripGate for TunnelDrip {
    fn room_granted(&self, granted: usize, wanted: usize) -> Option<Duration> {
        drip_wait(&self.budget, &self.stats, granted, wanted)
    }
}

/// Counts and logs an HTTP/2 connection whose responses are slowed for a
/// window drip (`flood.rs`: [`HTTP2_WINDOW_DRIP_BUDGET`] run out), once a
/// connection: `http2_window_drip`, and a line (at most one per 5 s per
/// worker).
fn window_drip_slowed(stats: &WorkerStats) {
    LimitHit::Http2WindowDrip.count(stats);
    ratelog::log(Flood::Http2WindowDrip, |suppressed| {
        tracing::info!(
            suppressed,
            "an HTTP/2 client opened its flow-control window a few bytes at a time (grants under {} bytes with more of a response waiting) more than HTTP2_WINDOW_DRIP_BUDGET ({HTTP2_WINDOW_DRIP_BUDGET}) times beyond what time gave back: its responses are slowed to {} such rounds a second (window drip; a client whose application reads a few bytes at a time looks the same, so it is not closed)",
            flood::DRIP_GRANT,
            flood::DRIP_ROUNDS_PER_SECOND
        )
    });
}

/// A connection's addresses as far as megaconn kept them, and where to ask
/// for its peer's otherwise: what requests carry (`connect_info`) and what
/// the lines that name the peer say.
#[derive(Debug, Clone)]
pub(crate) struct Addrs {
    /// Kept since the accept: always over TLS, on h2c with `connect_info`
    /// (HTTP/1.1 keeps them only then).
    info: Option<ConnInfo>,
    /// The TLS client's verified certificate chain (`ClientAuth`), copied
    /// once for the connection (HTTP/2 never parks) and shared by its
    /// requests; `None` without one.
    peer: Option<PeerCertificates>,
    /// The socket to ask for the peer's address when a line names it and
    /// nothing kept it: read then (one `getpeername`, for a line that goes
    /// out), not at every h2c hand-over for a line that may never come.
    socket: Option<RawFd>,
    /// When the connection was accepted, if a step before HTTP/2 took its
    /// time since (a TLS handshake; on h2c, HTTP/1.1's wait for the first
    /// bytes): a drain cuts HTTP/2's handshake 5 s after it, as Go counts
    /// a new connection's 5 s from its accept
    /// ([`accepted_at`](Addrs::accepted_at)). `None`: from HTTP/2's start.
    accepted: Option<Instant>,
}

impl Addrs {
    /// The addresses kept, if any, and no socket to ask.
    pub(crate) fn kept(info: Option<ConnInfo>) -> Addrs {
        Addrs {
            info,
            peer: None,
            socket: None,
            accepted: None,
        }
    }

    /// These addresses, on a connection whose TLS client presented `peer`.
    pub(crate) fn with_peer(self, peer: Option<PeerCertificates>) -> Addrs {
        Addrs { peer, ..self }
    }

    /// These addresses, on a connection accepted `at` (`None`: at
    /// HTTP/2's start), from which a drain counts its handshake's 5 s.
    pub(crate) fn accepted_at(self, at: Option<Instant>) -> Addrs {
        Addrs {
            accepted: at,
            ..self
        }
    }

    /// The addresses kept, if any, and `socket` to ask for the peer's.
    ///
    /// # Safety
    ///
    /// `socket` must stay open while the [`serve`] given these addresses
    /// runs: the socket of the `io` it serves, which it owns until it
    /// returns (nothing keeps an `Addrs` past it).
    pub(crate) unsafe fn with_socket(info: Option<ConnInfo>, socket: Option<RawFd>) -> Addrs {
        Addrs {
            info,
            peer: None,
            socket,
            accepted: None,
        }
    }

    /// Both addresses, for a traced request's span: as kept, else asked of
    /// the socket (two system calls, for a sampled request only).
    fn both(&self) -> Option<ConnInfo> {
        if self.info.is_some() {
            return self.info;
        }
        // SAFETY: open while `serve` runs (`with_socket`'s contract), and
        // this is only called from within it.
        let socket = unsafe { BorrowedFd::borrow_raw(self.socket?) };
        ConnInfo::of(&socket)
    }

    /// The peer, for a log line: as kept, else the connection's lifecycle
    /// track's (with a connection hook or the registry), else asked of the
    /// socket, as HTTP/1.1 finds it (`http1::conn::peer_of`). `None` for a
    /// transport that is no socket of ours.
    fn peer(&self) -> Option<SocketAddr> {
        if let Some(info) = self.info {
            return Some(info.peer);
        }
        if let (_, Some(peer)) = lifecycle::current_id_and_peer() {
            return Some(peer);
        }
        // SAFETY: open while `serve` runs (`with_socket`'s contract), and
        // this is only called from within it.
        let socket = unsafe { BorrowedFd::borrow_raw(self.socket?) };
        crate::conn::proxy_header::peer_of(&socket)
    }
}

/// What h2 refused on its own, before a stream reached us, as far as
/// counted: the two counts our h2 patch keeps per connection
/// (`patches/README.md`, "What changed"). A 431 is a request (a record:
/// `requests_total`, the access line), as HTTP/1.1's refused head is; a
/// refused stream is not, as no request was processed (the client retries
/// it).
#[derive(Debug, Default)]
struct H2Refusals {
    /// Streams reset with `REFUSED_STREAM`, past `http2_max_concurrent_streams`.
    streams: u64,
    /// Requests h2 answered `431`, a header list over `http2_max_header_list_size`.
    header_lists: u64,
}

impl H2Refusals {
    /// Counts and logs what `conn` refused since the last look (called
    /// after each poll of it, which is when h2 reads frames): a limit hit
    /// each, named after the setting; a 431 also a protocol error and a
    /// refused head's line, as megaconn's own 431 for `max_headers` is; a
    /// refused stream a line of its own, not a protocol error (the client
    /// may retry it, and one that opened streams before our SETTINGS
    /// reached it did nothing wrong). Lines at INFO, limited per kind.
    fn count<I>(
        &mut self,
        conn: &h2::server::Connection<I, Bytes>,
        ctx: &Rc<WorkerContext>,
        addrs: &Addrs,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let (streams, header_lists) = (conn.refused_streams(), conn.oversized_header_lists());
        if (streams, header_lists) == (self.streams, self.header_lists) {
            return;
        }
        for _ in self.header_lists..header_lists {
            incr(&ctx.stats.protocol_errors);
            LimitHit::Http2MaxHeaderListSize.count(&ctx.stats);
            ratelog::refused_head(
                || addrs.peer(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header list over http2_max_header_list_size",
                "answered by h2, HTTP/2 stream ended",
            );
            // A request, as HTTP/1.1's refused head is (`answer_unserved`):
            // counted in requests_total with its 431, and its access line.
            // h2 keeps nothing of the head it refused, so the method and
            // path are unread, as for an HTTP/1.1 head that did not parse.
            let access = ctx
                .config
                .access_log
                .then(|| AccessLine::partial(None, None));
            let mut record =
                RequestRecord::untimed(ctx.stats_source(), MethodLabel::UNREAD).logged(access);
            record.status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        for _ in self.streams..streams {
            LimitHit::Http2MaxConcurrentStreams.count(&ctx.stats);
            ratelog::log(Flood::Http2RefusedStream, |suppressed| {
                let peer = ratelog::peer_name(addrs.peer());
                tracing::info!(
                    limit = ctx.config.http2.max_concurrent_streams,
                    suppressed,
                    "refused an HTTP/2 stream from {peer} past http2_max_concurrent_streams: \
                     RST_STREAM(REFUSED_STREAM), the client may retry it"
                );
            });
        }
        (self.streams, self.header_lists) = (streams, header_lists);
    }
}

/// What happened to the handler call of a new stream.
enum Start<F> {
    /// The handler runs; the flag says `HEAD`; a `CONNECT` keeps its stream
    /// for the handler to take over. The handler's future is boxed, and the
    /// box freed once it answered: kept inline, its state (and every copy
    /// the stream's future made of it and of its response) stayed in the
    /// stream's allocation for as long as the response took to send, 2.4 KB
    /// a stream for the demo's `GET /`, however long its client kept its
    /// window shut (the memory audit's H1).
    Called(Pin<Box<F>>, StreamRecord, bool, Option<Tunnel>),
    /// Answered with the status at once. The request's stream, if its body
    /// is still coming, is dropped only after the answer is queued: h2 then
    /// ends it with `RST_STREAM(NO_ERROR)` after the response (RFC 9113
    /// §8.1: the client stops sending and keeps the response), where
    /// dropping it first would reset it with `CANCEL` and the client would
    /// never see the status.
    Failed(StatusCode, RequestRecord, Option<RecvStream>),
    /// A gRPC call whose service panicked in `call` (counted and logged
    /// there): answered as a handler whose future panicked, trailers-only
    /// with `grpc-status: 13` ([`send_failure`]), not `500`.
    Panicked(Grpc, RequestRecord),
    /// A malformed request (RFC 9113 §8.1.1: a field value with leading or
    /// trailing whitespace, §8.2.1): no request, no answer; the stream is
    /// reset with `PROTOCOL_ERROR`. Counted and logged in [`prepare`].
    Malformed,
}

/// A request built from a new stream, not yet handed to the service.
struct Prepared {
    request: Request<Body>,
    method: MethodLabel,
    is_head: bool,
    tunnel: Option<Tunnel>,
    /// Where its record takes its body's byte count, if it has a body.
    body_bytes: Option<BodyTally>,
    /// See [`StreamRecord::ordinary_at`].
    ordinary_at: u64,
    /// Which gRPC it speaks, if any.
    grpc: Grpc,
}

/// Where a stream's record takes the bytes its request body took in
/// ([`ConnBodyBytes::take`]).
struct BodyTally {
    /// The connection's count: with the access log off, the record takes
    /// whatever arrived since the last record took (only the worker's sum
    /// is counted then, at no allocation); it counts the rest.
    conn_bytes: Arc<ConnBodyBytes>,
    /// What the body shares with the stream's exchange, when the access
    /// log or `min_request_body_rate` is on (one allocation per stream
    /// with a body): its own count, which the log's line needs, and its
    /// cut by the rate (`run_stream`).
    share: Option<Arc<BodyShare>>,
}

/// A stream's [`RequestRecord`], which counts the bytes its request body
/// took in ([`BodyTally`]) just before it drops: by then the body has
/// dropped too (with the handler, or with the response body that streamed
/// it), and the access-log line and `request_body_bytes` have them; a body
/// the handler kept counts into `request_body_bytes` when the connection's
/// [`ConnBodyBytes`] drops.
struct StreamRecord {
    record: RequestRecord,
    body_bytes: Option<BodyTally>,
    /// When (`clock::now_nanos`) a reset of the stream before its head
    /// becomes an ordinary cancellation, not counted by the rapid-reset
    /// guard ([`ordinary_cancel_age`] after its request came).
    ordinary_at: u64,
    /// Which gRPC its request speaks, if any: a failed handler's answer.
    grpc: Grpc,
}

impl Deref for StreamRecord {
    type Target = RequestRecord;
    fn deref(&self) -> &RequestRecord {
        &self.record
    }
}

impl DerefMut for StreamRecord {
    fn deref_mut(&mut self) -> &mut RequestRecord {
        &mut self.record
    }
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        if let Some(tally) = &self.body_bytes {
            let bytes = tally.conn_bytes.take(tally.share.as_deref());
            self.record.request_bytes(bytes as usize);
        }
    }
}

/// A stream whose request waits for the service to be ready: boxed, and
/// only while it waits (a ready service, the usual case, never makes one).
type Waiting = Box<(Prepared, SendResponse<Bytes>)>;

/// A new stream's request refused before any service sees it, as HTTP/1.1
/// refuses a head (with the same reasons, which name the setting): its
/// status, why, and the limit it went over.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    limit: LimitHit,
}

/// A body declared (Content-Length) over `max_body_bytes`.
const BODY_TOO_LARGE: Refusal = Refusal {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    reason: "Content-Length exceeds max_body_bytes",
    limit: LimitHit::MaxBodyBytes,
};

/// More header fields than `max_headers` (pseudo-headers not counted, the
/// `cookie` fields counted as one). h2
/// bounds only their bytes (`http2_max_header_list_size`): without this,
/// 300 fields under 64 KiB were served where HTTP/1.1 answers 431 at 101.
const TOO_MANY_HEADERS: Refusal = Refusal {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    reason: "more than max_headers request headers",
    limit: LimitHit::MaxHeaders,
};

/// A `host` field naming another authority than `:authority` (RFC 9113
/// §8.3.1: a server SHOULD treat the request as malformed), or more than
/// one `host` field: refused `400`, as HTTP/1.1 refuses a duplicate or
/// invalid `Host` (`http1/head.rs`), and as nginx's HTTP/2 module has
/// (its `ngx_http_v2_parse_authority` made `:authority` a `Host` field,
/// so a `host` beside it was a "client sent duplicate host header", 400;
/// read in its source, not run). h2 checks only that `:authority` parses.
/// Before, the handler got both, and a
/// router or proxy reading `host` could be sent elsewhere than the
/// authority the request was made for (the desync of proxies that route
/// on one and forward the other). Not a stream reset (`PROTOCOL_ERROR`,
/// the other form §8.1.1 allows): a client sees a status it reports as
/// the request's fault, the server's line says why, and the counts are
/// those of HTTP/1.1's refused heads (`malformed_request`).
const HOST_NOT_AUTHORITY: Refusal = Refusal {
    status: StatusCode::BAD_REQUEST,
    reason: "host header names another authority than :authority",
    limit: LimitHit::MalformedRequest,
};

/// More than one `host` field (HTTP/1.1's "duplicate Host header").
const DUPLICATE_HOST: Refusal = Refusal {
    status: StatusCode::BAD_REQUEST,
    reason: "duplicate host header",
    limit: LimitHit::MalformedRequest,
};

/// Whether a request's `host` fields agree with its `:authority` (`uri`'s,
/// when it has one): one field at most, naming the same host (ASCII case
/// ignored) and port (a missing one the scheme's default), userinfo
/// aside. Without `:authority` (a client may send `host` alone, §8.3.1)
/// any one `host` is accepted, as HTTP/1.1 accepts it.
fn host_refusal(headers: &HeaderMap, uri: &http::Uri) -> Option<Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return Some(DUPLICATE_HOST);
    }
    let authority = uri.authority()?;
    let same = http::uri::Authority::try_from(host.as_bytes()).is_ok_and(|host| {
        let default = match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        };
        host.host().eq_ignore_ascii_case(authority.host())
            && host.port_u16().or(default) == authority.port_u16().or(default)
    });
    (!same).then_some(HOST_NOT_AUTHORITY)
}

/// The deadline a gRPC call announced (`grpc-timeout`: up to 8 digits and
/// a unit, `H`, `M`, `S`, `m`, `u` or `n`), if it announced one that
/// parses.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long a stream of a request with `headers` runs before the client's
/// reset of it is an ordinary cancellation ([`ORDINARY_CANCEL_AGE`]): half
/// the call's announced deadline, between [`MIN_DEADLINE_CANCEL_AGE`] and
/// [`ORDINARY_CANCEL_AGE`], for a call that announced one.
fn ordinary_cancel_age(headers: &HeaderMap) -> Duration {
    grpc_timeout(headers).map_or(ORDINARY_CANCEL_AGE, |deadline| {
        (deadline / 2).clamp(MIN_DEADLINE_CANCEL_AGE, ORDINARY_CANCEL_AGE)
    })
}

/// What refuses a request with `headers` for `uri` (a body of
/// `content_length` declared), if anything does.
fn refusal(
    headers: &HeaderMap,
    uri: &http::Uri,
    content_length: Option<u64>,
    ctx: &WorkerContext,
) -> Option<Refusal> {
    if let Some(refused) = host_refusal(headers, uri) {
        return Some(refused);
    }
    // Cookies count as one field, as the one `Cookie` line HTTP/1.1 sends:
    // HTTP/2 clients may split it into one field per cookie (RFC 9113
    // §8.2.3), and h2 does not join them back.
    let cookies = headers.get_all(header::COOKIE).iter().count();
    if headers.len() - cookies + usize::from(cookies > 0) > ctx.config.max_headers {
        return Some(TOO_MANY_HEADERS);
    }
    content_length
        .is_some_and(|n| n > ctx.config.max_body_bytes)
        .then_some(BODY_TOO_LARGE)
}

/// Builds the request of a new stream, or answers it at once (413, 431).
/// `addrs`: the connection's, whether or not the request is to carry them
/// (`connect_info`): its peer names who sent a refused request.
// The `Err` is the stream's next step, moved into the stream's own future
// at once: boxing it would allocate once a refused stream for nothing
// (129 B since a stream's start can carry the client's certificate chain,
// mutual TLS, session 46).
#[allow(clippy::result_large_err)]
fn prepare<F>(
    request: Request<RecvStream>,
    ctx: &Rc<WorkerContext>,
    conn_bytes: &Arc<ConnBodyBytes>,
    addrs: &Addrs,
) -> Result<Prepared, Start<F>> {
    let (parts, recv) = request.into_parts();
    let method = MethodLabel::of(&parts.method);
    let is_head = parts.method == Method::HEAD;
    let is_connect = parts.method == Method::CONNECT;
    let grpc = Grpc::of(&parts.headers);
    // From when the request came, not when the handler first runs: a
    // reset's age is the client's, whatever kept the service.
    let ordinary_at =
        clock::now_nanos().saturating_add(ordinary_cancel_age(&parts.headers).as_nanos() as u64);
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if crate::service::has_padded_value(&parts.headers) {
        // Counted as HTTP/1.1 counts a malformed head (`protocol_errors`,
        // `limit_hits{malformed_request}`) and logged as it logs one.
        incr(&ctx.stats.protocol_errors);
        LimitHit::MalformedRequest.count(&ctx.stats);
        ratelog::log(Flood::RefusedHead, |suppressed| {
            let peer = ratelog::peer_name(addrs.peer());
            tracing::info!(
                suppressed,
                "malformed HTTP/2 request from {peer}: a field value with leading or trailing whitespace; stream reset (PROTOCOL_ERROR)"
            );
        });
        return Err(Start::Malformed);
    }
    if let Some(refused) = refusal(&parts.headers, &parts.uri, content_length, ctx) {
        incr(&ctx.stats.protocol_errors);
        refused.limit.count(&ctx.stats);
        // Logged as HTTP/1.1 logs a refused head (at INFO, limited): it
        // was at debug only, counted but with no line naming who sent it.
        ratelog::refused_head(
            || addrs.peer(),
            refused.status,
            refused.reason,
            "answered, HTTP/2 stream ended",
        );
        let access = AccessLine::of(ctx.config.access_log, &parts.method, &parts.uri);
        return Err(Start::Failed(
            refused.status,
            RequestRecord::untimed(ctx.stats_source(), method).logged(access),
            Some(recv),
        ));
    }
    // Handed to the service from here on (a 503 for a service not ready
    // included), as HTTP/1.1 counts a request once its head parsed
    // within the limits: a refused one above is a refusal
    // (`requests_refused`), not also one of `requests`.
    incr(&ctx.stats.requests);
    lifecycle::count_request();
    // A CONNECT's stream carries no request body: after a 2xx it is the
    // tunnel (RFC 9113 §8.5), a WebSocket's bytes with `:protocol`
    // (RFC 8441 §5).
    let (body, tunnel, body_bytes) = if is_connect {
        (Body::empty(), Some(recv), None)
    } else if recv.is_end_stream() {
        (Body::empty(), None, None)
    } else {
        // Per stream only for the access log's line (see `BodyTally`).
        let share = conn_bytes
            .needs_share()
            .then(|| Arc::new(BodyShare::default()));
        let tally = BodyTally {
            conn_bytes: conn_bytes.clone(),
            share: share.clone(),
        };
        // A gRPC request's body is a stream of messages whose pauses are
        // the application's (a client- or bidi-streaming call whose client
        // has nothing to say for a minute): no bound on a wait for its
        // DATA but `read_timeout`, if set, neither `idle_timeout` nor
        // `min_request_body_rate` (ASP.NET Core's gRPC turns Kestrel's
        // rate off for streaming calls; tonic's server has neither);
        // `RecvBody::stalled` says what still bounds a dead peer.
        let paced = grpc == Grpc::No;
        let body = RecvBody::new(
            recv,
            content_length,
            ctx.config.read_timeout,
            paced,
            conn_bytes.clone(),
            share,
        );
        (Body::h2(body), None, Some(tally))
    };
    let mut request = Request::from_parts(parts, body);
    if let Some(info) = addrs.info.filter(|_| ctx.config.connect_info) {
        crate::service::insert_conn_info(request.extensions_mut(), info);
    }
    if let Some(peer) = &addrs.peer {
        request.extensions_mut().insert(peer.clone());
    }
    // As an HTTP/1.1 upgrade request does, a CONNECT carries the handle
    // that receives the stream once the handler answers 2xx.
    let tunnel = tunnel.map(|recv| {
        let (tx, on_upgrade) = upgrade::pending();
        request.extensions_mut().insert(on_upgrade);
        // `:protocol` also as hyper hands it over: axum's own
        // `WebSocketUpgrade` looks for it before its upgrade handle, and
        // without it answered `400`, not the `426` that gets the hint.
        #[cfg(feature = "axum")]
        if let Some(protocol) = request.extensions().get::<h2::ext::Protocol>() {
            let protocol = hyper::ext::Protocol::from(protocol.as_str());
            request.extensions_mut().insert(protocol);
        }
        Tunnel { recv, tx }
    });
    Ok(Prepared {
        request,
        method,
        is_head,
        tunnel,
        body_bytes,
        ordinary_at,
        grpc,
    })
}

/// Calls the service, whose readiness was `ready` (the call itself runs
/// here, in the connection loop; the future it returns runs in the stream's
/// exchange). A readiness error is answered with 503, as on HTTP/1.1.
fn call_service<S: HttpService>(
    service: &mut S,
    prepared: Prepared,
    ready: Result<(), S::Error>,
    ctx: &Rc<WorkerContext>,
    addrs: &Addrs,
) -> Start<S::Future> {
    let Prepared {
        request,
        method,
        is_head,
        tunnel,
        body_bytes,
        ordinary_at,
        grpc,
    } = prepared;
    // Taken before the service owns the request, for whatever answers it:
    // the line is written when the stream's record drops, as on HTTP/1.1.
    let access = AccessLine::of(ctx.config.access_log, request.method(), request.uri());
    if !crate::service::readiness(ready) {
        return Start::Failed(
            StatusCode::SERVICE_UNAVAILABLE,
            RequestRecord::untimed(ctx.stats_source(), method).logged(access),
            None,
        );
    }
    // The request carries its scheme (`:scheme`), so `secure` is only a
    // fallback.
    match crate::service::call(service, request, ctx, false, || addrs.both()) {
        (Some(handler), span) => {
            let record = RequestRecord::start(ctx.stats_source(), method)
                .traced(span)
                .logged(access);
            let record = StreamRecord {
                record,
                body_bytes,
                ordinary_at,
                grpc,
            };
            Start::Called(Box::pin(handler), record, is_head, tunnel)
        }
        (None, span) => {
            let record = RequestRecord::untimed(ctx.stats_source(), method)
                .traced(span)
                .logged(access);
            match grpc {
                Grpc::No => Start::Failed(StatusCode::INTERNAL_SERVER_ERROR, record, None),
                grpc => Start::Panicked(grpc, record),
            }
        }
    }
}

/// Reads and discards what is left of a request body answered early (with
/// 413, say), up to `max` bytes and [`DRAIN_TIMEOUT`], as HTTP/1.1's drain
/// does: a client still uploading (curl, for one) then finishes its request
/// and reads the answer as a response, where an early `RST_STREAM`, even
/// `NO_ERROR`, makes it report a transfer failure. Past either bound the
/// stream is dropped, and h2 ends it with `RST_STREAM(NO_ERROR)` after the
/// response (RFC 9113 §8.1). Returns how many bytes it discarded (counted as
/// received, as HTTP/1.1 counts the body it drains).
async fn drain(body: &mut RecvStream, max: u64) -> u64 {
    let mut seen = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            seen += data.len() as u64;
            if seen > max {
                break;
            }
        }
    })
    .await;
    seen
}

/// How long a request body answered early may take to arrive and be
/// discarded.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How a stream's exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The response went out (or the stream failed on our side).
    Done,
    /// The client reset the stream before its response head went out and
    /// before it ran its ordinary age: the rapid-reset pattern
    /// (CVE-2023-44487), counted by [`ResetGuard`].
    ClientReset,
    /// The client reset the stream before its response head went out, once
    /// it ran its ordinary age ([`ordinary_cancel_age`]): a deadline
    /// expiring, a call given up on; not counted.
    Cancelled,
    /// The client reset the stream after its response head, in the body: a
    /// cancelled download, server stream or watch, which is normal use of
    /// long-lived streams and not counted.
    ResetInBody,
    /// The request body came slower than `min_request_body_rate` while the
    /// handler waited (`RecvBody::too_slow`, counted there): the handler
    /// was dropped and the stream answered `408`, or, its response begun,
    /// reset with `CANCEL`. The connection's loop writes the line, which
    /// names the peer (the stream has no socket to ask). A completion for
    /// the rapid-reset count: the server ended it.
    ///
    /// Why `CANCEL` (RFC 9113 §7: "the stream is no longer needed"): the
    /// client broke no rule (sending slowly is allowed), so neither
    /// `PROTOCOL_ERROR` nor `FLOW_CONTROL_ERROR`; nothing failed here, so
    /// not `INTERNAL_ERROR`, which would send the client's developer
    /// looking for a server bug; and `ENHANCE_YOUR_CALM` says the peer
    /// causes excessive load, the opposite of a drip, and asks it to back
    /// off (sending slower still). The same code as a response whose
    /// client gives it no room for `write_stall_timeout` (`Stalled::Stuck`).
    /// Kestrel, whose rate is measured over the whole connection (all its
    /// streams' reads), has no stream to blame and closes the connection
    /// with `GOAWAY(INTERNAL_ERROR)` (`Http2Connection.HandleReadDataRateTimeout`);
    /// here each body has its own account, so only its stream ends.
    TooSlow,
}

/// What ended a stream's exchange from outside it, before its response
/// head ([`CutWatch`]).
enum Cut {
    /// The request body was cut by `min_request_body_rate`.
    TooSlow,
    /// The drain's deadline is near and the stream is a gRPC call
    /// ([`CallEnd`]).
    ShuttingDown,
}

/// What can end a stream's exchange from outside it, looked at after the
/// handler's polls and the response body's.
///
/// First, its hold on its body's cut by the rate (`BodyShare`, `RateCut`;
/// none: no body, or neither the rate nor the access log on, in which case
/// the cut is never looked at), let go when the exchange ends, so that a
/// cut after it is the body's alone to report (`RateCut::leave`).
///
/// Second, for a gRPC call, its place among the worker's open calls
/// ([`CallEnd`]; none for any other stream), which a margin before the
/// drain's deadline ends the call with `grpc-status: 14` (UNAVAILABLE,
/// [`grpc::SHUTTING_DOWN`]), which its client retries, where the close at
/// the deadline left it a broken connection: trailers-only before the
/// response head, else trailers once the response body waits between
/// frames, or in the middle of one (of a message) while the client's
/// windows hold the rest: trailers are not flow-controlled, and tonic's
/// client reads their status over a message cut short (a client that
/// reads nothing meanwhile sees the close at the deadline, as before).
/// A gRPC-web call has no HTTP trailers: its status after its head goes
/// in its body, a gRPC-web trailer frame (`Status::web_trailer_frame`)
/// in the last DATA frame, once the response body waits between frames
/// (after its last whole message, as HTTP/1.1's gRPC-web calls end,
/// `exchange.rs`' `end_call`; not in the middle of one, where the frame
/// would be read as the message's bytes), and only in a body of no
/// declared length (a `content-length` leaves no room for it: such a call
/// leaves the list at its head and keeps the close at the deadline; so
/// it was for every gRPC-web call over HTTP/2 until session 53). Other
/// streams are left to the deadline too: nothing in HTTP says "retry
/// this" after a response began.
struct CutWatch<'s>(Option<Arc<BodyShare>>, Option<CallEnd<'s>>);

impl CutWatch<'_> {
    /// Whether the body was cut; else the exchange is woken when it is.
    fn poll_cut(&self, cx: &mut Context<'_>) -> bool {
        self.0.as_ref().is_some_and(|share| share.cut.poll_cut(cx))
    }

    /// Whether the call is to end for the drain; else the exchange is
    /// woken when it is. False for a stream that is no (longer a) call.
    fn poll_call_end(&self, cx: &Context<'_>) -> bool {
        self.1.as_ref().is_some_and(|call| call.poll_end(cx))
    }
}

impl Drop for CutWatch<'_> {
    fn drop(&mut self) {
        if let Some(share) = &self.0 {
            share.cut.leave();
        }
    }
}

/// One stream: run the handler (cancelled if the client resets the stream),
/// send the response head, then its body and trailers under flow control.
async fn run_stream<F, E, B>(
    start: Start<F>,
    mut respond: SendResponse<Bytes>,
    ctx: Rc<WorkerContext>,
    gate: &StallGate,
) -> StreamEnd
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    gate.running();
    let (handler, mut record, is_head, tunnel) = match start {
        Start::Called(handler, record, is_head, tunnel) => (handler, record, is_head, tunnel),
        Start::Failed(status, mut record, request_stream) => {
            send_error(&mut respond, status, &mut record);
            if let Some(mut body) = request_stream {
                // Boxed, as the tunnel below: a rare path's state is not
                // to weigh on every stream's future.
                let drained = Box::pin(drain(&mut body, ctx.config.max_drain_bytes)).await;
                record.request_bytes(drained as usize);
            }
            return StreamEnd::Done;
        }
        Start::Panicked(grpc, mut record) => {
            send_failure(&mut respond, grpc, grpc::PANICKED, &mut record);
            return StreamEnd::Done;
        }
        Start::Malformed => {
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return StreamEnd::Done;
        }
    };
    // The body's cut by `min_request_body_rate` is this exchange's to act
    // on while it runs (`RateCut`), and so is a gRPC call's end at the
    // drain's deadline.
    let mut cut = CutWatch(
        record.body_bytes.as_ref().and_then(|t| t.share.clone()),
        (record.grpc != Grpc::No).then(|| ctx.shutdown.call_end()),
    );
    // In a block, so that what its steps borrowed (the response, its
    // parts) is not kept in the stream's future while the body is sent:
    // a local borrowed once is kept until its scope ends.
    let (send, body, length, tunnel) = {
        let outcome = {
            // Dropped, and its box freed, once it answered.
            let mut handler = AssertUnwindSafe(handler).catch_unwind();
            poll_fn(|cx| {
                let answer = handler.poll_unpin(cx);
                // After the handler's poll, in which its body may have
                // been cut: the cut wins over an answer given in the same
                // poll, as on HTTP/1.1, whose exchange answers `408`
                // without polling the handler again.
                if cut.poll_cut(cx) {
                    return Poll::Ready(Err(Cut::TooSlow));
                }
                if let Poll::Ready(r) = answer {
                    return Poll::Ready(Ok(Some(r)));
                }
                // After the answer: a call that answered in time is sent.
                if cut.poll_call_end(cx) {
                    return Poll::Ready(Err(Cut::ShuttingDown));
                }
                match respond.poll_reset(cx) {
                    Poll::Ready(_) => Poll::Ready(Ok(None)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        // The handler (and the body it held) dropped: the `408` ends our
        // half, and h2 resets the stream with `NO_ERROR` once the
        // exchange lets it go (RFC 9113 §8.1), so the client stops
        // sending and keeps the answer.
        let response = match outcome {
            Err(Cut::ShuttingDown) => {
                record.error(ErrorClass::Shutdown);
                let grpc = record.grpc;
                send_failure(&mut respond, grpc, grpc::SHUTTING_DOWN, &mut record);
                return StreamEnd::Done;
            }
            Err(Cut::TooSlow) => {
                record.error(ErrorClass::Timeout);
                send_error_text(
                    &mut respond,
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body came slower than min_request_body_rate",
                    &mut record,
                );
                return StreamEnd::TooSlow;
            }
            Ok(None) => {
                incr(&ctx.stats.cancelled);
                record.error(ErrorClass::ClientGone);
                if clock::now_nanos() >= record.ordinary_at {
                    return StreamEnd::Cancelled;
                }
                return StreamEnd::ClientReset;
            }
            Ok(Some(Err(panic))) => {
                incr(&ctx.stats.panics);
                ratelog::panicked(
                    if record.grpc == Grpc::No {
                        "handler panicked; answering 500"
                    } else {
                        "handler panicked; answering grpc-status 13 (INTERNAL)"
                    },
                    Some(panic_message(&panic)),
                );
                record.error(ErrorClass::Panic);
                let grpc = record.grpc;
                send_failure(&mut respond, grpc, grpc::PANICKED, &mut record);
                return StreamEnd::Done;
            }
            Ok(Some(Ok(Err(e)))) => {
                let e: BoxError = e.into();
                tracing::error!(error = %e, "service failed; answering 500 (gRPC: grpc-status 13)");
                if record.grpc == Grpc::No {
                    send_error(&mut respond, StatusCode::INTERNAL_SERVER_ERROR, &mut record);
                } else {
                    let grpc = record.grpc;
                    send_failure(&mut respond, grpc, grpc::FAILED, &mut record);
                }
                return StreamEnd::Done;
            }
            Ok(Some(Ok(Ok(response)))) => response,
        };
        let (mut parts, body) = response.into_parts();
        if parts.status.is_informational() {
            // A 1xx is interim (RFC 9113 §8.1) and HTTP/2 has no 101 (§8.6):
            // sent as the answer, the client would wait for a final one that
            // never comes. Answered 500, as on HTTP/1.1.
            tracing::warn!(
                status = parts.status.as_u16(),
                "handler returned an informational (1xx) status as its response; answering 500"
            );
            send_error(&mut respond, StatusCode::INTERNAL_SERVER_ERROR, &mut record);
            return StreamEnd::Done;
        }
        // A CONNECT answered 2xx becomes a tunnel; answered otherwise, its
        // response goes out as any other, and the client's half is dropped
        // after it (with `tunnel`), which h2 ends with `RST_STREAM(NO_ERROR)`
        // (RFC 9113 §8.1).
        let tunnel = match tunnel {
            Some(tunnel) if parts.status.is_success() => {
                return Box::pin(open_tunnel(tunnel, parts, respond, record, &ctx, gate)).await;
            }
            #[cfg(feature = "axum")]
            Some(tunnel) if parts.status == StatusCode::UPGRADE_REQUIRED => {
                tracing::warn!("{}", crate::service::ws_axum::WRONG_EXTRACTOR_HINT);
                Some(tunnel)
            }
            tunnel => tunnel,
        };
        let framing = prepare_headers(&mut parts.headers, parts.status, &body, is_head, &ctx);
        let end = match framing {
            Framing::Bodiless => true,
            // A declared length with an empty body goes to `send_body`, which
            // resets the stream for the missing bytes.
            Framing::Length(n) => n == 0 && body.is_end_stream(),
            Framing::Open => body.is_end_stream(),
        };
        let send = match send_head(&mut respond, parts, end, &mut record) {
            Ok(send) => send,
            Err(e) => return head_refused(&e, &mut respond, &mut record),
        };
        if end {
            return StreamEnd::Done;
        }
        // A gRPC-web call's status now goes in its body, which a declared
        // length leaves no room for: see `CutWatch`.
        if record.grpc != Grpc::Native && matches!(framing, Framing::Length(_)) {
            cut.1 = None;
        }
        // write_timeout bounds the body from when the handler answered, as on
        // HTTP/1.1: a client that stops taking it (no WINDOW_UPDATE) gets
        // RST_STREAM(INTERNAL_ERROR), as Go's server sends. With it off,
        // write_stall_timeout bounds each wait for room (`stall_bound`).
        let length = match framing {
            Framing::Length(n) => Some(n),
            Framing::Bodiless | Framing::Open => None,
        };
        (send, body, length, tunnel)
    };
    let ended = send_body(send, body, length, &mut record, &ctx, gate, &cut).await;
    drop(tunnel);
    if ended == StreamEnd::ResetInBody {
        // Not a rapid reset (`ResetGuard`), but a cut response all the
        // same: counted, or it would look like a whole 2xx.
        incr(&ctx.stats.responses_cut);
        record.error(ErrorClass::ClientGone);
    }
    ended
}

/// A `CONNECT` stream, held while its handler runs.
struct Tunnel {
    /// The client's half, which becomes the tunnel's read side.
    recv: RecvStream,
    /// Hands the stream to the request's [`OnUpgrade`](crate::OnUpgrade).
    tx: UpgradeSender,
}

/// The handler answered a `CONNECT` with a 2xx: the stream becomes the
/// handler's byte stream (an [`Upgraded`] over [`H2Stream`]) and this
/// exchange lasts until the handler drops it, so the connection counts the
/// stream as open (its idle timer stays off) meanwhile.
async fn open_tunnel(
    tunnel: Tunnel,
    mut parts: http::response::Parts,
    mut respond: SendResponse<Bytes>,
    mut record: StreamRecord,
    ctx: &WorkerContext,
    gate: &StallGate,
) -> StreamEnd {
    // A 2xx to CONNECT has no body, so no length (RFC 9110 §9.3.6); what
    // the handler's body held is not sent, as on HTTP/1.1's 101.
    let _ = prepare_headers(&mut parts.headers, parts.status, &Body::empty(), false, ctx);
    parts.headers.remove(header::CONTENT_LENGTH);
    let send = match send_head(&mut respond, parts, false, &mut record) {
        Ok(send) => send,
        Err(e) => return head_refused(&e, &mut respond, &mut record),
    };
    // Its writes' waits for room spend the connection's drip budget, as
    // responses' do (`send_body`).
    let drip = Arc::new(TunnelDrip {
        budget: gate.budget().clone(),
        stats: ctx.stats.clone(),
    });
    // Its reads give tiny frames back to the tiny-DATA budget, as a
    // body's do.
    let credit = gate.budget().clone();
    let (io, done) = H2Stream::watched(send, tunnel.recv, drip, credit);
    // Refused (the handler dropped its `OnUpgrade`): the `Upgraded` comes
    // back and drops here, which ends the stream.
    // No socket for the peer's progress: the connection's acknowledged
    // bytes count the other streams' too (our writes show the stream's).
    let upgraded = Upgraded::on_stream(io, ctx.stats.clone(), ctx.upgrade_drain(false))
        .with_write_limit(
            MessageSettings::write_limit_without_heartbeat(&ctx.config),
            None,
        );
    upgrade::hand_over(tunnel.tx, upgraded);
    let _ = done.await;
    StreamEnd::Done
}

/// Drops the fields HTTP/2 forbids in a response (RFC 9113 §8.2.2), which
/// h2 would refuse the whole head for: the connection-specific ones, `te`
/// (allowed in requests only, as `trailers`), and those that `connection`
/// names, as hyper's `strip_connection_headers` does (`proto/h2/mod.rs`).
fn strip_connection_headers(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(header::CONNECTION) {
        if let Ok(names) = connection.to_str() {
            for name in names.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    for name in [
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// What may follow a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No DATA (`HEAD`, 204, 304): the head ends the stream, and what the
    /// handler's body holds is not sent (RFC 9113 §8.1.1).
    Bodiless,
    /// Exactly this many bytes, as the `content-length` sent says.
    Length(u64),
    /// A body of unknown length.
    Open,
}

/// Drops what HTTP/2 forbids (connection-specific fields), adds `date`,
/// `server` and, when the body's length is known, the body is not already
/// at its end and the response may have one, `content-length`; says what
/// the body must be.
fn prepare_headers<B: HttpBody>(
    headers: &mut HeaderMap,
    status: StatusCode,
    body: &B,
    is_head: bool,
    ctx: &WorkerContext,
) -> Framing {
    strip_connection_headers(headers);
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, crate::proto::date::now());
    }
    if let Some(server) = &ctx.config.server_header {
        if !headers.contains_key(header::SERVER) {
            headers.insert(header::SERVER, server.clone());
        }
    }
    if status == StatusCode::NO_CONTENT {
        // A 204 never has a length (RFC 9110 §8.6: MUST NOT), not even 0.
        headers.remove(header::CONTENT_LENGTH);
        return Framing::Bodiless;
    }
    // HEAD and 304 advertise only the full response's length (RFC 9110
    // §8.6): never a 0 that merely says this response has no body.
    let not_modified = status == StatusCode::NOT_MODIFIED;
    let bodiless = is_head || not_modified;
    let exact = body.size_hint().exact();
    let mut declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(n) => Some(n),
            None => {
                tracing::warn!(value = ?v, "handler's content-length is not a length; dropped");
                headers.remove(header::CONTENT_LENGTH);
                None
            }
        },
    };
    // A 304 carries a length only as the handler's own statement of the
    // 200's, which the server cannot know (HTTP/1.1's rule, encode.rs):
    // never 0, and never one equal to the attached body's exact size
    // (axum's router writes that header from the body itself; a handler
    // that attached a body to a 304 did not mean its length). Go sends
    // no length on a 304.
    if not_modified && declared.is_some_and(|n| n == 0 || Some(n) == exact) {
        headers.remove(header::CONTENT_LENGTH);
        declared = None;
    }
    // hyper's rule (`proto/h2/server.rs`, 1.12): a length from the body's
    // size only when the body has something to send. A response the head
    // ends (gRPC's trailers-only answers: every error status of a unary
    // call) goes out with no `content-length` at all, where `0` was
    // added before and gRPC clients listed it as trailing metadata.
    if declared.is_none() && !not_modified && !body.is_end_stream() {
        if let Some(n) = exact.filter(|&n| !(bodiless && n == 0)) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    match declared.or(exact) {
        _ if bodiless => Framing::Bodiless,
        Some(n) => Framing::Length(n),
        None => Framing::Open,
    }
}

/// h2 refused a response head. A stream the client reset meanwhile (between
/// the handler's answer and now) is its reset before the head, with no
/// status in its record (none went out: `requests_total`'s `none` class
/// and status 0 in the access line, as for a reset before the handler
/// answered); otherwise
/// the head is at fault (a field HTTP/2 forbids that got through): a server
/// error, logged and answered with a bare 500 if the stream still takes one,
/// not counted as the client's reset.
fn head_refused(
    e: &h2::Error,
    respond: &mut SendResponse<Bytes>,
    record: &mut RequestRecord,
) -> StreamEnd {
    if poll_fn(|cx| respond.poll_reset(cx))
        .now_or_never()
        .is_some()
    {
        record.error(ErrorClass::ClientGone);
        return StreamEnd::ClientReset;
    }
    tracing::warn!(error = %e, "HTTP/2 refused the response head; answering 500");
    send_error(respond, StatusCode::INTERNAL_SERVER_ERROR, record);
    StreamEnd::Done
}

/// Sends a stream's response head, the one way every head goes out:
/// notes the route the service matched, then the status only once h2 took
/// the head. A head h2 refused (the client reset the stream between the
/// handler's answer and now) leaves no status in the record, as a reset
/// before the handler answered does: `requests_total`'s `none` class and
/// status 0 in the access line, not the status that never went out.
fn send_head(
    respond: &mut SendResponse<Bytes>,
    parts: http::response::Parts,
    end: bool,
    record: &mut RequestRecord,
) -> Result<SendStream<Bytes>, h2::Error> {
    record.route(&parts);
    let status = parts.status;
    let send = respond.send_response(Response::from_parts(parts, ()), end)?;
    record.status(status);
    Ok(send)
}

/// Answers the stream with a bare `status` (413, 500, 503), if it still
/// takes one ([`send_head`]).
fn send_error(respond: &mut SendResponse<Bytes>, status: StatusCode, record: &mut RequestRecord) {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let _ = send_head(respond, parts, true, record);
}

/// Answers a stream whose handler failed (panicked, or the service
/// returned an error), or a gRPC call the drain ends: a gRPC request with a
/// trailers-only response carrying `status` (`grpc-status` 13, INTERNAL,
/// or 14, UNAVAILABLE, and its `grpc-message`: `service/grpc.rs`, shared
/// with HTTP/1.1's gRPC-web); anything else `500` with a text body
/// ([`send_error_text`]). Not a reset either, as tonic's own server does
/// when a handler panics (hyper drops its task: `RST_STREAM(CANCEL)`):
/// its clients then report `CANCELLED`, as if they had given up, with no
/// message, and over HTTP/1.1 (gRPC-web) there is no reset to send.
fn send_failure(
    respond: &mut SendResponse<Bytes>,
    grpc: Grpc,
    status: grpc::Status,
    record: &mut RequestRecord,
) {
    let Some(fields) = status.head_fields(grpc) else {
        let reason = status.message;
        send_error_text(respond, StatusCode::INTERNAL_SERVER_ERROR, reason, record);
        return;
    };
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.headers.extend(fields);
    parts
        .headers
        .insert(header::DATE, crate::proto::date::now());
    let _ = send_head(respond, parts, true, record);
}

/// Answers the stream `status` (a `500`, a `408`) with the one-line text
/// body HTTP/1.1's has (`encode_error`: `Internal Server Error: <reason>`),
/// so that a client sees the same answer on both.
fn send_error_text(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    reason: &str,
    record: &mut RequestRecord,
) {
    let name = status.canonical_reason().unwrap_or("Error");
    let text = Bytes::from(format!("{name}: {reason}\n"));
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if let Ok(mut send) = send_head(respond, parts, false, record) {
        // A few bytes, well inside any window: h2 buffers them.
        let _ = send.send_data(text, true);
    }
}

/// Streams the response body: polls the body first, then reserves room for
/// the frame it gave and hands h2 no more of it than the capacity granted,
/// stops when the client resets the stream, and resets it when
/// `write_timeout` passes first, or, with it off, when a wait for room
/// outlasts `write_stall_timeout` ([`stall_bound`]). A wait for the body's
/// first room counts toward `http2_max_stalled_streams` (`gate`). A
/// request body cut by `min_request_body_rate` while the response is sent
/// (read by the response body, an echo, or by a task of the handler's)
/// resets the stream (`CANCEL`, [`StreamEnd::TooSlow`]): seen through
/// `cut`, after each poll of the response body.
///
/// Why the body comes first (hyper #4003, fixed as here in hyper 1.12):
/// capacity reserved before there is data to send is taken from the
/// connection's window, so a body that waits (a slow handler, an SSE feed)
/// while holding a reservation starves the connection's other streams, for
/// good with a client that sends WINDOW_UPDATE only once its window is used
/// up. A frame's reservation is exactly its length and is used up by
/// sending it, so nothing is left reserved when the body is polled again
/// (h2 counts what it buffers in the reservation and takes what it writes
/// out of both, so after the last chunk the two are equal).
///
/// Why no more than the capacity: h2 buffers whatever `send_data` is given,
/// window or not. A whole frame handed over at once (a 1 MiB `Full`) would
/// sit in h2's buffer for a client that stopped reading, out of reach of
/// `write_timeout`, with the stream's exchange already counted as done.
async fn send_body<B>(
    mut send: SendStream<Bytes>,
    body: B,
    mut length: Option<u64>,
    record: &mut StreamRecord,
    ctx: &WorkerContext,
    gate: &StallGate,
    cut: &CutWatch<'_>,
) -> StreamEnd
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut deadline = LazyDeadline::after(ctx.config.write_timeout);
    // No room granted yet: a wait now is a stall (`StallGate`).
    let mut unsent = true;
    loop {
        let frame = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(Stalled::Reset));
            }
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll_frame(cx)));
            // After the body's poll, which may have read the request's.
            if cut.poll_cut(cx) {
                return Poll::Ready(Err(Stalled::TooSlow));
            }
            match polled {
                // Between frames: a gRPC call ends here (`CutWatch`).
                Ok(Poll::Pending) if cut.poll_call_end(cx) => {
                    Poll::Ready(Err(Stalled::ShuttingDown))
                }
                // The deadline is looked at (and its timer set up) only
                // when the body makes us wait.
                Ok(Poll::Pending) if deadline.poll_passed(cx) => {
                    Poll::Ready(Err(Stalled::TimedOut))
                }
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(frame)) => Poll::Ready(Ok(Ok(frame))),
                Err(panic) => Poll::Ready(Ok(Err(panic))),
            }
        })
        .await;
        let frame = match frame {
            Err(end) => return end.finish(&mut send, record, ctx),
            Ok(Err(panic)) => {
                ratelog::panicked(
                    "response body panicked; resetting the stream",
                    Some(panic_message(&panic)),
                );
                record.error(ErrorClass::Panic);
                send.send_reset(Reason::INTERNAL_ERROR);
                return StreamEnd::Done;
            }
            Ok(Ok(frame)) => frame,
        };
        match frame {
            None => {
                if length.is_some_and(|n| n > 0) {
                    return wrong_length(&mut send);
                }
                let _ = send.send_data(Bytes::new(), true);
                return StreamEnd::Done;
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(Reason::INTERNAL_ERROR);
                return StreamEnd::Done;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let mut end = body.is_end_stream();
                    if let Some(left) = length.as_mut() {
                        let n = data.len() as u64;
                        if n > *left {
                            // The declared length, then the end, as
                            // HTTP/1.1 (`body_overran`): a file that grew
                            // while `ServeDir` read it.
                            data.truncate(*left as usize);
                            end = overran();
                        } else if end && n < *left {
                            return wrong_length(&mut send);
                        }
                        *left -= data.len() as u64;
                    }
                    if data.is_empty() {
                        // An empty frame needs no room; only the last one
                        // is sent (it carries END_STREAM).
                        if !end {
                            continue;
                        }
                        let _ = send.send_data(data, true);
                        return StreamEnd::Done;
                    }
                    record.response_bytes(data.len());
                    // What is reserved and not yet sent, counted here so
                    // that h2 (whose every call takes the connection's
                    // lock) is asked again only when it is used up: h2's
                    // windows are 31-bit, and a larger frame is sent in
                    // several reservations.
                    let mut reserved = 0;
                    loop {
                        if reserved == 0 {
                            reserved = data.len().min(MAX_RESERVE);
                            send.reserve_capacity(reserved);
                        }
                        // h2 grants what the windows have at once; wait
                        // only when that is nothing.
                        let mut granted = send.capacity();
                        if granted == 0 {
                            let _slot = unsent.then(|| gate.stall());
                            let mut stall = stall_bound(ctx);
                            // Mid-message, held by the client's windows: a
                            // gRPC call ends here too, in trailers; not a
                            // gRPC-web call, whose status is a frame of its
                            // body (`CutWatch`). Moved into the wait, as
                            // its borrows: no word more in every stream's
                            // future (its size guard).
                            let ends = (record.grpc == Grpc::Native).then_some(cut);
                            let room = (&mut send, &mut deadline, &mut stall);
                            granted = match poll_fn(move |cx| {
                                match poll_room(room.0, room.1, room.2, cx) {
                                    Poll::Pending if ends.is_some_and(|c| c.poll_call_end(cx)) => {
                                        Poll::Ready(Err(Stalled::ShuttingDown))
                                    }
                                    polled => polled,
                                }
                            })
                            .await
                            {
                                Ok(n) => n,
                                Err(end) => return end.finish(&mut send, record, ctx),
                            };
                            // A window opened a few bytes at a time is a
                            // drip (`flood.rs`). Past its budget the round
                            // waits for time to give it back: slowed, not
                            // closed (an honest client reading a few bytes
                            // at a time looks the same), so that the server
                            // spends at most DRIP_ROUNDS_PER_SECOND such
                            // rounds a second on the connection.
                            if let Some(wait) = gate.room(granted, reserved, &ctx.stats) {
                                // Boxed: only a drip pays for the timer's
                                // room, not every stream's future.
                                Box::pin(tokio::time::sleep(wait)).await;
                                // The window may have opened more meanwhile.
                                granted = granted.max(send.capacity());
                            }
                        }
                        unsent = false;
                        let chunk = data.split_to(granted.min(reserved).min(data.len()));
                        reserved -= chunk.len();
                        let last = data.is_empty();
                        if send.send_data(chunk, end && last).is_err() {
                            return StreamEnd::ResetInBody;
                        }
                        if last {
                            break;
                        }
                    }
                    if end {
                        return StreamEnd::Done;
                    }
                    // Nothing is reserved while the body makes us wait, with
                    // no give-back (`reserve_capacity(0)`, the lock once
                    // more per frame) needed: h2 never grants a stream more
                    // than it asked for beyond what it buffers, and the whole
                    // frame's reservation went into `send_data`.
                }
                Err(frame) => {
                    if length.is_some_and(|n| n > 0) {
                        return wrong_length(&mut send);
                    }
                    // Nothing is reserved here either (see above), and
                    // `send_trailers` gives back what would be.
                    if let Ok(mut trailers) = frame.into_trailers() {
                        // As HTTP/1.1 sends them: no framing, routing or
                        // authentication field (RFC 9110 §6.5.1).
                        crate::service::drop_not_trailers(&mut trailers);
                        let _ = send.send_trailers(trailers);
                    } else {
                        let _ = send.send_data(Bytes::new(), true);
                    }
                    return StreamEnd::Done;
                }
            },
        }
    }
}

/// The body went on past the `content-length` sent: the stream ends with
/// that length, the rest dropped unread, as HTTP/1.1 ends it (and hyper
/// there). Returns that the stream ends. It reset the stream, losing a
/// whole download whose file grew while it was read.
#[cold]
fn overran() -> bool {
    super::log_body_overran();
    true
}

/// The body ended short of the `content-length` sent: the stream is reset
/// (`INTERNAL_ERROR`) rather than ended, so the client cannot take a
/// truncated body as whole, as HTTP/1.1 closes the connection.
fn wrong_length(send: &mut SendStream<Bytes>) -> StreamEnd {
    tracing::error!("response body does not match its content-length; resetting the HTTP/2 stream");
    send.send_reset(Reason::INTERNAL_ERROR);
    StreamEnd::Done
}

/// Why a response body stopped before its end.
enum Stalled {
    /// The client reset the stream (or the connection went).
    Reset,
    /// `write_timeout` passed.
    TimedOut,
    /// h2 granted the stream no room for `write_stall_timeout`
    /// ([`stall_bound`]).
    Stuck,
    /// The request body was cut by `min_request_body_rate`.
    TooSlow,
    /// A gRPC call's response waits for its body, or for room in the
    /// middle of a message, and the drain's deadline is near (`CutWatch`):
    /// it ends with `grpc-status: 14` in trailers, or a gRPC-web call's in
    /// a trailer frame ending its body (between frames only).
    ShuttingDown,
}

impl Stalled {
    fn finish(
        self,
        send: &mut SendStream<Bytes>,
        record: &mut StreamRecord,
        ctx: &WorkerContext,
    ) -> StreamEnd {
        match self {
            Stalled::Reset => StreamEnd::ResetInBody,
            Stalled::TimedOut => {
                tracing::debug!(
                    "HTTP/2 response not sent within write_timeout; resetting the stream"
                );
                incr(&ctx.stats.timeouts);
                record.error(ErrorClass::Timeout);
                send.send_reset(Reason::INTERNAL_ERROR);
                StreamEnd::Done
            }
            Stalled::ShuttingDown => {
                record.error(ErrorClass::Shutdown);
                match grpc::SHUTTING_DOWN.web_trailer_frame(record.grpc) {
                    // gRPC-web: the status is the body's last frame, sent
                    // as the window allows (h2 takes it without room, as
                    // trailers, and the deadline still bounds it).
                    Some(frame) => {
                        record.response_bytes(frame.len());
                        let _ = send.send_data(Bytes::from(frame), true);
                    }
                    None => {
                        let _ =
                            send.send_trailers(grpc::SHUTTING_DOWN.fields().into_iter().collect());
                    }
                }
                StreamEnd::Done
            }
            // Counted by the body, written by the connection's loop.
            Stalled::TooSlow => {
                record.error(ErrorClass::Timeout);
                send.send_reset(Reason::CANCEL);
                StreamEnd::TooSlow
            }
            Stalled::Stuck => {
                incr(&ctx.stats.timeouts);
                record.error(ErrorClass::Timeout);
                ratelog::log(Flood::Http2WriteStall, |suppressed| {
                    tracing::info!(
                        timeout = %Timeout(MessageSettings::write_stall_timeout(&ctx.config)),
                        suppressed,
                        "an HTTP/2 client gave a response no room for write_stall_timeout; resetting its stream (CANCEL)"
                    )
                });
                // CANCEL (RFC 9113 §7: the stream is no longer needed):
                // the client broke no rule (a window it keeps shut is
                // allowed), so not a FLOW_CONTROL_ERROR, and nothing
                // failed here, so not the INTERNAL_ERROR of a whole
                // response's `write_timeout` (Go's code), which would
                // send the client's developer looking for a server bug.
                send.send_reset(Reason::CANCEL);
                StreamEnd::Done
            }
        }
    }
}

/// The bound of one wait for room in the client's windows, made when the
/// wait begins (a body h2 has room for costs none): with `write_timeout`
/// off, `write_stall_timeout` (60 s by default), the rule of every
/// protocol's writes ([`WriteLimit::resolve`](crate::conn::io::WriteLimit),
/// with no heartbeat, as for an upgraded stream). The stall is measured by
/// what h2 grants this stream, not by the socket's progress: the
/// connection is shared, and its other streams may be read while this
/// one's window stays shut. A grant ends the wait, so the next wait's bound
/// starts afresh: a client that opens its window slowly but steadily is
/// never cut; one that keeps it shut (`SETTINGS_INITIAL_WINDOW_SIZE` 0 and
/// no `WINDOW_UPDATE`) would otherwise hold the stream, its handler and
/// its body for good, and keep the connection from its idle timeout. With
/// `write_timeout` set, it bounds the whole response instead (`deadline`
/// in `send_body`), and this is `None`.
fn stall_bound(ctx: &WorkerContext) -> Option<WriteBound> {
    let limit = MessageSettings::write_limit_without_heartbeat(&ctx.config);
    (limit.stall && limit.timeout.is_some()).then(|| WriteBound::new(limit, None))
}

/// Waits for capacity while h2 has granted none, until `deadline` (the
/// whole response's) or `stall` (this wait's) passes.
fn poll_room(
    send: &mut SendStream<Bytes>,
    deadline: &mut LazyDeadline,
    stall: &mut Option<WriteBound>,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, Stalled>> {
    loop {
        return match send.poll_capacity(cx) {
            Poll::Pending if deadline.poll_passed(cx) => Poll::Ready(Err(Stalled::TimedOut)),
            Poll::Pending if stall.as_mut().is_some_and(|b| b.poll_passed(cx, false)) => {
                Poll::Ready(Err(Stalled::Stuck))
            }
            Poll::Pending => Poll::Pending,
            // Polled again: Pending while there is none (waker registered).
            Poll::Ready(Some(Ok(0))) => continue,
            Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(n)),
            Poll::Ready(Some(Err(_)) | None) => Poll::Ready(Err(Stalled::Reset)),
        };
    }
}

/// Counts streams the client cancelled young, before their response head,
/// against those that completed: a client that mostly cancels is attacking
/// (rapid reset), not browsing. A stream reset in its body (a cancelled SSE
/// or gRPC server stream, a download stopped) counts as neither: it cost a
/// response and is how long-lived streams end; nor does one reset before
/// its head once it ran its ordinary age (`StreamEnd::Cancelled`,
/// [`ORDINARY_CANCEL_AGE`]).
#[derive(Debug, Default)]
struct ResetGuard {
    cancelled: u64,
    completed: u64,
}

impl ResetGuard {
    /// Records a finished stream; true when the connection should be closed.
    fn record(&mut self, end: StreamEnd) -> bool {
        match end {
            StreamEnd::Done | StreamEnd::TooSlow => self.completed += 1,
            StreamEnd::ClientReset => self.cancelled += 1,
            StreamEnd::ResetInBody | StreamEnd::Cancelled => {}
        }
        self.cancelled > RAPID_RESET_LIMIT && self.cancelled > self.completed
    }
}

/// Keep-alive PINGs: one outstanding at a time.
struct KeepAlive {
    ping: Option<PingPong>,
    interval: Option<Duration>,
    timeout: Duration,
    /// Only when keep-alive is on: a connection without it does not carry a
    /// timer on the heap for its whole life.
    timer: Option<Pin<Box<Sleep>>>,
    awaiting_pong: bool,
}

impl KeepAlive {
    fn new(ping: Option<PingPong>, cfg: &Http2Config) -> KeepAlive {
        KeepAlive {
            ping: cfg.keep_alive_interval.and(ping),
            interval: cfg.keep_alive_interval,
            timeout: cfg.keep_alive_timeout,
            timer: cfg
                .keep_alive_interval
                .map(|first| Box::pin(tokio::time::sleep(first))),
            awaiting_pong: false,
        }
    }

    /// Resolves when a PING went unanswered for the timeout; pending forever
    /// when keep-alive is off.
    async fn expired(&mut self) {
        poll_fn(|cx| self.poll_expired(cx)).await
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(ping), Some(interval), Some(timer)) =
            (self.ping.as_mut(), self.interval, self.timer.as_mut())
        else {
            return Poll::Pending;
        };
        loop {
            if self.awaiting_pong {
                match ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        timer.as_mut().reset(Instant::now() + interval);
                        continue;
                    }
                    // The connection failed; the accept loop will see it.
                    Poll::Ready(Err(_)) => {
                        self.ping = None;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
                std::task::ready!(timer.as_mut().poll(cx));
                return Poll::Ready(());
            }
            std::task::ready!(timer.as_mut().poll(cx));
            if ping.send_ping(Ping::opaque()).is_err() {
                self.ping = None;
                return Poll::Pending;
            }
            self.awaiting_pong = true;
            timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_guard_trips_only_when_cancels_dominate() {
        let mut g = ResetGuard::default();
        for _ in 0..RAPID_RESET_LIMIT {
            assert!(!g.record(StreamEnd::ClientReset));
        }
        assert!(g.record(StreamEnd::ClientReset), "one past the limit");
        let mut watcher = ResetGuard::default();
        for _ in 0..10 * RAPID_RESET_LIMIT {
            assert!(
                !watcher.record(StreamEnd::ResetInBody),
                "streams cancelled in their body are not counted"
            );
        }
        let mut busy = ResetGuard::default();
        for _ in 0..1000 {
            busy.record(StreamEnd::Done);
        }
        for _ in 0..500 {
            assert!(
                !busy.record(StreamEnd::ClientReset),
                "a busy client may cancel some"
            );
        }
    }
}

#[cfg(test)]
mod size_guard {
    use super::*;

    type Svc = tower::util::ServiceFn<
        fn(Request<Body>) -> std::future::Ready<Result<Response<Body>, std::convert::Infallible>>,
    >;
    type Io = Box<tokio::net::TcpStream>;

    fn size_of_future<F, Fut>(_: F) -> usize
    where
        F: Fn(Io, &'static mut Svc, Rc<WorkerContext>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A regression guard for what every open HTTP/2 connection carries in
    /// our own future (h2's buffers come on top). Measured when written:
    /// 2,160 bytes, of which h2's `Connection` is 1,256; it was 4,424 before
    /// the handshake and the stream start were boxed. The bound adds ~20%.
    /// Since a stream starts without an await (`poll_turn`; a request waits
    /// in a box only while the service is not ready): 2,496 (2,448 before).
    /// 2,600 by 2026-12-05 on h2 0.4.20; 2,608 on h2 0.4.21, whose
    /// `FramedRead` (inline in its `Connection`) gained a `usize`, the
    /// header-count hint (`patches/README.md`). 2,664 since h2's own
    /// refusals are counted: h2's `Connection` keeps two `u64` counts (our
    /// patch), [`H2Refusals`] what was last seen of them, [`Addrs`] the
    /// socket to ask for the peer (8 bytes, where the hand-over used to
    /// read both addresses), the poll closure one more reference.
    /// 2,720 with `http2_max_stalled_streams`' gate on top (`StallGate`: its
    /// counts and the loop's waker, 56 bytes). 2,792 with the control-frame
    /// flood guard (`flood.rs`): the metered IO inside h2's `Connection` (its
    /// two frame walkers and the budget's `Rc`, 40 bytes), the loop's `Rc`
    /// of the budget, its flag and the trip's branch; the budget itself is
    /// 48 bytes of heap. 2,760 since session 50: a request body's wait
    /// bounds are boxed (`RecvBody::waits`), and a body is inline in the
    /// request a stream waiting for the service keeps. 2,608 since session
    /// 55: [`Addrs`] boxed when it gained the accept's instant (inline, the
    /// future was 2,800 bytes: it was kept twice).
    #[test]
    fn the_http2_connection_future_stays_small() {
        fn h2_future(
            io: Io,
            service: &'static mut Svc,
            ctx: Rc<WorkerContext>,
        ) -> impl Future<Output = CloseReason> {
            serve(io, service, ctx, Box::new(Addrs::kept(None)), None)
        }
        let size = size_of_future(h2_future);
        eprintln!("HTTP/2 connection future: {size} bytes");
        assert!(size <= 2616, "the HTTP/2 connection future is {size} bytes");
    }

    /// What every open stream holds in its own allocation (the
    /// `FuturesUnordered` task) for as long as its response takes to send,
    /// for a handler answering at once (the demo's `GET /`: an `Either` of
    /// a `Ready` response and a boxed future). 2,344 bytes (debug build;
    /// 2,440 bytes a task in a release build, by heaptrack) when the
    /// handler's future and the tunnel's and drain's were inline: a client
    /// keeping its window shut held that per stream for
    /// `write_stall_timeout` (the memory audit's H1). 1,640 with the
    /// handler's future boxed and what the head's steps borrowed scoped
    /// (most of the rest is `send_body`'s, 912); 1,664 with the features
    /// the workspace's test build turns on; 1,688 since the stream's start
    /// carries the TLS client's certificate chain (`Addrs::peer`, an `Arc`
    /// shared with the connection's other streams: mutual TLS, session 46).
    /// 1,624 since session 50 (`min_request_body_rate` on HTTP/2): the
    /// request body, inline in the response that streams it (an echo), has
    /// its wait bounds boxed (`RecvBody::waits`, made at its first wait).
    /// A larger body had added 152 bytes: it is there three times.
    /// 1,672 with its record's when a reset stops counting as a rapid one
    /// and which gRPC the request speaks (`StreamRecord`'s `ordinary_at`
    /// and `grpc`, session 50). 1,696 on session 50's merged main: its
    /// branches measured 1,672 apart; the 24 bytes are the `otel` feature,
    /// which the workspace's test build turns on through the root package
    /// (`cargo test -p megaconn --lib`: 1,576 here; with `--features otel`
    /// or the workspace: 1,600, session 51). 1,600 since session 51: the
    /// request body's bounds from the configuration (`max_body_bytes`, the
    /// stall's) are kept once a connection (`BodyBounds`) and its
    /// remaining length is a `u64` (32 bytes less a body, 96 less here: it
    /// is there three times). 1,616 on session 51's merged main: the
    /// gRPC call's place in the drain's list (`CutWatch`, so a call open
    /// at the drain deadline ends `UNAVAILABLE`) adds 16.
    #[test]
    fn the_http2_stream_future_stays_small() {
        type DemoBody = http_body_util::Either<http_body_util::Full<Bytes>, Body>;
        type Answer = Result<Response<DemoBody>, std::convert::Infallible>;
        type Handler = futures_util::future::Either<
            std::future::Ready<Answer>,
            Pin<Box<dyn Future<Output = Answer>>>,
        >;
        fn size_of_stream<F>(_: F) -> usize
        where
            F: for<'g> StreamFn<'g>,
        {
            std::mem::size_of::<<F as StreamFn<'static>>::Fut>()
        }
        trait StreamFn<'g> {
            type Fut;
        }
        impl<'g, F, Fut> StreamFn<'g> for F
        where
            F: Fn(Start<Handler>, SendResponse<Bytes>, Rc<WorkerContext>, &'g StallGate) -> Fut,
        {
            type Fut = Fut;
        }
        fn stream<'g>(
            start: Start<Handler>,
            respond: SendResponse<Bytes>,
            ctx: Rc<WorkerContext>,
            gate: &'g StallGate,
        ) -> impl Future<Output = StreamEnd> + 'g {
            run_stream(start, respond, ctx, gate)
        }
        let size = size_of_stream(stream);
        eprintln!("HTTP/2 stream future: {size} bytes");
        assert!(size <= 1616, "the HTTP/2 stream future is {size} bytes");
    }
}

#[cfg(test)]
mod send_body_calls {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use http_body::Frame;
    use http_body_util::StreamBody;
    use tracing::span;

    /// Counts h2's `reserve_capacity` calls (ours and h2's own), each a
    /// take of the connection's lock, by the span h2 opens in each.
    struct Reservations(Arc<AtomicUsize>);

    impl tracing::Subscriber for Reservations {
        fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
            meta.is_span() && meta.name() == "reserve_capacity"
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            self.0.fetch_add(1, Relaxed);
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    /// Sends a streamed body of `frames` 10-byte DATA frames over a real h2
    /// connection (in memory) and counts the reservations it took.
    async fn reservations_for(frames: usize) -> usize {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (client, server) = tokio::join!(h2::client::handshake(a), h2::server::handshake(b));
        let (mut client, client_conn) = client.unwrap();
        let mut server = server.unwrap();
        tokio::spawn(client_conn);
        let request = Request::get("http://t/").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let (_, mut respond) = server.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let send = respond.send_response(Response::new(()), false).unwrap();
        let data = (0..frames).map(|_| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"0123456789")))
        });
        let body = StreamBody::new(futures_util::stream::iter(data));
        let config = Arc::new(crate::conn::config::Config::default());
        let ctx = Rc::new(WorkerContext::new(0, config, Default::default(), None));
        let mut record = StreamRecord {
            record: RequestRecord::untimed(ctx.stats_source(), MethodLabel::of(&Method::GET)),
            body_bytes: None,
            ordinary_at: 0,
            grpc: Grpc::No,
        };
        let count = Arc::new(AtomicUsize::new(0));
        let end = {
            let _counting = tracing::subscriber::set_default(Reservations(count.clone()));
            let gate = StallGate::new(None, Arc::new(FloodBudget::new()));
            send_body(
                send,
                body,
                None,
                &mut record,
                &ctx,
                &gate,
                &CutWatch(None, None),
            )
            .await
        };
        assert!(matches!(end, StreamEnd::Done));
        let mut received = response.await.unwrap().into_body();
        let mut len = 0;
        while let Some(data) = received.data().await {
            let data = data.unwrap();
            len += data.len();
            let _ = received.flow_control().release_capacity(data.len());
        }
        assert_eq!(len, 10 * frames);
        count.load(Relaxed)
    }

    /// A streamed body asks h2 for room once per DATA frame: the give-back
    /// after each (`reserve_capacity(0)`) took the connection's lock again
    /// for nothing, the frame's whole reservation having gone into it.
    #[tokio::test]
    async fn a_streamed_body_reserves_once_per_frame() {
        let one = reservations_for(1).await;
        let nine = reservations_for(9).await;
        assert_eq!(
            nine - one,
            8,
            "reservations: {one} for 1 frame, {nine} for 9"
        );
    }
}
