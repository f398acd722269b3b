//! Why a connection closed, for every protocol: one enum for log lines, the
//! `reason` label of `megaconn_connections_closed_total` and
//! [`ConnectionEvent::Closed`](crate::ConnectionEvent).
//!
//! The kinds are protocol-neutral (a timeout names its phase, not its
//! protocol); what a protocol adds (the HTTP status it answered, the HTTP/2
//! error code it sent) rides along as [`ProtocolDetail`] data and never
//! changes the metric label, so dashboards stay stable as protocols are added.

use std::fmt;
use std::io;

use http::StatusCode;

use crate::error::TlsFailure;

/// Why a connection closed. Reported exactly once per connection, by the one
/// place that counts closes (the connection core's `Connection::close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed its side, or left before or during its TLS
    /// handshake, or reset the connection while no request or message of
    /// its was under way (HTTP/1.1 between requests, HTTP/2 with no stream
    /// open, WebSocket and framed between messages): a dropped keep-alive
    /// connection, parked or not. Over TLS a fatal alert from the client
    /// counts as a reset does (here, or midway through a request
    /// [`CloseReason::Io`]): its decision, such as not trusting our
    /// certificate; `megaconn_tls_alerts_received_total{alert}` says which.
    ///
    /// For HTTP/2, "no stream open" counts h2's streams too: no request
    /// accepted whose handler or response is still running, none h2 opened
    /// and not yet handed over, no finished stream whose response h2 still
    /// queues (flow control). Only bytes in h2's codec buffers are not
    /// seen (its encoder's write buffer, a partial frame in its read
    /// buffer: a HEADERS frame the reset cut, or one waiting for its
    /// CONTINUATION): h2 does not show them, so a reset then still counts
    /// here.
    ClientClosed,
    /// The server chose to close (keep-alive off, `Connection: close`,
    /// HTTP/1.0, or an upgraded connection its handler dropped).
    ServerClosed,
    /// Graceful shutdown closed an idle connection (or, at the deadline,
    /// one still busy: `ShutdownSummary::forced` counts those).
    Shutdown,
    /// Nothing arrived within `idle_timeout`.
    IdleTimeout,
    /// The request head did not complete within `read_header_timeout` (or
    /// the HTTP/2 handshake within it).
    HeaderTimeout,
    /// The request did not complete within `read_timeout`; or, with it
    /// off, an HTTP/1.1 request body sent nothing for `idle_timeout` while
    /// it was awaited (its handler waited for it, or the server drained
    /// what the handler left unread).
    ReadTimeout,
    /// The response did not complete within `write_timeout`; on a native
    /// WebSocket or framed connection, a write did not. With
    /// `write_timeout` off: the peer took none of our bytes for the
    /// heartbeat timeout or, without one (HTTP/1.1 has none),
    /// `write_stall_timeout`.
    WriteTimeout,
    /// The TLS handshake did not complete within its timeout.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (bad client hello, no shared cipher, plain
    /// HTTP sent to a TLS port, ...).
    TlsHandshakeFailed,
    /// A malformed, abusive or over-limit message; what the protocol answered.
    Protocol(ProtocolDetail),
    /// A request body was left unread (too large to drain, or never sent).
    UnreadBody,
    /// The service failed or broke its response framing.
    ServerError,
    /// The handler or its response body panicked.
    Panic,
    /// Reset, broken pipe or another socket error midway through a request,
    /// a response or a message (a connection reset between them, HTTP/2
    /// with no stream open, is [`CloseReason::ClientClosed`], which says
    /// what "no stream open" covers).
    Io(io::ErrorKind),
    /// Refused right after accept by an admission limit (accept rate, per IP).
    Limit,
    /// A framed connection's peer sent nothing within `heartbeat_timeout`,
    /// a WebSocket peer (the native route) nothing, not even a pong, within
    /// `WebSocketRoute::heartbeat_timeout`, or an HTTP/2 peer did not
    /// answer a keep-alive PING within `http2_keep_alive_timeout`.
    HeartbeatTimeout,
    /// A framed connection's peer did not read what was pushed to it (its
    /// socket could not take a pushed frame).
    SlowConsumer,
    /// Parked and idle, handed to the process that replaced this one (a
    /// zero-downtime upgrade): the connection stays open over there.
    ///
    /// Told when the connection leaves this process's parking lot, before
    /// its record is sent: it does not prove the new process took it. The
    /// send may fail (the new process gone), the new process may refuse it
    /// (over a limit, its `import` refusing, counted there in
    /// `handover_refused`), and a new process of a session before 47 gets
    /// only HTTP/1.1 connections: in those cases the connection is closed
    /// without another `on_close`.
    HandedOver,
    /// A message connection's peer (framed, WebSocket) began a message and
    /// did not complete it within `message_timeout` (a WebSocket is closed
    /// with 1008).
    MessageTimeout,
    /// Idle (parked) between requests, closed at `max_connections` to make
    /// room for a new connection waiting to be accepted, longest idle
    /// first, as nginx reuses idle keep-alive connections. HTTP/1.1 only
    /// (clients retry a request on an idle connection that closed); never
    /// a connection with a request under way, or one whose next request
    /// already reached its socket.
    Evicted,
    /// A message connection (framed, WebSocket) closed from outside its
    /// handler, by [`Hub::close`](crate::Hub::close) (a revoked token, a
    /// ban): after what was pushed to it before, a WebSocket with a close
    /// frame (1008 unless the caller chose another code).
    Kicked,
    /// A message connection reset from outside its handler, by
    /// [`Hub::reset`](crate::Hub::reset) (an abusive or duplicate device):
    /// closed with `SO_LINGER` 0, so the peer reads a reset
    /// (`ECONNRESET`), what was queued for it is dropped, and the socket
    /// leaves no `TIME_WAIT` and waits on no peer.
    Reset,
    /// Graceful shutdown closed an HTTP/1.1 connection that had not sent a
    /// whole request head: a new one (Go's `StateNew`: silent since its
    /// accept, or midway through its first head) 5 s after its accept,
    /// heard at its turn among the idle connections, as Go's `Shutdown` closes a new
    /// connection 5 s old; or one midway through a later head 5 s into the
    /// drain. A close of the drain, not a forced one. (It held the drain
    /// until `read_header_timeout`, or with that off to the deadline.) A
    /// connection still in its TLS or HTTP/2 handshake has sent no request
    /// either: closed by the same rule, without a word (since session 54;
    /// a TLS one counted `megaconn_tls_handshakes_total{outcome="shutdown"}`
    /// too).
    ShutdownBeforeRequest,
}

