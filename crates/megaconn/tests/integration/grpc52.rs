//! gRPC left from session 51:
//!
//! - a gRPC-web call over HTTP/1.1 still open when the drain's deadline
//!   nears ends `UNAVAILABLE` (`grpc-status: 14`, which gRPC clients
//!   retry), as HTTP/2's calls do: trailers-only before its response
//!   began, a gRPC-web trailer frame (base64 for `grpc-web-text`) ending
//!   its body once its messages stream. Before, the connection was
//!   dropped under it at the deadline: no answer, or a chunked body never
//!   ended;
//! - a service that panics in `call` itself (not in the future it
//!   returns) answers a gRPC call `grpc-status: 13` (INTERNAL), over
//!   HTTP/2 and gRPC-web over HTTP/1.1, as a panicking future does, where
//!   it answered a text `500` (tonic read `Unknown`, "grpc-status header
//!   missing").
//!
//! The gRPC-web exchanges are raw HTTP/1.1 (the workspace has no
//! gRPC-web client); the HTTP/2 one is tonic's client. (The access-log
//! line of a call that panicked in `call`: `lifecycle/grpc52.rs`, in the
//! binary that captures the log's fields.)

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use megaconn::{Body, BoxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Code;

use crate::common::{self, AppServer, SAFETY};

/// Tells the test it runs, then never answers.
const STUCK: &str = "/t.D/Stuck";
/// Answers `200` with one message frame, then nothing more, for good.
const TAIL: &str = "/t.D/Tail";
/// The service panics in `call`, before it returns a future.
const CALL_BUG: &str = "/t.D/CallBug";
/// Server streaming (tonic's): one message of [`BIG_MESSAGE`] bytes, then
/// nothing more, for good.
const BIG: &str = "/t.D/Big";

/// Far more than the client's window ([`STREAM_WINDOW`]).
const BIG_MESSAGE: usize = 1 << 20;

/// The `BIG` test's client's stream window: h2's initial one.
const STREAM_WINDOW: u32 = 65_535;

/// What every method takes and gives (for tonic's client).
#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
}

/// The one message frame `TAIL` sends: uncompressed, 3 bytes of message.
const MESSAGE_FRAME: &[u8] = &[0, 0, 0, 0, 3, 0x0a, 0x01, b'x'];

/// [`MESSAGE_FRAME`] as `grpc-web-text` sends it (base64).
const MESSAGE_FRAME_TEXT: &[u8] = b"AAAAAAMKAXg=";

/// The trailer frame of `grpc-status: 14` as `grpc-web-text` ends a body
/// with it (base64 of `0x80`, the length, and
/// `grpc-status:14\r\ngrpc-message:the%20server%20is%20shutting%20down\r\n`,
/// computed apart, with Python's `base64`).
const SHUTTING_DOWN_TEXT: &[u8] = b"gAAAAEJncnBjLXN0YXR1czoxNA0KZ3JwYy1tZXNzYWdlOnRoZSUyMHNlcnZlciUyMGlzJTIwc2h1dHRpbmclMjBkb3duDQo=";

type Notes = Pin<Box<dyn futures_util::Stream<Item = Result<Note, tonic::Status>> + Send>>;

type Reply = UnsyncBoxBody<Bytes, BoxError>;
type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Reply>, Infallible>>>>;

/// One call, routed by path; `running` hears each `Stuck` handler start.
/// What runs before the returned future is the service's `call`.
fn route(req: http::Request<Body>, running: mpsc::UnboundedSender<()>) -> Answer {
    let path = req.uri().path().to_string();
    assert!(path != CALL_BUG, "a bug in the service's call");
    let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
    Box::pin(async move {
        let body: Reply = match path.as_str() {
            BIG => {
                let big = |_: tonic::Request<Note>| async {
                    let text = "x".repeat(BIG_MESSAGE);
                    let once = futures_util::stream::iter([Ok(Note { text })]);
                    let tail =
                        futures_util::StreamExt::chain(once, futures_util::stream::pending());
                    Ok::<_, tonic::Status>(tonic::Response::new(Box::pin(tail) as Notes))
                };
                let mut grpc = common::grpc::grpc::<Note, Note>();
                let response = grpc.server_streaming(tower::service_fn(big), req).await;
                return Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()));
            }
            STUCK => {
                let _ = running.send(());
                std::future::pending::<()>().await;
                unreachable!("never answers")
            }
            TAIL => {
                let text = content_type
                    .as_ref()
                    .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web-text"));
                let frame = match text {
                    true => MESSAGE_FRAME_TEXT,
                    false => MESSAGE_FRAME,
                };
                let once = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
                    Bytes::from_static(frame),
                ))]);
                let tail = futures_util::StreamExt::chain(once, futures_util::stream::pending());
                StreamBody::new(tail).boxed_unsync()
            }
            _ => Empty::<Bytes>::new().map_err(BoxError::from).boxed_unsync(),
        };
        let mut response = http::Response::new(body);
        if let Some(ct) = content_type {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, ct);
        }
        Ok(response)
    })
}

