//! Whole-server counters across worker processes: a shared memory block with
//! one slot per process.
//!
//! The supervisor creates the block (a `memfd`, inherited by its children) and
//! names its descriptor in `MEGACONN_STATS_FD`; each worker process copies its
//! own counters into its slot ([`Publishing`]). Any reader (the supervisor's
//! admin `/metrics` and its summary) adds the slots up, so totals are for the
//! whole server, not for whichever process answered.
//!
//! A worker process that exits keeps its counters in the totals: the
//! supervisor moves its slot's last copy to the retired totals, under a lock
//! that readers take too, so a total never goes backwards (Prometheus would
//! take a dip for a counter reset). What a worker process counted after its
//! last copy is lost if it is killed (SIGKILL, the OOM killer); any other
//! exit copies last. While its counters move it copies them every
//! [`PUBLISH_EVERY`]; idle, it looks again at each sign of work from its
//! stall watchdog ([`megaconn::LoopWakes`]), which comes within a quarter
//! of the stall threshold (250 ms) of any change. So a kill loses at most
//! the last second of counts.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use megaconn::metrics::{DURATION_BUCKETS, LIMIT_HIT_LABELS, REJECTED_LABELS};
use megaconn::{LoopWakes, ServerHandle, ServerStats, TlsStats};

use crate::fanout::{ChannelCounts, FanoutCounts};
use crate::shared_families::{self, Extra};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Values copied per process: three gauges, then counters (see `publish`),
/// then [`UPLINK_DROPPED`], [`DOWNLINK_REJECTED`] and [`REQUESTS_REFUSED`],
/// then the labelled counters and the duration histogram from
/// [`LIMIT_HITS`] on, all counters (a histogram's bucket counts and its sum
/// are counters too: they add up over processes and never go down) but
/// for [`TLS_EXPIRY`], a gauge; then [`REQUESTS_FORCED`], then
/// [`GROWN_WINDOWS`], a gauge; then `shared_families.rs`' values
/// ([`shared_families::WIDTH`]: more families, and the per-topic series).
const FIELDS: usize = BASE + shared_families::WIDTH;
/// The values above, before `shared_families.rs`' own.
const BASE: usize = GROWN_WINDOWS + 1;
/// Index of the publishes a worker process dropped on their way up to the
/// supervisor (fanout.rs), set by `publish_channel`.
const UPLINK_DROPPED: usize = 10;
/// Index of the malformed messages a worker process got from the
/// supervisor (fanout.rs), set by `publish_channel`.
const DOWNLINK_REJECTED: usize = 11;
/// Index of `ServerStats::requests_refused`, set by `publish` (for the
/// supervisor's stop line).
const REQUESTS_REFUSED: usize = 12;
/// Index of the first of `ServerStats::limit_hits`, one per label of
/// [`LIMIT_HIT_LABELS`] in its order.
const LIMIT_HITS: usize = 13;
/// Index of `ServerStats::rejected_accept_rate`, then `rejected_per_ip`
/// ([`REJECTED_LABELS`]' order).
const REJECTED: usize = LIMIT_HITS + LIMIT_HIT_LABELS.len();
/// Index of the first request duration bucket: one per bound of
/// [`DURATION_BUCKETS`], then `+Inf` (not cumulative, as `ServerStats`
/// holds them).
const HISTOGRAM: usize = REJECTED + REJECTED_LABELS.len();
/// Index of the sum of the request durations, in nanoseconds.
const HISTOGRAM_SUM: usize = HISTOGRAM + DURATION_BUCKETS.len() + 1;
/// Index of `TlsStats::reloads_ok`, then `reloads_failed`.
const TLS_RELOADS: usize = HISTOGRAM_SUM + 1;
/// Index of the process's earliest certificate expiry (Unix seconds; 0: it
/// has no TLS, or no certificate it could read): a gauge, the earliest of
/// the live processes' is the server's.
const TLS_EXPIRY: usize = TLS_RELOADS + 2;
/// Index of `ServerStats::requests_forced`, set by `publish` (for the
/// supervisor's stop line, which says them apart from those served).
const REQUESTS_FORCED: usize = TLS_EXPIRY + 1;
/// Index of `ServerStats::http2_grown_windows_bytes`: a gauge, what the
/// process's HTTP/2 uploads' windows have grown by now (each process has
/// its own `http2_grown_windows_budget`), summed over the live ones.
const GROWN_WINDOWS: usize = REQUESTS_FORCED + 1;
/// Index of the first counter (the values before it are gauges, and
/// [`TLS_EXPIRY`] and [`GROWN_WINDOWS`]).
const FIRST_COUNTER: usize = 3;

