//! Shared test fixtures: a test app with routes for every behaviour under test,
//! a server started on 127.0.0.1:0, a raw HTTP/1.1 response reader for tests
//! that speak bytes over a `TcpStream`, and the server's counters read as
//! tests check them (closes by reason, limit hits, TLS handshakes). The
//! message protocols' server, handler and clients are in [`msg`]; TLS's in
//! [`tls`]; gRPC's (tonic) in [`grpc`].

#![allow(dead_code)]

pub mod grpc;
pub mod logs;
pub mod modes;
pub mod msg;
pub mod netns;
mod skip;
pub mod tls;

// Not every test target skips anything (as `dead_code` above).
#[allow(unused_imports)]
pub use skip::skip;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use megaconn::{Body, BoxError, Builder, OnUpgrade, ServerHandle, ShutdownSummary};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// Upper bound for any single wait in a test: reached only when a test fails.
pub const SAFETY: Duration = Duration::from_secs(20);

pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the test app reports to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started(String),
    Finished(String),
    Cancelled(String),
}

/// The test app. Routes:
/// `/` hello · `/echo` stream the body back · `/collect` read the whole body
/// (400 on a body error) · `/ignore-body` answer without reading ·
/// `/status/N` empty response with status N · `/big/N` N bytes, one frame ·
/// `/chunked` body of unknown length ·
/// `/panic` sync panic · `/panic-async` panic inside the future ·
/// `/wait` block until `release` is notified · `/forever-body` a body that never
/// ends · `/failing-body` a body that fails after one chunk · `/upgrade` 101 then echo raw bytes
/// (any `CONNECT`, HTTP/2's tunnel: 200 then the same echo).
#[derive(Clone)]
pub struct TestApp {
    pub events: mpsc::UnboundedSender<Event>,
    pub release: Arc<Notify>,
}

pub struct AppProbe {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub release: Arc<Notify>,
}

impl AppProbe {
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(SAFETY, self.events.recv())
            .await
            .expect("timed out waiting for an app event")
            .expect("app gone")
    }
}

pub fn test_app() -> (TestApp, AppProbe) {
    let (tx, rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    (
        TestApp {
            events: tx,
            release: release.clone(),
        },
        AppProbe {
            events: rx,
            release,
        },
    )
}

pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// Sends `Cancelled` unless defused: tells the test the handler was dropped.
struct CancelGuard {
    events: mpsc::UnboundedSender<Event>,
    name: String,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.events.send(Event::Cancelled(self.name.clone()));
        }
    }
}

