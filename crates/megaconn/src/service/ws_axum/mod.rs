//! axum-compatible WebSocket: `megaconn::axum_ws`, axum 0.8's
//! `axum::extract::ws` API on megaconn's own upgrade.
//!
//! axum's `WebSocketUpgrade` takes hyper's upgrade handle from the request;
//! megaconn is not hyper, so under megaconn that extractor answers `426`.
//! This one takes megaconn's [`OnUpgrade`] instead, so an axum WebSocket
//! app runs under megaconn by changing one `use` line:
//!
//! ```no_run
//! // use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
//! use megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade};
//! use axum::{response::Response, routing::get, Router};
//!
//! async fn echo(ws: WebSocketUpgrade) -> Response {
//!     ws.on_upgrade(|mut socket: WebSocket| async move {
//!         while let Some(Ok(msg)) = socket.recv().await {
//!             if let Message::Text(_) | Message::Binary(_) = msg {
//!                 if socket.send(msg).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         }
//!     })
//! }
//! let app: Router = Router::new().route("/ws", get(echo));
//! ```
//!
//! [`Message`], [`CloseFrame`], [`Utf8Bytes`] and [`close_code`] are axum's
//! own types, re-exported: code that names them through `axum::extract::ws`
//! keeps working beside this module, and the stream's error is `axum::Error`
//! as in axum.
//!
//! # What an idle socket holds
//!
//! The task `on_upgrade` spawns, with the handler's future in it, which holds
//! the [`WebSocket`] (440 bytes: the upgraded connection and its accounts,
//! the limits, two empty buffer handles, an empty list of tasks waiting to
//! write). No read or write buffer, and not
//! even tungstenite's state machine: it gets a zero-sized read buffer and a
//! zero write threshold, the bytes in flight between it and the socket live
//! in a stack chunk or in exact-size copies freed once consumed (see
//! `io.rs`), and between messages its context is dropped (boxed again when
//! the next frame arrives), so the capacity its own buffers grew to goes
//! too. Measured with `examples/ws_idle_heap.rs` (release build, 10,000
//! sockets, each after a text message both ways): 1,633 heap bytes per idle
//! socket in three blocks (the task with the handler's future, 1,152; 256
//! and 144 of the upgraded connection, the 144 grown from 32 since its
//! boxed socket took the connection's place in the shutdown drain, 48
//! bytes, and its sends' bound, 56: the resolved limit, the descriptor
//! for the peer's progress, the bound of a send under way; 136 requested,
//! 144 in malloc's size classes), against
//! 132,521 for axum's own socket, whose tungstenite keeps its 128 KiB read
//! buffer (zero-filled on every read, so resident). `bench/WS.md` has the
//! commands, and RSS beside the peers.
//!
//! # Differences from axum
//!
//! Safer defaults for a server of very many connections, as megaconn's
//! native route has: a message may be 1 MiB by default
//! ([`DEFAULT_MAX_MESSAGE_SIZE`], axum's is 64 MiB), checked from each
//! frame's header too (a frame over it is refused before its payload is
//! read); an app that calls `max_message_size` (or `max_frame_size`) gets
//! what it asked for. And the socket gets
//! [`Builder::message_send_buffer_size`](crate::Builder::message_send_buffer_size)
//! (256 KiB by default, which Linux doubles) as its `SO_SNDBUF` at the
//! upgrade, as the native route's does, where axum's keeps the kernel's
//! autotuning (up to `tcp_wmem`'s 4 MiB for a peer that reads nothing);
//! `message_send_buffer_size(None)` gives that back. It also gets the
//! kernel's bound on unacknowledged bytes (`TCP_USER_TIMEOUT`, 2 × its
//! sends' bound + 1 s: 121 s by default), as a native route with its
//! heartbeat off does: a socket has no heartbeat of the server's, so
//! without it a peer gone without a FIN took the handler's sends into the
//! kernel's buffer and its `recv` waited ~16 minutes; now it fails with
//! an I/O error (`TimedOut`) about two bounds after the first send the
//! peer did not acknowledge
//! ([`Builder::write_stall_timeout`](crate::Builder::write_stall_timeout)).
//! A handler that pings and closes on a missing pong finds such a peer
//! sooner; one that sends nothing never finds it (nor does the kernel).
//!
//! `read_buffer_size` is accepted and ignored (reads take at most 8 KiB on
//! the stack and keep nothing); rejections are this module's
//! [`WebSocketUpgradeRejection`] ([`rejection`]: axum's types, statuses and
//! texts, variants carrying data as axum's do), except
//! that an extended CONNECT naming another protocol than `websocket` gets
//! `501` (RFC 9220 §3) where axum answers `400`; each is logged (debug,
//! "WebSocket handshake refused") as the native route logs its own.
//!
//! # A peer that does not read
//!
//! Receiving stops reading while more than `write_buffer_size` bytes are
//! queued (a peer that floods pings and reads no pong stalls, as on the
//! native route; axum's socket queues without bound), and a send the peer
//! takes nothing of fails after `write_timeout`, else
//! `write_stall_timeout` (axum's waits for good), as the native route's
//! writes do: see [`WebSocket`]'s docs.
//!
//! # At shutdown
//!
//! The socket counts in the worker's graceful shutdown as a connection
//! does: the drain waits for it up to `shutdown_timeout`, then closes it
//! by force. It hears the
//! start as the native WebSocket route does: the next [`WebSocket::recv`]
//! (or `Stream` poll; one is under way in a handler waiting for messages)
//! sends the peer a close 1001 (going away), then returns the peer's close
//! and `None`, so an echo loop ends by itself; sends after the 1001 fail.
//! A peer that does not answer within
//! [`DEFAULT_WS_CLOSE_TIMEOUT`](crate::DEFAULT_WS_CLOSE_TIMEOUT)
//! (the native route's default `close_timeout`) is not waited for: `recv`
//! returns `None` and the socket leaves the drain.
//! A handler that only sends hears it at its next send (`send`, or a
//! `Sink`'s `feed` or `flush`): the 1001 goes out after what was already
//! queued, and that send fails (after a `flush`, the next one), as axum's
//! socket fails a send after its close, so a
//! `while socket.send(msg).await.is_ok()` loop ends by itself. One that
//! sends nothing until the deadline is closed by it.
//!
//! With [`Builder::shutdown_drain_rate`](crate::Builder::shutdown_drain_rate)
//! the 1001 waits for the socket's turn, as a native WebSocket's does: the
//! paced drain gives turns to the native awake connections first, then to
//! these sockets, a few a tick; until its turn a socket serves on (`recv`
//! returns the peer's messages, sends go out). Only a socket whose `recv`
//! (or `Stream` poll) waits holds a place among the turns: a handler that
//! only sends hears its turn once the pacing ends (when nothing else waits
//! for one, or a margin before `shutdown_timeout`), at its next send.
//!
//! # Over HTTP/2 (RFC 8441)
//!
//! As axum's does, the extractor also accepts an HTTP/2 extended CONNECT
//! (`:method CONNECT`, `:protocol websocket`, `Sec-WebSocket-Version: 13`,
//! no key): megaconn advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL` unless
//! [`Builder::http2_enable_connect_protocol`](crate::Builder::http2_enable_connect_protocol)
//! turns it off. [`WebSocketUpgrade::on_upgrade`] then answers `200`
//! instead of `101`, subprotocols are negotiated the same way, and the
//! socket runs over the stream's DATA frames: the stream's flow-control
//! window is given back as the socket reads, its close ends the stream with
//! `END_STREAM`, and the HTTP/2 connection stays open (and not idle) for its
//! other streams while the socket lives. Several WebSockets can share one
//! connection. Such a socket holds, besides the above, the HTTP/2 stream's
//! handles and h2's per-stream state.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};