/// What a protocol said when it closed a connection for a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolDetail {
    /// HTTP/1.1: the status of the response sent before closing: megaconn's
    /// own error answer to a request head it refused (`400`, `413`, `414`,
    /// `431`, `505`), or, when a request body broke its chunked framing or
    /// went over `max_body_bytes`, the handler's answer, whatever it was (a
    /// handler that did not read the body may have answered `200` before
    /// the server, draining it, found it malformed). `limit_hits` says
    /// which limit it was.
    Status(StatusCode),
    /// HTTP/2: the error code of the `GOAWAY` that was sent
    /// (`0xb` is `ENHANCE_YOUR_CALM`: abuse, such as rapid reset or a flood).
    Http2(u32),
    /// A framed protocol: the frame or line that broke the framing.
    Framing(FramingError),
    /// WebSocket: the close code sent (1002 protocol error, 1007 bad UTF-8,
    /// 1009 too large).
    WebSocket(u16),
    /// TLS, after the handshake: the peer broke the protocol (rustls
    /// rejected a record or a message, such as a 33rd KeyUpdate request in a
    /// row, or its records held more than 64 KiB without completing a
    /// message). The alert rustls queued went out, and no `close_notify`
    /// after it. Counted in `protocol_errors`. (A failure during the
    /// handshake is [`CloseReason::TlsHandshakeFailed`]; a fatal alert from
    /// the peer is no protocol error: see [`CloseReason::ClientClosed`].)
    Tls,
    /// Server-Sent Events ([`SseRoute`](crate::SseRoute)): the client sent
    /// bytes after its request (an event stream's client sends none, and a
    /// request pipelined behind an endless response would never be
    /// answered).
    Sse,
    /// The PROXY protocol: a connection from a `proxy_protocol` source
    /// that did not start with a valid header (none, a broken one, or one
    /// over `MAX_PROXY_HEADER_BYTES`); `megaconn_proxy_headers_total` says
    /// which.
    ProxyHeader,
}