impl tower::Service<Request<Body>> for TestApp {
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, Infallible>>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let connect = req.method() == http::Method::CONNECT;
        if path == "/panic" {
            panic!("sync panic in call");
        }
        let events = self.events.clone();
        let release = self.release.clone();
        Box::pin(async move {
            let res = match path.as_str() {
                "/" => full(StatusCode::OK, "Hello, World!"),
                "/echo" => Response::new(req.into_body().map_err(BoxError::from).boxed_unsync()),
                "/collect" => match req.into_body().collect().await {
                    Ok(c) => full(StatusCode::OK, format!("{}", c.to_bytes().len())),
                    Err(e) => full(StatusCode::BAD_REQUEST, e.to_string()),
                },
                "/ignore-body" => full(StatusCode::OK, "ignored"),
                p if p.starts_with("/status/") => {
                    let code: u16 = p["/status/".len()..].parse().unwrap();
                    let mut r = full(StatusCode::from_u16(code).unwrap(), "");
                    r.headers_mut().insert(
                        header::CONTENT_LENGTH,
                        header::HeaderValue::from_static("0"),
                    );
                    r
                }
                p if p.starts_with("/big/") => {
                    let n: usize = p["/big/".len()..].parse().unwrap();
                    full(StatusCode::OK, vec![b'x'; n])
                }
                "/chunked" => {
                    let chunks = ["one,", "two,", "three"]
                        .into_iter()
                        .map(|c| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(c))));
                    Response::new(
                        StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync(),
                    )
                }
                "/panic-async" => panic!("panic inside the handler future"),
                "/wait" => {
                    let mut guard = CancelGuard {
                        events: events.clone(),
                        name: path.clone(),
                        armed: true,
                    };
                    let _ = events.send(Event::Started(path.clone()));
                    // Pending at least once, whenever `release` comes: the
                    // test may notify before this awaits (Notify keeps the
                    // permit), and a handler that never waits is no test
                    // of a wait (tests/integration/park.rs: a woken one becomes a task).
                    tokio::task::yield_now().await;
                    release.notified().await;
                    guard.armed = false;
                    let _ = events.send(Event::Finished(path.clone()));
                    full(StatusCode::OK, "released")
                }
                "/failing-body" => {
                    let chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
                        Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
                        Err("the body source failed".into()),
                    ];
                    Response::new(
                        StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync(),
                    )
                }
                "/forever-body" => Response::new(
                    StreamBody::new(futures_util::stream::pending::<
                        Result<http_body::Frame<Bytes>, BoxError>,
                    >())
                    .boxed_unsync(),
                ),
                "/peer" => {
                    // Both ways a handler can learn its client's address.
                    let ours = req.extensions().get::<megaconn::ConnInfo>().map(|i| i.peer);
                    let axum = req
                        .extensions()
                        .get::<axum::extract::ConnectInfo<SocketAddr>>()
                        .map(|c| c.0);
                    match (ours, axum) {
                        (Some(a), Some(b)) if a == b => full(StatusCode::OK, a.to_string()),
                        other => full(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")),
                    }
                }
                p if p == "/upgrade" || connect => {
                    let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
                    match on_upgrade {
                        Some(on_upgrade) => {
                            tokio::task::spawn_local(async move {
                                let mut io = on_upgrade.await.expect("upgraded");
                                let mut buf = [0u8; 64];
                                loop {
                                    let n = io.read(&mut buf).await.unwrap_or(0);
                                    if n == 0 {
                                        break;
                                    }
                                    io.write_all(&buf[..n]).await.unwrap();
                                }
                            });
                            if connect {
                                return Ok(full(StatusCode::OK, ""));
                            }
                            let mut r = full(StatusCode::SWITCHING_PROTOCOLS, "");
                            r.headers_mut()
                                .insert(header::UPGRADE, header::HeaderValue::from_static("echo"));
                            r
                        }
                        None => full(StatusCode::BAD_REQUEST, "not an upgrade request"),
                    }
                }
                _ => full(StatusCode::NOT_FOUND, "not found"),
            };
            Ok(res)
        })
    }
}

/// Asserts that `handle` counted `counted` WebSocket limit hits, messages
/// then frames over their limits, in its stats and in its `/metrics` text
/// (`setting` names the case in the failure).
pub fn assert_ws_limit_hits(handle: &ServerHandle, setting: &str, counted: [u64; 2]) {
    let stats = handle.stats();
    let metrics = handle.render_metrics();
    for (label, n) in ["ws_message_too_big", "ws_frame_too_big"]
        .into_iter()
        .zip(counted)
    {
        assert!(
            stats.limit_hits.contains(&(label, n)),
            "{setting}: {label} {n}: {:?}",
            stats.limit_hits
        );
        let metric = format!("megaconn_limit_hits_total{{limit=\"{label}\"}} {n}");
        assert!(metrics.lines().any(|l| l == metric), "{setting}: {metrics}");
    }
}

/// The next thing `rx` gets (bounded by [`SAFETY`]; `what` names it in
/// the failure): a handler's report (an open, a close, a busy handler)
/// awaited as the signal it is.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(SAFETY, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("{what}: its sender is gone"))
}

