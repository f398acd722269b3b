//! A framed TLS connection's client chain (mutual TLS) is one copy for the
//! connection's life: the `Session` made at each wake-up shares the TLS
//! stream's copy, where each made a copy of its own (session 51; an
//! HTTP/1.1 connection's requests share it since session 50,
//! `mtls_wake.rs`; WebSocket and SSE sessions are made the same way).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use megaconn::{FramedHandler, Framing, PeerCertificates, Server, Session};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::msg::{frame, http_and_framed, read_frame};
use crate::common::tls::{handshake, Ca};
use crate::common::{self, SAFETY};
use crate::mtls::{client, device, required};

/// Every chain a message saw, kept to the test's end, so that a copy made
/// afresh at a later wake-up cannot land where an earlier one was.
static KEPT: Mutex<Vec<PeerCertificates>> = Mutex::new(Vec::new());

/// Answers each message with the address of its session's chain.
#[derive(Clone)]
struct Where;

impl FramedHandler for Where {
    type State = ();

    async fn on_message(&self, _: &mut (), _: Bytes, session: &Session) -> Option<Bytes> {
        let peer = session.peer_certificates()?.clone();
        let address = format!("{:p}", peer.chain().as_ptr());
        KEPT.lock().unwrap().push(peer);
        Some(Bytes::from(address))
    }
}

/// Messages of one framed TLS connection, each after it parked (so each
/// wakes it and gets a new `Session`), see one chain: the same address
/// each time. Before, the first wake-up's differed from the opening's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_tls_connections_chain_is_one_copy_across_wakes() {
    let devices = Ca::named("Devices CA");
    let server_ca = Ca::named("Gateway CA");
    let tls = required(&devices)(server_ca.server(&["localhost"]));
    let server = Server::builder()
        .workers(1)
        .park_idle_after(Some(Duration::from_millis(20)))
        .tls(tls)
        .listen_tls_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_tls_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4))
        .listen()
        .expect("server binds");
    let (_, framed) = http_and_framed(&server);
    let handle = server.handle();
    let running = server
        .framed(Where)
        .start(axum::Router::new())
        .expect("starts");
    let task = tokio::spawn(running.run());

    let d = device(&devices, "device-51");
    let tcp = TcpStream::connect(framed).await.unwrap();
    let mut tls = handshake(tcp, client(&server_ca, &[], Some(&d)), "localhost")
        .await
        .expect("handshake");
    let mut seen = Vec::new();
    for _ in 0..3 {
        tls.write_all(&frame(b"where")).await.unwrap();
        seen.push(String::from_utf8(read_frame(&mut tls).await).unwrap());
        // Parked again (the message woke it, if it was): the next one
        // wakes it.
        common::wait_stats(&handle, "the connection parked", |s| {
            s.connections_parked == 1
        })
        .await;
    }
    let stats = handle.stats();
    assert!(
        stats.wakes_cold + stats.wakes_hot >= 2,
        "it woke: {stats:?}"
    );
    assert!(
        seen.iter().all(|a| *a == seen[0]),
        "a copy of the chain made at a wake-up: {seen:?}"
    );
    handle.shutdown();
    tokio::time::timeout(SAFETY, task)
        .await
        .expect("the server stops in time")
        .expect("the server's task");
}
