//! What the connection engine needs from a byte stream.
//!
//! Any `AsyncRead + AsyncWrite` works; [`Transport::poll_read_ready`] lets an idle
//! connection wait for bytes *without* holding a read buffer. Streams that cannot
//! report readiness (in-memory pipes, TLS streams with buffered plaintext) keep
//! the default, which says "ready" so the engine simply reads.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::conn::tls_io::ParkedTls;

/// A byte stream the HTTP/1 engine can serve.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Whether the stream is encrypted (TLS): traced requests on it say
    /// `url.scheme = https`. Default: `false`.
    const SECURE: bool = false;

    /// Polls until the stream has bytes (or EOF, or an error) to read.
    ///
    /// The default is always ready, which is correct but makes an idle connection
    /// hold a read buffer while it waits.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Half-closes the stream after an answer that failed midway (the
    /// service's error, a panic): as `poll_shutdown`, except that a TLS
    /// stream shuts its socket without `close_notify`, so the peer sees the
    /// answer truncated rather than complete. Default: `poll_shutdown`.
    fn poll_shutdown_truncated(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(self).poll_shutdown(cx)
    }

    /// Whether the stream holds input it read but cannot hand over yet: a
    /// TLS stream holding the head of a record whose rest has not arrived.
    /// A WebSocket whose stream says so is in the middle of a message,
    /// bounded by its route's `message_timeout` (a peer that trickles a
    /// record gets the close one that trickles a message gets, 1008);
    /// otherwise, since no byte reaches it, only its heartbeat bounds it.
    /// megaconn's own TLS says so; a TLS stream of your own given to
    /// [`Builder::serve_connection`](crate::Builder::serve_connection)
    /// should too. Checked between reads, never on the request path.
    /// Default: `false`.
    fn holds_partial_input(&self) -> bool {
        false
    }
}

/// How an idle connection on a stream may leave the runtime: the core's
/// hot/cold policy, kept off the public [`Transport`] so that a custom
/// transport given to [`Builder::serve_connection`](crate::Builder::serve_connection)
/// never parks (it is wrapped in [`Foreign`]).
pub(crate) trait Parkable: Transport {
    /// Whether an idle connection on this stream may be parked at all: plain
    /// sockets and TLS streams over them qualify.
    const PARKABLE: bool;

    /// The socket's descriptor, by which the parking lot knows the
    /// connection (it notes when one is to be retired at accept). Default:
    /// none (a custom transport).
    fn lot_fd(&self) -> Option<RawFd> {
        None
    }

    /// Whether bytes wait unread in the socket, asked of the kernel
    /// ([`sys::input_waiting`](crate::conn::sys::input_waiting), one
    /// `recv` with `MSG_PEEK`), not of the runtime's readiness, which lags
    /// until its driver polls: graceful shutdown asks before it closes an
    /// idle connection, so that a request already received is served.
    /// False without a socket of ours (a custom transport).
    fn input_waiting(&self) -> bool {
        self.lot_fd().is_some_and(|fd| {
            // SAFETY: `fd` is this stream's socket, open while `self` lives.
            crate::conn::sys::input_waiting(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
        })
    }

    /// Whether an idle connection should be parked at once instead of after
    /// `park_idle_after`: true for a socket woken from the parking lot that
    /// served its message without ever having to wait, which is what a
    /// heartbeat on a cold connection looks like (see `woken.rs`).
    fn repark_when_idle(&self) -> bool {
        false
    }

    /// Says that the next read is the first thing a freshly polled task
    /// does after its wait for bytes ended (`http1`'s `wait_for_bytes`):
    /// a stream registered with the runtime may then try the read on the
    /// readiness it has recorded instead of polling it (see
    /// `WokenSocket`'s `poll_read`). Default: nothing.
    fn read_follows_wake(&mut self) {}

    /// Whether parking now re-parks a wake-up served without a wait: then a
    /// wake within `park_idle_after` means a busy connection (it waits as a
    /// task). A new connection parked straight after its opening request
    /// (`WokenSocket::accepted`) is not one: its next request is a wake
    /// like any other.
    fn reparks_a_wake(&self) -> bool {
        self.repark_when_idle()
    }

    /// Whether the stream is a socket the parking lot woke, still in the
    /// lot's epoll set, with every byte that reached it since the wake read
    /// (up to a short read) or announced by an edge of its own: then it
    /// parks again with no `epoll_ctl` (`conn/park.rs`). False, the default,
    /// is always safe: the lot re-polls the socket.
    fn still_watched(&self) -> bool {
        false
    }

    /// The certificate chain the peer presented in its TLS handshake,
    /// verified (`TlsConfig::client_auth`): `None` on cleartext, with
    /// client auth off, for a client that sent none, and for a custom
    /// transport (the default). Read off the session, which keeps it
    /// anyway: nothing is kept for it here.
    fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        None
    }

    /// [`peer_certificates`](Parkable::peer_certificates) as handlers get
    /// it. Default: a copy at each call; a TLS stream copies once per
    /// handshake or wake-up and shares that copy by refcount, for HTTP/1.1,
    /// which asks at every request.
    fn shared_peer_certificates(&self) -> Option<crate::conn::client_auth::PeerCertificates> {
        crate::conn::client_auth::PeerCertificates::of(self.peer_certificates())
    }

    /// When the connection was accepted, if a step before this stream took
    /// its time since (a TLS handshake): a graceful drain cuts a new
    /// connection's first request 5 s after its accept, every step
    /// together, as Go does (`LocalShutdown::head_cut`). `None`, the
    /// default: the first request's wait began at the accept (or at the
    /// wake from the lot), and counts from there.
    fn accepted_at(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// Gives up the stream as a bare socket for parking.
    fn into_parked(self) -> io::Result<OwnedFd>
    where
        Self: Sized,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this transport cannot be parked",
        ))
    }

    /// Gives up the stream for parking: the bare socket and, for a TLS
    /// stream, the session that waits beside it in the worker's table.
    fn into_parked_parts(self) -> io::Result<(OwnedFd, Option<ParkedTls>)>
    where
        Self: Sized,
    {
        self.into_parked().map(|socket| (socket, None))
    }
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl Parkable for TcpStream {
    const PARKABLE: bool = true;

    fn lot_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    /// A proxied connection's accept, in the task that read its PROXY
    /// header (`proxy_header::accepted_here`): a drain's 5 s for its first
    /// request count from there, the header's wait included, as over TLS
    /// they count through the handshake. Asked at a first request's wait
    /// only; another connection's task answers `None` (a thread-local's
    /// read).
    fn accepted_at(&self) -> Option<tokio::time::Instant> {
        crate::conn::proxy_header::accepted_here()
    }

    fn into_parked(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
}

impl Transport for UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UnixStream::poll_read_ready(self, cx)
    }
}

impl Transport for tokio::io::DuplexStream {}

pin_project_lite::pin_project! {
    /// A caller's own transport: served like any other, never parked.
    #[derive(Debug)]
    pub(crate) struct Foreign<T> {
        #[pin]
        pub(crate) io: T,
    }
}

impl<T: AsyncRead> AsyncRead for Foreign<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Foreign<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, data)
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

impl<T: Transport> Transport for Foreign<T> {
    const SECURE: bool = T::SECURE;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }

    fn poll_shutdown_truncated(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_shutdown_truncated(cx)
    }

    fn holds_partial_input(&self) -> bool {
        self.io.holds_partial_input()
    }
}

impl<T: Transport> Parkable for Foreign<T> {
    const PARKABLE: bool = false;
}
