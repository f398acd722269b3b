//! A gRPC-web call over HTTP/2 still open when the drain's deadline nears
//! ends `UNAVAILABLE` (`grpc-status: 14`, which gRPC clients retry) once
//! its response streams, as over HTTP/1.1 since session 52
//! (`grpc52.rs`): a gRPC-web trailer frame (base64 for `grpc-web-text`)
//! after its last whole message, in a DATA frame that ends the stream.
//! Before (session 53), such a call left the drain's list at its head and
//! its connection was dropped under it at the deadline: a body that never
//! ended. Over real sockets with the `h2` crate's client (the workspace
//! has no gRPC-web client).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use megaconn::{Body, BoxError};

use crate::common::{self, AppServer, SAFETY};

/// The one message frame each call's response sends: uncompressed, 3
/// bytes of message.
const MESSAGE_FRAME: &[u8] = &[0, 0, 0, 0, 3, 0x0a, 0x01, b'x'];

/// [`MESSAGE_FRAME`] as `grpc-web-text` sends it (base64).
const MESSAGE_FRAME_TEXT: &[u8] = b"AAAAAAMKAXg=";

/// The header block of the status the drain ends a call with.
const SHUTTING_DOWN_BLOCK: &[u8] =
    b"grpc-status:14\r\ngrpc-message:the%20server%20is%20shutting%20down\r\n";

/// The trailer frame of [`SHUTTING_DOWN_BLOCK`] as `grpc-web-text` ends a
/// body with it (base64, computed apart with Python's `base64`).
const SHUTTING_DOWN_TEXT: &[u8] = b"gAAAAEJncnBjLXN0YXR1czoxNA0KZ3JwYy1tZXNzYWdlOnRoZSUyMHNlcnZlciUyMGlzJTIwc2h1dHRpbmclMjBkb3duDQo=";

type Reply = UnsyncBoxBody<Bytes, BoxError>;

/// Answers `200` with the request's `content-type` and a body of one
/// message frame ([`MESSAGE_FRAME`], or its base64 for `grpc-web-text`),
/// then nothing more, for good.
async fn tail(req: Request<Body>) -> Result<http::Response<Reply>, Infallible> {
    let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
    let text = content_type
        .as_ref()
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web-text"));
    let frame = if text {
        MESSAGE_FRAME_TEXT
    } else {
        MESSAGE_FRAME
    };
    let once = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
        Bytes::from_static(frame),
    ))]);
    let tail = futures_util::StreamExt::chain(once, futures_util::stream::pending());
    let mut response = http::Response::new(StreamBody::new(tail).boxed_unsync());
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

/// Reads `body` into `seen` until that holds `want` bytes (bounded by
/// [`SAFETY`]), giving its room back as it comes.
async fn read_until(body: &mut h2::RecvStream, seen: &mut Vec<u8>, want: usize) {
    while seen.len() < want {
        let data = tokio::time::timeout(SAFETY, body.data())
            .await
            .expect("the body's next frame in time")
            .unwrap_or_else(|| panic!("the body ended early: {seen:?}"))
            .unwrap_or_else(|e| panic!("the body failed ({e}) after {seen:?}"));
        let _ = body.flow_control().release_capacity(data.len());
        seen.extend_from_slice(&data);
    }
}

/// Two gRPC-web server streams over HTTP/2 (`grpc-web` and
/// `grpc-web-text`) that sent a message are open when shutdown begins: a
/// margin before `shutdown_timeout` each body ends with the trailer frame
/// of `grpc-status: 14` after its message, and the stream ends there (no
/// HTTP trailers: gRPC-web has none). Before, the connection was dropped
/// at the deadline: each body failed instead of ending.
#[tokio::test]
async fn grpc_web_streams_over_h2_open_at_the_drain_deadline_end_unavailable() {
    // The margin is a tenth of it: half a second to send the frames.
    let builder = megaconn::Server::builder().shutdown_timeout(Duration::from_secs(5));
    let server = AppServer::one_worker(builder, tower::service_fn(tail));
    let client = common::h2c(server.addr()).await;
    let mut open = Vec::new();
    for (content_type, first) in [
        ("application/grpc-web+proto", MESSAGE_FRAME),
        ("application/grpc-web-text+proto", MESSAGE_FRAME_TEXT),
    ] {
        let mut ready = client.clone().ready().await.unwrap();
        let req = Request::post("http://t/t.D/Tail")
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(())
            .unwrap();
        let (answer, mut send) = ready.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(&[0; 5]), true).unwrap();
        let answer = tokio::time::timeout(SAFETY, answer)
            .await
            .expect("answered in time")
            .expect("an answer");
        assert_eq!(answer.status(), StatusCode::OK, "{content_type}");
        let mut body = answer.into_body();
        let mut seen = Vec::new();
        read_until(&mut body, &mut seen, first.len()).await;
        assert_eq!(seen, first, "{content_type}: its message first");
        open.push((content_type, body, seen));
    }

    server.handle.shutdown();
    let mut frame = vec![0x80, 0, 0, 0, SHUTTING_DOWN_BLOCK.len() as u8];
    frame.extend_from_slice(SHUTTING_DOWN_BLOCK);
    for (content_type, mut body, mut seen) in open {
        let last: &[u8] = match content_type.contains("text") {
            true => SHUTTING_DOWN_TEXT,
            false => &frame,
        };
        let first = seen.len();
        read_until(&mut body, &mut seen, first + last.len()).await;
        assert_eq!(
            &seen[first..],
            last,
            "{content_type}: the trailer frame after the message: {:?}",
            String::from_utf8_lossy(&seen[first..])
        );
        let end = tokio::time::timeout(SAFETY, body.data())
            .await
            .expect("the body's end in time");
        assert!(
            end.is_none(),
            "{content_type}: the body ends there: {end:?}"
        );
        let trailers = tokio::time::timeout(SAFETY, body.trailers())
            .await
            .expect("the stream's end in time");
        assert!(
            matches!(trailers, Ok(None)),
            "{content_type}: no HTTP trailers (gRPC-web has none): {trailers:?}"
        );
    }
    assert!(server.stop().await, "the server stops");
}
