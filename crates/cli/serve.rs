//! `megaconn serve`: flags and the TOML config file, both made from the knob
//! table in knobs.rs, resolve into one set of settings (flags win), then the
//! server runs the demo app until SIGINT/SIGTERM. SIGHUP reloads the TLS
//! certificate and key files, and the config file's TLS handshake knobs
//! (tls.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::AdminAddr;
use crate::demo::Demo;
use crate::fanout::Publisher;
use crate::knobs;
use crate::logging::{self, LogFormat};
use crate::shared_stats::{Publishing, SharedStats};
use crate::UsageError;

/// The address `serve` listens on when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Flags of `megaconn serve`: every knob of [`knobs::KNOBS`], plus `--config`.
/// Every knob can also be set in the config file (same name, with `_` for
/// `-`); flags override the file.
#[derive(Debug, Default, Clone)]
pub struct ServeArgs {
    /// The knobs given as flags, by flag name.
    pub flags: knobs::Values,
    /// The config file.
    pub config: Option<PathBuf>,
    /// Internal: run as worker process N of a supervisor.
    pub worker_process: Option<usize>,
    /// `--upgrade`: take over from the server on the upgrade socket.
    pub upgrade: bool,
    /// `--check`: validate the configuration, probe its addresses, serve nothing, exit.
    pub check: bool,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(ServeArgs {
            flags: knobs::from_matches(m),
            config: m.get_one::<PathBuf>("config").cloned(),
            worker_process: m.get_one::<usize>("worker-process").copied(),
            upgrade: m.get_flag("upgrade"),
            check: m.get_flag("check"),
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML config file with any of these settings (the flag's name with `_` for `-`); flags win; unknown keys are errors.")
                .long_help(format!(
                    "TOML config file with any of these settings: the key is the flag's name with `_` for `-`, e.g.\n\n  listen = [\"0.0.0.0:80\"]\n  idle_timeout = \"30s\"\n  max_body_bytes = \"16MiB\"\n  no_keep_alive = true\n\nFlags win over the file; an unknown key is an error that names it. Durations are written {}, sizes {}.",
                    megaconn_load::units::DURATION_HELP,
                    megaconn_load::units::SIZE_HELP,
                )),
        )
        .arg(
            clap::Arg::new("upgrade")
                .long("upgrade")
                .action(clap::ArgAction::SetTrue)
                .help("Take over from the server running on --upgrade-socket: its listening sockets, idle cleartext HTTP/1.1 connections and idle cleartext framed (--tcp-listen) ones; it then drains the rest (WebSockets, busy framed, TLS, HTTP/2 close and reconnect) and exits.")
                .long_help("Take over from the server running on --upgrade-socket (give the same listen addresses): the running server passes its listening sockets, this one builds its servers on them and says it is ready, then the old one stops accepting and this one starts; the old one hands over its idle cleartext HTTP/1.1 connections and its idle cleartext framed ones (--tcp-listen, with their subscriptions; to a new process older than session 47, HTTP/1.1 only) and drains the rest as in a graceful shutdown. No connection is refused and idle cleartext HTTP/1.1 and framed clients do not reconnect; every other connection closes in the old process's drain and its client reconnects: every WebSocket (ws and wss: 1001), busy framed TCP (its goodbye frame, if any), TLS and HTTP/2 (the old process's `megaconn handed over` line counts them and, from 1,000 on without --shutdown-drain-rate, warns that they will reconnect together). A new process that fails before it says it is ready has taken no connection on the sockets it took over (the old one serves on; an address the old one did not have, another --admin say, it binds afresh before). It says it is ready only once everything that can fail is done (its runtimes, parking lots and worker threads made, its listening sockets registered with them): from then on it serves, whatever happens. Prints `megaconn upgrade done: ...` once it is ready for the next upgrade: that line, not `megaconn serving on` (printed before it is ready, while it serves nothing yet), is the signal that it serves. With --processes, each worker process takes over from the old one of the same index, and the supervisor prints `megaconn upgrade done: ...` once they all have."),
        )
        .arg(
            clap::Arg::new("check")
                .long("check")
                .action(clap::ArgAction::SetTrue)
                .help("Check the configuration (flags and --config file, certificates, keys, CRLs, every knob, addresses in use) without serving; print `configuration OK` and exit 0, or the errors and exit 1 (as `nginx -t`).")
                .long_help("Check the configuration as a start would, and stop before anything binds or listens: the flags and the --config file are read and every knob is validated, the TLS certificate, key, client CA and CRL files are loaded, the OpenTelemetry exporter is built as a start builds it (its endpoint parsed, from the flag or OTEL_EXPORTER_OTLP_ENDPOINT; connected to nothing), and the server's settings are checked as the library checks them before it listens (an admin address that is also a listen address is refused, as a start refuses it). Every address a start binds (listen and admin) is bound as a start binds it and closed at once, never listening: one in use by another program, or one this machine does not have, fails the check as it would fail a start; one held by a listener of this user that shares its port (SO_REUSEPORT), as a running megaconn's do, is expected (the server a reload keeps, an upgrade takes over) and noted; one held by another user's listener is warned about (a megaconn of another user cannot be told from another program: run the check as the service's user). Prints `configuration OK; would listen on ...` on stdout and exits 0, or the error a start would print (naming the flag, or the config file and its key) on stderr and exits 1 (JSON lines with --log-format json). Sockets systemd would pass and an OpenTelemetry collector that does not answer are found only at start. Use it before `systemctl reload` or a restart (deploy/README.md)."),
        )
        .args(knobs::KNOBS.iter().map(knobs::Knob::arg))
        .arg(
            clap::Arg::new("worker-process")
                .long("worker-process")
                .value_name("N")
                .hide(true)
                .value_parser(clap::value_parser!(usize)),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Reads a config file; errors name the file and the bad key.
pub fn load_config(path: &std::path::Path) -> Result<knobs::Values, UsageError> {
    read_config(path).map(|(_, values)| values)
}

/// [`load_config`], with the file's text.
pub fn read_config(path: &std::path::Path) -> Result<(String, knobs::Values), UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read config file {}: {e}", path.display())))?;
    let values = knobs::parse_file(&text)
        .map_err(|e| UsageError(format!("invalid config file {}: {e}", path.display())))?;
    Ok((text, values))
}

/// Settings resolved from flags over file over defaults.
#[derive(Debug)]
pub struct Resolved {
    /// The builder with every knob applied.
    pub builder: megaconn::Builder,
    /// Addresses megaconn binds itself beside sockets systemd passed
    /// (`tls_listen` with socket activation): refused during a restart,
    /// where the passed ones queue ([`warn_bound_beside_passed`]).
    pub bound_beside_passed: Vec<std::net::SocketAddr>,
    /// Worker processes (1: no supervisor).
    pub processes: usize,
    /// The admin listener; `None`: the default address.
    pub admin: Option<AdminAddr>,
    /// The TLS certificate's source, for SIGHUP; `None`: cleartext only.
    pub tls: Option<crate::tls::ServeTls>,
    /// Every listen address, cleartext and TLS.
    pub addrs: Vec<SocketAddr>,
    /// OpenTelemetry export, when tracing is on.
    pub otel: Option<megaconn::otel::OtlpConfig>,
    /// `--upgrade-socket`, if given (not `off`).
    pub upgrade_socket: Option<PathBuf>,
    /// Whether a newer process may take over from this one: not with
    /// `--upgrade-socket off` ([`UPGRADE_SOCKET_OFF`]).
    pub upgrades: bool,
    /// `--ws-ping-interval` and `--message-timeout` for the demo's WebSockets.
    pub demo_ws: crate::demo::DemoWs,
    /// The largest reply the framed listeners' framing can carry, so that
    /// the framed demo answers `error:` instead of an echo it cannot frame.
    pub framed_max_reply: usize,
    /// `--pid-file`; `None`: none.
    pub pid_file: Option<PathBuf>,
}

/// `--upgrade-socket off`: no control socket, and no upgrade in place, for
/// a server that is never upgraded so (a container whose root is read-only,
/// replaced by a new one on a rollout, as in deploy/kubernetes): it would
/// warn at every start that it cannot bind one. Nothing is bound, nothing
/// is said above debug, and `serve --upgrade` with it is a usage error.
pub const UPGRADE_SOCKET_OFF: &str = "off";

/// The upgrade control socket: `--upgrade-socket` or the default for the
/// server's first address; worker process `k` of a supervisor adds `.k`.
pub fn upgrade_socket(
    explicit: Option<&PathBuf>,
    first: Option<SocketAddr>,
    worker_process: Option<usize>,
) -> PathBuf {
    let path = explicit
        .cloned()
        .unwrap_or_else(|| knobs::default_upgrade_socket(first));
    match worker_process {
        Some(k) => {
            let mut name = path.into_os_string();
            name.push(format!(".{k}"));
            name.into()
        }
        None => path,
    }
}

/// Whether tracing is on, and how: the `--otel-*` knobs over the standard
/// `OTEL_*` variables. On when `--otel-endpoint` is given, or an OTLP
/// endpoint variable is set or `OTEL_TRACES_EXPORTER=otlp`, unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` (which a flag
/// overrides).
fn otel_config(
    knobs: knobs::OtelKnobs,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<megaconn::otel::OtlpConfig>, UsageError> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let exporter = var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || exporter.as_deref() == Some("none");
    let by_env = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || exporter.as_deref() == Some("otlp");
    if knobs.endpoint.is_none() && (disabled || !by_env) {
        return Ok(None);
    }
    let mut c = megaconn::otel::OtlpConfig::from_env().map_err(|e| UsageError(e.to_string()))?;
    if let Some(url) = knobs.endpoint {
        c = c.endpoint(url);
    }
    if let Some(p) = knobs.protocol {
        c = c.protocol(p);
    }
    if let Some(r) = knobs.sample_ratio {
        c = c.sample_ratio(r);
    }
    if let Some(n) = knobs.max_queue_spans {
        c = c.max_queue_spans(n);
    }
    match knobs.service_name {
        Some(name) => c = c.service_name(name),
        None if var("OTEL_SERVICE_NAME").is_none() => c = c.service_name("megaconn"),
        None => {}
    }
    Ok(Some(c))
}

/// One worker process's share of a whole-server limit `n` over `processes`:
/// rounded up, at least 1, so the processes together admit at least `n`
/// and none admits nothing.
fn process_share(n: u64, processes: usize) -> u64 {
    n.div_ceil(processes.max(1) as u64).max(1)
}

/// Merges flags over the config file over the defaults.
#[cfg(test)]
pub fn resolve(args: &ServeArgs) -> Result<Resolved, UsageError> {
    resolve_with(args, Vec::new())
}

/// [`resolve`], serving the listening sockets systemd passed too, over TLS
/// or not as their names say (`activation.rs` has the rule). With sockets
/// passed, no default address is bound.
#[cfg(test)]
fn resolve_with(
    args: &ServeArgs,
    inherited: Vec<crate::activation::Inherited>,
) -> Result<Resolved, UsageError> {
    resolve_from(args, config_values(args)?, inherited)
}

/// The config file's values (none without `--config`).
fn config_values(args: &ServeArgs) -> Result<knobs::Values, UsageError> {
    Ok(match &args.config {
        // A worker process takes the file as its supervisor read it, not as
        // it is now (see `supervisor::ConfigSnapshot`).
        Some(path) => match args
            .worker_process
            .and_then(|_| crate::supervisor::worker_config(path))
        {
            Some(values) => values?,
            None => load_config(path)?,
        },
        None => knobs::Values::new(),
    })
}

/// The settings from the flags over the config file's values, `file`,
/// read already, and the sockets systemd passed (`inherited`), served
/// over TLS or not as their names say (`activation.rs` has the rule).
fn resolve_from(
    args: &ServeArgs,
    file: knobs::Values,
    inherited: Vec<crate::activation::Inherited>,
) -> Result<Resolved, UsageError> {
    let path = args.config.as_deref();
    let origin = |name: &str| knobs::origin(name, &args.flags, path);
    let settings = knobs::apply_from(&args.flags, &file, path).map_err(UsageError)?;
    let knobs::Settings {
        builder: b,
        mut listen,
        tls_listen,
        tcp_listen,
        tcp_tls_listen,
        tcp_framing,
        demo_ws,
        tls_cert,
        tls_key,
        self_signed,
        tls_kx_groups,
        tls_max_handshakes,
        tls_handshake_rate_per_ip,
        tls_client_ca,
        tls_client_auth_optional,
        tls_client_crl,
        max_connections,
        accept_rate,
        accept_burst,
        // Chosen before (`prepare`: logging starts before the files load).
        log_format: _,
        processes,
        admin,
        otel,
        upgrade_socket,
        pid_file,
    } = settings;
    let otel = otel_config(otel, |name| std::env::var(name).ok())?;
    let upgrades = upgrade_socket
        .as_ref()
        .is_none_or(|path| path.as_os_str() != UPGRADE_SOCKET_OFF);
    let upgrade_socket = upgrade_socket.filter(|_| upgrades);
    if args.upgrade && !upgrades {
        return Err(UsageError(
            "--upgrade takes over through the running server's control socket, and upgrade_socket (--upgrade-socket) is off: give the running server's --upgrade-socket".into(),
        ));
    }
    if accept_burst.is_some() && accept_rate.is_none() {
        // It used to be dropped without a word: no limit applied.
        return Err(UsageError(
            "accept_burst (--accept-burst) is the burst of accept_rate, which is not set: \
             set accept_rate (--accept-rate, connections per second) too, or drop accept_burst"
                .into(),
        ));
    }
    if listen.is_empty()
        && tls_listen.is_empty()
        && tcp_listen.is_empty()
        && tcp_tls_listen.is_empty()
        && inherited.is_empty()
    {
        listen.push(DEFAULT_LISTEN.parse().expect("valid default address"));
    }
    let bound_beside_passed: Vec<std::net::SocketAddr> = if inherited.is_empty() {
        Vec::new()
    } else {
        listen
            .iter()
            .chain(&tls_listen)
            .chain(&tcp_listen)
            .chain(&tcp_tls_listen)
            .copied()
            .collect()
    };
    let (mut b, inherited_addrs) = add_inherited(
        b,
        &listen,
        inherited,
        tls_cert.is_some() || tls_key.is_some() || self_signed,
        !tls_listen.is_empty() || !tcp_tls_listen.is_empty(),
    )?;
    let framing = tcp_framing.unwrap_or_else(megaconn::Framing::lines);
    for &addr in &tcp_listen {
        b = b.listen_framed_on(addr, framing);
    }
    for &addr in &tcp_tls_listen {
        b = b.listen_framed_tls_on(addr, framing);
    }
    // The whole server's limits: a worker process enforces its share, where
    // each of P processes applying the whole value admitted P times it.
    let share = match (args.worker_process, processes) {
        (Some(_), Some(p)) => p,
        _ => 1,
    };
    if let Some(n) = max_connections {
        b = b.max_connections(process_share(n as u64, share) as usize);
    }
    if let Some(rate) = accept_rate {
        let burst = accept_burst.map_or(rate.ceil() as u64, u64::from);
        b = b.accept_rate(Some(megaconn::AcceptRate {
            per_second: rate / share as f64,
            // A rate past 2^32 per second (whose burst defaults to it)
            // would wrap to a small burst: it saturates instead.
            burst: u32::try_from(process_share(burst, share)).unwrap_or(u32::MAX),
        }));
    }
    if !self_signed && tls_cert.is_some() != tls_key.is_some() {
        // Named where each came from: `--tls-cert needs --tls-key` sent
        // an operator whose file set `tls_cert` looking for a flag.
        let (given, missing) = if tls_cert.is_some() {
            ("tls-cert", "tls-key")
        } else {
            ("tls-key", "tls-cert")
        };
        let given = origin(given);
        let missing = if given.starts_with("--") {
            format!("--{missing}")
        } else {
            format!("key `{}` (or --{missing})", missing.replace('-', "_"))
        };
        return Err(UsageError(format!("{given} needs {missing}")));
    }
    let (mut b, tls) = crate::tls::apply(
        b,
        crate::tls::TlsArgs {
            cert: tls_cert.as_ref(),
            key: tls_key.as_ref(),
            self_signed,
            listen: &tls_listen,
            framed: !tcp_tls_listen.is_empty(),
            kx_groups: tls_kx_groups.as_deref(),
            max_handshakes: tls_max_handshakes,
            handshake_rate_per_ip: tls_handshake_rate_per_ip,
            client_ca: tls_client_ca.as_ref(),
            client_auth_optional: tls_client_auth_optional,
            client_crl: tls_client_crl.as_ref(),
            processes: share,
            knobs: args.config.as_ref().map(|path| crate::tls::Reread {
                file: path.clone(),
                at_start: file.clone(),
                flags: args.flags.clone(),
            }),
        },
    )?;
    if args.worker_process.is_some() {
        // A worker process shares its ports with its siblings on purpose.
        b = b.reuse_port_shared(true);
    }
    Ok(Resolved {
        otel,
        pid_file,
        upgrade_socket,
        upgrades,
        demo_ws,
        framed_max_reply: framing.max_reply_bytes(),
        admin,
        tls,
        builder: b,
        bound_beside_passed,
        processes: processes.unwrap_or(1),
        addrs: listen
            .into_iter()
            .chain(tcp_listen)
            .chain(tcp_tls_listen)
            .chain(tls_listen)
            .chain(inherited_addrs)
            .collect(),
    })
}

/// Adds the `--listen` addresses and the sockets systemd passed to `b`;
/// returns the sockets' addresses. `certificate`: one is given (checked by
/// `tls::apply`); `tls_listen`: `--tls-listen` addresses are.
///
/// With no socket passed, the `--listen` addresses follow the library's
/// rule (a certificate serves every listener unless some are added for TLS
/// alone). With sockets passed, every listener's TLS is said explicitly, as
/// `activation.rs` decides: left to that rule, a socket named `http` would
/// be served over TLS whenever no socket was named for it.
fn add_inherited(
    mut b: megaconn::Builder,
    listen: &[std::net::SocketAddr],
    inherited: Vec<crate::activation::Inherited>,
    certificate: bool,
    tls_listen: bool,
) -> Result<(megaconn::Builder, Vec<std::net::SocketAddr>), UsageError> {
    use crate::activation::{others_are_tls, Named};
    if inherited.is_empty() {
        for &addr in listen {
            b = b.listen_on(addr);
        }
        return Ok((b, Vec::new()));
    }
    let others_tls = others_are_tls(&inherited, certificate, tls_listen);
    let mut any_tls = tls_listen;
    for &addr in listen {
        b = if others_tls {
            b.listen_tls_on(addr)
        } else {
            b.listen_on(addr)
        };
        any_tls |= others_tls;
    }
    let mut addrs = Vec::new();
    for socket in inherited {
        let tls = match socket.named() {
            Named::Tls if !certificate => {
                return Err(UsageError(format!(
                    "socket {} from systemd is served over TLS: give --tls-cert and --tls-key, or --self-signed",
                    socket.name
                )))
            }
            Named::Tls => true,
            Named::Cleartext => false,
            Named::Other => others_tls,
        };
        any_tls |= tls;
        addrs.push(socket.addr);
        b = if tls {
            b.tls_listener(socket.listener)
        } else {
            b.listener(socket.listener)
        }
        .map_err(|e| UsageError(format!("socket {} from systemd: {e}", socket.name)))?;
    }
    if certificate && !any_tls {
        return Err(UsageError(
            "a certificate is given but every socket from systemd is named http… (cleartext): name the TLS socket https (FileDescriptorName=), or drop the certificate".into(),
        ));
    }
    Ok((b, addrs))
}

/// Warns that `addrs`, bound by megaconn itself beside sockets systemd
/// passed, refuse connections while the service restarts: only a passed
/// socket outlives the process and queues them meanwhile. The fix is a
/// socket unit for them too (`FileDescriptorName=tls` for TLS,
/// deploy/README.md "Socket activation").
fn warn_bound_beside_passed(addrs: &[std::net::SocketAddr]) {
    if addrs.is_empty() {
        return;
    }
    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    tracing::warn!(
        addrs = %addrs.join(","),
        "these addresses are bound by megaconn itself beside the sockets systemd passed, and refuse connections while it restarts: pass listen/tls_listen addresses from a socket unit too (FileDescriptorName=tls for TLS) and drop them from the config; tcp_listen/tcp_tls_listen (framed TCP) cannot be passed yet, a passed socket is served as HTTP, so keep those in the config"
    );
}

/// Everything a start checks before it binds anything, shared by the start
/// and `serve --check` (one code path, so that a check passes exactly
/// when a start gets past its configuration): the config file read, the
/// log format chosen and logging started (so that the warnings of loading
/// certificates and CRLs are seen), every knob resolved with its files
/// loaded, the combinations that only a whole configuration shows, and the
/// library's own checks of its settings ([`megaconn::Builder::validate`]).
/// `inherited`: the sockets systemd passed (none for a check, which takes
/// nothing).
fn prepare(
    args: &ServeArgs,
    inherited: Vec<crate::activation::Inherited>,
) -> Result<Resolved, UsageError> {
    // Errors from here on come out in the chosen log format (main's last
    // words read it), not only those after the subscriber is up: a bad
    // certificate, `workers = 0` or a file's bad key printed plain text in
    // JSON mode. The flag's choice holds from the start; the file's once
    // it is read (a file that does not parse cannot say).
    let empty = knobs::Values::new();
    if let Some(format) = knobs::chosen_log_format(&args.flags, &empty) {
        logging::choose(format);
    }
    let activated = !inherited.is_empty();
    let file = config_values(args)?;
    let format = knobs::chosen_log_format(&args.flags, &file).unwrap_or(LogFormat::Human);
    logging::init_for(format, args.worker_process);
    let mut resolved = resolve_from(args, file, inherited)?;
    refuse_admin_on_a_listen_address(&mut resolved, args)?;
    let supervisor = resolved.processes > 1 && args.worker_process.is_none();
    if activated && resolved.processes > 1 {
        return Err(UsageError(
            "sockets passed by systemd are served by one process: drop --processes (each worker thread accepts from them)".into(),
        ));
    }
    if supervisor && resolved.addrs.iter().any(|a| a.port() == 0) {
        return Err(UsageError(
            "--processes needs explicit ports (port 0 would differ per process)".into(),
        ));
    }
    if let Some(path) = &resolved.pid_file {
        crate::pid_file::check_dir(path).map_err(|e| {
            UsageError(format!(
                "{}: {e}",
                knobs::origin("pid-file", &args.flags, args.config.as_deref())
            ))
        })?;
    }
    // A supervisor's connection limit is each worker process's share,
    // checked there (the whole one may be past one process's open files).
    let builder = match supervisor {
        true => resolved.builder.clone().max_connections(1),
        false => resolved.builder.clone(),
    };
    match builder.validate() {
        Ok(()) => Ok(resolved),
        Err(megaconn::Error::Config(e)) => Err(UsageError(e)),
        Err(e) => Err(UsageError(e.to_string())),
    }
}

/// The listen address (of `addrs`) that the admin address of `setting`
/// would meet at its bind ([`crate::in_use::overlap`]), if any; the admin
/// address with it.
fn admin_clash(
    setting: Option<AdminAddr>,
    addrs: &[SocketAddr],
) -> Option<(SocketAddr, SocketAddr)> {
    let admin = crate::admin::address(setting)?;
    let clash = addrs.iter().find(|&&a| crate::in_use::overlap(a, admin))?;
    Some((admin, *clash))
}

/// Refuses an admin address that is also a listen address (or one a
/// wildcard listen address covers): a single process's admin listener
/// failed to bind it after the main listeners had (`cannot start the
/// admin listener`, exit 1), and under `--processes` the supervisor's
/// admin listener bound it first and the worker processes' `SO_REUSEPORT`
/// listeners joined its port, the kernel then spreading the listen
/// address's connections over the workers and the admin server (which
/// answers them as admin requests: 404s, and `/metrics` to anyone on the
/// public port). The default admin address (none set) is dropped instead,
/// with a warning, as a single process already went on without it.
fn refuse_admin_on_a_listen_address(
    resolved: &mut Resolved,
    args: &ServeArgs,
) -> Result<(), UsageError> {
    let Some((admin, clash)) = admin_clash(resolved.admin, &resolved.addrs) else {
        return Ok(());
    };
    let b = &resolved.builder;
    let url = crate::announce::listen_url(clash, b.is_framed(clash), b.is_tls(clash));
    if resolved.admin.is_none() {
        tracing::warn!(%admin, listen = %url, "the default admin address is one this server listens on: no admin listener (give --admin ADDR for one, or --admin off)");
        resolved.admin = Some(AdminAddr::Off);
        return Ok(());
    }
    Err(UsageError(format!(
        "the admin address {admin} ({}) is one this server listens on ({url}): the admin listener needs an address of its own (a start fails to bind it, or with --processes takes a share of the listener's connections); give it another port (e.g. 127.0.0.1:9090), or `off`",
        knobs::origin("admin", &args.flags, args.config.as_deref())
    )))
}

/// What a start's binds would meet, found by binding every address it
/// binds (listen and admin) as it does and closing at once
/// ([`crate::in_use`]): an error for what makes a start fail, a warning
/// where the check cannot tell, a note for a running megaconn of this
/// user (`systemctl reload` runs the check beside it, `serve --upgrade`
/// takes it over).
fn check_addresses(resolved: &Resolved, args: &ServeArgs) -> Result<(), UsageError> {
    use crate::in_use::Holder;
    let admin = crate::admin::address(resolved.admin);
    let listen = resolved.addrs.iter().map(|&a| (a, false));
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    for (addr, is_admin) in listen.chain(admin.map(|a| (a, true))) {
        if addr.port() == 0 || seen.contains(&addr) {
            continue;
        }
        seen.push(addr);
        let v6_only = !is_admin && crate::in_use::needs_v6_only(addr, &resolved.addrs);
        let what = match is_admin {
            true if resolved.admin.is_none() => "the default admin address".to_owned(),
            true => format!(
                "the admin address ({})",
                knobs::origin("admin", &args.flags, args.config.as_deref())
            ),
            false => "a listen address".to_owned(),
        };
        // A taken default admin address is not a failure: a start serves
        // on without the admin listener, and says so.
        let optional = is_admin && resolved.admin.is_none();
        let fails = match optional {
            true => "a start serves without the admin listener",
            false => "a start fails",
        };
        let fix = format!(
            "`ss -ltnp 'sport = :{}'` names it: stop it, or choose another port",
            addr.port()
        );
        let euid = crate::in_use::euid();
        let problem = match crate::in_use::probe(addr, v6_only) {
            Holder::Free => None,
            Holder::Sharing => {
                tracing::info!(%addr, "{addr}, {what}, is held by a listener of this user that shares its port (SO_REUSEPORT), as megaconn's do: the running megaconn, which a reload (SIGHUP) keeps serving and `serve --upgrade` takes over from; a start beside it fails (address in use) until it stops");
                None
            }
            Holder::Other { uid: Some(uid) } if uid == euid => Some(format!(
                "{addr}, {what}, is in use by another program of this user, one that does not share its port as megaconn's listeners do: {fails} (address in use); {fix}"
            )),
            Holder::Other { uid: Some(uid) } => {
                // Perhaps the megaconn about to be reloaded or replaced:
                // warned, not refused.
                tracing::warn!(%addr, "{addr}, {what}, is in use by a listener of uid {uid}, not this user's (uid {euid}): {fails} (address in use) as this user. A megaconn of another user (the unit's DynamicUser) cannot be told from another program here: run the check as the service's user to know (`systemctl reload` does). If it is not that megaconn, {fix}");
                None
            }
            Holder::Other { uid: None } => Some(format!(
                "{addr}, {what}, is in use by a socket that does not listen (a connection's local port, or one bound without listening): {fails} (address in use); {fix}"
            )),
            Holder::Unbindable(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(%addr, "{addr}, {what}: binding it needs a privilege this check lacks ({e}; a port below 1024 needs CAP_NET_BIND_SERVICE, which the systemd unit gives): {fails} as this user");
                None
            }
            Holder::Unbindable(e) => Some(format!(
                "{addr}, {what}, cannot be bound ({e}: an address this machine does not have?): {fails}"
            )),
        };
        match problem {
            Some(message) if optional => tracing::warn!(%addr, "{message}"),
            Some(message) => errors.push(message),
            None => {}
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(UsageError(errors.join("; "))),
    }
}

/// `serve --check`: [`prepare`] without keeping anything bound or taking
/// anything, the addresses a start binds probed ([`check_addresses`]),
/// then `configuration OK` and what a start would listen on.
fn check(args: &ServeArgs) -> Result<(), UsageError> {
    let resolved = prepare(args, Vec::new())?;
    // The OpenTelemetry exporter, built as a start builds it (the
    // endpoint's URL, the protocol's client) and stopped: it connects to
    // nothing until a span is exported. A malformed endpoint from
    // `OTEL_EXPORTER_OTLP_ENDPOINT` (the flag's is checked as it is read)
    // used to pass the check and fail the start.
    if let Some(config) = &resolved.otel {
        let tracing = megaconn::otel::Tracing::otlp(config.clone())
            .map_err(|e| UsageError(format!("cannot set up OpenTelemetry tracing: {e}")))?;
        tracing.shutdown();
    }
    check_addresses(&resolved, args)?;
    let b = &resolved.builder;
    let urls: Vec<String> = resolved
        .addrs
        .iter()
        .map(|&a| crate::announce::listen_url(a, b.is_framed(a), b.is_tls(a)))
        .collect();
    let file = match &args.config {
        Some(path) => format!("; config file {}", path.display()),
        None => String::new(),
    };
    crate::say!(
        "configuration OK; would listen on {}{file}",
        urls.join(", ")
    );
    Ok(())
}

/// `serve --check` found the configuration invalid: exit 1, as `nginx -t`
/// (a start exits 2 for the same error, `UsageError`). The message is the
/// start's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub UsageError);

/// Runs `megaconn serve`: one server process, or a supervisor of several;
/// with `--check`, only [`check`].
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.check {
        return check(&args).map_err(|e| CheckFailed(e).into());
    }
    // In the flags' log format, an error taking systemd's sockets too.
    if let Some(format) = knobs::chosen_log_format(&args.flags, &knobs::Values::new()) {
        logging::choose(format);
    }
    let inherited = crate::activation::take_from_env().map_err(UsageError)?;
    let mut resolved = prepare(&args, inherited)?;
    if resolved.processes > 1 && args.worker_process.is_none() {
        return crate::supervisor::run(args, serve_argv(), resolved);
    }
    warn_bound_beside_passed(&resolved.bound_beside_passed);
    let shared = match args.worker_process {
        Some(index) => {
            // Before the first subscription: this process's topics count
            // in its slot of the audience table every worker process reads.
            crate::shared_audience::join(index)?;
            Some((index, worker_process_setup()?))
        }
        None => None,
    };
    // A worker process's publish channel to its supervisor (fanout.rs).
    let channel = match args.worker_process {
        Some(_) => crate::fanout::inherited_fd(),
        None => None,
    };
    if args.worker_process.is_some() && channel.is_none() {
        tracing::warn!("no publish channel from the supervisor: publishes reach this worker process's connections only");
    }
    let control_path = upgrade_socket(
        resolved.upgrade_socket.as_ref(),
        resolved.addrs.first().copied(),
        args.worker_process,
    );
    // A worker process serves its slot only with the slot's lock: taken
    // over with the listening sockets, or claimed before binding afresh
    // (see `SlotLock`).
    let mut slot = None;
    let take_over = if args.upgrade {
        let (mut take_over, listeners) = crate::upgrade::take_over(&control_path)?;
        slot = take_over.take_slot();
        if slot.is_none() && args.worker_process.is_some() {
            // The old process had none (an older megaconn): claim it now.
            // It serves the listeners it took over whatever happens here.
            slot = crate::upgrade::SlotLock::claim(&control_path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "took over without the worker process slot's lock");
                None
            });
        }
        // The admin listener's socket to the admin listener, the others to
        // the server; the old admin listener's, bound to an address this one
        // does not have, is closed (see `TakeOver::sort`).
        let admin_addr = crate::admin::address(resolved.admin);
        // A main one this process would not serve refuses the take-over
        // (exit 2), before the old process is told anything.
        let (admin, main) = take_over.sort(listeners, &resolved.addrs, admin_addr)?;
        resolved.builder = resolved.builder.adopt_listeners(main);
        Some((take_over, admin))
    } else {
        // With upgrades off, one generation serves each slot: no lock.
        if args.worker_process.is_some() && resolved.upgrades {
            slot = crate::upgrade::SlotLock::claim(&control_path)?;
        }
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(
        resolved,
        shared,
        channel,
        take_over,
        args.worker_process,
        slot,
    ))
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
        .map(|&a| crate::announce::listen_url(a, server.is_framed(a), server.is_tls(a)))
        .collect()
}

async fn serve(
    resolved: Resolved,
    shared: Option<(usize, SharedStats)>,
    channel: Option<std::os::fd::OwnedFd>,
    take_over: Option<(crate::upgrade::TakeOver, Vec<std::net::TcpListener>)>,
    worker_process: Option<usize>,
    // Held until the control socket takes it, or the process exits.
    mut slot: Option<crate::upgrade::SlotLock>,
) -> anyhow::Result<()> {
    // Signals are registered before anything else, so one that arrives during
    // start-up is seen (and shuts down cleanly) instead of killing the process.
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let mut hangups = hangups().context("cannot install the SIGHUP handler")?;
    let Resolved {
        builder,
        admin,
        tls,
        otel,
        upgrade_socket: explicit_socket,
        upgrades,
        demo_ws,
        framed_max_reply,
        pid_file,
        ..
    } = resolved;
    let tracing = match otel {
        Some(config) => Some(
            megaconn::otel::Tracing::otlp(config).context("cannot set up OpenTelemetry tracing")?,
        ),
        None => None,
    };
    let builder = match &tracing {
        Some(t) => builder.tracing(t.clone()),
        None => builder,
    };
    // The demo's WebSockets (/ws, /ws/chat) are native routes, which park
    // and so need a connection of their own: don't invite browsers on an
    // HTTP/2 connection (TLS) to open them on a stream (RFC 8441), which
    // those routes would refuse with 501.
    let builder = builder.http2_enable_connect_protocol(false);
    let builder = crate::upgrade::fail_worker_start(builder);
    // Before the server starts: a worker process binding afresh joins its
    // port's `SO_REUSEPORT` group as the start's last step, and the kernel
    // queues connections for it from then on.
    let channel = channel
        .map(crate::fanout::Channel::open)
        .transpose()
        .context("cannot use the publish channel")?;
    let mut server = builder.listen().map_err(listen_error)?;
    let handle = server.handle();
    let control_path = upgrade_socket(
        explicit_socket.as_ref(),
        Some(server.local_addr()),
        worker_process,
    );
    // Said once the server has started (its sockets listen then, a worker
    // process's too: a supervisor counts a worker process that said it as
    // serving), and before it is told to run.
    let serving = crate::announce::serving_line(
        &listen_urls(&server),
        format_args!(
            "{}, max_connections {}",
            crate::announce::count(server.workers() as u64, "worker", "workers"),
            server.max_connections()
        ),
    );
    // Stops when dropped, after the main server, or at an upgrade's
    // hand-over (the new process serves it then). Worker processes of a
    // supervisor have none (they would contend for one port).
    let (take_over, admin_sockets) = match take_over {
        Some((t, sockets)) => (Some(t), sockets),
        None => (None, Vec::new()),
    };
    // Publishes reach this process's connections, and with a channel every
    // other worker process's too.
    let hub = server.hub();
    let publisher = match channel {
        Some(channel) => Publisher::worker(hub, channel),
        None => Publisher::local(hub),
    };
    let admin = match shared {
        None => crate::admin::bind(admin, admin_sockets)?,
        Some(_) => None,
    };
    let admin_bound = admin.as_ref().map(|a| (a.handle(), a.local_addr()));
    // The old process accepts until told ('R', `finish`), this one only
    // after: what can fail (every runtime, parking lot, thread and
    // listener's registration, the admin server's too) is made before, and
    // what comes after cannot fail. So a process that fails before it told
    // the old one has taken no connection (see `upgrade.rs`), and one that
    // told it serves; in between, connections wait in the kernel's queues.
    let admin = match admin {
        Some(admin) => start_admin(admin, &handle, &publisher, take_over.is_some())?,
        None => None,
    };
    let app = Demo::new(handle.clone(), publisher.clone(), demo_ws);
    let framed = crate::demo::FramedDemo {
        publisher: publisher.clone(),
        publish_rate: demo_ws.publish,
        server: handle.clone(),
        max_reply: framed_max_reply,
    };
    crate::upgrade::before_start(&control_path);
    // Dropped on an error below, it stops its workers unserved.
    let started = server
        .framed(framed)
        .start(app)
        .context("cannot start the server")?;
    // The control socket for the next upgrade: once the server has started
    // (a process whose start failed offers nothing to take over, and a
    // worker process's sockets listen only from then), before the serving
    // line; or (taking over) once the old process has handed its parked
    // connections over, announced by `megaconn upgrade done`. Nothing
    // between here and the run can fail, so a hand-over only ever meets a
    // server that runs. Bound before the start (as it was), a `serve
    // --upgrade` run during the start-up took the listeners and said it was
    // ready; a start failing then left the hand-over waiting for parked
    // connections from workers that never ran, the exit waiting for the
    // hand-over, and the process never exited (upgrade_cli's
    // `a_take_over_during_a_start_that_fails_...`). Now such a take-over
    // finds nothing (exit 3: run it again once this one says it serves) and
    // a failed start exits with its error.
    let mut control = None;
    let mut control_ready = None;
    // Binding the control socket again, after it failed (see `rebind`).
    let mut rebind = Rebind::new();
    if !upgrades {
        tracing::debug!("upgrade_socket is off: no upgrade control socket, `serve --upgrade` cannot take over from this server");
    } else if take_over.is_none() {
        control = crate::upgrade::listen_for_upgrades(&control_path, &handle, &mut slot);
        if control.is_none() && slot.is_some() {
            rebind.schedule();
        }
    }
    // The admin server's address is said only if it started.
    let admin_bound = admin_bound.filter(|_| admin.is_some());
    if let (Some(control), Some((admin_handle, _))) = (&control, &admin_bound) {
        control.also(admin_handle.clone());
    }
    // The pid file names this process once it listens, before it says so
    // (a script that waited for the line finds the file); a worker process
    // writes none (its supervisor does). Taking over, once the old process
    // was told (below). Removed, if still this process's, when this
    // function returns.
    let pid_file = pid_file.filter(|_| worker_process.is_none());
    let mut _pid_file = match (&pid_file, &take_over) {
        (Some(path), None) => write_pid_file(path, false)?,
        _ => None,
    };
    crate::say!("{serving}");
    let status = serving;
    if let Some((_, addr)) = admin_bound {
        crate::admin::say_address(addr);
    }
    let upgraded = match take_over {
        Some(take_over) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let upgraded = take_over.finish(handle.clone(), control_path.clone(), tx)?;
            control_ready = Some(rx);
            crate::upgrade::before_run(&control_path);
            Some(upgraded)
        }
        None => None,
    };
    if let (Some(path), Some(_)) = (&pid_file, &upgraded) {
        _pid_file = write_pid_file(path, true)?;
    }
    // Taking over, `MAINPID=` and `READY=1` come with `megaconn upgrade
    // done` (`readiness::took_over`): until then the old process is the
    // service's main one, and this one serves nothing yet.
    if upgraded.is_none() {
        crate::readiness::ready(&status);
    }
    // From here nothing fails: both servers accept.
    let _admin = admin.map(crate::admin::Started::run);
    let serving = started.run();
    // Only now may `megaconn upgrade done` say that this process serves.
    if let Some(upgraded) = upgraded {
        upgraded.send();
    }
    tokio::pin!(serving);
    // Ends with the process (the runtime goes with it).
    tokio::spawn(drain_progress(handle.clone()));
    let mut publishing = shared.map(|(slot, block)| Publishing::new(slot, block, handle.clone()));
    let summary = loop {
        tokio::select! {
            summary = &mut serving => break summary,
            _ = hangups.recv() => {
                crate::readiness::reloading();
                crate::tls::reload_on_sighup(tls.as_ref());
                crate::readiness::ready(&status);
            }
            ready = async { control_ready.as_mut().expect("guarded").await }, if control_ready.is_some() => {
                control_ready = None;
                match ready {
                    Ok(Ok(socket)) => {
                        if let Some(admin) = &_admin {
                            socket.also(admin.handle.clone());
                        }
                        socket.keep(slot.take());
                        if let Err(e) = socket.serve(handle.clone()) {
                            tracing::warn!(error = %e, "cannot serve the upgrade control socket");
                            // Nothing can take over from it: bind it anew.
                            slot = socket.release();
                            rebind.schedule();
                        } else {
                            if rebind.failures > 0 {
                                tracing::info!(path = %control_path.display(), attempts = rebind.failures + 1, "upgrade control socket bound: a next upgrade can take over from this process");
                            }
                            rebind = Rebind::new();
                            control = Some(socket);
                        }
                    }
                    // Logged where it failed (said too, at a take-over);
                    // no answer: the binding thread panicked.
                    Ok(Err(_)) | Err(_) => rebind.schedule(),
                }
            }
            () = async { control.as_ref().expect("guarded").lost().await }, if control.is_some() => {
                // Its thread ended, its listener gone (logged) or by a
                // panic: bind the control socket anew, as after a failed
                // bind, and hand it the slot lock.
                // The old name goes meanwhile, so that a take-over finds
                // nothing to take over from at once instead of waiting on
                // a socket nothing accepts on.
                let lost = control.take().expect("guarded");
                slot = lost.release();
                drop(lost);
                // A process shutting down binds none (nor says it will): it
                // is leaving, and after a hand-over the name is the newer
                // process's.
                if !handle.is_shutting_down() {
                    rebind.schedule();
                }
            }
            () = async { rebind.at.as_mut().expect("guarded").await }, if rebind.at.is_some() && !handle.is_shutting_down() => {
                // Off the event loop: binding may stop at a test gate.
                rebind.at = None;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let path = control_path.clone();
                // A thread that cannot be had now (at the process's or the
                // user's limit) is tried for again later: `thread::spawn`
                // would panic, ending the serve loop.
                let spawned = std::thread::Builder::new()
                    .name("megaconn-rebind".into())
                    .spawn(move || {
                        let _ = tx.send(crate::upgrade::ControlSocket::bind(&path));
                    });
                match spawned {
                    Ok(_) => control_ready = Some(rx),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a thread to bind the upgrade control socket");
                        rebind.schedule();
                    }
                }
            }
            () = async { publishing.as_mut().expect("guarded").due().await }, if publishing.is_some() => {
                if let Some(publishing) = &mut publishing {
                    publishing.look(publisher.counts());
                }
            }
            (name, ask) = signals.next() => {
                // A worker process leaves forcing to its supervisor: under
                // systemd the same SIGTERM reaches it twice (from the unit's
                // cgroup and forwarded by the supervisor).
                //
                // "Second" counts signals, not the server's state: after an
                // upgrade handed this process's work over, it is already
                // draining, and the operator's one SIGTERM to the old
                // process must not cut the drain (or the hand-over) short.
                match ask {
                    Ask::Repeat | Ask::Force if publishing.is_some() => continue,
                    Ask::Repeat => {
                        log_repeat(name);
                        continue;
                    }
                    Ask::Force => {
                        crate::announce::last_words(format_args!("megaconn: second {name}: exiting now"));
                        if let Some(control) = &control {
                            control.remove_name_now();
                        }
                        std::process::exit(1);
                    }
                    Ask::Drain => {}
                }
                if handle.is_shutting_down() {
                    tracing::info!(signal = name, "already draining; send it again, a second or more later, to exit at once");
                    continue;
                }
                let draining = crate::announce::Draining {
                    left: handle.connections_open(),
                    messages: handle.message_connections(),
                    drain_rate: handle.shutdown_drain_rate(),
                };
                tracing::info!(signal = name, connections = draining.left, message_connections = draining.messages, "shutting down gracefully (send it again, a second or more later, to exit at once)");
                if let Some(warning) = draining.storm_warning() {
                    tracing::warn!(signal = name, "shutting down: {warning}");
                }
                crate::readiness::stopping();
                handle.shutdown();
            }
        }
    };
    if let Some(publishing) = &publishing {
        publishing.last();
    }
    if let Some(tracing) = tracing {
        // Sends the last spans (waits up to the export timeout).
        tracing.shutdown();
    }
    // Removes the control socket's name, if it is still ours, and a worker
    // process's slot lock file, if it never handed the slot over.
    drop(control);
    if let Some(slot) = slot.take() {
        slot.retire();
    }
    crate::say!(
        "{}; at shutdown {} closed cleanly, {} forced",
        crate::announce::stopped_line(None, &handle.stats()),
        summary.finished,
        summary.forced
    );
    Ok(())
}

