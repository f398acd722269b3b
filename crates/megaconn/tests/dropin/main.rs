//! megaconn as a drop-in for `axum::serve` (issue 14): apps written the way
//! axum 0.8's own examples are (todos, sse, static-file-server, stream-to-file,
//! multipart-form, compression, graceful-shutdown, and the corner cases the
//! issue lists) are each served twice, once by `axum::serve` (hyper) and once
//! by megaconn, both on 127.0.0.1:0; the same requests go to both through a
//! real client (reqwest, the h2 crate's client, raw TCP where the wire
//! matters), and the answers are compared: status, headers but `date`, body.
//! Where megaconn differs on purpose (README, "Differences from
//! `axum::serve`") the test asserts the documented difference instead.
//!
//! - `harness.rs`: one app served both ways ([`harness::Pair`]), a request
//!   sent the same way to both, the answers compared
//! - `json_sse.rs`: todos (JSON CRUD), sse over HTTP/1.1 and h2c
//! - `files.rs`: static-file-server (ServeDir), stream-to-file (50 MB, body
//!   limits), multipart-form (and a chunked one over the limit, HTTP/1.1 and
//!   h2c), consume-body-in-middleware over `max_body_bytes`, an app limit
//!   above `max_body_bytes` (`Bytes`, `String`, `Multipart`)
//! - `edges.rs`: compression, graceful shutdown, `ConnectInfo`, HEAD of a
//!   stream, `spawn_blocking` and `block_in_place`, 100-continue, TimeoutLayer,
//!   a handler's reason phrase, `TCP_NODELAY`, `into_make_service()` (and
//!   NormalizePath's), `into_make_service_with_connect_info()` (and with a
//!   `Connected` type of the app's), http-proxy's `CONNECT` through
//!   `hyper::upgrade::on`

#[path = "../common/mod.rs"]
mod common;
mod edges;
mod files;
mod harness;
mod json_sse;
