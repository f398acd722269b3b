//! Connection and server lifecycle: panics, cancellation, graceful shutdown,
//! the connection limit, buffer return on idle, and binding errors; and the
//! rate-limited lines a peer's input over a limit logs (a request body, a
//! native WebSocket's frame or message, a framed connection's frame or
//! line), the access log's one line per request, in every protocol mode
//! and whatever answered it (`access_log.rs`),
//! an HTTP/2 server's grown windows' budget spent (`h2_grown_windows.rs`),
//! and a worker that panics as it hands its parked connections over (the
//! capture makes it), which need this binary's process-wide log
//! capture (the `integration` binary has none, by design).

mod common;

#[path = "lifecycle/access_log.rs"]
mod access_log;
#[path = "lifecycle/grpc52.rs"]
mod grpc52;
#[path = "lifecycle/h2_empty54.rs"]
mod h2_empty54;
#[path = "lifecycle/h2_flood53.rs"]
mod h2_flood53;
#[path = "lifecycle/h2_grown_windows.rs"]
mod h2_grown_windows;
#[path = "lifecycle/proxy_protocol56.rs"]
mod proxy_protocol56;
#[path = "lifecycle/tls_lines.rs"]
mod tls_lines;
#[path = "lifecycle/write_timeout56.rs"]
mod write_timeout56;

use std::sync::{Mutex, Once};
use std::time::Duration;

use common::{read_response, read_to_close, Event, TestServer, SAFETY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_panicking_handler_gets_500_and_the_server_lives() {
    let server = TestServer::default().await;
    for path in ["/panic", "/panic-async"] {
        let mut s = server.connect().await;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(raw.starts_with("HTTP/1.1 500 "), "{path}: {raw}");
        assert!(raw.contains("connection: close"));
        server.assert_healthy().await;
    }
    assert_eq!(server.handle.stats().panics, 2);
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_handler() {
    let mut server = TestServer::default().await;
    let mut s = server.connect().await;
    server.start_waiting(&mut s).await;
    drop(s);
    assert_eq!(
        server.probe.next_event().await,
        Event::Cancelled("/wait".into())
    );
    server
        .wait_stats("cancelled count", |s| s.cancelled == 1)
        .await;
    server.assert_healthy().await;
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_closes_idle() {
    let mut server = TestServer::default().await;
    // An idle keep-alive connection that already served a request.
    let mut idle = server.connect().await;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut idle).await;
    // An in-flight request.
    let mut busy = server.connect().await;
    server.start_waiting(&mut busy).await;

    server.handle.shutdown();
    // The idle connection is closed at once, without a response.
    assert!(read_to_close(&mut idle).await.is_empty());
    // The in-flight one finishes, told to close.
    server.probe.release.notify_one();
    let raw = String::from_utf8(read_to_close(&mut busy).await).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert!(raw.contains("connection: close"));
    assert!(raw.ends_with("released"));
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0);
    assert_eq!(summary.finished, 2);
    assert_eq!(summary.requests, 2);
}

#[tokio::test]
async fn shutdown_deadline_forces_stuck_connections() {
    let mut server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .shutdown_timeout(Duration::from_millis(50)),
    )
    .await;
    let mut busy = server.connect().await;
    server.start_waiting(&mut busy).await;
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1);
    // The forced connection is closed without a response.
    let mut rest = Vec::new();
    let _ = busy.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

/// A connection forced closed while it waits for its request leaves the
/// `connections_idle` gauge: its waiting future is dropped mid-wait, and the
/// gauge used to be left only when the wait ended, staying one too high for
/// the rest of the process (through an upgrade's drain, say).
#[tokio::test]
async fn a_connection_forced_closed_while_waiting_leaves_the_idle_gauge() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(None)
            .shutdown_timeout(Duration::from_millis(50)),
    )
    .await;
    // A fresh connection that never sends its request: at shutdown it is
    // given until the deadline (its request may be on the way), then forced.
    let mut waiting = server.connect().await;
    server
        .wait_stats("the connection waits, idle", |s| s.connections_idle == 1)
        .await;
    let handle = server.handle.clone();
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1, "{summary:?}");
    let mut rest = Vec::new();
    let _ = waiting.read_to_end(&mut rest).await;
    let stats = handle.stats();
    assert_eq!(stats.connections_open, 0, "{stats:?}");
    assert_eq!(stats.connections_idle, 0, "{stats:?}");
}

/// The `tracing` events at INFO and above, from every thread (the server's
/// workers included), as `message` plus ` size=N`, ` limit=N`,
/// ` max_connections=N` and ` suppressed=N` for the fields the event has
/// (and ` peer=…`, ` handling=…` and ` panic=…` for a peer's address, a
/// stall's busy connections and a caught panic's text), for a test to wait
/// on what the server says it does; an access-log line (target
/// `megaconn::access`) as `megaconn::access` plus ` name=value` for each
/// of its fields. Each with the thread that logged it ([`Workers`]).
static LOGGED: Mutex<Captured> = Mutex::new(Captured {
    lines: Vec::new(),
    threads: Vec::new(),
});

/// The lines kept, and beside each the thread that logged it.
struct Captured {
    /// The lines, in the order they were logged.
    lines: Vec<String>,
    /// `threads[i]` logged `lines[i]`.
    threads: Vec<std::thread::ThreadId>,
}

impl Captured {
    /// Keeps `line`, logged on this thread, and wakes the waiters.
    fn keep(line: String) {
        let mut captured = captured();
        captured.lines.push(line);
        captured.threads.push(std::thread::current().id());
        drop(captured);
        LOGGED_MORE.notify_waiters();
    }
}

/// The lines kept so far (their texts: [`Logged`]). A test that fails while it holds them (an
/// assertion over the lines) poisons the lock; the lines are still whole,
/// and every server of the other tests logs through it: with `unwrap`, one
/// failed assertion made the capture panic inside their workers, and three
/// more tests failed waiting on servers that no longer answered (CI,
/// session 41).
fn captured() -> std::sync::MutexGuard<'static, Captured> {
    LOGGED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The texts of the lines kept so far, held while it lives.
struct Logged(std::sync::MutexGuard<'static, Captured>);

impl std::ops::Deref for Logged {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.0.lines
    }
}

/// The texts of the lines kept so far: every test's. A test that counts
/// or waits for a line of its own server's finds it with [`wait_for_line`]
/// or [`Workers::lines`], or by a peer address of its own.
fn logged() -> Logged {
    Logged(captured())
}

/// Wakes every waiter each time [`CaptureLog`] keeps a line in [`LOGGED`].
static LOGGED_MORE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A `tracing` subscriber that keeps each INFO, WARN or ERROR event in
/// [`LOGGED`] and says so on [`LOGGED_MORE`] (this crate's dev-dependencies
/// have no subscriber crate).
struct CaptureLog;

