//! How TLS connections end, against a real server with a rustls client: a
//! handshake in progress at graceful shutdown completes and its first
//! request is served (as a new cleartext connection's is); a client that
//! resets or leaves before its ClientHello or in the middle of its
//! handshake closed, it broke no protocol, and so did one that ended with a
//! fatal alert (its decision: counted by the alert's name); our closes say `close_notify` after a whole answer and not after one
//! that failed midway; a close with bytes left unread lingers.

use std::io::{Read, Write};
use std::time::Duration;

use megaconn::{CloseReason, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

use common::modes::{hooked, Events};
use common::tls::{
    blocking_client, connect, h2_settings_exchanged, http1_get, through_server_flight, Ca, Leaf,
};
use common::{closed_as, try_parse_response, RawResponse, TestServer, SAFETY};

/// The next close is the client's (`client_closed`) and nothing was counted
/// as a protocol error; returns the counters then.
async fn closed_by_the_client(events: &mut Events, server: &TestServer) -> megaconn::ServerStats {
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::ClientClosed, "{closed:?}");
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    stats
}

/// A TLS server with the test app (no parking); `configure` adds settings.
async fn tls_server(
    leaf: &Leaf,
    configure: impl FnOnce(megaconn::Builder) -> megaconn::Builder,
) -> (TestServer, Events) {
    let tls = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    let builder = megaconn::Server::builder().workers(1).tls(tls);
    let (builder, events) = hooked(configure(builder));
    (TestServer::start(builder).await, events)
}

/// Reads one response off a blocking rustls stream (its framing, not the
/// end of the stream, says where it ends).
fn read_response_blocking(tls: &mut impl Read) -> RawResponse {
    let mut buf = Vec::new();
    loop {
        if let Some((response, _)) = try_parse_response(&buf, false) {
            return response;
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).expect("the response");
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_in_progress_at_shutdown_completes_and_is_served() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    // An idle connection: its close tells the test that shutdown began.
    let mut idle = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut idle).await.0, "HTTP/1.1 200 OK");
    // A client driven by hand: its ClientHello sent, the rest held back.
    let (mut tcp, mut client) = blocking_client(server.addr, ca.client(&[b"http/1.1"]));
    client.write_tls(&mut tcp).unwrap();
    server
        .wait_stats("both accepted", |s| {
            s.accepted == 2 && s.connections_open == 2
        })
        .await;
    server.handle.shutdown();
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::Shutdown, "{closed:?}");
    assert_eq!(closed.requests, 1, "the idle one closed first: {closed:?}");
    // The handshake goes on and the first request is served.
    let response = tokio::task::spawn_blocking(move || {
        while client.is_handshaking() {
            client
                .complete_io(&mut tcp)
                .expect("the handshake completes");
        }
        let mut tls = rustls::Stream::new(&mut client, &mut tcp);
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        read_response_blocking(&mut tls)
    })
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"Hello, World!");
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    let closed = events.next_close().await;
    assert_eq!(closed.requests, 1, "{closed:?}");
    let summary = server.stop().await;
    assert_eq!(summary.forced, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_parked_https_connection_is_a_client_close() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| {
        b.park_idle_after(Some(Duration::from_millis(20)))
    })
    .await;
    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    server
        .wait_stats("parked", |s| s.connections_parked == 1)
        .await;
    tls.get_ref().0.set_zero_linger().unwrap();
    drop(tls);
    closed_by_the_client(&mut events, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_client_hello_is_a_client_close() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    // A TCP health check: connect, close.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    server.wait_stats("accepted", |s| s.accepted == 1).await;
    drop(tcp);
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::ClientClosed, "{closed:?}");
    // One that resets instead.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    server.wait_stats("accepted", |s| s.accepted == 2).await;
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    let stats = closed_by_the_client(&mut events, &server).await;
    assert_eq!(closed_as(&stats, "tls_handshake_failed"), 0, "{stats:?}");
    // A byte that is not TLS still fails the handshake, counted.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::TlsHandshakeFailed, "{closed:?}");
    assert_eq!(server.handle.stats().protocol_errors, 1);
    server.stop().await;
}

/// A client that closes in the middle of its handshake (here once it read
/// our whole flight, before its Finished: a scanner that came for our
/// certificate, a client that gave up without an alert) left, as one that
/// resets then does; a handshake carries no data a close could truncate.
/// It was a failed handshake, counted as a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_in_the_middle_of_its_handshake_is_a_client_close() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    let config = ca.client_versions(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        // All of the server's flight is read (so that the close is a FIN,
        // not a reset for unread bytes); the client's Finished stays unsent.
        drop(through_server_flight(addr, config));
    })
    .await
    .unwrap();
    let stats = closed_by_the_client(&mut events, &server).await;
    assert_eq!(closed_as(&stats, "tls_handshake_failed"), 0, "{stats:?}");
    server.stop().await;
}

