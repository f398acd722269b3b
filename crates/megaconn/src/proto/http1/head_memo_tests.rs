//! Tests of `head.rs`'s header-section memo (`HeadMemo`): a head read from
//! the read buffer where it lies, after any other head the thread read,
//! is the head (or the refusal) the reading without the memo gives, to
//! every byte of its fields, with the same bytes left in the buffer. Kept
//! in a file of their own, beside `head.rs`'s and `head_tests.rs`' tests.

use bytes::BytesMut;

use super::head::{find_end, memo_len, parse, parsed_from, End};
use crate::conn::config::HeadLimits;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 2048,
    max_headers: 20,
    max_body_bytes: 1000,
};

/// Request lines: the usual, other targets and methods, HTTP/1.0, and the
/// two the memo is never used for (`CONNECT`, an absolute-form target),
/// `OPTIONS *`, an extension method, and a target `Uri` refuses.
const LINES: &[&str] = &[
    "GET / HTTP/1.1\r\n",
    "GET /a/b?c=d HTTP/1.1\r\n",
    "POST /x HTTP/1.1\r\n",
    "HEAD / HTTP/1.0\r\n",
    "GET / HTTP/1.0\r\n",
    "CONNECT a.example:443 HTTP/1.1\r\n",
    "GET http://h.example/p HTTP/1.1\r\n",
    "OPTIONS * HTTP/1.1\r\n",
    "BREW /pot HTTP/1.1\r\n",
    "GET /a{b HTTP/1.1\r\n",
];

/// Header sections (their empty line added when used): ones that differ
/// in one byte only, custom and repeated names, trailing blanks, every
/// framing and connection header, refused ones, none at all, and the
/// memo's bounds on fields (16) and bytes (512) met and passed.
fn sections() -> Vec<String> {
    let mut sections: Vec<String> = [
        "Host: 127.0.0.1:41501\r\n",
        "Host: 127.0.0.1:41502\r\n",
        "Host: 127.0.0.1:4150\r\n",
        "host: a\r\nAccept: */*\r\nUser-Agent: t/1\r\n",
        "Host: a\r\nX-Custom: one\r\nX-Custom: two\r\nx-other: \tv \t\r\n",
        "Host: a\r\nContent-Length: 5\r\n",
        "Host: a\r\nContent-Length: 7\r\n",
        "Host: a\r\nContent-Length: 9999\r\n",
        "Content-Length: 0\r\nHost: a\r\n",
        "Host: a\r\nTransfer-Encoding: chunked\r\n",
        "Host: a\r\nTransfer-Encoding: gzip, chunked\r\n",
        "Host: a\r\nConnection: close\r\n",
        "Host: a\r\nConnection: keep-alive\r\n",
        "Host: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
        "Host: a\r\nExpect: 100-continue\r\nTE: trailers\r\n",
        "Host: a\r\nExpect: 100-continuf\r\n",
        "Host: a\r\nHost: a\r\n",
        "Host: a b\r\n",
        "",
        "X: 1\r\n",
    ]
    .map(String::from)
    .to_vec();
    let fields = |n: usize| -> String {
        std::iter::once("Host: a\r\n".to_string())
            .chain((1..n).map(|i| format!("X-{i}: {i}\r\n")))
            .collect()
    };
    sections.push(fields(16));
    sections.push(fields(17));
    // 512 bytes with the empty line, and 513.
    for len in [512, 513] {
        let pad = len - "Host: a\r\nX-Pad: \r\n\r\n".len();
        sections.push(format!("Host: a\r\nX-Pad: {}\r\n", "p".repeat(pad)));
    }
    sections
}

/// What the reading without the memo gives for the head at the start of
/// `raw`: the head, or the refusal, and the bytes after it.
fn reference(raw: &[u8], limits: &HeadLimits) -> String {
    match parse(raw, limits) {
        Ok(Some((head, len))) => format!("{head:?} left {:?}", &raw[len..]),
        Ok(None) => "partial".to_string(),
        Err(refused) => format!("{refused:?} left {raw:?}"),
    }
}

/// What the server's reading gives for `raw`, a read that ends with an
/// empty line (the memo's way), as [`reference`] says it.
fn served(raw: &[u8], limits: &HeadLimits) -> String {
    let mut rbuf = BytesMut::from(raw);
    match parsed_from(&mut rbuf, End::InBuffer, limits) {
        Ok(Some(head)) => format!("{head:?} left {:?}", &rbuf[..]),
        Ok(None) => "partial".to_string(),
        Err(refused) => format!("{refused:?} left {:?}", &rbuf[..]),
    }
}

