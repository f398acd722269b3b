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
//! `127.0.0.1:0`. Run one subject with a filter, e.g.
//! `cargo test -p megaconn --test integration park::`.

#[path = "../common/mod.rs"]
mod common;

mod axum;
mod blocking;
mod drain;
mod framed;
mod fuzz_framed;
mod fuzz_http1;
mod fuzz_ws;
mod h2;
mod head_304;
mod http1;
mod layers;
mod lifecycle_events;
mod limits;
mod malformed;
mod metrics;
mod modes;
#[cfg(feature = "otel")]
mod otel;
mod park;
mod scripted;
mod timeouts;
mod tls;
mod tls_close;
mod tls_listeners;
mod tls_park;
mod tonic;
mod ws;
mod ws_h2;
