//! The settings that bound HTTP/2 grown receive windows (session 52): a
//! stream whose handler keeps up with its upload has its window grown
//! (session 51, `h2_upload.rs`), never past
//! `Builder::http2_max_grown_stream_window` (0: never), all of a server's
//! streams together within `Builder::http2_grown_windows_budget`, whose
//! refusals are counted (`limit_hits{limit="http2_grown_windows_budget"}`)
//! and whose use is a gauge (`megaconn_http2_grown_windows_bytes`), given
//! back when a body ends; a window setting HTTP/2 cannot carry is refused
//! at `listen`. (The budget's log line is in the `lifecycle` binary, which
//! captures the log.)
//!
//! How a window is seen from the client: a handler that reads its upload
//! as it comes, then stops, leaves its client at most its stream's window
//! ahead of what it read (flow control gives back only what the handler
//! took). Once the client has used that window up and waits, what it sent
//! less what the handler read is the window the stream had grown to.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use megaconn::{Body, Builder, Error, DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW};
use tokio::sync::Notify;

use super::h2::{limit_hits, SAFETY};

/// The window a stream starts with (half the default unread budget).
const STREAM_WINDOW: usize = 64 * 1024;

/// The handler reads this much of its body, then stops reading: by then a
/// window left to grow has grown to 1 or 2 MiB (64 KiB doubling at each
/// whole window read), far past the caps the tests set. (What the client
/// is then ahead is more than half of it: h2 holds back a WINDOW_UPDATE
/// for less than half of what is left of a window.)
const HOLD_AT: usize = 2 << 20;

/// The limit label the budget's refusals count under.
const REFUSED: &str = "http2_grown_windows_budget";

/// What the handler and the client's upload have done, and signals when
/// each stops.
#[derive(Default)]
struct Progress {
    /// Bytes the handler read.
    read: AtomicUsize,
    /// The handler stopped reading, at [`HOLD_AT`].
    holding: AtomicBool,
    /// Bytes the client handed to h2, each within the window it was given.
    sent: AtomicUsize,
    /// The client waits for window, with none left.
    blocked: AtomicBool,
    /// Told when `holding` or `blocked` is set.
    moved: Notify,
}

impl Progress {
    /// Waits, bounded by [`SAFETY`], until `done` says so of `self`,
    /// woken by each change the handler or the upload tells.
    async fn until(&self, what: &str, done: impl Fn(&Progress) -> bool) {
        let waited = tokio::time::timeout(SAFETY, async {
            loop {
                // Made before the look, so a change after it wakes it.
                let moved = self.moved.notified();
                if done(self) {
                    return;
                }
                moved.await;
            }
        });
        if waited.await.is_err() {
            panic!(
                "{what} never came: {} bytes sent, {} read",
                self.sent.load(SeqCst),
                self.read.load(SeqCst)
            );
        }
    }
}

/// The handler: reads its body as it comes, counting in `progress`, until
/// [`HOLD_AT`], then holds it unread and never answers.
fn service(
    progress: Arc<Progress>,
) -> impl megaconn::HttpService<ResBody = Full<Bytes>, BodyError = Infallible> + Clone + Send + 'static
{
    tower::service_fn(move |req: Request<Body>| {
        let progress = progress.clone();
        async move {
            let mut body = req.into_body();
            let mut n = 0;
            while n < HOLD_AT {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let len = frame.data_ref().map_or(0, Bytes::len);
                        n += len;
                        progress.read.fetch_add(len, SeqCst);
                    }
                    _ => break,
                }
            }
            progress.holding.store(true, SeqCst);
            progress.moved.notify_waiters();
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    })
}

/// A one-worker server of [`service`] with `builder`'s settings, shut down
/// when dropped (a failed assertion included).
struct Server {
    addr: SocketAddr,
    handle: megaconn::ServerHandle,
    task: Option<tokio::task::JoinHandle<Result<megaconn::ShutdownSummary, Error>>>,
}

impl Server {
    fn start(builder: Builder, progress: Arc<Progress>) -> Server {
        // The held handler never answers: the shutdown cuts it at once.
        let builder = builder.shutdown_timeout(Duration::from_millis(100));
        let server = common::AppServer::one_worker(builder, service(progress));
        Server {
            addr: server.addr(),
            handle: server.handle,
            task: Some(server.task),
        }
    }

