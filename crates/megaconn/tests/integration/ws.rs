//! Native WebSockets over real sockets, with tungstenite's client (and raw
//! bytes where a client would refuse to misbehave): echo, fragments with a
//! ping between them, ping/pong, both close handshakes, the size limit
//! (1009), bad UTF-8 (1007), an unmasked client frame (1002), the close
//! timeout, the state
//! kept across park and wake, the server's ping sent to a parked
//! connection, pushes by id, topic and broadcast to parked and awake
//! WebSockets, and malformed handshakes answered with their reason; and
//! over TLS (wss://, tokio-rustls under tungstenite): parked with its
//! session, woken by a message, a pong, a KeyUpdate or a close_notify, the
//! server's pings and the hub's pushes encrypted with the parked session,
//! shutdown's 1001 and the heartbeat timeout. Every wait is bounded and
//! waits on a condition, never on time alone.

use crate::common::{self, msg::deref_to_running};

use std::time::Duration;

use bytes::Bytes;
use common::msg::{read_head, read_ws_frame, ws_client_frame, ws_upgrade, Running, WS_UPGRADE};
use common::{reset, SAFETY};
use futures_util::{SinkExt, StreamExt};
use megaconn::{
    Builder, CloseReason, ConnectionId, ProtocolDetail, Server, ServerStats, ShutdownSummary,
    WebSocketHandler, WebSocketRoute, WsMessage, WsSession,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The test handler. Per connection it counts messages (its state). `count`
/// is answered with the count so far, `bye` with `bye` and a close 4000,
/// `close N` with a close N;
/// `join` subscribes to topic `room`; anything else is echoed. Opens report
/// the connection's id, closes the final count.
struct Probe {
    closes: mpsc::UnboundedSender<(u64, CloseReason)>,
    opens: mpsc::UnboundedSender<ConnectionId>,
}

impl WebSocketHandler for Probe {
    type State = u64;

    fn on_open(&self, _: &mut u64, session: &WsSession) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(
        &self,
        seen: &mut u64,
        message: WsMessage,
        session: &WsSession,
    ) -> Option<WsMessage> {
        *seen += 1;
        match message.as_bytes() {
            b"count" => Some(seen.to_string().into()),
            b"join" => {
                session
                    .subscribe("room")
                    .expect("one topic, under the bound");
                Some("joined".into())
            }
            b"bye" => {
                session.send("bye");
                session.close_with(4000, "asked to");
                None
            }
            m if m.starts_with(b"close ") => {
                let code = std::str::from_utf8(&m[6..]).unwrap().parse().unwrap();
                session.close_with(code, "asked to");
                None
            }
            _ => Some(message),
        }
    }

    fn on_close(&self, seen: u64, reason: CloseReason) {
        let _ = self.closes.send((seen, reason));
    }
}

/// A server on 127.0.0.1:0, one worker, serving the [`Probe`] at `/ws`
/// (and `Hello` at `/`), running, and its address.
struct Ws {
    addr: std::net::SocketAddr,
    running: Running<(u64, CloseReason)>,
}

deref_to_running!(Ws, (u64, CloseReason));

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Ws {
    async fn start(
        builder: Builder,
        route: impl FnOnce(WebSocketRoute<Probe>) -> WebSocketRoute<Probe>,
    ) -> Ws {
        let server = builder
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let addr = server.local_addr();
        let running = Running::serve(server, |server, opens, closes| {
            let ws = route(WebSocketRoute::new(Probe { closes, opens }));
            let app = axum::Router::new()
                .route_service("/ws", ws)
                .route("/", axum::routing::get(|| async { "Hello" }));
            server.start(app).expect("server starts")
        });
        Ws { addr, running }
    }

    async fn default() -> Ws {
        Ws::start(Server::builder(), |r| r).await
    }

    async fn client(&self) -> Client {
        let url = format!("ws://{}/ws", self.addr);
        let (client, response) =
            tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(url))
                .await
                .expect("handshake in time")
                .expect("handshake");
        assert_eq!(response.status(), 101);
        client
    }

    /// A raw TCP connection that has done the handshake.
    async fn raw(&self) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(WS_UPGRADE).await.unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
        s
    }

    async fn stop(self) -> ShutdownSummary {
        self.running.stop().await
    }
}

/// Reads frames until the close frame; answers it as a client does (a
/// masked close frame echoing the code); returns its code.
async fn read_close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (first, payload) = read_ws_frame(s).await;
        if first & 0x0f == 0x8 {
            let _ = s
                .write_all(&ws_client_frame(0x88, &payload[..2], true))
                .await;
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// The server closes the TCP connection, cleanly, with nothing more sent
/// (bounded).
async fn hangs_up(s: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(SAFETY, s.read_to_end(&mut rest))
        .await
        .expect("hung up in time")
        .expect("a clean close");
    assert!(rest.is_empty(), "{rest:?}");
}

/// The next `n` messages the client reads are pings (tungstenite queues
/// their pongs, sent with its next read or write).
async fn expect_pings<S>(client: &mut WebSocketStream<S>, n: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for _ in 0..n {
        let message = tokio::time::timeout(SAFETY, client.next())
            .await
            .expect("a ping in time")
            .expect("stream open")
            .expect("no client error");
        assert!(message.is_ping(), "{message:?}");
    }
}

/// The next message the client reads that is not a ping or pong.
pub(crate) async fn next_data<S>(client: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(SAFETY, client.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no client error");
        if !message.is_ping() && !message.is_pong() {
            return message;
        }
    }
}

/// Reads on to the end of the stream (bounded), as a client that goes on
/// reading does: tungstenite answers a close frame it read, so the
/// server's close handshake ends then, not at the route's close timeout
/// (5 s by default) that a test would otherwise wait out.
pub(crate) async fn read_to_end<S>(client: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(SAFETY, async {
        while let Some(Ok(_)) = client.next().await {}
    })
    .await
    .expect("the end of the stream in time");
}

#[tokio::test]
async fn echoes_text_and_binary() {
    let mut server = Ws::default().await;
    let mut client = server.client().await;
    client.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("héllo"));
    let big = vec![7u8; 200_000];
    client.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::binary(big));
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("3"));
    // The same app still answers plain HTTP beside it.
    let body = reqwest::get(format!("http://{}/", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "Hello");
    client.close(None).await.unwrap();
    assert_eq!(server.next_close().await, (3, CloseReason::ClientClosed));
    server.stop().await;
}

#[tokio::test]
async fn fragments_with_a_ping_between_them_make_one_message() {
    let mut server = Ws::default().await;
    let mut client = server.client().await;
    let text = "fragmented €uro";
    let bytes = text.as_bytes();
    // The euro sign is cut between two fragments.
    let cut = text.find('€').unwrap() + 1;
    let frames = [
        Frame::message(
            Bytes::copy_from_slice(&bytes[..cut]),
            OpCode::Data(Data::Text),
            false,
        ),
        Frame::ping(Bytes::from_static(b"mid")),
        Frame::message(
            Bytes::copy_from_slice(&bytes[cut..]),
            OpCode::Data(Data::Continue),
            true,
        ),
    ];
    for frame in frames {
        client.send(Message::Frame(frame)).await.unwrap();
    }
    // The pong comes first (the ping was whole before the message was).
    let pong = tokio::time::timeout(SAFETY, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"mid")));
    assert_eq!(next_data(&mut client).await, Message::text(text));
    drop(client);
    assert_eq!(server.next_close().await.0, 1);
    server.stop().await;
}

#[tokio::test]
async fn the_server_closes_with_the_handlers_code_and_waits_for_the_echo() {
    let mut server = Ws::default().await;
    let mut client = server.client().await;
    client.send(Message::text("bye")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("bye"));
    match next_data(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::from(4000));
            assert_eq!(frame.reason, "asked to");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // tungstenite echoes the close; then the server hangs up.
    assert!(tokio::time::timeout(SAFETY, client.next())
        .await
        .unwrap()
        .is_none());
    assert_eq!(server.next_close().await, (1, CloseReason::ServerClosed));
    server.stop().await;
}

/// The peer's close frame that came with its last message (already read
/// when the handler closed) answers our close at once: the handshake used to
/// throw it away with the read buffer and wait the whole `close_timeout`
/// (here longer than the test's bound) for another.
#[tokio::test]
async fn a_close_frame_already_read_answers_our_close() {
    let mut server = Ws::start(Server::builder(), |r| r.close_timeout(SAFETY * 3)).await;
    let mut s = server.raw().await;
    let both = [
        ws_client_frame(0x81, b"bye", true),
        ws_client_frame(0x88, &1000u16.to_be_bytes(), true),
    ]
    .concat();
    s.write_all(&both).await.unwrap();
    assert_eq!(read_ws_frame(&mut s).await, (0x81, b"bye".to_vec()));
    let (first, payload) = read_ws_frame(&mut s).await;
    assert_eq!((first, &payload[..2]), (0x88, &4000u16.to_be_bytes()[..]));
    // Without waiting for close_timeout.
    hangs_up(&mut s).await;
    assert_eq!(server.next_close().await, (1, CloseReason::ServerClosed));
    server.stop().await;
}

