//! `encode_head` held, byte for byte, to a plain reading of what a head
//! must say, over every mix of status, request, size hint, the handler's
//! headers and the server's `server` header: its bytes, its encoder and
//! whether the connection stays open. A change to how a head is written
//! (session 51 tried writing the usual end of a head, its length, date
//! and empty line, in one reservation: it gave nothing and was dropped)
//! must give what this reading gives.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::encode::{encode_head, Encoder, HeadContext};

/// What `encode_head` must write, built with `format!` from the rules (the
/// date as `<date>`), and the encoder and keep-alive it must give.
fn reference(
    status: StatusCode,
    headers: &HeaderMap,
    ctx: HeadContext,
    server_header: Option<&HeaderValue>,
) -> (String, Encoder, bool) {
    let mut keep_alive = ctx.keep_alive;
    let switching = ctx.switching || status == StatusCode::SWITCHING_PROTOCOLS;
    let forbids_body = switching
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown")
    );
    let (mut has_date, mut has_server) = (false, false);
    let mut user_set: Option<u64> = None;
    let mut length_seen = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            if name == header::CONTENT_LENGTH && !std::mem::replace(&mut length_seen, true) {
                user_set = value.to_str().ok().and_then(|v| v.parse().ok());
            }
            continue;
        }
        if name == header::CONNECTION {
            if !switching {
                let mut kept = Vec::new();
                for token in value.to_str().unwrap().split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
                        kept.push(token);
                    }
                }
                if !kept.is_empty() {
                    out += &format!("connection: {}\r\n", kept.join(", "));
                }
            }
            continue;
        }
        has_date |= name == header::DATE;
        has_server |= name == header::SERVER;
        out += &format!("{name}: {}\r\n", value.to_str().unwrap());
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        out += "connection: upgrade\r\n";
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
        Encoder::Length { remaining } => out += &format!("content-length: {remaining}\r\n"),
        Encoder::Chunked => out += "transfer-encoding: chunked\r\n",
        Encoder::NoBody if ctx.request_method_is_head || status == StatusCode::NOT_MODIFIED => {
            // 304: the handler's own length, not 0, and not the length of
            // the body it attached (which is not sent).
            let advertised = if status == StatusCode::NOT_MODIFIED {
                user_set.filter(|n| *n > 0 && ctx.body_length != Some(*n))
            } else {
                user_set.or(ctx.body_length.filter(|n| *n > 0))
            };
            if let Some(n) = advertised {
                if !forbids_body || status == StatusCode::NOT_MODIFIED {
                    out += &format!("content-length: {n}\r\n");
                }
            }
        }
        Encoder::NoBody | Encoder::CloseDelimited => {}
    }
    if !switching {
        if !keep_alive {
            out += "connection: close\r\n";
        } else if ctx.request_version == Version::HTTP_10 {
            out += "connection: keep-alive\r\n";
        }
    }
    if !has_date {
        out += "date: <date>\r\n";
    }
    if let (false, Some(server)) = (has_server, server_header) {
        out += &format!("server: {}\r\n", server.to_str().unwrap());
    }
    out += "\r\n";
    (out, encoder, keep_alive)
}

/// `encode_head`'s head, written after some bytes already in the buffer
/// (checked, and cut off), with the server's own date line's value as
/// `<date>` (checked to be a date).
fn encoded(
    status: StatusCode,
    headers: &HeaderMap,
    ctx: HeadContext,
    server_header: Option<&HeaderValue>,
) -> (String, Encoder, bool) {
    const BEFORE: &[u8] = b"an answer before|";
    let mut dst = BytesMut::from(BEFORE);
    let (encoder, keep_alive) = encode_head(&mut dst, status, headers, ctx, server_header);
    assert!(dst.starts_with(BEFORE));
    let text = String::from_utf8(dst[BEFORE.len()..].to_vec()).unwrap();
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        match line
            .strip_prefix("date: ")
            .and_then(|d| d.strip_suffix("\r\n"))
        {
            Some(date) if httpdate::parse_http_date(date).is_ok() => out += "date: <date>\r\n",
            _ => out += line,
        }
    }
    (out, encoder, keep_alive)
}

fn map(fields: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

/// Every status of interest × request version × HEAD or not × keep-alive
/// or not × size hint × switching or not × the server's `server` or none ×
/// the handler's headers (none; the usual; its own length, valid, invalid
/// and twice; `transfer-encoding`; `connection` options; its own `date`
/// and `server`; names of the lengths `encode_head` looks at): the head,
/// the encoder and the keep-alive the rules give.
#[test]
fn every_head_end_is_the_one_the_rules_give() {
    let statuses =
        [200, 201, 204, 299, 304, 101, 404, 500, 103].map(|c| StatusCode::from_u16(c).unwrap());
    let hints = [None, Some(0), Some(13), Some(1_234_567_890), Some(u64::MAX)];
    let server = HeaderValue::from_static("megaconn");
    let header_sets: Vec<HeaderMap> = [
        &[][..],
        &[("content-type", "text/plain; charset=utf-8")],
        &[("content-length", "5")],
        &[("content-length", "x5")],
        &[("content-length", "7"), ("content-length", "9")],
        &[("transfer-encoding", "chunked")],
        &[("connection", "close")],
        &[("connection", "x-hop, Keep-Alive")],
        &[("date", "today"), ("x-a", "1")],
        &[("server", "mine")],
        &[
            ("pragma", "no-cache"),
            ("x-long-name-here", "v"),
            ("expires", "0"),
        ],
        &[
            ("content-type", "a"),
            ("x-b", "b"),
            ("content-length", "10"),
        ],
    ]
    .iter()
    .map(|fields| map(fields))
    .collect();
    let mut checked = 0;
    for status in statuses {
        for version in [Version::HTTP_10, Version::HTTP_11] {
            for (is_head, keep_alive, switching) in
                (0..8).map(|b| (b & 1 != 0, b & 2 != 0, b & 4 != 0))
            {
                for body_length in hints {
                    for server_header in [None, Some(&server)] {
                        for headers in &header_sets {
                            let ctx = HeadContext {
                                request_method_is_head: is_head,
                                request_version: version,
                                keep_alive,
                                body_length,
                                switching,
                            };
                            assert_eq!(
                                encoded(status, headers, ctx, server_header),
                                reference(status, headers, ctx, server_header),
                                "{status} {ctx:?} server {server_header:?} headers {headers:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 9 * 2 * 8 * 5 * 2 * 12);
}
