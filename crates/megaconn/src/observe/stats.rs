//! Per-worker counters, summed when read.
//!
//! Each worker writes only its own [`WorkerStats`] (relaxed atomics on a cache
//! line nobody else writes), so counting costs no contention; readers such as
//! [`ServerHandle::stats`](crate::ServerHandle::stats) add the workers up.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::observe::alerts::{self, AlertCounters};
use crate::observe::limits::LimitHit;
use crate::observe::metrics::{RequestCounters, RequestStats, MESSAGE_PROTOCOLS};

/// Counters of one worker. Gauges are signed so a transient underflow from
/// racing readers cannot wrap.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    pub connections_open: AtomicI64,
    pub connections_idle: AtomicI64,
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub requests: AtomicU64,
    /// Of `requests`, those the forced shutdown cut off (counted as their
    /// records drop, `observe/metrics.rs`).
    pub requests_forced: AtomicU64,
    pub panics: AtomicU64,
    pub cancelled: AtomicU64,
    /// Response bodies the client cut (`ServerStats::responses_cut`).
    pub responses_cut: AtomicU64,
    pub timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub accept_errors: AtomicU64,
    pub buffers_checked_out: AtomicI64,
    pub buffers_pooled: AtomicI64,
    pub connections_parked: AtomicI64,
    pub rejected_accept_rate: AtomicU64,
    pub rejected_per_ip: AtomicU64,
    pub parks: AtomicU64,
    pub wakes_cold: AtomicU64,
    pub wakes_hot: AtomicU64,
    pub wakes_without_task: AtomicU64,
    pub parking_epoll_ctl: AtomicU64,
    pub parking_wakeups: AtomicU64,
    pub parking_wake_batches: AtomicU64,
    pub accept_waits_at_limit: AtomicU64,
    /// Parked connections taken over from the process this one replaced.
    pub adopted: AtomicU64,
    /// Parked connections an upgrade could not move: refused here at the
    /// adoption, or by the old process at the hand-over (`handover.rs`).
    pub handover_refused: AtomicU64,
    /// Connections closed at an idle point for being older than
    /// `max_connection_age`.
    pub aged_out: AtomicU64,
    /// During a paced shutdown drain, the worker's connections still open
    /// (`conn::connection::count_drain_pending`); 0 otherwise.
    pub drain_pending: AtomicI64,
    /// What the worker's HTTP/2 streams' receive windows have grown by
    /// now, in all (a gauge moved by their bodies, on whichever thread a
    /// handler reads one: `service/h2_body.rs`).
    pub http2_grown_windows: AtomicI64,
    /// The worker's loop as the stall detector sees it.
    pub stall: LoopState,
    pub stalls: AtomicU64,
    /// Requests refused, connections closed and hub messages dropped, by
    /// the limit that did it (indexed by [`LimitHit`]).
    pub limit_hits: crate::observe::limits::LimitCounters,
    /// TLS alerts peers ended connections with, by description (indexed as
    /// `alerts::labels`).
    pub tls_alerts: AlertCounters,
    /// TLS handshakes by how they ended (indexed by [`HandshakeOutcome`]).
    pub tls_handshakes: [AtomicU64; HandshakeOutcome::COUNT],
    /// Client certificates refused, by why (indexed by [`CertRefusal`]).
    pub tls_client_cert_refusals: [AtomicU64; CertRefusal::COUNT],
    /// PROXY protocol headers from trusted sources, by how they went
    /// (indexed as [`PROXY_HEADER_RESULTS`]).
    pub proxy_headers: [AtomicU64; PROXY_HEADER_RESULTS.len()],
    /// Per-request metrics (method, status, duration, bytes, close reasons).
    pub request_metrics: RequestCounters,
    /// Message protocols' counters (framed TCP, WebSocket).
    pub messages: MessageCounters,
}

/// How a TLS handshake ended (`outcome` of `megaconn_tls_handshakes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeOutcome {
    /// Done: the connection serves HTTP.
    Completed,
    /// The client closed or reset the connection (or sent a fatal alert)
    /// before finishing: a browser that gave up, or a flood of ClientHellos
    /// that never wait for the answer. Closed as `client_closed`.
    Abandoned,
    /// Failed: a bad ClientHello, nothing in common (no shared group or
    /// cipher suite), plaintext other than HTTP on a TLS port. Closed as
    /// `tls_handshake_failed`.
    Failed,
    /// Not done within `TlsConfig::handshake_timeout`.
    Timeout,
    /// Refused for the client's certificate (`TlsConfig::client_auth`):
    /// none where one is required, or one that does not verify against the
    /// client CA roots. Closed as `tls_handshake_failed`; a label of its
    /// own, so that a fleet's devices locked out show apart from broken
    /// ClientHellos; why, in `megaconn_tls_client_cert_refusals_total`.
    ClientCert,
    /// Failed on a CRL of the server's own (`ClientCa::with_crl_*`) that
    /// webpki found bad while checking a client's certificate against it:
    /// the server's fault, not the client's. Closed as
    /// `tls_handshake_failed`; logged naming the CRL files.
    Crl,
    /// The client's first bytes were a plain HTTP request (an `http://`
    /// URL for an `https://` port): answered `400` in plain text, as Go
    /// and nginx answer, and closed as `tls_handshake_failed`. A label of
    /// its own: a misconfigured client, not a broken or hostile one.
    PlainHttp,
    /// Not done within the grace graceful shutdown gives a connection that
    /// has asked for nothing yet (5 s from its accept, heard at its turn
    /// among the idle connections, as Go's `Shutdown` closes a new
    /// connection 5 s old; see `NEW_CONNECTION_GRACE`):
    /// closed without a word, as `shutdown_before_request`, a close of the
    /// drain. A label of its own: neither the client's failure nor its
    /// timeout (before, the drain waited for it until `handshake_timeout`).
    Shutdown,
}

