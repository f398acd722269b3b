//! A fast reading of the request heads nearly every client sends, tried
//! before httparse: the same result as httparse's for those heads, and
//! `None` (httparse then reads the head, as it did before this existed) for
//! anything else.
//!
//! httparse took ~540 user-space instructions to read a keep-alive `GET /`
//! with one `Host` header, ~8 % of the whole request's (callgrind,
//! `bench/lower-bound.sh`, bench/CPU-PER-REQUEST.md, session 39): most of
//! it in the set-up of its SIMD scans, which a head of a few dozen bytes
//! never repays. This is one table lookup per byte.
//!
//! What it reads is a strict subset of what httparse reads, and it reads
//! that subset as httparse does (`same_as_httparse` holds it to that, on
//! heads made up at random and on every byte in every place of a usual one):
//!
//! - no empty lines before the request line;
//! - `method SP target SP HTTP/1.x CRLF`, the method of httparse's token
//!   bytes, the target of visible ASCII (httparse also takes bytes from 0x80);
//! - header lines `name ":" *(SP / HTAB) value CRLF` with a name of token
//!   bytes and a non-empty value of httparse's value bytes (its trailing
//!   spaces and tabs dropped, as httparse drops them);
//! - lines end with CRLF only (httparse also takes a bare LF);
//! - the whole head in `buf`, with at most `headers.len()` header lines.
//!
//! Everything else, valid or not, is httparse's to read or refuse, so every
//! refusal (and its status) is still httparse's.

use std::mem::MaybeUninit;

/// A byte httparse takes in a method or a header name (its `TOKEN_MAP`).
const TOKEN: u8 = 1;
/// A byte this reading takes in a request target: httparse's `URI_MAP`
/// without the bytes from 0x80 (so the target is ASCII, hence UTF-8, as
/// httparse checks).
const TARGET: u8 = 2;
/// A byte httparse takes in a header value (its `HEADER_VALUE_MAP`).
const VALUE: u8 = 4;

/// A `tchar` (RFC 9110 §5.6.2), the bytes of a method, a header name and
/// any other token: httparse's `TOKEN_MAP` too.
pub(super) const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Each byte's classes.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let token = is_tchar(c);
        let target = c >= b'!' && c <= b'~';
        let value = c == b'\t' || (c >= b' ' && c <= b'~') || c >= 0x80;
        table[b] = (token as u8 * TOKEN) | (target as u8 * TARGET) | (value as u8 * VALUE);
        b += 1;
    }
    table
};

/// A request head read by [`parse`]: the header lines are the first
/// `headers` of the storage it was given.
pub(super) struct Quick<'b> {
    pub method: &'b str,
    pub path: &'b str,
    /// The minor version, as httparse gives it.
    pub version: u8,
    pub headers: usize,
    /// The head's length, its empty line included.
    pub len: usize,
}

impl<'b> Quick<'b> {
    /// The head as the `httparse::Request` the rest of the engine reads,
    /// over the header lines [`parse`] wrote (one place for the cast, which
    /// both of `parse`'s callers need).
    ///
    /// # Safety
    /// `storage` is the storage `parse` was given when it returned `self`
    /// (its first `self.headers` slots are written).
    #[inline(always)]
    pub(super) unsafe fn request<'h>(
        &self,
        storage: &'h mut [MaybeUninit<httparse::Header<'b>>],
    ) -> httparse::Request<'h, 'b> {
        // SAFETY: the caller's contract: `parse` wrote these slots.
        let headers = unsafe {
            std::slice::from_raw_parts_mut(
                storage.as_mut_ptr().cast::<httparse::Header<'b>>(),
                self.headers,
            )
        };
        httparse::Request {
            method: Some(self.method),
            path: Some(self.path),
            version: Some(self.version),
            headers,
        }
    }
}

/// Reads the head at the start of `buf` if it is of the common shape (see
/// the module doc), writing its header lines to the start of `storage`;
/// `None` when httparse must read it.
///
/// Each run of bytes is scanned by one `position` over the slice (a lookup
/// and a test a byte), and every byte after a run is read with `get`: a
/// head that ends early is simply not read here.
///
/// Inlined into both of its callers (`head::quick_from`, the usual head's,
/// and `head::parse_in`, any other's), as it was into its one caller
/// before: the parse's set-up and its results are then registers.
#[inline(always)]
pub(super) fn parse<'b>(
    buf: &'b [u8],
    storage: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Option<Quick<'b>> {
    let line = request_line(buf)?;
    let (headers, len) = header_lines(buf, line.end, storage)?;
    Some(Quick {
        method: line.method,
        path: line.path,
        version: line.version,
        headers,
        len,
    })
}

/// A request line read by [`request_line`].
pub(super) struct Line<'b> {
    pub method: &'b str,
    pub path: &'b str,
    /// The minor version, as httparse gives it.
    pub version: u8,
    /// Where the header section starts: just past the line's CRLF.
    pub end: usize,
}

