//! End-to-end tests of the real `megaconn hold` binary, multi-process included:
//! `--processes 2` must hold exactly as many connections (counted by the server)
//! and report the same totals as one process; setup failures exit non-zero
//! before any load; SIGINT stops the parent and its children.
//!
//! The server is a tiny tokio HTTP/1.1 responder on 127.0.0.1 that counts
//! requests and connections (those that sent at least one request, so the
//! client's reachability probe is not counted as held).

use crate::common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ChildGuard;
use megaconn_load::HoldReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    active: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
}

/// Starts the counting server on an ephemeral port of 127.0.0.1.
fn server() -> (SocketAddr, Arc<Stats>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let s = Arc::clone(&stats);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    let mut active = false;
                    while let Ok(n) = sock.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        if !active {
                            active = true;
                            s.active.fetch_add(1, SeqCst);
                            let open = s.open.fetch_add(1, SeqCst) + 1;
                            s.peak.fetch_max(open, SeqCst);
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let mut out = Vec::new();
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            s.requests.fetch_add(1, SeqCst);
                            out.extend_from_slice(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            );
                        }
                        if sock.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                    if active {
                        s.open.fetch_sub(1, SeqCst);
                    }
                });
            }
        });
    });
    (addr, stats)
}

/// Runs `megaconn hold ARGS…` to its end, at most [`common::CHILD_SAFETY`]
/// (then it is killed, and its children die with it).
fn hold(args: &[&str]) -> Output {
    common::output(Command::new(BIN).arg("hold").args(args))
}

/// Runs a 40-connection hold over `processes` processes, with `extra`
/// arguments; returns the report and server stats.
fn run(processes: &str, extra: &[&str]) -> (HoldReport, Arc<Stats>) {
    let (addr, stats) = server();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("hold.json");
    let url = format!("http://{addr}/beat");
    let out = hold(
        &[
            &url,
            "-c",
            "40",
            "--processes",
            processes,
            "--ramp",
            "20000",
            "-d",
            "500ms",
            "--interval",
            "100ms",
            "--json",
            json.to_str().unwrap(),
            "-q",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = HoldReport::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, stats)
}

#[test]
fn two_processes_hold_exactly_n_and_match_one_process() {
    let (two, s2) = run("2", &[]);
    assert_eq!(two.processes, 2);
    assert_eq!(s2.active.load(SeqCst), 40, "server-side held connections");
    assert_eq!(s2.peak.load(SeqCst), 40);
    assert_eq!(
        (
            two.target_connections,
            two.connections_peak,
            two.connections_open_at_end
        ),
        (40, 40, 40)
    );
    assert_eq!(
        (
            two.drops,
            two.resets,
            two.failed_connects,
            two.heartbeat_errors
        ),
        (0, 0, 0, 0)
    );
    // The children's counts add up: each connection's opening request
    // apart, its heartbeats (and their histograms) on their own.
    assert_eq!(two.opens_ok, 40, "{two:?}");
    assert!(two.heartbeats_ok >= 40);
    assert_eq!(
        two.heartbeat_latency_us.count, two.heartbeats_ok,
        "children's histograms merged"
    );
    let served = s2.requests.load(SeqCst);
    let answered = two.heartbeats_ok + two.opens_ok;
    assert!(served >= answered && served <= answered + 40);

    let (one, s1) = run("1", &[]);
    assert_eq!(one.processes, 1);
    assert_eq!(s1.active.load(SeqCst), 40);
    assert_eq!(
        (
            one.target_connections,
            one.connections_peak,
            one.connections_open_at_end,
            one.drops
        ),
        (
            two.target_connections,
            two.connections_peak,
            two.connections_open_at_end,
            two.drops
        )
    );
}

/// Replies read on the tick (the default, timed by their kernel stamps) and
/// replies read as they wake the thread (`--wake-per-reply`) are both counted
/// and timed, each heartbeat once.
#[test]
fn wake_per_reply_answers_and_times_every_heartbeat_too() {
    let (report, stats) = run("1", &["--wake-per-reply"]);
    assert_eq!(stats.active.load(SeqCst), 40);
    assert_eq!(
        (report.drops, report.heartbeat_errors),
        (0, 0),
        "{report:?}"
    );
    assert!(report.heartbeats_ok >= 40, "{report:?}");
    assert_eq!(report.heartbeat_latency_us.count, report.heartbeats_ok);
}

#[test]
fn setup_failures_exit_non_zero_before_load() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = hold(&[&format!("http://{closed}/"), "-c", "10", "-d", "1s", "-q"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (addr, stats) = server();
    let out = hold(&[
        &format!("http://{addr}/"),
        "-c",
        "10",
        "-d",
        "1s",
        "--source",
        "203.0.113.7",
        "-q",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("203.0.113.7"));
    assert_eq!(stats.active.load(SeqCst), 0);
}

/// Waits (bounded) for a condition observed from outside the process under test.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_stops_parent_and_children() {
    let (addr, stats) = server();
    // Killed (with its children, which die with their parent) if the test
    // fails before it exits.
    let mut child = ChildGuard::spawn(
        Command::new(BIN)
            .args([
                "hold",
                &format!("http://{addr}/"),
                "-c",
                "20",
                "--processes",
                "2",
                "-d",
                "60s",
                "-q",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    wait_for("20 held connections", Duration::from_secs(10), || {
        stats.open.load(SeqCst) == 20
    });
    child.signal(libc::SIGINT);
    let (status, stdout, stderr) = child.wait_with_output();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("peak 20"), "{stdout}");
    // The children closed their connections: the server sees none left.
    wait_for("connections to close", Duration::from_secs(10), || {
        stats.open.load(SeqCst) == 0
    });
}