/// [`served`], for a read that does not end with an empty line (a body
/// follows the head): its end found first, as the connection finds it.
fn served_at(raw: &[u8], limits: &HeadLimits) -> String {
    let mut rbuf = BytesMut::from(raw);
    let end = End::found(find_end(raw, &mut 0));
    match parsed_from(&mut rbuf, end, limits) {
        Ok(Some(head)) => format!("{head:?} left {:?}", &rbuf[..]),
        Ok(None) => "partial".to_string(),
        Err(refused) => format!("{refused:?} left {:?}", &rbuf[..]),
    }
}

fn head(line: &str, section: &str) -> Vec<u8> {
    format!("{line}{section}\r\n").into_bytes()
}

/// Every head of `LINES` × `sections()`, read after every other one of
/// its line or of its section (so read from the memo wherever the memo
/// may hold what the one before left), alone and followed by a pipelined
/// head, or by a body: the reading without the memo's head or refusal,
/// and the same bytes left. And the memo is used: a usual head read twice is held
/// after the first.
#[test]
fn a_head_made_from_the_memo_is_the_head_its_reading_gives() {
    let sections = sections();
    let heads: Vec<(usize, usize, Vec<u8>)> = (0..LINES.len())
        .flat_map(|l| (0..sections.len()).map(move |s| (l, s)))
        .map(|(l, s)| (l, s, head(LINES[l], &sections[s])))
        .collect();
    let pipelined = b"GET / HTTP/1.1\r\nHost: p\r\n\r\n";
    for (line, section, before) in &heads {
        for (_, _, now) in heads.iter().filter(|(l, s, _)| l == line || s == section) {
            served(before, &LIMITS);
            assert_eq!(
                served(now, &LIMITS),
                reference(now, &LIMITS),
                "{:?} after {:?}",
                String::from_utf8_lossy(now),
                String::from_utf8_lossy(before)
            );
        }
        let mut two = before.clone();
        two.extend_from_slice(pipelined);
        served(&two, &LIMITS);
        assert_eq!(served(&two, &LIMITS), reference(&two, &LIMITS));
        // A body (or half of the next head) after it: its end found first.
        let mut body = before.clone();
        body.extend_from_slice(b"hello\r\nGET");
        served_at(&body, &LIMITS);
        assert_eq!(served_at(&body, &LIMITS), reference(&body, &LIMITS));
    }
    let usual = head(LINES[0], &sections[0]);
    served(&usual, &LIMITS);
    assert_eq!(memo_len(), sections[0].len() + 2, "the usual head is held");
    // A section the memo does not hold (too many fields) lets go of it.
    served(&head(LINES[0], &sections[sections.len() - 3]), &LIMITS);
    assert_eq!(memo_len(), 0);
}

/// A head whose section the memo holds, read under other limits (fewer
/// fields allowed than it has, a `Content-Length` over the body limit, a
/// head longer than allowed): what the reading without the memo gives
/// under those limits.
#[test]
fn a_remembered_section_is_held_to_the_limits_it_is_read_under() {
    let others = [
        HeadLimits {
            max_headers: 1,
            ..LIMITS
        },
        HeadLimits {
            max_headers: 3,
            ..LIMITS
        },
        HeadLimits {
            max_body_bytes: 5,
            ..LIMITS
        },
        HeadLimits {
            max_body_bytes: 4,
            ..LIMITS
        },
        HeadLimits {
            max_header_bytes: 40,
            ..LIMITS
        },
        HeadLimits {
            max_header_bytes: 41,
            ..LIMITS
        },
    ];
    for section in sections() {
        for line in LINES {
            let raw = head(line, &section);
            for limits in &others {
                served(&raw, &LIMITS);
                assert_eq!(
                    served(&raw, limits),
                    reference(&raw, limits),
                    "{:?} under {limits:?}",
                    String::from_utf8_lossy(&raw)
                );
                // And back: what the other limits left held is held to
                // these.
                assert_eq!(served(&raw, &LIMITS), reference(&raw, &LIMITS));
            }
        }
    }
}

/// Every byte value in every place of a usual section, read after the
/// section it was changed from (held by the memo): the head or refusal
/// the reading without the memo gives.
#[test]
fn every_byte_changed_in_a_remembered_section_is_read_afresh() {
    let line = "GET /p HTTP/1.1\r\n";
    let usual = head(line, "Host: example.com:8080\r\nAccept: */*\r\n");
    for at in line.len()..usual.len() {
        for b in 0..=255u8 {
            let mut raw = usual.clone();
            raw[at] = b;
            if !raw.ends_with(b"\r\n\r\n") {
                continue;
            }
            served(&usual, &LIMITS);
            assert_eq!(
                served(&raw, &LIMITS),
                reference(&raw, &LIMITS),
                "byte {b:#04x} at {at}"
            );
        }
    }
}
