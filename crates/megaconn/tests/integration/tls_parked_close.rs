//! How the parking lot closes a parked TLS message connection itself
//! (graceful shutdown), for each protocol (WebSocket, framed, SSE over TLS:
//! `tls_msg.rs`), with a real rustls client reading the raw records: the
//! parked session seals the route's goodbye and says `close_notify`
//! (`ClosingTls`), and after a push the connection fell behind on, the
//! records owed go first if the socket takes them then, or nothing more is
//! written (`proto::finish_owed`, `ClosingTls::send_sealed`).
//!
//! That the lot closed the connection parked, not woken first, is checked
//! by the wake-up counters. A push that does not go whole wakes its
//! connection to resume, writing what it owes as an awake connection
//! writes (`message/worker.rs`, `overflowed`; `conn/park/owed.rs`), so to
//! keep one parked and behind until shutdown the lot is muted first: with
//! `Builder::park_wake_batch` it stops hearing of its sockets for a window
//! (an hour here) once it served two wake-ups in a row
//! (`TlsMsg::mute_the_lot`, counted in `parking_wake_batches`), and it
//! serves no wake-up meanwhile, the one a push asks for included (that
//! wake respects the batch as any other: a lot that batches its wake-ups
//! holds them all for its window); the shutdown's own close of its parked
//! connections does not wait for the lot to hear anything. The pushes
//! after the one it fell behind on wait in the queue made for it to
//! resume with ([`QUEUE`] of them: `TlsMsg::push_until_behind` pushes
//! until one is refused), and count as dropped when the lot closes it.

use std::time::Duration;

use crate::tls_msg::{Proto, TlsMsg};
use megaconn::CloseReason;

/// Longer than any test: the lot, once muted, stays so.
const MUTED: Duration = Duration::from_secs(3600);

/// The consumers' outbound queue (`Builder::outbound_queue`): the pushes
/// after the one a consumer fell behind on wait there, this many, until
/// the lot closes it (the rest are refused, which tells the test it is
/// behind).
const QUEUE: usize = 8;

