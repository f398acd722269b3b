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
//! Between messages, with nothing gathered (over TLS, not even part of a
//! record: that is a message begun, under `message_timeout`), a connection
//! idle for `park_idle_after` parks with tag [`WEBSOCKET`](crate::proto::WEBSOCKET):
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
//! - `conn.rs`      one awake connection's loop
//! - `closing.rs`   the close handshake, the heartbeat timeout's last word

pub(crate) mod closing;
pub(crate) mod conn;
pub(crate) mod deflate;
pub(crate) mod frame;
pub(crate) mod handler;
pub(crate) mod handshake;
pub(crate) mod route;

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;

use crate::conn::context::WorkerContext;
use crate::conn::tls_io::{ParkedSessions, ParkedTls, TlsIo};
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::WokenSocket;
use crate::conn::Wake;
use crate::message;
use crate::message::io::{parkable, MessageIo, MessageParked};
use crate::message::table::{Parked, SideTable};
use crate::message::wire::Wire;
use crate::message::worker::Local;
use crate::message::worker::MessageProtocol;
use crate::observe::close::{CloseReason, FramingError};
use crate::proto::parked::{close_parked_tls, ParkedSocket};
use crate::proto::Ended;
use crate::service::upgrade::NativeUpgrade;

pub use frame::WsMessage;
pub use handler::{WebSocketHandler, WsClose, WsSession};
pub use route::{
    WebSocketRoute, DEFAULT_WS_CLOSE_TIMEOUT, DEFAULT_WS_HEARTBEAT_TIMEOUT,
    DEFAULT_WS_MAX_FRAME_BYTES, DEFAULT_WS_MAX_MESSAGE_BYTES, DEFAULT_WS_PING_INTERVAL,
    HEARTBEAT_TIMEOUT_PER_PING,
};

use deflate::{Codec, Deflate};
use handler::{ErasedRoute, LocalFuture};

/// The close code sent at shutdown (RFC 6455 §7.4.1: going away).
pub(crate) const GOING_AWAY: u16 = 1001;

/// The close code sent when the server cannot go on (RFC 6455 §7.4.1:
/// "an unexpected condition that prevented it from fulfilling the
/// request"): a handler that panicked, and a peer silent past its heartbeat
/// timeout, as python-websockets closes on a keepalive ping timeout (not
/// 1001, going away, which is our shutdown's: a client can tell "the
/// server restarts" from "we did not hear you").
pub(crate) const INTERNAL_ERROR: u16 = 1011;

/// The close code sent when a message took longer than `message_timeout`
/// (RFC 6455 §7.4.1: policy violation, "a message that violates its
/// policy"; not 1002, as the frames themselves broke no rule).
pub(crate) const POLICY_VIOLATION: u16 = 1008;

/// The close code sent for a frame or message over the route's size limits
/// (RFC 6455 §7.4.1: 1009, "a message that is too big for it to process").
/// Not a broken rule of the framing: the frames around it still parse, so
/// after it the server looks for the peer's close frame (`conn.rs`).
pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;

/// The close code sent to a slow consumer, whose push queue overflowed
/// (RFC 6455 §7.4.1 via the IANA registry: 1013, try again later, "a
/// temporary condition"). Not 1008 (policy violation): that says the peer
/// broke a rule (we send it for a message over its time), which clients
/// take as final; a slow consumer sent nothing wrong, it fell behind (a
/// congested link, a busy tab), and reconnecting after a while is the
/// right answer, which 1013 asks for.
pub(crate) const TRY_AGAIN_LATER: u16 = 1013;

/// What a [`NativeUpgrade`] carries for this protocol: the route, whether
/// the handshake agreed to permessage-deflate, and the state the route's
/// upgrade hook gave (taken once, when the connection opens; behind a
/// mutex only because the `101`'s extensions must be `Sync`).
pub(crate) struct RouteRef {
    pub route: Arc<dyn ErasedRoute>,
    pub deflate: Option<Deflate>,
    pub state: std::sync::Mutex<Option<route::UpgradeState>>,
}

/// A WebSocket's socket: a parkable one (a message connection's,
/// [`MessageIo`]: plain, bare until it must wait, or TLS over one, its
/// session parked beside the socket), or any other transport (a caller's
/// own), which never parks. (tokio-util's `Either` reads and writes
/// either.)
pub(crate) type WsIo = Either<MessageIo, Box<dyn AnyTransport>>;

