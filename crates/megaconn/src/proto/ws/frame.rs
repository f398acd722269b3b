//! RFC 6455 frames, server side: the decoder that turns bytes read into a
//! pooled buffer into messages and control frames, and the encoder of the
//! server's frames.
//!
//! The frame header is tungstenite's ([`FrameHeader::parse`] reads it from
//! any byte slice, so from our pooled buffer as it is, and
//! [`FrameHeader::format`] writes ours); the rules above the header are
//! here, because tungstenite applies them inside its own socket type, which
//! owns a 128 KiB read buffer per connection:
//!
//! - every client frame is masked (§5.1), no reserved bit is set (but RSV1
//!   on the first frame of a compressed message, when permessage-deflate
//!   was agreed: `deflate.rs`), no reserved opcode (tungstenite rejects
//!   those);
//! - control frames are final and at most 125 bytes (§5.5), and may come
//!   between the fragments of a message (§5.4);
//! - a continuation frame continues a message, a new message does not start
//!   inside another (§5.4);
//! - text is UTF-8, checked fragment by fragment as it arrives (§8.1), so a
//!   bad byte fails the connection at once, not at the end of the message;
//! - a close frame carries nothing, or a valid code and a UTF-8 reason (§5.5.1,
//!   §7.4);
//! - `max_frame_bytes` is checked from the header, before the payload is
//!   read; `max_message_bytes` on the running total of a fragmented message.
//!
//! A whole unfragmented message is split off the read buffer without a copy;
//! fragments are gathered in a buffer of the message's own, which lives only
//! until the message ends. A compressed message is inflated, once whole,
//! into a buffer of its own (at most `max_message_bytes`), then checked.

use std::io::Cursor;
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::Utf8Bytes;

use super::deflate::{Codec, Deflate, InflateError};
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{Flood, OverLimit};

/// The most room a frame still arriving is given at a time, past what is
/// in hand (as much again as has come, up to this): enough for a few reads,
/// never what a header alone announces.
const RESERVE_AHEAD: usize = 64 * 1024;

/// A message as the server's handler sees it, and sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl WsMessage {
    /// The message's bytes (text as UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            WsMessage::Text(text) => text.as_bytes(),
            WsMessage::Binary(bytes) => bytes,
        }
    }
}

impl From<&'static str> for WsMessage {
    fn from(text: &'static str) -> WsMessage {
        WsMessage::Text(Utf8Bytes::from_static(text))
    }
}

impl From<String> for WsMessage {
    fn from(text: String) -> WsMessage {
        WsMessage::Text(text.into())
    }
}

impl From<Bytes> for WsMessage {
    fn from(bytes: Bytes) -> WsMessage {
        WsMessage::Binary(bytes)
    }
}

/// What one decoded frame (or the last fragment of a message) gives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A whole data message.
    Message(WsMessage),
    /// A ping, with its payload (answered with a pong carrying it).
    Ping(Bytes),
    /// A pong (the answer to our ping, or unsolicited: both only prove life).
    Pong,
    /// The peer's close frame: its code and reason, if it sent one.
    Close(Option<(u16, Utf8Bytes)>),
}

/// A frame that breaks the protocol: the connection fails with this close
/// code (§7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// 1002: a broken rule of the framing.
    Protocol(&'static str),
    /// 1007: text (or a close reason) that is not UTF-8.
    BadUtf8,
    /// 1009: a frame over `max_frame_bytes` or a message over
    /// `max_message_bytes`.
    TooBig(TooBig),
}

/// A frame or message over one of the route's size limits: which, how big,
/// and the limit, for the close reason and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooBig {
    /// A frame over `max_frame_bytes`, else a message over
    /// `max_message_bytes`.
    pub(crate) frame: bool,
    /// Its size: a frame's announced length, or a message's bytes gathered
    /// so far plus its next frame's. `None` for a message that inflated
    /// past the limit (inflating stops there).
    pub(crate) size: Option<u64>,
    /// The limit it is over.
    pub(crate) limit: usize,
}

impl TooBig {
    /// The limit hit it counts as: frames and messages apart, as the log
    /// line tells them.
    pub(crate) fn limit_hit(self) -> LimitHit {
        if self.frame {
            LimitHit::WsFrameTooBig
        } else {
            LimitHit::WsMessageTooBig
        }
    }

