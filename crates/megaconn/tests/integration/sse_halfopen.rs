//! A native SSE stream whose peer vanished without a FIN (a phone gone off
//! the network): the server closes it within a bound it set, not after the
//! kernel's ~15 minutes of retransmission. The stream's socket gets
//! `TCP_USER_TIMEOUT` = 2 × `write_stall_timeout` + 1 s at its hand-over
//! (`conn/socket.rs`, `bound_unacknowledged`), so its unacknowledged
//! heartbeat comment errors the socket, the lot wakes the parked stream,
//! and it closes as `Io(TimedOut)`.
//!
//! How the peer vanishes: the test runs in a network namespace of its own
//! whose `lo` is taken down once the stream is parked (`common::netns`,
//! which also has the server's bounds).

use crate::common;

use std::time::Duration;

use common::netns;
use http::request::Parts;
use megaconn::{CloseReason, ConnectionId, Session, SseHandler, SseRoute};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The stream's heartbeat interval: a comment every second, the bytes the
/// vanished peer does not acknowledge (the close comes about `PING` +
/// 2 × `STALL` + 1 s after `lo` goes down).
const PING: Duration = Duration::from_secs(1);

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
/// [`netns::WAIT`], where it took ~16 minutes before.
#[test]
fn a_parked_stream_whose_peer_vanished_closes_within_the_stall_bound() {
    netns::run_in_private_netns("sse_halfopen", vanish_and_wait);
}

/// Inside the namespace: a stream opened and parked, `lo` taken down, the
/// close awaited.
async fn vanish_and_wait() {
    let mut server = netns::builder()
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
    let request = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n";
    netns::request_head(&mut client, request, "HTTP/1.1 200").await;
    let id = netns::opened_and_parked(&handle, &mut opens).await;

    // Nothing pushed: the heartbeat is what goes unacknowledged.
    let closed = async {
        let (closed_id, reason) = closes.recv().await?;
        assert_eq!(closed_id, id);
        Some(reason)
    };
    netns::vanish_and_await_close(&handle, "sse_halfopen", || (), closed).await;
    // The shutdown closes nothing left; `lo` stays down (the namespace
    // goes with this thread and the server's).
    drop(client);
    common::shut_down(&handle, task).await;
}
