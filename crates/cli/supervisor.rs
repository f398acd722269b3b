//! `megaconn serve --processes P`: a supervisor and P worker processes.
//!
//! One process can hold only as many sockets as its open-file limit allows
//! (20,000 on some hosts, however much memory there is). The supervisor starts P
//! copies of `megaconn serve` as worker processes; each binds its own
//! `SO_REUSEPORT` listeners, so the kernel spreads connections across all of
//! them. A worker process listens on them only as the last step of its
//! server's start (`Builder::reuse_port_shared`), and says it serves
//! (`megaconn serving on`, what the supervisor waits for) after: one that
//! fails to start, a restart say, never took a share of the port's
//! connections, which the others serve. The supervisor restarts a worker that dies (with a growing back-off,
//! logged; it runs the binary the supervisor runs, [`SelfExe`], with the
//! configuration the supervisor read, [`ConfigSnapshot`]), forwards
//! SIGTERM/SIGINT so every worker drains gracefully (and
//! SIGHUP, so each reloads its TLS certificate), serves the admin listener with
//! whole-server totals gathered through [`SharedStats`] (`/metrics`), and
//! prints them at the end. Each worker process also gets a publish channel
//! ([`Fanout`], fanout.rs): a publish in one reaches the connections of all,
//! and the admin `POST /publish` reaches every worker process.
//!
//! Upgrades (`serve --upgrade --processes P`, the same P): each new worker
//! process k takes over from the old worker process k over its own control
//! socket (`--upgrade-socket` plus `.k`), listening sockets and parked
//! connections included; an old worker that handed over exits after its
//! drain and is not restarted, and the old supervisor exits once all have.
//! The new supervisor says so as one process taking over does (`megaconn
//! upgrade done`, `announce.rs`) once each of its worker processes took
//! over, or is restarting, starting afresh or given up (then `but not all
//! of it`).
//! Slot by slot: the old supervisor goes on restarting a worker process that
//! dies before it handed over, during the upgrade and after it (when the
//! new worker process of its index was given up, below), so that its share
//! of the port is never left to nobody.
//! One slot of the port is served by one worker process at a time (bar the
//! moment of a hand-over): each holds its slot's lock
//! ([`upgrade::SlotLock`]), claimed before it binds afresh and passed on
//! with its listening sockets. So an old restart cannot come up beside a
//! new worker process that found nothing to take over from (the old one had
//! died, its restart did not listen yet) and started afresh: whichever
//! claims the slot second yields. An old one exits
//! ([`upgrade::SLOT_TAKEN_EXIT`]) and is not restarted; a new one takes
//! over from the old one instead, as one more attempt. Which is which goes
//! by the worker, not by the supervisor's `--upgrade` (every supervisor
//! after the first has it): one whose slot was served before (it said so)
//! is the old one. The old supervisor exits once each of its worker
//! processes has handed over or yielded.
//! Until one new worker process has taken over, any failure abandons the
//! upgrade (the old generation serves on in full); after that, a new worker
//! process that fails to take over is started again to take over from the
//! same old one (which serves meanwhile), and afresh on its own listener
//! only once nothing answers on that one's control socket. It tries
//! [`TAKE_OVER_ATTEMPTS`] times in all, backing off, then gives up on that
//! worker process and says so on stdout: the old one serves its share on
//! (restarted by its supervisor if it dies), and a next `serve --upgrade`
//! takes over from both supervisors. Not every new worker process can be
//! given up: only one still taking over is, and the upgrade got past that
//! point because one took over (it and its later restarts bind afresh), so
//! the new supervisor never announces with no worker process. Once a start
//! is past that point, a worker process that dies while others are still
//! starting is restarted at once: start-up and serving are one event loop.
//! The supervisor's admin listener is not handed over: a new supervisor
//! whose admin address is the old one's serves it once the old one exits
//! (after its worker processes drained); give it another `--admin` address
//! to have one at once.
//!
//! On a real host, prefer raising `LimitNOFILE=` in the systemd unit (and
//! `fs.nr_open`) and running one process; `--processes` is for hosts where the
//! per-process cap cannot be raised.

use std::ffi::OsString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::admin;
use crate::announce::Moved;
use crate::fanout::{self, Fanout};
use crate::serve::{self, Ask, ServeArgs, Signals};
use crate::shared_audience::{self, SharedAudience};
use crate::shared_stats::{SharedStats, FD_ENV};
use crate::upgrade;
use crate::UsageError;

/// Environment variable telling a worker process how many slots the shared
/// counter block has.
pub const SLOTS_ENV: &str = "MEGACONN_STATS_SLOTS";

/// Environment variable: the config file's text as the supervisor read it
/// at its start, which every worker process resolves its settings from
/// (see [`ConfigSnapshot`]).
pub const CONFIG_AT_START_ENV: &str = "MEGACONN_CONFIG_AT_START";

/// Environment variable: the config file's text as the supervisor read it
/// at its last SIGHUP whose file was valid, whose reloaded keys
/// (`tls::RELOADED_KEYS`) a worker process takes over those of
/// [`CONFIG_AT_START_ENV`], as its running siblings applied them then.
pub const CONFIG_AT_HUP_ENV: &str = "MEGACONN_CONFIG_AT_HUP";

