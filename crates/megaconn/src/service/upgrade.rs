//! `101 Switching Protocols`: the handler takes over the raw connection.
//!
//! A request that asks for an upgrade (`Connection: upgrade` + `Upgrade: …`, or
//! `CONNECT`) carries an [`OnUpgrade`] extension. When the handler answers `101`
//! (or `2xx` to `CONNECT`), the connection writes the response head, stops
//! speaking HTTP and hands the socket — plus any bytes it had already read past
//! the request — to the [`OnUpgrade`] future, which resolves to [`Upgraded`].
//!
//! ```no_run
//! # use megaconn::{Body, OnUpgrade};
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! async fn handle(mut req: http::Request<Body>) -> http::Response<Body> {
//!     let on_upgrade = req.extensions_mut().remove::<OnUpgrade>().expect("upgrade request");
//!     tokio::task::spawn_local(async move {
//!         let mut io = on_upgrade.await.expect("connection upgraded");
//!         io.write_all(b"hello over the raw socket").await.ok();
//!     });
//!     http::Response::builder()
//!         .status(101)
//!         .header("connection", "upgrade")
//!         .header("upgrade", "echo")
//!         .body(Body::empty())
//!         .unwrap()
//! }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::rewind::Rewind;

/// Object-safe stream type behind [`Upgraded`].
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The raw connection after a protocol switch. Bytes the server had already read
/// past the request are returned first by reads.
pub struct Upgraded {
    inner: Rewind<Box<dyn Io>>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read_ahead", &self.inner.read_ahead.len())
            .finish_non_exhaustive()
    }
}

impl Upgraded {
    pub(crate) fn new<T>(io: T, read_ahead: Bytes) -> Upgraded
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Upgraded {
            inner: Rewind {
                io: Box::new(io),
                read_ahead,
            },
        }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request extension that resolves to the raw connection once the handler's
/// `101` response has been written. Errors if the connection did not switch (the
/// handler answered something else, or the connection failed first).
///
/// It is `Clone` because request extensions must be; only one clone can
/// receive the connection, the others resolve to an error.
#[derive(Debug, Clone)]
pub struct OnUpgrade {
    rx: Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>,
}

impl Future for OnUpgrade {
    type Output = io::Result<Upgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rx) = slot.as_mut() else {
            return Poll::Ready(Err(not_upgraded()));
        };
        let result = std::task::ready!(Pin::new(rx).poll(cx));
        *slot = None;
        Poll::Ready(result.map_err(|_| not_upgraded()))
    }
}

fn not_upgraded() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was not upgraded (the response was not 101, or the connection closed)",
    )
}

/// The connection's end: hands the IO over.
pub(crate) type UpgradeSender = oneshot::Sender<Upgraded>;

/// A pending upgrade: the extension for the request and the sender for the engine.
pub(crate) fn pending() -> (UpgradeSender, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (
        tx,
        OnUpgrade {
            rx: Arc::new(Mutex::new(Some(rx))),
        },
    )
}
