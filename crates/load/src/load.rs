//! `megaconn load`: the [`LoadArgs`] and the driver. It validates the arguments,
//! checks the target answers a connect (for `https://` a whole TLS handshake,
//! with the ALPN `--http2` needs), renders the request once, starts one
//! thread per `--threads` (each a current-thread tokio runtime running its share
//! of the connections as local tasks), shows progress while they run, then merges
//! their histograms and counters into a [`LoadReport`]. SIGINT/SIGTERM stop the
//! run early; what was measured is still reported.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{parse_body, parse_duration, parse_header, parse_target, Scheme, Target};
use crate::conn::{self, ConnShared, Live, Protocol, ThreadStats};
use crate::error::LoadError;
use crate::h2conn::H2Request;
use crate::histogram::{merge, new_histogram, Percentiles};
use crate::progress::{Progress, TICK};
use crate::report::{write_json, ErrorCounts, LoadReport, TlsStats};
use crate::schedule::Schedule;
use crate::sys::InterruptGuard;
use crate::tls::{self, Trust, ALPN_H2, ALPN_HTTP1};
use crate::transport::{Endpoint, TlsEndpoint};
use crate::{plot, sys};

/// Arguments of `megaconn load URL`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Target URL, e.g. http://127.0.0.1:8080/path or https://localhost:8443/
    pub url: String,
    /// Keep-alive connections.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,
    /// Threads, each running a single-threaded runtime [default: CPU count, at most -c].
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// How long to run, e.g. 10s, 1m (with -n, whichever ends first).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Total number of requests to complete (with -d, whichever ends first).
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Open loop: send R requests/s in total and measure latency from each request's
    /// intended send time (coordinated-omission correction).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Requests in flight per connection (HTTP/1.1 pipelining). Closed loop sends
    /// K back to back and the next K once all are answered; open loop sends each
    /// when due, with at most K in flight.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub pipeline: usize,
    /// Speak HTTP/2: over TLS (ALPN h2) for https://, cleartext h2c with prior
    /// knowledge for http://.
    #[arg(long)]
    pub http2: bool,
    /// With --http2: concurrent streams per connection (requests in flight =
    /// -c × K, as with --pipeline).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub streams: usize,
    /// Open a new connection (and TLS handshake) for every request, to measure
    /// connection setup and TLS handshakes/s; latency then includes them.
    #[arg(long)]
    pub new_connection_per_request: bool,
    /// https://: accept any server certificate (e.g. `serve --self-signed`).
    /// For testing your own servers only: nothing proves who answers.
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// https://: trust the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    /// https://: keep no TLS session cache, so every handshake is a full one
    /// (by default sessions are resumed, as browsers do).
    #[arg(long)]
    pub no_tls_resume: bool,
    /// Request method.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// Extra request header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K: V")]
    pub headers: Vec<String>,
    /// Request body: a string, or @FILE to read it from a file.
    #[arg(long)]
    pub body: Option<String>,
    /// Connect and response timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the full report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile curve to FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE.svg|png")]
    pub plot: Option<PathBuf>,
    /// No progress output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// ws:// only: send nothing; count the messages the server pushes and,
    /// for those whose text starts with their send time (Unix µs), the
    /// delivery latency.
    #[arg(long)]
    pub receive: bool,
}

/// Longest a run without `--duration` may take: a safety bound, far beyond any real
/// `-n` run (and below tokio's timer horizon).
const NO_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The validated plan of a run.
struct Plan {
    threads: usize,
    shared: ConnShared,
}

