//! The answer's way from a handler's `Response` to the socket (session 56,
//! issue 15: the response head encoded into the connection's write buffer,
//! the body's frames after it, the header maps handed on from a written
//! response to the next request): at the edges a change there touches,
//! over real sockets, one worker, byte for byte.
//!
//! - a body larger than the write buffer and its high-water mark, in one
//!   chunk and in many, alone and behind other answers;
//! - `HEAD`: the length the full answer would have, no body, and the
//!   connection's next answer intact after it;
//! - a response with many headers (more than a kept map holds), repeated
//!   names in order, and the request after it seeing its own headers only;
//! - a handler that keeps its request's headers after answering, while
//!   the worker serves more requests (whose maps are the thread's spare
//!   ones);
//! - a pipelined batch whose answers mix all of these.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common;

use common::{read_response_buffered, RawResponse, TestBody};

/// Far above the connection's write buffer and its high-water mark
/// (64 KiB, `proto/http1/exchange.rs`), so that a body goes out in many
/// writes, some of them while the rest waits in the buffer.
const LARGE: usize = 1 << 20;

/// More headers than a map the worker keeps for a later request may hold
/// (`proto/http1/header_maps.rs`, 32).
const MANY: usize = 40;

/// The bytes of a body of `n` bytes: not one byte repeated, so that a
/// byte out of place (a chunk sent twice, or dropped) shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The headers a handler saw, in order, as `name=value;...`.
fn fields(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v.as_bytes())))
        .collect::<Vec<_>>()
        .join(";")
}

/// The maps `/keep` kept, each as [`fields`] gave it when it was kept.
type Kept = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// Routes:
/// - `/big/N`: `N` bytes ([`pattern`]) in one `Bytes`;
/// - `/chunks/N/K`: the same in `K` frames, of unknown length (chunked);
/// - `/many/N`: `N` headers `x-h-<i>: v<i>`, then `x-rep` three times;
/// - `/seen`: the request's own headers ([`fields`]), in the response's
///   map taken from the request's (emptied, as the demo's `GET /`);
/// - `/keep`: keeps the request's map (moved out of the request, the
///   request dropped) and answers; `/kept` answers every kept map as it
///   is now, `fields` as kept and as now, side by side.
fn app(kept: Kept) -> impl megaconn::HttpService<Future: 'static, ResBody: 'static> + Clone + Send {
    tower::service_fn(move |mut req: Request<megaconn::Body>| {
        let kept = kept.clone();
        async move {
            let path = req.uri().path().to_string();
            let mut parts = path.trim_start_matches('/').split('/');
            let route = parts.next().unwrap_or("");
            let mut n = || {
                parts
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            let response = match route {
                "big" => common::full(StatusCode::OK, pattern(n())),
                "chunks" => {
                    let (len, k) = (n(), n().max(1));
                    let body = Bytes::from(pattern(len));
                    let step = len.div_ceil(k).max(1);
                    let frames: Vec<Result<_, megaconn::BoxError>> = (0..len)
                        .step_by(step)
                        .map(|at| Ok(http_body::Frame::data(body.slice(at..(at + step).min(len)))))
                        .collect();
                    Response::new(
                        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
                    )
                }
                "many" => {
                    let mut r = common::full(StatusCode::OK, "many");
                    let h = r.headers_mut();
                    for i in 0..n() {
                        h.insert(
                            http::HeaderName::try_from(format!("x-h-{i}")).unwrap(),
                            HeaderValue::from_str(&format!("v{i}")).unwrap(),
                        );
                    }
                    for v in ["a", "b", "c"] {
                        h.append("x-rep", HeaderValue::from_static(v));
                    }
                    r
                }
                "seen" => {
                    let text = fields(req.headers());
                    let mut r = common::full(StatusCode::OK, text);
                    std::mem::swap(r.headers_mut(), req.headers_mut());
                    r.headers_mut().clear();
                    r.headers_mut()
                        .insert("content-type", HeaderValue::from_static("text/plain"));
                    r
                }
                "keep" => {
                    let map = std::mem::take(req.headers_mut());
                    drop(req);
                    kept.lock().unwrap().push((fields(&map), map));
                    common::full(StatusCode::OK, "kept")
                }
                "kept" => {
                    let text = kept
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(then, map)| format!("{then} | {}", fields(map)))
                        .collect::<Vec<_>>()
                        .join("\n");
                    common::full(StatusCode::OK, text)
                }
                _ => common::full(StatusCode::NOT_FOUND, "not found"),
            };
            Ok::<Response<TestBody>, Infallible>(response)
        }
    })
}