/// The configuration a supervisor's worker processes run with, restarts
/// included: the config file as the supervisor read it at its start, and
/// the keys a SIGHUP reloads as it read them at its last SIGHUP whose file
/// was valid. A restart used to read the file as it was then: a typo added
/// since made it exit (`unknown key`), restart after restart, the server
/// running on its other processes; a valid edit gave it settings its
/// siblings did not have.
#[derive(Debug, Default)]
struct ConfigSnapshot {
    /// `--config`, with the flags that win over it.
    file: Option<(std::path::PathBuf, crate::knobs::Values)>,
    at_start: Option<String>,
    at_hup: Option<String>,
}

impl ConfigSnapshot {
    /// Reads `args`' config file, checked as `serve` resolves it.
    fn read(args: &ServeArgs) -> Result<ConfigSnapshot, UsageError> {
        let Some(path) = &args.config else {
            return Ok(ConfigSnapshot::default());
        };
        let text = read_valid_config(path, &args.flags)?;
        Ok(ConfigSnapshot {
            file: Some((path.clone(), args.flags.clone())),
            at_start: Some(text),
            at_hup: None,
        })
    }

    /// At SIGHUP: reads the file again; if it is valid, worker processes
    /// started from now on take its reloaded keys, as the running ones
    /// apply them now. If not, they keep what they had (the running ones
    /// log the same error).
    fn hangup(&mut self) {
        let Some((path, flags)) = &self.file else {
            return;
        };
        match read_valid_config(path, flags) {
            Ok(text) => self.at_hup = Some(text),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP: the config file is not valid; a worker process restarted from now on keeps the configuration of the supervisor's start (and last valid SIGHUP)")
            }
        }
    }

    /// Hands the snapshot to a worker process about to start.
    fn pass(&self, cmd: &mut tokio::process::Command) {
        if let Some(text) = &self.at_start {
            cmd.env(CONFIG_AT_START_ENV, text);
        }
        if let Some(text) = &self.at_hup {
            cmd.env(CONFIG_AT_HUP_ENV, text);
        }
    }
}

/// The config file at `path`'s text, if it parses and resolves with
/// `flags` over it.
fn read_valid_config(
    path: &std::path::Path,
    flags: &crate::knobs::Values,
) -> Result<String, UsageError> {
    // Read and checked as a start reads it, so an error is worded alike.
    let (text, file) = serve::read_config(path)?;
    crate::knobs::apply_from(flags, &file, Some(path)).map_err(UsageError)?;
    Ok(text)
}

/// In a worker process: its config file's values as its supervisor read
/// them ([`ConfigSnapshot`]), for `--config` at `path`; `None` when the
/// supervisor passed none (the file is read then).
pub fn worker_config(path: &std::path::Path) -> Option<Result<crate::knobs::Values, UsageError>> {
    let parse = |text: String| {
        crate::knobs::parse_file(&text).map_err(|e| {
            UsageError(format!(
                "invalid config file {} (as the supervisor read it): {e}",
                path.display()
            ))
        })
    };
    let at_start = std::env::var(CONFIG_AT_START_ENV).ok()?;
    Some(parse(at_start).and_then(|mut values| {
        if let Ok(at_hup) = std::env::var(CONFIG_AT_HUP_ENV) {
            let at_hup = parse(at_hup)?;
            for key in crate::tls::RELOADED_KEYS {
                match at_hup.get(key) {
                    Some(v) => values.insert(key, v.clone()),
                    None => values.remove(key),
                };
            }
        }
        Ok(values)
    }))
}

/// The pids of the worker processes running now, by index, for the admin
/// listener's `process_*` series (read from `/proc` at each scrape).
#[derive(Debug, Default)]
pub struct WorkerPids(std::sync::Mutex<Vec<Option<u32>>>);

impl WorkerPids {
    /// Worker process `index` runs as `pid` now (`None`: it exited).
    fn set(&self, index: usize, pid: Option<u32>) {
        let mut pids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pids.len() <= index {
            pids.resize(index + 1, None);
        }
        pids[index] = pid;
    }

    /// Every worker process running now.
    pub fn all(&self) -> Vec<u32> {
        let pids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pids.iter().flatten().copied().collect()
    }
}

/// First restart delay of a worker that died.
const RESTART_START: Duration = Duration::from_millis(100);
/// Longest restart delay.
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long before dying restarts at once again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a worker process may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts in all of a worker process to take over from its old one, once
/// the upgrade is past the point of no return: the last fails after about
/// 3 s of back-off (plus up to [`READY_TIMEOUT`] each for one that hangs).
const TAKE_OVER_ATTEMPTS: u32 = 6;

/// The delay before a restart that follows `failures` quick failures:
/// doubling from [`RESTART_START`], at most [`RESTART_MAX`].
fn backoff(failures: u32) -> Duration {
    RESTART_START
        .saturating_mul(1 << failures.min(10))
        .min(RESTART_MAX)
}

enum Event {
    /// The worker process serves; taking over, what it took over (`None`:
    /// not all of it, see its messages).
    Ready(usize, Option<Moved>),
    /// The worker process handed its sockets to a newer one (an upgrade).
    HandedOver(usize),
    /// The worker process ended (reaped).
    Exited(usize, Exit),
}

