//! axum's WebSocket examples under megaconn (`megaconn::axum_ws`, examples
//! `ws_axum_*`), driven by a real client (tokio-tungstenite): echo both
//! ways, the ping / greetings / pushes / close of `websockets` with the
//! address `ConnectInfo` saw, a chat broadcast between two clients, bad
//! frames' close codes (1002, 1007, 1009) counted as protocol errors (1009
//! also as a limit hit), the close 1001 at graceful shutdown (to a handler
//! in `recv` or one that only sends), and the hint logged when axum's own
//! extractor answers 426.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use megaconn::{Server, ServerHandle};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod common;

#[path = "../examples/ws_axum_chat.rs"]
#[allow(dead_code)]
mod chat;
#[path = "../examples/ws_axum_testing.rs"]
#[allow(dead_code)]
mod testing;
#[path = "../examples/ws_axum_websockets.rs"]
#[allow(dead_code)]
mod websockets;

/// Every wait in these tests is bounded by this, so a hang fails instead.
const SAFETY: Duration = Duration::from_secs(20);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Serves `app` (with `ConnectInfo`, which the websockets example asks for) on 127.0.0.1:0; the handle stops it.
struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn serve(app: axum::Router) -> Running {
    serve_with(Server::builder(), app)
}

/// [`serve`] with `builder`'s settings.
fn serve_with(builder: megaconn::Builder, app: axum::Router) -> Running {
    let server = builder
        .listen_on("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .connect_info(true)
        .listen()
        .expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.serve(app));
    Running { addr, handle }
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let (client, response) = tokio::time::timeout(
        SAFETY,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert_eq!(response.status(), 101);
    client
}

/// The next message that is not a ping or pong, bounded by [`SAFETY`].
async fn next(client: &mut Client) -> WsMessage {
    loop {
        let msg = tokio::time::timeout(SAFETY, client.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("message");
        if !matches!(msg, WsMessage::Ping(_) | WsMessage::Pong(_)) {
            return msg;
        }
    }
}

async fn next_text(client: &mut Client) -> String {
    match next(client).await {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn testing_example_echoes_both_ways() {
    let server = serve(testing::app());
    for path in ["/integration-testable", "/unit-testable"] {
        let mut client = connect(server.addr, path).await;
        client.send(WsMessage::text("foo")).await.unwrap();
        assert_eq!(next_text(&mut client).await, "You said: foo");
        // A large message crosses many reads of the bridge.
        let big = "x".repeat(300_000);
        client.send(WsMessage::text(big.clone())).await.unwrap();
        assert_eq!(next_text(&mut client).await, format!("You said: {big}"));
        client.close(None).await.unwrap();
    }
}

/// The example's own unit test: the handler over channels, no socket.
#[tokio::test]
async fn testing_example_unit_tests_over_channels() {
    use megaconn::axum_ws::Message;
    let (socket_write, mut test_rx) = futures_channel::mpsc::channel(16);
    let (mut test_tx, socket_read) = futures_channel::mpsc::channel(16);
    tokio::spawn(testing::unit_testable_handle_socket(
        socket_write,
        socket_read,
    ));
    test_tx.send(Ok(Message::Text("foo".into()))).await.unwrap();
    match test_rx.next().await.unwrap() {
        Message::Text(msg) => assert_eq!(msg.as_str(), "You said: foo"),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn websockets_example_pings_greets_pushes_and_closes() {
    let server = serve(websockets::app());
    let mut client = connect(server.addr, "/ws").await;
    let me = match client.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("plain ws://"),
    };
    // The server's ping comes first; reading answers it with a pong, which
    // is the one message the server waits for before greeting.
    let first = tokio::time::timeout(SAFETY, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, WsMessage::Ping(vec![1, 2, 3].into()));
    for i in 1..=websockets::GREETINGS {
        // ConnectInfo saw this client's own address.
        assert_eq!(next_text(&mut client).await, format!("Hi {me}, {i} times!"));
    }
    for i in 0..websockets::PUSHES {
        assert_eq!(
            next_text(&mut client).await,
            format!("Server message {i} ...")
        );
    }
    match next(&mut client).await {
        WsMessage::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "Goodbye");
        }
        other => panic!("expected the close, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_example_broadcasts_between_two_clients() {
    let server = serve(chat::app());
    let mut alice = connect(server.addr, "/websocket").await;
    alice.send(WsMessage::text("alice")).await.unwrap();
    assert_eq!(next_text(&mut alice).await, "alice joined.");

    let mut bob = connect(server.addr, "/websocket").await;
    bob.send(WsMessage::text("bob")).await.unwrap();
    assert_eq!(next_text(&mut bob).await, "bob joined.");
    assert_eq!(next_text(&mut alice).await, "bob joined.");

    alice.send(WsMessage::text("hi bob")).await.unwrap();
    assert_eq!(next_text(&mut alice).await, "alice: hi bob");
    assert_eq!(next_text(&mut bob).await, "alice: hi bob");
    bob.send(WsMessage::text("hi alice")).await.unwrap();
    assert_eq!(next_text(&mut alice).await, "bob: hi alice");
    assert_eq!(next_text(&mut bob).await, "bob: hi alice");

    // A taken name is refused.
    let mut impostor = connect(server.addr, "/websocket").await;
    impostor.send(WsMessage::text("alice")).await.unwrap();
    assert_eq!(next_text(&mut impostor).await, "Username already taken.");

    bob.close(None).await.unwrap();
    assert_eq!(next_text(&mut alice).await, "bob left.");
}

/// Past `max_message_size` or `max_frame_size` the socket closes with
/// 1009, counted as a protocol error and, as the native route's 1009, in
/// `megaconn_limit_hits_total{limit="ws_message_too_big"}` (a frame:
/// `ws_frame_too_big`, which it was counted as a message in), with a
/// (rate-limited) line naming the setting. The limit hit was not counted
/// nor logged. Both settings hit on one worker within the interval log a
/// line each: they shared one log kind, and the second setting was only
/// counted as suppressed, never named. The message is over its limit in
/// fragments each within the frame limit (a single frame over the message
/// limit is refused as over it from its header: see
/// `a_message_one_byte_over_a_mib_is_refused_by_default_and_taken_when_raised`).
#[tokio::test]
async fn a_message_past_the_limit_closes_with_1009() {
    use megaconn::axum_ws::WebSocketUpgrade;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    common::logs::capture();
    let app = echo_route("/small", |ws: WebSocketUpgrade| {
        ws.max_message_size(2048).max_frame_size(1024)
    });
    // A message of `sizes` fragments.
    let fragments = |sizes: &[usize]| -> Vec<Frame> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let opcode = if i == 0 { Data::Text } else { Data::Continue };
                Frame::message(vec![b'a'; n], OpCode::Data(opcode), i + 1 == sizes.len())
            })
            .collect()
    };
    // One server, so one worker (with its own log limiter) for both.
    let server = serve(app);
    for (hits, (setting, what, past, counted)) in [
        // Three frames within the frame limit, 2049 bytes in all.
        ("max_message_size", "message", &[1024, 1024, 1][..], [1, 0]),
        ("max_frame_size", "frame", &[1025][..], [1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = connect(server.addr, "/small").await;
        // At the limits: a frame of 1024, a message of 2048.
        for frame in fragments(&[1024, 1024]) {
            client.send(WsMessage::Frame(frame)).await.unwrap();
        }
        assert_eq!(next_text(&mut client).await.len(), 2048);
        for frame in fragments(past) {
            client.send(WsMessage::Frame(frame)).await.unwrap();
        }
        match next(&mut client).await {
            WsMessage::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("{setting}: expected close 1009, got {other:?}"),
        }
        let hits = hits as u64 + 1;
        common::wait_stats(&server.handle, "the error counted", |s| {
            s.protocol_errors == hits
        })
        .await;
        // Counted and logged before the close frame went out; the first
        // of its setting, however soon after the other's.
        common::assert_ws_limit_hits(&server.handle, setting, counted);
        let logged = common::logs::logged();
        let line = format!("WebSocket {what} over WebSocketUpgrade::{setting}; closing with 1009");
        assert!(
            logged.iter().any(|l| l == &line),
            "no line naming {setting} among {logged:?}"
        );
    }
}

/// An echo on `path` whose upgrade `limit` sets (or leaves) the limits.
fn echo_route(
    path: &str,
    limit: fn(megaconn::axum_ws::WebSocketUpgrade) -> megaconn::axum_ws::WebSocketUpgrade,
) -> axum::Router {
    use megaconn::axum_ws::WebSocketUpgrade;
    axum::Router::new().route(
        path,
        axum::routing::get(move |ws: WebSocketUpgrade| async move {
            limit(ws).on_upgrade(|mut socket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
            })
        }),
    )
}

/// By default a message may be 1 MiB, as on the native route
/// (`DEFAULT_WS_MAX_MESSAGE_BYTES`): a frame of one byte more closes the
/// socket with 1009 from its header (no payload sent: tungstenite checks
/// the message limit only once a frame is whole, and would wait for it),
/// counted as a message over its limit, and so it does where only
/// `max_frame_size` was raised; an app that raised `max_message_size`
/// takes the message. The default was axum's 64 MiB: the same message was
/// taken, and a client that sent 16 MiB and read nothing held 16 MiB of
/// the server a connection (`bench/ATTACK-MEMORY.md`).
#[tokio::test]
async fn a_message_one_byte_over_a_mib_is_refused_by_default_and_taken_when_raised() {
    use megaconn::axum_ws::{WebSocketUpgrade, DEFAULT_MAX_MESSAGE_SIZE};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert_eq!(
        DEFAULT_MAX_MESSAGE_SIZE,
        megaconn::DEFAULT_WS_MAX_MESSAGE_BYTES
    );
    assert_eq!(DEFAULT_MAX_MESSAGE_SIZE, 1 << 20);
    let app = echo_route("/default", |ws| ws)
        .merge(echo_route("/frames", |ws: WebSocketUpgrade| {
            ws.max_frame_size(32 << 20)
        }))
        .merge(echo_route("/raised", |ws: WebSocketUpgrade| {
            ws.max_message_size(2 << 20)
        }));
    let server = serve(app);
    for (refused, path) in [(1, "/default"), (2, "/frames")] {
        // At the limit: taken.
        let mut client = connect(server.addr, path).await;
        let at = WsMessage::binary(vec![7u8; DEFAULT_MAX_MESSAGE_SIZE]);
        client.send(at.clone()).await.unwrap();
        assert_eq!(next(&mut client).await, at, "{path}");
        // One byte over: the header of a masked binary frame that long
        // (64-bit length), its mask, and nothing more.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let mut c = upgraded(socket, server.addr, path).await;
        let mut header = vec![0x82u8, 0x80 | 127];
        header.extend((DEFAULT_MAX_MESSAGE_SIZE as u64 + 1).to_be_bytes());
        header.extend([1, 2, 3, 4]);
        c.write_all(&header).await.unwrap();
        let mut close = [0u8; 4];
        tokio::time::timeout(SAFETY, c.read_exact(&mut close))
            .await
            .unwrap_or_else(|_| panic!("{path}: no close in time"))
            .expect("a close frame");
        assert_eq!(close[..2], [0x88, 2], "{path}: {close:?}");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009, "{path}");
        common::wait_stats(&server.handle, "the error counted", |s| {
            s.protocol_errors == refused
        })
        .await;
        common::assert_ws_limit_hits(&server.handle, path, [refused, 0]);
    }
    let mut client = connect(server.addr, "/raised").await;
    let over = WsMessage::binary(vec![7u8; DEFAULT_MAX_MESSAGE_SIZE + 1]);
    client.send(over.clone()).await.unwrap();
    assert_eq!(next(&mut client).await, over);
    client.close(None).await.unwrap();
}

/// An `axum_ws` socket gets `Builder::message_send_buffer_size` (256 KiB
/// by default, which the kernel doubles) as its `SO_SNDBUF` at its
/// upgrade, as a native WebSocket's does
/// (`ws::a_websocket_gets_the_message_send_buffer_at_its_upgrade`), and
/// `None` leaves it as accepted. It kept the kernel's autotuning: unread
/// chat pushes held 976 KiB of kernel per subscriber, up to `tcp_wmem`'s
/// 4 MiB with more (`bench/ATTACK-MEMORY.md`).
#[tokio::test]
async fn a_socket_gets_the_message_send_buffer_at_its_upgrade() {
    let bounded = common::kernel_send_buffer(megaconn::DEFAULT_MESSAGE_SEND_BUFFER);
    for (builder, set) in [
        (Server::builder(), true),
        (Server::builder().message_send_buffer_size(None), false),
    ] {
        let server = serve_with(builder, echo_route("/ws", |ws| ws));
        let mut client = connect(server.addr, "/ws").await;
        // Echoed: the handler runs, past the upgrade.
        client.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(next_text(&mut client).await, "hi");
        let MaybeTlsStream::Plain(tcp) = client.get_ref() else {
            unreachable!("plain ws://")
        };
        assert_eq!(common::server_send_buffer(tcp) == bounded, set, "{set}");
    }
}

#[tokio::test]
async fn subprotocol_is_selected_from_the_servers_list() {
    use megaconn::axum_ws::WebSocketUpgrade;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = axum::Router::new().route(
        "/proto",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.protocols(["graphql-ws", "wamp"])
                .on_upgrade(|mut socket| async move {
                    let chosen = socket.protocol().map(|p| p.to_str().unwrap().to_owned());
                    let _ = socket.send(chosen.unwrap_or_default().into()).await;
                })
        }),
    );
    let server = serve(app);
    let mut request = format!("ws://{}/proto", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "soap, wamp".parse().unwrap());
    let (mut client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "wamp");
    assert_eq!(next_text(&mut client).await, "wamp");
    // Names match exactly, as in axum: another spelling selects none (by
    // hand: tungstenite's client refuses an answer without one).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /proto HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Protocol: WAMP\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(SAFETY, s.read_u8())
            .await
            .expect("a head in time");
        head.push(byte.expect("a response head"));
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
}

