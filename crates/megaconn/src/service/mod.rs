//! The HTTP service glue: the request body handed to services, upgrades, and
//! the one bound every protocol serves.

use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use http_body::Body as HttpBody;
use tower_service::Service;

use crate::conn::context::WorkerContext;
use crate::conn::ConnInfo;
use crate::observe::trace::{ErrorClass, SpanSlot};
use crate::service::body::Body;
use crate::BoxError;

pub(crate) mod body;
pub(crate) mod body_rate;
#[cfg(feature = "axum")]
pub(crate) mod connect_info;
pub(crate) mod draining;
pub(crate) mod grpc;
pub(crate) mod h2_body;
pub(crate) mod h2_stream;
pub(crate) mod proxied_by;
pub(crate) mod upgrade;
#[cfg(feature = "axum")]
pub mod ws_axum;

/// Fields a trailer must not carry (RFC 9110 §6.5.1: framing, routing,
/// authentication, how to process the content; hyper's list, and the
/// connection's own fields): left out of the trailers sent and of those
/// received, on HTTP/1.1 (`proto/http1/encode.rs`, `decode.rs`) and HTTP/2
/// ([`drop_not_trailers`]).
pub(crate) const NOT_TRAILERS: [HeaderName; 15] = [
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::CONNECTION,
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::CONTENT_TYPE,
    header::HOST,
    header::MAX_FORWARDS,
    header::PROXY_AUTHORIZATION,
    header::SET_COOKIE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes from `trailers` every field a trailer must not carry
/// ([`NOT_TRAILERS`]): HTTP/2's trailers, sent and received, which HTTP/1.1
/// filters as it encodes and decodes them.
pub(crate) fn drop_not_trailers(trailers: &mut HeaderMap) {
    for name in &NOT_TRAILERS {
        trailers.remove(name);
    }
}

/// Whether a field value in `fields` starts or ends with SP or HTAB, which
/// makes an HTTP/2 request malformed (RFC 9113 §8.2.1): HTTP/1.1's parser
/// trims that whitespace as optional, h2 hands it over as part of the value,
/// and an intermediary passing it on may split or join fields differently.
pub(crate) fn has_padded_value(fields: &HeaderMap) -> bool {
    fields.values().any(|v| {
        let v = v.as_bytes();
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    })
}

/// What tokio's panic says when a handler calls `block_in_place` on a
/// current-thread runtime, which every megaconn worker is.
const BLOCK_IN_PLACE_PANIC: &str =
    "can call blocking only when running on the multi-threaded runtime";

/// The message a caught panic carries, for the log line; for the panic of
/// `tokio::task::block_in_place`, what to use instead.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    let message = if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(non-string panic payload)"
    };
    if message.contains(BLOCK_IN_PLACE_PANIC) {
        return "tokio::task::block_in_place is not available on megaconn's workers \
                (one current-thread runtime per core): run blocking work with \
                tokio::task::spawn_blocking and await its handle";
    }
    message
}

/// Gives a request its connection's addresses: megaconn's [`ConnInfo`]
/// (and, on a proxied connection, the balancer's:
/// [`ProxiedBy`](crate::ProxiedBy)) and,
/// with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (so the
/// extractor works as under `axum::serve` with connect info), and with the
/// `tonic` feature tonic's `TcpConnectInfo`, what its
/// `Request::remote_addr()` and `local_addr()` read (first; then its
/// `TlsConnectInfo`, whose fields are private, so over TLS too megaconn
/// gives the `TcpConnectInfo`: the addresses are the same). tonic honours
/// no other extension for them. Its `peer_certs()` reads only
/// `TlsConnectInfo` and stays `None`: a client's chain is megaconn's
/// [`PeerCertificates`](crate::PeerCertificates) extension.
pub(crate) fn insert_conn_info(extensions: &mut http::Extensions, info: ConnInfo) {
    #[cfg(feature = "axum")]
    extensions.insert(axum::extract::ConnectInfo(info.peer));
    #[cfg(feature = "tonic")]
    extensions.insert(tonic::transport::server::TcpConnectInfo {
        local_addr: Some(info.local),
        remote_addr: Some(info.peer),
    });
    extensions.insert(info);
    // A proxied connection's balancer, beside the client it named.
    proxied_by::insert(extensions);
}

