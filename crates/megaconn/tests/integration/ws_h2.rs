//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) with the
//! axum-compatible extractor (`megaconn::axum_ws`), driven by hyper's
//! HTTP/2 client on real sockets: cleartext h2c with prior knowledge and
//! TLS with ALPN `h2`. The client speaks WebSocket over the stream hyper
//! upgrades a 200 to (its own stream-as-bytes, independent of the server's)
//! with tokio-tungstenite (role Client): echo of text and binary,
//! ping/pong, the close handshake ending the stream, two sockets on one
//! connection, subprotocols, a socket outliving the connection's idle
//! timeout, a bad frame's close code counted as a protocol error, the
//! statuses of bad extended CONNECTs (and the native route's 501), and the
//! setting, on and off (seen by the `h2` crate's client).

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use megaconn::{Builder, Server, ServerHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::common;

use common::tls::{connect as tls_connect, Ca};
use common::{wait_stats, SAFETY};

// The one line an axum app changes from `axum::extract::ws`.
use megaconn::axum_ws::{
    Message as AppMessage, WebSocket as AppSocket, WebSocketUpgrade as AppUpgrade,
};

/// The test app: `/ws` echoes text and binary (and says which subprotocol
/// it chose first, when one was), `/plain` is an ordinary GET. As under
/// `axum::serve`, a route must take `CONNECT` too (`any`, or `.connect`)
/// for WebSockets over HTTP/2 to reach it.
fn app() -> axum::Router {
    async fn ws(upgrade: AppUpgrade) -> axum::response::Response {
        upgrade
            .protocols(["chat", "superchat"])
            .on_upgrade(|mut socket: AppSocket| async move {
                if let Some(p) = socket.protocol() {
                    let hello = format!("protocol {}", p.to_str().unwrap());
                    if socket.send(AppMessage::text(hello)).await.is_err() {
                        return;
                    }
                }
                while let Some(Ok(msg)) = socket.recv().await {
                    if let AppMessage::Text(_) | AppMessage::Binary(_) = msg {
                        if socket.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            })
    }
    axum::Router::new()
        .route("/ws", get(ws).connect(ws))
        .route("/plain", get(|| async { "plain" }))
        .route_service("/native", megaconn::WebSocketRoute::new(NativeEcho))
}

/// A native WebSocket route (megaconn's parkable engine), which serves
/// HTTP/1.1 upgrades only.
struct NativeEcho;

impl megaconn::WebSocketHandler for NativeEcho {
    type State = ();

    async fn on_message(
        &self,
        _: &mut (),
        message: megaconn::WsMessage,
        _: &megaconn::WsSession,
    ) -> Option<megaconn::WsMessage> {
        Some(message)
    }
}

/// Serves [`app`] on 127.0.0.1:0; the handle stops it on drop.
struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<Result<megaconn::ShutdownSummary, megaconn::Error>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn serve(builder: Builder) -> Running {
    let server = builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(server.serve(app()));
    Running { addr, handle, task }
}

/// The client's end of an upgraded stream: hyper's, as tokio I/O.
type Stream = TokioIo<hyper::upgrade::Upgraded>;

/// A client of the server's connections (requests have no body).
type Client = SendRequest<Empty<Bytes>>;

/// An HTTP/2 client over `io`, after one plain GET: its response comes
/// after the server's SETTINGS, so the client knows by then that extended
/// CONNECT is on (h2 refuses to send one before).
async fn h2_client<T>(io: T) -> Client
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (status, body) = request(&client, Method::GET, "/plain", None, &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain"));
    client
}

async fn h2c(addr: SocketAddr) -> Client {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2_client(tcp).await
}

/// Whether the server's SETTINGS turn extended CONNECT on (RFC 8441 §3),
/// as the `h2` crate's client sees them once a first response is in.
async fn connect_protocol_enabled(addr: SocketAddr) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("client ready");
    let req = Request::get("http://localhost/plain").body(()).unwrap();
    let (response, _) = client.send_request(req, true).expect("request sent");
    let response = tokio::time::timeout(SAFETY, response)
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    client.is_extended_connect_protocol_enabled()
}

/// Sends a request (`protocol`: the `:protocol` of an extended CONNECT)
/// and reads its whole answer.
async fn request(
    client: &Client,
    method: Method,
    path: &str,
    protocol: Option<&'static str>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let response = open(client, method, path, protocol, headers).await;
    let status = response.status();
    let body = tokio::time::timeout(SAFETY, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Opens a stream and waits for the response head.
async fn open(
    client: &Client,
    method: Method,
    path: &str,
    protocol: Option<&'static str>,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    tokio::time::timeout(SAFETY, async {
        let mut client = client.clone();
        client.ready().await.expect("client ready");
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"));
        if let Some(protocol) = protocol {
            req = req.extension(hyper::ext::Protocol::from_static(protocol));
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        client
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .expect("response")
    })
    .await
    .expect("response in time")
}

/// Opens an extended CONNECT for a WebSocket on `path` (RFC 8441 §5:
/// `:protocol websocket`, version 13, no key), checks its 200 and returns
/// its headers and the stream hyper upgrades it to.
async fn connect(
    client: &Client,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::HeaderMap, Stream) {
    let mut all = vec![("sec-websocket-version", "13")];
    all.extend_from_slice(headers);
    let mut response = open(client, Method::CONNECT, path, Some("websocket"), &all).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "an extended CONNECT is answered 200"
    );
    let io = tokio::time::timeout(SAFETY, hyper::upgrade::on(&mut response))
        .await
        .expect("upgrade in time")
        .expect("the 200 upgrades the stream");
    (response.headers().clone(), TokioIo::new(io))
}

/// Opens a WebSocket on `/ws` over the connection.
async fn websocket(
    client: &Client,
    headers: &[(&str, &str)],
) -> (http::HeaderMap, WebSocketStream<Stream>) {
    let (headers, io) = connect(client, "/ws", headers).await;
    assert!(headers.get("sec-websocket-accept").is_none());
    assert!(headers.get("content-length").is_none());
    let ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    (headers, ws)
}

/// The next message that is not a ping, bounded by [`SAFETY`].
async fn next(ws: &mut WebSocketStream<Stream>) -> WsMessage {
    loop {
        let msg = tokio::time::timeout(SAFETY, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("message");
        if !matches!(msg, WsMessage::Ping(_)) {
            return msg;
        }
    }
}

/// Text and binary echo (one message larger than the stream's window, so
/// flow control must be given back as the server reads), a ping answered
/// with its pong, then the close handshake: the server's close frame, then
/// the end of its half of the stream.
async fn echo_ping_close(client: &Client) {
    let (_, mut ws) = websocket(client, &[]).await;
    ws.send(WsMessage::text("hello over h2")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text("hello over h2"));
    let big: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
    ws.send(WsMessage::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::binary(big));
    ws.send(WsMessage::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        WsMessage::Pong(Bytes::from_static(b"are you there"))
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match next(&mut ws).await {
        WsMessage::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    let end = tokio::time::timeout(SAFETY, ws.next())
        .await
        .expect("the stream ends in time");
    assert!(end.is_none(), "nothing after the close: {end:?}");
}

#[tokio::test]
async fn a_websocket_over_h2c_echoes_pings_and_closes() {
    let server = serve(Server::builder());
    assert!(connect_protocol_enabled(server.addr).await);
    let client = h2c(server.addr).await;
    echo_ping_close(&client).await;
    // The connection outlives the socket: it still serves requests.
    let (status, body) = request(&client, Method::GET, "/plain", None, &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain"));
}

#[tokio::test]
async fn a_websocket_over_tls_with_alpn_h2_echoes_pings_and_closes() {
    let ca = Ca::new();
    let tls = ca.server(&["localhost"]);
    let server = serve(Server::builder().tls(tls));
    let stream = tls_connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let client = h2_client(stream).await;
    echo_ping_close(&client).await;
}

#[tokio::test]
async fn two_websockets_share_one_connection() {
    let server = serve(Server::builder());
    let client = h2c(server.addr).await;
    let (_, mut a) = websocket(&client, &[]).await;
    let (_, mut b) = websocket(&client, &[]).await;
    // Interleaved: each gets its own answers, in order.
    a.send(WsMessage::text("a1")).await.unwrap();
    b.send(WsMessage::text("b1")).await.unwrap();
    a.send(WsMessage::text("a2")).await.unwrap();
    assert_eq!(next(&mut b).await, WsMessage::text("b1"));
    assert_eq!(next(&mut a).await, WsMessage::text("a1"));
    assert_eq!(next(&mut a).await, WsMessage::text("a2"));
    // One closes; the other goes on.
    a.close(None).await.unwrap();
    assert!(matches!(next(&mut a).await, WsMessage::Close(_)));
    b.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next(&mut b).await, WsMessage::binary(vec![1, 2, 3]));
    assert_eq!(
        server.handle.stats().connections_open,
        1,
        "both sockets ride one connection"
    );
    b.close(None).await.unwrap();
}

#[tokio::test]
async fn the_subprotocol_is_negotiated_as_on_http1() {
    let server = serve(Server::builder());
    let client = h2c(server.addr).await;
    let (headers, mut ws) =
        websocket(&client, &[("sec-websocket-protocol", "superchat, chat")]).await;
    // The server's preference (chat first) among those offered.
    assert_eq!(headers["sec-websocket-protocol"], "chat");
    assert_eq!(next(&mut ws).await, WsMessage::text("protocol chat"));
    let (headers, mut ws) = websocket(&client, &[("sec-websocket-protocol", "mqtt")]).await;
    assert!(headers.get("sec-websocket-protocol").is_none());
    ws.send(WsMessage::text("no protocol")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text("no protocol"));
}

/// An open WebSocket keeps its stream, and so its connection, out of the
/// idle timeout (which closes connections with no open stream).
#[tokio::test]
async fn an_open_websocket_keeps_the_connection_from_idling_out() {
    let idle = Duration::from_millis(200);
    let server = serve(Server::builder().idle_timeout(Some(idle)));
    let client = h2c(server.addr).await;
    let (_, mut ws) = websocket(&client, &[]).await;
    // Several idle timeouts with the socket silent (the absence of a close
    // cannot be waited for; a slow machine only makes this test weaker).
    tokio::time::sleep(idle * 5).await;
    ws.send(WsMessage::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text("still here"));
    // No GOAWAY came (an idle one lets open streams finish, but refuses new
    // ones): the connection still takes requests.
    let (status, _) = request(&client, Method::GET, "/plain", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// A bad frame on the stream (unmasked, RFC 6455 §5.1) gets close code 1002
/// and counts in `protocol_errors`, as on HTTP/1.1.
#[tokio::test]
async fn a_bad_frame_closes_with_1002_and_counts_as_a_protocol_error() {
    let server = serve(Server::builder());
    let client = h2c(server.addr).await;
    let (_, mut io) = connect(&client, "/ws", &[]).await;
    io.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(SAFETY, io.read_exact(&mut head))
        .await
        .expect("close in time")
        .expect("a close frame");
    assert_eq!(head[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1002);
    wait_stats(&server.handle, "a protocol error", |s| {
        s.protocol_errors >= 1
    })
    .await;
}

#[tokio::test]
async fn bad_extended_connects_get_their_status_and_reason() {
    let server = serve(Server::builder());
    let client = h2c(server.addr).await;
    let v13 = [("sec-websocket-version", "13")];
    // A :protocol the endpoint does not speak: 501 (RFC 9220 §3).
    let (status, body) = request(&client, Method::CONNECT, "/ws", Some("connect-udp"), &v13).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.contains("'websocket'"), "{body}");
    // No version, or another one: 400 saying which.
    let (status, body) = request(&client, Method::CONNECT, "/ws", Some("websocket"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Sec-WebSocket-Version"), "{body}");
    let v8 = [("sec-websocket-version", "8")];
    let (status, body) = request(&client, Method::CONNECT, "/ws", Some("websocket"), &v8).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("13"), "{body}");
    // A GET over HTTP/2 is no WebSocket request: 405, CONNECT named.
    let (status, body) = request(&client, Method::GET, "/ws", None, &v13).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body.contains("CONNECT"), "{body}");
    // The native route does not serve HTTP/2: 501, saying to use HTTP/1.1.
    let (status, body) =
        request(&client, Method::CONNECT, "/native", Some("websocket"), &v13).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.contains("HTTP/1.1"), "{body}");
    // The connection took all of it in stride.
    let (status, _) = request(&client, Method::GET, "/plain", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    echo_ping_close(&client).await;
}

#[tokio::test]
async fn the_setting_can_be_turned_off() {
    let server = serve(Server::builder().http2_enable_connect_protocol(false));
    assert!(
        !connect_protocol_enabled(server.addr).await,
        "SETTINGS_ENABLE_CONNECT_PROTOCOL not sent"
    );
}

/// Shutdown with a WebSocket open on an HTTP/2 stream: the connection gets
/// GOAWAY and the socket a close 1001 (going away), as over HTTP/1.1; the
/// client's answer ends the handler's `recv` loop, and the server stops
/// with nothing forced. (The socket used to work on, unaware, until the
/// shutdown timeout cut it.)
#[tokio::test]
async fn shutdown_closes_a_websocket_on_a_stream_with_1001() {
    // Long against the close handshake, short against SAFETY.
    let mut server = serve(Server::builder().shutdown_timeout(Duration::from_secs(3)));
    let client = h2c(server.addr).await;
    let (_, mut ws) = websocket(&client, &[]).await;
    ws.send(WsMessage::text("before shutdown")).await.unwrap();
    assert_eq!(next(&mut ws).await, WsMessage::text("before shutdown"));
    server.handle.shutdown();
    match next(&mut ws).await {
        WsMessage::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close 1001, got {other:?}"),
    }
    // Reading on sends the client's answer; then the stream ends.
    let end = tokio::time::timeout(SAFETY, ws.next())
        .await
        .expect("the stream ends in time");
    assert!(end.as_ref().is_none_or(Result::is_err), "{end:?}");
    let summary = tokio::time::timeout(SAFETY, &mut server.task)
        .await
        .expect("the server stops in time")
        .unwrap()
        .expect("a clean stop");
    assert_eq!(summary.forced, 0, "{summary:?}");
}
