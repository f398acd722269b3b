//! `megaconn doctor`: reads the kernel limits that decide how many connections
//! this host can hold, and says what to change.

use std::fs;

/// One check's verdict.
struct Check {
    name: &'static str,
    value: String,
    advice: Option<String>,
}

/// Runs every check and prints a table.
pub fn run() -> anyhow::Result<()> {
    let mut checks = Vec::new();

    // SAFETY: getrlimit only writes the struct we pass.
    let (soft, hard) = unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        (lim.rlim_cur, lim.rlim_max)
    };
    checks.push(Check {
        name: "open files (RLIMIT_NOFILE soft/hard)",
        value: format!("{soft}/{hard}"),
        advice: (hard < 1_048_576).then(|| {
            format!(
                "one process can hold about {} connections; raise LimitNOFILE= in the systemd unit (or `ulimit -n`) or run `megaconn serve --processes P`",
                hard.saturating_sub(256)
            )
        }),
    });
    let nr_open = read_u64("/proc/sys/fs/nr_open");
    checks.push(Check {
        name: "fs.nr_open (per-process ceiling)",
        value: fmt_opt(nr_open),
        advice: nr_open.filter(|n| *n < 1_048_576).map(|_| {
            "sysctl -w fs.nr_open=1048576 (needed before raising LimitNOFILE past it)".into()
        }),
    });
    let file_max = read_u64("/proc/sys/fs/file-max");
    checks.push(Check {
        name: "fs.file-max (system-wide)",
        value: fmt_opt(file_max),
        advice: file_max
            .filter(|n| *n < 2_100_000)
            .map(|_| "sysctl -w fs.file-max=2100000 (server and client sockets both count)".into()),
    });
    let somaxconn = read_u64("/proc/sys/net/core/somaxconn");
    checks.push(Check {
        name: "net.core.somaxconn (listen backlog cap)",
        value: fmt_opt(somaxconn),
        advice: somaxconn.filter(|n| *n < 4096).map(|_| {
            "sysctl -w net.core.somaxconn=65535 (bursts of connects queue instead of failing)"
                .into()
        }),
    });
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ports: Vec<u64> = range
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let span = match ports.as_slice() {
        [lo, hi] => hi.saturating_sub(*lo) + 1,
        _ => 0,
    };
    checks.push(Check {
        name: "net.ipv4.ip_local_port_range (client ports per source IP)",
        value: format!("{} ({span} ports)", range.trim()),
        advice: (span < 60_000).then(|| {
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"; load generators also need many source addresses (127.0.0.x)".into()
        }),
    });
    let tcp_mem = fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").unwrap_or_default();
    checks.push(Check {
        name: "net.ipv4.tcp_mem (pages: low pressure high)",
        value: tcp_mem.trim().to_string(),
        advice: None,
    });
    let mem_total_kib = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
    });
    checks.push(Check {
        name: "memory (kernel needs ~5 KB per socket; loopback counts both ends)",
        value: mem_total_kib.map_or("?".into(), |k| format!("{} GiB", k / 1024 / 1024)),
        advice: None,
    });

    let mut ok = true;
    for c in &checks {
        println!("{:<62} {}", c.name, c.value);
        if let Some(advice) = &c.advice {
            ok = false;
            println!("    -> {advice}");
        }
    }
    if ok {
        println!("\nThis host is ready for a million connections.");
    } else {
        println!("\nFix the lines marked -> before aiming for a million connections.");
    }
    Ok(())
}

fn read_u64(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}
