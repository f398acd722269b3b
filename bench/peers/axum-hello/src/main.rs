//! axum 0.8 "Hello, World!" peer for the megaconn benchmarks.
//!
//! GET / -> "Hello, World!" (text/plain); POST /echo -> echoes the body.
//!
//! Usage: axum-hello [--listen ADDR] [--threads N]
//! Defaults: --listen 127.0.0.1:8083 (or $LISTEN), --threads 1 (or $THREADS).
//! With 1 thread it runs on a tokio current-thread runtime; with N>1 on a
//! multi-thread runtime with N workers.

use axum::{http::header, response::IntoResponse, routing::{get, post}, serve::{Listener, ListenerExt}, Router};

async fn hello() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain")], "Hello, World!")
}

/// POST /echo: answers with the request body (idle-memory.sh's 4 KiB phase).
async fn echo(body: axum::body::Bytes) -> axum::body::Bytes {
    body
}

fn main() {
    let mut listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8083".to_string());
    let mut threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
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
            "-h" | "--help" => {
                println!("usage: axum-hello [--listen ADDR] [--threads N]");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
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
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind")
            // Same as Go net/http and nginx (tcp_nodelay on): no Nagle delay.
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        println!("listening on http://{}", listener.local_addr().unwrap());
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            })
            .await
            .expect("serve");
    });
}
