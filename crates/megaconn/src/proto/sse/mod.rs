//! Server-Sent Events (WHATWG HTML §9.2), native and parkable: a `GET`
//! answered by an [`SseRoute`], whose stream is served per event on the
//! message layer, idle streams parked as bare sockets.
//!
//! # How a stream gets here
//!
//! As a native WebSocket does: the user mounts an [`SseRoute`] (a tower
//! service) on a route of their app. To a `GET` over HTTP/1.x it answers
//! `200` (`content-type: text/event-stream`, `cache-control: no-cache`)
//! marked with a [`NativeUpgrade`] carrying the route and the request's
//! head ([`Opening`]); the HTTP/1.1 engine writes that head and ends with
//! `Ended::HandOver(HandOver::Native)` (as after a native `101`), and the
//! dispatcher calls [`serve_handed_over`]. No task and no body stream are
//! kept for the connection beyond this protocol's own loop (`conn.rs`),
//! which parks it once idle for `park_idle_after`.
//!
//! # Body framing: chunked
//!
//! Over HTTP/1.1 the body is `chunked`, one chunk per event, so that a
//! stream the server ends ([`Hub::close`](crate::Hub::close), graceful
//! shutdown, [`Session::close`](crate::Session::close)) ends with the last
//! chunk (`0\r\n\r\n`): the client (and any proxy between) sees a response
//! that completed, not a connection that broke. Close-delimited framing (no length, the end of the
//! body is the close) would save the 4 to 8 bytes of each chunk's size
//! line, but every end would read as a truncated response to a proxy, and
//! HTTP/1.1 reserves it for responses that cannot say their length
//! otherwise. An HTTP/1.0 request, which cannot take chunks, gets a
//! close-delimited body (the engine then says `connection: close`).
//! Either way the connection is the stream's alone and closes after it.
//!
//! # Events
//!
//! Streams are message connections of the message layer (`message/`): each
//! has a [`ConnectionId`](crate::ConnectionId), may subscribe to topics,
//! and the [`Hub`](crate::Hub) reaches it by id, topic or broadcast
//! (awake: through its bounded outbound queue; parked: one `send` of the
//! event, encoded once per framing for every stream, see [`SseWire`]).
//! [`Hub::send`](crate::Hub::send), `publish` and `broadcast` carry an
//! event's data (text, one `data:` line per line of it); the `_binary`
//! forms carry a whole event encoded by [`SseEvent`] (with `event:`,
//! `id:`, `retry:`), written as it is; a push that is neither (not UTF-8,
//! not one whole event) does not reach event streams, counted in
//! `megaconn_limit_hits_total{limit="push_unframable"}`.
//!
//! # The client's bytes
//!
//! An event stream's client sends nothing after its request. Its end of
//! stream or reset closes the stream ([`CloseReason::ClientClosed`]); any
//! byte closes it as a protocol error (`Protocol(ProtocolDetail::Sse)`,
//! counted in `protocol_errors`): a request pipelined behind an endless
//! response would never be answered. A GET with a body (`content-length`
//! above 0, or `transfer-encoding`) is refused `400` before any stream
//! starts (the body would otherwise be read as the client's bytes).
//!
//! # Heartbeat and close
//!
//! A comment line (`:` and a blank line) goes every
//! [`SseRoute::ping_interval`] (30 s), events or not, from the parking
//! lot's timer for a parked stream (a wake, one write, straight back), so
//! proxies keep the stream and the peer has bytes to acknowledge. No
//! heartbeat is asked of the client. A peer gone without a FIN never
//! acknowledges them, and the write does not fail for ~15 minutes (the
//! kernel's retransmission, `tcp_retries2`): so the hand-over sets the
//! stream's socket's `TCP_USER_TIMEOUT` to twice its writes' bound
//! (`write_timeout`, else `write_stall_timeout`, else the latter's
//! default) and a second (`conn/socket.rs`, `kernel_bound`), the kernel
//! errors it once bytes go unacknowledged (or the window stays shut) that
//! long, and the stream closes as `Io(TimedOut)`: within about
//! `ping_interval` + 2 × `write_stall_timeout` + 1 s (151 s by default). Writes that wait are bounded
//! as HTTP/1.1's are (`write_timeout`, else `write_stall_timeout`), and a
//! stream whose outbound queue overflows closes as a slow consumer
//! ([`CloseReason::SlowConsumer`]), after the rest of the event under way.
//! At graceful shutdown a stream gets the route's
//! [`goodbye`](SseRoute::goodbye) event, if any, and the last chunk.
//!
//! # Transports
//!
//! - HTTP/1.1 (and 1.0) in the clear: served natively, parked with tag
//!   [`SSE`](crate::proto::SSE).
//! - HTTPS over HTTP/1.1: served natively; parked with its TLS session as
//!   a WebSocket over TLS is (tag [`SSE_TLS`](crate::proto::SSE_TLS), the
//!   session in the worker's table, pushes sealed with it without a wake).
//! - HTTP/2 (what browsers speak over HTTPS when the server offers `h2`):
//!   a stream of a multiplexed connection cannot be handed over or parked,
//!   and the message layer knows connections by socket. The route answers
//!   with its [`fallback`](SseRoute::fallback) service (the app's own
//!   streaming `Sse` handler, fed by its own channels), else `505`; or
//!   serve the endpoint's host without `h2` in `TlsConfig::alpn_protocols`.
//! - A caller's own transport (`Builder::serve_connection`): not served
//!   (the head is written, then the connection closes, logged).
//!
//! - `route.rs` [`SseRoute`], [`SseHandler`]: what users mount and write
//! - `event.rs` the format: data lines, [`SseEvent`], chunks
//! - `conn.rs`  one awake stream's loop

