//! The axum-compatible WebSocket echo that `bench/ws-peers.sh` measures:
//! the same handler as the axum peer (`bench/peers/axum-ws`), with the
//! `use megaconn::axum_ws` line, on one megaconn worker.
//!
//! GET / -> "ok"; GET /ws -> upgrade; every text or binary message is echoed
//! (pings are answered for you). GET /ws/chat -> upgrade; a text message from
//! one goes to every /ws/chat connection (the broadcast the bench times).
//!
//! Both keep `megaconn::axum_ws`'s default limits (a message of 1 MiB at
//! most, where axum's is 64 MiB), which `bench/attack-memory.sh` measures;
//! `--max-message-size BYTES` raises /ws's, as an app whose messages are
//! larger does (`.ci/autobahn` gives it the 16 MiB the Autobahn cases of
//! section 9 send).
//!
//! ```text
//! cargo run --release -p megaconn --example ws_axum_echo -- --listen 127.0.0.1:8093 --workers 1
//! ```

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use megaconn::axum_ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use tokio::sync::broadcast;

async fn ws(upgrade: WebSocketUpgrade, max_message_size: Option<usize>) -> Response {
    match max_message_size {
        Some(max) => upgrade.max_message_size(max),
        None => upgrade,
    }
    .on_upgrade(echo)
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), megaconn::BoxError> {
    // megaconn logs through `tracing`: without a subscriber its warnings
    // (a slow consumer closed, a hub message dropped, a limit hit) go
    // nowhere. `RUST_LOG` filters; `info` by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut listen = "127.0.0.1:8093".to_string();
    let mut workers = 1usize;
    let mut max_message_size = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--workers", Some(v)) => workers = v.parse()?,
            ("--max-message-size", Some(v)) => max_message_size = Some(v.parse()?),
            _ => {
                return Err(format!(
                    "usage: ws_axum_echo [--listen ADDR] [--workers N] \
                     [--max-message-size BYTES] ({a}?)"
                )
                .into())
            }
        }
    }
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/ws",
            get(move |upgrade: WebSocketUpgrade| ws(upgrade, max_message_size)),
        )
        .route("/ws/chat", get(chat))
        .with_state(broadcast::channel(16).0);
    let server = megaconn::Server::bind(listen.parse()?)
        .workers(workers)
        .listen()?;
    println!("ws://{}/ws", server.local_addr());
    server
        .serve_with_shutdown(app, megaconn::shutdown_signal()?)
        .await?;
    Ok(())
}
