//! The end of a WebSocket: the server's close handshake, and the last word
//! to a peer closed without one.
//!
//! After our close frame the peer's is awaited for `close_timeout`, then
//! the server closes the TCP connection (it closes first, RFC 6455
//! §7.1.1). Finding the peer's close takes frame headers only: what the
//! peer sends before it (the rest of a frame our close cut, more of its
//! message) is counted off as it passes, never gathered, inflated or
//! checked ([`Scan`]). So a connection waiting for its peer's close holds
//! no pooled buffer: it takes one for each read and gives it back before it
//! waits again. (It kept the connection's decoder going: the read buffer
//! held the unfinished frame, then grew to hold all of its rest, up to
//! `max_frame_bytes`, and the message gathered so far stayed, for the
//! whole wait.)
//!
//! A peer may also drop the frame our close cut and answer at once (a
//! client that stalled in the middle of a frame, written raw before its
//! WebSocket library took the stream over): its close comes where the rest
//! of the frame would, and counting it off as payload waited the whole
//! `close_timeout` for a rest that never came. So a read that is one whole,
//! valid client close frame and nothing else is taken for the peer's close
//! too ([`lone_close`]). An honest peer's payload passes for one only if a
//! read holds exactly such a frame's bytes, a valid close code among them;
//! and were it taken so, the close would only end early a connection that
//! is closing anyway.

use std::future::poll_fn;
use std::pin::pin;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::BytesMut;

use crate::conn::io::{read_more, ConnIo};
use crate::conn::transport::Transport;
use crate::conn::woken::poll_once;
use crate::observe::close::CloseReason;
use crate::proto::ws::frame::{self, Decoder, Event, Limits};
use crate::proto::ws::{INTERNAL_ERROR, TRY_AGAIN_LATER};

/// The longest frame header: 2 bytes, a 64-bit length and a mask.
const MAX_HEADER: usize = 2 + 8 + 4;

/// The longest client close frame: a masked header and 125 bytes.
const MAX_CLOSE_FRAME: usize = 2 + 4 + 125;

/// Sends our close frame and waits up to `timeout` for the peer's. With
/// `find_close`, its frames are passed by their headers until its close
/// ([`Scan`], from what was read before: a close frame already read
/// counts), or a read that is a lone close frame ([`lone_close`]). Without
/// it (after a violation: the peer's next bytes are the rest of what broke
/// the protocol, not frames to trust), it reads them away until the peer
/// closes or a read is a lone close frame (its answer to ours, which a
/// client sends at once): the lingering close that keeps our close frame
/// from being destroyed by a reset, ended as soon as the peer answered.
/// Either way it holds no buffer while it waits.
pub(crate) async fn close_handshake<T: Transport>(
    conn: &mut ConnIo<T>,
    (code, reason): (u16, &str),
    timeout: Duration,
    find_close: bool,
) -> usize {
    let before = conn.wbuf_len();
    frame::encode_close(conn.wbuf(), code, reason);
    let appended = conn.wbuf_len() - before;
    let _ = tokio::time::timeout(timeout, async {
        conn.flush().await?;
        let mut scan = find_close.then(Scan::default);
        // What was read before our close: whole frames, and the beginning
        // of one.
        if let (Some(scan), Some(rbuf)) = (scan.as_mut(), conn.buffers.rbuf.as_ref()) {
            if scan.passed_close(rbuf) {
                return Ok(());
            }
        }
        if let Some(rbuf) = conn.buffers.rbuf.as_mut() {
            rbuf.clear();
        }
        conn.buffers.release();
        poll_fn(|cx| loop {
            ready!(conn.io.poll_read_ready(cx))?;
            let (rbuf, io) = conn.rbuf_and_io();
            let read = read_more(io, rbuf, cx);
            // A lone close frame is the peer's close after a violation too:
            // both closes sent and received, the server closes the TCP
            // connection at once (RFC 6455 §7.1.1). It waited out
            // `close_timeout` there (5 s by default) for a client that
            // answered at once and then waited for our FIN, as python
            // `websockets` does (review, session 46, W8).
            let closed =
                lone_close(rbuf) || scan.as_mut().is_some_and(|scan| scan.passed_close(rbuf));
            rbuf.clear();
            conn.buffers.release();
            if ready!(read)? == 0 || closed {
                return Poll::Ready(Ok::<(), std::io::Error>(()));
            }
        })
        .await
    })
    .await;
    appended
}

/// Where the peer's stream stands, frame by frame, read by headers alone:
/// the header begun, and how much of the current frame's payload is still
/// to pass. It keeps at most a header (14 bytes), never a payload.
#[derive(Debug, Default)]
struct Scan {
    /// The next frame's header, as much of it as came.
    head: [u8; MAX_HEADER],
    head_len: usize,
    /// Payload bytes of the current frame still to pass.
    left: u64,
    /// The current frame is a close: once it passed, the peer has closed.
    close: bool,
}

