//! megaconn embedded in an application, continued (session 55): what a
//! team running megaconn inside its service, or two servers in one
//! process, still missed after session 54 (`embed54.rs`):
//!
//! - a handler's `tokio::task::spawn_blocking` logs to the subscriber the
//!   server was started under, as the handler itself does
//!   (`server/log_scope.rs`: the worker runtimes' blocking threads);
//! - a named server ([`megaconn::Builder::name`]) names its threads, and
//!   every line its threads log carries `server=NAME`;
//! - two named servers share one `prometheus-client` registry, each family
//!   once, a series per server; two that cannot be told apart are
//!   refused, not written as a scrape that Prometheus rejects.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use megaconn::metrics::prometheus_client::encoding::text::encode;
use megaconn::metrics::prometheus_client::registry::Registry;
use megaconn::Server;
use tokio::io::AsyncWriteExt;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::common::{read_response, AppServer, SAFETY};
use crate::embed54::Written;

/// Waits (bounded) until `written` has a line containing `needle`: a
/// line is written after what it reports is counted, so the count is no
/// signal for it.
async fn line_with(written: &Written, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + SAFETY;
    loop {
        if let Some(line) = written.text().lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line with {needle:?} in:\n{}",
            written.text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A `fmt` subscriber writing to a fresh [`Written`], scoped to this
/// thread (the binary has no global subscriber) until the guards drop. A
/// second subscriber is kept alive beside it: while a process has one
/// subscriber, `tracing` asks the thread that first hits a call site
/// whether it is enabled, and a thread without ours would turn it off for
/// every thread (`embed54.rs`).
fn capture() -> (
    Written,
    tracing::subscriber::DefaultGuard,
    tracing::Dispatch,
) {
    let written = Written::default();
    let writer = written.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let scoped = tracing::subscriber::set_default(subscriber);
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    (written, scoped, second)
}

/// One `GET path` on a fresh connection; its status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// A handler's `spawn_blocking` closure logs to the subscriber the server
/// was started under, as the handler does: the worker runtimes' blocking
/// threads carry it. (Before: the line went to the global subscriber, here
/// none, and the test's capture missed it.)
#[tokio::test]
async fn a_handlers_spawn_blocking_logs_to_the_callers_scoped_subscriber() {
    let (written, _scoped, _second) = capture();
    // A call site of its own (see `capture`).
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            tokio::task::spawn_blocking(|| {
                tracing::info!(target: "app55", "the blocking job ran");
            })
            .await
            .unwrap();
            "done"
        }),
    );
    let server = AppServer::one_worker(Server::builder(), app);
    assert_eq!(get(server.addr(), "/").await, (200, "done".into()));
    server.summary().await;
    let text = written.text();
    assert!(
        text.contains("the blocking job ran"),
        "a handler's spawn_blocking line missed the subscriber the server was started under:\n{text}"
    );
}

