//! The access log of a connection from a trusted load balancer
//! (`Builder::proxy_protocol`, session 56): its line names the client the
//! PROXY header named, not the balancer.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use super::access_log::assert_one_line;
use super::capture_log;
use super::common::{connect_from, own_address, read_to_close, TestServer};

/// A request through a balancer that sent a v1 header has its access-log
/// line under the client's address (an address of the test's own, so no
/// other test's line names it), and none under the balancer's.
#[tokio::test]
async fn the_access_log_names_the_client_a_header_named() {
    capture_log();
    let balancer = own_address();
    let trusted = balancer.to_string().parse().unwrap();
    let server = TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .access_log(true)
            .proxy_protocol(Some(trusted)),
    )
    .await;
    let client = SocketAddr::from((own_address(), 4321));
    let mut s = connect_from((balancer, 0), server.addr).await;
    let via = s.local_addr().unwrap();
    let header = format!("PROXY TCP4 {} 10.0.0.1 4321 80\r\n", client.ip());
    s.write_all(header.as_bytes()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    server.stop().await;
    let want = ["method=GET", "path=/", "status=200"];
    assert_one_line(client, &want, "through the balancer");
    let balancers: Vec<String> = super::logged()
        .iter()
        .filter(|l| l.contains(&format!("peer={via}")))
        .cloned()
        .collect();
    assert!(
        balancers.is_empty(),
        "lines naming the balancer: {balancers:?}"
    );
}
