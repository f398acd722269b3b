//! `megaconn serve`: flags and the TOML config file resolve into one set of
//! settings (flags win), then the server runs the demo app until SIGINT/SIGTERM.
//! SIGHUP reloads the TLS certificate and key files (tls.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

use crate::admin::AdminAddr;
use crate::demo::Demo;
use crate::duration;
use crate::logging::{self, LogFormat};
use crate::shared_stats::SharedStats;
use crate::UsageError;

/// The address `serve` listens on when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Flags of `megaconn serve`. Every one can also be set in the config file
/// (same name, with `_` for `-`); flags override the file.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on (repeatable). Default: 127.0.0.1:8080, unless
    /// --tls-listen is given. TLS with --tls-cert/--self-signed, unless
    /// --tls-listen says which addresses are TLS.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Address to listen on with TLS, next to the cleartext --listen ones
    /// (repeatable); needs --tls-cert/--tls-key or --self-signed. Config file:
    /// `listen = ["0.0.0.0:80"]` and `tls_listen = ["0.0.0.0:443"]` mix the two.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// Worker threads (one runtime and listener each). Default: number of CPUs.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// TOML config file with any of these settings (same names with `_`, e.g.
    /// `listen = ["0.0.0.0:80"]`, `tls_listen = ["0.0.0.0:443"]`, `tls_cert =
    /// "cert.pem"`, `idle_timeout = "30s"`); flags win; unknown keys are errors.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Time to receive a request head, e.g. 10s; `off` disables. Default: 10s.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_timeout)]
    pub read_header_timeout: Option<duration::Timeout>,
    /// Time to receive a request body after its head. Default: off.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_timeout)]
    pub read_timeout: Option<duration::Timeout>,
    /// Time to write one response. Default: off.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_timeout)]
    pub write_timeout: Option<duration::Timeout>,
    /// Keep-alive wait for the next request. Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_timeout)]
    pub idle_timeout: Option<duration::Timeout>,
    /// How long a keep-alive connection idles as a task before it is parked
    /// (leaves the runtime, ~70 bytes while idle); `off` keeps every idle
    /// connection a task (~1 KB each). Default: 2s.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_timeout)]
    pub park_after: Option<duration::Timeout>,
    /// Graceful shutdown deadline. Default: 30s.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub shutdown_timeout: Option<Duration>,
    /// Largest request head in bytes (431 above). Default: 65536.
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most request headers (431 above). Default: 100.
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,
    /// Largest request body in bytes (413 above). Default: 16777216.
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Most concurrent connections. Default: open-file limit minus 256.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Listen backlog. Default: 4096.
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,
    /// New connections admitted per second (token bucket); over it they are
    /// closed at once and counted. Default: unlimited.
    #[arg(long, value_name = "PER_SECOND")]
    pub accept_rate: Option<f64>,
    /// Burst allowed by --accept-rate. Default: one second's worth.
    #[arg(long, value_name = "N")]
    pub accept_burst: Option<u32>,
    /// Most concurrent connections per client IP (IPv6: per /64). Default:
    /// unlimited.
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// Disable keep-alive (one request per connection).
    #[arg(long)]
    pub no_keep_alive: bool,
    /// `Server` header value to send. Default: none.
    #[arg(long, value_name = "VALUE")]
    pub server_header: Option<String>,
    /// TLS certificate chain (PEM) for every --listen address (or for the
    /// --tls-listen ones); needs --tls-key. HTTP/2 is negotiated by ALPN.
    /// SIGHUP reloads the certificate and key files. Default: cleartext.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) matching --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a throwaway self-signed certificate for localhost and
    /// 127.0.0.1 (for trying HTTPS and HTTP/2; clients must skip verification).
    #[arg(long)]
    pub self_signed: bool,
    /// Log format: human or json. Default: human.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Admin listener (/metrics, /debug/runtime, /debug/pprof) address, or
    /// `off`. Default: 127.0.0.1:9090, skipped with a warning if taken.
    #[arg(long, value_name = "ADDR", value_parser = crate::admin::parse_admin)]
    pub admin: Option<AdminAddr>,
    /// Keep a live list of connections (peer, worker, state, age, requests) for
    /// the admin listener's /debug/connections. Costs a few uncontended locks
    /// per request. Default: off.
    #[arg(long)]
    pub debug_connections: bool,
    /// Log one line per request (target megaconn::access: peer, method, path,
    /// status, duration, bytes). Default: off.
    #[arg(long)]
    pub access_log: bool,
    /// Worker processes under a supervisor, for hosts whose per-process
    /// open-file limit caps connections (each process has its own listeners and
    /// `--workers` threads). Default: 1 (no supervisor).
    #[arg(long, value_name = "P")]
    pub processes: Option<usize>,
    /// Internal: run as worker process N of a supervisor.
    #[arg(long, hide = true, value_name = "N")]
    pub worker_process: Option<usize>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    listen: Option<Vec<SocketAddr>>,
    tls_listen: Option<Vec<SocketAddr>>,
    workers: Option<usize>,
    #[serde(default, with = "duration::serde_optional")]
    read_header_timeout: Option<Option<Duration>>,
    #[serde(default, with = "duration::serde_optional")]
    read_timeout: Option<Option<Duration>>,
    #[serde(default, with = "duration::serde_optional")]
    write_timeout: Option<Option<Duration>>,
    #[serde(default, with = "duration::serde_optional")]
    idle_timeout: Option<Option<Duration>>,
    #[serde(default, with = "duration::serde_optional")]
    park_after: Option<Option<Duration>>,
    #[serde(default, with = "duration::serde_optional")]
    shutdown_timeout: Option<Option<Duration>>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_body_bytes: Option<u64>,
    max_connections: Option<usize>,
    backlog: Option<u32>,
    accept_rate: Option<f64>,
    accept_burst: Option<u32>,
    max_connections_per_ip: Option<u32>,
    keep_alive: Option<bool>,
    server_header: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    self_signed: Option<bool>,
    log_format: Option<LogFormat>,
    processes: Option<usize>,
    admin: Option<String>,
    debug_connections: Option<bool>,
    access_log: Option<bool>,
}

