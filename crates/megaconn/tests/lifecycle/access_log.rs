//! The access log (`Builder::access_log`): one line per request, whatever
//! answered it. A request a handler served has its line in every protocol
//! mode; so has each one megaconn answered itself before any handler ran,
//! as nginx logs the 400s and 413s it sends: a head refused (400, 413 by
//! Content-Length, 414, 431, 505), a head not whole in time (408), a service
//! not ready (503), a handler that panicked in `call` (500). Each line has
//! the status that was sent, and what of the request line could be read.
//!
//! Every test stops its server before it reads the lines, so that every
//! request's record has dropped and a second line for one request would be
//! there; a connection's peer address tells its lines from any other test's
//! (each connection comes from an address of its own:
//! `common::connect_from_own_address`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use megaconn::BoxError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use super::common::modes::{self, h2_exchange};
use super::common::{
    connect_from_own_address, h2c_from_own_address, read_to_close, AppServer, TestServer, SAFETY,
};
use super::{capture_log, logged, ACCESS_TARGET};

/// The access-log lines of the connection from `peer`, an address of the
/// test's own (else it panics: another test's line may name it). (Through
/// `logged`, which takes the lines whole from a lock another test's failed
/// assertion poisoned: `unwrap` here made one failure fail every test
/// that read the access log after it.)
fn access_lines(peer: SocketAddr) -> Vec<String> {
    super::assert_own(peer);
    let peer_field = format!("peer={peer}");
    logged()
        .iter()
        .filter(|l| l.starts_with(ACCESS_TARGET) && l.split(' ').any(|f| f == peer_field))
        .cloned()
        .collect()
}

/// Asserts that the connection from `peer` has one access-log line, and
/// that it has each of the fields `want` (`name=value`) and a `conn` and a
/// `duration_us`.
pub(super) fn assert_one_line(peer: SocketAddr, want: &[&str], what: &str) {
    let lines = access_lines(peer);
    assert_eq!(lines.len(), 1, "{what}: {lines:?}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    for want in ["message=request"].iter().chain(want) {
        assert!(fields.contains(want), "{what}: no {want} in {}", lines[0]);
    }
    for name in ["conn=", "duration_us="] {
        assert!(
            fields.iter().any(|f| f.starts_with(name)),
            "{what}: no {name} in {}",
            lines[0]
        );
    }
}

/// Sends `raw` on a fresh HTTP/1.1 connection to `addr` and reads until the
/// server closes it; returns the client's address and what came back.
pub(super) async fn h1_exchange(addr: SocketAddr, raw: &[u8]) -> (SocketAddr, String) {
    let mut s = connect_from_own_address(addr).await;
    let peer = s.local_addr().unwrap();
    s.write_all(raw).await.expect("the server reads");
    let answer = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    (peer, answer)
}

/// A GET of `path` on HTTP/2.
fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

/// `access_log` writes one line per request whatever the protocol: over
/// HTTP/2 (h2c and over TLS) as over HTTP/1.1, with the same fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_in_every_mode() {
    capture_log();
    for mode in modes::ALL {
        let s = mode
            .server(megaconn::Server::builder().workers(1).access_log(true))
            .await;
        let mut client = s.client_from_own_address().await;
        let peer = client.local_addr();
        let (status, body) = client.get("/").await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"Hello, World!"[..]),
            "{mode:?}"
        );
        client.close().await;
        s.server.stop().await;
        let want = [
            "method=GET",
            "path=/",
            "status=200",
            "bytes_in=0",
            "bytes_out=13",
        ];
        assert_one_line(peer, &want, &format!("{mode:?}"));
    }
}

