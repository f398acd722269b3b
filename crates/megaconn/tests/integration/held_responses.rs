//! Held responses, the push gateway's case: a handler that long-polls (it
//! awaits an event) and a server-sent-event stream between two events hold
//! no pooled buffer (`ServerStats::buffers_checked_out`), and a connection
//! so held still serves the requests pipelined behind, in order, and still
//! cancels its handler when the client hangs up.
//!
//! Each test first waits for the server to hold no buffer: before the
//! exchange gave its buffers back while it waited, a pending long-poll held
//! one (its read-ahead for a hang-up) and a held SSE stream two (that and
//! its write buffer), and each test timed out there.

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::get;
use axum::Router;
use common::{read_response, read_response_buffered, AppServer, Event, TestServer, SAFETY};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Waits (bounded) until the server holds no pooled buffer.
async fn holds_no_buffer(handle: &megaconn::ServerHandle, what: &str) {
    common::wait_stats(handle, what, |s| s.buffers_checked_out == 0).await;
}

/// An axum app whose `/sse` streams, as server-sent events, what the test
/// sends on the returned channel (one stream: the first request takes it),
/// and whose `/` says hello.
fn sse_app() -> (Router, mpsc::UnboundedSender<String>) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new()
        .route(
            "/sse",
            get(move || {
                let rx = rx.lock().unwrap().take().expect("one /sse request");
                async move {
                    let events = UnboundedReceiverStream::new(rx)
                        .map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
                    Sse::new(events)
                }
            }),
        )
        .route("/", get(|| async { "hello" }));
    (app, tx)
}

/// Reads from `s` into `buf` until it holds `needle`.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    tokio::time::timeout(SAFETY, async {
        while !buf.windows(needle.len()).any(|w| w == needle) {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("timed out reading");
}

/// An SSE stream that sent its first event and waits for the next holds no
/// buffer; the next event still comes, a request pipelined behind the
/// stream is answered after it ends, and the stream's wait took none again
/// once the event went out.
#[tokio::test]
async fn a_held_sse_stream_holds_no_buffer_and_serves_what_is_pipelined_behind() {
    let (app, events) = sse_app();
    let server = AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        app,
    );
    let mut s = TcpStream::connect(server.addrs[0]).await.unwrap();
    s.write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    events.send("one".into()).unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"data: one\n\n").await;
    holds_no_buffer(&server.handle, "the held stream gave its buffers back").await;

    // The next event still goes out, and the wait after it holds none.
    events.send("two".into()).unwrap();
    read_until(&mut s, &mut buf, b"data: two\n\n").await;
    holds_no_buffer(&server.handle, "the stream waits again bufferless").await;

    // A request pipelined behind the stream waits in the read buffer (the
    // only one held) and is answered once the stream ends.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    common::wait_stats(&server.handle, "the pipelined request read", |s| {
        s.buffers_checked_out == 1
    })
    .await;
    drop(events);
    let sse = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.body, b"data: one\n\ndata: two\n\n");
    let hello = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!((hello.status, &hello.body[..]), (200, &b"hello"[..]));
    holds_no_buffer(&server.handle, "idle again").await;
    assert!(server.stop().await, "stops");
}

/// A handler that awaits an event (a long-poll) holds no buffer while it
/// waits, and answers when the event comes.
#[tokio::test]
async fn a_pending_long_poll_holds_no_buffer() {
    let mut server = TestServer::default().await;
    let mut s = server.connect().await;
    server.start_waiting(&mut s).await;
    holds_no_buffer(&server.handle, "the long-poll gave its buffer back").await;
    server.probe.release.notify_one();
    assert_eq!(read_response(&mut s).await.body, b"released");
    assert_eq!(
        server.probe.next_event().await,
        Event::Finished("/wait".into())
    );
    server.stop().await;
}

/// Requests pipelined behind a long-poll that holds no buffer are read when
/// they come (by the readiness the exchange waits on), kept, and answered
/// in order after it.
#[tokio::test]
async fn requests_pipelined_behind_a_bufferless_long_poll_are_answered_in_order() {
    let mut server = TestServer::default().await;
    let mut s = server.connect().await;
    server.start_waiting(&mut s).await;
    holds_no_buffer(&server.handle, "the long-poll gave its buffer back").await;
    s.write_all(b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    server
        .wait_stats("the pipelined requests read and kept", |s| {
            s.buffers_checked_out == 1
        })
        .await;
    assert_eq!(server.handle.stats().requests, 1, "not served before /wait");
    server.probe.release.notify_one();
    let mut buf = Vec::new();
    let first = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!((first.status, &first.body[..]), (200, &b"released"[..]));
    let second = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(second.status, 204);
    let third = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(third.body, b"Hello, World!");
    server.stop().await;
}

/// A client that hangs up on a long-poll holding no buffer is still seen
/// at once: the handler is cancelled and the connection closes as the
/// client's.
#[tokio::test]
async fn a_hang_up_still_cancels_a_bufferless_long_poll() {
    let mut server = TestServer::default().await;
    let mut s = server.connect().await;
    server.start_waiting(&mut s).await;
    holds_no_buffer(&server.handle, "the long-poll gave its buffer back").await;
    drop(s);
    assert_eq!(
        server.probe.next_event().await,
        Event::Cancelled("/wait".into())
    );
    server
        .wait_stats("closed as the client's", |s| {
            s.closed == 1 && common::closed_as(s, "client_closed") == 1
        })
        .await;
    let stats = server.handle.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.buffers_checked_out, 0, "{stats:?}");
    server.stop().await;
}

/// An event stream (`text/event-stream`, an axum `Sse`) gets the send
/// buffer of a message connection at its head,
/// `Builder::message_send_buffer_size` (256 KiB by default, which the
/// kernel doubles), as a WebSocket does at its upgrade: a reader that
/// stops reading holds at most that much of the server's memory in the
/// kernel (before, the socket autotuned up to `tcp_wmem`'s 4 MiB, held
/// until `write_stall_timeout`). The server's socket is read here from the
/// test's own process. A plain response on the same listener keeps the
/// kernel's autotuning (a download needs its bandwidth-delay product).
#[tokio::test]
async fn an_event_stream_gets_the_message_send_buffer_at_its_head() {
    use common::{kernel_send_buffer, server_send_buffer};
    for (builder, set) in [
        (
            megaconn::Server::builder(),
            megaconn::DEFAULT_MESSAGE_SEND_BUFFER,
        ),
        (
            megaconn::Server::builder().message_send_buffer_size(Some(64 << 10)),
            64 << 10,
        ),
    ] {
        let (app, events) = sse_app();
        let server = AppServer::start(
            builder.workers(1).listen_on("127.0.0.1:0".parse().unwrap()),
            app,
        );
        // A plain response first: its connection keeps the autotuning.
        let mut plain = TcpStream::connect(server.addrs[0]).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let hello = read_response(&mut plain).await;
        assert_eq!((hello.status, &hello.body[..]), (200, &b"hello"[..]));
        assert_ne!(
            server_send_buffer(&plain),
            kernel_send_buffer(set),
            "a plain response's socket is not bounded"
        );
        // The event stream: bounded once its head went.
        let mut s = TcpStream::connect(server.addrs[0]).await.unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        events.send("one".into()).unwrap();
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"data: one\n\n").await;
        assert_eq!(server_send_buffer(&s), kernel_send_buffer(set));
        drop((s, plain, events));
        assert!(server.stop().await, "stops");
    }
}
