//! Parked message connections woken during a paced drain
//! (`shutdown_drain_rate`) stay in it: each gets its goodbye at its turn
//! (a `1001`, the goodbye frame, the goodbye event) and its `on_close`,
//! counted in `megaconn_shutdown_drain_pending` until then. Parked again,
//! as before session 45's fix, one left the drain: its descriptor was no
//! longer in the drain's list, the lot held it to `shutdown_timeout`, and
//! its goodbye came only then.
//!
//! Two ways in: the drain itself wakes a parked connection whose client's
//! message waits in its socket (`ParkingLot::shut_parked`), served as any
//! wake-up; and a connection the lot woke before the start to write the
//! rest of a push it could not take whole (`Wake::Owed`, `big_push.rs`)
//! finishes that during the drain, its goodbye after the push, whole.
//!
//! To keep the message unheard until the drain comes for it, the lot is
//! muted first (`Builder::park_wake_batch` an hour: once it served two
//! wake-ups in a row it stops hearing of its sockets for that window,
//! `parking_wake_batches`), as `tls_parked_close.rs` does; the message is
//! sent before the shutdown, and its arrival in the server's socket read
//! off the socket (`FIONREAD`), so that the drain's first turn finds it,
//! never a race with the lot. One worker, cleartext, 127.0.0.1:0, every
//! wait on an event or a counter, bounded by [`SAFETY`].

use std::time::Duration;

use bytes::Bytes;
use megaconn::{Builder, CloseReason, ConnectionId, Framing, Server};
use tokio::net::TcpStream;

use crate::common;
use common::msg::{Got, MsgServer, Peer, Proto, FRAMED_GOODBYE, SSE_GOODBYE};
use common::SAFETY;

/// How long an idle connection waits before it parks.
const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

/// Longer than any test: a lot muted stays so.
const MUTED: Duration = Duration::from_secs(3600);

/// The drain's rate: one connection a second (a tick of 1 s, one each).
const RATE: u32 = 1;

/// The shutdown's deadline, well past [`SAFETY`]: a goodbye that waits for
/// it (a connection that left the drain) is not read in time.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// A push larger than what a parked socket takes (its send buffer, 256 KiB
/// doubled, and the client's small receive buffer, [`RECV_BUFFER`]).
const BIG: usize = 4 << 20;

/// The receive buffer of a client that does not read at first.
const RECV_BUFFER: u32 = 16 << 10;

/// The server (`common::msg`'s, each protocol with its goodbye), parking
/// after [`PARK_IDLE_AFTER`], draining at [`RATE`], with `shape`'s
/// settings on top.
fn start(shape: impl FnOnce(Builder) -> Builder) -> MsgServer {
    let builder = Server::builder()
        .workers(1)
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .shutdown_drain_rate(Some(RATE))
        .shutdown_timeout(SHUTDOWN_TIMEOUT)
        .goodbye_frame(Some(Bytes::from_static(FRAMED_GOODBYE)));
    let framing = Framing::length_prefixed(4).max_frame_bytes(2 * BIG);
    let builder = shape(builder)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), framing);
    MsgServer::start(builder, Some(SSE_GOODBYE))
}

/// A client of `proto` (a [`RECV_BUFFER`] receive buffer if `small`),
/// served once (an echo, but for an event stream) and its connection
/// parked; and its id.
async fn connect(server: &mut MsgServer, proto: Proto, small: bool) -> (Peer, ConnectionId) {
    let hello = (proto != Proto::Sse).then_some(&b"hi"[..]);
    server
        .connect(proto, small.then_some(RECV_BUFFER), hello)
        .await
}

/// Mutes the lot ([`MUTED`]): `client`'s (parked) connection is woken, an
/// echo each time, parking again in between, until the lot served two
/// wake-ups in a row. (A WebSocket's upgrade may have been the first: a
/// socket served bare from its accept parks, and its request wakes it.)
/// The lot mutes in the turn that serves a wake-up, before the woken task
/// runs: after an echo it is muted, or the next message is heard.
async fn mute_the_lot(server: &MsgServer, client: &mut Peer) {
    let parked = server.handle.stats().connections_parked;
    for round in 0..4 {
        if server.handle.stats().parking_wake_batches >= 1 {
            return;
        }
        client.echo(format!("wake {round}").as_bytes()).await;
        server.wait_parked(parked).await;
    }
    panic!("the lot never muted: {:?}", server.handle.stats());
}

/// The shutdown's pending count (`megaconn_shutdown_drain_pending`).
fn pending(server: &MsgServer) -> i64 {
    server.handle.stats().shutdown_drain_pending
}

/// Bytes waiting unread in the server's end of `client`'s connection.
fn unread_by_server(client: &TcpStream) -> usize {
    common::with_server_end(client, |fd| {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; a read-only call.
        let got =
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::FIONREAD, &mut n) };
        assert_eq!(got, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        usize::try_from(n).unwrap()
    })
}

/// Reads `client`'s goodbye, bounded by [`SAFETY`] (a third of
/// [`SHUTDOWN_TIMEOUT`]: one that waited for the deadline is late), then
/// the end of its stream.
async fn goodbye_in_time(mut client: Peer) {
    let got = tokio::time::timeout(SAFETY, client.read()).await;
    assert_eq!(
        got.expect("the goodbye before the shutdown's deadline (the connection left the drain?)"),
        Got::Goodbye
    );
    client.read_to_end().await;
}

