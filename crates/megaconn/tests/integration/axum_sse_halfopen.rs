//! An axum `Sse` response (a handler's `axum::response::Sse`, served as an
//! HTTP/1.1 body of `text/event-stream`) whose peer vanished without a FIN
//! (a phone gone off the network): the server closes its connection within
//! a bound it set, not after the kernel's ~16 minutes of retransmission.
//! The response's head gives the socket `TCP_USER_TIMEOUT` = 2 ×
//! `write_stall_timeout` + 1 s (`proto/http1/exchange.rs`,
//! `bound_event_stream`; session 46), so its unacknowledged keep-alive
//! comment errors the socket and the connection closes as `Io(TimedOut)`,
//! dropping the handler's stream. `sse_halfopen.rs` is the native SSE
//! route's test of the same bound; without the option on the axum path an
//! event stream's small writes all fit the kernel's send buffer, no write
//! of ours waits, and `write_stall_timeout` never applies.
//!
//! How the peer vanishes: the test runs in a network namespace of its own
//! whose `lo` is taken down once the stream is served (`common::netns`,
//! which also has the server's bounds).

use crate::common;

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use common::{netns, AppServer};
use futures_util::Stream;
use megaconn::ConnectionEvent;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The stream's keep-alive interval: a comment every second, the bytes the
/// vanished peer does not acknowledge (the close comes about `PING` +
/// 2 × `netns::STALL` + 1 s after `lo` goes down).
const PING: Duration = Duration::from_secs(1);

/// Tells the test, when dropped, that the handler's stream was.
struct Dropped(mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A stream of no events that holds `guard` until it is dropped: only the
/// keep-alive comments go out.
fn no_events(guard: Dropped) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(guard, |guard| async move {
        let _held = guard;
        std::future::pending::<Option<(Result<Event, Infallible>, Dropped)>>().await
    })
}

/// An axum `Sse` stream whose peer vanishes closes as `Io(TimedOut)` within
/// [`netns::WAIT`], and its handler's stream is dropped; without the bound
/// it stayed until the kernel's retransmission gave up.
#[test]
fn an_axum_sse_stream_whose_peer_vanished_closes_within_the_stall_bound() {
    netns::run_in_private_netns("axum_sse_halfopen", vanish_and_wait);
}

/// Inside the namespace: a stream served, `lo` taken down, the close
/// awaited.
async fn vanish_and_wait() {
    let (dropped, mut drops) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::get(move || {
            let guard = Dropped(dropped.clone());
            async move { Sse::new(no_events(guard)).keep_alive(KeepAlive::new().interval(PING)) }
        }),
    );
    // The close's reason, as the connection's lifecycle event says it.
    let (closed, mut closes) = mpsc::unbounded_channel();
    let builder = netns::builder()
        .on_connection(move |event| {
            if let ConnectionEvent::Closed { reason, .. } = event {
                let _ = closed.send(*reason);
            }
        })
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = AppServer::start(builder, app);

    // Held (not read past the head) until the end: the peer's side.
    let mut client = TcpStream::connect(server.addrs[0]).await.unwrap();
    let request = b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n";
    netns::request_head(&mut client, request, "HTTP/1.1 200").await;

    let what = "axum_sse_halfopen";
    netns::vanish_and_await_close(&server.handle, what, || (), closes.recv()).await;
    tokio::time::timeout(common::SAFETY, drops.recv())
        .await
        .expect("the handler's stream dropped in time")
        .expect("dropped");
    drop(client);
    assert!(server.stop().await, "the server stops");
}
