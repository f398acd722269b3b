//! A native SSE stream whose peer vanished without a FIN (a phone gone off
//! the network): the server closes it within a bound it set, not after the
//! kernel's ~15 minutes of retransmission. The stream's socket gets
//! `TCP_USER_TIMEOUT` = `write_stall_timeout` at its hand-over
//! (`conn/socket.rs`, `bound_unacknowledged`), so its unacknowledged
//! heartbeat comment errors the socket, the lot wakes the parked stream,
//! and it closes as `Io(TimedOut)`.
//!
//! How the peer vanishes: the test runs in a network namespace of its own
//! whose `lo` is taken down once the stream is parked (`common::netns`).

use crate::common;

use std::time::{Duration, Instant};

use http::request::Parts;
use megaconn::{CloseReason, ConnectionId, Server, Session, SseHandler, SseRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The stream's heartbeat interval: a comment every second.
const PING: Duration = Duration::from_secs(1);

/// `write_stall_timeout`, which the hand-over makes the socket's
/// `TCP_USER_TIMEOUT`.
const STALL: Duration = Duration::from_secs(2);

/// How long the test waits for the close. Without the bound the kernel
/// gives up after `tcp_retries2` (~16 minutes measured), so the test
/// fails here; with it the close comes about `PING + STALL` (3 s) after
/// `lo` goes down, plus the lot's wake.
const WAIT: Duration = Duration::from_secs(30);

/// Reports each stream's opening and close.
struct Watch {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
}

impl SseHandler for Watch {
    fn on_open(&self, _request: &Parts, session: &Session) {
        let _ = self.opens.send(session.id());
    }

    fn on_close(&self, id: ConnectionId, reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// A parked stream whose peer vanishes closes as `Io(TimedOut)` within
/// [`WAIT`] (about `PING + STALL`), where it took ~16 minutes before.
#[test]
fn a_parked_stream_whose_peer_vanished_closes_within_the_stall_bound() {
    common::netns::run_in_private_netns("sse_halfopen", vanish_and_wait);
}

/// Inside the namespace: a stream opened and parked, `lo` taken down, the
/// close awaited.
async fn vanish_and_wait() {
    let mut server = Server::builder()
        .workers(1)
        .park_idle_after(Some(Duration::from_millis(50)))
        .write_stall_timeout(Some(STALL))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    let _hub = server.hub();
    let (opened, mut opens) = mpsc::unbounded_channel();
    let (closed, mut closes) = mpsc::unbounded_channel();
    let route = SseRoute::new(Watch {
        opens: opened,
        closes: closed,
    })
    .ping_interval(Some(PING));
    let app = axum::Router::new().route_service("/events", route);
    let task = tokio::spawn(server.start(app).expect("server starts").run());

    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(common::SAFETY, client.read(&mut buf))
            .await
            .expect("the head in time")
            .unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let id = tokio::time::timeout(common::SAFETY, opens.recv())
        .await
        .expect("on_open in time")
        .expect("on_open");
    common::wait_stats(&handle, "parked", |s| s.connections_parked == 1).await;

    common::netns::set_lo(false).expect("lo down");
    let vanished = Instant::now();
    let (closed_id, reason) = tokio::time::timeout(WAIT, closes.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the stream whose peer vanished was not closed within {WAIT:?} \
                 (parked: {})",
                handle.stats().connections_parked
            )
        })
        .expect("on_close");
    let took = vanished.elapsed();
    eprintln!("sse_halfopen: closed as {reason:?} {took:?} after lo went down");
    assert_eq!(closed_id, id);
    common::netns::assert_timed_out_and_counted(&handle, &reason).await;
    // The shutdown closes nothing left; `lo` stays down (the namespace
    // goes with this thread and the server's).
    drop(client);
    common::shut_down(&handle, task).await;
}
