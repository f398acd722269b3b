//! The admin listener of `megaconn serve`, as an operator uses it: the binary
//! prints both addresses, `/metrics` parses and counts the requests made,
//! `/debug/runtime` is JSON, a CPU profile is a gzipped pprof protobuf with
//! samples, a second concurrent profile gets 409, and the heap endpoint says
//! why it is not there.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ChildGuard, Lines};
use pprof::protos::Message as _;

/// Upper bound for any wait: reached only when the test fails.
const SAFETY: Duration = Duration::from_secs(30);

/// A running `megaconn serve`, killed and reaped when dropped (a test that
/// fails still stops its server).
struct Served {
    child: ChildGuard,
    /// Keeps reading stdout, so the server never blocks on a full pipe.
    _stdout: Lines,
    main: String,
    admin: String,
    /// The framed demo's address, with `--tcp-listen`.
    tcp: Option<String>,
}

impl Served {
    fn start(extra: &[&str]) -> Served {
        let mut child = ChildGuard::spawn(
            Command::new(env!("CARGO_BIN_EXE_megaconn"))
                .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdout = Lines::new(child.child().stdout.take().unwrap());
        // The address after `scheme`, if `line` has one.
        let after = |line: &str, scheme: &str| {
            let rest = line.split(scheme).nth(1)?;
            rest.split([',', ' ']).next().map(str::to_string)
        };
        let serving = stdout.expect_line();
        assert!(
            serving.starts_with("megaconn serving on http://127.0.0.1:"),
            "{serving:?}"
        );
        let admin_line = stdout.expect_line();
        assert!(
            admin_line.starts_with("megaconn admin on http://127.0.0.1:"),
            "{admin_line:?}"
        );
        Served {
            child,
            _stdout: stdout,
            main: after(&serving, "http://").unwrap(),
            admin: after(&admin_line, "http://").unwrap(),
            tcp: after(&serving, "tcp://"),
        }
    }

    /// A line connection to the framed demo (started with `--tcp-listen`).
    fn connect_demo(&self) -> DemoLine {
        let conn = TcpStream::connect(self.tcp.as_ref().expect("--tcp-listen")).unwrap();
        conn.set_read_timeout(Some(SAFETY)).unwrap();
        DemoLine(std::io::BufReader::new(conn))
    }

    /// The whole answer (head and body) of the admin listener to
    /// `POST path` with `body`.
    fn post(&self, path: &str, body: &str) -> String {
        let own = format!("Host: {}\r\n", self.admin);
        self.post_with(path, &own, body)
    }

    /// As [`Served::post`], with the header lines `headers` (each ending
    /// in CRLF; a `Host` among them) as a browser would send them.
    fn post_with(&self, path: &str, headers: &str, body: &str) -> String {
        let mut s = TcpStream::connect(&self.admin).unwrap();
        s.set_read_timeout(Some(SAFETY)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Stops the server as an operator does (SIGTERM) and checks it exits 0.
    fn stop(mut self) {
        self.child.signal(libc::SIGTERM);
        assert_eq!(self.child.wait().code(), Some(0));
    }
}

/// A response: status, headers (lower-case names) and body.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Fetched {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// One `GET` on a fresh connection (`Connection: close`), read to the end.
fn get(addr: &str, target: &str) -> Fetched {
    get_with(addr, target, &format!("Host: {addr}\r\n"))
}

/// As [`get`], with the header lines `headers` (a `Host` among them).
fn get_with(addr: &str, target: &str, headers: &str) -> Fetched {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SAFETY)).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = raw[split + 4..].to_vec();
    let f = Fetched {
        status,
        headers,
        body,
    };
    if let Some(len) = f.header("content-length") {
        assert_eq!(f.body.len(), len.parse::<usize>().unwrap(), "whole body");
    }
    f
}

/// A `/metrics` answer says what its body is: OpenMetrics text (it ends
/// with `# EOF`, its counters are typed `# TYPE x counter` over `x_total`
/// samples) under the OpenMetrics content type. It used to say
/// `text/plain; version=0.0.4`, whose parsers took every counter as untyped.
fn assert_openmetrics(m: &Fetched) {
    assert!(m.text().ends_with("# EOF\n"), "{}", m.text());
    assert!(m
        .text()
        .contains("# TYPE megaconn_connections_accepted counter\n"));
    assert_eq!(
        m.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
}

/// `megaconn_requests_total{method, status_class}` parsed from `/metrics`.
fn requests_total(admin: &str, method: &str, class: &str) -> f64 {
    counter(
        admin,
        "megaconn_requests_total",
        &[("method", method), ("status_class", class)],
    )
}

/// The counter `metric` with the labels `labels`, parsed from `/metrics`
/// (0 when absent).
fn counter(admin: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let m = get(admin, "/metrics");
    assert_eq!(m.status, 200);
    assert_openmetrics(&m);
    let scrape =
        prometheus_parse::Scrape::parse(m.text().lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "megaconn_connections_accepted_total"),
        "{}",
        m.text()
    );
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && labels
                    .iter()
                    .all(|(name, value)| s.labels.get(name) == Some(value))
        })
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("unexpected value {other:?}"),
        })
}