/// A client that does not trust our certificate (it knows another CA)
/// says so with a fatal alert (rustls sends `unknown_ca`) and leaves: its
/// decision, closed as the client leaving and counted under the alert's
/// name, under TLS 1.3 and TLS 1.2. It was a failed handshake counted as a
/// protocol error, and nothing said which alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_distrusts_our_certificate_is_a_client_close_counted_by_its_alert() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    let stranger = Ca::named("another CA");
    let versions: [&'static rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    for (n, version) in (1..).zip(versions) {
        let config = stranger.client_versions(&[b"http/1.1"], &[version]);
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let error = common::tls::handshake(tcp, config, "localhost")
            .await
            .expect_err("the client does not trust our certificate");
        let why = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert_eq!(
            why,
            Some(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "{error:?}"
        );
        let closed = events.next_close().await;
        assert_eq!(closed.reason, CloseReason::ClientClosed, "{version:?}");
        let stats = server.handle.stats();
        assert_eq!(stats.protocol_errors, 0, "{version:?}: {stats:?}");
        assert_eq!(closed_as(&stats, "tls_handshake_failed"), 0, "{stats:?}");
        assert!(
            stats.tls_alerts_received.contains(&("unknown_ca", n)),
            "{version:?}: {:?}",
            stats.tls_alerts_received
        );
    }
    let metrics = server.handle.render_metrics();
    let metric = "megaconn_tls_alerts_received_total{alert=\"unknown_ca\"} 2";
    assert!(metrics.lines().any(|l| l == metric), "{metrics}");
    server.stop().await;
}

/// After the handshake too: a client that finds a record of ours bad (here
/// one altered on its way) ends the connection with a fatal
/// `bad_record_mac`. With no request under way that is the client leaving,
/// as a reset then is, counted under the alert's name, under HTTP/1.1 and
/// HTTP/2 (whose h2 keeps only the error's kind); it was a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_alert_after_the_handshake_is_a_client_close() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    // HTTP/1.1: the first record after the handshake (a session ticket).
    let config = ca.client_versions(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let mut tls = connect(server.addr, config, "localhost").await;
    answer_a_bad_record(&mut tls).await;
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::ClientClosed, "{closed:?}");
    // HTTP/2, its connection set up: the answer to a PING (or the ACK of
    // the client's SETTINGS, if the client has not read it yet).
    let mut tls = connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
    h2_settings_exchanged(&mut tls).await;
    tls.write_all(b"\0\0\x08\x06\0\0\0\0\0ping-ack")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    answer_a_bad_record(&mut tls).await;
    let stats = closed_by_the_client(&mut events, &server).await;
    assert!(
        stats.tls_alerts_received.contains(&("bad_record_mac", 2)),
        "{:?}",
        stats.tls_alerts_received
    );
    server.stop().await;
}

/// Makes `tls`'s client end its connection with a fatal `bad_record_mac`,
/// as it does for a record of ours that does not decrypt: the server's
/// next record, read off the socket, has its tag altered before the
/// client's session reads it, and the alert it queues is sent.
async fn answer_a_bad_record(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) {
    let (tcp, session) = tls.get_mut();
    let mut records = Vec::new();
    let end = loop {
        match first_record_end(&records) {
            Some(end) if end <= records.len() => break end,
            _ => {}
        }
        let read = tokio::time::timeout(SAFETY, tcp.read_buf(&mut records)).await;
        assert!(read.expect("a record in time").unwrap() > 0, "closed");
    };
    records[end - 1] ^= 1;
    session.read_tls(&mut &records[..end]).unwrap();
    let error = session.process_new_packets().expect_err("a bad record");
    assert_eq!(error, rustls::Error::DecryptError);
    let mut alert = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut alert).unwrap();
    }
    tcp.write_all(&alert).await.unwrap();
}

/// Where the first TLS record of `records` ends, once its header is there.
fn first_record_end(records: &[u8]) -> Option<usize> {
    let length = records.get(3..5)?;
    Some(5 + usize::from(u16::from_be_bytes([length[0], length[1]])))
}

