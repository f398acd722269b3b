//! Backpressure a WebSocket application can see and choose, over real
//! sockets with a client that stops reading: droppable pushes
//! (`Hub::send_droppable`) are dropped for a connection that is behind,
//! counted by cause, and leave it open, the delivered ones in order;
//! ordinary pushes still close it as a slow consumer (1013); and
//! `WsSession::buffered` / `Hub::buffered` (on the connection's worker)
//! grow while the peer reads nothing and fall once it reads. Every wait
//! is bounded and waits on a condition.

use crate::common::{self, msg::deref_to_running, next};
use crate::ws::next_data;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::msg::{ws_client, Running};
use futures_util::SinkExt;
use megaconn::{
    Buffered, CloseReason, ConnectionId, Hub, Server, WebSocketHandler, WebSocketRoute, WsMessage,
    WsSession,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The outbound queue's bound in these tests: droppable pushes are dropped
/// from half of it (8) on.
const QUEUE: usize = 16;

/// Pushes of 64 KiB, each a batch of its own (`TAKE_AT_ONCE`): 64 of them,
/// 4 MiB, are far more than the server's socket buffer (512 KiB), one
/// batch and the queue hold while the client reads nothing.
const PUSH: usize = 64 << 10;
const PUSHES: usize = 64;

/// The close's bound: generous, for a slow consumer's client reads what
/// its sockets hold after its close began at its own pace (at the default
/// 2 s a starved machine's client did not always, and read a reset; the
/// bound itself: `linger_timeout.rs`). Its EOF ends the close at once.
const LINGER: Duration = Duration::from_secs(60);

/// A push numbered `i`: its first byte says which.
fn push(i: usize) -> Vec<u8> {
    vec![i as u8; PUSH]
}

/// Opens report their id; closes their id and reason; `watch` reports
/// the session's backlog (and the hub's answer on the worker) at each
/// permit of `ticks` until a permit finds `ticks` closed, then answers
/// `watched` (the handler awaits meanwhile, and pushes are written).
struct Watcher {
    hub: Hub,
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
    seen: mpsc::UnboundedSender<(Buffered, Option<Buffered>)>,
    ticks: Arc<Semaphore>,
}

impl WebSocketHandler for Watcher {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(
        &self,
        _: &mut (),
        message: WsMessage,
        session: &WsSession,
    ) -> Option<WsMessage> {
        if message.as_bytes() != b"watch" {
            return Some(message);
        }
        while let Ok(tick) = self.ticks.acquire().await {
            tick.forget();
            let hub = self.hub.buffered(session.id());
            let _ = self.seen.send((session.buffered(), hub));
        }
        Some("watched".into())
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// A server serving [`Watcher`], running, and what the watcher shares
/// with the test beside its opens and closes: what it sees, and its ticks.
struct Fixture {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<(Buffered, Option<Buffered>)>,
    ticks: Arc<Semaphore>,
    running: Running<(ConnectionId, CloseReason)>,
}

deref_to_running!(Fixture, (ConnectionId, CloseReason));

impl Fixture {
    /// One worker, connections kept awake (no parking), an outbound queue
    /// of [`QUEUE`], [`Watcher`] at `/w`.
    fn start() -> Fixture {
        let server = Server::builder()
            .workers(1)
            .park_idle_after(None)
            .outbound_queue(QUEUE)
            .linger_timeout(LINGER)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let addr = server.local_addr();
        let (saw, seen) = mpsc::unbounded_channel();
        let ticks = Arc::new(Semaphore::new(0));
        let watchers_ticks = ticks.clone();
        let running = Running::serve(server, move |mut server, opens, closes| {
            let watcher = Watcher {
                hub: server.hub(),
                opens,
                closes,
                seen: saw,
                ticks: watchers_ticks,
            };
            let app = axum::Router::new().route_service("/w", WebSocketRoute::new(watcher));
            server.start(app).expect("server starts")
        });
        Fixture {
            addr,
            seen,
            ticks,
            running,
        }
    }

    /// A client whose receive buffer is 4 KiB (its socket takes little
    /// while it reads nothing), and its connection's id.
    async fn slow_reader(&mut self) -> (WebSocketStream<TcpStream>, ConnectionId) {
        let client = ws_client(self.addr, "/w", Some(4096)).await;
        (client, self.next_open().await)
    }

    /// What the watching handler sees now.
    async fn look(&mut self) -> (Buffered, Option<Buffered>) {
        self.ticks.add_permits(1);
        tokio::select! {
            seen = next(&mut self.seen, "a look") => seen,
            closed = next(&mut self.running.closes, "a close") => panic!("closed instead: {closed:?}"),
        }
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// A client that stops reading while 64 droppable pushes of 64 KiB come:
/// those its connection is too far behind for are dropped, counted as
/// `droppable`, and the connection stays open (no close, no 1013); once
/// the client reads, it gets the others in the order they were sent,
/// then an ordinary push sent after them, and its connection still
/// answers. Every push counts once: delivered or dropped for being
/// droppable, no other cause. (Without droppable pushes, `send` of the
/// same closes the connection: the next test.)
#[tokio::test]
async fn droppable_pushes_to_a_reader_that_stopped_are_dropped_and_it_stays_open() {
    let mut server = Fixture::start();
    let (mut client, id) = server.slow_reader().await;
    for i in 0..PUSHES {
        assert_eq!(server.hub.send_binary_droppable(id, push(i)), Ok(()));
    }
    common::wait_stats(&server.handle, "droppable ones dropped", |s| {
        s.messages.queue_drops_droppable >= 1
            && s.messages.hub_queued == 0
            && s.messages.deliveries_pending == 0
    })
    .await;
    assert_eq!(server.hub.send(id, "end"), Ok(()));
    let mut got = Vec::new();
    loop {
        match next_data(&mut client).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), PUSH);
                got.push(b[0] as usize);
            }
            Message::Text(t) if t.as_str() == "end" => break,
            other => panic!("not a push: {other:?}"),
        }
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in the order sent: {got:?}"
    );
    assert!(got.len() < PUSHES, "some dropped: {}", got.len());
    // Still open and served.
    client.send(Message::text("echo")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("echo"));
    assert!(server.closes.try_recv().is_err(), "not closed");
    let counted = server.handle.stats().messages;
    assert_eq!(counted.pushes, got.len() as u64 + 1, "{counted:?}");
    assert_eq!(
        counted.queue_drops_droppable,
        (PUSHES - got.len()) as u64,
        "{counted:?}"
    );
    assert_eq!(counted.queue_drops, counted.queue_drops_droppable);
    let text = megaconn::metrics::render(&server.handle.stats());
    let line = format!(
        "megaconn_message_queue_drops_total{{cause=\"droppable\"}} {}",
        PUSHES - got.len()
    );
    assert!(text.contains(&line), "{line} in\n{text}");
    assert!(text.contains("megaconn_message_queue_drops_total{cause=\"slow_consumer\"} 0"));
    // (Gone before the shutdown, which would wait for its close.)
    drop(client);
    server.stop().await;
}

/// The same pushes sent as ordinary ones: the queue overflows and the
/// connection closes as a slow consumer, the client reading a 1013 after
/// the pushes that went; none is counted as droppable, the ones refused
/// or left queued as `slow_consumer`.
#[tokio::test]
async fn ordinary_pushes_to_a_reader_that_stopped_still_close_it_1013() {
    let mut server = Fixture::start();
    let (mut client, id) = server.slow_reader().await;
    for i in 0..PUSHES {
        // Refused at the call once its close has begun.
        let _ = server.hub.send_binary(id, push(i));
    }
    // The client reads nothing until its queue overflowed.
    common::wait_stats(&server.handle, "its queue overflowed", |s| {
        s.messages.queue_drops >= 1
    })
    .await;
    let mut got = Vec::new();
    let close = loop {
        match next_data(&mut client).await {
            Message::Binary(b) => got.push(b[0] as usize),
            Message::Close(close) => break close.expect("a close frame"),
            other => panic!("not a push: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Again);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    // Gone once it read the close: its EOF ends the server's close, and
    // the handler hears of it then.
    drop(client);
    let (closed, reason) = next(&mut server.closes, "the close").await;
    assert_eq!((closed, reason), (id, CloseReason::SlowConsumer));
    let counted = server.handle.stats().messages;
    assert_eq!(counted.queue_drops_droppable, 0, "{counted:?}");
    assert!(counted.queue_drops_slow_consumer >= 1, "{counted:?}");
    server.stop().await;
}

/// While the client reads nothing, what waits in its connection's queue
/// grows, as its handler sees it (`WsSession::buffered`, and
/// `Hub::buffered` on its worker, the same); once the client reads all,
/// it falls to nothing. The handler awaits meanwhile, and pushes go out
/// while it does.
#[tokio::test]
async fn buffered_grows_while_the_peer_does_not_read_and_falls_when_it_does() {
    let mut server = Fixture::start();
    let (mut client, id) = server.slow_reader().await;
    client.send(Message::text("watch")).await.unwrap();
    let (before, on_worker) = server.look().await;
    assert_eq!(before, Buffered::default());
    assert_eq!(on_worker, Some(before));
    // Off its worker (the test's thread), the hub cannot tell.
    assert_eq!(server.hub.buffered(id), None);
    // Fewer than the queue's bound (the worker may hand all of them to
    // the queue before the connection takes any): none is dropped, and
    // the connection stays open; more than the socket (512 KiB) and one
    // batch take, so some wait.
    let sent = QUEUE - 1;
    for i in 0..sent {
        assert_eq!(server.hub.send_binary(id, push(i)), Ok(()));
    }
    common::wait_stats(&server.handle, "all handed to it", |s| {
        s.messages.hub_queued == 0 && s.messages.deliveries_pending == 0
    })
    .await;
    let (behind, on_worker) = server.look().await;
    assert!(behind.messages >= 1, "{behind:?}");
    assert_eq!(behind.bytes, behind.messages * (PUSH + 10), "{behind:?}");
    assert_eq!(on_worker, Some(behind));
    for i in 0..sent {
        assert_eq!(
            next_data(&mut client).await,
            Message::binary(push(i)),
            "{i}"
        );
    }
    let (after, _) = server.look().await;
    assert_eq!(after, Buffered::default(), "all read");
    server.ticks.close();
    assert_eq!(next_data(&mut client).await, Message::text("watched"));
    let counted = server.handle.stats().messages;
    assert_eq!((counted.pushes, counted.queue_drops), (sent as u64, 0));
    // (Gone before the shutdown, which would wait for its close.)
    drop(client);
    server.stop().await;
}
