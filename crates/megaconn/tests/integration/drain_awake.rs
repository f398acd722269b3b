//! `shutdown_drain_rate` paces awake message connections too: WebSockets,
//! framed connections and event streams waiting between messages as tasks
//! (not parked) get their goodbye (a `1001`, the goodbye frame, the goodbye
//! event) a few at a time, counted in `megaconn_shutdown_drain_pending`,
//! where they all got it at once (session 43's review: 577 of 1,200
//! WebSockets in the same instant). Without a rate, nothing changes: all at
//! once. A broadcast (and the peers' own traffic) during the drain is
//! served and does not undo the pacing, in each protocol.
//!
//! The clients are `common::msg`'s ([`Peer`]), as `drain_woken.rs`'s.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::msg::{http_and_framed, Got, Peer, Proto, FRAMED_GOODBYE, SSE_GOODBYE};
use common::SAFETY;
use futures_util::SinkExt;
use megaconn::{
    FramedHandler, Framing, Hub, Server, ServerHandle, Session, SseEvent, SseHandler, SseRoute,
    WebSocketHandler, WebSocketRoute, WsMessage, WsSession,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Awake connections.
const N: usize = 200;
/// Closes per second: N take 2 s.
const RATE: u32 = 100;

/// Echoes each message (WebSocket, framed); serves event streams.
struct Echo;

impl WebSocketHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }
}

impl FramedHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }
}

impl SseHandler for Echo {
    /// Says hello: what the client reads first tells that the stream is
    /// served (and subscribed to broadcasts).
    fn on_open(&self, _: &http::request::Parts, session: &Session) {
        session.send(HELLO);
    }
}

/// The first event of every stream ([`Echo`]'s `on_open`).
const HELLO: &str = "hi";

/// The broadcast sent during the drain.
const BROADCAST: &str = "to all, during the drain";

/// What a client of the peer's traffic sends once it read the broadcast
/// (a framed peer's; a WebSocket's is a ping).
const ANSWER: &[u8] = b"p";

/// A running server of [`start`].
struct Running {
    http: SocketAddr,
    framed: SocketAddr,
    handle: ServerHandle,
    hub: Hub,
    task: tokio::task::JoinHandle<Result<megaconn::ShutdownSummary, megaconn::Error>>,
}

/// A one-worker server that never parks (every connection stays an awake
/// task), with `rate`, serving [`Echo`] at `/ws`, `/events` and on a
/// framed listener.
fn start(rate: Option<u32>, shutdown_timeout: Duration) -> Running {
    let app = axum::Router::new().route_service("/ws", WebSocketRoute::new(Echo));
    start_app(rate, shutdown_timeout, app)
}

/// [`start`] with `app` (and the event streams at `/events`).
fn start_app(rate: Option<u32>, shutdown_timeout: Duration, app: axum::Router) -> Running {
    let mut server = Server::builder()
        .workers(1)
        .park_idle_after(None)
        .shutdown_drain_rate(rate)
        .shutdown_timeout(shutdown_timeout)
        .goodbye_frame(Some(Bytes::from_static(FRAMED_GOODBYE)))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4))
        .listen()
        .expect("server binds");
    let (http, framed) = http_and_framed(&server);
    let (handle, hub) = (server.handle(), server.hub());
    let events = SseRoute::new(Echo)
        .ping_interval(None)
        .goodbye(SseEvent::data(SSE_GOODBYE));
    let app = app.route_service("/events", events);
    let task = tokio::spawn(server.framed(Echo).serve(app));
    Running {
        http,
        framed,
        handle,
        hub,
        task,
    }
}

/// The peer's own traffic: a WebSocket's ping, a framed client's
/// [`ANSWER`] (echoed); nothing from an event stream's client.
async fn answer(peer: &mut Peer) {
    match peer {
        Peer::Ws(ws) => ws.send(Message::Ping("p".into())).await.unwrap(),
        Peer::Framed(_) => peer.send(ANSWER).await,
        Peer::Sse(_) => {}
    }
}

