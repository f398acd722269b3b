//! Message-protocol fixtures shared by the tests of WebSocket, framed TCP
//! and Server-Sent Events: a handler of all three that echoes and reports
//! opens and closes ([`Probe`]); a running server whose handler reports
//! them ([`Running`]; a test's fixture that adds what its own handler
//! shares derefs to it, [`deref_to_running`]); where a handler waits for
//! the test ([`Gate`]); the routes and the listeners' addresses of a
//! server that serves the three at once ([`message_routes`],
//! [`http_and_framed`]) and that server, running ([`MsgServer`]); a
//! cleartext client of each protocol that reads whole messages ([`Peer`]),
//! each protocol's first exchange by hand ([`set_up`]), a connection
//! ([`tcp_to`]) and tungstenite's client on it ([`ws_client`]); and the
//! bytes on the wire: a length-prefixed frame ([`frame`], [`read_frame`]),
//! a WebSocket client's frame and a server's ([`ws_client_frame`],
//! [`read_ws_frame`]), a response head ([`read_head`]), a WebSocket
//! upgrade request ([`WS_UPGRADE`], [`ws_upgrade`]), an event stream's
//! ([`SSE_REQUEST`]). The TLS tests' clients are their own (they read raw
//! records); they share the server, the frames and the heads.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use megaconn::{
    Builder, CloseReason, ConnectionId, FramedHandler, Hub, Server, ServerHandle, ServerStats,
    Session, ShutdownSummary, SseEvent, SseHandler, SseRoute, Started, WebSocketHandler,
    WebSocketRoute, WsMessage, WsSession,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::SAFETY;

/// A WebSocket opening handshake's request for `/ws` (RFC 6455 §1.3's
/// key), for a client that speaks the protocol by hand: [`ws_upgrade`]
/// of `/ws` with nothing more.
pub const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A WebSocket opening handshake's request for `path` (with its query),
/// with `extra` header lines (each ending in CRLF) after the ones a
/// handshake needs: a route of another name, an extension offered, a
/// header a test breaks on purpose (a second version, an origin, a body
/// declared).
pub fn ws_upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// An event stream's request, for `/events` in HTTP/1.0: its body is
/// delimited by the close, each event as it is.
pub const SSE_REQUEST: &[u8] = b"GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// The framed listeners' goodbye frame's body (`Builder::goodbye_frame`)
/// where a test sets one.
pub const FRAMED_GOODBYE: &[u8] = b"bye";
/// The event streams' goodbye event's data (`SseRoute::goodbye`) where a
/// test sets one.
pub const SSE_GOODBYE: &str = "bye";

/// The handler of all three protocols: echoes, and reports opens and
/// closes (with the connection's id).
#[derive(Clone)]
pub struct Probe {
    pub opens: mpsc::UnboundedSender<ConnectionId>,
    pub closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
}

/// Where a [`Probe`] reports opens.
pub type Opens = mpsc::UnboundedReceiver<ConnectionId>;
/// Where a [`Probe`] reports closes.
pub type Closes = mpsc::UnboundedReceiver<(ConnectionId, CloseReason)>;

impl Probe {
    /// A probe, and where it reports.
    pub fn new() -> (Probe, Opens, Closes) {
        let (opens, opened) = mpsc::unbounded_channel();
        let (closes, closed) = mpsc::unbounded_channel();
        (Probe { opens, closes }, opened, closed)
    }
}

impl FramedHandler for Probe {
    type State = ();

