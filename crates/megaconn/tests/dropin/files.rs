//! axum's static-file-server, stream-to-file and multipart-form examples.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use axum::Router;
use futures_util::TryStreamExt;
use tokio::io::AsyncWriteExt;
use tower_http::limit::RequestBodyLimitLayer;

use crate::harness::{ask, client, raw, Answer, Pair};

/// The app's own body limit, as in axum's stream-to-file and multipart-form
/// examples.
const APP_BODY_LIMIT: usize = 250 * 1024 * 1024;
/// The upload those examples are tried with: over megaconn's default
/// `max_body_bytes` (16 MiB), under the app's limit.
const UPLOAD: usize = 50 * 1024 * 1024;

#[tokio::test]
async fn static_files_with_ranges_head_and_304() {
    use tower_http::services::{ServeDir, ServeFile};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<h1>index</h1>\n").unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("data.bin"), &data).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "some notes\n").unwrap();
    let app = Router::new().nest_service(
        "/assets",
        ServeDir::new(dir.path()).not_found_service(ServeFile::new(dir.path().join("index.html"))),
    );
    let pair = Pair::start(app, megaconn::Server::builder()).await;
    let c = client();

    let full = pair.same(&c, &ask("GET", "/assets/data.bin")).await;
    assert_eq!((full.status, full.body.as_slice()), (200, data.as_slice()));
    let modified = full
        .header("last-modified")
        .expect("a validator")
        .to_string();
    let cases = [
        (
            ask("GET", "/assets/data.bin").header("range", "bytes=0-9"),
            206,
        ),
        (
            ask("GET", "/assets/data.bin").header("range", "bytes=-5"),
            206,
        ),
        (
            ask("GET", "/assets/data.bin").header("range", "bytes=2990-"),
            206,
        ),
        (
            ask("GET", "/assets/data.bin").header("range", "bytes=5000-"),
            416,
        ),
        (
            ask("GET", "/assets/data.bin").header("range", "bytes=0-1,4-5"),
            416,
        ),
        (ask("HEAD", "/assets/data.bin"), 200),
        (
            ask("HEAD", "/assets/data.bin").header("range", "bytes=0-9"),
            206,
        ),
        (
            ask("GET", "/assets/data.bin").header("if-modified-since", &modified),
            304,
        ),
        (
            ask("HEAD", "/assets/data.bin").header("if-modified-since", &modified),
            304,
        ),
        (
            ask("GET", "/assets/data.bin")
                .header("if-unmodified-since", "Mon, 01 Jan 1990 00:00:00 GMT"),
            412,
        ),
        (ask("GET", "/assets/"), 200),
        (ask("GET", "/assets/notes.txt"), 200),
        (ask("GET", "/assets/missing.txt"), 404),
        (ask("GET", "/assets/%2e%2e/etc/passwd"), 404),
        (ask("POST", "/assets/notes.txt"), 405),
    ];
    for (a, status) in cases {
        let ours = pair.same(&c, &a).await;
        assert_eq!(ours.status, status, "{a:?}");
    }
    let partial = pair
        .same(
            &c,
            &ask("GET", "/assets/data.bin").header("range", "bytes=0-9"),
        )
        .await;
    assert_eq!(partial.header("content-range"), Some("bytes 0-9/3000"));
    assert_eq!(partial.body, &data[..10]);

    // The framing of HEAD and 304 on the wire, where reqwest would hide it:
    // a length only where the full response would have that length.
    for (req, head) in [
        ("HEAD /assets/data.bin HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), true),
        (
            format!("GET /assets/data.bin HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: {modified}\r\n\r\n"),
            false,
        ),
        (
            format!("HEAD /assets/data.bin HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: {modified}\r\n\r\n"),
            true,
        ),
    ] {
        let theirs = raw(pair.theirs, req.as_bytes(), head).await;
        let ours = raw(pair.ours, req.as_bytes(), head).await;
        assert_eq!(ours, theirs, "{req}");
    }
}

// ---------------------------------------------------------------------------
// stream-to-file: a 50 MB upload to an app with its own 250 MB limit.
// ---------------------------------------------------------------------------

/// Whether `err` (or what caused it) is http-body-util's length-limit error:
/// how axum's extractors and tower-http recognise "too large".
fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Streams the body into `dir/<name>`; 413 (and no partial file) when a
/// body limit ends it.
fn stream_to_file_app(dir: std::path::PathBuf) -> Router {
    async fn save(
        State(dir): State<std::path::PathBuf>,
        Path(name): Path<String>,
        request: Request,
    ) -> Result<String, (StatusCode, String)> {
        if name.contains('/') || name.contains("..") {
            return Err((StatusCode::BAD_REQUEST, "invalid file name".into()));
        }
        let path = dir.join(&name);
        let stream = request
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        let mut reader = tokio_util::io::StreamReader::new(stream);
        let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(&path).await.unwrap());
        match tokio::io::copy(&mut reader, &mut file).await {
            Ok(n) => {
                file.flush().await.unwrap();
                Ok(format!("{name}: {n} bytes"))
            }
            Err(e) => {
                drop(file);
                tokio::fs::remove_file(&path).await.unwrap();
                match e.get_ref() {
                    Some(cause) if is_too_large(cause) => {
                        Err((StatusCode::PAYLOAD_TOO_LARGE, "upload too large".into()))
                    }
                    _ => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
                }
            }
        }
    }
    Router::new()
        .route("/file/{name}", post(save))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(APP_BODY_LIMIT))
        .with_state(dir)
}