use crate::service::upgrade::OnUpgrade;

mod io;
pub mod rejection;
mod socket;

pub use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
pub use rejection::WebSocketUpgradeRejection;
pub use socket::WebSocket;

/// What megaconn logs when a handler answers `426` to an upgrade request:
/// under megaconn that is almost always axum's own WebSocket extractor,
/// which needs hyper's upgrade handle.
pub(crate) const WRONG_EXTRACTOR_HINT: &str = "a handler answered 426 Upgrade Required to an \
     upgrade request: if it uses axum::extract::ws::WebSocketUpgrade, that extractor cannot \
     upgrade under megaconn (it looks for hyper's upgrade handle); import \
     megaconn::axum_ws::{Message, WebSocket, WebSocketUpgrade} instead (same API)";

/// Default [`WebSocketUpgrade::write_buffer_size`]: 128 KiB, as axum.
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 128 * 1024;
/// Default [`WebSocketUpgrade::max_message_size`]: 1 MiB, the native
/// route's [`DEFAULT_WS_MAX_MESSAGE_BYTES`](crate::DEFAULT_WS_MAX_MESSAGE_BYTES),
/// where axum's is 64 MiB. A message is held whole until its last byte
/// and an echo's reply until the peer reads it: with axum's default a
/// client that sent one 16 MiB message and read nothing held 16 MiB of the
/// server's memory (and 3.75 MiB of the kernel's) per connection
/// (`bench/ATTACK-MEMORY.md`). An app whose messages are larger says so
/// with [`max_message_size`](WebSocketUpgrade::max_message_size).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = crate::DEFAULT_WS_MAX_MESSAGE_BYTES;
/// Default [`WebSocketUpgrade::max_frame_size`]: 16 MiB, as axum (and the
/// native route's [`DEFAULT_WS_MAX_FRAME_BYTES`](crate::DEFAULT_WS_MAX_FRAME_BYTES)).
/// A data frame is part of a message, so a frame over
/// [`max_message_size`](WebSocketUpgrade::max_message_size) is refused from
/// its header too: with the defaults that bound comes first.
pub const DEFAULT_MAX_FRAME_SIZE: usize = crate::DEFAULT_WS_MAX_FRAME_BYTES;

