//! megaconn as a drop-in for `axum::serve` (issue 14): apps written the way
//! axum 0.8's own examples are (todos, sse, static-file-server, stream-to-file,
//! multipart-form, compression, graceful-shutdown, and the corner cases the
//! issue lists) are each served twice, once by `axum::serve` (hyper) and once
//! by megaconn, both on 127.0.0.1:0; the same requests go to both through a
//! real client (reqwest, the h2 crate's client, raw TCP where the wire
//! matters), and the answers are compared: status, headers but `date`, body.
//! Where megaconn differs on purpose (README, "Differences from
//! `axum::serve`") the test asserts the documented difference instead.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tower_http::limit::RequestBodyLimitLayer;

use common::{read_response_buffered, SAFETY};

/// The app's own body limit, as in axum's stream-to-file and multipart-form
/// examples.
const APP_BODY_LIMIT: usize = 250 * 1024 * 1024;
/// The upload those examples are tried with: over megaconn's default
/// `max_body_bytes` (16 MiB), under the app's limit.
const UPLOAD: usize = 50 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Serving one app both ways, and comparing answers.
// ---------------------------------------------------------------------------

/// One app served by `axum::serve` ("theirs") and by megaconn ("ours").
struct Pair {
    theirs: SocketAddr,
    ours: SocketAddr,
    handle: megaconn::ServerHandle,
    hyper: tokio::task::JoinHandle<()>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.hyper.abort();
    }
}

impl Pair {
    /// Serves `app` both ways; megaconn with one worker and `builder`'s knobs.
    async fn start(app: Router, builder: megaconn::Builder) -> Pair {
        Pair::start_with(app.clone(), app, builder, false).await
    }

    /// As [`Pair::start`], with each server its own app instance (for apps
    /// with state, so that both see the same sequence of requests), and with
    /// `connect_info` asked for the way each server asks for it.
    async fn start_with(
        theirs: Router,
        ours: Router,
        builder: megaconn::Builder,
        connect_info: bool,
    ) -> Pair {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let theirs_addr = listener.local_addr().unwrap();
        let hyper = if connect_info {
            let svc = theirs.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, svc).await.unwrap() })
        } else {
            tokio::spawn(async move { axum::serve(listener, theirs).await.unwrap() })
        };
        let server = builder
            .workers(1)
            .connect_info(connect_info)
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .unwrap();
        let ours_addr = server.local_addr();
        let handle = server.handle();
        tokio::spawn(server.serve(ours));
        Pair {
            theirs: theirs_addr,
            ours: ours_addr,
            handle,
            hyper,
        }
    }

    /// Sends `req` to both (through `client`); asserts the answers match and
    /// returns ours.
    async fn same(&self, client: &reqwest::Client, req: &Ask) -> Answer {
        let theirs = req.send(client, self.theirs).await;
        let ours = req.send(client, self.ours).await;
        assert_eq!(ours, theirs, "{req:?}: megaconn (left) vs axum::serve");
        ours
    }
}

/// A request, sent the same way to both servers.
#[derive(Debug, Clone)]
struct Ask {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

fn ask(method: &'static str, path: &str) -> Ask {
    Ask {
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
    }
}

impl Ask {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Ask {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Ask {
        self.body = Some(body.into());
        self
    }

    fn json(self, body: &str) -> Ask {
        self.header("content-type", "application/json")
            .body(body.as_bytes())
    }

    async fn send(&self, client: &reqwest::Client, addr: SocketAddr) -> Answer {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut req = client.request(method, format!("http://{addr}{}", self.path));
        for (name, value) in &self.headers {
            req = req.header(*name, value);
        }
        if let Some(body) = &self.body {
            req = req.body(body.clone());
        }
        let resp = tokio::time::timeout(SAFETY, req.send())
            .await
            .expect("an answer")
            .expect("a response");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = resp.bytes().await.expect("a body").to_vec();
        Answer::from_parts(status, &headers, body)
    }
}

/// What is compared: the status, the headers but `date` (sorted, names
/// lower case), the body.
#[derive(PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Answer {
    fn from_parts(status: u16, headers: &axum::http::HeaderMap, body: Vec<u8>) -> Answer {
        let headers = normalise(
            headers
                .iter()
                .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))),
        );
        Answer {
            status,
            headers,
            body,
        }
    }

    fn from_raw(r: common::RawResponse) -> Answer {
        Answer {
            status: r.status,
            headers: normalise(r.headers.iter().map(|(n, v)| (n.as_str(), v.into()))),
            body: r.body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn normalise<'a>(
    headers: impl Iterator<Item = (&'a str, std::borrow::Cow<'a, str>)>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.into_owned()))
        .collect();
    out.sort();
    out
}

