//! `megaconn serve --processes P`: a supervisor restarts a worker process that
//! dies, keeps the port answering, drains every worker on SIGTERM and reports
//! whole-server totals, live on its admin `/metrics` and in its summary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::{ChildGuard, Lines};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request on a fresh connection. Retries a reset: when a worker process
/// dies, the connections already queued on its `SO_REUSEPORT` listener are
/// reset by the kernel (new ones go to the live processes).
fn get(addr: &str, path: &str) -> String {
    let mut last = None;
    for _ in 0..5 {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(common::CHILD_SAFETY))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(out) if !out.is_empty() => return out,
            Ok(_) => last = Some("empty response".to_string()),
            Err(e) => last = Some(e.to_string()),
        }
    }
    panic!("no answer from {addr}: {last:?}");
}

/// A running supervisor (`serve --processes`). Dropped, it is killed and
/// reaped; its worker processes get SIGTERM when it dies (they ask the kernel
/// for that), so a failed test leaves nothing running.
struct Supervisor {
    child: ChildGuard,
    /// Its stdout, each line waited for with a bound.
    lines: Lines,
    addr: String,
    admin: String,
    worker_pids: Vec<i32>,
}

impl Supervisor {
    fn start(processes: usize) -> Supervisor {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = ChildGuard::spawn(
            Command::new(env!("CARGO_BIN_EXE_megaconn"))
                .args(["serve", "--listen", &addr, "--workers", "1", "--admin"])
                .args(["127.0.0.1:0", "--processes"])
                .arg(processes.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let lines = Lines::new(child.child().stdout.take().unwrap());
        let admin_line = lines.expect_line();
        let admin = admin_line
            .strip_prefix("megaconn admin on http://")
            .unwrap_or_else(|| panic!("no admin address: {admin_line}"))
            .to_string();
        let first = lines.expect_line();
        assert!(first.contains("worker processes"), "{first}");
        let worker_pids = (0..processes)
            .map(|i| {
                let line = lines.expect_line();
                assert!(
                    line.starts_with(&format!("worker process {i} pid ")),
                    "{line}"
                );
                line.rsplit(' ').next().unwrap().parse().unwrap()
            })
            .collect();
        Supervisor {
            child,
            lines,
            addr,
            admin,
            worker_pids,
        }
    }

    fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }
}

#[test]
fn a_killed_worker_process_is_restarted_and_the_port_keeps_answering() {
    let mut sup = Supervisor::start(2);
    assert!(get(&sup.addr, "/").ends_with("Hello, World!"));
    // SAFETY: kill(2) on a worker process the supervisor started for us.
    unsafe { libc::kill(sup.worker_pids[0], libc::SIGKILL) };
    // While it restarts, the other process answers.
    for _ in 0..5 {
        assert!(get(&sup.addr, "/healthz").ends_with("ok"));
    }
    let line = sup.lines.expect_line();
    assert!(
        line.starts_with("worker process 0 restarted pid "),
        "{line}"
    );
    for _ in 0..5 {
        assert!(get(&sup.addr, "/").ends_with("Hello, World!"));
    }
    sup.signal(libc::SIGTERM);
    let status = sup.child.wait();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_drains_every_worker_process_and_reports_totals() {
    let mut sup = Supervisor::start(3);
    for _ in 0..9 {
        assert!(get(&sup.addr, "/").ends_with("Hello, World!"));
    }
    sup.signal(libc::SIGTERM);
    let status = sup.child.wait();
    assert_eq!(status.code(), Some(0), "every worker exited 0");
    let rest = sup.lines.rest();
    let summary = rest.last().expect("a summary line");
    assert!(
        summary.contains("3 worker processes, 9 connections accepted, 9 requests"),
        "{summary}"
    );
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_supervisor_admin_serves_whole_server_totals() {
    let mut sup = Supervisor::start(3);
    // Keep-alive connections stay open, so they show as a gauge too.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(&sup.addr).unwrap();
        s.set_read_timeout(Some(common::CHILD_SAFETY)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].ends_with(b"Hello, World!"));
        held.push(s);
    }
    // Worker processes publish their counters a few times a second: poll the
    // totals (bounded) until all six requests show.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = get(&sup.admin, "/metrics");
        if metric(&text, "megaconn_requests_total") == Some(6.0)
            && metric(&text, "megaconn_connections_open") == Some(6.0)
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "totals never reached 6: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        metric(&text, "megaconn_connections_accepted_total"),
        Some(6.0)
    );
    let per_process = text
        .lines()
        .filter(|l| l.starts_with("megaconn_process_connections{"))
        .count();
    assert_eq!(per_process, 3, "{text}");
    drop(held);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.child.wait().code(), Some(0));
}
