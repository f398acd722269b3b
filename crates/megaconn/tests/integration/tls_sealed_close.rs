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
//! lot wakes it to write the rest (session 45: a push a parked socket
//! cannot take whole resumes the connection); the client still reads
//! nothing, so its outbound queue overflows and it is closed as a slow consumer,
//! which gives up on the rest of that push within the close's bound and
//! says so (`on_close`); only then does the client read, which opens room for
//! whatever the close still writes. The stream must end after the pushes
//! that went whole and at most part of the one owed (`Ending::assert_torn`),
//! whatever byte the socket cut it at, or with every record whole and then
//! `close_notify` when the socket found room in time. Whether the kernel
//! cuts the push is not the test's to choose, so these tests check that
//! each ending is sound end to end; the rule that nothing follows a torn
//! record is guarded deterministically, with the cut forced by small socket
//! buffers, in `proto/owed_tests.rs` (each of its torn tests fails
//! with the rule removed).

use crate::tls_msg::{Proto, TlsMsg};
use megaconn::CloseReason;

/// A parked `proto` consumer behind on a sealed push is woken and closed
/// as a slow consumer; it reads nothing until the server gave up on the
/// rest of its push. Either ending is right, and which one comes depends on
/// the kernel (whether the socket got room for the owed records before the
/// close's bound): the pushes that went whole and at most part of the owed
/// one, nothing after it (`Ending::assert_torn`); or every
/// record whole, then `close_notify`. What may never come is a record after
/// a torn one: rustls rejects it, or the bytes break the torn record's
/// shape (both checked). The rule itself, with the cut forced rather than
/// hoped for, is `proto/owed_tests.rs`'s: this test retried up to
/// five consumers for a torn push and still found none now and then on a
/// loaded machine (session 44's CI, the WebSocket case).
async fn a_woken_slow_consumer_ends_sound(proto: Proto) {
    let mut server = TlsMsg::start(|b| b).await;
    let consumer = server.consumer(proto).await;
    let id = consumer.id;
    let (wakes, pushes) = (server.wakes(), server.pushes().0);
    server.push_until_behind(&consumer).await;
    assert_eq!(server.close_of(id).await, CloseReason::SlowConsumer);
    assert!(server.wakes() > wakes, "woken, not closed parked");
    let ending = consumer.read_to_end().await;
    eprintln!("{proto:?}: {ending:?}");
    if !ending.went_whole() {
        ending.assert_torn();
        // Counted (by the worker, before it closed the connection): the
        // pushes that went whole, the owed one dropped, not delivered.
        assert_eq!(server.pushes().0 - pushes, ending.records.len() as u64);
    }
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

#[tokio::test]
async fn a_woken_slow_wss_consumer_ends_sound() {
    a_woken_slow_consumer_ends_sound(Proto::Wss).await;
}

#[tokio::test]
async fn a_woken_slow_framed_tls_consumer_ends_sound() {
    a_woken_slow_consumer_ends_sound(Proto::FramedTls).await;
}

#[tokio::test]
async fn a_woken_slow_sse_tls_consumer_ends_sound() {
    a_woken_slow_consumer_ends_sound(Proto::SseTls).await;
}
