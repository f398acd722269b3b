//! [`Config::listener_at`]: which listener a connection's local address
//! names, the one search behind every per-listener setting (TLS, framing,
//! a listener's own `proxy_protocol` list).

use std::net::SocketAddr;

use super::config::Config;

fn config(addrs: &[&str]) -> Config {
    Config {
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        ..Config::default()
    }
}

fn at(config: &Config, local: &str) -> Option<usize> {
    config.listener_at(local.parse::<SocketAddr>().unwrap())
}

/// The listener bound at the address itself comes first; else a
/// wildcard's on the port.
#[test]
fn the_address_itself_then_a_wildcard_on_its_port() {
    let c = config(&["0.0.0.0:8080", "127.0.0.1:8080", "10.0.0.1:9090"]);
    assert_eq!(at(&c, "127.0.0.1:8080"), Some(1), "its own address");
    assert_eq!(at(&c, "192.168.1.2:8080"), Some(0), "the wildcard's port");
    assert_eq!(at(&c, "10.0.0.1:9090"), Some(2));
    assert_eq!(at(&c, "10.0.0.2:9090"), None, "no wildcard there");
    assert_eq!(at(&c, "127.0.0.1:7070"), None, "no listener on the port");
}

/// `[::]:P` (v6-only beside `0.0.0.0:P`) and `0.0.0.0:P` are two
/// listeners: an IPv4 connection came in on the IPv4 one and an IPv6
/// connection on the IPv6 one, whichever was added first. The search
/// took the first wildcard on the port, so a TLS or framed setting of one
/// applied to the other's connections.
#[test]
fn a_wildcard_of_the_connections_family_first() {
    for (v6, v4) in [(0, 1), (1, 0)] {
        let mut addrs = ["", ""];
        addrs[v6] = "[::]:8443";
        addrs[v4] = "0.0.0.0:8443";
        let c = config(&addrs);
        assert_eq!(at(&c, "127.0.0.1:8443"), Some(v4), "{addrs:?}: IPv4");
        assert_eq!(at(&c, "[::1]:8443"), Some(v6), "{addrs:?}: IPv6");
    }
}

/// A dual-stack `[::]:P` alone takes IPv4 connections, seen as IPv6
/// (`::ffff:a.b.c.d`); an IPv4 local address (as another kernel or a
/// caller may give) still finds it, the other family's wildcard being the
/// fallback.
#[test]
fn a_dual_stack_wildcard_alone_takes_both_families() {
    let c = config(&["[::]:8080"]);
    assert_eq!(at(&c, "[::ffff:127.0.0.1]:8080"), Some(0));
    assert_eq!(at(&c, "127.0.0.1:8080"), Some(0));
    assert_eq!(at(&c, "[::1]:8080"), Some(0));
}