/// A woken WebSocket's socket as the dispatcher hands it over: plain, or
/// TLS with its session resumed.
pub(crate) type WsSocket = Either<WokenSocket, TlsIo<WokenSocket>>;

/// What a parked WebSocket leaves for the dispatcher: the bare socket for
/// the lot and, over TLS, the session for the worker's table.
pub(crate) type WsParked = MessageParked;

/// A [`Transport`] behind a pointer (`Transport` has an associated const,
/// so it cannot be a trait object itself).
pub(crate) trait AnyTransport: AsyncRead + AsyncWrite + Unpin + Send {
    /// [`Transport::poll_read_ready`].
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// [`Transport::holds_partial_input`].
    fn holds_partial(&self) -> bool;
}

impl<T: Transport + Send> AnyTransport for T {
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn holds_partial(&self) -> bool {
        self.holds_partial_input()
    }
}

impl Transport for WsIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Either::Left(s) => s.poll_read_ready(cx),
            Either::Right(s) => s.poll_ready(cx),
        }
    }

    /// Part of a TLS record, ours or (if it says so) a caller's.
    fn holds_partial_input(&self) -> bool {
        match self {
            Either::Left(s) => s.holds_partial_record(),
            Either::Right(s) => s.holds_partial(),
        }
    }
}

impl Parkable for WsIo {
    const PARKABLE: bool = true;

    fn repark_when_idle(&self) -> bool {
        matches!(self, Either::Left(s) if s.repark_when_idle())
    }

    fn reparks_a_wake(&self) -> bool {
        matches!(self, Either::Left(s) if s.reparks_a_wake())
    }

    fn still_watched(&self) -> bool {
        matches!(self, Either::Left(s) if s.still_watched())
    }

    /// Ours over TLS; a caller's own transport says none.
    fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match self {
            Either::Left(s) => s.peer_certificates(),
            Either::Right(_) => None,
        }
    }

    /// Ours over TLS share their one copy (a session made at each wake-up
    /// copies nothing).
    fn shared_peer_certificates(&self) -> Option<crate::conn::client_auth::PeerCertificates> {
        match self {
            Either::Left(s) => s.shared_peer_certificates(),
            Either::Right(_) => None,
        }
    }

    fn into_parked_parts(self) -> io::Result<WsParked> {
        match self {
            Either::Left(s) => s.into_parked_parts(),
            Either::Right(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this transport cannot be parked",
            )),
        }
    }
}

/// The descriptor a WebSocket parks under (-1 for a transport that never
/// parks: its id only has to be unique while it lives).
pub(crate) fn parked_fd(io: &WsIo) -> RawFd {
    match io {
        Either::Left(s) => s.raw_fd(),
        Either::Right(_) => -1,
    }
}

/// How a WebSocket comes to be served.
pub(crate) enum Start {
    /// Just upgraded: bytes the client sent after its handshake, a fresh
    /// state, `on_open`; permessage-deflate if the handshake agreed to it;
    /// the state the route's upgrade hook gave (else `State::default()`).
    Upgraded(Bytes, Option<Deflate>, Option<route::UpgradeState>),
    /// Woken from the parking lot: its state waits in its route's side
    /// table (taken by the typed code, which knows the state's type), with
    /// the permessage-deflate terms it parked with.
    Woken(Wake, Option<Deflate>),
}

/// The kinds of WebSockets parked on this worker now: a route and the
/// permessage-deflate terms its connection agreed to, by position (they are
/// few: a scan finds one). A parked WebSocket keeps its kind's position as
/// its side-table entry's variant, so its entry holds nothing else than a
/// framed connection's: 16 bytes with a state of size 0 (an echo's), the
/// state inline otherwise. (It kept a boxed `dyn Any` state, the route and
/// the terms beside it: 40 bytes.)
///
/// Each kind counts its parked connections: claimed when one parks
/// ([`Tables::claim`]), released when its entry leaves the side table, woken
/// or closed by the lot ([`Tables::take`]). A kind with none parked gives up
/// its position (and its route) for the next new kind, so a service that
/// builds a route per request keeps as many kinds as it has routes with
/// connections parked, not one per connection it ever parked.
#[derive(Default)]
pub(crate) struct Kinds(RefCell<Vec<Option<Claimed>>>);

/// A kind of parked WebSocket: its route and permessage-deflate terms.
type Kind = (Arc<dyn ErasedRoute>, Option<Deflate>);

