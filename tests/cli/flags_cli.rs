//! `megaconn serve` flags and config keys as a user writes them, through the
//! real binary: the shared duration and size grammar (`30sec`, `16MiB`), every
//! config key named like its flag (`no_keep_alive`), and `load`/`hold` reading
//! durations the same way. Each test stops the servers it starts, pass or fail.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::Serving;

fn megaconn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_megaconn"))
}

/// Sends raw bytes, reads until the server closes; the whole response.
fn exchange(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn post(addr: &str, len: usize) -> String {
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.resize(req.len() + len, b'x');
    exchange(addr, &req)
}

#[test]
fn serve_takes_durations_and_sizes_in_the_shared_grammar() {
    let server = Serving::serve(&[
        "--idle-timeout",
        "30sec",
        "--read-header-timeout",
        "2500ms",
        "--shutdown-timeout",
        "1m",
        "--max-body-bytes",
        "1KiB",
        "--max-header-bytes",
        "16KiB",
    ]);
    assert!(post(&server.addr("http"), 1024).starts_with("HTTP/1.1 200"));
    let too_big = post(&server.addr("http"), 1025);
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
}

#[test]
fn config_keys_are_the_flag_names_with_underscores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("megaconn.toml");
    std::fs::write(
        &path,
        "no_keep_alive = true\nmax_body_bytes = \"1KiB\"\nidle_timeout = \"30sec\"\nshutdown_timeout = 5\nserver_header = \"flags-test\"\n",
    )
    .unwrap();
    let server = Serving::serve(&["--config", path.to_str().unwrap()]);
    // Keep-alive is off: the server closes after one response even when the
    // client asks to keep the connection.
    let response = exchange(
        &server.addr("http"),
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(response.matches("HTTP/1.1 200").count(), 1, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(response.contains("flags-test"), "{response}");
    assert!(post(&server.addr("http"), 1025).starts_with("HTTP/1.1 413"));
}

#[test]
fn a_bad_size_or_duration_exits_2_saying_how_to_write_it() {
    for (flag, value, hint) in [
        ("--max-body-bytes", "16 parsecs", "MiB"),
        ("--idle-timeout", "soon", "10s"),
        ("--workers", "0", "at least 1"),
    ] {
        let out = common::output(megaconn().args(["serve", "--admin", "off", flag, value]));
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(hint), "{flag} {value}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("megaconn.toml");
    std::fs::write(&path, "max_body_bytes = \"lots\"\n").unwrap();
    let out = common::output(megaconn().args(["serve", "--config", path.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_body_bytes") && err.contains("MiB"),
        "{err}"
    );
}

#[test]
fn serve_help_gives_each_flag_its_config_key_and_default() {
    let out = common::output(megaconn().args(["serve", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "--idle-timeout <DURATION>",
        "Default: 60s. Config file key: idle_timeout, e.g. idle_timeout = \"5m\"",
        "--max-body-bytes <SIZE>",
        "Config file key: no_keep_alive, e.g. no_keep_alive = true",
        "Config file key: listen, e.g. listen = [\"0.0.0.0:80\"]",
    ] {
        assert!(help.contains(needle), "serve --help lacks {needle:?}");
    }
}

#[test]
fn load_reads_durations_like_serve() {
    let server = Serving::serve(&[]);
    let out = common::output(
        megaconn()
            .args([
                "load",
                "-c",
                "1",
                "-t",
                "1",
                "-q",
                "--duration",
                "1sec",
                "--timeout",
                "5sec",
            ])
            .arg(format!("http://{}/", server.addr("http"))),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