impl tracing::Subscriber for CaptureLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        // More verbose levels compare greater.
        *metadata.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() == ACCESS_TARGET {
            /// Every field, as ` name=value`.
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0 += &format!(" {}={v:?}", f.name());
                }
            }
            let mut fields = Fields(ACCESS_TARGET.to_string());
            event.record(&mut fields);
            Captured::keep(fields.0);
            return;
        }
        /// The numbers kept after the message, in this order.
        const FIELDS: [&str; 4] = ["size", "limit", "max_connections", "suppressed"];
        /// The texts kept after them, in this order: what names whose
        /// line it is (a peer, a stall's busy connections with theirs),
        /// and a caught panic's text.
        const TEXTS: [&str; 3] = ["peer", "handling", "panic"];
        /// The message, the fields above, and the texts.
        #[derive(Default)]
        struct Line(String, [Option<u64>; 4], [Option<String>; 3]);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                } else if let Some(i) = TEXTS.iter().position(|&name| name == f.name()) {
                    self.2[i] = Some(format!("{v:?}"));
                }
            }
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                if let Some(i) = FIELDS.iter().position(|&name| name == f.name()) {
                    self.1[i] = Some(v);
                }
            }
        }
        let mut line = Line::default();
        event.record(&mut line);
        if PANIC_AT_HAND_OVER.load(std::sync::atomic::Ordering::SeqCst)
            && line.0 == "handing parked connections over"
            && std::thread::current().name() == Some("megaconn-worker-1")
        {
            panic!("megaconn-worker-1 panics as it hands its parked connections over (told by the test)");
        }
        for (name, value) in FIELDS.iter().zip(line.1) {
            if let Some(n) = value {
                line.0 += &format!(" {name}={n}");
            }
        }
        for (name, value) in TEXTS.iter().zip(line.2) {
            if let Some(text) = value {
                line.0 += &format!(" {name}={text}");
            }
        }
        Captured::keep(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The target of the access log's lines (`Builder::access_log`).
const ACCESS_TARGET: &str = "megaconn::access";

/// Set, worker 1 of any server panics where it logs that it hands its
/// parked connections over ([`CaptureLog`]), as a bug in its shutdown would:
/// after it took them out of its lot, before it sent them. (No other test
/// here hands over.) Set only through [`PanicAtHandOver`].
static PANIC_AT_HAND_OVER: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Holds [`PANIC_AT_HAND_OVER`] set while it lives: the tests of this
/// binary run in parallel on threads of one process, so a flag left set
/// (by a test that ended, or that failed and unwound) would make a worker
/// of any later server panic.
struct PanicAtHandOver;

impl PanicAtHandOver {
    fn set() -> PanicAtHandOver {
        PANIC_AT_HAND_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
        PanicAtHandOver
    }
}

impl Drop for PanicAtHandOver {
    fn drop(&mut self) {
        PANIC_AT_HAND_OVER.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Installs [`CaptureLog`] for the whole test binary (once).
fn capture_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| tracing::subscriber::set_global_default(CaptureLog).unwrap());
}

/// Whose a line is: what tells a test's line from every other test's in
/// this binary's one capture. A needle alone let a test pass on another
/// test's line (session 53's flake audit): a rapid reset's wait took any
/// `GOAWAY(ENHANCE_YOUR_CALM)` line (h2's own, after a small-DATA flood,
/// says the same), and the TLS lines name no peer, so any TLS test's
/// failed handshake would do.
enum Whose<'a> {
    /// The line names this client's address (`from {peer}`, `peer={peer}`,
    /// a stall's `connection N from {peer}`), which must be an address of
    /// the test's own (`common::connect_from_own_address`,
    /// `common::own_address`): no other test's connection has it. A port
    /// of 127.0.0.1 is not one: Linux gives it to another test's
    /// connection too, at once or once it closed.
    Peer(std::net::SocketAddr),
    /// The line was logged on a worker thread of this test's server: for
    /// the lines that name no peer.
    Server(&'a Workers),
}

impl Whose<'_> {
    /// Whether `captured`'s line `i` is this one's.
    fn owns(&self, captured: &Captured, i: usize) -> bool {
        match self {
            Whose::Peer(peer) => names(&captured.lines[i], &peer.to_string()),
            Whose::Server(workers) => workers.logged(captured.threads[i]),
        }
    }
}