    /// Shuts down and waits for the server to stop (its held handler and
    /// body dropped).
    async fn stop(mut self) {
        self.handle.shutdown();
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(SAFETY, task)
            .await
            .expect("the server stops")
            .expect("the server task")
            .expect("served");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Posts an upload of 8 MiB (more than any window) to `addr`, sent as the
/// server's windows let it through, and waits until the handler stopped
/// reading and the client has used up the window it had then: returns
/// what it sent less what the handler read, the stream's window (see the
/// module doc). The client's connection stays open (and the stream, the
/// handler holding its body) until the server stops.
async fn window_when_held(addr: SocketAddr, progress: &Arc<Progress>) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("the PING handle");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut ready = client.ready().await.unwrap();
    let req = Request::post("http://t/").body(()).unwrap();
    let (_answer, send) = ready.send_request(req, false).unwrap();
    upload(send, 8 << 20, progress.clone());
    progress
        .until("the handler's stop", |p| p.holding.load(SeqCst))
        .await;
    // The WINDOW_UPDATEs for what the handler read before it stopped may
    // still be on their way: two PINGs answered, the second read by the
    // server after it flushed them, and the client has read them (frames
    // come in order).
    for _ in 0..2 {
        tokio::time::timeout(SAFETY, pings.ping(h2::Ping::opaque()))
            .await
            .expect("a PING answered in time")
            .expect("the PING answered");
    }
    progress
        .until("the client's wait for window", |p| p.blocked.load(SeqCst))
        .await;
    progress.sent.load(SeqCst) - progress.read.load(SeqCst)
}

/// Sends what the server's windows let through on `send`, as room comes,
/// up to `want` bytes, counting each sent byte in `progress` before it can
/// reach the wire, and saying when it waits with no window left.
fn upload(mut send: h2::SendStream<Bytes>, want: usize, progress: Arc<Progress>) {
    tokio::spawn(async move {
        let mut left = want;
        while left > 0 {
            send.reserve_capacity(left);
            if send.capacity() == 0 {
                progress.blocked.store(true, SeqCst);
                progress.moved.notify_waiters();
            }
            let room = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
            progress.blocked.store(false, SeqCst);
            let Some(Ok(room)) = room else {
                return;
            };
            let n = room.min(left);
            if n == 0 {
                continue;
            }
            progress.sent.fetch_add(n, SeqCst);
            if send.send_data(Bytes::from(vec![7u8; n]), false).is_err() {
                return;
            }
            left -= n;
        }
        std::future::pending::<()>().await;
    });
}

/// `http2_max_grown_stream_window` is the most a stream's window grows
/// to: at 256 KiB, a handler that read 2 MiB and stopped has its client
/// at most 256 KiB ahead of it (64 KiB, doubled twice), where the default
/// (4 MiB) let it more than 512 KiB ahead; at 0, and with no budget, the window stays the
/// 64 KiB it starts with, and no refusal is counted (growth is off, not
/// refused). Before session 52 the cap was a constant: the settings did
/// not exist.
#[tokio::test]
async fn a_stream_window_grows_to_the_setting_and_not_at_zero() {
    let cases = [
        (
            "a cap of 256 KiB",
            Builder::default().http2_max_grown_stream_window(256 << 10),
            256 << 10,
        ),
        (
            "a cap of 0",
            Builder::default().http2_max_grown_stream_window(0),
            STREAM_WINDOW,
        ),
        (
            "a budget of 0",
            Builder::default().http2_grown_windows_budget(0),
            STREAM_WINDOW,
        ),
    ];
    for (what, builder, most) in cases {
        let progress = Arc::new(Progress::default());
        let server = Server::start(builder, progress.clone());
        let window = window_when_held(server.addr, &progress).await;
        assert!(
            window <= most,
            "{what}: the client got {window} bytes ahead of the handler (at most {most})"
        );
        let stats = server.handle.stats();
        assert_eq!(limit_hits(&stats, REFUSED), 0, "{what}");
        server.stop().await;
    }
    // The default grows past all of them (the test can tell).
    let progress = Arc::new(Progress::default());
    let server = Server::start(Builder::default(), progress.clone());
    let window = window_when_held(server.addr, &progress).await;
    assert!(
        window > 256 << 10,
        "the default window grew to {window} only"
    );
    server.stop().await;
}

/// A budget of 100,000 bytes takes the stream's first growth (64 KiB) and
/// refuses the next (128 KiB more): the window stays at 128 KiB, each
/// refusal is counted in `megaconn_limit_hits_total{limit=
/// "http2_grown_windows_budget"}` (the server's own: the budget and its
/// count are per server), `megaconn_http2_grown_windows_bytes` shows the
/// 64 KiB in use while the body lives, and 0 once it is gone (given
/// back). Before session 52 the budget ran out with no count and no gauge.
#[tokio::test]
async fn a_spent_budget_is_counted_and_its_use_is_a_gauge() {
    let progress = Arc::new(Progress::default());
    let server = Server::start(
        Builder::default().http2_grown_windows_budget(100_000),
        progress.clone(),
    );
    let window = window_when_held(server.addr, &progress).await;
    assert!(window <= 2 * STREAM_WINDOW, "the window grew to {window}");
    let stats = server.handle.stats();
    assert!(limit_hits(&stats, REFUSED) >= 1, "{:?}", stats.limit_hits);
    assert_eq!(stats.http2_grown_windows_bytes, STREAM_WINDOW as u64);
    let metrics = server.handle.render_metrics();
    let refused = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("megaconn_limit_hits_total{limit=\"http2_grown_windows_budget\"} ")
        })
        .unwrap_or_else(|| panic!("no refusal series in {metrics}"));
    assert!(refused.parse::<u64>().unwrap() >= 1, "{refused}");
    assert!(
        metrics.contains(&format!(
            "\nmegaconn_http2_grown_windows_bytes {STREAM_WINDOW}\n"
        )),
        "{metrics}"
    );
    let handle = server.handle.clone();
    server.stop().await;
    assert_eq!(handle.stats().http2_grown_windows_bytes, 0, "given back");
}

/// A cap HTTP/2 cannot carry (a window is at most 2^31 - 1) is refused by
/// `listen` with a typed error naming the setting, as `validate` refuses
/// it; the largest window, 0 and the default pass `validate`. Before, the cap was a
/// constant, and an out-of-range one would have failed only each stream's
/// growth, silently.
#[test]
fn a_window_cap_past_http2_s_largest_is_refused() {
    let bind = |cap: u32| {
        Builder::default()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .http2_max_grown_stream_window(cap)
    };
    for cap in [1 << 31, u32::MAX] {
        assert!(bind(cap).validate().is_err(), "{cap}");
        match bind(cap).listen() {
            Err(Error::Config(e)) => {
                assert!(e.contains("http2_max_grown_stream_window"), "{e}");
                assert!(e.contains("2147483647"), "{e}");
            }
            Err(e) => panic!("{cap}: another error: {e}"),
            Ok(_) => panic!("{cap}: listens"),
        }
    }
    for cap in [(1 << 31) - 1, 0, DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW] {
        bind(cap)
            .validate()
            .unwrap_or_else(|e| panic!("{cap}: {e}"));
    }
}
