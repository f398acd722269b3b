//! Leaving gracefully at scale: `shutdown_drain_rate` spreads the closing of
//! idle connections over time (a request arriving meanwhile is still
//! served), and `max_connection_age` retires old connections at their next
//! answer.

use crate::common;

use std::time::Duration;

use common::{read_response, read_to_close, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const N: usize = 30;
/// Connections closed per second: N take 1.5 s.
const RATE: u32 = 20;

async fn idle_connections(server: &TestServer) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..N {
        let mut s = server.connect().await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        conns.push(s);
    }
    conns
}

/// Shuts down and checks that the closes were spread: the last came at least
/// most of N / RATE after the start (a lower bound, which a slow machine
/// only makes larger), while a request sent at the start was served.
async fn drain_and_check(server: TestServer, mut conns: Vec<TcpStream>) {
    let started = Instant::now();
    server.handle.shutdown();
    server
        .wait_stats("the drain began", |s| s.shutdown_drain_pending > 0)
        .await;
    // One connection speaks during the drain (the first accepted: the drain
    // closes the latest first): it is answered, told to close.
    let mut speaker = conns.remove(0);
    speaker
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut speaker).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    for mut c in conns {
        assert!(read_to_close(&mut c).await.is_empty());
    }
    let took = started.elapsed();
    let least = Duration::from_secs_f64((N - 2) as f64 / f64::from(RATE)) * 8 / 10;
    assert!(
        took >= least,
        "all closed in {took:?}, expected at least {least:?}"
    );
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0);
}

#[tokio::test]
async fn a_drain_rate_spreads_the_closing_of_parked_connections() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(Some(Duration::from_millis(20)))
            .shutdown_drain_rate(Some(RATE)),
    )
    .await;
    let conns = idle_connections(&server).await;
    server
        .wait_stats("all parked", |s| s.connections_parked == N as i64)
        .await;
    drain_and_check(server, conns).await;
}

#[tokio::test]
async fn a_drain_rate_spreads_the_closing_of_idle_tasks() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(None)
            .shutdown_drain_rate(Some(RATE)),
    )
    .await;
    let conns = idle_connections(&server).await;
    server
        .wait_stats("all idle", |s| s.connections_idle == N as i64)
        .await;
    drain_and_check(server, conns).await;
}

#[tokio::test]
async fn an_old_connection_is_told_to_close_at_its_next_answer() {
    // Any age has passed by the time the first answer is written.
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connection_age(Some(Duration::from_nanos(1))),
    )
    .await;
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut s).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(read_to_close(&mut s).await.is_empty());
    server.wait_stats("aged out", |s| s.aged_out == 1).await;
    assert!(server
        .handle
        .render_metrics()
        .contains("megaconn_connections_aged_out_total 1"));
    server.stop().await;
}

/// A keep-alive connection with one request answered, idle: graceful
/// shutdown closes it at once, which tells a test the drain has begun.
async fn idle_connection(server: &TestServer) -> TcpStream {
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    s
}

/// A raw tunnel through the test app's `/upgrade` (101, then an echo on a
/// task of the handler's own), checked with one echo.
async fn tunnel(server: &TestServer) -> TcpStream {
    let mut s = server.connect().await;
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.status, 101);
    echo(&mut s, b"before shutdown").await;
    s
}