    /// What went over which `WebSocketRoute` setting, for the log line.
    pub(crate) fn over_limit(self) -> OverLimit {
        let (kind, what, setting) = if self.frame {
            (
                Flood::WsFrameTooBig,
                "WebSocket frame",
                "WebSocketRoute::max_frame_bytes",
            )
        } else {
            (
                Flood::WsMessageTooBig,
                "WebSocket message",
                "WebSocketRoute::max_message_bytes",
            )
        };
        OverLimit {
            kind,
            what,
            setting,
            size: self.size,
            limit: self.limit as u64,
        }
    }

    /// A message over `max_message_bytes`.
    fn message(size: Option<u64>, limit: usize) -> Violation {
        Violation::TooBig(TooBig {
            frame: false,
            size,
            limit,
        })
    }
}

impl Violation {
    /// The close code sent for it.
    pub(crate) fn code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::BadUtf8 => 1007,
            Violation::TooBig(_) => 1009,
        }
    }

    /// What went wrong, for the close frame's reason and the log line.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::BadUtf8 => "text is not valid UTF-8",
            Violation::TooBig(TooBig { frame: true, .. }) => "frame over max_frame_bytes",
            Violation::TooBig(TooBig { frame: false, .. }) => "message over max_message_bytes",
        }
    }
}

/// The size limits the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
}

/// A fragmented message being gathered.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// permessage-deflate data, inflated once whole (UTF-8 checked then).
    compressed: bool,
    data: BytesMut,
    /// How much of `data` is known to be valid UTF-8 (text only); the rest
    /// is at most an incomplete character awaiting the next fragment.
    valid: usize,
}

/// The decoder: stateless between messages (a fragmented message in
/// progress is the only state, and it is never parked).
#[derive(Default)]
pub(crate) struct Decoder {
    partial: Option<Partial>,
    /// The worker's codec, when this connection agreed to permessage-deflate.
    codec: Option<Rc<Codec>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("partial", &self.partial)
            .field("deflate", &self.codec.is_some())
            .finish()
    }
}

impl Decoder {
    /// A decoder that takes compressed messages (RSV1), inflated with the
    /// worker's `codec`.
    pub(crate) fn with_deflate(codec: Option<Rc<Codec>>) -> Decoder {
        Decoder {
            partial: None,
            codec,
        }
    }

    /// True between messages (nothing gathered): the connection may park.
    pub(crate) fn between_messages(&self) -> bool {
        self.partial.is_none()
    }

