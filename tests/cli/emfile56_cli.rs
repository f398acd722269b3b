//! An accept out of file descriptors names who holds them: the server's
//! connections and listening sockets, and the others, which
//! `max_connections` does not know of (a reverse proxy's upstream pool, a
//! handler's files), with by how much to lower it.
//!
//! Session 55's proxy review: at 19,000 clients a proxy's upstream pool
//! held ~1,950 sockets, accepts failed with `EMFILE` below the default
//! `max_connections` (the open-file limit less 256), and the line said
//! only "raise the open-file limit or lower max_connections". Here the
//! server process (its open-file limit lowered, for it only) inherits
//! [`OTHERS`] open descriptors that are none of its connections, as an
//! application's would be, and a flood runs it out.

use crate::common::Serving;

use std::net::TcpStream;
use std::process::Command;

/// The server process's open-file limit.
const FILES: u64 = 128;

/// Descriptors the server process inherits open (`/dev/null`), standing
/// for an application's upstream sockets and files.
const OTHERS: usize = 40;

/// The runtime's own descriptors and the process's standard ones, beside
/// [`OTHERS`], at most (measured 9-12 with one worker: epoll sets, event
/// and timer descriptors, stdin/out/err).
const RUNTIMES: usize = 30;

#[test]
fn the_emfile_line_counts_the_descriptors_that_are_not_the_servers() {
    let serving = serve_holding_others(&["--max-connections", "100000"]);
    let main = serving.addr("http");

    // More connections than the process has descriptors (the kernel queues
    // what is not accepted).
    let flood: Vec<TcpStream> = (0..FILES + 32)
        .map(|_| TcpStream::connect(&main).unwrap())
        .collect();
    let line = serving.wait_for_log("accept failed; backing off (out of file descriptors)");
    let open = number_before(&line, " descriptors open");
    let ours = number_before(&line, " of them this server's connections");
    let others = number_before(&line, " others (the application's");
    assert_eq!(open, ours + others, "{line}");
    assert!(open <= FILES as usize, "{line}");
    assert!(
        (OTHERS..OTHERS + RUNTIMES).contains(&others),
        "{OTHERS} inherited descriptors, counted as {others} others: {line}"
    );
    assert!(
        line.contains(&format!("lower max_connections by {others} or raise")),
        "{line}"
    );
    assert!(line.contains("ulimit -n"), "{line}");
    drop(flood);
}

/// `serve ARGS…` (one worker, no admin listener) under an open-file limit
/// of [`FILES`], holding [`OTHERS`] descriptors open (`/dev/null`) that it
/// inherits. Through `bash`, which sets the limit, opens them and then
/// execs the server: opened between the test's fork and exec instead, they
/// found every number below the limit taken by the test process's own
/// descriptors (closed only at the exec), and failed with `EMFILE`.
fn serve_holding_others(args: &[&str]) -> Serving {
    let serve = Serving::serve_command("off", args);
    let script = format!(
        "ulimit -n {FILES} || exit 1; \
         for _ in $(seq {OTHERS}); do exec {{fd}}</dev/null || exit 1; done; \
         exec \"$0\" \"$@\""
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg(serve.get_program())
        .args(serve.get_args());
    Serving::spawn(&mut cmd)
}

/// The number right before `text` in `line`.
fn number_before(line: &str, text: &str) -> usize {
    let before = &line[..line
        .find(text)
        .unwrap_or_else(|| panic!("no {text:?} in {line}"))];
    let digits = before.len() - before.bytes().rev().take_while(u8::is_ascii_digit).count();
    before[digits..]
        .parse()
        .unwrap_or_else(|e| panic!("no number before {text:?} in {line}: {e}"))
}
