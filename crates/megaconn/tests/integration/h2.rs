//! HTTP/2 over cleartext with prior knowledge (h2c), against a real server on
//! 127.0.0.1 with the `h2` crate's client: streams, bodies, trailers, the
//! connection window beside request bodies left unread (also under
//! `axum::serve`, for reference), and a rapid-reset attacker speaking raw
//! frames. The idle timeout and the keep-alive PING timeout are tested with
//! a scripted raw client ([`RawH2`]), which can refuse to answer PINGs as a
//! dead peer would; so are the CONTINUATION and small-DATA flood attackers.
//! Attackers run bounded loops: a test fails on a limit of bytes or frames,
//! never on elapsed time.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::h2c;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use megaconn::{Body, BoxError, Builder, ServerHandle, ShutdownSummary, HTTP2_TINY_DATA_BUDGET};

/// `label`'s count in `megaconn_limit_hits_total`.
pub(super) fn limit_hits(stats: &megaconn::ServerStats, label: &str) -> u64 {
    let hit = stats.limit_hits.iter().find(|(l, _)| *l == label);
    hit.map_or(0, |(_, n)| *n)
}
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait: reached only when a test fails.
pub(super) const SAFETY: Duration = Duration::from_secs(20);

type TestBody = UnsyncBoxBody<Bytes, BoxError>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// Routes: `/` hello · `/echo` streams the body back · `/trailers` a body and
/// gRPC-style trailers · `/together` waits until 8 of its requests run at once ·
/// `/gated` waits for a permit of the test's gate · `/hang` never answers ·
/// `/endless` answers one chunk of a body that never ends · `/slow` a body
/// of [`SLOW_LEN`] bytes, of known length, that comes when the gate opens ·
/// `/204`, `/204x` 204 with an empty body and with `x` · `/103` a 103 as
/// the final answer · `/long`, `/short` `content-length: 10` with 15 and 5
/// bytes · `/te` sets `te: gzip` and `connection: x-hop` ·
/// `/panic` panics in the handler · `/frames` reads the body and answers how
/// many data frames and bytes it saw and their [`fnv1a`] hash (`frames=N
/// bytes=M hash=H`), or 400 with the body's error · `/big` 1 MiB ·
/// `/read-on` reads its body to the end, on past errors, and lists them.
async fn app(req: Request<Body>, shared: Arc<Shared>) -> Response<TestBody> {
    match req.uri().path() {
        "/" => full(StatusCode::OK, "Hello, World!"),
        "/echo" => Response::new(req.into_body().map_err(BoxError::from).boxed_unsync()),
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            let frames = vec![
                Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"part1,"))),
                Ok(http_body::Frame::data(Bytes::from_static(b"part2"))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync())
        }
        "/together" => {
            shared.together.wait().await;
            full(StatusCode::OK, "together")
        }
        "/gated" => {
            shared.gate.acquire().await.unwrap().forget();
            full(StatusCode::OK, "through the gate")
        }
        "/hang" => std::future::pending().await,
        "/slow" => Response::new(
            Gated {
                gate: Box::pin(async move { shared.gate.acquire().await.unwrap().forget() }),
                data: Some(Bytes::from(vec![b's'; SLOW_LEN])),
            }
            .boxed_unsync(),
        ),
        "/te" => {
            // Fields HTTP/2 forbids in a response, as an HTTP/1.1 app or
            // proxy may set them.
            let mut r = full(StatusCode::OK, "te");
            let h = r.headers_mut();
            h.insert("te", HeaderValue::from_static("gzip"));
            h.insert("connection", HeaderValue::from_static("x-hop, close"));
            h.insert("x-hop", HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            r
        }
        "/204" => full(StatusCode::NO_CONTENT, ""),
        "/204x" => full(StatusCode::NO_CONTENT, "x"),
        "/103" => full(StatusCode::from_u16(103).unwrap(), ""),
        "/long" | "/short" => {
            // Says 10 bytes, sends 5 or 15.
            let body = if req.uri().path() == "/long" {
                "fifteen bytes!!"
            } else {
                "five!"
            };
            let mut r = full(StatusCode::OK, body);
            r.headers_mut()
                .insert("content-length", HeaderValue::from_static("10"));
            r
        }
        "/endless" => {
            // One chunk, then a body that never ends (a watch, an SSE feed).
            let tick = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
                Bytes::from_static(b"tick"),
            ))]);
            let body = futures_util::StreamExt::chain(tick, futures_util::stream::pending());
            Response::new(StreamBody::new(body).boxed_unsync())
        }
        "/big" => full(StatusCode::OK, vec![b'x'; 1 << 20]),
        "/read-on" => {
            // Reads to the end, going on after errors.
            let mut body = req.into_body();
            let mut errors = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Err(e) = frame {
                    errors.push(e.to_string());
                }
            }
            full(StatusCode::OK, format!("errors: {errors:?}"))
        }
        "/panic" => panic!("handler panic on HTTP/2"),
        "/frames" => {
            let mut body = req.into_body();
            let (mut frames, mut bytes, mut hash) = (0u64, 0usize, FNV_OFFSET);
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            frames += 1;
                            bytes += data.len();
                            hash = fnv1a(hash, &data);
                        }
                    }
                    Err(e) => return full(StatusCode::BAD_REQUEST, format!("body error: {e}")),
                }
            }
            full(
                StatusCode::OK,
                format!("frames={frames} bytes={bytes} hash={hash:x}"),
            )
        }
        _ => full(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The length of `/slow`'s body: a whole default connection window.
const SLOW_LEN: usize = 65_535;

/// A body of known length whose one frame comes once `gate` resolves.
struct Gated {
    gate: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    data: Option<Bytes>,
}

impl http_body::Body for Gated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.data.is_none() {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.gate.as_mut().poll(cx));
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `data`, continuing from `hash`: checks a body's bytes and
/// their order without echoing it (an echo of many tiny frames would flood
/// the test's own client).
fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Shared {
    together: tokio::sync::Barrier,
    gate: tokio::sync::Semaphore,
}

pub(super) struct Running {
    pub(super) addr: SocketAddr,
    shared: Arc<Shared>,
    pub(super) handle: ServerHandle,
    task: ServeTask,
}

pub(super) async fn start(builder: Builder) -> Running {
    let shared = Arc::new(Shared {
        together: tokio::sync::Barrier::new(8),
        gate: tokio::sync::Semaphore::new(0),
    });
    let for_app = shared.clone();
    let service = tower::service_fn(move |req| {
        let shared = for_app.clone();
        async move { Ok::<_, Infallible>(app(req, shared).await) }
    });
    let common::AppServer {
        addrs,
        handle,
        task,
    } = common::AppServer::one_worker(builder, service);
    Running {
        addr: addrs[0],
        shared,
        handle,
        task,
    }
}

type ServeTask = tokio::task::JoinHandle<Result<ShutdownSummary, megaconn::Error>>;

impl Running {
    pub(super) async fn stop(self) -> ShutdownSummary {
        common::shut_down(&self.handle, self.task).await.unwrap()
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn request(
    client: &mut h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    body: Option<Vec<Bytes>>,
) -> Answer {
    tokio::time::timeout(SAFETY, async {
        let mut c = client.clone().ready().await.expect("client ready");
        let req = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .body(())
            .unwrap();
        let (response, mut send) = c.send_request(req, body.is_none()).expect("send request");
        if let Some(chunks) = body {
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                send.send_data(chunk, i + 1 == n).unwrap();
            }
        }
        let response = response.await.expect("response");
        let (parts, mut recv) = response.into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("body chunk");
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.expect("trailers");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.into(),
            trailers,
        }
    })
    .await
    .expect("timed out waiting for an HTTP/2 response")
}

#[tokio::test]
async fn prior_knowledge_get_and_echo() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    let a = request(&mut client, "GET", "/", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "Hello, World!");
    assert_eq!(a.headers["content-length"], "13");
    assert!(a.headers.contains_key("date"));

    let chunks: Vec<Bytes> = (0..20)
        .map(|i| Bytes::from(vec![b'a' + i as u8; 10_000]))
        .collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let a = request(&mut client, "POST", "/echo", Some(chunks)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), expected.len());
    assert_eq!(a.body, expected, "the request body comes back intact");

    let a = request(&mut client, "GET", "/nope", None).await;
    assert_eq!(a.status, 404);
    let stats = server.handle.stats();
    assert_eq!(stats.requests, 3);
    server.stop().await;
}

#[tokio::test]
async fn response_trailers_reach_the_client() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    let a = request(&mut client, "GET", "/trailers", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "part1,part2");
    let trailers = a.trailers.expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-checksum"], "abc");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_streams_run_at_once_on_one_connection() {
    let server = start(megaconn::Server::builder()).await;
    let client = h2c(server.addr).await;
    // Each /together handler waits until all 8 run: this completes only if the
    // server runs the streams of one connection concurrently.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            request(&mut c, "GET", "/together", None).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_gets_a_500_and_the_connection_lives() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    let a = request(&mut client, "GET", "/panic", None).await;
    assert_eq!(a.status, 500);
    // The one-line text body HTTP/1.1 answers (it was empty on HTTP/2).
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        "Internal Server Error: the handler panicked\n"
    );
    let a = request(&mut client, "GET", "/", None).await;
    assert_eq!(a.status, 200, "same connection still serves");
    assert_eq!(server.handle.stats().panics, 1);
    server.stop().await;
}

