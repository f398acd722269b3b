//! A WebSocket whose peer vanished without a FIN (a phone gone off the
//! network) and whose server has no heartbeat to notice: a native route
//! with `heartbeat_timeout(None)`, in cleartext and over TLS, and an
//! `axum_ws` socket (which has none). The server closes it within a bound
//! it set, not after the kernel's ~16 minutes of retransmission: the
//! `101` gives the socket `TCP_USER_TIMEOUT` = 2 × the writes' bound + 1 s
//! (`conn/socket.rs`, `bound_unacknowledged`), so a message the peer never
//! acknowledges errors the socket. A parked native connection is woken by
//! the lot and closes as `Io(TimedOut)`; an `axum_ws` handler's `recv`
//! fails with that error and its socket closes as such. Before, the
//! message was taken by the kernel's send buffer, no write of ours waited
//! (so the write bound never applied), and the connection stayed.
//!
//! How the peer vanishes: the test runs in a network namespace of its own
//! whose `lo` is taken down once the connection is where the test wants it
//! (`common::netns`, which also has the server's bounds).
//!
//! And the other side of that bound: a peer that is there but keeps its
//! window shut while a write of ours waits is closed by the server's own
//! write bound, with its reason, not by the kernel's, also when that bound
//! is a `write_timeout` above 2 × `write_stall_timeout` + 1 s.

use crate::common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use common::msg::{tcp_to, Running, WS_UPGRADE};
use common::netns;
use common::tls::{connect, Ca};
use megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade};
use megaconn::{
    Builder, CloseReason, ConnectionId, WebSocketHandler, WebSocketRoute, WsMessage, WsSession,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// The message pushed to the vanished peer: taken whole by the kernel's
/// send buffer, which is what the review saw counted as sent.
const PUSH: usize = 1000;

/// Reports each native connection's opening and close; echoes nothing.
struct Watch {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<CloseReason>,
}

impl WebSocketHandler for Watch {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: WsMessage, _: &WsSession) -> Option<WsMessage> {
        None
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// `builder`'s server (one listener) with a native route at `/ws` whose
/// heartbeat and pings are off, running.
fn native_server(builder: Builder) -> Running<CloseReason> {
    let server = builder.listen().expect("server binds");
    Running::serve(server, |server, opens, closes| {
        let route = WebSocketRoute::new(Watch { opens, closes })
            .ping_interval(None)
            .heartbeat_timeout(None);
        let app = axum::Router::new().route_service("/ws", route);
        server.start(app).expect("server starts")
    })
}

/// A parked WebSocket of a route with its heartbeat off whose peer
/// vanishes closes as `Io(TimedOut)` within [`netns::WAIT`] of a push.
#[test]
fn a_parked_websocket_without_a_heartbeat_whose_peer_vanished_closes_within_the_bound() {
    netns::run_in_private_netns("ws_halfopen", || native(false));
}

/// The same over TLS (`wss://`).
#[test]
fn a_parked_wss_websocket_without_a_heartbeat_whose_peer_vanished_closes_within_the_bound() {
    netns::run_in_private_netns("ws_halfopen wss", || native(true));
}

/// Inside the namespace: a native WebSocket (heartbeat and pings off)
/// opened and parked, `lo` taken down, one push sent, the close awaited.
async fn native(tls: bool) {
    let ca = Ca::new();
    let addr = "127.0.0.1:0".parse().unwrap();
    let builder = if tls {
        netns::builder()
            .tls(ca.server(&["localhost"]))
            .listen_tls_on(addr)
    } else {
        netns::builder().listen_on(addr)
    };
    let mut server = native_server(builder);
    let addr = server.addrs[0];

    // Held (not read) until the end: the peer's side of the connection.
    let client: Box<dyn std::any::Any> = if tls {
        let mut tls = connect(addr, ca.client(&[b"http/1.1"]), "localhost").await;
        netns::request_head(&mut tls, WS_UPGRADE, "HTTP/1.1 101").await;
        Box::new(tls)
    } else {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        netns::request_head(&mut tcp, WS_UPGRADE, "HTTP/1.1 101").await;
        Box::new(tcp)
    };
    let id = netns::opened_and_parked(&server.handle, &mut server.opens).await;

    let push = || assert_eq!(server.hub.send_binary(id, vec![7u8; PUSH]), Ok(()));
    let what = format!("ws_halfopen (tls: {tls})");
    netns::vanish_and_await_close(&server.handle, &what, push, server.closes.recv()).await;
    drop(client);
    common::shut_down(&server.handle, server.task).await;
}

/// What the `axum_ws` handler shares with the test.
#[derive(Clone)]
struct Axum {
    /// Told once the socket is upgraded.
    opens: mpsc::UnboundedSender<()>,
    /// Notified once the peer is gone: the handler sends then.
    push: Arc<Notify>,
    /// How the handler's `recv` ended.
    closes: mpsc::UnboundedSender<CloseReason>,
}

/// The `axum_ws` handler: upgraded, it waits for the test's word, sends
/// one message (taken by the kernel's send buffer: no send waits) and
/// receives until the socket ends, then says how (an I/O error as
/// [`CloseReason::Io`] of its kind).
async fn axum_ws(upgrade: WebSocketUpgrade, State(to): State<Axum>) -> Response {
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        let _ = to.opens.send(());
        to.push.notified().await;
        let sent = socket.send(Message::Binary(vec![7u8; PUSH].into())).await;
        let reason = match sent {
            Ok(()) => loop {
                match socket.recv().await {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break reason_of(&e),
                    None => break CloseReason::ClientClosed,
                }
            },
            Err(e) => reason_of(&e),
        };
        let _ = to.closes.send(reason);
    })
}

