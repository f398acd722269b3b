//! [`WebSocket`]: an upgraded connection as a `Stream` and `Sink` of axum's
//! [`Message`]s, on tungstenite's protocol state machine.
//!
//! tungstenite's [`WebSocketContext`] checks frames, reassembles fragments,
//! validates UTF-8, answers pings and runs the close handshake; this type
//! feeds it through [`Bridge`] so no buffer outlives a message. Text and
//! binary messages are framed here rather than by the context, whose write
//! buffer keeps the capacity of the largest frame it ever sent; only the
//! small control frames (ping, pong, close) go through it.
//!
//! Between messages the context holds nothing that a fresh one would not
//! (the socket is open both ways, no fragment is pending, the bridge has
//! handed it no byte of the next frame), so an idle socket drops it: the
//! ~450 bytes of state leave the task and the capacity its buffers grew to
//! is freed. The next readiness boxes a fresh one (one allocation).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{BufMut, Bytes};
use futures_util::stream::FusedStream;
use futures_util::{Sink, Stream};
use http::HeaderValue;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Error as WsError;

use super::io::{Bridge, Buffers};
use crate::conn::config::DEFAULT_WS_CLOSE_TIMEOUT;
use crate::observe::close::{CloseReason, ProtocolDetail};
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood, OverLimit};
use crate::service::upgrade::Upgraded;

/// A WebSocket connection after the upgrade: receive with [`recv`](Self::recv)
/// or as a [`Stream`], send with [`send`](Self::send) or as a [`Sink`] (split
/// it with `StreamExt::split` to do both from two tasks), as axum's
/// `WebSocket`.
///
/// While idle it holds no read or write buffer: see the module docs of
/// [`megaconn::axum_ws`](crate::axum_ws) for what it does hold.
///
/// # A peer that does not read
///
/// Receiving answers each ping with a pong, queued when the socket does not
/// take it at once. While more than
/// [`WebSocketUpgrade::write_buffer_size`](super::WebSocketUpgrade::write_buffer_size)
/// bytes are queued, receiving reads no further frame until they are
/// flushed, as megaconn's native WebSocket route awaits its write before it
/// reads on: a peer that floods pings and reads no pong stalls on its own
/// socket (axum's socket queues a pong per ping, without bound).
///
/// A send (or `flush`, or a `Sink`'s `feed` that flushes) to a peer that
/// takes nothing is bounded, as the native route's and framed TCP's writes
/// are (axum's socket waits for good): by
/// [`Builder::write_timeout`](crate::Builder::write_timeout), the whole
/// write, when set; else by
/// [`Builder::write_stall_timeout`](crate::Builder::write_stall_timeout)
/// (60 s by default), the time the peer takes *none* of our bytes: a slow
/// but steady reader of a large message is not cut off (its progress is
/// seen in the bytes the kernel says it acknowledged). Past the bound the
/// send fails with an `axum::Error` whose source is an `io::Error` of kind
/// `TimedOut`, counted in `megaconn_timeouts_total` and logged (at most
/// once per 5 s per thread); the socket is then closed for good (sends and
/// receives fail, its close is counted as `write_timeout`), as the native
/// route closes its connection. Without it a peer that stops reading held
/// the handler's task and its queued bytes until the peer went. A send
/// the caller gives up on (a `timeout` or `select!` around it) leaves its
/// bytes queued and its bound running: the next send continues that write,
/// so with `write_timeout` set it may fail at the old deadline, as the
/// queued bytes are still the same write.
pub struct WebSocket {
    io: Upgraded,
    /// tungstenite's state machine while a message is under way; `None`
    /// between messages (see the module docs).
    ctx: Option<Box<WebSocketContext>>,
    /// The limits, also what a fresh context is made with (the
    /// context's configuration is built from them when needed: held
    /// inline, it would be 32 bytes more in every idle socket).
    limits: Limits,
    bufs: Buffers,
    protocol: Option<HeaderValue>,
    /// The stream has ended (closed, or failed for good).
    ended: bool,
    /// The socket's turn in the server's graceful shutdown came (the
    /// start, or its turn in a paced drain) and its close 1001 was queued:
    /// sends fail from here on.
    going_away: bool,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("protocol", &self.protocol)
            .field("queued", &self.bufs.queued())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The socket's limits, from [`WebSocketUpgrade`](super::WebSocketUpgrade).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Queued bytes past which a `Sink` flushes before the next message,
    /// and the `Stream` before it reads the next frame.
    pub(super) write_buffer_size: usize,
    /// Queued bytes past which a send fails.
    pub(super) max_write_buffer_size: usize,
    pub(super) max_message_size: Option<usize>,
    pub(super) max_frame_size: Option<usize>,
    pub(super) accept_unmasked_frames: bool,
}