/// A parked `proto` connection is closed by the lot at shutdown, parked:
/// its goodbye, sealed with its parked session, then `close_notify`.
async fn shutdown_closes_a_parked_connection_with_its_goodbye(proto: Proto) {
    let mut server = TlsMsg::start(|b| b).await;
    let consumer = server.consumer(proto).await;
    let id = consumer.id;
    let wakes = server.wakes();
    server.handle.shutdown();
    let ending = consumer.read_to_end().await;
    ending.assert_goodbye();
    assert_eq!(server.close_of(id).await, CloseReason::Shutdown);
    assert_eq!(server.wakes(), wakes, "closed parked, never woken");
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

#[tokio::test]
async fn shutdown_closes_a_parked_wss_connection_with_its_goodbye() {
    shutdown_closes_a_parked_connection_with_its_goodbye(Proto::Wss).await;
}

#[tokio::test]
async fn shutdown_closes_a_parked_framed_tls_connection_with_its_goodbye() {
    shutdown_closes_a_parked_connection_with_its_goodbye(Proto::FramedTls).await;
}

#[tokio::test]
async fn shutdown_closes_a_parked_sse_tls_connection_with_its_goodbye() {
    shutdown_closes_a_parked_connection_with_its_goodbye(Proto::SseTls).await;
}

/// A parked `proto` consumer behind on a sealed push (its lot muted, so
/// that it stays parked, its wake to resume unserved), which then reads
/// every push that went whole: at
/// shutdown its socket has room, and the lot writes the records owed, then
/// `close_notify` (no goodbye after a push it was behind on). The push
/// owed counts as delivered. (Without them, the `close_notify` is sealed
/// under a sequence number past records the client never got: a bad
/// record MAC.)
async fn owed_records_go_whole_before_close_notify(proto: Proto) {
    let mut server = TlsMsg::start(|b| b.park_wake_batch(MUTED).outbound_queue(QUEUE)).await;
    let mut consumer = server.consumer(proto).await;
    let id = consumer.id;
    server.mute_the_lot().await;
    let wakes = server.wakes();
    server.push_until_behind(&consumer).await;
    // The pushes that went whole (at most one short: the fence's count
    // may lag), so that the socket has room again.
    let (whole, _) = server.pushes();
    consumer.read_records(usize::try_from(whole).unwrap()).await;
    server.handle.shutdown();
    let ending = consumer.read_to_end().await;
    let pushes = ending.assert_owed_went();
    assert_eq!(server.close_of(id).await, CloseReason::Shutdown);
    assert_eq!(server.wakes(), wakes, "closed parked, never woken");
    assert_eq!(server.pushes().0, pushes as u64, "the owed push delivered");
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

#[tokio::test]
async fn owed_wss_records_go_whole_before_close_notify() {
    owed_records_go_whole_before_close_notify(Proto::Wss).await;
}

#[tokio::test]
async fn owed_framed_tls_records_go_whole_before_close_notify() {
    owed_records_go_whole_before_close_notify(Proto::FramedTls).await;
}

#[tokio::test]
async fn owed_sse_tls_records_go_whole_before_close_notify() {
    owed_records_go_whole_before_close_notify(Proto::SseTls).await;
}

/// The same consumer, reading nothing until the server stopped. Its
/// socket is full when the push is owed, but by the time the lot closes it
/// (after the shutdown's idle grace, half a second: it parked just now) the
/// kernel has mostly made room (acknowledgements of bytes in flight, a
/// window left open a little: `TlsMsg::push_until_behind`), so which of
/// the two ends comes is the kernel's, and both are checked: the records
/// owed go whole, then `close_notify`, the push counted delivered; or they
/// do not, and nothing follows them, neither goodbye nor `close_notify`,
/// the push counted dropped. Never a record rustls rejects. (That the
/// torn end writes nothing more is not told from the fix's absence here,
/// where the kernel would refuse a `close_notify` too: `tls_sealed_close.rs`
/// tells it for a woken consumer, and `owed_*_records_go_whole_*` the
/// parked close's order.)
async fn the_close_of_a_consumer_behind_never_breaks_a_record(proto: Proto) {
    let mut server = TlsMsg::start(|b| b.park_wake_batch(MUTED).outbound_queue(QUEUE)).await;
    let consumer = server.consumer(proto).await;
    let id = consumer.id;
    server.mute_the_lot().await;
    let wakes = server.wakes();
    server.push_until_behind(&consumer).await;
    let (_, drops) = server.pushes();
    server.handle.shutdown();
    assert_eq!(server.close_of(id).await, CloseReason::Shutdown);
    assert_eq!(server.wakes(), wakes, "closed parked, never woken");
    let pushes = server.pushes();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
    let ending = consumer.read_to_end().await;
    eprintln!("{proto:?}: {ending:?}");
    // The queue made for it to resume with, full, dropped at its close.
    let queued = QUEUE as u64;
    if ending.went_whole() {
        let delivered = ending.assert_owed_went() as u64;
        let counted = (delivered, drops + queued);
        assert_eq!(
            pushes, counted,
            "the owed push delivered, the queue dropped"
        );
    } else {
        ending.assert_torn();
        let whole = ending.records.len() as u64;
        let counted = (whole, drops + queued + 1);
        assert_eq!(pushes, counted, "the owed push dropped, and the queue");
    }
}

#[tokio::test]
async fn the_close_of_a_wss_consumer_behind_never_breaks_a_record() {
    the_close_of_a_consumer_behind_never_breaks_a_record(Proto::Wss).await;
}

#[tokio::test]
async fn the_close_of_a_framed_tls_consumer_behind_never_breaks_a_record() {
    the_close_of_a_consumer_behind_never_breaks_a_record(Proto::FramedTls).await;
}

#[tokio::test]
async fn the_close_of_an_sse_tls_consumer_behind_never_breaks_a_record() {
    the_close_of_a_consumer_behind_never_breaks_a_record(Proto::SseTls).await;
}