#[tokio::test]
async fn prior_knowledge_can_be_turned_off() {
    let server = start(megaconn::Server::builder().http2_prior_knowledge(false)).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 505"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_sends_goaway_and_lets_open_streams_finish() {
    let server = start(megaconn::Server::builder()).await;
    let client = h2c(server.addr).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            request(&mut c, "GET", "/gated", None).await
        }));
    }
    let deadline = tokio::time::Instant::now() + SAFETY;
    while server.handle.stats().requests < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never arrived"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.handle.shutdown();
    // Until the final GOAWAY arrives new streams may still be taken; after
    // it they are refused. Each try is one round trip.
    let mut c = client.clone();
    let refused = tokio::time::timeout(SAFETY, async {
        loop {
            let Ok(mut ready) = c.clone().ready().await else {
                break;
            };
            let req = Request::get("http://localhost/").body(()).unwrap();
            match ready.send_request(req, true) {
                Err(_) => break,
                Ok((resp, _)) => {
                    if resp.await.is_err() {
                        break;
                    }
                }
            }
            c = ready;
        }
    })
    .await;
    assert!(refused.is_ok(), "new streams are refused after GOAWAY");
    for t in &tasks {
        assert!(!t.is_finished(), "open streams are not cut at GOAWAY");
    }
    // The open streams finish after GOAWAY.
    server.shared.gate.add_permits(3);
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, "through the gate");
    }
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "nothing was cut");
}

/// One HTTP/2 frame header plus payload.
pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A rapid reset is counted once: the guard keeps saying "flood" for every
/// stream that ends after it tripped (the rest of the batch, those after
/// the GOAWAY), and those are not new floods. The streams are accepted
/// first (so h2's own count of streams reset before their accept stays
/// quiet and ours trips), then all reset in one write.
#[tokio::test]
async fn a_rapid_reset_is_counted_once() {
    let streams = megaconn::RAPID_RESET_LIMIT as u32 + 50;
    // All of them open at once: more than the default 128 streams.
    let (builder, mut events) =
        event_log(megaconn::Server::builder().http2_max_concurrent_streams(streams));
    let server = start(builder).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let block = [
        0x82, 0x86, 0x04, 5, b'/', b'h', b'a', b'n', b'g', 0x01, 1, b'a',
    ];
    for i in 0..streams {
        opening.extend(frame(0x1, 0x5, 2 * i + 1, &block)); // HEADERS, END_STREAM|END_HEADERS
    }
    tcp.write_all(&opening).await.unwrap();
    common::wait_stats(&server.handle, "every stream's handler called", |s| {
        s.request_metrics.in_flight == i64::from(streams)
    })
    .await;
    let mut resets = Vec::new();
    for i in 0..streams {
        resets.extend(frame(0x3, 0, 2 * i + 1, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
    }
    tcp.write_all(&resets).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SAFETY, tcp.read_to_end(&mut rest)).await;
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::Protocol(megaconn::ProtocolDetail::Http2(0xb))
    );
    let stats = server.handle.stats();
    let calm = stats
        .limit_hits
        .iter()
        .find(|(label, _)| *label == "h2_enhance_your_calm")
        .map(|(_, n)| *n);
    assert_eq!((calm, stats.protocol_errors), (Some(1), 1), "{stats:?}");
    server.stop().await;
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_the_server_stays_healthy() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                         // HPACK: :method GET (static 2), :scheme http (6), :path "/hang" (name 4,
                                         // literal value, not indexed), :authority "a" (name 1, literal).
    let block = [
        0x82, 0x86, 0x04, 5, b'/', b'h', b'a', b'n', b'g', 0x01, 1, b'a',
    ];
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, 0x5, id, &block)); // HEADERS, END_STREAM|END_HEADERS
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
    }
    // The server may close before it read everything; that is the point.
    let _ = tcp.write_all(&burst).await;

    let mut goaway_codes = Vec::new();
    let mut buf = Vec::new();
    let read_all = tokio::time::timeout(SAFETY, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read_all.is_ok(),
        "the server closes the attacking connection"
    );
    drop(tcp);
    let mut pos = 0;
    while pos + 9 <= buf.len() {
        let len = (usize::from(buf[pos]) << 16)
            | (usize::from(buf[pos + 1]) << 8)
            | usize::from(buf[pos + 2]);
        let kind = buf[pos + 3];
        if pos + 9 + len > buf.len() {
            break;
        }
        if kind == 0x7 && len >= 8 {
            let p = &buf[pos + 9..pos + 9 + len];
            goaway_codes.push(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        pos += 9 + len;
    }
    assert!(
        goaway_codes.contains(&0xb),
        "GOAWAY(ENHANCE_YOUR_CALM) expected, got GOAWAY codes {goaway_codes:?}"
    );
    // Counted once, whichever limit tripped first: h2's own count of streams
    // reset before they were accepted, or ours of handlers cancelled. The
    // client can see the GOAWAY and the close before the server has counted
    // it (h2 flushes and shuts the socket before its accept returns the
    // error), so wait for the connection's close event, reported after the
    // count, and read the counter then.
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::Protocol(megaconn::ProtocolDetail::Http2(0xb))
    );
    assert_eq!(server.handle.stats().protocol_errors, 1);
    assert_eq!(closed_total(&server.handle, "protocol_error"), 1);

    // The server still serves, over HTTP/2 and HTTP/1.1.
    let mut client = h2c(server.addr).await;
    assert_eq!(request(&mut client, "GET", "/", None).await.status, 200);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"));
    server.stop().await;
}

/// A frame read off the wire by [`RawH2`].
#[derive(Debug)]
pub(super) struct RawFrame {
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
    pub(super) payload: Vec<u8>,
}

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_STREAM: u8 = 0x1;

