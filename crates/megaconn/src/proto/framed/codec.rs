//! Framing: where one message ends and the next begins. Owns [`Framing`] (the
//! public description of a listener's framing) and [`FrameCodec`] (the
//! decoder and encoder a connection uses while it is awake).
//!
//! The line codec is tokio-util's ([`LinesCodec`]), and so is the
//! length-prefixed encoder ([`LengthDelimitedCodec`]); length headers are
//! decoded here ([`LengthDecoder`]): tokio-util's decoder reserves the whole
//! frame a header announces as soon as it reads the header, so a peer that
//! sent a header and a byte held `max_frame_bytes` of memory per connection
//! until `message_timeout`. The two directions have their own bounds
//! ([`Framing::max_inbound_frame_bytes`], judged by the decoder, and
//! [`Framing::max_outbound_frame_bytes`], by the encoder). This module also maps the codecs' errors to a
//! [`FramingError`] close reason (and a limit's to what went over it, for
//! the log line: [`FrameCodec::over_limit`]), and knows whether the codec is
//! between frames, which decides whether a connection may park. That is not
//! the same as "the buffer is empty": a header is consumed as soon as it is
//! whole, and its body waited for with an empty buffer.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LinesCodec, LinesCodecError};

use crate::observe::close::FramingError;
use crate::observe::ratelog::{Flood, OverLimit};

/// Default largest frame body of length-prefixed framing: 64 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Default longest line of line framing, without its line ending: 8 KiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024;

/// The least room a frame still arriving is given past what is in hand (a
/// pooled buffer has it already). Past that, its room grows with what
/// arrived (doubling as it comes), never to what a header alone announces:
/// the length is the peer's word.
const RESERVE_AT_LEAST: usize = 4 * 1024;

/// How a framed listener splits its byte stream into messages. Fixed per
/// listener at bind time ([`Builder::listen_framed_on`](crate::Builder::listen_framed_on)).
///
/// ```
/// use megaconn::Framing;
/// // A 2-byte little-endian length header that counts itself, frames up to 4 KiB.
/// let framing = Framing::length_prefixed(2)
///     .little_endian()
///     .length_adjustment(-2)
///     .max_frame_bytes(4096);
/// // Devices send frames of at most 1 KiB and are sent up to 512 KiB
/// // (firmware chunks).
/// let gateway = Framing::length_prefixed(4)
///     .max_inbound_frame_bytes(1024)
///     .max_outbound_frame_bytes(512 * 1024);
/// assert_eq!(gateway.max_reply_bytes(), 512 * 1024);
/// // Text lines ending in `\n` or `\r\n`; replies end in `\r\n`.
/// let lines = Framing::lines().max_line_bytes(1024).crlf();
/// # let _ = (framing, lines, gateway);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Length {
        header_bytes: usize,
        big_endian: bool,
        adjustment: isize,
        /// The largest frame the peer may send
        /// ([`Framing::max_inbound_frame_bytes`]).
        max_inbound: usize,
        /// The largest frame the server sends
        /// ([`Framing::max_outbound_frame_bytes`]).
        max_outbound: usize,
    },
    Lines {
        max_line_bytes: usize,
        /// The longest line the server sends, without its ending.
        max_outbound: usize,
        crlf: bool,
    },
}

impl Framing {
    /// Each frame is a length header of `header_bytes` (1, 2, 4 or 8) bytes,
    /// big endian, then that many bytes of body. Defaults: no length
    /// adjustment, [`DEFAULT_MAX_FRAME_BYTES`].
    ///
    /// # Panics
    /// If `header_bytes` is not 1, 2, 4 or 8 (a programming error, caught on
    /// the first run).
    pub fn length_prefixed(header_bytes: usize) -> Framing {
        assert!(
            matches!(header_bytes, 1 | 2 | 4 | 8),
            "a length header is 1, 2, 4 or 8 bytes, not {header_bytes}"
        );
        Framing {
            kind: Kind::Length {
                header_bytes,
                big_endian: true,
                adjustment: 0,
                max_inbound: DEFAULT_MAX_FRAME_BYTES,
                max_outbound: DEFAULT_MAX_FRAME_BYTES,
            },
        }
    }

    /// Each frame is a line of UTF-8 text ending in `\n` or `\r\n` (the ending
    /// is not part of the frame). Replies end in `\n` (see
    /// [`crlf`](Framing::crlf)). Default longest line: [`DEFAULT_MAX_LINE_BYTES`].
    pub fn lines() -> Framing {
        Framing {
            kind: Kind::Lines {
                max_line_bytes: DEFAULT_MAX_LINE_BYTES,
                max_outbound: usize::MAX,
                crlf: false,
            },
        }
    }

    /// Length-prefixed: the header is little endian. No effect on lines.
    pub fn little_endian(mut self) -> Framing {
        if let Kind::Length { big_endian, .. } = &mut self.kind {
            *big_endian = false;
        }
        self
    }

    /// Length-prefixed: added to the header's value to get the body length
    /// (`-4` for a 4-byte header that counts itself). No effect on lines.
    pub fn length_adjustment(mut self, n: isize) -> Framing {
        if let Kind::Length { adjustment, .. } = &mut self.kind {
            *adjustment = n;
        }
        self
    }