#[tokio::test]
async fn axums_own_extractor_gets_426_and_a_hint() {
    common::logs::capture();
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(|ws: axum::extract::ws::WebSocketUpgrade| async move {
            ws.on_upgrade(|_socket| async {})
        }),
    );
    let server = serve(app);
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .expect_err("axum's extractor cannot upgrade under megaconn");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 426)
        }
        other => panic!("expected a 426 answer, got {other:?}"),
    }
    assert_hint_logged();
}

/// The same over HTTP/2: an extended CONNECT carries `:protocol` as hyper
/// hands it over too, so axum's extractor gets past that check to its
/// upgrade handle and answers `426` (it answered `400`, with no hint).
#[tokio::test]
async fn axums_own_extractor_gets_426_and_a_hint_over_http2() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    common::logs::capture();
    let own =
        |ws: axum::extract::ws::WebSocketUpgrade| async move { ws.on_upgrade(|_socket| async {}) };
    let app = axum::Router::new()
        .route("/ws", axum::routing::get(own).connect(own))
        .route("/plain", axum::routing::get(|| async { "plain" }));
    let server = serve(app);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = |req: http::request::Builder| {
        let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
        let response = client.send_request(req);
        async move {
            let response = tokio::time::timeout(SAFETY, response)
                .await
                .expect("response in time")
                .expect("response");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body");
            (status, String::from_utf8(body.to_bytes().to_vec()).unwrap())
        }
    };
    // A first answer comes after the server's SETTINGS: extended CONNECT
    // is on by then (hyper's client refuses to send one before).
    let plain = send(http::Request::get("http://localhost/plain")).await;
    assert_eq!(plain.0, 200);
    let (status, body) = send(
        http::Request::connect("http://localhost/ws")
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13"),
    )
    .await;
    assert_eq!(status, 426, "{body}");
    assert_hint_logged();
}

