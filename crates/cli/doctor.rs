//! `megaconn doctor`: reads the limits that decide how many connections this
//! host can hold, says for each whether it allows `--connections N`, and prints
//! the exact fixes (a sysctl.d drop-in, a `LimitNOFILE=` line). Exit code 0: the
//! host can hold N; 1: at least one check fails.

use std::fmt::Write as _;
use std::fs;

use serde::Serialize;

/// Kernel memory per established TCP socket with empty queues (struct sock,
/// inode, file, epoll entry, dentry): about 5 KB, measured in bench/RESULTS.md.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 5 * 1024;

/// megaconn's own memory per idle (parked) connection, rounded up from the
/// measured 15-56 B at a million (PSS to RSS) and 33-93 B at 15,000 (README, "The idle-memory
/// figures and how each was measured").
pub const MEGACONN_BYTES_PER_CONNECTION: u64 = 100;

/// File descriptors megaconn keeps free besides connections (the library's
/// `FD_HEADROOM`): listeners, logs, DNS, admin connections.
pub const FD_HEADROOM: u64 = 256;

/// The largest `fs.nr_open` the kernel takes (`sysctl_nr_open_max` on 64-bit
/// Linux): no process can have more open files, so no one process can
/// hold more connections than this less [`FD_HEADROOM`]; past it, split
/// them over processes (`--processes`). `doctor` used to suggest values
/// the kernel refuses (`fs.nr_open=137438953472` for 10^11).
pub const NR_OPEN_MAX: u64 = 1_073_741_816;

/// The help after the flags: what each check reads and why.
pub const CHECKS_HELP: &str = "\
Checks (each reads a kernel limit and compares it with what N connections need):

  open_files   RLIMIT_NOFILE of this process (soft/hard). Every connection is a
               file descriptor; megaconn raises the soft limit to the hard one,
               so the hard limit must be at least N + 256. Fix: LimitNOFILE= in
               the unit (deploy/systemd/megaconn.service), `ulimit -n` in a
               shell, or `megaconn serve --processes P` to split N over P
               processes.
  nr_open      fs.nr_open: the ceiling for any process's RLIMIT_NOFILE; raise it
               before LimitNOFILE can go past it.
  file_max     fs.file-max: open files for the whole system (clients on the
               same host count too).
  somaxconn    net.core.somaxconn: caps the listen backlog (serve --backlog,
               4096 by default); a smaller cap turns connect bursts into SYN
               retries.
  port_range   net.ipv4.ip_local_port_range: one client address can open one
               connection per local port to one server address, so a load
               generator on this host needs N / ports source addresses (hold
               --source 127.0.0.2-127.0.0.40). A warning only: the server itself
               uses no local ports. The printed drop-in leaves it out: widened
               to 1024-65535 on the server's host, outgoing connections would
               take the server's ports (8080, 9090) while it restarts; widen it
               on a load generator's host, or reserve those ports first
               (net.ipv4.ip_local_reserved_ports).
  tcp_mem      net.ipv4.tcp_mem (pages: low, pressure, high): socket buffer
               memory for all of TCP. Idle sockets hold none, but past `high`
               the kernel drops packets; N connections each with one page in
               flight need high >= N pages.
  conntrack    net.netfilter.nf_conntrack_max, when the nf_conntrack module is
               loaded: every tracked connection takes an entry, and a full table
               drops new connections (\"nf_conntrack: table full\"). Loaded, it
               tracks nothing in a network namespace until a rule there needs
               it (NAT, `-m conntrack`, a stateful nft rule; Linux 4.10+):
               doctor opens a loopback connection and reads
               nf_conntrack_count, and a table too small that tracks nothing
               here is a warning, not a failure.
  memory       MemAvailable from /proc/meminfo (in a container with a memory
               limit, the room left under it, if less) against N x (5 KiB of kernel
               memory per socket + 100 B of megaconn per idle connection):
               idle cleartext HTTP/1.1 or WebSocket connections. An idle TLS
               connection keeps its TLS session, ~2.7-3.0 KB more each, and an
               HTTP/2 one over TLS ~16 KB (README): count those apart.
               Loopback tests hold both ends on one host: twice the kernel part.
  migrate_req  net.ipv4.tcp_migrate_req (Linux 5.14+): with `serve --processes P`
               the workers share the port (SO_REUSEPORT); when one dies, the
               connections queued on its listening socket are reset unless this
               is 1, which moves them to a live worker. A warning only: one
               process has no other socket to move them to.

open_files is read from doctor's own process: run doctor the way megaconn runs
(e.g. `systemd-run --pty -p LimitNOFILE=1048576 megaconn doctor`, or inside the
container) to see the limit the server will get.

Exit status: 0 when every check passes (warnings allowed), 1 when one fails.";

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Enough for N.
    Ok,
    /// Not a limit for the server itself, but worth knowing.
    Warn,
    /// This host cannot hold N until it is fixed.
    Fail,
    /// Not applicable or not readable here.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier (JSON, tests).
    pub id: &'static str,
    /// What is read.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What this host has, as read.
    pub value: String,
    /// What N connections need.
    pub need: String,
    /// The fix, if any: a sentence.
    pub fix: Option<String>,
    /// The sysctl to set, if the fix is one: (`key`, `value`).
    #[serde(skip)]
    sysctl: Option<(&'static str, String)>,
}

/// What the kernel exposes; `None` where a file is missing or unreadable.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// RLIMIT_NOFILE (soft, hard).
    pub nofile: (u64, u64),
    /// fs.nr_open.
    pub nr_open: Option<u64>,
    /// fs.file-max.
    pub file_max: Option<u64>,
    /// net.core.somaxconn.
    pub somaxconn: Option<u64>,
    /// net.ipv4.ip_local_port_range.
    pub port_range: Option<(u64, u64)>,
    /// net.ipv4.tcp_mem (pages).
    pub tcp_mem: Option<[u64; 3]>,
    /// net.netfilter.nf_conntrack_max; `None`: module not loaded.
    pub conntrack_max: Option<u64>,
    /// Whether conntrack tracks connections in this network namespace
    /// ([`conntrack_tracks`]); `None`: not known.
    pub conntrack_tracks: Option<bool>,
    /// MemAvailable, bytes; inside a cgroup with a memory limit (a
    /// container), the smaller of it and the room left under the limit,
    /// which /proc/meminfo does not show (it reports the host's).
    pub mem_available: Option<u64>,
    /// MemTotal, bytes.
    pub mem_total: Option<u64>,
    /// net.ipv4.tcp_migrate_req; `None`: a kernel before 5.14 (no such key).
    pub migrate_req: Option<u64>,
    /// The page size.
    pub page_size: u64,
}

