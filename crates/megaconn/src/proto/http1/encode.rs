//! Response framing: the head, the body encoder (`Content-Length`, `chunked`,
//! close-delimited, or no body at all) and the canned error responses.
//!
//! Everything is written into the connection's write buffer, but the data
//! of a large body frame ([`Encoder::encode_large`]: only its framing); the
//! exchange decides when the buffer goes to the socket, so a response head
//! and a small body (and several pipelined responses) leave in one `write`,
//! and a head and a large frame in one `writev`.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use crate::proto::date;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoder {
    /// No body may be sent (HEAD, 1xx, 204, 304): body frames are discarded.
    NoBody,
    /// Exactly `remaining` more bytes.
    Length { remaining: u64 },
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// HTTP/1.0 without a known length: the body ends when the connection closes.
    CloseDelimited,
}

/// A response body broke its own framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EncodeError {
    /// The declared length went out whole (`sent`, the bytes of this
    /// frame that did); the rest is dropped.
    #[error("response body is longer than its Content-Length")]
    TooLong { sent: usize },
    #[error("response body is shorter than its Content-Length")]
    TooShort,
}

/// What the exchange knows when it writes a response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadContext {
    pub request_method_is_head: bool,
    pub request_version: Version,
    pub keep_alive: bool,
    /// The body's exact length by its size hint, if known. The handler's own
    /// `Content-Length`, when valid, takes precedence: [`encode_head`] finds
    /// it as it writes the headers.
    pub body_length: Option<u64>,
    /// The connection changes protocol after this head: a 101, or a 2xx to
    /// `CONNECT` (a tunnel, RFC 9110 §9.3.6). No body, so no framing
    /// headers, and no `connection: close` for what continues.
    pub switching: bool,
}

/// Writes the status line and headers; returns the encoder for the body and
/// whether the connection stays open afterwards.
pub(crate) fn encode_head(
    dst: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    ctx: HeadContext,
    server_header: Option<&HeaderValue>,
) -> (Encoder, bool) {
    let mut keep_alive = ctx.keep_alive;
    let switching = ctx.switching || status == StatusCode::SWITCHING_PROTOCOLS;
    let forbids_body = switching
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;

    dst.reserve(128 + headers.len() * 32);
    put_status_line(dst, status);

    let mut has_date = false;
    let mut has_server = false;
    // The handler's `Content-Length`, the first one if it is valid: noted
    // here, as the headers go by, rather than looked for apart (~45
    // user-space instructions a response; bench/CPU-PER-REQUEST.md,
    // session 37).
    let mut user_set = None;
    let mut length_seen = false;
    for (name, value) in headers {
        let text = name.as_str().as_bytes();
        // Only five names are looked at, and their lengths tell every other
        // name apart at once (`content-type`, `cache-control`, ...): a
        // header that is none of them costs no comparisons (~15 user-space
        // instructions a header; bench/CPU-PER-REQUEST.md, session 38).
        if matches!(text.len(), 4 | 6 | 10 | 14 | 17) {
            // Framing is ours: the handler's values could contradict what
            // we actually send.
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                if name == header::CONTENT_LENGTH && !std::mem::replace(&mut length_seen, true) {
                    user_set = length_of(value);
                }
                continue;
            }
            if name == header::CONNECTION {
                // A 101 gets our `connection: upgrade`, a tunnel none.
                if !switching {
                    keep_alive &= !put_connection_options(dst, value.as_bytes());
                }
                continue;
            }
            has_date |= name == header::DATE;
            has_server |= name == header::SERVER;
        }
        put_header(dst, text, value.as_bytes());
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        put_header(dst, b"connection", b"upgrade");
    }
    let body_length = user_set.or(ctx.body_length);
    let encoder = if forbids_body || ctx.request_method_is_head {
        Encoder::NoBody
    } else if let Some(n) = body_length {
        Encoder::Length { remaining: n }
    } else if ctx.request_version == Version::HTTP_11 {
        Encoder::Chunked
    } else {
        keep_alive = false;
        Encoder::CloseDelimited
    };
    match encoder {
        Encoder::Length { remaining } => put_content_length(dst, remaining),
        Encoder::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
        Encoder::NoBody if ctx.request_method_is_head || status == StatusCode::NOT_MODIFIED => {
            // HEAD and 304 may advertise the length the full response would
            // have, and nothing else (RFC 9110 §8.6). An empty body is what
            // HEAD handlers (axum strips the body) and 304s (tower-http's
            // ServeDir) send whatever the full length is, so its 0 says
            // nothing. HEAD: the handler's header (axum sets it from the GET
            // body before stripping it), else an exact non-zero size hint.
            // 304: only the handler's own header, never 0, and never the
            // length of a body the handler attached. That body is not sent,
            // and its length is of it, not of the 200 the client holds: by
            // its size hint, or in the header axum's router sets from that
            // hint (which cannot be told from the handler's own, so a
            // header equal to the body's exact length goes too). A 304
            // with `content-length: 4` for a body "body" went out (hyper
            // sends it too); Go sends no length on a 304.
            let advertised = if status == StatusCode::NOT_MODIFIED {
                user_set.filter(|n| *n > 0 && ctx.body_length != Some(*n))
            } else {
                user_set.or(ctx.body_length.filter(|n| *n > 0))
            };
            if let Some(n) = advertised {
                if !forbids_body || status == StatusCode::NOT_MODIFIED {
                    put_content_length(dst, n);
                }
            }
        }
        Encoder::NoBody | Encoder::CloseDelimited => {}
    }
    if !switching {
        if !keep_alive {
            put_header(dst, b"connection", b"close");
        } else if ctx.request_version == Version::HTTP_10 {
            put_header(dst, b"connection", b"keep-alive");
        }
    }
    if !has_date {
        date::with_line(|line| put_all(dst, [line]));
    }
    if let (false, Some(server)) = (has_server, server_header) {
        put_header(dst, b"server", server.as_bytes());
    }
    dst.put_slice(b"\r\n");
    (encoder, keep_alive)
}

