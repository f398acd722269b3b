//! The native WebSocket message API: [`WebSocketHandler`] (what a user
//! writes, called once per message) and [`WsSession`] (where its replies
//! go), plus the erased route the dispatcher serves ([`ErasedRoute`]).
//!
//! Per message, not per connection, for the same reason as the framed
//! protocol's API: between messages a connection is a bare socket in the
//! parking lot and its [`State`](WebSocketHandler::State) in this worker's
//! side table, with no task, future or buffer kept for it.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use crate::conn::context::WorkerContext;
use crate::message::hub::ConnectionId;
use crate::message::live::OnClose;
use crate::message::session::Session;
use crate::message::table::Parked;
use crate::observe::close::CloseReason;
use crate::observe::ratelog::{self, Flood};
use crate::observe::rooms::closer_without_peer_frame;
use crate::proto::parked::{let_go, ParkedSocket};
use crate::proto::ws::frame::{self, WsMessage};
use crate::proto::ws::{conn, Start, Tables, WsIo, WsParked};
use crate::proto::Ended;

/// A WebSocket endpoint's behaviour, called once per message. Mount it on a
/// route with [`WebSocketRoute`](crate::WebSocketRoute).
///
/// One handler serves every connection of its route (shared across
/// workers, hence `Send + Sync`); what is per connection goes in
/// [`State`](WebSocketHandler::State), which the server keeps while the
/// connection is idle, even parked outside the runtime. Keep it small: a
/// parked connection's state is kept once, inline in a slot of its worker's
/// side table (16 B plus `size_of::<State>()`), with 4 B of descriptor index
/// in each worker of the server (and 4 B once in the process if the server
/// has a [`Hub`](crate::Hub): `message/open.rs`), so at a million
/// connections each byte of
/// it is a megabyte, whatever the worker count (what it owns on the heap
/// comes on top). Before 2026-12-05 the slot was per descriptor in every
/// worker: W workers kept W slots per connection.
///
/// ```
/// use megaconn::{CloseReason, WebSocketHandler, WsMessage, WsSession};
///
/// /// Echoes every message and counts them per connection.
/// struct Echo;
///
/// impl WebSocketHandler for Echo {
///     type State = u64;
///
///     async fn on_message(&self, seen: &mut u64, message: WsMessage, _: &WsSession) -> Option<WsMessage> {
///         *seen += 1;
///         Some(message)
///     }
///
///     fn on_close(&self, seen: u64, reason: CloseReason) {
///         println!("closed after {seen} messages: {reason}");
///     }
/// }
/// ```
pub trait WebSocketHandler: Send + Sync + 'static {
    /// What the server keeps per connection between messages.
    type State: Default + 'static;

    /// The handshake was accepted and the `101` written, with the state
    /// the route's [`on_upgrade`](crate::WebSocketRoute::on_upgrade) hook
    /// gave (else a default one). May greet the peer through `session`.
    ///
    /// The first place the connection's id ([`WsSession::id`]) is known:
    /// register it here (a device's id in the gateway's map) and a push to
    /// it from any thread reaches the connection, as nothing of the
    /// connection runs on its worker between this call and its first wait
    /// for pushes.
    fn on_open(&self, state: &mut Self::State, session: &WsSession) {
        let _ = (state, session);
    }

    /// A whole message arrived (fragments gathered, text checked to be
    /// UTF-8). The returned message, if any, is sent after those sent with
    /// [`WsSession::send`]. Messages are handled one at a time, in order.
    ///
    /// While it awaits, pushes to the connection ([`Hub`](crate::Hub)) go
    /// out as they come, before its replies: a peer that reads is not a
    /// slow consumer however long it awaits, and they wait in the
    /// connection's queue ([`Builder::outbound_queue`](crate::Builder::outbound_queue))
    /// only while its socket does not take them. If its peer does not read
    /// them (the queue overflows while a write is stuck, or the write bound
    /// passes) the connection closes meanwhile, and this future is dropped
    /// at its await (`on_close` still runs, with the state as the handler
    /// left it at that await; a push that finds the socket broken closes
    /// it so too: whether the handler finishes then depends on pushes).
    /// (Until session 46 pushes
    /// waited for it to return, and `outbound_queue` of them closed a
    /// reading peer as a slow consumer.) Work that must not be cut short
    /// by such a close can be spawned and answered with
    /// [`Hub::send`](crate::Hub::send).
    fn on_message(
        &self,
        state: &mut Self::State,
        message: WsMessage,
        session: &WsSession,
    ) -> impl Future<Output = Option<WsMessage>>;

    /// The connection closed, for `reason`: the peer's close frame or
    /// hang-up ([`CloseReason::ClientClosed`]), a protocol error, the
    /// heartbeat timeout, shutdown, ... Called exactly once per connection
    /// whose `on_open` ran, parked or not. The peer's close code and
    /// reason, to tell a log-out from a lost network, come with
    /// [`on_close_with`](WebSocketHandler::on_close_with).
    fn on_close(&self, state: Self::State, reason: CloseReason) {
        let _ = (state, reason);
    }

    /// [`on_close`](WebSocketHandler::on_close) with the connection's id
    /// (the one [`WsSession::id`] gave), to drop it from an application's
    /// own map of ids (nick to id, device to id) without keeping a copy of
    /// it in every state. The server calls this one; by default it calls
    /// `on_close`: implement one of the two.
    ///
    /// A map keyed by something else (a device's name) must remove the
    /// entry only if it still holds this id: after a reconnect took over
    /// (the new connection registered, then [`Hub::close`](crate::Hub::close)
    /// of the old one), the old connection's close comes after the new
    /// one's registration, and removing by name would mark an online
    /// device offline:
    ///
    /// ```text
    /// // devices: Mutex<HashMap<String, ConnectionId>>, the name in the state
    /// let mut devices = self.devices.lock().unwrap();
    /// if devices.get(&state.name) == Some(&id) { devices.remove(&state.name); }
    /// ```
    fn on_close_with_id(&self, id: ConnectionId, state: Self::State, reason: CloseReason) {
        let _ = id;
        self.on_close(state, reason);
    }

    /// [`on_close_with_id`](WebSocketHandler::on_close_with_id) with what
    /// the peer said, if it began the close: its close frame's code and
    /// reason ([`WsClose::peer_code`], [`WsClose::peer_reason`]), or 1006
    /// when it sent none. What presence needs to tell "logged out" (1000
    /// and a reason) from "lost the network" (1006). The server calls this
    /// one; by default it calls `on_close_with_id`: implement one of the
    /// three.
    ///
    /// The close frame is handed over here, at the close, and kept nowhere
    /// before: a parked connection holds nothing more for it.
    ///
    /// ```
    /// use megaconn::{WebSocketHandler, WsClose, WsMessage, WsSession};
    ///
    /// struct Presence;
    ///
    /// impl WebSocketHandler for Presence {
    ///     type State = ();
    ///
    ///     async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
    ///         Some(m)
    ///     }
    ///
    ///     fn on_close_with(&self, _: (), close: &WsClose<'_>) {
    ///         match close.peer_code() {
    ///             1000 => println!("{} logged out: {}", close.id(), close.peer_reason()),
    ///             1006 => println!("{} lost ({})", close.id(), close.reason()),
    ///             code => println!("{} left with {code}", close.id()),
    ///         }
    ///     }
    /// }
    /// ```
    fn on_close_with(&self, state: Self::State, close: &WsClose<'_>) {
        self.on_close_with_id(close.id(), state, close.reason());
    }
}

