//! Publishes and broadcasts that reach a connection the hub's pump cannot
//! write to count once, as dropped (`queue_drops`): a WebSocket closing
//! for the hub (its close still behind its handler, or in its close
//! handshake), a parked one a push found behind, a parked one closing for
//! the hub. Sends to one id were counted so in session 43; a publish or a
//! broadcast that found such a connection was in no counter.
//!
//! Real clients over loopback; one worker. Where the pump must meet a
//! parked connection before the parking lot wakes it, the worker's thread
//! is held by a handler (`block`) while the test queues the hub's
//! messages: the pump then takes them all in one turn, in order, before
//! the lot can look at the socket. Every wait is on a metric or an event,
//! bounded by [`SAFETY`].

use crate::common::{self, msg::deref_to_running, next};
use crate::ws::next_data;

use std::net::SocketAddr;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use common::msg::{ws_client, Running};
use common::SAFETY;
use futures_util::SinkExt;
use megaconn::{
    CloseReason, ConnectionId, Server, ShutdownSummary, WebSocketHandler, WebSocketRoute,
    WsMessage, WsSession,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The topic every `/room` connection subscribes to.
const TOPIC: &str = "room";

/// Publishes and broadcasts each test sends while its connection cannot
/// take them.
const N: u64 = 5;

/// A member of [`TOPIC`] (at `/room`; at `/quiet` of none). `wait` reports
/// it is busy and waits for a permit of the gate, then answers `waited`;
/// `block` reports it is busy and holds the worker's thread until the test
/// releases it (or [`SAFETY`] passes), then answers `unblocked`.
struct Room {
    topic: Option<&'static str>,
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
    busy: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
}

impl WebSocketHandler for Room {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        if let Some(topic) = self.topic {
            session.subscribe(topic).expect("subscribed");
        }
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        match message.as_bytes() {
            b"wait" => {
                let _ = self.busy.send(());
                self.gate.acquire().await.expect("gate open").forget();
                Some("waited".into())
            }
            b"block" => {
                let _ = self.busy.send(());
                // Held on purpose: nothing else of the worker runs until
                // the test has queued what it means the pump to take at
                // once.
                let release = self.release.lock().expect("not poisoned");
                let _ = release.recv_timeout(SAFETY);
                Some("unblocked".into())
            }
            _ => Some(message),
        }
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// A server of one worker with [`Room`] at `/room` and `/quiet`, running,
/// and what its handlers share with the test beside their opens and
/// closes.
struct Rooms {
    addr: SocketAddr,
    busy: mpsc::UnboundedReceiver<()>,
    gate: Arc<Semaphore>,
    release: std_mpsc::Sender<()>,
    running: Running<(ConnectionId, CloseReason)>,
}

deref_to_running!(Rooms, (ConnectionId, CloseReason));

impl Rooms {
    /// Serves with `builder` (one worker, 127.0.0.1:0); the routes wait
    /// `close_timeout` for a peer's answer to their close frame.
    async fn start(builder: megaconn::Builder, close_timeout: Duration) -> Rooms {
        let server = builder
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let addr = server.local_addr();
        let (was_busy, busy) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let (release, released) = std_mpsc::channel();
        let released = Arc::new(Mutex::new(released));
        let rooms_gate = gate.clone();
        let running = Running::serve(server, move |server, opens, closes| {
            let room = |topic| Room {
                topic,
                opens: opens.clone(),
                closes: closes.clone(),
                busy: was_busy.clone(),
                gate: rooms_gate.clone(),
                release: released.clone(),
            };
            let route = |topic| WebSocketRoute::new(room(topic)).close_timeout(close_timeout);
            let app = axum::Router::new()
                .route_service("/room", route(Some(TOPIC)))
                .route_service("/quiet", route(None));
            server.start(app).expect("server starts")
        });
        Rooms {
            addr,
            busy,
            gate,
            release,
            running,
        }
    }

    /// A client at `path` whose receive buffer is 4 KiB (it reads nothing
    /// unless the test reads), and its connection's id.
    async fn client(&mut self, path: &str) -> (WebSocketStream<TcpStream>, ConnectionId) {
        let client = ws_client(self.addr, path, Some(4096)).await;
        (client, self.next_open().await)
    }

    /// Publishes and broadcasts [`N`] each; all taken by a worker.
    fn publish_and_broadcast(&self) {
        for i in 0..N {
            assert_eq!(self.hub.publish(TOPIC, format!("publish {i}")), Ok(()));
            assert_eq!(self.hub.broadcast(format!("broadcast {i}")), Ok(()));
        }
    }

    /// Waits until the worker's pump took `n` hub messages in all and
    /// delivered them.
    async fn delivered(&self, n: u64) {
        common::wait_stats(&self.handle, "the hub's messages delivered", |s| {
            s.messages.hub_messages == n && s.messages.deliveries_pending == 0
        })
        .await;
    }

    /// [`delivered`](Self::delivered), then until `drops` are counted: the
    /// pump counts a hub message taken a moment before its delivery is
    /// pending, so the first wait alone may end a message early (merge
    /// review). The caller asserts the exact counts after.
    async fn dropped(&self, n: u64, drops: u64) {
        self.delivered(n).await;
        common::wait_stats(&self.handle, "the drops counted", |s| {
            s.messages.queue_drops >= drops
        })
        .await;
    }

    /// The worker's thread held by `blocker`'s handler, `queue` run (the
    /// hub's calls, which the pump cannot take meanwhile), then the worker
    /// let go: the pump takes them all in one turn. `blocker` reads its
    /// answer.
    async fn with_the_worker_held(
        &mut self,
        blocker: &mut WebSocketStream<TcpStream>,
        queue: impl FnOnce(&Rooms),
    ) {
        blocker.send(Message::text("block")).await.unwrap();
        next(&mut self.busy, "the worker held").await;
        queue(self);
        self.release.send(()).expect("the handler waits");
        assert_eq!(next_data(blocker).await, Message::text("unblocked"));
    }

    /// Waits until no connection is awake and registered for pushes, nor
    /// parked ([`ServerHandle::message_connections`]).
    async fn no_message_connections(&self) {
        let deadline = tokio::time::Instant::now() + SAFETY;
        while self.handle.message_connections() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for no message connection"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> ShutdownSummary {
        self.running.stop().await
    }
}

/// A WebSocket closing for the hub, awake: publishes and broadcasts that
/// reach it while its close waits behind its busy handler (its inbox
/// kicked), then while its close handshake waits for the peer's answer
/// (out of the worker's awake map, not yet closed), each count once in
/// `queue_drops`; none is written. (Before: `queue_drops` 0, and 0 in
/// `pushes`: 20 accepted publishes and broadcasts in no counter.)
#[tokio::test]
async fn publishes_and_broadcasts_to_a_websocket_closing_for_the_hub_count_as_dropped() {
    // The close handshake waits for the client, which answers only when
    // the test reads.
    let builder = Server::builder().park_idle_after(None);
    let mut rooms = Rooms::start(builder, SAFETY * 2).await;
    let (mut client, id) = rooms.client("/room").await;
    client.send(Message::text("wait")).await.unwrap();
    next(&mut rooms.busy, "the handler busy").await;
    assert_eq!(rooms.hub.close(id), Ok(()));
    rooms.delivered(1).await;
    // Kicked, its handler busy: the close waits in its inbox.
    rooms.publish_and_broadcast();
    rooms.dropped(1 + 2 * N, 2 * N).await;
    let counted = rooms.handle.stats().messages;
    assert_eq!(
        (counted.pushes, counted.queue_drops),
        (0, 2 * N),
        "while its close waits behind its handler: {counted:?}"
    );
    // The handler answers; the connection takes its close and sends its
    // close frame, and waits for the client's.
    rooms.gate.add_permits(1);
    rooms.no_message_connections().await;
    rooms.publish_and_broadcast();
    rooms.dropped(1 + 4 * N, 4 * N).await;
    assert!(rooms.closes.try_recv().is_err(), "still in its handshake");
    let counted = rooms.handle.stats().messages;
    assert_eq!(
        (counted.pushes, counted.queue_drops),
        (0, 4 * N),
        "while its close handshake waits: {counted:?}"
    );
    // The client reads the reply and the close frame, nothing pushed.
    assert_eq!(next_data(&mut client).await, Message::text("waited"));
    let Message::Close(Some(close)) = next_data(&mut client).await else {
        panic!("a close frame");
    };
    assert_eq!(close.code, CloseCode::Policy);
    // Its answer goes as tungstenite reads on (to the end of the stream).
    use futures_util::StreamExt;
    let end = tokio::time::timeout(SAFETY, client.next()).await;
    assert!(matches!(end, Ok(None | Some(Err(_)))), "{end:?}");
    assert_eq!(
        next(&mut rooms.closes, "on_close").await,
        (id, CloseReason::Kicked)
    );
    rooms.stop().await;
}

/// How a parked subscriber stops taking pushes, for
/// [`parked_subscriber_that_cannot_take_them`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cannot {
    /// A push larger than its socket takes: behind, woken to write the
    /// rest (it resumes, since session 45), and closed as a slow consumer
    /// once its write bound passes (its client reads nothing).
    Behind,
    /// `Hub::close`: woken to close.
    Kicked,
}

/// A parked subscriber that a push found behind: the publishes and
/// broadcasts the pump takes after it, queued behind what it owes until
/// the connection, resumed, closes as a slow consumer, each count once in
/// `queue_drops`. (Before: in no counter.)
#[tokio::test]
async fn publishes_and_broadcasts_to_a_parked_connection_found_behind_count_as_dropped() {
    parked_subscriber_that_cannot_take_them(Cannot::Behind).await;
}

/// A parked subscriber `Hub::close` reached: the publishes and broadcasts
/// the pump takes after the close, before the connection wakes to take
/// it, each count once in `queue_drops`. (Before: in no counter.)
#[tokio::test]
async fn publishes_and_broadcasts_to_a_parked_connection_closing_for_the_hub_count_as_dropped() {
    parked_subscriber_that_cannot_take_them(Cannot::Kicked).await;
}

/// A subscriber parks (its client reads nothing); with the worker held,
/// the test queues what stops it taking pushes (`cannot`), then [`N`]
/// publishes and broadcasts: the pump meets it parked, behind or kicked,
/// for each of them. Every push the pump handed to a connection is then
/// in `pushes` or `queue_drops`, once: the quiet connection's broadcasts
/// in `pushes` (its client reads them), the subscriber's in `queue_drops`.
async fn parked_subscriber_that_cannot_take_them(cannot: Cannot) {
    // The subscriber's write bound (it reads nothing): it is a slow
    // consumer when that passes.
    let builder = Server::builder()
        .park_idle_after(Some(Duration::from_millis(50)))
        .message_send_buffer_size(Some(4096))
        .write_timeout(Some(Duration::from_millis(500)));
    let mut rooms = Rooms::start(builder, Duration::from_secs(1)).await;
    let (_subscriber, id) = rooms.client("/room").await;
    let (mut blocker, _) = rooms.client("/quiet").await;
    common::wait_stats(&rooms.handle, "both parked", |s| s.connections_parked == 2).await;
    // More than the sockets' buffers take (the server's 8 KiB, the
    // client's 4 KiB, doubled).
    let big = vec![7u8; 1 << 20];
    rooms
        .with_the_worker_held(&mut blocker, |rooms| {
            match cannot {
                Cannot::Behind => assert_eq!(rooms.hub.publish_binary(TOPIC, big), Ok(())),
                Cannot::Kicked => assert_eq!(rooms.hub.close(id), Ok(())),
            }
            rooms.publish_and_broadcast();
        })
        .await;
    rooms.dropped(1 + 2 * N, 2 * N).await;
    let counted = rooms.handle.stats().messages;
    assert!(
        counted.queue_drops >= 2 * N,
        "met behind or closing, the subscriber's {} publishes and broadcasts: {counted:?}",
        2 * N
    );
    let (closed, reason) = next(&mut rooms.closes, "the subscriber's close").await;
    let expected = match cannot {
        Cannot::Behind => CloseReason::SlowConsumer,
        Cannot::Kicked => CloseReason::Kicked,
    };
    assert_eq!((closed, reason), (id, expected));
    for i in 0..N {
        let broadcast = next_data(&mut blocker).await;
        assert_eq!(broadcast, Message::text(format!("broadcast {i}")));
    }
    // The big push counts when its rest went or did not (its client reads
    // nothing): in `queue_drops` then.
    let handed = match cannot {
        Cannot::Behind => 1 + 2 * N + N,
        Cannot::Kicked => 2 * N + N,
    };
    common::wait_stats(&rooms.handle, "the quiet one's broadcasts", |s| {
        s.messages.pushes == N
    })
    .await;
    let counted = rooms.handle.stats().messages;
    assert_eq!(
        counted.pushes + counted.queue_drops,
        handed,
        "each push handed to a connection counted once: {counted:?}"
    );
    rooms.stop().await;
}