fn plan(args: &LoadArgs) -> Result<Plan, LoadError> {
    if args.duration.is_none() && args.requests.is_none() {
        return Err(LoadError::Unbounded);
    }
    if args.connections == 0 {
        return Err(LoadError::invalid(
            "--connections",
            "0",
            "need at least one connection",
        ));
    }
    if args.requests == Some(0) {
        return Err(LoadError::invalid(
            "--requests",
            "0",
            "need at least one request",
        ));
    }
    if args.pipeline == 0 || args.pipeline > 4096 {
        return Err(LoadError::invalid(
            "--pipeline",
            args.pipeline.to_string(),
            "use 1 to 4096",
        ));
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(LoadError::invalid(
                "--rate",
                r.to_string(),
                "use a positive number of requests/s",
            ));
        }
    }
    check_protocol_flags(args)?;
    if let Some(plot) = &args.plot {
        plot::Format::of(plot)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).clamp(1, args.connections);
    let target = parse_target(&args.url)?;
    if target.scheme == Scheme::Tcp || target.scheme == Scheme::Wss {
        return Err(LoadError::invalid(
            "URL",
            &args.url,
            "load speaks HTTP and ws://: use http://HOST:PORT/PATH, https://HOST:PORT/PATH or ws://HOST:PORT/PATH (wss:// is for `hold`)",
        ));
    }
    let mut headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let body = args
        .body
        .as_deref()
        .map(parse_body)
        .transpose()?
        .unwrap_or_default();
    let method = args.method.to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(LoadError::invalid(
            "--method",
            &args.method,
            "use a method name such as GET or POST",
        ));
    }
    let endpoint = endpoint(args, &target)?;
    let protocol = if args.http2 {
        Protocol::Http2 {
            streams: args.streams,
            request: Box::new(H2Request::new(
                &method,
                endpoint.tls.is_some(),
                &target.host,
                &target.path,
                &headers,
                body.clone(),
            )?),
        }
    } else {
        Protocol::Http1
    };
    if args.new_connection_per_request
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        // The server closes, so its side keeps the TIME_WAIT sockets and the
        // client's port range lasts through a long handshake run.
        headers.push(("Connection".into(), "close".into()));
    }
    let request = conn::render_request(&method, &target.host, &target.path, &headers, &body);
    Ok(Plan {
        threads,
        shared: ConnShared {
            endpoint,
            protocol,
            one_per_connection: args.new_connection_per_request,
            batch: request.repeat(args.pipeline),
            request_len: request.len(),
            pipeline: args.pipeline,
            // Closed loop sends the next K requests once the last K are answered
            // (one write per K, like wrk's pipelining, which costs the least CPU);
            // open loop sends whenever a request is due and a slot is free.
            refill_at: if args.rate.is_some() {
                args.pipeline - 1
            } else {
                0
            },
            timeout: args.timeout,
            deadline: Instant::now(), // set at start
            head_request: method == "HEAD",
        },
    })
}

/// Checks the flags that choose protocol and concurrency fit together.
fn check_protocol_flags(args: &LoadArgs) -> Result<(), LoadError> {
    if args.streams == 0 || args.streams > 4096 {
        return Err(LoadError::invalid(
            "--streams",
            args.streams.to_string(),
            "use 1 to 4096",
        ));
    }
    if args.http2 && args.pipeline > 1 {
        return Err(LoadError::invalid(
            "--pipeline",
            args.pipeline.to_string(),
            "pipelining is HTTP/1.1; with --http2 use --streams K",
        ));
    }
    if !args.http2 && args.streams > 1 {
        return Err(LoadError::invalid(
            "--streams",
            args.streams.to_string(),
            "streams need --http2; for HTTP/1.1 use --pipeline K",
        ));
    }
    if args.new_connection_per_request && (args.pipeline > 1 || args.streams > 1) {
        return Err(LoadError::invalid(
            "--new-connection-per-request",
            "",
            "one request per connection leaves nothing to pipeline: drop --pipeline/--streams",
        ));
    }
    Ok(())
}

/// Resolves where and how to connect, and checks the target answers: a TCP
/// connect, or for `https://` a whole TLS handshake (certificate, and ALPN
/// `h2` with `--http2`).
fn endpoint(args: &LoadArgs, target: &Target) -> Result<Endpoint, LoadError> {
    let addr = target.addr;
    if target.scheme != Scheme::Https {
        std::net::TcpStream::connect_timeout(&addr, args.timeout)
            .map_err(|cause| LoadError::Unreachable { addr, cause })?;
        return Ok(Endpoint { addr, tls: None });
    }
    let trust = match (&args.cacert, args.insecure) {
        (_, true) => Trust::Anything,
        (Some(path), false) => Trust::CaFile(path),
        (None, false) => {
            return Err(LoadError::invalid(
                "URL",
                &args.url,
                "https:// needs --cacert FILE (the CA that signed the server's certificate) or --insecure (any certificate, e.g. `serve --self-signed`)",
            ))
        }
    };
    let alpn = if args.http2 { ALPN_H2 } else { ALPN_HTTP1 };
    let config = tls::client_config(trust, alpn, !args.no_tls_resume, args.connections)?;
    let name = tls::server_name(&target.host)?;
    let selected = tls::probe(addr, &name, &config, args.timeout)?;
    if args.http2 && selected.as_deref() != Some(ALPN_H2) {
        return Err(LoadError::Tls {
            addr,
            cause: "the server did not select HTTP/2 (ALPN h2)".into(),
            hint: "it serves HTTP/1.1 only over TLS; drop --http2",
        });
    }
    Ok(Endpoint {
        addr,
        tls: Some(TlsEndpoint { config, name }),
    })
}

