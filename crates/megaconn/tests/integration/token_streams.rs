//! A token stream (an LLM's answer sent as server-sent events, the case of
//! session 51's review) between two tokens, where a model pauses to think:
//! the client's hang-up stops the generation at once (its body stream is
//! dropped), over HTTP/1.1 by a FIN or a reset and over HTTP/2 by a
//! `RST_STREAM` that leaves the connection serving; and a pause longer than
//! `idle_timeout` does not cut the stream, on either protocol.
//!
//! `held_responses.rs` covers a handler that has not answered yet (a
//! long-poll); here the handler has answered and its body waits, which is
//! how a generation spends most of its life. Each generation is an axum
//! `Sse` over a channel the test feeds, and its stream holds a guard whose
//! drop the test hears: the generation stopping, as an inference server's
//! would when its output's receiver goes.

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{AppServer, SAFETY};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Tells the test when the generation's stream is dropped.
struct Generation(mpsc::UnboundedSender<()>);

impl Drop for Generation {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// What the test drives an app's one generation with.
struct Model {
    /// Each string sent becomes a token (an event's data).
    tokens: mpsc::UnboundedSender<String>,
    /// Hears the generation's stream dropped.
    dropped: mpsc::UnboundedReceiver<()>,
}

impl Model {
    /// Waits (bounded) until the generation's stream is dropped.
    async fn stopped(&mut self, what: &str) {
        tokio::time::timeout(SAFETY, self.dropped.recv())
            .await
            .unwrap_or_else(|_| panic!("the generation was not stopped after {what}"))
            .expect("the app is gone");
    }
}

/// An axum app whose `/tokens` answers an event stream fed by the returned
/// [`Model`] (one generation: the first request takes it), and whose `/`
/// says hello.
fn token_app() -> (Router, Model) {
    let (tokens, rx) = mpsc::unbounded_channel::<String>();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let slot = Arc::new(Mutex::new(Some((rx, dropped_tx))));
    let app = Router::new()
        .route(
            "/tokens",
            get(move || {
                let (rx, dropped) = slot.lock().unwrap().take().expect("one generation");
                async move {
                    let generation = Generation(dropped);
                    let events = UnboundedReceiverStream::new(rx).map(move |token| {
                        let _held = &generation;
                        Ok::<_, Infallible>(SseEvent::default().data(token))
                    });
                    Sse::new(events)
                }
            }),
        )
        .route("/", get(|| async { "hello" }));
    (app, Model { tokens, dropped })
}

/// Reads from `s` into `buf` until it holds `needle`.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    tokio::time::timeout(SAFETY, async {
        while !buf.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {needle:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in time"));
}

/// An HTTP/1.1 client that got its first token: the stream then waits for
/// the next, as during a model's pause.
async fn first_token_http1(server: &AppServer, model: &Model) -> TcpStream {
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"GET /tokens HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    model.tokens.send("one".into()).unwrap();
    read_until(&mut s, &mut Vec::new(), "data: one").await;
    s
}

/// The client closes its connection (a FIN) while the generation waits for
/// its next token: the generation stops, though no write of the server's
/// could have found the client gone (none is under way).
#[tokio::test]
async fn a_hang_up_during_a_pause_stops_the_generation() {
    let (app, mut model) = token_app();
    let server = AppServer::one_worker(megaconn::Server::builder(), app);
    let s = first_token_http1(&server, &model).await;
    drop(s);
    model.stopped("the client closed its connection").await;
    assert!(server.stop().await);
}

/// The same with a reset (a killed client, a load balancer's RST).
#[tokio::test]
async fn a_reset_during_a_pause_stops_the_generation() {
    let (app, mut model) = token_app();
    let server = AppServer::one_worker(megaconn::Server::builder(), app);
    let s = first_token_http1(&server, &model).await;
    common::reset(s);
    model.stopped("the client reset its connection").await;
    assert!(server.stop().await);
}

/// Reads the next DATA frame of `body` that carries bytes, giving its
/// window back.
async fn next_data(body: &mut h2::RecvStream) -> Bytes {
    tokio::time::timeout(SAFETY, async {
        loop {
            let data = body.data().await.expect("a DATA frame").expect("no error");
            let _ = body.flow_control().release_capacity(data.len());
            if !data.is_empty() {
                return data;
            }
        }
    })
    .await
    .expect("a DATA frame in time")
}

/// Over HTTP/2 the client cancels the stream (`RST_STREAM(CANCEL)`: a tab
/// closed, a `fetch` aborted) and keeps the connection: the generation
/// stops at once, and the connection serves the next request.
#[tokio::test]
async fn a_cancelled_http2_stream_stops_its_generation_and_the_connection_serves_on() {
    let (app, mut model) = token_app();
    let server = AppServer::one_worker(megaconn::Server::builder(), app);
    let mut client = common::h2c(server.addr()).await;
    let request = http::Request::get(format!("http://{}/tokens", server.addr()))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    model.tokens.send("one".into()).unwrap();
    let mut body = tokio::time::timeout(SAFETY, response)
        .await
        .expect("a head in time")
        .expect("a response")
        .into_body();
    let first = next_data(&mut body).await;
    assert!(first.starts_with(b"data: one"), "{first:?}");
    // Dropping the stream's last handle before its end resets it (CANCEL).
    drop(body);
    model.stopped("the client cancelled its stream").await;
    let mut client = tokio::time::timeout(SAFETY, client.ready())
        .await
        .expect("ready in time")
        .expect("the connection serves on");
    let request = http::Request::get(format!("http://{}/", server.addr()))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let mut body = tokio::time::timeout(SAFETY, response)
        .await
        .expect("a head in time")
        .expect("a response")
        .into_body();
    assert_eq!(next_data(&mut body).await, "hello");
    assert!(server.stop().await);
}

/// The bound under test: short, so that a pause outlasts it quickly.
const IDLE: Duration = Duration::from_millis(200);

/// A pause several times `idle_timeout` long, as a model thinking: the
/// time passing is what is tested, so the test sleeps for it (a server that
/// cut the stream at `idle_timeout` would have done so well within it; on
/// a slow machine a late cut could hide, never a false failure).
async fn think() {
    tokio::time::sleep(IDLE * 5).await;
}

/// `idle_timeout` bounds a connection's wait between requests, not a
/// response under way: a stream whose next token comes after a pause past
/// it goes on, over HTTP/1.1.
#[tokio::test]
async fn a_pause_past_idle_timeout_does_not_cut_an_http1_stream() {
    let (app, mut model) = token_app();
    let builder = megaconn::Server::builder().idle_timeout(Some(IDLE));
    let server = AppServer::one_worker(builder, app);
    let mut s = first_token_http1(&server, &model).await;
    think().await;
    model.tokens.send("two".into()).unwrap();
    read_until(&mut s, &mut Vec::new(), "data: two").await;
    assert!(
        model.dropped.try_recv().is_err(),
        "the generation was stopped during the pause"
    );
    drop(s);
    model.stopped("the client closed its connection").await;
    assert!(server.stop().await);
}

/// The same over HTTP/2, where the connection's idle timer runs only while
/// no stream is open.
#[tokio::test]
async fn a_pause_past_idle_timeout_does_not_cut_an_http2_stream() {
    let (app, model) = token_app();
    let builder = megaconn::Server::builder().idle_timeout(Some(IDLE));
    let server = AppServer::one_worker(builder, app);
    let mut client = common::h2c(server.addr()).await;
    let request = http::Request::get(format!("http://{}/tokens", server.addr()))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    model.tokens.send("one".into()).unwrap();
    let mut body = tokio::time::timeout(SAFETY, response)
        .await
        .expect("a head in time")
        .expect("a response")
        .into_body();
    assert!(next_data(&mut body).await.starts_with(b"data: one"));
    think().await;
    model.tokens.send("two".into()).unwrap();
    let second = next_data(&mut body).await;
    assert!(second.starts_with(b"data: two"), "{second:?}");
    // Nor was the connection told to go away at the idle deadline (a
    // GOAWAY would let the stream finish but take no request more).
    let request = http::Request::get(format!("http://{}/", server.addr()))
        .body(())
        .unwrap();
    let mut client = tokio::time::timeout(SAFETY, client.ready())
        .await
        .expect("ready in time")
        .expect("the connection takes new streams after the pause");
    let (response, _) = client
        .send_request(request, true)
        .expect("the connection takes new streams after the pause");
    let mut hello = tokio::time::timeout(SAFETY, response)
        .await
        .expect("a head in time")
        .expect("the connection takes new streams after the pause")
        .into_body();
    assert_eq!(next_data(&mut hello).await, "hello");
    drop(model.tokens);
    // The generation ends by itself: the stream completes (its end may
    // come in an empty DATA frame of its own).
    tokio::time::timeout(SAFETY, async {
        while let Some(data) = body.data().await {
            assert!(data.expect("the stream ended whole").is_empty());
        }
    })
    .await
    .expect("the end in time");
    assert!(server.stop().await);
}