impl Limits {
    /// What tungstenite's context is made with.
    fn config(self) -> WebSocketConfig {
        // A zero read buffer: tungstenite allocates no read buffer up front
        // and reads header-sized pieces, which `Bridge` serves from memory.
        // A zero write buffer: every frame goes to the bridge at once.
        WebSocketConfig::default()
            .read_buffer_size(0)
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(self.max_message_size)
            .max_frame_size(self.frame_limit())
            .accept_unmasked_frames(self.accept_unmasked_frames)
    }

    /// The frame limit tungstenite checks at each frame's header:
    /// `max_frame_size`, or `max_message_size` when smaller. tungstenite
    /// checks the message limit only once a frame is whole, after it
    /// reserved and read the frame's length (up to `max_frame_size`, 16 MiB
    /// by default) into its buffer: a single frame over the message limit
    /// would be held whole before its 1009. A data frame is part of a
    /// message, so it can never be over the message limit and accepted;
    /// control frames (at most 125 bytes) stay allowed under an even
    /// smaller message limit, as in axum.
    fn frame_limit(self) -> Option<usize> {
        const MAX_CONTROL_PAYLOAD: usize = 125;
        let message = self.max_message_size.map(|m| m.max(MAX_CONTROL_PAYLOAD));
        match (self.max_frame_size, message) {
            (Some(frame), Some(message)) => Some(frame.min(message)),
            (frame, message) => frame.or(message),
        }
    }
}

impl WebSocket {
    pub(super) fn new(io: Upgraded, limits: Limits, protocol: Option<HeaderValue>) -> WebSocket {
        WebSocket {
            io,
            ctx: None,
            limits,
            bufs: Buffers::default(),
            protocol,
            ended: false,
            going_away: false,
        }
    }

