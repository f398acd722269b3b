//! A push gateway's two held responses, for `bench/sse-memory.sh`: an axum
//! `Sse` stream that sends one event and then waits (`/sse`), and a
//! long-poll whose handler awaits an event that does not come within the
//! run (`/poll`), served by megaconn (`--mode megaconn`, one worker) or by
//! `axum::serve` (`--mode axum`) for comparison; `--mode native` serves
//! `/sse` with megaconn's own [`SseRoute`] instead (the same first event,
//! sent by `on_open`; the stream then parks), with the server's hub made,
//! so each stream's id is tracked as a gateway's would be.
//! `--tls` serves megaconn (either mode: `megaconn` or `native`) over TLS
//! instead (a throwaway self-signed certificate, ALPN `h2` and
//! `http/1.1`: the client picks HTTP/1.1 or HTTP/2; a native stream over
//! HTTPS/1.1 parks with its TLS session, one over HTTP/2 is not native
//! and has no fallback here); a cleartext megaconn
//! listener takes HTTP/2 with prior knowledge (h2c) as well as HTTP/1.1.
//!
//! ```text
//! cargo build --release -p megaconn --example sse_hold
//! target/release/examples/sse_hold --listen 127.0.0.1:23180 --mode megaconn|native [--tls]
//! ```
//!
//! Every second in which they changed it prints megaconn's
//! `buffers_checked_out`, requests handled and connections parked
//! (`stats buffers=B requests=R parked=P`), so the script can tell when all
//! its requests are in and what they hold.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, StreamExt};

/// `/sse`: one event, then a stream that waits (as a gateway's between two
/// pushes); `/poll`: a handler that waits an hour for its event.
fn app() -> Router {
    Router::new()
        .route(
            "/sse",
            get(|| async {
                let first =
                    stream::once(async { Ok::<_, Infallible>(Event::default().data("hello")) });
                Sse::new(first.chain(stream::pending()))
            }),
        )
        .route("/poll", get(poll))
}

/// A long-poll whose event does not come within the run.
async fn poll() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "event"
}

/// The native stream: its first event, then parked until the run ends.
struct Hello;

impl megaconn::SseHandler for Hello {
    fn on_open(&self, _: &http::request::Parts, session: &megaconn::Session) {
        session.send("hello");
    }
}

/// [`app`] with `/sse` served natively.
fn native_app() -> Router {
    Router::new()
        .route_service("/sse", megaconn::SseRoute::new(Hello))
        .route("/poll", get(poll))
}

/// A throwaway self-signed certificate for `localhost` (the script's
/// client does not check it).
fn self_signed() -> Result<megaconn::TlsConfig, Box<dyn std::error::Error>> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    Ok(megaconn::TlsConfig::from_pem(
        cert.cert.pem().as_bytes(),
        cert.key_pair.serialize_pem().as_bytes(),
    )?)
}

/// The value after `name` on the command line.
fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: std::net::SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:23180".into())
        .parse()?;
    let mode = arg("--mode").unwrap_or_else(|| "megaconn".into());
    let tls = std::env::args().any(|a| a == "--tls");
    let handle = match mode.as_str() {
        "megaconn" | "native" => {
            let builder = if tls {
                megaconn::Server::builder()
                    .tls(self_signed()?)
                    .listen_tls_on(listen)
            } else {
                megaconn::Server::bind(listen)
            };
            let mut server = builder.workers(1).listen()?;
            let handle = server.handle();
            if mode == "native" {
                // A gateway pushes: the hub tracks each stream's id.
                let _hub = server.hub();
                tokio::spawn(server.serve(native_app()));
            } else {
                tokio::spawn(server.serve(app()));
            }
            Some(handle)
        }
        "axum" if tls => return Err("--tls serves megaconn only (--mode megaconn|native)".into()),
        "axum" => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tokio::spawn(async move { axum::serve(listener, app()).await });
            None
        }
        other => return Err(format!("--mode megaconn|native|axum, not {other}").into()),
    };
    let scheme = if tls { "https" } else { "http" };
    println!("{mode}: {scheme}://{listen}/sse and /poll");
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(handle) = &handle {
            let s = handle.stats();
            let now = (s.buffers_checked_out, s.requests, s.connections_parked);
            if last != Some(now) {
                println!(
                    "stats buffers={} requests={} parked={}",
                    now.0, now.1, now.2
                );
                last = Some(now);
            }
        }
    }
}
