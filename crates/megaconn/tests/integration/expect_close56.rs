//! `Expect: 100-continue` answered before the body was read to its end:
//! the answer's head says `connection: close`, and the connection closes
//! after it (Go's rule, `chunkWriter.writeHeader` in `net/http`; RFC 9110
//! §10.1.1, RFC 9112 §9.6). A request whose body the handler read whole
//! before it answered keeps its connection, as before.
//!
//! Found by session 55's proxy review: an upload of 10 MB sent with
//! `Expect: 100-continue` through a reverse proxy whose upstream answered
//! without reading it. The proxy's upstream client polled the body at
//! once, so `100 Continue` went out; the answer's head then said
//! keep-alive, and the connection closed after it (the body, dropped
//! unread, was past what a drain reads), a client sending its next
//! request on it met a reset. Here a handler that reads one frame and
//! answers `413` does what that proxy did.

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::post;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common;

use common::{read_response_buffered, read_to_close, AppServer};

/// The body the requests declare: past what a drain reads
/// (`max_drain_bytes`), as an upload is.
const DECLARED: usize = 1_000_000;

/// What of it the client sends after `100 Continue`, before the answer.
const SENT: usize = 16 * 1024;

/// `/first-then-413` reads one frame of the body and refuses the rest (a
/// proxy whose upstream answered early); `/401` answers without a look at
/// it; `/len` reads it whole, then answers.
fn app() -> axum::Router {
    axum::Router::new()
        .route(
            "/first-then-413",
            post(|req: Request| async move {
                let mut body = req.into_body();
                let _ = body.frame().await;
                (StatusCode::PAYLOAD_TOO_LARGE, "too large")
            }),
        )
        .route(
            "/401",
            post(|| async { (StatusCode::UNAUTHORIZED, "who are you") }),
        )
        .route(
            "/len",
            post(|body: Body| async move {
                let n = axum::body::to_bytes(body, usize::MAX).await.unwrap().len();
                format!("{n} bytes")
            }),
        )
}

/// A request head for `path` with `Expect: 100-continue` and a body of
/// `length` bytes.
fn expecting(path: &str, length: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    )
    .into_bytes()
}

/// `100 Continue` went out (the handler asked for the body), part of the
/// body came, and the handler answered `413` without the rest: the head
/// says `connection: close`, and nothing comes after the answer but the
/// close. (It said keep-alive, and the connection closed all the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_bodys_end_after_100_continue_says_close() {
    let server = AppServer::one_worker(megaconn::Server::builder(), app());
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(&expecting("/first-then-413", DECLARED))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let interim = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(interim.status, 100);
    s.write_all(&vec![b'u'; SENT]).await.unwrap();
    let answer = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "the answer to an Expect: 100-continue request whose body was not read to its end \
         does not say it closes: {:?}",
        answer.headers
    );
    let after = read_to_close(&mut s).await;
    assert!(buf.is_empty() && after.is_empty(), "{buf:?} {after:?}");
    assert!(server.stop().await);
}

/// No `100 Continue` (the handler never asked for the body): the answer
/// straight away, saying `connection: close`, then the close. (So it was
/// before: the client holds the body back, and nothing of it is read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_reading_says_close_and_closes() {
    let server = AppServer::one_worker(megaconn::Server::builder(), app());
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(&expecting("/401", DECLARED)).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(answer.status, 401, "no 100 Continue first");
    assert_eq!(answer.header("connection"), Some("close"));
    let after = read_to_close(&mut s).await;
    assert!(buf.is_empty() && after.is_empty(), "{buf:?} {after:?}");
    assert!(server.stop().await);
}

/// The body read whole before the answer: `100 Continue`, the answer
/// without `connection: close`, and the connection serves the next
/// request, twice (no change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_read_whole_keeps_the_connection() {
    let server = AppServer::one_worker(megaconn::Server::builder(), app());
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    for round in 0..2 {
        s.write_all(&expecting("/len", SENT)).await.unwrap();
        let interim = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(interim.status, 100, "round {round}");
        s.write_all(&vec![b'u'; SENT]).await.unwrap();
        let answer = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, format!("{SENT} bytes").as_bytes()),
            "round {round}"
        );
        assert_eq!(answer.header("connection"), None, "round {round}");
    }
    assert!(server.stop().await);
}
