//! The export pipeline: a bounded queue that workers feed without ever
//! blocking, and the `megaconn-otel` thread that drains it in batches into
//! the OTLP exporter.
//!
//! ```text
//!  worker: span.end() -> on_end -> try_send --full--> dropped += 1
//!                                     |
//!                    mpsc::channel(max_queue_spans)     control (unbounded):
//!                                     |                 flush, shutdown
//!  megaconn-otel thread: batch (max_batch_spans or batch_delay)
//!                        -> timeout(export_timeout, exporter.export)
//! ```
//!
//! The thread owns a current-thread tokio runtime because both OTLP clients
//! (tonic, hyper) need one, and megaconn's workers must never run an export.
//! Control messages have a channel of their own so that asking for a flush
//! or a shutdown never waits behind a full queue: the answer is waited for
//! with a bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use super::{OtelError, OtlpConfig};
use crate::observe::stats::OtelStats;

/// Counters shared by the workers (drops) and the export thread.
#[derive(Debug, Default)]
pub(crate) struct ExportStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    queued: AtomicU64,
}

impl ExportStats {
    pub(crate) fn snapshot(&self) -> OtelStats {
        OtelStats {
            spans_exported: self.exported.load(Relaxed),
            spans_dropped: self.dropped.load(Relaxed),
            spans_failed: self.failed.load(Relaxed),
            spans_queued: self.queued.load(Relaxed),
        }
    }

    /// Counts a span into the queue around `send`: before it, because the
    /// export thread may take the span and count it out before `send` even
    /// returns (counted after, the gauge wrapped to `u64::MAX` meanwhile);
    /// undone when `send` fails.
    #[inline]
    fn enqueue<E>(&self, send: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        self.queued.fetch_add(1, Relaxed);
        let sent = send();
        if sent.is_err() {
            self.queued.fetch_sub(1, Relaxed);
        }
        sent
    }

    /// Counts a span the export thread took out of the queue.
    #[inline]
    fn dequeued(&self) {
        self.queued.fetch_sub(1, Relaxed);
    }
}

/// What the export thread is asked to do besides exporting.
enum Control {
    Resource(Resource),
    /// Export everything queued, then answer.
    Flush(std_mpsc::Sender<OTelSdkResult>),
    /// Flush, shut the exporter down, answer and stop.
    Shutdown(std_mpsc::Sender<OTelSdkResult>),
}

/// The span processor: `on_end` queues, the thread exports.
#[derive(Debug)]
pub(crate) struct QueueProcessor {
    /// Spans are boxed in the queue: a slot is a pointer, and only the spans
    /// that wait take memory.
    spans: mpsc::Sender<Box<SpanData>>,
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<ExportStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by the first shutdown.
    shut: AtomicBool,
    /// How long `force_flush` waits for the thread.
    wait: Duration,
}

impl QueueProcessor {
    /// Starts the export thread, which builds the exporter with `build`
    /// inside its runtime; returns once the exporter is built (or failed).
    pub(crate) fn start<E, F>(
        build: F,
        config: &OtlpConfig,
        stats: Arc<ExportStats>,
    ) -> Result<QueueProcessor, OtelError>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, OtelError> + Send + 'static,
    {
        let (spans, spans_rx) = mpsc::channel(config.max_queue_spans);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let batching = Batching {
            max: config.max_batch_spans,
            delay: config.batch_delay,
            timeout: config.export_timeout,
        };
        let thread_stats = stats.clone();
        // Its lines about failed exports go where the server's do: to the
        // caller's scoped subscriber, if it has one (`caller_log.rs`).
        let log = crate::observe::caller_log::CallerLog::of_this_thread();
        let thread = std::thread::Builder::new()
            .name("megaconn-otel".into())
            .spawn(move || {
                let _log = log.enter();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(OtelError::Exporter(format!(
                            "cannot start the export thread's runtime: {e}"
                        ))));
                        return;
                    }
                };
                let exporter = {
                    let _entered = rt.enter();
                    build()
                };
                match exporter {
                    Ok(exporter) => {
                        let _ = ready_tx.send(Ok(()));
                        let mut thread = ExportThread {
                            spans: spans_rx,
                            control: control_rx,
                            exporter,
                            batching,
                            batch: Vec::with_capacity(batching.max),
                            stats: thread_stats,
                            failures: ExportFailures::default(),
                        };
                        rt.block_on(thread.run());
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| OtelError::Exporter(format!("cannot start the export thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(OtelError::Exporter(
                    "the export thread stopped while building the exporter".into(),
                ))
            }
        }
        Ok(QueueProcessor {
            spans,
            control,
            stats,
            thread: Mutex::new(Some(thread)),
            shut: AtomicBool::new(false),
            wait: config.export_timeout + config.export_timeout,
        })
    }

    /// Sends a control message and waits up to `wait` for its answer.
    fn ask(
        &self,
        make: fn(std_mpsc::Sender<OTelSdkResult>) -> Control,
        wait: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std_mpsc::channel();
        self.control
            .send(make(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(wait)),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    /// Runs on a worker: never blocks. A full queue drops the span.
    fn on_end(&self, span: SpanData) {
        match self.stats.enqueue(|| self.spans.try_send(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => {
                // After shutdown: nothing exports any more.
                self.stats.dropped.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                let dropped = self.stats.dropped.fetch_add(1, Relaxed) + 1;
                // A log line at the 1st, 2nd, 4th, 8th, ... drop: the metric
                // counts each one, the log shows that it happens.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "span export queue full (the OTLP collector is slow or down): \
                         dropping spans; see megaconn_otel_spans_dropped_total, raise \
                         max_queue_spans or lower the sample ratio"
                    );
                }
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, self.wait)
    }

    /// Flushes and stops the thread, waiting up to `timeout` (the SDK's
    /// default is 5 s; a dead collector then costs that once). Both of a
    /// `Tracing`'s providers call it: the second call returns at once.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Relaxed) {
            return Ok(());
        }
        let result = self.ask(Control::Shutdown, timeout);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            if result.is_ok() {
                let _ = thread.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Control::Resource(resource.clone()));
    }
}

