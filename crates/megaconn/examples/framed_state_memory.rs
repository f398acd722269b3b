//! What a parked framed connection costs at W workers with a state of S
//! bytes: a length-prefixed echo (4-byte header, the CLI's `--tcp-framing
//! u32`) whose per-connection state is S bytes, on W workers, for
//! `bench/framed-state-memory.sh` (session 41: the side table's slots were
//! per descriptor per worker, W × (16 + S) B per connection).
//!
//! ```text
//! cargo run --release -p megaconn --example framed_state_memory -- ADDR WORKERS STATE_BYTES
//! megaconn hold tcp://ADDR -c 15000 --tcp-framing u32 --interval 30s -d 30s
//! ```
//!
//! STATE_BYTES is one of 0, 8, 40, 256 (a `[u8; N]` state, touched by each
//! message so it is not optimised away). Idle connections park after 2 s.

use bytes::Bytes;
use megaconn::{FramedHandler, Framing, Server, Session};
use std::time::Duration;

/// An echo keeping `N` bytes per connection.
struct Echo<const N: usize>;

/// `N` bytes (an array of any length has no `Default`).
struct State<const N: usize>([u8; N]);

impl<const N: usize> Default for State<N> {
    fn default() -> Self {
        State([0; N])
    }
}

impl<const N: usize> FramedHandler for Echo<N> {
    type State = State<N>;

    async fn on_message(&self, state: &mut State<N>, frame: Bytes, _: &Session) -> Option<Bytes> {
        if let Some(first) = state.0.first_mut() {
            *first = first.wrapping_add(1);
        }
        Some(frame)
    }
}

async fn serve<const N: usize>(addr: std::net::SocketAddr, workers: usize) {
    let server = Server::builder()
        .workers(workers)
        .listen_framed_on(addr, Framing::length_prefixed(4))
        .heartbeat_timeout(Some(Duration::from_secs(120)))
        .park_idle_after(Some(Duration::from_secs(2)))
        .listen()
        .expect("listen");
    println!(
        "framed echo on {}, {workers} workers, {N}-byte state, pid {}",
        server.local_addrs()[0],
        std::process::id()
    );
    let shutdown = megaconn::shutdown_signal().expect("signals");
    server
        .serve_framed_with_shutdown(Echo::<N>, shutdown)
        .await
        .expect("serve");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7300".into());
    let addr = addr.parse().expect("ADDR");
    let workers = args.next().map_or(1, |w| w.parse().expect("WORKERS"));
    match args.next().as_deref().unwrap_or("0") {
        "0" => serve::<0>(addr, workers).await,
        "8" => serve::<8>(addr, workers).await,
        "40" => serve::<40>(addr, workers).await,
        "256" => serve::<256>(addr, workers).await,
        other => panic!("STATE_BYTES {other}: one of 0, 8, 40, 256"),
    }
}