/// Writes the pid file at `path` once the server listens. A fresh start
/// that cannot is a failed start (it has served nothing yet); `taken_over`:
/// this process took over from an older one, which it has told already,
/// and serves whatever happens: the failure is logged.
pub fn write_pid_file(
    path: &std::path::Path,
    taken_over: bool,
) -> anyhow::Result<Option<crate::pid_file::PidFile>> {
    match crate::pid_file::PidFile::write(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if !taken_over => {
            Err(anyhow::Error::new(e)
                .context(format!("cannot write the pid file {}", path.display())))
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot write the pid file; serving without it");
            Ok(None)
        }
    }
}

/// How often a draining process says how far it got ([`drain_progress`]).
const DRAIN_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Once the server's shutdown began (a signal's, or an upgrade's
/// hand-over), logs every [`DRAIN_PROGRESS_EVERY`] how many connections are
/// left and how many closed (or moved) since, until none is left. During an
/// upgrade's drain the admin listener is the new process's already, so
/// `megaconn_shutdown_drain_pending` on `/metrics` is the new process's
/// (0): this log is the only view of the old process's drain.
async fn drain_progress(handle: megaconn::ServerHandle) {
    handle.shutdown_started().await;
    let at_start = handle.connections_open();
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + DRAIN_PROGRESS_EVERY,
        DRAIN_PROGRESS_EVERY,
    );
    loop {
        every.tick().await;
        let left = handle.connections_open();
        if left == 0 {
            return;
        }
        let closed = at_start.saturating_sub(left);
        tracing::info!(
            left,
            closed,
            pending = handle.stats().shutdown_drain_pending,
            "draining: {left} left, {closed} closed (or handed over) since the drain began"
        );
    }
}

