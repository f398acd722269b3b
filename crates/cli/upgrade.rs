//! Zero-downtime binary upgrade: `megaconn serve --upgrade` takes over from
//! the server running now, over its control socket (`--upgrade-socket`).
//!
//! ```text
//!  new process                                old process (serving)
//!   connect(control socket)  ----------------> accept; same user? (SO_PEERCRED)
//!   'H' hello + pid, wire    ---------------->
//!       version of states
//!                            <---------------- 'L' listening sockets (SCM_RIGHTS,
//!                                              ≤ 253 a message; the last flagged)
//!   bind nothing: build its servers             (still the only one accepting)
//!   on those sockets and start them
//!   (runtimes, threads), not accepting yet
//!   'R' ready                ---------------->  stop accepting, park the idle
//!   start accepting (what came                  ones, take the portable ones
//!   meanwhile waits in the kernel's queue)      (HTTP/1.1, framed whose handler
//!                                               exports) out of its lots
//!                            <---------------- 'P' parked sockets, ≤ 253 a message,
//!   park them in its own lots                   with a state record each
//!                                               (`ParkedState`: tag, idle time
//!                                               left, a framed one's payload;
//!                                               to a pre-47 process, which sends
//!                                               no wire version, HTTP/1.1 only in
//!                                               the 5-byte form, framed ones left
//!                                               to the drain); a message too large
//!                                               or cut short loses its own only
//!                                               (`upgrade_parked.rs`)
//!                            <---------------- 'E' end: counts
//!   bind the control socket for                 drain the rest as in graceful
//!   the next upgrade; print                     shutdown, exit
//!   "megaconn upgrade done"
//! ```
//!
//! The listening sockets never close (from 'L' on both processes hold the
//! same sockets, so the same queues), so no connection is refused: the
//! kernel queues connections on them until a process accepts. The old
//! process accepts until it hears 'R', the new one only once it said it
//! (its servers, the admin listener's too, are built and started, their
//! runtimes, parking lots and threads made and their listening sockets
//! registered, before, and accept only after: `Server::start` then
//! `Started::run`, `serve.rs`): a new process that fails or exits
//! before 'R' has taken no connection on the sockets it took over, and
//! every one opened on them meanwhile is the old process's to serve. (An
//! address the old process did not have, another `--admin` address say,
//! the new one binds afresh before 'R': connections queued there are reset
//! should it fail.) Between the old process's last accept and the new
//! one's first (its workers let go) connections wait in the queue
//! (`--backlog`); around 'R' both may accept for a moment, each serving
//! what it took.
//!
//! 'R' is the point of no return: the new process says it only once it
//! can carry on alone (its servers started, its thread for the rest up,
//! see `TakeOver::finish`; nothing after can fail), and the old process,
//! once it heard it, leaves whatever fails or panics then (`Leaving`): one
//! of the two serves, never neither, and not both for good. A worker
//! process of a supervisor also holds its slot's lock ([`SlotLock`]), which
//! goes with its last listening socket and is then the new process's
//! alone. A new process prints `megaconn serving on` (and `megaconn admin
//! on`) before 'R', while it serves nothing yet: the signal that it serves
//! is `megaconn upgrade done` (what `bench/upgrade.sh`, the supervisor and
//! the tests wait for). Under systemd the old process says `MAINPID=`
//! the new one's pid once it heard 'R', and the new one `MAINPID=` its own
//! with `READY=1` once done, so that the unit follows it (`readiness.rs`).
//! The messages are
//! `SOCK_SEQPACKET`, so each arrives whole with its descriptors. std has no
//! stable API for ancillary data (`SocketAncillary` is unstable), so `nix`
//! does `sendmsg`/`recvmsg`.

use std::io::{IoSlice, IoSliceMut};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use megaconn::{HandOverKinds, ServerHandle};
use nix::sys::socket::{self as sock, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::announce::{handed_over_line, partly_done_line, Draining, Moved};

#[path = "upgrade_parked.rs"]
mod parked;

use parked::{
    fit_send_buffer, receive_parked, send_batches, Handed, MAX_PARKED_PAYLOAD, PARKED_WIRE_VERSION,
};

/// Most descriptors one `SCM_RIGHTS` message may carry (Linux's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// How long either side waits for the other's next message.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// First delay before the control socket's `accept` is tried again after
/// it failed (see [`ControlSocket::serve`]).
const ACCEPT_RETRY_START: Duration = Duration::from_millis(100);

/// Longest delay between tries of the control socket's `accept`: a
/// take-over waits at most this long once the process can accept again.
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(5);

/// At most one line per this interval for the control socket's failing
/// `accept` (the first failure logged at once): a process at its open-file
/// limit fails every try, one per [`ACCEPT_RETRY_MAX`], ~720 lines an hour.
const ACCEPT_FAILED_LOG_EVERY: Duration = Duration::from_secs(60);

/// The delay before the next try after `failures` failures in a row:
/// `start`, doubling with each failure, at most `max`. The control socket's
/// `accept` and its bind again (`serve.rs`) back off so.
pub fn backoff(start: Duration, failures: u32, max: Duration) -> Duration {
    start.saturating_mul(1 << failures.min(10)).min(max)
}

/// Message kinds (the first byte).
const HELLO: u8 = b'H';
const LISTENERS: u8 = b'L';
const READY: u8 = b'R';
const PARKED: u8 = b'P';
const END: u8 = b'E';

/// Exit code of `serve --upgrade` when nothing answers on the control
/// socket ([`NothingToTakeOver`]): a supervisor retrying a worker process's
/// take-over starts it afresh then.
pub const NOTHING_TO_TAKE_OVER_EXIT: i32 = 3;

/// `serve --upgrade` found no server to take over from: no socket at the
/// control socket's path, or nothing listening there any more (the process
/// handed over already, or is gone).
#[derive(Debug, thiserror::Error)]
#[error("--upgrade: no server answers on {} ({})", path.display(), why_nothing(path, *source))]
pub struct NothingToTakeOver {
    path: PathBuf,
    #[source]
    source: nix::Error,
}

/// What [`NothingToTakeOver`] found at the control socket's path, and what
/// to do: a supervisor's worker processes answering on `path` plus `.k` say
/// that the running server has `--processes` (this one has not, or another
/// count); a socket nothing listens on is what a killed server leaves (a
/// server that exits removes its own), and needs no cleaning.
fn why_nothing(path: &Path, source: nix::Error) -> String {
    let slot = |k: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{k}"));
        PathBuf::from(p)
    };
    let answering = (0..)
        .take_while(|&k| {
            use std::os::unix::fs::FileTypeExt as _;
            std::fs::metadata(slot(k)).is_ok_and(|m| m.file_type().is_socket())
        })
        .count();
    if answering > 0 {
        return format!(
            "the running server is a supervisor of worker processes ({answering} answer, on {}.0 and on): it runs with --processes {answering}; give the same --processes",
            path.display()
        );
    }
    match source {
        nix::Error::ECONNREFUSED => "a socket nothing listens on: its server was killed, or handed over already; start without --upgrade, which replaces it".into(),
        _ => "is one running, with the same --upgrade-socket?".into(),
    }
}

/// Exit code of a worker process that found its slot's lock taken
/// ([`SlotTaken`]): another worker process serves that slot of the port.
pub const SLOT_TAKEN_EXIT: i32 = 4;

/// A worker process about to bind its listeners afresh found its slot's
/// lock held: another process (of an older or a newer supervisor) serves
/// that slot, and this one must not serve beside it.
#[derive(Debug, thiserror::Error)]
#[error("worker process slot {} is served by another process (it holds the lock {}): not serving beside it", slot.display(), path.display())]
pub struct SlotTaken {
    /// The slot's control socket.
    slot: PathBuf,
    path: PathBuf,
}

/// One worker process slot's claim: an exclusive `flock(2)` on the file at
/// the slot's control socket path plus `.lock`, held by whichever process
/// serves that slot (`serve --processes`, worker process `k` on
/// `--upgrade-socket` plus `.k`).
///
/// Without it two processes could serve one slot: a restart of an old
/// worker process by its supervisor and a new worker process of the same
/// index that found nothing to take over from (the old one had died, its
/// restart had no control socket yet) both bound their own listeners, and
/// the old one, never handing over, held its supervisor up for good. Now a
/// process takes the lock before it binds afresh, and one that finds it
/// held exits ([`SLOT_TAKEN_EXIT`]) instead. A take-over passes the lock
/// with the listening sockets (the same open file, so the lock never lapses
/// between the two processes) and the old process closes its copy once the
/// new one serves. The kernel drops the lock when its last holder exits,
/// however it dies.
///
/// The last holder removes the file as it stops serving the slot for good
/// (a graceful exit that handed nothing over, [`SlotLock::retire`]): a
/// supervisor of 56 worker processes left 56 of them in /tmp at each stop.
/// It removes it while it still holds the lock, and only the file it locked;
/// a claim that locked a file which is then no longer at the path (removed
/// meanwhile, maybe another made there since) lets go and claims again, so
/// that two processes never hold two different files. A lock that was ever
/// sent to another process (a take-over, even one abandoned before it said
/// it serves: that process may hold it still) leaves the file in place, as
/// does any other exit (the kernel still drops the lock).
pub struct SlotLock {
    file: std::fs::File,
    /// The lock file's path, to remove it when retired.
    path: PathBuf,
    /// Its descriptor went to another process (a take-over), which may hold
    /// the lock still: never remove the file then.
    sent: bool,
}