/// Whether `line` names `peer` (`127.1.0.5:4000`, not `127.1.0.5:40001`).
fn names(line: &str, peer: &str) -> bool {
    line.match_indices(peer)
        .any(|(at, _)| !line[at + peer.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Panics unless `peer` is an address of the test's own (in 127.1.0.0/16:
/// `common::own_address`), so that a line naming it is this test's.
fn assert_own(peer: std::net::SocketAddr) {
    assert!(
        matches!(peer.ip(), std::net::IpAddr::V4(ip) if ip.octets()[..2] == [127, 1]),
        "{peer} is no address of the test's own (common::connect_from_own_address): another test's line may name it"
    );
}

/// The worker threads of one test's server, learnt as each accepts a
/// connection (`Builder::on_connection` runs on the worker thread, before
/// the connection's TLS handshake or first read): a line logged on one is
/// that server's, whatever its text says. (A line a worker logs before its
/// first connection is not known as its server's: no test waits for one.)
#[derive(Clone, Default)]
struct Workers(std::sync::Arc<Mutex<Vec<std::thread::ThreadId>>>);

impl Workers {
    /// `builder` with the hook that learns its server's workers (it
    /// replaces any `on_connection` hook set before), and those workers.
    fn of(builder: megaconn::Builder) -> (megaconn::Builder, Workers) {
        let workers = Workers::default();
        let learnt = workers.clone();
        let builder = builder.on_connection(move |event| {
            if let megaconn::ConnectionEvent::Opened { .. } = event {
                let mut threads = learnt.0.lock().unwrap_or_else(|e| e.into_inner());
                let here = std::thread::current().id();
                if !threads.contains(&here) {
                    threads.push(here);
                }
            }
        });
        (builder, workers)
    }

    /// Whether `thread` is one of this server's workers.
    fn logged(&self, thread: std::thread::ThreadId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&thread)
    }

    /// The lines this server's workers logged so far.
    fn lines(&self) -> Vec<String> {
        let captured = captured();
        let whose = Whose::Server(self);
        (0..captured.lines.len())
            .filter(|&i| whose.owns(&captured, i))
            .map(|i| captured.lines[i].clone())
            .collect()
    }
}

/// Waits (bounded by [`SAFETY`]) until a line containing `needle` that is
/// `whose` was logged, and returns it: woken by each line logged, not
/// polling.
async fn wait_for_line(whose: Whose<'_>, needle: &str) -> String {
    if let Whose::Peer(peer) = &whose {
        assert_own(*peer);
    }
    let found = async {
        loop {
            // Made before the look, so a line logged after it wakes it
            // (`notify_waiters` wakes every `Notified` that exists).
            let more = LOGGED_MORE.notified();
            {
                let captured = captured();
                let ours = (0..captured.lines.len())
                    .find(|&i| captured.lines[i].contains(needle) && whose.owns(&captured, i));
                if let Some(i) = ours {
                    return captured.lines[i].clone();
                }
            }
            more.await;
        }
    };
    match tokio::time::timeout(SAFETY, found).await {
        Ok(line) => line,
        Err(_) => {
            // What was logged instead, if anything like it: the lines
            // sharing the needle's first three words or that are `whose`
            // (a flake is diagnosed from CI's output alone).
            let like: String = needle.split(' ').take(3).collect::<Vec<_>>().join(" ");
            let captured = captured();
            let near: Vec<&String> = (0..captured.lines.len())
                .filter(|&i| captured.lines[i].contains(&like) || whose.owns(&captured, i))
                .map(|i| &captured.lines[i])
                .collect();
            panic!(
                "the server never logged {needle:?} as its own; lines with {like:?} or its own: {:?}",
                &near[near.len().saturating_sub(10)..]
            );
        }
    }
}

/// Panicking handlers, many in a row: the worker logs the first and holds
/// the rest back (`suppressed`), for the line saying what it did and, with
/// [`megaconn::install_panic_hook`], for the panic's own report (the
/// standard hook wrote three lines to stderr per panic, not through the
/// log: 1,000 panics were 4,000 lines, not JSON under `--log-format json`).
/// The bound is taken from the time the requests took, as above.
#[tokio::test]
async fn a_flood_of_panics_logs_one_line_per_interval() {
    const DONE: &str = "handler panicked; answering 500";
    const REPORT: &str = "a worker thread panicked";
    const PANICS: usize = 200;
    /// Told apart from other tests' panics (they run in this process too).
    const WHY: &str = "a flood of panics, on purpose";
    capture_log();
    megaconn::install_panic_hook();
    let app = tower::service_fn(|_req: http::Request<megaconn::Body>| async move {
        if true {
            panic!("{WHY}");
        }
        Ok::<_, std::convert::Infallible>(http::Response::new(megaconn::Body::empty()))
    });
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        app,
    );
    let started = std::time::Instant::now();
    for _ in 0..PANICS {
        let mut s = tokio::net::TcpStream::connect(server.addrs[0])
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 500);
    }
    assert_eq!(server.handle.stats().panics, PANICS as u64);
    assert!(server.stop().await, "the server stops");
    let most = 1 + (started.elapsed().as_secs() / 5) as usize;
    let logged = logged();
    for needle in [DONE, REPORT] {
        let lines = logged
            .iter()
            .filter(|m| m.contains(needle) && m.contains(WHY))
            .count();
        assert!(
            (1..=most).contains(&lines),
            "{lines} lines {needle:?} for {PANICS} panics (at most {most})"
        );
    }
}

/// A handler that blocks its worker's thread (here on a channel, as on a
/// lock or synchronous I/O) is reported as a stall whose line says the
/// thread was off its CPU: blocked, not short of a core or busy in the
/// kernel (the line blamed a blocking handler whatever held the worker, and
/// a worker writing a fan-out under kernel memory pressure sent an operator
/// looking for a handler that did not block). A blocked thread is neither
/// on a CPU nor waiting for one however loaded the machine; what it waited
/// for a CPU before it blocked is a small share of a stall of a second.
#[tokio::test]
async fn a_stall_line_says_a_blocked_thread_was_off_its_cpu() {
    const BLOCKED: &str =
        "a worker has not come back to its event loop: its thread was off its CPU, not waiting for one";
    capture_log();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Arc::new(Mutex::new(gate));
    let app = tower::service_fn(move |_req: http::Request<megaconn::Body>| {
        let gate = gate.clone();
        async move {
            // Blocks the worker's thread until the test lets it go.
            let _ = gate.lock().unwrap().recv_timeout(SAFETY);
            Ok::<_, std::convert::Infallible>(http::Response::new(megaconn::Body::empty()))
        }
    });
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            // The cause is read from the thread's times over the stall,
            // from the watchdog's first look that finds the worker away:
            // with a stall of 100 ms, a worker that waited ~50 ms for a
            // CPU before its handler blocked was `no_cpu`, logged once,
            // and this line never came (1 in 20 runs of this binary
            // beside two busy loops and a build, session 52). A second
            // leaves the block 10 times that margin.
            .stall_threshold(Some(Duration::from_secs(1)))
            // The line then names the connections the worker was handling
            // (`handling`): this one's peer, an address of its own, tells
            // the line from another test's stall.
            .track_connections(true)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        app,
    );
    let mut s = common::connect_from_own_address(server.addrs[0]).await;
    let peer = s.local_addr().unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    wait_for_line(Whose::Peer(peer), BLOCKED).await;
    release.send(()).unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    assert!(server.handle.stats().worker_stalls >= 1);
    assert!(server.stop().await, "the server stops");
}

/// At the limit the acceptor stops accepting: a third connection waits in
/// the kernel's backlog until one of the two closes. Proved without waiting
/// for silence: the acceptor says (its warning, logged when a connection is
/// queued and it finds no slot for it) that it stopped at the third, and as
/// no connection has closed since (`closed == 0`), no slot came free, so
/// the third cannot have been accepted.
#[tokio::test]
async fn max_connections_holds_and_resumes_when_one_closes() {
    capture_log();
    // Nothing parks, so nothing idle can be closed for the third (at the
    // limit the lot closes parked keep-alive connections for new ones).
    let (builder, workers) = Workers::of(
        megaconn::Server::builder()
            .workers(1)
            .max_connections(2)
            .park_idle_after(None),
    );
    let server = TestServer::start(builder).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    for s in [&mut first, &mut second] {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(s).await.status, 200);
    }
    // The third connects (the kernel queues it); the acceptor, both slots
    // taken, waits for a free one instead of accepting it.
    let mut third = server.connect().await;
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // The line names no peer: its server's worker logs it.
    wait_for_line(
        Whose::Server(&workers),
        "nothing idle to close: not accepting until a connection closes",
    )
    .await;
    let stats = server.handle.stats();
    assert_eq!(stats.closed, 0, "a slot came free: the proof does not hold");
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.connections_open, 2);
    let mut probe = [0u8; 1];
    assert_eq!(
        third.try_read(&mut probe).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the third connection was answered over the limit"
    );
    // Closing one lets the third in.
    drop(first);
    assert_eq!(read_response(&mut third).await.status, 200);
    assert_eq!(server.handle.stats().accepted, 3);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_hold_no_buffers() {
    let server = TestServer::default().await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut s = server.connect().await;
        // A request with a 4 KiB body and a 4 KiB response, then a plain one.
        let body = vec![b'b'; 4096];
        let mut req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n".to_vec();
        req.extend_from_slice(&body);
        s.write_all(&req).await.unwrap();
        assert_eq!(read_response(&mut s).await.body.len(), 4096);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut s).await;
        conns.push(s);
    }
    server
        .wait_stats("10 idle connections", |s| s.connections_idle == 10)
        .await;
    let stats = server.handle.stats();
    assert_eq!(stats.connections_open, 10);
    assert_eq!(
        stats.buffers_checked_out, 0,
        "idle connections must hold no buffers: {stats:?}"
    );
    assert!(stats.buffers_pooled > 0, "buffers went back to the pool");
    drop(conns);
    server.stop().await;
}

