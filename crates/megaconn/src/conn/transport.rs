//! What the connection engine needs from a byte stream.
//!
//! Any `AsyncRead + AsyncWrite` works; [`Transport::poll_read_ready`] lets an idle
//! connection wait for bytes *without* holding a read buffer. Streams that cannot
//! report readiness (in-memory pipes, TLS streams with buffered plaintext) keep
//! the default, which says "ready" so the engine simply reads.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// A byte stream the HTTP/1 engine can serve.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Polls until the stream has bytes (or EOF, or an error) to read.
    ///
    /// The default is always ready, which is correct but makes an idle connection
    /// hold a read buffer while it waits.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Whether an idle connection on this stream may be parked: taken out of the
    /// runtime and kept as a bare socket until bytes arrive. Only plain sockets
    /// qualify (a TLS stream has session state that lives in user space).
    const PARKABLE: bool = false;

    /// Whether an idle connection on this stream should be parked at once
    /// instead of after `park_idle_after`: true for a socket woken from the
    /// parking lot that served its requests without ever having to wait, which
    /// is what a heartbeat on a cold connection looks like (see `woken.rs`).
    fn repark_when_idle(&self) -> bool {
        false
    }

    /// Gives up the stream as a bare socket for parking. Called only when
    /// [`PARKABLE`](Transport::PARKABLE) is true.
    fn into_parked(self) -> io::Result<OwnedFd>
    where
        Self: Sized,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this transport cannot be parked",
        ))
    }
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    const PARKABLE: bool = true;

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
