//! HTTP/1.1 request bodies a client can make the server hold or read for
//! nothing, over real sockets: a body dripped slower than
//! `min_request_body_rate` (a `408` and a close, counted), an unread body
//! longer than `max_drain_bytes` (its answer, then a close, without the
//! rest read, counted), and the `400` for a bad request target
//! naming the target. Paused-time tests over in-memory streams check what
//! the rate must not cut: a steady upload, and a handler that reads slowly.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    closed_as, limit_hits, read_response, read_response_buffered, read_to_close, TestServer,
};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The rate the drip tests hold bodies to, in bytes a second: far above
/// [`common::TRICKLE`]'s 20 B/s, so the drip is cut within a second.
const RATE: u32 = 1000;

/// Their grace: a client's first wait may last this long.
const GRACE: Duration = Duration::from_millis(200);

/// A server whose HTTP/1.1 bodies are held to [`RATE`] after [`GRACE`]
/// (`idle_timeout` at its default, 60 s, far past the test's bound: only
/// the rate can cut).
async fn rate_bound() -> TestServer {
    let builder = megaconn::Server::builder()
        .workers(1)
        .min_request_body_rate(Some(RATE))
        .min_request_body_rate_grace(GRACE);
    TestServer::start(builder).await
}

/// A client that sends its body a byte every 50 ms, while the handler
/// reads it, is answered `408` and closed once it has spent its grace, and
/// counted; before, only `idle_timeout` bounded it, restarted by each
/// byte: this one was served in full (a `200` after 5 s), and one sending
/// a byte every 20 s held its connection for good.
#[tokio::test]
async fn a_body_dripped_slower_than_the_rate_gets_408_and_a_close() {
    let server = rate_bound().await;
    let mut s = server
        .connect_sending(b"POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .await;
    let body = [b'x'; 100];
    let (mut read, mut write) = s.split();
    let raw = common::trickle_until(&mut write, &body, async {
        let mut raw = Vec::new();
        let _ = read.read_to_end(&mut raw).await;
        raw
    })
    .await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
    assert!(raw.contains("min_request_body_rate"), "{raw}");
    assert!(raw.contains("connection: close"), "{raw}");
    drop(s);
    server
        .wait_stats("the close", |s| closed_as(s, "read_timeout") == 1)
        .await;
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "min_request_body_rate"), 1);
    assert_eq!(stats.timeouts, 1);
    server.stop().await;
}

/// A 10 MiB upload whose handler answers without reading it: the server
/// closes after the answer, with the client having sent only 64 KiB (the
/// rest is never needed), counted as `max_drain_bytes`. Before, the server
/// waited to read the 10 MiB away (256 KiB of it, then closed): this
/// client, which sends no more, held the connection until a timeout. The
/// answer's head is the handler's, as hyper's under `axum::serve`.
#[tokio::test]
async fn an_unread_body_longer_than_the_drain_bound_is_not_read() {
    let server = TestServer::start(megaconn::Server::builder().workers(1)).await;
    let total = 10 << 20;
    let mut request =
        format!("POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n")
            .into_bytes();
    request.extend_from_slice(&[b'x'; 64 << 10]);
    let mut s = server.connect_sending(&request).await;
    let mut buf = Vec::new();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ignored");
    assert_eq!(r.header("connection"), None, "{:?}", r.headers);
    // The server ends the connection with 10 MiB - 64 KiB still unsent.
    let rest = read_to_close(&mut s).await;
    assert!(buf.is_empty() && rest.is_empty(), "{buf:?} {rest:?}");
    drop(s);
    server
        .wait_stats("the close", |s| closed_as(s, "unread_body") == 1)
        .await;
    assert_eq!(limit_hits(&server.handle.stats(), "max_drain_bytes"), 1);
    server.stop().await;
}

/// A chunked body, whose length nobody knows ahead, left unread: drained
/// up to `max_drain_bytes` (256 KiB), then the connection closes after the
/// answer, counted (it was not).
#[tokio::test]
async fn an_unread_chunked_body_is_drained_up_to_the_bound_then_closed() {
    let server = TestServer::start(megaconn::Server::builder().workers(1)).await;
    let sent = 300 << 10;
    let mut request = format!(
        "POST /ignore-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        10 << 20
    )
    .into_bytes();
    request.extend_from_slice(&vec![b'x'; sent]);
    let mut s = server.connect_sending(&request).await;
    let mut buf = Vec::new();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert!(read_to_close(&mut s).await.is_empty());
    drop(s);
    server
        .wait_stats("the close", |s| closed_as(s, "unread_body") == 1)
        .await;
    assert_eq!(limit_hits(&server.handle.stats(), "max_drain_bytes"), 1);
    server.stop().await;
}

