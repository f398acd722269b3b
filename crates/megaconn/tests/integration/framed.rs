//! Framed TCP listeners over real sockets: line and length-prefixed echo,
//! frames split anywhere or stuck together, framing errors with their close
//! reason and metric, a connection's state kept across park and wake, the
//! heartbeat timeout (awake and parked), graceful shutdown of parked framed
//! connections, and the per-IP limit. Every wait is bounded and waits on a
//! condition (an event, a counter, a byte), never on time alone.

use crate::common::{self, msg::deref_to_running};

use std::time::Duration;

use bytes::Bytes;
use common::msg::{frame, read_frame, tcp_to, Gate, Gated, Running};
use common::{closed_as, limit_hits, read_to_close, reset, SAFETY};
use megaconn::{
    Builder, CloseReason, ConnectionEvent, ConnectionId, FramedHandler, Framing, FramingError,
    HubError, ProtocolDetail, Server, ServerStats, Session, ShutdownSummary,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The test handler. Per connection it counts messages (its state). A frame
/// `count` is answered with the count so far, `largest` with the largest
/// allocation made on the worker's thread so far, `bye` with `bye` and a close;
/// `panic` panics; `sub T` / `unsub T` subscribe to topic `T` (answered
/// `ok`); `wait` reports it is busy and waits for a permit of the gate
/// (answered `waited`); anything else is echoed. Closes are reported with
/// the final count.
struct Probe {
    closes: mpsc::UnboundedSender<(u64, CloseReason)>,
    opens: Option<mpsc::UnboundedSender<ConnectionId>>,
    gate: Gate,
}

impl FramedHandler for Probe {
    type State = u64;

    fn on_open(&self, _: &mut u64, session: &Session) {
        if let Some(opens) = &self.opens {
            let _ = opens.send(session.id());
        }
    }

    async fn on_message(&self, seen: &mut u64, frame: Bytes, session: &Session) -> Option<Bytes> {
        *seen += 1;
        match &frame[..] {
            b"count" => Some(Bytes::from(seen.to_string())),
            b"largest" => Some(Bytes::from(
                crate::largest_allocation_on_this_thread().to_string(),
            )),
            b"panic" => panic!("the test handler panics on request"),
            b"bye" => {
                session.send("bye");
                session.close();
                None
            }
            b"yield" => {
                // Always pending once: the connection cannot be served
                // without a task.
                tokio::task::yield_now().await;
                Some(Bytes::from("yielded"))
            }
            b"wait" => {
                self.gate.wait().await;
                Some(Bytes::from("waited"))
            }
            f if f.starts_with(b"sub ") => {
                match session.subscribe(std::str::from_utf8(&f[4..]).unwrap()) {
                    Ok(()) => Some(Bytes::from("ok")),
                    Err(e) => Some(Bytes::from(format!("refused: {e}"))),
                }
            }
            f if f.starts_with(b"unsub ") => {
                session.unsubscribe(std::str::from_utf8(&f[6..]).unwrap());
                Some(Bytes::from("ok"))
            }
            _ => Some(frame),
        }
    }

    fn on_close(&self, seen: u64, reason: CloseReason) {
        let _ = self.closes.send((seen, reason));
    }
}

impl Probe {
    /// A probe whose events nobody awaits (its channels' ends dropped).
    fn unwatched() -> Probe {
        Probe {
            closes: mpsc::unbounded_channel().0,
            opens: None,
            gate: Gate::new().0,
        }
    }
}

/// A framed server on 127.0.0.1:0, one worker, running the [`Probe`]:
/// its address, the probes' gate, and the server, running.
struct Framed {
    addr: std::net::SocketAddr,
    gate: Gated,
    running: Running<(u64, CloseReason)>,
}

deref_to_running!(Framed, (u64, CloseReason));

impl Framed {
    async fn start(builder: Builder, framing: Framing) -> Framed {
        let server = builder
            .workers(1)
            .listen_framed_on("127.0.0.1:0".parse().unwrap(), framing)
            .listen()
            .expect("server binds");
        let addr = server.local_addr();
        let (probes_gate, gate) = Gate::new();
        let running = Running::serve(server, |server, opens, closes| {
            let probe = Probe {
                closes,
                opens: Some(opens),
                gate: probes_gate,
            };
            server.start_framed(probe).expect("server starts")
        });
        Framed {
            addr,
            gate,
            running,
        }
    }

    /// [`Framed::start`] of a server that parks a connection idle for
    /// [`PARK_IDLE_AFTER`].
    async fn parking(framing: Framing) -> Framed {
        Framed::start(
            Server::builder().park_idle_after(Some(PARK_IDLE_AFTER)),
            framing,
        )
        .await
    }

    /// [`Framed::start`] of a server that never parks a connection.
    async fn awake(framing: Framing) -> Framed {
        Framed::start(Server::builder().park_idle_after(None), framing).await
    }

    async fn connect(&self) -> TcpStream {
        tcp_to(self.addr, None).await
    }

    /// A client whose receive buffer is 4 KiB: a slow reader, whose socket
    /// takes little of what is written to it while it reads nothing.
    async fn connect_small(&self) -> TcpStream {
        tcp_to(self.addr, Some(4096)).await
    }

    /// Sends `push` to connection `id` and waits (bounded) until its first
    /// bytes reach `s`, the peer: the connection took it and is writing it.
    async fn push_under_way(&self, s: &TcpStream, id: ConnectionId, push: Vec<u8>) {
        assert_eq!(self.hub.send(id, push), Ok(()));
        tokio::time::timeout(SAFETY, s.readable())
            .await
            .expect("the push's first bytes in time")
            .unwrap();
    }

    /// A slow reader ([`Framed::connect_small`]) on a length-prefixed
    /// listener and its id, its handler kept busy (`wait`) while four
    /// [`big_push`]es, 0 to 3, come (the first is written meanwhile, the
    /// others wait in its queue; since session 46), then let go: its reply
    /// waits behind the pushes, none read yet.
    async fn big_pushes_behind_a_busy_handler(&mut self) -> (TcpStream, ConnectionId) {
        let mut s = self.connect_small().await;
        let id = self.next_open().await;
        s.write_all(&frame(b"wait")).await.unwrap();
        self.next_busy().await;
        for i in 0..4 {
            assert_eq!(self.hub.send(id, big_push(i)), Ok(()));
        }
        crate::ws_api::delivered(&self.handle, 4).await;
        self.gate.add_permits(1);
        (s, id)
    }

    /// Waits until a handler is in `wait`.
    async fn next_busy(&mut self) {
        self.gate.next_busy().await;
    }

    fn closed_with(&self, label: &str) -> u64 {
        closed_as(&self.handle.stats(), label)
    }

    async fn stop(self) -> ShutdownSummary {
        self.running.stop().await
    }
}

/// Reads until `want` bytes arrived (bounded).
async fn read_exact(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut buf = vec![0; want];
    tokio::time::timeout(SAFETY, s.read_exact(&mut buf))
        .await
        .expect("timed out reading")
        .expect("read");
    buf
}

/// Push `i` of [`Framed::big_pushes_behind_a_busy_handler`]: 2 MiB of
/// `i`, more than a slow reader's socket buffers take while it reads
/// nothing (and each a batch of its own).
fn big_push(i: u8) -> Vec<u8> {
    vec![i; 2 << 20]
}

#[tokio::test]
async fn lines_echo_split_anywhere_or_stuck_together() {
    let (events, mut seen) = mpsc::unbounded_channel();
    let mut server = Framed::start(
        Server::builder().on_connection(move |e| {
            let _ = events.send(e.clone());
        }),
        Framing::lines(),
    )
    .await;
    let mut s = server.connect().await;
    // Three lines in one write (sticky packets), mixed line endings.
    s.write_all(b"hello\r\nworld\n\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 13).await, b"hello\nworld\n\n");
    // One line byte by byte.
    for b in b"split\n" {
        s.write_all(&[*b]).await.unwrap();
    }
    assert_eq!(read_exact(&mut s, 6).await, b"split\n");
    s.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"5\n");
    drop(s);
    assert_eq!(server.next_close().await, (5, CloseReason::ClientClosed));
    // The lifecycle events count one request per message.
    let closed = loop {
        let event = tokio::time::timeout(SAFETY, seen.recv())
            .await
            .unwrap()
            .unwrap();
        if let ConnectionEvent::Closed {
            requests, reason, ..
        } = event
        {
            break (requests, reason);
        }
    };
    assert_eq!(closed, (5, CloseReason::ClientClosed));
    assert_eq!(server.closed_with("client_closed"), 1);
    server.stop().await;
}

#[tokio::test]
async fn length_prefixed_echo_split_anywhere_or_stuck_together() {
    let mut server = Framed::start(Server::builder(), Framing::length_prefixed(4)).await;
    let mut s = server.connect().await;
    // Many frames in one write, a zero-length one among them.
    let mut wire = Vec::new();
    for body in [&b"one"[..], b"", b"three", &[0u8, 255, 10, 13][..]] {
        wire.extend_from_slice(&frame(body));
    }
    s.write_all(&wire).await.unwrap();
    assert_eq!(read_exact(&mut s, wire.len()).await, wire);
    // A frame byte by byte, header included.
    let big: Vec<u8> = (0..=255u8).collect();
    for b in frame(&big) {
        s.write_all(&[b]).await.unwrap();
    }
    assert_eq!(read_frame(&mut s).await, big);
    s.write_all(&frame(b"bye")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"bye");
    assert_eq!(read_to_close(&mut s).await, b"");
    assert_eq!(server.next_close().await, (6, CloseReason::ServerClosed));
    server.stop().await;
}

/// A framing error counts in `protocol_errors`, as the other protocols'
/// errors do.
#[tokio::test]
async fn a_framing_error_counts_as_a_protocol_error() {
    let mut server = Framed::start(
        Server::builder(),
        Framing::length_prefixed(4).max_frame_bytes(16),
    )
    .await;
    let mut s = server.connect().await;
    s.write_all(&1000u32.to_be_bytes()).await.unwrap();
    let too_large = CloseReason::Protocol(ProtocolDetail::Framing(FramingError::FrameTooLarge));
    assert_eq!(server.next_close().await, (0, too_large));
    read_to_close(&mut s).await;
    assert_eq!(server.handle.stats().protocol_errors, 1);
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_its_reason_and_a_metric() {
    let mut server = Framed::start(
        Server::builder(),
        Framing::length_prefixed(4).max_frame_bytes(16),
    )
    .await;
    let mut s = server.connect().await;
    s.write_all(&frame(b"fits")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"fits");
    // The header alone is enough to refuse it: the body is never read.
    s.write_all(&17u32.to_be_bytes()).await.unwrap();
    let too_large = CloseReason::Protocol(ProtocolDetail::Framing(FramingError::FrameTooLarge));
    assert_eq!(server.next_close().await, (1, too_large));
    read_to_close(&mut s).await;
    server
        .wait_stats("the close counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.closed_with("protocol_error"), 1);
    assert!(server
        .handle
        .render_metrics()
        .contains(r#"megaconn_connections_closed_total{reason="protocol_error"} 1"#));

    // An overlong line, likewise.
    let mut lines = Framed::start(Server::builder(), Framing::lines().max_line_bytes(8)).await;
    let mut s = lines.connect().await;
    s.write_all(b"0123456789").await.unwrap();
    let too_long = CloseReason::Protocol(ProtocolDetail::Framing(FramingError::LineTooLong));
    assert_eq!(lines.next_close().await, (0, too_long));
    read_to_close(&mut s).await;
    server.stop().await;
    lines.stop().await;
}

/// The parking servers' `park_idle_after`.
const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

#[tokio::test]
async fn a_parked_connection_keeps_its_state_across_park_and_wake() {
    let mut server = Framed::parking(Framing::lines()).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut s = server.connect().await;
        s.write_all(b"a\nb\n").await.unwrap();
        assert_eq!(read_exact(&mut s, 4).await, b"a\nb\n");
        conns.push(s);
    }
    server
        .wait_stats("all parked", |s| s.connections_parked == 3)
        .await;
    let stats = server.handle.stats();
    assert_eq!(
        stats.buffers_checked_out, 0,
        "parked connections hold no buffer"
    );
    assert_eq!(stats.connections_open, 3);
    // Each wakes with its own count, and parks again.
    for (i, s) in conns.iter_mut().enumerate() {
        for _ in 0..=i {
            s.write_all(b"x\n").await.unwrap();
            assert_eq!(read_exact(s, 2).await, b"x\n");
        }
        s.write_all(b"count\n").await.unwrap();
        let want = format!("{}\n", 2 + i + 2);
        assert_eq!(read_exact(s, want.len()).await, want.as_bytes());
    }
    server
        .wait_stats("parked again", |s| s.connections_parked == 3)
        .await;
    let mut s = conns.remove(0);
    s.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"5\n");
    // A peer hanging up on a parked connection: its state goes, once.
    server
        .wait_stats("parked again", |s| s.connections_parked == 3)
        .await;
    drop(s);
    assert_eq!(server.next_close().await, (5, CloseReason::ClientClosed));
    server
        .wait_stats("closed", |s| s.connections_open == 2)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_mid_frame_does_not_park() {
    let server = Framed::parking(Framing::length_prefixed(4)).await;
    let mut s = server.connect().await;
    s.write_all(&frame(b"whole")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"whole");
    server
        .wait_stats("parked between frames", |s| s.connections_parked == 1)
        .await;
    // Half a frame: the connection wakes and stays a task until the rest.
    let half = frame(b"halves");
    s.write_all(&half[..6]).await.unwrap();
    server
        .wait_stats("woken", |s| s.connections_parked == 0)
        .await;
    // An observation window of many park_idle_after, not a synchronisation:
    // nothing may park the connection in it.
    tokio::time::sleep(PARK_IDLE_AFTER * 10).await;
    assert_eq!(server.handle.stats().connections_parked, 0);
    s.write_all(&half[6..]).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"halves");
    server
        .wait_stats("parked again", |s| s.connections_parked == 1)
        .await;
    server.stop().await;
}

/// An awake connection waiting between frames holds no read buffer, neither
/// just accepted (tokio reports a fresh socket readable before its first
/// read) nor after a frame: held, every connection of a ramp kept 8 KiB
/// until it parked, a heap peak whose fragments glibc keeps resident
/// (bench/FRAMED.md). Parking is off, so only the wait can give it back.
#[tokio::test]
async fn idle_awake_connections_hold_no_read_buffer() {
    let mut server = Framed::awake(Framing::length_prefixed(4)).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(server.connect().await);
        server.next_open().await;
    }
    // A round trip on a later connection: the worker (one thread, tasks in
    // the order they were spawned) has had the silent ones wait by then.
    let mut s = server.connect().await;
    s.write_all(&frame(b"after")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"after");
    server
        .wait_stats("no waiting connection holds a buffer", |s| {
            s.buffers_checked_out == 0
        })
        .await;
    let stats = server.handle.stats();
    assert_eq!((stats.connections_open, stats.connections_parked), (21, 0));
    // Still served: the wait without a buffer hears the next frame.
    for c in &mut silent {
        c.write_all(&frame(b"late")).await.unwrap();
        assert_eq!(read_frame(c).await, b"late");
    }
    s.write_all(&frame(b"again")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"again");
    server
        .wait_stats("none held after the frames either", |s| {
            s.buffers_checked_out == 0
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_heartbeat_timeout() {
    // Awake: the task's own timer. 1 s: the test's frame must come before
    // it, and a loaded machine can hold the test task for 100 ms.
    let mut awake = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .heartbeat_timeout(Some(Duration::from_secs(1))),
        Framing::lines(),
    )
    .await;
    let mut s = awake.connect().await;
    s.write_all(b"hi\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 3).await, b"hi\n");
    assert_eq!(awake.next_close().await, (1, CloseReason::HeartbeatTimeout));
    assert_eq!(read_to_close(&mut s).await, b"");
    // Mid-frame counts as silent too.
    let mut s = awake.connect().await;
    s.write_all(b"no newline").await.unwrap();
    assert_eq!(awake.next_close().await, (0, CloseReason::HeartbeatTimeout));
    read_to_close(&mut s).await;
    awake
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(awake.closed_with("heartbeat_timeout"), 2);
    assert_eq!(awake.handle.stats().messages.heartbeat_timeouts, 2);
    let metrics = awake.handle.render_metrics();
    assert!(
        metrics.contains("megaconn_message_heartbeat_timeouts_total 2"),
        "{metrics}"
    );
    awake.stop().await;

    // Parked: the lot's deadline wakes it, and the protocol closes it.
    let mut parked = Framed::start(
        Server::builder()
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .heartbeat_timeout(Some(Duration::from_millis(300))),
        Framing::lines(),
    )
    .await;
    let mut s = parked.connect().await;
    s.write_all(b"hi\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 3).await, b"hi\n");
    // The monotonic count, not the gauge: the gauge is 1 only until the
    // deadline closes the connection, a window a starved poll can miss.
    parked.wait_stats("parked", |s| s.parks >= 1).await;
    assert_eq!(
        parked.next_close().await,
        (1, CloseReason::HeartbeatTimeout)
    );
    assert_eq!(read_to_close(&mut s).await, b"");
    parked.stop().await;
}

/// A server framing with `framing` whose frames must be whole within
/// 300 ms (and whose heartbeat does not end a peer first).
async fn message_timeout_server(framing: Framing) -> Framed {
    Framed::start(
        Server::builder()
            .heartbeat_timeout(Some(Duration::from_secs(600)))
            .message_timeout(Some(Duration::from_millis(300))),
        framing,
    )
    .await
}

/// A peer that begins a frame and then sends a byte now and then, each
/// well within the heartbeat timeout, is closed at the message timeout:
/// the heartbeat (restarted by every byte, and off by default) held it, a
/// task and a read buffer, for as long as the bytes came.
#[tokio::test]
async fn a_frame_trickled_a_byte_at_a_time_is_closed_at_the_message_timeout() {
    let mut server = message_timeout_server(Framing::length_prefixed(4)).await;
    let mut s = server.connect().await;
    let whole = frame(&[7; 1000]);
    s.write_all(&whole[..10]).await.unwrap();
    let (mut from, mut to) = s.split();
    let mut rest = Vec::new();
    let closed = from.read_to_end(&mut rest);
    // A reset counts as closed too.
    let _ = common::trickle_until(&mut to, &whole[10..whole.len() - 1], closed).await;
    assert_eq!(server.next_close().await, (0, CloseReason::MessageTimeout));
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.closed_with("message_timeout"), 1);
    let metrics = server.handle.render_metrics();
    assert!(
        metrics.contains(r#"megaconn_connections_closed_total{reason="message_timeout"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("megaconn_timeouts_total 1"), "{metrics}");
    server.stop().await;
}

/// A header announcing a huge frame, and a byte of it, cost the server what
/// arrived, not what the header announced: tokio-util's decoder reserved
/// the whole frame at the header, held until the message timeout (a
/// gigabyte here; `max_frame_bytes` of memory per connection of an attack).
#[tokio::test]
async fn a_header_announcing_a_huge_frame_does_not_reserve_it() {
    const ANNOUNCED: u32 = 1 << 30;
    let mut server = Framed::start(
        Server::builder().message_timeout(Some(Duration::from_millis(200))),
        Framing::length_prefixed(4).max_frame_bytes(ANNOUNCED as usize),
    )
    .await;
    let mut s = server.connect().await;
    let mut head = ANNOUNCED.to_be_bytes().to_vec();
    head.push(7);
    s.write_all(&head).await.unwrap();
    // Closed mid-frame at the message timeout: the server read it all.
    read_to_close(&mut s).await;
    assert_eq!(server.next_close().await, (0, CloseReason::MessageTimeout));
    // Asked of the server's one worker, on whose thread the frame was read:
    // the process's largest would count the other tests' allocations too.
    let mut asker = server.connect().await;
    asker.write_all(&frame(b"largest")).await.unwrap();
    let largest: usize = String::from_utf8(read_frame(&mut asker).await)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        largest < ANNOUNCED as usize / 4,
        "the largest allocation was {largest} bytes"
    );
    server.stop().await;
}

/// A peer that sends slowly, every line cut in two by a pause, is served
/// as long as each line is whole within the message timeout and it brings
/// a read buffer's worth (8 KiB) within each, however long it goes on: the
/// next line's time starts afresh at the end of one, also when its first
/// bytes came with that end (the connection is never between frames here:
/// as an upload over a slow link, whose segments do not end where lines
/// do).
#[tokio::test]
async fn a_slow_sender_is_served_while_each_frame_is_whole_in_time() {
    let bound = Duration::from_secs(2);
    let pause = Duration::from_millis(100);
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .message_timeout(Some(bound)),
        Framing::lines(),
    )
    .await;
    let mut s = server.connect().await;
    // Enough lines that the whole takes longer than the bound; 1,001 bytes
    // a pause: 20 KB within each bound.
    let rounds = 2 * (bound.as_millis() / pause.as_millis()) as usize;
    let line = [&[b'x'; 1000][..], b"\n"].concat();
    let (mut bytes, mut cuts) = (Vec::new(), Vec::new());
    common::each_cut_in_two(&mut bytes, &mut cuts, &line, rounds);
    common::write_in_pieces_outlasting(&mut s, &bytes, &cuts, pause, bound).await;
    assert_eq!(read_exact(&mut s, bytes.len()).await, bytes);
    drop(s);
    let closed = server.next_close().await;
    assert_eq!(closed, (rounds as u64, CloseReason::ClientClosed));
    server.stop().await;
}

/// A peer that, every round, ends the line it began and begins the next
/// (2 bytes) is closed at the message timeout: each line was whole within
/// its time, but the connection never got back between frames, so it
/// never parked, and held a task and a pooled buffer for as long as the
/// rounds came. Bringing 2 bytes a round, its time ran on.
#[tokio::test]
async fn a_peer_that_never_gets_back_between_frames_is_closed_at_the_message_timeout() {
    let mut server = message_timeout_server(Framing::lines()).await;
    let mut s = server.connect().await;
    let (mut from, mut to) = s.split();
    let mut echoes = Vec::new();
    // A reset counts as closed too.
    let closed = from.read_to_end(&mut echoes);
    let pause = Duration::from_millis(100);
    let _ = common::in_rounds_until(&mut to, (b"y", b"\ny"), pause, 20, closed).await;
    let (_, reason) = server.next_close().await;
    assert_eq!(reason, CloseReason::MessageTimeout);
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.closed_with("message_timeout"), 1);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_parked_framed_connections() {
    let (mut server, mut parked) = one_parked().await;
    server.handle.shutdown();
    assert_eq!(server.next_close().await, (1, CloseReason::Shutdown));
    assert_eq!(read_to_close(&mut parked).await, b"");
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0);
}

#[tokio::test]
async fn shutdown_closes_idle_framed_tasks() {
    let mut server = Framed::awake(Framing::lines()).await;
    let mut idle = server.connect().await;
    idle.write_all(b"a\n").await.unwrap();
    assert_eq!(read_exact(&mut idle, 2).await, b"a\n");
    // And one that never said anything (a fresh socket may report itself
    // readable before any byte came: the server waits in a read then).
    let mut silent = server.connect().await;
    server.next_open().await;
    server.next_open().await;
    server.handle.shutdown();
    let mut closes = vec![server.next_close().await, server.next_close().await];
    closes.sort_by_key(|(seen, _)| *seen);
    assert_eq!(
        closes,
        [(0, CloseReason::Shutdown), (1, CloseReason::Shutdown)]
    );
    assert_eq!(read_to_close(&mut idle).await, b"");
    assert_eq!(read_to_close(&mut silent).await, b"");
    assert_eq!(server.stop().await.forced, 0);
}

#[tokio::test]
async fn the_per_ip_limit_applies_to_framed_listeners() {
    let mut server = Framed::start(
        Server::builder().max_connections_per_ip(Some(1)),
        Framing::lines(),
    )
    .await;
    let mut first = server.connect().await;
    first.write_all(b"a\n").await.unwrap();
    assert_eq!(read_exact(&mut first, 2).await, b"a\n");
    let mut second = server.connect().await;
    assert_eq!(read_to_close(&mut second).await, b"");
    server
        .wait_stats("refused", |s| s.rejected_per_ip == 1)
        .await;
    // The refused connection never reached the handler; the first still works.
    first.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut first, 2).await, b"2\n");
    drop(first);
    assert_eq!(server.next_close().await, (2, CloseReason::ClientClosed));
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_closes_only_its_connection() {
    let mut server = Framed::start(Server::builder(), Framing::lines()).await;
    let mut s = server.connect().await;
    s.write_all(b"a\npanic\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"a\n");
    assert_eq!(server.next_close().await, (2, CloseReason::Panic));
    assert_eq!(read_to_close(&mut s).await, b"");
    let mut other = server.connect().await;
    other.write_all(b"still here\n").await.unwrap();
    assert_eq!(read_exact(&mut other, 11).await, b"still here\n");
    assert_eq!(server.handle.stats().panics, 1);
    server.stop().await;
}

/// A handler whose `on_open` panics on its first connection only.
struct PanicsOnFirstOpen {
    opened: std::sync::atomic::AtomicBool,
    closes: mpsc::UnboundedSender<CloseReason>,
}

impl FramedHandler for PanicsOnFirstOpen {
    type State = ();

    fn on_open(&self, _: &mut (), _: &Session) {
        if !self.opened.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("the test handler panics in its first on_open");
        }
    }

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// A server of one worker on one framed listener of lines, bound.
fn one_lines_worker() -> Server {
    Server::builder()
        .workers(1)
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
        .listen()
        .expect("server binds")
}

/// A panic in `on_open` closes that connection as a panic, counted, as one
/// in `on_message` does; the worker serves on. (It used to unwind the
/// connection's task: `on_close` said `Shutdown`, and no panic was counted.)
#[tokio::test]
async fn a_panic_in_on_open_closes_its_connection_as_a_panic() {
    let server = one_lines_worker();
    let (addr, handle) = (server.local_addr(), server.handle());
    let (tx, mut closes) = mpsc::unbounded_channel();
    let handler = PanicsOnFirstOpen {
        opened: false.into(),
        closes: tx,
    };
    let task = tokio::spawn(server.serve_framed(handler));
    let mut first = TcpStream::connect(addr).await.unwrap();
    let close = tokio::time::timeout(SAFETY, closes.recv())
        .await
        .expect("on_close in time");
    assert_eq!(close, Some(CloseReason::Panic));
    assert_eq!(read_to_close(&mut first).await, b"");
    assert_eq!(handle.stats().panics, 1);
    let mut other = TcpStream::connect(addr).await.unwrap();
    other.write_all(b"still here\n").await.unwrap();
    assert_eq!(read_exact(&mut other, 11).await, b"still here\n");
    common::shut_down(&handle, task).await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_a_frame_in_progress_then_forces_it() {
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .shutdown_timeout(Duration::from_millis(100)),
        Framing::lines(),
    )
    .await;
    let mut s = server.connect().await;
    s.write_all(b"a\nhalf a li").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"a\n");
    server.handle.shutdown();
    // Dropped at the deadline: the handler still hears of it, once.
    assert_eq!(server.next_close().await, (1, CloseReason::Shutdown));
    assert_eq!(server.stop().await.forced, 1);
    read_to_close(&mut s).await;
}

#[tokio::test]
async fn server_heartbeats_reach_awake_and_parked_connections() {
    // Awake: the task's own timer.
    let server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .send_heartbeat(Some(Duration::from_millis(30)), "HB"),
        Framing::lines(),
    )
    .await;
    let mut s = server.connect().await;
    assert_eq!(read_exact(&mut s, 6).await, b"HB\nHB\n");
    server.stop().await;

    // Parked: the lot wakes it on its timer; it writes and parks again,
    // keeping its state, and the peer's own heartbeat deadline still holds.
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .send_heartbeat(Some(Duration::from_millis(500)), "HB"),
        Framing::length_prefixed(2),
    )
    .await;
    let mut s = server.connect().await;
    s.write_all(b"\x00\x01a").await.unwrap();
    assert_eq!(read_exact(&mut s, 3).await, b"\x00\x01a");
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    for _ in 0..2 {
        assert_eq!(read_exact(&mut s, 4).await, b"\x00\x02HB");
        server
            .wait_stats("parked again", |s| s.connections_parked == 1)
            .await;
    }
    assert_eq!(server.handle.stats().buffers_checked_out, 0);
    s.write_all(b"\x00\x05count").await.unwrap();
    // A third heartbeat may come first (a test thread held up for 500 ms
    // on a loaded machine): the reply is the first frame that is not one.
    let reply = loop {
        let len = read_exact(&mut s, 2).await;
        let frame = read_exact(&mut s, usize::from(u16::from_be_bytes([len[0], len[1]]))).await;
        if frame != b"HB" {
            break frame;
        }
    };
    assert_eq!(reply, b"2");
    drop(s);
    assert_eq!(server.next_close().await, (2, CloseReason::ClientClosed));
    server.stop().await;
}

#[tokio::test]
async fn http_and_framed_listeners_side_by_side() {
    let server = Server::builder()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
        .listen()
        .expect("server binds");
    let (http, framed) = (server.local_addrs()[0], server.local_addrs()[1]);
    assert!(!server.is_framed(http));
    assert!(server.is_framed(framed));
    let handle = server.handle();
    let (tx, _closes) = mpsc::unbounded_channel();
    let app = tower::service_fn(|_req: http::Request<megaconn::Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("Hello, World!")))
    });
    let probe = Probe {
        closes: tx,
        opens: None,
        gate: Gate::new().0,
    };
    let task = tokio::spawn(server.framed(probe).serve(app));

    let mut s = TcpStream::connect(framed).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(
        read_exact(&mut s, 15).await,
        b"GET / HTTP/1.1\n",
        "framed: a line"
    );
    let mut h = TcpStream::connect(http).await.unwrap();
    h.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_to_close(&mut h).await;
    assert!(response.starts_with(b"HTTP/1.1 200"), "HTTP still HTTP");
    assert!(response.ends_with(b"Hello, World!"));
    common::shut_down(&handle, task).await.unwrap();
}

