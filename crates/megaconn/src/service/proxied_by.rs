//! [`ProxiedBy`]: the load balancer a proxied request came through, as a
//! request extension beside [`ConnInfo`](crate::ConnInfo) (whose `peer`
//! is the client the balancer's PROXY header named), on HTTP/1.1 and
//! HTTP/2 alike. Only a proxied connection's requests carry it: the task
//! serving one knows its balancer (`proxy_header::ProxiedTask`), so
//! another's request asks nothing of the socket or the client table.

use std::net::SocketAddr;

/// The address of the load balancer whose PROXY protocol header named the
/// request's client ([`Builder::proxy_protocol`](crate::Builder::proxy_protocol)):
/// the connection's own peer, the balancer's address and source port.
/// [`ConnInfo::peer`](crate::ConnInfo::peer) is the client it named.
///
/// A request extension with [`Builder::connect_info`](crate::Builder::connect_info)
/// on, as `ConnInfo` is (axum: `Extension<ProxiedBy>`, or
/// `req.extensions().get::<ProxiedBy>()`), on requests of proxied
/// connections only: absent on a connection from any other source, and
/// after a v2 `LOCAL` or v1 `UNKNOWN` header (the socket's own address is
/// the peer then). A framed, WebSocket or SSE connection's handler asks
/// [`Session::proxied_by`](crate::Session::proxied_by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxiedBy(pub SocketAddr);

/// Adds [`ProxiedBy`] to a request's `extensions` when the current task
/// serves a proxied connection (a thread-local's read otherwise).
#[inline]
pub(crate) fn insert(extensions: &mut http::Extensions) {
    if let Some(by) = crate::conn::proxy_header::balancer_here() {
        extensions.insert(ProxiedBy(by));
    }
}