    /// Length-prefixed: the largest frame either way, what the peer sends
    /// ([`max_inbound_frame_bytes`](Framing::max_inbound_frame_bytes)) and
    /// what the server sends
    /// ([`max_outbound_frame_bytes`](Framing::max_outbound_frame_bytes)),
    /// for a symmetric protocol; the later call of the three wins for its
    /// direction. Default [`DEFAULT_MAX_FRAME_BYTES`] both ways. No effect
    /// on lines.
    pub fn max_frame_bytes(self, n: usize) -> Framing {
        self.max_inbound_frame_bytes(n).max_outbound_frame_bytes(n)
    }

    /// Length-prefixed: the largest header value the peer may send; a
    /// larger one closes the connection with
    /// [`FramingError::FrameTooLarge`] before any of the body is read,
    /// counted in `megaconn_limit_hits_total{limit="framed_max_frame_bytes"}`
    /// and logged (a line per interval). Clipped to what the header can
    /// express. What the server sends is bounded apart
    /// ([`max_outbound_frame_bytes`](Framing::max_outbound_frame_bytes)):
    /// devices that send telemetry of a few hundred bytes and receive
    /// firmware in chunks of hundreds of KiB get a tight bound here and a
    /// large one there. A frame still arriving holds what came of it, not
    /// what its header announces, so the bound is what one peer can make
    /// its connection hold. Default [`DEFAULT_MAX_FRAME_BYTES`]. No effect
    /// on lines ([`max_line_bytes`](Framing::max_line_bytes)).
    pub fn max_inbound_frame_bytes(mut self, n: usize) -> Framing {
        if let Kind::Length { max_inbound, .. } = &mut self.kind {
            *max_inbound = n;
        }
        self
    }

    /// The largest frame (length-prefixed: body; lines: line without its
    /// ending) the server sends on this listener: a handler's reply or
    /// [`Session::send`](crate::Session::send), a hub's push. Over it, the
    /// frame is not sent, and the sender hears of it:
    /// - [`Hub::send`](crate::Hub::send), `publish` and `broadcast` return
    ///   [`HubError::TooLarge`](crate::HubError::TooLarge) at the call when
    ///   no message connection of the server could carry it (a server
    ///   whose listeners are all framed: over the largest of their
    ///   outbound bounds); one that some connections can carry and this
    ///   listener's cannot is dropped for this listener's connections when
    ///   their worker delivers it, counted once per connection in
    ///   `megaconn_limit_hits_total{limit="push_unframable"}` and logged
    ///   (a warning, a line per interval);
    /// - a reply or [`Session::send`](crate::Session::send) closes the
    ///   connection as [`CloseReason::ServerError`](crate::CloseReason::ServerError)
    ///   (the handler's `on_close` hears it), counted in the same
    ///   `push_unframable` and logged: a handler that may send more checks
    ///   [`max_reply_bytes`](Framing::max_reply_bytes) first.
    ///
    /// Clipped to what a length header can express after its adjustment.
    /// Default: [`DEFAULT_MAX_FRAME_BYTES`] for length-prefixed framing
    /// (as [`max_frame_bytes`](Framing::max_frame_bytes) sets it), none
    /// for lines.
    pub fn max_outbound_frame_bytes(mut self, n: usize) -> Framing {
        match &mut self.kind {
            Kind::Length { max_outbound, .. } | Kind::Lines { max_outbound, .. } => {
                *max_outbound = n;
            }
        }
        self
    }

    /// Lines: the longest line, without its ending; a longer one closes the
    /// connection with [`FramingError::LineTooLong`]. No effect on
    /// length-prefixed framing.
    pub fn max_line_bytes(mut self, n: usize) -> Framing {
        if let Kind::Lines { max_line_bytes, .. } = &mut self.kind {
            *max_line_bytes = n;
        }
        self
    }

    /// Lines: replies end in `\r\n` instead of `\n` (telnet-style
    /// protocols). No effect on length-prefixed framing.
    pub fn crlf(mut self) -> Framing {
        if let Kind::Lines { crlf, .. } = &mut self.kind {
            *crlf = true;
        }
        self
    }

    /// The largest frame the server may send on this listener (a reply, a
    /// push): [`max_outbound_frame_bytes`](Framing::max_outbound_frame_bytes),
    /// clipped, length-prefixed, to what the header can say after its
    /// adjustment (a larger frame cannot be framed: see
    /// `max_outbound_frame_bytes` for what its sender hears); lines, no
    /// limit (`usize::MAX`) unless `max_outbound_frame_bytes` set one.
    pub fn max_reply_bytes(&self) -> usize {
        match self.kind {
            Kind::Length {
                header_bytes,
                adjustment,
                max_outbound,
                ..
            } => header_max(header_bytes, adjustment).min(max_outbound as u64) as usize,
            Kind::Lines { max_outbound, .. } => max_outbound,
        }
    }

