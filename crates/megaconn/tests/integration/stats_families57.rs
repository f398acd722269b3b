//! `ServerStats` and `/metrics` agree (session 57): every field of
//! [`ServerStats`] (its nested structs' included) is either shown by a
//! family of `megaconn::metrics::render`, named here, or listed here as
//! not shown, with the reason. The fields are read from the struct's
//! `Debug` output, so a field added to `ServerStats` and forgotten in
//! `/metrics` fails [`every_server_stats_field_has_a_family_or_a_reason`]
//! until it is given one or the other. (Session 55 added `responses_cut`
//! and `cancelled`, session 56 `proxy_headers`, each with its family by
//! hand; nothing checked the next one would be.)
//!
//! OpenTelemetry exports traces only (`megaconn::otel`'s module doc): no
//! family is exported as an OTel metric, so there is no third list to
//! keep in step; the span exporter's own counters are `ServerStats::otel`,
//! here like any other field.

use std::collections::BTreeSet;

use megaconn::{OtelStats, ServerStats, TlsStats, TopicCount};

/// Each field (its path in `ServerStats`) and the family (as `# TYPE`
/// names it, without `megaconn_`) that shows it.
const SHOWN: &[(&str, &str)] = &[
    ("connections_open", "connections_open"),
    ("connections_idle", "connections_idle"),
    ("connections_parked", "connections_parked"),
    ("accepted", "connections_accepted"),
    ("panics", "panics"),
    ("cancelled", "handler_cancelled"),
    ("responses_cut", "responses_cut"),
    ("timeouts", "timeouts"),
    ("protocol_errors", "protocol_errors"),
    ("buffers_checked_out", "buffers_checked_out"),
    ("buffers_pooled", "buffers_pooled"),
    ("connections_per_worker", "worker_connections"),
    ("rejected_accept_rate", "connections_rejected"),
    ("rejected_per_ip", "connections_rejected"),
    ("parks", "connections_parks"),
    ("wakes_cold", "connections_wakes"),
    ("wakes_hot", "connections_wakes"),
    ("wakes_without_task", "connections_wakes_without_task"),
    ("parking_epoll_ctl", "parking_epoll_ctl"),
    ("parking_wakeups", "parking_wakeups"),
    ("parking_wake_batches", "parking_wake_batches"),
    ("accept_waits_at_limit", "accept_waits_at_limit"),
    ("worker_stalls", "worker_stalls"),
    ("adopted", "connections_adopted"),
    ("handover_refused", "connections_handover_refused"),
    ("aged_out", "connections_aged_out"),
    ("shutdown_drain_pending", "shutdown_drain_pending"),
    ("http2_grown_windows_bytes", "http2_grown_windows_bytes"),
    ("limit_hits", "limit_hits"),
    ("tls_alerts_received", "tls_alerts_received"),
    ("tls_handshakes", "tls_handshakes"),
    ("tls_client_cert_refusals", "tls_client_cert_refusals"),
    ("proxy_headers", "proxy_headers"),
    ("request_metrics.by_method_status", "requests"),
    (
        "request_metrics.duration.counts",
        "request_duration_seconds",
    ),
    ("request_metrics.duration.sum", "request_duration_seconds"),
    ("request_metrics.request_body_bytes", "request_body_bytes"),
    ("request_metrics.response_body_bytes", "response_body_bytes"),
    ("request_metrics.in_flight", "requests_in_flight"),
    ("request_metrics.closed_by_reason", "connections_closed"),
    ("request_metrics.upgraded", "connections_upgraded"),
    ("request_metrics.accept_errors_by_errno", "accept_errors"),
    ("messages.frames_in", "message_frames"),
    ("messages.frames_out", "message_frames"),
    ("messages.bytes_in", "message_bytes"),
    ("messages.bytes_out", "message_bytes"),
    ("messages.pushes", "message_pushes"),
    ("messages.queue_drops_slow_consumer", "message_queue_drops"),
    ("messages.queue_drops_droppable", "message_queue_drops"),
    ("messages.queue_drops_shutdown", "message_queue_drops"),
    ("messages.queue_drops_closed", "message_queue_drops"),
    ("messages.heartbeats_sent", "message_heartbeats_sent"),
    ("messages.heartbeat_timeouts", "message_heartbeat_timeouts"),
    ("messages.hub_messages", "message_hub_messages"),
    ("messages.deliveries_pending", "message_deliveries_pending"),
    ("messages.hub_queued", "message_hub_queued"),
    ("messages.hub_queued_bytes", "message_hub_queued_bytes"),
    ("messages.subscriptions", "message_subscriptions"),
    ("messages.connections_by_protocol", "message_connections"),
    ("messages.rooms.ws_closes", "ws_closes"),
    ("messages.rooms.publish_lag.counts", "publish_lag_seconds"),
    ("messages.rooms.publish_lag.sum", "publish_lag_seconds"),
    ("messages.topics", "topic_subscribers"),
    ("otel.spans_exported", "otel_spans_exported"),
    ("otel.spans_dropped", "otel_spans_dropped"),
    ("otel.spans_failed", "otel_spans_failed"),
    ("otel.spans_queued", "otel_spans_queued"),
    ("tls.reloads_ok", "tls_reloads"),
    ("tls.reloads_failed", "tls_reloads"),
    ("tls.certificates", "tls_certificate_expiry_seconds"),
];

