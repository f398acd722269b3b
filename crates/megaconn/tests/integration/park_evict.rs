//! Eviction at `max_connections` across workers: the limit is the whole
//! server's, so a worker whose connections are all busy makes room for a
//! newcomer queued on its listener in another worker's parking lot.
//!
//! Which worker a connection goes to is the kernel's choice (`SO_REUSEPORT`
//! hashes the four-tuple), so the test learns it: each worker answers
//! `/who` with its thread's name, and a source address whose connection
//! went to a worker is given back with a reset (no `TIME_WAIT`) and used
//! again, the same four-tuple, for the newcomer.

use crate::common;

use std::time::Duration;

use axum::routing::get;
use common::{read_response, read_to_close, reset, AppServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// The server's `max_connections`: two busy connections on one worker, two
/// idle ones on the other.
const LIMIT: usize = 4;

/// `/who`: the name of the worker thread serving it. `/hold`: says so on
/// `held`, then waits until `release` turns true.
fn app(held: mpsc::UnboundedSender<()>, release: watch::Receiver<bool>) -> axum::Router {
    axum::Router::new()
        .route(
            "/who",
            get(|| async { std::thread::current().name().unwrap_or("").to_string() }),
        )
        .route(
            "/hold",
            get(move || {
                let (held, mut release) = (held.clone(), release.clone());
                async move {
                    let _ = held.send(());
                    let _ = release.wait_for(|go| *go).await;
                    "released"
                }
            }),
        )
}

async fn ask(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    String::from_utf8(read_response(s).await.body).unwrap()
}

/// Before, the waiting worker only looked at its own lot: with every one
/// of its connections busy it waited (for ever here), while the other
/// worker held idle parked connections that could have made room.
#[tokio::test]
async fn at_the_limit_a_worker_with_nothing_idle_has_another_workers_lot_make_room() {
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    let server = AppServer::start(
        megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(2)
            .max_connections(LIMIT)
            .park_idle_after(Some(Duration::from_millis(20))),
        app(held_tx, release_rx),
    );
    let addr = server.addrs[0];
    let open = |n: usize| {
        let handle = server.handle.clone();
        async move {
            common::wait_stats(&handle, "connections closed", |s| {
                s.connections_open == n as i64
            })
            .await
        }
    };

    // The newcomer's source, and the worker whose listener it goes to. An
    // address of the test's own: given back with a reset, its port cannot
    // be taken meanwhile by another test's connection from the same IP.
    let mut probe = common::connect_from((common::own_address(), 0), addr).await;
    let newcomer_from = probe.local_addr().unwrap();
    let busy_worker = ask(&mut probe, "/who").await;
    reset(probe);
    open(0).await;

    // Fill the limit: two connections of that worker busy in `/hold`, two
    // of the other idle (parked); others are given back.
    let (mut busy, mut idle) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        if busy.len() == LIMIT / 2 && idle.len() == LIMIT / 2 {
            break;
        }
        let mut s = TcpStream::connect(addr).await.unwrap();
        let worker = ask(&mut s, "/who").await;
        if worker == busy_worker && busy.len() < LIMIT / 2 {
            s.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            held.recv().await.unwrap();
            busy.push(s);
        } else if worker != busy_worker && idle.len() < LIMIT / 2 {
            idle.push(s);
        } else {
            reset(s);
            open(busy.len() + idle.len()).await;
        }
    }
    assert_eq!((busy.len(), idle.len()), (LIMIT / 2, LIMIT / 2));
    common::wait_stats(&server.handle, "the idle ones parked", |s| {
        s.connections_parked == (LIMIT / 2) as i64 && s.connections_open == LIMIT as i64
    })
    .await;

    // At the limit, on the worker with nothing idle: it is served, in room
    // the other worker's lot made.
    let mut newcomer = common::connect_from(newcomer_from, addr).await;
    let answered = tokio::time::timeout(Duration::from_secs(5), ask(&mut newcomer, "/who")).await;
    let stats = server.handle.stats();
    assert_eq!(
        answered.as_deref(),
        Ok(busy_worker.as_str()),
        "the newcomer on the worker with nothing idle was not served: {stats:?}"
    );
    assert!(stats.accept_waits_at_limit >= 1, "{stats:?}");
    assert_eq!(common::closed_as(&stats, "evicted"), 1, "{stats:?}");
    // One of the other worker's idle ones (longest idle first, but by the
    // idle deadline's 4 ms tick, then the descriptor: two that parked in
    // the same tick may go in either order).
    let (first, second) = idle.split_at_mut(1);
    tokio::select! {
        rest = read_to_close(&mut first[0]) => assert!(rest.is_empty()),
        rest = read_to_close(&mut second[0]) => assert!(rest.is_empty()),
    }

    // The busy ones were never touched.
    release.send(true).unwrap();
    for s in &mut busy {
        assert_eq!(read_response(s).await.body, b"released");
    }
    drop((busy, idle, newcomer));
    assert!(server.stop().await, "the server stops");
}