/// Runs `f` while another thread sends requests to `main` (bounded in time
/// and count), so a CPU profile taken meanwhile has samples.
fn with_load<T>(main: &str, f: impl FnOnce() -> T) -> T {
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let done = done.clone();
        let main = main.to_string();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0;
            while !done.load(Ordering::Relaxed) && started.elapsed() < SAFETY && n < 200_000 {
                assert_eq!(get(&main, "/").status, 200);
                n += 1;
            }
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    load.join().unwrap();
    out
}

#[test]
fn metrics_and_runtime_count_the_requests_made() {
    let served = Served::start(&["--admin", "127.0.0.1:0"]);
    for _ in 0..5 {
        assert_eq!(get(&served.main, "/").status, 200);
    }
    assert_eq!(get(&served.main, "/missing").status, 404);

    assert_eq!(requests_total(&served.admin, "GET", "2xx"), 5.0);
    assert_eq!(requests_total(&served.admin, "GET", "4xx"), 1.0);

    let runtime = get(&served.admin, "/debug/runtime");
    assert_eq!(runtime.status, 200);
    assert_eq!(runtime.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&runtime.body).unwrap();
    assert_eq!(json["requests"], 6);
    assert_eq!(json["workers"].as_array().unwrap().len(), 1);
    assert_eq!(json["workers"][0]["requests"], 6);
    assert_eq!(json["profiling"], false);

    // No heap profile is served (no build has a working one): not listed,
    // not answered.
    assert_eq!(get(&served.admin, "/debug/pprof/heap").status, 404);

    assert_eq!(
        get(&served.admin, "/debug/pprof/profile?seconds=0").status,
        400
    );
    assert_eq!(
        get(&served.admin, "/debug/pprof/profile?seconds=61").status,
        400
    );
    served.stop();
}

