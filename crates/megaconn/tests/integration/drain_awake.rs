//! `shutdown_drain_rate` paces awake message connections too: WebSockets
//! waiting between messages as tasks (not parked) get their `1001` a few
//! at a time, counted in `megaconn_shutdown_drain_pending`, where they all
//! got it at once (session 43's review: 577 of 1,200 in the same instant).
//! Without a rate, nothing changes: all at once.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::SAFETY;
use futures_util::{SinkExt, StreamExt};
use megaconn::{Server, ServerHandle, WebSocketHandler, WebSocketRoute, WsMessage, WsSession};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Awake WebSockets.
const N: usize = 200;
/// Closes per second: N take 2 s.
const RATE: u32 = 100;

/// Echoes each message.
struct Echo;

impl WebSocketHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }
}

/// A one-worker server that never parks (every WebSocket stays an awake
/// task), with `rate`, serving [`Echo`] at `/ws`; its address, handle and
/// task.
fn start(
    rate: Option<u32>,
    shutdown_timeout: Duration,
) -> (
    std::net::SocketAddr,
    ServerHandle,
    tokio::task::JoinHandle<Result<megaconn::ShutdownSummary, megaconn::Error>>,
) {
    let server = Server::builder()
        .workers(1)
        .park_idle_after(None)
        .shutdown_drain_rate(rate)
        .shutdown_timeout(shutdown_timeout)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    let app = axum::Router::new().route_service("/ws", WebSocketRoute::new(Echo));
    (addr, handle, tokio::spawn(server.serve(app)))
}

/// `N` WebSockets, each echoed once (upgraded and awake), each then read
/// by a task of its own that counts in `going_away` the `1001` it reads,
/// and reads on to the end (tungstenite answers the close meanwhile).
async fn awake_clients(
    addr: std::net::SocketAddr,
    going_away: &Arc<AtomicUsize>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut client, _) = tokio::time::timeout(
            SAFETY,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        client.send(Message::text("hi")).await.unwrap();
        let echo = tokio::time::timeout(SAFETY, client.next()).await;
        assert!(
            matches!(&echo, Ok(Some(Ok(m))) if *m == Message::text("hi")),
            "{echo:?}"
        );
        let going_away = going_away.clone();
        readers.push(tokio::spawn(async move {
            let first = tokio::time::timeout(SAFETY * 2, client.next())
                .await
                .expect("a close frame in time");
            match first {
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                    going_away.fetch_add(1, SeqCst);
                }
                other => panic!("expected a close frame 1001, got {other:?}"),
            }
            while let Ok(Some(Ok(_))) = tokio::time::timeout(SAFETY, client.next()).await {}
        }));
    }
    readers
}

/// With a drain rate, awake WebSockets are in the drain's count and get
/// their `1001` at its pace: the count goes above 0 (on the code before,
/// it counted idle HTTP/1.1 tasks and parked sockets only, and stayed 0
/// here), no client has read more `1001`s than the count says were
/// released (read before the count, which only falls), and the last came
/// at least most of N / RATE after the start (a lower bound, which a slow
/// machine only makes larger). All of them get it, none is forced.
#[tokio::test]
async fn a_drain_rate_spreads_the_goodbyes_of_awake_websockets() {
    let (addr, handle, task) = start(Some(RATE), SAFETY);
    let going_away = Arc::new(AtomicUsize::new(0));
    let readers = awake_clients(addr, &going_away, N).await;
    let started = Instant::now();
    handle.shutdown();
    common::wait_stats(&handle, "the awake WebSockets counted in the drain", |s| {
        s.shutdown_drain_pending > 0
    })
    .await;
    // Half left: fewer than half (and what was not waiting when the drain
    // began, a slack) have read their 1001.
    let deadline = Instant::now() + SAFETY;
    loop {
        let seen = going_away.load(SeqCst);
        let pending = usize::try_from(handle.stats().shutdown_drain_pending).unwrap();
        if pending <= N / 2 {
            assert!(
                seen <= N - pending + N / 10,
                "{seen} WebSockets read their 1001 while {pending} of {N} were still pending"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drain stalled: {pending} left"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
    }
    let took = started.elapsed();
    assert_eq!(going_away.load(SeqCst), N);
    let least = Duration::from_secs_f64((N - N / 10) as f64 / f64::from(RATE)) * 8 / 10;
    assert!(
        took >= least,
        "all {N} got their 1001 in {took:?}, expected at least {least:?}"
    );
    let summary = common::shut_down(&handle, task)
        .await
        .expect("serve result");
    assert_eq!(summary.forced, 0);
}

/// Without a drain rate nothing changes: every awake WebSocket hears the
/// start at once (no drain counts them) and gets its `1001`.
#[tokio::test]
async fn without_a_drain_rate_awake_websockets_get_their_1001_at_once() {
    let (addr, handle, task) = start(None, SAFETY);
    let going_away = Arc::new(AtomicUsize::new(0));
    let readers = awake_clients(addr, &going_away, N).await;
    handle.shutdown();
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
        assert_eq!(handle.stats().shutdown_drain_pending, 0, "no paced drain");
    }
    assert_eq!(going_away.load(SeqCst), N);
    let summary = common::shut_down(&handle, task)
        .await
        .expect("serve result");
    assert_eq!(summary.forced, 0);
}

/// A drain slower than `shutdown_timeout` (60 awake WebSockets at 4 a
/// second: 15 s, against 5 s): the ones still waiting for their turn near
/// the deadline get their `1001` all the same, together, a margin before
/// it. (Merge review: they were reset without it and counted forced, as
/// at the deadline their tasks are no longer polled.)
#[tokio::test]
async fn awake_websockets_a_drain_has_no_time_for_still_get_their_1001() {
    const MANY: usize = 60;
    let (addr, handle, task) = start(Some(4), Duration::from_secs(5));
    let going_away = Arc::new(AtomicUsize::new(0));
    let readers = awake_clients(addr, &going_away, MANY).await;
    handle.shutdown();
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
    }
    assert_eq!(going_away.load(SeqCst), MANY);
    let _ = common::shut_down(&handle, task).await;
}