impl Host {
    /// Reads this host.
    pub fn read() -> Host {
        // SAFETY: getrlimit only writes the struct we pass.
        let nofile = unsafe {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            (lim.rlim_cur, lim.rlim_max)
        };
        let numbers = |path: &str| -> Option<Vec<u64>> {
            let text = fs::read_to_string(path).ok()?;
            text.split_whitespace().map(|v| v.parse().ok()).collect()
        };
        let one = |path: &str| numbers(path).and_then(|v| v.first().copied());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = |key: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        // SAFETY: sysconf has no memory effects.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as u64,
            _ => 4096,
        };
        Host {
            nofile,
            nr_open: one("/proc/sys/fs/nr_open"),
            file_max: one("/proc/sys/fs/file-max"),
            somaxconn: one("/proc/sys/net/core/somaxconn"),
            port_range: numbers("/proc/sys/net/ipv4/ip_local_port_range").and_then(
                |v| match v[..] {
                    [lo, hi] => Some((lo, hi)),
                    _ => None,
                },
            ),
            tcp_mem: numbers("/proc/sys/net/ipv4/tcp_mem").and_then(|v| v.try_into().ok()),
            conntrack_max: one("/proc/sys/net/netfilter/nf_conntrack_max"),
            conntrack_tracks: conntrack_tracks(),
            mem_available: match (mem("MemAvailable:"), own_cgroup_room()) {
                (Some(host), Some(cgroup)) => Some(host.min(cgroup)),
                (host, cgroup) => host.or(cgroup),
            },
            mem_total: mem("MemTotal:"),
            migrate_req: one("/proc/sys/net/ipv4/tcp_migrate_req"),
            page_size,
        }
    }
}

