//! What a heartbeat no longer pays for, and what must still hold (session
//! 52): a [`ServerHandle`] is one pointer, so a service holding one by
//! value (cloned for every connection and every wake-up of a parked one)
//! costs one reference count, and its clones still act on one server; a
//! connection woken from the parking lot borrows its worker's counters and
//! limits instead of counting references to them, and still gives its
//! places in the limits back when it closes, by itself or after an upgrade.

use crate::common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use megaconn::{Body, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{read_response, read_to_close, TestServer, SAFETY};

/// The parking servers' `park_idle_after`.
const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

/// Sends `request` on `s` and returns the response's status and body.
async fn ask(s: &mut TcpStream, request: &str) -> (u16, Vec<u8>) {
    s.write_all(request.as_bytes()).await.unwrap();
    let r = read_response(s).await;
    (r.status, r.body)
}

/// A `ServerHandle` is one pointer (it was eleven words: ten `Arc`s and an
/// option, each clone ten locked increments). A service that holds one by
/// value answers every wake-up of a parked connection through its own
/// clone, and a shutdown begun through that clone stops the server.
#[tokio::test]
async fn a_server_handle_is_one_pointer_and_its_clones_act_on_one_server() {
    assert_eq!(
        std::mem::size_of::<ServerHandle>(),
        std::mem::size_of::<usize>(),
        "a ServerHandle is one pointer"
    );
    let server = megaconn::Server::builder()
        .workers(1)
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let held = server.handle();
    let service = tower::service_fn(move |req: Request<Body>| {
        let handle = held.clone();
        async move {
            if req.uri().path() == "/stop" {
                handle.shutdown();
            }
            let body = handle.stats().requests.to_string();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    let task = tokio::spawn(server.serve(service));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut seen = 0;
    for round in 0..3 {
        let (status, body) = ask(&mut s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status, 200, "round {round}");
        let requests: u64 = String::from_utf8(body).unwrap().parse().unwrap();
        assert!(
            requests > seen,
            "round {round}: the service's clone reads the server's counters ({requests} after {seen})"
        );
        seen = requests;
        common::wait_stats(&handle, "parked", |s| s.connections_parked == 1).await;
    }
    let wakes = handle.stats();
    assert!(
        wakes.wakes_cold + wakes.wakes_hot >= 2,
        "the later requests woke a parked connection"
    );
    assert!(!handle.is_shutting_down());
    let (status, _) = ask(&mut s, "GET /stop HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(handle.is_shutting_down(), "one server behind every clone");
    let summary = tokio::time::timeout(SAFETY, task)
        .await
        .expect("the server stops")
        .expect("server task")
        .expect("serve result");
    assert_eq!(summary.forced, 0);
    assert!(read_to_close(&mut s).await.is_empty(), "closed at shutdown");
}

/// A server of one connection, one per client IP, that parks it.
async fn one_place_server() -> TestServer {
    TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(1)
            .max_connections_per_ip(Some(1))
            .park_idle_after(Some(PARK_IDLE_AFTER)),
    )
    .await
}

/// Makes `rounds` requests on `s`, each after the server parked it: each
/// one a wake-up from the lot.
async fn wake_rounds(server: &TestServer, s: &mut TcpStream, rounds: usize) {
    for round in 0..rounds {
        let (status, body) = ask(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(
            (status, &body[..]),
            (200, &b"Hello, World!"[..]),
            "round {round}"
        );
        server
            .wait_stats("parked", |s| s.connections_parked == 1)
            .await;
    }
}

/// The next connection from the same IP is served: the one place in the
/// server's limit and the IP's one place came back.
async fn assert_places_came_back(server: &TestServer, what: &str) {
    server
        .wait_stats("closed", |s| s.connections_open == 0)
        .await;
    let mut next = server.connect().await;
    let (status, _) = ask(
        &mut next,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{what}: the next connection is served");
    assert!(read_to_close(&mut next).await.is_empty());
    // Closed, and its places free again, before the test goes on.
    server
        .wait_stats("the next one closed", |s| s.connections_open == 0)
        .await;
    let stats = server.handle.stats();
    assert_eq!(stats.rejected_per_ip, 0, "{what}: the IP's place came back");
}

/// A connection woken from the lot (several times, parked again in
/// between) that closes while awake gives its place in the limit and its
/// IP's place back, as one that never parked does.
#[tokio::test]
async fn a_woken_connection_that_closes_gives_its_places_back() {
    let server = one_place_server().await;
    let mut a = server.connect().await;
    wake_rounds(&server, &mut a, 4).await;
    let (status, _) = ask(
        &mut a,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(read_to_close(&mut a).await.is_empty());
    assert_places_came_back(&server, "closed by the server after a wake-up").await;
    // A hang-up while parked: the lot hears it and the connection closes.
    let mut b = server.connect().await;
    wake_rounds(&server, &mut b, 2).await;
    drop(b);
    assert_places_came_back(&server, "hung up while parked").await;
    server.stop().await;
}

/// A connection woken from the lot and upgraded (its accounts leave the
/// worker with the upgraded socket) gives its places back when the
/// upgraded connection ends.
#[tokio::test]
async fn a_woken_connection_upgraded_gives_its_places_back_when_it_ends() {
    let server = one_place_server().await;
    let mut a = server.connect().await;
    wake_rounds(&server, &mut a, 2).await;
    let (status, _) = ask(
        &mut a,
        "GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    assert_eq!(status, 101);
    a.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(SAFETY, a.read_exact(&mut echoed))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(server.handle.stats().connections_open, 1);
    drop(a);
    assert_places_came_back(&server, "upgraded after a wake-up").await;
    server.stop().await;
}