/// The upload: a pattern that shows a lost or repeated chunk.
fn upload_bytes() -> Bytes {
    (0..UPLOAD)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// POSTs `data` with a Content-Length, or chunked (1 MiB at a time).
async fn upload(addr: SocketAddr, name: &str, data: &Bytes, chunked: bool) -> Answer {
    let path = format!("/file/{name}");
    let body = if chunked {
        chunked_body(data)
    } else {
        reqwest::Body::from(data.clone())
    };
    send_post(addr, &path, "application/octet-stream", body).await
}

#[tokio::test]
async fn stream_to_file_takes_a_50mb_upload_once_max_body_bytes_allows_it() {
    let data = upload_bytes();
    let dir = tempfile::tempdir().unwrap();
    let (theirs_dir, ours_dir) = (dir.path().join("theirs"), dir.path().join("ours"));
    std::fs::create_dir_all(&theirs_dir).unwrap();
    std::fs::create_dir_all(&ours_dir).unwrap();
    // Raised past the app's own limit, megaconn's limit is out of the way:
    // the app's applies, as under axum::serve.
    let pair = Pair::start_with(
        stream_to_file_app(theirs_dir.clone()),
        stream_to_file_app(ours_dir.clone()),
        megaconn::Server::builder().max_body_bytes(256 << 20),
        false,
    )
    .await;
    for (name, chunked) in [("sized.bin", false), ("chunked.bin", true)] {
        let theirs = upload(pair.theirs, name, &data, chunked).await;
        let ours = upload(pair.ours, name, &data, chunked).await;
        assert_eq!(ours, theirs, "{name}");
        assert_eq!(ours.status, 200, "{ours:?}");
        let saved = std::fs::read(ours_dir.join(name)).unwrap();
        assert!(saved == data, "{name}: the file holds the upload");
        std::fs::remove_file(ours_dir.join(name)).unwrap();
        std::fs::remove_file(theirs_dir.join(name)).unwrap();
    }
    // Over the app's limit with a Content-Length: the app's 413 on both.
    let over = format!(
        "POST /file/big.bin HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        APP_BODY_LIMIT + 1
    );
    let theirs = raw(pair.theirs, over.as_bytes(), false).await;
    let ours = raw(pair.ours, over.as_bytes(), false).await;
    assert_eq!(ours, theirs);
    assert_eq!(ours.status, 413);
}

/// The documented difference: megaconn's own `max_body_bytes` (16 MiB by
/// default) is lower than the app's, and the lower limit wins. A declared
/// length over it is a 413 before the handler runs; a chunked body that
/// passes it mid-stream reaches the handler as http-body-util's
/// `LengthLimitError`, so the app answers 413 and keeps no partial file.
#[tokio::test]
async fn stream_to_file_under_the_default_max_body_bytes_is_a_413() {
    let data = upload_bytes();
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::start(
        stream_to_file_app(dir.path().to_path_buf()),
        megaconn::Server::builder(),
    )
    .await;
    let head =
        format!("POST /file/sized.bin HTTP/1.1\r\nHost: t\r\nContent-Length: {UPLOAD}\r\n\r\n");
    let ours = raw(pair.ours, head.as_bytes(), false).await;
    assert_eq!(ours.status, 413, "{ours:?}");
    assert_eq!(ours.header("connection"), Some("close"));

    let ours = upload(pair.ours, "chunked.bin", &data, true).await;
    assert_eq!(ours.status, 413, "{ours:?}");
    assert_eq!(String::from_utf8_lossy(&ours.body), "upload too large");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no partial file left"
    );
}

