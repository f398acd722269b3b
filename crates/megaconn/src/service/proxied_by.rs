//! [`ProxiedBy`]: the load balancer a proxied request came through, as a
//! request extension (beside [`ConnInfo`](crate::ConnInfo), whose `peer`
//! is the client the balancer's PROXY header named, when
//! `connect_info` is on), on HTTP/1.1 and HTTP/2 alike. Only a proxied
//! connection's requests carry it: the task serving one knows its
//! balancer (`proxy_header::ProxiedTask`), so another's request asks
//! nothing of the socket or the client table.
//!
//! Why with `connect_info` off too: it was given beside `ConnInfo`,
//! whose cost falls on every connection (its box, and two system calls
//! at each wake from the parking lot), so an application that wanted
//! only to know its balancer had to pay that for all of them, and
//! without it found no `ProxiedBy` and no word why. `ProxiedBy`'s own
//! cost is another's: nothing on a server that reads no PROXY header
//! (two loads of its settings a request); on one that does, a
//! thread-local's read a request (the task's `ProxiedTask`), and at a
//! wake a look in the client table (one atomic load while no proxied
//! connection is open; else its lock and a probe, which every close
//! already takes then, and for a proxied socket its cookie, one
//! `getsockopt`: `proxy_clients::balancer_of`).

use std::net::SocketAddr;

/// The address of the load balancer whose PROXY protocol header named the
/// request's client ([`Builder::proxy_protocol`](crate::Builder::proxy_protocol)):
/// the connection's own peer, the balancer's address and source port.
/// [`ConnInfo::peer`](crate::ConnInfo::peer) is the client it named.
///
/// A request extension (axum: `Extension<ProxiedBy>`, or
/// `req.extensions().get::<ProxiedBy>()`), with
/// [`Builder::connect_info`](crate::Builder::connect_info) on or off, on
/// requests of proxied connections only: absent on a connection from any
/// other source, and
/// after a v2 `LOCAL` or v1 `UNKNOWN` header (the socket's own address is
/// the peer then). A framed, WebSocket or SSE connection's handler asks
/// [`Session::proxied_by`](crate::Session::proxied_by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxiedBy(pub SocketAddr);

/// The [`ProxiedBy`] of a request the current task reads, on a server
/// with `config`: its balancer when the task serves a proxied connection;
/// `None` at once when no listener reads PROXY headers, else after a
/// thread-local's read.
#[inline]
pub(crate) fn here(config: &crate::conn::config::Config) -> Option<ProxiedBy> {
    if !config.reads_proxy_headers() {
        return None;
    }
    crate::conn::proxy_header::balancer_here().map(ProxiedBy)
}
