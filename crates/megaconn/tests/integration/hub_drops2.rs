//! The droppable family of the hub's pushes, completed (session 48), over
//! real sockets on one worker:
//! - a droppable push (`send_droppable`, `publish_except_droppable`,
//!   `broadcast_droppable`) to a parked connection whose socket is behind
//!   (not writable, or refusing the push) is dropped, counted
//!   `cause="droppable"`, and the connection stays parked: not woken, not
//!   closed (it was woken to write the push, and closed as a slow consumer
//!   when it could not be);
//! - `Hub::buffered` answers on a worker's thread for that worker's
//!   connections after a `Builder::serve_connection` served a WebSocket
//!   on that thread (its message state took the thread's one slot, and
//!   the worker's connections read `None` from then on).
//!
//! Every wait is on a metric or an event, bounded by [`SAFETY`].

use crate::common;
use crate::ws::next_data;

use std::net::SocketAddr;
use std::time::Duration;

use common::SAFETY;
use futures_util::SinkExt;
use megaconn::{
    CloseReason, ConnectionId, Hub, Server, ServerHandle, ServerStats, ShutdownSummary,
    WebSocketHandler, WebSocketRoute, WsMessage, WsSession,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The topic every `/room` connection subscribes to.
const TOPIC: &str = "room";

/// Subscribes at `/room`; reports opens and closes; answers `foreign`
/// with what `Hub::buffered` says of its own connection while, and after,
/// a `serve_connection` on its worker's thread serves a WebSocket
/// ([`foreign_websocket`]); echoes anything else.
struct Member {
    hub: Hub,
    subscribe: bool,
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
}

impl WebSocketHandler for Member {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        if self.subscribe {
            session.subscribe(TOPIC).expect("subscribed");
        }
        let _ = self.opens.send(session.id());
    }

    async fn on_message(
        &self,
        _: &mut (),
        message: WsMessage,
        session: &WsSession,
    ) -> Option<WsMessage> {
        if message.as_bytes() != b"foreign" {
            return Some(message);
        }
        let before = self.hub.buffered(session.id());
        let (during, after) = foreign_websocket(|| self.hub.buffered(session.id())).await;
        Some(format!("{before:?} / {during:?} / {after:?}").into())
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// Reports its connection's open and close: the handler of the WebSocket
/// a `serve_connection` serves.
struct Opened(mpsc::UnboundedSender<&'static str>);

impl WebSocketHandler for Opened {
    type State = ();

    fn on_open(&self, _: &mut (), _: &WsSession) {
        let _ = self.0.send("open");
    }

    async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(m)
    }

    fn on_close(&self, _: (), _: CloseReason) {
        let _ = self.0.send("closed");
    }
}

/// On the calling worker's thread: serves a WebSocket over an in-memory
/// stream with `Builder::serve_connection` (a state of the message layer
/// of its own), and asks `look` once that WebSocket is open, then once it
/// has closed and its serving task ended.
async fn foreign_websocket<T>(look: impl Fn() -> T) -> (T, T) {
    let (server_end, client_end) = tokio::io::duplex(1 << 16);
    let (said, mut heard) = mpsc::unbounded_channel();
    let app = axum::Router::new().route_service("/ws", WebSocketRoute::new(Opened(said)));
    let serving = tokio::task::spawn_local(async move {
        Server::builder().serve_connection(server_end, app).await
    });
    let handshake = tokio_tungstenite::client_async("ws://t/ws", client_end);
    let (mut client, _) = tokio::time::timeout(SAFETY, handshake)
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(next(&mut heard, "the served one open").await, "open");
    let during = look();
    client.close(None).await.expect("close sent");
    assert_eq!(next(&mut heard, "the served one closed").await, "closed");
    drop(client);
    tokio::time::timeout(SAFETY, serving)
        .await
        .expect("served in time")
        .expect("serving task");
    (during, look())
}

/// One worker serving [`Member`] at `/room` (subscribed to [`TOPIC`]) and
/// `/quiet` (not).
struct Rooms {
    addr: SocketAddr,
    handle: ServerHandle,
    hub: Hub,
    opens: mpsc::UnboundedReceiver<ConnectionId>,
    closes: mpsc::UnboundedReceiver<(ConnectionId, CloseReason)>,
    task: tokio::task::JoinHandle<ShutdownSummary>,
}

impl Rooms {
    fn start(builder: megaconn::Builder) -> Rooms {
        let mut server = builder
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let (addr, handle, hub) = (server.local_addr(), server.handle(), server.hub());
        let (opened, opens) = mpsc::unbounded_channel();
        let (closed, closes) = mpsc::unbounded_channel();
        let member = |subscribe| Member {
            hub: hub.clone(),
            subscribe,
            opens: opened.clone(),
            closes: closed.clone(),
        };
        let app = axum::Router::new()
            .route_service("/room", WebSocketRoute::new(member(true)))
            .route_service("/quiet", WebSocketRoute::new(member(false)));
        let task = tokio::spawn(server.start(app).expect("server starts").run());
        Rooms {
            addr,
            handle,
            hub,
            opens,
            closes,
            task,
        }
    }

    /// A client at `path` whose receive buffer is 4 KiB (it reads nothing
    /// unless the test reads), and its connection's id.
    async fn client(&mut self, path: &str) -> (WebSocketStream<TcpStream>, ConnectionId) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let url = format!("ws://{}{path}", self.addr);
        let connected = tokio_tungstenite::client_async(url, stream);
        let (client, _) = tokio::time::timeout(SAFETY, connected)
            .await
            .expect("handshake in time")
            .expect("handshake");
        (client, next(&mut self.opens, "on_open").await)
    }

    /// The id of a `/room` connection that has closed: an `except` for
    /// the publishes that names no one open.
    async fn closed_id(&mut self) -> ConnectionId {
        let (mut client, id) = self.client("/room").await;
        client.close(None).await.expect("close sent");
        let (closed, _) = next(&mut self.closes, "its close").await;
        assert_eq!(closed, id);
        id
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

/// How often the parking lot has woken connections, whatever for.
fn wakes(s: &ServerStats) -> u64 {
    s.wakes_cold + s.wakes_hot + s.wakes_without_task
}

/// Push `i` of a flood: its number, so the client can check the order.
fn numbered(i: usize) -> String {
    format!("{i:07}")
}

/// A parked subscriber whose client reads nothing gets a flood of
/// droppable pushes, by id, by topic (all but a closed id) and to all, in
/// turn: once its socket is behind the rest are dropped, counted as
/// droppable, and the connection stays parked, never woken (no wake in
/// the lot's counters), never closed; the client then reads those that
/// went, in order, and the connection still answers. Each push counts
/// once: in `pushes` or as droppable, no other cause. (Before: the first
/// push its socket could not take whole woke it to write it, and it
/// resumed awake with a queue.)
#[tokio::test]
async fn droppable_pushes_to_a_parked_connection_behind_are_dropped_and_it_stays_parked() {
    const FLOOD: usize = 20_000;
    let builder = Server::builder()
        .park_idle_after(Some(Duration::from_millis(50)))
        .message_send_buffer_size(Some(4096));
    let mut rooms = Rooms::start(builder);
    let gone = rooms.closed_id().await;
    let (mut client, id) = rooms.client("/room").await;
    common::wait_stats(&rooms.handle, "parked", |s| s.connections_parked == 1).await;
    let before = rooms.handle.stats();
    for i in 0..FLOOD {
        let sent = match i % 3 {
            0 => rooms.hub.send_droppable(id, numbered(i)),
            1 => rooms.hub.publish_except_droppable(TOPIC, numbered(i), gone),
            _ => rooms.hub.broadcast_droppable(numbered(i)),
        };
        assert_eq!(sent, Ok(()), "push {i}");
    }
    let hub_messages = before.messages.hub_messages + FLOOD as u64;
    common::wait_stats(&rooms.handle, "the flood delivered", |s| {
        s.messages.hub_messages == hub_messages
            && s.messages.hub_queued == 0
            && s.messages.deliveries_pending == 0
            && s.messages.pushes + s.messages.queue_drops == FLOOD as u64
    })
    .await;
    let after = rooms.handle.stats();
    let counted = &after.messages;
    assert!(
        counted.queue_drops_droppable >= 1,
        "some dropped: {counted:?}"
    );
    assert_eq!(
        counted.queue_drops, counted.queue_drops_droppable,
        "dropped as droppable only: {counted:?}"
    );
    assert_eq!(
        (after.connections_parked, wakes(&after), after.parks),
        (1, wakes(&before), before.parks),
        "still parked, never woken"
    );
    assert!(rooms.closes.try_recv().is_err(), "not closed");
    // What went reaches the client, in order.
    let mut last = None;
    for _ in 0..counted.pushes {
        let Message::Text(text) = next_data(&mut client).await else {
            panic!("a push");
        };
        let i: usize = text.as_str().parse().expect("a numbered push");
        assert!(last.is_none_or(|l| l < i), "{i} after {last:?}");
        last = Some(i);
    }
    client.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("still here"));
    assert!(rooms.closes.try_recv().is_err(), "not closed");
    rooms.stop().await;
}

/// A handler on the worker's thread asks `Hub::buffered` of its own
/// connection before, while and after a `Builder::serve_connection` run
/// on that thread serves a WebSocket: the same answer each time (nothing
/// queued). (Before: `None` while and after, the worker's state replaced
/// in the thread's one slot by the served connection's.)
#[tokio::test]
async fn hub_buffered_answers_on_a_worker_that_served_a_connection_of_its_own() {
    let mut rooms = Rooms::start(Server::builder().park_idle_after(None));
    let (mut client, _id) = rooms.client("/quiet").await;
    client.send(Message::text("foreign")).await.unwrap();
    let nothing = "Some(Buffered { messages: 0, bytes: 0 })";
    let expected = format!("{nothing} / {nothing} / {nothing}");
    assert_eq!(next_data(&mut client).await, Message::text(expected));
    rooms.stop().await;
}