/// How a framed connection broke its framing (see
/// [`Builder::listen_framed_on`](crate::Builder::listen_framed_on)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingError {
    /// A length header announced a frame over `max_frame_bytes`.
    FrameTooLarge,
    /// A line grew past `max_line_bytes` without its newline.
    LineTooLong,
    /// A length header that makes no sense (negative or overflowing after
    /// the length adjustment).
    BadHeader,
    /// A line that is not UTF-8 (line framing carries text; so does an
    /// event stream: a push to one that is not UTF-8).
    NotUtf8,
    /// A binary push to a Server-Sent Events stream that is not one whole
    /// event as [`SseEvent`](crate::SseEvent) encodes one.
    NotAnEvent,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramingError::FrameTooLarge => "frame too large",
            FramingError::LineTooLong => "line too long",
            FramingError::BadHeader => "bad length header",
            FramingError::NotUtf8 => "line not UTF-8",
            FramingError::NotAnEvent => "not one whole event",
        })
    }
}

impl From<StatusCode> for ProtocolDetail {
    fn from(status: StatusCode) -> ProtocolDetail {
        ProtocolDetail::Status(status)
    }
}

/// Whether socket error `e` is the client leaving, not a failure: a reset
/// (an RST on a parked connection, a health check that resets), an abort, a
/// pipe it broke. Over TLS also a close before or during its handshake
/// (`TlsIo::poll_handshake`) and a fatal alert at any time (the TLS stream
/// fails with `ConnectionAborted` for both); in the clear between requests
/// or messages ([`CloseReason::io_between`]).
pub(crate) fn client_left(e: &io::Error) -> bool {
    client_left_kind(e.kind())
}

/// [`client_left`] for an error already reduced to its kind (a
/// [`CloseReason::Io`]).
pub(crate) fn client_left_kind(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(kind, ConnectionReset | ConnectionAborted | BrokenPipe)
}

impl CloseReason {
    /// A close for a socket error, or for the TLS peer's protocol error that
    /// the TLS stream failed with ([`TlsFailure`]).
    pub(crate) fn io(e: &io::Error) -> CloseReason {
        if TlsFailure::of(e).is_some() {
            return CloseReason::Protocol(ProtocolDetail::Tls);
        }
        CloseReason::Io(e.kind())
    }

    /// A close for socket error `e`; `between`: the connection was between
    /// requests or messages, nothing of one under way. A reset, abort or
    /// broken pipe then is the client leaving ([`client_left`]), as a FIN
    /// is: a keep-alive connection it dropped, parked or not. Midway through
    /// one it is an I/O error.
    pub(crate) fn io_between(e: &io::Error, between: bool) -> CloseReason {
        if between && client_left(e) {
            CloseReason::ClientClosed
        } else {
            CloseReason::io(e)
        }
    }

    /// A protocol-error close that answered `status` (HTTP/1.1).
    pub(crate) fn status(status: StatusCode) -> CloseReason {
        CloseReason::Protocol(ProtocolDetail::Status(status))
    }

    /// This reason as the exchange that closes with it ends, having sent a
    /// response of status `sent` (`None`: none went out): an HTTP/1.1
    /// protocol error carries the status that went out, not the one its
    /// cause would have called for. A request body found malformed or too
    /// large is the handler's to answer (it reads the body, or it answered
    /// without reading it and the server drained it after): a `413` or
    /// `400` recorded then was never sent, and the close said a status the
    /// client, the access line and `requests_total` did not see.
    pub(crate) fn answered(self, sent: Option<StatusCode>) -> CloseReason {
        match (self, sent) {
            (CloseReason::Protocol(ProtocolDetail::Status(_)), Some(sent)) => {
                CloseReason::status(sent)
            }
            _ => self,
        }
    }

    /// How many metric labels there are (see [`CloseReason::LABELS`]).
    pub(crate) const COUNT: usize = 23;

