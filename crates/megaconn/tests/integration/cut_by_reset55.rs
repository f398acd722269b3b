//! A client that leaves by a reset rather than a FIN is counted as one
//! that hangs up: a response body it cuts in `responses_cut`, a handler
//! it cancels in `cancelled`. A client that closes its socket with bytes
//! of ours still unread (an aborted download, a reverse proxy's client
//! leaving mid-body) makes its kernel send a reset, and the server then
//! meets `ECONNRESET` or `EPIPE` rather than an EOF. Before session 55's
//! review only the EOF was counted: a 1 GiB download aborted through a
//! proxy counted no cut (closed as `io_error`, `responses_cut_total` 0).
//!
//! The tests reset with `SO_LINGER` 0 (`common::reset`), which sends the
//! reset whatever the client's buffers hold: the same error the server
//! sees after an aborted download, without depending on how much of ours
//! sat unread.

use crate::common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::unbounded_channel;

use common::{wait_stats, AppServer, SAFETY};

/// An endless body whose chunks are always ready: the server writes until
/// the socket takes no more, as for a large download.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &[b'x'; 16 * 1024],
        )))))
    }
}

/// HTTP/1.1: a download the client resets mid-body counts one cut, no
/// cancelled handler. Without the fix: "timed out waiting for the reset
/// download to be counted as cut" (`responses_cut: 0`).
#[tokio::test]
async fn a_download_reset_mid_body_is_counted_as_cut() {
    let app = tower::service_fn(|_req: Request<megaconn::Body>| async {
        Ok::<_, Infallible>(Response::new(Endless))
    });
    let server = AppServer::one_worker(megaconn::Server::builder(), app);

    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Some of the body has come: the response streams.
    let mut got = 0;
    tokio::time::timeout(SAFETY, async {
        while got < 64 * 1024 {
            let mut part = [0u8; 16 * 1024];
            let n = s.read(&mut part).await.unwrap();
            assert!(n > 0, "closed before the body streamed");
            got += n;
        }
    })
    .await
    .expect("the body streams");
    common::reset(s);

    wait_stats(
        &server.handle,
        "the reset download to be counted as cut",
        |s| s.responses_cut == 1,
    )
    .await;
    let stats = server.handle.stats();
    assert_eq!(stats.cancelled, 0, "answered: not a cancelled handler");
    if cfg!(feature = "metrics") {
        let text = server.handle.render_metrics();
        assert!(
            text.lines()
                .any(|l| l == "megaconn_responses_cut_total{by=\"client\"} 1"),
            "the series counts it"
        );
    }
    assert!(server.stop().await, "the server stops");
}

/// HTTP/1.1: a handler still working (a proxy waiting for its upstream's
/// head) whose client resets is dropped and counted in `cancelled`.
/// Without the fix: "timed out waiting for the reset client's handler to
/// be counted as cancelled" (`cancelled: 0`).
#[tokio::test]
async fn a_handler_whose_client_resets_is_counted_as_cancelled() {
    let (started_tx, mut started) = unbounded_channel();
    let (dropped_tx, mut dropped) = unbounded_channel::<()>();
    let app = tower::service_fn(move |_req: Request<megaconn::Body>| {
        let started_tx = started_tx.clone();
        let dropped_tx = dropped_tx.clone();
        async move {
            // Says when this future is dropped: the handler cancelled.
            struct OnDrop(tokio::sync::mpsc::UnboundedSender<()>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            let _guard = OnDrop(dropped_tx);
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let server = AppServer::one_worker(megaconn::Server::builder(), app);

    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    common::next(&mut started, "the handler starts").await;
    common::reset(s);

    common::next(&mut dropped, "the handler is dropped").await;
    wait_stats(
        &server.handle,
        "the reset client's handler to be counted as cancelled",
        |s| s.cancelled == 1,
    )
    .await;
    assert_eq!(server.handle.stats().responses_cut, 0, "no answer was cut");
    assert!(server.stop().await, "the server stops");
}
