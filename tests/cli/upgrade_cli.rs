//! `megaconn serve --upgrade`: a new process takes the running one's
//! listening sockets and parked connections over its control socket; clients
//! see no refused connection, no failed request, and idle keep-alive
//! connections keep working, now served by the new process.
//!
//! Each generation of the server sends its own `Server` header, so a response
//! says which process served it. Every wait is on something the processes
//! say or do (a line of output, a metric, a gate, a control socket renamed
//! into place), bounded by `common::CHILD_SAFETY`, but one: that `megaconn
//! upgrade done` has not come yet
//! (`upgrade_done_comes_only_once_the_new_process_runs_its_servers`) is
//! given a second, counted from when the process did all it does before
//! the line, as nothing says that a line has not come; a machine too slow
//! for that second can only make the test pass wrongly, never fail.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{ChildGuard, Gate, Lines, CHILD_SAFETY};

/// One generation of the server.
struct Generation {
    child: ChildGuard,
    lines: Lines,
    /// Its admin listener, when started with one.
    admin: String,
}

/// Starts generation `n` on `listen` (port 0 for the first), taking over
/// from the previous one when `n > 0`; returns once it serves and (when
/// taking over) has received the parked connections and listens for the
/// next upgrade.
fn start(n: usize, listen: &str, socket: &Path, extra: &[&str]) -> (Generation, String) {
    start_with(n, listen, socket, extra, &[])
}

/// As [`start`], with more variables in its environment (test gates).
fn start_with(
    n: usize,
    listen: &str,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Generation, String) {
    let mut cmd = serve_command(n, listen, socket, extra);
    let (child, lines) = spawn_generation(cmd.envs(env.iter().copied()));
    generation(n, child, lines, extra)
}

/// As [`start_with`], with its log piped (`RUST_LOG=info`) and read.
fn start_logged(
    n: usize,
    listen: &str,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Generation, String, Log) {
    let mut cmd = serve_command(n, listen, socket, extra);
    let (child, lines, log) = Log::spawn(cmd.envs(env.iter().copied()));
    let (generation, addr) = generation(n, child, lines, extra);
    (generation, addr, log)
}

/// Generation `n`, spawned as `child` with output `lines`, once
/// [`started`].
fn generation(n: usize, child: ChildGuard, lines: Lines, extra: &[&str]) -> (Generation, String) {
    let (addr, admin) = started(n, &lines, extra);
    (
        Generation {
            child,
            lines,
            admin,
        },
        addr,
    )
}

/// Spawns a generation (`cmd`, from [`serve_command`]) without waiting
/// for it; its log ignored.
fn spawn_generation(cmd: &mut Command) -> (ChildGuard, Lines) {
    let mut child = ChildGuard::spawn(cmd.stderr(Stdio::null()));
    let lines = Lines::new(child.child().stdout.take().unwrap());
    (child, lines)
}

/// Waits, on generation `n`'s output `lines`, until it serves and (when
/// taking over) is done; returns its address and its admin listener's
/// (empty without one).
fn started(n: usize, lines: &Lines, extra: &[&str]) -> (String, String) {
    let addr = serving_addr(lines);
    let mut admin = String::new();
    if n > 0 {
        loop {
            let line = lines.expect_line();
            if let Some(a) = line.strip_prefix("megaconn admin on http://") {
                admin = a.to_string();
            }
            if line.starts_with("megaconn upgrade done") {
                break;
            }
        }
    } else if extra.contains(&"127.0.0.1:0") {
        let line = lines.expect_line();
        admin = line
            .strip_prefix("megaconn admin on http://")
            .unwrap_or_else(|| panic!("no admin line: {line}"))
            .to_string();
    }
    (addr, admin)
}

/// `megaconn serve` as generation `n` (its `Server` header) on `listen`,
/// taking over from the previous one when `n > 0`, with 2 workers and
/// `extra` flags; stdout piped.
fn serve_command(n: usize, listen: &str, socket: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_megaconn"));
    cmd.args(["serve", "--listen", listen, "--workers", "2"])
        .args(["--server-header", &format!("gen{n}")])
        .arg("--upgrade-socket")
        .arg(socket)
        .args(extra)
        .stdout(Stdio::piped());
    if n > 0 {
        cmd.arg("--upgrade");
    }
    cmd
}

/// Waits for a server's first line, `megaconn serving on`; returns its
/// (first) address.
fn serving_addr(lines: &Lines) -> String {
    let serving = lines.expect_line();
    serving
        .strip_prefix("megaconn serving on http://")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("not a serving line: {serving}"))
        .to_string()
}

/// Waits for the old generation to drain and exit; returns its hand-over line.
fn finish(mut old: Generation) -> String {
    let rest = old.lines.rest();
    let status = old.child.wait();
    assert!(
        status.success(),
        "the old process failed: {status:?} {rest:?}"
    );
    rest.into_iter()
        .find(|l| l.starts_with("megaconn handed over"))
        .unwrap_or_else(|| panic!("the old process did not hand over"))
}

/// How many parked connections an old process's hand-over line (from
/// [`finish`]) says it handed over.
fn parked_handed_over(handed: &str) -> usize {
    handed
        .split(", ")
        .find_map(|part| {
            part.split_once(" parked connections; draining ")
                .map(|(n, _)| n)
        })
        .unwrap_or_else(|| panic!("not a whole hand-over: {handed}"))
        .parse()
        .unwrap_or_else(|e| panic!("not a count ({e}): {handed}"))
}

/// Reads one response on a keep-alive connection: status line, headers,
/// `Content-Length` body. Returns the head, then the body (as text).
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    head.push_str(&String::from_utf8_lossy(&body));
    Ok(head)
}