impl SlotLock {
    /// The lock file of the slot whose control socket is `control`.
    fn path(control: &Path) -> PathBuf {
        let mut path = control.as_os_str().to_owned();
        path.push(".lock");
        path.into()
    }

    /// Claims the slot whose control socket is `control`, before binding
    /// its listeners afresh. [`SlotTaken`] if another process holds it;
    /// `Ok(None)`, with a warning, if the file cannot be opened or locked
    /// at all (the lock guards against a rare race, and a server that runs
    /// without it is better than none).
    pub fn claim(control: &Path) -> Result<Option<SlotLock>, SlotTaken> {
        let path = Self::path(control);
        test_gate(&path, "", TEST_SLOT_GATE_ENV);
        // Each try that locks a file no longer at the path (its holder
        // removed it as it left) lets another process make progress: a
        // bound that is never met unless processes claim and leave the slot
        // as fast as they can, over and over.
        for _ in 0..CLAIM_TRIES {
            match Self::try_claim(&path) {
                Claim::Locked(file) => {
                    return Ok(Some(SlotLock {
                        file,
                        path,
                        sent: false,
                    }))
                }
                Claim::Taken => {
                    return Err(SlotTaken {
                        slot: control.to_path_buf(),
                        path,
                    })
                }
                Claim::Failed(what, e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot {what} the worker process slot's lock file; serving without it");
                    return Ok(None);
                }
                Claim::Moved => {}
            }
        }
        tracing::warn!(path = %path.display(), tries = CLAIM_TRIES, "the worker process slot's lock file was replaced at every try; serving without it");
        Ok(None)
    }

    /// One try of [`SlotLock::claim`] on the lock file at `path`.
    fn try_claim(path: &Path) -> Claim {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => file,
            Err(e) => return Claim::Failed("open", e),
        };
        Self::lock_opened(file, path)
    }

    /// The rest of a try of [`SlotLock::claim`]: locks `file`, opened at
    /// `path`.
    fn lock_opened(file: std::fs::File, path: &Path) -> Claim {
        use std::os::unix::fs::MetadataExt as _;
        // SAFETY: flock(2) on a descriptor we own, with integer arguments.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Claim::Taken;
            }
            return Claim::Failed("lock", e);
        }
        // Locked: but the file may have been removed by its last holder
        // between our open and our lock (see `retire`); then the lock is on
        // a file nobody else will ever open, and another process may lock
        // the one at the path.
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(ours), Ok(there)) if (ours.dev(), ours.ino()) == (there.dev(), there.ino()) => {
                Claim::Locked(file)
            }
            (Err(e), _) => Claim::Failed("inspect", e),
            _ => Claim::Moved,
        }
    }

    /// Stops serving the slot for good: removes the lock file, if this
    /// process is its only holder (the lock never sent to another) and the
    /// file at the path is still the one it locked, then lets go of the
    /// lock. Call it at a graceful exit only, never after a hand-over.
    pub fn retire(self) {
        use std::os::unix::fs::MetadataExt as _;
        if self.sent {
            return;
        }
        // Nobody else removes the file while we hold its lock (only its
        // holder may), nor makes another at the path while it is there: the
        // check and the removal cannot be raced.
        let ours = self.file.metadata().map(|m| (m.dev(), m.ino()));
        let there = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if matches!((ours, there), (Ok(a), Ok(b)) if a == b) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot remove the worker process slot's lock file");
            }
        }
    }
}

/// How many times [`SlotLock::claim`] tries, each finding the file it
/// locked replaced, before it serves without the lock.
const CLAIM_TRIES: usize = 16;

/// What one try of [`SlotLock::claim`] found.
enum Claim {
    /// Locked, and it is the file at the path.
    Locked(std::fs::File),
    /// Another process holds it.
    Taken,
    /// Locked a file its holder removed meanwhile: try again.
    Moved,
    /// Cannot open, lock or inspect it (what failed, and how).
    Failed(&'static str, std::io::Error),
}

/// Test-only knob (not a user setting): when set, [`take_over`] first
/// connects to a unix stream socket at the control socket's path plus
/// `.gate`, if one listens there, writes its pid and a newline, and waits
/// until the test closes that connection. A test holds a worker process's
/// take-over that way, to kill it or another one at a chosen step, without
/// sleeping. Every test gate is obeyed by debug builds only ([`test_gate`]).
const TEST_GATE_ENV: &str = "MEGACONN_TEST_TAKE_OVER_GATE";

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`] for
/// [`SlotLock::claim`]: a worker process about to claim its slot (and bind
/// afresh) stops at the lock file's path plus `.gate`. A test lines up two
/// processes there to choose which claims the slot first.
const TEST_SLOT_GATE_ENV: &str = "MEGACONN_TEST_SLOT_GATE";

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`] for
/// [`ControlSocket::bind`]: a process about to bind its control socket
/// stops at the socket's path plus `.bind.gate`; if the test writes `fail`
/// before it closes the connection, that bind fails (as on a full disk).
const TEST_BIND_GATE_ENV: &str = "MEGACONN_TEST_BIND_GATE";

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`] for the
/// control socket's `accept` ([`ControlSocket::serve`]): a process about to
/// accept stops at the socket's path plus `.accept.gate`; if the test
/// writes an errno (a number) before it closes the connection, that accept
/// fails with it instead (as with `EMFILE` in a process at its open-file
/// limit); if it writes `shutdown`, the process shuts its control socket's
/// listener down first, so that the accept finds it gone (`EINVAL`) and
/// the control socket is lost ([`ControlSocket::lost`]) — when no
/// connection is queued on it: a queued one is still accepted after the
/// shutdown (and handed the sockets over).
const TEST_ACCEPT_GATE_ENV: &str = "MEGACONN_TEST_ACCEPT_GATE";

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`]: a process
/// that handed over stops before it says so (`megaconn handed over`), at
/// its control socket's path plus `.handed.gate` (as [`Leaving`] begins:
/// after a panic, before it takes the busy flag again, if it does not hold
/// it), so that a test can act while its supervisor has not heard of the
/// hand-over yet.
const TEST_HANDED_GATE_ENV: &str = "MEGACONN_TEST_HANDED_GATE";

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`]: a process
/// about to exit (see [`ControlSocket`]'s drop) stops at its control
/// socket's path plus `.exit.gate` before it takes its busy flag, and
/// again, if a hand-over holds the flag, before it waits for it: a test
/// lets it take the flag when it chooses, and knows that it waits.
const TEST_EXIT_GATE_ENV: &str = "MEGACONN_TEST_EXIT_GATE";

/// A test gate (see [`TEST_GATE_ENV`]) at `path` plus `suffix` and
/// `.gate`: what the test wrote before it let the process on (nothing when
/// the variable is not set or no gate listens).
fn test_gate(path: &Path, suffix: &str, env: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut said = Vec::new();
    // Obeyed by debug builds only (what `cargo test` builds; `cfg!` keeps
    // the code in release builds, where it returns at once): a release
    // binary obeys no test gate, whatever its environment says.
    if !cfg!(debug_assertions) || std::env::var_os(env).is_none() {
        return said;
    }
    let mut gate = path.as_os_str().to_owned();
    gate.push(suffix);
    gate.push(".gate");
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(gate) {
        // Bounded, should the variable ever be set outside a test: a gate
        // nobody closes holds a process two minutes, not for good.
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(120)));
        let _ = writeln!(s, "{}", std::process::id());
        let _ = s.read_to_end(&mut said);
    }
    said
}

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`]: a process
/// about to start its main server (`Server::start`, after its admin
/// server's: their runtimes and threads) stops at the control socket's path
/// plus `.start.gate`; if the test writes `emfile` before it closes the
/// connection, the process first lowers its open-file limit to the
/// descriptors it holds, so that no worker's runtime can be made (as in a
/// process out of descriptors) and the start fails.
const TEST_START_GATE_ENV: &str = "MEGACONN_TEST_START_GATE";

