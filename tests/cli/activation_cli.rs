//! Socket activation as systemd does it: `LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES` and listening sockets from fd 3. `megaconn serve` serves
//! the sockets it is handed (and binds no default address then); a passed
//! descriptor that is not a listening TCP socket is refused clearly.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ChildGuard;

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

/// `megaconn serve` through `sh`, with `fd` as fd 3 and the variables
/// systemd would set (`LISTEN_PID` is the shell's pid, which `exec` keeps).
fn serve_with_fd3(fd: i32, names: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={names} exec \"$0\" serve --admin off"),
        BIN,
    ])
    .stdin(Stdio::null());
    // SAFETY: dup2 and fcntl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    cmd
}

/// One GET on a fresh connection to `addr` (bounded); the response text.
fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn an_inherited_listener_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = serve_with_fd3(listener.as_raw_fd(), "web");
    let _server = ChildGuard::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()));
    // The kernel queues the connection on the passed socket until the
    // server accepts it: no need to wait for start-up.
    let response = get(addr);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("Hello, World!"), "{response}");
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_an_error() {
    let file = tempfile::tempfile().unwrap();
    let out: Output = serve_with_fd3(file.as_raw_fd(), "web").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a socket"), "{err}");
}

#[test]
fn variables_meant_for_another_process_are_ignored() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--admin",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "0",
        ])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .output()
        .unwrap();
    // Past socket activation (not for this process) to the knob error.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("workers must be at least 1"), "{err}");
}

#[test]
fn under_systemd_socket_activate() {
    let Some(tool) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        eprintln!("systemd-socket-activate not installed: skipped");
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(tool)
        .args([
            "-l",
            &listen,
            "--fdname=http",
            BIN,
            "serve",
            "--admin",
            "off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ChildGuard::adopt(child);
    // It starts the service on the first connection, which megaconn serves.
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                panic!("systemd-socket-activate never listened: {e}")
            }
            // Not a synchronisation sleep: systemd-socket-activate binds
            // after it starts and offers no signal for it.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let response = get(addr);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