/// Fields no family shows, and why.
const NOT_SHOWN: &[(&str, &str)] = &[
    (
        "closed",
        "the sum of connections_closed_total{reason} (request_metrics.closed_by_reason)",
    ),
    (
        "requests",
        "requests handed to the service (the stop line's figure); /metrics counts finished ones by method and status class (requests_total), refusals before the handler included",
    ),
    (
        "requests_forced",
        "in requests_total{status_class=\"none\"}; the stop line says them apart",
    ),
    (
        "requests_refused",
        "in limit_hits_total{limit} (each refusal counts its limit) and protocol_errors_total; the stop line says them apart",
    ),
    (
        "accept_errors",
        "the sum of accept_errors_total{errno} (request_metrics.accept_errors_by_errno)",
    ),
    (
        "messages.queue_drops",
        "the sum of message_queue_drops_total{cause}",
    ),
    (
        "request_metrics.workers",
        "per worker, for /debug/runtime; /metrics has worker_connections{worker}",
    ),
];

/// The leaf fields of `ServerStats` (paths through its nested structs),
/// from its pretty `Debug` output: a field whose value is a struct (or
/// `Some` of one) is a path step, any other a leaf (a list is one, not
/// looked into).
fn fields(stats: &ServerStats) -> BTreeSet<String> {
    let text = format!("{stats:#?}");
    let mut leaves = BTreeSet::new();
    // Named struct fields above the line, with their indentation.
    let mut path: Vec<(usize, String)> = Vec::new();
    // Inside a list, from this indentation on: not looked into.
    let mut skip: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if skip.is_some_and(|at| indent > at) {
            continue;
        }
        skip = None;
        let Some((name, value)) = trimmed.split_once(": ") else {
            continue;
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        path.retain(|(at, _)| *at < indent);
        let full: Vec<&str> = path.iter().map(|(_, n)| n.as_str()).chain([name]).collect();
        let full = full.join(".");
        let value = value.trim_end_matches(',');
        if value.ends_with('{') || value == "Some(" {
            path.push((indent, name.to_owned()));
        } else {
            if value.ends_with('[') || value.ends_with('(') {
                skip = Some(indent);
            }
            leaves.insert(full);
        }
    }
    leaves
}

/// Every leaf field of `ServerStats` is in [`SHOWN`], with a family the
/// exposition has, or in [`NOT_SHOWN`]; neither list names a field that
/// is not there.
#[test]
fn every_server_stats_field_has_a_family_or_a_reason() {
    let mut stats = ServerStats::default();
    // Every optional part present, so its fields are listed and its
    // families written.
    stats.otel = Some(OtelStats::default());
    let mut tls = TlsStats::default();
    tls.certificates = vec![("default".to_owned(), Some(1_900_000_000))];
    stats.tls = Some(tls);
    stats.messages.topics = vec![TopicCount::new("other", 0, 0)];
    let fields = fields(&stats);
    assert!(fields.len() > 60, "the Debug output read wrong: {fields:?}");
    let listed: BTreeSet<String> = SHOWN
        .iter()
        .map(|(f, _)| f)
        .chain(NOT_SHOWN.iter().map(|(f, _)| f))
        .map(|f| f.to_string())
        .collect();
    let forgotten: Vec<_> = fields.difference(&listed).collect();
    assert!(
        forgotten.is_empty(),
        "ServerStats fields in neither SHOWN (with the /metrics family that shows them) nor NOT_SHOWN (with why): {forgotten:?}"
    );
    let gone: Vec<_> = listed.difference(&fields).collect();
    assert!(
        gone.is_empty(),
        "listed, but not fields of ServerStats: {gone:?}"
    );
    let text = megaconn::metrics::render(&stats);
    for (field, family) in SHOWN {
        let described = format!("# TYPE megaconn_{family} ");
        assert!(
            text.contains(&described),
            "{field}'s family megaconn_{family} is not in /metrics:\n{text}"
        );
    }
}
