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
    serve_with_fds(&[fd], names, &[])
}

/// `megaconn serve` with `fds` as fds 3, 4, … named `names` (`a:b`), and
/// `extra` arguments.
fn serve_with_fds(fds: &[i32], names: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={names} exec \"$0\" serve --admin off \"$@\"",
            fds.len()
        ),
        BIN,
    ])
    .args(extra)
    .stdin(Stdio::null());
    let fds = fds.to_vec();
    // Made here: between fork and exec nothing may allocate.
    let mut copies = vec![-1; fds.len()];
    // SAFETY: dup2, fcntl and close only, between fork and exec. Each passed
    // descriptor is first copied above every source and every target (at a
    // free number `F_DUPFD` picks), so that moving one into place cannot
    // overwrite another still to be moved: a fixed base could be one of the
    // sources, which are whatever numbers this test process had free.
    unsafe {
        cmd.pre_exec(move || {
            let above = fds
                .iter()
                .map(|&fd| fd + 1)
                .fold(3 + fds.len() as i32, i32::max);
            for (copy, &fd) in copies.iter_mut().zip(&fds) {
                *copy = libc::fcntl(fd, libc::F_DUPFD, above);
                if *copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &copy) in copies.iter().enumerate() {
                let i = i as i32;
                if libc::dup2(copy, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(copy);
                let flags = libc::fcntl(3 + i, libc::F_GETFD);
                libc::fcntl(3 + i, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
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

/// A socket named `http` is cleartext even with a certificate and no
/// socket named `https` (it was served over TLS then); a socket whose name
/// says nothing is TLS with the certificate, as a `--listen` address is.
#[test]
fn a_socket_named_http_is_cleartext_next_to_a_certificate() {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let (http_addr, web_addr) = (http.local_addr().unwrap(), web.local_addr().unwrap());
    let mut cmd = serve_with_fds(
        &[http.as_raw_fd(), web.as_raw_fd()],
        "http:web",
        &["--self-signed"],
    );
    let mut server = ChildGuard::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::null()));
    let banner = common::Lines::new(server.child().stdout.take().unwrap()).expect_line();
    assert!(banner.contains(&format!("http://{http_addr}")), "{banner}");
    assert!(banner.contains(&format!("https://{web_addr}")), "{banner}");
    let response = get(http_addr);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// A certificate that only `http…` sockets would carry serves nothing: a
/// usage error, not a silent cleartext server.
#[test]
fn a_certificate_with_only_http_sockets_is_refused() {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = serve_with_fds(&[http.as_raw_fd()], "http", &["--self-signed"]);
    let (status, _, err) =
        ChildGuard::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::piped())).wait_with_output();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("named http"), "{err}");
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_an_error() {
    let file = tempfile::tempfile().unwrap();
    let out: Output = common::output(&mut serve_with_fd3(file.as_raw_fd(), "web"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a socket"), "{err}");
}

#[test]
fn variables_meant_for_another_process_are_ignored() {
    let out = common::output(
        Command::new(BIN)
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
            .env("LISTEN_FDS", "1"),
    );
    // Past socket activation (not for this process) to the knob error.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--workers: must be at least 1"), "{err}");
}

/// Needs `systemd-socket-activate` (Debian's `systemd` package); where it is
/// missing the test says so on stderr and passes, unless
/// `MEGACONN_REQUIRE_ALL_TESTS=1` makes that a failure (`common::skip`).
#[test]
fn under_systemd_socket_activate() {
    let Some(tool) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        common::skip("under_systemd_socket_activate: systemd-socket-activate is not installed");
        return;
    };
    // Held until systemd-socket-activate listens on it.
    let port = common::ReservedPort::new();
    let listen = port.addr.clone();
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
            Ok(_) => {
                drop(port);
                break;
            }
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

/// A TLS address megaconn binds itself (`--tls-listen`) beside a socket
/// systemd passed is refused during every restart, where the passed one
/// queues: the server says so at start, naming the address (it said
/// nothing, and deploy/README.md promised no refusals).
#[test]
fn an_address_bound_beside_passed_sockets_is_warned_about() {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = serve_with_fds(
        &[http.as_raw_fd()],
        "http",
        &["--self-signed", "--tls-listen", "127.0.0.1:0"],
    );
    let serving = common::Serving::spawn(&mut cmd);
    let line = serving.wait_for_log("beside the sockets systemd passed");
    assert!(line.contains("127.0.0.1:0"), "{line}");
    serving.stop();
}