/// The one queue, fed by both of a `Tracing`'s providers.
#[derive(Debug)]
pub(crate) struct Shared(pub(crate) Arc<QueueProcessor>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Both providers have the same resource: the first one tells.
        let _ = self.0.control.send(Control::Resource(resource.clone()));
    }
}

/// How the thread batches.
#[derive(Debug, Clone, Copy)]
struct Batching {
    max: usize,
    delay: Duration,
    timeout: Duration,
}

/// The export thread's state.
struct ExportThread<E> {
    spans: mpsc::Receiver<Box<SpanData>>,
    control: mpsc::UnboundedReceiver<Control>,
    exporter: E,
    batching: Batching,
    batch: Vec<SpanData>,
    stats: Arc<ExportStats>,
    failures: ExportFailures,
}

impl<E: SpanExporter> ExportThread<E> {
    /// Collects a batch until it is full or its first span has waited
    /// `delay`, exports it, repeats; answers control messages in between.
    async fn run(&mut self) {
        let mut due: Option<Instant> = None;
        loop {
            let deadline = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Resource(resource)) => self.exporter.set_resource(&resource),
                    Some(Control::Flush(answer)) => {
                        let result = self.flush().await;
                        due = None;
                        let _ = answer.send(result);
                    }
                    Some(Control::Shutdown(answer)) => {
                        let result = self.flush().await;
                        let shut = self.exporter.shutdown_with_timeout(self.batching.timeout);
                        let _ = answer.send(result.and(shut));
                        return;
                    }
                    None => {
                        let _ = self.flush().await;
                        return;
                    }
                },
                span = self.spans.recv() => match span {
                    Some(span) => {
                        self.stats.dequeued();
                        self.batch.push(*span);
                        due.get_or_insert_with(|| Instant::now() + self.batching.delay);
                        if self.batch.len() >= self.batching.max {
                            // A failed export is counted and logged in `export`.
                            let _ = self.export().await;
                            due = None;
                        }
                    }
                    None => {
                        let _ = self.export().await;
                        return;
                    }
                },
                () = tokio::time::sleep_until(deadline), if due.is_some() => {
                    let _ = self.export().await;
                    due = None;
                }
            }
        }
    }

    /// Exports everything queued now, batch by batch.
    async fn flush(&mut self) -> OTelSdkResult {
        let mut result = Ok(());
        while let Ok(span) = self.spans.try_recv() {
            self.stats.dequeued();
            self.batch.push(*span);
            if self.batch.len() >= self.batching.max {
                result = result.and(self.export().await);
            }
        }
        result.and(self.export().await)
    }

    /// Exports the batch (emptying it) under the export timeout; counts the
    /// outcome.
    async fn export(&mut self) -> OTelSdkResult {
        if self.batch.is_empty() {
            return Ok(());
        }
        let spans = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batching.max));
        let n = spans.len() as u64;
        let result =
            match tokio::time::timeout(self.batching.timeout, self.exporter.export(spans)).await {
                Ok(result) => result,
                Err(_) => Err(OTelSdkError::Timeout(self.batching.timeout)),
            };
        match &result {
            Ok(()) => {
                self.stats.exported.fetch_add(n, Relaxed);
                if let Some(FailureLine::Recovered {
                    batches,
                    spans,
                    for_secs,
                }) = self.failures.exported(Instant::now())
                {
                    tracing::info!(
                        failed_batches = batches,
                        failed_spans = spans,
                        after_secs = for_secs,
                        "span export works again"
                    );
                }
            }
            Err(e) => {
                let failed = self.stats.failed.fetch_add(n, Relaxed) + n;
                match self.failures.failed(Instant::now(), n) {
                    Some(FailureLine::First) => tracing::warn!(
                        error = %e,
                        spans = n,
                        failed_so_far = failed,
                        "span export failed; check that the OTLP collector is up at the configured \
                         endpoint (see megaconn_otel_spans_failed_total); while it fails, one line \
                         a minute"
                    ),
                    Some(FailureLine::Still { batches, spans }) => tracing::warn!(
                        error = %e,
                        batches,
                        spans,
                        failed_so_far = failed,
                        "span export still failing: these batches failed since the last line"
                    ),
                    Some(FailureLine::Recovered { .. }) | None => {}
                }
            }
        }
        result
    }
}

