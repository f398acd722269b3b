//! axum's `app.into_make_service_with_connect_info::<C>()` served by
//! megaconn: the service [`IntoHttpService`](super::IntoHttpService) turns
//! it into ([`WithConnectInfo`]), which hands each request axum's
//! `ConnectInfo<C>` made from the connection's peer address, as
//! `axum::serve` does.
//!
//! `axum::serve` calls the make-service once per connection with axum's
//! `IncomingStream` (the accepted stream and its peer address) and serves
//! the connection with the `AddExtension` it returns. megaconn cannot make
//! an `IncomingStream` (axum keeps its fields and constructor private) and
//! keeps no service while a connection is parked, so it calls the
//! make-service with the peer's `SocketAddr` (axum's own
//! `Connected<SocketAddr> for SocketAddr`), at a connection's first request
//! and again after the connection wakes from the parking lot, from the
//! [`ConnInfo`] the protocol put in the request (`IntoHttpService`'s
//! `CONNECT_INFO` turns `Builder::connect_info` on for it). A custom `C`
//! works if it implements `Connected<SocketAddr>`; one that implements only
//! `Connected<IncomingStream<'_, TcpListener>>` does not compile here.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::connect_info::{ConnectInfo, Connected, IntoMakeServiceWithConnectInfo};
use axum::middleware::AddExtension;
use http::{Request, Response};
use tower_service::Service;

use crate::conn::ConnInfo;
use crate::service::body::Body;
use crate::BoxError;

/// What megaconn serves for axum's `into_make_service_with_connect_info`:
/// each request goes to the service the make-service made for the
/// connection's peer, whose `AddExtension` gives it `ConnectInfo<C>`.
/// Made by [`IntoHttpService`](super::IntoHttpService); never built by hand.
pub struct WithConnectInfo<S, C> {
    make: IntoMakeServiceWithConnectInfo<S, C>,
    /// The service made for this connection, and the peer it was made for.
    /// A clone starts without one: megaconn clones the service for each
    /// connection (and each wake), and the next peer is another.
    made: Option<(SocketAddr, AddExtension<S, ConnectInfo<C>>)>,
}

impl<S, C> WithConnectInfo<S, C> {
    pub(crate) fn new(make: IntoMakeServiceWithConnectInfo<S, C>) -> Self {
        WithConnectInfo { make, made: None }
    }
}

impl<S: Clone, C> Clone for WithConnectInfo<S, C> {
    fn clone(&self) -> Self {
        WithConnectInfo {
            make: self.make.clone(),
            made: None,
        }
    }
}

impl<S, C> std::fmt::Debug for WithConnectInfo<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithConnectInfo")
            .field("peer", &self.made.as_ref().map(|(peer, _)| peer))
            .finish()
    }
}

/// A request without its connection's addresses: the peer's socket was
/// closed before megaconn could read its address, so no `ConnectInfo` can
/// be made (a `500` nobody reads: the client is gone).
#[derive(Debug, thiserror::Error)]
#[error(
    "into_make_service_with_connect_info: the connection's peer address is unknown \
     (its socket closed before it could be read), so no ConnectInfo can be made"
)]
pub(crate) struct NoPeerAddress;

impl<S, C, B> Service<Request<Body>> for WithConnectInfo<S, C>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    C: Connected<SocketAddr>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = ConnectInfoFuture<AddExtension<S, ConnectInfo<C>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.made {
            Some((_, service)) => service.poll_ready(cx).map_err(Into::into),
            // Made, and waited for, with the first request (`call`).
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(peer) = request.extensions().get::<ConnInfo>().map(|i| i.peer) else {
            return ConnectInfoFuture::NoPeer;
        };
        match &mut self.made {
            Some((made_for, service)) if *made_for == peer => ConnectInfoFuture::Called {
                future: service.call(request),
            },
            _ => {
                let service = make(&mut self.make, peer);
                self.made = Some((peer, service.clone()));
                // Not yet ready: `poll_ready` had nothing to wait for. The
                // future waits, on a clone, as `axum::serve` waits for each
                // request's clone.
                ConnectInfoFuture::Readying {
                    service,
                    request: Some(request),
                }
            }
        }
    }
}

/// axum's make-service for `peer`: its future is ready at once
/// (`std::future::ready`).
fn make<S: Clone, C: Connected<SocketAddr>>(
    make: &mut IntoMakeServiceWithConnectInfo<S, C>,
    peer: SocketAddr,
) -> AddExtension<S, ConnectInfo<C>> {
    let mut made = Service::<SocketAddr>::call(make, peer);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut made).poll(&mut cx) {
        Poll::Ready(Ok(service)) => service,
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => unreachable!("axum's IntoMakeServiceWithConnectInfo is ready at once"),
    }
}

pin_project_lite::pin_project! {
    /// The future of one request to [`WithConnectInfo`].
    #[project = Step]
    pub enum ConnectInfoFuture<M, F> {
        /// The connection's first request: its service `M` just made,
        /// waited for, then called.
        Readying { service: M, request: Option<Request<Body>> },
        /// Called.
        Called { #[pin] future: F },
        /// The request has no peer address ([`NoPeerAddress`]).
        NoPeer,
    }
}

impl<M, F, B, E> Future for ConnectInfoFuture<M, F>
where
    M: Service<Request<Body>, Response = Response<B>, Error = E, Future = F>,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                Step::Readying { service, request } => {
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let request = request.take().expect("called once");
                    let future = service.call(request);
                    self.set(ConnectInfoFuture::Called { future });
                }
                Step::Called { future } => return future.poll(cx).map_err(Into::into),
                Step::NoPeer => return Poll::Ready(Err(Box::new(NoPeerAddress))),
            }
        }
    }
}
