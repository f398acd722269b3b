//! megaconn: a server engine for very many concurrent connections: HTTP/1.1,
//! HTTP/2, WebSocket, Server-Sent Events and framed TCP, in cleartext or TLS (a framed TLS
//! listener: [`Builder::listen_framed_tls_on`]; an idle framed TLS
//! connection parks with its TLS session, as a WebSocket over TLS does).
//!
//! megaconn serves any [`tower_service::Service`] that takes an
//! [`http::Request<megaconn::Body>`](Body) — an axum `Router` plugs in unchanged —
//! on thread-per-core workers, with the safety knobs of Go's `http.Server`.
//! Persistent protocols have a per-message API as well
//! ([`WebSocketHandler`], [`FramedHandler`], and [`SseHandler`] for event
//! streams): a connection between messages keeps a few bytes of state and
//! no task, so it can park (below).
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
//! # In an existing service
//!
//! megaconn takes `axum::serve`'s place inside a program that keeps its
//! own runtime (multi-thread or not), logs and metrics: awaiting
//! [`Server::serve`] only waits, while the handlers run on megaconn's worker
//! threads beside that runtime ([`Builder::workers`]). Its log lines go to
//! the global `tracing` subscriber, or to one scoped to the thread that
//! starts the server (a test's `set_default`); its metrics go into the
//! application's `prometheus-client` registry with
//! [`ServerHandle::register_metrics`]; the application stops it with a
//! future of its own ([`Server::serve_with_shutdown`]) and gets a
//! [`ShutdownSummary`] once it has drained. The README's "Recipe:
//! embedding megaconn in an existing service" and `examples/embed_in_app.rs`
//! show it whole.
//!
//! # Layout
//!
//! Layers, each importing only those below it (checked by `tests/integration/layers.rs`):
//!
//! ```text
//!  server/    builder.rs   Builder (the knobs) -> Server (bound sockets) -> serve(),
//!                          or start() (workers made) -> Started::run() (accepting)
//!             worker.rs    one OS thread + current-thread runtime per worker;
//!                          drains its connections on shutdown
//!             dispatch.rs  the one place a connection's protocol is decided:
//!                          listener kind -> TLS + ALPN -> h2c preface -> protocol,
//!                          and what a protocol's Close / Park / HandOver means
//!             framed.rs    the framed protocol's knobs on Builder / Server
//!             message.rs   the message layer's: Server::hub, outbound_queue,
//!                          hub_queue(_bytes), max_subscriptions,
//!                          max_topic_bytes
//!             stall.rs     the stall detector: a watchdog thread that sees a
//!                          worker's event loop stay away (a blocking handler)
//!             log_scope.rs the caller's scoped `tracing` subscriber, carried
//!                          to the server's threads (blocking ones too), and
//!                          the server's name's span
//!             name.rs      a server's name (Builder::name): its threads' names
//!     |
//!  proto/     http1/       HTTP/1.1 (ours, on httparse): conn (a connection's
//!                          life), head (RFC 9112 framing), quick_head (the usual
//!                          heads without httparse, to its result), decode, exchange, encode,
//!                          header_maps (a response's map reused for a request)
//!             http2.rs     HTTP/2 (h2 crate): streams, limits, flood guards
//!             framed/      framed TCP (issue 11): codec (length-prefixed, lines;
//!                          tokio-util), handler (FramedHandler), conn (a
//!                          connection's loop)
//!             ws/          WebSocket (issue 12): frame (decoder, encoder;
//!                          tungstenite's header), handshake, route (the
//!                          tower service users mount), handler
//!                          (WebSocketHandler, WsSession), conn (a
//!                          connection's loop)
//!             sse/         Server-Sent Events: route (SseRoute, SseHandler),
//!                          event (data lines, SseEvent, chunks), conn (a
//!                          stream's loop)
//!             mod.rs       Ended / HandOver: how a protocol finishes; tags
//!                          (the protocols never import each other)
//!     |
//!  message/   hub.rs       Hub: push by ConnectionId, publish to a topic,
//!                          broadcast; bounded outbound queues (Inbox)
//!             session.rs   Session: a connection as its handler sees it
//!             table.rs     per-worker side table of parked connections' states
//!             topics.rs    each topic's subscribers, each connection's topics
//!                          (at most max_subscriptions, of max_topic_bytes)
//!             wake.rs      what a woken connection checks first (behind,
//!                          heartbeat deadline, the server's heartbeat)
//!             wire.rs      how a protocol frames a message; framed once per wire
//!             worker.rs    one worker's ids, queues, topics, tables, the pump
//!                          (a protocol plugs in as message/mod.rs says)
//!     |
//!  service/   body.rs, h2_body.rs  the request body handed to services
//!             upgrade.rs   101 Switching Protocols: the handler takes the socket
//!                          (and the connection's accounts with it), or a
//!                          protocol of ours the 101 names (NativeUpgrade);
//!                          on HTTP/2, a 2xx to CONNECT hands it the stream
//!                          (h2_stream.rs: H2Stream, RFC 8441 WebSockets)
//!             draining.rs  Draining: a handler hears that graceful shutdown
//!                          began (found through the worker, not per request)
//!             proxied_by.rs  ProxiedBy: the balancer a proxied request came
//!                          through (proxy_protocol), beside its ConnInfo
//!     |
//!  conn/      connection.rs  one connection's accounts: slot, counters, track;
//!                            close() is the one place a close is counted
//!             accept.rs    the accept loop under the limits (limit.rs,
//!                          admission.rs, fd_reserve.rs), socket options
//!                          (socket.rs); sockets accepted bare, not
//!                          registered with tokio
//!             park.rs      the parking lot: idle connections of any protocol
//!                          leave tokio (a deadline word + a protocol tag per fd)
//!             handover.rs  parked connections moving to the next process
//!                          (an upgrade): their wire state, adopting them
//!             woken.rs     a woken (or new) socket served without tokio until
//!                          it waits
//!             blocks.rs    per-worker cache of the exchange's heap blocks
//!             io.rs        ConnIo: the socket, its pooled buffers (none while
//!                          idle), flush, lingering close
//!             tls_io.rs    TLS on rustls' unbuffered API: record buffers from
//!                          the pool (none while idle); a parked connection's
//!                          session (HTTPS/1.1, wss://) waits in the worker's table
//!             context.rs   what one worker's connections share; config.rs the
//!                          settings; tls.rs certificates and the handshake;
//!                          client_auth.rs client certificates (mutual TLS:
//!                          ClientAuth, PeerCertificates; client_auth/crl.rs
//!                          checks a CRL when loaded); pool.rs buffers;
//!                          transport.rs, rewind.rs, shutdown.rs
//!     |                                  observe/  close.rs   CloseReason
//!  error.rs                                        stats.rs   per-worker counters
//!                                                  metrics.rs Prometheus
//!                                                     (families.rs: each
//!                                                     family once; app_registry.rs:
//!                                                     servers in an app's registry)
//!                                                  caller_log.rs the caller's
//!                                                     scoped subscriber
//!                                                  process.rs process_*,
//!                                                     build_info (/proc)
//!                                                  lifecycle.rs events, states
//!                                                  registry.rs the live list
//!                                                     (/debug/connections);
//!                                                     by_id.rs its ids in
//!                                                     order (one vector in
//!                                                     chunks, chunks.rs)
//!                                                  trace.rs   the request path's
//!                                                     tracing hook (one branch)
//!                                                  otel/      OpenTelemetry (the
//!                                                     `otel` feature): span.rs a
//!                                                     request's span, export.rs
//!                                                     the bounded OTLP queue,
//!                                                     resource.rs who sent it
//! ```
//!
//! # Idle connections cost almost nothing
//!
//! A connection waiting for its next request or message holds no read or
//! write buffer: buffers come from a per-worker
//! [pool](ServerStats::buffers_checked_out) when the socket becomes readable
//! and go back when the exchange is done. Once idle for
//! [`DEFAULT_PARK_IDLE_AFTER`] ([`Builder::park_idle_after`]), a connection
//! of any of our protocols (HTTP/1.1, WebSocket and framed TCP through the
//! per-message API, and their TLS forms) leaves tokio for the worker's
//! parking lot: a deadline word and a protocol tag per descriptor, its
//! state (a TLS session, a handler's state) in a side table. Its next bytes
//! wake it where it left off. HTTP/2 connections and connections handed to
//! a service by an upgrade keep their task (with no buffers while idle).

