//! How a woken TLS message connection that fell behind ends, with a real
//! rustls client: pushes sealed with its parked session that its socket did
//! not take whole are owed, and no record may follow them unless they went
//! first, not even `close_notify` (`conn/tls_io.rs`, "Records sealed with a
//! parked session"; `TlsIo::poll_write_sealed`). A `close_notify` written
//! after them is read as a record under a sequence number the client never
//! reached, or as the rest of the one cut short: a bad record MAC where
//! the client should see an end of stream.
//!
//! For each protocol (WebSocket, framed, SSE over TLS: `tls_msg.rs`) a
//! consumer parks and reads nothing; pushes fill its socket until one does
//! not go whole (read off the counters, fenced: `push_until_behind`); the
//! lot wakes it to close as a slow consumer, which gives up on the rest of
//! that push within its bound (the client still reads nothing) and says
//! so (`on_close`); only then does the client read, which opens room for
//! whatever the close still writes. The stream must end after the pushes
//! that went whole and at most part of the one owed (`Ending::assert_torn`),
//! whatever byte the socket cut it at. With `close_notify` written after
//! the owed records (the fix reverted) the framed and SSE tests fail every
//! run: the record check does not depend on where the kernel cut. The
//! WebSocket one does not: its slow consumer's close shares the bound its
//! owed records used up (`close_behind`), so its `close_notify` never went
//! anyway; it guards the rule.

use crate::tls_msg::{Proto, TlsMsg};
use megaconn::CloseReason;

/// A parked `proto` consumer behind on a sealed push is woken and closed
/// as a slow consumer; it reads nothing until the server gave up on the
/// rest of its push, so the records owed never go whole: nothing follows
/// them. (Now and then the socket gets room for them before the close's
/// bound after all, `TlsMsg::push_until_behind`: the push then ends whole,
/// as it should, and the test takes another consumer, up to [`TRIES`].)
async fn a_woken_slow_consumer_ends_after_the_torn_push(proto: Proto) {
    let mut server = TlsMsg::start(|b| b).await;
    for _ in 0..TRIES {
        let consumer = server.consumer(proto).await;
        let id = consumer.id;
        let (wakes, pushes) = (server.wakes(), server.pushes().0);
        server.push_until_behind(&consumer).await;
        assert_eq!(server.close_of(id).await, CloseReason::SlowConsumer);
        assert!(server.wakes() > wakes, "woken to close, not closed parked");
        let ending = consumer.read_to_end().await;
        eprintln!("{proto:?}: {ending:?}");
        if ending.went_whole() {
            continue;
        }
        ending.assert_torn();
        // Counted (by the worker, before it closed the connection): the
        // pushes that went whole, the owed one dropped, not delivered.
        assert_eq!(server.pushes().0 - pushes, ending.records.len() as u64);
        let summary = server.stop().await;
        assert_eq!(summary.forced, 0, "{summary:?}");
        return;
    }
    // A WebSocket's owed push goes whole more often (its close shares the
    // bound the records used: module doc); on a loaded CI machine it went
    // whole 5 times in 5, which is the right ending, not a fault. Its test
    // guards the rule only; framed and SSE must reach a torn push.
    if proto == Proto::Wss {
        eprintln!("{proto:?}: the owed push went whole {TRIES} times (a right ending)");
        return;
    }
    panic!("the owed push went whole {TRIES} times");
}

/// Consumers a test tries until one's owed push is torn.
const TRIES: usize = 5;

#[tokio::test]
async fn a_woken_slow_wss_consumer_ends_after_the_torn_push() {
    a_woken_slow_consumer_ends_after_the_torn_push(Proto::Wss).await;
}

#[tokio::test]
async fn a_woken_slow_framed_tls_consumer_ends_after_the_torn_push() {
    a_woken_slow_consumer_ends_after_the_torn_push(Proto::FramedTls).await;
}

#[tokio::test]
async fn a_woken_slow_sse_tls_consumer_ends_after_the_torn_push() {
    a_woken_slow_consumer_ends_after_the_torn_push(Proto::SseTls).await;
}