/// Clients that keep opening connections and making requests until told
/// to stop, counting what fails.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (addr, stop, ok, failed, refused) = (
                    addr.to_string(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    refused.clone(),
                );
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    while !stop.load(SeqCst) {
                        let mut s = match TcpStream::connect(&addr) {
                            Ok(s) => s,
                            Err(e) => {
                                refused.fetch_add(1, SeqCst);
                                errors.push(format!("connect: {e}"));
                                continue;
                            }
                        };
                        let _ = s.set_read_timeout(Some(CHILD_SAFETY));
                        let answer = s
                            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                            .and_then(|()| {
                                let mut out = String::new();
                                s.read_to_string(&mut out).map(|_| out)
                            });
                        match answer {
                            Ok(out) if out.starts_with("HTTP/1.1 200 ") => {
                                ok.fetch_add(1, SeqCst);
                            }
                            Ok(out) => {
                                failed.fetch_add(1, SeqCst);
                                errors.push(format!("answer: {out:?}"));
                            }
                            Err(e) => {
                                failed.fetch_add(1, SeqCst);
                                errors.push(format!("request: {e}"));
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            refused,
            threads,
        }
    }

    /// Waits until `more` requests have succeeded since now.
    fn progress(&self, more: u64) {
        let target = self.ok.load(SeqCst) + more;
        let deadline = Instant::now() + CHILD_SAFETY;
        while self.ok.load(SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "requests stopped succeeding ({} ok, {} failed, {} refused)",
                self.ok.load(SeqCst),
                self.failed.load(SeqCst),
                self.refused.load(SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(self) -> (u64, u64, u64, Vec<String>) {
        self.stop.store(true, SeqCst);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            self.ok.load(SeqCst),
            self.failed.load(SeqCst),
            self.refused.load(SeqCst),
            errors,
        )
    }
}

#[test]
fn twenty_upgrades_refuse_no_connection_and_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off", "--shutdown-timeout", "20s"];
    let (mut current, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let load = Load::start(&addr, 4);
    load.progress(50);
    for n in 1..=20 {
        let (next, _) = start(n, &addr, &socket, &extra);
        let handed = finish(std::mem::replace(&mut current, next));
        assert!(handed.contains("listening sockets"), "{handed}");
        // The new generation serves on its own now.
        load.progress(50);
    }
    let (ok, failed, refused, errors) = load.stop();
    assert_eq!(
        (failed, refused),
        (0, 0),
        "{ok} requests served; errors: {errors:?}"
    );
    current.child.signal(libc::SIGTERM);
    current.child.wait();
}

/// The value of an unlabelled metric on the admin listener.
fn metric(admin: &str, name: &str) -> f64 {
    get(admin, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Holds N idle keep-alive connections (waiting until `idle_metric` counts
/// them all), upgrades, then makes a request on every one: each is answered
/// by the new process, none was closed.
fn idle_connections_move(park_after: &str, idle_metric: &str) {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "127.0.0.1:0", "--park-after", park_after];
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let mut conns: Vec<BufReader<TcpStream>> = (0..N)
        .map(|_| {
            let s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
            BufReader::new(s)
        })
        .collect();
    for c in &mut conns {
        c.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let head = read_response(c).unwrap();
        assert!(head.contains("server: gen0"), "{head}");
    }
    let deadline = Instant::now() + CHILD_SAFETY;
    while metric(&old.admin, idle_metric) < N as f64 {
        assert!(Instant::now() < deadline, "connections did not go idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (new, _) = start(1, &addr, &socket, &extra);
    let handed = finish(old);
    assert_eq!(parked_handed_over(&handed), N, "{handed}");
    for c in &mut conns {
        c.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let head = read_response(c).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.contains("server: gen1"), "{head}");
    }
    assert_eq!(
        metric(&new.admin, "megaconn_connections_adopted_total"),
        N as f64
    );
    assert_eq!(
        metric(&new.admin, "megaconn_connections_accepted_total"),
        0.0
    );
}

/// After an upgrade the old process drains its requests in flight; the
/// operator's one SIGTERM to it then (the usual "stop the old one" step) is
/// its first signal, not a second: the drain goes on, the request in flight
/// gets its answer, and the old process exits cleanly. It used to read the
/// server's own draining state as "a signal came already" and exit(1) at
/// once, cutting the request.
#[test]
fn a_sigterm_to_the_old_process_while_it_drains_lets_it_finish() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "127.0.0.1:0"];
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let mut held = hold_request(&addr, &old.admin);
    let (_new, _) = start(1, &addr, &socket, &extra);
    old.child.signal(libc::SIGTERM);
    let head = end_held_request(&mut held);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("server: gen0"), "{head}");
    finish(old);
}

/// A request in flight until the test ends it: `POST /echo` with 5 of its
/// 10 body bytes sent. The demo streams the body back as it comes, so the
/// request stays in flight (the read timeout is off by default; a drain is
/// bounded by the shutdown timeout) however slow the test's next steps
/// are. Returns once the server counts it in flight.
fn hold_request(addr: &str, admin: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    let mut held = BufReader::new(s);
    held.get_mut()
        .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    let deadline = Instant::now() + CHILD_SAFETY;
    while metric(admin, "megaconn_requests_in_flight") < 1.0 {
        assert!(Instant::now() < deadline, "the request did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    held
}

/// Sends the rest of [`hold_request`]'s body; returns the answer (head and
/// body) once the whole body came back.
fn end_held_request(held: &mut BufReader<TcpStream>) -> String {
    held.get_mut().write_all(b"world").unwrap();
    let answer = read_response(held).expect("the request in flight is answered");
    assert!(answer.contains("content-length: 10\r\n"), "{answer}");
    answer
}

#[test]
fn parked_connections_move_to_the_new_process() {
    idle_connections_move("50ms", "megaconn_connections_parked");
}

/// Idle connections not parked yet (waiting as tasks) park at the upgrade
/// and move as well.
#[test]
fn idle_connections_not_yet_parked_move_too() {
    idle_connections_move("10m", "megaconn_connections_idle");
}

/// One request on a fresh connection; the answer's `server` header.
fn served_by(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    out.lines()
        .find_map(|l| l.strip_prefix("server: "))
        .unwrap_or_else(|| panic!("no server header: {out}"))
        .to_string()
}

/// A supervisor of 2 worker processes, generation `n` (`--upgrade` when
/// `n > 0`), on `addr`; stdout piped, stderr as `stderr` says.
fn supervisor_command(n: usize, addr: &str, socket: &Path, stderr: Stdio) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_megaconn"));
    cmd.args([
        "serve",
        "--listen",
        addr,
        "--workers",
        "1",
        "--processes",
        "2",
    ])
    .args(["--admin", "off", "--server-header", &format!("gen{n}")])
    .arg("--upgrade-socket")
    .arg(socket)
    .stdout(Stdio::piped())
    .stderr(stderr);
    if n > 0 {
        cmd.arg("--upgrade");
    }
    cmd
}

/// Waits for a supervisor's announcement; returns its worker processes'
/// pids (0 for one announced as restarting).
fn announced(lines: &Lines) -> Vec<i32> {
    let first = lines.expect_line();
    assert!(first.contains("2 worker processes"), "{first}");
    // As one process says it: with the scheme.
    assert!(first.starts_with("megaconn serving on http://"), "{first}");
    (0..2)
        .map(|i| {
            let line = lines.expect_line();
            let rest = line
                .strip_prefix(&format!("worker process {i} "))
                .unwrap_or_else(|| panic!("{line}"));
            rest.strip_prefix("pid ").map_or(0, |p| p.parse().unwrap())
        })
        .collect()
}

/// Waits for a supervisor's announcement after an upgrade (`--upgrade`):
/// as [`announced`], then its `megaconn upgrade done` line, returned.
fn announced_upgrade(lines: &Lines) -> (Vec<i32>, String) {
    let pids = announced(lines);
    let done = lines.expect_line();
    assert!(done.starts_with("megaconn upgrade done"), "{done}");
    (pids, done)
}

/// Waits for the old supervisor to exit cleanly once all its worker
/// processes handed over and drained.
fn old_supervisor_finishes(mut old: ChildGuard, lines: Lines) {
    let rest = lines.rest();
    assert!(old.wait().success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.starts_with("megaconn stopped")),
        "{rest:?}"
    );
}

/// With `--processes`, worker process k of the new supervisor takes over from
/// worker process k of the old one; the old supervisor exits once all have
/// handed over, without restarting them.
#[test]
fn a_supervisor_upgrades_worker_process_by_worker_process() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    // --processes needs an explicit port: held until generation 0 listens.
    let port = common::ReservedPort::new();
    let addr = port.addr.clone();
    let supervisor = |n: usize| {
        let mut child =
            ChildGuard::spawn(&mut supervisor_command(n, &addr, &socket, Stdio::null()));
        let lines = Lines::new(child.child().stdout.take().unwrap());
        (child, lines)
    };
    let (old, old_lines) = supervisor(0);
    announced(&old_lines);
    drop(port);
    assert_eq!(served_by(&addr), "gen0");
    let (mut new, new_lines) = supervisor(1);
    // It says what one process taking over says, once both of its worker
    // processes took over (one listening socket each). It used to say
    // nothing of the kind: scripts waited for `megaconn upgrade done` in
    // vain.
    let (_, done) = announced_upgrade(&new_lines);
    assert!(
        done.starts_with(
            "megaconn upgrade done: took over 2 listening sockets and 0 parked connections in "
        ) && done.ends_with(&format!(
            " ms by 2 worker processes; next upgrade on {}",
            socket.display()
        )),
        "{done}"
    );
    // The old supervisor stops once both its workers handed over and drained.
    old_supervisor_finishes(old, old_lines);
    for _ in 0..10 {
        assert_eq!(served_by(&addr), "gen1");
    }
    // The old worker processes left the names to the new ones, whose
    // graceful exit takes them, the slot lock files (taken over with the
    // listening sockets) too: they used to stay.
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(),
        [
            "upgrade.sock.0",
            "upgrade.sock.0.lock",
            "upgrade.sock.1",
            "upgrade.sock.1.lock"
        ]
    );
    new.signal(libc::SIGTERM);
    assert!(new.wait().success());
    assert_eq!(names(), Vec::<String>::new());
}

/// A supervisor's log (stderr, `RUST_LOG=info`), read line by line.
struct Log(mpsc::Receiver<String>);

impl Log {
    /// Starts a supervisor (or a server of one process) with its log piped;
    /// its stdout read line by line.
    fn spawn(cmd: &mut Command) -> (ChildGuard, Lines, Log) {
        cmd.stderr(Stdio::piped()).env("RUST_LOG", "info");
        let mut child = ChildGuard::spawn(cmd);
        let lines = Lines::new(child.child().stdout.take().unwrap());
        let stderr = BufReader::new(child.child().stderr.take().unwrap());
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, lines, Log(log))
    }

    /// Waits for the supervisor's log line `message` about worker process
    /// `index`.
    fn wait_for(&self, message: &str, index: usize) -> String {
        self.wait_for_line(message, &format!("worker={index}"))
    }

    /// Waits for a log line (the supervisor's, or one of its worker
    /// processes', which share its stderr) with both `message` and `also`.
    fn wait_for_line(&self, message: &str, also: &str) -> String {
        self.wait_for_line_or(message, also, "")
    }

    /// As [`Log::wait_for_line`]; if the line does not come, the failure
    /// says `why` too (what a missing line points at).
    fn wait_for_line_or(&self, message: &str, also: &str, why: &str) -> String {
        let deadline = Instant::now() + CHILD_SAFETY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(message) && line.contains(also) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line {message:?} with {also:?}: {e}. {why}"),
            }
        }
    }
}

/// A new supervisor (generation 1) taking over from `old_addr`'s, its worker
/// processes stopping at gates; its log read line by line.
struct Upgrading {
    child: ChildGuard,
    lines: Lines,
    log: Log,
    gates: [Gate; 2],
}

impl Upgrading {
    fn start(addr: &str, socket: &Path) -> Upgrading {
        Upgrading::start_with(addr, socket, &[])
    }

    /// As [`Upgrading::start`], with more variables in its environment.
    fn start_with(addr: &str, socket: &Path, env: &[(&str, &str)]) -> Upgrading {
        let gates = [Gate::new(socket, 0), Gate::new(socket, 1)];
        let mut cmd = supervisor_command(1, addr, socket, Stdio::piped());
        cmd.env("MEGACONN_TEST_TAKE_OVER_GATE", "1")
            .envs(env.iter().copied());
        let (child, lines, log) = Log::spawn(&mut cmd);
        Upgrading {
            child,
            lines,
            log,
            gates,
        }
    }

    /// Waits for the supervisor's log line `message` about worker process
    /// `index`.
    fn wait_for_log(&self, message: &str, index: usize) -> String {
        self.log.wait_for(message, index)
    }
}

/// A partial upgrade under way: the old generation (a supervisor of 2
/// worker processes) served, and a new supervisor's worker process 0 has
/// taken over while its worker process 1 waits at its gate.
struct HalfUpgraded {
    addr: String,
    old: ChildGuard,
    old_lines: Lines,
    old_log: Log,
    old_pids: Vec<i32>,
    new: Upgrading,
    /// The pids of the new worker processes.
    first: i32,
    second: i32,
    /// Holds the new worker process 1 at its gate.
    held: UnixStream,
    _dir: tempfile::TempDir,
}

