//! `Hub::reset` at once, over real sockets, for the three message
//! protocols (framed TCP, WebSocket, Server-Sent Events), cleartext and
//! TLS: a connection whose peer stopped reading in the middle of a large
//! push (awake, or woken to resume one its parked socket took part of) is
//! reset then and there, not at its write bound (120 s here) with a FIN;
//! an idle one over TLS is reset with nothing written before the RST (no
//! close frame, no `close_notify`, no last event); and a reset made while
//! a handler awaits keeps the pushes queued before it off the wire.
//!
//! Every wait is bounded and waits on a condition (an event, a counter, a
//! byte): a reset is waited for [`AT_ONCE`] (10 s), far below the write
//! bound, so one that waited for that bound cannot pass.

use crate::common::msg::{
    deref_to_running, frame, http_and_framed, message_routes, set_up, tcp_to, ws_client_frame,
    Proto, Running,
};
use crate::common::tls::{handshake, Ca};
use crate::common::{closed_as, SAFETY};

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use megaconn::{
    CloseReason, ConnectionId, FramedHandler, Framing, Hub, Server, Session, SseHandler,
    WebSocketHandler, WsMessage, WsSession,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// How long a reset may take to reach the peer: generous for a loaded CI
/// machine, far below [`WRITE_BOUND`].
const AT_ONCE: Duration = Duration::from_secs(10);

/// The server's `write_timeout`: a reset that waited for the write under
/// way to end would come this late (as a `WriteTimeout`, with a FIN).
const WRITE_BOUND: Duration = Duration::from_secs(120);

/// A push far larger than the server's send buffer and the client's
/// receive buffer together (the kernel's smallest): its write cannot end
/// while the client reads nothing.
const BIG: usize = 1 << 20;

/// The server's `message_send_buffer_size` (the kernel makes it 32 KiB).
const SEND_BUFFER: usize = 16 << 10;

/// The body of the push a waiting handler queues before its reset.
const QUEUED: &[u8] = b"queued";

/// The handler of all three protocols: reports opens and closes (with the
/// connection's id) and echoes, but for a message `wait`: it pushes
/// [`QUEUED`] to its own connection and resets it (both queued on the
/// hub while the worker runs the handler, so its pump takes them
/// together), says so on `awaiting`, and awaits `release`.
#[derive(Clone)]
struct Gate {
    hub: Hub,
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
    awaiting: mpsc::UnboundedSender<ConnectionId>,
    release: Arc<Notify>,
}

impl Gate {
    /// What the handler answers `message` with on connection `id`.
    async fn answer(&self, id: ConnectionId, message: &[u8]) -> Bytes {
        if message != b"wait" {
            return Bytes::copy_from_slice(message);
        }
        assert_eq!(self.hub.send(id, QUEUED), Ok(()));
        assert_eq!(self.hub.reset(id), Ok(()));
        let _ = self.awaiting.send(id);
        self.release.notified().await;
        Bytes::from_static(b"done")
    }
}

impl FramedHandler for Gate {
    type State = ();

    fn on_open(&self, _: &mut (), session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), frame: Bytes, session: &Session) -> Option<Bytes> {
        Some(self.answer(session.id(), &frame).await)
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

impl WebSocketHandler for Gate {
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
        let answer = self.answer(session.id(), message.as_bytes()).await;
        Some(WsMessage::Binary(answer))
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

impl SseHandler for Gate {
    fn on_open(&self, _: &Parts, session: &Session) {
        let _ = self.opens.send(session.id());
    }

    fn on_close(&self, id: ConnectionId, reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// A server of the three protocols on 127.0.0.1:0, one worker, cleartext
/// or TLS, its writes bounded by [`WRITE_BOUND`], parking idle
/// connections or not, serving a [`Gate`] ([`message_routes`]: no pings),
/// running.
struct Resets {
    http: SocketAddr,
    framed: SocketAddr,
    /// The CA of its certificate, when it serves TLS.
    ca: Option<Ca>,
    /// Whether it parks idle connections.
    parks: bool,
    awaiting: mpsc::UnboundedReceiver<ConnectionId>,
    release: Arc<Notify>,
    running: Running<(ConnectionId, CloseReason)>,
}

deref_to_running!(Resets, (ConnectionId, CloseReason));

impl Resets {
    fn start(tls: bool, parks: bool) -> Resets {
        let any = "127.0.0.1:0".parse().unwrap();
        let framing = Framing::length_prefixed(4).max_outbound_frame_bytes(2 * BIG);
        let builder = Server::builder()
            .workers(1)
            .write_timeout(Some(WRITE_BOUND))
            .message_send_buffer_size(Some(SEND_BUFFER))
            .park_idle_after(parks.then_some(Duration::from_millis(20)));
        let (builder, ca) = if tls {
            let ca = Ca::new();
            let builder = builder
                .tls(ca.server(&["localhost"]))
                .listen_tls_on(any)
                .listen_framed_tls_on(any, framing);
            (builder, Some(ca))
        } else {
            let builder = builder.listen_on(any).listen_framed_on(any, framing);
            (builder, None)
        };
        let server = builder.listen().expect("server binds");
        let (http, framed) = http_and_framed(&server);
        let (waits, awaiting) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let gates_release = release.clone();
        let running = Running::serve(server, move |mut server, opens, closes| {
            let gate = Gate {
                hub: server.hub(),
                opens,
                closes,
                awaiting: waits,
                release: gates_release,
            };
            let app = message_routes(gate.clone(), |events| events);
            server.framed(gate).start(app).expect("starts")
        });
        Resets {
            http,
            framed,
            ca,
            parks,
            awaiting,
            release,
            running,
        }
    }

    /// A client of `proto` whose receive buffer is the kernel's smallest,
    /// its protocol set up (and, on a server that parks, its connection
    /// parked): its socket, raw (over TLS, the records from here on are
    /// read undecrypted), and its id.
    async fn client(&mut self, proto: Proto) -> (TcpStream, ConnectionId) {
        let parked = self.handle.stats().connections_parked;
        let addr = match proto {
            Proto::Framed => self.framed,
            Proto::Ws | Proto::Sse => self.http,
        };
        let mut tcp = tcp_to(addr, Some(1)).await;
        let tcp = match &self.ca {
            None => {
                set_up(proto, &mut tcp).await;
                tcp
            }
            Some(ca) => {
                let alpn: &[&[u8]] = match proto {
                    Proto::Framed => &[],
                    Proto::Ws | Proto::Sse => &[b"http/1.1"],
                };
                let mut tls = handshake(tcp, ca.client(alpn), "localhost")
                    .await
                    .expect("handshake");
                set_up(proto, &mut tls).await;
                tls.into_inner().0
            }
        };
        let id = self.next_open().await;
        if self.parks {
            self.wait_parked(parked + 1).await;
        }
        (tcp, id)
    }

    /// The close of connection `id`, heard within [`AT_ONCE`].
    async fn reset_heard(&mut self, id: ConnectionId, what: &str) {
        let heard = tokio::time::timeout(AT_ONCE, self.closes.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no close within {AT_ONCE:?} of the reset"))
            .expect("on_close");
        assert_eq!(heard, (id, CloseReason::Reset), "{what}");
        self.wait_stats("the reset counted", |s| closed_as(s, "reset") == 1)
            .await;
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// Reads `s` to its end (bounded by [`AT_ONCE`]): the bytes, and whether
/// it ended with a reset (`ECONNRESET`) rather than an end of stream.
async fn read_to_reset(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let reading = async {
        loop {
            let mut buf = [0u8; 16 << 10];
            match s.read(&mut buf).await {
                Ok(0) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) => panic!("reading: {e}"),
            }
        }
    };
    let reset = tokio::time::timeout(AT_ONCE, reading)
        .await
        .expect("the end in time");
    (got, reset)
}

/// A connection whose peer reads nothing, reset while a [`BIG`] push is
/// under way, in `proto`, cleartext and over TLS: awake, the push's
/// write (`MessageIo::write_out`, a WebSocket's `flush_stuck`); parked,
/// the push's rest, written once it is woken to resume
/// (`MessageIo::resume_owed`). Either is reset at once: the handler hears
/// `Reset` and the client reads `ECONNRESET` within [`AT_ONCE`]. (They
/// waited for the write bound, then closed as `WriteTimeout` or
/// `SlowConsumer` with a FIN: review, session 46.)
async fn a_reset_ends_a_write_its_peer_does_not_take(proto: Proto) {
    for tls in [false, true] {
        for parks in [false, true] {
            let what = format!("{proto:?}, tls: {tls}, parks: {parks}");
            let mut server = Resets::start(tls, parks);
            let (mut client, id) = server.client(proto).await;
            let wakes = server.handle.stats().wakes_cold + server.handle.stats().wakes_hot;
            assert_eq!(server.hub.send(id, vec![b'x'; BIG]), Ok(()));
            // Part of it reached the client: its write is under way (and
            // cannot end: the client reads nothing).
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(SAFETY, client.peek(&mut first)).await;
            assert!(matches!(peeked, Ok(Ok(1))), "{what}: {peeked:?}");
            if parks {
                // Woken to write the rest (the lot's wake, then its task).
                server
                    .wait_stats("woken to resume", |s| s.wakes_cold + s.wakes_hot > wakes)
                    .await;
            }
            assert_eq!(server.hub.reset(id), Ok(()));
            server.reset_heard(id, &what).await;
            let (_, reset) = read_to_reset(&mut client).await;
            assert!(reset, "{what}: ended without a reset");
            let stats = server.handle.stats();
            assert_eq!(closed_as(&stats, "write_timeout"), 0, "{what}");
            assert_eq!(closed_as(&stats, "slow_consumer"), 0, "{what}");
            // The push never went whole: dropped, and counted so.
            assert_eq!(stats.messages.pushes, 0, "{what}");
            server
                .wait_stats("the push counted dropped", |s| s.messages.queue_drops == 1)
                .await;
            server.stop().await;
        }
    }
}

#[tokio::test]
async fn a_reset_ends_a_framed_write_its_peer_does_not_take() {
    a_reset_ends_a_write_its_peer_does_not_take(Proto::Framed).await;
}

#[tokio::test]
async fn a_reset_ends_a_websocket_write_its_peer_does_not_take() {
    a_reset_ends_a_write_its_peer_does_not_take(Proto::Ws).await;
}

#[tokio::test]
async fn a_reset_ends_an_event_stream_write_its_peer_does_not_take() {
    a_reset_ends_a_write_its_peer_does_not_take(Proto::Sse).await;
}

/// A WebSocket or an event stream over TLS, idle, parked or awake, reset
/// by the hub: the handler hears `Reset`, counted as
/// `closed_total{reason="reset"}`; the client reads a reset and nothing
/// before it (no close frame, no `close_notify`, no goodbye or last
/// chunk). Framed TLS's is `framed_limits.rs`'s test's, cleartext.
#[tokio::test]
async fn an_idle_websocket_or_event_stream_over_tls_is_reset_with_nothing_written() {
    for proto in [Proto::Ws, Proto::Sse] {
        for parks in [true, false] {
            let what = format!("{proto:?} over TLS, parks: {parks}");
            let mut server = Resets::start(true, parks);
            let (mut client, id) = server.client(proto).await;
            assert_eq!(server.hub.reset(id), Ok(()));
            server.reset_heard(id, &what).await;
            let (got, reset) = read_to_reset(&mut client).await;
            assert!(reset, "{what}: ended without a reset");
            assert!(
                got.is_empty(),
                "{what}: {} bytes before the reset",
                got.len()
            );
            assert_eq!(closed_as(&server.handle.stats(), "kicked"), 0, "{what}");
            server.stop().await;
        }
    }
}

/// A reset made while the handler awaits (it pushed a message to its own
/// connection and reset it, then awaits), in `proto`: the push queued
/// before the reset is not written, though pushes made during an await
/// are written meanwhile (`proto/handling.rs`); once the handler returns
/// the connection is reset. (The drain wrote such pushes until the
/// handler returned: 18b79f5, session 46.) A second connection on the
/// same worker, which reads, fences the check: a push to it, queued after
/// the reset, is read only once the worker ran the first connection's
/// task with the push and the reset in its queue (its tasks run in the
/// order woken).
async fn a_reset_while_the_handler_awaits_writes_no_push_queued_before_it(proto: Proto) {
    let mut server = Resets::start(false, false);
    let (mut client, id) = server.client(proto).await;
    let (mut fence, fence_id) = server.client(Proto::Framed).await;
    let wait = match proto {
        Proto::Framed => frame(b"wait"),
        Proto::Ws => ws_client_frame(0x81, b"wait", true),
        Proto::Sse => unreachable!("an event stream's client sends no messages"),
    };
    client.write_all(&wait).await.unwrap();
    let awaiting = tokio::time::timeout(SAFETY, server.awaiting.recv()).await;
    assert_eq!(awaiting.expect("the handler awaits in time"), Some(id));
    assert_eq!(server.hub.send(fence_id, "fence"), Ok(()));
    let mut fenced = [0u8; 9];
    tokio::time::timeout(SAFETY, fence.read_exact(&mut fenced))
        .await
        .expect("the fence in time")
        .unwrap();
    assert_eq!(fenced[..], frame(b"fence")[..]);
    // Nothing was written to the client meanwhile.
    let mut buf = [0u8; 64];
    let early = client.try_read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "{proto:?}: written while the handler awaited: {early:?} {:?}",
        &buf[..*early.as_ref().unwrap_or(&0)]
    );
    server.release.notify_one();
    server.reset_heard(id, &format!("{proto:?}")).await;
    let (got, reset) = read_to_reset(&mut client).await;
    assert!(reset, "{proto:?}: ended without a reset");
    assert!(
        !got.windows(QUEUED.len()).any(|w| w == QUEUED),
        "{proto:?}: the push queued before the reset went: {got:?}"
    );
    server
        .wait_stats("the push counted dropped", |s| s.messages.queue_drops == 1)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_reset_while_a_framed_handler_awaits_writes_no_push_queued_before_it() {
    a_reset_while_the_handler_awaits_writes_no_push_queued_before_it(Proto::Framed).await;
}

#[tokio::test]
async fn a_reset_while_a_websocket_handler_awaits_writes_no_push_queued_before_it() {
    a_reset_while_the_handler_awaits_writes_no_push_queued_before_it(Proto::Ws).await;
}
