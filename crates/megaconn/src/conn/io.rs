//! One connection's IO in the core: the socket, its pooled (and, while
//! idle, absent) read and write buffers, flushing, and the lingering close
//! that keeps a last answer from being destroyed by a reset. A protocol adds
//! its own reading on top (HTTP/1.1's head reader is in `proto/http1/conn.rs`,
//! an `impl` of this type there).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;

use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::transport::{Parkable, Transport};
use crate::conn::ConnInfo;
use crate::observe::clock::LazyDeadline;
use crate::observe::close::CloseReason;
use crate::observe::human::Timeout;
use crate::observe::lifecycle;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, WorkerStats};

/// A close's one bound ([`Builder::linger_timeout`](crate::Builder::linger_timeout),
/// 2 s by default): when a connection we close must be done writing its
/// last bytes (a last response, the rest of a slow consumer's frame and its
/// 1013, TLS's `close_notify`) and lingering, all its steps together, from
/// when its close began; and the counters a close it cuts is counted in.
/// Every protocol's close takes one ([`ConnIo::close`], the message
/// layer's `message/wake.rs`). (It was a constant, 2 s, no one could
/// change; on a starved machine a client reading a slow consumer's backlog
/// after its close began could not always read it within that.)
#[derive(Debug)]
pub(crate) struct CloseBy {
    at: Instant,
    /// The bound as set, for the log line.
    bound: Duration,
    /// The connection's worker's counters (none for a connection served
    /// without a worker, and in unit tests).
    stats: Option<Arc<WorkerStats>>,
    /// Counted already: a close counts once, however many of its steps
    /// the bound cut (the rest of a frame, then the linger it skips).
    counted: Cell<bool>,
}

impl CloseBy {
    /// A close of one of `ctx`'s connections, begun now.
    pub(crate) fn new(ctx: &WorkerContext) -> CloseBy {
        CloseBy::after(ctx.config.linger_timeout, Some(ctx.stats.clone()))
    }

    /// A close begun now, bounded by `bound`, counted in `stats` if cut.
    pub(crate) fn after(bound: Duration, stats: Option<Arc<WorkerStats>>) -> CloseBy {
        CloseBy {
            at: Instant::now() + bound,
            bound,
            stats,
            counted: Cell::new(false),
        }
    }

    /// Runs `step` of the close until it ends or the bound passes: then
    /// `None`, the close counted and logged as cut ([`cut`](Self::cut)).
    /// A step polled first with the bound past still gets its one try:
    /// what the socket takes at once goes (a bound of zero writes that
    /// much, and does not linger).
    pub(crate) async fn within<F: Future>(&self, step: F) -> Option<F::Output> {
        match tokio::time::timeout_at(self.at, step).await {
            Ok(out) => Some(out),
            Err(_) => {
                self.cut();
                None
            }
        }
    }

    /// The bound cut the close short: counted once a close
    /// (`megaconn_limit_hits_total{limit="linger_timeout"}`) and logged
    /// (at most once per `ratelog::LOG_INTERVAL` per worker). Not with a
    /// bound of zero: the operator turned the waiting off, and a close
    /// that writes only what the socket takes at once is the setting
    /// working, not a limit hit.
    pub(crate) fn cut(&self) {
        if self.counted.replace(true) || self.bound.is_zero() {
            return;
        }
        if let Some(stats) = &self.stats {
            LimitHit::LingerTimeout.count(stats);
        }
        let bound = Timeout(Some(self.bound));
        ratelog::log(Flood::LingerTimeout, |suppressed| {
            tracing::info!(
                timeout = %bound,
                suppressed,
                "a connection we closed did not take its last bytes, or did not close its end, within linger_timeout; closed it anyway (Builder::linger_timeout, --linger-timeout)"
            )
        });
    }
}

/// How long a close at graceful shutdown may linger (of an idle
/// connection, whose client may be sending as we close): a request it sent
/// before our FIN reached it comes within about a round trip. Go's server
/// waits as long after its last response (`rstAvoidanceDelay`). Shorter
/// than the close's bound ([`CloseBy`]): a client that keeps its end open
/// holds the drain for no longer than this. Not counted when it passes:
/// the drain's bound, not the setting's.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

/// How much a lingering close reads and discards before giving up.
const LINGER_BYTES: usize = 256 * 1024;