/// A request head megaconn refuses has its line, with the status it sent
/// and as much of the request line as was read: all of it when the fault
/// is further on (a bad header, a Content-Length over `max_body_bytes`, a
/// head past `max_header_bytes`, a version not served), the method alone
/// when the target is what is too long, `-` for both when the method is
/// not one. These had no line at all: only requests a handler saw had.
#[tokio::test]
async fn refused_request_heads_have_their_line_with_the_status_sent() {
    capture_log();
    const MAX_HEAD: usize = 1024;
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .access_log(true)
            .max_header_bytes(MAX_HEAD)
            .max_body_bytes(1 << 20),
    )
    .await;
    // Exactly `MAX_HEAD` bytes with no end of line (414) or no end of head
    // (431): all of it is read before the refusal, so closing after it
    // resets nothing and the client reads the answer.
    let long_line = format!("GET /{}", "a".repeat(MAX_HEAD - 5));
    let mut long_head = "GET /big-head HTTP/1.1\r\nX-Fill: ".to_string();
    long_head += &"f".repeat(MAX_HEAD - long_head.len());
    let cases: [(&str, &[u8], u16, &str, &str); 7] = [
        ("no method", b"G@T / HTTP/1.1\r\n\r\n", 400, "-", "-"),
        (
            "a bad header",
            b"GET /bad-header HTTP/1.1\r\nHost t\r\n\r\n",
            400,
            "GET",
            "/bad-header",
        ),
        (
            "a body over max_body_bytes",
            b"POST /collect?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n",
            413,
            "POST",
            "/collect",
        ),
        ("a target too long", long_line.as_bytes(), 414, "GET", "-"),
        (
            "a head too long",
            long_head.as_bytes(),
            431,
            "GET",
            "/big-head",
        ),
        (
            "HTTP/3.0",
            b"GET /v3 HTTP/3.0\r\nHost: t\r\n\r\n",
            505,
            "GET",
            "/v3",
        ),
        (
            "an absolute target",
            b"GET http://t/abs HTTP/1.1\r\nHost t\r\n\r\n",
            400,
            "GET",
            "/abs",
        ),
    ];
    let mut sent = Vec::new();
    for (what, raw, status, _, _) in &cases {
        let (peer, answer) = h1_exchange(server.addr, raw).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer}"
        );
        sent.push(peer);
    }
    server.stop().await;
    for ((what, _, status, method, path), peer) in cases.iter().zip(sent) {
        let want = [
            format!("status={status}"),
            format!("method={method}"),
            format!("path={path}"),
            "bytes_in=0".to_string(),
        ];
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_one_line(peer, &want, what);
    }
}

/// A request head not whole within `read_header_timeout` is answered 408
/// (when some of it came): that answer has its line too, with what of the
/// request line came.
#[tokio::test]
async fn a_request_head_not_whole_in_time_has_its_408_line() {
    capture_log();
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .access_log(true)
            .read_header_timeout(Some(Duration::from_millis(200))),
    )
    .await;
    let (peer, answer) = h1_exchange(server.addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    server.stop().await;
    assert_one_line(
        peer,
        &["status=408", "method=GET", "path=/slow"],
        "a head timed out",
    );
}

/// Sends `request` (its body, if it has one, left open: `end` false) on an
/// h2c connection to a server of `builder`'s with the access log on, then
/// stops the server: the status, the client's address (its lines' peer),
/// and the server's handle.
async fn h2c_one_request(
    builder: megaconn::Builder,
    request: http::Request<()>,
    end: bool,
) -> (u16, SocketAddr, megaconn::ServerHandle) {
    let s = modes::Mode::H2c
        .server(builder.workers(1).access_log(true))
        .await;
    let (send, peer) = h2c_from_own_address(s.server.addr).await;
    let (status, _) = h2_exchange(&send, request, b"", end).await;
    drop(send);
    let handle = s.server.handle.clone();
    s.server.stop().await;
    (status, peer, handle)
}

/// A request body declared over `max_body_bytes` is answered 413 before
/// any handler runs, on HTTP/2 as on HTTP/1.1 (above): its line has the
/// 413.
#[tokio::test]
async fn an_http2_body_declared_too_large_has_its_413_line() {
    capture_log();
    let request = http::Request::post("http://localhost/collect")
        .header(http::header::CONTENT_LENGTH, "2000000")
        .body(())
        .unwrap();
    let builder = megaconn::Server::builder().max_body_bytes(1 << 20);
    let (status, peer, _) = h2c_one_request(builder, request, false).await;
    assert_eq!(status, 413);
    assert_one_line(peer, &["status=413", "method=POST", "path=/collect"], "h2c");
}

