//! What a chat server built on the native WebSocket API and the hub's
//! topics needs beyond one message, over real sockets with tungstenite's
//! client: the peer's close code and reason at the close (a log-out from a
//! lost network), closes counted by code, a publish that skips its
//! author, the lag of publishes in the workers' queues, a timed close
//! with its own code, and the closes a forced shutdown cuts off counted
//! with what their peers got. Every wait is bounded and waits on a
//! condition; every close the server begins is answered as a browser
//! answers it, at once ([`close_from_server`]).

use crate::common;
use crate::ws::next_data;

use std::net::SocketAddr;
use std::time::Duration;

use common::SAFETY;
use futures_util::{SinkExt, StreamExt};
use megaconn::{
    Builder, CloseReason, ConnectionId, Hub, HubError, Server, ServerHandle, ShutdownSummary,
    WebSocketHandler, WebSocketRoute, WsClose, WsMessage, WsSession,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What `on_close_with` heard: the id, the reason, the peer's code and
/// reason text.
type Heard = (ConnectionId, CloseReason, u16, String);

/// A room member: `join:T` subscribes to topic `T` (answered `joined`),
/// `say:T:text` publishes `text` to `T` but its author (answered `said`),
/// `hang` is never answered (its handler awaits for good); anything else
/// is echoed.
struct Room {
    hub: Hub,
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<Heard>,
}

impl WebSocketHandler for Room {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), m: WsMessage, s: &WsSession) -> Option<WsMessage> {
        let text = std::str::from_utf8(m.as_bytes()).unwrap_or_default();
        if let Some(topic) = text.strip_prefix("join:") {
            s.subscribe(topic).expect("subscribed");
            return Some("joined".into());
        }
        if let Some((topic, said)) = text.strip_prefix("say:").and_then(|t| t.split_once(':')) {
            let published = self.hub.publish_except(topic, said.to_owned(), s.id());
            assert_eq!(published, Ok(()));
            return Some("said".into());
        }
        if text == "hang" {
            std::future::pending::<()>().await;
        }
        Some(m)
    }

    fn on_close_with(&self, _: (), close: &WsClose<'_>) {
        let heard = (
            close.id(),
            close.reason(),
            close.peer_code(),
            close.peer_reason().to_owned(),
        );
        let _ = self.closes.send(heard);
    }
}

/// A server on 127.0.0.1:0 serving [`Room`] at `/room`.
struct RoomServer {
    addr: SocketAddr,
    handle: ServerHandle,
    hub: Hub,
    opens: mpsc::UnboundedReceiver<ConnectionId>,
    closes: mpsc::UnboundedReceiver<Heard>,
    task: tokio::task::JoinHandle<ShutdownSummary>,
}

impl RoomServer {
    async fn start(builder: Builder) -> RoomServer {
        let mut server = builder
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let (addr, handle, hub) = (server.local_addr(), server.handle(), server.hub());
        let (opened, opens) = mpsc::unbounded_channel();
        let (closed, closes) = mpsc::unbounded_channel();
        let room = Room {
            hub: hub.clone(),
            opens: opened,
            closes: closed,
        };
        let app = axum::Router::new().route_service("/room", WebSocketRoute::new(room));
        let task = tokio::spawn(server.start(app).expect("server starts").run());
        RoomServer {
            addr,
            handle,
            hub,
            opens,
            closes,
            task,
        }
    }

    /// A client, and its connection's id.
    async fn client(&mut self) -> (Client, ConnectionId) {
        let url = format!("ws://{}/room", self.addr);
        let (client, _) = tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(url))
            .await
            .expect("handshake in time")
            .expect("handshake");
        (client, next(&mut self.opens, "on_open").await)
    }

    /// The next close `on_close_with` heard.
    async fn closed(&mut self) -> Heard {
        next(&mut self.closes, "on_close_with").await
    }

    /// Shuts the server down; each of `clients` gets the route's goodbye
    /// (1001) and answers it.
    async fn stop(self, clients: Vec<Client>) {
        self.handle.shutdown();
        for mut client in clients {
            assert_eq!(close_from_server(&mut client).await.code, CloseCode::Away);
        }
        let stopped = tokio::time::timeout(SAFETY, self.task).await;
        stopped.expect("server stops").expect("server task");
    }
}