/// What the export thread logs about failed exports: the first failure at
/// once, then one line a [`FAILURE_LINE_EVERY`] with the batches failed
/// since, and one line when an export works again. A collector that is
/// down fails every batch (once a `batch_delay` under load): a line per
/// batch was ~1 a second for as long as it stayed down.
#[derive(Debug, Default)]
struct ExportFailures {
    /// When the current run of failures began; `None` while exports work.
    since: Option<Instant>,
    /// When the last line was written.
    logged: Option<Instant>,
    /// Batches and spans failed since the last line.
    batches: u64,
    spans: u64,
    /// Batches and spans failed in the whole run.
    run_batches: u64,
    run_spans: u64,
}

/// How often a run of failed exports is logged.
const FAILURE_LINE_EVERY: Duration = Duration::from_secs(60);

/// A line [`ExportFailures`] asks for.
#[derive(Debug, PartialEq, Eq)]
enum FailureLine {
    /// The first failure of a run.
    First,
    /// Still failing: `batches` (`spans`) failed since the last line.
    Still { batches: u64, spans: u64 },
    /// Exports work again after a run of `batches` (`spans`) failures that
    /// lasted `for_secs`.
    Recovered {
        batches: u64,
        spans: u64,
        for_secs: u64,
    },
}

impl ExportFailures {
    fn failed(&mut self, now: Instant, spans: u64) -> Option<FailureLine> {
        self.run_batches += 1;
        self.run_spans += spans;
        if self.since.is_none() {
            self.since = Some(now);
            self.logged = Some(now);
            return Some(FailureLine::First);
        }
        self.batches += 1;
        self.spans += spans;
        if self
            .logged
            .is_some_and(|at| now.duration_since(at) >= FAILURE_LINE_EVERY)
        {
            self.logged = Some(now);
            let line = FailureLine::Still {
                batches: self.batches,
                spans: self.spans,
            };
            (self.batches, self.spans) = (0, 0);
            return Some(line);
        }
        None
    }

    fn exported(&mut self, now: Instant) -> Option<FailureLine> {
        let since = self.since?;
        let line = FailureLine::Recovered {
            batches: self.run_batches,
            spans: self.run_spans,
            for_secs: now.duration_since(since).as_secs(),
        };
        *self = ExportFailures::default();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The export thread may take a span and count it out before the
    /// worker's send returns: the queued gauge must not dip below zero
    /// (wrapping to u64::MAX, as it did when counted after the send).
    #[test]
    fn the_queued_gauge_never_wraps_when_the_thread_takes_a_span_first() {
        let stats = ExportStats::default();
        let sent: Result<(), ()> = stats.enqueue(|| {
            // The export thread, between the send and its return.
            stats.dequeued();
            assert_eq!(stats.snapshot().spans_queued, 0);
            Ok(())
        });
        assert_eq!(sent, Ok(()));
        assert_eq!(stats.snapshot().spans_queued, 0);
        // A send that fails (queue full, or shut) leaves nothing counted.
        assert_eq!(stats.enqueue(|| Err(())), Err(()));
        assert_eq!(stats.snapshot().spans_queued, 0);
        assert_eq!(stats.enqueue(|| Ok::<(), ()>(())), Ok(()));
        assert_eq!(stats.snapshot().spans_queued, 1);
    }

    /// A collector that stays down fails a batch a second: the first
    /// failure is logged, then one line a minute with what failed since,
    /// then one when exports work again; a new run starts afresh.
    #[test]
    fn a_run_of_failed_exports_is_logged_once_a_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut f = ExportFailures::default();
        assert_eq!(f.exported(at(0)), None, "nothing to say while exports work");
        assert_eq!(f.failed(at(0), 512), Some(FailureLine::First));
        for s in 1..60 {
            assert_eq!(f.failed(at(s), 512), None, "second {s}");
        }
        assert_eq!(
            f.failed(at(60), 512),
            Some(FailureLine::Still {
                batches: 60,
                spans: 60 * 512
            })
        );
        assert_eq!(f.failed(at(61), 10), None);
        assert_eq!(
            f.exported(at(70)),
            Some(FailureLine::Recovered {
                batches: 62,
                spans: 61 * 512 + 10,
                for_secs: 70
            })
        );
        assert_eq!(f.exported(at(71)), None);
        assert_eq!(f.failed(at(80), 1), Some(FailureLine::First), "a new run");
    }
}