/// Whether the value at `field` is a counter (kept when its process
/// exits) rather than a gauge (gone with it).
fn is_counter(field: usize) -> bool {
    field >= FIRST_COUNTER && field != TLS_EXPIRY && field != GROWN_WINDOWS
}

/// Environment variable naming the inherited descriptor in a worker process.
pub const FD_ENV: &str = "MEGACONN_STATS_FD";

/// A mapped block of `slots` process slots.
pub struct SharedStats {
    base: *const AtomicI64,
    slots: usize,
    fd: OwnedFd,
    /// Counters of processes that exited (kept by the supervisor only).
    retired: [AtomicI64; BASE],
    /// The same of `shared_families.rs`' values.
    retired_extra: Box<[AtomicI64]>,
    /// The topics' names read last (`shared_families::total`).
    topic_names: Mutex<Vec<String>>,
    /// Held while a slot's counters move to `retired`, and while they are
    /// summed: a sum between the two halves of the move would miss them,
    /// and a total would go backwards for one scrape.
    moving: Mutex<()>,
}

impl std::fmt::Debug for SharedStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStats")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

// SAFETY: the mapping is only accessed through atomics and lives as long as
// the struct.
unsafe impl Send for SharedStats {}
// SAFETY: as above.
unsafe impl Sync for SharedStats {}

impl SharedStats {
    /// Creates a zeroed block for `slots` processes (in the supervisor). The
    /// descriptor is inherited by children.
    pub fn create(slots: usize) -> io::Result<SharedStats> {
        let fd = crate::shm::memfd(c"megaconn-stats", slots * FIELDS * 8)?;
        SharedStats::map(fd, slots)
    }

    /// Maps the block a supervisor passed down (in a worker process).
    pub fn inherited(fd: RawFd, slots: usize) -> io::Result<SharedStats> {
        // SAFETY: the supervisor opened this descriptor for us and nothing else
        // in this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        SharedStats::map(fd, slots)
    }

    fn map(fd: OwnedFd, slots: usize) -> io::Result<SharedStats> {
        let ptr = crate::shm::map(&fd, slots * FIELDS * 8)?;
        Ok(SharedStats {
            base: ptr.cast(),
            slots,
            fd,
            // `Default` stops at arrays of 32.
            retired: std::array::from_fn(|_| AtomicI64::new(0)),
            retired_extra: (0..shared_families::WIDTH)
                .map(|_| AtomicI64::new(0))
                .collect(),
            topic_names: Mutex::default(),
            moving: Mutex::new(()),
        })
    }