fn half_upgraded() -> HalfUpgraded {
    let Generation0 {
        dir,
        socket,
        addr,
        child: old,
        lines: old_lines,
        log: old_log,
        pids: old_pids,
    } = generation_0();
    assert_eq!(served_by(&addr), "gen0");
    let new = Upgrading::start(&addr, &socket);
    let (first, go) = new.gates[0].next();
    drop(go);
    let (second, held) = new.gates[1].next();
    new.wait_for_log("worker process took over from the old one", 0);
    HalfUpgraded {
        addr,
        old,
        old_lines,
        old_log,
        old_pids,
        new,
        first,
        second,
        held,
        _dir: dir,
    }
}

/// The new generation serves alone, and stops cleanly on SIGTERM.
fn only_the_new_generation_serves(addr: &str, new: Upgrading) {
    serves_alone(addr, 1, new.child);
}

/// Generation `n`, its supervisor `child`, serves alone, and stops cleanly
/// on SIGTERM.
fn serves_alone(addr: &str, n: usize, mut child: ChildGuard) {
    let generation = format!("gen{n}");
    for _ in 0..10 {
        assert_eq!(served_by(addr), generation);
    }
    child.signal(libc::SIGTERM);
    assert!(child.wait().success());
}

/// Generation 0 (a supervisor of 2 worker processes, its log read) serving
/// on a port of its own, with its control sockets in a directory of the
/// test's.
struct Generation0 {
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    addr: String,
    child: ChildGuard,
    lines: Lines,
    log: Log,
    /// Its worker processes' pids.
    pids: Vec<i32>,
}

fn generation_0() -> Generation0 {
    generation_0_in(tempfile::tempdir().unwrap(), &[])
}

/// As [`generation_0`], with the test gate that the variable `env` turns on
/// (in the supervisor's environment, which its worker processes inherit)
/// in place at its control socket's path plus `suffix` before it starts.
fn generation_0_at_gate(env: &str, suffix: &str) -> (Generation0, Gate) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::at(&dir.path().join("upgrade.sock"), suffix);
    (generation_0_in(dir, &[(env, "1")]), gate)
}

/// As [`generation_0`], its control sockets in `dir`, with more variables
/// in the supervisor's environment.
fn generation_0_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Generation0 {
    let socket = dir.path().join("upgrade.sock");
    // --processes needs an explicit port: held until generation 0 listens.
    let port = common::ReservedPort::new();
    let addr = port.addr.clone();
    let mut cmd = supervisor_command(0, &addr, &socket, Stdio::piped());
    cmd.envs(env.iter().copied());
    let (child, lines, log) = Log::spawn(&mut cmd);
    let pids = announced(&lines);
    drop(port);
    Generation0 {
        dir,
        socket,
        addr,
        child,
        lines,
        log,
        pids,
    }
}

/// A new worker process that dies while another one is still starting (here,
/// waiting to take over) is restarted at once, not once the others are up.
/// The supervisor used to start them all first and only then restart the
/// dead, up to 30 s later.
#[test]
fn a_worker_process_dying_while_another_starts_is_restarted_at_once() {
    let up = half_upgraded();
    // SAFETY: kill(2) on a process the test saw alive and waiting for
    // nothing (it took over and serves).
    unsafe { libc::kill(up.first, libc::SIGKILL) };
    up.new.wait_for_log("worker process restarted", 0);
    // Worker process 1 still waits at its gate: the restart did not wait
    // for its start-up to end.
    up.held.set_nonblocking(true).unwrap();
    let err = (&up.held)
        .read(&mut [0])
        .expect_err("worker process 1 still waits");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
    drop(up.held);
    let pids = announced_upgrade(&up.new.lines).0;
    assert!(pids[0] != 0 && pids[0] != up.first, "{pids:?}");
    old_supervisor_finishes(up.old, up.old_lines);
    only_the_new_generation_serves(&up.addr, up.new);
}

/// A new worker process that fails before its old one handed over (a
/// partial upgrade) is started again to take over from that same old one,
/// which serves meanwhile; the upgrade completes and the old supervisor
/// exits. It used to be started afresh on its own listener instead, leaving
/// the old worker process (and its supervisor) serving beside the new
/// generation until someone sent the old supervisor SIGTERM.
#[test]
fn a_worker_process_that_fails_to_take_over_tries_again() {
    let up = half_upgraded();
    // SAFETY: kill(2) on a process waiting at the test's gate.
    unsafe { libc::kill(up.second, libc::SIGKILL) };
    drop(up.held);
    up.new.wait_for_log("failed to take over", 1);
    let (again, go) = up.new.gates[1].next();
    assert_ne!(again, up.second);
    drop(go);
    up.new
        .wait_for_log("worker process took over from the old one", 1);
    old_supervisor_finishes(up.old, up.old_lines);
    only_the_new_generation_serves(&up.addr, up.new);
}

/// A new worker process that keeps failing to take over from its old one
/// is given up after a bounded number of attempts (6), backing off between
/// them, and the new supervisor says so on stdout; the old worker process
/// serves on meanwhile and after. A next `serve --upgrade`, as that says,
/// takes over from both supervisors, which then exit. The retries used to go
/// on for good, each logged. Each attempt is killed at its gate.
#[test]
fn a_worker_process_that_keeps_failing_to_take_over_is_given_up() {
    let up = given_up();
    // The old generation's worker process 1 serves on, with its supervisor.
    let mut old = up.old;
    assert!(old.child().try_wait().unwrap().is_none());
    // SAFETY: kill(2) with signal 0 only asks whether it exists.
    assert_eq!(unsafe { libc::kill(up.old_pids[1], 0) }, 0);
    upgrade_both_supervisors(old, up.old_lines, up.new, &up.addr, up._dir.path());
}

/// A partial upgrade whose new worker process 1 was given up (killed at its
/// gate 6 times): checks the back-off and what the new supervisor says.
fn given_up() -> HalfUpgraded {
    let mut up = half_upgraded();
    let mut pid = up.second;
    let mut retries = Vec::new();
    for n in 1..=6 {
        // SAFETY: kill(2) on a process waiting at the test's gate.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if n == 6 {
            break;
        }
        retries.push(up.new.wait_for_log("trying again", 1));
        // The connection that held the killed one closes.
        (pid, up.held) = up.new.gates[1].next();
    }
    up.new.wait_for_log("giving up", 1);
    // The back-off doubled between attempts.
    for (n, line) in retries.iter().enumerate() {
        let expected = format!("attempts={} retry_in_ms={}", n + 1, 100 << n);
        assert!(line.contains(&expected), "{expected}: {line}");
    }
    let (pids, done) = announced_upgrade(&up.new.lines);
    assert_eq!(pids[1], 0, "worker process 1 was restarting then");
    assert!(
        done.starts_with("megaconn upgrade done, but not all of it")
            && done.contains(": 1 of 2 worker processes took over in full;"),
        "{done}"
    );
    let line = up.new.lines.expect_line();
    assert!(
        line.starts_with("worker process 1 gave up taking over")
            && line.contains("serve --upgrade"),
        "{line}"
    );
    up
}

/// What the new supervisor says to do after giving up a worker process:
/// upgrade again. The next generation takes over from both supervisors,
/// which exit cleanly, and serves alone.
fn upgrade_both_supervisors(
    old: ChildGuard,
    old_lines: Lines,
    new: Upgrading,
    addr: &str,
    dir: &Path,
) {
    let socket = dir.join("upgrade.sock");
    let mut next = ChildGuard::spawn(&mut supervisor_command(2, addr, &socket, Stdio::null()));
    let next_lines = Lines::new(next.child().stdout.take().unwrap());
    announced_upgrade(&next_lines);
    old_supervisor_finishes(old, old_lines);
    let mut new_child = new.child;
    let rest = new.lines.rest();
    assert!(new_child.wait().success(), "{rest:?}");
    serves_alone(addr, 2, next);
}

/// The old worker process left serving by a given-up new one is restarted
/// by its supervisor when it dies, and its share of the port is served
/// again; a next upgrade still takes over from both supervisors. It used to
/// be left dead (its supervisor restarted none once a hand-over began, and
/// the new one had given that index up): the port had one process fewer,
/// and the old supervisor exited, failed, until the next upgrade.
#[test]
fn an_old_worker_process_left_serving_by_a_given_up_new_one_is_restarted() {
    let up = given_up();
    // SAFETY: kill(2) on a process the test saw serving; its supervisor
    // has not reaped it (it restarts it only after hearing of its exit).
    unsafe { libc::kill(up.old_pids[1], libc::SIGKILL) };
    up.old_log.wait_for("worker process died; restarting", 1);
    let line = up.old_lines.expect_line();
    let pid = line
        .strip_prefix("worker process 1 restarted pid ")
        .unwrap_or_else(|| panic!("{line}"));
    assert_ne!(pid, up.old_pids[1].to_string());
    // Its share of the port: the kernel spreads new connections over both
    // listeners (the new worker process 0's and this one's), so one of a
    // hundred lands on the old generation but with odds of 2^-100.
    assert!(
        (0..100).any(|_| served_by(&up.addr) == "gen0"),
        "no connection reached the restarted old worker process"
    );
    upgrade_both_supervisors(up.old, up.old_lines, up.new, &up.addr, up._dir.path());
}

/// Waits for process `pid` (not a child of ours) to exit: a pidfd becomes
/// readable then.
fn wait_for_exit(pid: i32) {
    // SAFETY: pidfd_open(2) with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        // ESRCH: gone already. Anything else (no pidfd_open, out of
        // descriptors) says nothing about the process, so the test cannot
        // go on as if it had exited.
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}) failed, so its exit cannot be awaited: {err}"
        );
        return;
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own.
    let n = unsafe { libc::poll(&mut poll, 1, CHILD_SAFETY.as_millis() as i32) };
    // SAFETY: closing the pidfd we opened.
    unsafe { libc::close(fd) };
    assert_eq!(n, 1, "process {pid} did not exit");
}

