//! `megaconn hold`: the [`HoldArgs`], setup validation (target reachable, source
//! addresses local, port space and descriptor limits sufficient, process count
//! chosen) done before any load starts, and the per-process worker that ramps
//! connections up, holds them for `--duration` and stops them all. With more than
//! one process the work is split over children (see `children`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{
    parse_body, parse_duration, parse_header, parse_sources, parse_target, unescape, Scheme, Target,
};
use crate::children;
use crate::conn::render_request;
use crate::error::LoadError;
use crate::histogram::Percentiles;
use crate::hold_conn::{self, HoldCounters, HoldShared, Latencies, Snapshot};
use crate::progress::{Progress, TICK};
use crate::report::{write_json, HoldReport};
use crate::sys::{self, InterruptGuard};
use crate::tcp_frames::{parse_tcp_framing, TcpFraming};
use crate::tls::{self, Trust, ALPN_HTTP1};
use crate::ws::{WsHeartbeat, WsHold};

/// Arguments of `megaconn hold URL|tcp://ADDR`.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// Target: http://HOST:PORT/PATH or https://HOST:PORT/PATH (HTTP
    /// heartbeats), tcp://HOST:PORT (line or length-prefixed heartbeats) or
    /// ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (WebSocket pings or texts).
    pub target: String,
    /// Connections to open and hold (up to 1,000,000).
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub connections: u64,
    /// New connections per second (all processes together).
    #[arg(long, value_name = "R", default_value_t = 5000.0)]
    pub ramp: f64,
    /// Source addresses to connect from: an address, a range like
    /// 127.0.0.2-127.0.0.40, or a comma-separated list of those.
    #[arg(long, value_name = "ADDRS")]
    pub source: Option<String>,
    /// Child processes to spread connections over [default: from RLIMIT_NOFILE].
    #[arg(long, value_name = "P")]
    pub processes: Option<usize>,
    /// Threads per process.
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Time between heartbeats on each connection (jittered ±10%; beats go
    /// out on a grid of interval/300, 10 to 100 ms, one wake-up per tick).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// HTTP method of the opening request and the heartbeats.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// Extra header "Name: value" on the HTTP requests (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K: V")]
    pub headers: Vec<String>,
    /// HTTP request body: a string, or @FILE to read it from a file.
    #[arg(long)]
    pub body: Option<String>,
    /// tcp:// heartbeat line to send (escapes: \n \r \t \\); with a length
    /// header (--tcp-framing), the frame's body, without the line ending.
    #[arg(long, value_name = "LINE", default_value = "PING\\n")]
    pub send: String,
    /// tcp:// the reply line must contain this [default: any line].
    #[arg(long, value_name = "TEXT")]
    pub expect: Option<String>,
    /// tcp:// framing: lines, or a big-endian length header u8, u16, u32 or
    /// u64 (as `serve --tcp-framing`); --send is then the body of each heartbeat.
    #[arg(long, value_name = "FRAMING", default_value = "lines", value_parser = parse_tcp_framing)]
    pub tcp_framing: TcpFraming,
    /// tcp:// and ws(s):// receive mode: count frames (ws(s)://: text or binary
    /// messages) the server pushes whose payload starts `t=<unix ns>` (their
    /// send time) and report their delivery latency.
    #[arg(long)]
    pub receive: bool,
    /// Reconnect connections that drop or fail to connect.
    #[arg(long)]
    pub reconnect: bool,
    /// http://: wake for each reply as it arrives and time it when read
    /// (ws:// and tcp:// always do). By default replies are read on the beat grid's tick and
    /// timed by the kernel's receive timestamp (`SO_TIMESTAMPNS`), so a
    /// server's reply does not wake `hold`: on one machine that wake-up is
    /// paid by the server's `send` (loopback), which a remote client would
    /// not cost it.
    #[arg(long)]
    pub wake_per_reply: bool,
    /// https:// and wss://: accept any server certificate (e.g. `serve --self-signed`).
    /// For testing your own servers only: nothing proves who answers.
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// https:// and wss://: trust the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    /// How long to hold the connections once the ramp is done.
    #[arg(short = 'd', long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Connect and heartbeat-reply timeout. A heartbeat's timeout and
    /// latency run from its first byte's write, also when the socket cannot
    /// take it whole (the server not reading it): that wait is the server's.
    /// The rest goes out as soon as the socket takes it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// ws:// and wss:// heartbeat: a ping (answered by a pong) or a text frame of the
    /// --send text (answered by any message, containing --expect if given).
    #[arg(long, value_enum, default_value_t = WsHeartbeat::Ping)]
    pub ws_heartbeat: WsHeartbeat,
    /// Internal: this process is child I of a multi-process run.
    #[arg(long, hide = true, requires = "child_count")]
    pub child_index: Option<usize>,
    /// Internal: the number of children in a multi-process run.
    #[arg(long, hide = true, requires = "child_index")]
    pub child_count: Option<usize>,
}