    /// The descriptor children inherit.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn field(&self, slot: usize, field: usize) -> &AtomicI64 {
        assert!(slot < self.slots && field < FIELDS);
        // SAFETY: in bounds of the mapping, 8-aligned (mmap is page-aligned).
        unsafe { &*self.base.add(slot * FIELDS + field) }
    }

    /// `slot`'s values of `shared_families.rs`.
    fn extra(&self, slot: usize) -> &[AtomicI64] {
        assert!(slot < self.slots);
        // SAFETY: the slot's last `WIDTH` fields, in bounds of the mapping.
        unsafe {
            std::slice::from_raw_parts(self.base.add(slot * FIELDS + BASE), shared_families::WIDTH)
        }
    }

    /// Writes one process's counters into its slot.
    pub fn publish(&self, slot: usize, s: &ServerStats) {
        let values = [
            s.connections_open,
            s.connections_idle,
            s.connections_parked,
            s.accepted as i64,
            s.closed as i64,
            s.requests as i64,
            s.panics as i64,
            s.timeouts as i64,
            s.protocol_errors as i64,
            s.accept_errors as i64,
        ];
        for (i, v) in values.into_iter().enumerate() {
            self.field(slot, i).store(v, Relaxed);
        }
        self.field(slot, REQUESTS_REFUSED)
            .store(s.requests_refused as i64, Relaxed);
        self.field(slot, REQUESTS_FORCED)
            .store(s.requests_forced as i64, Relaxed);
        let grown = i64::try_from(s.http2_grown_windows_bytes).unwrap_or(i64::MAX);
        self.field(slot, GROWN_WINDOWS).store(grown, Relaxed);
        // By label, not by place: a label the library has and this block
        // not (or the reverse) cannot land in another's field.
        for (i, label) in LIMIT_HIT_LABELS.iter().enumerate() {
            let n = s
                .limit_hits
                .iter()
                .find(|(l, _)| l == label)
                .map_or(0, |h| h.1);
            self.field(slot, LIMIT_HITS + i).store(n as i64, Relaxed);
        }
        for (i, n) in [s.rejected_accept_rate, s.rejected_per_ip]
            .into_iter()
            .enumerate()
        {
            self.field(slot, REJECTED + i).store(n as i64, Relaxed);
        }
        let duration = &s.request_metrics.duration;
        for (i, &n) in duration
            .counts
            .iter()
            .take(DURATION_BUCKETS.len() + 1)
            .enumerate()
        {
            self.field(slot, HISTOGRAM + i).store(n as i64, Relaxed);
        }
        self.field(slot, HISTOGRAM_SUM)
            .store(duration.sum.as_nanos() as i64, Relaxed);
        let tls = s.tls.clone().unwrap_or_default();
        self.field(slot, TLS_RELOADS)
            .store(tls.reloads_ok as i64, Relaxed);
        self.field(slot, TLS_RELOADS + 1)
            .store(tls.reloads_failed as i64, Relaxed);
        let earliest = tls.certificates.iter().filter_map(|c| c.1).min();
        self.field(slot, TLS_EXPIRY)
            .store(earliest.unwrap_or(0), Relaxed);
        shared_families::publish(self.extra(slot), s);
    }

    /// Writes a worker process's publish channel counters: the publishes
    /// it dropped on their way up to the supervisor (its channel's queue
    /// was full), and the malformed messages that came down.
    pub fn publish_channel(&self, slot: usize, counts: ChannelCounts) {
        self.field(slot, UPLINK_DROPPED)
            .store(counts.uplink_dropped as i64, Relaxed);
        self.field(slot, DOWNLINK_REJECTED)
            .store(counts.rejected as i64, Relaxed);
    }

    /// The publish channel counters of every process, live and retired.
    pub fn channel_totals(&self) -> ChannelCounts {
        let _moving = self.moving();
        let sum = |field: usize| {
            let live: i64 = (0..self.slots)
                .map(|slot| self.field(slot, field).load(Relaxed))
                .sum();
            (live + self.retired[field].load(Relaxed)) as u64
        };
        ChannelCounts {
            uplink_dropped: sum(UPLINK_DROPPED),
            rejected: sum(DOWNLINK_REJECTED),
        }
    }

    /// Retires a slot whose process exited: its counters move to the retired
    /// totals (they still count for the whole server), its gauges go to zero
    /// (its connections closed with it), and the slot is free for a new process.
    pub fn retire(&self, slot: usize) {
        let _moving = self.moving();
        for (i, retired) in self.retired.iter().enumerate() {
            let v = self.field(slot, i).swap(0, Relaxed);
            if is_counter(i) {
                retired.fetch_add(v, Relaxed);
            }
        }
        shared_families::retire(self.extra(slot), &self.retired_extra);
    }

    /// `shared_families.rs`' values of every process, live and retired.
    fn extra_total(&self) -> Extra {
        let _moving = self.moving();
        let live = (0..self.slots).map(|slot| self.extra(slot));
        shared_families::total(live, &self.retired_extra, &self.topic_names)
    }

    fn moving(&self) -> MutexGuard<'_, ()> {
        // Nothing panics under it; a poisoned lock guards nothing broken.
        self.moving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sum over every process, live and retired.
    pub fn total(&self) -> ServerStats {
        let _moving = self.moving();
        let mut t = ServerStats::default();
        let r = |i: usize| self.retired[i].load(Relaxed) as u64;
        t.accepted = r(3);
        t.closed = r(4);
        t.requests = r(5);
        t.panics = r(6);
        t.timeouts = r(7);
        t.protocol_errors = r(8);
        t.accept_errors = r(9);
        t.requests_refused = r(REQUESTS_REFUSED);
        t.requests_forced = r(REQUESTS_FORCED);
        let mut hits: Vec<u64> = (0..LIMIT_HIT_LABELS.len())
            .map(|i| r(LIMIT_HITS + i))
            .collect();
        let mut rejected = [r(REJECTED), r(REJECTED + 1)];
        let mut buckets: Vec<u64> = (0..=DURATION_BUCKETS.len())
            .map(|i| r(HISTOGRAM + i))
            .collect();
        let mut nanos = r(HISTOGRAM_SUM);
        let mut reloads = [r(TLS_RELOADS), r(TLS_RELOADS + 1)];
        let mut expiry: Option<i64> = None;
        for slot in 0..self.slots {
            let f = |i| self.field(slot, i).load(Relaxed);
            t.connections_open += f(0);
            t.connections_idle += f(1);
            t.connections_parked += f(2);
            t.accepted += f(3) as u64;
            t.closed += f(4) as u64;
            t.requests += f(5) as u64;
            t.panics += f(6) as u64;
            t.timeouts += f(7) as u64;
            t.protocol_errors += f(8) as u64;
            t.accept_errors += f(9) as u64;
            t.requests_refused += f(REQUESTS_REFUSED) as u64;
            t.requests_forced += f(REQUESTS_FORCED) as u64;
            t.http2_grown_windows_bytes += f(GROWN_WINDOWS) as u64;
            t.connections_per_worker.push(f(0));
            for (i, n) in hits.iter_mut().enumerate() {
                *n += f(LIMIT_HITS + i) as u64;
            }
            for (i, n) in rejected.iter_mut().enumerate() {
                *n += f(REJECTED + i) as u64;
            }
            for (i, n) in buckets.iter_mut().enumerate() {
                *n += f(HISTOGRAM + i) as u64;
            }
            nanos += f(HISTOGRAM_SUM) as u64;
            for (i, n) in reloads.iter_mut().enumerate() {
                *n += f(TLS_RELOADS + i) as u64;
            }
            if f(TLS_EXPIRY) > 0 {
                expiry = Some(expiry.map_or(f(TLS_EXPIRY), |e| e.min(f(TLS_EXPIRY))));
            }
        }
        t.limit_hits = LIMIT_HIT_LABELS.iter().copied().zip(hits).collect();
        [t.rejected_accept_rate, t.rejected_per_ip] = rejected;
        t.request_metrics.duration.counts = buckets;
        t.request_metrics.duration.sum = Duration::from_nanos(nanos);
        if expiry.is_some() || reloads != [0, 0] {
            let mut tls = TlsStats::default();
            [tls.reloads_ok, tls.reloads_failed] = reloads;
            // One series, the earliest of every process's certificates:
            // the totals keep a single process's names without their
            // labels.
            tls.certificates = vec![(String::new(), expiry)];
            t.tls = Some(tls);
        }
        t
    }
}

