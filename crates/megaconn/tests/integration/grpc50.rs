//! gRPC as tonic's own server serves it, through megaconn with a tonic
//! client (session 50's review of a tonic service served both ways): calls
//! cancelled at their deadline do not close the connection (the
//! rapid-reset guard counts only young resets), a quiet bidi stream is not
//! cut by the request body's stall bound or its minimum rate, a trailers-only error carries no
//! `content-length`, and a panicking handler answers `grpc-status: 13`.
//!
//! The flood the rapid-reset guard is for still closes its connection:
//! `integration/h2.rs`, `rapid_reset_gets_goaway_and_the_server_stays_healthy`
//! (HEADERS and RST_STREAM at once, 2,000 times) and
//! `a_rapid_reset_is_counted_once` (streams reset as soon as their handlers
//! run), both unchanged.
//!
//! Messages written by hand with `prost`'s derive and served by tonic's
//! generic `tonic::server::Grpc`, as `integration/tonic.rs` does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use megaconn::Body;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::common::grpc::{self, grpc};
use crate::common::{AppServer, SAFETY};

/// Unary: answers `Hello, <name>!`; an empty name is `INVALID_ARGUMENT`.
const HELLO: &str = "/t.G/Hello";
/// Unary: never answers (a handler slower than any deadline).
const SLOW: &str = "/t.G/Slow";
/// Server streaming: `1`, then `2` once the test opens the gate, then OK.
const WATCH: &str = "/t.G/Watch";
/// Bidi streaming: echoes each number.
const ECHO: &str = "/t.G/Echo";
/// Unary: the handler panics.
const PANIC: &str = "/t.G/Panic";

/// A name, a greeting.
#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

/// A number.
#[derive(Clone, PartialEq, prost::Message)]
struct Number {
    #[prost(uint32, tag = "1")]
    n: u32,
}

type Numbers = Pin<Box<dyn futures_util::Stream<Item = Result<Number, Status>> + Send>>;

/// The service: routes by path to tonic's generic handlers, as generated
/// code does. `gate`: what `Watch` waits for before its second message.
#[derive(Clone)]
struct Svc {
    gate: Arc<Semaphore>,
}

