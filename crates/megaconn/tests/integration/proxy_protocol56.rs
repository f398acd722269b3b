//! The PROXY protocol from trusted load balancers (`Builder::proxy_protocol`,
//! session 56), over real sockets, with the headers written by hand: the
//! client a v1 or v2 header names reaches a handler's `ConnInfo` (after a
//! park too) and the `on_connection` hook; a trusted source without a
//! header is closed and counted; an untrusted source's header is its bytes
//! (`400`), its own address kept; v2 `LOCAL` keeps the socket's address; a
//! header split across reads; a header before a TLS ClientHello; an
//! oversized header refused; `max_connections_per_ip` counting the
//! clients, not the balancer.
//!
//! Each "balancer" and each untrusted client is an address of its own in
//! 127.1.0.0/16 (`common::own_address`): the tests of this binary share
//! nothing by address.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use megaconn::{Body, Builder, ConnInfo, ConnectionEvent, ServerStats, TrustedProxies};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    self, connect_from, own_address, read_response, read_to_close, tls::Ca, wait_stats, AppServer,
    SAFETY,
};

/// A server on one worker whose handler answers the client's address as
/// its `ConnInfo` gives it; the balancer at `trusted` sends PROXY headers.
pub(super) fn start(trusted: Ipv4Addr, builder: Builder) -> AppServer {
    let trusted: TrustedProxies = trusted.to_string().parse().unwrap();
    start_unproxied(builder.proxy_protocol(Some(trusted)))
}

/// A server on one worker whose handler answers the client's address as
/// its `ConnInfo` gives it, as `builder` says (with `connect_info`).
pub(super) fn start_unproxied(builder: Builder) -> AppServer {
    let service = tower::service_fn(|req: Request<Body>| async move {
        let peer = req
            .extensions()
            .get::<ConnInfo>()
            .map_or_else(|| "none".to_string(), |i| i.peer.to_string());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(peer))))
    });
    AppServer::one_worker(builder.connect_info(true), service)
}

