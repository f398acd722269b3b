//! Prometheus metrics: per-request recording on the hot path, and exposition.
//!
//! # Recording
//!
//! Every worker counts into its own `WorkerStats` (see `stats.rs`): fixed
//! arrays of relaxed atomics indexed by method, status class, close reason,
//! errno and duration bucket. Nothing is allocated, hashed or formatted per
//! request, and nothing is shared between workers. A request costs two clock
//! reads and a handful of uncontended stores; with the `metrics` cargo feature
//! off (it is on by default) recording compiles to nothing and the per-request
//! series stay zero.
//!
//! # Exposition
//!
//! [`render`] (or [`ServerHandle::render_metrics`](crate::ServerHandle::render_metrics))
//! turns a [`ServerStats`] snapshot, summed over workers at scrape time, into
//! the Prometheus/OpenMetrics text format with the `prometheus-client` crate:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `megaconn_connections_open` | gauge | |
//! | `megaconn_connections_idle` | gauge | |
//! | `megaconn_connections_parked` | gauge | |
//! | `megaconn_connections_accepted_total` | counter | |
//! | `megaconn_connections_closed_total` | counter | `reason` |
//! | `megaconn_connections_upgraded_total` | counter | |
//! | `megaconn_connections_parks_total` | counter | |
//! | `megaconn_connections_wakes_total` | counter | `kind` (`cold`, `hot`) |
//! | `megaconn_connections_wakes_without_task_total` | counter | |
//! | `megaconn_parking_epoll_ctl_total` | counter | |
//! | `megaconn_parking_wakeups_total` | counter | |
//! | `megaconn_parking_wake_batches_total` | counter | |
//! | `megaconn_accept_waits_at_limit_total` | counter | |
//! | `megaconn_worker_stalls_total` | counter | |
//! | `megaconn_connections_adopted_total` | counter | |
//! | `megaconn_connections_handover_refused_total` | counter | |
//! | `megaconn_connections_aged_out_total` | counter | |
//! | `megaconn_shutdown_drain_pending` | gauge | |
//! | `megaconn_http2_grown_windows_bytes` | gauge | |
//! | `megaconn_requests_total` | counter | `method`, `status_class` |
//! | `megaconn_request_duration_seconds` | histogram | |
//! | `megaconn_request_body_bytes_total` | counter | |
//! | `megaconn_response_body_bytes_total` | counter | |
//! | `megaconn_requests_in_flight` | gauge | |
//! | `megaconn_panics_total` | counter | |
//! | `megaconn_handler_cancelled_total` | counter | |
//! | `megaconn_responses_cut_total` | counter | `by` (`client`) |
//! | `megaconn_timeouts_total` | counter | |
//! | `megaconn_protocol_errors_total` | counter | |
//! | `megaconn_limit_hits_total` | counter | `limit` (`max_header_bytes`, `max_headers`, `max_body_bytes`, …: `limits::LimitHit::LABELS`, every one always present) |
//! | `megaconn_accept_errors_total` | counter | `errno` |
//! | `megaconn_connections_rejected_total` | counter | `limit` (`accept_rate`, `max_connections_per_ip`: [`REJECTED_LABELS`]) |
//! | `megaconn_tls_alerts_received_total` | counter | `alert` (`unknown_ca`, `bad_certificate`, …, `other`) |
//! | `megaconn_tls_handshakes_total` | counter | `outcome` (`completed`, `abandoned`, `failed`, `timeout`, `client_cert`, `crl`, `plain_http`, `shutdown`) |
//! | `megaconn_tls_client_cert_refusals_total` | counter | `reason` (`missing`, `unknown_ca`, `revoked`, `expired`, `not_yet_valid`, `bad`) |
//! | `megaconn_proxy_headers_total` | counter | `result` (`ok`, `local`, `missing`, `invalid`, `too_large`) |
//! | `megaconn_tls_reloads_total` | counter | `outcome` (`ok`, `failed`) (only with TLS) |
//! | `megaconn_tls_certificate_expiry_seconds` | gauge | `server_name` (`default`, or the SNI name a certificate is for) (only with TLS) |
//! | `megaconn_worker_connections` | gauge | `worker` |
//! | `megaconn_buffers_checked_out` | gauge | |
//! | `megaconn_buffers_pooled` | gauge | |
//! | `megaconn_otel_spans_exported_total` | counter | (only when tracing) |
//! | `megaconn_otel_spans_dropped_total` | counter | (only when tracing) |
//! | `megaconn_otel_spans_failed_total` | counter | (only when tracing) |
//! | `megaconn_otel_spans_queued` | gauge | (only when tracing) |
//! | `megaconn_message_frames_total` | counter | `direction` (`in`, `out`) |
//! | `megaconn_message_bytes_total` | counter | `direction` (`in`, `out`) |
//! | `megaconn_message_pushes_total` | counter | |
//! | `megaconn_message_queue_drops_total` | counter | `cause` (`slow_consumer`, `droppable`, `shutdown`, `closed`) |
//! | `megaconn_message_heartbeats_sent_total` | counter | |
//! | `megaconn_message_heartbeat_timeouts_total` | counter | |
//! | `megaconn_message_hub_messages_total` | counter | |
//! | `megaconn_message_deliveries_pending` | gauge | |
//! | `megaconn_message_hub_queued` | gauge | |
//! | `megaconn_message_hub_queued_bytes` | gauge | |
//! | `megaconn_message_subscriptions` | gauge | |
//! | `megaconn_message_connections` | gauge | `protocol` (`framed`, `websocket`, `sse`: [`MESSAGE_PROTOCOL_LABELS`]) |
//! | `megaconn_ws_closes_total` | counter | `direction` (`sent`, `received`), `code` ([`WS_CLOSE_CODE_LABELS`]: `1000`, `1001`, `1006`, `4xxx`, `other`, …) |
//! | `megaconn_publish_lag_seconds` | histogram | |
//! | `megaconn_topic_subscribers` | gauge | `topic` (each named in `Builder::topic_metrics`, then `other`) (only with that setting) |
//! | `megaconn_topic_publishes_total` | counter | `topic` (as above) (only with that setting) |
//! | `megaconn_build_info` | gauge, always 1 | `version` |
//! | `process_cpu_seconds_total` | counter | |
//! | `process_resident_memory_bytes` | gauge | |
//! | `process_open_fds` | gauge | |
//! | `process_max_fds` | gauge | |
//! | `process_start_time_seconds` | gauge | |
//!
//! The last six are the process's, not the server's traffic: read from
//! `/proc` at scrape time by [`ProcessCollector`] (the Prometheus client
//! libraries' `process_*` conventions), nothing counted per connection;
//! [`render_with`] and `ServerHandle::render_metrics` write them after the
//! snapshot, [`render`] does not.
//!
//! The `message_` series count message protocols' connections (framed
//! TCP, WebSocket and SSE): frames (messages) and their bytes with
//! headers, hub deliveries, pushes that did not reach the peer whole
//! (`queue_drops`, by `cause`: `slow_consumer`, refused by a full
//! outbound queue, which closes the connection, or left unwritten by
//! that close; `droppable`, a droppable push a connection was too far
//! behind for, which leaves it open; `shutdown`, left in a stopped
//! worker's hub queue; `closed`, lost when the connection closed for any
//! other reason: left queued, or not written whole), server
//! heartbeats sent and peers closed for silence;
//! `deliveries_pending` is how many connections a broadcast or publish under
//! way has yet to reach (it is delivered a slice at a time, so the workers
//! keep answering heartbeats meanwhile): 0 once every delivery is done;
//! `hub_queued` is how many hub messages wait behind it in the workers'
//! queues (bounded by `Builder::hub_queue` and `hub_queue_bytes`; a
//! message over either bound is dropped and counted in `megaconn_limit_hits_total{limit="hub_queue"}`),
//! `hub_queued_bytes` what they hold (payloads and 56-byte entries, per
//! worker queue), to read against `hub_queue_bytes` times the workers;
//! `subscriptions` the topic subscriptions held, exact (a connection in
//! two topics counts twice; per topic, `megaconn::subscribers`);
//! `connections` the message connections open, awake or parked, by
//! protocol: what a broadcast reaches, summed
//! [`ServerHandle::message_connections`](crate::ServerHandle::message_connections)
//! (an awake one counts while registered for pushes, which it is when the
//! server has a hub).
//!
//! The `topic_` series exist only for the topics an operator named
//! (`Builder::topic_metrics`, at most `MAX_TOPIC_METRICS`), every other
//! topic summed in `topic="other"`: bounded whatever the number of
//! topics (a million devices with a topic each are one `other` series).
//! `topic_subscribers` is exact per server; `topic_publishes_total`
//! counts each publish the hub took once, whatever its subscribers.
//!
//! An application with a `prometheus-client` registry of its own puts
//! these series in it instead, to serve them on its own `/metrics`:
//! [`ServerHandle::register_metrics`](crate::ServerHandle::register_metrics)
//! (a collector that reads the server at each scrape). There a server with
//! a name ([`Builder::name`](crate::Builder::name)) has a `server` label
//! first on every series, and several named servers share one registry,
//! each family written once (`families.rs`, `app_registry.rs`).
//!
//! The body is OpenMetrics text (it ends with `# EOF`): serve it as
//! [`OPENMETRICS_CONTENT_TYPE`]. Labelled `text/plain; version=0.0.4` it
//! fails `promtool check metrics`, and 0.0.4 parsers take its counters as
//! untyped.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::observe::close::CloseReason;
use crate::observe::families::Families;
pub use crate::observe::process::{ProcessCollector, ProcessError, ProcessStats, VERSION};
pub use crate::observe::rooms::{
    RoomStats, WS_CLOSE_CODES, WS_CLOSE_CODE_LABELS, WS_CLOSE_DIRECTION_LABELS,
};
use crate::observe::stats::{MessageStats, ServerStats, StatsSource, TlsStats, WorkerStats};
use crate::observe::trace::{ErrorClass, SpanSlot};
/// The `prometheus-client` megaconn is built with: an application's
/// [`Registry`] given to
/// [`ServerHandle::register_metrics`](crate::ServerHandle::register_metrics)
/// must be of this version (0.25); name it as
/// `megaconn::metrics::prometheus_client::registry::Registry`, or depend on
/// the same version.
pub use prometheus_client;