/// How a worker process ended, as the supervisor's lines say it: its exit
/// code (`exit_code=1`; in JSON a number), or for one a signal ended (it
/// has no exit code) the signal's name (`signal=SIGKILL`; in JSON a
/// string), as the supervisor names the signals it gets itself
/// (`signal=SIGTERM`). The lines said `exit=Some(1)`, and `exit=None` for
/// a signal (named on a line of its own before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// It exited with this code.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
    /// Its status could not be read (`wait` failed): neither field.
    Unknown,
}

impl Exit {
    /// What `wait` said (`None`: it failed).
    fn of(status: Option<std::process::ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt as _;
        match status {
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Unknown,
            },
            None => Exit::Unknown,
        }
    }

    /// Its exit code, if it exited (the `exit_code` field).
    fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            _ => None,
        }
    }

    /// The name of the signal that ended it, if one did (the `signal`
    /// field).
    fn signal(self) -> Option<std::borrow::Cow<'static, str>> {
        match self {
            Exit::Signal(signal) => Some(signal_name(signal)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "signal {}", signal_name(*signal)),
            Exit::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// A signal's name (`SIGKILL`), or its number for one without a name here
/// (a real-time signal).
fn signal_name(signal: i32) -> std::borrow::Cow<'static, str> {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        other => return other.to_string().into(),
    };
    name.into()
}

/// A worker process, to signal. Its waiting task (see [`start`]) reaps it,
/// and may have done so before the loop hears of the exit: its pid may by
/// then belong to another process, so signals go through a pidfd, opened
/// before the process could be reaped, which names this process alone (a
/// signal to one reaped fails with `ESRCH`).
struct Process {
    pid: u32,
    /// `None` on kernels without pidfds (before Linux 5.3): signals go by pid.
    pidfd: Option<OwnedFd>,
}

impl Process {
    /// `pid` is a child of ours not reaped yet.
    fn open(pid: u32) -> Process {
        // SAFETY: pidfd_open(2) with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: a fresh descriptor nobody else owns.
            unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
        });
        Process { pid, pidfd }
    }

    /// Sends `signal`; an error (`ESRCH`) once the process was reaped.
    fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        let done = match &self.pidfd {
            // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill(2) with integer arguments.
            None => unsafe { libc::kill(self.pid as libc::pid_t, signal) }.into(),
        };
        if done < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

struct Worker {
    process: Option<Process>,
    started: Instant,
    restarts: u32,
    /// Its failed attempts to take over (never reset: one killed at the
    /// readiness deadline ran long, yet failed).
    take_over_failures: u32,
    running: bool,
    handed_over: bool,
    /// It is not started again: a newer worker process serves its slot (see
    /// `yield_slot`), or it failed to take over [`TAKE_OVER_ATTEMPTS`] times
    /// (its old one serves).
    retired: bool,
    /// Its current (or next) start takes over from the old worker process of
    /// its index (`--upgrade`), rather than binding its own listener.
    take_over: bool,
    /// Its current process said it serves (with `take_over`: that it took
    /// over).
    ready: bool,
    /// What it took over, when it took over in full.
    moved: Option<Moved>,
    /// One of its processes served its slot (said so), in this supervisor's
    /// lifetime: a restart that then finds the slot taken yields it to a
    /// newer process; one that never served takes over (see `Event::Exited`).
    served: bool,
    /// Its current process must say it serves by then.
    ready_by: Option<Instant>,
    /// It died and is started again then.
    restart_at: Option<Instant>,
}

impl Worker {
    fn new(take_over: bool) -> Worker {
        Worker {
            process: None,
            started: Instant::now(),
            restarts: 0,
            take_over_failures: 0,
            running: false,
            handed_over: false,
            retired: false,
            take_over,
            ready: false,
            moved: None,
            served: false,
            ready_by: None,
            restart_at: None,
        }
    }

    fn launched(&mut self, process: Process) {
        let now = Instant::now();
        self.process = Some(process);
        self.running = true;
        self.ready = false;
        self.moved = None;
        self.started = now;
        self.ready_by = Some(now + READY_TIMEOUT);
    }

    /// Its pid, while it runs.
    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// It is gone for good: handed over (or retired: see `yield_slot` and
    /// `schedule_restart`) and exited.
    fn done(&self) -> bool {
        (self.handed_over || self.retired) && !self.running
    }

    fn exited(&mut self) {
        self.process = None;
        self.running = false;
        self.ready = false;
        self.moved = None;
        self.ready_by = None;
    }

    /// Worker process `index` exited because another process holds its
    /// slot's lock, and that one is newer (this worker served its slot
    /// before): it serves the slot now, and this one is not started again.
    fn yield_slot(&mut self, index: usize) {
        self.retired = true;
        tracing::warn!(worker = index, "worker process found its slot served by a newer one (which started afresh in its place); not restarting it");
    }

