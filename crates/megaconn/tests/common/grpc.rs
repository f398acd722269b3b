//! gRPC fixtures shared by the tonic tests (`integration/tonic.rs`,
//! `integration/grpc50.rs`): tonic's generic server side of a method (the
//! messages written by hand with `prost`'s derive, no `protoc`), a tonic
//! client of a test server over cleartext HTTP/2 (prior knowledge, as gRPC
//! clients do) or over TLS with ALPN `h2`, a unary call, and the check of
//! a gRPC-web answer over HTTP/1.1 that megaconn made on its own. Each
//! test file keeps its own service and messages.

use std::net::SocketAddr;

use http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Status;
use tonic_prost::ProstCodec;

use super::tls::Ca;
use super::{read_response, read_to_close, SAFETY};

/// tonic's generic server side of a method, its messages' types inferred
/// (what `tonic-build`'s generated code builds per call).
pub fn grpc<T, U>() -> tonic::server::Grpc<ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(ProstCodec::default())
}

/// A tonic client of the server at `addr` on one cleartext HTTP/2
/// connection (connected within [`SAFETY`]).
pub async fn client(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    connect(endpoint, "connects").await
}

/// A tonic client of the server at `addr` over TLS (ALPN `h2`), trusting
/// `ca`, the server named `localhost` (connected within [`SAFETY`]).
pub async fn tls_client(addr: SocketAddr, ca: &Ca) -> tonic::client::Grpc<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert.pem()))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    connect(endpoint, "TLS handshake with ALPN h2").await
}

/// Connects `endpoint` within [`SAFETY`]; `what` names the failure.
async fn connect(endpoint: Endpoint, what: &str) -> tonic::client::Grpc<Channel> {
    let channel = tokio::time::timeout(SAFETY, endpoint.connect())
        .await
        .expect("connects in time")
        .expect(what);
    tonic::client::Grpc::new(channel)
}

/// A unary call of `path` with `request` once the channel is ready: the
/// reply's message, or the call's status.
pub async fn unary<T, U>(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    request: tonic::Request<T>,
) -> Result<U, Status>
where
    T: prost::Message + Send + Sync + 'static,
    U: prost::Message + Default + Send + Sync + 'static,
{
    client.ready().await.expect("channel ready");
    let path = PathAndQuery::from_static(path);
    let reply = client.unary(request, path, ProstCodec::default()).await?;
    Ok(reply.into_inner())
}

/// Reads the answer on `tcp` (within [`SAFETY`]) of a gRPC-web call over
/// HTTP/1.1 that megaconn ended on its own before its response began, and
/// asserts it: `200`, `content-type: application/grpc-web`, `grpc-status:
/// code` and `grpc-message: message` (percent-encoded) in the head
/// (gRPC-web's trailers-only form), no body, and then the close.
pub async fn assert_web_trailers_only(tcp: &mut tokio::net::TcpStream, code: &str, message: &str) {
    let response = read_response(tcp).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("grpc-status"), Some(code), "{response:?}");
    assert_eq!(
        response.header("grpc-message"),
        Some(message),
        "{response:?}"
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/grpc-web"),
        "{response:?}"
    );
    assert!(response.body.is_empty(), "trailers-only: {response:?}");
    assert!(read_to_close(tcp).await.is_empty(), "then closed");
}