/// Labels of `method`, in counter order; any other method counts as `other`.
pub const METHOD_LABELS: [&str; METHODS] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// Labels of `status_class`, in counter order. `none`: the exchange ended
/// without a response (the client left, or the connection failed first),
/// or the forced shutdown (at `shutdown_timeout`) cut it off.
pub const STATUS_CLASS_LABELS: [&str; STATUS_CLASSES] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Labels of `errno` on `megaconn_accept_errors_total`, in counter order.
pub const ACCEPT_ERRNO_LABELS: [&str; ACCEPT_ERRNOS] =
    ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "other"];

/// Labels of `limit` on `megaconn_limit_hits_total`, in counter order (every
/// one always present; [`ServerStats::limit_hits`] pairs them with counts).
/// For a reader that adds up several processes' counts (`megaconn serve
/// --processes`' supervisor) and must name them as one process does.
pub const LIMIT_HIT_LABELS: &[&str] = &crate::observe::limits::LimitHit::LABELS;

/// Labels of `reason` on `megaconn_connections_closed_total`, in the order
/// of [`RequestStats::closed_by_reason`]; of `result` on
/// `megaconn_proxy_headers_total` ([`ServerStats::proxy_headers`]); of
/// `outcome` on `megaconn_tls_handshakes_total`
/// ([`ServerStats::tls_handshakes`]); of `reason` on
/// `megaconn_tls_client_cert_refusals_total`
/// ([`ServerStats::tls_client_cert_refusals`]): every one always present.
/// For a reader that adds up several processes' counts, as
/// [`LIMIT_HIT_LABELS`].
pub const CLOSE_REASON_LABELS: &[&str] = &CloseReason::LABELS;
/// See [`CLOSE_REASON_LABELS`].
pub const PROXY_HEADER_LABELS: &[&str] = &crate::observe::stats::PROXY_HEADER_RESULTS;
/// See [`CLOSE_REASON_LABELS`].
pub const TLS_HANDSHAKE_LABELS: &[&str] = &crate::observe::stats::HandshakeOutcome::LABELS;
/// See [`CLOSE_REASON_LABELS`].
pub const TLS_CLIENT_CERT_REFUSAL_LABELS: &[&str] = &crate::observe::stats::CertRefusal::LABELS;

/// How many message protocols
/// [`MessageStats::connections_by_protocol`] tells apart.
pub const MESSAGE_PROTOCOLS: usize = 3;

/// Labels of `protocol` on `megaconn_message_connections`, in the order of
/// [`MessageStats::connections_by_protocol`]: framed TCP, WebSocket and
/// Server-Sent Events on the native engine (axum's WebSocket API,
/// `megaconn::axum_ws`, is not among them, as it is not among what a
/// broadcast reaches).
pub const MESSAGE_PROTOCOL_LABELS: [&str; MESSAGE_PROTOCOLS] = ["framed", "websocket", "sse"];

/// Labels of `limit` on `megaconn_connections_rejected_total`, in the order
/// of [`ServerStats::rejected_accept_rate`] and
/// [`ServerStats::rejected_per_ip`]: each the name of the setting that
/// refused the connection, as its log line says (`Builder::accept_rate`,
/// `Builder::max_connections_per_ip`, the flags and keys of the same
/// names). Before 2026-12-05 the second was `per_ip`.
pub const REJECTED_LABELS: [&str; 2] = ["accept_rate", "max_connections_per_ip"];

/// Upper bounds (seconds) of the request duration histogram's buckets, from
/// 100 µs to 10 s; a last bucket takes everything slower.
pub const DURATION_BUCKETS: [f64; DURATION_BOUNDS] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub(crate) const METHODS: usize = 8;
pub(crate) const STATUS_CLASSES: usize = 6;
pub(crate) const ACCEPT_ERRNOS: usize = 5;
pub(crate) const DURATION_BOUNDS: usize = 16;
/// Close reasons: every [`CloseReason`], then the upgrade count (an upgrade
/// is a hand-over, not a close: the connection's close comes later).
pub(crate) const CLOSE_REASONS: usize = CloseReason::COUNT + 1;
const STATUS_NONE: u8 = 5;

