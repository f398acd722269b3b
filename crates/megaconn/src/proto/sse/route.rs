//! [`SseRoute`]: how a user mounts a native Server-Sent Events endpoint, a
//! tower service put on a route (`Router::route_service("/events", ...)` in
//! axum), and [`SseHandler`], what it calls when a stream opens and closes.
//!
//! The route answers the request itself: a `GET` over HTTP/1.x gets `200`
//! with `content-type: text/event-stream` and `cache-control: no-cache`,
//! marked with a [`NativeUpgrade`] that makes the HTTP/1.1 engine write the
//! head (chunked over HTTP/1.1, close-delimited over HTTP/1.0) and hand the
//! socket to the dispatcher and this protocol instead of streaming a body
//! from a task. `HEAD` gets the same head and no stream; any other method
//! `405` with `Allow: GET, HEAD`; a request over HTTP/2 or HTTP/3 the
//! route's [`fallback`](SseRoute::fallback) service, else `505` (mod.rs
//! says why).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, FutureExt};
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use tower_service::Service;

use crate::message::hub::ConnectionId;
use crate::message::session::Session;
use crate::observe::close::CloseReason;
use crate::proto::sse::event::SseEvent;
use crate::proto::sse::Opening;
use crate::service::body::Body;
use crate::service::upgrade::NativeUpgrade;

/// Default [`SseRoute::ping_interval`]: a comment line every 30 s, below
/// the 60 s after which common proxies (nginx's `proxy_read_timeout`) cut
/// a silent upstream, as WebSocket's default ping.
pub const DEFAULT_SSE_PING_INTERVAL: Duration = Duration::from_secs(30);

/// What a native SSE endpoint does when a stream opens and closes. Events
/// reach the stream through the [`Hub`](crate::Hub) by its
/// [`ConnectionId`] ([`Session::id`]), by topic or by broadcast, parked
/// or awake; one handler serves every stream of its route (hence `Send +
/// Sync`). A stream keeps no state of the handler's: what an application
/// needs per stream it keys by id (the id is the worker, the socket and a
/// counter, and [`on_close`](SseHandler::on_close) says when it goes).
///
/// ```
/// use http::request::Parts;
/// use megaconn::{CloseReason, ConnectionId, Session, SseHandler};
///
/// /// Subscribes each stream to the topic its query names.
/// struct Feed;
///
/// impl SseHandler for Feed {
///     fn on_open(&self, request: &Parts, session: &Session) {
///         let topic = request.uri.query().unwrap_or("news");
///         let _ = session.subscribe(topic);
///         // Where a reconnecting client left off (its `Last-Event-ID`).
///         if let Some(last) = request.headers.get("last-event-id") {
///             session.send(format!("resuming after {last:?}"));
///         }
///     }
///
///     fn on_close(&self, id: ConnectionId, reason: CloseReason) {
///         println!("{id:?} closed: {reason}");
///     }
/// }
/// ```
pub trait SseHandler: Send + Sync + 'static {
    /// A stream opened: the `200` head is written, the connection has its
    /// id (`session.id()`). `request` is the request's head (method, URI
    /// with its query, headers such as `Last-Event-ID`, and extensions:
    /// [`ConnInfo`](crate::ConnInfo) with
    /// [`Builder::connect_info`](crate::Builder::connect_info), what
    /// middleware put there); it is not kept after this call. Runs on the
    /// connection's worker before anything can be pushed to it: an id
    /// registered here gets every event sent to it from then on. Text
    /// given to [`Session::send`] goes out as an event's data (a first
    /// event); [`Session::subscribe`] joins topics; [`Session::close`]
    /// ends the stream after what was sent.
    fn on_open(&self, request: &Parts, session: &Session) {
        let _ = (request, session);
    }

    /// The stream closed, for `reason`: the client went
    /// ([`CloseReason::ClientClosed`]), [`Hub::close`](crate::Hub::close)
    /// ended it ([`CloseReason::Kicked`]), it fell behind on its events
    /// ([`CloseReason::SlowConsumer`]), the client sent bytes
    /// (`Protocol(ProtocolDetail::Sse)`), shutdown. Called exactly once per
    /// stream whose `on_open` ran, parked or not.
    fn on_close(&self, id: ConnectionId, reason: CloseReason) {
        let _ = (id, reason);
    }
}

/// The body of the route's answers: none of its own, but the
/// [`fallback`](SseRoute::fallback)'s may be any.
pub type SseBody = BoxBody<Bytes, BoxError>;