    fn on_open(&self, _: &mut (), session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

impl WebSocketHandler for Probe {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

impl SseHandler for Probe {
    fn on_open(&self, _: &Parts, session: &Session) {
        let _ = self.opens.send(session.id());
    }

    fn on_close(&self, id: ConnectionId, reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// Where a test's handler waits while the test does something meanwhile
/// (pushes to its connection, a close, a count): [`Gate::wait`] says the
/// handler is busy, then awaits a permit the test gives. Clones share the
/// gate.
#[derive(Clone)]
pub struct Gate {
    busy: mpsc::UnboundedSender<()>,
    permits: Arc<Semaphore>,
}

/// The test's side of a [`Gate`]: hears a handler is busy, lets one go.
pub struct Gated {
    busy: mpsc::UnboundedReceiver<()>,
    permits: Arc<Semaphore>,
}

impl Gate {
    /// A closed gate, and the test's side of it.
    pub fn new() -> (Gate, Gated) {
        let (busy, heard) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(0));
        let gated = Gated {
            busy: heard,
            permits: permits.clone(),
        };
        (Gate { busy, permits }, gated)
    }

    /// Says the handler is busy, then waits for a permit (each taken for
    /// good: one per wait).
    pub async fn wait(&self) {
        let _ = self.busy.send(());
        self.permits.acquire().await.expect("gate open").forget();
    }
}

impl Gated {
    /// Waits (bounded by [`SAFETY`]) until a handler waits at the gate.
    pub async fn next_busy(&mut self) {
        super::next(&mut self.busy, "a busy handler").await;
    }

    /// Lets `n` waits through.
    pub fn add_permits(&self, n: usize) {
        self.permits.add_permits(n);
    }
}

/// `handler`'s WebSocket route at `/ws` and event streams at `/events`,
/// with no pings and no heartbeat timeout (nothing but the test's own
/// messages on the wire, and a connection closed only by what the test
/// checks), the event route as `events` shapes it further (its goodbye).
pub fn message_routes<H>(
    handler: H,
    events: impl FnOnce(SseRoute<H>) -> SseRoute<H>,
) -> axum::Router
where
    H: WebSocketHandler + SseHandler + Clone,
{
    let ws = WebSocketRoute::new(handler.clone())
        .ping_interval(None)
        .heartbeat_timeout(None);
    let events = events(SseRoute::new(handler).ping_interval(None));
    axum::Router::new()
        .route_service("/ws", ws)
        .route_service("/events", events)
}

/// The addresses of a server that listens on one HTTP (or HTTPS) address
/// and one framed one, in that order whatever order they were bound in.
pub fn http_and_framed(server: &Server) -> (SocketAddr, SocketAddr) {
    match server.local_addrs() {
        [a, b] if server.is_framed(*b) => (*a, *b),
        [a, b] => (*b, *a),
        other => panic!("two listeners: {other:?}"),
    }
}

/// A running server whose handler reports each connection's opening (its
/// id) and its close (`C`: what the test's handler says of it), on the
/// addresses it listens on (in the order bound).
pub struct Running<C> {
    pub addrs: Vec<SocketAddr>,
    pub handle: ServerHandle,
    pub hub: Hub,
    pub opens: Opens,
    pub closes: mpsc::UnboundedReceiver<C>,
    pub task: tokio::task::JoinHandle<ShutdownSummary>,
}

impl<C> Running<C> {
    /// Runs `server` as `start` starts it, given the senders its handler
    /// reports opens and closes on.
    pub fn serve(
        mut server: Server,
        start: impl FnOnce(
            Server,
            mpsc::UnboundedSender<ConnectionId>,
            mpsc::UnboundedSender<C>,
        ) -> Started,
    ) -> Running<C> {
        let addrs = server.local_addrs().to_vec();
        let (handle, hub) = (server.handle(), server.hub());
        let (opened, opens) = mpsc::unbounded_channel();
        let (closed, closes) = mpsc::unbounded_channel();
        // Run here, not in the task: the hub takes messages once the server
        // runs, which a test's first pushes must not race.
        let running = start(server, opened, closed).run();
        Running {
            addrs,
            handle,
            hub,
            opens,
            closes,
            task: tokio::spawn(running),
        }
    }

    /// The next `on_open`'s id.
    pub async fn next_open(&mut self) -> ConnectionId {
        tokio::time::timeout(SAFETY, self.opens.recv())
            .await
            .expect("on_open in time")
            .expect("on_open")
    }

    /// The next `on_close`.
    pub async fn next_close(&mut self) -> C {
        tokio::time::timeout(SAFETY, self.closes.recv())
            .await
            .expect("on_close in time")
            .expect("on_close")
    }

    /// Waits (bounded) until the server's counters satisfy `cond`.
    pub async fn wait_stats(&self, what: &str, cond: impl Fn(&ServerStats) -> bool) {
        super::wait_stats(&self.handle, what, cond).await;
    }

    /// Waits until `n` connections are parked.
    pub async fn wait_parked(&self, n: i64) {
        self.wait_stats("parked", |s| s.connections_parked == n)
            .await;
    }

    /// Shuts the server down and waits for it: its summary.
    pub async fn stop(self) -> ShutdownSummary {
        super::shut_down(&self.handle, self.task).await
    }
}

/// Makes a test's server fixture, a struct that keeps its [`Running`]
/// server in a field `running` beside what else its handler shares with
/// the test (a gate, a channel more), deref to that [`Running`] (`$close`:
/// what its handler reports of a close), so the test reads
/// `server.handle`, `server.hub` or `server.next_open()` as on
/// [`Running`] itself.
macro_rules! deref_to_running {
    ($fixture:ty, $close:ty) => {
        impl std::ops::Deref for $fixture {
            type Target = $crate::common::msg::Running<$close>;

            fn deref(&self) -> &Self::Target {
                &self.running
            }
        }

        impl std::ops::DerefMut for $fixture {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.running
            }
        }
    };
}
// Not every test target has a fixture of its own (as `dead_code` in
// `mod.rs`).
#[allow(unused_imports)]
pub(crate) use deref_to_running;

/// A running server of the three message protocols, serving a [`Probe`]:
/// WebSocket at `/ws` and Server-Sent Events at `/events` on its HTTP (or
/// HTTPS) listener ([`message_routes`]), framed TCP on its framed one. Its
/// handle, hub and events are [`Running`]'s.
pub struct MsgServer {
    pub http: SocketAddr,
    pub framed: SocketAddr,
    running: Running<(ConnectionId, CloseReason)>,
}

deref_to_running!(MsgServer, (ConnectionId, CloseReason));

impl MsgServer {
    /// Binds `builder` (one HTTP or HTTPS address and one framed, named by
    /// the caller) and runs it, the event streams saying `sse_goodbye` at
    /// shutdown if given.
    pub fn start(builder: Builder, sse_goodbye: Option<&'static str>) -> MsgServer {
        let server = builder.listen().expect("server binds");
        let (http, framed) = http_and_framed(&server);
        let running = Running::serve(server, |server, opens, closes| {
            let probe = Probe { opens, closes };
            let app = message_routes(probe.clone(), |events| match sse_goodbye {
                Some(data) => events.goodbye(SseEvent::data(data)),
                None => events,
            });
            server.framed(probe).start(app).expect("starts")
        });
        MsgServer {
            http,
            framed,
            running,
        }
    }

    /// A [`Peer`] of `proto` (with a receive buffer of `recv_buffer` bytes
    /// if given), its protocol set up, `hello` echoed if given (a WebSocket
    /// or framed client's), and its connection parked; and its id.
    pub async fn connect(
        &mut self,
        proto: Proto,
        recv_buffer: Option<u32>,
        hello: Option<&[u8]>,
    ) -> (Peer, ConnectionId) {
        let parked = self.handle.stats().connections_parked;
        let mut peer = Peer::connect(proto, (self.http, self.framed), recv_buffer).await;
        if let Some(hello) = hello {
            peer.echo(hello).await;
        }
        let id = self.next_open().await;
        self.wait_parked(parked + 1).await;
        (peer, id)
    }

    /// Shuts the server down and waits for it: its summary.
    pub async fn stop(self) -> ShutdownSummary {
        self.running.stop().await
    }
}

/// One of the three message protocols, in cleartext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// WebSocket at `/ws`.
    Ws,
    /// Length-prefixed (4 bytes) framed TCP on a listener of its own.
    Framed,
    /// Server-Sent Events at `/events`, asked for in HTTP/1.0 (a
    /// close-delimited body: each event as it is).
    Sse,
}

/// What a [`Peer`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// A message: a WebSocket's text or binary message, a frame's body, an
    /// event's data.
    Message(Vec<u8>),
    /// A WebSocket's pong.
    Pong,
    /// Its protocol's goodbye: a close frame `1001`, the goodbye frame
    /// ([`FRAMED_GOODBYE`]), the goodbye event ([`SSE_GOODBYE`]).
    Goodbye,
}

/// A client of one protocol, reading whole messages.
pub enum Peer {
    Ws(Box<WebSocketStream<TcpStream>>),
    Framed(TcpStream),
    Sse(BufReader<TcpStream>),
}

impl Peer {
    /// A client of `proto` at `http` (WebSocket, SSE) or `framed`, its
    /// protocol set up (the upgrade, the stream's head), with a receive
    /// buffer of `recv_buffer` bytes if asked.
    pub async fn connect(
        proto: Proto,
        (http, framed): (SocketAddr, SocketAddr),
        recv_buffer: Option<u32>,
    ) -> Peer {
        let addr = if proto == Proto::Framed { framed } else { http };
        let mut tcp = tcp_to(addr, recv_buffer).await;
        match proto {
            Proto::Framed => Peer::Framed(tcp),
            Proto::Ws => Peer::Ws(Box::new(ws_handshake(tcp, "/ws").await)),
            Proto::Sse => {
                set_up(proto, &mut tcp).await;
                Peer::Sse(BufReader::new(tcp))
            }
        }
    }

