//! HTTP/2 request bodies held to `min_request_body_rate` (session 50; on
//! HTTP/1.1 since session 49, `h1_body_limits.rs`). Over real sockets with
//! the `h2` crate's client: a body dripped slower than the rate while its
//! handler waits is answered `408` (its response not begun) or its stream
//! reset with `CANCEL` (begun), counted, while another stream of the same
//! connection is served and the connection serves on. Before, nothing
//! but `idle_timeout`'s bound between two DATA frames held it, restarted
//! by each: a byte every 20 s held a stream, its handler and its slot of
//! `http2_max_concurrent_streams` for good. On paused time over in-memory
//! streams, what the rate must not cut: a steady upload, a handler that
//! reads slowly, and one that leaves its body a while, its DATA come.

use crate::common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use megaconn::{Body, BoxError, Builder};

use super::h2::{limit_hits, SAFETY};

/// The rate the drip tests hold bodies to, in bytes a second: far above
/// the drip's 20 B/s, so the drip is cut within a second.
const RATE: u32 = 1000;

/// Their grace: a client's first wait may last this long (long enough
/// that the upload beside the drip, whose bytes come at once, never waits
/// it out on a loaded machine; the drip is cut ~0.5 s in).
const GRACE: Duration = Duration::from_millis(500);

/// The drip: one byte every 50 ms (20 B/s), at most this many (5 s): a
/// drip the rate does not cut ends its body, and is answered in full.
const DRIP_BYTES: usize = 100;

type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Routes: `/count` reads its body to the end (`pause` after each frame)
/// and answers its length, or the read's error · `/busy-once` the same,
/// but the first time a read waits 100 ms it leaves the body for 10 s
/// (work of its own), then reads on · `/echo` answers `200` at once and
/// streams the request body back as the response body · anything else
/// `ok`.
async fn app(req: Request<Body>, pause: Duration) -> Response<TestBody> {
    match req.uri().path() {
        path @ ("/count" | "/busy-once") => {
            let mut busy = path == "/busy-once";
            let mut body = req.into_body();
            let mut n = 0;
            let said = loop {
                let frame = if busy {
                    match tokio::time::timeout(Duration::from_millis(100), body.frame()).await {
                        Ok(frame) => frame,
                        Err(_) => {
                            busy = false;
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            continue;
                        }
                    }
                } else {
                    body.frame().await
                };
                match frame {
                    None => break n.to_string(),
                    Some(Ok(frame)) => {
                        n += frame.data_ref().map_or(0, Bytes::len);
                        tokio::time::sleep(pause).await;
                    }
                    Some(Err(e)) => break format!("error: {e}"),
                }
            };
            Response::new(
                Full::new(Bytes::from(said))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
        }
        "/echo" => Response::new(req.into_body().boxed_unsync()),
        _ => Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|e| match e {})
                .boxed_unsync(),
        ),
    }
}

/// The service of [`app`], its handlers pausing `pause` after each frame.
fn service(
    pause: Duration,
) -> impl megaconn::HttpService<ResBody = TestBody, BodyError = BoxError> + Clone + Send + 'static {
    tower::service_fn(move |req| async move { Ok::<_, Infallible>(app(req, pause).await) })
}

/// A server whose bodies are held to [`RATE`] after [`GRACE`]
/// (`idle_timeout` at its default, 60 s, far past the tests' bound: only
/// the rate can cut).
fn rate_bound() -> common::AppServer {
    let builder = Builder::default()
        .min_request_body_rate(Some(RATE))
        .min_request_body_rate_grace(GRACE);
    common::AppServer::one_worker(builder, service(Duration::ZERO))
}

/// A [`rate_bound`] server, an h2c client of it, and a `POST path` sent on
/// it whose body is still to come: the answer to wait for, the body's
/// sending half.
async fn start_upload(
    path: &str,
) -> (
    common::AppServer,
    h2::client::SendRequest<Bytes>,
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
) {
    let server = rate_bound();
    let client = common::h2c(server.addr()).await;
    let mut ready = client.clone().ready().await.unwrap();
    let req = Request::post(format!("http://t{path}")).body(()).unwrap();
    let (answer, send) = ready.send_request(req, false).unwrap();
    (server, client, answer, send)
}

