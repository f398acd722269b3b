//! Framed connections at a zero-downtime upgrade, driven in-process with
//! two servers as `megaconn serve --upgrade` drives two processes: server A
//! hands its parked connections over (`hand_over_parked`, then shutdown),
//! their states cross the wire form (`ParkedState::to_bytes` /
//! `from_bytes`), and server B, on A's listening sockets, adopts them
//! (`adopt_parked`). A parked cleartext framed connection whose handler
//! exports its state moves with it and its topics, the device seeing
//! nothing; one whose handler does not opt in, or whose state is too large,
//! closes as at shutdown; a corrupt state is refused and counted.

use crate::common::{self, msg::deref_to_running, next};

use std::time::Duration;

use bytes::Bytes;
use common::msg::Running;
use common::SAFETY;
use megaconn::{
    CloseReason, ConnectionId, FramedHandler, Framing, HandOverKinds, ParkedConnection,
    ParkedState, Server, ServerHandle, Session, ShutdownSummary, MAX_EXPORTED_STATE_BYTES,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Parks an idle connection soon, so a test's device is parked when the
/// hand-over comes.
const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

/// What a device's handler does at a hand-over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Export {
    /// Not opted in (the trait's defaults).
    No,
    /// Its count as 8 bytes.
    Count,
    /// A state one byte over `MAX_EXPORTED_STATE_BYTES`.
    Oversized,
}

/// A line protocol per device: every line counts; `count` is answered with
/// the count so far, `sub T` subscribes to `T` (answered `ok`), anything
/// else is echoed. Opens, adoptions and closes are reported.
struct Device {
    export: Export,
    opens: mpsc::UnboundedSender<ConnectionId>,
    adopts: mpsc::UnboundedSender<(ConnectionId, u64)>,
    closes: mpsc::UnboundedSender<(u64, CloseReason)>,
}

impl FramedHandler for Device {
    type State = u64;

    fn on_open(&self, _: &mut u64, session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, seen: &mut u64, frame: Bytes, session: &Session) -> Option<Bytes> {
        *seen += 1;
        match &frame[..] {
            b"count" => Some(Bytes::from(seen.to_string())),
            f if f.starts_with(b"sub ") => {
                let topic = std::str::from_utf8(&f[4..]).unwrap();
                session.subscribe(topic).unwrap();
                Some(Bytes::from("ok"))
            }
            _ => Some(frame),
        }
    }

    fn on_close(&self, seen: u64, reason: CloseReason) {
        let _ = self.closes.send((seen, reason));
    }

    fn export(&self, seen: &u64) -> Option<Vec<u8>> {
        match self.export {
            Export::No => None,
            Export::Count => Some(seen.to_be_bytes().to_vec()),
            Export::Oversized => Some(vec![0; MAX_EXPORTED_STATE_BYTES + 1]),
        }
    }

    fn import(&self, bytes: &[u8]) -> Option<u64> {
        (self.export != Export::No).then_some(())?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }

    fn on_adopt(&self, seen: &mut u64, session: &Session) {
        let _ = self.adopts.send((session.id(), *seen));
    }
}

/// One server of the upgrade, running a [`Device`] handler: its address,
/// the adoptions its handler reports, and the server.
struct Side {
    addr: std::net::SocketAddr,
    adopts: mpsc::UnboundedReceiver<(ConnectionId, u64)>,
    running: Running<(u64, CloseReason)>,
}

deref_to_running!(Side, (u64, CloseReason));

impl Side {
    /// Server A: a lines listener on 127.0.0.1:0. Server B: on A's address
    /// and listening sockets (`from`), as the next process of an upgrade.
    fn start(export: Export, from: Option<&Side>) -> Side {
        let addr = from.map_or("127.0.0.1:0".parse().unwrap(), |a| a.addr);
        let mut builder = Server::builder()
            .workers(1)
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .listen_framed_on(addr, Framing::lines());
        if let Some(a) = from {
            builder = builder.adopt_listeners(a.handle.listening_sockets().unwrap());
        }
        let server = builder.listen().expect("server binds");
        let addr = server.local_addr();
        let (adopted, adopts) = mpsc::unbounded_channel();
        let running = Running::serve(server, |server, opens, closes| {
            let device = Device {
                export,
                opens,
                adopts: adopted,
                closes,
            };
            server.start_framed(device).expect("server starts")
        });
        Side {
            addr,
            adopts,
            running,
        }
    }