/// A scripted HTTP/2 client on a real socket: it writes frames by hand and
/// reads the server's, so a test decides what it answers (or refuses to).
/// Over TCP by default; over an in-memory stream for the paused-time tests.
pub(super) struct RawH2<T = TcpStream> {
    tcp: T,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS frame, plus
    /// `then` in the same write.
    pub(super) async fn connect(addr: SocketAddr, then: &[u8]) -> RawH2 {
        RawH2::over(TcpStream::connect(addr).await.unwrap(), then).await
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawH2<T> {
    /// Sends the preface and an empty SETTINGS frame, plus `then` in the
    /// same write, on `io`.
    pub(super) async fn over(mut io: T, then: &[u8]) -> RawH2<T> {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend_from_slice(then);
        io.write_all(&hello).await.unwrap();
        RawH2 {
            tcp: io,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `None` once the server closed the connection.
    pub(super) async fn next_frame(&mut self) -> Option<RawFrame> {
        tokio::time::timeout(SAFETY, async {
            loop {
                if self.buf.len() >= 9 {
                    let len = (usize::from(self.buf[0]) << 16)
                        | (usize::from(self.buf[1]) << 8)
                        | usize::from(self.buf[2]);
                    if self.buf.len() >= 9 + len {
                        let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                        return Some(RawFrame {
                            kind: f[3],
                            flags: f[4],
                            stream: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                            payload: f[9..].to_vec(),
                        });
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("timed out waiting for a frame or the close")
    }

    /// Reads up to the server's first GOAWAY, acknowledging its SETTINGS.
    async fn until_goaway(&mut self) {
        loop {
            let f = self.next_frame().await.expect("a GOAWAY before the close");
            if self.ack_settings(&f).await {
                continue;
            }
            if f.kind == GOAWAY {
                return;
            }
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed; the reads tell.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Acknowledges the server's SETTINGS; true if `f` was one.
    pub(super) async fn ack_settings(&mut self, f: &RawFrame) -> bool {
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            self.send(&frame(SETTINGS, ACK, 0, &[])).await;
            return true;
        }
        false
    }
}

/// A HEADERS block for `GET /` (HPACK: :method GET, :scheme http, :path /,
/// then :authority "a" as a literal with an indexed name).
pub(super) const GET_ROOT: [u8; 6] = [0x82, 0x86, 0x84, 0x01, 1, b'a'];

/// Collects the server's connection events, to read close reasons.
pub(super) fn event_log(
    builder: Builder,
) -> (
    Builder,
    tokio::sync::mpsc::UnboundedReceiver<megaconn::ConnectionEvent>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let builder = builder.on_connection(move |e| {
        let _ = tx.send(e.clone());
    });
    (builder, rx)
}

/// Waits for the next connection's `Closed` event; returns its reason.
pub(super) async fn close_reason(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<megaconn::ConnectionEvent>,
) -> megaconn::CloseReason {
    tokio::time::timeout(SAFETY, async {
        loop {
            let event = events.recv().await.expect("server gone");
            if let megaconn::ConnectionEvent::Closed { reason, .. } = event {
                return reason;
            }
        }
    })
    .await
    .expect("timed out waiting for the close event")
}

/// The value of `megaconn_connections_closed_total{reason}` in the exposition.
pub(super) fn closed_total(handle: &ServerHandle, reason: &str) -> u64 {
    let text = handle.render_metrics();
    let prefix = format!("megaconn_connections_closed_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_and_is_closed() {
    let (builder, mut events) =
        event_log(megaconn::Server::builder().idle_timeout(Some(Duration::from_millis(100))));
    let server = start(builder).await;
    // One request first: the idle timer counts from the last open stream.
    let mut client =
        RawH2::connect(server.addr, &frame(HEADERS, END_STREAM | 0x4, 1, &GET_ROOT)).await;
    let mut status_200 = false;
    let mut response_done = false;
    let mut goaways = Vec::new();
    while let Some(f) = client.next_frame().await {
        if client.ack_settings(&f).await {
            continue;
        }
        match f.kind {
            // Answered, so that only the idle timeout can close it.
            PING if f.flags & ACK == 0 => client.send(&frame(PING, ACK, 0, &f.payload)).await,
            HEADERS if f.stream == 1 => status_200 = f.payload.first() == Some(&0x88),
            DATA if f.stream == 1 => response_done |= f.flags & END_STREAM != 0,
            GOAWAY => {
                let p = &f.payload;
                let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                goaways.push((last, code));
            }
            _ => {}
        }
    }
    assert!(
        status_200 && response_done,
        "the request was answered first"
    );
    let &(last, code) = goaways.last().expect("a GOAWAY before the close");
    assert_eq!(code, 0, "GOAWAY(NO_ERROR): {goaways:?}");
    assert_eq!(last, 1, "the final GOAWAY names the last stream served");
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::IdleTimeout
    );
    assert_eq!(closed_total(&server.handle, "idle_timeout"), 1);

    // A connection that never opens a stream is idle from its handshake on.
    let mut silent = RawH2::connect(server.addr, &[]).await;
    let mut goaways = Vec::new();
    while let Some(f) = silent.next_frame().await {
        if silent.ack_settings(&f).await {
            continue;
        }
        match f.kind {
            PING if f.flags & ACK == 0 => silent.send(&frame(PING, ACK, 0, &f.payload)).await,
            GOAWAY => goaways.push(f.payload[..8].to_vec()),
            _ => {}
        }
    }
    assert_eq!(
        goaways.last().map(Vec::as_slice),
        Some(&[0u8; 8][..]),
        "the final GOAWAY: no stream served, NO_ERROR"
    );
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::IdleTimeout
    );
    assert_eq!(closed_total(&server.handle, "idle_timeout"), 2);
    assert!(server.handle.stats().timeouts >= 2);
    server.stop().await;
}

/// Keep-alive PINGs on a real server. The timeouts are such that no stall
/// of this test can fail it: the live peer has a keep-alive timeout far
/// longer than any stall (whether an answering peer outlives a short timeout
/// is checked on paused time below), and the dead peer never answers, so a
/// stall only delays its close.
#[tokio::test]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_closed() {
    // A live peer answers: the server keeps pinging, one PING after another
    // answered one, and the connection stays open.
    let (builder, mut events) = event_log(
        megaconn::Server::builder()
            .idle_timeout(None)
            .http2_keep_alive_interval(Some(Duration::from_millis(20)))
            .http2_keep_alive_timeout(SAFETY),
    );
    let server = start(builder).await;
    let mut live = RawH2::connect(server.addr, &[]).await;
    let mut pings = 0;
    while pings < 3 {
        let f = live.next_frame().await.expect("a live peer is not closed");
        if live.ack_settings(&f).await {
            continue;
        }
        assert_ne!(f.kind, GOAWAY, "a live peer gets no GOAWAY: {f:?}");
        if f.kind == PING && f.flags & ACK == 0 {
            pings += 1;
            live.send(&frame(PING, ACK, 0, &f.payload)).await;
        }
    }
    drop(live);
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::ClientClosed
    );
    assert_eq!(server.handle.stats().timeouts, 0);
    server.stop().await;

    // A dead peer never answers: after the first PING's timeout the server
    // closes the connection.
    let (builder, mut events) = event_log(
        megaconn::Server::builder()
            .idle_timeout(None)
            .http2_keep_alive_interval(Some(Duration::from_millis(20)))
            .http2_keep_alive_timeout(Duration::from_millis(100)),
    );
    let server = start(builder).await;
    let mut dead = RawH2::connect(server.addr, &[]).await;
    let mut pings = 0;
    while let Some(f) = dead.next_frame().await {
        if dead.ack_settings(&f).await {
            continue;
        }
        if f.kind == PING && f.flags & ACK == 0 {
            pings += 1;
        }
    }
    assert_eq!(pings, 1, "one PING, unanswered, then the close");
    // A failed liveness check, not a socket error.
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::HeartbeatTimeout
    );
    assert_eq!(closed_total(&server.handle, "heartbeat_timeout"), 1);
    assert_eq!(closed_total(&server.handle, "io_error"), 0);
    assert_eq!(server.handle.stats().timeouts, 1);
    server.stop().await;
}

/// The keep-alive timing on paused tokio time, over an in-memory stream
/// (the clock moves only when both ends wait, so machine speed does not
/// matter): a peer that answers every PING stays open for many times the
/// timeout; one that does not is closed one interval plus one timeout after
/// the handshake, after exactly one PING.
#[tokio::test(start_paused = true)]
async fn keep_alive_on_paused_time_spares_a_live_peer_and_closes_a_dead_one() {
    const EVERY: Duration = Duration::from_millis(20);
    const TIMEOUT: Duration = Duration::from_millis(100);
    let serve = || {
        let (client, server_end) = tokio::io::duplex(64 * 1024);
        let builder = megaconn::Server::builder()
            .idle_timeout(None)
            .http2_keep_alive_interval(Some(EVERY))
            .http2_keep_alive_timeout(TIMEOUT);
        let service = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(full(StatusCode::OK, "hi"))
        });
        tokio::task::spawn_local(
            async move { builder.serve_connection(server_end, service).await },
        );
        client
    };
    tokio::task::LocalSet::new()
        .run_until(async {
            let mut live = RawH2::over(serve(), &[]).await;
            let since = tokio::time::Instant::now();
            let mut pings = 0;
            while pings < 50 {
                let f = live.next_frame().await.expect("a live peer is not closed");
                if live.ack_settings(&f).await {
                    continue;
                }
                assert_ne!(f.kind, GOAWAY, "a live peer gets no GOAWAY: {f:?}");
                if f.kind == PING && f.flags & ACK == 0 {
                    pings += 1;
                    live.send(&frame(PING, ACK, 0, &f.payload)).await;
                }
            }
            // 50 PINGs, one per interval: the connection lived 10 timeouts.
            assert!(since.elapsed() >= 50 * EVERY, "{:?}", since.elapsed());

            let mut dead = RawH2::over(serve(), &[]).await;
            let since = tokio::time::Instant::now();
            let mut pings = 0;
            while let Some(f) = dead.next_frame().await {
                if dead.ack_settings(&f).await {
                    continue;
                }
                if f.kind == PING && f.flags & ACK == 0 {
                    pings += 1;
                }
            }
            let lived = since.elapsed();
            assert_eq!(pings, 1, "one PING, unanswered, then the close");
            assert!(lived >= EVERY + TIMEOUT, "closed after {lived:?}");
            assert!(lived < EVERY + 2 * TIMEOUT, "closed after {lived:?}");
            drop(live);
        })
        .await;
}

const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
/// GOAWAY and RST_STREAM code for "you are abusing the protocol".
pub(super) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Tiny (under 16-byte) DATA frames a paced flood sends at most before the
/// test gives up on the close: what `DataFloodGuard`'s lifetime allowance
/// let a connection's handlers read until session 42 (the tiny-DATA
/// budget, [`HTTP2_TINY_DATA_BUDGET`], comes well before it).
const PACED_FLOOD_CAP: usize = 10_000;

/// A HEADERS block for `POST /frames` (HPACK: :method POST, :scheme http,
/// :path "/frames" as a literal with an indexed name, :authority "a").
const POST_FRAMES: [u8; 14] = [
    0x83, 0x86, 0x04, 7, b'/', b'f', b'r', b'a', b'm', b'e', b's', 0x01, 1, b'a',
];

/// The GOAWAY error codes among `frames`.
pub(super) fn goaway_codes(frames: &[RawFrame]) -> Vec<u32> {
    frames
        .iter()
        .filter(|f| f.kind == GOAWAY && f.payload.len() >= 8)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
        .collect()
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawH2<T> {
    /// Every frame until the server closes the connection.
    pub(super) async fn frames_until_close(&mut self) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }

    /// Writes `batch` again and again, up to `cap` bytes in all, until a
    /// write fails because the server closed the connection. Returns the
    /// bytes written before that, or `None` if all `cap` went through.
    pub(super) async fn flood(&mut self, batch: &[u8], cap: usize) -> Option<usize> {
        let mut sent = 0;
        while sent < cap {
            if self.tcp.write_all(batch).await.is_err() {
                return Some(sent);
            }
            sent += batch.len();
        }
        None
    }
}

/// Most bytes a flooding client may get through before the server closes
/// its connection: what h2 lets a header block carry (a few frames) plus
/// what the two kernels' socket buffers hold on loopback.
const FLOOD_BYTES_BOUND: usize = 8 << 20;

/// A header field `x: <value>` as an HPACK literal without indexing, with a
/// value of `len` bytes (`len` < 2^21).
fn literal_field(len: usize) -> Vec<u8> {
    let mut f = vec![0x00, 1, b'x'];
    // The value length: a 7-bit prefix integer (RFC 7541, 5.1).
    if len < 127 {
        f.push(len as u8);
    } else {
        f.push(0x7f);
        let mut rest = len - 127;
        while rest >= 128 {
            f.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        f.push(rest as u8);
    }
    f.extend(std::iter::repeat_n(b'v', len));
    f
}

/// Opens stream 1 with a HEADERS frame without END_HEADERS (`first` as its
/// block), then sends CONTINUATION frames carrying `each`, none with
/// END_HEADERS, until the server closes the connection. Checks that it
/// closed within [`FLOOD_BYTES_BOUND`] with `GOAWAY(ENHANCE_YOUR_CALM)` and
/// h2's `debug` data naming the limit, that it counted a protocol error, and
/// that it still serves.
async fn continuation_flood(first: &[u8], each: &[u8], debug: &str) {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let mut attacker = RawH2::connect(server.addr, &frame(HEADERS, END_STREAM, 1, first)).await;
    // A few frames per write, so that the close is seen soon after it came.
    let batch: Vec<u8> = (0..8)
        .flat_map(|_| frame(CONTINUATION, 0, 1, each))
        .collect();
    let sent = attacker.flood(&batch, 16 * FLOOD_BYTES_BOUND).await;
    let sent = sent.expect("the server never closed the connection");
    assert!(
        sent <= FLOOD_BYTES_BOUND,
        "{sent} bytes of CONTINUATION went through before the close"
    );
    let frames = attacker.frames_until_close().await;
    assert_eq!(
        goaway_codes(&frames),
        [ENHANCE_YOUR_CALM],
        "GOAWAY(ENHANCE_YOUR_CALM) before the close"
    );
    let (_, data) = goaway(&frames).unwrap();
    assert_eq!(String::from_utf8_lossy(&data), debug, "h2's limit");
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::Protocol(megaconn::ProtocolDetail::Http2(0xb))
    );
    assert_eq!(closed_total(&server.handle, "protocol_error"), 1);
    assert_eq!(server.handle.stats().protocol_errors, 1);
    assert_eq!(server.handle.stats().requests, 0, "no request started");

    let mut client = h2c(server.addr).await;
    assert_eq!(request(&mut client, "GET", "/", None).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_continuation_flood_of_small_frames_gets_goaway_and_the_server_stays_healthy() {
    // `x: y` per frame: the header list stays tiny, the frames never end.
    continuation_flood(&GET_ROOT, &literal_field(1), "too_many_continuations").await;
}

#[tokio::test]
async fn a_continuation_flood_past_the_header_list_limit_gets_goaway() {
    // Full frames (16,000-byte values): the block passes the 64 KiB header
    // list limit on the fifth, which h2 takes (a 431 would follow the block);
    // the sixth is one CONTINUATION too many for a block of that limit.
    continuation_flood(&GET_ROOT, &literal_field(16_000), "too_many_continuations").await;
}

#[tokio::test]
async fn an_hpack_bomb_in_continuations_gets_goaway() {
    // A 4,000-byte value in the dynamic table, then frames of one-byte
    // references to it: 64 bytes on the wire decode to 250 KiB of headers.
    let mut first = GET_ROOT.to_vec();
    // `x: <4000 bytes>`, literal with incremental indexing (new name).
    let mut insert = literal_field(4000);
    insert[0] = 0x40;
    first.extend(insert);
    // Index 62: the newest dynamic table entry.
    continuation_flood(&first, &[0x80 | 62; 64], "header_list_way_too_large").await;
}

/// The GOAWAY among `frames`: its error code and debug data.
fn goaway(frames: &[RawFrame]) -> Option<(u32, Vec<u8>)> {
    frames.iter().find(|f| f.kind == GOAWAY).map(|f| {
        let p = &f.payload;
        (
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            p[8..].to_vec(),
        )
    })
}

/// Checks the end of a DATA flood: a `GOAWAY(ENHANCE_YOUR_CALM)` carrying
/// `debug` (h2 names its own limits there; ours sends none), the close
/// counted as a protocol error, and the server still serving.
async fn after_data_flood(
    server: Running,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<megaconn::ConnectionEvent>,
    frames: &[RawFrame],
    debug: &str,
) {
    let (code, data) = goaway(frames).expect("a GOAWAY before the close");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert_eq!(String::from_utf8_lossy(&data), debug, "whose limit tripped");
    assert_eq!(
        close_reason(events).await,
        megaconn::CloseReason::Protocol(megaconn::ProtocolDetail::Http2(0xb))
    );
    assert_eq!(closed_total(&server.handle, "protocol_error"), 1);
    assert_eq!(server.handle.stats().protocol_errors, 1);
    let mut client = h2c(server.addr).await;
    assert_eq!(request(&mut client, "GET", "/", None).await.status, 200);
    server.stop().await;
}

/// The attack h2 does not stop by itself: tiny DATA frames nobody reads,
/// on a stream reset before h2's own budget for frames buffered unread
/// runs out (h2 gives it back when it frees the stream's buffer), then
/// the same on a new stream, and so on. 1-byte DATA frames to `/hang`
/// (whose handler never reads its body), 500 a stream in batches of 100
/// and a PING (lockstep: the next batch once the PING is answered), then
/// `RST_STREAM(CANCEL)`. The tiny-DATA budget closes the connection once
/// [`HTTP2_TINY_DATA_BUDGET`] such frames went unread (and what time gave
/// back, 1,000 a second), and not before; without it the connection is
/// still open after 10,000 (20 streams, under the rapid-reset guard's
/// 100). Until session 45 this flood went to `/frames`, whose handler
/// reads each frame: the budget no longer counts those, a handler that
/// reads them having done the work they were sent for
/// (`h2_tiny_data.rs`).
#[tokio::test]
async fn a_paced_small_data_flood_is_cut_by_our_guard() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let mut attacker = RawH2::connect(server.addr, &[]).await;
    const BATCH: usize = 100;
    const PER_STREAM: usize = 500;
    // :method POST, :path "/hang": a handler that never reads its body.
    let hang = [
        0x83, 0x86, 0x04, 5, b'/', b'h', b'a', b'n', b'g', 0x01, 1, b'a',
    ];
    let mut sent = 0;
    let mut seen = Vec::new();
    let mut stream = 1;
    // 10,000 bytes at most: within the windows.
    'flood: while sent < PACED_FLOOD_CAP {
        let mut batch = Vec::new();
        if sent % PER_STREAM == 0 {
            if sent > 0 {
                batch.extend(frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
                stream += 2;
            }
            batch.extend(frame(HEADERS, END_HEADERS, stream, &hang));
        }
        for _ in 0..BATCH {
            batch.extend(frame(DATA, 0, stream, b"x"));
        }
        batch.extend(frame(PING, 0, 0, b"lockstep"));
        attacker.send(&batch).await;
        sent += BATCH;
        loop {
            let Some(f) = attacker.next_frame().await else {
                break 'flood;
            };
            if attacker.ack_settings(&f).await {
                continue;
            }
            let answered = f.kind == PING && f.flags & ACK != 0;
            let gone = f.kind == GOAWAY;
            seen.push(f);
            if gone {
                break 'flood;
            }
            if answered {
                break;
            }
        }
    }
    assert!(
        sent < PACED_FLOOD_CAP,
        "still open after {sent} tiny frames on {} streams",
        stream.div_ceil(2)
    );
    assert!(
        sent > HTTP2_TINY_DATA_BUDGET as usize,
        "closed after only {sent} tiny frames"
    );
    seen.extend(attacker.frames_until_close().await);
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), 1, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    after_data_flood(server, &mut events, &seen, "").await;
}

/// A burst of 1-byte DATA frames to a handler that does not read them: cut
/// at ~2,000 frames by whichever budget runs out first, ours at the wire
/// ([`HTTP2_TINY_DATA_BUDGET`] and what time gave back since the
/// connection began, `http2_data_flood`) or h2's for small frames buffered
/// unread (half the connection window, ~2,050 such frames with our 1 MiB;
/// `too_many_data_frames`, `h2_enhance_your_calm`): ours, unless the
/// connection waited ~50 ms before its burst.
#[tokio::test]
async fn a_burst_of_unread_small_data_frames_is_cut() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    // :path "/hang": a handler that never reads its body.
    let block = [
        0x83, 0x86, 0x04, 5, b'/', b'h', b'a', b'n', b'g', 0x01, 1, b'a',
    ];
    let mut attacker = RawH2::connect(server.addr, &frame(HEADERS, END_HEADERS, 1, &block)).await;
    let batch: Vec<u8> = (0..1000).flat_map(|_| frame(DATA, 0, 1, b"x")).collect();
    // 10,000 bytes of body at most: within the windows.
    let _ = attacker.flood(&batch, 10 * batch.len()).await;
    let frames = attacker.frames_until_close().await;
    let (_, debug) = goaway(&frames).expect("a GOAWAY before the close");
    let debug = String::from_utf8(debug).unwrap();
    let ours = debug.is_empty();
    assert!(ours || debug == "too_many_data_frames", "{debug:?}");
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), u64::from(ours));
    after_data_flood(server, &mut events, &frames, &debug).await;
}

/// Empty DATA frames never reach a handler (h2 drops them before queueing)
/// and h2 allows a connection 100 of them: our guard holds each read to
/// what is left of that count and closes the connection itself at the
/// frame that would trip h2 (since session 54: before, h2's own GOAWAY,
/// "too_many_data_frames", came first), so the close is ours, counted
/// `http2_data_flood` (`lifecycle/h2_empty54.rs` checks its line).
#[tokio::test]
async fn an_empty_data_flood_is_cut_by_our_guard_before_h2s_count() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let mut attacker =
        RawH2::connect(server.addr, &frame(HEADERS, END_HEADERS, 1, &POST_FRAMES)).await;
    let batch: Vec<u8> = (0..100).flat_map(|_| frame(DATA, 0, 1, b"")).collect();
    let _ = attacker.flood(&batch, 100 * batch.len()).await;
    let frames = attacker.frames_until_close().await;
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), 1, "ours");
    after_data_flood(server, &mut events, &frames, "").await;
}

