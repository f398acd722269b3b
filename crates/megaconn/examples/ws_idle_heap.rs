//! What an idle WebSocket keeps on the heap: the same echo on megaconn's
//! axum-compatible socket (`--mode megaconn`) or on axum's own
//! (`--mode axum`: `axum::serve` with `axum::extract::ws`, i.e.
//! tokio-tungstenite with its defaults), under a counting global allocator.
//!
//! ```text
//! cargo run --release -p megaconn --example ws_idle_heap -- --mode megaconn --listen 127.0.0.1:23080
//! megaconn hold ws://127.0.0.1:23080/ws -c 2000 --interval 2s --ws-heartbeat text --send hello  # another shell
//! ```
//!
//! It prints the live heap per open WebSocket, and the allocation sizes every
//! socket holds (see `heap_count`), whenever the count has been steady for
//! two seconds. A text heartbeat makes every socket read and write a message
//! first, so buffers that outlive a message show.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

#[path = "heap_count/mod.rs"]
mod heap_count;
use heap_count::arg;

/// WebSockets open now, and upgraded so far.
#[derive(Default)]
struct Open {
    now: AtomicI64,
    total: AtomicU64,
}

/// Counts the socket open while the echo runs.
struct Counted(Arc<Open>);

impl Counted {
    fn new(open: &Arc<Open>) -> Counted {
        open.now.fetch_add(1, Relaxed);
        open.total.fetch_add(1, Relaxed);
        Counted(Arc::clone(open))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Relaxed);
    }
}

/// The echo route on megaconn's socket.
fn megaconn_app(open: Arc<Open>) -> Router {
    use megaconn::axum_ws::{Message, WebSocketUpgrade};
    Router::new().route(
        "/ws",
        get(move |ws: WebSocketUpgrade| {
            let open = Arc::clone(&open);
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    let _counted = Counted::new(&open);
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, Message::Text(_) | Message::Binary(_))
                            && socket.send(msg).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }
        }),
    )
}

/// The same echo on axum's own socket.
fn axum_app(open: Arc<Open>) -> Router {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    Router::new().route(
        "/ws",
        get(move |ws: WebSocketUpgrade| {
            let open = Arc::clone(&open);
            async move {
                ws.on_upgrade(move |mut socket| async move {
                    let _counted = Counted::new(&open);
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, Message::Text(_) | Message::Binary(_))
                            && socket.send(msg).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }
        }),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: std::net::SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:23080".into())
        .parse()?;
    let mode = arg("--mode").unwrap_or_else(|| "megaconn".into());
    let open = Arc::new(Open::default());
    match mode.as_str() {
        "megaconn" => {
            let server = megaconn::Server::bind(listen).workers(1).listen()?;
            tokio::spawn(server.serve(megaconn_app(Arc::clone(&open))));
        }
        "axum" => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let app = axum_app(Arc::clone(&open));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        other => return Err(format!("--mode megaconn|axum, not {other}").into()),
    }
    println!("{mode}: ws://{listen}/ws");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let counts = Arc::clone(&open);
    heap_count::report_when_steady(
        move || (counts.now.load(Relaxed), counts.total.load(Relaxed)),
        String::new,
    )
    .await;
    Ok(())
}
