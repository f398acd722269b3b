//! Typed errors: [`Error`] for setting up and running a server, [`BodyError`] for
//! reading a request body, [`TlsFailure`] for a TLS peer that broke the
//! protocol. Messages say what to do about it.

use std::io;
use std::net::SocketAddr;

/// Why a server could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is already in use by another socket.
    #[error("cannot listen on {addr}: {}", in_use(.addr, .ipv4_taken))]
    AddrInUse {
        /// The address that was asked for.
        addr: SocketAddr,
        /// `addr` is `[::]:P` bound dual-stack (it takes IPv4 connections
        /// too: `net.ipv6.bindv6only = 0`, and no IPv4 address of the
        /// server's on port P), and the socket in its way is on IPv4 port
        /// P: IPv6 port P is free. The text says so, and what to do.
        ipv4_taken: bool,
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
    /// A worker's runtime or thread could not be made.
    #[error("cannot start worker thread {worker}: {source} (raise the open-file limit: ulimit -n, LimitNOFILE= under systemd; or the thread limit: ulimit -u, TasksMax=)")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A worker could not make its parking lot (an epoll set, so a file
    /// descriptor). [`Server::start`](crate::Server::start) fails rather
    /// than serve on without it: every idle connection would stay a task
    /// (about 2 KB each instead of a few bytes), and parked connections
    /// handed over by an upgrade would be closed.
    #[error("worker {worker} cannot make its parking lot: {source} (raise the open-file limit: ulimit -n, LimitNOFILE= under systemd; or turn parking off: Builder::park_idle_after(None), serve --park-after off)")]
    ParkingLot {
        /// The worker's index.
        worker: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A worker could not register a listening socket with its runtime
    /// (`epoll_ctl`). [`Server::start`](crate::Server::start) fails rather
    /// than serve without it: the socket would stay in its port's
    /// `SO_REUSEPORT` group, its share of new connections queued where
    /// nobody accepts them.
    #[error("worker {worker} cannot watch its listening socket on {addr}: {source} (the kernel is out of memory, or the user out of epoll watches: raise fs.epoll.max_user_watches)")]
    Register {
        /// The worker's index.
        worker: usize,
        /// The socket's address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A worker's thread ended while the server started, before it took its
    /// listening sockets: it panicked setting the worker up (a bug; the
    /// panic is in the log). [`Server::start`](crate::Server::start) fails
    /// rather than leave its sockets listening with nobody to accept.
    ///
    /// Only then: a worker that stopped because the server was told to
    /// ([`ServerHandle::shutdown`](crate::ServerHandle::shutdown) called
    /// before the `serve` future was first polled, or while it started) is
    /// no failure, and `serve` returns `Ok` at once, its summary empty.
    #[error(
        "worker thread {worker} ended during the server's start (it panicked: see the log above; a bug in megaconn or in code it ran there: report it with that panic's message)"
    )]
    WorkerEnded {
        /// The worker's index.
        worker: usize,
    },
    /// A thread of the server's own (not a worker) could not be started.
    #[error("cannot start the {name} thread: {source} (at a limit on threads: the user's, ulimit -u; the system's, /proc/sys/kernel/threads-max; the service's, TasksMax= under systemd; or out of memory for its stack)")]
    Thread {
        /// The thread's name, as it would have been named: after the
        /// server's [`Builder::name`](crate::Builder::name) if it has one
        /// (`NAME-stall-watch`, `NAME-join`), else `megaconn-…`. A
        /// `String` since session 56 (a `&'static str` before, which could
        /// not carry the name).
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// [`shutdown_signal`](crate::shutdown_signal) could not install its
    /// SIGINT or SIGTERM handler.
    #[error("cannot watch for SIGINT and SIGTERM: {source} (at the open-file limit: ulimit -n, LimitNOFILE= under systemd)")]
    Signal {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// [`Error::AddrInUse`]'s text after the address: which family's port is
/// taken when it is not the one asked for, and what to do. (`ss` shows the
/// other program on `0.0.0.0:P` or `127.0.0.1:P`, not on `[::]:P`, so the
/// plain text sent an operator looking for the wrong socket.)
fn in_use(addr: &SocketAddr, ipv4_taken: &bool) -> String {
    if !*ipv4_taken {
        return "the address is already in use (stop the other program or pick another port)"
            .to_owned();
    }
    let port = addr.port();
    format!(
        "IPv4 port {port} is in use by another socket (IPv6 port {port} is free), and {addr} is \
         dual-stack: it takes IPv4 connections too (net.ipv6.bindv6only = 0). Stop the other \
         program (`ss -ltnp 'sport = :{port}'` names it) or pick another port; or list an \
         IPv4 address beside it (--listen {addr} --listen <a free IPv4 address>:{port}), \
         which binds {addr} IPv6-only"
    )
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

/// A TLS peer broke the protocol: what the TLS stream (`conn/tls_io.rs`)
/// fails with, inside an `io::Error` of kind `InvalidData`, so that the
/// protocol above it, which sees only `io::Error`s, closes the connection
/// as a protocol error and not as a socket error (`CloseReason::io`). The
/// stream fails with `InvalidData` for nothing else, and a socket never
/// does: HTTP/2, whose h2 keeps an I/O error's kind and text but not its
/// type, goes by the kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFailure {
    /// rustls rejected a record or a message (a bad record, a message out
    /// of place, a 33rd KeyUpdate request in a row); the alert it queued,
    /// if any, was sent.
    #[error("TLS: {0}")]
    Rejected(#[from] rustls::Error),
    /// The peer's records held `held` bytes without completing a message:
    /// more than `limit`, what one connection may make us buffer.
    #[error("TLS: the peer sent {held} bytes of records without completing a message (limit {limit} bytes)")]
    TooMuchBuffered {
        /// The bytes buffered.
        held: usize,
        /// The limit.
        limit: usize,
    },
    /// The client's first bytes were a plain HTTP request, not a TLS
    /// record: an `http://` URL for an `https://` port. It was answered
    /// `400` in plain text (`tls_io::PLAIN_HTTP_ANSWER`).
    #[error("TLS: the client sent a plain HTTP request to a TLS port (answered 400)")]
    PlainHttp,
}

impl TlsFailure {
    /// The failure inside `e`, if `e` carries one.
    pub(crate) fn of(e: &io::Error) -> Option<&TlsFailure> {
        e.get_ref()?.downcast_ref()
    }
}

impl From<TlsFailure> for io::Error {
    fn from(e: TlsFailure) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}