/// A handler that asks hyper for the connection (`hyper::upgrade::on`,
/// which fails at once under megaconn) and answers `101` anyway: the
/// connection closes, and a warning says to take megaconn's `OnUpgrade`
/// (it closed without a word). A peer repeating the request does not
/// repeat the line: it is rate-limited as the other lines a peer can cause.
#[tokio::test]
async fn hyper_upgrade_on_under_megaconn_is_logged() {
    use tokio::io::AsyncWriteExt;
    common::logs::capture();
    async fn upgrade(mut req: axum::extract::Request) -> axum::response::Response {
        let on_upgrade = hyper::upgrade::on(&mut req);
        // Fails at once: no hyper upgrade handle under megaconn.
        tokio::spawn(on_upgrade);
        axum::response::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(axum::body::Body::empty())
            .unwrap()
    }
    let app = axum::Router::new().route("/hyper-upgrade", axum::routing::get(upgrade));
    let server = serve(app);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(
            b"GET /hyper-upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        let answer = common::read_to_close(&mut s).await;
        assert!(answer.starts_with(b"HTTP/1.1 101 "), "{answer:?}");
    }
    // The line is logged before the connection closes; at most one per 5 s
    // (the rate limit's interval, in real time: a slow machine may log two).
    let most = 1 + (started.elapsed().as_secs() / 5) as usize;
    let warnings = common::logs::logged();
    let lines = warnings
        .iter()
        .filter(|w| w.contains("hyper::upgrade::on") && w.contains("megaconn::OnUpgrade"))
        .count();
    assert!(
        (1..=most).contains(&lines),
        "{lines} warnings (at most {most}) among {warnings:?}"
    );
}

