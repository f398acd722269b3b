//! An axum `Router` served unchanged: path parameters, JSON in and out, and a
//! streaming response body, called with a real HTTP client.

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Greeting {
    name: String,
    times: u32,
}

fn app() -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u64>| async move { format!("user {id}") }),
        )
        .route(
            "/greet",
            post(|Json(g): Json<Greeting>| async move {
                Json(Greeting {
                    name: format!("hello {}", g.name),
                    times: g.times + 1,
                })
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks = (0..5).map(|i| Ok::<_, std::io::Error>(format!("chunk{i};")));
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
}

#[tokio::test]
async fn an_axum_router_plugs_in_unchanged() {
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .listen()
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let handle = server.handle();
    let task = tokio::spawn(server.serve(app()));

    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/users/42")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "user 42");

    let r = client
        .post(format!("{base}/greet"))
        .header("content-type", "application/json")
        .body(r#"{"name":"megaconn","times":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let g: Greeting = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        g,
        Greeting {
            name: "hello megaconn".into(),
            times: 2
        }
    );

    let r = client.get(format!("{base}/stream")).send().await.unwrap();
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    assert_eq!(
        r.text().await.unwrap(),
        "chunk0;chunk1;chunk2;chunk3;chunk4;"
    );

    let r = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    handle.shutdown();
    let summary = task.await.unwrap().unwrap();
    assert_eq!(summary.requests, 4);
}

/// megaconn's `max_body_bytes` composes with the app's own limits: a chunked
/// upload that passes it mid-stream reaches axum's extractor as the error
/// axum answers with 413 (http-body-util's `LengthLimitError`), not a 500,
/// exactly as `DefaultBodyLimit` or tower-http's `RequestBodyLimitLayer`
/// would. (With a Content-Length over the limit megaconn answers 413 itself,
/// before the handler runs.)
#[tokio::test]
async fn a_body_past_max_body_bytes_is_a_413_from_axum_extractors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Router::new()
        .route(
            "/upload",
            post(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(250 * 1024 * 1024));
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .max_body_bytes(1024)
        .listen()
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.serve(app));

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Under the limit, the same route serves.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).ends_with("5 bytes"));
    handle.shutdown();
}