impl ConfigFile {
    /// Reads and parses a config file; errors name the file and the bad key.
    pub fn load(path: &std::path::Path) -> Result<ConfigFile, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| UsageError(format!("invalid config file {}: {e}", path.display())))
    }
}

/// Settings resolved from flags over file over defaults.
#[derive(Debug)]
pub struct Resolved {
    /// The builder with every knob applied.
    pub builder: megaconn::Builder,
    /// The log format.
    pub log_format: LogFormat,
    /// Worker processes (1: no supervisor).
    pub processes: usize,
    /// The admin listener; `None`: the default address.
    pub admin: Option<AdminAddr>,
    /// The TLS certificate's source, for SIGHUP; `None`: cleartext only.
    pub tls: Option<crate::tls::ServeTls>,
}

/// Merges flags over the config file.
pub fn resolve(args: &ServeArgs) -> Result<Resolved, UsageError> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let tls_listen = if !args.tls_listen.is_empty() {
        args.tls_listen.clone()
    } else {
        file.tls_listen.clone().unwrap_or_default()
    };
    let listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if let Some(listen) = file.listen.clone().filter(|l| !l.is_empty()) {
        listen
    } else if !tls_listen.is_empty() {
        // Only TLS listeners were asked for.
        Vec::new()
    } else {
        vec![DEFAULT_LISTEN.parse().expect("valid default address")]
    };
    let mut b = megaconn::Server::builder();
    for addr in listen {
        b = b.listen_on(addr);
    }
    if let Some(n) = args.workers.or(file.workers) {
        if n == 0 {
            return Err(UsageError("workers must be at least 1".into()));
        }
        b = b.workers(n);
    }
    if let Some(t) = args
        .read_header_timeout
        .map(|t| t.0)
        .or(file.read_header_timeout)
    {
        b = b.read_header_timeout(t);
    }
    if let Some(t) = args.read_timeout.map(|t| t.0).or(file.read_timeout) {
        b = b.read_timeout(t);
    }
    if let Some(t) = args.write_timeout.map(|t| t.0).or(file.write_timeout) {
        b = b.write_timeout(t);
    }
    if let Some(t) = args.idle_timeout.map(|t| t.0).or(file.idle_timeout) {
        b = b.idle_timeout(t);
    }
    if let Some(t) = args.park_after.map(|t| t.0).or(file.park_after) {
        b = b.park_idle_after(t);
    }
    match (args.shutdown_timeout, file.shutdown_timeout) {
        (Some(t), _) | (None, Some(Some(t))) => b = b.shutdown_timeout(t),
        (None, Some(None)) => b = b.shutdown_timeout(Duration::ZERO),
        (None, None) => {}
    }
    if let Some(n) = args.max_header_bytes.or(file.max_header_bytes) {
        b = b.max_header_bytes(n);
    }
    if let Some(n) = args.max_headers.or(file.max_headers) {
        b = b.max_headers(n);
    }
    if let Some(n) = args.max_body_bytes.or(file.max_body_bytes) {
        b = b.max_body_bytes(n);
    }
    if let Some(n) = args.max_connections.or(file.max_connections) {
        b = b.max_connections(n);
    }
    if let Some(n) = args.backlog.or(file.backlog) {
        b = b.backlog(n);
    }
    if let Some(rate) = args.accept_rate.or(file.accept_rate) {
        if rate.is_nan() || rate <= 0.0 {
            return Err(UsageError(
                "accept_rate must be a positive number of connections per second".into(),
            ));
        }
        let burst = args
            .accept_burst
            .or(file.accept_burst)
            .unwrap_or(rate.ceil() as u32);
        b = b.accept_rate(Some(megaconn::AcceptRate {
            per_second: rate,
            burst,
        }));
    }
    if let Some(n) = args.max_connections_per_ip.or(file.max_connections_per_ip) {
        b = b.max_connections_per_ip(Some(n));
    }
    if args.debug_connections || file.debug_connections == Some(true) {
        b = b.track_connections(true);
    }
    if args.access_log || file.access_log == Some(true) {
        b = b.access_log(true);
    }
    if args.no_keep_alive || file.keep_alive == Some(false) {
        b = b.keep_alive(false);
    }
    if let Some(v) = args
        .server_header
        .as_deref()
        .or(file.server_header.as_deref())
    {
        b = b.server_header(Some(v));
    }
    let (mut b, tls) = crate::tls::apply(
        b,
        crate::tls::TlsArgs {
            cert: args.tls_cert.as_ref().or(file.tls_cert.as_ref()),
            key: args.tls_key.as_ref().or(file.tls_key.as_ref()),
            self_signed: args.self_signed || file.self_signed == Some(true),
            listen: &tls_listen,
        },
    )?;
    let processes = args.processes.or(file.processes).unwrap_or(1);
    if processes == 0 {
        return Err(UsageError("processes must be at least 1".into()));
    }
    if args.worker_process.is_some() {
        // A worker process shares its ports with its siblings on purpose.
        b = b.reuse_port_shared(true);
    }
    let admin = match (args.admin, file.admin.as_deref()) {
        (Some(a), _) => Some(a),
        (None, Some(a)) => Some(crate::admin::parse_admin(a).map_err(UsageError)?),
        (None, None) => None,
    };
    Ok(Resolved {
        admin,
        tls,
        builder: b,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Human),
        processes,
    })
}

