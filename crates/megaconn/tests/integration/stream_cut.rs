//! A streaming response the client cuts mid-body is counted in
//! `megaconn_responses_cut_total{by="client"}` (`ServerStats::responses_cut`),
//! over HTTP/1.1 (the client hangs up) and HTTP/2 (the client resets the
//! stream), and a response that completed is not. Before session 51 only a
//! handler cancelled before its answer was counted (`handler_cancelled`):
//! an abandoned SSE or token stream looked like a whole 2xx.
//!
//! The handler's body sends one chunk per signal of the client's (after it
//! read the one before), never on a timer, so the client holds the body
//! open at exactly three chunks when it leaves.

use crate::common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use common::{wait_stats, AppServer, SAFETY};

/// One chunk of the endless stream.
const CHUNK: &[u8] = b"chunk\n";

/// Chunks the client reads before it leaves.
const READ: usize = 3;

/// A response body: either `done` once (a response that completes), or
/// one [`CHUNK`] per signal on `signals`, without end while they may come.
struct Chunks {
    whole: Option<Bytes>,
    signals: Option<UnboundedReceiver<()>>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(whole) = self.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(whole))));
        }
        let Some(signals) = self.signals.as_mut() else {
            return Poll::Ready(None);
        };
        match signals.poll_recv(cx) {
            Poll::Ready(Some(())) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(CHUNK))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // `done` is sent with its length, as a `Full` is; the stream chunked.
        match (&self.whole, &self.signals) {
            (Some(whole), None) => http_body::SizeHint::with_exact(whole.len() as u64),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// A server on one worker answering `/done` whole and `/stream` with the
/// endless body, and the sender of that body's signals (one `/stream`).
fn serve() -> (AppServer, UnboundedSender<()>) {
    let (tx, rx) = unbounded_channel();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = tower::service_fn(move |req: Request<megaconn::Body>| {
        let rx = rx.clone();
        async move {
            let body = match req.uri().path() {
                "/stream" => Chunks {
                    whole: None,
                    signals: rx.lock().unwrap().take(),
                },
                _ => Chunks {
                    whole: Some(Bytes::from_static(b"done")),
                    signals: None,
                },
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let server = AppServer::one_worker(megaconn::Server::builder(), app);
    (server, tx)
}

/// Occurrences of [`CHUNK`] in `buf`.
fn chunks_in(buf: &[u8]) -> usize {
    buf.windows(CHUNK.len()).filter(|w| *w == CHUNK).count()
}

/// Asserts one cut counted, in the stats and in the scrape, and no handler
/// cancelled (it had answered): the whole response counted nothing.
fn assert_cut_once(server: &AppServer) {
    let stats = server.handle.stats();
    assert_eq!(stats.responses_cut, 1, "{stats:?}");
    assert_eq!(stats.cancelled, 0, "answered: not a cancelled handler");
    if cfg!(feature = "metrics") {
        let text = server.handle.render_metrics();
        let series = text
            .lines()
            .find(|l| l.starts_with("megaconn_responses_cut_total{by=\"client\"}"));
        assert_eq!(
            series,
            Some("megaconn_responses_cut_total{by=\"client\"} 1")
        );
    }
}

/// HTTP/1.1: a whole response, then its connection closed (an ordinary
/// keep-alive close), counts nothing; a chunked stream the client hangs
/// up on after three chunks counts one cut. Without the fix: "timed out
/// waiting for the cut stream to be counted".
#[tokio::test]
async fn an_http1_stream_the_client_hangs_up_on_is_counted_as_cut() {
    let (server, signal) = serve();

    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /done HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(SAFETY, async {
        while !buf.ends_with(b"\r\n\r\ndone") {
            let mut part = [0u8; 1024];
            let n = s.read(&mut part).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&part[..n]);
        }
    })
    .await
    .expect("the whole response comes");
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    drop(s);
    wait_stats(
        &server.handle,
        "the whole response's connection closed",
        |s| s.closed == 1,
    )
    .await;
    assert_eq!(server.handle.stats().responses_cut, 0);

    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    signal.send(()).unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(SAFETY, async {
        let mut seen = 0;
        while seen < READ {
            let mut part = [0u8; 1024];
            let n = s.read(&mut part).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&part[..n]);
            let now = chunks_in(&buf);
            for _ in seen..now.min(READ - 1) {
                // One more chunk asked for each read, up to the last one.
                signal.send(()).unwrap();
            }
            seen = now;
        }
    })
    .await
    .expect("three chunks come");
    assert!(buf.starts_with(b"HTTP/1.1 200"));
    assert_eq!(chunks_in(&buf), READ);
    drop(s);
    wait_stats(&server.handle, "the cut stream to be counted", |s| {
        s.responses_cut == 1
    })
    .await;
    wait_stats(&server.handle, "both connections closed", |s| s.closed == 2).await;
    assert_cut_once(&server);
    drop(signal);
    assert!(server.stop().await, "the server stops");
}

/// HTTP/2: a whole response on the connection counts nothing; a stream
/// the client resets (`CANCEL`) after three DATA frames counts one cut.
/// Without the fix: "timed out waiting for the reset stream to be
/// counted".
#[tokio::test]
async fn an_http2_stream_the_client_resets_is_counted_as_cut() {
    let (server, signal) = serve();
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();

    let done = Request::get("http://t/done").body(()).unwrap();
    let (response, _) = client.send_request(done, true).unwrap();
    let body = tokio::time::timeout(SAFETY, async {
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        got
    })
    .await
    .expect("the whole response comes");
    assert_eq!(body, b"done");

    let mut client = client.ready().await.unwrap();
    let stream = Request::get("http://t/stream").body(()).unwrap();
    let (response, mut send) = client.send_request(stream, true).unwrap();
    signal.send(()).unwrap();
    let _body = tokio::time::timeout(SAFETY, async {
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut got = Vec::new();
        let mut seen = 0;
        while seen < READ {
            let data = body.data().await.expect("the body goes on").unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
            let now = chunks_in(&got);
            for _ in seen..now.min(READ - 1) {
                signal.send(()).unwrap();
            }
            seen = now;
        }
        assert_eq!(seen, READ);
        send.send_reset(h2::Reason::CANCEL);
        // Kept until the reset is counted: dropping it could end the
        // stream another way.
        body
    })
    .await
    .expect("three chunks come");
    wait_stats(&server.handle, "the reset stream to be counted", |s| {
        s.responses_cut == 1
    })
    .await;
    assert_cut_once(&server);
    drop(client);
    conn.abort();
    drop(signal);
    assert!(server.stop().await, "the server stops");
}
