//! The audit of the supervisor's `/metrics` (`serve --processes`) against
//! a single process's: every family a single process writes is in the
//! supervisor's too, of the same kind, with the same series and values for
//! one process's counts, or is listed here on purpose, with the reason
//! ([`PER_PROCESS_ONLY`], [`OTHERWISE`]). A family added to the library is
//! in neither, and fails [`every_family_of_a_process_is_the_supervisors_or_listed`]
//! until it is carried (a row of `shared_families.rs`) or listed. And how
//! the per-topic series and the PROXY header counts add up over processes.

use std::collections::BTreeMap;
use std::time::Duration;

use megaconn::metrics::{
    ACCEPT_ERRNO_LABELS, CLOSE_REASON_LABELS, LIMIT_HIT_LABELS, PROXY_HEADER_LABELS,
    TLS_CLIENT_CERT_REFUSAL_LABELS, TLS_HANDSHAKE_LABELS,
};
use megaconn::{OtelStats, ServerStats, TlsStats, TopicCount};

use crate::fanout::FanoutCounts;
use crate::shared_stats::SharedStats;

/// Families of a single process the supervisor does not write, and why.
const PER_PROCESS_ONLY: &[(&str, &str)] = &[
    (
        "megaconn_worker_connections",
        "per worker thread of one process; the supervisor's megaconn_process_connections{process} is the same per worker process",
    ),
    (
        "megaconn_tls_alerts_received",
        "not carried: the library exports no list of its alert labels for a reader adding processes up; the alerts' closes are in connections_closed{reason=\"client_closed\"}, which is",
    ),
    (
        "megaconn_otel_spans_exported",
        "each worker process runs its own span exporter (its own queue and collector connection); not carried yet",
    ),
    (
        "megaconn_otel_spans_dropped",
        "as megaconn_otel_spans_exported",
    ),
    (
        "megaconn_otel_spans_failed",
        "as megaconn_otel_spans_exported",
    ),
    (
        "megaconn_otel_spans_queued",
        "as megaconn_otel_spans_exported",
    ),
    (
        "megaconn_ws_closes",
        "two labels (direction × code, 2 × WS_CLOSE_CODES values a slot); not carried yet: the closes are in connections_closed{reason}, which is",
    ),
    (
        "megaconn_publish_lag_seconds",
        "a histogram per worker of each process's hub queue; not carried yet",
    ),
];

/// Families the supervisor writes otherwise than a single process, and how.
const OTHERWISE: &[(&str, &str)] = &[
    (
        "megaconn_requests",
        "summed over method and status_class (the stop line's total): 48 values a slot not carried",
    ),
    (
        "megaconn_tls_certificate_expiry_seconds",
        "the earliest of the live processes' certificates, without server_name: the names are strings the block does not carry, and every process serves the same certificates",
    ),
];

/// A process's counts with every family present (TLS, tracing, topics)
/// and a value of its own in each series (`k`: a different set).
fn every_family(k: u64) -> ServerStats {
    let mut s = ServerStats::default();
    let mut next = k * 1000;
    let mut v = || {
        next += 1;
        next
    };
    (s.connections_open, s.connections_idle, s.connections_parked) = (9, 4, 2);
    (s.accepted, s.closed, s.requests, s.panics) = (v(), v(), v(), v());
    (s.timeouts, s.protocol_errors, s.accept_errors) = (v(), v(), v());
    (s.cancelled, s.responses_cut, s.requests_refused) = (v(), v(), v());
    (s.parks, s.wakes_cold, s.wakes_hot, s.wakes_without_task) = (v(), v(), v(), v());
    (
        s.parking_epoll_ctl,
        s.parking_wakeups,
        s.parking_wake_batches,
    ) = (v(), v(), v());
    (s.accept_waits_at_limit, s.worker_stalls, s.adopted) = (v(), v(), v());
    (s.handover_refused, s.aged_out, s.rejected_per_ip) = (v(), v(), v());
    (
        s.buffers_checked_out,
        s.buffers_pooled,
        s.shutdown_drain_pending,
    ) = (3, 5, 1);
    s.http2_grown_windows_bytes = 65_536;
    s.connections_per_worker = vec![9];
    let pairs = |labels: &[&'static str], v: &mut dyn FnMut() -> u64| {
        labels.iter().map(|&l| (l, v())).collect::<Vec<_>>()
    };
    s.limit_hits = pairs(LIMIT_HIT_LABELS, &mut v);
    s.tls_handshakes = pairs(TLS_HANDSHAKE_LABELS, &mut v);
    s.tls_client_cert_refusals = pairs(TLS_CLIENT_CERT_REFUSAL_LABELS, &mut v);
    s.proxy_headers = pairs(PROXY_HEADER_LABELS, &mut v);
    s.tls_alerts_received = vec![("unknown_ca", v())];
    let r = &mut s.request_metrics;
    r.closed_by_reason = pairs(CLOSE_REASON_LABELS, &mut v);
    r.accept_errors_by_errno = pairs(&ACCEPT_ERRNO_LABELS, &mut v);
    (r.upgraded, r.request_body_bytes, r.response_body_bytes) = (v(), v(), v());
    r.in_flight = 2;
    r.duration.counts[3] = v();
    r.duration.sum = Duration::from_millis(1500);
    let m = &mut s.messages;
    (m.frames_in, m.frames_out, m.bytes_in, m.bytes_out) = (v(), v(), v(), v());
    (m.pushes, m.hub_messages, m.heartbeats_sent) = (v(), v(), v());
    (m.queue_drops_slow_consumer, m.queue_drops_droppable) = (v(), v());
    (
        m.queue_drops_shutdown,
        m.queue_drops_closed,
        m.heartbeat_timeouts,
    ) = (v(), v(), v());
    (m.deliveries_pending, m.hub_queued, m.hub_queued_bytes) = (1, 2, 300);
    m.subscriptions = 7;
    m.connections_by_protocol = [1, 2, 1];
    m.topics = vec![
        TopicCount::new("fleet", 3, 5),
        TopicCount::new("firmware", 0, 1),
        TopicCount::new("other", 4, 2),
    ];
    let mut tls = TlsStats::default();
    (tls.reloads_ok, tls.reloads_failed) = (1, 0);
    tls.certificates = vec![("default".to_owned(), Some(1_900_000_000))];
    s.tls = Some(tls);
    s.otel = Some(OtelStats::default());
    s
}

