//! End-to-end tests of `megaconn load` against a real (test) HTTP/1.1 server on
//! 127.0.0.1: request counts must add up exactly on both sides.

mod common;

use clap::Parser;
use common::{Mode, Server};
use megaconn_load::{run_load, LoadArgs, LoadError};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn args(server: &Server, extra: &[&str]) -> LoadArgs {
    let url = server.url();
    let mut v = vec!["load", url.as_str(), "-q"];
    v.extend_from_slice(extra);
    Cli::parse_from(v).args
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
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.max);
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
    assert_eq!(r.target_rate, Some(3000.0));
    assert!(r.achieved_rate > 0.0);
    assert!(r.rate_shortfall_pct.is_some() && r.behind_requests == Some(0));
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
    assert_eq!(
        server
            .stats
            .body_bytes
            .load(std::sync::atomic::Ordering::SeqCst),
        500
    );
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
    let a = Cli::parse_from(["load", url.as_str(), "-n", "10", "-q"]).args;
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
}
