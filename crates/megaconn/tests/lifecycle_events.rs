//! Connection lifecycle events: every close reason comes from a real scenario,
//! each connection is reported opened once and closed exactly once, with its
//! request and byte counts.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use common::{read_response, read_to_close, TestServer, SAFETY};
use megaconn::{CloseReason, ConnectionEvent};
use tokio::io::AsyncWriteExt;

struct Events {
    rx: mpsc::Receiver<ConnectionEvent>,
    open: HashMap<u64, bool>,
}

impl Events {
    /// Waits for the next close and checks it pairs with an open.
    async fn next_close(&mut self) -> (CloseReason, u64, u64, u64) {
        loop {
            let rx = &self.rx;
            let event = tokio::task::block_in_place(|| rx.recv_timeout(SAFETY)).expect("an event");
            match event {
                ConnectionEvent::Opened { id, .. } => {
                    assert!(self.open.insert(id, true).is_none(), "opened twice");
                }
                ConnectionEvent::Closed {
                    id,
                    reason,
                    requests,
                    bytes_in,
                    bytes_out,
                    ..
                } => {
                    assert_eq!(
                        self.open.remove(&id),
                        Some(true),
                        "closed without open, or twice"
                    );
                    return (reason, requests, bytes_in, bytes_out);
                }
                _ => {}
            }
        }
    }
}

fn hooked(builder: megaconn::Builder) -> (megaconn::Builder, Events) {
    let (tx, rx) = mpsc::channel();
    let builder = builder.on_connection(move |e| {
        let _ = tx.send(e.clone());
    });
    (
        builder,
        Events {
            rx,
            open: HashMap::new(),
        },
    )
}