#[tokio::test]
async fn pushes_reach_awake_and_parked_connections_by_id() {
    // Awake: the frame joins the connection's inbox.
    let mut server = Framed::awake(Framing::lines()).await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    assert_eq!(server.hub.send(id, "pushed"), Ok(()));
    assert_eq!(read_exact(&mut s, 7).await, b"pushed\n");
    // In order with replies, from another thread.
    let hub = server.hub.clone();
    std::thread::spawn(move || {
        assert_eq!(hub.send(id, "one"), Ok(()));
        assert_eq!(hub.send(id, "two"), Ok(()));
    })
    .join()
    .unwrap();
    assert_eq!(read_exact(&mut s, 8).await, b"one\ntwo\n");
    server.stop().await;

    // Parked: one write, and the connection stays parked.
    let mut server = Framed::parking(Framing::lines()).await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    s.write_all(b"a\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"a\n");
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    for _ in 0..3 {
        assert_eq!(server.hub.send(id, "to a parked one"), Ok(()));
        assert_eq!(read_exact(&mut s, 16).await, b"to a parked one\n");
    }
    let stats = server.handle.stats();
    assert_eq!(stats.connections_parked, 1, "still parked");
    assert_eq!(stats.buffers_checked_out, 0);
    // Its state is intact.
    s.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"2\n");

    // A closed connection's id names nobody, even on a reused descriptor:
    // a send to it is refused at the call (session 42; it was `Ok`, and
    // the message dropped by the worker).
    drop(s);
    assert_eq!(server.next_close().await, (2, CloseReason::ClientClosed));
    let mut fresh = server.connect().await;
    let fresh_id = server.next_open().await;
    assert_ne!(fresh_id, id);
    assert_eq!(server.hub.send(id, "stale"), Err(HubError::Closed));
    assert_eq!(server.hub.send(fresh_id, "fresh"), Ok(()));
    assert_eq!(read_exact(&mut fresh, 6).await, b"fresh\n");
    server.stop().await;
}