/// [`DURATION_BUCKETS`] in nanoseconds, for the hot path.
#[cfg(feature = "metrics")]
const DURATION_BUCKET_NANOS: [u64; DURATION_BOUNDS] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The request counters of one worker, appended to its `WorkerStats`.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    /// Finished requests by method and status class.
    pub by_class: [[AtomicU64; STATUS_CLASSES]; METHODS],
    /// Request durations per bucket (not cumulative); the last is `+Inf`.
    pub duration_buckets: [AtomicU64; DURATION_BOUNDS + 1],
    /// Sum of request durations, in nanoseconds.
    pub duration_nanos: AtomicU64,
    /// Request body bytes received (read by the handler or drained).
    pub request_body_bytes: AtomicU64,
    /// Request body bytes counted from any thread, with a locked add: an
    /// HTTP/2 connection's that no request's record took, counted by
    /// whichever thread drops the last of the connection and its bodies
    /// (a body may outlive both, on another thread). Summed with
    /// `request_body_bytes` when read; apart from it because that one is
    /// written with a plain load and store (only its worker writes it).
    pub request_body_bytes_shared: AtomicU64,
    /// Response body bytes the service produced.
    pub response_body_bytes: AtomicU64,
    /// Requests started and not yet finished.
    pub in_flight: AtomicI64,
    /// Connections ended, by [`CloseReason::index`] (last: upgraded).
    pub closed_by_reason: [AtomicU64; CLOSE_REASONS],
    /// Failed accepts, by [`ACCEPT_ERRNO_LABELS`].
    pub accept_errors_by_errno: [AtomicU64; ACCEPT_ERRNOS],
}

/// Adds `n` to a counter that only the owning worker thread writes: a plain
/// load and store, no locked read-modify-write. Readers on other threads see
/// some recent value, as with any relaxed counter.
#[cfg(feature = "metrics")]
#[inline]
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Moves a gauge that only the owning worker thread writes (see [`add`]).
#[cfg(feature = "metrics")]
#[inline]
fn add_signed(gauge: &AtomicI64, n: i64) {
    gauge.store(gauge.load(Relaxed).wrapping_add(n), Relaxed);
}

/// A request's method, as an index into [`METHOD_LABELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MethodLabel(u8);

impl MethodLabel {
    /// A request refused before its head was read whole (its method unknown
    /// or not trusted): counted as `other`.
    pub(crate) const UNREAD: MethodLabel = MethodLabel(7);

    /// The label of `method`.
    #[inline]
    pub(crate) fn of(method: &Method) -> MethodLabel {
        let i = if *method == Method::GET {
            0
        } else if *method == Method::HEAD {
            1
        } else if *method == Method::POST {
            2
        } else if *method == Method::PUT {
            3
        } else if *method == Method::DELETE {
            4
        } else if *method == Method::PATCH {
            5
        } else if *method == Method::OPTIONS {
            6
        } else {
            7
        };
        MethodLabel(i)
    }
}

/// Measures a request's duration (nothing, with the `metrics` feature off).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    /// [`clock::now_nanos`](crate::observe::clock::now_nanos) at the start.
    #[cfg(feature = "metrics")]
    started: u64,
}

impl Stopwatch {
    #[inline]
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            started: crate::observe::clock::now_nanos(),
        }
    }

    /// A stopwatch for a request that was whole in its connection's read
    /// buffer when the request before it ended (pipelined behind it),
    /// started at the latest end this thread read ([`LAST_END`]), which
    /// came after that one's, instead of at a fresh reading: the request
    /// was waiting by then (the rule of the lot's turn, `observe/clock.rs`).
    /// A clock read fewer a pipelined request, ~20 ns natively of the
    /// ~280 ns of user time a request at 16 deep (bench/CPU-PER-REQUEST.md,
    /// session 55); callgrind, which runs no vDSO, sees ~10 instructions.
    #[inline(always)]
    fn queued() -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            started: match LAST_END.with(std::cell::Cell::get) {
                0 => crate::observe::clock::now_nanos(),
                last => last,
            },
        }
    }

    /// Nanoseconds since `start` (zero with the `metrics` feature off). The
    /// end is a fresh reading, never the lot turn's: a request served on a
    /// turn started and ended within it, and with the turn's reading at both
    /// ends every heartbeat measured 0 s (its start may take the turn's
    /// reading: it was waiting since then).
    #[inline]
    fn elapsed_nanos(self) -> u64 {
        #[cfg(feature = "metrics")]
        return ended_now().saturating_sub(self.started);
        #[cfg(not(feature = "metrics"))]
        0
    }
}

/// A fresh reading of the clock, kept as this thread's last request end
/// ([`LAST_END`]), where a request pipelined behind it starts.
#[cfg(feature = "metrics")]
#[inline]
fn ended_now() -> u64 {
    let now = crate::observe::clock::read_nanos();
    LAST_END.with(|end| end.set(now));
    now
}

thread_local! {
    /// Set while a worker drops the connections its forced shutdown cut
    /// off ([`dropping_forced`]).
    static FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The end of the last request timed on this thread (the monotonic
    /// clock's nanoseconds, 0 before the first), where a request pipelined
    /// behind one starts ([`Stopwatch::queued`]).
    #[cfg(feature = "metrics")]
    static LAST_END: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `drop_them`, which drops what a worker's forced shutdown (at
/// `shutdown_timeout`) cut off, its connections' tasks: a request whose
/// record drops meanwhile was not served, whatever its handler or the
/// head that went out said (see [`RequestRecord`]'s drop).
pub(crate) fn dropping_forced(drop_them: impl FnOnce()) {
    dropping_with(&FORCED, drop_them);
}

/// Whether this thread is dropping what a forced shutdown cut off
/// ([`dropping_forced`]): a confirmed push's waiter dropped then says the
/// shutdown, not a close (`message/confirm.rs`).
pub(crate) fn is_dropping_forced() -> bool {
    // `try_with`: a waiter may drop while the thread's locals go.
    FORCED.try_with(|f| f.get()).unwrap_or(false)
}

/// Runs `drop_it` with this thread's `flag` set, and clears it after, also
/// if a drop panics: how a drop learns why it is dropped, where the drop
/// itself cannot be told (a task dropped with its runtime, a future with
/// its slot). Here for the forced shutdown ([`dropping_forced`]); the
/// connection core's drop after a panic uses it too.
pub(crate) fn dropping_with(
    flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
    drop_it: impl FnOnce(),
) {
    /// Clears the flag, also if a drop panics.
    struct Clear(&'static std::thread::LocalKey<std::cell::Cell<bool>>);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.with(|f| f.set(false));
        }
    }
    flag.with(|f| f.set(true));
    let _clear = Clear(flag);
    drop_it();
}

/// One request's metrics, collected while its exchange runs and counted when
/// it is dropped (finished, failed or cancelled alike). A request the
/// forced shutdown cut off (its record dropped within [`dropping_forced`])
/// counts as what it was, not served: its status class is `none` (a head
/// may have gone out, its response did not), it is not in the duration
/// histogram (it has no end), it is counted in
/// [`ServerStats::requests_forced`] (with the `metrics` feature off too),
/// and its span's error class is `shutdown`; its access-log line keeps
/// the status that went out, if one did.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct RequestRecord {
    ctx: Rc<dyn StatsSource>,
    /// `ctx.worker_stats().request_metrics`, read when the record is made:
    /// read again through `ctx` when it drops, it was a call through the
    /// `dyn` (12 user-space instructions a request; bench/CPU-PER-REQUEST.md,
    /// session 46). Valid while `ctx` is held: see the drop's `SAFETY`.
    #[cfg(feature = "metrics")]
    metrics: std::ptr::NonNull<RequestCounters>,
    method: MethodLabel,
    status: u8,
    stopwatch: Option<Stopwatch>,
    request_bytes: u64,
    response_bytes: u64,
    /// The exact status sent (0: none), for the access log.
    code: u16,
    /// What the access-log line names, only when the access log is on.
    /// (`ManuallyDrop`, as `span`: the record's drop takes both, and the
    /// drop of the fields after it tested them again.)
    access: ManuallyDrop<Option<Box<AccessLine>>>,
    /// The request's span, when it is traced (ends when the record drops).
    span: ManuallyDrop<SpanSlot>,
}