#[tokio::test]
async fn binding_a_port_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = megaconn::Server::bind(addr).listen().unwrap_err();
    assert!(matches!(err, megaconn::Error::AddrInUse { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
}

/// Whether this host can bind the IPv6 loopback (some sandboxes have none).
fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Two workers on two addresses (IPv4 and IPv6 loopback): every address
/// answers, and the kernel spreads separate connections over both workers'
/// `SO_REUSEPORT` listeners, so each worker serves some of them.
#[tokio::test]
async fn several_workers_and_addresses_serve() {
    const CONNECTIONS: usize = 32;
    let mut builder = megaconn::Server::bind("127.0.0.1:0".parse().unwrap()).workers(2);
    if ipv6_loopback_available() {
        builder = builder.listen_on("[::1]:0".parse().unwrap());
    } else {
        common::skip(
            "several_workers_and_addresses_serve: the IPv6 address (this host cannot bind [::1])",
        );
    }
    let server = builder.listen().expect("binds every address");
    let addrs = server.local_addrs().to_vec();
    let handle = server.handle();
    let (app, _probe) = common::test_app();
    let task = tokio::spawn(server.serve(app));
    // Separate connections (a client pool would reuse one, and one
    // connection is served by one worker): each has its own source port, on
    // which the kernel's choice of listener depends.
    for addr in &addrs {
        for _ in 0..CONNECTIONS {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let raw = read_to_close(&mut s).await;
            assert!(raw.ends_with(b"Hello, World!"), "{addr}");
        }
    }
    let stats = handle.stats();
    let per_worker: Vec<u64> = stats
        .request_metrics
        .workers
        .iter()
        .map(|w| w.requests)
        .collect();
    assert_eq!(stats.requests, (CONNECTIONS * addrs.len()) as u64);
    assert_eq!(per_worker.len(), 2);
    assert_eq!(per_worker.iter().sum::<u64>(), stats.requests);
    // All 32+ on one worker: a chance of 2^-31 if the kernel spreads them.
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "one worker served everything: {per_worker:?}"
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// A peer can repeat an over-limit event at will (here a thousand HTTP/2
/// streams, each with a body over `max_body_bytes`, on one connection): the
/// worker logs the first and holds the rest back, to be counted in the
/// next line of that kind (`suppressed`), not one line each. The limit is
/// one line per 5 s of real time, so a slow machine may see a second line:
/// the bound is taken from the time the requests took, not fixed at one.
#[tokio::test]
async fn a_thousand_bodies_over_the_limit_log_one_line_per_interval() {
    const LINE: &str = "HTTP/2 request body over max_body_bytes";
    capture_log();
    // Its own server's lines, counted: another test's server may log the
    // same words.
    let (builder, workers) = Workers::of(megaconn::Server::builder().workers(1).max_body_bytes(16));
    let server = TestServer::start(builder).await;
    let mut client = common::h2c(server.addr).await;
    let started = std::time::Instant::now();
    for _ in 0..1_000 {
        client = client.ready().await.unwrap();
        let request = http::Request::post(server.url("/collect"))
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from_static(&[b'x'; 32]), true)
            .unwrap();
        let status = response.await.unwrap().status();
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
    }
    server.stop().await;
    // Every event happened within `elapsed`, and lines are at least 5 s
    // (ratelog's LOG_INTERVAL) apart.
    let elapsed = started.elapsed();
    let most = 1 + (elapsed.as_secs() / 5) as usize;
    let lines: Vec<String> = workers
        .lines()
        .into_iter()
        .filter(|m| m.contains(LINE))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= most,
        "{} lines in {elapsed:?} (at most {most}): {:?}",
        lines.len(),
        &lines[..lines.len().min(3)]
    );
    assert!(lines[0].ends_with("suppressed=0"), "{}", lines[0]);
    // Each line stands for itself and the events held back before it; the
    // ones held back after the last line are in no line.
    let counted: u64 = lines
        .iter()
        .map(|l| {
            let n = l.rsplit_once("suppressed=").expect("a count").1;
            1 + n.parse::<u64>().expect("a number")
        })
        .sum();
    assert!(
        counted <= 1_000,
        "{counted} events in {} lines",
        lines.len()
    );
}

/// A refused request head is logged at INFO, naming the status, why and
/// the peer, one line per interval per worker however many a peer sends
/// (ratelog's `RefusedHead`). Before, only at debug: counted, but an
/// operator saw no line.
#[tokio::test]
async fn refused_request_heads_log_status_reason_and_peer_once_per_interval() {
    const LINE: &str = "refused a request head from";
    const REFUSALS: usize = 50;
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1).max_headers(2)).await;
    let (started, peers) = each_answered_then_closed(
        &server,
        REFUSALS,
        |_| b"GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\n\r\n",
        "431",
    )
    .await;
    wait_for_line(
        Whose::Peer(peers[0].parse().unwrap()),
        &format!(
            "{LINE} {}: 431 Request Header Fields Too Large (more than max_headers request headers)",
            peers[0]
        ),
    )
    .await;
    server.stop().await;
    assert_one_line_per_interval(started, LINE, &peers, ":");
}

/// Refused heads of different statuses, one right after another from one
/// worker, each get their line: a 431, then a 413, a 505 and a 400 within
/// the same second. They shared one kind (ratelog's `RefusedHead`), so the
/// 431's line held the others back for 5 s, and a flood over one limit hid
/// which other limits were hit.
#[tokio::test]
async fn refused_heads_of_different_statuses_each_get_their_line() {
    capture_log();
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .max_headers(2)
            .max_body_bytes(16),
    )
    .await;
    let heads: [(&[u8], &str); 4] = [
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\n\r\n",
            "431 Request Header Fields Too Large (more than max_headers request headers)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n",
            "413 Payload Too Large (Content-Length exceeds max_body_bytes)",
        ),
        (
            b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
            "505 HTTP Version Not Supported",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: 1\r\n\r\n",
            "400 Bad Request",
        ),
    ];
    for (head, line) in heads {
        // Its own address: the line is told from any other test's by it.
        let mut s = common::connect_from_own_address(server.addr).await;
        let peer = s.local_addr().unwrap();
        s.write_all(head).await.unwrap();
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        let status = &line[..3];
        assert!(raw.starts_with(&format!("HTTP/1.1 {status} ")), "{raw}");
        wait_for_line(
            Whose::Peer(peer),
            &format!("refused a request head from {peer}: {line}"),
        )
        .await;
    }
    server.stop().await;
}

