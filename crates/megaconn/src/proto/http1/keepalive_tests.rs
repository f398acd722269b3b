//! The keep-alive loop's timeouts and wakes (`conn.rs`'s `run` and its
//! `wait_for_bytes`; written in session 58 for a hand-written loop that was
//! measured and reverted, kept because they pin behaviour, not a layout),
//! each on a real socket on paused time: the idle timeout closes a silent
//! keep-alive connection, the header timeout a silent new one and one
//! whose head stopped midway, a drain a waiting one, and the parking lot
//! takes one (`park_idle_after`, and the worker's park-all). The
//! connection leaves the idle gauge whenever its wait ends.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::conn::serve_connection;
use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::limit::ConnectionLimit;
use crate::conn::park::{LotFds, ParkingLot};
use crate::observe::close::CloseReason;
use crate::observe::stats::WorkerStats;
use crate::proto;
use crate::service::body::Body;

/// The timeouts under test.
const WAIT: Duration = Duration::from_millis(100);

/// A hang guard: on paused time it passes at once when nothing else is
/// due, so a connection that is never closed fails the test quickly.
const GUARD: Duration = Duration::from_secs(600);

/// How the connection's HTTP/1.1 loop ended.
#[derive(Debug, PartialEq)]
enum End {
    Close(CloseReason),
    Park,
    HandOver,
}

/// One connection served by `serve_connection` on a local task.
struct Served {
    client: TcpStream,
    ctx: Rc<WorkerContext>,
    stats: Arc<WorkerStats>,
    ended: tokio::task::JoinHandle<End>,
}

impl Served {
    /// How the loop ended, once it has (within [`GUARD`]; the client's
    /// end kept open until then); the connection has left the idle gauge
    /// by then.
    async fn end(self) -> End {
        let Served {
            client,
            stats,
            ended,
            ..
        } = self;
        let end = tokio::time::timeout(GUARD, ended)
            .await
            .expect("the connection's loop did not end within the guard")
            .unwrap();
        drop(client);
        let idle = stats.connections_idle.load(Relaxed);
        assert_eq!(idle, 0, "the idle gauge after the loop ended ({end:?})");
        end
    }
}

/// Serves one connection with `config`, on a worker with a parking lot
/// (`lot`) or without; must run inside a `LocalSet`.
async fn serve(config: Config, lot: bool) -> Served {
    let stats = Arc::new(WorkerStats::default());
    let lot = lot.then(|| {
        let fds = LotFds::new(Duration::ZERO).unwrap();
        ParkingLot::new(fds, ConnectionLimit::new(4, None), stats.clone(), WAIT)
    });
    let ctx = Rc::new(WorkerContext::new(0, Arc::new(config), stats.clone(), lot));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server_end, _) = listener.accept().await.unwrap();
    // Answers whether the connection was out of the idle gauge while its
    // request was handled (it is busy then).
    let gauge = stats.clone();
    let app = tower::service_fn(move |_: Request<Body>| {
        let idle = gauge.connections_idle.load(Relaxed);
        async move {
            let said: &'static [u8] = if idle == 0 { BUSY } else { b"listed idle" };
            let body = http_body_util::Full::new(bytes::Bytes::from_static(said));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        }
    });
    let serving = serve_connection(server_end, app, ctx.clone(), None, None);
    let ended = tokio::task::spawn_local(async move {
        match serving.await.0 {
            proto::Ended::Close(reason) => End::Close(reason),
            proto::Ended::Park { .. } => End::Park,
            proto::Ended::HandOver(_) => End::HandOver,
        }
    });
    Served {
        client,
        ctx,
        stats,
        ended,
    }
}

/// The answer of a request handled while its connection was out of the
/// idle gauge.
const BUSY: &[u8] = b"busy";

/// One keep-alive request, and its whole answer, which says the
/// connection was busy while it was handled.
async fn ask(c: &mut TcpStream) {
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(c, |a| a.ends_with(BUSY) || a.ends_with(b"idle")).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.ends_with("\r\n\r\nbusy"), "{answer}");
}