/// Waits (bounded by [`SAFETY`]) until `handle`'s counters satisfy `cond`:
/// a poll of a condition, never a fixed sleep standing in for one.
pub async fn wait_stats(
    handle: &ServerHandle,
    what: &str,
    cond: impl Fn(&megaconn::ServerStats) -> bool,
) {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        let s = handle.stats();
        if cond(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How many connections of `stats` closed with `reason` (the label of
/// `megaconn_connections_closed_total`).
pub fn closed_as(stats: &megaconn::ServerStats, reason: &str) -> u64 {
    stats
        .request_metrics
        .closed_by_reason
        .iter()
        .find(|(label, _)| *label == reason)
        .map_or(0, |(_, n)| *n)
}

/// The count of limit `label` in `stats` (`megaconn_limit_hits_total`).
pub fn limit_hits(stats: &megaconn::ServerStats, label: &str) -> u64 {
    let hit = stats.limit_hits.iter().find(|(l, _)| *l == label);
    hit.unwrap_or_else(|| panic!("no limit {label} in {:?}", stats.limit_hits))
        .1
}

/// The count of TLS handshakes that ended as `outcome`
/// (`megaconn_tls_handshakes_total`).
pub fn handshakes(stats: &megaconn::ServerStats, outcome: &str) -> u64 {
    let found = stats.tls_handshakes.iter().find(|(o, _)| *o == outcome);
    found
        .unwrap_or_else(|| panic!("no {outcome} in {:?}", stats.tls_handshakes))
        .1
}

/// A slow but steady reader's pace: [`STEADY_CHUNK`] every [`STEADY_EVERY`]
/// (100 KiB/s): slow against a socket buffer that autotunes to megabytes
/// (the third of it that must drain before tokio writes again takes ~9 s
/// at this pace), and never more than 10 ms from its next read.
pub const STEADY_CHUNK: usize = 1 << 10;
/// See [`STEADY_CHUNK`].
pub const STEADY_EVERY: Duration = Duration::from_millis(10);

/// Reads `s` as a slow but steady reader for `lasting`: a read of at most
/// [`STEADY_CHUNK`] every [`STEADY_EVERY`], by a schedule fixed at the
/// start, so a reader the machine did not run for a while catches up
/// rather than falls further behind. `Ok(read)`: the bytes it read;
/// `Err(read)`: the stream ended (or failed) after `read` bytes.
pub async fn read_steadily<R: AsyncRead + Unpin>(
    s: &mut R,
    lasting: Duration,
) -> Result<usize, usize> {
    let mut buf = vec![0u8; STEADY_CHUNK];
    let start = tokio::time::Instant::now();
    let reads = lasting.as_nanos() / STEADY_EVERY.as_nanos();
    let mut got = 0;
    for read in 0..reads as u32 {
        tokio::time::sleep_until(start + STEADY_EVERY * read).await;
        match tokio::time::timeout(SAFETY, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => return Err(got),
        }
    }
    Ok(got)
}

/// Reads `s` steadily for `lasting` ([`read_steadily`]) while the server
/// writes it a backlog, and checks that the connection is still open at the
/// end: its handler reported no close on `closes`, and the server counted
/// no timeout. (Read to the end, a closed connection's last flush, up to
/// 2 s, could have fed the reader too: that it is open is what counts.)
pub async fn read_steadily_while_open<R: AsyncRead + Unpin>(
    s: &mut R,
    lasting: Duration,
    closes: &mut mpsc::UnboundedReceiver<(u64, megaconn::CloseReason)>,
    handle: &ServerHandle,
) {
    if let Err(got) = read_steadily(s, lasting).await {
        panic!("closed after {got} bytes: {:?}", closes.try_recv());
    }
    assert_eq!(closes.try_recv().ok(), None, "still open");
    assert_eq!(handle.stats().timeouts, 0);
}

/// The `SO_SNDBUF` of the server's end of `client`'s connection, read off
/// this process's own descriptors (the server runs in the test).
pub fn server_send_buffer(client: &TcpStream) -> usize {
    with_server_end(client, |fd| {
        socket2::SockRef::from(&fd).send_buffer_size().unwrap()
    })
}

/// Calls `f` with the server's end of `client`'s connection, found among
/// this process's own descriptors (the server runs in the test): the
/// socket whose local address is `client`'s peer and whose peer is
/// `client`. Only read-only calls on descriptors borrowed for an instant,
/// matched by both addresses, so other tests' sockets opening and closing
/// meanwhile cannot be mistaken for it; `f` must make only read-only calls
/// too (a descriptor closed meanwhile fails them).
pub fn with_server_end<T>(
    client: &TcpStream,
    f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> T,
) -> T {
    use std::os::fd::BorrowedFd;
    let (ours, theirs) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let fds = std::fs::read_dir("/proc/self/fd").unwrap();
    let fd = fds
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&fd| {
            // SAFETY: borrowed for these two read-only calls; a descriptor
            // closed meanwhile fails them.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let addr = |a: std::io::Result<socket2::SockAddr>| a.ok()?.as_socket();
            addr(socket.local_addr()) == Some(theirs) && addr(socket.peer_addr()) == Some(ours)
        })
        .expect("the server's end of the connection");
    // SAFETY: as above.
    f(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// What the kernel makes of `SO_SNDBUF` set to `n`: capped at
/// `net.core.wmem_max`, then doubled (Linux's room for its bookkeeping).
pub fn kernel_send_buffer(n: usize) -> usize {
    let max = std::fs::read_to_string("/proc/sys/net/core/wmem_max").unwrap();
    2 * n.min(max.trim().parse().unwrap())
}

/// Resets `s`: an RST (SO_LINGER 0, then close), as a load balancer or a
/// killed process sends.
pub fn reset(s: TcpStream) {
    s.set_zero_linger().unwrap();
    drop(s);
}

/// Shuts down the server of `handle` and waits (bounded by [`SAFETY`]) for
/// `task`, the task serving it: what it returned.
pub async fn shut_down<T>(handle: &ServerHandle, task: tokio::task::JoinHandle<T>) -> T {
    handle.shutdown();
    tokio::time::timeout(SAFETY, task)
        .await
        .expect("server stops")
        .expect("server task")
}

/// A server running the test app in the background.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub probe: AppProbe,
    task: tokio::task::JoinHandle<Result<ShutdownSummary, megaconn::Error>>,
}

/// A server running a service of the test's own in the background, on the
/// addresses its builder listens on.
pub struct AppServer {
    pub addrs: Vec<SocketAddr>,
    pub handle: ServerHandle,
    pub task: tokio::task::JoinHandle<Result<ShutdownSummary, megaconn::Error>>,
}

impl AppServer {
    /// Binds `builder` and serves `app` on a task of its own.
    pub fn start<S>(builder: Builder, app: S) -> AppServer
    where
        S: megaconn::HttpService + Clone + Send + 'static,
        S::Future: 'static,
        S::ResBody: 'static,
    {
        let server = builder.listen().expect("server binds");
        let addrs = server.local_addrs().to_vec();
        let handle = server.handle();
        let task = tokio::spawn(server.serve(app));
        AppServer {
            addrs,
            handle,
            task,
        }
    }

    /// Serves `app` on one worker on 127.0.0.1:0, `builder`'s other
    /// settings kept: the setup most tests share.
    pub fn one_worker<S>(builder: Builder, app: S) -> AppServer
    where
        S: megaconn::HttpService + Clone + Send + 'static,
        S::Future: 'static,
        S::ResBody: 'static,
    {
        AppServer::start(
            builder.workers(1).listen_on("127.0.0.1:0".parse().unwrap()),
            app,
        )
    }

    /// The (first) address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Shuts down; true if it stopped in time.
    pub async fn stop(self) -> bool {
        self.handle.shutdown();
        tokio::time::timeout(SAFETY, self.task).await.is_ok()
    }

    /// Shuts down and returns what the drain did; panics unless it
    /// stopped within [`SAFETY`] and served without an error.
    pub async fn summary(self) -> ShutdownSummary {
        shut_down(&self.handle, self.task)
            .await
            .expect("serve result")
    }
}

impl TestServer {
    /// Starts `builder` (address 127.0.0.1:0 is added) with the test app.
    pub async fn start(builder: Builder) -> TestServer {
        let (app, probe) = test_app();
        let AppServer {
            addrs,
            handle,
            task,
        } = AppServer::start(builder.listen_on("127.0.0.1:0".parse().unwrap()), app);
        TestServer {
            addr: addrs[0],
            handle,
            probe,
            task,
        }
    }

    /// A default server with one worker and short-but-safe settings.
    pub async fn default() -> TestServer {
        TestServer::start(
            megaconn::Server::builder()
                .workers(1)
                .max_body_bytes(1 << 20),
        )
        .await
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }

    /// A fresh connection that has sent `bytes` (a request, or the start
    /// of one).
    pub async fn connect_sending(&self, bytes: impl AsRef<[u8]>) -> TcpStream {
        sent(self.connect().await, bytes).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Shuts down and returns the summary.
    pub async fn stop(self) -> ShutdownSummary {
        shut_down(&self.handle, self.task)
            .await
            .expect("serve result")
    }

    /// Sends `GET /wait` on `s` and waits until its handler has started:
    /// a connection with a request under way, until `probe.release`.
    pub async fn start_waiting(&mut self, s: &mut TcpStream) {
        s.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            self.probe.next_event().await,
            Event::Started("/wait".into())
        );
    }

    /// Waits (bounded) until the server's counters satisfy `cond`.
    pub async fn wait_stats(&self, what: &str, cond: impl Fn(&megaconn::ServerStats) -> bool) {
        wait_stats(&self.handle, what, cond).await;
    }

    /// One plain GET on a fresh connection; asserts 200 Hello.
    pub async fn assert_healthy(&self) {
        let mut s = self.connect().await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "server still serves");
        assert_eq!(r.body, b"Hello, World!");
    }
}

/// `s` once it has sent `bytes`: a connection with a request (or the start
/// of one) on its way.
pub async fn sent(mut s: TcpStream, bytes: impl AsRef<[u8]>) -> TcpStream {
    s.write_all(bytes.as_ref()).await.unwrap();
    s
}

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads bytes until at least `buf` has one complete response; returns it and
/// leaves any extra bytes in `buf`.
pub async fn read_response_buffered<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> RawResponse {
    tokio::time::timeout(SAFETY, async {
        loop {
            if let Some((resp, used)) = try_parse_response(buf, head_request) {
                buf.drain(..used);
                return resp;
            }
            let mut chunk = [0u8; 8192];
            let n = io.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("timed out reading a response")
}

pub async fn read_response<R: AsyncRead + Unpin>(io: &mut R) -> RawResponse {
    let mut buf = Vec::new();
    read_response_buffered(io, &mut buf, false).await
}

/// Parses a response if `buf` holds a complete one (Content-Length, chunked,
/// or no body for 1xx/204/304/HEAD).
pub fn try_parse_response(buf: &[u8], head_request: bool) -> Option<(RawResponse, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf).expect("valid response head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect();
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[head_len..];
    let no_body = head_request || status < 200 || status == 204 || status == 304;
    if no_body {
        return Some((
            RawResponse {
                status,
                headers,
                body: Vec::new(),
            },
            head_len,
        ));
    }
    if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        if rest.len() < len {
            return None;
        }
        let body = rest[..len].to_vec();
        return Some((
            RawResponse {
                status,
                headers,
                body,
            },
            head_len + len,
        ));
    }
    if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[pos..line_end]).unwrap(), 16)
                    .unwrap();
            pos = line_end + 2;
            if size == 0 {
                // Trailers (none expected in these tests) then CRLF.
                let end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
                return Some((
                    RawResponse {
                        status,
                        headers,
                        body,
                    },
                    head_len + end + 2,
                ));
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
    }
    None // close-delimited: caller reads to EOF
}

/// Reads until the server closes the connection (bounded).
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(SAFETY, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("server did not close the connection");
    out
}

/// How often a slowloris client sends its next byte (a heartbeat timeout
/// would be restarted by each).
pub const TRICKLE: Duration = Duration::from_millis(50);

/// A slowloris peer: writes `bytes` to `w` one byte every [`TRICKLE`] until
/// `ended` completes (bounded by [`SAFETY`]), and returns what it gave.
/// Write errors (the server hung up) stop the bytes, not the wait; so does
/// running out of them.
pub async fn trickle_until<W, T>(w: &mut W, bytes: &[u8], ended: impl Future<Output = T>) -> T
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut ended = std::pin::pin!(ended);
    let mut rest = bytes.iter();
    let mut tick = tokio::time::interval(TRICKLE);
    tokio::time::timeout(SAFETY, async {
        loop {
            tokio::select! {
                out = &mut ended => return out,
                _ = tick.tick() => {
                    if let Some(&b) = rest.next() {
                        if w.write_all(&[b]).await.is_err() {
                            rest = [].iter();
                        }
                    }
                }
            }
        }
    })
    .await
    .expect("the trickling peer was not stopped in time")
}

/// Writes `bytes` to `w` in the pieces that end at `cuts` (and a last one),
/// `every` apart: a peer that sends slowly, whose messages each straddle a
/// pause when the cuts fall inside them.
pub async fn write_in_pieces<W>(w: &mut W, bytes: &[u8], cuts: &[usize], every: Duration)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut from = 0;
    for &to in cuts.iter().chain([&bytes.len()]) {
        if from > 0 {
            tokio::time::sleep(every).await;
        }
        w.write_all(&bytes[from..to])
            .await
            .expect("the server reads");
        from = to;
    }
}

