//! Prometheus metrics: requests of known methods and statuses, a malformed
//! request and connections ended in known ways, then `render_metrics()` parsed
//! with a Prometheus text parser must count exactly what the test did.

#![cfg(feature = "metrics")]

use crate::common;

use std::collections::BTreeMap;

use common::{read_response_buffered, read_to_close, Event, TestServer};
use prometheus_parse::{Scrape, Value};
use tokio::io::AsyncWriteExt;

/// A parsed scrape: plain samples by `name{sorted labels}`, and histograms.
struct Metrics {
    values: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Histogram>,
    text: String,
}

struct Histogram {
    sum: f64,
    count: f64,
    /// `(le, cumulative count)`.
    buckets: Vec<(f64, f64)>,
}

impl Metrics {
    fn parse(text: String) -> Metrics {
        let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_owned())).collect();
        let scrape = Scrape::parse(lines.into_iter()).expect("the metrics parse");
        let mut values = BTreeMap::new();
        let mut histograms = BTreeMap::new();
        let mut sample_lines = 0;
        for s in scrape.samples {
            let mut labels: Vec<_> = s.labels.iter().collect();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let key = format!("{}{{{}}}", s.metric, labels.join(","));
            match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                    sample_lines += 1;
                    values.insert(key, v);
                }
                Value::Histogram(buckets) => {
                    // `_sum` and `_count` come as separate untyped samples.
                    sample_lines += buckets.len();
                    let find = |suffix: &str| {
                        let name = format!("{}_{suffix}", s.metric);
                        text.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name} ")))
                            .and_then(|v| v.trim().parse::<f64>().ok())
                            .unwrap_or_else(|| panic!("{name} missing"))
                    };
                    histograms.insert(
                        s.metric.clone(),
                        Histogram {
                            sum: find("sum"),
                            count: find("count"),
                            buckets: buckets.iter().map(|b| (b.less_than, b.count)).collect(),
                        },
                    );
                }
                Value::Summary(_) => panic!("no summaries expected"),
            }
        }
        // The parser skips lines it cannot read; make sure it read them all.
        let expected = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count();
        assert_eq!(sample_lines, expected, "unparsed lines in:\n{text}");
        Metrics {
            values,
            histograms,
            text,
        }
    }

    /// The value of `name{labels}` (labels as `k=v` pairs, any order).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = format!("{name}{{{}}}", labels.join(","));
        *self
            .values
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing from:\n{}", self.text))
    }

    /// Sum of every series of `name`.
    fn total(&self, name: &str) -> f64 {
        let prefix = format!("{name}{{");
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

async fn request(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    raw: &str,
    head: bool,
) -> common::RawResponse {
    s.write_all(raw.as_bytes()).await.unwrap();
    read_response_buffered(s, buf, head).await
}

#[tokio::test]
async fn counters_match_what_the_test_did() {
    let server = TestServer::default().await;

    // One keep-alive connection with every labelled method and status class,
    // closed by the server after the last request (Connection: close).
    let mut s = server.connect().await;
    let mut buf = Vec::new();
    for _ in 0..3 {
        let r = request(&mut s, &mut buf, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", false).await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..2 {
        let r = request(&mut s, &mut buf, "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", true).await;
        assert_eq!(r.status, 200);
    }
    let r = request(
        &mut s,
        &mut buf,
        "POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde",
        false,
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"5"[..]));
    let cases = [
        ("PUT", 404),
        ("DELETE", 503),
        ("PATCH", 301),
        ("OPTIONS", 204),
        ("PURGE", 200),
    ];
    for (method, status) in cases {
        let raw = format!("{method} /status/{status} HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = request(&mut s, &mut buf, &raw, false).await;
        assert_eq!(r.status, status);
    }
    let r = request(
        &mut s,
        &mut buf,
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(read_to_close(&mut s).await.is_empty());

    // One malformed request: 400 and a close.
    let mut bad = server.connect().await;
    bad.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut bad).await;
    assert!(out.starts_with(b"HTTP/1.1 400"), "{out:?}");
    drop(bad);

    // One connection the client closes after a request.
    let mut c = server.connect().await;
    let mut cbuf = Vec::new();
    let r = request(
        &mut c,
        &mut cbuf,
        "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    drop(c);

    server
        .wait_stats("3 closed connections", |s| s.closed == 3)
        .await;
    let m = Metrics::parse(server.handle.render_metrics());

    let requests = |method, class| {
        m.get(
            "megaconn_requests_total",
            &[("method", method), ("status_class", class)],
        )
    };
    assert_eq!(requests("GET", "2xx"), 5.0);
    assert_eq!(requests("HEAD", "2xx"), 2.0);
    assert_eq!(requests("POST", "2xx"), 1.0);
    assert_eq!(requests("PUT", "4xx"), 1.0);
    assert_eq!(requests("DELETE", "5xx"), 1.0);
    assert_eq!(requests("PATCH", "3xx"), 1.0);
    assert_eq!(requests("OPTIONS", "2xx"), 1.0);
    assert_eq!(requests("other", "2xx"), 1.0);
    // The malformed one, refused before its method was read.
    assert_eq!(requests("other", "4xx"), 1.0);
    assert_eq!(m.total("megaconn_requests_total"), 14.0, "{}", m.text);

    // The malformed one took no time to measure: not in the histogram.
    let d = &m.histograms["megaconn_request_duration_seconds"];
    assert_eq!(d.count, 13.0);
    assert!(d.sum > 0.0 && d.sum < 13.0 * 10.0, "sum {}", d.sum);
    assert_eq!(d.buckets.first().unwrap().0, 0.0001);
    assert_eq!(d.buckets.last().unwrap(), &(f64::INFINITY, 13.0));
    assert!(d.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");

    assert_eq!(m.get("megaconn_request_body_bytes_total", &[]), 5.0);
    // 5 × "Hello, World!" (HEAD has no body) + "5" from /collect.
    assert_eq!(
        m.get("megaconn_response_body_bytes_total", &[]),
        5.0 * 13.0 + 1.0
    );
    assert_eq!(m.get("megaconn_requests_in_flight", &[]), 0.0);

    let closed = |reason| m.get("megaconn_connections_closed_total", &[("reason", reason)]);
    assert_eq!(closed("server_closed"), 1.0);
    assert_eq!(closed("protocol_error"), 1.0);
    assert_eq!(closed("client_closed"), 1.0);
    assert_eq!(m.total("megaconn_connections_closed_total"), 3.0);
    assert_eq!(m.get("megaconn_connections_accepted_total", &[]), 3.0);
    assert_eq!(m.get("megaconn_connections_open", &[]), 0.0);
    assert_eq!(m.get("megaconn_connections_idle", &[]), 0.0);
    assert_eq!(m.get("megaconn_protocol_errors_total", &[]), 1.0);
    assert_eq!(
        m.get(
            "megaconn_limit_hits_total",
            &[("limit", "malformed_request")]
        ),
        1.0
    );
    assert_eq!(m.total("megaconn_limit_hits_total"), 1.0);
    assert_eq!(m.get("megaconn_panics_total", &[]), 0.0);
    assert_eq!(m.get("megaconn_handler_cancelled_total", &[]), 0.0);
    assert_eq!(m.get("megaconn_timeouts_total", &[]), 0.0);
    for errno in ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "other"] {
        assert_eq!(
            m.get("megaconn_accept_errors_total", &[("errno", errno)]),
            0.0
        );
    }
    assert_eq!(
        m.get("megaconn_worker_connections", &[("worker", "0")]),
        0.0
    );
    assert_eq!(m.get("megaconn_buffers_checked_out", &[]), 0.0);
    assert!(m.get("megaconn_buffers_pooled", &[]) >= 1.0);

    // The structured snapshot agrees with the text.
    let stats = server.handle.stats();
    // Handed to the service: the malformed one was not.
    assert_eq!(stats.requests, 13);
    assert_eq!(stats.request_metrics.duration.count(), 13);
    server.stop().await;
}

/// A 431 and a 413 on HTTP/1.1 are told apart (`limit_hits{limit}`), where
/// both are `closed{protocol_error}`, and count in `requests_total` with
/// their status though no handler saw them (as HTTP/2's 413 does): the 413,
/// whose head parsed, by its method, the 431 as `other`. Neither is in the
/// duration histogram, which a flood of them would pull toward zero.
#[tokio::test]
async fn requests_refused_by_a_limit_are_counted_by_limit_and_status() {
    let server = TestServer::start(
        megaconn::Server::builder()
            .max_headers(4)
            .max_body_bytes(16),
    )
    .await;
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost: t\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n",
            &b"HTTP/1.1 431"[..],
        ),
        (
            "POST /collect HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n",
            &b"HTTP/1.1 413"[..],
        ),
    ];
    for (raw, status) in cases {
        let mut s = server.connect().await;
        s.write_all(raw.as_bytes()).await.unwrap();
        let out = read_to_close(&mut s).await;
        assert!(out.starts_with(status), "{}", String::from_utf8_lossy(&out));
    }
    server
        .wait_stats("2 closed connections", |s| s.closed == 2)
        .await;
    let m = Metrics::parse(server.handle.render_metrics());
    let hits = |limit| m.get("megaconn_limit_hits_total", &[("limit", limit)]);
    assert_eq!(hits("max_headers"), 1.0, "{}", m.text);
    assert_eq!(hits("max_body_bytes"), 1.0, "{}", m.text);
    assert_eq!(m.total("megaconn_limit_hits_total"), 2.0, "{}", m.text);
    let requests = |method| {
        m.get(
            "megaconn_requests_total",
            &[("method", method), ("status_class", "4xx")],
        )
    };
    assert_eq!(requests("other"), 1.0, "{}", m.text);
    assert_eq!(requests("POST"), 1.0, "{}", m.text);
    assert_eq!(m.total("megaconn_requests_total"), 2.0, "{}", m.text);
    let d = &m.histograms["megaconn_request_duration_seconds"];
    assert_eq!(d.count, 0.0, "{}", m.text);
    let stats = server.handle.stats();
    assert!(stats.limit_hits.contains(&("max_headers", 1)), "{stats:?}");
    assert_eq!(stats.request_metrics.duration.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn in_flight_and_cancelled_requests() {
    let mut server = TestServer::default().await;
    let mut s = server.connect().await;
    server.start_waiting(&mut s).await;
    let m = Metrics::parse(server.handle.render_metrics());
    assert_eq!(m.get("megaconn_requests_in_flight", &[]), 1.0);
    assert_eq!(
        m.get("megaconn_worker_connections", &[("worker", "0")]),
        1.0
    );

    // The client leaves: the handler is cancelled, the request ends without a
    // response and is counted as such.
    drop(s);
    assert_eq!(
        server.probe.next_event().await,
        Event::Cancelled("/wait".into())
    );
    server
        .wait_stats("the connection closed", |s| s.closed == 1)
        .await;
    let m = Metrics::parse(server.handle.render_metrics());
    assert_eq!(m.get("megaconn_requests_in_flight", &[]), 0.0);
    assert_eq!(m.get("megaconn_handler_cancelled_total", &[]), 1.0);
    assert_eq!(
        m.get(
            "megaconn_requests_total",
            &[("method", "GET"), ("status_class", "none")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "megaconn_connections_closed_total",
            &[("reason", "client_closed")]
        ),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn every_worker_has_a_series() {
    let server = TestServer::start(megaconn::Server::builder().workers(3)).await;
    server.assert_healthy().await;
    server
        .wait_stats("the connection closed", |s| s.closed == 1)
        .await;
    let m = Metrics::parse(server.handle.render_metrics());
    for worker in ["0", "1", "2"] {
        assert_eq!(
            m.get("megaconn_worker_connections", &[("worker", worker)]),
            0.0
        );
    }
    assert_eq!(m.get("megaconn_connections_accepted_total", &[]), 1.0);
    let runtime = server.handle.stats().request_metrics.workers;
    assert_eq!(runtime.len(), 3);
    assert_eq!(runtime.iter().map(|w| w.requests).sum::<u64>(), 1);
    server.stop().await;
}

#[test]
fn an_idle_server_renders_every_family() {
    let text = megaconn::metrics::render(&megaconn::ServerStats::default());
    for family in [
        "megaconn_connections_open",
        "megaconn_connections_idle",
        "megaconn_connections_accepted",
        "megaconn_connections_closed",
        "megaconn_requests",
        "megaconn_request_duration_seconds",
        "megaconn_request_body_bytes",
        "megaconn_response_body_bytes",
        "megaconn_requests_in_flight",
        "megaconn_panics",
        "megaconn_handler_cancelled",
        "megaconn_timeouts",
        "megaconn_protocol_errors",
        "megaconn_limit_hits",
        "megaconn_accept_errors",
        "megaconn_worker_connections",
        "megaconn_buffers_checked_out",
        "megaconn_buffers_pooled",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} "))),
            "{family} missing:\n{text}"
        );
    }
    Metrics::parse(text);
}

/// Every family the exporter writes has its row in `observe/metrics.rs`'s
/// module-doc table (`megaconn_limit_hits_total` had none).
#[test]
fn every_family_rendered_is_in_the_module_doc_table() {
    const SOURCE: &str = include_str!("../../src/observe/metrics.rs");
    let table: Vec<&str> = SOURCE
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .filter(|l| l.starts_with("//! | `megaconn_"))
        .collect();
    let text = megaconn::metrics::render(&megaconn::ServerStats::default());
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next());
    let mut seen = 0;
    for family in families {
        let row = |name: &str| table.iter().any(|r| r.contains(&format!("| `{name}` |")));
        assert!(
            row(family) || row(&format!("{family}_total")),
            "{family} has no row in the module doc of observe/metrics.rs"
        );
        seen += 1;
    }
    assert!(seen >= 30, "only {seen} families rendered:\n{text}");
}
