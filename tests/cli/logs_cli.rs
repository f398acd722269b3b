//! What an operator reads from `megaconn serve` and trips on: a timeout's
//! log field says its setting as a config file writes it (`100ms`, not
//! `Some(100ms)`); every line of a worker process says which one it is
//! (`serve --processes`); with `--log-format json` every line the server
//! writes, stdout's included, is JSON; and the Kubernetes recipe, which is
//! never upgraded in place, starts without a warning that it cannot be.

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{ChildGuard, Gate, ReservedPort, Serving};

fn megaconn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megaconn"))
}

/// `line` as a JSON object; panics if it is not one.
fn json(line: &str) -> serde_json::Value {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(value.is_object(), "not a JSON object: {line}");
    value
}

/// A timeout's field is its setting as written, not the `Debug` of an
/// `Option<Duration>`: `read_header_timeout=100ms`. It said
/// `read_header_timeout=Some(100ms)`.
#[test]
fn a_timeout_is_logged_as_its_setting_is_written() {
    let serving = Serving::serve(&["--read-header-timeout", "100ms"]);
    let mut s = TcpStream::connect(serving.addr("http")).unwrap();
    s.set_read_timeout(Some(common::CHILD_SAFETY)).unwrap();
    // Half a head, then nothing: the server closes at read_header_timeout.
    s.write_all(b"GET / HT").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let line = serving.wait_for_log("within read_header_timeout");
    assert!(line.contains("read_header_timeout=100ms"), "{line}");
    assert!(!line.contains("Some("), "{line}");
    serving.stop();
}

/// A supervisor of two worker processes (`--processes 2`, `EXTRA`), on a
/// port of its own; its upgrade sockets in `dir`.
fn supervisor(dir: &std::path::Path, extra: &[&str]) -> Serving {
    let port = ReservedPort::new();
    let socket = dir.join("upgrade.sock");
    let mut args = vec![
        "serve",
        "--listen",
        &port.addr,
        "--workers",
        "1",
        "--processes",
        "2",
        "--admin",
        "off",
        "--upgrade-socket",
        socket.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let serving = Serving::start(&args);
    // The worker processes listen: the port is theirs.
    drop(port);
    serving
}

/// The flags of a log format: none for the human one, or JSON's.
fn log_format(json_mode: bool) -> &'static [&'static str] {
    match json_mode {
        true => &["--log-format", "json"],
        false => &[],
    }
}

/// Every line a worker process logs says its index (`worker_process=K`,
/// in JSON a top-level `"worker_process":K`), and the supervisor's own
/// lines none; the two worker processes' lines on a SIGHUP told apart.
/// They carried nothing to tell them apart. In JSON mode every line on
/// both streams is JSON (the supervisor's stdout, which reads its worker
/// processes' JSON lines to know they serve, included).
#[test]
fn every_line_of_a_worker_process_says_its_index() {
    for json_mode in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut serving = supervisor(dir.path(), log_format(json_mode));
        let index_of = |line: &str| -> Option<u64> {
            if json_mode {
                json(line)
                    .get("worker_process")
                    .map(|k| k.as_u64().unwrap())
            } else {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("worker_process="))
                    .map(|k| k.parse().unwrap())
            }
        };
        serving.child.signal(libc::SIGHUP);
        // The supervisor's line comes before it passes the signal on.
        let mut lines = serving.log_until("nothing to reload");
        lines.extend(serving.log_until("nothing to reload"));
        let mut said = BTreeSet::new();
        let mut supervisor_said = false;
        for line in &lines {
            if line.contains("nothing to reload") {
                let index = index_of(line).unwrap_or_else(|| panic!("no index: {line}"));
                said.insert(index);
            } else if line.contains("passing it to every worker process") {
                assert_eq!(index_of(line), None, "the supervisor's: {line}");
                supervisor_said = true;
            }
        }
        assert!(supervisor_said, "{lines:#?}");
        assert_eq!(said, BTreeSet::from([0, 1]), "{lines:#?}");
        serving.child.signal(libc::SIGTERM);
        assert_eq!(serving.child.wait().code(), Some(0));
        let stdout = serving.stdout.rest();
        assert!(
            stdout
                .iter()
                .any(|l| common::message(l).starts_with("megaconn stopped: 2 worker processes")),
            "{stdout:#?}"
        );
        if json_mode {
            for line in stdout.iter().chain(&lines).chain(&serving.log_rest()) {
                json(line);
            }
        }
    }
}