#[tokio::test]
async fn bodies_in_many_frames_arrive_intact() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;

    // 100 KiB in 1 KiB frames.
    let chunks: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 1024])).collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let a = request(&mut client, "POST", "/echo", Some(chunks)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body, expected,
        "100 KiB in 1 KiB frames comes back intact"
    );

    // A gRPC-like stream: 2,000 messages of 20 bytes, one frame each.
    let chunks: Vec<Bytes> = (0..2000u32)
        .map(|i| Bytes::from(format!("message {i:>12}")))
        .collect();
    assert!(chunks.iter().all(|c| c.len() == 20));
    let hash = chunks.iter().fold(FNV_OFFSET, |h, c| fnv1a(h, c));
    let a = request(&mut client, "POST", "/frames", Some(chunks)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        format!("frames=2000 bytes=40000 hash={hash:x}"),
        "2,000 frames of 20 bytes arrive intact, one by one"
    );

    // Tiny frames (an empty gRPC message is 5 bytes) pass too. Sent in one
    // burst, they are within h2's budget for small frames waiting to be
    // read (~2,000 of 5 bytes).
    let chunks: Vec<Bytes> = (0..1000u32)
        .map(|i| Bytes::from(format!("{i:>5}")))
        .collect();
    let hash = chunks.iter().fold(FNV_OFFSET, |h, c| fnv1a(h, c));
    let a = request(&mut client, "POST", "/frames", Some(chunks)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, format!("frames=1000 bytes=5000 hash={hash:x}"));

    assert_eq!(server.handle.stats().protocol_errors, 0);
    server.stop().await;
}