/// When the old worker process a new one should take over from is gone
/// (nothing answers on its control socket: its supervisor was killed and
/// it drained), the new one is started afresh on its own listener: there is
/// nothing to wait for.
#[test]
fn a_worker_process_with_no_old_one_left_starts_afresh() {
    let mut up = half_upgraded();
    // The old worker processes stop with their supervisor (SIGTERM, on its
    // death): old worker process 1 drains and exits.
    up.old.signal(libc::SIGKILL);
    up.old.wait();
    wait_for_exit(up.old_pids[1]);
    drop(up.held);
    up.new
        .wait_for_log("found no old worker process to take over from", 1);
    let pids = announced_upgrade(&up.new.lines).0;
    assert_eq!(pids[1], 0, "worker process 1 is announced as restarting");
    let line = up.new.lines.expect_line();
    assert!(
        line.starts_with("worker process 1 restarted pid "),
        "{line}"
    );
    only_the_new_generation_serves(&up.addr, up.new);
}

/// An old worker process that dies once its generation is being upgraded
/// (another one of it handed over), and before it handed over itself, is
/// restarted by its supervisor all the same: the new worker process of its
/// index then takes over from the restart, and the old supervisor exits
/// cleanly. (One that finds nothing to take over from meanwhile is settled
/// by the slot lock: see `an_old_restart_and_a_fresh_new_worker_process_race`.)
#[test]
fn an_old_worker_process_dying_during_the_upgrade_is_restarted_and_taken_over_from() {
    let up = half_upgraded();
    up.old_log.wait_for("handed over to a newer one", 0);
    // SAFETY: kill(2) on a process the test saw serving; its supervisor
    // has not reaped it (it restarts it only after hearing of its exit).
    unsafe { libc::kill(up.old_pids[1], libc::SIGKILL) };
    up.old_log.wait_for("worker process died; restarting", 1);
    let line = up.old_lines.expect_line();
    assert!(
        line.starts_with("worker process 1 restarted pid "),
        "{line}"
    );
    drop(up.held);
    up.new
        .wait_for_log("worker process took over from the old one", 1);
    old_supervisor_finishes(up.old, up.old_lines);
    only_the_new_generation_serves(&up.addr, up.new);
}

/// An old worker process that died just before the first hand-over is
/// restarted by its supervisor while the new worker process of its index,
/// finding nothing to take over from (the restart does not listen yet),
/// starts afresh: the two must not both serve that slot of the port. Both
/// stop at the slot gate, before claiming the slot's lock; the test lets
/// them on in the order given. The one that comes second yields: the old
/// one exits and is not restarted; the new one takes over from the old one
/// instead. Either way the old supervisor exits cleanly, and the new
/// generation serves alone. Both used to serve, the old one never handing
/// over, so that the old supervisor stayed up for good.
fn an_old_restart_and_a_fresh_new_worker_process_race(new_first: bool) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let port = common::ReservedPort::new();
    let addr = port.addr.clone();
    const SLOT_GATE: (&str, &str) = ("MEGACONN_TEST_SLOT_GATE", "1");
    let mut cmd = supervisor_command(0, &addr, &socket, Stdio::piped());
    cmd.env(SLOT_GATE.0, SLOT_GATE.1);
    // Its worker processes start before the gate exists, and pass.
    let (old, old_lines, old_log) = Log::spawn(&mut cmd);
    let old_pids = announced(&old_lines);
    drop(port);
    let slot_gate = Gate::slot(&socket, 1);
    let new = Upgrading::start_with(&addr, &socket, &[SLOT_GATE]);
    let (_, hold_first) = new.gates[0].next();
    let (_, hold_second) = new.gates[1].next();
    // Before any hand-over: the old supervisor restarts it, and the restart
    // stops at the slot gate.
    // SAFETY: kill(2) on a process the test saw serving; its supervisor
    // has not reaped it (it restarts it only after hearing of its exit).
    unsafe { libc::kill(old_pids[1], libc::SIGKILL) };
    let (old_restart, hold_old) = slot_gate.next();
    drop(hold_first);
    old_log.wait_for("handed over to a newer one", 0);
    // Past the point of no return: the new supervisor now restarts a
    // worker process that finds nothing to take over from.
    new.wait_for_log("worker process took over from the old one", 0);
    drop(hold_second);
    new.wait_for_log("found no old worker process to take over from", 1);
    let (fresh, hold_fresh) = slot_gate.next();
    let pids = announced_upgrade(&new.lines).0;
    assert_eq!(pids[1], 0, "worker process 1 is announced as restarting");
    if new_first {
        drop(hold_fresh);
        let line = new.lines.expect_line();
        assert_eq!(line, format!("worker process 1 restarted pid {fresh}"));
        drop(hold_old);
        old_log.wait_for("served by a newer one", 1);
    } else {
        drop(hold_old);
        let line = old_lines.expect_line();
        assert_eq!(
            line,
            format!("worker process 1 restarted pid {old_restart}")
        );
        drop(hold_fresh);
        new.wait_for_log("served by an old worker process", 1);
        let (again, go) = new.gates[1].next();
        drop(go);
        new.wait_for_log("worker process took over from the old one", 1);
        let line = new.lines.expect_line();
        assert_eq!(line, format!("worker process 1 restarted pid {again}"));
    }
    old_supervisor_finishes(old, old_lines);
    only_the_new_generation_serves(&addr, new);
}

#[test]
fn an_old_restart_that_comes_second_to_a_fresh_new_worker_process_yields() {
    an_old_restart_and_a_fresh_new_worker_process_race(true);
}

#[test]
fn a_fresh_new_worker_process_that_comes_second_to_an_old_restart_takes_over_from_it() {
    an_old_restart_and_a_fresh_new_worker_process_race(false);
}

/// GET `path` on a fresh connection; the body.
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    out.split_once("\r\n\r\n").expect("a head").1.to_string()
}

/// Once the new process serves, the old one no longer answers on the admin
/// listener it handed over, though it still drains a request: every admin
/// answer comes from the new process. The old process used to keep its
/// admin listener until it exited, so scrapes alternated between the two
/// processes' counters.
#[test]
fn the_old_process_stops_answering_admin_requests_at_the_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let (mut old, addr) = start(0, "127.0.0.1:0", &socket, &["--admin", "127.0.0.1:0"]);
    let mut held = hold_request(&addr, &old.admin);
    // The same admin address: the new process takes its socket over.
    let admin = old.admin.clone();
    let (new, _) = start(1, &addr, &socket, &["--admin", &admin]);
    let new_pid = format!("\"pid\": {},", new.child.id());
    for _ in 0..40 {
        let runtime = get(&admin, "/debug/runtime");
        assert!(
            runtime.contains(&new_pid),
            "answered by another process than {new_pid}: {runtime}"
        );
    }
    // The old process was draining its request all along.
    assert!(
        old.child.child().try_wait().unwrap().is_none(),
        "the old process exited before the admin requests were done"
    );
    let head = end_held_request(&mut held);
    assert!(head.contains("server: gen0"), "{head}");
    finish(old);
}

/// A new worker process that took over but could not bind its control
/// socket for the next upgrade (failed here at a test gate) binds it again,
/// backing off, so that the next upgrade takes over its slot too. It used
/// to serve on without one, holding its slot's lock: the next upgrade's
/// worker process of its index found nothing to take over from, then the
/// slot taken, and was given up, upgrade after upgrade.
#[test]
fn a_worker_process_that_could_not_bind_its_control_socket_binds_it_again() {
    let Generation0 {
        dir: _dir,
        socket,
        addr,
        child: old,
        lines: old_lines,
        log: _old_log,
        pids: _,
    } = generation_0();
    let bind_gate = Gate::at(&socket, ".1.bind.gate");
    let mut cmd = supervisor_command(1, &addr, &socket, Stdio::piped());
    cmd.env("MEGACONN_TEST_BIND_GATE", "1");
    let (new, new_lines, new_log) = Log::spawn(&mut cmd);
    let (pid, mut failing) = bind_gate.next();
    failing.write_all(b"fail\n").unwrap();
    drop(failing);
    // It serves what it took over, and says so.
    let pids = announced_upgrade(&new_lines).0;
    assert_eq!(pids[1], pid);
    old_supervisor_finishes(old, old_lines);
    // It binds the control socket again, after its back-off.
    let (again, go) = bind_gate.next();
    assert_eq!(again, pid);
    drop(go);
    new_log.wait_for_line("upgrade control socket bound", "attempts=2");
    next_generation_takes_over_both_slots(2, &addr, &socket, new, new_lines);
}

/// The next generation `n` (a supervisor of 2 worker processes) takes over
/// both slots from `old` (its stdout `old_lines`), which finishes; `n`
/// serves alone, and stops cleanly.
fn next_generation_takes_over_both_slots(
    n: usize,
    addr: &str,
    socket: &Path,
    old: ChildGuard,
    old_lines: Lines,
) {
    let mut next = ChildGuard::spawn(&mut supervisor_command(n, addr, socket, Stdio::null()));
    let next_lines = Lines::new(next.child().stdout.take().unwrap());
    let pids = announced_upgrade(&next_lines).0;
    assert!(pids.iter().all(|&p| p != 0), "{pids:?}");
    old_supervisor_finishes(old, old_lines);
    serves_alone(addr, n, next);
}