/// Whether conntrack tracks connections in this network namespace: its
/// count is above 0, or a loopback connection of doctor's own raises it.
/// The module loaded (its sysctls there) is not enough: since Linux 4.10 it
/// registers its hooks in a namespace only once a rule there needs them
/// (NAT, `-m conntrack`, a stateful nft rule), and until then a million
/// connections take no entry (a host holding them with
/// `nf_conntrack_max = 262144` was told it could not). `None`: the module
/// is not loaded, or the loopback connection could not be made.
fn conntrack_tracks() -> Option<bool> {
    let count = || -> Option<u64> {
        fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if count()? > 0 {
        return Some(true);
    }
    // Tracked, the connection's entry is confirmed by the time the
    // handshake is done (the SYN-ACK went through the hooks).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    let _client = std::net::TcpStream::connect(listener.local_addr().ok()?).ok()?;
    let _accepted = listener.accept().ok()?;
    Some(count()? > 0)
}

/// The memory left under this process's cgroup v2 limit (`memory.max` minus
/// `memory.current`), if it has one: a pod's limit, which also charges the
/// kernel's socket memory.
fn own_cgroup_room() -> Option<u64> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    cgroup_room(
        &fs::read_to_string(dir.join("memory.max")).ok()?,
        &fs::read_to_string(dir.join("memory.current")).ok()?,
    )
}

