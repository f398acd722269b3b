//! Pushes to a connection whose own handler awaits (a database lookup, a
//! call to another service): they go out while it awaits, so a peer that
//! reads everything is not a slow consumer however many come meanwhile
//! (`outbound_queue` of them closed it with a 1013 until session 46: the
//! queue was drained only once the handler returned). WebSocket (ws://
//! and wss://) and framed; and a peer that does not read while its
//! handler awaits is still closed as a slow consumer, without waiting for
//! the handler. Real sockets; every wait bounded and on a condition.

use crate::common::{self, msg::deref_to_running};
use crate::ws::next_data;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::msg::{frame, read_frame, tcp_to, ws_client, ws_handshake, Gate, Gated, Running};
use common::SAFETY;
use futures_util::SinkExt;
use megaconn::{
    Builder, CloseReason, ConnectionId, FramedHandler, Framing, Server, Session, WebSocketHandler,
    WebSocketRoute, WsMessage, WsSession,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The outbound queue of these servers: one push more than it holds comes
/// while the handler awaits.
const QUEUE: usize = 8;

/// What a handler reports, and the gate its `wait` awaits.
#[derive(Clone)]
struct Probe {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<CloseReason>,
    gate: Gate,
}

impl Probe {
    /// `wait`: waits at the gate, answers `waited`.
    async fn wait(&self) -> &'static str {
        self.gate.wait().await;
        "waited"
    }
}

impl WebSocketHandler for Probe {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(self.wait().await.into())
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

impl FramedHandler for Probe {
    type State = ();

