//! A confirmed push ([`Hub::send_confirmed`](megaconn::Hub::send_confirmed))
//! that a WebSocket's close follows, over TLS end to end (rustls client,
//! tungstenite over it): the push goes before the close frame
//! ([`Hub::close`](megaconn::Hub::close)), and its caller hears `Ok` only
//! if it left the TLS session whole (`proto/ws/conn.rs`: the close's
//! flush must have gone, not only the write buffer), else `Closed`.
//!
//! - a client that reads gets the push, then the close frame 1008, and
//!   the push resolves `Ok`, parked or awake;
//! - an awake client that reads nothing, its receive buffer the kernel's
//!   smallest and the server's send buffer small, cannot take a 1 MiB push
//!   before its close (the close handshake's `close_timeout`, or the write
//!   bound if the push was being written when the close came): it
//!   resolves `Closed` and counts in `queue_drops`, never `Ok`; and so
//!   when the push and the close are sure to reach the connection together
//!   (its worker held meanwhile by another connection's handler), so that
//!   the close handshake writes the push and gives up at `close_timeout`.

use std::net::SocketAddr;
use std::sync::{mpsc as std_mpsc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use megaconn::{
    CloseReason, ConnectionId, Delivery, Server, Undelivered, WebSocketHandler, WebSocketRoute,
    WsMessage, WsSession,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::msg::{Probe, Running};
use crate::common::tls::{handshake, Ca};
use crate::common::{self, SAFETY};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// How long the server's close waits for the peer's answer, and how long
/// a stuck write may wait: short, so that a client that reads nothing is
/// closed soon.
const BOUND: Duration = Duration::from_millis(500);

/// A push larger than what a client that reads nothing lets out of the
/// server: its receive buffer is the kernel's smallest, the server's send
/// buffer [`SEND_BUFFER`] (the kernel doubles it), and the TLS session's
/// buffer 64 KiB.
const BIG: usize = 1 << 20;

/// The server's `message_send_buffer_size`.
const SEND_BUFFER: usize = 16 << 10;

/// A one-worker WSS server (`/ws`, the [`Probe`] echo, no pings) that
/// parks idle WebSockets after `park` (`None`: never).
fn start(ca: &Ca, park: Option<Duration>) -> Running<(ConnectionId, CloseReason)> {
    serve(ca, park, |opens, closes| Probe { opens, closes })
}

/// [`start`] with the handler `handler` makes of the open and close
/// reporters.
fn serve<H: WebSocketHandler>(
    ca: &Ca,
    park: Option<Duration>,
    handler: impl FnOnce(
        mpsc::UnboundedSender<ConnectionId>,
        mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
    ) -> H,
) -> Running<(ConnectionId, CloseReason)> {
    let server = Server::builder()
        .workers(1)
        .park_idle_after(park)
        .write_timeout(Some(BOUND))
        .message_send_buffer_size(Some(SEND_BUFFER))
        .tls(ca.server(&["localhost"]))
        .listen_tls_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    Running::serve(server, |server, opens, closes| {
        let ws = WebSocketRoute::new(handler(opens, closes))
            .ping_interval(None)
            .heartbeat_timeout(None)
            .close_timeout(BOUND);
        let app = axum::Router::new().route_service("/ws", ws);
        server.start(app).expect("server starts")
    })
}

/// A wss:// client of `addr`, its receive buffer the kernel's smallest if
/// `slow`.
async fn connect(addr: SocketAddr, ca: &Ca, slow: bool) -> Wss {
    let socket = TcpSocket::new_v4().unwrap();
    if slow {
        socket.set_recv_buffer_size(1).unwrap();
    }
    let tcp = tokio::time::timeout(SAFETY, socket.connect(addr))
        .await
        .expect("connected in time")
        .unwrap();
    let tls = handshake(tcp, ca.client(&[b"http/1.1"]), "localhost")
        .await
        .expect("TLS handshake");
    let (ws, response) = tokio::time::timeout(
        SAFETY,
        tokio_tungstenite::client_async("wss://localhost/ws", tls),
    )
    .await
    .expect("WebSocket handshake in time")
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// What `delivery` resolved to, within [`SAFETY`].
async fn outcome(delivery: Delivery) -> Result<(), Undelivered> {
    tokio::time::timeout(SAFETY, delivery)
        .await
        .expect("the delivery resolves in time")
}

/// The next message `ws` reads.
async fn next(ws: &mut Wss) -> Message {
    tokio::time::timeout(SAFETY, ws.next())
        .await
        .expect("a message in time")
        .expect("the stream open")
        .expect("a valid message")
}

/// A confirmed push then the hub's close, to a client that reads: it reads
/// the push, then the close 1008, answers (tungstenite writes its answer
/// as it is polled again) and reads to the end; the push resolves `Ok` and
/// counts as pushed. Parked (the lot writes the push, then wakes the
/// connection to close it) and awake.
#[tokio::test]
async fn a_confirmed_push_before_a_close_to_a_reading_client_resolves_ok() {
    let ca = Ca::new();
    for park in [Some(Duration::from_millis(20)), None] {
        let mut server = start(&ca, park);
        let mut ws = connect(server.addrs[0], &ca, false).await;
        let id = server.next_open().await;
        if park.is_some() {
            server.wait_parked(1).await;
        }
        let delivery = server.hub.send_confirmed(id, "last words");
        assert_eq!(server.hub.close(id), Ok(()));
        assert_eq!(next(&mut ws).await, Message::text("last words"), "{park:?}");
        let Message::Close(Some(close)) = next(&mut ws).await else {
            panic!("a close frame ({park:?})");
        };
        assert_eq!(close.code, CloseCode::Policy);
        let end = tokio::time::timeout(SAFETY, ws.next()).await;
        let end = end.expect("the end in time");
        assert!(matches!(end, None | Some(Err(_))), "{end:?}");
        assert_eq!(outcome(delivery).await, Ok(()), "{park:?}");
        assert_eq!(server.next_close().await, (id, CloseReason::Kicked));
        let messages = server.handle.stats().messages;
        assert_eq!((messages.pushes, messages.queue_drops), (1, 0), "{park:?}");
        server.stop().await;
    }
}

/// A confirmed push of [`BIG`] bytes then the hub's close, to an awake
/// client that reads nothing: the push cannot go whole before the
/// connection closes, so it resolves `Closed` (not `Ok`) and counts in
/// `queue_drops`, not in `pushes`. The close is the hub's if the push was
/// still queued when the close came (the close handshake writes it, then
/// gives up at `close_timeout`), else the write bound's.
#[tokio::test]
async fn a_confirmed_push_a_client_never_takes_before_its_close_resolves_closed() {
    let ca = Ca::new();
    let mut server = start(&ca, None);
    let ws = connect(server.addrs[0], &ca, true).await;
    let id = server.next_open().await;
    let delivery = server.hub.send_confirmed(id, "x".repeat(BIG));
    assert_eq!(server.hub.close(id), Ok(()));
    assert_eq!(outcome(delivery).await, Err(Undelivered::Closed));
    let (closed, reason) = server.next_close().await;
    assert_eq!(closed, id);
    assert!(
        matches!(reason, CloseReason::Kicked | CloseReason::WriteTimeout),
        "{reason:?}"
    );
    let messages = server.handle.stats().messages;
    assert_eq!((messages.pushes, messages.queue_drops), (0, 1));
    drop(ws);
    common::shut_down(&server.handle, server.task).await;
}

/// Reports opens and closes as [`Probe`] does; a `hold` message holds its
/// worker's thread (a handler that blocks, on purpose) until the test lets
/// it go, having said so on `held`.
struct Holder {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
    held: mpsc::UnboundedSender<()>,
    release: Mutex<std_mpsc::Receiver<()>>,
}

impl WebSocketHandler for Holder {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), m: WsMessage, _: &WsSession) -> Option<WsMessage> {
        if m.as_bytes() == b"hold" {
            let _ = self.held.send(());
            let _ = self.release.lock().unwrap().recv_timeout(SAFETY);
        }
        Some(m)
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// The confirmed push of [`BIG`] bytes and the hub's close reach an awake
/// client that reads nothing together: its worker, held by another
/// connection's handler while the test sends both, takes them from its hub
/// queue in one go, so the connection takes the push and its close at once.
/// The close writes the push before its close frame and gives up at
/// `close_timeout`: `Closed`, counted in `queue_drops`, the close the hub's.
/// (A close whose buffer did not go whole must not tell the push `Ok`.)
#[tokio::test]
async fn a_confirmed_push_the_close_handshake_gives_up_on_resolves_closed() {
    use futures_util::SinkExt;

    let ca = Ca::new();
    let (held, mut holding) = mpsc::unbounded_channel();
    let (release, released) = std_mpsc::channel();
    let mut server = serve(&ca, None, |opens, closes| Holder {
        opens,
        closes,
        held,
        release: Mutex::new(released),
    });
    let ws = connect(server.addrs[0], &ca, true).await;
    let id = server.next_open().await;
    let mut holder = connect(server.addrs[0], &ca, false).await;
    server.next_open().await;
    holder.send(Message::text("hold")).await.unwrap();
    tokio::time::timeout(SAFETY, holding.recv())
        .await
        .expect("held in time")
        .expect("the handler");
    let delivery = server.hub.send_confirmed(id, "x".repeat(BIG));
    assert_eq!(server.hub.close(id), Ok(()));
    release.send(()).unwrap();
    assert_eq!(outcome(delivery).await, Err(Undelivered::Closed));
    assert_eq!(server.next_close().await, (id, CloseReason::Kicked));
    let messages = server.handle.stats().messages;
    assert_eq!((messages.pushes, messages.queue_drops), (0, 1));
    assert_eq!(next(&mut holder).await, Message::text("hold"));
    drop(ws);
    common::shut_down(&server.handle, server.task).await;
}