/// A parked peer that reads nothing gets a push no socket takes at once:
/// woken to write the rest (since session 45 it resumes, `big_push.rs`),
/// it is a slow consumer once its write bound (`write_timeout`) passes.
/// (Without a heartbeat a framed socket's `TCP_USER_TIMEOUT` is twice the
/// bound that applies and a second, so the kernel does not close a peer
/// whose window stays shut first, as `Io(TimedOut)`: `conn/socket.rs`
/// `kernel_bound`, `framed_halfopen.rs`.)
#[tokio::test]
async fn a_parked_peer_that_does_not_read_pushes_is_closed_as_a_slow_consumer() {
    let builder = Server::builder()
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .write_timeout(Some(Duration::from_millis(300)));
    let framing = Framing::length_prefixed(4).max_frame_bytes(64 << 20);
    let mut server = Framed::start(builder, framing).await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    s.write_all(&frame(b"hi")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"hi");
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    // More than any socket buffer takes at once, and the peer reads nothing.
    assert_eq!(server.hub.send(id, vec![7u8; 48 << 20]), Ok(()));
    assert_eq!(server.next_close().await, (1, CloseReason::SlowConsumer));
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.closed_with("slow_consumer"), 1);
    server.stop().await;
}

#[tokio::test]
async fn publish_and_broadcast_reach_parked_and_busy_connections() {
    let mut server = Framed::parking(Framing::lines()).await;
    // Parked: subscribed, then idle until it parks.
    let mut parked = server.connect().await;
    parked.write_all(b"sub news\n").await.unwrap();
    assert_eq!(read_exact(&mut parked, 3).await, b"ok\n");
    // Not subscribed, parked too.
    let mut other = server.connect().await;
    other.write_all(b"hello\n").await.unwrap();
    assert_eq!(read_exact(&mut other, 6).await, b"hello\n");
    server
        .wait_stats("two parked", |s| s.connections_parked == 2)
        .await;
    // Busy: subscribed, then in its handler.
    let mut busy = server.connect().await;
    busy.write_all(b"sub news\nwait\n").await.unwrap();
    assert_eq!(read_exact(&mut busy, 3).await, b"ok\n");
    server.next_busy().await;

    assert_eq!(server.hub.publish("news", "headline"), Ok(()));
    // The parked one has it at once, still parked.
    assert_eq!(read_exact(&mut parked, 9).await, b"headline\n");
    assert_eq!(server.handle.stats().connections_parked, 2);
    // The busy one while its handler awaits (since session 46), then the
    // handler's reply.
    assert_eq!(read_exact(&mut busy, 9).await, b"headline\n");
    server.gate.add_permits(1);
    assert_eq!(read_exact(&mut busy, 7).await, b"waited\n");

    // Everyone hears a broadcast; the unsubscribed one heard nothing before.
    assert_eq!(server.hub.broadcast("all"), Ok(()));
    for s in [&mut parked, &mut other, &mut busy] {
        assert_eq!(read_exact(s, 4).await, b"all\n");
    }

    // Subscriptions hold across park and wake: once all three are parked
    // (the busy one subscribed while awake), both subscribers hear a publish.
    server
        .wait_stats("three parked", |s| s.connections_parked == 3)
        .await;
    assert_eq!(server.hub.publish("news", "again"), Ok(()));
    assert_eq!(read_exact(&mut parked, 6).await, b"again\n");
    assert_eq!(read_exact(&mut busy, 6).await, b"again\n");

    // Unsubscribed: the next publish passes it by (the broadcast after it
    // is the first thing it reads).
    parked.write_all(b"unsub news\n").await.unwrap();
    assert_eq!(read_exact(&mut parked, 3).await, b"ok\n");
    assert_eq!(server.hub.publish("news", "late"), Ok(()));
    assert_eq!(server.hub.broadcast("end"), Ok(()));
    assert_eq!(read_exact(&mut parked, 4).await, b"end\n");
    assert_eq!(read_exact(&mut other, 4).await, b"end\n");
    assert_eq!(read_exact(&mut busy, 9).await, b"late\nend\n");

    // A closed subscriber leaves its topics; a publish finds one left.
    drop(busy);
    server.next_close().await;
    let before = server.handle.stats().messages;
    assert_eq!(server.hub.publish("news", "x"), Ok(()));
    assert_eq!(server.hub.broadcast("y"), Ok(()));
    assert_eq!(read_exact(&mut parked, 2).await, b"y\n");
    assert_eq!(read_exact(&mut other, 2).await, b"y\n");
    // (A parked connection's push is counted just after its `send`, so the
    // count may trail the bytes by a moment.)
    server
        .wait_stats("two pushes counted", |s| {
            s.messages.pushes == before.pushes + 2
        })
        .await;
    assert_eq!(server.handle.stats().messages.queue_drops, 0);
    server.stop().await;
}

