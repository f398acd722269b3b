//! Leaving gracefully at scale: `shutdown_drain_rate` spreads the closing of
//! idle connections over time (a request arriving meanwhile is still
//! served), and `max_connection_age` retires old connections at their next
//! answer.

use crate::common;

use std::time::Duration;

use common::{read_response, read_to_close, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const N: usize = 30;
/// Connections closed per second: N take 1.5 s.
const RATE: u32 = 20;

async fn idle_connections(server: &TestServer) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..N {
        let mut s = server.connect().await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        conns.push(s);
    }
    conns
}

/// Shuts down and checks that the closes were spread: the last came at least
/// most of N / RATE after the start (a lower bound, which a slow machine
/// only makes larger), while a request sent at the start was served.
async fn drain_and_check(server: TestServer, mut conns: Vec<TcpStream>) {
    let started = Instant::now();
    server.handle.shutdown();
    server
        .wait_stats("the drain began", |s| s.shutdown_drain_pending > 0)
        .await;
    // One connection speaks during the drain (the first accepted: the drain
    // closes the latest first): it is answered, told to close.
    let mut speaker = conns.remove(0);
    speaker
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut speaker).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    for mut c in conns {
        assert!(read_to_close(&mut c).await.is_empty());
    }
    let took = started.elapsed();
    let least = Duration::from_secs_f64((N - 2) as f64 / f64::from(RATE)) * 8 / 10;
    assert!(
        took >= least,
        "all closed in {took:?}, expected at least {least:?}"
    );
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0);
}

#[tokio::test]
async fn a_drain_rate_spreads_the_closing_of_parked_connections() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(Some(Duration::from_millis(20)))
            .shutdown_drain_rate(Some(RATE)),
    )
    .await;
    let conns = idle_connections(&server).await;
    server
        .wait_stats("all parked", |s| s.connections_parked == N as i64)
        .await;
    drain_and_check(server, conns).await;
}

#[tokio::test]
async fn a_drain_rate_spreads_the_closing_of_idle_tasks() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(None)
            .shutdown_drain_rate(Some(RATE)),
    )
    .await;
    let conns = idle_connections(&server).await;
    server
        .wait_stats("all idle", |s| s.connections_idle == N as i64)
        .await;
    drain_and_check(server, conns).await;
}

#[tokio::test]
async fn an_old_connection_is_told_to_close_at_its_next_answer() {
    // Any age has passed by the time the first answer is written.
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_connection_age(Some(Duration::from_nanos(1))),
    )
    .await;
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut s).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(read_to_close(&mut s).await.is_empty());
    server.wait_stats("aged out", |s| s.aged_out == 1).await;
    assert!(server
        .handle
        .render_metrics()
        .contains("megaconn_connections_aged_out_total 1"));
    server.stop().await;
}

/// A keep-alive connection with one request answered, idle: graceful
/// shutdown closes it at once, which tells a test the drain has begun.
async fn idle_connection(server: &TestServer) -> TcpStream {
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    s
}

/// A raw tunnel through the test app's `/upgrade` (101, then an echo on a
/// task of the handler's own), checked with one echo.
async fn tunnel(server: &TestServer) -> TcpStream {
    let mut s = server.connect().await;
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.status, 101);
    echo(&mut s, b"before shutdown").await;
    s
}

