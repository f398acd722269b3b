//! The families of a single process's `/metrics` that the supervisor's
//! (`serve --processes`) carries beyond `shared_stats.rs`'s first ones,
//! one row each ([`ROWS`]), and the per-topic series of `--topic-metrics`
//! ([`topics`](self#topics)): what each worker process copies into its
//! slot of the shared block, how the supervisor adds the slots up, and how
//! it writes them, under the names and labels a single process uses.
//!
//! # How values add up
//!
//! A counter of a process's own traffic is summed over the processes,
//! those that exited included (their last copy, kept); a gauge is summed
//! over the live ones. A per-topic publish count is neither: every worker
//! process's hub takes each publish (the supervisor relays `PUB` to all of
//! them, `fanout.rs`), so each counts it whole and a sum would count it
//! once per process. The supervisor shows the largest (a process's count
//! since its start: a process restarted meanwhile has fewer), kept when
//! that process exits so that it never goes backwards.
//!
//! # Topics
//!
//! `2 × (MAX_TOPIC_METRICS + 1)` values a slot, named topic `i` at `i` and
//! `other` at [`MAX_TOPIC_METRICS`](megaconn::MAX_TOPIC_METRICS), and the
//! names themselves (the supervisor does not resolve `--topic-metrics`
//! itself: whatever the processes count by is what it shows), packed into
//! the slot's words once per process (they do not change while it runs).
//! Every process has the same list (the same configuration); the first
//! live slot's names stand, and the last names read are kept for the
//! counts of processes that exited.
//!
//! # Not here
//!
//! What a single process shows that the supervisor does not, or shows
//! otherwise, is listed with the reason in `shared_families_tests.rs`'s
//! audit, which fails for any family of a single process in neither place.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed, Ordering::Release};
use std::sync::Mutex;

use megaconn::metrics::{
    ACCEPT_ERRNO_LABELS, CLOSE_REASON_LABELS, MESSAGE_PROTOCOL_LABELS, PROXY_HEADER_LABELS,
    TLS_CLIENT_CERT_REFUSAL_LABELS, TLS_HANDSHAKE_LABELS,
};
use megaconn::{ServerStats, MAX_TOPIC_METRICS};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// How the processes' values of a field add up (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Summed, exited processes' included.
    Counter,
    /// Summed over the live processes.
    Gauge,
    /// The largest, exited processes' included: each process counts the
    /// same events whole.
    Largest,
}