/// What the clients of [`awake_clients`] saw.
#[derive(Default)]
struct Seen {
    /// Goodbyes read.
    going_away: AtomicUsize,
    /// [`BROADCAST`]s read (each before its goodbye).
    broadcasts: AtomicUsize,
    /// Answers read (a pong, a framed [`ANSWER`] echoed) to what each
    /// sends once it read the broadcast.
    pongs: AtomicUsize,
    /// Goodbyes read while the drain's count said fewer turns were given
    /// (less a slack of `N / 10`: what was not waiting when it began).
    early: AtomicUsize,
}

/// `n` `proto` connections, each echoed once (WebSocket, framed) or
/// greeted ([`HELLO`], an event stream), so served and awake, each then read by a task of its own that counts in `seen`
/// the goodbye it reads (and whether the drain's count had given that
/// many turns: `server`'s `shutdown_drain_pending`, read after, which
/// only falls), a [`BROADCAST`] before it (answered, the answer's reply
/// counted: [`answer`]), and reads on to the end.
async fn awake_clients(
    proto: Proto,
    server: &Running,
    seen: &Arc<Seen>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut client = Peer::connect(proto, (server.http, server.framed), None).await;
        if proto == Proto::Sse {
            let hello = tokio::time::timeout(SAFETY, client.read()).await;
            assert_eq!(hello.expect("hello in time"), Got::Message(HELLO.into()));
        } else {
            client.echo(b"hi").await;
        }
        let (seen, handle) = (seen.clone(), server.handle.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let got = tokio::time::timeout(SAFETY * 2, client.read())
                    .await
                    .expect("a goodbye in time");
                match got {
                    Got::Goodbye => {
                        let read = seen.going_away.fetch_add(1, SeqCst) + 1;
                        let pending =
                            usize::try_from(handle.stats().shutdown_drain_pending).unwrap();
                        if read > n - pending.min(n) + n / 10 {
                            seen.early.fetch_add(1, SeqCst);
                        }
                        break;
                    }
                    Got::Message(m) if m == BROADCAST.as_bytes() => {
                        seen.broadcasts.fetch_add(1, SeqCst);
                        // The peer's own traffic during the drain, answered.
                        answer(&mut client).await;
                    }
                    Got::Pong => {
                        seen.pongs.fetch_add(1, SeqCst);
                    }
                    Got::Message(m) if m == ANSWER => {
                        seen.pongs.fetch_add(1, SeqCst);
                    }
                    other => panic!("expected a goodbye, got {other:?}"),
                }
            }
            client.read_to_end().await;
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
    let (seen, readers, started) = drain_begun(Proto::Ws, &server).await;
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

/// `N` `proto` clients of [`awake_clients`] on `server`, then its
/// shutdown begun and its paced drain counting them: what they see, their
/// readers, and when the shutdown began.
async fn drain_begun(
    proto: Proto,
    server: &Running,
) -> (Arc<Seen>, Vec<tokio::task::JoinHandle<()>>, Instant) {
    let handle = &server.handle;
    let seen = Arc::new(Seen::default());
    let readers = awake_clients(proto, server, &seen, N).await;
    let started = Instant::now();
    handle.shutdown();
    common::wait_stats(handle, "the awake connections counted in the drain", |s| {
        s.shutdown_drain_pending > 0
    })
    .await;
    (seen, readers, started)
}

/// The rest of a paced drain of `N` connections begun at `started`: every
/// client read its goodbye, none ahead of the turns given (`Seen::early`),
/// the last at least most of N / RATE after the start (a lower bound, which
/// a slow machine only makes larger), and none was forced.
async fn paced_to_the_end(
    server: Running,
    seen: Arc<Seen>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
) {
    for reader in readers {
        reader.await.expect("every client read its goodbye");
    }
    let took = started.elapsed();
    assert_eq!(seen.going_away.load(SeqCst), N);
    assert_eq!(
        seen.early.load(SeqCst),
        0,
        "clients read their goodbye before the drain gave their turn"
    );
    let least = Duration::from_secs_f64((N - N / 10) as f64 / f64::from(RATE)) * 8 / 10;
    assert!(
        took >= least,
        "all {N} got their goodbye in {took:?}, expected at least {least:?}"
    );
    let summary = common::shut_down(&server.handle, server.task)
        .await
        .expect("serve result");
    assert_eq!(summary.forced, 0);
}

/// A hub broadcast right after the paced drain began wakes every awake
/// `proto` subscriber before its turn: each delivers it, serves its
/// client's answer (a WebSocket's ping, a framed client's frame; an event
/// stream's client sends nothing), and waits on for its turn, so the
/// goodbyes still come at the drain's pace (no client reads one ahead of
/// the turns given, the last most of N / RATE after the start). On the
/// code before (session 44's loops, and each loop made to take a wake
/// after the start for its turn), each one woken said goodbye at once:
/// the broadcast undid the pacing (all 200 goodbyes within milliseconds
/// of it, failing both checks).
///
/// Every subscriber gets the broadcast, but those whose turn came before
/// it reached them (the turns given before it was sent, and a slack of
/// N / 20 for the worker's pump to deliver it: 10 turns, 100 ms).
async fn a_broadcast_during_a_paced_drain_keeps_its_pace(proto: Proto) {
    let server = start(Some(RATE), SAFETY);
    let (seen, readers, started) = drain_begun(proto, &server).await;
    let closed_before = seen.going_away.load(SeqCst);
    assert_eq!(server.hub.broadcast(BROADCAST), Ok(()));
    let broadcasts = seen.clone();
    paced_to_the_end(server, seen, readers, started).await;
    let got = broadcasts.broadcasts.load(SeqCst);
    assert!(
        got + closed_before + N / 20 >= N,
        "{got} of {N} got the broadcast ({closed_before} had closed before it was sent)"
    );
    if proto != Proto::Sse {
        let pongs = broadcasts.pongs.load(SeqCst);
        assert!(
            pongs + N / 10 >= got,
            "{pongs} answers served of the {got} sent after the broadcast"
        );
    }
}

#[tokio::test]
async fn a_broadcast_during_a_paced_drain_does_not_undo_its_pace() {
    a_broadcast_during_a_paced_drain_keeps_its_pace(Proto::Ws).await;
}

#[tokio::test]
async fn a_broadcast_during_a_paced_drain_does_not_undo_the_pace_of_framed_connections() {
    a_broadcast_during_a_paced_drain_keeps_its_pace(Proto::Framed).await;
}

#[tokio::test]
async fn a_broadcast_during_a_paced_drain_does_not_undo_the_pace_of_event_streams() {
    a_broadcast_during_a_paced_drain_keeps_its_pace(Proto::Sse).await;
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
    let (seen, readers, started) = drain_begun(Proto::Ws, &server).await;
    paced_to_the_end(server, seen, readers, started).await;
}

/// Without a drain rate nothing changes: every awake WebSocket hears the
/// start at once (no drain counts them) and gets its `1001`.
#[tokio::test]
async fn without_a_drain_rate_awake_websockets_get_their_1001_at_once() {
    let server = start(None, SAFETY);
    let handle = &server.handle;
    let seen = Arc::new(Seen::default());
    let readers = awake_clients(Proto::Ws, &server, &seen, N).await;
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
    let readers = awake_clients(Proto::Ws, &server, &seen, MANY).await;
    server.handle.shutdown();
    for reader in readers {
        reader.await.expect("every WebSocket read its 1001");
    }
    assert_eq!(seen.going_away.load(SeqCst), MANY);
    let _ = common::shut_down(&server.handle, server.task).await;
}
