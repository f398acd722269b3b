//! Tests of `encode.rs` for the gaps cargo-mutants found (its own tests
//! stay in `encode.rs`; these are apart so that they and edits of its code
//! do not meet): a response head's bytes out of a status, the handler's
//! headers and what the exchange knows.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};

use super::encode::{encode_error, encode_head, HeadContext};

/// The head of a `200` to a keep-alive HTTP/1.1 GET of a 2-byte body whose
/// handler set `headers`, with the server's `server` header `megaconn`.
fn ok_head(headers: &HeaderMap) -> String {
    let mut dst = BytesMut::new();
    let server = HeaderValue::from_static("megaconn");
    let ctx = HeadContext {
        request_method_is_head: false,
        request_version: Version::HTTP_11,
        keep_alive: true,
        body_length: Some(2),
        switching: false,
    };
    encode_head(&mut dst, StatusCode::OK, headers, ctx, Some(&server));
    String::from_utf8(dst.to_vec()).unwrap()
}

/// A handler's own `server` header replaces the server's, once; a handler's
/// `date`, or another header of a name as long as `server` (`pragma`), does
/// not take the server's `server` away.
#[test]
fn a_handlers_server_header_replaces_the_servers_once() {
    let mut headers = HeaderMap::new();
    headers.insert(header::SERVER, HeaderValue::from_static("mine"));
    let text = ok_head(&headers);
    assert_eq!(text.matches("server: ").count(), 1, "{text}");
    assert!(text.contains("\r\nserver: mine\r\n"), "{text}");

    for (name, value) in [(header::DATE, "today"), (header::PRAGMA, "no-cache")] {
        let mut headers = HeaderMap::new();
        headers.insert(name.clone(), HeaderValue::from_static(value));
        let text = ok_head(&headers);
        assert_eq!(text.matches("server: ").count(), 1, "{name}: {text}");
        assert!(
            text.ends_with("\r\nserver: megaconn\r\n\r\n"),
            "{name}: {text}"
        );
    }
}

/// The status line of every status code, common or not, byte for byte:
/// its three digits and its reason (`Unknown` for a code without one); and
/// the `date` line, one of today's, just before the empty line.
#[test]
fn every_status_line_byte_for_byte() {
    for code in 100..=999u16 {
        let status = StatusCode::from_u16(code).unwrap();
        let mut dst = BytesMut::new();
        let ctx = HeadContext {
            request_method_is_head: false,
            request_version: Version::HTTP_11,
            keep_alive: true,
            body_length: Some(0),
            switching: false,
        };
        encode_head(&mut dst, status, &HeaderMap::new(), ctx, None);
        let reason = status.canonical_reason().unwrap_or("Unknown");
        let line = format!("HTTP/1.1 {code} {reason}\r\n");
        assert!(
            dst.starts_with(line.as_bytes()),
            "{code}: {:?}",
            String::from_utf8_lossy(&dst)
        );
        let text = String::from_utf8(dst.to_vec()).unwrap();
        let (_, date) = text.split_once("\r\ndate: ").unwrap();
        let (date, rest) = date.split_once("\r\n").unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{text:?}");
        assert_eq!(rest, "\r\n", "{text:?}");
    }
}

/// A response the server writes on its own: status line, a text body
/// saying why, its exact length, `connection: close` and the date.
#[test]
fn an_error_response_byte_for_byte() {
    let mut dst = BytesMut::from(&b"earlier|"[..]);
    encode_error(&mut dst, StatusCode::BAD_REQUEST, "invalid header name");
    let text = String::from_utf8(dst.to_vec()).unwrap();
    let (before, rest) = text.split_once("date: ").unwrap();
    let (date, after) = rest.split_at(29);
    let body = "Bad Request: invalid header name\n";
    assert_eq!(
        before,
        format!(
            "earlier|HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n",
            body.len()
        )
    );
    assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
    assert_eq!(after, format!("\r\n\r\n{body}"));
}

/// `content-length` is the body length in decimal, for lengths of every
/// number of digits and the ends of each (`put_content_length` writes the
/// digits in place, counted first), and for a HEAD's (advertised when not 0).
#[test]
fn content_length_is_the_length_in_decimal_at_every_number_of_digits() {
    let mut lengths = vec![0, 1, u64::MAX, u64::MAX - 1];
    let mut p = 1u64;
    while let Some(next) = p.checked_mul(10) {
        lengths.extend([p - 1, p, p + 1, next - 1]);
        p = next;
    }
    lengths.extend([p - 1, p, p + 1]);
    for n in lengths {
        let mut dst = BytesMut::from(&b"x"[..]);
        let ctx = HeadContext {
            request_method_is_head: false,
            request_version: Version::HTTP_11,
            keep_alive: true,
            body_length: Some(n),
            switching: false,
        };
        encode_head(&mut dst, StatusCode::OK, &HeaderMap::new(), ctx, None);
        let text = String::from_utf8(dst.to_vec()).unwrap();
        let line = format!("\r\ncontent-length: {n}\r\n");
        assert!(text.starts_with("xHTTP/1.1 200 OK\r\n"), "{text:?}");
        assert!(text.contains(&line), "{n}: {text:?}");
        assert!(text.ends_with("\r\n\r\n"), "{text:?}");
        let mut dst = BytesMut::new();
        let head = HeadContext {
            request_method_is_head: true,
            ..ctx
        };
        encode_head(&mut dst, StatusCode::OK, &HeaderMap::new(), head, None);
        let text = String::from_utf8(dst.to_vec()).unwrap();
        assert_eq!(text.contains(&line), n > 0, "HEAD, {n}: {text:?}");
    }
}
