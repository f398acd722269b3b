//! A `304` whose handler attached a body (session 52's review, item 4): the
//! body is not sent, and neither is its length. RFC 9110 §8.6 lets a `304`
//! carry `Content-Length` only as the length the `200` would have, which
//! the server cannot know from a body the handler attached by mistake (or
//! from the header axum's router sets from that body's size); Go sends a
//! `304` with no length and refuses the handler's write. A handler's own
//! `Content-Length` on a `304` is passed through, unless it is the length
//! of the body attached, which is what axum's router sets from that body
//! (`head_304.rs` has the rest of the HEAD and 304 framing, beside
//! `axum::serve`).
//!
//! One connection carries every answer in turn: a body sent after a `304`
//! would be read as the start of the next answer, and fail its parse.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;

use crate::common;
use common::{read_response_buffered, AppServer};

/// `304`s as handlers make them, by path: with a body and no length (its
/// length is then only the body's size hint), with a body and the length
/// axum's router would set from it, with a body and the handler's own
/// length of the full response, with no body and that length, with
/// neither; `/ok` is a plain `200`.
fn app() -> impl megaconn::HttpService + Clone + Send + 'static {
    tower::service_fn(|req: Request<megaconn::Body>| async move {
        let not_modified = |body: &'static str, length: Option<&'static str>| {
            let mut answer = Response::builder().status(StatusCode::NOT_MODIFIED);
            if let Some(length) = length {
                answer = answer.header(header::CONTENT_LENGTH, length);
            }
            answer.body(Full::new(Bytes::from_static(body.as_bytes())))
        };
        let answer = match req.uri().path() {
            "/body" => not_modified("body", None),
            "/body-and-length" => not_modified("body", Some("4")),
            "/body-and-full-length" => not_modified("body", Some("1234")),
            "/length-only" => not_modified("", Some("1234")),
            "/empty" => not_modified("", None),
            _ => Response::builder().body(Full::new(Bytes::from_static(b"ok"))),
        };
        Ok::<_, Infallible>(answer.unwrap())
    })
}

/// The paths of [`app`] and the `content-length` each `304` carries.
const CASES: [(&str, Option<&str>); 5] = [
    ("/body", None),
    ("/body-and-length", None),
    ("/body-and-full-length", Some("1234")),
    ("/length-only", Some("1234")),
    ("/empty", None),
];

#[tokio::test]
async fn a_304_with_a_body_sends_neither_the_body_nor_its_length() {
    let server = AppServer::one_worker(megaconn::Server::builder(), app());
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = Vec::new();
    let mut failures = Vec::new();
    for (path, want) in CASES {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(answer.status, 304, "{path}");
        let got = answer.header("content-length");
        if got != want {
            failures.push(format!("{path}: content-length {got:?}, want {want:?}"));
        }
    }
    // A body sent after the last 304 would come before this answer.
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(server.stop().await, "the server stops");
}

/// The same over HTTP/2 (h2c prior knowledge): `proto/http2.rs`'s
/// `prepare_headers` follows HTTP/1.1's rule for a 304 (before session
/// 53's lead fix, `/body` and `/body-and-length` went out with
/// `content-length: 4`).
#[tokio::test]
async fn a_304_with_a_body_sends_no_length_over_h2() {
    let server = AppServer::one_worker(megaconn::Server::builder(), app());
    let mut client = common::h2c(server.addr()).await;
    let mut failures = Vec::new();
    for (path, want) in CASES {
        let req = Request::get(format!("http://t{path}")).body(()).unwrap();
        let (answer, _) = client.send_request(req, true).unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED, "{path}");
        let got = answer
            .headers()
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().unwrap().to_owned());
        if got.as_deref() != want {
            failures.push(format!("{path}: content-length {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(server.stop().await, "the server stops");
}