/// A parked peer that does not read gets a push its socket cannot take
/// whole: what it reads ends on a frame boundary (that frame whole, then
/// the close), as a framed protocol has no close frame to say why. The
/// push is written from the hub with no task to finish it: the socket was
/// shut at once, and the peer read a frame cut short. That push reached
/// the peer whole: it counts as delivered (it counted in `queue_drops`,
/// and neither in `pushes` nor in `bytes_out`).
#[tokio::test]
async fn a_parked_slow_consumer_reads_whole_frames_to_the_close() {
    parked_slow_consumer(false).await;
}

/// The same for a peer that keeps sending (an app heartbeat) while the
/// server writes the rest of its push: it still reads that frame whole,
/// then the end of the stream, as the close lingers
/// (`linger_after_unsent`). A close with its bytes unread is a reset,
/// which destroys what the kernels still hold of the frame (the WebSocket
/// twin of this test is `ws_api::a_chatty_parked_slow_consumer_gets_its_1013`).
#[tokio::test]
async fn a_chatty_parked_slow_consumer_reads_whole_frames_to_the_close() {
    parked_slow_consumer(true).await;
}

/// Parks a slow reader, pushes it a frame its socket takes and one it
/// cannot take whole, then [`OVERFLOWING`] small ones, which overflow the
/// queue (of one fewer) it resumes with (since session 45 a push that
/// does not go whole wakes it to write the rest, awake, `big_push.rs`):
/// once it is a slow consumer, it reads to the close (`chatty`: after it
/// sent a frame): both frames whole, both pushes counted as delivered,
/// the small ones dropped.
async fn parked_slow_consumer(chatty: bool) {
    const OVERFLOWING: usize = 3;
    // The close's bound generous: the client reads what the sockets hold
    // after the close began at its own pace (at the default 2 s a starved
    // machine's client read 3.7 of 4 MiB; the bound itself:
    // `linger_timeout.rs`). Its EOF ends the close.
    let builder = Server::builder()
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .outbound_queue(OVERFLOWING - 1)
        .linger_timeout(Duration::from_secs(60));
    let framing = Framing::length_prefixed(4).max_frame_bytes(8 << 20);
    let mut server = Framed::start(builder, framing).await;
    let mut s = server.connect_small().await;
    let id = server.next_open().await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    assert_eq!(server.hub.send(id, "first"), Ok(()));
    // More than the socket's buffers take at once (the message send
    // buffer's 512 KiB, and what the client's takes).
    let big = vec![7u8; 1 << 20];
    assert_eq!(server.hub.send(id, big.clone()), Ok(()));
    // Nothing else wakes it: the push found it full.
    server
        .wait_stats("the push found it full", |s| s.connections_parked == 0)
        .await;
    for i in 0..OVERFLOWING {
        assert_eq!(server.hub.send(id, format!("more {i}")), Ok(()));
    }
    server
        .wait_stats("its queue overflowed", |s| s.messages.queue_drops >= 1)
        .await;
    if chatty {
        s.write_all(&frame(b"still here")).await.unwrap();
    }
    let all = read_to_close(&mut s).await;
    assert_eq!(all.len(), 9 + 4 + big.len(), "whole frames, no reset");
    assert!(all == [frame(b"first"), frame(&big)].concat());
    drop(s);
    assert_eq!(server.next_close().await, (0, CloseReason::SlowConsumer));
    let counted = server.handle.stats().messages;
    assert_eq!(
        (counted.pushes, counted.queue_drops, counted.frames_out),
        (2, OVERFLOWING as u64, 2),
        "{counted:?}"
    );
    assert_eq!(counted.bytes_out, (9 + 4 + big.len()) as u64);
    server.stop().await;
}