    /// Receives the next message; `None` once the connection has closed.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        futures_util::StreamExt::next(self).await
    }

    /// Sends a message and flushes it to the socket.
    pub async fn send(&mut self, msg: Message) -> Result<(), axum::Error> {
        futures_util::SinkExt::send(self, msg).await
    }

    /// The subprotocol the upgrade selected, if any.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// Splits the borrows: the context (a fresh one if none is held), the
    /// socket and the buffers.
    fn bridge<'a, 'b>(
        &'a mut self,
        cx: Option<&'a mut Context<'b>>,
    ) -> (&'a mut WebSocketContext, Bridge<'a, 'b>) {
        let limits = self.limits;
        let ctx = self.ctx.get_or_insert_with(|| {
            Box::new(WebSocketContext::new(Role::Server, Some(limits.config())))
        });
        let bridge = Bridge {
            io: &mut self.io,
            bufs: &mut self.bufs,
            cx,
        };
        (ctx, bridge)
    }

    /// Whether messages may still be sent (no close sent or received).
    fn can_write(&self) -> bool {
        self.ctx.as_ref().is_none_or(|ctx| ctx.can_write())
    }

    /// Whether more is queued for the socket than the write buffer size:
    /// a `Sink` flushes before it takes the next message, the `Stream`
    /// before it reads the next frame.
    fn over_write_buffer(&self) -> bool {
        self.bufs.queued() > self.limits.write_buffer_size
    }

    fn poll_flush_queue(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        self.bufs
            .poll_flush(&mut self.io, cx)
            .map_err(axum::Error::new)
    }

    /// Between messages, drops tungstenite's context (its read buffer keeps
    /// the capacity of the largest frame it reassembled, its write buffer
    /// that of the largest control frame it sent). Only when it holds
    /// nothing a fresh one would not: open both ways, no fragmented message,
    /// no unread bytes (the bridge never hands it part of the next frame),
    /// and its pending pong written out first.
    fn drop_context_between_messages(&mut self, cx: &mut Context<'_>) {
        if self.ctx.is_none() || !self.can_write() || !self.bufs.between_messages() {
            return;
        }
        let (ctx, mut bridge) = self.bridge(Some(cx));
        if ctx.flush(&mut bridge).is_err() {
            return;
        }
        self.ctx = None;
    }

    /// Its turn in graceful shutdown came: closes with 1001 (going away),
    /// as the native WebSocket does, unless a close was sent already. Heard by `recv`
    /// (which waits for it) or by the next send or flush (which only look:
    /// see [`Self::shutdown_heard_by_sink`]). Reading goes on, so
    /// the handler's `recv` sees the peer's answer and then the end, and
    /// its loop finishes. A peer that never answers gets
    /// [`DEFAULT_WS_CLOSE_TIMEOUT`], as the native route's `close_timeout`,
    /// then the stream ends without it ([`Self::give_up`]): a half-dead
    /// peer does not hold the worker's stop until `shutdown_timeout`.
    fn go_away(&mut self, cx: &mut Context<'_>) {
        self.going_away = true;
        if !self.can_write() {
            return;
        }
        tracing::debug!("server shutting down: closing the WebSocket with 1001 (going away)");
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::Away,
            reason: tungstenite::Utf8Bytes::from_static(""),
        };
        let (ctx, mut bridge) = self.bridge(Some(cx));
        let _ = ctx.close(&mut bridge, Some(frame));
        let _ = self.poll_flush_queue(cx);
    }

    /// For the `Sink`: whether its turn in shutdown came and the close
    /// 1001 is now queued (a handler that only sends hears it here; one in `recv`
    /// heard it there). It only looks (a flag; during a paced drain, the
    /// turns' lock too) and registers no waker:
    /// a split socket's two halves run on two tasks, and only the reading
    /// one keeps its waker in the drain's list (a send-only handler would
    /// not poll the socket when woken anyway, it waits for its next
    /// message).
    fn shutdown_heard_by_sink(&mut self, cx: &mut Context<'_>) -> bool {
        if self.going_away || !self.io.turn_came() {
            return false;
        }
        self.go_away(cx);
        true
    }

    /// The peer did not answer the close 1001 within the close timeout: the
    /// stream ends, and the socket leaves the worker's drain at once (a
    /// handler still holding a split half does not hold the stop).
    fn give_up(&mut self) {
        tracing::debug!(
            timeout = ?DEFAULT_WS_CLOSE_TIMEOUT,
            "the peer did not answer the WebSocket's close 1001 in time: closing"
        );
        self.ended = true;
        self.io.leave_drain();
    }

    /// After a protocol error: closes with the matching code (1002, 1007,
    /// 1009) so the client learns why, best effort; counted in the server's
    /// `protocol_errors` and reported as the close's reason
    /// ([`ProtocolDetail::WebSocket`]), as the native WebSocket does.
    fn close_for(&mut self, error: &WsError, cx: &mut Context<'_>) {
        let code = match error {
            // The peer hung up without a close frame (a closed tab, a killed
            // process): not a protocol error, and nobody is left to tell.
            // The close stays the client's, as on the native route.
            WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                return
            }
            WsError::Capacity(_) => CloseCode::Size,
            WsError::Utf8(_) => CloseCode::Invalid,
            WsError::Protocol(_) => CloseCode::Protocol,
            _ => return,
        };
        self.io
            .protocol_error(CloseReason::Protocol(ProtocolDetail::WebSocket(
                code.into(),
            )));
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                let (hit, over) = self.over_size(*size, *max_size);
                self.io.limit_hit(hit);
                // The peer is not at hand here (an HTTP/2 stream has none of its
                // own); the close's reason and the route's logs name it.
                ratelog::over_limit(over, || None, "closing with 1009");
            }
            _ => {
                tracing::debug!(%error, code = u16::from(code), "closing the WebSocket after a bad frame")
            }
        }
        let frame = tungstenite::protocol::CloseFrame {
            code,
            reason: tungstenite::Utf8Bytes::from_static(""),
        };
        let (ctx, mut bridge) = self.bridge(Some(cx));
        let _ = ctx.close(&mut bridge, Some(frame));
        let _ = self.poll_flush_queue(cx);
    }

    /// What tungstenite's 1009 (`size` over `max_size`) went over, for the
    /// log line: the [`WebSocketUpgrade`](super::WebSocketUpgrade) setting
    /// whose value `max_size` is (tungstenite reports the frame and the
    /// message limit alike), and so whether a frame or a message did; and
    /// the limit hit it counts as (a message where both share the value).
    fn over_size(&self, size: usize, max_size: usize) -> (LimitHit, OverLimit) {
        let frame = self.limits.max_frame_size == Some(max_size);
        // The frame limit tungstenite checked may be the message limit's
        // (`Limits::frame_limit`): then the message limit refused it.
        let message = self.limits.max_message_size == Some(max_size)
            || (!frame && self.limits.frame_limit() == Some(max_size));
        let (hit, kind, what, setting) = match (frame, message) {
            (true, false) => (
                LimitHit::WsFrameTooBig,
                Flood::AxumWsFrameTooBig,
                "WebSocket frame",
                "WebSocketUpgrade::max_frame_size",
            ),
            (false, true) => (
                LimitHit::WsMessageTooBig,
                Flood::AxumWsMessageTooBig,
                "WebSocket message",
                "WebSocketUpgrade::max_message_size",
            ),
            _ => (
                LimitHit::WsMessageTooBig,
                Flood::AxumWsMessageTooBig,
                "WebSocket frame or message",
                "WebSocketUpgrade::max_frame_size or max_message_size",
            ),
        };
        let over = OverLimit {
            kind,
            what,
            setting,
            size: Some(size as u64),
            limit: max_size as u64,
        };
        (hit, over)
    }
}

