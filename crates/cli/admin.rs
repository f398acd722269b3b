//! The admin listener of `megaconn serve`: a second, small megaconn server (one
//! worker) beside the main one, for operators and scrapers.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `ok`: the process is alive; what a liveness probe asks (the main listener's `/healthz` cannot answer once the server holds `max_connections`, and a probe there would restart a full, healthy pod) |
//! | `GET /metrics` | OpenMetrics text of the main server ([`megaconn::metrics`]), served as `application/openmetrics-text` |
//! | `GET /debug/runtime` | JSON: per-worker connections, idle, buffers, requests |
//! | `GET /debug/pprof/profile?seconds=N` | CPU profile of the whole process for N s (1..=60, default 30), gzipped pprof protobuf; `&format=svg` for a flame graph; one at a time (409 while one runs) |
//! | `POST /publish?topic=T` | the body (at most 64 KiB) to topic `T`'s subscribers; `topic=*`: to every message connection. 503 when no worker took it, saying why (their hub queues are full, or the server is not serving: not yet, or no more) |
//! | `POST /broadcast` | the body to every message connection (503 as for `/publish`) |
//!
//! Under `--processes` the supervisor runs the admin listener (worker processes
//! have none): `/metrics` there gives whole-server totals added up from every
//! worker process (see `shared_stats.rs`), `/debug/runtime` one line per worker
//! process; connection lists and profiles are per process and not served.
//! Its `/publish` and `/broadcast` reach every worker process (fanout.rs) and
//! answer how many worker processes the message was queued for: a drop at a
//! worker's full hub queue happens later, in that process, where it is
//! counted (`megaconn_limit_hits_total{limit="hub_queue"}`) and logged.
//!
//! It answers while the main server is out of file descriptors: the main
//! listeners' accepts stop `fd_reserve` (32) short of the open-file limit,
//! and this server's may use those (`Builder::fd_reserve`).
//!
//! It listens on 127.0.0.1:9090 unless told otherwise (`--admin ADDR`,
//! `admin = "ADDR"`, `off` disables) and stops with the main server. Keep it
//! on a loopback or otherwise private address: it has no authentication.
//! Requests a browser makes for another site (a foreign `Origin`, or a
//! `Host` that is a DNS name other than localhost) are refused with 403
//! (`admin_guard.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use megaconn::{Body, ServerHandle};

use crate::admin_guard::SameSite;
use crate::fanout::{self, Fanout, Publisher, Topic};
use crate::shared_stats::SharedStats;

/// The admin address when none is configured.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

/// Longest CPU profile allowed, in seconds.
const MAX_PROFILE_SECONDS: u64 = 60;

/// CPU profile length when `seconds` is not given (as Go's `net/http/pprof`).
const DEFAULT_PROFILE_SECONDS: u64 = 30;

/// Sampling frequency of CPU profiles, in Hz (99, not 100, to avoid lockstep
/// with periodic work).
const PROFILE_HZ: i32 = 99;

/// Where the admin listener goes: an address, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddr {
    /// No admin listener.
    Off,
    /// Listen here.
    At(SocketAddr),
}

/// Parses `--admin`: an address, or `off`.
pub fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminAddr::Off);
    }
    s.parse()
        .map(AdminAddr::At)
        .map_err(|_| format!("invalid admin address {s:?} (want IP:PORT or off)"))
}

/// The address the admin listener binds for `setting`: [`DEFAULT_ADMIN`]
/// when none is set; `None` when it is off.
pub fn address(setting: Option<AdminAddr>) -> Option<SocketAddr> {
    match setting {
        Some(AdminAddr::Off) => None,
        Some(AdminAddr::At(addr)) => Some(addr),
        None => Some(DEFAULT_ADMIN.parse().expect("valid default address")),
    }
}

