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
//! What held the worker is said in the line (`Cause`): the watchdog reads
//! where the worker thread's time went over the stall (the kernel's
//! per-thread `schedstat` and `stat`, read at the first look that finds
//! the worker away and again at the report, never while it is fine): off
//! its CPU (a blocking call), waiting for a CPU (a machine short of
//! cores), on it in the kernel (writes to many sockets, a kernel short of
//! socket memory) or in user code (a long computation). The line used to
//! blame a blocking handler whatever it was, and a worker writing a
//! fan-out to a thousand sockets under kernel memory pressure sent an
//! operator looking for a handler that did not block.
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
    // This task runs on the worker's thread: the watchdog reads that
    // thread's times when it finds the worker away.
    // SAFETY: gettid has no preconditions and cannot fail.
    state.tid.store(unsafe { libc::gettid() }, Relaxed);
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
    /// The worker thread's times at the first look that found it away
    /// (since it was last fine), with when they were read.
    away_from: Option<(Instant, ThreadTimes)>,
}

/// Where one thread's time went, from `/proc/self/task/TID/schedstat` (ns
/// on a CPU, ns runnable waiting for one) and `stat` (utime, stime in
/// clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ThreadTimes {
    on_cpu_ns: u64,
    runnable_ns: u64,
    user_ticks: u64,
    kernel_ticks: u64,
}

impl ThreadTimes {
    /// The thread's times now; `None` where `/proc` does not tell them
    /// (another kernel, no `CONFIG_SCHED_INFO`), or before the worker's tick
    /// task said which thread it is.
    fn read(tid: i32) -> Option<ThreadTimes> {
        if tid == 0 {
            return None;
        }
        let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        ThreadTimes::parse(&sched, &stat)
    }

    fn parse(sched: &str, stat: &str) -> Option<ThreadTimes> {
        let mut sched = sched.split_ascii_whitespace();
        let on_cpu_ns = sched.next()?.parse().ok()?;
        let runnable_ns = sched.next()?.parse().ok()?;
        // The name (2nd field) may hold spaces and parentheses: the fields
        // after it start after its last ')'. utime and stime are the 14th
        // and 15th fields, so the 12th and 13th after the name.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace().skip(11);
        let user_ticks = fields.next()?.parse().ok()?;
        let kernel_ticks = fields.next()?.parse().ok()?;
        Some(ThreadTimes {
            on_cpu_ns,
            runnable_ns,
            user_ticks,
            kernel_ticks,
        })
    }
}

/// What held a stalled worker, from its thread's times over the stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Off its CPU and not waiting for one most of the time: the thread
    /// slept in a call (sleep, synchronous I/O, a lock).
    Blocked,
    /// Runnable, waiting for a CPU most of the time: other threads had the
    /// cores.
    NoCpu,
    /// On its CPU, more in the kernel than in user code.
    Kernel,
    /// On its CPU, mostly in user code.
    User,
    /// Not known (no times to read).
    Unknown,
}

impl Cause {
    /// What held the worker over `wall`, from its times at the start
    /// (`from`) and now (`to`).
    fn of(from: ThreadTimes, to: ThreadTimes, wall: Duration) -> Cause {
        if to.on_cpu_ns < from.on_cpu_ns || to.runnable_ns < from.runnable_ns {
            // Another thread's counters (an id the kernel gave again).
            return Cause::Unknown;
        }
        let wall = wall.as_nanos().max(1) as u64;
        let on_cpu = to.on_cpu_ns.saturating_sub(from.on_cpu_ns);
        let runnable = to.runnable_ns.saturating_sub(from.runnable_ns);
        if runnable.saturating_add(on_cpu) < wall / 2 {
            Cause::Blocked
        } else if runnable >= on_cpu {
            Cause::NoCpu
        } else if to.kernel_ticks.saturating_sub(from.kernel_ticks)
            > to.user_ticks.saturating_sub(from.user_ticks)
        {
            Cause::Kernel
        } else {
            Cause::User
        }
    }

