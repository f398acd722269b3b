//! Per-topic series in `/metrics` (`Builder::topic_metrics`), read as
//! Prometheus reads them: `GET /metrics` over a real socket, from the
//! server's own HTTP listener, with devices subscribed over its framed
//! one on two workers. Only the topics named get a series; every other
//! topic is summed in `topic="other"`, so a fleet with a topic per device
//! is one series, not one per device. The list is bounded
//! (`MAX_TOPIC_METRICS`), refused past it at `validate`/`listen`.

use std::net::SocketAddr;

use axum::routing::get;
use bytes::Bytes;
use megaconn::{FramedHandler, Framing, Hub, Server, ServerHandle, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{read_to_close, wait_stats, SAFETY};

/// Lines: `sub T` subscribes the connection to `T` and answers `ok`.
struct Devices;

impl FramedHandler for Devices {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, session: &Session) -> Option<Bytes> {
        let line = std::str::from_utf8(&frame).expect("UTF-8 lines");
        let topic = line.strip_prefix("sub ").expect("only `sub T`");
        Some(match session.subscribe(topic) {
            Ok(()) => Bytes::from_static(b"ok"),
            Err(e) => format!("refused: {e}").into(),
        })
    }
}

/// A server with devices on a line listener and `/metrics` on an HTTP
/// one, as the IoT recipe's gateway; shut down when dropped.
struct Gateway {
    devices: SocketAddr,
    http: SocketAddr,
    handle: ServerHandle,
    hub: Hub,
}

impl Gateway {
    /// Two workers (a topic's subscribers on both), counting `topics`.
    fn start(topics: &[&str]) -> Gateway {
        let mut server = Server::builder()
            .workers(2)
            .park_idle_after(None)
            .topic_metrics(topics)
            .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
            .listen_on("127.0.0.1:0".parse().unwrap())
            .listen()
            .expect("server binds");
        let addrs = server.local_addrs().to_vec();
        let devices = *addrs.iter().find(|a| server.is_framed(**a)).unwrap();
        let http = *addrs.iter().find(|a| !server.is_framed(**a)).unwrap();
        let (handle, hub) = (server.handle(), server.hub());
        let scraped = handle.clone();
        let app = axum::Router::new().route(
            "/metrics",
            get(move || std::future::ready(scraped.render_metrics())),
        );
        // Run here, not in the task: the hub takes publishes once the
        // server runs.
        let running = server.framed(Devices).start(app).expect("starts").run();
        tokio::spawn(running);
        Gateway {
            devices,
            http,
            handle,
            hub,
        }
    }

    /// A device subscribed to `topics`, each answered.
    async fn device(&self, topics: &[&str]) -> TcpStream {
        let mut s = TcpStream::connect(self.devices).await.expect("connect");
        for topic in topics {
            s.write_all(format!("sub {topic}\n").as_bytes())
                .await
                .unwrap();
            assert_eq!(read_line(&mut s).await, "ok", "sub {topic}");
        }
        s
    }

    /// The `megaconn_topic_` lines of `GET /metrics`, in order.
    async fn scrape(&self) -> Vec<String> {
        let mut s = TcpStream::connect(self.http).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let raw = String::from_utf8(read_to_close(&mut s).await).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
        raw.lines()
            .filter(|l| l.starts_with("megaconn_topic_"))
            .map(String::from)
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Reads one line (bounded), without its `\n`.
async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        tokio::time::timeout(SAFETY, s.read_exact(&mut byte))
            .await
            .expect("a line in time")
            .expect("the connection open");
        if byte[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(byte[0]);
    }
}

/// The lines `scrape` should read: subscribers then publishes, each topic
/// in the order named, `other` last.
fn series(counts: &[(&str, u64, u64)]) -> Vec<String> {
    let gauges = counts
        .iter()
        .map(|(t, subs, _)| format!("megaconn_topic_subscribers{{topic=\"{t}\"}} {subs}"));
    let counters = counts
        .iter()
        .map(|(t, _, pubs)| format!("megaconn_topic_publishes_total{{topic=\"{t}\"}} {pubs}"));
    gauges.chain(counters).collect()
}

/// The topics named each have their subscribers (exact, over both
/// workers) and publishes; device topics and a topic nobody holds are
/// `other`; a device that leaves takes its subscriptions out of both.
#[tokio::test]
async fn named_topics_have_their_series_and_the_rest_are_other() {
    let gateway = Gateway::start(&["fleet", "firmware", "fleet"]);
    let mut devices = Vec::new();
    for (i, topics) in [
        &["fleet", "device-1"][..],
        &["fleet", "device-2"],
        &["fleet", "firmware"],
        &["fleet"],
        &["device-3"],
    ]
    .into_iter()
    .enumerate()
    {
        devices.push((i, gateway.device(topics).await));
    }
    for (topic, times) in [
        ("fleet", 2),
        ("firmware", 1),
        ("device-1", 3),
        ("nobody", 1),
    ] {
        for _ in 0..times {
            assert_eq!(gateway.hub.publish(topic, "x"), Ok(()), "{topic}");
        }
    }
    assert_eq!(
        gateway.scrape().await,
        series(&[("fleet", 4, 2), ("firmware", 1, 1), ("other", 3, 4)])
    );
    // The first device (fleet, device-1) leaves.
    drop(devices.remove(0));
    wait_stats(&gateway.handle, "its subscriptions left", |s| {
        s.messages.subscriptions == 6
    })
    .await;
    assert_eq!(
        gateway.scrape().await,
        series(&[("fleet", 3, 2), ("firmware", 1, 1), ("other", 2, 4)])
    );
}

/// Unset, there is no per-topic series; named past `MAX_TOPIC_METRICS`
/// (a list that grew with the fleet), or naming `other` (the rest's
/// label), the server is refused with a `Config` error naming why.
#[tokio::test]
async fn the_list_is_opt_in_and_bounded() {
    let unset = megaconn::metrics::render(&megaconn::ServerStats::default());
    assert!(!unset.contains("megaconn_topic_"), "{unset}");
    let too_many = (0..=megaconn::MAX_TOPIC_METRICS).map(|i| format!("device-{i}"));
    for (builder, why) in [
        (
            Server::builder().topic_metrics(too_many),
            "more than MAX_TOPIC_METRICS",
        ),
        (
            Server::builder().topic_metrics(["fleet", "other"]),
            "cannot name a topic \"other\"",
        ),
    ] {
        match builder.validate() {
            Err(megaconn::Error::Config(e)) => assert!(e.contains(why), "{e}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    let fits = (0..megaconn::MAX_TOPIC_METRICS).map(|i| format!("device-{i}"));
    assert!(Server::builder().topic_metrics(fits).validate().is_ok());
}
