//! The PROXY protocol's leftovers from session 56 (session 57), over real
//! sockets with the headers written by hand (`proxy_protocol56.rs`'s
//! helpers):
//!
//! - the client a header named dies with its connection: a descriptor
//!   reused for the same balancer port by another server of the process
//!   (one that reads no header) never names the old client;
//! - the header's wait is bounded with `read_header_timeout` off;
//! - a drain's 5 s for a TLS connection with no request yet count from
//!   its accept, the header's wait included;
//! - an h2c client refused by the per-IP limit after its header reads a
//!   `GOAWAY`, not HTTP/1.1's `503`;
//! - a proxied client's per-IP place comes back after a park, a wake and
//!   a close;
//! - a proxied framed connection is not handed over at an upgrade.
//!
//! Each balancer is an address of its own (`common::own_address`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use megaconn::{
    CloseReason, FramedHandler, Framing, HandOverKinds, Server, Session, TrustedProxies,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::framed_handover::{ask, read_line};
use super::proxy_protocol56::{peer_seen, proxy_headers, start, start_unproxied, v1};
use super::proxy_protocol58::cut_five_seconds_after_its_accept;
use crate::common::{self, closed_as, connect_from, own_address, tls::Ca, wait_stats};

/// The balancer's connection from `from` (its port reused: the balancer
/// reuses its source ports), not connected yet.
fn socket_from(from: SocketAddr) -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(from).unwrap();
    socket
}

/// Server A reads the balancer's headers; server B, in the same process,
/// does not (its `proxy_protocol` is off). The balancer's connection to A
/// names a client and closes; its next one, from the same port, goes to
/// B, whose accept takes the lowest free descriptor: the one A's
/// connection had (its socket was made before that closed, so as not to
/// take it). B serves a request, parks it, and the request that wakes it
/// reads its peer
/// back from the socket (`ConnInfo::of`, through the client table): the
/// balancer's, never A's client. Entries used to outlive their
/// connection and were checked against the balancer's address alone.
/// (Run alone, the descriptor is reused every round; beside other tests,
/// another test's socket may take it first, and that round tests less.)
#[tokio::test]
async fn a_reused_descriptor_from_the_same_balancer_port_never_names_the_old_client() {
    let balancer = own_address();
    let a = start(balancer, Server::builder());
    let b = start_unproxied(Server::builder().park_idle_after(Some(Duration::from_millis(1))));
    for round in 0..5u64 {
        let client: SocketAddr = format!("203.0.113.57:{}", 1000 + round).parse().unwrap();
        let mut first = connect_from((balancer, 0), a.addr()).await;
        let from = first.local_addr().unwrap();
        let next = socket_from(from);
        first.write_all(&v1(client)).await.unwrap();
        assert_eq!(peer_seen(&mut first).await, client.to_string());
        // The balancer closes; A closes its side.
        first.shutdown().await.unwrap();
        wait_stats(&a.handle, "A's connection closed", |s| {
            s.closed == round + 1
        })
        .await;
        let mut second = next.connect(b.addr()).await.unwrap();
        assert_eq!(
            peer_seen(&mut second).await,
            from.to_string(),
            "at its accept"
        );
        wait_stats(&b.handle, "B's connection parked", |s| {
            s.connections_parked == 1
        })
        .await;
        assert_eq!(
            peer_seen(&mut second).await,
            from.to_string(),
            "round {round}: B named A's client for the balancer's connection"
        );
        drop(second);
        drop(first);
        wait_stats(&b.handle, "B's connection closed", |s| {
            s.closed == round + 1
        })
        .await;
    }
    assert!(a.stop().await);
    assert!(b.stop().await);
}