impl fmt::Debug for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestRecord")
            .field("method", &self.method)
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

/// How a request's access-log line names it: its method and path, each
/// `-` when a head too malformed to read did not give it (nginx writes `-`
/// for a request line it could not read). Boxed when made, so that a
/// request carries one word for it, and nothing with the log off.
#[derive(Debug)]
pub(crate) struct AccessLine {
    method: Option<Method>,
    path: Option<String>,
}

impl AccessLine {
    /// The line of a request with this method and target, when the access
    /// log is `on`; with it off, a bool check and nothing built.
    #[inline]
    pub(crate) fn of(on: bool, method: &Method, uri: &http::Uri) -> Option<Box<AccessLine>> {
        on.then(|| AccessLine::partial(Some(method.clone()), Some(uri.path().to_owned())))
    }

    /// The line of a request of which only what is given could be read.
    pub(crate) fn partial(method: Option<Method>, path: Option<String>) -> Box<AccessLine> {
        let path = path.map(printable);
        Box::new(AccessLine { method, path })
    }
}

/// `path` with what a terminal or a line-based log reader would act on
/// escaped (`\u{9b}`): control characters (C1 ones such as U+009B, an
/// 8-bit CSI, get through `http::Uri`) and the line and paragraph
/// separators. The text log format prints fields other than the message
/// raw; a path comes from the client.
fn printable(path: String) -> String {
    let acts = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !path.chars().any(acts) {
        return path;
    }
    let mut out = String::with_capacity(path.len() + 16);
    for c in path.chars() {
        match acts(c) {
            true => out.extend(c.escape_unicode()),
            false => out.push(c),
        }
    }
    out
}

/// An access-log field: its value, or `-` when there is none.
struct OrDash<'a, T: ?Sized>(Option<&'a T>);

impl<T: fmt::Display + ?Sized> fmt::Display for OrDash<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl RequestRecord {
    /// Turns on the access-log line for this request (`None`: the log is
    /// off), written when the record drops, whatever answered the request.
    #[inline]
    pub(crate) fn logged(mut self, access: Option<Box<AccessLine>>) -> RequestRecord {
        *self.access = access;
        self
    }

    /// Starts timing a request; it is in flight until the record drops.
    #[inline]
    pub(crate) fn start(ctx: Rc<dyn StatsSource>, method: MethodLabel) -> RequestRecord {
        RequestRecord::started(ctx, method, SpanSlot::default(), None, false)
    }

    /// Starts timing a request traced by `span` (its span ends when the
    /// record drops) and logged by `access` ([`RequestRecord::logged`]):
    /// `start(..).traced(span).logged(access)` built at once. (Each of
    /// those takes and returns the 80-byte record by value, and the chain
    /// was copied once per step where HTTP/1.1 builds it for every request,
    /// ~45 user-space instructions; bench/CPU-PER-REQUEST.md, session 43.)
    /// `queued`: the request was whole in its connection's buffer when the
    /// one before it ended (HTTP/1.1 pipelining), and is timed from that
    /// end ([`Stopwatch::queued`]). (Always inlined: out of line, the
    /// record was returned through memory, +38 to +50 instructions a
    /// request, bench/CPU-PER-REQUEST.md, session 55.)
    #[inline(always)]
    pub(crate) fn started(
        ctx: Rc<dyn StatsSource>,
        method: MethodLabel,
        span: SpanSlot,
        access: Option<Box<AccessLine>>,
        queued: bool,
    ) -> RequestRecord {
        let stopwatch = match queued {
            true => Stopwatch::queued(),
            false => Stopwatch::start(),
        };
        RequestRecord::made(ctx, method, Some(stopwatch), span, access)
    }

    /// A request that fails before its exchange starts: counted in
    /// `requests_total`, not in the duration histogram (a flood of refusals
    /// would pull its quantiles toward zero).
    #[inline]
    pub(crate) fn untimed(ctx: Rc<dyn StatsSource>, method: MethodLabel) -> RequestRecord {
        RequestRecord::made(ctx, method, None, SpanSlot::default(), None)
    }

    /// The one place a record is made: in flight from here until it drops.
    #[inline(always)]
    fn made(
        ctx: Rc<dyn StatsSource>,
        method: MethodLabel,
        stopwatch: Option<Stopwatch>,
        span: SpanSlot,
        access: Option<Box<AccessLine>>,
    ) -> RequestRecord {
        #[cfg(feature = "metrics")]
        let metrics = {
            let metrics = &ctx.worker_stats().request_metrics;
            add_signed(&metrics.in_flight, 1);
            std::ptr::NonNull::from(metrics)
        };
        RequestRecord {
            ctx,
            #[cfg(feature = "metrics")]
            metrics,
            method,
            status: STATUS_NONE,
            stopwatch,
            request_bytes: 0,
            response_bytes: 0,
            code: 0,
            access: ManuallyDrop::new(access),
            span: ManuallyDrop::new(span),
        }
    }

    /// Gives the record the request's span, to end when the request ends.
    #[inline]
    pub(crate) fn traced(mut self, span: SpanSlot) -> RequestRecord {
        *self.span = span;
        self
    }

    /// Notes why the request ended badly (timeout, panic, client gone).
    #[inline]
    pub(crate) fn error(&mut self, class: ErrorClass) {
        self.span.error(class);
    }

    /// Notes the class of a close that ended the exchange early.
    #[inline]
    pub(crate) fn closed(&mut self, reason: &CloseReason) {
        if let Some(class) = ErrorClass::of_close(reason) {
            self.span.error(class);
        }
    }

    /// Notes the response's head: its status, and the route the service
    /// matched (for the span), from the head's extensions. (Not a whole
    /// `Parts`: HTTP/1.1 takes the handler's response apart where it lies,
    /// `proto/http1/exchange.rs`, and a `Parts` cannot be made of its
    /// fields without moving the whole response once more.)
    #[inline]
    pub(crate) fn response(&mut self, status: StatusCode, extensions: &http::Extensions) {
        self.status(status);
        self.span.route(extensions);
    }

    /// Notes the route the service matched (for the span), without the
    /// status: for a head that may yet not go out (HTTP/2 takes the head's
    /// parts when it sends it, and a reset stream refuses it).
    #[inline]
    pub(crate) fn route(&mut self, parts: &http::response::Parts) {
        self.span.route(&parts.extensions);
    }

    /// Notes the status of the response head that went out.
    #[inline]
    pub(crate) fn status(&mut self, status: StatusCode) {
        self.code = status.as_u16();
        self.status = (status.as_u16() / 100).clamp(1, 5) as u8 - 1;
    }

    /// The status of the response head that went out, if one did.
    #[inline]
    pub(crate) fn sent(&self) -> Option<StatusCode> {
        StatusCode::from_u16(self.code).ok()
    }

    /// Counts request body bytes received.
    #[inline]
    pub(crate) fn request_bytes(&mut self, n: usize) {
        self.request_bytes += n as u64;
    }

    /// Counts response body bytes produced.
    #[inline]
    pub(crate) fn response_bytes(&mut self, n: usize) {
        self.response_bytes += n as u64;
    }
}

