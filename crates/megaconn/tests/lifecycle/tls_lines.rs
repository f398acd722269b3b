//! The lines a refused TLS client logs, which an operator reads to find
//! the client and what to fix: a client certificate refused names its
//! reason (the label of `megaconn_tls_client_cert_refusals_total`), and a
//! plain HTTP request to a TLS port says so (and how it was answered).
//! Here because they need this binary's log capture. Each client comes
//! from an address of its own, which its line names (`peer=`): another
//! test's refused client logs the same words.

use megaconn::{ClientAuth, ClientCa, TlsConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::tls::{handshake, Ca};
use super::common::{connect_from_own_address, TestServer, SAFETY};
use super::{capture_log, wait_for_line, Whose};

/// A one-worker TLS server of `ca`'s, with `auth`.
async fn tls_server(ca: &Ca, auth: ClientAuth) -> TestServer {
    let leaf = ca.leaf(&["localhost"]);
    let tls = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .unwrap()
        .client_auth(auth)
        .unwrap();
    TestServer::start(megaconn::Server::builder().workers(1).tls(tls)).await
}

/// A device whose certificate another CA issued is refused, and the line
/// names why as the metric's label does: `unknown_ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_s_line_names_its_reason() {
    capture_log();
    let ca = Ca::new();
    let devices = Ca::named("devices");
    let strangers = Ca::named("strangers");
    let server = tls_server(
        &ca,
        ClientAuth::Required(ClientCa::from_pem(devices.cert.pem().as_bytes())),
    )
    .await;
    let stranger = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["stranger.local".into()])
        .unwrap()
        .signed_by(&stranger, &strangers.cert, &strangers.key)
        .unwrap();
    let identity = (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(stranger.serialize_der())),
    );
    let config = ca.client_as(&[b"http/1.1"], Some(identity));
    let tcp = connect_from_own_address(server.addr).await;
    let peer = tcp.local_addr().unwrap();
    // TLS 1.3: the client's handshake is done before the server has read
    // its certificate; the refusal comes as an alert at its first read.
    if let Ok(mut tls) = handshake(tcp, config, "localhost").await {
        let _ = tls
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(SAFETY, tls.read_to_end(&mut rest)).await;
    }
    wait_for_line(
        Whose::Peer(peer),
        "TLS handshake refused the client's certificate: unknown_ca (",
    )
    .await;
    server
        .wait_stats("the refusal counted", |s| {
            s.tls_client_cert_refusals
                .iter()
                .any(|&(reason, n)| reason == "unknown_ca" && n == 1)
        })
        .await;
    server.stop().await;
}

/// A plain HTTP request to a TLS port logs a line that says what came and
/// what it was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_request_to_a_tls_port_is_logged_as_such() {
    capture_log();
    let ca = Ca::new();
    let server = tls_server(&ca, ClientAuth::Off).await;
    let mut tcp = connect_from_own_address(server.addr).await;
    let peer = tcp.local_addr().unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer)).await;
    wait_for_line(
        Whose::Peer(peer),
        "plain HTTP request sent to a TLS port: answered 400",
    )
    .await;
    server.stop().await;
}
