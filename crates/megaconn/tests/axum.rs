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
