//! What an SRE team expects of `megaconn serve` as a production server
//! (session 47's review): `--check` as `nginx -t`, systemd's readiness
//! protocol (`NOTIFY_SOCKET`), `--pid-file`, the last of a flag given twice
//! winning, `megaconn_build_info` and `process_*` on `/metrics`, and a
//! SIGHUP's config errors worded as a start's.

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{ChildGuard, Lines, ReservedPort, Serving, CHILD_SAFETY};

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

/// `megaconn serve ARGS… --check`, run to its end: exit code, stdout, stderr.
pub(crate) fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::output(Command::new(BIN).arg("serve").args(args).arg("--check"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--check` reads and validates and keeps nothing bound: it says what a
/// start would listen on, exits 0, and leaves the addresses free (each
/// held for the test by a socket that does not listen, which a start binds
/// beside). (It passed the admin address as the listen address, both
/// taken: `--check` now refuses both, as a start fails on them; ops50_cli.)
#[test]
fn check_passes_without_binding() {
    let (listen, admin) = (ReservedPort::new(), ReservedPort::new());
    let addr = listen.addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megaconn.toml");
    std::fs::write(&config, format!("listen = [\"{addr}\"]\nworkers = 2\n")).unwrap();
    let config = config.to_str().unwrap();
    let (code, stdout, stderr) =
        check(&["--config", config, "--admin", &admin.addr, "--self-signed"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(stdout.contains(&format!("https://{addr}")), "{stdout}");
    assert!(stdout.contains(config), "{stdout}");
    // Nothing of the check's listens there: both addresses are free.
    for addr in [&addr, &admin.addr] {
        TcpListener::bind(addr).unwrap();
    }
}

/// A configuration a start refuses, `--check` refuses with the start's
/// very message (naming the file and the key, or the flag), exit 1 where
/// the start exits 2; in JSON mode as a JSON line. The library's own
/// checks (`max_headers` over 512) and the files (a certificate that is
/// not there) are checked too.
#[test]
fn check_fails_as_a_start_would() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megaconn.toml");
    let config_arg = config.to_str().unwrap();
    let cases = [
        ("workers = 0\n", "key `workers` in config file"),
        (
            "max_headers = 600\n",
            "max_headers must be between 1 and 512",
        ),
        (
            "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
            "/nonexistent/cert.pem",
        ),
        (
            "workers = 2\npid_file = \"/nonexistent/dir/m.pid\"\n",
            "/nonexistent/dir",
        ),
        ("idle_timeout = \"soon\"\n", "idle_timeout"),
    ];
    for (text, needle) in cases {
        std::fs::write(&config, text).unwrap();
        let args = [
            "--config",
            config_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
        ];
        let (code, stdout, stderr) = check(&args);
        assert_eq!(code, Some(1), "{text}: {stdout}{stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(!stdout.contains("configuration OK"), "{text}: {stdout}");
        // A start says the same, and exits 2 (a usage error) before it
        // binds anything.
        let (status, start_stderr) = common::run_to_exit(Command::new(BIN).arg("serve").args(args));
        assert_eq!(status.code(), Some(2), "{text}: {start_stderr}");
        assert_eq!(stderr, start_stderr, "{text}");
    }
    std::fs::write(&config, "workers = 0\n").unwrap();
    let (code, _, stderr) = check(&["--config", config_arg, "--log-format", "json"]);
    assert_eq!(code, Some(1));
    let line: serde_json::Value =
        serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let message = line["fields"]["message"].as_str().unwrap();
    assert!(
        message.contains("key `workers` in config file"),
        "{message}"
    );
    // A flag is named as a flag.
    let (code, _, stderr) = check(&["--max-headers", "0"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("max_headers"), "{stderr}");
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
        NotifySocket {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The next message (waited for, bounded).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification comes");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Every message already sent (none waited for).
    fn rest(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        all
    }
}

/// Under `Type=notify`: READY=1 once listening; at SIGHUP RELOADING=1 with
/// MONOTONIC_USEC, then READY=1 once reloaded; STOPPING=1 when the drain
/// begins at SIGTERM.
#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let notify = NotifySocket::new();
    let mut cmd = Serving::serve_command("off", &["--self-signed"]);
    let server = Serving::spawn(cmd.env("NOTIFY_SOCKET", &notify.path));
    let ready = notify.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains("STATUS=megaconn serving on https://"),
        "{ready:?}"
    );
    server.child.signal(libc::SIGHUP);
    let reloading = notify.next();
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{usec}");
    let reloaded = notify.next();
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded:?}");
    server.child.signal(libc::SIGTERM);
    let stopping = notify.next();
    assert_eq!(stopping.trim_end(), "STOPPING=1");
    let mut child = server.child;
    assert_eq!(child.wait().code(), Some(0));
}

/// With `--processes`, only the supervisor notifies: one READY=1 for the
/// whole server, none from its worker processes (which systemd would
/// refuse under NotifyAccess=main, and which would say "ready" before the
/// others are).
#[test]
fn with_processes_only_the_supervisor_notifies() {
    let notify = NotifySocket::new();
    let port = ReservedPort::new();
    let mut child = ChildGuard::spawn(
        Command::new(BIN)
            .args([
                "serve",
                "--processes",
                "2",
                "--workers",
                "1",
                "--admin",
                "off",
            ])
            .args(["--listen", &port.addr, "--upgrade-socket", "off"])
            .env("NOTIFY_SOCKET", &notify.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let lines = Lines::new(child.child().stdout.take().unwrap());
    let first = lines.expect_line();
    assert!(first.contains("2 worker processes"), "{first}");
    let ready = notify.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    child.signal(libc::SIGTERM);
    assert_eq!(child.wait().code(), Some(0));
    let rest: Vec<String> = notify
        .rest()
        .iter()
        .map(|m| m.trim_end().to_string())
        .collect();
    assert_eq!(rest, ["STOPPING=1"], "after the supervisor's READY=1");
}

/// The pid file: a stale one is replaced once the server listens, it names
/// the server, and a clean stop removes it.
#[test]
fn the_pid_file_names_the_server_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("megaconn.pid");
    std::fs::write(&path, "4194304\n").unwrap();
    let server = Serving::serve(&["--pid-file", path.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", server.child.id())
    );
    server.stop();
    assert!(!path.exists(), "a clean stop removes the pid file");
}

/// `serve --upgrade` writes its own pid into the file once it serves, and
/// the old process, draining out, leaves the file to it.
#[test]
fn an_upgrade_in_place_rewrites_the_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("megaconn.pid");
    let socket = dir.path().join("upgrade.sock");
    let generation = |listen: &str, upgrade: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            listen,
            "--workers",
            "1",
            "--admin",
            "off",
        ])
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--upgrade-socket")
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if upgrade {
            cmd.arg("--upgrade");
        }
        let mut child = ChildGuard::spawn(&mut cmd);
        let lines = Lines::new(child.child().stdout.take().unwrap());
        (child, lines)
    };
    let (mut old, old_lines) = generation("127.0.0.1:0", false);
    let banner = old_lines.expect_line();
    let addr = banner
        .strip_prefix("megaconn serving on http://")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{banner}"))
        .to_string();
    let pid = |path: &Path| std::fs::read_to_string(path).unwrap();
    assert_eq!(pid(&pid_file), format!("{}\n", old.id()));
    let (mut new, new_lines) = generation(&addr, true);
    loop {
        let line = new_lines.expect_line();
        if line.starts_with("megaconn upgrade done") {
            break;
        }
    }
    assert_eq!(pid(&pid_file), format!("{}\n", new.id()));
    let _ = old_lines.rest();
    assert!(old.wait().success());
    assert_eq!(
        pid(&pid_file),
        format!("{}\n", new.id()),
        "the old process left it"
    );
    new.signal(libc::SIGTERM);
    assert!(new.wait().success());
    assert!(!pid_file.exists());
}

/// A flag given twice: the last wins (a switch's `=false` after it, or
/// before it; a value flag's second value), where clap refused the second.
#[test]
fn the_last_of_a_flag_given_twice_wins() {
    let server = Serving::serve(&["--self-signed", "--self-signed=false"]);
    assert!(server.urls[0].starts_with("http://"), "{:?}", server.urls);
    server.stop();
    let server = Serving::serve(&["--self-signed=false", "--self-signed"]);
    assert!(server.urls[0].starts_with("https://"), "{:?}", server.urls);
    server.stop();
    // `serve` gives `--admin off` first; this one wins.
    let server = Serving::serve(&["--admin", "127.0.0.1:0"]);
    let admin = server.admin_addr();
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    server.stop();
}

/// One GET on a fresh connection; the body.
pub(crate) fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// An unlabelled sample's value.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// `/metrics` carries `megaconn_build_info{version}` = 1 and the
/// `process_*` series, read from `/proc` (its open-file limit the one the
/// process was given); with `--processes` CPU and memory summed over the
/// supervisor and its worker processes, descriptors the supervisor's own.
#[test]
fn metrics_carry_build_info_and_the_process() {
    const FILES: u64 = 3000;
    let mut cmd = Serving::serve_command("127.0.0.1:0", &[]);
    Serving::limit_open_files(&mut cmd, FILES);
    let server = Serving::spawn(&mut cmd);
    let admin = server.admin_addr();
    let text = get(&admin, "/metrics");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("megaconn_build_info{{version=\"{version}\"}} 1")),
        "{text}"
    );
    assert_eq!(sample(&text, "process_max_fds"), FILES as f64);
    let open = sample(&text, "process_open_fds");
    assert!(open >= 4.0 && open < FILES as f64, "{open}");
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
    // Maybe under one clock tick (10 ms) so far.
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 60.0,
        "{started} {now}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    server.stop();

    // A supervisor and two worker processes, each with FILES. Its admin
    // line comes first, then the banner once both worker processes serve.
    let port = ReservedPort::new();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--processes", "2", "--workers", "1"])
        .args(["--listen", &port.addr, "--admin", "127.0.0.1:0"])
        .args(["--upgrade-socket", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    Serving::limit_open_files(&mut cmd, FILES);
    let mut child = ChildGuard::spawn(&mut cmd);
    let lines = Lines::new(child.child().stdout.take().unwrap());
    let admin_line = lines.expect_line();
    let admin = admin_line
        .strip_prefix("megaconn admin on http://")
        .unwrap_or_else(|| panic!("{admin_line}"));
    let banner = lines.expect_line();
    assert!(banner.contains("2 worker processes"), "{banner}");
    let text = get(admin, "/metrics");
    assert!(text.contains("megaconn_build_info{version="), "{text}");
    // The supervisor's own limit: a worker's descriptors are not listed
    // (/proc/PID/fd would cost the kernel ~0.9 KB per descriptor a scrape).
    assert_eq!(sample(&text, "process_max_fds"), FILES as f64, "{text}");
    child.signal(libc::SIGTERM);
    assert_eq!(child.wait().code(), Some(0));
}

/// A SIGHUP that finds the config file wrong says so in the words a start
/// uses for the same file ("key `k` in config file PATH: ..."), where it
/// said "PATH: key `k`: ...".
#[test]
fn a_sighup_error_is_worded_as_a_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megaconn.toml");
    std::fs::write(&config, "tls_max_handshakes = 8\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let args = ["--self-signed", "--config", config_arg];
    let server = Serving::serve(&args);
    // A key the flags of `serve_command` do not override.
    std::fs::write(&config, "tls_max_handshakes = 8\nmax_connections = 0\n").unwrap();
    server.child.signal(libc::SIGHUP);
    let line = server.wait_for_log("SIGHUP: the config file was not applied");
    let (status, start) =
        common::run_to_exit(Serving::serve_command("off", &args).stdout(Stdio::null()));
    assert_eq!(status.code(), Some(2), "{start}");
    let start = start.trim().strip_prefix("megaconn: ").unwrap();
    assert!(
        start.starts_with("key `max_connections` in config file"),
        "{start}"
    );
    assert!(
        line.contains(start),
        "SIGHUP said {line:?}, a start {start:?}"
    );
    server.stop();
}