/// Sends `count` requests to `server`, each on a connection of its own
/// from an address of its own (`common::connect_from_own_address`: the
/// lines these tests count name their peer), request `i` being `request(i)`, and asserts that each is answered
/// `status` and closed. Returns when the first was sent (the events began:
/// [`assert_one_line_per_interval`]'s `started`) and each connection's
/// address, the peer its line names.
async fn each_answered_then_closed(
    server: &TestServer,
    count: usize,
    request: impl Fn(usize) -> &'static [u8],
    status: &str,
) -> (std::time::Instant, Vec<String>) {
    let started = std::time::Instant::now();
    let mut peers = Vec::new();
    for i in 0..count {
        let mut s = common::connect_from_own_address(server.addr).await;
        peers.push(s.local_addr().unwrap().to_string());
        s.write_all(request(i)).await.unwrap();
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(raw.starts_with(&format!("HTTP/1.1 {status} ")), "{raw}");
    }
    (started, peers)
}

/// Asserts that the lines containing `line` and naming one of `peers`
/// (followed by `after`) came at most one per 5 s (ratelog's
/// LOG_INTERVAL) since `started`, when the events began: lines are at
/// least that far apart.
fn assert_one_line_per_interval(
    started: std::time::Instant,
    line: &str,
    peers: &[String],
    after: &str,
) {
    let elapsed = started.elapsed();
    let most = 1 + (elapsed.as_secs() / 5) as usize;
    let logged = logged();
    let ours = logged
        .iter()
        .filter(|m| m.contains(line) && peers.iter().any(|p| m.contains(&format!(" {p}{after}"))))
        .count();
    assert!(
        ours <= most,
        "{line}: {ours} lines in {elapsed:?} (at most {most})"
    );
}

/// A request head or a request that does not come whole within its
/// timeout (`read_header_timeout`, `read_timeout`: a slowloris) is logged
/// at INFO, naming the setting and the peer, one line per interval per
/// worker and setting. Before, only at debug: an operator saw
/// `closed{header_timeout}` and `closed{read_timeout}` counted, but no
/// line, nor who.
#[tokio::test]
async fn requests_that_time_out_log_the_setting_and_peer_once_per_interval() {
    const SLOW: usize = 20;
    capture_log();
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .read_header_timeout(Some(Duration::from_millis(100)))
            .read_timeout(Some(Duration::from_millis(100))),
    )
    .await;
    // Half of them a head that never ends, half a body that never does.
    let slow = |i: usize| -> &'static [u8] {
        if i % 2 == 0 {
            b"GET / HTTP/1.1\r\nHost: t\r\n"
        } else {
            b"POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"
        }
    };
    let (started, peers) = each_answered_then_closed(&server, SLOW, slow, "408").await;
    wait_for_line(
        Whose::Peer(peers[0].parse().unwrap()),
        &format!(
            "no whole request head from {} within read_header_timeout",
            peers[0]
        ),
    )
    .await;
    wait_for_line(
        Whose::Peer(peers[1].parse().unwrap()),
        &format!(
            "an HTTP/1.1 request from {} did not complete within read_timeout",
            peers[1]
        ),
    )
    .await;
    server.stop().await;
    for line in ["within read_header_timeout", "within read_timeout"] {
        assert_one_line_per_interval(started, line, &peers, " ");
    }
}

/// An HTTP/2 request refused before any handler (413: a Content-Length
/// over `max_body_bytes`) logs HTTP/1.1's line for a refused head, at INFO
/// and limited with it (`RefusedHead`), naming the status, why and the
/// peer. It was logged at debug only: counted, with no line.
#[tokio::test]
async fn a_refused_http2_request_logs_the_refused_head_line() {
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1).max_body_bytes(10)).await;
    let req = http::Request::post("http://t/echo")
        .header("content-length", "100")
        .body(())
        .unwrap();
    let peer = h2c_answered(&server, req, false, http::StatusCode::PAYLOAD_TOO_LARGE).await;
    wait_for_line(Whose::Peer(peer), &format!(
        "refused a request head from {peer}: 413 Payload Too Large (Content-Length exceeds max_body_bytes); answered, HTTP/2 stream ended"
    ))
    .await;
    server.stop().await;
}

/// Sends `req` (its stream ended with the head if `end`) on a fresh h2c
/// connection to `server` and asserts the answer's `status`; returns the
/// client's address, the peer the server's lines name.
async fn h2c_answered(
    server: &TestServer,
    req: http::Request<()>,
    end: bool,
    status: http::StatusCode,
) -> std::net::SocketAddr {
    let (client, peer) = common::h2c_from_own_address(server.addr).await;
    let mut client = client.ready().await.unwrap();
    // The body's handle is kept until the answer: dropped, it would reset
    // a stream not ended.
    let (resp, _body) = client.send_request(req, end).unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), status);
    peer
}

/// A header list over `http2_max_header_list_size`, which h2 answers 431
/// itself, logs the refused head's line too, naming the peer (read off the
/// socket only then: no `connect_info`). Before, h2's 431 had no line at
/// all (nor a count: `h2_limits.rs`).
#[tokio::test]
async fn an_http2_header_list_over_its_limit_logs_the_refused_head_line() {
    capture_log();
    let builder = megaconn::Server::builder()
        .workers(1)
        .http2_max_header_list_size(4096);
    let server = TestServer::start(builder).await;
    let mut req = http::Request::get("http://t/");
    for i in 0..5 {
        req = req.header(format!("x-{i}"), "v".repeat(1000));
    }
    let status = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let peer = h2c_answered(&server, req.body(()).unwrap(), true, status).await;
    wait_for_line(Whose::Peer(peer), &format!(
        "refused a request head from {peer}: 431 Request Header Fields Too Large (header list over http2_max_header_list_size); answered by h2, HTTP/2 stream ended"
    ))
    .await;
    server.stop().await;
}