    /// The client's socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Peer::Ws(ws) => ws.get_ref(),
            Peer::Framed(tcp) => tcp,
            Peer::Sse(io) => io.get_ref(),
        }
    }

    /// Sends `body` as a WebSocket text message or a frame (an event
    /// stream's client sends nothing).
    pub async fn send(&mut self, body: &[u8]) {
        match self {
            Peer::Ws(ws) => {
                let text = String::from_utf8(body.to_vec()).unwrap();
                ws.send(Message::text(text)).await.unwrap();
            }
            Peer::Framed(tcp) => tcp.write_all(&frame(body)).await.unwrap(),
            Peer::Sse(_) => panic!("an event stream's client sends nothing"),
        }
    }

    /// Sends `body` and reads it echoed.
    pub async fn echo(&mut self, body: &[u8]) {
        self.send(body).await;
        let echo = tokio::time::timeout(SAFETY, self.read()).await;
        assert_eq!(echo.expect("the echo in time"), Got::Message(body.to_vec()));
    }

    /// The next message, whole: a WebSocket's message, a frame's body, an
    /// event's data (pongs passed over). Panics on a goodbye, the end of
    /// the stream (the connection closed) or after [`SAFETY`].
    pub async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(SAFETY, async {
            loop {
                match self.read().await {
                    Got::Message(m) => return m,
                    Got::Pong => {}
                    Got::Goodbye => panic!("a message, not a goodbye"),
                }
            }
        })
        .await
        .expect("a message in time")
    }

    /// The next thing read (not bounded: the caller bounds it). Panics at
    /// the end of the stream, or on anything else.
    pub async fn read(&mut self) -> Got {
        match self {
            Peer::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => return Got::Message(text.as_bytes().to_vec()),
                    Some(Ok(Message::Binary(b))) => return Got::Message(b.to_vec()),
                    Some(Ok(Message::Pong(_))) => return Got::Pong,
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                        return Got::Goodbye
                    }
                    other => panic!(
                        "a message or a close frame 1001, not {:?}",
                        other.map(|m| m.map(|m| m.len()))
                    ),
                }
            },
            Peer::Framed(tcp) => {
                let mut len = [0u8; 4];
                tcp.read_exact(&mut len)
                    .await
                    .expect("a frame, not the end");
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                tcp.read_exact(&mut body).await.expect("the frame whole");
                if body == FRAMED_GOODBYE {
                    return Got::Goodbye;
                }
                Got::Message(body)
            }
            Peer::Sse(io) => loop {
                let mut line = Vec::new();
                let n = io.read_until(b'\n', &mut line).await.unwrap();
                assert!(n > 0, "an event, not the end of the stream");
                if line.starts_with(b":") || line == b"\n" {
                    continue;
                }
                let data = line
                    .strip_prefix(b"data: ")
                    .and_then(|l| l.strip_suffix(b"\n"))
                    .unwrap_or_else(|| panic!("a data line: {:?}", &line[..line.len().min(64)]))
                    .to_vec();
                if data == SSE_GOODBYE.as_bytes() {
                    return Got::Goodbye;
                }
                return Got::Message(data);
            },
        }
    }

    /// Reads on to the end of the stream (a WebSocket client answers the
    /// close meanwhile), bounded by [`SAFETY`].
    pub async fn read_to_end(self) {
        let ended = tokio::time::timeout(SAFETY, async {
            match self {
                Peer::Ws(mut ws) => while let Some(Ok(_)) = ws.next().await {},
                Peer::Framed(mut tcp) => {
                    let _ = tcp.read_to_end(&mut Vec::new()).await;
                }
                Peer::Sse(mut io) => {
                    let _ = io.read_to_end(&mut Vec::new()).await;
                }
            }
        });
        ended.await.expect("the end of the stream in time");
    }
}

