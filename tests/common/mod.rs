//! What the command-line tests share: a child process that cannot outlive its
//! test, reading its output with a bound, and a port held for a child until
//! it listens.
#![allow(dead_code)]

#[path = "../../crates/load/tests/common/on_thread.rs"]
mod on_thread;
#[path = "../../crates/megaconn/tests/common/skip.rs"]
mod skip;
pub use on_thread::serve_on_thread;
// Not every test target skips anything (as `dead_code` above).
#[allow(unused_imports)]
pub use skip::skip;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for any single wait on a child: reached only when a test fails.
pub const CHILD_SAFETY: Duration = Duration::from_secs(30);

/// A child process owned by a test. Dropping it (at the end of the test, or
/// while a failed assertion unwinds) stops the child (SIGTERM, then SIGKILL
/// after [`STOP_GRACE`]) and reaps it, so no test leaves a server running,
/// whether it passes or not.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`; panics if it cannot start.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard {
            child: cmd.spawn().expect("the child starts"),
        }
    }

    /// Takes charge of a child spawned elsewhere.
    pub fn adopt(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    /// The child's process id.
    pub fn id(&self) -> i32 {
        self.child.id() as i32
    }

    /// The child, to take its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `sig` to the child (which has not been reaped: the guard only
    /// reaps in [`wait`](ChildGuard::wait) and on drop).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped yet, so its
        // pid cannot have been reused.
        unsafe { libc::kill(self.id(), sig) };
    }

    /// Waits for the child to exit, at most [`CHILD_SAFETY`]; panics (and
    /// the drop kills it) if it does not.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + CHILD_SAFETY;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit within {CHILD_SAFETY:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child to exit (bounded, as [`wait`](ChildGuard::wait))
    /// and reads the rest of its stdout and stderr, if they were piped and
    /// not taken.
    pub fn wait_with_output(&mut self) -> (ExitStatus, String, String) {
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut out = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut out);
                }
                out
            })
        };
        let out = drain(
            self.child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            self.child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let status = self.wait();
        (status, out.join().unwrap(), err.join().unwrap())
    }
}

