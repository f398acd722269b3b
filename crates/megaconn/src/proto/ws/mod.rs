//! WebSocket (RFC 6455), server side, native and parkable: upgraded from
//! HTTP/1.1, served per message by a user's [`WebSocketHandler`] on the
//! connection core, idle connections parked like HTTP ones.
//!
//! # How a connection gets here
//!
//! The user mounts a [`WebSocketRoute`] (a tower service) on a route of their
//! app, so WebSocket composes with routing and middleware. On a valid
//! handshake it answers `101` and marks the response with a
//! [`NativeUpgrade`](crate::service::upgrade::NativeUpgrade) naming the route;
//! the HTTP/1.1 engine writes the `101` and ends with
//! `Ended::HandOver(HandOver::Native)`, and the dispatcher calls
//! [`serve_upgraded`]. No task is spawned and no future is kept for the
//! connection beyond this protocol's own. (The alternative, a handler task
//! on `OnUpgrade` as axum's extractor does, keeps a task per connection,
//! which cannot leave the runtime to park.)
//!
//! # Parking
//!
//! Between messages, with nothing gathered, a connection idle for
//! `park_idle_after` parks with tag [`WEBSOCKET`](crate::proto::WEBSOCKET):
//! its handler's state (inline), its kind (route and permessage-deflate
//! terms, as the entry's variant: [`Kinds`]) and its timers go to the
//! message layer's side table for its handler's state type ([`Tables`],
//! keyed by socket), the lot keeps the socket and the earlier timer
//! (`AtDeadline::Wake`). The timer wakes
//! it to send a ping (one write on the bare socket, then straight back to
//! the lot) or to close it when the peer was silent past the heartbeat
//! timeout; a message or a pong wakes it through readiness.
//!
//! # Messages from elsewhere
//!
//! WebSockets are message connections of the message layer (`message/`):
//! each has a [`ConnectionId`](crate::ConnectionId), may subscribe to
//! topics, and the [`Hub`](crate::Hub) reaches it by id, topic or broadcast
//! (awake: through its bounded outbound queue; parked: one `send` of a frame
//! encoded once for all WebSockets, see [`PushWire`]).
//!
//! - `frame.rs`     frames: decoder (rules, limits, UTF-8), encoder
//! - `deflate.rs`   permessage-deflate (an option), no context takeover
//! - `handshake.rs` the opening handshake's checks and answers
//! - `route.rs`     [`WebSocketRoute`]: the tower service users mount
//! - `handler.rs`   [`WebSocketHandler`], [`WsSession`]: the message API
//! - `conn.rs`      one awake connection's loop, the close handshake

pub(crate) mod conn;
pub(crate) mod deflate;
pub(crate) mod frame;
pub(crate) mod handler;
pub(crate) mod handshake;
pub(crate) mod route;

use std::any::Any;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;

use crate::conn::context::WorkerContext;
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::WokenSocket;
use crate::conn::Wake;
use crate::message;
use crate::message::table::SideTable;
use crate::message::wire::Wire;
use crate::message::worker::Local;
use crate::observe::close::{CloseReason, FramingError};
use crate::proto::Ended;
use crate::service::upgrade::NativeUpgrade;

pub use frame::WsMessage;
pub use handler::{WebSocketHandler, WsSession};
pub use route::{
    WebSocketRoute, DEFAULT_WS_CLOSE_TIMEOUT, DEFAULT_WS_HEARTBEAT_TIMEOUT,
    DEFAULT_WS_MAX_FRAME_BYTES, DEFAULT_WS_MAX_MESSAGE_BYTES, DEFAULT_WS_PING_INTERVAL,
};

use deflate::{Codec, Deflate};
use handler::{ErasedRoute, LocalFuture};

/// The close code sent at shutdown (RFC 6455 §7.4.1: going away).
pub(crate) const GOING_AWAY: u16 = 1001;

/// What a [`NativeUpgrade`] carries for this protocol: the route, and
/// whether the handshake agreed to permessage-deflate.
pub(crate) struct RouteRef {
    pub route: Arc<dyn ErasedRoute>,
    pub deflate: Option<Deflate>,
}

/// A WebSocket's socket: a plain one (parkable: bare until it must wait,
/// see `conn/woken.rs`), or any other transport (TLS, a caller's own),
/// which never parks. (tokio-util's `Either` reads and writes either.)
pub(crate) type WsIo = Either<WokenSocket, Box<dyn AnyTransport>>;

