//! `Builder::linger_timeout`, the close's one bound, over real sockets: a
//! slow consumer whose client never reads (nor closes) is closed once its
//! bound passes, and the cut is counted
//! (`megaconn_limit_hits_total{limit="linger_timeout"}`, once); one whose
//! bound is generous stays in its close, so that its client reads the
//! frames its sockets hold and the 1013 whenever it reads. Two servers side
//! by side, one bound an hour, the other a millisecond: what is asserted
//! is the order of their closes, never how long either took, and every wait
//! waits on a condition.

use std::time::Duration;

use megaconn::{Builder, CloseReason, ConnectionId, Framing, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::limit_hits;
use crate::common::msg::{ws_client, MsgServer};
use crate::ws::next_data;

/// Pushes of 256 KiB each, far more than the sockets take (4 KiB asked of
/// each side) while the client reads nothing: the connection's write
/// sticks on the first, and the others overflow its queue of two.
const PUSH: usize = 256 << 10;
const PUSHES: usize = 6;

/// A bound no run of this test reaches.
pub(crate) const GENEROUS: Duration = Duration::from_secs(3600);
/// A bound any close of a client that reads nothing passes.
pub(crate) const TINY: Duration = Duration::from_millis(1);

/// The settings of every linger test's server: one worker, its
/// connections kept awake (a parked one's close takes another path), a
/// queue of two and 4 KiB send buffers (a client that reads nothing soon
/// overflows it), its close bounded by `linger`. Also `linger_once.rs`'s
/// and `framed_tls_linger.rs`'s.
pub(crate) fn slow_consumers(linger: Duration) -> Builder {
    Server::builder()
        .workers(1)
        .park_idle_after(None)
        .outbound_queue(2)
        .message_send_buffer_size(Some(4096))
        .linger_timeout(linger)
}

/// A server of one worker (WebSocket echo at `/ws`, connections kept
/// awake, a queue of two) whose close bound is `linger`, a client of it
/// that reads nothing, and its connection behind: its queue overflowed,
/// so it closes as a slow consumer (its close has begun, or begins now:
/// the handler hears of it only once the close is over).
async fn slow_consumer(linger: Duration) -> (MsgServer, WebSocketStream<TcpStream>, ConnectionId) {
    let builder = slow_consumers(linger)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4));
    let mut server = MsgServer::start(builder, None);
    let client = ws_client(server.http, "/ws", Some(4096)).await;
    let id = server.next_open().await;
    for i in 0..PUSHES {
        // Refused at the call once the connection is closing.
        let _ = server.hub.send_binary(id, vec![i as u8; PUSH]);
    }
    server
        .wait_stats("its queue overflowed", |s| s.messages.queue_drops >= 1)
        .await;
    (server, client, id)
}

/// Two slow consumers whose clients read nothing, the first with an hour
/// to close, the second a millisecond: the second closes first (its
/// handler hears `slow_consumer`), counted once as cut by its bound, while
/// the first is still open, uncounted. Then the first's client reads: the
/// pushes its sockets held, whole and in order, then its 1013, and only
/// its hanging up ends that close. With the bound fixed at 2 s whatever
/// the setting (before it was one), the first close, begun first, ended
/// first.
#[tokio::test]
async fn a_close_ends_at_its_own_bound_counted_and_not_before() {
    let (mut generous, mut patient, patient_id) = slow_consumer(GENEROUS).await;
    let (mut tiny, silent, silent_id) = slow_consumer(TINY).await;

    cut_and_counted_once(&mut tiny, silent_id).await;
    still_in_its_close(&mut generous);

    // Its client reads at last: what its sockets held, then the 1013.
    let mut got = Vec::new();
    let close = loop {
        match next_data(&mut patient).await {
            Message::Binary(push) => {
                assert!(push.len() == PUSH && push.iter().all(|b| *b == push[0]));
                got.push(push[0]);
            }
            Message::Close(close) => break close.expect("a close frame"),
            other => panic!("not a push: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Again);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    // Its hanging up ends the close (its EOF, read by the linger).
    drop(patient);
    ended_uncounted(&mut generous, patient_id).await;
    drop(silent);
    tiny.stop().await;
    generous.stop().await;
}

/// The slow consumer `id` of `tiny` (a bound its client, reading nothing,
/// passes: [`TINY`]) was cut: its handler heard `slow_consumer`, its close
/// is over (no connection open) and counted once in
/// `limit_hits{limit="linger_timeout"}`. Also `linger_once.rs`'s and
/// `framed_tls_linger.rs`'s.
pub(crate) async fn cut_and_counted_once(tiny: &mut MsgServer, id: ConnectionId) {
    assert_eq!(tiny.next_close().await, (id, CloseReason::SlowConsumer));
    tiny.wait_stats("the close ended", |s| s.connections_open == 0)
        .await;
    let cut = limit_hits(&tiny.handle.stats(), "linger_timeout");
    assert_eq!(cut, 1, "the tiny bound's close counted once");
}

/// The slow consumer of `generous` (its bound [`GENEROUS`]), whose close
/// began before one a tiny bound cut, is still in its close: its handler
/// has not heard, it is open and uncounted. Also `framed_tls_linger.rs`'s.
pub(crate) fn still_in_its_close(generous: &mut MsgServer) {
    assert!(
        generous.closes.try_recv().is_err(),
        "the close with an hour's bound ended before the one with a millisecond's"
    );
    let stats = generous.handle.stats();
    assert_eq!(limit_hits(&stats, "linger_timeout"), 0, "{stats:?}");
    assert_eq!(stats.connections_open, 1, "{stats:?}");
}

/// The close of `generous`'s slow consumer `id`, its client gone, ended
/// as a slow consumer's, uncounted: a close its peer ended is not cut.
/// Also `framed_tls_linger.rs`'s.
pub(crate) async fn ended_uncounted(generous: &mut MsgServer, id: ConnectionId) {
    assert_eq!(generous.next_close().await, (id, CloseReason::SlowConsumer));
    generous
        .wait_stats("the close ended", |s| s.connections_open == 0)
        .await;
    assert_eq!(
        limit_hits(&generous.handle.stats(), "linger_timeout"),
        0,
        "a close its peer ended is not cut"
    );
}