/// The room under a cgroup's `memory.max` given its `memory.current`
/// (`max`: no limit, `None`).
fn cgroup_room(max: &str, current: &str) -> Option<u64> {
    let max: u64 = max.trim().parse().ok()?;
    let current: u64 = current.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// The `LimitNOFILE=` value for N connections: N plus headroom, rounded up to
/// a power of two (1,000,000 → 1048576), at most [`NR_OPEN_MAX`].
pub fn nofile_for(n: u64) -> u64 {
    let need = n.saturating_add(FD_HEADROOM);
    need.checked_next_power_of_two()
        .unwrap_or(need)
        .min(NR_OPEN_MAX)
}

/// Memory N connections need: kernel + megaconn.
pub fn memory_for(n: u64) -> u128 {
    u128::from(n) * u128::from(KERNEL_BYTES_PER_SOCKET + MEGACONN_BYTES_PER_CONNECTION)
}

fn unknown() -> String {
    "unknown".into()
}

/// Every check for N connections on `host`.
pub fn checks(host: &Host, n: u64) -> Vec<Check> {
    let need_fds = n.saturating_add(FD_HEADROOM);
    let limit = nofile_for(n);
    let mut out = Vec::new();

    let (soft, hard) = host.nofile;
    out.push(Check {
        id: "open_files",
        name: "open files (RLIMIT_NOFILE soft/hard)",
        status: if hard >= need_fds { Status::Ok } else { Status::Fail },
        value: format!("{soft}/{hard}"),
        need: format!("hard >= {need_fds}"),
        fix: (hard < need_fds).then(|| {
            format!(
                "LimitNOFILE={limit} in the systemd unit, or `ulimit -n {limit}` before starting (as root: another user can raise the soft limit only up to the hard one, {hard}); or split over processes: `megaconn serve --processes {}`",
                need_fds.div_ceil(hard.saturating_sub(FD_HEADROOM).max(1))
            )
        }),
        sysctl: None,
    });

    let (status, fix, sysctl) = match host.nr_open {
        None => (Status::Skip, None, None),
        Some(v) if v >= need_fds => (Status::Ok, None, None),
        Some(_) if need_fds > NR_OPEN_MAX => (
            Status::Fail,
            Some(format!(
                "more than one process can have: the kernel takes fs.nr_open up to {NR_OPEN_MAX} (`sysctl fs.nr_open={NR_OPEN_MAX}`, capped there); split over processes: `megaconn serve --processes {}`",
                need_fds.div_ceil(NR_OPEN_MAX - FD_HEADROOM)
            )),
            Some(("fs.nr_open", NR_OPEN_MAX.to_string())),
        ),
        Some(_) => (
            Status::Fail,
            Some(format!(
                "sysctl fs.nr_open={limit} (before raising LimitNOFILE past it)"
            )),
            Some(("fs.nr_open", limit.to_string())),
        ),
    };
    out.push(Check {
        id: "nr_open",
        name: "fs.nr_open (per-process ceiling)",
        status,
        value: host.nr_open.map_or_else(unknown, |v| v.to_string()),
        need: format!(">= {need_fds}"),
        fix,
        sysctl,
    });

    let want = limit.saturating_mul(2);
    let (status, fix, sysctl) = match host.file_max {
        None => (Status::Skip, None, None),
        Some(v) if v >= need_fds => (Status::Ok, None, None),
        Some(_) => (
            Status::Fail,
            Some(format!(
                "sysctl fs.file-max={want} (room for clients on this host too)"
            )),
            Some(("fs.file-max", want.to_string())),
        ),
    };
    out.push(Check {
        id: "file_max",
        name: "fs.file-max (system-wide open files)",
        status,
        value: host.file_max.map_or_else(unknown, |v| v.to_string()),
        need: format!(">= {need_fds}"),
        fix,
        sysctl,
    });

    let (status, fix, sysctl) = match host.somaxconn {
        None => (Status::Skip, None, None),
        Some(v) if v >= 4096 => (Status::Ok, None, None),
        Some(_) => (
            Status::Warn,
            Some(
                "sysctl net.core.somaxconn=65535 (connect bursts queue instead of retrying)".into(),
            ),
            Some(("net.core.somaxconn", "65535".into())),
        ),
    };
    out.push(Check {
        id: "somaxconn",
        name: "net.core.somaxconn (listen backlog cap)",
        status,
        value: host.somaxconn.map_or_else(unknown, |v| v.to_string()),
        need: ">= 4096 (serve --backlog)".into(),
        fix,
        sysctl,
    });

    let (status, value, need, fix, sysctl) = match host.port_range {
        None => (Status::Skip, unknown(), String::new(), None, None),
        Some((lo, hi)) => {
            let ports = hi.saturating_sub(lo) + 1;
            let sources = n.div_ceil(ports.max(1));
            let need = format!("{sources} client address(es) for N");
            if n <= ports {
                (
                    Status::Ok,
                    format!("{lo}-{hi} ({ports} ports)"),
                    need,
                    None,
                    None,
                )
            } else {
                let wide = 65535 - 1024 + 1;
                let fewer = n.div_ceil(wide);
                (
                    Status::Warn,
                    format!("{lo}-{hi} ({ports} ports)"),
                    need,
                    Some({
                        let mut fix = format!(
                            "a load generator on this host needs {sources} source addresses (hold --source 127.0.0.2-127.0.0.{})",
                            (sources + 1).min(254)
                        );
                        if ports < wide {
                            fix.push_str(&format!("; widening the range (sysctl net.ipv4.ip_local_port_range=\"1024 65535\") cuts that to {fewer}, on a host that is not the server's (there, reserve its ports first: net.ipv4.ip_local_reserved_ports=8080,9090)"));
                        }
                        fix
                    }),
                    // Not in the printed drop-in: on the server's host a
                    // range down to 1024 hands its ports (8080, 9090) to
                    // outgoing connections, which then hold them while the
                    // server restarts; it helps a load generator only.
                    None,
                )
            }
        }
    };
    out.push(Check {
        id: "port_range",
        name: "net.ipv4.ip_local_port_range (ports per client address)",
        status,
        value,
        need,
        fix,
        sysctl,
    });

    let pages = n; // one page in flight per connection
    let (status, fix, sysctl) = match host.tcp_mem {
        None => (Status::Skip, None, None),
        Some([_, _, high]) if high >= pages => (Status::Ok, None, None),
        Some([low, pressure, _]) => {
            let value = format!(
                "{} {} {}",
                low.max(pages / 2),
                pressure.max(pages * 3 / 4),
                pages
            );
            (
                Status::Warn,
                Some(format!(
                    "sysctl net.ipv4.tcp_mem=\"{value}\" (idle sockets hold no buffers; this is for all of them being busy at once)"
                )),
                Some(("net.ipv4.tcp_mem", value)),
            )
        }
    };
    out.push(Check {
        id: "tcp_mem",
        name: "net.ipv4.tcp_mem (pages: low pressure high)",
        status,
        value: host.tcp_mem.map_or_else(unknown, |[a, b, c]| {
            format!(
                "{a} {b} {c} (high = {})",
                human_bytes(u128::from(c) * u128::from(host.page_size))
            )
        }),
        need: format!("high >= {pages} (one page per connection)"),
        fix,
        sysctl,
    });

    let want = n.saturating_add(n / 4);
    let raise = format!(
        "sysctl net.netfilter.nf_conntrack_max={want} (and the nf_conntrack hashsize module parameter to {}), or exempt the port with a NOTRACK rule",
        want / 4
    );
    let (status, value, fix, sysctl) = match (host.conntrack_max, host.conntrack_tracks) {
        (None, _) => (Status::Skip, "nf_conntrack not loaded: no table to fill".to_string(), None, None),
        (Some(v), _) if v >= n => (Status::Ok, v.to_string(), None, None),
        // Loaded, and tracking nothing here: no entry is taken until a
        // rule needs one, and then every connection takes one.
        (Some(v), Some(false)) => (
            Status::Warn,
            format!("{v} (tracking nothing in this network namespace)"),
            Some(format!(
                "no rule here makes conntrack track connections (a loopback connection took no entry), so none fills the table now; a NAT or stateful firewall rule (Docker's, kube-proxy's, `-m conntrack`) would make every connection take one: then {raise}"
            )),
            Some(("net.netfilter.nf_conntrack_max", want.to_string())),
        ),
        (Some(v), _) => (
            Status::Fail,
            v.to_string(),
            Some(raise),
            Some(("net.netfilter.nf_conntrack_max", want.to_string())),
        ),
    };
    out.push(Check {
        id: "conntrack",
        name: "net.netfilter.nf_conntrack_max (tracked connections)",
        status,
        value,
        need: format!(">= {n}"),
        fix,
        sysctl,
    });

    let need = memory_for(n);
    let (status, fix) = match host.mem_available {
        None => (Status::Skip, None),
        Some(avail) if u128::from(avail) >= need => (Status::Ok, None),
        Some(avail) => (
            Status::Fail,
            Some(format!(
                "this host can hold about {} connections in its available memory: add memory, or spread N over more hosts behind an L4 load balancer (deploy/README.md)",
                u128::from(avail) / u128::from(KERNEL_BYTES_PER_SOCKET + MEGACONN_BYTES_PER_CONNECTION)
            )),
        ),
    };
    out.push(Check {
        id: "memory",
        name: "memory (MemAvailable vs kernel 5 KiB + megaconn 100 B each; TLS ~3 KB more, h2 over TLS ~16 KB)",
        status,
        value: match (host.mem_available, host.mem_total) {
            (Some(a), Some(t)) => format!(
                "{} available of {}",
                human_bytes(a.into()),
                human_bytes(t.into())
            ),
            _ => unknown(),
        },
        need: human_bytes(need),
        fix,
        sysctl: None,
    });

    // A worker that dies (`serve --processes`) takes its listening socket's
    // accept queue with it: reset, unless the kernel may move those
    // connections to another socket of the SO_REUSEPORT group.
    let (status, fix, sysctl) = match host.migrate_req {
        None => (Status::Skip, None, None),
        Some(v) if v != 0 => (Status::Ok, None, None),
        Some(_) => (
            Status::Warn,
            Some(
                "with `serve --processes`: sysctl -w net.ipv4.tcp_migrate_req=1 (a dead worker's queued connections move to a live one instead of being reset)".into(),
            ),
            Some(("net.ipv4.tcp_migrate_req", "1".into())),
        ),
    };
    out.push(Check {
        id: "migrate_req",
        name: "net.ipv4.tcp_migrate_req (queued connections of a dead worker)",
        status,
        value: host.migrate_req.map_or_else(
            || "not in this kernel (before 5.14)".into(),
            |v| v.to_string(),
        ),
        need: "1 with serve --processes".into(),
        fix,
        sysctl,
    });
    out
}

/// `1.2 GiB`.
fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `1,000,000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The sysctl.d drop-in that fixes every failing or warning sysctl check.
pub fn sysctl_dropin(checks: &[Check], n: u64) -> Option<String> {
    let lines: Vec<String> = checks
        .iter()
        .filter(|c| c.status != Status::Ok)
        .filter_map(|c| c.sysctl.as_ref())
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    (!lines.is_empty()).then(|| {
        format!(
            "# /etc/sysctl.d/60-megaconn.conf: written by `megaconn doctor --connections {n}`\n{}\n",
            lines.join("\n")
        )
    })
}

/// The report `--json` prints.
#[derive(Debug, Serialize)]
struct Report<'a> {
    connections: u64,
    ready: bool,
    checks: &'a [Check],
    sysctl_dropin: Option<String>,
    limit_nofile: String,
}

/// Flags of `megaconn doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The number of concurrent connections to check this host for.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 1_000_000)]
    pub connections: u64,
    /// Print one JSON object (connections, ready, checks with id, status,
    /// value, need and fix, the sysctl drop-in and the LimitNOFILE line).
    #[arg(long)]
    pub json: bool,
}

