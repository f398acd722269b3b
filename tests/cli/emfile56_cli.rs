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
    let mut cmd = Serving::serve_command("off", &["--max-connections", "100000"]);
    Serving::limit_open_files(&mut cmd, FILES);
    inherit_open_descriptors(&mut cmd, OTHERS);
    let serving = Serving::spawn(&mut cmd);
    let main = serving.addr("http");

    // More connections than the process has descriptors (the kernel queues
    // what is not accepted).
    let flood: Vec<TcpStream> = (0..FILES + 32)
        .map(|_| TcpStream::connect(&main).unwrap())
        .collect();
    let line = serving.wait_for_log("accept failed, out of file descriptors");
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

/// Has the process `cmd` starts open `n` descriptors (`/dev/null`, not
/// closed at its `exec`) before it runs, after its limits are set.
fn inherit_open_descriptors(cmd: &mut Command, n: usize) {
    // SAFETY: open(2) only, between fork and exec; the path is made
    // before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            for _ in 0..n {
                if libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The number right before `text` in `line`.
fn number_before(line: &str, text: &str) -> usize {
    let before = &line[..line
        .find(text)
        .unwrap_or_else(|| panic!("no {text:?} in {line}"))];
    let digits = before.len()
        - before
            .bytes()
            .rev()
            .take_while(u8::is_ascii_digit)
            .count();
    before[digits..]
        .parse()
        .unwrap_or_else(|e| panic!("no number before {text:?} in {line}: {e}"))
}
