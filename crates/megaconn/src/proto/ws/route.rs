//! [`WebSocketRoute`]: how a user mounts a native WebSocket endpoint — a
//! tower service put on a route (`Router::route_service("/ws", ...)` in
//! axum), so WebSocket composes with routing, middleware and the rest of
//! the app like any other handler.
//!
//! It checks the handshake and answers: `101` with a [`NativeUpgrade`]
//! marking the response, which makes the HTTP/1.1 engine hand the socket
//! to the dispatcher and this protocol, not to a task; or `400`/`403`/`426`
//! with the reason; or the upgrade hook's refusal (`500` for one with an
//! informational status, which refuses nothing).

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either, FutureExt};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use tower_service::Service;

use crate::message::DEFAULT_MESSAGE_TIMEOUT;
use crate::observe::ratelog::{self, Flood};
use crate::proto::ws::frame::Limits;
use crate::proto::ws::handler::{ErasedRoute, WebSocketHandler};
use crate::proto::ws::{handshake, RouteRef, GOING_AWAY};
use crate::service::upgrade::{NativeRefusal, NativeUpgrade};

/// Default [`WebSocketRoute::max_message_bytes`]: 1 MiB. A message is held
/// whole until its last byte, and the handler's answer to it is written
/// whole, so this is what one peer can make its connection hold twice
/// over. It was 16 MiB (tungstenite's frame default): a peer that sent
/// 16 MiB echo messages and never read the replies held 37 MB of a
/// release server's memory per connection until its heartbeat timeout,
/// and 100 peers each 16 MiB into one message held 890 MB. 1 MiB is
/// Socket.IO's default (`maxHttpBufferSize`), between uWebSockets' 16 KiB
/// and tungstenite's 64 MiB; a route whose messages are small (a chat, a
/// feed) sets what they need, one that takes uploads raises it.
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Default [`WebSocketRoute::max_frame_bytes`]: 16 MiB. A data frame is
/// part of a message, whose size is checked from the frame's header too,
/// so with the default [`DEFAULT_WS_MAX_MESSAGE_BYTES`] that bound comes
/// first; a route that raises `max_message_bytes` need not raise this
/// below 16 MiB.
pub const DEFAULT_WS_MAX_FRAME_BYTES: usize = 16 << 20;

/// Default [`WebSocketRoute::ping_interval`]: 30 s, the interval the idle
/// benchmarks quote (and below common proxies' 60 s idle cut-off).
pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Default [`WebSocketRoute::heartbeat_timeout`]: 75 s, two pings and a margin
/// ([`HEARTBEAT_TIMEOUT_PER_PING`] × the default ping interval).
pub const DEFAULT_WS_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(75);

/// A route whose [`ping_interval`](WebSocketRoute::ping_interval) is set
/// and whose heartbeat timeout is not gets this many ping intervals as its
/// timeout: two pings and a margin, as with the defaults. A fixed 75 s
/// would close every peer pinged less often than that before its first
/// ping (a million `wss://` clients beating every 120 s behind a
/// `--ws-ping-interval 240s` were all closed at 75 s of silence).
pub const HEARTBEAT_TIMEOUT_PER_PING: f64 = 2.5;

pub use crate::conn::config::DEFAULT_WS_CLOSE_TIMEOUT;

