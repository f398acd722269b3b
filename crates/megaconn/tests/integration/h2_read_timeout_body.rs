//! `read_timeout` bounds the arrival of an HTTP/2 request body, not its
//! handler (session 53; HTTP/1.1's since session 52, `read_timeout_body.rs`):
//! a body whose `END_STREAM` has come, read or not, is not cut when the
//! deadline passes, and one still on its way is (the handler's read fails
//! with `BodyError::TimedOut`, as before). Before, a handler that read a
//! body after the deadline had its read fail even when the whole body had
//! come with its head. Over real sockets with the `h2` crate's client and
//! a handler that reads its body only when the test tells it to, after the
//! deadline has passed.
//!
//! How a test knows the deadline passed without a sleep: a second stream
//! of the same connection, sent after the first's handler started, sends
//! only part of its body, and its handler reads at once; its read fails
//! from the same worker's timer at a deadline no earlier than the first's,
//! so by its answer the first's has passed. On the same connection the
//! first stream's frames, all sent before the second stream's, reach the
//! server in the same burst as its head at the latest, a deadline before
//! its answer.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Notify};

use super::h2::SAFETY;

/// Short, so the tests are quick: the signal above, not this, orders them.
const READ_TIMEOUT: Duration = Duration::from_millis(300);

/// What a cut read says (`BodyError::TimedOut`).
const TIMED_OUT: &str = "request body read timed out";

