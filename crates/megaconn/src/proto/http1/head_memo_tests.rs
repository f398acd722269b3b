//! Tests of `head.rs`'s header-section memo (`HeadMemo`): a head read from
//! the read buffer where it lies, after any other head the thread read,
//! is the head (or the refusal) the reading without the memo gives, to
//! every byte of its fields, with the same bytes left in the buffer. Kept
//! in a file of their own, beside `head.rs`'s and `head_tests.rs`' tests.

use bytes::BytesMut;

use super::head::{find_end, memo_held, memo_len, parse, parsed_from, End};
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

// Session 52: when a section that misses replaces the one held (`HeadMemo`'s
// patience). Each head is also checked against the reading without the memo.

/// A usual head whose `traceparent` (the section's last field) carries
/// `span`, a section of the same length for every `span`.
fn traced(span: u64) -> Vec<u8> {
    head(
        "GET / HTTP/1.1\r\n",
        &format!(
            "Host: 127.0.0.1:8080\r\nUser-Agent: t/1\r\nAccept: */*\r\n\
             traceparent: 00-0af7651916cd43dd8448eb211c80319c-{span:016x}-01\r\n"
        ),
    )
}

/// `raw`'s header section, as the memo holds it (with its empty line).
fn section_of(raw: &[u8]) -> String {
    let start = raw.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    String::from_utf8_lossy(&raw[start..]).into_owned()
}

/// The section this thread's memo holds (as text) and its patience.
fn held() -> (String, u8) {
    let (section, patience) = memo_held();
    (String::from_utf8_lossy(&section).into_owned(), patience)
}

/// Serves `raw`, checks the head against the reading without the memo,
/// and gives the section held after it and the patience ([`held`]).
fn serve_checked(raw: &[u8]) -> (String, u8) {
    assert_eq!(served(raw, &LIMITS), reference(raw, &LIMITS));
    held()
}

/// A client whose section changes every request (its trace's span) does
/// not have each section copied into the memo: a section held and never
/// hit doubles the misses it takes to replace it, up to 64, so 1,000
/// such requests hold a handful of sections, not 1,000 (session 51's rule).
#[test]
fn a_section_that_changes_every_request_is_held_ever_more_rarely() {
    // A section the memo cannot hold lets go of what it held: a known start.
    served(&head(LINES[0], &sections()[21]), &LIMITS);
    assert_eq!(memo_len(), 0);
    let mut before = String::new();
    let mut taken = 0;
    for span in 0..1000 {
        let (now, _) = serve_checked(&traced(span));
        if now != before {
            taken += 1;
            before = now;
        }
    }
    // Taken at the 1st request, then after 2, 4, 8, 16, 32 and 64 misses
    // in a row, then every 64th: 1 + 6 + (1000 - 127) / 64 = 20.
    assert!(
        taken <= 20,
        "{taken} sections held for 1,000 that all differ"
    );
    assert_eq!(held().1, 64, "the patience reached its ceiling");
}

/// Two clients' sections taking turns on one thread: the one held first
/// stays held (each of its heads is made from it), where in session 51's
/// rule each replaced the other and neither was ever a hit.
#[test]
fn two_sections_taking_turns_keep_the_one_held() {
    served(&head(LINES[0], &sections()[21]), &LIMITS);
    let (a, b) = (traced(1), traced(2));
    serve_checked(&a);
    for _ in 0..100 {
        assert_eq!(serve_checked(&b).0, section_of(&a), "a miss replaced it");
        assert_eq!(serve_checked(&a).0, section_of(&a));
    }
}

/// A client that moves on to another section has it held at its second
/// request when the one before was hit (patience 2); after a run of
/// sections that all differed, within 64 requests; and once that one is
/// hit, the patience is back to 2.
#[test]
fn a_section_that_repeats_after_others_is_held_again() {
    served(&head(LINES[0], &sections()[21]), &LIMITS);
    let (a, b, c) = (traced(1), traced(2), traced(3));
    serve_checked(&a);
    serve_checked(&a);
    assert_eq!(held(), (section_of(&a), 2), "a hit: patience 2");
    assert_eq!(
        serve_checked(&b).0,
        section_of(&a),
        "kept at the first miss"
    );
    assert_eq!(
        serve_checked(&b),
        (section_of(&b), 2),
        "taken at the second"
    );
    for span in 100..400 {
        serve_checked(&traced(span));
    }
    assert_eq!(held().1, 64);
    let mut requests = 0;
    while held().0 != section_of(&c) {
        serve_checked(&c);
        requests += 1;
        assert!(requests <= 64, "not held after {requests} requests");
    }
    assert_eq!(serve_checked(&c), (section_of(&c), 2), "the hit reset it");
    serve_checked(&a);
    assert_eq!(serve_checked(&a), (section_of(&a), 2));
}

/// A section compared from its end: one byte changed anywhere in the
/// first field's value of a held section of 17 to 56 bytes (the words
/// from the end and the first, overlapping one) is a miss, read afresh.
#[test]
fn a_section_differing_in_any_byte_is_not_the_one_held() {
    for len in 1..=40 {
        let value = "v".repeat(len);
        let raw = head("GET / HTTP/1.1\r\n", &format!("X: {value}\r\nHost: a\r\n"));
        let start = "GET / HTTP/1.1\r\nX: ".len();
        for at in start..start + len {
            let mut other = raw.clone();
            // DEL: refused, so a section wrongly taken for the one held
            // (whose value would be sliced from this head) shows.
            other[at] = 0x7f;
            served(&head(LINES[0], &sections()[21]), &LIMITS);
            assert_eq!(serve_checked(&raw).0, section_of(&raw), "held");
            assert_eq!(
                served(&other, &LIMITS),
                reference(&other, &LIMITS),
                "length {len}, byte {at}"
            );
        }
    }
}