/// A request target with a byte no target may hold is answered `400`
/// naming the target, and a method with one naming the method: httparse
/// says `Token` for both, and both were "invalid method or token".
#[tokio::test]
async fn a_bad_request_target_is_named_in_the_400() {
    let server = TestServer::default().await;
    for (request, reason) in [
        (
            &b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            "invalid request target",
        ),
        (
            b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n",
            "invalid request target",
        ),
        (b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n", "invalid method"),
    ] {
        let mut s = server.connect_sending(request).await;
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 400);
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(body, format!("Bad Request: {reason}\n"), "{request:?}");
    }
    server.stop().await;
}

/// Serves one connection of `app` with bodies held to `rate` bytes a
/// second (grace 1 s) and `idle_timeout` off, so that only the rate can
/// cut; returns the client end.
fn serve_rated<S: megaconn::HttpService + 'static>(app: S, rate: u32) -> DuplexStream {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let builder = megaconn::Server::builder()
        .idle_timeout(None)
        .min_request_body_rate(Some(rate))
        .min_request_body_rate_grace(Duration::from_secs(1));
    tokio::task::spawn_local(async move { builder.serve_connection(server_end, app).await });
    client
}

/// An app that answers `200` with the body's length, reading it a chunk
/// at a time with `pause` after each (a handler that processes as it
/// reads), or the read's error.
fn slow_reader(pause: Duration) -> impl megaconn::HttpService + Clone + 'static {
    tower::service_fn(move |req: http::Request<megaconn::Body>| async move {
        let mut body = req.into_body();
        let mut n = 0;
        let said = loop {
            match body.frame().await {
                None => break n.to_string(),
                Some(Ok(frame)) => {
                    n += frame.data_ref().map_or(0, |d| d.len());
                    tokio::time::sleep(pause).await;
                }
                Some(Err(e)) => break format!("error: {e}"),
            }
        };
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(said))))
    })
}

/// A client that keeps to the rate, in bursts with pauses longer than the
/// grace, is never cut: 20 bytes every 2 s is 10 B/s against 5 B/s, for a
/// minute (paused time: the clock moves only when everything waits).
#[tokio::test(start_paused = true)]
async fn a_bursty_upload_above_the_rate_is_not_cut() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let mut c = serve_rated(slow_reader(Duration::ZERO), 5);
            let rounds = 30;
            c.write_all(
                format!(
                    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    rounds * 20
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let cuts: Vec<usize> = (1..rounds).map(|i| i * 20).collect();
            common::write_in_pieces(&mut c, &[b'x'; 600], &cuts, Duration::from_secs(2)).await;
            let r = read_response(&mut c).await;
            assert_eq!(r.body, b"600", "{:?}", String::from_utf8_lossy(&r.body));
        })
        .await;
}

/// A handler that pauses 10 s after each chunk (ten grace periods) costs
/// its client nothing: once the client has sent its first bytes (after
/// half a second, a wait of the handler's), it stays ahead of the
/// handler, 100 bytes every 3 s, and is not waited on again. At 33 B/s
/// against 1,000 B/s over ~40 s, it would have been cut had the handler's
/// pauses counted.
#[tokio::test(start_paused = true)]
async fn a_handler_that_reads_slowly_does_not_cut_its_client() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let mut c = serve_rated(slow_reader(Duration::from_secs(10)), 1000);
            c.write_all(
                b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 600\r\n\r\n",
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = tokio::time::Instant::now();
            let cuts: Vec<usize> = (1..6).map(|i| i * 100).collect();
            common::write_in_pieces(&mut c, &[b'x'; 600], &cuts, Duration::from_secs(3)).await;
            // (Not `read_response`: its bound, 20 s, is shorter than the
            // handler's pauses.)
            let mut raw = Vec::new();
            tokio::time::timeout(Duration::from_secs(600), c.read_to_end(&mut raw))
                .await
                .expect("answered and closed")
                .unwrap();
            let raw = String::from_utf8_lossy(&raw);
            assert!(
                raw.starts_with("HTTP/1.1 200 ") && raw.ends_with("\r\n\r\n600"),
                "{raw}"
            );
            assert!(
                started.elapsed() > Duration::from_secs(30),
                "the handler paused"
            );
        })
        .await;
}

/// The same bursts below the rate (20 bytes every 5 s: 4 B/s against
/// 5 B/s) are cut once the grace and what they earned are spent: the
/// handler's read fails, `408`, within the upload's first minute.
#[tokio::test(start_paused = true)]
async fn a_bursty_upload_below_the_rate_is_cut() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let mut c = serve_rated(slow_reader(Duration::ZERO), 5);
            c.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n")
                .await
                .unwrap();
            let started = tokio::time::Instant::now();
            let mut raw = Vec::new();
            let (mut read, mut write) = tokio::io::split(c);
            let sending = async {
                for _ in 0..30 {
                    if write.write_all(&[b'x'; 20]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            };
            tokio::select! {
                _ = sending => panic!("the whole body went through"),
                _ = read.read_to_end(&mut raw) => {}
            }
            let raw = String::from_utf8_lossy(&raw);
            assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
            // 1 s of grace plus 4 s (20 B) a burst, spent 5 s a burst.
            assert!(started.elapsed() < Duration::from_secs(60));
        })
        .await;
}