/// A server with [`READ_TIMEOUT`]. Its handler of `/late` reads its body
/// at once; any other tells `started` its request's head came, waits for
/// `release`, then reads its whole body. Each answers `200` with the body
/// (and `;name=value` for each trailer), or `400` with the read's error.
fn start(started: mpsc::UnboundedSender<()>, release: Arc<Notify>) -> common::AppServer {
    let app = tower::service_fn(move |req: Request<megaconn::Body>| {
        let (started, release) = (started.clone(), release.clone());
        async move {
            if req.uri().path() != "/late" {
                let _ = started.send(());
                release.notified().await;
            }
            let (status, body) = match req.into_body().collect().await {
                Ok(body) => {
                    let trailers = body.trailers().cloned().unwrap_or_default();
                    let mut said = body.to_bytes().to_vec();
                    for (name, value) in &trailers {
                        said.extend_from_slice(format!(";{name}=").as_bytes());
                        said.extend_from_slice(value.as_bytes());
                    }
                    (StatusCode::OK, Bytes::from(said))
                }
                Err(e) => (StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
            };
            let mut response = http::Response::new(Full::new(body));
            *response.status_mut() = status;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let builder = megaconn::Server::builder().read_timeout(Some(READ_TIMEOUT));
    common::AppServer::one_worker(builder, app)
}

/// What the client sends of its first request's body.
enum Sent {
    /// These DATA frames, the last with `END_STREAM`.
    Whole(Vec<Bytes>),
    /// These DATA frames, then trailers `x-sum: 5` (`END_STREAM`).
    WithTrailers(Vec<Bytes>),
    /// These DATA frames, and no end.
    Part(Vec<Bytes>),
}

/// Sends a `POST /read` with `sent` on a fresh server's connection, lets
/// its handler read the body only once `read_timeout` has passed (the
/// module doc says how that is known), and returns the answer: status and
/// body, and how many timeouts the server counted. On the way, checks the
/// opposite on a second stream: a body not all sent, read at once, is cut.
async fn answered_after_read_timeout(sent: Sent) -> ((StatusCode, String), u64) {
    let (started, mut heads) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let server = start(started, release.clone());
    let client = common::h2c(server.addr()).await;
    let mut ready = client.clone().ready().await.unwrap();
    let req = Request::post("http://t/read").body(()).unwrap();
    let (answer, mut send) = ready.send_request(req, false).unwrap();
    let (frames, ending) = match sent {
        Sent::Whole(f) => (f, Some(None)),
        Sent::WithTrailers(f) => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", HeaderValue::from_static("5"));
            (f, Some(Some(trailers)))
        }
        Sent::Part(f) => (f, None),
    };
    let last = frames.len() - 1;
    for (i, frame) in frames.into_iter().enumerate() {
        let end = i == last && matches!(ending, Some(None));
        send.send_data(frame, end).unwrap();
    }
    if let Some(Some(trailers)) = ending {
        send.send_trailers(trailers).unwrap();
    }
    common::next(&mut heads, "the handler's start").await;

    // Two of five bytes, and no more: its deadline runs from a later head.
    let mut ready = client.clone().ready().await.unwrap();
    let late = Request::post("http://t/late")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (cut, mut late_send) = ready.send_request(late, false).unwrap();
    late_send
        .send_data(Bytes::from_static(b"he"), false)
        .unwrap();
    assert_eq!(
        answer_of(cut).await,
        (StatusCode::BAD_REQUEST, TIMED_OUT.to_owned()),
        "a body still on its way, read at once, is cut at read_timeout"
    );

    release.notify_one();
    let answered = answer_of(answer).await;
    let timeouts = server.handle.stats().timeouts;
    drop(send);
    assert!(server.stop().await, "the server stops");
    (answered, timeouts)
}

/// The status and body of `answer` (bounded by [`SAFETY`]).
async fn answer_of(answer: h2::client::ResponseFuture) -> (StatusCode, String) {
    let answer = tokio::time::timeout(SAFETY, answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    let status = answer.status();
    let mut body = answer.into_body();
    let mut all = Vec::new();
    while let Some(data) = tokio::time::timeout(SAFETY, body.data())
        .await
        .expect("the answer's body in time")
    {
        let data = data.expect("the body reads");
        let _ = body.flow_control().release_capacity(data.len());
        all.extend_from_slice(&data);
    }
    (status, String::from_utf8_lossy(&all).into_owned())
}

/// The body came in one DATA frame with `END_STREAM` and waits in h2 while
/// its handler waits past `read_timeout`: served. (Its read failed with
/// `BodyError::TimedOut` before, the whole body there.)
#[tokio::test]
async fn a_whole_h2_body_outlives_read_timeout_unread() {
    let (answered, timeouts) =
        answered_after_read_timeout(Sent::Whole(vec![Bytes::from_static(b"hello")])).await;
    assert_eq!(
        answered,
        (StatusCode::OK, "hello".to_owned()),
        "a body that had all come was cut"
    );
    assert_eq!(timeouts, 1, "the late stream's cut alone");
}

/// The same with a body of several frames, 40,000 bytes in all (under the
/// stream's 64 KiB window, so all of it comes unread), and with trailers
/// ending the stream: every frame and the trailers reach the handler.
#[tokio::test]
async fn a_whole_h2_body_of_several_frames_and_trailers_outlives_read_timeout() {
    let frames = (0..5).map(|_| Bytes::from(vec![b'x'; 8_000])).collect();
    let ((status, body), _) = answered_after_read_timeout(Sent::WithTrailers(frames)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = format!("{};x-sum=5", "x".repeat(40_000));
    assert!(
        body == expected,
        "{} bytes: {}",
        body.len(),
        &body[body.len().saturating_sub(40)..]
    );
}

/// A body whose first part came but whose end did not is still cut at
/// `read_timeout`, though its handler reads it only after the deadline,
/// with the part there.
#[tokio::test]
async fn an_h2_body_still_on_its_way_is_cut_at_read_timeout() {
    let (answered, timeouts) =
        answered_after_read_timeout(Sent::Part(vec![Bytes::from_static(b"hel")])).await;
    assert_eq!(answered, (StatusCode::BAD_REQUEST, TIMED_OUT.to_owned()));
    assert_eq!(timeouts, 2, "the late stream's cut and this one's");
}