/// A header list over `http2_max_header_list_size`, which h2 answers 431
/// itself before megaconn sees the request, has its line as HTTP/1.1's
/// refused head has: `-` for the method and path (h2 keeps nothing of the
/// head it refused), and it counts in `requests_total` (method `other`,
/// `4xx`). It had neither: only the limit hit and the refused head's line
/// counted it.
#[tokio::test]
async fn an_http2_header_list_over_its_limit_has_its_431_line() {
    capture_log();
    let request = http::Request::get("http://localhost/big")
        .header("x-fill", "f".repeat(5000))
        .body(())
        .unwrap();
    let builder = megaconn::Server::builder().http2_max_header_list_size(4096);
    let (status, peer, handle) = h2c_one_request(builder, request, true).await;
    assert_eq!(status, 431);
    assert_one_line(peer, &["status=431", "method=-", "path=-"], "h2c");
    let counted: Vec<_> = handle
        .stats()
        .request_metrics
        .by_method_status
        .iter()
        .map(|c| (c.method, c.status_class, c.count))
        .collect();
    assert_eq!(counted, [("other", "4xx", 1)]);
}

/// A service that is never ready: every request is answered 503 before a
/// handler could run.
#[derive(Clone)]
struct NeverReady;

impl tower::Service<http::Request<megaconn::Body>> for NeverReady {
    type Response = http::Response<megaconn::Body>;
    type Error = megaconn::BoxError;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Err("overloaded (the test's service)".into()))
    }

    fn call(&mut self, _: http::Request<megaconn::Body>) -> Self::Future {
        unreachable!("a service never ready is never called")
    }
}

/// A service whose `poll_ready` fails gets its requests answered 503, on
/// HTTP/1.1 and HTTP/2: each has its line, with the 503.
#[tokio::test]
async fn a_request_the_service_was_not_ready_for_has_its_503_line() {
    capture_log();
    let server = AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .access_log(true)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        NeverReady,
    );
    let addr = server.addrs[0];
    let (h1, answer) = h1_exchange(addr, b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let (send, h2) = h2c_from_own_address(addr).await;
    assert_eq!(h2_exchange(&send, h2_get("/busy"), b"", true).await.0, 503);
    drop(send);
    assert!(server.stop().await, "the server stops");
    for (peer, what) in [(h1, "HTTP/1.1"), (h2, "h2c")] {
        assert_one_line(peer, &["status=503", "method=GET", "path=/busy"], what);
    }
}

/// A handler that panics in `call` (before it returns its future) gets
/// its request answered 500, on HTTP/1.1 and HTTP/2: each has its line,
/// with the 500.
#[tokio::test]
async fn a_request_whose_handler_panicked_in_call_has_its_500_line() {
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1).access_log(true)).await;
    let (h1, answer) = h1_exchange(server.addr, b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
    let (send, h2) = h2c_from_own_address(server.addr).await;
    assert_eq!(h2_exchange(&send, h2_get("/panic"), b"", true).await.0, 500);
    drop(send);
    server.stop().await;
    for (peer, what) in [(h1, "HTTP/1.1"), (h2, "h2c")] {
        assert_one_line(peer, &["status=500", "method=GET", "path=/panic"], what);
    }
}

/// An HTTP/2 upload's bytes are counted as HTTP/1.1's are: in the line's
/// `bytes_in` and in `megaconn_request_body_bytes_total`. Both were 0: the
/// HTTP/2 body never told the request's record what it read.
#[tokio::test]
async fn an_http2_upload_counts_its_bytes_in_the_line_and_the_metric() {
    capture_log();
    static UPLOAD: [u8; 100_000] = [b'u'; 100_000];
    let s = modes::Mode::H2c
        .server(megaconn::Server::builder().workers(1).access_log(true))
        .await;
    let handle = s.server.handle.clone();
    let before = handle.stats().request_metrics.request_body_bytes;
    let (send, peer) = h2c_from_own_address(s.server.addr).await;
    let request = http::Request::post("http://localhost/collect")
        .body(())
        .unwrap();
    let (status, body) = h2_exchange(&send, request, &UPLOAD, true).await;
    assert_eq!((status, body.as_slice()), (200, &b"100000"[..]));
    drop(send);
    s.server.stop().await;
    let counted = handle.stats().request_metrics.request_body_bytes - before;
    assert_eq!(counted, UPLOAD.len() as u64, "request_body_bytes");
    assert!(
        handle
            .render_metrics()
            .lines()
            .any(|l| l == format!("megaconn_request_body_bytes_total {counted}")),
        "the metric renders the count"
    );
    assert_one_line(
        peer,
        &[
            "status=200",
            "method=POST",
            "path=/collect",
            "bytes_in=100000",
        ],
        "h2c",
    );
}