/// Extractor that upgrades an HTTP/1.1 request, or opens an HTTP/2 extended
/// CONNECT stream (RFC 8441), to a WebSocket: axum's `WebSocketUpgrade` for
/// megaconn. Answer with [`on_upgrade`](Self::on_upgrade).
pub struct WebSocketUpgrade<F = DefaultOnFailedUpgrade> {
    limits: socket::Limits,
    /// `Sec-WebSocket-Key` on HTTP/1.1; `None` over HTTP/2, which has none.
    key: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
    requested: Vec<HeaderValue>,
    protocol: Option<HeaderValue>,
    on_failed_upgrade: F,
}

impl<F> std::fmt::Debug for WebSocketUpgrade<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("limits", &self.limits)
            .field("requested", &self.requested)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<F> WebSocketUpgrade<F> {
    /// Accepted for axum compatibility and ignored: megaconn's socket keeps
    /// no read buffer (a read takes at most 8 KiB on the stack).
    pub fn read_buffer_size(self, _size: usize) -> Self {
        self
    }

    /// Bytes a `Sink` may queue before `poll_ready` flushes them, and past
    /// which receiving stops reading until they are flushed (the pongs to a
    /// peer's pings queue too: see [`WebSocket`](crate::axum_ws::WebSocket#a-peer-that-does-not-read)).
    /// Default [`DEFAULT_WRITE_BUFFER_SIZE`]; `0` flushes before every
    /// message. `send` and `flush` always write everything, after which the
    /// queue's memory is freed.
    pub fn write_buffer_size(mut self, size: usize) -> Self {
        self.limits.write_buffer_size = size;
        self
    }

    /// Bytes that may be queued at most; a send past it fails. Default
    /// unlimited (the queue only grows while the client reads slower than
    /// the handler feeds without flushing).
    pub fn max_write_buffer_size(mut self, max: usize) -> Self {
        self.limits.max_write_buffer_size = max;
        self
    }

    /// Largest message accepted, in bytes; past it the socket closes with
    /// 1009, counted in `megaconn_limit_hits_total{limit="ws_message_too_big"}`
    /// and logged (info, naming this setting; at most one line per 5 s per
    /// worker). A single frame over it is refused from its header, before
    /// its payload is read. Default [`DEFAULT_MAX_MESSAGE_SIZE`], 1 MiB
    /// (axum's is 64 MiB: see that constant for why).
    pub fn max_message_size(mut self, max: usize) -> Self {
        self.limits.max_message_size = Some(max);
        self
    }

    /// Largest frame payload accepted, in bytes; past it the socket closes
    /// with 1009, counted in
    /// `megaconn_limit_hits_total{limit="ws_frame_too_big"}` (in
    /// `ws_message_too_big` when it equals `max_message_size`: tungstenite
    /// does not say which it went over) and logged as for
    /// [`max_message_size`](Self::max_message_size). Default
    /// [`DEFAULT_MAX_FRAME_SIZE`]; a data frame over `max_message_size`
    /// (when that is the smaller) is refused from its header as a message
    /// over that limit.
    pub fn max_frame_size(mut self, max: usize) -> Self {
        self.limits.max_frame_size = Some(max);
        self
    }

    /// Accepts unmasked client frames, against RFC 6455. Default `false`.
    pub fn accept_unmasked_frames(mut self, accept: bool) -> Self {
        self.limits.accept_unmasked_frames = accept;
        self
    }

    /// The subprotocols the server speaks, most preferred first: the first
    /// of them the client asked for (`Sec-WebSocket-Protocol`) is selected
    /// and echoed in the response. Names match exactly, as in axum (`Chat`
    /// is not `chat`). None in common: none selected.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<std::borrow::Cow<'static, str>>,
    {
        self.protocol = protocols.into_iter().find_map(|p| {
            let p = p.into();
            self.requested
                .iter()
                .find(|r| r.as_bytes() == p.as_bytes())
                .cloned()
        });
        self
    }

    /// The subprotocols the client asked for, in its order.
    pub fn requested_protocols(&self) -> impl Iterator<Item = &HeaderValue> {
        self.requested.iter()
    }

    /// Selects a subprotocol by hand (the last of this and
    /// [`protocols`](Self::protocols) wins).
    pub fn set_selected_protocol(&mut self, protocol: HeaderValue) {
        self.protocol = Some(protocol);
    }

    /// The selected subprotocol, if any.
    pub fn selected_protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// What to do if the connection fails to switch after the `101` (or
    /// HTTP/2's `200`: the client went away first). Default: a debug log line.
    pub fn on_failed_upgrade<C: OnFailedUpgrade>(self, callback: C) -> WebSocketUpgrade<C> {
        WebSocketUpgrade {
            limits: self.limits,
            key: self.key,
            on_upgrade: self.on_upgrade,
            requested: self.requested,
            protocol: self.protocol,
            on_failed_upgrade: callback,
        }
    }

    /// Answers `101 Switching Protocols` (on HTTP/2: `200`) and, once
    /// megaconn has written it, runs `callback` with the socket on a new
    /// task.
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        F: OnFailedUpgrade,
    {
        let WebSocketUpgrade {
            limits,
            key,
            on_upgrade,
            protocol,
            on_failed_upgrade,
            ..
        } = self;
        let mut response = Response::new(axum::body::Body::empty());
        // Over HTTP/2, a bare 200 opens the stream (RFC 8441 §5).
        if let Some(key) = key {
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::try_from(accept).expect("base64 is a valid header value"),
            );
        }
        if let Some(protocol) = &protocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(io) => {
                    io.bound_message_send_buffer();
                    io.bound_unacknowledged();
                    callback(WebSocket::new(io, limits, protocol)).await
                }
                Err(e) => on_failed_upgrade.call(axum::Error::new(e)),
            }
        });
        response
    }
}