/// A supervisor that is an upgrade's itself (started with `--upgrade`, as
/// every one after the first), being upgraded in turn: a restart of its
/// worker process that finds the slot taken by the next generation's (one
/// that found nothing to take over from and started afresh) yields to it,
/// though the supervisor has not heard of a hand-over yet (its worker
/// process 0 stops at a test gate before saying so). It used to go by its
/// `--upgrade` and take the slot back from the newer worker process.
#[test]
fn a_restart_of_an_upgraded_supervisor_yields_its_slot_to_the_next_generation() {
    const SLOT_GATE: (&str, &str) = ("MEGACONN_TEST_SLOT_GATE", "1");
    let Generation0 {
        dir: _dir,
        socket,
        addr,
        child: gen0,
        lines: gen0_lines,
        log: _gen0_log,
        pids: _,
    } = generation_0();
    // Generation 1 takes over in full (the gates below do not exist yet).
    let mut cmd = supervisor_command(1, &addr, &socket, Stdio::piped());
    cmd.env(SLOT_GATE.0, SLOT_GATE.1)
        .env("MEGACONN_TEST_HANDED_GATE", "1");
    let (gen1, gen1_lines, gen1_log) = Log::spawn(&mut cmd);
    let gen1_pids = announced_upgrade(&gen1_lines).0;
    old_supervisor_finishes(gen0, gen0_lines);
    let handed_gate = Gate::at(&socket, ".0.handed.gate");
    let slot_gate = Gate::slot(&socket, 1);
    let take_over_gates = [Gate::new(&socket, 0), Gate::new(&socket, 1)];
    let mut cmd = supervisor_command(2, &addr, &socket, Stdio::piped());
    cmd.env("MEGACONN_TEST_TAKE_OVER_GATE", "1")
        .env(SLOT_GATE.0, SLOT_GATE.1);
    let (gen2, gen2_lines, gen2_log) = Log::spawn(&mut cmd);
    let (_, hold_first) = take_over_gates[0].next();
    let (_, hold_second) = take_over_gates[1].next();
    // Generation 1 restarts its worker process 1; the restart stops before
    // claiming the slot.
    // SAFETY: kill(2) on a process the test saw serving; its supervisor
    // has not reaped it (it restarts it only after hearing of its exit).
    unsafe { libc::kill(gen1_pids[1], libc::SIGKILL) };
    gen1_log.wait_for("worker process died; restarting", 1);
    let (_, hold_old) = slot_gate.next();
    // Generation 2's worker process 0 takes over; generation 1's stops
    // before it says it handed over.
    drop(hold_first);
    let (_, hold_handed) = handed_gate.next();
    gen2_log.wait_for("worker process took over from the old one", 0);
    // Generation 2's worker process 1 finds nothing to take over from and
    // claims the slot afresh, first.
    drop(hold_second);
    gen2_log.wait_for("found no old worker process to take over from", 1);
    let (fresh, hold_fresh) = slot_gate.next();
    let pids = announced_upgrade(&gen2_lines).0;
    assert_eq!(pids[1], 0, "worker process 1 is announced as restarting");
    drop(hold_fresh);
    let line = gen2_lines.expect_line();
    assert_eq!(line, format!("worker process 1 restarted pid {fresh}"));
    // Generation 1's restart comes second, and yields.
    drop(hold_old);
    gen1_log.wait_for("served by a newer one", 1);
    drop(hold_handed);
    old_supervisor_finishes(gen1, gen1_lines);
    serves_alone(&addr, 2, gen2);
}

/// A server (generation 0, its admin listener at `admin`) whose control
/// socket, in `dir`, stops at the test's gate before each accept
/// (`MEGACONN_TEST_ACCEPT_GATE`, a test-only knob); its log read.
struct AtAcceptGate {
    socket: std::path::PathBuf,
    gate: Gate,
    child: ChildGuard,
    lines: Lines,
    log: Log,
    /// Where it serves.
    addr: String,
    /// Its admin listener (empty without one).
    admin: String,
}

/// Starts an [`AtAcceptGate`] with `--admin admin`; returns once it serves.
fn at_accept_gate(dir: &Path, admin: &str) -> AtAcceptGate {
    let socket = dir.join("upgrade.sock");
    let gate = Gate::at(&socket, ".accept.gate");
    let extra = ["--admin", admin];
    let accept = ("MEGACONN_TEST_ACCEPT_GATE", "1");
    let (server, addr, log) = start_logged(0, "127.0.0.1:0", &socket, &extra, &[accept]);
    AtAcceptGate {
        socket,
        gate,
        child: server.child,
        lines: server.lines,
        log,
        addr,
        admin: server.admin,
    }
}

/// A server whose control socket's `accept` fails for want of a resource
/// (`EMFILE` here, at a test gate: a process at its open-file limit) tries
/// again, backing off, and the next upgrade takes over. Its control
/// socket's thread used to end at the first failed accept, the process
/// serving on with nothing to take over from it (a worker process of a
/// supervisor holding its slot for good). The failures, one at once after
/// the other, log one warning (then at most one a minute) naming the
/// open-file limit: each logged an error, ~720 an hour at the limit.
#[test]
fn a_server_whose_control_socket_accept_failed_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let AtAcceptGate {
        socket,
        gate,
        child: old,
        lines: old_lines,
        log: old_log,
        addr,
        ..
    } = at_accept_gate(dir.path(), "off");
    const FAILED: &str = "upgrade control socket: accept failed";
    for _ in 0..2 {
        let (pid, mut failing) = gate.next();
        assert_eq!(pid, old.id());
        writeln!(failing, "{}", libc::EMFILE).unwrap();
    }
    let first = old_log.wait_for_line(FAILED, "EMFILE");
    assert!(first.contains("WARN"), "{first}");
    assert!(first.contains("raise the open-file limit"), "{first}");
    // Its next accept, after the back-off, passes the gate.
    let (again, go) = gate.next();
    assert_eq!(again, old.id());
    drop((go, gate));
    let (new, _) = start(1, &addr, &socket, &[]);
    finish(Generation {
        child: old,
        lines: old_lines,
        admin: String::new(),
    });
    // The old process exited: its log is whole.
    let more: Vec<String> = old_log.0.iter().filter(|l| l.contains(FAILED)).collect();
    assert!(more.is_empty(), "the second failure logged again: {more:?}");
    serves_alone(&addr, 1, new.child);
}

/// A worker process of a supervisor whose control socket's listener is
/// gone (the worker process shuts it down when told, at a test gate before
/// its accept, so that the accept fails with `EINVAL`) binds the control
/// socket anew, with its slot's lock, and the next upgrade takes over both
/// slots. Its control socket's thread used to end with a log line, the
/// process serving on with nothing to take over from it and holding its
/// slot's lock for good: the next upgrade's worker process found nothing to
/// take over from, then the slot taken, and was given up, upgrade after
/// upgrade.
#[test]
fn a_worker_process_whose_control_socket_is_gone_binds_it_anew() {
    let (old, gate) = generation_0_at_gate("MEGACONN_TEST_ACCEPT_GATE", ".1.accept.gate");
    let (pid, mut gone) = gate.next();
    assert_eq!(pid, old.pids[1]);
    gone.write_all(b"shutdown\n").unwrap();
    drop(gone);
    old.log
        .wait_for_line("accept failed: the socket is gone", "");
    // Bound anew: its next accept is on the new listener.
    let (again, go) = gate.next();
    assert_eq!(again, old.pids[1]);
    drop((go, gate));
    old.log
        .wait_for_line("upgrade control socket bound", "attempts=2");
    next_generation_takes_over_both_slots(1, &old.addr, &old.socket, old.child, old.lines);
}

/// A server whose control socket is lost while it shuts down (its
/// listener shut down at the accept gate, during the drain of a request in
/// flight) does not bind one anew, nor say it will: it is leaving (and after
/// a hand-over the name is the newer process's). It drains and exits, the
/// control socket's name gone.
#[test]
fn a_control_socket_lost_while_shutting_down_is_not_bound_again() {
    let dir = tempfile::tempdir().unwrap();
    let AtAcceptGate {
        socket,
        gate,
        child: mut server,
        lines: _lines,
        log,
        addr,
        admin,
    } = at_accept_gate(dir.path(), "127.0.0.1:0");
    let (pid, mut gone) = gate.next();
    assert_eq!(pid, server.id());
    let mut held = hold_request(&addr, &admin);
    server.signal(libc::SIGTERM);
    log.wait_for_line("shutting down gracefully", "");
    gone.write_all(b"shutdown\n").unwrap();
    drop(gone);
    log.wait_for_line("accept failed: the socket is gone", "");
    // The serve loop heard it lost: it removed the name (a process bound
    // anew only after its back-off, 100 ms on).
    let deadline = Instant::now() + CHILD_SAFETY;
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the lost control socket's name stays"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    end_held_request(&mut held);
    assert!(server.wait().success());
    // The process exited: its log is whole.
    let rebinding: Vec<String> = log
        .0
        .iter()
        .filter(|l| l.contains("binding it again"))
        .collect();
    assert!(
        rebinding.is_empty(),
        "a process shutting down binds again: {rebinding:?}"
    );
    assert!(
        !socket.exists(),
        "a process shutting down bound the control socket again"
    );
}

/// A new process that cannot start the thread that finishes its take-over
/// (failed here at a test gate, as at the process's thread limit) exits
/// before it tells the old process it serves: the old one serves on,
/// alone, and hands over to the next upgrade. It used to tell the old
/// process first, which handed over and left, so that nobody served.
#[test]
fn a_new_process_with_no_thread_to_finish_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let gate = Gate::at(&socket, ".spawn.gate");
    let cmd = serve_command(1, &addr, &socket, &extra);
    let told = ("MEGACONN_TEST_SPAWN_GATE", gate, "fail");
    fails_at_gate(
        cmd,
        told,
        ("cannot start a thread", "old process serves on"),
    );
    old_serves_on_and_hands_over(old, &addr, &socket, &extra);
}

