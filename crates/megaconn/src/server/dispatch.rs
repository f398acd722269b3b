//! The one place that decides a connection's protocol, and acts on how each
//! protocol finished with it (pingora's `apps` is the model).
//!
//! ```text
//!  Incoming::Accepted(bare socket)
//!     from a proxy_protocol source? -- yes: registered, its PROXY header read and consumed
//!                                      (`proxy_header.rs`), then as below, tracked and held
//!                                      to the per-IP limits as the client it names
//!     listener is framed? -- yes: TLS one? -- TLS handshake (timeout) -------> framed over TLS
//!                                          \-- else ---------------------------> framed
//!     listener is TLS?  -- yes --> TLS handshake (timeout) --> ALPN h2 ----------> HTTP/2
//!           | no                                            \-> else -----------> HTTP/1.1
//!           +-- a parking lot? -- yes: the socket bare, as a woken one ---------> HTTP/1.1
//!                             \-- no: registered with the runtime -------------> HTTP/1.1
//!  Incoming::Woken { proto }  -- the tag the lot kept ---------------------------> that protocol
//!     (HTTP/1.1, WebSocket and framed over TLS: the session from the worker's
//!      table first; only TLS housekeeping arrived -> parked again at once,
//!      HTTP/1.1 with part of a record -> served, under read_header_timeout)
//!  Incoming::Refused (a descriptor above the lot's slot array: no slot to park
//!     in) -- waits awake in a task (`ParkingLot::stay_awake`) --> Woken, hot
//!
//!  a protocol ends with:
//!     Close(reason)        -> Connection::close(reason)       (counted once, here)
//!     Park { io, .. }      -> the parking lot, with the protocol's tag
//!                             (TLS: the session to the worker's table;
//!                              framed and TLS: the lot tells of its own closes)
//!     HandOver(H2c)        -> HTTP/2 on the same socket, the preface replayed
//!     HandOver(Upgrade)    -> the handler's `Upgraded`, which carries the Connection
//!     HandOver(Native)     -> WebSocket on the same socket (its route's 101 said so;
//!                             over TLS it parks as WEBSOCKET_TLS, with its session;
//!                             framed over TLS parks as FRAMED_TLS, with its session),
//!                             or an event stream (the SSE route's 200: SSE / SSE_TLS)
//! ```
//!
//! Protocols never call the lot or each other; only this module does.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_util::future::{Either, FutureExt};
use tokio::net::TcpStream;

use crate::conn::admission::Answer;
use crate::conn::config::Config;
use crate::conn::connection::{Connection, SendConnection};
use crate::conn::context::WorkerContext;
use crate::conn::handover::{HandOverKinds, ParkedState, Resumed};
use crate::conn::park::{AtDeadline, OnParkedClose, Parking};
use crate::conn::proxy_header;
use crate::conn::rewind::Rewind;
use crate::conn::socket;
use crate::conn::tls;
use crate::conn::tls_io::{ParkedTls, TlsIo};
use crate::conn::transport::{Foreign, Parkable, Transport};
use crate::conn::woken::WokenSocket;
use crate::conn::{ConnInfo, Incoming, ProtoTag, Wake};
use crate::message::MessageSettings;
use crate::observe::close::{client_left, CloseReason};
use crate::observe::lifecycle::Tracked;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog;
use crate::proto::{self, http1, http2, Ended, HandOver};
use crate::service::upgrade::{self, Upgraded};
use crate::service::HttpService;