/// The close frame the server sent `client`, which answers it (as a
/// browser does, at once) and reads on to the end of the stream, which the
/// server's TCP close ends. tungstenite only queues its answer to a close
/// and writes it when polled again: read once and left, as these tests
/// did, the client never answered, and the server waited out its
/// `close_timeout` (5 s) for it at each close it began, hearing of the
/// close only after: the tests took 12–15 s.
async fn close_from_server(client: &mut Client) -> CloseFrame {
    let Message::Close(Some(close)) = next_data(client).await else {
        panic!("a close frame");
    };
    let end = tokio::time::timeout(SAFETY, client.next()).await;
    let end = end.expect("the server closes once its close is answered");
    assert!(
        matches!(end, None | Some(Err(_))),
        "nothing after the close: {end:?}"
    );
    close
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(SAFETY, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("handler gone")
}

/// Sends `text` and reads the answer.
async fn ask(client: &mut Client, text: &str) -> Message {
    client.send(Message::text(text)).await.unwrap();
    next_data(client).await
}

/// The value of the series `line` (name and labels) in a scrape.
fn series(scrape: &str, line: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

/// `on_close_with` hears the peer's close frame, code and reason (a
/// log-out), parked or awake; a peer that drops the TCP connection
/// without one is 1006 (a lost network); one that closes with an
/// application code, that code. Each is counted in
/// `megaconn_ws_closes_total{direction="received"}` by its code, and a
/// hub close in `direction="sent"`. Before, `on_close` said
/// `ClientClosed` for all three peers and nothing counted codes.
#[tokio::test]
async fn on_close_hears_the_peers_close_code_and_closes_count_by_code() {
    for park in [Some(Duration::from_millis(50)), None] {
        let builder = Server::builder().workers(1).park_idle_after(park);
        let mut server = RoomServer::start(builder).await;
        let (mut out, a) = server.client().await;
        let (lost, b) = server.client().await;
        let (mut app, c) = server.client().await;
        let (mut kicked, d) = server.client().await;
        if park.is_some() {
            common::wait_stats(&server.handle, "parked", |s| s.connections_parked == 4).await;
        }
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "logged out".into(),
        };
        out.close(Some(bye)).await.unwrap();
        let heard = server.closed().await;
        let out_heard = (a, CloseReason::ClientClosed, 1000, "logged out".to_owned());
        assert_eq!(heard, out_heard, "{park:?}");
        drop(lost);
        let heard = server.closed().await;
        assert_eq!(heard, (b, CloseReason::ClientClosed, 1006, String::new()));
        let app_close = CloseFrame {
            code: CloseCode::from(4002),
            reason: "".into(),
        };
        app.close(Some(app_close)).await.unwrap();
        assert_eq!(
            server.closed().await,
            (c, CloseReason::ClientClosed, 4002, String::new())
        );
        assert_eq!(server.hub.close(d), Ok(()));
        let close = close_from_server(&mut kicked).await;
        assert_eq!(close.code, CloseCode::Policy);
        // Our close, not the peer's: its answer is not a close it began.
        assert_eq!(
            server.closed().await,
            (d, CloseReason::Kicked, 1006, String::new())
        );
        let rooms = server.handle.stats().messages.rooms;
        for (direction, code, n) in [
            ("received", "1000", 1),
            ("received", "1006", 1),
            ("received", "4xxx", 1),
            ("sent", "1008", 1),
            ("sent", "1006", 0),
            ("received", "1008", 0),
        ] {
            assert_eq!(
                rooms.ws_closes(direction, code),
                n,
                "{direction} {code} {park:?}"
            );
        }
        let scrape = server.handle.render_metrics();
        let line = r#"megaconn_ws_closes_total{direction="received",code="1000"}"#;
        assert_eq!(series(&scrape, line), Some(1.0), "{scrape}");
        server.stop(Vec::new()).await;
    }
}

/// `publish_except` reaches every subscriber but the one it skips (a chat
/// message's author): the author's next message is the plain publish
/// after it, on one worker or spread over two. Before, an author got its
/// own message back (`publish` reaches every subscriber).
#[tokio::test]
async fn publish_except_skips_its_author_and_reaches_the_others() {
    for workers in [1, 2] {
        let mut server = RoomServer::start(Server::builder().workers(workers)).await;
        let mut members = Vec::new();
        for _ in 0..3 {
            let (mut client, _) = server.client().await;
            assert_eq!(
                ask(&mut client, "join:lobby").await,
                Message::text("joined")
            );
            members.push(client);
        }
        let author = &mut members[0];
        assert_eq!(ask(author, "say:lobby:hello").await, Message::text("said"));
        assert_eq!(server.hub.publish("lobby", "marker"), Ok(()));
        for (i, member) in members.iter_mut().enumerate() {
            if i > 0 {
                assert_eq!(next_data(member).await, Message::text("hello"), "{workers}");
            }
            assert_eq!(
                next_data(member).await,
                Message::text("marker"),
                "{i} {workers}"
            );
        }
        server.stop(members).await;
    }
}

/// Each worker observes each publish once in
/// `megaconn_publish_lag_seconds` when it takes the publish from its
/// queue, members or not: 3 publishes on 2 workers are 6 observations.
/// Before, nothing said how long publishes waited there.
#[tokio::test]
async fn the_publish_lag_histogram_counts_each_publish_per_worker() {
    let server = RoomServer::start(Server::builder().workers(2)).await;
    for i in 0..3 {
        assert_eq!(server.hub.publish("nobody", format!("p{i}")), Ok(()));
    }
    common::wait_stats(&server.handle, "taken", |s| s.messages.hub_messages == 6).await;
    let lag = server.handle.stats().messages.rooms.publish_lag;
    assert_eq!(lag.count(), 6);
    assert!(lag.sum < SAFETY, "{:?}", lag.sum);
    let scrape = server.handle.render_metrics();
    assert_eq!(
        series(&scrape, "megaconn_publish_lag_seconds_count"),
        Some(6.0),
        "{scrape}"
    );
    server.stop(Vec::new()).await;
}

/// `close_after_with` closes at its time with its own code and reason
/// (counted as sent with it), parked or awake; a code no close frame may
/// carry is refused at the call. Before, a timed close was always 1008.
#[tokio::test]
async fn close_after_with_sends_its_code() {
    for park in [Some(Duration::from_millis(50)), None] {
        let builder = Server::builder().workers(1).park_idle_after(park);
        let mut server = RoomServer::start(builder).await;
        let (mut late, a) = server.client().await;
        let refused = server.hub.close_after_with(a, SAFETY, 1005, "");
        assert_eq!(refused, Err(HubError::CloseCode(1005)));
        let after = Duration::from_millis(100);
        let timed = server.hub.close_after_with(a, after, 4001, "auth timeout");
        assert_eq!(timed, Ok(()));
        let close = close_from_server(&mut late).await;
        let got = (u16::from(close.code), close.reason.as_str());
        assert_eq!(got, (4001, "auth timeout"), "{park:?}");
        let (closed, reason, ..) = server.closed().await;
        assert_eq!((closed, reason), (a, CloseReason::Kicked));
        let rooms = server.handle.stats().messages.rooms;
        assert_eq!(rooms.ws_closes("sent", "4xxx"), 1, "{park:?}");
        server.stop(Vec::new()).await;
    }
}

/// A forced shutdown's closes count in `megaconn_ws_closes_total` as
/// `sent`, with what each peer got on the wire: a connection whose
/// handler still awaited at `shutdown_timeout` no close frame (1006: its
/// stream ends without one), one whose peer had not answered its goodbye
/// yet that goodbye (1001). Both handlers hear `Shutdown`. Before, neither
/// counted: the connection's future was dropped before its close counted.
#[tokio::test]
async fn closes_a_forced_shutdown_cuts_off_count_as_what_their_peers_got() {
    let builder = Server::builder()
        .workers(1)
        .park_idle_after(None)
        .shutdown_timeout(Duration::from_millis(300));
    let mut server = RoomServer::start(builder).await;
    let (mut busy, a) = server.client().await;
    let (mut silent, b) = server.client().await;
    busy.send(Message::text("hang")).await.unwrap();
    // Counted as its handler is called, in the same turn of the worker.
    common::wait_stats(&server.handle, "hang taken", |s| s.messages.frames_in == 1).await;
    server.handle.shutdown();
    // The goodbye, left unanswered: the server waits for the answer
    // (`close_timeout`, 5 s) past `shutdown_timeout`.
    let Message::Close(Some(goodbye)) = next_data(&mut silent).await else {
        panic!("a goodbye");
    };
    assert_eq!(goodbye.code, CloseCode::Away);
    let stopped = tokio::time::timeout(SAFETY, server.task).await;
    let summary = stopped.expect("server stops").expect("server task");
    assert_eq!(summary.forced, 2);
    let end = tokio::time::timeout(SAFETY, busy.next()).await;
    let end = end.expect("the end in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "no close frame on the wire: {end:?}"
    );
    // (The task taken, the server is read field by field.)
    let closes = &mut server.closes;
    let mut heard = vec![
        next(closes, "on_close_with").await,
        next(closes, "on_close_with").await,
    ];
    heard.sort_by_key(|(id, ..)| *id == b);
    let shut = |id| (id, CloseReason::Shutdown, 1006, String::new());
    assert_eq!(heard, [shut(a), shut(b)]);
    let rooms = server.handle.stats().messages.rooms;
    assert_eq!(rooms.ws_closes("sent", "1006"), 1, "{rooms:?}");
    assert_eq!(rooms.ws_closes("sent", "1001"), 1, "{rooms:?}");
    let all: u64 = rooms.ws_closes.iter().flatten().sum();
    assert_eq!(all, 2, "{rooms:?}");
}
