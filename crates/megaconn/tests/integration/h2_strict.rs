//! What the session 48 review found HTTP/2 (and one HTTP/1.1 chunk-size
//! line) let through, each on the wire: trailers carrying fields a trailer
//! must not (RFC 9110 §6.5.1), field values with leading or trailing
//! whitespace and pseudo-headers in trailers (malformed, RFC 9113 §8.2.1,
//! §8.1), and `3 \r\n` as a chunk size (RFC 9112 §7.1).

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use megaconn::{Body, BoxError, Builder, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::h2::{frame, limit_hits, RawH2, DATA, END_STREAM, HEADERS, SAFETY};

type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// RST_STREAM's frame type, and `PROTOCOL_ERROR`'s code.
const RST_STREAM: u8 = 0x3;
const PROTOCOL_ERROR: u32 = 0x1;
/// END_HEADERS flag.
const END_HEADERS: u8 = 0x4;

/// Routes: `/trailers` answers a body and trailers that include fields a
/// trailer must not carry · anything else reads the request body and
/// answers, in its body, the names of the trailers it got (`a,b`), or 400
/// with the body's error.
async fn app(req: Request<Body>) -> Response<TestBody> {
    if req.uri().path() == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("content-length", HeaderValue::from_static("99"));
        trailers.insert("host", HeaderValue::from_static("evil"));
        trailers.insert("set-cookie", HeaderValue::from_static("a=b"));
        let frames = vec![
            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"body"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        return Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
    }
    let (status, text) = match req.into_body().collect().await {
        Ok(collected) => {
            let mut names: Vec<String> = collected
                .trailers()
                .map(|t| t.keys().map(|k| k.to_string()).collect())
                .unwrap_or_default();
            names.sort();
            (StatusCode::OK, names.join(","))
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// A server of [`app`] on one worker on 127.0.0.1; shut down when dropped.
struct Server {
    addr: SocketAddr,
    handle: ServerHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn start(builder: Builder) -> Server {
    let server = builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let service = tower::service_fn(|req| async move { Ok::<_, Infallible>(app(req).await) });
    tokio::spawn(server.serve(service));
    Server { addr, handle }
}

/// Sends `POST /` with body `abc` and `trailers` on `client`; the status
/// and body of the answer.
async fn post_with_trailers(
    client: h2::client::SendRequest<Bytes>,
    trailers: HeaderMap,
) -> (StatusCode, String) {
    let mut client = client.ready().await.unwrap();
    let req = Request::post("http://t/").body(()).unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    send.send_data(Bytes::from_static(b"abc"), false).unwrap();
    send.send_trailers(trailers).unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    let status = resp.status();
    let (body, _) = read_all(resp.into_body()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A response's whole body and its trailers, if any.
async fn read_all(mut body: h2::RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
    tokio::time::timeout(SAFETY, async {
        let mut bytes = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            bytes.extend_from_slice(&data);
        }
        (bytes, body.trailers().await.unwrap())
    })
    .await
    .expect("the whole body in time")
}

/// Response trailers leave out the fields a trailer must not carry
/// (`content-length`, `host`, `set-cookie`), as HTTP/1.1 does; the others
/// arrive. They were sent unfiltered on HTTP/2.
#[tokio::test]
async fn response_trailers_leave_out_fields_a_trailer_must_not_carry() {
    let server = start(Builder::default());
    let mut client = common::h2c(server.addr).await.ready().await.unwrap();
    let req = Request::get("http://t/trailers").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    let (_, trailers) = read_all(resp.into_body()).await;
    let trailers = trailers.expect("trailers");
    let mut names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(names, ["grpc-status"], "{trailers:?}");
}

/// Request trailers reach the handler without the fields a trailer must
/// not carry; they were handed over unfiltered on HTTP/2.
#[tokio::test]
async fn request_trailers_leave_out_fields_a_trailer_must_not_carry() {
    let server = start(Builder::default());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("1"));
    trailers.insert("content-length", HeaderValue::from_static("99"));
    trailers.insert("authorization", HeaderValue::from_static("Basic eA=="));
    let answer = post_with_trailers(common::h2c(server.addr).await, trailers).await;
    assert_eq!(answer, (StatusCode::OK, "x-sum".to_string()));
}

/// A request field value with leading or trailing whitespace is malformed
/// (RFC 9113 §8.2.1): the stream is reset with `PROTOCOL_ERROR`, counted as
/// `limit_hits{malformed_request}` and a protocol error, and the connection
/// serves on. It was served.
#[tokio::test]
async fn a_padded_field_value_resets_the_stream() {
    let server = start(Builder::default());
    let client = common::h2c(server.addr).await;
    for value in [" v", "v\t"] {
        let mut ready = client.clone().ready().await.unwrap();
        let req = Request::get("http://t/")
            .header("x-a", HeaderValue::from_str(value).unwrap())
            .body(())
            .unwrap();
        let (resp, _) = ready.send_request(req, true).unwrap();
        let err = tokio::time::timeout(SAFETY, resp)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.reason(),
            Some(h2::Reason::PROTOCOL_ERROR),
            "{value:?}: {err}"
        );
    }
    let mut ready = client.ready().await.unwrap();
    let req = Request::get("http://t/")
        .header("x-a", "v")
        .body(())
        .unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "malformed_request"), 2, "{stats:?}");
    assert_eq!(stats.protocol_errors, 2, "{stats:?}");
}

/// A request trailer value with trailing whitespace fails the handler's
/// body read (the handler here answers 400) and counts as
/// `malformed_request`. It was handed over.
#[tokio::test]
async fn a_padded_trailer_value_fails_the_body() {
    let server = start(Builder::default());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("1 "));
    let (status, _) = post_with_trailers(common::h2c(server.addr).await, trailers).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "malformed_request"), 1, "{stats:?}");
}

/// A pseudo-header in request trailers is malformed (RFC 9113 §8.1): the
/// stream is reset with `PROTOCOL_ERROR` (our h2 patch; h2 dropped the
/// field and handed the rest over).
#[tokio::test]
async fn a_pseudo_header_in_trailers_resets_the_stream() {
    let server = start(Builder::default());
    // POST / (HPACK: :method POST, :scheme http, :path /, :authority "a"),
    // three bytes of body, then trailers holding `:path /x` (a literal
    // with a new name).
    let head = [0x83, 0x86, 0x84, 0x01, 1, b'a'];
    let mut trailer = vec![0x00, 5];
    trailer.extend_from_slice(b":path");
    trailer.extend_from_slice(&[2, b'/', b'x']);
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &head);
    bytes.extend(frame(DATA, 0, 1, b"abc"));
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailer));
    let mut raw = RawH2::connect(server.addr, &bytes).await;
    loop {
        let f = raw
            .next_frame()
            .await
            .expect("a RST_STREAM before the close");
        if raw.ack_settings(&f).await {
            continue;
        }
        assert_ne!(f.kind, HEADERS, "answered: {f:?}");
        if f.kind == RST_STREAM && f.stream == 1 {
            assert_eq!(f.payload, PROTOCOL_ERROR.to_be_bytes());
            break;
        }
    }
}

/// HTTP/1.1: a chunk-size line with whitespace at its end (`3 \r\n`) is
/// malformed (RFC 9112 §7.1: BWS only before `;`): the body read fails
/// (the handler answers 400) and counts as `malformed_request`. It was
/// accepted.
#[tokio::test]
async fn a_chunk_size_with_trailing_whitespace_is_refused() {
    let server = start(Builder::default());
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "malformed_request"), 1, "{stats:?}");
}
