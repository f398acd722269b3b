//! The fast path for the heads of `hold`'s HTTP heartbeat replies: a
//! response head in its plainest form, recognised without `httparse`.
//!
//! Why a load tool special-cases: `hold` knows the shape of what it asked
//! for (a `GET` on a keep-alive connection), and nearly every reply is the
//! same small `HTTP/1.1 200` head with a `Content-Length`. `httparse` is a
//! general parser (both line endings, obs-text, interim responses, header
//! slots filled for the caller), and it was half of `hold`'s user-space
//! instructions per heartbeat (`bench/HOLD-CPU.md`). At a million
//! connections `hold` shares the machine's two cores with the server it
//! measures, so every instruction it spends is taken from the server.
//!
//! Strictness is not traded for it. [`head`] accepts only a subset of what
//! `httparse` accepts, on which both split the head into the same status
//! and the same `(name, value)` pairs; those pairs then go through the one
//! interpretation both paths share ([`Head::header`]: `Content-Length`,
//! `Transfer-Encoding`, `Connection`). For anything outside the subset it
//! says "not mine" (`None`) and `parse.rs` runs `httparse` on the same
//! bytes: a head cut by the end of a read, a bare `\n` line end, a reason
//! or value with a control byte or a byte above 0x7E, a malformed line, an
//! HTTP/1.0 or status-line-only reply, many headers. So a reply judged by
//! the fast path gets the verdict `httparse` would have given it, and a
//! malformed one still fails (after `httparse` looked at it). Tests:
//! `tests::agrees_with_httparse_on_every_mutation` compares the two on
//! every one-byte change, insertion and deletion of a set of heads.
//!
//! The subset, byte by byte:
//! - `HTTP/1.1 `, three digits, a space, a reason of SP, HTAB and visible
//!   ASCII (0x21–0x7E), `\r\n`;
//! - up to [`MAX_FAST_HEADERS`] lines of a name of token characters (RFC
//!   9110's `tchar`, as `httparse` checks them), `:`, optional SP / HTAB, a
//!   value of SP, HTAB and visible ASCII (trailing SP / HTAB trimmed, as
//!   `httparse` does), `\r\n`;
//! - `\r\n`.

use crate::parse::Head;

/// Header lines the fast path takes; a head with more goes to `httparse`
/// (which takes up to 64, `parse::MAX_HEADERS`).
pub(crate) const MAX_FAST_HEADERS: usize = 32;

/// The longest head kept as the thread's last ([`LAST`]).
const MEMO: usize = 256;

/// The last head [`scan`] took on this thread, byte for byte, and what it
/// said: a server's replies to the same request repeat their head until
/// its `date` changes (once a second), so most heads are this one again,
/// and a comparison of their bytes (a `bcmp`) stands in for the scan. The
/// same bytes get the same verdict: nothing is taken on trust.
struct Memo {
    /// `bytes[..len]` is the head; 0: none yet.
    len: usize,
    bytes: [u8; MEMO],
    head: Head,
}

thread_local! {
    static LAST: std::cell::RefCell<Memo> = const {
        std::cell::RefCell::new(Memo {
            len: 0,
            bytes: [0; MEMO],
            head: Head {
                len: 0,
                status: 0,
                close: false,
                length: None,
                chunked: false,
            },
        })
    };
}

/// The head at the start of `buf` if it is whole and in the plain form
/// this module recognises (see the module doc), with its length; `None`
/// otherwise, for `httparse` to judge (incomplete, malformed, or just
/// unusual).
pub(crate) fn head(buf: &[u8]) -> Option<Head> {
    let again = LAST.with_borrow(|m| {
        (m.len != 0 && buf.get(..m.len) == Some(&m.bytes[..m.len])).then_some(m.head)
    });
    if again.is_some() {
        return again;
    }
    let head = scan(buf)?;
    if head.len <= MEMO {
        LAST.with_borrow_mut(|m| {
            m.bytes[..head.len].copy_from_slice(&buf[..head.len]);
            m.len = head.len;
            m.head = head;
        });
    }
    Some(head)
}