    /// Decodes the next frame from `buf`, consuming it. `Ok(None)`: more
    /// bytes are needed (a fragment that is not the last one is consumed
    /// and gives nothing either; the caller loops until `Ok(None)` with
    /// nothing consumed, see [`Decoder::decode_all`]).
    fn decode_one(&mut self, buf: &mut BytesMut, limits: Limits) -> Result<Step, Violation> {
        let mut cursor = Cursor::new(&buf[..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Step::NeedMore),
            Err(_) => return Err(Violation::Protocol("reserved opcode")),
        };
        let header_len = cursor.position() as usize;
        if header.rsv2 || header.rsv3 || (header.rsv1 && self.codec.is_none()) {
            return Err(Violation::Protocol("reserved bit set without an extension"));
        }
        let compressed = header.rsv1;
        if compressed && !matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary)) {
            return Err(Violation::Protocol(
                "RSV1 on a control frame or a continuation",
            ));
        }
        let Some(mask) = header.mask else {
            return Err(Violation::Protocol("client frames must be masked"));
        };
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final {
                return Err(Violation::Protocol("fragmented control frame"));
            }
            if length > 125 {
                return Err(Violation::Protocol("control frame over 125 bytes"));
            }
        }
        // RFC 6455 §5.2: "the most significant bit MUST be 0" of a 64-bit
        // length. Checked before the limit, so that such a frame closes
        // with 1002 (the peer broke the protocol), not 1009 and a limit hit.
        if length >> 63 != 0 {
            return Err(Violation::Protocol(
                "64-bit frame length with its most significant bit set",
            ));
        }
        if length > limits.max_frame_bytes as u64 {
            return Err(Violation::TooBig(TooBig {
                frame: true,
                size: Some(length),
                limit: limits.max_frame_bytes,
            }));
        }
        let length = length as usize;
        if let OpCode::Data(data) = header.opcode {
            let gathered = match (&self.partial, data) {
                (None, Data::Continue) => {
                    return Err(Violation::Protocol("continuation without a message"))
                }
                (Some(_), Data::Text | Data::Binary) => {
                    return Err(Violation::Protocol("new message inside a fragmented one"))
                }
                (Some(partial), _) => partial.data.len(),
                (None, _) => 0,
            };
            let size = gathered.saturating_add(length);
            if size > limits.max_message_bytes {
                return Err(TooBig::message(Some(size as u64), limits.max_message_bytes));
            }
        }
        let wanted = header_len.saturating_add(length);
        if buf.len() < wanted {
            // The payload is not all here: make room for the next of it, as
            // much as has come so far, at most RESERVE_AHEAD at a time: the
            // length is the peer's word, and a header alone must not cost
            // its memory. (Room for RESERVE_AHEAD at the header moved a
            // woken WebSocket's 8 KiB pooled buffer to 72 KiB: +8 KB
            // resident a connection holding one header, until its message
            // timeout; growing as bytes come, it doubles as a Vec does.)
            let ahead = buf.len().min(RESERVE_AHEAD);
            buf.reserve((wanted - buf.len()).min(ahead));
            return Ok(Step::NeedMore);
        }
        buf.advance(header_len);
        let mut payload = buf.split_to(length);
        unmask(&mut payload, mask);
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Step::Event(Event::Ping(payload.freeze()))),
            OpCode::Control(Control::Pong) => Ok(Step::Event(Event::Pong)),
            OpCode::Control(Control::Close) => close_payload(payload.freeze()).map(Step::Event),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(Violation::Protocol("reserved opcode"))
            }
            OpCode::Data(data) => {
                let max = limits.max_message_bytes;
                self.data(data, header.is_final, compressed, payload, max)
            }
        }
    }

    /// A data frame: a whole message, or a fragment of one.
    fn data(
        &mut self,
        data: Data,
        is_final: bool,
        compressed: bool,
        payload: BytesMut,
        max: usize,
    ) -> Result<Step, Violation> {
        let text = match data {
            Data::Text => true,
            Data::Binary => false,
            _ => {
                let partial = self.partial.as_mut().expect("checked by the caller");
                partial.data.extend_from_slice(&payload);
                if partial.text && !partial.compressed {
                    partial.valid = check_utf8(&partial.data, partial.valid, is_final)?;
                }
                if !is_final {
                    return Ok(Step::Consumed);
                }
                let partial = self.partial.take().expect("just used");
                let payload = self.inflated(partial.compressed, partial.data.freeze(), max)?;
                if partial.text && partial.compressed {
                    check_utf8(&payload, 0, true)?;
                }
                return Ok(Step::Event(Event::Message(message(partial.text, payload))));
            }
        };
        if is_final {
            let payload = self.inflated(compressed, payload.freeze(), max)?;
            if text {
                check_utf8(&payload, 0, true)?;
            }
            return Ok(Step::Event(Event::Message(message(text, payload))));
        }
        // The first fragment: gathered apart from the read buffer, which goes
        // back to the pool between reads.
        let valid = if text && !compressed {
            check_utf8(&payload, 0, false)?
        } else {
            0
        };
        self.partial = Some(Partial {
            text,
            compressed,
            data: BytesMut::from(&payload[..]),
            valid,
        });
        Ok(Step::Consumed)
    }

    /// A whole message's payload, inflated (at most `max` bytes) if it came
    /// compressed.
    fn inflated(&self, compressed: bool, payload: Bytes, max: usize) -> Result<Bytes, Violation> {
        match (&self.codec, compressed) {
            (Some(codec), true) => codec.decompress(&payload, max).map_err(|e| match e {
                InflateError::Corrupt => {
                    Violation::Protocol("compressed data is not valid deflate")
                }
                InflateError::TooBig => TooBig::message(None, max),
            }),
            _ => Ok(payload),
        }
    }

    /// Decodes every frame that is whole in `buf`, up to the first event.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: Limits,
    ) -> Result<Option<Event>, Violation> {
        loop {
            match self.decode_one(buf, limits)? {
                Step::Event(event) => return Ok(Some(event)),
                Step::Consumed => continue,
                Step::NeedMore => return Ok(None),
            }
        }
    }
}

/// One step of decoding.
enum Step {
    Event(Event),
    /// A fragment was gathered; decode on.
    Consumed,
    NeedMore,
}

/// A whole message's payload, already checked.
fn message(text: bool, payload: Bytes) -> WsMessage {
    if text {
        // SAFETY: the caller checked the payload is UTF-8 (`check_utf8`
        // with `is_final`), so the second check `TryFrom` would make is
        // skipped.
        WsMessage::Text(unsafe { Utf8Bytes::from_bytes_unchecked(payload) })
    } else {
        WsMessage::Binary(payload)
    }
}

