//! What the process is and what it uses, for `/metrics`: the
//! `megaconn_build_info{version}` gauge and the `process_*` series of the
//! Prometheus client libraries' conventions (Go's `collectors.NewProcessCollector`,
//! Python's `ProcessCollector`), read from `/proc` at scrape time only.
//!
//! | metric | type | from |
//! |---|---|---|
//! | `megaconn_build_info{version}` | gauge, always 1 | this crate's version |
//! | `process_cpu_seconds_total` | counter | `/proc/PID/stat` utime + stime |
//! | `process_resident_memory_bytes` | gauge | `/proc/PID/stat` rss × page size |
//! | `process_open_fds` | gauge | `poll(2)` over this process's descriptor table (another process's are not counted: see [`ProcessStats::read`]) |
//! | `process_max_fds` | gauge | `/proc/PID/limits`, "Max open files" (soft) |
//! | `process_start_time_seconds` | gauge | `/proc/PID/stat` starttime + `/proc/stat` btime |
//!
//! Nothing here runs per connection or per request: a scrape reads a few
//! small files, and counts the process's descriptors (the kernel keeps no
//! count) with `poll(2)` over its descriptor table, which costs in
//! proportion to the table, not by listing `/proc/self/fd` as the Go
//! client does (see `open_fds_of_this_process` for why). Where `/proc` cannot be read
//! (not mounted, another OS) the `process_*` series are left out and only
//! `megaconn_build_info` is written.

use std::fmt;
use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Why a process's figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A `/proc` file could not be read (the process exited, or `/proc` is
    /// not mounted).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A `/proc` file did not read as the kernel writes it.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: &'static str,
    },
}

/// One process's figures, as the `process_*` series carry them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    /// User and system CPU time spent, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`u64::MAX`: unlimited).
    pub max_fds: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads the figures of process `pid` (`None`: this process) from
    /// `/proc`, and this process's open descriptors with `poll(2)`
    /// (every descriptor below the limit asked at once, with a zero timeout:
    /// no listing of `/proc/self/fd`). Another process's descriptors are
    /// not counted (`open_fds` and `max_fds` are 0 for it): the only way is
    /// listing `/proc/PID/fd`, as the Go and Python clients do, which costs
    /// the kernel an inode and a dentry (~0.9 KB of slab) per descriptor,
    /// kept while that process lives, and ~2-5 us each per listing (19,007
    /// descriptors: 40-236 ms, debug build, busy 2-core machine,
    /// 2026-12-06): ~0.9 GB and seconds a scrape for a million connections
    /// over worker processes.
    pub fn read(pid: Option<u32>) -> Result<ProcessStats, ProcessError> {
        let dir = match pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}")),
            None => PathBuf::from("/proc/self"),
        };
        let stat_path = dir.join("stat");
        let stat = read(&stat_path)?;
        let stat = Stat::parse(&stat).ok_or(ProcessError::Parse {
            path: stat_path,
            what: "the fields after the command name",
        })?;
        let ticks = clock_ticks();
        let limits_path = dir.join("limits");
        let max_fds = max_open_files(&read(&limits_path)?).ok_or(ProcessError::Parse {
            path: limits_path,
            what: "a \"Max open files\" line",
        })?;
        let (open_fds, max_fds) = match pid {
            None => (open_fds_of_this_process()?, max_fds),
            Some(_) => (0, 0),
        };
        Ok(ProcessStats {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_memory_bytes: stat.rss_pages.saturating_mul(page_size()),
            open_fds,
            max_fds,
            start_time_seconds: boot_time()? + stat.start_ticks as f64 / ticks,
        })
    }
}