async fn echo(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(common::SAFETY, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("the tunnel echoes");
    assert_eq!(back, bytes);
}

fn with_shutdown_timeout(timeout: Duration) -> megaconn::Builder {
    megaconn::Server::builder()
        .workers(1)
        .shutdown_timeout(timeout)
}

/// An upgraded connection leaves its connection's task but not the drain:
/// a handler's tunnel keeps working after shutdown begins, and the server
/// stops once it closes, nothing forced. (It used to be dropped with the
/// worker's runtime as soon as the tracked tasks were done.)
#[tokio::test]
async fn an_upgraded_tunnel_is_waited_for() {
    let server = TestServer::start(with_shutdown_timeout(Duration::from_secs(3))).await;
    let mut idle = idle_connection(&server).await;
    let mut tunnel = tunnel(&server).await;
    server.handle.shutdown();
    assert!(read_to_close(&mut idle).await.is_empty(), "the drain began");
    echo(&mut tunnel, b"during shutdown").await;
    // The handler's echo reads the end and drops the connection.
    tunnel.shutdown().await.unwrap();
    assert!(read_to_close(&mut tunnel).await.is_empty());
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

/// A tunnel still open at the deadline is closed by force and counted so.
#[tokio::test]
async fn an_upgraded_tunnel_open_at_the_deadline_is_forced() {
    let server = TestServer::start(with_shutdown_timeout(Duration::from_millis(200))).await;
    let mut tunnel = tunnel(&server).await;
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1, "{summary:?}");
    assert!(read_to_close(&mut tunnel).await.is_empty());
}

/// A raw HTTP/2 tunnel: a plain `CONNECT` on an h2c connection, answered
/// 200 by the test app, whose handler echoes the stream's bytes on a task
/// of its own, as `/upgrade` does on HTTP/1.1.
struct H2Tunnel {
    /// Kept: a client with no handle left may close the connection.
    _client: h2::client::SendRequest<bytes::Bytes>,
    send: h2::SendStream<bytes::Bytes>,
    recv: h2::RecvStream,
}

/// Sends `request` on a fresh h2c connection to `addr` (`end`: with no
/// body) and waits for the response head; the client is returned to be
/// kept (a client with no handle left may close the connection).
async fn h2_request(
    addr: std::net::SocketAddr,
    request: http::Request<()>,
    end: bool,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    h2::SendStream<bytes::Bytes>,
    http::Response<h2::RecvStream>,
) {
    let client = common::h2c(addr).await;
    let mut ready = client.clone().ready().await.expect("h2 client ready");
    let (response, send) = ready.send_request(request, end).expect("request sent");
    let response = tokio::time::timeout(common::SAFETY, response)
        .await
        .expect("answered in time")
        .expect("answered");
    (client, send, response)
}

impl H2Tunnel {
    async fn open(server: &TestServer) -> H2Tunnel {
        let connect = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("localhost:80")
            .body(())
            .unwrap();
        let (client, send, response) = h2_request(server.addr, connect, false).await;
        assert_eq!(response.status(), 200);
        let mut tunnel = H2Tunnel {
            _client: client,
            send,
            recv: response.into_body(),
        };
        tunnel.echo(b"before shutdown").await;
        tunnel
    }

    async fn echo(&mut self, bytes: &[u8]) {
        self.send
            .send_data(bytes::Bytes::copy_from_slice(bytes), false)
            .expect("sent into the tunnel");
        let mut back = Vec::new();
        while back.len() < bytes.len() {
            let chunk = tokio::time::timeout(common::SAFETY, self.recv.data())
                .await
                .expect("echo in time")
                .expect("the tunnel is open")
                .expect("the tunnel echoes");
            let _ = self.recv.flow_control().release_capacity(chunk.len());
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, bytes);
    }

    /// Reads until the server ends (or resets) the stream.
    async fn until_ended(&mut self) {
        tokio::time::timeout(common::SAFETY, async {
            while let Some(Ok(chunk)) = self.recv.data().await {
                let _ = self.recv.flow_control().release_capacity(chunk.len());
            }
        })
        .await
        .expect("the tunnel ends in time");
    }
}

/// As [`an_upgraded_tunnel_is_waited_for`], over HTTP/2: a `CONNECT`
/// stream's tunnel keeps working after shutdown begins (its GOAWAY admits
/// it), and the server stops once it ends, nothing forced.
#[tokio::test]
async fn an_h2_connect_tunnel_is_waited_for() {
    let server = TestServer::start(with_shutdown_timeout(common::SAFETY / 2)).await;
    let mut idle = idle_connection(&server).await;
    let mut tunnel = H2Tunnel::open(&server).await;
    server.handle.shutdown();
    assert!(read_to_close(&mut idle).await.is_empty(), "the drain began");
    tunnel.echo(b"during shutdown").await;
    // The handler's echo reads the end and drops the stream.
    tunnel
        .send
        .send_data(bytes::Bytes::new(), true)
        .expect("end sent");
    tunnel.until_ended().await;
    let ended = Instant::now();
    stopped_soon_after(&server.stop().await, ended);
}

/// As [`an_upgraded_tunnel_open_at_the_deadline_is_forced`], over HTTP/2.
#[tokio::test]
async fn an_h2_connect_tunnel_open_at_the_deadline_is_forced() {
    let server = TestServer::start(with_shutdown_timeout(Duration::from_millis(200))).await;
    let mut tunnel = H2Tunnel::open(&server).await;
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1, "{summary:?}");
    tunnel.until_ended().await;
}

