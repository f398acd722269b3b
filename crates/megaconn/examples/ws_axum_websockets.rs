//! axum's `websockets` example, under megaconn: the one change is the
//! `use megaconn::axum_ws::…` line (it was `use axum::extract::ws::…`), and
//! `megaconn::Server` in `main` instead of `axum::serve`, serving the same
//! `app.into_make_service_with_connect_info::<SocketAddr>()`.
//!
//! A client connects to `/ws`; the server pings it, reads one message, greets
//! it (with the address `ConnectInfo` saw) a few times, then splits the socket:
//! one task pushes messages and finally a close, the other prints what the
//! client sends.
//!
//! ```text
//! cargo run -p megaconn --example ws_axum_websockets
//! websocat ws://127.0.0.1:3000/ws
//! ```

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
// The one-line change: was `use axum::extract::ws::{…};`
use megaconn::axum_ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};

/// Greetings sent before the socket is split.
pub const GREETINGS: usize = 3;
/// Messages the push task sends before it closes.
pub const PUSHES: usize = 5;
/// The pause between pushed messages.
const PAUSE: Duration = Duration::from_millis(20);

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
    println!("ws://{}/ws", server.local_addr());
    // As under `axum::serve`: `ConnectInfo<SocketAddr>` reaches the handler.
    server
        .serve_with_shutdown(
            app().into_make_service_with_connect_info::<SocketAddr>(),
            megaconn::shutdown_signal()?,
        )
        .await?;
    Ok(())
}

/// The routes: `/ws` upgrades.
pub fn app() -> Router {
    Router::new().route("/ws", get(ws_handler))
}

/// The last point with the HTTP request: the client's address and user
/// agent, then the upgrade.
async fn ws_handler(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> impl IntoResponse {
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unknown browser");
    println!("`{user_agent}` at {addr} connected.");
    ws.on_upgrade(move |socket| handle_socket(socket, addr))
}

/// One connection's state machine (one task per connection).
async fn handle_socket(mut socket: WebSocket, who: SocketAddr) {
    if socket
        .send(Message::Ping(bytes::Bytes::from_static(&[1, 2, 3])))
        .await
        .is_err()
    {
        println!("Could not send ping {who}!");
        return;
    }
    // Likely the pong for our ping, or a hello from the client.
    if let Some(msg) = socket.recv().await {
        let Ok(msg) = msg else {
            println!("client {who} abruptly disconnected");
            return;
        };
        if process_message(msg, who).is_break() {
            return;
        }
    }
    for i in 1..=GREETINGS {
        let text = format!("Hi {who}, {i} times!");
        if socket.send(Message::Text(text.into())).await.is_err() {
            println!("client {who} abruptly disconnected");
            return;
        }
    }

    // Split: push messages from one task while the other receives.
    let (mut sender, mut receiver) = socket.split();
    let mut send_task = tokio::spawn(async move {
        for i in 0..PUSHES {
            let text = format!("Server message {i} ...");
            if sender.send(Message::Text(text.into())).await.is_err() {
                return i;
            }
            tokio::time::sleep(PAUSE).await;
        }
        println!("Sending close to {who}...");
        let close = Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: Utf8Bytes::from_static("Goodbye"),
        }));
        if let Err(e) = sender.send(close).await {
            println!("Could not send Close due to {e}, probably it is ok?");
        }
        PUSHES
    });
    let mut recv_task = tokio::spawn(async move {
        let mut count = 0;
        while let Some(Ok(msg)) = receiver.next().await {
            count += 1;
            if process_message(msg, who).is_break() {
                break;
            }
        }
        count
    });
    // Whichever ends first stops the other.
    tokio::select! {
        sent = &mut send_task => {
            println!("{} messages sent to {who}", sent.unwrap_or(0));
            recv_task.abort();
        }
        received = &mut recv_task => {
            println!("Received {} messages", received.unwrap_or(0));
            send_task.abort();
        }
    }
    println!("Websocket context {who} destroyed");
}

/// Prints a message; a close ends the connection.
fn process_message(msg: Message, who: SocketAddr) -> ControlFlow<(), ()> {
    match msg {
        Message::Text(t) => println!(">>> {who} sent str: {t:?}"),
        Message::Binary(d) => println!(">>> {who} sent {} bytes: {d:?}", d.len()),
        Message::Close(c) => {
            match c {
                Some(cf) => println!(
                    ">>> {who} sent close with code {} and reason `{}`",
                    cf.code, cf.reason
                ),
                None => println!(">>> {who} somehow sent close message without CloseFrame"),
            }
            return ControlFlow::Break(());
        }
        Message::Pong(v) => println!(">>> {who} sent pong with {v:?}"),
        // Pings are answered for you; their payload shows here.
        Message::Ping(v) => println!(">>> {who} sent ping with {v:?}"),
    }
    ControlFlow::Continue(())
}
