//! The admin listener while the main server is out of file descriptors: a
//! flood of connections past the open-file limit (lowered for the server's
//! process only) still lets `/metrics` answer, and it shows the flood, in
//! the `EMFILE` accept errors, which the log reports too.

use crate::common::Serving;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The server process's open-file limit.
const FILES: u64 = 128;

/// Before, the main listeners' accepts took every descriptor up to the
/// limit, and the admin listener's failed with `EMFILE` too: `/metrics`
/// went unanswered for as long as the flood held them.
#[test]
fn metrics_answer_while_the_main_listeners_are_out_of_descriptors() {
    // A limit far past the descriptors, as an operator who raised
    // max_connections but not the open-file limit has it.
    let mut cmd = Serving::serve_command("127.0.0.1:0", &["--max-connections", "100000"]);
    Serving::limit_open_files(&mut cmd, FILES);
    let serving = Serving::spawn(&mut cmd);
    let admin = serving.admin_addr();
    let main = serving.addr("http");

    // More connections than the process has descriptors (the kernel queues
    // what is not accepted).
    let flood: Vec<TcpStream> = (0..FILES + 32)
        .map(|_| TcpStream::connect(&main).unwrap())
        .collect();
    let line = serving.wait_for_log("accept failed; backing off");
    assert!(line.contains("Too many open files"), "{line}");

    let answer = get(&admin, "/metrics", "while out of descriptors");
    let emfile: u64 = answer
        .lines()
        .find_map(|l| l.strip_prefix(r#"megaconn_accept_errors_total{errno="EMFILE"} "#))
        .unwrap_or_else(|| panic!("no EMFILE accept errors in {answer}"))
        .trim()
        .parse()
        .unwrap();
    assert!(emfile >= 1, "{answer}");
    drop(flood);
}

/// Under a small open-file limit the reserve shrinks to a quarter of what
/// is free: at `ulimit -n 40` a whole reserve of 32 lay below the
/// descriptors the server already had open, and every connection was
/// closed as it was accepted.
#[test]
fn a_small_open_file_limit_still_serves() {
    let mut cmd = Serving::serve_command("127.0.0.1:0", &[]);
    Serving::limit_open_files(&mut cmd, 40);
    let serving = Serving::spawn(&mut cmd);
    let main = serving.addr("http");
    get(&main, "/", "under a limit of 40 files");
}

/// `GET path` on a connection of its own to `addr`: the whole answer, a
/// `200` (`when` says when, if none comes within 10 s or it is another).
fn get(addr: &str, path: &str, when: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    if let Err(e) = s.read_to_string(&mut answer) {
        panic!("no answer to {path} {when} ({e}): {answer:?}");
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{when}: {answer}");
    answer
}