/// A boxed error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A service answering the requests the route cannot stream natively
/// (HTTP/2 and later), boxed.
type Fallback = Box<
    dyn Fn(Request<Body>) -> BoxFuture<'static, Result<Response<SseBody>, Infallible>>
        + Send
        + Sync,
>;

/// A route's handler and settings, shared by its streams (a parked stream's
/// side-table entry holds one reference).
pub(crate) struct Route<H: ?Sized> {
    pub settings: Settings,
    pub handler: H,
}

/// What a route's streams follow.
pub(crate) struct Settings {
    /// A comment line this often (`None`: never).
    pub ping_interval: Option<Duration>,
    /// The event sent at graceful shutdown, encoded.
    pub goodbye: Option<bytes::Bytes>,
    /// What answers requests over HTTP/2 and later.
    pub fallback: Option<Fallback>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("ping_interval", &self.ping_interval)
            .field("goodbye", &self.goodbye)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

/// A route with its handler's type erased: what a stream and its parked
/// entry keep.
pub(crate) type ErasedRoute = Arc<Route<dyn SseHandler>>;

/// A native Server-Sent Events endpoint (WHATWG HTML §9.2): a tower service
/// that answers an `EventSource`'s `GET` and serves the stream on
/// megaconn's own engine, idle streams parked outside the runtime (tens of
/// bytes each, not a task), events written by the [`Hub`](crate::Hub) to
/// parked sockets without waking them.
///
/// ```no_run
/// use megaconn::{Session, SseHandler, SseRoute};
///
/// struct Ticker;
/// impl SseHandler for Ticker {
///     fn on_open(&self, _: &http::request::Parts, session: &Session) {
///         let _ = session.subscribe("ticks");
///     }
/// }
///
/// let app: axum::Router = axum::Router::new().route_service("/events", SseRoute::new(Ticker));
/// // Elsewhere: server.hub().publish("ticks", "42") reaches every stream.
/// ```
///
/// Only megaconn serves the stream: under another server the `200` head is
/// written and nothing follows. HTTP/1.1 and HTTP/1.0, in the clear or
/// over TLS, are served natively; HTTP/2 by the
/// [`fallback`](SseRoute::fallback) if set, else refused with `505`.
pub struct SseRoute<H> {
    route: Arc<Route<H>>,
}

impl<H> Clone for SseRoute<H> {
    fn clone(&self) -> Self {
        SseRoute {
            route: self.route.clone(),
        }
    }
}

impl<H> std::fmt::Debug for SseRoute<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseRoute")
            .field("settings", &self.route.settings)
            .finish_non_exhaustive()
    }
}

impl<H: SseHandler> SseRoute<H> {
    /// A route serving `handler`: a comment every
    /// [`DEFAULT_SSE_PING_INTERVAL`], no goodbye event, no fallback.
    pub fn new(handler: H) -> SseRoute<H> {
        SseRoute {
            route: Arc::new(Route {
                settings: Settings {
                    ping_interval: Some(DEFAULT_SSE_PING_INTERVAL),
                    goodbye: None,
                    fallback: None,
                },
                handler,
            }),
        }
    }

    fn settings(&mut self) -> &mut Settings {
        &mut Arc::get_mut(&mut self.route)
            .expect("configure an SseRoute before cloning it")
            .settings
    }

    /// Sends a comment line (`:` and a blank line, which clients ignore)
    /// this often, whether events went or not (a push does not move it
    /// on: a parked stream's timer is set as it parks), so that proxies keep the stream
    /// and a peer that vanished is found by the write's error. A parked
    /// stream's comment is sent by the parking lot's timer waking it (one
    /// write, then straight back). `None` or zero: never. Default
    /// [`DEFAULT_SSE_PING_INTERVAL`] (30 s).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.settings().ping_interval = crate::conn::config::zero_is_off(every);
        self
    }

    /// The event each stream gets when the server shuts down gracefully,
    /// parked or awake, before the stream ends (with the last chunk over
    /// HTTP/1.1): e.g. `SseEvent::data("restarting").event("bye").retry(10_000)`
    /// to tell clients when to reconnect. Default: none.
    pub fn goodbye(mut self, event: SseEvent) -> Self {
        self.settings().goodbye = Some(event.into_bytes());
        self
    }

    /// What answers the route's requests over HTTP/2 (and any version but
    /// HTTP/1.x), whose streams cannot be handed to this protocol: e.g.
    /// the application's own axum `Sse` handler as a service, whose events
    /// it feeds from its own channels (the [`Hub`](crate::Hub) does not
    /// reach those streams). It gets the request's head with an empty
    /// body (an `EventSource` sends none). Without one such requests get
    /// `505 HTTP Version Not Supported`.
    pub fn fallback<S, RB>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<RB>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        RB: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        RB::Error: Into<BoxError>,
    {
        let call = move |request| {
            let mut service = service.clone();
            async move {
                std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                let response = service.call(request).await?;
                Ok(response.map(|body| body.map_err(Into::into).boxed()))
            }
            .boxed()
        };
        self.settings().fallback = Some(Box::new(call));
        self
    }
}

