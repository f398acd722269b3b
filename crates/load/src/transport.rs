//! A `load` connection's byte stream: plain TCP or TLS over TCP, and opening
//! one (connect, then the TLS handshake for `https://`), classifying failures
//! into the report's error kinds and telling whether a handshake was resumed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::report::ErrorKind;
use crate::sys;

/// Where and how to connect: the address, and the TLS settings for `https://`.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The target address.
    pub addr: SocketAddr,
    /// `Some` for `https://`.
    pub tls: Option<TlsEndpoint>,
}

/// The TLS half of an [`Endpoint`].
#[derive(Debug, Clone)]
pub(crate) struct TlsEndpoint {
    /// The client configuration (shared by every thread: one session cache).
    pub config: Arc<ClientConfig>,
    /// Name to verify and send as SNI.
    pub name: ServerName<'static>,
}

/// How a connection's TLS handshake went (none for cleartext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// Cleartext: no handshake.
    None,
    /// A full handshake (certificate, key exchange, signature).
    Full,
    /// An abbreviated handshake from a cached session or ticket.
    Resumed,
}

/// An open connection's byte stream.
// The TLS variant is boxed: rustls' state is large and a plain connection
// should not carry its size.
pub(crate) enum Stream {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connects to `endpoint` and, for TLS, completes the handshake, all within
/// `timeout`. On failure returns the error kind to count.
pub(crate) async fn open(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<(Stream, Handshake), ErrorKind> {
    let started = Instant::now();
    let tcp = sys::connect(endpoint.addr, None, timeout)
        .await
        .map_err(|e| ErrorKind::of_connect(&e))?;
    let Some(tls) = &endpoint.tls else {
        return Ok((Stream::Plain(tcp), Handshake::None));
    };
    let left = timeout.saturating_sub(started.elapsed());
    let connector = TlsConnector::from(Arc::clone(&tls.config));
    let stream = tokio::time::timeout(left, connector.connect(tls.name.clone(), tcp))
        .await
        .map_err(|_| ErrorKind::ConnectTimeout)?
        .map_err(|e| handshake_error(&e))?;
    let kind = match stream.get_ref().1.handshake_kind() {
        Some(HandshakeKind::Resumed) => Handshake::Resumed,
        _ => Handshake::Full,
    };
    Ok((Stream::Tls(Box::new(stream)), kind))
}

/// A failed handshake: a TLS alert or verification failure counts as `tls`,
/// a socket error as what it is.
fn handshake_error(e: &io::Error) -> ErrorKind {
    let is_tls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        || e.kind() == io::ErrorKind::InvalidData;
    if is_tls {
        ErrorKind::Tls
    } else {
        ErrorKind::of_io(e)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