#[tokio::test]
async fn fragments_with_a_ping_between_reassemble() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = serve(testing::app());
    let mut client = connect(server.addr, "/integration-testable").await;
    let first = Frame::message(&b"hel"[..], OpCode::Data(Data::Text), false);
    let last = Frame::message(&b"lo"[..], OpCode::Data(Data::Continue), true);
    client.send(WsMessage::Frame(first)).await.unwrap();
    client.send(WsMessage::Ping(vec![7].into())).await.unwrap();
    client.send(WsMessage::Frame(last)).await.unwrap();
    // The pong for the ping comes back first, then the echo.
    let pong = tokio::time::timeout(SAFETY, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, WsMessage::Pong(vec![7].into()));
    assert_eq!(next_text(&mut client).await, "You said: hello");
    // Twice, so the second runs on the context swapped in after the first.
    client.send(WsMessage::text("again")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "You said: again");
}

#[tokio::test]
async fn bad_frames_close_with_their_code_and_count_as_protocol_errors() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = serve(testing::app());
    // A reserved bit with no extension (1002), text that is not UTF-8
    // (1007); a message past the limit (1009) is counted in
    // a_message_past_the_limit_closes_with_1009.
    let mut rsv1 = Frame::message(&b"hi"[..], OpCode::Data(Data::Text), true);
    rsv1.header_mut().rsv1 = true;
    let not_utf8 = Frame::message(&[b'a', 0xff][..], OpCode::Data(Data::Text), true);
    for (frame, code, errors) in [
        (rsv1, CloseCode::Protocol, 1),
        (not_utf8, CloseCode::Invalid, 2),
    ] {
        let mut client = connect(server.addr, "/integration-testable").await;
        client.send(WsMessage::Frame(frame)).await.unwrap();
        match next(&mut client).await {
            WsMessage::Close(Some(close)) => assert_eq!(close.code, code),
            other => panic!("expected close {code}, got {other:?}"),
        }
        common::wait_stats(&server.handle, "the error counted", |s| {
            s.protocol_errors == errors
        })
        .await;
    }
}

