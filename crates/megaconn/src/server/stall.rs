//! The stall detector: tells the operator when a handler blocks a worker.
//!
//! Thread-per-core is megaconn's trade-off: a worker thread serves many
//! connections, so a handler that blocks it (`std::thread::sleep`, a
//! synchronous database call, a long computation) delays every other
//! connection on that worker — where a work-stealing runtime would move
//! them elsewhere. Nothing about that is visible from inside the stalled
//! thread, so a watchdog thread outside it watches each worker's event
//! loop. When a worker has been away from its loop for `stall_threshold`,
//! it is stalled, which is logged once per stall (with the connections it
//! was handling, when tracked) and counted in `megaconn_worker_stalls_total`.
//! A worker whose graceful drain finished is no longer looked at: its loop
//! ended while others may still drain.
//!
//! What it costs an idle server: nothing. Each worker's runtime reports
//! its own waits for events ([`hooks`]): a worker waiting is not stalled,
//! and each return from a wait is progress. Only a worker that stays awake
//! without returning to its wait is asked to prove its loop runs: the
//! watchdog wakes the worker's [`tick`] task, which the loop polls unless
//! something blocks it. When every worker waited and none woke since the
//! last look, the watchdog sleeps until one does. (It used to be a timer
//! task on every worker and a watchdog polling four times per threshold:
//! ~20 wake-ups per second of an idle worker process with its publisher,
//! 0.3 % of a core for five idle processes, and a fifth of a worker's
//! wake-ups at 200,000 connections with 30 s heartbeats; bench/HEARTBEAT.md.)
//!
//! What it sees is also told ([`LoopWakes`], from
//! [`ServerHandle::loop_wakes`](crate::ServerHandle::loop_wakes)): each
//! look that finds a worker awake or woken since the last, and the first
//! look after the watchdog slept, is a sign that counters may have moved.
//! A reader that copies them elsewhere (`serve --processes`' worker
//! processes) waits for that sign instead of polling an idle server, at no
//! cost per request.

use std::future::poll_fn;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::observe::registry::Registry;
use crate::observe::stats::{incr, WorkerStats};
use crate::ConnectionState;

/// How often the watchdog looks at a worker that is awake, as a share of
/// the threshold: four looks per threshold, so a stall is seen within
/// 1.25× it.
const LOOKS_PER_THRESHOLD: u32 = 4;

/// The watchdog's signs of work, made with the server's handle (so that a
/// [`LoopWakes`] can be had before the server starts): bumped by each look
/// that finds a worker awake or woken since the last, and by the first
/// look after the watchdog slept.
pub(crate) type WakeSignal = Arc<tokio::sync::watch::Sender<()>>;

/// Tells when a server's workers woke to do something (a connection, a
/// request, a timer), as its stall detector sees them: for a reader of
/// [`ServerHandle::stats`](crate::ServerHandle::stats) that copies them
/// elsewhere only when they may have changed, so that an idle server is
/// not woken to find them unchanged. Got from
/// [`ServerHandle::loop_wakes`](crate::ServerHandle::loop_wakes).
#[derive(Debug, Clone)]
pub struct LoopWakes(tokio::sync::watch::Receiver<()>);

impl LoopWakes {
    pub(crate) fn new(signal: &WakeSignal) -> LoopWakes {
        LoopWakes(signal.subscribe())
    }

