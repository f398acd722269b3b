//! Tests of `census.rs`: a message connection counts once in its worker's
//! gauges of message connections (`megaconn_message_connections{protocol}`,
//! `ServerHandle::message_connections`) from its registration to its close,
//! whatever it goes through (park, wake, a close by the lot, a hand-over
//! that moves it or not, a refused park). Each test scripts the steps a
//! protocol takes, on the worker's thread, and reads the gauges between
//! every two of them: where the old code's window was (a woken connection
//! out of its table, not registered yet), they are read there, with no
//! timing to depend on.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use crate::conn::context::WorkerContext;
use crate::conn::ProtoTag;
use crate::message::hub::{ConnectionId, Generation};
use crate::message::table::{Parked, SideTable};
use crate::message::test_support::{worker, Plain};
use crate::message::worker::{local, Local, MessageProtocol};

/// The worker's gauges: the total, and framed, WebSocket, SSE.
fn gauges(ctx: &WorkerContext) -> (i64, [i64; 3]) {
    let m = &ctx.stats.messages;
    let by = [0, 1, 2].map(|p| m.connections_by_protocol[p].load(Relaxed));
    (m.connections.load(Relaxed), by)
}

/// `protocol`'s side table (a tag of its own per protocol).
fn table_of(local: &Local, protocol: MessageProtocol) -> Rc<SideTable<()>> {
    let tag = ProtoTag(40 + protocol as u8);
    local.table::<()>((tag, Some(protocol)), || vec![Rc::new(Plain)])
}

/// A parked entry of connection `generation`.
fn parked(generation: Generation) -> Parked<()> {
    Parked {
        state: (),
        variant: 0,
        due: None,
        send_at: None,
        generation,
        behind: false,
    }
}

/// Connection `id` parks as a protocol parks it: its state into `table`,
/// then its task drops its registration for pushes.
fn park(table: &SideTable<()>, id: ConnectionId, awake: Option<crate::message::worker::Awake>) {
    table.put(id.fd(), parked(id.generation()));
    drop(awake);
}

/// Runs `test` on a worker's thread (its hub's pump is a local task).
fn on_worker(hub: bool, test: impl FnOnce(&WorkerContext, Rc<Local>)) {
    let ctx = worker(hub);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let set = tokio::task::LocalSet::new();
    set.block_on(&runtime, async {
        let local = local(&ctx);
        test(&ctx, local);
    });
}

/// Session 56's CI read `[0, 2, 1]` where `[1, 2, 1]` was due, right after
/// a push woke a parked framed connection: the table took its count out
/// as the woken task took its state, and `Local::awake` put it back only
/// as the task registered. Here one framed connection parks and wakes
/// three times beside two parked WebSockets and an event stream, and the
/// gauges are read after every step, the old window included.
#[test]
fn a_framed_connection_counts_once_through_park_and_wake() {
    on_worker(true, |ctx, local| {
        let framed = table_of(&local, MessageProtocol::Framed);
        let ws = table_of(&local, MessageProtocol::WebSocket);
        let sse = table_of(&local, MessageProtocol::Sse);
        for (table, fd) in [(&ws, 61_001), (&ws, 61_002), (&sse, 61_003)] {
            let id = local.new_id(fd);
            let awake = local.awake(id, table.wire(0));
            park(table, id, awake);
        }
        let due = (4, [1, 2, 1]);
        let id = local.new_id(61_000);
        let awake = local.awake(id, framed.wire(0)).expect("a hub");
        assert_eq!(gauges(ctx), due, "registered");
        framed.put(id.fd(), parked(id.generation()));
        assert_eq!(gauges(ctx), due, "parked, its registration still held");
        drop(awake);
        assert_eq!(gauges(ctx), due, "parked");
        for round in 0..3 {
            // A push wakes it; the woken task takes its state...
            let state = framed.take(id.fd()).expect("parked");
            // ...and here it is neither parked nor registered yet.
            assert_eq!(gauges(ctx), due, "woken, state taken (round {round})");
            let awake = local.awake(id, framed.wire(0));
            assert_eq!(gauges(ctx), due, "awake (round {round})");
            framed.put(id.fd(), state);
            assert_eq!(gauges(ctx), due, "parked again (round {round})");
            drop(awake);
            assert_eq!(gauges(ctx), due, "its registration gone (round {round})");
        }
        // It wakes and closes awake: out once its registration goes.
        framed.take(id.fd()).expect("parked");
        let awake = local.awake(id, framed.wire(0));
        local.closed(id);
        assert_eq!(gauges(ctx), due, "closed, its registration still held");
        drop(awake);
        assert_eq!(gauges(ctx), (3, [0, 2, 1]), "closed");
    });
}