    /// Metric labels (`reason` of `megaconn_connections_closed_total`), by
    /// [`CloseReason::index`].
    pub(crate) const LABELS: [&'static str; CloseReason::COUNT] = [
        "client_closed",
        "server_closed",
        "shutdown",
        "idle_timeout",
        "header_timeout",
        "read_timeout",
        "write_timeout",
        "protocol_error",
        "unread_body",
        "server_error",
        "panic",
        "io_error",
        "limit",
        "tls_handshake_timeout",
        "tls_handshake_failed",
        "heartbeat_timeout",
        "slow_consumer",
        "handed_over",
        "message_timeout",
        "evicted",
        "kicked",
        "reset",
        "shutdown_before_request",
    ];

    /// This reason's position in [`CloseReason::LABELS`] and in the worker's
    /// counter array.
    pub(crate) fn index(self) -> usize {
        match self {
            CloseReason::ClientClosed => 0,
            CloseReason::ServerClosed => 1,
            CloseReason::Shutdown => 2,
            CloseReason::IdleTimeout => 3,
            CloseReason::HeaderTimeout => 4,
            CloseReason::ReadTimeout => 5,
            CloseReason::WriteTimeout => 6,
            CloseReason::Protocol(_) => 7,
            CloseReason::UnreadBody => 8,
            CloseReason::ServerError => 9,
            CloseReason::Panic => 10,
            CloseReason::Io(_) => 11,
            CloseReason::Limit => 12,
            CloseReason::TlsHandshakeTimeout => 13,
            CloseReason::TlsHandshakeFailed => 14,
            CloseReason::HeartbeatTimeout => 15,
            CloseReason::SlowConsumer => 16,
            CloseReason::HandedOver => 17,
            CloseReason::MessageTimeout => 18,
            CloseReason::Evicted => 19,
            CloseReason::Kicked => 20,
            CloseReason::Reset => 21,
            CloseReason::ShutdownBeforeRequest => 22,
        }
    }

    /// The metric label of this reason (`client_closed`, `idle_timeout`, …).
    pub fn label(self) -> &'static str {
        CloseReason::LABELS[self.index()]
    }

    /// Closes that may leave unread bytes in the socket: after our last
    /// answer we half-close and read until the client closes, or a reset
    /// would destroy the answer before the client read it. Graceful
    /// shutdown closes idle connections whose client may be sending its
    /// next request right then: read and dropped, it is not answered with a
    /// reset (the client sees the end of the stream, which HTTP clients
    /// take for an idle connection closed and retry on another). A slow
    /// consumer's last frame and close frame go out after its socket was
    /// shut for reading (a parked one is woken so): a peer still talking
    /// meanwhile would get them destroyed by the reset.
    pub(crate) fn needs_linger(self) -> bool {
        matches!(
            self,
            CloseReason::Shutdown
                | CloseReason::ShutdownBeforeRequest
                | CloseReason::Protocol(_)
                | CloseReason::UnreadBody
                | CloseReason::HeaderTimeout
                | CloseReason::ReadTimeout
                | CloseReason::ServerError
                | CloseReason::Panic
                | CloseReason::SlowConsumer
        )
    }
}

impl CloseReason {
    /// Closes whose last answer may be incomplete: the peer must not take
    /// the end of the stream for the end of the answer (over TLS, no
    /// `close_notify`). A TLS protocol error too: its alert was the last
    /// word, and a `close_notify` after it would say an orderly close.
    pub(crate) fn truncates(self) -> bool {
        matches!(
            self,
            CloseReason::ServerError
                | CloseReason::Panic
                | CloseReason::WriteTimeout
                | CloseReason::Protocol(ProtocolDetail::Tls)
        )
    }