/// With the access log off, HTTP/2 bodies count into the connection's
/// tally, not one allocated per stream, and
/// `megaconn_request_body_bytes_total` still has every byte of two uploads
/// on one connection.
#[tokio::test]
async fn http2_uploads_count_their_bytes_in_the_metric_without_the_access_log() {
    static UPLOAD: [u8; 70_000] = [b'u'; 70_000];
    let s = modes::Mode::H2c
        .server(megaconn::Server::builder().workers(1))
        .await;
    let handle = s.server.handle.clone();
    let before = handle.stats().request_metrics.request_body_bytes;
    let (send, _peer) = h2c_from_own_address(s.server.addr).await;
    for len in [UPLOAD.len(), 1_000] {
        let request = http::Request::post("http://localhost/collect")
            .body(())
            .unwrap();
        let (status, body) = h2_exchange(&send, request, &UPLOAD[..len], true).await;
        assert_eq!((status, body), (200, len.to_string().into_bytes()));
    }
    drop(send);
    s.server.stop().await;
    let counted = handle.stats().request_metrics.request_body_bytes - before;
    assert_eq!(counted, 71_000, "request_body_bytes");
}

/// What [`gated`]'s handlers share with the test.
struct Gate {
    /// Set, a waiting handler answers the next time it is polled. Setting
    /// it wakes nothing.
    open: AtomicBool,
    /// A handler says here that it runs, and waits.
    entered: mpsc::UnboundedSender<()>,
}

/// `/open` opens the gate as the service is called (in the connection's
/// loop, as the request is accepted) and answers `200 ok`; any other path
/// waits for the gate, then answers `200` (`/answer`), fails (`/fail`, a
/// 500) or panics (`/panic`, a 500). The wait registers no waker: only its
/// stream's exchange, woken for something else, polls the handler again.
fn gated(gate: Arc<Gate>) -> impl megaconn::HttpService + Clone + Send + 'static {
    tower::service_fn(move |req: http::Request<megaconn::Body>| {
        let gate = gate.clone();
        let path = req.uri().path().to_owned();
        if path == "/open" {
            gate.open.store(true, Ordering::SeqCst);
        }
        async move {
            if path != "/open" {
                let _ = gate.entered.send(());
                std::future::poll_fn(|_| match gate.open.load(Ordering::SeqCst) {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                })
                .await;
            }
            match path.as_str() {
                "/fail" => Err(BoxError::from("the handler fails (told by the test)")),
                "/panic" => panic!("the handler panics (told by the test)"),
                _ => Ok(http::Response::new(Full::new(Bytes::from_static(b"ok")))),
            }
        }
    })
}