/// A kind in use, and how many parked WebSockets are of it (at least one).
struct Claimed {
    kind: Kind,
    parked: usize,
}

/// How many kinds a worker can have parked at once: a side-table entry
/// names its kind in 16 bits.
const MAX_KINDS: usize = 1 << 16;

impl Kinds {
    /// The position of `route` with `deflate` for one more parked
    /// WebSocket: its kind's, or a free one (or a new one) for a new kind;
    /// `None` when [`MAX_KINDS`] kinds have connections parked.
    fn claim(&self, route: &Arc<dyn ErasedRoute>, deflate: Option<Deflate>) -> Option<usize> {
        let mut kinds = self.0.borrow_mut();
        let same = |c: &Option<Claimed>| {
            c.as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.kind.0, route) && c.kind.1 == deflate)
        };
        if let Some(at) = kinds.iter().position(same) {
            if let Some(claimed) = &mut kinds[at] {
                claimed.parked += 1;
            }
            return Some(at);
        }
        let at = match kinds.iter().position(Option::is_none) {
            Some(free) => free,
            None if kinds.len() < MAX_KINDS => {
                kinds.push(None);
                kinds.len() - 1
            }
            None => return None,
        };
        kinds[at] = Some(Claimed {
            kind: (route.clone(), deflate),
            parked: 1,
        });
        Some(at)
    }

    /// One WebSocket parked as `variant` left the side table: the last one
    /// of its kind frees the position (trailing free ones go, so the scans
    /// stay short).
    fn release(&self, variant: usize) {
        let mut kinds = self.0.borrow_mut();
        let Some(Some(claimed)) = kinds.get_mut(variant) else {
            debug_assert!(false, "a kind released more often than claimed");
            return;
        };
        claimed.parked -= 1;
        if claimed.parked == 0 {
            kinds[variant] = None;
            while let Some(None) = kinds.last() {
                kinds.pop();
            }
        }
    }

    /// The kind of parked WebSocket `fd`: each route looks in its own side
    /// table (routes whose handlers share a state type share one, and the
    /// entry's variant says which of them parked it).
    fn of_parked(&self, tables: &Tables, fd: RawFd) -> Option<Kind> {
        // (Looking touches the side tables, never the kinds.)
        let kinds = self.0.borrow();
        let variant = kinds
            .iter()
            .flatten()
            .find_map(|c| c.kind.0.parked_variant(tables, fd))?;
        kinds.get(variant)?.as_ref().map(|c| c.kind.clone())
    }

    /// How many positions the kinds take (used and free).
    #[cfg(test)]
    fn positions(&self) -> usize {
        self.0.borrow().len()
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

    fn encode_binary(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        frame::encode(out, frame::Out::Binary, payload);
        Ok(())
    }
}

/// This worker's message state, kinds of parked WebSockets and
/// permessage-deflate codec; the side tables (one per handler state type,
/// cleartext and TLS apart) come from [`Tables::table`].
pub(crate) struct Tables {
    pub local: Rc<Local>,
    kinds: Rc<Kinds>,
    pub codec: Rc<Codec>,
    /// For WebSockets over TLS: the worker's parked sessions, which encrypt
    /// what the hub pushes to a parked one.
    tls: Option<ParkedSessions>,
}

impl Tables {
    /// The tables of cleartext WebSockets.
    pub(crate) fn of(ctx: &WorkerContext) -> Tables {
        Tables {
            local: message::worker::local(ctx),
            kinds: ctx.local(Kinds::default),
            codec: ctx.local(Codec::default),
            tls: None,
        }
    }

    /// The tables of WebSockets over TLS.
    pub(crate) fn of_tls(ctx: &WorkerContext) -> Tables {
        Tables {
            tls: Some(ctx.tls_parked.clone()),
            ..Tables::of(ctx)
        }
    }

    /// The tables of WebSockets on `io`.
    pub(crate) fn of_io(ctx: &WorkerContext, io: &WsIo) -> Tables {
        match io {
            Either::Left(s) if s.is_tls() => Tables::of_tls(ctx),
            _ => Tables::of(ctx),
        }
    }

