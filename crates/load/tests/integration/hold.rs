//! End-to-end tests of `megaconn hold` (single process, in this test process)
//! against a test server on 127.0.0.1 that counts connections.

use crate::common;

use std::sync::atomic::Ordering::SeqCst;

use common::{Mode, Server};
use megaconn_load::{run_hold, HoldArgs, LoadError};

fn args(target: &str, extra: &[&str]) -> HoldArgs {
    let mut v = vec![
        "hold",
        target,
        "-q",
        "--ramp",
        "20000",
        "-d",
        "300ms",
        "--timeout",
        "2s",
    ];
    v.extend_from_slice(extra);
    common::hold_argv(v)
}

fn http(server: &Server) -> String {
    format!("http://{}/beat", server.addr)
}

#[test]
fn holds_exactly_n_connections() {
    let server = common::start(Mode::Fixed);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("hold.json");
    let mut a = args(
        &http(&server),
        &["-c", "60", "--interval", "100ms", "-t", "2"],
    );
    a.json = Some(json.clone());
    let r = run_hold(a).unwrap();
    let s = &server.stats;
    // 60 held connections (plus the reachability probe, which sends nothing).
    assert_eq!(s.active.load(SeqCst), 60);
    assert_eq!(s.peak.load(SeqCst), 60);
    assert_eq!(s.accepted.load(SeqCst), 61);
    assert_eq!(
        (
            r.connections_peak,
            r.connections_open_at_end,
            r.target_connections
        ),
        (60, 60, 60)
    );
    assert_eq!(
        (
            r.drops,
            r.resets,
            r.failed_connects,
            r.reconnects,
            r.heartbeat_errors
        ),
        (0, 0, 0, 0, 0)
    );
    // Every connection made its opening request, counted apart from the
    // heartbeats; heartbeats in flight at the end were served but not counted.
    assert_eq!(r.opens_ok, 60, "{r:?}");
    assert!(r.heartbeats_ok > 0, "{r:?}");
    let served = server.requests();
    let answered = r.heartbeats_ok + r.opens_ok;
    assert!(
        served >= answered && served <= answered + 60,
        "{served} vs {answered}"
    );
    // Only heartbeats are timed: the opening requests are not in the
    // histograms.
    assert_eq!(r.heartbeat_latency_us.count, r.heartbeats_ok);
    assert!(
        r.heartbeat_latency_holding_us.count <= r.heartbeats_ok,
        "{} after the ramp of {}",
        r.heartbeat_latency_holding_us.count,
        r.heartbeats_ok
    );
    // Every connection waited in its thread's parking lot, not in a task.
    assert_eq!(r.connections_parked, 60);
    assert_eq!(r.processes, 1);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    for key in [
        "target_connections",
        "connections_peak",
        "connections_open_at_end",
        "ramp_secs",
        "drops",
        "resets",
        "failed_connects",
        "reconnects",
        "heartbeats_ok",
        "heartbeat_errors",
        "opens_ok",
        "heartbeat_latency_us",
        "heartbeat_latency_holding_us",
        "processes",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["connections_peak"], 60);
}

/// The opening request of each connection is not a heartbeat: with no beat
/// due before the hold ends, none is counted, and none is timed.
#[test]
fn opening_requests_are_not_heartbeats() {
    let server = common::start(Mode::Fixed);
    // First beats fall at random in [0, 24 h): none before the hold ends.
    let r = run_hold(args(&http(&server), &["-c", "10", "--interval", "24h"])).unwrap();
    assert_eq!((r.opens_ok, r.heartbeats_ok), (10, 0), "{r:?}");
    assert_eq!(r.heartbeat_latency_us.count, 0, "{r:?}");
    assert_eq!(r.heartbeat_latency_us.p99, None, "{r:?}");
    assert_eq!(server.requests(), 10);
}

#[test]
fn reports_a_connection_the_server_drops() {
    let server = common::start(Mode::DropFirst);
    let r = run_hold(args(&http(&server), &["-c", "10"])).unwrap();
    assert_eq!(server.stats.active.load(SeqCst), 10);
    assert_eq!(r.drops, 1);
    assert_eq!(r.connections_open_at_end, 9);
    assert_eq!(r.reconnects, 0);
}

#[test]
fn reconnects_a_dropped_connection_when_asked() {
    let server = common::start(Mode::DropFirst);
    let r = run_hold(args(&http(&server), &["-c", "10", "--reconnect"])).unwrap();
    assert_eq!(r.drops, 1);
    assert_eq!(r.reconnects, 1);
    assert_eq!(r.connections_open_at_end, 10);
    assert_eq!(server.stats.active.load(SeqCst), 11);
}

#[test]
fn tcp_line_heartbeats() {
    let server = common::start(Mode::Lines);
    let target = format!("tcp://{}", server.addr);
    let r = run_hold(args(
        &target,
        &[
            "-c",
            "5",
            "--interval",
            "20ms",
            "--send",
            "PING\\n",
            "--expect",
            "PONG",
        ],
    ))
    .unwrap();
    assert_eq!(r.connections_open_at_end, 5);
    assert_eq!(r.opens_ok, 0, "tcp:// has no opening request: {r:?}");
    assert_eq!(r.connections_parked, 5, "tcp:// connections park: {r:?}");
    assert!(r.heartbeats_ok >= 5, "{r:?}");
    assert_eq!(r.heartbeat_errors, 0);
    let served = server.requests();
    assert!(served >= r.heartbeats_ok && served <= r.heartbeats_ok + 5);
}

