//! End-to-end tests of `megaconn load` over TLS and HTTP/2 against an
//! in-process megaconn server on 127.0.0.1 (self-signed certificate, ALPN
//! `h2`/`http/1.1`, h2c by prior knowledge): counts add up on both sides, the
//! server saw the protocol the client claims, handshakes resume, and a
//! certificate or ALPN mismatch is refused before the run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use megaconn::{Body, TlsConfig};
use megaconn_load::{run_load, LoadArgs, LoadError};

use crate::common;

/// Requests the server answered, by HTTP version.
#[derive(Debug, Default)]
struct Seen {
    http1: AtomicU64,
    http2: AtomicU64,
}

pub(crate) struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    tls: bool,
}

impl Server {
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }
    fn http1(&self) -> u64 {
        self.seen.http1.load(SeqCst)
    }
    pub(crate) fn http2(&self) -> u64 {
        self.seen.http2.load(SeqCst)
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, as `serve --self-signed`.
fn self_signed() -> TlsConfig {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    TlsConfig::from_pem(
        c.cert.pem().as_bytes(),
        c.key_pair.serialize_pem().as_bytes(),
    )
    .unwrap()
}

/// How long the server takes to answer `/slow`.
const SLOW: std::time::Duration = std::time::Duration::from_millis(20);

/// Starts a one-worker megaconn on 127.0.0.1:0 (TLS when `tls` is given) that
/// answers `Hello` (`/slow`: after [`SLOW`]) and counts requests by version. It lives until the test
/// process ends.
fn start(tls: Option<TlsConfig>) -> Server {
    start_with(tls, |b| b)
}

/// [`start`] with more knobs set by `knobs`.
pub(crate) fn start_with(
    tls: Option<TlsConfig>,
    knobs: impl FnOnce(megaconn::Builder) -> megaconn::Builder,
) -> Server {
    let mut builder = knobs(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
    );
    let is_tls = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    let server = builder.listen().expect("binds");
    let addr = server.local_addr();
    let seen = Arc::new(Seen::default());
    let counted = Arc::clone(&seen);
    let service = tower::service_fn(move |req: Request<Body>| {
        let seen = Arc::clone(&counted);
        async move {
            match req.version() {
                Version::HTTP_2 => seen.http2.fetch_add(1, SeqCst),
                _ => seen.http1.fetch_add(1, SeqCst),
            };
            if req.uri().path() == "/slow" {
                // A server that cannot keep up: see `h2_open_loop_falls_behind_a_slow_server`.
                tokio::time::sleep(SLOW).await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"Hello"))))
        }
    });
    common::run_on_thread(move || server.serve(service));
    Server {
        addr,
        seen,
        tls: is_tls,
    }
}

/// `megaconn load URL -q EXTRA…` parsed as the CLI does.
pub(crate) fn args(url: &str, extra: &[&str]) -> LoadArgs {
    common::load_args(url, extra)
}