impl Drop for RequestRecord {
    // The rare parts (a forced shutdown's, the span's end, the access-log
    // line) are functions of their own, so that the usual drop saves few
    // registers and needs no large frame (they made it save six and take
    // 600 bytes of stack; bench/CPU-PER-REQUEST.md, session 46).
    #[inline]
    fn drop(&mut self) {
        let forced = FORCED.with(std::cell::Cell::get);
        if forced {
            self.forced();
        }
        self.span.end(self.code);
        if let Some(access) = self.access.take() {
            self.log(&access);
        }
        #[cfg(feature = "metrics")]
        {
            // SAFETY: `metrics` points into the `WorkerStats` that
            // `ctx.worker_stats()` returned when the record was made
            // (`made`), and `ctx` is this record's until after this drop
            // (a field, dropped after it): a `StatsSource` hands out its
            // counters, not a copy, for as long as it lives (the one there
            // is, `WorkerContext`, its `stats`, an `Arc` it never replaces:
            // it is shared behind `Rc`, that field without a `Cell`), and
            // they are only ever shared (`&`, atomics).
            let m = unsafe { self.metrics.as_ref() };
            add_signed(&m.in_flight, -1);
            add(
                &m.by_class[usize::from(self.method.0)][usize::from(self.status)],
                1,
            );
            if let Some(stopwatch) = self.stopwatch.filter(|_| !forced) {
                let nanos = stopwatch.elapsed_nanos();
                let bucket = DURATION_BUCKET_NANOS
                    .iter()
                    .position(|&bound| nanos <= bound)
                    .unwrap_or(DURATION_BOUNDS);
                add(&m.duration_buckets[bucket], 1);
                add(&m.duration_nanos, nanos);
            }
            if self.request_bytes > 0 {
                add(&m.request_body_bytes, self.request_bytes);
            }
            if self.response_bytes > 0 {
                add(&m.response_body_bytes, self.response_bytes);
            }
        }
    }
}

impl RequestRecord {
    /// The record of a request a forced shutdown cut off (its drop within
    /// [`dropping_forced`]): counted as not served.
    #[cold]
    #[inline(never)]
    fn forced(&mut self) {
        self.span.error(ErrorClass::Shutdown);
        self.status = STATUS_NONE;
        // Every record that can be dropped here is of a request counted
        // in `requests` (handed to the service): a refused head's record
        // is dropped where it is made.
        crate::observe::stats::incr(&self.ctx.worker_stats().requests_forced);
    }

    /// Writes the request's access-log line (the log is on).
    #[cold]
    #[inline(never)]
    fn log(&self, access: &AccessLine) {
        let elapsed = self.stopwatch.map_or(0, Stopwatch::elapsed_nanos);
        let (conn, peer) = crate::observe::lifecycle::current_id_and_peer();
        tracing::info!(
            target: "megaconn::access",
            conn,
            peer = %OrDash(peer.as_ref()),
            method = %OrDash(access.method.as_ref()),
            path = %OrDash(access.path.as_deref()),
            status = self.code,
            duration_us = elapsed / 1_000,
            bytes_in = self.request_bytes,
            bytes_out = self.response_bytes,
            "request"
        );
    }
}

impl WorkerStats {
    /// Counts a connection that ended with `reason`.
    #[inline]
    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        #[cfg(feature = "metrics")]
        add(&self.request_metrics.closed_by_reason[reason.index()], 1);
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
    }

    /// Counts request body bytes that no request's record counted (an
    /// HTTP/2 connection's bodies kept past their stream's record), from
    /// any thread: once per connection, when the last of it and its bodies
    /// goes, so the locked add costs nothing per request.
    #[inline]
    pub(crate) fn request_body_bytes(&self, n: u64) {
        #[cfg(feature = "metrics")]
        if n > 0 {
            self.request_metrics
                .request_body_bytes_shared
                .fetch_add(n, Relaxed);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    /// Counts a connection handed over by an upgrade.
    #[inline]
    pub(crate) fn connection_upgraded(&self) {
        #[cfg(feature = "metrics")]
        add(
            &self.request_metrics.closed_by_reason[CloseReason::COUNT],
            1,
        );
    }

    /// Counts a failed `accept` by its errno.
    pub(crate) fn accept_failed(&self, e: &io::Error) {
        let i = match e.raw_os_error() {
            Some(libc::EMFILE) => 0,
            Some(libc::ENFILE) => 1,
            Some(libc::ENOBUFS) => 2,
            Some(libc::ENOMEM) => 3,
            _ => 4,
        };
        // Not the hot path, and kept even without the `metrics` feature.
        self.request_metrics.accept_errors_by_errno[i].fetch_add(1, Relaxed);
    }
}

/// A snapshot of the request duration histogram, summed over workers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurationHistogram {
    /// Requests per bucket, not cumulative: `counts[i]` took at most
    /// [`DURATION_BUCKETS`]`[i]` seconds and more than the bound before; the
    /// last entry counts requests slower than the largest bound.
    pub counts: Vec<u64>,
    /// Total time of all observed requests.
    pub sum: Duration,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        DurationHistogram {
            counts: vec![0; DURATION_BOUNDS + 1],
            sum: Duration::ZERO,
        }
    }
}

impl DurationHistogram {
    /// Observed requests.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound in seconds, count)` per bucket, not cumulative, ending
    /// with `+Inf` (what `prometheus-client`'s `encode_histogram` takes,
    /// adding up itself).
    pub fn per_bucket(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// `(upper bound in seconds, cumulative count)` per bucket, ending with
    /// `(+Inf, count)`, as Prometheus exposes them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, n)| {
                total += n;
                (bound, total)
            })
            .collect()
    }
}

/// Requests with one method and status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCount {
    /// One of [`METHOD_LABELS`].
    pub method: &'static str,
    /// One of [`STATUS_CLASS_LABELS`].
    pub status_class: &'static str,
    /// Finished requests.
    pub count: u64,
}

/// One worker's share of the server, for `/debug/runtime`-style views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// Connections open on this worker.
    pub connections_open: i64,
    /// Of which idle (keep-alive, parked included).
    pub connections_idle: i64,
    /// Of which parked outside the runtime.
    pub connections_parked: i64,
    /// Buffers taken from this worker's pool.
    pub buffers_checked_out: i64,
    /// Buffers resting in this worker's pool.
    pub buffers_pooled: i64,
    /// Requests this worker handed to the service.
    pub requests: u64,
    /// Requests in flight on this worker.
    pub requests_in_flight: i64,
}