#[test]
fn unexpected_reply_counts_as_heartbeat_error() {
    let server = common::start(Mode::Lines);
    let target = format!("tcp://{}", server.addr);
    let r = run_hold(args(
        &target,
        &["-c", "3", "--interval", "20ms", "--expect", "HELLO"],
    ))
    .unwrap();
    assert_eq!(r.heartbeat_errors, 3, "{r:?}");
    assert_eq!(r.heartbeats_ok, 0);
    assert_eq!(r.connections_parked, 3, "{r:?}");
}

/// A parked tcp:// connection whose heartbeat gets no reply fails after
/// --timeout, from the lot's own deadline (no tokio timer per connection).
#[test]
fn unanswered_tcp_heartbeats_fail_after_the_timeout() {
    let server = common::start(Mode::Deaf);
    let target = format!("tcp://{}", server.addr);
    let argv = ["hold", &target, "--tcp-framing", "u16"];
    let r = run_hold(common::hold_argv(
        argv.into_iter().chain(common::UNANSWERED),
    ))
    .unwrap();
    assert_eq!((r.heartbeats_ok, r.heartbeat_errors), (0, 3), "{r:?}");
    assert_eq!((r.connections_open_at_end, r.drops), (0, 0), "{r:?}");
    assert_eq!(r.connections_parked, 3, "{r:?}");
}

/// Cleartext HTTP heartbeats go through the thread's parking lot: each
/// way a parked connection can end, and replies that arrive in pieces.
#[test]
fn parked_http_heartbeats_end_as_the_server_says() {
    // Each connection's second response (its first heartbeat's) closes.
    let server = common::start(Mode::CloseEvery(2));
    let r = run_hold(args(&http(&server), &["-c", "4", "--interval", "20ms"])).unwrap();
    assert_eq!(
        (r.opens_ok, r.heartbeats_ok, r.drops, r.heartbeat_errors),
        (4, 4, 4, 0),
        "{r:?}"
    );
    assert_eq!(r.connections_open_at_end, 0);

    // A 500 is a failed heartbeat: hold closes that connection itself.
    let server = common::start(Mode::Every500(6));
    let r = run_hold(args(&http(&server), &["-c", "3", "--interval", "20ms"])).unwrap();
    assert!(r.heartbeat_errors >= 1, "{r:?}");
    assert_eq!(r.drops, 0, "{r:?}");
    assert_eq!(r.connections_open_at_end, 3 - r.heartbeat_errors, "{r:?}");

    // Unanswered heartbeats fail after --timeout (opening requests answered).
    let server = common::start(Mode::AnswerFirst);
    let target = http(&server);
    let r = run_hold(common::hold_argv(
        ["hold", &target].into_iter().chain(common::UNANSWERED),
    ))
    .unwrap();
    assert_eq!(
        (r.opens_ok, r.heartbeats_ok, r.heartbeat_errors),
        (3, 0, 3),
        "{r:?}"
    );
    assert_eq!(r.connections_open_at_end, 0, "{r:?}");
    assert_eq!(r.drops, 0);
}

/// A heartbeat (or opening request) whose connection ends before its reply
/// failed: counting only the drop left it out of every heartbeat count.
#[test]
fn requests_lost_with_their_connection_fail() {
    // Each connection's first heartbeat: the server closes instead of
    // answering (the parking lot's path).
    let server = common::start(Mode::AnswerFirstThenClose);
    let r = run_hold(args(&http(&server), &["-c", "3", "--interval", "20ms"])).unwrap();
    assert_eq!(
        (r.opens_ok, r.heartbeats_ok, r.heartbeat_errors, r.drops),
        (3, 0, 3, 3),
        "{r:?}"
    );
    assert_eq!(r.heartbeats_pending_at_end, 0, "{r:?}");
    // The opening request (the connection's own task's path).
    let server = common::start(Mode::CloseWithoutReply);
    let r = run_hold(args(&http(&server), &["-c", "3", "--interval", "20ms"])).unwrap();
    assert_eq!(
        (r.opens_ok, r.heartbeats_ok, r.heartbeat_errors, r.drops),
        (0, 0, 3, 3),
        "{r:?}"
    );
}

/// Heartbeats still waiting for their reply when the run stops are neither
/// ok nor failed: they are reported apart.
#[test]
fn heartbeats_waiting_at_the_end_are_reported() {
    let server = common::start(Mode::Deaf);
    let target = format!("tcp://{}", server.addr);
    let argv = ["hold", &target, "-q", "-c", "3", "--interval", "20ms"];
    // Replies could take a minute; the hold ends after 300 ms.
    let argv = argv.into_iter().chain(["--timeout", "60s", "-d", "300ms"]);
    let r = run_hold(common::hold_argv(argv)).unwrap();
    assert_eq!(
        (
            r.heartbeats_ok,
            r.heartbeat_errors,
            r.heartbeats_pending_at_end
        ),
        (0, 0, 3),
        "{r:?}"
    );
}

