//! `read_timeout` bounds the arrival of an HTTP/1.1 request body, not its
//! handler: a body that has all come, read or not, is not cut when the
//! deadline passes (review52, defect 1: a handler that waited past it
//! before reading a body sent with its head got its client a `408`; Go's
//! `ReadTimeout` answers `200` there), and one that has not all come is
//! (`408`, as before). Over real sockets, with a handler that reads its
//! body only when the test tells it to, after the deadline has passed.
//!
//! How a test knows the deadline passed without a sleep: a second
//! connection, whose head the server reads after the first's, sends only
//! part of its body; its `408` comes from the same worker's timer at a
//! deadline no earlier than the first's, so by then the first's has passed.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{read_response, read_to_close, RawResponse};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// Short, so the tests are quick: the signal above, not this, orders them.
const READ_TIMEOUT: Duration = Duration::from_millis(300);

/// A server with [`READ_TIMEOUT`] whose handler tells `started` its
/// request's head came, waits for `release`, then reads the whole body and
/// answers `200` with it (`400` and the error if the read fails).
fn start(started: mpsc::UnboundedSender<()>, release: Arc<Notify>) -> common::AppServer {
    let app = tower::service_fn(move |req: http::Request<megaconn::Body>| {
        let (started, release) = (started.clone(), release.clone());
        async move {
            let _ = started.send(());
            release.notified().await;
            let (status, body) = match req.into_body().collect().await {
                Ok(body) => (http::StatusCode::OK, body.to_bytes()),
                Err(e) => (http::StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
            };
            let mut response = http::Response::new(Full::new(body));
            *response.status_mut() = status;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let builder = megaconn::Server::builder().read_timeout(Some(READ_TIMEOUT));
    common::AppServer::one_worker(builder, app)
}

/// Sends `request` (whole, in one write) to a fresh server, lets its
/// handler read the body only once `read_timeout` has passed, and returns
/// the answer. On the way, checks the opposite: a body not all sent in
/// time, whose handler waits in the same way, is cut with a `408`.
async fn answered_after_read_timeout(request: &[u8]) -> RawResponse {
    let (started, mut heads) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let server = start(started, release.clone());
    let mut client = TcpStream::connect(server.addr()).await.unwrap();
    client.write_all(request).await.unwrap();
    common::next(&mut heads, "the handler's start").await;
    // Two of five bytes, and no more: its deadline runs from a later head.
    let mut late = TcpStream::connect(server.addr()).await.unwrap();
    late.write_all(b"POST /late HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhe")
        .await
        .unwrap();
    let cut = read_response(&mut late).await;
    assert_eq!(cut.status, 408, "{cut:?}");
    assert!(
        String::from_utf8_lossy(&cut.body).contains("read_timeout"),
        "{cut:?}"
    );
    release.notify_one();
    let answer = read_response(&mut client).await;
    assert!(server.stop().await, "the server stops");
    answer
}

/// The body came in the head's segment and sits in the read buffer while
/// its handler waits past `read_timeout`: served. (It was a `408` at the
/// deadline, the handler dropped.)
#[tokio::test]
async fn a_body_sent_with_its_head_outlives_read_timeout_unread() {
    let r = answered_after_read_timeout(
        b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (200, "hello"),
        "a body that had all come was cut"
    );
}

/// The same with a chunked body, its last chunk and trailers included.
#[tokio::test]
async fn a_whole_chunked_body_outlives_read_timeout_unread() {
    let r = answered_after_read_timeout(
        b"POST /read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nx-sum: 5\r\n\r\n",
    )
    .await;
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).as_ref()),
        (200, "hello"),
        "a chunked body that had all come was cut"
    );
}

/// A body of 40,000 bytes sent with its head, more than the server's first
/// read of the head takes: the rest waits in the socket, unread, and has
/// come all the same.
#[tokio::test]
async fn a_body_waiting_in_the_socket_outlives_read_timeout_unread() {
    let body = vec![b'x'; 40_000];
    let mut request = format!(
        "POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let r = answered_after_read_timeout(&request).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.body == body, "the body, whole ({} bytes)", r.body.len());
}

/// A body the handler waits for and that stops short is still cut at
/// `read_timeout`, with the deadline's `408`, though the handler reads it
/// late as above.
#[tokio::test]
async fn a_body_still_on_its_way_is_cut_at_read_timeout() {
    let (started, mut heads) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let server = start(started, release.clone());
    let mut client = TcpStream::connect(server.addr()).await.unwrap();
    client
        .write_all(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    common::next(&mut heads, "the handler's start").await;
    let cut = String::from_utf8_lossy(&read_to_close(&mut client).await).into_owned();
    assert!(cut.starts_with("HTTP/1.1 408 "), "{cut}");
    assert!(cut.contains("not received within read_timeout"), "{cut}");
    common::wait_stats(&server.handle, "the close", |s| {
        common::closed_as(s, "read_timeout") == 1
    })
    .await;
    release.notify_one();
    assert!(server.stop().await, "the server stops");
}