/// With `read_header_timeout` off, a trusted source that connects and
/// sends nothing is still closed (10 s, `PROXY_HEADER_TIMEOUT`), counted
/// `missing` and as a header timeout. It was waited for as long as it
/// kept the connection open.
#[tokio::test]
async fn with_read_header_timeout_off_a_silent_source_is_still_closed() {
    let balancer = own_address();
    let server = start(balancer, Server::builder().read_header_timeout(None));
    let mut s = connect_from((balancer, 0), server.addr()).await;
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after 60 s");
    assert!(rest.is_empty(), "closed with {rest:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed after {:?}: not by the header's bound",
        started.elapsed()
    );
    // The close is counted after the client's FIN went out.
    wait_stats(&server.handle, "counted missing, closed", |s| {
        proxy_headers(s, "missing") == 1 && closed_as(s, "header_timeout") == 1
    })
    .await;
    assert!(server.stop().await);
}

/// A proxied TLS connection whose header came 5 s after its accept, and
/// no ClientHello after it, is closed with the drain's idle connections
/// (within a second under the grace of the drain's start), as
/// `shutdown_before_request`: its 5 s count from the accept, through the
/// header's wait, as an unproxied TLS connection's do. They counted from
/// the header's end, so it was cut 5 s into the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_tls_connection_asking_nothing_is_cut_five_seconds_after_its_accept() {
    let ca = Ca::new();
    let builder = Server::builder().tls(ca.server(&["localhost"]));
    let stats = cut_five_seconds_after_its_accept(builder).await;
    assert_eq!(common::handshakes(&stats, "shutdown"), 1);
}

