//! One close, one bound (`Builder::linger_timeout`): over TLS, an event
//! stream closed as a slow consumer writes the rest of the push under way,
//! lingers and says `close_notify` all within one `linger_timeout`, cut and
//! counted once when its client reads nothing (it made a second bound for
//! `close_notify`, so such a client held the close for two and it counted
//! twice: merge review, session 50). Every wait waits on a condition.

use std::time::Duration;

use megaconn::{CloseReason, Framing, Server};
use tokio::io::AsyncWriteExt;

use crate::common::limit_hits;
use crate::common::msg::MsgServer;
use crate::common::tls::{connect, Ca};

/// A TLS event stream whose client never reads: a 4 MiB push sticks in the
/// sockets, five more overflow its queue of two; the close the bound cuts
/// counts once, after the connection ended (its `close_notify` included).
#[tokio::test]
async fn a_tls_sse_slow_consumer_close_is_counted_once() {
    let ca = Ca::new();
    let builder = Server::builder()
        .workers(1)
        .park_idle_after(None)
        .outbound_queue(2)
        .message_send_buffer_size(Some(4096))
        .linger_timeout(Duration::from_millis(300))
        .tls(ca.server(&["localhost"]))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4));
    let mut server = MsgServer::start(builder, None);
    let mut tls = connect(server.http, ca.client(&[b"http/1.1"]), "localhost").await;
    tls.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let id = server.next_open().await;
    // One push far larger than the sockets hold: its write sticks. Taken
    // from the queue once the client's socket holds more than the response
    // head (the client reads none of it, so what arrives stays there).
    let _ = server.hub.send(id, "a".repeat(4 << 20));
    let tcp = tls.get_ref().0;
    let mut peek = vec![0u8; 64 << 10];
    while tcp.peek(&mut peek).await.unwrap() < 16 << 10 {
        tokio::task::yield_now().await;
    }
    for i in 1..6u8 {
        let _ = server
            .hub
            .send(id, String::from(char::from(b'a' + i)).repeat(256 << 10));
    }
    let (closed, reason) = server.next_close().await;
    assert_eq!((closed, reason), (id, CloseReason::SlowConsumer));
    // The handler hears before `close_notify` runs: wait for the close to end.
    server
        .wait_stats("the close ended", |s| s.connections_open == 0)
        .await;
    assert_eq!(
        limit_hits(&server.handle.stats(), "linger_timeout"),
        1,
        "one close, counted once"
    );
    drop(tls);
    server.stop().await;
}