/// What the client reads until `done` says so, or the server closes (or
/// resets) its end, within [`GUARD`].
async fn read_until(c: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    while !done(&got) {
        let mut chunk = [0u8; 512];
        let read = tokio::time::timeout(GUARD, c.read(&mut chunk)).await;
        match read.expect("the server neither answered nor closed within the guard") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

/// Runs `test` on a `LocalSet` (the connection's task is local).
async fn local(test: impl std::future::Future<Output = ()>) {
    tokio::task::LocalSet::new().run_until(test).await;
}

/// A keep-alive connection that falls silent after some requests is
/// closed at its idle timeout, counted as a timeout: the timer's own
/// wake must be heard while nothing else happens.
#[tokio::test(start_paused = true)]
async fn a_silent_keep_alive_connection_closes_at_its_idle_timeout() {
    local(async {
        let config = Config {
            idle_timeout: Some(WAIT),
            ..Config::default()
        };
        let mut s = serve(config, false).await;
        for _ in 0..3 {
            ask(&mut s.client).await;
        }
        let quiet = Instant::now();
        let rest = read_until(&mut s.client, |_| false).await;
        let waited = quiet.elapsed();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert!(
            waited >= WAIT,
            "closed {waited:?} into the silence, idle_timeout {WAIT:?}"
        );
        let stats = s.stats.clone();
        assert_eq!(s.end().await, End::Close(CloseReason::IdleTimeout));
        assert_eq!(stats.timeouts.load(Relaxed), 1);
    })
    .await;
}

/// A new connection that sends nothing is closed at `read_header_timeout`
/// (its first wait), and one whose head stopped midway is answered `408`
/// and closed (the head's read).
#[tokio::test(start_paused = true)]
async fn a_head_not_sent_in_time_closes_at_read_header_timeout() {
    local(async {
        for partial in [&b""[..], b"GET / HTTP/1.1\r\nHost:"] {
            let config = Config {
                read_header_timeout: Some(WAIT),
                ..Config::default()
            };
            let mut s = serve(config, false).await;
            s.client.write_all(partial).await.unwrap();
            let answer = read_until(&mut s.client, |_| false).await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            if partial.is_empty() {
                assert_eq!(answer, "", "nothing sent: closed without a word");
            } else {
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            }
            drop(s.client);
            let ended = tokio::time::timeout(GUARD, s.ended).await.unwrap().unwrap();
            assert_eq!(ended, End::Close(CloseReason::HeaderTimeout), "{answer}");
        }
    })
    .await;
}

/// A drain wakes a keep-alive connection waiting between requests, and
/// it closes as the drain's.
#[tokio::test(start_paused = true)]
async fn a_drain_closes_a_waiting_keep_alive_connection() {
    local(async {
        let config = Config {
            idle_timeout: Some(GUARD / 2),
            ..Config::default()
        };
        let mut s = serve(config, false).await;
        ask(&mut s.client).await;
        ask(&mut s.client).await;
        // The connection is waiting: the server's poll that wrote the
        // answer went on into the wait before the client could read it.
        assert_eq!(s.stats.connections_idle.load(Relaxed), 1, "waiting idle");
        let drain = Instant::now();
        s.ctx.shutdown.start();
        assert_eq!(s.end().await, End::Close(CloseReason::Shutdown));
        // Woken by the drain, not found drained at its idle timeout (its
        // close lingers at most `SHUTDOWN_LINGER`, 500 ms).
        let took = drain.elapsed();
        assert!(took < GUARD / 4, "closed {took:?} into the drain");
    })
    .await;
}

/// A keep-alive connection silent for `park_idle_after` goes to the
/// parking lot, and so does a waiting one when the worker parks every
/// idle connection (an upgrade hands the lot on).
#[tokio::test(start_paused = true)]
async fn a_waiting_connection_is_parked() {
    local(async {
        // At `park_idle_after`, before the idle timeout.
        let config = Config {
            park_idle_after: Some(WAIT),
            idle_timeout: Some(GUARD / 2),
            ..Config::default()
        };
        let mut s = serve(config, true).await;
        ask(&mut s.client).await;
        ask(&mut s.client).await;
        assert_eq!(s.end().await, End::Park, "at park_idle_after");

        // Asked to, with no `park_idle_after`.
        let config = Config {
            park_idle_after: None,
            idle_timeout: Some(GUARD / 2),
            ..Config::default()
        };
        let mut s = serve(config, true).await;
        ask(&mut s.client).await;
        let asked = Instant::now();
        s.ctx.shutdown.park_all_idle(false);
        assert_eq!(s.end().await, End::Park, "asked to park");
        // Woken by the ask, not found asked at its idle timeout.
        let took = asked.elapsed();
        assert!(took < GUARD / 4, "parked {took:?} after the ask");
    })
    .await;
}
