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

use std::net::SocketAddr;
use std::time::Duration;

use common::SAFETY;
use megaconn::{
    CloseReason, ConnectionId, Hub, Server, ServerHandle, ShutdownSummary, WebSocketHandler,
    WebSocketRoute, WsMessage, WsSession,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

/// Reports its connections' opens and closes; echoes.
struct Reporter {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
}

impl WebSocketHandler for Reporter {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(m)
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// One worker serving [`Reporter`] at `/ws`.
struct WsServer {
    addr: SocketAddr,
    handle: ServerHandle,
    hub: Hub,
    opens: mpsc::UnboundedReceiver<ConnectionId>,
    closes: mpsc::UnboundedReceiver<(ConnectionId, CloseReason)>,
    task: tokio::task::JoinHandle<ShutdownSummary>,
}

impl WsServer {
    fn start(
        builder: megaconn::Builder,
        route: impl Fn(Reporter) -> WebSocketRoute<Reporter>,
    ) -> WsServer {
        let mut server = builder
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let (addr, handle, hub) = (server.local_addr(), server.handle(), server.hub());
        let (opened, opens) = mpsc::unbounded_channel();
        let (closed, closes) = mpsc::unbounded_channel();
        let reporter = Reporter {
            opens: opened,
            closes: closed,
        };
        let app = axum::Router::new().route_service("/ws", route(reporter));
        let task = tokio::spawn(server.start(app).expect("server starts").run());
        WsServer {
            addr,
            handle,
            hub,
            opens,
            closes,
            task,
        }
    }

    /// A client whose receive buffer is 4 KiB (it reads nothing unless
    /// the test reads), and its connection's id.
    async fn client(&mut self) -> (WebSocketStream<TcpStream>, ConnectionId) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let url = format!("ws://{}/ws", self.addr);
        let connected = tokio_tungstenite::client_async(url, stream);
        let (client, _) = tokio::time::timeout(SAFETY, connected)
            .await
            .expect("handshake in time")
            .expect("handshake");
        (client, next(&mut self.opens, "on_open").await)
    }

    async fn stop(self) -> ShutdownSummary {
        self.handle.shutdown();
        tokio::time::timeout(SAFETY, self.task)
            .await
            .expect("server stops")
            .expect("server task")
    }
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(SAFETY, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("handler gone")
}

/// A parked WebSocket with a heartbeat timeout (longer than the test: it
/// plays no part) whose client reads nothing gets droppable pushes until
/// it closes: once its socket is behind they are dropped, and once it has
/// taken none of them for `write_stall_timeout` (1 s) it is closed as a
/// slow consumer, counted so, and the pushes dropped before count as
/// droppable. (Before: never closed; the wait for its close timed out.)
#[tokio::test]
async fn a_parked_peer_reached_only_by_droppable_pushes_is_closed_at_its_write_bound() {
    let builder = Server::builder()
        .park_idle_after(Some(Duration::from_millis(50)))
        .message_send_buffer_size(Some(4096))
        .write_stall_timeout(Some(Duration::from_secs(1)));
    let mut server = WsServer::start(builder, |reporter| {
        WebSocketRoute::new(reporter)
            .ping_interval(None)
            .heartbeat_timeout(Some(Duration::from_secs(600)))
    });
    let (_client, id) = server.client().await;
    common::wait_stats(&server.handle, "parked", |s| s.connections_parked == 1).await;
    let payload = "x".repeat(1024);
    let deadline = tokio::time::Instant::now() + SAFETY;
    let (closed, reason) = loop {
        match server.hub.send_droppable(id, payload.clone()) {
            Ok(()) => {}
            // Closed, and the hub knew before the handler's report came.
            Err(e) => assert_eq!(e, megaconn::HubError::Closed, "{e}"),
        }
        if let Ok(closed) = server.closes.try_recv() {
            break closed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed: {:?}",
            server.handle.stats().messages
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
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
