//! Pipelined HTTP/1.1 batches at their edges (session 55): a request whole
//! in the read buffer behind an answer still buffered is timed from the end
//! of the request before it (one clock read fewer, `Stopwatch::queued`);
//! any other is timed from a fresh reading. So a request whose head came
//! in two parts, or after a quiet spell, is not charged the wait before
//! it, and the requests behind a slow handler are not charged its time.
//! And the answers themselves: in order, a `Connection: close` in the
//! middle of a batch answered and the rest left unanswered.
//!
//! The durations are the server's own (`ServerStats::request_metrics`),
//! against a gap the test makes (`GAP`): a request charged a wait it did
//! not cause would take at least that long; one served as it should takes
//! a small part of it, also on a loaded machine.

use std::time::Duration;

use crate::common;

use common::{read_response_buffered, read_to_close, Event, TestServer};
use tokio::io::AsyncWriteExt;

/// The wait the test puts before a request, or into a handler: well above
/// what serving a request takes on a loaded machine.
const GAP: Duration = Duration::from_millis(1500);

/// The durations of the requests counted so far: their number and sum.
fn durations(server: &TestServer) -> (u64, Duration) {
    let d = server.handle.stats().request_metrics.duration;
    (d.count(), d.sum)
}

/// Waits until the server has counted `n` request durations (a record is
/// counted as its exchange ends, which may come after its answer is read).
async fn counted(server: &TestServer, n: u64) {
    server
        .wait_stats(&format!("{n} request durations"), |s| {
            s.request_metrics.duration.count() == n
        })
        .await;
}

/// A request whose head is split between two reads, the second part a gap
/// later (pipelined behind an answered one, so the connection reads on
/// for it rather than waiting idle), is timed from when its head is
/// whole: not from the end of the request before it, which the part in
/// the buffer followed.
#[tokio::test]
async fn a_head_split_across_a_gap_is_not_charged_the_gap() {
    let server = TestServer::default().await;
    let mut s = server
        .connect_sending(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HT")
        .await;
    let mut buf = Vec::new();
    let first = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(first.status, 200);
    tokio::time::sleep(GAP).await;
    s.write_all(b"TP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let second = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(
        (second.status, &second.body[..]),
        (200, &b"Hello, World!"[..])
    );
    counted(&server, 2).await;
    let (_, sum) = durations(&server);
    assert!(
        sum < GAP / 2,
        "two requests took {sum:?} in all: the second was charged the {GAP:?} before its head was whole"
    );
    server.stop().await;
}

/// A request that comes after a quiet spell on a keep-alive connection is
/// timed from its arrival, not from the end of the one before it (the
/// answer was flushed before the wait, so it is not queued behind it).
/// Without the parking lot, so that the connection waits as a task, its
/// next request the second of the same `serve_connection` (with the lot,
/// an accepted connection answered at once is parked, and its next
/// request is a woken connection's first).
#[tokio::test]
async fn a_request_after_a_quiet_spell_is_not_charged_the_spell() {
    let builder = megaconn::Server::builder().workers(1).park_idle_after(None);
    let server = TestServer::start(builder).await;
    let mut s = server
        .connect_sending(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    assert_eq!(
        read_response_buffered(&mut s, &mut buf, false).await.status,
        200
    );
    tokio::time::sleep(GAP).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response_buffered(&mut s, &mut buf, false).await.status,
        200
    );
    counted(&server, 2).await;
    let (_, sum) = durations(&server);
    assert!(
        sum < GAP / 2,
        "two requests took {sum:?} in all: the second was charged the {GAP:?} quiet spell before it"
    );
    server.stop().await;
}

/// Requests pipelined behind a slow handler are answered in order after
/// it, and timed from its end (they were whole in the buffer then), not
/// from when they came: the batch's time is the slow one's, once.
#[tokio::test]
async fn requests_behind_a_slow_handler_are_answered_in_order_and_not_charged_its_time() {
    let mut server = TestServer::default().await;
    let mut s = server
        .connect_sending(
            b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n\
              GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
    assert_eq!(
        server.probe.next_event().await,
        Event::Started("/wait".into())
    );
    // The slow handler's time: the test's, between its start and release.
    tokio::time::sleep(GAP).await;
    server.probe.release.notify_one();
    let mut buf = Vec::new();
    for (status, body) in [
        (200, &b"released"[..]),
        (201, &b""[..]),
        (200, &b"Hello, World!"[..]),
    ] {
        let r = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!((r.status, &r.body[..]), (status, body));
    }
    counted(&server, 3).await;
    let (_, sum) = durations(&server);
    assert!(
        sum >= GAP,
        "the slow handler's {GAP:?} is its request's: {sum:?} in all"
    );
    assert!(
        sum < GAP + GAP / 2,
        "three requests took {sum:?} in all: the two behind the slow handler were charged its {GAP:?}"
    );
    server.stop().await;
}

/// A `Connection: close` in the middle of a batch: the requests before it
/// and itself are answered in order, its answer says `close`, the
/// connection closes after it, and the request behind it is neither
/// answered nor counted.
#[tokio::test]
async fn a_close_in_the_middle_of_a_batch_ends_it_there() {
    let server = TestServer::default().await;
    let mut s = server
        .connect_sending(
            b"GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n\
              GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n\
              GET /status/202 HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
    let mut buf = read_to_close(&mut s).await;
    let first = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("connection"), None);
    let second = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(
        (second.status, &second.body[..]),
        (200, &b"Hello, World!"[..])
    );
    assert_eq!(second.header("connection"), Some("close"));
    assert!(
        buf.is_empty(),
        "nothing after the answer that said close: {:?}",
        String::from_utf8_lossy(&buf)
    );
    counted(&server, 2).await;
    assert_eq!(server.handle.stats().requests, 2);
    server.stop().await;
}
