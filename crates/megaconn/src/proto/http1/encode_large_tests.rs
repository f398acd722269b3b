//! Tests of `Encoder::encode_large` (session 57): the framing of a large
//! body frame that goes out from its own bytes, not through the write
//! buffer (`exchange.rs`, `LARGE_FRAME`). Apart from `encode.rs`'s own
//! tests, as `encode_tests.rs` is.

use bytes::{Bytes, BytesMut};

use super::encode::{EncodeError, Encoder};

/// What `encode_large` leaves: the buffer's bytes, the frame's, and the
/// tail after it, as one text; and its result.
fn framed(encoder: &mut Encoder, data: &'static [u8]) -> (String, Result<(), EncodeError>) {
    let mut dst = BytesMut::from(&b"head|"[..]);
    let mut data = Bytes::from_static(data);
    let result = encoder.encode_large(&mut data, &mut dst);
    let tail = *result.as_ref().unwrap_or(&&b""[..]);
    let wire = [&dst[..], &data[..], tail].concat();
    (String::from_utf8(wire).unwrap(), result.map(|_| ()))
}

/// A chunk's size line goes into the buffer and its CRLF after the frame:
/// the same bytes `encode_data` writes, in the same order.
#[test]
fn a_chunk_is_framed_around_the_frame() {
    let mut large = Encoder::Chunked;
    let (wire, result) = framed(&mut large, b"hello, world: seventeen bytes+!");
    assert_eq!(result, Ok(()));
    let mut copied = BytesMut::from(&b"head|"[..]);
    Encoder::Chunked
        .encode_data(b"hello, world: seventeen bytes+!", &mut copied)
        .unwrap();
    assert_eq!(wire.as_bytes(), &copied[..]);
    assert_eq!(wire, "head|1f\r\nhello, world: seventeen bytes+!\r\n");
    // An empty frame is no chunk (it would read as the last).
    assert_eq!(framed(&mut large, b""), ("head|".to_string(), Ok(())));
}

/// A length counts the frame down; past it, the frame is cut to the
/// declared rest (`TooLong`, saying how much of it goes), as
/// `encode_data` cuts what it copies.
#[test]
fn a_length_counts_down_and_cuts_what_goes_past_it() {
    let mut length = Encoder::Length { remaining: 12 };
    assert_eq!(framed(&mut length, b"01234"), ("head|01234".into(), Ok(())));
    assert_eq!(length, Encoder::Length { remaining: 7 });
    let (wire, result) = framed(&mut length, b"56789abcdef");
    assert_eq!(wire, "head|56789ab");
    assert_eq!(result, Err(EncodeError::TooLong { sent: 7 }));
    assert_eq!(length, Encoder::Length { remaining: 0 });
}

/// Close-delimited: the frame as it is; no body allowed: nothing.
#[test]
fn close_delimited_sends_it_bare_and_no_body_sends_nothing() {
    let mut close = Encoder::CloseDelimited;
    assert_eq!(framed(&mut close, b"abc"), ("head|abc".into(), Ok(())));
    let mut none = Encoder::NoBody;
    assert_eq!(framed(&mut none, b"abc"), ("head|".into(), Ok(())));
}