/// A server-sent-events-like response that ends itself when shutdown
/// begins ([`megaconn::Draining`]): one event at once, then nothing until
/// the start, then a last event and the end.
async fn events(
    _: http::Request<megaconn::Body>,
) -> Result<http::Response<common::TestBody>, std::convert::Infallible> {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let draining = megaconn::Draining::current().expect("served on a megaconn worker");
    assert!(!draining.is_started());
    let first = http_body::Frame::data(bytes::Bytes::from_static(b"data: hello\n\n"));
    let events =
        futures_util::stream::iter([Ok(first)]).chain(futures_util::stream::once(async move {
            draining.started().await;
            assert!(draining.is_started());
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"data: bye\n\n",
            )))
        }));
    Ok(http::Response::new(
        http_body_util::StreamBody::new(events).boxed_unsync(),
    ))
}

/// A server of `app` with a deadline that a failing test reaches (a
/// stream forced) well within `SAFETY`.
fn ending_server<S>(app: S) -> common::AppServer
where
    S: megaconn::HttpService + Clone + Send + 'static,
    S::Future: 'static,
    S::ResBody: 'static,
{
    let builder =
        with_shutdown_timeout(common::SAFETY / 2).listen_on("127.0.0.1:0".parse().unwrap());
    common::AppServer::start(builder, app)
}

/// A connection to `server` that sent `request`.
async fn sent(server: &common::AppServer, request: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server.addrs[0]).await.unwrap();
    s.write_all(request).await.unwrap();
    s
}

/// Stops `server` (shut down already) and checks that it stopped soon,
/// nothing forced.
async fn stopped_soon(server: common::AppServer, shutdown_at: Instant) {
    let summary = tokio::time::timeout(common::SAFETY, server.task)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("serve result");
    stopped_soon_after(&summary, shutdown_at);
}

/// Checks a server that stopped by `summary`: nothing forced, and before
/// its `shutdown_timeout` (`SAFETY / 2`) had passed since `since` (when
/// shutdown began, or later), so not held to its deadline. That is the
/// behaviour checked; the drain itself takes well under a second, and the
/// bound is a hang guard only (it was `SAFETY / 4`, a time a starved
/// machine could reach with nothing wrong).
fn stopped_soon_after(summary: &megaconn::ShutdownSummary, since: Instant) {
    assert_eq!(summary.forced, 0, "{summary:?}");
    assert!(
        since.elapsed() < common::SAFETY / 2,
        "stopped {:?} after: held to its deadline",
        since.elapsed()
    );
}