impl HandshakeOutcome {
    /// How many outcomes there are.
    pub(crate) const COUNT: usize = 8;
    /// Metric labels, by discriminant.
    pub(crate) const LABELS: [&'static str; HandshakeOutcome::COUNT] = [
        "completed",
        "abandoned",
        "failed",
        "timeout",
        "client_cert",
        "crl",
        "plain_http",
        "shutdown",
    ];

    /// Counts one in the worker's counters.
    pub(crate) fn count(self, stats: &WorkerStats) {
        incr(&stats.tls_handshakes[self as usize]);
    }
}

/// One worker's event loop as the stall detector (`server/stall.rs`) sees
/// it: written by the worker's runtime hooks and tick task, read by the
/// watchdog thread.
#[derive(Debug, Default)]
pub(crate) struct LoopState {
    /// Bumped each time the worker's loop comes back from waiting for
    /// events, and by its tick task when asked.
    pub ticks: AtomicU64,
    /// The loop is waiting for events (tokio's park): it cannot be stalled.
    pub waiting: std::sync::atomic::AtomicBool,
    /// Set by the watchdog to ask the tick task for a tick.
    pub asked: std::sync::atomic::AtomicBool,
    /// The worker finished its drain: its loop is gone, not stalled (no
    /// tick answers any more), and the watchdog looks at it no longer.
    pub done: std::sync::atomic::AtomicBool,
    /// The tick task's waker.
    pub tick_waker: futures_util::task::AtomicWaker,
    /// The worker thread's kernel id (0 until its tick task first ran): the
    /// watchdog reads where that thread's time went during a stall
    /// (`/proc/self/task/TID`), to say what held it.
    pub tid: std::sync::atomic::AtomicI32,
}

/// One worker's counters of message protocols (the message layer and the
/// protocols on it count here; `MessageStats` is their sum).
#[derive(Debug, Default)]
pub(crate) struct MessageCounters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub pushes: AtomicU64,
    /// Pushes dropped by a close other than a slow consumer's
    /// (`DropCause::Closed`, `message/hub.rs`); with the three below, every
    /// push dropped, each cause counted apart so a scrape's sum is
    /// consistent.
    pub queue_drops: AtomicU64,
    /// Pushes dropped for a slow consumer (`DropCause::SlowConsumer`).
    pub queue_drops_slow_consumer: AtomicU64,
    /// Droppable pushes dropped for a connection behind
    /// (`DropCause::Droppable`).
    pub queue_drops_droppable: AtomicU64,
    /// Pushes left in the hub queue of a worker that stopped
    /// (`DropCause::Shutdown`).
    pub queue_drops_shutdown: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    pub hub_messages: AtomicU64,
    /// Connections the hub's pump has yet to reach with the message it is
    /// delivering (a gauge: back to 0 when it is done).
    pub deliveries_pending: AtomicI64,
    /// Hub messages waiting in this worker's queue for its pump (a gauge,
    /// moved by the publishing threads and the pump; it also bounds the
    /// queue, `message/hub.rs`).
    pub hub_queued: AtomicI64,
    /// The bytes of those messages, payloads and entries (a gauge that
    /// bounds the queue too, `Builder::hub_queue_bytes`).
    pub hub_queued_bytes: AtomicI64,
    /// Message connections on this worker that a broadcast reaches: awake
    /// ones registered for pushes (with a hub) and parked ones (a gauge,
    /// moved by the worker's thread only, `message/worker.rs` and
    /// `message/table.rs`).
    pub connections: AtomicI64,
    /// [`connections`](MessageCounters::connections) by protocol, in the
    /// order of `MESSAGE_PROTOCOL_LABELS` (gauges moved with it, by the
    /// worker's thread only: `message/worker.rs`, `message/table.rs`).
    pub connections_by_protocol: [AtomicI64; MESSAGE_PROTOCOLS],
    /// Subscriptions held on this worker: connections × their topics (a
    /// gauge, moved by the worker's thread only, `message/topics.rs`).
    pub subscriptions: AtomicI64,
    /// WebSocket closes by code, publish lag (`observe/rooms.rs`).
    pub rooms: crate::observe::rooms::RoomCounters,
}

