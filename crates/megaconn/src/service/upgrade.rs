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
//! A [`WebSocket`](crate::axum_ws::WebSocket) hears its turn (the start, or
//! with a drain rate its turn in the paced drain) and sends its peer a
//! close 1001 (going away), over HTTP/1.1 and HTTP/2. A raw tunnel takes no
//! turn (nothing of it would act on one): it is not paced, and its handler
//! hears the start through [`Draining`](crate::Draining), at once.
//!
//! Writes on the raw socket are not bounded by time: a write to a peer
//! that reads nothing waits until the peer goes or the handler gives up
//! (as under hyper). A [`WebSocket`](crate::axum_ws::WebSocket) bounds its
//! sends as the server's own persistent protocols bound their writes
//! (`conn::io::WriteLimit`: [`Builder::write_timeout`](crate::Builder::write_timeout),
//! else [`Builder::write_stall_timeout`](crate::Builder::write_stall_timeout)):
//! the connection carries the resolved bound and its socket's descriptor
//! for the peer's progress, and the bound of a send under way, in the
//! socket's box ([`Upgraded::poll_write_bound`]).
//!
//! A raw upgraded socket keeps the kernel's send buffer (autotuned, or
//! [`Builder::send_buffer_size`](crate::Builder::send_buffer_size)), as an
//! HTTP connection does: it may be a tunnel that must stream fast. A
//! [`WebSocket`](crate::axum_ws::WebSocket) is a message connection and
//! gets [`Builder::message_send_buffer_size`](crate::Builder::message_send_buffer_size)
//! at its upgrade, as the native route's socket does
//! ([`Upgraded::bound_message_send_buffer`]).
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
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::conn::connection::SendConnection;
use crate::conn::io::{WriteBound, WriteLimit};
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

/// The boxed socket with the connection's place in the worker's drain and
/// its writes' bound: in the socket's box, so that `Upgraded` (which an
/// idle `axum_ws` socket holds inline) does not grow.
struct WithDrain<T: ?Sized> {
    /// `None` on a caller's own transport.
    drain: Option<Drain>,
    writes: Writes,
    io: T,
}

/// How an `axum_ws` socket's writes on this connection are bounded, and
/// the bound of the one under way.
struct Writes {
    /// The native protocols' rule, resolved from the server's settings
    /// when the connection was handed over ([`Upgraded::with_write_limit`]);
    /// unbounded without.
    limit: WriteLimit,
    /// The TCP socket whose acknowledged bytes show the peer's progress;
    /// `None` for an HTTP/2 stream (its connection's count includes the
    /// other streams': our own writes show its progress) or a caller's own
    /// transport.
    socket: Option<RawFd>,
    /// The bound of a write that waits, until it is done (boxed: an idle
    /// socket keeps 8 bytes of it, not ~90).
    waiting: Option<Box<WriteBound>>,
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
        let writes = Writes {
            limit: WriteLimit::UNBOUNDED,
            socket: None,
            waiting: None,
        };
        Upgraded {
            inner: Rewind {
                io: Box::new(WithDrain { drain, writes, io }),
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

    /// Bounds the writes of an `axum_ws` socket on this connection by
    /// `limit` (`MessageSettings::write_limit_without_heartbeat`), the peer's
    /// progress seen on TCP socket `socket` too ([`WriteBound`]). A raw
    /// upgraded socket's writes stay unbounded: only `axum_ws` asks
    /// ([`Upgraded::poll_write_bound`]).
    pub(crate) fn with_write_limit(mut self, limit: WriteLimit, socket: Option<RawFd>) -> Upgraded {
        let writes = &mut self.inner.io.writes;
        writes.limit = limit;
        writes.socket = socket;
        self
    }

    /// For an `axum_ws` socket whose queued bytes wait for the peer
    /// (`progressed`: the socket took some of them since the last poll):
    /// the error once the write's bound passed, counted
    /// (`megaconn_timeouts_total`) and logged as the native protocols'
    /// are; until then the task is woken when it passes. The socket is
    /// then failed for good: its reads and writes fail, its close says
    /// `write_timeout`, and its TCP socket is shut down, so that a task
    /// waiting to read on it (a split socket's other half) hears it.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_write_bound(
        &mut self,
        cx: &mut Context<'_>,
        progressed: bool,
    ) -> Poll<io::Error> {
        let writes = &mut self.inner.io.writes;
        let (limit, socket) = (writes.limit, writes.socket);
        if limit.timeout.is_none() {
            // Unbounded (`write_stall_timeout(None)`): no bound to keep.
            return Poll::Pending;
        }
        let bound = writes
            .waiting
            .get_or_insert_with(|| Box::new(WriteBound::new(limit, socket)));
        if !bound.poll_passed(cx, progressed) {
            return Poll::Pending;
        }
        // The connection's worker's counters, or the HTTP/2 connection's.
        let stats = self.conn.stats().or(self.stream_stats.as_ref());
        bound.passed(
            stats.map(|s| &**s),
            Flood::AxumWsWriteTimeout,
            "an axum_ws WebSocket peer",
        );
        writes.waiting = None;
        self.ended = Some(CloseReason::WriteTimeout);
        if let Some(fd) = socket {
            // SAFETY: the socket is this connection's, owned by the stream
            // in the box, open as long as this `Upgraded` lives.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
        }
        Poll::Ready(write_timed_out(limit))
    }

    /// Gives the connection's TCP socket the `SO_SNDBUF` of a message
    /// connection, [`Builder::message_send_buffer_size`](crate::Builder::message_send_buffer_size)
    /// of the worker this runs on, as the native WebSocket's upgrade does
    /// (`server::dispatch`): an `axum_ws` socket's, at its upgrade. Read
    /// from the worker rather than carried from the hand-over, so that the
    /// socket's box does not grow for a value used once. Nothing on an
    /// HTTP/2 stream (its connection is shared, and keeps HTTP's
    /// autotuning), on a caller's own transport, or off a worker's thread.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn bound_message_send_buffer(&self) {
        let Some(fd) = self.inner.io.writes.socket else {
            return;
        };
        if let Some(ctx) = crate::conn::pool::this_worker() {
            crate::conn::socket::bound_message_send_buffer(fd, &ctx.config);
        }
    }