/// The request metrics of a [`ServerStats`], summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestStats {
    /// Finished requests by method and status class (only non-zero entries).
    pub by_method_status: Vec<RequestCount>,
    /// Request durations, from the request head to the end of the response.
    /// Requests refused or failed before their exchange began (a 431, a
    /// 413 by Content-Length, a 503 of a service not ready) are counted in
    /// `by_method_status` only: a flood of them took no time to measure.
    pub duration: DurationHistogram,
    /// Request body bytes received (read by the handler or discarded).
    pub request_body_bytes: u64,
    /// Response body bytes the service produced (framing not included).
    pub response_body_bytes: u64,
    /// Requests started and not yet finished.
    pub in_flight: i64,
    /// Connections ended, by reason label (every reason, zeros included).
    pub closed_by_reason: Vec<(&'static str, u64)>,
    /// Connections handed to a handler by an upgrade (`101`); each also
    /// counts in `closed_by_reason` when it really closes.
    pub upgraded: u64,
    /// Failed accepts by errno label (every label, zeros included).
    pub accept_errors_by_errno: Vec<(&'static str, u64)>,
    /// Per-worker figures, in worker order.
    pub workers: Vec<WorkerSnapshot>,
}

impl RequestStats {
    pub(crate) fn sum(workers: &[Arc<WorkerStats>]) -> RequestStats {
        let mut by_class = [[0u64; STATUS_CLASSES]; METHODS];
        let mut buckets = [0u64; DURATION_BOUNDS + 1];
        let mut nanos = 0u64;
        let mut closed = [0u64; CLOSE_REASONS];
        let mut accept = [0u64; ACCEPT_ERRNOS];
        let mut s = RequestStats::default();
        for w in workers {
            let m = &w.request_metrics;
            for (row, counters) in by_class.iter_mut().zip(&m.by_class) {
                for (sum, c) in row.iter_mut().zip(counters) {
                    *sum += c.load(Relaxed);
                }
            }
            for (sum, c) in buckets.iter_mut().zip(&m.duration_buckets) {
                *sum += c.load(Relaxed);
            }
            nanos = nanos.wrapping_add(m.duration_nanos.load(Relaxed));
            for (sum, c) in closed.iter_mut().zip(&m.closed_by_reason) {
                *sum += c.load(Relaxed);
            }
            for (sum, c) in accept.iter_mut().zip(&m.accept_errors_by_errno) {
                *sum += c.load(Relaxed);
            }
            s.request_body_bytes +=
                m.request_body_bytes.load(Relaxed) + m.request_body_bytes_shared.load(Relaxed);
            s.response_body_bytes += m.response_body_bytes.load(Relaxed);
            let in_flight = m.in_flight.load(Relaxed);
            s.in_flight += in_flight;
            s.workers.push(WorkerSnapshot {
                connections_open: w.connections_open.load(Relaxed),
                connections_idle: w.connections_idle.load(Relaxed),
                connections_parked: w.connections_parked.load(Relaxed),
                buffers_checked_out: w.buffers_checked_out.load(Relaxed),
                buffers_pooled: w.buffers_pooled.load(Relaxed),
                requests: w.requests.load(Relaxed),
                requests_in_flight: in_flight,
            });
        }
        for (method, row) in METHOD_LABELS.iter().zip(by_class) {
            for (status_class, count) in STATUS_CLASS_LABELS.iter().zip(row) {
                if count > 0 {
                    s.by_method_status.push(RequestCount {
                        method,
                        status_class,
                        count,
                    });
                }
            }
        }
        s.duration = DurationHistogram {
            counts: buckets.to_vec(),
            sum: Duration::from_nanos(nanos),
        };
        s.closed_by_reason = CloseReason::LABELS.iter().copied().zip(closed).collect();
        s.upgraded = closed[CloseReason::COUNT];
        s.accept_errors_by_errno = ACCEPT_ERRNO_LABELS.iter().copied().zip(accept).collect();
        s
    }
}

/// Renders `stats` as Prometheus text in the OpenMetrics format (what
/// `prometheus-client` encodes: `# TYPE x counter` for `x_total` samples,
/// `# UNIT`, a closing `# EOF`); serve it as [`OPENMETRICS_CONTENT_TYPE`].
/// See the [module docs](self) for the metric names.
///
/// ```
/// let text = megaconn::metrics::render(&megaconn::ServerStats::default());
/// assert!(text.contains("# TYPE megaconn_requests counter"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub fn render(stats: &ServerStats) -> String {
    render_registry(stats, None)
}

/// [`render`], followed by `megaconn_build_info` and the `process_*`
/// series of `process` (read from `/proc` now). What
/// [`ServerHandle::render_metrics`](crate::ServerHandle::render_metrics)
/// serves, with [`ProcessCollector::this_process`]; `render` alone writes
/// the snapshot only, the same text for the same `stats`.
///
/// ```
/// use megaconn::metrics::{render_with, ProcessCollector};
/// let text = render_with(&megaconn::ServerStats::default(), ProcessCollector::this_process());
/// assert!(text.contains("megaconn_build_info{version="));
/// assert!(text.contains("# TYPE process_open_fds gauge"));
/// ```
pub fn render_with(stats: &ServerStats, process: ProcessCollector) -> String {
    render_registry(stats, Some(process))
}