/// A busy connection (its handler awaiting) whose peer reads gets more
/// pushes than its outbound queue holds, each as it comes, then the
/// handler's reply: not a slow consumer. (Until session 46 the pushes
/// waited for the handler, and the fourth closed it as one.)
#[tokio::test]
async fn a_busy_connection_that_reads_gets_more_pushes_than_its_queue_holds() {
    let mut server = Framed::start(
        Server::builder().park_idle_after(None).outbound_queue(3),
        Framing::lines(),
    )
    .await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    s.write_all(b"wait\n").await.unwrap();
    server.next_busy().await;
    for i in 0..4 {
        assert_eq!(server.hub.send(id, format!("push {i}")), Ok(()));
        assert_eq!(
            read_exact(&mut s, 7).await,
            format!("push {i}\n").as_bytes()
        );
    }
    server.gate.add_permits(1);
    assert_eq!(read_exact(&mut s, 7).await, b"waited\n");
    let counted = server.handle.stats().messages;
    assert_eq!((counted.pushes, counted.queue_drops), (4, 0), "{counted:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_says_goodbye_to_parked_and_awake_connections() {
    says_goodbye_at_shutdown(false).await;
}

/// An upgrade's drain says goodbye as a stop does: framed connections whose
/// handler does not export its state (the `Probe` does not:
/// `framed_handover.rs` tests those that do) cannot move to the next
/// process, and a parked or awake one gets the goodbye frame before
/// its close, as at a `SIGTERM`. (An SRE review saw a bare FIN at an
/// upgrade: the `megaconn serve` demo sets no goodbye frame, at a stop
/// either.)
#[tokio::test]
async fn an_upgrades_drain_says_goodbye_to_framed_connections_too() {
    says_goodbye_at_shutdown(true).await;
}

/// A parked and an awake framed connection get the goodbye frame, then the
/// close, at shutdown; `upgrade`: the shutdown of an upgrade, which hands
/// the parked connections that can move over first (none of these).
async fn says_goodbye_at_shutdown(upgrade: bool) {
    let goodbye = Some(Bytes::from("going away"));
    for park in [Some(PARK_IDLE_AFTER), None] {
        let mut server = Framed::start(
            Server::builder()
                .park_idle_after(park)
                .goodbye_frame(goodbye.clone()),
            Framing::length_prefixed(4),
        )
        .await;
        let mut s = server.connect().await;
        s.write_all(&frame(b"hi")).await.unwrap();
        assert_eq!(read_frame(&mut s).await, b"hi");
        if park.is_some() {
            server
                .wait_stats("parked", |s| s.connections_parked == 1)
                .await;
        }
        let handed = upgrade.then(|| server.handle.hand_over_parked());
        server.handle.shutdown();
        if let Some(handed) = handed {
            // The batches come as the workers stop (a blocking channel).
            let moved = tokio::task::spawn_blocking(move || handed.map(|b| b.len()).sum::<usize>())
                .await
                .unwrap();
            assert_eq!(moved, 0, "a framed connection moved");
        }
        assert_eq!(
            read_to_close(&mut s).await,
            frame(b"going away"),
            "{park:?}"
        );
        assert_eq!(server.next_close().await, (1, CloseReason::Shutdown));
        let summary = server.stop().await;
        assert_eq!(summary.forced, 0);
    }
}

/// A framed handler that echoes and whose `on_close` panics.
struct FramedPanicsOnClose;

impl FramedHandler for FramedPanicsOnClose {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }

    fn on_close(&self, _: (), _: CloseReason) {
        panic!("this on_close panics on purpose");
    }
}

/// Parked framed connections whose handler's `on_close` panics at shutdown
/// all get their goodbye and close, each panic is counted once, and the
/// server stops cleanly: the panic is caught where `on_close` is called
/// (`Live`, as for an awake connection), with the parking lot's own catch
/// as the backstop behind it.
#[tokio::test]
async fn parked_framed_connections_whose_on_close_panics_all_close_at_shutdown() {
    let server = Server::builder()
        .park_idle_after(Some(PARK_IDLE_AFTER))
        .goodbye_frame(Some(Bytes::from("going away")))
        .workers(1)
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4))
        .listen()
        .expect("server binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(server.serve_framed(FramedPanicsOnClose));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame(b"hi")).await.unwrap();
        assert_eq!(read_frame(&mut s).await, b"hi");
        clients.push(s);
    }
    common::wait_stats(&handle, "parked", |s| s.connections_parked == 2).await;
    handle.shutdown();
    for s in &mut clients {
        assert_eq!(read_to_close(s).await, frame(b"going away"));
    }
    let summary = common::shut_down(&handle, task)
        .await
        .expect("serve result");
    assert_eq!(summary.forced, 0);
    assert_eq!(handle.stats().panics, 2);
}

/// A push the server accepted before a graceful shutdown reaches the peer,
/// before the goodbye: the handler was busy when it came, and the shutdown
/// began before the handler returned.
#[tokio::test]
async fn shutdown_sends_accepted_pushes_before_the_goodbye() {
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .goodbye_frame(Some(Bytes::from("going away"))),
        Framing::length_prefixed(4),
    )
    .await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    // An idle connection: its close tells that the worker began shutting down.
    let mut idle = server.connect().await;
    server.next_open().await;
    s.write_all(&frame(b"wait")).await.unwrap();
    server.next_busy().await;
    assert_eq!(server.hub.send(id, "p1"), Ok(()));
    crate::ws_api::delivered(&server.handle, 1).await;
    server.handle.shutdown();
    assert_eq!(read_to_close(&mut idle).await, frame(b"going away"));
    assert_eq!(server.next_close().await, (0, CloseReason::Shutdown));
    server.gate.add_permits(1);
    // The push went out while the handler awaited (since session 46).
    let expected = [frame(b"p1"), frame(b"waited"), frame(b"going away")].concat();
    assert_eq!(read_to_close(&mut s).await, expected);
    assert_eq!(server.next_close().await, (1, CloseReason::Shutdown));
    server.stop().await;
}

/// A peer that stops reading while a push is being written: the pushes that
/// pile up behind it overflow its queue, and that ends the write at once as
/// a slow consumer, with no write or heartbeat timeout set (before, the
/// write waited for good, deaf to the overflow).
#[tokio::test]
async fn an_overflow_during_a_stuck_write_closes_the_slow_consumer() {
    let mut server = Framed::start(
        Server::builder().park_idle_after(None).outbound_queue(4),
        Framing::length_prefixed(4).max_frame_bytes(64 << 20),
    )
    .await;
    let s = server.connect().await;
    let id = server.next_open().await;
    // More than any socket buffer takes, and the peer reads nothing.
    server.push_under_way(&s, id, vec![7u8; 48 << 20]).await;
    for _ in 0..8 {
        assert_eq!(server.hub.send(id, "more"), Ok(()));
    }
    assert_eq!(server.next_close().await, (0, CloseReason::SlowConsumer));
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.closed_with("slow_consumer"), 1);
    server.stop().await;
}

/// An awake peer that stops reading while a push is being written, and
/// whose queue then overflows, reads what it was sent up to the close, and
/// that ends on a whole frame: the push under way whole, none of those
/// queued behind it. A framed protocol has no close frame to say why: a
/// frame cut short is a peer's parse error. (The write was dropped where it
/// stood, and the peer read part of the frame, then the end of the stream.)
#[tokio::test]
async fn an_awake_slow_consumer_reads_whole_frames_to_the_close() {
    let mut server = Framed::start(
        Server::builder().park_idle_after(None).outbound_queue(2),
        Framing::length_prefixed(4).max_frame_bytes(8 << 20),
    )
    .await;
    let mut s = server.connect_small().await;
    let id = server.next_open().await;
    // More than the socket's buffers take while the peer reads nothing.
    let big = vec![7u8; 2 << 20];
    server.push_under_way(&s, id, big.clone()).await;
    // Two fit in the queue, the third overflows it.
    for i in 0..3 {
        assert_eq!(server.hub.send(id, format!("more {i}")), Ok(()));
    }
    // (The close counts the queue left behind too.)
    server
        .wait_stats("a queue drop", |s| s.messages.queue_drops >= 1)
        .await;
    let all = read_to_close(&mut s).await;
    assert_eq!(all.len(), 4 + big.len(), "a whole frame");
    assert!(all == frame(&big));
    drop(s);
    assert_eq!(server.next_close().await, (0, CloseReason::SlowConsumer));
    let counted = server.handle.stats().messages;
    assert_eq!(counted.frames_out, 1, "{counted:?}");
    assert_eq!(counted.bytes_out, (4 + big.len()) as u64);
    // The big one went; the two queued behind it were dropped with the
    // connection, as the one that overflowed it was (they stayed in
    // `pushes`).
    assert_eq!((counted.pushes, counted.queue_drops), (1, 3), "{counted:?}");
    server.stop().await;
}