// ---------------------------------------------------------------------------
// multipart-form.
// ---------------------------------------------------------------------------

fn multipart_app() -> Router {
    async fn form() -> Html<&'static str> {
        Html(
            r#"<form action="/" method="post" enctype="multipart/form-data">
<input type="file" name="file" multiple><input type="submit" value="Upload"></form>"#,
        )
    }
    async fn accept_form(mut multipart: Multipart) -> Result<String, (StatusCode, String)> {
        let mut out = String::new();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| (e.status(), e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let data = field
                .bytes()
                .await
                .map_err(|e| (e.status(), e.body_text()))?;
            out += &format!(
                "`{name}` ({file_name:?}: {content_type:?}) is {} bytes\n",
                data.len()
            );
        }
        Ok(out)
    }
    Router::new()
        .route("/", get(form).post(accept_form))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(APP_BODY_LIMIT))
}

#[tokio::test]
async fn multipart_form() {
    let pair = Pair::start(multipart_app(), megaconn::Server::builder()).await;
    let c = client();
    let boundary = "XyZ-boundary";
    let file: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nholiday\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let form_type = format!("multipart/form-data; boundary={boundary}");

    let ok = pair
        .same(
            &c,
            &ask("POST", "/")
                .header("content-type", &form_type)
                .body(body.clone()),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&ok.body),
        "`title` (None: None) is 7 bytes\n\
         `file` (Some(\"a.bin\"): Some(\"application/octet-stream\")) is 100000 bytes\n"
    );
    let cut = body[..body.len() - 20].to_vec();
    for a in [
        ask("GET", "/"),
        ask("POST", "/")
            .header("content-type", &form_type)
            .body(cut),
        ask("POST", "/").body(body.clone()),
        ask("POST", "/")
            .header("content-type", "multipart/form-data; boundary=other")
            .body(body),
    ] {
        pair.same(&c, &a).await;
    }
}

/// `body` sent chunked (no length, 1 MiB at a time), as `curl -H
/// 'Transfer-Encoding: chunked' -F file=@big.bin` sends it.
fn chunked_body(body: &Bytes) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, Infallible>> = body
        .chunks(1 << 20)
        .map(|c| Ok(body.slice_ref(c)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// POSTs `body` to `addr/path` and reads the answer.
async fn send_post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: reqwest::Body,
) -> Answer {
    let resp = client()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("a response");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap().to_vec();
    Answer::from_parts(status, &headers, body)
}

/// POSTs `body` to `addr/path` chunked.
async fn post_chunked(addr: SocketAddr, path: &str, content_type: &str, body: &Bytes) -> Answer {
    send_post(addr, path, content_type, chunked_body(body)).await
}

/// A multipart form of one `field` holding `file`.
fn one_file_form(boundary: &str, file: &[u8]) -> Bytes {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body.into()
}

/// Reads every field of a multipart form: `ok`, or axum's answer to the
/// first error (`MultipartError`'s status and text).
async fn accept_multipart(mut multipart: Multipart) -> axum::response::Response {
    use axum::response::IntoResponse;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                if let Err(e) = field.bytes().await {
                    return e.into_response();
                }
            }
            Ok(None) => return "ok".into_response(),
            Err(e) => return e.into_response(),
        }
    }
}