/// Runs `megaconn load`: generates the load, prints the report to stdout, writes
/// `--json`/`--plot` files, and returns the report.
pub fn run_load(args: LoadArgs) -> Result<LoadReport, LoadError> {
    if args.url.starts_with("ws://") {
        return crate::ws::run_load(&args);
    }
    if args.receive {
        return Err(LoadError::invalid(
            "--receive",
            "",
            "--receive is for ws:// targets",
        ));
    }
    let Plan {
        threads,
        mut shared,
    } = plan(&args)?;
    let conns = args.connections;
    let start = Instant::now();
    shared.deadline = start + args.duration.unwrap_or(NO_DEADLINE);
    let shared = Arc::new(shared);
    let cpu0 = sys::cpu_secs();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let guard = InterruptGuard::install();
    let lives: Vec<Arc<Live>> = (0..threads).map(|_| Arc::new(Live::default())).collect();
    let mut handles = Vec::with_capacity(threads);
    for (t, live) in lives.iter().enumerate() {
        let shared = Arc::clone(&shared);
        let live = Arc::clone(live);
        let plan = ThreadPlan {
            index: t,
            threads,
            conns,
            requests: args.requests,
            rate: args.rate,
            start,
            stop: stop_rx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || run_thread(plan, &shared, live))
            .map_err(|e| LoadError::io("cannot start a load thread", e))?;
        handles.push(handle);
    }

    let (length, unit) = match (args.requests, args.duration) {
        (Some(n), _) => (n, "requests"),
        (None, Some(d)) => (d.as_millis() as u64, "ms"),
        (None, None) => unreachable!("plan() rejects unbounded runs"),
    };
    let mut progress = Progress::new(length, unit, args.quiet);
    let (mut last_at, mut last_requests) = (start, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(TICK);
        if guard.interrupted() && !*stop_tx.borrow() {
            let _ = stop_tx.send(true);
        }
        let now = Instant::now();
        let requests: u64 = lives.iter().map(|l| l.requests.load(Relaxed)).sum();
        let errors: u64 = lives.iter().map(|l| l.errors.load(Relaxed)).sum();
        let position = if unit == "requests" {
            requests
        } else {
            now.duration_since(start).as_millis() as u64
        };
        progress.update(position.min(length), || {
            let rate =
                (requests - last_requests) as f64 / now.duration_since(last_at).as_secs_f64();
            last_at = now;
            last_requests = requests;
            format!("{requests} ok, {rate:.0} req/s, {errors} errors")
        });
    }
    progress.finish();
    if guard.interrupted() {
        eprintln!("load: interrupted; reporting what was measured");
    }
    drop(guard);

    let mut stats = Vec::with_capacity(threads);
    for h in handles {
        stats.push(h.join().map_err(|_| {
            LoadError::io("a load thread panicked", std::io::Error::other("panic"))
        })??);
    }
    // The run ends when the last thread does (not when this loop noticed).
    let end = stats
        .iter()
        .map(|s| s.finished_at)
        .max()
        .unwrap_or_else(Instant::now);
    let elapsed = end.duration_since(start).as_secs_f64().max(1e-9);
    let cpu = (sys::cpu_secs() - cpu0).max(0.0);
    let report = build_report(&args, threads, elapsed, cpu, &lives, &stats);
    let mut hist = new_histogram();
    for s in &stats {
        merge(&mut hist, &s.hist);
    }
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        plot::write(path, &format!("latency: {}", args.url), &hist)?;
    }
    Ok(report)
}

/// What one load thread is to do.
struct ThreadPlan {
    /// This thread's index: it runs connections `index, index + threads, …`.
    index: usize,
    /// Number of threads.
    threads: usize,
    /// Number of connections in the run.
    conns: usize,
    /// `-n`, split exactly over connections.
    requests: Option<u64>,
    /// `--rate`, split evenly over connections.
    rate: Option<f64>,
    /// Start of the run (the open-loop schedules' origin).
    start: Instant,
    /// Turns true when the run is interrupted.
    stop: tokio::sync::watch::Receiver<bool>,
}

