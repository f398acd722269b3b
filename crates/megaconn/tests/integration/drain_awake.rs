//! `shutdown_drain_rate` paces awake message connections too: WebSockets
//! waiting between messages as tasks (not parked) get their `1001` a few
//! at a time, counted in `megaconn_shutdown_drain_pending`, where they all
//! got it at once (session 43's review: 577 of 1,200 in the same instant).
//! Without a rate, nothing changes: all at once. A broadcast (and the
//! peers' pings) during the drain is served and does not undo the pacing.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::SAFETY;
use futures_util::{SinkExt, StreamExt};
use megaconn::{Hub, Server, ServerHandle, WebSocketHandler, WebSocketRoute, WsMessage, WsSession};
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

/// The broadcast sent during the drain.
const BROADCAST: &str = "to all, during the drain";

/// A running server of [`start`].
struct Running {
    addr: std::net::SocketAddr,
    handle: ServerHandle,
    hub: Hub,
    task: tokio::task::JoinHandle<Result<megaconn::ShutdownSummary, megaconn::Error>>,
}

/// A one-worker server that never parks (every WebSocket stays an awake
/// task), with `rate`, serving [`Echo`] at `/ws`.
fn start(rate: Option<u32>, shutdown_timeout: Duration) -> Running {
    let app = axum::Router::new().route_service("/ws", WebSocketRoute::new(Echo));
    start_app(rate, shutdown_timeout, app)
}

/// [`start`] with `app`.
fn start_app(rate: Option<u32>, shutdown_timeout: Duration, app: axum::Router) -> Running {
    let mut server = Server::builder()
        .workers(1)
        .park_idle_after(None)
        .shutdown_drain_rate(rate)
        .shutdown_timeout(shutdown_timeout)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let (addr, handle, hub) = (server.local_addr(), server.handle(), server.hub());
    let task = tokio::spawn(server.serve(app));
    Running {
        addr,
        handle,
        hub,
        task,
    }
}

/// What the clients of [`awake_clients`] saw.
#[derive(Default)]
struct Seen {
    /// `1001`s read.
    going_away: AtomicUsize,
    /// [`BROADCAST`]s read (each before its `1001`).
    broadcasts: AtomicUsize,
    /// Pongs read, to the ping each sends once it read the broadcast.
    pongs: AtomicUsize,
    /// `1001`s read while the drain's count said fewer turns were given
    /// (less a slack of `N / 10`: what was not waiting when it began).
    early: AtomicUsize,
}