/// This process's open descriptors, counted by `poll(2)` with a zero
/// timeout over every slot of its descriptor table (`FDSize` of
/// `/proc/self/status`), 4,096 at a time (at most the open-file limit): a slot with no open file comes
/// back `POLLNVAL`. Listing `/proc/self/fd` instead, as the client
/// libraries do, made the kernel build a proc inode and a dentry for each
/// descriptor (measured: 19,007 descriptors grew `proc_inode_cache` by
/// 19,018 objects of 696 B and `dentry` by 15,750 of 192 B, kept while the
/// process lives): at a million connections ~0.9 GB of kernel memory after
/// the first scrape, more than the connections themselves. `poll` with a
/// zero timeout registers no wait and allocates nothing past its copy of
/// the batch: the same 19,006 descriptors counted in 2.9-3.1 ms (debug
/// build), the slab unchanged, where the listing took 40-236 ms.
pub(crate) fn open_fds_of_this_process() -> Result<u64, ProcessError> {
    /// Descriptors polled at once, at most.
    const BATCH: usize = 4096;
    let path = std::path::Path::new("/proc/self/status");
    let slots = read(path)?
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or(ProcessError::Parse {
            path: path.to_owned(),
            what: "an FDSize line",
        })?;
    // `poll` refuses more descriptors than the open-file limit (`EINVAL`),
    // and the table can be larger than the limit: one grown before the
    // limit was lowered (`prlimit`, or a shell's `ulimit -n` before its
    // `exec`), or holding a descriptor inherited above it. Each batch is
    // held to the limit, else the count failed, and with it every
    // `process_*` series (and the count of an accept out of descriptors,
    // `conn/accept.rs`).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let batch = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => usize::try_from(limit.rlim_cur).map_or(BATCH, |l| BATCH.min(l.max(1))),
        _ => BATCH,
    };
    let mut fds = Vec::with_capacity(batch.min(slots));
    let mut open = 0u64;
    let mut first = 0;
    while first < slots {
        let end = (first + batch).min(slots);
        fds.clear();
        fds.extend((first..end).map(|fd| libc::pollfd {
            fd: fd as libc::c_int,
            events: 0,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds, no more
        // than RLIMIT_NOFILE (`batch`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ProcessError::Read {
                path: "poll(2)".into(),
                source,
            });
        }
        open += fds
            .iter()
            .filter(|p| p.revents & libc::POLLNVAL == 0)
            .count() as u64;
        first = end;
    }
    Ok(open)
}

fn read(path: &std::path::Path) -> Result<String, ProcessError> {
    std::fs::read_to_string(path).map_err(|source| ProcessError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The fields of `/proc/PID/stat` read here (proc(5); numbered from 1).
struct Stat {
    /// Field 14, in clock ticks.
    utime: u64,
    /// Field 15, in clock ticks.
    stime: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    start_ticks: u64,
    /// Field 24, in pages.
    rss_pages: u64,
}

impl Stat {
    /// Field 2, the command name, is in parentheses and may hold spaces and
    /// parentheses itself: the fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let after = &text[text.rfind(')')? + 1..];
        // After the name: field 3 (state) is the first.
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            rss_pages: field(24)?,
        })
    }
}

