//! Blocking in handlers on thread-per-core workers: `spawn_blocking` works,
//! `block_in_place` (which needs tokio's multi-threaded runtime) fails with a
//! 500 and a log line saying what to use, and a handler that blocks its
//! worker's thread is reported by the stall detector.

use crate::common;

use std::convert::Infallible;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use megaconn::Body;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use common::{read_response, SAFETY};

/// Releases the handler that blocks its thread (the receiver), and tells
/// the test that it is blocking (the sender).
type Gate = Arc<Mutex<Option<(mpsc::Receiver<()>, oneshot::Sender<()>)>>>;

fn app(
    gate: Gate,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |req: Request<Body>| {
        let gate = gate.clone();
        async move {
            let text = match req.uri().path() {
                "/spawn-blocking" => tokio::task::spawn_blocking(|| "computed off the worker")
                    .await
                    .unwrap()
                    .to_string(),
                "/block-in-place" => tokio::task::block_in_place(|| "unreachable").to_string(),
                "/block-thread" => {
                    // Blocks the worker's thread until the test, having seen
                    // the stall reported, lets it go: no timing involved.
                    let (rx, blocking) = gate.lock().unwrap().take().expect("one blocking request");
                    let _ = blocking.send(());
                    rx.recv_timeout(SAFETY)
                        .expect("the test releases the handler");
                    "released".to_string()
                }
                _ => "hello".to_string(),
            };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        }
    })
}

async fn start(
    builder: megaconn::Builder,
    gate: Gate,
) -> (std::net::SocketAddr, megaconn::ServerHandle) {
    let server = builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.serve(app(gate)));
    (addr, handle)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> common::RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_works_and_block_in_place_is_a_500() {
    let (addr, handle) = start(megaconn::Server::builder(), Gate::default()).await;
    let r = get(addr, "/spawn-blocking").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"computed off the worker".as_slice())
    );
    let r = get(addr, "/block-in-place").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR.as_u16());
    assert_eq!(handle.stats().panics, 1);
    assert_eq!(get(addr, "/").await.status, 200, "the server lives on");
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_blocking_its_worker_is_reported_as_a_stall() {
    let (release, rx) = mpsc::channel();
    let (blocking, is_blocking) = oneshot::channel();
    let gate: Gate = Arc::new(Mutex::new(Some((rx, blocking))));
    let (addr, handle) = start(
        megaconn::Server::builder().stall_threshold(Some(Duration::from_millis(100))),
        gate,
    )
    .await;
    // A loaded machine may keep the worker from its loop for 100 ms at any
    // time (a stall too, reported as such): the counts below allow for one
    // before the block and tell the block's own apart by when they are read.
    let before = handle.stats().worker_stalls;
    let blocked = tokio::spawn(get(addr, "/block-thread"));
    tokio::time::timeout(SAFETY, is_blocking)
        .await
        .expect("the handler runs")
        .unwrap();
    // From here the worker cannot come back to its loop until released:
    // one stall, whose report (once) may come before or after this read.
    let once_blocked = handle.stats().worker_stalls;
    // However many load stalls came before, the block's is reported.
    common::wait_stats(&handle, "a stall reported", |s| s.worker_stalls > before).await;
    let stalls = handle.stats().worker_stalls;
    assert!(handle
        .render_metrics()
        .contains(&format!("megaconn_worker_stalls_total {stalls}")));
    // Not reported again while it lasts (the other workers wait for
    // events: they cannot stall). No signal says "not reported": wait a
    // few of the watchdog's looks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = handle.stats().worker_stalls;
    assert!(
        after <= once_blocked + 1,
        "one stall, reported once: {before} before the request, {once_blocked} once it \
         blocked, {after} while it still blocks"
    );
    release.send(()).unwrap();
    let r = blocked.await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"released".as_slice()));
    handle.shutdown();
}

/// `spawn_blocking` work that outlives the shutdown deadline does not hold
/// the server: the worker gives its runtime up without waiting for it
/// (dropping a runtime waits for its blocking tasks forever), so `serve`
/// returns at `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_at_the_deadline_while_blocking_work_still_runs() {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(Mutex::new(Some(started_tx)));
    let (release, hang) = mpsc::channel::<()>();
    let hang = Arc::new(Mutex::new(Some(hang)));
    let service = tower::service_fn(move |_req: Request<Body>| {
        let (started, hang) = (started.clone(), hang.clone());
        async move {
            let done = tokio::task::spawn_blocking(move || {
                let _ = started.lock().unwrap().take().unwrap().send(());
                // Longer than the test waits for `serve`: only a server
                // that does not wait for it passes.
                let hang = hang.lock().unwrap().take().unwrap();
                let _ = hang.recv_timeout(SAFETY * 3);
            })
            .await;
            let text = if done.is_ok() { "done" } else { "gone" };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
        }
    });
    let server = megaconn::Server::builder()
        .workers(1)
        .shutdown_timeout(Duration::from_millis(100))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let serving = tokio::spawn(server.serve(service));
    let request = tokio::spawn(get(addr, "/"));
    tokio::time::timeout(SAFETY, started_rx)
        .await
        .expect("the blocking work starts")
        .unwrap();
    handle.shutdown();
    let summary = tokio::time::timeout(SAFETY, serving)
        .await
        .expect("serve returns at shutdown_timeout, not when the blocking work ends")
        .unwrap()
        .unwrap();
    assert_eq!(summary.forced, 1, "{summary:?}");
    release.send(()).unwrap();
    let _ = request.await;
}

/// A worker whose graceful drain finished while another still drains a
/// slow request is done, not stalled: no stall is reported. (One was, at
/// every such drain: the watchdog kept looking at the finished worker,
/// whose loop no longer answered, and counted it in
/// `megaconn_worker_stalls_total`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_done_draining_is_not_reported_as_a_stall() {
    const THRESHOLD: Duration = Duration::from_millis(100);
    let (started_tx, started) = oneshot::channel::<()>();
    let (release, released) = oneshot::channel::<()>();
    let slow = Arc::new(Mutex::new(Some((started_tx, released))));
    let service = tower::service_fn(move |_req: Request<Body>| {
        let slow = slow.lock().unwrap().take();
        async move {
            // Waits (without blocking its worker) until the test lets it go.
            if let Some((started, released)) = slow {
                let _ = started.send(());
                let _ = tokio::time::timeout(SAFETY, released).await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("slow"))))
        }
    });
    let builder = megaconn::Server::builder()
        .workers(2)
        .stall_threshold(Some(THRESHOLD))
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(builder, service);
    let handle = server.handle.clone();
    let request = tokio::spawn(get(server.addrs[0], "/slow"));
    tokio::time::timeout(SAFETY, started)
        .await
        .expect("the handler runs")
        .unwrap();
    let before = handle.stats().worker_stalls;
    handle.shutdown();
    // The other worker finishes its drain at once; this one waits for the
    // request. No signal says "not reported": the watchdog's looks over
    // five thresholds (a stall was reported within 1.25).
    tokio::time::sleep(5 * THRESHOLD).await;
    release.send(()).unwrap();
    assert_eq!(request.await.unwrap().status, 200);
    tokio::time::timeout(SAFETY, server.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        handle.stats().worker_stalls,
        before,
        "a finished drain reported as a stall"
    );
}