/// A client that hangs up without a close frame (a closed tab, a killed
/// process) closed the connection, not a protocol error: it used to be
/// counted in `protocol_errors` and closed as 1002 (tungstenite reports it
/// as `ResetWithoutClosingHandshake`). The native route counts it the same.
#[tokio::test]
async fn a_client_that_hangs_up_without_a_close_frame_is_no_protocol_error() {
    let server = serve(testing::app());
    let mut client = connect(server.addr, "/integration-testable").await;
    client.send(WsMessage::text("hi")).await.unwrap();
    assert!(!next_text(&mut client).await.is_empty());
    drop(client);
    common::wait_stats(&server.handle, "the connection closed", |s| {
        s.connections_open == 0
    })
    .await;
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 0);
    let closed = |label: &str| common::closed_as(&stats, label);
    assert_eq!(
        closed("client_closed"),
        1,
        "{:?}",
        stats.request_metrics.closed_by_reason
    );
}

/// A client that floods pings and reads none of the pongs stalls: the
/// socket stops reading while its queue is over the write buffer size, as
/// the native route awaits its write before it reads on. It queued a pong
/// per ping without bound (39 MB of pings all went in, the server's memory
/// growing by ~127 bytes per 131 sent).
#[tokio::test]
async fn a_peer_that_floods_pings_and_reads_no_pongs_stalls() {
    use megaconn::axum_ws::WebSocketUpgrade;
    use tokio::io::AsyncWriteExt;
    let app = axum::Router::new().route(
        "/axum",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(
                |mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} },
            )
        }),
    );
    let server = serve(app);
    // Small socket buffers on our side: what the kernels hold before the
    // stall is a few MB, well under what we try to send.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let mut c = upgraded(socket, server.addr, "/axum").await;
    // Masked pings with 125-byte payloads (the most a control frame may
    // carry), 1,000 to a write.
    let mut ping = vec![0x89u8, 0x80 | 125, 0, 0, 0, 0];
    ping.extend([b'p'; 125]);
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    const CHUNKS: usize = 300;
    // The server reads a chunk in milliseconds while it reads at all; two
    // seconds with no chunk taken is a stall.
    const STALLED: Duration = Duration::from_secs(2);
    let mut sent = 0;
    for _ in 0..CHUNKS {
        match tokio::time::timeout(STALLED, c.write_all(&chunk)).await {
            Ok(written) => written.expect("the server reads"),
            Err(_stalled) => break,
        }
        sent += 1;
    }
    // What the kernels' buffers took (a few MB on loopback) plus the
    // server's queue: far from all of it.
    assert!(
        sent < CHUNKS / 2,
        "the server read {sent} of {CHUNKS} chunks ({} MB) of pings while we read no pong",
        (sent * chunk.len()) >> 20
    );
    // The stalled socket still ends when the peer goes.
    drop(c);
    common::wait_stats(&server.handle, "the socket closed", |s| {
        s.connections_open == 0
    })
    .await;
}