/// Most connections one run may hold.
const MAX_CONNECTIONS: u64 = 1_000_000;

/// https://: the TLS handshakes one process expects to have in flight at once
/// (a ramp, a wave of reconnects), which sizes its store of resumption tickets.
/// Not one per held connection: each handshake takes a ticket and is given two,
/// so a small store keeps resuming through any ramp, while a stored ticket holds
/// its own copy of the server's certificate chain (about 1 KB with a small
/// certificate): a store sized by `--connections` kept one ticket per held
/// connection, never used, a gigabyte at a million.
const HANDSHAKES_IN_FLIGHT: usize = 128;

/// The validated plan shared by parent and children.
#[derive(Debug, Clone)]
pub(crate) struct HoldPlan {
    /// The target.
    pub target: Target,
    /// All source addresses (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
    /// Processes to use.
    pub processes: usize,
    /// Connections one process can hold.
    pub per_process_limit: u64,
    /// The RLIMIT_NOFILE the limit came from.
    pub nofile: u64,
    /// The bytes of one heartbeat: the rendered HTTP request, or the `--send` line.
    pub heartbeat: Vec<u8>,
    /// The HTTP method is HEAD (replies have no body).
    pub head_request: bool,
    /// https://: the client configuration (sessions resume, as browsers do)
    /// and the server's name.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// ws://: the upgrade and what answers a heartbeat.
    pub ws: Option<WsHold>,
}