/// How a native WebSocket ended, as
/// [`WebSocketHandler::on_close_with`] hears it: its id, the
/// [`CloseReason`], and the close frame the peer began the close with, if
/// it did. Borrowed for the call: nothing of it is kept per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsClose<'a> {
    id: ConnectionId,
    reason: CloseReason,
    peer: Option<(u16, &'a str)>,
}

impl<'a> WsClose<'a> {
    /// A close for `reason`; `peer`: the peer's close frame (code, reason),
    /// if it began the close with one.
    pub(crate) fn new(id: ConnectionId, reason: CloseReason, peer: Option<(u16, &'a str)>) -> Self {
        WsClose { id, reason, peer }
    }

    /// The connection's id (the one [`WsSession::id`] gave).
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Why the connection closed, as `on_close` hears it (a peer's close
    /// frame is [`CloseReason::ClientClosed`]).
    pub fn reason(&self) -> CloseReason {
        self.reason
    }

    /// The code of the close frame the peer began the close with, as a
    /// browser's `CloseEvent.code` reports one: 1005 when its frame carried
    /// no code, 1006 when the peer sent no close frame first (it dropped
    /// the TCP connection, reset it, went silent past the heartbeat), or
    /// the server began the close (its own code is not the peer's: the
    /// peer's answer to it is not read for a code).
    pub fn peer_code(&self) -> u16 {
        self.peer
            .map_or(crate::observe::rooms::ABNORMAL, |(code, _)| code)
    }

    /// The reason text of the peer's close frame (empty without one).
    pub fn peer_reason(&self) -> &'a str {
        self.peer.map_or("", |(_, why)| why)
    }

    /// Whether the peer began the close with a close frame (a clean close
    /// of its own: `CloseEvent.wasClean` on its side).
    pub fn peer_closed(&self) -> bool {
        self.peer.is_some()
    }
}

/// The server's close callback for a route of `H`: `on_close_with`
/// without a peer's close frame (every close but the one the peer began
/// with one, which `conn.rs` hands over itself).
pub(crate) fn on_closed<H: WebSocketHandler>(
    handler: &H,
    id: ConnectionId,
    state: H::State,
    reason: CloseReason,
) {
    handler.on_close_with(state, &WsClose::new(id, reason, None));
}

/// A WebSocket as its handler sees it while handling one message: its id
/// (to push to it later with the [`Hub`](crate::Hub)), its topics, where
/// replies go. Messages sent are written, in order, when the handler returns.
#[derive(Debug)]
pub struct WsSession {
    inner: Session,
    out: RefCell<Vec<WsMessage>>,
    closing: RefCell<Option<(u16, String)>>,
}

impl WsSession {
    pub(crate) fn new(inner: Session) -> WsSession {
        WsSession {
            inner,
            out: RefCell::default(),
            closing: RefCell::default(),
        }
    }