/// With `--log-format json` every line the server writes is JSON: its
/// log, and the lines on stdout scripts wait for (`megaconn serving on`,
/// `megaconn admin on`, `megaconn stopped`), each the message of a log
/// line of the same shape. stdout's stayed plain.
#[test]
fn in_json_mode_every_line_the_server_writes_is_json() {
    let mut serving =
        Serving::serve_admin("127.0.0.1:0", &["--log-format", "json", "--access-log"]);
    let mut s = TcpStream::connect(serving.addr("http")).unwrap();
    s.set_read_timeout(Some(common::CHILD_SAFETY)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("ok"), "{answer}");
    serving.child.signal(libc::SIGTERM);
    assert_eq!(serving.child.wait().code(), Some(0));
    let stdout = serving.stdout.rest();
    let log = serving.log_rest();
    assert!(
        log.iter().any(|l| l.contains("megaconn::access")),
        "{log:#?}"
    );
    for line in log.iter().chain(&stdout) {
        json(line);
    }
    let said: Vec<String> = stdout.iter().map(|l| common::message(l)).collect();
    assert!(
        said[0].starts_with("megaconn admin on http://"),
        "{said:#?}"
    );
    assert!(said[1].starts_with("megaconn stopped: "), "{said:#?}");
    let stop = json(&stdout[1]);
    assert_eq!(stop["level"], "INFO", "{stop}");
    assert_eq!(stop["target"], "megaconn::announce", "{stop}");
}

/// The config file of deploy/kubernetes/configmap.yaml.
fn kubernetes_config() -> String {
    let yaml = include_str!("../../deploy/kubernetes/configmap.yaml");
    let (_, file) = yaml
        .split_once("megaconn.toml: |\n")
        .expect("configmap.yaml has megaconn.toml");
    file.lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Kubernetes recipe's server starts without a warning: its root is
/// read-only, so no control socket can be bound where it would be, and it
/// is never upgraded in place (a rollout replaces the pod), which its
/// config says (`upgrade_socket = "off"`): it binds none, and says
/// nothing of it. It warned at every start that `serve --upgrade` could
/// not take over from it. Here the socket's default directory is missing,
/// as a read-only root's `/tmp` is unwritable, and the recipe's addresses
/// are replaced by flags (which win over the file).
#[test]
fn the_kubernetes_recipe_starts_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megaconn.toml");
    std::fs::write(&config, kubernetes_config()).unwrap();
    let mut cmd = megaconn();
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--workers",
            "1",
        ])
        // The pod's open-file limit (containerd's 1048576) is not this
        // test's: its max_connections would be warned about here.
        .args(["--max-connections", "1000"])
        .env("XDG_RUNTIME_DIR", dir.path().join("read-only"))
        .current_dir(dir.path());
    let mut serving = Serving::spawn(&mut cmd);
    serving.child.signal(libc::SIGTERM);
    assert_eq!(serving.child.wait().code(), Some(0));
    let log = serving.log_rest();
    for line in &log {
        let level = json(line)["level"].clone();
        assert!(level == "INFO" || level == "DEBUG", "{line}");
    }
    // No socket named `off`, nor any other file, where it ran.
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["megaconn.toml"], "{log:#?}");
}

