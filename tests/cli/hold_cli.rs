//! End-to-end tests of the real `megaconn hold` binary, multi-process included:
//! `--processes 2` must hold exactly as many connections (counted by the server)
//! and report the same totals as one process; setup failures exit non-zero
//! before any load; SIGINT stops the parent and its children; a heartbeat the
//! server is slow to read is counted (once) and timed from its start, over
//! TLS too, and as a WebSocket frame (`ws://`, `wss://`).
//!
//! The server (but for [`stalling_server`]) is a tiny tokio HTTP/1.1 responder on 127.0.0.1 that counts
//! requests and connections (those that sent at least one request, so the
//! client's reachability probe is not counted as held).
//!
//! The two WebSocket ones run `hold` in this process instead of the binary
//! (the same `megaconn_load::run_hold` the binary runs; [`held_back_beats`]):
//! their heartbeat, a text frame of megabytes, only `--send` can set, and a
//! command-line argument is at most 128 KiB (`MAX_ARG_STRLEN`).

use crate::common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::ChildGuard;
use megaconn_load::{HoldArgs, HoldReport};
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
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let s = Arc::clone(&stats);
    common::serve_on_thread(listener, move |mut sock, _| {
        let s = Arc::clone(&s);
        async move {
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
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
                if sock.write_all(&out).await.is_err() {
                    break;
                }
            }
            if active {
                s.open.fetch_sub(1, SeqCst);
            }
        }
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
    assert_eq!(two.beats_held_back, 0, "small beats go whole: {two:?}");
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

/// How long [`stalling_server`] leaves a heartbeat unread.
const STALL: Duration = Duration::from_millis(300);

/// What a [`stalling_server`] connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// HTTP/1.1 requests, each answered `200 ok`.
    Http,
    /// An HTTP/1.1 upgrade (the first request), answered `101`, then
    /// WebSocket frames, each answered with the text frame `ok`.
    WebSocket,
}

/// The `Sec-WebSocket-Accept` for the `Sec-WebSocket-Key` every `hold`
/// connection sends (it is fixed: crates/load/src/ws.rs `KEY`, `ACCEPT`).
const HOLD_WS_ACCEPT: &str = "RTRF/Z4FHwkhbWUeQ4gpUE25L4A=";

impl Speaks {
    /// The length of the whole message (head and body) that starts `head`,
    /// the connection's message number `n`; `None` while its head is not
    /// all there.
    fn message_len(self, n: u64, head: &[u8]) -> Option<usize> {
        if self == Speaks::WebSocket && n > 0 {
            // A masked client frame (RFC 6455 §5.2).
            let (payload, at) = match *head.get(1)? & 0x7f {
                126 => (
                    u16::from_be_bytes(head.get(2..4)?.try_into().ok()?).into(),
                    4,
                ),
                127 => (u64::from_be_bytes(head.get(2..10)?.try_into().ok()?), 10),
                n => (u64::from(n), 2),
            };
            return Some(at + 4 + payload as usize);
        }
        let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        Some(end + length)
    }

    /// The answer to the connection's message number `n`.
    fn answer(self, n: u64) -> Vec<u8> {
        match (self, n) {
            (Speaks::Http, _) => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            (Speaks::WebSocket, 0) => format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {HOLD_WS_ACCEPT}\r\n\r\n"
            )
            .into_bytes(),
            (Speaks::WebSocket, _) => vec![0x81, 2, b'o', b'k'],
        }
    }
}