/// Serves one connection from accept (or wake-up) to its end.
///
/// A plain function choosing among futures, not an `async fn`: an async
/// function would keep its arguments beside the future it moves them into,
/// and every connection's task would carry both. Always inlined (into the
/// worker's spawner, its only caller outside tests): a call returns the
/// future on the stack, copied from there into its box (760 bytes a
/// wake-up); inlined, its fields are written straight into the box (`bench/HEARTBEAT.md`,
/// session 52).
#[inline(always)]
pub(crate) fn serve<S>(
    incoming: Incoming,
    service: S,
    ctx: Rc<WorkerContext>,
    conn: Connection,
) -> impl Future<Output = ()>
where
    S: HttpService + 'static,
{
    match incoming {
        Incoming::Accepted(socket, info, retire_at, place) => {
            // A trusted balancer's: its PROXY header first. Boxed, as the
            // other cold paths are: the header's wait does not size every
            // connection's future.
            if proxy_header::expected(&ctx.config, info.local, info.peer) {
                return Either::Right(Either::Right(
                    serve_proxied(socket, service, ctx, conn, info, (retire_at, place))
                        .boxed_local(),
                ));
            }
            let kind = accepted_as(&ctx, &info);
            // Cleartext HTTP/1.1 with a lot to park in: served bare, as a
            // woken socket is, and it is the same future.
            if let Accepted::Http1 { bare: true } = kind {
                return Either::Right(Either::Left(serve_http1(
                    WokenSocket::accepted(socket),
                    service,
                    ctx,
                    conn,
                    Some(Box::new(info)),
                    proto::HTTP1,
                    retire_at,
                )));
            }
            // The others wait from the start: the runtime watches them.
            let Some((stream, conn)) = register_or_close(socket, conn) else {
                return Either::Right(Either::Right(std::future::ready(()).boxed_local()));
            };
            match kind {
                Accepted::Framed(listener, None) => {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                    socket::bound_message_send_buffer(fd, &ctx.config);
                    bound_framed_unacknowledged(fd, &ctx.config);
                    let framed = proto::framed::serve_accepted(stream, ctx.clone(), listener);
                    Either::Right(Either::Right(
                        finish_messages(framed, proto::FRAMED, ctx, conn).boxed_local(),
                    ))
                }
                Accepted::Framed(listener, Some(tls)) => {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                    socket::bound_message_send_buffer(fd, &ctx.config);
                    bound_framed_unacknowledged(fd, &ctx.config);
                    let start = tls::HandshakeStart {
                        live: tls.live(),
                        place,
                        accepted: None,
                    };
                    Either::Right(Either::Right(
                        serve_framed_tls(stream, listener, ctx, conn, start).boxed_local(),
                    ))
                }
                // Boxed: the handshake and the TLS stream are large, and
                // cleartext connections should not carry their size.
                Accepted::Tls(tls) => {
                    let start = tls::HandshakeStart {
                        live: tls.live(),
                        place,
                        accepted: None,
                    };
                    Either::Left(Either::Right(Box::pin(serve_tls(
                        stream, service, ctx, conn, start, info, retire_at,
                    ))))
                }
                Accepted::Http1 { .. } => Either::Left(Either::Left(serve_http1(
                    stream,
                    service,
                    ctx,
                    conn,
                    Some(Box::new(info)),
                    proto::HTTP1,
                    retire_at,
                ))),
            }
        }
        Incoming::Woken {
            socket,
            hot,
            proto,
            wake,
        } => match proto {
            // HTTP/1.1 parks with no timer: only bytes or a hang-up wake it.
            proto::HTTP1 => {
                debug_assert!(wake.readable());
                // The lot keeps no addresses (they would double a parked
                // connection's cost): read them back only if requests
                // carry them, with the balancer of a proxied one (the same
                // lookup), whose task its requests' `ProxiedBy` read.
                let (info, by) = woken_addrs(&socket, &ctx);
                let io = WokenSocket::new(socket, hot, wake);
                let serving = move || serve_http1(io, service, ctx, conn, info, proto::HTTP1, None);
                match by {
                    None => Either::Right(Either::Left(serving())),
                    Some(by) => Either::Right(Either::Right(
                        proxy_header::serving(woken_task(by), serving()).boxed_local(),
                    )),
                }
            }
            proto::HTTP1_TLS => Either::Right(Either::Right(
                serve_tls_woken(socket, hot, wake, service, ctx, conn).boxed_local(),
            )),
            proto::FRAMED => {
                let framed = proto::framed::serve_woken(socket, hot, wake, ctx.clone());
                Either::Right(Either::Right(
                    finish_messages(framed, proto::FRAMED, ctx, conn).boxed_local(),
                ))
            }
            proto::WEBSOCKET => {
                let socket = tokio_util::either::Either::Left(WokenSocket::new(socket, hot, wake));
                let ws = proto::ws::serve_woken(socket, wake, ctx.clone());
                Either::Right(Either::Right(
                    finish_messages(ws, proto::WEBSOCKET, ctx, conn).boxed_local(),
                ))
            }
            proto::WEBSOCKET_TLS => Either::Right(Either::Right(
                serve_tls_message_woken(
                    (socket, hot, wake),
                    (ctx, conn),
                    proto::WEBSOCKET_TLS,
                    proto::ws::parked_closed_tls,
                    move |io, ctx| {
                        proto::ws::serve_woken(tokio_util::either::Either::Right(io), wake, ctx)
                    },
                )
                .boxed_local(),
            )),
            proto::FRAMED_TLS => Either::Right(Either::Right(
                serve_tls_message_woken(
                    (socket, hot, wake),
                    (ctx, conn),
                    proto::FRAMED_TLS,
                    proto::framed::parked_closed_tls,
                    move |io, ctx| proto::framed::serve_woken_tls(io, wake, ctx),
                )
                .boxed_local(),
            )),
            proto::SSE => {
                let sse = proto::sse::serve_woken(socket, hot, wake, ctx.clone());
                Either::Right(Either::Right(
                    finish_messages(sse, proto::SSE, ctx, conn).boxed_local(),
                ))
            }
            proto::SSE_TLS => Either::Right(Either::Right(
                serve_tls_message_woken(
                    (socket, hot, wake),
                    (ctx, conn),
                    proto::SSE_TLS,
                    proto::sse::parked_closed_tls,
                    move |io, ctx| proto::sse::serve_woken_tls(io, wake, ctx),
                )
                .boxed_local(),
            )),
            ProtoTag(unknown) => {
                tracing::error!(tag = unknown, "woken connection of an unknown protocol");
                conn.close(CloseReason::ServerError);
                Either::Right(Either::Right(std::future::ready(()).boxed_local()))
            }
        },
        // Only a lot refuses: it waits awake there, then comes back Woken.
        Incoming::Refused { socket, parking } => Either::Right(Either::Right(
            async move {
                match ctx.park.as_ref() {
                    Some(lot) => lot.stay_awake(socket, parking, conn, &ctx.shutdown).await,
                    None => conn.close(CloseReason::ServerError),
                }
            }
            .boxed_local(),
        )),
    }
}

/// What an accepted connection is served as, from the listener it came in
/// on. Cheap to decide (asked twice: `serve_at_once`, then `serve`); the
/// TLS configuration's live state is read only when a handshake starts.
enum Accepted<'c> {
    /// A framed TCP listener (its number in the config), and its TLS
    /// configuration if it is a TLS one.
    Framed(usize, Option<&'c tls::TlsConfig>),
    /// A TLS listener.
    Tls(&'c tls::TlsConfig),
    /// Cleartext HTTP/1.1; `bare` with a parking lot: served bare until it
    /// waits, else the runtime watches it from the start.
    Http1 { bare: bool },
}

fn accepted_as<'c>(ctx: &'c WorkerContext, info: &ConnInfo) -> Accepted<'c> {
    // Framed listeners are fixed at bind time, TLS ones too (added with
    // `listen_framed_tls_on`; the others are cleartext whatever `tls` says).
    if let Some(listener) = proto::framed::accepted_on(&ctx.config, info.local) {
        let tls = proto::framed::is_tls(&ctx.config, listener)
            .then(|| tls::tls_for_local(&ctx.config, info.local))
            .flatten();
        return Accepted::Framed(listener, tls);
    }
    match tls::tls_for_local(&ctx.config, info.local) {
        Some(tls) => Accepted::Tls(tls),
        None => Accepted::Http1 {
            bare: ctx.park.is_some(),
        },
    }
}

/// An accepted socket, registered with the runtime, and its connection;
/// `None` once it closed, the socket refused by the runtime (logged,
/// limited).
fn register_or_close(
    socket: std::os::fd::OwnedFd,
    conn: Connection,
) -> Option<(TcpStream, Connection)> {
    match TcpStream::from_std(std::net::TcpStream::from(socket)) {
        Ok(stream) => Some((stream, conn)),
        Err(e) => {
            ratelog::cannot_watch(
                &e,
                "cannot register an accepted connection with the runtime",
            );
            conn.close(CloseReason::io(&e));
            None
        }
    }
}