async fn echo(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(common::SAFETY, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("the tunnel echoes");
    assert_eq!(back, bytes);
}

fn with_shutdown_timeout(timeout: Duration) -> megaconn::Builder {
    megaconn::Server::builder()
        .workers(1)
        .shutdown_timeout(timeout)
}

/// An upgraded connection leaves its connection's task but not the drain:
/// a handler's tunnel keeps working after shutdown begins, and the server
/// stops once it closes, nothing forced. (It used to be dropped with the
/// worker's runtime as soon as the tracked tasks were done.)
#[tokio::test]
async fn an_upgraded_tunnel_is_waited_for() {
    let server = TestServer::start(with_shutdown_timeout(Duration::from_secs(3))).await;
    let mut idle = idle_connection(&server).await;
    let mut tunnel = tunnel(&server).await;
    server.handle.shutdown();
    assert!(read_to_close(&mut idle).await.is_empty(), "the drain began");
    echo(&mut tunnel, b"during shutdown").await;
    // The handler's echo reads the end and drops the connection.
    tunnel.shutdown().await.unwrap();
    assert!(read_to_close(&mut tunnel).await.is_empty());
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

/// A tunnel still open at the deadline is closed by force and counted so.
#[tokio::test]
async fn an_upgraded_tunnel_open_at_the_deadline_is_forced() {
    let server = TestServer::start(with_shutdown_timeout(Duration::from_millis(200))).await;
    let mut tunnel = tunnel(&server).await;
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1, "{summary:?}");
    assert!(read_to_close(&mut tunnel).await.is_empty());
}

/// A raw HTTP/2 tunnel: a plain `CONNECT` on an h2c connection, answered
/// 200 by the test app, whose handler echoes the stream's bytes on a task
/// of its own, as `/upgrade` does on HTTP/1.1.
struct H2Tunnel {
    /// Kept: a client with no handle left may close the connection.
    _client: h2::client::SendRequest<bytes::Bytes>,
    send: h2::SendStream<bytes::Bytes>,
    recv: h2::RecvStream,
}

impl H2Tunnel {
    async fn open(server: &TestServer) -> H2Tunnel {
        let client = common::h2c(server.addr).await;
        let mut ready = client.clone().ready().await.expect("h2 client ready");
        let connect = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("localhost:80")
            .body(())
            .unwrap();
        let (response, send) = ready.send_request(connect, false).expect("CONNECT sent");
        let response = tokio::time::timeout(common::SAFETY, response)
            .await
            .expect("CONNECT answered in time")
            .expect("CONNECT answered");
        assert_eq!(response.status(), 200);
        let mut tunnel = H2Tunnel {
            _client: client,
            send,
            recv: response.into_body(),
        };
        tunnel.echo(b"before shutdown").await;
        tunnel
    }

    async fn echo(&mut self, bytes: &[u8]) {
        self.send
            .send_data(bytes::Bytes::copy_from_slice(bytes), false)
            .expect("sent into the tunnel");
        let mut back = Vec::new();
        while back.len() < bytes.len() {
            let chunk = tokio::time::timeout(common::SAFETY, self.recv.data())
                .await
                .expect("echo in time")
                .expect("the tunnel is open")
                .expect("the tunnel echoes");
            let _ = self.recv.flow_control().release_capacity(chunk.len());
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, bytes);
    }

    /// Reads until the server ends (or resets) the stream.
    async fn until_ended(&mut self) {
        tokio::time::timeout(common::SAFETY, async {
            while let Some(Ok(chunk)) = self.recv.data().await {
                let _ = self.recv.flow_control().release_capacity(chunk.len());
            }
        })
        .await
        .expect("the tunnel ends in time");
    }
}

/// As [`an_upgraded_tunnel_is_waited_for`], over HTTP/2: a `CONNECT`
/// stream's tunnel keeps working after shutdown begins (its GOAWAY admits
/// it), and the server stops once it ends, nothing forced.
#[tokio::test]
async fn an_h2_connect_tunnel_is_waited_for() {
    let server = TestServer::start(with_shutdown_timeout(common::SAFETY / 2)).await;
    let mut idle = idle_connection(&server).await;
    let mut tunnel = H2Tunnel::open(&server).await;
    server.handle.shutdown();
    assert!(read_to_close(&mut idle).await.is_empty(), "the drain began");
    tunnel.echo(b"during shutdown").await;
    // The handler's echo reads the end and drops the stream.
    tunnel
        .send
        .send_data(bytes::Bytes::new(), true)
        .expect("end sent");
    tunnel.until_ended().await;
    let started = Instant::now();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
    assert!(
        started.elapsed() < common::SAFETY / 4,
        "stopped {:?} after the tunnel ended",
        started.elapsed()
    );
}

/// As [`an_upgraded_tunnel_open_at_the_deadline_is_forced`], over HTTP/2.
#[tokio::test]
async fn an_h2_connect_tunnel_open_at_the_deadline_is_forced() {
    let server = TestServer::start(with_shutdown_timeout(Duration::from_millis(200))).await;
    let mut tunnel = H2Tunnel::open(&server).await;
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1, "{summary:?}");
    tunnel.until_ended().await;
}