/// A parked `proto` connection whose client's message waits in its socket
/// when a paced drain begins (the lot muted, so unheard): the drain's turn
/// for it wakes it, it echoes the message, then waits awake for its turn,
/// counted in the drain until then, and gets its goodbye and its
/// `on_close` (`Shutdown`) a turn later. Parked again after the echo (the
/// loops before session 45's fix: `can_park` without
/// `!shutdown.is_started()`), it was out of the drain's list and its
/// goodbye came at the deadline (60 s: not in time here); and the count
/// read 0 from its wake on (before session 46: a wake counted as a close).
async fn a_message_that_wakes_a_parked_connection_in_a_paced_drain_gets_its_goodbye(proto: Proto) {
    let mut server = start(|b| b.park_wake_batch(MUTED));
    let (mut client, id) = connect(&mut server, proto, false).await;
    mute_the_lot(&server, &mut client).await;
    let message = b"during the drain";
    client.send(message).await;
    let deadline = tokio::time::Instant::now() + SAFETY;
    while unread_by_server(client.tcp()) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.handle.shutdown();
    let echo = tokio::time::timeout(SAFETY, client.read()).await;
    assert_eq!(
        echo.expect("the echo in time"),
        Got::Message(message.to_vec())
    );
    // The drain's first tick woke it, and may have served it within the
    // tick (a cold wake is served inline when it can be), before the tick
    // wrote its count. A push goes through the worker's hub, which runs
    // after the tick: the count read after it is the tick's. Its turn is
    // a tick (1 s) later.
    let fence = b"after the tick";
    assert_eq!(server.hub.send(id, &fence[..]), Ok(()));
    let pushed = tokio::time::timeout(SAFETY, client.read()).await;
    assert_eq!(
        pushed.expect("the push in time"),
        Got::Message(fence.to_vec())
    );
    assert_eq!(
        pending(&server),
        1,
        "the woken connection counted in the drain"
    );
    goodbye_in_time(client).await;
    assert_eq!(server.next_close().await, (id, CloseReason::Shutdown));
    common::wait_stats(&server.handle, "the drain over", |s| {
        s.shutdown_drain_pending == 0
    })
    .await;
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

#[tokio::test]
async fn a_message_that_wakes_a_parked_websocket_in_a_paced_drain_gets_its_1001() {
    a_message_that_wakes_a_parked_connection_in_a_paced_drain_gets_its_goodbye(Proto::Ws).await;
}

#[tokio::test]
async fn a_message_that_wakes_a_parked_framed_connection_in_a_paced_drain_gets_its_goodbye() {
    a_message_that_wakes_a_parked_connection_in_a_paced_drain_gets_its_goodbye(Proto::Framed).await;
}

/// Parked connections ahead of the one behind in [`owed_push_then_goodbye`]:
/// the drain closes one a tick, so it is still pacing (for 3 s) when that
/// one has written its push.
const AHEAD: usize = 3;

/// A parked `proto` connection gets a [`BIG`] push its client does not read
/// yet: the lot wakes it to write the rest (`Wake::Owed`), which waits on
/// the client. A paced drain begins (with [`AHEAD`] parked connections to
/// close, a tick each), then the client reads: it gets the push whole, then
/// its goodbye a turn later, and `on_close` says `Shutdown`; the push
/// counts as delivered, nothing dropped, nothing forced. Not in the
/// drain's list (awake at its start), it joins the awake ones once the
/// push is written. Parked again then (before session 45's fix), it was in
/// no list of the drain, which ended without it, and it got its goodbye at
/// the deadline (not in time here).
async fn owed_push_then_goodbye(proto: Proto) {
    let mut server = start(|b| b);
    let mut ahead = Vec::with_capacity(AHEAD);
    for _ in 0..AHEAD {
        ahead.push(connect(&mut server, proto, false).await.0);
    }
    let (mut client, id) = connect(&mut server, proto, true).await;
    let push = vec![b'a' + proto as u8; BIG];
    assert_eq!(server.hub.send(id, push.clone()), Ok(()));
    // Woken to write the rest: out of the lot, writing.
    server.wait_parked(AHEAD as i64).await;
    server.handle.shutdown();
    common::wait_stats(&server.handle, "the drain begun", |s| {
        s.shutdown_drain_pending > 0
    })
    .await;
    let got = tokio::time::timeout(SAFETY, client.read()).await;
    match got.expect("the push in time") {
        Got::Message(m) => assert!(m == push, "the push: {} bytes, not whole", m.len()),
        other => panic!("the push, not {other:?}"),
    }
    goodbye_in_time(client).await;
    let mut closes = Vec::new();
    for _ in 0..=AHEAD {
        closes.push(server.next_close().await);
    }
    assert!(closes.contains(&(id, CloseReason::Shutdown)), "{closes:?}");
    for peer in ahead {
        goodbye_in_time(peer).await;
    }
    let stats = server.handle.stats();
    assert_eq!(stats.messages.pushes, 1, "the push delivered: {stats:?}");
    assert_eq!(stats.messages.queue_drops, 0, "{stats:?}");
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

#[tokio::test]
async fn a_websocket_writing_an_owed_push_in_a_paced_drain_ends_it_then_says_1001() {
    owed_push_then_goodbye(Proto::Ws).await;
}

#[tokio::test]
async fn a_framed_connection_writing_an_owed_push_in_a_paced_drain_ends_it_then_says_goodbye() {
    owed_push_then_goodbye(Proto::Framed).await;
}

#[tokio::test]
async fn an_event_stream_writing_an_owed_push_in_a_paced_drain_ends_it_then_says_goodbye() {
    owed_push_then_goodbye(Proto::Sse).await;
}