/// A body declared over `max_body_bytes` gets 413 at once, and a client still
/// uploading can finish: the rest of the body is read and discarded (up to
/// `max_drain_bytes`, as on HTTP/1.1), so the stream ends cleanly and the
/// client reads the 413 as a response (curl reports a transfer failure on an
/// early reset, even `NO_ERROR`).
#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_the_upload_may_finish() {
    let server = start(megaconn::Server::builder().max_body_bytes(1024)).await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let req = Request::post("http://t/echo")
        .header("content-length", "65536")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The upload goes on to its end; the server's window lets it through.
    let mut left = 65536usize;
    while left > 0 {
        send.reserve_capacity(left);
        let room = tokio::time::timeout(SAFETY, std::future::poll_fn(|cx| send.poll_capacity(cx)))
            .await
            .expect("the server keeps the window open")
            .expect("stream open")
            .expect("capacity");
        let n = room.min(left);
        left -= n;
        send.send_data(Bytes::from(vec![0u8; n]), left == 0)
            .unwrap();
    }
    // No reset: the stream ends cleanly.
    let reset = tokio::time::timeout(
        Duration::from_millis(0),
        std::future::poll_fn(|cx| send.poll_reset(cx)),
    )
    .await;
    assert!(
        !matches!(reset, Ok(Ok(r)) if r != h2::Reason::NO_ERROR),
        "{reset:?}"
    );
    assert_eq!(server.handle.stats().protocol_errors, 1);
    server.stop().await;
}

/// A request refused before any service saw it (413 for a Content-Length
/// over `max_body_bytes`, 431 for more fields than `max_headers`) is
/// counted once, as HTTP/1.1 counts a refused head: in `requests_refused`
/// (and `protocol_errors`, and `megaconn_requests_total` with its status),
/// not in `requests`, which counts the requests handed to the service. It
/// was counted in both (fails so: "requests: 3").
#[tokio::test]
async fn a_refused_request_is_counted_once() {
    let server = start(
        megaconn::Server::builder()
            .max_body_bytes(1024)
            .max_headers(4),
    )
    .await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let too_long = Request::post("http://t/echo")
        .header("content-length", "65536")
        .body(())
        .unwrap();
    let mut too_many = Request::get("http://t/");
    for name in ["a", "b", "c", "d", "e"] {
        too_many = too_many.header(name, "1");
    }
    for (req, status) in [
        (too_long, StatusCode::PAYLOAD_TOO_LARGE),
        (
            too_many.body(()).unwrap(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (Request::get("http://t/").body(()).unwrap(), StatusCode::OK),
    ] {
        client = client.ready().await.unwrap();
        // The upload announced is not sent (its stream kept open).
        let end = req.method() != http::Method::POST;
        let (resp, _upload) = client.send_request(req, end).unwrap();
        let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), status);
    }
    let stats = server.handle.stats();
    assert_eq!(stats.requests, 1, "requests: {}", stats.requests);
    assert_eq!(stats.requests_refused, 2, "{stats:?}");
    assert_eq!(stats.protocol_errors, 2, "{stats:?}");
    assert_eq!(limit_hits(&stats, "max_body_bytes"), 1, "{stats:?}");
    assert_eq!(limit_hits(&stats, "max_headers"), 1, "{stats:?}");
    let text = server.handle.render_metrics();
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("megaconn_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 3.0, "each request once, its status:\n{text}");
    server.stop().await;
}

/// A response's whole body as text (its window given back as it comes).
async fn text_of(resp: Response<h2::RecvStream>) -> String {
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Posts to `path` a request announcing a body of 1,000 bytes and sending
/// none (its stream kept open until the answer); returns the answer.
async fn post_no_data(
    client: &mut h2::client::SendRequest<Bytes>,
    path: &str,
) -> Response<h2::RecvStream> {
    let req = Request::post(format!("http://t{path}"))
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (resp, _send) = client.send_request(req, false).unwrap();
    tokio::time::timeout(SAFETY, resp)
        .await
        .expect("the body's read was never cut")
        .unwrap()
}

/// `read_timeout` bounds an HTTP/2 request body as it does HTTP/1.1's: a
/// client that sends the head and then no DATA makes the handler's read fail
/// (`/frames` answers 400 with the error), counted as a timeout. Unbounded,
/// the stream waited for good.
#[tokio::test]
async fn read_timeout_fails_a_stalled_request_body() {
    let server =
        start(megaconn::Server::builder().read_timeout(Some(Duration::from_millis(100)))).await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let resp = post_no_data(&mut client, "/frames").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        text_of(resp).await,
        "body error: request body read timed out"
    );
    assert_eq!(server.handle.stats().timeouts, 1);

    // A reader that goes on after the error finds the body's end, instead
    // of waiting for the client that stalled.
    let resp = post_no_data(&mut client, "/read-on").await;
    assert_eq!(
        text_of(resp).await,
        "errors: [\"request body read timed out\"]"
    );
    server.stop().await;
}

/// With `read_timeout` off, `idle_timeout` bounds a handler's wait for
/// request DATA: a client that sends a head announcing a body and then no
/// DATA makes the read fail (`/frames` answers 400 with the error), counted
/// as a timeout. Unbounded, the stream, and its connection (not idle while
/// a stream is open), were held for good.
#[tokio::test]
async fn idle_timeout_fails_a_request_body_that_never_comes() {
    let server =
        start(megaconn::Server::builder().idle_timeout(Some(Duration::from_millis(300)))).await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let resp = post_no_data(&mut client, "/frames").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        text_of(resp).await,
        "body error: request body read timed out"
    );
    // Counted once, with the idle close that follows (its timer starts
    // when the stream ends): read after that close, not raced against it.
    common::wait_stats(&server.handle, "the idle close", |s| {
        s.connections_open == 0
    })
    .await;
    assert_eq!(server.handle.stats().timeouts, 2);
    server.stop().await;
}

/// A slow but steady upload, one small DATA frame every 100 ms for longer
/// than `idle_timeout` (1 s), is not cut: each frame restarts the bound.
/// (The bound is ten times the pace, as on HTTP/1.1: at 300 ms a test
/// held back 250 ms between two frames was cut.)
///
/// A cut is a failure only if no two frames left the client more than
/// half the bound apart: a machine that stalls the test for a second
/// between two frames makes the upload one that was not steady, and the
/// cut right (the attempt says nothing, and another is made).
#[tokio::test]
async fn idle_timeout_spares_a_slow_but_steady_upload() {
    common::until_it_can_judge(3, slow_but_steady_upload).await;
}