    /// The side table of parked WebSockets whose handler's state is `S`
    /// (over TLS: its own, tagged `WEBSOCKET_TLS`, whose pushes are
    /// encrypted with each connection's parked session).
    pub(crate) fn table<S: 'static>(&self) -> Rc<SideTable<S>> {
        let wires = || vec![Rc::new(PushWire) as Rc<dyn Wire>];
        match &self.tls {
            None => self.local.table::<S>(
                (crate::proto::WEBSOCKET, Some(MessageProtocol::WebSocket)),
                wires,
            ),
            Some(sessions) => self.local.table_sending::<S>(
                (
                    crate::proto::WEBSOCKET_TLS,
                    Some(MessageProtocol::WebSocket),
                ),
                wires,
                || Some(crate::proto::sealed(sessions.clone())),
            ),
        }
    }

    /// The variant a WebSocket of `route` with `deflate` parks as, its kind
    /// claimed for it until [`Tables::take`] takes its entry; `None` when
    /// the worker has [`MAX_KINDS`] kinds parked (it cannot park).
    pub(crate) fn claim(
        &self,
        route: &Arc<dyn ErasedRoute>,
        deflate: Option<Deflate>,
    ) -> Option<usize> {
        self.kinds.claim(route, deflate)
    }

    /// Takes parked WebSocket `fd`'s entry from the side table of state
    /// type `S` (it woke, or the lot closed it), releasing its kind.
    pub(crate) fn take<S: 'static>(&self, fd: RawFd) -> Option<Parked<S>> {
        let parked = self.table::<S>().take(fd)?;
        self.kinds.release(parked.variant);
        Some(parked)
    }
}

/// Writes `bytes` raw on a woken WebSocket's socket, under its TLS stream
/// if it has one: what a push left unsent while it was parked (the rest of
/// a frame, or records its session sealed), before anything else is
/// written (`message::wake::write_unsent`). A transport that never parks
/// has none.
pub(crate) fn poll_write_unsent(
    io: &mut WsIo,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    match io {
        Either::Left(s) => s.poll_write_raw(cx, bytes),
        Either::Right(_) => Poll::Ready(Err(io::ErrorKind::Unsupported.into())),
    }
}

/// The heartbeat timeout of the route a native upgrade goes to (`None`:
/// off, or not a WebSocket route's), for the dispatcher, which bounds the
/// unacknowledged bytes of a WebSocket without one.
pub(crate) fn heartbeat_timeout(to: &NativeUpgrade) -> Option<std::time::Duration> {
    to.0.downcast_ref::<RouteRef>()
        .and_then(|route| route.route.heartbeat_timeout())
}

