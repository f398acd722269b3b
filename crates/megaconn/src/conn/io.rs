//! One connection's IO in the core: the socket, its pooled (and, while
//! idle, absent) read and write buffers, flushing, and the lingering close
//! that keeps a last answer from being destroyed by a reset. A protocol adds
//! its own reading on top (HTTP/1.1's head reader is in `proto/http1/conn.rs`,
//! an `impl` of this type there).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use crate::conn::context::WorkerContext;
use crate::conn::transport::Transport;
use crate::conn::ConnInfo;
use crate::observe::clock::LazyDeadline;
use crate::observe::close::CloseReason;
use crate::observe::lifecycle;

/// How long closing may take to flush a last response and linger.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How much a lingering close reads and discards before giving up.
const LINGER_BYTES: usize = 256 * 1024;

/// How long a write to a peer that takes our bytes slowly may go on before
/// the peer counts as gone, for the persistent protocols (WebSocket, framed).
///
/// With `write_timeout` set, that is the whole write's time, as for an HTTP
/// response (Go's `WriteTimeout`). With it off, the heartbeat timeout bounds
/// the time the peer takes *none* of our bytes: a peer that stopped reading
/// is as gone as one that stopped sending, but a slow one still reading a
/// large backlog is not. Made only when a write has to wait.
#[derive(Debug)]
pub(crate) struct WriteBound {
    deadline: LazyDeadline,
    /// The timeout it counts (for the log line).
    timeout: Option<Duration>,
    /// Set when the bound restarts on progress (the heartbeat's).
    stall: Option<Duration>,
}

impl WriteBound {
    /// The bound from now, from `write_timeout`, else from the heartbeat
    /// timeout; neither: unbounded.
    pub(crate) fn new(write_timeout: Option<Duration>, heartbeat: Option<Duration>) -> WriteBound {
        let stall = write_timeout.is_none().then_some(heartbeat).flatten();
        let timeout = write_timeout.or(stall);
        WriteBound {
            deadline: LazyDeadline::after(timeout),
            timeout,
            stall,
        }
    }

    /// The timeout it stands for (for the log line).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// True once the bound passed; else the task is woken when it does.
    /// `progressed`: the peer took some of our bytes since the last poll.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>, progressed: bool) -> bool {
        if let (true, Some(stall)) = (progressed, self.stall) {
            self.deadline.restart(stall);
        }
        self.deadline.poll_passed(cx)
    }
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
    pub(crate) async fn close(&mut self, reason: CloseReason) {
        let linger = reason.needs_linger() || self.rbuf_len() > 0;
        let notify = T::SECURE && reason.says_close_notify();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.flush().await?;
            if linger && reason.truncates() {
                poll_fn(|cx| self.io.poll_shutdown_truncated(cx)).await?;
            } else if linger || notify {
                poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await?;
            }
            if linger {
                let mut discarded = 0;
                while discarded < LINGER_BYTES {
                    let (rbuf, io) = self.rbuf_and_io();
                    rbuf.clear();
                    match poll_fn(|cx| read_more(io, rbuf, cx)).await? {
                        0 => break,
                        n => discarded += n,
                    }
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
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

    /// Polls `bound` once, reporting `progressed`.
    fn passed(bound: &mut WriteBound, progressed: bool) -> bool {
        bound.poll_passed(
            &mut Context::from_waker(std::task::Waker::noop()),
            progressed,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_bounds_a_write_without_progress_and_write_timeout_the_whole_write() {
        let step = Duration::from_millis(600);
        // The heartbeat's bound starts again whenever the peer took bytes.
        let mut stall = WriteBound::new(None, Some(Duration::from_secs(1)));
        assert!(!passed(&mut stall, false));
        tokio::time::advance(step).await;
        assert!(!passed(&mut stall, true), "progress at 0.6 s");
        tokio::time::advance(step).await;
        assert!(!passed(&mut stall, false), "0.6 s since the progress");
        tokio::time::advance(step).await;
        assert!(passed(&mut stall, false), "1.2 s without progress");
        // write_timeout counts the whole write, progress or not.
        let mut total =
            WriteBound::new(Some(Duration::from_secs(1)), Some(Duration::from_secs(60)));
        assert!(!passed(&mut total, false));
        tokio::time::advance(step).await;
        assert!(!passed(&mut total, true));
        tokio::time::advance(step).await;
        assert!(passed(&mut total, true), "1.2 s since the write began");
        assert_eq!(total.timeout(), Some(Duration::from_secs(1)));
        // Neither: unbounded.
        let mut none = WriteBound::new(None, None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!passed(&mut none, false));
    }
}
