//! `hold tcp://` against an in-process megaconn framed server: length-prefixed
//! heartbeats answered, and `--receive` counting a broadcast (whose payload
//! carries its send time) once per connection, with its delivery latency.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use megaconn::{FramedHandler, Framing, Hub, Session};
use megaconn_load::run_hold;

use crate::common;

/// Answers every frame `PONG`; once `expected` connections have each sent
/// a heartbeat, broadcasts one message stamped with its send time.
///
/// Counted at the first heartbeat, not at `on_open`: `hold` first connects
/// once to check the target is reachable and closes that probe at once, so
/// "the `expected`-th open" may come before the last held connection exists
/// (the broadcast then reached one connection fewer in about 1 run in 3).
struct Pusher {
    hub: Hub,
    greeted: AtomicU64,
    expected: u64,
}

impl FramedHandler for Pusher {
    /// Whether this connection has sent its first heartbeat.
    type State = bool;

    async fn on_message(&self, seen: &mut bool, frame: Bytes, _: &Session) -> Option<Bytes> {
        assert_eq!(frame, "PING", "the heartbeat's body, without a line ending");
        if !std::mem::replace(seen, true) && self.greeted.fetch_add(1, SeqCst) + 1 == self.expected
        {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let mut stamped = format!("t={} ", now.as_nanos()).into_bytes();
            stamped.resize(64, b'.');
            self.hub
                .broadcast(stamped)
                .expect("queued: the server serves");
        }
        Some(Bytes::from_static(b"PONG"))
    }
}

#[test]
fn length_prefixed_heartbeats_and_received_pushes() {
    const N: u64 = 5;
    let mut server = megaconn::Server::builder()
        .workers(1)
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4))
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    let pusher = Pusher {
        hub: server.hub(),
        greeted: AtomicU64::new(0),
        expected: N,
    };
    // The server lives until the test process ends.
    common::run_on_thread(move || server.serve_framed(pusher));
    let target = format!("tcp://{addr}");
    let args = common::hold_argv([
        "hold",
        &target,
        "-q",
        "-c",
        "5",
        "--ramp",
        "20000",
        "-d",
        "2s",
        "--interval",
        "50ms",
        "--tcp-framing",
        "u32",
        "--send",
        "PING\\n",
        "--expect",
        "PONG",
        "--receive",
    ]);
    let r = run_hold(args).unwrap();
    assert_eq!(r.connections_open_at_end, N, "{r:?}");
    assert_eq!(r.heartbeat_errors, 0, "{r:?}");
    assert!(r.heartbeats_ok > 0, "{r:?}");
    assert_eq!(r.pushes_received, N, "one broadcast, one push each: {r:?}");
    // Heartbeats and pushes were read by the parking lot.
    assert_eq!(r.connections_parked, N, "{r:?}");
    assert_eq!(r.push_latency_us.count, N);
    assert!(r.push_latency_us.max.unwrap() > 0.0);
    assert!(r.to_text().contains("pushes       5 received"));
}