#[test]
fn https_counts_add_up_and_png_plot_is_written() {
    let server = start(Some(self_signed()));
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("latency.png");
    let json = dir.path().join("r.json");
    let mut a = args(&server.url(), &["-k", "-n", "500", "-c", "4", "-t", "2"]);
    a.plot = Some(plot.clone());
    a.json = Some(json.clone());
    let r = run_load(a).unwrap();
    assert_eq!((r.requests, r.errors_total), (500, 0), "{:?}", r.errors);
    assert_eq!((server.http1(), server.http2()), (500, 0));
    assert_eq!(r.protocol, "http/1.1");
    assert_eq!(r.connections_opened, 4);
    let tls = r.tls.expect("https reports handshakes");
    assert_eq!(tls.handshakes_full + tls.handshakes_resumed, 4);
    assert!(tls.resumption);
    let png = std::fs::read(&plot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(v["protocol"], "http/1.1");
    assert_eq!(
        v["tls"]["handshakes_full"].as_u64().unwrap()
            + v["tls"]["handshakes_resumed"].as_u64().unwrap(),
        4
    );
    assert!(v["streams"].is_null());
}

#[test]
fn h2c_prior_knowledge_counts_add_up_and_server_sees_http2() {
    let server = start(None);
    let r = run_load(args(
        &server.url(),
        &[
            "--http2",
            "-n",
            "600",
            "-c",
            "2",
            "--streams",
            "8",
            "-t",
            "1",
        ],
    ))
    .unwrap();
    assert_eq!((r.requests, r.errors_total), (600, 0), "{:?}", r.errors);
    assert_eq!((server.http2(), server.http1()), (600, 0));
    assert_eq!((r.protocol.as_str(), r.streams), ("h2", Some(8)));
    assert_eq!(r.latency_us.count, 600);
    assert_eq!(r.bytes_read, 600 * 5); // HTTP/2 counts body bytes
    assert!(r.tls.is_none());
}

#[test]
fn h2_over_tls_counts_add_up_and_server_sees_http2() {
    let server = start(Some(self_signed()));
    let r = run_load(args(
        &server.url(),
        &["--http2", "-k", "-n", "400", "-c", "2", "--streams", "4"],
    ))
    .unwrap();
    assert_eq!((r.requests, r.errors_total), (400, 0), "{:?}", r.errors);
    assert_eq!((server.http2(), server.http1()), (400, 0));
    assert_eq!(r.connections_opened, 2);
}

#[test]
fn h2_open_loop_counts_add_up() {
    let server = start(None);
    let r = run_load(args(
        &server.url(),
        &[
            "--http2",
            "-n",
            "200",
            "-c",
            "2",
            "--streams",
            "4",
            "--rate",
            "4000",
        ],
    ))
    .unwrap();
    assert_eq!((r.requests, server.http2()), (200, 200));
    // A completed `-n` run left nothing behind (true by construction: the
    // run below is the one that can fall behind). It sent all 200, never
    // faster than the schedule: each connection's 100th request is due 99
    // intervals of 0.5 ms after its first.
    assert_eq!(r.behind_requests, Some(0));
    assert!((r.achieved_rate * r.duration_secs - 200.0).abs() < 0.5);
    assert!(r.duration_secs >= 0.0495, "{}", r.duration_secs);
    assert!(r.achieved_rate <= 4000.0 * 1.01, "{}", r.achieved_rate);
}

/// Open loop over h2 against a server that takes [`SLOW`] per answer: 2
/// connections of 4 streams serve at most 8 requests per 20 ms (400 req/s),
/// and 4000 req/s are asked for 500 ms. The report says the run fell
/// behind, and sent + behind add up to the schedule (`rate × duration`, +1
/// per connection for request 0 at the start).
#[test]
fn h2_open_loop_falls_behind_a_slow_server() {
    let server = start(None);
    let url = format!("{}slow", server.url());
    let r = run_load(args(
        &url,
        &[
            "--http2",
            "-d",
            "500ms",
            "-c",
            "2",
            "--streams",
            "4",
            "--rate",
            "4000",
            "--timeout",
            "5s",
        ],
    ))
    .unwrap();
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    let sent = (r.achieved_rate * r.duration_secs).round() as u64;
    let most_served = 8 * (500 / SLOW.as_millis() as u64 + 1);
    assert!(
        sent <= most_served + 8,
        "sent {sent}, the server allows {most_served}"
    );
    let behind = r.behind_requests.expect("an open-loop run reports it");
    assert!(
        behind > 0,
        "a run at 10x the server's pace fell behind by nothing"
    );
    let due = 4000 * 500 / 1000 + 2;
    assert!(
        sent + behind <= due && sent + behind + 2 >= due,
        "sent {sent} + behind {behind} != due {due}"
    );
    assert!(
        r.rate_shortfall_pct.unwrap() > 80.0,
        "{:?}",
        r.rate_shortfall_pct
    );
}

#[test]
fn new_connection_per_request_resumes_tls_sessions() {
    let server = start(Some(self_signed()));
    let r = run_load(args(
        &server.url(),
        &[
            "-k",
            "--new-connection-per-request",
            "-n",
            "160",
            "-c",
            "16",
        ],
    ))
    .unwrap();
    assert_eq!((r.requests, r.errors_total), (160, 0), "{:?}", r.errors);
    assert_eq!((r.connections_opened, server.http1()), (160, 160));
    let tls = r.tls.unwrap();
    // At most each connection's first handshake is full (fewer when an early
    // connection's tickets arrive before a later one starts): every reconnect
    // finds a ticket its previous connection received. (rustls' default cache
    // of 8 tickets per server ran dry here: ~60 of 160 were full.)
    assert_eq!(tls.handshakes_full + tls.handshakes_resumed, 160);
    assert!((1..=16).contains(&tls.handshakes_full), "{tls:?}");
    assert!(r.new_connection_per_request);

    let r = run_load(args(
        &server.url(),
        &[
            "-k",
            "--new-connection-per-request",
            "--no-tls-resume",
            "-n",
            "20",
            "-c",
            "2",
        ],
    ))
    .unwrap();
    let tls = r.tls.unwrap();
    assert_eq!((tls.handshakes_full, tls.handshakes_resumed), (20, 0));
    assert!(!tls.resumption);
}

#[test]
fn new_connection_per_request_over_h2() {
    let server = start(Some(self_signed()));
    let r = run_load(args(
        &server.url(),
        &[
            "--http2",
            "-k",
            "--new-connection-per-request",
            "-n",
            "30",
            "-c",
            "2",
        ],
    ))
    .unwrap();
    assert_eq!((r.requests, r.errors_total), (30, 0), "{:?}", r.errors);
    assert_eq!((r.connections_opened, server.http2()), (30, 30));
    assert!(r.tls.unwrap().handshakes_resumed > 0);
}

#[test]
fn certificate_and_protocol_mismatches_are_refused_before_the_run() {
    let tls_server = start(Some(self_signed()));
    // No --insecure, no --cacert: told what to add.
    let err = run_load(args(&tls_server.url(), &["-n", "1"])).unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");

    // A CA file that did not sign the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let ca = dir.path().join("other.pem");
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let ca = ca.display().to_string();
    let err = run_load(args(&tls_server.url(), &["-n", "1", "--cacert", &ca])).unwrap_err();
    assert!(matches!(err, LoadError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("--insecure"), "{err}");

    // https:// against a cleartext listener.
    let plain = start(None);
    let url = format!("https://{}/", plain.addr);
    // (The server waits for a request head that never comes: a short timeout.)
    let err = run_load(args(&url, &["-k", "-n", "1", "--timeout", "300ms"])).unwrap_err();
    assert!(matches!(err, LoadError::Tls { .. }), "{err}");

    // --http2 against a TLS server offering HTTP/1.1 only.
    let h1_only = start(Some(
        self_signed().alpn_protocols(vec![b"http/1.1".to_vec()]),
    ));
    let err = run_load(args(&h1_only.url(), &["-k", "--http2", "-n", "1"])).unwrap_err();
    assert!(err.to_string().contains("drop --http2"), "{err}");
    assert_eq!(h1_only.http1() + h1_only.http2(), 0);
}

#[test]
fn protocol_flags_must_fit_together() {
    let server = start(None);
    for extra in [
        &["--streams", "4"][..],
        &["--http2", "--pipeline", "2"],
        &["--http2", "--new-connection-per-request", "--streams", "2"],
        &["--plot", "x.jpg"],
    ] {
        let mut v = vec!["-n", "1"];
        v.extend_from_slice(extra);
        let err = run_load(args(&server.url(), &v)).unwrap_err();
        assert!(
            matches!(err, LoadError::InvalidArg { .. }),
            "{extra:?}: {err}"
        );
    }
    assert_eq!(server.http1() + server.http2(), 0);
}

#[test]
fn hold_https_keeps_tls_connections_and_their_heartbeats() {
    let server = start(Some(self_signed()));
    let hold = |extra: &[&str]| {
        let mut v = vec![
            "hold",
            "-q",
            "-c",
            "20",
            "--ramp",
            "20000",
            "--timeout",
            "5s",
        ];
        v.extend_from_slice(extra);
        v.push(Box::leak(server.url().into_boxed_str()));
        common::hold_argv(v)
    };
    let r = megaconn_load::run_hold(hold(&["-k", "--interval", "50ms", "-d", "400ms"])).unwrap();
    assert_eq!(
        (r.connections_peak, r.connections_open_at_end),
        (20, 20),
        "{r:?}"
    );
    assert_eq!(
        (r.drops, r.resets, r.failed_connects, r.heartbeat_errors),
        (0, 0, 0, 0),
        "{r:?}"
    );
    // TLS connections keep a task each (the lot reads cleartext only).
    assert_eq!(r.connections_parked, 0, "{r:?}");
    // Small beats to a server that reads go whole (one held back is
    // counted: `hold_cli::a_tls_heartbeat_held_back_by_the_server_is_counted`).
    assert_eq!(r.beats_held_back, 0, "{r:?}");
    // The opening requests and heartbeats were decrypted and answered over
    // TLS (the server counts what it served; beats in flight at the end
    // were served but not counted by the client).
    assert_eq!(r.opens_ok, 20, "{r:?}");
    assert!(r.heartbeats_ok >= 20, "{r:?}");
    assert!(server.http1() >= r.heartbeats_ok + r.opens_ok, "{r:?}");
    assert_eq!(server.http2(), 0);
    // Without a trust choice, https:// is refused before any connection.
    let err = megaconn_load::run_hold(hold(&["-d", "100ms"])).unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");
}