/// Where `serve` stops before it starts its main server, when a test asks
/// ([`TEST_START_GATE_ENV`], at the control socket `path`).
pub fn before_start(path: &Path) {
    if !test_gate(path, ".start", TEST_START_GATE_ENV).starts_with(b"emfile") {
        return;
    }
    // The lowest free descriptor is the next one `open` would return: with
    // the soft limit there, every `open`, `socket` or `epoll_create` fails.
    let Ok(probe) = std::fs::File::open("/dev/null") else {
        return;
    };
    let lowest = probe.as_raw_fd() as libc::rlim_t;
    drop(probe);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = lowest;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Test-only knob (not a user setting), obeyed by debug builds only as
/// every test gate: `lot N`, `register N` or `panic N` makes that step of
/// the main server's worker N's start fail (its parking lot, as at the
/// open-file limit; its listeners' registration, as at the user's epoll
/// watch limit; its thread's setup, as a bug would), through
/// [`Builder::fail_worker_start_for_test`](megaconn::Builder::fail_worker_start_for_test).
/// No test can bring a real process to one of these for one worker of one
/// server; the knob is read here so that the library needs no gate of its
/// own.
const TEST_WORKER_FAIL_ENV: &str = "MEGACONN_TEST_WORKER_FAIL";

/// `builder` with the failure a test asks for ([`TEST_WORKER_FAIL_ENV`]).
pub fn fail_worker_start(builder: megaconn::Builder) -> megaconn::Builder {
    if !cfg!(debug_assertions) {
        return builder;
    }
    let Ok(told) = std::env::var(TEST_WORKER_FAIL_ENV) else {
        return builder;
    };
    use megaconn::WorkerStartFailure as Step;
    let (step, worker) = told.split_once(' ').unwrap_or((&told, ""));
    let step = match step {
        "lot" => Step::Lot,
        "register" => Step::Register,
        "panic" => Step::Panic,
        _ => panic!("{TEST_WORKER_FAIL_ENV}: not lot, register or panic N: {told}"),
    };
    let worker = worker
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{TEST_WORKER_FAIL_ENV}: no worker number: {told}"));
    builder.fail_worker_start_for_test(step, worker)
}

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`]: a new
/// process that told the old one it serves ([`TakeOver::finish`]) stops at
/// its control socket's path plus `.run.gate` before it runs its servers.
/// Meanwhile the old process hands over and leaves, connections wait in
/// the kernel's queues, and `megaconn upgrade done` must not be said yet:
/// a test holds the process there to see that the line waits for the run
/// (the window is otherwise the few instructions between the two calls).
const TEST_RUN_GATE_ENV: &str = "MEGACONN_TEST_RUN_GATE";

/// Where `serve` stops between telling the old process it serves and
/// running its servers, when a test asks ([`TEST_RUN_GATE_ENV`], at the
/// control socket `path`).
pub fn before_run(path: &Path) {
    test_gate(path, ".run", TEST_RUN_GATE_ENV);
}

/// Test-only knob (not a user setting), obeyed by debug builds only as
/// every test gate: worker thread N (`megaconn-worker-N`, N the variable's
/// value; the admin server's one is worker 0 too) panics as it hands its
/// parked connections over at an upgrade, as a bug in its shutdown would:
/// once it took them out of its lot, before it sent them, so that the old
/// process's hand-over waits for a batch that never comes. A layer of the
/// log subscriber ([`WorkerPanic`], `logging.rs`) does it when the worker
/// logs that step, so that the library needs no gate of its own.
const TEST_WORKER_PANIC_ENV: &str = "MEGACONN_TEST_WORKER_PANIC";

/// What a worker logs as it hands its parked connections over (the
/// library's `server/worker.rs`), where [`TEST_WORKER_PANIC_ENV`] has it
/// panic.
const HANDING_OVER: &str = "handing parked connections over";

/// The log layer that makes a worker panic as [`TEST_WORKER_PANIC_ENV`]
/// says.
///
/// It sees only the events the subscriber's filter lets through
/// (`RUST_LOG`, `info` by default, `logging.rs`): under a filter that
/// drops the worker's info line (`RUST_LOG=warn`, say) it never fires, and
/// it knows the line by its text ([`HANDING_OVER`]), which must stay that
/// of the library's `server/worker.rs`. A test using it logs at info and
/// waits for the worker's line before the panic's, so that a gate that no
/// longer fires says which.
pub struct WorkerPanic {
    /// The worker thread's name.
    thread: String,
}

impl WorkerPanic {
    /// The layer, when a test asks for it ([`TEST_WORKER_PANIC_ENV`]) of a
    /// debug build.
    pub fn from_env() -> Option<WorkerPanic> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let worker = std::env::var(TEST_WORKER_PANIC_ENV).ok()?;
        Some(WorkerPanic {
            thread: format!("megaconn-worker-{}", worker.trim()),
        })
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WorkerPanic {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct HandingOver(bool);
        impl tracing::field::Visit for HandingOver {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 |= field.name() == "message" && format!("{value:?}") == HANDING_OVER;
            }
        }
        if std::thread::current().name() != Some(self.thread.as_str()) {
            return;
        }
        let mut seen = HandingOver(false);
        event.record(&mut seen);
        if seen.0 {
            panic!(
                "{} panics as it hands its parked connections over (told by a test)",
                self.thread
            );
        }
    }
}

/// One end of a control connection.
struct Peer(OwnedFd);

/// A message as it arrived on the control socket.
struct Message {
    kind: u8,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// Why it is not whole (`MSG_TRUNC`, `MSG_CTRUNC`), if it is not.
    cut: Option<String>,
}

impl Peer {
    fn send(&self, kind: u8, payload: &[u8], fds: &[RawFd]) -> anyhow::Result<()> {
        self.send_raw(kind, payload, fds)
            .context("cannot write to the upgrade control socket")
    }

    /// [`send`](Peer::send), its error as the kernel said it (`EMSGSIZE`:
    /// over the socket's send buffer).
    fn send_raw(&self, kind: u8, payload: &[u8], fds: &[RawFd]) -> nix::Result<()> {
        let head = [kind];
        let iov = [IoSlice::new(&head), IoSlice::new(payload)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sock::sendmsg::<()>(self.0.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).map(drop)
    }

    /// The next message: its kind, payload and descriptors; one not whole
    /// is an error.
    fn recv(&self) -> anyhow::Result<(u8, Vec<u8>, Vec<OwnedFd>)> {
        let message = self.recv_any()?;
        if let Some(why) = message.cut {
            bail!("{why}");
        }
        Ok((message.kind, message.payload, message.fds))
    }

    /// The next message, whole or not ([`Message::cut`]): a message of
    /// parked connections cut short loses its own connections only.
    fn recv_any(&self) -> anyhow::Result<Message> {
        // The kind byte and the largest payload sent ([`MAX_PARKED_PAYLOAD`]).
        let mut buf = vec![0u8; 1 + MAX_PARKED_PAYLOAD];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = sock::recvmsg::<()>(
            self.0.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("cannot read from the upgrade control socket")?;
        let mut fds = Vec::new();
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this
                // process for us; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        let cut = if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            Some("upgrade control message lost descriptors (MSG_CTRUNC)".to_string())
        } else if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            Some(format!(
                "upgrade control message over {} bytes (MSG_TRUNC)",
                1 + MAX_PARKED_PAYLOAD
            ))
        } else {
            None
        };
        if n == 0 {
            bail!("the other process closed the upgrade control socket");
        }
        Ok(Message {
            kind: buf[0],
            payload: buf[1..n].to_vec(),
            fds,
            cut,
        })
    }

    fn expect(&self, kind: u8) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let (k, payload, fds) = self.recv()?;
        if k != kind {
            bail!(
                "unexpected upgrade message {:?} (expected {:?})",
                k as char,
                kind as char
            );
        }
        Ok((payload, fds))
    }

    fn set_timeout(&self) -> anyhow::Result<()> {
        let t = nix::sys::time::TimeVal::new(STEP_TIMEOUT.as_secs() as _, 0);
        sock::setsockopt(self.0.as_raw_fd(), sock::sockopt::ReceiveTimeout, &t)?;
        sock::setsockopt(self.0.as_raw_fd(), sock::sockopt::SendTimeout, &t)?;
        Ok(())
    }
}

fn seqpacket() -> anyhow::Result<OwnedFd> {
    let fd = sock::socket(
        sock::AddressFamily::Unix,
        sock::SockType::SeqPacket,
        sock::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("cannot create a unix socket")?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A running server's control socket, where the next process asks to take
/// over.
pub struct ControlSocket {
    listener: OwnedFd,
    /// Held by a hand-over in progress: the process must not exit (its
    /// drain may end first) before the last parked connection is sent. True
    /// once a newer process took over (and the socket's name with it).
    busy: std::sync::Arc<std::sync::Mutex<bool>>,
    /// More servers whose listening sockets go with the main one's (the
    /// admin listener), added once they run.
    more: std::sync::Arc<std::sync::Mutex<Vec<ServerHandle>>>,
    /// A worker process's slot lock ([`ControlSocket::keep`]), handed over
    /// with the listening sockets.
    slot: std::sync::Arc<std::sync::Mutex<Option<SlotLock>>>,
    /// Notified when the serving thread ends without a hand-over
    /// ([`ControlSocket::lost`]).
    lost: std::sync::Arc<tokio::sync::Notify>,
    path: PathBuf,
    /// The socket file's inode, to remove it at exit only if it is still ours.
    ino: u64,
}

impl ControlSocket {
    /// Binds `path` (replacing whatever is there, atomically: a newer
    /// process's socket takes the name only once it can answer). The file is
    /// the user's alone; a peer of another user is refused too.
    pub fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        use std::os::unix::fs::MetadataExt as _;
        if test_gate(path, ".bind", TEST_BIND_GATE_ENV).starts_with(b"fail") {
            bail!(
                "cannot bind the upgrade control socket {}: failed by the test gate",
                path.display()
            );
        }
        let listener = seqpacket()?;
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let addr = UnixAddr::new(&tmp)?;
        sock::bind(listener.as_raw_fd(), &addr)
            .with_context(|| format!("cannot bind the upgrade control socket {}", tmp.display()))?;
        let ino = (|| -> anyhow::Result<u64> {
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            sock::listen(listener.as_raw_fd(), 4)?;
            let ino = std::fs::metadata(&tmp)?.ino();
            std::fs::rename(&tmp, path).with_context(|| {
                format!(
                    "cannot put the upgrade control socket at {} (choose another with --upgrade-socket)",
                    path.display()
                )
            })?;
            Ok(ino)
        })()
        .inspect_err(|_| {
            // Bound but not put in place: the name is nobody's.
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(ControlSocket {
            listener,
            busy: Default::default(),
            more: Default::default(),
            slot: Default::default(),
            lost: Default::default(),
            path: path.to_path_buf(),
            ino,
        })
    }

    /// Serves upgrade requests on a thread of its own: the first complete
    /// hand-over shuts `handle` down (its parked connections go to the new
    /// process), and the servers added with [`ControlSocket::also`], and
    /// ends the thread. A failed attempt (the new process died,
    /// another user) is logged and the server keeps serving.
    ///
    /// An `accept` that fails is tried again, backing off (from 100 ms,
    /// doubling to 5 s; from the start again once one succeeds), and logged
    /// (the first failure, then at most one line a minute),
    /// while the new process's connection waits in the socket's queue:
    /// `EMFILE` or `ENFILE` (a process holding connections up to its
    /// open-file limit: an `accept` that waits has its descriptor already,
    /// so one called at the limit meets them, after a failed hand-over
    /// whose descriptor a connection took meanwhile, say), `ENOBUFS`,
    /// `ENOMEM`, `ECONNABORTED`, `EPROTO`; `EINTR` is tried again at once.
    /// The thread used to end at the first such failure, leaving the
    /// process serving with nothing to take over from it, a worker process
    /// holding its slot's lock for good. Only a listener that is gone
    /// (`EBADF`, `EINVAL`, `ENOTSOCK`) ends the thread without a hand-over,
    /// as a panic would: then [`ControlSocket::lost`] returns, and the
    /// caller binds the control socket anew, as after a failed bind
    /// (`serve.rs`). A panic after the new process said it serves does not
    /// count: the name is the new process's, and this process shuts down
    /// all the same (see [`Leaving`]).
    pub fn serve(&self, handle: ServerHandle) -> std::io::Result<()> {
        self.spawn(handle).map(drop)
    }

    /// [`ControlSocket::serve`], returning its thread (for a test to join).
    fn spawn(&self, handle: ServerHandle) -> std::io::Result<std::thread::JoinHandle<()>> {
        let upgrades = Upgrades {
            listener: self.listener.try_clone()?,
            handle,
            busy: self.busy.clone(),
            more: self.more.clone(),
            slot: self.slot.clone(),
            path: self.path.clone(),
        };
        let lost = self.lost.clone();
        std::thread::Builder::new()
            .name("megaconn-upgrade".into())
            .spawn(move || {
                // Notified however the thread ends before a new process
                // said it serves (see `hand_over`).
                let mut lost = LostOnDrop(Some(lost));
                loop {
                    let peer = match accept_peer(&upgrades.listener, &upgrades.path) {
                        Ok(peer) => peer,
                        Err(e) => {
                            tracing::error!(error = %e, "upgrade control socket: accept failed: the socket is gone");
                            return;
                        }
                    };
                    match upgrades.hand_over(&peer, &mut lost) {
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), "upgrade failed; still serving")
                        }
                    }
                }
            })
    }

    /// Returns once the thread of [`ControlSocket::serve`] ended before a
    /// new process said it serves (its listener gone, or a panic): nothing
    /// can take over from this process until it binds a control socket
    /// anew. Not after that, however the thread ends: the name is the new
    /// process's then, and this one is leaving.
    pub async fn lost(&self) {
        self.lost.notified().await;
    }
}

/// The next connection on the control socket `listener`, bound at `path`.
/// A failed `accept` is tried again, backing off (see
/// [`ControlSocket::serve`]), and logged (warn: the first failure, then at
/// most once per [`ACCEPT_FAILED_LOG_EVERY`], with `suppressed`); `Err`
/// only when the listener is gone.
fn accept_peer(listener: &OwnedFd, path: &Path) -> nix::Result<Peer> {
    let mut failures = 0;
    let mut failed_log = EveryAtMost::new(ACCEPT_FAILED_LOG_EVERY);
    loop {
        let said = test_gate(path, ".accept", TEST_ACCEPT_GATE_ENV);
        if said.starts_with(b"shutdown") {
            let _ = sock::shutdown(listener.as_raw_fd(), sock::Shutdown::Both);
        }
        let failed = std::str::from_utf8(&said)
            .ok()
            .and_then(|said| said.trim().parse().ok())
            .map(nix::Error::from_i32);
        match failed.map_or_else(|| sock::accept(listener.as_raw_fd()), Err) {
            // SAFETY: accept returned a fresh descriptor we own.
            Ok(fd) => return Ok(Peer(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(nix::Error::EINTR) => {}
            Err(e @ (nix::Error::EBADF | nix::Error::EINVAL | nix::Error::ENOTSOCK)) => {
                return Err(e)
            }
            Err(e) => {
                let delay = backoff(ACCEPT_RETRY_START, failures, ACCEPT_RETRY_MAX);
                failures += 1;
                if let Some(suppressed) = failed_log.admit(Instant::now()) {
                    let hint = match e {
                        nix::Error::EMFILE | nix::Error::ENFILE => {
                            "; raise the open-file limit or lower max_connections"
                        }
                        _ => "",
                    };
                    tracing::warn!(
                        error = %e,
                        attempts = failures,
                        suppressed,
                        retry_in_ms = delay.as_millis() as u64,
                        "upgrade control socket: accept failed; trying again (no upgrade can be accepted until then){hint}"
                    );
                }
                std::thread::sleep(delay);
            }
        }
    }
}

/// Admits the first of a repeating event, then at most one per interval,
/// counting the ones held back.
struct EveryAtMost {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl EveryAtMost {
    fn new(interval: Duration) -> EveryAtMost {
        EveryAtMost {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(how many were held back since the last one admitted)` if the
    /// event at `now` is to be logged; else counts it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Notifies [`ControlSocket::lost`] when dropped, unless disarmed first (by
/// a hand-over, once the new process said it serves).
struct LostOnDrop(Option<std::sync::Arc<tokio::sync::Notify>>);

impl LostOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for LostOnDrop {
    fn drop(&mut self) {
        if let Some(lost) = self.0.take() {
            // Kept until someone waits, if no one does yet.
            lost.notify_one();
        }
    }
}

/// After a hand-over, nothing more is handed over from here: a process that
/// asks now (a supervisor trying a failed take-over again) must hear so at
/// once, not wait out [`STEP_TIMEOUT`] for listening sockets that never come,
/// so that it can start afresh. A shut-down unix listener refuses
/// connections (`ECONNREFUSED`, as if none listened); one already queued is
/// accepted and closed (the other end reads the end of the stream).
fn refuse_more(listener: &OwnedFd) {
    let fd = listener.as_raw_fd();
    let _ = sock::shutdown(fd, sock::Shutdown::Both);
    // SAFETY: fcntl(2) on a descriptor we own, with integer arguments.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    while let Ok(queued) = sock::accept(fd) {
        // SAFETY: accept returned a fresh descriptor we own; dropping closes it.
        drop(unsafe { OwnedFd::from_raw_fd(queued) });
    }
}