/// `socket` connected to `addr` and upgraded to a WebSocket on `path` by
/// hand (a raw client, which reads only when told).
async fn upgraded(socket: tokio::net::TcpSocket, addr: SocketAddr, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    c.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tokio::time::timeout(SAFETY, c.read_exact(&mut byte))
            .await
            .expect("the 101 in time")
            .expect("the 101");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c
}

/// An app whose `/feed` handler sends `message` until a send fails
/// (`times` of them at most), then reports how (the `io::ErrorKind` inside
/// the `axum::Error`, `None` for another error) and drops the socket.
fn feed(
    message: megaconn::axum_ws::Message,
    times: usize,
) -> (
    axum::Router,
    tokio::sync::mpsc::UnboundedReceiver<Option<std::io::ErrorKind>>,
) {
    use megaconn::axum_ws::WebSocketUpgrade;
    let (failed, failures) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/feed",
        axum::routing::get(move |ws: WebSocketUpgrade| async move {
            ws.on_upgrade(move |mut socket| async move {
                for _ in 0..times {
                    if let Err(e) = socket.send(message.clone()).await {
                        let kind = e.into_inner().downcast::<std::io::Error>().ok();
                        let _ = failed.send(kind.map(|e| e.kind()));
                        return;
                    }
                }
            })
        }),
    );
    (app, failures)
}

/// A handler that sends to a peer that never reads: with no
/// `write_timeout` the send fails at the write stall bound, as the native
/// route's write does (`ws::without_a_heartbeat_a_peer_that_stops_reading_
/// is_closed_at_the_write_stall_timeout`), with a `TimedOut` error, counted
/// as a timeout and logged; the socket closes as `write_timeout`. It
/// waited for good, as axum's does, holding the handler and what it queued.
#[tokio::test]
async fn without_a_heartbeat_a_send_to_a_peer_that_stops_reading_fails_at_the_write_stall_timeout()
{
    common::logs::capture();
    let message = megaconn::axum_ws::Message::Binary(vec![7u8; 16 * 1024].into());
    let (app, mut failures) = feed(message, usize::MAX);
    let builder = Server::builder().write_stall_timeout(Some(Duration::from_millis(200)));
    let server = serve_with(builder, app);
    // A small receive buffer, so that the sends back up soon; never read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let _unread = upgraded(socket, server.addr, "/feed").await;
    let failure = tokio::time::timeout(SAFETY, failures.recv())
        .await
        .expect("the send fails in time");
    assert_eq!(failure, Some(Some(std::io::ErrorKind::TimedOut)));
    common::wait_stats(&server.handle, "the socket closed", |s| {
        s.connections_open == 0
    })
    .await;
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "write_timeout"), 1, "{stats:?}");
    assert_eq!(stats.timeouts, 1);
    let logged = common::logs::logged();
    let line = "an axum_ws WebSocket peer did not take our bytes in time; closing it (Builder::write_stall_timeout)";
    assert!(logged.iter().any(|l| l == line), "{logged:?}");
}

