//! `101 Switching Protocols`: the handler takes over the raw connection.
//!
//! A request that asks for an upgrade (`Connection: upgrade` + `Upgrade: …`, or
//! `CONNECT`) carries an [`OnUpgrade`] extension. When the handler answers `101`
//! (or `2xx` to `CONNECT`), the connection writes the response head, stops
//! speaking HTTP and hands the socket — plus any bytes it had already read past
//! the request — to the [`OnUpgrade`] future, which resolves to [`Upgraded`].
//!
//! The upgraded socket still counts as an open connection: it holds its slot
//! under `max_connections`, stays in `connections_open`, and reports its close
//! (client closed on EOF, an I/O error, or server closed when the handler
//! drops it) when it really ends.
//!
//! It also keeps its place in graceful shutdown, although it left the task
//! that served it: the worker's drain waits for it as for any connection,
//! up to `shutdown_timeout`, then closes it by force (counted as forced).
//! A [`WebSocket`](crate::axum_ws::WebSocket) hears the start and sends its
//! peer a close 1001 (going away), over HTTP/1.1 and HTTP/2.
//!
//! Writes on it are not bounded by time: [`Builder::write_timeout`](crate::Builder::write_timeout) (and the
//! heartbeat timeout standing in for it) applies to the server's own
//! protocols, not to a socket a handler took over, so a write to a peer
//! that reads nothing waits until the peer goes or the handler gives up
//! (as under hyper).
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
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::conn::connection::SendConnection;
use crate::conn::rewind::Rewind;
use crate::conn::shutdown::Drain;
use crate::observe::close::CloseReason;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, WorkerStats};

/// Object-safe stream type behind [`Upgraded`].
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The raw connection after a protocol switch. Bytes the server had already read
/// past the request are returned first by reads.
pub struct Upgraded {
    inner: Rewind<Box<WithDrain<dyn Io>>>,
    /// The connection's accounts, closed when this drops.
    conn: SendConnection,
    /// How the socket ended, once a read or write said so.
    ended: Option<CloseReason>,
    /// Where a stream of an HTTP/2 connection counts its protocol errors
    /// (it has no connection accounts of its own: `conn` is closed).
    stream_stats: Option<Arc<WorkerStats>>,
}

/// The boxed socket with the connection's place in the worker's drain: in
/// the socket's box, so that `Upgraded` (which an idle `axum_ws` socket
/// holds inline) does not grow.
struct WithDrain<T: ?Sized> {
    /// `None` on a caller's own transport.
    drain: Option<Drain>,
    io: T,
}

impl<T: ?Sized + AsyncRead + Unpin> AsyncRead for WithDrain<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: ?Sized + AsyncWrite + Unpin> AsyncWrite for WithDrain<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read_ahead", &self.inner.read_ahead.len())
            .finish_non_exhaustive()
    }
}