/// What megaconn serves: a [`tower_service::Service`] that takes an
/// `http::Request<`[`Body`]`>` and answers an `http::Response` whose body
/// streams [`Bytes`], with errors that box. An axum `Router`, a
/// `tower::service_fn` or a tonic server all are. One bound, written once
/// (hyper's `service/http.rs` is the model); sealed: implemented for every
/// such service and nothing else, so the bound can grow without breaking
/// anyone.
pub trait HttpService: sealed::Sealed {
    /// The response body.
    type ResBody: HttpBody<Data = Bytes, Error = Self::BodyError>;
    /// The response body's error.
    type BodyError: Into<BoxError>;
    /// The service's error (answered with 503 from `poll_ready`; a call
    /// that fails is a 500).
    type Error: Into<BoxError>;
    /// The future of one call.
    type Future: Future<Output = Result<Response<Self::ResBody>, Self::Error>>;

    /// `Service::poll_ready`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

    /// `Service::call`.
    fn call(&mut self, request: Request<Body>) -> Self::Future;
}

impl<S, B> HttpService for S
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type ResBody = B;
    type BodyError = B::Error;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(self, cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Service::call(self, request)
    }
}

/// What `serve` (and [`Server::start`](crate::Server::start)) takes: an
/// [`HttpService`] (an axum `Router`, any tower service of
/// `http::Request<`[`Body`]`>`), or, with the `axum` feature, axum's
/// make-services of one, what `axum::serve` is usually given:
/// `app.into_make_service()`,
/// `ServiceExt::<Request>::into_make_service(layer.layer(app))`, and
/// `app.into_make_service_with_connect_info::<C>()`, copied as they are.
/// With the last, requests carry `ConnectInfo<C>` made from the peer's
/// `SocketAddr` (so `C` is `SocketAddr`, or a type of the app's that
/// implements `Connected<SocketAddr>`) and megaconn's own
/// [`ConnInfo`], as with [`Builder::connect_info`](crate::Builder::connect_info),
/// which it turns on. `M` only tells the implementations apart; sealed like
/// [`HttpService`].
#[diagnostic::on_unimplemented(
    message = "megaconn cannot serve `{Self}`",
    label = "not a service megaconn serves",
    note = "megaconn serves a tower Service of `http::Request<megaconn::Body>` (an axum `Router`), \
            axum's `IntoMakeService` of one, or its `IntoMakeServiceWithConnectInfo<_, C>` \
            where `C: Connected<SocketAddr>` (axum's `IncomingStream` exists only inside \
            `axum::serve`: a `Connected<IncomingStream<..>>` type needs \
            `impl Connected<SocketAddr>` too)"
)]
pub trait IntoHttpService<M>: sealed::SealedInto<M> {
    /// The service served, cloned for each connection.
    type Service: HttpService<Future: 'static, ResBody: 'static> + Clone + Send + 'static;

    /// Whether requests must carry their connection's addresses
    /// ([`Builder::connect_info`](crate::Builder::connect_info) is then on
    /// whatever it was set to).
    const CONNECT_INFO: bool = false;

    /// The service to serve.
    fn into_http_service(self) -> Self::Service;
}

/// What tells [`IntoHttpService`]'s implementations apart (never named).
pub mod into_marker {
    /// The service itself.
    #[derive(Debug)]
    pub enum Service {}
    /// axum's `IntoMakeService` of it.
    #[derive(Debug)]
    pub enum MakeService {}
    /// axum's `IntoMakeServiceWithConnectInfo` of it.
    #[derive(Debug)]
    pub enum MakeServiceWithConnectInfo {}
}

impl<S> IntoHttpService<into_marker::Service> for S
where
    S: HttpService<Future: 'static, ResBody: 'static> + Clone + Send + 'static,
{
    type Service = S;

    fn into_http_service(self) -> S {
        self
    }
}

/// axum's make-service hands out a clone of the service it holds for each
/// connection, and its future is ready at once (`std::future::ready`):
/// taking that clone once here serves what `axum::serve` would.
#[cfg(feature = "axum")]
impl<S> IntoHttpService<into_marker::MakeService> for axum::routing::IntoMakeService<S>
where
    S: HttpService<Future: 'static, ResBody: 'static> + Clone + Send + 'static,
{
    type Service = S;

    fn into_http_service(mut self) -> S {
        use std::future::Future as _;
        let mut made = Service::<()>::call(&mut self, ());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut made).poll(&mut cx) {
            Poll::Ready(Ok(service)) => service,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => unreachable!("axum's IntoMakeService is ready at once"),
        }
    }
}