/// Streams opened past `http2_max_concurrent_streams`, which h2 refuses
/// itself (`RST_STREAM(REFUSED_STREAM)`), log a line naming the peer and
/// the setting. Before, no line (nor a count: `h2_limits.rs`).
#[tokio::test]
async fn http2_streams_past_max_concurrent_streams_log_a_line() {
    capture_log();
    let builder = megaconn::Server::builder()
        .workers(1)
        .http2_max_concurrent_streams(2);
    let server = TestServer::start(builder).await;
    // Its own address: the line is told from any other test's by it.
    let mut s = common::connect_from_own_address(server.addr).await;
    let peer = s.local_addr().unwrap();
    // The preface, an empty SETTINGS frame, then four streams in the same
    // write: HEADERS (END_STREAM, END_HEADERS) of `GET /wait` (HPACK:
    // GET, http, :path "/wait" as a literal, :authority "a"), whose
    // handlers wait: h2 takes two and refuses 5 and 7.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    let wait = [
        0x82, 0x86, 0x04, 5, b'/', b'w', b'a', b'i', b't', 0x01, 1, b'a',
    ];
    for stream in [1, 3, 5, 7] {
        bytes.extend_from_slice(&[0, 0, wait.len() as u8, 0x1, 0x5, 0, 0, 0, stream]);
        bytes.extend_from_slice(&wait);
    }
    s.write_all(&bytes).await.unwrap();
    wait_for_line(Whose::Peer(peer), &format!(
        "refused an HTTP/2 stream from {peer} past http2_max_concurrent_streams: RST_STREAM(REFUSED_STREAM), the client may retry it"
    ))
    .await;
    drop(s);
    server.stop().await;
}

/// Echoes each WebSocket message.
struct WsEcho;

impl megaconn::WebSocketHandler for WsEcho {
    type State = ();

    async fn on_message(
        &self,
        _: &mut (),
        message: megaconn::WsMessage,
        _: &megaconn::WsSession,
    ) -> Option<megaconn::WsMessage> {
        Some(message)
    }
}

/// The next message `client` reads (bounded by [`SAFETY`]).
async fn next_ws<S>(client: &mut S) -> tokio_tungstenite::tungstenite::Message
where
    S: futures_util::Stream<
            Item = tokio_tungstenite::tungstenite::Result<tokio_tungstenite::tungstenite::Message>,
        > + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(SAFETY, client.next())
        .await
        .expect("a message in time")
        .expect("the socket open")
        .expect("a message")
}

/// A connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` says so at INFO,
/// with the cause: here a client that opens streams and cancels each while
/// its handler waits (rapid reset), until the server sends the GOAWAY
/// (ours after 100 such cancels, or h2's after 20 cancelled before they
/// were accepted: either is logged). Before, only a debug line said it.
#[tokio::test]
async fn a_goaway_enhance_your_calm_is_logged_with_its_cause() {
    capture_log();
    let (builder, workers) = Workers::of(megaconn::Server::builder().workers(1));
    let server = TestServer::start(builder).await;
    let mut client = common::h2c(server.addr).await;
    // Bounded: far more than either guard allows.
    for _ in 0..2_000 {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = http::Request::get(server.url("/wait")).body(()).unwrap();
        let Ok((response, _)) = client.send_request(request, true) else {
            break;
        };
        // Dropped: the client resets the stream (CANCEL).
        drop(response);
    }
    // The line names no peer (h2's own small-DATA guard logs the same
    // words, for another test's flood): its server's worker logs it.
    wait_for_line(
        Whose::Server(&workers),
        "HTTP/2 connection closed with GOAWAY(ENHANCE_YOUR_CALM): ",
    )
    .await;
    server.stop().await;
}

/// An HTTP/2 control-frame flood (WINDOW_UPDATEs) is logged at INFO, naming the
/// peer and `HTTP2_CONTROL_BUDGET`, a kind of its own (a rapid reset's line
/// within the interval does not hold it back).
#[tokio::test]
async fn an_http2_control_flood_is_logged_naming_the_budget() {
    // Twice the budget's worth of connection WINDOW_UPDATEs of 1 (13 bytes
    // each; PINGs run a budget of their own out first, below).
    let update = [0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let flood = update.repeat(2 * megaconn::HTTP2_CONTROL_BUDGET as usize / 13);
    h2_flood_is_logged(
        &flood,
        "its control frames",
        "HTTP2_CONTROL_BUDGET (65536 bytes)",
    )
    .await;
}

/// An HTTP/2 PING flood is logged at INFO, naming the peer and
/// `HTTP2_PING_BUDGET`, a kind of its own.
#[tokio::test]
async fn an_http2_ping_flood_is_logged_naming_the_budget() {
    // Twice the budget's worth of PINGs, nothing sent between them.
    let ping = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let flood = ping.repeat(2 * megaconn::HTTP2_PING_BUDGET as usize);
    h2_flood_is_logged(&flood, "it sent more PINGs", "HTTP2_PING_BUDGET (100)").await;
}

/// An HTTP/2 tiny-DATA flood (1-byte DATA frames) is logged at INFO, naming
/// the peer and `HTTP2_TINY_DATA_BUDGET`, a kind of its own. The frames go
/// to `/wait`, whose handler neither reads nor answers, 500 a stream; each
/// stream is reset once its handler runs, and the next sent once the reset
/// has cancelled it: h2 then frees the stream's frames (and gives its own
/// bound on small frames buffered unread back), ours keeps them counted,
/// so ours runs out first whatever the machine's pace. Sent at once, the
/// streams' frames all waited in h2 for the server's next turn (a busy
/// machine's server read the whole flood in one poll, before any stream
/// was accepted, so no reset freed anything): h2's bound (~2,056 frames,
/// `H2_DATA_FRAME_BUDGET`) came first whenever ours (2,000) had earned
/// ~60 frames back from time between two reads, closing the connection
/// with h2's line (`h2_enhance_your_calm`, no `http2_data_flood`): 6 and
/// 10 failures in 20 runs of this binary beside two busy loops and a
/// build (session 52; 7 in 10 pinned to a core in session 49, 2 with the
/// resets of streams sent at once). Ours gives back 1,000 a second: this
/// runs it out unless a stream's round took half a second.
#[tokio::test]
async fn an_http2_tiny_data_flood_is_logged_naming_the_budget() {
    const PER_STREAM: usize = 500;
    /// Far more than the budget needs (five streams), fewer than the
    /// rapid-reset guard's 100 cancels.
    const STREAMS: usize = 60;
    // HEADERS (END_HEADERS): POST /wait, :authority a.
    let wait = [
        0x83, 0x86, 0x04, 5, b'/', b'w', b'a', b'i', b't', 0x01, 1, b'a',
    ];
    capture_log();
    let mut server = TestServer::start(megaconn::Server::builder().workers(1)).await;
    // Its own address: the line is told from any other test's by it.
    let mut tcp = common::connect_from_own_address(server.addr).await;
    let peer = tcp.local_addr().unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
    tcp.write_all(&hello).await.unwrap();
    for stream in (1u32..).step_by(2).take(STREAMS) {
        let id = stream.to_be_bytes();
        let mut frames = vec![0, 0, wait.len() as u8, 0x1, 0x4];
        frames.extend_from_slice(&id);
        frames.extend_from_slice(&wait);
        for _ in 0..PER_STREAM {
            frames.extend_from_slice(&[0, 0, 1, 0x0, 0]);
            frames.extend_from_slice(&id);
            frames.push(b'x');
        }
        // The server may have closed the connection (the flood counted).
        let _ = tcp.write_all(&frames).await;
        if !next_unless_flooded(&mut server, Event::Started("/wait".into())).await {
            break;
        }
        // RST_STREAM(CANCEL).
        let mut reset = vec![0, 0, 4, 0x3, 0];
        reset.extend_from_slice(&id);
        reset.extend_from_slice(&8u32.to_be_bytes());
        let _ = tcp.write_all(&reset).await;
        if !next_unless_flooded(&mut server, Event::Cancelled("/wait".into())).await {
            break;
        }
    }
    let line = wait_for_line(Whose::Peer(peer), &format!(
        "HTTP/2 connection from {peer} closed with GOAWAY(ENHANCE_YOUR_CALM): it sent more tiny DATA frames"
    ))
    .await;
    assert!(line.contains("HTTP2_TINY_DATA_BUDGET (2000)"), "{line}");
    drop(tcp);
    server.stop().await;
}

/// Waits for the test app's next event, which must be `want`, unless the
/// server counts a tiny-DATA flood first (it then reads nothing more):
/// false then.
async fn next_unless_flooded(server: &mut TestServer, want: Event) -> bool {
    let handle = server.handle.clone();
    tokio::select! {
        event = server.probe.next_event() => {
            assert_eq!(event, want);
            true
        }
        () = common::wait_stats(&handle, "the tiny-DATA flood counted", |s| {
            common::limit_hits(s, "http2_data_flood") == 1
        }) => false,
    }
}

/// Sends `frames` after the preface and an empty SETTINGS frame on an h2c
/// connection to a server of its own (one worker), and asserts that it
/// logged closing the connection with `GOAWAY(ENHANCE_YOUR_CALM)`, naming
/// the peer and `cause`, and a line naming `budget`. Returns the server's
/// counters as of then.
async fn h2_flood_is_logged(frames: &[u8], cause: &str, budget: &str) -> megaconn::ServerStats {
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1)).await;
    // Its own address: the line is told from any other test's by it.
    let mut tcp = common::connect_from_own_address(server.addr).await;
    let peer = tcp.local_addr().unwrap();
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
    flood.extend_from_slice(frames);
    // The server may close before it read everything.
    let _ = tcp.write_all(&flood).await;
    let line = wait_for_line(
        Whose::Peer(peer),
        &format!("HTTP/2 connection from {peer} closed with GOAWAY(ENHANCE_YOUR_CALM): {cause}"),
    )
    .await;
    assert!(line.contains(budget), "{line}");
    let stats = server.handle.stats();
    drop(tcp);
    server.stop().await;
    stats
}