    /// A fresh codec for one awake connection.
    pub(crate) fn codec(&self) -> FrameCodec {
        let inner = match self.kind {
            Kind::Length {
                header_bytes,
                big_endian,
                adjustment,
                max_inbound,
                max_outbound,
            } => {
                // The encoder's limit is the outbound one (its decoder is
                // not used: `LengthDecoder` judges the inbound limit).
                let mut builder = LengthDelimitedCodec::builder();
                builder
                    .length_field_length(header_bytes)
                    .length_adjustment(adjustment)
                    .max_frame_length(max_outbound);
                if big_endian {
                    builder.big_endian();
                } else {
                    builder.little_endian();
                }
                let header_max = header_max(header_bytes, adjustment);
                // What a frame over `max` is over, for the log line: raising
                // the inbound bound does nothing past the header's reach.
                let setting = if header_max < max_inbound as u64 {
                    header_setting(header_bytes)
                } else {
                    INBOUND_SETTING
                };
                Inner::Length {
                    encoder: builder.new_codec(),
                    decoder: LengthDecoder {
                        header_bytes,
                        big_endian,
                        adjustment,
                        max: header_max.min(max_inbound as u64),
                        setting,
                        body: None,
                    },
                }
            }
            Kind::Lines {
                max_line_bytes,
                max_outbound,
                crlf,
            } => Inner::Lines {
                // One byte more than the limit: `LinesCodec` counts a `\r`
                // before the `\n` against it, and a `\r\n` line of exactly
                // `max_line_bytes` would fail. `decode` checks the limit on
                // the line without its ending.
                codec: LinesCodec::new_with_max_length(max_line_bytes.saturating_add(1)),
                max: max_line_bytes,
                max_outbound,
                crlf,
                too_long: None,
            },
        };
        FrameCodec { inner }
    }
}

/// The largest body length a length header of `header_bytes` can say
/// (with its adjustment), as tokio-util's encoder and our decoder clip it.
fn header_max(header_bytes: usize, adjustment: isize) -> u64 {
    let expressible = match header_bytes {
        8 => u64::MAX,
        n => (1u64 << (8 * n)) - 1,
    };
    expressible.saturating_add_signed(adjustment as i64)
}

/// One awake connection's decoder and encoder. Dropped when the connection
/// parks (it holds nothing then: parking happens only between frames).
#[derive(Debug)]
pub(crate) struct FrameCodec {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Length {
        /// Frames replies (decoding is `decoder`'s: see the module docs).
        encoder: LengthDelimitedCodec,
        decoder: LengthDecoder,
    },
    Lines {
        codec: LinesCodec,
        /// The longest line the peer may send, without its ending.
        max: usize,
        /// The longest line the server sends, without its ending.
        max_outbound: usize,
        crlf: bool,
        /// The length of a whole line refused as over `max`, for the log
        /// line (one cut short by `codec` has none: it was thrown away).
        too_long: Option<usize>,
    },
}

impl FrameCodec {
    /// The next whole frame in `buf`, if there is one; consumes it.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        match &mut self.inner {
            Inner::Length { decoder, .. } => decoder.decode(buf),
            Inner::Lines {
                codec,
                max,
                too_long,
                ..
            } => match codec.decode(buf) {
                Ok(Some(line)) if line.len() > *max => {
                    *too_long = Some(line.len());
                    Err(FramingError::LineTooLong)
                }
                // The line's `String` becomes `Bytes` without a copy.
                Ok(line) => Ok(line.map(Bytes::from)),
                Err(LinesCodecError::MaxLineLengthExceeded) => Err(FramingError::LineTooLong),
                Err(LinesCodecError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    Err(FramingError::NotUtf8)
                }
                Err(LinesCodecError::Io(_)) => Err(FramingError::BadHeader),
            },
        }
    }

    /// What `error`, from [`decode`](Self::decode) on `buf`, was over if it
    /// was a limit (not malformed input). Only on the rejection path: a
    /// refused header is still at the front of `buf`, and read again.
    pub(crate) fn over_limit(&self, error: FramingError, buf: &[u8]) -> Option<OverLimit> {
        match (&self.inner, error) {
            (Inner::Length { decoder, .. }, FramingError::FrameTooLarge) => Some(OverLimit {
                kind: Flood::FramedFrameTooBig,
                what: "framed TCP frame",
                setting: decoder.setting,
                size: decoder.header_value(buf),
                limit: decoder.max,
            }),
            (Inner::Lines { max, too_long, .. }, FramingError::LineTooLong) => Some(OverLimit {
                kind: Flood::FramedLineTooLong,
                what: "framed TCP line",
                setting: "Framing::max_line_bytes",
                size: too_long.map(|n| n as u64),
                limit: *max as u64,
            }),
            _ => None,
        }
    }

    /// True between frames: nothing of a frame has been read, given what is
    /// left in `buf`. Only then may the connection park.
    pub(crate) fn between_frames(&self, buf: &[u8]) -> bool {
        let in_frame =
            matches!(&self.inner, Inner::Length { decoder, .. } if decoder.body.is_some());
        !in_frame && buf.is_empty()
    }

    /// Appends `frame`, framed, to `out`. Fails when the frame cannot be
    /// expressed: too long for the header or `max_outbound_frame_bytes`, or
    /// a line that is not UTF-8 or holds a newline (it would read as two
    /// frames).
    pub(crate) fn encode(&mut self, frame: Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        match &mut self.inner {
            Inner::Length { encoder, .. } => {
                encoder.encode(frame, out).map_err(|e| length_error(&e))
            }
            Inner::Lines {
                crlf, max_outbound, ..
            } => {
                if frame.len() > *max_outbound {
                    return Err(FramingError::LineTooLong);
                }
                if std::str::from_utf8(&frame).is_err() {
                    return Err(FramingError::NotUtf8);
                }
                if frame.contains(&b'\n') {
                    return Err(FramingError::BadHeader);
                }
                out.extend_from_slice(&frame);
                out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                Ok(())
            }
        }
    }
}