/// What to do when the connection fails to switch after the `101`.
pub trait OnFailedUpgrade: Send + 'static {
    /// Called with why.
    fn call(self, error: axum::Error);
}

impl<F: FnOnce(axum::Error) + Send + 'static> OnFailedUpgrade for F {
    fn call(self, error: axum::Error) {
        self(error)
    }
}

/// The default [`OnFailedUpgrade`]: a debug log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultOnFailedUpgrade;

impl OnFailedUpgrade for DefaultOnFailedUpgrade {
    fn call(self, error: axum::Error) {
        tracing::debug!(%error, "WebSocket upgrade failed after the 101");
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade<DefaultOnFailedUpgrade> {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        extract(parts).inspect_err(|rejection| {
            tracing::debug!(
                status = rejection.status().as_u16(),
                reason = %rejection,
                version = ?parts.version,
                "WebSocket handshake refused"
            );
        })
    }
}

/// [`WebSocketUpgrade`]'s checks: HTTP/1.1's upgrade (RFC 6455 §4.2.1) or
/// HTTP/2's extended CONNECT (RFC 8441 §4–5).
fn extract(parts: &mut Parts) -> Result<WebSocketUpgrade, WebSocketUpgradeRejection> {
    use rejection as R;
    let key = match parts.version {
        Version::HTTP_11 => Some(check_http11(parts)?),
        Version::HTTP_2 => {
            check_http2(parts)?;
            None
        }
        _ => return Err(R::NotHttp11.into()),
    };
    if parts
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(R::InvalidWebSocketVersionHeader.into());
    }
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(R::ConnectionNotUpgradable)?;
    let requested = tokens(&parts.headers, header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|t| HeaderValue::from_bytes(t).ok())
        .collect();
    Ok(WebSocketUpgrade {
        limits: socket::Limits {
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            max_write_buffer_size: usize::MAX,
            max_message_size: Some(DEFAULT_MAX_MESSAGE_SIZE),
            max_frame_size: Some(DEFAULT_MAX_FRAME_SIZE),
            accept_unmasked_frames: false,
        },
        key,
        on_upgrade,
        requested,
        protocol: None,
        on_failed_upgrade: DefaultOnFailedUpgrade,
    })
}

