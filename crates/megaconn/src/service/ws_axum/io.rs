//! The bytes between tungstenite's frame codec and megaconn's socket, held
//! only while they are in flight.
//!
//! tungstenite reads through `std::io::Read` into its own buffer, whose
//! capacity it allocates up front and keeps for the socket's life (128 KiB
//! by default, zero-filled on every read). We give it a zero-sized one: it then
//! asks for at most a frame header's worth (14 bytes) per call, and this
//! bridge answers those calls from the bytes of one socket read, taken into
//! a stack chunk. What the codec has not taken yet waits in an exact-size
//! heap copy that is freed the moment it is consumed. Writes go straight to
//! the socket; what the socket does not take waits in a queue freed once it
//! is flushed. An idle socket therefore holds neither buffer.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::service::upgrade::Upgraded;

/// The most bytes one socket read takes (on the stack, so it costs an idle
/// socket nothing). 8 KiB: a typical message in one `read`, and a large one
/// in few enough that the syscalls don't dominate the copies.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// The in-flight bytes of one WebSocket. Both are empty, with no allocation,
/// whenever the socket is idle.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    /// Read from the socket, not yet taken by the codec.
    read_ahead: BytesMut,
    /// Written by the codec or the sink, not yet taken by the socket.
    pub(super) out: BytesMut,
}

impl Buffers {
    /// Bytes queued for the socket.
    pub(super) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes the queue to the socket; frees it once empty.
    pub(super) fn poll_flush(
        &mut self,
        io: &mut Upgraded,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        // `advance` keeps the allocation: drop it, the idle socket holds none.
        self.out = BytesMut::new();
        Pin::new(io).poll_flush(cx)
    }
}

/// tungstenite's view of the socket for one call: a blocking-style
/// `Read + Write` that answers `WouldBlock` where the socket is not ready
/// (having registered `cx` to be woken).
pub(super) struct Bridge<'a, 'b> {
    pub(super) io: &'a mut Upgraded,
    pub(super) bufs: &'a mut Buffers,
    /// `None` outside a poll (`Sink::start_send`): writes only queue.
    pub(super) cx: Option<&'a mut Context<'b>>,
}

impl Read for Bridge<'_, '_> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        let ahead = &mut self.bufs.read_ahead;
        if !ahead.is_empty() {
            let n = ahead.len().min(dst.len());
            dst[..n].copy_from_slice(&ahead[..n]);
            if n == ahead.len() {
                *ahead = BytesMut::new();
            } else {
                ahead.advance(n);
            }
            return Ok(n);
        }
        let Some(cx) = self.cx.as_deref_mut() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *self.io).poll_read(cx, &mut buf) {
            Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) => {}
        }
        let filled = buf.filled();
        let n = filled.len().min(dst.len());
        dst[..n].copy_from_slice(&filled[..n]);
        if filled.len() > n {
            *ahead = BytesMut::from(&filled[n..]);
        }
        Ok(n)
    }
}

impl Write for Bridge<'_, '_> {
    fn write(&mut self, src: &[u8]) -> io::Result<usize> {
        if self.bufs.out.is_empty() {
            if let Some(cx) = self.cx.as_deref_mut() {
                match Pin::new(&mut *self.io).poll_write(cx, src) {
                    Poll::Ready(Ok(n)) if n == src.len() => return Ok(n),
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.bufs.out.extend_from_slice(&src[n..]);
                        return Ok(src.len());
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => {}
                }
            }
        }
        // Behind queued bytes (order matters) or not writable now: queue.
        // Never `WouldBlock`, so the codec's own buffer always drains.
        self.bufs.out.extend_from_slice(src);
        Ok(src.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The queue is flushed by the socket's owner, with a real waker.
        Ok(())
    }
}