/// Checks everything that can be checked before load starts (except reachability).
pub(crate) fn plan(args: &HoldArgs) -> Result<HoldPlan, LoadError> {
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(LoadError::invalid(
            "--connections",
            args.connections.to_string(),
            "use 1 to 1000000",
        ));
    }
    if !(args.ramp.is_finite() && args.ramp > 0.0) {
        return Err(LoadError::invalid(
            "--ramp",
            args.ramp.to_string(),
            "use a positive number of connections/s",
        ));
    }
    if args.interval.is_zero() {
        return Err(LoadError::invalid(
            "--interval",
            "0",
            "use a positive interval such as 30s",
        ));
    }
    if args.threads == 0 || args.threads > 256 {
        return Err(LoadError::invalid(
            "--threads",
            args.threads.to_string(),
            "use 1 to 256",
        ));
    }
    let target = parse_target(&args.target)?;
    let tls = match (target.scheme, &args.cacert, args.insecure) {
        (Scheme::Https | Scheme::Wss, cacert, insecure) => {
            let trust = match (cacert, insecure) {
                (_, true) => Trust::Anything,
                (Some(path), false) => Trust::CaFile(path),
                (None, false) => {
                    return Err(LoadError::invalid(
                        "target",
                        &args.target,
                        "https:// and wss:// need --cacert FILE (the CA that signed the server's certificate) or --insecure (any certificate, e.g. `serve --self-signed`)",
                    ))
                }
            };
            let config = tls::client_config(trust, ALPN_HTTP1, true, HANDSHAKES_IN_FLIGHT)?;
            Some((config, tls::server_name(&target.host)?))
        }
        _ => None,
    };
    let method = args.method.to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(LoadError::invalid(
            "--method",
            &args.method,
            "use a method name such as GET or POST",
        ));
    }
    let mut ws = None;
    let heartbeat = if matches!(target.scheme, Scheme::Ws | Scheme::Wss) {
        let (hold, frame) = WsHold::new(&target, args.ws_heartbeat, &unescape(&args.send));
        ws = Some(hold);
        frame
    } else if target.scheme != Scheme::Tcp {
        let headers = args
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
        render_request(&method, &target.host, &target.path, &headers, &body)
    } else {
        args.tcp_framing.heartbeat(&unescape(&args.send))
    };
    let sources = match &args.source {
        Some(s) => parse_sources(s)?,
        None => Vec::new(),
    };
    for &ip in &sources {
        if ip.is_ipv4() != target.addr.is_ipv4() {
            return Err(LoadError::invalid(
                "--source",
                ip.to_string(),
                "source and target must be the same IP version",
            ));
        }
        sys::check_source(ip).map_err(|cause| LoadError::BadSource { addr: ip, cause })?;
    }
    let ports = sys::local_port_count();
    let capacity = ports * sources.len().max(1) as u64;
    if args.connections > capacity {
        return Err(LoadError::PortSpace {
            connections: args.connections,
            sources: sources.len().max(1),
            ports_per_source: ports,
            needed: args.connections.div_ceil(ports),
        });
    }
    let nofile = sys::raise_nofile();
    let per_process_limit = sys::connections_per_process(nofile);
    let processes = match (args.child_count, args.processes) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => args.connections.div_ceil(per_process_limit) as usize,
    };
    if processes == 0 || processes as u64 > args.connections {
        return Err(LoadError::invalid(
            "--processes",
            processes.to_string(),
            format!(
                "use 1 to {} (at least one connection per process)",
                args.connections
            ),
        ));
    }
    let per_process = args.connections.div_ceil(processes as u64);
    if per_process > per_process_limit {
        return Err(LoadError::TooManyPerProcess {
            per_process,
            limit: per_process_limit,
            suggested: args.connections.div_ceil(per_process_limit),
        });
    }
    Ok(HoldPlan {
        target,
        sources,
        processes,
        per_process_limit,
        nofile,
        heartbeat,
        head_request: method == "HEAD",
        tls,
        ws,
    })
}

/// This process's share of the work: connections, ramp rate and source use of
/// process `index` of `count`. Process `i` takes connections `i, i+P, i+2P, …` of
/// the run, and connection `g` of the run connects from source `g % sources`, so
/// every source carries the same number of connections however many processes.
pub(crate) fn share(
    args: &HoldArgs,
    plan: &HoldPlan,
    index: usize,
    count: usize,
) -> (u64, HoldShared) {
    let n = args.connections / count as u64
        + u64::from((index as u64) < args.connections % count as u64);
    let http = plan.target.scheme != Scheme::Tcp;
    let shared = HoldShared {
        addr: plan.target.addr,
        sources: plan.sources.clone(),
        first: index as u64,
        stride: count as u64,
        heartbeat: plan.heartbeat.clone(),
        head_request: plan.head_request,
        http,
        ws: plan.ws.clone(),
        expect: args.expect.as_ref().map(|e| unescape(e)),
        framing: args.tcp_framing,
        receive: args.receive,
        interval: args.interval,
        tick: hold_conn::beat_tick(args.interval),
        timeout: args.timeout,
        reconnect: args.reconnect,
        wake_per_reply: args.wake_per_reply,
        start: Instant::now(),
        ramp: args.ramp / count as f64,
        tls: plan.tls.clone(),
    };
    (n, shared)
}

/// What one process's worker ends with.
#[derive(Debug, Clone)]
pub(crate) struct WorkerOutcome {
    /// Counters at the end.
    pub counters: Snapshot,
    /// Connections open when the hold ended.
    pub open_at_end: u64,
    /// Ramp time, seconds.
    pub ramp_secs: f64,
    /// Hold time after the ramp, seconds.
    pub hold_secs: f64,
    /// Heartbeat and push latencies.
    pub latencies: Latencies,
}

