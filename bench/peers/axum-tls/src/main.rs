//! axum 0.8 over rustls: the "axum + rustls" peer of bench/idle-memory-tls.sh.
//!
//! GET / -> "Hello, World!" (text/plain); POST /echo -> echoes the body.
//! HTTPS with ALPN `h2` and `http/1.1` (hyper-util's auto builder serves
//! whichever the client speaks), rustls on ring with its default
//! `ServerConfig` (session tickets off, a 256-entry session cache): the way an
//! axum app usually terminates TLS itself (tokio-rustls, as axum-server does).
//!
//! Usage: axum-tls --cert FILE --key FILE [--listen ADDR] [--threads N]
//! Defaults: --listen 127.0.0.1:8443, --threads 1 (tokio current-thread runtime).

use std::sync::Arc;
use std::time::Duration;

use axum::{http::header, response::IntoResponse, routing::{get, post}, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

async fn hello() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain")], "Hello, World!")
}

async fn echo(body: axum::body::Bytes) -> axum::body::Bytes {
    body
}

/// Time a client has to finish the handshake (as megaconn's default).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_config(cert: &str, key: &str) -> Arc<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("private key PEM");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn main() {
    let mut listen = "127.0.0.1:8443".to_string();
    let mut threads = 1usize;
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" | "-l" => listen = args.next().expect("--listen needs ADDR"),
            "--threads" | "-t" => {
                threads = args.next().and_then(|s| s.parse().ok()).expect("--threads needs N")
            }
            "--cert" => cert = args.next(),
            "--key" => key = args.next(),
            "-h" | "--help" => {
                println!("usage: axum-tls --cert FILE --key FILE [--listen ADDR] [--threads N]");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let config = tls_config(
        &cert.expect("--cert FILE is required"),
        &key.expect("--key FILE is required"),
    );
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        let app = Router::new().route("/", get(hello)).route("/echo", post(echo));
        let acceptor = TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        println!("listening on https://{}", listener.local_addr().unwrap());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
}