/// One family: its name as a single process writes it (without
/// `megaconn_`, its unit or `_total`), its kind, its label and the label's
/// values (`None`: one series, unlabelled), and how its values are read
/// from a process's [`ServerStats`] (one per label value, in order).
pub struct Row {
    /// The family's name, without `megaconn_`, its unit or `_total`.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Whether its unit is bytes (`_bytes` after the name).
    pub bytes: bool,
    /// How the processes' values add up.
    pub kind: Kind,
    /// Its label and the label's values, in slot order; `None`: one
    /// unlabelled series.
    pub labels: Option<(&'static str, &'static [&'static str])>,
    /// Writes a process's values (one per label value) into the slice.
    pub read: fn(&ServerStats, &mut [i64]),
}

impl Row {
    /// How many values it takes in a slot.
    const fn width(&self) -> usize {
        match self.labels {
            Some((_, values)) => values.len(),
            None => 1,
        }
    }
}

/// A count as a slot's value (they are `i64`).
fn n(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Each label's count of `pairs` (a [`ServerStats`] list of label and
/// count, every label present) into `out`, in the order of `labels`: by
/// label, not by place, so that a label the library has and this list not
/// (or the reverse) cannot land in another's value.
fn by_label(pairs: &[(&str, u64)], labels: &[&str], out: &mut [i64]) {
    for (value, label) in out.iter_mut().zip(labels) {
        *value = pairs.iter().find(|(l, _)| l == label).map_or(0, |p| n(p.1));
    }
}

/// The families carried beyond `shared_stats.rs`'s own, in slot order.
pub const ROWS: &[Row] = &[
    Row {
        name: "connections_closed",
        help: "Connections ended by the engine, by reason, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("reason", CLOSE_REASON_LABELS)),
        read: |s, v| by_label(&s.request_metrics.closed_by_reason, CLOSE_REASON_LABELS, v),
    },
    Row {
        name: "accept_errors",
        help: "Failed accept calls, by errno, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("errno", &ACCEPT_ERRNO_LABELS)),
        read: |s, v| {
            by_label(
                &s.request_metrics.accept_errors_by_errno,
                &ACCEPT_ERRNO_LABELS,
                v,
            )
        },
    },
    Row {
        name: "proxy_headers",
        help: "Connections from proxy_protocol sources by how their PROXY protocol header went (ok, local, missing, invalid, too_large), all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("result", PROXY_HEADER_LABELS)),
        read: |s, v| by_label(&s.proxy_headers, PROXY_HEADER_LABELS, v),
    },
    Row {
        name: "tls_handshakes",
        help: "TLS handshakes by outcome, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("outcome", TLS_HANDSHAKE_LABELS)),
        read: |s, v| by_label(&s.tls_handshakes, TLS_HANDSHAKE_LABELS, v),
    },
    Row {
        name: "tls_client_cert_refusals",
        help: "Client certificates refused at the TLS handshake, by reason, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("reason", TLS_CLIENT_CERT_REFUSAL_LABELS)),
        read: |s, v| by_label(&s.tls_client_cert_refusals, TLS_CLIENT_CERT_REFUSAL_LABELS, v),
    },
    Row {
        name: "connections_upgraded",
        help: "Connections handed to a handler by an upgrade (101), all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.request_metrics.upgraded),
    },
    Row {
        name: "connections_parks",
        help: "Times an idle connection went into the parking lot, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.parks),
    },
    Row {
        name: "connections_wakes",
        help: "Parked connections woken, by kind (cold: served as a bare socket; hot: busy again, waits as a task), all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("kind", &["cold", "hot"])),
        read: |s, v| v.copy_from_slice(&[n(s.wakes_cold), n(s.wakes_hot)]),
    },
    Row {
        name: "connections_wakes_without_task",
        help: "Cold wakes served whole without spawning a task, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.wakes_without_task),
    },
    Row {
        name: "parking_epoll_ctl",
        help: "epoll_ctl calls on the parking lots' epoll sets, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.parking_epoll_ctl),
    },
    Row {
        name: "parking_wakeups",
        help: "Turns in which a parking lot served woken sockets, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.parking_wakeups),
    },
    Row {
        name: "parking_wake_batches",
        help: "Times a busy parking lot held its wake-ups back for one park_wake_batch window, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.parking_wake_batches),
    },
    Row {
        name: "shutdown_drain_pending",
        help: "Connections a paced shutdown (shutdown_drain_rate) has still to close, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = s.shutdown_drain_pending,
    },
    Row {
        name: "connections_adopted",
        help: "Parked connections taken over from the process this one replaced (zero-downtime upgrade), all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.adopted),
    },
    Row {
        name: "connections_handover_refused",
        help: "Parked connections an upgrade could not move, closed instead, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.handover_refused),
    },
    Row {
        name: "connections_aged_out",
        help: "Connections closed at an idle point for being older than max_connection_age, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.aged_out),
    },
    Row {
        name: "worker_stalls",
        help: "Times a worker's event loop stayed away past stall_threshold, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.worker_stalls),
    },
    Row {
        name: "accept_waits_at_limit",
        help: "Times a connection waiting to be accepted found max_connections reached, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.accept_waits_at_limit),
    },
    Row {
        name: "request_body",
        help: "Request body bytes received, all worker processes.",
        bytes: true,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.request_metrics.request_body_bytes),
    },
    Row {
        name: "response_body",
        help: "Response body bytes the service produced (without framing), all worker processes.",
        bytes: true,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.request_metrics.response_body_bytes),
    },
    Row {
        name: "requests_in_flight",
        help: "Requests started and not yet finished, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = s.request_metrics.in_flight,
    },
    Row {
        name: "handler_cancelled",
        help: "Handlers dropped because the client went away before their response head, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.cancelled),
    },
    Row {
        name: "responses_cut",
        help: "Responses whose body the client cut while it was being sent, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("by", &["client"])),
        read: |s, v| v[0] = n(s.responses_cut),
    },
    Row {
        name: "buffers_checked_out",
        help: "Read/write buffers taken from the worker pools, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = s.buffers_checked_out,
    },
    Row {
        name: "buffers_pooled",
        help: "Buffers resting in the worker pools, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = s.buffers_pooled,
    },
    Row {
        name: "message_frames",
        help: "Frames (messages) of message protocols, by direction, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some(("direction", &["in", "out"])),
        read: |s, v| v.copy_from_slice(&[n(s.messages.frames_in), n(s.messages.frames_out)]),
    },
    Row {
        name: "message",
        help: "Bytes of message protocols' connections, headers included, by direction, all worker processes.",
        bytes: true,
        kind: Kind::Counter,
        labels: Some(("direction", &["in", "out"])),
        read: |s, v| v.copy_from_slice(&[n(s.messages.bytes_in), n(s.messages.bytes_out)]),
    },
    Row {
        name: "message_pushes",
        help: "Messages the hub delivered (one per connection reached), all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.messages.pushes),
    },
    Row {
        name: "message_hub_messages",
        help: "Messages the workers took from their process's hub (a publish relayed to every worker process counts once per worker of each), all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.messages.hub_messages),
    },
    Row {
        name: "message_queue_drops",
        help: "Pushes that did not reach their connection's peer whole, by cause, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: Some((
            "cause",
            &["slow_consumer", "droppable", "shutdown", "closed"],
        )),
        read: |s, v| {
            let m = &s.messages;
            v.copy_from_slice(&[
                n(m.queue_drops_slow_consumer),
                n(m.queue_drops_droppable),
                n(m.queue_drops_shutdown),
                n(m.queue_drops_closed),
            ]);
        },
    },
    Row {
        name: "message_heartbeats_sent",
        help: "Server heartbeat frames sent, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.messages.heartbeats_sent),
    },
    Row {
        name: "message_heartbeat_timeouts",
        help: "Connections closed because the peer sent nothing within heartbeat_timeout, all worker processes.",
        bytes: false,
        kind: Kind::Counter,
        labels: None,
        read: |s, v| v[0] = n(s.messages.heartbeat_timeouts),
    },
    Row {
        name: "message_deliveries_pending",
        help: "Connections a broadcast or publish under way has yet to reach, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = n(s.messages.deliveries_pending),
    },
    Row {
        name: "message_hub_queued",
        help: "Hub messages waiting in the workers' queues, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = n(s.messages.hub_queued),
    },
    Row {
        name: "message_hub_queued_bytes",
        help: "Bytes of the hub messages waiting in the workers' queues, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = n(s.messages.hub_queued_bytes),
    },
    Row {
        name: "message_subscriptions",
        help: "Topic subscriptions held by message connections (a connection in two topics counts twice), all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: None,
        read: |s, v| v[0] = n(s.messages.subscriptions),
    },
    Row {
        name: "message_connections",
        help: "Message connections open (framed TCP, WebSocket, SSE), awake or parked, by protocol: what a broadcast reaches, all worker processes.",
        bytes: false,
        kind: Kind::Gauge,
        labels: Some(("protocol", &MESSAGE_PROTOCOL_LABELS)),
        read: |s, v| {
            for (value, &count) in v.iter_mut().zip(&s.messages.connections_by_protocol) {
                *value = n(count);
            }
        },
    },
];

