//! Tests of `head.rs` for the gaps cargo-mutants found outside the request
//! path that session 38's run covered (its own tests stay in `head.rs`):
//! what a refused request is counted and logged as, a head whose end was
//! given wrong, and the Host checks past the usual name. Real request bytes
//! in, a parse result, a metrics label or an access-log line out. Kept in a
//! file of their own so that these tests and edits of `head.rs`'s code do
//! not meet.

use bytes::BytesMut;
use http::StatusCode;

use super::head::{find_end, parse, parsed_from, refused, BodyFraming, End};
use crate::conn::config::HeadLimits;
use crate::observe::metrics::MethodLabel;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 1024,
    max_headers: 8,
    max_body_bytes: 1000,
};

/// The access-log line `refused` gives, as its `Debug` shows it (its
/// fields are the metrics module's own).
fn access_line(raw: &[u8]) -> String {
    format!(
        "{:?}",
        refused(raw, &LIMITS, true).1.expect("the log is on")
    )
}

/// A request refused after its head was read whole (a Content-Length over
/// `max_body_bytes`) is counted under its method and logged with its path;
/// one whose head was not (too long, malformed) is `other`, logged with as
/// much of its request line as was read. With the log off, no line.
#[test]
fn a_refused_request_is_counted_and_logged_as_far_as_it_was_read() {
    let too_big = b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n";
    assert_eq!(
        parse(too_big, &LIMITS).unwrap_err().status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (label, line) = refused(too_big, &LIMITS, true);
    assert_eq!(label, MethodLabel::of(&http::Method::POST));
    assert_ne!(label, MethodLabel::UNREAD);
    let line = format!("{:?}", line.unwrap());
    assert!(
        line.contains("Some(POST)") && line.contains("Some(\"/up\")"),
        "{line}"
    );
    assert!(refused(too_big, &LIMITS, false).1.is_none());

    // The fields past the limit: the request line is whole, the head is not.
    let long = format!("GET /a/b?q HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(1100));
    let (label, _) = refused(long.as_bytes(), &LIMITS, true);
    assert_eq!(label, MethodLabel::UNREAD);
    let line = access_line(long.as_bytes());
    assert!(
        line.contains("Some(GET)") && line.contains("Some(\"/a/b\")"),
        "{line}"
    );

    // An absolute-form target is logged by its path, as a served one is.
    let line = access_line(
        b"GET http://h.example/p/q?r HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n",
    );
    assert!(line.contains("Some(\"/p/q\")"), "{line}");
}

/// A target httparse reads but `Uri` does not take is logged as sent (it
/// is refused 400 before any handler sees it).
#[test]
fn a_target_that_is_not_a_uri_is_logged_as_sent() {
    let raw = "GET /a<b>`c HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(
        parse(raw.as_bytes(), &LIMITS).unwrap_err().status,
        StatusCode::BAD_REQUEST
    );
    let line = access_line(raw.as_bytes());
    assert!(line.contains("Some(\"/a<b>`c\")"), "{line}");
}

/// `parse_from` reads a head whose `end` was given past it (the slicing
/// parser saw another length) by parsing again in place: the head is the
/// first request's, and the second request stays in the buffer.
#[test]
fn a_head_given_too_long_an_end_leaves_what_follows() {
    let first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
    let second = b"hiGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut rbuf = BytesMut::from(&[&first[..], &second[..]].concat()[..]);
    assert_eq!(find_end(&rbuf, &mut 0), Some(first.len()));
    let end = End::At(rbuf.len());
    let head = parsed_from(&mut rbuf, end, &LIMITS).unwrap().unwrap();
    assert_eq!(head.uri, "/a");
    assert_eq!(head.framing, BodyFraming::Length(2));
    assert_eq!(&rbuf[..], &second[..]);
}

/// A head read whole is not copied: the target and the header values are
/// slices of the read buffer's allocation, whether its end was searched
/// for first or found by the parse (`End::InBuffer`). The allocation is
/// held apart for the check (`rest` shares it): freed, a copy could be
/// given its address and pass for it (the test this replaced, in
/// `head.rs`, passed with every head copied).
#[test]
fn a_head_read_whole_is_sliced_from_the_allocation_it_was_read_into() {
    let raw = b"GET /a?q HTTP/1.1\r\nHost: h\r\nX-T: value\r\n\r\n";
    for found in [true, false] {
        let mut rbuf = BytesMut::with_capacity(2 * raw.len());
        rbuf.extend_from_slice(raw);
        let read = rbuf.as_ptr() as usize..rbuf.as_ptr() as usize + raw.len();
        let rest = rbuf.split_off(raw.len());
        let end = match found {
            true => End::found(find_end(&rbuf, &mut 0)),
            false => End::InBuffer,
        };
        let head = parsed_from(&mut rbuf, end, &LIMITS).unwrap().unwrap();
        for part in [
            head.uri.path().as_bytes(),
            head.headers["host"].as_bytes(),
            head.headers["x-t"].as_bytes(),
        ] {
            assert!(
                read.contains(&(part.as_ptr() as usize)),
                "{part:?} copied ({end:?})"
            );
        }
        assert!(rbuf.is_empty(), "{end:?}");
        drop(rest);
    }
}

/// A buffer that ends with an empty line is read where it lies, its end
/// found by the parse (`End::InBuffer`, what the connection passes for
/// it): the same head, the same refusal and the same bytes left after it
/// as when its end is searched for first (`find_end`), for heads the
/// quick reading takes (one, or the first of several pipelined), heads it
/// leaves to httparse, and heads it reads that the rules then refuse (the
/// bytes put back where they were, for the refusal's log line and the
/// HTTP/2 preface check to read).
#[test]
fn a_head_read_where_it_lies_is_the_head_its_end_gives() {
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-L: {}\r\n\r\n",
        "l".repeat(LIMITS.max_header_bytes)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-M: m\r\n".repeat(LIMITS.max_headers)
    );
    let bufs: [&[u8]; 14] = [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:38900\r\n\r\n",
        b"GET /a?b HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:a  \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        long.as_bytes(),
        many.as_bytes(),
    ];
    for raw in bufs {
        assert!(raw.ends_with(b"\r\n\r\n"));
        let read = |end: Option<End>| {
            let mut rbuf = BytesMut::from(raw);
            let end = end.unwrap_or_else(|| End::found(find_end(&rbuf, &mut 0)));
            let head = parsed_from(&mut rbuf, end, &LIMITS);
            (format!("{head:?}"), rbuf)
        };
        let (searched, after_search) = read(None);
        let (in_place, after_place) = read(Some(End::InBuffer));
        let raw = String::from_utf8_lossy(raw);
        assert_eq!(in_place, searched, "{raw:?}");
        assert_eq!(after_place, after_search, "{raw:?}");
    }
}