/// A server of [`route`] on one worker with `builder`'s settings; what
/// hears its `Stuck` handlers start.
fn serve(builder: megaconn::Builder) -> (AppServer, mpsc::UnboundedReceiver<()>) {
    let (running, started) = mpsc::unbounded_channel();
    let calls = tower::service_fn(move |req| route(req, running.clone()));
    (AppServer::one_worker(builder, calls), started)
}

/// Opens an HTTP/1.1 connection to `server` and sends a gRPC-web call of
/// `path` with `content_type`: one empty message (5 bytes, a length).
async fn call_web(server: &AppServer, path: &str, content_type: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\ncontent-type: {content_type}\r\n\
         x-grpc-web: 1\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tcp
}

/// Reads from `tcp` into `buf` until it ends with `end` (bounded by
/// [`SAFETY`]).
async fn read_until_ends_with(tcp: &mut TcpStream, buf: &mut Vec<u8>, end: &[u8]) {
    tokio::time::timeout(SAFETY, async {
        while !buf.ends_with(end) {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {end:?} in time: {:?}", String::from_utf8_lossy(buf)));
}

/// A chunk of a chunked body holding `data`, as it goes on the wire.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The fields of a gRPC-web trailer frame (`0x80`, a length, a header
/// block), which must be all of `frame`.
fn trailer_fields(frame: &[u8]) -> Vec<(String, String)> {
    assert!(frame.len() >= 5, "no trailer frame: {frame:?}");
    assert_eq!(frame[0], 0x80, "a trailer frame's flag: {frame:?}");
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    assert_eq!(frame.len(), 5 + len, "one trailer frame: {frame:?}");
    let block = std::str::from_utf8(&frame[5..]).expect("a text header block");
    block
        .split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').expect("name:value");
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

/// The fields the drain ends a call with.
fn shutting_down() -> Vec<(String, String)> {
    vec![
        ("grpc-status".into(), "14".into()),
        (
            "grpc-message".into(),
            "the%20server%20is%20shutting%20down".into(),
        ),
    ]
}

/// Three gRPC-web calls over HTTP/1.1 open when shutdown begins: one whose
/// handler never answers, and two server streams that sent a message
/// (`grpc-web` and `grpc-web-text`). A margin before `shutdown_timeout`
/// each ends `UNAVAILABLE` with its message: the first trailers-only
/// (`200`, the status in the head), the streams with a trailer frame
/// after their message and the chunked body's end; each connection then
/// closes. Before, each was dropped at the deadline: no answer at all,
/// or a body that never ended. (Not asserted: that none was forced. The
/// server's close lingers for its client's end, up to half a second, the
/// margin here: a count of the client's pace on a busy machine.)
#[tokio::test]
async fn grpc_web_calls_open_at_the_drain_deadline_end_unavailable() {
    // The margin is a tenth of it: half a second to write the answers
    // before the worker stops polling, well over what that takes on a
    // busy machine.
    let builder = megaconn::Server::builder().shutdown_timeout(Duration::from_secs(5));
    let (server, mut started) = serve(builder);
    let mut stuck = call_web(&server, STUCK, "application/grpc-web+proto").await;
    common::next(&mut started, "the stuck call's handler runs").await;
    let mut tails = Vec::new();
    for (content_type, first, last) in [
        ("application/grpc-web+proto", MESSAGE_FRAME, None),
        (
            "application/grpc-web-text+proto",
            MESSAGE_FRAME_TEXT,
            Some(SHUTTING_DOWN_TEXT),
        ),
    ] {
        let mut tcp = call_web(&server, TAIL, content_type).await;
        let mut seen = Vec::new();
        read_until_ends_with(&mut tcp, &mut seen, &chunk(first)).await;
        tails.push((tcp, seen, content_type, first, last));
    }

    server.handle.shutdown();
    let message = "the%20server%20is%20shutting%20down";
    common::grpc::assert_web_trailers_only(&mut stuck, "14", message).await;
    drop(stuck);
    for (mut tcp, mut seen, content_type, first, last) in tails {
        seen.extend_from_slice(&common::read_to_close(&mut tcp).await);
        let whole = common::try_parse_response(&seen, false);
        let (response, used) = whole.unwrap_or_else(|| {
            panic!(
                "{content_type}: no whole response by the close: {:?}",
                String::from_utf8_lossy(&seen)
            )
        });
        assert_eq!(used, seen.len(), "{content_type}: nothing after it");
        assert_eq!(response.status, 200, "{content_type}");
        let after = response
            .body
            .strip_prefix(first)
            .unwrap_or_else(|| panic!("{content_type}: its message first: {response:?}"));
        match last {
            None => assert_eq!(trailer_fields(after), shutting_down(), "{content_type}"),
            Some(text) => assert_eq!(
                after,
                text,
                "{content_type}: {:?}",
                String::from_utf8_lossy(after)
            ),
        }
    }
    server.summary().await;
}

/// A service that panics in `call` itself answers a gRPC call as one
/// whose future panics: tonic's client over HTTP/2 reads `INTERNAL` with
/// its message (it read `Unknown`, "grpc-status header missing, mapped
/// from HTTP status code 500"), and a gRPC-web call over HTTP/1.1 gets
/// `200` with `grpc-status: 13` in the head, no body, and the close (it
/// got a text `500`). Each panic is counted.
#[tokio::test]
async fn a_grpc_call_whose_service_panics_in_call_answers_internal() {
    let (server, _started) = serve(megaconn::Server::builder());
    let mut client = common::grpc::client(server.addr()).await;
    let request = tonic::Request::new(Note { text: "x".into() });
    let status = common::grpc::unary::<Note, Note>(&mut client, CALL_BUG, request)
        .await
        .expect_err("the service panicked");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Internal, "the handler panicked"),
        "HTTP/2: {status:?}"
    );
    drop(client);

    let mut tcp = call_web(&server, CALL_BUG, "application/grpc-web+proto").await;
    common::grpc::assert_web_trailers_only(&mut tcp, "13", "the%20handler%20panicked").await;
    assert_eq!(server.handle.stats().panics, 2);
    server.summary().await;
}

/// A tonic server stream whose one message is far larger than its
/// client's window, which the client does not open (it reads nothing),
/// open when shutdown begins: a margin before `shutdown_timeout` it ends
/// `UNAVAILABLE` with its message, in trailers sent in the middle of the
/// message (trailers are not flow-controlled), and tonic's client reads
/// that status over the message cut short. Before, such a stream was cut
/// with the connection at the deadline (tonic read a broken connection).
#[tokio::test]
async fn a_grpc_stream_held_mid_message_by_its_client_ends_unavailable() {
    let builder = megaconn::Server::builder().shutdown_timeout(Duration::from_secs(5));
    let (server, _started) = serve(builder);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .initial_stream_window_size(STREAM_WINDOW);
    let channel = tokio::time::timeout(SAFETY, endpoint.connect())
        .await
        .expect("connects in time")
        .expect("connects");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("channel ready");
    let stream = client.server_streaming::<_, Note, _>(
        tonic::Request::new(Note { text: "x".into() }),
        http::uri::PathAndQuery::from_static(BIG),
        tonic_prost::ProstCodec::default(),
    );
    let mut stream = tokio::time::timeout(SAFETY, stream)
        .await
        .expect("the stream starts in time")
        .expect("the stream starts")
        .into_inner();

    // Read only once the server is done: nothing opens the window before.
    server.handle.shutdown();
    tokio::time::timeout(SAFETY, server.task)
        .await
        .expect("the server stops in time")
        .expect("the server's task")
        .expect("served");
    let end = tokio::time::timeout(SAFETY, stream.message())
        .await
        .expect("the stream ends in time")
        .expect_err("the message was cut short");
    assert_eq!(
        (end.code(), end.message()),
        (Code::Unavailable, "the server is shutting down"),
        "{end:?}"
    );
}
