//! The stall detector: tells the operator when a handler blocks a worker.
//!
//! Thread-per-core is megaconn's trade-off: a worker thread serves many
//! connections, so a handler that blocks it (`std::thread::sleep`, a
//! synchronous database call, a long computation) delays every other
//! connection on that worker — where a work-stealing runtime would move
//! them elsewhere. Nothing about that is visible from inside the stalled
//! thread, so a watchdog thread outside it watches each worker's event
//! loop: every worker bumps a counter from a timer task; when a counter has
//! not moved for `stall_threshold`, the worker is stalled, which is logged
//! once per stall (with the connections it was handling, when tracked) and
//! counted in `megaconn_worker_stalls_total`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::observe::lifecycle::Registry;
use crate::observe::stats::{incr, WorkerStats};
use crate::ConnectionState;

/// How often a worker proves its event loop runs, as a share of the
/// threshold: four ticks per threshold, so a stall is seen within 1.25× it.
const TICKS_PER_THRESHOLD: u32 = 4;

/// The worker side: bumps the worker's loop counter until the worker ends.
pub(crate) async fn tick(stats: Arc<WorkerStats>, threshold: Duration) {
    let mut every = tokio::time::interval(threshold / TICKS_PER_THRESHOLD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        stats.loop_ticks.fetch_add(1, Relaxed);
    }
}

/// The watchdog thread; it stops when the returned sender is dropped.
pub(crate) fn watch(
    workers: Arc<[Arc<WorkerStats>]>,
    registries: Arc<[Arc<Registry>]>,
    threshold: Duration,
) -> std::io::Result<mpsc::Sender<()>> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("megaconn-stall-watch".into())
        .spawn(move || {
            let mut seen: Vec<(u64, Instant, bool)> = workers
                .iter()
                .map(|w| (w.loop_ticks.load(Relaxed), Instant::now(), false))
                .collect();
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(threshold / TICKS_PER_THRESHOLD)
            {
                for (index, (worker, (ticks, since, reported))) in
                    workers.iter().zip(seen.iter_mut()).enumerate()
                {
                    let now_ticks = worker.loop_ticks.load(Relaxed);
                    if now_ticks != *ticks {
                        *ticks = now_ticks;
                        *since = Instant::now();
                        *reported = false;
                        continue;
                    }
                    let stalled = since.elapsed();
                    // Counted from the watchdog's start for a worker that has
                    // not ticked yet: a worker starts in microseconds, so one
                    // silent for a whole threshold is stalled too.
                    if *reported || stalled < threshold {
                        continue;
                    }
                    *reported = true;
                    incr(&worker.stalls);
                    let handling = registries
                        .get(index)
                        .map(|r| describe_handling(r, index))
                        .unwrap_or_else(|| "turn on track_connections to see which".into());
                    tracing::warn!(
                        worker = index,
                        stalled_ms = stalled.as_millis() as u64,
                        in_flight = worker.request_metrics.in_flight.load(Relaxed),
                        handling = %handling,
                        "a worker has not come back to its event loop: a handler is blocking \
                         its thread, delaying every connection on this worker; run blocking \
                         work with tokio::task::spawn_blocking"
                    );
                }
            }
        })?;
    Ok(stop)
}

/// The connections a worker is handling requests on, for the log line.
fn describe_handling(registry: &Registry, worker: usize) -> String {
    let mut all = Vec::new();
    registry.snapshot(&mut all);
    let busy: Vec<String> = all
        .iter()
        .filter(|c| c.worker == worker && c.state == ConnectionState::Handling)
        .map(|c| format!("connection {} from {}", c.id, c.peer))
        .collect();
    if busy.is_empty() {
        "no request handler in progress".into()
    } else {
        busy.join(", ")
    }
}