/// `serve --upgrade` with `--upgrade-socket off` has nothing to take over
/// through: a usage error (exit 2) that says so.
#[test]
fn an_upgrade_with_the_upgrade_socket_off_is_a_usage_error() {
    let mut child = ChildGuard::spawn(
        megaconn()
            .args(["serve", "--upgrade", "--upgrade-socket", "off"])
            .args(["--listen", "127.0.0.1:0", "--admin", "off"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let (status, _, stderr) = child.wait_with_output();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("upgrade_socket (--upgrade-socket) is off"),
        "{stderr}"
    );
}

/// A worker process's exit reads as the supervisor's other lines do: one a
/// signal ended by the signal's name (`signal="SIGKILL"`; in JSON the string
/// `"SIGKILL"`, as the supervisor names the signals it gets), one that
/// exited by its code (`exit_code=0`; in JSON the number 0), each without
/// the other field. The line said `exit=None` for a signal (named by its
/// number on a line of its own before it) and `exit=Some(0)` for a code.
#[test]
fn a_worker_process_exit_is_logged_by_its_code_or_its_signal() {
    for json_mode in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut serving = supervisor(dir.path(), log_format(json_mode));
        let pids: Vec<i32> = (0..2)
            .map(|k| {
                let line = common::message(&serving.stdout.expect_line());
                line.strip_prefix(&format!("worker process {k} pid "))
                    .unwrap_or_else(|| panic!("{line}"))
                    .parse()
                    .unwrap()
            })
            .collect();
        let died = "worker process died; restarting";
        // SAFETY: kill(2) on a worker process this test's supervisor started.
        unsafe { libc::kill(pids[0], libc::SIGKILL) };
        let killed = serving.wait_for_log(died);
        assert_restarted(&serving, 0);
        // Drains (it serves nothing) and exits 0.
        // SAFETY: as above.
        unsafe { libc::kill(pids[1], libc::SIGTERM) };
        let exited = serving.wait_for_log(died);
        assert_restarted(&serving, 1);
        if json_mode {
            let fields = &json(&killed)["fields"];
            assert_eq!(fields["worker"], 0, "{killed}");
            assert_eq!(fields["signal"], "SIGKILL", "{killed}");
            assert!(fields.get("exit_code").is_none(), "{killed}");
            assert!(fields.get("exit").is_none(), "{killed}");
            let fields = &json(&exited)["fields"];
            assert_eq!(fields["worker"], 1, "{exited}");
            assert_eq!(fields["exit_code"].as_i64(), Some(0), "{exited}");
            assert!(fields.get("signal").is_none(), "{exited}");
        } else {
            // Quoted, as the supervisor's own `signal="SIGTERM"` is.
            assert!(killed.contains(" signal=\"SIGKILL\" "), "{killed}");
            assert!(!killed.contains("exit"), "{killed}");
            assert!(exited.contains(" exit_code=0 "), "{exited}");
            assert!(!exited.contains("signal="), "{exited}");
            assert!(!exited.contains("Some("), "{exited}");
        }
        serving.child.signal(libc::SIGTERM);
        assert_eq!(serving.child.wait().code(), Some(0));
    }
}

/// Waits for the supervisor's line that worker process `k` restarted.
fn assert_restarted(serving: &Serving, k: usize) {
    let line = common::message(&serving.stdout.expect_line());
    assert!(
        line.starts_with(&format!("worker process {k} restarted pid ")),
        "{line}"
    );
}

/// A request held in flight on `addr`: a `POST /echo` whose body came in
/// part (2 of 5 bytes). Returns once the part came back, so its handler
/// runs, waiting for the rest, and a graceful drain waits for it.
fn a_request_in_flight(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::CHILD_SAFETY)).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab")
        .unwrap();
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got);
        if text
            .split_once("\r\n\r\n")
            .is_some_and(|(_, body)| body.contains("ab"))
        {
            assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
            return s;
        }
        let mut buf = [0; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// In JSON mode the last words of a second SIGTERM (a second or more after
/// the first, during the drain: the stop is forced, exit 1) are JSON too,
/// an ERROR line whose message is the plain line, as every line before
/// them: one process's (`second SIGTERM: exiting now`) and a supervisor's
/// (`second SIGTERM: killing worker processes`).
#[test]
fn in_json_mode_a_second_sigterm_says_so_in_json() {
    for processes in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let json_mode = ["--log-format", "json"];
        let mut serving = match processes {
            true => supervisor(dir.path(), &json_mode),
            false => Serving::serve(&json_mode),
        };
        let _held = a_request_in_flight(&serving.addr("http"));
        serving.child.signal(libc::SIGTERM);
        let mut log = serving.log_until(match processes {
            true => "draining every worker process",
            false => "shutting down gracefully",
        });
        // The rule is about time: past the repeat window (1 s), with a margin.
        std::thread::sleep(std::time::Duration::from_millis(1300));
        serving.child.signal(libc::SIGTERM);
        assert_eq!(serving.child.wait().code(), Some(1), "{log:#?}");
        log.extend(serving.log_rest());
        for line in log.iter().chain(&serving.stdout.rest()) {
            json(line);
        }
        let words = match processes {
            true => "megaconn: second SIGTERM: killing worker processes",
            false => "megaconn: second SIGTERM: exiting now",
        };
        let last = log
            .iter()
            .map(|l| json(l))
            .find(|l| l["fields"]["message"] == words)
            .unwrap_or_else(|| panic!("no {words:?} in {log:#?}"));
        assert_eq!(last["level"], "ERROR", "{last}");
        assert_eq!(last["target"], "megaconn", "{last}");
        assert!(last["timestamp"].as_str().is_some(), "{last}");
    }
}