/// A running admin server; dropping it shuts the admin server down.
#[derive(Debug)]
pub struct Admin {
    /// The admin server's handle (an upgrade hands its socket over too).
    pub handle: ServerHandle,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Whose figures the admin listener serves.
#[derive(Debug, Clone)]
pub enum Source {
    /// The server of this process, and how to publish to its connections.
    Server(ServerHandle, Publisher),
    /// A supervisor's worker processes, through the shared counter block
    /// and their publish channels, and their pids (for `process_*`).
    Processes(
        Arc<SharedStats>,
        Arc<Fanout>,
        Arc<crate::supervisor::WorkerPids>,
    ),
}

/// Starts the admin server for `source` on the current runtime and prints its
/// address (`megaconn admin on http://ADDR`). `None` means the default
/// address: if that is taken, serving goes on without the admin listener (a
/// warning says so); an address asked for that cannot be bound is an error.
pub fn start(setting: Option<AdminAddr>, source: Source) -> anyhow::Result<Option<Admin>> {
    Ok(bind(setting, Vec::new())?.map(|bound| {
        say_address(bound.local_addr());
        bound.serve(source)
    }))
}

/// Prints the admin server's address: `megaconn admin on http://ADDR`.
pub fn say_address(addr: std::net::SocketAddr) {
    crate::say!("megaconn admin on http://{addr}");
}

/// The admin server bound, as [`start`] does, but not serving yet, nor its
/// address printed ([`say_address`]): nothing is accepted until
/// [`Bound::serve`]. `adopt`:
/// the admin listening socket of the process this one takes over from
/// (`serve --upgrade`), served when it is bound to the admin address. A
/// new process binds it before it tells the old one it is ready, and
/// serves it only after (see `upgrade.rs`).
pub fn bind(
    setting: Option<AdminAddr>,
    adopt: Vec<std::net::TcpListener>,
) -> anyhow::Result<Option<Bound>> {
    let explicit = setting.is_some();
    let Some(addr) = address(setting) else {
        return Ok(None);
    };
    let bound = megaconn::Server::bind(addr)
        .adopt_listeners(adopt)
        .workers(1)
        .max_connections(64)
        // The descriptors the main server's accepts leave free are for this
        // one: `/metrics` answers while the main listeners are out of
        // descriptors (`EMFILE`), which is when the operator looks.
        .fd_reserve(0)
        .idle_timeout(Some(Duration::from_secs(30)))
        .shutdown_timeout(Duration::from_secs(1))
        // Profiles take up to a minute to answer; their clients wait.
        .write_timeout(Some(Duration::from_secs(10)))
        .listen();
    let server = match bound {
        Ok(server) => server,
        Err(e) if !explicit => {
            tracing::warn!(%addr, error = %e, "admin listener not started (set --admin ADDR or --admin off)");
            return Ok(None);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot start the admin listener")),
    };
    Ok(Some(Bound(server)))
}

/// An admin server bound, not serving yet ([`bind`]); dropping it closes
/// its listening sockets (this process's copies) unserved.
#[derive(Debug)]
pub struct Bound(megaconn::Server);

impl Bound {
    /// The admin server's handle (an upgrade hands its socket over too).
    pub fn handle(&self) -> ServerHandle {
        self.0.handle()
    }

    /// Its address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.0.local_addr()
    }

    /// Serves `source` on the current runtime from now on: [`start`](Bound::start)
    /// then [`Started::run`]. A start that fails is logged, and the
    /// process serves on without its admin server.
    pub fn serve(self, source: Source) -> Admin {
        let handle = self.handle();
        match logged(self.start(source)) {
            Some(started) => started.run(),
            None => Admin { handle },
        }
    }

    /// Makes the admin server's worker (runtime and thread) for `source`,
    /// accepting nothing until [`Started::run`]: a new process of an
    /// upgrade starts it before it tells the old one it is ready, so that
    /// nothing can fail after (see `upgrade.rs`).
    pub fn start(self, source: Source) -> Result<Started, megaconn::Error> {
        let started = Instant::now();
        let server = self.0;
        let own = server.local_addr();
        let started = match source {
            Source::Server(main, publisher) => server.start(SameSite::new(
                AdminService {
                    main,
                    publisher,
                    started,
                },
                own,
            ))?,
            Source::Processes(shared, fanout, pids) => server.start(SameSite::new(
                ProcessesAdmin {
                    shared,
                    fanout,
                    pids,
                },
                own,
            ))?,
        };
        Ok(Started(started))
    }
}

/// The admin server's start, or `None` with its failure logged: the
/// process serves on without its admin server.
pub fn logged(start: Result<Started, megaconn::Error>) -> Option<Started> {
    start
        .inspect_err(|e| tracing::error!(error = %e, "admin server failed"))
        .ok()
}

/// An admin server started, not accepting yet ([`Bound::start`]);
/// dropping it stops it unserved.
#[derive(Debug)]
pub struct Started(megaconn::Started);

impl Started {
    /// Serves on the current runtime from now on. Cannot fail.
    pub fn run(self) -> Admin {
        let admin = Admin {
            handle: self.0.handle(),
        };
        tokio::spawn(self.0.run());
        admin
    }
}

/// The supervisor's admin routes: whole-server totals.
#[derive(Debug, Clone)]
struct ProcessesAdmin {
    shared: Arc<SharedStats>,
    fanout: Arc<Fanout>,
    /// Its worker processes now: `process_*` CPU and memory are summed over
    /// them and the supervisor, read at the scrape (descriptors: the
    /// supervisor's own, `ProcessCollector::summed`).
    pids: Arc<crate::supervisor::WorkerPids>,
}

impl tower::Service<Request<Body>> for ProcessesAdmin {
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = AdminFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> AdminFuture {
        let this = self.clone();
        Box::pin(async move {
            if is_publish(&req) {
                let fanout = this.fanout.clone();
                return Ok(publish(req, move |topic, payload| {
                    match fanout.publish(topic, &payload)? {
                        0 => Err(fanout::PublishError::NoProcess),
                        n => Ok(format!("published to {n} worker processes\n")),
                    }
                })
                .await);
            }
            Ok(this.route(&req))
        })
    }
}

impl ProcessesAdmin {
    fn route(&self, req: &Request<Body>) -> Response<AdminBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/" => text(
                StatusCode::OK,
                "megaconn admin (supervisor: totals of every worker process)\n\n/healthz\n/metrics\n/debug/runtime\nPOST /publish?topic=T (topic=*: everyone)\nPOST /broadcast\n",
            ),
            "/healthz" => healthz(),
            "/metrics" => metrics(self.shared.render_prometheus_with(
                self.fanout.counts(),
                megaconn::metrics::ProcessCollector::summed(self.pids.all()),
            )),
            "/debug/runtime" => {
                let t = self.shared.total();
                let body = serde_json::json!({
                    "connections_open": t.connections_open,
                    "connections_idle": t.connections_idle,
                    "connections_parked": t.connections_parked,
                    "accepted": t.accepted,
                    "requests": t.requests,
                    "process_connections": t.connections_per_worker,
                });
                respond(StatusCode::OK, "application/json", body.to_string())
            }
            "/debug/connections" | "/debug/pprof/profile" => text(
                StatusCode::NOT_IMPLEMENTED,
                "connection lists and profiles are per process, and worker processes of \
                 --processes have no admin listener: run one process (raise the open-file \
                 limit instead) to use them\n",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// The admin routes.
#[derive(Debug, Clone)]
struct AdminService {
    main: ServerHandle,
    publisher: Publisher,
    started: Instant,
}

/// The admin routes' response body.
pub type AdminBody = Full<Bytes>;
/// The admin routes' response future.
pub type AdminFuture = Pin<Box<dyn Future<Output = Result<Response<AdminBody>, Infallible>>>>;

impl tower::Service<Request<Body>> for AdminService {
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = AdminFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> AdminFuture {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
}

impl AdminService {
    async fn route(&self, req: Request<Body>) -> Response<AdminBody> {
        if is_publish(&req) {
            let publisher = self.publisher.clone();
            return publish(req, move |topic, payload| {
                publisher.publish(topic, payload)?;
                Ok("published\n".into())
            })
            .await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        let query = req.uri().query().unwrap_or("");
        match req.uri().path() {
            "/" => text(
                StatusCode::OK,
                "megaconn admin\n\n/healthz\n/metrics\n/debug/runtime\n/debug/connections?offset=0&limit=100[&format=text]\n/debug/pprof/profile?seconds=30[&format=svg]\nPOST /publish?topic=T (topic=*: everyone)\nPOST /broadcast\n",
            ),
            "/healthz" => healthz(),
            "/metrics" => metrics(self.main.render_metrics()),
            "/debug/runtime" => self.runtime(),
            "/debug/connections" => self.connections(query),
            "/debug/pprof/profile" => profile(query).await,
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Live connections, paginated (at most [`MAX_CONNECTIONS_PAGE`] a page),
    /// as JSON or (`format=text`) one line each.
    fn connections(&self, query: &str) -> Response<AdminBody> {
        if !self.main.tracks_connections() {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "connection tracking is off: start megaconn serve with --debug-connections\n",
            );
        }
        let mut offset = 0;
        let mut limit = DEFAULT_CONNECTIONS_PAGE;
        let mut as_text = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "offset" => offset = value.parse().unwrap_or(0),
                "limit" => limit = value.parse().unwrap_or(DEFAULT_CONNECTIONS_PAGE),
                "format" => as_text = value == "text",
                _ => {}
            }
        }
        let (total, page) = self
            .main
            .connections(offset, limit.min(MAX_CONNECTIONS_PAGE));
        if as_text {
            let mut out = format!(
                "{total} connections; showing {} from {offset}\n",
                page.len()
            );
            out.push_str("id\tpeer\tworker\tstate\tage_s\trequests\n");
            for c in &page {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{:.1}\t{}\n",
                    c.id,
                    c.peer,
                    c.worker,
                    c.state.label(),
                    c.age.as_secs_f64(),
                    c.requests
                ));
            }
            return text(StatusCode::OK, out);
        }
        let list: Vec<serde_json::Value> = page
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "peer": c.peer.to_string(),
                    "worker": c.worker,
                    "state": c.state.label(),
                    "age_seconds": c.age.as_secs_f64(),
                    "requests": c.requests,
                })
            })
            .collect();
        let body = serde_json::json!({ "total": total, "offset": offset, "connections": list });
        respond(StatusCode::OK, "application/json", body.to_string())
    }

    fn runtime(&self) -> Response<AdminBody> {
        let s = self.main.stats();
        let workers: Vec<serde_json::Value> = s
            .request_metrics
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                serde_json::json!({
                    "worker": i,
                    "connections_open": w.connections_open,
                    "connections_idle": w.connections_idle,
                    "connections_parked": w.connections_parked,
                    "buffers_checked_out": w.buffers_checked_out,
                    "buffers_pooled": w.buffers_pooled,
                    "requests": w.requests,
                    "requests_in_flight": w.requests_in_flight,
                })
            })
            .collect();
        let body = serde_json::json!({
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "shutting_down": self.main.is_shutting_down(),
            "profiling": PROFILING.load(Ordering::Relaxed),
            "connections_open": s.connections_open,
            "connections_idle": s.connections_idle,
            "connections_parked": s.connections_parked,
            "accepted": s.accepted,
            "requests": s.requests,
            "requests_in_flight": s.request_metrics.in_flight,
            "buffers_checked_out": s.buffers_checked_out,
            "buffers_pooled": s.buffers_pooled,
            "workers": workers,
        });
        let mut text = serde_json::to_string_pretty(&body).expect("JSON of plain values");
        text.push('\n');
        respond(StatusCode::OK, "application/json", text)
    }
}