/// Runs `megaconn serve`: one server process, or a supervisor of several.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args)?;
    if resolved.processes > 1 && args.worker_process.is_none() {
        return crate::supervisor::run(args, serve_argv(), resolved.processes);
    }
    logging::init(resolved.log_format);
    let shared = match args.worker_process {
        Some(index) => Some((index, worker_process_setup()?)),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(resolved, shared))
}

/// The arguments after `serve`, to hand to worker processes unchanged.
fn serve_argv() -> Vec<std::ffi::OsString> {
    let all: Vec<_> = std::env::args_os().skip(1).collect();
    let at = all.iter().position(|a| a == "serve").map_or(0, |i| i + 1);
    all[at..].to_vec()
}

/// A worker process dies with its supervisor and publishes its counters into
/// the shared block the supervisor handed down.
fn worker_process_setup() -> anyhow::Result<SharedStats> {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    let fd: i32 = std::env::var(crate::shared_stats::FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .context("--worker-process is for the supervisor's use (no shared counter block given)")?;
    let slots: usize = std::env::var(crate::supervisor::SLOTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .context("no slot count for the shared counter block")?;
    SharedStats::inherited(fd, slots).context("cannot map the shared counter block")
}

/// Maps a bind error: configuration mistakes are usage errors (exit 2).
pub fn listen_error(e: megaconn::Error) -> anyhow::Error {
    match e {
        megaconn::Error::Config(msg) => anyhow::Error::new(UsageError(msg)),
        other => anyhow::Error::new(other),
    }
}

/// The server's listen addresses as URLs: `https://` for TLS listeners.
pub fn listen_urls(server: &megaconn::Server) -> Vec<String> {
    server
        .local_addrs()
        .iter()
        .map(|&a| {
            let scheme = if server.is_tls(a) { "https" } else { "http" };
            format!("{scheme}://{a}")
        })
        .collect()
}

async fn serve(resolved: Resolved, shared: Option<(usize, SharedStats)>) -> anyhow::Result<()> {
    // Signals are registered before anything else, so one that arrives during
    // start-up is seen (and shuts down cleanly) instead of killing the process.
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let mut hangups = hangups().context("cannot install the SIGHUP handler")?;
    let Resolved {
        builder,
        admin,
        tls,
        ..
    } = resolved;
    let server = builder.listen().map_err(listen_error)?;
    crate::say!(
        "megaconn serving on {} ({} workers, max_connections {})",
        listen_urls(&server).join(", "),
        server.workers(),
        server.max_connections()
    );
    let handle = server.handle();
    // Stops when dropped, after the main server. Worker processes of a
    // supervisor have none (they would contend for one port).
    let _admin = match shared {
        None => crate::admin::start(admin, crate::admin::Source::Server(handle.clone()))?,
        Some(_) => None,
    };
    let app = Demo::new(handle.clone());
    let serving = server.serve(app);
    tokio::pin!(serving);
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    let summary = loop {
        tokio::select! {
            result = &mut serving => break result?,
            _ = hangups.recv() => crate::tls::reload_on_sighup(tls.as_ref()),
            _ = publish.tick(), if shared.is_some() => {
                if let Some((slot, block)) = &shared {
                    block.publish(*slot, &handle.stats());
                }
            }
            name = signals.next() => {
                // A worker process leaves forcing to its supervisor: under
                // systemd the same SIGTERM reaches it twice (from the unit's
                // cgroup and forwarded by the supervisor).
                if handle.is_shutting_down() && shared.is_some() {
                    continue;
                }
                if handle.is_shutting_down() {
                    eprintln!("megaconn: second {name}: exiting now");
                    std::process::exit(1);
                }
                tracing::info!(signal = name, "shutting down gracefully (send it again to exit at once)");
                handle.shutdown();
            }
        }
    };
    if let Some((slot, block)) = &shared {
        block.publish(*slot, &handle.stats());
    }
    crate::say!(
        "megaconn stopped: {} connections accepted, {} requests; at shutdown {} closed cleanly, {} forced",
        summary.accepted, summary.requests, summary.finished, summary.forced
    );
    Ok(())
}

/// How often a worker process copies its counters to the shared block.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// SIGHUP, which reloads the TLS certificate (and no longer ends the process).
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// SIGINT and SIGTERM as one stream.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers.
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> ServeArgs {
        Wrapper::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn flags_parse() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--workers",
            "3",
            "--idle-timeout",
            "off",
            "--park-after",
            "500ms",
        ]);
        assert_eq!(a.listen.len(), 2);
        assert_eq!(a.workers, Some(3));
        assert_eq!(a.idle_timeout.map(|t| t.0), Some(None));
        assert_eq!(
            a.park_after.map(|t| t.0),
            Some(Some(Duration::from_millis(500)))
        );
    }

    #[test]
    fn unknown_config_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("megaconn.toml");
        std::fs::write(&path, "workers = 2\nidle_timeuot = \"5s\"\n").unwrap();
        let err = ConfigFile::load(&path).unwrap_err();
        assert!(err.0.contains("idle_timeuot"), "{}", err.0);
    }

    #[test]
    fn the_readme_config_example_parses() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Configuration file")
            .nth(1)
            .expect("README has a configuration file section");
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("the section has a TOML example");
        let file: ConfigFile = toml::from_str(example).unwrap();
        assert_eq!(file.tls_listen.map(|l| l.len()), Some(1));
    }

    #[test]
    fn tls_listen_adds_tls_listeners_next_to_cleartext_ones() {
        let mut a = parse(&["--listen", "127.0.0.1:1", "--tls-listen", "127.0.0.1:2"]);
        a.self_signed = true;
        let r = resolve(&a).unwrap();
        let dbg = format!("{:?}", r.builder);
        assert!(dbg.contains("127.0.0.1:1"), "{dbg}");
        assert!(dbg.contains("tls_listeners: [1]"), "{dbg}");
        // Only TLS listeners asked for: no default cleartext one.
        let mut a = parse(&["--tls-listen", "127.0.0.1:2"]);
        a.self_signed = true;
        let dbg = format!("{:?}", resolve(&a).unwrap().builder);
        assert!(!dbg.contains(DEFAULT_LISTEN), "{dbg}");
        assert!(dbg.contains("tls_listeners: [0]"), "{dbg}");
        // And a certificate is required.
        let a = parse(&["--tls-listen", "127.0.0.1:2"]);
        assert!(resolve(&a).unwrap_err().0.contains("--tls-cert"));
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("megaconn.toml");
        std::fs::write(
            &path,
            "workers = 2\nlisten = [\"127.0.0.1:9\"]\nidle_timeout = \"5s\"\n",
        )
        .unwrap();
        let mut a = parse(&["--workers", "4"]);
        a.config = Some(path);
        let r = resolve(&a).unwrap();
        let dbg = format!("{:?}", r.builder);
        assert!(dbg.contains("workers: 4"), "{dbg}");
        assert!(dbg.contains("127.0.0.1:9"), "{dbg}");
        assert!(dbg.contains("idle_timeout: Some(5s)"), "{dbg}");
    }
}
