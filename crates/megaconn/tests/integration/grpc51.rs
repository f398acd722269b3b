//! gRPC left from session 50's review, with tonic's own client:
//!
//! - calls still open when the drain's deadline nears end `UNAVAILABLE`
//!   (`grpc-status: 14`, which gRPC clients retry) with a message, unary
//!   (before any response) and server-streaming (after a message), where
//!   the close at the deadline left them a broken connection;
//! - `tonic::Request::remote_addr()` is the client's address under
//!   megaconn (the `tonic` cargo feature with `Builder::connect_info`),
//!   over h2c and TLS;
//! - a gRPC-web call over HTTP/1.1 whose handler panics answers as over
//!   HTTP/2: `200` with `grpc-status: 13` in the head (trailers-only),
//!   where it got a text `500`.
//!
//! Messages written by hand with `prost`'s derive and served by tonic's
//! generic `tonic::server::Grpc`, as `integration/tonic.rs` does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use megaconn::Body;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::common::{self, AppServer, SAFETY};

/// Unary: tells the test it runs, then never answers.
const STUCK: &str = "/t.D/Stuck";
/// Server streaming: one note, then nothing more, for good.
const TAIL: &str = "/t.D/Tail";
/// Unary: the caller's address as tonic's `Request::remote_addr` sees it.
#[cfg(feature = "tonic")]
const WHO: &str = "/t.D/Who";
/// Unary: the handler panics.
const BUG: &str = "/t.D/Bug";

/// What every method takes and gives.
#[derive(Clone, PartialEq, prost::Message)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
}

fn note(text: impl Into<String>) -> Note {
    Note { text: text.into() }
}

type Notes = Pin<Box<dyn futures_util::Stream<Item = Result<Note, Status>> + Send>>;

/// One call, routed by path as generated code does; `running` hears each
/// `Stuck` call's handler start.
async fn route(
    req: http::Request<Body>,
    running: mpsc::UnboundedSender<()>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Note, Note>::default());
    let path = req.uri().path().to_string();
    let response = match path.as_str() {
        STUCK => {
            let stuck = move |_: tonic::Request<Note>| {
                let _ = running.send(());
                std::future::pending::<Result<tonic::Response<Note>, Status>>()
            };
            grpc.unary(tower::service_fn(stuck), req).await
        }
        TAIL => {
            let tail = |_: tonic::Request<Note>| async {
                let once = futures_util::stream::iter([Ok(note("first"))]);
                let tail = futures_util::StreamExt::chain(once, futures_util::stream::pending());
                Ok::<_, Status>(tonic::Response::new(Box::pin(tail) as Notes))
            };
            grpc.server_streaming(tower::service_fn(tail), req).await
        }
        #[cfg(feature = "tonic")]
        WHO => {
            let who = |req: tonic::Request<Note>| async move {
                let seen = req.remote_addr().map(|a| a.to_string());
                Ok::<_, Status>(tonic::Response::new(note(seen.unwrap_or_default())))
            };
            grpc.unary(tower::service_fn(who), req).await
        }
        BUG => {
            // The test sends a note that is not empty.
            let bug = |req: tonic::Request<Note>| async move {
                assert!(req.into_inner().text.is_empty(), "a handler bug");
                Ok::<_, Status>(tonic::Response::new(note("")))
            };
            grpc.unary(tower::service_fn(bug), req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(response)
}

/// A server of [`route`] on one worker with `builder`'s settings; what
/// hears its `Stuck` handlers start.
fn serve(builder: megaconn::Builder) -> (AppServer, mpsc::UnboundedReceiver<()>) {
    let (running, started) = mpsc::unbounded_channel();
    let calls = tower::service_fn(move |req| route(req, running.clone()));
    (AppServer::one_worker(builder, calls), started)
}

/// A tonic client of the server at `addr` on one HTTP/2 connection (TLS
/// with ALPN `h2` given `tls`), and that connection's local address, which
/// is the server's peer.
async fn connect(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> (tonic::client::Grpc<Channel>, SocketAddr) {
    let local = Arc::new(Mutex::new(None));
    let seen = local.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let seen = seen.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            *seen.lock().unwrap() = Some(tcp.local_addr()?);
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://localhost:{}", addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = tokio::time::timeout(SAFETY, endpoint.connect_with_connector(connector))
        .await
        .expect("connects in time")
        .expect("connects");
    let local = local.lock().unwrap().expect("a connection was made");
    (tonic::client::Grpc::new(channel), local)
}

/// A unary call of `path`.
async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
) -> Result<Note, Status> {
    client.ready().await.expect("channel ready");
    let path = PathAndQuery::from_static(path);
    let request = tonic::Request::new(note("x"));
    Ok(client
        .unary(request, path, ProstCodec::default())
        .await?
        .into_inner())
}

/// The status megaconn ends a call with when the drain's deadline nears.
fn assert_shutting_down(status: &Status, what: &str) {
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "the server is shutting down"),
        "{what}: {status:?}"
    );
}

