//! What the bytes a held connection reads mean, for every protocol `hold`
//! speaks: the reply to a heartbeat, pushes to count (`--receive`), a
//! WebSocket server's pings to answer.
//!
//! One [`Wire`] per connection, used the same way by the thread's parking
//! lot (`hold_lot.rs`, every cleartext connection) and by the task of a TLS
//! connection (`hold_conn.rs`), so the protocols differ only here: how a
//! reply is delimited and recognised.
//! - HTTP: the next whole response (`parse.rs`) is the reply; bytes while no
//!   heartbeat waits are ignored.
//! - `tcp://` (lines or a length header, `tcp_frames.rs`) and `ws://`
//!   (`ws.rs`) are framed: every whole frame is classified ([`Frame`]), the
//!   first that can answer while a heartbeat waits is its reply, data frames
//!   are handed to the push counter, a ping is answered with a pong.
//!
//! The heartbeat's bytes are the same for every protocol: one pre-rendered
//! buffer per process (`HoldShared::heartbeat`).

use crate::hold_conn::{Ended, HoldShared};
use crate::parse::{ResponseParser, Step};
use crate::tcp_frames::{sent_at_ns, TcpFraming, TooLarge};
use crate::ws::{self, WsHeartbeat};

/// The verdict on the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Need more; keep the last `usize` bytes.
    Incomplete(usize),
    /// An expected reply; `close`: the server will close the connection.
    Ok {
        /// The server announced it closes.
        close: bool,
    },
    /// Not the expected reply.
    Bad,
}

/// What a read settled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The heartbeat was answered as expected; `close`: the server said it
    /// closes the connection.
    Answered {
        /// The server announced it closes.
        close: bool,
    },
    /// The heartbeat's reply was wrong (an error status, a frame without
    /// `--expect`, a WebSocket close), or the stream cannot be framed (a
    /// frame too large): the connection fails.
    Failed,
}

/// How a connection's bytes are delimited and what answers a heartbeat.
#[derive(Debug)]
enum Proto {
    /// HTTP/1.1 responses.
    Http(ResponseParser),
    /// WebSocket frames from the server.
    Ws(WsHeartbeat),
    /// `tcp://` frames.
    Frames(TcpFraming),
}