impl Upgraded {
    pub(crate) fn new<T>(
        io: T,
        read_ahead: Bytes,
        conn: SendConnection,
        drain: Option<Drain>,
    ) -> Upgraded
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Upgraded {
            inner: Rewind {
                io: Box::new(WithDrain { drain, io }),
                read_ahead,
            },
            conn,
            ended: None,
            stream_stats: None,
        }
    }

    /// A stream of an HTTP/2 connection after a 2xx to its `CONNECT`: the
    /// connection stays the HTTP/2 engine's (its accounts, its close, its
    /// place in the drain), the stream's protocol errors count in `stats`,
    /// and `drain` tells it when shutdown begins.
    pub(crate) fn on_stream<T>(io: T, stats: Arc<WorkerStats>, drain: Drain) -> Upgraded
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut upgraded = Upgraded::new(io, Bytes::new(), SendConnection::closed(), Some(drain));
        upgraded.stream_stats = Some(stats);
        upgraded
    }

    /// The protocol spoken on the socket fails the connection for a broken
    /// rule of its own (a WebSocket's bad frame): counted in the server's
    /// `protocol_errors`, as the native protocols count theirs, and reported
    /// as the close's reason when the socket closes.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn protocol_error(&mut self, reason: CloseReason) {
        if let Some(stats) = self.stats() {
            incr(&stats.protocol_errors);
        }
        self.ended = Some(reason);
    }

    /// A limit of the protocol spoken on the socket closed it (an
    /// `axum_ws` socket's 1009): counted in `megaconn_limit_hits_total`, as
    /// the native protocols count theirs.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn limit_hit(&self, hit: LimitHit) {
        if let Some(stats) = self.stats() {
            hit.count(stats);
        }
    }

    /// Where this socket's events count: its connection's worker, or the
    /// HTTP/2 connection's for a stream.
    fn stats(&self) -> Option<&Arc<WorkerStats>> {
        self.conn.stats().or(self.stream_stats.as_ref())
    }

    /// True once the server's graceful shutdown began, registering no
    /// waker (see [`Drain::started`]). Never true on a caller's own
    /// transport.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn shutdown_began(&self) -> bool {
        self.inner.io.drain.as_ref().is_some_and(Drain::started)
    }

    /// True once the server's graceful shutdown began; until then the task
    /// is woken when it does. Never true on a caller's own transport.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_shutdown_began(&mut self, cx: &Context<'_>) -> bool {
        self.inner
            .io
            .drain
            .as_mut()
            .is_some_and(|d| d.poll_started(cx.waker()))
    }

    /// Once shutdown began: true when `grace` has passed since the first
    /// call; until then the task is woken when it does. The timer lives in
    /// the socket's box, so an idle `axum_ws` socket does not grow. Never
    /// true on a caller's own transport.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_grace_over(&mut self, cx: &mut Context<'_>, grace: Duration) -> bool {
        self.inner
            .io
            .drain
            .as_mut()
            .is_some_and(|d| d.poll_grace_over(cx, grace))
    }

    /// Leaves the worker's graceful shutdown: its drain no longer waits for
    /// this socket, which stays open until dropped (an `axum_ws` socket
    /// whose peer never answered its close 1001).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn leave_drain(&mut self) {
        self.inner.io.drain = None;
    }

    /// Notes how an operation ended, for the close reason.
    fn note<R>(&mut self, result: &io::Result<R>, eof: bool) {
        match result {
            Err(e) => self.ended = Some(self.ended.unwrap_or(CloseReason::io(e))),
            Ok(_) if eof => self.ended = Some(self.ended.unwrap_or(CloseReason::ClientClosed)),
            Ok(_) => {}
        }
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        let reason = self.ended.unwrap_or(CloseReason::ServerClosed);
        std::mem::replace(&mut self.conn, SendConnection::closed()).close(reason);
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        let n = buf.filled().len() - before;
        if let Some(track) = self.conn.track_mut() {
            track.count_in(n);
        }
        self.note(&result, n == 0 && buf.remaining() > 0);
        Poll::Ready(result)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if let (Ok(n), Some(track)) = (&result, self.conn.track_mut()) {
            track.count_out(*n);
        }
        self.note(&result, false);
        Poll::Ready(result)
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

/// A response extension a protocol of the server's own puts on its `101`
/// (WebSocket's native route): the HTTP/1.1 engine then hands the socket to
/// that protocol through the dispatcher instead of to the request's
/// [`OnUpgrade`], so no task is kept for it. Opaque here (the protocols never
/// import each other); the protocol that made it reads it back.
#[derive(Clone)]
pub(crate) struct NativeUpgrade(pub Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for NativeUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeUpgrade")
    }
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

/// Hands the switched connection to the handler's [`OnUpgrade`]. Nobody
/// waiting for it (every clone dropped) is almost always a handler that
/// asked hyper for the connection (`hyper::upgrade::on`, which finds no
/// hyper handle under megaconn and fails at once) and answered `101`
/// anyway: that is logged, saying what to use (at most once per
/// [`ratelog`](crate::observe::ratelog) interval: every such request a peer
/// sends would log it), and the connection closes.
pub(crate) fn hand_over(tx: UpgradeSender, upgraded: Upgraded) {
    if let Err(upgraded) = tx.send(upgraded) {
        ratelog::log(Flood::UnclaimedUpgrade, |suppressed| {
            tracing::warn!(
                suppressed,
                "a handler switched protocols (101, or 2xx to CONNECT) but did not wait on \
                 megaconn::OnUpgrade, so the connection is closed: hyper::upgrade::on cannot \
                 work under megaconn; take megaconn::OnUpgrade from the request's extensions \
                 instead (for axum's WebSocketUpgrade, use megaconn::axum_ws)"
            );
        });
        // Closed after the line, so that a peer that sees the close can
        // find it logged.
        drop(upgraded);
    }
}