/// Message protocols' counters (framed TCP; WebSocket), summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageStats {
    /// Whole frames (messages) read from peers.
    pub frames_in: u64,
    /// Frames written to peers: replies, pushes and heartbeats.
    pub frames_out: u64,
    /// Bytes read from message connections, headers included.
    pub bytes_in: u64,
    /// Bytes written to message connections, headers included.
    pub bytes_out: u64,
    /// Frames delivered by the hub (one per connection reached by a push,
    /// publish or broadcast), counted once the connection's socket took the
    /// frame whole.
    pub pushes: u64,
    /// Pushes that did not reach their connection's peer whole: refused by
    /// its full outbound queue (or, parked, its full socket buffer: the
    /// connection is closed as a slow consumer), or lost when it closed,
    /// whatever the close (still queued, or not written whole). With
    /// [`pushes`](MessageStats::pushes), every push the workers handed to
    /// a connection. (Until session 41 only a slow consumer's were counted.)
    /// The sum of the four `queue_drops_*` by cause.
    pub queue_drops: u64,
    /// Of [`queue_drops`](MessageStats::queue_drops): refused by a full
    /// outbound queue, or left queued or unwritten when that overflow
    /// closed the connection as a slow consumer
    /// (`megaconn_message_queue_drops_total{cause="slow_consumer"}`).
    pub queue_drops_slow_consumer: u64,
    /// Of [`queue_drops`](MessageStats::queue_drops): droppable pushes
    /// ([`Hub::send_droppable`](crate::Hub::send_droppable)) dropped for a
    /// connection behind, which stayed open (`cause="droppable"`).
    pub queue_drops_droppable: u64,
    /// Of [`queue_drops`](MessageStats::queue_drops): left in a worker's
    /// hub queue when it stopped (`cause="shutdown"`).
    pub queue_drops_shutdown: u64,
    /// Of [`queue_drops`](MessageStats::queue_drops): lost to any other
    /// close (the peer gone, a write timeout, shutdown's close,
    /// `Hub::close`, a stale id; `cause="closed"`).
    pub queue_drops_closed: u64,
    /// Server heartbeat frames sent.
    pub heartbeats_sent: u64,
    /// Connections closed because the peer sent nothing within the
    /// heartbeat timeout.
    pub heartbeat_timeouts: u64,
    /// Messages the workers took from the hub (a broadcast or publish
    /// counts once per worker), delivered to anyone or not.
    pub hub_messages: u64,
    /// Connections the hub has yet to reach with the messages it is
    /// delivering now (a paced broadcast's remainder); 0 when idle.
    pub deliveries_pending: u64,
    /// Hub messages waiting in the workers' queues, not yet taken for
    /// delivery (each queue is bounded by `Builder::hub_queue`; a message
    /// over it is dropped and counted as the `hub_queue` limit hit).
    pub hub_queued: u64,
    /// What those messages hold, in bytes: payloads (and topics) and each
    /// message's 56-byte entry, counted once per worker queue a message is
    /// in (each queue is bounded by `Builder::hub_queue_bytes`).
    pub hub_queued_bytes: u64,
    /// Subscriptions held now: each connection's topics, summed over the
    /// connections (a connection in two topics counts twice), exact. What
    /// a publish to every topic would reach, and about 270 B each of the
    /// server's memory; a topic's own audience is
    /// [`subscribers`](crate::subscribers), which may read a little high.
    pub subscriptions: u64,
    /// Message connections open now, awake (registered for pushes: with a
    /// hub) or parked, by protocol in the order of
    /// [`MESSAGE_PROTOCOL_LABELS`](crate::metrics::MESSAGE_PROTOCOL_LABELS): framed TCP, WebSocket (native), SSE
    /// (native), as `megaconn_message_connections{protocol}` shows them.
    /// Their sum is
    /// [`ServerHandle::message_connections`](crate::ServerHandle::message_connections).
    pub connections_by_protocol: [u64; MESSAGE_PROTOCOLS],
    /// Native WebSocket closes by code and who began them, and how long
    /// publishes waited in the workers' hub queues
    /// (`megaconn_ws_closes_total`, `megaconn_publish_lag_seconds`).
    pub rooms: crate::observe::rooms::RoomStats,
    /// Each topic named in
    /// [`Builder::topic_metrics`](crate::Builder::topic_metrics), in the
    /// order given, then `other` (every topic not named, summed); empty
    /// without the setting (`megaconn_topic_subscribers`,
    /// `megaconn_topic_publishes_total`). Not summed over workers: the
    /// server's [`ServerHandle::stats`](crate::ServerHandle::stats) fills it.
    pub topics: Vec<TopicCount>,
}

