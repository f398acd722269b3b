//! The hand-written keep-alive loop's own turns (`conn.rs`'s `Run`,
//! session 59), each on a real socket on paused time: a first request's
//! wait that hears a drain begin is made again until the drain's cut (the
//! loop goes back to its top), and the ends of an exchange that gives the
//! connection back to leave the loop (a refused head, HTTP/2's preface, a
//! close), besides one that keeps it. The waits' timeouts and wakes are
//! `keepalive_tests.rs`'.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::serve_connection;
use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::shutdown::NEW_CONNECTION_GRACE;
use crate::observe::close::CloseReason;
use crate::observe::stats::WorkerStats;
use crate::proto;
use crate::service::body::Body;

/// Long enough for any close under test; on paused time it passes at once
/// when nothing else is due, so a loop that never ends fails quickly.
const HANG: Duration = Duration::from_secs(900);

/// A connection's HTTP/1.1 loop on a local task, from the server's end
/// of a fresh socket pair, and the client's end.
struct Loop {
    client: TcpStream,
    ctx: Rc<WorkerContext>,
    /// `Err`: handed over (h2c, an upgrade) or parked; `Ok`: closed, why.
    done: JoinHandle<Result<CloseReason, &'static str>>,
}

impl Loop {
    /// Starts the loop with `config` on a worker without a parking lot;
    /// must run inside a `LocalSet`.
    async fn start(config: Config) -> Loop {
        let ctx = Rc::new(WorkerContext::new(
            0,
            Arc::new(config),
            Arc::new(WorkerStats::default()),
            None,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server_end, _) = listener.accept().await.unwrap();
        let app = tower::service_fn(|_: Request<Body>| async {
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"served"));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        let serving = serve_connection(server_end, app, ctx.clone(), None, None);
        let done = tokio::task::spawn_local(async move {
            match serving.await.0 {
                proto::Ended::Close(reason) => Ok(reason),
                proto::Ended::HandOver(_) => Err("handed over"),
                proto::Ended::Park { .. } => Err("parked"),
            }
        });
        Loop { client, ctx, done }
    }

    /// Sends `bytes` and reads what comes back until the server closes its
    /// end, or `enough` says so.
    async fn say(&mut self, bytes: &[u8], enough: impl Fn(&str) -> bool) -> String {
        self.client.write_all(bytes).await.unwrap();
        let mut heard = Vec::new();
        while !enough(&String::from_utf8_lossy(&heard)) {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(HANG, self.client.read(&mut chunk))
                .await
                .expect("the server neither answered nor closed")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            heard.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&heard).into_owned()
    }

    /// How the loop ended (the client's end still open until it has).
    async fn ended(self) -> Result<CloseReason, &'static str> {
        let ended = tokio::time::timeout(HANG, self.done)
            .await
            .expect("the loop did not end")
            .unwrap();
        drop(self.client);
        ended
    }
}

/// A request, answered `served` while the connection is kept.
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// Runs `test` on a `LocalSet` (the loop's task is local).
async fn on_local_set(test: impl std::future::Future<Output = ()>) {
    tokio::task::LocalSet::new().run_until(test).await;
}

/// A new connection waiting for its first request when the drain begins
/// is not closed at once: its wait ends (`Waited::Shutdown`), the loop
/// goes back to its top and waits again, now until the drain's cut, so a
/// request that comes within it is served (with `Connection: close`), and
/// a connection that sends none closes at the cut, as the drain's.
#[tokio::test(start_paused = true)]
async fn a_first_wait_that_hears_the_drain_begin_waits_again_until_its_cut() {
    on_local_set(async {
        let config = Config {
            read_header_timeout: Some(HANG * 2),
            ..Config::default()
        };
        // A request a second into the drain.
        let mut l = Loop::start(config.clone()).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        l.ctx.shutdown.start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let answer = l.say(GET, |_| false).await;
        let head = answer.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{answer}");
        assert!(head.contains("connection: close"), "{answer}");
        assert!(answer.ends_with("served"), "{answer}");
        assert!(l.ended().await.is_ok());

        // None at all: closed at the cut.
        let l = Loop::start(config).await;
        let accepted = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        l.ctx.shutdown.start();
        let ended = l.ended().await;
        let took = accepted.elapsed();
        assert_eq!(ended, Ok(CloseReason::ShutdownBeforeRequest));
        assert!(
            took >= NEW_CONNECTION_GRACE && took < NEW_CONNECTION_GRACE * 2,
            "closed {took:?} after its accept"
        );
    })
    .await;
}

/// The exchange gives the connection back to the loop at each of its
/// ends: kept, the next request is read; a refused head is answered and
/// closes; HTTP/2's preface on a fresh connection hands it over.
#[tokio::test(start_paused = true)]
async fn each_end_of_an_exchange_gives_the_loop_its_connection_back() {
    on_local_set(async {
        let served = |a: &str| a.ends_with("served");
        // Kept, three times over; then closed by the client's ask.
        let mut l = Loop::start(Config::default()).await;
        for _ in 0..3 {
            let answer = l.say(GET, served).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let close = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let answer = l.say(close, |_| false).await;
        assert!(answer.ends_with("served"), "{answer}");
        assert_eq!(l.ended().await, Ok(CloseReason::ServerClosed));

        // A refused head, after a kept request.
        let mut l = Loop::start(Config::default()).await;
        l.say(GET, served).await;
        let answer = l.say(b"GET / HTTP/1.1\r\nHost t\r\n\r\n", |_| false).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert_eq!(
            l.ended().await,
            Ok(CloseReason::status(http::StatusCode::BAD_REQUEST))
        );

        // HTTP/2's preface as the first request.
        let mut l = Loop::start(Config::default()).await;
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        l.client.write_all(preface).await.unwrap();
        assert_eq!(l.ended().await, Err("handed over"));
    })
    .await;
}