/// The values [`ROWS`] take in a slot.
const fn rows_width() -> usize {
    let mut width = 0;
    let mut i = 0;
    while i < ROWS.len() {
        width += ROWS[i].width();
        i += 1;
    }
    width
}

/// Where the rows' values end in a slot's extra values, and the topics'
/// begin: subscribers by topic, publishes by topic, the names' length in
/// bytes, then the names.
const ROWS_END: usize = rows_width();
/// Topic values: `MAX_TOPIC_METRICS` named, then `other`.
const TOPICS: usize = MAX_TOPIC_METRICS + 1;
const SUBSCRIBERS: usize = ROWS_END;
const PUBLISHES: usize = SUBSCRIBERS + TOPICS;
const NAMES_LEN: usize = PUBLISHES + TOPICS;
const NAMES: usize = NAMES_LEN + 1;
/// Room for the names: each a 2-byte length and its bytes, up to 255
/// bytes (`max_topic_bytes`' default) for each of the most there can be.
/// Names that do not fit are not written (no topic series then: logged).
const NAMES_BYTES: usize = MAX_TOPIC_METRICS * (2 + 255);

/// The values a process slot holds beyond `shared_stats.rs`'s own.
pub const WIDTH: usize = NAMES + NAMES_BYTES.div_ceil(8);

