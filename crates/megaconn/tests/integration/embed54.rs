//! megaconn embedded in an application that has its own logging and its
//! own metrics (session 54's review, as a team replacing `axum::serve`):
//!
//! - a `tracing` subscriber the application scoped to its thread (a test's
//!   `tracing::subscriber::set_default`) hears megaconn's lines and its
//!   handlers' lines, as it does under `axum::serve` in a `#[tokio::test]`,
//!   though they run on megaconn's worker threads (`server/log_scope.rs`);
//! - megaconn's series go into the application's own `prometheus-client`
//!   registry ([`ServerHandle::register_metrics`]), read at each scrape,
//!   served on the application's `/metrics` with its own series, one
//!   exposition (one `# EOF`).

use std::sync::{Arc, Mutex};

use megaconn::metrics::prometheus_client::encoding::text::encode;
use megaconn::metrics::prometheus_client::metrics::counter::Counter;
use megaconn::metrics::prometheus_client::registry::Registry;
use megaconn::{Server, ServerHandle};
use tokio::io::AsyncWriteExt;

use crate::common::{read_response, shut_down, AppServer};

/// What a test's own subscriber wrote: the lines of `fmt`, shared.
#[derive(Clone, Default)]
pub(crate) struct Written(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Written {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Written {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// An axum app that answers `hi`.
fn hello_app() -> axum::Router {
    axum::Router::new().route("/", axum::routing::get(|| async { "hi" }))
}

/// One `GET /` on a fresh connection; its status.
async fn get(addr: std::net::SocketAddr) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s).await.status
}

#[tokio::test]
async fn megaconn_logs_to_the_callers_scoped_subscriber() {
    let written = Written::default();
    let writer = written.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This thread's only (the binary has no global subscriber): other
    // tests' servers, started on their own threads, do not write here.
    let _scoped = tracing::subscriber::set_default(subscriber);
    // A second subscriber alive meanwhile, so that a call site first hit
    // on a thread without ours is asked of both (see below) and not of
    // that thread alone: this test stays sound should another test of
    // this binary log access lines too.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    // Its handler logs at a call site of its own, and only this test logs
    // access lines: `tracing` caches whether a call site is enabled when it
    // is first hit, and while one subscriber exists in the process it asks
    // the hitting thread's own, so a call site another test's server hit
    // first (no subscriber on its thread) would stay off here too.
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            tracing::info!(target: "app", "the app's handler ran");
            "hi"
        }),
    );
    let server = AppServer::one_worker(Server::builder().access_log(true), app);
    assert_eq!(get(server.addr()).await, 200);
    // Its lines are all written once its workers have ended.
    server.summary().await;
    let text = written.text();
    assert!(
        text.contains("the app's handler ran"),
        "the handler's line, logged on a worker thread, missed the subscriber the server was started under:\n{text}"
    );
    assert!(
        text.contains("megaconn::access") && text.contains("status=200"),
        "megaconn's access line missed the subscriber the server was started under:\n{text}"
    );
}

/// The application's `/metrics` body: its registry, encoded.
fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

/// A server of one worker serving `hello_app`, and its handle.
fn metrics_server() -> (AppServer, ServerHandle) {
    let server = AppServer::one_worker(Server::builder(), hello_app());
    let handle = server.handle.clone();
    (server, handle)
}

#[tokio::test]
async fn an_apps_registry_serves_megaconns_series_read_at_each_scrape() {
    let (server, handle) = metrics_server();
    let mut registry = Registry::default();
    let jobs = Counter::<u64>::default();
    registry.register("app_jobs", "The application's own counter.", jobs.clone());
    handle.register_metrics(&mut registry).unwrap();
    jobs.inc();

    let before = scrape(&registry);
    assert!(
        before.contains("megaconn_connections_accepted_total 0"),
        "{before}"
    );
    assert_eq!(get(server.addr()).await, 200);
    // Read from the server at the scrape, not when registered.
    let after = scrape(&registry);
    assert!(after.contains("app_jobs_total 1"), "{after}");
    assert!(
        after.contains("megaconn_connections_accepted_total 1"),
        "{after}"
    );
    assert!(
        after.contains(r#"megaconn_requests_total{method="GET",status_class="2xx"} 1"#),
        "{after}"
    );
    // One exposition: one `# EOF`, and not the process series an
    // application has its own of (the same name twice is refused).
    assert_eq!(after.matches("# EOF").count(), 1, "{after}");
    assert!(!after.contains("process_open_fds"), "{after}");
    assert!(!after.contains("megaconn_build_info"), "{after}");
    // The same families as the server's own exposition, none left out.
    let own = handle.render_metrics();
    for family in own
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE megaconn_"))
        .filter(|l| !l.starts_with("build_info"))
    {
        assert!(
            after.contains(&format!("# TYPE megaconn_{family}")),
            "missing {family}"
        );
    }
    server.summary().await;
}

#[tokio::test]
async fn under_an_apps_prefix_the_names_carry_it() {
    let (server, handle) = metrics_server();
    let mut registry = Registry::with_prefix("app");
    handle.register_metrics(&mut registry).unwrap();
    assert_eq!(get(server.addr()).await, 200);
    let text = scrape(&registry);
    assert!(
        text.contains(r#"app_megaconn_requests_total{method="GET",status_class="2xx"} 1"#),
        "{text}"
    );
    shut_down(&handle, server.task).await.unwrap();
}
