//! A client's certificate chain (mutual TLS) is one copy for its
//! connection's life: the TLS stream takes it out of the rustls session
//! when the handshake completes and parks it with the session, so every
//! request of an HTTP/1.1 connection shares that copy, also after the
//! connection parked and woke. A copy was made at the first request after
//! every wake-up.

use tokio::io::AsyncWriteExt;

use crate::common;
use crate::common::tls::Ca;
use crate::mtls::{device, required, Gateway};

/// The requests of one HTTP/1.1 connection, each after the connection
/// parked (and so woke for it), see one `PeerCertificates`: the address of
/// its chain (`/chain`; the handler keeps every request's, so a copy made
/// afresh could not land where an earlier one is) is the same each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_is_one_copy_across_wakes() {
    let devices = Ca::named("Devices CA");
    let gateway = Gateway::start(required(&devices)).await;
    let d = device(&devices, "device-12");
    let mut tls = gateway
        .connect(gateway.https, "localhost", &[b"http/1.1"], Some(&d))
        .await
        .expect("handshake");
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        tls.write_all(b"GET /chain HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let response = common::read_response_buffered(&mut tls, &mut buf, false).await;
        assert_eq!(response.status, 200);
        seen.push(String::from_utf8(response.body).unwrap());
        // Parked again (the request woke it, if it was): the next request
        // wakes it.
        common::wait_stats(&gateway.handle, "the connection parked", |s| {
            s.connections_parked == 1
        })
        .await;
    }
    assert!(
        seen.iter().all(|a| *a == seen[0]),
        "a copy of the chain made after a wake-up: {seen:?}"
    );
    gateway.stop().await;
}
