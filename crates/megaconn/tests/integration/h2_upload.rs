//! HTTP/2 uploads and the receive windows (session 51): a stream whose
//! handler keeps up with its upload has its window grown past the 64 KiB
//! it starts with (half of `http2_max_unread_body_bytes`), the
//! connection's following, so that an upload over a long path is not held
//! to 64 KiB a round trip (an 8 MiB upload over 50 ms took 6.8 s,
//! `bench/H2-UPLOAD.md`); and `min_request_body_rate` does not charge a
//! body's wait while the connection's window is full of other streams'
//! bodies that their handlers hold unread (the client could not send).

use crate::common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use megaconn::{Body, Builder};

use super::h2::SAFETY;
use super::h2_budget::upload;

/// The window a stream starts with (half the default budget).
const STREAM_WINDOW: usize = 64 * 1024;

/// `/read-then-hold` reads this much of its body, then holds the rest
/// unread.
const HOLD_AT: usize = 1024 * 1024;

/// Routes: `/read-then-hold` reads its body as it comes, counting in
/// `read`, until [`HOLD_AT`], then holds it unread and never answers ·
/// `/hold` leaves its body unread for 30 s, then reads it and answers its
/// length · `/count` reads its body and answers its length, or the read's
/// error.
async fn app(req: Request<Body>, read: Arc<AtomicUsize>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut body = req.into_body();
    if path == "/hold" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let mut n = 0;
    let said = loop {
        if path == "/read-then-hold" && n >= HOLD_AT {
            std::future::pending::<()>().await;
        }
        match body.frame().await {
            None => break n.to_string(),
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                n += len;
                read.fetch_add(len, Relaxed);
            }
            Some(Err(e)) => break format!("error: {e}"),
        }
    };
    Response::new(Full::new(Bytes::from(said)))
}

/// The service of [`app`], counting what its handlers read in `read`.
fn service(
    read: Arc<AtomicUsize>,
) -> impl megaconn::HttpService<ResBody = Full<Bytes>, BodyError = Infallible> + Clone + Send + 'static
{
    tower::service_fn(move |req| {
        let read = read.clone();
        async move { Ok::<_, Infallible>(app(req, read).await) }
    })
}

/// A handler that reads its upload as it comes has its stream's window
/// grown, and the connection's: once it stops reading (at 1 MiB), its
/// client got far more than the 64 KiB the stream started with (and more
/// than the 128 KiB connection window) through ahead of it. Before
/// (session 50), the client could never be more than 64 KiB ahead, and an
/// upload over a 50 ms path moved 64 KiB a round trip.
#[tokio::test]
async fn a_stream_whose_handler_keeps_up_gets_a_grown_window() {
    let read = Arc::new(AtomicUsize::new(0));
    // The held handler never answers: the shutdown cuts it at once.
    let builder = Builder::default().shutdown_timeout(Duration::from_millis(100));
    let server = common::AppServer::one_worker(builder, service(read.clone()));
    let client = common::h2c(server.addr()).await;
    let mut ready = client.ready().await.unwrap();
    let req = Request::post("http://t/read-then-hold").body(()).unwrap();
    let (_answer, send) = ready.send_request(req, false).unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    upload(send, 8 << 20, sent.clone());
    let ahead = async {
        loop {
            let (r, s) = (read.load(Relaxed), sent.load(Relaxed));
            if r >= HOLD_AT && s - r >= 4 * STREAM_WINDOW {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(SAFETY, ahead).await.is_err() {
        panic!(
            "the window never grew: {} bytes sent, {} read (at most {STREAM_WINDOW} ahead)",
            sent.load(Relaxed),
            read.load(Relaxed)
        );
    }
    assert!(server.stop().await);
}

/// On paused time, over an in-memory stream: two uploads of 64 KiB each
/// whose handlers leave them unread for 30 s fill the connection's window
/// (128 KiB); a third stream's body, 1,000 bytes that its client sends at
/// once, cannot come until they are read. Its handler waits those 30 s,
/// 30 times the grace of a rate (1,000 B/s) that 1,000 bytes earn 1 s of:
/// not charged, since the client could not send, it is answered whole.
/// Before, it was answered `408` (cut at ~1 s).
#[tokio::test(start_paused = true)]
async fn a_wait_while_the_connection_window_is_full_is_not_charged() {
    let local = tokio::task::LocalSet::new();
    let answers = local.run_until(async {
        let (client, server_end) = tokio::io::duplex(256 * 1024);
        let builder = Builder::default()
            .idle_timeout(None)
            .min_request_body_rate(Some(1000))
            .min_request_body_rate_grace(Duration::from_secs(1));
        let app = service(Arc::default());
        tokio::task::spawn_local(async move { builder.serve_connection(server_end, app).await });
        let (client, conn) = h2::client::handshake(client).await.expect("h2 handshake");
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let mut answers = Vec::new();
        for (path, len) in [("/hold", STREAM_WINDOW), ("/hold", STREAM_WINDOW)] {
            let mut ready = client.clone().ready().await.unwrap();
            let req = Request::post(format!("http://t{path}")).body(()).unwrap();
            let (answer, mut send) = ready.send_request(req, false).unwrap();
            send.send_data(Bytes::from(vec![b'h'; len]), true).unwrap();
            answers.push(answer);
        }
        // The clock moves only when all is idle: the 128 KiB are in.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut ready = client.clone().ready().await.unwrap();
        let req = Request::post("http://t/count").body(()).unwrap();
        let (answer, mut send) = ready.send_request(req, false).unwrap();
        send.send_data(Bytes::from(vec![b'c'; 1000]), true).unwrap();
        answers.push(answer);
        let mut got = Vec::new();
        for answer in answers {
            let answer = tokio::time::timeout(Duration::from_secs(600), answer)
                .await
                .expect("answered")
                .expect("an answer");
            let status = answer.status();
            let mut body = answer.into_body();
            let mut all = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.expect("the body reads");
                let _ = body.flow_control().release_capacity(data.len());
                all.extend_from_slice(&data);
            }
            got.push((status, String::from_utf8_lossy(&all).into_owned()));
        }
        got
    });
    let answers = answers.await;
    let held = (StatusCode::OK, STREAM_WINDOW.to_string());
    assert_eq!(answers[..2], [held.clone(), held], "{answers:?}");
    assert_eq!(
        answers[2],
        (StatusCode::OK, "1000".to_owned()),
        "{answers:?}"
    );
}