impl ControlSocket {
    /// Keeps this worker process's slot lock until a hand-over passes it on
    /// (call it before [`ControlSocket::serve`], so that no hand-over goes
    /// without it).
    pub fn keep(&self, slot: Option<SlotLock>) {
        *self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = slot;
    }

    /// Takes the slot lock back (the socket is not served after all).
    pub fn release(&self) -> Option<SlotLock> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Hands `other`'s listening sockets over too (the admin listener), and
    /// shuts `other` down with the main server once the new process serves.
    pub fn also(&self, other: ServerHandle) {
        self.more
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(other);
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Waits for a hand-over in progress to send its last message. After
        // one, the name belongs to the newer process (which may be renaming
        // its socket onto it right now): leave it.
        test_gate(&self.path, ".exit", TEST_EXIT_GATE_ENV);
        let busy = match self.busy.try_lock() {
            Ok(busy) => busy,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                test_gate(&self.path, ".exit", TEST_EXIT_GATE_ENV);
                self.busy
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }
        };
        let handed = *busy;
        drop(busy);
        if !handed {
            self.remove_name();
            // The process stops serving its slot for good (a hand-over
            // passes the lock on, and took it from here).
            if let Some(slot) = self.release() {
                slot.retire();
            }
        }
    }
}

impl ControlSocket {
    /// Removes the socket's name, if it is still this socket's (a newer
    /// process may have put its own there).
    fn remove_name(&self) {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// At an exit forced now (a second SIGTERM), which runs no drop:
    /// removes the socket's name as the drop does, unless a hand-over is
    /// under way or done (the name is, or is about to be, the newer
    /// process's), without waiting for one. A forced exit used to leave
    /// `megaconn-PORT.upgrade.sock` behind. The slot lock's file stays (a
    /// worker process leaves forcing to its supervisor).
    pub fn remove_name_now(&self) {
        if let Ok(&false) = self.busy.try_lock().as_deref() {
            self.remove_name();
        }
    }
}

/// What the thread of [`ControlSocket::serve`] works with: the control
/// socket's listener (a copy) and the server(s) it hands over.
struct Upgrades {
    listener: OwnedFd,
    handle: ServerHandle,
    busy: std::sync::Arc<std::sync::Mutex<bool>>,
    more: std::sync::Arc<std::sync::Mutex<Vec<ServerHandle>>>,
    slot: std::sync::Arc<std::sync::Mutex<Option<SlotLock>>>,
    path: PathBuf,
}

impl Upgrades {
    /// The old process's side of one upgrade. `Ok(false)`: the new process
    /// went away before it was ready; this one keeps serving. Once the new
    /// process said it serves, `Ok(true)` whatever happens (see
    /// [`Upgrades::leave`]), and `lost` is disarmed.
    fn hand_over(&self, peer: &Peer, lost: &mut LostOnDrop) -> anyhow::Result<bool> {
        peer.set_timeout()?;
        let cred = sock::getsockopt(peer.0.as_raw_fd(), sock::sockopt::PeerCredentials)?;
        // SAFETY: getuid has no arguments and cannot fail.
        let me = unsafe { libc::getuid() };
        if cred.uid() != me && cred.uid() != 0 {
            bail!(
                "process {} of user {} asked to take over; only user {me} may",
                cred.pid(),
                cred.uid()
            );
        }
        let (hello, _) = peer.expect(HELLO)?;
        let new_pid = u32::from_be_bytes(hello.get(..4).context("short hello")?.try_into()?);
        // No wire version after the pid: a process of a session before 47,
        // which reads only version 0's records, HTTP/1.1 only.
        let v0 = hello.get(4).is_none();
        let more = self
            .more
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut sockets = self.handle.listening_sockets()?;
        // The main server's sockets come first: the last message says how
        // many (bytes 2..6), so that the new process can tell them from the
        // admin listener's, and refuse to take over a main one it would not
        // serve (see `TakeOver::sort`).
        let main = u32::try_from(sockets.len()).unwrap_or(u32::MAX);
        for other in &more {
            sockets.extend(other.listening_sockets()?);
        }
        let raw: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        // The slot lock goes last, flagged by the last message's second byte: a
        // process that does not know of it reads the first byte only, finds a
        // descriptor that is no listening socket, and closes it.
        // Sent, the lock is held by the new process too, even one that goes
        // away before it serves: this one must never remove its file.
        let lock = self
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .map(|l| {
                l.sent = true;
                l.file.as_raw_fd()
            });
        let all: Vec<RawFd> = raw.iter().copied().chain(lock).collect();
        let chunks: Vec<&[RawFd]> = all.chunks(MAX_FDS).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut flags = vec![u8::from(last), u8::from(last && lock.is_some())];
            if last {
                flags.extend_from_slice(&main.to_be_bytes());
            }
            peer.send(LISTENERS, &flags, chunk)?;
        }
        drop(sockets);
        tracing::info!(
            new_pid,
            listeners = raw.len(),
            "upgrade: listening sockets sent; waiting for the new process to serve"
        );
        match peer.recv() {
            Ok((READY, _, _)) => {}
            Ok((k, _, _)) => bail!("unexpected upgrade message {:?}", k as char),
            Err(e) => {
                tracing::warn!(
                    new_pid,
                    error = format!("{e:#}"),
                    "upgrade abandoned by the new process; still serving"
                );
                return Ok(false);
            }
        }
        // The new process serves, and binds its own control socket at `path`
        // next: should this thread end now (a panic further on), the process
        // must not bind one again, renaming it over the new process's (the
        // next upgrade would come here).
        lost.disarm();
        // Under systemd the new process is the service's main one from now
        // on (`readiness.rs`): this one's exit must not stop the unit.
        crate::readiness::handed_over_to(new_pid);
        self.leave(peer, &more, new_pid, raw.len(), v0);
        Ok(true)
    }