/// The I/O error under an `axum_ws` error (`axum::Error` over
/// tungstenite's over the socket's) as [`CloseReason::Io`]; another as
/// [`CloseReason::ServerClosed`], which no assertion takes for it.
fn reason_of(e: &axum::Error) -> CloseReason {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return CloseReason::Io(io.kind());
        }
        source = error.source();
    }
    eprintln!("ws_halfopen axum_ws: the socket ended with {e}, no I/O error");
    CloseReason::ServerClosed
}

/// An `axum_ws` socket (no heartbeat of the server's) whose peer vanishes:
/// the handler's `recv` fails as `Io(TimedOut)` within [`netns::WAIT`] of
/// a send, and its close is counted as such.
#[test]
fn an_axum_websocket_whose_peer_vanished_fails_within_the_bound() {
    netns::run_in_private_netns("ws_halfopen axum_ws", axum_vanish_and_wait);
}

/// Inside the namespace: an `axum_ws` socket upgraded, `lo` taken down,
/// the handler told to send, the end of its `recv` awaited.
async fn axum_vanish_and_wait() {
    let (opened, mut opens) = mpsc::unbounded_channel();
    let (closed, mut closes) = mpsc::unbounded_channel();
    let push = Arc::new(Notify::new());
    let state = Axum {
        opens: opened,
        push: push.clone(),
        closes: closed,
    };
    let app = axum::Router::new()
        .route("/ws", axum::routing::get(axum_ws))
        .with_state(state);
    let server = netns::builder()
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(server.start(app).expect("server starts").run());

    // Held (not read) until the end: the peer's side of the connection.
    let mut client = TcpStream::connect(addr).await.unwrap();
    netns::request_head(&mut client, WS_UPGRADE, "HTTP/1.1 101").await;
    tokio::time::timeout(common::SAFETY, opens.recv())
        .await
        .expect("upgraded in time")
        .expect("upgraded");

    let what = "ws_halfopen axum_ws";
    netns::vanish_and_await_close(&handle, what, || push.notify_one(), closes.recv()).await;
    drop(client);
    common::shut_down(&handle, task).await;
}

/// A peer that reads nothing (its window shut) while the server's write
/// waits is closed by `write_timeout` (4 s here), the bound its writes
/// have, as a slow consumer: not by the kernel as `Io(TimedOut)`. The
/// kernel's bound (`TCP_USER_TIMEOUT`, which Linux 5.11 on applies to a
/// shut window too) is 2 × `write_timeout` + 1 s; on the code before it
/// was 2 × `write_stall_timeout` + 1 s (3 s here) whatever `write_timeout`
/// said, and the kernel closed the peer first.
#[tokio::test]
async fn a_peer_whose_window_stays_shut_is_closed_by_write_timeout_not_the_kernel() {
    let builder = netns::builder()
        .write_stall_timeout(Some(Duration::from_secs(1)))
        .write_timeout(Some(Duration::from_secs(4)))
        .message_send_buffer_size(Some(16 << 10))
        .listen_on("127.0.0.1:0".parse().unwrap());
    let mut server = native_server(builder);

    // The kernel's smallest receive buffer, never read past the `101`.
    let mut client = tcp_to(server.addrs[0], Some(1)).await;
    netns::request_head(&mut client, WS_UPGRADE, "HTTP/1.1 101").await;
    let id = netns::opened_and_parked(&server.handle, &mut server.opens).await;

    // Far more than both buffers take: the server's write waits.
    assert_eq!(server.hub.send_binary(id, vec![7u8; 4 << 20]), Ok(()));
    let reason = tokio::time::timeout(netns::WAIT, server.closes.recv())
        .await
        .expect("closed in time")
        .expect("on_close");
    assert_eq!(reason, CloseReason::SlowConsumer);
    drop(client);
    common::shut_down(&server.handle, server.task).await;
}
