//! A plain HTTP request sent to a TLS port (an `http://` URL for an
//! `https://` address) is answered `400` in plain text, as Go's net/http
//! answers it ("Client sent an HTTP request to an HTTPS server."), then
//! closed; counted as `megaconn_tls_handshakes_total{outcome="plain_http"}`
//! and closed as `tls_handshake_failed`. Told from the first bytes the
//! handshake reads anyway (`tls_io::opens_plain_http`): a ClientHello sent
//! one byte per TCP segment still handshakes.

use std::io::{Read, Write};

use megaconn::{CloseReason, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

use common::modes::{hooked, Events};
use common::tls::{blocking_client, Ca};
use common::{closed_as, handshakes, TestServer, SAFETY};

/// What a plain HTTP client reads: Go's status line and text.
const STATUS: &str = "HTTP/1.0 400 Bad Request\r\n";
const TEXT: &str = "\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// A one-worker TLS server with the test app, and its close events.
async fn tls_server(ca: &Ca) -> (TestServer, Events) {
    let leaf = ca.leaf(&["localhost"]);
    let tls = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    let (builder, events) = hooked(megaconn::Server::builder().workers(1).tls(tls));
    (TestServer::start(builder).await, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_request_to_a_tls_port_gets_400_and_a_close() {
    let ca = Ca::new();
    let (server, mut events) = tls_server(&ca).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SAFETY, tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .expect("a close, not a reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with(STATUS) && answer.ends_with(TEXT),
        "{answer:?}"
    );
    let closed = events.next_close().await;
    assert_eq!(closed.reason, CloseReason::TlsHandshakeFailed, "{closed:?}");
    let stats = server.handle.stats();
    assert_eq!(handshakes(&stats, "plain_http"), 1, "{stats:?}");
    assert_eq!(handshakes(&stats, "failed"), 0, "{stats:?}");
    assert_eq!(closed_as(&stats, "tls_handshake_failed"), 1, "{stats:?}");
    let metrics = server.handle.render_metrics();
    let metric = "megaconn_tls_handshakes_total{outcome=\"plain_http\"} 1";
    assert!(metrics.lines().any(|l| l == metric), "{metrics}");
    server.stop().await;
}

/// A ClientHello written one byte per TCP segment (`TCP_NODELAY`, one
/// write a byte) completes its handshake and is served: its first byte
/// (`0x16`) says TLS, whatever arrives with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_one_byte_at_a_time_still_handshakes() {
    let ca = Ca::new();
    let (server, _events) = tls_server(&ca).await;
    let config = ca.client(&[b"http/1.1"]);
    let addr = server.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let (mut tcp, mut client) = blocking_client(addr, config);
        tcp.set_nodelay(true).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        assert_eq!(hello[0], 0x16, "a handshake record");
        for byte in hello.chunks(1) {
            tcp.write_all(byte).unwrap();
        }
        client
            .writer()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut stream = rustls::Stream::new(&mut client, &mut tcp);
        let mut answer = Vec::new();
        // The server closes after its answer without `close_notify`'s
        // wait: what was read before counts.
        let _ = stream.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with("Hello, World!"), "{answer:?}");
    let stats = server.handle.stats();
    assert_eq!(handshakes(&stats, "completed"), 1, "{stats:?}");
    assert_eq!(handshakes(&stats, "plain_http"), 0, "{stats:?}");
    server.stop().await;
}
