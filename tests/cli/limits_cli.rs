//! `megaconn serve`'s limits at the command line's edge: a client's abuse
//! that must not write the log at will (HTTP/2 rapid reset, which the `h2`
//! crate logs itself, once per connection), and limit values the CLI
//! refuses with a message naming the flag or key and what to do.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_to_exit, ChildGuard, Lines};

/// Upper bound for any single wait: reached only when a test fails.
const SAFETY: Duration = Duration::from_secs(30);

fn megaconn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megaconn"))
}

/// An HTTP/2 frame: its 9-byte header, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One rapid-reset connection (CVE-2023-44487): the preface, then 40
/// requests each reset at once (`HEADERS` with `END_STREAM`, then
/// `RST_STREAM(CANCEL)`), in one write; reads until the server closes
/// (it sends `GOAWAY(ENHANCE_YOUR_CALM)` past 20 such resets).
fn rapid_reset(addr: &str) {
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    const CANCEL: u32 = 8;
    // HPACK, static table: GET, http, /, and `:authority: t` (literal,
    // indexed name).
    const BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b't'];
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..40 {
        let stream = 2 * i + 1;
        out.extend(frame(HEADERS, END_STREAM_AND_HEADERS, stream, BLOCK));
        out.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SAFETY)).unwrap();
    s.write_all(&out).unwrap();
    // To the server's close (a reset after its GOAWAY is a close too).
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// Runs `serve` (one worker, no admin) with `rust_log` as `RUST_LOG` (none:
/// unset), sends `connections` rapid-reset connections, stops it and
/// returns its log (stderr) lines.
fn log_under_rapid_reset(rust_log: Option<&str>, connections: usize) -> Vec<String> {
    let mut cmd = crate::common::Serving::serve_command("off", &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    match rust_log {
        Some(filter) => cmd.env("RUST_LOG", filter),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = ChildGuard::spawn(&mut cmd);
    let stdout = Lines::new(child.child().stdout.take().unwrap());
    let banner = stdout.expect_line();
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .trim_end_matches(',')
        .to_string();
    for _ in 0..connections {
        rapid_reset(&addr);
    }
    // Every connection was closed by the server, so its lines were written;
    // the process's end ends its log.
    child.signal(libc::SIGTERM);
    let (status, _, stderr) = child.wait_with_output();
    assert_eq!(status.code(), Some(0), "{stderr}");
    stderr.lines().map(str::to_string).collect()
}

/// Thirty rapid-reset connections log one line (megaconn's own, limited to
/// one per 5 s per worker), not one per connection: the `h2` crate's own
/// WARN per connection ("remotely-reset pending-accept streams reached
/// limit") is filtered out by default; a `RUST_LOG` still brings it back.
/// Before, 30 connections wrote 30 of h2's lines.
#[test]
fn a_rapid_reset_flood_writes_one_line_not_one_per_connection() {
    let lines = log_under_rapid_reset(None, 30);
    let h2_lines = lines.iter().filter(|l| l.contains("h2::")).count();
    let calm = lines
        .iter()
        .filter(|l| l.contains("ENHANCE_YOUR_CALM"))
        .count();
    assert_eq!(h2_lines, 0, "{lines:#?}");
    assert!((1..=2).contains(&calm), "{lines:#?}");
    assert!(lines.len() <= 4, "{lines:#?}");
    // The filter is a default: RUST_LOG=info shows h2's lines again.
    let lines = log_under_rapid_reset(Some("info"), 2);
    let h2_lines = lines.iter().filter(|l| l.contains("h2::")).count();
    assert_eq!(h2_lines, 2, "{lines:#?}");
}

/// `megaconn serve ARGS…` (no admin listener) exits 2; returns its stderr.
fn refused(args: &[&str]) -> String {
    let (status, err) = run_to_exit(megaconn().args(["serve", "--admin", "off"]).args(args));
    assert_eq!(status.code(), Some(2), "{args:?}: {err}");
    err
}

/// `--FLAG VALUE`, then `FLAG_KEY = VALUE` in a config file, exits 2 with
/// an error that starts with where the value came from, then `error`.
fn refused_by_flag_and_key(flag: &str, value: &str, error: &str) {
    let err = refused(&[&format!("--{flag}"), value]);
    assert!(err.contains(&format!("--{flag}: {error}")), "{err}");
    let key = flag.replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("megaconn.toml");
    std::fs::write(&path, format!("{key} = {value}\n")).unwrap();
    let err = refused(&["--config", path.to_str().unwrap()]);
    // "key `KEY` in config file PATH: ERROR" (the file named since session 47).
    let named = format!("key `{key}` in config file {}: {error}", path.display());
    assert!(err.contains(&named), "{err}");
}

/// `--max-connections-per-ip 0` (and `max_connections_per_ip = 0`) is
/// refused, saying how to have no limit: the library takes 0 as 1, so it
/// used to serve one connection per IP in silence.
#[test]
fn max_connections_per_ip_0_is_refused_saying_what_to_do() {
    refused_by_flag_and_key(
        "max-connections-per-ip",
        "0",
        "must be at least 1 (leave it out for no per-IP limit)",
    );
}

/// A value a setting cannot hold names the flag or the key it was given
/// as; it used to say only `5000000000 is too large`.
#[test]
fn a_value_too_large_names_its_flag_or_key() {
    refused_by_flag_and_key(
        "max-connections-per-ip",
        "5000000000",
        "5000000000 is too large",
    );
}
