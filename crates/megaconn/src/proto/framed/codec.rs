//! Framing: where one message ends and the next begins. Owns [`Framing`] (the
//! public description of a listener's framing) and [`FrameCodec`] (the
//! decoder and encoder a connection uses while it is awake).
//!
//! The byte work is tokio-util's ([`LengthDelimitedCodec`], [`LinesCodec`]);
//! this module adds what the connection loop needs on top: mapping their
//! errors to a [`FramingError`] close reason, and knowing whether the codec is
//! between frames, which decides whether a connection may park; and giving
//! `LengthDelimitedCodec` a frame only once all of it is here, since it
//! reserves room for the whole body the moment it reads a header.
//! "Between frames" is not quite "the buffer is empty": the codec could
//! consume a header and then wait for the body with an empty buffer.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LinesCodec, LinesCodecError};

use crate::observe::close::FramingError;

/// Default largest frame body of length-prefixed framing: 64 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Default longest line of line framing, without its line ending: 8 KiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024;

/// How much room a length-prefixed frame still arriving is given at a time,
/// past what is in hand: enough for a few reads, never what a header alone
/// announces.
const RESERVE_AHEAD: usize = 64 * 1024;

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
/// // Text lines ending in `\n` or `\r\n`; replies end in `\r\n`.
/// let lines = Framing::lines().max_line_bytes(1024).crlf();
/// # let _ = (framing, lines);
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
        max_frame_bytes: usize,
    },
    Lines {
        max_line_bytes: usize,
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
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
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

    /// Length-prefixed: the largest header value accepted; a larger one
    /// closes the connection with [`FramingError::FrameTooLarge`] before any
    /// of the body is read. Clipped to what the header can express. No effect
    /// on lines.
    pub fn max_frame_bytes(mut self, n: usize) -> Framing {
        if let Kind::Length {
            max_frame_bytes, ..
        } = &mut self.kind
        {
            *max_frame_bytes = n;
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

    /// A fresh codec for one awake connection.
    pub(crate) fn codec(&self) -> FrameCodec {
        let inner = match self.kind {
            Kind::Length {
                header_bytes,
                big_endian,
                adjustment,
                max_frame_bytes,
            } => {
                let mut builder = LengthDelimitedCodec::builder();
                builder
                    .length_field_length(header_bytes)
                    .length_adjustment(adjustment)
                    .max_frame_length(max_frame_bytes);
                if big_endian {
                    builder.big_endian();
                } else {
                    builder.little_endian();
                }
                Inner::Length {
                    codec: builder.new_codec(),
                    head: Head {
                        bytes: header_bytes,
                        big_endian,
                        adjustment,
                        max: max_frame_bytes,
                    },
                }
            }
            Kind::Lines {
                max_line_bytes,
                crlf,
            } => Inner::Lines {
                // One byte more than the limit: `LinesCodec` counts a `\r`
                // before the `\n` against it, and a `\r\n` line of exactly
                // `max_line_bytes` would fail. `decode` checks the limit on
                // the line without its ending.
                codec: LinesCodec::new_with_max_length(max_line_bytes.saturating_add(1)),
                max: max_line_bytes,
                crlf,
            },
        };
        FrameCodec {
            inner,
            in_frame: false,
        }
    }
}

/// One awake connection's decoder and encoder. Dropped when the connection
/// parks (it holds nothing then: parking happens only between frames).
#[derive(Debug)]
pub(crate) struct FrameCodec {
    inner: Inner,
    /// A length header was consumed and its body has not all arrived.
    in_frame: bool,
}

#[derive(Debug)]
enum Inner {
    Length {
        codec: LengthDelimitedCodec,
        head: Head,
    },
    Lines {
        codec: LinesCodec,
        /// The longest line, without its ending.
        max: usize,
        crlf: bool,
    },
}

impl FrameCodec {
    /// The next whole frame in `buf`, if there is one; consumes it.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        match &mut self.inner {
            Inner::Length { codec, head } => {
                // `LengthDelimitedCodec` reserves room for the whole body as
                // soon as it reads a header: the peer's word, up to the limit
                // (a limit of usize::MAX let one header abort the process).
                // A frame is given to it only once all of it is here;
                // until then the header stays in `buf` (so the connection
                // is mid-frame) and room grows as bytes arrive.
                let wanted = if self.in_frame {
                    None
                } else {
                    head.frame_len(buf)?
                };
                if let Some(wanted) = wanted {
                    if buf.len() < wanted {
                        buf.reserve((wanted - buf.len()).min(RESERVE_AHEAD));
                        return Ok(None);
                    }
                }
                let before = buf.len();
                match codec.decode(buf) {
                    Ok(Some(frame)) => {
                        self.in_frame = false;
                        Ok(Some(frame.freeze()))
                    }
                    Ok(None) => {
                        // Bytes consumed without a frame: the header went.
                        self.in_frame |= buf.len() < before;
                        Ok(None)
                    }
                    Err(e) => Err(length_error(&e)),
                }
            }
            Inner::Lines { codec, max, .. } => match codec.decode(buf) {
                Ok(Some(line)) if line.len() > *max => Err(FramingError::LineTooLong),
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

    /// True between frames: nothing of a frame has been read, given what is
    /// left in `buf`. Only then may the connection park.
    pub(crate) fn between_frames(&self, buf: &[u8]) -> bool {
        !self.in_frame && buf.is_empty()
    }

    /// Appends `frame`, framed, to `out`. Fails when the frame cannot be
    /// expressed: too long for the header or `max_frame_bytes`, or a line
    /// that is not UTF-8 or holds a newline (it would read as two frames).
    pub(crate) fn encode(&mut self, frame: Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        match &mut self.inner {
            Inner::Length { codec, .. } => codec.encode(frame, out).map_err(|e| length_error(&e)),
            Inner::Lines { crlf, .. } => {
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

/// A length-prefixed framing's header, as the codec reads it.
#[derive(Debug)]
struct Head {
    bytes: usize,
    big_endian: bool,
    adjustment: isize,
    max: usize,
}

impl Head {
    /// The whole frame's length (header and body) the header at the start of
    /// `buf` announces. `Ok(None)` when the header is not all here, or is one
    /// the codec refuses itself (over the limit, or adjusted out of range);
    /// [`FramingError::FrameTooLarge`] for a length within the limit that no
    /// buffer can hold (header and body past `usize::MAX`, possible only
    /// under a limit that large), which the codec would try to reserve.
    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FramingError> {
        let Some(field) = buf.get(..self.bytes) else {
            return Ok(None);
        };
        let value = field.iter().enumerate().fold(0u64, |n, (i, b)| {
            let shift = if self.big_endian {
                self.bytes - 1 - i
            } else {
                i
            };
            n | u64::from(*b) << (8 * shift)
        });
        if value > self.max as u64 {
            return Ok(None);
        }
        let Some(body) = usize::try_from(value)
            .ok()
            .and_then(|v| v.checked_add_signed(self.adjustment))
        else {
            return Ok(None);
        };
        body.checked_add(self.bytes)
            .map(Some)
            .ok_or(FramingError::FrameTooLarge)
    }
}

/// `LengthDelimitedCodec` reports a frame over the limit as `InvalidData`
/// (decoding) or `InvalidInput` with its own error type (encoding), and an
/// adjustment that underflows as `InvalidInput` with a message.
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

    /// A header alone stays in the buffer until its body is here: the
    /// connection is mid-frame and must not park there.
    #[test]
    fn a_header_without_its_body_is_mid_frame() {
        let mut codec = Framing::length_prefixed(2).codec();
        let mut buf = BytesMut::from(&b"\x00\x05"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 2);
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

    /// An 8-byte header announcing 2^62 bytes under a limit of usize::MAX:
    /// the codec waits for more without reserving what was announced (it
    /// once did, and a reservation that size aborts the process).
    #[test]
    fn a_huge_announced_length_reserves_only_a_little() {
        let mut codec = Framing::length_prefixed(8)
            .max_frame_bytes(usize::MAX)
            .codec();
        let mut buf = BytesMut::from(&(1u64 << 62).to_be_bytes()[..]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), 8, "nothing consumed");
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
        assert!(!codec.between_frames(&buf));
        // A length no buffer can hold (header and body past usize::MAX).
        let mut codec = Framing::length_prefixed(8)
            .max_frame_bytes(usize::MAX)
            .codec();
        let mut buf = BytesMut::from(&u64::MAX.to_be_bytes()[..]);
        assert_eq!(codec.decode(&mut buf), Err(FramingError::FrameTooLarge));
    }

    #[test]
    #[should_panic(expected = "1, 2, 4 or 8")]
    fn a_three_byte_header_is_refused() {
        let _ = Framing::length_prefixed(3);
    }
}
