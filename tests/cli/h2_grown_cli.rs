//! `megaconn serve`'s HTTP/2 grown-window knobs (session 52):
//! `--http2-max-grown-stream-window` past HTTP/2's largest window
//! (2^31 - 1) is refused, by `--check` as by a start, with the library's
//! message naming the setting and its bound, from the flag or the config
//! file; in range, both knobs (0 included) pass.

use std::process::Command;

use crate::ops48_cli::check;

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

/// Past 2^31 - 1, in a config file or a flag: exit 1 (`--check`), 2 (a
/// start, before it binds), naming the setting and the bound; before
/// session 52 there was no such knob.
#[test]
fn a_window_cap_past_http2_s_largest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("megaconn.toml");
    std::fs::write(&config, "http2_max_grown_stream_window = \"2GiB\"\n").unwrap();
    let config = config.to_str().unwrap();
    let base = ["--listen", "127.0.0.1:0", "--admin", "off"];
    for given in [
        vec!["--config", config],
        vec!["--http2-max-grown-stream-window", "8GiB"],
    ] {
        let args: Vec<&str> = base.iter().copied().chain(given).collect();
        let (code, stdout, stderr) = check(&args);
        assert_eq!(code, Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("http2_max_grown_stream_window must be at most 2147483647"),
            "{args:?}: {stderr}"
        );
        let (status, start_stderr) =
            crate::common::run_to_exit(Command::new(BIN).arg("serve").args(&args));
        assert_eq!(status.code(), Some(2), "{args:?}: {start_stderr}");
        assert_eq!(stderr, start_stderr, "{args:?}");
    }
    for given in [
        ["--http2-max-grown-stream-window", "0"],
        ["--http2-max-grown-stream-window", "2147483647"],
        ["--http2-grown-windows-budget", "0"],
        ["--http2-grown-windows-budget", "1GiB"],
    ] {
        let args: Vec<&str> = base.iter().copied().chain(given).collect();
        let (code, stdout, stderr) = check(&args);
        assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
    }
}