/// The threads of a server named `p55`, and the lines they log: a worker
/// `p55-worker-0`, its blocking threads `p55-blocking-0`, its watchdog
/// `p55-stall-watch`; the access line, the handler's line, the blocking
/// closure's and the watchdog's stall line each inside
/// `megaconn{server=p55}`. (On the test's one thread: the server starts
/// where the subscriber is scoped.)
#[tokio::test]
async fn a_named_servers_threads_and_lines_carry_its_name() {
    let (written, _scoped, _second) = capture();
    // Releases the handler that blocks its worker, once its stall is told.
    let (release, blocked) = mpsc::channel::<()>();
    let blocked = Arc::new(Mutex::new(Some(blocked)));
    let app = axum::Router::new()
        .route(
            "/who",
            axum::routing::get(|| async {
                tracing::info!(target: "app55", "the named server's handler ran");
                let worker = std::thread::current().name().unwrap_or("").to_owned();
                let blocking = tokio::task::spawn_blocking(|| {
                    tracing::info!(target: "app55", "the named server's blocking job ran");
                    std::thread::current().name().unwrap_or("").to_owned()
                })
                .await
                .unwrap();
                format!("{worker} {blocking}")
            }),
        )
        .route(
            "/block",
            axum::routing::get(move || {
                let blocked = blocked.lock().unwrap().take();
                async move {
                    // Blocks the worker's thread until the test saw the
                    // stall's line: no timing involved.
                    let _ = blocked.expect("one /block").recv_timeout(SAFETY);
                    "released"
                }
            }),
        );
    let server = AppServer::one_worker(
        Server::builder()
            .name("p55")
            .access_log(true)
            .stall_threshold(Some(Duration::from_millis(100))),
        app,
    );
    assert_eq!(server.handle.name(), Some("p55"));
    assert_eq!(
        get(server.addr(), "/who").await,
        (200, "p55-worker-0 p55-blocking-0".into())
    );
    let blocking = tokio::spawn(get(server.addr(), "/block"));
    let stall = line_with(&written, "has not come back to its event loop").await;
    // The watchdog, by the name the kernel keeps (its first 15 bytes). Read
    // only once its line shows it has run: a thread names itself when it
    // starts, so before that it shows its parent's name.
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .collect();
    assert!(
        threads.iter().any(|t| t == "p55-stall-watch"),
        "{threads:?}"
    );
    release.send(()).unwrap();
    assert_eq!(blocking.await.unwrap(), (200, "released".into()));
    server.summary().await;
    let text = written.text();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    for line in [
        line("the named server's handler ran"),
        line("the named server's blocking job ran"),
        line("megaconn::access"),
        stall,
    ] {
        assert!(
            line.contains("megaconn{server=p55}"),
            "a line of the named server without its name: {line}"
        );
    }
}

/// Counts the name's spans made and entered (`megaconn`).
#[derive(Clone, Default)]
struct SpanCount {
    made: Arc<AtomicUsize>,
    entered: Arc<AtomicUsize>,
}

impl<S> Layer<S> for SpanCount
where
    S: tracing::Subscriber + for<'l> tracing_subscriber::registry::LookupSpan<'l>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "megaconn" {
            self.made.fetch_add(1, SeqCst);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if ctx.metadata(id).is_some_and(|m| m.name() == "megaconn") {
            self.entered.fetch_add(1, SeqCst);
        }
    }
}

/// The name costs nothing per request: its span is made and entered once
/// on each of the server's threads (here its worker and its watchdog), not
/// per request or connection: 50 requests, each on a connection of its
/// own, leave the count at 2 at most.
#[tokio::test]
async fn the_names_span_is_entered_once_per_thread_not_per_request() {
    let count = SpanCount::default();
    let _scoped =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(count.clone()));
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let server = hello(Some("n55"));
    for _ in 0..50 {
        assert_eq!(get(server.addr(), "/").await, (200, "hi".into()));
    }
    server.summary().await;
    let (made, entered) = (count.made.load(SeqCst), count.entered.load(SeqCst));
    // The worker's for sure (it served); the watchdog's once its thread
    // has run (no signal says when: at most, then).
    assert!(
        (1..=2).contains(&made) && entered == made,
        "the name's span, made {made} and entered {entered} times for 50 requests: \
         once on the worker and once on the watchdog at most"
    );
}

/// The application's `/metrics` body: its registry, encoded.
fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

/// A server of one worker answering `hi`, named `name` if given.
fn hello(name: Option<&str>) -> AppServer {
    let builder = match name {
        Some(name) => Server::builder().name(name),
        None => Server::builder(),
    };
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    AppServer::one_worker(builder, app)
}