    /// This connection's id, for [`Hub::send`](crate::Hub::send) from any
    /// task or thread (a pushed payload arrives as a text message when it
    /// is UTF-8, else as a binary one).
    pub fn id(&self) -> ConnectionId {
        self.inner.id()
    }

    /// How far behind this connection is: the hub's pushes waiting in its
    /// outbound queue ([`Session::buffered`]; uWebSockets'
    /// `getBufferedAmount`, in messages and bytes).
    pub fn buffered(&self) -> crate::Buffered {
        self.inner.buffered()
    }

    /// Queues a message to the peer.
    pub fn send(&self, message: impl Into<WsMessage>) {
        self.out.borrow_mut().push(message.into());
    }

    /// Subscribes this connection to `topic`: what
    /// [`Hub::publish`](crate::Hub::publish) sends to it reaches this
    /// connection, parked or awake, until it unsubscribes or closes. A
    /// new topic past
    /// [`Builder::max_subscriptions`](crate::Builder::max_subscriptions) is
    /// refused, the connection left open
    /// ([`Session::subscribe`](crate::Session::subscribe)).
    pub fn subscribe(&self, topic: &str) -> Result<(), crate::SubscribeError> {
        self.inner.subscribe(topic)
    }

    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&self, topic: &str) {
        self.inner.unsubscribe(topic);
    }

    /// Starts the closing handshake once the queued messages are written:
    /// a close frame with 1000 (normal closure). Reported as
    /// [`CloseReason::ServerClosed`].
    pub fn close(&self) {
        self.close_with(1000, "");
    }

    /// [`close`](WsSession::close) with a code of the application's
    /// (3000-4999) or a registered one that may be sent (1000-1003,
    /// 1007-1014), and a reason (cut to 123 bytes). Any other code (1004-1006
    /// and 1015 must never be sent, RFC 6455 §7.4.1; 0-999 and 1016-2999 are
    /// invalid) is logged and sent as 1011 (internal error): a client would
    /// take it for a protocol violation.
    pub fn close_with(&self, code: u16, reason: &str) {
        let code = sendable_close_code(code);
        *self.closing.borrow_mut() = Some((code, reason.to_owned()));
    }

    /// The peer's address, read from the socket when asked (one
    /// `getpeername`: nothing is kept per connection, parked or awake). The
    /// address of whoever connected: behind a proxy, the proxy (its
    /// forwarded header reaches the route's upgrade hook). `None` on a
    /// transport of the caller's own, which has no socket to ask, or once
    /// the peer has reset the connection.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.peer_addr()
    }

    /// The load balancer this connection came through, when its PROXY
    /// header named the client `peer_addr` answers
    /// ([`Session::proxied_by`](crate::Session::proxied_by)); `None`
    /// otherwise.
    pub fn proxied_by(&self) -> Option<std::net::SocketAddr> {
        self.inner.proxied_by()
    }

    /// The certificate chain the client presented in its TLS handshake
    /// (`wss://` with [`TlsConfig::client_auth`](crate::TlsConfig::client_auth)),
    /// verified against the client CA roots; the same after the
    /// connection parked and woke. `None` on cleartext, with client auth
    /// off, for a client that sent none under
    /// [`ClientAuth::Optional`](crate::ClientAuth::Optional), and on a
    /// transport of the caller's own. (The upgrade request carried it too,
    /// as a [`PeerCertificates`](crate::PeerCertificates) extension, for
    /// the route's upgrade hook.)
    pub fn peer_certificates(&self) -> Option<&crate::PeerCertificates> {
        self.inner.peer_certificates()
    }

    /// The messages queued so far, taken.
    pub(crate) fn take_out(&self) -> Vec<WsMessage> {
        std::mem::take(&mut *self.out.borrow_mut())
    }

    /// The close the handler asked for, taken.
    pub(crate) fn take_closing(&self) -> Option<(u16, String)> {
        self.closing.borrow_mut().take()
    }
}

