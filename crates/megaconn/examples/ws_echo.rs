//! A native WebSocket echo server in a page: a [`WebSocketHandler`] mounted
//! with [`WebSocketRoute`] on every path of an axum router, idle connections
//! parked outside the runtime between messages. It is also the server the
//! Autobahn conformance cases run against (`.ci/autobahn`).
//!
//! ```text
//! cargo run -p megaconn --example ws_echo [-- ADDR]
//! websocat ws://127.0.0.1:9001/
//! ```
//!
//! Every message is sent back as it came (text as text, binary as binary),
//! compressed when the client offers permessage-deflate.
//! Ctrl-C or SIGTERM shuts down gracefully (open WebSockets get a 1001 close).

use megaconn::{Server, WebSocketHandler, WebSocketRoute, WsMessage, WsSession};

/// Echoes every message.
struct Echo;

impl WebSocketHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }
}

#[tokio::main]
async fn main() -> Result<(), megaconn::Error> {
    // megaconn logs through `tracing`: without a subscriber its warnings
    // (a slow consumer closed, a hub message dropped, a limit hit) go
    // nowhere. `RUST_LOG` filters; `info` by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    // The Autobahn cases of section 9 send messages of up to 16 MiB; the
    // route's default bound is 1 MiB (`DEFAULT_WS_MAX_MESSAGE_BYTES`).
    let route = WebSocketRoute::new(Echo)
        .permessage_deflate(true)
        .max_message_bytes(16 << 20);
    let app = axum::Router::new().fallback_service(route);
    let server = Server::builder()
        .listen_on(addr.parse().expect("ADDR is host:port"))
        .listen()?;
    println!("WebSocket echo on ws://{}/", server.local_addr());
    server
        .serve_with_shutdown(app, megaconn::shutdown_signal()?)
        .await?;
    Ok(())
}