/// How a write that has to wait is bounded, resolved from the settings
/// ([`WriteLimit::resolve`]): one rule for every protocol (WebSocket,
/// framed, an HTTP/1.1 response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteLimit {
    /// The bound (`None`: unbounded).
    pub(crate) timeout: Option<Duration>,
    /// Whether the peer's progress restarts it (it bounds a stall), or it
    /// bounds the whole write.
    pub(crate) stall: bool,
    /// The setting it comes from, named in the log line.
    pub(crate) setting: &'static str,
}

impl WriteLimit {
    /// No bound: a write waits as long as the peer takes nothing.
    pub(crate) const UNBOUNDED: WriteLimit = WriteLimit {
        timeout: None,
        stall: true,
        setting: "no bound",
    };

    /// With `write_timeout` set, the whole write's time, as for an HTTP
    /// response (Go's `WriteTimeout`). With it off, a stall, the time the
    /// peer takes *none* of our bytes: bounded by the protocol's
    /// `heartbeat` timeout (its value and the setting's name) when it has
    /// one, as a peer that stopped reading is as gone as one that stopped
    /// sending; else (no heartbeat, or a protocol without one: `None`) by
    /// `write_stall` (`Builder::write_stall_timeout`). A slow peer still
    /// reading a large backlog is not cut off by either.
    pub(crate) fn resolve(
        write_timeout: Option<Duration>,
        heartbeat: Option<(Duration, &'static str)>,
        write_stall: Option<Duration>,
    ) -> WriteLimit {
        let (timeout, stall, setting) = match (write_timeout, heartbeat) {
            (Some(whole), _) => (Some(whole), false, "Builder::write_timeout"),
            (None, Some((heartbeat, setting))) => (Some(heartbeat), true, setting),
            (None, None) => (write_stall, true, "Builder::write_stall_timeout"),
        };
        WriteLimit {
            timeout,
            stall,
            setting,
        }
    }
}

/// Whose writes [`ConnIo::poll_flush_bounded`] bounds: how their
/// [`WriteLimit`] is resolved from the settings (only once a write has to
/// wait), and how a bound that passes is logged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writes {
    /// The bound, from the settings.
    pub(crate) limit: fn(&Config) -> WriteLimit,
    /// The log line's kind (rate-limited per kind).
    pub(crate) kind: Flood,
    /// The peer, as the log line names it (e.g. `an HTTP/1.1 client`).
    pub(crate) peer: &'static str,
}

/// A [`WriteLimit`] running: made only when a write has to wait.
///
/// The peer's progress restarts a stall bound, seen two ways. A write that
/// puts bytes into the socket restarts it, but that is not enough on its
/// own: tokio writes again only once the kernel reports the socket
/// writable, which Linux does when about a third of the send buffer has
/// drained, and the buffer autotunes up to `tcp_wmem`'s maximum (megabytes),
/// so a peer that reads steadily but less than that per bound saw no
/// write. So a bound that passes asks the kernel how many bytes the peer
/// has acknowledged (`TCP_INFO`'s `tcpi_bytes_acked`, one `getsockopt`),
/// and starts again if that grew since it was set: the peer's TCP takes
/// bytes only as its application reads them, once its receive window is
/// full. A peer that stops taking bytes is closed one to two bounds after
/// its last (the count is sampled once a bound, not watched). Nothing is
/// asked per write: one `getsockopt` when the bound is made, one each time
/// it passes. Over TLS the count is of records, progress all the same. A
/// stream that is no TCP socket of ours (a caller's own transport) shows
/// progress by our writes only.
#[derive(Debug)]
pub(crate) struct WriteBound {
    deadline: LazyDeadline,
    limit: WriteLimit,
    /// The socket whose acknowledged bytes show progress (a stall bound's).
    socket: Option<RawFd>,
    /// The bytes the peer had acknowledged when the bound (re)started.
    acked: Option<u64>,
}

impl WriteBound {
    /// `limit` from now, for a write to `socket` (its descriptor, when it
    /// is a TCP socket: one `getsockopt` now, for a stall bound).
    pub(crate) fn new(limit: WriteLimit, socket: Option<RawFd>) -> WriteBound {
        let socket = socket.filter(|_| limit.stall && limit.timeout.is_some());
        WriteBound {
            deadline: LazyDeadline::after(limit.timeout),
            limit,
            socket,
            acked: socket.and_then(bytes_acked),
        }
    }