    /// Schedules the restart of worker process `index`, which ended as
    /// `exit` says, with a back-off that grows while it keeps dying soon after
    /// starting. One that keeps failing to take over from its old worker
    /// process is given up after [`TAKE_OVER_ATTEMPTS`]: retrying for good
    /// would only fill the log, while the old one serves on anyway.
    fn schedule_restart(&mut self, index: usize, exit: Exit) {
        let (code, signal) = (exit.code(), exit.signal());
        let signal = signal.as_deref();
        if self.started.elapsed() >= STABLE_AFTER {
            self.restarts = 0;
        }
        let mut delay = backoff(self.restarts);
        // Only a worker process that never served gets here with its slot
        // taken (an upgrading supervisor's): an old worker process,
        // restarted by its supervisor, holds it.
        let slot_taken = code == Some(upgrade::SLOT_TAKEN_EXIT);
        if !self.take_over && !slot_taken {
            let restart_in_ms = delay.as_millis() as u64;
            tracing::error!(
                worker = index,
                exit_code = code,
                signal,
                restart_in_ms,
                "worker process died; restarting"
            );
        } else if code == Some(upgrade::NOTHING_TO_TAKE_OVER_EXIT) {
            self.take_over = false;
            let restart_in_ms = delay.as_millis() as u64;
            tracing::warn!(worker = index, restart_in_ms, "worker process found no old worker process to take over from (it handed over, or is gone); starting it afresh on its own listener");
        } else {
            // Taking over from the process that holds the slot is the one
            // way to serve it. That can fail the same way again for a
            // while (its control socket not bound yet), so it counts.
            if slot_taken {
                self.take_over = true;
            }
            self.take_over_failures += 1;
            let attempts = self.take_over_failures;
            if attempts >= TAKE_OVER_ATTEMPTS {
                self.retired = true;
                tracing::error!(worker = index, exit_code = code, signal, attempts, "worker process failed to take over from the old worker process of its index; giving up: that one serves on, with its supervisor");
                crate::say!("worker process {index} gave up taking over from the old worker process {index} after {attempts} attempts (see the messages above): the old one serves its share of the port, and the old supervisor stays; fix the cause and run `serve --upgrade` again, which takes over from this supervisor and from the old one");
                return;
            }
            delay = backoff(attempts - 1);
            let retry_in_ms = delay.as_millis() as u64;
            if slot_taken {
                tracing::warn!(worker = index, attempts, retry_in_ms, "worker process found its slot served by an old worker process (restarted by its supervisor); taking over from that one");
            } else {
                tracing::error!(worker = index, exit_code = code, signal, attempts, retry_in_ms, "worker process failed to take over from the old worker process of its index; trying again (that one serves its share of the port meanwhile, and its supervisor waits for it)");
            }
        }
        self.restart_at = Some(Instant::now() + delay);
    }
}

/// What the supervisor says once its worker processes serve.
struct Announce {
    /// Its listeners, as URLs.
    urls: Vec<String>,
    /// `--upgrade-socket` (worker process k's is this plus `.k`).
    next_upgrade: std::path::PathBuf,
    /// When it started: an upgrade's time is counted from there.
    started: Instant,
}

impl Announce {
    /// Says that the supervisor serves (as one process says it, with
    /// schemes) and each worker process's pid; `upgrade`: then, as one
    /// process taking over says it, that the upgrade is done (every worker
    /// process took over) or only partly (some restart to take over, start
    /// afresh, or were given up: their lines follow or came above).
    fn say(&self, workers: &[Worker], upgrade: bool) {
        crate::say!(
            "{}",
            crate::announce::serving_line(
                &self.urls,
                format_args!(
                    "{} worker processes; supervisor pid {}",
                    workers.len(),
                    std::process::id()
                )
            )
        );
        for (i, w) in workers.iter().enumerate() {
            match w.pid() {
                Some(pid) => crate::say!("worker process {i} pid {pid}"),
                None if w.retired => crate::say!("worker process {i} given up"),
                // Announced as restarted once it is (not as pid 0).
                None => crate::say!("worker process {i} restarting"),
            }
        }
        if !upgrade {
            return;
        }
        let moved: Vec<Moved> = workers.iter().filter_map(|w| w.moved).collect();
        let line = if moved.len() == workers.len() {
            let total = moved.iter().fold(Moved::default(), |t, m| Moved {
                sockets: t.sockets + m.sockets,
                parked: t.parked + m.parked,
            });
            total.done_line(
                self.started.elapsed(),
                &format!(" by {} worker processes", workers.len()),
                &self.next_upgrade,
            )
        } else {
            crate::announce::partly_done_line(format_args!(
                "{} of {} worker processes took over in full; next upgrade on {}",
                moved.len(),
                workers.len(),
                self.next_upgrade.display()
            ))
        };
        crate::say!("{line}");
    }
}