/// One topic's counts ([`MessageStats::topics`]), for a fleet's dashboard
/// without a series per device: only the topics the operator named
/// ([`Builder::topic_metrics`](crate::Builder::topic_metrics)) get one,
/// the rest are summed in `other`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicCount {
    /// The topic's name, or `other`: every topic not named, summed.
    pub topic: String,
    /// Subscriptions to it held now on this server's connections, exact (a
    /// connection subscribed counts once; `other`: every other topic's,
    /// so a connection in two of them counts twice).
    pub subscribers: u64,
    /// Publishes to it the hub took ([`Hub::publish`](crate::Hub::publish)
    /// and its forms, each once whatever its subscribers: one that returned
    /// `Ok`), since the server started.
    pub publishes: u64,
}

impl TopicCount {
    /// `topic`'s counts.
    pub fn new(topic: impl Into<String>, subscribers: u64, publishes: u64) -> TopicCount {
        TopicCount {
            topic: topic.into(),
            subscribers,
            publishes,
        }
    }
}

impl MessageStats {
    fn add(&mut self, c: &MessageCounters) {
        self.frames_in += c.frames_in.load(Relaxed);
        self.frames_out += c.frames_out.load(Relaxed);
        self.bytes_in += c.bytes_in.load(Relaxed);
        self.bytes_out += c.bytes_out.load(Relaxed);
        self.pushes += c.pushes.load(Relaxed);
        let by_cause = [
            c.queue_drops.load(Relaxed),
            c.queue_drops_slow_consumer.load(Relaxed),
            c.queue_drops_droppable.load(Relaxed),
            c.queue_drops_shutdown.load(Relaxed),
        ];
        self.queue_drops_closed += by_cause[0];
        self.queue_drops_slow_consumer += by_cause[1];
        self.queue_drops_droppable += by_cause[2];
        self.queue_drops_shutdown += by_cause[3];
        self.queue_drops += by_cause.iter().sum::<u64>();
        self.heartbeats_sent += c.heartbeats_sent.load(Relaxed);
        self.heartbeat_timeouts += c.heartbeat_timeouts.load(Relaxed);
        self.hub_messages += c.hub_messages.load(Relaxed);
        self.deliveries_pending += c.deliveries_pending.load(Relaxed).max(0) as u64;
        self.hub_queued += c.hub_queued.load(Relaxed).max(0) as u64;
        self.hub_queued_bytes += c.hub_queued_bytes.load(Relaxed).max(0) as u64;
        self.subscriptions += c.subscriptions.load(Relaxed).max(0) as u64;
        self.rooms.add(&c.rooms);
        for (sum, n) in self
            .connections_by_protocol
            .iter_mut()
            .zip(&c.connections_by_protocol)
        {
            *sum += n.load(Relaxed).max(0) as u64;
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// Where per-request records find their worker's counters. The worker
/// context implements it; the records hold it type-erased so that observation
/// does not import the core it observes.
pub(crate) trait StatsSource {
    /// The worker's counters (per-request metrics, and the requests a
    /// forced shutdown cut off).
    fn worker_stats(&self) -> &WorkerStats;
}

/// Adds one to a counter.
pub(crate) fn incr(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Moves a gauge by `delta`.
pub(crate) fn gauge(g: &AtomicI64, delta: i64) {
    g.fetch_add(delta, Relaxed);
}

/// [`incr`] for a counter that only its worker's thread writes (readers on
/// other threads only load it): a plain load and store, not a locked
/// read-modify-write (~20 cycles each, per request on the HTTP/1.1 path,
/// where callgrind's instruction counts do not show them).
#[inline]
pub(crate) fn incr_own(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

/// [`gauge`] for a gauge that only its worker's thread writes (see
/// [`incr_own`]).
#[inline]
pub(crate) fn gauge_own(g: &AtomicI64, delta: i64) {
    g.store(g.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// A connection's place in the `connections_idle` gauge while it waits on
/// its worker's thread ([`gauge_own`]: a plain load and store, no locked
/// instruction, on HTTP/1.1's per-request path): joins on creation, leaves
/// when dropped, so a waiting future dropped mid-wait (a forced shutdown
/// closing a connection that never sent its request) leaves it too. A
/// borrowed gauge: no allocation.
#[derive(Debug)]
pub(crate) struct IdleOwn<'a>(&'a AtomicI64);

impl<'a> IdleOwn<'a> {
    /// Counts the connection idle until the guard is dropped.
    #[inline]
    pub(crate) fn enter(gauge: &'a AtomicI64) -> IdleOwn<'a> {
        gauge_own(gauge, 1);
        IdleOwn(gauge)
    }
}

impl Drop for IdleOwn<'_> {
    #[inline]
    fn drop(&mut self) {
        gauge_own(self.0, -1);
    }
}

/// Keeps a connection's place in the `connections_idle` gauge and its
/// lifecycle state in step while it moves between idle and busy (HTTP/2:
/// idle while no stream is open); leaves the gauge when dropped.
#[derive(Debug)]
pub(crate) struct IdleMark<'a> {
    stats: &'a WorkerStats,
    idle: bool,
}

impl<'a> IdleMark<'a> {
    /// Starts busy.
    pub(crate) fn new(stats: &'a WorkerStats) -> IdleMark<'a> {
        IdleMark { stats, idle: false }
    }

    /// Marks the connection idle (`true`) or busy.
    pub(crate) fn set(&mut self, idle: bool) {
        if idle != self.idle {
            self.idle = idle;
            gauge(&self.stats.connections_idle, if idle { 1 } else { -1 });
            crate::observe::lifecycle::set_state(if idle {
                crate::ConnectionState::Idle
            } else {
                crate::ConnectionState::Handling
            });
        }
    }
}

impl Drop for IdleMark<'_> {
    fn drop(&mut self) {
        if self.idle {
            gauge(&self.stats.connections_idle, -1);
        }
    }
}

/// A snapshot of the whole server's counters, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections open now.
    pub connections_open: i64,
    /// Open connections waiting for their next request (keep-alive idle).
    pub connections_idle: i64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed since start.
    pub closed: u64,
    /// Requests whose head was parsed and handed to the service, served
    /// or not: those the forced shutdown cut off are in it too, and
    /// counted apart in [`requests_forced`](ServerStats::requests_forced).
    pub requests: u64,
    /// The requests among [`requests`](ServerStats::requests) that the
    /// forced shutdown (at `shutdown_timeout`) cut off: handed to the
    /// service, never served whole (the handler had not answered, or the
    /// response had not ended; a head may have gone out). They are in
    /// `megaconn_requests_total` with `status_class="none"`, beside
    /// exchanges the client or the connection ended without a response;
    /// `megaconn serve`'s stop line says them apart from those served. It
    /// counted them as served.
    pub requests_forced: u64,
    /// Handlers (or response bodies) that panicked; each got a 500 or a close.
    pub panics: u64,
    /// Handlers dropped because the client went away while they ran,
    /// before their response head (a cut body is in
    /// [`responses_cut`](ServerStats::responses_cut)).
    pub cancelled: u64,
    /// Responses whose body the client cut while it was being sent: an
    /// HTTP/1.1 client hanging up mid-body, an HTTP/2 client resetting the
    /// stream (or the connection going) mid-body. A streamed answer (SSE,
    /// an LLM's tokens) abandoned half-way; its request is still counted
    /// by the status its head went out with.
    pub responses_cut: u64,
    /// Connections closed by a header, idle, read, write or message timeout.
    pub timeouts: u64,
    /// Protocol errors: HTTP requests refused as malformed or over a limit
    /// ([`requests_refused`](ServerStats::requests_refused)), and
    /// connections closed for breaking their protocol: a WebSocket's bad
    /// frame, a framed connection's broken framing, an HTTP/2 `GOAWAY` for
    /// the client's error or abuse, a TLS handshake that failed or a bad
    /// TLS record after it.
    pub protocol_errors: u64,
    /// The HTTP requests among [`protocol_errors`](ServerStats::protocol_errors):
    /// refused as malformed or over a limit, with megaconn's (or h2's)
    /// error answer (`400`, `413`, `414`, `431`, `505`), or whose body
    /// broke its chunked framing or went over `max_body_bytes` (answered by
    /// the handler, then closed): the [`limit_hits`](ServerStats::limit_hits)
    /// `max_header_bytes`, `max_headers`, `max_body_bytes`, `uri_too_long`,
    /// `malformed_request`, `http_version` and `http2_max_header_list_size`
    /// added up. The rest of `protocol_errors` are other protocols' closes,
    /// which `megaconn serve`'s stop line says apart (it used to call a
    /// WebSocket client's bad frame a refused request).
    pub requests_refused: u64,
    /// Failed `accept` calls (EMFILE and friends).
    pub accept_errors: u64,
    /// Read/write buffers currently taken from the worker pools.
    pub buffers_checked_out: i64,
    /// Buffers resting in the worker pools, ready for reuse.
    pub buffers_pooled: i64,
    /// Open connections per worker, to show the kernel's balance.
    pub connections_per_worker: Vec<i64>,
    /// Idle connections parked outside the runtime (a raw socket in the
    /// worker's private epoll set; no task, no buffers). Included in
    /// `connections_idle` and `connections_open`.
    pub connections_parked: i64,
    /// Connections closed right after accept by the accept-rate limit.
    pub rejected_accept_rate: u64,
    /// Connections closed right after accept by the per-IP limit.
    pub rejected_per_ip: u64,
    /// Times an idle connection went into the parking lot.
    pub parks: u64,
    /// Parked connections woken by bytes (or a hang-up) after idling: served
    /// as bare sockets and re-parked at once when they did not have to wait.
    pub wakes_cold: u64,
    /// Parked connections woken again soon after a re-park: busy again, they
    /// wait as tasks for `park_idle_after` before parking.
    pub wakes_hot: u64,
    /// Cold wakes served whole on the parking lot's own turn, with no task
    /// spawned (read, answered and re-parked without waiting: a heartbeat).
    /// The rest of the cold wakes had to wait for something and became tasks.
    pub wakes_without_task: u64,
    /// `epoll_ctl` calls on the parking lots' own epoll sets (a socket added,
    /// re-polled or taken out). A cold wake served and re-parked makes none:
    /// a socket stays registered across wake-ups (`conn/park.rs`).
    pub parking_epoll_ctl: u64,
    /// Turns in which a parking lot served sockets that woke (one or more
    /// each; several while `park_wake_batch` batches them). Wakes per turn =
    /// (`wakes_cold` + `wakes_hot`) / this.
    pub parking_wakeups: u64,
    /// Times a parking lot, busy, held its wake-ups back for one
    /// `park_wake_batch` window.
    pub parking_wake_batches: u64,
    /// Times an acceptor found no free slot under `max_connections` and
    /// stopped accepting until a connection closed.
    pub accept_waits_at_limit: u64,
    /// Times a worker's event loop stayed away past `stall_threshold` (a
    /// handler blocking the worker's thread).
    pub worker_stalls: u64,
    /// Parked connections taken over from the process this one replaced (a
    /// zero-downtime upgrade); the old process counts them closed as
    /// `handed_over`.
    pub adopted: u64,
    /// Parked connections an upgrade could not move, closed instead: in
    /// the new process, refused at the adoption (a protocol it does not
    /// resume, a framed state its handler's `import` refused or that is
    /// corrupt, over a connection limit); in the old one, a framed state
    /// its handler exported over `FramedHandler::MAX_EXPORTED_STATE_BYTES`
    /// (closed as at shutdown).
    pub handover_refused: u64,
    /// Connections closed at an idle point for being older than
    /// `max_connection_age` (`Connection: close`, `GOAWAY`).
    pub aged_out: u64,
    /// Connections a paced shutdown (`shutdown_drain_rate`) has still to
    /// close: every connection still open while it runs (idle, parked,
    /// awake, new ones within their 5 s, busy ones finishing); 0 before
    /// and after.
    pub shutdown_drain_pending: i64,
    /// What the server's HTTP/2 streams' receive windows have grown by now
    /// (their handlers keeping up with uploads), in bytes, out of
    /// `Builder::http2_grown_windows_budget`: at most what uploads whose
    /// handlers stop reading can make the server hold beyond
    /// `http2_max_unread_body_bytes` a connection
    /// (`megaconn_http2_grown_windows_bytes`).
    pub http2_grown_windows_bytes: u64,
    /// Requests refused, connections closed, hub messages dropped
    /// (`hub_queue`) and subscriptions refused (`max_subscriptions`) by a limit, by the limit's label (`max_header_bytes`,
    /// `max_body_bytes`, ...; every label, zero or not), as `megaconn_limit_hits_total{limit}` shows them.
    pub limit_hits: Vec<(&'static str, u64)>,
    /// Fatal TLS alerts peers ended connections with (closed as
    /// `client_closed`: the peer's decision), by the alert's name
    /// (`unknown_ca`, `bad_certificate`, `user_canceled`, ...; `other` for
    /// a code RFC 8446 does not list; every label, zero or not), as
    /// `megaconn_tls_alerts_received_total{alert}` shows them.
    pub tls_alerts_received: Vec<(&'static str, u64)>,
    /// TLS handshakes by outcome (`completed`; `abandoned`: the client
    /// closed or reset before finishing, counted closed as `client_closed`;
    /// `failed`; `timeout`; `client_cert`: a client certificate refused;
    /// `crl`: a CRL of the server's own found bad at a handshake; every label, zero or not), as
    /// `megaconn_tls_handshakes_total{outcome}` shows them.
    pub tls_handshakes: Vec<(&'static str, u64)>,
    /// Client certificates refused (`tls_handshakes`' `client_cert`), by
    /// why: `missing` (none sent where required), `unknown_ca`, `revoked`,
    /// `expired`, `not_yet_valid`, `bad` (anything else: a bad signature,
    /// the wrong key usage); every label, zero or not, as
    /// `megaconn_tls_client_cert_refusals_total{reason}` shows them.
    pub tls_client_cert_refusals: Vec<(&'static str, u64)>,
    /// Connections from `proxy_protocol` sources by how their PROXY header
    /// went: `ok` (it named the client), `local` (v2 `LOCAL`, v1
    /// `UNKNOWN`: the socket's address stands), `missing` (other bytes
    /// first, a close or `read_header_timeout` before one), `invalid`,
    /// `too_large` (over `MAX_PROXY_HEADER_BYTES`); every label, zero or
    /// not, as `megaconn_proxy_headers_total{result}` shows them.
    pub proxy_headers: Vec<(&'static str, u64)>,
    /// Per-request metrics: requests by method and status class, durations,
    /// body bytes, close reasons, accept errors by errno, per-worker figures.
    pub request_metrics: RequestStats,
    /// Message protocols (framed TCP): frames, bytes, pushes, queue drops,
    /// heartbeats.
    pub messages: MessageStats,
    /// The span export's counters, when the server traces requests (the
    /// `otel` cargo feature and `Builder::tracing`); `None` otherwise.
    pub otel: Option<OtelStats>,
    /// The certificates' reloads and expiry, when the server has TLS
    /// (`Builder::tls`); `None` otherwise.
    pub tls: Option<TlsStats>,
}

/// A TLS server's certificate reloads ([`TlsConfig::reload`], SIGHUP to
/// `megaconn serve`) and when its certificates expire: what an alert on a
/// renewal that did not take, or on a certificate about to lapse, reads
/// (`megaconn_tls_reloads_total{outcome}`,
/// `megaconn_tls_certificate_expiry_seconds{server_name}`).
///
/// [`TlsConfig::reload`]: crate::TlsConfig::reload
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Reloads that made the files' certificates live.
    pub reloads_ok: u64,
    /// Reloads that failed (a file missing or unreadable, a key that does
    /// not match its certificate): the certificates live before stay live.
    pub reloads_failed: u64,
    /// Each certificate chain served, by the server name (SNI) it is
    /// chosen for, `default` for the one served to every other name, with
    /// its expiry: the earliest `notAfter` of the chain's certificates
    /// (when a client checking the chain starts refusing it), in seconds
    /// since the Unix epoch; `None` when a certificate of the chain could
    /// not be read as X.509.
    pub certificates: Vec<(String, Option<i64>)>,
}

/// What became of the spans a tracing server produced (see
/// `megaconn::otel`): each sampled request's span is exported, dropped at the
/// full queue, or lost in a failed export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtelStats {
    /// Spans the collector accepted.
    pub spans_exported: u64,
    /// Spans dropped because the export queue was full (a slow or dead
    /// collector): the request went on, its span was not kept.
    pub spans_dropped: u64,
    /// Spans in batches whose export failed or timed out.
    pub spans_failed: u64,
    /// Spans waiting in the export queue now.
    pub spans_queued: u64,
}

/// The limits whose hits are HTTP requests refused
/// ([`ServerStats::requests_refused`]): each such refusal, HTTP/1.1's and
/// HTTP/2's, counts one of these and one `protocol_errors`, where no other
/// protocol's close counts any of them. A new limit that refuses requests
/// belongs here.
const REQUEST_REFUSALS: [LimitHit; 7] = [
    LimitHit::MaxHeaderBytes,
    LimitHit::MaxHeaders,
    LimitHit::MaxBodyBytes,
    LimitHit::UriTooLong,
    LimitHit::MalformedRequest,
    LimitHit::HttpVersion,
    LimitHit::Http2MaxHeaderListSize,
];

/// Adds a worker's array of counters to the sums, slot by slot.
fn add_up(sums: &mut [u64], counters: &[AtomicU64]) {
    for (sum, c) in sums.iter_mut().zip(counters) {
        *sum += c.load(Relaxed);
    }
}

impl ServerStats {
    pub(crate) fn sum(workers: &[Arc<WorkerStats>]) -> ServerStats {
        let mut s = ServerStats::default();
        let mut limit_hits = [0u64; LimitHit::COUNT];
        let mut tls_alerts = [0u64; alerts::COUNT];
        let mut tls_handshakes = [0u64; HandshakeOutcome::COUNT];
        let mut tls_client_cert_refusals = [0u64; CertRefusal::COUNT];
        let mut proxy_headers = [0u64; PROXY_HEADER_RESULTS.len()];
        // Summed signed: a body given back on another thread than the
        // worker's may be read before its growth was.
        let mut grown_windows = 0i64;
        for w in workers {
            let open = w.connections_open.load(Relaxed);
            s.connections_open += open;
            s.connections_per_worker.push(open);
            s.connections_idle += w.connections_idle.load(Relaxed);
            s.accepted += w.accepted.load(Relaxed);
            s.closed += w.closed.load(Relaxed);
            s.requests += w.requests.load(Relaxed);
            s.requests_forced += w.requests_forced.load(Relaxed);
            s.panics += w.panics.load(Relaxed);
            s.cancelled += w.cancelled.load(Relaxed);
            s.responses_cut += w.responses_cut.load(Relaxed);
            s.timeouts += w.timeouts.load(Relaxed);
            s.protocol_errors += w.protocol_errors.load(Relaxed);
            s.accept_errors += w.accept_errors.load(Relaxed);
            s.buffers_checked_out += w.buffers_checked_out.load(Relaxed);
            s.buffers_pooled += w.buffers_pooled.load(Relaxed);
            s.connections_parked += w.connections_parked.load(Relaxed);
            s.rejected_accept_rate += w.rejected_accept_rate.load(Relaxed);
            s.rejected_per_ip += w.rejected_per_ip.load(Relaxed);
            s.parks += w.parks.load(Relaxed);
            s.wakes_cold += w.wakes_cold.load(Relaxed);
            s.wakes_hot += w.wakes_hot.load(Relaxed);
            s.wakes_without_task += w.wakes_without_task.load(Relaxed);
            s.parking_epoll_ctl += w.parking_epoll_ctl.load(Relaxed);
            s.parking_wakeups += w.parking_wakeups.load(Relaxed);
            s.parking_wake_batches += w.parking_wake_batches.load(Relaxed);
            s.accept_waits_at_limit += w.accept_waits_at_limit.load(Relaxed);
            s.worker_stalls += w.stalls.load(Relaxed);
            s.messages.add(&w.messages);
            s.adopted += w.adopted.load(Relaxed);
            s.handover_refused += w.handover_refused.load(Relaxed);
            s.aged_out += w.aged_out.load(Relaxed);
            s.shutdown_drain_pending += w.drain_pending.load(Relaxed);
            grown_windows += w.http2_grown_windows.load(Relaxed);
            add_up(&mut limit_hits, &w.limit_hits);
            add_up(&mut tls_alerts, &w.tls_alerts);
            add_up(&mut tls_handshakes, &w.tls_handshakes);
            add_up(&mut tls_client_cert_refusals, &w.tls_client_cert_refusals);
            add_up(&mut proxy_headers, &w.proxy_headers);
        }
        s.http2_grown_windows_bytes = grown_windows.max(0) as u64;
        s.requests_refused = REQUEST_REFUSALS
            .iter()
            .map(|&hit| limit_hits[hit as usize])
            .sum();
        s.limit_hits = LimitHit::LABELS.iter().copied().zip(limit_hits).collect();
        s.tls_alerts_received = alerts::labels().zip(tls_alerts).collect();
        s.tls_handshakes = HandshakeOutcome::LABELS
            .iter()
            .copied()
            .zip(tls_handshakes)
            .collect();
        s.tls_client_cert_refusals = CertRefusal::LABELS
            .iter()
            .copied()
            .zip(tls_client_cert_refusals)
            .collect();
        s.proxy_headers = PROXY_HEADER_RESULTS
            .iter()
            .copied()
            .zip(proxy_headers)
            .collect();
        s.request_metrics = RequestStats::sum(workers);
        s
    }
}

/// The `result` labels of `megaconn_proxy_headers_total`, in the order of
/// `conn::proxy_header::HeaderOutcome` (which says what each means).
pub(crate) const PROXY_HEADER_RESULTS: [&str; 5] =
    ["ok", "local", "missing", "invalid", "too_large"];

/// Why a client's certificate was refused: the `reason` label of
/// `megaconn_tls_client_cert_refusals_total` and the word its log line
/// says. Bounded: rustls' many error kinds fold into these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertRefusal {
    /// None sent where one is required (`certificate_required`).
    Missing,
    /// Not issued by a client CA root (`unknown_ca`): another fleet's, or
    /// the roots were rotated before the devices.
    UnknownCa,
    /// Revoked by a CRL given (`certificate_revoked`).
    Revoked,
    /// Past its `notAfter` (`certificate_expired`).
    Expired,
    /// Before its `notBefore`: a clock off on the server, or on the CA
    /// that issued it.
    NotYetValid,
    /// Anything else about it: a bad signature or encoding, the wrong key
    /// usage, an unsupported algorithm.
    Bad,
}

impl CertRefusal {
    /// How many reasons there are.
    pub(crate) const COUNT: usize = 6;
    /// Metric labels, by discriminant.
    pub(crate) const LABELS: [&'static str; CertRefusal::COUNT] = [
        "missing",
        "unknown_ca",
        "revoked",
        "expired",
        "not_yet_valid",
        "bad",
    ];

    /// The metric label (and the word the log line says).
    pub(crate) fn label(self) -> &'static str {
        CertRefusal::LABELS[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requests_refused` adds up the HTTP request refusals' limit hits, of
    /// every worker, and no other protocol's (a WebSocket frame over its
    /// limit, a framed line too long, an HTTP/2 flood).
    #[test]
    fn requests_refused_counts_http_refusals_only() {
        let workers = [
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        ];
        LimitHit::MaxHeaderBytes.count(&workers[0]);
        LimitHit::Http2MaxHeaderListSize.count(&workers[1]);
        LimitHit::MaxBodyBytes.count(&workers[1]);
        LimitHit::WsFrameTooBig.count(&workers[0]);
        LimitHit::FramedLineTooLong.count(&workers[1]);
        LimitHit::H2EnhanceYourCalm.count(&workers[0]);
        assert_eq!(ServerStats::sum(&workers).requests_refused, 3);
    }
}