/// Starts `cmd`, a new generation, with the test gate `env` set; once it
/// arrives at `gate`, tells it `word` there and checks that it exits
/// failing, its log saying `message` with `also`.
fn fails_at_gate(
    mut cmd: Command,
    (env, gate, word): (&str, Gate, &str),
    (message, also): (&str, &str),
) {
    cmd.env(env, "1");
    let (mut new, _new_lines, new_log) = Log::spawn(&mut cmd);
    let (pid, mut failing) = gate.next_unless(&mut new);
    assert_eq!(pid, new.id());
    writeln!(failing, "{word}").unwrap();
    drop((failing, gate));
    exits_failing(new, &new_log, (message, also));
}

/// Checks that `new`, a new generation, exits failing, its log saying
/// `message` with `also`.
fn exits_failing(mut new: ChildGuard, log: &Log, (message, also): (&str, &str)) {
    assert!(!new.wait().success(), "the new process serves");
    log.wait_for_line(message, also);
}

/// A new process one of whose workers fails at a step of its start (told
/// `step` by the test-only knob `MEGACONN_TEST_WORKER_FAIL`, as at a
/// limit of the user's or the system's) exits before it tells the old
/// process it is ready, saying `message` with `also`: the old one serves
/// on, alone, and hands over to the next upgrade.
fn a_worker_failing_at(step: &str, (message, also): (&str, &str)) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let mut cmd = serve_command(1, &addr, &socket, &extra);
    cmd.env("MEGACONN_TEST_WORKER_FAIL", step);
    let (new, _new_lines, log) = Log::spawn(&mut cmd);
    exits_failing(new, &log, (message, also));
    old_serves_on_and_hands_over(old, &addr, &socket, &extra);
}

/// A worker of a new process that cannot register its listening socket
/// with its runtime (as at the user's epoll watch limit) fails the
/// process's start, before it says it is ready. It was only logged: the
/// new process took over with that worker accepting nothing, and once the
/// old one left, the connections the kernel gave that worker's socket
/// waited where nobody accepted them (upgraded with 2 workers on the old
/// process's 2 sockets, about half of them).
#[test]
fn a_new_process_whose_listener_cannot_be_registered_leaves_the_old_one_serving() {
    a_worker_failing_at(
        "register 1",
        ("cannot watch its listening socket", "max_user_watches"),
    );
}

/// A worker of a new process that cannot make its parking lot (as at the
/// open-file limit) fails the process's start, before it says it is
/// ready. It was only logged: the new process took over with that worker
/// keeping every idle connection a task, and closing the parked
/// connections handed over to it.
#[test]
fn a_new_process_whose_worker_cannot_park_leaves_the_old_one_serving() {
    a_worker_failing_at("lot 0", ("cannot make its parking lot", "--park-after off"));
}

/// A worker of a new process whose thread panics as it sets up (as a bug
/// there would) fails the process's start, before it says it is ready,
/// naming the worker and the log. The start used to succeed: the new
/// process took over with that worker's socket listening in the port's
/// `SO_REUSEPORT` group, nobody accepting its share of the connections.
#[test]
fn a_new_process_whose_worker_panicked_during_the_start_leaves_the_old_one_serving() {
    a_worker_failing_at(
        "panic 1",
        (
            "worker thread 1 ended during the server's start",
            "see the log",
        ),
    );
}

/// Generation 0, `old`, serves on alone on `addr` after a failed upgrade,
/// and hands over to the next (generation 2, with `extra` flags), which
/// then serves alone.
fn old_serves_on_and_hands_over(mut old: Generation, addr: &str, socket: &Path, extra: &[&str]) {
    for _ in 0..10 {
        assert_eq!(served_by(addr), "gen0");
    }
    assert!(old.child.child().try_wait().unwrap().is_none());
    let (next, _) = start(2, addr, socket, extra);
    finish(old);
    serves_alone(addr, 2, next.child);
}

/// Connections opened while a new process is between the old one's
/// listening sockets and its own ready (held at its spawn gate, then
/// failed there) are all the old process's, on the main listener and on
/// the admin listener taken over too: each is answered by it while the new
/// process waits, and again once it exited; those that asked nothing yet
/// are answered by it then. The new process builds its servers before it
/// says it is ready and starts them only after, so that one failing first
/// has taken no connection: one it had accepted would have closed with it.
#[test]
fn a_new_process_that_fails_before_ready_takes_no_connection() {
    // Per listener. The admin server takes at most 64 connections
    // (`max_connections` in crates/cli/admin.rs): keep CONNECTIONS * 2
    // (asked and quiet) below it, or the old process refuses some.
    const CONNECTIONS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    // The quiet connections ask only after the new process exited: with
    // the default (10 s) the old process could close them first on a slow
    // machine. (The admin server's own stays 10 s.)
    let (mut old, addr) = start(
        0,
        "127.0.0.1:0",
        &socket,
        &["--admin", "127.0.0.1:0", "--read-header-timeout", "60s"],
    );
    let admin = old.admin.clone();
    let gate = Gate::at(&socket, ".spawn.gate");
    let mut cmd = serve_command(1, &addr, &socket, &["--admin", &admin]);
    cmd.env("MEGACONN_TEST_SPAWN_GATE", "1");
    let (mut new, _new_lines) = spawn_generation(&mut cmd);
    // It has the listening sockets, its servers are built, and it has not
    // said it is ready.
    let (pid, mut failing) = gate.next();
    assert_eq!(pid, new.id());
    let old_pid = format!("\"pid\": {},", old.child.id());
    let connect = |to: &str| {
        let s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
        BufReader::new(s)
    };
    // Each answer on a connection says who served it: the main listener's
    // its `server` header, the admin listener's its pid.
    let ask = |c: &mut BufReader<TcpStream>, path: &str| {
        // A loopback name: the admin listener refuses other names.
        write!(
            c.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .and_then(|()| read_response(c))
        .unwrap_or_else(|e| panic!("{path}: a connection opened during the attempt is lost: {e}"))
    };
    let by_old = |c: &mut BufReader<TcpStream>, path: &str| {
        let answer = ask(c, path);
        let mine = answer.contains("server: gen0") || answer.contains(&old_pid);
        assert!(mine, "not answered by the old process: {answer}");
    };
    // On both listeners, in turns across the wait: connections that ask
    // at once, and connections that ask nothing yet.
    let (mut asked, mut quiet) = (Vec::new(), Vec::new());
    for _ in 0..CONNECTIONS {
        for (to, path) in [(&addr, "/"), (&admin, "/debug/runtime")] {
            let mut c = connect(to);
            by_old(&mut c, path);
            asked.push((c, path));
            quiet.push((connect(to), path));
        }
    }
    failing.write_all(b"fail\n").unwrap();
    drop((failing, gate));
    assert!(
        !new.wait().success(),
        "the new process serves without a thread"
    );
    for (c, path) in asked.iter_mut().chain(&mut quiet) {
        by_old(c, path);
    }
    assert!(old.child.child().try_wait().unwrap().is_none());
}

/// A new process whose main server cannot start (its open-file limit
/// lowered at a test gate, so that no worker's runtime can be made, as in
/// a process out of descriptors) exits before it tells the old process it
/// is ready, its admin server (started already, accepting nothing) with
/// it: the old process serves on, its admin listener too, and hands over
/// to the next upgrade. The new process used to make its workers' runtimes
/// and threads only after it had told the old one, which had handed over
/// and left by the time they failed: nobody served.
#[test]
fn a_new_process_whose_server_cannot_start_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &["--admin", "127.0.0.1:0"]);
    let admin = old.admin.clone();
    let extra = ["--admin", admin.as_str()];
    let gate = Gate::at(&socket, ".start.gate");
    let cmd = serve_command(1, &addr, &socket, &extra);
    let told = ("MEGACONN_TEST_START_GATE", gate, "emfile");
    fails_at_gate(cmd, told, ("cannot start worker thread", "open files"));
    let old_pid = format!("\"pid\": {},", old.child.id());
    let runtime = get(&admin, "/debug/runtime");
    assert!(runtime.contains(&old_pid), "not the old process: {runtime}");
    old_serves_on_and_hands_over(old, &addr, &socket, &extra);
}

/// An old process whose hand-over panics after the new process said it
/// serves (told to at a test gate) leaves all the same: it stops
/// accepting, closes its idle connection (not handed over), says it
/// handed over and exits, and the new process serves alone. It used to
/// serve on beside the new one, the idle connection held, until someone
/// signalled it.
#[test]
fn an_old_process_whose_hand_over_panics_after_ready_still_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    let ready_gate = ("MEGACONN_TEST_READY_GATE", "1");
    let (old, addr) = start_with(0, "127.0.0.1:0", &socket, &extra, &[ready_gate]);
    let mut idle = idle_after_gen0(&addr);
    let gate = Gate::at(&socket, ".ready.gate");
    let new = NewGeneration::start(&addr, &socket, &extra);
    tell_at_ready_gate(gate, &old, "panic");
    let new = new.done();
    let handed = finish(old);
    assert!(handed.contains("not all of it"), "{handed}");
    let mut rest = Vec::new();
    let n = idle
        .read_to_end(&mut rest)
        .expect("the idle connection is closed");
    assert_eq!(n, 0, "{rest:?}");
    serves_alone(&addr, 1, new.child);
}

