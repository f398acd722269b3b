//! axum 0.8 WebSocket echo peer for bench/ws-peers.sh: axum's own
//! `axum::extract::ws` (tokio-tungstenite) with its defaults, as an axum
//! user writes it.
//!
//! GET / -> "ok"; GET /ws -> upgrade; every text or binary message is echoed
//! (pings are answered by tungstenite).
//!
//! Usage: axum-ws [--listen ADDR] [--threads N]   (default 127.0.0.1:8090, 1:
//! a tokio current-thread runtime; N > 1: a multi-thread runtime).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && socket.send(msg).await.is_err() {
            break;
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn main() {
    let mut listen = "127.0.0.1:8090".to_string();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--threads" => threads = args.next().and_then(|t| t.parse().ok()).expect("--threads N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("tokio runtime");
    rt.block_on(async {
        let app = Router::new().route("/", get(|| async { "ok" })).route("/ws", get(ws));
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .expect("serve");
    });
}