/// Each protocol's first exchange on `io`, by hand (bounded by
/// [`SAFETY`]): a frame `hi` echoed, a WebSocket's upgrade ([`WS_UPGRADE`])
/// answered `101`, an event stream's request ([`SSE_REQUEST`]) answered
/// `200`, the heads read a byte at a time so that nothing after them is
/// taken. Over TLS it also has the client read the session tickets that
/// follow the handshake: the records read raw after it are the test's.
pub async fn set_up<S: AsyncRead + AsyncWrite + Unpin>(proto: Proto, io: &mut S) {
    let request = match proto {
        Proto::Framed => frame(b"hi"),
        Proto::Ws => WS_UPGRADE.to_vec(),
        Proto::Sse => SSE_REQUEST.to_vec(),
    };
    io.write_all(&request).await.unwrap();
    io.flush().await.unwrap();
    if proto == Proto::Framed {
        assert_eq!(read_frame(io).await, b"hi", "the echo");
        return;
    }
    let head = read_head(io).await;
    let status = if proto == Proto::Ws { " 101 " } else { " 200 " };
    assert!(head.lines().next().unwrap().contains(status), "{head}");
}

/// A connection to `addr` (bounded by [`SAFETY`]), without Nagle's delay,
/// with a receive buffer of `recv_buffer` bytes if asked (a slow reader:
/// its socket takes little while it reads nothing).
pub async fn tcp_to(addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n).unwrap();
    }
    let tcp = tokio::time::timeout(SAFETY, socket.connect(addr))
        .await
        .expect("connected in time")
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// tungstenite's client on `tcp`, its handshake for `path` (with its
/// query) done (bounded by [`SAFETY`]).
pub async fn ws_handshake(tcp: TcpStream, path: &str) -> WebSocketStream<TcpStream> {
    let url = format!("ws://{}{path}", tcp.peer_addr().unwrap());
    let (ws, _) = tokio::time::timeout(SAFETY, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    ws
}

/// tungstenite's client of the route at `path` on `addr` ([`tcp_to`],
/// [`ws_handshake`]).
pub async fn ws_client(
    addr: SocketAddr,
    path: &str,
    recv_buffer: Option<u32>,
) -> WebSocketStream<TcpStream> {
    ws_handshake(tcp_to(addr, recv_buffer).await, path).await
}

/// A WebSocket client's frame, by hand: `first` (FIN, opcode), `payload`
/// (under 64 KiB), masked (as a client must) or not (as a test's
/// misbehaving one does).
pub fn ws_client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let bit = if masked { 0x80 } else { 0 };
    let mut out = match payload.len() {
        n @ 0..126 => vec![first, n as u8 | bit],
        n => [
            &[first, 126 | bit][..],
            &u16::try_from(n).unwrap().to_be_bytes(),
        ]
        .concat(),
    };
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads one WebSocket server frame, whole (bounded by [`SAFETY`]): its
/// first byte (FIN, opcode) and payload. Server frames are unmasked.
pub async fn read_ws_frame<S: AsyncRead + Unpin>(io: &mut S) -> (u8, Vec<u8>) {
    tokio::time::timeout(SAFETY, async {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await.expect("a frame header");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7f {
            126 => io.read_u16().await.unwrap() as usize,
            127 => io.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    })
    .await
    .expect("a frame in time")
}

/// A 4-byte big-endian length-prefixed frame.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.to_vec()
}

/// Reads one 4-byte big-endian length-prefixed frame, whole (bounded by
/// [`SAFETY`]).
pub async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    tokio::time::timeout(SAFETY, async {
        let len = io.read_u32().await.expect("a frame's length") as usize;
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await.expect("a frame's body");
        body
    })
    .await
    .expect("a frame in time")
}

/// Reads an HTTP response head (to its blank line) a byte at a time, so
/// that nothing after it is taken (bounded by [`SAFETY`]).
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> String {
    let mut head = Vec::new();
    tokio::time::timeout(SAFETY, async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(io.read_u8().await.expect("the head"));
        }
    })
    .await
    .expect("the head in time");
    String::from_utf8(head).unwrap()
}