/// A native WebSocket endpoint: a tower service that accepts handshakes for
/// a [`WebSocketHandler`] and serves the connections on megaconn's own
/// engine, one handler call per message, idle connections parked.
///
/// ```no_run
/// use megaconn::{WebSocketHandler, WebSocketRoute, WsMessage, WsSession};
///
/// struct Echo;
/// impl WebSocketHandler for Echo {
///     type State = ();
///     async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
///         Some(m)
///     }
/// }
///
/// let app: axum::Router = axum::Router::new().route_service("/ws", WebSocketRoute::new(Echo));
/// ```
///
/// Only megaconn serves the upgraded connection: under another server the
/// `101` is written and nothing takes the socket.
///
/// Build a route once, with the router, and let the router clone it (a
/// clone shares it). A worker keeps a list of the route values it has
/// connections of parked (a parked connection's entry names its route in 16
/// bits, not a pointer), each until the last of them wakes or closes: built
/// per request, every parked connection adds one to the list that each park
/// and wake-up scans, and with 65,536 of them parked at once a worker closes
/// WebSockets instead of parking them. What differs per connection belongs
/// in the handler's `State`.
///
/// A native route serves WebSocket over HTTP/1.1. An extended CONNECT over
/// HTTP/2 (RFC 8441; on by default with
/// [`Builder::http2_enable_connect_protocol`](crate::Builder::http2_enable_connect_protocol)) gets `501` from it: browsers
/// that already have an HTTP/2 connection to the origin may try that first.
/// [`axum_ws`](crate::axum_ws) routes serve both.
pub struct WebSocketRoute<H> {
    route: Arc<Route<H>>,
}

impl<H> Clone for WebSocketRoute<H> {
    fn clone(&self) -> Self {
        WebSocketRoute {
            route: self.route.clone(),
        }
    }
}

impl<H> std::fmt::Debug for WebSocketRoute<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketRoute")
            .field("settings", &self.route.settings)
            .finish_non_exhaustive()
    }
}

/// A route's handler and settings, shared by its connections.
pub(crate) struct Route<H> {
    pub handler: H,
    pub settings: Settings,
}

/// What a route's connections follow.
pub(crate) struct Settings {
    pub limits: Limits,
    pub protocols: Vec<HeaderValue>,
    pub origin: Option<OriginCheck>,
    pub ping_interval: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    /// `heartbeat_timeout` was set by the user (else it follows
    /// `ping_interval`).
    pub heartbeat_timeout_set: bool,
    pub close_timeout: Duration,
    /// The time a message may take, first byte to last (`None`: unbounded).
    pub message_timeout: Option<Duration>,
    /// permessage-deflate on offer.
    pub deflate: bool,
    /// [`WebSocketRoute::on_upgrade`]'s hook, its state erased.
    pub upgrade: Option<Box<UpgradeHook>>,
    /// The close code and reason sent at shutdown
    /// ([`WebSocketRoute::goodbye`]).
    pub goodbye: (u16, String),
}

/// The origin hook.
pub(crate) type OriginCheck = Box<handshake::OriginFn>;

/// A handshake's state as it travels to the connection: boxed (for a
/// handshake's time; a state of size 0 allocates nothing) and `Send`, as
/// the `101`'s extensions must be.
pub(crate) type UpgradeState = Box<dyn Any + Send>;

/// [`WebSocketRoute::on_upgrade`]'s hook with the handler's state type
/// erased.
pub(crate) type UpgradeHook =
    dyn Fn(Parts) -> BoxFuture<'static, Result<UpgradeState, Response<String>>> + Send + Sync;

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("limits", &self.limits)
            .field("protocols", &self.protocols)
            .field("origin", &self.origin.is_some())
            .field("ping_interval", &self.ping_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("message_timeout", &self.message_timeout)
            .field("deflate", &self.deflate)
            .field("upgrade", &self.upgrade.is_some())
            .field("goodbye", &self.goodbye)
            .finish()
    }
}

impl<H: WebSocketHandler> WebSocketRoute<H> {
    /// A route serving `handler`, with the defaults (`DEFAULT_WS_*`).
    pub fn new(handler: H) -> WebSocketRoute<H> {
        WebSocketRoute {
            route: Arc::new(Route {
                handler,
                settings: Settings {
                    limits: Limits {
                        max_frame_bytes: DEFAULT_WS_MAX_FRAME_BYTES,
                        max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
                    },
                    protocols: Vec::new(),
                    origin: None,
                    ping_interval: Some(DEFAULT_WS_PING_INTERVAL),
                    heartbeat_timeout: Some(DEFAULT_WS_HEARTBEAT_TIMEOUT),
                    heartbeat_timeout_set: false,
                    close_timeout: DEFAULT_WS_CLOSE_TIMEOUT,
                    message_timeout: Some(DEFAULT_MESSAGE_TIMEOUT),
                    deflate: false,
                    upgrade: None,
                    goodbye: (GOING_AWAY, String::new()),
                },
            }),
        }
    }