/// Reads the request line at the start of `buf`, as [`parse`] reads it;
/// `None` when it is not of the common shape (or not whole).
#[inline(always)]
pub(super) fn request_line(buf: &[u8]) -> Option<Line<'_>> {
    // The method: token bytes, then one space. `GET `, which nearly every
    // request starts with, is known at once: a word compare where the run
    // took ~25 user-space instructions (callgrind, bench/CPU-PER-REQUEST.md,
    // session 42).
    let at = if buf.starts_with(b"GET ") {
        3
    } else {
        run(buf, 0, TOKEN)
    };
    if at == 0 || buf.get(at) != Some(&b' ') {
        return None;
    }
    let method = ascii(&buf[..at]);
    // The target: visible ASCII, then one space.
    let start = at + 1;
    let at = run(buf, start, TARGET);
    if at == start || buf.get(at) != Some(&b' ') {
        return None;
    }
    let path = ascii(&buf[start..at]);
    let version = buf.get(at + 1..at + 11)?;
    let version = match (&version[..8], &version[8..]) {
        (b"HTTP/1.1", b"\r\n") => 1,
        (b"HTTP/1.0", b"\r\n") => 0,
        _ => return None,
    };
    Some(Line {
        method,
        path,
        version,
        end: at + 11,
    })
}

/// Reads the header lines of the common shape from `at` (where
/// [`request_line`] ended) to the empty line that ends the head, as
/// [`parse`] reads them, writing them to the start of `storage`: how many
/// there are, and where the head ends (just past its empty line). `None`
/// when they are not of that shape, not whole, or more than `storage`
/// holds. What it reads depends on the bytes from `at` on alone.
#[inline(always)]
pub(super) fn header_lines<'b>(
    buf: &'b [u8],
    mut at: usize,
    storage: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Option<(usize, usize)> {
    let mut headers = 0;
    loop {
        // The empty line that ends the head, or a header line.
        let start = at;
        at = run(buf, at, TOKEN);
        if at == start {
            return (buf.get(at..at + 2)? == b"\r\n").then_some((headers, at + 2));
        }
        if buf.get(at) != Some(&b':') {
            return None;
        }
        let name = ascii(&buf[start..at]);
        at += 1;
        while matches!(buf.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        let start = at;
        at = value_run(buf, at);
        // An empty value, or a line not ended by CRLF: httparse's.
        if at == start || buf.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        // Not empty and not starting with a space or tab (skipped above),
        // so its end trimmed as httparse trims it is not before its start
        // (`trim_ascii_end` also trims LF, CR and FF, none of them value
        // bytes: the same as httparse's spaces and tabs).
        let value = buf[start..at].trim_ascii_end();
        storage
            .get_mut(headers)?
            .write(httparse::Header { name, value });
        headers += 1;
        at += 2;
    }
}

/// Where the run of bytes of `class` that starts at `from` ends (`from`
/// itself if there is none, `buf.len()` at most).
#[inline(always)]
fn run(buf: &[u8], from: usize, class: u8) -> usize {
    let rest = buf.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .position(|b| CLASS[usize::from(*b)] & class == 0)
        .unwrap_or(rest.len())
}

/// [`run`] of `VALUE` bytes, eight bytes a step while the bytes are of
/// none but the value's most common bytes (`0x20..=0x7E`, and `0x80` up),
/// then byte by byte from the first other byte: a `Host` value byte by
/// byte took six user-space instructions a byte, ~90 a request (callgrind,
/// bench/CPU-PER-REQUEST.md, session 42).
/// `value_run_is_the_run_of_value_bytes` holds it to `run`.
#[inline(always)]
fn value_run(buf: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACES: u64 = u64::from_ne_bytes([b' '; 8]);
    const DELS: u64 = u64::from_ne_bytes([0x7f; 8]);
    let mut at = from;
    while let Some(&word) = buf.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        let x = u64::from_le_bytes(word);
        // The high bit of each byte below 0x20 (a control, or a tab) and of
        // each DEL, and maybe of bytes above one of them (a borrow runs
        // on), never below the first: so the lowest bit set is the first
        // byte of the word that is no such common value byte.
        let dels = x ^ DELS;
        let stops = ((x.wrapping_sub(SPACES) & !x) | (dels.wrapping_sub(ONES) & !dels)) & HIGHS;
        if stops != 0 {
            at += (stops.trailing_zeros() / 8) as usize;
            break;
        }
        at += 8;
    }
    // The rest byte by byte, from the first byte a word stopped at (a tab
    // goes on, as a value byte).
    run(buf, at, VALUE)
}

