//! gRPC through megaconn: a tonic service served by megaconn and called with a
//! tonic client, over cleartext HTTP/2 (prior knowledge, as gRPC clients do)
//! and over TLS with ALPN `h2`.
//!
//! No `protoc`: the messages are written by hand with `prost`'s derive, the
//! server side uses tonic's generic `tonic::server::Grpc` with
//! `tonic_prost::ProstCodec`, and a small `tower::Service` routes by path, as
//! generated code would. The calls cover a unary call, a server-streaming call,
//! a client-streaming call, a message larger than the HTTP/2 flow-control
//! windows both ways, and errors whose `grpc-status` travels in the response
//! head (trailers-only) and in trailers after streamed messages: a gRPC status
//! in trailers is what HTTP/1.1-minded servers most often lose.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use megaconn::Body;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::common::grpc::{self, grpc, unary};
use crate::common::tls::Ca;
use crate::common::{AppServer, SAFETY};

const SAY_HELLO: &str = "/test.Greeter/SayHello";
const COUNT: &str = "/test.Greeter/Count";
const SUM: &str = "/test.Greeter/Sum";

/// `SayHello`'s request.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `SayHello`'s reply.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

/// `Count`'s request: stream the numbers 1..=up_to; past [`COUNT_MAX`] the
/// stream ends with `OUT_OF_RANGE` after the first [`COUNT_MAX`] numbers.
#[derive(Clone, PartialEq, prost::Message)]
struct CountRequest {
    #[prost(uint32, tag = "1")]
    up_to: u32,
}

/// One number of `Count`'s reply stream.
#[derive(Clone, PartialEq, prost::Message)]
struct Number {
    #[prost(uint32, tag = "1")]
    n: u32,
}

/// Largest `up_to` that `Count` completes.
const COUNT_MAX: u32 = 100;

/// A name longer than megaconn's per-stream (256 KiB) and connection (1 MiB)
/// receive windows, and than the client's default windows for the reply.
const BIG_NAME: usize = 1536 * 1024;

type NumberStream = Pin<Box<dyn futures_util::Stream<Item = Result<Number, Status>> + Send>>;