/// One attempt of [`idle_timeout_spares_a_slow_but_steady_upload`]: `Ok`
/// if the upload was served whole; `Err` if it was cut and the client was
/// held back for half the bound between two frames; panics if it was cut
/// though every gap was shorter.
async fn slow_but_steady_upload() -> Result<(), String> {
    const IDLE: Duration = Duration::from_secs(1);
    let server = start(megaconn::Server::builder().idle_timeout(Some(IDLE))).await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let req = Request::post("http://t/frames").body(()).unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let frames = 15;
    // The longest gap between two frames (or the head and the first), as
    // sent: the client's connection task writes each as the test's task
    // sleeps, on the same thread.
    let (mut last, mut longest) = (tokio::time::Instant::now(), Duration::ZERO);
    for i in 0..frames {
        // The pace of a slow uploader (not a synchronisation).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = send.send_data(Bytes::from_static(b"0123456789"), i + 1 == frames);
        let now = tokio::time::Instant::now();
        longest = longest.max(now - last);
        last = now;
        if sent.is_err() {
            // Reset: the answer says why.
            break;
        }
    }
    let answer = match tokio::time::timeout(SAFETY, resp).await.expect("answered") {
        Ok(resp) => Ok((resp.status(), text_of(resp).await)),
        Err(reset) => Err(reset),
    };
    let timeouts = server.handle.stats().timeouts;
    server.stop().await;
    if let Ok((status, text)) = &answer {
        if *status == StatusCode::OK && text.contains("bytes=150 ") && timeouts == 0 {
            return Ok(());
        }
    }
    let cut = format!("{answer:?}, {timeouts} timeouts; the longest gap {longest:?}");
    assert!(longest >= IDLE / 2, "a steady upload was cut: {cut}");
    Err(cut)
}

/// Asks `client` for `/big` (1 MiB); its answer's head says 200; returns
/// its body, unread.
async fn get_big(client: &mut h2::client::SendRequest<Bytes>) -> h2::RecvStream {
    let (resp, _) = client
        .send_request(Request::get("http://t/big").body(()).unwrap(), true)
        .unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

/// `write_timeout` bounds an HTTP/2 response body from when the handler
/// answered, as on HTTP/1.1: a client that stops opening its window (never
/// releases what it received) gets `RST_STREAM(INTERNAL_ERROR)`, as from
/// Go's server, counted as a timeout. Unbounded, the stream waited for good.
#[tokio::test]
async fn write_timeout_resets_a_stream_whose_client_stops_reading() {
    let server =
        start(megaconn::Server::builder().write_timeout(Some(Duration::from_millis(100)))).await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let mut body = get_big(&mut client).await;
    let mut received = 0usize;
    let reset = loop {
        // Read what fits in the first window, never giving it back.
        match tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(e)) => break e.reason(),
            None => panic!("the whole body came through a closed window"),
        }
    };
    assert_eq!(reset, Some(h2::Reason::INTERNAL_ERROR));
    assert!(received < 1 << 20, "{received}");
    assert_eq!(server.handle.stats().timeouts, 1);
    server.stop().await;
}

/// With `write_timeout` off, `write_stall_timeout` bounds a wait for room
/// in the client's windows: a client that keeps its stream's window shut
/// (`SETTINGS_INITIAL_WINDOW_SIZE` 0, never a `WINDOW_UPDATE`) gets
/// `RST_STREAM(CANCEL)`, counted as a timeout, and the connection, its
/// stream gone, closes by its idle timeout. Unbounded, the stream (and
/// with it the connection, whose idle timer is off while a stream is open)
/// was held for good.
#[tokio::test]
async fn write_stall_timeout_resets_a_stream_whose_client_never_opens_its_window() {
    let (builder, mut events) = event_log(
        megaconn::Server::builder()
            .write_stall_timeout(Some(Duration::from_millis(300)))
            .idle_timeout(Some(Duration::from_millis(300))),
    );
    let server = start(builder).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut body = get_big(&mut client).await;
    match tokio::time::timeout(SAFETY, body.data()).await {
        Ok(Some(Err(e))) => assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}"),
        Ok(other) => panic!("data through a shut window: {other:?}"),
        Err(_) => panic!("the stream was never reset"),
    }
    // The client keeps its handle (dropped, h2 would close the connection
    // itself): the idle timeout closes it.
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::IdleTimeout
    );
    // The reset counted once, and the idle close (read after it: its 300 ms
    // from the reset were a race for a test held back that long).
    assert_eq!(server.handle.stats().timeouts, 2);
    let _ = tokio::time::timeout(SAFETY, conn).await.expect("closed");
    drop(client);
    server.stop().await;
}

/// A client that opens its window slowly but steadily is not cut by
/// `write_stall_timeout`, though the whole response takes longer than it:
/// each grant of room starts the bound again.
#[tokio::test]
async fn write_stall_timeout_spares_a_client_that_opens_its_window_slowly() {
    let server =
        start(megaconn::Server::builder().write_stall_timeout(Some(Duration::from_millis(300))))
            .await;
    let mut client = h2c(server.addr).await.ready().await.unwrap();
    let mut body = get_big(&mut client).await;
    let began = std::time::Instant::now();
    let mut received = 0;
    while let Some(chunk) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
        let chunk = chunk.expect("not reset");
        received += chunk.len();
        // The pace of a slow reader: each frame (16 KiB) given back 15 ms
        // after it came, about 1 s for the whole MiB.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(received, 1 << 20);
    assert!(
        began.elapsed() > Duration::from_millis(300),
        "the response took longer than the bound: {:?}",
        began.elapsed()
    );
    assert_eq!(server.handle.stats().timeouts, 0);
    server.stop().await;
}

/// `max_connection_age` on paused time: an HTTP/2 connection gets its
/// GOAWAY once it is older than its limit (drawn between 90% and 100% of
/// the age), not before.
#[tokio::test(start_paused = true)]
async fn max_connection_age_sends_goaway() {
    const AGE: Duration = Duration::from_secs(2);
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let builder = megaconn::Server::builder()
        .idle_timeout(None)
        .max_connection_age(Some(AGE));
    let service = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(full(StatusCode::OK, "hi"))
    });
    tokio::task::LocalSet::new()
        .run_until(async {
            tokio::task::spawn_local(
                async move { builder.serve_connection(server_end, service).await },
            );
            let since = tokio::time::Instant::now();
            let mut h2 = RawH2::over(client, &[]).await;
            h2.until_goaway().await;
            let age = since.elapsed();
            assert!(age >= AGE.mul_f64(0.9) && age <= AGE, "{age:?}");
        })
        .await;
}

/// A service that is not ready does not freeze its connection: behind
/// `concurrency_limit(1)`, stream A holds the one permit for 100 ms and B's
/// readiness waits for it, while A is still driven to its end. Before, the
/// connection awaited B's readiness in its accept branch, A was never polled
/// again, and both waited for good.
#[tokio::test]
async fn a_service_not_ready_does_not_stall_the_streams_that_free_it() {
    let app = tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(full(StatusCode::OK, "done"))
    });
    let service = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(app);
    let server = common::AppServer::one_worker(megaconn::Server::builder(), service);
    let (addr, handle) = (server.addr(), &server.handle);
    let client = h2c(addr).await;
    let both = async {
        let (mut a, mut b) = (client.clone(), client.clone());
        tokio::join!(
            request(&mut a, "GET", "/a", None),
            request(&mut b, "GET", "/b", None)
        )
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("both streams are answered");
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(handle.stats().requests, 2);
    handle.shutdown();
}

/// A client that cancels long-lived streams after their head (a gRPC client
/// dropping watches, a browser leaving an SSE feed) is not a rapid-reset
/// attacker: 150 streams of `/endless`, each reset with `CANCEL` once its
/// head and first chunk arrived, leave the connection serving. Before, every
/// reset counted, and past 100 the connection got `GOAWAY(ENHANCE_YOUR_CALM)`.
#[tokio::test]
async fn streams_cancelled_in_their_body_do_not_trip_the_reset_guard() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    for _ in 0..150 {
        let mut c = client.clone().ready().await.expect("client ready");
        let req = Request::get("http://t/endless").body(()).unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let chunk = tokio::time::timeout(SAFETY, body.data()).await.unwrap();
        assert_eq!(chunk.unwrap().unwrap(), "tick");
        send.send_reset(h2::Reason::CANCEL);
    }
    // Every stream's end is recorded once the connection is idle again.
    let deadline = tokio::time::Instant::now() + SAFETY;
    while server.handle.stats().connections_idle != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams never ended"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let a = request(&mut client, "GET", "/", None).await;
    assert_eq!(a.status, 200, "the connection still serves");
    assert_eq!(server.handle.stats().protocol_errors, 0);
    server.stop().await;
}

/// A response body that has no data yet holds none of the connection's
/// send window (hyper #4003): while `/slow` (65,535 bytes of known length,
/// a whole default connection window) waits for its gate, `/` on the same
/// connection is answered. Before, `/slow` reserved its length before it
/// had data, h2 took it all from the connection window, and `/` waited
/// for it.
#[tokio::test]
async fn a_body_waiting_for_data_holds_no_connection_window() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    let mut c = client.clone().ready().await.unwrap();
    let (slow, _) = c
        .send_request(Request::get("http://t/slow").body(()).unwrap(), true)
        .unwrap();
    let slow = tokio::time::timeout(SAFETY, slow).await.unwrap().unwrap();
    assert_eq!(slow.headers()["content-length"], "65535");
    let hello = tokio::time::timeout(
        Duration::from_secs(5),
        request(&mut client, "GET", "/", None),
    )
    .await
    .expect("a stream answers while another's body waits");
    assert_eq!(hello.body, "Hello, World!");
    server.shared.gate.add_permits(1);
    assert_eq!(text_of(slow).await.len(), SLOW_LEN);
    server.stop().await;
}