/// Serves a connection the HTTP/1.1 engine handed over after a native `101`.
pub(crate) fn serve_upgraded<T>(
    io: T,
    read_ahead: Bytes,
    to: NativeUpgrade,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<WsParked>>
where
    T: Parkable + Send + 'static,
{
    let Ok(route) = to.0.downcast::<RouteRef>() else {
        tracing::error!("a native upgrade of an unknown protocol; closing the connection");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    // A plain socket or TLS over one can park; any other transport (a
    // caller's own) is served as it is and never parks.
    let io: WsIo = match parkable(io) {
        Ok(socket) => Either::Left(socket),
        Err(io) => Either::Right(io as Box<dyn AnyTransport>),
    };
    let state = route.state.lock().ok().and_then(|mut state| state.take());
    let start = Start::Upgraded(read_ahead, route.deflate, state);
    route.route.clone().serve(io, ctx, start)
}

/// Serves a WebSocket woken from the parking lot, on its socket (over TLS:
/// with its session resumed).
pub(crate) fn serve_woken(
    io: WsSocket,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<WsParked>> {
    let io: WsIo = Either::Left(match io {
        Either::Left(plain) => MessageIo::Plain(plain),
        Either::Right(tls) => MessageIo::Tls(tls),
    });
    let tables = Tables::of_io(&ctx, &io);
    let Some((route, deflate)) = tables.kinds.of_parked(&tables, parked_fd(&io)) else {
        tracing::error!("a woken WebSocket had no state; closing it");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    route.serve(io, ctx, Start::Woken(wake, deflate))
}

/// The parking lot closed parked WebSocket `fd` itself (shutdown): at
/// shutdown it gets its route's goodbye first (a close frame 1001, going
/// away, unless `WebSocketRoute::goodbye` set another), as an awake one
/// does (best effort: one non-blocking `send` on the still open socket; the
/// peer's answer is not awaited, the lot closes the socket next); its state
/// goes, it leaves its topics, and its handler hears why
/// (`proto::parked::let_go`).
pub(crate) fn parked_closed(ctx: &WorkerContext, fd: RawFd, reason: CloseReason) {
    closed_in(&Tables::of(ctx), fd, reason, ParkedSocket::Plain);
}

/// [`parked_closed`] for a WebSocket over TLS, with its parked `session`:
/// a push it was behind on goes first if its socket takes it now, the 1001
/// is encrypted, and our own closes (shutdown, idle timeout) end with
/// `close_notify`, as HTTPS/1.1's do: after whole records only (nothing
/// follows records that did not go whole: `ClosingTls`).
pub(crate) fn parked_closed_tls(
    ctx: &WorkerContext,
    fd: RawFd,
    reason: CloseReason,
    session: Option<ParkedTls>,
) {
    close_parked_tls(fd, reason, session, |socket| {
        closed_in(&Tables::of_tls(ctx), fd, reason, socket)
    });
}

/// Lets parked WebSocket `fd` of `tables` go (see [`parked_closed`]).
fn closed_in(tables: &Tables, fd: RawFd, reason: CloseReason, socket: ParkedSocket<'_>) {
    if let Some((route, _)) = tables.kinds.of_parked(tables, fd) {
        route.parked_closed(tables, fd, reason, socket);
    }
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

    struct Echo;

    impl WebSocketHandler for Echo {
        type State = ();

        async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
            Some(m)
        }
    }

    /// A regression guard for what every awake native WebSocket carries in
    /// its task (an echo's; a handler's own `on_message` future comes on
    /// top, inline): the loop's state across its awaits, the pending
    /// write's and read's futures, the close's (boxed: its handshake and
    /// TCP close). Measured when written (session 48, debug build):
    /// 3,600 bytes with the peer's close frame kept across the loop for
    /// `on_close_with` (session 47: ~40 bytes more than before it), 3,560
    /// once that frame travels only in the close (`Next::PeerClosed`) and
    /// a dropped connection's close is counted (`CloseCount`). If it
    /// fails, something large went inline across an await: box it, or
    /// keep it in the close path only.
    #[test]
    fn the_awake_websocket_future_stays_small() {
        fn size_of_future<F, A, B, C, D, Fut>(_: F) -> usize
        where
            F: Fn(A, B, C, D) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let size = size_of_future(conn::serve::<Echo>);
        eprintln!("awake WebSocket future: {size} bytes");
        assert!(size <= 3560, "the awake WebSocket future is {size} bytes");
    }

    fn a_route() -> Arc<dyn ErasedRoute> {
        WebSocketRoute::new(Echo).erased()
    }

    /// A kind is kept while WebSockets of it are parked, then its position
    /// (and its route) goes, for the next new kind.
    #[test]
    fn a_kind_is_kept_while_websockets_of_it_are_parked() {
        let kinds = Kinds::default();
        let (a, b, c) = (a_route(), a_route(), a_route());
        let deflate = Some(Deflate { window_bits: 15 });
        assert_eq!(kinds.claim(&a, None), Some(0));
        assert_eq!(kinds.claim(&a, None), Some(0));
        assert_eq!(kinds.claim(&b, None), Some(1));
        assert_eq!(kinds.claim(&a, deflate), Some(2));
        assert_eq!(Arc::strong_count(&a), 3);
        // One of two of `a` left: the kind stays.
        kinds.release(0);
        assert_eq!(kinds.claim(&a, None), Some(0));
        kinds.release(0);
        kinds.release(0);
        assert_eq!(Arc::strong_count(&a), 2, "the plain kind of `a` went");
        // A new kind takes the free position.
        assert_eq!(kinds.claim(&c, None), Some(0));
        // The last position freed goes.
        kinds.release(2);
        assert_eq!(kinds.positions(), 2);
        kinds.release(1);
        kinds.release(0);
        assert_eq!(kinds.positions(), 0);
        assert_eq!(Arc::strong_count(&a), 1);
    }

    /// Routes built per request, each parking one WebSocket in turn, keep
    /// one position, not one each.
    #[test]
    fn routes_built_per_request_reuse_a_position() {
        let kinds = Kinds::default();
        let long_lived = a_route();
        assert_eq!(kinds.claim(&long_lived, None), Some(0));
        for _ in 0..300 {
            let route = a_route();
            assert_eq!(kinds.claim(&route, None), Some(1));
            kinds.release(1);
            assert_eq!(Arc::strong_count(&route), 1);
        }
        assert_eq!(kinds.positions(), 1);
    }
}