/// axum's make-service with connect info makes, for each connection, a
/// service that gives its requests `ConnectInfo<C>`: served as
/// `WithConnectInfo` (`service/connect_info.rs`), which makes it from each connection's
/// peer address (so requests must carry it: `CONNECT_INFO`).
#[cfg(feature = "axum")]
impl<S, C, B> IntoHttpService<into_marker::MakeServiceWithConnectInfo>
    for axum::extract::connect_info::IntoMakeServiceWithConnectInfo<S, C>
where
    S: tower_service::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
    C: axum::extract::connect_info::Connected<std::net::SocketAddr>,
{
    type Service = connect_info::WithConnectInfo<S, C>;

    const CONNECT_INFO: bool = true;

    fn into_http_service(self) -> Self::Service {
        connect_info::WithConnectInfo::new(self)
    }
}

mod sealed {
    /// Only the blanket implementation above implements [`HttpService`](super::HttpService).
    pub trait Sealed {}

    /// Only the implementations above implement
    /// [`IntoHttpService`](super::IntoHttpService).
    pub trait SealedInto<M> {}

    impl<S> SealedInto<super::into_marker::Service> for S where
        S: super::HttpService + Clone + Send + 'static
    {
    }

    #[cfg(feature = "axum")]
    impl<S> SealedInto<super::into_marker::MakeService> for axum::routing::IntoMakeService<S> where
        S: super::HttpService + Clone + Send + 'static
    {
    }

    #[cfg(feature = "axum")]
    impl<S, C> SealedInto<super::into_marker::MakeServiceWithConnectInfo>
        for axum::extract::connect_info::IntoMakeServiceWithConnectInfo<S, C>
    where
        S: Clone + Send + 'static,
        C: axum::extract::connect_info::Connected<std::net::SocketAddr>,
    {
    }

    impl<S, B> Sealed for S where
        S: tower_service::Service<http::Request<crate::Body>, Response = http::Response<B>>
    {
    }
}

/// Waits until `service` is ready to take a request; see [`readiness`].
#[inline]
pub(crate) async fn ready<S: HttpService>(service: &mut S) -> bool {
    readiness(std::future::poll_fn(|cx| service.poll_ready(cx)).await)
}

/// What a service's `poll_ready` answered: on its error, logs it and returns
/// `false`: the protocol answers `503` (h1 and h2 alike).
pub(crate) fn readiness<E: Into<BoxError>>(ready: Result<(), E>) -> bool {
    match ready {
        Ok(()) => true,
        Err(e) => {
            let e: BoxError = e.into();
            tracing::warn!(error = %e, "service not ready; answering 503");
            false
        }
    }
}

/// Calls `service` with `request`, catching a panic in `call` itself (a
/// panic in the future it returns is the protocol's to catch as it polls).
/// On a panic, counts and logs it and returns `None`: the protocol answers
/// `500` (h1 and h2 alike), or a gRPC call `grpc-status: 13`
/// (`service/grpc.rs`). (HTTP/1.1 calls [`call_into`] instead.)
///
/// First the request's span starts, if the server traces (`secure`: the
/// connection is TLS, for `url.scheme`; `addrs`: the connection's
/// addresses, asked only when the request is traced): its context goes
/// into the request's extensions for the handler, and the span comes back
/// for the protocol to put in the request's `RequestRecord`. Without
/// tracing this is one branch.
#[inline]
pub(crate) fn call<S: HttpService>(
    service: &mut S,
    mut request: Request<Body>,
    ctx: &WorkerContext,
    secure: bool,
    addrs: impl FnOnce() -> Option<ConnInfo>,
) -> (Option<S::Future>, SpanSlot) {
    let mut span = SpanSlot::start(&ctx.config.tracing, &mut request, secure, || {
        addrs().map(span_addrs)
    });
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.call(request))) {
        Ok(future) => (Some(future), span),
        Err(panic) => {
            call_panicked(ctx, &panic, &mut span);
            (None, span)
        }
    }
}