/// tungstenite's message as axum's. `None` for a raw frame, which reading
/// never yields.
fn from_tungstenite(message: tungstenite::Message) -> Option<Message> {
    Some(match message {
        tungstenite::Message::Text(text) => Message::Text(utf8(text.into())),
        tungstenite::Message::Binary(data) => Message::Binary(data),
        tungstenite::Message::Ping(data) => Message::Ping(data),
        tungstenite::Message::Pong(data) => Message::Pong(data),
        tungstenite::Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
            code: f.code.into(),
            reason: utf8(f.reason.into()),
        })),
        tungstenite::Message::Frame(_) => return None,
    })
}

/// Bytes tungstenite has already validated as UTF-8, as axum's `Utf8Bytes`
/// (whose only public constructor from `Bytes` checks again).
fn utf8(bytes: Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from_static("\u{fffd}"))
}

/// axum's close frame as tungstenite's.
fn close_to_tungstenite(frame: CloseFrame) -> Result<tungstenite::protocol::CloseFrame, WsError> {
    let reason = tungstenite::Utf8Bytes::try_from(Bytes::from(frame.reason))
        .map_err(|e| WsError::Utf8(e.to_string()))?;
    Ok(tungstenite::protocol::CloseFrame {
        code: CloseCode::from(frame.code),
        reason,
    })
}

/// The error a send gets once the socket's close went out.
fn send_after_closing() -> axum::Error {
    axum::Error::new(WsError::Protocol(ProtocolError::SendAfterClosing))
}