/// Whether `req` is for the publish routes (`/publish`, `/broadcast`).
fn is_publish(req: &Request<Body>) -> bool {
    matches!(req.uri().path(), "/publish" | "/broadcast")
}

/// `POST /publish?topic=T` (`T` = `*`: everyone) and `POST /broadcast`: reads
/// the body (at most [`fanout::MAX_MESSAGE`] bytes, else 413) and hands it
/// to `send`, whose text is the answer.
///
/// `200` means a worker took the message, not that it could be framed for
/// anyone: framing happens on each worker, per connection, after the hub's
/// call returned (subscribers of one topic may be on framings that differ,
/// and on other processes). What could not be framed is counted in
/// `megaconn_limit_hits_total{limit="push_unframable"}` and logged.
async fn publish(
    req: Request<Body>,
    send: impl FnOnce(Topic<'_>, Bytes) -> Result<String, fanout::PublishError>,
) -> Response<AdminBody> {
    use http_body_util::BodyExt as _;
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let topic = match req.uri().path() {
        "/broadcast" => "*".to_string(),
        _ => {
            let query = req.uri().query().unwrap_or("");
            let topic = query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == "topic")
                .map(|(_, v)| v.to_string());
            match topic.filter(|t| !t.is_empty()) {
                Some(t) => t,
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "say where: /publish?topic=NAME (topic=* for every connection, or POST /broadcast)\n",
                    )
                }
            }
        }
    };
    let limited = http_body_util::Limited::new(req.into_body(), fanout::MAX_MESSAGE);
    let payload = match limited.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a publish body may be at most {} bytes: send less\n",
                    fanout::MAX_MESSAGE
                ),
            )
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}\n"),
            )
        }
    };
    match send(Topic::parse(&topic), payload) {
        Ok(answer) => text(StatusCode::OK, answer),
        Err(
            e @ (fanout::PublishError::TooLarge { .. }
            | fanout::PublishError::NotQueued(megaconn::HubError::TooLarge { .. })),
        ) => text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
        // Nothing wrong with the request: the server cannot take it now.
        Err(e @ (fanout::PublishError::NotQueued(_) | fanout::PublishError::NoProcess)) => {
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// True while a CPU profile runs (the profiler is process-wide: one at a time).
static PROFILING: AtomicBool = AtomicBool::new(false);

/// Holds [`PROFILING`] and releases it when dropped, even if the request is
/// cancelled.
struct ProfilingSlot;

impl ProfilingSlot {
    fn take() -> Option<ProfilingSlot> {
        PROFILING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| ProfilingSlot)
    }
}

impl Drop for ProfilingSlot {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::Release);
    }
}