/// [`head`] without the thread's last head: the bytes read one by one.
fn scan(buf: &[u8]) -> Option<Head> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let &[a, b, c, b' ', ..] = rest else {
        return None;
    };
    if !(a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit()) {
        return None;
    }
    let status = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    // HTTP/1.1: the connection stays open unless a header says otherwise.
    let mut head = Head::new(status, false);
    // The reason starts after `HTTP/1.1 200 `.
    let mut at = line_end(buf, 13)? + 2;
    for _ in 0..MAX_FAST_HEADERS {
        if buf.get(at..at + 2)? == b"\r\n" {
            head.len = at + 2;
            return Some(head);
        }
        let name_start = at;
        while is_token(*buf.get(at)?) {
            at += 1;
        }
        if at == name_start || buf[at] != b':' {
            return None;
        }
        let name = &buf[name_start..at];
        at += 1;
        while matches!(*buf.get(at)?, b' ' | b'\t') {
            at += 1;
        }
        let value_start = at;
        at = line_end(buf, at)?;
        // Only SP and HTAB can be trailing whitespace here (`line_end`
        // admits no other): what `httparse` trims.
        let value = buf[value_start..at].trim_ascii_end();
        head.header(name, value).ok()?;
        at += 2;
    }
    None
}

/// The index of the `\r\n` that ends the text (SP, HTAB, 0x21–0x7E) from
/// `at`; `None` if a byte outside that set (a bare `\r` or `\n`, a control
/// byte, DEL, obs-text) or the end of `buf` comes first.
fn line_end(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        // Eight bytes at a time while all are SP or visible ASCII: values
        // and reasons are long runs of them (a date, a content type).
        while let Some(word) = buf.get(at..at + 8) {
            if !plain8(u64::from_le_bytes(word.try_into().ok()?)) {
                break;
            }
            at += 8;
        }
        match *buf.get(at)? {
            b'\r' => return (buf.get(at + 1) == Some(&b'\n')).then_some(at),
            b'\t' | b' '..=0x7e => at += 1,
            _ => return None,
        }
    }
}

