//! Graceful shutdown, session 56: an h2c connection's HTTP/2 handshake cut
//! 5 s after its accept, as a new connection's first HTTP/1.1 head and a
//! TLS connection's handshakes are (`drain55.rs`), not 5 s after its
//! hand-over from HTTP/1.1.
//!
//! HTTP/2 with prior knowledge starts as HTTP/1.1: its first bytes are
//! read as a request head, which the preface's first line
//! (`PRI * HTTP/2.0`, then an empty line) completes, and HTTP/1.1 hands
//! the connection over. HTTP/2's handshake (the rest of the preface, the
//! client's SETTINGS) then had its own 5 s of a drain from that hand-over:
//! a client whose preface came 3.5 s after its accept was closed 8.5 s
//! after it, where Go's `StateNew` closes it at 5 s.
//!
//! Real sockets, one worker. The one sleep is the condition under test (a
//! preface 3.5 s late); every other wait is on an event, a counter, a
//! frame or a close, bounded by `common::SAFETY`.

use std::time::Duration;

use megaconn::{CloseReason, ConnectionEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::common;

use common::{closed_as, TestServer, SAFETY};

/// Go's grace for a new connection at `Shutdown`, and megaconn's.
const GRACE: Duration = Duration::from_secs(5);

/// How long after its accept the client sends the preface's first line:
/// the condition under test. Cut from the hand-over it would close at
/// 8.5 s or later; from its accept, at 5 s.
const LATE: Duration = Duration::from_millis(3_500);

/// The latest a close counted from the accept may come on a loaded
/// machine: 3.3 s past its cut, 0.2 s before the earliest a cut counted
/// from the hand-over can (timers never fire early, so the old rule still
/// fails it). As `drain55.rs`'s.
const CUT_BY: Duration = Duration::from_millis(8_300);

/// The drain's deadline: past the grace and the late preface, short of
/// [`SAFETY`], so that a connection held to it reads `forced: 1`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The preface's first line and the empty line after it: a whole request
/// head to HTTP/1.1, which hands over to HTTP/2 on it. The rest of the
/// preface (`SM\r\n\r\n`) is held back: HTTP/2's handshake waits for it.
const PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// HTTP/2's frame type of SETTINGS.
const SETTINGS: u8 = 0x4;

/// A connection's close as the `on_connection` hook heard it.
#[derive(Debug)]
struct Closed {
    reason: CloseReason,
    /// How long it was open, from its accept.
    age: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_h2c_preface_is_cut_5_s_after_the_accept() {
    let (tx, mut closes) = mpsc::unbounded_channel();
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .shutdown_timeout(SHUTDOWN_TIMEOUT)
            .read_header_timeout(None)
            .park_idle_after(None)
            .on_connection(move |e| {
                if let ConnectionEvent::Closed {
                    reason, duration, ..
                } = e
                {
                    let _ = tx.send(Closed {
                        reason: *reason,
                        age: *duration,
                    });
                }
            }),
    )
    .await;
    let mut tcp = server.connect().await;
    server
        .wait_stats("accepted", |s| s.connections_open == 1)
        .await;
    // The condition under test: a preface that comes late.
    tokio::time::sleep(LATE).await;
    tcp.write_all(PREFACE_HEAD).await.unwrap();
    // HTTP/2 took it over: its handshake begins with our SETTINGS.
    let mut frame = [0u8; 9];
    tokio::time::timeout(SAFETY, tcp.read_exact(&mut frame))
        .await
        .expect("HTTP/2's SETTINGS come")
        .unwrap();
    assert_eq!(frame[3], SETTINGS, "not HTTP/2's SETTINGS: {frame:?}");
    server.handle.shutdown();
    let closed = common::next(&mut closes, "its close").await;
    assert_eq!(
        closed.reason,
        CloseReason::ShutdownBeforeRequest,
        "{closed:?}"
    );
    assert!(closed.age >= GRACE, "closed before 5 s old: {closed:?}");
    assert!(
        closed.age < CUT_BY,
        "an h2c connection whose preface came {LATE:?} after its accept closed {:?} after \
         it: 5 s after its hand-over to HTTP/2, not its accept",
        closed.age
    );
    let handle = server.handle.clone();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
    let stats = handle.stats();
    assert_eq!(closed_as(&stats, "shutdown_before_request"), 1, "{stats:?}");
}