/// The output of a CPU profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileFormat {
    Pprof,
    Svg,
}

/// `GET /debug/pprof/profile?seconds=N[&format=svg]`.
async fn profile(query: &str) -> Response<AdminBody> {
    let (seconds, format) = match profile_params(query) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let Some(_slot) = ProfilingSlot::take() else {
        return text(
            StatusCode::CONFLICT,
            "a CPU profile is already running; try again when it is done\n",
        );
    };
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(PROFILE_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(g) => g,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the CPU profiler: {e}\n"),
            )
        }
    };
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let report = match guard.report().build() {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot build the profile: {e}\n"),
            )
        }
    };
    drop(guard);
    match format {
        ProfileFormat::Svg => {
            let mut svg = Vec::new();
            match report.flamegraph(&mut svg) {
                // No samples: the process was idle (inferno draws nothing).
                Ok(()) if svg.is_empty() => respond(
                    StatusCode::OK,
                    "image/svg+xml",
                    format!(
                        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
                         <text x=\"10\" y=\"25\">no CPU samples in {seconds} s: the process was idle</text></svg>\n"
                    ),
                ),
                Ok(()) => respond(StatusCode::OK, "image/svg+xml", svg),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot draw the flame graph: {e}\n"),
                ),
            }
        }
        ProfileFormat::Pprof => match encode_pprof(&report) {
            Ok(bytes) => {
                let mut r = respond(StatusCode::OK, "application/octet-stream", bytes);
                r.headers_mut().insert(
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"profile.pb.gz\""),
                );
                r
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the profile: {e}\n"),
            ),
        },
    }
}