/// [`call`] with the request built in place: a request of `body` that
/// `fill` completes (method, target, headers, extensions), and whose future
/// `place` puts where the protocol polls it. Returns whether the service
/// was called (`false`: its `call` panicked, as for [`call`]'s `None`).
///
/// Why: what goes through `catch_unwind` by value is copied on the way, in
/// and out. Here the request (312 bytes) is built where the service's
/// `call` takes it, where passed in it was copied twice first, and the
/// future (an app's answer, often, already inside it: 200 bytes for the
/// demo's) goes where the protocol polls it, where returned it was moved
/// three times first: HTTP/1.1 saved ~250 user-space instructions a
/// request (bench/CPU-PER-REQUEST.md, session 38).
///
/// `fill` must neither panic nor hand the request's address to a function
/// (it only moves in what the protocol parsed and made: an `Extensions`
/// is made before, apart, and moved in whole). Then the request's only
/// way out is the service's `call`, and LLVM builds it in the very memory
/// that `call` is handed; a request that something else may see (a
/// function given `&mut` of it or of a field, an unwind that drops it)
/// was built apart and copied there (a call to `memcpy`, 64 user-space
/// instructions a request; bench/CPU-PER-REQUEST.md, session 56). So a
/// traced request, whose span reads the request and puts its context in
/// it, is called by a function of its own ([`call_traced`]).
#[inline(always)]
pub(crate) fn call_into<S: HttpService>(
    service: &mut S,
    ctx: &WorkerContext,
    secure: bool,
    addrs: impl FnOnce() -> Option<ConnInfo>,
    body: Body,
    fill: impl FnOnce(&mut Request<Body>),
    place: impl FnOnce(S::Future),
) -> (bool, SpanSlot) {
    if traces(ctx) {
        return call_traced(service, ctx, secure, addrs, body, fill, place);
    }
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut request = Request::new(body);
        fill(&mut request);
        place(service.call(request))
    }));
    let mut span = SpanSlot::default();
    if let Err(panic) = called {
        call_panicked(ctx, &panic, &mut span);
        return (false, span);
    }
    (true, span)
}

/// Whether the server traces requests (a request's span is then started
/// before its service is called, [`call_traced`]).
#[inline(always)]
fn traces(ctx: &WorkerContext) -> bool {
    #[cfg(feature = "otel")]
    return ctx.config.tracing.is_some();
    #[cfg(not(feature = "otel"))]
    {
        let _ = ctx;
        false
    }
}

/// [`call_into`] for a server that traces: first the request's span
/// starts (its context goes into the request's extensions for the
/// handler), and the span comes back for the protocol to put in the
/// request's `RequestRecord`. A function of its own, so that the request
/// the span is handed is not the untraced request's (see `call_into`).
#[inline(never)]
fn call_traced<S: HttpService>(
    service: &mut S,
    ctx: &WorkerContext,
    secure: bool,
    addrs: impl FnOnce() -> Option<ConnInfo>,
    body: Body,
    fill: impl FnOnce(&mut Request<Body>),
    place: impl FnOnce(S::Future),
) -> (bool, SpanSlot) {
    let mut span = SpanSlot::default();
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut request = Request::new(body);
        fill(&mut request);
        span = SpanSlot::start(&ctx.config.tracing, &mut request, secure, || {
            addrs().map(span_addrs)
        });
        place(service.call(request))
    }));
    match called {
        Ok(()) => (true, span),
        Err(panic) => {
            call_panicked(ctx, &panic, &mut span);
            (false, span)
        }
    }
}

/// A connection's addresses as its requests' spans name them.
fn span_addrs(info: ConnInfo) -> crate::observe::trace::Addrs {
    crate::observe::trace::Addrs {
        peer: info.peer,
        local: info.local,
    }
}

/// A service's `call` panicked: counted, logged, and its span says so.
/// (Apart and cold: [`call_into`] is inlined where it is called.)
#[cold]
#[inline(never)]
fn call_panicked(ctx: &WorkerContext, panic: &Box<dyn std::any::Any + Send>, span: &mut SpanSlot) {
    crate::observe::stats::incr(&ctx.stats.panics);
    crate::observe::ratelog::panicked(
        "handler panicked; answering 500 (gRPC: grpc-status 13)",
        Some(panic_message(panic)),
    );
    span.error(ErrorClass::Panic);
}
