//! Connection and server lifecycle: panics, cancellation, graceful shutdown,
//! the connection limit, buffer return on idle, and binding errors.

mod common;

use std::time::Duration;

use common::{read_response, read_to_close, Event, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_panicking_handler_gets_500_and_the_server_lives() {
    let server = TestServer::default().await;
    for path in ["/panic", "/panic-async"] {
        let mut s = server.connect().await;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(raw.starts_with("HTTP/1.1 500 "), "{path}: {raw}");
        assert!(raw.contains("connection: close"));
        server.assert_healthy().await;
    }
    assert_eq!(server.handle.stats().panics, 2);
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_handler() {
    let mut server = TestServer::default().await;
    let mut s = server.connect().await;
    s.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        server.probe.next_event().await,
        Event::Started("/wait".into())
    );
    drop(s);
    assert_eq!(
        server.probe.next_event().await,
        Event::Cancelled("/wait".into())
    );
    server
        .wait_stats("cancelled count", |s| s.cancelled == 1)
        .await;
    server.assert_healthy().await;
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_closes_idle() {
    let mut server = TestServer::default().await;
    // An idle keep-alive connection that already served a request.
    let mut idle = server.connect().await;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut idle).await;
    // An in-flight request.
    let mut busy = server.connect().await;
    busy.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        server.probe.next_event().await,
        Event::Started("/wait".into())
    );

    server.handle.shutdown();
    // The idle connection is closed at once, without a response.
    assert!(read_to_close(&mut idle).await.is_empty());
    // The in-flight one finishes, told to close.
    server.probe.release.notify_one();
    let raw = String::from_utf8(read_to_close(&mut busy).await).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert!(raw.contains("connection: close"));
    assert!(raw.ends_with("released"));
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0);
    assert_eq!(summary.finished, 2);
    assert_eq!(summary.requests, 2);
}

#[tokio::test]
async fn shutdown_deadline_forces_stuck_connections() {
    let mut server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .shutdown_timeout(Duration::from_millis(50)),
    )
    .await;
    let mut busy = server.connect().await;
    busy.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        server.probe.next_event().await,
        Event::Started("/wait".into())
    );
    let summary = server.stop().await;
    assert_eq!(summary.forced, 1);
    // The forced connection is closed without a response.
    let mut rest = Vec::new();
    let _ = busy.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn max_connections_holds_and_resumes_when_one_closes() {
    let server = TestServer::start(megaconn::Server::builder().workers(1).max_connections(2)).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    for s in [&mut first, &mut second] {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(s).await.status, 200);
    }
    // The third connects (the kernel queues it) but is not accepted.
    let mut third = server.connect().await;
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut probe = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(200), third.read(&mut probe)).await;
    assert!(
        waited.is_err(),
        "the third connection was served over the limit"
    );
    let stats = server.handle.stats();
    assert_eq!(stats.accepted, 2);
    assert!(stats.connections_open <= 2);
    // Closing one lets the third in.
    drop(first);
    assert_eq!(read_response(&mut third).await.status, 200);
    assert_eq!(server.handle.stats().accepted, 3);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_hold_no_buffers() {
    let server = TestServer::default().await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut s = server.connect().await;
        // A request with a 4 KiB body and a 4 KiB response, then a plain one.
        let body = vec![b'b'; 4096];
        let mut req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n".to_vec();
        req.extend_from_slice(&body);
        s.write_all(&req).await.unwrap();
        assert_eq!(read_response(&mut s).await.body.len(), 4096);
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut s).await;
        conns.push(s);
    }
    server
        .wait_stats("10 idle connections", |s| s.connections_idle == 10)
        .await;
    let stats = server.handle.stats();
    assert_eq!(stats.connections_open, 10);
    assert_eq!(
        stats.buffers_checked_out, 0,
        "idle connections must hold no buffers: {stats:?}"
    );
    assert!(stats.buffers_pooled > 0, "buffers went back to the pool");
    drop(conns);
    server.stop().await;
}

#[tokio::test]
async fn binding_a_port_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = megaconn::Server::bind(addr).listen().unwrap_err();
    assert!(matches!(err, megaconn::Error::AddrInUse { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
}

#[tokio::test]
async fn several_workers_and_addresses_serve() {
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .listen_on("[::1]:0".parse().unwrap())
        .workers(2)
        .listen();
    // IPv6 loopback may be absent in some sandboxes; IPv4 alone is enough then.
    let server = match server {
        Ok(s) => s,
        Err(_) => megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(2)
            .listen()
            .unwrap(),
    };
    let addrs = server.local_addrs().to_vec();
    let handle = server.handle();
    let (app, _probe) = common::test_app();
    let task = tokio::spawn(server.serve(app));
    let client = reqwest::Client::new();
    for addr in &addrs {
        for _ in 0..4 {
            let r = client.get(format!("http://{addr}/")).send().await.unwrap();
            assert_eq!(r.text().await.unwrap(), "Hello, World!");
        }
    }
    assert_eq!(handle.stats().connections_per_worker.len(), 2);
    handle.shutdown();
    task.await.unwrap().unwrap();
}
