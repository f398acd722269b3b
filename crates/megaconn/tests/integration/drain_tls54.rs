//! Graceful shutdown and connections that have not asked for anything yet,
//! beyond cleartext HTTP/1.1 (session 54; session 53 gave HTTP/1.1's first
//! head Go's rule, `drain_before_request.rs`): a TLS handshake in progress,
//! a TLS connection whose first head is not whole, an HTTP/2 connection
//! with no stream yet, in its handshake or past it.
//!
//! The rule: a connection that has not asked yet closes 5 s after its
//! accept (its HTTP/2 handshake's start, for HTTP/2), at the drain's start
//! at the earliest, as Go's `Shutdown` closes a `StateNew` connection 5 s
//! old, as `shutdown_before_request` (a TLS handshake also counted
//! `tls_handshakes{outcome="shutdown"}`), a close of the drain, not forced.
//! Before, a TLS handshake held the drain until `handshake_timeout` (with
//! that off, to the deadline), and an HTTP/2 handshake was cut at the
//! drain's start, the request its client had on the way lost.
//!
//! Real sockets and clients (rustls, h2), one worker, a deadline
//! (`SHUTDOWN_TIMEOUT`) past the grace and short of `common::SAFETY`, so a
//! regression reads `forced: 1` rather than a hang. Every wait is on an
//! event, a counter or a close; the one sleep is the condition under test
//! (a connection's age).

use std::time::Duration;

use megaconn::{CloseReason, ConnectionEvent, ConnectionState, TlsConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::common;
use crate::h2::{frame, RawH2, ACK, END_STREAM, GET_ROOT, GOAWAY, HEADERS, PING};
use common::tls::{connect, http1_get, through_server_flight, Ca};
use common::{closed_as, handshakes, read_to_close, TestServer, SAFETY};

/// The drain's deadline: past the 5 s grace, short of [`SAFETY`].
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Go's grace for a new connection at `Shutdown`, and megaconn's.
const GRACE: Duration = Duration::from_secs(5);

/// The close reason's label, and the handshake outcome's.
const BEFORE_REQUEST: &str = "shutdown_before_request";

/// Part of a head: a request line and a field, no blank line.
const PART: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n";

/// HTTP/2's `END_HEADERS` flag.
const END_HEADERS: u8 = 0x4;

/// A connection's close as the `on_connection` hook heard it.
#[derive(Debug)]
struct Closed {
    reason: CloseReason,
    /// How long it was open, from its accept.
    age: Duration,
}

/// A one-worker server with the test app on `tls` (cleartext with
/// `None`), `read_header_timeout` off (the cut, not that timeout, must
/// close a head), and the close events.
async fn start_server(
    tls: Option<TlsConfig>,
    configure: impl FnOnce(megaconn::Builder) -> megaconn::Builder,
) -> (TestServer, mpsc::UnboundedReceiver<Closed>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut builder = megaconn::Server::builder()
        .workers(1)
        .read_header_timeout(None)
        .park_idle_after(None)
        .shutdown_timeout(SHUTDOWN_TIMEOUT)
        .on_connection(move |e| {
            if let ConnectionEvent::Closed {
                reason, duration, ..
            } = e
            {
                let _ = tx.send(Closed {
                    reason: *reason,
                    age: *duration,
                });
            }
        });
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    (TestServer::start(configure(builder)).await, rx)
}

/// Stops `server`: nothing forced, `closed` connections closed as
/// [`BEFORE_REQUEST`].
async fn stop_expecting(server: TestServer, closed: u64) -> megaconn::ServerStats {
    let handle = server.handle.clone();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "held to the deadline: {summary:?}");
    let stats = handle.stats();
    assert_eq!(closed_as(&stats, BEFORE_REQUEST), closed, "{stats:?}");
    stats
}