/// The soft limit of `/proc/PID/limits`' "Max open files" line.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// When the machine booted, in seconds since the Unix epoch (`/proc/stat`'s
/// `btime`).
fn boot_time() -> Result<f64, ProcessError> {
    let path = std::path::Path::new("/proc/stat");
    let text = read(path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s as f64)
        .ok_or(ProcessError::Parse {
            path: path.to_owned(),
            what: "a btime line",
        })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: as in `clock_ticks`.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// `megaconn_build_info` and the `process_*` series as a
/// `prometheus_client` collector: register it on a registry without a
/// prefix (the `process_*` names are the conventions', and it writes
/// `megaconn_build_info` whole), or pass it to
/// [`render_with`](super::metrics::render_with);
/// [`ServerHandle::render_metrics`](crate::ServerHandle::render_metrics)
/// includes it for this process.
///
/// With several processes serving one server (the CLI's `serve
/// --processes`), [`ProcessCollector::summed`] adds the CPU and memory of
/// each up, as the server's other totals are added, and
/// `process_start_time_seconds` is the first process's. `process_open_fds`
/// and `process_max_fds` stay this process's own: another's descriptors
/// could only be counted by listing `/proc/PID/fd`, whose cost
/// ([`ProcessStats::read`]) a million connections would make ~0.9 GB of
/// kernel memory; each worker's connections are in
/// `megaconn_connections_open`.
#[derive(Debug, Clone, Default)]
pub struct ProcessCollector {
    /// Other processes whose figures are added to this one's.
    others: Vec<u32>,
}

impl ProcessCollector {
    /// This process's figures.
    pub fn this_process() -> ProcessCollector {
        ProcessCollector::default()
    }

    /// This process's figures plus those of `others` (each read at the
    /// scrape; one that cannot be read then, having exited, is left out).
    pub fn summed(others: impl IntoIterator<Item = u32>) -> ProcessCollector {
        ProcessCollector {
            others: others.into_iter().collect(),
        }
    }

    /// The figures now: this process's, plus the others' that can be read;
    /// `None` when this process's cannot.
    pub fn read(&self) -> Option<ProcessStats> {
        let mut total = ProcessStats::read(None).ok()?;
        self.add_others(&mut total);
        Some(total)
    }

    /// Adds the CPU and memory of each other process that can be read now.
    fn add_others(&self, total: &mut ProcessStats) {
        for &pid in &self.others {
            if let Ok(s) = ProcessStats::read(Some(pid)) {
                total.cpu_seconds += s.cpu_seconds;
                total.resident_memory_bytes += s.resident_memory_bytes;
            }
        }
    }
}

/// The version `megaconn_build_info` carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        {
            let mut m = e.encode_descriptor(
                "megaconn_build_info",
                "Always 1; the megaconn library's version in its label.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(m.encode_family(&[("version", VERSION)])?)?;
        }
        let Some(s) = self.read() else {
            return Ok(());
        };
        ConstCounter::new(s.cpu_seconds).encode(e.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        ConstGauge::new(s.resident_memory_bytes as f64).encode(e.encode_descriptor(
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.open_fds as f64).encode(e.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.max_fds as f64).encode(e.encode_descriptor(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.start_time_seconds).encode(e.encode_descriptor(
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command name with spaces and parentheses does not shift the
    /// fields (proc(5) example line, name changed).
    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 3 0 123456 1000000 250 18446744073709551615";
        let s = Stat::parse(line).unwrap();
        assert_eq!(
            (s.utime, s.stime, s.start_ticks, s.rss_pages),
            (70, 30, 123456, 250)
        );
        assert!(Stat::parse("4242 (truncated) S 1").is_none());
    }

    #[test]
    fn max_open_files_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             95000                95000                processes \nMax open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(max_open_files(unlimited), Some(u64::MAX));
    }

    /// This process's figures are as the kernel says elsewhere: its open
    /// descriptors grow by one with a file opened, its limit is
    /// getrlimit's, and it started before now.
    #[test]
    fn this_process_reads_as_the_kernel_says() {
        let before = ProcessStats::read(None).unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let after = ProcessStats::read(None).unwrap();
        drop(file);
        // Other tests' threads open files too: at least one more.
        assert!(
            after.open_fds > before.open_fds || after.open_fds >= 4,
            "{before:?} {after:?}"
        );
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a local.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let soft = if limit.rlim_cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            limit.rlim_cur
        };
        assert_eq!(after.max_fds, soft);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(after.start_time_seconds <= now + 1.0, "{after:?}");
        assert!(
            after.start_time_seconds > now - 86400.0 * 365.0,
            "{after:?}"
        );
        assert!(after.resident_memory_bytes > 0 && after.cpu_seconds >= 0.0);
    }

    /// Counted by `poll`, this process's descriptors are those `/proc/self/fd`
    /// lists, with few or with 200 more open. Other tests' threads open and
    /// close files at any moment, even between two listings that agree, so
    /// the count must equal the listings around it in one of many tries; a
    /// count that is wrong is wrong in every try.
    #[test]
    fn open_descriptors_are_counted_as_the_kernel_lists_them() {
        // The listing's own directory descriptor is in it.
        let listed = || std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        let agrees = || {
            let mut last = (0, 0);
            for _ in 0..1000 {
                let before = listed();
                let polled = open_fds_of_this_process().unwrap();
                if polled == before && listed() == before {
                    return polled;
                }
                last = (polled, before);
            }
            panic!("counted and listed never agreed; last {last:?}");
        };
        let few = agrees();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let more: Vec<std::fs::File> = (0..200).map(|_| file.try_clone().unwrap()).collect();
        let many = agrees();
        assert!(many >= 201 && few >= 3, "{few} then {many}");
        drop(more);
    }

    /// Summed over another process, CPU and memory add up and descriptors
    /// stay this process's own (another's are never listed); one that
    /// cannot be read (no such pid) is left out. The "other" is this test
    /// process read by pid: a fresh child's resident size can read 0 (the
    /// kernel's per-CPU counters are summed lazily), and what is added is
    /// read apart from this process's own figures, which other tests'
    /// threads change between any two reads.
    #[test]
    fn summed_adds_the_others_and_skips_the_gone() {
        let pid = std::process::id();
        let alone = ProcessStats::read(Some(pid)).unwrap();
        let zero = ProcessStats {
            cpu_seconds: 0.0,
            resident_memory_bytes: 0,
            ..alone
        };
        let mut added = zero;
        ProcessCollector::summed([pid, u32::MAX]).add_others(&mut added);
        let mut none = zero;
        ProcessCollector::summed([u32::MAX]).add_others(&mut none);
        let summed = ProcessCollector::summed([pid]).read().unwrap();
        let own = ProcessStats::read(None).unwrap();
        assert_eq!(alone.open_fds, 0, "another's descriptors listed: {alone:?}");
        assert!(added.resident_memory_bytes > 0, "{added:?}");
        assert_eq!(none, zero, "a gone pid added");
        assert_eq!(summed.max_fds, own.max_fds, "{summed:?}");
    }
}
