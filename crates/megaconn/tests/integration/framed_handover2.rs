//! Framed connections at a zero-downtime upgrade, the cases session 48
//! fixed (`framed_handover.rs` has the parked ones of session 47): an
//! idle framed connection still awake when the hand-over comes (within
//! `park_idle_after` of its last frame, or one that never sent any) parks
//! for it and moves, as an idle HTTP/1.1 task does; and a hand-over of
//! HTTP/1.1 only (`HandOverKinds::Http1Only`, for a next process of a
//! session before 47) never asks a framed handler to export: its
//! connections drain as at shutdown, goodbye frame and all.

use crate::common;

use super::framed_handover::{ask, hand_over_and_stop, read_line};

use std::time::Duration;

use bytes::Bytes;
use common::SAFETY;
use megaconn::{
    CloseReason, FramedHandler, Framing, HandOverKinds, ParkedConnection, Server, ServerHandle,
    Session, ShutdownSummary,
};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a [`Tally`] handler was told.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Opened,
    Adopted(u64),
    Closed(u64, CloseReason),
}

/// Counts each connection's lines (`count` is answered with the count,
/// anything else echoed) and opts in to moving with its count.
struct Tally(mpsc::UnboundedSender<Event>);

impl FramedHandler for Tally {
    type State = u64;

    fn on_open(&self, _: &mut u64, _: &Session) {
        let _ = self.0.send(Event::Opened);
    }

    async fn on_message(&self, seen: &mut u64, frame: Bytes, _: &Session) -> Option<Bytes> {
        *seen += 1;
        Some(match &frame[..] {
            b"count" => Bytes::from(seen.to_string()),
            _ => frame,
        })
    }

    fn on_close(&self, seen: u64, reason: CloseReason) {
        let _ = self.0.send(Event::Closed(seen, reason));
    }

    fn export(&self, seen: &u64) -> Option<Vec<u8>> {
        Some(seen.to_be_bytes().to_vec())
    }

    fn import(&self, bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }

    fn on_adopt(&self, seen: &mut u64, _: &Session) {
        let _ = self.0.send(Event::Adopted(*seen));
    }
}

/// A running server of [`Tally`] on a lines listener, its idle connections
/// parked after `park_after`, its goodbye frame `bye`.
struct Running {
    addr: std::net::SocketAddr,
    handle: ServerHandle,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<ShutdownSummary>,
}

/// Starts a server; on `from`'s listening sockets (the next process of an
/// upgrade) when given.
fn run(park_after: Duration, from: Option<&Running>) -> Running {
    let addr = from.map_or("127.0.0.1:0".parse().unwrap(), |a| a.addr);
    let mut builder = Server::builder()
        .workers(1)
        .park_idle_after(Some(park_after))
        .listen_framed_on(addr, Framing::lines())
        .goodbye_frame(Some(Bytes::from_static(b"bye")));
    if let Some(a) = from {
        builder = builder.adopt_listeners(a.handle.listening_sockets().unwrap());
    }
    let server = builder.listen().expect("server binds");
    let (tx, events) = mpsc::unbounded_channel();
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(server.start_framed(Tally(tx)).expect("starts").run());
    Running {
        addr,
        handle,
        events,
        task,
    }
}

impl Running {
    /// Hands its parked connections of `kinds` over and shuts down; what
    /// moved, once it stopped.
    async fn hand_over(
        self,
        kinds: HandOverKinds,
    ) -> (Vec<ParkedConnection>, mpsc::UnboundedReceiver<Event>) {
        let moved = hand_over_and_stop(&self.handle, kinds, self.task).await;
        (moved, self.events)
    }

    /// A device that connected, its `on_open` heard.
    async fn device(&mut self) -> BufReader<TcpStream> {
        let s = BufReader::new(TcpStream::connect(self.addr).await.unwrap());
        assert_eq!(next(&mut self.events).await, Event::Opened);
        s
    }
}

/// The next event (bounded).
async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(SAFETY, rx.recv())
        .await
        .expect("an event in time")
        .expect("the handler is alive")
}

/// Two idle devices still awake at the hand-over (parking after 10
/// minutes): one that sent a frame, one that sent nothing. Both park for
/// it and move, their counts with them, answered by the next server. They
/// were left awake, and closed as at shutdown: a framed connection moved
/// only if it happened to be parked already.
#[tokio::test]
async fn idle_framed_connections_still_awake_park_and_move() {
    let mut a = run(Duration::from_secs(600), None);
    let mut spoke = a.device().await;
    assert_eq!(ask(&mut spoke, "hi").await, "hi");
    let mut silent = a.device().await;
    assert_eq!(a.handle.stats().connections_parked, 0, "awake");
    let mut b = run(Duration::from_secs(600), Some(&a));
    let (moved, mut a_events) = a.hand_over(HandOverKinds::All).await;
    assert_eq!(moved.len(), 2, "both moved");
    let mut closes = vec![next(&mut a_events).await, next(&mut a_events).await];
    closes.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        closes,
        [
            Event::Closed(0, CloseReason::HandedOver),
            Event::Closed(1, CloseReason::HandedOver)
        ]
    );
    b.handle.adopt_parked(moved);
    let mut adopted = vec![next(&mut b.events).await, next(&mut b.events).await];
    adopted.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(adopted, [Event::Adopted(0), Event::Adopted(1)]);
    assert_eq!(
        ask(&mut spoke, "count").await,
        "2",
        "the count goes on in B"
    );
    assert_eq!(ask(&mut silent, "count").await, "1");
    assert_eq!(b.handle.stats().adopted, 2);
    let summary = common::shut_down(&b.handle, b.task).await;
    assert_eq!(summary.forced, 0);
}

/// A hand-over of HTTP/1.1 only (the next process is of a session before
/// 47, which adopts nothing else): a parked framed device and an awake one
/// are not exported, whatever their handler says; each hears the goodbye
/// frame and a close, its handler `Shutdown`. The parked one was exported
/// (its handler heard `HandedOver`), then closed without a goodbye.
#[tokio::test]
async fn a_hand_over_of_http1_only_leaves_framed_connections_to_the_drain() {
    for park_after in [Duration::from_millis(20), Duration::from_secs(600)] {
        let mut a = run(park_after, None);
        let mut device = a.device().await;
        assert_eq!(ask(&mut device, "hi").await, "hi");
        let parked = park_after < Duration::from_secs(1);
        if parked {
            common::wait_stats(&a.handle, "the device parked", |s| {
                s.connections_parked == 1
            })
            .await;
        }
        let handle = a.handle.clone();
        let (moved, mut events) = a.hand_over(HandOverKinds::Http1Only).await;
        assert_eq!(moved.len(), 0, "parked: {parked}");
        assert_eq!(
            next(&mut events).await,
            Event::Closed(1, CloseReason::Shutdown),
            "parked: {parked}"
        );
        assert_eq!(read_line(&mut device).await, "bye", "parked: {parked}");
        assert_eq!(read_line(&mut device).await, "", "closed");
        assert_eq!(common::closed_as(&handle.stats(), "handed_over"), 0);
    }
}