// The rustls and h2 of `patches/` (the README's `[patch.crates-io]`):
// named before any code uses what they add, so that an app's build without
// the patch fails first here (an unresolved name comes before the missing
// methods' E0599s), on a name that says the fix.
const _: () = rustls::MEGACONN_NEEDS_ITS_PATCHED_RUSTLS_ADD_THE_PATCH_CRATES_IO_SECTION_OF_MEGACONNS_README_TO_YOUR_CARGO_TOML;
const _: () = h2::MEGACONN_NEEDS_ITS_PATCHED_H2_ADD_THE_PATCH_CRATES_IO_SECTION_OF_MEGACONNS_README_TO_YOUR_CARGO_TOML;

mod conn;
mod error;
mod message;
mod observe;
mod proto;
mod server;
mod service;

pub use conn::client_auth::{ClientAuth, ClientCa, PeerCertificates};
#[doc(hidden)]
pub use conn::config::WorkerStartFailure;
pub use conn::config::DEFAULT_HTTP2_MAX_SEND_BUFFER;
pub use conn::config::{
    AcceptRate, KeepaliveConfig, DEFAULT_BACKLOG, DEFAULT_FD_RESERVE,
    DEFAULT_HTTP2_CONNECTION_WINDOW, DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET,
    DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT, DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
    DEFAULT_HTTP2_MAX_FRAME_SIZE, DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW,
    DEFAULT_HTTP2_MAX_HEADER_LIST_SIZE, DEFAULT_HTTP2_MAX_STALLED_STREAMS,
    DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES, DEFAULT_HTTP2_STREAM_WINDOW, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LINGER_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DRAIN_BYTES, DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MESSAGE_SEND_BUFFER, DEFAULT_MIN_REQUEST_BODY_RATE,
    DEFAULT_MIN_REQUEST_BODY_RATE_GRACE, DEFAULT_PARK_IDLE_AFTER, DEFAULT_READ_HEADER_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STALL_THRESHOLD, FD_HEADROOM,
};
pub use conn::handover::{
    HandOverKinds, LeftToDrain, ParkedConnection, ParkedState, ParkedStateError,
};
#[cfg(feature = "test-util")]
pub use conn::proxy_clients::test_util;
pub use conn::proxy_header::{TrustedProxies, TrustedProxiesError, MAX_PROXY_HEADER_BYTES};
pub use conn::tls::{
    KxGroup, TlsConfig, TlsError, DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_TLS_KX_GROUPS,
    DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT, TLS_SESSION_CACHE_SIZE,
};
pub use conn::transport::Transport;
pub use conn::ConnInfo;
pub use error::{BodyError, Error};
pub use message::{
    message_connections_in_other_processes, share_audience, subscribers, Buffered, ConnectionId,
    Delivery, Hub, HubError, PublishRate, Session, ShareAudienceError, SubscribeError, Undelivered,
    AUDIENCE_COUNTERS, DEFAULT_HUB_QUEUE, DEFAULT_HUB_QUEUE_BYTES, DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_MAX_TOPIC_BYTES, DEFAULT_MESSAGE_TIMEOUT, DEFAULT_OUTBOUND_QUEUE,
    DEFAULT_PUBLISH_BURST, DEFAULT_PUBLISH_FANOUT, DEFAULT_PUBLISH_RATE,
    DEFAULT_WRITE_STALL_TIMEOUT, MAX_TOPIC_METRICS,
};
pub use observe::close::{CloseReason, FramingError, ProtocolDetail};
pub use observe::lifecycle::{ConnectionEvent, ConnectionInfo, ConnectionState};
pub use observe::metrics;
#[cfg(feature = "otel")]
pub use observe::otel;
pub use observe::ratelog::install_panic_hook;
pub use observe::stats::{MessageStats, OtelStats, ServerStats, TlsStats, TopicCount};
pub use proto::framed::{
    FramedHandler, Framing, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_LINE_BYTES,
    MAX_EXPORTED_STATE_BYTES,
};
pub use proto::http2::{
    HTTP2_CONTROL_BUDGET, HTTP2_PING_BUDGET, HTTP2_TINY_DATA_BUDGET, HTTP2_WINDOW_DRIP_BUDGET,
    RAPID_RESET_LIMIT,
};
pub use proto::sse::{SseBody, SseEvent, SseHandler, SseRoute, DEFAULT_SSE_PING_INTERVAL};
pub use proto::ws::{
    WebSocketHandler, WebSocketRoute, WsClose, WsMessage, WsSession, DEFAULT_WS_CLOSE_TIMEOUT,
    DEFAULT_WS_HEARTBEAT_TIMEOUT, DEFAULT_WS_MAX_FRAME_BYTES, DEFAULT_WS_MAX_MESSAGE_BYTES,
    DEFAULT_WS_PING_INTERVAL, HEARTBEAT_TIMEOUT_PER_PING,
};
pub use server::builder::{
    Builder, ParkedHandOver, Server, ServerHandle, ShutdownSummary, Started,
};
pub use server::signal::shutdown_signal;
pub use server::stall::LoopWakes;
pub use service::body::Body;
pub use service::draining::Draining;
pub use service::proxied_by::ProxiedBy;
pub use service::upgrade::{OnUpgrade, Upgraded};
pub use service::{into_marker, HttpService, IntoHttpService};
/// The UTF-8 text of a [`WsMessage::Text`] (tungstenite's: cheap to clone,
/// backed by [`bytes::Bytes`]).
pub use tungstenite::Utf8Bytes;

// axum's `axum::extract::ws` API on megaconn's upgrade. The module itself,
// not a module of re-exports: rustdoc renders its module doc here (what an
// idle socket holds, a peer that does not read, shutdown, HTTP/2), which
// `WebSocket`'s docs point to.
#[cfg(feature = "axum")]
pub use service::ws_axum as axum_ws;

/// The error type a service or response body may fail with: anything that can be
/// boxed. Used in the bounds of [`Server::serve`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