/// Runs the supervisor of `resolved.processes` worker processes, the
/// configuration checked and logging started (`serve::prepare`). `argv`
/// are the arguments after `serve`, passed on to every worker process
/// unchanged.
pub fn run(args: ServeArgs, argv: Vec<OsString>, resolved: serve::Resolved) -> anyhow::Result<()> {
    let processes = resolved.processes;
    let config = ConfigSnapshot::read(&args)?;
    // Fail now, in one place, if an address is taken or a knob is wrong
    // (taking over, the old worker processes hold the addresses).
    if !args.upgrade {
        // Its connection limit is each worker process's share, checked
        // there (the whole one may be past this process's open files).
        resolved
            .builder
            .clone()
            .workers(1)
            .max_connections(1)
            .listen()
            .map_err(serve::listen_error)?;
    }
    // Known without binding, so said alike after an upgrade.
    let b = &resolved.builder;
    let announce = Announce {
        urls: resolved
            .addrs
            .iter()
            .map(|&a| crate::announce::listen_url(a, b.is_framed(a), b.is_tls(a)))
            .collect(),
        next_upgrade: serve::upgrade_socket(
            resolved.upgrade_socket.as_ref(),
            resolved.addrs.first().copied(),
            None,
        ),
        started: Instant::now(),
    };
    let shared =
        Arc::new(SharedStats::create(processes).context("cannot create the shared counter block")?);
    let audience =
        SharedAudience::create(processes).context("cannot create the shared audience block")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        // Stops when dropped, after the worker processes.
        let fanout = Fanout::new(processes);
        let pids = Arc::new(WorkerPids::default());
        let source = admin::Source::Processes(shared.clone(), fanout.clone(), pids.clone());
        let _admin = match admin_of_old_supervisor(args.upgrade, resolved.admin) {
            Some(addr) => {
                tokio::spawn(admin_once_free(addr, source));
                None
            }
            None => admin::start(resolved.admin, source)?,
        };
        supervise(
            argv,
            processes,
            Context {
                shared: &shared,
                audience: &audience,
                fanout: &fanout,
                pids: &pids,
            },
            announce,
            config,
            resolved.pid_file,
        )
        .await
    })
}

/// The admin address (`setting`, or the default) when this supervisor
/// takes over (`upgrade`) and the address is taken: the old supervisor's
/// admin listener, which is not handed over (its worker processes' sockets
/// are, over their own control sockets; the supervisor has none). Taken
/// for it, the address is served once the old supervisor exits
/// ([`admin_once_free`]). It used to fail: with `--admin`, the upgrade
/// exited 1 (`cannot start the admin listener`, the old supervisor not
/// named); without, a warning, and once the old supervisor left nothing
/// listened there.
fn admin_of_old_supervisor(
    upgrade: bool,
    setting: Option<admin::AdminAddr>,
) -> Option<std::net::SocketAddr> {
    let addr = match setting {
        Some(admin::AdminAddr::Off) => return None,
        Some(admin::AdminAddr::At(addr)) => addr,
        None => admin::DEFAULT_ADMIN.parse().expect("valid default address"),
    };
    if !upgrade || addr.port() == 0 {
        return None;
    }
    match std::net::TcpListener::bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%addr, "the admin address is the old supervisor's (a supervisor's admin listener is not handed over with --processes): serving it once the old supervisor exits, after its worker processes drain; give another --admin to have one at once");
            Some(addr)
        }
        _ => None,
    }
}

/// Starts the admin listener on `addr` once it is free (the old supervisor
/// exited), trying every [`ADMIN_RETRY`], and keeps it until the supervisor
/// exits (the runtime drops this task, and the listener with it).
async fn admin_once_free(addr: std::net::SocketAddr, source: admin::Source) {
    loop {
        tokio::time::sleep(ADMIN_RETRY).await;
        if std::net::TcpListener::bind(addr).is_err() {
            continue;
        }
        match admin::start(Some(admin::AdminAddr::At(addr)), source.clone()) {
            Ok(Some(admin)) => {
                tracing::info!(%addr, "admin listener started: the old supervisor left its address");
                let _admin = admin;
                return std::future::pending().await;
            }
            Ok(None) => return,
            Err(e) => tracing::debug!(error = format!("{e:#}"), "admin address not free yet"),
        }
    }
}

/// How often a supervisor taking over tries the old one's admin address.
const ADMIN_RETRY: Duration = Duration::from_millis(200);

/// What the supervisor shares with its worker processes and its admin
/// listener.
struct Context<'a> {
    shared: &'a SharedStats,
    audience: &'a SharedAudience,
    fanout: &'a Arc<Fanout>,
    pids: &'a WorkerPids,
}