/// Two named servers in one registry: one exposition that a strict reader
/// takes (each family's `# HELP` and `# TYPE` once: a second one fails the
/// scrape), every series labelled with its server, read at each scrape.
#[tokio::test]
async fn two_named_servers_share_one_registry() {
    let (public, admin) = (hello(Some("public55")), hello(Some("admin55")));
    let mut registry = Registry::with_prefix("app");
    public.handle.register_metrics(&mut registry).unwrap();
    admin.handle.register_metrics(&mut registry).unwrap();
    for _ in 0..2 {
        assert_eq!(get(public.addr(), "/").await.0, 200);
    }
    // One, and serving before its shutdown (see below).
    assert_eq!(get(admin.addr(), "/").await.0, 200);
    let text = scrape(&registry);
    for family in text.lines().filter(|l| l.starts_with("# ")) {
        assert_eq!(
            text.lines().filter(|l| *l == family).count(),
            1,
            "{family} twice in:\n{text}"
        );
    }
    assert!(
        text.contains(r#"app_megaconn_connections_accepted_total{server="public55"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"app_megaconn_connections_accepted_total{server="admin55"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"app_megaconn_requests_total{server="public55",method="GET",status_class="2xx"} 2"#
        ),
        "{text}"
    );
    // No series without its server (a histogram's bucket writes `le`
    // first).
    for sample in text.lines().filter(|l| l.starts_with("app_megaconn_")) {
        let labels = sample.split_once('{').map(|(_, l)| l).unwrap_or("");
        assert!(
            labels.starts_with("server=\"") || labels.contains(",server=\""),
            "{sample}"
        );
    }
    // The server's own exposition stays as it was: no label.
    assert!(public
        .handle
        .render_metrics()
        .contains("megaconn_connections_accepted_total 2"));
    public.summary().await;
    admin.summary().await;
}

/// Two servers that a registry's series could not tell apart are refused
/// (`Error::Config`, naming `Builder::name`) and the registry keeps the
/// first's series only; each alone in a registry of its own needs no name.
#[tokio::test]
async fn servers_a_registry_cannot_tell_apart_are_refused() {
    let (a, b) = (hello(None), hello(None));
    let (named, twin) = (hello(Some("twin55")), hello(Some("twin55")));
    // Each serving before anything else (before session 56, a serve first
    // polled after its handle's shutdown could fail its start with
    // `WorkerEnded`: `shutdown_first56.rs`).
    for server in [&a, &b, &named, &twin] {
        assert_eq!(get(server.addr(), "/").await.0, 200);
    }
    let mut registry = Registry::default();
    a.handle.register_metrics(&mut registry).unwrap();
    let refused = b.handle.register_metrics(&mut registry).unwrap_err();
    assert!(
        matches!(&refused, megaconn::Error::Config(why) if why.contains("Builder::name")),
        "{refused}"
    );
    let text = scrape(&registry);
    assert_eq!(
        text.matches("# TYPE megaconn_connections_open gauge")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("megaconn_connections_open 0"), "{text}");
    // A named one beside an unnamed one, and one name twice: refused too.
    assert!(named.handle.register_metrics(&mut registry).is_err());
    let mut named_only = Registry::default();
    named.handle.register_metrics(&mut named_only).unwrap();
    assert!(twin.handle.register_metrics(&mut named_only).is_err());
    // Each in its own registry: fine, as before names.
    let mut own = Registry::default();
    b.handle.register_metrics(&mut own).unwrap();
    assert!(scrape(&own).contains("megaconn_connections_open 0"));
    // A name that cannot be a thread's name, a label and a log field.
    let bad = Server::bind("127.0.0.1:0".parse().unwrap())
        .name("not \"this\"")
        .listen();
    assert!(matches!(bad, Err(megaconn::Error::Config(_))), "{bad:?}");
    for server in [a, b, named, twin] {
        server.summary().await;
    }
}

/// The OpenTelemetry export thread is megaconn's too: its line about a
/// failed export goes to the subscriber scoped where the export was
/// started (`Tracing::otlp`), not only to a global one. A collector that
/// refuses connections: the first failure's line.
#[cfg(feature = "otel")]
#[tokio::test]
async fn the_export_threads_lines_go_to_the_callers_scoped_subscriber() {
    use megaconn::otel::{OtlpConfig, Protocol, Tracing};
    let (written, _scoped, _second) = capture();
    // A port nobody listens on: each export is refused at once.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", refused.local_addr().unwrap());
    drop(refused);
    let tracing = Tracing::otlp(
        OtlpConfig::default()
            .endpoint(endpoint)
            .protocol(Protocol::Grpc)
            .batch_delay(Duration::from_millis(5)),
    )
    .expect("tracing");
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    let server = AppServer::one_worker(Server::builder().tracing(tracing.clone()), app);
    assert_eq!(get(server.addr(), "/").await, (200, "hi".into()));
    line_with(&written, "span export failed").await;
    server.summary().await;
    tokio::task::spawn_blocking(move || tracing.shutdown())
        .await
        .unwrap();
}