    /// A's side of the upgrade: hands its parked connections over and
    /// shuts down; what it handed over, once it stopped.
    async fn hand_over(
        self,
    ) -> (
        Vec<ParkedConnection>,
        mpsc::UnboundedReceiver<(u64, CloseReason)>,
    ) {
        let moved =
            hand_over_and_stop(&self.running.handle, HandOverKinds::All, self.running.task).await;
        (moved, self.running.closes)
    }
}

/// Hands the parked connections of `kinds` of `handle`'s server over and
/// shuts it down: what moved, once its `task` stopped with nothing forced.
pub(super) async fn hand_over_and_stop(
    handle: &ServerHandle,
    kinds: HandOverKinds,
    task: tokio::task::JoinHandle<ShutdownSummary>,
) -> Vec<ParkedConnection> {
    let handed = handle.hand_over_parked_of(kinds);
    handle.shutdown();
    let batches = tokio::task::spawn_blocking(move || handed.flatten().collect::<Vec<_>>());
    let moved = tokio::time::timeout(SAFETY, batches)
        .await
        .expect("batches in time")
        .unwrap();
    let summary = tokio::time::timeout(SAFETY, task)
        .await
        .expect("the server stops")
        .unwrap();
    assert_eq!(summary.forced, 0, "{summary:?}");
    moved
}

/// A device on server A, parked, having sent `sub news` and `hi` (its count
/// is 2) and its id there.
async fn parked_device(a: &mut Side) -> (BufReader<TcpStream>, ConnectionId) {
    let s = TcpStream::connect(a.addr).await.unwrap();
    let mut s = BufReader::new(s);
    let id = a.next_open().await;
    assert_eq!(ask(&mut s, "sub news").await, "ok");
    assert_eq!(ask(&mut s, "hi").await, "hi");
    common::wait_stats(&a.handle, "the device parked", |s| {
        s.connections_parked == 1
    })
    .await;
    (s, id)
}

/// Sends line `line` and reads the answer line.
pub(super) async fn ask(s: &mut BufReader<TcpStream>, line: &str) -> String {
    s.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    read_line(s).await
}

/// The next line from the server (bounded), without its ending; empty at
/// the end of the stream.
pub(super) async fn read_line(s: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(SAFETY, s.read_line(&mut line))
        .await
        .expect("a line in time")
        .unwrap_or(0);
    line.trim_end().to_string()
}

/// Each state through its wire form, as `megaconn serve --upgrade` sends
/// them between processes (all records in one message).
fn over_the_wire(moved: Vec<ParkedConnection>) -> Vec<ParkedConnection> {
    let mut wire = Vec::new();
    for c in &moved {
        c.state.write_to(&mut wire);
    }
    let mut rest = &wire[..];
    moved
        .into_iter()
        .map(|c| {
            let (state, used) = ParkedState::from_bytes(rest).expect("reads back");
            rest = &rest[used..];
            ParkedConnection {
                socket: c.socket,
                state,
            }
        })
        .collect()
}