/// Checks `data[from..]` is UTF-8, allowing an incomplete last character
/// unless the message is final. Returns how far it is valid.
fn check_utf8(data: &[u8], from: usize, is_final: bool) -> Result<usize, Violation> {
    match std::str::from_utf8(&data[from..]) {
        Ok(_) => Ok(data.len()),
        // Cut in the middle of a character: the rest comes with the next
        // fragment.
        Err(e) if e.error_len().is_none() && !is_final => Ok(from + e.valid_up_to()),
        Err(_) => Err(Violation::BadUtf8),
    }
}

/// Reads a close frame's payload (§5.5.1): empty, or a code a peer may send
/// (§7.4) and a UTF-8 reason.
fn close_payload(payload: Bytes) -> Result<Event, Violation> {
    match payload.len() {
        0 => Ok(Event::Close(None)),
        1 => Err(Violation::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !peer_may_send(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            let reason = Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| Violation::BadUtf8)?;
            Ok(Event::Close(Some((code, reason))))
        }
    }
}

/// Whether a close code may appear in a close frame (§7.4.1, §7.4.2): the
/// registered ones except 1004-1006 and 1015 (never sent), and 3000-4999.
/// The same rule holds for both ends (the message layer's, which the hub
/// checks too).
pub(crate) fn peer_may_send(code: u16) -> bool {
    crate::message::hub::close_code_may_be_sent(code)
}

/// Undoes the client's mask (§5.3), in place.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // (tungstenite's word-at-a-time version is private to it.) A word at a
    // time, then the tail: the compiler vectorises the first loop.
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= m;
    }
}

/// The opcodes the server sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Out {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

/// Appends one unmasked, final frame to `out`.
pub(crate) fn encode(out: &mut BytesMut, opcode: Out, payload: &[u8]) {
    encode_frame(out, opcode, payload, false);
}

/// Appends one unmasked, final frame to `out`; `rsv1`: its payload is
/// compressed (permessage-deflate).
pub(crate) fn encode_frame(out: &mut BytesMut, opcode: Out, payload: &[u8], rsv1: bool) {
    let header = FrameHeader {
        is_final: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode: match opcode {
            Out::Text => OpCode::Data(Data::Text),
            Out::Binary => OpCode::Data(Data::Binary),
            Out::Ping => OpCode::Control(Control::Ping),
            Out::Pong => OpCode::Control(Control::Pong),
            Out::Close => OpCode::Control(Control::Close),
        },
        mask: None,
    };
    out.reserve(header.len(payload.len() as u64) + payload.len());
    let mut writer = out.writer();
    header
        .format(payload.len() as u64, &mut writer)
        .expect("writing to memory cannot fail");
    writer.into_inner().put_slice(payload);
}

/// Appends a message frame (compressed with the worker's codec when the
/// connection agreed to permessage-deflate).
pub(crate) fn encode_message(
    out: &mut BytesMut,
    message: &WsMessage,
    deflate: Option<(&Codec, Deflate)>,
) {
    let (opcode, payload) = match message {
        WsMessage::Text(text) => (Out::Text, text.as_bytes()),
        WsMessage::Binary(bytes) => (Out::Binary, &bytes[..]),
    };
    match deflate {
        Some((codec, deflate)) => {
            let mut compressed = Vec::new();
            codec.compress(deflate, payload, &mut compressed);
            encode_frame(out, opcode, &compressed, true);
        }
        None => encode(out, opcode, payload),
    }
}