async fn get(s: &mut tokio::net::TcpStream, extra: &str) {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_close_reason_is_reported_once() {
    let (builder, mut events) = hooked(
        megaconn::Server::builder()
            .workers(1)
            .park_idle_after(None)
            // Long enough that a slow machine never trips them mid-scenario.
            .idle_timeout(Some(Duration::from_secs(1)))
            .read_header_timeout(Some(Duration::from_secs(1)))
            .read_timeout(Some(Duration::from_secs(1)))
            .write_timeout(Some(Duration::from_secs(1))),
    );
    let server = TestServer::start(builder).await;

    // Client closed, after two requests.
    let mut s = server.connect().await;
    for _ in 0..2 {
        get(&mut s, "").await;
        read_response(&mut s).await;
    }
    drop(s);
    let (reason, requests, bytes_in, bytes_out) = events.next_close().await;
    assert_eq!(reason, CloseReason::ClientClosed);
    assert_eq!(requests, 2);
    assert_eq!(
        bytes_in,
        2 * "GET / HTTP/1.1\r\nHost: t\r\n\r\n".len() as u64
    );
    assert!(bytes_out > 2 * 13);

    // Server closed (Connection: close).
    let mut s = server.connect().await;
    get(&mut s, "Connection: close\r\n").await;
    read_to_close(&mut s).await;
    assert_eq!(events.next_close().await.0, CloseReason::ServerClosed);

    // Idle timeout.
    let mut s = server.connect().await;
    get(&mut s, "").await;
    read_response(&mut s).await;
    assert_eq!(events.next_close().await.0, CloseReason::IdleTimeout);

    // Header timeout.
    let mut s = server.connect().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
    assert_eq!(events.next_close().await.0, CloseReason::HeaderTimeout);
    drop(s);

    // Protocol error.
    let mut s = server.connect().await;
    s.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    read_to_close(&mut s).await;
    drop(s);
    assert_eq!(
        events.next_close().await.0,
        CloseReason::Protocol(megaconn::ProtocolDetail::Status(
            http::StatusCode::BAD_REQUEST
        ))
    );

    // Panic.
    let mut s = server.connect().await;
    s.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_to_close(&mut s).await;
    assert_eq!(events.next_close().await.0, CloseReason::Panic);

    // Read timeout: a body that stops arriving.
    let mut s = server.connect().await;
    s.write_all(b"POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    assert_eq!(events.next_close().await.0, CloseReason::ReadTimeout);
    drop(s);

    // Write timeout: a response body that never ends.
    let mut s = server.connect().await;
    s.write_all(b"GET /forever-body HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(events.next_close().await.0, CloseReason::WriteTimeout);
    drop(s);

    // Unread body: the client waits for 100-continue that never comes.
    let mut s = server.connect().await;
    s.write_all(
        b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    read_to_close(&mut s).await;
    drop(s);
    assert_eq!(events.next_close().await.0, CloseReason::UnreadBody);

    // Server error: the response body fails mid-stream.
    let mut s = server.connect().await;
    s.write_all(b"GET /failing-body HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_to_close(&mut s).await;
    drop(s);
    assert_eq!(events.next_close().await.0, CloseReason::ServerError);

    // I/O error: the client resets an idle connection.
    let mut s = server.connect().await;
    get(&mut s, "").await;
    read_response(&mut s).await;
    s.set_zero_linger().unwrap();
    drop(s);
    assert_eq!(
        events.next_close().await.0,
        CloseReason::Io(std::io::ErrorKind::ConnectionReset)
    );

    // Upgrade.
    let mut s = server.connect().await;
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s).await.status, 101);
    // An upgraded connection stays open (and counted) until it really
    // closes: here the client hangs up and the echo handler sees EOF.
    drop(s);
    assert_eq!(events.next_close().await.0, CloseReason::ClientClosed);

    server.stop().await;
    assert!(events.open.is_empty(), "every open connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_parking_and_shutdown_are_reported() {
    let (builder, mut events) = hooked(
        megaconn::Server::builder()
            .workers(1)
            .max_connections_per_ip(Some(1))
            .park_idle_after(Some(Duration::from_millis(20)))
            // The refusal below must happen while the first connection is parked.
            .idle_timeout(Some(Duration::from_secs(2))),
    );
    let server = TestServer::start(builder).await;

    // A parked connection holds the IP's only place: a second is refused.
    let mut first = server.connect().await;
    get(&mut first, "").await;
    read_response(&mut first).await;
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    let mut second = server.connect().await;
    assert!(read_to_close(&mut second).await.is_empty());
    assert_eq!(events.next_close().await.0, CloseReason::Limit);

    // The parked connection times out in the sweep, its count intact.
    let (reason, requests, ..) = events.next_close().await;
    assert_eq!(reason, CloseReason::IdleTimeout);
    assert_eq!(requests, 1);
    drop(first);

    // An idle connection at shutdown.
    let mut third = server.connect().await;
    get(&mut third, "").await;
    read_response(&mut third).await;
    server.stop().await;
    assert_eq!(events.next_close().await.0, CloseReason::Shutdown);
    assert!(events.open.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connections_are_listed_with_their_state() {
    let mut server = TestServer::start(
        megaconn::Server::builder()
            .workers(2)
            .track_connections(true)
            .park_idle_after(None),
    )
    .await;
    assert!(server.handle.tracks_connections());
    // One idle after two requests, one inside a handler.
    let mut idle = server.connect().await;
    for _ in 0..2 {
        get(&mut idle, "").await;
        read_response(&mut idle).await;
    }
    let mut busy = server.connect().await;
    busy.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        server.probe.next_event().await,
        common::Event::Started("/wait".into())
    );
    server
        .wait_stats("one idle", |s| s.connections_idle == 1)
        .await;

    let (total, list) = server.handle.connections(0, 10);
    assert_eq!(total, 2);
    let mut states: Vec<_> = list.iter().map(|c| (c.state, c.requests)).collect();
    states.sort_by_key(|(s, _)| s.label());
    assert_eq!(
        states,
        vec![
            (megaconn::ConnectionState::Handling, 1),
            (megaconn::ConnectionState::Idle, 2)
        ]
    );
    // Pages are bounded.
    let (total, page) = server.handle.connections(1, 10);
    assert_eq!((total, page.len()), (2, 1));

    server.probe.release.notify_one();
    read_response(&mut busy).await;
    drop((idle, busy));
    server
        .wait_stats("closed", |s| s.connections_open == 0)
        .await;
    assert_eq!(server.handle.connections(0, 10).0, 0);
    server.stop().await;
}