/// Waits (bounded by [`SAFETY`]) until `server` lists a connection
/// `idle`: an HTTP/2 one is `reading_head` until its handshake is done
/// (an h2c one before its hand-over too), `idle` after it with no stream.
async fn listed_idle(server: &TestServer) {
    let deadline = Instant::now() + SAFETY;
    loop {
        let (_, list) = server.handle.connections(0, 10);
        if list.iter().any(|c| c.state == ConnectionState::Idle) {
            return;
        }
        assert!(Instant::now() < deadline, "never listed idle: {list:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What `io` reads until its end (a close, with or without `close_notify`,
/// or an error), bounded by [`SAFETY`].
async fn read_until_end(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let ended = tokio::time::timeout(SAFETY, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = io.read(&mut chunk).await {
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(ended.is_ok(), "not closed: read {out:?}");
    out
}

/// A TLS handshake in progress at the drain (the client's ClientHello
/// answered, its Finished held back) is closed 5 s after its accept,
/// without a word, as `shutdown_before_request`: it held the drain until
/// `handshake_timeout`, here off, so to the deadline (`forced: 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_in_progress_does_not_hold_the_drain() {
    let ca = Ca::new();
    let tls = ca.server(&["localhost"]).handshake_timeout(None);
    let (server, mut closes) = start_server(Some(tls), |b| b).await;
    let addr = server.addr;
    let config = ca.client(&[b"http/1.1"]);
    let (mut tcp, _client) =
        tokio::task::spawn_blocking(move || through_server_flight(addr, config))
            .await
            .unwrap();
    server.handle.shutdown();
    let stats = stop_expecting(server, 1).await;
    assert_eq!(handshakes(&stats, "shutdown"), 1, "{stats:?}");
    assert_eq!(handshakes(&stats, "timeout"), 0, "{stats:?}");
    let closed = common::next(&mut closes, "the close").await;
    assert_eq!(closed.reason, CloseReason::ShutdownBeforeRequest);
    assert!(closed.age >= GRACE, "closed before 5 s old: {closed:?}");
    // Without a word: no alert after the server's flight, just the end.
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut tcp, &mut rest);
        rest
    })
    .await
    .unwrap();
    assert!(rest.is_empty(), "closed with {rest:?}");
}

/// A connection still in its handshake (not even its ClientHello sent)
/// and older than the grace when the drain begins closes with the idle
/// ones (after their 500 ms grace, or at a paced drain's turn), not at its
/// `handshake_timeout` (10 s after its accept: 5 s into the drain) and
/// not 5 s into the drain: its close event comes within a second under
/// the grace of the drain's start (expected ~0.5 s; the rest is the slack
/// a loaded machine needs).
async fn an_old_handshake_closes_with_the_drain(paced: bool) {
    let ca = Ca::new();
    let (server, mut closes) = start_server(Some(ca.server(&["localhost"])), |b| {
        b.shutdown_drain_rate(paced.then_some(100))
    })
    .await;
    let mut old = server.connect().await;
    server
        .wait_stats("accepted", |s| s.connections_open == 1)
        .await;
    // The condition under test: the connection's age.
    tokio::time::sleep(GRACE).await;
    let started = Instant::now();
    server.handle.shutdown();
    let closed = common::next(&mut closes, "its close").await;
    let took = started.elapsed();
    assert!(
        took < GRACE - Duration::from_secs(1),
        "{closed:?} {took:?} into the drain"
    );
    assert_eq!(closed.reason, CloseReason::ShutdownBeforeRequest);
    assert!(
        read_to_close(&mut old).await.is_empty(),
        "closed unanswered"
    );
    let stats = stop_expecting(server, 1).await;
    assert_eq!(handshakes(&stats, "shutdown"), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_handshake_closes_with_the_drain_not_at_its_timeout() {
    an_old_handshake_closes_with_the_drain(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_handshake_closes_at_its_turn_in_a_paced_drain() {
    an_old_handshake_closes_with_the_drain(true).await;
}

/// A TLS connection whose handshake is done but whose first head is not
/// whole (nothing sent yet, or part of it) follows HTTP/1.1's rule
/// (session 53): closed at its cut, unanswered, as
/// `shutdown_before_request`, not held to the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_without_a_whole_first_head_does_not_hold_the_drain() {
    let ca = Ca::new();
    let (server, _closes) = start_server(Some(ca.server(&["localhost"])), |b| b).await;
    let config = ca.client(&[b"http/1.1"]);
    let mut silent = connect(server.addr, config.clone(), "localhost").await;
    let mut midway = connect(server.addr, config, "localhost").await;
    server
        .wait_stats("both wait for their first byte", |s| {
            s.connections_open == 2 && s.connections_idle == 2
        })
        .await;
    midway.write_all(PART).await.unwrap();
    midway.flush().await.unwrap();
    server
        .wait_stats("the part of the head is read", |s| {
            s.connections_open == 2 && s.connections_idle == 1
        })
        .await;
    let stats = stop_expecting(server, 2).await;
    assert_eq!(handshakes(&stats, "completed"), 2, "{stats:?}");
    assert!(read_until_end(&mut silent).await.is_empty(), "unanswered");
    assert!(read_until_end(&mut midway).await.is_empty(), "unanswered");
}

/// An HTTP/2 connection over TLS, its TLS handshake done, whose client
/// sends its first flight (preface, SETTINGS and a request, in one write,
/// as a browser does) only after the drain began: the request is served,
/// and the connection then ends (`GOAWAY`). Its HTTP/2 handshake was cut
/// at the drain's start: the request was lost, the client read the end of
/// the connection instead of an answer. One whose preface never comes
/// closes at its cut, as `shutdown_before_request`. (The request goes out
/// with the preface: one sent after the client has read our `GOAWAY` and
/// answered its PING is refused unprocessed, as HTTP/2 has it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_request_whose_preface_comes_after_the_drain_began_is_served() {
    let ca = Ca::new();
    let (server, mut closes) = start_server(Some(ca.server(&["localhost"])), |b| b).await;
    // An idle connection: its close tells the test that the drain began.
    let mut idle = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut idle).await.0, "HTTP/1.1 200 OK");
    let late = connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
    let mut never = connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
    server
        .wait_stats("the TLS handshakes done", |s| {
            handshakes(s, "completed") == 3 && s.connections_open == 3
        })
        .await;
    server.handle.shutdown();
    let closed = common::next(&mut closes, "the idle one's close").await;
    assert_eq!(closed.reason, CloseReason::Shutdown, "{closed:?}");
    let request = frame(HEADERS, END_STREAM | END_HEADERS, 1, &GET_ROOT);
    let mut late = RawH2::over(late, &request).await;
    let (mut status, mut goaway) = (None, false);
    // Until the close, answering SETTINGS and PINGs as a client does.
    while let Some(f) = late.next_frame().await {
        if late.ack_settings(&f).await {
            continue;
        }
        match f.kind {
            PING if f.flags & ACK == 0 => late.send(&frame(PING, ACK, 0, &f.payload)).await,
            // HPACK's indexed `:status 200`, as h2 encodes it.
            HEADERS if f.stream == 1 => status = f.payload.first().copied(),
            GOAWAY => goaway = true,
            _ => {}
        }
    }
    assert_eq!(status, Some(0x88), "no 200: the request was lost");
    assert!(goaway, "the connection ends with a GOAWAY");
    let stats = stop_expecting(server, 1).await;
    assert_eq!(closed_as(&stats, "shutdown"), 2, "{stats:?}");
    // It ends; what it read is our SETTINGS, sent as its handshake began.
    read_until_end(&mut never).await;
}

/// An HTTP/2 connection whose handshake is done and that opened no stream
/// yet, h2c and over TLS: told `GOAWAY` at the drain's start, it ends as
/// soon as its client acknowledges (h2's client does at once), counted
/// `shutdown`, not held (nor cut as `shutdown_before_request`: it could
/// have asked, and the `GOAWAY` told it not to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_with_no_stream_yet_does_not_hold_the_drain() {
    let ca = Ca::new();
    for tls in [None, Some(ca.server(&["localhost"]))] {
        let over_tls = tls.is_some();
        let (server, mut closes) = start_server(tls, |b| b.track_connections(true)).await;
        let (client, conn) = if over_tls {
            let io = connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
            let (client, conn) = h2::client::handshake(io).await.expect("h2");
            (client, tokio::spawn(async move { conn.await.is_ok() }))
        } else {
            let io = server.connect().await;
            let (client, conn) = h2::client::handshake(io).await.expect("h2c");
            (client, tokio::spawn(async move { conn.await.is_ok() }))
        };
        listed_idle(&server).await;
        let started = Instant::now();
        let stats = {
            server.handle.shutdown();
            let ended = tokio::time::timeout(SAFETY, conn).await;
            assert!(ended.is_ok(), "over TLS {over_tls}: still open");
            eprintln!(
                "over TLS {over_tls}: closed {:?} into the drain",
                started.elapsed()
            );
            stop_expecting(server, 0).await
        };
        assert_eq!(closed_as(&stats, "shutdown"), 1, "{stats:?}");
        let closed = common::next(&mut closes, "the close").await;
        assert_eq!(closed.reason, CloseReason::Shutdown, "{closed:?}");
        drop(client);
    }
}