/// A unary call whose handler never answers and a server stream that sent
/// one message, both open when shutdown begins: a margin before
/// `shutdown_timeout` each ends `UNAVAILABLE` with its message (the unary
/// one trailers-only, the stream in trailers after its message), which
/// tonic's and grpc-go's clients retry. Before, the connection was dropped
/// under them at the deadline, and tonic reported a transport error.
#[tokio::test]
async fn calls_open_at_the_drain_deadline_end_unavailable() {
    // The margin is a tenth of it: half a second to write the trailers
    // before the worker stops polling, well over what that takes on a
    // busy machine.
    let builder = megaconn::Server::builder().shutdown_timeout(Duration::from_secs(5));
    let (server, mut started) = serve(builder);
    let (mut client, _) = connect(server.addr(), None).await;
    let stuck = {
        let mut client = client.clone();
        tokio::spawn(async move { unary(&mut client, STUCK).await })
    };
    common::next(&mut started, "the stuck call's handler runs").await;
    client.ready().await.expect("channel ready");
    let mut tail = client
        .server_streaming(
            tonic::Request::new(note("x")),
            PathAndQuery::from_static(TAIL),
            ProstCodec::default(),
        )
        .await
        .expect("the stream starts")
        .into_inner();
    let first = tokio::time::timeout(SAFETY, tail.message()).await;
    assert_eq!(
        first.expect("in time").expect("a message"),
        Some(note("first"))
    );

    server.handle.shutdown();
    let unary_end = tokio::time::timeout(SAFETY, stuck)
        .await
        .expect("the call ends in time")
        .expect("the call's task");
    assert_shutting_down(&unary_end.expect_err("no answer came"), "the unary call");
    let stream_end = tokio::time::timeout(SAFETY, tail.message())
        .await
        .expect("the stream ends in time");
    assert_shutting_down(
        &stream_end.expect_err("the stream ends"),
        "the server stream",
    );
    drop(client);
    server.summary().await;
}

/// A gRPC-web call over HTTP/1.1 (`tonic-web`'s browsers' way) whose
/// handler panics is answered as over HTTP/2: `200`, `grpc-status: 13`
/// and `grpc-message` in the head (gRPC-web's trailers-only form, a header
/// block), no body. Before, a text `500`, which a gRPC-web client reads as
/// a transport failure.
#[tokio::test]
async fn a_grpc_web_call_over_http1_whose_handler_panics_answers_grpc_internal() {
    let (server, _started) = serve(megaconn::Server::builder());
    let message = prost::Message::encode_to_vec(&note("x"));
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let head = format!(
        "POST {BUG} HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    common::grpc::assert_web_trailers_only(&mut tcp, "13", "the%20handler%20panicked").await;
    assert_eq!(server.handle.stats().panics, 1);
    server.summary().await;
}

/// With the `tonic` feature and `connect_info`, tonic's
/// `Request::remote_addr()` is the client's address, over h2c and over TLS
/// (tonic reads its own `TcpConnectInfo`, which megaconn now adds). It was
/// `None`.
#[cfg(feature = "tonic")]
#[tokio::test]
async fn tonic_sees_the_callers_address() {
    let builder = megaconn::Server::builder().connect_info(true);
    let (server, _started) = serve(builder);
    let (mut client, local) = connect(server.addr(), None).await;
    let seen = unary(&mut client, WHO).await.expect("answered");
    assert_eq!(seen.text, local.to_string(), "over h2c");
    drop(client);
    server.summary().await;

    let ca = common::tls::Ca::new();
    let builder = megaconn::Server::builder()
        .tls(ca.server(&["localhost"]))
        .connect_info(true);
    let (server, _started) = serve(builder);
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert.pem()))
        .domain_name("localhost");
    let (mut client, local) = connect(server.addr(), Some(tls)).await;
    let seen = unary(&mut client, WHO).await.expect("answered over TLS");
    assert_eq!(seen.text, local.to_string(), "over TLS");
    drop(client);
    server.summary().await;
}