/// A 204 has no `content-length` (RFC 9110 §8.6) and no DATA (RFC 9113
/// §8.1.1), whatever the handler's body: before, an empty one got
/// `content-length: 0` and `x` went out with `content-length: 1`.
#[tokio::test]
async fn a_204_has_no_length_and_no_body() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    for path in ["/204", "/204x"] {
        let a = request(&mut client, "GET", path, None).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert!(
            !a.headers.contains_key("content-length"),
            "{path}: {:?}",
            a.headers
        );
        assert_eq!(a.body, "", "{path}");
    }
    server.stop().await;
}

/// A handler's 1xx is interim, not an answer: 500, as on HTTP/1.1. Before,
/// it went out as the final HEADERS and the client waited for another.
#[tokio::test]
async fn an_informational_final_status_is_answered_500() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    let a = request(&mut client, "GET", "/103", None).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    server.stop().await;
}

/// A body shorter than the handler's `content-length` resets the stream
/// with `INTERNAL_ERROR`, as HTTP/1.1 closes the connection: the client
/// never takes it as whole. (A longer one is cut at that length since
/// session 56, as HTTP/1.1 and hyper cut it: `grown_file56.rs`.)
#[tokio::test]
async fn a_body_that_contradicts_its_length_resets_the_stream() {
    let server = start(megaconn::Server::builder()).await;
    let mut c = h2c(server.addr).await.ready().await.unwrap();
    let path = "/short";
    let req = Request::get(format!("http://t{path}")).body(()).unwrap();
    let (resp, _) = c.send_request(req, true).unwrap();
    // The reset may overtake the head: h2 then fails the response.
    let reset = match tokio::time::timeout(SAFETY, resp).await.unwrap() {
        Err(e) => e.reason(),
        Ok(resp) => {
            assert_eq!(resp.headers()["content-length"], "10");
            let mut body = resp.into_body();
            let mut received = 0;
            loop {
                match tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
                    Some(Ok(chunk)) => received += chunk.len(),
                    Some(Err(e)) => break e.reason(),
                    None => panic!("{path}: {received} bytes taken as the whole body"),
                }
            }
        }
    };
    assert_eq!(reset, Some(h2::Reason::INTERNAL_ERROR), "{path}");
    server.stop().await;
}

/// A response with fields HTTP/2 forbids (`te`, `connection` and the fields
/// it names) goes out without them: before, `te: gzip` made h2 refuse the
/// head and the client got a reset instead of the answer.
#[tokio::test]
async fn forbidden_response_fields_are_dropped_not_fatal() {
    let server = start(megaconn::Server::builder()).await;
    let mut client = h2c(server.addr).await;
    let a = request(&mut client, "GET", "/te", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "te");
    for name in ["te", "connection", "x-hop"] {
        assert!(!a.headers.contains_key(name), "{name}: {:?}", a.headers);
    }
    assert_eq!(a.headers["x-kept"], "1");
    server.stop().await;
}

/// After a GOAWAY of `max_connection_age` (as of a shutdown), a stream that
/// GOAWAY still admits stops the idle timer, as any stream does: on paused
/// time, the stream is answered after the idle deadline the connection had
/// when it went away. Before, the timer stayed armed once the connection
/// was going away, and at that deadline the connection closed with the
/// stream open. Once the stream is done, the connection closes, though the
/// client never acknowledges the GOAWAY's PING.
#[tokio::test(start_paused = true)]
async fn a_stream_admitted_after_goaway_outlives_the_idle_deadline() {
    const AGE: Duration = Duration::from_secs(2);
    const IDLE: Duration = Duration::from_secs(3);
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let builder = megaconn::Server::builder()
        .idle_timeout(Some(IDLE))
        .max_connection_age(Some(AGE));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let for_service = gate.clone();
    let service = tower::service_fn(move |_req: Request<Body>| {
        let gate = for_service.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            Ok::<_, Infallible>(full(StatusCode::OK, "late"))
        }
    });
    tokio::task::LocalSet::new()
        .run_until(async {
            tokio::task::spawn_local(
                async move { builder.serve_connection(server_end, service).await },
            );
            let mut h2 = RawH2::over(client, &[]).await;
            h2.until_goaway().await;
            // The first GOAWAY names stream 2^31-1: stream 1 is admitted.
            h2.send(&frame(HEADERS, END_STREAM | 0x4, 1, &GET_ROOT))
                .await;
            tokio::time::sleep(IDLE).await;
            gate.add_permits(1);
            let mut status_200 = false;
            loop {
                let f = h2
                    .next_frame()
                    .await
                    .expect("stream 1 answered before the close");
                match f.kind {
                    HEADERS if f.stream == 1 => status_200 = f.payload.first() == Some(&0x88),
                    DATA if f.stream == 1 && f.flags & END_STREAM != 0 => break,
                    _ => {}
                }
            }
            assert!(status_200);
            // This client never acknowledges the GOAWAY's PING, so h2 alone
            // would keep the connection open for good: it closes once no
            // stream was open for the grace period.
            while h2.next_frame().await.is_some() {}
        })
        .await;
}

/// A client that resets a cleartext HTTP/2 connection with no stream open
/// has left: it closes as `ClientClosed` (as an HTTP/1.1 connection between
/// requests does), not as an I/O error. A reset while a stream is open
/// (its handler still running) stays an I/O error.
#[tokio::test]
async fn a_reset_between_streams_is_a_client_close_and_midway_an_io_error() {
    let (builder, mut events) = event_log(megaconn::Server::builder().idle_timeout(None));
    let server = start(builder).await;
    let mut client =
        RawH2::connect(server.addr, &frame(HEADERS, END_STREAM | 0x4, 1, &GET_ROOT)).await;
    loop {
        let f = client.next_frame().await.expect("the response");
        if !client.ack_settings(&f).await
            && f.kind == DATA
            && f.stream == 1
            && f.flags & END_STREAM != 0
        {
            break;
        }
    }
    // No stream open: the connection counts as idle.
    let idle = |s: &megaconn::ServerStats| s.connections_idle == 1;
    common::wait_stats(&server.handle, "no stream open", idle).await;
    client.tcp.set_zero_linger().unwrap();
    drop(client);
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::ClientClosed
    );
    // A stream open: `/hang` never answers.
    let hang = [
        0x82, 0x86, 0x04, 5, b'/', b'h', b'a', b'n', b'g', 0x01, 1, b'a',
    ];
    let client = RawH2::connect(server.addr, &frame(HEADERS, END_STREAM | 0x4, 1, &hang)).await;
    // Open once its request reached the handler (`requests` counts it
    // then): a fresh connection is not idle before its first stream
    // either, and a reset that came before the HEADERS were read was a
    // `ClientClosed` under load.
    let busy = |s: &megaconn::ServerStats| {
        s.requests == 2 && s.connections_open == 1 && s.connections_idle == 0
    };
    common::wait_stats(&server.handle, "a stream open", busy).await;
    client.tcp.set_zero_linger().unwrap();
    drop(client);
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::Io(std::io::ErrorKind::ConnectionReset)
    );
    // (Each close is counted before its event.)
    assert_eq!(closed_total(&server.handle, "client_closed"), 1);
    assert_eq!(closed_total(&server.handle, "io_error"), 1);
    assert_eq!(server.handle.stats().protocol_errors, 0);
    server.stop().await;
}

/// A reset after a stream whose handler and response are done on our side,
/// but whose response h2 still queues (the client stopped reading: the
/// socket takes no more), is not "between streams": h2 still counts the
/// stream, and the close is an I/O error, not `ClientClosed` (it was: only
/// the server's own streams were looked at).
#[tokio::test]
async fn a_reset_while_h2_still_queues_a_finished_response_is_an_io_error() {
    const WINDOW_UPDATE: u8 = 0x8;
    // Small socket buffers both sides: what the client does not read stays
    // in h2's queue, not in the kernel's.
    let (builder, mut events) = event_log(
        megaconn::Server::builder()
            .idle_timeout(None)
            .send_buffer_size(Some(4096)),
    );
    let server = start(builder).await;
    // Windows open wide (flow control lets the whole 1 MiB go), then
    // `GET /big`.
    let mut then = frame(SETTINGS, 0, 0, &[0, 0x4, 0x7f, 0xff, 0xff, 0xff]);
    then.extend(frame(WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes()));
    let big = [0x82, 0x86, 0x04, 4, b'/', b'b', b'i', b'g', 0x01, 1, b'a'];
    then.extend(frame(HEADERS, END_STREAM | 0x4, 1, &big));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let mut client = RawH2::over(tcp, &then).await;
    // Read slowly until the stream's task is done (the connection counts
    // as idle again, after its first DATA frame: it was idle before the
    // request): the rest of the response is then in h2's queue.
    let mut data = 0;
    while data == 0 || server.handle.stats().connections_idle == 0 {
        let f = client.next_frame().await.expect("the response");
        client.ack_settings(&f).await;
        if f.kind == DATA {
            data += f.payload.len();
        }
    }
    assert!(data < 1 << 20, "the response is not all read: {data} bytes");
    client.tcp.set_zero_linger().unwrap();
    drop(client);
    let reason = close_reason(&mut events).await;
    assert!(matches!(reason, megaconn::CloseReason::Io(_)), "{reason:?}");
    server.stop().await;
}

/// Bytes each unread request body of [`unread_bodies_leave_the_window_to_uploads`]
/// sends: megaconn's whole stream window (256 KiB).
const UNREAD: usize = 256 * 1024;