/// How the values at `field` (of [`WIDTH`]) add up.
pub fn kind(field: usize) -> Kind {
    if field >= ROWS_END {
        return match field {
            PUBLISHES..NAMES_LEN => Kind::Largest,
            _ => Kind::Gauge,
        };
    }
    let mut start = 0;
    for row in ROWS {
        if field < start + row.width() {
            return row.kind;
        }
        start += row.width();
    }
    unreachable!("every field below ROWS_END is a row's")
}

/// Copies a process's `s` into its slot's extra values `slot`.
pub fn publish(slot: &[AtomicI64], s: &ServerStats) {
    let mut values = [0i64; ROWS_END];
    let mut at = 0;
    for row in ROWS {
        (row.read)(s, &mut values[at..at + row.width()]);
        at += row.width();
    }
    for (field, v) in slot.iter().zip(values) {
        field.store(v, Relaxed);
    }
    let topics = &s.messages.topics;
    let Some((other, named)) = topics.split_last() else {
        return;
    };
    for (i, t) in named.iter().take(MAX_TOPIC_METRICS).enumerate() {
        slot[SUBSCRIBERS + i].store(n(t.subscribers), Relaxed);
        slot[PUBLISHES + i].store(n(t.publishes), Relaxed);
    }
    slot[SUBSCRIBERS + MAX_TOPIC_METRICS].store(n(other.subscribers), Relaxed);
    slot[PUBLISHES + MAX_TOPIC_METRICS].store(n(other.publishes), Relaxed);
    // The names once (they do not change while a process runs; a slot a
    // process left is zeroed, `retire`): the bytes, then their length,
    // which a reader loads first.
    if slot[NAMES_LEN].load(Relaxed) == 0 {
        let names: Vec<&str> = named.iter().map(|t| t.topic.as_str()).collect();
        write_names(slot, &names);
    }
}

/// Packs `names` into `slot`'s name words: each a big-endian `u16`
/// length and its bytes; `NAMES_LEN` last (`Release`), so that a reader
/// that sees a length sees the bytes.
fn write_names(slot: &[AtomicI64], names: &[&str]) {
    let mut bytes = Vec::new();
    for name in names {
        let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&name.as_bytes()[..usize::from(len)]);
    }
    if bytes.len() > NAMES_BYTES {
        tracing::warn!(
            bytes = bytes.len(),
            room = NAMES_BYTES,
            "--topic-metrics: the topics' names are too long for the supervisor's shared block; its /metrics shows no per-topic series (each worker process counts them still)"
        );
        // Tried once: a length of -1 is neither 0 (`publish` would try,
        // and warn, again every second) nor a length `read_names` takes.
        slot[NAMES_LEN].store(-1, Release);
        return;
    }
    for (word, chunk) in slot[NAMES..].iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        word.store(i64::from_be_bytes(b), Relaxed);
    }
    // Never 0 once written, even for an empty list (then `other` alone).
    slot[NAMES_LEN].store(bytes.len() as i64 + 1, Release);
}

/// The names `slot` holds, if its process wrote them.
fn read_names(slot: &[AtomicI64]) -> Option<Vec<String>> {
    let len = usize::try_from(slot[NAMES_LEN].load(std::sync::atomic::Ordering::Acquire))
        .ok()?
        .checked_sub(1)?;
    let bytes: Vec<u8> = slot[NAMES..]
        .iter()
        .flat_map(|w| w.load(Relaxed).to_be_bytes())
        .take(len)
        .collect();
    let mut names = Vec::new();
    let mut rest = &bytes[..];
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b]));
        let name = tail.get(..n)?;
        names.push(String::from_utf8_lossy(name).into_owned());
        rest = &tail[n..];
    }
    Some(names)
}