/// Starts the admin server `admin` (accepting nothing yet) for this
/// process's server. Taking over, a failure is an error, before the old
/// process is told (it serves on, its admin listener too); otherwise it is
/// logged and the process serves without one, as ever.
fn start_admin(
    admin: crate::admin::Bound,
    handle: &megaconn::ServerHandle,
    publisher: &Publisher,
    taking_over: bool,
) -> anyhow::Result<Option<crate::admin::Started>> {
    let source = crate::admin::Source::Server(handle.clone(), publisher.clone());
    match admin.start(source) {
        Err(e) if taking_over => {
            Err(anyhow::Error::new(e).context("cannot start the admin server"))
        }
        start => Ok(crate::admin::logged(start)),
    }
}

/// Binding the control socket again, with a growing back-off, after it
/// failed (a worker process's first bind, or any bind at or after a
/// take-over) or was lost ([`crate::upgrade::ControlSocket::lost`]): without
/// one nothing can take over from the process, and a worker process of a
/// supervisor holds its slot's lock ([`crate::upgrade::SlotLock`]) until a
/// control socket hands it over, so no upgrade could ever take over its
/// slot (the new worker process would find nothing to take over from, then
/// the slot taken, and be given up), upgrade after upgrade. (A process's
/// first bind that fails otherwise is a configuration mistake, reported.)
struct Rebind {
    /// When to try next; `None`: no try pending.
    at: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Failed binds so far.
    failures: u32,
}