/// A server (one worker) serving [`app`], and its kept maps.
fn server() -> (common::AppServer, Kept) {
    let kept = Kept::default();
    let server = common::AppServer::one_worker(megaconn::Server::builder(), app(kept.clone()));
    (server, kept)
}

/// A request's header fields beside its `Host`: name and value.
type Fields = &'static [(&'static str, &'static str)];

/// `GET`/`HEAD` of `path` with `fields`, as bytes.
fn request(method: &str, path: &str, fields: &[(&str, &str)]) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    for (name, value) in fields {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw
}

/// Asserts `got` is a `200` whose body is `body`, framed by a
/// `content-length` of `length` (`None`: chunked), with a `date`.
fn assert_answer(got: &RawResponse, body: &[u8], length: Option<usize>, what: &str) {
    assert_eq!(got.status, 200, "{what}");
    assert_eq!(got.body.len(), body.len(), "{what}: body length");
    assert!(got.body == body, "{what}: the body's bytes differ");
    let sent_length = got
        .header("content-length")
        .map(|v| v.parse::<usize>().unwrap());
    assert_eq!(sent_length, length, "{what}: content-length");
    if length.is_none() {
        assert_eq!(got.header("transfer-encoding"), Some("chunked"), "{what}");
    }
    assert!(got.header("date").is_some(), "{what}: no date");
    assert_eq!(got.header("connection"), None, "{what}: keep-alive");
}

/// A body larger than the write buffer and its high-water mark goes out
/// whole and in order: in one chunk, in many, and in one chunk behind a
/// small answer still buffered; the connection serves on after each.
#[tokio::test]
async fn a_body_larger_than_the_write_buffer_goes_out_whole() {
    let (server, _) = server();
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    let large = pattern(LARGE);
    for path in [format!("/big/{LARGE}"), format!("/chunks/{LARGE}/9")] {
        s.write_all(request("GET", &path, &[]).as_bytes())
            .await
            .unwrap();
        let got = read_response_buffered(&mut s, &mut buf, false).await;
        let length = path.starts_with("/big").then_some(LARGE);
        assert_answer(&got, &large, length, &path);
    }
    let both = request("GET", "/big/13", &[]) + &request("GET", &format!("/big/{LARGE}"), &[]);
    s.write_all(both.as_bytes()).await.unwrap();
    let small = read_response_buffered(&mut s, &mut buf, false).await;
    assert_answer(&small, &pattern(13), Some(13), "the small answer before");
    let got = read_response_buffered(&mut s, &mut buf, false).await;
    assert_answer(&got, &large, Some(LARGE), "the large answer behind it");
    s.write_all(request("GET", "/big/5", &[]).as_bytes())
        .await
        .unwrap();
    let after = read_response_buffered(&mut s, &mut buf, false).await;
    assert_answer(&after, &pattern(5), Some(5), "the answer after");
    assert!(buf.is_empty(), "{} bytes more than the answers", buf.len());
    assert!(server.stop().await);
}

