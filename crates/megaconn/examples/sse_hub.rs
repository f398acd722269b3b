//! A push gateway in a page: native Server-Sent Events ([`SseRoute`]) fed by
//! the [`Hub`](megaconn::Hub). Each stream subscribes to the topic its
//! query names; a ticker publishes the time to `ticks` every second; a
//! `POST /publish?topic=...` publishes its body. Idle streams are parked
//! outside the runtime (tens of bytes each, no task), and the hub writes
//! each event to their sockets without waking them.
//!
//! ```text
//! cargo run -p megaconn --example sse_hub            # listens on 127.0.0.1:3000
//! curl -N 'http://127.0.0.1:3000/events?topic=ticks'
//! curl -N 'http://127.0.0.1:3000/events?topic=news'  # in another terminal
//! curl -d 'hello
//! world' 'http://127.0.0.1:3000/publish?topic=news'
//! ```
//!
//! The second stream prints `data: hello` and `data: world` (one `data:`
//! line per line of the message), a browser's `EventSource` reads it as
//! one event whose data is `hello\nworld`. Ctrl-C ends every stream with
//! the goodbye event and the last chunk.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::post;
use http::request::Parts;
use megaconn::{CloseReason, ConnectionId, Hub, Server, Session, SseEvent, SseHandler, SseRoute};

/// Subscribes each stream to `?topic=` (default `ticks`).
struct Gateway;

impl SseHandler for Gateway {
    fn on_open(&self, request: &Parts, session: &Session) {
        let topic = request
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("topic=")))
            .unwrap_or("ticks");
        if session.subscribe(topic).is_err() {
            session.send("cannot subscribe to that topic");
            session.close();
            return;
        }
        // A reconnecting `EventSource` says where it left off.
        let last = request.headers.get("last-event-id");
        session.send(format!("subscribed to {topic} (last event id: {last:?})"));
        println!("{} opened on {topic}", session.id());
    }

    fn on_close(&self, id: ConnectionId, reason: CloseReason) {
        println!("{id} closed: {reason}");
    }
}

/// The query of `POST /publish`.
#[derive(serde::Deserialize)]
struct Topic {
    topic: String,
}

#[tokio::main]
async fn main() -> Result<(), megaconn::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut server = Server::builder()
        .listen_on(addr.parse().expect("ADDR is host:port"))
        .listen()?;
    let hub = server.hub();
    let route = SseRoute::new(Gateway)
        .ping_interval(Some(Duration::from_secs(15)))
        .goodbye(
            SseEvent::data("server restarting")
                .event("bye")
                .retry(5_000),
        );
    let app = axum::Router::new()
        .route_service("/events", route)
        .route(
            "/publish",
            post(
                |State(hub): State<Hub>, Query(q): Query<Topic>, body: String| async move {
                    match hub.publish(&q.topic, body) {
                        Ok(()) => "published\n".to_owned(),
                        Err(e) => format!("not published: {e}\n"),
                    }
                },
            ),
        )
        .with_state(hub.clone());
    // The ticker: an event with a type and an id, so a browser can
    // `addEventListener("tick", ...)` and resume with `Last-Event-ID`.
    tokio::spawn(async move {
        for n in 0u64.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let event = SseEvent::data(&format!("tick {n}"))
                .event("tick")
                .id(&n.to_string());
            let _ = hub.publish_binary("ticks", event);
        }
    });
    println!(
        "events on http://{}/events?topic=ticks",
        server.local_addr()
    );
    server
        .serve_with_shutdown(app, megaconn::shutdown_signal()?)
        .await?;
    Ok(())
}
