//! Serving in two steps, as a new process of a zero-downtime upgrade does:
//! [`Server::start`] makes the workers, which accept nothing until
//! [`Started::run`](megaconn::Started::run); a [`Started`](megaconn::Started)
//! dropped unrun stops them with nothing accepted. On a port shared with
//! other processes, the sockets listen only once started. (A start that
//! fails, across processes: `tests/cli`, `upgrade_cli.rs` and
//! `processes.rs`.)

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
    (started, request_waiting(addr).await)
}

/// A connection to `addr` that sent a request, its answer not read.
async fn request_waiting(addr: std::net::SocketAddr) -> TcpStream {
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    waiting
}

/// Runs `started`: `waiting`'s request, its only one, is answered, and
/// once the server stops its summary counts it.
async fn runs_and_answers(started: Started, mut waiting: TcpStream) {
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
    let (started, waiting) = started_with_a_request_waiting().await;
    runs_and_answers(started, waiting).await;
}

/// A server on a port shared with other processes
/// ([`Builder::reuse_port_shared`](megaconn::Builder::reuse_port_shared),
/// as a supervisor's worker processes are) listens only once started:
/// before, a connection is refused, not queued for a start that may yet
/// fail (another process of the port would have served it); started, not
/// run, it is queued and served once the server runs. It used to listen
/// at `listen`, and took its share of the port's connections from then.
#[tokio::test]
async fn a_server_on_a_shared_port_listens_only_once_started() {
    let (app, _probe) = test_app();
    let server = Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .reuse_port_shared(true)
        .listen()
        .unwrap();
    let addr = server.local_addr();
    let refused = TcpStream::connect(addr).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "a connection before the start: {refused:?}"
    );
    let started = server.start(app).unwrap();
    let waiting = request_waiting(addr).await;
    runs_and_answers(started, waiting).await;
}

/// A worker whose thread ended during the start (it panicked setting up,
/// here as a test asks) fails the start, naming it and where to look. The
/// start used to succeed: the worker's listening socket stayed in the
/// port's `SO_REUSEPORT` group with nobody to accept its share of the
/// connections.
#[tokio::test]
async fn a_worker_that_panicked_during_the_start_fails_it() {
    let (app, _probe) = test_app();
    let server = Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .reuse_port_shared(true)
        .fail_worker_start_for_test(megaconn::WorkerStartFailure::Panic, 1)
        .listen()
        .unwrap();
    let failed = server.start(app).map(|_| ());
    assert!(
        matches!(failed, Err(megaconn::Error::WorkerEnded { worker: 1 })),
        "{failed:?}"
    );
    let said = failed.unwrap_err().to_string();
    assert!(said.contains("panicked: see the log"), "{said}");
}