impl Scan {
    /// Passes `bytes`, the next of the peer's stream; true once its close
    /// frame has passed whole.
    fn passed_close(&mut self, mut bytes: &[u8]) -> bool {
        loop {
            let n = usize::try_from(self.left).map_or(bytes.len(), |left| left.min(bytes.len()));
            self.left -= n as u64;
            bytes = &bytes[n..];
            if self.left > 0 {
                return false;
            }
            if self.close {
                return true;
            }
            match self.header(&mut bytes) {
                Some((close, length)) => (self.close, self.left) = (close, length),
                None => return false,
            }
        }
    }

    /// Takes the next header's bytes from `bytes`; once it is whole,
    /// whether it begins a close frame, and its payload's length.
    fn header(&mut self, bytes: &mut &[u8]) -> Option<(bool, u64)> {
        while self.head_len < header_len(&self.head[..self.head_len]) {
            let (&byte, rest) = bytes.split_first()?;
            self.head[self.head_len] = byte;
            self.head_len += 1;
            *bytes = rest;
        }
        let head = &self.head[..self.head_len];
        self.head_len = 0;
        Some((head[0] & 0x0f == 0x8, payload_len(head)))
    }
}

/// The payload length a whole frame header says (RFC 6455 §5.2).
fn payload_len(head: &[u8]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
        n => u64::from(n),
    }
}

/// Where the frames of a write buffer end, noted before a flush begins
/// (the buffer starts at a frame boundary then: every flush runs until it
/// is empty or the connection closes), so that a slow consumer's 1013 can
/// go right after the frame under way instead of behind the whole backlog
/// ([`FrameEnds::rest_of_frame`]), and so that a flush cut short counts the
/// frames the socket took whole ([`FrameEnds::data_within`]). A buffer of
/// one frame (most flushes: a pong, a reply, a push) keeps no list.
#[derive(Debug, Default)]
pub(crate) struct FrameEnds {
    /// The buffer's length when the flush began.
    started: usize,
    /// The ends of its frames, when there are more than one, and whether
    /// each is a data frame (a reply or a push; else a control frame).
    ends: Vec<(usize, bool)>,
    /// Whether the buffer's one frame is a data frame (`ends` empty).
    data: bool,
}

impl FrameEnds {
    /// Notes the frames of `wbuf` (our own, whole), about to be flushed.
    pub(crate) fn note(&mut self, wbuf: &[u8]) {
        self.started = wbuf.len();
        self.ends.clear();
        let mut at = 0;
        while at < wbuf.len() {
            let head = &wbuf[at..];
            let whole = header_len(head);
            if head.len() < whole {
                break;
            }
            // Text, binary (ours are never fragments: no continuation).
            let data = head[0] & 0x08 == 0;
            let payload = usize::try_from(payload_len(head)).unwrap_or(usize::MAX);
            at = at.saturating_add(whole).saturating_add(payload);
            if at >= wbuf.len() && self.ends.is_empty() {
                self.data = data;
                return;
            }
            self.ends.push((at.min(wbuf.len()), data));
        }
    }

    /// The frames noted: where each ends, and whether it is a data frame.
    fn frames(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        let one = self.ends.is_empty() && self.started > 0;
        let one = one.then_some((self.started, self.data));
        one.into_iter().chain(self.ends.iter().copied())
    }

    /// Of the `left` bytes still unwritten, how many are the rest of the
    /// frame the socket took part of (0 when it stopped between frames):
    /// what must still go before another frame can.
    pub(crate) fn rest_of_frame(&self, left: usize) -> usize {
        let written = self.started.saturating_sub(left);
        if written == 0 {
            return 0;
        }
        let end = self
            .frames()
            .map(|(end, _)| end)
            .find(|&end| end >= written)
            .unwrap_or(self.started);
        end - written
    }

    /// How many data frames (replies and pushes) end within `[from, to]`,
    /// and how many of them are pushes: those past `pushes_from` (a flush's
    /// pushes follow all its other frames; `None`: it holds none).
    pub(crate) fn data_within(
        &self,
        (from, to): (usize, usize),
        pushes_from: Option<usize>,
    ) -> (u64, u64) {
        let pushes_from = pushes_from.unwrap_or(usize::MAX);
        self.frames()
            .filter(|&(end, data)| data && end > from && end <= to)
            .fold((0, 0), |(frames, pushes), (end, _)| {
                (frames + 1, pushes + u64::from(end > pushes_from))
            })
    }
}

