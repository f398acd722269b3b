//! `[::]:P` is dual-stack as `axum::serve`'s listener is: it keeps the
//! system's `net.ipv6.bindv6only` (0 on Linux) and takes IPv4 connections
//! too, unless the same listen set has an IPv4 address on that port, where
//! it is bound v6-only so that both binds succeed (`conn/socket.rs`
//! `needs_v6_only`).

use crate::common;

use common::{read_response, test_app, AppServer};
use megaconn::Server;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Why this machine cannot show a dual-stack `[::]` listener, if it cannot:
/// no IPv6 loopback, or IPv6 sockets v6-only by default.
fn no_dual_stack() -> Option<String> {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        return Some(format!("no IPv6 loopback ([::1]:0 does not bind: {e})"));
    }
    match std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only") {
        Ok(v) if v.trim() == "0" => None,
        Ok(v) => Some(format!("net.ipv6.bindv6only = {}", v.trim())),
        Err(e) => Some(format!("cannot read net.ipv6.bindv6only: {e}")),
    }
}

/// A request to `addr` is answered `200`.
async fn answered(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.status, 200, "from {addr}");
}

#[tokio::test]
async fn an_unspecified_ipv6_address_takes_ipv4_connections_too() {
    if let Some(why) = no_dual_stack() {
        eprintln!("skipped: {why}");
        return;
    }
    let (app, _probe) = test_app();
    let server = AppServer::start(Server::bind("[::]:0".parse().unwrap()).workers(2), app);
    let port = server.addrs[0].port();
    answered(SocketAddr::from(([127, 0, 0, 1], port))).await;
    answered(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).await;
    assert!(server.stop().await);
}

/// `[::]:P` beside `127.0.0.1:P`: both bind (the IPv6 one v6-only), and
/// each family is served on its own address.
#[tokio::test]
async fn ipv6_beside_ipv4_on_one_port_binds_both() {
    if let Some(why) = no_dual_stack() {
        eprintln!("skipped: {why}");
        return;
    }
    // A free port held by a bound, never listening socket with
    // `SO_REUSEADDR` (as `tests/common`'s `ReservedPort`): no `:0` bind
    // elsewhere gets it meanwhile, and it blocks no bind of the server's
    // (which sets `SO_REUSEADDR` too). Port 0 would give the two
    // addresses two ports.
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved.set_reuse_address(true).unwrap();
    reserved
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = reserved.local_addr().unwrap().as_socket().unwrap().port();
    let (app, _probe) = test_app();
    let server = AppServer::start(
        Server::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
            .listen_on(SocketAddr::from(([127, 0, 0, 1], port)))
            .workers(2),
        app,
    );
    answered(SocketAddr::from(([127, 0, 0, 1], port))).await;
    answered(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).await;
    assert!(server.stop().await);
}
