//! axum's `testing-websockets` example, under megaconn: the one change is the
//! `use megaconn::axum_ws::…` line (it was `use axum::extract::{ws::…,
//! WebSocketUpgrade}`), and `megaconn::Server` in `main`.
//!
//! Two echo handlers: one written against the socket, one against any
//! `Sink` + `Stream` of axum `Message`s (unit-testable with channels). Both
//! are tested, with a real client under megaconn, in `tests/ws_axum.rs`.
//!
//! ```text
//! cargo run -p megaconn --example ws_axum_testing
//! websocat ws://127.0.0.1:3000/integration-testable   # or /unit-testable
//! ```

use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
// The one-line change: was `use axum::extract::{ws::{Message, WebSocket}, WebSocketUpgrade};`
use megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade};

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
    let server = megaconn::Server::bind("127.0.0.1:3000".parse()?).listen()?;
    println!("listening on {}", server.local_addr());
    server
        .serve_with_shutdown(app(), megaconn::shutdown_signal()?)
        .await?;
    Ok(())
}

/// The routes: the same echo written two ways.
pub fn app() -> Router {
    Router::new()
        .route("/integration-testable", get(integration_testable_handler))
        .route("/unit-testable", get(unit_testable_handler))
}

async fn integration_testable_handler(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(integration_testable_handle_socket)
}

/// Echoes each text message as "You said: …".
async fn integration_testable_handle_socket(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        if let Message::Text(msg) = msg {
            let reply = Message::Text(format!("You said: {msg}").into());
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    }
}

async fn unit_testable_handler(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|socket| {
        let (write, read) = socket.split();
        unit_testable_handle_socket(write, read)
    })
}

/// The same echo over any sink and stream of messages.
pub async fn unit_testable_handle_socket<W, R>(mut write: W, mut read: R)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(Ok(msg)) = read.next().await {
        if let Message::Text(msg) = msg {
            let reply = Message::Text(format!("You said: {msg}").into());
            if write.send(reply).await.is_err() {
                break;
            }
        }
    }
}