/// `n` WebSockets, each echoed once (upgraded and awake), each then read
/// by a task of its own that counts in `seen` the `1001` it reads (and
/// whether the drain's count had given that many turns: `handle`'s
/// `shutdown_drain_pending`, read after, which only falls), a
/// [`BROADCAST`] before it (answered with a ping, whose pong it counts),
/// and reads on to the end (tungstenite answers the close meanwhile).
async fn awake_clients(
    addr: std::net::SocketAddr,
    handle: &ServerHandle,
    seen: &Arc<Seen>,
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
        let (seen, handle) = (seen.clone(), handle.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(SAFETY * 2, client.next())
                    .await
                    .expect("a close frame in time");
                match next {
                    Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                        let read = seen.going_away.fetch_add(1, SeqCst) + 1;
                        let pending =
                            usize::try_from(handle.stats().shutdown_drain_pending).unwrap();
                        if read > n - pending.min(n) + n / 10 {
                            seen.early.fetch_add(1, SeqCst);
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) if text.as_str() == BROADCAST => {
                        seen.broadcasts.fetch_add(1, SeqCst);
                        // The peer's own traffic during the drain, answered.
                        client.send(Message::Ping("p".into())).await.unwrap();
                    }
                    Some(Ok(Message::Pong(_))) => {
                        seen.pongs.fetch_add(1, SeqCst);
                    }
                    other => panic!("expected a close frame 1001, got {other:?}"),
                }
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
    let server = start(Some(RATE), SAFETY);
    let handle = &server.handle;
    let (seen, readers, started) = drain_begun(&server).await;
    // Half left: fewer than half (and what was not waiting when the drain
    // began, a slack) have read their 1001.
    let deadline = Instant::now() + SAFETY;
    loop {
        let read = seen.going_away.load(SeqCst);
        let pending = usize::try_from(handle.stats().shutdown_drain_pending).unwrap();
        if pending <= N / 2 {
            assert!(
                read <= N - pending + N / 10,
                "{read} WebSockets read their 1001 while {pending} of {N} were still pending"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drain stalled: {pending} left"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    paced_to_the_end(server, seen, readers, started).await;
}

/// `N` clients of [`awake_clients`] on `server`, then its shutdown begun
/// and its paced drain counting them: what they see, their readers, and
/// when the shutdown began.
async fn drain_begun(server: &Running) -> (Arc<Seen>, Vec<tokio::task::JoinHandle<()>>, Instant) {
    let handle = &server.handle;
    let seen = Arc::new(Seen::default());
    let readers = awake_clients(server.addr, handle, &seen, N).await;
    let started = Instant::now();
    handle.shutdown();
    common::wait_stats(handle, "the awake WebSockets counted in the drain", |s| {
        s.shutdown_drain_pending > 0
    })
    .await;
    (seen, readers, started)
}

/// The rest of a paced drain of `N` WebSockets begun at `started`: every
/// client read its `1001`, none ahead of the turns given (`Seen::early`),
/// the last at least most of N / RATE after the start (a lower bound, which
/// a slow machine only makes larger), and none was forced.
async fn paced_to_the_end(
    server: Running,
    seen: Arc<Seen>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
) {
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
    }
    let took = started.elapsed();
    assert_eq!(seen.going_away.load(SeqCst), N);
    assert_eq!(
        seen.early.load(SeqCst),
        0,
        "WebSockets read their 1001 before the drain gave their turn"
    );
    let least = Duration::from_secs_f64((N - N / 10) as f64 / f64::from(RATE)) * 8 / 10;
    assert!(
        took >= least,
        "all {N} got their 1001 in {took:?}, expected at least {least:?}"
    );
    let summary = common::shut_down(&server.handle, server.task)
        .await
        .expect("serve result");
    assert_eq!(summary.forced, 0);
}

/// A hub broadcast right after the paced drain began wakes every awake
/// subscriber before its turn: each delivers it, answers the ping its
/// client sends back, and waits on for its turn, so the `1001`s still
/// come at the drain's pace (no client reads one ahead of the turns
/// given, the last most of N / RATE after the start). On the code before,
/// each one woken said goodbye at once: the broadcast undid the pacing
/// (all 200 `1001`s within milliseconds of it, failing both checks).
///
/// Every subscriber gets the broadcast, but those whose turn came before
/// it reached them (the turns given before it was sent, and a slack of
/// N / 20 for the worker's pump to deliver it: 10 turns, 100 ms).
#[tokio::test]
async fn a_broadcast_during_a_paced_drain_does_not_undo_its_pace() {
    let server = start(Some(RATE), SAFETY);
    let (seen, readers, started) = drain_begun(&server).await;
    let closed_before = seen.going_away.load(SeqCst);
    assert_eq!(server.hub.broadcast(BROADCAST), Ok(()));
    let broadcasts = seen.clone();
    paced_to_the_end(server, seen, readers, started).await;
    let got = broadcasts.broadcasts.load(SeqCst);
    assert!(
        got + closed_before + N / 20 >= N,
        "{got} of {N} got the broadcast ({closed_before} had closed before it was sent)"
    );
    let pongs = broadcasts.pongs.load(SeqCst);
    assert!(
        pongs + N / 10 >= got,
        "{pongs} pings answered of the {got} sent after the broadcast"
    );
}

/// `axum_ws` sockets (an echo loop in `recv`) take turns too: their `1001`s
/// come at the drain's pace, none ahead of the turns given (counted in
/// `megaconn_shutdown_drain_pending`), the last most of N / RATE after the
/// start. On the code before, each heard the start at once (all 200
/// `1001`s together, the count 0: the lower bound failed).
#[tokio::test]
async fn a_drain_rate_spreads_the_goodbyes_of_axum_websockets() {
    use megaconn::axum_ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
    async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
        upgrade.on_upgrade(|mut socket: WebSocket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                if let AxumMessage::Text(_) = message {
                    if socket.send(message).await.is_err() {
                        break;
                    }
                }
            }
        })
    }
    let app = axum::Router::new().route("/ws", axum::routing::get(echo));
    let server = start_app(Some(RATE), SAFETY, app);
    let (seen, readers, started) = drain_begun(&server).await;
    paced_to_the_end(server, seen, readers, started).await;
}

/// Without a drain rate nothing changes: every awake WebSocket hears the
/// start at once (no drain counts them) and gets its `1001`.
#[tokio::test]
async fn without_a_drain_rate_awake_websockets_get_their_1001_at_once() {
    let server = start(None, SAFETY);
    let handle = &server.handle;
    let seen = Arc::new(Seen::default());
    let readers = awake_clients(server.addr, handle, &seen, N).await;
    handle.shutdown();
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
        assert_eq!(handle.stats().shutdown_drain_pending, 0, "no paced drain");
    }
    assert_eq!(seen.going_away.load(SeqCst), N);
    let summary = common::shut_down(handle, server.task)
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
    let server = start(Some(4), Duration::from_secs(5));
    let seen = Arc::new(Seen::default());
    let readers = awake_clients(server.addr, &server.handle, &seen, MANY).await;
    server.handle.shutdown();
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
    }
    assert_eq!(seen.going_away.load(SeqCst), MANY);
    let _ = common::shut_down(&server.handle, server.task).await;
}