/// Whether all eight bytes of `w` are in 0x20–0x7E.
#[inline]
fn plain8(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 (exact while no byte has its high bit, which the
    // last term catches), a byte equal to 0x7F, a byte of 0x80 or more.
    let below = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let del = w ^ (ONES * 0x7f);
    let is_del = del.wrapping_sub(ONES) & !del & HIGH;
    (below | is_del | (w & HIGH)) == 0
}

/// RFC 9110's `tchar`: the bytes `httparse` takes in a header name (its
/// `TOKEN_MAP`), by table: a lookup per byte of a name.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether `b` may be in a header name ([`TOKEN`]).
fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::slow_head as slow;

    /// The heads of `megaconn serve`'s replies and a few other plain ones.
    const HEADS: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ndate: Sun, 06 Dec 2026 21:00:00 GMT\r\ncontent-length: 13\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, Close\r\n\r\nhello",
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Tab:\tv\t \r\nX-Empty:\r\nX-Sp: \r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 \r\nA!#$%&'*+-.^_`|~0: x\r\nContent-Length: 01\r\nContent-Length: 2\r\n\r\nab",
    ];

    /// Whatever the fast path takes, `httparse` takes the same way; and the
    /// heads above are the fast path's.
    fn check(input: &[u8]) {
        // The thread's last head changes nothing but the work.
        let scanned = scan(input);
        assert_eq!(head(input), scanned, "{:?}", String::from_utf8_lossy(input));
        if let Some(fast) = scanned {
            assert_eq!(
                slow(input),
                Ok(Some(fast)),
                "the fast path and httparse disagree on {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn takes_plain_heads_as_httparse_does() {
        for &h in HEADS {
            let fast =
                head(h).unwrap_or_else(|| panic!("not taken: {:?}", String::from_utf8_lossy(h)));
            assert_eq!(slow(h), Ok(Some(fast)));
        }
        let served = head(HEADS[0]).unwrap();
        assert_eq!(
            (served.status, served.close, served.length),
            (200, false, Some(13))
        );
        assert_eq!(served.len, HEADS[0].len());
        let closing = head(HEADS[1]).unwrap();
        assert_eq!((closing.close, closing.length), (true, Some(5)));
        assert!(head(HEADS[2]).unwrap().chunked);
        // The last Content-Length counts, as in the slow path.
        assert_eq!(head(HEADS[5]).unwrap().length, Some(2));
    }

    /// Every one-byte change (to each of the 256), insertion and
    /// deletion of the heads above: where the fast path takes the result,
    /// `httparse` gives the same head. (Without this equality the fast path
    /// could pass a reply the slow path fails.)
    #[test]
    fn agrees_with_httparse_on_every_mutation() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut taken = 0usize;
        for &h in HEADS {
            for i in 0..=h.len() {
                for &b in &bytes {
                    let mut changed = h.to_vec();
                    if i < h.len() {
                        changed[i] = b;
                        check(&changed);
                        taken += usize::from(head(&changed).is_some());
                    }
                    let mut inserted = h.to_vec();
                    inserted.insert(i, b);
                    check(&inserted);
                }
                if i < h.len() {
                    let mut deleted = h.to_vec();
                    deleted.remove(i);
                    check(&deleted);
                }
                // Every cut inside the head: incomplete heads are never
                // the fast path's (`httparse` says "partial" for them).
                if i < head(h).map_or(0, |whole| whole.len) {
                    let cut = &h[..i];
                    assert_eq!(head(cut), None, "{:?}", String::from_utf8_lossy(cut));
                    assert_eq!(slow(cut), Ok(None), "{:?}", String::from_utf8_lossy(cut));
                }
            }
        }
        // The comparison is not empty: many changed heads are still plain.
        assert!(taken > 1000, "{taken}");
    }

    /// The thread's last head answers only for the same bytes: a head
    /// one byte apart (a later `date`, a longer body, a bad byte) is
    /// scanned (and kept, if taken).
    #[test]
    fn the_last_head_answers_only_for_the_same_bytes() {
        let served = HEADS[0];
        let first = head(served).unwrap();
        assert_eq!(LAST.with_borrow(|m| m.len), served.len());
        assert_eq!(head(&[served, b"next bytes"].concat()), Some(first));
        let later = String::from_utf8_lossy(served).replace("21:00:00", "21:00:01");
        assert_eq!(head(later.as_bytes()), Some(first));
        let longer = String::from_utf8_lossy(served).replace(": 13", ": 14");
        assert_eq!(head(longer.as_bytes()).unwrap().length, Some(14));
        assert_eq!(head(served), Some(first));
        let bad = String::from_utf8_lossy(served).replace(": 13", ": 1\x01");
        assert_eq!(head(bad.as_bytes()), None);
        let cut = &served[..served.len() - 1];
        assert_eq!(
            head(cut),
            None,
            "a head cut by its read is not the last one"
        );
        // Too long to keep: scanned each time, the same verdict.
        let long = [
            &b"HTTP/1.1 200 OK\r\nX: "[..],
            &[b'v'; MEMO],
            b"\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat();
        assert_eq!(head(&long), slow(&long).unwrap());
        assert_eq!(head(served), Some(first));
    }

    /// The eight-byte check says what a byte-by-byte check says, for every
    /// byte value at every position of a word of plain bytes.
    #[test]
    fn eight_bytes_at_a_time_as_one_by_one() {
        for pos in 0..8 {
            for b in 0..=255u8 {
                for fill in [b' ', b'a', 0x7e] {
                    let mut word = [fill; 8];
                    word[pos] = b;
                    let one_by_one = word.iter().all(|&x| (0x20..=0x7e).contains(&x));
                    assert_eq!(plain8(u64::from_le_bytes(word)), one_by_one, "{word:?}");
                }
            }
        }
    }

    #[test]
    fn leaves_other_heads_to_httparse() {
        for other in [
            &b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
        ] {
            assert_eq!(head(other), None, "{:?}", String::from_utf8_lossy(other));
            check(other);
        }
        let many: Vec<u8> = [
            &b"HTTP/1.1 200 OK\r\n"[..],
            &b"X: y\r\n".repeat(MAX_FAST_HEADERS),
            b"Content-Length: 0\r\n\r\n",
        ]
        .concat();
        assert_eq!(head(&many), None);
        assert!(matches!(slow(&many), Ok(Some(_))));
    }
}