/// The profile as `go tool pprof` reads it: gzip-compressed protobuf.
fn encode_pprof(report: &pprof::Report) -> anyhow::Result<Vec<u8>> {
    use pprof::protos::Message as _;
    let profile = report.pprof()?;
    let raw = profile.write_to_bytes()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}

/// Connections listed per `/debug/connections` page by default.
const DEFAULT_CONNECTIONS_PAGE: usize = 100;
/// Most connections listed per page (a page is kept, and rendered, whole;
/// the workers' lists are read a chunk per lock, `ServerHandle::connections`).
const MAX_CONNECTIONS_PAGE: usize = 1000;

/// Reads `seconds` (1..=60, default 30) and `format` (`pprof` or `svg`).
fn profile_params(query: &str) -> Result<(u64, ProfileFormat), String> {
    let mut seconds = DEFAULT_PROFILE_SECONDS;
    let mut format = ProfileFormat::Pprof;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "seconds" => {
                seconds = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_PROFILE_SECONDS).contains(s))
                    .ok_or_else(|| {
                        format!("seconds must be a whole number from 1 to {MAX_PROFILE_SECONDS}\n")
                    })?;
            }
            "format" => {
                format = match value {
                    "pprof" | "proto" => ProfileFormat::Pprof,
                    "svg" | "flamegraph" => ProfileFormat::Svg,
                    _ => return Err("format must be pprof or svg\n".into()),
                }
            }
            _ => {}
        }
    }
    Ok((seconds, format))
}