/// Whether a connection is worth serving on the turn that brought it (the
/// lot's for a wake, the accept loop's for a new one), without a task first
/// (`worker::connection_spawner`): a cold wake of a message connection
/// (framed and WebSocket, cleartext or TLS) or of a cleartext HTTP/1.1 one,
/// which is usually one heartbeat (or a ping of ours, or the pong to it),
/// answered and re-parked with no wait; and a new cleartext HTTP/1.1
/// connection, whose opening request is usually there by the time it is
/// accepted. Hot wakes wait as tasks anyway; TLS is spawned as it always was.
pub(crate) fn serve_at_once(incoming: &Incoming, ctx: &WorkerContext) -> bool {
    match incoming {
        Incoming::Woken {
            hot: false,
            proto:
                proto::FRAMED
                | proto::FRAMED_TLS
                | proto::WEBSOCKET
                | proto::WEBSOCKET_TLS
                | proto::SSE
                | proto::SSE_TLS
                | proto::HTTP1,
            ..
        } => true,
        Incoming::Accepted(_, info, _, _) => {
            matches!(accepted_as(ctx, info), Accepted::Http1 { bare: true })
                && !proxy_header::expected(&ctx.config, info.local, info.peer)
        }
        Incoming::Woken { .. } | Incoming::Refused { .. } => false,
    }
}

/// What a parked connection of protocol `tag` at `fd` takes to another
/// process (an upgrade), if it can move: its protocol's payload, asked of
/// each parked connection by `ParkingLot::take_portable`. Cleartext
/// HTTP/1.1 keeps no state but its lot entry: it moves with none. A
/// cleartext framed connection moves when its handler exports its state
/// (`FramedHandler::export`; `proto/framed/adopt.rs` takes it out of the
/// side table, with its topics and timers). Not over TLS (rustls cannot
/// rebuild a session from its secrets), nor WebSocket or SSE (no export
/// yet): those stay and close as at shutdown. An HTTP/1.1 connection
/// parked with a timer (`at_deadline` [`AtDeadline::Wake`]) stays too: its
/// record carries only the time left, which the next process takes for an
/// idle timeout, closing it where it should have been woken (the filter of
/// sessions before 47). `kinds`: what the next process adopts; a framed
/// handler is asked only when it adopts framed connections (asked, it
/// lets its state go: `on_close(HandedOver)`).
pub(crate) fn export(
    ctx: &WorkerContext,
    fd: std::os::fd::RawFd,
    tag: ProtoTag,
    at_deadline: AtDeadline,
    kinds: HandOverKinds,
) -> Option<Vec<u8>> {
    match tag {
        // A proxied one's client is known to this process only (the next
        // would read the balancer's address): it stays, as TLS ones do.
        proto::HTTP1 if at_deadline == AtDeadline::Close && !proxied(fd) => Some(Vec::new()),
        proto::FRAMED if kinds.moves_framed() && !proxied(fd) => {
            proto::framed::adopt::export(ctx, fd)
        }
        _ => None,
    }
}

/// Whether the socket `fd` is a proxied connection's
/// (`proxy_header::is_proxied`: one atomic load while none is open).
fn proxied(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: the callers' `fd` is open while they ask: `export`'s, a
    // parked socket the lot owns meanwhile; an upgrade's, its stream's.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    proxy_header::is_proxied(socket)
}

/// A woken connection's addresses for its requests (with `connect_info`:
/// the lot keeps none; two system calls), and the balancer it came
/// through if it is a proxied one (found by the same lookup).
fn woken_addrs(
    socket: &std::os::fd::OwnedFd,
    ctx: &WorkerContext,
) -> (Option<Box<ConnInfo>>, Option<SocketAddr>) {
    if !ctx.config.connect_info {
        return (None, None);
    }
    match ConnInfo::and_balancer_of(socket) {
        Some((info, by)) => (Some(Box::new(info)), by),
        None => (None, None),
    }
}

/// The task of a woken proxied connection (its balancer `by`): its
/// accept is long gone, its first request's wait began at the wake.
fn woken_task(by: SocketAddr) -> proxy_header::ProxiedTask {
    proxy_header::ProxiedTask {
        by: Some(by),
        accepted: None,
    }
}

/// Resumes a connection another process handed over ([`export`]'s other
/// end, `handover::adopt`): HTTP/1.1 with the idle time it had left,
/// closed at its end; framed with its state imported into its side table
/// (`FramedHandler::import`), woken at its heartbeat timers. Any other
/// protocol, or a state refused: `None`, and it closes.
pub(crate) fn resume(
    ctx: &Rc<WorkerContext>,
    socket: &std::os::fd::OwnedFd,
    state: &ParkedState,
) -> Option<Resumed> {
    match state.tag() {
        proto::HTTP1 if state.payload().is_empty() => Some(Resumed {
            deadline: state
                .idle_left()
                .map(|left| tokio::time::Instant::now() + left),
            at_deadline: AtDeadline::Close,
        }),
        proto::FRAMED => {
            let deadline = proto::framed::adopt::import(ctx, socket, state.payload())?;
            Some(Resumed {
                deadline,
                at_deadline: AtDeadline::Wake,
            })
        }
        _ => None,
    }
}

/// Whether a parked connection of protocol `tag` may be closed to make room
/// for a new one at `max_connections` (`ParkingLot::evict`): HTTP/1.1 in the
/// clear or over TLS, whose clients take a closed idle keep-alive
/// connection for what it is and reconnect. Not a message protocol's
/// (framed, WebSocket): its peer holds the connection open on purpose.
pub(crate) fn evictable(tag: ProtoTag) -> bool {
    tag == proto::HTTP1 || tag == proto::HTTP1_TLS
}