    /// Closes we say, over TLS, with `close_notify`: ours, after a whole
    /// answer (or none). Not when the answer may be incomplete
    /// ([`CloseReason::truncates`]), nor when the peer left or the socket
    /// failed (a peer's `close_notify` is answered when it is read).
    pub(crate) fn says_close_notify(self) -> bool {
        // A reset says nothing more: its point is that nothing waits.
        !self.truncates()
            && !matches!(
                self,
                CloseReason::ClientClosed | CloseReason::Io(_) | CloseReason::Reset
            )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("client closed"),
            CloseReason::ServerClosed => f.write_str("server closed"),
            CloseReason::Shutdown => f.write_str("shutdown"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::HeaderTimeout => f.write_str("header timeout"),
            CloseReason::ReadTimeout => f.write_str("read timeout"),
            CloseReason::WriteTimeout => f.write_str("write timeout"),
            CloseReason::TlsHandshakeTimeout => f.write_str("TLS handshake timeout"),
            CloseReason::TlsHandshakeFailed => f.write_str("TLS handshake failed"),
            CloseReason::Protocol(ProtocolDetail::Status(status)) => {
                write!(f, "protocol error ({})", status.as_u16())
            }
            CloseReason::Protocol(ProtocolDetail::Http2(code)) => {
                write!(f, "protocol error (HTTP/2 GOAWAY {code:#x})")
            }
            CloseReason::UnreadBody => f.write_str("unread request body"),
            CloseReason::ServerError => f.write_str("server error"),
            CloseReason::Panic => f.write_str("panic"),
            CloseReason::Io(kind) => write!(f, "i/o error ({kind})"),
            CloseReason::Limit => f.write_str("refused by a limit"),
            CloseReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            CloseReason::SlowConsumer => f.write_str("slow consumer"),
            CloseReason::HandedOver => f.write_str("handed over to the next process"),
            CloseReason::MessageTimeout => f.write_str("message timeout"),
            CloseReason::Evicted => f.write_str("evicted at max_connections"),
            CloseReason::Kicked => f.write_str("closed through the hub (Hub::close)"),
            CloseReason::Reset => f.write_str("reset through the hub (Hub::reset)"),
            CloseReason::ShutdownBeforeRequest => {
                f.write_str("shutdown before a whole request head")
            }
            CloseReason::Protocol(ProtocolDetail::Framing(error)) => {
                write!(f, "protocol error ({error})")
            }
            CloseReason::Protocol(ProtocolDetail::WebSocket(code)) => {
                write!(f, "protocol error (WebSocket close {code})")
            }
            CloseReason::Protocol(ProtocolDetail::Tls) => f.write_str("protocol error (TLS)"),
            CloseReason::Protocol(ProtocolDetail::Sse) => {
                f.write_str("protocol error (bytes from an event stream's client)")
            }
            CloseReason::Protocol(ProtocolDetail::ProxyHeader) => {
                f.write_str("protocol error (no valid PROXY protocol header)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A close reason is 8 bytes, copied into every close's record and
    /// event: a WebSocket peer's close code and reason are handed to its
    /// handler at the close (`WsClose`, `proto/ws/handler.rs`), not carried
    /// here, so this stays as it was before they were (session 47).
    #[test]
    fn a_close_reason_is_8_bytes() {
        assert_eq!(std::mem::size_of::<CloseReason>(), 8);
    }

    /// Every reason has its own label, and labels are unique: a reason added
    /// without a label (or with a copied one) fails here.
    #[test]
    fn labels_are_one_per_reason() {
        let all = [
            CloseReason::ClientClosed,
            CloseReason::ServerClosed,
            CloseReason::Shutdown,
            CloseReason::IdleTimeout,
            CloseReason::HeaderTimeout,
            CloseReason::ReadTimeout,
            CloseReason::WriteTimeout,
            CloseReason::status(StatusCode::BAD_REQUEST),
            CloseReason::UnreadBody,
            CloseReason::ServerError,
            CloseReason::Panic,
            CloseReason::Io(io::ErrorKind::ConnectionReset),
            CloseReason::Limit,
            CloseReason::TlsHandshakeTimeout,
            CloseReason::TlsHandshakeFailed,
            CloseReason::HeartbeatTimeout,
            CloseReason::SlowConsumer,
            CloseReason::HandedOver,
            CloseReason::MessageTimeout,
            CloseReason::Evicted,
            CloseReason::Kicked,
            CloseReason::Reset,
            CloseReason::ShutdownBeforeRequest,
        ];
        let mut seen: Vec<usize> = all.iter().map(|r| r.index()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..CloseReason::COUNT).collect::<Vec<_>>());
        assert_eq!(
            CloseReason::Protocol(ProtocolDetail::Http2(0xb)).label(),
            "protocol_error"
        );
    }
}