/// How long the frame header that begins with `head` is (RFC 6455 §5.2):
/// its second byte says how many bytes of length follow, and whether a
/// mask does; before it comes, at least 2.
fn header_len(head: &[u8]) -> usize {
    let Some(&second) = head.get(1) else { return 2 };
    let length = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + length + mask
}

/// Whether `read` is one whole, valid client close frame (masked, final, a
/// code a peer may send and a UTF-8 reason) and nothing else: a peer's
/// close, wherever its stream stood (the module doc says why). Decoded by
/// the connection's own rules, on the rare read that begins like one.
fn lone_close(read: &[u8]) -> bool {
    if read.first() != Some(&0x88) || read.len() > MAX_CLOSE_FRAME {
        return false;
    }
    let limits = Limits {
        max_frame_bytes: 125,
        max_message_bytes: 125,
    };
    let mut buf = BytesMut::from(read);
    let decoded = Decoder::default().decode(&mut buf, limits);
    matches!(decoded, Ok(Some(Event::Close(_)))) && buf.is_empty()
}

/// Tells a peer closed without a close handshake why, when it has to:
/// silent past its heartbeat timeout, it gets a close frame 1011 (see
/// [`INTERNAL_ERROR`]); behind on what we send (its push queue
/// overflowed), a 1013 (see [`TRY_AGAIN_LATER`]); its answer is not
/// awaited (it has not answered our pings, or does not read). Without it a client that still hears us (a half-open path, a
/// stalled reader) saw the TCP close alone: 1006, abnormal closure.
///
/// All or nothing: if the socket takes none of the frame at once, none is
/// sent (waiting would make the TCP close wait for a peer that does not
/// read); if it takes part, the rest (a few bytes: a close frame is at most
/// 127) stays in the write buffer, and the connection's close writes it
/// within its bound, as it does over TLS, where the stream took the frame
/// whole and its close sends it. It dropped the rest: the peer read a frame
/// cut short, a protocol error, where it should have read why.
///
/// Except for a slow consumer: it reads, slowly, and its socket is full
/// when it is closed, so the frame would never go at once. Its 1013 goes
/// right after the frame under way (a frame cannot be cut into): a write
/// that was stuck dropped the frames not begun ([`FrameEnds`]), and the
/// connection's close writes the rest and the 1013 within its bound (`linger_timeout`),
/// as it writes any last answer. Appended behind the whole backlog, the
/// 1013 reached the peer only if the peer read it all within that bound,
/// and not at all when the socket took nothing at once (then the backlog
/// and the 1013 were dropped together); sent only into an empty buffer
/// (tried), it never went: a slow consumer's buffer is never empty.
///
/// Returns the close frame's length (0 when it sends none), for what was
/// buffered before it to be counted if it went (`conn.rs`).
pub(crate) fn last_word<T: Transport>(conn: &mut ConnIo<T>, reason: CloseReason) -> usize {
    let Some((code, why)) = last_word_for(reason) else {
        return 0;
    };
    let before = conn.wbuf_len();
    frame::encode_close(conn.wbuf(), code, why);
    let queued = conn.wbuf_len();
    let flushed = poll_once(pin!(poll_fn(|cx| conn.poll_flush(cx))));
    let all_or_nothing = reason != CloseReason::SlowConsumer;
    if all_or_nothing && flushed.is_pending() && conn.wbuf_len() == queued {
        if let Some(wbuf) = conn.buffers.wbuf.as_mut() {
            wbuf.clear();
        }
    }
    queued - before
}

/// The close frame [`last_word`] tells a peer closed for `reason`, if any.
fn last_word_for(reason: CloseReason) -> Option<(u16, &'static str)> {
    match reason {
        CloseReason::HeartbeatTimeout => Some((INTERNAL_ERROR, "heartbeat timeout")),
        CloseReason::SlowConsumer => Some((TRY_AGAIN_LATER, "slow consumer")),
        _ => None,
    }
}

