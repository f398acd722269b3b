//! End-to-end tests of `megaconn load` against a real (test) HTTP/1.1 server on
//! 127.0.0.1: request counts must add up exactly on both sides.

use crate::common;

use common::{Mode, Server};
use megaconn_load::{run_load, LoadArgs, LoadError};

/// `megaconn load URL -q EXTRA…` of `server`'s URL.
fn args(server: &Server, extra: &[&str]) -> LoadArgs {
    common::load_args(&server.url(), extra)
}

#[test]
fn closed_loop_counts_add_up() {
    let server = common::start(Mode::Fixed);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let plot = dir.path().join("r.svg");
    let mut a = args(&server, &["-n", "2000", "-c", "4", "-t", "2"]);
    a.json = Some(json.clone());
    a.plot = Some(plot.clone());
    let r = run_load(a).unwrap();
    assert_eq!(r.requests, 2000);
    assert_eq!(server.requests(), 2000);
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.latency_us.count, 2000);
    assert_eq!(r.bytes_read, 2000 * 51); // 51 bytes per response
    let (p50, max) = (r.latency_us.p50.unwrap(), r.latency_us.max.unwrap());
    assert!(p50 > 0.0 && p50 <= max);
    assert!(r.client_cpu_secs > 0.0);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    for key in [
        "requests",
        "errors",
        "duration_secs",
        "rps",
        "bytes_read",
        "client_cpu_secs",
        "latency_us",
        "target_rate",
        "achieved_rate",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["requests"], 2000);
    assert!(v["target_rate"].is_null());
    for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(
            v["latency_us"][p].as_f64().is_some(),
            "missing latency_us.{p}"
        );
    }
    assert!(std::fs::read_to_string(plot).unwrap().contains("<svg"));
}

#[test]
fn pipelined_chunked_counts_add_up() {
    let server = common::start(Mode::Chunked);
    let r = run_load(args(
        &server,
        &["-n", "3001", "-c", "3", "-t", "1", "--pipeline", "8"],
    ))
    .unwrap();
    assert_eq!(
        (r.requests, server.requests(), r.errors_total),
        (3001, 3001, 0)
    );
}

#[test]
fn open_loop_counts_add_up_and_reports_rate() {
    let server = common::start(Mode::Fixed);
    let r = run_load(args(&server, &["-n", "300", "-c", "3", "--rate", "3000"])).unwrap();
    assert_eq!((r.requests, server.requests()), (300, 300));
    assert_eq!(r.errors_total, 0);
    assert_eq!(r.target_rate, Some(3000.0));
    // The achieved rate is what was sent over the run's duration: all 300.
    let sent = r.achieved_rate * r.duration_secs;
    assert!(
        (sent - 300.0).abs() < 0.5,
        "{} req/s over {} s",
        r.achieved_rate,
        r.duration_secs
    );
    // The schedule never sends early: the last of each connection's 100
    // requests is due 99 intervals of 1 ms after its first, so the run takes
    // at least that long, and the rate stays at or under the target.
    assert!(r.duration_secs >= 0.099, "{}", r.duration_secs);
    assert!(r.achieved_rate <= 3000.0 * 1.01, "{}", r.achieved_rate);
    let shortfall = (100.0 * (1.0 - r.achieved_rate / 3000.0)).max(0.0);
    assert!((r.rate_shortfall_pct.unwrap() - shortfall).abs() < 1e-9);
    // An `-n` run that completed sent every request it had: none left behind
    // (this holds by construction; see the run below for one that falls behind).
    assert_eq!(r.behind_requests, Some(0));
}

/// An open-loop run the server cannot keep up with: every answer takes
/// 20 ms, so 2 connections (one request in flight each) get at most ~50
/// answers in 500 ms, while 1000 req/s asks for 500. The report must say
/// how far the run fell behind, and what was sent plus what was left behind
/// must add up to the schedule: `rate × duration` (+1 per connection, whose
/// request 0 is due at the start).
#[test]
fn open_loop_falls_behind_a_slow_server_and_says_by_how_much() {
    const DELAY_MS: u64 = 20;
    let server = common::start(Mode::Delay(std::time::Duration::from_millis(DELAY_MS)));
    let r = run_load(args(
        &server,
        &[
            "-d",
            "500ms",
            "-c",
            "2",
            "--rate",
            "1000",
            "--timeout",
            "5s",
        ],
    ))
    .unwrap();
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    let behind = r.behind_requests.expect("an open-loop run reports it");
    let sent = (r.achieved_rate * r.duration_secs).round() as u64;
    // The server answers one request per connection per 20 ms at best.
    let most_served = 2 * (500 / DELAY_MS + 1);
    assert!(
        sent <= most_served + 2,
        "sent {sent}, the server allows {most_served}"
    );
    let due = 1000 * 500 / 1000 + 2;
    assert!(
        behind > 0,
        "a run at 10x the server's pace fell behind by nothing"
    );
    assert!(
        sent + behind <= due && sent + behind + 2 >= due,
        "sent {sent} + behind {behind} != due {due}"
    );
    assert!(
        r.rate_shortfall_pct.unwrap() > 80.0,
        "{:?}",
        r.rate_shortfall_pct
    );
    assert!(r.send_lag_max_us.unwrap() > 0.0);
}

#[test]
fn status_errors_are_counted_by_kind() {
    let server = common::start(Mode::Every500(10));
    let r = run_load(args(&server, &["-n", "1000", "-c", "2"])).unwrap();
    assert_eq!(server.requests(), 1000);
    assert_eq!(r.errors.status_5xx, 100);
    assert_eq!(r.requests, 900);
    assert_eq!(r.errors_total, 100);
}

