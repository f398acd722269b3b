//! The PROXY protocol's leftovers from session 57 (session 58), over real
//! sockets with the headers written by hand (`proxy_protocol56.rs`'s
//! helpers):
//!
//! - a drain's 5 s for a cleartext HTTP/1.1 connection with no request
//!   yet count from its accept, the header's wait included (as over TLS);
//! - a proxied connection a handler upgrades and drops leaves no entry in
//!   the process's table of proxied clients;
//! - the balancer's address reaches handlers: `ProxiedBy` on HTTP/1.1
//!   (before and after a park) and HTTP/2 (h2c) requests of proxied
//!   connections only, `Session::proxied_by` on a framed connection.
//!
//! Each balancer is an address of its own (`common::own_address`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use megaconn::test_util::ClientEntry;
use megaconn::{
    Body, CloseReason, ConnInfo, ConnectionEvent, FramedHandler, Framing, OnUpgrade, ProxiedBy,
    Server, Session, TrustedProxies,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::framed_handover::ask;
use super::proxy_protocol56::{peer_seen, proxy_headers, start, v1, v2};
use crate::common::{self, connect_from, own_address, wait_stats, AppServer, SAFETY};

/// A drain's grace for a connection that asked for nothing yet.
const GRACE: Duration = Duration::from_secs(5);

/// A proxied cleartext HTTP/1.1 connection whose header came 5 s after
/// its accept, and no request after it, is closed with the drain's idle
/// connections (within a second under the grace of the drain's start),
/// as `shutdown_before_request`: its 5 s count from the accept, through
/// the header's wait, as an unproxied one's and a TLS one's do. They
/// counted from the header's end, so it was cut 5 s into the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_cleartext_connection_asking_nothing_is_cut_five_seconds_after_its_accept() {
    cut_five_seconds_after_its_accept(Server::builder()).await;
}

