//! HTTP/1.1 request bodies as a slow or odd client sends them: the bound of
//! a handler's wait for body bytes (`idle_timeout`, with `read_timeout`
//! off) and chunked framing, on paused tokio time over in-memory streams
//! (the clock moves only when everything waits, so the margins below hold
//! on any machine).

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{read_response, test_app};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

/// The bound of a handler's wait for body bytes in these tests.
const BOUND: Duration = Duration::from_secs(10);

/// Serves one connection of `app`, with handlers' waits for body bytes
/// bounded by [`BOUND`]; returns the client end.
fn serve<S: megaconn::HttpService + 'static>(app: S) -> DuplexStream {
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    // (No rate: these bodies are slower than any, on purpose; the rate's
    // tests are in `h1_body_limits.rs`.)
    let builder = megaconn::Server::builder()
        .idle_timeout(Some(BOUND))
        .min_request_body_rate(None);
    tokio::task::spawn_local(async move { builder.serve_connection(server_end, app).await });
    client
}

/// Serves one connection of an app that answers, with `200`, what `read`
/// makes of the request body; returns the client end.
fn serve_reader<F, R>(read: F) -> DuplexStream
where
    F: Fn(megaconn::Body) -> R + 'static,
    R: std::future::Future<Output = String> + 'static,
{
    serve(tower::service_fn(
        move |req: http::Request<megaconn::Body>| {
            let said = read(req.into_body());
            async move {
                let said = Full::new(Bytes::from(said.await));
                Ok::<_, std::convert::Infallible>(http::Response::new(said))
            }
        },
    ))
}

/// A chunked request to `path` whose body is `hello` in one chunk, behind a
/// size line of 42 bytes (a chunk extension) and before 42 bytes of
/// trailers; and where the body begins in it.
fn slow_framed(path: &str) -> (Vec<u8>, usize) {
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let body = format!(
        "5;{}\r\nhello\r\n0\r\nX-Slow: {}\r\n\r\n",
        "x".repeat(40),
        "y".repeat(32)
    );
    ((head.clone() + &body).into_bytes(), head.len())
}

/// Writes `request`'s body (from `body_at`) a byte every tenth of
/// [`BOUND`]: its size line and its trailers each take four bounds with
/// no byte of data.
async fn write_slowly(c: &mut DuplexStream, request: &[u8], body_at: usize) {
    let cuts: Vec<usize> = (body_at..request.len()).collect();
    common::write_in_pieces(c, request, &cuts, BOUND / 10).await;
}

/// Any byte of a chunked body restarts the bound, not only its data: a
/// client whose size line (a long extension) and trailers come a byte
/// every tenth of the bound, each over four bounds, is neither cut while
/// the handler reads them nor while the connection drains a body the
/// handler left unread; the connection serves the next request. Before,
/// only data counted, and it was cut one to two bounds into the size line.
#[tokio::test(start_paused = true)]
async fn a_chunked_body_whose_framing_comes_slowly_is_not_cut() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let (app, _probe) = test_app();
            let mut c = serve(app);
            let (request, body_at) = slow_framed("/collect");
            write_slowly(&mut c, &request, body_at).await;
            let r = read_response(&mut c).await;
            assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.body, b"5");
            // Unread, the body is drained under the same bound.
            let (request, body_at) = slow_framed("/ignore-body");
            write_slowly(&mut c, &request, body_at).await;
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut c).await.status, 200);
            let r = read_response(&mut c).await;
            assert_eq!(r.body, b"Hello, World!", "the next request is served");
        })
        .await;
}

/// A body read in a task of its own (the handler spawns it) is cut when
/// the bound passes after its last byte, as one read in the handler's
/// task is. Before, the connection looked for the reader's answer to the
/// bound passing (does it still wait?) before the reader's task had run,
/// took its wait for given up, and started the bound over, again at each
/// pass: never cut.
#[tokio::test(start_paused = true)]
async fn a_body_read_in_a_task_of_its_own_is_cut_one_bound_after_its_last_byte() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let mut c = serve_reader(|body| async move {
                match tokio::spawn(body.collect()).await.unwrap() {
                    Ok(body) => body.to_bytes().len().to_string(),
                    Err(e) => e.to_string(),
                }
            });
            c.write_all(
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            )
            .await
            .unwrap();
            let start = Instant::now();
            let mut raw = Vec::new();
            tokio::time::timeout(10 * BOUND, c.read_to_end(&mut raw))
                .await
                .expect("the connection closed")
                .unwrap();
            let took = start.elapsed();
            let raw = String::from_utf8_lossy(&raw);
            assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
            assert!(took >= BOUND && took < 2 * BOUND, "cut after {took:?}");
        })
        .await;
}

/// Tiny chunks that come together reach the handler as one piece of data
/// (up to 64 KiB): a handler that collects the body keeps each piece, and
/// a body of one-byte chunks, one piece each, cost ~64 bytes of memory per
/// byte of data (1 GiB for the 16 MiB `max_body_bytes` allows).
#[tokio::test(start_paused = true)]
async fn tiny_chunks_reach_the_handler_in_few_pieces() {
    tokio::task::LocalSet::new()
        .run_until(async {
            let mut c = serve_reader(|mut body| async move {
                let (mut pieces, mut bytes) = (0, 0);
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        pieces += 1;
                        bytes += data.len();
                    }
                }
                format!("{bytes} in {pieces}")
            });
            let chunks = "1\r\nx\r\n".repeat(10_000);
            let request = format!(
                "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n"
            );
            c.write_all(request.as_bytes()).await.unwrap();
            let r = read_response(&mut c).await;
            let said = String::from_utf8(r.body).unwrap();
            let (bytes, pieces) = said.split_once(" in ").unwrap();
            assert_eq!(bytes, "10000");
            // One per read of the socket at most (60 KB, read 4 KiB and more at a time).
            let pieces: usize = pieces.parse().unwrap();
            assert!(pieces <= 100, "{pieces} pieces");
        })
        .await;
}