/// Appends `rounds` copies of `message` to `bytes`, and to `cuts` a cut in
/// the middle of each (for [`write_in_pieces`]): a sender whose every
/// message straddles a pause.
pub fn each_cut_in_two(bytes: &mut Vec<u8>, cuts: &mut Vec<usize>, message: &[u8], rounds: usize) {
    for _ in 0..rounds {
        cuts.push(bytes.len() + message.len() / 2);
        bytes.extend_from_slice(message);
    }
}

/// [`write_in_pieces`], asserting that the writes took longer than
/// `outlasting`: a slow sender's test outlasts the bound it is about.
pub async fn write_in_pieces_outlasting<W>(
    w: &mut W,
    bytes: &[u8],
    cuts: &[usize],
    every: Duration,
    outlasting: Duration,
) where
    W: tokio::io::AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    write_in_pieces(w, bytes, cuts, every).await;
    assert!(
        started.elapsed() > outlasting,
        "the test outlasts the bound"
    );
}

/// A peer that never gets back between messages: writes `first` (a
/// message begun), then `round` every `every` (each ends the message begun
/// and begins the next), until `ended` completes, which it returns. Panics
/// if it has not within `rounds` rounds (and one more `every`). Write
/// errors (the server hung up) stop the rounds, not the wait.
pub async fn in_rounds_until<W, T>(
    w: &mut W,
    (first, round): (&[u8], &[u8]),
    every: Duration,
    rounds: usize,
    ended: impl Future<Output = T>,
) -> T
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut ended = std::pin::pin!(ended);
    let mut open = w.write_all(first).await.is_ok();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    for _ in 0..rounds {
        tokio::select! {
            out = &mut ended => return out,
            _ = tick.tick() => {
                if open {
                    open = w.write_all(round).await.is_ok();
                }
            }
        }
    }
    tokio::time::timeout(every, ended)
        .await
        .unwrap_or_else(|_| panic!("still open after {rounds} rounds of {every:?}"))
}