    /// Resolves at the watchdog's next sign of work since this last
    /// resolved (or since this was made): a look (every quarter of the
    /// stall threshold while any worker is awake) that found a worker
    /// awake or woken since the last one, or the first look after the
    /// watchdog slept, a quarter threshold after the wake-up that woke
    /// it. Every counter moves on a worker that is awake, so each change
    /// is followed by a sign within a quarter of the stall threshold
    /// (250 ms by default): a reader that looks at the counters each time
    /// this resolves misses none for longer. An idle server's own
    /// wake-ups (a parking lot's sweep, every 10 s at most) resolve it
    /// once each. Cancel-safe.
    pub async fn woken(&mut self) {
        // The sender lives in the server's handle, which `self` came from
        // and which outlives neither: an error (it was dropped) is never
        // seen while the handle lives; past that, nothing wakes any more.
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What the workers' runtimes and the watchdog share.
#[derive(Debug, Default)]
pub(crate) struct Alarm {
    /// The watchdog sleeps until a worker wakes: the next to wake unparks it.
    asleep: AtomicBool,
    stop: AtomicBool,
    watchdog: OnceLock<Thread>,
}

impl Alarm {
    /// A new alarm, for one server's workers and its watchdog.
    pub(crate) fn new() -> Arc<Alarm> {
        Arc::default()
    }

    fn wake_watchdog(&self) {
        if let Some(thread) = self.watchdog.get() {
            thread.unpark();
        }
    }
}

/// Installs the detector's hooks on a worker's runtime: each wait for
/// events marks the worker waiting, each return from one counts as
/// progress (and wakes a sleeping watchdog). A few atomic operations per
/// wait, none per request.
pub(crate) fn hooks(
    runtime: &mut tokio::runtime::Builder,
    stats: &Arc<WorkerStats>,
    alarm: &Arc<Alarm>,
) {
    let parked = stats.clone();
    runtime.on_thread_park(move || parked.stall.waiting.store(true, Relaxed));
    let (woke, alarm) = (stats.clone(), alarm.clone());
    runtime.on_thread_unpark(move || {
        let woke = &woke.stall;
        woke.waiting.store(false, Relaxed);
        // SeqCst with the watchdog's `asleep` store and its look at `ticks`
        // (in that order on both sides): either it sees this tick and stays
        // up, or this sees it asleep and wakes it.
        woke.ticks.fetch_add(1, SeqCst);
        if alarm.asleep.load(SeqCst) && alarm.asleep.swap(false, SeqCst) {
            alarm.wake_watchdog();
        }
    });
}

/// The worker side: a tick whenever the watchdog asks, which only a loop
/// that runs can give. Runs until aborted.
pub(crate) async fn tick(stats: Arc<WorkerStats>) {
    let state = &stats.stall;
    poll_fn(|cx| {
        state.tick_waker.register(cx.waker());
        if state.asked.swap(false, SeqCst) {
            state.ticks.fetch_add(1, SeqCst);
        }
        Poll::<()>::Pending
    })
    .await
}

/// Stops the watchdog thread when dropped.
#[derive(Debug)]
pub(crate) struct Watchdog(Arc<Alarm>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.stop.store(true, SeqCst);
        self.0.wake_watchdog();
    }
}

/// What the watchdog knows of one worker since its last look.
#[derive(Debug, Clone, Copy)]
struct Seen {
    ticks: u64,
    /// When the worker last showed progress (or was seen waiting).
    since: Instant,
    reported: bool,
}

/// What one look at a worker found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// Waiting for events, and not woken since the last look.
    Quiet,
    /// Came back to its loop since the last look.
    Fine,
    /// Awake without a sign of its loop since the last look: asked for a tick.
    Asked,
    /// Away from its loop for the threshold: report it (once).
    Stalled(Duration),
}

/// One look at a worker: `ticks` and `waiting` as read now (ticks first).
fn look(seen: &mut Seen, ticks: u64, waiting: bool, now: Instant, threshold: Duration) -> Look {
    if ticks != seen.ticks {
        *seen = Seen {
            ticks,
            since: now,
            reported: false,
        };
        return Look::Fine;
    }
    if waiting {
        seen.since = now;
        seen.reported = false;
        return Look::Quiet;
    }
    let away = now.saturating_duration_since(seen.since);
    if seen.reported || away < threshold {
        return Look::Asked;
    }
    seen.reported = true;
    Look::Stalled(away)
}

/// The watchdog thread's name (also in [`crate::Error::Thread`] when it
/// cannot be made).
pub(crate) const THREAD_NAME: &str = "megaconn-stall-watch";