/// Writes a handler's `Connection` options but `close` and `keep-alive`
/// (those are ours to write, from what the connection does); returns whether
/// it said `close`, which then closes the connection after this response, as
/// under hyper and Go. Runs only for a response that has the header.
fn put_connection_options(dst: &mut BytesMut, value: &[u8]) -> bool {
    let mut close = false;
    let mut written = false;
    for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
            let lead: &[u8] = if written { b", " } else { b"connection: " };
            dst.put_slice(lead);
            dst.put_slice(token);
            written = true;
        }
    }
    if written {
        dst.put_slice(b"\r\n");
    }
    close
}

/// The length a handler's `Content-Length` value says, if it is valid.
fn length_of(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.parse().ok()
}

/// `HTTP/1.1 <code> <reason>\r\n`: one copy for the common statuses, of a
/// length known when it is compiled (a few words, not a call to `memcpy`).
fn put_status_line(dst: &mut BytesMut, status: StatusCode) {
    match status {
        StatusCode::OK => put_all(dst, [b"HTTP/1.1 200 OK\r\n"]),
        StatusCode::NO_CONTENT => put_all(dst, [b"HTTP/1.1 204 No Content\r\n"]),
        StatusCode::NOT_MODIFIED => put_all(dst, [b"HTTP/1.1 304 Not Modified\r\n"]),
        StatusCode::NOT_FOUND => put_all(dst, [b"HTTP/1.1 404 Not Found\r\n"]),
        _ => {
            let code = status.as_u16();
            // StatusCode is always three digits (100..=999).
            dst.put_slice(&[
                b'H',
                b'T',
                b'T',
                b'P',
                b'/',
                b'1',
                b'.',
                b'1',
                b' ',
                b'0' + (code / 100) as u8,
                b'0' + (code / 10 % 10) as u8,
                b'0' + (code % 10) as u8,
                b' ',
            ]);
            dst.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
            dst.put_slice(b"\r\n");
        }
    }
}