/// A worker process's last words (its error, as it exits) say its index as
/// its log lines do (`worker_process=K`; in JSON a top-level
/// `"worker_process":K`): the worker processes share the supervisor's
/// stderr, and which one failed could not be told. Here worker process 1,
/// killed, fails its restart (a test gate lowers its open-file limit, so
/// that no worker's runtime can be made).
#[test]
fn a_worker_process_last_words_say_its_index() {
    for json_mode in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let port = ReservedPort::new();
        let mut cmd = megaconn();
        cmd.args(["serve", "--listen", &port.addr, "--workers", "1"])
            .args(["--processes", "2", "--admin", "off", "--upgrade-socket"])
            .arg(&socket)
            .args(log_format(json_mode))
            // No gate listens while the worker processes start: they pass.
            .env("MEGACONN_TEST_START_GATE", "1");
        let mut serving = Serving::spawn(&mut cmd);
        // The worker processes listen: the port is theirs.
        drop(port);
        let said: Vec<String> = (0..2)
            .map(|_| common::message(&serving.stdout.expect_line()))
            .collect();
        let pid: i32 = said[1]
            .strip_prefix("worker process 1 pid ")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("{said:?}"));
        let gate = Gate::at(&dir.path().join("upgrade.sock.1"), ".start.gate");
        // SAFETY: kill(2) on a worker process this test's supervisor started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let died = "worker process died; restarting";
        serving.wait_for_log(died);
        let (_, mut held) = gate.next();
        drop(gate);
        held.write_all(b"emfile\n").unwrap();
        drop(held);
        // Its last words come before the supervisor hears of its exit.
        let lines = serving.log_until(died);
        let said = |line: &&String| common::message(line).starts_with("megaconn: ");
        let words = lines
            .iter()
            .find(said)
            .unwrap_or_else(|| panic!("no last words in {lines:#?}"));
        if json_mode {
            let words = json(words);
            assert_eq!(words["worker_process"], 1, "{words}");
            assert_eq!(words["level"], "ERROR", "{words}");
        } else {
            assert!(words.ends_with(" worker_process=1"), "{words}");
        }
        // Restarted again (past the gate nobody listens at now).
        let line = common::message(&serving.stdout.expect_line());
        assert!(
            line.starts_with("worker process 1 restarted pid "),
            "{line}"
        );
        serving.child.signal(libc::SIGTERM);
        assert_eq!(serving.child.wait().code(), Some(0));
    }
}

/// `megaconn serve --config FILE` with `text` in FILE, to its (failing)
/// end: its exit code and stderr, and the file's path.
fn serve_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let (status, stderr) = common::run_to_exit(
        megaconn()
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--admin", "off"])
            .args(["--upgrade-socket", "off"]),
    );
    (status.code(), stderr, path.display().to_string())
}

/// With `log_format = "json"`, an error found after the config file is
/// read is a JSON line too: a value the knob refuses (`workers = 0`) and a
/// certificate that cannot be read. Both were plain text, printed before
/// the log format was applied.
#[test]
fn in_json_mode_a_start_error_is_json() {
    for (setting, needle) in [
        ("workers = 0", "workers"),
        (
            "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"",
            "/nonexistent/",
        ),
    ] {
        let (code, stderr, _) = serve_config(&format!("log_format = \"json\"\n{setting}\n"));
        assert_eq!(code, Some(2), "{setting}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{setting}: {stderr}");
        let line = json(lines[0]);
        assert_eq!(line["level"], "ERROR", "{setting}: {stderr}");
        let message = line["fields"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{setting}: {message}");
    }
}

/// A config file's bad value names the file and the key (`workers = 0`
/// said ``key `workers`: must be at least 1`` without the file), and a
/// `tls_cert` without `tls_key` in the file names the file's keys (it said
/// `--tls-cert needs --tls-key`, flags the operator never gave).
#[test]
fn a_config_error_names_the_file_and_its_keys() {
    let (code, stderr, path) = serve_config("workers = 0\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "key `workers` in config file {path}: must be at least 1"
        )),
        "{stderr}"
    );
    let (code, stderr, path) = serve_config("tls_cert = \"/nonexistent/cert.pem\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "key `tls_cert` in config file {path} needs key `tls_key`"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("--tls-cert needs"), "{stderr}");
}
