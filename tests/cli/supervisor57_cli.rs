//! The supervisor's `/metrics` (`serve --processes`, session 57) carries
//! what a single process's shows that it did not: the per-topic series of
//! `--topic-metrics` (subscribers summed over the worker processes,
//! publishes the largest count of one, since every process's hub takes
//! each publish) and `megaconn_proxy_headers_total{result}`, driven here
//! by real clients of two worker processes. (The audit of every family is
//! `crates/cli/shared_families_tests.rs`.)

use crate::common;
use crate::processes::{all_get, get, metric, on_every_process, Supervisor};

use std::io::{Read, Write};
use std::net::TcpStream;

/// A connection to `addr` from `source` (a loopback address of its own:
/// the one the server trusts as a load balancer).
fn connect_from(source: &str, addr: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let source: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(common::CHILD_SAFETY)).unwrap();
    stream
}

/// Polls the supervisor's `/metrics` until `done` says yes of it; panics
/// with the text past [`common::CHILD_SAFETY`] (worker processes copy
/// their counters within a second).
fn metrics_once(admin: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + common::CHILD_SAFETY;
    loop {
        let text = get(admin, "/metrics");
        if done(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Two worker processes, a connection subscribed to `fleet` on each, one
/// publish to it, and a proxied request with a PROXY header: the
/// supervisor shows the subscribers of both processes, the publish once
/// (both processes' hubs took it: summed it was twice), and the header.
/// Session 56's supervisor showed none of the three.
#[test]
fn the_supervisor_admin_serves_topics_and_proxy_headers() {
    let tcp = common::ReservedPort::new();
    let addr = tcp.addr.clone();
    let mut sup = Supervisor::start_with(
        2,
        &[
            "--tcp-listen",
            &addr,
            "--topic-metrics",
            "fleet",
            "--proxy-protocol",
            "127.0.0.2",
        ],
    );
    // Held until the worker processes listen (as `start_framed` does).
    drop(tcp);
    let mut conns = on_every_process(&addr, &sup.worker_pids, "fleet");
    let subscribed = conns.len();
    let (first, _) = &mut conns[0];
    first.send("PUB fleet to the fleet");
    let mut got = [first.line(), first.line()];
    got.sort();
    assert_eq!(got, ["published", "to the fleet"]);
    all_get(&mut conns[1..], "to the fleet");
    let mut proxied = connect_from("127.0.0.2", &sup.addr);
    write!(
        proxied,
        "PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    proxied.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("Hello, World!"), "{answer}");
    // Every push counted: both processes copied their counts since the
    // publish, which each hub took before it pushed.
    let pushes = subscribed as f64;
    let text = metrics_once(&sup.admin, |text| {
        metric(text, "megaconn_message_pushes_total") == Some(pushes)
            && metric(text, "megaconn_proxy_headers_total{result=\"ok\"}") == Some(1.0)
    });
    assert_eq!(
        metric(&text, "megaconn_topic_subscribers{topic=\"fleet\"}"),
        Some(subscribed as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "megaconn_topic_publishes_total{topic=\"fleet\"}"),
        Some(1.0),
        "one publish, taken by both processes' hubs: {text}"
    );
    assert_eq!(
        metric(&text, "megaconn_topic_subscribers{topic=\"other\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "megaconn_proxy_headers_total{result=\"invalid\"}"),
        Some(0.0),
        "{text}"
    );
    drop(conns);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.child.wait().code(), Some(0));
}