/// `content-length: <n>\r\n`, its digits written in place: formatted
/// apart, they were a piece of unknown length, copied by a call to
/// `memcpy` (~45 user-space instructions a response with the formatting
/// buffer's; callgrind, bench/CPU-PER-REQUEST.md, session 41).
///
/// The digits are counted by comparisons up to four of them (`ilog10`
/// took ~19 instructions) and written two at a time from [`DIGIT_PAIRS`]
/// (a division by 100 where there were two by 10): ~20 user-space
/// instructions fewer for a two-digit length, though LLVM no longer
/// inlines it into `encode_head` (callgrind, bench/CPU-PER-REQUEST.md,
/// session 48).
fn put_content_length(dst: &mut BytesMut, n: u64) {
    const NAME: &[u8; 16] = b"content-length: ";
    let digits = match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1_000..=9_999 => 4,
        _ => n.ilog10() as usize + 1,
    };
    let len = NAME.len() + digits + 2;
    dst.reserve(len);
    let start = dst.len();
    let base = dst.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // SAFETY: `reserve` made room for `len` bytes past `start`, which `base`
    // points to: the name, `digits` digits (the number of `n`'s decimal
    // digits, which the loop and the last step write, last first, none
    // before the name's end) and CRLF; the constants cannot overlap the
    // buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(NAME.as_ptr(), base, NAME.len());
        let mut at = NAME.len() + digits;
        std::ptr::copy_nonoverlapping(b"\r\n".as_ptr(), base.add(at), 2);
        let mut n = n;
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            at -= 2;
            std::ptr::copy_nonoverlapping(DIGIT_PAIRS.as_ptr().add(pair), base.add(at), 2);
        }
        if n >= 10 {
            std::ptr::copy_nonoverlapping(
                DIGIT_PAIRS.as_ptr().add(n as usize * 2),
                base.add(at - 2),
                2,
            );
        } else {
            *base.add(at - 1) = b'0' + n as u8;
        }
        dst.set_len(start + len);
    }
}

/// `00` to `99`, two ASCII digits each: [`put_content_length`]'s digits.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0; 200];
    let mut i = 0;
    while i < 100 {
        pairs[i * 2] = b'0' + (i / 10) as u8;
        pairs[i * 2 + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// Appends `parts` to `dst` with one check of its room for all of them:
/// a head is a dozen short pieces, and `put_slice` checks the room and the
/// length for each (~7 user-space instructions a piece, ~80 a response;
/// bench/CPU-PER-REQUEST.md, session 38). A piece of constant length (`: `,
/// `\r\n`) is then a store or two, not a copy.
#[inline(always)]
fn put_all<const N: usize>(dst: &mut BytesMut, parts: [&[u8]; N]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    dst.reserve(len);
    let start = dst.len();
    let base = dst.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let mut at = 0;
    for part in parts {
        // SAFETY: `reserve` made room for `len` bytes past `start`, which
        // `base` points to, and the parts written sum to `len`; a slice we
        // are given cannot overlap the buffer we hold `&mut` to.
        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), base.add(at), part.len()) };
        at += part.len();
    }
    // SAFETY: the `len` bytes past `start` were initialised just above,
    // within the capacity `reserve` made.
    unsafe { dst.set_len(start + len) };
}

fn put_header(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_all(dst, [name, b": ", value, b"\r\n"]);
}

impl Encoder {
    /// Frames one chunk of body data into `dst`.
    ///
    /// Inlined where the exchange frames a body, with a chunk's framing
    /// out of line ([`put_chunk`]): a sized body's data, nearly every
    /// response's, is a check and a copy, and the call around them cost
    /// about as much again (bench/CPU-PER-REQUEST.md, session 50).
    #[inline(always)]
    pub(crate) fn encode_data(
        &mut self,
        data: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self {
            Encoder::NoBody => Ok(()),
            Encoder::Length { remaining } => {
                if data.len() as u64 > *remaining {
                    // The declared length goes out whole, as hyper's
                    // does, and the exchange ends the response there
                    // (`body_overran`): a file that grew while `ServeDir`
                    // read it loses what came after its `Content-Length`,
                    // not the whole chunk read.
                    let sent = *remaining as usize;
                    dst.put_slice(&data[..sent]);
                    *remaining = 0;
                    return Err(EncodeError::TooLong { sent });
                }
                *remaining -= data.len() as u64;
                dst.put_slice(data);
                Ok(())
            }
            Encoder::Chunked => {
                put_chunk(data, dst);
                Ok(())
            }
            Encoder::CloseDelimited => {
                dst.put_slice(data);
                Ok(())
            }
        }
    }