    /// The `cause` field's value.
    fn name(self) -> &'static str {
        match self {
            Cause::Blocked => "blocked",
            Cause::NoCpu => "no_cpu",
            Cause::Kernel => "kernel",
            Cause::User => "user_code",
            Cause::Unknown => "unknown",
        }
    }

    /// What the line says of it, and what to do.
    fn explain(self) -> &'static str {
        match self {
            Cause::Blocked => {
                "its thread was off its CPU, not waiting for one: a handler is \
                 blocking it (std::thread::sleep, synchronous I/O, a lock), delaying \
                 every connection on this worker; run blocking work with \
                 tokio::task::spawn_blocking"
            }
            Cause::NoCpu => {
                "its thread was runnable but waiting for a CPU most of the time: the \
                 machine is short of CPU (other processes, or more workers than \
                 cores), not a handler"
            }
            Cause::Kernel => {
                "its thread was on its CPU, mostly in the kernel: system calls such as \
                 writes to many sockets at once, or a kernel short of socket memory \
                 (sysctl net.ipv4.tcp_mem), rather than a blocking handler"
            }
            Cause::User => {
                "its thread was on its CPU in user code: a long computation (a \
                 handler's: move it to tokio::task::spawn_blocking) or a busy loop"
            }
            Cause::Unknown => {
                "a handler may be blocking its thread, delaying every connection on \
                 this worker; run blocking work with tokio::task::spawn_blocking"
            }
        }
    }
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
            away_from: None,
        };
        return Look::Fine;
    }
    if waiting {
        seen.since = now;
        seen.reported = false;
        seen.away_from = None;
        return Look::Quiet;
    }
    let away = now.saturating_duration_since(seen.since);
    if seen.reported || away < threshold {
        return Look::Asked;
    }
    seen.reported = true;
    Look::Stalled(away)
}

/// The watchdog thread's name in a server without a name
/// (`name::watchdog_thread`).
pub(crate) const THREAD_NAME: &str = "megaconn-stall-watch";

/// Starts the watchdog thread; it stops when the returned guard is dropped.
/// Should it not start, [`Error::Thread`](crate::Error::Thread) names it
/// as it would have been named (`NAME-stall-watch` in a named server);
/// `injected`: the error a test makes it fail with
/// (`WorkerStartFailure::StallWatchThread`).
pub(crate) fn watch(
    workers: Arc<[Arc<WorkerStats>]>,
    registries: Arc<[Arc<Registry>]>,
    threshold: Duration,
    alarm: Arc<Alarm>,
    wakes: WakeSignal,
    scope: crate::server::log_scope::ServerScope,
    injected: Option<std::io::Error>,
) -> Result<Watchdog, crate::Error> {
    let name = crate::server::name::watchdog_thread(scope.name());
    if let Some(source) = injected {
        return Err(crate::Error::Thread { name, source });
    }
    let guard = Watchdog(alarm.clone());
    // Its stall lines go where the workers' do, under the server's name
    // (`log_scope.rs`).
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _scope = scope.enter();
            let _ = alarm.watchdog.set(std::thread::current());
            let every = threshold / LOOKS_PER_THRESHOLD;
            let start = Instant::now();
            let mut seen: Vec<Seen> = workers
                .iter()
                .map(|w| Seen {
                    ticks: w.stall.ticks.load(SeqCst),
                    since: start,
                    reported: false,
                    away_from: None,
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
                            if seen.away_from.is_none() {
                                seen.away_from = ThreadTimes::read(state.tid.load(Relaxed))
                                    .map(|times| (now, times));
                            }
                            state.asked.store(true, SeqCst);
                            state.tick_waker.wake();
                        }
                        Look::Stalled(away) => {
                            quiet = false;
                            let cause = seen
                                .away_from
                                .and_then(|(then, from)| {
                                    let to = ThreadTimes::read(state.tid.load(Relaxed))?;
                                    Some(Cause::of(from, to, now.saturating_duration_since(then)))
                                })
                                .unwrap_or(Cause::Unknown);
                            report(worker, registries.get(index), index, away, cause);
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
                            away_from: None,
                        };
                    }
                }
            }
        })
        .map_err(|source| crate::Error::Thread { name, source })?;
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