    fn settings(&mut self) -> &mut Settings {
        &mut Arc::get_mut(&mut self.route)
            .expect("configure a WebSocketRoute before cloning it")
            .settings
    }

    /// The largest message (all its fragments together) a client may send;
    /// a larger one closes the connection with 1009, counted in
    /// `megaconn_limit_hits_total{limit="ws_message_too_big"}`. Checked
    /// from each frame's header (its length and what came before it), so
    /// the bytes of a refused message are never read. Default
    /// [`DEFAULT_WS_MAX_MESSAGE_BYTES`] (1 MiB; 16 MiB before).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.settings().limits.max_message_bytes = bytes;
        self
    }

    /// The largest frame a client may send (checked from its header, before
    /// the payload is read); a larger one closes with 1009, counted in
    /// `megaconn_limit_hits_total{limit="ws_frame_too_big"}`. Default 16 MiB.
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.settings().limits.max_frame_bytes = bytes;
        self
    }

    /// The subprotocols this endpoint speaks, preferred first: the first
    /// one the client offers is chosen (`Sec-WebSocket-Protocol`); if the
    /// client offers none of them the connection opens without one.
    pub fn protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.settings().protocols = protocols
            .into_iter()
            .filter_map(|p| HeaderValue::try_from(p.into()).ok())
            .collect();
        self
    }

    /// Judges the `Origin` header (`None`: not sent, as by non-browser
    /// clients); `false` answers `403`. Default: every origin is accepted.
    pub fn check_origin(
        mut self,
        check: impl Fn(Option<&HeaderValue>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings().origin = Some(Box::new(check));
        self
    }

    /// Sends a ping after this long without hearing from the peer (from the
    /// parking lot's timer for parked connections: one `send`, no task; a
    /// peer that sends its own heartbeats more often than this gets none).
    /// `None`: never. Default 30 s. Unless
    /// [`heartbeat_timeout`](Self::heartbeat_timeout) is set too, the
    /// heartbeat timeout becomes [`HEARTBEAT_TIMEOUT_PER_PING`] × `every`
    /// (with no pings it stays at its default, 75 s).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        let every = crate::conn::config::zero_is_off(every);
        let settings = self.settings();
        settings.ping_interval = every;
        if !settings.heartbeat_timeout_set {
            settings.heartbeat_timeout =
                Some(every.map_or(DEFAULT_WS_HEARTBEAT_TIMEOUT, |every| {
                    every.mul_f64(HEARTBEAT_TIMEOUT_PER_PING)
                }));
        }
        self
    }

    /// The peer must send something (a pong, a message) within this time,
    /// else the connection closes as
    /// [`CloseReason::HeartbeatTimeout`](crate::CloseReason::HeartbeatTimeout).
    /// `None`: never. Default 75 s, or [`HEARTBEAT_TIMEOUT_PER_PING`] ×
    /// the [`ping_interval`](Self::ping_interval) if that is set (in either
    /// order, a timeout set here wins).
    ///
    /// It also bounds a write the peer takes none of our bytes of (unless
    /// [`Builder::write_timeout`](crate::Builder::write_timeout) is set,
    /// which bounds each whole write): past it the connection closes as
    /// [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout). A
    /// slow peer that keeps reading is not cut off. With `None`,
    /// [`Builder::write_stall_timeout`](crate::Builder::write_stall_timeout)
    /// (60 s by default) bounds that instead.
    pub fn heartbeat_timeout(mut self, timeout: Option<Duration>) -> Self {
        let timeout = crate::conn::config::zero_is_off(timeout);
        let settings = self.settings();
        settings.heartbeat_timeout = timeout;
        settings.heartbeat_timeout_set = true;
        self
    }

    /// How long to wait for the peer's close frame after the server sent
    /// its own (then the connection closes anyway). What the peer sends
    /// before its close (the rest of a frame, of a message) is passed by
    /// its frame headers and dropped, and a read that is one whole close
    /// frame is its close, also in the middle of a frame our close cut; the
    /// connection holds no buffer while it waits. So it is after a 1009 (a
    /// frame or message over a size limit: the frame's payload is passed by
    /// its length). After a broken rule of the framing (1002, 1007) the
    /// peer's bytes are not looked at (RFC 6455 §7.1.7): they are read away
    /// until the peer closes or this timeout ends. Default 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.settings().close_timeout = timeout;
        self
    }

    /// How long a client may take over one message, from its first byte to
    /// its last (all its fragments, and the control frames between them),
    /// however steadily the bytes come: past it the connection closes with
    /// 1008 (policy violation) and
    /// [`CloseReason::MessageTimeout`](crate::CloseReason::MessageTimeout).
    /// A WebSocket in the middle of a message cannot park, and the
    /// [`heartbeat_timeout`](Self::heartbeat_timeout), restarted by every
    /// byte, does not bound a client that trickles one (slowloris). Over
    /// TLS, part of a record counts as a message begun (seen when it
    /// arrives, or when a parked connection wakes), also on a TLS stream
    /// of your own given to
    /// [`Builder::serve_connection`](crate::Builder::serve_connection) if
    /// it says so ([`Transport::holds_partial_input`](crate::Transport::holds_partial_input));
    /// else only the heartbeat bounds that. Between messages it does not
    /// apply. A message that begins in the same read as one ends gets a
    /// time of its own only once the client brought 8 KiB, or 137 B/s over
    /// the time passed, since the time started; else the time runs on, so a
    /// client that never lets the connection get back between messages must
    /// bring 137 B/s (or 8 KiB per timeout), whatever the timeout.
    /// [`Builder::read_timeout`](crate::Builder::read_timeout) is HTTP's
    /// and does not apply to WebSocket messages. `None` or zero: unbounded.
    /// Default [`DEFAULT_MESSAGE_TIMEOUT`] (60 s).
    pub fn message_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings().message_timeout = crate::conn::config::zero_is_off(timeout);
        self
    }

    /// Offers permessage-deflate (RFC 7692) to clients that ask for it
    /// (browsers do), without context takeover in either direction: each
    /// message is compressed on its own, so an idle or parked connection
    /// keeps no compression state, and one compressor and one decompressor
    /// per worker serve every connection. The handler's replies go out
    /// compressed; messages pushed through the [`Hub`](crate::Hub) go
    /// uncompressed (encoded once for every WebSocket, as RFC 7692 allows).
    /// A compressed message may inflate to at most `max_message_bytes`.
    /// Default: off.
    pub fn permessage_deflate(mut self, on: bool) -> Self {
        self.settings().deflate = on;
        self
    }

    /// The close frame the route's connections get when the server shuts
    /// down (graceful shutdown, `SIGTERM` under the CLI), parked or awake:
    /// `code` and `reason` instead of 1001 (going away) with no reason,
    /// e.g. `goodbye(1012, "restarting; reconnect in 10 s")` (1012: service
    /// restart) so that clients know to come back, or a code of the
    /// application's (3000-4999). What framed listeners get with
    /// [`Builder::goodbye_frame`](crate::Builder::goodbye_frame).
    ///
    /// `code` is one a server may send (1000-1003, 1007-1014, 3000-4999, as
    /// [`WsSession::close_with`](crate::WsSession::close_with) takes); any
    /// other (RFC 6455 §7.4: 1004-1006 and 1015 are never sent, 0-999 and
    /// 1016-2999 invalid) is logged as a warning here and the route keeps
    /// 1001. The reason is cut to 123 bytes at a character boundary, what
    /// a close frame holds. The frame is written as the 1001 was: an awake
    /// connection's after what it is writing, then the close handshake
    /// (bounded by the shutdown); a parked one's in one `send` from the
    /// parking lot, its answer not awaited. A connection closed for another
    /// reason at shutdown (its peer gone, behind on its pushes) gets what
    /// that reason sends, not this.
    pub fn goodbye(mut self, code: u16, reason: &str) -> Self {
        if !crate::message::hub::close_code_may_be_sent(code) {
            tracing::warn!(
                code,
                "WebSocketRoute::goodbye: this close code may not be sent (RFC 6455 §7.4); the route keeps 1001 (use 1000-1003, 1007-1014 or 3000-4999)"
            );
            return self;
        }
        let reason = crate::message::hub::close_reason(reason).to_owned();
        self.settings().goodbye = (code, reason);
        self
    }

    /// Runs `hook` at each handshake the route accepts, before the `101`,
    /// with the request's head (method, URI with its query, headers, and
    /// extensions: the peer's address as [`ConnInfo`](crate::ConnInfo) with
    /// [`Builder::connect_info`](crate::Builder::connect_info), axum's path
    /// parameters for `axum::extract::Path`, what middleware put there): it gives the connection's first
    /// [`State`](WebSocketHandler::State) (then `on_open` runs with it), or
    /// the answer that refuses it (a `401`, a `403`, a `404` for a room
    /// that does not exist), written instead of the `101`; a refusal with an
    /// informational status (`1xx`, such as a `101`) refuses nothing and is
    /// answered `500`, logged (at most once per 5 s). Without a hook every
    /// connection starts with `State::default()`.
    ///
    /// The hook is async (a token looked up elsewhere); the connection
    /// waits for it as any request waits for its handler (bound it as you
    /// bound those, e.g. with tower's timeout layer).
    /// What it returns is all a connection keeps of its request: the state
    /// (hence `Send`, as it travels with the `101`).
    ///
    /// The hook runs before the connection has a
    /// [`ConnectionId`](crate::ConnectionId): an id is issued when the
    /// upgraded socket reaches its worker's WebSocket protocol, after the
    /// `101` is written (a refused or failed handshake never gets one), and
    /// the first code that sees it is
    /// [`on_open`](WebSocketHandler::on_open), through
    /// [`WsSession::id`](crate::WsSession::id), with the state this hook
    /// returned. So a gateway that maps devices to ids authenticates here
    /// (the device's name into the state) and registers in `on_open`
    /// (`device → session.id()`), which runs on the worker before anything
    /// can be pushed to the connection or read from it: a push sent to the
    /// id from the moment it is registered is delivered, and
    /// [`on_close_with_id`](WebSocketHandler::on_close_with_id) unregisters
    /// it. Registration that must wait on something (a database, another
    /// service) is spawned from `on_open` with the id; the connection's
    /// messages are served meanwhile. A connection that does not use its
    /// id pays nothing for it (the id is the worker, the descriptor and a
    /// counter).
    ///
    /// ```no_run
    /// use http::{request::Parts, Response, StatusCode};
    /// use megaconn::{WebSocketHandler, WebSocketRoute, WsMessage, WsSession};
    ///
    /// /// A chat room's member: the room, from `?room=`.
    /// struct Chat;
    /// impl WebSocketHandler for Chat {
    ///     type State = String;
    ///     fn on_open(&self, room: &mut String, session: &WsSession) {
    ///         let _ = session.subscribe(room);
    ///     }
    ///     async fn on_message(&self, _: &mut String, m: WsMessage, _: &WsSession) -> Option<WsMessage> {
    ///         Some(m)
    ///     }
    /// }
    ///
    /// let route = WebSocketRoute::new(Chat).on_upgrade(|head: Parts| async move {
    ///     let query = head.uri.query().unwrap_or_default();
    ///     if !query.split('&').any(|kv| kv == "token=let-me-in") {
    ///         let mut refused = Response::new("bad token\n".to_owned());
    ///         *refused.status_mut() = StatusCode::UNAUTHORIZED;
    ///         return Err(refused);
    ///     }
    ///     let room = query.split('&').find_map(|kv| kv.strip_prefix("room="));
    ///     Ok(room.unwrap_or("lobby").to_owned())
    /// });
    /// let app: axum::Router = axum::Router::new().route_service("/chat", route);
    /// ```
    pub fn on_upgrade<F, Fut>(mut self, hook: F) -> Self
    where
        H::State: Send,
        F: Fn(Parts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<H::State, Response<String>>> + Send + 'static,
    {
        // The refusal is a whole response (136 B): once per handshake the
        // hook refuses, not worth a box in the user's signature.
        #[allow(clippy::result_large_err)]
        let erased = move |head| {
            hook(head)
                .map(|opened| opened.map(|state| Box::new(state) as UpgradeState))
                .boxed()
        };
        self.settings().upgrade = Some(Box::new(erased));
        self
    }
}

