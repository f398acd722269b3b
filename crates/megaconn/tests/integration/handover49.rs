//! Framed connections at a zero-downtime upgrade, session 49: an awake
//! idle connection whose handler does not export its state is not asked
//! to park for the hand-over (it stays awake and hears the drain's
//! goodbye at once), and what the hand-over leaves to the drain is counted
//! by the workers as they hand over (`ParkedHandOver::left_to_drain`),
//! awake message connections included on a server without a hub.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::SAFETY;
use megaconn::{
    CloseReason, FramedHandler, Framing, HandOverKinds, LeftToDrain, ParkedConnection, Server,
    ServerHandle, Session, ShutdownSummary,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a [`Picky`] handler was told.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Opened,
    Closed(CloseReason),
}

/// Echoes lines; exports a connection's state unless it said `stay`.
struct Picky(mpsc::UnboundedSender<Event>);

impl FramedHandler for Picky {
    /// Whether the peer asked to stay.
    type State = bool;

    fn on_open(&self, _: &mut bool, _: &Session) {
        let _ = self.0.send(Event::Opened);
    }

    async fn on_message(&self, stay: &mut bool, frame: Bytes, _: &Session) -> Option<Bytes> {
        *stay |= &frame[..] == b"stay";
        Some(frame)
    }

    fn on_close(&self, _: bool, reason: CloseReason) {
        let _ = self.0.send(Event::Closed(reason));
    }

    fn export(&self, stay: &bool) -> Option<Vec<u8>> {
        (!stay).then(Vec::new)
    }

    fn import(&self, _: &[u8]) -> Option<bool> {
        Some(false)
    }
}

/// A running server of [`Picky`] on a lines listener, without a hub, its
/// idle connections parked after ten minutes (awake at the hand-over),
/// its goodbye frame `bye`.
struct Running {
    addr: std::net::SocketAddr,
    handle: ServerHandle,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<ShutdownSummary>,
}

fn run() -> Running {
    let server = Server::builder()
        .workers(1)
        .park_idle_after(Some(Duration::from_secs(600)))
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
        .goodbye_frame(Some(Bytes::from_static(b"bye")))
        .listen()
        .expect("server binds");
    let (tx, events) = mpsc::unbounded_channel();
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(server.start_framed(Picky(tx)).expect("starts").run());
    Running {
        addr,
        handle,
        events,
        task,
    }
}

impl Running {
    /// A device that connected and said `line` (answered), its `on_open`
    /// heard.
    async fn device(&mut self, line: &str) -> BufReader<TcpStream> {
        let mut s = BufReader::new(TcpStream::connect(self.addr).await.unwrap());
        assert_eq!(next(&mut self.events).await, Event::Opened);
        s.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_line(&mut s).await, line);
        s
    }

    /// Hands its parked connections over and shuts down, taking every
    /// batch: what moved, and what the workers left to the drain.
    async fn hand_over(&self) -> (Vec<ParkedConnection>, LeftToDrain) {
        let mut handed = self.handle.hand_over_parked_of(HandOverKinds::All);
        self.handle.shutdown();
        let batches = tokio::task::spawn_blocking(move || {
            let moved: Vec<_> = handed.by_ref().flatten().collect();
            (moved, handed.left_to_drain())
        });
        tokio::time::timeout(SAFETY, batches)
            .await
            .expect("batches in time")
            .unwrap()
    }
}

/// The next line (bounded), without its ending; empty at the end.
async fn read_line(s: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(SAFETY, s.read_line(&mut line))
        .await
        .expect("a line in time")
        .unwrap_or(0);
    line.trim_end().to_string()
}

/// The next event (bounded).
async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(SAFETY, rx.recv())
        .await
        .expect("an event in time")
        .expect("the handler is alive")
}

/// Two awake idle devices at an upgrade's hand-over, one whose state the
/// handler exports and one whose it does not: only the first parks (one
/// park counted) and moves; the second stays awake and hears the goodbye
/// and the close, its handler `Shutdown`. What is left to the drain is
/// that one, a message connection, though the server has no hub. The
/// second used to park too, to be left in the lot, which gave it the idle
/// grace of a connection that just parked (up to 500 ms) before its
/// goodbye; and the message connections left were counted from
/// `message_connections`, which counts awake ones only with a hub.
#[tokio::test]
async fn only_framed_connections_that_move_park_and_the_rest_are_counted_left() {
    let mut a = run();
    let _mover = a.device("hi").await;
    let mut stayer = a.device("stay").await;
    assert_eq!(a.handle.stats().parks, 0, "both awake");
    let (moved, left) = a.hand_over().await;
    assert_eq!(moved.len(), 1, "the one whose state exports moved");
    assert!(!moved[0].state.is_http1());
    assert_eq!(
        (left.connections, left.message_connections),
        (1, 1),
        "the one that stays, a message connection: {left:?}"
    );
    assert_eq!(read_line(&mut stayer).await, "bye");
    assert_eq!(read_line(&mut stayer).await, "", "closed");
    let mut closes = vec![next(&mut a.events).await, next(&mut a.events).await];
    closes.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        closes,
        [
            Event::Closed(CloseReason::HandedOver),
            Event::Closed(CloseReason::Shutdown)
        ]
    );
    let summary = tokio::time::timeout(SAFETY, a.task)
        .await
        .expect("it stops")
        .unwrap();
    assert_eq!(summary.forced, 0, "{summary:?}");
    assert_eq!(
        a.handle.stats().parks,
        1,
        "only the one that moves parked for the hand-over"
    );
}
