//! A response body that says, after a data frame, that it has no more
//! (`http_body::Body::is_end_stream`) is finished then, not polled once
//! more for its end (session 48, `bench/CPU-PER-REQUEST.md`): each such
//! body is polled once, and a panic in its `is_end_stream` is the body's,
//! as one in its poll (the connection closes as `Panic`, counted).

use crate::common;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;

/// One data frame, then the end; counts its polls. Its `is_end_stream`
/// panics once the data is out when `panics` is set.
struct OneFrame {
    data: Option<Bytes>,
    polls: Arc<AtomicUsize>,
    panics: bool,
}

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.polls.fetch_add(1, SeqCst);
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        assert!(
            !(self.panics && self.data.is_none()),
            "a bug in a response body's is_end_stream"
        );
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Serves `OneFrame` bodies of `hello`; `/panic`'s `is_end_stream` panics.
fn start(polls: &Arc<AtomicUsize>) -> common::AppServer {
    let polls = polls.clone();
    let app = tower::service_fn(move |req: http::Request<megaconn::Body>| {
        let body = OneFrame {
            data: Some(Bytes::from_static(b"hello")),
            polls: polls.clone(),
            panics: req.uri().path() == "/panic",
        };
        async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
    });
    let builder = megaconn::Server::builder()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap());
    common::AppServer::start(builder, app)
}

/// Three keep-alive requests, one at a time: each body is polled once (it
/// was polled twice, the second time for its `None`), and each answer is
/// whole.
#[tokio::test]
async fn a_body_that_says_it_ended_is_polled_once() {
    let polls = Arc::new(AtomicUsize::new(0));
    let server = start(&polls);
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    for round in 1..=3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let response = common::read_response(&mut s).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello");
        assert_eq!(response.header("content-length"), Some("5"));
        assert_eq!(
            polls.load(SeqCst),
            round,
            "polls of the bodies after {round} answers"
        );
    }
    assert!(server.stop().await, "the server stops");
}

/// A panic in a body's `is_end_stream` after its data: the answer so far
/// goes out, the connection closes, the panic is counted, and the worker
/// serves the next connection.
#[tokio::test]
async fn a_panic_in_is_end_stream_closes_the_connection_as_the_bodys() {
    let polls = Arc::new(AtomicUsize::new(0));
    let server = start(&polls);
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    s.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let sent = common::read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text:?}");
    common::wait_stats(&server.handle, "the panic counted", |s| s.panics == 1).await;
    let mut next = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    next.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(common::read_response(&mut next).await.body, b"hello");
    assert!(server.stop().await, "the server stops");
}