/// A chunked 20 MB multipart upload to an app whose own limit is
/// megaconn's (16 MiB, `RequestBodyLimitLayer`, `DefaultBodyLimit`
/// disabled): axum's `Multipart` answers 413 under both. (It answered 500
/// under megaconn: megaconn's limit fired first, and its
/// `LengthLimitError`, come through the app's `Limited`, sat one
/// `source()` deeper than `Multipart` looks.)
#[tokio::test]
async fn multipart_over_the_limit_chunked_is_a_413_on_both() {
    let app = Router::new()
        .route("/", post(accept_multipart))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(16 << 20));
    let pair = Pair::start(app, megaconn::Server::builder()).await;
    let boundary = "XyZ-boundary";
    let file: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let body = one_file_form(boundary, &file);
    let form_type = format!("multipart/form-data; boundary={boundary}");
    let theirs = post_chunked(pair.theirs, "/", &form_type, &body).await;
    let ours = post_chunked(pair.ours, "/", &form_type, &body).await;
    assert_eq!(theirs.status, 413, "{theirs:?}");
    // Ours closes after the answer (the rest of the body is not read).
    let ours_close = ours.header("connection").map(str::to_owned);
    let mut ours = ours;
    ours.headers.retain(|(n, _)| n != "connection");
    assert_eq!(ours, theirs, "megaconn (left) vs axum::serve");
    assert_eq!(ours_close.as_deref(), Some("close"));
    // The same over h2c.
    let theirs = post_h2c(pair.theirs, "/", &form_type, &body).await;
    let ours = post_h2c(pair.ours, "/", &form_type, &body).await;
    assert_eq!(theirs.0, 413, "{theirs:?}");
    assert_eq!(ours, theirs, "h2c: megaconn (left) vs axum::serve");
}

/// POSTs `body` to `path` over h2c (no length) and returns the status and
/// body of the answer. The sender stops when the server stops taking the
/// body.
async fn post_h2c(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &Bytes,
) -> (u16, Vec<u8>) {
    let client = crate::common::h2c(addr).await;
    let mut client = client.ready().await.expect("client ready");
    let req = axum::http::Request::post(format!("http://localhost{path}"))
        .header("content-type", content_type)
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(req, false).expect("send request");
    let mut rest = body.clone();
    let sender = tokio::spawn(async move {
        while !rest.is_empty() {
            send.reserve_capacity(rest.len().min(1 << 20));
            let n = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ => return,
            };
            let chunk = rest.split_to(n.min(rest.len()));
            if send.send_data(chunk, rest.is_empty()).is_err() {
                return;
            }
        }
    });
    let response = tokio::time::timeout(crate::common::SAFETY, response)
        .await
        .expect("an answer")
        .expect("a response");
    let status = response.status().as_u16();
    let mut recv = response.into_body();
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = recv.data().await {
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    sender.abort();
    (status, out)
}