    /// The hand-over once the new process said it serves: this process
    /// leaves, whatever happens here, as its [`Leaving`] is dropped (at the
    /// end, or by a panic midway), so nothing fails out of it. Only the
    /// hand-over's own steps are here; the way out is `Leaving`'s alone.
    fn leave(&self, peer: &Peer, more: &[ServerHandle], new_pid: u32, listeners: usize, v0: bool) {
        let mut leaving = Leaving {
            upgrades: self,
            more,
            new_pid,
            listeners,
            busy: None,
            sent: None,
        };
        let panic_at = test_panic_point(&self.path);
        if panic_at == PanicAt::Start {
            panic!("the hand-over panics after the new process said it serves (told by a test)");
        }
        let started = Instant::now();
        // The new process serves the slot now: its copy of the lock is the
        // lock. (Had it gone away before this, this one would still hold it.)
        self.release_slot();
        // Taken before shutdown begins, so the process waits for it at exit;
        // `leaving` holds it until it said it handed over.
        leaving.busy = Some(self.lock_busy());
        // The new process accepts from now on: stop accepting and hand the
        // parked connections over; the rest drain as in a graceful shutdown.
        // A new process of a session before 47 adopts HTTP/1.1 only: framed
        // handlers are then not asked to export (they would hear
        // `HandedOver`, lose their state and be closed here without a
        // goodbye), and their connections drain as before 47.
        let kinds = match v0 {
            true => HandOverKinds::Http1Only,
            false => HandOverKinds::All,
        };
        let mut batches = self.handle.hand_over_parked_of(kinds);
        self.handle.shutdown();
        // The admin listener(s) too: the new process serves them now, and an
        // old process answering /metrics (or taking /publish) while it drains
        // would have scrapes alternate between the two processes' counters.
        // Their requests in flight finish. Asking for their parked connections
        // is how to hear that their workers stopped accepting (waited for
        // before 'E', so that once the new process says it is done no admin
        // request reaches this one); those idle connections close here, as
        // a shutdown closes them, and their clients reconnect to the new
        // process.
        let others: Vec<_> = more
            .iter()
            .map(|other| {
                let parked = other.hand_over_parked();
                other.shutdown();
                parked
            })
            .collect();
        // An error only loses the parked connections not sent yet (they
        // close here).
        let mut handed = Handed::default();
        fit_send_buffer(peer);
        let sending = (|| -> anyhow::Result<()> {
            send_batches(peer, &mut batches, v0, &mut handed)?;
            others.into_iter().flatten().for_each(drop);
            if panic_at == PanicAt::BeforeEnd {
                panic!("the hand-over panics before its end message (told by a test)");
            }
            peer.send(END, &(handed.sent as u64).to_be_bytes(), &[])
        })();
        let sent = handed.sent;
        if let Err(e) = sending {
            tracing::error!(
                new_pid,
                sent,
                error = format!("{e:#}"),
                "upgrade: the new process went away during the hand-over; the parked connections not sent were closed"
            );
        } else if handed.closed() > 0 {
            tracing::warn!(
                new_pid,
                sent,
                closed = handed.closed(),
                "upgrade: parked connections that could not be sent were closed"
            );
        }
        // What stays, as each worker counted it once what moves had left
        // its lots and before its drain began (WebSockets, framed ones that
        // do not move, TLS, HTTP/2, requests in flight); the hand-over
        // line says so (it said only what moved).
        let draining = Draining::left(batches.left_to_drain(), self.handle.shutdown_drain_rate());
        tracing::info!(
            new_pid,
            parked = sent,
            framed = handed.messages,
            closed = handed.closed(),
            left = draining.left,
            message_connections = draining.messages,
            ms = started.elapsed().as_millis() as u64,
            "upgrade: handed over; draining the remaining connections"
        );
        if let Some(warning) = draining.storm_warning() {
            tracing::warn!(
                left = draining.left,
                message_connections = draining.messages,
                "upgrade: {warning}"
            );
        }
        leaving.sent = Some((sent, draining));
    }