/// `HEAD` answers the length the full answer would have and no body
/// (large, small, none, or of unknown length), and the next answer on the
/// connection is whole: no byte of a body it did not send went out.
#[tokio::test]
async fn a_head_request_gets_the_length_and_no_body() {
    let (server, _) = server();
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    for (path, length) in [
        (format!("/big/{LARGE}"), Some(LARGE.to_string())),
        ("/big/13".to_string(), Some("13".to_string())),
        ("/big/0".to_string(), None),
        ("/chunks/100/3".to_string(), None),
    ] {
        s.write_all(request("HEAD", &path, &[]).as_bytes())
            .await
            .unwrap();
        let got = read_response_buffered(&mut s, &mut buf, true).await;
        assert_eq!(got.status, 200, "HEAD {path}");
        assert_eq!(
            got.header("content-length").map(str::to_owned),
            length,
            "HEAD {path}"
        );
        assert_eq!(got.header("transfer-encoding"), None, "HEAD {path}");
        s.write_all(request("GET", "/big/7", &[]).as_bytes())
            .await
            .unwrap();
        let next = read_response_buffered(&mut s, &mut buf, false).await;
        assert_answer(
            &next,
            &pattern(7),
            Some(7),
            &format!("the GET after HEAD {path}"),
        );
        assert!(
            buf.is_empty(),
            "HEAD {path}: {} bytes of a body went out",
            buf.len()
        );
    }
    assert!(server.stop().await);
}

/// A response with more headers than a kept map holds goes out with
/// every one, repeated names in their order; the requests after it (whose
/// maps may be that response's, or any the worker kept) see exactly the
/// headers they sent.
#[tokio::test]
async fn a_response_with_many_headers_keeps_them_all_and_leaks_none() {
    let (server, _) = server();
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    for many in [MANY, 3, MANY] {
        s.write_all(request("GET", &format!("/many/{many}"), &[]).as_bytes())
            .await
            .unwrap();
        let got = read_response_buffered(&mut s, &mut buf, false).await;
        assert_answer(&got, b"many", Some(4), "/many");
        let own: Vec<(String, String)> = got
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("x-"))
            .cloned()
            .collect();
        let mut want: Vec<(String, String)> = (0..many)
            .map(|i| (format!("x-h-{i}"), format!("v{i}")))
            .collect();
        want.extend(["a", "b", "c"].map(|v| ("x-rep".to_string(), v.to_string())));
        assert_eq!(own, want, "the handler's headers, in order");
        for sent in [&[][..], &[("X-One", "1"), ("X-Two", "2")][..]] {
            s.write_all(request("GET", "/seen", sent).as_bytes())
                .await
                .unwrap();
            let seen = read_response_buffered(&mut s, &mut buf, false).await;
            let mut want = "host=t".to_string();
            for (n, v) in sent {
                want.push_str(&format!(";{}={v}", n.to_ascii_lowercase()));
            }
            assert_eq!(
                String::from_utf8_lossy(&seen.body),
                want,
                "after /many/{many}"
            );
            let x: Vec<_> = seen
                .headers
                .iter()
                .filter(|(n, _)| n.starts_with("x-"))
                .collect();
            assert!(
                x.is_empty(),
                "a request's headers reached its answer: {x:?}"
            );
        }
    }
    assert!(server.stop().await);
}