/// Runs `cmd` to its end, as `Command::output` does, but bounded: a command
/// that should exit at once (a usage error, `--help`) but serves instead
/// (`serve` without `--listen` would serve on the fixed 127.0.0.1:8080) is
/// killed after [`CHILD_SAFETY`] and the test fails, instead of hanging.
pub fn output(cmd: &mut Command) -> Output {
    let mut child = ChildGuard::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (status, stdout, stderr) = child.wait_with_output();
    Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

/// Runs `cmd` to its end (bounded, as [`output`]); returns its exit status
/// and stderr.
pub fn run_to_exit(cmd: &mut Command) -> (ExitStatus, String) {
    let out = output(cmd);
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free port on 127.0.0.1 held for a child that must be given an explicit
/// port (`--processes` refuses port 0; `systemd-socket-activate -l`): bound,
/// with `SO_REUSEADDR`, never listening. Keep it until the child listens.
///
/// Probing a free port by binding `:0` and dropping the socket releases it
/// before the child binds: meanwhile another test's `:0` (or an outgoing
/// connection) can get the same port, and with `--processes` two megaconns
/// whose workers bind with `SO_REUSEPORT` then silently share it. While this
/// socket is bound, the kernel gives the port to no `:0` bind and no
/// connect; yet a socket that is not listening blocks no other bind that also
/// sets `SO_REUSEADDR` (megaconn's free-port probe and listeners, with or
/// without `SO_REUSEPORT`, and systemd-socket-activate all do).
pub struct ReservedPort {
    _socket: socket2::Socket,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl ReservedPort {
    /// Binds a fresh port.
    pub fn new() -> ReservedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        ReservedPort {
            _socket: socket,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

/// How long a dropped guard lets its child stop on SIGTERM before killing it.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already reaped: nothing to do (kill would fail harmlessly, as std
        // refuses to signal a reaped child).
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first: a server stopped that way removes its upgrade
        // control socket (`/tmp/megaconn-PORT.upgrade.sock`), which SIGKILL
        // left behind, five files per test run. Bounded: a child still
        // running after STOP_GRACE is killed.
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a line on `megaconn serve`'s stdout says: the line, or with
/// `--log-format json` the message of its JSON object.
pub fn message(line: &str) -> String {
    if line.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if let Some(message) = value["fields"]["message"].as_str() {
            return message.to_string();
        }
    }
    line.to_string()
}

/// The lines of a child's stdout, read on a thread so that each can be
/// waited for with a bound.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    /// Starts reading `stdout` line by line.
    pub fn new(stdout: ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, waiting at most [`CHILD_SAFETY`]; `None` at the end of
    /// the output. Panics if no line comes in time.
    pub fn next_line(&self) -> Option<String> {
        match self.rx.recv_timeout(CHILD_SAFETY) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no output from the child within {CHILD_SAFETY:?}")
            }
        }
    }

    /// The next line; panics at the end of the output or after [`CHILD_SAFETY`].
    pub fn expect_line(&self) -> String {
        self.next_line().expect("the child closed its output")
    }

    /// The next line if one comes within `within`; `None` if none does (or
    /// the output ended): for a test that checks a line has not come yet.
    pub fn line_within(&self, within: Duration) -> Option<String> {
        self.rx.recv_timeout(within).ok()
    }

    /// Every line until the end of the output (each waited for with the bound).
    pub fn rest(&self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }
}

/// A running `megaconn serve` whose stdout is drained and whose stderr is
/// read line by line; stopped and reaped when dropped (its [`ChildGuard`]).
pub struct Serving {
    /// The server process.
    pub child: ChildGuard,
    /// Keeps reading stdout, so the server never blocks on a full pipe;
    /// the lines after the banner.
    pub stdout: Lines,
    /// The URLs of the start-up banner.
    pub urls: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

impl Serving {
    /// Starts `megaconn ARGS…` and waits for its banner.
    pub fn start(args: &[&str]) -> Serving {
        Serving::spawn(Command::new(env!("CARGO_BIN_EXE_megaconn")).args(args))
    }

    /// Starts `cmd` (a `megaconn serve`, with an environment or limits of
    /// the test's) and waits for its banner.
    pub fn spawn(cmd: &mut Command) -> Serving {
        let mut child = ChildGuard::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
        let (tx, stderr) = mpsc::channel();
        let err = BufReader::new(child.child().stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = Lines::new(child.child().stdout.take().unwrap());
        let first = message(&stdout.expect_line());
        let urls = first
            .strip_prefix("megaconn serving on ")
            .unwrap_or_else(|| panic!("no banner: {first:?}"))
            .split(" (")
            .next()
            .unwrap()
            .split(", ")
            .map(str::to_string)
            .collect();
        Serving {
            child,
            stdout,
            urls,
            stderr,
        }
    }

    /// Starts `serve --listen 127.0.0.1:0 --workers 1 --admin off ARGS…`:
    /// one worker on an ephemeral port, no admin listener.
    pub fn serve(args: &[&str]) -> Serving {
        Serving::serve_admin("off", args)
    }

    /// As [`Serving::serve`], with the admin listener at `admin`.
    pub fn serve_admin(admin: &str, args: &[&str]) -> Serving {
        Serving::spawn(&mut Serving::serve_command(admin, args))
    }

    /// The command [`Serving::serve_admin`] runs, for a test to add an
    /// environment or limits to ([`Serving::spawn`] it then).
    pub fn serve_command(admin: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_megaconn"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--admin",
            admin,
        ])
        .args(args);
        cmd
    }

    /// Lowers the open-file limit (soft and hard) of the process `cmd`
    /// starts to `files`, not the test's own.
    pub fn limit_open_files(cmd: &mut Command, files: u64) {
        // SAFETY: setrlimit(2) only, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The admin listener's address, from the line after the banner
    /// (`megaconn admin on http://ADDR`; a server started with one).
    pub fn admin_addr(&self) -> String {
        let line = self.stdout.expect_line();
        line.strip_prefix("megaconn admin on http://")
            .unwrap_or_else(|| panic!("no admin address: {line:?}"))
            .to_string()
    }

    /// The address of the banner URL with `scheme`.
    pub fn addr(&self, scheme: &str) -> String {
        let prefix = format!("{scheme}://");
        self.urls
            .iter()
            .find_map(|u| u.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} listener in {:?}", self.urls))
            .to_string()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + CHILD_SAFETY;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    /// Waits for a log line containing `needle`; returns the lines before
    /// it, and it last.
    pub fn log_until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + CHILD_SAFETY;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    lines.push(line);
                    if found {
                        return lines;
                    }
                }
                Err(e) => panic!("no log line with {needle:?} in {lines:#?}: {e}"),
            }
        }
    }

    /// Every log line still to come, to the end of the output (once the
    /// child exited; each waited for with the bound).
    pub fn log_rest(&self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.stderr.recv_timeout(CHILD_SAFETY) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
                Err(e) => panic!("the log did not end: {e}"),
            }
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0).
    pub fn stop(mut self) {
        self.child.signal(libc::SIGTERM);
        assert_eq!(self.child.wait().code(), Some(0));
    }
}