    /// The busy flag's guard (see [`ControlSocket`]'s `busy`).
    fn lock_busy(&self) -> std::sync::MutexGuard<'_, bool> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets go of this process's copy of the slot lock (the new process's
    /// is the lock now); nothing if it is gone already.
    fn release_slot(&self) {
        drop(
            self.slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }
}

/// The old process's way out once the new process said it serves, taken
/// when dropped: at the end of the hand-over, or by a panic midway (a bug),
/// which used to leave this process serving beside the new one, its parked
/// connections held, until someone signalled it. Whatever happened, it
/// stops accepting and shuts its server(s) down as a graceful shutdown does
/// (the parked connections not handed over close; the requests in flight
/// finish), lets go of the slot lock, leaves the control socket's name to
/// the new process, refuses further take-overs, and says it handed over.
/// Each step is idempotent: the hand-over took most already.
struct Leaving<'a> {
    upgrades: &'a Upgrades,
    more: &'a [ServerHandle],
    new_pid: u32,
    listeners: usize,
    /// The busy flag, held from before the shutdown until the drop said it
    /// handed over: once its server stopped, the process waits for it at
    /// exit ([`ControlSocket`]'s drop), and must not exit before its
    /// supervisor heard of the hand-over (or it restarts this worker
    /// process, taking the exit for a death). A guard of the hand-over's
    /// own, declared after this, was released first by a panic's unwinding,
    /// before the drop took it again: in between the process could exit
    /// unsaid.
    busy: Option<std::sync::MutexGuard<'a, bool>>,
    /// The parked connections sent, and what is left to the drain, once
    /// the hand-over got to its end; if not, the drop says the hand-over
    /// failed.
    sent: Option<(usize, Draining)>,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        let up = self.upgrades;
        test_gate(&up.path, ".handed", TEST_HANDED_GATE_ENV);
        // Released last, once said: the name is the new process's, and the
        // supervisor must hear of the hand-over before the process exits.
        let mut busy = self.busy.take().unwrap_or_else(|| up.lock_busy());
        *busy = true;
        up.handle.shutdown();
        for other in self.more {
            other.shutdown();
        }
        up.release_slot();
        refuse_more(&up.listener);
        let (new_pid, listeners) = (self.new_pid, self.listeners);
        match self.sent {
            Some((sent, draining)) => {
                crate::say!("{}", handed_over_line(new_pid, listeners, sent, draining))
            }
            None => {
                tracing::error!(
                    new_pid,
                    "upgrade: the hand-over failed after the new process said it serves; shutting down (the parked connections not handed over close)"
                );
                crate::say!(
                    "megaconn handed over to pid {new_pid}, but not all of it (see the error above); draining"
                );
            }
        }
        drop(busy);
    }
}

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`]: a process
/// whose new process said it serves stops at its control socket's path
/// plus `.ready.gate`; if the test writes `panic`, the hand-over panics
/// there, at its start, as a bug would; if it writes `panic-late`, the
/// hand-over panics later, after the server's shutdown, before its end
/// message.
const TEST_READY_GATE_ENV: &str = "MEGACONN_TEST_READY_GATE";

/// Where a test has the hand-over panic after the new process said it
/// serves ([`TEST_READY_GATE_ENV`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PanicAt {
    Nowhere,
    /// At once.
    Start,
    /// After the server's shutdown, before the end message.
    BeforeEnd,
}

/// Where the hand-over panics, as a test asked at [`TEST_READY_GATE_ENV`];
/// the unit tests' control socket name `tests::PANIC_AFTER_READY` panics
/// here at once.
fn test_panic_point(path: &Path) -> PanicAt {
    #[cfg(test)]
    tests::panic_after_ready(path);
    let said = test_gate(path, ".ready", TEST_READY_GATE_ENV);
    if said.starts_with(b"panic-late") {
        PanicAt::BeforeEnd
    } else if said.starts_with(b"panic") {
        PanicAt::Start
    } else {
        PanicAt::Nowhere
    }
}

/// Binds the control socket at `path` and serves upgrade requests for
/// `handle`, with the slot lock from `slot` (see [`ControlSocket::keep`]);
/// `None` (with a warning) when it cannot be bound: the server runs, but
/// nothing can take over from it, and `slot` keeps the lock.
pub fn listen_for_upgrades(
    path: &Path,
    handle: &ServerHandle,
    slot: &mut Option<SlotLock>,
) -> Option<ControlSocket> {
    let bound = ControlSocket::bind(path).and_then(|socket| {
        socket.keep(slot.take());
        if let Err(e) = socket.serve(handle.clone()) {
            *slot = socket.release();
            return Err(e.into());
        }
        Ok(socket)
    });
    match bound {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "no upgrade control socket: `serve --upgrade` cannot take over from this server (set --upgrade-socket to a writable path)"
            );
            None
        }
    }
}

/// The new process's side, first half (see [`take_over`]). Finish with
/// [`TakeOver::finish`] once serving.
pub struct TakeOver {
    peer: Peer,
    started: Instant,
    taken: usize,
    /// The old worker process's slot lock, if it sent one.
    slot: Option<SlotLock>,
    /// How many of the sockets taken over are the old main server's (the
    /// first ones; the admin listener's follow); `None` from a megaconn
    /// that does not say.
    main: Option<usize>,
}

/// Connects to the running server's control socket at `path` and takes its
/// listening sockets (for `Builder::adopt_listeners`).
pub fn take_over(path: &Path) -> anyhow::Result<(TakeOver, Vec<TcpListener>)> {
    test_gate(path, "", TEST_GATE_ENV);
    let started = Instant::now();
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path)?;
    match sock::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(source @ (nix::Error::ENOENT | nix::Error::ECONNREFUSED)) => {
            return Err(NothingToTakeOver {
                path: path.to_path_buf(),
                source,
            }
            .into())
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("--upgrade: cannot connect to {}", path.display()))
        }
    }
    let peer = Peer(fd);
    peer.set_timeout()?;
    // The pid, then the wire version of the parked states this process
    // reads (an old process reads the pid only).
    let mut hello = std::process::id().to_be_bytes().to_vec();
    hello.push(PARKED_WIRE_VERSION);
    peer.send(HELLO, &hello, &[])?;
    let mut listeners = Vec::new();
    let mut slot = None;
    let mut main = None;
    loop {
        let (payload, mut fds) = peer.expect(LISTENERS)?;
        let last = payload.first() == Some(&1);
        if last && payload.get(1) == Some(&1) {
            slot = fds.pop().map(|fd| SlotLock {
                file: std::fs::File::from(fd),
                path: SlotLock::path(path),
                sent: false,
            });
        }
        if last {
            // Sent by a megaconn of session 40 on; `None` from an older one.
            main = payload
                .get(2..6)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
        }
        listeners.extend(fds.into_iter().map(TcpListener::from));
        if last {
            break;
        }
    }
    let taken = listeners.len();
    Ok((
        TakeOver {
            peer,
            started,
            taken,
            slot,
            main,
        },
        listeners,
    ))
}

impl TakeOver {
    /// Sorts the listening sockets taken over (`listeners`, as
    /// [`take_over`] returned them) into the admin listener's (bound to
    /// `admin`) and the main server's (bound to one of `listen`), before
    /// the old process is told anything.
    ///
    /// A main socket of the old process that this one would not serve (its
    /// address is not among `listen`: `--listen` differs) refuses the
    /// take-over, naming the old addresses: the old process serves on. It
    /// used to be closed silently, and once the old process left, its port
    /// was served by nobody. The old admin listener's socket is dropped
    /// when this process has another `--admin` (or `off`): that one is
    /// asked for. From an older megaconn, which does not say which sockets
    /// are its main server's, every socket not bound to `admin` is taken
    /// for a main one. What `megaconn upgrade done` counts is what this
    /// process serves.
    pub fn sort(
        &mut self,
        listeners: Vec<TcpListener>,
        listen: &[std::net::SocketAddr],
        admin: Option<std::net::SocketAddr>,
    ) -> Result<(Vec<TcpListener>, Vec<TcpListener>), crate::UsageError> {
        let (mut admins, mut mains, mut unserved, mut old) = (vec![], vec![], vec![], vec![]);
        for (i, l) in listeners.into_iter().enumerate() {
            let is_main = self.main.is_none_or(|n| i < n);
            let Ok(addr) = l.local_addr() else { continue };
            if is_main && !old.contains(&addr) && Some(addr) != admin {
                old.push(addr);
            }
            if Some(addr) == admin {
                admins.push(l);
            } else if listen.contains(&addr) {
                mains.push(l);
            } else if is_main && !unserved.contains(&addr) {
                unserved.push(addr);
            }
        }
        if !unserved.is_empty() {
            let list = |a: &[std::net::SocketAddr]| {
                a.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let flags: Vec<String> = old.iter().map(|a| format!("--listen {a}")).collect();
            return Err(crate::UsageError(format!(
                "--upgrade: the running server listens on {}, and this one would not serve {} (its --listen differs): taking over would close {} for good. Nothing was taken over; the running server serves on. Give the same --listen as the running server ({}); to move to another address, start a server there and stop the old one",
                list(&old),
                list(&unserved),
                if unserved.len() == 1 { "it" } else { "them" },
                flags.join(" ")
            )));
        }
        self.taken = mains.len() + admins.len();
        Ok((admins, mains))
    }
}

/// From [`TakeOver::finish`]: sent once this process runs its servers
/// (`Started::run` called), it lets the hand-over thread print `megaconn
/// upgrade done`.
#[must_use = "megaconn upgrade done is printed only once this is sent"]
pub struct Serving(std::sync::mpsc::SyncSender<()>);

impl Serving {
    /// This process's servers accept from now on.
    pub fn send(self) {
        // A bounded channel with room for it: never blocks. The thread
        // gone (it panicked), there is nobody to tell.
        let _ = self.0.send(());
    }
}

impl TakeOver {
    /// The slot lock the old process sent (a worker process's), to keep
    /// while serving; `None` from a process that had none.
    pub fn take_slot(&mut self) -> Option<SlotLock> {
        self.slot.take()
    }