/// A server that answers each connection's first request at once and
/// leaves every later message unread for [`STALL`] after its first bytes
/// arrive, then reads it whole and answers; speaking `speaks`, over TLS
/// with `tls` (its configuration). Its sockets take 64 KiB at most
/// (`SO_RCVBUF`, inherited from the listener), so a message of megabytes
/// cannot be written whole while it stalls. Counts the messages not all
/// there when the stall ended (the client was held back).
fn stalling_server(
    speaks: Speaks,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<AtomicU64>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let held_back = Arc::new(AtomicU64::new(0));
    let held = Arc::clone(&held_back);
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            let (held, tls) = (Arc::clone(&held), tls.clone());
            std::thread::spawn(move || {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
                let _ = match tls {
                    Some(config) => rustls::ServerConnection::new(config)
                        .map_err(std::io::Error::other)
                        .and_then(|conn| {
                            let mut tls = rustls::StreamOwned::new(conn, sock);
                            serve_stalling(&mut tls, fd, speaks, &held)
                        }),
                    None => serve_stalling(&mut sock, fd, speaks, &held),
                };
            });
        }
    });
    (addr, held_back)
}

/// A TLS configuration for [`stalling_server`]: a self-signed certificate
/// (the client runs with `--insecure`).
fn self_signed_tls() -> Arc<rustls::ServerConfig> {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(c.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![c.cert.der().clone()], key.into())
        .unwrap();
    Arc::new(config)
}

/// One connection of [`stalling_server`], until the client closes it:
/// `sock` its byte stream (cleartext or TLS), `fd` its socket.
fn serve_stalling(
    sock: &mut (impl std::io::Read + std::io::Write),
    fd: std::os::fd::RawFd,
    speaks: Speaks,
    held_back: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    for request in 0u64.. {
        let mut head = Vec::new();
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        // What the client could send during the stall: read here and
        // queued in the socket (not read yet, so that the client, which
        // sends the rest as soon as the socket takes it, cannot add to it).
        // Over TLS the queued bytes are ciphertext, never fewer than the
        // request bytes they carry: a request found short is short.
        let by_stall_end = if request > 0 {
            std::thread::sleep(STALL);
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int to a valid pointer.
            if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Some(n + queued as usize)
        } else {
            None
        };
        let length = loop {
            if let Some(length) = speaks.message_len(request, &head) {
                break length;
            }
            let n = sock.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        };
        // If the message was not all here, the rest waited in the client.
        if by_stall_end.is_some_and(|got| got < length) {
            held_back.fetch_add(1, SeqCst);
        }
        let mut have = head.len();
        while have < length {
            let n = sock.read(&mut buf[..(length - have).min(1 << 16)])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        }
        sock.write_all(&speaks.answer(request))?;
        sock.flush()?;
    }
    Ok(())
}

/// The most a TCP socket's send buffer grows to on this machine
/// (`tcp_wmem`'s maximum; Linux's default, 4 MiB, if it cannot be read).
fn largest_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// A heartbeat the socket cannot take whole (the server is not reading) is
/// timed from its first byte's write, not from its last: the time it waited
/// for the server to read it is the server's, as it would be for a reply it
/// was slow to send.
#[test]
fn a_heartbeat_held_back_by_the_server_is_timed_from_its_start() {
    held_back_beats(Speaks::Http, None);
}

/// Over TLS (a task per connection, not the lot) too, a heartbeat the
/// socket cannot take whole is counted and timed from its first byte's
/// write. Before, TLS connections' held-back beats were not counted.
#[test]
fn a_tls_heartbeat_held_back_by_the_server_is_counted_and_timed_from_its_start() {
    held_back_beats(Speaks::Http, Some(self_signed_tls()));
}

/// A `wss://` heartbeat, a WebSocket text frame over TLS (the TLS task's
/// path, as https://), the socket cannot take whole is counted once, and
/// timed from its first byte's write; the upgrade is not counted.
#[test]
fn a_wss_heartbeat_held_back_by_the_server_is_counted_and_timed_from_its_start() {
    held_back_beats(Speaks::WebSocket, Some(self_signed_tls()));
}

/// The same for `ws://` (its frames sent from the lot, as http://'s beats).
#[test]
fn a_ws_heartbeat_held_back_by_the_server_is_counted_and_timed_from_its_start() {
    held_back_beats(Speaks::WebSocket, None);
}