/// Runs every check and prints the table (or JSON) and the fixes. Fails (exit
/// 1) when a check fails.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let n = args.connections;
    let host = Host::read();
    let checks = checks(&host, n);
    let ready = checks.iter().all(|c| c.status != Status::Fail);
    let dropin = sysctl_dropin(&checks, n);
    let nofile_fails = checks
        .iter()
        .any(|c| c.id == "open_files" && c.status == Status::Fail);
    let limit_line = nofile_fails.then(|| format!("LimitNOFILE={}", nofile_for(n)));
    let text = if args.json {
        let report = Report {
            connections: n,
            ready,
            checks: &checks,
            sysctl_dropin: dropin,
            limit_nofile: format!("LimitNOFILE={}", nofile_for(n)),
        };
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render(&checks, n, ready, dropin.as_deref(), limit_line.as_deref())
    };
    use std::io::Write as _;
    std::io::stdout().write_all(text.as_bytes())?;
    if ready {
        Ok(())
    } else {
        Err(NotReady.into())
    }
}

/// The host cannot hold N (exit 1, the report already said why).
#[derive(Debug, thiserror::Error)]
#[error("this host cannot hold the connections asked for (see the FAIL lines above)")]
pub struct NotReady;

/// The human report: one aligned row per check, then the fixes.
pub fn render(
    checks: &[Check],
    n: u64,
    ready: bool,
    dropin: Option<&str>,
    limit_line: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "megaconn doctor: can this host hold {} connections?\n",
        grouped(n)
    );
    let w_name = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let w_value = checks.iter().map(|c| c.value.len()).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<4}  {:<w_name$}  {:<w_value$}  need",
        "", "check", "value"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "{:<4}  {:<w_name$}  {:<w_value$}  {}",
            c.status.label(),
            c.name,
            c.value,
            c.need
        );
    }
    let fixes: Vec<&Check> = checks.iter().filter(|c| c.fix.is_some()).collect();
    if !fixes.is_empty() {
        let _ = writeln!(out, "\nFixes:");
        for c in &fixes {
            let _ = writeln!(
                out,
                "  {:<10}  {}",
                c.id,
                c.fix.as_deref().unwrap_or_default()
            );
        }
    }
    if let Some(d) = dropin {
        let _ = writeln!(out, "\nAs a sysctl.d drop-in (then `sysctl --system`):\n");
        for line in d.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    if let Some(l) = limit_line {
        let _ = writeln!(
            out,
            "\nIn the systemd unit's [Service] section (deploy/systemd/megaconn.service has it):\n\n    {l}"
        );
    }
    let verdict = if ready {
        format!("This host can hold {} connections.", grouped(n))
    } else {
        format!(
            "This host cannot hold {} connections: fix the FAIL lines.",
            grouped(n)
        )
    };
    let _ = writeln!(out, "\n{verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roomy() -> Host {
        Host {
            nofile: (1024, 1 << 21),
            nr_open: Some(1 << 21),
            file_max: Some(1 << 40),
            somaxconn: Some(65535),
            port_range: Some((1024, 65535)),
            tcp_mem: Some([1 << 20, 1 << 21, 1 << 22]),
            conntrack_max: None,
            conntrack_tracks: None,
            mem_available: Some(24 << 30),
            mem_total: Some(32 << 30),
            migrate_req: Some(1),
            page_size: 4096,
        }
    }

    fn status(checks: &[Check], id: &str) -> Status {
        checks.iter().find(|c| c.id == id).unwrap().status
    }

    #[test]
    fn a_roomy_host_holds_a_million() {
        let c = checks(&roomy(), 1_000_000);
        assert!(c.iter().all(|c| c.status != Status::Fail), "{c:#?}");
        assert_eq!(status(&c, "conntrack"), Status::Skip);
        assert_eq!(sysctl_dropin(&c, 1_000_000), None);
    }

    #[test]
    fn each_limit_fails_with_its_fix() {
        let host = Host {
            nofile: (1024, 524_288),
            nr_open: Some(524_288),
            file_max: Some(500_000),
            somaxconn: Some(128),
            port_range: Some((32768, 60999)),
            tcp_mem: Some([1000, 2000, 3000]),
            conntrack_max: Some(262_144),
            mem_available: Some(1 << 30),
            ..roomy()
        };
        let n = 1_000_000;
        let c = checks(&host, n);
        for id in ["open_files", "nr_open", "file_max", "conntrack", "memory"] {
            assert_eq!(status(&c, id), Status::Fail, "{id}");
        }
        for id in ["somaxconn", "port_range", "tcp_mem"] {
            assert_eq!(status(&c, id), Status::Warn, "{id}");
        }
        let dropin = sysctl_dropin(&c, n).unwrap();
        for line in [
            "fs.nr_open = 1048576",
            "fs.file-max = 2097152",
            "net.core.somaxconn = 65535",
            "net.ipv4.tcp_mem = 500000 750000 1000000",
            "net.netfilter.nf_conntrack_max = 1250000",
        ] {
            assert!(dropin.contains(line), "{line} missing from\n{dropin}");
        }
        // A server's host: widened, the range would take its ports.
        assert!(!dropin.contains("ip_local_port_range"), "{dropin}");
        let text = render(&c, n, false, Some(&dropin), Some("LimitNOFILE=1048576"));
        assert!(text.contains("LimitNOFILE=1048576"), "{text}");
        assert!(text.contains("cannot hold 1,000,000"), "{text}");
    }

    /// A conntrack table smaller than N that tracks nothing in this network
    /// namespace (no rule needs it: a loopback connection took no entry)
    /// is a warning that says when it would fill, its sysctl in the
    /// drop-in; tracking, or not known, a failure. It failed whenever the
    /// module was loaded: a host holding a million connections with
    /// `nf_conntrack_max = 262144`, none of them tracked, was told it could
    /// not hold them.
    #[test]
    fn a_conntrack_table_that_tracks_nothing_here_only_warns() {
        let small = |tracks| Host {
            conntrack_max: Some(262_144),
            conntrack_tracks: tracks,
            ..roomy()
        };
        let n = 1_000_000;
        let c = checks(&small(Some(false)), n);
        assert_eq!(status(&c, "conntrack"), Status::Warn);
        assert!(c.iter().all(|c| c.status != Status::Fail), "{c:#?}");
        let check = c.iter().find(|c| c.id == "conntrack").unwrap();
        assert!(check.value.contains("tracking nothing"), "{check:?}");
        let fix = check.fix.as_deref().unwrap();
        for said in ["NAT", "nf_conntrack_max=1250000"] {
            assert!(fix.contains(said), "{said:?} not in {fix}");
        }
        let dropin = sysctl_dropin(&c, n).unwrap();
        assert!(dropin.contains("net.netfilter.nf_conntrack_max = 1250000"));
        for tracks in [Some(true), None] {
            let c = checks(&small(tracks), n);
            assert_eq!(status(&c, "conntrack"), Status::Fail, "{tracks:?}");
        }
    }

    /// With `--processes`, a dead worker's queued connections are reset
    /// unless `tcp_migrate_req` is 1 (27 of 1,974 reconnects in a review):
    /// a warning with its sysctl, never a failure (one process does not
    /// need it); a kernel without the key skips.
    #[test]
    fn migrate_req_off_warns_with_its_sysctl() {
        let host = Host {
            migrate_req: Some(0),
            ..roomy()
        };
        let c = checks(&host, 1000);
        assert_eq!(status(&c, "migrate_req"), Status::Warn);
        let fix = c.iter().find(|c| c.id == "migrate_req").unwrap();
        let fix = fix.fix.as_deref().unwrap();
        assert!(
            fix.contains("sysctl -w net.ipv4.tcp_migrate_req=1"),
            "{fix}"
        );
        let dropin = sysctl_dropin(&c, 1000).unwrap();
        assert!(dropin.contains("net.ipv4.tcp_migrate_req = 1"), "{dropin}");
        assert!(c.iter().all(|c| c.status != Status::Fail), "{c:#?}");
        assert_eq!(status(&checks(&roomy(), 1000), "migrate_req"), Status::Ok);
        let old = Host {
            migrate_req: None,
            ..roomy()
        };
        assert_eq!(status(&checks(&old, 1000), "migrate_req"), Status::Skip);
    }

    #[test]
    fn memory_counts_kernel_and_megaconn_bytes() {
        assert_eq!(memory_for(1_000_000), 1_000_000 * 5220);
        assert_eq!(nofile_for(1_000_000), 1_048_576);
        let host = Host {
            mem_available: Some(5220 * 1000),
            ..roomy()
        };
        assert_eq!(status(&checks(&host, 1000), "memory"), Status::Ok);
        assert_eq!(status(&checks(&host, 1001), "memory"), Status::Fail);
    }

    #[test]
    fn rows_are_aligned() {
        let c = checks(&roomy(), 10);
        let text = render(&c, 10, true, None, None);
        let rows: Vec<&str> = text.lines().skip(2).take(c.len() + 1).collect();
        let col = |row: &str, what: &str| row.find(what).unwrap();
        let need_col = col(rows[0], "need");
        for (row, check) in rows[1..].iter().zip(&c) {
            assert_eq!(col(row, &check.need), need_col, "{text}");
        }
    }

    /// deploy/sysctl.d/60-megaconn.conf is what doctor asks for a million
    /// connections on a default kernel (and at least as much).
    #[test]
    fn a_cgroup_limit_is_room_under_it_and_max_is_none() {
        assert_eq!(cgroup_room("3221225472\n", "1073741824\n"), Some(2 << 30));
        assert_eq!(cgroup_room("max\n", "1073741824\n"), None);
        assert_eq!(cgroup_room("100\n", "200\n"), Some(0));
    }

    #[test]
    fn the_deploy_dropin_satisfies_doctor() {
        let file = include_str!("../../deploy/sysctl.d/60-megaconn.conf");
        // A key set, or (sized from memory by the kernel) commented out with
        // the value to set where the host's is lower.
        let get = |key: &str| -> Vec<u64> {
            file.lines()
                .find_map(|l| {
                    let l = l.strip_prefix('#').unwrap_or(l);
                    l.strip_prefix(key)?.trim_start().strip_prefix('=')
                })
                .unwrap_or_else(|| panic!("{key} missing"))
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        };
        let host = Host {
            nofile: (1024, 1_048_576),
            // Not set: the kernel's default.
            nr_open: Some(1_048_576),
            file_max: Some(get("fs.file-max")[0]),
            somaxconn: Some(get("net.core.somaxconn")[0]),
            port_range: Some({
                let r = get("net.ipv4.ip_local_port_range");
                (r[0], r[1])
            }),
            tcp_mem: Some(get("net.ipv4.tcp_mem").try_into().unwrap()),
            conntrack_max: Some(get("net.netfilter.nf_conntrack_max")[0]),
            ..roomy()
        };
        let c = checks(&host, 1_000_000);
        for check in &c {
            assert!(
                check.status == Status::Ok || check.id == "port_range",
                "{check:?}"
            );
        }
        let unit = include_str!("../../deploy/systemd/megaconn.service");
        assert!(unit.contains(&format!("LimitNOFILE={}", nofile_for(1_000_000))));
    }

    /// The drop-in only raises: it sets no key the kernel sizes from the
    /// host's memory (or whose default, `fs.nr_open`'s, is enough), whose
    /// value there may be above the file's. It set `fs.file-max = 2097152`
    /// and `tcp_mem = 500000 750000 1000000`, below what a 24 GiB host had
    /// (2466290, its default; 786432 1048576 1572864, raised by
    /// `bench/million.sh`): installing it lowered them.
    #[test]
    fn the_deploy_dropin_sets_no_key_sized_by_the_host() {
        let file = include_str!("../../deploy/sysctl.d/60-megaconn.conf");
        let set: Vec<&str> = file
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split('=').next())
            .map(str::trim)
            .collect();
        assert_eq!(
            set,
            ["net.core.somaxconn"],
            "a key whose default may be above the file's value is set, or ip_local_port_range (on the server's host it takes the server's ports)"
        );
    }
}
