//! axum's todos (JSON CRUD) and sse (over HTTP/1.1 and h2c) examples.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::common::SAFETY;
use crate::harness::{ask, client, Answer, Pair};

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