    /// True once the bound passed; else the task is woken when it does.
    /// `progressed`: the socket took some of our bytes since the last poll.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>, progressed: bool) -> bool {
        let (Some(timeout), stall) = (self.limit.timeout, self.limit.stall) else {
            return false;
        };
        if progressed && stall {
            self.deadline.restart(timeout);
        }
        let (deadline, socket, acked) = (&mut self.deadline, self.socket, &mut self.acked);
        deadline.poll_stalled(cx, timeout, || peer_took_some(socket, acked))
    }

    /// Counts the bound's passing as a timeout (`megaconn_timeouts_total`,
    /// in `stats`: the connection's worker's, where it has one) and logs it
    /// (at most once per `ratelog::LOG_INTERVAL` per `kind`), naming `peer`
    /// (e.g. `a framed peer`) and the setting.
    pub(crate) fn passed(&self, stats: Option<&WorkerStats>, kind: Flood, peer: &str) {
        if let Some(stats) = stats {
            incr(&stats.timeouts);
        }
        let setting = self.limit.setting;
        ratelog::log(kind, |suppressed| {
            tracing::info!(
                timeout = %Timeout(self.limit.timeout),
                suppressed,
                "{peer} did not take our bytes in time; closing it ({setting})"
            )
        });
    }
}

/// Whether the peer on `socket` acknowledged bytes since `acked` was noted,
/// by the kernel's count; notes the count for the next time.
fn peer_took_some(socket: Option<RawFd>, acked: &mut Option<u64>) -> bool {
    let (Some(socket), Some(before)) = (socket, *acked) else {
        return false;
    };
    *acked = bytes_acked(socket);
    acked.is_some_and(|now| now > before)
}

/// How many bytes the peer of TCP socket `fd` has acknowledged, by the
/// kernel (`None`: not a TCP socket, or a kernel older than 4.1).
pub(crate) fn bytes_acked(fd: RawFd) -> Option<u64> {
    tcp_info(fd, std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked)).map(|i| i.tcpi_bytes_acked)
}

/// How many bytes TCP socket `fd` has received from its peer, by the kernel
/// (`None`: not a TCP socket, or a kernel older than 4.1).
fn bytes_received(fd: RawFd) -> Option<u64> {
    tcp_info(
        fd,
        std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received),
    )
    .map(|i| i.tcpi_bytes_received)
}

/// TCP socket `fd`'s `TCP_INFO`, if the kernel filled it at least up to the
/// `u64` field at offset `field` (`None`: not a TCP socket, or an older
/// kernel, whose answer ends before it).
fn tcp_info(fd: RawFd, field: usize) -> Option<libc::tcp_info> {
    // SAFETY: `tcp_info` is plain integers, for which zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes no
    // more than that (it says how many it wrote in `len`).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    let has = field + std::mem::size_of::<u64>();
    (rc == 0 && len as usize >= has).then_some(info)
}

/// The socket and its (pooled, often absent) buffers.
pub(crate) struct ConnIo<T> {
    pub(crate) io: T,
    pub(crate) ctx: Rc<WorkerContext>,
    pub(crate) buffers: Buffers,
    /// The connection's addresses, when requests carry them (boxed: every
    /// connection's task would otherwise carry 64 bytes more).
    pub(crate) info: Option<Box<ConnInfo>>,
    /// When this connection is to close at its next idle point
    /// (`max_connection_age`): set by the protocols that retire connections
    /// (HTTP/1.1: drawn at the accept, or noted by the parking lot then).
    pub(crate) retire_at: Option<tokio::time::Instant>,
}

impl<T> ConnIo<T> {
    /// A connection on `io`, holding no buffers yet.
    pub(crate) fn new(io: T, ctx: Rc<WorkerContext>) -> ConnIo<T> {
        ConnIo {
            io,
            buffers: Buffers {
                rbuf: None,
                wbuf: None,
                shutdown_slot: None,
                ctx: ctx.clone(),
            },
            retire_at: None,
            ctx,
            info: None,
        }
    }

    /// The write buffer, taken from the pool if the connection holds none.
    pub(crate) fn wbuf(&mut self) -> &mut BytesMut {
        self.buffers.wbuf()
    }

    pub(crate) fn wbuf_len(&self) -> usize {
        self.buffers.wbuf.as_ref().map_or(0, BytesMut::len)
    }

    pub(crate) fn rbuf_len(&self) -> usize {
        self.buffers.rbuf_len()
    }