/// Appends a close frame with `code` and `reason` (cut to fit 125 bytes
/// at a character boundary).
pub(crate) fn encode_close(out: &mut BytesMut, code: u16, reason: &str) {
    let reason = crate::message::hub::close_reason(reason);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(out, Out::Close, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame_bytes: 1 << 20,
        max_message_bytes: 1 << 20,
    };

    /// A client frame: masked with a fixed key.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        while let Some(event) = decoder.decode(&mut buf, LIMITS)? {
            events.push(event);
        }
        Ok(events)
    }

    #[test]
    fn fragments_with_a_ping_between_them() {
        let mut bytes = client(0x01, "héll".as_bytes()[..2].as_ref());
        bytes.extend(client(0x89, b"p"));
        bytes.extend(client(0x00, &"héll".as_bytes()[2..]));
        bytes.extend(client(0x80, b"o"));
        let events = decode_all(&bytes).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Ping(Bytes::from_static(b"p")),
                Event::Message(WsMessage::from("héllo")),
            ]
        );
    }

    #[test]
    fn a_character_split_across_fragments_is_fine_and_a_bad_byte_fails_at_once() {
        let euro = "€".as_bytes();
        let mut bytes = client(0x01, &euro[..1]);
        bytes.extend(client(0x80, &euro[1..]));
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![Event::Message(WsMessage::from("€"))]
        );
        // 0xff is never UTF-8: fails on the first fragment.
        assert_eq!(
            decode_all(&client(0x01, &[b'a', 0xff])),
            Err(Violation::BadUtf8)
        );
        // An incomplete character at the end of the message fails.
        assert_eq!(
            decode_all(&client(0x81, &euro[..2])),
            Err(Violation::BadUtf8)
        );
    }

    #[test]
    fn rule_breakers_get_their_codes() {
        let unmasked = [0x81, 0x01, b'a'];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked.to_vec(), 1002),
            (client(0xC1, b"a"), 1002),       // RSV1
            (client(0x83, b"a"), 1002),       // reserved opcode
            (client(0x80, b"a"), 1002),       // continuation first
            (client(0x09, b"a"), 1002),       // fragmented ping
            (client(0x89, &[0; 126]), 1002),  // long ping
            (client(0x88, &[3]), 1002),       // one-byte close
            (client(0x88, &[3, 0xED]), 1002), // close code 1005
            (client(0x88, &[0x03, 0xE8, 0xff]), 1007),
            ([client(0x01, b"a"), client(0x01, b"b")].concat(), 1002),
            // A 64-bit length with its top bit set (only the header sent).
            (
                [&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 5][..], &[0; 4]].concat(),
                1002,
            ),
        ];
        for (bytes, code) in cases {
            let got = decode_all(&bytes).unwrap_err();
            assert_eq!(got.code(), code, "{bytes:?}: {got:?}");
        }
    }

    #[test]
    fn limits_are_checked_before_the_payload_arrives() {
        let limits = Limits {
            max_frame_bytes: 100,
            max_message_bytes: 150,
        };
        let mut decoder = Decoder::default();
        // Only the header of a 1000-byte frame.
        let mut buf = BytesMut::from(&client(0x82, &[0; 1000])[..8]);
        assert_eq!(
            decoder.decode(&mut buf, limits),
            Err(Violation::TooBig(TooBig {
                frame: true,
                size: Some(1000),
                limit: 100
            }))
        );
        let mut decoder = Decoder::default();
        let mut bytes = client(0x02, &[0; 100]);
        bytes.extend(client(0x80, &[0; 60]));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decoder.decode(&mut buf, limits),
            Err(TooBig::message(Some(160), 150))
        );
    }

    /// A compressed message within the frame limit that inflates past
    /// `max_message_bytes` is over that, its size not known (inflating
    /// stops at the limit).
    #[test]
    fn a_message_inflating_past_the_limit_is_too_big() {
        let codec = Rc::new(Codec::default());
        let mut compressed = Vec::new();
        codec.compress(Deflate { window_bits: 15 }, &[7; 1000], &mut compressed);
        let limits = Limits {
            max_frame_bytes: 100,
            max_message_bytes: 100,
        };
        assert!(compressed.len() <= 100, "{}", compressed.len());
        let mut decoder = Decoder::with_deflate(Some(codec));
        let mut buf = BytesMut::from(&client(0xC2, &compressed)[..]);
        assert_eq!(
            decoder.decode(&mut buf, limits),
            Err(TooBig::message(None, 100))
        );
    }

    #[test]
    fn a_frame_in_pieces_waits_for_the_rest() {
        let bytes = client(0x82, &[7; 300]);
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        for (i, piece) in bytes.chunks(50).enumerate() {
            buf.extend_from_slice(piece);
            let got = decoder.decode(&mut buf, LIMITS).unwrap();
            if i + 1 < bytes.len().div_ceil(50) {
                assert_eq!(got, None);
            } else {
                assert_eq!(
                    got,
                    Some(Event::Message(WsMessage::Binary(vec![7; 300].into())))
                );
            }
        }
        assert!(buf.is_empty());
    }

    /// A header alone announcing 2^62 bytes, under a limit of usize::MAX:
    /// the decoder waits for more without reserving what was announced (it
    /// once did, and a reservation that size panics or aborts).
    #[test]
    fn a_huge_announced_length_reserves_only_a_little() {
        let limits = Limits {
            max_frame_bytes: usize::MAX,
            max_message_bytes: usize::MAX,
        };
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(decoder.decode(&mut buf, limits), Ok(None));
        assert_eq!(buf.len(), header.len(), "nothing consumed");
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
    }

    /// A header announcing 16 MiB, in a connection's pooled read buffer,
    /// leaves the buffer as it is: room for the payload comes with the
    /// payload (it was RESERVE_AHEAD at once: 8 KiB became 72).
    #[test]
    fn a_header_alone_does_not_grow_a_pooled_buffer() {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(16u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let mut buf = BytesMut::with_capacity(crate::conn::pool::BUFFER_CAPACITY);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&[0; 100]);
        let capacity = buf.capacity();
        let limits = Limits {
            max_frame_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
        };
        assert_eq!(Decoder::default().decode(&mut buf, limits), Ok(None));
        assert_eq!(buf.capacity(), capacity);
    }

    /// A frame much larger than RESERVE_AHEAD, arriving in reads of 16 KiB,
    /// still decodes whole, its room growing as it comes.
    #[test]
    fn a_large_frame_arriving_in_pieces_decodes() {
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let bytes = client(0x82, &payload);
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for piece in bytes.chunks(16 * 1024) {
            assert_eq!(got, None, "the frame decodes only when all is here");
            buf.extend_from_slice(piece);
            got = decoder.decode(&mut buf, LIMITS).unwrap();
        }
        assert_eq!(got, Some(Event::Message(WsMessage::Binary(payload.into()))));
        assert!(buf.is_empty());
    }

    #[test]
    fn server_frames_round_trip_through_the_header_parser() {
        let mut out = BytesMut::new();
        encode(&mut out, Out::Text, &[b'x'; 70_000]);
        let (header, length) = FrameHeader::parse(&mut Cursor::new(&out[..]))
            .unwrap()
            .unwrap();
        assert_eq!(length, 70_000);
        assert!(header.mask.is_none() && header.is_final);
        let mut out = BytesMut::new();
        encode_close(&mut out, 1001, &"é".repeat(100));
        assert_eq!(out.len(), 2 + 125 - 1, "cut at a character boundary");
    }

    /// RSV2 and RSV3 each fail the connection on their own (no extension
    /// defines them), and RSV1 does on a control frame or a continuation even
    /// when permessage-deflate was agreed (it marks a message's first frame).
    #[test]
    fn reserved_bits_are_refused_one_by_one() {
        for first in [0xA1, 0x91] {
            assert_eq!(
                decode_all(&client(first, b"a")),
                Err(Violation::Protocol("reserved bit set without an extension")),
                "{first:#x}"
            );
        }
        let rsv1_misplaced = [
            client(0xC9, b"p"),
            [client(0x01, b"a"), client(0xC0, b"b")].concat(),
        ];
        for bytes in rsv1_misplaced {
            let mut decoder = Decoder::with_deflate(Some(Rc::new(Codec::default())));
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                decoder.decode(&mut buf, LIMITS),
                Err(Violation::Protocol(
                    "RSV1 on a control frame or a continuation"
                )),
                "{bytes:?}"
            );
        }
    }

    /// Each limit is inclusive: a control frame of 125 bytes, a frame of
    /// `max_frame_bytes` and a message of `max_message_bytes` all pass.
    #[test]
    fn limits_are_inclusive() {
        assert_eq!(
            decode_all(&client(0x89, &[9; 125])),
            Ok(vec![Event::Ping(Bytes::from(vec![9; 125]))])
        );
        let limits = Limits {
            max_frame_bytes: 100,
            max_message_bytes: 150,
        };
        let mut bytes = client(0x02, &[1; 100]);
        bytes.extend(client(0x80, &[2; 50]));
        let mut buf = BytesMut::from(&bytes[..]);
        let want = [vec![1; 100], vec![2; 50]].concat();
        assert_eq!(
            Decoder::default().decode(&mut buf, limits),
            Ok(Some(Event::Message(WsMessage::Binary(want.into()))))
        );
    }

    /// Only text is checked for UTF-8: a fragmented binary message of bytes
    /// that are not UTF-8 passes whole.
    #[test]
    fn fragmented_binary_is_not_checked_for_utf8() {
        let mut bytes = client(0x02, &[0xff, 0xc3]);
        bytes.extend(client(0x00, &[0xfe]));
        bytes.extend(client(0x80, &[0x80, 0xff]));
        assert_eq!(
            decode_all(&bytes),
            Ok(vec![Event::Message(WsMessage::Binary(Bytes::from_static(
                &[0xff, 0xc3, 0xfe, 0x80, 0xff]
            )))])
        );
    }

    /// A bad byte in a continuation fails as soon as that fragment comes,
    /// not at the end of the message (the last fragment never comes here),
    /// and a bad last fragment fails the message.
    #[test]
    fn a_bad_byte_in_a_continuation_fails_at_once() {
        let mut bytes = client(0x01, b"ok");
        bytes.extend(client(0x00, &[b'a', 0xff]));
        assert_eq!(decode_all(&bytes), Err(Violation::BadUtf8));
        let mut bytes = client(0x01, b"ok");
        bytes.extend(client(0x80, &[0xff]));
        assert_eq!(decode_all(&bytes), Err(Violation::BadUtf8));
    }

    /// A character cut at the end of each of several fragments: how far the
    /// text is known valid moves on fragment by fragment (past whole
    /// characters that came after an earlier cut one), and the message is
    /// whole at the end.
    #[test]
    fn characters_cut_in_several_fragments() {
        let mut bytes = client(0x01, b"ab\xe2");
        bytes.extend(client(0x00, b"\x82\xacxyz\xe2"));
        bytes.extend(client(0x00, b"\x82"));
        bytes.extend(client(0x80, b"\xac!"));
        assert_eq!(
            decode_all(&bytes),
            Ok(vec![Event::Message(WsMessage::from("ab€xyz€!"))])
        );
    }

    /// A close frame with nothing, and one with a code and a reason.
    #[test]
    fn close_frames_give_their_code_and_reason() {
        assert_eq!(decode_all(&client(0x88, b"")), Ok(vec![Event::Close(None)]));
        assert_eq!(
            decode_all(&client(0x88, b"\x03\xe8bye")),
            Ok(vec![Event::Close(Some((
                1000,
                Utf8Bytes::from_static("bye")
            )))])
        );
    }

    /// What RFC 6455 says a close frame must not be fails the connection
    /// with its code: a one-byte payload (§5.5.1: a code is two bytes) or
    /// a payload over 125 bytes (§5.5, every control frame) with 1002; a
    /// reason not UTF-8 (§5.5.1, §8.1) with 1007; a code no close frame
    /// may carry (§7.4.1, §7.4.2: 1004-1006 and 1015 are never sent, 0-999
    /// are not used, 1016-2999 are the protocol's, and 5000 and up are not
    /// defined) with 1002. Every code a peer may send is taken (the
    /// registered ones, 1014 among them, and 3000-4999), an empty reason
    /// and one of 123 bytes alike.
    #[test]
    fn a_close_frame_that_breaks_a_must_fails_with_its_code() {
        let with = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
        let failed = |payload: &[u8]| {
            let violation = decode_all(&client(0x88, payload)).unwrap_err();
            violation.code()
        };
        assert_eq!(failed(b"\x03"), 1002, "one byte");
        assert_eq!(failed(&with(1000, &[b'a'; 124])), 1002, "126 bytes");
        assert_eq!(failed(&with(1000, b"ok \xff")), 1007, "bad UTF-8");
        assert_eq!(failed(&with(1000, "é".as_bytes()[..1].as_ref())), 1007);
        let refused = [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            1100,
            2000,
            2999,
            5000,
            u16::MAX,
        ];
        for code in refused {
            assert_eq!(failed(&with(code, b"")), 1002, "{code}");
        }
        let taken = (1000..=1003)
            .chain(1007..=1014)
            .chain([3000, 3999, 4000, 4999]);
        for code in taken {
            for reason in ["", &"a".repeat(123)] {
                let payload = with(code, reason.as_bytes());
                let close = Event::Close(Some((code, Utf8Bytes::from(reason))));
                assert_eq!(decode_all(&client(0x88, &payload)), Ok(vec![close]));
            }
        }
    }

    /// The decoder is between messages until a fragmented message starts,
    /// and again once it ends (only then may the connection park).
    #[test]
    fn between_messages_only_outside_a_fragmented_message() {
        let mut decoder = Decoder::default();
        assert!(decoder.between_messages());
        let mut buf = BytesMut::from(&client(0x01, b"he")[..]);
        assert_eq!(decoder.decode(&mut buf, LIMITS), Ok(None));
        assert!(!decoder.between_messages());
        buf.extend_from_slice(&client(0x80, b"y"));
        assert_eq!(
            decoder.decode(&mut buf, LIMITS),
            Ok(Some(Event::Message(WsMessage::from("hey"))))
        );
        assert!(decoder.between_messages());
    }

    /// A frame still arriving gets room for what is missing, up to as much
    /// as came: none more when it fits in the buffer it is in, and at least
    /// that when it does not (so the next read need not grow it again).
    #[test]
    fn a_frame_still_arriving_gets_room_for_the_rest() {
        let bytes = client(0x82, &[5; 1000]);
        // Fits: the buffer is the frame's size, and 600 bytes are in.
        let mut buf = BytesMut::with_capacity(bytes.len());
        buf.extend_from_slice(&bytes[..600]);
        assert_eq!(Decoder::default().decode(&mut buf, LIMITS), Ok(None));
        assert_eq!(buf.capacity(), bytes.len());
        // Does not fit: room for the 400 missing bytes.
        let mut buf = BytesMut::with_capacity(700);
        buf.extend_from_slice(&bytes[..600]);
        assert_eq!(Decoder::default().decode(&mut buf, LIMITS), Ok(None));
        assert!(buf.capacity() >= bytes.len(), "{}", buf.capacity());
    }

    /// A message's bytes are its payload, text as UTF-8.
    #[test]
    fn a_message_s_bytes_are_its_payload() {
        assert_eq!(WsMessage::from("hé").as_bytes(), "hé".as_bytes());
        assert_eq!(WsMessage::from(String::from("x")).as_bytes(), b"x");
        let binary = WsMessage::from(Bytes::from_static(&[0, 0xff]));
        assert_eq!(binary.as_bytes(), [0, 0xff]);
    }

    /// A violation closes with its code, and its close reason (and log
    /// line) says which rule was broken; a size limit's log line names the
    /// `WebSocketRoute` setting to raise.
    #[test]
    fn violations_say_what_broke() {
        let limits = Limits {
            max_frame_bytes: 10,
            max_message_bytes: 15,
        };
        let decode = |bytes: &[u8]| Decoder::default().decode(&mut BytesMut::from(bytes), limits);
        let cases = [
            (
                decode(&[0x81, 0x01, b'a']),
                1002,
                "client frames must be masked",
            ),
            (
                decode(&client(0x81, &[0xff])),
                1007,
                "text is not valid UTF-8",
            ),
            (
                decode(&client(0x82, &[0; 11])),
                1009,
                "frame over max_frame_bytes",
            ),
            (
                decode(&[client(0x02, &[0; 10]), client(0x80, &[0; 10])].concat()),
                1009,
                "message over max_message_bytes",
            ),
        ];
        for (got, code, reason) in cases {
            let violation = got.unwrap_err();
            assert_eq!((violation.code(), violation.reason()), (code, reason));
        }
        let Err(Violation::TooBig(frame)) = decode(&client(0x82, &[0; 11])) else {
            panic!("a frame over the limit");
        };
        assert_eq!(frame.limit_hit(), LimitHit::WsFrameTooBig);
        assert_eq!(
            frame.over_limit().setting,
            "WebSocketRoute::max_frame_bytes"
        );
        let message = TooBig {
            frame: false,
            ..frame
        };
        assert_eq!(message.limit_hit(), LimitHit::WsMessageTooBig);
        assert_eq!(
            message.over_limit().setting,
            "WebSocketRoute::max_message_bytes"
        );
    }

    /// A message goes out as one final frame: as it is, or, when
    /// permessage-deflate was agreed, compressed with RSV1 set (and inflating
    /// the payload gives the message back).
    #[test]
    fn messages_go_out_plain_or_compressed() {
        let text = WsMessage::from("hello hello hello");
        let mut out = BytesMut::new();
        encode_message(&mut out, &text, None);
        let mut plain = BytesMut::new();
        encode(&mut plain, Out::Text, b"hello hello hello");
        assert_eq!(out, plain);

        let codec = Codec::default();
        let binary = WsMessage::Binary(Bytes::from(vec![7; 1000]));
        let mut out = BytesMut::new();
        encode_message(
            &mut out,
            &binary,
            Some((&codec, Deflate { window_bits: 15 })),
        );
        let mut cursor = Cursor::new(&out[..]);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert!(header.is_final && header.rsv1 && header.mask.is_none());
        assert_eq!(header.opcode, OpCode::Data(Data::Binary));
        let payload = &out[cursor.position() as usize..];
        assert_eq!(payload.len() as u64, length);
        assert!(payload.len() < 1000, "{} bytes", payload.len());
        assert_eq!(
            codec.decompress(payload, 1000),
            Ok(binary.as_bytes().to_vec().into())
        );
    }

    /// A frame is written into room reserved once for all of it: a write
    /// buffer is not left larger than the frames it holds need.
    #[test]
    fn a_frame_reserves_its_own_size() {
        let mut out = BytesMut::new();
        encode(&mut out, Out::Binary, &[1; 200]);
        assert_eq!(out.len(), 4 + 200, "a 16-bit length");
        assert!(out.capacity() < 2 * out.len(), "{}", out.capacity());
    }
}