/// A peer that reads slowly but steadily is not cut off by the write stall
/// bound, however long the send: the bytes it takes restart it, as on the
/// native route (`ws::a_peer_that_reads_slowly_but_steadily_is_not_cut_off_
/// by_the_write_stall_bound`), whose reasons hold here: tokio writes again
/// only once a third of the socket's send buffer (autotuned to megabytes
/// on loopback: `message_send_buffer_size(None)`; the default 256 KiB,
/// 512 KiB in the kernel, drains a third in less than a bound) has
/// drained, which takes this reader (100 KiB/s) longer than a bound; the kernel's count of the bytes it acknowledged shows its
/// progress. The client reads one message's echo for three bounds.
#[tokio::test]
async fn a_peer_that_reads_slowly_but_steadily_is_not_cut_off_by_the_write_stall_bound() {
    /// Long against the reader's 10 ms between reads.
    const BOUND: Duration = Duration::from_secs(2);
    /// More than the test reads by far: the send lasts the whole test.
    const PAYLOAD: usize = 8 << 20;
    let message = megaconn::axum_ws::Message::Binary(vec![7u8; PAYLOAD].into());
    let (app, mut failures) = feed(message, 1);
    let builder = Server::builder()
        .write_stall_timeout(Some(BOUND))
        .message_send_buffer_size(None);
    let server = serve_with(builder, app);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let mut c = upgraded(socket, server.addr, "/feed").await;
    let read = common::read_steadily(&mut c, 3 * BOUND).await;
    assert!(read.is_ok(), "the socket closed after {read:?} bytes");
    assert_eq!(failures.try_recv().ok(), None, "the send still under way");
    assert_eq!(server.handle.stats().timeouts, 0);
}

/// The server's `serve`, which ends with its summary once it stops.
type Stopped = tokio::task::JoinHandle<Result<megaconn::ShutdownSummary, megaconn::Error>>;

