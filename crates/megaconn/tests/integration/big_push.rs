//! A push larger than a parked connection's socket send buffer, or a burst
//! of pushes, to a client that reads: for WebSocket, framed TCP and
//! Server-Sent Events, the client gets all of it, whole and in order, and
//! the connection stays open (a small push after it still arrives; no
//! close, no `slow_consumer`). The hub writes a push straight to a parked
//! socket; the socket takes part of it, and the connection is woken to
//! write the rest as an awake connection writes (`Wake::Owed`,
//! `message::wake::write_owed_resuming`), the pushes after it queued in
//! order. Until session 45 it was woken to close as a slow consumer: 3/3
//! of each protocol's connections closed after a 4 MiB push their client
//! read at once.
//!
//! And the rule that still closes one: a client that reads nothing is a
//! slow consumer once its write bound passes (`write_timeout` here; else a
//! stall bounded by a WebSocket's heartbeat timeout or
//! `write_stall_timeout`), not before.
//!
//! One server serves all three (one worker, cleartext, 127.0.0.1:0), its
//! connections parking after [`PARK_IDLE_AFTER`] with the default message
//! send buffer (256 KiB, which the kernel doubles). Every wait is on an
//! event or a counter, bounded by [`SAFETY`].

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use megaconn::{Builder, CloseReason, ConnectionId, Framing, Server, ShutdownSummary};

use crate::common;
use common::closed_as;
use common::msg::{MsgServer, Peer};

pub(crate) use common::msg::Proto;

/// How long an idle connection waits before it parks.
pub(crate) const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

/// The big push: 4 MiB, 16 times the default message send buffer.
pub(crate) const BIG: usize = 4 << 20;

/// A burst: this many pushes of [`BURST_EACH`] bytes, 4 MiB in all.
const BURST: usize = 64;
const BURST_EACH: usize = 64 << 10;

/// The write bound of the never-reading client's server
/// (`write_timeout`): a slow consumer once it passes. (The socket's
/// `TCP_USER_TIMEOUT` is twice the bound that applies and a second, so the
/// kernel does not give up on a peer that opens no window first, as
/// `Io(TimedOut)`: `conn/socket.rs` `kernel_bound`.)
/// Over the close's 2 s bound, within which a slow consumer's close tries
/// the rest of its frame: closed at once as before session 45, this one
/// closed ~2 s after the push, before this bound.
pub(crate) const STALL: Duration = Duration::from_secs(3);

/// The receive buffer of a client that reads nothing (a `small` one).
const SMALL: u32 = 4096;

/// The server (`common::msg`'s: WebSocket at `/ws`, SSE at `/events`, no
/// pings or heartbeats, no goodbyes, and a length-prefixed framed
/// listener), its connections parking after [`PARK_IDLE_AFTER`].
pub(crate) struct Pushes(MsgServer);

impl Deref for Pushes {
    type Target = MsgServer;

    fn deref(&self) -> &MsgServer {
        &self.0
    }
}

impl DerefMut for Pushes {
    fn deref_mut(&mut self) -> &mut MsgServer {
        &mut self.0
    }
}

impl Pushes {
    /// Serves with `shape`'s settings on top of parking after
    /// [`PARK_IDLE_AFTER`].
    pub(crate) async fn start(shape: impl FnOnce(Builder) -> Builder) -> Pushes {
        let builder = Server::builder()
            .workers(1)
            .park_idle_after(Some(PARK_IDLE_AFTER));
        let framing = Framing::length_prefixed(4).max_frame_bytes(2 * BIG);
        let builder = shape(builder)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen_framed_on("127.0.0.1:0".parse().unwrap(), framing);
        Pushes(MsgServer::start(builder, None))
    }

    /// A client of `proto` (with a [`SMALL`] receive buffer if `small`),
    /// its protocol set up and its connection parked; and its id.
    pub(crate) async fn connect(&mut self, proto: Proto, small: bool) -> (Peer, ConnectionId) {
        self.0.connect(proto, small.then_some(SMALL), None).await
    }

    /// Sends `payload` to `id` (ASCII: a WebSocket's text message, an SSE
    /// event's data).
    fn send(&self, id: ConnectionId, payload: Vec<u8>) {
        assert_eq!(self.hub.send(id, payload), Ok(()));
    }

    pub(crate) async fn stop(self) -> ShutdownSummary {
        self.0.stop().await
    }
}

/// Push `i`'s bytes, `len` of them: its number, then a letter of it, so
/// that a push cut, joined to another or out of order shows. (No line
/// ends: an SSE event's data is one line.)
pub(crate) fn push(i: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("{i:08}:").into_bytes();
    bytes.resize(len, b'a' + (i % 26) as u8);
    bytes
}

/// Asserts `got` is push `i` of `len` bytes, saying where it differs.
pub(crate) fn assert_push(got: &[u8], i: usize, len: usize) {
    let want = push(i, len);
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "push {i}: {} bytes, {len} expected, first difference at {at:?}, begins {:?}",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(16)])
        );
    }
}