/// Writes `bytes` on a fresh connection and reads one response.
async fn raw(addr: SocketAddr, bytes: &[u8], head_request: bool) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    Answer::from_raw(read_response_buffered(&mut s, &mut buf, head_request).await)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

// ---------------------------------------------------------------------------
// todos: JSON CRUD with path, query and JSON extractors and their rejections.
// ---------------------------------------------------------------------------

#[derive(Clone, Serialize)]
struct Todo {
    id: u64,
    text: String,
    completed: bool,
}

#[derive(Deserialize)]
struct CreateTodo {
    text: String,
}

#[derive(Deserialize)]
struct UpdateTodo {
    text: Option<String>,
    completed: Option<bool>,
}

#[derive(Deserialize)]
struct Pagination {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Clone, Default)]
struct Todos(Arc<Mutex<(u64, BTreeMap<u64, Todo>)>>);

fn todos_app() -> Router {
    async fn index(State(db): State<Todos>, Query(p): Query<Pagination>) -> Json<Vec<Todo>> {
        let db = db.0.lock().unwrap();
        let todos = db.1.values().skip(p.offset.unwrap_or(0));
        Json(todos.take(p.limit.unwrap_or(usize::MAX)).cloned().collect())
    }
    async fn create(State(db): State<Todos>, Json(input): Json<CreateTodo>) -> impl IntoResponse {
        let mut db = db.0.lock().unwrap();
        db.0 += 1;
        let todo = Todo {
            id: db.0,
            text: input.text,
            completed: false,
        };
        db.1.insert(todo.id, todo.clone());
        (StatusCode::CREATED, Json(todo))
    }
    async fn update(
        State(db): State<Todos>,
        Path(id): Path<u64>,
        Json(input): Json<UpdateTodo>,
    ) -> Result<Json<Todo>, StatusCode> {
        let mut db = db.0.lock().unwrap();
        let todo = db.1.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
        if let Some(text) = input.text {
            todo.text = text;
        }
        if let Some(completed) = input.completed {
            todo.completed = completed;
        }
        Ok(Json(todo.clone()))
    }
    async fn delete(State(db): State<Todos>, Path(id): Path<u64>) -> StatusCode {
        match db.0.lock().unwrap().1.remove(&id) {
            Some(_) => StatusCode::NO_CONTENT,
            None => StatusCode::NOT_FOUND,
        }
    }
    Router::new()
        .route("/todos", get(index).post(create))
        .route("/todos/{id}", axum::routing::patch(update).delete(delete))
        .with_state(Todos::default())
}