/// An app whose own limit (`DefaultBodyLimit::max`, 4 MiB here) is above
/// megaconn's `max_body_bytes` (1 MiB here), sent a body with no length
/// (chunked on HTTP/1.1; h2c without `content-length`) between the two:
/// `axum::serve` takes it (`200`); megaconn's limit fires first. axum's
/// `Bytes` and `String` extractors find megaconn's `LengthLimitError` and
/// answer exactly what they answer a body over the app's own limit under
/// `axum::serve` (`413`, same body). `Multipart` cannot (README, "Body
/// limits"): it looks exactly one `source()` under the outer `axum::Error`,
/// where megaconn's error comes wrapped in the app's `Limited` (a
/// second `axum::Error`, which axum makes and megaconn cannot unwrap), and
/// answers `500`. Each protocol and route is checked on its own.
#[tokio::test]
async fn an_app_limit_above_max_body_bytes_is_a_413_but_for_multipart() {
    const APP_LIMIT: usize = 4 << 20;
    const OURS: u64 = 1 << 20;
    let app = Router::new()
        .route(
            "/bytes",
            post(|b: Bytes| async move { b.len().to_string() }),
        )
        .route(
            "/string",
            post(|s: String| async move { s.len().to_string() }),
        )
        .route("/multipart", post(accept_multipart))
        .layer(DefaultBodyLimit::max(APP_LIMIT));
    let pair = Pair::start(app, megaconn::Server::builder().max_body_bytes(OURS)).await;
    let boundary = "XyZ-boundary";
    let form_type = format!("multipart/form-data; boundary={boundary}");
    // Between the limits, and over the app's (what `axum::serve` answers
    // 413 with). Each only a little over the limit that refuses it: a
    // client still sending more than the closing server reads away (its
    // lingering close, 256 KiB on megaconn) may see a reset before the
    // answer.
    let between = one_file_form(boundary, &vec![b'a'; OURS as usize + (100 << 10)]);
    let over_app = one_file_form(boundary, &vec![b'a'; APP_LIMIT + 1]);
    for path in ["/bytes", "/string", "/multipart"] {
        let content_type = if path == "/multipart" {
            form_type.as_str()
        } else {
            "text/plain"
        };
        // HTTP/1.1, chunked.
        let taken = post_chunked(pair.theirs, path, content_type, &between).await;
        assert_eq!(taken.status, 200, "{path}: axum::serve takes it: {taken:?}");
        let theirs = post_chunked(pair.theirs, path, content_type, &over_app).await;
        assert_eq!(
            theirs.status, 413,
            "{path}: axum::serve, over its limit: {theirs:?}"
        );
        let mut ours = post_chunked(pair.ours, path, content_type, &between).await;
        // Ours closes after the answer (the rest of the body is not read).
        assert_eq!(ours.header("connection"), Some("close"), "{path}: {ours:?}");
        ours.headers.retain(|(n, _)| n != "connection");
        if path == "/multipart" {
            assert_eq!(ours.status, 500, "{path}: the documented 500: {ours:?}");
        } else {
            assert_eq!(
                ours, theirs,
                "{path}: megaconn (left) vs axum::serve over its limit"
            );
        }
        // h2c, no content-length.
        let taken = post_h2c(pair.theirs, path, content_type, &between).await;
        assert_eq!(taken.0, 200, "h2c {path}: axum::serve takes it");
        let theirs = post_h2c(pair.theirs, path, content_type, &over_app).await;
        assert_eq!(theirs.0, 413, "h2c {path}: axum::serve, over its limit");
        let ours = post_h2c(pair.ours, path, content_type, &between).await;
        if path == "/multipart" {
            assert_eq!(ours.0, 500, "h2c {path}: the documented 500");
        } else {
            assert_eq!(
                ours, theirs,
                "h2c {path}: megaconn (left) vs axum::serve over its limit"
            );
        }
    }
}

/// axum's consume-body-in-extractor-or-middleware example, its middleware
/// part: `collect()` the body (no limit of its own; an error is a 500),
/// then the handler's `Bytes` (axum's 2 MB). A chunked 20 MB body: `413`
/// from the handler under `axum::serve`; under megaconn the documented
/// difference (README, "Body limits"): the middleware meets megaconn's
/// 16 MiB first, `500`.
#[tokio::test]
async fn consume_body_in_middleware_over_max_body_bytes_is_the_documented_500() {
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use http_body_util::BodyExt;
    async fn buffer(request: Request, next: Next) -> Result<Response, Response> {
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())?
            .to_bytes();
        Ok(next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await)
    }
    let app = Router::new()
        .route(
            "/",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(middleware::from_fn(buffer));
    let pair = Pair::start(app, megaconn::Server::builder()).await;
    let body: Bytes = vec![7u8; 20_000_000].into();
    let theirs = post_chunked(pair.theirs, "/", "application/octet-stream", &body).await;
    assert_eq!(theirs.status, 413, "{theirs:?}");
    let ours = post_chunked(pair.ours, "/", "application/octet-stream", &body).await;
    assert_eq!(ours.status, 500, "{ours:?}");
    assert_eq!(String::from_utf8_lossy(&ours.body), "length limit exceeded");
    // The one-line fix: megaconn's limit past the body.
    let pair = Pair::start(
        Router::new()
            .route(
                "/",
                post(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(middleware::from_fn(buffer)),
        megaconn::Server::builder().max_body_bytes(64 << 20),
    )
    .await;
    let theirs = post_chunked(pair.theirs, "/", "application/octet-stream", &body).await;
    let ours = post_chunked(pair.ours, "/", "application/octet-stream", &body).await;
    assert_eq!(ours, theirs, "megaconn (left) vs axum::serve");
}

// ---------------------------------------------------------------------------
// compression: gzip responses and gzip request bodies (tower-http).
// ---------------------------------------------------------------------------