/// Starts the watchdog thread; it stops when the returned guard is dropped.
pub(crate) fn watch(
    workers: Arc<[Arc<WorkerStats>]>,
    registries: Arc<[Arc<Registry>]>,
    threshold: Duration,
    alarm: Arc<Alarm>,
    wakes: WakeSignal,
) -> std::io::Result<Watchdog> {
    let guard = Watchdog(alarm.clone());
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let _ = alarm.watchdog.set(std::thread::current());
            let every = threshold / LOOKS_PER_THRESHOLD;
            let start = Instant::now();
            let mut seen: Vec<Seen> = workers
                .iter()
                .map(|w| Seen {
                    ticks: w.stall.ticks.load(SeqCst),
                    since: start,
                    reported: false,
                })
                .collect();
            // The first look after a sleep tells `wakes` even if all is
            // quiet again: what the worker that woke this thread did then
            // happened since, and nothing else would tell of it.
            let mut slept = false;
            while !alarm.stop.load(SeqCst) {
                std::thread::park_timeout(every);
                let now = Instant::now();
                let mut quiet = true;
                for (index, (worker, seen)) in workers.iter().zip(seen.iter_mut()).enumerate() {
                    let state = &worker.stall;
                    // A worker whose drain finished has no loop to come
                    // back to: quiet, not stalled, for as long as the
                    // others drain.
                    if state.done.load(SeqCst) {
                        continue;
                    }
                    let ticks = state.ticks.load(SeqCst);
                    match look(seen, ticks, state.waiting.load(Relaxed), now, threshold) {
                        Look::Quiet => {}
                        Look::Fine => quiet = false,
                        Look::Asked => {
                            quiet = false;
                            state.asked.store(true, SeqCst);
                            state.tick_waker.wake();
                        }
                        Look::Stalled(away) => {
                            quiet = false;
                            report(worker, registries.get(index), index, away);
                        }
                    }
                }
                if !quiet || slept {
                    wakes.send_replace(());
                }
                slept = quiet;
                if quiet {
                    sleep_until_a_worker_wakes(&alarm, &workers, &seen);
                    // Counted from the wake-up that woke this thread: a
                    // worker that then goes back to waiting (a heartbeat
                    // served in microseconds) is quiet at the next look, and
                    // one that stays away is stalled a threshold after it.
                    let now = Instant::now();
                    for (worker, s) in workers.iter().zip(seen.iter_mut()) {
                        *s = Seen {
                            ticks: worker.stall.ticks.load(SeqCst),
                            since: now,
                            reported: false,
                        };
                    }
                }
            }
        })?;
    Ok(guard)
}

/// Every worker is waiting and none woke since the last look: sleep until
/// one does (its runtime's hook unparks this thread) or the server stops.
fn sleep_until_a_worker_wakes(alarm: &Alarm, workers: &[Arc<WorkerStats>], seen: &[Seen]) {
    alarm.asleep.store(true, SeqCst);
    // A worker that woke between the look and the store saw no sleeper:
    // look again at the ticks, after the store.
    let none_woke = workers
        .iter()
        .zip(seen)
        .all(|(w, s)| w.stall.ticks.load(SeqCst) == s.ticks);
    while none_woke && alarm.asleep.load(SeqCst) && !alarm.stop.load(SeqCst) {
        std::thread::park();
    }
    alarm.asleep.store(false, SeqCst);
}

fn report(worker: &WorkerStats, registry: Option<&Arc<Registry>>, index: usize, away: Duration) {
    incr(&worker.stalls);
    let handling = registry
        .map(|r| describe_handling(r, index))
        .unwrap_or_else(|| {
            "turn on connection tracking to see which (Builder::track_connections, \
             serve --debug-connections)"
                .into()
        });
    tracing::warn!(
        worker = index,
        stalled_ms = away.as_millis() as u64,
        in_flight = worker.request_metrics.in_flight.load(Relaxed),
        handling = %handling,
        "a worker has not come back to its event loop: a handler is blocking \
         its thread, delaying every connection on this worker; run blocking \
         work with tokio::task::spawn_blocking"
    );
}