#[tokio::test]
async fn todos_json_crud() {
    let pair = Pair::start_with(todos_app(), todos_app(), megaconn::Server::builder(), false).await;
    let c = client();
    let asks = [
        ask("GET", "/todos"),
        ask("POST", "/todos").json(r#"{"text":"write the test"}"#),
        ask("POST", "/todos").json(r#"{"text":"run it"}"#),
        ask("POST", "/todos").json(r#"{"text":"ship"}"#),
        ask("GET", "/todos?offset=1&limit=1"),
        ask("PATCH", "/todos/1").json(r#"{"completed":true}"#),
        ask("PATCH", "/todos/9").json(r#"{"completed":true}"#),
        ask("DELETE", "/todos/2"),
        ask("DELETE", "/todos/2"),
        ask("GET", "/todos?limit=x"),
        ask("POST", "/todos").json(r#"{"text":"#),
        ask("POST", "/todos").json(r#"{"txt":"no text field"}"#),
        ask("POST", "/todos").body(r#"{"text":"no content type"}"#),
        ask("PUT", "/todos"),
        ask("GET", "/nowhere"),
        ask("GET", "/todos"),
    ];
    let mut statuses = Vec::new();
    for a in &asks {
        statuses.push(pair.same(&c, a).await.status);
    }
    assert_eq!(
        statuses,
        [200, 201, 201, 201, 200, 200, 404, 204, 404, 400, 400, 422, 415, 405, 404, 200]
    );
    let last = ask("GET", "/todos").send(&c, pair.ours).await;
    assert_eq!(
        String::from_utf8_lossy(&last.body),
        r#"[{"id":1,"text":"write the test","completed":true},{"id":3,"text":"ship","completed":false}]"#
    );
}

// ---------------------------------------------------------------------------
// sse: events arrive as they are produced, over HTTP/1.1 and h2c.
// ---------------------------------------------------------------------------

/// Sends one event, waits for `gate` (so the test sees the first event
/// arrive before the stream goes on: streaming, not buffering), sends one
/// more and ends.
fn sse_app(gate: Arc<Notify>) -> Router {
    async fn events(
        State(gate): State<Arc<Notify>>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let first = futures_util::stream::once(async { Ok(Event::default().id("1").data("hi!")) });
        let second = futures_util::stream::once(async move {
            gate.notified().await;
            Ok(Event::default().event("update").data("two\nlines"))
        });
        // The example's keep-alive, long enough never to fire in a test.
        Sse::new(first.chain(second))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(3600)))
    }
    Router::new().route("/sse", get(events)).with_state(gate)
}

const FIRST_EVENT: &str = "id: 1\ndata: hi!\n\n";
const ALL_EVENTS: &str = "id: 1\ndata: hi!\n\nevent: update\ndata: two\ndata: lines\n\n";

/// GETs `/sse` over HTTP/1.1: reads the first event, opens the gate, reads
/// the rest.
async fn sse_over_h1(addr: SocketAddr, gate: &Notify) -> Answer {
    let mut resp = client()
        .get(format!("http://{addr}/sse"))
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    while body.len() < FIRST_EVENT.len() {
        let chunk = tokio::time::timeout(SAFETY, resp.chunk())
            .await
            .expect("the first event arrives while the stream waits")
            .unwrap()
            .expect("more body");
        body.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&body), FIRST_EVENT);
    gate.notify_one();
    let headers = resp.headers().clone();
    while let Some(chunk) = tokio::time::timeout(SAFETY, resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        body.extend_from_slice(&chunk);
    }
    Answer::from_parts(resp.status().as_u16(), &headers, body)
}

/// The next DATA frame of an h2 stream (its window given back).
async fn next_data(stream: &mut h2::RecvStream) -> Option<Bytes> {
    let chunk = tokio::time::timeout(SAFETY, stream.data()).await.unwrap()?;
    let chunk = chunk.unwrap();
    let _ = stream.flow_control().release_capacity(chunk.len());
    Some(chunk)
}

/// The same over h2c with prior knowledge.
async fn sse_over_h2(addr: SocketAddr, gate: &Notify) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = axum::http::Request::get(format!("http://{addr}/sse"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    let (parts, mut stream) = resp.into_parts();
    let mut body = Vec::new();
    while body.len() < FIRST_EVENT.len() {
        body.extend_from_slice(&next_data(&mut stream).await.expect("the first event"));
    }
    assert_eq!(String::from_utf8_lossy(&body), FIRST_EVENT);
    gate.notify_one();
    while let Some(chunk) = next_data(&mut stream).await {
        body.extend_from_slice(&chunk);
    }
    Answer::from_parts(parts.status.as_u16(), &parts.headers, body)
}

#[tokio::test]
async fn sse_streams_events_over_h1_and_h2() {
    let (theirs_gate, ours_gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let pair = Pair::start_with(
        sse_app(theirs_gate.clone()),
        sse_app(ours_gate.clone()),
        megaconn::Server::builder(),
        false,
    )
    .await;
    let theirs = sse_over_h1(pair.theirs, &theirs_gate).await;
    let ours = sse_over_h1(pair.ours, &ours_gate).await;
    assert_eq!(ours, theirs, "SSE over HTTP/1.1");
    assert_eq!(ours.header("content-type"), Some("text/event-stream"));
    assert_eq!(ours.header("transfer-encoding"), Some("chunked"));
    assert_eq!(String::from_utf8_lossy(&ours.body), ALL_EVENTS);

    let theirs = sse_over_h2(pair.theirs, &theirs_gate).await;
    let ours = sse_over_h2(pair.ours, &ours_gate).await;
    assert_eq!(ours, theirs, "SSE over h2c");
    assert_eq!(String::from_utf8_lossy(&ours.body), ALL_EVENTS);
}

// ---------------------------------------------------------------------------
// static-file-server: tower-http's ServeDir (Range, 206, 416, HEAD, 304).
// ---------------------------------------------------------------------------

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
    let body = if chunked {
        let chunks: Vec<Result<Bytes, Infallible>> = data
            .chunks(1 << 20)
            .map(|c| Ok(data.slice_ref(c)))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    } else {
        reqwest::Body::from(data.clone())
    };
    let resp = client()
        .post(format!("http://{addr}/file/{name}"))
        .body(body)
        .send()
        .await
        .expect("a response");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap().to_vec();
    Answer::from_parts(status, &headers, body)
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

// ---------------------------------------------------------------------------
// compression: gzip responses and gzip request bodies (tower-http).
// ---------------------------------------------------------------------------

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn compression_both_ways() {
    use tower_http::compression::CompressionLayer;
    use tower_http::decompression::RequestDecompressionLayer;
    let big = "megaconn serves axum apps unchanged. ".repeat(300);
    let app = Router::new()
        .route(
            "/",
            post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
        )
        .route("/big", get(move || async move { big }))
        .layer(RequestDecompressionLayer::new())
        .layer(CompressionLayer::new());
    let pair = Pair::start(app, megaconn::Server::builder()).await;
    let c = client();
    // Keys in order: serde_json's `Value` writes them sorted.
    let json = br#"{"again":"world, world, world","hello":"world","n":[1,2,3]}"#;
    let zipped = pair
        .same(&c, &ask("GET", "/big").header("accept-encoding", "gzip"))
        .await;
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gunzip(&zipped.body),
        "megaconn serves axum apps unchanged. "
            .repeat(300)
            .as_bytes()
    );
    let plain = pair.same(&c, &ask("GET", "/big")).await;
    assert_eq!(plain.header("content-encoding"), None);
    let echoed = pair
        .same(
            &c,
            &ask("POST", "/")
                .header("content-encoding", "gzip")
                .header("accept-encoding", "gzip")
                .json("")
                .body(gzip(json)),
        )
        .await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&echoed.body), json);
    pair.same(
        &c,
        &ask("POST", "/")
            .header("content-encoding", "gzip")
            .json("")
            .body(b"not gzip".to_vec()),
    )
    .await;
}

// ---------------------------------------------------------------------------
// graceful-shutdown: idle connections closed, the in-flight request finished
// with `connection: close`, then the listener gone.
// ---------------------------------------------------------------------------

/// One server's view of a graceful shutdown, as the client sees it.
#[derive(Debug, PartialEq)]
struct ShutdownSeen {
    idle_closed: bool,
    in_flight: Answer,
    refused_after: bool,
}

/// Drives one graceful shutdown. `start` serves the app (whose `/slow`
/// handler reports `entered` and waits for `release`) until its signal
/// fires, and returns the address and the serve task.
async fn graceful<F, T>(start: F) -> ShutdownSeen
where
    F: FnOnce(Router, oneshot::Receiver<()>) -> (SocketAddr, tokio::task::JoinHandle<T>),
{
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let app = {
        let release = release.clone();
        Router::new().route("/", get(|| async { "hello" })).route(
            "/slow",
            get(move || async move {
                entered_tx.send(()).unwrap();
                release.notified().await;
                "finished"
            }),
        )
    };
    let mut entered = entered;
    let (signal_tx, signal) = oneshot::channel();
    let (addr, task) = start(app, signal);

    // An idle keep-alive connection, having served one request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut idle_buf = Vec::new();
    assert_eq!(
        read_response_buffered(&mut idle, &mut idle_buf, false)
            .await
            .status,
        200
    );
    // A request in flight.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(SAFETY, entered.recv())
        .await
        .unwrap()
        .unwrap();

    signal_tx.send(()).unwrap();
    // The idle connection is closed: the server has begun its shutdown.
    let rest = common::read_to_close(&mut idle).await;
    let idle_closed = rest.is_empty();
    release.notify_one();
    let mut buf = Vec::new();
    let in_flight = Answer::from_raw(read_response_buffered(&mut busy, &mut buf, false).await);
    tokio::time::timeout(SAFETY, task)
        .await
        .expect("serve returns")
        .unwrap();
    let refused_after = TcpStream::connect(addr).await.is_err();
    ShutdownSeen {
        idle_closed,
        in_flight,
        refused_after,
    }
}

#[tokio::test]
async fn graceful_shutdown() {
    let theirs = graceful(|app, signal| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async { signal.await.unwrap() })
                .await
                .unwrap()
        });
        (addr, task)
    })
    .await;
    let ours = graceful(|app, signal| {
        let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(1)
            .listen()
            .unwrap();
        let addr = server.local_addr();
        let task = tokio::spawn(async move {
            server
                .serve_with_shutdown(app, async { signal.await.unwrap() })
                .await
                .unwrap()
        });
        (addr, task)
    })
    .await;
    assert_eq!(ours, theirs);
    assert!(ours.idle_closed && ours.refused_after, "{ours:?}");
    assert_eq!(ours.in_flight.status, 200);
    assert_eq!(ours.in_flight.header("connection"), Some("close"));
    assert_eq!(ours.in_flight.body, b"finished");
}