/// A v1 header naming `client` as the source.
pub(super) fn v1(client: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let dest = if client.is_ipv4() {
        "10.0.0.1"
    } else {
        "fd00::1"
    };
    format!(
        "PROXY {family} {} {dest} {} 443\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header: `command` (0 LOCAL, 1 PROXY), naming `client` (IPv6,
/// TCP) with `tlvs` after the addresses.
pub(super) fn v2(command: u8, client: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    let mut body = Vec::new();
    match client {
        SocketAddr::V4(c) => {
            h.push(0x11);
            body.extend_from_slice(&c.ip().octets());
            body.extend_from_slice(&[10, 0, 0, 1]);
        }
        SocketAddr::V6(c) => {
            h.push(0x21);
            body.extend_from_slice(&c.ip().octets());
            body.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        }
    }
    body.extend_from_slice(&client.port().to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(tlvs);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

pub(super) const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// One request on `s`: the address the handler saw.
pub(super) async fn peer_seen(s: &mut TcpStream) -> String {
    s.write_all(GET).await.unwrap();
    let r = read_response(s).await;
    assert_eq!(r.status, 200, "{r:?}");
    String::from_utf8(r.body).unwrap()
}

pub(super) fn proxy_headers(stats: &ServerStats, result: &str) -> u64 {
    stats
        .proxy_headers
        .iter()
        .find(|(label, _)| *label == result)
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("no result {result} in {:?}", stats.proxy_headers))
}

/// A v1 header's client is the request's `ConnInfo` and the hook's
/// `Opened` peer, and stays the connection's after it parks and wakes
/// (the lot keeps no address: `proxy_header::peer_of` finds it).
#[tokio::test]
async fn a_v1_header_names_the_client_before_and_after_a_park() {
    let balancer = own_address();
    let opened = Arc::new(Mutex::new(Vec::new()));
    let seen = opened.clone();
    let builder = megaconn::Server::builder()
        .park_idle_after(Some(Duration::from_millis(1)))
        .on_connection(move |e| {
            if let ConnectionEvent::Opened { peer, .. } = e {
                seen.lock().unwrap().push(*peer);
            }
        });
    let server = start(balancer, builder);
    let client: SocketAddr = "203.0.113.7:51234".parse().unwrap();
    let mut s = connect_from((balancer, 0), server.addr()).await;
    s.write_all(&v1(client)).await.unwrap();
    assert_eq!(peer_seen(&mut s).await, client.to_string());
    assert_eq!(*opened.lock().unwrap(), [client], "the hook's peer");
    // Parked, then woken by the next request.
    wait_stats(&server.handle, "the connection parked", |s| {
        s.connections_parked == 1
    })
    .await;
    assert_eq!(peer_seen(&mut s).await, client.to_string(), "after a park");
    let stats = server.handle.stats();
    assert_eq!(proxy_headers(&stats, "ok"), 1);
    assert!(server.stop().await);
}

/// A v2 header (IPv6, with TLVs, which are skipped) names the client;
/// split across reads, it is waited for.
#[tokio::test]
async fn a_v2_header_split_across_reads_names_the_client() {
    let balancer = own_address();
    let server = start(balancer, megaconn::Server::builder());
    let client: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    // An AWS-like TLV (0xEA, VPC endpoint id) and a NOOP.
    let tlvs = [&[0xEA, 0x00, 0x05][..], b"vpce-", &[0x04, 0x00, 0x01, 0x00]].concat();
    let header = v2(1, client, &tlvs);
    let mut s = connect_from((balancer, 0), server.addr()).await;
    let cuts = [5, 14, 20, header.len() - 1];
    common::write_in_pieces(&mut s, &header, &cuts, Duration::from_millis(20)).await;
    assert_eq!(peer_seen(&mut s).await, client.to_string());
    assert_eq!(proxy_headers(&server.handle.stats(), "ok"), 1);
    assert!(server.stop().await);
}

/// A trusted source that sends a request without a header is closed
/// unanswered and counted `missing`; one that closes before its header
/// too; the server serves on.
#[tokio::test]
async fn a_trusted_source_without_a_header_is_closed_and_counted() {
    let balancer = own_address();
    let server = start(balancer, megaconn::Server::builder());
    let mut s = connect_from((balancer, 0), server.addr()).await;
    s.write_all(GET).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, b"", "closed without an answer");
    let mut s = connect_from((balancer, 0), server.addr()).await;
    s.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut s).await, b"");
    wait_stats(&server.handle, "two missing headers", |s| {
        proxy_headers(s, "missing") == 2
    })
    .await;
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "protocol_error"), 1, "{stats:?}");
    let mut s = connect_from((balancer, 0), server.addr()).await;
    s.write_all(&v1("198.51.100.1:1".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(peer_seen(&mut s).await, "198.51.100.1:1", "serves on");
    assert!(server.stop().await);
}

/// From a source not in `proxy_protocol` a header is not read: an HTTP
/// client's `PROXY` line is answered `400`, and its own address is the
/// one its requests carry.
#[tokio::test]
async fn an_untrusted_sources_header_is_a_bad_request_and_its_address_stays() {
    let balancer = own_address();
    let server = start(balancer, megaconn::Server::builder());
    let stranger = own_address();
    let mut s = connect_from((stranger, 0), server.addr()).await;
    s.write_all(&v1("203.0.113.9:1".parse().unwrap()))
        .await
        .unwrap();
    s.write_all(GET).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 400, "{r:?}");
    let mut s = connect_from((stranger, 0), server.addr()).await;
    let own = s.local_addr().unwrap().to_string();
    assert_eq!(peer_seen(&mut s).await, own);
    let stats = server.handle.stats();
    assert!(
        stats.proxy_headers.iter().all(|(_, n)| *n == 0),
        "{stats:?}"
    );
    assert!(server.stop().await);
}