impl<H: WebSocketHandler> WebSocketRoute<H> {
    /// The route with its handler's types erased, as a parked WebSocket's
    /// kind keeps it.
    #[cfg(test)]
    pub(crate) fn erased(&self) -> Arc<dyn ErasedRoute> {
        self.route.clone()
    }
}

impl<H: WebSocketHandler, B> Service<Request<B>> for WebSocketRoute<H> {
    type Response = Response<String>;
    type Error = Infallible;
    /// Ready at once, unless an [`on_upgrade`](WebSocketRoute::on_upgrade)
    /// hook runs.
    type Future = Either<
        std::future::Ready<Result<Response<String>, Infallible>>,
        BoxFuture<'static, Result<Response<String>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let settings = &self.route.settings;
        let checked = handshake::check(
            &request,
            &settings.protocols,
            settings.origin.as_deref(),
            settings.deflate,
        );
        let accepted = match checked {
            Ok(accepted) => accepted,
            Err(rejection) => {
                tracing::debug!(
                    status = rejection.status.as_u16(),
                    reason = rejection.reason,
                    "WebSocket handshake refused"
                );
                return Either::Left(std::future::ready(Ok(rejection.response())));
            }
        };
        let route: Arc<dyn ErasedRoute> = self.route.clone();
        let Some(hook) = &settings.upgrade else {
            return Either::Left(std::future::ready(Ok(upgraded(&accepted, route, None))));
        };
        let opened = hook(request.into_parts().0);
        Either::Right(Box::pin(async move {
            Ok(match opened.await {
                Ok(state) => upgraded(&accepted, route, Some(state)),
                Err(refused) => refusal(refused),
            })
        }))
    }
}