// ---------------------------------------------------------------------------
// The corner cases of issue 14: ConnectInfo, HEAD of a stream, blocking,
// 100-continue, TimeoutLayer.
// ---------------------------------------------------------------------------

fn peer_app() -> Router {
    Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    )
}

/// GETs `/peer` and returns the answer with the client's own address in the
/// body replaced by `<peer>`, so that both servers' answers compare.
async fn ask_peer(addr: SocketAddr) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap().to_string();
    s.write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut a = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
    if a.body == me.as_bytes() {
        a.body = b"<peer>".to_vec();
        a.headers.retain(|(n, _)| n != "content-length");
    }
    a
}

#[tokio::test]
async fn connect_info_gives_the_peer_address() {
    let pair = Pair::start_with(peer_app(), peer_app(), megaconn::Server::builder(), true).await;
    let ours = ask_peer(pair.ours).await;
    assert_eq!(ours, ask_peer(pair.theirs).await);
    assert_eq!(
        (ours.status, ours.body.as_slice()),
        (200, b"<peer>".as_slice())
    );
    // Not asked for, it is missing on both (axum's 500 "Missing request
    // extension"): megaconn asks with `connect_info(true)` where axum::serve
    // asks with `into_make_service_with_connect_info`.
    let pair = Pair::start(peer_app(), megaconn::Server::builder()).await;
    let ours = ask_peer(pair.ours).await;
    assert_eq!(ours, ask_peer(pair.theirs).await);
    assert_eq!(ours.status, 500);
}