fn render_registry(stats: &ServerStats, process: Option<ProcessCollector>) -> String {
    // The root has no prefix: `process_*` are the client libraries' names
    // (ProcessCollector writes `megaconn_build_info` whole).
    let mut registry = Registry::default();
    // Writes `megaconn_` itself (`families.rs`).
    registry.register_collector(Box::new(Snapshot(vec![(None, stats.clone())])));
    if let Some(process) = process {
        registry.register_collector(Box::new(process));
    }
    let mut out = String::with_capacity(8 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The content type of [`render`]'s output, whatever the scraper asked
/// for. There is deliberately no `text/plain; version=0.0.4` variant: the
/// body is OpenMetrics either way, and a 0.0.4 parser (`promtool check
/// metrics`, Telegraf, Datadog, Python's `prometheus_client`) reading
/// `# TYPE x counter` over `x_total` samples takes every counter as
/// untyped. Prometheus itself reads this type.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Snapshots of one or more servers, registered as a collector and
/// encoded once per scrape: each family once, each server's series in it
/// (`families.rs`), under its `server` label when it has a name.
#[derive(Debug)]
pub(crate) struct Snapshot(pub(crate) Vec<(Option<Arc<str>>, ServerStats)>);

impl Collector for Snapshot {
    fn encode(&self, e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut families = Families::default();
        for (server, stats) in &self.0 {
            families.server(server.as_deref());
            record(&mut families, stats);
        }
        families.write(e)
    }
}

/// Records one server's series: every family the exposition has (the
/// module doc's table).
fn record<'a>(e: &mut Families<'a>, s: &'a ServerStats) {
    let r = &s.request_metrics;
    e.gauge(
        "connections_open",
        "Connections open now.",
        s.connections_open,
    );
    e.gauge(
        "connections_idle",
        "Open connections waiting for their next request (parked included).",
        s.connections_idle,
    );
    e.gauge(
        "connections_parked",
        "Idle connections parked outside the runtime.",
        s.connections_parked,
    );
    e.counter(
        "connections_accepted",
        "Connections accepted since start.",
        s.accepted,
    );
    e.labelled(
        "connections_closed",
        "Connections ended by the engine, by reason.",
        "reason",
        r.closed_by_reason.iter().copied(),
    );
    e.counter(
        "connections_parks",
        "Times an idle connection went into the parking lot.",
        s.parks,
    );
    e.labelled(
            "connections_wakes",
            "Parked connections woken, by kind: cold (served as a bare socket, re-parked at once) or hot (busy again, waits as a task).",
            "kind",
            [("cold", s.wakes_cold), ("hot", s.wakes_hot)],
        );
    e.counter(
        "connections_wakes_without_task",
        "Cold wakes served whole without spawning a task (read, answered and re-parked at once).",
        s.wakes_without_task,
    );
    e.counter(
        "parking_epoll_ctl",
        "epoll_ctl calls on the parking lots' epoll sets (none for a cold wake re-parked at once).",
        s.parking_epoll_ctl,
    );
    e.counter(
            "parking_wakeups",
            "Turns in which a parking lot served woken sockets: several sockets per turn while park_wake_batch batches them.",
            s.parking_wakeups,
        );
    e.counter(
        "parking_wake_batches",
        "Times a busy parking lot held its wake-ups back for one park_wake_batch window.",
        s.parking_wake_batches,
    );
    e.gauge(
        "shutdown_drain_pending",
        "Connections a paced shutdown (shutdown_drain_rate) has still to close: all those still open while it runs.",
        s.shutdown_drain_pending,
    );
    e.gauge(
            "http2_grown_windows_bytes",
            "What HTTP/2 streams' receive windows have grown by now, their handlers keeping up with uploads, out of http2_grown_windows_budget (past it, growths refused count in limit_hits{limit=\"http2_grown_windows_budget\"}).",
            i64::try_from(s.http2_grown_windows_bytes).unwrap_or(i64::MAX),
        );
    e.counter(
        "connections_adopted",
        "Parked connections taken over from the process this one replaced (zero-downtime upgrade).",
        s.adopted,
    );
    e.counter(
            "connections_handover_refused",
            "Parked connections an upgrade could not move (a state refused or corrupt, over a limit), closed instead.",
            s.handover_refused,
        );
    e.counter(
        "connections_aged_out",
        "Connections closed at an idle point for being older than max_connection_age.",
        s.aged_out,
    );
    e.counter(
            "worker_stalls",
            "Times a worker's event loop stayed away past stall_threshold: a handler blocked its thread.",
            s.worker_stalls,
        );
    e.counter(
            "accept_waits_at_limit",
            "Times a connection waiting to be accepted found max_connections reached (accepting stopped until a connection closed).",
            s.accept_waits_at_limit,
        );
    e.counter(
            "connections_upgraded",
            "Connections handed to a handler by an upgrade (101); they stay open and count in connections_closed when they close.",
            r.upgraded,
        );
    e.labelled(
        "connections_rejected",
        "Connections refused right after accept, by the admission limit that refused them.",
        "limit",
        REJECTED_LABELS
            .into_iter()
            .zip([s.rejected_accept_rate, s.rejected_per_ip]),
    );
    e.labelled(
            "limit_hits",
            "Times a limit or a malformed message cut something short, by which: a request refused, a connection closed (what closed{protocol_error} does not tell), a hub message dropped at a full worker queue (hub_queue), or a subscription refused to a connection at its bound (max_subscriptions) or to a topic name over its bound (max_topic_bytes).",
            "limit",
            s.limit_hits.iter().copied(),
        );
    e.labelled(
            "tls_alerts_received",
            "Fatal TLS alerts clients ended connections with, by alert (unknown_ca or bad_certificate: the client does not accept our certificate). The client's decision: such closes count as closed{client_closed}, not as protocol errors.",
            "alert",
            s.tls_alerts_received.iter().copied(),
        );
    e.labelled(
            "tls_handshakes",
            "TLS handshakes by outcome: completed; abandoned (the client closed or reset before finishing, closed{client_closed}: many of them with few completed is a flood of ClientHellos that never wait for the answer); failed (closed{tls_handshake_failed}); timeout (closed{tls_handshake_timeout}); client_cert (the client's certificate refused: why in tls_client_cert_refusals); crl (a CRL of the server's own found bad while checking a client's certificate: fix the CRL file the log names); plain_http (a plain HTTP request sent to a TLS port, answered 400: a client using http:// for https://; closed{tls_handshake_failed}); shutdown (not done within the grace graceful shutdown gives a new connection, 5 s from its accept: closed without a word, closed{shutdown_before_request}, a close of the drain, not forced).",
            "outcome",
            s.tls_handshakes.iter().copied(),
        );
    e.labelled(
            "tls_client_cert_refusals",
            "Client certificates refused at the TLS handshake (tls_handshakes{outcome=client_cert}), by reason: missing (none sent where one is required), unknown_ca (not issued by a client CA root), revoked (in a CRL given), expired, not_yet_valid, bad (anything else: a bad signature, the wrong key usage).",
            "reason",
            s.tls_client_cert_refusals.iter().copied(),
        );
    e.labelled(
            "proxy_headers",
            "Connections from proxy_protocol sources (trusted load balancers) by how their PROXY protocol header went: ok (it named the client, whose address the connection takes); local (v2 LOCAL, a balancer's health check, or v1 UNKNOWN: the socket's address stands); missing (other bytes came first, or a close, or read_header_timeout passed: closed); invalid (a header that does not parse: closed); too_large (over 1024 bytes with its TLVs: closed). Connections from other sources send none and are not counted.",
            "result",
            s.proxy_headers.iter().copied(),
        );
    if let Some(tls) = &s.tls {
        tls_certificates(e, tls);
    }
    {
        let mut m = e.family(
                "requests",
                "Finished requests by method and status class (none: no response was sent, or the forced shutdown at shutdown_timeout cut it off).",
                None,
                MetricType::Counter,
            );
        for c in &r.by_method_status {
            let labels = vec![
                ("method", Cow::Borrowed(c.method)),
                ("status_class", Cow::Borrowed(c.status_class)),
            ];
            m.counter(labels, c.count);
        }
    }
    let h = &r.duration;
    e.family(
            "request_duration",
            "Time from the request head to the end of the response; the buckets top at 10 s, so long streams (SSE, chunked) land in +Inf.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )
        .histogram(h.sum.as_secs_f64(), h.count(), h.per_bucket());
    e.family(
        "request_body",
        "Request body bytes received (read by the handler or discarded).",
        Some(&Unit::Bytes),
        MetricType::Counter,
    )
    .counter(Vec::new(), r.request_body_bytes);
    e.family(
            "response_body",
            "Response body bytes the service produced (without framing), added when a response ends, not while it streams.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )
        .counter(Vec::new(), r.response_body_bytes);
    e.gauge(
        "requests_in_flight",
        "Requests started and not yet finished.",
        r.in_flight,
    );
    e.counter(
        "panics",
        "Handlers or response bodies that panicked.",
        s.panics,
    );
    e.counter(
        "handler_cancelled",
        "Handlers dropped because the client went away before their response head.",
        s.cancelled,
    );
    // Its own counter, not a label on `handler_cancelled` (whose one
    // unlabelled series dashboards read): `by` leaves room for cuts
    // of the server's own (a write timeout) without a new name.
    e.labelled(
            "responses_cut",
            "Responses whose body the client cut while it was being sent (HTTP/1.1 hang-up, HTTP/2 reset or connection loss mid-body).",
            "by",
            [("client", s.responses_cut)],
        );
    e.counter(
        "timeouts",
        "Connections closed by a header, idle, read, write or message timeout.",
        s.timeouts,
    );
    e.counter(
            "protocol_errors",
            "HTTP requests refused as malformed or over a limit, and connections closed for another protocol error (WebSocket, framed, HTTP/2, TLS).",
            s.protocol_errors,
        );
    e.labelled(
        "accept_errors",
        "Failed accept calls, by errno.",
        "errno",
        r.accept_errors_by_errno.iter().copied(),
    );
    {
        let mut m = e.family(
            "worker_connections",
            "Open connections per worker.",
            None,
            MetricType::Gauge,
        );
        for (worker, n) in s.connections_per_worker.iter().enumerate() {
            m.gauge(vec![("worker", Cow::Owned(worker.to_string()))], *n);
        }
    }
    e.gauge(
        "buffers_checked_out",
        "Read/write buffers taken from the worker pools.",
        s.buffers_checked_out,
    );
    e.gauge(
        "buffers_pooled",
        "Buffers resting in the worker pools.",
        s.buffers_pooled,
    );
    if let Some(o) = &s.otel {
        e.counter(
            "otel_spans_exported",
            "Request spans the OTLP collector accepted.",
            o.spans_exported,
        );
        e.counter(
            "otel_spans_dropped",
            "Request spans dropped because the export queue was full (collector slow or down).",
            o.spans_dropped,
        );
        e.counter(
            "otel_spans_failed",
            "Request spans in exports that failed or timed out.",
            o.spans_failed,
        );
        e.gauge(
            "otel_spans_queued",
            "Request spans waiting in the export queue.",
            i64::try_from(o.spans_queued).unwrap_or(i64::MAX),
        );
    }
    messages(e, &s.messages);
}

/// A TLS server's certificate reloads and expiry.
fn tls_certificates<'a>(e: &mut Families<'a>, tls: &'a TlsStats) {
    e.labelled(
        "tls_reloads",
        "Certificate reloads (TlsConfig::reload, SIGHUP) by outcome: ok, or failed (a file missing or unreadable, a key that does not match; the certificates live before stay live).",
        "outcome",
        [("ok", tls.reloads_ok), ("failed", tls.reloads_failed)],
    );
    let mut m = e.family(
        "tls_certificate_expiry",
        "When each certificate chain served expires (the earliest notAfter of its certificates), in seconds since the Unix epoch, by the server name it is served for (default: every other name).",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    );
    for (name, expiry) in &tls.certificates {
        if let Some(at) = expiry {
            m.gauge(vec![("server_name", Cow::Borrowed(name.as_str()))], *at);
        }
    }
}

/// The message protocols' series (framed TCP).
fn messages<'a>(e: &mut Families<'a>, m: &'a MessageStats) {
    for (name, help, unit, (inbound, outbound)) in [
        (
            "message_frames",
            "Frames (messages) of message protocols, by direction; out counts replies, pushes and heartbeats.",
            None,
            (m.frames_in, m.frames_out),
        ),
        (
            "message",
            "Bytes of message protocols' connections, headers included, by direction.",
            Some(&Unit::Bytes),
            (m.bytes_in, m.bytes_out),
        ),
    ] {
        let mut family = e.family(name, help, unit, MetricType::Counter);
        for (direction, n) in [("in", inbound), ("out", outbound)] {
            family.counter(vec![("direction", Cow::Borrowed(direction))], n);
        }
    }
    e.counter(
        "message_pushes",
        "Messages the hub delivered (one per connection reached by a push, publish or broadcast), counted once its socket took the message whole.",
        m.pushes,
    );
    e.counter(
        "message_hub_messages",
        "Messages the workers took from the hub (a broadcast or publish counts once per worker).",
        m.hub_messages,
    );
    e.labelled(
        "message_queue_drops",
        "Pushes that did not reach their connection's peer whole, by cause: slow_consumer (refused by its full outbound queue, or left unwritten by that overflow's close), droppable (a droppable push the connection was too far behind for; it stays open), shutdown (left in a stopped worker's hub queue), closed (lost to any other close: left queued, or not written whole). With message_pushes: every push handed to a connection.",
        "cause",
        [
            ("slow_consumer", m.queue_drops_slow_consumer),
            ("droppable", m.queue_drops_droppable),
            ("shutdown", m.queue_drops_shutdown),
            ("closed", m.queue_drops_closed),
        ],
    );
    e.counter(
        "message_heartbeats_sent",
        "Server heartbeat frames sent.",
        m.heartbeats_sent,
    );
    e.counter(
        "message_heartbeat_timeouts",
        "Connections closed because the peer sent nothing within heartbeat_timeout.",
        m.heartbeat_timeouts,
    );
    e.gauge(
        "message_deliveries_pending",
        "Connections a broadcast or publish under way has yet to reach (0 when none is).",
        i64::try_from(m.deliveries_pending).unwrap_or(i64::MAX),
    );
    e.gauge(
        "message_hub_queued",
        "Hub messages waiting in the workers' queues for delivery (each bounded by hub_queue and hub_queue_bytes).",
        i64::try_from(m.hub_queued).unwrap_or(i64::MAX),
    );
    e.gauge(
        "message_hub_queued_bytes",
        "Bytes of the hub messages waiting in the workers' queues, payloads and entries (each queue bounded by hub_queue_bytes).",
        i64::try_from(m.hub_queued_bytes).unwrap_or(i64::MAX),
    );
    e.gauge(
        "message_subscriptions",
        "Topic subscriptions held by message connections (a connection in two topics counts twice), exact; about 270 B each.",
        i64::try_from(m.subscriptions).unwrap_or(i64::MAX),
    );
    let mut family = e.family(
        "message_connections",
        "Message connections open (framed TCP, WebSocket, SSE on the native engine), awake or parked, by protocol: what a broadcast reaches (their sum is ServerHandle::message_connections).",
        None,
        MetricType::Gauge,
    );
    for (protocol, n) in MESSAGE_PROTOCOL_LABELS
        .iter()
        .zip(m.connections_by_protocol)
    {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        family.gauge(vec![("protocol", Cow::Borrowed(*protocol))], n);
    }
    topics(e, &m.topics);
    rooms(e, &m.rooms);
}

/// The per-topic series (`Builder::topic_metrics`): none without it.
fn topics<'a>(e: &mut Families<'a>, topics: &'a [crate::observe::stats::TopicCount]) {
    if topics.is_empty() {
        return;
    }
    let mut family = e.family(
        "topic_subscribers",
        "Subscriptions held now on this server to each topic named in Builder::topic_metrics, exact; topic=\"other\": to every other topic, summed.",
        None,
        MetricType::Gauge,
    );
    for t in topics {
        let n = i64::try_from(t.subscribers).unwrap_or(i64::MAX);
        family.gauge(vec![("topic", Cow::Borrowed(t.topic.as_str()))], n);
    }
    e.labelled(
        "topic_publishes",
        "Publishes the hub took to each topic named in Builder::topic_metrics (each once, whatever its subscribers); topic=\"other\": to every other topic.",
        "topic",
        topics.iter().map(|t| (t.topic.as_str(), t.publishes)),
    );
}