/// The answer for a handshake the upgrade hook refused with `refused`.
///
/// An informational (`1xx`) status refuses nothing: a `101` without the
/// handshake's headers switches to nothing (under megaconn it went to the
/// engine as an upgrade nobody took: logged as a handler that used
/// hyper's upgrade, then closed; under hyper it is written as it is), and
/// after a `100` a client waits for a final answer that never comes. So it
/// becomes a `500` with no body, as hyper and megaconn's HTTP/1.1 engine
/// answer a handler's `1xx`, and the line says what the application did
/// wrong: at most one per interval, as each handshake a peer sends repeats
/// it (the kind of a handler's other misused upgrades).
fn refusal(mut refused: Response<String>) -> Response<String> {
    let status = refused.status();
    if status.is_informational() {
        ratelog::log(Flood::UnclaimedUpgrade, |suppressed| {
            tracing::warn!(
                status = status.as_u16(),
                suppressed,
                "WebSocketRoute::on_upgrade's hook refused a handshake with an informational \
                 (1xx) status, which refuses nothing (a 101 is no switch without the \
                 handshake, and a client waits on past a 100); answering 500. Refuse with a \
                 final status (such as 401, 403 or 404), or accept with Ok(state)"
            );
        });
        refused = Response::new(String::new());
        *refused.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    } else {
        tracing::debug!(
            status = status.as_u16(),
            "WebSocket handshake refused by WebSocketRoute::on_upgrade"
        );
    }
    refused.extensions_mut().insert(NativeRefusal);
    refused
}

