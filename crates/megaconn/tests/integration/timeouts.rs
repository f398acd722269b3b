//! Every timeout, on paused tokio time over in-memory streams: the clock only
//! moves when everything is idle, so these tests do not depend on machine speed.

use crate::common;

use std::time::Duration;

use common::{read_response, test_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

/// Serves one connection with `builder`'s settings; returns the client end.
fn serve(builder: megaconn::Builder) -> DuplexStream {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let (app, _probe) = test_app();
    tokio::task::spawn_local(async move { builder.serve_connection(server_end, app).await });
    client
}

async fn read_all(c: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

fn local() -> tokio::task::LocalSet {
    tokio::task::LocalSet::new()
}

#[tokio::test(start_paused = true)]
async fn header_timeout_answers_408_to_a_partial_head() {
    local()
        .run_until(async {
            let start = Instant::now();
            let mut c = serve(megaconn::Server::builder());
            c.write_all(b"GET / HTTP/1.1\r\nHost: slow").await.unwrap();
            let raw = read_all(&mut c).await;
            assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
            assert!(start.elapsed() >= megaconn::DEFAULT_READ_HEADER_TIMEOUT);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_new_connection_is_closed_without_a_response() {
    local()
        .run_until(async {
            let start = Instant::now();
            let mut c = serve(
                megaconn::Server::builder().read_header_timeout(Some(Duration::from_secs(3))),
            );
            assert_eq!(read_all(&mut c).await, "");
            assert!(start.elapsed() >= Duration::from_secs(3));
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_a_quiet_keep_alive_connection() {
    local()
        .run_until(async {
            let mut c = serve(megaconn::Server::builder());
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut c).await.status, 200);
            let idle_since = Instant::now();
            assert_eq!(read_all(&mut c).await, "");
            let waited = idle_since.elapsed();
            assert!(waited >= megaconn::DEFAULT_IDLE_TIMEOUT, "{waited:?}");
            // The header timeout (10 s) did not apply to the idle wait.
            assert!(waited < megaconn::DEFAULT_IDLE_TIMEOUT + Duration::from_secs(1));
        })
        .await;
}

/// `Some(Duration::MAX)` reads as "never", as it does to a Go user: it
/// used to overflow `now + timeout` and panic the connection at its first
/// keep-alive wait.
#[tokio::test(start_paused = true)]
async fn timeouts_of_duration_max_never_fire_and_never_panic() {
    local()
        .run_until(async {
            let never = Some(Duration::MAX);
            let mut c = serve(
                megaconn::Server::builder()
                    .read_header_timeout(never)
                    .read_timeout(never)
                    .write_timeout(never)
                    .idle_timeout(never)
                    .park_idle_after(never)
                    .shutdown_timeout(Duration::MAX),
            );
            for _ in 0..2 {
                c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .await
                    .unwrap();
                assert_eq!(read_response(&mut c).await.status, 200);
            }
            // Still open an hour later (paused time: the clock jumps).
            tokio::time::sleep(Duration::from_secs(3600)).await;
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut c).await.status, 200);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_none_keeps_the_connection() {
    local()
        .run_until(async {
            let mut c = serve(megaconn::Server::builder().idle_timeout(None));
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            read_response(&mut c).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut c).await.status, 200);
        })
        .await;
}

/// A zero timeout (and a zero body rate) is off, as `None` is (and as zero is in Go and the CLI):
/// a slow head, a slow body and an hour's idle are all served. Zero used to
/// fire at once (a `408` to the first partial head).
#[tokio::test(start_paused = true)]
async fn zero_timeouts_are_off() {
    local()
        .run_until(async {
            let zero = Some(Duration::ZERO);
            let mut c = serve(
                megaconn::Server::builder()
                    .read_header_timeout(zero)
                    .read_timeout(zero)
                    .write_timeout(zero)
                    .idle_timeout(zero)
                    .min_request_body_rate(Some(0)),
            );
            let hour = Duration::from_secs(3600);
            c.write_all(b"POST /collect HTTP/1.1\r\nHost: t")
                .await
                .unwrap();
            tokio::time::sleep(hour).await;
            c.write_all(b"\r\nContent-Length: 4\r\n\r\nab")
                .await
                .unwrap();
            tokio::time::sleep(hour).await;
            c.write_all(b"cd").await.unwrap();
            let r = read_response(&mut c).await;
            assert_eq!((r.status, r.body.as_slice()), (200, &b"4"[..]));
            tokio::time::sleep(hour).await;
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut c).await.status, 200);
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn read_timeout_bounds_a_slow_body() {
    local()
        .run_until(async {
            let start = Instant::now();
            let mut c =
                serve(megaconn::Server::builder().read_timeout(Some(Duration::from_secs(5))));
            c.write_all(
                b"POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly some",
            )
            .await
            .unwrap();
            let raw = read_all(&mut c).await;
            assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
            assert!(start.elapsed() >= Duration::from_secs(5));
        })
        .await;
}

#[tokio::test(start_paused = true)]
async fn write_timeout_bounds_a_response_that_never_ends() {
    local()
        .run_until(async {
            let start = Instant::now();
            let mut c =
                serve(megaconn::Server::builder().write_timeout(Some(Duration::from_secs(7))));
            c.write_all(b"GET /forever-body HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let raw = read_all(&mut c).await;
            assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
            assert!(
                !raw.ends_with("0\r\n\r\n"),
                "the body must not look complete"
            );
            assert!(start.elapsed() >= Duration::from_secs(7));
        })
        .await;
}

/// The in-memory stream's capacity in the tests below: what the "kernel"
/// takes of a response the client does not read.
const PIPE: usize = 64 * 1024;

/// Serves one connection over a pipe of [`PIPE`] bytes with `builder`'s
/// settings and a service whose response body is `rest` bytes, after
/// `after`; returns the client end and the server's task (ended when the
/// connection closed).
fn serve_late_body(
    builder: megaconn::Builder,
    after: Duration,
    rest: usize,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    use http_body_util::StreamBody;
    let (client, server_end) = tokio::io::duplex(PIPE);
    let app = tower::service_fn(move |_: http::Request<megaconn::Body>| async move {
        let body = futures_util::stream::once(async move {
            tokio::time::sleep(after).await;
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(vec![
                b'x';
                rest
            ])))
        });
        Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(body)))
    });
    let task =
        tokio::task::spawn_local(async move { builder.serve_connection(server_end, app).await });
    (client, task)
}

/// `write_timeout` bounds an HTTP/1.1 response to its last byte: a body
/// that ends at 4 s, when the client (which reads nothing) has left room
/// for all but 32 KiB of it, closes the connection at 5 s, from the head.
/// Before, the exchange ended with those bytes buffered and the connection
/// wrote them under a bound of its own, from then: closed at 9 s (up to
/// twice `write_timeout`).
#[tokio::test(start_paused = true)]
async fn write_timeout_bounds_a_response_to_its_last_byte() {
    local()
        .run_until(async {
            let start = Instant::now();
            let builder = megaconn::Server::builder().write_timeout(Some(Duration::from_secs(5)));
            let (mut c, task) = serve_late_body(builder, Duration::from_secs(4), PIPE + (32 << 10));
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(3600), task)
                .await
                .expect("the connection closed")
                .unwrap();
            let took = start.elapsed();
            assert!(took >= Duration::from_secs(5), "{took:?}");
            assert!(took < Duration::from_secs(6), "{took:?}");
        })
        .await;
}

/// The answers to earlier pipelined requests, written while the next
/// request's head arrives in pieces, are bounded as any response's write
/// (`write_stall_timeout` here): a client that pipelines a second request
/// after one whose answer it never reads, and sends only part of that
/// second head, is closed. Before, that write was bounded only by
/// `read_header_timeout`, and with it off held the connection for good.
#[tokio::test(start_paused = true)]
async fn a_pipelined_answer_is_bounded_while_the_next_head_comes() {
    local()
        .run_until(async {
            let stall = Duration::from_secs(2);
            let builder = megaconn::Server::builder()
                .read_header_timeout(None)
                .write_stall_timeout(Some(stall));
            let (mut c, task) = serve_late_body(builder, Duration::ZERO, PIPE + (32 << 10));
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHo")
                .await
                .unwrap();
            let start = Instant::now();
            tokio::time::timeout(Duration::from_secs(3600), task)
                .await
                .expect("the connection closed")
                .unwrap();
            // Closed at `stall`, then a lingering close over the partial
            // head it read: up to 2 s for the client's end of the stream.
            let took = start.elapsed();
            let linger = Duration::from_secs(2);
            assert!(took >= stall && took <= stall + linger, "{took:?}");
        })
        .await;
}