/// `GET /healthz`: the process answers, so it is alive. On the admin
/// listener, which keeps its own connection limit and file descriptors
/// (`fd_reserve`), it answers while the main listener is full
/// (`max_connections`) or out of descriptors: a liveness probe on the main
/// port failed then, and the kubelet restarted a pod for being busy.
fn healthz() -> Response<AdminBody> {
    text(StatusCode::OK, "ok\n")
}

/// A `/metrics` answer: `body` is OpenMetrics text (prometheus-client's
/// encoding, in either mode), so it is labelled so whatever the scraper's
/// `Accept` says (see [`megaconn::metrics::OPENMETRICS_CONTENT_TYPE`]).
fn metrics(body: String) -> Response<AdminBody> {
    respond(
        StatusCode::OK,
        megaconn::metrics::OPENMETRICS_CONTENT_TYPE,
        body,
    )
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The supervisor's publish that no worker process took (none
    /// attached here; in service, every channel full or closed) is a 503,
    /// not "published to 0 worker processes".
    #[tokio::test]
    async fn a_publish_no_worker_process_took_is_a_503() {
        let mut admin = ProcessesAdmin {
            shared: Arc::new(SharedStats::create(2).unwrap()),
            fanout: Fanout::new(2),
            pids: Arc::default(),
        };
        let req = Request::post("/broadcast").body(Body::empty()).unwrap();
        let answer = tower::Service::call(&mut admin, req).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    /// `POST /publish` to a server that is not serving (not yet, or no
    /// more) is a 503 that says so. It answered 200 "published" for a
    /// message the hub queued for no one (holding it, up to the hub's
    /// queue bound).
    #[tokio::test]
    async fn a_publish_to_a_server_not_serving_is_a_503_that_says_so() {
        use http_body_util::BodyExt as _;
        let mut server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(1)
            .listen()
            .unwrap();
        let mut admin = AdminService {
            main: server.handle(),
            publisher: Publisher::local(server.hub()),
            started: Instant::now(),
        };
        let req = Request::post("/publish?topic=news")
            .body(Body::from_bytes("hello"))
            .unwrap();
        let answer = tower::Service::call(&mut admin, req).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("not serving yet"), "{body}");
    }

    #[test]
    fn admin_flag_parses() {
        assert_eq!(parse_admin("off"), Ok(AdminAddr::Off));
        assert_eq!(
            parse_admin("127.0.0.1:9"),
            Ok(AdminAddr::At("127.0.0.1:9".parse().unwrap()))
        );
        assert!(parse_admin("nine").is_err());
    }

    #[test]
    fn profile_seconds_are_bounded() {
        assert_eq!(
            profile_params(""),
            Ok((DEFAULT_PROFILE_SECONDS, ProfileFormat::Pprof))
        );
        assert_eq!(
            profile_params("seconds=5&format=svg"),
            Ok((5, ProfileFormat::Svg))
        );
        assert!(profile_params("seconds=0").is_err());
        assert!(profile_params("seconds=61").is_err());
        assert!(profile_params("seconds=x").is_err());
        assert!(profile_params("format=png").is_err());
    }
}