/// The `101` for an accepted handshake, marked for the engine to hand the
/// socket to `route` (with the state the upgrade hook gave, if any).
fn upgraded(
    accepted: &handshake::Accepted,
    route: Arc<dyn ErasedRoute>,
    state: Option<UpgradeState>,
) -> Response<String> {
    let mut response = accepted.response();
    let deflate = accepted.deflate.as_ref().map(|(deflate, _)| *deflate);
    let state = Mutex::new(state);
    response
        .extensions_mut()
        .insert(NativeUpgrade(Arc::new(RouteRef {
            route,
            deflate,
            state,
        })));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::{WsMessage, WsSession};

    struct Echo;

    impl WebSocketHandler for Echo {
        type State = ();

        async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
            Some(m)
        }
    }

    fn timeout(route: &WebSocketRoute<Echo>) -> Option<Duration> {
        route.route.settings.heartbeat_timeout
    }

    #[test]
    fn the_heartbeat_timeout_follows_the_ping_interval_unless_set() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(timeout(&WebSocketRoute::new(Echo)), secs(75));
        assert_eq!(
            timeout(&WebSocketRoute::new(Echo).ping_interval(secs(240))),
            secs(600)
        );
        // No pings: the default stands.
        assert_eq!(
            timeout(&WebSocketRoute::new(Echo).ping_interval(None)),
            secs(75)
        );
        // Set explicitly, in either order, it wins.
        let set_first = WebSocketRoute::new(Echo)
            .heartbeat_timeout(secs(10))
            .ping_interval(secs(240));
        assert_eq!(timeout(&set_first), secs(10));
        let set_after = WebSocketRoute::new(Echo)
            .ping_interval(secs(240))
            .heartbeat_timeout(None);
        assert_eq!(timeout(&set_after), None);
    }

    /// `goodbye` keeps a code a close frame may carry and a reason cut to
    /// 123 bytes at a character boundary; a code none may carry leaves the
    /// route's 1001 (logged), and the default is 1001 with no reason.
    #[test]
    fn goodbye_keeps_a_sendable_code_and_a_close_frames_reason() {
        let of = |route: WebSocketRoute<Echo>| route.route.settings.goodbye.clone();
        assert_eq!(of(WebSocketRoute::new(Echo)), (1001, String::new()));
        assert_eq!(
            of(WebSocketRoute::new(Echo).goodbye(4000, "bye")),
            (4000, "bye".to_owned())
        );
        for code in [1005, 1006, 1015, 999, 2000, 5000] {
            assert_eq!(
                of(WebSocketRoute::new(Echo).goodbye(code, "x")),
                (1001, String::new()),
                "{code}"
            );
        }
        let long = "é".repeat(100);
        assert_eq!(
            of(WebSocketRoute::new(Echo).goodbye(1012, &long)).1,
            "é".repeat(61)
        );
    }

    #[test]
    fn the_message_timeout_is_on_by_default_and_zero_turns_it_off() {
        let of = |route: WebSocketRoute<Echo>| route.route.settings.message_timeout;
        assert_eq!(of(WebSocketRoute::new(Echo)), Some(DEFAULT_MESSAGE_TIMEOUT));
        let zero = WebSocketRoute::new(Echo).message_timeout(Some(Duration::ZERO));
        assert_eq!(of(zero), None);
        let set = WebSocketRoute::new(Echo).message_timeout(Some(Duration::from_secs(5)));
        assert_eq!(of(set), Some(Duration::from_secs(5)));
    }
}