    fn on_open(&self, _: &mut (), session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: Bytes, _: &Session) -> Option<Bytes> {
        Some(Bytes::from_static(self.wait().await.as_bytes()))
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// Which protocol a server speaks.
#[derive(Debug, Clone, Copy)]
enum Proto {
    Ws,
    Framed,
}

/// A server on 127.0.0.1:0, one worker, never parking, its queue
/// [`QUEUE`], running: its address and its handlers' gate.
struct Waiting {
    addr: SocketAddr,
    gate: Gated,
    running: Running<CloseReason>,
}

deref_to_running!(Waiting, CloseReason);

impl Waiting {
    fn start(builder: Builder, proto: Proto) -> Waiting {
        let builder = builder
            .workers(1)
            .park_idle_after(None)
            .outbound_queue(QUEUE);
        let addr = "127.0.0.1:0".parse().unwrap();
        let listening = match proto {
            Proto::Ws => builder.listen_on(addr),
            Proto::Framed => builder.listen_framed_on(addr, Framing::length_prefixed(4)),
        };
        let server = listening.listen().expect("server binds");
        let addr = server.local_addr();
        let (probes_gate, gate) = Gate::new();
        let running = Running::serve(server, |server, opens, closes| {
            let probe = Probe {
                opens,
                closes,
                gate: probes_gate,
            };
            match proto {
                Proto::Ws => {
                    let app = axum::Router::new().route_service("/ws", WebSocketRoute::new(probe));
                    server.start(app).expect("server starts")
                }
                Proto::Framed => server.start_framed(probe).expect("server starts"),
            }
        });
        Waiting {
            addr,
            gate,
            running,
        }
    }

    /// Sends push `i` (`push i`) to `id`.
    fn push(&self, id: ConnectionId, i: usize) {
        assert_eq!(self.hub.send(id, format!("push {i}")), Ok(()));
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// A WebSocket client that reads everything gets the `QUEUE + 1` pushes
/// that came while its handler awaited, then the reply; no close, no drop.
/// (Before: the reply, then a close 1013 "slow consumer", the pushes
/// lost.)
#[tokio::test]
async fn pushes_while_a_ws_handler_awaits_reach_a_reading_peer() {
    let mut server = Waiting::start(Server::builder(), Proto::Ws);
    let client = ws_client(server.addr, "/ws", None).await;
    reads_all_then_the_reply(&mut server, client).await;
    server.stop().await;
}

/// The same over wss:// (pushes copied into the write buffer, sealed by
/// the TLS session, the reply after them).
#[tokio::test]
async fn over_tls_pushes_while_a_ws_handler_awaits_reach_a_reading_peer() {
    let ca = common::tls::Ca::new();
    let builder = Server::builder().tls(ca.server(&["localhost"]));
    let mut server = Waiting::start(builder, Proto::Ws);
    let config = ca.client(&[b"http/1.1"]);
    let stream = common::tls::connect(server.addr, config, "localhost").await;
    let (client, _) = tokio::time::timeout(
        SAFETY,
        tokio_tungstenite::client_async("wss://localhost/ws", stream),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    reads_all_then_the_reply(&mut server, client).await;
    server.stop().await;
}

async fn reads_all_then_the_reply<S>(
    server: &mut Waiting,
    mut client: tokio_tungstenite::WebSocketStream<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = server.next_open().await;
    client.send(Message::text("wait")).await.unwrap();
    server.gate.next_busy().await;
    // Each read as it comes, while the handler awaits (before: none came
    // until it returned; then the reply and a 1013).
    for i in 0..=QUEUE {
        server.push(id, i);
        assert_eq!(
            next_data(&mut client).await,
            Message::text(format!("push {i}"))
        );
    }
    server.gate.add_permits(1);
    assert_eq!(next_data(&mut client).await, Message::text("waited"));
    // Still open: it answers the next message.
    client.send(Message::text("again")).await.unwrap();
    server.gate.next_busy().await;
    server.gate.add_permits(1);
    assert_eq!(next_data(&mut client).await, Message::text("waited"));
    let stats = server.handle.stats().messages;
    assert_eq!(
        (stats.pushes, stats.queue_drops),
        (QUEUE as u64 + 1, 0),
        "{stats:?}"
    );
    assert!(server.closes.try_recv().is_err(), "not closed");
}

/// The same for a framed connection (length-prefixed, cleartext).
#[tokio::test]
async fn pushes_while_a_framed_handler_awaits_reach_a_reading_peer() {
    let mut server = Waiting::start(Server::builder(), Proto::Framed);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let id = server.next_open().await;
    s.write_all(&frame(b"wait")).await.unwrap();
    server.gate.next_busy().await;
    for i in 0..=QUEUE {
        server.push(id, i);
        assert_eq!(read_frame(&mut s).await, format!("push {i}").as_bytes());
    }
    server.gate.add_permits(1);
    assert_eq!(read_frame(&mut s).await, b"waited");
    let stats = server.handle.stats().messages;
    assert_eq!(
        (stats.pushes, stats.queue_drops),
        (QUEUE as u64 + 1, 0),
        "{stats:?}"
    );
    assert!(server.closes.try_recv().is_err(), "not closed");
    server.stop().await;
}

/// A peer that does not read while its handler awaits is a slow consumer
/// still: its socket stuck on part of large pushes, the queue overflows
/// behind it, and the connection closes then, its handler's future
/// dropped (it never returns here), well before `write_timeout` (30 s).
/// (Before: nothing was written while the handler awaited; it was closed
/// only once the handler returned.)
#[tokio::test]
async fn a_peer_that_does_not_read_while_its_handler_awaits_is_a_slow_consumer() {
    for proto in [Proto::Ws, Proto::Framed] {
        let builder = Server::builder()
            .message_send_buffer_size(Some(4096))
            .write_timeout(Some(Duration::from_secs(30)))
            .track_connections(true);
        let mut server = Waiting::start(builder, proto);
        let mut s = tcp_to(server.addr, Some(4096)).await;
        // Held, never read, until the end of the test.
        let _held = match proto {
            Proto::Ws => {
                let mut client = ws_handshake(s, "/ws").await;
                client.send(Message::text("wait")).await.unwrap();
                (Some(client), None)
            }
            Proto::Framed => {
                s.write_all(&frame(b"wait")).await.unwrap();
                (None, Some(s))
            }
        };
        let id = server.next_open().await;
        server.gate.next_busy().await;
        // (Under a framed listener's default frame limit, 64 KiB.)
        for _ in 0..3 {
            assert_eq!(server.hub.send(id, vec![7u8; 60_000]), Ok(()));
        }
        crate::ws_api::stuck_writing(&server.handle).await;
        for i in 0..=QUEUE {
            assert_eq!(server.hub.send(id, format!("push {i}")), Ok(()));
        }
        let reason = server.next_close().await;
        assert_eq!(reason, CloseReason::SlowConsumer, "{proto:?}");
        server.stop().await;
    }
}