/// One whole frame of a framed protocol, by what it means to `hold`.
enum Frame<'d> {
    /// Can answer a heartbeat: a `tcp://` frame that is not a push, a pong
    /// (ping heartbeats), a WebSocket data frame (text heartbeats). `data`:
    /// one that answers nothing is handed on as a data frame (not a pong).
    Answer { payload: &'d [u8], data: bool },
    /// A data frame that cannot answer: a push if it carries its send time.
    Data(&'d [u8]),
    /// A WebSocket ping, answered with a pong.
    Ping(&'d [u8]),
    /// A WebSocket close, with its status code (1005 when it has none): a
    /// heartbeat waiting for its reply fails.
    Close(u16),
    /// Nothing for `hold` (a pong with text heartbeats, a continuation).
    Other,
}

/// The reading side of one held connection.
#[derive(Debug)]
pub(crate) struct Wire {
    proto: Proto,
    /// The head of a response or frame split across reads (rare: empty and
    /// unallocated while reads end on reply boundaries, as they nearly
    /// always do).
    spill: Vec<u8>,
    /// The status code of a WebSocket close frame the server sent: the
    /// connection's end is then a clean close, not a drop ([`Wire::ended`]).
    closed: Option<u16>,
}

impl Wire {
    /// The reading side of a connection of this process's protocol.
    pub(crate) fn new(sh: &HoldShared) -> Wire {
        let proto = match (&sh.ws, sh.http) {
            (Some(ws), _) => Proto::Ws(ws.beat),
            (None, true) => Proto::Http(ResponseParser::new(sh.head_request)),
            (None, false) => Proto::Frames(sh.framing),
        };
        Wire {
            proto,
            spill: Vec::new(),
            closed: None,
        }
    }

    /// How the connection ended, `how` as its socket says: a drop or
    /// reset after the server's WebSocket close frame is that close
    /// (a graceful drain's 1001), not a drop; so is a failure after it
    /// (the close came while a heartbeat waited for its pong, which
    /// then never comes: the heartbeat is counted failed where it
    /// failed, the connection as the server's close). Before, such a
    /// connection was counted as failed only, and an upgrade that told
    /// every one of 10,000 WebSockets `1001` read as fewer in `hold`'s
    /// report (9,981 and 9,985 in session 44, the rest failed
    /// heartbeats and connections the lot had not seen end).
    pub(crate) fn ended(&self, how: Ended) -> Ended {
        match (how, self.closed) {
            (Ended::Dropped | Ended::Reset | Ended::Failed, Some(code)) => Ended::Closed(code),
            (how, _) => how,
        }
    }

    /// Takes the bytes `read` from the connection; `waiting`: a heartbeat
    /// waits for its reply. Pongs for a WebSocket server's pings are
    /// appended to `out` (for the caller to send); data frames go to
    /// `pushed` (which counts those that carry their send time, in receive
    /// mode), including those read together with the reply. `None` until a
    /// reply settles the heartbeat; `Failed` may also come while no
    /// heartbeat waits (a stream that cannot be framed).
    pub(crate) fn take(
        &mut self,
        sh: &HoldShared,
        waiting: bool,
        read: &[u8],
        out: &mut Vec<u8>,
        mut pushed: impl FnMut(&[u8]),
    ) -> Option<Verdict> {
        if let Proto::Http(parser) = &mut self.proto {
            if !waiting {
                return None; // bytes no heartbeat asked for are ignored
            }
            let verdict = settle(&mut self.spill, read, |data| http_reply(parser, data));
            if verdict.is_some() {
                parser.reset();
            }
            return verdict;
        }
        let data = joined(&mut self.spill, read);
        let mut verdict = None;
        let mut at = 0;
        loop {
            let frame = match self.proto.split(&data[at..], sh.receive) {
                Ok(Some((frame, used))) => {
                    at += used;
                    frame
                }
                Ok(None) => break,
                Err(TooLarge) => return Some(Verdict::Failed),
            };
            let open = waiting && verdict.is_none();
            match frame {
                Frame::Answer { payload, .. } if open => {
                    verdict = Some(expected(sh.expect.as_deref(), payload));
                }
                Frame::Answer {
                    payload,
                    data: true,
                }
                | Frame::Data(payload) => pushed(payload),
                Frame::Answer { data: false, .. } => {}
                Frame::Ping(payload) => out.extend(ws::client_frame(ws::PONG, payload)),
                Frame::Close(code) => {
                    self.closed = Some(code);
                    if open {
                        verdict = Some(Verdict::Failed);
                    }
                }
                Frame::Other => {}
            }
        }
        self.spill = if at == data.len() {
            Vec::new()
        } else {
            data[at..].to_vec()
        };
        verdict
    }
}

impl Wire {
    /// Takes the bytes `read` while the WebSocket upgrade waits for its
    /// reply: the head (kept in `spill` while it is incomplete), then, in
    /// the same read, whatever frames the server wrote right after its
    /// `101` (a welcome message, a ping, a close), taken as [`Wire::take`]
    /// takes frames between heartbeats: pushes to `pushed`, pongs to `out`,
    /// a close noted. `None` until the head is whole; then `Answered` for a
    /// `101`, `Failed` for anything else (or read-ahead that cannot be
    /// framed). (The bytes after the head were thrown away: a frame sent
    /// in the same write as the `101` was lost, a ping never answered.)
    pub(crate) fn take_upgrade(
        &mut self,
        sh: &HoldShared,
        read: &[u8],
        out: &mut Vec<u8>,
        pushed: impl FnMut(&[u8]),
    ) -> Option<Verdict> {
        let mut held = std::mem::take(&mut self.spill);
        let data = joined(&mut held, read);
        match ws::upgrade_reply(data) {
            ws::Upgrade::Incomplete => {
                self.spill = data.to_vec();
                None
            }
            ws::Upgrade::Refused => Some(Verdict::Failed),
            ws::Upgrade::Switched { head } => {
                let answered = Verdict::Answered { close: false };
                let ahead = &data[head..];
                if ahead.is_empty() {
                    return Some(answered);
                }
                // No heartbeat waits: only a stream that cannot be framed
                // gives a verdict (`Failed`).
                Some(self.take(sh, false, ahead, out, pushed).unwrap_or(answered))
            }
        }
    }
}

impl Proto {
    /// The first whole frame of `data` and its length; `None` while it is
    /// incomplete. `receive`: frames carrying their send time are pushes.
    fn split<'d>(
        &self,
        data: &'d [u8],
        receive: bool,
    ) -> Result<Option<(Frame<'d>, usize)>, TooLarge> {
        Ok(Some(match *self {
            Proto::Http(_) => return Ok(None),
            Proto::Frames(framing) => {
                let Some((payload, used)) = framing.split(data)? else {
                    return Ok(None);
                };
                let payload = &data[payload];
                if receive && sent_at_ns(payload).is_some() {
                    (Frame::Data(payload), used)
                } else {
                    let data = true;
                    (Frame::Answer { payload, data }, used)
                }
            }
            Proto::Ws(beat) => {
                let Some((opcode, payload, used)) = ws::split(data)? else {
                    return Ok(None);
                };
                let frame = match (opcode, beat) {
                    (ws::PONG, WsHeartbeat::Ping) => Frame::Answer {
                        payload,
                        data: false,
                    },
                    (ws::TEXT | ws::BINARY, WsHeartbeat::Text) => Frame::Answer {
                        payload,
                        data: true,
                    },
                    (ws::TEXT | ws::BINARY, WsHeartbeat::Ping) => Frame::Data(payload),
                    (ws::PING, _) => Frame::Ping(payload),
                    (ws::CLOSE, _) => Frame::Close(match payload {
                        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
                        _ => 1005,
                    }),
                    _ => Frame::Other,
                };
                (frame, used)
            }
        }))
    }
}

/// The verdict of `judge` on what was read so far (kept in `spill` while
/// it is incomplete).
fn settle(spill: &mut Vec<u8>, read: &[u8], judge: impl FnOnce(&[u8]) -> Reply) -> Option<Verdict> {
    let data = joined(spill, read);
    let verdict = match judge(data) {
        Reply::Incomplete(keep) => {
            *spill = data[data.len() - keep..].to_vec();
            return None;
        }
        Reply::Ok { close } => Verdict::Answered { close },
        Reply::Bad => Verdict::Failed,
    };
    *spill = Vec::new();
    Some(verdict)
}

/// What to read: `read` after the head of a reply or frame an earlier
/// read left in `spill`. Nearly always `spill` is empty and `read` is
/// taken as it is, with no copy.
fn joined<'a>(spill: &'a mut Vec<u8>, read: &'a [u8]) -> &'a [u8] {
    if spill.is_empty() {
        read
    } else {
        spill.extend_from_slice(read);
        spill
    }
}

/// An HTTP heartbeat reply: a complete response below 400, or more to read.
pub(crate) fn http_reply(parser: &mut ResponseParser, data: &[u8]) -> Reply {
    match parser.parse(data) {
        Ok(Step::Partial { consumed }) => Reply::Incomplete(data.len() - consumed),
        Ok(Step::Done { response, .. }) if response.status < 400 => Reply::Ok {
            close: response.close,
        },
        _ => Reply::Bad,
    }
}

/// A framed reply: any, or one containing `expect`.
fn expected(expect: Option<&[u8]>, payload: &[u8]) -> Verdict {
    match expect {
        Some(e) if !payload.windows(e.len().max(1)).any(|w| w == e) => Verdict::Failed,
        _ => Verdict::Answered { close: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{client_frame, PONG};

    /// What one [`Wire::take`] gave: the verdict, the pongs to send, the
    /// data frames seen.
    type Took = (Option<Verdict>, Vec<u8>, Vec<Vec<u8>>);

    fn take(wire: &mut Wire, sh: &HoldShared, waiting: bool, read: &[u8]) -> Took {
        let (mut out, mut pushes) = (Vec::new(), Vec::new());
        let v = wire.take(sh, waiting, read, &mut out, |p| pushes.push(p.to_vec()));
        (v, out, pushes)
    }

    fn ws_shared(beat: WsHeartbeat, expect: Option<&[u8]>) -> HoldShared {
        let mut sh = HoldShared::for_test();
        sh.http = false;
        sh.ws = Some(ws::WsHold {
            upgrade: Vec::new(),
            beat,
        });
        sh.expect = expect.map(<[u8]>::to_vec);
        sh
    }

    const OK: Option<Verdict> = Some(Verdict::Answered { close: false });

    #[test]
    fn http_replies() {
        let mut p = ResponseParser::new(false);
        assert_eq!(
            http_reply(&mut p, b"HTTP/1.1 200 OK\r\nContent"),
            Reply::Incomplete(24)
        );
        let mut p = ResponseParser::new(false);
        assert_eq!(
            http_reply(&mut p, b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n"),
            Reply::Bad
        );
        // Across reads, then the next reply with a fresh parser state.
        let sh = HoldShared::for_test();
        let mut wire = Wire::new(&sh);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        for cut in 1..ok.len() {
            assert_eq!(take(&mut wire, &sh, true, &ok[..cut]).0, None, "{cut}");
            assert_eq!(take(&mut wire, &sh, true, &ok[cut..]).0, OK, "{cut}");
        }
        // Unasked bytes are ignored.
        assert_eq!(take(&mut wire, &sh, false, b"garbage").0, None);
        let closing = b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n";
        let answered = Some(Verdict::Answered { close: true });
        assert_eq!(take(&mut wire, &sh, true, closing).0, answered);
    }

    #[test]
    fn tcp_replies_and_pushes() {
        let mut sh = HoldShared::for_test();
        sh.http = false;
        sh.framing = TcpFraming::Length(2);
        sh.expect = Some(b"PONG".to_vec());
        let mut wire = Wire::new(&sh);
        let framing = sh.framing;
        let frame = |body: &[u8]| framing.heartbeat(body);
        assert_eq!(take(&mut wire, &sh, true, &frame(b"PONG")).0, OK);
        assert_eq!(
            take(&mut wire, &sh, true, &frame(b"NOPE")).0,
            Some(Verdict::Failed)
        );
        // Receive mode: a stamped frame is a push, before or after the reply
        // and while idle; the first other frame is the reply.
        sh.receive = true;
        let wire_bytes = [frame(b"t=5 a"), frame(b"PONG"), frame(b"t=6 b")].concat();
        for cut in 0..=wire_bytes.len() {
            let mut wire = Wire::new(&sh);
            let first = take(&mut wire, &sh, true, &wire_bytes[..cut]);
            let second = take(&mut wire, &sh, true, &wire_bytes[cut..]);
            let answers = u8::from(first.0 == OK) + u8::from(second.0 == OK);
            assert_eq!(answers, 1, "one reply, whatever the cut at {cut}");
            let pushes = [first.2, second.2].concat();
            assert_eq!(pushes, [b"t=5 a".to_vec(), b"t=6 b".to_vec()], "{cut}");
        }
        let mut wire = Wire::new(&sh);
        let (verdict, _, pushes) = take(&mut wire, &sh, false, &frame(b"t=7"));
        assert_eq!((verdict, pushes), (None, vec![b"t=7".to_vec()]));
        // A frame over the limit fails the connection, waiting or not.
        sh.framing = TcpFraming::Length(4);
        let mut wire = Wire::new(&sh);
        let huge = [0, 1, 0, 1];
        assert_eq!(take(&mut wire, &sh, false, &huge).0, Some(Verdict::Failed));
    }

    #[test]
    fn ws_ping_heartbeats() {
        let sh = ws_shared(WsHeartbeat::Ping, None);
        let mut wire = Wire::new(&sh);
        let pong = [0x8a, 2, b'h', b'b'];
        assert_eq!(take(&mut wire, &sh, true, &pong).0, OK);
        // A server ping before the pong is answered; the pong still counts.
        let (v, out, _) = take(&mut wire, &sh, true, &[0x89, 1, 7, 0x8a, 0]);
        assert_eq!((v, out), (OK, client_frame(PONG, &[7])));
        // In pieces: nothing until the pong is whole.
        assert_eq!(take(&mut wire, &sh, true, &pong[..3]).0, None);
        assert_eq!(take(&mut wire, &sh, true, &pong[3..]).0, OK);
        // A close instead of the pong fails; a missing pong settles nothing
        // (the caller's deadline fails it).
        assert_eq!(
            take(&mut wire, &sh, true, &[0x88, 0]).0,
            Some(Verdict::Failed)
        );
        assert_eq!(take(&mut wire, &sh, true, &[0x81, 1, b'x']).0, None);
        // Data frames read with the pong, before or after it, are pushes
        // (commit 63d14be); a frame cut at the end is kept for the next read.
        let mut wire = Wire::new(&sh);
        let read = [0x81, 2, b't', b'=', 0x8a, 0, 0x81, 1, b'x', 0x82, 1];
        let (v, _, pushes) = take(&mut wire, &sh, true, &read);
        assert_eq!((v, pushes), (OK, vec![b"t=".to_vec(), b"x".to_vec()]));
        // Idle: pings answered, data frames pushed, a stray pong ignored.
        let (v, out, pushes) = take(&mut wire, &sh, false, &[9, 0x89, 0, 0x8a, 0]);
        assert_eq!(v, None);
        assert_eq!(out, client_frame(PONG, &[]));
        assert_eq!(pushes, [vec![9]]);
    }

    /// A server's close frame makes the connection's end a close with its
    /// code (1005: none given), not a drop, reset or failure (a heartbeat
    /// that failed because the close came first is counted apart); without
    /// a close frame a drop stays a drop and a failure a failure.
    #[test]
    fn a_close_frame_makes_the_end_a_close() {
        let sh = ws_shared(WsHeartbeat::Ping, None);
        let wire = Wire::new(&sh);
        assert!(matches!(wire.ended(Ended::Dropped), Ended::Dropped));
        assert!(matches!(wire.ended(Ended::Failed), Ended::Failed));
        let mut wire = Wire::new(&sh);
        assert_eq!(take(&mut wire, &sh, false, &[0x88, 2, 0x03, 0xe9]).0, None);
        assert!(matches!(wire.ended(Ended::Dropped), Ended::Closed(1001)));
        assert!(matches!(wire.ended(Ended::Reset), Ended::Closed(1001)));
        assert!(matches!(wire.ended(Ended::Failed), Ended::Closed(1001)));
        // The close while a heartbeat waits: the heartbeat fails, the
        // connection's end is the close.
        let mut wire = Wire::new(&sh);
        let close = [0x88, 2, 0x03, 0xe9];
        assert_eq!(take(&mut wire, &sh, true, &close).0, Some(Verdict::Failed));
        assert!(matches!(wire.ended(Ended::Failed), Ended::Closed(1001)));
        let mut wire = Wire::new(&sh);
        take(&mut wire, &sh, false, &[0x88, 0]);
        assert!(matches!(wire.ended(Ended::Dropped), Ended::Closed(1005)));
    }

    #[test]
    fn ws_text_heartbeats() {
        let sh = ws_shared(WsHeartbeat::Text, Some(b"ck"));
        let mut wire = Wire::new(&sh);
        let text = [0x81, 3, b'a', b'c', b'k'];
        assert_eq!(take(&mut wire, &sh, true, &text).0, OK);
        let other = [0x81, 2, b'n', b'o'];
        assert_eq!(take(&mut wire, &sh, true, &other).0, Some(Verdict::Failed));
        // While idle a data frame is a push, and a pong means nothing.
        let (v, _, pushes) = take(&mut wire, &sh, false, &[0x8a, 0, 0x81, 1, b'z']);
        assert_eq!((v, pushes), (None, vec![b"z".to_vec()]));
    }
}