/// Moves a slot whose process exited into the retired values: counters
/// added, the largest kept, gauges gone; the slot zeroed for the next.
/// Only the names' words written are looked at (the rest are zero): a
/// slot is ~8,900 values, ~8,200 of them room for names.
pub fn retire(slot: &[AtomicI64], retired: &[AtomicI64]) {
    let written = usize::try_from(slot[NAMES_LEN].load(Relaxed)).unwrap_or(0);
    let end = (NAMES + written.div_ceil(8)).min(slot.len());
    for (field, (value, kept)) in slot[..end].iter().zip(retired).enumerate() {
        let v = value.swap(0, Relaxed);
        if v == 0 {
            continue;
        }
        match kind(field) {
            Kind::Counter => {
                kept.fetch_add(v, Relaxed);
            }
            Kind::Largest => {
                kept.fetch_max(v, Relaxed);
            }
            Kind::Gauge => {}
        }
    }
}

/// The processes' extra values added up, for one scrape.
#[derive(Debug, Default)]
pub struct Extra {
    rows: Vec<i64>,
    /// Each topic's name (`other` last), subscribers and publishes; empty
    /// without `--topic-metrics`.
    topics: Vec<(String, i64, i64)>,
}

/// The extra values of the live slots `live` and the retired ones added
/// up ([`Kind`]); `names`: the topics' names read last, kept for when no
/// live process has written its own yet.
pub fn total<'a>(
    live: impl Iterator<Item = &'a [AtomicI64]> + Clone,
    retired: &[AtomicI64],
    names: &Mutex<Vec<String>>,
) -> Extra {
    let add = |field: usize| -> i64 {
        let kept = retired[field].load(Relaxed);
        let values = live.clone().map(|slot| slot[field].load(Relaxed));
        match kind(field) {
            Kind::Counter => kept + values.sum::<i64>(),
            Kind::Gauge => values.sum(),
            Kind::Largest => values.fold(kept, i64::max),
        }
    };
    let rows = (0..ROWS_END).map(&add).collect();
    let mut kept = names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(now) = live.clone().find_map(read_names) {
        *kept = now;
    }
    let any = live.clone().any(|slot| slot[NAMES_LEN].load(Relaxed) != 0);
    let topics = if any || !kept.is_empty() {
        kept.iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), add(SUBSCRIBERS + i), add(PUBLISHES + i)))
            .chain(std::iter::once((
                "other".to_owned(),
                add(SUBSCRIBERS + MAX_TOPIC_METRICS),
                add(PUBLISHES + MAX_TOPIC_METRICS),
            )))
            .collect()
    } else {
        Vec::new()
    };
    Extra { rows, topics }
}

impl Extra {
    /// Writes the families, as a single process names them.
    pub fn encode(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let bytes = Unit::Bytes;
        let mut at = 0;
        for row in ROWS {
            let values = &self.rows[at..at + row.width()];
            at += row.width();
            let kind = match row.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter | Kind::Largest => MetricType::Counter,
            };
            let unit = row.bytes.then_some(&bytes);
            let mut m = e.encode_descriptor(row.name, row.help, unit, kind)?;
            match row.labels {
                None => one(values[0], row.kind, m)?,
                Some((key, labels)) => {
                    for (label, &v) in labels.iter().zip(values) {
                        one(v, row.kind, m.encode_family(&[(key, *label)])?)?;
                    }
                }
            }
        }
        if self.topics.is_empty() {
            return Ok(());
        }
        let mut m = e.encode_descriptor(
            "topic_subscribers",
            "Subscriptions held now to each topic named in --topic-metrics, exact, summed over the worker processes; topic=\"other\": to every other topic.",
            None,
            MetricType::Gauge,
        )?;
        for (topic, subscribers, _) in &self.topics {
            ConstGauge::new(*subscribers).encode(m.encode_family(&[("topic", topic.as_str())])?)?;
        }
        let mut m = e.encode_descriptor(
            "topic_publishes",
            "Publishes the hub took to each topic named in --topic-metrics: every worker process's hub takes each publish, so this is the largest count of one (since its start), not a sum; topic=\"other\": to every other topic.",
            None,
            MetricType::Counter,
        )?;
        for (topic, _, publishes) in &self.topics {
            ConstCounter::new(*publishes as u64)
                .encode(m.encode_family(&[("topic", topic.as_str())])?)?;
        }
        Ok(())
    }
}

/// One value of a family of `kind`.
fn one(
    v: i64,
    kind: Kind,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Gauge => ConstGauge::new(v).encode(encoder),
        _ => ConstCounter::new(v.max(0) as u64).encode(encoder),
    }
}