/// What a client refused by an admission limit (`--max-connections-per-ip`,
/// `--accept-rate`) on the listener at `local` is told before the close
/// (`admission::refuse`), with a `Retry-After` of `retry_after` seconds.
/// A cleartext HTTP listener answers `503 Service Unavailable`, as nginx's
/// `limit_conn` does: a browser shows it, a load balancer or a client that
/// retries sees an overloaded server and when to come back, where a bare
/// close read as "connection reset" and was retried blindly. Its WebSocket
/// clients too: their opening handshake is an HTTP/1.1 request, and a
/// `503` fails it as any non-`101` does. An HTTP/2 client with prior
/// knowledge (h2c, when `http2_prior_knowledge` is on) gets HTTP/2's
/// refusal instead, a `GOAWAY` that says no stream was processed
/// (`http2::refused_at_accept`): it read the `503` as a protocol error.
/// Its first bytes say which (`admission::refuse`); when they have not
/// arrived yet, the refusal waits for them, bounded (`admission::Undecided`).
/// A TLS listener closes without a word (`None`: the accept loop closes
/// with a FIN once the client's first flight is in, `Answer::silent`): its client expects a handshake,
/// and plaintext would be garbage to it (an alert would need one half
/// begun). A framed listener too: its protocol is the handler's, with no
/// refusal the server could speak.
pub(crate) fn refusal_answer(
    config: &Config,
    local: SocketAddr,
    retry_after: u64,
) -> Option<Answer> {
    if proto::framed::accepted_on(config, local).is_some()
        || tls::tls_for_local(config, local).is_some()
    {
        return None;
    }
    let bytes = format!(
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\n\r\n"
    );
    let by_opening = config.http2.prior_knowledge.then(|| {
        (
            proto::H2_PREFACE_HEAD,
            http2::refused_at_accept(retry_after),
        )
    });
    Some(Answer {
        bytes: bytes.into_bytes().into_boxed_slice(),
        by_opening,
    })
}

async fn serve_tls<S>(
    stream: TcpStream,
    mut service: S,
    ctx: Rc<WorkerContext>,
    conn: Connection,
    start: tls::HandshakeStart,
    info: ConnInfo,
    retire_at: Option<tokio::time::Instant>,
) where
    S: HttpService + 'static,
{
    // The handshake runs in its own box, freed when it ends: its state (a
    // whole rustls connection mid-handshake, the timer) would otherwise stay
    // in every connection's future for as long as it is open.
    let stream = match Box::pin(tls::handshake(stream, &ctx, start)).await {
        Ok(stream) => stream,
        Err(reason) => return conn.close(reason),
    };
    if stream.alpn_protocol() == Some(b"h2") {
        // Boxed: HTTP/2 state (2 KB of ours, h2's own buffers on top) is
        // for HTTP/2 connections only; HTTP/1.1 ones should not carry its size.
        // The stream's one copy of the chain, shared (`TlsIo`).
        let peer = stream.shared_peer_certificates();
        // A drain's 5 s for its HTTP/2 handshake count from the accept.
        let addrs = http2::Addrs::kept(Some(info))
            .with_peer(peer)
            .accepted_at(stream.accepted_at());
        let serving = http2::serve(
            stream,
            &mut service,
            ctx.clone(),
            Box::new(addrs),
            retire_at,
        );
        let reason = Box::pin(serving).await;
        conn.close(reason);
    } else {
        serve_http1(
            stream,
            service,
            ctx,
            conn,
            Some(Box::new(info)),
            proto::HTTP1_TLS,
            retire_at,
        )
        .await;
    }
}