/// After a cut: the connection still serves (`GET /` on `client`), and
/// the server counted the one cut, as a limit hit and a timeout.
async fn serves_on_having_counted_one_cut(
    server: common::AppServer,
    client: &h2::client::SendRequest<Bytes>,
) {
    let after = exchange(client, "GET", "/", b"").await;
    assert_eq!(after, (StatusCode::OK, Bytes::from_static(b"ok")));
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "min_request_body_rate"), 1, "{stats:?}");
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    assert!(server.stop().await);
}

/// Drips `send`'s body, a byte every 50 ms, until `answered` resolves (its
/// output returned) or [`DRIP_BYTES`] went (then the body ends, and the
/// answer is awaited).
async fn drip_until<T>(
    send: &mut h2::SendStream<Bytes>,
    answered: impl std::future::Future<Output = T>,
) -> T {
    let mut answered = std::pin::pin!(answered);
    for _ in 0..DRIP_BYTES {
        if send.send_data(Bytes::from_static(b"x"), false).is_err() {
            break;
        }
        tokio::select! {
            out = &mut answered => return out,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let _ = send.send_data(Bytes::new(), true);
    tokio::time::timeout(SAFETY, answered)
        .await
        .expect("answered in time")
}

/// Sends `path` with `body` (ended) on `client` and reads the answer: its
/// status and body.
async fn exchange(
    client: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (StatusCode, Bytes) {
    let mut ready = client.clone().ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://t{path}"))
        .body(())
        .unwrap();
    let (answer, mut send) = ready.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        send.send_data(Bytes::copy_from_slice(body), true).unwrap();
    }
    let answer = tokio::time::timeout(SAFETY, answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    let status = answer.status();
    (status, read_all(answer.into_body()).await)
}

/// The rest of a response body, its room given back as it comes.
async fn read_all(mut body: h2::RecvStream) -> Bytes {
    let mut all = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.expect("the body reads");
        let _ = body.flow_control().release_capacity(data.len());
        all.extend_from_slice(&data);
    }
    Bytes::from(all)
}

/// A stream whose body comes a byte every 50 ms while its handler reads it
/// is answered `408`, naming the setting, once it has spent its grace;
/// counted. Meanwhile a whole upload on the same connection is read and
/// answered, and after it the connection still serves. Before: the drip
/// was served in full (a `200` after 5 s), and one sending a byte every
/// 20 s held its stream for good.
#[tokio::test]
async fn a_dripped_body_is_answered_408_and_counted_and_its_connection_serves_on() {
    let (server, client, answer, mut send) = start_upload("/count").await;
    let beside = exchange(&client, "POST", "/count", &[b'y'; 10_000]);
    let (dripped, beside) = drip_until(&mut send, async {
        let (beside, answer) = tokio::join!(beside, answer);
        (answer, beside)
    })
    .await;
    assert_eq!(beside, (StatusCode::OK, Bytes::from_static(b"10000")));
    let answer = dripped.expect("an answer");
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    let text = read_all(answer.into_body()).await;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("min_request_body_rate"), "{text}");
    serves_on_having_counted_one_cut(server, &client).await;
}

/// A stream whose response has begun (an echo: `200` at once, the request
/// body streamed back) and whose body then drips is reset with `CANCEL`
/// (no `408` can follow a head), counted; the connection serves on.
#[tokio::test]
async fn a_dripped_body_after_its_response_began_is_reset_with_cancel() {
    let (server, client, answer, mut send) = start_upload("/echo").await;
    let ended = drip_until(&mut send, async {
        let answer = answer.await.expect("the head");
        assert_eq!(answer.status(), StatusCode::OK);
        let mut body = answer.into_body();
        loop {
            match body.data().await {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                }
                Some(Err(e)) => break Some(e.reason()),
                None => break None,
            }
        }
    })
    .await;
    assert_eq!(ended, Some(Some(h2::Reason::CANCEL)), "the echo's end");
    serves_on_having_counted_one_cut(server, &client).await;
}

/// How a paced upload goes: pieces of `.1` bytes, `.2` apart, `.0` of
/// them.
type Pace = (usize, usize, Duration);