/// A connection to `addr` from a loopback address (in 127.1.0.0/16) that no
/// other connection of this test process was given, so that a log line
/// naming its peer (`peer=…`, "from …") is this connection's alone. The
/// port alone does not tell: Linux gives one ephemeral port to connections
/// towards different servers at the same time, and again once one closed;
/// the tests of a binary share one log, and a line of another test's (the
/// same port, another server) was counted as this test's (CI, session 41:
/// "2 lines in 13 ms"; session 51: an access-log test saw another's
/// `413` line).
pub async fn connect_from_own_address(addr: SocketAddr) -> TcpStream {
    connect_from((own_address(), 0), addr).await
}

/// A loopback address (in 127.1.0.0/16) that no other caller in this test
/// process was given: its ports are the caller's alone, and so is any
/// four-tuple from it (a test that gives back a source and binds it again
/// cannot find it taken by another test's connection meanwhile).
pub fn own_address() -> std::net::Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static GIVEN: AtomicU32 = AtomicU32::new(0);
    let n = GIVEN.fetch_add(1, Relaxed);
    assert!(
        n < 1 << 16,
        "more than 65,536 own addresses in one test binary"
    );
    let [_, _, high, low] = n.to_be_bytes();
    std::net::Ipv4Addr::new(127, 1, high, low)
}

