//! The HTTP/1.1 connection engine (ours; parsing is httparse's, but for the
//! usual heads, which [`quick_head`] reads to the same result).
//!
//! A connection's life, in [`conn`]:
//!
//! ```text
//!   accept --> wait for bytes --> read head --> exchange --+--> close
//!                  ^   (no buffers held)                    |
//!                  +---------------- keep-alive ------------+--> upgrade (101)
//! ```
//!
//! [`head`] parses the request head (the usual ones through [`quick_head`])
//! and applies RFC 9112's framing rules,
//! [`decode`] reads request bodies, [`exchange`] runs one request/response and
//! [`encode`] frames the response; [`header_maps`] hands a written response's
//! `HeaderMap` to the next request.

pub(crate) mod conn;
pub(crate) mod decode;
pub(crate) mod encode;
// Beside `encode.rs`'s own: a large frame's framing (see its doc).
#[cfg(test)]
mod encode_large_tests;
// Beside `encode.rs`'s own: a head held to the rules (see its doc).
#[cfg(test)]
mod encode_end_tests;
// Beside `encode.rs`'s own: the gaps mutation testing found (see its doc).
#[cfg(test)]
mod encode_tests;
pub(crate) mod exchange;
pub(crate) mod head;
// Beside `head.rs`'s own: the header-section memo's (see its doc).
#[cfg(test)]
mod head_memo_tests;
// Beside `head.rs`'s own: the gaps mutation testing found (see its doc).
#[cfg(test)]
mod head_tests;
pub(crate) mod header_maps;
mod quick_head;
// A large frame's write cut at every boundary, on a scripted stream.
#[cfg(test)]
mod writev_cut_tests;
// The keep-alive loop's timeouts and wakes, on paused time (see its doc).
#[cfg(test)]
mod keepalive_tests;
// The hand-written keep-alive loop's own turns (see its doc).
#[cfg(test)]
mod run_tests;

pub(crate) use crate::observe::close::CloseReason;
use crate::service::upgrade::{NativeUpgrade, UpgradeSender};

pub(crate) use conn::serve_connection;

/// How an exchange ended, as far as the connection is concerned.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Read the next request.
    KeepAlive,
    /// Close the connection (after flushing what is buffered).
    Close(CloseReason),
    /// Hand the socket to the handler, or (`Some`) to a protocol of the
    /// server's own that the `101` named.
    Upgrade(UpgradeSender, Option<NativeUpgrade>),
    /// The request head was refused before any service saw it (its bytes
    /// are still in the read buffer): answer the status and close, unless
    /// it is HTTP/2's preface on a fresh connection.
    Rejected(head::Rejection),
}