impl Stream for WebSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if !this.going_away && this.io.poll_turn(cx) {
                this.go_away(cx);
            }
            if this.going_away && this.io.poll_grace_over(cx, DEFAULT_WS_CLOSE_TIMEOUT) {
                this.give_up();
                return Poll::Ready(None);
            }
            // Back-pressure, as the native route awaits its flush before it
            // reads on: each read may queue an answer (a pong per ping, the
            // reply to a close), and a peer that sends pings but reads none
            // of the pongs would otherwise grow the queue without bound.
            // So no frame is read while the queue is over the write buffer
            // size: the peer's bytes wait in the socket, and it stalls.
            if this.over_write_buffer() {
                if let Err(e) = std::task::ready!(this.poll_flush_queue(cx)) {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.ctx.is_none() {
                // Idle: wait for bytes before building the codec's state.
                if let Err(e) = std::task::ready!(this.bufs.poll_fill(&mut this.io, cx)) {
                    this.ended = true;
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
            }
            let (ctx, mut bridge) = this.bridge(Some(cx));
            let result = ctx.read(&mut bridge);
            // A pong or a close reply the read queued goes out now; a
            // failure shows on the next read.
            if let Ok(tungstenite::Message::Close(_)) = &result {
                let (ctx, mut bridge) = this.bridge(Some(cx));
                let _ = ctx.flush(&mut bridge);
            }
            let waiting = matches!(&result, Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock);
            if waiting || matches!(&result, Ok(m) if !m.is_close()) {
                this.drop_context_between_messages(cx);
            }
            let _ = this.poll_flush_queue(cx);
            match result {
                Ok(message) => {
                    if let Some(message) = from_tungstenite(message) {
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Poll::Pending;
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.close_for(&e, cx);
                    this.ended = true;
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
            }
        }
    }
}

impl FusedStream for WebSocket {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl Sink<Message> for WebSocket {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        // After the close 1001 nothing more may be sent: the handler's send
        // loop ends here, as on axum's socket after a close.
        this.shutdown_heard_by_sink(cx);
        if this.going_away {
            // The close goes out before the handler, told, drops the socket.
            let _ = std::task::ready!(this.poll_flush_queue(cx));
            return Poll::Ready(Err(send_after_closing()));
        }
        if this.over_write_buffer() {
            return this.poll_flush_queue(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let this = &mut *self;
        let (payload, opcode) = match item {
            Message::Text(text) => (Bytes::from(text), Data::Text),
            Message::Binary(data) => (data, Data::Binary),
            control => {
                let message = match control {
                    Message::Ping(data) => tungstenite::Message::Ping(data),
                    Message::Pong(data) => tungstenite::Message::Pong(data),
                    Message::Close(frame) => tungstenite::Message::Close(
                        frame
                            .map(close_to_tungstenite)
                            .transpose()
                            .map_err(axum::Error::new)?,
                    ),
                    Message::Text(_) | Message::Binary(_) => unreachable!("matched above"),
                };
                let (ctx, mut bridge) = this.bridge(None);
                return match ctx.write(&mut bridge, message) {
                    // The close is queued; the server-side context calls the
                    // connection finished once it has nothing left to send.
                    Ok(()) | Err(WsError::ConnectionClosed) => Ok(()),
                    Err(e) => Err(axum::Error::new(e)),
                };
            }
        };
        if !this.can_write() {
            return Err(send_after_closing());
        }
        let frame = Frame::message(payload, OpCode::Data(opcode), true);
        if this.bufs.queued() + frame.len() > this.limits.max_write_buffer_size {
            return Err(axum::Error::new(WsError::WriteBufferFull(Box::new(
                tungstenite::Message::Frame(frame),
            ))));
        }
        frame
            .format(&mut (&mut this.bufs.out).writer())
            .map_err(axum::Error::new)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        // A pong tungstenite still holds (it answers pings on the next read
        // or flush) goes out with the rest.
        if this.ctx.is_some() {
            let (ctx, mut bridge) = this.bridge(Some(cx));
            match ctx.flush(&mut bridge) {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
                Err(e) => return Poll::Ready(Err(axum::Error::new(e))),
            }
        }
        std::task::ready!(this.poll_flush_queue(cx))?;
        // What was queued went out: the close 1001 follows it, and the next
        // send fails.
        if this.shutdown_heard_by_sink(cx) {
            return this.poll_flush_queue(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        if this.can_write() {
            let (ctx, mut bridge) = this.bridge(Some(cx));
            match ctx.close(&mut bridge, None) {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
                Err(e) => return Poll::Ready(Err(axum::Error::new(e))),
            }
        }
        this.poll_flush_queue(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket sits in every idle connection's task: keep it small (the
    /// figure behind the `axum_ws` docs): 440 bytes, of which 208 are the
    /// upgraded connection and its accounts; tungstenite's context (~450
    /// more) is boxed and held only while a message is under way.
    #[test]
    fn an_idle_socket_stays_small() {
        let size = std::mem::size_of::<WebSocket>();
        assert!(size <= 448, "WebSocket grew to {size} bytes");
    }

    /// A socket over an in-memory pipe of `pipe` bytes each way (the peer's
    /// end returned), with a `write_buffer_size` of `write_buffer`.
    fn over_pipe(pipe: usize, write_buffer: usize) -> (tokio::io::DuplexStream, WebSocket) {
        let (peer, ours) = tokio::io::duplex(pipe);
        let io = Upgraded::new(
            ours,
            Bytes::new(),
            crate::conn::connection::SendConnection::closed(),
            None,
        );
        // Unbounded: these tests hold the peer's reads on purpose.
        let limits = Limits {
            write_buffer_size: write_buffer,
            max_write_buffer_size: usize::MAX,
            max_message_size: None,
            max_frame_size: None,
            accept_unmasked_frames: false,
        };
        (peer, WebSocket::new(io, limits, None))
    }

    /// A masked ping with the most payload a control frame may carry.
    fn ping() -> Vec<u8> {
        let mut ping = vec![0x89u8, 0x80 | 125, 0, 0, 0, 0];
        ping.extend([b'p'; 125]);
        ping
    }

    /// A peer that floods pings and reads no pong: the queue stops one
    /// answer past the write buffer size, and the socket reads no further
    /// (the peer's pipe fills and stays full). It queued a pong per ping,
    /// and read all of them.
    #[test]
    fn pongs_to_a_peer_that_reads_none_queue_up_to_the_write_buffer_size() {
        use futures_util::{FutureExt, StreamExt};
        use tokio::io::AsyncWriteExt;
        const WRITE_BUFFER: usize = 8192;
        let (mut peer, mut ws) = over_pipe(4096, WRITE_BUFFER);
        let flood = ping().repeat(2000);
        let mut written = 0;
        let pong = 2 + 125;
        loop {
            let mut progressed = false;
            while let Some(n) = peer.write(&flood[written..]).now_or_never() {
                written += n.expect("the pipe is open");
                progressed = true;
                if written == flood.len() {
                    break;
                }
            }
            while let Some(message) = ws.next().now_or_never() {
                assert!(matches!(message, Some(Ok(Message::Ping(_)))), "{message:?}");
                progressed = true;
            }
            let queued = ws.bufs.queued();
            assert!(
                queued <= WRITE_BUFFER + pong,
                "{queued} bytes queued after {written} of pings"
            );
            if !progressed || written == flood.len() {
                break;
            }
        }
        assert!(
            written < flood.len() / 10,
            "the socket read {written} bytes of pings while the peer read no pong"
        );
        assert!(ws.bufs.queued() > WRITE_BUFFER);
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A split socket's receiving half, held back by a full queue, is woken
    /// when the sending half drains it, although the socket itself wakes
    /// only the last task that waited on it to write.
    #[test]
    fn a_receive_held_back_by_the_queue_is_woken_when_a_send_drains_it() {
        use futures_util::FutureExt;
        use std::sync::Arc;
        use tokio::io::AsyncReadExt;
        let (mut peer, mut ws) = over_pipe(4096, 1024);
        let (receiving, sending) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
        let (receiver, sender) = (
            std::task::Waker::from(receiving.clone()),
            std::task::Waker::from(sending.clone()),
        );
        // The sending half queues more than the pipe takes.
        Pin::new(&mut ws)
            .start_send(Message::Binary(vec![7; 16 * 1024].into()))
            .unwrap();
        let mut recv_cx = Context::from_waker(&receiver);
        assert!(Pin::new(&mut ws).poll_next(&mut recv_cx).is_pending());
        let mut send_cx = Context::from_waker(&sender);
        assert!(Pin::new(&mut ws).poll_flush(&mut send_cx).is_pending());
        // The peer reads; the sending half drains the queue.
        let mut sink = vec![0u8; 64 * 1024];
        let mut read = 0;
        while Pin::new(&mut ws).poll_flush(&mut send_cx).is_pending() {
            read += peer
                .read(&mut sink)
                .now_or_never()
                .expect("a pending flush left bytes in the pipe")
                .expect("the pipe is open");
        }
        assert!(read > 0);
        assert!(receiving.0.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}