/// A connection to `addr` from `source` (port 0: any free one; a per-IP
/// limit's tests pick the IP). Bound with `SO_REUSEADDR`, so that a
/// source given back with a reset can be bound again, the same four-tuple
/// (`park_evict.rs` steers a newcomer to a known worker that way); a
/// port-0 bind still never shares a port with another socket of the same IP.
pub async fn connect_from(source: impl Into<SocketAddr>, addr: SocketAddr) -> TcpStream {
    let source = source.into();
    let socket = match source {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(source)
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} from {source}: {e}"))
}

/// Runs `attempt` until one can judge: `Ok` ends it; `Err(why)` is an
/// attempt the machine stalled past what its timing lets it judge (a fixed
/// bound of the library's passed while the test was held back), said on
/// stderr, and another is made, `attempts` in all. Panics if none could
/// judge. A failure that can be judged is the attempt's own panic.
pub async fn until_it_can_judge<F, Fut>(attempts: usize, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for n in 1..=attempts {
        match attempt().await {
            Ok(()) => return,
            Err(stalled) => eprintln!("attempt {n} says nothing: {stalled}"),
        }
    }
    panic!("{attempts} attempts in a row were stalled past what they could judge");
}

/// An h2c client (prior knowledge) on a fresh connection.
pub async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    h2c_from(addr).await.0
}

/// An h2c client (prior knowledge) on a fresh connection, and its address
/// (the peer the server sees).
pub async fn h2c_from(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, SocketAddr) {
    h2c_over(TcpStream::connect(addr).await.unwrap()).await
}

/// [`h2c_from`] from an address of its own ([`connect_from_own_address`]),
/// for a test that tells the connection's log lines by their peer.
pub async fn h2c_from_own_address(
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, SocketAddr) {
    h2c_over(connect_from_own_address(addr).await).await
}

/// An h2c client (prior knowledge) over `tcp`, and its address.
async fn h2c_over(tcp: TcpStream) -> (h2::client::SendRequest<Bytes>, SocketAddr) {
    let local = tcp.local_addr().unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, local)
}
