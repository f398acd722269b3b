//! permessage-deflate (RFC 7692), server side, without context takeover in
//! either direction: the offer a client makes and the answer we give, and
//! the worker's compressor and decompressor that every WebSocket on it
//! shares.
//!
//! No context takeover (`server_no_context_takeover`,
//! `client_no_context_takeover`) means every message is compressed on its
//! own: a connection keeps no LZ77 window between messages, so a parked
//! WebSocket costs what an uncompressed one does, and one compressor and
//! one decompressor per worker (reset after each message) serve all of its
//! connections. The price is a worse ratio on streams of small, similar
//! messages than a kept window would give.
//!
//! The deflate itself is flate2 on zlib-rs (pure Rust; the backend that
//! lets the compressor use a window smaller than 32 KiB when a client asks
//! for one with `server_max_window_bits`).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_EXTENSIONS};

/// What a compressed message's deflate data ends with, and what the sender
/// strips (RFC 7692 §7.2.1): the empty stored block a sync flush writes.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window, in bits (32 KiB); the decompressor always uses
/// it, since a client compresses with at most this.
const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib compresses with (it has no 256-byte window, so an
/// offer asking for `server_max_window_bits=8` is declined).
const MIN_WINDOW_BITS: u8 = 9;

/// What was agreed for one connection: the window the server compresses
/// with, in bits (9-15). A parked WebSocket keeps it in its kind (see
/// `Kinds`), not in its side-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    pub window_bits: u8,
}

/// Picks the first permessage-deflate offer in `Sec-WebSocket-Extensions`
/// we can accept, and the response header's value for it. An offer with an
/// unknown or repeated parameter, or a bad value, is declined (§7.1), as is
/// one asking the server for a window zlib cannot use.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<(Deflate, HeaderValue)> {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// One offer (`name; param; param=value`), accepted or not.
fn accept_offer(offer: &str) -> Option<(Deflate, HeaderValue)> {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next()? != "permessage-deflate" {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let which = match name {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[which], true) {
            return None;
        }
        let bits = match value.map(str::parse::<u8>) {
            None => None,
            Some(Ok(bits)) if (8..=MAX_WINDOW_BITS).contains(&bits) => Some(bits),
            Some(_) => return None,
        };
        match which {
            // Flags take no value.
            0 | 1 if value.is_some() => return None,
            // The client limits our window: it must say to what.
            2 => server_bits = Some(bits?),
            // The client may limit its own window (or just say it could):
            // our decompressor takes any window, so nothing to answer.
            _ => {}
        }
    }
    let window_bits = server_bits.unwrap_or(MAX_WINDOW_BITS);
    if window_bits < MIN_WINDOW_BITS {
        return None;
    }
    let mut answer =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if server_bits.is_some() {
        answer.push_str(&format!("; server_max_window_bits={window_bits}"));
    }
    let answer = HeaderValue::try_from(answer).expect("an ASCII header value");
    Some((Deflate { window_bits }, answer))
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// Not deflate data (1007 is for text; bad compressed data is a
    /// protocol error).
    Corrupt,
    /// It inflates past `max_message_bytes` (1009).
    TooBig,
}

/// One worker's compressors (by window size, made on first use) and its
/// decompressor, each reset after every message.
#[derive(Default)]
pub(crate) struct Codec {
    compressors: RefCell<[Option<Box<Compress>>; 7]>,
    decompressor: RefCell<Option<Box<Decompress>>>,
}

impl Codec {
    /// Compresses `payload` as one message's data for `deflate` (the tail
    /// stripped), appended to `out`.
    pub(crate) fn compress(&self, deflate: Deflate, payload: &[u8], out: &mut Vec<u8>) {
        let mut compressors = self.compressors.borrow_mut();
        let slot = usize::from(deflate.window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS) - 9);
        let compressor = compressors[slot].get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::fast(),
                false,
                deflate.window_bits,
            ))
        });
        let start = out.len();
        let base = compressor.total_in();
        out.reserve(payload.len() / 2 + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let consumed = (compressor.total_in() - base) as usize;
            compressor
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("deflate to memory does not fail");
            // All input taken and room left over: the flush is complete.
            let consumed = (compressor.total_in() - base) as usize;
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        compressor.reset();
        // A sync flush ends with the empty stored block; the receiver puts
        // it back (§7.2.1).
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // An empty message: one empty fixed block (§7.2.3.6).
            out.push(0x00);
        }
    }

    /// Inflates one message's compressed data (all fragments gathered), at
    /// most `max` bytes of it.
    pub(crate) fn decompress(&self, data: &[u8], max: usize) -> Result<Bytes, InflateError> {
        let mut decompressor = self.decompressor.borrow_mut();
        let decompressor = decompressor.get_or_insert_with(|| Box::new(Decompress::new(false)));
        let result = inflate(decompressor, data, max);
        decompressor.reset(false);
        result
    }
}

