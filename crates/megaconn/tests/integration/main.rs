//! megaconn's integration tests, one module per subject, built as one test
//! binary.
//!
//! Why one binary: every file under `tests/` is its own crate, which compiles
//! the shared fixtures (`../common`) again and links the whole dependency
//! graph again. With 24 such files that was ~3 minutes of CI's ~19 on two
//! cores; one binary compiles the fixtures once and links once.
//!
//! What stays apart, and why: `lifecycle.rs` and `ws_axum.rs` install a
//! process-wide `tracing` subscriber to capture the server's log lines, which
//! would hear every other test's server in a shared process; `dropin/` is a
//! multi-file binary of its own (axum's examples served both ways).
//!
//! Tests run in parallel threads of this one process, as they did within each
//! binary before: nothing here touches process-wide state (environment,
//! rlimits, global subscribers), and each test starts its own server on
//! `127.0.0.1:0`. The one process-wide thing is the allocator, which notes
//! each thread's largest single allocation
//! ([`largest_allocation_on_this_thread`]) and counts each thread's
//! reallocations ([`reallocations_on_this_thread`]), and changes nothing.
//! Both are per thread, read by a server's handler on its worker's thread:
//! a process-wide figure would count the tests running in parallel. Run one
//! subject with a filter, e.g.
//! `cargo test -p megaconn --test integration park::`.

use std::alloc::{GlobalAlloc, Layout, System};

#[path = "../common/mod.rs"]
mod common;

mod answers56;
mod axum;
mod axum_sse_halfopen;
mod backpressure;
mod big_push;
mod blocking;
mod body_end_stream;
mod cut_by_reset55;
mod drain;
mod drain55;
mod drain_awake;
mod drain_before_request;
mod drain_tls54;
mod drain_woken;
mod dual_stack;
mod embed54;
mod embed55;
mod expect_close56;
mod framed;
mod framed_halfopen;
mod framed_handover;
mod framed_handover2;
mod framed_limits;
mod framed_tls;
mod framed_tls_linger;
mod fuzz_framed;
mod fuzz_http1;
mod fuzz_ws;
mod go_timeouts;
mod grown_file56;
mod grpc50;
mod grpc51;
mod grpc52;
mod h1_body_limits;
mod h2;
mod h2_body_rate;
mod h2_budget;
mod h2_flood;
mod h2_grown_windows;
mod h2_grpc_web_drain;
mod h2_limits;
mod h2_read_timeout_body;
mod h2_send_buffer;
mod h2_strict;
mod h2_tiny_data;
mod h2_unread_split;
mod h2_upload;
mod h2c_drain56;
mod handover49;
mod head_304;
mod head_304_body;
mod head_memo;
mod held_responses;
mod http1;
mod http1_body;
mod hub49;
mod hub_confirm;
mod hub_drops;
mod hub_drops2;
mod hub_reset;
mod layers;
mod lifecycle_events;
mod limits;
mod linger_once;
mod linger_timeout;
mod malformed;
mod message_bounds;
mod message_connections;
mod metrics;
mod modes;
mod mtls;
mod mtls_refusals;
mod mtls_wake;
mod mtls_wake51;
#[cfg(feature = "otel")]
mod otel;
mod park;
mod park_evict;
mod pipelined55;
mod proxy_protocol56;
mod proxy_protocol57;
mod proxy_protocol58;
mod proxy_protocol59;
mod read_timeout_body;
mod scripted;
mod shutdown_crossworker;
mod shutdown_first56;
mod signal;
mod slow_download57;
mod sse;
mod sse_halfopen;
mod start;
mod stats_families57;
mod stream_cut;
mod thread_names56;
mod timeouts;
mod tls;
mod tls_abuse;
mod tls_close;
mod tls_flood;
mod tls_listeners;
mod tls_msg;
mod tls_park;
mod tls_parked_close;
mod tls_plain;
mod tls_sealed_close;
mod token_streams;
mod tonic;
mod topic_metrics;
mod woken_accounts;
mod ws;
mod ws_api;
mod ws_h2;
mod ws_halfopen;
mod ws_handler_wait;
mod ws_rooms;
mod wss_confirm;

/// The system allocator, noting each thread's largest allocation and
/// reallocations.
struct NotesLargest;

#[global_allocator]
static ALLOCATOR: NotesLargest = NotesLargest;

thread_local! {
    /// The largest allocation asked for on this thread (a `const` cell:
    /// reading it in the allocator allocates nothing).
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };

    /// Reallocations made on this thread (a `const` cell, as above).
    static REALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    // (Not after the thread's locals are gone.)
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

/// The largest single allocation this thread has asked for so far, in
/// bytes: a server's handler reads its worker's, that the server never
/// reserves what a peer only announced. (It was the process's largest,
/// which counted whatever the tests running beside it allocated.)
pub(crate) fn largest_allocation_on_this_thread() -> usize {
    LARGEST.get()
}

/// How many reallocations this thread has made so far (a server's handler
/// reads its worker's: tests in parallel run on other threads).
pub(crate) fn reallocations_on_this_thread() -> u64 {
    REALLOCATIONS.get()
}

// SAFETY: every call is passed on to `System` unchanged.
unsafe impl GlobalAlloc for NotesLargest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // (Not after the thread's locals are gone.)
        let _ = REALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}