/// Decodes length-prefixed frames as tokio-util's `LengthDelimitedCodec`
/// does (same limits, same errors), but gives a frame still arriving room as
/// its bytes come ([`RESERVE_AT_LEAST`]), not what its header announces.
#[derive(Debug)]
struct LengthDecoder {
    header_bytes: usize,
    big_endian: bool,
    adjustment: isize,
    /// The largest header value accepted (before the adjustment).
    max: u64,
    /// What limits `max`: `Framing::max_inbound_frame_bytes`, or the header's
    /// width with the adjustment ([`header_setting`]) when that says less.
    setting: &'static str,
    /// The body length of the frame whose header was consumed, until the
    /// body is all here.
    body: Option<usize>,
}

impl LengthDecoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        let n = match self.body {
            Some(n) => n,
            None => {
                let Some(value) = self.header_value(buf) else {
                    return Ok(None);
                };
                // Refused before any of the body is read.
                if value > self.max {
                    return Err(FramingError::FrameTooLarge);
                }
                // A header less than the adjustment takes away.
                let n = usize::try_from(value)
                    .ok()
                    .and_then(|v| v.checked_add_signed(self.adjustment))
                    .ok_or(FramingError::BadHeader)?;
                buf.advance(self.header_bytes);
                self.body = Some(n);
                n
            }
        };
        if buf.len() < n {
            let missing = n - buf.len();
            buf.reserve(missing.min(buf.len().max(RESERVE_AT_LEAST)));
            return Ok(None);
        }
        self.body = None;
        Ok(Some(buf.split_to(n).freeze()))
    }

    /// The value of the length header at the front of `buf`, once whole.
    fn header_value(&self, buf: &[u8]) -> Option<u64> {
        let mut header = buf.get(..self.header_bytes)?;
        Some(if self.big_endian {
            header.get_uint(self.header_bytes)
        } else {
            header.get_uint_le(self.header_bytes)
        })
    }
}

/// The setting a frame over the inbound bound names in its log line.
const INBOUND_SETTING: &str = "Framing::max_inbound_frame_bytes (or max_frame_bytes)";

/// What limits a length header of `header_bytes` whose largest value,
/// adjusted, is below `max_inbound_frame_bytes`, for the log line of a
/// frame over it: the header's width and the adjustment, not that setting.
fn header_setting(header_bytes: usize) -> &'static str {
    match header_bytes {
        1 => "what a 1-byte length header (Framing::length_prefixed(1)) can say after Framing::length_adjustment",
        2 => "what a 2-byte length header (Framing::length_prefixed(2)) can say after Framing::length_adjustment",
        4 => "what a 4-byte length header (Framing::length_prefixed(4)) can say after Framing::length_adjustment",
        _ => "what an 8-byte length header (Framing::length_prefixed(8)) can say after Framing::length_adjustment",
    }
}