/// First delay before binding the control socket again.
const REBIND_START: Duration = Duration::from_millis(100);

/// Longest delay between binds of the control socket (each failure logs).
const REBIND_MAX: Duration = Duration::from_secs(60);

impl Rebind {
    fn new() -> Rebind {
        Rebind {
            at: None,
            failures: 0,
        }
    }

    /// The last bind failed, or the control socket was lost: try again
    /// after the back-off.
    fn schedule(&mut self) {
        let delay = crate::upgrade::backoff(REBIND_START, self.failures, REBIND_MAX);
        self.failures += 1;
        tracing::warn!(
            attempts = self.failures,
            retry_in_ms = delay.as_millis() as u64,
            "no upgrade control socket: binding it again (until then no upgrade can take over from this process, nor a worker process's slot)"
        );
        self.at = Some(Box::pin(tokio::time::sleep(delay)));
    }
}

/// SIGHUP, which reloads the TLS certificate (and no longer ends the process).
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// A SIGINT or SIGTERM this soon after the first is that one delivered
/// again, not an operator asking twice: GNU `timeout` signals its child,
/// then the child's whole process group; Ctrl-C in a shell and systemd's
/// `KillMode=` reach every process of a group or cgroup, a supervisor
/// included, which forwards it too. It used to force an exit (`timeout 10
/// megaconn serve` skipped the drain).
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// What a SIGINT or SIGTERM asks for, by when it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The first: drain gracefully.
    Drain,
    /// Within [`REPEAT_WINDOW`] of the first: the first again; ignored.
    Repeat,
    /// Later: stop at once.
    Force,
}