/// A parked connection the lot closes (shutdown, its idle deadline, a
/// slow consumer's close) or that wakes and closes before it registers
/// (woken behind on a push: it writes the rest first, an await): counted
/// until its close is reported, then not, once.
#[test]
fn a_connection_taken_to_close_leaves_the_count_at_its_close() {
    on_worker(true, |ctx, local| {
        let framed = table_of(&local, MessageProtocol::Framed);
        let ids = [62_000, 62_001].map(|fd| local.new_id(fd));
        for id in ids {
            let awake = local.awake(id, framed.wire(0));
            park(&framed, id, awake);
        }
        assert_eq!(gauges(ctx), (2, [2, 0, 0]));
        // Both out of the table at once (the second waits in the map).
        for id in ids {
            framed.take(id.fd()).expect("parked");
        }
        assert_eq!(gauges(ctx), (2, [2, 0, 0]), "taken, not closed yet");
        local.closed(ids[1]);
        assert_eq!(gauges(ctx), (1, [1, 0, 0]), "one closed");
        local.closed(ids[1]);
        assert_eq!(gauges(ctx), (1, [1, 0, 0]), "a close reported twice");
        local.closed(ids[0]);
        assert_eq!(gauges(ctx), (0, [0, 0, 0]), "both closed");
    });
}

/// An upgrade's hand-over takes each parked connection out of its table:
/// one that cannot move goes back (counted all along), one that moves
/// closes here as handed over (out once).
#[test]
fn a_hand_over_moves_the_count_or_takes_it_out_once() {
    on_worker(true, |ctx, local| {
        let framed = table_of(&local, MessageProtocol::Framed);
        let (stays, moves) = (local.new_id(63_000), local.new_id(63_001));
        // Adopted from the previous process: parked at once, never awake.
        for id in [stays, moves] {
            framed.put(id.fd(), parked(id.generation()));
        }
        assert_eq!(gauges(ctx), (2, [2, 0, 0]), "adopted");
        let state = framed.take(stays.fd()).expect("parked");
        assert_eq!(gauges(ctx), (2, [2, 0, 0]), "taken to export");
        framed.put(stays.fd(), state);
        assert_eq!(gauges(ctx), (2, [2, 0, 0]), "it stays");
        framed.take(moves.fd()).expect("parked");
        assert_eq!(gauges(ctx), (2, [2, 0, 0]), "taken to export");
        local.closed(moves);
        assert_eq!(gauges(ctx), (1, [1, 0, 0]), "it moved");
    });
}

/// A connection that cannot park (no kind left for it, its socket would
/// not give itself up) closes awake: out once, as its registration goes.
#[test]
fn a_refused_park_leaves_the_count_once() {
    on_worker(true, |ctx, local| {
        let ws = table_of(&local, MessageProtocol::WebSocket);
        let id = local.new_id(64_000);
        let awake = local.awake(id, ws.wire(0));
        assert_eq!(gauges(ctx), (1, [0, 1, 0]));
        local.closed(id);
        drop(awake);
        assert_eq!(gauges(ctx), (0, [0, 0, 0]));
    });
}

/// A connection taken out of its table that never came back nor reported
/// its close (none should) is not counted for good: its descriptor's next
/// connection takes its count out.
#[test]
fn a_connection_lost_on_its_way_out_is_not_counted_for_good() {
    on_worker(true, |ctx, local| {
        let sse = table_of(&local, MessageProtocol::Sse);
        let id = local.new_id(65_000);
        sse.put(id.fd(), parked(id.generation()));
        sse.take(id.fd()).expect("parked");
        assert_eq!(gauges(ctx), (1, [0, 0, 1]));
        let next = local.new_id(65_000);
        assert_eq!(gauges(ctx), (0, [0, 0, 0]), "its descriptor reused");
        let awake = local.awake(next, sse.wire(0));
        assert_eq!(gauges(ctx), (1, [0, 0, 1]));
        drop(awake);
        assert_eq!(gauges(ctx), (0, [0, 0, 0]));
    });
}

/// Without a hub an awake connection is not registered for pushes and not
/// counted (no broadcast reaches it: `ServerHandle::message_connections`);
/// a parked one is. Out of its table it stays counted until it is awake.
#[test]
fn without_a_hub_only_parked_connections_count() {
    on_worker(false, |ctx, local| {
        let framed = table_of(&local, MessageProtocol::Framed);
        let id = local.new_id(66_000);
        assert!(local.awake(id, framed.wire(0)).is_none(), "no hub");
        assert_eq!(gauges(ctx), (0, [0, 0, 0]), "awake");
        framed.put(id.fd(), parked(id.generation()));
        assert_eq!(gauges(ctx), (1, [1, 0, 0]), "parked");
        framed.take(id.fd()).expect("parked");
        assert_eq!(gauges(ctx), (1, [1, 0, 0]), "woken, not awake yet");
        assert!(local.awake(id, framed.wire(0)).is_none());
        assert_eq!(gauges(ctx), (0, [0, 0, 0]), "awake");
        framed.put(id.fd(), parked(id.generation()));
        framed.take(id.fd()).expect("parked");
        local.closed(id);
        assert_eq!(gauges(ctx), (0, [0, 0, 0]), "closed");
    });
}