/// The connections a worker is handling requests on, for the log line.
fn describe_handling(registry: &Registry, worker: usize) -> String {
    let busy: Vec<String> = registry
        .listing(Instant::now())
        .filter(|c| c.worker == worker && c.state == ConnectionState::Handling)
        .map(|c| format!("connection {} from {}", c.id, c.peer))
        .collect();
    if busy.is_empty() {
        "no request handler in progress".into()
    } else {
        busy.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that a loaded test machine does not hold the worker
    /// thread off its core for that long.
    const T: Duration = Duration::from_millis(500);

    fn seen(ticks: u64, since: Instant) -> Seen {
        Seen {
            ticks,
            since,
            reported: false,
        }
    }

    #[test]
    fn a_look_tells_progress_waiting_and_a_stall_apart() {
        let t0 = Instant::now();
        let mut s = seen(5, t0);
        // Back from a wait since the last look (even if waiting again now).
        assert_eq!(look(&mut s, 6, true, t0 + T, T), Look::Fine);
        assert_eq!(s.since, t0 + T);
        // Waiting and not woken since: quiet, whatever the time.
        assert_eq!(look(&mut s, 6, true, t0 + 10 * T, T), Look::Quiet);
        // Awake without a sign of its loop: asked, then stalled after the
        // threshold (counted from when it was last seen waiting), once.
        let at = t0 + 10 * T;
        assert_eq!(look(&mut s, 6, false, at + T / 2, T), Look::Asked);
        assert_eq!(look(&mut s, 6, false, at + T, T), Look::Stalled(T));
        assert_eq!(look(&mut s, 6, false, at + 3 * T, T), Look::Asked);
        // Its loop came back: fine, and a later stall is reported again.
        assert_eq!(look(&mut s, 7, false, at + 4 * T, T), Look::Fine);
        assert_eq!(look(&mut s, 7, false, at + 5 * T, T), Look::Stalled(T));
    }

    /// A runtime with the hooks: an idle worker is not woken by the
    /// detector (its ticks are its own wake-ups: a handful for a sleep of
    /// two thresholds; a timer every quarter threshold would be 8 more),
    /// and the watchdog, asleep, is woken by the worker's next wake-up.
    #[test]
    fn an_idle_worker_is_left_alone_and_a_busy_one_is_not_a_stall() {
        let stats: Arc<WorkerStats> = Arc::default();
        let alarm = Alarm::new();
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_time();
        hooks(&mut builder, &stats, &alarm);
        let runtime = builder.build().unwrap();
        let workers: Arc<[Arc<WorkerStats>]> = Arc::from(vec![stats.clone()]);
        let registries: Arc<[Arc<Registry>]> = Arc::from(Vec::new());
        let wakes: WakeSignal = Arc::new(tokio::sync::watch::channel(()).0);
        let loop_wakes = LoopWakes::new(&wakes);
        let watchdog = watch(workers, registries, T, alarm.clone(), wakes).unwrap();
        let ticking = runtime.spawn(tick(stats.clone()));
        runtime.block_on(async {
            let before = stats.stall.ticks.load(SeqCst);
            tokio::time::sleep(2 * T).await;
            let woke = stats.stall.ticks.load(SeqCst) - before;
            assert!(
                woke <= 6,
                "{woke} wake-ups of an idle worker in 2 thresholds"
            );
            // Busy without waiting for events for 2 thresholds, yielding:
            // its loop runs, so it answers the watchdog's asks. A loaded
            // machine that runs this thread (or the watchdog's) for none
            // of a threshold makes a stall of it: another try then, while
            // a busy loop counted as a stall fails every one.
            for attempt in 1.. {
                let before = stats.stalls.load(Relaxed);
                let busy_until = Instant::now() + 2 * T;
                while Instant::now() < busy_until {
                    tokio::task::yield_now().await;
                }
                if stats.stalls.load(Relaxed) == before {
                    break;
                }
                assert!(attempt < 3, "a busy loop is no stall");
                // A stall is reported once until the worker is seen
                // waiting: wait, so that the next try can report one.
                tokio::time::sleep(T).await;
            }
        });
        // The watchdog saw the busy loop, and said so.
        assert!(loop_wakes.0.has_changed().unwrap());
        ticking.abort();
        drop(watchdog);
    }
}
