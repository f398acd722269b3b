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
    let mut s = server
        .connect_sending(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
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
    let mut s = server
        .connect_sending(
            b"GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /status/202 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
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
    let mut s = server
        .connect_sending(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .await;
    let mut buf = Vec::new();
    let interim = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(interim.status, 100);
    s.write_all(b"ping").await.unwrap();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ping");

    // A handler that never reads the body: no 100, the final answer, then close.
    let mut s = server.connect_sending(b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n").await;
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
    let mut s = server.connect_sending(b"GET / HTTP/1.0\r\n\r\n").await;
    let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"));
    assert!(raw.contains("connection: close"));

    let mut s = server
        .connect_sending(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
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
    let mut s = server.connect_sending(b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly",).await;
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
    // The drain waits for an open tunnel (up to `shutdown_timeout`).
    drop(s);
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
    let server = common::AppServer::one_worker(megaconn::Server::builder(), service);
    let addr = server.addr();

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
    server.summary().await;
}

/// A request's header map is a written response's, reused
/// (`proto/http1/header_maps.rs`): each request on a keep-alive connection
/// must see its own headers and nothing of the responses before it (each
/// with six headers no request sends), one request at a time and
/// pipelined, on one worker (one pool of maps).
#[tokio::test]
async fn a_request_sees_only_its_own_headers_when_its_map_is_reused() {
    use bytes::Bytes;
    use http::{HeaderValue, Request, Response};

    let service = tower::service_fn(move |req: Request<megaconn::Body>| {
        let mut seen: Vec<String> = req
            .headers()
            .iter()
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap()))
            .collect();
        seen.sort();
        async move {
            let mut response =
                Response::new(http_body_util::Full::new(Bytes::from(seen.join(","))));
            // Headers no request sends: a reused map that kept them would
            // show them to the next request.
            for i in 0..6 {
                response.headers_mut().insert(
                    http::HeaderName::from_bytes(format!("x-resp-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("from-a-response"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let server = common::AppServer::one_worker(megaconn::Server::builder(), service);
    let addr = server.addr();

    let request = |i: usize| format!("GET /{i} HTTP/1.1\r\nHost: t\r\nX-Req: {i}\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let mut i = 0;
    while i < 40 {
        // One request at a time, then a pipelined batch of 2 to 4.
        let batch = if i % 2 == 0 { 1 } else { 2 + i % 3 };
        let raw: String = (i..i + batch).map(request).collect();
        s.write_all(raw.as_bytes()).await.unwrap();
        for j in i..i + batch {
            let r = read_response_buffered(&mut s, &mut buf, false).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                format!("host=t,x-req={j}"),
                "the headers request {j} saw"
            );
        }
        i += batch;
    }
    server.summary().await;
}

/// A server for the tests below, whose handlers do what the test app's
/// cannot: set their own `Connection`, answer `CONNECT`, send trailers,
/// name a request's (`/request-trailers`: the body's trailer fields, sorted).
/// Routes: `/conn-close` (`Connection: x-hop, close`) · `/conn-upgrade`
/// (426 with `Connection: upgrade`) · `/slow-after-body` (reads the body,
/// then takes a second) · `/echo` · `/pending-body` (the head at once, the
/// body when `release` is notified) · `/103` · `/x-then-echo` (a chunk, then
/// the request body) · `/trailers` · `/host` (the Host the handler saw) ·
/// `/read-then-hold` (reads the body until it pauses for 50 ms, gives up
/// that wait and keeps the body, unread, until `release`; answers the
/// bytes it read) ·
/// `CONNECT` (200 and an echo tunnel; a body of unknown length to
/// `chunked.example`).
struct Review {
    server: common::AppServer,
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl std::ops::Deref for Review {
    type Target = common::AppServer;

    fn deref(&self) -> &common::AppServer {
        &self.server
    }
}

/// How long `/slow-after-body` takes after reading the body.
const SLOW_HANDLER: std::time::Duration = std::time::Duration::from_secs(1);

impl Review {
    async fn start(builder: megaconn::Builder) -> Review {
        use bytes::Bytes;
        use common::{full, TestBody};
        use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
        use http_body_util::{BodyExt, BodyStream, StreamBody};
        use std::sync::Arc;

        let release = Arc::new(tokio::sync::Notify::new());
        let service = {
            let release = release.clone();
            tower::service_fn(move |mut req: Request<megaconn::Body>| {
                let release = release.clone();
                let fut: std::pin::Pin<
                    Box<
                        dyn std::future::Future<
                            Output = Result<Response<TestBody>, std::convert::Infallible>,
                        >,
                    >,
                > = Box::pin(async move {
                    if req.method() == Method::CONNECT {
                        let on_upgrade = req.extensions_mut().remove::<megaconn::OnUpgrade>();
                        tokio::task::spawn_local(async move {
                            let mut io = on_upgrade
                                .expect("CONNECT carries OnUpgrade")
                                .await
                                .unwrap();
                            let mut buf = [0u8; 64];
                            loop {
                                let n = io.read(&mut buf).await.unwrap_or(0);
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        });
                        if req.uri().host() == Some("chunked.example") {
                            let chunks = futures_util::stream::iter(Vec::<
                                Result<http_body::Frame<Bytes>, megaconn::BoxError>,
                            >::new(
                            ));
                            return Ok(Response::new(StreamBody::new(chunks).boxed_unsync()));
                        }
                        return Ok(full(StatusCode::OK, ""));
                    }
                    let res = match req.uri().path() {
                        "/conn-close" => {
                            let mut r = full(StatusCode::OK, "bye");
                            r.headers_mut().insert(
                                header::CONNECTION,
                                HeaderValue::from_static("x-hop, close"),
                            );
                            r
                        }
                        "/conn-upgrade" => {
                            let mut r = full(StatusCode::UPGRADE_REQUIRED, "");
                            r.headers_mut()
                                .insert(header::UPGRADE, HeaderValue::from_static("foo/2"));
                            r.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                            r
                        }
                        "/slow-after-body" => {
                            let n = req.into_body().collect().await.unwrap().to_bytes().len();
                            // The slowness under test: a handler busy for
                            // longer than read_timeout after the body is in.
                            tokio::time::sleep(SLOW_HANDLER).await;
                            full(StatusCode::OK, n.to_string())
                        }
                        "/read-then-hold" => {
                            let mut body = req.into_body();
                            let mut read = 0;
                            let pause = std::time::Duration::from_millis(50);
                            while let Ok(Some(Ok(frame))) =
                                tokio::time::timeout(pause, body.frame()).await
                            {
                                read += frame.into_data().map_or(0, |d| d.len());
                            }
                            release.notified().await;
                            drop(body);
                            full(StatusCode::OK, read.to_string())
                        }
                        "/echo" => Response::new(
                            req.into_body()
                                .map_err(megaconn::BoxError::from)
                                .boxed_unsync(),
                        ),
                        "/pending-body" => {
                            let body = futures_util::stream::once(async move {
                                release.notified().await;
                                Ok::<_, megaconn::BoxError>(http_body::Frame::data(
                                    Bytes::from_static(b"pending-done"),
                                ))
                            });
                            Response::new(StreamBody::new(body).boxed_unsync())
                        }
                        "/103" => {
                            let mut r = full(StatusCode::from_u16(103).unwrap(), "");
                            r.headers_mut()
                                .insert(header::LINK, HeaderValue::from_static("</a.css>"));
                            r
                        }
                        "/x-then-echo" => {
                            use futures_util::StreamExt;
                            let first = futures_util::stream::once(async {
                                Ok::<_, megaconn::BoxError>(http_body::Frame::data(
                                    Bytes::from_static(b"x"),
                                ))
                            });
                            let rest = BodyStream::new(req.into_body());
                            Response::new(StreamBody::new(first.chain(rest)).boxed_unsync())
                        }
                        "/trailers" | "/trailers-undeclared" => {
                            let mut trailers = HeaderMap::new();
                            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
                            trailers.insert("x-undeclared", HeaderValue::from_static("no"));
                            trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
                            trailers.insert(header::HOST, HeaderValue::from_static("evil"));
                            let frames = vec![
                                Ok::<_, megaconn::BoxError>(http_body::Frame::data(
                                    Bytes::from_static(b"hi"),
                                )),
                                Ok(http_body::Frame::trailers(trailers)),
                            ];
                            let mut response = Response::new(
                                StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
                            );
                            if req.uri().path() == "/trailers" {
                                // Declared in two fields, in any case; a
                                // forbidden field stays out even declared.
                                let declared = response.headers_mut();
                                declared.append(
                                    header::TRAILER,
                                    HeaderValue::from_static("X-Checksum, bad name"),
                                );
                                declared.append(
                                    header::TRAILER,
                                    HeaderValue::from_static("content-length"),
                                );
                            }
                            response
                        }
                        "/host" => {
                            let host = req.headers().get(header::HOST).cloned();
                            full(
                                StatusCode::OK,
                                host.map(|h| Bytes::copy_from_slice(h.as_bytes()))
                                    .unwrap_or_default(),
                            )
                        }
                        "/request-trailers" => {
                            let body = req.into_body().collect().await.unwrap();
                            let mut names: Vec<String> = body
                                .trailers()
                                .into_iter()
                                .flat_map(|t| t.keys().map(|n| n.to_string()))
                                .collect();
                            names.sort();
                            full(StatusCode::OK, names.join(","))
                        }
                        _ => full(StatusCode::NOT_FOUND, "not found"),
                    };
                    Ok(res)
                });
                fut
            })
        };
        Review {
            server: common::AppServer::one_worker(builder, service),
            release,
        }
    }

    async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr()).await.unwrap()
    }

    /// A fresh connection that has sent `bytes` ([`common::sent`]).
    async fn connect_sending(&self, bytes: impl AsRef<[u8]>) -> tokio::net::TcpStream {
        common::sent(self.connect().await, bytes).await
    }

    async fn stop(self) {
        // A handler still waiting would hold up the graceful shutdown.
        self.release.notify_waiters();
        self.server.summary().await;
    }
}

/// Reads until `buf` holds a whole response head; returns the head (as text)
/// and leaves what follows it in `buf`.
async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
    read_until(s, buf, b"\r\n\r\n").await;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    String::from_utf8(buf.drain(..end).collect()).unwrap()
}

/// Reads (bounded) until `buf` contains `needle`.
async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    tokio::time::timeout(common::SAFETY, async {
        while !buf.windows(needle.len()).any(|w| w == needle) {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {:?}: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("timed out reading");
}

/// A handler's `Connection: close` closes the connection after its response,
/// and says so; its other connection options are passed on, and do not close.
#[tokio::test]
async fn a_handlers_connection_header_is_honoured() {
    let server = Review::start(megaconn::Server::builder()).await;
    let mut s = server
        .connect_sending(b"GET /conn-close HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: x-hop\r\n"), "{head}");
    buf.extend(read_to_close(&mut s).await);
    assert_eq!(buf, b"bye");

    let mut s = server.connect_sending(b"GET /conn-upgrade HTTP/1.1\r\nHost: t\r\n\r\nGET /host HTTP/1.1\r\nHost: again\r\n\r\n",).await;
    let mut buf = Vec::new();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("connection"), Some("upgrade"));
    assert_eq!(r.header("upgrade"), Some("foo/2"));
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.body, b"again");
    server.stop().await;
}

/// `read_timeout` bounds reading the request; once the body is in, a handler
/// that takes longer than it is not cut off with a 408.
#[tokio::test]
async fn read_timeout_stops_once_the_body_is_read() {
    let read_timeout = std::time::Duration::from_millis(300);
    assert!(SLOW_HANDLER > read_timeout * 3);
    let server = Review::start(megaconn::Server::builder().read_timeout(Some(read_timeout))).await;
    let mut s = server
        .connect_sending(
            b"POST /slow-after-body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"5");
    // The same with a chunked body.
    s.write_all(b"POST /slow-after-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"3");
    server.stop().await;
}

/// `write_timeout` runs from the response head: while the head waits for the
/// request body (the client waits for `100 Continue`, the response body
/// streams the request), it is no 408 "read_timeout".
#[tokio::test]
async fn write_timeout_does_not_run_while_the_head_waits_for_the_body() {
    let write_timeout = std::time::Duration::from_millis(300);
    let server =
        Review::start(megaconn::Server::builder().write_timeout(Some(write_timeout))).await;
    let mut s = server
        .connect_sending(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .await;
    let mut buf = Vec::new();
    let interim = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(interim.status, 100);
    // Nothing more may come while we hold the body back, well past the
    // write timeout.
    assert_nothing_comes(&mut s, write_timeout * 3).await;
    s.write_all(b"ping").await.unwrap();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ping");
    server.stop().await;
}

/// A 2xx to `CONNECT` opens a tunnel (RFC 9110 §9.3.6): no body framing
/// headers and no `connection: close` on it, whatever the handler's body.
#[tokio::test]
async fn connect_2xx_has_no_framing_headers() {
    let server = Review::start(megaconn::Server::builder()).await;
    for target in ["proxy.example:443", "chunked.example:443"] {
        let mut s = server
            .connect_sending(
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            )
            .await;
        let mut buf = Vec::new();
        let head = read_head(&mut s, &mut buf).await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        for name in ["content-length", "transfer-encoding", "connection"] {
            assert!(!head.contains(&format!("\r\n{name}:")), "{target}: {head}");
        }
        assert!(buf.is_empty(), "{target}: bytes after the head: {buf:?}");
        s.write_all(b"through the tunnel").await.unwrap();
        read_until(&mut s, &mut buf, b"through the tunnel").await;
        assert_eq!(buf, b"through the tunnel");
    }
    server.stop().await;
}

/// A request pipelined behind one whose handler still runs is answered even
/// though the client half-closed after sending both; then the connection
/// closes.
#[tokio::test]
async fn a_pipelined_request_survives_the_clients_half_close() {
    let server = Review::start(megaconn::Server::builder()).await;
    let mut s = server.connect_sending(b"GET /pending-body HTTP/1.1\r\nHost: t\r\n\r\nGET /host HTTP/1.1\r\nHost: second\r\n\r\n",).await;
    s.shutdown().await.unwrap();
    // The first response's head is out: its body waits for `release`, with
    // the second request (and the EOF behind it) already sent.
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    server.release.notify_one();
    buf.extend(read_to_close(&mut s).await);
    let rest = String::from_utf8(buf).unwrap();
    assert!(
        rest.starts_with("c\r\npending-done\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{rest}"
    );
    assert!(rest.ends_with("\r\n\r\nsecond"), "{rest}");
    server.stop().await;
}

/// A handler's 1xx other than 101 is no final response: 500, and close.
#[tokio::test]
async fn an_informational_final_status_becomes_500() {
    let server = Review::start(megaconn::Server::builder()).await;
    let mut s = server
        .connect_sending(b"GET /103 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(read_to_close(&mut s).await.is_empty());
    server.stop().await;
}

/// `100 Continue` never follows the final response head: a response that
/// starts before it reads the held-back body does without it.
#[tokio::test]
async fn no_100_continue_after_the_response_head() {
    let server = Review::start(megaconn::Server::builder()).await;
    let mut s = server.connect_sending(b"POST /x-then-echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",).await;
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"\r\n\r\n1\r\nx\r\n").await;
    // The client may send the body anyway (RFC 9110 §10.1.1); the handler
    // reads it.
    s.write_all(b"ping").await.unwrap();
    buf.extend(read_to_close(&mut s).await);
    let raw = String::from_utf8(buf).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.contains("100 Continue"), "{raw}");
    assert!(
        raw.ends_with("\r\n\r\n1\r\nx\r\n4\r\nping\r\n0\r\n\r\n"),
        "{raw}"
    );
    server.stop().await;
}

/// Response trailers go out as hyper sends them: only to a client that said
/// `TE: trailers`, only the fields the response declared in its `Trailer`
/// header (none when it declared none), and never the fields a trailer must
/// not carry (RFC 9110 §6.5.1).
#[tokio::test]
async fn trailers_only_when_asked_declared_and_never_forbidden_fields() {
    let server = Review::start(megaconn::Server::builder()).await;
    let get = |path: &str, te: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{te}Connection: close\r\n\r\n")
    };
    let te = "TE: trailers\r\n";
    for (request, end) in [
        (get("/trailers", ""), "0\r\n\r\n"),
        (get("/trailers", te), "0\r\nx-checksum: abc\r\n\r\n"),
        (get("/trailers-undeclared", te), "0\r\n\r\n"),
    ] {
        let mut s = server.connect_sending(request.as_bytes()).await;
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        let want = format!("\r\n\r\n2\r\nhi\r\n{end}");
        assert!(raw.ends_with(&want), "{request}: {raw}");
    }
    server.stop().await;
}

/// Request trailers reach the handler without the fields a trailer must
/// not carry (RFC 9110 §6.5.1: framing, routing, ...), as responses send
/// none: dropped, as the RFC allows. Before, a `Content-Length`,
/// `Transfer-Encoding` or `Host` sent after the body was handed over, to a
/// handler that might merge it into the head.
#[tokio::test]
async fn request_trailers_reach_the_handler_without_forbidden_fields() {
    let server = Review::start(megaconn::Server::builder()).await;
    for (trailers, seen) in [
        (
            "X-Checksum: abc\r\nContent-Length: 99\r\nTransfer-Encoding: gzip\r\n\
             Host: evil.example\r\nX-Other: 1\r\n",
            "x-checksum,x-other",
        ),
        ("Content-Length: 1\r\nHost: evil.example\r\n", ""),
    ] {
        let mut s = server.connect().await;
        let request = format!(
            "POST /request-trailers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n2\r\nhi\r\n0\r\n{trailers}\r\n"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
        assert!(
            raw.ends_with(&format!("\r\n\r\n{seen}")),
            "{trailers}: {raw}"
        );
    }
    server.stop().await;
}

/// An absolute-form target's authority is the request's host: the Host
/// header is ignored and replaced (RFC 9112 §3.2.2), userinfo left out.
#[tokio::test]
async fn absolute_form_authority_replaces_host() {
    let server = Review::start(megaconn::Server::builder()).await;
    for (target, host) in [
        ("http://real.example:8080/host", "real.example:8080"),
        ("http://user@real.example/host", "real.example"),
    ] {
        let mut s = server
            .connect_sending(
                format!("GET {target} HTTP/1.1\r\nHost: other.example\r\n\r\n").as_bytes(),
            )
            .await;
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200);
        assert_eq!(String::from_utf8_lossy(&r.body), host, "{target}");
    }
    server.stop().await;
}

/// A handler streaming back a request body the client broke (a bad chunk
/// size, or more than `max_body_bytes`): its response body fails because
/// the request's did. That is the client's doing, counted and logged (rate
/// limited) when the request body failed: the connection closes for that
/// reason, not as a server error with a warning per request (a peer could
/// flood the log with them).
#[tokio::test]
async fn a_response_body_failing_with_the_request_body_is_not_a_server_error() {
    let server =
        TestServer::start(megaconn::Server::builder().workers(1).max_body_bytes(1024)).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    )
    .await
    .unwrap();
    read_to_close(&mut s).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut request = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n".to_vec();
    request.resize(request.len() + 4096, b'x');
    s.write_all(&request).await.unwrap();
    read_to_close(&mut s).await;
    server.wait_stats("both closed", |s| s.closed == 2).await;
    let stats = server.handle.stats();
    assert_eq!(common::closed_as(&stats, "server_error"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 2, "{stats:?}");
    server.stop().await;
}

/// The write stall bound of the tests below: long against a steady
/// reader's 10 ms between reads.
const STALL_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// More than the kernel holds of a response (`tcp_wmem`'s 4 MiB and a
/// small receive buffer): the write lasts the whole test.
const LARGE: usize = 8 << 20;

/// A server whose HTTP/1.1 response writes stall for [`STALL_BOUND`] at
/// most (the test app, `write_timeout` off).
async fn stall_bounded() -> TestServer {
    TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_body_bytes(LARGE as u64)
            .write_stall_timeout(Some(STALL_BOUND)),
    )
    .await
}

/// A connection with a small receive buffer (4 KiB asked), so that the
/// response backs up soon.
async fn small_window(server: &TestServer, recv_buffer: u32) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// A client that asks for a large response and never reads it is closed
/// once the response's write has stalled for `write_stall_timeout`,
/// counted as a timeout and by close reason (`write_timeout`): both where
/// the connection writes what an exchange left (a body of one frame,
/// `/big`) and where the exchange writes while the body streams (`/echo`
/// of a large upload, which the server stops reading once its write
/// waits). Before, both waited for good, each holding its task, its
/// buffers and the kernel's send buffer (nginx closes such a client after
/// `send_timeout`, 60 s).
#[tokio::test]
async fn a_client_that_never_reads_its_response_is_closed_when_the_write_stalls() {
    let server = stall_bounded().await;
    let began = tokio::time::Instant::now();
    let mut big = small_window(&server, 4096).await;
    big.write_all(format!("GET /big/{LARGE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let echo = small_window(&server, 4096).await;
    let (_unread, mut write) = echo.into_split();
    let uploader = tokio::spawn(async move {
        let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {LARGE}\r\n\r\n");
        write.write_all(head.as_bytes()).await.unwrap();
        // Fails once the server closes the connection.
        let _ = write.write_all(&vec![b'y'; LARGE]).await;
    });
    server
        .wait_stats("both closed", |s| {
            s.connections_open == 0 && common::closed_as(s, "write_timeout") == 2
        })
        .await;
    assert!(began.elapsed() >= STALL_BOUND, "{:?}", began.elapsed());
    assert_eq!(server.handle.stats().timeouts, 2);
    uploader.abort();
    server.assert_healthy().await;
    drop(big);
    assert_eq!(server.stop().await.forced, 0);
}

/// A client that pipelines bodiless requests (HEAD) and never reads the
/// answers is held back, its answers unwritten past the exchange's
/// high-water mark (64 KiB) before the next request is read, and closed
/// once that write has stalled for `write_stall_timeout`, counted as a
/// timeout, as a large response is. Its writes end mid-request, so the
/// server never finds its read buffer empty. Before, it read and answered
/// every request into its write buffer, which grew without limit (the
/// exchange's mark held back only response bodies) and whose writes had
/// no bound: all 200,000 answered (~26 MB held) and the connection open.
#[tokio::test]
async fn pipelined_heads_never_read_are_held_back_and_closed_when_the_write_stalls() {
    const STALL: std::time::Duration = std::time::Duration::from_secs(1);
    const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n";
    const SENT: usize = 200_000;
    // 36 requests (1,008 bytes) a write, each write CUT bytes into a request.
    const PER_WRITE: usize = 36 * HEAD.len();
    const CUT: usize = 10;
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .write_stall_timeout(Some(STALL))
            // The kernel holds 128 KiB of answers (twice this), not the
            // megabytes it autotunes to.
            .send_buffer_size(Some(64 << 10)),
    )
    .await;
    let began = tokio::time::Instant::now();
    let client = small_window(&server, 4096).await;
    // Each write goes at once, not held for the last one's ACK (Nagle).
    client.set_nodelay(true).unwrap();
    let (_unread, mut write) = client.into_split();
    let open = |s: &megaconn::ServerStats| s.connections_open > 0;
    server.wait_stats("accepted", open).await;
    let mut stream = HEAD.repeat(SENT);
    stream.extend_from_slice(&HEAD[..CUT]);
    write.write_all(&stream[..CUT]).await.unwrap();
    let mut at = CUT;
    while at < stream.len() {
        let end = (at + PER_WRITE).min(stream.len());
        if write.write_all(&stream[at..end]).await.is_err() {
            break;
        }
        at = end;
        // The next write waits until the server has answered every whole
        // request so far (or closed): each of its reads then ends where a
        // write did, mid-request. (A read that happened to end with a
        // request would let the flush between requests, which was
        // bounded, run.)
        let whole = (at / HEAD.len()) as u64;
        let mut stats = server.handle.stats();
        while stats.requests < whole && open(&stats) {
            tokio::task::yield_now().await;
            stats = server.handle.stats();
        }
        if !open(&stats) {
            break;
        }
    }
    server
        .wait_stats("closed", |s| {
            !open(s) && common::closed_as(s, "write_timeout") == 1
        })
        .await;
    let stats = server.handle.stats();
    assert!(began.elapsed() >= STALL, "{:?}", began.elapsed());
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    // Held back: answers up to the mark and what the kernel holds (~1,500
    // of ~130 bytes), closed while the client still sent.
    assert!(at < stream.len(), "all sent");
    assert!(
        stats.requests < 10_000,
        "{} of {SENT} requests answered",
        stats.requests
    );
    server.assert_healthy().await;
    assert_eq!(server.stop().await.forced, 0);
}

/// 20,000 requests pipelined in one write, GETs and HEADs in turn, are all
/// answered in order to a client that reads as it writes: holding the
/// answers back once they pass the high-water mark, until the client takes
/// them, loses and reorders none.
#[tokio::test]
async fn twenty_thousand_pipelined_requests_are_answered_in_order() {
    const N: usize = 20_000;
    let server = TestServer::default().await;
    let (mut read, mut write) = server.connect().await.into_split();
    let requests: Vec<u8> = (0..N)
        .flat_map(|i| {
            let method = if i % 2 == 0 { "GET" } else { "HEAD" };
            format!("{method} /big/{} HTTP/1.1\r\nHost: t\r\n\r\n", i % 100).into_bytes()
        })
        .collect();
    let writer = tokio::spawn(async move {
        write.write_all(&requests).await.unwrap();
        write
    });
    let mut buf = Vec::new();
    for i in 0..N {
        let head = i % 2 == 1;
        let r = read_response_buffered(&mut read, &mut buf, head).await;
        assert_eq!(r.status, 200, "response {i}");
        let length = (i % 100).to_string();
        assert_eq!(
            r.header("content-length"),
            Some(length.as_str()),
            "response {i}"
        );
        let body = if head { 0 } else { i % 100 };
        assert_eq!(r.body.len(), body, "response {i}");
    }
    assert!(buf.is_empty(), "{} bytes more", buf.len());
    drop(writer.await.unwrap());
    assert_eq!(server.handle.stats().requests, N as u64);
    server.stop().await;
}

/// A client that reads its large response slowly but steadily (1 KiB every
/// 10 ms, for three bounds) is not cut off by the write stall bound: the
/// bytes it takes restart it, as the kernel's count of acknowledged bytes
/// shows when the bound passes (tokio writes again only once a third of
/// the send buffer, which autotunes to megabytes, has drained: not within
/// a bound at this pace).
#[tokio::test]
async fn a_client_reading_its_response_slowly_but_steadily_is_not_cut_off() {
    let server = stall_bounded().await;
    let mut s = small_window(&server, 16 << 10).await;
    s.write_all(format!("GET /big/{LARGE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let read = common::read_steadily(&mut s, 3 * STALL_BOUND).await;
    let stats = server.handle.stats();
    assert!(read.is_ok(), "closed after {read:?} bytes: {stats:?}");
    assert_eq!(stats.timeouts, 0);
    assert_eq!(stats.connections_open, 1, "still open");
    drop(s);
    server.stop().await;
}

/// The bound of a handler's wait for request body bytes in the tests
/// below (`idle_timeout`, with `read_timeout` off as by default).
const BODY_STALL: std::time::Duration = std::time::Duration::from_millis(300);

/// A server whose handlers' waits for body bytes are bounded by
/// [`BODY_STALL`] (the test app).
async fn body_stall_bounded() -> TestServer {
    let builder = megaconn::Server::builder().workers(1);
    TestServer::start(builder.idle_timeout(Some(BODY_STALL))).await
}

/// Asserts that nothing comes on `s` (no byte, no close) for `lasting`:
/// the only outcome here is the wait running out.
async fn assert_nothing_comes(s: &mut tokio::net::TcpStream, lasting: std::time::Duration) {
    let mut chunk = [0u8; 256];
    let waited = tokio::time::timeout(lasting, s.read(&mut chunk)).await;
    assert!(
        waited.is_err(),
        "the server answered or closed: {:?}",
        waited.map(|n| String::from_utf8_lossy(&chunk[..n.unwrap_or(0)]).into_owned())
    );
}

/// With `read_timeout` off, `idle_timeout` bounds a handler's wait for
/// request body bytes that do not come, as nginx's `client_body_timeout`:
/// a client that sends a head announcing a body and then nothing, or half
/// a chunked body and then nothing, gets `408` and the connection closes,
/// counted as a timeout (close reason `read_timeout`). Before, the
/// connection and its task waited for good (`read_timeout` is off by
/// default, and a connection mid-request is not idle).
#[tokio::test]
async fn idle_timeout_fails_a_request_body_that_never_comes() {
    let server = body_stall_bounded().await;
    for request in [
        "POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n",
        "POST /collect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let mut s = server.connect_sending(request.as_bytes()).await;
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(raw.starts_with("HTTP/1.1 408 "), "{request}: {raw}");
        assert!(raw.contains("idle_timeout"), "{raw}");
    }
    server
        .wait_stats("both closed", |s| common::closed_as(s, "read_timeout") == 2)
        .await;
    assert_eq!(server.handle.stats().timeouts, 2);
    server.assert_healthy().await;
    server.stop().await;
}

/// A handler waiting for body bytes that do not come costs nothing while
/// it waits: the bound's first version woke the connection at every poll of
/// the empty body (a response body streaming the request's runs in the
/// connection's task), a spin at
/// 100 % CPU until `idle_timeout` passed. Counted in polls of the body,
/// not in time: a spin polls it without end; a connection that sleeps
/// polls it once or twice.
#[tokio::test]
async fn a_handler_waiting_for_a_stalled_body_is_not_polled_in_a_loop() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// The request body, its polls counted.
    struct Counted(megaconn::Body, Arc<AtomicU64>);
    impl http_body::Body for Counted {
        type Data = bytes::Bytes;
        type Error = <megaconn::Body as http_body::Body>::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.0).poll_frame(cx)
        }
    }

    let polls = Arc::new(AtomicU64::new(0));
    let counter = polls.clone();
    // An echo: the request body streams into the response's, which the
    // connection polls in its own task.
    let app = tower::service_fn(move |req: http::Request<megaconn::Body>| {
        let counted = Counted(req.into_body(), counter.clone());
        async move { Ok::<_, std::convert::Infallible>(http::Response::new(counted)) }
    });
    let builder = megaconn::Server::builder()
        .workers(1)
        .idle_timeout(Some(std::time::Duration::from_secs(30)));
    let server = common::AppServer::start(builder.listen_on("127.0.0.1:0".parse().unwrap()), app);
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    // The handler has had its 10 bytes and waits for more.
    let deadline = tokio::time::Instant::now() + common::SAFETY;
    while polls.load(Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler never read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // A window to watch in, not a synchronisation: nothing is sent in it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let seen = polls.load(Ordering::Relaxed);
    assert!(
        seen < 20,
        "the body was polled {seen} times while nothing came"
    );
    // The rest of the body is still served.
    s.write_all(&[b'x'; 990]).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.body.len(), 1000);
    assert!(server.stop().await, "the server stops");
}

/// A slow but steady upload, 3 bytes every 100 ms for 3 s, is not cut by
/// an `idle_timeout` of 1.2 s: each byte received restarts the bound (without
/// the restart it would pass twice over). The bound is 12 times the pace, so
/// that a writer the machine delays is not taken for a stall (the test
/// checks the restart, not the scheduler).
#[tokio::test]
async fn idle_timeout_spares_a_slow_but_steady_upload() {
    let builder = megaconn::Server::builder().workers(1);
    let server = TestServer::start(builder.idle_timeout(Some(BODY_STALL * 4))).await;
    let mut s = server.connect().await;
    let mut request = b"POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 90\r\n\r\n".to_vec();
    let head = request.len();
    request.resize(head + 90, b'u');
    let cuts: Vec<usize> = (1..30).map(|i| head + 3 * i).collect();
    // The pace of a slow uploader (not a synchronisation).
    common::write_in_pieces(&mut s, &request, &cuts, BODY_STALL / 3).await;
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"90");
    assert_eq!(server.handle.stats().timeouts, 0);
    server.stop().await;
}

/// Only a wait for body bytes is bounded: a handler that read what came,
/// gave up its wait for more (a timeout of its own) and holds the body
/// while it does something else is not cut, however long the client sends
/// nothing; it answers when it is done.
#[tokio::test]
async fn idle_timeout_spares_a_handler_that_stops_reading() {
    let server = Review::start(megaconn::Server::builder().idle_timeout(Some(BODY_STALL))).await;
    let mut s = server
        .connect_sending(
            b"POST /read-then-hold HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await;
    // Nothing may come, for well over the bound.
    assert_nothing_comes(&mut s, BODY_STALL * 4).await;
    assert_eq!(server.handle.stats().timeouts, 0);
    server.release.notify_one();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"10");
    drop(s);
    server.stop().await;
}

/// A body the handler left unread is drained after its response, so that
/// the connection can serve the next request; a client that announced one
/// and never sends it had the connection wait for good. Now the drain is
/// bounded as a handler's wait would be: the connection closes after
/// `idle_timeout` (no `408`: the response went out).
#[tokio::test]
async fn idle_timeout_closes_a_connection_whose_unread_body_never_comes() {
    let server = body_stall_bounded().await;
    let mut s = server
        .connect_sending(b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        .await;
    assert_eq!(read_response(&mut s).await.status, 200);
    // Then nothing: closed.
    assert!(read_to_close(&mut s).await.is_empty());
    drop(s);
    server
        .wait_stats("closed", |s| common::closed_as(s, "read_timeout") == 1)
        .await;
    assert_eq!(server.handle.stats().timeouts, 1);
    server.stop().await;
}

/// Drops counted, for [`a_responses_parts_are_each_dropped_once`].
struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A response extension whose drops are counted.
#[derive(Clone)]
struct CountedExtension {
    _drops: std::sync::Arc<Counted>,
}

/// A body of one frame whose drops are counted.
struct CountedBody {
    data: Option<bytes::Bytes>,
    _drops: Counted,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .data
                .take()
                .map(|d| Ok(http_body::Frame::data(d))),
        )
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// HTTP/1.1 takes a handler's response apart where its poll left it, field
/// by field (`exchange.rs`, `ResponseHead::take`): on every path (a body
/// written, a HEAD's and a 204's body dropped unsent, a head held for
/// `100 Continue`, a 1xx answered 500) the response's body and its
/// extensions are dropped exactly once, none leaked or dropped twice, and
/// a handler's error (a response never made) is answered 500.
#[tokio::test]
async fn a_responses_parts_are_each_dropped_once() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let bodies = Arc::new(AtomicUsize::new(0));
    let extensions = Arc::new(AtomicUsize::new(0));
    let service = {
        let (bodies, extensions) = (bodies.clone(), extensions.clone());
        tower::service_fn(move |req: http::Request<megaconn::Body>| {
            let (bodies, extensions) = (bodies.clone(), extensions.clone());
            async move {
                let status = match req.uri().path() {
                    "/204" => http::StatusCode::NO_CONTENT,
                    "/103" => http::StatusCode::EARLY_HINTS,
                    "/error" => return Err("the handler fails"),
                    _ => http::StatusCode::OK,
                };
                let mut response = http::Response::new(CountedBody {
                    data: Some(bytes::Bytes::from_static(b"counted")),
                    _drops: Counted(bodies),
                });
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert("x-kept", http::HeaderValue::from_static("yes"));
                response.extensions_mut().insert(CountedExtension {
                    _drops: Arc::new(Counted(extensions)),
                });
                Ok::<_, &'static str>(response)
            }
        })
    };
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        service,
    );
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut served = 0;
    let check = |served: usize| {
        assert_eq!(bodies.load(SeqCst), served, "bodies dropped");
        assert_eq!(extensions.load(SeqCst), served, "extensions dropped");
    };
    // A body written; a HEAD's and a 204's dropped unsent.
    for (request, status, body) in [
        (
            &b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            200,
            &b"counted"[..],
        ),
        (b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", 200, b""),
        (b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n", 204, b""),
    ] {
        s.write_all(request).await.unwrap();
        let head = request.starts_with(b"HEAD");
        let r = read_response_buffered(&mut s, &mut buf, head).await;
        assert_eq!((r.status, &r.body[..]), (status, body));
        assert_eq!(r.header("x-kept"), Some("yes"));
        served += 1;
        check(served);
    }
    // The head held until the handler's body gives its first frame, while
    // the client waits for `100 Continue` (the body here does not read the
    // request's: it is not sent, and the connection closes after).
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let r = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"counted"[..]));
    served += 1;
    check(served);
    // A 1xx is answered 500, its response dropped there; a handler's
    // error is answered 500 with nothing of a response to drop. Each on a
    // connection of its own: both close it.
    for (request, dropped) in [
        (&b"GET /103 HTTP/1.1\r\nHost: t\r\n\r\n"[..], 1),
        (b"GET /error HTTP/1.1\r\nHost: t\r\n\r\n", 0),
    ] {
        let mut s = tokio::net::TcpStream::connect(server.addrs[0])
            .await
            .unwrap();
        s.write_all(request).await.unwrap();
        let r = read_response_buffered(&mut s, &mut Vec::new(), false).await;
        assert_eq!(r.status, 500);
        served += dropped;
        check(served);
    }
    assert!(server.stop().await);
    check(served);
}

/// A handler whose future answers and then panics in its own drop: the
/// response it gave is dropped once as that panic unwinds (its body and
/// extension counted), not leaked, and the server goes on serving.
#[tokio::test]
async fn a_response_is_dropped_when_its_handlers_future_panics_in_its_drop() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    /// Answers its response at the first poll; panics when dropped.
    struct AnswersThenPanics(Option<http::Response<CountedBody>>);
    impl std::future::Future for AnswersThenPanics {
        type Output = Result<http::Response<CountedBody>, std::convert::Infallible>;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            std::task::Poll::Ready(Ok(self.0.take().expect("polled once")))
        }
    }
    impl Drop for AnswersThenPanics {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("the handler's future panics in its drop (on purpose)");
            }
        }
    }
    let bodies = Arc::new(AtomicUsize::new(0));
    let extensions = Arc::new(AtomicUsize::new(0));
    let service = {
        let (bodies, extensions) = (bodies.clone(), extensions.clone());
        tower::service_fn(move |_: http::Request<megaconn::Body>| {
            let mut response = http::Response::new(CountedBody {
                data: Some(bytes::Bytes::from_static(b"counted")),
                _drops: Counted(bodies.clone()),
            });
            response.extensions_mut().insert(CountedExtension {
                _drops: Arc::new(Counted(extensions.clone())),
            });
            AnswersThenPanics(Some(response))
        })
    };
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        service,
    );
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // The connection ends (its task's panic is caught); nothing hangs.
    let _ = read_to_close(&mut s).await;
    assert_eq!(bodies.load(SeqCst), 1, "bodies dropped");
    assert_eq!(extensions.load(SeqCst), 1, "extensions dropped");
    assert!(server.stop().await);
}

/// A body whose `size_hint` panics (the handler's code, run by HTTP/1.1
/// outside the handler's poll, where it reads the response in place:
/// `exchange.rs`, `start_response`): the response is dropped once as that
/// panic unwinds, its body and extension counted, not leaked, and the
/// server goes on serving.
#[tokio::test]
async fn a_response_is_dropped_when_its_bodys_size_hint_panics() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    /// A counted body whose size hint panics.
    struct PanicsInSizeHint(CountedBody);
    impl http_body::Body for PanicsInSizeHint {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_frame(cx)
        }
        fn size_hint(&self) -> http_body::SizeHint {
            panic!("the body's size_hint panics (on purpose)")
        }
    }
    let bodies = Arc::new(AtomicUsize::new(0));
    let extensions = Arc::new(AtomicUsize::new(0));
    let service = {
        let (bodies, extensions) = (bodies.clone(), extensions.clone());
        tower::service_fn(move |_: http::Request<megaconn::Body>| {
            let mut response = http::Response::new(PanicsInSizeHint(CountedBody {
                data: Some(bytes::Bytes::from_static(b"counted")),
                _drops: Counted(bodies.clone()),
            }));
            response.extensions_mut().insert(CountedExtension {
                _drops: Arc::new(Counted(extensions.clone())),
            });
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        })
    };
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        service,
    );
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // The connection ends (its task's panic is caught); nothing hangs.
    let _ = read_to_close(&mut s).await;
    assert_eq!(bodies.load(SeqCst), 1, "bodies dropped");
    assert_eq!(extensions.load(SeqCst), 1, "extensions dropped");
    // The worker goes on: a second connection is served (and closed) too.
    let mut s = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let _ = read_to_close(&mut s).await;
    assert_eq!(bodies.load(SeqCst), 2, "bodies dropped");
    assert_eq!(extensions.load(SeqCst), 2, "extensions dropped");
    assert!(server.stop().await);
}
