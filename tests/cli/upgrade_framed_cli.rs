//! `megaconn serve --upgrade` with a framed listener (`--tcp-listen`, the
//! framed demo, whose handler opts in to moving): an idle device stays
//! connected across the upgrade, and the new process answers it with its
//! state (its subscription); the old process's hand-over line counts it
//! among what moved, not among what it drains.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{Serving, CHILD_SAFETY};

/// A framed demo client (lines).
struct Device(BufReader<TcpStream>);

impl Device {
    fn connect(addr: &str) -> Device {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
        Device(BufReader::new(s))
    }

    /// Sends `line`; the answer line.
    fn ask(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.line()
    }

    /// The next line, without its ending (empty at the end).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}

/// A device subscribed to `news` on the old process, awake (the demo's
/// connections park after 10 minutes here: it parks for the hand-over)
/// when a new process takes over: it is handed over (the old process's
/// line says 1 parked connection, and 0 framed ones left to its drain),
/// adopted (the new process's line says 1), and answered by the new
/// process, its subscription with it: a publish there reaches it. Before,
/// the demo's framed connections never moved (its handler did not opt
/// in), an awake one would not have either, and the old process's line
/// counted a framed connection that moved as one it drained.
#[test]
fn an_idle_framed_device_moves_with_its_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let flags = ["--park-after", "10m", "--upgrade-socket", socket];
    let old = Serving::serve(&[&["--tcp-listen", "127.0.0.1:0"][..], &flags[..]].concat());
    let (http, tcp) = (old.addr("http"), old.addr("tcp"));
    let mut device = Device::connect(&tcp);
    let old_pid = old.child.id();
    assert_eq!(device.ask("PID"), format!("pid {old_pid}"));
    assert_eq!(device.ask("SUB news"), "subscribed: news");
    let mut upgrade = Command::new(env!("CARGO_BIN_EXE_megaconn"));
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
        .args(["--tcp-listen", &tcp, "--upgrade"])
        .args(flags);
    let new = Serving::spawn(&mut upgrade);
    let done = loop {
        let line = common::message(&new.stdout.expect_line());
        if line.starts_with("megaconn upgrade done") {
            break line;
        }
    };
    assert!(
        done.contains(" and 1 parked connections in "),
        "the device was not adopted: {done}"
    );
    let Serving {
        mut child, stdout, ..
    } = old;
    assert!(child.wait().success(), "the old process failed");
    let handed = stdout
        .rest()
        .into_iter()
        .map(|l| common::message(&l))
        .find(|l| l.starts_with("megaconn handed over"))
        .expect("the old process handed over");
    assert!(
        handed.contains(
            " 1 parked connections; draining 0 connections (0 WebSocket/framed/SSE) that cannot move"
        ),
        "{handed}"
    );
    assert_eq!(device.ask("PID"), format!("pid {}", new.child.id()));
    let mut publisher = Device::connect(&tcp);
    assert_eq!(publisher.ask("PUB news extra!"), "published");
    assert_eq!(device.line(), "extra!", "its subscription moved with it");
    new.stop();
}