/// An HTTP/2 client with prior knowledge, through a balancer, refused by
/// `max_connections_per_ip` once its header named it, reads HTTP/2's
/// refusal (a `GOAWAY`, after the server's SETTINGS), as one refused at
/// the accept does: it was sent HTTP/1.1's `503`, which an HTTP/2 client
/// reads as a protocol error.
#[tokio::test]
async fn an_h2c_client_refused_after_its_header_reads_a_goaway() {
    let balancer = own_address();
    let server = start(
        balancer,
        Server::builder()
            .http2_prior_knowledge(true)
            .max_connections_per_ip(Some(1)),
    );
    let client: SocketAddr = "203.0.113.59:1".parse().unwrap();
    let mut held = connect_from((balancer, 0), server.addr()).await;
    held.write_all(&v1(client)).await.unwrap();
    assert_eq!(peer_seen(&mut held).await, client.to_string());
    let mut refused = connect_from((balancer, 0), server.addr()).await;
    let again = SocketAddr::new(client.ip(), 2);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    refused
        .write_all(&[v1(again), preface.to_vec()].concat())
        .await
        .unwrap();
    let answer = common::read_to_close(&mut refused).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Frames: a 9-byte head (24-bit length, type, flags, stream), then
    // the payload.
    let mut kinds = Vec::new();
    let mut rest = &answer[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        kinds.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert_eq!(kinds, [0x4, 0x7], "SETTINGS then GOAWAY: {answer:?}");
    assert_eq!(server.handle.stats().rejected_per_ip, 1);
    assert_eq!(peer_seen(&mut held).await, client.to_string(), "served on");
    assert!(server.stop().await);
}

/// A proxied client's place under `max_connections_per_ip` (taken once
/// its header named it) is held while its connection parks and wakes,
/// and comes back at its close: a second connection of its IP is
/// refused while it is open, parked or not, and served after.
#[tokio::test]
async fn a_proxied_clients_ip_place_comes_back_after_a_park_a_wake_and_a_close() {
    let balancer = own_address();
    let server = start(
        balancer,
        Server::builder()
            .max_connections_per_ip(Some(1))
            .park_idle_after(Some(Duration::from_millis(1))),
    );
    let client: SocketAddr = "203.0.113.60:1".parse().unwrap();
    let mut first = connect_from((balancer, 0), server.addr()).await;
    first.write_all(&v1(client)).await.unwrap();
    assert_eq!(peer_seen(&mut first).await, client.to_string());
    wait_stats(&server.handle, "parked", |s| s.connections_parked == 1).await;
    // Woken by a request, then parked again.
    assert_eq!(peer_seen(&mut first).await, client.to_string());
    wait_stats(&server.handle, "parked again", |s| {
        s.connections_parked == 1
    })
    .await;
    let mut over = connect_from((balancer, 0), server.addr()).await;
    over.write_all(&v1(SocketAddr::new(client.ip(), 2)))
        .await
        .unwrap();
    over.write_all(super::proxy_protocol56::GET).await.unwrap();
    let answer = common::read_to_close(&mut over).await;
    assert!(answer.starts_with(b"HTTP/1.1 503"), "{answer:?}");
    // The client leaves: its parked connection wakes to the close.
    drop(first);
    wait_stats(&server.handle, "closed", |s| {
        s.connections_open == 0 && s.closed == 2
    })
    .await;
    let mut back = connect_from((balancer, 0), server.addr()).await;
    let third = SocketAddr::new(client.ip(), 3);
    back.write_all(&v1(third)).await.unwrap();
    assert_eq!(
        peer_seen(&mut back).await,
        third.to_string(),
        "its place came back"
    );
    assert_eq!(server.handle.stats().rejected_per_ip, 1);
    assert!(server.stop().await);
}

/// A line protocol whose handler exports its count at a hand-over (so a
/// cleartext device would move): every line is echoed.
struct Echo {
    closes: mpsc::UnboundedSender<CloseReason>,
}

impl FramedHandler for Echo {
    type State = u64;

    async fn on_message(&self, seen: &mut u64, frame: Bytes, _: &Session) -> Option<Bytes> {
        *seen += 1;
        Some(frame)
    }

    fn on_close(&self, _: u64, reason: CloseReason) {
        let _ = self.closes.send(reason);
    }

    fn export(&self, seen: &u64) -> Option<Vec<u8>> {
        Some(seen.to_be_bytes().to_vec())
    }

    fn import(&self, bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// A parked framed device through a balancer, whose handler would export
/// its state, is not handed over at an upgrade (the next process would
/// read the balancer's address for its peer): it stays and closes as at
/// shutdown, as a proxied HTTP/1.1 connection does; a device connected
/// directly moves.
#[tokio::test]
async fn a_proxied_framed_device_stays_at_an_upgrade() {
    let balancer = own_address();
    let trusted: TrustedProxies = balancer.to_string().parse().unwrap();
    let server = Server::builder()
        .workers(1)
        .park_idle_after(Some(Duration::from_millis(20)))
        .proxy_protocol(Some(trusted))
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let (tx, mut closes) = mpsc::unbounded_channel();
    let running = server
        .start_framed(Echo { closes: tx })
        .expect("starts")
        .run();
    let task = tokio::spawn(running);
    let mut proxied = BufReader::new(connect_from((balancer, 0), addr).await);
    let header = v1("203.0.113.61:1".parse().unwrap());
    proxied.get_mut().write_all(&header).await.unwrap();
    assert_eq!(ask(&mut proxied, "hi").await, "hi");
    let mut direct = BufReader::new(common::connect_from_own_address(addr).await);
    assert_eq!(ask(&mut direct, "hello").await, "hello");
    wait_stats(&handle, "both parked", |s| s.connections_parked == 2).await;
    let moved = super::framed_handover::hand_over_and_stop(&handle, HandOverKinds::All, task).await;
    assert_eq!(moved.len(), 1, "only the direct device moves");
    let direct_peer = direct.get_ref().local_addr().unwrap();
    let moved_peer = socket2::SockRef::from(&moved[0].socket)
        .peer_addr()
        .unwrap();
    assert_eq!(moved_peer.as_socket(), Some(direct_peer), "the direct one");
    let mut reasons = vec![
        common::next(&mut closes, "a close").await,
        common::next(&mut closes, "a close").await,
    ];
    reasons.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(reasons, [CloseReason::HandedOver, CloseReason::Shutdown]);
    assert_eq!(read_line(&mut proxied).await, "", "closed");
}