/// A [`Transport`] behind a pointer (`Transport` has an associated const,
/// so it cannot be a trait object itself).
pub(crate) trait AnyTransport: AsyncRead + AsyncWrite + Unpin + Send {
    /// [`Transport::poll_read_ready`].
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<T: Transport + Send> AnyTransport for T {
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Transport for WsIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Either::Left(s) => s.poll_read_ready(cx),
            Either::Right(s) => s.poll_ready(cx),
        }
    }
}

impl Parkable for WsIo {
    const PARKABLE: bool = true;

    fn repark_when_idle(&self) -> bool {
        matches!(self, Either::Left(s) if s.repark_when_idle())
    }

    fn into_parked(self) -> io::Result<OwnedFd> {
        match self {
            Either::Left(s) => s.into_parked(),
            Either::Right(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this transport cannot be parked",
            )),
        }
    }
}

/// How a WebSocket comes to be served.
pub(crate) enum Start {
    /// Just upgraded: bytes the client sent after its handshake, a fresh
    /// state, `on_open`; permessage-deflate if the handshake agreed to it.
    Upgraded(Bytes, Option<Deflate>),
    /// Woken from the parking lot: its state waits in its route's side
    /// table (taken by the typed code, which knows the state's type), with
    /// the permessage-deflate terms it parked with.
    Woken(Wake, Option<Deflate>),
}

/// The kinds of parked WebSockets this worker has seen: a route and the
/// permessage-deflate terms its connection agreed to, by position (they are
/// few: a scan finds one). A parked WebSocket keeps its kind's position as
/// its side-table entry's variant, so its entry holds nothing else than a
/// framed connection's: 16 bytes with a state of size 0 (an echo's), the
/// state inline otherwise. (It kept a boxed `dyn Any` state, the route and
/// the terms beside it: 40 bytes.)
#[derive(Default)]
pub(crate) struct Kinds(RefCell<Vec<Kind>>);

/// A kind of parked WebSocket: its route and permessage-deflate terms.
type Kind = (Arc<dyn ErasedRoute>, Option<Deflate>);

impl Kinds {
    /// The position of `route` with `deflate`, added on first use.
    fn index(&self, route: &Arc<dyn ErasedRoute>, deflate: Option<Deflate>) -> usize {
        let mut kinds = self.0.borrow_mut();
        let found = kinds
            .iter()
            .position(|(r, d)| Arc::ptr_eq(r, route) && *d == deflate);
        found.unwrap_or_else(|| {
            kinds.push((route.clone(), deflate));
            kinds.len() - 1
        })
    }

    /// The kind of parked WebSocket `fd`: each route looks in its own side
    /// table (routes whose handlers share a state type share one, and the
    /// entry's variant says which of them parked it).
    fn of_parked(
        &self,
        tables: &Tables,
        fd: RawFd,
    ) -> Option<(Arc<dyn ErasedRoute>, Option<Deflate>)> {
        // (Looking touches the side tables, never the kinds.)
        let kinds = self.0.borrow();
        let variant = kinds
            .iter()
            .find_map(|(route, _)| route.parked_variant(tables, fd))?;
        kinds.get(variant).cloned()
    }
}

/// How WebSockets frame a message pushed by the [`Hub`](crate::Hub): one
/// final frame, text when the payload is UTF-8, else binary (the hub
/// carries bytes; this way a chat's strings arrive as text).
struct PushWire;

impl Wire for PushWire {
    fn encode(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        let opcode = if std::str::from_utf8(payload).is_ok() {
            frame::Out::Text
        } else {
            frame::Out::Binary
        };
        frame::encode(out, opcode, payload);
        Ok(())
    }
}

/// This worker's message state, kinds of parked WebSockets and
/// permessage-deflate codec; the side tables (one per handler state type)
/// come from [`Tables::table`].
pub(crate) struct Tables {
    pub local: Rc<Local>,
    kinds: Rc<Kinds>,
    pub codec: Rc<Codec>,
}

impl Tables {
    pub(crate) fn of(ctx: &WorkerContext) -> Tables {
        Tables {
            local: message::worker::local(ctx),
            kinds: ctx.local(Kinds::default),
            codec: ctx.local(Codec::default),
        }
    }