/// An awake connection that stops reading holds references to the frames
/// of its batch, not a copy: while its write is stuck on a 60 KB push it
/// holds no pooled buffer (it held one, grown to hold a copy of the batch).
/// The pushes still reach it whole, in order, once it reads.
#[tokio::test]
async fn a_stuck_reader_holds_no_copy_of_its_pushes() {
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .message_send_buffer_size(Some(4096))
            .track_connections(true),
        Framing::length_prefixed(4),
    )
    .await;
    let mut s = server.connect_small().await;
    let id = server.next_open().await;
    let push = |i: u8| vec![i; 60_000];
    for i in 0..3 {
        assert_eq!(server.hub.send(id, push(i)), Ok(()));
    }
    crate::ws_api::stuck_writing(&server.handle).await;
    let stats = server.handle.stats();
    assert_eq!(stats.buffers_checked_out, 0, "{stats:?}");
    for i in 0..3 {
        assert!(read_frame(&mut s).await == push(i), "push {i}");
    }
    server
        .wait_stats("all three counted", |s| s.messages.pushes == 3)
        .await;
    server.stop().await;
}

/// A push lost at a close that is not a slow consumer's counts in
/// `queue_drops` too: here the write timeout ends a write stuck on a push
/// (before the handler's reply), with more pushes in the queue. Every push
/// the worker handed to the connection is in `pushes` or `queue_drops`.
/// (Only a slow consumer's were counted as dropped: these were in
/// neither.)
#[tokio::test]
async fn pushes_lost_at_a_write_timeout_count_as_dropped() {
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .write_timeout(Some(Duration::from_millis(300))),
        Framing::length_prefixed(4).max_frame_bytes(8 << 20),
    )
    .await;
    let s = server.big_pushes_behind_a_busy_handler().await.0;
    assert_eq!(server.next_close().await, (1, CloseReason::WriteTimeout));
    // (Those left in the queue count as the connection's task ends, just
    // after `on_close`.)
    server
        .wait_stats("all four dropped", |s| s.messages.queue_drops == 4)
        .await;
    let counted = server.handle.stats().messages;
    assert_eq!(counted.pushes, 0, "none went whole: {counted:?}");
    drop(s);
    server.stop().await;
}

/// An awake connection takes its outbound queue a batch at a time (about
/// 64 KiB; a larger push alone), so `outbound_queue` bounds what waits
/// behind the write under way: with 4, the pushes behind one stuck in its
/// write overflow at the fifth. Taken whole, the queue went into the write
/// buffer at once (256 pushes of 1 MiB: 256 MiB for one connection), and
/// as many again could queue behind it: here both later pushes were taken.
#[tokio::test]
async fn an_awake_connection_takes_its_queue_a_batch_at_a_time() {
    let mut server = Framed::start(
        Server::builder().park_idle_after(None).outbound_queue(4),
        Framing::length_prefixed(4).max_frame_bytes(8 << 20),
    )
    .await;
    let (mut s, id) = server.big_pushes_behind_a_busy_handler().await;
    // The first push's head: the connection took it while its handler
    // awaited, and its write is stuck (the client reads no more for now);
    // the reply waits behind it.
    assert_eq!(read_exact(&mut s, 4).await, frame(&big_push(0))[..4]);
    for i in 4..6 {
        assert_eq!(server.hub.send(id, big_push(i)), Ok(()));
    }
    // The fifth fit (the queue held three), the sixth did not (and the
    // close may have counted the four left behind already).
    crate::ws_api::delivered(&server.handle, 6).await;
    let counted = server.handle.stats().messages;
    assert_eq!(counted.pushes, 0, "none went whole yet: {counted:?}");
    assert!(counted.queue_drops >= 1, "{counted:?}");
    // The push under way, whole; then the close.
    let rest = read_to_close(&mut s).await;
    assert_eq!(rest.len(), 2 << 20);
    assert!(rest == big_push(0));
    drop(s);
    assert_eq!(server.next_close().await, (1, CloseReason::SlowConsumer));
    // The four left in the queue were dropped with it.
    let counted = server.handle.stats().messages;
    assert_eq!((counted.pushes, counted.queue_drops), (1, 5), "{counted:?}");
    server.stop().await;
}

/// A peer that reads slowly (a 4 KiB receive buffer), in the middle of
/// sending a frame, gets many large pushes whole and in order, none
/// dropped, then the answer to its frame: the connection comes back for
/// the rest of its queue batch after batch, also while it waits for the
/// rest of the peer's frame (where it looks at its queue only when woken
/// by a push: the wake-ups of pushes taken in one batch are one).
#[tokio::test]
async fn a_slow_reader_mid_frame_gets_many_large_pushes_whole_and_in_order() {
    let mut server = Framed::awake(Framing::length_prefixed(4).max_frame_bytes(1 << 20)).await;
    let mut s = server.connect_small().await;
    let id = server.next_open().await;
    let count = frame(b"count");
    s.write_all(&count[..6]).await.unwrap();
    server
        .wait_stats("part of a frame read", |s| s.messages.bytes_in == 6)
        .await;
    for i in 0..MANY_PUSHES {
        assert_eq!(server.hub.send(id, push_of_many_sizes(i)), Ok(()));
    }
    for i in 0..MANY_PUSHES {
        assert!(
            read_frame(&mut s).await == push_of_many_sizes(i),
            "push {i}"
        );
    }
    s.write_all(&count[6..]).await.unwrap();
    assert_eq!(read_frame(&mut s).await, b"1");
    let counted = server.handle.stats().messages;
    assert_eq!(
        (counted.pushes, counted.queue_drops),
        (MANY_PUSHES as u64, 0)
    );
    server.stop().await;
}

/// How many pushes of [`push_of_many_sizes`] the slow-reader tests send
/// (here and in `ws_api`).
pub(crate) const MANY_PUSHES: usize = 48;

/// Push `i` of a slow-reader test: of several sizes around a batch's
/// (`TAKE_AT_ONCE`, 64 KiB): many to a batch, one, or one larger that goes
/// alone; its number in its first 8 bytes.
pub(crate) fn push_of_many_sizes(i: usize) -> Vec<u8> {
    let len = [100, 30_000, 70_000, 250_000][i % 4] + i;
    let mut m = vec![(i % 251) as u8; len];
    m[..8].copy_from_slice(&(i as u64).to_be_bytes());
    m
}

/// Broadcasts sent before a worker has any message connection reach
/// nobody: its pump runs from the worker's start. (It used to start with the
/// first message connection, which then got every broadcast since the
/// server started, kept meanwhile in an unbounded queue.)
#[tokio::test]
async fn broadcasts_before_any_connection_are_not_kept_for_the_first_one() {
    let server = Framed::awake(Framing::lines()).await;
    for _ in 0..10 {
        assert_eq!(server.hub.broadcast("old"), Ok(()));
    }
    server
        .wait_stats("the worker took them", |s| s.messages.hub_messages == 10)
        .await;
    let mut s = server.connect().await;
    s.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"1\n");
    assert_eq!(server.handle.stats().messages.pushes, 0);
    server.stop().await;
}

/// Two servers in one process hand out different ids, and not only by the
/// descriptor, which the kernel reuses (here the first server's connection
/// closes before the second's is accepted, which then often gets the same
/// one): `worker:descriptor:generation` differ apart from the descriptor.
/// Each worker counted its generations from 1, so the first connection of
/// each server's worker 0 had the same worker and generation, and on the
/// same descriptor the same id (and the same `as_u128`): an app's map of
/// ids across both servers took them for one connection.
#[tokio::test]
async fn two_servers_in_one_process_never_hand_out_the_same_id() {
    let mut first = Framed::start(Server::builder(), Framing::lines()).await;
    let mut second = Framed::start(Server::builder(), Framing::lines()).await;
    let s = first.connect().await;
    let a = first.next_open().await;
    drop(s);
    first.next_close().await;
    let _s = second.connect().await;
    let b = second.next_open().await;
    assert_ne!(a, b);
    assert_ne!(a.as_u128(), b.as_u128());
    // `worker:descriptor:generation`, without the descriptor.
    let apart_from_fd = |id: ConnectionId| {
        let shown = id.to_string();
        let parts: Vec<&str> = shown.split(':').collect();
        format!("{}:{}", parts[0], parts[2])
    };
    assert_ne!(apart_from_fd(a), apart_from_fd(b), "{a} and {b}");
    first.stop().await;
    second.stop().await;
}

/// A push reaches a peer that is in the middle of sending a frame (a slow
/// upload): our frames do not interleave with its. It used to wait until
/// the peer's frame was whole, and pushes piled up meanwhile.
#[tokio::test]
async fn a_push_goes_out_while_the_peer_is_mid_frame() {
    let mut server = Framed::awake(Framing::length_prefixed(4)).await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    let whole = frame(&[5u8; 100]);
    s.write_all(&whole[..14]).await.unwrap();
    server
        .wait_stats("the part read", |s| s.messages.bytes_in == 14)
        .await;
    assert_eq!(server.hub.send(id, "p"), Ok(()));
    assert_eq!(read_frame(&mut s).await, b"p");
    s.write_all(&whole[14..]).await.unwrap();
    assert_eq!(read_frame(&mut s).await, [5u8; 100]);
    server.stop().await;
}

