//! Serving in two steps, as a new process of a zero-downtime upgrade does:
//! [`Server::start`] makes the workers, which accept nothing until
//! [`Started::run`](megaconn::Started::run); a [`Started`](megaconn::Started)
//! dropped unrun stops them with nothing accepted.

use crate::common;

use common::{read_response, test_app, SAFETY};
use megaconn::{Server, Started};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server of 2 workers started, not run, and a connection that sent it
/// a request meanwhile.
async fn started_with_a_request_waiting() -> (Started, TcpStream) {
    let (app, _probe) = test_app();
    let server = Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .listen()
        .unwrap();
    let addr = server.local_addr();
    let started = server.start(app).unwrap();
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    (started, waiting)
}

/// A started server dropped unrun stops its workers, which close their
/// listening sockets, and closes its handle's copies too, even with a
/// [`ServerHandle`](megaconn::ServerHandle) kept (as an upgrading process
/// keeps one): a connection waiting in the queue is reset, not answered,
/// nor left waiting in a socket nobody accepts on. (That no worker
/// accepts before the run is shown across processes, where a test can hold
/// a new process between the two steps:
/// `a_new_process_that_fails_before_ready_takes_no_connection` in
/// `tests/cli/upgrade_cli.rs`.)
#[tokio::test]
async fn a_started_server_dropped_unrun_stops_unserved() {
    let (started, mut waiting) = started_with_a_request_waiting().await;
    let _kept = started.handle();
    drop(started);
    let mut buf = [0; 256];
    let read = tokio::time::timeout(SAFETY, waiting.read(&mut buf))
        .await
        .expect("the queued connection ends once the workers stop");
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "not reset: {read:?} {:?}",
        read.as_ref().map(|&n| String::from_utf8_lossy(&buf[..n]))
    );
}

/// A connection that came between start and run is served once the
/// server runs; the summary counts it.
#[tokio::test]
async fn a_started_server_serves_what_waited_once_run() {
    let (started, mut waiting) = started_with_a_request_waiting().await;
    let handle = started.handle();
    let running = tokio::spawn(started.run());
    assert_eq!(read_response(&mut waiting).await.status, 200);
    handle.shutdown();
    let summary = tokio::time::timeout(SAFETY, running)
        .await
        .expect("the server stops")
        .unwrap();
    assert_eq!((summary.accepted, summary.requests), (1, 1));
}
