//! Table-driven malformed input: each case is sent raw over a real socket, the
//! exact status (or a close without a response) is asserted, and the server must
//! still serve a normal request afterwards.

use crate::common;

use common::{read_to_close, TestServer};
use tokio::io::AsyncWriteExt;

/// What the server must do with a malformed request.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Answer with this status, then close.
    Status(u16),
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// Half-close our side after sending (premature EOF cases).
    half_close: bool,
    expect: Expect,
}

fn case(name: &'static str, request: impl AsRef<[u8]>, expect: Expect) -> Case {
    Case {
        name,
        request: request.as_ref().to_vec(),
        half_close: false,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::Status;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(70 * 1024));
    // A request line that has not ended by max_header_bytes (64 KiB).
    let endless_line = format!("GET /{}", "a".repeat(70 * 1024));
    // Each header well under the limit, together over it.
    let big_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..99)
            .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(1024)))
            .collect::<String>()
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let ext_abuse = format!(
        "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        (0..20)
            .map(|_| format!("1;{}\r\nx\r\n", "e".repeat(1000)))
            .collect::<String>()
    );
    let mut v = vec![
        // Request line
        case("garbage request line", "GARBAGE\r\n\r\n", Status(400)),
        case("method only", "GET\r\n\r\n", Status(400)),
        case("double space in request line", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("trailing junk after version", "GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", Status(400)),
        // 505 only for a well-formed HTTP-version with another major number;
        // a malformed request line is a 400 (RFC 9112 §2.3, §3).
        case("HTTP/2.0 version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", Status(505)),
        case("HTTP/0.9 version", "GET / HTTP/0.9\r\nHost: a\r\n\r\n", Status(505)),
        case("HTTP/3.0 version", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", Status(505)),
        case("not HTTP", "GET / FOO/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("non-digit minor version", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", Status(400)),
        case("lowercase HTTP-name", "GET / http/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("two-digit minor version", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", Status(400)),
        case("version without dot", "GET / HTTP/11\r\nHost: a\r\n\r\n", Status(400)),
        case("space after HTTP/1.2", "GET / HTTP/1.2 \r\nHost: a\r\n\r\n", Status(400)),
        case("NUL in target", "GET /\0x HTTP/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("target without slash", "GET foo HTTP/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("asterisk target on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", Status(400)),
        case("CONNECT with a path", "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", Status(400)),
        // RFC 9112 §3: a request-target too long to parse gets 414.
        case("oversized URI", long_uri, Status(414)),
        case("request line without an end", endless_line, Status(414)),
        // Header syntax
        case("space in header name", "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", Status(400)),
        case("space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", Status(400)),
        case("header without colon", "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", Status(400)),
        case("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", Status(400)),
        case("NUL in header value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n", Status(400)),
        case("control char in header name", "GET / HTTP/1.1\r\nHost: a\r\nX\x01A: b\r\n\r\n", Status(400)),
        case("bare CR in header value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", Status(400)),
        case("oversized header", big_header, Status(431)),
        case("too many headers", many_headers, Status(431)),
        case("headers together too large", big_headers, Status(431)),
        // Host
        case("missing Host on HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", Status(400)),
        case("duplicate Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Status(400)),
        // An invalid Host value (RFC 9112 §3.2: MUST 400). Host = uri-host [":" port].
        case("space in Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Status(400)),
        case("slash in Host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Status(400)),
        case("userinfo in Host", "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", Status(400)),
        case("non-digit port in Host", "GET / HTTP/1.1\r\nHost: a:xyz\r\n\r\n", Status(400)),
        case("two ports in Host", "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", Status(400)),
        case("unclosed IP literal in Host", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Status(400)),
        case("bad IPv6 literal in Host", "GET / HTTP/1.1\r\nHost: [::g]:80\r\n\r\n", Status(400)),
        case("bad percent-encoding in Host", "GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", Status(400)),
        case(
            "invalid Host with absolute-form target",
            "GET http://a/ HTTP/1.1\r\nHost: a b\r\n\r\n",
            Status(400),
        ),
        case(
            "absolute-form target without Host (RFC 9112 §3.2)",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            Status(400),
        ),
        case("invalid Host in HTTP/1.0", "GET / HTTP/1.0\r\nHost: a@b\r\n\r\n", Status(400)),
        // Framing
        case(
            "Content-Length with Transfer-Encoding",
            "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "duplicate Content-Length (same value)",
            "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            Status(400),
        ),
        case(
            "duplicate Content-Length (different values)",
            "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            Status(400),
        ),
        case("Content-Length list", "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", Status(400)),
        case("non-numeric Content-Length", "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", Status(400)),
        case("negative Content-Length", "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Status(400)),
        case("signed Content-Length", "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", Status(400)),
        case(
            "absurd Content-Length",
            "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            Status(400),
        ),
        case(
            "Content-Length over max_body_bytes",
            "POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n",
            Status(413),
        ),
        case(
            "Transfer-Encoding not ending in chunked",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            Status(400),
        ),
        case(
            "unsupported transfer coding",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            Status(501),
        ),
        case(
            "chunked twice",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            "POST /collect HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Status(400),
        ),
        case("unsupported Expect", "GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n", Status(417)),
        // Chunked bodies (reported to the handler, which answers 400)
        case(
            "bad chunk size",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "chunk size overflow",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "chunk data without CRLF",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "bare LF after chunk size",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            Status(400),
        ),
        case("chunk extension abuse", ext_abuse, Status(400)),
        // Chunk extensions follow RFC 9112 §7.1.1:
        // *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ).
        case(
            "unclosed quote in chunk extension",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "stray word in chunk extension",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b c@d\r\nhello\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "chunk extension without a name",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "junk after chunk size",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "form feed after chunk size",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\x0c\r\nhello\r\n0\r\n\r\n",
            Status(400),
        ),
        case(
            "control byte in chunk extension",
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\x01\r\nabc\r\n0\r\n\r\n",
            Status(400),
        ),
    ];
    v.push(Case {
        name: "premature EOF in Content-Length body",
        request: b"POST /collect HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        half_close: true,
        expect: Status(400),
    });
    v.push(Case {
        name: "premature EOF in chunked body",
        request: b"POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
            .to_vec(),
        half_close: true,
        expect: Status(400),
    });
    v
}

#[tokio::test]
async fn malformed_requests_get_the_right_status_and_the_server_lives() {
    let server = TestServer::default().await;
    let all = cases();
    assert!(all.len() >= 30, "the table has {} cases", all.len());
    let mut failures = Vec::new();
    for c in &all {
        let mut s = server.connect().await;
        s.write_all(&c.request).await.unwrap();
        if c.half_close {
            s.shutdown().await.unwrap();
        }
        let got = read_to_close(&mut s).await;
        let text = String::from_utf8_lossy(&got);
        let Expect::Status(code) = c.expect;
        let want = format!("HTTP/1.1 {code} ");
        if !text.starts_with(&want) {
            failures.push(format!(
                "{}: want {want:?}, got {:?}",
                c.name,
                text.lines().next().unwrap_or("<nothing>")
            ));
        } else if !text.to_ascii_lowercase().contains("connection: close") {
            failures.push(format!(
                "{}: response does not say connection: close",
                c.name
            ));
        }
        server.assert_healthy().await;
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
    assert!(server.handle.stats().protocol_errors >= 30);
    server.stop().await;
}

/// With max_header_bytes above the 65534 bytes the http crate's `Uri` takes,
/// a longer target is still 414 (the crate's `TooLong`), not 400.
#[tokio::test]
async fn a_target_longer_than_a_uri_can_be_gets_414() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_header_bytes(256 * 1024),
    )
    .await;
    let mut s = server.connect().await;
    let request = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(70 * 1024));
    s.write_all(request.as_bytes()).await.unwrap();
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 414 "),
        "{:?}",
        text.lines().next()
    );
    server.assert_healthy().await;
    server.stop().await;
}

/// What the strict rules must still let through: a later HTTP/1 minor version
/// (served as HTTP/1.1, RFC 9110 §2.5), Host values the grammar allows, and
/// chunk extensions in every form of RFC 9112 §7.1.1. Each on one connection,
/// followed by a second request to show the framing held.
#[tokio::test]
async fn strict_but_not_too_strict() {
    let server = TestServer::default().await;
    let chunked = |line: &str| {
        format!(
            "POST /collect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{line}\r\nhello\r\n0\r\n\r\n"
        )
    };
    let accepted: Vec<(&str, String, &[u8])> = vec![
        (
            "HTTP/1.2",
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n".into(),
            b"Hello, World!",
        ),
        (
            "HTTP/1.9",
            "GET / HTTP/1.9\r\nHost: a\r\n\r\n".into(),
            b"Hello, World!",
        ),
        (
            "empty port",
            "GET / HTTP/1.1\r\nHost: a:\r\n\r\n".into(),
            b"Hello, World!",
        ),
        (
            "IPv6 host",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n".into(),
            b"Hello, World!",
        ),
        (
            "sub-delims host",
            "GET / HTTP/1.1\r\nHost: a-b.c_d~e!$&'()*+,;=%41\r\n\r\n".into(),
            b"Hello, World!",
        ),
        (
            "empty Host",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n".into(),
            b"Hello, World!",
        ),
        ("bare extension", chunked("5;a"), b"5"),
        ("token extension with BWS", chunked("5 ; a = b ;c"), b"5"),
        ("quoted extension", chunked("5;a=\"x \\\" ;y\""), b"5"),
    ];
    for (name, request, body) in accepted {
        let mut s = server.connect().await;
        s.write_all(request.as_bytes()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let r = common::read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(
            r.status,
            200,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.body, body, "{name}");
        assert!(r.header("connection").is_none(), "{name}: kept alive");
        let r = common::read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(r.body, b"Hello, World!", "{name}: the next request");
    }
    server.stop().await;
}

/// A chunked body that breaks its framing's limits (a size line over
/// 4 KiB, extensions over 16 KiB, more than 32 trailers) is counted and
/// logged as malformed whether the handler reads it or leaves it to be
/// drained: `POST /ignore-body` answers without reading, and the drain
/// that met the error gave the body up silently, closing as `unread_body`
/// with no `protocol_errors` and no `limit_hits{malformed_request}` (the
/// same bytes to a handler that reads were both).
#[tokio::test]
async fn a_malformed_chunked_body_nobody_reads_is_counted_as_malformed() {
    let server = TestServer::default().await;
    let extension = format!(";e={}", "v".repeat(3000));
    let trailers: String = (0..40).map(|i| format!("T{i}: v\r\n")).collect();
    let bodies = [
        format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(5000)),
        format!("{}0\r\n\r\n", format!("1{extension}\r\na\r\n").repeat(7)),
        format!("1\r\na\r\n0\r\n{trailers}\r\n"),
    ];
    for body in &bodies {
        let mut s = server.connect().await;
        let request = format!(
            "POST /ignore-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let out = read_to_close(&mut s).await;
        assert!(
            out.starts_with(b"HTTP/1.1 200 ") && out.ends_with(b"ignored"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    server
        .wait_stats("3 closed", |s| s.closed == bodies.len() as u64)
        .await;
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "protocol_error"), 3, "{stats:?}");
    assert_eq!(common::closed_as(&stats, "unread_body"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 3, "{stats:?}");
    assert!(
        stats.limit_hits.contains(&("malformed_request", 3)),
        "{stats:?}"
    );
    server.stop().await;
}

/// A chunked body over `max_body_bytes` is counted and closed as one over
/// it by its Content-Length is (`protocol_error`, `limit_hits`), while the
/// handler answers the body read's error itself, as under `axum::serve`
/// (here `/collect`, which reads the whole body first, answers `400`;
/// `/echo`'s `200` had begun and is cut); both closed as `unread_body`, a
/// reason that did not say the limit.
#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_is_a_413_and_closes_as_the_limit() {
    let server = TestServer::start(megaconn::Server::builder().max_body_bytes(16)).await;
    let body = format!("20\r\n{}\r\n0\r\n\r\n", "x".repeat(32));
    let mut answers = Vec::new();
    for path in ["/collect", "/echo"] {
        let mut s = server.connect().await;
        let request =
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        s.write_all(request.as_bytes()).await.unwrap();
        answers.push(String::from_utf8(read_to_close(&mut s).await).unwrap());
    }
    assert!(answers[0].starts_with("HTTP/1.1 400 "), "{}", answers[0]);
    assert!(answers[1].starts_with("HTTP/1.1 200 "), "{}", answers[1]);
    server.wait_stats("2 closed", |s| s.closed == 2).await;
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "protocol_error"), 2, "{stats:?}");
    assert_eq!(common::closed_as(&stats, "unread_body"), 0, "{stats:?}");
    assert!(
        stats.limit_hits.contains(&("max_body_bytes", 2)),
        "{stats:?}"
    );
    server.stop().await;
}