/// A parked `proto` connection gets one push of [`BIG`] bytes, its client
/// reading at once: the push arrives whole, the connection stays open and
/// parks again, and a small push after it arrives too. Nothing closed,
/// nothing dropped; both pushes counted delivered.
async fn a_big_push_reaches_a_reading_client_whole(proto: Proto) {
    let mut server = Pushes::start(|b| b).await;
    let (mut client, id) = server.connect(proto, false).await;
    server.send(id, push(0, BIG));
    assert_push(&client.next().await, 0, BIG);
    // Still open: back in the lot, and a push finds it there.
    server.wait_parked(1).await;
    server.send(id, push(1, 100));
    assert_push(&client.next().await, 1, 100);
    let stats = server.handle.stats();
    assert_eq!(closed_as(&stats, "slow_consumer"), 0, "{stats:?}");
    assert_eq!(stats.connections_open, 1, "{stats:?}");
    assert!(server.closes.try_recv().is_err(), "nothing closed");
    common::wait_stats(&server.handle, "both pushes counted", |s| {
        s.messages.pushes == 2
    })
    .await;
    assert_eq!(server.handle.stats().messages.queue_drops, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_big_push_reaches_a_reading_websocket_client_whole() {
    a_big_push_reaches_a_reading_client_whole(Proto::Ws).await;
}

#[tokio::test]
async fn a_big_push_reaches_a_reading_framed_client_whole() {
    a_big_push_reaches_a_reading_client_whole(Proto::Framed).await;
}

#[tokio::test]
async fn a_big_push_reaches_a_reading_sse_client_whole() {
    a_big_push_reaches_a_reading_client_whole(Proto::Sse).await;
}

/// A parked `proto` connection gets a burst of [`BURST`] pushes of
/// [`BURST_EACH`] bytes at once (4 MiB), its client reading at once: all
/// arrive, whole and in order (those that found the socket full waited in
/// the queue made for it, behind the rest of the one it was writing), and
/// the connection stays open, as the big push's test says.
async fn a_burst_reaches_a_reading_client_in_order(proto: Proto) {
    let mut server = Pushes::start(|b| b).await;
    let (mut client, id) = server.connect(proto, false).await;
    for i in 0..BURST {
        server.send(id, push(i, BURST_EACH));
    }
    for i in 0..BURST {
        assert_push(&client.next().await, i, BURST_EACH);
    }
    server.wait_parked(1).await;
    server.send(id, push(BURST, 100));
    assert_push(&client.next().await, BURST, 100);
    let stats = server.handle.stats();
    assert_eq!(closed_as(&stats, "slow_consumer"), 0, "{stats:?}");
    assert!(server.closes.try_recv().is_err(), "nothing closed");
    let all = BURST as u64 + 1;
    common::wait_stats(&server.handle, "every push counted", |s| {
        s.messages.pushes == all
    })
    .await;
    assert_eq!(server.handle.stats().messages.queue_drops, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_burst_reaches_a_reading_websocket_client_in_order() {
    a_burst_reaches_a_reading_client_in_order(Proto::Ws).await;
}

#[tokio::test]
async fn a_burst_reaches_a_reading_framed_client_in_order() {
    a_burst_reaches_a_reading_client_in_order(Proto::Framed).await;
}

#[tokio::test]
async fn a_burst_reaches_a_reading_sse_client_in_order() {
    a_burst_reaches_a_reading_client_in_order(Proto::Sse).await;
}

/// A parked `proto` connection whose client reads nothing (a 4 KiB
/// receive buffer) gets the big push: it is still closed as a slow
/// consumer, once its write bound ([`STALL`], `write_timeout`) passed
/// with its socket taking none of the rest, and not before (it was closed
/// at once, before session 45). The push counts as dropped.
async fn a_client_that_reads_nothing_is_a_slow_consumer_after_its_bound(proto: Proto) {
    let mut server = Pushes::start(|b| b.write_timeout(Some(STALL))).await;
    let (_client, id) = server.connect(proto, true).await;
    let sent = tokio::time::Instant::now();
    server.send(id, push(0, BIG));
    assert_eq!(server.next_close().await, (id, CloseReason::SlowConsumer));
    let took = sent.elapsed();
    assert!(
        took >= STALL,
        "closed {took:?} after the push, before its bound"
    );
    common::wait_stats(&server.handle, "the close counted", |s| {
        closed_as(s, "slow_consumer") == 1 && s.messages.queue_drops == 1
    })
    .await;
    assert_eq!(server.handle.stats().messages.pushes, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_client_that_reads_nothing_is_a_slow_consumer_after_its_bound() {
    a_client_that_reads_nothing_is_a_slow_consumer_after_its_bound(Proto::Ws).await;
}

#[tokio::test]
async fn a_framed_client_that_reads_nothing_is_a_slow_consumer_after_its_bound() {
    a_client_that_reads_nothing_is_a_slow_consumer_after_its_bound(Proto::Framed).await;
}

#[tokio::test]
async fn an_sse_client_that_reads_nothing_is_a_slow_consumer_after_its_bound() {
    a_client_that_reads_nothing_is_a_slow_consumer_after_its_bound(Proto::Sse).await;
}
