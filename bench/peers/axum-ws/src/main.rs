//! axum 0.8 WebSocket echo peer for bench/ws-peers.sh: axum's own
//! `axum::extract::ws` (tokio-tungstenite) with its defaults, as an axum
//! user writes it.
//!
//! GET / -> "ok"; GET /ws -> upgrade; every text or binary message is echoed
//! (pings are answered by tungstenite). GET /ws/chat -> upgrade; a text
//! message from one goes to every /ws/chat connection.
//!
//! Usage: axum-ws [--listen ADDR] [--threads N]   (default 127.0.0.1:8090, 1:
//! a tokio current-thread runtime; N > 1: a multi-thread runtime).

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::sync::broadcast;

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

/// GET /ws/chat: axum's chat example's shape (a tokio broadcast channel) in
/// one task per connection: a text message from this client goes to the
/// channel, what the channel carries goes to this client.
async fn chat(
    upgrade: WebSocketUpgrade,
    State(tx): State<broadcast::Sender<Utf8Bytes>>,
) -> Response {
    upgrade.on_upgrade(move |socket| chat_member(socket, tx))
}

async fn chat_member(mut socket: WebSocket, tx: broadcast::Sender<Utf8Bytes>) {
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let _ = tx.send(text);
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            text = rx.recv() => match text {
                Ok(text) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
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
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|t| t.parse().ok())
                    .expect("--threads N")
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
    rt.block_on(async {
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/ws", get(ws))
            .route("/ws/chat", get(chat))
            .with_state(broadcast::channel(16).0);
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .expect("serve");
    });
}