    /// Tells the old process this one serves, then takes its parked
    /// connections into `handle` and binds the control socket at `path` for
    /// the next upgrade, on a thread of its own (the caller keeps serving).
    /// Call it with this process's servers built but not accepting yet, and
    /// start them once it returned `Ok`: a connection accepted before would
    /// be lost should this process exit before the old one heard it.
    /// It binds the control socket even if the parked connections failed
    /// (the old process is leaving all the same), so that a next upgrade
    /// can take over from this one. `ready` hears the control socket, or
    /// the error binding it (bind it again later: until then nothing can
    /// take over from this process, which holds its slot's lock).
    ///
    /// An `Err` (no thread to be had, the old process gone) comes before
    /// the old process heard that this one serves: it serves on, and this
    /// one should exit. The old process used to be told first, so that a
    /// thread refused then (at the process's or the user's limit) left
    /// nobody serving.
    ///
    /// The thread prints `megaconn upgrade done` (the line that says this
    /// process serves) only once the returned [`Serving`] is sent, which
    /// the caller does once it runs its servers.
    pub fn finish(
        self,
        handle: ServerHandle,
        path: PathBuf,
        ready: tokio::sync::oneshot::Sender<anyhow::Result<ControlSocket>>,
    ) -> anyhow::Result<Serving> {
        let TakeOver {
            peer,
            started,
            taken,
            slot: _,
            main: _,
        } = self;
        // The thread starts first and waits for the connection, which it
        // gets once the old process was told: if READY cannot be sent, the
        // thread hears nothing and ends.
        let (go, told) = std::sync::mpsc::sync_channel::<Peer>(1);
        let (serving, runs) = std::sync::mpsc::sync_channel::<()>(1);
        let gate = path.clone();
        spawn_unless_told(&gate, "megaconn-upgrade", move || {
            let Ok(peer) = told.recv() else { return };
            let parked = receive_parked(&peer, &handle);
            if let Err(e) = &parked {
                tracing::error!(error = format!("{e:#}"), "upgrade: taking over the parked connections failed; serving without them");
            }
            let control = ControlSocket::bind(&path);
            if let Err(e) = &control {
                tracing::error!(error = format!("{e:#}"), "upgrade: cannot bind the control socket for the next upgrade; trying again");
            }
            // The parked connections came once the old process stopped
            // accepting, which may be before this one runs its servers:
            // the line below says it serves, so it waits for that (a test
            // holds a process before its run, `TEST_RUN_GATE_ENV`). Never
            // sent, the process is exiting.
            if runs.recv().is_err() {
                return;
            }
            // A supervisor counts this process ready on either line
            // (it serves the listeners it took over), and would
            // otherwise kill it at its start-up deadline.
            let line = match (&parked, &control) {
                (Ok(parked), Ok(_)) => Moved {
                    sockets: taken,
                    parked: *parked,
                }
                .done_line(started.elapsed(), "", &path),
                (_, Ok(_)) => partly_done_line(format_args!(
                    "serving without the parked connections; next upgrade on {}",
                    path.display()
                )),
                (_, Err(_)) => partly_done_line(format_args!(
                    "serving; no next upgrade until the control socket {} is bound (trying again)",
                    path.display()
                )),
            };
            crate::say!("{line}");
            crate::readiness::took_over(&line);
            let _ = ready.send(control);
        })
        .context("upgrade: cannot start a thread to take over the parked connections (the old process serves on)")?;
        peer.send(READY, &[], &[])?;
        // The thread waits for it (a bounded channel with room for it, so
        // this never blocks); were it gone, `ready` would hear nothing and
        // the caller binds the control socket anew.
        let _ = go.send(peer);
        Ok(Serving(serving))
    }
}

/// Test-only knob (not a user setting), as [`TEST_GATE_ENV`] for the
/// thread [`TakeOver::finish`] starts: a new process about to start it
/// stops at the control socket's path plus `.spawn.gate`; if the test
/// writes `fail` before it closes the connection, the thread cannot be
/// had (as at the process's or the user's thread limit).
const TEST_SPAWN_GATE_ENV: &str = "MEGACONN_TEST_SPAWN_GATE";