/// Host values the usual name's fast scan does not settle: a percent
/// sign at the start, after a byte that is no hex digit, a bad byte after
/// an escape, a name of no reg-name byte at all.
#[test]
fn host_names_past_the_fast_scan() {
    let status = |host: &str| {
        parse(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            &LIMITS,
        )
        .map(|h| h.is_some())
        .map_err(|r| r.status)
    };
    for bad in ["/", "\"", "@:80", "ab%20/", "ab%20cd/", "x%4g", "x%g4"] {
        assert_eq!(status(bad), Err(StatusCode::BAD_REQUEST), "{bad:?}");
    }
    for ok in ["x%41", "g%2f:8080", "ab%20cd", "%41", "%41%42%43"] {
        assert_eq!(status(ok), Ok(true), "{ok:?}");
    }
}

/// A `Host` the thread remembers as valid (`valid_host_seen`, which spares
/// the scan for a value byte for byte the last valid one) lets only itself
/// through: a value one byte apart, or a byte longer, is checked afresh
/// and refused, and the remembered one still passes after it.
#[test]
fn a_remembered_host_lets_only_itself_through() {
    let host_ok = |host: &[u8]| {
        let mut raw = b"GET / HTTP/1.1\r\nHost: ".to_vec();
        raw.extend_from_slice(host);
        raw.extend_from_slice(b"\r\n\r\n");
        match parse(&raw, &LIMITS) {
            Ok(Some(_)) => true,
            Err(rejection) if rejection.status == StatusCode::BAD_REQUEST => false,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(host)),
        }
    };
    let long = "h".repeat(32);
    for good in [
        "127.0.0.1:39700",
        "a",
        "localhost",
        "www.example-host.com:38900",
        long.as_str(),
    ] {
        let good = good.as_bytes();
        assert!(host_ok(good) && host_ok(good), "{good:?}");
        for at in 0..good.len() {
            for bad in [b'/', b'@', b'"', b'<', b'\\', b'^', b'{'] {
                let mut v = good.to_vec();
                v[at] = bad;
                assert!(!host_ok(&v), "{:?}", String::from_utf8_lossy(&v));
                assert!(host_ok(good), "{good:?} after a refused one");
            }
        }
        let mut longer = good.to_vec();
        longer.push(b'/');
        assert!(!host_ok(&longer), "{:?}", String::from_utf8_lossy(&longer));
        // A valid value of the same length is valid too.
        let mut other = good.to_vec();
        other[0] = if good[0] == b'z' { b'y' } else { b'z' };
        assert!(host_ok(&other) && host_ok(good), "{other:?}");
    }
}