/// A connection from a trusted balancer (`proxy_protocol`): registered
/// with the runtime, its PROXY header read within `read_header_timeout`
/// (`proxy_header::read_header`, which closes it without a valid one),
/// then tracked as the client the header named (the hook, the registry
/// and the access log see the client; the spawner found no track to make
/// current, so it is made current here), and served as its listener's
/// connections are ([`serve_proxied_client`]). Its task's end lets the
/// client's entry go if its socket closed (`proxy_header::ended`; parked,
/// it stays, and goes at the lot's or the woken socket's close).
async fn serve_proxied<S>(
    socket: std::os::fd::OwnedFd,
    service: S,
    ctx: Rc<WorkerContext>,
    conn: Connection,
    mut info: ConnInfo,
    (retire_at, place): (Option<tokio::time::Instant>, Option<tls::HandshakePlace>),
) where
    S: HttpService + 'static,
{
    // Its accept, near enough (the task's first poll): a drain's 5 s for
    // a connection with no request yet count from here, through the
    // header's wait and the TLS handshake.
    let accepted = tokio::time::Instant::now();
    let Some((stream, mut conn)) = register_or_close(socket, conn) else {
        return;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    // Dropped after the socket, whichever way the task ends (a forced
    // shutdown drops it): declared before the future that takes it.
    let _ended = proxy_header::OnTaskEnd(fd);
    // The socket's peer, until the header names the client: the balancer.
    let by = match proxy_header::read_header(&stream, &ctx, accepted).await {
        Ok(Some(client)) => Some(std::mem::replace(&mut info.peer, client)),
        Ok(None) => None,
        Err(reason) => {
            // A FIN, not the reset unread bytes would draw.
            crate::conn::admission::shut_and_discard(fd);
            return conn.close(reason);
        }
    };
    let track = crate::conn::accept::open_track(&ctx, info.peer, info.local);
    if let Some(track) = &track {
        conn.set_track(track.clone());
    }
    let start = (retire_at, place, accepted);
    let serving = serve_proxied_client(stream, service, ctx, conn, info, start);
    // What its protocols ask of the task (`ProxiedTask`): the balancer, for
    // its requests' `ProxiedBy`; the accept, from which a drain's 5 s for
    // a first request on cleartext HTTP/1.1 count (`TcpStream`'s
    // `accepted_at`; TLS's stream keeps its own).
    let task = proxy_header::ProxiedTask {
        by,
        accepted: Some(accepted),
    };
    proxy_header::serving(task, Tracked::new(serving, track)).await;
}

/// A proxied connection once its header named its client (`info.peer`):
/// held to `max_connections_per_ip` on that client (its place was not
/// taken at the accept, where the balancer's address would have counted
/// every client behind it as one; refused as the accept refuses, a
/// cleartext HTTP listener's `503` included), and to
/// `TlsConfig::handshake_rate_per_ip` on a TLS listener; then served as
/// its listener's connections are, the header's bytes consumed.
async fn serve_proxied_client<S>(
    stream: TcpStream,
    service: S,
    ctx: Rc<WorkerContext>,
    mut conn: Connection,
    info: ConnInfo,
    (retire_at, place, accepted): (
        Option<tokio::time::Instant>,
        Option<tls::HandshakePlace>,
        tokio::time::Instant,
    ),
) where
    S: HttpService + 'static,
{
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    if let Some(limit) = &ctx.limit {
        if !conn.admit_ip(limit, info.peer.ip()) {
            // Counted before the client can read the answer.
            crate::observe::stats::incr(&ctx.stats.rejected_per_ip);
            let retry_after = crate::conn::admission::PER_IP_RETRY_AFTER_SECS;
            let answer =
                refusal_answer(&ctx.config, info.local, retry_after).unwrap_or_else(Answer::silent);
            // Then a FIN, not the reset unread bytes would draw (a
            // ClientHello: a silent answer waits for it, as the accept's).
            let bytes = answer_by_opening(&stream, &answer).await;
            crate::conn::admission::send_then_shut(fd, bytes);
            conn.close(CloseReason::Limit);
            ratelog::log(ratelog::Flood::MaxConnectionsPerIp, |suppressed| {
                tracing::warn!(
                    worker = ctx.index,
                    limit = "max_connections_per_ip",
                    peer = %info.peer,
                    suppressed,
                    "connection refused by max_connections_per_ip (raise it if the peer is legitimate; its address is the one its balancer's PROXY header named)"
                )
            });
            return;
        }
    }
    let kind = accepted_as(&ctx, &info);
    if let Accepted::Tls(tls) | Accepted::Framed(_, Some(tls)) = &kind {
        match tls.admit_from(info.peer.ip()) {
            Ok(crate::conn::admission::Admitted::ForgotOne(ips)) => {
                LimitHit::TlsHandshakeRateTable.count(&ctx.stats);
                crate::conn::accept::log_rate_table_full(&ctx, info.peer, ips);
            }
            Ok(crate::conn::admission::Admitted::Metered) => {}
            Err(over) => {
                LimitHit::from(over).count(&ctx.stats);
                crate::conn::admission::shut_and_discard(fd);
                conn.close(CloseReason::Limit);
                return crate::conn::accept::log_over_ip_rate(&ctx, info.peer, over);
            }
        }
    }
    match kind {
        Accepted::Framed(listener, tls) => {
            socket::bound_message_send_buffer(fd, &ctx.config);
            bound_framed_unacknowledged(fd, &ctx.config);
            match tls {
                Some(tls) => {
                    let start = tls::HandshakeStart {
                        live: tls.live(),
                        place,
                        accepted: Some(accepted),
                    };
                    serve_framed_tls(stream, listener, ctx, conn, start).await;
                }
                None => {
                    let framed = proto::framed::serve_accepted(stream, ctx.clone(), listener);
                    finish_messages(framed, proto::FRAMED, ctx, conn).await;
                }
            }
        }
        Accepted::Tls(tls) => {
            let start = tls::HandshakeStart {
                live: tls.live(),
                place,
                accepted: Some(accepted),
            };
            Box::pin(serve_tls(
                stream, service, ctx, conn, start, info, retire_at,
            ))
            .await;
        }
        Accepted::Http1 { .. } => {
            let info = Some(Box::new(info));
            serve_http1(stream, service, ctx, conn, info, proto::HTTP1, retire_at).await;
        }
    }
}

/// What a refused proxied client is sent ([`Answer::choose`]): an h2c
/// client's `GOAWAY` when its first bytes are HTTP/2's preface, else the
/// answer's own bytes (a cleartext listener's `503`; a silent one's FIN
/// once its first bytes are in). Its bytes behind the header are waited
/// for up to `UNDECIDED_WAIT`, as the accept's refusals wait for theirs
/// (`admission::Undecided`): an h2c client read the `503` as a protocol
/// error, its request lost with nothing saying it was safe to retry.
async fn answer_by_opening<'a>(stream: &TcpStream, answer: &'a Answer) -> &'a [u8] {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let chosen = async {
        loop {
            if stream.ready(tokio::io::Interest::READABLE).await.is_err() {
                return None;
            }
            // Not yet (part of the opening): "would block", which clears
            // the readiness until more bytes come.
            let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
                answer
                    .choose(fd)
                    .ok_or_else(|| std::io::ErrorKind::WouldBlock.into())
            });
            match peeked {
                Ok(bytes) => return Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    };
    let wait = crate::conn::admission::UNDECIDED_WAIT;
    match tokio::time::timeout(wait, chosen).await {
        Ok(Some(bytes)) => bytes,
        _ => &answer.bytes,
    }
}

/// A parked HTTPS/1.1 connection woke up: its session comes back from the
/// worker's table and decrypts what arrived, without a wait. Requests are
/// served, and so is part of a record (its rest waits under
/// `read_header_timeout`); complete TLS housekeeping alone (a KeyUpdate)
/// parks it again at once, with a fresh idle deadline.
async fn serve_tls_woken<S>(
    socket: std::os::fd::OwnedFd,
    hot: bool,
    wake: Wake,
    service: S,
    ctx: Rc<WorkerContext>,
    conn: Connection,
) where
    S: HttpService + 'static,
{
    use std::os::fd::AsRawFd;
    let Some(parked) = ctx.tls_parked.take(socket.as_raw_fd()) else {
        tracing::error!("a woken TLS connection has no parked session");
        return conn.close(CloseReason::ServerError);
    };
    // With the balancer of a proxied one, for its requests' `ProxiedBy`.
    let (info, by) = woken_addrs(&socket, &ctx);
    // HTTPS/1.1 parks with no timer: bytes woke it.
    let mut io = TlsIo::resume(WokenSocket::new(socket, hot, wake), parked);
    match io.poll_prefetch() {
        // Requests, or part of a record: the rest is a request on its way,
        // and it waits as a task under `read_header_timeout`, as a
        // cleartext request head does (the same path as a first request).
        // Parked again with a fresh idle deadline, it held up to a record's
        // ciphertext for as long as the client kept sending a byte now and
        // then.
        Ok(prefetched) if prefetched || io.holds_partial_record() => {
            let serving = serve_http1(io, service, ctx, conn, info, proto::HTTP1_TLS, None);
            match by {
                Some(by) => proxy_header::serving(woken_task(by), serving).await,
                None => serving.await,
            }
        }
        // Complete TLS housekeeping alone: parked again.
        Ok(_) => {
            let deadline = ctx
                .config
                .idle_timeout
                .map(|t| tokio::time::Instant::now() + t);
            let parking = Parking {
                deadline,
                at_once: false,
                proto: proto::HTTP1_TLS,
                at_deadline: AtDeadline::Close,
                watched: io.still_watched(),
            };
            park(io, parking, &ctx, conn);
        }
        // A reset is the client leaving, not a TLS error. A TLS error (the
        // peer's) was logged by the stream and closes as a protocol error,
        // counted by the close; another is the socket's.
        Err(e) if client_left(&e) => conn.close(CloseReason::ClientClosed),
        Err(e) => conn.close(CloseReason::io(&e)),
    }
}