/// `code` if a server may send it in a close frame; else 1011 (internal
/// error), logged (RFC 6455 §7.4.1: 1004-1006 and 1015 are
/// never sent, 0-999 and 1016-2999 are invalid: a client would take them
/// for a protocol violation).
///
/// Logged at most once per interval per worker ([`Flood::BadCloseCode`]):
/// a handler may pass on a code its peer chose, as often as the peer likes.
fn sendable_close_code(code: u16) -> u16 {
    if frame::peer_may_send(code) {
        return code;
    }
    ratelog::log(Flood::BadCloseCode, |suppressed| {
        tracing::warn!(
            code,
            suppressed,
            "WsSession::close_with: this close code may not be sent (RFC 6455 §7.4); sending 1011 instead (use 1000-1003, 1007-1014 or 3000-4999)"
        )
    });
    1011
}

/// A boxed connection future: the dispatcher's future does not grow by a
/// handler's future size.
pub(crate) type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A route with its handler's types erased, as the 101 carries it to the
/// dispatcher and the worker's kinds of parked WebSockets keep it.
pub(crate) trait ErasedRoute: Send + Sync {
    /// Serves one WebSocket until it closes or parks.
    fn serve(
        self: Arc<Self>,
        io: WsIo,
        ctx: Rc<WorkerContext>,
        start: Start,
    ) -> LocalFuture<Ended<WsParked>>;

    /// The variant parked WebSocket `fd` has in the side table of this
    /// route's state type, if it is parked there.
    fn parked_variant(&self, tables: &Tables, fd: RawFd) -> Option<usize>;

    /// The route's heartbeat timeout (`None`: off).
    fn heartbeat_timeout(&self) -> Option<std::time::Duration>;

    /// The parking lot closed parked connection `fd` itself (shutdown):
    /// the state leaves the side table (its kind released), the peer gets
    /// the close frame it is owed (at shutdown, unless it was behind: the
    /// route's goodbye, 1001 by default) on `socket`, the connection leaves
    /// its topics, and the handler hears why (`proto::parked::let_go`,
    /// which over TLS writes first what a push it was behind on left owed,
    /// if the socket takes it now).
    fn parked_closed(
        &self,
        tables: &Tables,
        fd: RawFd,
        reason: CloseReason,
        socket: ParkedSocket<'_>,
    );
}

impl<H: WebSocketHandler> ErasedRoute for super::route::Route<H> {
    fn serve(
        self: Arc<Self>,
        io: WsIo,
        ctx: Rc<WorkerContext>,
        start: Start,
    ) -> LocalFuture<Ended<WsParked>> {
        Box::pin(conn::serve(self, io, ctx, start))
    }

    fn parked_variant(&self, tables: &Tables, fd: RawFd) -> Option<usize> {
        tables.table::<H::State>().variant(fd)
    }

    fn heartbeat_timeout(&self) -> Option<std::time::Duration> {
        self.settings.heartbeat_timeout
    }

    fn parked_closed(
        &self,
        tables: &Tables,
        fd: RawFd,
        reason: CloseReason,
        socket: ParkedSocket<'_>,
    ) {
        let Some(parked) = tables.take::<H::State>(fd) else {
            return;
        };
        // Counted before the handler hears of it, as an awake close is:
        // the goodbye's code if `let_go` sends it (a shutdown, not behind
        // on a push), else a close without a frame from whoever's it was.
        let (code, why) = &self.settings.goodbye;
        let says_goodbye = reason == CloseReason::Shutdown && !parked.behind;
        let (closer, counted) = closer_without_peer_frame(reason, says_goodbye.then_some(*code));
        tables
            .local
            .stats()
            .messages
            .rooms
            .ws_closed(closer, counted);
        let goodbye = |_: &Parked<H::State>| {
            let mut goodbye = BytesMut::new();
            frame::encode_close(&mut goodbye, *code, why);
            Some(goodbye)
        };
        let on_close = (&self.handler, on_closed::<H> as OnClose<H, H::State>);
        let_go(
            (&tables.local, parked),
            (fd, reason),
            socket,
            goodbye,
            on_close,
        );
    }
}
