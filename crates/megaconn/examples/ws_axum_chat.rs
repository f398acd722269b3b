//! axum's `chat` example, under megaconn: the one change is the
//! `use megaconn::axum_ws::…` line (it was `use axum::extract::ws::…`), and
//! `megaconn::Server` in `main` instead of `axum::serve`.
//!
//! Each client's first text message is its user name (taken names are
//! refused); after that every text it sends goes to all clients as
//! `name: text`, through one `tokio::sync::broadcast` channel.
//!
//! ```text
//! cargo run -p megaconn --example ws_axum_chat
//! websocat ws://127.0.0.1:3000/websocket   # in two terminals
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
// The one-line change: was `use axum::extract::ws::{…};`
use megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade};
use tokio::sync::broadcast;

/// What every connection shares.
struct AppState {
    /// Names in use: a name is unique while its client is connected.
    user_set: Mutex<HashSet<String>>,
    /// Every chat line, to every connected client.
    tx: broadcast::Sender<String>,
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
    let server = megaconn::Server::bind("127.0.0.1:3000".parse()?).listen()?;
    println!("http://{}/ (chat at /websocket)", server.local_addr());
    server
        .serve_with_shutdown(app(), megaconn::shutdown_signal()?)
        .await?;
    Ok(())
}

/// The routes: a page and the chat socket.
pub fn app() -> Router {
    let (tx, _rx) = broadcast::channel(100);
    let state = Arc::new(AppState {
        user_set: Mutex::new(HashSet::new()),
        tx,
    });
    Router::new()
        .route("/", get(index))
        .route("/websocket", get(websocket_handler))
        .with_state(state)
}

async fn websocket_handler(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
) -> impl IntoResponse {
    ws.on_upgrade(|socket| websocket(socket, state))
}

/// One client: its name first, then a task each way.
async fn websocket(stream: WebSocket, state: Arc<AppState>) {
    let (mut sender, mut receiver) = stream.split();

    let mut username = String::new();
    while let Some(Ok(message)) = receiver.next().await {
        if let Message::Text(name) = message {
            check_username(&state, &mut username, &name);
            if !username.is_empty() {
                break;
            }
            let _ = sender
                .send(Message::Text("Username already taken.".into()))
                .await;
            return;
        }
    }

    // Subscribe before announcing, so the client sees its own "joined".
    let mut rx = state.tx.subscribe();
    let _ = state.tx.send(format!("{username} joined."));

    let mut send_task = tokio::spawn(async move {
        while let Ok(msg) = rx.recv().await {
            if sender.send(Message::Text(msg.into())).await.is_err() {
                break;
            }
        }
    });
    let tx = state.tx.clone();
    let name = username.clone();
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(Message::Text(text))) = receiver.next().await {
            let _ = tx.send(format!("{name}: {text}"));
        }
    });
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    };

    let _ = state.tx.send(format!("{username} left."));
    state
        .user_set
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&username);
}

/// Takes `name` for this client if nobody has it.
fn check_username(state: &AppState, string: &mut String, name: &str) {
    let mut user_set = state.user_set.lock().unwrap_or_else(|e| e.into_inner());
    if user_set.insert(name.to_owned()) {
        string.push_str(name);
    }
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>chat</title><input id=name placeholder=name>\
         <button onclick=\"ws=new WebSocket('ws://'+location.host+'/websocket');\
         ws.onopen=()=>ws.send(name.value);ws.onmessage=e=>log.textContent+=e.data+'\\n'\">join</button>\
         <input id=text onkeydown=\"if(event.key=='Enter'){ws.send(text.value);text.value=''}\">\
         <pre id=log></pre>",
    )
}