/// Prometheus text's families: name (as `# TYPE` gives it) to kind and
/// the sample lines of it.
fn families(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut families: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_owned(), (kind.to_owned(), Vec::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        let family = families
            .keys()
            .filter(|f| {
                series.strip_prefix(f.as_str()).is_some_and(|suffix| {
                    [
                        "", "_total", "_bucket", "_count", "_sum", "_created", "_info",
                    ]
                    .contains(&suffix)
                })
            })
            .max_by_key(|f| f.len())
            .cloned();
        let family = family.unwrap_or_else(|| panic!("a sample of no family: {line}"));
        families.get_mut(&family).unwrap().1.push(line.to_owned());
    }
    families
}

/// Every family of a single process's `/metrics` is in the supervisor's,
/// of the same kind, and with one process publishing, with the same series
/// and values; or it is listed, with why. The supervisor carried 16 of
/// the 60-odd (session 56: no per-topic series, no
/// `megaconn_proxy_headers_total`, no message series at all), and nothing
/// said which were missing.
#[test]
fn every_family_of_a_process_is_the_supervisors_or_listed() {
    let s = every_family(1);
    let single = families(&megaconn::metrics::render(&s));
    let shared = SharedStats::create(1).unwrap();
    shared.publish(0, &s);
    let text = shared.render_prometheus(FanoutCounts::default());
    let supervisor = families(&text);
    let listed = |list: &[(&str, &str)], name: &str| list.iter().any(|(f, _)| *f == name);
    let mut missing = Vec::new();
    for (name, (kind, samples)) in &single {
        if listed(PER_PROCESS_ONLY, name) {
            assert!(
                !supervisor.contains_key(name),
                "{name} is the supervisor's now: take it off PER_PROCESS_ONLY"
            );
            continue;
        }
        let Some((their_kind, theirs)) = supervisor.get(name) else {
            missing.push(name.as_str());
            continue;
        };
        assert_eq!(kind, their_kind, "{name}'s kind");
        if listed(OTHERWISE, name) {
            continue;
        }
        for sample in samples {
            assert!(
                theirs.contains(sample),
                "{sample} (a single process's) not in the supervisor's {name}: {theirs:#?}"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "families of a single process neither in the supervisor's /metrics nor listed as per-process-only (shared_families_tests.rs): {missing:?}"
    );
    for (name, why) in PER_PROCESS_ONLY.iter().chain(OTHERWISE) {
        assert!(
            single.contains_key(*name),
            "{name} listed ({why}) but no process writes it"
        );
    }
}

/// Per topic, over processes: subscribers are summed (each process holds
/// its own connections), publishes are the largest count of one (each
/// process's hub takes every publish: summed, two processes showed each
/// publish twice), kept when that process exits; the names are the
/// processes' own. PROXY headers add up, by result, exited processes'
/// included.
#[test]
fn topics_and_proxy_headers_add_up_over_processes() {
    let shared = SharedStats::create(2).unwrap();
    let process = |fleet: (u64, u64), other: (u64, u64), ok: u64| {
        let mut s = ServerStats::default();
        s.messages.topics = vec![
            TopicCount::new("fleet", fleet.0, fleet.1),
            TopicCount::new("other", other.0, other.1),
        ];
        s.proxy_headers = PROXY_HEADER_LABELS
            .iter()
            .map(|&l| (l, if l == "ok" { ok } else { 0 }))
            .collect();
        s
    };
    let none = shared.render_prometheus(FanoutCounts::default());
    assert!(!none.contains("megaconn_topic_"), "no topics yet: {none}");
    shared.publish(0, &process((3, 7), (1, 2), 5));
    shared.publish(1, &process((2, 7), (4, 2), 6));
    let text = shared.render_prometheus(FanoutCounts::default());
    for line in [
        "megaconn_topic_subscribers{topic=\"fleet\"} 5\n",
        "megaconn_topic_subscribers{topic=\"other\"} 5\n",
        "megaconn_topic_publishes_total{topic=\"fleet\"} 7\n",
        "megaconn_topic_publishes_total{topic=\"other\"} 2\n",
        "megaconn_proxy_headers_total{result=\"ok\"} 11\n",
        "megaconn_proxy_headers_total{result=\"too_large\"} 0\n",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    // Process 0 exits; its restart has seen no publish yet.
    shared.retire(0);
    shared.publish(0, &process((0, 0), (0, 0), 0));
    shared.retire(1);
    let text = shared.render_prometheus(FanoutCounts::default());
    for line in [
        "megaconn_topic_subscribers{topic=\"fleet\"} 0\n",
        "megaconn_topic_publishes_total{topic=\"fleet\"} 7\n",
        "megaconn_proxy_headers_total{result=\"ok\"} 11\n",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}
