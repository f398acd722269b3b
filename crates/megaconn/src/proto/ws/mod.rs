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
//! its handler's state, its route and its timers go to this worker's side
//! table ([`WsLocal`], keyed by socket), the lot keeps the socket and the
//! earlier timer (`AtDeadline::Wake`). The timer wakes it to send a ping
//! (one write on the bare socket, then straight back to the lot) or to close
//! it when the peer was silent past the heartbeat timeout; a message or a
//! pong wakes it through readiness.
//!
//! - `frame.rs`     frames: decoder (rules, limits, UTF-8), encoder
//! - `handshake.rs` the opening handshake's checks and answers
//! - `route.rs`     [`WebSocketRoute`]: the tower service users mount
//! - `handler.rs`   [`WebSocketHandler`], [`WsSession`]: the message API
//! - `conn.rs`      one awake connection's loop, the close handshake

pub(crate) mod conn;
pub(crate) mod frame;
pub(crate) mod handler;
pub(crate) mod handshake;
pub(crate) mod route;

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::conn::context::WorkerContext;
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::WokenSocket;
use crate::conn::Wake;
use crate::observe::close::CloseReason;
use crate::proto::Ended;
use crate::service::upgrade::NativeUpgrade;

pub use frame::WsMessage;
pub use handler::{WebSocketHandler, WsSession};
pub use route::{
    WebSocketRoute, DEFAULT_WS_CLOSE_TIMEOUT, DEFAULT_WS_HEARTBEAT_TIMEOUT,
    DEFAULT_WS_MAX_FRAME_BYTES, DEFAULT_WS_MAX_MESSAGE_BYTES, DEFAULT_WS_PING_INTERVAL,
};

use handler::{ErasedRoute, LocalFuture};

/// What a [`NativeUpgrade`] carries for this protocol: the route.
pub(crate) struct RouteRef(pub Arc<dyn ErasedRoute>);

/// A WebSocket's socket: a plain one (parkable: bare until it must wait,
/// see `conn/woken.rs`), or any other transport (TLS, a caller's own),
/// which never parks. (tokio-util's `Either` reads and writes either.)
pub(crate) type WsIo = Either<WokenSocket, Box<dyn Transport + Send>>;

impl Transport for WsIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Either::Left(s) => s.poll_read_ready(cx),
            Either::Right(s) => s.poll_read_ready(cx),
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
    /// state, `on_open`.
    Upgraded(Bytes),
    /// Woken from the parking lot, with what the side table kept for it.
    Woken(Wake, Parked),
}

/// A parked WebSocket's state and timers.
pub(crate) struct Parked {
    /// The handler's state (its type is the route's to know).
    pub state: Box<dyn Any>,
    /// The peer's heartbeat deadline.
    pub due: Option<Instant>,
    /// When the server sends its next ping.
    pub send_at: Option<Instant>,
}

/// One worker's parked WebSockets, by socket, and the routes they belong to.
#[derive(Default)]
pub(crate) struct WsLocal {
    parked: RefCell<HashMap<RawFd, (u16, Parked)>>,
    /// Routes seen on this worker; a parked entry names one by position
    /// (routes are few: a scan finds one).
    routes: RefCell<Vec<Arc<dyn ErasedRoute>>>,
}

impl WsLocal {
    /// This worker's table.
    pub(crate) fn of(ctx: &WorkerContext) -> Rc<WsLocal> {
        ctx.local(WsLocal::default)
    }

    /// Keeps `parked` for socket `fd` of `route` until it wakes.
    pub(crate) fn put(&self, fd: RawFd, route: &Arc<dyn ErasedRoute>, parked: Parked) {
        let mut routes = self.routes.borrow_mut();
        let index = match routes.iter().position(|r| Arc::ptr_eq(r, route)) {
            Some(i) => i,
            None => {
                routes.push(route.clone());
                routes.len() - 1
            }
        };
        let index = u16::try_from(index).expect("fewer than 65,536 WebSocket routes");
        let stale = self.parked.borrow_mut().insert(fd, (index, parked));
        debug_assert!(stale.is_none(), "a socket parked twice");
    }

    /// Takes back what socket `fd` left when it parked.
    pub(crate) fn take(&self, fd: RawFd) -> Option<(Arc<dyn ErasedRoute>, Parked)> {
        let (index, parked) = self.parked.borrow_mut().remove(&fd)?;
        let route = self.routes.borrow().get(usize::from(index))?.clone();
        Some((route, parked))
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
    let io: WsIo = if T::PARKABLE && ctx.park.is_some() {
        // A plain socket: served bare (registered with tokio again only
        // when it must wait), so that it can park.
        match io.into_parked() {
            Ok(socket) => Either::Left(WokenSocket::new(socket, true)),
            Err(e) => return Box::pin(std::future::ready(Ended::Close(CloseReason::io(&e)))),
        }
    } else {
        Either::Right(Box::new(io) as Box<dyn Transport + Send>)
    };
    route.0.clone().serve(io, ctx, Start::Upgraded(read_ahead))
}

/// Serves a WebSocket woken from the parking lot.
pub(crate) fn serve_woken(
    socket: OwnedFd,
    hot: bool,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<OwnedFd>> {
    let Some((route, parked)) = WsLocal::of(&ctx).take(socket.as_raw_fd()) else {
        tracing::error!("a woken WebSocket had no state; closing it");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    let io = Either::Left(WokenSocket::new(socket, hot));
    route.serve(io, ctx, Start::Woken(wake, parked))
}

/// The parking lot closed parked WebSocket `fd` itself (shutdown): its
/// state goes, and its handler hears why.
pub(crate) fn parked_closed(ctx: &WorkerContext, fd: RawFd, reason: CloseReason) {
    if let Some((route, parked)) = WsLocal::of(ctx).take(fd) {
        route.parked_closed(parked.state, reason);
    }
}
