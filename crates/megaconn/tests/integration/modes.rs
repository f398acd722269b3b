//! Lifecycle, limits, shutdown and parking in every mode of the matrix
//! (HTTP/1.1, HTTP/1.1 + TLS, h2c, HTTP/2 + TLS): what the connection core
//! promises holds whatever protocol a connection speaks.

use crate::common;

use std::time::Duration;

use common::modes::{hooked, Mode, ALL};
use common::{read_response, read_to_close};
use megaconn::CloseReason;
use tokio::io::AsyncWriteExt;

/// Whether `reason` is the close of a client that hung up. An HTTP/2 client
/// that ends its connection sends GOAWAY and closes the socket at once; the
/// server may be writing its own GOAWAY just then, and learns of the hang-up
/// as a broken pipe or a reset instead of an EOF.
fn client_left(mode: Mode, reason: CloseReason) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    match reason {
        CloseReason::ClientClosed => true,
        CloseReason::Io(BrokenPipe | ConnectionReset) => mode.http2(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_reports_its_requests_bytes_and_close() {
    for mode in ALL {
        let (builder, mut events) =
            hooked(megaconn::Server::builder().workers(1).connect_info(true));
        let s = mode.server(builder).await;
        let mut client = s.client().await;
        assert_eq!(
            client.get("/").await,
            (200, b"Hello, World!".to_vec()),
            "{mode:?}"
        );
        // axum's ConnectInfo<SocketAddr> and megaconn's ConnInfo, both.
        let peer = client.local_addr().to_string().into_bytes();
        assert_eq!(client.get("/peer").await, (200, peer), "{mode:?}");
        client.close().await;
        let closed = events.next_close().await;
        assert!(client_left(mode, closed.reason), "{mode:?}: {closed:?}");
        assert_eq!(closed.requests, 2, "{mode:?}");
        assert!(
            closed.bytes_in > 0 && closed.bytes_out > 0,
            "{mode:?}: {closed:?}"
        );
        s.server
            .wait_stats("closed", |st| st.connections_open == 0)
            .await;
        let st = s.server.handle.stats();
        assert_eq!((st.accepted, st.closed), (1, 1), "{mode:?}");
        s.server.stop().await;
        assert!(events.all_closed(), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_refuses_in_every_mode() {
    for mode in ALL {
        let (builder, mut events) = hooked(
            megaconn::Server::builder()
                .workers(1)
                .max_connections_per_ip(Some(1)),
        );
        let s = mode.server(builder).await;
        let mut first = s.client().await;
        assert_eq!(first.get("/").await.0, 200, "{mode:?}");
        // The refusal comes before any TLS or protocol bytes: a cleartext
        // listener answers 503 to an HTTP/1.1 client (an h2c one reads
        // a GOAWAY: the refusal waits, bounded, for its first bytes); a TLS one only closes, as
        // plaintext would be garbage to a client expecting a handshake.
        let mut second = s.server.connect().await;
        let answer = read_to_close(&mut second).await;
        if mode.tls() {
            assert!(answer.is_empty(), "{mode:?}: {answer:?}");
        } else {
            assert!(
                answer.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
                "{mode:?}: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        assert_eq!(
            events.next_close().await.reason,
            CloseReason::Limit,
            "{mode:?}"
        );
        assert_eq!(s.server.handle.stats().rejected_per_ip, 1, "{mode:?}");
        // The first still serves, and its place frees when it closes.
        assert_eq!(first.get("/").await.0, 200, "{mode:?}");
        first.close().await;
        let closed = events.next_close().await;
        assert!(client_left(mode, closed.reason), "{mode:?}: {closed:?}");
        let mut third = s.client().await;
        assert_eq!(third.get("/").await.0, 200, "{mode:?}");
        third.close().await;
        s.server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_in_every_mode() {
    for mode in ALL {
        let (builder, mut events) = hooked(megaconn::Server::builder().workers(1));
        let s = mode.server(builder).await;
        let mut client = s.client().await;
        assert_eq!(client.get("/").await.0, 200, "{mode:?}");
        // Without Builder::connect_info(true), no addresses (as under
        // axum::serve without into_make_service_with_connect_info).
        assert_eq!(client.get("/peer").await, (500, b"(None, None)".to_vec()));
        s.server
            .wait_stats("idle", |st| st.connections_idle == 1)
            .await;
        let summary = s.server.stop().await;
        assert_eq!(summary.forced, 0, "{mode:?}");
        assert_eq!(
            events.next_close().await.reason,
            CloseReason::Shutdown,
            "{mode:?}"
        );
        assert!(events.all_closed(), "{mode:?}");
        drop(client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_park_where_they_can_and_resume_in_their_protocol() {
    for mode in ALL {
        let (builder, mut events) = hooked(
            megaconn::Server::builder()
                .workers(1)
                .connect_info(true)
                .park_idle_after(Some(Duration::from_millis(20))),
        );
        let s = mode.server(builder).await;
        let mut client = s.client().await;
        assert_eq!(client.get("/").await.0, 200, "{mode:?}");
        if mode.parks() {
            s.server
                .wait_stats("parked", |st| st.connections_parked == 1)
                .await;
        } else {
            s.server
                .wait_stats("idle", |st| st.connections_idle == 1)
                .await;
        }
        // Woken (or still a task), the connection answers in its protocol,
        // and still knows its client's address (read back from the socket).
        let peer = client.local_addr().to_string().into_bytes();
        assert_eq!(client.get("/peer").await, (200, peer), "{mode:?}");
        if mode.parks() {
            // It woke cold, was served as a bare socket and went straight
            // back into the lot (the heartbeat path): two parks, one wake.
            s.server
                .wait_stats("re-parked", |st| {
                    st.parks == 2 && st.wakes_cold == 1 && st.connections_parked == 1
                })
                .await;
            assert_eq!(s.server.handle.stats().wakes_hot, 0);
        } else {
            assert_eq!(s.server.handle.stats().parks, 0, "{mode:?}");
        }
        client.close().await;
        let closed = events.next_close().await;
        assert!(client_left(mode, closed.reason), "{mode:?}: {closed:?}");
        assert_eq!(closed.requests, 2, "{mode:?}: the count survives parking");
        s.server.stop().await;
    }
}

/// An upgraded connection keeps its slot: it stays in `connections_open` and
/// under `max_connections` until its socket really closes, and then reports
/// the close once. (Upgrades are HTTP/1.1's; the cleartext and TLS modes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_counts_until_it_closes() {
    for mode in [Mode::H1, Mode::H1Tls] {
        let (builder, mut events) =
            hooked(megaconn::Server::builder().workers(1).max_connections(1));
        let s = mode.server(builder).await;
        let common::modes::Client::H1 { mut io, .. } = s.client().await else {
            unreachable!("HTTP/1.1 modes")
        };
        io.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(read_response(&mut io).await.status, 101, "{mode:?}");
        // The hand-over is counted just after the 101 went out.
        s.server
            .wait_stats("upgraded", |st| st.request_metrics.upgraded == 1)
            .await;
        assert_eq!(
            s.server.handle.stats().connections_open,
            1,
            "{mode:?}: upgraded, still open"
        );
        // The slot is held: a second connection waits in the backlog, not
        // accepted while the upgraded one lives.
        let mut waiting = s.server.connect().await;
        waiting
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(s.server.handle.stats().accepted, 1, "{mode:?}");
        // The client hangs up; the echo handler sees EOF and drops the socket.
        io.shutdown().await.unwrap();
        let closed = events.next_close().await;
        assert!(client_left(mode, closed.reason), "{mode:?}: {closed:?}");
        if mode == Mode::H1 {
            // Now the waiting connection is accepted and served.
            assert_eq!(read_response(&mut waiting).await.status, 200);
        }
        drop((io, waiting));
        s.server.stop().await;
    }
}