#[tokio::test]
async fn message_metrics_count_frames_bytes_and_pushes() {
    let mut server = Framed::awake(Framing::lines()).await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    s.write_all(b"one\ntwo\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 8).await, b"one\ntwo\n");
    assert_eq!(server.hub.send(id, "pushed"), Ok(()));
    assert_eq!(read_exact(&mut s, 7).await, b"pushed\n");
    server
        .wait_stats("three frames out", |s| s.messages.frames_out == 3)
        .await;
    let m = server.handle.stats().messages;
    assert_eq!((m.frames_in, m.bytes_in), (2, 8));
    assert_eq!((m.frames_out, m.bytes_out, m.pushes), (3, 15, 1));
    let text = server.handle.render_metrics();
    for line in [
        "megaconn_message_frames_total{direction=\"in\"} 2",
        "megaconn_message_frames_total{direction=\"out\"} 3",
        "megaconn_message_bytes_total{direction=\"in\"} 8",
        "megaconn_message_bytes_total{direction=\"out\"} 15",
        "megaconn_message_pushes_total 1",
        "megaconn_message_queue_drops_total{cause=\"closed\"} 0",
        "megaconn_message_queue_drops_total{cause=\"slow_consumer\"} 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    server.stop().await;
}

/// Hub messages that come faster than the worker delivers them wait in its
/// queue up to `hub_queue`, shown by the `hub_queued` gauge; the ones over
/// it are dropped, counted as the `hub_queue` limit and refused (false).
/// The pump is held deterministically: a delivery rate so low that after
/// its first slice (the one connection) it waits over a quarter of an hour.
/// (Before, the queue had no bound and nothing showed its length.)
#[tokio::test]
async fn a_hub_queue_over_its_bound_drops_counts_and_shows_its_backlog() {
    let mut server = Framed::start(
        Server::builder()
            .park_idle_after(None)
            .delivery_rate(Some(0.001))
            .hub_queue(4),
        Framing::lines(),
    )
    .await;
    let mut s = server.connect().await;
    let id = server.next_open().await;
    assert_eq!(server.hub.broadcast("first"), Ok(()));
    // Delivered: the pump now waits out its rate, and takes nothing more.
    assert_eq!(read_exact(&mut s, 6).await, b"first\n");
    let queued = |s: &ServerStats| s.messages.hub_queued;
    let dropped = |s: &ServerStats| limit_hits(s, "hub_queue");
    assert_eq!(
        (
            queued(&server.handle.stats()),
            dropped(&server.handle.stats())
        ),
        (0, 0)
    );
    let taken: Vec<bool> = (0..10)
        .map(|i| server.hub.broadcast(format!("later {i}")).is_ok())
        .collect();
    let room: Vec<bool> = (0..10).map(|i| i < 4).collect();
    assert_eq!(taken, room, "four fit in the queue, six do not");
    assert_eq!(
        server.hub.send(id, "by id"),
        Err(HubError::QueueFull),
        "its worker's queue is full"
    );
    assert_eq!(
        server.hub.publish("news", "to a topic"),
        Err(HubError::QueueFull)
    );
    let stats = server.handle.stats();
    assert_eq!((queued(&stats), dropped(&stats)), (4, 8), "{stats:?}");
    assert_eq!(stats.messages.hub_messages, 1);
    let text = server.handle.render_metrics();
    for line in [
        "megaconn_message_hub_queued 4",
        "megaconn_limit_hits_total{limit=\"hub_queue\"} 8",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // What the stopped worker never delivered leaves the gauge.
    let handle = server.handle.clone();
    server.stop().await;
    assert_eq!(handle.stats().messages.hub_queued, 0);
}

/// A framed peer that sends requests and never reads the replies: the
/// echoes fill the socket buffers and the server's write waits. With no
/// heartbeat, `write_timeout` or hub overflow to end it, the write stall
/// bound does: the connection is closed as `WriteTimeout`, counted as a
/// timeout. (Before, it was held for good, with its task and a pooled
/// buffer, and a graceful shutdown waited `shutdown_timeout` for it.)
#[tokio::test]
async fn a_framed_peer_that_never_reads_is_closed_when_its_writes_stall() {
    let mut server = Framed::start(
        Server::builder().write_stall_timeout(Some(Duration::from_millis(200))),
        Framing::length_prefixed(4),
    )
    .await;
    // A small receive buffer, so that the echoes back up soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket.connect(server.addr).await.unwrap();
    // 16 KiB requests, sent until the server takes no more (its write waits,
    // so it stops reading); nothing is ever read.
    let (_unread, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let request = frame(&[7u8; 16 * 1024]);
        while write.write_all(&request).await.is_ok() {}
    });
    assert_eq!(server.next_close().await.1, CloseReason::WriteTimeout);
    server
        .wait_stats("counted", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.closed_with("write_timeout"), 1);
    assert_eq!(server.handle.stats().timeouts, 1);
    writer.abort();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0);
}

/// A framed peer that reads slowly but steadily is not cut off by the write
/// stall bound, however long the write: the bytes it takes restart it.
/// Before, only our own writes showed its progress, and tokio writes again
/// only once the kernel reports the socket writable, when about a third of
/// its send buffer has drained: on loopback the buffer autotunes to
/// megabytes, so this reader (100 KiB/s, 200 KiB a bound) was closed as
/// `WriteTimeout` one bound into the write. Now a bound that passes asks
/// the kernel whether the peer acknowledged bytes since it began. The
/// client reads for three bounds; only a pause of most of a bound in its
/// reading (its receive buffer, 32 KiB, takes 320 ms of reads to open a
/// window) could close it, and a slower machine only reads less.
#[tokio::test]
async fn a_framed_peer_that_reads_slowly_but_steadily_is_not_cut_off() {
    /// Long against the reader's 10 ms between reads: only a pause of
    /// over a second in its reading could pass for a stall.
    const BOUND: Duration = Duration::from_secs(2);
    /// More than the test reads by far: the write lasts the whole test.
    const PAYLOAD: usize = 8 << 20;
    let mut server = Framed::start(
        Server::builder().write_stall_timeout(Some(BOUND)),
        Framing::length_prefixed(4).max_frame_bytes(PAYLOAD),
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let s = socket.connect(server.addr).await.unwrap();
    let (mut read, mut write) = s.into_split();
    // The request goes from a task of its own (the server reads it while
    // we read the echo); the write half stays open until the end.
    let writer = tokio::spawn(async move {
        write.write_all(&frame(&vec![7u8; PAYLOAD])).await.unwrap();
        std::future::pending::<()>().await;
    });
    let lasting = 3 * BOUND;
    common::read_steadily_while_open(
        &mut read,
        lasting,
        &mut server.running.closes,
        &server.running.handle,
    )
    .await;
    writer.abort();
    server.stop().await;
}

/// A lines server that parks after `PARK_IDLE_AFTER`, and one connection
/// that sent a frame, had its answer and parked.
async fn one_parked() -> (Framed, TcpStream) {
    let server = Framed::parking(Framing::lines()).await;
    let mut s = server.connect().await;
    s.write_all(b"a\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"a\n");
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    (server, s)
}

#[tokio::test]
async fn a_message_to_a_parked_connection_wakes_it_once() {
    let (server, mut s) = one_parked().await;
    let before = server.handle.stats();
    // A heartbeat: read and answered in one cold wake, then straight back
    // to the lot (not re-parked unread, woken again "hot" and kept as a task).
    s.write_all(b"b\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"b\n");
    // (The count follows the re-park: wait for both.)
    server
        .wait_stats("parked again, with no task", |s| {
            s.connections_parked == 1
                && s.parks > before.parks
                && s.wakes_without_task > before.wakes_without_task
        })
        .await;
    let after = server.handle.stats();
    assert_eq!(after.wakes_cold - before.wakes_cold, 1, "{after:?}");
    assert_eq!(after.wakes_hot, before.wakes_hot, "{after:?}");
    assert_eq!(after.parks - before.parks, 1);
    // ... and served on the lot's own turn: no task was spawned for it.
    assert_eq!(
        after.wakes_without_task - before.wakes_without_task,
        1,
        "{after:?}"
    );
    assert!(server
        .handle
        .render_metrics()
        .contains("megaconn_connections_wakes_without_task_total 1"));
    server.stop().await;
}

#[tokio::test]
async fn a_woken_handler_that_awaits_becomes_a_task_and_answers() {
    let (server, mut s) = one_parked().await;
    let before = server.handle.stats();
    // The handler yields: the wake cannot finish on the lot's turn, so it
    // goes on as a task.
    s.write_all(b"yield\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 8).await, b"yielded\n");
    server
        .wait_stats("parked again", |s| {
            s.connections_parked == 1 && s.parks > before.parks
        })
        .await;
    let after = server.handle.stats();
    assert_eq!(after.wakes_cold - before.wakes_cold, 1, "{after:?}");
    assert_eq!(
        after.wakes_without_task, before.wakes_without_task,
        "{before:?} {after:?}"
    );
    // Its state came through the detour: this is its third frame.
    s.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"3\n");
    server.stop().await;
}

/// A broadcast under way does not hold back the worker's other connections:
/// with a delivery rate so low that the pump, after its first slice (one
/// connection), waits over a quarter of an hour, a request on a new
/// connection and a frame on each parked recipient are answered while the
/// gauge shows the other recipients still pending. Counters, not timing.
#[tokio::test]
async fn a_paced_broadcast_lets_the_worker_serve_its_connections_meanwhile() {
    let server = Framed::start(
        Server::builder()
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .delivery_rate(Some(0.001)),
        Framing::lines(),
    )
    .await;
    let mut parked = Vec::new();
    for _ in 0..5 {
        parked.push(server.connect().await);
    }
    server
        .wait_stats("five parked", |s| s.connections_parked == 5)
        .await;
    assert_eq!(server.hub.broadcast("all"), Ok(()));
    server
        .wait_stats("one reached, four pending", |s| {
            s.messages.pushes == 1 && s.messages.deliveries_pending == 4
        })
        .await;

    // A connection opened since is served (and is not owed the broadcast).
    let mut other = server.connect().await;
    other.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut other, 2).await, b"1\n");
    // Each recipient, reached or not, wakes and answers.
    let mut reached = 0;
    for s in &mut parked {
        s.write_all(b"count\n").await.unwrap();
        match &read_exact(s, 2).await[..] {
            b"1\n" => {}
            b"al" => {
                assert_eq!(read_exact(s, 4).await, b"l\n1\n");
                reached += 1;
            }
            got => panic!("unexpected {got:?}"),
        }
    }
    assert_eq!(reached, 1);
    let stats = server.handle.stats().messages;
    assert_eq!(
        (stats.pushes, stats.deliveries_pending),
        (1, 4),
        "{stats:?}"
    );
    server.stop().await;
}

/// However a delivery is sliced (256 connections a turn; or at a rate,
/// with pauses), every connection gets every message once and in order,
/// parked or busy, a push by id queued behind a broadcast comes after it,
/// and the pending gauge returns to 0.
#[tokio::test]
async fn sliced_broadcasts_reach_everyone_in_order_and_nothing_stays_pending() {
    const N: usize = 600;
    for rate in [None, Some(20_000.0)] {
        let mut server = Framed::start(
            Server::builder()
                .park_idle_after(Some(PARK_IDLE_AFTER))
                .delivery_rate(rate),
            Framing::lines(),
        )
        .await;
        let mut conns = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..N {
            conns.push(server.connect().await);
            ids.push(server.next_open().await);
        }
        server
            .wait_stats("all parked", |s| s.connections_parked == N as i64)
            .await;
        // One of them busy in its handler: its messages wait in its queue.
        conns[N / 2].write_all(b"wait\n").await.unwrap();
        server.next_busy().await;

        assert_eq!(server.hub.broadcast("one"), Ok(()));
        assert_eq!(server.hub.broadcast("two"), Ok(()));
        assert_eq!(server.hub.send(ids[0], "three"), Ok(()));
        server.gate.add_permits(1);
        for (i, s) in conns.iter_mut().enumerate() {
            let want: &[u8] = match i {
                0 => b"one\ntwo\nthree\n",
                i if i == N / 2 => b"waited\none\ntwo\n",
                _ => b"one\ntwo\n",
            };
            assert_eq!(read_exact(s, want.len()).await, want, "connection {i}");
        }
        server
            .wait_stats("every push counted, none pending", |s| {
                s.messages.pushes == 2 * N as u64 + 1 && s.messages.deliveries_pending == 0
            })
            .await;
        assert_eq!(server.handle.stats().messages.queue_drops, 0);
        server.stop().await;
    }
}

/// A client that resets a framed connection awake between frames has left:
/// it closes as `ClientClosed` (as HTTP/1.1 and TLS connections do), not as
/// an I/O error. A reset midway through a frame (part of it read) stays an
/// I/O error.
#[tokio::test]
async fn a_reset_between_frames_is_a_client_close_and_midway_an_io_error() {
    let mut server = Framed::awake(Framing::lines()).await;
    let mut s = server.connect().await;
    s.write_all(b"count\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"1\n");
    reset(s);
    assert_eq!(server.next_close().await, (1, CloseReason::ClientClosed));
    let mut s = server.connect().await;
    let before = server.handle.stats().messages.bytes_in;
    s.write_all(b"half").await.unwrap();
    server
        .wait_stats("part of a frame read", |st| {
            st.messages.bytes_in >= before + 4
        })
        .await;
    reset(s);
    let reset_io = CloseReason::Io(std::io::ErrorKind::ConnectionReset);
    assert_eq!(server.next_close().await, (0, reset_io));
    // (The handler hears first; the metric follows.)
    server
        .wait_stats("one client close and one I/O error counted", |st| {
            closed_as(st, "client_closed") == 1 && closed_as(st, "io_error") == 1
        })
        .await;
    server.stop().await;
}

/// A client that resets a parked framed connection has left: woken by the
/// reset, it closes as `ClientClosed`, not as an I/O error. Both wake
/// paths: cold (its first park, after idling) and, most likely, hot (parked
/// again at once after a frame, and reset right away).
#[tokio::test]
async fn a_reset_of_a_parked_framed_connection_is_a_client_close() {
    let (mut server, s) = one_parked().await;
    reset(s);
    assert_eq!(server.next_close().await, (1, CloseReason::ClientClosed));
    let mut s = server.connect().await;
    s.write_all(b"a\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"a\n");
    server
        .wait_stats("parked", |st| st.connections_parked == 1)
        .await;
    let parks = server.handle.stats().parks;
    s.write_all(b"b\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 2).await, b"b\n");
    server
        .wait_stats("parked again", |st| {
            st.connections_parked == 1 && st.parks > parks
        })
        .await;
    reset(s);
    assert_eq!(server.next_close().await, (2, CloseReason::ClientClosed));
    server
        .wait_stats("two client closes counted", |st| {
            closed_as(st, "client_closed") == 2
        })
        .await;
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert_eq!(closed_as(&stats, "io_error"), 0, "{stats:?}");
    server.stop().await;
}

/// `start_framed` then `run`, the two steps of `serve_framed`: a line sent
/// between them waits in the queue and is echoed once the server runs.
#[tokio::test]
async fn a_framed_server_started_then_run_echoes_what_waited() {
    let server = one_lines_worker();
    let addr = server.local_addr();
    let started = server.start_framed(Probe::unwatched()).expect("starts");
    let handle = started.handle();
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(b"waited\n").await.unwrap();
    let running = tokio::spawn(started.run());
    assert_eq!(read_exact(&mut waiting, 7).await, b"waited\n");
    let summary = common::shut_down(&handle, running).await;
    assert_eq!(summary.accepted, 1);
}

/// A hub takes messages only while its server runs: before (bound, then
/// started but not accepting) and after (stopped) it refuses them, saying
/// which, and holds none. Before, a hub of a server that was not serving
/// queued them, up to `hub_queue` (65,536 by default) per worker, held
/// their memory and said it took them.
#[tokio::test]
async fn a_hub_takes_messages_only_while_its_server_runs() {
    let mut server = one_lines_worker();
    let addr = server.local_addr();
    let handle = server.handle();
    let hub = server.hub();
    let queued = || handle.stats().messages.hub_queued;
    for i in 0..100 {
        assert_eq!(hub.broadcast(format!("{i}")), Err(HubError::NotServing));
    }
    assert_eq!(hub.publish("news", "x"), Err(HubError::NotServing));
    assert_eq!(queued(), 0);
    // Started, its workers accept nothing yet: still not serving.
    let started = server.start_framed(Probe::unwatched()).expect("starts");
    assert_eq!(hub.broadcast("early"), Err(HubError::NotServing));
    // Running (from `run`'s call, not its first poll): taken and delivered.
    let running = tokio::spawn(started.run());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 5).await, b"ping\n");
    assert_eq!(hub.broadcast("to all"), Ok(()));
    assert_eq!(read_exact(&mut s, 7).await, b"to all\n");
    common::shut_down(&handle, running).await;
    // Stopped: refused, nothing held.
    assert_eq!(hub.broadcast("late"), Err(HubError::Stopped));
    assert_eq!(hub.publish("news", "late"), Err(HubError::Stopped));
    assert_eq!(queued(), 0);
}

/// The hub of a server dropped without serving reports it stopped: the
/// workers' ends of its channels went with the server. (It queued for it,
/// up to `hub_queue`, and said it took each message.)
#[test]
fn a_hub_of_a_server_dropped_without_serving_says_it_stopped() {
    let mut server = one_lines_worker();
    let handle = server.handle();
    let hub = server.hub();
    drop(server);
    assert_eq!(hub.broadcast("x"), Err(HubError::Stopped));
    assert_eq!(hub.publish("news", "x"), Err(HubError::Stopped));
    assert_eq!(handle.stats().messages.hub_queued, 0);
}

/// A push the connection's framing cannot carry (over `max_frame_bytes`,
/// by id, parked and awake; a line ending on a lines listener, by topic)
/// was dropped with a debug line only and no count: the sender got `Ok`
/// and nothing told anyone. Now each connection that missed it is counted
/// (`push_unframable`), and the next push that fits still arrives. (Over
/// the bound of a server whose only listener is this one, the hub refuses
/// it at the call since session 46: `HubError::TooLarge`, counted once a
/// call; `framed_limits.rs` has the drop per connection of a server whose
/// other listener carries it.)
#[tokio::test]
async fn a_push_the_framing_cannot_carry_is_counted_not_silently_dropped() {
    const MAX: usize = 64 << 10;
    let mut server = Framed::parking(Framing::length_prefixed(4).max_frame_bytes(MAX)).await;
    let unframable = |s: &ServerStats| limit_hits(s, "push_unframable");
    // Parked.
    let mut parked = server.connect().await;
    let parked_id = server.next_open().await;
    parked.write_all(&frame(b"sub fw")).await.unwrap();
    assert_eq!(read_frame(&mut parked).await, b"ok");
    server
        .wait_stats("one parked", |s| s.connections_parked == 1)
        .await;
    let too_large = Err(HubError::TooLarge {
        bytes: MAX + 1,
        limit: MAX,
    });
    assert_eq!(server.hub.send(parked_id, vec![1u8; MAX + 1]), too_large);
    assert_eq!(unframable(&server.handle.stats()), 1);
    assert_eq!(server.hub.send(parked_id, vec![2u8; MAX]), Ok(()));
    assert_eq!(read_frame(&mut parked).await, vec![2u8; MAX]);
    // Awake (in its handler): by topic, with the parked one.
    let mut busy = server.connect().await;
    server.next_open().await;
    busy.write_all(&frame(b"sub fw")).await.unwrap();
    assert_eq!(read_frame(&mut busy).await, b"ok");
    busy.write_all(&frame(b"wait")).await.unwrap();
    server.next_busy().await;
    assert_eq!(server.hub.publish("fw", vec![3u8; MAX + 1]), too_large);
    assert_eq!(unframable(&server.handle.stats()), 2);
    assert_eq!(server.hub.publish("fw", "fits"), Ok(()));
    assert_eq!(read_frame(&mut parked).await, b"fits");
    // Written while its handler awaits (since session 46), before its
    // reply: read before the handler is let go, so the order is fixed.
    assert_eq!(read_frame(&mut busy).await, b"fits");
    server.gate.add_permits(1);
    assert_eq!(read_frame(&mut busy).await, b"waited");
    assert_eq!(server.handle.stats().messages.queue_drops, 0);
    server.stop().await;

    // A lines listener: a line ending or bytes not UTF-8 cannot be a line.
    let mut server = Framed::start(Server::builder(), Framing::lines()).await;
    let mut sub = server.connect().await;
    server.next_open().await;
    sub.write_all(b"sub news\n").await.unwrap();
    assert_eq!(read_exact(&mut sub, 3).await, b"ok\n");
    assert_eq!(server.hub.publish("news", "a\nb"), Ok(()));
    assert_eq!(server.hub.publish("news", vec![0xffu8, b'x']), Ok(()));
    assert_eq!(server.hub.publish("news", "c"), Ok(()));
    assert_eq!(read_exact(&mut sub, 2).await, b"c\n");
    server
        .wait_stats("both counted", |s| unframable(s) == 2)
        .await;
    server.stop().await;
}