/// What every run of [`held_back_beats`] asks: one connection, a beat
/// every 500 ms for 2 s (its certificate self-signed, if TLS). A beat takes
/// [`STALL`] and more, so the next one follows at once, and 3 or so are
/// answered: enough for a count twice too high to exceed the beats sent.
const HELD_BACK_RUN: [&str; 8] = [
    "-c",
    "1",
    "--interval",
    "500ms",
    "-d",
    "2s",
    "--insecure",
    "-q",
];

/// `hold ARGS…` run in this process (see the module doc).
#[derive(Parser)]
struct HoldCli {
    #[command(flatten)]
    args: HoldArgs,
}

/// Holds one connection (over TLS with `tls`) to a [`stalling_server`]
/// speaking `speaks` whose heartbeats (HTTP requests or WebSocket text
/// frames) are too large for the socket to take whole while the server is
/// not reading, and checks that each is counted as held back, once, and
/// timed from its first byte's write.
fn held_back_beats(speaks: Speaks, tls: Option<Arc<rustls::ServerConfig>>) {
    let scheme = match (speaks, tls.is_some()) {
        (Speaks::Http, false) => "http",
        (Speaks::Http, true) => "https",
        (Speaks::WebSocket, false) => "ws",
        (Speaks::WebSocket, true) => "wss",
    };
    let (addr, held_back) = stalling_server(speaks, tls);
    let url = format!("{scheme}://{addr}/beat");
    // Above the client's largest send buffer and the server's 64 KiB
    // receive buffer together, with a margin: else the socket takes the
    // whole heartbeat and nothing is held back.
    let beat = vec![b'x'; 2 * largest_send_buffer() + (1 << 20)];
    let dir = tempfile::tempdir().unwrap();
    let (report, text) = match speaks {
        Speaks::Http => {
            let body = dir.path().join("body");
            std::fs::write(&body, beat).unwrap();
            let json = dir.path().join("hold.json");
            let body = format!("@{}", body.display());
            let http = [
                "-m",
                "POST",
                "--body",
                &body,
                "--json",
                json.to_str().unwrap(),
            ];
            let out = hold(&[&[url.as_str()][..], &http, &HELD_BACK_RUN].concat());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let json = std::fs::read_to_string(&json).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (HoldReport::from_json(&json).unwrap(), text)
        }
        Speaks::WebSocket => {
            let text = String::from_utf8(beat).unwrap();
            let ws = ["hold", &url, "--ws-heartbeat", "text", "--send", &text];
            let args = HoldCli::parse_from(ws.into_iter().chain(HELD_BACK_RUN)).args;
            let report = megaconn_load::run_hold(args).unwrap();
            let text = report.to_text();
            (report, text)
        }
    };
    assert_eq!(
        (report.drops, report.resets, report.failed_connects),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.heartbeat_errors, 0, "{report:?}");
    // The opening request (or upgrade) is not a heartbeat (over HTTP it
    // is as large, and may be held back too: not counted).
    assert_eq!(report.opens_ok, 1, "{report:?}");
    assert!(report.heartbeats_ok >= 1, "{report:?}");
    assert!(
        held_back.load(SeqCst) >= report.heartbeats_ok,
        "every heartbeat was still being sent when the server read it"
    );
    assert!(
        report.beats_held_back >= report.heartbeats_ok,
        "a heartbeat the socket could not take whole was not counted: {report:?}"
    );
    // Each at most once: no more than the heartbeats sent.
    let sent = report.heartbeats_ok + report.heartbeats_pending_at_end;
    assert!(
        report.beats_held_back <= sent,
        "a heartbeat held back was counted twice (or the opening request counted): {report:?}"
    );
    assert!(text.contains("  held back    "), "{text}");
    let p50_us = report.heartbeat_latency_us.p50.unwrap();
    assert!(
        p50_us >= STALL.as_micros() as f64,
        "a heartbeat the server left unread for {STALL:?} took {p50_us} us: timed from its last byte?"
    );
}