async fn supervise(
    argv: Vec<OsString>,
    processes: usize,
    cx: Context<'_>,
    announce: Announce,
    mut config: ConfigSnapshot,
    pid_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let Context {
        shared,
        audience,
        fanout,
        pids,
    } = cx;
    // Removed (if still this process's) when the supervisor returns.
    let mut _pid_file = None;
    let status = format!("serving with {processes} worker processes");
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let mut hangups = serve::hangups().context("cannot install the SIGHUP handler")?;
    // Held open until the supervisor exits (see `SelfExe`).
    let self_exe = SelfExe::open()?;
    let exe = self_exe.program();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let upgrade = argv.iter().any(|a| a == "--upgrade");
    let mut workers: Vec<Worker> = (0..processes).map(|_| Worker::new(upgrade)).collect();
    for i in 0..processes {
        let launched = start(
            &exe,
            &argv,
            i,
            processes,
            shared,
            audience,
            fanout,
            tx.clone(),
            upgrade,
            &config,
        );
        match launched {
            Ok(process) => {
                pids.set(i, Some(process.pid));
                workers[i].launched(process);
            }
            Err(e) => {
                stop_all(&workers, libc::SIGKILL);
                return Err(e);
            }
        }
    }

    // Start-up and serving are one loop, so that a worker process that dies
    // while others are still starting (each new one may wait long for its
    // old one to hand over) is restarted at once, not after them.
    //
    // Until `committed`, a failure stops them all, so that a broken binary
    // or configuration leaves the old generation serving. Without
    // `--upgrade` that holds until every worker process listens. With it,
    // only until a new worker process has taken over: its old one then
    // stops accepting, hands its parked connections over and is never
    // restarted, so abandoning the upgrade would leave its share of the
    // port, and those connections, to nobody. From then on a worker process
    // that fails to take over (or is not ready in time, and is killed) is
    // started again to take over from the same old worker process, which
    // serves meanwhile; only once nothing answers on that one's control
    // socket (it handed over, or is gone) is it started afresh, binding its
    // own listener; after TAKE_OVER_ATTEMPTS it is given up (retired), and
    // the old one serves on. The announcement waits until every worker
    // process listens, or is about to restart (or was given up).
    let mut committed = false;
    let mut announced = false;
    let mut stopping = false;
    let mut failed = false;
    loop {
        if !announced
            && workers
                .iter()
                .all(|w| w.ready || w.restart_at.is_some() || w.retired)
        {
            announced = true;
            committed = true;
            if let Some(path) = &pid_file {
                match serve::write_pid_file(path, upgrade) {
                    Ok(file) => _pid_file = file,
                    Err(e) => {
                        stop_all(&workers, libc::SIGKILL);
                        return Err(e);
                    }
                }
            }
            announce.say(&workers, upgrade);
            // A new supervisor is the service's main process from now on
            // (it needs `NotifyAccess=all`: `readiness.rs`).
            match upgrade {
                true => crate::readiness::took_over(&status),
                false => crate::readiness::ready(&status),
            }
        }
        if stopping && workers.iter().all(|w| !w.running) {
            break;
        }
        let next_timer = workers
            .iter()
            .flat_map(|w| [w.restart_at, w.ready_by])
            .flatten()
            .min();
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Ready(i, moved)) => {
                    let w = &mut workers[i];
                    w.ready = true;
                    w.moved = if w.take_over { moved } else { None };
                    w.served = true;
                    w.ready_by = None;
                    if w.take_over {
                        // Its later restarts bind afresh: the process it
                        // took over from is leaving.
                        w.take_over = false;
                        committed = true;
                        tracing::info!(worker = i, pid = w.pid(), "worker process took over from the old one");
                    }
                    if w.restarts > 0 {
                        let pid = w.pid().unwrap_or(0);
                        if announced {
                            crate::say!("worker process {i} restarted pid {pid}");
                        } else {
                            tracing::info!(worker = i, pid, "worker process restarted; the others are still starting");
                        }
                    }
                }
                Some(Event::HandedOver(i)) => {
                    // The others are still this supervisor's to restart:
                    // a new worker process may yet be given up, and a
                    // restart racing a new one is settled by the slot lock.
                    workers[i].handed_over = true;
                    tracing::info!(worker = i, "worker process handed over to a newer one; it drains and is not restarted");
                }
                Some(Event::Exited(i, exit)) => {
                    let code = exit.code();
                    let w = &mut workers[i];
                    w.exited();
                    pids.set(i, None);
                    shared.retire(i);
                    // Before the slot's next process: a killed one left
                    // its subscriptions counted there.
                    if let Err(e) = audience.retire(i) {
                        tracing::warn!(worker = i, error = %e, "cannot zero the worker process's audience slot; its topics read high");
                    }
                    fanout.detach(i);
                    if w.handed_over {
                        failed |= unclean(i, exit, "after handing over");
                        if workers.iter().all(Worker::done) {
                            break;
                        }
                        continue;
                    }
                    if stopping {
                        failed |= unclean(i, exit, "while draining");
                        continue;
                    }
                    // Its slot's lock is held (see `upgrade::SlotLock`). If
                    // this worker served its slot, by a newer worker process
                    // (a next upgrade's, started afresh): it yields, and
                    // yielding is no failure. If it never did (a new worker
                    // process of this upgrading supervisor), by an old one
                    // restarted by its supervisor: it takes over from that
                    // one (see `schedule_restart`). Whether this supervisor
                    // was started with `--upgrade` says nothing: every one
                    // after the first was, and one being upgraded in turn
                    // may not have heard of a hand-over yet.
                    let slot_taken = code == Some(upgrade::SLOT_TAKEN_EXIT);
                    if committed && slot_taken && workers[i].served {
                        workers[i].yield_slot(i);
                        if workers.iter().all(Worker::done) {
                            break;
                        }
                        continue;
                    }
                    if !committed {
                        stop_all(&workers, libc::SIGKILL);
                        anyhow::bail!("worker process {i} exited during start-up ({exit}); see its messages above");
                    }
                    workers[i].schedule_restart(i, exit);
                }
                None => break,
            },
            _ = sleep_until_opt(next_timer) => {
                let now = Instant::now();
                for i in 0..processes {
                    if workers[i].ready_by.is_some_and(|t| t <= now) {
                        if !committed {
                            stop_all(&workers, libc::SIGKILL);
                            anyhow::bail!("worker processes did not start listening within {READY_TIMEOUT:?}");
                        }
                        workers[i].ready_by = None;
                        if let Some(process) = &workers[i].process {
                            tracing::error!(worker = i, pid = process.pid, "worker process not ready within {READY_TIMEOUT:?}; killing it (its exit restarts it)");
                            // An error: it exited meanwhile, and that restarts it.
                            let _ = process.signal(libc::SIGKILL);
                        }
                    }
                    let w = &mut workers[i];
                    if w.restart_at.is_some_and(|t| t <= now) {
                        w.restart_at = None;
                        match start(&exe, &argv, i, processes, shared, audience, fanout, tx.clone(), w.take_over, &config) {
                            Ok(process) => {
                                pids.set(i, Some(process.pid));
                                w.launched(process);
                                w.restarts += 1;
                            }
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "cannot restart worker process; retrying");
                                w.restart_at = Some(now + RESTART_MAX);
                            }
                        }
                    }
                }
            }
            _ = hangups.recv() => {
                // Each worker process reloads its own certificate (one still
                // starting ignores it: see `worker_pre_exec`).
                tracing::info!("SIGHUP: passing it to every worker process");
                // Each worker process reloads on its own, unheard by the
                // supervisor: READY=1 says it was passed on to all.
                crate::readiness::reloading();
                config.hangup();
                stop_all(&workers, libc::SIGHUP);
                crate::readiness::ready(&status);
            }
            (name, ask) = signals.next() => {
                if !announced {
                    stop_all(&workers, libc::SIGTERM);
                    anyhow::bail!("{name} during start-up");
                }
                match ask {
                    Ask::Repeat => {
                        serve::log_repeat(name);
                        continue;
                    }
                    Ask::Force => {
                        crate::announce::last_words(format_args!("megaconn: second {name}: killing worker processes"));
                        stop_all(&workers, libc::SIGKILL);
                        std::process::exit(1);
                    }
                    Ask::Drain => {}
                }
                tracing::info!(signal = name, "draining every worker process (send it again, a second or more later, to stop at once)");
                crate::readiness::stopping();
                stopping = true;
                workers.iter_mut().for_each(|w| w.restart_at = None);
                stop_all(&workers, libc::SIGTERM);
            }
        }
    }
    let totals = shared.total();
    crate::say!(
        "{}",
        crate::announce::stopped_line(Some(processes), &totals)
    );
    if failed {
        anyhow::bail!("a worker process did not exit cleanly");
    }
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Whether worker process `index`, which ended as `exit` says `when` (it
/// was not to be restarted), failed to exit cleanly (0); logs it if so.
fn unclean(index: usize, exit: Exit, when: &str) -> bool {
    if exit == Exit::Code(0) {
        return false;
    }
    let signal = exit.signal();
    tracing::warn!(
        worker = index,
        exit_code = exit.code(),
        signal = signal.as_deref(),
        "worker process did not exit cleanly {when}"
    );
    true
}

/// Sends `signal` to every worker process still running (one that exited
/// meanwhile is skipped: its exit is on its way to the loop).
fn stop_all(workers: &[Worker], signal: libc::c_int) {
    for process in workers.iter().filter_map(|w| w.process.as_ref()) {
        let _ = process.signal(signal);
    }
}

/// The binary this supervisor runs, held open from its start: worker
/// processes, restarts included, run it, not whatever file is at its path
/// by then. A restart used to run the path again (`current_exe()`): after
/// `install` of a new binary, a worker process that crashed came back as
/// the new version under the old supervisor, beside old siblings.
///
/// `/proc/self/exe`, opened, names the inode the kernel runs for this
/// process. `install`, `cp --remove-destination`, a package manager or a
/// `mv` put a new file (a new inode) at the path and leave this one alive
/// while a descriptor to it is open (unlinked, it goes once the last
/// holder closes it); writing into it in place fails (`ETXTBSY`) while any
/// process runs it. A child execs it by `/proc/self/fd/N`: between fork and
/// exec the child holds the same descriptor (close-on-exec only closes it
/// once the exec has opened the file), so `execve` opens that inode, as
/// `fexecve(3)` does. Without `/proc` (not mounted) it falls back to the
/// path, with a warning.
struct SelfExe {
    /// `/proc/self/exe`, opened; `None`: the path is all there is.
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
}

impl SelfExe {
    fn open() -> anyhow::Result<SelfExe> {
        let path = std::env::current_exe().context("cannot find the megaconn executable")?;
        let file = std::fs::File::open("/proc/self/exe")
            .inspect_err(|e| tracing::warn!(error = %e, path = %path.display(), "cannot open /proc/self/exe: a worker process restarted after the binary at this path is replaced runs the new one"))
            .ok();
        Ok(SelfExe { file, path })
    }

    /// What a worker process execs: this binary's open descriptor, or its
    /// path.
    fn program(&self) -> std::path::PathBuf {
        match &self.file {
            Some(file) => format!("/proc/self/fd/{}", file.as_raw_fd()).into(),
            None => self.path.clone(),
        }
    }
}

/// What a worker process gets between fork and exec: its publish channel
/// kept open across the exec, and SIGHUP ignored. The supervisor passes
/// SIGHUP on to every worker process, and one just (re)started may not have
/// installed its handler yet: SIGHUP's default action would end it. An
/// ignored signal stays ignored across exec; the worker's handler (tokio's)
/// replaces that when it is installed. Only async-signal-safe calls.
fn worker_pre_exec(channel_fd: std::os::fd::RawFd) -> std::io::Result<()> {
    fanout::keep_across_exec(channel_fd)?;
    // SAFETY: signal(2) with SIG_IGN; async-signal-safe.
    if unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts worker process `index` and a task that reports when it is ready and
/// when it exits. `take_over`: it takes over from the old worker process of
/// the same index (`argv` has `--upgrade`; otherwise that is left out, and
/// it binds its own listener); then it is ready once it has the parked
/// connections and its own control socket, so a next upgrade cannot come
/// too early. It gets a new publish channel from `fanout`.
#[allow(clippy::too_many_arguments)]
fn start(
    exe: &std::path::Path,
    argv: &[OsString],
    index: usize,
    processes: usize,
    shared: &SharedStats,
    audience: &SharedAudience,
    fanout: &Arc<Fanout>,
    events: mpsc::UnboundedSender<Event>,
    take_over: bool,
    config: &ConfigSnapshot,
) -> anyhow::Result<Process> {
    let upgrade = take_over && argv.iter().any(|a| a == "--upgrade");
    let ready_line = if upgrade {
        crate::announce::UPGRADE_DONE
    } else {
        crate::announce::SERVING_ON
    };
    let channel = fanout
        .attach(index)
        .with_context(|| format!("cannot make the publish channel of worker process {index}"))?;
    let channel_fd = channel.as_raw_fd();
    let mut cmd = tokio::process::Command::new(exe);
    // `exe` may be `/proc/self/fd/N` (see `SelfExe`): the worker process's
    // argv[0], what `ps` shows, stays the supervisor's own.
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    // SAFETY: the closure only calls async-signal-safe functions (see
    // `worker_pre_exec`).
    unsafe { cmd.pre_exec(move || worker_pre_exec(channel_fd)) };
    cmd.arg("serve")
        .args(argv.iter().filter(|a| upgrade || *a != "--upgrade"))
        .arg("--worker-process")
        .arg(index.to_string())
        .env(FD_ENV, shared.raw_fd().to_string())
        .env(SLOTS_ENV, processes.to_string())
        .env(shared_audience::FD_ENV, audience.raw_fd().to_string())
        .env(shared_audience::KEYS_ENV, audience.keys_env())
        .env(fanout::FD_ENV, channel_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    config.pass(&mut cmd);
    crate::readiness::hide_from(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start worker process {index}"))?;
    // The child has its copy; ours closes.
    drop(channel);
    // Before the waiting task below can reap it (it has not run yet).
    let pid = child
        .id()
        .context("a worker process just started has no pid")?;
    let process = Process::open(pid);
    let stdout = child.stdout.take();
    tokio::spawn(async move {
        if let Some(stdout) = stdout {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // JSON in JSON log mode: its message is the line.
                let line = crate::announce::message_of(&line);
                if line.starts_with(ready_line) {
                    let _ = events.send(Event::Ready(index, Moved::parse(&line)));
                }
                if line.starts_with("megaconn handed over") {
                    let _ = events.send(Event::HandedOver(index));
                }
            }
        }
        // Logged by the loop, with its exit code or its signal's name.
        let exit = Exit::of(child.wait().await.ok());
        let _ = events.send(Event::Exited(index, exit));
    });
    Ok(process)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;

    use super::*;

    /// An exit reads as its code, a signal's as its name; the fields
    /// carry one or the other.
    #[test]
    fn an_exit_reads_as_its_code_or_its_signal() {
        use std::os::unix::process::ExitStatusExt as _;
        let exited = Exit::of(Some(std::process::ExitStatus::from_raw(1 << 8)));
        assert_eq!(exited, Exit::Code(1));
        assert_eq!((exited.code(), exited.signal()), (Some(1), None));
        assert_eq!(exited.to_string(), "exit code 1");
        let killed = Exit::of(Some(std::process::ExitStatus::from_raw(libc::SIGKILL)));
        assert_eq!(killed.code(), None);
        assert_eq!(killed.signal().as_deref(), Some("SIGKILL"));
        assert_eq!(killed.to_string(), "signal SIGKILL");
        assert_eq!(Exit::Signal(40).signal().as_deref(), Some("40"));
        assert_eq!(Exit::of(None), Exit::Unknown);
    }

    /// A SIGHUP reaching a worker process before it installed its handler
    /// (just started or restarted, when the supervisor passes one on) must
    /// not end it: the process starts with SIGHUP ignored. A shell stands
    /// for the worker and hangs itself up at once.
    #[test]
    fn a_worker_process_starts_with_sighup_ignored() {
        let channel = std::fs::File::open("/dev/null").unwrap();
        let fd = channel.as_raw_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        // SAFETY: as in `start`.
        unsafe { cmd.pre_exec(move || worker_pre_exec(fd)) };
        let out = cmd
            .args(["-c", "kill -HUP $$; echo alive"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "alive\n",
            "{:?}",
            out.status
        );
    }

    /// A signal reaches the worker process while it runs, and once it has
    /// been reaped fails (`ESRCH`) instead of going to whatever process has
    /// its pid now.
    #[test]
    fn a_signal_goes_to_the_worker_process_and_to_no_other() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read line"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let process = Process::open(child.id());
        if process.pidfd.is_none() {
            // pidfd_open(2) is missing (Linux before 5.3) or refused (a
            // seccomp filter): production then signals by pid, and there is
            // nothing here to test.
            eprintln!("skipped: no pidfd on this kernel");
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        process.signal(libc::SIGKILL).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let err = process.signal(libc::SIGKILL).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }
}
