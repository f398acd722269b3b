//! `serve --check` catching what a start would hit at its binds (session
//! 49's notes): an admin address that is also a listen address (refused by
//! the check and the start alike; the start used to fail, or under
//! `--processes` to share the port between the admin server and the
//! workers), and an address in use: by another program (refused), or by a
//! running megaconn of this user (expected: the server a reload keeps and
//! an upgrade takes over; noted, and left serving).

use crate::common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use crate::ops48_cli::{check, get};
use common::{ReservedPort, Serving};

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

/// An admin address that is a listen address, or one a wildcard listen
/// address covers, fails the check (exit 1) and the start (exit 2) with one
/// message that says what to do. A start used to go ahead: one process
/// failed at the admin listener's bind after the main one's; a supervisor
/// (`--processes`) served, its admin listener and its worker processes'
/// listeners sharing the port (SO_REUSEPORT), so the kernel sent part of
/// the listen address's connections to the admin server.
#[test]
fn an_admin_address_that_is_a_listen_address_is_refused() {
    let port = ReservedPort::new();
    let addr = port.addr.as_str();
    let (code, stdout, stderr) = check(&["--listen", addr, "--admin", addr]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for said in [
        format!("the admin address {addr} (--admin)"),
        format!("listens on (http://{addr})"),
        "another port".to_owned(),
    ] {
        assert!(stderr.contains(&said), "{said:?} not in {stderr}");
    }
    assert!(!stdout.contains("configuration OK"), "{stdout}");
    // A wildcard listen address covers the loopback admin address.
    let wildcard = addr.replace("127.0.0.1", "0.0.0.0");
    let (code, _, stderr) = check(&["--listen", &wildcard, "--admin", addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the admin address"), "{stderr}");
    // The start refuses it as the check does, before anything is bound
    // (it used to serve, sharing the port).
    let (status, start_stderr) = common::run_to_exit(
        Command::new(BIN)
            .args(["serve", "--listen", addr, "--admin", addr])
            .args(["--processes", "2", "--workers", "1"]),
    );
    assert_eq!(status.code(), Some(2), "{start_stderr}");
    assert!(
        start_stderr.contains(&format!("the admin address {addr} (--admin)")),
        "{start_stderr}"
    );
}

/// An address another program listens on (a listener that does not share
/// its port, as every megaconn listener does) fails the check, as it fails
/// the start, saying how to find the program: a listen address, and an
/// admin address given. The check used to say `configuration OK`.
#[test]
fn an_address_another_program_listens_on_fails_the_check() {
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let (addr, port) = (addr.to_string(), addr.port());
    let (code, stdout, stderr) = check(&["--listen", &addr, "--admin", "off"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for said in [
        format!("{addr}, a listen address, is in use by another program"),
        format!("ss -ltnp 'sport = :{port}'"),
    ] {
        assert!(stderr.contains(&said), "{said:?} not in {stderr}");
    }
    assert!(!stdout.contains("configuration OK"), "{stdout}");
    // A start fails on it.
    let (status, start_stderr) = common::run_to_exit(Command::new(BIN).args([
        "serve",
        "--listen",
        &addr,
        "--admin",
        "off",
        "--workers",
        "1",
    ]));
    assert_eq!(status.code(), Some(1), "{start_stderr}");
    assert!(start_stderr.contains("in use"), "{start_stderr}");
    // The admin address given: named as such.
    let free = ReservedPort::new();
    let (code, _, stderr) = check(&["--listen", &free.addr, "--admin", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{addr}, the admin address (--admin), is in use")),
        "{stderr}"
    );
    // The other program's listener is still its own, and still listening.
    let _client = TcpStream::connect(&addr).unwrap();
    other.accept().unwrap();
}

/// Beside a running megaconn of this user (what `systemctl reload` runs
/// the check beside, and `serve --upgrade` takes over from), the check
/// passes and says whose the addresses are: the listen and the admin
/// address alike. It never listens, so the server goes on serving every
/// connection.
#[test]
fn a_running_megaconn_s_addresses_pass_the_check_with_a_note() {
    let server = Serving::serve_admin("127.0.0.1:0", &["--workers", "2"]);
    let addr = server.addr("http");
    let admin = server.admin_addr();
    let (code, stdout, stderr) = check(&["--listen", &addr, "--admin", &admin]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    for said in [
        format!(
            "{addr}, a listen address, is held by a listener of this user that shares its port"
        ),
        format!("{admin}, the admin address (--admin), is held by"),
        "the running megaconn".to_owned(),
    ] {
        assert!(stderr.contains(&said), "{said:?} not in {stderr}");
    }
    for _ in 0..20 {
        assert_eq!(get(&addr, "/healthz"), "ok");
    }
    server.stop();
}
