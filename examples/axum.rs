//! An axum `Router` served by megaconn, unchanged: swap `axum::serve` for
//! `megaconn::Server` and keep your routes, extractors and middleware.
//!
//! ```text
//! cargo run --release --example axum
//! curl http://127.0.0.1:3000/users/7
//! curl -X POST -d 'ping' http://127.0.0.1:3000/echo
//! ```

use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // megaconn logs through `tracing`: without a subscriber its warnings
    // (a slow consumer closed, a hub message dropped, a limit hit) go
    // nowhere. `RUST_LOG` filters; `info` by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let app = Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route(
            "/users/{id}",
            get(|Path(id): Path<u64>| async move { format!("user {id}\n") }),
        )
        .route("/echo", post(|body: String| async move { body }));
    let server = megaconn::Server::bind("127.0.0.1:3000".parse()?).listen()?;
    println!(
        "axum app on http://{} with {} workers (Ctrl-C or SIGTERM drains and stops)",
        server.local_addr(),
        server.workers()
    );
    server
        .serve_with_shutdown(app, megaconn::shutdown_signal()?)
        .await?;
    Ok(())
}
