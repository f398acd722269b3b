//! A framed echo server in a page: a line protocol and a length-prefixed one,
//! served per message by one [`FramedHandler`], with idle connections parked
//! outside the runtime between messages.
//!
//! ```text
//! cargo run -p megaconn --example framed_echo [-- LINES_ADDR [FRAMES_ADDR]]
//! nc 127.0.0.1 7000       # type PING, or anything
//! ```
//!
//! Each connection is greeted with `hello: PING, or anything to echo`. On
//! the line listener (default 127.0.0.1:7000) `PING` is answered `PONG`
//! and any other line `echo: <line>`; the length-prefixed listener (default
//! 127.0.0.1:7001; a 4-byte big-endian length, then the body) does the same
//! per frame. A peer silent for 60 s is closed; Ctrl-C or SIGTERM shuts down gracefully.
//!
//! Pushing to a device from elsewhere (an IoT gateway's command) goes
//! through `server.hub()` by `session.id()`; to learn whether it went,
//! `hub.send_confirmed(id, frame).await` is `Ok` once the device's socket
//! took it whole, else `Err(Undelivered)` says why (gone, slow, shutdown).

use bytes::Bytes;
use megaconn::{CloseReason, FramedHandler, Framing, Server, Session};
use std::time::Duration;

/// The demo protocol. Its per-connection state is the number of messages
/// answered, kept while the connection is parked.
struct Echo;

impl FramedHandler for Echo {
    type State = u32;

    fn on_open(&self, _answered: &mut u32, session: &Session) {
        session.send("hello: PING, or anything to echo");
    }

    async fn on_message(&self, answered: &mut u32, frame: Bytes, _: &Session) -> Option<Bytes> {
        *answered += 1;
        if frame.trim_ascii() == b"PING" {
            return Some(Bytes::from_static(b"PONG"));
        }
        let mut reply = b"echo: ".to_vec();
        reply.extend_from_slice(&frame);
        Some(reply.into())
    }

    fn on_close(&self, answered: u32, reason: CloseReason) {
        println!("connection closed after {answered} messages: {reason}");
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
    let mut args = std::env::args().skip(1);
    let lines = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let frames = args.next().unwrap_or_else(|| "127.0.0.1:7001".into());
    let server = Server::builder()
        .listen_framed_on(lines.parse().expect("LINES_ADDR"), Framing::lines())
        .listen_framed_on(
            frames.parse().expect("FRAMES_ADDR"),
            Framing::length_prefixed(4),
        )
        .heartbeat_timeout(Some(Duration::from_secs(60)))
        .listen()?;
    println!(
        "lines on {}, length-prefixed frames on {}",
        server.local_addrs()[0],
        server.local_addrs()[1]
    );
    let summary = server
        .serve_framed_with_shutdown(Echo, megaconn::shutdown_signal()?)
        .await?;
    println!("shut down: {summary:?}");
    Ok(())
}