/// A handler that keeps its request's header map after answering holds
/// what the request sent, unchanged, while the worker serves many more
/// requests (each request's map a spare one of the thread's, and each
/// answer's map given back to it) on this connection and another.
#[tokio::test]
async fn a_handler_that_keeps_its_requests_headers_keeps_them_intact() {
    let (server, kept) = server();
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut t = TcpStream::connect(server.addr()).await.unwrap();
    let (mut buf, mut tbuf) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let value = format!("kept-{i}");
        s.write_all(request("GET", "/keep", &[("X-Kept", &value), ("Accept", "*/*")]).as_bytes())
            .await
            .unwrap();
        let got = read_response_buffered(&mut s, &mut buf, false).await;
        assert_answer(&got, b"kept", Some(4), "/keep");
        // Other requests in between, on both connections, whose headers
        // and answers take and give the worker's spare maps.
        let between = request("GET", "/seen", &[("X-Other", "o")])
            + &request("GET", "/many/3", &[])
            + &request("GET", "/seen", &[]);
        t.write_all(between.as_bytes()).await.unwrap();
        for _ in 0..3 {
            let got = read_response_buffered(&mut t, &mut tbuf, false).await;
            assert_eq!(got.status, 200);
        }
    }
    s.write_all(request("GET", "/kept", &[]).as_bytes())
        .await
        .unwrap();
    let got = read_response_buffered(&mut s, &mut buf, false).await;
    let lines: Vec<String> = String::from_utf8_lossy(&got.body)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 20);
    for (i, line) in lines.iter().enumerate() {
        let want = format!("host=t;x-kept=kept-{i};accept=*/*");
        assert_eq!(
            line,
            &format!("{want} | {want}"),
            "kept map {i}: as kept | as now"
        );
    }
    assert_eq!(kept.lock().unwrap().len(), 20);
    assert!(server.stop().await);
}

/// One write of requests whose answers mix sizes and framings (empty,
/// small, large in one chunk, chunked, `HEAD` of a large one, many
/// headers, the request's own headers): answered in order, each whole,
/// and the connection serves on after the batch.
#[tokio::test]
async fn a_pipelined_batch_of_mixed_answers_is_answered_in_order() {
    let (server, _) = server();
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    let batch: Vec<(&str, String, Fields)> = vec![
        ("GET", "/big/0".into(), &[]),
        ("GET", "/big/13".into(), &[("X-A", "1")]),
        ("HEAD", format!("/big/{LARGE}"), &[]),
        ("GET", "/big/200000".into(), &[]),
        ("GET", format!("/many/{MANY}"), &[]),
        ("GET", "/chunks/100000/7".into(), &[]),
        ("GET", "/seen".into(), &[("X-B", "2"), ("X-C", "3")]),
        ("GET", "/big/70000".into(), &[]),
        ("HEAD", "/big/5".into(), &[]),
        ("GET", "/big/1".into(), &[]),
        ("GET", "/seen".into(), &[]),
    ];
    for round in 0..3 {
        let raw: String = batch.iter().map(|(m, p, f)| request(m, p, f)).collect();
        s.write_all(raw.as_bytes()).await.unwrap();
        for (method, path, sent) in &batch {
            let what = format!("round {round}: {method} {path}");
            let head = *method == "HEAD";
            let got = read_response_buffered(&mut s, &mut buf, head).await;
            let n: usize = path
                .rsplit('/')
                .nth(usize::from(path.starts_with("/chunks")))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match path.split('/').nth(1) {
                Some("big") if head => {
                    assert_eq!(got.status, 200, "{what}");
                    assert_eq!(
                        got.header("content-length"),
                        Some(&*n.to_string()),
                        "{what}"
                    );
                }
                Some("big") => assert_answer(&got, &pattern(n), Some(n), &what),
                Some("chunks") => assert_answer(&got, &pattern(n), None, &what),
                Some("many") => {
                    assert_answer(&got, b"many", Some(4), &what);
                    let count = got
                        .headers
                        .iter()
                        .filter(|(n, _)| n.starts_with("x-"))
                        .count();
                    assert_eq!(count, MANY + 3, "{what}");
                }
                _ => {
                    let mut want = "host=t".to_string();
                    for (n, v) in *sent {
                        want.push_str(&format!(";{}={v}", n.to_ascii_lowercase()));
                    }
                    assert_answer(&got, want.as_bytes(), Some(want.len()), &what);
                }
            }
        }
        assert!(
            buf.is_empty(),
            "round {round}: {} bytes after the batch's answers",
            buf.len()
        );
    }
    assert!(server.stop().await);
}