/// One load thread: a current-thread runtime running its connections as local
/// tasks until they finish, the deadline passes, or the run is interrupted.
fn run_thread(
    plan: ThreadPlan,
    shared: &ConnShared,
    live: Arc<Live>,
) -> Result<ThreadStats, LoadError> {
    let ThreadPlan {
        index: t,
        threads,
        conns,
        requests,
        rate,
        start,
        mut stop,
    } = plan;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::io("cannot build a tokio runtime", e))?;
    let stats = Rc::new(RefCell::new(ThreadStats::new()));
    let local = tokio::task::LocalSet::new();
    let shared = Rc::new(shared.clone());
    let mut tasks = Vec::new();
    for i in (t..conns).step_by(threads) {
        // -n is split exactly over connections, so the totals add up.
        let budget = requests.map_or(u64::MAX, |n| {
            n / conns as u64 + u64::from((i as u64) < n % conns as u64)
        });
        if budget == 0 {
            continue;
        }
        let schedule = rate.map(|r| Schedule::for_connection(start, r, conns, i));
        tasks.push(local.spawn_local(conn::run(
            Rc::clone(&shared),
            budget,
            schedule,
            Rc::clone(&stats),
            Arc::clone(&live),
        )));
    }
    // Connections stop by themselves at the deadline; a write stuck on a server
    // that stopped reading is cut off a timeout later.
    let hard_stop = tokio::time::Instant::from_std(shared.deadline + shared.timeout);
    local.block_on(&rt, async {
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        let interrupted = async {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout_at(hard_stop, all) => {}
            () = interrupted => {}
        }
    });
    let finished_at = Instant::now();
    drop(local); // every task is done or abandoned: the Rc below is the last one
    drop(shared);
    let mut stats = Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .map_err(|_| LoadError::io("load thread", std::io::Error::other("stats still shared")))?;
    stats.finished_at = finished_at;
    Ok(stats)
}

fn build_report(
    args: &LoadArgs,
    threads: usize,
    elapsed: f64,
    cpu: f64,
    lives: &[Arc<Live>],
    stats: &[ThreadStats],
) -> LoadReport {
    let requests: u64 = lives.iter().map(|l| l.requests.load(Relaxed)).sum();
    let bytes: u64 = lives.iter().map(|l| l.bytes.load(Relaxed)).sum();
    let sent: u64 = lives.iter().map(|l| l.sent.load(Relaxed)).sum();
    let mut errors = ErrorCounts::default();
    let mut hist = new_histogram();
    let (mut lag_sum, mut lag_max, mut backlog) = (0u128, 0u64, 0u64);
    let (mut connects, mut full, mut resumed, mut retried) = (0u64, 0u64, 0u64, 0u64);
    for s in stats {
        errors.merge(&s.errors);
        merge(&mut hist, &s.hist);
        lag_sum += s.lag_sum_ns;
        lag_max = lag_max.max(s.lag_max_ns);
        backlog += s.backlog;
        connects += s.connects;
        full += s.handshakes_full;
        resumed += s.handshakes_resumed;
        retried += s.retried;
    }
    let https = args.url.starts_with("https://");
    let achieved_rate = sent as f64 / elapsed;
    let open = args.rate.is_some();
    LoadReport {
        url: args.url.clone(),
        connections: args.connections,
        threads,
        pipeline: args.pipeline,
        protocol: if args.http2 { "h2" } else { "http/1.1" }.into(),
        streams: args.http2.then_some(args.streams),
        new_connection_per_request: args.new_connection_per_request,
        connections_opened: connects,
        connections_per_sec: connects as f64 / elapsed,
        tls: https.then(|| TlsStats {
            resumption: !args.no_tls_resume,
            handshakes_full: full,
            handshakes_resumed: resumed,
            full_per_sec: full as f64 / elapsed,
            resumed_per_sec: resumed as f64 / elapsed,
        }),
        requests,
        retried,
        errors_total: errors.total(),
        errors,
        duration_secs: elapsed,
        rps: requests as f64 / elapsed,
        bytes_read: bytes,
        bytes_per_sec: bytes as f64 / elapsed,
        client_cpu_secs: cpu,
        requests_per_client_cpu_sec: if cpu > 0.0 {
            requests as f64 / cpu
        } else {
            0.0
        },
        latency_us: Percentiles::of(&hist),
        target_rate: args.rate,
        achieved_rate,
        rate_shortfall_pct: args
            .rate
            .map(|r| (100.0 * (1.0 - achieved_rate / r)).max(0.0)),
        behind_requests: open.then_some(backlog),
        send_lag_mean_us: open.then(|| {
            if sent > 0 {
                lag_sum as f64 / sent as f64 / 1000.0
            } else {
                0.0
            }
        }),
        send_lag_max_us: open.then_some(lag_max as f64 / 1000.0),
    }
}