    /// Frames a large piece of body data that goes out from its own bytes
    /// rather than copied into `dst` (`exchange.rs`, `LARGE_FRAME`): what
    /// its framing puts before it goes into `dst` (a chunk's size line),
    /// and what it puts after it is returned (a chunk's CRLF), to be
    /// written behind it. `data` is cut to what may go out: to the rest
    /// of a `Content-Length` (then `TooLong`, as
    /// [`encode_data`](Self::encode_data) does), to nothing where no body
    /// may be sent.
    pub(crate) fn encode_large(
        &mut self,
        data: &mut Bytes,
        dst: &mut BytesMut,
    ) -> Result<&'static [u8], EncodeError> {
        match self {
            Encoder::NoBody => {
                data.clear();
                Ok(b"")
            }
            Encoder::Length { remaining } => {
                if data.len() as u64 > *remaining {
                    let sent = *remaining as usize;
                    data.truncate(sent);
                    *remaining = 0;
                    return Err(EncodeError::TooLong { sent });
                }
                *remaining -= data.len() as u64;
                Ok(b"")
            }
            Encoder::Chunked if data.is_empty() => Ok(b""),
            Encoder::Chunked => {
                put_chunk_size(data.len(), dst);
                Ok(b"\r\n")
            }
            Encoder::CloseDelimited => Ok(b""),
        }
    }

    /// Ends the body (the last chunk and trailers, for chunked): of
    /// `trailers`, the fields in `declared` ([`declared_trailers`]) that a
    /// trailer may carry.
    ///
    /// Inlined, as [`encode_data`](Self::encode_data) is, with the last
    /// chunk out of line ([`put_last_chunk`]): for a sized body it is one
    /// test, where the call took ~24 user-space instructions a request
    /// (bench/CPU-PER-REQUEST.md, session 50).
    #[inline(always)]
    pub(crate) fn finish(
        &mut self,
        trailers: Option<&HeaderMap>,
        declared: &[HeaderName],
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self {
            Encoder::Length { remaining } if *remaining > 0 => Err(EncodeError::TooShort),
            Encoder::Chunked => {
                put_last_chunk(trailers, declared, dst);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// One chunk of a chunked body: its size line, its data and its CRLF
/// (nothing for empty data, which would read as the last chunk).
#[inline(never)]
fn put_chunk(data: &[u8], dst: &mut BytesMut) {
    if !data.is_empty() {
        dst.reserve(18 + data.len() + 2);
        put_chunk_size(data.len(), dst);
        dst.put_slice(data);
        dst.put_slice(b"\r\n");
    }
}

/// A chunk's size line, for a chunk of `len` bytes.
fn put_chunk_size(len: usize, dst: &mut BytesMut) {
    let _ = write!(Writer(dst), "{len:x}\r\n");
}

/// A chunked body's last chunk and its trailer section: of `trailers`,
/// the fields in `declared` that a trailer may carry.
#[inline(never)]
fn put_last_chunk(trailers: Option<&HeaderMap>, declared: &[HeaderName], dst: &mut BytesMut) {
    dst.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if declared.contains(name) && !NOT_TRAILERS.contains(name) {
            put_header(dst, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    dst.put_slice(b"\r\n");
}

/// The trailer fields a response declared in its `Trailer` header(s): the
/// only ones sent, as hyper sends them (`proto/h1/role.rs` and
/// `encode.rs`, hyper 1.x): the names of every `Trailer` field, comma
/// separated, in any case; a value that is not text or a name that is not a
/// valid field name is skipped. No `Trailer` header: no trailers at all.
/// `None` when nothing is declared, so a response without trailers
/// allocates nothing.
pub(crate) fn declared_trailers(headers: &HeaderMap) -> Option<Box<[HeaderName]>> {
    let mut names = headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .peekable();
    names.peek()?;
    Some(names.collect())
}

// Shared with HTTP/2's trailers (`service/mod.rs`, session 48); kept
// reachable here for `decode.rs`.
pub(super) use crate::service::NOT_TRAILERS;

/// A response the server writes on its own (malformed request, timeout, panic):
/// a short text body saying why, and `Connection: close`.
pub(crate) fn encode_error(dst: &mut BytesMut, status: StatusCode, reason: &str) {
    let body_len = status.canonical_reason().map_or(0, str::len) + 2 + reason.len() + 1;
    let _ = write!(
        Writer(dst),
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ndate: ",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body_len
    );
    date::with_now(|now| dst.put_slice(now.as_bytes()));
    let _ = write!(
        Writer(dst),
        "\r\n\r\n{}: {}\n",
        status.canonical_reason().unwrap_or("Error"),
        reason
    );
}

/// `100 Continue`, sent when the handler first reads a body the client is
/// holding back.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        status: u16,
        version: Version,
        len: Option<u64>,
        is_head: bool,
    ) -> (String, Encoder, bool) {
        let mut dst = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("date", HeaderValue::from_static("today"));
        let (enc, ka) = encode_head(
            &mut dst,
            StatusCode::from_u16(status).unwrap(),
            &headers,
            HeadContext {
                request_method_is_head: is_head,
                request_version: version,
                keep_alive: true,
                body_length: len,
                switching: false,
            },
            None,
        );
        (String::from_utf8(dst.to_vec()).unwrap(), enc, ka)
    }

    #[test]
    fn known_length_and_chunked() {
        let (text, enc, ka) = head(200, Version::HTTP_11, Some(5), false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: today\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(enc, Encoder::Length { remaining: 5 });
        assert!(ka);
        let (text, enc, _) = head(200, Version::HTTP_11, None, false);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(enc, Encoder::Chunked);
    }

    /// The head of a `200` to a keep-alive HTTP/1.1 GET whose handler set
    /// `headers` (and `date: today`, for a head that does not change) and
    /// whose body's size hint is `hint`: its text, encoder and keep-alive.
    fn ok_keep_alive(mut headers: HeaderMap, hint: Option<u64>) -> (String, Encoder, bool) {
        headers.insert(header::DATE, HeaderValue::from_static("today"));
        let mut dst = BytesMut::new();
        let (enc, keep_alive) = encode_head(
            &mut dst,
            StatusCode::OK,
            &headers,
            keep_alive_get(hint),
            None,
        );
        (String::from_utf8(dst.to_vec()).unwrap(), enc, keep_alive)
    }

    /// What the exchange knows of a keep-alive HTTP/1.1 GET whose body's
    /// size hint is `hint`.
    fn keep_alive_get(hint: Option<u64>) -> HeadContext {
        HeadContext {
            request_method_is_head: false,
            request_version: Version::HTTP_11,
            keep_alive: true,
            body_length: hint,
            switching: false,
        }
    }

    /// The handler's first `Content-Length`, when valid, frames the body
    /// over the body's size hint (`encode_head` finds it as it writes the
    /// headers); an invalid one leaves the size hint.
    #[test]
    fn the_handlers_content_length_takes_precedence_over_the_size_hint() {
        let encode = |values: &[&'static str], hint: Option<u64>| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            let (text, enc, _) = ok_keep_alive(headers, hint);
            (text, enc)
        };
        let (text, enc) = encode(&["7"], Some(5));
        assert_eq!(enc, Encoder::Length { remaining: 7 });
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: today\r\ncontent-length: 7\r\n\r\n"
        );
        assert_eq!(encode(&["7"], None).1, Encoder::Length { remaining: 7 });
        assert_eq!(
            encode(&["7", "9"], None).1,
            Encoder::Length { remaining: 7 }
        );
        assert_eq!(
            encode(&["x", "9"], Some(5)).1,
            Encoder::Length { remaining: 5 }
        );
        assert_eq!(encode(&["x"], None).1, Encoder::Chunked);
    }

    /// Headers whose names have the length of one of the five names
    /// `encode_head` looks at (`date`, `server`, `connection`,
    /// `content-length`, `transfer-encoding`) but are none of them go out
    /// as they are, and so does a head far larger than the room reserved
    /// up front (the pieces are written after one check of the room each:
    /// `put_all`).
    #[test]
    fn names_of_the_framing_headers_lengths_and_a_long_head_go_out_whole() {
        let mut headers = HeaderMap::new();
        for name in [
            "x-ab",
            "x-abcd",
            "x-abcdefgh",
            "x-abcdefghijkl",
            "x-abcdefghijklmno",
        ] {
            headers.append(name, HeaderValue::from_static("v"));
        }
        let long = "y".repeat(3000);
        headers.append("x-long", HeaderValue::from_str(&long).unwrap());
        headers.append("x-ab", HeaderValue::from_static("again"));
        let (text, enc, keep_alive) = ok_keep_alive(headers, Some(3));
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 200 OK\r\nx-ab: v\r\nx-ab: again\r\nx-abcd: v\r\nx-abcdefgh: v\r\n\
                 x-abcdefghijkl: v\r\nx-abcdefghijklmno: v\r\nx-long: {long}\r\n\
                 date: today\r\ncontent-length: 3\r\n\r\n"
            )
        );
        assert_eq!(enc, Encoder::Length { remaining: 3 });
        assert!(keep_alive);
    }

    /// The head of the common answer, byte for byte: status line, the
    /// handler's header, the length, and the date and `server` megaconn
    /// adds.
    #[test]
    fn the_common_head_byte_for_byte() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let mut dst = BytesMut::from(&b"earlier answer|"[..]);
        let server = HeaderValue::from_static("megaconn");
        let (enc, keep_alive) = encode_head(
            &mut dst,
            StatusCode::OK,
            &headers,
            keep_alive_get(Some(1_234_567_890)),
            Some(&server),
        );
        let text = String::from_utf8(dst.to_vec()).unwrap();
        // The date is whichever second it was: checked for its form only.
        let (before, rest) = text.split_once("date: ").unwrap();
        let (date, after) = rest.split_at(29);
        assert_eq!(
            before,
            "earlier answer|HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: 1234567890\r\n"
        );
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
        assert_eq!(after, "\r\nserver: megaconn\r\n\r\n");
        assert_eq!(
            enc,
            Encoder::Length {
                remaining: 1_234_567_890
            }
        );
        assert!(keep_alive);
    }

    #[test]
    fn http10_unknown_length_closes() {
        let (text, enc, ka) = head(200, Version::HTTP_10, None, false);
        assert_eq!(enc, Encoder::CloseDelimited);
        assert!(!ka);
        assert!(text.contains("connection: close\r\n"));
    }

    #[test]
    fn bodiless_statuses() {
        let (text, enc, _) = head(204, Version::HTTP_11, Some(5), false);
        assert_eq!(enc, Encoder::NoBody);
        assert!(!text.contains("content-length"));
        let (text, enc, _) = head(200, Version::HTTP_11, Some(5), true);
        assert_eq!(enc, Encoder::NoBody);
        assert!(text.contains("content-length: 5"));
    }

    /// HEAD and 304 never advertise the 0 of an empty body (RFC 9110 §8.6):
    /// only the handler's own Content-Length or an exact non-zero length.
    #[test]
    fn head_and_304_lengths() {
        let encode = |status: u16, is_head: bool, len: Option<u64>, user: Option<&'static str>| {
            let mut dst = BytesMut::new();
            let mut headers = HeaderMap::new();
            if let Some(v) = user {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            let (enc, _) = encode_head(
                &mut dst,
                StatusCode::from_u16(status).unwrap(),
                &headers,
                HeadContext {
                    request_method_is_head: is_head,
                    request_version: Version::HTTP_11,
                    keep_alive: true,
                    body_length: len,
                    switching: false,
                },
                None,
            );
            assert_eq!(enc, Encoder::NoBody);
            let text = String::from_utf8(dst.to_vec()).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(str::to_owned)
        };
        // HEAD: an empty (stripped) body says nothing; a known length does.
        assert_eq!(encode(200, true, Some(0), None), None);
        assert_eq!(encode(200, true, None, None), None);
        assert_eq!(encode(200, true, Some(12), None).as_deref(), Some("12"));
        assert_eq!(encode(200, true, Some(0), Some("0")).as_deref(), Some("0"));
        assert_eq!(encode(200, true, Some(7), Some("7")).as_deref(), Some("7"));
        // 304: the same, but a 0 is never the full length.
        assert_eq!(encode(304, false, Some(0), None), None);
        assert_eq!(encode(304, false, None, None), None);
        assert_eq!(
            encode(304, false, Some(0), Some("1234")).as_deref(),
            Some("1234")
        );
        assert_eq!(encode(304, false, Some(0), Some("0")), None);
        assert_eq!(encode(304, true, Some(0), None), None);
        // 304 with a body attached (not sent): its length is not the full
        // response's, from the size hint or from a header set from it; a
        // handler's own other length is.
        assert_eq!(encode(304, false, Some(9), None), None);
        assert_eq!(encode(304, false, Some(4), Some("4")), None);
        assert_eq!(
            encode(304, false, Some(4), Some("1234")).as_deref(),
            Some("1234")
        );
        assert_eq!(
            encode(304, false, None, Some("1234")).as_deref(),
            Some("1234")
        );
        // 204 never.
        assert_eq!(encode(204, true, Some(5), Some("5")), None);
    }

    /// A 2xx to CONNECT opens a tunnel: framed like a 101, no body and no
    /// framing or connection headers, whatever the body and the connection.
    #[test]
    fn tunnel_has_no_framing() {
        for (len, version, keep_alive) in [
            (Some(0), Version::HTTP_11, true),
            (None, Version::HTTP_11, false),
            (None, Version::HTTP_10, true),
        ] {
            let mut dst = BytesMut::new();
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            headers.insert(header::DATE, HeaderValue::from_static("today"));
            let (enc, _) = encode_head(
                &mut dst,
                StatusCode::OK,
                &headers,
                HeadContext {
                    request_method_is_head: false,
                    request_version: version,
                    keep_alive,
                    body_length: len,
                    switching: true,
                },
                None,
            );
            assert_eq!(enc, Encoder::NoBody);
            assert_eq!(&dst[..], b"HTTP/1.1 200 OK\r\ndate: today\r\n\r\n");
        }
    }

    #[test]
    fn handler_connection_options() {
        let encode = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, HeaderValue::from_static(value));
            let (text, _, keep_alive) = ok_keep_alive(headers, Some(0));
            let options: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("connection: "))
                .map(str::to_owned)
                .collect();
            (options, keep_alive)
        };
        assert_eq!(encode("close"), (vec!["close".to_owned()], false));
        assert_eq!(
            encode("Close, x-a"),
            (vec!["x-a".into(), "close".into()], false)
        );
        assert_eq!(encode("upgrade"), (vec!["upgrade".to_owned()], true));
        assert_eq!(encode("keep-alive"), (vec![], true));
        assert_eq!(encode("x-a , ,x-b"), (vec!["x-a, x-b".to_owned()], true));
    }

    #[test]
    fn chunk_framing() {
        let mut enc = Encoder::Chunked;
        let mut dst = BytesMut::new();
        enc.encode_data(b"hello world, this is seventeen+", &mut dst)
            .unwrap();
        enc.finish(None, &[], &mut dst).unwrap();
        assert_eq!(
            &dst[..],
            b"1f\r\nhello world, this is seventeen+\r\n0\r\n\r\n"
        );
    }

    /// Only declared fields go out, and of those never a forbidden one.
    #[test]
    fn undeclared_and_forbidden_trailers_are_left_out() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        trailers.insert("x-other", HeaderValue::from_static("no"));
        trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        trailers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        trailers.insert(header::HOST, HeaderValue::from_static("evil"));
        trailers.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        let mut response = HeaderMap::new();
        let declare = "X-Checksum ,content-length, set-cookie,host,transfer-encoding";
        response.insert(header::TRAILER, HeaderValue::from_static(declare));
        let declared = declared_trailers(&response).unwrap();
        let mut dst = BytesMut::new();
        Encoder::Chunked
            .finish(Some(&trailers), &declared, &mut dst)
            .unwrap();
        assert_eq!(&dst[..], b"0\r\nx-checksum: abc\r\n\r\n");
    }

    #[test]
    fn trailer_declarations_are_read_as_hyper_reads_them() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_trailers(&headers), None);
        headers.append(header::TRAILER, HeaderValue::from_static("X-A, bad name,,"));
        headers.append(header::TRAILER, HeaderValue::from_static("x-b"));
        let declared = declared_trailers(&headers).unwrap();
        let names: Vec<&str> = declared.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-a", "x-b"]);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut enc = Encoder::Length { remaining: 2 };
        let mut dst = BytesMut::new();
        assert_eq!(
            enc.encode_data(b"abc", &mut dst),
            Err(EncodeError::TooLong { sent: 2 })
        );
        assert_eq!(&dst[..], b"ab", "the declared length is written");
        let mut enc = Encoder::Length { remaining: 2 };
        assert_eq!(enc.finish(None, &[], &mut dst), Err(EncodeError::TooShort));
    }
}