/// A worker process of a supervisor whose hand-over panics after its new
/// worker process said it serves (told to at a test gate) says it handed
/// over all the same: its supervisor lets it drain and exit, does not
/// restart it, and exits once both slots are handed over; the new
/// generation serves alone. Without the word its exit read as a death.
#[test]
fn a_worker_process_whose_hand_over_panics_after_ready_is_not_restarted() {
    let (old, gate) = generation_0_at_gate("MEGACONN_TEST_READY_GATE", ".0.ready.gate");
    let mut cmd = supervisor_command(1, &old.addr, &old.socket, Stdio::null());
    let mut new = ChildGuard::spawn(&mut cmd);
    let new_lines = Lines::new(new.child().stdout.take().unwrap());
    let (pid, mut panicking) = gate.next();
    assert_eq!(pid, old.pids[0]);
    panicking.write_all(b"panic\n").unwrap();
    drop((panicking, gate));
    old.log.wait_for("handed over to a newer one", 0);
    announced_upgrade(&new_lines);
    old_supervisor_finishes(old.child, old.lines);
    // The old supervisor exited: its log is whole. (Each worker process's
    // hand-over line says "not restarted": only the restarts' own lines.)
    let restarted: Vec<String> = old
        .log
        .0
        .iter()
        .filter(|l| RESTARTS.iter().any(|r| l.contains(r)))
        .collect();
    assert!(restarted.is_empty(), "{restarted:?}");
    serves_alone(&old.addr, 1, new);
}

/// A keep-alive connection to `addr` whose one request generation 0
/// answered: idle now.
fn idle_after_gen0(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    let mut idle = BufReader::new(s);
    idle.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = read_response(&mut idle).unwrap();
    assert!(head.contains("server: gen0"), "{head}");
    idle
}

/// Waits for `old` at its `ready` gate (`MEGACONN_TEST_READY_GATE`), where
/// its new process said it serves, and lets it on, told `word`.
fn tell_at_ready_gate(ready: Gate, old: &Generation, word: &str) {
    let (pid, mut told) = ready.next();
    assert_eq!(pid, old.child.id());
    writeln!(told, "{word}").unwrap();
}

/// What a supervisor logs when it restarts a worker process
/// (`supervisor.rs`): that it died, that it is restarted, or that it
/// cannot be yet.
const RESTARTS: [&str; 3] = [
    "worker process died; restarting",
    "worker process restarted",
    "cannot restart worker process",
];

/// Generation 1 (no admin listener), its process owned by the test thread
/// (so that a test failing first stops it), taking over on a thread of its
/// own until it is done.
struct NewGeneration {
    child: ChildGuard,
    /// Its output, with its admin address, once it is done.
    done: mpsc::Receiver<(Lines, String)>,
}

impl NewGeneration {
    /// Starts generation 1 taking over on `addr` from `socket`, with
    /// `extra` flags.
    fn start(addr: &str, socket: &Path, extra: &[&str]) -> NewGeneration {
        let (child, lines) = spawn_generation(&mut serve_command(1, addr, socket, extra));
        let (tx, done) = mpsc::channel();
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        std::thread::spawn(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let (_, admin) = started(1, &lines, &extra);
            let _ = tx.send((lines, admin));
        });
        NewGeneration { child, done }
    }

    /// Waits until it is done taking over (with what it got).
    fn done(self) -> Generation {
        let (lines, admin) = self
            .done
            .recv_timeout(CHILD_SAFETY)
            .expect("the new process is done");
        Generation {
            child: self.child,
            lines,
            admin,
        }
    }
}

/// An old process whose hand-over panics late (told to at a test gate:
/// after its server shut down, before the end message) says it handed
/// over before it exits, however soon its server drained: its main thread,
/// at exit, waits for the hand-over's busy flag until that is said (shown
/// here at a gate where it waits, while the hand-over is held before it
/// says so). The unwinding used to release the flag before the way out
/// took it again: the process could exit in between, unsaid, and a
/// supervisor would restart it as dead.
#[test]
fn an_old_process_whose_hand_over_panics_late_says_it_handed_over_before_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    let gates = [
        ("MEGACONN_TEST_READY_GATE", "1"),
        ("MEGACONN_TEST_HANDED_GATE", "1"),
        ("MEGACONN_TEST_EXIT_GATE", "1"),
    ];
    let (mut old, addr) = start_with(0, "127.0.0.1:0", &socket, &extra, &gates);
    let ready = Gate::at(&socket, ".ready.gate");
    let handed = Gate::at(&socket, ".handed.gate");
    let exit = Gate::at(&socket, ".exit.gate");
    let new = NewGeneration::start(&addr, &socket, &extra);
    tell_at_ready_gate(ready, &old, "panic-late");
    // The hand-over panicked after the shutdown, and stops before it says
    // so; the server drains (no connection), and the main thread, about to
    // exit, stops before it takes the busy flag.
    let (pid, say) = handed.next();
    assert_eq!(pid, old.child.id());
    let (pid, take) = exit.next_unless(&mut old.child);
    assert_eq!(pid, old.child.id());
    // Taken once the panic unwound: the hand-over holds it still, and the
    // main thread comes to wait for it; (the bug) it found it free and
    // exited.
    drop(take);
    let (pid, wait) = exit.next_unless(&mut old.child);
    assert_eq!(pid, old.child.id());
    drop(wait);
    drop(say);
    let handed = finish(old);
    assert!(handed.contains("not all of it"), "{handed}");
    let new = new.done();
    serves_alone(&addr, 1, new.child);
}

/// An old process one of whose workers panics as it hands its parked
/// connections over (told to by a test gate, `MEGACONN_TEST_WORKER_PANIC`:
/// after it took them out of its lot, before it sent them) still ends the
/// hand-over: once every worker ended, the server's join thread ends the
/// wait for the batch that never comes. The other worker's connections
/// move to the new process and are answered there, the dead worker's are
/// closed, the old process says it handed over and exits, and the new one
/// serves alone. Without that end the old process waited for the batch
/// for good: it never said it handed over nor exited, and the new one
/// waited for its end message (a minute, then `not all of it`).
#[test]
fn an_old_process_whose_worker_panics_as_it_hands_over_still_hands_over() {
    // Over 2 workers by the kernel's hash of each connection's addresses:
    // the chance that all land on one is 2^-19.
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    let panics = ("MEGACONN_TEST_WORKER_PANIC", "1");
    let (old, addr, log) = start_logged(0, "127.0.0.1:0", &socket, &extra, &[panics]);
    let mut idle: Vec<_> = (0..N).map(|_| idle_after_gen0(&addr)).collect();
    let new = NewGeneration::start(&addr, &socket, &extra);
    // The gate is a log layer: it sees the worker's line only if the log
    // filter lets it through (`RUST_LOG=info`, `Log::spawn`), and knows it
    // by its text. Each step waited for apart, so that a gate that does
    // not fire says which end moved.
    let handing = log.wait_for_line_or(
        "handing parked connections over",
        "worker=1",
        "worker 1 did not log its hand-over at info: the line in \
         crates/megaconn/src/server/worker.rs (after `take_portable`) moved, changed level \
         or is filtered out",
    );
    // Named by its listener: with an admin server, its worker 0 and the
    // main server's both log this line, alike without it.
    assert!(handing.contains(&format!("listen={addr}")), "{handing}");
    log.wait_for_line_or(
        "panics as it hands its parked connections over",
        "megaconn-worker-1",
        "worker 1 logged its hand-over but did not panic: its message no longer is \
         `HANDING_OVER` in crates/cli/upgrade.rs (keep the two texts alike), or its \
         thread is no longer named megaconn-worker-1",
    );
    let handed = finish(old);
    let moved = parked_handed_over(&handed);
    let new = new.done();
    let (mut answered, mut closed) = (0, 0);
    for c in &mut idle {
        // Written to a closed connection, a request may fail either way.
        let asked = c
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .and_then(|()| read_response(c));
        match asked {
            Ok(head) => {
                assert!(head.contains("server: gen1"), "{head}");
                answered += 1;
            }
            Err(_) => closed += 1,
        }
    }
    assert_eq!(answered, moved, "{closed} closed");
    assert!(closed > 0, "the panicking worker held none of the {N}");
    serves_alone(&addr, 1, new.child);
}

/// `megaconn upgrade done` says that the new process serves, so it comes
/// only once the new process runs its servers. Held between telling the
/// old process it serves and running them (at a test gate,
/// `MEGACONN_TEST_RUN_GATE`), the new process has everything else: the old
/// process handed over and exited, and the hand-over's thread was let on
/// to bind the control socket for the next upgrade, its last step before
/// the line. It says nothing then, while a request waits in the kernel's
/// queue; let on, it says it, and answers the request. The line used to
/// come once the control socket was bound, whether the process ran its
/// servers or not.
#[test]
fn upgrade_done_comes_only_once_the_new_process_runs_its_servers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let run = Gate::at(&socket, ".run.gate");
    let bind = Gate::at(&socket, ".bind.gate");
    let mut cmd = serve_command(1, &addr, &socket, &extra);
    cmd.env("MEGACONN_TEST_RUN_GATE", "1")
        .env("MEGACONN_TEST_BIND_GATE", "1");
    let (mut new, lines) = spawn_generation(&mut cmd);
    let (pid, hold) = run.next_unless(&mut new);
    assert_eq!(pid, new.id());
    serving_addr(&lines);
    let handed = finish(old);
    assert_eq!(parked_handed_over(&handed), 0, "{handed}");
    let (pid, bound) = bind.next_unless(&mut new);
    assert_eq!(pid, new.id());
    // The old process left its socket at the name (the name is the new
    // one's once it handed over): the new one's bind ends renaming its own
    // onto it.
    let old_socket = inode(&socket);
    drop(bound);
    let s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    let mut waiting = BufReader::new(s);
    waiting
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // That a line does not come has no signal: this is how long it is
    // given, counted from the bind's end (its rename), so that a slow
    // machine does not spend it before the bind. Before the fix the line
    // came as soon as the bind was done (microseconds after the rename);
    // this waits 1000 times that and more.
    wait_for_new_inode(&socket, old_socket);
    let early = lines.line_within(Duration::from_secs(1));
    assert_eq!(early, None, "said before it runs its servers");
    drop(hold);
    let done = lines.expect_line();
    assert!(
        done.starts_with("megaconn upgrade done: took over "),
        "{done}"
    );
    let head = read_response(&mut waiting).expect("the waiting request is answered");
    assert!(head.contains("server: gen1"), "{head}");
    serves_alone(&addr, 1, new);
}