/// The code of the close frame [`last_word`] queued for `reason`, given
/// what it returned (`said`: 0 when it queued none), for the close-code
/// counter (`observe/rooms.rs`).
pub(crate) fn last_word_code(reason: CloseReason, said: usize) -> Option<u16> {
    last_word_for(reason)
        .filter(|_| said > 0)
        .map(|(code, _)| code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (the mask is zero: the payload as it is).
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..126 => out.push(0x80 | n as u8),
            n @ 126..65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(payload);
        out
    }

    fn close() -> Vec<u8> {
        frame(0x88, &1000u16.to_be_bytes())
    }

    /// Frames of every header length, then a close, fed whole or a byte at
    /// a time: the close is found where it ends, not before.
    #[test]
    fn a_scan_finds_the_close_after_frames_of_every_header_length() {
        let stream = [
            frame(0x02, &[7; 70_000]),
            frame(0x89, b"ping"),
            frame(0x00, &[7; 300]),
            frame(0x80, b""),
            close(),
        ]
        .concat();
        let mut whole = Scan::default();
        assert!(whole.passed_close(&stream));
        let mut bytewise = Scan::default();
        for (i, byte) in stream.iter().enumerate() {
            let found = bytewise.passed_close(std::slice::from_ref(byte));
            assert_eq!(found, i == stream.len() - 1, "at byte {i}");
        }
    }

    /// The rest of a frame begun before (its header already passed) is
    /// counted off, whatever it holds: a close frame's bytes in the payload
    /// are payload.
    #[test]
    fn a_close_inside_a_payload_is_payload() {
        let inner = close();
        let outer = frame(0x82, &[&inner[..], &[1; 50]].concat());
        let (head, payload) = outer.split_at(outer.len() - inner.len() - 50);
        let mut scan = Scan::default();
        assert!(!scan.passed_close(head));
        assert!(!scan.passed_close(payload));
        assert!(scan.passed_close(&close()));
    }

    /// A server frame (unmasked) of `n` payload bytes.
    fn ours(n: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame::encode(&mut out, frame::Out::Binary, &vec![7; n]);
        out.to_vec()
    }

    /// The rest of the frame under way, for every header length: nothing
    /// before the first byte went or between frames, else up to its end.
    #[test]
    fn the_rest_of_the_frame_under_way() {
        let frames = [ours(10), ours(300), ours(70_000), ours(0)];
        let wbuf = frames.concat();
        let mut ends = FrameEnds::default();
        ends.note(&wbuf);
        let total = wbuf.len();
        let (a, b, c) = (12, 12 + 304, 12 + 304 + 70_010);
        let at: Vec<usize> = ends.ends.iter().map(|(end, _)| *end).collect();
        assert_eq!(at, [a, b, c, total]);
        for (written, rest) in [
            (0, 0),
            (5, a - 5),
            (a, 0),
            (a + 1, b - a - 1),
            (c - 1, 1),
            (c, 0),
        ] {
            assert_eq!(
                ends.rest_of_frame(total - written),
                rest,
                "{written} written"
            );
        }
        // One frame keeps no list.
        ends.note(&ours(100_000));
        assert!(ends.ends.is_empty());
        assert_eq!(ends.rest_of_frame(100_010 - 7), 100_010 - 7);
        assert_eq!(ends.rest_of_frame(100_010), 0);
    }

    /// A flush cut short counts the data frames it wrote whole (a pong is
    /// none), and the pushes among them by where the pushes begin.
    #[test]
    fn the_data_frames_written_whole_and_the_pushes_among_them() {
        let mut pong = BytesMut::new();
        frame::encode(&mut pong, frame::Out::Pong, b"p");
        let (reply, push) = (ours(10), ours(300));
        let wbuf = [&reply[..], &pong[..], &push[..], &push[..]].concat();
        let pushes_from = Some(reply.len() + pong.len());
        let mut ends = FrameEnds::default();
        ends.note(&wbuf);
        let (a, b, c) = (12, 12 + 3, 12 + 3 + 304);
        for (written, counted) in [
            (0, (0, 0)),
            (a - 1, (0, 0)),
            (a, (1, 0)),
            (b, (1, 0)),
            (c - 1, (1, 0)),
            (c, (2, 1)),
            (wbuf.len(), (3, 2)),
        ] {
            let within = ends.data_within((0, written), pushes_from);
            assert_eq!(within, counted, "{written} written");
        }
        // The frame under way, from where the write stopped to its end.
        assert_eq!(ends.data_within((b + 1, c), pushes_from), (1, 1));
        assert_eq!(ends.data_within((1, a), None), (1, 0));
        // One frame, a push.
        ends.note(&push);
        assert_eq!(ends.data_within((0, push.len()), Some(0)), (1, 1));
        assert_eq!(ends.data_within((0, push.len() - 1), Some(0)), (0, 0));
    }

    #[test]
    fn a_lone_close_is_one_whole_valid_close_frame_and_nothing_else() {
        assert!(lone_close(&close()));
        assert!(lone_close(&frame(0x88, b"")));
        assert!(lone_close(&frame(
            0x88,
            &[&[0x03, 0xE8][..], b"bye"].concat()
        )));
        // Cut, followed by more, unmasked, an invalid code, not a close.
        assert!(!lone_close(&close()[..5]));
        assert!(!lone_close(&[close(), vec![0]].concat()));
        assert!(!lone_close(&[0x88, 0x02, 0x03, 0xE8]));
        assert!(!lone_close(&frame(0x88, &1005u16.to_be_bytes())));
        assert!(!lone_close(&frame(0x89, b"")));
    }
}