/// A thread named `name` running `f`, as `std::thread::Builder::spawn`,
/// or the error a test told it to fail with ([`TEST_SPAWN_GATE_ENV`], at
/// the control socket `path`).
fn spawn_unless_told(
    path: &Path,
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    if test_gate(path, ".spawn", TEST_SPAWN_GATE_ENV).starts_with(b"fail") {
        return Err(std::io::Error::other("failed by the test gate"));
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use megaconn::ParkedState;

    /// The control socket name at which a hand-over panics once the new
    /// process said it serves ([`panic_after_ready`]).
    const PANIC_AFTER_READY: &str = "panic-after-ready.sock";

    /// A test's stand-in for a panic in a hand-over after the new process
    /// said it serves (at the hand-over's start, before anything was
    /// handed over or shut down), at the control socket named
    /// [`PANIC_AFTER_READY`] only.
    pub(super) fn panic_after_ready(path: &Path) {
        if path.file_name() == Some(PANIC_AFTER_READY.as_ref()) {
            panic!("a hand-over panics after the new process said it serves");
        }
    }

    /// A server serving the demo on this test's runtime, its idle HTTP/1.1
    /// connections parked at once (they stop with the runtime).
    pub(super) fn served() -> (ServerHandle, std::net::SocketAddr) {
        let mut server = megaconn::Server::bind(([127, 0, 0, 1], 0).into())
            .workers(1)
            .park_idle_after(Some(Duration::from_millis(1)))
            .listen()
            .unwrap();
        let (handle, addr) = (server.handle(), server.local_addr());
        let publisher = crate::fanout::Publisher::local(server.hub());
        let app = crate::demo::Demo::new(handle.clone(), publisher, Default::default());
        tokio::spawn(server.start(app).unwrap().run());
        (handle, addr)
    }

    /// A connected pair of control socket ends (old process, new process).
    pub(super) fn control_pair() -> (Peer, Peer) {
        let (a, b) = sock::socketpair(
            sock::AddressFamily::Unix,
            sock::SockType::SeqPacket,
            None,
            sock::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        // SAFETY: fresh descriptors nobody else owns.
        unsafe { (Peer(OwnedFd::from_raw_fd(a)), Peer(OwnedFd::from_raw_fd(b))) }
    }

    /// One request on `client`: the start of its answer (empty: closed).
    pub(super) fn ask(client: &mut std::net::TcpStream) -> String {
        use std::io::{Read as _, Write as _};
        client.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        // A closed connection may refuse the write: the read says so.
        let _ = client.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// A process of a session before 47 sends its parked HTTP/1.1
    /// connections in version 0's 5-byte records: they are adopted (they
    /// were all refused and closed, the hand-over failing at the first
    /// message), and an unreadable message closes its own sockets only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_connections_of_an_old_process_are_adopted() {
        let (handle, _) = served();
        let (old, new) = control_pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut clients, mut accepted) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap());
            let (s, _) = listener.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            accepted.push(s);
        }
        let fd = |i: usize| accepted[i].as_raw_fd();
        // A version 1 record cut short: refused, its socket closed.
        old.send(PARKED, &[ParkedState::VERSION, 1, 0], &[fd(0)])
            .unwrap();
        let record = [1u8, 0, 0, 0xea, 0x60]; // HTTP/1.1, 60 s idle left
        old.send(PARKED, &[record, record].concat(), &[fd(1), fd(2)])
            .unwrap();
        old.send(END, &2u64.to_be_bytes(), &[]).unwrap();
        drop(accepted);
        let received = tokio::task::spawn_blocking(move || receive_parked(&new, &handle))
            .await
            .unwrap();
        assert_eq!(received.unwrap(), 2);
        let answers =
            tokio::task::spawn_blocking(move || clients.iter_mut().map(ask).collect::<Vec<_>>())
                .await
                .unwrap();
        assert_eq!(answers[0], "", "the refused message's connection closed");
        for a in &answers[1..] {
            assert!(
                a.starts_with("HTTP/1.1 "),
                "not served after the move: {a:?}"
            );
        }
    }

    /// Waits (bounded) until `handle`'s server has one connection parked.
    async fn one_parked(handle: &ServerHandle) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while handle.stats().connections_parked != 1 {
            assert!(Instant::now() < deadline, "the connection never parked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Hands `handle`'s server over through a fresh control socket to a
    /// new process played here: it says `hello`, waits for the one
    /// listener, says it serves, then `rest` reads what the old process
    /// sends; returns what `rest` made of it once the old side is done.
    async fn handed_over_to<T: Send + 'static>(
        handle: &ServerHandle,
        hello: Vec<u8>,
        rest: impl FnOnce(&Peer) -> T + Send + 'static,
    ) -> T {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let control = ControlSocket::bind(&path).unwrap();
        let thread = control.spawn(handle.clone()).unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let fd = seqpacket().unwrap();
            sock::connect(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
            let peer = Peer(fd);
            peer.send(HELLO, &hello, &[]).unwrap();
            while peer.expect(LISTENERS).unwrap().0.first() != Some(&1) {}
            peer.send(READY, &[], &[]).unwrap();
            rest(&peer)
        })
        .await
        .unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        got
    }

    /// The old process sends its parked HTTP/1.1 connections in version
    /// 0's 5-byte records to a new process whose hello has no wire version
    /// (a rollback to a process of a session before 47, which reads only
    /// those), and in version 1's 10-byte ones to a new process that says
    /// it reads them. It sent version 1 to all, which an old process
    /// refused (closing them all).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_old_new_process_gets_the_old_form() {
        for (version, record) in [
            (None, ParkedState::V0_BYTES),
            (Some(PARKED_WIRE_VERSION), 10),
        ] {
            let (handle, addr) = served();
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let answer = tokio::task::spawn_blocking(move || (ask(&mut client), client))
                .await
                .unwrap();
            assert!(answer.0.starts_with("HTTP/1.1 "), "{:?}", answer.0);
            one_parked(&handle).await;
            let mut hello = std::process::id().to_be_bytes().to_vec();
            hello.extend(version);
            let parked = handed_over_to(&handle, hello, |peer| {
                let (payload, fds) = peer.expect(PARKED).unwrap();
                peer.expect(END).unwrap();
                (payload, fds.len())
            })
            .await;
            assert_eq!(parked.1, 1, "{version:?}");
            assert_eq!(parked.0.len(), record, "{version:?}: {:?}", parked.0);
            assert_eq!(parked.0[0] == ParkedState::VERSION, version.is_some());
            drop(answer);
        }
    }

    /// A framed handler that opts in to moving, and says how its
    /// connections closed.
    struct Portable(std::sync::mpsc::Sender<megaconn::CloseReason>);

    impl megaconn::FramedHandler for Portable {
        type State = ();

        async fn on_message(
            &self,
            _: &mut (),
            frame: bytes::Bytes,
            _: &megaconn::Session,
        ) -> Option<bytes::Bytes> {
            Some(frame)
        }

        fn on_close(&self, _: (), reason: megaconn::CloseReason) {
            let _ = self.0.send(reason);
        }

        fn export(&self, _: &()) -> Option<Vec<u8>> {
            Some(Vec::new())
        }

        fn import(&self, _: &[u8]) -> Option<()> {
            Some(())
        }
    }

    /// A rollback to a process of a session before 47 (its hello has no
    /// wire version; it adopts HTTP/1.1 only): a parked framed connection
    /// whose handler opts in is not asked to export, and drains as before
    /// 47: its handler hears `Shutdown`, its device reads the goodbye
    /// frame. It was exported (the handler heard `HandedOver` and lost its
    /// state), then closed here without a goodbye.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rollback_to_a_pre_47_process_drains_framed_connections() {
        use std::io::{BufRead as _, Write as _};
        let (closes, closed) = std::sync::mpsc::channel();
        let server = megaconn::Server::builder()
            .workers(1)
            .park_idle_after(Some(Duration::from_millis(1)))
            .listen_framed_on(([127, 0, 0, 1], 0).into(), megaconn::Framing::lines())
            .goodbye_frame(Some(bytes::Bytes::from_static(b"bye")))
            .listen()
            .unwrap();
        let (handle, addr) = (server.handle(), server.local_addr());
        tokio::spawn(server.start_framed(Portable(closes)).unwrap().run());
        let device = std::net::TcpStream::connect(addr).unwrap();
        device.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        let mut device = std::io::BufReader::new(device);
        device.get_mut().write_all(b"hi\n").unwrap();
        let mut line = String::new();
        device.read_line(&mut line).unwrap();
        assert_eq!(line, "hi\n");
        one_parked(&handle).await;
        // The pid only: a process of a session before 47.
        let hello = std::process::id().to_be_bytes().to_vec();
        let parked = handed_over_to(&handle, hello, |peer| {
            let (kind, payload, fds) = peer.recv().unwrap();
            (kind, payload, fds.len())
        })
        .await;
        assert_eq!(
            parked,
            (END, 0u64.to_be_bytes().to_vec(), 0),
            "nothing sent"
        );
        let reason = tokio::task::spawn_blocking(move || closed.recv_timeout(STEP_TIMEOUT))
            .await
            .unwrap();
        assert_eq!(reason, Ok(megaconn::CloseReason::Shutdown));
        let rest = tokio::task::spawn_blocking(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut device, &mut rest);
            rest
        })
        .await
        .unwrap();
        assert_eq!(rest, "bye\n", "the goodbye, then the close");
        assert_eq!(handle.stats().handover_refused, 0);
    }

    /// A failure that repeats is admitted first, then once per interval,
    /// with the count held back since.
    #[test]
    fn a_repeating_failure_is_logged_first_then_once_per_interval() {
        let start = Instant::now();
        let mut log = EveryAtMost::new(Duration::from_secs(60));
        let at = |secs| start + Duration::from_secs(secs);
        let admitted: Vec<_> = [0, 5, 10, 59, 60, 65, 119, 120]
            .into_iter()
            .map(|secs| log.admit(at(secs)))
            .collect();
        assert_eq!(
            admitted,
            [Some(0), None, None, None, Some(3), None, None, Some(2)]
        );
    }

    /// A hand-over whose thread panics after the new process said it
    /// serves leaves the control socket not lost: the name is the new
    /// process's (it binds its own next), and a process that bound one
    /// again there would take the next upgrade from it. It said lost, and
    /// `serve` bound the control socket again. And the process leaves all
    /// the same, as the new process serves: its server shuts down, and a
    /// next take-over is refused at once. It used to serve on beside the
    /// new process until signalled.
    #[tokio::test]
    async fn a_hand_over_that_panics_after_ready_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PANIC_AFTER_READY);
        let server = megaconn::Server::bind(([127, 0, 0, 1], 0).into())
            .workers(1)
            .listen()
            .unwrap();
        let control = ControlSocket::bind(&path).unwrap();
        let thread = control.spawn(server.handle()).unwrap();
        let (new, listeners) = take_over(&path).unwrap();
        assert_eq!(listeners.len(), 1);
        new.peer.send(READY, &[], &[]).unwrap();
        assert!(thread.join().is_err(), "the hand-over panicked");
        assert!(
            server.handle().is_shutting_down(),
            "the old process serves on beside the new one"
        );
        let err = take_over(&path).err().expect("refused");
        assert!(err.downcast_ref::<NothingToTakeOver>().is_some(), "{err:#}");
        // A notification before would be waiting (`notify_one` keeps it).
        assert!(
            tokio::time::timeout(Duration::ZERO, control.lost())
                .await
                .is_err(),
            "the control socket said it is lost after the new process said it serves"
        );
    }

    /// A slot is claimed by one process at a time: a second claim finds it
    /// taken ([`SlotTaken`]) until the first holder lets go (as a process's
    /// exit does), whatever the lock file held before.
    #[test]
    fn a_slot_is_claimed_once_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("upgrade.sock.1");
        let first = SlotLock::claim(&control).unwrap().expect("a lock");
        assert!(SlotLock::claim(&control).is_err(), "taken");
        drop(first);
        SlotLock::claim(&control).unwrap().expect("free again");
    }

    /// A slot retired (a graceful exit) leaves no lock file, and is
    /// claimed again as before. A lock that went to another process (a
    /// take-over) leaves its file: that process may hold it still.
    #[test]
    fn a_retired_slot_leaves_no_lock_file_unless_its_lock_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("upgrade.sock.0");
        let file = SlotLock::path(&control);
        SlotLock::claim(&control).unwrap().expect("a lock").retire();
        assert!(!file.exists(), "the lock file stayed");
        let mut again = SlotLock::claim(&control).unwrap().expect("a lock again");
        assert!(SlotLock::claim(&control).is_err(), "taken");
        again.sent = true;
        again.retire();
        assert!(file.exists(), "a lock held elsewhere lost its file");
    }

    /// A claim that opened the lock file just before its holder retired it
    /// (removed, then let go) gets the lock on a file no longer at the path:
    /// it lets go and tries again, instead of serving beside a process that
    /// locked the new file at the path.
    #[test]
    fn a_claim_that_locked_a_removed_file_tries_again() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("upgrade.sock.0");
        let path = SlotLock::path(&control);
        let holder = SlotLock::claim(&control).unwrap().expect("a lock");
        let opened_before = std::fs::File::open(&path).unwrap();
        holder.retire();
        assert!(matches!(
            SlotLock::lock_opened(opened_before, &path),
            Claim::Moved
        ));
        // And once another made the file anew and holds it, a claimer that
        // had the old one open is not let in either.
        let newer = SlotLock::claim(&control).unwrap().expect("a lock");
        let opened_meanwhile = std::fs::File::open(&path).unwrap();
        assert!(matches!(
            SlotLock::lock_opened(opened_meanwhile, &path),
            Claim::Taken
        ));
        drop(newer);
    }

    /// Once a process handed over, a take-over that asks it now is refused
    /// at once ([`NothingToTakeOver`], so a supervisor starts that worker
    /// process afresh), and one that was queued already hears the end of
    /// the stream, instead of either waiting out [`STEP_TIMEOUT`] for
    /// listening sockets that never come.
    #[test]
    fn after_a_hand_over_a_take_over_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let control = ControlSocket::bind(&path).unwrap();
        let queued = Peer(seqpacket().unwrap());
        sock::connect(queued.0.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        queued.set_timeout().unwrap();
        refuse_more(&control.listener);
        let err = queued.recv().unwrap_err();
        assert!(format!("{err:#}").contains("closed"), "{err:#}");
        let err = take_over(&path).err().expect("refused");
        assert!(err.downcast_ref::<NothingToTakeOver>().is_some(), "{err:#}");
    }

    /// A control socket a killed server left (bound, nothing listening,
    /// never removed) is nothing to take over from, and the error says so
    /// and what to do; a path with nothing at all asks whether a server runs.
    #[test]
    fn a_socket_a_killed_server_left_is_nothing_to_take_over_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let err = take_over(&path).err().expect("nothing there");
        assert!(format!("{err}").contains("is one running"), "{err}");
        let killed = seqpacket().unwrap();
        sock::bind(killed.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        sock::listen(killed.as_raw_fd(), 4).unwrap();
        drop(killed);
        assert!(path.exists());
        let err = take_over(&path).err().expect("nothing listens");
        assert!(err.downcast_ref::<NothingToTakeOver>().is_some(), "{err:#}");
        assert!(
            format!("{err}").contains("its server was killed")
                && format!("{err}").contains("start without --upgrade"),
            "{err}"
        );
    }

    /// A control socket whose listener is gone (shut down here, so that
    /// `accept` fails with `EINVAL`) says it is lost, for its process to
    /// bind one anew: its thread used to end with a log line only.
    #[tokio::test]
    async fn a_control_socket_whose_listener_is_gone_says_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let server = megaconn::Server::bind(([127, 0, 0, 1], 0).into())
            .workers(1)
            .listen()
            .unwrap();
        let control = ControlSocket::bind(&path).unwrap();
        control.serve(server.handle()).unwrap();
        sock::shutdown(control.listener.as_raw_fd(), sock::Shutdown::Both).unwrap();
        tokio::time::timeout(Duration::from_secs(30), control.lost())
            .await
            .expect("the control socket says it is lost");
    }
}
