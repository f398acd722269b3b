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
//! is flushed.
//!
//! The codec's own buffer still keeps, between messages, the capacity of the
//! largest frame it reassembled (`bytes` reclaims it rather than freeing it).
//! So the bridge follows the frame headers and never hands the codec a byte
//! of the next frame early: between messages the codec holds nothing
//! unread, and the socket can replace it with a fresh one (no allocation).
//! An idle socket therefore holds no buffer at all.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

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
    /// Tasks waiting for `out` to drain, woken by the one that drains it
    /// (or fails to). The socket keeps one waker per direction, and a split
    /// socket's two halves can both wait to write: the `Sink` to flush, the
    /// `Stream` to read on once the queue is back under the write buffer
    /// size. The later one's waker replaces the earlier's in the socket,
    /// and without this the earlier would never be woken again. Freed by
    /// each completed flush (a `Vec`, not two slots inline: the idle socket
    /// keeps its size).
    waiting: Vec<Waker>,
    /// Read from the socket, not yet taken by the codec.
    read_ahead: BytesMut,
    /// Where the bytes handed to the codec stand in the client's frames.
    frames: FrameTracker,
    /// Written by the codec or the sink, not yet taken by the socket.
    pub(super) out: BytesMut,
}

impl Buffers {
    /// Bytes queued for the socket.
    pub(super) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Whether the codec has been handed exactly whole frames and no part of
    /// a fragmented message: it holds nothing it still needs.
    pub(super) fn between_messages(&self) -> bool {
        self.frames.head_len == 0 && self.frames.payload_left == 0 && !self.frames.fragmented
    }

    /// Waits until the socket has bytes (or its end) for the codec, reading
    /// them into `read_ahead`: an idle socket's wake-up checks readiness
    /// before any codec state is built. `Ready(0)` is the end of the stream
    /// (which the codec then reads too).
    pub(super) fn poll_fill(
        &mut self,
        io: &mut Upgraded,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if !self.read_ahead.is_empty() {
            return Poll::Ready(Ok(self.read_ahead.len()));
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        std::task::ready!(Pin::new(io).poll_read(cx, &mut buf))?;
        self.read_ahead = BytesMut::from(buf.filled());
        Poll::Ready(Ok(self.read_ahead.len()))
    }

    /// Writes the queue to the socket; frees it once empty. Until then the
    /// task is woken when it drains, whichever task drains it. A queue the
    /// peer does not take is bounded as the native protocols' writes are
    /// (`write_timeout`, else `write_stall_timeout`: see
    /// [`Upgraded::poll_write_bound`]); past the bound the flush fails, and
    /// the socket with it.
    pub(super) fn poll_flush(
        &mut self,
        io: &mut Upgraded,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let before = self.out.len();
        let mut flushed = self.poll_write_out(io, cx);
        if flushed.is_pending() {
            if let Poll::Ready(e) = io.poll_write_bound(cx, self.out.len() < before) {
                flushed = Poll::Ready(Err(e));
            }
        }
        match flushed {
            Poll::Pending => self.wait(cx),
            Poll::Ready(_) => {
                io.write_done();
                self.wake_waiting(cx);
            }
        }
        flushed
    }

    /// Notes the task as waiting for the queue to drain.
    fn wait(&mut self, cx: &Context<'_>) {
        let waker = cx.waker();
        if self.waiting.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        // A third task (only when the socket is shared some other way than
        // split in two): the oldest is woken to poll again, a spurious
        // wake-up rather than a lost one.
        if self.waiting.len() == 2 {
            self.waiting.remove(0).wake();
        }
        self.waiting.push(waker.clone());
    }

    /// The queue drained (or the socket failed): the other waiting tasks go
    /// on.
    fn wake_waiting(&mut self, cx: &Context<'_>) {
        for waker in std::mem::take(&mut self.waiting) {
            if !waker.will_wake(cx.waker()) {
                waker.wake();
            }
        }
    }

    /// Writes the queue to the socket; frees it once empty.
    fn poll_write_out(&mut self, io: &mut Upgraded, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        let want = dst.len().min(self.bufs.frames.allowance());
        let dst = &mut dst[..want];
        let ahead = &mut self.bufs.read_ahead;
        if !ahead.is_empty() {
            let n = ahead.len().min(dst.len());
            dst[..n].copy_from_slice(&ahead[..n]);
            if n == ahead.len() {
                *ahead = BytesMut::new();
            } else {
                ahead.advance(n);
            }
            self.bufs.frames.handed(&dst[..n]);
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
        self.bufs.frames.handed(&dst[..n]);
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

/// Follows the client's frame headers through the bytes handed to the codec
/// (RFC 6455 §5.2), so a read never crosses a frame boundary.
#[derive(Debug, Default)]
struct FrameTracker {
    /// The current header's bytes so far (at most 14: a `u8` keeps the
    /// idle socket's size).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame not yet handed over.
    payload_left: u64,
    /// Inside a fragmented data message (a data frame without FIN seen, its
    /// final continuation not yet).
    fragmented: bool,
}

impl FrameTracker {
    /// The length of the header being read (2 until its second byte is in).
    fn header_len(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// The most bytes that can be handed over without crossing into the
    /// next header or frame.
    fn allowance(&self) -> usize {
        if self.payload_left > 0 {
            return usize::try_from(self.payload_left).unwrap_or(usize::MAX);
        }
        self.header_len() - usize::from(self.head_len)
    }

    /// Notes `bytes` as handed to the codec.
    fn handed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min(self.allowance());
            if self.payload_left > 0 {
                self.payload_left -= n as u64;
            } else {
                let at = usize::from(self.head_len);
                self.head[at..at + n].copy_from_slice(&bytes[..n]);
                // At most 14: `n` is within the header's allowance.
                self.head_len += n as u8;
                if usize::from(self.head_len) == self.header_len() {
                    self.header_done();
                }
            }
            bytes = &bytes[n..];
        }
    }

    /// A whole header is in: its payload length, and whether it opens or
    /// closes a fragmented message.
    fn header_done(&mut self) {
        let h = &self.head;
        self.payload_left = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        let fin = h[0] & 0x80 != 0;
        // Control frames (opcodes 0x8 and up) may come between fragments.
        if h[0] & 0x0f < 0x8 {
            self.fragmented = !fin;
        }
        self.head_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::FrameTracker;

    #[test]
    fn the_tracker_stops_at_each_frame_boundary() {
        let mut t = FrameTracker::default();
        // A masked text frame with a 300-byte payload (16-bit length).
        let head = [0x81, 0x80 | 126, 0x01, 0x2c, 1, 2, 3, 4];
        assert_eq!(t.allowance(), 2);
        t.handed(&head[..2]);
        assert_eq!(t.allowance(), 6);
        t.handed(&head[2..]);
        assert_eq!(t.allowance(), 300);
        t.handed(&[0; 299]);
        assert_eq!(t.allowance(), 1);
        t.handed(&[0]);
        assert_eq!((t.head_len, t.payload_left, t.fragmented), (0, 0, false));
        // A first fragment, a ping between, the final continuation.
        t.handed(&[0x01, 0x80 | 1, 0, 0, 0, 0, b'a']);
        assert!(t.fragmented);
        t.handed(&[0x89, 0x80, 0, 0, 0, 0]);
        assert!(t.fragmented);
        t.handed(&[0x80, 0x80 | 1, 0, 0, 0, 0, b'b']);
        assert!(!t.fragmented);
        // A 64-bit length.
        t.handed(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9]);
        assert_eq!(t.payload_left, 65536);
    }
}