#[test]
fn cpu_profile_is_pprof_and_one_at_a_time() {
    let served = Served::start(&["--admin", "127.0.0.1:0"]);
    let admin = served.admin.clone();
    let profile = std::thread::spawn(move || get(&admin, "/debug/pprof/profile?seconds=2"));

    // Wait (bounded) until the profiler runs, as the admin server reports it.
    let deadline = Instant::now() + SAFETY;
    loop {
        let runtime = get(&served.admin, "/debug/runtime");
        let json: serde_json::Value = serde_json::from_slice(&runtime.body).unwrap();
        if json["profiling"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the profile never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = get(&served.admin, "/debug/pprof/profile?seconds=1");
    assert_eq!(second.status, 409, "{}", second.text());

    // Give the profiler something to see until the profile is done.
    let profile = with_load(&served.main, || profile.join().unwrap());

    assert_eq!(profile.status, 200);
    assert_eq!(
        profile.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(&profile.body[..2], &[0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&profile.body[..])
        .read_to_end(&mut raw)
        .unwrap();
    let decoded = pprof::protos::Profile::parse_from_bytes(&raw).expect("a pprof protobuf");
    assert!(!decoded.sample_type.is_empty());
    assert!(
        decoded.string_table.iter().any(|s| s == "cpu"),
        "{:?}",
        decoded.string_table
    );
    assert!(!decoded.sample.is_empty(), "the profile has samples");
    assert!(!decoded.function.is_empty(), "the profile has symbols");

    // The slot is free again, and a flame graph is an SVG.
    let svg = with_load(&served.main, || {
        get(&served.admin, "/debug/pprof/profile?seconds=1&format=svg")
    });
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.text().contains("<svg"));
    served.stop();
}

#[test]
fn admin_off_prints_no_admin_line() {
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_megaconn"))
            .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
            .args(["--admin", "off"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = Lines::new(child.child().stdout.take().unwrap());
    let first = stdout.expect_line();
    assert!(first.starts_with("megaconn serving on"), "{first}");
    child.signal(libc::SIGTERM);
    assert_eq!(child.wait().code(), Some(0));
    let rest = stdout.rest().join("\n");
    assert!(!rest.contains("admin on"), "{rest}");
    assert!(rest.contains("megaconn stopped"), "{rest}");
}

#[test]
fn a_bad_admin_address_exits_2() {
    // Bounded: a server that started instead of failing is killed.
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_megaconn"))
            .args(["serve", "--admin", "localhost"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let (status, _, err) = child.wait_with_output();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("admin"), "{err}");
}

#[test]
fn debug_connections_lists_live_connections() {
    let served = Served::start(&["--admin", "127.0.0.1:0", "--debug-connections"]);
    // A keep-alive connection that served one request and now waits.
    let mut held = TcpStream::connect(&served.main).unwrap();
    held.set_read_timeout(Some(SAFETY)).unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("Hello, World!") {
        let n = std::io::Read::read(&mut held, &mut chunk).unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&chunk[..n]);
    }
    let list = get(&served.admin, "/debug/connections");
    assert_eq!(list.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let conns = json["connections"].as_array().unwrap();
    // Our held connection (the admin request itself is on the admin listener).
    let ours: Vec<_> = conns.iter().filter(|c| c["requests"] == 1).collect();
    assert_eq!(ours.len(), 1, "{json}");
    assert_eq!(ours[0]["worker"], 0);
    let page = get(&served.admin, "/debug/connections?format=text&limit=5");
    let text = page.text();
    assert!(text.contains("\t0\t"), "{text}");
    drop(held);
    served.stop();
}

#[test]
fn debug_connections_needs_the_flag() {
    let served = Served::start(&["--admin", "127.0.0.1:0"]);
    let r = get(&served.admin, "/debug/connections");
    assert_eq!(r.status, 501);
    assert!(r.text().contains("--debug-connections"));
    served.stop();
}

/// The flags of an admin listener and the framed demo (lines).
const DEMO: [&str; 4] = ["--admin", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"];

/// One connection to the framed demo, in lines.
struct DemoLine(std::io::BufReader<TcpStream>);

impl DemoLine {
    fn send(&mut self, line: &str) {
        writeln!(self.0.get_mut(), "{line}").unwrap();
    }

    fn next_line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}

/// A framed demo connection that publishes past `--publish-rate` (here a
/// burst of 3, then one a thousand seconds) has its next `PUB` refused
/// with `error: publish rate; slow down`, counted in
/// `limit_hits{limit="publish_rate"}`, not delivered, and serves on; the
/// publishes within its burst all reach the subscriber. Each `PUB` used
/// to publish, whatever the rate: a loop of `PUB * x` made the server
/// spend ~5 µs a connection on every 8-byte line.
#[test]
fn a_framed_pub_past_the_publish_rate_is_refused_and_counted() {
    let args = [
        &DEMO[..],
        &["--publish-rate", "0.001", "--publish-burst", "3"],
    ]
    .concat();
    let served = Served::start(&args);
    let publish_rate = || {
        counter(
            &served.admin,
            "megaconn_limit_hits_total",
            &[("limit", "publish_rate")],
        )
    };
    let mut sub = served.connect_demo();
    sub.send("SUB news");
    assert_eq!(sub.next_line(), "subscribed: news");
    let mut publisher = served.connect_demo();
    for n in 1..=3 {
        publisher.send(&format!("PUB news m{n}"));
        assert_eq!(publisher.next_line(), "published");
        assert_eq!(sub.next_line(), format!("m{n}"));
    }
    assert_eq!(publish_rate(), 0.0);
    publisher.send("PUB news m4");
    assert_eq!(publisher.next_line(), "error: publish rate; slow down");
    assert_eq!(publish_rate(), 1.0);
    // Not published: what the subscriber hears next is the admin's
    // publish, queued after where m4 would have been (one worker: one
    // queue, in order).
    let answer = served.post("/publish?topic=news", "after m4");
    assert!(answer.ends_with("published\n"), "{answer}");
    assert_eq!(sub.next_line(), "after m4");
    // The connection stays open and answers; other connections' budgets
    // are their own.
    publisher.send("PING");
    assert_eq!(publisher.next_line(), "PONG");
    sub.send("PUB news from sub");
    assert_eq!(sub.next_line(), "published");
    assert_eq!(sub.next_line(), "from sub");
    served.stop();
}

/// `POST /publish` and `/broadcast` on a single process's admin listener
/// reach the framed demo's connections (as the demo's `PUB` does).
#[test]
fn post_publish_reaches_the_framed_connections() {
    let served = Served::start(&DEMO);
    let mut conn = served.connect_demo();
    conn.send("SUB news");
    assert_eq!(conn.next_line(), "subscribed: news");
    let answer = served.post("/publish?topic=news", "to news");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("published\n"), "{answer}");
    assert_eq!(conn.next_line(), "to news");
    let answer = served.post("/broadcast", "to all");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(conn.next_line(), "to all");
    let answer = served.post("/publish", "nowhere");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    served.stop();
}

/// A publish the hub dropped at a full queue is not answered "published":
/// the admin says 503 and why, the demo's `PUB` says it on the line. One
/// worker, a hub queue of one, and a delivery rate so slow that the pump,
/// once it reached the connection with the first message, waits (about
/// 1000 s) before it takes the next: the second message fills the queue,
/// the third finds it full. Both used to answer "published".
#[test]
fn a_publish_dropped_at_a_full_hub_queue_is_not_answered_published() {
    let slow = ["--hub-queue", "1", "--delivery-rate", "0.001"];
    let served = Served::start(&[&DEMO[..], &slow].concat());
    let mut conn = served.connect_demo();
    conn.send("SUB news");
    assert_eq!(conn.next_line(), "subscribed: news");
    let answer = served.post("/broadcast", "first");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Delivered: the pump now waits for the rate.
    assert_eq!(conn.next_line(), "first");
    let answer = served.post("/broadcast", "queued");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for path in ["/broadcast", "/publish?topic=news"] {
        let answer = served.post(path, "dropped");
        assert!(answer.starts_with("HTTP/1.1 503"), "{path}: {answer}");
        assert!(answer.contains("hub queues are full"), "{path}: {answer}");
    }
    conn.send("PUB news dropped too");
    let line = conn.next_line();
    assert!(line.starts_with("error: not delivered"), "{line}");
    assert!(line.contains("hub queues are full"), "{line}");
    served.stop();
}

/// A web page open in a browser on the host cannot use the admin listener
/// (it has no authentication): a cross-site `POST /broadcast` (a "simple"
/// request, sent without a CORS preflight) is refused with 403 and why,
/// and reaches no connection; a DNS-rebinding page (a name of its own that
/// resolves to 127.0.0.1) cannot read `/metrics`. Its own origin, a
/// loopback name, and clients that send no `Origin` (curl, Prometheus)
/// are served. Both cross-site requests used to be answered 200.
#[test]
fn cross_site_requests_to_the_admin_listener_are_refused() {
    let served = Served::start(&DEMO);
    let port = served.admin.rsplit(':').next().unwrap().to_string();
    let mut conn = served.connect_demo();
    conn.send("SUB news");
    assert_eq!(conn.next_line(), "subscribed: news");
    for headers in [
        // A page at attacker.example, rebound to 127.0.0.1.
        "Host: attacker.example:9090\r\nOrigin: http://attacker.example\r\n".to_string(),
        // A page at attacker.example posting to http://127.0.0.1:PORT.
        format!(
            "Host: {}\r\nOrigin: http://attacker.example\r\n",
            served.admin
        ),
        // Another local site is another origin.
        format!(
            "Host: {}\r\nOrigin: http://localhost:3000\r\n",
            served.admin
        ),
    ] {
        let answer = served.post_with(
            "/broadcast",
            &format!("{headers}Content-Type: text/plain\r\n"),
            "from a web page",
        );
        assert!(answer.starts_with("HTTP/1.1 403"), "{headers}: {answer}");
        assert!(answer.contains("refused: "), "{answer}");
    }
    let rebound = get_with(&served.admin, "/metrics", "Host: attacker.example:9090\r\n");
    assert_eq!(rebound.status, 403);
    assert!(
        rebound.text().contains("DNS rebinding"),
        "{}",
        rebound.text()
    );
    // Its own origin, by a loopback name.
    let own = format!("Host: localhost:{port}\r\nOrigin: http://localhost:{port}\r\n");
    let answer = served.post_with("/broadcast", &own, "from the admin page");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // None of the refused ones reached the connection: this comes first.
    assert_eq!(conn.next_line(), "from the admin page");
    assert_eq!(get(&served.admin, "/metrics").status, 200);
    served.stop();
}

/// One framed demo connection subscribed to `topic`.
fn subscriber(served: &Served, topic: &str) -> DemoLine {
    let mut conn = served.connect_demo();
    conn.send(&format!("SUB {topic}"));
    assert_eq!(conn.next_line(), format!("subscribed: {topic}"));
    conn
}

/// A framed `PUB` is charged by its audience (`--publish-fanout 2`: one
/// publish of the budget per 2 subscribers it reaches, burst 3): a
/// publisher to four subscribers is refused at its second `PUB`, one to a
/// single subscriber at its fourth, and a `PUB *` reaching every
/// connection (over `burst × fanout`, 6) is refused outright with why;
/// each refusal counted in `limit_hits{limit="publish_rate"}`, none
/// delivered. Every publish used to cost one, whatever its audience: one
/// peer at the rate to a million subscribers made the server deliver ten
/// million messages a second.
#[test]
fn a_framed_pub_to_a_big_audience_is_refused_sooner_and_counted() {
    let budget = [
        "--publish-rate",
        "0.001",
        "--publish-burst",
        "3",
        "--publish-fanout",
        "2",
    ];
    let served = Served::start(&[&DEMO[..], &budget].concat());
    let refused = || {
        counter(
            &served.admin,
            "megaconn_limit_hits_total",
            &[("limit", "publish_rate")],
        )
    };
    let mut big: Vec<DemoLine> = (0..4).map(|_| subscriber(&served, "big")).collect();
    let mut small = subscriber(&served, "small");
    // To one subscriber: a publish each, three of them.
    let mut to_small = served.connect_demo();
    for n in 1..=3 {
        to_small.send(&format!("PUB small s{n}"));
        assert_eq!(to_small.next_line(), "published");
        assert_eq!(small.next_line(), format!("s{n}"));
    }
    to_small.send("PUB small s4");
    assert_eq!(to_small.next_line(), "error: publish rate; slow down");
    assert_eq!(refused(), 1.0);
    // To four: two publishes each, one of them.
    let mut to_big = served.connect_demo();
    to_big.send("PUB big b1");
    assert_eq!(to_big.next_line(), "published");
    for sub in &mut big {
        assert_eq!(sub.next_line(), "b1");
    }
    to_big.send("PUB big b2");
    assert_eq!(to_big.next_line(), "error: publish rate; slow down");
    assert_eq!(refused(), 2.0);
    // What is left pays for a publish to fewer.
    to_big.send("PUB small fits");
    assert_eq!(to_big.next_line(), "published");
    assert_eq!(small.next_line(), "fits");
    // To everyone: 8 connections and more, never within 3 × 2.
    let mut star = served.connect_demo();
    star.send("PUB * everyone");
    let answer = star.next_line();
    assert!(
        answer.starts_with("error: publish reaches ")
            && answer.contains("more than --publish-burst x --publish-fanout (6)"),
        "{answer}"
    );
    assert_eq!(refused(), 3.0);
    // None of the refused reached anyone: the admin's publishes, queued
    // after them (one worker: one queue, in order), come first.
    for (topic, subs) in [
        ("big", &mut big[..]),
        ("small", std::slice::from_mut(&mut small)),
    ] {
        let answer = served.post(&format!("/publish?topic={topic}"), "after");
        assert!(answer.ends_with("published\n"), "{answer}");
        for sub in subs {
            assert_eq!(sub.next_line(), "after", "{topic}");
        }
    }
    // They stay open and answer.
    for conn in [&mut to_small, &mut to_big, &mut star] {
        conn.send("PING");
        assert_eq!(conn.next_line(), "PONG");
    }
    served.stop();
}

/// The demo's `PUB *` on a server of a few connections is a broadcast (its
/// audience is far under `--publish-burst × --publish-fanout`, 20,000 at
/// the defaults): a publish each, the burst's 20 of 50 at a rate that
/// refills none meanwhile; `--publish-rate off` takes the limit away
/// entirely: 50 `PUB *` in a row are all published, none counted (what a
/// broadcast benchmark passes).
#[test]
fn pub_star_is_a_broadcast_on_a_small_server_and_off_is_no_limit() {
    for (rate, published) in [("0.001", 20), ("off", 50)] {
        let served = Served::start(&[&DEMO[..], &["--publish-rate", rate]].concat());
        let mut listener = served.connect_demo();
        listener.send("PING");
        assert_eq!(listener.next_line(), "PONG");
        let mut publisher = served.connect_demo();
        for n in 0..50 {
            publisher.send(&format!("PUB * m{n}"));
        }
        // The publisher hears its 50 answers and, a connection too, what
        // it broadcast, in an order of their own.
        let lines: Vec<String> = (0..50 + published).map(|_| publisher.next_line()).collect();
        let ok = lines.iter().filter(|l| *l == "published").count();
        let slow = lines
            .iter()
            .filter(|l| *l == "error: publish rate; slow down")
            .count();
        assert_eq!((ok, slow), (published, 50 - published), "{rate}: {lines:?}");
        for n in 0..published {
            assert_eq!(listener.next_line(), format!("m{n}"));
        }
        let refused = counter(
            &served.admin,
            "megaconn_limit_hits_total",
            &[("limit", "publish_rate")],
        );
        assert_eq!(refused, (50 - published) as f64, "--publish-rate {rate}");
        served.stop();
    }
}

/// `PUB *` is charged by the connections a broadcast reaches, the framed
/// and WebSocket ones, not by every open connection (`--publish-burst 1
/// --publish-fanout 3`: at most 3 a publish): with six idle HTTP
/// connections open beside two framed ones, a `PUB *` reaches two and is
/// published; once four framed connections are open, it is refused
/// outright, naming four. Before, the six HTTP connections counted too,
/// and the first was refused as reaching eight, though no HTTP connection
/// can hear a broadcast.
#[test]
fn pub_star_is_charged_by_the_message_connections_it_reaches() {
    let budget = [
        "--publish-rate",
        "0.001",
        "--publish-burst",
        "1",
        "--publish-fanout",
        "3",
    ];
    let served = Served::start(&[&DEMO[..], &budget].concat());
    // Idle keep-alive HTTP connections, each answered once (so accepted).
    let idle: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(&served.main).unwrap();
            s.set_read_timeout(Some(SAFETY)).unwrap();
            write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"Hello, World!") {
                s.read_exact(&mut byte).unwrap();
                answer.push(byte[0]);
            }
            s
        })
        .collect();
    let mut listener = served.connect_demo();
    listener.send("PING");
    assert_eq!(listener.next_line(), "PONG");
    let mut publisher = served.connect_demo();
    publisher.send("PUB * to-two");
    assert_eq!(publisher.next_line(), "published");
    assert_eq!(publisher.next_line(), "to-two");
    assert_eq!(listener.next_line(), "to-two");
    // Four message connections: over 1 × 3 whatever the bucket holds.
    let mut more: Vec<DemoLine> = (0..2).map(|_| served.connect_demo()).collect();
    for conn in &mut more {
        conn.send("PING");
        assert_eq!(conn.next_line(), "PONG");
    }
    let answer = {
        let star = &mut more[0];
        star.send("PUB * to-four");
        star.next_line()
    };
    assert!(
        answer.starts_with("error: publish reaches 4 connections"),
        "{answer}"
    );
    drop(idle);
    served.stop();
}

/// The admin listener's `/healthz` answers 200 while the main listener
/// holds `max_connections` busy (requests in flight, as WebSockets would
/// be) and answers no probe: a liveness probe there sees a full server
/// alive. There was none; the Kubernetes liveness probe asked the main
/// port's `/healthz`, which a full server does not answer with 200.
#[test]
fn the_admin_healthz_answers_while_the_main_listener_is_full() {
    let served = Served::start(&["--admin", "127.0.0.1:0", "--max-connections", "2"]);
    // Two requests in flight (`POST /echo` with half its body sent).
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&served.main).unwrap();
            s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
                .unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + SAFETY;
    while !get(&served.admin, "/metrics")
        .text()
        .lines()
        .any(|l| l == "megaconn_requests_in_flight 2")
    {
        assert!(Instant::now() < deadline, "the requests did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A probe on the main listener gets no 200 (a refusal, a close, or
    // nothing: the read's bound only decides how long "nothing" is looked
    // at, and a slow machine can only make this pass wrongly).
    let mut probe = TcpStream::connect(&served.main).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = write!(probe, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let _ = probe.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "the main listener answered past max_connections: {answer}"
    );
    for _ in 0..3 {
        let health = get(&served.admin, "/healthz");
        assert_eq!((health.status, health.text()), (200, "ok\n"));
    }
    drop(held);
}
