//! A file that grows while it is served (session 56's file-serving review):
//! tower-http's `ServeDir` sends the length it found at its open and then
//! reads to the file's end, so a log or recording appended to meanwhile
//! gives a body longer than its `Content-Length`. The declared length goes
//! out whole and the response ends there, the rest dropped unread, as
//! under `axum::serve` (hyper cuts a streamed body at its length) and as
//! nginx sends the size it found; the HTTP/1.1 connection stays open.
//! Before, HTTP/1.1 closed without the chunk that crossed the length (a
//! 100 kB file grown by a line came out as 64 KiB and a close) and HTTP/2
//! reset the stream.
//!
//! The file grows at a point the test chooses: after `ServeDir` answered
//! (opened the file and took its length), before its body's first read.

use std::convert::Infallible;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::common::{self, read_response_buffered, AppServer, SAFETY};

/// The file's first contents, and what each request appends to it.
const FIRST: &[u8] = b"0123456789";
const GROWTH: &[u8] = &[b'+'; 100];

/// `ServeDir` on `dir`, whose `grows.log` gets [`GROWTH`] appended after
/// each answer's head is made and before its body is read.
fn app(dir: PathBuf) -> impl megaconn::HttpService + Clone + Send + 'static {
    tower::service_fn(move |req: Request<megaconn::Body>| {
        let dir = dir.clone();
        async move {
            let answer = ServeDir::new(&dir).oneshot(req).await?;
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("grows.log"))
                .expect("the file opens");
            log.write_all(GROWTH).expect("the file grows");
            Ok::<_, Infallible>(answer)
        }
    })
}

fn growing_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("grows.log"), FIRST).expect("the file is written");
    dir
}

#[tokio::test]
async fn a_file_grown_while_served_over_http1_sends_its_length_and_keeps_the_connection() {
    let dir = growing_file();
    let server = AppServer::one_worker(megaconn::Server::builder(), app(dir.path().into()));
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    // The second request finds the first growth: its length, 110, and
    // then 100 bytes more that it does not send.
    let mut want = FIRST.to_vec();
    for _ in 0..2 {
        s.write_all(b"GET /grows.log HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-length"),
            Some(&*want.len().to_string())
        );
        assert_eq!(answer.body, want, "the length found at the open, whole");
        want.extend_from_slice(GROWTH);
    }
    assert!(buf.is_empty(), "nothing past the declared length: {buf:?}");
    assert!(server.stop().await, "the server stops");
}

#[tokio::test]
async fn a_file_grown_while_served_over_h2_ends_its_stream_at_its_length() {
    let dir = growing_file();
    let server = AppServer::one_worker(megaconn::Server::builder(), app(dir.path().into()));
    let client = common::h2c(server.addr()).await;
    let mut want = FIRST.to_vec();
    for _ in 0..2 {
        let mut c = client.clone().ready().await.unwrap();
        let req = Request::get("http://t/grows.log").body(()).unwrap();
        let (answer, _) = c.send_request(req, true).unwrap();
        let answer = tokio::time::timeout(SAFETY, answer).await.unwrap();
        let answer = answer.expect("a response, not a reset");
        assert_eq!(answer.status(), StatusCode::OK);
        let mut body = answer.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
            let chunk: Bytes = chunk.expect("the stream ends, not reset");
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, want, "the length found at the open, whole");
        want.extend_from_slice(GROWTH);
    }
    assert!(server.stop().await, "the server stops");
}