/// `bytes` as a `&str`: only ever token or target bytes, all ASCII.
fn ascii(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: every byte was checked against `CLASS` as TOKEN or TARGET,
    // both ASCII only, and ASCII is UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::config::MAX_HEADERS_CEILING;
    use proptest::prelude::*;

    /// What httparse reads from `buf` with `max` header slots: the method,
    /// target, minor version, headers and length of a complete head, or
    /// `None` for an incomplete one or an error.
    type Read = (String, String, u8, Vec<(String, Vec<u8>)>, usize);

    fn by_httparse(buf: &[u8], max: usize) -> Option<Read> {
        let mut storage = vec![httparse::EMPTY_HEADER; max];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => Some((
                req.method?.to_owned(),
                req.path?.to_owned(),
                req.version?,
                req.headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
                len,
            )),
            _ => None,
        }
    }

    fn by_quick(buf: &[u8], max: usize) -> Option<Read> {
        let mut storage = vec![MaybeUninit::uninit(); max];
        let q = parse(buf, &mut storage)?;
        let headers = storage[..q.headers]
            .iter()
            // SAFETY: `parse` wrote the first `q.headers` slots.
            .map(|h| unsafe { h.assume_init_ref() })
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect();
        Some((
            q.method.to_owned(),
            q.path.to_owned(),
            q.version,
            headers,
            q.len,
        ))
    }

    /// Checks that what the quick reading reads, httparse reads the same.
    fn same(buf: &[u8], max: usize) {
        if let Some(quick) = by_quick(buf, max) {
            assert_eq!(
                Some(&quick),
                by_httparse(buf, max).as_ref(),
                "head {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    const USUAL: &[u8] = b"GET /a?b=c HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nX-Empty-Ish: v \t\r\n\r\nbody";

    #[test]
    fn reads_the_usual_head_as_httparse_does() {
        let read = by_quick(USUAL, MAX_HEADERS_CEILING).expect("the usual head is read");
        assert_eq!(Some(read), by_httparse(USUAL, MAX_HEADERS_CEILING));
        let ten = b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(by_quick(ten, 4).expect("read").2, 0);
        assert_eq!(by_quick(ten, 4), by_httparse(ten, 4));
    }

    #[test]
    fn leaves_the_unusual_and_the_incomplete_to_httparse() {
        for head in [
            &b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\r\n",
        ] {
            assert!(
                by_quick(head, 1).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    /// `value_run` ends where `run` of value bytes ends: from every place
    /// of every string of up to five bytes of a value byte, a tab, the
    /// bytes around the word's stops (0x1F, 0x20, 0x7E, 0x7F, 0x80, 0xFF), CR
    /// and NUL, and every byte value in every place of a value of two words
    /// and more, and of its cuts.
    #[test]
    fn value_run_is_the_run_of_value_bytes() {
        let same = |buf: &[u8]| {
            for from in 0..=buf.len() {
                assert_eq!(
                    value_run(buf, from),
                    run(buf, from, VALUE),
                    "{buf:?} from {from}"
                );
            }
        };
        let bytes = [b'a', b'\t', 0x1f, b' ', b'~', 0x7f, 0x80, 0xff, b'\r', 0];
        for len in 0..=5u32 {
            for mut n in 0..bytes.len().pow(len) {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = bytes[n % bytes.len()];
                        n /= bytes.len();
                        b
                    })
                    .collect();
                same(&buf);
            }
        }
        let value = b"www.example-host.com:38900\r\n\r\n";
        for at in 0..value.len() {
            same(&value[..at]);
            for b in 0..=255u8 {
                let mut buf = value.to_vec();
                buf[at] = b;
                same(&buf);
            }
        }
    }

    /// Every byte value in every place of [`USUAL`], and every cut of it.
    #[test]
    fn same_as_httparse_on_every_byte_in_every_place() {
        for at in 0..USUAL.len() {
            same(&USUAL[..at], MAX_HEADERS_CEILING);
            for b in 0..=255u8 {
                let mut buf = USUAL.to_vec();
                buf[at] = b;
                same(&buf, MAX_HEADERS_CEILING);
                same(&buf, 2);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Heads made of the bytes that matter to either reader.
        #[test]
        fn same_as_httparse(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"\r\n"[..]), Just(&b"\r"[..]), Just(&b"\n"[..]), Just(&b" "[..]),
                    Just(&b"\t"[..]), Just(&b":"[..]), Just(&b"GET"[..]), Just(&b"/"[..]),
                    Just(&b"HTTP/1.1"[..]), Just(&b"HTTP/1.0"[..]), Just(&b"Host"[..]),
                    Just(&b"a"[..]), Just(&b"\x80"[..]), Just(&b"\x7f"[..]), Just(&b"\0"[..]),
                    Just(&b"\""[..]), Just(&b"GET / HTTP/1.1\r\n"[..]), Just(&b"X: y\r\n"[..]),
                ],
                0..24,
            ),
            max in 0usize..4,
        ) {
            same(&parts.concat(), max);
        }
    }
}