/// The rooms' series (`observe/rooms.rs`): WebSocket closes by code and
/// publish lag.
fn rooms<'a>(e: &mut Families<'a>, r: &'a RoomStats) {
    {
        let mut family = e.family(
            "ws_closes",
            "Native WebSocket closes, by who began the close (sent: the server, received: the peer) and its close code (1006: without a close frame; 1005: a frame without a code; 3xxx, 4xxx: application codes; other: any other).",
            None,
            MetricType::Counter,
        );
        for (direction, counts) in WS_CLOSE_DIRECTION_LABELS.iter().zip(&r.ws_closes) {
            for (code, n) in WS_CLOSE_CODE_LABELS.iter().zip(counts) {
                let labels = vec![
                    ("direction", Cow::Borrowed(*direction)),
                    ("code", Cow::Borrowed(*code)),
                ];
                family.counter(labels, *n);
            }
        }
    }
    let h = &r.publish_lag;
    e.family(
        "publish_lag",
        "How long a publish waited in a worker's hub queue before the worker began handing it to the topic's members: one observation per publish per worker.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )
    .histogram(h.sum.as_secs_f64(), h.count(), h.per_bucket());
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    /// A path from the client cannot carry what a terminal acts on into
    /// the access log: C1 controls and the line separators are escaped.
    #[test]
    fn an_access_line_escapes_what_a_terminal_would_act_on() {
        let line = AccessLine::partial(None, Some("/x\u{9b}31m\u{2028}y/é".to_owned()));
        assert_eq!(line.path.as_deref(), Some("/x\\u{9b}31m\\u{2028}y/é"));
        let plain = AccessLine::partial(None, Some("/plain/é".to_owned()));
        assert_eq!(plain.path.as_deref(), Some("/plain/é"));
    }

    /// A request served within one lot turn (a heartbeat on a parked
    /// connection) measures its time: the end is a fresh reading, not the
    /// turn's (which made every such duration 0).
    #[test]
    fn a_request_served_within_a_turn_measures_its_time() {
        let elapsed = crate::observe::clock::turn(|| {
            let stopwatch = Stopwatch::start();
            std::thread::sleep(std::time::Duration::from_millis(2));
            stopwatch.elapsed_nanos()
        });
        assert!(elapsed >= 2_000_000, "{elapsed} ns");
    }
}
