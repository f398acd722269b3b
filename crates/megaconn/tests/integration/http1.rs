//! HTTP/1.1 behaviour over real sockets: keep-alive, pipelining, chunked in both
//! directions, HEAD, 204/304, 100-continue, HTTP/1.0, upgrade, and a real client.

use crate::common;

use common::{read_response, read_response_buffered, read_to_close, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"Hello, World!");
        assert!(r.header("connection").is_none());
        assert!(r.header("date").is_some());
    }
    assert_eq!(server.handle.stats().accepted, 1);
    server.stop().await;
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut s).await;
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains("connection: close\r\n"));
    assert!(text.ends_with("Hello, World!"));
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /status/202 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let statuses_and_bodies = [
        (201, &b""[..]),
        (200, &b"hello"[..]),
        (202, &b""[..]),
        (200, &b"Hello, World!"[..]),
    ];
    for (status, body) in statuses_and_bodies {
        let r = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(r.status, status);
        assert_eq!(r.body, body);
    }
    server.stop().await;
}

#[tokio::test]
async fn chunked_request_with_trailers_and_chunked_response() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello world");

    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"one,two,three");
    server.stop().await;
}

#[tokio::test]
async fn head_204_and_304_have_no_body() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    let mut buf = Vec::new();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let r = read_response_buffered(&mut s, &mut buf, true).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("13"));
    for code in [204u16, 304] {
        s.write_all(format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(r.status, code);
        if code == 204 {
            assert!(r.header("content-length").is_none());
        }
    }
    // Nothing stray on the wire: the next response parses cleanly.
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.body, b"Hello, World!");
    assert!(buf.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_sent_only_when_the_body_is_read() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let interim = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(interim.status, 100);
    s.write_all(b"ping").await.unwrap();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ping");

    // A handler that never reads the body: no 100, the final answer, then close.
    let mut s = server.connect().await;
    s.write_all(b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.contains("100 Continue"));
    assert!(raw.contains("connection: close"));
    server.stop().await;
}

#[tokio::test]
async fn unread_body_is_drained_and_the_connection_reused() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    let body = vec![b'x'; 10_000];
    let mut req = format!(
        "POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.body, b"ignored");
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.body, b"Hello, World!");
    server.stop().await;
}

#[tokio::test]
async fn http_1_0_closes_unless_keep_alive_is_asked() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"));
    assert!(raw.contains("connection: close"));

    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.header("connection"), Some("keep-alive"));
    // Unknown length on HTTP/1.0: close-delimited.
    s.write_all(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(raw.contains("connection: close"));
    assert!(!raw.contains("transfer-encoding"));
    assert!(raw.ends_with("one,two,three"));
    server.stop().await;
}

#[tokio::test]
async fn upgrade_hands_over_the_raw_connection() {
    let server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("echo"));
    // Bytes sent right behind the request reach the new protocol first.
    while buf.len() < 5 {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&buf[..5], b"early");
    s.write_all(b"raw bytes").await.unwrap();
    let mut echoed = [0u8; 9];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"raw bytes");
    server.stop().await;
}

#[tokio::test]
async fn a_real_client_gets_answers() {
    let server = TestServer::default().await;
    let client = reqwest::Client::new();
    let r = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello, World!");
    let big = "z".repeat(300_000);
    let r = client
        .post(server.url("/echo"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), big);
    let r = client
        .post(server.url("/collect"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "300000");
    server.stop().await;
}

/// Request heads are sliced out of the connection's read buffer, not copied
/// (`proto/http1/head.rs`): the target and header values share the buffer's
/// allocation. A handler that keeps them past its request (here, every one)
/// must see them unchanged, and the requests after it on the same connection,
/// read into what is left of that buffer or into a new one, must parse right:
/// heads of growing size, one at a time and pipelined, well past one
/// buffer's 8 KiB.
#[tokio::test]
async fn header_values_kept_by_a_handler_stay_intact_across_later_requests() {
    use bytes::Bytes;
    use http::{HeaderValue, Request, Response, Uri};
    use std::sync::{Arc, Mutex};

    let kept: Arc<Mutex<Vec<(Uri, HeaderValue)>>> = Arc::default();
    let service = {
        let kept = kept.clone();
        tower::service_fn(move |req: Request<megaconn::Body>| {
            let tag = req.headers()["x-tag"].clone();
            kept.lock().unwrap().push((req.uri().clone(), tag.clone()));
            async move {
                let body = http_body_util::Full::new(Bytes::copy_from_slice(tag.as_bytes()));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        })
    };
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .listen()
        .unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(server.serve(service));

    let tag = |i: usize| format!("tag-{i}-{}", "x".repeat(i % 97 * 3));
    let request = |i: usize| {
        format!(
            "GET /p/{i}?q={i} HTTP/1.1\r\nHost: t\r\nX-Tag: {}\r\n\r\n",
            tag(i)
        )
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let mut i = 0;
    while i < 300 {
        // One request, then a pipelined batch of 1 to 5, and so on.
        let batch = if i % 2 == 0 { 1 } else { 1 + i % 5 };
        let raw: String = (i..i + batch).map(request).collect();
        s.write_all(raw.as_bytes()).await.unwrap();
        for j in i..i + batch {
            let r = read_response_buffered(&mut s, &mut buf, false).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body, tag(j).as_bytes(), "response {j}");
        }
        i += batch;
    }
    let kept = kept.lock().unwrap().clone();
    assert_eq!(kept.len(), i);
    for (j, (uri, value)) in kept.iter().enumerate() {
        assert_eq!(uri, format!("/p/{j}?q={j}").as_str(), "kept target {j}");
        assert_eq!(value, tag(j).as_str(), "kept header value {j}");
    }
    handle.shutdown();
    task.await.unwrap().unwrap();
}