/// A v2 `LOCAL` header (a balancer's health check) keeps the socket's
/// address, and is counted `local`.
#[tokio::test]
async fn a_v2_local_header_keeps_the_sockets_address() {
    let balancer = own_address();
    let server = start(balancer, megaconn::Server::builder());
    let mut s = connect_from((balancer, 0), server.addr()).await;
    let own = s.local_addr().unwrap().to_string();
    s.write_all(&v2(0, "[::1]:1".parse().unwrap(), &[]))
        .await
        .unwrap();
    assert_eq!(peer_seen(&mut s).await, own);
    assert_eq!(proxy_headers(&server.handle.stats(), "local"), 1);
    assert!(server.stop().await);
}

/// A v2 header announcing more than `MAX_PROXY_HEADER_BYTES` is refused
/// from its first 16 bytes: closed, counted `too_large`.
#[tokio::test]
async fn an_oversized_header_is_refused() {
    let balancer = own_address();
    let server = start(balancer, megaconn::Server::builder());
    let client: SocketAddr = "203.0.113.7:1".parse().unwrap();
    let tlv = [&[0x04, 0x07, 0xD0][..], &[0u8; 2000]].concat(); // NOOP, 2000 bytes
    let mut s = connect_from((balancer, 0), server.addr()).await;
    s.write_all(&v2(1, client, &tlv)[..16]).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, b"");
    wait_stats(&server.handle, "too large", |s| {
        proxy_headers(s, "too_large") == 1
    })
    .await;
    // A protocol error, as every protocol's refusal of bad bytes is.
    assert_eq!(server.handle.stats().protocol_errors, 1);
    assert!(server.stop().await);
}

/// On a TLS listener the header comes before the ClientHello: read and
/// consumed, the handshake goes on, and the request names the client.
#[tokio::test]
async fn a_header_before_a_tls_client_hello() {
    let balancer = own_address();
    let ca = Ca::new();
    let server = start(
        balancer,
        megaconn::Server::builder().tls(ca.server(&["localhost"])),
    );
    let client: SocketAddr = "203.0.113.44:4444".parse().unwrap();
    let mut tcp = connect_from((balancer, 0), server.addr()).await;
    tcp.write_all(&v2(1, client, &[])).await.unwrap();
    let mut tls = common::tls::handshake(tcp, ca.client(&[b"http/1.1"]), "localhost")
        .await
        .expect("the handshake after the header");
    let (status, body) = common::tls::http1_get(&mut tls).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, client.to_string());
    assert_eq!(proxy_headers(&server.handle.stats(), "ok"), 1);
    assert!(server.stop().await);
}

/// `max_connections_per_ip` counts the clients the headers name, not the
/// balancer: two clients through one balancer are both served under a
/// limit of one, and a second connection of the first is refused (`503`),
/// counted as the accept's refusals are.
#[tokio::test]
async fn the_per_ip_limit_counts_the_clients_not_the_balancer() {
    let balancer = own_address();
    let server = start(
        balancer,
        megaconn::Server::builder().max_connections_per_ip(Some(1)),
    );
    let first: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let second: SocketAddr = "203.0.113.2:1000".parse().unwrap();
    let mut a = connect_from((balancer, 0), server.addr()).await;
    a.write_all(&v1(first)).await.unwrap();
    assert_eq!(peer_seen(&mut a).await, first.to_string());
    let mut b = connect_from((balancer, 0), server.addr()).await;
    b.write_all(&v1(second)).await.unwrap();
    assert_eq!(
        peer_seen(&mut b).await,
        second.to_string(),
        "another client"
    );
    let mut again = connect_from((balancer, 0), server.addr()).await;
    again
        .write_all(&v1("203.0.113.1:1001".parse().unwrap()))
        .await
        .unwrap();
    again.write_all(GET).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SAFETY, again.read_to_end(&mut answer))
        .await
        .expect("closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(server.handle.stats().rejected_per_ip, 1);
    // The two first are still served.
    assert_eq!(peer_seen(&mut a).await, first.to_string());
    assert_eq!(peer_seen(&mut b).await, second.to_string());
    assert!(server.stop().await);
}
