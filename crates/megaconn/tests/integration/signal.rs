//! [`megaconn::shutdown_signal`]: a server waiting on it drains on SIGTERM
//! (what systemd, Docker and Kubernetes stop a process with) and exits 0.
//! A signal goes to a whole process, so the server runs in a child: this
//! test binary again, running [`serve_until_shutdown_signal`] alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::common::SAFETY;

/// The child prints these, each at the start of a line of its own.
const LISTENING: &str = "signal-child listening on ";
const IN_HANDLER: &str = "signal-child: a request in its handler";
const SUMMARY: &str = "signal-child stopped: ";

/// The child process; dropping it (a failed assertion) kills and reaps it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server run in the child (skipped unless the parent asks for it):
/// one handler that answers only once the drain began, so the response
/// shows the drain happened, then the shutdown summary on stdout.
#[tokio::test]
#[ignore = "run by a_sigterm_drains_the_server_and_it_exits_0 in a child process"]
async fn serve_until_shutdown_signal() {
    if std::env::var_os("MEGACONN_SIGNAL_CHILD").is_none() {
        return;
    }
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .shutdown_timeout(SAFETY)
        .listen()
        .unwrap();
    let shutdown = megaconn::shutdown_signal().unwrap();
    println!("\n{LISTENING}{}", server.local_addr());
    let app = tower::service_fn(|_: http::Request<megaconn::Body>| async {
        let draining = megaconn::Draining::current().expect("served on a megaconn worker");
        println!("\n{IN_HANDLER}");
        draining.started().await;
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"answered in the drain"),
        )))
    });
    let summary = server.serve_with_shutdown(app, shutdown).await.unwrap();
    println!(
        "\n{SUMMARY}requests={} forced={}",
        summary.requests, summary.forced
    );
}

/// SIGTERM during a request: the server stops accepting, the request gets
/// its answer, and the process exits 0 with nothing forced. With
/// `tokio::signal::ctrl_c()` alone (what the examples waited on) SIGTERM
/// killed the process: no answer, killed by the signal.
#[test]
fn a_sigterm_drains_the_server_and_it_exits_0() {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "signal::serve_until_shutdown_signal",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("MEGACONN_SIGNAL_CHILD", "1")
    .stdout(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("the test binary runs"));
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let line_starting = |prefix: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(SAFETY)
                .unwrap_or_else(|_| panic!("the child printed no line starting {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    };
    let addr = line_starting(LISTENING);

    let mut client = TcpStream::connect(&addr).unwrap();
    client.set_read_timeout(Some(SAFETY)).unwrap();
    write!(client, "GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    line_starting(IN_HANDLER);
    // SAFETY: kill(2) on our own child, not reaped yet (the guard reaps it).
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);

    let mut response = String::new();
    client.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    assert!(response.ends_with("answered in the drain"), "{response:?}");
    assert_eq!(line_starting(SUMMARY), "requests=1 forced=0");
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