/// A native WebSocket past its limits, as an `axum_ws` socket
/// (`ws_axum.rs`): a frame over `max_frame_bytes` or a message over
/// `max_message_bytes` closes with 1009 and a reason naming the limit, is
/// counted in `megaconn_limit_hits_total{limit="ws_message_too_big"}` (a
/// frame: `ws_frame_too_big`; it was counted as a message), and
/// logs a (rate-limited) line naming the `WebSocketRoute` setting, with the
/// size and the limit. It logged at debug only, a line per event. Both
/// limits hit on one worker within the interval log a line each: they
/// shared one log kind, and the second setting was only counted as
/// suppressed, never named.
#[tokio::test]
async fn a_websocket_past_its_limit_closes_with_1009_and_logs_the_setting() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;
    capture_log();
    // Limits of this test's own: its lines are told from any other test's.
    // A single frame of 1003 to 2001 bytes is a message over the limit.
    const MESSAGE: usize = 1002;
    let route = megaconn::WebSocketRoute::new(WsEcho)
        .max_frame_bytes(2001)
        .max_message_bytes(MESSAGE);
    // One server, so one worker (with its own log limiter) for both.
    let server = common::AppServer::start(
        megaconn::Server::builder()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
        axum::Router::new().route_service("/ws", route),
    );
    let url = format!("ws://{}/ws", server.addrs[0]);
    for (hits, (setting, what, limit, counted)) in [
        ("max_message_bytes", "message", MESSAGE, [1, 0]),
        ("max_frame_bytes", "frame", 2001, [1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut client, _) = tokio::time::timeout(SAFETY, tokio_tungstenite::connect_async(&url))
            .await
            .expect("handshake in time")
            .expect("handshake");
        // The line names the peer: this client.
        let peer = match client.get_ref() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
            other => panic!("a plain ws:// client, not {other:?}"),
        };
        // At both limits: echoed.
        let fits = Message::binary(vec![7u8; MESSAGE]);
        client.send(fits.clone()).await.unwrap();
        assert_eq!(next_ws(&mut client).await, fits, "{setting}");
        client
            .send(Message::binary(vec![7u8; limit + 1]))
            .await
            .unwrap();
        match next_ws(&mut client).await {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Size, "{setting}");
                assert_eq!(frame.reason.as_str(), format!("{what} over {setting}"));
            }
            other => panic!("{setting}: expected close 1009, got {other:?}"),
        }
        // After a violation the server reads the peer's bytes away until it
        // hangs up (a lingering close): hanging up spares its close timeout.
        drop(client);
        let hits = hits as u64 + 1;
        common::wait_stats(&server.handle, "the limit hit counted", |s| {
            s.limit_hits.iter().map(|(_, n)| n).sum::<u64>() == hits
        })
        .await;
        common::assert_ws_limit_hits(&server.handle, setting, counted);
        // Logged before the close frame went out; the first of its
        // setting, however soon after the other's.
        let line = format!(
            "WebSocket {what} from {peer} over WebSocketRoute::{setting}; closing with 1009 size={} limit={limit} suppressed=0",
            limit + 1
        );
        let logged = logged().clone();
        assert!(logged.contains(&line), "no {line:?} among {logged:?}");
    }
    assert!(server.stop().await, "the server stops");
}

/// Echoes each frame and reports each connection's close reason.
struct FramedEcho(tokio::sync::mpsc::UnboundedSender<megaconn::CloseReason>);

impl megaconn::FramedHandler for FramedEcho {
    type State = ();

    async fn on_message(
        &self,
        _: &mut (),
        frame: bytes::Bytes,
        _: &megaconn::Session,
    ) -> Option<bytes::Bytes> {
        Some(frame)
    }

    fn on_close(&self, _: (), reason: megaconn::CloseReason) {
        let _ = self.0.send(reason);
    }
}

