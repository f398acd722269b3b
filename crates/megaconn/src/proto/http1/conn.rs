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

use std::future::{poll_fn, Future};
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
use crate::conn::context::WorkerContext;
use crate::conn::io::{read_more, ConnIo};
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
    let mut conn = ConnIo::new(io, ctx);
    conn.retire_at = retire_at.or_else(|| {
        let fd = conn.io.lot_fd()?;
        conn.ctx.park.as_ref()?.retire_at(fd)
    });
    conn.info = info.filter(|_| conn.ctx.config.connect_info);
    let ended = match run(&mut conn, &mut service).await {
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

async fn run<T, S>(conn: &mut ConnIo<T>, service: &mut S) -> Ended
where
    T: Parkable,
    S: HttpService,
{
    // The settings are read where used, not kept: every local that lives
    // across the loop's waits is carried by every idle connection.
    // One timer, moved in place from deadline to deadline (moving it later
    // is an atomic store, not a new registration; registered afresh only
    // when it would otherwise fire early, `aim_ahead`), and polled only when
    // the connection would otherwise block.
    let mut timer = std::pin::pin!(None::<Sleep>);
    // True while the timer holds the waker the shutdown slot holds: a wait
    // then reads its state instead of polling it (see `poll_timer`).
    let mut timer_waker = false;
    // When the first request began to be awaited (the accept, or the wake
    // from the lot); `None` once it was served (kept where the first
    // head's deadline was, no bigger). The first head's deadline runs from
    // it (`read_header_timeout`, after a TLS handshake as Go's), and so
    // does a drain's grace for it (`conn::shutdown::NEW_CONNECTION_GRACE`),
    // but from the accept over TLS (`head_cut`).
    let mut since = Some(crate::observe::clock::now());
    let mut first = true;
    loop {
        if conn.buffers.rbuf_len() == 0 {
            if let Err(reason) = conn.flush_bounded(&WRITES).await {
                return Ended::Close(reason);
            }
            conn.buffers.release();
            // One clock read for both deadlines.
            let (idle_timeout, park_idle_after) = (
                conn.ctx.config.idle_timeout,
                conn.ctx.config.park_idle_after,
            );
            let now = (idle_timeout.is_some() || park_idle_after.is_some())
                .then(crate::observe::clock::now);
            // A woken cold connection that served its request without waiting
            // goes straight back to the lot: waiting as a task first would cost
            // a registration and a timer for what is, most likely, a heartbeat.
            if !first && conn.io.repark_when_idle() && conn.ctx.park.is_some() {
                return Ended::Park(later(now, idle_timeout));
            }
            // A cold connection is parked rather than kept as a waiting task,
            // when `park_idle_after` comes before the idle timeout. (Compared
            // as durations from the same `now`: the idle deadline is made
            // only where it is used, an `Instant` addition fewer per request.)
            let parks = T::PARKABLE
                && !first
                && conn.ctx.park.is_some()
                && park_idle_after.is_some_and(|p| idle_timeout.is_none_or(|i| p < i));
            let span = if parks { park_idle_after } else { idle_timeout };
            // A first request is waited for within its header deadline
            // and, during a drain, until its cut (`LocalShutdown::head_cut`:
            // recomputed where needed, not kept across the wait, where it
            // would grow every connection's future).
            let (wait_deadline, phase) = if first {
                let shutdown = &conn.ctx.shutdown;
                let deadline = earliest(header_deadline(conn, since), head_cut(conn, since));
                let phase = match shutdown.is_started() {
                    true => Phase::NewInDrain,
                    false => Phase::New,
                };
                (deadline, phase)
            } else {
                (later(now, span), Phase::Idle)
            };
            // The timer, left at an earlier wait's deadline, is moved now if
            // it would come due within half of this wait (see `aim_ahead`).
            if let (false, Some(now), Some(span)) = (first, now, span) {
                aim_ahead(timer.as_mut(), now + span / 2);
            }
            match conn
                .wait_for_bytes(
                    wait_deadline,
                    phase,
                    T::PARKABLE && conn.ctx.park.is_some(),
                    timer.as_mut(),
                    &mut timer_waker,
                )
                .await
            {
                Waited::Bytes => {}
                Waited::Eof => return Ended::Close(CloseReason::ClientClosed),
                Waited::TimedOut if parks => return Ended::Park(later(now, idle_timeout)),
                // The drain's cut, not the header deadline: closed as the
                // drain's, not counted a timeout.
                Waited::TimedOut if first && cut_passed(conn, since) => {
                    return Ended::Close(closed_before_request(conn));
                }
                Waited::TimedOut => {
                    incr(&conn.ctx.stats.timeouts);
                    let reason = if first {
                        header_timed_out(conn)
                    } else {
                        CloseReason::IdleTimeout
                    };
                    return Ended::Close(reason);
                }
                // A first request's wait heard the drain begin: waited for
                // again, until its cut.
                Waited::Shutdown if first => continue,
                Waited::Shutdown => return Ended::Close(CloseReason::Shutdown),
                Waited::ParkNow => return Ended::Park(later(now, idle_timeout)),
                // A reset (or a broken pipe) while nothing of a request has
                // come is the client leaving. A reset midway through a
                // request stays an I/O error (`HeadRead::Error` below).
                Waited::Error(e) => return Ended::Close(CloseReason::io_between(&e, true)),
            }
        }

        // A head already whole in the buffer (the usual case: it came in
        // one read) is found here; only one that is not is read on, in
        // `read_head`, whose future (set up, polled, dropped) took ~60
        // user-space instructions a request for a head it found at once
        // (callgrind, bench/CPU-PER-REQUEST.md, session 42).
        let mut searched = 0;
        let (end, queued) = if let Some(end) = conn.whole_head(&mut searched) {
            // Whole at once, behind an answer still buffered (no wait, no
            // flush since it: both empty the write buffer): pipelined, it
            // was here when the request before it ended, and is timed from
            // that end, a clock read fewer (`Stopwatch::queued`).
            (end, !first && conn.wbuf_len() != 0)
        } else {
            let clock = match (since, conn.ctx.config.read_header_timeout) {
                (Some(since), _) => HeaderClock::First(since),
                (None, Some(after)) => HeaderClock::After(after),
                (None, None) => HeaderClock::Off,
            };
            match conn
                .read_head(clock, searched, timer.as_mut(), &mut timer_waker)
                .await
            {
                HeadRead::Whole(end) => (end, false),
                HeadRead::Closed => return Ended::Close(CloseReason::ClientClosed),
                HeadRead::NoRequest => return Ended::Close(closed_before_request(conn)),
                HeadRead::TimedOut => {
                    incr(&conn.ctx.stats.timeouts);
                    if conn.buffers.rbuf_len() > 0 {
                        answer_unserved(
                            conn,
                            StatusCode::REQUEST_TIMEOUT,
                            "the request head was not received within read_header_timeout",
                        );
                    }
                    return Ended::Close(header_timed_out(conn));
                }
                HeadRead::Error(e) => return Ended::Close(CloseReason::io(&e)),
                HeadRead::Unwritten(reason) => return Ended::Close(reason),
            }
        };

        // Boxed: the request and the whole exchange live here only while it runs,
        // so an idle connection's future does not carry their size. The box is
        // one of the worker's cached blocks: no malloc and free per request,
        // and the future is built in it, not copied there. (The context is
        // cloned for the exchange only: kept across the loop, it would grow
        // every idle connection.) The head is parsed in there too: parsed
        // here, it was copied whole four more times on its way into the
        // request (−146 instructions a request, callgrind).
        let ctx = conn.ctx.clone();
        match ctx
            .blocks
            .pin_with(|| exchange(conn, service, end, queued))
            .await
        {
            // The answers to pipelined requests wait in the write buffer,
            // to go out together, while their requests are read from the
            // read buffer (the flush above waits for it to empty). Past
            // the exchange's high-water mark they are written, bounded as
            // any response ([`WRITES`]), before the next request is read:
            // an answer without a body (HEAD, 204, 304) never meets that
            // mark in the exchange, so a client that pipelined such
            // requests without reading grew the buffer without limit, and
            // with writes ending mid-request it never met the flush above
            // or its bound either (+65 MB in 14 s from two clients).
            Outcome::KeepAlive => {
                if conn.wbuf_len() >= WRITE_HIGH_WATER {
                    if let Err(reason) = conn.flush_bounded(&WRITES).await {
                        return Ended::Close(reason);
                    }
                }
            }
            Outcome::Close(reason) => return Ended::Close(reason),
            // HTTP/2 with prior knowledge (h2c): its preface reads as a request
            // line of version 2.0. h2.rs takes the connection over. Only in
            // cleartext: over TLS, HTTP/2 is what ALPN chose (RFC 9113
            // §3.3), and here it chose http/1.1 or nothing, so an operator
            // who leaves `h2` out of `TlsConfig::alpn_protocols` serves none.
            Outcome::Rejected(_)
                if first
                    && !T::SECURE
                    && conn.ctx.config.http2.prior_knowledge
                    && proto::is_h2_preface(conn.rbuf_and_io().0) =>
            {
                // Counted from where `head_cut` counts the first head's.
                return Ended::H2c(since.map(|s| conn.io.accepted_at().unwrap_or(s)));
            }
            Outcome::Rejected(rejection) => {
                incr(&conn.ctx.stats.protocol_errors);
                rejection.limit().count(&conn.ctx.stats);
                log_refused(conn, rejection);
                answer_unserved(conn, rejection.status, rejection.reason);
                return Ended::Close(CloseReason::status(rejection.status));
            }
            Outcome::Upgrade(tx, native) => {
                if let Err(reason) = conn.flush_bounded(&WRITES).await {
                    return Ended::Close(reason);
                }
                return Ended::Upgrade(tx, native);
            }
        }
        // Read by the wait above and by the h2c check after the exchange.
        first = false;
        // The header clock of a later request starts with its first bytes; it
        // is read only if the head does not arrive whole (`read_head`).
        since = None;
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
/// ended ([`Exchange::new`]).
async fn exchange<T, S>(
    conn: &mut ConnIo<T>,
    service: &mut S,
    end: HeadEnd,
    queued: bool,
) -> Outcome
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
        Ok(false) => return Outcome::Rejected(head::MALFORMED_HEAD),
        Err(rejection) => return Outcome::Rejected(rejection),
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
        return Exchange::<T, S::Future, S::ResBody>::failed(
            conn,
            RequestRecord::untimed(conn.ctx.stats_source(), method).logged(access),
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is not available",
            CloseReason::ServerError,
        );
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
    // A proxied connection's balancer, with `connect_info` or without
    // (`service/proxied_by.rs` says why): nothing asked unless a listener
    // reads PROXY headers.
    let by = crate::service::proxied_by::here(&conn.ctx.config);
    // A TLS client's verified chain (`ClientAuth`): a constant `None` on
    // cleartext, one branch over TLS without client auth.
    let peer = if T::SECURE {
        conn.io.shared_peer_certificates()
    } else {
        None
    };
    // Made apart and moved into the request whole, so that nothing is
    // handed the request's address before its `call`: see `call_into`.
    let extensions = (info.is_some() || by.is_some() || peer.is_some() || wants_upgrade)
        .then(|| request_extensions(info, by, peer, wants_upgrade.then_some(&mut upgrade)));
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
        return Exchange::<T, S::Future, S::ResBody>::call_panicked(
            conn,
            RequestRecord::untimed(conn.ctx.stats_source(), method)
                .traced(span)
                .logged(access),
            grpc,
        );
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
    // bench/CPU-PER-REQUEST.md, session 37).
    let exchange = std::pin::pin!(Exchange::new(conn, handler, setup, span, access, queued));
    exchange.await
}

/// A request's extensions, when it has any: its connection's addresses
/// (`info`, with `connect_info`), its balancer (`by`, on a proxied
/// connection), a TLS client's verified chain (`peer`),
/// and, when it asks to upgrade, its `OnUpgrade`, whose sender goes in
/// `upgrade`. Out of line: a request seldom has any.
#[inline(never)]
fn request_extensions(
    info: Option<&ConnInfo>,
    by: Option<crate::ProxiedBy>,
    peer: Option<crate::conn::client_auth::PeerCertificates>,
    upgrade: Option<&mut Option<UpgradeSender>>,
) -> http::Extensions {
    let mut extensions = http::Extensions::new();
    if let Some(info) = info {
        crate::service::insert_conn_info(&mut extensions, *info);
    }
    if let Some(by) = by {
        extensions.insert(by);
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
    /// Waits for the first bytes of the next request without holding a buffer
    /// (on transports that report readiness), then reads them.
    ///
    /// Shutdown is a flag checked on every poll; the connection's waker is
    /// registered for it (and the timer armed) only when it would block.
    ///
    /// `phase`: between requests ([`Phase::Idle`]: shutdown closes it, and
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
    /// made again ([`Phase::NewInDrain`]) with the cut in its `deadline`;
    /// at the cut it closes: a socket preconnected and left silent held
    /// the drain. (The cut is the caller's to add, and to tell from the
    /// header deadline when the wait times out: passed here, the accept's
    /// instant grew every connection's future.)
    ///
    /// `parkable`: an idle connection parks when the worker asks every
    /// idle one to (an upgrade hands the lot over), unless it speaks TLS,
    /// which cannot move.
    async fn wait_for_bytes(
        &mut self,
        deadline: Option<Instant>,
        phase: Phase,
        parkable: bool,
        mut timer: Pin<&mut Option<Sleep>>,
        timer_waker: &mut bool,
    ) -> Waited {
        let ctx = self.ctx.clone();
        let idle = phase == Phase::Idle;
        // Left when the wait ends, or when this future is dropped.
        let idle_mark = IdleOwn::enter(&ctx.stats.connections_idle);
        // Idle only between requests: a fresh connection is reading its
        // first head from its accept (it was listed `idle` before its first
        // byte, where the states' diagram and Go say new).
        lifecycle::set_state(if idle {
            ConnectionState::Idle
        } else {
            ConnectionState::ReadingHead
        });
        // The first poll, right after a response, asks for readiness before
        // taking a buffer: the next request is seldom there yet. A later poll
        // comes from a wake, so it reads at once: the read checks readiness
        // itself, and a second check first cost ~100 instructions a request.
        let mut woken = false;
        // `move`: the flags are kept by value, not by reference (8 bytes
        // each in every waiting connection's future).
        let shared = &ctx;
        let waited = poll_fn(move |cx| {
            let ctx = shared;
            // Shutdown is checked after the read: a request that arrived as
            // shutdown began (or during a paced drain) is served, with
            // `Connection: close`, rather than cut off.
            let after_wake = std::mem::replace(&mut woken, true);
            let ready = match after_wake {
                true => Poll::Ready(Ok(())),
                false => self.io.poll_read_ready(cx),
            };
            let read = match ready {
                Poll::Ready(Ok(())) => {
                    let (rbuf, io) = self.rbuf_and_io();
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
                Poll::Pending => self.buffers.release(),
            }
            // Not over TLS: its session cannot move with the socket, so
            // parked it would only be closed, at once, under a busy
            // client's next request; as a task it gets shutdown's idle
            // grace (`IDLE_GRACE`), and that request is served.
            if idle && parkable && !T::SECURE && ctx.shutdown.parking_all() {
                return Poll::Ready(Waited::ParkNow);
            }
            // The read above may have found nothing only because the
            // runtime has not polled its driver since the bytes came (the
            // shutdown wakes every idle connection in one turn): the
            // kernel is asked before closing, or a request already in the
            // socket would be reset unanswered. With bytes there, the
            // wait goes on; the runtime's readiness brings them.
            if phase != Phase::NewInDrain && ctx.shutdown.is_started() && !self.io.input_waiting() {
                return Poll::Ready(Waited::Shutdown);
            }
            if !ctx
                .shutdown
                .watch(&mut self.buffers.shutdown_slot, cx.waker())
            {
                *timer_waker = false;
            }
            match deadline {
                Some(d) if poll_timer(&mut timer, d, cx, timer_waker) => {
                    Poll::Ready(Waited::TimedOut)
                }
                _ => Poll::Pending,
            }
        })
        .await;
        drop(idle_mark);
        lifecycle::set_state(ConnectionState::ReadingHead);
        waited
    }

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

    /// Reads until a whole request head is buffered (or more than a head may
    /// be): parsing it is the exchange's first step. `searched`: how far
    /// [`whole_head`](Self::whole_head) looked in the buffer already.
    ///
    /// During a drain the head is waited for until its cut
    /// ([`LocalShutdown::head_cut`](crate::conn::shutdown::LocalShutdown::head_cut),
    /// from the accept for a first request, [`HeaderClock::First`]), then
    /// the connection closes ([`HeadRead::NoRequest`]): a head that trickles
    /// held the drain until `read_header_timeout` (with that off, to the
    /// deadline). So a wait here watches shutdown too, as an idle one does.
    async fn read_head(
        &mut self,
        clock: HeaderClock,
        mut searched: usize,
        mut timer: Pin<&mut Option<Sleep>>,
        timer_waker: &mut bool,
    ) -> HeadRead {
        let mut deadline = match clock {
            HeaderClock::First(since) => later(Some(since), self.ctx.config.read_header_timeout),
            HeaderClock::After(_) | HeaderClock::Off => None,
        };
        // Parse only once the end of the head may be in the buffer: re-parsing on
        // every read would let a client that sends one byte at a time make us
        // scan the head quadratically.
        let mut write_bound = None;
        poll_fn(|cx| loop {
            if let Some(end) = self.whole_head(&mut searched) {
                return Poll::Ready(HeadRead::Whole(end));
            }
            // Responses to earlier pipelined requests go out before we block,
            // bounded as any response's write.
            if self.wbuf_len() > 0 {
                if let Poll::Ready(Err(reason)) =
                    self.poll_flush_bounded(cx, &mut write_bound, &WRITES)
                {
                    return Poll::Ready(HeadRead::Unwritten(reason));
                }
            }
            let (rbuf, io) = self.rbuf_and_io();
            match read_more(io, rbuf, cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(HeadRead::Closed),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(HeadRead::Error(e)),
                Poll::Pending => {
                    if let HeaderClock::After(after) = clock {
                        deadline.get_or_insert_with(|| Instant::now() + after);
                    }
                    // Not known to be the waker the shutdown slot holds.
                    *timer_waker = false;
                    // Before the drain: heard of at its start (a watch set
                    // after it is never woken). During it: until the cut,
                    // unless the rest is in the socket already (the drain's
                    // wake may come before the runtime has heard of it).
                    let shutdown = &self.ctx.shutdown;
                    let first = match clock {
                        HeaderClock::First(since) => Some(since),
                        HeaderClock::After(_) | HeaderClock::Off => None,
                    };
                    let cut = head_cut(self, first)
                        .filter(|&c| Instant::now() < c || !self.io.input_waiting());
                    if !shutdown.is_started() {
                        shutdown.watch(&mut self.buffers.shutdown_slot, cx.waker());
                    }
                    return match earliest(deadline, cut) {
                        Some(d) if poll_timer(&mut timer, d, cx, &mut false) => {
                            Poll::Ready(match cut.is_some_and(|c| c <= d) {
                                true => HeadRead::NoRequest,
                                false => HeadRead::TimedOut,
                            })
                        }
                        _ => Poll::Pending,
                    };
                }
            }
        })
        .await
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
/// ([`ConnIo::wait_for_bytes`]).
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
/// wait's own deadline.
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
fn aim_ahead(mut timer: Pin<&mut Option<Sleep>>, by: Instant) {
    if timer
        .as_ref()
        .as_pin_ref()
        .is_some_and(|sleep| sleep.deadline() < by)
    {
        timer.set(None);
    }
}

/// Polls the connection's timer for `deadline`: true once it has passed.
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
/// poll that registered it.
fn poll_timer(
    timer: &mut Pin<&mut Option<Sleep>>,
    deadline: Instant,
    cx: &mut Context<'_>,
    registered: &mut bool,
) -> bool {
    match timer.as_mut().as_pin_mut() {
        Some(sleep) if sleep.deadline() > deadline => {
            sleep.reset(deadline);
            *registered = false;
        }
        Some(_) => {}
        None => {
            timer.set(Some(tokio::time::sleep_until(deadline)));
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
