//! HTTP/2 over cleartext with prior knowledge (h2c), against a real server on
//! 127.0.0.1 with the `h2` crate's client: streams, bodies, trailers, and a
//! rapid-reset attacker speaking raw frames. The idle timeout and the
//! keep-alive PING timeout are tested with a scripted raw client ([`RawH2`]),
//! which can refuse to answer PINGs as a dead peer would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use megaconn::{Body, BoxError, Builder, ServerHandle, ShutdownSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait: reached only when a test fails.
const SAFETY: Duration = Duration::from_secs(20);

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
/// `/panic` panics in the handler.
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
        "/panic" => panic!("handler panic on HTTP/2"),
        _ => full(StatusCode::NOT_FOUND, "not found"),
    }
}

struct Shared {
    together: tokio::sync::Barrier,
    gate: tokio::sync::Semaphore,
}

struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<Result<ShutdownSummary, megaconn::Error>>,
}

async fn start(builder: Builder) -> Running {
    let server = builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let shared = Arc::new(Shared {
        together: tokio::sync::Barrier::new(8),
        gate: tokio::sync::Semaphore::new(0),
    });
    let for_app = shared.clone();
    let service = tower::service_fn(move |req| {
        let shared = for_app.clone();
        async move { Ok::<_, Infallible>(app(req, shared).await) }
    });
    let task = tokio::spawn(server.serve(service));
    Running {
        addr,
        shared,
        handle,
        task,
    }
}

impl Running {
    async fn stop(self) -> ShutdownSummary {
        self.handle.shutdown();
        tokio::time::timeout(SAFETY, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap()
    }
}

/// An h2c client (prior knowledge) on a fresh connection.
async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
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
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_the_server_stays_healthy() {
    let server = start(megaconn::Server::builder()).await;
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
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;

/// A scripted HTTP/2 client on a real socket: it writes frames by hand and
/// reads the server's, so a test decides what it answers (or refuses to).
struct RawH2 {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS frame, plus
    /// `then` in the same write.
    async fn connect(addr: SocketAddr, then: &[u8]) -> RawH2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend_from_slice(then);
        tcp.write_all(&hello).await.unwrap();
        RawH2 {
            tcp,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn next_frame(&mut self) -> Option<RawFrame> {
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

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed; the reads tell.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Acknowledges the server's SETTINGS; true if `f` was one.
    async fn ack_settings(&mut self, f: &RawFrame) -> bool {
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            self.send(&frame(SETTINGS, ACK, 0, &[])).await;
            return true;
        }
        false
    }
}

/// A HEADERS block for `GET /` (HPACK: :method GET, :scheme http, :path /,
/// then :authority "a" as a literal with an indexed name).
const GET_ROOT: [u8; 6] = [0x82, 0x86, 0x84, 0x01, 1, b'a'];

/// Collects the server's connection events, to read close reasons.
fn event_log(
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
async fn close_reason(
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
fn closed_total(handle: &ServerHandle, reason: &str) -> u64 {
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

#[tokio::test]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_closed() {
    let (builder, mut events) = event_log(
        megaconn::Server::builder()
            .idle_timeout(None)
            .http2_keep_alive_interval(Some(Duration::from_millis(20)))
            .http2_keep_alive_timeout(Duration::from_millis(100)),
    );
    let server = start(builder).await;

    // A live peer answers: the server keeps pinging, one PING after another
    // answered one, and the connection stays open.
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

    // A dead peer never answers: after the first PING's timeout the server
    // closes the connection.
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
    assert_eq!(
        close_reason(&mut events).await,
        megaconn::CloseReason::Io(std::io::ErrorKind::TimedOut)
    );
    assert_eq!(closed_total(&server.handle, "io_error"), 1);
    assert!(server.handle.stats().timeouts >= 1);
    server.stop().await;
}