fn report(
    worker: &WorkerStats,
    registry: Option<&Arc<Registry>>,
    index: usize,
    away: Duration,
    cause: Cause,
) {
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
        cause = cause.name(),
        "a worker has not come back to its event loop: {}",
        cause.explain()
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
            away_from: None,
        }
    }

    fn times(on_cpu_ms: u64, runnable_ms: u64, user: u64, kernel: u64) -> ThreadTimes {
        ThreadTimes {
            on_cpu_ns: on_cpu_ms * 1_000_000,
            runnable_ns: runnable_ms * 1_000_000,
            user_ticks: user,
            kernel_ticks: kernel,
        }
    }

    #[test]
    fn a_stalls_cause_is_where_the_threads_time_went() {
        let from = times(5_000, 700, 400, 100);
        let wall = Duration::from_millis(1_000);
        let cause = |on: u64, runnable: u64, user: u64, kernel: u64| {
            let to = times(5_000 + on, 700 + runnable, 400 + user, 100 + kernel);
            Cause::of(from, to, wall)
        };
        // Off its CPU and not runnable for most of the second: asleep in a call.
        assert_eq!(cause(10, 20, 1, 0), Cause::Blocked);
        assert_eq!(cause(240, 250, 24, 0), Cause::Blocked);
        // Runnable, waiting for a core, more than it ran.
        assert_eq!(cause(300, 650, 30, 0), Cause::NoCpu);
        // On its CPU, more ticks in the kernel than in user code, and not.
        assert_eq!(cause(950, 40, 30, 65), Cause::Kernel);
        assert_eq!(cause(950, 40, 65, 30), Cause::User);
        assert_eq!(cause(950, 40, 0, 0), Cause::User);
        // Counters that went back (another thread given the id) tell nothing.
        assert_eq!(Cause::of(from, times(9, 9, 9, 9), wall), Cause::Unknown);
    }

    #[test]
    fn thread_times_are_read_from_the_kernels_lines() {
        let stat = "4242 (megaconn (w) 1) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(
            ThreadTimes::parse("123 456 7\n", stat),
            Some(ThreadTimes {
                on_cpu_ns: 123,
                runnable_ns: 456,
                user_ticks: 11,
                kernel_ticks: 12,
            })
        );
        assert_eq!(ThreadTimes::parse("", stat), None);
        assert_eq!(ThreadTimes::parse("1 2 3", "no name here"), None);
        assert_eq!(ThreadTimes::read(0), None, "no thread said yet");
    }

    /// The real kernel's lines, for a thread that sleeps: off its CPU.
    #[test]
    fn a_sleeping_thread_reads_as_blocked() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions and cannot fail.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = wait.recv();
        });
        let tid = tid_rx.recv().unwrap();
        let Some(from) = ThreadTimes::read(tid) else {
            go.send(()).unwrap();
            sleeper.join().unwrap();
            eprintln!("no per-thread schedstat on this kernel: nothing to check");
            return;
        };
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        let to = ThreadTimes::read(tid).expect("read once, read again");
        let wall = start.elapsed();
        go.send(()).unwrap();
        sleeper.join().unwrap();
        assert_eq!(
            Cause::of(from, to, wall),
            Cause::Blocked,
            "{from:?} -> {to:?} over {wall:?}"
        );
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
        let watchdog = watch(
            workers,
            registries,
            T,
            alarm.clone(),
            wakes,
            crate::server::log_scope::ServerScope::of_this_thread(None),
            None,
        )
        .unwrap();
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