/// Routes for the remaining cases.
fn corner_app() -> Router {
    use tower_http::timeout::TimeoutLayer;
    let stream = || async {
        let chunks = (0..3).map(|i| Ok::<_, Infallible>(format!("chunk{i};")));
        Body::from_stream(futures_util::stream::iter(chunks))
    };
    Router::new()
        .route("/stream", get(stream))
        .route(
            "/spawn-blocking",
            get(|| async {
                tokio::task::spawn_blocking(|| "computed off the runtime")
                    .await
                    .unwrap()
            }),
        )
        .route(
            "/block-in-place",
            get(|| async { tokio::task::block_in_place(|| "computed in place") }),
        )
        .route(
            "/len",
            post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .route("/ignore", post(|| async { "body not read" }))
        .route("/never", get(futures_util::future::pending::<&'static str>))
        .route("/quick", get(|| async { "in time" }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ))
}

#[tokio::test]
async fn head_of_a_streaming_response() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    let head = b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n";
    let ours = raw(pair.ours, head, true).await;
    assert_eq!(ours, raw(pair.theirs, head, true).await);
    assert_eq!(ours.header("content-length"), None);
    let get = b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n";
    let ours = raw(pair.ours, get, false).await;
    assert_eq!(ours, raw(pair.theirs, get, false).await);
    assert_eq!(ours.body, b"chunk0;chunk1;chunk2;");
}

/// `spawn_blocking` works on megaconn's workers as under `axum::serve`;
/// `block_in_place` needs tokio's multi-threaded runtime, which megaconn's
/// thread-per-core workers are not: the documented difference is a 500 (and
/// a log line saying to use `spawn_blocking`) where axum::serve answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_works_and_block_in_place_is_the_documented_500() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    let c = client();
    let ok = pair.same(&c, &ask("GET", "/spawn-blocking")).await;
    assert_eq!(
        (ok.status, ok.body.as_slice()),
        (200, b"computed off the runtime".as_slice())
    );

    let theirs = ask("GET", "/block-in-place").send(&c, pair.theirs).await;
    assert_eq!(
        (theirs.status, theirs.body.as_slice()),
        (200, b"computed in place".as_slice())
    );
    let ours = ask("GET", "/block-in-place").send(&c, pair.ours).await;
    assert_eq!(ours.status, 500, "{ours:?}");
    assert_eq!(pair.handle.stats().panics, 1);
    pair.same(&c, &ask("GET", "/spawn-blocking")).await;
}

#[tokio::test]
async fn expect_100_continue() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    // The handler reads the body: `100 Continue` first, then the answer.
    let mut seen = Vec::new();
    for addr in [pair.theirs, pair.ours] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let interim = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
        s.write_all(b"hello").await.unwrap();
        let last = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
        seen.push((interim, last));
    }
    assert_eq!(seen[1], seen[0]);
    assert_eq!(seen[1].0.status, 100);
    assert_eq!(
        (seen[1].1.status, seen[1].1.body.as_slice()),
        (200, b"5 bytes".as_slice())
    );

    // The handler answers without reading: no `100 Continue`, the answer
    // straight away (the client never sends the body).
    let req =
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    let mut seen = Vec::new();
    for addr in [pair.theirs, pair.ours] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        let answer = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
        // Whatever the client sends next, neither reads on: the body it was
        // never asked for and a request behind it are not answered.
        let _ = s
            .write_all(b"helloGET /quick HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        let after = common::read_to_close(&mut s).await;
        seen.push((answer, after));
    }
    let (mut theirs, ours) = (seen.remove(0), seen.remove(0));
    assert_eq!(
        (ours.0.status, ours.0.body.as_slice()),
        (200, b"body not read".as_slice())
    );
    assert!(ours.1.is_empty() && theirs.1.is_empty(), "both close");
    // The documented difference: megaconn says it will close (RFC 9110
    // §10.1.1, RFC 9112 §9.6), hyper closes without saying so.
    assert_eq!(ours.0.header("connection"), Some("close"));
    assert_eq!(theirs.0.header("connection"), None);
    theirs.0.headers.push(("connection".into(), "close".into()));
    theirs.0.headers.sort();
    assert_eq!(ours.0, theirs.0);
}

#[tokio::test]
async fn timeout_layer() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    let c = client();
    let late = pair.same(&c, &ask("GET", "/never")).await;
    assert_eq!(late.status, 408);
    let quick = pair.same(&c, &ask("GET", "/quick")).await;
    assert_eq!(
        (quick.status, quick.body.as_slice()),
        (200, b"in time".as_slice())
    );
}