/// A parked message connection over TLS (WebSocket or framed: `tag`) woke
/// up: its session comes back from the worker's table, then the protocol
/// resumes on it (`serve`: it decrypts what arrived, or sends the ping or
/// heartbeat frame that was due, encrypted). Without a session (a bug),
/// the protocol lets its state go (`closed`) and the connection closes.
async fn serve_tls_message_woken<P: ParkedParts>(
    (socket, hot, wake): (std::os::fd::OwnedFd, bool, Wake),
    (ctx, conn): (Rc<WorkerContext>, Connection),
    tag: ProtoTag,
    closed: fn(&WorkerContext, std::os::fd::RawFd, CloseReason, Option<ParkedTls>),
    serve: impl FnOnce(
        TlsIo<WokenSocket>,
        Rc<WorkerContext>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Ended<P>>>>,
) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let Some(parked) = ctx.tls_parked.take(fd) else {
        tracing::error!(
            tag = tag.0,
            "a woken message connection over TLS has no parked session"
        );
        closed(&ctx, fd, CloseReason::ServerError, None);
        return conn.close(CloseReason::ServerError);
    };
    let io = TlsIo::resume(WokenSocket::new(socket, hot, wake), parked);
    finish_messages(serve(io, ctx.clone()), tag, ctx, conn).await;
}

/// A connection on a TLS framed listener: the handshake, bounded as
/// HTTPS's is (its place among the worker's handshakes in flight, the
/// handshake timeout; `tls::handshake`), then the framed protocol on the
/// decrypted stream; parked, it resumes as `FRAMED_TLS`, its session in
/// the worker's table.
async fn serve_framed_tls(
    stream: TcpStream,
    listener: usize,
    ctx: Rc<WorkerContext>,
    conn: Connection,
    start: tls::HandshakeStart,
) {
    // In its own box, freed when it ends, as HTTPS's (`serve_tls`).
    let stream = match Box::pin(tls::handshake(stream, &ctx, start)).await {
        Ok(stream) => stream,
        Err(reason) => return conn.close(reason),
    };
    let framed = proto::framed::serve_accepted_tls(stream, ctx.clone(), listener);
    finish_messages(framed, proto::FRAMED_TLS, ctx, conn).await;
}

/// HTTP/1.1 on `io`, then whatever it ends with; parked, it resumes as `tag`.
/// `retire_at`: as drawn at the accept, for a connection just accepted;
/// `None` for a woken one (the lot kept it) or with `max_connection_age` off.
fn serve_http1<T, S>(
    io: T,
    service: S,
    ctx: Rc<WorkerContext>,
    conn: Connection,
    info: Option<Box<ConnInfo>>,
    tag: ProtoTag,
    retire_at: Option<tokio::time::Instant>,
) -> impl Future<Output = ()>
where
    T: Parkable + Send + 'static,
    S: HttpService + 'static,
{
    // `then`, not an async block: awaiting a future moved into a block would
    // store it twice. A close and a park (every heartbeat ends in one) are
    // done right here; only a hand-over goes on as a future, boxed: built
    // inline, the next protocol's future (a whole WebSocket connection) was
    // copied into place at the end of every exchange, and sized every
    // connection's task.
    let serving = http1::serve_connection(io, service, ctx.clone(), info, retire_at);
    serving.then(move |(ended, service)| {
        match close_or_park(ended, tag, AtDeadline::Close, &ctx, conn, park) {
            Some((to, conn)) => {
                Either::Right(hand_over_http1(to, service, ctx, conn, tag).boxed_local())
            }
            None => Either::Left(std::future::ready(())),
        }
    })
}

/// Closes or parks a connection as its protocol ended it (resuming in
/// `tag`, its deadline doing what `at_deadline` says, `park` putting it in
/// the lot); a hand-over comes back, for the caller to serve.
fn close_or_park<T>(
    ended: Ended<T>,
    tag: ProtoTag,
    at_deadline: AtDeadline,
    ctx: &WorkerContext,
    conn: Connection,
    park: impl FnOnce(T, Parking, &WorkerContext, Connection),
) -> Option<(HandOver<T>, Connection)> {
    match ended {
        Ended::Close(reason) => conn.close(reason),
        Ended::Park {
            io,
            deadline,
            at_once,
            watched,
        } => park(
            io,
            Parking::of(deadline, at_once, watched, tag, at_deadline),
            ctx,
            conn,
        ),
        Ended::HandOver(to) => return Some((to, conn)),
    }
    None
}