/// Posts to `path` on `client` with the body left open; the response and
/// the body's sender.
async fn post_open(
    client: &h2::client::SendRequest<Bytes>,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut c = client.clone().ready().await.unwrap();
    let post = Request::post(format!("http://t{path}")).body(()).unwrap();
    c.send_request(post, false).unwrap()
}

/// Posts to `path` on `client` with the body left open, where the answer
/// is `/endless`'s; its body once its first chunk came, and the request
/// body's sender.
async fn post_endless(
    client: &h2::client::SendRequest<Bytes>,
    path: &str,
) -> (h2::RecvStream, h2::SendStream<Bytes>) {
    let (answer, send) = post_open(client, path).await;
    let answer = tokio::time::timeout(SAFETY, answer).await.unwrap().unwrap();
    let mut body = answer.into_body();
    let tick = tokio::time::timeout(SAFETY, body.data()).await.unwrap();
    assert_eq!(tick.unwrap().unwrap(), "tick");
    (body, send)
}

/// Uploads 2 MiB (twice megaconn's connection window, so it needs
/// `WINDOW_UPDATE`s) to `/frames` on `client`, which reads it all; panics
/// with `what` if the upload stalls.
async fn upload_beside(client: &h2::client::SendRequest<Bytes>, what: &str) {
    const UPLOAD: usize = 2 << 20;
    let (b, mut b_send) = post_open(client, "/frames").await;
    b_send
        .send_data(Bytes::from(vec![b'b'; UPLOAD]), true)
        .unwrap();
    let b = tokio::time::timeout(SAFETY, b)
        .await
        .unwrap_or_else(|_| panic!("{what}: the upload stalled"))
        .unwrap();
    assert_eq!(b.status(), StatusCode::OK, "{what}");
    let text = text_of(b).await;
    assert!(text.contains(&format!("bytes={UPLOAD} ")), "{what}: {text}");
}

/// An honest client's uploads on one connection with bodies left unread
/// beside them, against the server at `addr` (`/gated` waits for
/// `open_gate` holding its body unread, `/` answers without reading it,
/// `/frames` reads its body and answers `... bytes=N ...`). Eight rounds of:
/// stream A posts [`UNREAD`] bytes its handler never reads, stream B then
/// makes an [`upload_beside`] it, while A is still held (`/gated`) or
/// already answered (`/`); then A is answered. The unread bodies add up to
/// 2 MiB: if what they took of the connection window were not given back
/// (or given back without a `WINDOW_UPDATE`), a later B would stall.
async fn unread_bodies_leave_the_window_to_uploads(addr: SocketAddr, open_gate: impl Fn()) {
    let client = h2c(addr).await;
    for round in 0..8 {
        let path = if round % 2 == 0 { "/gated" } else { "/" };
        let (a, mut a_send) = post_open(&client, path).await;
        a_send
            .send_data(Bytes::from(vec![b'a'; UNREAD]), false)
            .unwrap();
        upload_beside(&client, &format!("round {round} ({path})")).await;
        if path == "/gated" {
            open_gate();
        }
        let a = tokio::time::timeout(SAFETY, a).await.unwrap().unwrap();
        assert_eq!(a.status(), StatusCode::OK, "round {round} ({path})");
        drop((a, a_send));
    }
}

/// Four streams whose handlers answered `/endless` (a response that never
/// ends) and dropped their request bodies unread; only then does each send
/// [`UNREAD`] bytes, so h2 gives them back as they arrive (its path for
/// DATA on a stream whose body is gone), together megaconn's whole
/// connection window (1 MiB). An [`upload_beside`] them must then
/// complete: it does only if those bytes went back to the client in a
/// connection `WINDOW_UPDATE` (the streams stay open, so no reset frees
/// them).
async fn bodies_dropped_by_open_streams_leave_the_window_to_uploads(addr: SocketAddr) {
    let client = h2c(addr).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let (body, mut a_send) = post_endless(&client, "/endless").await;
        a_send
            .send_data(Bytes::from(vec![b'a'; UNREAD]), false)
            .unwrap();
        open.push((body, a_send));
    }
    upload_beside(&client, "beside four dropped bodies").await;
    drop(open);
}

/// Bodies dropped unread while their streams stay open (the handler answered
/// with a long response) give their window back: the 1 MiB they sent is
/// returned in a connection `WINDOW_UPDATE` and an upload beside them
/// completes ([`bodies_dropped_by_open_streams_leave_the_window_to_uploads`]).
#[tokio::test]
async fn bodies_dropped_by_open_streams_do_not_stall_other_uploads() {
    let server = start(megaconn::Server::builder()).await;
    bodies_dropped_by_open_streams_leave_the_window_to_uploads(server.addr).await;
    server.stop().await;
}

/// Request bodies a handler leaves unread do not stall the connection's
/// other uploads (can an honest client stall? no): an unread body holds
/// at most its stream window (256 KiB) of the connection's 1 MiB while
/// its handler runs, and gives it back, with a `WINDOW_UPDATE`, when the
/// body drops; DATA still arriving for it after is given back by h2 as it
/// comes. Eight rounds of [`unread_bodies_leave_the_window_to_uploads`]
/// leave 2 MiB unread, and every 2 MiB upload beside them completes.
#[tokio::test]
async fn unread_request_bodies_do_not_stall_other_uploads() {
    let server = start(megaconn::Server::builder()).await;
    let shared = server.shared.clone();
    unread_bodies_leave_the_window_to_uploads(server.addr, || shared.gate.add_permits(1)).await;
    server.stop().await;
}

/// The same scenario under `axum::serve` (hyper): the reference behaviour
/// (hyper gives a body's window back when it drops).
#[tokio::test]
async fn unread_request_bodies_do_not_stall_other_uploads_under_axum_serve() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let app = axum::Router::new()
        .route(
            "/gated",
            axum::routing::post(move |body: axum::body::Body| {
                let gate = held.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    drop(body);
                    "through the gate"
                }
            }),
        )
        .route("/", axum::routing::post(|| async { "Hello, World!" }))
        .route(
            "/frames",
            axum::routing::post(|body: axum::body::Body| async move {
                let bytes = body.collect().await.unwrap().to_bytes().len();
                format!("bytes={bytes} ")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    unread_bodies_leave_the_window_to_uploads(addr, || gate.add_permits(1)).await;
    server.abort();
}

/// Bodies held unread elsewhere fill the connection window, and dropping
/// them there reopens it: four `/hold` streams, whose handlers hand their
/// unread bodies to another task until a gate opens and answer with a body
/// that never ends (so the streams stay open: no reset frees anything), are
/// each sent [`UNREAD`] bytes (the client counts them out of the window it
/// is given: together the whole 1 MiB connection window, so an upload
/// beside them gets no room from them, by design). Once the
/// [`upload_beside`] them has reached its handler (its HEADERS read, its
/// DATA waiting for room), the gates open, the other task drops the
/// bodies, and the upload completes: only a connection `WINDOW_UPDATE` sent
/// after a drop on another task can have let it through. (h2 wakes the
/// connection there, in `clear_recv_buffer`; with that wake removed this
/// still passed, so something else polls the connection too.)
#[tokio::test]
async fn bodies_dropped_on_another_task_give_the_connection_window_back() {
    let shared = Arc::new(Shared {
        together: tokio::sync::Barrier::new(8),
        gate: tokio::sync::Semaphore::new(0),
    });
    let started = Arc::new(tokio::sync::Notify::new());
    let (for_app, upload_started) = (shared.clone(), started.clone());
    let service = tower::service_fn(move |req: Request<Body>| {
        let shared = for_app.clone();
        let upload_started = upload_started.clone();
        async move {
            if req.uri().path() == "/frames" {
                upload_started.notify_one();
            }
            if req.uri().path() != "/hold" {
                return Ok::<_, Infallible>(app(req, shared).await);
            }
            let body = req.into_body();
            let gate = shared.clone();
            tokio::spawn(async move {
                gate.gate.acquire().await.unwrap().forget();
                drop(body);
            });
            let endless = Request::get("/endless").body(Body::empty()).unwrap();
            Ok(app(endless, shared).await)
        }
    });
    // The four bodies fill a 1 MiB window, which the unread budget (128
    // KiB by default since session 49) would otherwise cap.
    let builder = megaconn::Server::builder().http2_max_unread_body_bytes(1 << 20);
    let server = common::AppServer::one_worker(builder, service);
    let (addr, handle) = (server.addr(), &server.handle);
    let client = h2c(addr).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let (answer, mut a_send) = post_endless(&client, "/hold").await;
        let mut left = UNREAD;
        while left > 0 {
            a_send.reserve_capacity(left);
            let room = std::future::poll_fn(|cx| a_send.poll_capacity(cx));
            let room = tokio::time::timeout(SAFETY, room)
                .await
                .expect("room for a held body")
                .unwrap()
                .unwrap();
            let n = room.min(left);
            left -= n;
            a_send.send_data(Bytes::from(vec![b'a'; n]), false).unwrap();
        }
        held.push((answer, a_send));
    }
    let open_gates = async {
        started.notified().await;
        shared.gate.add_permits(4);
    };
    let what = "beside four bodies dropped on another task";
    tokio::join!(upload_beside(&client, what), open_gates);
    drop(held);
    handle.shutdown();
}