/// Runs this process's share: ramps `count` connections up over `threads` threads,
/// holds them for `duration` after the ramp (or until interrupted), then closes them.
/// `tick` sees the counters every [`TICK`].
pub(crate) fn run_worker(
    mut shared: HoldShared,
    count: u64,
    threads: usize,
    duration: Duration,
    guard: &InterruptGuard,
    mut tick: impl FnMut(&Snapshot) -> bool,
) -> Result<WorkerOutcome, LoadError> {
    let counters = Arc::new(HoldCounters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let threads = (threads as u64).clamp(1, count);
    shared.start = Instant::now();
    let start = shared.start;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (shared, counters, stop) = (shared.clone(), Arc::clone(&counters), stop_rx.clone());
        let h = std::thread::Builder::new()
            .name(format!("hold-{t}"))
            .spawn(move || hold_conn::run_thread(t, threads, count, shared, counters, stop))
            .map_err(|e| LoadError::io("cannot start a hold thread", e))?;
        handles.push(h);
    }
    // The ramp is over when every connection has been tried once (connected
    // and, over HTTP, its opening request answered): the hold that follows
    // starts from established connections, however slow the machine. It
    // cannot take longer than its schedule plus one connect timeout (plus
    // slack).
    let ramp_limit = start
        + Duration::from_secs_f64(count as f64 / shared.ramp)
        + shared.timeout
        + Duration::from_secs(5);
    let mut ramp_end: Option<Instant> = None;
    loop {
        let snap = counters.snapshot();
        let now = Instant::now();
        if !tick(&snap) || guard.interrupted() {
            break;
        }
        if ramp_end.is_none() && (snap.attempted >= count || now >= ramp_limit) {
            ramp_end = Some(now);
            let ns = now.duration_since(start).as_nanos().max(1);
            counters.ramp_over_ns.store(
                u64::try_from(ns).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let wake = match ramp_end {
            Some(r) if now >= r + duration => break,
            Some(r) => (r + duration).min(now + TICK),
            None => now + TICK,
        };
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
    let end = Instant::now();
    let open_at_end = counters.snapshot().open;
    let _ = stop_tx.send(true);
    let mut latencies = Latencies::new();
    for h in handles {
        let thread = h
            .join()
            .map_err(|_| LoadError::io("a hold thread panicked", std::io::Error::other("panic")))?
            .map_err(|e| LoadError::io("cannot build a tokio runtime", e))?;
        latencies.add(&thread);
    }
    let ramp_end = ramp_end.unwrap_or(end);
    Ok(WorkerOutcome {
        counters: counters.snapshot(),
        open_at_end,
        ramp_secs: ramp_end.duration_since(start).as_secs_f64(),
        hold_secs: end.duration_since(ramp_end).as_secs_f64(),
        latencies,
    })
}

/// One progress line for `hold`.
pub(crate) fn progress_message(s: &Snapshot, heartbeats_per_sec: f64) -> String {
    let pushes = if s.pushes_received > 0 {
        format!(", pushes received {}", s.pushes_received)
    } else {
        String::new()
    };
    let codes = crate::hold_conn::close_codes_map(&s.close_codes);
    let closes = match crate::report::closes_text(s.closed_by_server, &codes) {
        text if text.is_empty() => text,
        text => format!(", {text}"),
    };
    format!(
        "open {} (peak {}), {:.0} heartbeats/s, drops {}{closes}, resets {}, failed connects {}, heartbeat errors {}{pushes}",
        s.open, s.peak, heartbeats_per_sec, s.drops, s.resets, s.failed_connects, s.heartbeat_errors
    )
}

/// Tracks the heartbeat rate between progress updates.
pub(crate) struct RateMeter {
    at: Instant,
    count: u64,
}

impl RateMeter {
    /// Starts measuring now.
    pub(crate) fn new() -> Self {
        RateMeter {
            at: Instant::now(),
            count: 0,
        }
    }

    /// The rate since the last call, given the current total.
    pub(crate) fn rate(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64().max(1e-9);
        let r = total.saturating_sub(self.count) as f64 / secs;
        (self.at, self.count) = (now, total);
        r
    }
}

/// The report of a hold run (or of one child's share of it): `target` the
/// connections asked for, `(processes, sources)` used, `cpu` seconds spent.
pub(crate) fn hold_report(
    args: &HoldArgs,
    outcome: &WorkerOutcome,
    target: u64,
    (processes, sources): (usize, usize),
    cpu: f64,
) -> HoldReport {
    HoldReport {
        target: args.target.clone(),
        target_connections: target,
        connections_peak: outcome.counters.peak,
        connections_open_at_end: outcome.open_at_end,
        ramp_secs: outcome.ramp_secs,
        hold_secs: outcome.hold_secs,
        drops: outcome.counters.drops,
        closed_by_server: outcome.counters.closed_by_server,
        close_codes: crate::hold_conn::close_codes_map(&outcome.counters.close_codes),
        resets: outcome.counters.resets,
        failed_connects: outcome.counters.failed_connects,
        reconnects: outcome.counters.reconnects,
        heartbeats_ok: outcome.counters.heartbeats_ok,
        heartbeat_errors: outcome.counters.heartbeat_errors,
        opens_ok: outcome.counters.opens_ok,
        heartbeats_pending_at_end: outcome.counters.heartbeats_pending,
        heartbeat_latency_us: Percentiles::of(&outcome.latencies.heartbeats),
        heartbeat_latency_holding_us: Percentiles::of(&outcome.latencies.holding),
        heartbeat_latency_steady_us: Percentiles::of(&outcome.latencies.steady),
        pushes_received: outcome.counters.pushes_received,
        push_latency_us: Percentiles::of(&outcome.latencies.pushes),
        connections_parked: outcome.counters.parked,
        wall_clock_steps: outcome.counters.wall_clock_steps,
        beats_held_back: outcome.counters.beats_held_back,
        processes,
        sources,
        client_cpu_secs: cpu,
    }
}

/// Runs `megaconn hold`: validates, holds, prints the report to stdout, writes
/// `--json`, and returns the report. Exits with an error only for setup failures;
/// drops and failed heartbeats are reported, not errors.
pub fn run_hold(args: HoldArgs) -> Result<HoldReport, LoadError> {
    if let (Some(index), Some(count)) = (args.child_index, args.child_count) {
        return children::run_child(&args, index, count);
    }
    let plan = plan(&args)?;
    std::net::TcpStream::connect_timeout(&plan.target.addr, args.timeout).map_err(|cause| {
        LoadError::Unreachable {
            addr: plan.target.addr,
            cause,
        }
    })?;
    if !args.quiet {
        eprintln!(
            "hold: RLIMIT_NOFILE {} allows {} connections per process; using {} process(es) for {} connections{}",
            plan.nofile,
            plan.per_process_limit,
            plan.processes,
            args.connections,
            if args.processes.is_some() { " (as given by --processes)" } else { "" }
        );
    }
    let cpu0 = sys::cpu_secs() + sys::children_cpu_secs();
    let guard = InterruptGuard::install();
    let (outcome, processes) = if plan.processes == 1 {
        let (count, shared) = share(&args, &plan, 0, 1);
        let mut progress = Progress::new(count, "open", args.quiet);
        let mut meter = RateMeter::new();
        let outcome = run_worker(shared, count, args.threads, args.duration, &guard, |s| {
            progress.update(s.open, || progress_message(s, meter.rate(s.heartbeats_ok)));
            true
        })?;
        progress.finish();
        (outcome, 1)
    } else {
        (children::run_parent(&args, &plan, &guard)?, plan.processes)
    };
    if guard.interrupted() {
        eprintln!("hold: interrupted; reporting what was measured");
    }
    drop(guard);
    let cpu = (sys::cpu_secs() + sys::children_cpu_secs() - cpu0).max(0.0);
    let report = hold_report(
        &args,
        &outcome,
        args.connections,
        (processes, plan.sources.len()),
        cpu,
    );
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
}