/// Serves a connection that HTTP/1.1 handed over: HTTP/2 (h2c), a handler's
/// upgrade, or a native WebSocket route.
async fn hand_over_http1<T, S>(
    to: HandOver<T>,
    mut service: S,
    ctx: Rc<WorkerContext>,
    conn: Connection,
    tag: ProtoTag,
) where
    T: Parkable + Send + 'static,
    S: HttpService + 'static,
{
    match to {
        HandOver::H2c {
            io,
            read_ahead,
            info,
            since,
        } => {
            // The addresses HTTP/1.1 kept (only with `connect_info`), else
            // the socket, which HTTP/2 asks for the peer only for a line
            // that names it (a refused request), as HTTP/1.1 does: read
            // here, it cost two syscalls per h2c connection.
            let socket = io.lot_fd();
            // SAFETY: `socket` is `io`'s, which `http2::serve` owns (inside
            // the `Rewind`) until it returns.
            let addrs = unsafe { http2::Addrs::with_socket(info.map(|i| *i), socket) };
            // A drain's 5 s for its HTTP/2 handshake count from the accept
            // (HTTP/1.1's first head's did), not from this hand-over.
            let addrs = addrs.accepted_at(since);
            let io = Rewind { io, read_ahead };
            // Its age counted from the upgrade: the hand-over does not
            // carry HTTP/1.1's.
            let retire_at = ctx.retire_at();
            let reason = Box::pin(http2::serve(
                io,
                &mut service,
                ctx.clone(),
                Box::new(addrs),
                retire_at,
            ))
            .await;
            conn.close(reason);
        }
        HandOver::Upgrade { io, read_ahead, tx } => {
            ctx.stats.connection_upgraded();
            // A handler that gave up on the upgrade drops the `Upgraded`,
            // which closes the connection's accounts. It leaves this task,
            // so it takes its place in the drain along (the handler may
            // keep it on a task of its own, which the drain cannot see).
            let drain = Some(ctx.upgrade_drain(true));
            let socket = io.lot_fd();
            let conn = conn.into_send();
            // A proxied one's client entry goes when the handler drops
            // it (its task may outlive this one, which cannot see it go).
            let upgraded = match socket.filter(|&fd| proxied(fd)) {
                Some(fd) => {
                    let io = proxy_header::ForgetsClient::new(io, fd);
                    Upgraded::new(io, read_ahead, conn, drain)
                }
                None => Upgraded::new(io, read_ahead, conn, drain),
            };
            let upgraded = upgraded.with_write_limit(
                MessageSettings::write_limit_without_heartbeat(&ctx.config),
                socket,
            );
            upgrade::hand_over(tx, upgraded);
        }
        HandOver::Native { io, read_ahead, to } => {
            if let Some(fd) = io.lot_fd() {
                socket::bound_message_send_buffer(fd, &ctx.config);
            }
            // An event stream (the SSE route's `200`): no upgrade, the
            // response's body goes on as messages.
            if proto::sse::claims(&to) {
                bound_unacknowledged(io.lot_fd(), &ctx.config);
                let sse = proto::sse::serve_handed_over(io, read_ahead, to, ctx.clone());
                let sse_tag = if tag == proto::HTTP1_TLS {
                    proto::SSE_TLS
                } else {
                    proto::SSE
                };
                return finish_messages(sse, sse_tag, ctx, conn).await;
            }
            ctx.stats.connection_upgraded();
            // A route with its heartbeat off has nothing else to close a
            // peer gone without a FIN (as a framed listener's).
            if proto::ws::heartbeat_timeout(&to).is_none() {
                bound_unacknowledged(io.lot_fd(), &ctx.config);
            }
            let ws = proto::ws::serve_upgraded(io, read_ahead, to, ctx.clone());
            // Upgraded over TLS, it parks with its session.
            let ws_tag = if tag == proto::HTTP1_TLS {
                proto::WEBSOCKET_TLS
            } else {
                proto::WEBSOCKET
            };
            finish_messages(ws, ws_tag, ctx, conn).await;
        }
    }
}

/// Bounds a framed connection's unacknowledged bytes
/// ([`bound_unacknowledged`]) when its listeners have no
/// `heartbeat_timeout`.
///
/// Why: a device gone without a FIN (off the network) sends nothing, and
/// a push to it, parked, is taken whole by the kernel's send buffer: no
/// write of ours waits, so the write bound never applied, and the
/// connection stayed parked, its pushes counted as sent, until the
/// kernel's retransmission gave up (~16 minutes). With a heartbeat
/// timeout that closes the silent peer, and it (not `write_stall_timeout`)
/// is the documented bound on a stalled write, so the socket keeps the
/// kernel's default.
fn bound_framed_unacknowledged(fd: std::os::fd::RawFd, config: &Config) {
    if proto::framed::settings(config).is_some_and(|s| s.heartbeat_timeout.is_some()) {
        return;
    }
    bound_unacknowledged(Some(fd), config);
}

/// Gives a message connection without a heartbeat timeout (an SSE
/// stream, a framed or WebSocket one with it off) the kernel's bound on
/// unacknowledged bytes ([`socket::bound_unacknowledged`]), derived from
/// the bound its writes get without a heartbeat (`write_timeout`, else
/// `write_stall_timeout`), which an `axum_ws` socket's get too
/// (`Upgraded::bound_unacknowledged`): the kernel's waits past it.
fn bound_unacknowledged(fd: Option<std::os::fd::RawFd>, config: &Config) {
    socket::bound_unacknowledged(fd, MessageSettings::write_limit_without_heartbeat(config));
}

/// Serves a caller's own transport (`Builder::serve_connection`): HTTP/1.1,
/// h2c and upgrades as on an accepted socket, but it never parks and has no
/// slot or counters of a server's to keep.
pub(crate) async fn serve_foreign<T, S>(io: T, service: S, ctx: Rc<WorkerContext>)
where
    T: Transport + Send + 'static,
    S: HttpService,
{
    let retire_at = ctx.retire_at();
    let (ended, mut service) =
        http1::serve_connection(Foreign { io }, service, ctx.clone(), None, retire_at).await;
    match ended {
        Ended::HandOver(HandOver::H2c { io, read_ahead, .. }) => {
            let io = Rewind { io, read_ahead };
            let retire_at = ctx.retire_at();
            Box::pin(http2::serve(
                io,
                &mut service,
                ctx,
                Box::new(http2::Addrs::kept(None)),
                retire_at,
            ))
            .await;
        }
        Ended::HandOver(HandOver::Upgrade { io, read_ahead, tx }) => {
            // A caller's transport: no TCP socket of ours to ask about
            // the peer's progress (our writes show it).
            let upgraded = Upgraded::new(io, read_ahead, SendConnection::closed(), None)
                .with_write_limit(
                    MessageSettings::write_limit_without_heartbeat(&ctx.config),
                    None,
                );
            upgrade::hand_over(tx, upgraded);
        }
        Ended::HandOver(HandOver::Native { io, read_ahead, to }) => {
            // A caller's transport never parks (it is not a plain socket);
            // an event stream is not served on one (`proto/sse`).
            if proto::sse::claims(&to) {
                let _ = proto::sse::serve_handed_over(Foreign { io }, read_ahead, to, ctx).await;
                return;
            }
            let _ = proto::ws::serve_upgraded(Foreign { io }, read_ahead, to, ctx).await;
        }
        Ended::Close(_) | Ended::Park { .. } => {}
    }
}