/// How often a worker process copies its counters to the shared block
/// while they change, so how far the supervisor's `/metrics` may lag
/// (Prometheus scrapes every 15 s or so), and about what a killed worker
/// process loses (see the module doc). Each look wakes the process twice
/// (tokio's timer wheel reaches a deadline past 64 ms in two steps): at
/// 250 ms that was 8 of the ~20 wake-ups per second of an idle worker
/// process (bench/HEARTBEAT.md).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// A worker process's copies of its server's counters into its slot: every
/// [`PUBLISH_EVERY`] while they change; once a look finds them unchanged,
/// at each sign of work of its server ([`LoopWakes`]), so an idle process
/// is not woken to find them unchanged again but by its own workers'
/// wake-ups. (They used to be looked at again 2, 4, then every 8 s: up to
/// 8 s of counts were lost when a process was killed after a quiet spell.)
pub struct Publishing {
    slot: usize,
    block: SharedStats,
    handle: ServerHandle,
    /// What the slot holds (`None`: nothing yet).
    published: Option<ServerStats>,
    /// `None` when the server has no stall detector (the CLI always has
    /// one): then it looks every [`PUBLISH_EVERY`], changed or not.
    wakes: Option<LoopWakes>,
    /// The last look found nothing new: the next waits for a sign of work.
    idle: bool,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl Publishing {
    /// Copies `handle`'s counters into `slot` of `block`, from
    /// [`PUBLISH_EVERY`] from now, each time [`Publishing::due`] resolves
    /// and [`Publishing::look`] is called.
    pub fn new(slot: usize, block: SharedStats, handle: ServerHandle) -> Publishing {
        Publishing {
            slot,
            block,
            wakes: handle.loop_wakes(),
            handle,
            published: None,
            idle: false,
            next: Box::pin(tokio::time::sleep(PUBLISH_EVERY)),
        }
    }

    /// Resolves when the next look is due: [`PUBLISH_EVERY`] after the
    /// last one, or, after one that found nothing new, at the next sign of
    /// work. Cancel-safe.
    pub async fn due(&mut self) {
        match &mut self.wakes {
            Some(wakes) if self.idle => wakes.woken().await,
            _ => self.next.as_mut().await,
        }
    }

    /// Looks at the counters, copies them if they changed, and sets the
    /// next look; `channel`: the process's publish channel counters
    /// (fanout.rs), copied each time.
    pub fn look(&mut self, channel: ChannelCounts) {
        let stats = self.handle.stats();
        self.idle = self.published.as_ref() == Some(&stats) && self.wakes.is_some();
        if self.published.as_ref() != Some(&stats) {
            self.block.publish(self.slot, &stats);
            self.published = Some(stats);
        }
        self.block.publish_channel(self.slot, channel);
        if !self.idle {
            self.next
                .as_mut()
                .reset(tokio::time::Instant::now() + PUBLISH_EVERY);
        }
    }

    /// The last copy, as the process exits.
    pub fn last(&self) {
        self.block.publish(self.slot, &self.handle.stats());
    }
}

impl SharedStats {
    /// The whole server's totals as Prometheus text, for the supervisor's admin
    /// `/metrics`. Same metric names as a single process's `/metrics` for what
    /// the shared block carries (`megaconn_requests` without its method and
    /// status labels; `shared_families_tests.rs` lists what it does not carry,
    /// and why), plus `megaconn_process_connections` per worker process
    /// and the publish counters of the channels between processes (`fanout`
    /// from the supervisor's side).
    #[cfg(test)]
    pub fn render_prometheus(&self, fanout: FanoutCounts) -> String {
        self.render_prometheus_with(fanout, megaconn::metrics::ProcessCollector::this_process())
    }