#[test]
fn parked_http_replies_in_pieces_and_chunked() {
    for mode in [Mode::Split, Mode::Chunked] {
        let server = common::start(mode);
        let r = run_hold(args(&http(&server), &["-c", "3", "--interval", "20ms"])).unwrap();
        assert!(r.heartbeats_ok > 3, "{mode:?}: {r:?}");
        assert_eq!((r.heartbeat_errors, r.drops), (0, 0), "{mode:?}: {r:?}");
        assert_eq!(r.connections_open_at_end, 3, "{mode:?}: {r:?}");
        // A beat may be on its way when the hold ends.
        let served = server.requests();
        let answered = r.heartbeats_ok + r.opens_ok;
        assert!(served >= answered && served <= answered + 3, "{mode:?}");
    }
}

/// A reply bigger than the thread's 64 KiB read buffer, on the parked path:
/// the lot has to come back for the rest (its level-triggered epoll reports
/// the socket again; an edge-triggered one, tried, must read on to the end),
/// or the tail waits in the socket and the heartbeat times out.
#[test]
fn parked_http_replies_larger_than_the_read_buffer() {
    let server = common::start(Mode::Big(300 * 1024));
    let r = run_hold(args(&http(&server), &["-c", "3", "--interval", "20ms"])).unwrap();
    assert!(r.heartbeats_ok > 3, "{r:?}");
    assert_eq!((r.heartbeat_errors, r.drops), (0, 0), "{r:?}");
    assert_eq!(r.connections_open_at_end, 3, "{r:?}");
}

#[test]
fn spreads_connections_over_source_addresses() {
    let server = common::start(Mode::Fixed);
    let r = run_hold(args(
        &http(&server),
        &["-c", "20", "--source", "127.0.0.2-127.0.0.5"],
    ))
    .unwrap();
    assert_eq!((r.connections_open_at_end, r.sources), (20, 4));
    assert_eq!(server.stats.peak.load(SeqCst), 20);
    // The addresses the server saw: connection g comes from source g % 4,
    // so each of the four carries five.
    let seen = server.stats.peers.lock().unwrap().clone();
    let expected: std::collections::BTreeMap<std::net::IpAddr, u64> = (2..=5)
        .map(|i| (std::net::IpAddr::from([127, 0, 0, i]), 5))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn setup_failures_are_refused_before_any_connection() {
    let server = common::start(Mode::Fixed);
    let t = http(&server);
    let bad_source = run_hold(args(&t, &["-c", "5", "--source", "203.0.113.9"])).unwrap_err();
    assert!(
        matches!(bad_source, LoadError::BadSource { .. }),
        "{bad_source}"
    );
    let ports = run_hold(args(&t, &["-c", "200000", "--source", "127.0.0.2"])).unwrap_err();
    assert!(matches!(ports, LoadError::PortSpace { .. }), "{ports}");
    assert!(ports.to_string().contains("--source"));
    let per_process = run_hold(args(
        &t,
        &[
            "-c",
            "900000",
            "--processes",
            "1",
            "--source",
            "127.0.0.2-127.0.0.99",
        ],
    ))
    .unwrap_err();
    assert!(
        matches!(per_process, LoadError::TooManyPerProcess { .. }),
        "{per_process}"
    );
    assert_eq!(
        server.stats.accepted.load(SeqCst),
        0,
        "no connection before validation passed"
    );
    let unreachable = run_hold(args(
        &format!("http://{}/", common::closed_port()),
        &["-c", "5"],
    ))
    .unwrap_err();
    assert!(
        matches!(unreachable, LoadError::Unreachable { .. }),
        "{unreachable}"
    );
}

#[test]
fn http_heartbeats_carry_method_headers_and_body() {
    let server = common::start(Mode::Fixed);
    let r = run_hold(args(
        &http(&server),
        &[
            "-c",
            "5",
            "-m",
            "POST",
            "-H",
            "X-Beat: 1",
            "--body",
            "abc",
            "--interval",
            "50ms",
        ],
    ))
    .unwrap();
    assert_eq!(r.connections_open_at_end, 5);
    // Once hold's connections are closed on the server too, every request
    // sent was counted: the figures below are final.
    common::wait_until("the server saw every connection close", || {
        server.stats.open.load(SeqCst) == 0
    });
    let served = server.requests();
    assert!(served >= 5);
    // Every request (opening ones and heartbeats) was a POST carrying the
    // header and the 3-byte body, as the server parsed them.
    let stats = &server.stats;
    assert_eq!(stats.body_bytes.load(SeqCst), 3 * served);
    assert_eq!(
        *stats.methods.lock().unwrap(),
        [("POST".to_string(), served)].into()
    );
    assert_eq!(stats.header("x-beat", "1"), served);
    assert_eq!(stats.header("content-length", "3"), served);
}