/// The gRPC service megaconn serves: routes by path to tonic's generic
/// server-side handlers, as `tonic-build`'s generated code does.
#[derive(Clone)]
struct Greeter;

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let response = match req.uri().path() {
                SAY_HELLO => grpc().unary(tower::service_fn(say_hello), req).await,
                COUNT => grpc().server_streaming(tower::service_fn(count), req).await,
                SUM => grpc().client_streaming(tower::service_fn(sum), req).await,
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

async fn say_hello(
    req: tonic::Request<HelloRequest>,
) -> Result<tonic::Response<HelloReply>, Status> {
    let name = req.into_inner().name;
    if name.is_empty() {
        return Err(Status::invalid_argument("name is required"));
    }
    Ok(tonic::Response::new(HelloReply {
        message: format!("Hello, {name}!"),
    }))
}

async fn count(req: tonic::Request<CountRequest>) -> Result<tonic::Response<NumberStream>, Status> {
    let up_to = req.into_inner().up_to;
    let numbers = (1..=up_to.min(COUNT_MAX)).map(|n| Ok(Number { n }));
    let tail = (up_to > COUNT_MAX)
        .then(|| Err(Status::out_of_range(format!("counts only to {COUNT_MAX}"))));
    let stream = futures_util::stream::iter(numbers.chain(tail));
    Ok(tonic::Response::new(Box::pin(stream) as NumberStream))
}

/// `Sum`: adds up a stream of numbers.
async fn sum(
    req: tonic::Request<tonic::Streaming<Number>>,
) -> Result<tonic::Response<Number>, Status> {
    let mut numbers = req.into_inner();
    let mut total = 0u32;
    while let Some(number) = numbers.message().await? {
        total += number.n;
    }
    Ok(tonic::Response::new(Number { n: total }))
}

/// A generic tonic client over `channel`.
struct Client(tonic::client::Grpc<Channel>);

impl Client {
    async fn say_hello(&mut self, name: &str) -> Result<HelloReply, Status> {
        let request = tonic::Request::new(HelloRequest {
            name: name.to_string(),
        });
        unary(&mut self.0, SAY_HELLO, request).await
    }

    async fn count(&mut self, up_to: u32) -> Result<tonic::Streaming<Number>, Status> {
        self.0.ready().await.expect("channel ready");
        let request = tonic::Request::new(CountRequest { up_to });
        let path = PathAndQuery::from_static(COUNT);
        let reply = self
            .0
            .server_streaming(request, path, ProstCodec::default())
            .await?;
        Ok(reply.into_inner())
    }

    async fn sum(&mut self, numbers: Vec<u32>) -> Result<u32, Status> {
        self.0.ready().await.expect("channel ready");
        let stream = futures_util::stream::iter(numbers.into_iter().map(|n| Number { n }));
        let path = PathAndQuery::from_static(SUM);
        let reply: tonic::Response<Number> = self
            .0
            .client_streaming(tonic::Request::new(stream), path, ProstCodec::default())
            .await?;
        Ok(reply.into_inner().n)
    }

    async fn unknown_method(&mut self) -> Status {
        let request = tonic::Request::new(HelloRequest::default());
        let result: Result<HelloReply, Status> =
            unary(&mut self.0, "/test.Greeter/Nope", request).await;
        result.expect_err("an unknown method fails")
    }
}

/// Runs every call against one connection and asserts the answers.
async fn exercise(client: &mut Client) {
    // Unary.
    let reply = client.say_hello("megaconn").await.expect("unary call");
    assert_eq!(reply.message, "Hello, megaconn!");

    // Unary error: a trailers-only response (grpc-status in the head).
    let status = client.say_hello("").await.expect_err("empty name fails");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "name is required");

    // Server streaming, to the end. tonic reports a stream that ends without
    // a grpc-status trailer as an error, so a clean end proves the trailers
    // arrived.
    let mut stream = client.count(COUNT_MAX).await.expect("streaming call");
    let mut got = Vec::new();
    while let Some(number) = stream.message().await.expect("stream message") {
        got.push(number.n);
    }
    assert_eq!(got, (1..=COUNT_MAX).collect::<Vec<_>>());
    assert!(
        stream.trailers().await.expect("trailers").is_some(),
        "trailers arrive after the last message"
    );

    // Server streaming that fails after its messages: the error status can
    // only travel in trailers.
    let mut stream = client.count(COUNT_MAX + 1).await.expect("streaming call");
    let mut got = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the stream should end with an error status"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, COUNT_MAX, "the messages before the error arrive");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(status.message(), format!("counts only to {COUNT_MAX}"));

    // Client streaming: the request body arrives as a stream of messages.
    let total = client
        .sum((1..=1000).collect())
        .await
        .expect("client streaming");
    assert_eq!(total, 500_500);

    // A message larger than the flow-control windows, both ways: the handler
    // reading the request gives the window back, and the reply waits for the
    // client's window updates.
    let name = "x".repeat(BIG_NAME);
    let reply = client.say_hello(&name).await.expect("a large unary call");
    assert_eq!(reply.message.len(), BIG_NAME + "Hello, !".len());

    // An unknown method.
    let status = client.unknown_method().await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The connection still serves after the errors.
    let reply = client.say_hello("again").await.expect("unary call");
    assert_eq!(reply.message, "Hello, again!");
}

#[tokio::test]
async fn tonic_round_trip_over_h2c() {
    let server = AppServer::one_worker(megaconn::Server::builder(), Greeter);
    let mut client = Client(grpc::client(server.addr()).await);
    tokio::time::timeout(SAFETY, exercise(&mut client))
        .await
        .expect("calls finish in time");
    let stats = server.handle.stats();
    assert_eq!(stats.accepted, 1, "every call on one HTTP/2 connection");
    assert_eq!(stats.requests, 8);
    drop(client);
    let summary = server.summary().await;
    assert_eq!(summary.forced, 0);
}

#[tokio::test]
async fn tonic_round_trip_over_tls_alpn_h2() {
    let ca = Ca::new();
    let tls = ca.server(&["localhost"]);
    let server = AppServer::one_worker(megaconn::Server::builder().tls(tls), Greeter);
    let mut client = Client(grpc::tls_client(server.addr(), &ca).await);
    tokio::time::timeout(SAFETY, exercise(&mut client))
        .await
        .expect("calls finish in time");
    assert_eq!(server.handle.stats().accepted, 1);
    drop(client);
    server.summary().await;
}