impl Ask {
    /// What a signal at `now` asks for, the first having come at `first`.
    fn of(first: Option<std::time::Instant>, now: std::time::Instant) -> Ask {
        match first {
            None => Ask::Drain,
            Some(first) if now.saturating_duration_since(first) < REPEAT_WINDOW => Ask::Repeat,
            Some(_) => Ask::Force,
        }
    }
}

/// SIGINT and SIGTERM as one stream.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    /// When the first came.
    first: Option<std::time::Instant>,
}

impl Signals {
    /// Registers the handlers.
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            first: None,
        })
    }

    /// The next signal's name, and what it asks for.
    pub async fn next(&mut self) -> (&'static str, Ask) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        let now = std::time::Instant::now();
        let ask = Ask::of(self.first, now);
        self.first.get_or_insert(now);
        (name, ask)
    }
}

/// Logs a signal that came again within [`REPEAT_WINDOW`] of the first.
pub fn log_repeat(name: &str) {
    tracing::info!(
        signal = name,
        "the same signal again within {REPEAT_WINDOW:?} of the first (as from GNU timeout, a process group or a cgroup): ignored; send it again later to stop at once"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The first signal drains, one within the window repeats it, one
    /// later forces.
    #[test]
    fn a_signal_asks_by_when_it_came() {
        let first = std::time::Instant::now();
        assert_eq!(Ask::of(None, first), Ask::Drain);
        assert_eq!(Ask::of(Some(first), first), Ask::Repeat);
        let soon = first + REPEAT_WINDOW - Duration::from_millis(1);
        assert_eq!(Ask::of(Some(first), soon), Ask::Repeat);
        assert_eq!(Ask::of(Some(first), first + REPEAT_WINDOW), Ask::Force);
    }

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
        assert_eq!(
            a.flags["listen"],
            knobs::Value::Addrs(vec![
                "127.0.0.1:1".parse().unwrap(),
                "[::1]:2".parse().unwrap()
            ])
        );
        assert_eq!(a.flags["workers"], knobs::Value::Count(3));
        assert_eq!(a.flags["idle-timeout"], knobs::Value::Duration(None));
        assert_eq!(
            a.flags["park-after"],
            knobs::Value::Duration(Some(Duration::from_millis(500)))
        );
    }

    /// `--max-connections` and `--accept-rate` (and its burst) are for the
    /// whole server: each of P worker processes takes 1/P, rounded up, where
    /// each took the whole and the server admitted P times it. The
    /// supervisor itself, and a single process, keep the whole.
    #[test]
    fn a_worker_process_takes_its_share_of_the_whole_servers_limits() {
        let argv = [
            "--processes",
            "4",
            "--max-connections",
            "10",
            "--accept-rate",
            "100",
            "--accept-burst",
            "7",
        ];
        let config = |args: &ServeArgs| format!("{:?}", resolve(args).unwrap().builder);
        let whole = config(&parse(&argv));
        assert!(whole.contains("max_connections: Some(10)"), "{whole}");
        assert!(
            whole.contains("AcceptRate { per_second: 100.0, burst: 7 }"),
            "{whole}"
        );
        let mut worker = parse(&argv);
        worker.worker_process = Some(3);
        let share = config(&worker);
        assert!(share.contains("max_connections: Some(3)"), "{share}");
        assert!(
            share.contains("AcceptRate { per_second: 25.0, burst: 2 }"),
            "{share}"
        );
        // Never rounded down to nothing.
        assert_eq!(process_share(1, 4), 1);
        assert_eq!(process_share(0, 4), 1);
        assert_eq!(process_share(9, 1), 9);
    }

    /// A rate of 2^32 per second or more defaults its burst to itself,
    /// past what the burst holds: it saturates, not wraps to a small one.
    #[test]
    fn a_burst_past_u32_saturates() {
        let args = parse(&["--accept-rate", "5000000000"]);
        let builder = format!("{:?}", resolve(&args).unwrap().builder);
        assert!(
            builder.contains(&format!("burst: {}", u32::MAX)),
            "{builder}"
        );
    }

    #[test]
    fn unknown_config_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("megaconn.toml");
        std::fs::write(&path, "workers = 2\nidle_timeuot = \"5s\"\n").unwrap();
        let err = load_config(&path).unwrap_err();
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
        let file = knobs::parse_file(example).unwrap();
        assert!(matches!(&file["tls-listen"], knobs::Value::Addrs(a) if a.len() == 1));
    }

    #[test]
    fn message_timeout_reaches_the_demos_websockets() {
        let r = resolve(&parse(&["--message-timeout", "5s"])).unwrap();
        let five = Some(Some(std::time::Duration::from_secs(5)));
        assert_eq!(r.demo_ws.message_timeout, five);
        let r = resolve(&parse(&["--message-timeout", "off"])).unwrap();
        assert_eq!(r.demo_ws.message_timeout, Some(None));
        let r = resolve(&parse(&[])).unwrap();
        assert_eq!(r.demo_ws.message_timeout, None, "the library's default");
    }

    #[test]
    fn tls_listen_adds_tls_listeners_next_to_cleartext_ones() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--tls-listen",
            "127.0.0.1:2",
            "--self-signed",
        ]);
        let r = resolve(&a).unwrap();
        let dbg = format!("{:?}", r.builder);
        assert!(dbg.contains("127.0.0.1:1"), "{dbg}");
        assert!(dbg.contains("tls_listeners: [1]"), "{dbg}");
        // Only TLS listeners asked for: no default cleartext one.
        let a = parse(&["--tls-listen", "127.0.0.1:2", "--self-signed"]);
        let dbg = format!("{:?}", resolve(&a).unwrap().builder);
        assert!(!dbg.contains(DEFAULT_LISTEN), "{dbg}");
        assert!(dbg.contains("tls_listeners: [0]"), "{dbg}");
        // And a certificate is required.
        let a = parse(&["--tls-listen", "127.0.0.1:2"]);
        assert!(resolve(&a).unwrap_err().0.contains("--tls-cert"));
    }

    /// `--tcp-tls-listen` adds a framed listener over TLS (the demo's
    /// framing), leaving `--listen` ones cleartext; it needs a certificate.
    #[test]
    fn tcp_tls_listen_adds_a_framed_tls_listener() {
        let (http, framed): (std::net::SocketAddr, std::net::SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let a = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--tcp-tls-listen",
            "127.0.0.1:2",
            "--self-signed",
        ]);
        let r = resolve(&a).unwrap();
        assert!(r.builder.is_framed(framed) && r.builder.is_tls(framed));
        assert!(!r.builder.is_framed(http) && !r.builder.is_tls(http));
        let a = parse(&["--tcp-tls-listen", "127.0.0.1:2"]);
        let err = resolve(&a).unwrap_err().0;
        assert!(
            err.contains("--tcp-tls-listen") && err.contains("--tls-cert"),
            "{err}"
        );
    }

    /// Sockets from systemd: `https` without a certificate is refused by
    /// name; with one, `--listen` addresses next to a socket named `http`
    /// are TLS (nothing else is named for it).
    #[test]
    fn inherited_sockets_say_their_tls_explicitly() {
        let socket = |name: &str| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            crate::activation::Inherited {
                name: name.into(),
                addr: listener.local_addr().unwrap(),
                listener,
            }
        };
        let err = resolve_with(&parse(&[]), vec![socket("https")]).unwrap_err();
        assert!(err.0.contains("socket https"), "{}", err.0);
        let a = parse(&["--listen", "127.0.0.1:1", "--self-signed"]);
        let r = resolve_with(&a, vec![socket("http")]).unwrap();
        let dbg = format!("{:?}", r.builder);
        assert!(dbg.contains("tls_listeners: [0]"), "{dbg}");
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
        assert_eq!(r.addrs, ["127.0.0.1:9".parse().unwrap()]);
    }

    #[test]
    fn otel_is_on_by_flag_or_endpoint_variable_and_flags_win() {
        use knobs::OtelKnobs;
        let none = |_: &str| None;
        assert!(otel_config(OtelKnobs::default(), none).unwrap().is_none());
        let flag = OtelKnobs {
            endpoint: Some("http://127.0.0.1:4317".into()),
            sample_ratio: Some(0.5),
            ..OtelKnobs::default()
        };
        let c = otel_config(flag.clone(), none)
            .unwrap()
            .expect("on by the flag");
        assert_eq!(c.ratio(), 0.5);
        let env = |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4317".to_string())
        };
        assert!(otel_config(OtelKnobs::default(), env).unwrap().is_some());
        let disabled = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317".to_string()),
            "OTEL_SDK_DISABLED" => Some("true".to_string()),
            _ => None,
        };
        assert!(otel_config(OtelKnobs::default(), disabled)
            .unwrap()
            .is_none());
        assert!(
            otel_config(flag, disabled).unwrap().is_some(),
            "the flag wins"
        );
    }

    /// Every knob's example resolves into a server configuration (with the
    /// other knobs it needs), TLS files included.
    #[test]
    fn every_knob_example_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        // The self-signed certificate serves as the client CA too, and
        // signs the revocation list.
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&generated.cert, &generated.key_pair)
        .unwrap();
        let crl_file = dir.path().join("crl.pem");
        std::fs::write(&crl_file, crl.pem().unwrap()).unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let crl_file = crl_file.to_str().unwrap();
        for knob in knobs::KNOBS {
            let mut argv = vec![format!("--{}", knob.name)];
            match knob.name {
                "tls-cert" | "tls-key" => {
                    argv = vec![
                        "--tls-cert".into(),
                        cert.into(),
                        "--tls-key".into(),
                        key.into(),
                    ]
                }
                // TLS knobs need a certificate.
                "tls-listen"
                | "tcp-tls-listen"
                | "tls-kx-groups"
                | "tls-max-handshakes"
                | "tls-handshake-rate-per-ip" => {
                    argv.extend([knob.example.into(), "--self-signed".into()])
                }
                // Client-certificate knobs need TLS, and a CA file.
                "tls-client-ca" => argv.extend([cert.into(), "--self-signed".into()]),
                "tls-client-auth" | "tls-client-crl" => {
                    let value = if knob.name == "tls-client-crl" {
                        crl_file
                    } else {
                        knob.example
                    };
                    argv.extend([
                        value.into(),
                        "--tls-client-ca".into(),
                        cert.into(),
                        "--self-signed".into(),
                    ])
                }
                "accept-burst" => {
                    argv.extend([knob.example.into(), "--accept-rate".into(), "10".into()])
                }
                _ if knob.shape != knobs::Shape::Switch => argv.push(knob.example.into()),
                _ => {}
            }
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let r = resolve(&parse(&argv)).unwrap_or_else(|e| panic!("--{}: {e}", knob.name));
            assert!(!r.addrs.is_empty());
        }
    }
}