/// After a violation the server reads the rest of what the peer sends away
/// until the peer closes, so its close frame (1009 here) is not destroyed by
/// a reset: the peer sees a clean end. It used to decode the rest as fresh
/// frames, fail at once, and close with 256 KiB unread: a reset.
#[tokio::test]
async fn after_a_violation_the_peer_gets_the_close_frame_and_a_clean_end() {
    let mut server = Ws::start(Server::builder(), |r| r.max_message_bytes(1000)).await;
    let s = server.raw().await;
    let (mut read, mut write) = s.into_split();
    // A masked binary frame declaring 256 KiB (over the limit), then its
    // payload (zeros under a zero mask); then our end.
    let writer = tokio::spawn(async move {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(256u64 << 10).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.resize(frame.len() + (256 << 10), 0);
        let _ = write.write_all(&frame).await;
        let _ = write.shutdown().await;
    });
    let mut head = [0u8; 4];
    tokio::time::timeout(SAFETY, read.read_exact(&mut head))
        .await
        .expect("a close frame in time")
        .expect("a close frame");
    assert_eq!(head[0], 0x88);
    assert_eq!(&head[2..], &1009u16.to_be_bytes());
    let mut rest = Vec::new();
    tokio::time::timeout(SAFETY, read.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("a clean end, not a reset");
    writer.await.unwrap();
    assert_eq!(
        server.next_close().await,
        (0, CloseReason::Protocol(ProtocolDetail::WebSocket(1009)))
    );
    server.stop().await;
}

/// A close code that may not be sent (1005, 1006, 1015; 0-999; 1016-2999)
/// goes out as 1011: a client takes the others for a protocol violation.
#[tokio::test]
async fn a_close_code_that_may_not_be_sent_goes_out_as_1011() {
    let mut server = Ws::start(Server::builder(), |r| r).await;
    for (asked, sent) in [
        (1005u16, 1011u16),
        (1015, 1011),
        (999, 1011),
        (2000, 1011),
        (4001, 4001),
    ] {
        let mut s = server.raw().await;
        let message = format!("close {asked}");
        s.write_all(&ws_client_frame(0x81, message.as_bytes(), true))
            .await
            .unwrap();
        let (first, payload) = read_ws_frame(&mut s).await;
        assert_eq!(
            (first, &payload[..2]),
            (0x88, &sent.to_be_bytes()[..]),
            "{asked}"
        );
        // Our answer ends the close handshake.
        s.write_all(&ws_client_frame(0x88, &payload[..2], true))
            .await
            .unwrap();
        assert_eq!(server.next_close().await, (1, CloseReason::ServerClosed));
    }
    server.stop().await;
}

/// A push reaches a peer that is in the middle of sending a message (a slow
/// upload): our frames do not interleave with its. It used to wait until
/// the peer's message was whole.
#[tokio::test]
async fn a_push_goes_out_while_the_peer_is_mid_message() {
    let mut server = Ws::start(Server::builder().park_idle_after(None), |r| r).await;
    let mut s = server.raw().await;
    let id = server.next_open().await;
    // A masked binary frame of 100 bytes (zeros under a zero mask), in two.
    let mut whole = vec![0x82, 0x80 | 100, 0, 0, 0, 0];
    whole.resize(whole.len() + 100, 0);
    s.write_all(&whole[..16]).await.unwrap();
    server
        .wait_stats("the part read", |s| s.messages.bytes_in >= 16)
        .await;
    assert_eq!(server.hub.send(id, "p"), Ok(()));
    assert_eq!(read_ws_frame(&mut s).await, (0x81, b"p".to_vec()));
    s.write_all(&whole[16..]).await.unwrap();
    assert_eq!(read_ws_frame(&mut s).await, (0x82, vec![0u8; 100]));
    drop(s);
    assert_eq!(server.next_close().await, (1, CloseReason::ClientClosed));
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_our_close_is_hung_up_after_close_timeout() {
    let mut server = Ws::start(Server::builder(), |r| {
        r.close_timeout(Duration::from_millis(100))
    })
    .await;
    let mut s = server.raw().await;
    s.write_all(&ws_client_frame(0x81, b"bye", true))
        .await
        .unwrap();
    assert_eq!(read_ws_frame(&mut s).await, (0x81, b"bye".to_vec()));
    let (first, payload) = read_ws_frame(&mut s).await;
    assert_eq!((first, &payload[..2]), (0x88, &4000u16.to_be_bytes()[..]));
    // No answer: the server closes the TCP connection by itself.
    hangs_up(&mut s).await;
    assert_eq!(server.next_close().await, (1, CloseReason::ServerClosed));
    server.stop().await;
}

/// How many connections closed with metric label `reason`.
fn closed_as(server: &Ws, reason: &str) -> u64 {
    common::closed_as(&server.handle.stats(), reason)
}

/// A client that begins a message and then sends a byte now and then, each
/// well within the heartbeat timeout, is closed at the message timeout with
/// 1008: the heartbeat, restarted by every byte, held it (a task and a read
/// buffer) for as long as the bytes came.
#[tokio::test]
async fn a_message_trickled_a_byte_at_a_time_is_closed_at_the_message_timeout() {
    let server = message_timeout_server().await;
    let mut s = server.raw().await;
    // A binary frame of 1,000 bytes: its header and a few of them, then the
    // rest a byte at a time (never all of it).
    let frame = ws_client_frame(0x82, &[7; 1000], true);
    s.write_all(&frame[..20]).await.unwrap();
    let (mut from, mut to) = s.split();
    let rest = &frame[20..frame.len() - 1];
    let (first, payload) = common::trickle_until(&mut to, rest, read_ws_frame(&mut from)).await;
    assert_eq!(first, 0x88);
    closed_at_the_message_timeout(server, &payload, 0).await;
}

/// A server whose messages must be whole within 300 ms (and whose heartbeat
/// does not end a peer first), and which waits for the peer's close for
/// `close_timeout`.
async fn message_timeout_server_closing_in(close_timeout: Duration) -> Ws {
    Ws::start(Server::builder(), |r| {
        r.ping_interval(None)
            .heartbeat_timeout(Some(Duration::from_secs(600)))
            .message_timeout(Some(Duration::from_millis(300)))
            .close_timeout(close_timeout)
    })
    .await
}

/// [`message_timeout_server_closing_in`] 100 ms: these peers do not answer
/// our close.
async fn message_timeout_server() -> Ws {
    message_timeout_server_closing_in(Duration::from_millis(100)).await
}

/// A server closing at the message timeout that waits long for the peer's
/// close, and a raw client stalled after the first 20 bytes of a binary
/// frame of `len` bytes; and that frame.
async fn stalled_in_a_frame(len: usize) -> (Ws, TcpStream, Vec<u8>) {
    let server = message_timeout_server_closing_in(SAFETY * 3).await;
    let mut s = server.raw().await;
    let frame = ws_client_frame(0x82, &vec![7; len], true);
    s.write_all(&frame[..20]).await.unwrap();
    (server, s, frame)
}

/// A client that stalls in the middle of a frame and, closed at the
/// message timeout, answers our close at once, dropping its frame (its
/// WebSocket library, tungstenite here, took the stream over after the
/// frame's first part was written raw): its close ends the handshake at
/// once. It was read as more of the unfinished frame's payload, and the
/// server waited the whole `close_timeout` (here longer than the test's
/// bound) holding its buffers.
#[tokio::test]
async fn a_close_answered_in_the_middle_of_a_frame_ends_the_handshake_at_once() {
    let (mut server, s, _) = stalled_in_a_frame(1000).await;
    let mut client = WebSocketStream::from_raw_socket(s, Role::Client, None).await;
    match next_data(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // tungstenite answers the close; then the server hangs up.
    assert!(tokio::time::timeout(SAFETY, client.next())
        .await
        .expect("the server hangs up in time")
        .is_none());
    assert_eq!(server.next_close().await, (0, CloseReason::MessageTimeout));
    server.stop().await;
}

/// Closed at the message timeout in the middle of a frame, a client that
/// finishes the frame and then answers (as a WebSocket library does) ends
/// the handshake as soon as its close comes, the rest of the frame passed
/// by and not gathered; meanwhile the server holds no buffer. It held the
/// read buffer with the frame's beginning and the write buffer for the
/// whole wait, and gathered the frame's rest.
#[tokio::test]
async fn waiting_for_the_close_after_a_cut_frame_holds_no_buffer() {
    let (mut server, mut s, frame) = stalled_in_a_frame(60_000).await;
    let (first, payload) = read_ws_frame(&mut s).await;
    assert_eq!((first, &payload[..2]), (0x88, &1008u16.to_be_bytes()[..]));
    server
        .wait_stats("waiting for our close, holding no buffer", |s| {
            s.connections_open == 1 && s.buffers_checked_out == 0
        })
        .await;
    let answer = ws_client_frame(0x88, &payload[..2], true);
    s.write_all(&[&frame[20..], &answer[..]].concat())
        .await
        .unwrap();
    hangs_up(&mut s).await;
    assert_eq!(server.next_close().await, (0, CloseReason::MessageTimeout));
    server.stop().await;
}

/// A server for slow senders: nothing parks, no pings, a long heartbeat,
/// `bound` per message.
async fn slow_sender_server(bound: Duration) -> Ws {
    Ws::start(Server::builder().park_idle_after(None), |r| {
        r.ping_interval(None)
            .heartbeat_timeout(Some(Duration::from_secs(600)))
            .message_timeout(Some(bound))
    })
    .await
}

/// The close the peer read (`payload`) was 1008, and the server counted a
/// message timeout, after `seen` messages; then stops it.
async fn closed_at_the_message_timeout(mut server: Ws, payload: &[u8], seen: u64) {
    assert_eq!(payload[..2], 1008u16.to_be_bytes());
    assert_eq!(
        server.next_close().await,
        (seen, CloseReason::MessageTimeout)
    );
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(closed_as(&server, "message_timeout"), 1);
    assert_eq!(server.handle.stats().timeouts, 1);
    server.stop().await;
}

/// A client that sends slowly, every message cut in two by a pause, is
/// served as long as each message is whole within the message timeout and
/// it brings a read buffer's worth (8 KiB) within each, however long it
/// goes on: the next message's time starts afresh at the end of one, also
/// when its first bytes came with that end (the connection is never between
/// messages here: as an upload over a slow link, whose segments do not end
/// where messages do). One of them is fragmented, with a ping between its
/// fragments.
#[tokio::test]
async fn a_slow_sender_is_served_while_each_message_is_whole_in_time() {
    let bound = Duration::from_secs(2);
    let pause = Duration::from_millis(100);
    let mut server = slow_sender_server(bound).await;
    let mut s = server.raw().await;
    // 1,006 bytes a pause: 20 KB within each bound.
    let message = ws_client_frame(0x82, &[7; 1000], true);
    let mut bytes = [
        ws_client_frame(0x01, b"cou", true),
        ws_client_frame(0x89, b"mid", true),
        ws_client_frame(0x80, b"nt", true),
    ]
    .concat();
    let mut cuts = vec![3, 9 + 3, 9 + 9 + 3];
    // Enough messages that the whole takes longer than the bound.
    let rounds = 2 * (bound.as_millis() / pause.as_millis()) as usize;
    common::each_cut_in_two(&mut bytes, &mut cuts, &message, rounds);
    common::write_in_pieces_outlasting(&mut s, &bytes, &cuts, pause, bound).await;
    assert_eq!(read_ws_frame(&mut s).await, (0x8a, b"mid".to_vec()));
    assert_eq!(read_ws_frame(&mut s).await, (0x81, b"1".to_vec()));
    for _ in 0..rounds {
        assert_eq!(read_ws_frame(&mut s).await, (0x82, vec![7; 1000]));
    }
    drop(s);
    let closed = server.next_close().await;
    assert_eq!(closed, (rounds as u64 + 1, CloseReason::ClientClosed));
    server.stop().await;
}

/// The same at a short message timeout and a slow pace: small messages,
/// each cut in two by a pause, 600 B/s in all, never between messages. The
/// first renewal rule (8 KiB per timeout) asked 8 KB/s of it at a 1 s
/// timeout and closed it at the first; it brings more than 137 B/s, the
/// floor at any timeout, and is served for three timeouts and more.
#[tokio::test]
async fn a_slow_sender_of_small_messages_is_served_at_a_short_message_timeout() {
    let bound = Duration::from_secs(1);
    let pause = Duration::from_millis(100);
    let mut server = slow_sender_server(bound).await;
    let mut s = server.raw().await;
    // 60 bytes a pause.
    let message = ws_client_frame(0x82, &[7; 54], true);
    let rounds = 3 * (bound.as_millis() / pause.as_millis()) as usize;
    let (mut bytes, mut cuts) = (Vec::new(), Vec::new());
    common::each_cut_in_two(&mut bytes, &mut cuts, &message, rounds);
    common::write_in_pieces_outlasting(&mut s, &bytes, &cuts, pause, 2 * bound).await;
    for _ in 0..rounds {
        assert_eq!(read_ws_frame(&mut s).await, (0x82, vec![7; 54]));
    }
    drop(s);
    let closed = server.next_close().await;
    assert_eq!(closed, (rounds as u64, CloseReason::ClientClosed));
    server.stop().await;
}

/// A client that, every round, ends the message it began and begins the
/// next (6 bytes: the rest of an empty frame, the first byte of a ping) is
/// closed with 1008 at the message timeout: each message was whole within
/// its time, but the connection never got back between messages, so it
/// never parked, and held a task and two pooled buffers for as long as the
/// rounds came (12 KB a connection, at a round every 55 s with the default
/// timeout of 60 s). Bringing 6 bytes a round, its time ran on.
#[tokio::test]
async fn a_peer_that_never_gets_back_between_messages_is_closed_at_the_message_timeout() {
    let server = message_timeout_server().await;
    let mut s = server.raw().await;
    let (mut from, mut to) = s.split();
    let closed = async {
        loop {
            match read_ws_frame(&mut from).await {
                (0x88, payload) => return payload,
                // The empty text echoed, the pongs.
                (0x81 | 0x8a, payload) => assert!(payload.is_empty()),
                other => panic!("{other:?}"),
            }
        }
    };
    let begun_and_ended = (&b"\x81"[..], &b"\x80\0\0\0\0\x89"[..]);
    let pause = Duration::from_millis(100);
    let payload = common::in_rounds_until(&mut to, begun_and_ended, pause, 20, closed).await;
    // The empty text was the one message.
    closed_at_the_message_timeout(server, &payload, 1).await;
}

/// In the middle of a message a WebSocket holds the read buffer with its
/// part, and not the write buffer once the pong went: it held both, given
/// back only between messages.
#[tokio::test]
async fn in_the_middle_of_a_message_a_websocket_holds_one_buffer() {
    let server = Ws::start(Server::builder(), |r| r.ping_interval(None)).await;
    let mut s = server.raw().await;
    // A ping, and the first byte of the next.
    s.write_all(b"\x89\x80\0\0\0\0\x89").await.unwrap();
    assert_eq!(read_ws_frame(&mut s).await, (0x8a, vec![]));
    server
        .wait_stats("one buffer", |s| s.buffers_checked_out == 1)
        .await;
    // (The shutdown would wait for the message.)
    drop(s);
    server.stop().await;
}

/// Answers each message with how many reallocations its worker thread
/// made since the connection opened, or since its last answer.
struct CountsReallocations;

impl WebSocketHandler for CountsReallocations {
    type State = u64;

    fn on_open(&self, since: &mut u64, _: &WsSession) {
        *since = crate::reallocations_on_this_thread();
    }

    async fn on_message(&self, since: &mut u64, _: WsMessage, _: &WsSession) -> Option<WsMessage> {
        let now = crate::reallocations_on_this_thread();
        let made = now - std::mem::replace(since, now);
        Some(made.to_string().into())
    }
}

/// A message of 1 MiB fragments, each read whole before the next comes (a
/// ping after each, its pong awaited), grows its buffers as one growing
/// `Vec` does: the read buffer, grown for the first fragment, is kept for
/// the next while the message lasts. Given back at each fragment's end, it
/// was freed (the pool keeps none over 64 KiB) and the next fragment grew
/// one again from 8 KiB: 8 fragments, 67 reallocations where 11 do.
#[tokio::test]
async fn a_message_of_large_fragments_grows_its_buffers_amortised() {
    const FRAGMENT: usize = 1 << 20;
    const FRAGMENTS: usize = 8;
    let route = WebSocketRoute::new(CountsReallocations)
        .max_frame_bytes(FRAGMENT)
        .max_message_bytes(FRAGMENT * FRAGMENTS);
    let builder = Server::builder()
        .workers(1)
        .park_idle_after(None)
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(builder, axum::Router::new().route_service("/ws", route));
    let mut s = TcpStream::connect(server.addrs[0]).await.unwrap();
    s.write_all(WS_UPGRADE).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
    let fragment = vec![7u8; FRAGMENT];
    for i in 0..FRAGMENTS {
        let opcode = match i {
            0 => 0x02,
            i if i + 1 == FRAGMENTS => 0x80,
            _ => 0x00,
        };
        s.write_all(&big_client_frame(opcode, &fragment))
            .await
            .unwrap();
        if i + 1 < FRAGMENTS {
            s.write_all(&ws_client_frame(0x89, b"", true))
                .await
                .unwrap();
            assert_eq!(read_ws_frame(&mut s).await, (0x8a, vec![]));
        }
    }
    let (first, made) = read_ws_frame(&mut s).await;
    assert_eq!(first, 0x81);
    let made: u64 = std::str::from_utf8(&made).unwrap().parse().unwrap();
    // The read buffer's doublings from 8 KiB to 1 MiB, once, and the
    // message's from 1 MiB to 8: a few more for the handshake's leftovers.
    assert!(made <= 30, "{made} reallocations");
    drop(s);
    assert!(server.stop().await);
}

/// A masked client frame of any length (zero mask: the payload as it is).
fn big_client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(payload);
    frame
}

/// A route with the defaults echoes a message of 1 MiB
/// (`DEFAULT_WS_MAX_MESSAGE_BYTES`) and refuses one byte more with 1009
/// from the frame's header, before a byte of its payload, counted as a
/// message over its limit. The default was 16 MiB: a client that sent
/// 16 MiB messages and read none of the echoes held 37 MB of a release
/// server per connection until its heartbeat timeout.
#[tokio::test]
async fn a_default_route_takes_a_1_mib_message_and_refuses_one_byte_more_from_its_header() {
    const MAX: usize = 1 << 20;
    assert_eq!(megaconn::DEFAULT_WS_MAX_MESSAGE_BYTES, MAX);
    let mut server = Ws::default().await;
    let mut s = server.raw().await;
    let message = vec![7; MAX];
    s.write_all(&big_client_frame(0x82, &message))
        .await
        .unwrap();
    assert_eq!(read_ws_frame(&mut s).await, (0x82, message));
    let over = big_client_frame(0x82, &[]);
    let over = [&over[..2], &(MAX as u64 + 1).to_be_bytes(), &over[10..]].concat();
    s.write_all(&over).await.unwrap();
    assert_eq!(read_close_code(&mut s).await, 1009);
    assert_eq!(
        server.next_close().await,
        (1, CloseReason::Protocol(ProtocolDetail::WebSocket(1009)))
    );
    common::assert_ws_limit_hits(&server.handle, "the default", [1, 0]);
    server.stop().await;
}

/// A native WebSocket's socket gets `Builder::message_send_buffer_size`
/// (256 KiB by default, which the kernel doubles) at its upgrade, so the
/// kernel holds about half a MiB at most for a peer that stops reading
/// before a push finds its socket full and closes it as a slow consumer;
/// an HTTP/1.1 connection of the same listener keeps the kernel's
/// autotuning, and `None` leaves a WebSocket's so too. (Before, every
/// socket autotuned up to `tcp_wmem`'s 4 MiB: 1,000 `/ws/chat` clients
/// that read nothing held 2.3 GB of the kernel's memory for 6 MB
/// published.)
#[tokio::test]
async fn a_websocket_gets_the_message_send_buffer_at_its_upgrade() {
    let bounded = common::kernel_send_buffer(megaconn::DEFAULT_MESSAGE_SEND_BUFFER);
    for (builder, set) in [
        (Server::builder(), true),
        (Server::builder().message_send_buffer_size(None), false),
    ] {
        let server = Ws::start(builder, |r| r).await;
        let mut http = TcpStream::connect(server.addr).await.unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(common::read_response(&mut http).await.status, 200);
        let mut ws = server.raw().await;
        // Echoed: served as a WebSocket, past its upgrade.
        ws.write_all(&ws_client_frame(0x81, b"hi", true))
            .await
            .unwrap();
        assert_eq!(read_ws_frame(&mut ws).await, (0x81, b"hi".to_vec()));
        assert_eq!(common::server_send_buffer(&ws) == bounded, set, "{set}");
        assert_ne!(common::server_send_buffer(&http), bounded);
        server.stop().await;
    }
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009_and_counts() {
    let mut server = Ws::start(Server::builder(), |r| r.max_message_bytes(1000)).await;
    let mut client = server.client().await;
    client.send(Message::binary(vec![1u8; 1001])).await.unwrap();
    match next_data(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Reading on lets tungstenite answer the close; then the server hangs up.
    assert!(tokio::time::timeout(SAFETY, client.next())
        .await
        .unwrap()
        .is_none());
    let (_, reason) = server.next_close().await;
    assert_eq!(
        reason,
        CloseReason::Protocol(ProtocolDetail::WebSocket(1009))
    );
    server
        .wait_stats("the error counted", |s| s.protocol_errors == 1)
        .await;
    server.stop().await;
}

/// A message over the limit is no broken framing: after its 1009 the
/// server counts the frame's payload off by its length, finds the client's
/// close behind it and hangs up at once, whatever `close_timeout` is (it
/// waited all of it: python `websockets`' `recv()` raised only after 5 s).
/// Twice: the oversize frame's payload whole, and cut by the client's close.
#[tokio::test]
async fn after_a_1009_the_clients_close_is_answered_at_once() {
    for sent in [20_000usize, 100] {
        let mut server = Ws::start(Server::builder(), |r| {
            r.max_message_bytes(16_384)
                .close_timeout(Duration::from_secs(3600))
        })
        .await;
        let mut s = server.raw().await;
        // A masked text frame declaring 20,000 bytes, `sent` of them sent.
        let mut frame = vec![0x81, 0x80 | 126];
        frame.extend_from_slice(&20_000u16.to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.resize(frame.len() + sent, b'a');
        s.write_all(&frame).await.unwrap();
        // Read, and answered with the client's close frame.
        assert_eq!(read_close_code(&mut s).await, 1009);
        // Hung up within SAFETY (20 s), not close_timeout (an hour).
        hangs_up(&mut s).await;
        assert_eq!(
            server.next_close().await.1,
            CloseReason::Protocol(ProtocolDetail::WebSocket(1009))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_utf8_closes_with_1007() {
    let mut server = Ws::default().await;
    let mut s = server.raw().await;
    s.write_all(&ws_client_frame(0x81, &[b'o', b'k', 0xff], true))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 1007);
    let (_, reason) = server.next_close().await;
    assert_eq!(
        reason,
        CloseReason::Protocol(ProtocolDetail::WebSocket(1007))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let mut server = Ws::default().await;
    let mut s = server.raw().await;
    s.write_all(&ws_client_frame(0x81, b"hi", false))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 1002);
    let (_, reason) = server.next_close().await;
    assert_eq!(
        reason,
        CloseReason::Protocol(ProtocolDetail::WebSocket(1002))
    );
    server.stop().await;
}

/// After a 1007 or a 1002 the client answers our close frame with its own
/// at once, and the server then closes the TCP connection at once (RFC
/// 6455 §7.1.1: both closes sent and received), well before a long
/// `close_timeout` (30 s; bounded here by 10 s). It read on until the
/// client hung up or `close_timeout` passed: python `websockets`, which
/// waits for the server's FIN, lost 5 s (review, session 46, W8).
#[tokio::test]
async fn after_a_violation_the_clients_close_is_answered_at_once() {
    let cases: [(&[u8], bool, u16); 2] = [(&[b'o', b'k', 0xff], true, 1007), (b"hi", false, 1002)];
    for (payload, masked, code) in cases {
        let mut server = Ws::start(Server::builder(), |r| {
            r.close_timeout(Duration::from_secs(30))
        })
        .await;
        let mut s = server.raw().await;
        s.write_all(&ws_client_frame(0x81, payload, masked))
            .await
            .unwrap();
        // Read, and answered with the client's close frame.
        assert_eq!(read_close_code(&mut s).await, code);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("after {code}: no TCP close within 10 s"))
            .expect("a clean close");
        assert!(rest.is_empty(), "{rest:?}");
        server.next_close().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_served() {
    let mut server = Ws::default().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // The handshake and the first frame in one write: the HTTP/1.1 engine
    // reads both, and hands the frame over with the socket.
    let mut bytes = WS_UPGRADE.to_vec();
    bytes.extend(ws_client_frame(0x81, b"early", true));
    s.write_all(&bytes).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
    assert_eq!(read_ws_frame(&mut s).await, (0x81, b"early".to_vec()));
    s.write_all(&ws_client_frame(0x88, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 1000);
    assert_eq!(server.next_close().await, (1, CloseReason::ClientClosed));
    server.stop().await;
}

/// The parking servers' `park_idle_after`.
const PARK_IDLE_AFTER: Duration = Duration::from_millis(50);

#[tokio::test]
async fn a_parked_websocket_keeps_its_state_across_park_and_wake() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r,
    )
    .await;
    let mut client = server.client().await;
    for round in 1..=3u64 {
        server
            .wait_stats("parked", |s| s.connections_parked == 1)
            .await;
        assert_eq!(
            server.handle.stats().buffers_checked_out,
            0,
            "a parked WebSocket holds no buffer"
        );
        client.send(Message::text("count")).await.unwrap();
        assert_eq!(
            next_data(&mut client).await,
            Message::text(round.to_string())
        );
    }
    server
        .wait_stats("parked again", |s| s.connections_parked == 1)
        .await;
    // A close frame to a parked WebSocket: woken, echoed, closed once.
    client.close(None).await.unwrap();
    assert_eq!(server.next_close().await, (3, CloseReason::ClientClosed));
    server
        .wait_stats("closed", |s| s.connections_open == 0)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_parked_websocket_gets_the_servers_pings_and_stays_parked() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r.ping_interval(Some(Duration::from_secs(1))),
    )
    .await;
    let mut client = server.client().await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    // Two pings from the lot's timer; the client's pongs wake it and it
    // parks again.
    expect_pings(&mut client, 2).await;
    server
        .wait_stats("parked after the pings", |s| s.connections_parked == 1)
        .await;
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("1"));
    drop(client);
    assert_eq!(server.next_close().await.0, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_ping_to_a_parked_websocket_wakes_it_once_and_it_parks_again_at_once() {
    let server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r.ping_interval(None),
    )
    .await;
    let mut s = server.raw().await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    // One heartbeat: a second one within park_idle_after of this re-park
    // would count as a hot wake, by design.
    {
        let before = server.handle.stats();
        // The client's heartbeat: read and answered in one cold wake, then
        // straight back to the lot (not re-parked unread, woken again "hot"
        // and kept as a task holding a read buffer until park_idle_after).
        s.write_all(&ws_client_frame(0x89, b"hb", true))
            .await
            .unwrap();
        assert_eq!(read_ws_frame(&mut s).await, (0x8A, b"hb".to_vec()));
        // (The count follows the re-park: wait for both.)
        server
            .wait_stats("parked again, with no task", |s| {
                s.connections_parked == 1
                    && s.parks > before.parks
                    && s.wakes_without_task > before.wakes_without_task
            })
            .await;
        let after = server.handle.stats();
        assert_eq!(after.wakes_cold - before.wakes_cold, 1, "{after:?}");
        assert_eq!(after.wakes_hot, before.wakes_hot, "{after:?}");
        assert_eq!(after.parks - before.parks, 1, "{after:?}");
        assert_eq!(after.buffers_checked_out, 0, "{after:?}");
        // Served on the lot's own turn, as a framed heartbeat is: no task
        // (a task per wake waited in the run queue behind the lot's turn,
        // holding its read buffer, while thousands woke per second).
        assert_eq!(
            after.wakes_without_task - before.wakes_without_task,
            1,
            "{after:?}"
        );
    }
    server.stop().await;
}

/// A peer silent past its heartbeat timeout, parked (woken by the timer)
/// or awake, gets a close frame 1011 and then the TCP close, its answer not
/// awaited: it got the TCP close alone, which a client that still hears us
/// (a half-open path, a stalled reader) reports as 1006, abnormal closure.
#[tokio::test]
async fn a_silent_peer_gets_a_1011_then_the_close_at_the_heartbeat_timeout() {
    for park in [Some(PARK_IDLE_AFTER), None] {
        let mut server = Ws::start(Server::builder().park_idle_after(park), |r| {
            r.ping_interval(None)
                .heartbeat_timeout(Some(Duration::from_secs(1)))
                // Our close is not a handshake here: not waited for.
                .close_timeout(Duration::from_secs(600))
        })
        .await;
        let mut s = server.raw().await;
        if park.is_some() {
            // The monotonic count, not the gauge: the gauge is 1 only until
            // the heartbeat timeout closes it, a window a starved poll can
            // miss.
            server.wait_stats("parked", |s| s.parks >= 1).await;
        }
        let (first, payload) = read_ws_frame(&mut s).await;
        assert_eq!(first, 0x88, "{park:?}");
        assert_eq!(payload[..2], 1011u16.to_be_bytes(), "{park:?}");
        assert_eq!(&payload[2..], b"heartbeat timeout");
        assert_eq!(
            server.next_close().await,
            (0, CloseReason::HeartbeatTimeout)
        );
        hangs_up(&mut s).await;
        server.stop().await;
    }
}

/// The heartbeat timeout's close 1011 goes out whole or not at all: a
/// stream that takes only part of it at once gets the rest within the
/// close's bound (its reader comes back late here). The rest was dropped:
/// the client read a frame cut short, then the end of the stream. (On a
/// stream of 1 KiB: a TCP socket takes so few bytes in part only by chance.)
#[tokio::test(start_paused = true)]
async fn a_heartbeat_close_a_stream_takes_in_part_goes_out_whole() {
    const ROOM: usize = 1024;
    let (client_end, server_end) = tokio::io::duplex(ROOM);
    let (closes, _) = mpsc::unbounded_channel();
    let (opens, _) = mpsc::unbounded_channel();
    let route = WebSocketRoute::new(Probe { closes, opens })
        .ping_interval(None)
        .heartbeat_timeout(Some(Duration::from_secs(1)));
    let app = axum::Router::new().route_service("/ws", route);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            tokio::task::spawn_local(async move {
                Server::builder().serve_connection(server_end, app).await
            });
            let (mut client, _) = tokio_tungstenite::client_async("ws://t/ws", client_end)
                .await
                .expect("handshake");
            // An echo (4 bytes of header) that leaves the stream 10 bytes
            // of room, unread: of the close's 21 bytes it takes 10.
            let echoed = vec![7u8; ROOM - 4 - 10];
            client.send(Message::binary(echoed.clone())).await.unwrap();
            // Past the heartbeat timeout, within the close's bound (2 s).
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(next_data(&mut client).await, Message::binary(echoed));
            match next_data(&mut client).await {
                Message::Close(Some(frame)) => {
                    assert_eq!(frame.code, CloseCode::Error);
                    assert_eq!(frame.reason, "heartbeat timeout");
                }
                other => panic!("expected a close frame, got {other:?}"),
            }
        })
        .await;
}

/// A peer that sends but never reads: the echoes fill the socket buffers and
/// the server's write waits. The wait is bounded (here by `write_timeout`,
/// else by the heartbeat timeout), so the connection is closed as
/// `WriteTimeout`; unbounded, it waited for good, deaf to its heartbeat,
/// pushes and overflow.
#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_when_the_write_times_out() {
    let mut server = Ws::start(
        Server::builder().write_timeout(Some(Duration::from_millis(200))),
        |r| r.ping_interval(None).heartbeat_timeout(None),
    )
    .await;
    let writer = never_reads(&server).await;
    assert_eq!(server.next_close().await.1, CloseReason::WriteTimeout);
    writer.abort();
    server.stop().await;
}

/// With no heartbeat timeout and `write_timeout` off, a WebSocket's write
/// is still bounded: by `write_stall_timeout`, as framed TCP's is, counted
/// as a timeout. (Before, such a write had no bound at all: a peer that
/// never reads held its connection for good.)
#[tokio::test]
async fn without_a_heartbeat_a_peer_that_stops_reading_is_closed_at_the_write_stall_timeout() {
    let mut server = Ws::start(
        Server::builder().write_stall_timeout(Some(Duration::from_millis(200))),
        |r| r.ping_interval(None).heartbeat_timeout(None),
    )
    .await;
    let writer = never_reads(&server).await;
    assert_eq!(server.next_close().await.1, CloseReason::WriteTimeout);
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(closed_as(&server, "write_timeout"), 1);
    assert_eq!(server.handle.stats().timeouts, 1);
    writer.abort();
    assert_eq!(server.stop().await.forced, 0);
}

/// A WebSocket whose client sends 16 KiB binary messages until the server
/// takes no more (its write waits, so it stops reading) and never reads:
/// the task that sends them (a small receive buffer, so that the echoes
/// back up soon).
async fn never_reads(server: &Ws) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    s.write_all(WS_UPGRADE).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
    let (unread, mut write) = s.into_split();
    tokio::spawn(async move {
        // The socket stays open, unread, as long as the task runs.
        let _unread = unread;
        let payload = vec![7u8; 16 * 1024];
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x82, 0x80 | 126];
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        while write.write_all(&frame).await.is_ok() {}
    })
}

/// A WebSocket peer that reads slowly but steadily is not cut off by the
/// write stall bound, however long the write: the bytes it takes restart
/// it. Before, only our own writes showed its progress, and tokio writes
/// again only once the kernel reports the socket writable, when about a
/// third of its send buffer has drained: on loopback the buffer autotunes
/// to megabytes, so this reader (100 KiB/s, 200 KiB a bound) was closed as
/// `WriteTimeout` one bound into the write. Now a bound that passes asks
/// the kernel whether the peer acknowledged bytes since it began. The
/// client reads for three bounds; only a pause of most of a bound in its
/// reading could close it, and a slower machine only reads less. (The
/// heartbeat timeout, which would bound the stall the same way, is off:
/// the client sends nothing while it reads.)
#[tokio::test]
async fn a_peer_that_reads_slowly_but_steadily_is_not_cut_off_by_the_write_stall_bound() {
    /// Long against the reader's 10 ms between reads: only a pause of
    /// over a second in its reading could pass for a stall.
    const BOUND: Duration = Duration::from_secs(2);
    /// More than the test reads by far: the write lasts the whole test.
    const PAYLOAD: usize = 8 << 20;
    let mut server = Ws::start(Server::builder().write_stall_timeout(Some(BOUND)), |r| {
        r.ping_interval(None)
            .heartbeat_timeout(None)
            .max_message_bytes(PAYLOAD)
            .max_frame_bytes(PAYLOAD)
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    s.write_all(WS_UPGRADE).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
    let (mut read, mut write) = s.into_split();
    // One message, unmasked by a zero mask, from a task of its own (the
    // server reads it while we read the echo); the write half stays open
    // until the end.
    let writer = tokio::spawn(async move {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(PAYLOAD as u64).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.resize(frame.len() + PAYLOAD, 7);
        write.write_all(&frame).await.unwrap();
        std::future::pending::<()>().await;
    });
    let lasting = 3 * BOUND;
    common::read_steadily_while_open(
        &mut read,
        lasting,
        &mut server.running.closes,
        &server.running.handle,
    )
    .await;
    writer.abort();
    server.stop().await;
}

/// A peer that reads slowly but keeps reading is not cut off: with
/// `write_timeout` off, the heartbeat timeout bounds the time a write makes
/// *no* progress, not the whole write. Here the echo of one message is one
/// write, read at 1 MiB/s. The kernel holds at most the server's send
/// buffer and the client's receive buffer of it, both set small (so the
/// machine's `tcp_wmem` and `tcp_rmem`, which autotune them, do not decide
/// how much), and the message is 6.5 s of reading more than that: the write
/// cannot end within the 5 s heartbeat timeout, while the client never
/// stops reading for more than 64 ms. Bounded as a whole, the write was
/// closed as `WriteTimeout` after 5 s; now only a 5 s stall of this client
/// would close it (with a 1 s timeout, a loaded CI machine that did not run
/// the test task for a second did). About 7 s.
#[tokio::test]
async fn a_slow_peer_that_keeps_reading_gets_the_whole_backlog() {
    /// What the client reads a second, at most.
    const RATE: usize = 1 << 20;
    /// One read, at most: 1/16 s at `RATE`.
    const READ: usize = 64 << 10;
    /// `SO_SNDBUF` of the server's socket and `SO_RCVBUF` of the client's:
    /// Linux doubles what it is asked and caps it (`wmem_max`, `rmem_max`).
    const BUFFER: usize = 64 << 10;
    /// More than the kernel can hold of the echo: both buffers (2 × 2 ×
    /// `BUFFER`) and the write queue's overshoot of its limit (one segment
    /// of up to 64 KiB).
    const BUFFERED_AT_MOST: usize = 8 * BUFFER;
    const HEARTBEAT: Duration = Duration::from_secs(5);
    /// Reading what the kernel cannot hold takes 6.5 s at `RATE`, so the
    /// write waits beyond `HEARTBEAT` (with 1.5 s to spare).
    const PAYLOAD: usize = BUFFERED_AT_MOST + RATE * 13 / 2;
    let mut server = Ws::start(Server::builder().send_buffer_size(Some(BUFFER)), |r| {
        r.ping_interval(None)
            .heartbeat_timeout(Some(HEARTBEAT))
            .max_message_bytes(PAYLOAD)
            .max_frame_bytes(PAYLOAD)
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(BUFFER as u32).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    s.write_all(WS_UPGRADE).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
    // One message, unmasked by a zero mask: its echo is one write.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(PAYLOAD as u64).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.resize(frame.len() + PAYLOAD, 7);
    s.write_all(&frame).await.unwrap();
    // The echo: a 10-byte header (0x82, 127, the length) and the payload,
    // all before any end; by the first byte's arrival, at most `RATE` bytes
    // a second (and one read).
    let expected = 10 + PAYLOAD;
    let mut got = 0;
    let mut buf = vec![0u8; READ];
    let mut first = None;
    while got < expected {
        if let Some(first) = first {
            let due = Duration::from_secs_f64(got as f64 / RATE as f64);
            tokio::time::sleep_until(first + due).await;
        }
        let n = tokio::time::timeout(SAFETY, s.read(&mut buf))
            .await
            .expect("the echo in time")
            .expect("a read");
        assert!(
            n > 0,
            "closed after {got} of {expected} bytes: {:?}",
            server.closes.try_recv()
        );
        first.get_or_insert_with(tokio::time::Instant::now);
        got += n;
    }
    assert!(got >= expected);
    // Then the server closes it, as the peer sent nothing for longer than
    // the heartbeat timeout while it read (a close frame may follow the
    // echo). Not as `WriteTimeout`: that close still flushes for up to 2 s
    // (`conn/io.rs`'s `CLOSE_TIMEOUT`), which could deliver the rest of a
    // backlog this size, so the reason is what tells the two apart.
    assert_eq!(
        server.next_close().await,
        (1, CloseReason::HeartbeatTimeout)
    );
    server.stop().await;
}

/// The next message a client reads is a close frame with 1001 (going away).
async fn expect_going_away<S>(client: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = tokio::time::timeout(SAFETY, client.next())
        .await
        .expect("a close frame in time")
        .expect("a frame before the end")
        .expect("a valid frame");
    match message {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{frame:?}"),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_sends_parked_websockets_a_1001_and_tells_their_handler() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r,
    )
    .await;
    let mut client = server.client().await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    server.handle.shutdown();
    expect_going_away(&mut client).await;
    assert_eq!(server.next_close().await, (0, CloseReason::Shutdown));
    server.stop().await;
}

/// A one-worker server on 127.0.0.1:0 that parks idle connections after
/// [`PARK_IDLE_AFTER`], listening, for a route of a test's own.
fn parking_server() -> Server {
    Server::builder()
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds")
}

/// A handler whose `on_close` panics; it echoes.
struct PanicsOnClose;

impl WebSocketHandler for PanicsOnClose {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }

    fn on_close(&self, _: (), _: CloseReason) {
        panic!("this on_close panics on purpose");
    }
}

/// A parked WebSocket whose handler's `on_close` panics at shutdown still
/// gets its 1001, and the panic is counted, as an awake one's is. The
/// parking lot's close called `on_close` unguarded: the panic unwound past
/// the 1001, which was never sent.
#[tokio::test]
async fn a_parked_websocket_whose_on_close_panics_still_gets_its_1001_at_shutdown() {
    let server = parking_server();
    let (addr, handle) = (server.local_addr(), server.handle());
    let app = axum::Router::new().route_service("/ws", WebSocketRoute::new(PanicsOnClose));
    let task = tokio::spawn(server.serve(app));
    let (mut client, _) = tokio::time::timeout(
        SAFETY,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    common::wait_stats(&handle, "parked", |s| s.connections_parked == 1).await;
    handle.shutdown();
    expect_going_away(&mut client).await;
    // Counted before the 1001 went out.
    assert_eq!(handle.stats().panics, 1);
    common::shut_down(&handle, task)
        .await
        .expect("serve result");
}

#[tokio::test]
async fn shutdown_sends_awake_websockets_a_1001_and_waits_for_their_close() {
    let mut server = Ws::start(Server::builder().park_idle_after(None), |r| r).await;
    let mut client = server.client().await;
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("1"));
    server.handle.shutdown();
    expect_going_away(&mut client).await;
    // tungstenite answers the close; the server then closes the socket.
    let end = tokio::time::timeout(SAFETY, client.next())
        .await
        .expect("the end in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "nothing after the close: {end:?}"
    );
    assert_eq!(server.next_close().await, (1, CloseReason::Shutdown));
    server.stop().await;
}

#[tokio::test]
async fn malformed_handshakes_get_their_status_and_reason() {
    let server = Ws::start(Server::builder(), |r| {
        r.check_origin(|origin| origin.is_none_or(|o| o == "https://good.example"))
    })
    .await;
    let cases: [(&[u8], u16, &str); 5] = [
        (b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n", 426, "Upgrade: websocket"),
        (
            &ws_upgrade("/ws", "Sec-WebSocket-Version: 8\r\n")[..],
            426,
            "Sec-WebSocket-Version: 13",
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
            400,
            "Sec-WebSocket-Key",
        ),
        (
            b"POST /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n",
            400,
            "GET",
        ),
        (
            &ws_upgrade("/ws", "Origin: https://evil.example\r\n")[..],
            403,
            "Origin",
        ),
    ];
    for (request, status, says) in cases {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let response = common::read_response(&mut s).await;
        let body = String::from_utf8_lossy(&response.body);
        assert_eq!(response.status, status, "{body}");
        assert!(body.contains(says), "{body:?} should say {says:?}");
    }
    // A version other than 13 alone: the client is told which one works.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&ws_upgrade("/ws", "Sec-WebSocket-Version: 8\r\n"))
        .await
        .unwrap();
    let response = common::read_response(&mut s).await;
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    // An allowed origin still opens.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&ws_upgrade("/ws", "Origin: https://good.example\r\n"))
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101 "));
    // Its close frame, answered, ends it before the server stops.
    s.write_all(&ws_client_frame(0x88, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 1000);
    server.stop().await;
}

/// A handshake declaring a body it never sends was answered `101` and then
/// held while the engine waited for that body (no bound by default): now
/// `400` and the connection closes, the body unread.
#[tokio::test]
async fn a_handshake_that_declares_a_body_is_refused_and_closed() {
    let server = Ws::start(Server::builder(), |r| r).await;
    for declares in ["Content-Length: 100\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&ws_upgrade("/ws", declares)).await.unwrap();
        let response = common::read_response(&mut s).await;
        let body = String::from_utf8_lossy(&response.body);
        assert_eq!(response.status, 400, "{declares}: {body}");
        assert!(body.contains("no body"), "{body:?}");
        assert_eq!(response.header("connection"), Some("close"));
        // Closed by the server, with the declared body never sent.
        let mut rest = Vec::new();
        tokio::time::timeout(SAFETY, s.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .ok();
        assert!(rest.is_empty(), "{rest:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn pushes_reach_parked_and_awake_websockets_by_id_topic_and_broadcast() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r,
    )
    .await;
    let mut a = server.client().await;
    let a_id = server.next_open().await;
    let mut b = server.client().await;
    let _b_id = server.next_open().await;
    for client in [&mut a, &mut b] {
        client.send(Message::text("join")).await.unwrap();
        assert_eq!(next_data(client).await, Message::text("joined"));
    }
    server
        .wait_stats("both parked", |s| s.connections_parked == 2)
        .await;
    // To one parked WebSocket by id: one send from the pump, it stays parked.
    assert_eq!(server.hub.send(a_id, "to a"), Ok(()));
    assert_eq!(next_data(&mut a).await, Message::text("to a"));
    // Bytes that are not UTF-8 arrive as a binary message.
    assert_eq!(
        server.hub.send(a_id, Bytes::from_static(&[0xff, 0])),
        Ok(())
    );
    assert_eq!(next_data(&mut a).await, Message::binary(vec![0xff, 0]));
    // A binary protocol's bytes that happen to be ASCII: binary when asked
    // (they went as text, the hub picking by the bytes).
    assert_eq!(server.hub.send_binary(a_id, "ascii"), Ok(()));
    assert_eq!(next_data(&mut a).await, Message::binary(b"ascii".to_vec()));
    assert_eq!(server.hub.publish_binary("room", "room"), Ok(()));
    assert_eq!(server.hub.broadcast_binary("all"), Ok(()));
    for client in [&mut a, &mut b] {
        assert_eq!(next_data(client).await, Message::binary(b"room".to_vec()));
        assert_eq!(next_data(client).await, Message::binary(b"all".to_vec()));
    }
    // To the topic, and to all.
    assert_eq!(server.hub.publish("room", "to the room"), Ok(()));
    assert_eq!(server.hub.broadcast("to all"), Ok(()));
    for client in [&mut a, &mut b] {
        assert_eq!(next_data(client).await, Message::text("to the room"));
        assert_eq!(next_data(client).await, Message::text("to all"));
    }
    assert_eq!(server.handle.stats().connections_parked, 2);
    // The state survived: each connection has seen its one "join".
    a.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut a).await, Message::text("2"));
    // An awake connection (it just answered) gets pushes through its queue.
    assert_eq!(server.hub.send(a_id, "awake"), Ok(()));
    assert_eq!(next_data(&mut a).await, Message::text("awake"));
    assert_eq!(server.hub.send_binary(a_id, "awake"), Ok(()));
    assert_eq!(next_data(&mut a).await, Message::binary(b"awake".to_vec()));
    // A closed connection leaves its topic: a publish reaches only b.
    a.close(None).await.unwrap();
    assert_eq!(server.next_close().await, (2, CloseReason::ClientClosed));
    assert_eq!(server.hub.publish("room", "after a left"), Ok(()));
    assert_eq!(next_data(&mut b).await, Message::text("after a left"));
    drop(b);
    server.next_close().await;
    server.stop().await;
}

/// A broadcast under way does not hold back the worker's WebSockets: with
/// a delivery rate so low that the pump waits over a quarter of an hour
/// after its first slice (one connection), every parked WebSocket is still
/// answered, and the gauge shows the others pending. Counters, not timing.
#[tokio::test]
async fn a_paced_broadcast_lets_the_worker_serve_its_websockets_meanwhile() {
    let server = Ws::start(
        Server::builder()
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .delivery_rate(Some(0.001)),
        |r| r,
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client().await);
    }
    server
        .wait_stats("four parked", |s| s.connections_parked == 4)
        .await;
    assert_eq!(server.hub.broadcast("to all"), Ok(()));
    server
        .wait_stats("one reached, three pending", |s| {
            s.messages.pushes == 1 && s.messages.deliveries_pending == 3
        })
        .await;
    let mut reached = 0;
    for client in &mut clients {
        client.send(Message::text("count")).await.unwrap();
        let mut got = next_data(client).await;
        if got == Message::text("to all") {
            reached += 1;
            got = next_data(client).await;
        }
        assert_eq!(got, Message::text("1"));
    }
    assert_eq!(reached, 1);
    let stats = server.handle.stats().messages;
    assert_eq!(
        (stats.pushes, stats.deliveries_pending),
        (1, 3),
        "{stats:?}"
    );
    server.stop().await;
}

/// A broadcast delivered in slices at a rate reaches every parked
/// WebSocket once, in order with the next one, and nothing stays pending.
#[tokio::test]
async fn paced_broadcasts_reach_every_websocket_in_order() {
    const N: usize = 300;
    let server = Ws::start(
        Server::builder()
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .delivery_rate(Some(10_000.0)),
        |r| r,
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(server.client().await);
    }
    server
        .wait_stats("all parked", |s| s.connections_parked == N as i64)
        .await;
    assert_eq!(server.hub.broadcast("one"), Ok(()));
    assert_eq!(server.hub.broadcast("two"), Ok(()));
    for client in &mut clients {
        assert_eq!(next_data(client).await, Message::text("one"));
        assert_eq!(next_data(client).await, Message::text("two"));
    }
    server
        .wait_stats("every push counted, none pending", |s| {
            s.messages.pushes == 2 * N as u64 && s.messages.deliveries_pending == 0
        })
        .await;
    server.stop().await;
}

/// A WebSocket client over TLS (tungstenite over tokio-rustls).
type TlsClient = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

impl Ws {
    /// A parking server over TLS (a certificate for `localhost` from a
    /// fresh CA), with `route`'s settings; and the CA, for clients.
    async fn tls(
        route: impl FnOnce(WebSocketRoute<Probe>) -> WebSocketRoute<Probe>,
    ) -> (Ws, common::tls::Ca) {
        let ca = common::tls::Ca::new();
        let tls = ca.server(&["localhost"]);
        let builder = Server::builder()
            .tls(tls)
            .park_idle_after(Some(PARK_IDLE_AFTER));
        (Ws::start(builder, route).await, ca)
    }

    /// A wss:// client (TLS 1.3, so it can ask for a KeyUpdate).
    async fn tls_client(&self, ca: &common::tls::Ca) -> TlsClient {
        wss_client(self.addr, ca).await
    }
}

/// A wss:// client of `addr` (TLS 1.3, so it can ask for a KeyUpdate).
async fn wss_client(addr: std::net::SocketAddr, ca: &common::tls::Ca) -> TlsClient {
    let config = ca.client_versions(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let stream = common::tls::connect(addr, config, "localhost").await;
    let (client, response) = tokio::time::timeout(
        SAFETY,
        tokio_tungstenite::client_async("wss://localhost/ws", stream),
    )
    .await
    .expect("handshake in time")
    .expect("handshake over TLS");
    assert_eq!(response.status(), 101);
    client
}

/// A slowloris over TLS: a message's record, encrypted by the client's
/// session, its first bytes, then the rest a byte at a time (never all of
/// it) until `ended`; then the server's close 1008 is expected.
async fn trickle_a_record_until<T>(
    client: &mut TlsClient,
    ended: impl std::future::Future<Output = T>,
) -> T {
    use std::io::Write;
    let (tcp, session) = client.get_mut().get_mut();
    let message = ws_client_frame(0x81, &[b'x'; 100], true);
    session.writer().write_all(&message).unwrap();
    let mut record = Vec::new();
    session.write_tls(&mut record).unwrap();
    tcp.write_all(&record[..10]).await.unwrap();
    let rest = &record[10..record.len() - 1];
    let out = common::trickle_until(tcp, rest, ended).await;
    match next_data(client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close frame, got {other:?}"),
    }
    out
}

/// A client that resets a parked WebSocket over TLS closed it: no protocol
/// error (it was counted as a TLS error before, as for HTTPS/1.1).
#[tokio::test]
async fn a_reset_of_a_parked_websocket_over_tls_is_a_client_close() {
    let (mut server, ca) = Ws::tls(|r| r).await;
    let client = server.tls_client(&ca).await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    client.get_ref().get_ref().0.set_zero_linger().unwrap();
    drop(client);
    assert_eq!(server.next_close().await, (0, CloseReason::ClientClosed));
    assert_eq!(server.handle.stats().protocol_errors, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_over_tls_parks_and_keeps_its_state_across_wakes() {
    let (mut server, ca) = Ws::tls(|r| r).await;
    let mut client = server.tls_client(&ca).await;
    for round in 1..=3u64 {
        server
            .wait_stats("parked", |s| s.connections_parked == 1)
            .await;
        let parked = server.handle.stats();
        assert_eq!(parked.buffers_checked_out, 0, "{parked:?}");
        assert_eq!(parked.connections_open, 1, "{parked:?}");
        client.send(Message::text("count")).await.unwrap();
        assert_eq!(
            next_data(&mut client).await,
            Message::text(round.to_string())
        );
    }
    server
        .wait_stats("parked again", |s| s.connections_parked == 1)
        .await;
    // A close frame to a parked WebSocket over TLS: woken, decrypted,
    // echoed, closed once; nothing is left parked.
    client.close(None).await.unwrap();
    assert_eq!(server.next_close().await, (3, CloseReason::ClientClosed));
    server
        .wait_stats("closed", |s| {
            s.connections_open == 0 && s.connections_parked == 0 && s.buffers_checked_out == 0
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_parked_websocket_over_tls_gets_the_servers_pings_encrypted() {
    let (mut server, ca) = Ws::tls(|r| r.ping_interval(Some(Duration::from_secs(1)))).await;
    let mut client = server.tls_client(&ca).await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    // Two pings from the lot's timer, each encrypted with the parked
    // session (the client decrypts them); its pongs wake the connection,
    // which parks again.
    expect_pings(&mut client, 2).await;
    server
        .wait_stats("parked after the pings", |s| {
            s.connections_parked == 1 && s.parks >= 3
        })
        .await;
    // The pongs were taken as such (no close, no protocol error), and the
    // state and both directions' keys are intact.
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("1"));
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert_eq!(stats.closed, 0, "{stats:?}");
    drop(client);
    assert_eq!(server.next_close().await.0, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_close_notify_to_a_parked_websocket_over_tls_closes_it() {
    let (mut server, ca) = Ws::tls(|r| r).await;
    let mut client = server.tls_client(&ca).await;
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("1"));
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    // The TLS close under the WebSocket: close_notify, no close frame.
    let tls = client.get_mut();
    tls.shutdown().await.unwrap();
    // The server answers with its own close_notify and closes: the client
    // reads a clean end (tokio-rustls reports an end without close_notify
    // as an error).
    let mut rest = Vec::new();
    tokio::time::timeout(SAFETY, tls.read_to_end(&mut rest))
        .await
        .expect("the server closes after close_notify")
        .expect("a clean end");
    assert_eq!(server.next_close().await, (1, CloseReason::ClientClosed));
    server
        .wait_stats("closed", |s| {
            s.connections_open == 0 && s.connections_parked == 0 && s.buffers_checked_out == 0
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_key_update_to_a_parked_websocket_over_tls_is_answered_and_it_parks_again() {
    let (server, ca) = Ws::tls(|r| r.ping_interval(None)).await;
    let mut client = server.tls_client(&ca).await;
    // (The lot counts the park just after the gauge: wait for both.)
    server
        .wait_stats("parked", |s| s.connections_parked == 1 && s.parks == 1)
        .await;
    let before = server.handle.stats();
    // A KeyUpdate asking for the server's own: no WebSocket frame, so the
    // woken connection answers it and goes straight back to the lot.
    client.get_mut().get_mut().1.refresh_traffic_keys().unwrap();
    client.get_mut().flush().await.unwrap();
    server
        .wait_stats("woken and parked again", |s| {
            s.connections_parked == 1
                && s.parks == before.parks + 1
                && s.wakes_cold + s.wakes_hot == before.wakes_cold + before.wakes_hot + 1
        })
        .await;
    // Both sides use the new keys: a message is understood, its answer
    // decrypts, and the handler saw only this one.
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("1"));
    let stats = server.handle.stats();
    assert_eq!(stats.closed, 0, "{stats:?}");
    server.stop().await;
}

#[tokio::test]
async fn pushes_reach_a_parked_websocket_over_tls_encrypted_and_it_stays_parked() {
    let (mut server, ca) = Ws::tls(|r| r).await;
    let mut client = server.tls_client(&ca).await;
    let id = server.next_open().await;
    client.send(Message::text("join")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("joined"));
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    let before = server.handle.stats();
    // By id, topic and broadcast: each one `send` of records sealed with
    // the parked session, which stays parked (no wake).
    assert_eq!(server.hub.send(id, "to you"), Ok(()));
    assert_eq!(next_data(&mut client).await, Message::text("to you"));
    assert_eq!(server.hub.publish("room", "to the room"), Ok(()));
    assert_eq!(next_data(&mut client).await, Message::text("to the room"));
    assert_eq!(server.hub.broadcast("to all"), Ok(()));
    assert_eq!(next_data(&mut client).await, Message::text("to all"));
    let after = server.handle.stats();
    assert_eq!(after.connections_parked, 1, "{after:?}");
    assert_eq!(
        after.wakes_cold + after.wakes_hot,
        before.wakes_cold + before.wakes_hot
    );
    // The session's sequence numbers moved on with the pushes: the next
    // exchange still decrypts both ways.
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("2"));
    drop(client);
    assert_eq!(server.next_close().await.0, 2);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_a_parked_websocket_over_tls_an_encrypted_1001_and_close_notify() {
    let (mut server, ca) = Ws::tls(|r| r).await;
    let mut client = server.tls_client(&ca).await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    server.handle.shutdown();
    expect_going_away(&mut client).await;
    assert_eq!(server.next_close().await, (0, CloseReason::Shutdown));
    // Then close_notify: a clean end under the WebSocket.
    let mut rest = Vec::new();
    tokio::time::timeout(SAFETY, client.get_mut().read_to_end(&mut rest))
        .await
        .expect("the end in time")
        .expect("the server said close_notify");
    server.stop().await;
}

#[tokio::test]
async fn a_silent_parked_websocket_over_tls_is_closed_at_the_heartbeat_timeout() {
    let (mut server, ca) = Ws::tls(|r| {
        r.ping_interval(None)
            .heartbeat_timeout(Some(Duration::from_secs(1)))
    })
    .await;
    let mut client = server.tls_client(&ca).await;
    // The monotonic count, not the gauge: the gauge is 1 only until the
    // heartbeat timeout closes it, a window a starved poll can miss.
    server.wait_stats("parked", |s| s.parks >= 1).await;
    assert_eq!(
        server.next_close().await,
        (0, CloseReason::HeartbeatTimeout)
    );
    // Told why, encrypted.
    match next_data(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Error),
        other => panic!("expected a close frame, got {other:?}"),
    }
    server
        .wait_stats("closed", |s| {
            s.connections_open == 0 && s.connections_parked == 0
        })
        .await;
    server.stop().await;
}

/// A parked WebSocket over TLS woken by part of a record, then sent a byte
/// now and then, is closed at the message timeout (1008, encrypted): the
/// record is a message begun. Parked again with the part, it was woken by
/// every byte, each wake restarting its heartbeat, and bounded by nothing.
#[tokio::test]
async fn part_of_a_record_to_a_parked_websocket_over_tls_must_be_whole_within_the_message_timeout()
{
    let (mut server, ca) = Ws::tls(|r| {
        r.ping_interval(None)
            .heartbeat_timeout(Some(Duration::from_secs(600)))
            .message_timeout(Some(Duration::from_millis(300)))
            .close_timeout(Duration::from_millis(100))
    })
    .await;
    let mut client = server.tls_client(&ca).await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    let closed = trickle_a_record_until(&mut client, server.next_close()).await;
    assert_eq!(closed, (0, CloseReason::MessageTimeout));
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(closed_as(&server, "message_timeout"), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_message_to_a_parked_websocket_wakes_it_once() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r,
    )
    .await;
    let mut client = server.client().await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    let before = server.handle.stats();
    // A message: read and answered in one cold wake, then straight back to
    // the lot (not re-parked unread, woken again "hot" and kept as a task
    // until park_idle_after: the reply could only come after that hot wake).
    client.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("1"));
    server
        .wait_stats("parked again", |s| {
            s.connections_parked == 1 && s.parks > before.parks
        })
        .await;
    let after = server.handle.stats();
    assert_eq!(after.wakes_cold - before.wakes_cold, 1, "{after:?}");
    assert_eq!(after.wakes_hot, before.wakes_hot, "{after:?}");
    assert_eq!(after.parks - before.parks, 1);
    drop(client);
    assert_eq!(server.next_close().await.0, 1);
    server.stop().await;
}

/// Raw deflate of one message as a permessage-deflate sender makes it: a
/// sync flush, the 00 00 ff ff tail stripped (RFC 7692 §7.2.1).
fn deflate_message(payload: &[u8]) -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress
        .compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate_message(data: &[u8]) -> Vec<u8> {
    let mut decompress = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(1024);
    let input = [data, &[0, 0, 0xff, 0xff][..]].concat();
    decompress
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    out
}

#[tokio::test]
async fn permessage_deflate_is_agreed_and_messages_go_both_ways_compressed_across_parking() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r.permessage_deflate(true),
    )
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&ws_upgrade(
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    ))
    .await
    .unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let text = "hello hello hello hello";
    for round in 1..=2 {
        // A compressed text message (RSV1 on a final text frame), echoed
        // compressed; the second time from the parked state.
        s.write_all(&ws_client_frame(
            0xC1,
            &deflate_message(text.as_bytes()),
            true,
        ))
        .await
        .unwrap();
        let (first, payload) = read_ws_frame(&mut s).await;
        assert_eq!(first, 0xC1, "a final, compressed text frame");
        assert_eq!(inflate_message(&payload), text.as_bytes());
        if round == 1 {
            server
                .wait_stats("parked", |s| s.connections_parked == 1)
                .await;
        }
    }
    // An uncompressed message is fine too; RSV1 on a ping is not.
    s.write_all(&ws_client_frame(0x81, b"count", true))
        .await
        .unwrap();
    let (first, payload) = read_ws_frame(&mut s).await;
    assert_eq!(first, 0xC1);
    assert_eq!(inflate_message(&payload), b"3");
    s.write_all(&ws_client_frame(0xC9, b"", true))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 1002);
    assert_eq!(
        server.next_close().await,
        (3, CloseReason::Protocol(ProtocolDetail::WebSocket(1002)))
    );
    server.stop().await;
}

/// A tiny `max_message_bytes` with permessage-deflate: a small compressed
/// message is inflated and echoed, a larger one is refused with 1009 once it
/// inflates past the limit; no panic along the way (the inflate buffer's
/// bounds once had `clamp(64, max + 1)`, which panics for a max under 63).
#[tokio::test]
async fn a_tiny_message_limit_with_deflate_echoes_small_and_refuses_large_with_1009() {
    let mut server = Ws::start(Server::builder(), |r| {
        r.permessage_deflate(true).max_message_bytes(32)
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&ws_upgrade(
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    ))
    .await
    .unwrap();
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.contains("permessage-deflate"), "{head}");
    let small = b"0123456789";
    s.write_all(&ws_client_frame(0xC2, &deflate_message(small), true))
        .await
        .unwrap();
    let (first, payload) = read_ws_frame(&mut s).await;
    assert_eq!(first, 0xC2, "a final, compressed binary frame");
    assert_eq!(inflate_message(&payload), small);
    s.write_all(&ws_client_frame(0xC2, &deflate_message(&[7u8; 100]), true))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 1009);
    drop(s);
    assert_eq!(
        server.next_close().await,
        (1, CloseReason::Protocol(ProtocolDetail::WebSocket(1009)))
    );
    assert_eq!(server.handle.stats().panics, 0);
    server.stop().await;
}

/// A second handler, with a state of another type: it answers each message
/// with the one before it (`none` first), and reports its last on close.
struct Last {
    closes: mpsc::UnboundedSender<(String, CloseReason)>,
}

impl WebSocketHandler for Last {
    type State = String;

    async fn on_message(
        &self,
        last: &mut String,
        message: WsMessage,
        _: &WsSession,
    ) -> Option<WsMessage> {
        let text = String::from_utf8_lossy(message.as_bytes()).into_owned();
        let before = std::mem::replace(last, text);
        Some(if before.is_empty() {
            "none".into()
        } else {
            before.into()
        })
    }

    fn on_close(&self, last: String, reason: CloseReason) {
        let _ = self.closes.send((last, reason));
    }
}

/// Parked WebSockets of three routes on one server, two with the same
/// handler type (one side table, told apart by the entry's variant) and one
/// with a state of another type (a table of its own), each wake with their
/// own state and handler, get a broadcast while parked, and at shutdown
/// each handler hears of its own connection.
#[tokio::test]
async fn websockets_of_routes_with_different_states_park_and_wake_as_their_own() {
    let mut server = Server::builder()
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let (addr, handle, hub) = (server.local_addr(), server.handle(), server.hub());
    let (probe_a, mut closes_a) = mpsc::unbounded_channel();
    let (probe_b, mut closes_b) = mpsc::unbounded_channel();
    let (last, mut closes_last) = mpsc::unbounded_channel();
    let probe = |closes| Probe {
        closes,
        opens: mpsc::unbounded_channel().0,
    };
    let app = axum::Router::new()
        .route_service("/a", WebSocketRoute::new(probe(probe_a)))
        .route_service("/b", WebSocketRoute::new(probe(probe_b)))
        .route_service("/last", WebSocketRoute::new(Last { closes: last }));
    let task = tokio::spawn(server.serve(app));
    let connect = |path: &str| {
        let url = format!("ws://{addr}{path}");
        async move {
            let (client, _) = tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(url))
                .await
                .expect("handshake in time")
                .expect("handshake");
            client
        }
    };
    let (mut a, mut b, mut l) = (
        connect("/a").await,
        connect("/b").await,
        connect("/last").await,
    );
    let parked = |n| move |s: &ServerStats| s.connections_parked == n;
    common::wait_stats(&handle, "all parked", parked(3)).await;
    // Each wakes with its own state, served by its own handler: /a counts
    // two messages, /b one, /last remembers.
    for round in 1..=2u64 {
        a.send(Message::text("count")).await.unwrap();
        assert_eq!(next_data(&mut a).await, Message::text(round.to_string()));
        common::wait_stats(&handle, "parked again", parked(3)).await;
    }
    b.send(Message::text("count")).await.unwrap();
    assert_eq!(next_data(&mut b).await, Message::text("1"));
    for (send, answer) in [("x", "none"), ("y", "x")] {
        l.send(Message::text(send)).await.unwrap();
        assert_eq!(next_data(&mut l).await, Message::text(answer));
        common::wait_stats(&handle, "parked again", parked(3)).await;
    }
    // A broadcast reaches every table's parked connections.
    assert_eq!(hub.broadcast("to all"), Ok(()));
    for client in [&mut a, &mut b, &mut l] {
        assert_eq!(next_data(client).await, Message::text("to all"));
    }
    common::wait_stats(&handle, "still parked", parked(3)).await;
    // Shutdown: a 1001 to each, each handler hears of its own.
    handle.shutdown();
    for client in [&mut a, &mut b, &mut l] {
        expect_going_away(client).await;
    }
    common::shut_down(&handle, task)
        .await
        .expect("serve result");
    assert_eq!(closes_a.try_recv().ok(), Some((2, CloseReason::Shutdown)));
    assert_eq!(closes_b.try_recv().ok(), Some((1, CloseReason::Shutdown)));
    assert_eq!(
        closes_last.try_recv().ok(),
        Some(("y".to_owned(), CloseReason::Shutdown))
    );
    assert_eq!(closes_a.try_recv().ok(), None, "one close each");
}

/// A handler whose routes are counted: each holds a clone of `alive`, so
/// its strong count less one is how many routes are still kept.
struct Counted {
    _alive: std::sync::Arc<()>,
    closes: mpsc::UnboundedSender<CloseReason>,
}

impl WebSocketHandler for Counted {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// A service that builds a `WebSocketRoute` per request (against the advice
/// on it) parks WebSockets of 300 routes, ten at a time: each route goes
/// when its connection does. (A worker kept every route it had parked a
/// connection of, for its life, until 65,536 made it close WebSockets
/// instead of parking them.)
#[tokio::test]
async fn routes_built_per_request_go_when_their_parked_websockets_do() {
    const ROUNDS: usize = 30;
    const AT_ONCE: usize = 10;
    let server = parking_server();
    let (addr, handle) = (server.local_addr(), server.handle());
    let alive = std::sync::Arc::new(());
    let (closed, mut closes) = mpsc::unbounded_channel();
    let per_request = {
        let alive = alive.clone();
        tower::service_fn(move |request: axum::extract::Request| {
            let mut route = WebSocketRoute::new(Counted {
                _alive: alive.clone(),
                closes: closed.clone(),
            });
            tower::Service::call(&mut route, request)
        })
    };
    let app = axum::Router::new().route_service("/ws", per_request);
    let task = tokio::spawn(server.serve(app));
    let url = format!("ws://{addr}/ws");
    for _ in 0..ROUNDS {
        let mut clients = Vec::new();
        for _ in 0..AT_ONCE {
            let (client, _) =
                tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(url.as_str()))
                    .await
                    .expect("handshake in time")
                    .expect("handshake");
            clients.push(client);
        }
        common::wait_stats(&handle, "all parked", |s| {
            s.connections_parked == AT_ONCE as i64
        })
        .await;
        // Woken by a close frame, or by the end of the stream.
        for (i, mut client) in clients.into_iter().enumerate() {
            if i % 2 == 0 {
                client.close(None).await.unwrap();
            } else {
                drop(client);
            }
        }
        for _ in 0..AT_ONCE {
            let reason = tokio::time::timeout(SAFETY, closes.recv())
                .await
                .expect("timed out waiting for on_close")
                .expect("handler gone");
            assert_eq!(reason, CloseReason::ClientClosed);
        }
    }
    common::wait_stats(&handle, "all closed", |s| s.connections_open == 0).await;
    assert_eq!(
        std::sync::Arc::strong_count(&alive) - 2,
        0,
        "routes kept after their WebSockets closed"
    );
    common::shut_down(&handle, task)
        .await
        .expect("serve result");
}

/// A client that resets a cleartext WebSocket awake between messages has
/// left: it closes as `ClientClosed` (as over TLS), not as an I/O error. A
/// reset midway through a message (a first fragment read, the rest never
/// sent) stays an I/O error.
#[tokio::test]
async fn a_reset_between_messages_is_a_client_close_and_midway_an_io_error() {
    let mut server = Ws::start(Server::builder().park_idle_after(None), |r| r).await;
    let mut s = server.raw().await;
    s.write_all(&ws_client_frame(0x81, b"count", true))
        .await
        .unwrap();
    assert_eq!(read_ws_frame(&mut s).await, (0x81, b"1".to_vec()));
    reset(s);
    assert_eq!(server.next_close().await, (1, CloseReason::ClientClosed));
    let mut s = server.raw().await;
    let before = server.handle.stats().messages.bytes_in;
    let first = ws_client_frame(0x01, b"half", true);
    s.write_all(&first).await.unwrap();
    server
        .wait_stats("the first fragment read", |st| {
            st.messages.bytes_in >= before + first.len() as u64
        })
        .await;
    reset(s);
    let reset_io = CloseReason::Io(std::io::ErrorKind::ConnectionReset);
    assert_eq!(server.next_close().await, (0, reset_io));
    // (The handler hears first; the metric follows.)
    server
        .wait_stats("one client close and one I/O error counted", |st| {
            common::closed_as(st, "client_closed") == 1 && common::closed_as(st, "io_error") == 1
        })
        .await;
    server.stop().await;
}

/// A client that resets a parked cleartext WebSocket has left: woken by the
/// reset, it closes as `ClientClosed`, not as an I/O error. Both wake paths:
/// cold (its first park, after idling) and, most likely, hot (parked again
/// at once after a message, and reset right away).
#[tokio::test]
async fn a_reset_of_a_parked_websocket_is_a_client_close() {
    let mut server = Ws::start(
        Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
        |r| r,
    )
    .await;
    for hot in [false, true] {
        let mut s = server.raw().await;
        server
            .wait_stats("parked", |st| st.connections_parked == 1)
            .await;
        if hot {
            let parks = server.handle.stats().parks;
            s.write_all(&ws_client_frame(0x81, b"count", true))
                .await
                .unwrap();
            assert_eq!(read_ws_frame(&mut s).await, (0x81, b"1".to_vec()));
            server
                .wait_stats("parked again", |st| {
                    st.connections_parked == 1 && st.parks > parks
                })
                .await;
        }
        reset(s);
        let closed = server.next_close().await;
        assert_eq!(
            closed,
            (u64::from(hot), CloseReason::ClientClosed),
            "hot: {hot}"
        );
    }
    server
        .wait_stats("two client closes counted", |st| {
            common::closed_as(st, "client_closed") == 2
        })
        .await;
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert_eq!(common::closed_as(&stats, "io_error"), 0, "{stats:?}");
    server.stop().await;
}

/// A socket under a TLS stream of the caller's own that follows the
/// records in the ciphertext it reads, so the stream can say when it holds
/// part of one (its TLS library keeps every byte it was given).
struct RecordWatch {
    tcp: TcpStream,
    /// The head of the next record, while incomplete.
    head: Vec<u8>,
    /// What is left of the record being read.
    left: usize,
}

impl RecordWatch {
    fn mid_record(&self) -> bool {
        !self.head.is_empty() || self.left > 0
    }
}

impl tokio::io::AsyncRead for RecordWatch {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        let mut bytes = &buf.filled()[before..];
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
            } else {
                self.head.push(bytes[0]);
                bytes = &bytes[1..];
                if self.head.len() == 5 {
                    self.left = usize::from(u16::from_be_bytes([self.head[3], self.head[4]]));
                    self.head.clear();
                }
            }
        }
        read
    }
}

/// Writes of `$ty` go straight to its field `$inner`.
macro_rules! write_through {
    ($ty:ty, $inner:tt) => {
        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$inner).poll_write(cx, data)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$inner).poll_shutdown(cx)
            }
        }
    };
}