/// What a message protocol parks: a bare socket, or a socket and its TLS
/// session (framed, WebSocket; `None` in the clear).
trait ParkedParts {
    fn into_parts(self) -> (std::os::fd::OwnedFd, Option<ParkedTls>);
}

impl ParkedParts for std::os::fd::OwnedFd {
    fn into_parts(self) -> (std::os::fd::OwnedFd, Option<ParkedTls>) {
        (self, None)
    }
}

impl ParkedParts for (std::os::fd::OwnedFd, Option<ParkedTls>) {
    fn into_parts(self) -> (std::os::fd::OwnedFd, Option<ParkedTls>) {
        self
    }
}

/// Acts on how a message protocol's connection ended (framed, WebSocket:
/// its handler has heard already). `tag`: the protocol, for the lot.
async fn finish_messages<P: ParkedParts>(
    served: impl Future<Output = Ended<P>>,
    tag: ProtoTag,
    ctx: Rc<WorkerContext>,
    conn: Connection,
) {
    // The deadline is the heartbeat's: it wakes the connection, whose
    // protocol closes it with its own reason.
    let parts = |io: P, parking, ctx: &WorkerContext, conn| {
        let (socket, tls) = io.into_parts();
        park_parts(socket, tls, parking, ctx, conn);
    };
    if let Some((_, conn)) = close_or_park(served.await, tag, AtDeadline::Wake, &ctx, conn, parts) {
        conn.close(CloseReason::ServerError);
    }
}

/// What the parking lot calls when it closes a parked connection itself, so
/// the protocol that kept state for it (framed) can let it go.
pub(crate) fn on_parked_close(ctx: &Rc<WorkerContext>) -> OnParkedClose {
    let ctx = Rc::downgrade(ctx);
    Rc::new(move |fd, tag, reason| {
        if let Some(ctx) = ctx.upgrade() {
            parked_closed(&ctx, fd, tag, reason);
        }
    })
}

/// A parked connection of protocol `tag` closed without waking: the
/// protocol that kept its state lets it go.
fn parked_closed(ctx: &WorkerContext, fd: std::os::fd::RawFd, tag: ProtoTag, reason: CloseReason) {
    match tag {
        proto::FRAMED => proto::framed::parked_closed(ctx, fd, reason),
        proto::FRAMED_TLS => {
            proto::framed::parked_closed_tls(ctx, fd, reason, ctx.tls_parked.take(fd))
        }
        proto::WEBSOCKET => proto::ws::parked_closed(ctx, fd, reason),
        proto::WEBSOCKET_TLS => {
            proto::ws::parked_closed_tls(ctx, fd, reason, ctx.tls_parked.take(fd))
        }
        proto::SSE => proto::sse::parked_closed(ctx, fd, reason),
        proto::SSE_TLS => proto::sse::parked_closed_tls(ctx, fd, reason, ctx.tls_parked.take(fd)),
        proto::HTTP1_TLS => {
            if let Some(parked) = ctx.tls_parked.take(fd) {
                // Our own close of an idle connection: say so in TLS.
                if matches!(reason, CloseReason::IdleTimeout | CloseReason::Shutdown) {
                    parked.close_notify(fd);
                }
            }
        }
        _ => {}
    }
}

/// Hands an idle connection to the worker's parking lot.
fn park<T: Parkable>(io: T, parking: Parking, ctx: &WorkerContext, conn: Connection) {
    if ctx.park.is_none() {
        return conn.close(CloseReason::ServerClosed);
    }
    match io.into_parked_parts() {
        Ok((socket, tls)) => park_parts(socket, tls, parking, ctx, conn),
        Err(e) => {
            tracing::debug!(error = %e, "cannot park; closing");
            conn.close(CloseReason::io(&e));
        }
    }
}

/// Parks `socket` in the worker's lot, its TLS session (if any) in the
/// worker's table under the same descriptor. Without a lot (message
/// protocols park only when there is one) the connection closes cleanly,
/// its protocol letting its state go.
fn park_parts(
    socket: std::os::fd::OwnedFd,
    tls: Option<ParkedTls>,
    parking: Parking,
    ctx: &WorkerContext,
    conn: Connection,
) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    if let Some(tls) = tls {
        ctx.tls_parked.put(fd, tls);
    }
    match ctx.park.as_ref() {
        Some(lot) => lot.park(socket, parking, conn),
        None => {
            parked_closed(ctx, fd, parking.proto, CloseReason::ServerClosed);
            conn.close(CloseReason::ServerClosed);
        }
    }
}

#[cfg(test)]
mod size_guard {
    use super::*;
    use crate::Body;
    use http::{Request, Response};

    type Svc = tower::util::ServiceFn<
        fn(Request<Body>) -> std::future::Ready<Result<Response<Body>, std::convert::Infallible>>,
    >;

    fn size_of_future<F, A, B, C, D, Fut>(_: F) -> usize
    where
        F: Fn(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A regression guard for what every open connection carries in its
    /// task, cleartext or TLS. Measured when written: 712 bytes, of which the
    /// HTTP/1.1 future is 632 (the exchange is boxed; what remains is the
    /// head read with its timer and the idle wait) and the connection's
    /// accounts 56; TLS connections are boxed behind it (their future was
    /// 10,624 bytes before the handshake, the HTTP/2 state and the rustls
    /// session were boxed). The bound adds ~8%. If it fails, something large
    /// went inline (or an `async` block awaits a future it captured, which
    /// stores it twice): box it, or chain with `then`. 760 bytes, then 776
    /// with the accept's `max_connection_age` draw passed in. (HTTP/1.1's
    /// `serve_connection` as a plain function building its `ConnIo` outside
    /// an async block made it 696, but cost ~200 instructions per wake-up
    /// from the lot in copies: see its doc.)
    #[test]
    fn the_connection_future_stays_small() {
        fn conn_future(
            incoming: Incoming,
            svc: Svc,
            ctx: Rc<WorkerContext>,
            conn: Connection,
        ) -> impl std::future::Future<Output = ()> {
            serve(incoming, svc, ctx, conn)
        }
        let size = size_of_future(conn_future);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 784, "the connection future is {size} bytes");
    }
}