/// The inode at `path`, if anything is there.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Waits until something other than `was` (an [`inode`]) is at `path`: a
/// process renamed its control socket onto it. Looked at every
/// millisecond (a rename sends nothing), bounded by `CHILD_SAFETY`.
fn wait_for_new_inode(path: &Path, was: Option<u64>) {
    let deadline = Instant::now() + CHILD_SAFETY;
    loop {
        let now = inode(path);
        if now.is_some() && now != was {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no new control socket at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A take-over run while the old process is still starting (held at a test
/// gate before its main `Server::start`, then told that the start fails)
/// finds nothing to take over (exit 3, its supervisor or script starts it
/// afresh or tries again), and the old process exits with its start error.
/// The old process used to bind its control socket before its start: the
/// take-over reached its hand-over (its `ready` gate here) and, once the
/// start failed, that hand-over waited for parked connections from a
/// server with no workers, the process's exit waited for the hand-over,
/// and the new process for the end message: the old process never exited.
#[test]
fn a_take_over_during_a_start_that_fails_finds_nothing_and_the_old_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "off"];
    // An explicit port: the old process says its address only once started.
    let port = common::ReservedPort::new();
    let starting = Gate::at(&socket, ".start.gate");
    let ready = Gate::at(&socket, ".ready.gate");
    let mut cmd = serve_command(0, &port.addr, &socket, &extra);
    cmd.env("MEGACONN_TEST_START_GATE", "1")
        .env("MEGACONN_TEST_READY_GATE", "1");
    let (mut old, _old_lines, old_log) = Log::spawn(&mut cmd);
    let (pid, mut held) = starting.next_unless(&mut old);
    assert_eq!(pid, old.id());
    let (mut new, _new_lines, new_log) =
        Log::spawn(&mut serve_command(1, &port.addr, &socket, &extra));
    // Either the new process finds nothing and exits, or (the old process
    // serving its control socket already) it tells the old one it serves,
    // which then stops at its `ready` gate: let that hand-over go on.
    let deadline = Instant::now() + CHILD_SAFETY;
    let new_exit = loop {
        if let Some(status) = new.child().try_wait().unwrap() {
            break Some(status);
        }
        match ready.within(Duration::from_millis(5)) {
            Some((pid, handing)) => {
                assert_eq!(pid, old.id());
                drop(handing);
                break None;
            }
            None => {
                assert!(
                    Instant::now() < deadline,
                    "the new process neither exited nor took over"
                );
            }
        }
    };
    writeln!(held, "emfile").unwrap();
    drop((held, starting));
    // Bounded (`CHILD_SAFETY`): it used to hang here for good.
    let status = old.wait();
    assert!(
        !status.success(),
        "the old process's start failed: {status:?}"
    );
    old_log.wait_for_line("cannot start the server", "");
    // (A new process that took over serves, and this wait fails.)
    let new_exit = new_exit.unwrap_or_else(|| new.wait());
    assert_eq!(
        new_exit.code(),
        Some(3),
        "the new process found nothing to take over"
    );
    new_log.wait_for_line("no server answers", "");
}

/// An upgrade whose `--listen` differs from the running server's is
/// refused before the old process is told anything (exit 2, naming the old
/// address and the `--listen` to give): the old process serves on, on its
/// port, and hands over to an upgrade with the same `--listen`. It used to
/// take over (`took over 2 listening sockets`), close the old port's
/// socket, serve the new address alone, and the old port was served by
/// nobody once the old process left.
#[test]
fn an_upgrade_with_another_listen_address_is_refused_and_the_old_one_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &["--admin", "127.0.0.1:0"]);
    let admin = old.admin.clone();
    let extra = ["--admin", admin.as_str()];
    let elsewhere = common::ReservedPort::new();
    let out = common::output(&mut serve_command(1, &elsewhere.addr, &socket, &extra));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("the running server listens on {addr}"))
            && stderr.contains(&format!("--listen {addr}")),
        "{stderr}"
    );
    old_serves_on_and_hands_over(old, &addr, &socket, &extra);
}

/// `megaconn upgrade done: took over N listening sockets` counts what the
/// new process serves: with another `--admin`, the old admin listener's
/// socket (dropped) is not among them. It counted every socket received.
#[test]
fn upgrade_done_counts_only_the_sockets_served() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "127.0.0.1:0"];
    let (old, addr) = start(0, "127.0.0.1:0", &socket, &extra);
    let mut cmd = serve_command(1, &addr, &socket, &extra);
    let (new_child, lines) = spawn_generation(&mut cmd);
    let done = loop {
        let line = lines.expect_line();
        if line.starts_with("megaconn upgrade done") {
            break line;
        }
    };
    let handed = finish(old);
    let sent: usize = handed
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no socket count: {handed}"));
    let took: usize = done
        .strip_prefix("megaconn upgrade done: took over ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a whole upgrade: {done}"));
    assert_eq!(took, sent - 1, "{done} / {handed}");
    serves_alone(&addr, 1, new_child);
}

/// A supervisor taking over from one whose admin address it is given
/// serves that address once the old supervisor exits (its worker
/// processes drained): `/metrics` there is the new supervisor's. It exited
/// 1 (`cannot start the admin listener`, the old supervisor not named),
/// leaving the old generation serving; with the default address, nothing
/// listened there once the old one left.
#[test]
fn a_supervisor_taking_over_serves_the_old_ones_admin_address_once_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let port = common::ReservedPort::new();
    let admin = common::ReservedPort::new();
    let command = |n: usize| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_megaconn"));
        cmd.args(["serve", "--listen", &port.addr, "--workers", "1"])
            .args(["--processes", "2", "--admin", &admin.addr])
            .args(["--server-header", &format!("gen{n}")])
            .arg("--upgrade-socket")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if n > 0 {
            cmd.arg("--upgrade");
        }
        cmd
    };
    let until = |lines: &Lines, prefix: &str| loop {
        let line = lines.expect_line();
        if line.starts_with(prefix) {
            return line;
        }
    };
    let mut old = ChildGuard::spawn(&mut command(0));
    let old_lines = Lines::new(old.child().stdout.take().unwrap());
    until(&old_lines, "megaconn serving on");
    let mut new = ChildGuard::spawn(&mut command(1));
    let new_lines = Lines::new(new.child().stdout.take().unwrap());
    until(&new_lines, "megaconn upgrade done");
    old_supervisor_finishes(old, old_lines);
    let line = until(&new_lines, "megaconn admin on");
    assert_eq!(line, format!("megaconn admin on http://{}", admin.addr));
    assert!(
        get(&admin.addr, "/").contains("supervisor"),
        "not a supervisor's admin listener"
    );
    assert_eq!(served_by(&port.addr), "gen1");
    new.signal(libc::SIGTERM);
    assert!(new.wait().success());
}

/// `serve --upgrade` of one process over a supervisor of 2 says that the
/// running server has `--processes 2` (it said only that no server
/// answers on the control socket).
#[test]
fn an_upgrade_without_the_running_servers_processes_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let port = common::ReservedPort::new();
    let mut old = ChildGuard::spawn(&mut supervisor_command(
        0,
        &port.addr,
        &socket,
        Stdio::null(),
    ));
    let lines = Lines::new(old.child().stdout.take().unwrap());
    announced(&lines);
    let out = common::output(
        Command::new(env!("CARGO_BIN_EXE_megaconn"))
            .args([
                "serve",
                "--listen",
                &port.addr,
                "--admin",
                "off",
                "--upgrade",
            ])
            .arg("--upgrade-socket")
            .arg(&socket),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("--processes 2"), "{stderr}");
}

/// A WebSocket to the demo's `/ws` on `addr`, its `101` read.
fn websocket(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// What cannot move at an upgrade (WebSockets, a request in flight) is
/// left to the old process's drain: its hand-over line counts it, where it
/// said only "0 parked connections; draining" while every WebSocket was
/// about to be closed; and it logs its drain every 2 s, its `/metrics`
/// being the new process's (whose drain gauge reads 0), where nothing
/// showed the old process's progress.
#[test]
fn the_old_process_counts_what_cannot_move_and_logs_its_drain() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let extra = ["--admin", "127.0.0.1:0"];
    let (old, addr, log) = start_logged(0, "127.0.0.1:0", &socket, &extra, &[]);
    let websockets: Vec<TcpStream> = (0..3).map(|_| websocket(&addr)).collect();
    let mut held = hold_request(&addr, &old.admin);
    let (_new, _) = start(1, &addr, &socket, &extra);
    // Their 1001 is not answered: gone, they leave the drain to the request.
    drop(websockets);
    log.wait_for_line_or(
        "draining: 1 left",
        "closed",
        "the old process does not log its drain",
    );
    let head = end_held_request(&mut held);
    assert!(head.contains("server: gen0"), "{head}");
    let handed = finish(old);
    assert!(
        handed.contains(
            "0 parked connections; draining 4 connections (3 WebSocket/framed/SSE) that cannot move"
        ),
        "{handed}"
    );
}