write_through!(RecordWatch, tcp);
write_through!(CallerTls, 0);

/// A TLS stream of the caller's own (tokio-rustls) for
/// `Builder::serve_connection`: it never parks.
struct CallerTls(tokio_rustls::server::TlsStream<RecordWatch>);

impl megaconn::Transport for CallerTls {
    const SECURE: bool = true;

    fn holds_partial_input(&self) -> bool {
        self.0.get_ref().0.mid_record()
    }
}

impl tokio::io::AsyncRead for CallerTls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// As the parked case above, on a TLS stream of the caller's own, which
/// never parks: part of a record then a byte now and then is closed at the
/// message timeout with 1008, as a trickled message is in cleartext. (No
/// byte of it reached the WebSocket, so only the heartbeat bounded it.)
#[tokio::test]
async fn part_of_a_record_on_a_callers_tls_stream_must_be_whole_within_the_message_timeout() {
    use rustls::pki_types::pem::PemObject;
    let ca = common::tls::Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, mut closes) = mpsc::unbounded_channel();
    let (opened, _opens) = mpsc::unbounded_channel();
    let route = WebSocketRoute::new(Probe {
        closes: closed,
        opens: opened,
    })
    .ping_interval(None)
    .heartbeat_timeout(Some(Duration::from_secs(600)))
    .message_timeout(Some(Duration::from_millis(300)))
    .close_timeout(Duration::from_millis(100));
    let app = axum::Router::new().route_service("/ws", route);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            tokio::task::spawn_local(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let watched = RecordWatch {
                    tcp,
                    head: Vec::new(),
                    left: 0,
                };
                let tls = acceptor.accept(watched).await.expect("TLS handshake");
                Server::builder()
                    .serve_connection(CallerTls(tls), app)
                    .await;
            });
            let mut client = wss_client(addr, &ca).await;
            let closed = trickle_a_record_until(&mut client, closes.recv()).await;
            assert_eq!(closed, Some((0, CloseReason::MessageTimeout)));
        })
        .await;
}