/// An endless HTTP/1.1 response ends itself when shutdown begins: its
/// last event reaches the client, and the drain ends at once, nothing
/// forced (it was held to `shutdown_timeout` before, with no way to know).
#[tokio::test]
async fn a_streaming_response_ends_itself_when_shutdown_begins() {
    let server = ending_server(tower::service_fn(events));
    let mut s = sent(&server, b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut seen = Vec::new();
    tokio::time::timeout(common::SAFETY, async {
        while !String::from_utf8_lossy(&seen).contains("data: hello") {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first event in time");
    let shutdown_at = Instant::now();
    server.handle.shutdown();
    seen.extend(read_to_close(&mut s).await);
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("data: bye"), "{text}");
    assert!(text.ends_with("0\r\n\r\n"), "the response ended: {text}");
    stopped_soon(server, shutdown_at).await;
}

/// The next DATA of an HTTP/2 stream (`None`: it ended).
async fn next_data(body: &mut h2::RecvStream) -> Option<bytes::Bytes> {
    let chunk = tokio::time::timeout(common::SAFETY, body.data())
        .await
        .expect("data in time")
        .map(|c| c.expect("data"));
    if let Some(c) = &chunk {
        let _ = body.flow_control().release_capacity(c.len());
    }
    chunk
}

/// Shuts `server` down, reads `body` to its end, which must be `last`,
/// and checks that the server stopped soon, nothing forced.
async fn shut_down_and_read_the_rest(
    server: common::AppServer,
    body: &mut h2::RecvStream,
    last: &[u8],
) {
    let shutdown_at = Instant::now();
    server.handle.shutdown();
    let mut rest = Vec::new();
    while let Some(chunk) = next_data(body).await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, last);
    stopped_soon(server, shutdown_at).await;
}

/// The same over HTTP/2: the stream's last event, then its end.
#[tokio::test]
async fn an_h2_streaming_response_ends_itself_when_shutdown_begins() {
    let server = ending_server(tower::service_fn(events));
    let get = http::Request::get("http://localhost/events")
        .body(())
        .unwrap();
    let (client, _, response) = h2_request(server.addrs[0], get, true).await;
    let mut body = response.into_body();
    assert_eq!(
        next_data(&mut body).await.as_deref(),
        Some(&b"data: hello\n\n"[..])
    );
    // The last event, then the end (an empty DATA frame may carry it).
    shut_down_and_read_the_rest(server, &mut body, b"data: bye\n\n").await;
    drop(client);
}

/// A long poll in axum, `Draining` taken as an extractor: answered when
/// shutdown begins (told to close), and the drain ends at once.
#[tokio::test]
async fn an_axum_long_poll_answers_when_shutdown_begins() {
    async fn poll(draining: megaconn::Draining) -> &'static str {
        draining.started().await;
        "shutting down"
    }
    let app = axum::Router::new().route("/poll", axum::routing::get(poll));
    let server = ending_server(app);
    let mut s = sent(&server, b"GET /poll HTTP/1.1\r\nHost: t\r\n\r\n").await;
    common::wait_stats(&server.handle, "the poll arrived", |s| s.requests == 1).await;
    let shutdown_at = Instant::now();
    server.handle.shutdown();
    let answer = read_response(&mut s).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.body, b"shutting down");
    assert!(read_to_close(&mut s).await.is_empty());
    stopped_soon(server, shutdown_at).await;
}

/// A tunnel whose handler ends it when shutdown begins: `bye`, then the
/// `Upgraded` dropped. 101 to an HTTP/1.1 upgrade, 200 to an HTTP/2
/// `CONNECT`.
async fn tunnel_until_shutdown(
    mut req: http::Request<megaconn::Body>,
) -> Result<http::Response<common::TestBody>, std::convert::Infallible> {
    let on_upgrade = req
        .extensions_mut()
        .remove::<megaconn::OnUpgrade>()
        .expect("an upgrade request");
    let draining = megaconn::Draining::current().expect("served on a megaconn worker");
    tokio::task::spawn_local(async move {
        let mut io = on_upgrade.await.expect("upgraded");
        draining.started().await;
        let _ = io.write_all(b"bye").await;
    });
    if req.method() == http::Method::CONNECT {
        return Ok(common::full(http::StatusCode::OK, ""));
    }
    let mut response = common::full(http::StatusCode::SWITCHING_PROTOCOLS, "");
    response.headers_mut().insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("echo"),
    );
    Ok(response)
}

