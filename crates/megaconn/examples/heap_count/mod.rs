//! A counting global allocator and the "live heap per connection" report
//! that `tls_idle_heap` and `ws_idle_heap` print (not an example itself:
//! cargo only builds `examples/*.rs` and `examples/*/main.rs`).
//!
//! Whenever the number of open connections has been steady for two seconds
//! it prints the live heap bytes and allocations against the baseline (taken
//! before the first connection), divided by the connections open, and each
//! allocation size held live by at least half as many blocks as there are
//! connections ("size × count"): that names the per-connection structures.
//! Heap bytes are what the program asked for; RSS adds the allocator's
//! headers, rounding and fragmentation on top.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

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

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

/// Takes the baseline now, then reports forever. `counts` gives the
/// connections open and the connections accepted so far (a change of either
/// means not steady yet); `extra` is appended to each report's first line.
pub async fn report_when_steady(counts: impl Fn() -> (i64, u64), extra: impl Fn() -> String) {
    let (base_bytes, base_blocks, base_sizes) = (
        LIVE_BYTES.load(Relaxed),
        LIVE_BLOCKS.load(Relaxed),
        snapshot(),
    );
    let mut last = (0, 0);
    let mut reported = -1;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = counts();
        let open = now.0;
        if now != last || open == 0 || open == reported {
            last = now;
            continue;
        }
        reported = open;
        let bytes = LIVE_BYTES.load(Relaxed) - base_bytes;
        let blocks = LIVE_BLOCKS.load(Relaxed) - base_blocks;
        println!(
            "{open} open{}: heap +{bytes} B in +{blocks} blocks = {} B in {:.2} blocks per connection",
            extra(),
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