    /// Bounds how long the bytes of an `axum_ws` socket may go
    /// unacknowledged by its peer (`TCP_USER_TIMEOUT`): twice its sends'
    /// bound and a second (`conn::socket::bound_unacknowledged`), as a
    /// native WebSocket route's with its heartbeat off gets at the upgrade.
    /// An `axum_ws` socket has no heartbeat: without this, a peer gone
    /// without a FIN took the handler's sends into the kernel's send
    /// buffer (no send waited, so their bound never ran) and its `recv`
    /// waited until the kernel's retransmission gave up, ~16 minutes.
    /// Nothing on an HTTP/2 stream (its connection is shared) or a
    /// caller's own transport.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn bound_unacknowledged(&self) {
        let writes = &self.inner.io.writes;
        crate::conn::socket::bound_unacknowledged(writes.socket, writes.limit);
    }

    /// The write under way is done (or failed): its bound stops.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn write_done(&mut self) {
        self.inner.io.writes.waiting = None;
    }

    /// The error of every read and write once a write's bound passed.
    fn failed(&self) -> Option<io::Error> {
        (self.ended == Some(CloseReason::WriteTimeout))
            .then(|| write_timed_out(self.inner.io.writes.limit))
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

    /// True once this connection's turn to go came in the server's
    /// graceful shutdown (at its start, or during a paced drain when the
    /// drain gave it), registering no waker (see [`Drain::turn_came`]).
    /// Never true on a caller's own transport.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn turn_came(&self) -> bool {
        self.inner.io.drain.as_ref().is_some_and(Drain::turn_came)
    }

    /// True once this connection's turn to go came (see
    /// [`turn_came`](Upgraded::turn_came)); until then the task is woken
    /// when it does. Never true on a caller's own transport.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_turn(&mut self, cx: &Context<'_>) -> bool {
        self.inner
            .io
            .drain
            .as_mut()
            .is_some_and(|d| d.poll_turn(cx.waker()))
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

/// A write that `limit` cut short, saying which setting bounded it.
fn write_timed_out(limit: WriteLimit) -> io::Error {
    let (timeout, setting) = (limit.timeout.unwrap_or_default(), limit.setting);
    let what = if limit.stall {
        format!("the WebSocket peer took none of our bytes for {timeout:?}")
    } else {
        format!("a write to the WebSocket peer took over {timeout:?}")
    };
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} ({setting}); the connection is closed"),
    )
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
        if let Some(failed) = self.failed() {
            return Poll::Ready(Err(failed));
        }
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
        if let Some(failed) = self.failed() {
            return Poll::Ready(Err(failed));
        }
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
    rx: Arc<Mutex<Taker>>,
}

/// The receiving end, shared by the clones; `None` once taken or failed.
#[derive(Debug)]
struct Taker(Option<oneshot::Receiver<Upgraded>>);

/// The last clone gone with the connection handed over but never taken:
/// the request outlived the answer (kept in a task that asked
/// `hyper::upgrade::on`, as axum's http-proxy example does with its
/// `CONNECT`) and then dropped it unpolled. The connection closes here,
/// as when nobody is left to hand it to ([`hand_over`]), and with the
/// same warning: otherwise the client sees a 2xx and a silent close.
impl Drop for Taker {
    fn drop(&mut self) {
        if let Some(Ok(upgraded)) = self.0.as_mut().map(|rx| rx.try_recv()) {
            unclaimed(upgraded);
        }
    }
}

impl Future for OnUpgrade {
    type Output = io::Result<Upgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rx) = slot.0.as_mut() else {
            return Poll::Ready(Err(not_upgraded()));
        };
        let result = std::task::ready!(Pin::new(rx).poll(cx));
        slot.0 = None;
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

/// A response extension the native WebSocket route puts on the `4xx` it
/// refuses a handshake with: the HTTP/1.1 engine then knows a `426` to an
/// upgrade request is the route's answer to a bad handshake, not axum's
/// extractor failing under megaconn (whose hint it would log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NativeRefusal;

/// The connection's end: hands the IO over.
pub(crate) type UpgradeSender = oneshot::Sender<Upgraded>;

/// A pending upgrade: the extension for the request and the sender for the engine.
pub(crate) fn pending() -> (UpgradeSender, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (
        tx,
        OnUpgrade {
            rx: Arc::new(Mutex::new(Taker(Some(rx)))),
        },
    )
}

/// Hands the switched connection to the handler's [`OnUpgrade`]. Nobody
/// waiting for it (every clone dropped) is almost always a handler that
/// asked hyper for the connection (`hyper::upgrade::on`, which finds no
/// hyper handle under megaconn and fails at once) and answered `101` (or
/// `2xx` to `CONNECT`) anyway: [`unclaimed`]. (Its request still alive,
/// the clone left holds the connection and says the same when it drops
/// untaken: [`Taker`].)
pub(crate) fn hand_over(tx: UpgradeSender, upgraded: Upgraded) {
    if let Err(upgraded) = tx.send(upgraded) {
        unclaimed(upgraded);
    }
}

/// A switched connection nobody takes: logged, saying what to use (at
/// most once per [`ratelog`](crate::observe::ratelog) interval: every such
/// request a peer sends would log it), and the connection closes.
fn unclaimed(upgraded: Upgraded) {
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