#[test]
fn connection_close_reconnects_without_errors() {
    let server = common::start(Mode::CloseEvery(7));
    let r = run_load(args(&server, &["-n", "500", "-c", "2", "--pipeline", "1"])).unwrap();
    assert_eq!(
        (r.requests, server.requests(), r.errors_total),
        (500, 500, 0)
    );
    assert!(
        server
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 500 / 7
    );
}

#[test]
fn posts_bodies_and_headers() {
    let server = common::start(Mode::Fixed);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, b"0123456789").unwrap();
    let at = format!("@{}", body.display());
    let r = run_load(args(
        &server,
        &[
            "-n",
            "50",
            "-c",
            "1",
            "-m",
            "POST",
            "-H",
            "X-Test: 1",
            "--body",
            &at,
        ],
    ))
    .unwrap();
    assert_eq!(r.requests, 50);
    let seen = &server.stats;
    assert_eq!(
        seen.body_bytes.load(std::sync::atomic::Ordering::SeqCst),
        500
    );
    // What the server parsed: 50 POSTs, each with the header and the length.
    assert_eq!(
        *seen.methods.lock().unwrap(),
        [("POST".to_string(), 50)].into()
    );
    assert_eq!(seen.header("x-test", "1"), 50);
    assert_eq!(seen.header("content-length", "10"), 50);
}

#[test]
fn duration_mode_stops_and_counts_match_within_in_flight() {
    let server = common::start(Mode::Fixed);
    let r = run_load(args(
        &server,
        &["-d", "300ms", "-c", "4", "--pipeline", "2"],
    ))
    .unwrap();
    let served = server.requests();
    assert!(r.requests > 0);
    // Requests still in flight at the deadline were served but not counted.
    assert!(
        served >= r.requests && served <= r.requests + 4 * 2,
        "{served} vs {}",
        r.requests
    );
    assert!(r.duration_secs >= 0.3 && r.duration_secs < 10.0);
}

#[test]
fn refuses_unbounded_and_unreachable_runs() {
    let server = common::start(Mode::Fixed);
    assert!(matches!(
        run_load(args(&server, &[])),
        Err(LoadError::Unbounded)
    ));
    let url = format!("http://{}/", common::closed_port());
    let a = common::load_argv(["load", url.as_str(), "-n", "10", "-q"]);
    let err = run_load(a).unwrap_err();
    assert!(matches!(err, LoadError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("is the server running"));
}

#[test]
fn failures_are_counted_by_kind_and_bounded_by_the_budget() {
    // Each failure consumes one request of the budget, so these runs end by themselves.
    let silent = common::start(Mode::Silent);
    let r = run_load(args(&silent, &["-n", "2", "-c", "1", "--timeout", "200ms"])).unwrap();
    assert_eq!(
        (r.requests, r.errors.read_timeout, r.errors_total),
        (0, 2, 2)
    );

    let closing = common::start(Mode::CloseWithoutReply);
    let r = run_load(args(&closing, &["-n", "3", "-c", "1"])).unwrap();
    assert_eq!(r.requests, 0);
    assert_eq!(r.errors.closed + r.errors.reset, 3, "{:?}", r.errors);

    let garbage = common::start(Mode::Garbage);
    let r = run_load(args(&garbage, &["-n", "4", "-c", "2"])).unwrap();
    assert_eq!((r.requests, r.errors.bad_response), (0, 4));
    assert_eq!(r.latency_us.count, 0);
    // Nothing was timed: no percentiles, not a p99 of 0.
    assert_eq!((r.latency_us.p50, r.latency_us.p99), (None, None));
}

/// A server that, on its one connection that sends anything, reads all 16
/// pipelined requests, answers 3 of them (the third saying `Connection:
/// close` if `say_close`) and closes. Returns its address and its thread
/// (which ends after that connection).
fn answers_3_of_16(say_close: bool) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || loop {
        let (mut sock, _) = listener.accept().unwrap();
        let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
        // Read every request first: closing with unread bytes would send
        // a reset, not the FIN after the answers.
        while seen.windows(4).filter(|w| w == b"\r\n\r\n").count() < 16 {
            match sock.read(&mut buf).unwrap() {
                0 => break,
                n => seen.extend_from_slice(&buf[..n]),
            }
        }
        if seen.is_empty() {
            continue; // run_load's reachability check
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let last: &[u8] = if say_close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            ok
        };
        sock.write_all(&[&ok[..], ok, last].concat()).unwrap();
        return; // closes the connection, and the listener
    });
    (url, thread)
}

/// HTTP/1.1 requests pipelined behind a connection's end are lost, each
/// one: 16 sent, 3 answered, 13 errors (not one per connection), whether
/// the server says `Connection: close` or just closes.
#[test]
fn pipelined_requests_lost_with_the_connection_are_each_counted() {
    for say_close in [true, false] {
        let (url, server) = answers_3_of_16(say_close);
        let argv = [
            "load",
            &url,
            "-q",
            "-n",
            "16",
            "-c",
            "1",
            "--pipeline",
            "16",
        ];
        let r = run_load(common::load_argv(argv)).unwrap();
        server.join().unwrap();
        assert_eq!(
            (r.requests, r.errors.closed, r.errors_total),
            (3, 13, 13),
            "say_close {say_close}: {:?}",
            r.errors
        );
    }
}
