//! The HTTP/1.1 connection engine (ours; parsing is httparse's).
//!
//! A connection's life, in [`conn`]:
//!
//! ```text
//!   accept --> wait for bytes --> read head --> exchange --+--> close
//!                  ^   (no buffers held)                    |
//!                  +---------------- keep-alive ------------+--> upgrade (101)
//! ```
//!
//! [`head`] parses the request head and applies RFC 9112's framing rules,
//! [`decode`] reads request bodies, [`exchange`] runs one request/response and
//! [`encode`] frames the response.

pub(crate) mod conn;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod exchange;
pub(crate) mod head;

use std::fmt;
use std::io;

use http::StatusCode;

use crate::upgrade::UpgradeSender;

pub(crate) use conn::{serve_connection, ConnEnd};

/// How an exchange ended, as far as the connection is concerned.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Read the next request.
    KeepAlive,
    /// Close the connection (after flushing what is buffered).
    Close(CloseReason),
    /// Hand the socket to the handler.
    Upgrade(UpgradeSender),
}

/// Why a connection closed: one enum for log lines, the `reason` label of
/// `megaconn_connections_closed_total` and [`ConnectionEvent::Closed`](crate::ConnectionEvent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed its side.
    ClientClosed,
    /// The server chose to close (keep-alive off, `Connection: close`, HTTP/1.0).
    ServerClosed,
    /// Graceful shutdown closed an idle connection.
    Shutdown,
    /// No request arrived within `idle_timeout`.
    IdleTimeout,
    /// The request head did not complete within `read_header_timeout`.
    HeaderTimeout,
    /// The request did not complete within `read_timeout`.
    ReadTimeout,
    /// The response did not complete within `write_timeout`.
    WriteTimeout,
    /// A malformed or over-limit request; the status that was sent.
    Protocol(StatusCode),
    /// A request body was left unread (too large to drain, or never sent).
    UnreadBody,
    /// The service failed or broke its response framing.
    ServerError,
    /// The handler or its response body panicked.
    Panic,
    /// Reset, broken pipe or another socket error.
    Io(io::ErrorKind),
    /// Refused right after accept by an admission limit (accept rate, per IP).
    Limit,
    /// Handed to the handler after `101 Switching Protocols`.
    Upgraded,
}

impl CloseReason {
    pub(crate) fn io(e: &io::Error) -> CloseReason {
        CloseReason::Io(e.kind())
    }

    /// How many metric labels there are (see [`CloseReason::LABELS`]).
    pub(crate) const COUNT: usize = 13;

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
            // The metrics keep upgrades in the slot after the labelled reasons.
            CloseReason::Upgraded => CloseReason::COUNT,
        }
    }

    /// The metric label of this reason (`client_closed`, `idle_timeout`, …).
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Upgraded => "upgraded",
            other => CloseReason::LABELS[other.index()],
        }
    }

    /// Closes that may leave unread bytes in the socket: after our response we
    /// half-close and read until the client closes, or a reset would destroy
    /// the response before the client read it.
    pub(crate) fn needs_linger(self) -> bool {
        matches!(
            self,
            CloseReason::Protocol(_)
                | CloseReason::UnreadBody
                | CloseReason::HeaderTimeout
                | CloseReason::ReadTimeout
                | CloseReason::ServerError
                | CloseReason::Panic
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
            CloseReason::Protocol(status) => write!(f, "protocol error ({})", status.as_u16()),
            CloseReason::UnreadBody => f.write_str("unread request body"),
            CloseReason::ServerError => f.write_str("server error"),
            CloseReason::Panic => f.write_str("panic"),
            CloseReason::Io(kind) => write!(f, "i/o error ({kind})"),
            CloseReason::Limit => f.write_str("refused by a limit"),
            CloseReason::Upgraded => f.write_str("upgraded"),
        }
    }
}