    /// The side table of parked WebSockets whose handler's state is `S`.
    pub(crate) fn table<S: 'static>(&self) -> Rc<SideTable<S>> {
        self.local.table::<S>(crate::proto::WEBSOCKET, || {
            vec![Rc::new(PushWire) as Rc<dyn Wire>]
        })
    }

    /// The variant a WebSocket of `route` with `deflate` parks as.
    pub(crate) fn variant(&self, route: &Arc<dyn ErasedRoute>, deflate: Option<Deflate>) -> usize {
        self.kinds.index(route, deflate)
    }
}

/// Serves a connection the HTTP/1.1 engine handed over after a native `101`.
pub(crate) fn serve_upgraded<T>(
    io: T,
    read_ahead: Bytes,
    to: NativeUpgrade,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<OwnedFd>>
where
    T: Parkable + Send + 'static,
{
    let Ok(route) = to.0.downcast::<RouteRef>() else {
        tracing::error!("a native upgrade of an unknown protocol; closing the connection");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    // A plain socket can park; any other transport (TLS, a caller's own)
    // is served as it is and never parks.
    let io: WsIo = match plain_socket(io) {
        Ok(socket) => Either::Left(socket),
        Err(io) => Either::Right(io),
    };
    let start = Start::Upgraded(read_ahead, route.deflate);
    route.route.clone().serve(io, ctx, start)
}

/// A plain TCP transport as a [`WokenSocket`] (an accepted stream stays
/// registered with tokio, so it waits for real readiness, holding no
/// buffer); any other transport boxed as it is.
fn plain_socket<T: Transport + Send + 'static>(
    io: T,
) -> Result<WokenSocket, Box<dyn AnyTransport>> {
    let any: Box<dyn Any> = Box::new(io);
    let any = match any.downcast::<tokio::net::TcpStream>() {
        Ok(stream) => return Ok(WokenSocket::registered_stream(*stream)),
        Err(any) => any,
    };
    match any.downcast::<WokenSocket>() {
        Ok(socket) => Ok(*socket),
        Err(any) => Err(any
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("it is a T"))
            as Box<dyn AnyTransport>),
    }
}

/// Serves a WebSocket woken from the parking lot.
pub(crate) fn serve_woken(
    socket: OwnedFd,
    hot: bool,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<OwnedFd>> {
    let tables = Tables::of(&ctx);
    let Some((route, deflate)) = tables.kinds.of_parked(&tables, socket.as_raw_fd()) else {
        tracing::error!("a woken WebSocket had no state; closing it");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    let io = Either::Left(WokenSocket::new(socket, hot));
    route.serve(io, ctx, Start::Woken(wake, deflate))
}

/// The parking lot closed parked WebSocket `fd` itself (shutdown): at
/// shutdown it gets a close frame 1001 (going away) first, as an awake one
/// does (best effort: one non-blocking `send` on the still open socket; the
/// peer's answer is not awaited, the lot closes the socket next); its state
/// goes, it leaves its topics, and its handler hears why.
pub(crate) fn parked_closed(ctx: &WorkerContext, fd: RawFd, reason: CloseReason) {
    let tables = Tables::of(ctx);
    if let Some((route, _)) = tables.kinds.of_parked(&tables, fd) {
        route.parked_closed(&tables, fd, reason);
    }
}

/// Sends a close frame 1001 (going away) to parked WebSocket `fd` (best
/// effort: one non-blocking `send`).
pub(crate) fn going_away_parked(fd: RawFd) {
    let mut out = BytesMut::new();
    frame::encode_close(&mut out, GOING_AWAY, "");
    message::hub::send_all_now(fd, &out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a slot of the table `table` returns.
    fn slot_bytes<S>(_table: fn(&Tables) -> Rc<SideTable<S>>) -> usize {
        SideTable::<S>::slot_bytes()
    }

    /// A regression guard for what a parked WebSocket keeps beyond the
    /// lot's few bytes: its side-table slot, the handler's state inline.
    /// With an echo's state (`()`) it is a framed connection's 16 bytes (it
    /// was 40: a boxed `dyn Any` state, the route and the deflate terms
    /// beside the timers); with a `u64`, 24.
    #[test]
    fn a_parked_websockets_slot_is_a_framed_ones() {
        assert_eq!(slot_bytes(Tables::table::<()>), 16);
        assert_eq!(slot_bytes(Tables::table::<u64>), 24);
    }
}
