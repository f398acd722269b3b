//! Where an idle TLS connection's bytes go: a megaconn TLS server (one
//! worker) under a counting global allocator. It reports the live heap per
//! open connection and the allocation sizes that every connection holds.
//!
//! ```text
//! tls_idle_heap --listen 127.0.0.1:38444 --cert cert.pem --key key.pem
//! tls_hold --connect 127.0.0.1:38444 -n 5000 [--h2]       # in another shell
//! ```
//!
//! Whenever the number of open connections has been steady for two seconds
//! it prints: live heap bytes and allocations against the baseline (taken
//! before the first connection), divided by the connections open, and each
//! allocation size held live by at least half as many blocks as there are
//! connections ("size × count"): that names the per-connection structures
//! (rustls' 4,101-byte deframer buffer, h2's 16 KiB write buffer, the task
//! cell, ...). Heap bytes are what the program asked for; RSS adds the
//! allocator's headers, rounding and fragmentation on top.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use megaconn::{Body, Server, TlsConfig};

/// Sizes tracked one by one; larger allocations share the last slot.
const TRACKED: usize = 65_536;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
static BY_SIZE: [AtomicI64; TRACKED] = [const { AtomicI64::new(0) }; TRACKED];

fn track(size: usize, delta: i64) {
    LIVE_BYTES.fetch_add(delta * size as i64, Relaxed);
    LIVE_BLOCKS.fetch_add(delta, Relaxed);
    BY_SIZE[size.min(TRACKED - 1)].fetch_add(delta, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(layout.size(), -1);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(layout.size(), -1);
            track(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> Vec<i64> {
    BY_SIZE.iter().map(|c| c.load(Relaxed)).collect()
}

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
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:38444".into());
    let cert = arg("--cert").ok_or("--cert FILE is required")?;
    let key = arg("--key").ok_or("--key FILE is required")?;
    let tls = TlsConfig::from_pem_files(cert, key)?;
    let hello = tower::service_fn(|_req: http::Request<Body>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
            b"Hello, World!",
        ))))
    });
    // HTTP/2 knobs, to see what each changes in an idle h2 connection's
    // heap: H2_STREAM_WINDOW, H2_CONNECTION_WINDOW, H2_MAX_FRAME,
    // H2_MAX_HEADER_LIST (bytes; unset: megaconn's defaults).
    let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let mut builder = Server::bind(listen.parse()?)
        .workers(1)
        .tls(tls)
        .idle_timeout(Some(Duration::from_secs(600)));
    if let Some(n) = knob("H2_STREAM_WINDOW") {
        builder = builder.http2_initial_stream_window_size(n);
    }
    if let Some(n) = knob("H2_CONNECTION_WINDOW") {
        builder = builder.http2_initial_connection_window_size(n);
    }
    if let Some(n) = knob("H2_MAX_FRAME") {
        builder = builder.http2_max_frame_size(n);
    }
    if let Some(n) = knob("H2_MAX_HEADER_LIST") {
        builder = builder.http2_max_header_list_size(n);
    }
    let server = builder.listen()?;
    let handle = server.handle();
    println!("listening on https://{}", server.local_addr());
    tokio::spawn(server.serve(hello));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_bytes, base_blocks, base_sizes) = (
        LIVE_BYTES.load(Relaxed),
        LIVE_BLOCKS.load(Relaxed),
        snapshot(),
    );
    let mut last = (0, 0, 0);
    let mut reported = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stats = handle.stats();
        let open = stats.connections_open;
        let now = (open, stats.accepted, stats.connections_parked);
        if now != last || open == 0 || reported == Some(now) {
            last = now;
            continue;
        }
        reported = Some(now);
        let bytes = LIVE_BYTES.load(Relaxed) - base_bytes;
        let blocks = LIVE_BLOCKS.load(Relaxed) - base_blocks;
        println!(
            "{open} open ({} idle, {} parked, {} pool buffers out): heap +{bytes} B in +{blocks} blocks \
             = {} B in {:.2} blocks per connection",
            stats.connections_idle,
            stats.connections_parked,
            stats.buffers_checked_out,
            bytes / open,
            blocks as f64 / open as f64
        );
        let mut held: Vec<(usize, i64)> = snapshot()
            .iter()
            .zip(&base_sizes)
            .enumerate()
            .map(|(size, (n, b))| (size, n - b))
            .filter(|&(_, n)| n * 2 >= open)
            .collect();
        held.sort_by_key(|&(size, n)| -(size as i64 * n));
        for (size, n) in held.iter().take(20) {
            println!(
                "  {size:>6} B × {n} ({:.2} per connection, {} B per connection)",
                *n as f64 / open as f64,
                *size as i64 * n / open
            );
        }
    }
}