/// A `close_notify` with bytes after it in the same segment (here a record
/// that would not decrypt): the bytes are not read (RFC 8446 §6.1: data
/// after a closure alert is ignored), the close is the client's, answered
/// with our `close_notify` (a clean end for the client), and nothing counts
/// as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_notify_with_bytes_after_it_is_a_client_close() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    assert_eq!(http1_get(&mut tls).await.0, "HTTP/1.1 200 OK");
    let (tcp, session) = tls.get_mut();
    session.send_close_notify();
    let mut wire = Vec::new();
    while session.wants_write() {
        session.write_tls(&mut wire).unwrap();
    }
    wire.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    tcp.write_all(&wire).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(SAFETY, tls.read_to_end(&mut rest))
        .await
        .expect("the server closes")
        .expect("a clean end: the server's close_notify");
    closed_by_the_client(&mut events, &server).await;
    server.stop().await;
}

/// Handshake records whose message rustls refuses after taking their bytes
/// close the connection as a failed handshake, counted, with no panic:
/// fetching the alert once panicked the connection (the follow-up call
/// handed rustls an empty buffer while it still meant to discard the
/// record's bytes from it). A ClientHello whose body does not parse gets
/// its `decode_error` alert; one whose length says 6.6 MB (a record reading
/// `hello`) is refused by rustls without an alert (its choice, upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_client_hello_fails_the_handshake_without_a_panic() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    let cases: [(&[u8], Option<u8>); 2] = [
        // decode_error (50).
        (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff", Some(50)),
        (b"\x16\x03\x01\x00\x05hello", None),
    ];
    for (n, (hello, alert)) in (1..).zip(cases) {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(hello).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
            .await
            .expect("the server closes")
            .ok();
        let closed = events.next_close().await;
        assert_eq!(closed.reason, CloseReason::TlsHandshakeFailed, "{closed:?}");
        // An alert record: content type 21, level fatal (2), the description.
        let expected = alert.map(|d| vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, d]);
        assert_eq!(expected.unwrap_or_default(), answer, "{hello:02x?}");
        let stats = server.handle.stats();
        assert_eq!(stats.panics, 0, "{stats:?}");
        assert_eq!(closed_as(&stats, "tls_handshake_failed"), n, "{stats:?}");
    }
    server.stop().await;
}

/// HTTP/1.0 over TLS: a body of unknown length is delimited by the close,
/// which says `close_notify` (without it, rustls and OpenSSL clients report
/// the end as truncation), and a body that failed midway ends without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_body_ends_with_close_notify_and_a_failed_one_without() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let (server, mut events) = tls_server(&leaf, |b| b).await;
    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    tls.write_all(b"GET /chunked HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut whole = Vec::new();
    tokio::time::timeout(SAFETY, tls.read_to_end(&mut whole))
        .await
        .expect("the server closes")
        .expect("a clean end: close_notify");
    let whole = String::from_utf8_lossy(&whole);
    assert!(whole.ends_with("\r\n\r\none,two,three"), "{whole}");
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::ServerClosed, "{closed:?}");

    let mut tls = connect(server.addr, ca.client(&[b"http/1.1"]), "localhost").await;
    tls.write_all(b"GET /failing-body HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut cut = Vec::new();
    let end = tokio::time::timeout(SAFETY, tls.read_to_end(&mut cut))
        .await
        .expect("the server closes");
    let cut = String::from_utf8_lossy(&cut);
    assert!(cut.ends_with("\r\n\r\npartial"), "{cut}");
    assert_eq!(
        end.expect_err("no close_notify after a failed body").kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    drop(tls);
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::ServerError, "{closed:?}");
    server.stop().await;
}

/// A close of ours with bytes read past the last request (the client sent
/// more than we serve) lingers: the socket is half-closed and read until the
/// client closes, so that more of its bytes arriving cannot turn the close
/// into a reset that destroys the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_with_bytes_left_unread_lingers() {
    let (server, mut events) = {
        let (builder, events) = hooked(megaconn::Server::builder().workers(1));
        (TestServer::start(builder).await, events)
    };
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // One write: the request that closes and bytes after it, read together.
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nmore")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
        .await
        .expect("the server half-closes")
        .unwrap();
    assert!(answer.ends_with(b"Hello, World!"), "{answer:?}");
    // Half-closed and lingering: not closed until the client is.
    // (Without the linger the close was counted before the socket's end.)
    let stats = server.handle.stats();
    assert_eq!(stats.closed, 0, "{stats:?}");
    drop(tcp);
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::ServerClosed, "{closed:?}");
    server.stop().await;
}