/// Where a `megaconn` process stops at a test gate (a test-only knob of
/// debug builds, `test_gate` in crates/cli/upgrade.rs): it connects to the
/// gate's Unix socket, says its pid and waits until the test drops the
/// connection (having written what it tells it, if anything). Arrivals
/// are accepted on a thread of the gate's and waited for with a bound.
/// [`Gate::new`]: where a new worker process of a supervisor stops before
/// taking over (`MEGACONN_TEST_TAKE_OVER_GATE`): one about to take over
/// on `socket.k` connects to `socket.k.gate`.
pub struct Gate {
    arrivals: mpsc::Receiver<(i32, UnixStream)>,
}

impl Gate {
    pub fn new(socket: &Path, index: usize) -> Gate {
        Gate::at(socket, &format!(".{index}.gate"))
    }

    /// Where a worker process of a supervisor stops before it claims slot
    /// `index` to bind afresh (`MEGACONN_TEST_SLOT_GATE`, a test-only knob,
    /// set on the supervisor): at `socket.k.lock.gate`, as at a [`Gate::new`].
    pub fn slot(socket: &Path, index: usize) -> Gate {
        Gate::at(socket, &format!(".{index}.lock.gate"))
    }

    /// A gate at `socket`'s path plus `suffix`.
    pub fn at(socket: &Path, suffix: &str) -> Gate {
        // The server's gates exist in debug builds only (`test_gate` in
        // crates/cli/upgrade.rs); under `--release` it would never arrive.
        if !cfg!(debug_assertions) {
            panic!(
                "test gates are compiled into debug builds only: run this test without --release"
            );
        }
        let mut path = socket.as_os_str().to_owned();
        path.push(suffix);
        let listener = UnixListener::bind(path).unwrap();
        let (tx, arrivals) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                let mut pid = String::new();
                BufReader::new(&stream).read_line(&mut pid).unwrap();
                if tx.send((pid.trim().parse().unwrap(), stream)).is_err() {
                    break;
                }
            }
        });
        Gate { arrivals }
    }

    /// The next worker process to arrive: its pid, and the connection that
    /// holds it there.
    pub fn next(&self) -> (i32, UnixStream) {
        self.arrivals
            .recv_timeout(CHILD_SAFETY)
            .expect("a process comes to the gate")
    }

    /// The next process to arrive within `wait`, if one does.
    pub fn within(&self, wait: Duration) -> Option<(i32, UnixStream)> {
        match self.arrivals.recv_timeout(wait) {
            Ok(arrival) => Some(arrival),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(e) => panic!("the gate's thread ended: {e}"),
        }
    }

    /// As [`Gate::next`], for `child` to arrive; panics at once if it
    /// exits first (checked every few milliseconds: its exit sends nothing
    /// here).
    pub fn next_unless(&self, child: &mut ChildGuard) -> (i32, UnixStream) {
        let deadline = Instant::now() + CHILD_SAFETY;
        loop {
            if let Some(arrival) = self.within(Duration::from_millis(5)) {
                return arrival;
            }
            assert!(
                Instant::now() < deadline,
                "nothing at the gate within {CHILD_SAFETY:?}"
            );
            if let Some(status) = child.child().try_wait().unwrap() {
                panic!("the process exited ({status:?}) before it came to the gate");
            }
        }
    }
}