    /// [`render_prometheus`](SharedStats::render_prometheus) with
    /// `megaconn_build_info` and `process_*` from `process` (the
    /// supervisor's: summed over it and its worker processes).
    pub fn render_prometheus_with(
        &self,
        fanout: FanoutCounts,
        process: megaconn::metrics::ProcessCollector,
    ) -> String {
        // `process_*` have no prefix (the client libraries' names).
        let mut registry = Registry::default();
        registry
            .sub_registry_with_prefix("megaconn")
            .register_collector(Box::new(Totals {
                stats: self.total(),
                extra: self.extra_total(),
                fanout,
                channel: self.channel_totals(),
            }));
        registry.register_collector(Box::new(process));
        let mut out = String::with_capacity(2048);
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A snapshot of the totals, encoded once per scrape.
#[derive(Debug)]
struct Totals {
    stats: ServerStats,
    /// `shared_families.rs`' families.
    extra: Extra,
    fanout: FanoutCounts,
    channel: ChannelCounts,
}

impl Collector for Totals {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.stats;
        let gauges = [
            (
                "connections_open",
                "Connections open now, all worker processes.",
                t.connections_open,
            ),
            (
                "connections_idle",
                "Open connections waiting for their next request (parked included).",
                t.connections_idle,
            ),
            (
                "connections_parked",
                "Idle connections parked outside the runtime.",
                t.connections_parked,
            ),
            (
                "http2_grown_windows_bytes",
                "What HTTP/2 streams' receive windows have grown by now, their handlers keeping up with uploads, out of http2_grown_windows_budget (one budget per worker process; past it, growths refused count in limit_hits{limit=\"http2_grown_windows_budget\"}), all worker processes.",
                i64::try_from(t.http2_grown_windows_bytes).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        let counters = [
            (
                "connections_accepted",
                "Connections accepted since start (exited worker processes included).",
                t.accepted,
            ),
            (
                "requests",
                "Requests handed to the service (those the forced shutdown at shutdown_timeout cut off included).",
                t.requests,
            ),
            (
                "panics",
                "Handlers or response bodies that panicked.",
                t.panics,
            ),
            (
                "timeouts",
                "Connections closed by a header, idle, read or write timeout.",
                t.timeouts,
            ),
            (
                "protocol_errors",
                "HTTP requests refused as malformed or over a limit, and connections closed for another protocol error (WebSocket, framed, HTTP/2, TLS).",
                t.protocol_errors,
            ),
            (
                "publish_forwarded",
                "Publishes queued to a worker process's channel (one per process reached).",
                self.fanout.forwarded,
            ),
            (
                "publish_dropped",
                "Publishes dropped for a worker process whose channel queue was full (a slow process).",
                self.fanout.dropped,
            ),
            (
                "publish_rejected",
                "Malformed publish messages from a worker process (dropped).",
                self.fanout.rejected,
            ),
            (
                "publish_uplink_dropped",
                "Publishes a worker process dropped on their way to the supervisor (its channel queue was full).",
                self.channel.uplink_dropped,
            ),
            (
                "publish_downlink_rejected",
                "Malformed publish messages a worker process got from the supervisor (dropped).",
                self.channel.rejected,
            ),
        ];
        for (name, help, v) in counters {
            ConstCounter::new(v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let labelled = [
            (
                "limit_hits",
                "Times a limit or a malformed message cut something short (a request refused, a connection closed, a hub message dropped, a subscription or publish refused), by which, in every worker process.",
                &t.limit_hits,
            ),
            (
                "connections_rejected",
                "Connections refused right after accept, by the admission limit that refused them.",
                &REJECTED_LABELS
                    .into_iter()
                    .zip([t.rejected_accept_rate, t.rejected_per_ip])
                    .collect(),
            ),
        ];
        for (name, help, series) in labelled {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for &(label, n) in series {
                ConstCounter::new(n).encode(m.encode_family(&[("limit", label)])?)?;
            }
        }
        let duration = &t.request_metrics.duration;
        e.encode_descriptor(
            "request_duration",
            "Time from the request head to the end of the response (all worker processes).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            duration.sum.as_secs_f64(),
            duration.count(),
            &duration.per_bucket(),
            None,
        )?;
        if let Some(tls) = &t.tls {
            let mut m = e.encode_descriptor(
                "tls_reloads",
                "Certificate reloads (SIGHUP, passed on to every worker process) by outcome: ok, or failed (the certificates live before stay live), all worker processes.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in [("ok", tls.reloads_ok), ("failed", tls.reloads_failed)] {
                ConstCounter::new(n).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
            if let Some(expiry) = tls.certificates.iter().find_map(|c| c.1) {
                ConstGauge::new(expiry).encode(e.encode_descriptor(
                    "tls_certificate_expiry",
                    "When the first certificate served by a live worker process expires (the earliest notAfter of their chains), in seconds since the Unix epoch.",
                    Some(&Unit::Seconds),
                    MetricType::Gauge,
                )?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "process_connections",
            "Open connections per worker process (by supervisor slot).",
            None,
            MetricType::Gauge,
        )?;
        for (process, n) in t.connections_per_worker.iter().enumerate() {
            ConstGauge::new(*n).encode(m.encode_family(&[("process", process as u64)])?)?;
        }
        self.extra.encode(&mut e)
    }
}

impl Drop for SharedStats {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.slots * FIELDS * 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A total read while a slot retires counts the slot's counters once:
    /// before the move or after it, never in neither place. Without the
    /// lock, a sum that read the retired totals before a move and the slot
    /// after it went backwards by the slot's counts for one scrape.
    ///
    /// In lockstep, so that each round is a chance to catch that and no
    /// round waits long on the lock or on the other thread: each round
    /// publishes one request in the slot `total` sums last (a read's whole
    /// sum lies between its look at the retired totals and its look at
    /// that slot), lets the reader read over and over, and retires the
    /// slot while it does, at a point of a read that moves from round to
    /// round (an eighth of a read later each round, eight apart); the
    /// reader stops at the end of the read after the one the retire began
    /// in (with the lock the retire waits for the reads, which would
    /// otherwise take the lock back before it woke), reads once more after
    /// it, and the next round begins. Every read must count every request
    /// published before it began. With the lock out of `total` or `retire`
    /// it failed within the first 17 rounds in each of 20 runs (10 of them
    /// beside two busy loops), most in the first. (It was 200,000 rounds of
    /// a reader and a mover running
    /// free, ~10 s on a loaded machine: the reader held the lock nearly all
    /// the time.) The two threads wait for each other blocked, not
    /// spinning: on a loaded machine a spinning wait takes the core from
    /// the thread it waits for.
    #[test]
    fn a_total_never_goes_backwards_while_a_slot_retires() {
        use std::sync::{Arc, Condvar};
        use std::time::Instant;
        const SLOTS: usize = 32;
        const ROUNDS: u64 = 200;
        // The steps of a round: the reads asked for, under way, the retire
        // begun and done, the reads ended.
        const ASKED: usize = 0;
        const READING: usize = 1;
        const RETIRING: usize = 2;
        const RETIRED: usize = 3;
        const ENDED: usize = 4;
        /// The round each step reached, how long a read takes (ns), and
        /// whether a side is gone (it panicked, or it is done).
        #[derive(Default)]
        struct Steps {
            at: Mutex<([u64; 5], u64, bool)>,
            moved: Condvar,
        }
        impl Steps {
            fn lock(&self) -> MutexGuard<'_, ([u64; 5], u64, bool)> {
                self.at.lock().unwrap_or_else(PoisonError::into_inner)
            }
            fn set(&self, step: usize, round: u64) {
                self.lock().0[step] = round;
                self.moved.notify_all();
            }
            fn get(&self, step: usize) -> u64 {
                self.lock().0[step]
            }
            /// Waits until `step` reaches `round`: false if a side left
            /// first.
            fn until(&self, step: usize, round: u64) -> bool {
                let mut at = self.lock();
                while at.0[step] < round && !at.2 {
                    at = self.moved.wait(at).unwrap_or_else(PoisonError::into_inner);
                }
                at.0[step] >= round
            }
        }
        /// Tells the other side this one is gone, when dropped (a panic's
        /// unwinding included), so that it does not wait for good.
        struct Leaving(Arc<Steps>);
        impl Drop for Leaving {
            fn drop(&mut self) {
                self.0.lock().2 = true;
                self.0.moved.notify_all();
            }
        }
        let last = SLOTS - 1;
        let shared = Arc::new(SharedStats::create(SLOTS).unwrap());
        let steps = Arc::new(Steps::default());
        let reader = {
            let (shared, steps) = (shared.clone(), steps.clone());
            std::thread::spawn(move || {
                let _leaving = Leaving(steps.clone());
                let mut seen = 0;
                let mut read = |round: u64| {
                    let now = shared.total().requests;
                    // `round` requests were published before it began.
                    assert!(
                        now >= round,
                        "{round} published before the read, {now} read"
                    );
                    assert!(now >= seen, "went backwards: {seen} to {now}");
                    seen = now;
                };
                for round in 1..=ROUNDS {
                    if !steps.until(ASKED, round) {
                        return;
                    }
                    let began = Instant::now();
                    read(round);
                    steps.lock().1 = began.elapsed().as_nanos() as u64;
                    steps.set(READING, round);
                    loop {
                        let last = steps.get(RETIRING) == round;
                        read(round);
                        if last {
                            break;
                        }
                    }
                    if !steps.until(RETIRED, round) {
                        return;
                    }
                    read(round);
                    steps.set(ENDED, round);
                }
            })
        };
        let leaving = Leaving(steps.clone());
        let mut s = ServerStats::default();
        s.requests = 1;
        for round in 1..=ROUNDS {
            shared.publish(last, &s);
            steps.set(ASKED, round);
            if !steps.until(READING, round) {
                break;
            }
            // Into the read under way by 0 to 7 eighths of a read.
            let into = steps.lock().1 * (round % 8) / 8;
            let from = Instant::now();
            while (from.elapsed().as_nanos() as u64) < into {
                std::hint::spin_loop();
            }
            steps.set(RETIRING, round);
            shared.retire(last);
            steps.set(RETIRED, round);
            if !steps.until(ENDED, round) {
                break;
            }
        }
        drop(leaving);
        // The reader's panic, if it had one, is the failure.
        if let Err(panic) = reader.join() {
            std::panic::resume_unwind(panic);
        }
        assert_eq!(shared.total().requests, ROUNDS);
    }

    /// The supervisor's `/metrics` carries what a single process's does
    /// for limits and latency: `megaconn_limit_hits_total` (every label,
    /// zeros included), `megaconn_connections_rejected_total` and the
    /// request duration histogram, added up over the worker processes,
    /// live and retired. It had none of them: a worker process's limit hit
    /// showed nowhere under `--processes`. And the gauge of the HTTP/2
    /// windows grown (`megaconn_http2_grown_windows_bytes`), the live
    /// processes' (session 53; it was missing).
    #[test]
    fn limit_hits_rejections_and_durations_add_up() {
        let shared = SharedStats::create(2).unwrap();
        let mut s = ServerStats::default();
        s.limit_hits = vec![("malformed_request", 2), ("http2_control_flood", 1)];
        s.rejected_per_ip = 4;
        s.requests_forced = 1;
        s.http2_grown_windows_bytes = 131_072;
        s.request_metrics.duration.counts[0] = 3;
        s.request_metrics.duration.counts[DURATION_BUCKETS.len()] = 1;
        s.request_metrics.duration.sum = Duration::from_millis(20_250);
        shared.publish(0, &s);
        shared.publish(1, &s);
        shared.retire(1);
        let t = shared.total();
        assert_eq!(t.limit_hits.len(), LIMIT_HIT_LABELS.len());
        let hits = |label: &str| t.limit_hits.iter().find(|h| h.0 == label).unwrap().1;
        assert_eq!(hits("malformed_request"), 4, "live and retired");
        assert_eq!(hits("http2_control_flood"), 2);
        assert_eq!(hits("max_headers"), 0);
        assert_eq!(t.rejected_per_ip, 8);
        assert_eq!(t.requests_forced, 2, "for the stop line, live and retired");
        assert_eq!(
            t.http2_grown_windows_bytes, 131_072,
            "a gauge: the live process's alone"
        );
        assert_eq!(t.request_metrics.duration.count(), 8);
        let text = shared.render_prometheus(FanoutCounts::default());
        for line in [
            "megaconn_limit_hits_total{limit=\"malformed_request\"} 4\n",
            "megaconn_limit_hits_total{limit=\"max_headers\"} 0\n",
            "megaconn_connections_rejected_total{limit=\"max_connections_per_ip\"} 8\n",
            "megaconn_connections_rejected_total{limit=\"accept_rate\"} 0\n",
            "megaconn_request_duration_seconds_bucket{le=\"0.0001\"} 6\n",
            "megaconn_request_duration_seconds_bucket{le=\"10.0\"} 6\n",
            "megaconn_request_duration_seconds_bucket{le=\"+Inf\"} 8\n",
            "megaconn_request_duration_seconds_count 8\n",
            "megaconn_request_duration_seconds_sum 40.5\n",
            "megaconn_http2_grown_windows_bytes 131072\n",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("megaconn_limit_hits_total{"))
            .count();
        assert_eq!(series, LIMIT_HIT_LABELS.len(), "{text}");
    }

    /// The worker processes' certificate reloads add up, and the earliest
    /// certificate expiry of the live ones is the server's (a process gone
    /// takes its certificates with it); without TLS, neither series.
    #[test]
    fn tls_reloads_add_up_and_the_earliest_expiry_is_the_servers() {
        let shared = SharedStats::create(3).unwrap();
        let none = shared.render_prometheus(FanoutCounts::default());
        // (Handshakes are counted with or without TLS, as one process's.)
        for family in ["megaconn_tls_reloads", "megaconn_tls_certificate_expiry"] {
            assert!(!none.contains(family), "{none}");
        }
        let with = |ok, failed, expiry: Option<i64>| {
            let mut tls = TlsStats::default();
            (tls.reloads_ok, tls.reloads_failed) = (ok, failed);
            tls.certificates = vec![("default".to_owned(), expiry)];
            let mut s = ServerStats::default();
            s.tls = Some(tls);
            s
        };
        shared.publish(0, &with(1, 0, Some(2_000_000_000)));
        shared.publish(1, &with(0, 1, Some(1_900_000_000)));
        shared.publish(2, &with(1, 0, None));
        let text = shared.render_prometheus(FanoutCounts::default());
        for line in [
            "megaconn_tls_reloads_total{outcome=\"ok\"} 2\n",
            "megaconn_tls_reloads_total{outcome=\"failed\"} 1\n",
            "megaconn_tls_certificate_expiry_seconds 1900000000\n",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        shared.retire(1);
        let text = shared.render_prometheus(FanoutCounts::default());
        for line in [
            "megaconn_tls_reloads_total{outcome=\"failed\"} 1\n",
            "megaconn_tls_certificate_expiry_seconds 2000000000\n",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    #[test]
    fn slots_add_up() {
        let shared = SharedStats::create(3).unwrap();
        let mut s = ServerStats::default();
        s.accepted = 5;
        s.connections_open = 2;
        shared.publish(0, &s);
        shared.publish(2, &s);
        let t = shared.total();
        assert_eq!(t.accepted, 10);
        assert_eq!(t.connections_open, 4);
        shared.retire(2);
        let t = shared.total();
        assert_eq!(t.accepted, 10, "a retired process's counters still count");
        assert_eq!(t.connections_open, 2, "its connections do not");
        shared.publish_channel(
            1,
            ChannelCounts {
                uplink_dropped: 3,
                rejected: 2,
            },
        );
        shared.retire(1);
        let fanout = FanoutCounts {
            forwarded: 7,
            ..FanoutCounts::default()
        };
        let text = shared.render_prometheus(fanout);
        assert!(
            text.contains("megaconn_publish_forwarded_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("megaconn_publish_uplink_dropped_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("megaconn_publish_downlink_rejected_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("megaconn_connections_accepted_total 10\n"),
            "{text}"
        );
        assert!(text.contains("megaconn_connections_open 2\n"), "{text}");
        assert!(
            text.contains("megaconn_process_connections{process=\"0\"} 2\n"),
            "{text}"
        );
    }
}
