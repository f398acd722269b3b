//! megaconn: a lean HTTP/1.1 server engine for very many concurrent connections.
//!
//! megaconn serves any [`tower_service::Service`] that takes an
//! [`http::Request<megaconn::Body>`](Body) — an axum `Router` plugs in unchanged —
//! on thread-per-core workers, with the safety knobs of Go's `http.Server`.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use megaconn::{Body, Server};
//!
//! # async fn run() -> Result<(), megaconn::Error> {
//! let hello = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("Hello, World!"))))
//! });
//! Server::bind("127.0.0.1:8080".parse().unwrap())
//!     .workers(2)
//!     .serve(hello)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! ```text
//!  server.rs    Builder (the knobs) -> Server (bound sockets) -> serve()
//!     |             config.rs holds every knob with its default and reason
//!     v
//!  worker.rs    one OS thread + current-thread tokio runtime per worker,
//!     |         drains its connections on shutdown (shutdown.rs)
//!     v
//!  acceptor.rs  accepts on the worker's own SO_REUSEPORT listener (socket.rs),
//!     |         takes a slot from the connection limit (limit.rs), applies the
//!     |         accept-rate and per-IP limits (admission.rs), backs off on EMFILE
//!     v
//!  http1/       the connection engine (ours), on httparse:
//!               conn.rs      a connection's life: idle -> head -> exchange -> idle
//!               head.rs      request head parsing and RFC 9112 framing rules
//!               decode.rs    request body decoding (Content-Length, chunked)
//!               exchange.rs  one request/response: handler, body pump, writer
//!               encode.rs    response head and body framing
//!  body.rs      the request body handed to the service
//!  pool.rs      per-worker buffer pool: idle connections hold no buffers
//!  park.rs      the parking lot: cold idle connections leave tokio (one u32 each)
//!  upgrade.rs   101 Switching Protocols: the handler takes over the socket
//!  rewind.rs    a stream with already-read bytes put back (upgrade, h2c)
//!  tls.rs       TLS (rustls): handshake, ALPN dispatch, SNI, certificate reload
//!  h2.rs        HTTP/2 (h2 crate): TLS with ALPN h2, or h2c prior knowledge
//!  stats.rs     per-worker counters, summed on read
//!  metrics.rs   per-request metrics and their Prometheus exposition
//!  lifecycle.rs on_connection events (opened / closed with reason, counts)
//! ```
//!
//! # Idle connections cost almost nothing
//!
//! A keep-alive connection waiting for its next request holds no read or write
//! buffer: buffers come from a per-worker [pool](ServerStats::buffers_checked_out)
//! when the socket becomes readable and go back when the exchange is done. The
//! handler future is boxed so the connection future stays small while idle.

mod conn;
mod error;
mod observe;
mod proto;
mod server;
mod service;

pub use conn::config::{
    AcceptRate, KeepaliveConfig, DEFAULT_HTTP2_CONNECTION_WINDOW, DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
    DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS, DEFAULT_HTTP2_MAX_FRAME_SIZE,
    DEFAULT_HTTP2_MAX_HEADER_LIST_SIZE, DEFAULT_HTTP2_STREAM_WINDOW, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PARK_IDLE_AFTER, DEFAULT_READ_HEADER_TIMEOUT,
};
pub use conn::tls::{TlsConfig, TlsError, DEFAULT_TLS_HANDSHAKE_TIMEOUT, TLS_SESSION_CACHE_SIZE};
pub use conn::transport::Transport;
pub use error::{BodyError, Error};
pub use observe::close::{CloseReason, ProtocolDetail};
pub use observe::lifecycle::{ConnectionEvent, ConnectionInfo, ConnectionState};
pub use observe::metrics;
pub use observe::stats::ServerStats;
pub use proto::http2::RAPID_RESET_LIMIT;
pub use server::builder::{Builder, Server, ServerHandle, ShutdownSummary};
pub use service::body::Body;
pub use service::upgrade::{OnUpgrade, Upgraded};

/// The error type a service or response body may fail with: anything that can be
/// boxed. Used in the bounds of [`Server::serve`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