/// WebSockets are never closed to make room at `max_connections`: with every
/// slot held by one (parked) and `refuse_at_max_connections`, a newcomer's
/// upgrade is answered `503` with a `Retry-After` of 1 to 3 s and closed,
/// counted under `limit_hits{limit="max_connections"}`, and the WebSockets
/// held serve on. Before, the newcomer's handshake waited in the backlog
/// with no answer (4,000 clients of an SRE review timed out waiting for a
/// `101`).
#[tokio::test]
async fn at_the_limit_held_websockets_can_have_a_newcomer_refused_with_a_503() {
    let server = Ws::start(
        Server::builder()
            .max_connections(2)
            .refuse_at_max_connections(true)
            .park_idle_after(Some(Duration::from_millis(20))),
        |r| r,
    )
    .await;
    let mut held = [server.raw().await, server.raw().await];
    server
        .wait_stats("both parked", |s| s.connections_parked == 2)
        .await;
    let mut newcomer = TcpStream::connect(server.addr).await.unwrap();
    newcomer.write_all(WS_UPGRADE).await.unwrap();
    let head = read_head(&mut newcomer).await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let secs: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .expect("a Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&secs), "Retry-After {secs}");
    hangs_up(&mut newcomer).await;
    server
        .wait_stats("one refusal at the limit", |s| {
            s.limit_hits
                .iter()
                .any(|(l, n)| *l == "max_connections" && *n == 1)
        })
        .await;
    for s in &mut held {
        s.write_all(&ws_client_frame(0x81, b"still here", true))
            .await
            .unwrap();
        assert_eq!(read_ws_frame(s).await, (0x81, b"still here".to_vec()));
    }
    assert_eq!(closed_as(&server, "evicted"), 0);
    server.stop().await;
}