impl tower::Service<http::Request<Body>> for Svc {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let gate = self.gate.clone();
        Box::pin(async move {
            let response = match req.uri().path() {
                HELLO => grpc().unary(tower::service_fn(hello), req).await,
                SLOW => {
                    let slow = |_: tonic::Request<Text>| {
                        std::future::pending::<Result<tonic::Response<Text>, Status>>()
                    };
                    grpc().unary(tower::service_fn(slow), req).await
                }
                WATCH => {
                    let watch = move |_: tonic::Request<Number>| {
                        let gate = gate.clone();
                        async move {
                            let first = futures_util::stream::iter([Ok(Number { n: 1 })]);
                            let second = futures_util::stream::once(async move {
                                let _permit = gate.acquire().await.expect("gate open");
                                Ok(Number { n: 2 })
                            });
                            let stream = futures_util::StreamExt::chain(first, second);
                            Ok::<_, Status>(tonic::Response::new(Box::pin(stream) as Numbers))
                        }
                    };
                    grpc().server_streaming(tower::service_fn(watch), req).await
                }
                ECHO => grpc().streaming(tower::service_fn(echo), req).await,
                PANIC => {
                    let panics = |_: tonic::Request<Text>| async {
                        if true {
                            panic!("a handler bug");
                        }
                        Ok::<_, Status>(tonic::Response::new(Text::default()))
                    };
                    grpc().unary(tower::service_fn(panics), req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

async fn hello(req: tonic::Request<Text>) -> Result<tonic::Response<Text>, Status> {
    let name = req.into_inner().text;
    if name.is_empty() {
        return Err(Status::invalid_argument("name is required"));
    }
    Ok(tonic::Response::new(Text {
        text: format!("Hello, {name}!"),
    }))
}

async fn echo(
    req: tonic::Request<tonic::Streaming<Number>>,
) -> Result<tonic::Response<Numbers>, Status> {
    let numbers = req.into_inner();
    Ok(tonic::Response::new(Box::pin(numbers) as Numbers))
}

/// A server of [`Svc`] on one worker, `builder`'s settings kept; its gate.
fn serve(builder: megaconn::Builder) -> (AppServer, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let server = AppServer::one_worker(builder, Svc { gate: gate.clone() });
    (server, gate)
}

/// A tonic client of `server` on one HTTP/2 connection.
async fn client(server: &AppServer) -> tonic::client::Grpc<Channel> {
    grpc::client(server.addr()).await
}

/// A unary call of `path` with `text` (typed here, for the callers'
/// inference).
async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    request: tonic::Request<Text>,
) -> Result<Text, Status> {
    grpc::unary(client, path, request).await
}

/// More calls than the rapid-reset guard's limit, each cancelled by its
/// client at its deadline while its handler runs, beside a live server
/// stream on the same connection: each call ends `CANCELLED` on the
/// client, the stream lives on and the connection serves, as on tonic's
/// own server. Before, the 101st cancel closed the connection with
/// `GOAWAY(ENHANCE_YOUR_CALM)`, and the stream with it.
#[tokio::test]
async fn calls_cancelled_at_their_deadline_leave_the_connection_serving() {
    let (server, gate) = serve(megaconn::Server::builder());
    let mut client = client(&server).await;
    client.ready().await.expect("channel ready");
    let mut watch = client
        .server_streaming(
            tonic::Request::new(Number { n: 0 }),
            PathAndQuery::from_static(WATCH),
            ProstCodec::default(),
        )
        .await
        .expect("the stream starts")
        .into_inner();
    let first = tokio::time::timeout(SAFETY, watch.message()).await;
    assert_eq!(first.unwrap().unwrap(), Some(Number { n: 1 }));

    // Under the 128 streams a connection may have open, with the watch:
    // none waits in the client's queue for a slot.
    let calls = megaconn::RAPID_RESET_LIMIT as usize + 10;
    // Generous, so that a busy machine's delay in starting the streams
    // stays well under half of it (ordinary once they ran that long).
    let deadline = Duration::from_millis(500);
    let cancelled = (0..calls).map(|_| {
        let mut client = client.clone();
        async move {
            // The deadline announced (`grpc-timeout`), which tonic's
            // client keeps: it resets the stream then.
            let mut request = tonic::Request::new(Text::default());
            request.set_timeout(deadline);
            unary(&mut client, SLOW, request).await
        }
    });
    let ends = tokio::time::timeout(SAFETY, futures_util::future::join_all(cancelled))
        .await
        .expect("every call ends");
    let codes: Vec<Code> = ends
        .iter()
        .map(|end| end.as_ref().map_or_else(Status::code, |_| Code::Ok))
        .collect();
    assert_eq!(
        codes,
        vec![Code::Cancelled; calls],
        "every call runs out its deadline"
    );

    gate.add_permits(1);
    let second = tokio::time::timeout(SAFETY, watch.message()).await;
    assert_eq!(
        second.expect("in time").expect("the stream lives on"),
        Some(Number { n: 2 })
    );
    let end = tokio::time::timeout(SAFETY, watch.message()).await;
    assert_eq!(end.unwrap().expect("ends OK"), None);
    let reply = unary(&mut client, HELLO, tonic::Request::new(text("after")))
        .await
        .expect("a call after the cancels");
    assert_eq!(reply.text, "Hello, after!");
    let stats = server.handle.stats();
    assert_eq!(
        (stats.accepted, stats.protocol_errors),
        (1, 0),
        "one connection throughout, never closed for abuse"
    );
    drop(client);
    server.stop().await;
}

fn text(s: &str) -> Text {
    Text {
        text: s.to_string(),
    }
}

/// A bidi call whose client says nothing for longer than `idle_timeout`
/// (the bound on a wait for request DATA when `read_timeout` is off) lives
/// on: messages after the pause are echoed and the call ends OK, as on
/// tonic's server, which bounds no such wait. Before, the handler's read
/// failed after one to two `idle_timeout`s and the call ended `UNKNOWN`
/// ("request body read timed out"). A pause of three bounds, with the
/// bound small so the test does not wait a minute.
#[tokio::test]
async fn a_quiet_bidi_stream_outlives_the_body_stall_bound() {
    let idle = Duration::from_millis(200);
    let builder = megaconn::Server::builder()
        .idle_timeout(Some(idle))
        .min_request_body_rate(None);
    quiet_bidi_lives(builder, 3 * idle).await;
}

/// Nor is it cut by `min_request_body_rate` (HTTP/2's since session 50):
/// a client quiet past the rate's grace, having sent one small message,
/// has spent its waiting, but a gRPC call's pauses are its application's
/// (ASP.NET Core's gRPC turns Kestrel's rate off for streaming calls).
/// Without the exemption the body's read failed at the grace and the
/// stream was reset (`CANCEL`, its response begun).
#[tokio::test]
async fn a_quiet_bidi_stream_is_not_held_to_the_body_rate() {
    let grace = Duration::from_millis(200);
    let builder = megaconn::Server::builder()
        .idle_timeout(None)
        .min_request_body_rate(Some(1_000_000))
        .min_request_body_rate_grace(grace);
    quiet_bidi_lives(builder, 3 * grace).await;
}

/// An `Echo` call on a server of `builder` whose client, after one
/// message, says nothing for `pause`, then sends another: both are echoed
/// and the call ends OK.
async fn quiet_bidi_lives(builder: megaconn::Builder, pause: Duration) {
    let (server, _gate) = serve(builder);
    let mut client = client(&server).await;
    client.ready().await.expect("channel ready");
    let (tx, rx) = mpsc::channel::<Number>(4);
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    tx.send(Number { n: 1 }).await.unwrap();
    let mut replies = tokio::time::timeout(
        SAFETY,
        client.streaming(
            tonic::Request::new(requests),
            PathAndQuery::from_static(ECHO),
            ProstCodec::default(),
        ),
    )
    .await
    .expect("in time")
    .expect("the call starts")
    .into_inner();
    let one = tokio::time::timeout(SAFETY, replies.message()).await;
    assert_eq!(one.unwrap().unwrap(), Some(Number { n: 1 }));
    // Time itself is the subject: the client is quiet past the bound.
    tokio::time::sleep(pause).await;
    tx.send(Number { n: 2 })
        .await
        .expect("the call still takes messages");
    let two = tokio::time::timeout(SAFETY, replies.message()).await;
    assert_eq!(
        two.expect("in time").expect("the call lives on"),
        Some(Number { n: 2 })
    );
    drop(tx);
    let end = tokio::time::timeout(SAFETY, replies.message()).await;
    assert_eq!(end.unwrap().expect("ends OK"), None);
    drop(client);
    server.stop().await;
}

/// A unary call's error status travels in a trailers-only response (the
/// head ends the stream) with no `content-length`, as tonic's own server
/// (hyper) sends it: tonic's client lists the head's fields as the
/// status's metadata, and a `content-length: 0` showed up there.
#[tokio::test]
async fn a_trailers_only_error_has_no_content_length() {
    let (server, _gate) = serve(megaconn::Server::builder());
    let mut client = client(&server).await;
    let status = unary(&mut client, HELLO, tonic::Request::new(text("")))
        .await
        .expect_err("an empty name fails");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "name is required");
    assert_eq!(
        status.metadata().get("content-length"),
        None,
        "no content-length in a trailers-only response: {:?}",
        status.metadata()
    );
    drop(client);
    server.stop().await;
}

/// A handler that panics answers a gRPC call with a trailers-only
/// `grpc-status: 13` (INTERNAL) and a message, and the connection serves
/// on. Before, it answered `500` with a text body, which tonic's client
/// read as a message frame ("invalid compression flag").
#[tokio::test]
async fn a_panicking_handler_answers_grpc_internal() {
    let (server, _gate) = serve(megaconn::Server::builder());
    let mut client = client(&server).await;
    let status = unary(&mut client, PANIC, tonic::Request::new(text("x")))
        .await
        .expect_err("the handler panics");
    assert_eq!(
        (status.code(), status.message()),
        (Code::Internal, "the handler panicked"),
        "{status:?}"
    );
    let reply = unary(&mut client, HELLO, tonic::Request::new(text("again")))
        .await
        .expect("the connection serves on");
    assert_eq!(reply.text, "Hello, again!");
    assert_eq!(server.handle.stats().accepted, 1);
    drop(client);
    server.stop().await;
}
