//! Typed errors: [`Error`] for setting up and running a server, [`BodyError`] for
//! reading a request body. Messages say what to do about it.

use std::io;
use std::net::SocketAddr;

/// Why a server could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is already in use by another socket.
    #[error("cannot listen on {addr}: the address is already in use (stop the other program or pick another port)")]
    AddrInUse {
        /// The address that was asked for.
        addr: SocketAddr,
    },
    /// Creating, configuring or binding a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// No listen address was given.
    #[error("no listen address given: call Server::bind(addr) or Builder::listen_on(addr)")]
    NoAddress,
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A worker thread could not be started.
    #[error("cannot start worker thread {worker}: {source}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A thread of the server's own (not a worker) could not be started.
    #[error("cannot start the {name} thread: {source} (the process or the user may be at its thread limit: see ulimit -u and /proc/sys/kernel/threads-max)")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why reading a request body failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is larger than the server's `max_body_bytes`. A service
    /// reading the body sees it as http-body-util's `LengthLimitError`
    /// instead (what axum and tower-http answer with 413); the other kinds
    /// arrive boxed as themselves.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The client sent a body the server cannot decode (bad chunk framing).
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    /// The connection closed or failed before the whole body arrived.
    #[error("connection closed before the request body was complete")]
    Incomplete,
    /// The server stopped reading the body (the request timed out).
    #[error("request body read timed out")]
    TimedOut,
}