/// A framed connection past its limit: a length header over
/// `Framing::max_frame_bytes` or a line over `Framing::max_line_bytes`
/// closes the connection with its reason, is counted in
/// `megaconn_limit_hits_total` (`framed_max_frame_bytes`,
/// `framed_max_line_bytes`), and logs a (rate-limited) line naming the
/// setting, with the limit and the size (a frame's announced one, a whole
/// line's length). It logged at
/// debug only, a line per event. Both limits hit on one worker within the
/// interval log a line each: they shared one log kind, and the second
/// setting was only counted as suppressed, never named.
#[tokio::test]
async fn a_framed_connection_past_its_limit_closes_and_logs_the_setting() {
    use megaconn::{CloseReason, Framing, FramingError, ProtocolDetail};
    capture_log();
    // Limits of this test's own: its lines are told from any other test's.
    let cases = [
        (
            Framing::length_prefixed(4).max_frame_bytes(1003),
            1004u32.to_be_bytes().to_vec(),
            FramingError::FrameTooLarge,
            "framed_max_frame_bytes",
            "framed TCP frame from {peer} over Framing::max_inbound_frame_bytes (or max_frame_bytes); closing size=1004 limit=1003 suppressed=0",
        ),
        (
            Framing::lines().max_line_bytes(1005),
            [&[b'l'; 1006][..], b"\n"].concat(),
            FramingError::LineTooLong,
            "framed_max_line_bytes",
            "framed TCP line from {peer} over Framing::max_line_bytes; closing size=1006 limit=1005 suppressed=0",
        ),
    ];
    // One server, so one worker (with its own log limiter) for both: a
    // listener per framing.
    let builder = cases
        .iter()
        .fold(megaconn::Server::builder().workers(1), |b, case| {
            b.listen_framed_on("127.0.0.1:0".parse().unwrap(), case.0)
        });
    let server = builder.listen().expect("server binds");
    let addrs = server.local_addrs().to_vec();
    let handle = server.handle();
    let (closes, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(server.serve_framed(FramedEcho(closes)));
    for (addr, (_, past, error, label, line)) in addrs.into_iter().zip(cases) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The line names the peer: this client.
        let line = line.replace("{peer}", &s.local_addr().unwrap().to_string());
        s.write_all(&past).await.unwrap();
        assert_eq!(read_to_close(&mut s).await, b"", "{label}");
        let reason = tokio::time::timeout(SAFETY, closed.recv()).await.unwrap();
        assert_eq!(
            reason,
            Some(CloseReason::Protocol(ProtocolDetail::Framing(error)))
        );
        common::wait_stats(&handle, "the limit hit counted", |s| {
            s.limit_hits.contains(&(label, 1))
        })
        .await;
        let metrics = handle.render_metrics();
        let metric = format!("megaconn_limit_hits_total{{limit=\"{label}\"}} 1");
        assert!(metrics.lines().any(|l| l == metric), "{label}: {metrics}");
        // Logged before the connection closed; the first of its setting,
        // however soon after the other's.
        let logged = logged().clone();
        assert!(logged.contains(&line), "no {line:?} among {logged:?}");
    }
    common::shut_down(&handle, task)
        .await
        .expect("serve result");
}

/// A server started and dropped unrun while a hand-over is pending (an
/// upgrade asked for its parked connections: `hand_over_parked`), one of
/// its workers panicking as it hands them over ([`PanicAtHandOver`]):
/// the hand-over still ends, with the other worker's batch, instead of
/// waiting for good for the dead one's. The server's join thread ends it
/// once every worker ended; `Started::run` used to, after joining, which a
/// server dropped unrun never gets to. (Without a panic the workers of a
/// server dropped unrun each send their batch, empty, and the hand-over
/// ends by itself.)
#[test]
fn a_pending_hand_over_ends_when_a_server_dropped_unrun_loses_a_worker() {
    capture_log();
    let (app, _probe) = common::test_app();
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .listen()
        .unwrap();
    let started = server.start(app).unwrap();
    // Kept, as an old process's upgrade thread keeps one: with the last
    // handle gone, the hand-over would end anyway.
    let handle = started.handle();
    let batches = handle.hand_over_parked();
    let _panics = PanicAtHandOver::set();
    drop(started);
    // Iterating blocks until the next batch or the end: on a thread, so
    // that the wait has a bound.
    let (tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(batches.count());
    });
    let batches = ended
        .recv_timeout(SAFETY)
        .expect("the hand-over ends once the workers ended");
    assert_eq!(batches, 1, "only the live worker's batch comes");
    drop(handle);
}

/// TLS at its front door logs as the limits do, one line per kind per
/// interval at INFO: a handshake not done within its timeout, one that
/// failed, one over the record buffer's limit (a ClientHello in tiny
/// records), and a peer that broke the protocol after its handshake (a
/// record that does not decrypt). They logged nothing but debug lines, or
/// nothing at all.
#[tokio::test]
async fn tls_timeouts_failures_and_protocol_errors_log_one_line_each() {
    use common::tls::{connect, http1_get, tiny_record_hello, Ca};
    capture_log();
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let tls = megaconn::TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .unwrap()
        .handshake_timeout(Some(Duration::from_millis(200)));
    // The lines name no peer: its server's worker logs them.
    let (builder, workers) = Workers::of(megaconn::Server::builder().workers(1).tls(tls));
    let server = TestServer::start(builder).await;
    let lines = [
        "TLS handshake not done within TlsConfig::handshake_timeout; closing the connection suppressed=0",
        "TLS handshake failed; closing the connection suppressed=0",
        "TLS handshake over the TLS record buffer's limit; closing the connection suppressed=0",
        "TLS peer broke the protocol; closing it suppressed=0",
    ];
    let mut got = Vec::new();
    // Silent until the timeout.
    let mut silent = server.connect().await;
    assert_eq!(read_to_close(&mut silent).await, b"");
    got.push(wait_for_line(Whose::Server(&workers), lines[0]).await);
    // Bytes that are neither a TLS record nor plain HTTP (plain HTTP gets
    // its own 400 and line: tests/lifecycle/tls_lines.rs).
    let mut plain = server.connect().await;
    plain
        .write_all(b"\x01\x02\x03 not TLS\r\n\r\n")
        .await
        .unwrap();
    read_to_close(&mut plain).await;
    got.push(wait_for_line(Whose::Server(&workers), lines[1]).await);
    // 64 KiB of 1-byte records.
    let mut tiny = server.connect().await;
    tiny.write_all(&tiny_record_hello(64 * 1024)).await.unwrap();
    read_to_close(&mut tiny).await;
    got.push(wait_for_line(Whose::Server(&workers), lines[2]).await);
    // After the handshake, a record whose tag does not check.
    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    let (tcp, session) = tls.get_mut();
    let mut record = common::tls::sealed_get(session);
    *record.last_mut().unwrap() ^= 1;
    tcp.write_all(&record).await.unwrap();
    got.push(wait_for_line(Whose::Server(&workers), lines[3]).await);
    // Each whole, the first of its kind on the worker.
    assert_eq!(got, lines);
    drop(tls);
    server.stop().await;
}