/// An HTTP/1.1 upgrade's method and headers; its `Sec-WebSocket-Key`.
fn check_http11(parts: &Parts) -> Result<HeaderValue, WebSocketUpgradeRejection> {
    use rejection as R;
    if parts.method != Method::GET {
        return Err(R::MethodNotGet.into());
    }
    if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
        return Err(R::InvalidConnectionHeader.into());
    }
    if !has_token(&parts.headers, header::UPGRADE, "websocket") {
        return Err(R::InvalidUpgradeHeader.into());
    }
    parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(R::WebSocketKeyHeaderMissing.into())
}

/// An HTTP/2 extended CONNECT (RFC 8441 §4): `CONNECT` with `:protocol
/// websocket` (which h2 hands over as a request extension). A `:protocol`
/// we do not speak is `501`, as RFC 9220 §3 asks of a server that
/// advertises extended CONNECT.
fn check_http2(parts: &Parts) -> Result<(), WebSocketUpgradeRejection> {
    use rejection as R;
    if parts.method != Method::CONNECT {
        return Err(R::MethodNotConnect.into());
    }
    match parts.extensions.get::<h2::ext::Protocol>() {
        None => Err(R::InvalidProtocolPseudoheader.into()),
        Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => Ok(()),
        Some(_) => Err(R::UnsupportedProtocol.into()),
    }
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a `name` header lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}