/// Inflates `data` and the stripped tail into a buffer of the message's
/// own, which never grows past `max` + 1 bytes.
fn inflate(decompressor: &mut Decompress, data: &[u8], max: usize) -> Result<Bytes, InflateError> {
    // One byte past `max` is how "too big" is seen; saturating, and min/max
    // rather than clamp, because `max` is the user's and may be tiny or huge.
    let cap = max.saturating_add(1);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).max(64).min(cap));
    for input in [data, &TAIL[..]] {
        let base = decompressor.total_in();
        loop {
            if out.len() == out.capacity() {
                out.reserve_exact(out.capacity().min(cap.saturating_sub(out.len())).max(1));
            }
            let (taken, made) = (decompressor.total_in(), out.len());
            let consumed = (taken - base) as usize;
            let status = decompressor
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block ends the data (§7.2.3.3 allows BFINAL).
                return Ok(Bytes::from(out));
            }
            let consumed = (decompressor.total_in() - base) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if decompressor.total_in() == taken && out.len() == made && out.len() < out.capacity() {
                // Neither input taken nor output made with room for it.
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &'static str) -> Option<(Deflate, HeaderValue)> {
        let mut headers = HeaderMap::new();
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(value));
        negotiate(&headers)
    }

    #[test]
    fn offers_are_accepted_without_context_takeover() {
        let (deflate, answer) = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(deflate.window_bits, 15);
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (deflate, answer) = offer("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(deflate.window_bits, 10);
        assert!(answer
            .to_str()
            .unwrap()
            .ends_with("server_max_window_bits=10"));
        // The first acceptable offer wins; a bad one is skipped.
        let (deflate, _) = offer(
            "permessage-deflate; server_max_window_bits=8, x-webkit-deflate-frame, \
             permessage-deflate; server_max_window_bits=12",
        )
        .unwrap();
        assert_eq!(deflate.window_bits, 12);
        for bad in [
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_round_trip_and_the_limit_holds() {
        let codec = Codec::default();
        for bits in [15, 9] {
            let deflate = Deflate { window_bits: bits };
            for message in [&b""[..], b"hello", &[b'x'; 100_000][..]] {
                let mut compressed = Vec::new();
                codec.compress(deflate, message, &mut compressed);
                assert!(!compressed.ends_with(&TAIL));
                let back = codec.decompress(&compressed, 1 << 20).unwrap();
                assert_eq!(&back[..], message);
            }
        }
        let mut bomb = Vec::new();
        codec.compress(Deflate { window_bits: 15 }, &[0; 1 << 20], &mut bomb);
        assert_eq!(
            codec.decompress(&bomb, 1000),
            Err(InflateError::TooBig),
            "inflating stops at the limit"
        );
        assert_eq!(
            codec.decompress(&[0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
    }

    /// The limit is the user's: tiny or `usize::MAX`, inflating neither
    /// panics nor overflows.
    #[test]
    fn extreme_limits_hold_without_panicking() {
        let codec = Codec::default();
        let deflate = Deflate { window_bits: 15 };
        let mut compressed = Vec::new();
        codec.compress(deflate, &[b'y'; 5000], &mut compressed);
        let back = codec.decompress(&compressed, usize::MAX).unwrap();
        assert_eq!(&back[..], &[b'y'; 5000][..]);
        for max in [0, 1, 32, 62] {
            assert_eq!(
                codec.decompress(&compressed, max),
                Err(InflateError::TooBig),
                "{max}"
            );
        }
        let mut small = Vec::new();
        codec.compress(deflate, b"0123456789", &mut small);
        assert_eq!(&codec.decompress(&small, 10).unwrap()[..], b"0123456789");
    }
}
