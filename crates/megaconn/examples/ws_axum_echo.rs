//! The axum-compatible WebSocket echo that `bench/ws-peers.sh` measures:
//! the same handler as the axum peer (`bench/peers/axum-ws`), with the
//! `use megaconn::axum_ws` line, on one megaconn worker.
//!
//! GET / -> "ok"; GET /ws -> upgrade; every text or binary message is echoed
//! (pings are answered for you).
//!
//! ```text
//! cargo run --release -p megaconn --example ws_axum_echo -- --listen 127.0.0.1:8093 --workers 1
//! ```

use axum::response::Response;
use axum::routing::get;
use axum::Router;
use megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade};

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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), megaconn::BoxError> {
    let mut listen = "127.0.0.1:8093".to_string();
    let mut workers = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--workers", Some(v)) => workers = v.parse()?,
            _ => {
                return Err(
                    format!("usage: ws_axum_echo [--listen ADDR] [--workers N] ({a}?)").into(),
                )
            }
        }
    }
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/ws", get(ws));
    let server = megaconn::Server::bind(listen.parse()?)
        .workers(workers)
        .listen()?;
    println!("ws://{}/ws", server.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    server
        .serve_with_shutdown(app, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