/// Serves `app` on a one-worker server with `shutdown_timeout`: its
/// address, its handle and its `serve`.
fn serve_to_stop(
    app: axum::Router,
    shutdown_timeout: Duration,
) -> (SocketAddr, ServerHandle, Stopped) {
    let server = Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .shutdown_timeout(shutdown_timeout)
        .listen()
        .expect("server binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    (addr, handle, tokio::spawn(server.serve(app)))
}

/// The server stops within [`SAFETY`] with nothing forced: `why` says
/// what closed the socket by itself.
async fn stops_with_nothing_forced(stopped: Stopped, why: &str) {
    let summary = tokio::time::timeout(SAFETY, stopped)
        .await
        .unwrap_or_else(|_| panic!("the server stops in time ({why})"))
        .unwrap()
        .expect("a clean stop");
    assert_eq!(summary.forced, 0, "{why}");
}

/// A one-worker server with `shutdown_timeout`, a client that got an echo
/// on `path`, and the server's graceful shutdown begun: the client, and
/// the server's `serve` (its summary once it stops).
async fn echo_then_shut_down(path: &str, shutdown_timeout: Duration) -> (Client, Stopped) {
    let (addr, handle, stopped) = serve_to_stop(testing::app(), shutdown_timeout);
    let mut client = connect(addr, path).await;
    client.send(WsMessage::text("foo")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "You said: foo");
    handle.shutdown();
    (client, stopped)
}

/// Graceful shutdown with a socket open over HTTP/1.1: the socket hears it
/// and closes with 1001 (going away), as megaconn's native WebSocket does;
/// the client's answer ends the handler's `recv` loop, so the server stops
/// without forcing anything. (The socket left the connection's task at the
/// upgrade; the drain used to miss it and the worker's runtime dropped it,
/// a reset with no close frame.)
#[tokio::test]
async fn shutdown_closes_an_open_socket_with_1001() {
    for path in ["/integration-testable", "/unit-testable"] {
        let (mut client, stopped) = echo_then_shut_down(path, Duration::from_secs(3)).await;
        match next(&mut client).await {
            WsMessage::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{path}"),
            other => panic!("{path}: expected a close 1001, got {other:?}"),
        }
        // Reading on sends the client's answer; then the server hangs up.
        let end = tokio::time::timeout(SAFETY, client.next())
            .await
            .expect("the server hangs up in time");
        assert!(end.as_ref().is_none_or(Result::is_err), "{path}: {end:?}");
        stops_with_nothing_forced(stopped, &format!("{path}: the socket closed by itself")).await;
    }
}

/// A peer that never answers the close 1001 (half dead, or ignoring it)
/// holds the socket only for the close timeout, as on the native route,
/// not for the whole `shutdown_timeout`: the server hangs up, and the stop
/// counts nothing forced.
#[tokio::test]
async fn shutdown_gives_up_on_a_peer_that_never_answers_the_close() {
    use tokio::io::AsyncReadExt;
    // Far past the close timeout (5 s) and past SAFETY: a socket held to
    // the deadline fails the waits below.
    let (mut client, stopped) =
        echo_then_shut_down("/integration-testable", Duration::from_secs(120)).await;
    // From here the client reads raw bytes and never writes: no close
    // frame goes back.
    let MaybeTlsStream::Plain(tcp) = client.get_mut() else {
        panic!("a plain TCP client")
    };
    let close_1001 = [0x88, 0x02, 0x03, 0xe9];
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    let hung_up = tokio::time::timeout(SAFETY, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        seen.windows(4).any(|w| w == close_1001),
        "the server sent its close 1001 first: {seen:x?}"
    );
    hung_up.expect("the server hangs up after the close timeout, not at the shutdown deadline");
    stops_with_nothing_forced(stopped, "the socket left the drain by itself").await;
}

/// A handler that only sends (a ticker, a feed) and never calls `recv`
/// hears the shutdown at its next send: the socket closes with 1001 after
/// what it queued and the send fails, so its loop ends and the server
/// stops without forcing anything; through `send` and through a `Sink`'s
/// `feed` + `flush`. It used to get no close frame: the drain waited for
/// it until `shutdown_timeout`, and the handler kept sending.
#[tokio::test]
async fn shutdown_closes_a_send_only_socket_with_1001() {
    use megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade};
    /// One tick per 20 ms: the handler's own pace.
    async fn ticks(mut socket: WebSocket, through_sink: bool) {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            every.tick().await;
            let sent = if through_sink {
                socket.feed(Message::text("tick")).await.is_ok() && socket.flush().await.is_ok()
            } else {
                socket.send(Message::text("tick")).await.is_ok()
            };
            if !sent {
                break;
            }
        }
    }
    for path in ["/send", "/sink"] {
        let app = axum::Router::new().route(
            path,
            axum::routing::get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |socket| ticks(socket, path == "/sink"))
            }),
        );
        // Far past SAFETY: a socket held to the deadline fails the waits.
        let (addr, handle, stopped) = serve_to_stop(app, Duration::from_secs(120));
        let mut client = connect(addr, path).await;
        assert_eq!(next_text(&mut client).await, "tick", "{path}");
        handle.shutdown();
        // Ticks sent before the shutdown, then the close.
        let close = tokio::time::timeout(SAFETY, async {
            loop {
                match next(&mut client).await {
                    WsMessage::Text(_) => continue,
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: no close while the server shut down"));
        match close {
            WsMessage::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{path}"),
            other => panic!("{path}: expected a close 1001, got {other:?}"),
        }
        stops_with_nothing_forced(stopped, &format!("{path}: the handler's loop ended")).await;
    }
}

/// The hint naming `megaconn::axum_ws` was logged. It is written before the
/// response goes out, so once the response is in, it is there.
fn assert_hint_logged() {
    let warnings = common::logs::logged();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("import megaconn::axum_ws::")),
        "no hint among {warnings:?}"
    );
}