/// On paused time (the clock moves only when everything waits), over an
/// in-memory stream: one HTTP/2 connection of [`app`] (its handlers
/// pausing `pause` after each frame), bodies held to `rate` bytes a
/// second after 1 s, `idle_timeout` off (only the rate can cut), and a
/// `POST path` on it whose body goes `pace` (its first piece after
/// `first`). The answer's status and body, and how long it took.
async fn paced_upload(
    (pause, rate): (Duration, u32),
    path: &str,
    first: Duration,
    (pieces, piece, every): Pace,
) -> ((StatusCode, Bytes), Duration) {
    let started = tokio::time::Instant::now();
    let local = tokio::task::LocalSet::new();
    let answer = local.run_until(async {
        let (client, server_end) = tokio::io::duplex(64 * 1024);
        let builder = Builder::default()
            .idle_timeout(None)
            .min_request_body_rate(Some(rate))
            .min_request_body_rate_grace(Duration::from_secs(1));
        let app = service(pause);
        tokio::task::spawn_local(async move { builder.serve_connection(server_end, app).await });
        let (client, conn) = h2::client::handshake(client).await.expect("h2 handshake");
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let mut ready = client.ready().await.unwrap();
        let req = Request::post(format!("http://t{path}")).body(()).unwrap();
        let (answer, mut send) = ready.send_request(req, false).unwrap();
        tokio::time::sleep(first).await;
        for i in 0..pieces {
            let last = i + 1 == pieces;
            send.send_data(Bytes::from(vec![b'x'; piece]), last)
                .expect("the stream takes the piece");
            if !last {
                tokio::time::sleep(every).await;
            }
        }
        // (Not `SAFETY`: the slow handler's pauses are longer than it.)
        let answer = tokio::time::timeout(Duration::from_secs(600), answer)
            .await
            .expect("answered")
            .expect("an answer");
        let status = answer.status();
        (status, read_all(answer.into_body()).await)
    });
    (answer.await, started.elapsed())
}

/// A client that keeps to the rate, in bursts with pauses longer than the
/// grace, is never cut: 20 bytes every 2 s is 10 B/s against 5 B/s, for a
/// minute.
#[tokio::test(start_paused = true)]
async fn a_bursty_upload_above_the_rate_is_not_cut() {
    let pace = (30, 20, Duration::from_secs(2));
    let (answer, _) = paced_upload((Duration::ZERO, 5), "/count", Duration::ZERO, pace).await;
    assert_eq!(answer, (StatusCode::OK, Bytes::from_static(b"600")));
}

/// A handler that pauses 10 s after each frame (ten grace periods) costs
/// its client nothing: once the client has sent its first bytes (after
/// half a second, a wait of the handler's), it stays ahead of the
/// handler, 100 bytes every 3 s, whose DATA waits in the stream's window
/// and is not waited on again. At ~10 B/s against 1,000 B/s over ~60 s,
/// it would have been cut had the handler's pauses counted.
#[tokio::test(start_paused = true)]
async fn a_handler_that_reads_slowly_does_not_cut_its_client() {
    let pace = (6, 100, Duration::from_secs(3));
    let slow = (Duration::from_secs(10), 1000);
    let (answer, took) = paced_upload(slow, "/count", Duration::from_millis(500), pace).await;
    assert_eq!(answer, (StatusCode::OK, Bytes::from_static(b"600")));
    assert!(took > Duration::from_secs(30), "the handler paused");
}

/// A handler that leaves its body for a while, its client's DATA come,
/// is not waiting for it: that time is not its client's. Here the first
/// wait ends with 100 bytes at 0.5 s (1 s of grace: 0.6 s left), which
/// the handler takes only at 10.1 s; the next 100 bytes come 0.5 s after
/// it waits again. Charged until the handler's poll (10.1 s), the first
/// wait had spent all the credit and the second was cut at 0.1 s.
#[tokio::test(start_paused = true)]
async fn a_handler_busy_elsewhere_does_not_spend_its_clients_credit() {
    let pace = (2, 100, Duration::from_millis(10_100));
    let busy = (Duration::ZERO, 1000);
    let (answer, _) = paced_upload(busy, "/busy-once", Duration::from_millis(500), pace).await;
    assert_eq!(answer, (StatusCode::OK, Bytes::from_static(b"200")));
}
