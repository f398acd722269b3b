//! One close, one bound (`Builder::linger_timeout`): over TLS, an event
//! stream closed as a slow consumer writes the rest
//! of the push under way, lingers and says `close_notify` all within one
//! `linger_timeout`, cut and counted once when its client reads nothing (a
//! second bound for `close_notify` held such a client for two and counted
//! twice: merge review, session 50). Every wait waits on a condition.

use std::time::Duration;

use megaconn::{ConnectionId, Framing};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::msg::MsgServer;
use crate::common::tls::{connect, Ca};
use crate::common::SAFETY;
use crate::linger_timeout::{cut_and_counted_once, slow_consumers};

/// A TLS event stream whose client never reads: a 4 MiB push sticks in the
/// sockets, five more overflow its queue of two; the close the bound cuts
/// counts once, after the connection ended (its `close_notify` included).
#[tokio::test]
async fn a_tls_sse_slow_consumer_close_is_counted_once() {
    let ca = Ca::new();
    let builder = slow_consumers(Duration::from_millis(300))
        .tls(ca.server(&["localhost"]))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4));
    let mut server = MsgServer::start(builder, None);
    let mut tls = connect(server.http, ca.client(&[b"http/1.1"]), "localhost").await;
    tls.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let id = server.next_open().await;
    stick_then_overflow(&mut server, id, tls.get_ref().0).await;
    // Counted after the connection ended, its `close_notify` included.
    cut_and_counted_once(&mut server, id).await;
    drop(tls);
    server.stop().await;
}

/// Makes `id` a slow consumer whose close has a frame under way: pushes it
/// one message far larger than the sockets hold (4 MiB of `a`), so its
/// write sticks (taken from the queue once the client's socket, `tcp`,
/// holds 16 KiB: the client reads none of it, so what arrives stays
/// there), then five (256 KiB each, of `b` to `f`) that overflow its queue
/// of two. Also `framed_tls_linger.rs`'s (a framed listener's frames must
/// allow 4 MiB).
pub(crate) async fn stick_then_overflow(server: &mut MsgServer, id: ConnectionId, tcp: &TcpStream) {
    let _ = server.hub.send(id, "a".repeat(STUCK));
    let mut peek = vec![0u8; 64 << 10];
    let started = async {
        while tcp.peek(&mut peek).await.unwrap() < 16 << 10 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(SAFETY, started)
        .await
        .expect("the push under way in time");
    for i in 1..6u8 {
        let _ = server
            .hub
            .send(id, String::from(char::from(b'a' + i)).repeat(256 << 10));
    }
}

/// The size of [`stick_then_overflow`]'s first push, the one under way.
pub(crate) const STUCK: usize = 4 << 20;