/// An HTTP/1.1 tunnel that its handler ends at shutdown: the drain ends
/// with it, nothing forced.
#[tokio::test]
async fn a_tunnel_that_ends_itself_at_shutdown_is_not_forced() {
    let server = ending_server(tower::service_fn(tunnel_until_shutdown));
    let mut s = sent(
        &server,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    assert_eq!(read_response(&mut s).await.status, 101);
    let shutdown_at = Instant::now();
    server.handle.shutdown();
    assert_eq!(read_to_close(&mut s).await, b"bye");
    stopped_soon(server, shutdown_at).await;
}

/// The same over HTTP/2, whose client keeps its half of the stream open:
/// the handler's drop ends the stream (`END_STREAM`, then h2's reset of
/// the client's half), and the connection goes with it.
#[tokio::test]
async fn an_h2_tunnel_that_ends_itself_at_shutdown_is_not_forced() {
    let server = ending_server(tower::service_fn(tunnel_until_shutdown));
    let connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("localhost:80")
        .body(())
        .unwrap();
    let (_client, _send, response) = h2_request(server.addrs[0], connect, false).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    shut_down_and_read_the_rest(server, &mut body, b"bye").await;
}

/// What [`late_or_blocking`]'s handlers share with their test.
struct LateAnswers {
    /// Told once per handler waiting (a `/late` one for `answer`).
    waiting: tokio::sync::mpsc::UnboundedSender<()>,
    /// Every `/late` handler answers once this is notified.
    answer: tokio::sync::Notify,
    /// The `/block` handler's ends: "the worker is blocked" and "unblock".
    block: std::sync::Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
}

/// `/late` answers once told to; `/block`, once shutdown began, blocks
/// its worker's thread until told to stop (and never answers).
async fn late_or_blocking(
    shared: std::sync::Arc<LateAnswers>,
    req: http::Request<megaconn::Body>,
) -> Result<http::Response<common::TestBody>, std::convert::Infallible> {
    if req.uri().path() == "/block" {
        let _ = shared.waiting.send(());
        let draining = megaconn::Draining::current().expect("served on a megaconn worker");
        draining.started().await;
        let (blocked, unblock) = shared.block.lock().unwrap().take().expect("one /block");
        // A task of the runtime's own, not of the worker's `LocalSet`: it
        // runs after the set's round, and the timers that came due while
        // it blocked are read after it, the shutdown deadline's among them.
        tokio::spawn(async move {
            let _ = blocked.send(());
            let _ = unblock.recv();
        });
        return std::future::pending().await;
    }
    // Polled on by the connection's own task (a new connection's first
    // poll has no waker), so that `answer` wakes that task.
    tokio::task::yield_now().await;
    let mut answered = std::pin::pin!(shared.answer.notified());
    answered.as_mut().enable();
    let _ = shared.waiting.send(());
    answered.await;
    Ok(common::full(http::StatusCode::OK, "late"))
}

/// A connection counted forced got no answer, and one that got its answer
/// was not counted forced. Here twenty handlers answer in the worker's turn
/// whose timer ends the drain at `shutdown_timeout`: the worker is blocked
/// across the deadline (a handler's `tokio::spawn` that waits on a
/// channel), and the answers are released meanwhile, so that the loop's
/// timer and the twenty connections are woken in the same turn, the loop
/// first (local wakes run before remote ones). The loop used to count all
/// twenty-one forced, and its round went on polling the twenty, which
/// answered (tokio polls up to 61 tasks a round, and the thread's
/// `block_on` saw the loop's end only after it): now the worker counts
/// once nothing runs (`Drained` in `server/worker.rs`).
#[tokio::test]
async fn a_connection_counted_forced_got_no_answer() {
    const LATE: usize = 20;
    const TIMEOUT: Duration = Duration::from_millis(200);
    let (waiting, mut waited) = tokio::sync::mpsc::unbounded_channel();
    let (blocked, is_blocked) = tokio::sync::oneshot::channel();
    let (unblock, unblocked) = std::sync::mpsc::channel();
    let shared = std::sync::Arc::new(LateAnswers {
        waiting,
        answer: tokio::sync::Notify::new(),
        block: std::sync::Mutex::new(Some((blocked, unblocked))),
    });
    let app = {
        let shared = shared.clone();
        tower::service_fn(move |req| late_or_blocking(shared.clone(), req))
    };
    let builder = with_shutdown_timeout(TIMEOUT)
        .park_idle_after(None)
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(builder, app);
    let mut late = Vec::new();
    for _ in 0..LATE {
        late.push(sent(&server, b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n").await);
    }
    let mut block = sent(&server, b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n").await;
    for _ in 0..=LATE {
        let handler = tokio::time::timeout(common::SAFETY, waited.recv()).await;
        handler.expect("every handler waits in time");
    }
    server.handle.shutdown();
    tokio::time::timeout(common::SAFETY, is_blocked)
        .await
        .expect("the worker blocks in time")
        .expect("blocked");
    shared.answer.notify_waiters();
    // The deadline was set before the block began: it passes while the
    // worker is still blocked (a wait for the clock, not for a signal).
    tokio::time::sleep(TIMEOUT + Duration::from_millis(50)).await;
    unblock.send(()).unwrap();
    let summary = tokio::time::timeout(common::SAFETY, server.task)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("serve result");
    let mut answered = 0;
    for mut s in late {
        let raw = read_to_close(&mut s).await;
        match raw.is_empty() {
            true => {}
            false => {
                let text = String::from_utf8_lossy(&raw);
                assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
                assert!(text.ends_with("late"), "{text}");
                answered += 1;
            }
        }
    }
    assert!(read_to_close(&mut block).await.is_empty());
    // The race this test is for: connections that answered in the loop's
    // last turn. Were none of them polled there (a change in tokio's
    // order), the count below would hold trivially and test nothing.
    assert!(answered > 0, "none answered in the last turn: {summary:?}");
    assert_eq!(
        (summary.finished, summary.forced),
        (answered, LATE + 1 - answered),
        "{answered} of {LATE} answered: {summary:?}"
    );
}

/// How a test holds the worker's thread at the start of shutdown: a
/// handler that waits on [`megaconn::Draining`], says so, and once
/// shutdown began blocks its worker (a `std` channel) until the test is
/// done; meanwhile the runtime polls nothing, so what reaches a socket is
/// in the kernel only, unknown to the worker's cached readiness.
#[derive(Clone)]
struct Hold {
    waiting: tokio::sync::mpsc::UnboundedSender<()>,
    began: tokio::sync::mpsc::UnboundedSender<()>,
    done: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl Hold {
    async fn serve(
        self,
        req: http::Request<megaconn::Body>,
    ) -> Result<http::Response<common::TestBody>, std::convert::Infallible> {
        if req.uri().path() == "/hold" {
            let draining = megaconn::Draining::current().expect("served on a megaconn worker");
            let _ = self.waiting.send(());
            draining.started().await;
            let _ = self.began.send(());
            // Blocks the worker's thread, on purpose (bounded).
            let _ = self.done.lock().unwrap().recv_timeout(common::SAFETY);
        }
        Ok(common::full(http::StatusCode::OK, "ok"))
    }
}

/// Waits until the peer's kernel acknowledged every byte written to `s`
/// (`SIOCOUTQ` is 0): they are in the server's socket buffer.
async fn acknowledged(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + common::SAFETY;
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: a valid socket and a pointer to an int, as SIOCOUTQ takes.
        let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        if unacked == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unacked} bytes never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A keep-alive connection idle as a task (`parked` false) or in the
/// parking lot, whose next request reaches its socket just as graceful
/// shutdown begins, before the worker has polled for it: the request is
/// answered, with `Connection: close`, rather than the socket closed with
/// it unread (a reset: the client had no way to know). Held by [`Hold`]:
/// the worker's thread blocked from the start of shutdown until the
/// request is in the server's socket buffer.
async fn a_request_received_as_shutdown_begins_is_answered(parked: bool) {
    let (waiting, mut waiting_rx) = tokio::sync::mpsc::unbounded_channel();
    let (began, mut began_rx) = tokio::sync::mpsc::unbounded_channel();
    let (done, done_rx) = std::sync::mpsc::channel();
    let hold = Hold {
        waiting,
        began,
        done: std::sync::Arc::new(std::sync::Mutex::new(done_rx)),
    };
    let park_after = parked.then_some(Duration::from_millis(20));
    let builder = with_shutdown_timeout(common::SAFETY / 2)
        .park_idle_after(park_after)
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(
        builder,
        tower::service_fn(move |req| hold.clone().serve(req)),
    );
    let get = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut idle = sent(&server, get).await;
    assert_eq!(read_response(&mut idle).await.status, 200);
    common::wait_stats(&server.handle, "the connection idle", |s| {
        s.connections_idle == 1 && s.connections_parked == i64::from(parked)
    })
    .await;
    let mut holder = sent(&server, b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n").await;
    waiting_rx.recv().await.expect("the handler waits");
    let shutdown_at = Instant::now();
    server.handle.shutdown();
    began_rx.recv().await.expect("shutdown began");
    idle.write_all(get).await.unwrap();
    acknowledged(&idle).await;
    done.send(()).unwrap();
    let answer = read_response(&mut idle).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(read_to_close(&mut idle).await.is_empty());
    let held = read_response(&mut holder).await;
    assert_eq!(held.header("connection"), Some("close"));
    stopped_soon(server, shutdown_at).await;
}

#[tokio::test]
async fn a_request_received_as_shutdown_begins_is_answered_on_an_idle_task() {
    a_request_received_as_shutdown_begins_is_answered(false).await;
}

#[tokio::test]
async fn a_request_received_as_shutdown_begins_is_answered_on_a_parked_connection() {
    a_request_received_as_shutdown_begins_is_answered(true).await;
}

/// Sends requests back to back on `s` until an answer says `Connection:
/// close`, counting each answer; panics if the connection ends before one.
async fn ask_until_told_to_close<S>(mut s: S, answered: &std::sync::atomic::AtomicUsize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut s).await;
        assert_eq!(answer.status, 200);
        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if answer.header("connection") == Some("close") {
            return;
        }
    }
}

/// Busy keep-alive clients (over TLS with `tls`) as graceful shutdown
/// begins (after an upgrade asked for the parked connections, with
/// `hand_over`): every request sent is answered, the last answer of each
/// saying `Connection: close`.
async fn busy_clients_lose_no_request(tls: Option<common::tls::Ca>, hand_over: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CLIENTS: usize = 20;
    let mut builder = with_shutdown_timeout(common::SAFETY / 2);
    if let Some(ca) = &tls {
        let config = ca.server(&["localhost"]);
        builder = builder.tls(config);
    }
    let server = TestServer::start(builder).await;
    let client_tls = tls.as_ref().map(|ca| ca.client(&[b"http/1.1"]));
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, answered, client_tls) = (server.addr, answered.clone(), client_tls.clone());
            tokio::spawn(async move {
                match client_tls {
                    Some(config) => {
                        let s = common::tls::connect(addr, config, "localhost").await;
                        ask_until_told_to_close(s, &answered).await;
                    }
                    None => {
                        let s = TcpStream::connect(addr).await.unwrap();
                        ask_until_told_to_close(s, &answered).await;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + common::SAFETY;
    while answered.load(Ordering::Relaxed) < CLIENTS * 20 {
        assert!(Instant::now() < deadline, "the clients never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _handed = hand_over.then(|| server.handle.hand_over_parked());
    server.handle.shutdown();
    for client in clients {
        client.await.expect("no request lost");
    }
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

/// Keep-alive clients sending requests back to back as graceful shutdown
/// begins: none loses a request. (Before, shutdown closed each connection
/// that was between two requests, under the next one already on its way:
/// every client lost one, reset or cut off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_keep_alive_clients_lose_no_request_at_shutdown() {
    busy_clients_lose_no_request(None, false).await;
}

/// The same over TLS through an upgrade's shutdown: HTTPS/1.1 cannot move
/// to the next process, and parked for the hand-over it was closed at once
/// under each busy client's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_tls_clients_lose_no_request_at_an_upgrade() {
    busy_clients_lose_no_request(Some(common::tls::Ca::new()), true).await;
}

/// A request the forced shutdown cut off (at `shutdown_timeout`) counts as
/// what it was, not as served: a handler that had not answered and a
/// response whose head went out (`200`, chunked) but whose body never
/// ended are both in `megaconn_requests_total{status_class="none"}`, and
/// neither is in the duration histogram (they have no end). The second
/// used to count as a `2xx`, and both as durations of `shutdown_timeout`.
#[tokio::test]
async fn a_request_cut_at_shutdown_timeout_is_not_served() {
    let mut server = TestServer::start(with_shutdown_timeout(Duration::from_millis(200))).await;
    let mut waiting = server.connect().await;
    // Returns once its handler has started (it says so).
    server.start_waiting(&mut waiting).await;
    let mut streaming = server.connect().await;
    streaming
        .write_all(b"GET /forever-body HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 17];
    tokio::time::timeout(common::SAFETY, streaming.read_exact(&mut head))
        .await
        .expect("the head in time")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
    let handle = server.handle.clone();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 2, "{summary:?}");
    let stats = handle.stats();
    let by_class: Vec<(&str, u64)> = stats
        .request_metrics
        .by_method_status
        .iter()
        .map(|c| (c.status_class, c.count))
        .collect();
    assert_eq!(by_class, [("none", 2)], "{stats:?}");
    assert_eq!(stats.request_metrics.duration.count(), 0, "{stats:?}");
    assert_eq!(stats.request_metrics.in_flight, 0);
}
