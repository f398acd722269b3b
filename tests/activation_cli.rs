//! Socket activation as systemd does it: `LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES` and listening sockets from fd 3. `megaconn serve` cannot
//! serve inherited sockets yet (the library has no API for them), so it must
//! notice them and refuse clearly (exit 2, naming the sockets), instead of
//! ignoring them and binding the port a second time.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_megaconn");

/// Runs `megaconn serve` through `sh`, with `fd` as fd 3 and the variables
/// systemd would set (`LISTEN_PID` is the shell's pid, which `exec` keeps).
fn serve_with_fd3(fd: i32, names: &str) -> Output {
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
    cmd.output().unwrap()
}

#[test]
fn an_inherited_listener_is_found_and_refused_clearly() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = serve_with_fd3(listener.as_raw_fd(), "web");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("web on {addr}")), "{err}");
    assert!(
        err.contains("socket activation is not supported yet"),
        "{err}"
    );
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_an_error() {
    let file = tempfile::tempfile().unwrap();
    let out = serve_with_fd3(file.as_raw_fd(), "web");
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
    let mut child = Command::new(tool)
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
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It starts the service on the first connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    let _conn = loop {
        match std::net::TcpStream::connect(&listen) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("systemd-socket-activate never listened: {e}");
            }
        }
    };
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("megaconn did not exit under systemd-socket-activate");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("http on {listen}")), "{err}");
}
