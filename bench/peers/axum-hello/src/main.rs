//! axum 0.8 "Hello, World!" peer for the megaconn benchmarks.
//!
//! GET / -> "Hello, World!" (text/plain); POST /echo -> echoes the body.
//!
//! Usage: axum-hello [--listen ADDR] [--threads N] [--tls-cert FILE --tls-key FILE]
//! Defaults: --listen 127.0.0.1:8083 (or $LISTEN), --threads 1 (or $THREADS).
//! With 1 thread it runs on a tokio current-thread runtime; with N>1 on a
//! multi-thread runtime with N workers.
//!
//! Cleartext it serves HTTP/1.1 and h2c with prior knowledge (`axum::serve`).
//! With --tls-cert/--tls-key it serves TLS (rustls on ring, TLS 1.2/1.3, ALPN
//! h2 and http/1.1, a 20,000-session cache and rotating tickets for
//! resumption, as megaconn and nginx do) through hyper-util's auto builder.

use std::sync::Arc;

use axum::{http::header, response::IntoResponse, routing::{get, post}, serve::ListenerExt, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

async fn hello() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain")], "Hello, World!")
}

/// POST /echo: answers with the request body (idle-memory.sh's 4 KiB phase).
async fn echo(body: axum::body::Bytes) -> axum::body::Bytes {
    body
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// The rustls server configuration from PEM files.
fn tls_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("read --tls-cert")
        .collect::<Result<_, _>>()
        .expect("parse --tls-cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("read --tls-key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(20_000);
    config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
    Arc::new(config)
}

/// Accepts TLS connections and serves each with hyper's HTTP/1.1 + HTTP/2 builder.
async fn serve_tls(listener: tokio::net::TcpListener, app: Router, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn main() {
    let mut listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8083".to_string());
    let mut threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" | "-l" => listen = args.next().expect("--listen needs ADDR"),
            "--threads" | "-t" => {
                threads = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--threads needs N")
            }
            "--tls-cert" => cert = Some(args.next().expect("--tls-cert needs FILE")),
            "--tls-key" => key = Some(args.next().expect("--tls-key needs FILE")),
            "-h" | "--help" => {
                println!("usage: axum-hello [--listen ADDR] [--threads N] [--tls-cert FILE --tls-key FILE]");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some(tls_config(&c, &k)),
        (None, None) => None,
        _ => panic!("--tls-cert and --tls-key go together"),
    };
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        let app = Router::new()
            .route("/", get(hello))
            .route("/echo", post(echo));
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{}", listener.local_addr().unwrap());
        if let Some(config) = tls {
            serve_tls(listener, app, config).await;
            return;
        }
        // Same as Go net/http and nginx (tcp_nodelay on): no Nagle delay.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .expect("serve");
    });
}
