//! `ServerHandle::message_connections`: the framed and WebSocket
//! connections a broadcast reaches, counted exactly as they park, wake and
//! close, back to 0 when they are gone (what the CLI's demo charges a
//! `PUB *` by).

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::SAFETY;
use megaconn::{FramedHandler, Framing, Server, ServerHandle, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Echoes each line.
struct Echo;

impl FramedHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }
}

/// Waits (bounded by [`SAFETY`]) until the server counts `want` message
/// connections: a poll of the count, not a sleep standing in for it.
async fn wait_count(handle: &ServerHandle, want: usize) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    while handle.message_connections() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {want} message connections: {}",
            handle.message_connections()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends `line` and reads its echo.
async fn echo(s: &mut TcpStream, line: &[u8]) {
    s.write_all(line).await.unwrap();
    let mut back = vec![0; line.len()];
    tokio::time::timeout(SAFETY, s.read_exact(&mut back))
        .await
        .expect("timed out reading")
        .expect("read");
    assert_eq!(back, line);
}

/// Four framed connections on two workers count four, parked, woken and
/// parked again; two that hang up while parked leave the count, one that
/// closes awake too; none open is 0.
#[tokio::test]
async fn message_connections_follow_parks_wakes_and_closes() {
    let mut server = Server::builder()
        .workers(2)
        .park_idle_after(Some(Duration::from_millis(20)))
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
        .listen()
        .expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let _hub = server.hub();
    let running = server.start_framed(Echo).expect("server starts").run();
    let task = tokio::spawn(running);
    assert_eq!(handle.message_connections(), 0);
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        echo(&mut s, b"a\n").await;
        conns.push(s);
    }
    common::wait_stats(&handle, "all parked", |s| s.connections_parked == 4).await;
    assert_eq!(handle.message_connections(), 4);
    for s in &mut conns {
        echo(s, b"wake\n").await;
    }
    common::wait_stats(&handle, "parked again", |s| s.connections_parked == 4).await;
    assert_eq!(handle.message_connections(), 4);
    conns.truncate(2);
    wait_count(&handle, 2).await;
    // One awake (its line not ended), one parked.
    conns[0].write_all(b"half").await.unwrap();
    common::wait_stats(&handle, "one woken", |s| s.connections_parked == 1).await;
    assert_eq!(handle.message_connections(), 2);
    conns.clear();
    wait_count(&handle, 0).await;
    common::wait_stats(&handle, "all closed", |s| s.connections_open == 0).await;
    assert_eq!(handle.message_connections(), 0);
    handle.shutdown();
    tokio::time::timeout(SAFETY, task)
        .await
        .expect("server stops")
        .unwrap();
}