pub(crate) mod conn;
pub(crate) mod event;
pub(crate) mod route;

use std::os::fd::{OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use http::request::Parts;

use crate::conn::context::WorkerContext;
use crate::conn::tls_io::{ParkedTls, TlsIo};
use crate::conn::transport::Parkable;
use crate::conn::woken::WokenSocket;
use crate::conn::Wake;
use crate::message;
use crate::message::io::{parkable, MessageIo, MessageParked};
use crate::message::table::{Parked, SideTable};
use crate::message::wire::Wire;
use crate::message::worker::Local;
use crate::message::worker::MessageProtocol;
use crate::observe::close::{CloseReason, FramingError};
use crate::proto::parked::{close_parked_tls, let_go, ParkedSocket};
use crate::proto::Ended;
use crate::service::upgrade::NativeUpgrade;

pub use event::SseEvent;
pub use route::{SseBody, SseHandler, SseRoute, DEFAULT_SSE_PING_INTERVAL};

use route::ErasedRoute;

/// A boxed stream future: boxed so the dispatcher's future does not grow.
pub(crate) type LocalFuture<T> = Pin<Box<dyn std::future::Future<Output = T>>>;

/// What a [`NativeUpgrade`] carries for this protocol: the route, the
/// body's framing, and the request's head for `on_open` (taken once;
/// behind a mutex only because the response's extensions must be `Sync`).
pub(crate) struct Opening {
    pub route: ErasedRoute,
    /// HTTP/1.1: chunked; HTTP/1.0: delimited by the close.
    pub chunked: bool,
    pub request: Mutex<Option<Parts>>,
}

/// Whether a native hand-over is this protocol's (else WebSocket's).
pub(crate) fn claims(to: &NativeUpgrade) -> bool {
    to.0.is::<Opening>()
}

/// The side-table variant (and wire) of a chunked stream.
const CHUNKED: usize = 0;
/// The side-table variant (and wire) of a close-delimited stream.
const DELIMITED: usize = 1;

/// The variant of a stream with this framing.
fn variant(chunked: bool) -> usize {
    if chunked {
        CHUNKED
    } else {
        DELIMITED
    }
}

/// How event streams frame a message pushed by the [`Hub`](crate::Hub):
/// text as an event's data, a binary push as the whole event it must be,
/// in a chunk (HTTP/1.1) or as it is (HTTP/1.0).
struct SseWire {
    chunked: bool,
}

impl Wire for SseWire {
    fn encode(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        let text = std::str::from_utf8(payload).map_err(|_| FramingError::NotUtf8)?;
        event::frame(&event::data_event(text), self.chunked, out);
        Ok(())
    }

    fn encode_binary(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        if !event::is_one_event(payload) {
            return Err(FramingError::NotAnEvent);
        }
        event::frame(payload, self.chunked, out);
        Ok(())
    }
}

/// This worker's message state and the side table of parked event streams
/// (its state: the stream's route; its variant: the framing); `tls`: the
/// one of streams over TLS (tag `SSE_TLS`), whose pushes to a parked one
/// are sealed with its parked session.
pub(crate) fn side_table(
    ctx: &WorkerContext,
    tls: bool,
) -> (Rc<Local>, Rc<SideTable<ErasedRoute>>) {
    let local = message::worker::local(ctx);
    let wires = || {
        [true, false]
            .map(|chunked| Rc::new(SseWire { chunked }) as Rc<dyn Wire>)
            .into()
    };
    let table = if tls {
        let sessions = ctx.tls_parked.clone();
        local.table_sending::<ErasedRoute>(
            (crate::proto::SSE_TLS, Some(MessageProtocol::Sse)),
            wires,
            || Some(crate::proto::sealed(sessions)),
        )
    } else {
        local.table::<ErasedRoute>((crate::proto::SSE, Some(MessageProtocol::Sse)), wires)
    };
    (local, table)
}

/// What a parked stream leaves for the dispatcher: the bare socket for the
/// lot and, over TLS, the session for the worker's table.
pub(crate) type SseParked = MessageParked;

/// Serves a stream the HTTP/1.1 engine handed over after the route's
/// `200` (its head written): `read_ahead` is what the client sent after
/// its request (and its body), which closes the stream.
pub(crate) fn serve_handed_over<T>(
    io: T,
    read_ahead: Bytes,
    to: NativeUpgrade,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<SseParked>>
where
    T: Parkable + Send + 'static,
{
    let Ok(opening) = to.0.downcast::<Opening>() else {
        tracing::error!("a native hand-over of an unknown protocol; closing the connection");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    let Ok(io) = parkable(io) else {
        tracing::warn!(
            "SseRoute cannot stream on a transport given to Builder::serve_connection; \
             closing the connection after its head"
        );
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    let request = opening.request.lock().ok().and_then(|mut r| r.take());
    let request = request.map(Box::new);
    let start = conn::Start::Opened {
        route: opening.route.clone(),
        chunked: opening.chunked,
        request,
        read_ahead,
    };
    Box::pin(conn::serve(io, ctx, start))
}

/// Serves a stream woken from the parking lot, on its plain socket.
pub(crate) fn serve_woken(
    socket: OwnedFd,
    hot: bool,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<SseParked>> {
    let io = MessageIo::Plain(WokenSocket::new(socket, hot, wake));
    Box::pin(conn::serve(io, ctx, conn::Start::Woken(wake)))
}

/// Serves a stream over TLS woken from the parking lot, its session
/// resumed (the dispatcher took it from the worker's table).
pub(crate) fn serve_woken_tls(
    io: TlsIo<WokenSocket>,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<SseParked>> {
    Box::pin(conn::serve(
        MessageIo::Tls(io),
        ctx,
        conn::Start::Woken(wake),
    ))
}

/// The parking lot closed parked stream `fd` itself (shutdown): at
/// shutdown it gets its route's goodbye event, if any, and the last chunk
/// (one non-blocking `send` on the still open socket, sealed with its TLS
/// session if it has one; not after a push its socket took part of, whose
/// rest is owed first: over TLS that rest goes now if the socket takes it,
/// or the session says nothing more); its entry goes, it leaves its
/// topics, and its handler hears why (`proto::parked::let_go`).
fn closed_in(ctx: &WorkerContext, fd: RawFd, reason: CloseReason, socket: ParkedSocket<'_>) {
    let (local, table) = side_table(ctx, socket.is_tls());
    let Some(parked) = table.take(fd) else {
        return;
    };
    let last_words = |parked: &Parked<ErasedRoute>| {
        let mut last = BytesMut::new();
        if let Some(goodbye) = &parked.state.settings.goodbye {
            event::frame(goodbye, parked.variant == CHUNKED, &mut last);
        }
        if parked.variant == CHUNKED {
            last.extend_from_slice(event::LAST_CHUNK);
        }
        Some(last)
    };
    let_go(
        (&local, parked),
        (fd, reason),
        socket,
        last_words,
        (&(), conn::on_close),
    );
}

/// [`closed_in`] for a cleartext stream.
pub(crate) fn parked_closed(ctx: &WorkerContext, fd: RawFd, reason: CloseReason) {
    closed_in(ctx, fd, reason, ParkedSocket::Plain);
}

/// [`closed_in`] for a stream over TLS, with its parked `session`: our own
/// closes (shutdown) end with `close_notify`, as HTTPS/1.1's do, after
/// whole records only (`proto::parked::close_parked_tls`).
pub(crate) fn parked_closed_tls(
    ctx: &WorkerContext,
    fd: RawFd,
    reason: CloseReason,
    session: Option<ParkedTls>,
) {
    close_parked_tls(fd, reason, session, |socket| {
        closed_in(ctx, fd, reason, socket)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parked stream keeps its route (a pointer and its vtable's) in its
    /// side-table slot: 16 bytes plus 16 of the slot's own.
    #[test]
    fn a_parked_streams_slot_is_small() {
        assert_eq!(SideTable::<ErasedRoute>::slot_bytes(), 32);
    }

    /// Pushes go out as events in chunks, or bare on HTTP/1.0; binary ones
    /// only when they are one whole event; text only when UTF-8.
    #[test]
    fn the_wire_frames_events() {
        let encode = |chunked, payload: &'static [u8], binary| {
            let mut out = BytesMut::new();
            let wire = SseWire { chunked };
            let payload = Bytes::from_static(payload);
            let done = if binary {
                wire.encode_binary(&payload, &mut out)
            } else {
                wire.encode(&payload, &mut out)
            };
            done.map(|()| out.freeze())
        };
        assert_eq!(
            encode(true, b"a\nb", false).unwrap(),
            &b"11\r\ndata: a\ndata: b\n\n\r\n"[..]
        );
        assert_eq!(encode(false, b"x", false).unwrap(), &b"data: x\n\n"[..]);
        assert_eq!(encode(true, b"\xff", false), Err(FramingError::NotUtf8));
        let event: &'static [u8] = b"event: e\ndata: 1\n\n";
        assert_eq!(
            encode(false, event, true).unwrap(),
            &b"event: e\ndata: 1\n\n"[..]
        );
        assert_eq!(
            encode(true, b"data: 1\n", true),
            Err(FramingError::NotAnEvent)
        );
    }
}
