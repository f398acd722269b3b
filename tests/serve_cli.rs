//! `megaconn serve` as a user runs it: the binary starts, prints its address,
//! answers, drains on SIGTERM and exits 0; bad configuration exits 2 with a
//! message naming the problem.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn megaconn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megaconn"))
}

/// Starts `megaconn serve --listen 127.0.0.1:0 --workers 1 EXTRA…`; returns the
/// child, its stdout after the first line, and the address that line printed.
fn start_serve(
    extra: &[&str],
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    String,
) {
    let mut child = megaconn()
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        first.starts_with("megaconn serving on http://127.0.0.1:"),
        "{first}"
    );
    let addr = first
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (child, stdout, addr)
}

/// One request with `Connection: close`; the whole response.
fn get_once(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

#[test]
fn serve_answers_and_exits_cleanly_on_sigterm() {
    let (mut child, mut stdout, addr) = start_serve(&[]);
    let response = get_once(&addr, "/");
    assert!(response.starts_with("HTTP/1.1 200 OK"));
    assert!(response.ends_with("Hello, World!"));

    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("megaconn stopped: 1 connections accepted, 1 requests"),
        "{rest}"
    );
}

#[test]
fn a_typo_in_the_config_file_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("megaconn.toml");
    std::fs::write(&path, "idle_timout = \"5s\"\n").unwrap();
    let out = megaconn()
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("idle_timout"), "{err}");
}

#[test]
fn a_bad_flag_exits_2() {
    let out = megaconn()
        .args(["serve", "--workers", "zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = megaconn()
        .args(["serve", "--idle-timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10s"));
}

#[test]
fn a_port_in_use_exits_1_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = megaconn()
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
}

#[test]
fn access_log_writes_one_json_line_per_request() {
    let (mut child, _stdout, addr) =
        start_serve(&["--admin", "off", "--access-log", "--log-format", "json"]);
    assert!(get_once(&addr, "/healthz").ends_with("ok"));
    sigterm(&child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let line = stderr
        .lines()
        .find(|l| l.contains("megaconn::access"))
        .unwrap_or_else(|| panic!("no access line in {stderr}"));
    assert!(line.contains("\"path\":\"/healthz\""), "{line}");
    assert!(line.contains("\"status\":200"), "{line}");
    assert!(line.contains("\"method\":\"GET\""), "{line}");
    assert!(line.contains("\"peer\":\"127.0.0.1:"), "{line}");
}