/// A client reset that arrives after the handler answered and before its
/// head went out leaves no status: the line has `status=0` and the metric
/// the `none` class, as for a reset before the handler answered, whether
/// the head was the handler's (`/answer`) or megaconn's 500 for a handler
/// that failed or panicked. The 500s were logged and counted as sent:
/// `send_error` noted the status before h2 refused the head.
///
/// The order is forced, not hoped for: the client queues `RST_STREAM` for
/// the waiting stream and then a request for `/open` (this test's runtime
/// has one thread: its connection task writes both at once, in that
/// order), so the server has read the reset when `/open`'s call opens the
/// gate; the reset woke the waiting stream's exchange, which polls its
/// handler before it looks for a reset: it finds the answer, and h2
/// refuses its head. The handler was not cancelled (`cancelled` stays 0):
/// had the exchange run between the two frames, the reset would have
/// cancelled it and the test would say so. `/open`'s answer comes after
/// that exchange ended (in the same turn of the connection, before its
/// responses are written).
#[tokio::test]
async fn an_http2_head_refused_by_the_clients_reset_has_no_status() {
    capture_log();
    let (entered, mut running) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        entered,
    });
    let server = AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .access_log(true)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        gated(gate.clone()),
    );
    let handle = server.handle.clone();
    let mut sent = Vec::new();
    for path in ["/answer", "/fail", "/panic"] {
        gate.open.store(false, Ordering::SeqCst);
        let (send, peer) = h2c_from_own_address(server.addrs[0]).await;
        let mut ready = send.clone().ready().await.expect("h2 ready");
        let (response, mut stream) = ready.send_request(h2_get(path), true).expect("send");
        tokio::time::timeout(SAFETY, running.recv())
            .await
            .expect("the handler runs")
            .unwrap();
        stream.send_reset(h2::Reason::CANCEL);
        let after = h2_exchange(&send, h2_get("/open"), b"", true).await;
        assert_eq!(after, (200, b"ok".to_vec()), "{path}");
        assert_eq!(handle.stats().cancelled, 0, "{path}: the handler answered");
        drop((response, send));
        sent.push((path, peer));
    }
    assert!(server.stop().await, "the server stops");
    for (path, peer) in sent {
        let lines: Vec<String> = access_lines(peer)
            .into_iter()
            .filter(|l| l.split(' ').any(|f| f == format!("path={path}")))
            .collect();
        assert_eq!(lines.len(), 1, "{path}: {lines:?}");
        assert!(
            lines[0].split(' ').any(|f| f == "status=0"),
            "{path}: {}",
            lines[0]
        );
    }
    let by_class = |class: &str| {
        let stats = handle.stats();
        let counts = stats.request_metrics.by_method_status;
        counts
            .iter()
            .filter(|c| c.method == "GET" && c.status_class == class)
            .map(|c| c.count)
            .sum::<u64>()
    };
    assert_eq!(
        (by_class("none"), by_class("2xx"), by_class("5xx")),
        (3, 3, 0),
        "requests_total: the three reset, the three after them"
    );
}

/// An HTTP/2 body handed to a task that reads it only after the response
/// went out and the connection closed still counts its bytes in
/// `megaconn_request_body_bytes_total`, with the access log off and on
/// (the line, written when the stream ended, has `bytes_in=0`). They were
/// lost: the connection counted, as it ended, what had arrived (the log
/// off), and the stream's record took the body's count, 0 for a body
/// still held (the log on). The task runs on the test's runtime: the body
/// is read and dropped on another thread than the server's worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_body_bytes_read_after_the_connection_closed_are_counted() {
    static UPLOAD: [u8; 10_000] = [b'u'; 10_000];
    for access_log in [false, true] {
        let read = Arc::new(Notify::new());
        let (read_tx, mut was_read) = mpsc::unbounded_channel();
        let elsewhere = tokio::runtime::Handle::current();
        let service = {
            let read = read.clone();
            tower::service_fn(move |req: http::Request<megaconn::Body>| {
                let (read, read_tx) = (read.clone(), read_tx.clone());
                elsewhere.spawn(async move {
                    read.notified().await;
                    let body = req.into_body().collect().await;
                    let _ = read_tx.send(body.map(|b| b.to_bytes().len()).ok());
                });
                async {
                    let answer = Full::new(Bytes::from_static(b"ok"));
                    Ok::<_, Infallible>(http::Response::new(answer))
                }
            })
        };
        let (builder, mut events) = modes::hooked(
            megaconn::Server::builder()
                .workers(1)
                .access_log(access_log)
                .listen_on("127.0.0.1:0".parse().unwrap()),
        );
        let server = AppServer::start(builder, service);
        let handle = server.handle.clone();
        let tcp = TcpStream::connect(server.addrs[0]).await.expect("connect");
        let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let upload = http::Request::post("http://localhost/later")
            .body(())
            .unwrap();
        let answer = h2_exchange(&send, upload, &UPLOAD, true).await;
        assert_eq!(answer, (200, b"ok".to_vec()), "access_log {access_log}");
        // The client goes (GOAWAY, then its half closed after the upload).
        drop(send);
        let _ = tokio::time::timeout(SAFETY, conn).await;
        events.next_close().await;
        let counted = || handle.stats().request_metrics.request_body_bytes;
        assert_eq!(counted(), 0, "nothing read yet (access_log {access_log})");
        read.notify_one();
        let got = tokio::time::timeout(SAFETY, was_read.recv())
            .await
            .expect("the task reads the body")
            .unwrap();
        assert_eq!(got, Some(UPLOAD.len()), "the whole body arrived");
        assert_eq!(
            counted(),
            UPLOAD.len() as u64,
            "request_body_bytes (access_log {access_log})"
        );
        assert!(server.stop().await, "the server stops");
    }
}