/// A parked device with a count and a subscription moves from A to B: A's
/// handler hears `HandedOver`, B's `on_adopt` gets the state under a new
/// id, the device's next frame is answered by B with the count continued,
/// a publish on B reaches it, and B's hub reaches it by its new id. It
/// never sees a close.
#[tokio::test]
async fn a_parked_framed_device_moves_with_its_state_and_topics() {
    let mut a = Side::start(Export::Count, None);
    let (mut device, old_id) = parked_device(&mut a).await;
    let mut b = Side::start(Export::Count, Some(&a));
    let (moved, mut a_closes) = a.hand_over().await;
    assert_eq!(moved.len(), 1, "the parked device moves");
    assert_eq!(
        next(&mut a_closes, "A's close").await,
        (2, CloseReason::HandedOver)
    );
    b.handle.adopt_parked(over_the_wire(moved));
    let (new_id, seen) = next(&mut b.adopts, "on_adopt").await;
    assert_eq!(seen, 2, "the state came along");
    assert_ne!(new_id, old_id);
    // Counted once it is parked, just after `on_adopt`.
    common::wait_stats(&b.handle, "the adoption", |s| s.adopted == 1).await;
    assert_eq!(b.handle.stats().handover_refused, 0);
    // Answered by B (A has stopped): the count goes on from A's.
    assert_eq!(ask(&mut device, "count").await, "3");
    assert_eq!(b.handle.stats().messages.frames_in, 1);
    // Subscribed again in B, under its new id, parked or awake.
    common::wait_stats(&b.handle, "parked in B", |s| s.connections_parked == 1).await;
    assert_eq!(b.hub.publish("news", "extra!"), Ok(()));
    assert_eq!(read_line(&mut device).await, "extra!");
    assert_eq!(b.hub.send(new_id, "direct"), Ok(()));
    assert_eq!(read_line(&mut device).await, "direct");
    assert_eq!(ask(&mut device, "count").await, "4");
    let summary = common::shut_down(&b.running.handle, b.running.task).await;
    assert_eq!(summary.forced, 0);
    let closed = next(&mut b.running.closes, "B's close").await;
    assert_eq!(closed, (4, CloseReason::Shutdown));
}

/// A handler without the opt-in (the trait's defaults), or whose state is
/// over `MAX_EXPORTED_STATE_BYTES`: nothing moves, and the device is closed
/// as at shutdown (its handler hears `Shutdown`); the oversized one is
/// counted in `handover_refused`.
#[tokio::test]
async fn a_device_whose_state_cannot_move_closes_as_at_shutdown() {
    for (export, refused) in [(Export::No, 0), (Export::Oversized, 1)] {
        let mut a = Side::start(export, None);
        let (mut device, _) = parked_device(&mut a).await;
        let handle = a.handle.clone();
        let (moved, mut a_closes) = a.hand_over().await;
        assert_eq!(moved.len(), 0, "nothing moves");
        assert_eq!(
            next(&mut a_closes, "A's close").await,
            (2, CloseReason::Shutdown)
        );
        assert_eq!(read_line(&mut device).await, "", "closed");
        let stats = handle.stats();
        assert_eq!(stats.handover_refused, refused, "{stats:?}");
        assert_eq!(common::closed_as(&stats, "handed_over"), 0);
    }
}

/// A state whose payload is corrupt (its topic count says more topics than
/// it holds) is refused by B: the connection closes, counted in
/// `handover_refused`, its handler never told; no panic, and B serves on.
/// A record cut short is refused by `from_bytes`, not misread.
#[tokio::test]
async fn a_corrupt_state_is_refused_and_counted() {
    let mut a = Side::start(Export::Count, None);
    let (mut device, _) = parked_device(&mut a).await;
    let mut b = Side::start(Export::Count, Some(&a));
    let (moved, _) = a.hand_over().await;
    let c = moved.into_iter().next().expect("the device moved");
    let mut bytes = c.state.to_bytes();
    assert!(ParkedState::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    // The payload's topic count (after the record's 10-byte header and the
    // two timers) says 0xffff.
    bytes[ParkedState::HEADER_BYTES + 8..ParkedState::HEADER_BYTES + 10].fill(0xff);
    let (state, _) = ParkedState::from_bytes(&bytes).expect("the record itself is whole");
    b.handle.adopt_parked(vec![ParkedConnection {
        socket: c.socket,
        state,
    }]);
    common::wait_stats(&b.handle, "the refusal", |s| s.handover_refused == 1).await;
    assert_eq!(read_line(&mut device).await, "", "closed");
    assert_eq!(b.handle.stats().adopted, 0);
    assert!(
        b.adopts.try_recv().is_err(),
        "its handler never heard of it"
    );
    // B serves on.
    let s = TcpStream::connect(b.addr).await.unwrap();
    let mut fresh = BufReader::new(s);
    assert_eq!(ask(&mut fresh, "count").await, "1");
    let summary = b.running.stop().await;
    assert_eq!(summary.forced, 0);
}