/// A connection through the balancer, to a server `builder` makes, whose
/// header comes 5 s after its accept and nothing after it: the drain's
/// close (within a second under the grace of the drain's start) is
/// `shutdown_before_request`, without a word, nothing forced. Returns the
/// server's counters at its end. (`proxy_protocol57.rs` runs it over TLS.)
pub(super) async fn cut_five_seconds_after_its_accept(
    builder: megaconn::Builder,
) -> megaconn::ServerStats {
    let balancer = own_address();
    let (tx, mut closes) = mpsc::unbounded_channel();
    let builder = builder
        .shutdown_timeout(Duration::from_secs(15))
        .park_idle_after(None)
        .on_connection(move |e| {
            if let ConnectionEvent::Closed { reason, .. } = e {
                let _ = tx.send(*reason);
            }
        });
    let server = start(balancer, builder);
    let mut s = connect_from((balancer, 0), server.addr()).await;
    wait_stats(&server.handle, "accepted", |s| s.accepted == 1).await;
    // The condition under test: the connection's age at its header.
    tokio::time::sleep(GRACE).await;
    s.write_all(&v1("203.0.113.80:1".parse().unwrap()))
        .await
        .unwrap();
    wait_stats(&server.handle, "the header read", |s| {
        proxy_headers(s, "ok") == 1
    })
    .await;
    let started = Instant::now();
    server.handle.shutdown();
    let reason = common::next(&mut closes, "its close").await;
    let took = started.elapsed();
    assert!(
        took < GRACE - Duration::from_secs(1),
        "closed {took:?} into the drain"
    );
    assert_eq!(reason, CloseReason::ShutdownBeforeRequest);
    let summary = tokio::time::timeout(SAFETY, server.task)
        .await
        .expect("stopped")
        .expect("joined")
        .expect("served");
    assert_eq!(summary.forced, 0, "{summary:?}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SAFETY, s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "closed without a word: {rest:?}");
    server.handle.stats()
}

/// An upgrade handler: `101`, then on the upgraded connection `up`, and
/// the connection dropped once the client sends anything.
async fn upgrade_then_drop_when_told(
    mut req: Request<Body>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .expect("an upgrade request");
    tokio::spawn(async move {
        let mut io = on_upgrade.await.expect("upgraded");
        io.write_all(b"up").await.expect("written");
        let mut told = [0u8; 1];
        let _ = io.read(&mut told).await;
        // Dropped here: the handler closes the connection.
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("echo"),
    );
    Ok(response)
}

/// A proxied HTTP/1.1 connection a handler upgrades keeps its client's
/// entry while the handler holds it, and the entry goes when the handler
/// drops it (before its socket closes: gone by the client's end of
/// stream). It stayed until the descriptor's next proxied connection, and
/// while it did every close in the process took the table's lock.
#[tokio::test]
async fn an_upgraded_proxied_connection_leaves_no_entry_when_its_handler_drops_it() {
    let balancer = own_address();
    let trusted: TrustedProxies = balancer.to_string().parse().unwrap();
    let server = AppServer::one_worker(
        Server::builder().proxy_protocol(Some(trusted)),
        tower::service_fn(upgrade_then_drop_when_told),
    );
    let client: SocketAddr = "203.0.113.81:8100".parse().unwrap();
    let mut s = connect_from((balancer, 0), server.addr()).await;
    let by = s.local_addr().unwrap();
    s.write_all(&v1(client)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    // The handler's bytes may come in the same read as the head.
    let mut up = Vec::new();
    let head = common::read_response_buffered(&mut s, &mut up, false).await;
    assert_eq!(head.status, 101, "{head:?}");
    while up.len() < 2 {
        let mut more = [0u8; 2];
        let n = tokio::time::timeout(SAFETY, s.read(&mut more))
            .await
            .expect("in time")
            .expect("the handler's bytes");
        assert!(n > 0, "closed before the handler's bytes");
        up.extend_from_slice(&more[..n]);
    }
    assert_eq!(up, b"up");
    // Watched by its socket's cookie: another test's proxied connection
    // that takes the descriptor once it is free and lets a left-over
    // entry go at its header is `GoneAfterItsSocket`, not a pass.
    let entry = megaconn::test_util::watch_proxied_client(by)
        .expect("held while the handler holds the connection");
    assert_eq!(entry.client(), client);
    assert_eq!(entry.state(), ClientEntry::Held);
    s.write_all(b"x").await.unwrap();
    assert_eq!(
        common::read_to_close(&mut s).await,
        b"",
        "the handler closed"
    );
    assert_eq!(
        entry.state(),
        ClientEntry::GoneWithItsSocket,
        "the upgraded connection's entry outlived it"
    );
    assert!(server.stop().await);
}

/// A handler that answers `<ConnInfo peer> <ProxiedBy or none>`.
async fn tell(req: Request<Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer = req.extensions().get::<ConnInfo>().map(|i| i.peer);
    let by = req.extensions().get::<ProxiedBy>().map(|b| b.0);
    let said = format!("{} {}", show(peer), show(by));
    Ok(Response::new(Full::new(Bytes::from(said))))
}

/// A server on one worker (with `connect_info`) answering with [`tell`],
/// whose balancer is `balancer`.
fn start_telling_balancer(balancer: std::net::Ipv4Addr, builder: megaconn::Builder) -> AppServer {
    let trusted: TrustedProxies = balancer.to_string().parse().unwrap();
    AppServer::one_worker(
        builder.connect_info(true).proxy_protocol(Some(trusted)),
        tower::service_fn(tell),
    )
}

fn show(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_string(), |a| a.to_string())
}

/// HTTP/1.1 requests of a proxied connection carry `ProxiedBy`, the
/// balancer's address and port, beside the client the header named, and
/// still after the connection parks and wakes; a `LOCAL` header's and an
/// untrusted source's requests carry none.
#[tokio::test]
async fn http1_requests_of_proxied_connections_carry_the_balancer() {
    let balancer = own_address();
    let server = start_telling_balancer(
        balancer,
        Server::builder().park_idle_after(Some(Duration::from_millis(1))),
    );
    let client: SocketAddr = "203.0.113.82:8200".parse().unwrap();
    let mut s = connect_from((balancer, 0), server.addr()).await;
    let by = s.local_addr().unwrap();
    s.write_all(&v1(client)).await.unwrap();
    assert_eq!(peer_seen(&mut s).await, format!("{client} {by}"));
    wait_stats(&server.handle, "parked", |s| s.connections_parked == 1).await;
    assert_eq!(
        peer_seen(&mut s).await,
        format!("{client} {by}"),
        "after a park"
    );
    let mut local = connect_from((balancer, 0), server.addr()).await;
    let own = local.local_addr().unwrap();
    local
        .write_all(&v2(0, "[::1]:1".parse().unwrap(), &[]))
        .await
        .unwrap();
    assert_eq!(peer_seen(&mut local).await, format!("{own} none"), "LOCAL");
    let mut direct = common::connect_from_own_address(server.addr()).await;
    let own = direct.local_addr().unwrap();
    assert_eq!(
        peer_seen(&mut direct).await,
        format!("{own} none"),
        "not proxied"
    );
    assert!(server.stop().await);
}

/// An h2c client with prior knowledge through the balancer: its requests
/// carry `ProxiedBy` too (HTTP/2's requests are made in the connection's
/// task, which knows its balancer).
#[tokio::test]
async fn http2_requests_of_a_proxied_connection_carry_the_balancer() {
    let balancer = own_address();
    let server = start_telling_balancer(balancer, Server::builder().http2_prior_knowledge(true));
    let client: SocketAddr = "203.0.113.83:8300".parse().unwrap();
    let mut tcp = connect_from((balancer, 0), server.addr()).await;
    let by = tcp.local_addr().unwrap();
    tcp.write_all(&v1(client)).await.unwrap();
    let said = super::proxy_protocol59::h2c_get_said(tcp).await;
    assert_eq!(said, format!("{client} {by}"));
    assert!(server.stop().await);
}

/// A line protocol whose handler answers each line with the connection's
/// `peer_addr` and `proxied_by`.
struct Tell;

impl FramedHandler for Tell {
    type State = ();

    async fn on_message(&self, _: &mut (), _: Bytes, session: &Session) -> Option<Bytes> {
        let said = format!(
            "{} {}",
            show(session.peer_addr()),
            show(session.proxied_by())
        );
        Some(Bytes::from(said))
    }
}

/// A framed connection through the balancer: its `Session` names the
/// client and the balancer; a direct one's names no balancer.
#[tokio::test]
async fn a_framed_sessions_proxied_by_is_the_balancer() {
    let balancer = own_address();
    let trusted: TrustedProxies = balancer.to_string().parse().unwrap();
    let server = Server::builder()
        .workers(1)
        .proxy_protocol(Some(trusted))
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(server.start_framed(Tell).expect("starts").run());
    let client: SocketAddr = "203.0.113.84:8400".parse().unwrap();
    let mut proxied = BufReader::new(connect_from((balancer, 0), addr).await);
    let by = proxied.get_ref().local_addr().unwrap();
    proxied.get_mut().write_all(&v1(client)).await.unwrap();
    assert_eq!(ask(&mut proxied, "who").await, format!("{client} {by}"));
    let mut direct = BufReader::new(common::connect_from_own_address(addr).await);
    let own = direct.get_ref().local_addr().unwrap();
    assert_eq!(ask(&mut direct, "who").await, format!("{own} none"));
    handle.shutdown();
    let _ = tokio::time::timeout(SAFETY, task).await.expect("stopped");
}

/// A server on one worker answering with [`tell`] on two listeners,
/// `lists` applied (both are added at `127.0.0.1:0`).
fn start_two_listeners(lists: impl FnOnce(megaconn::Builder) -> megaconn::Builder) -> AppServer {
    let at: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let builder = Server::builder()
        .workers(1)
        .connect_info(true)
        .listen_on(at)
        .listen_on(at);
    AppServer::start(lists(builder), tower::service_fn(tell))
}

/// Whether the balancer's connection to `addr` is read as proxied: its
/// header names the client (`true`), or it is answered `400` (`false`:
/// no header is read there, so its `PROXY` line is a bad request).
async fn proxied_on(balancer: std::net::Ipv4Addr, addr: SocketAddr) -> bool {
    let client: SocketAddr = "203.0.113.85:8500".parse().unwrap();
    let mut s = connect_from((balancer, 0), addr).await;
    let by = s.local_addr().unwrap();
    s.write_all(&v1(client)).await.unwrap();
    s.write_all(super::proxy_protocol56::GET).await.unwrap();
    let r = common::read_response(&mut s).await;
    match r.status {
        200 => {
            assert_eq!(r.body, format!("{client} {by}").as_bytes());
            true
        }
        400 => false,
        other => panic!("answered {other}: {r:?}"),
    }
}

/// A listener given a list of its own (`Builder::proxy_protocol_on`)
/// reads headers from its sources, whatever the server's list: none on
/// one listener of a server whose list has the balancer; the balancer on
/// one listener of a server without a list. The other listener keeps the
/// server's. A list for an address no listener was added at is refused.
#[tokio::test]
async fn a_listener_with_a_list_of_its_own() {
    let balancer = own_address();
    let trusted: TrustedProxies = balancer.to_string().parse().unwrap();
    let at: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = start_two_listeners(|b| {
        b.proxy_protocol(Some(trusted.clone()))
            .proxy_protocol_on(at, None)
    });
    let (first, second) = (server.addrs[0], server.addrs[1]);
    assert!(proxied_on(balancer, first).await, "the server's list");
    assert!(!proxied_on(balancer, second).await, "its own: none");
    assert!(server.stop().await);
    let server = start_two_listeners(|b| b.proxy_protocol_on(at, Some(trusted.clone())));
    let (first, second) = (server.addrs[0], server.addrs[1]);
    assert!(!proxied_on(balancer, first).await, "the server's: none");
    assert!(proxied_on(balancer, second).await, "its own list");
    assert!(server.stop().await);
    let unknown = Server::builder()
        .listen_on(at)
        .proxy_protocol_on("127.0.0.1:1".parse().unwrap(), None)
        .listen();
    assert!(
        matches!(&unknown, Err(megaconn::Error::Config(e)) if e.contains("proxy_protocol_on(127.0.0.1:1)")),
        "{:?}",
        unknown.err()
    );
}
