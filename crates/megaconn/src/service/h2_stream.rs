//! [`H2Stream`]: an HTTP/2 stream as a byte stream. What an upgraded
//! `CONNECT` stream (RFC 8441's WebSocket, RFC 9113 §8.5's tunnel) hands
//! the handler in an [`Upgraded`](crate::Upgraded), as TCP would after an
//! HTTP/1.1 `101`. Crate-private: its halves are the `h2` crate's types,
//! and handlers see only the `Upgraded` (`AsyncRead + AsyncWrite`), so
//! megaconn's public API does not follow h2's versions.
//!
//! Reads take the stream's DATA frames in order and give their bytes back
//! to the client's flow-control window as the reader consumes them (not as
//! they arrive), so a reader that falls behind stops the client at the
//! window instead of buffering without bound; each frame taken is told to
//! the connection's tiny-DATA budget as a body's is ([`ReadCredit`]: a
//! WebSocket's small messages are tiny DATA frames the handler reads). Writes go out as DATA frames
//! as the client's window and h2's send buffer allow: `poll_write` is
//! pending while neither has room. RFC 8441 §6 maps TCP's FIN to
//! `END_STREAM`: `poll_shutdown`, or dropping the stream unshut, ends our
//! half that way; RST_STREAM is kept for errors (h2 sends it when the
//! stream is dropped while the client is still sending after our end).
//!
//! A write's wait for room that ends with a grant of a few bytes is a round
//! of a window opened a few bytes at a time, charged to the connection's
//! one drip budget as a response's is ([`DripGate`], implemented in
//! `proto/http2.rs` over `proto/http2/flood.rs`'s budget: this layer does
//! not name it); past the budget the write is held back, not failed.
//!
//! Written by hand because hyper's equivalent (`proto/h2/upgrade.rs`) is
//! private to hyper and runs its sends through a channel and a task of its
//! own; here the stream is driven by the connection's task, so the writer
//! hands its bytes to h2 directly.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::service::h2_body::ReadCredit;

/// Largest single capacity request (h2's windows are 31-bit).
pub(crate) const MAX_RESERVE: usize = (1 << 31) - 1;

/// Where an upgraded stream's writes report each wait for room that ended:
/// the connection's window-drip budget (`proto/http2.rs`'s `drip_wait`,
/// the rule a response's body follows too). `Send + Sync`: the stream may
/// move to another thread with its handler.
pub(crate) trait DripGate: Send + Sync {
    /// A wait for room ended with `granted` bytes of the `wanted` the
    /// write waits to send; `Some`: hold the write back that long first.
    fn room_granted(&self, granted: usize, wanted: usize) -> Option<Duration>;
}

/// Both halves of one HTTP/2 stream (the `h2` crate's) as `AsyncRead +
/// AsyncWrite`: reads are the peer's DATA frames, giving their bytes back
/// to its window as they are read; writes go out as DATA frames as the
/// peer's window allows; shutting down (or dropping) sends `END_STREAM`.
///
/// The server's side of an extended CONNECT, inside the handler's
/// [`Upgraded`](crate::Upgraded).
pub(crate) struct H2Stream {
    recv: RecvStream,
    send: SendStream<Bytes>,
    /// The rest of the DATA frame being read.
    pending: Bytes,
    /// `END_STREAM` sent (or the stream can take no more).
    shut: bool,
    /// The connection's drip budget, which each wait for room reports to.
    drip: Arc<dyn DripGate>,
    /// The connection's tiny-DATA budget, which each frame read reports to.
    credit: Arc<dyn ReadCredit>,
    /// A write waits for room (h2 had none when it asked).
    waiting: bool,
    /// A write held back by the drip budget, till this fires; the
    /// reservation it got stays meanwhile.
    held: Option<Pin<Box<Sleep>>>,
    /// Dropped with the stream: tells the stream's exchange that the
    /// handler is done with it.
    _alive: oneshot::Sender<()>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("pending", &self.pending.len())
            .field("shut", &self.shut)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    /// The stream whose halves are `send` (of the response) and `recv`
    /// (the request's body), its writes' waits reported to `drip` and its
    /// frames read to `credit`, and what resolves once it is dropped (the
    /// server's exchange waits on it, so the connection counts the stream
    /// as open, and its idle timer stays off, meanwhile).
    pub(crate) fn watched(
        send: SendStream<Bytes>,
        recv: RecvStream,
        drip: Arc<dyn DripGate>,
        credit: Arc<dyn ReadCredit>,
    ) -> (H2Stream, oneshot::Receiver<()>) {
        let (alive, done) = oneshot::channel();
        let stream = H2Stream {
            recv,
            send,
            pending: Bytes::new(),
            shut: false,
            drip,
            credit,
            waiting: false,
            held: None,
            _alive: alive,
        };
        (stream, done)
    }

    /// Why a write cannot go on: the client's reset, or a broken pipe.
    fn write_error(&mut self, cx: &mut Context<'_>, e: Option<h2::Error>) -> io::Error {
        let reason = match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Some(reason),
            _ => e.as_ref().and_then(h2::Error::reason),
        };
        match reason {
            Some(reason) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the client reset the HTTP/2 stream ({reason})"),
            ),
            None => e.map_or_else(|| io::ErrorKind::BrokenPipe.into(), h2_to_io),
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match std::task::ready!(this.recv.poll_data(cx)) {
                // END_STREAM: the client's FIN.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    this.credit.data_read(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        // A reset after the client's last byte: its end.
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(()),
                        _ => Err(h2_to_io(e)),
                    });
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // Consumed: the client may send that much more.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Reserved only with bytes to send, and what is not used given back
        // below: a reservation held while the writer is idle would pin the
        // connection's window (hyper #4003; `proto/http2.rs`'s `send_body`
        // does the same for response bodies).
        let want = buf.len().min(MAX_RESERVE);
        this.send.reserve_capacity(want);
        if let Some(held) = this.held.as_mut() {
            std::task::ready!(held.as_mut().poll(cx));
            this.held = None;
        }
        // What h2 grants, asked once (each call takes the connection's
        // lock): `poll_capacity` answers with the capacity itself.
        let mut granted = this.send.capacity();
        this.waiting |= granted == 0;
        while granted == 0 {
            match std::task::ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) => granted = n,
                Some(Err(e)) => return Poll::Ready(Err(this.write_error(cx, Some(e)))),
                // No longer sending: reset by the client.
                None => return Poll::Ready(Err(this.write_error(cx, None))),
            }
        }
        // A wait ended: a few bytes of more is a drip round, held back
        // past the connection's budget (slowed, not failed: a reader
        // taking a few bytes at a time looks the same), then sent with
        // whatever the window holds by then.
        if std::mem::take(&mut this.waiting) {
            if let Some(wait) = this.drip.room_granted(granted, want) {
                let mut held = Box::pin(tokio::time::sleep(wait));
                if held.as_mut().poll(cx).is_pending() {
                    this.held = Some(held);
                    return Poll::Pending;
                }
                granted = granted.max(this.send.capacity());
            }
        }
        let n = granted.min(buf.len());
        match this
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            Ok(()) => {
                if n < want {
                    this.send.reserve_capacity(0);
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(this.write_error(cx, Some(e)))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what h2 buffered.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end();
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Ends our half with `END_STREAM` (once; a reset stream takes nothing).
    fn end(&mut self) {
        if !self.shut {
            self.shut = true;
            self.send.reserve_capacity(0);
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // An orderly close, as a dropped TCP socket sends FIN.
        self.end();
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into())
    } else {
        io::Error::other(e)
    }
}
