//! TLS and cleartext listeners in one server (`Builder::listen_tls_on`): each
//! listener speaks what it was given, a parked cleartext connection wakes up
//! as cleartext, and a TLS address without a certificate is refused at
//! `listen()`.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::read_response;
use megaconn::TlsConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A CA-signed certificate for localhost: (server config, client config).
fn certificates() -> (TlsConfig, Arc<ClientConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server =
        TlsConfig::from_pem(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    (server, Arc::new(client))
}

#[tokio::test]
async fn tls_and_cleartext_listeners_serve_side_by_side() {
    let (tls, client) = certificates();
    let server = megaconn::Server::builder()
        .workers(1)
        .park_idle_after(Some(Duration::from_millis(20)))
        .tls(tls)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_tls_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("binds");
    let [plain, secure]: [SocketAddr; 2] = server.local_addrs().try_into().unwrap();
    assert!(!server.is_tls(plain), "listen_on stays cleartext");
    assert!(server.is_tls(secure), "listen_tls_on is TLS");
    let handle = server.handle();
    let (app, _probe) = common::test_app();
    let task = tokio::spawn(server.serve(app));

    // Cleartext, and again after the connection was parked: it wakes up
    // through the same path as a new connection, which must not take it for
    // a TLS one.
    let mut s = TcpStream::connect(plain).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.body, b"Hello, World!");
    common::wait_stats(&handle, "the cleartext connection parked", |s| {
        s.connections_parked >= 1
    })
    .await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.body, b"Hello, World!");

    // TLS on the other listener.
    let mut tls = common::tls::connect(secure, client, "localhost").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut tls).await.body, b"Hello, World!");

    drop((s, tls));
    common::shut_down(&handle, task).await.unwrap();
}

#[test]
fn a_tls_listener_without_a_certificate_is_refused() {
    let err = megaconn::Server::builder()
        .workers(1)
        .listen_tls_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .unwrap_err();
    assert!(matches!(err, megaconn::Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("Builder::tls"), "{err}");
}