impl<H: SseHandler, B> Service<Request<B>> for SseRoute<H> {
    type Response = Response<SseBody>;
    type Error = Infallible;
    /// Ready at once, unless the fallback answers.
    type Future = Either<
        std::future::Ready<Result<Response<SseBody>, Infallible>>,
        BoxFuture<'static, Result<Response<SseBody>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let ready = |response| Either::Left(std::future::ready(Ok(response)));
        if !matches!(request.version(), Version::HTTP_11 | Version::HTTP_10) {
            let Some(fallback) = &self.route.settings.fallback else {
                return ready(status(StatusCode::HTTP_VERSION_NOT_SUPPORTED));
            };
            return Either::Right(fallback(request.map(|_| Body::empty())));
        }
        let (parts, _body) = request.into_parts();
        match parts.method {
            Method::GET => {}
            // The head a GET would get, and no stream.
            Method::HEAD => return ready(stream_head()),
            _ => {
                let mut refused = status(StatusCode::METHOD_NOT_ALLOWED);
                let allow = HeaderValue::from_static("GET, HEAD");
                refused.headers_mut().insert(header::ALLOW, allow);
                return ready(refused);
            }
        }
        // A GET with a body (RFC 9110 gives it no meaning; an `EventSource`
        // never sends one): the stream takes the socket at its head, so
        // the body would be read as the client's bytes and close it as a
        // protocol error after a `200`. Refused instead, as an ordinary
        // response, after which the engine reads the body away.
        let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
            || parts
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|n| n.as_bytes() != b"0");
        if has_body {
            let mut refused = status(StatusCode::BAD_REQUEST);
            *refused.body_mut() = http_body_util::Full::new(Bytes::from_static(
                b"an event stream's request carries no body: send the GET without one\n",
            ))
            .map_err(|never| match never {})
            .boxed();
            return ready(refused);
        }
        let route: ErasedRoute = self.route.clone();
        let mut response = stream_head();
        // The connection is the stream's alone: once it ends (the last
        // chunk), it closes, and the client should not count on it.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
            .extensions_mut()
            .insert(NativeUpgrade(Arc::new(Opening {
                route,
                chunked: parts.version == Version::HTTP_11,
                request: Mutex::new(Some(parts)),
            })));
        ready(response)
    }
}

/// The head of an event stream (the engine adds the framing).
fn stream_head() -> Response<SseBody> {
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An empty answer with `status`.
fn status(status: StatusCode) -> Response<SseBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

/// No body.
fn empty() -> SseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl SseHandler for Quiet {}

    fn call(request: Request<Body>) -> Response<SseBody> {
        let mut route = SseRoute::new(Quiet);
        match route.call(request) {
            Either::Left(ready) => ready.into_inner().unwrap(),
            Either::Right(_) => panic!("no fallback set"),
        }
    }

    fn request(method: Method, version: Version) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        *request.method_mut() = method;
        *request.version_mut() = version;
        request
    }

    /// A GET over HTTP/1.x is a stream marked for the engine; HEAD the same
    /// head unmarked; other methods 405 naming GET and HEAD; HTTP/2
    /// without a fallback 505.
    #[test]
    fn the_route_answers_by_method_and_version() {
        for version in [Version::HTTP_11, Version::HTTP_10] {
            let got = call(request(Method::GET, version));
            assert_eq!(got.status(), StatusCode::OK);
            assert_eq!(got.headers()["content-type"], "text/event-stream");
            assert_eq!(got.headers()["cache-control"], "no-cache");
            let opening = got.extensions().get::<NativeUpgrade>().expect("marked");
            let opening = opening.0.clone().downcast::<Opening>().expect("ours");
            assert_eq!(opening.chunked, version == Version::HTTP_11);
        }
        let head = call(request(Method::HEAD, Version::HTTP_11));
        assert_eq!(head.status(), StatusCode::OK);
        assert!(head.extensions().get::<NativeUpgrade>().is_none());
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let got = call(request(method, Version::HTTP_11));
            assert_eq!(got.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(got.headers()["allow"], "GET, HEAD");
        }
        let h2 = call(request(Method::GET, Version::HTTP_2));
        assert_eq!(h2.status(), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        assert!(h2.extensions().get::<NativeUpgrade>().is_none());
    }
}
