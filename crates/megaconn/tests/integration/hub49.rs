//! The hub's and framed connections' leftovers of session 48, over real
//! sockets on one worker:
//! - a parked WebSocket whose client never reads, reached only by
//!   droppable pushes, is closed as a slow consumer once its socket took
//!   none of them for the write bound (`message/stuck.rs`); it stayed open
//!   for good with a heartbeat timeout set (no `TCP_USER_TIMEOUT` then),
//!   every push to it dropped.
//!
//! Every wait is on an event or a metric, bounded by [`SAFETY`].

use crate::common;

use std::time::Duration;

use common::msg::{Probe, Running};
use common::SAFETY;
use futures_util::SinkExt;
use megaconn::{
    CloseReason, ConnectionId, HubError, Server, WebSocketHandler, WebSocketRoute, WsMessage,
    WsSession,
};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// One worker serving a [`Probe`] (or a handler made of one) at `/ws`, its
/// route as `route` makes it.
fn start<H: WebSocketHandler>(
    builder: megaconn::Builder,
    route: impl FnOnce(Probe) -> WebSocketRoute<H>,
) -> Running<(ConnectionId, CloseReason)> {
    let server = builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    Running::serve(server, |server, opens, closes| {
        let app = axum::Router::new().route_service("/ws", route(Probe { opens, closes }));
        server.start(app).expect("server starts")
    })
}

/// A client whose receive buffer is 4 KiB (it reads nothing unless the
/// test reads), and its connection's id.
async fn client(
    server: &mut Running<(ConnectionId, CloseReason)>,
) -> (WebSocketStream<TcpStream>, ConnectionId) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addrs[0]).await.unwrap();
    let url = format!("ws://{}/ws", server.addrs[0]);
    let connected = tokio_tungstenite::client_async(url, stream);
    let (client, _) = tokio::time::timeout(SAFETY, connected)
        .await
        .expect("handshake in time")
        .expect("handshake");
    (client, server.next_open().await)
}

/// Parks after 50 ms idle, a 4 KiB message send buffer, a 1 s write bound.
fn bounded() -> megaconn::Builder {
    Server::builder()
        .park_idle_after(Some(Duration::from_millis(50)))
        .message_send_buffer_size(Some(4096))
        .write_stall_timeout(Some(Duration::from_secs(1)))
}

/// No pings of ours, and a heartbeat timeout longer than any test.
fn quiet<H: WebSocketHandler>(route: WebSocketRoute<H>) -> WebSocketRoute<H> {
    route
        .ping_interval(None)
        .heartbeat_timeout(Some(Duration::from_secs(600)))
}

/// Once `id` is parked, droppable pushes to it every 5 ms until its close
/// is reported (bounded by [`SAFETY`]); `chatty`, a client that sends a
/// frame every 40 pushes (200 ms), waking its connection.
async fn push_until_closed(
    server: &mut Running<(ConnectionId, CloseReason)>,
    id: ConnectionId,
    mut chatty: Option<&mut WebSocketStream<TcpStream>>,
) -> (ConnectionId, CloseReason) {
    server.wait_parked(1).await;
    let payload = "x".repeat(1024);
    let deadline = tokio::time::Instant::now() + SAFETY;
    for turn in 1u32.. {
        match server.hub.send_droppable(id, payload.clone()) {
            Ok(()) => {}
            // Closed, and the hub knew before the handler's report came.
            Err(e) => assert_eq!(e, HubError::Closed, "{e}"),
        }
        if let Ok(closed) = server.closes.try_recv() {
            return closed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed: {:?}",
            server.handle.stats().messages
        );
        if let Some(client) = chatty.as_deref_mut().filter(|_| turn % 40 == 0) {
            // Its frames keep coming (the server may have closed meanwhile).
            let _ = client
                .send(tokio_tungstenite::tungstenite::Message::text("here"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unreachable!("the deadline ends the loop")
}

/// A parked WebSocket with a heartbeat timeout (longer than the test: it
/// plays no part) whose client reads nothing gets droppable pushes until
/// it closes: once its socket is behind they are dropped, and once it has
/// taken none of them for `write_stall_timeout` (1 s) it is closed as a
/// slow consumer, counted so, and the pushes dropped before count as
/// droppable. (Before: never closed; the wait for its close timed out.)
#[tokio::test]
async fn a_parked_peer_reached_only_by_droppable_pushes_is_closed_at_its_write_bound() {
    let mut server = start(bounded(), |probe| quiet(WebSocketRoute::new(probe)));
    let (_client, id) = client(&mut server).await;
    let (closed, reason) = push_until_closed(&mut server, id, None).await;
    assert_eq!((closed, reason), (id, CloseReason::SlowConsumer));
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "slow_consumer"), 1, "{stats:?}");
    assert!(
        stats.messages.queue_drops_droppable >= 1,
        "{:?}",
        stats.messages
    );
    server.stop().await;
}

/// A [`Probe`] that answers nothing: a client's frames wake its
/// connection, and nothing of ours is written for them.
struct Silent(Probe);

impl WebSocketHandler for Silent {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.0.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: WsMessage, _: &WsSession) -> Option<WsMessage> {
        None
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.0.closes.send((id, reason));
    }
}

/// The same peer, reading nothing, but sending a frame every 200 ms that
/// wakes its connection (which answers nothing and parks again): still
/// closed as a slow consumer. (Merge review, session 49: each wake
/// forgot when it was found behind, so the 1 s bound never passed and it
/// stayed open for good.)
#[tokio::test]
async fn a_parked_peer_behind_that_keeps_sending_is_closed_all_the_same() {
    let mut server = start(bounded(), |probe| quiet(WebSocketRoute::new(Silent(probe))));
    let (mut client, id) = client(&mut server).await;
    let (closed, reason) = push_until_closed(&mut server, id, Some(&mut client)).await;
    assert_eq!((closed, reason), (id, CloseReason::SlowConsumer));
    server.stop().await;
}
