//! Session 49's `serve` leftovers: an upgrade in place tells systemd the
//! new main process (`MAINPID=`), and `serve --check` builds the
//! OpenTelemetry exporter as a start would, binding nothing. (The admin
//! address's syntax was checked already: it is read by the same parser,
//! flag or config key, in a check as in a start.)

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use common::{Serving, CHILD_SAFETY};

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`, in a
/// directory of its own.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message (waited for, bounded), one line a state.
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification comes");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Under `Type=notify`, an upgrade in place moves the service's main
/// process: once the new process said it serves, the old one says
/// `MAINPID=` the new one's pid (it is systemd's main process, heard
/// under any `NotifyAccess=`), and the new one, once `megaconn upgrade
/// done`, `MAINPID=` its own pid with `READY=1`. Neither said `MAINPID=`,
/// so systemd took the old process's exit for the service's and stopped
/// the unit, the new process with it; and the new one said `READY=1`
/// before it served anything.
#[test]
fn an_upgrade_tells_systemd_the_new_main_pid() {
    let notify = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let mut start = Serving::serve_command("off", &["--upgrade-socket", socket]);
    let old = Serving::spawn(start.env("NOTIFY_SOCKET", &notify.path));
    let ready = notify.next();
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    let http = old.addr("http");
    let mut upgrade = Command::new(BIN);
    upgrade
        .args([
            "serve",
            "--listen",
            &http,
            "--workers",
            "1",
            "--admin",
            "off",
        ])
        .args(["--upgrade-socket", socket, "--upgrade"])
        .env("NOTIFY_SOCKET", &notify.path);
    let new = Serving::spawn(&mut upgrade);
    loop {
        let line = common::message(&new.stdout.expect_line());
        if line.starts_with("megaconn upgrade done") {
            break;
        }
    }
    let new_pid = format!("MAINPID={}", new.child.id());
    let from_old = notify.next();
    assert_eq!(from_old.first(), Some(&new_pid), "{from_old:?}");
    assert!(!from_old.iter().any(|l| l == "STOPPING=1"), "{from_old:?}");
    let from_new = notify.next();
    assert_eq!(from_new.first(), Some(&new_pid), "{from_new:?}");
    assert!(from_new.iter().any(|l| l == "READY=1"), "{from_new:?}");
    assert!(
        from_new
            .iter()
            .any(|l| l.starts_with("STATUS=megaconn upgrade done")),
        "{from_new:?}"
    );
    let Serving { mut child, .. } = old;
    assert!(child.wait().success(), "the old process failed");
    new.stop();
}

/// `megaconn serve --listen 127.0.0.1:0 --admin off ARGS… --check` with
/// `env` (the endpoint variables cleared first): exit code, stdout, stderr.
fn check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--check")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied());
    let out = common::output(&mut cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An OTLP endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT` that the exporter
/// cannot take fails `--check` with the start's error; a good one passes
/// (nothing is connected to). It passed the check and failed the start.
#[test]
fn check_builds_the_otel_exporter_as_a_start_does() {
    let bad = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1:4317")];
    let (code, stdout, stderr) = check(&["--admin", "off"], &bad);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot set up OpenTelemetry tracing")
            && stderr.contains("invalid endpoint"),
        "{stderr}"
    );
    let good = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")];
    let (code, stdout, stderr) = check(&["--admin", "off"], &good);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
}
