//! Graceful shutdown with requests that use what another worker made: a
//! background task a handler spawned on worker B (an actor), a socket a
//! handler on B opened (a pooled upstream connection), used by a request
//! still in flight on worker A after B's own drain has ended. Each worker
//! keeps its runtime until every worker has drained, so the request gets
//! its 200 (as under `axum::serve`, one runtime); before, B dropped its
//! runtime at the end of its own drain and the request got a 500 ("actor
//! gone") or a 502 (the socket's reactor shut down).

use crate::common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use common::{next, read_response, AppServer, SAFETY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What the handlers share: the resource made on one worker, the signal
/// that the held request's handler has started, and its release.
#[derive(Clone)]
struct Shared {
    actor: Arc<Mutex<Option<mpsc::Sender<oneshot::Sender<String>>>>>,
    upstream: Arc<tokio::sync::Mutex<Option<TcpStream>>>,
    upstream_addr: std::net::SocketAddr,
    held: mpsc::UnboundedSender<()>,
    release: Arc<Semaphore>,
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

fn app(shared: Shared) -> Router {
    Router::new()
        .route("/whoami", get(|| async { thread_name() }))
        // Spawns the actor on this worker's runtime, as a lazily started
        // cache or batch writer is.
        .route(
            "/actor/start",
            get(|State(s): State<Shared>| async move {
                let (tx, mut rx) = mpsc::channel::<oneshot::Sender<String>>(4);
                let born = thread_name();
                tokio::spawn(async move {
                    while let Some(reply) = rx.recv().await {
                        let _ = reply.send(format!("actor on {born}"));
                    }
                });
                *s.actor.lock().unwrap() = Some(tx);
                thread_name()
            }),
        )
        .route(
            "/actor/use",
            get(|State(s): State<Shared>| async move {
                hold(&s).await;
                let tx = s.actor.lock().unwrap().clone().expect("started");
                let (reply, answer) = oneshot::channel();
                if tx.send(reply).await.is_err() {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "actor gone".to_string());
                }
                match answer.await {
                    Ok(said) => (StatusCode::OK, said),
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "actor gone".into()),
                }
            }),
        )
        // Opens the pooled upstream connection on this worker: registered
        // with its runtime's reactor.
        .route(
            "/upstream/open",
            get(|State(s): State<Shared>| async move {
                let c = TcpStream::connect(s.upstream_addr).await.unwrap();
                *s.upstream.lock().await = Some(c);
                thread_name()
            }),
        )
        .route(
            "/upstream/use",
            get(|State(s): State<Shared>| async move {
                hold(&s).await;
                let mut pool = s.upstream.lock().await;
                let c = pool.as_mut().expect("opened");
                if let Err(e) = c.write_all(b"ping\n").await {
                    return (StatusCode::BAD_GATEWAY, format!("upstream write: {e}"));
                }
                let mut buf = [0u8; 16];
                match c.read(&mut buf).await {
                    Ok(n) => (
                        StatusCode::OK,
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    ),
                    Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream read: {e}")),
                }
            }),
        )
        .with_state(shared)
}

/// Says the handler has started, then waits for the test's release.
async fn hold(s: &Shared) {
    let _ = s.held.send(());
    s.release.acquire().await.expect("open").forget();
}

/// One GET on `s` (kept open); the status and body.
async fn get_on(s: &mut TcpStream, path: &str) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_response(s).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// A connection to each of the two workers, by the thread that answers
/// `/whoami` (the kernel spreads connections by their addresses: a few
/// tries find both).
async fn one_per_worker(addr: std::net::SocketAddr) -> [(TcpStream, String); 2] {
    let mut first: Option<(TcpStream, String)> = None;
    for _ in 0..500 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (status, who) = get_on(&mut s, "/whoami").await;
        assert_eq!(status, 200);
        match first.take() {
            None => first = Some((s, who)),
            Some((a, a_who)) if a_who != who => return [(a, a_who), (s, who)],
            Some(same) => first = Some(same),
        }
    }
    panic!("500 connections all landed on one worker");
}

/// Makes the resource on worker B with `make`, holds a request that uses it
/// (`use_it`) on worker A, shuts down, and releases the request once B's
/// drain has ended: its answer.
async fn in_flight_after_the_other_drained(make: &str, use_it: &str) -> (u16, String) {
    // The upstream: answers each line with "pong", on the test's runtime.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let upstream_task = tokio::spawn(async move {
        let (mut c, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = c.read(&mut buf).await {
            let _ = n;
            if c.write_all(b"pong").await.is_err() {
                break;
            }
        }
    });
    let (held, mut entered) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let shared = Shared {
        actor: Arc::default(),
        upstream: Arc::default(),
        upstream_addr,
        held,
        release: release.clone(),
    };
    let server = AppServer::start(
        megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(2)
            .shutdown_timeout(SAFETY),
        app(shared),
    );
    let [(mut a, a_who), (mut b, b_who)] = one_per_worker(server.addrs[0]).await;
    let (status, made_on) = get_on(&mut b, make).await;
    assert_eq!((status, made_on.as_str()), (200, b_who.as_str()));
    // B keeps no connection: its drain ends as soon as shutdown begins.
    drop(b);
    a.write_all(format!("GET {use_it} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    next(&mut entered, "the held handler to start").await;
    assert_eq!(server.handle.workers_draining(), 2);
    server.handle.shutdown();
    // B's drain has ended, A's (the held request) has not.
    let deadline = tokio::time::Instant::now() + SAFETY;
    while server.handle.workers_draining() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker B's drain never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    release.add_permits(1);
    let r = read_response(&mut a).await;
    let answer = (r.status, String::from_utf8_lossy(&r.body).into_owned());
    let summary = tokio::time::timeout(SAFETY, server.task)
        .await
        .expect("the server stops")
        .expect("server task")
        .expect("serve result");
    assert_eq!(summary.forced, 0, "{a_who}'s request was forced");
    upstream_task.abort();
    answer
}

/// An actor spawned by a handler on worker B answers a request still in
/// flight on worker A after B's drain has ended.
#[tokio::test]
async fn an_actor_spawned_on_another_worker_serves_a_request_in_flight_at_shutdown() {
    let (status, body) = in_flight_after_the_other_drained("/actor/start", "/actor/use").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("actor on "), "{body}");
}

/// A socket opened by a handler on worker B (registered with B's reactor)
/// still works for a request in flight on worker A after B's drain has
/// ended.
#[tokio::test]
async fn a_socket_opened_on_another_worker_serves_a_request_in_flight_at_shutdown() {
    let (status, body) = in_flight_after_the_other_drained("/upstream/open", "/upstream/use").await;
    assert_eq!((status, body.as_str()), (200, "pong"));
}
