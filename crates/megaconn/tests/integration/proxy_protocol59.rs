//! The PROXY protocol's leftovers from session 58 (session 59), over real
//! sockets with the headers written by hand (`proxy_protocol56.rs`'s
//! helpers):
//!
//! - `ProxiedBy` on the requests of a proxied HTTP/1.1-over-TLS
//!   connection after it parks and wakes (its session back from the
//!   worker's table, `dispatch.rs` `serve_tls_woken`) with `connect_info`;
//! - with `connect_info` off, requests carry neither `ConnInfo` nor
//!   `ProxiedBy` (HTTP/1.1 before and after a park, over TLS after a wake,
//!   h2c): `ProxiedBy` rides with `ConnInfo`, as the README says, because
//!   an extension map on every proxied request costs allocations that a
//!   server behind a balancer would otherwise pay by default (session 59's
//!   review; the change that gave it without `connect_info` was reverted).
//!
//! Each balancer is an address of its own (`common::own_address`).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use megaconn::{Body, Builder, ConnInfo, ProxiedBy, Server, TrustedProxies};
use tokio::io::AsyncWriteExt;

use super::proxy_protocol56::{peer_seen, v1, v2};
use crate::common::{self, connect_from, own_address, tls::Ca, wait_stats, AppServer, SAFETY};

/// A handler that answers `<ConnInfo peer> <ProxiedBy>`, `none` for an
/// extension the request does not carry.
async fn tell(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer = req.extensions().get::<ConnInfo>().map(|i| i.peer);
    let by = req.extensions().get::<ProxiedBy>().map(|b| b.0);
    let said = format!("{} {}", show(peer), show(by));
    Ok(Response::new(Full::new(Bytes::from(said))))
}

fn show(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_string(), |a| a.to_string())
}

/// A server on one worker answering with [`tell`], `balancer` its
/// trusted source, its idle connections parked at once.
fn start(balancer: Ipv4Addr, builder: Builder, connect_info: bool) -> AppServer {
    let trusted: TrustedProxies = balancer.to_string().parse().unwrap();
    let builder = builder
        .connect_info(connect_info)
        .proxy_protocol(Some(trusted))
        .park_idle_after(Some(Duration::from_millis(1)));
    AppServer::one_worker(builder, tower::service_fn(tell))
}

/// A proxied HTTP/1.1 connection over TLS (the header before its
/// ClientHello) asks, parks, and asks again (woken, its TLS session back
/// from the worker's table): with `connect_info`, both requests carry
/// the client as `ConnInfo` and the balancer as `ProxiedBy`; without it,
/// neither.
/// Returns what the two requests said.
async fn woken_tls_requests_say(connect_info: bool) -> (String, String, SocketAddr, SocketAddr) {
    let balancer = own_address();
    let ca = Ca::new();
    let server = start(
        balancer,
        Server::builder().tls(ca.server(&["localhost"])),
        connect_info,
    );
    let client: SocketAddr = "203.0.113.90:9000".parse().unwrap();
    let mut tcp = connect_from((balancer, 0), server.addr()).await;
    let by = tcp.local_addr().unwrap();
    tcp.write_all(&v2(1, client, &[])).await.unwrap();
    let mut tls = common::tls::handshake(tcp, ca.client(&[b"http/1.1"]), "localhost")
        .await
        .expect("the handshake after the header");
    let (status, before) = common::tls::http1_get(&mut tls).await;
    assert!(status.contains("200"), "{status}");
    wait_stats(&server.handle, "parked", |s| s.connections_parked == 1).await;
    let (status, after) = common::tls::http1_get(&mut tls).await;
    assert!(status.contains("200"), "{status}");
    let stats = server.handle.stats();
    assert!(
        stats.wakes_cold + stats.wakes_hot >= 1,
        "served woken: {stats:?}"
    );
    assert!(server.stop().await);
    (before, after, client, by)
}

/// With `connect_info`: the client and the balancer, before the park and
/// after the wake.
#[tokio::test]
async fn a_woken_proxied_tls_connections_requests_carry_the_balancer() {
    let (before, after, client, by) = woken_tls_requests_say(true).await;
    assert_eq!(before, format!("{client} {by}"), "before the park");
    assert_eq!(after, format!("{client} {by}"), "after the wake");
}

/// Without `connect_info`: neither extension, before the park and after
/// the wake.
#[tokio::test]
async fn a_woken_proxied_tls_connections_requests_carry_nothing_without_connect_info() {
    let (before, after, _, _) = woken_tls_requests_say(false).await;
    assert_eq!(before, "none none", "before the park");
    assert_eq!(after, "none none", "after the wake");
}

/// With `connect_info` off, HTTP/1.1 requests of a proxied connection
/// carry neither extension, before and after a park; nor do a `LOCAL`
/// header's and an untrusted source's.
#[tokio::test]
async fn without_connect_info_http1_requests_of_proxied_connections_carry_nothing() {
    let balancer = own_address();
    let server = start(balancer, Server::builder(), false);
    let client: SocketAddr = "203.0.113.91:9100".parse().unwrap();
    let mut s = connect_from((balancer, 0), server.addr()).await;
    s.write_all(&v1(client)).await.unwrap();
    assert_eq!(peer_seen(&mut s).await, "none none");
    wait_stats(&server.handle, "parked", |s| s.connections_parked == 1).await;
    assert_eq!(peer_seen(&mut s).await, "none none", "after a park");
    let mut local = connect_from((balancer, 0), server.addr()).await;
    local
        .write_all(&v2(0, "[::1]:1".parse().unwrap(), &[]))
        .await
        .unwrap();
    assert_eq!(peer_seen(&mut local).await, "none none", "LOCAL");
    let mut direct = common::connect_from_own_address(server.addr()).await;
    assert_eq!(peer_seen(&mut direct).await, "none none", "not proxied");
    assert!(server.stop().await);
}

/// With `connect_info` off, an h2c client's requests through the
/// balancer carry neither extension either.
#[tokio::test]
async fn without_connect_info_http2_requests_of_a_proxied_connection_carry_nothing() {
    let balancer = own_address();
    let server = start(
        balancer,
        Server::builder().http2_prior_knowledge(true),
        false,
    );
    let client: SocketAddr = "203.0.113.92:9200".parse().unwrap();
    let mut tcp = connect_from((balancer, 0), server.addr()).await;
    tcp.write_all(&v1(client)).await.unwrap();
    let said = h2c_get_said(tcp).await;
    assert_eq!(said, "none none");
    assert!(server.stop().await);
}

/// One GET over HTTP/2 with prior knowledge on `tcp` (its PROXY header
/// written already): the body the server answered, bounded by
/// [`SAFETY`].
pub(super) async fn h2c_get_said(tcp: tokio::net::TcpStream) -> String {
    tokio::time::timeout(SAFETY, async {
        let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut h2 = h2.ready().await.unwrap();
        let req = Request::get("http://t/").body(()).unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut said = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            said.extend_from_slice(&chunk);
        }
        String::from_utf8(said).unwrap()
    })
    .await
    .expect("answered in time")
}
