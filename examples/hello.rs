//! The smallest megaconn server: a `tower::service_fn` answering every request.
//!
//! ```text
//! cargo run --release --example hello
//! curl http://127.0.0.1:3000/
//! ```

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use megaconn::{Body, Server};

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
    let hello = tower::service_fn(|req: http::Request<Body>| async move {
        let text = format!("Hello from megaconn! You asked for {}\n", req.uri().path());
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
    });
    let server = Server::bind("127.0.0.1:3000".parse()?)
        .workers(2)
        .idle_timeout(Some(Duration::from_secs(30)))
        .listen()?;
    println!(
        "listening on http://{} (Ctrl-C or SIGTERM drains and stops)",
        server.local_addr()
    );
    let summary = server
        .serve_with_shutdown(hello, megaconn::shutdown_signal()?)
        .await?;
    println!("requests served: {}", summary.requests);
    Ok(())
}