/// `LengthDelimitedCodec` reports a frame over the limit as `InvalidInput`
/// with its own error type when encoding; anything else it refuses is a
/// header it cannot write.
fn length_error(e: &io::Error) -> FramingError {
    let too_large = e
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>());
    if too_large {
        FramingError::FrameTooLarge
    } else {
        FramingError::BadHeader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` delivered in the chunks given by `cuts` (positions),
    /// as reads would deliver it.
    fn decode_in_pieces(
        framing: Framing,
        wire: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<Bytes>, FramingError> {
        let mut codec = framing.codec();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
            buf.extend_from_slice(&wire[start..end]);
            start = end;
            while let Some(frame) = codec.decode(&mut buf)? {
                frames.push(frame);
            }
        }
        assert!(
            codec.between_frames(&buf),
            "whole frames leave the codec between frames"
        );
        Ok(frames)
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_with_either_ending_and_one_more_byte_fails() {
        for ending in [&b"\n"[..], b"\r\n"] {
            let line = [&b"01234567"[..], ending].concat();
            let whole = decode_in_pieces(Framing::lines().max_line_bytes(8), &line, &[]);
            assert_eq!(whole, Ok(vec![Bytes::from("01234567")]), "{ending:?}");
            let split = decode_in_pieces(Framing::lines().max_line_bytes(8), &line, &[3, 8, 9]);
            assert_eq!(split, Ok(vec![Bytes::from("01234567")]), "{ending:?}");
            let longer = [&b"012345678"[..], ending].concat();
            let too_long = decode_in_pieces(Framing::lines().max_line_bytes(8), &longer, &[]);
            assert_eq!(too_long, Err(FramingError::LineTooLong), "{ending:?}");
        }
    }

    fn encode_all(framing: Framing, frames: &[&[u8]]) -> Vec<u8> {
        let mut codec = framing.codec();
        let mut out = BytesMut::new();
        for f in frames {
            codec.encode(Bytes::copy_from_slice(f), &mut out).unwrap();
        }
        out.to_vec()
    }

    fn framings() -> Vec<Framing> {
        let mut all = Vec::new();
        for header in [1, 2, 4, 8] {
            all.push(Framing::length_prefixed(header));
            all.push(Framing::length_prefixed(header).little_endian());
            all.push(
                Framing::length_prefixed(header)
                    .length_adjustment(-(header as isize))
                    .little_endian(),
            );
        }
        all
    }

    const MESSAGES: [&[u8]; 4] = [
        b"hello",
        b"",
        b"a longer message, with bytes \x00\xff",
        b"x",
    ];

    /// Every framing decodes what it encodes, whatever the split: at every
    /// single byte boundary, and all frames in one read (sticky packets).
    #[test]
    fn length_prefixed_frames_decode_at_every_split_point() {
        for framing in framings() {
            let wire = encode_all(framing, &MESSAGES);
            let want: Vec<Bytes> = MESSAGES.iter().map(|m| Bytes::from_static(m)).collect();
            assert_eq!(
                decode_in_pieces(framing, &wire, &[]).unwrap(),
                want,
                "{framing:?}: one read"
            );
            for cut in 0..=wire.len() {
                assert_eq!(
                    decode_in_pieces(framing, &wire, &[cut]).unwrap(),
                    want,
                    "{framing:?}: split at {cut}"
                );
            }
            let every: Vec<usize> = (1..wire.len()).collect();
            assert_eq!(
                decode_in_pieces(framing, &wire, &every).unwrap(),
                want,
                "{framing:?}: byte by byte"
            );
        }
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        assert_eq!(
            encode_all(Framing::length_prefixed(2), &[b"abc"]),
            b"\x00\x03abc"
        );
        assert_eq!(
            encode_all(Framing::length_prefixed(4).little_endian(), &[b"abc"]),
            b"\x03\x00\x00\x00abc"
        );
        // A header that counts itself.
        assert_eq!(
            encode_all(Framing::length_prefixed(1).length_adjustment(-1), &[b"abc"]),
            b"\x04abc"
        );
        assert_eq!(encode_all(Framing::lines(), &[b"abc"]), b"abc\n");
        assert_eq!(encode_all(Framing::lines().crlf(), &[b"abc"]), b"abc\r\n");
    }

    #[test]
    fn zero_length_frames_are_frames() {
        let framing = Framing::length_prefixed(4);
        let frames = decode_in_pieces(framing, b"\x00\x00\x00\x00\x00\x00\x00\x00", &[]).unwrap();
        assert_eq!(frames, vec![Bytes::new(), Bytes::new()]);
        let lines = decode_in_pieces(Framing::lines(), b"\n\r\n", &[]).unwrap();
        assert_eq!(lines, vec![Bytes::new(), Bytes::new()]);
    }

    /// A header alone consumes the buffer but leaves the codec mid-frame:
    /// the connection must not park there.
    #[test]
    fn a_header_without_its_body_is_mid_frame() {
        let mut codec = Framing::length_prefixed(2).codec();
        let mut buf = BytesMut::from(&b"\x00\x05"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        assert!(!codec.between_frames(&buf));
        buf.extend_from_slice(b"hello");
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert!(codec.between_frames(&buf));

        let mut lines = Framing::lines().codec();
        let mut buf = BytesMut::from(&b"par"[..]);
        assert_eq!(lines.decode(&mut buf).unwrap(), None);
        assert!(!lines.between_frames(&buf));
    }

    /// A length header is the peer's word: a header and a byte (or a header
    /// alone) leave the buffer the size a read gave it, not the frame's,
    /// at the default limit and at a raised one alike.
    #[test]
    fn a_header_does_not_reserve_the_frame_it_announces() {
        let cases = [
            (Framing::length_prefixed(2), 65_535u64),
            (
                Framing::length_prefixed(4).max_frame_bytes(1 << 30),
                1 << 30,
            ),
            (
                Framing::length_prefixed(8).max_frame_bytes(1 << 30),
                1 << 30,
            ),
        ];
        for (framing, announced) in cases {
            let header_bytes = match framing.kind {
                Kind::Length { header_bytes, .. } => header_bytes,
                Kind::Lines { .. } => unreachable!(),
            };
            let header = &announced.to_be_bytes()[8 - header_bytes..];
            for body in [&b""[..], b"x"] {
                let mut codec = framing.codec();
                // As the pool gives it.
                let mut buf = BytesMut::with_capacity(crate::conn::pool::BUFFER_CAPACITY);
                buf.extend_from_slice(header);
                buf.extend_from_slice(body);
                assert_eq!(codec.decode(&mut buf), Ok(None));
                assert!(!codec.between_frames(&buf), "mid-frame");
                assert!(
                    buf.capacity() <= crate::conn::pool::BUFFER_CAPACITY,
                    "{framing:?}, {} body bytes: {} bytes reserved",
                    body.len(),
                    buf.capacity()
                );
            }
        }
    }

    /// Limits and errors are tokio-util's decoder's, header by header: its
    /// limit clipped to what the header expresses, then the adjustment.
    #[test]
    fn headers_are_judged_as_tokio_util_judges_them() {
        for header_bytes in [1, 2, 4, 8] {
            for adjustment in [-9, -1, 0, 3] {
                for max in [0, 16, 255, 300, 65_536] {
                    for value in [0u64, 1, 2, 8, 9, 15, 16, 17, 252, 255, 256, 300, 65_535] {
                        let mut theirs = LengthDelimitedCodec::builder()
                            .length_field_length(header_bytes)
                            .length_adjustment(adjustment)
                            .max_frame_length(max)
                            .new_codec();
                        let framing = Framing::length_prefixed(header_bytes)
                            .length_adjustment(adjustment)
                            .max_frame_bytes(max);
                        let wire = &value.to_be_bytes()[8 - header_bytes..];
                        let expected = match theirs.decode(&mut BytesMut::from(wire)) {
                            Ok(frame) => Ok(frame.map(BytesMut::freeze)),
                            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                                Err(FramingError::FrameTooLarge)
                            }
                            Err(_) => Err(FramingError::BadHeader),
                        };
                        let ours = framing.codec().decode(&mut BytesMut::from(wire));
                        assert_eq!(ours, expected, "{framing:?}, header {value}");
                    }
                }
            }
        }
    }

    /// A frame far larger than a buffer still decodes whole, its room
    /// growing with what arrived.
    #[test]
    fn a_large_frame_arriving_in_pieces_decodes() {
        let framing = Framing::length_prefixed(4).max_frame_bytes(1 << 20);
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let wire = encode_all(framing, &[&payload]);
        let mut codec = framing.codec();
        let mut buf = BytesMut::with_capacity(crate::conn::pool::BUFFER_CAPACITY);
        let mut got = None;
        for piece in wire.chunks(16 * 1024) {
            assert_eq!(got, None, "the frame decodes only when all is here");
            buf.extend_from_slice(piece);
            got = codec.decode(&mut buf).unwrap();
            assert!(
                buf.capacity() <= 4 * buf.len() + 64 * 1024,
                "{} bytes reserved for {} in hand",
                buf.capacity(),
                buf.len()
            );
        }
        assert_eq!(got.as_deref(), Some(&payload[..]));
        assert!(codec.between_frames(&buf));
    }

    #[test]
    fn lines_decode_at_every_split_point() {
        let wire = b"PING\r\nhello world\n\nlast\r\n";
        let want = vec![
            Bytes::from("PING"),
            Bytes::from("hello world"),
            Bytes::new(),
            Bytes::from("last"),
        ];
        let framing = Framing::lines();
        assert_eq!(decode_in_pieces(framing, wire, &[]).unwrap(), want);
        for cut in 0..=wire.len() {
            assert_eq!(
                decode_in_pieces(framing, wire, &[cut]).unwrap(),
                want,
                "split at {cut}"
            );
        }
        let every: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(decode_in_pieces(framing, wire, &every).unwrap(), want);
    }

    #[test]
    fn oversized_frames_fail_before_their_body_arrives() {
        let framing = Framing::length_prefixed(4).max_frame_bytes(16);
        // Only the header of a 17-byte frame: refused at once.
        assert_eq!(
            decode_in_pieces(framing, b"\x00\x00\x00\x11", &[]),
            Err(FramingError::FrameTooLarge)
        );
        // At the limit is fine.
        let mut wire = b"\x00\x00\x00\x10".to_vec();
        wire.extend_from_slice(&[7; 16]);
        assert_eq!(decode_in_pieces(framing, &wire, &[]).unwrap().len(), 1);
        // A 1-byte header clips the limit to 255.
        let mut codec = Framing::length_prefixed(1).max_frame_bytes(1 << 20).codec();
        let mut out = BytesMut::new();
        assert_eq!(
            codec.encode(Bytes::from(vec![0; 256]), &mut out),
            Err(FramingError::FrameTooLarge)
        );
    }

    #[test]
    fn overlong_lines_fail() {
        let framing = Framing::lines().max_line_bytes(8);
        assert_eq!(
            decode_in_pieces(framing, b"0123456789\n", &[]),
            Err(FramingError::LineTooLong)
        );
        // Even before the newline arrives.
        assert_eq!(
            decode_in_pieces(framing, b"0123456789", &[]),
            Err(FramingError::LineTooLong)
        );
        assert_eq!(
            decode_in_pieces(framing, b"01234567\n", &[]).unwrap(),
            vec![Bytes::from("01234567")]
        );
    }

    #[test]
    fn bad_headers_and_bad_lines_fail() {
        // The header counts itself (adjustment -4) but says 2: less than itself.
        let framing = Framing::length_prefixed(4).length_adjustment(-4);
        assert_eq!(
            decode_in_pieces(framing, b"\x00\x00\x00\x02", &[]),
            Err(FramingError::BadHeader)
        );
        assert_eq!(
            decode_in_pieces(Framing::lines(), b"caf\xe9\n", &[]),
            Err(FramingError::NotUtf8)
        );
        let mut codec = Framing::lines().codec();
        let mut out = BytesMut::new();
        assert_eq!(
            codec.encode(Bytes::from("two\nlines"), &mut out),
            Err(FramingError::BadHeader)
        );
    }

    /// A limit hit says what it was over (a frame with its announced size,
    /// read from the header left in the buffer; a whole line with its
    /// length, one cut short without): `max_frame_bytes`, or, when that is
    /// past what the header's width can say after the adjustment, the
    /// header (raising `max_frame_bytes` would not help). Malformed input
    /// is over nothing (it logs at debug, not as a limit).
    #[test]
    fn a_limit_hit_names_its_setting_and_malformed_input_none() {
        let frame = |setting, size, limit| OverLimit {
            kind: Flood::FramedFrameTooBig,
            what: "framed TCP frame",
            setting,
            size: Some(size),
            limit,
        };
        let line = |size| OverLimit {
            kind: Flood::FramedLineTooLong,
            what: "framed TCP line",
            setting: "Framing::max_line_bytes",
            size,
            limit: 4,
        };
        let header = "what a 1-byte length header (Framing::length_prefixed(1)) can say after Framing::length_adjustment";
        let cases = [
            (
                Framing::length_prefixed(2).max_frame_bytes(10),
                &[0u8, 11, 1][..],
                frame(INBOUND_SETTING, 11, 10),
            ),
            (
                Framing::length_prefixed(1)
                    .length_adjustment(-1)
                    .max_frame_bytes(1000),
                &[255, 0],
                frame(header, 255, 254),
            ),
            (
                Framing::length_prefixed(2)
                    .length_adjustment(-2)
                    .max_frame_bytes(1000),
                &[3, 233],
                frame(INBOUND_SETTING, 1001, 1000),
            ),
            (
                Framing::lines().max_line_bytes(4),
                b"01234\n",
                line(Some(5)),
            ),
            (Framing::lines().max_line_bytes(4), b"0123456\n", line(None)),
        ];
        for (framing, wire, over) in cases {
            let mut codec = framing.codec();
            let mut buf = BytesMut::from(wire);
            let error = codec.decode(&mut buf).unwrap_err();
            assert_eq!(codec.over_limit(error, &buf), Some(over), "{wire:?}");
            assert_eq!(codec.over_limit(FramingError::BadHeader, &buf), None);
        }
    }

    #[test]
    #[should_panic(expected = "1, 2, 4 or 8")]
    fn a_three_byte_header_is_refused() {
        let _ = Framing::length_prefixed(3);
    }

    /// The default line limit is `DEFAULT_MAX_LINE_BYTES` (8 KiB), as
    /// documented: a line that long passes, one byte more fails.
    #[test]
    fn the_default_line_limit_is_8_kib() {
        let line = |n: usize| [vec![b'x'; n], b"\n".to_vec()].concat();
        let got = decode_in_pieces(Framing::lines(), &line(8 * 1024), &[]).unwrap();
        assert_eq!(got, vec![Bytes::from(vec![b'x'; 8 * 1024])]);
        assert_eq!(
            decode_in_pieces(Framing::lines(), &line(8 * 1024 + 1), &[]),
            Err(FramingError::LineTooLong)
        );
    }

    /// The largest reply is `max_frame_bytes` clipped to what the header
    /// can say after its adjustment; lines have none.
    #[test]
    fn the_largest_reply_is_what_the_header_and_the_limit_both_allow() {
        let cases = [
            (Framing::length_prefixed(2), 65_535),
            (Framing::length_prefixed(4), DEFAULT_MAX_FRAME_BYTES),
            (Framing::length_prefixed(1).max_frame_bytes(1000), 255),
            (
                Framing::length_prefixed(2)
                    .length_adjustment(-2)
                    .max_frame_bytes(1 << 20),
                65_533,
            ),
            (Framing::length_prefixed(8).max_frame_bytes(7), 7),
            (Framing::lines().max_line_bytes(10), usize::MAX),
        ];
        for (framing, want) in cases {
            assert_eq!(framing.max_reply_bytes(), want, "{framing:?}");
        }
    }

    /// Each direction has its own bound: a frame the server may send can
    /// be one the peer may not, and the other way round; `max_frame_bytes`
    /// sets both, and the later call wins for its direction.
    #[test]
    fn inbound_and_outbound_frames_have_their_own_bounds() {
        let framing = Framing::length_prefixed(4)
            .max_inbound_frame_bytes(1024)
            .max_outbound_frame_bytes(300 * 1024);
        assert_eq!(framing.max_reply_bytes(), 300 * 1024);
        // Sending 300 KiB frames; refusing 1,025 bytes from the peer.
        let big = vec![7u8; 300 * 1024];
        let wire = encode_all(framing, &[&big]);
        assert_eq!(wire.len(), 4 + big.len());
        let mut out = BytesMut::new();
        assert_eq!(
            framing
                .codec()
                .encode(Bytes::from(vec![0; 300 * 1024 + 1]), &mut out),
            Err(FramingError::FrameTooLarge)
        );
        assert_eq!(
            decode_in_pieces(framing, &encode_all(framing, &[&[1; 1025]]), &[]),
            Err(FramingError::FrameTooLarge)
        );
        assert_eq!(
            decode_in_pieces(framing, &encode_all(framing, &[&[1; 1024]]), &[])
                .unwrap()
                .len(),
            1
        );
        // The other way round: a peer may send what the server may not.
        let framing = Framing::length_prefixed(2)
            .max_inbound_frame_bytes(100)
            .max_outbound_frame_bytes(10);
        assert_eq!(framing.max_reply_bytes(), 10);
        assert_eq!(
            decode_in_pieces(framing, &[&[0u8, 100][..], &[1; 100]].concat(), &[])
                .unwrap()
                .len(),
            1
        );
        // `max_frame_bytes` sets both; a later call of one wins.
        let both = Framing::length_prefixed(4).max_frame_bytes(50);
        assert_eq!(both.max_reply_bytes(), 50);
        assert_eq!(
            decode_in_pieces(both, &[0, 0, 0, 51], &[]),
            Err(FramingError::FrameTooLarge)
        );
        let then = Framing::length_prefixed(4)
            .max_outbound_frame_bytes(9)
            .max_frame_bytes(50)
            .max_outbound_frame_bytes(70);
        assert_eq!(then.max_reply_bytes(), 70);
        // Lines: the outbound bound, off by default, refuses a longer line.
        assert_eq!(Framing::lines().max_reply_bytes(), usize::MAX);
        let lines = Framing::lines().max_outbound_frame_bytes(3);
        assert_eq!(lines.max_reply_bytes(), 3);
        let mut out = BytesMut::new();
        assert_eq!(
            lines.codec().encode(Bytes::from("four"), &mut out),
            Err(FramingError::LineTooLong)
        );
        assert_eq!(lines.codec().encode(Bytes::from("one"), &mut out), Ok(()));
        assert_eq!(&out[..], b"one\n");
    }

    /// A frame over a limit names `max_frame_bytes` when that is the limit,
    /// also when the header's reach is exactly as far; else the header, by
    /// its width.
    #[test]
    fn a_frame_over_the_limit_names_the_header_by_its_width() {
        let setting = |framing: Framing, header: &[u8]| {
            let mut codec = framing.codec();
            let error = codec.decode(&mut BytesMut::from(header)).unwrap_err();
            codec.over_limit(error, header).map(|over| over.setting)
        };
        // The header says at most 254 after the adjustment: the same.
        let framing = Framing::length_prefixed(1)
            .length_adjustment(-1)
            .max_frame_bytes(254);
        assert_eq!(setting(framing, &[255]), Some(INBOUND_SETTING));
        for (width, header) in [(1, &[255u8][..]), (2, &[255, 255]), (4, &[255; 4])] {
            let framing = Framing::length_prefixed(width)
                .length_adjustment(-1)
                .max_frame_bytes(usize::MAX);
            assert_eq!(
                setting(framing, header),
                Some(header_setting(width)),
                "{width}"
            );
            assert!(header_setting(width).contains(&format!("{width}-byte")));
        }
    }

    /// A frame still arriving gets room as its bytes come: at least
    /// `RESERVE_AT_LEAST` past a header alone (or what is missing, if less),
    /// none more when the rest fits the buffer it is in, and room for the
    /// rest when it does not and is no more than what came.
    #[test]
    fn a_frame_still_arriving_gets_room_for_the_rest() {
        let framing = Framing::length_prefixed(4).max_frame_bytes(1 << 20);
        // A header alone, in a buffer of just its size.
        let mut buf = BytesMut::from(&b"\x00\x01\x00\x00"[..]);
        let mut codec = framing.codec();
        assert_eq!(codec.decode(&mut buf), Ok(None));
        // 4 KiB written out: the test is of `RESERVE_AT_LEAST`'s value too.
        assert!(buf.capacity() >= 4 * 1024, "{}", buf.capacity());
        let wire = encode_all(framing, &[&[9; 1000]]);
        // The rest fits: the buffer stays as it is (less the header
        // consumed at its front).
        let mut buf = BytesMut::with_capacity(wire.len());
        buf.extend_from_slice(&wire[..600]);
        assert_eq!(framing.codec().decode(&mut buf), Ok(None));
        assert_eq!(buf.capacity(), 1000);
        // It does not: room for the 404 bytes missing (less than came).
        let mut buf = BytesMut::with_capacity(700);
        buf.extend_from_slice(&wire[..600]);
        assert_eq!(framing.codec().decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= 1000, "{}", buf.capacity());
    }
}
