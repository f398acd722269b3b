//! megaconn in place of `axum::serve` inside an existing service: the
//! application keeps its multi-thread `#[tokio::main]` runtime, its JSON
//! logs, its prometheus-client registry (one `/metrics` with megaconn's
//! series in it), a background queue consumer and its own order of
//! shutdown. Two servers: the public API and an internal one for
//! `/metrics`, each named (`Builder::name`) so that their threads, log
//! lines and series tell them apart. README: "Recipe: embedding megaconn in
//! an existing service".
//!
//! ```text
//! cargo run --release --example embed_in_app            # port 0: prints the ports it got
//! PORT=3000 ADMIN_PORT=9100 cargo run --release --example embed_in_app
//! curl -X POST http://127.0.0.1:PORT/jobs/21            # 42, via the consumer
//! curl http://127.0.0.1:ADMIN_PORT/metrics              # app_jobs_total, app_megaconn_*{server=...}
//! kill -TERM <pid>                                      # drains HTTP, then stops the consumer
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

/// A job for the queue consumer, and where its answer goes.
struct Job {
    n: u64,
    reply: oneshot::Sender<u64>,
}

/// What the handlers share. The handlers run on megaconn's worker threads,
/// the consumer on the application's runtime: a channel (any tokio sync
/// primitive) works across the two, as it does across threads.
struct AppState {
    jobs: mpsc::Sender<Job>,
    jobs_sent: Counter,
}

async fn enqueue(State(app): State<Arc<AppState>>, Path(n): Path<u64>) -> impl IntoResponse {
    let (reply, answer) = oneshot::channel();
    if app.jobs.send(Job { n, reply }).await.is_err() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "stopping\n".to_owned(),
        );
    }
    app.jobs_sent.inc();
    match answer.await {
        Ok(v) => (axum::http::StatusCode::OK, format!("{v}\n")),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "stopping\n".to_owned(),
        ),
    }
}

/// The application's `/metrics`: its registry, both servers' series in it.
async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    (
        [(CONTENT_TYPE, megaconn::metrics::OPENMETRICS_CONTENT_TYPE)],
        text,
    )
}

/// The background consumer, on the application's runtime, until `stop`.
async fn consume(mut jobs: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => { let _ = job.reply.send(job.n * 2); }
                None => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    tracing::info!("queue consumer stopped");
}

// The application's runtime, multi-thread as it was: megaconn's workers are
// threads of their own beside it (`workers` below), not tasks on it.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The application's subscriber: megaconn's lines (target `megaconn::…`,
    // fields such as `peer`, `conn`, `status`) come out as JSON with the
    // rest. `h2=error`: the h2 crate logs some of a client's abuse itself.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=error".into()),
        )
        .init();

    let (stop_consumer, consumer_stop) = watch::channel(false);
    let (jobs, queue) = mpsc::channel(1024);
    let consumer = tokio::spawn(consume(queue, consumer_stop));

    // Port 0 picks a free port (tests start many such servers in parallel);
    // `local_addr()` says which. A socket bound elsewhere goes in with
    // `Server::builder().listener(std_listener)?` (a tokio listener:
    // `.into_std()?` first).
    let port: u16 = std::env::var("PORT").ok().map_or(Ok(0), |p| p.parse())?;
    let server = megaconn::Server::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        // Its threads are `public-worker-N`, its lines carry
        // `server=public`, its series `server="public"`.
        .name("public")
        // Share the cores with the application's own runtime.
        .workers(2)
        .shutdown_timeout(Duration::from_secs(10))
        // `listen` binds now: a port in use is `Error::AddrInUse` here,
        // before anything else starts.
        .listen()?;
    let addr = server.local_addr();
    // The internal server, for `/metrics` only: one worker, its own port.
    let admin_port: u16 = std::env::var("ADMIN_PORT")
        .ok()
        .map_or(Ok(0), |p| p.parse())?;
    let admin = megaconn::Server::bind(SocketAddr::from(([127, 0, 0, 1], admin_port)))
        .name("admin")
        .workers(1)
        .listen()?;
    let admin_addr = admin.local_addr();

    // One registry, one `/metrics`: both servers' series, read from them
    // at each scrape, each family once with a series per server (two
    // unnamed servers in one registry would be refused: `Error::Config`).
    let mut registry = Registry::with_prefix("app");
    let jobs_sent = Counter::default();
    registry.register("jobs", "Jobs handed to the consumer", jobs_sent.clone());
    server.handle().register_metrics(&mut registry)?;
    admin.handle().register_metrics(&mut registry)?;

    let state = Arc::new(AppState { jobs, jobs_sent });
    let admin_app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry));
    let app = Router::new()
        .route("/jobs/{n}", post(enqueue))
        .route(
            "/who",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
        )
        .with_state(state);

    // `start` makes the workers (what can fail, fails here); `run` serves.
    let started = server.start(app.into_make_service_with_connect_info::<SocketAddr>())?;
    let admin = admin.start(admin_app)?;
    let admin_handle = admin.handle();
    let admin_served = tokio::spawn(admin.run());
    tracing::info!(%addr, %admin_addr, "serving");
    println!("listening on http://{addr}, /metrics on http://{admin_addr}");

    // The application's own shutdown order: SIGTERM or Ctrl-C stops HTTP
    // first (megaconn drains: no new connections, in-flight requests
    // finish), then the consumer, then the process. (Here the consumer's
    // queue closes by itself at the end of the drain: its sender is in the
    // app's state, which goes with megaconn's workers. The watch stops a
    // consumer that has other producers.) A future of your own (a
    // CancellationToken's `cancelled_owned()`, your SIGTERM handler's
    // branch) does instead of `shutdown_signal()`.
    let summary = started
        .run_with_shutdown(megaconn::shutdown_signal()?)
        .await;
    tracing::info!(
        finished = summary.finished,
        forced = summary.forced,
        requests = summary.requests,
        "HTTP drained"
    );
    // `/metrics` answers until the public server has drained.
    admin_handle.shutdown();
    admin_served.await?;
    stop_consumer.send_replace(true);
    consumer.await?;
    Ok(())
}