    /// The read buffer (taken from the pool if needed) and the socket, borrowed
    /// together.
    pub(crate) fn rbuf_and_io(&mut self) -> (&mut BytesMut, &mut T) {
        let rbuf = self
            .buffers
            .rbuf
            .get_or_insert_with(|| self.ctx.pool.take());
        (rbuf, &mut self.io)
    }
}

impl<T: Transport> ConnIo<T> {
    /// Writes the whole write buffer, then flushes the stream.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(wbuf) = self.buffers.wbuf.as_mut() {
            while !wbuf.is_empty() {
                let n = match Pin::new(&mut self.io).poll_write(cx, wbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        lifecycle::count_out(n);
                        n
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
                wbuf.advance(n);
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes the whole write buffer, then `after` (a frame written from
    /// its own bytes, [`Unbuffered`]), vectored: one `writev` for both on
    /// a socket; TLS seals the pieces as one run of full records (a copy
    /// only for a record that spans two pieces, none through the write
    /// buffer). Then flushes the stream. A caller's own stream that does
    /// not write vectored is given one piece a write (tokio's default).
    pub(crate) fn poll_flush_with(
        &mut self,
        cx: &mut Context<'_>,
        after: &mut Unbuffered,
    ) -> Poll<io::Result<()>> {
        loop {
            let head: &[u8] = self.buffers.wbuf.as_deref().unwrap_or_default();
            if head.is_empty() && after.is_empty() {
                break;
            }
            let slices = [
                io::IoSlice::new(head),
                io::IoSlice::new(&after.data),
                io::IoSlice::new(after.tail),
            ];
            let n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            lifecycle::count_out(n);
            let of_head = n.min(head.len());
            if let Some(wbuf) = self.buffers.wbuf.as_mut() {
                wbuf.advance(of_head);
            }
            after.advance(n - of_head);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes what is buffered, if anything.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf_len() == 0 {
            return Ok(());
        }
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Flushes the last response and closes; lingers when unread input could
    /// otherwise turn the close into a reset that destroys the response:
    /// for the reasons that may leave some, and whenever bytes past the last
    /// request were read (the client sends more than we serve, and more may
    /// be on its way). Over TLS our closes say `close_notify`, so that a
    /// body delimited by the close reads as complete, except after an
    /// answer that failed midway, which must read as truncated (its socket
    /// is shut without one). Cleartext shuts its socket only to linger.
    /// After [`CloseReason::WriteTimeout`] what is left unwritten is
    /// dropped: the peer that did not take it in time would not take it
    /// now, and the flush would only hold the connection the close's bound
    /// longer. All of it within the close's bound ([`CloseBy`]:
    /// `linger_timeout`, counted if it cuts the close), but at shutdown
    /// ([`SHUTDOWN_LINGER`]).
    ///
    /// Returns whether its flush went through: everything buffered, here
    /// and in the stream (a TLS session's sealed records), was handed to
    /// the kernel. A WebSocket's close tells its confirmed pushes by it
    /// (over TLS, a buffer that left here may still sit in the session).
    pub(crate) async fn close(&mut self, reason: CloseReason) -> bool {
        if matches!(
            reason,
            CloseReason::Shutdown | CloseReason::ShutdownBeforeRequest
        ) {
            let mut flushed = false;
            let _ = tokio::time::timeout(SHUTDOWN_LINGER, self.closing(reason, &mut flushed)).await;
            return flushed;
        }
        let by = CloseBy::new(&self.ctx);
        self.close_within(reason, &by).await
    }

    /// [`close`](Self::close) within `by`, a bound a close began earlier
    /// (a slow consumer's, whose rest of a frame and 1013 went first).
    pub(crate) async fn close_within(&mut self, reason: CloseReason, by: &CloseBy) -> bool {
        let mut flushed = false;
        by.within(self.closing(reason, &mut flushed)).await;
        flushed
    }

    /// The steps of [`close`](Self::close), unbounded: `flushed` says
    /// whether its flush went through, also when the bound cuts the rest.
    async fn closing(&mut self, reason: CloseReason, flushed: &mut bool) -> io::Result<()> {
        if reason == CloseReason::WriteTimeout {
            if let Some(wbuf) = self.buffers.wbuf.as_mut() {
                wbuf.clear();
            }
        }
        let linger = reason.needs_linger() || self.rbuf_len() > 0;
        let notify = T::SECURE && reason.says_close_notify();
        // The stream's own flush too, even with nothing buffered here:
        // a TLS stream may hold the sealed tail of what this buffer
        // already gave it (a WebSocket's last frame and close), which
        // only its flush writes. Not after a write timeout: that tail
        // is what the peer did not take in time (see above).
        if reason != CloseReason::WriteTimeout {
            poll_fn(|cx| self.poll_flush(cx)).await?;
            *flushed = true;
        }
        if linger && reason.truncates() {
            poll_fn(|cx| self.io.poll_shutdown_truncated(cx)).await?;
        } else if linger || notify {
            poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await?;
        }
        if linger {
            self.discard_input().await?;
        }
        Ok(())
    }
}

impl<T: Transport> ConnIo<T> {
    /// A lingering close's reading: reads and drops what the peer sends
    /// until its end of stream, or [`LINGER_BYTES`]. It waits for bytes
    /// holding no buffer, and takes one from the pool only for a read,
    /// giving it back before it waits again: the read buffer kept across
    /// the wait held 8 KiB for the whole linger of every closing
    /// connection, most of them sending nothing at all (15,000 idle
    /// connects at their header timeout: 14,677 buffers out at once, RSS
    /// 33 to 97 MB for the two seconds).
    async fn discard_input(&mut self) -> io::Result<()> {
        // What was read and not consumed is dropped too, and the buffers
        // (the last answer is out) go back now.
        if let Some(rbuf) = self.buffers.rbuf.as_mut() {
            rbuf.clear();
        }
        self.buffers.release();
        let mut discarded = 0;
        poll_fn(|cx| loop {
            std::task::ready!(self.io.poll_read_ready(cx))?;
            let (rbuf, io) = self.rbuf_and_io();
            rbuf.clear();
            let read = read_more(io, rbuf, cx);
            rbuf.clear();
            self.buffers.release();
            match std::task::ready!(read)? {
                0 => return Poll::Ready(Ok(())),
                n => discarded += n,
            }
            if discarded >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
        })
        .await
    }
}

impl<T: Parkable> ConnIo<T> {
    /// [`close`](ConnIo::close), except for a header timeout of a
    /// connection whose client never sent a byte (the kernel's count,
    /// `TCP_INFO`, one `getsockopt` on that close only): nothing was read,
    /// nothing answered, nothing can be left unread to turn the close into
    /// a reset, so it closes at once, as nginx does at
    /// `client_header_timeout`. It lingered up to two seconds, holding the
    /// connection's slot (and, before, a read buffer) for nothing.
    pub(crate) async fn close_unless_unheard(&mut self, reason: CloseReason) {
        let unheard = reason == CloseReason::HeaderTimeout
            && self.rbuf_len() == 0
            && self.wbuf_len() == 0
            && self.io.lot_fd().and_then(bytes_received) == Some(0);
        if !unheard {
            self.close(reason).await;
        }
    }

    /// Writes the whole write buffer, as [`poll_flush`](Self::poll_flush),
    /// with a write that has to wait bounded ([`WriteBound`], by `writes`'
    /// limit): the bound is made in `bound` the first time the write waits
    /// and kept there across polls; dropped once all is written, so that
    /// the next wait starts a bound of its own. A write the socket takes at
    /// once costs no bound, no clock and no `getsockopt`. `Err`: the close
    /// reason, [`CloseReason::WriteTimeout`] once the bound passed (counted
    /// and logged as `writes` says). Boxed, the bound costs its owner one
    /// word while no write waits. (Always inlined: the keep-alive path's
    /// every response goes through it, and as a call of its own, which it
    /// was with two callers, it cost 28 instructions a request more than
    /// the plain flush, `bench/lower-bound.sh`.)
    #[inline(always)]
    pub(crate) fn poll_flush_bounded(
        &mut self,
        cx: &mut Context<'_>,
        bound: &mut Option<Box<WriteBound>>,
        writes: &Writes,
    ) -> Poll<Result<(), CloseReason>> {
        let before = self.wbuf_len();
        match self.poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                if bound.is_some() {
                    drop_bound(bound);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(CloseReason::io(&e))),
            Poll::Pending => self.poll_write_bound(cx, bound, writes, self.wbuf_len() < before),
        }
    }

    /// [`poll_flush_bounded`](Self::poll_flush_bounded) with `after` written
    /// behind the write buffer ([`poll_flush_with`](Self::poll_flush_with)):
    /// the same bound, the peer's progress on either counting. Out of
    /// line: only a large response frame takes it.
    #[inline(never)]
    pub(crate) fn poll_flush_with_bounded(
        &mut self,
        cx: &mut Context<'_>,
        after: &mut Unbuffered,
        bound: &mut Option<Box<WriteBound>>,
        writes: &Writes,
    ) -> Poll<Result<(), CloseReason>> {
        let before = self.wbuf_len() + after.len();
        match self.poll_flush_with(cx, after) {
            Poll::Ready(Ok(())) => {
                *bound = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(CloseReason::io(&e))),
            Poll::Pending => {
                let progressed = self.wbuf_len() + after.len() < before;
                self.poll_write_bound(cx, bound, writes, progressed)
            }
        }
    }

    /// The slow path of [`poll_flush_bounded`](Self::poll_flush_bounded),
    /// apart so that the path of a write taken at once stays small enough
    /// to inline (the keep-alive path's every response goes through it).
    #[inline(never)]
    fn poll_write_bound(
        &mut self,
        cx: &mut Context<'_>,
        bound: &mut Option<Box<WriteBound>>,
        writes: &Writes,
        progressed: bool,
    ) -> Poll<Result<(), CloseReason>> {
        let bound = bound.get_or_insert_with(|| {
            let limit = (writes.limit)(&self.ctx.config);
            Box::new(WriteBound::new(limit, self.io.lot_fd()))
        });
        if bound.poll_passed(cx, progressed) {
            bound.passed(Some(&self.ctx.stats), writes.kind, writes.peer);
            return Poll::Ready(Err(CloseReason::WriteTimeout));
        }
        Poll::Pending
    }
}

/// Drops a write's bound, apart: its drop (a timer's deregistration) is
/// too large to inline into the path of a write the socket takes at once,
/// where it would keep the flush from being inlined where it is awaited.
#[inline(never)]
fn drop_bound(bound: &mut Option<Box<WriteBound>>) {
    *bound = None;
}

/// Bytes written from where they lie, behind the write buffer
/// ([`ConnIo::poll_flush_with`]): a large response frame (HTTP/1.1's
/// `exchange.rs`), and `tail`, what its framing puts after it (a chunk's
/// CRLF). Copied into the write buffer, such a frame was held twice while
/// a slow client read it (the body's buffer, and the write buffer grown
/// past its high-water mark), and cost a copy a byte (session 56's
/// file-serving review: 274 KB of memory a slow download of 64 KiB
/// chunks, 27 × nginx's; `bench/FILES.md`).
#[derive(Debug)]
pub(crate) struct Unbuffered {
    data: Bytes,
    tail: &'static [u8],
}

impl Unbuffered {
    /// `data`, then `tail`.
    pub(crate) fn new(data: Bytes, tail: &'static [u8]) -> Unbuffered {
        Unbuffered { data, tail }
    }

    /// Bytes left to write.
    pub(crate) fn len(&self) -> usize {
        self.data.len() + self.tail.len()
    }

    /// Whether all of it was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty() && self.tail.is_empty()
    }

    /// `n` more bytes of it were written.
    fn advance(&mut self, n: usize) {
        let of_data = n.min(self.data.len());
        self.data.advance(of_data);
        if self.data.is_empty() {
            // An emptied `Bytes` still holds the body's allocation: let
            // it go now, not at the flush that follows (over TLS the
            // wait is on the sealed records, so the plaintext chunk
            // would stay beside its ciphertext all that time).
            self.data = Bytes::new();
        }
        self.tail = &self.tail[n - of_data..];
    }

    /// What is left of it, copied to the end of `dst`: for what must be
    /// written behind it before it went (rare: a gRPC-web call the drain
    /// ends mid-body).
    pub(crate) fn copy_into(self, dst: &mut BytesMut) {
        dst.extend_from_slice(&self.data);
        dst.extend_from_slice(self.tail);
    }
}

/// A connection's read and write buffers; whatever it holds goes back to the
/// worker's pool when dropped, even if the connection future is cancelled.
pub(crate) struct Buffers {
    pub(crate) rbuf: Option<BytesMut>,
    pub(crate) wbuf: Option<BytesMut>,
    /// The connection's slot in the worker's shutdown watch list, once it
    /// has waited idle (given back on drop, like the buffers).
    pub(crate) shutdown_slot: Option<u32>,
    pub(crate) ctx: Rc<WorkerContext>,
}

impl Buffers {
    /// The write buffer, taken from the pool if absent.
    pub(crate) fn wbuf(&mut self) -> &mut BytesMut {
        self.wbuf.get_or_insert_with(|| self.ctx.pool.take())
    }

    /// Bytes read and not consumed yet.
    pub(crate) fn rbuf_len(&self) -> usize {
        self.rbuf.as_ref().map_or(0, BytesMut::len)
    }

    /// Gives empty buffers back: the connection is about to go idle.
    pub(crate) fn release(&mut self) {
        if self.rbuf_len() == 0 {
            if let Some(buf) = self.rbuf.take() {
                self.ctx.pool.give(buf);
            }
        }
        if self.wbuf.as_ref().is_some_and(BytesMut::is_empty) {
            if let Some(buf) = self.wbuf.take() {
                self.ctx.pool.give(buf);
            }
        }
    }

    /// The bytes read past the last request, for an upgraded connection.
    pub(crate) fn take_read_ahead(&mut self) -> Bytes {
        self.rbuf
            .as_ref()
            .map(|b| Bytes::copy_from_slice(b))
            .unwrap_or_default()
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        for buf in [self.rbuf.take(), self.wbuf.take()].into_iter().flatten() {
            self.ctx.pool.give(buf);
        }
        self.ctx.shutdown.unwatch(&mut self.shutdown_slot);
    }
}

/// Reads more bytes into `buf` (growing it a little if full).
pub(crate) fn read_more<T: Transport>(
    io: &mut T,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    let read = tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
    if let Poll::Ready(Ok(n)) = read {
        crate::observe::lifecycle::count_in(n);
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A close's steps share its bound: one that ends in time counts
    /// nothing; the bound cutting two steps of one close (the rest of a
    /// frame, then the linger after it) counts the close once.
    #[tokio::test(start_paused = true)]
    async fn a_close_the_bound_cuts_counts_once() {
        let stats = Arc::new(WorkerStats::default());
        let by = CloseBy::after(Duration::from_secs(2), Some(stats.clone()));
        assert_eq!(by.within(async { 7 }).await, Some(7));
        let cuts = || {
            stats.limit_hits[LimitHit::LingerTimeout as usize]
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(cuts(), 0);
        assert_eq!(by.within(std::future::pending::<()>()).await, None);
        assert_eq!(by.within(std::future::pending::<()>()).await, None);
        assert_eq!(cuts(), 1);
    }

    /// A bound of zero (the operator turned the waiting off) cuts a step
    /// that cannot end at once, and counts nothing: not a limit hit.
    #[tokio::test(start_paused = true)]
    async fn a_zero_bound_cuts_without_counting() {
        let stats = Arc::new(WorkerStats::default());
        let by = CloseBy::after(Duration::ZERO, Some(stats.clone()));
        assert_eq!(by.within(async { 7 }).await, Some(7), "its one try");
        assert_eq!(by.within(std::future::pending::<()>()).await, None);
        let cuts = stats.limit_hits[LimitHit::LingerTimeout as usize]
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(cuts, 0);
    }

    /// Polls `bound` once, reporting `progressed`.
    fn passed(bound: &mut WriteBound, progressed: bool) -> bool {
        bound.poll_passed(
            &mut Context::from_waker(std::task::Waker::noop()),
            progressed,
        )
    }

    /// A stall bound of `timeout` (by a heartbeat timeout) on `socket`.
    fn stall(timeout: Duration, socket: Option<RawFd>) -> WriteBound {
        let heartbeat = Some((timeout, "a heartbeat"));
        WriteBound::new(WriteLimit::resolve(None, heartbeat, None), socket)
    }

    #[test]
    fn write_timeout_bounds_the_whole_write_else_the_heartbeat_else_the_write_stall() {
        let (one, two, three) = (
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(3)),
        );
        let limit = |timeout, stall, setting| WriteLimit {
            timeout,
            stall,
            setting,
        };
        let heartbeat = |t: Option<Duration>| t.map(|t| (t, "Route::heartbeat_timeout"));
        assert_eq!(
            WriteLimit::resolve(one, heartbeat(two), three),
            limit(one, false, "Builder::write_timeout")
        );
        assert_eq!(
            WriteLimit::resolve(None, heartbeat(two), three),
            limit(two, true, "Route::heartbeat_timeout")
        );
        assert_eq!(
            WriteLimit::resolve(None, heartbeat(None), three),
            limit(three, true, "Builder::write_stall_timeout")
        );
        assert_eq!(
            WriteLimit::resolve(None, heartbeat(None), None).timeout,
            None,
            "all off: unbounded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_bound_restarts_on_progress_and_a_whole_write_bound_does_not() {
        let step = Duration::from_millis(600);
        // The stall's bound starts again whenever the peer took bytes.
        let mut stall = stall(Duration::from_secs(1), None);
        assert!(!passed(&mut stall, false));
        tokio::time::advance(step).await;
        assert!(!passed(&mut stall, true), "progress at 0.6 s");
        tokio::time::advance(step).await;
        assert!(!passed(&mut stall, false), "0.6 s since the progress");
        tokio::time::advance(step).await;
        assert!(passed(&mut stall, false), "1.2 s without progress");
        // write_timeout counts the whole write, progress or not.
        let whole = WriteLimit::resolve(
            Some(Duration::from_secs(1)),
            Some((Duration::from_secs(60), "a heartbeat")),
            None,
        );
        let mut total = WriteBound::new(whole, None);
        assert!(!passed(&mut total, false));
        tokio::time::advance(step).await;
        assert!(!passed(&mut total, true));
        tokio::time::advance(step).await;
        assert!(passed(&mut total, true), "1.2 s since the write began");
        // Neither: unbounded.
        let off = WriteLimit::resolve(None, None, None);
        let mut none = WriteBound::new(off, None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!passed(&mut none, false));
    }

    /// Bytes the peer's kernel acknowledged since the bound began, with no
    /// write of ours making progress, restart it when it passes; with none
    /// since, it passes. (A real loopback pair: the count is the kernel's.)
    #[tokio::test(start_paused = true)]
    async fn a_stall_bound_that_passes_asks_the_kernel_whether_the_peer_took_bytes() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut ours, _) = listener.accept().unwrap();
        let socket = std::os::fd::AsRawFd::as_raw_fd(&ours);
        let before = bytes_acked(socket).expect("a TCP socket has the count");
        let mut bound = stall(Duration::from_secs(1), Some(socket));
        assert!(!passed(&mut bound, false));
        // The peer's kernel takes 1,000 bytes (into its receive buffer; the
        // peer never reads), and acknowledges them at once or nearly.
        ours.write_all(&[7; 1000]).unwrap();
        let waited = std::time::Instant::now();
        while bytes_acked(socket) < Some(before + 1000) {
            assert!(waited.elapsed() < Duration::from_secs(20), "acknowledged");
            std::thread::sleep(Duration::from_millis(1));
        }
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert!(!passed(&mut bound, false), "the peer took bytes: restarted");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!passed(&mut bound, false), "0.6 s into the restarted bound");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(
            passed(&mut bound, false),
            "a whole bound with nothing taken"
        );
        // Not a TCP socket: no count, no progress but our writes'.
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(bytes_acked(std::os::fd::AsRawFd::as_raw_fd(&unix)), None);
    }

    /// `close` says whether its flush went through (a WebSocket's close
    /// tells its confirmed pushes by it): not while the peer takes
    /// nothing (bounded by the close's timeout, on paused time), yes once
    /// it reads. It was discarded: over TLS a buffer handed to the session
    /// but never sent told its pushes `Ok` (review, session 46).
    #[tokio::test(start_paused = true)]
    async fn close_says_whether_its_flush_went() {
        use tokio::io::AsyncReadExt;
        for reads in [false, true] {
            let (ours, mut theirs) = tokio::io::duplex(64);
            let stats = std::sync::Arc::new(WorkerStats::default());
            let config = std::sync::Arc::new(Config::default());
            let ctx = Rc::new(WorkerContext::new(0, config, stats, None));
            let mut conn = ConnIo::new(ours, ctx);
            conn.wbuf().extend_from_slice(&[7; 1024]);
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                if reads {
                    let _ = theirs.read_to_end(&mut got).await;
                } else {
                    // Held open, read from no more.
                    std::future::pending::<()>().await;
                }
                got.len()
            });
            let flushed = conn.close(CloseReason::ServerClosed).await;
            assert_eq!(flushed, reads, "reads: {reads}");
            drop(conn);
            if reads {
                assert_eq!(reader.await.unwrap(), 1024);
            } else {
                reader.abort();
            }
        }
    }
}
