//! Thread-per-core workers.
//!
//! Each worker is one OS thread running a current-thread tokio runtime with a
//! `LocalSet`, its own `SO_REUSEPORT` listeners, buffer pool, parking lot and
//! counters. Nothing on the request path is shared between workers, so nothing
//! is locked or contended, and connection state can use `Rc`/`Cell` instead of
//! atomics. The kernel spreads new connections across the workers' listeners.
//! (The same idea as pingora's `pingora-runtime`, with one runtime per thread
//! instead of a pool.)
//!
//! `Server::start` makes a worker in two steps, on the caller's thread (the
//! one calling `Server::start`): [`spawn`] (the runtime, the parking lot's
//! epoll set, the thread, which sets the worker up and waits), then [`Listeners::hand`] (its listening sockets
//! registered with its runtime). All a worker's start can fail at happens
//! there, so it fails the server's start, before anything is accepted; the
//! worker accepts once the server runs (`Started::run`).

use std::net::TcpListener as StdTcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::conn::accept::{accept_loop, evict_when_asked};
use crate::conn::config::{Config, WorkerStartFailure};
use crate::conn::connection::{count_drain_pending, Connection};
use crate::conn::context::WorkerContext;
use crate::conn::handover::{self, ParkedConnection};
use crate::conn::limit::ConnectionLimit;
use crate::conn::park::{self, LotFds, ParkingLot, Respawn, Shut};
use crate::conn::shutdown::{goodbye_margin, idle_grace};
use crate::conn::woken::poll_once;
use crate::conn::Incoming;
use crate::error::Error;
use crate::observe::close::CloseReason;
use crate::observe::lifecycle::Tracked;
use crate::observe::registry::Registry;
use crate::observe::stats::{incr, incr_own, WorkerStats};
use crate::server::builder::HandOverSlot;
use crate::server::dispatch;
use crate::server::spare::Spare;
use crate::service::HttpService;

/// Turns of the worker's loop at least, at an upgrade, after awake framed
/// connections were asked to park (`LocalShutdown::park_all_idle`): one
/// lets every one of them run its poll first (they were queued before
/// this task); the rest are margin. No gauge counts them, as
/// `connections_idle` counts idle HTTP/1.1 tasks.
const NUDGED_TURNS: usize = 3;

/// How one worker's drain went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WorkerSummary {
    /// Connections that closed by themselves during the drain (idle and parked
    /// ones included: they close at once).
    pub finished: usize,
    /// Connections still open at the deadline, closed by force.
    pub forced: usize,
}

/// Everything a worker thread needs, moved into it (its listening sockets
/// come later: [`Listeners::hand`]).
pub(crate) struct WorkerSetup<S> {
    pub index: usize,
    pub service: S,
    pub config: Arc<Config>,
    pub stats: Arc<WorkerStats>,
    pub limit: ConnectionLimit,
    pub shutdown: watch::Receiver<bool>,
    /// True once the worker may accept ([`Started::run`](crate::Started::run));
    /// closed unset, it never may.
    pub go: watch::Receiver<bool>,
    pub registry: Option<Arc<Registry>>,
    /// Parked connections taken over from another process, to park here.
    pub adopt: tokio::sync::mpsc::UnboundedReceiver<Vec<ParkedConnection>>,
    /// Where to hand this worker's parked connections at shutdown, if asked.
    pub hand_over: HandOverSlot,
    /// The stall detector's, when it is on: the runtime reports its waits.
    pub stall_alarm: Option<Arc<crate::server::stall::Alarm>>,
    /// The server's count of workers not drained yet; this worker's
    /// runtime lives until it is 0.
    pub drains: Drains,
    /// Where its threads log, under which name (`log_scope.rs`).
    pub scope: crate::server::log_scope::ServerScope,
}

/// How many of a server's workers have not ended their drain, shared by
/// them (and read by [`ServerHandle::workers_draining`](crate::ServerHandle::workers_draining)).
///
/// Why: a handler's `tokio::spawn` runs on the runtime of the worker it
/// was called on, and a socket it opens is registered with that worker's
/// reactor; a lazily started actor, a cache refresher, a client pool's
/// connections serve requests on every worker. A worker that dropped its
/// runtime as soon as its own drain ended took them away from requests
/// other workers were still finishing: the actor's channel closed (500s),
/// the pooled socket failed "A Tokio 1.x context was found, but it is
/// being shutdown" (502s), where `axum::serve` (one runtime) served them.
/// So each worker, its drain done, drops its connections' tasks and then
/// drives its runtime on until every worker's drain has ended (bounded:
/// its own drain's deadline plus another `shutdown_timeout`, for a worker
/// whose thread a blocking handler held past the start of the drain),
/// and only then drops it. Separate processes (`--processes`) share
/// nothing: each counts its own workers.
#[derive(Debug, Clone)]
pub(crate) struct Drains(Arc<watch::Sender<usize>>);

impl Default for Drains {
    fn default() -> Drains {
        Drains(Arc::new(watch::Sender::new(0)))
    }
}

impl Drains {
    /// Counts one more worker draining until the ticket is
    /// [`done`](DrainTicket::done) or dropped.
    fn ticket(&self) -> DrainTicket {
        self.0.send_modify(|left| *left += 1);
        DrainTicket(Some(self.clone()))
    }

    /// Workers not drained yet.
    pub(crate) fn left(&self) -> usize {
        *self.0.borrow()
    }

    /// Waits until every worker's drain has ended.
    async fn all_ended(&self) {
        let mut left = self.0.subscribe();
        // The sender lives as long as `self`: no error while this waits.
        let _ = left.wait_for(|left| *left == 0).await;
    }
}

/// One worker's place in [`Drains`]: counted off once, when its drain
/// ends or, should the worker fail or panic before, when it is dropped.
struct DrainTicket(Option<Drains>);

impl DrainTicket {
    /// This worker's drain has ended: counts it off, and gives the count
    /// to wait on.
    fn done(&mut self) -> Drains {
        let drains = self.0.take().expect("counted off once");
        drains.0.send_modify(|left| *left -= 1);
        drains
    }
}

impl Drop for DrainTicket {
    fn drop(&mut self) {
        if self.0.is_some() {
            self.done();
        }
    }
}

/// A worker started by [`spawn`]: its thread, and where its listening
/// sockets go.
pub(crate) struct Spawned {
    pub thread: JoinHandle<WorkerSummary>,
    pub listeners: Listeners,
}

/// Makes a worker's runtime and parking lot and starts its thread, which
/// sets the worker up and waits for its listening sockets
/// ([`Listeners::hand`]) and for `go` before it accepts (and adopts). What
/// can fail is done here, on the caller's thread, before anything is
/// accepted (`Server::start`), and fails the start.
pub(crate) fn spawn<S>(setup: WorkerSetup<S>) -> Result<Spawned, Error>
where
    S: HttpService + Clone + Send + 'static,
    S::Future: 'static,
    S::ResBody: 'static,
{
    let worker = setup.index;
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    runtime.enable_all();
    // Its blocking threads (a handler's `spawn_blocking`): named after the
    // server, logging where the worker does.
    runtime.thread_name(crate::server::name::blocking_thread(
        setup.scope.name(),
        worker,
    ));
    setup.scope.on_blocking_threads(&mut runtime);
    if let Some(alarm) = &setup.stall_alarm {
        crate::server::stall::hooks(&mut runtime, &setup.stats, alarm);
    }
    let runtime = WorkerRuntime(Some(
        runtime
            .build()
            .map_err(|source| Error::Worker { worker, source })?,
    ));
    // A worker without its lot could serve on, every idle connection a
    // task: ~2 KB each instead of a few bytes, so a fraction of the
    // connections the server is sized for before memory runs out, and an
    // upgrade's parked connections closed instead of adopted (`handover.rs`).
    // That is not the server that was configured: the start fails, and
    // says how to get one (more descriptors, or parking off).
    let lot = match setup.config.park_idle_after {
        Some(_) => {
            let _runtime = runtime.get().enter();
            let made = match test_failure(&setup.config, WorkerStartFailure::Lot, worker) {
                Some(injected) => Err(injected),
                None => LotFds::new(setup.config.park_wake_batch),
            };
            Some(made.map_err(|source| Error::ParkingLot { worker, source })?)
        }
        None => None,
    };
    let (tx, listeners) = oneshot::channel();
    let handle = runtime.get().handle().clone();
    // For `Listeners::hand`: a worker that stopped because the server was
    // told to (before it ran) is no failure of the start.
    let stopping = setup.shutdown.clone();
    let fail_register = test_failure(&setup.config, WorkerStartFailure::Register, worker);
    // Told by a test: the thread panics at once, and this waits for it to
    // have dropped `listeners`, so that the test sees `Listeners::hand`
    // meet a worker that ended (a real panic races with it).
    let (panic, panicked) =
        match setup.config.fail_worker_start == Some((WorkerStartFailure::Panic, worker)) {
            true => {
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
    // Taken before the thread exists: a start that fails from here on
    // drops it (with the closure, or as the thread unwinds), which counts
    // this worker drained, so no other worker waits for it.
    let mut ticket = setup.drains.ticket();
    // The caller's scoped subscriber, if it has one, and the server's
    // name's span (`log_scope.rs`).
    let scope = setup.scope.clone();
    let thread = std::thread::Builder::new()
        .name(crate::server::name::worker_thread(scope.name(), worker))
        .spawn(move || {
            let _scope = scope.enter();
            crate::observe::ratelog::mark_worker_thread();
            if let Some(dropped) = panic {
                drop(listeners);
                drop(dropped);
                panic!("worker {worker} panics as it sets up, as a test asked");
            }
            let local = tokio::task::LocalSet::new();
            let drained = local.block_on(runtime.get(), own_task(run(setup, lot, listeners)));
            let keep_until = drained.deadline + drained.shutdown_timeout;
            // Counted only now that nothing is polled any more (see `Drained`).
            let summary = drained.summary();
            // Its connections' tasks now: the requests they were serving
            // (if any: forced at the deadline) were cut off, not served.
            crate::observe::metrics::dropping_forced(|| drop(local));
            // The runtime waits for the others' drains (see `Drains`), if
            // this one's ended in time. A forced one's upgraded connections
            // (tasks on the runtime, not the `LocalSet`) were just counted
            // forced: they must not run on, trade bytes and close as if
            // served (merge review, session 49), so its runtime goes now,
            // as before; the others' deadlines are at most as far off.
            let drains = ticket.done();
            if summary.forced == 0 {
                runtime.get().block_on(async {
                    let _ = tokio::time::timeout_at(keep_until, drains.all_ended()).await;
                });
            }
            crate::observe::metrics::dropping_forced(|| drop(runtime));
            summary
        })
        .map_err(|source| Error::Worker { worker, source })?;
    if let Some(panicked) = panicked {
        // Returns once the thread dropped its end.
        let _ = panicked.recv();
    }
    Ok(Spawned {
        thread,
        listeners: Listeners {
            worker,
            runtime: handle,
            tx,
            stopping,
            fail_register,
            #[cfg(test)]
            before_send: None,
        },
    })
}

/// Runs `run` (the worker's own loop) as a task of the `LocalSet` and
/// waits for it, its panic passed on as if it had run in place.
///
/// Why not in place: the `LocalSet` polls the future it runs until
/// (`block_on`'s) at every wake-up of the worker, before its tasks,
/// whatever woke it. The worker's loop waits on the shutdown watch for the
/// server's lifetime, and polling that wait (a `Notify` checked under its
/// lock) took ~240 instructions per wake-up: at a low request rate,
/// where each request wakes the worker, ~3 % of a keep-alive request's
/// user-space instructions (`bench/CPU-PER-REQUEST.md`, round 11). As a
/// task it is polled only when its own wait is woken. What is polled in
/// its place reads a cell (a `JoinHandle` took ~125 instructions a poll:
/// task budget, a call through the task's vtable, its state word).
async fn own_task<T: 'static>(run: impl std::future::Future<Output = T> + 'static) -> T {
    use futures_util::FutureExt;
    use std::cell::Cell;
    use std::task::Waker;
    struct Handoff<T> {
        done: Cell<Option<std::thread::Result<T>>>,
        waiter: Cell<Option<Waker>>,
    }
    let handoff = Rc::new(Handoff {
        done: Cell::new(None),
        waiter: Cell::new(None),
    });
    let theirs = handoff.clone();
    tokio::task::spawn_local(async move {
        let done = std::panic::AssertUnwindSafe(run).catch_unwind().await;
        theirs.done.set(Some(done));
        if let Some(waiter) = theirs.waiter.take() {
            waiter.wake();
        }
    });
    std::future::poll_fn(|cx| match handoff.done.take() {
        Some(Ok(done)) => Poll::Ready(done),
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        // The task gone unfinished (it cannot be today: nothing aborts it
        // and the `LocalSet` outlives this wait): fail loudly, not wait for good.
        None if Rc::strong_count(&handoff) == 1 => {
            panic!("the worker's loop task was dropped before it finished")
        }
        None => {
            let waiter = handoff.waiter.take();
            handoff.waiter.set(match waiter {
                Some(w) if w.will_wake(cx.waker()) => Some(w),
                _ => Some(cx.waker().clone()),
            });
            Poll::Pending
        }
    })
    .await
}

/// A worker's runtime, shut down in the background when dropped, never
/// waited for. At the end of its thread: the connections still open at the
/// deadline were dropped with the `LocalSet`'s tasks, but blocking work a
/// handler started (`spawn_blocking`) may still run, and a dropped
/// `Runtime` would wait for it forever, past `shutdown_timeout`. On the
/// caller's thread, when a start fails after it was made: that thread is
/// usually a runtime's (`serve` is async), where tokio panics rather than
/// wait.
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl WorkerRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where a started worker's listening sockets go: registered with its
/// runtime on the thread that starts the server, then handed to it.
pub(crate) struct Listeners {
    worker: usize,
    runtime: tokio::runtime::Handle,
    tx: oneshot::Sender<Vec<AsyncFd<StdTcpListener>>>,
    /// The server's shutdown watch: set, a worker that took nothing
    /// stopped as told, not because it failed.
    stopping: watch::Receiver<bool>,
    /// The error registering is to fail with, if a test says so.
    fail_register: Option<std::io::Error>,
    /// Unit tests only (compiled out of the library): runs in
    /// [`Listeners::hand`] after its check that the worker lives and its
    /// registering, right before the hand-over, so that a test can end the
    /// worker (drop its receiver) in that window without racing a thread.
    #[cfg(test)]
    before_send: Option<Box<dyn FnOnce() + Send>>,
}

impl Listeners {
    /// Registers `listeners` with the worker's runtime (for readiness only:
    /// `accept_loop` accepts bare sockets, `accept4`, which tokio's own
    /// listener would register at once) and hands them to the worker.
    ///
    /// Only once they listen: a socket not listening yet polls as hung up
    /// (`EPOLLHUP`), a readiness tokio keeps for good (closed is final),
    /// and its accept loop would spin. So on a shared port, where listening comes last
    /// (`conn/socket.rs`), this comes right after it, and a failure here
    /// resets what queued in those microseconds. One that fails fails the
    /// start: a worker that served on without it would leave the socket in
    /// its `SO_REUSEPORT` group, with its share of new connections queued
    /// where nobody accepts them (it used to be logged, and lost so).
    ///
    /// A worker whose thread has ended (it panicked as it set up) fails it
    /// too: its sockets would listen with nobody to accept (and with its
    /// runtime gone, registering would fail, blaming epoll).
    ///
    /// Unless the server was told to stop
    /// ([`ServerHandle::shutdown`](crate::ServerHandle::shutdown) before
    /// the `serve` future was first polled, or during its start): a worker
    /// that sees the stop before its sockets came drops their receiver and
    /// ends its drain at once, with nothing to drain. That is the stop
    /// asked for, not a failure: the sockets are dropped here (closed),
    /// and the start goes on to a run that ends at once, as
    /// `axum::serve`'s does when its shutdown signal is already complete.
    /// (It failed with `WorkerEnded`, "it panicked", when the worker's
    /// thread got there first.) A worker's thread ends before its sockets
    /// come for no other reason but a panic (`go` is held by the start
    /// until it returns), so `WorkerEnded` says so.
    pub(crate) fn hand(mut self, listeners: Vec<StdTcpListener>) -> Result<(), Error> {
        let worker = self.worker;
        let stopping = self.stopping.clone();
        // Read once the worker is known to have ended: it stops only after
        // it saw the watch set, so it reads set here too.
        let ended = move || match *stopping.borrow() {
            true => Ok(()),
            false => Err(Error::WorkerEnded { worker }),
        };
        if self.tx.is_closed() {
            return ended();
        }
        let _runtime = self.runtime.enter();
        let mut registered = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let addr = crate::conn::socket::addr_of(&listener);
            let watched = match self.fail_register.take() {
                Some(injected) => Err(injected),
                // SAFETY: a std listener owns its descriptor, open and
                // unchanged for as long as the AsyncFd holds it.
                None => unsafe {
                    AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
                }
                .map_err(std::io::Error::from),
            };
            match watched {
                Ok(watched) => registered.push(watched),
                // A worker that ended since took its runtime along, and
                // registering with it failed ("being shutdown"): the
                // worker's end says why, not epoll.
                Err(_) if self.tx.is_closed() => return ended(),
                Err(source) => {
                    return Err(Error::Register {
                        worker,
                        addr,
                        source,
                    })
                }
            }
        }
        #[cfg(test)]
        if let Some(end_worker) = self.before_send.take() {
            end_worker();
        }
        // A worker that ended since: dropped, they close this process's
        // copies, and the start fails (unless it was told to stop).
        self.tx.send(registered).or_else(|_| ended())
    }
}

/// The error `step` of `worker`'s start is to fail with, if a test says so
/// ([`Builder::fail_worker_start_for_test`](crate::Builder::fail_worker_start_for_test));
/// the server's own threads' steps are asked for as worker 0's.
pub(crate) fn test_failure(
    config: &Config,
    step: WorkerStartFailure,
    worker: usize,
) -> Option<std::io::Error> {
    let errno = match step {
        WorkerStartFailure::Lot => libc::EMFILE,
        WorkerStartFailure::Register => libc::ENOSPC,
        WorkerStartFailure::JoinThread | WorkerStartFailure::StallWatchThread => libc::EAGAIN,
        WorkerStartFailure::Panic => return None,
    };
    (config.fail_worker_start == Some((step, worker)))
        .then(|| std::io::Error::from_raw_os_error(errno))
}

/// Spawns the task serving one connection; shared by the acceptor and the
/// parking lot.
///
/// A cold wake of a protocol that can finish one (`dispatch::serve_at_once`:
/// a heartbeat on a parked framed, WebSocket (cleartext or TLS) or HTTP/1.1
/// connection), and a new cleartext HTTP/1.1 connection, is first polled
/// here, once, on the lot's (or the accept loop's) turn: read, answered and
/// re-parked without waiting, it needs no task (the spawn, the run-queue round trip and the tracker's accounting were
/// the largest part of a heartbeat's CPU left after `woken.rs`). Only if it
/// has to wait (a handler that awaits, a full socket buffer) does it become a
/// task, which polls it again with a real waker.
pub(crate) fn connection_spawner<S>(
    ctx: &Rc<WorkerContext>,
    service: S,
    tracker: &TaskTracker,
) -> Respawn
where
    S: HttpService + Clone + 'static,
    S::Future: 'static,
    S::ResBody: 'static,
{
    // The worker's counters, held once by the spawner (they hold nothing
    // back, so no cycle): a clone per wake-up, to count it after `ctx`
    // moved into the future, was two locked instructions a heartbeat.
    let stats = ctx.stats.clone();
    let spare = Spare::for_fn(&dispatch::serve::<S>);
    let ctx = Rc::downgrade(ctx);
    let tracker = tracker.clone();
    Rc::new(move |incoming: Incoming, conn: Connection| {
        let Some(ctx) = ctx.upgrade() else {
            conn.close(CloseReason::Shutdown);
            return;
        };
        let track = conn.track().cloned();
        let at_once = dispatch::serve_at_once(&incoming, &ctx);
        let woken = matches!(incoming, Incoming::Woken { .. });
        if !at_once {
            let serve = Tracked::new(dispatch::serve(incoming, service.clone(), ctx, conn), track);
            tokio::task::spawn_local(tracker.track_future(CatchPanic::new(serve)));
            return;
        }
        // Boxed, so that the future can still move into a task once polled,
        // and tracked outside the box (a wrapper inside it would be one more
        // copy of the future). The box of the last one served at once, if
        // there is one (`Spare`): no `malloc` and `free` a heartbeat. The
        // future is written straight into the box: `dispatch::serve` is
        // always inlined. Returned by a call, it was built on the stack and
        // copied in (760 bytes, `memcpy`): the compiler does not let a call
        // that may unwind write into a heap allocation, nor does an `async`
        // block in the box that awaits the call's future (its first poll
        // copies the same bytes from the stack). Session 52: 100 fewer
        // instructions of `memcpy`, 36 fewer in all, a heartbeat
        // (`bench/HEARTBEAT.md`).
        let serve = spare.boxed(|| dispatch::serve(incoming, service.clone(), ctx, conn));
        let mut serve = CatchPanic::new(Tracked::new(serve, track));
        // Unconstrained: tokio's budget belongs to the lot's task here, and
        // running out of it would send every wake after the first few to a task.
        let polled = poll_once(std::pin::pin!(tokio::task::unconstrained(&mut serve)));
        match polled {
            Poll::Ready(()) => {
                // Only this worker's thread writes it: no locked instruction.
                if woken && !serve.panicked {
                    incr_own(&stats.wakes_without_task);
                }
                // A panicked one was dropped already, its box freed.
                if let Some(done) = serve.into_inner() {
                    spare.keep(done.into_inner());
                }
            }
            Poll::Pending => {
                tokio::task::spawn_local(tracker.track_future(serve));
            }
        }
    })
}

pin_project_lite::pin_project! {
    /// A connection's serving future, its panics caught. Handlers' panics
    /// are caught by their protocol; this catches what escapes the
    /// protocols' guards (the engine's own bugs, user code they call
    /// unguarded). Without it, on the path served at once the future was
    /// dropped and the connection closed as `Shutdown`; in a task the
    /// runtime caught the panic, the connection closed as `Shutdown` and no
    /// panic was counted. Here it is counted, logged, and the future dropped
    /// with its connection closing as `Panic`.
    struct CatchPanic<F> {
        #[pin]
        serve: Option<F>,
        panicked: bool,
    }
}

impl<F> CatchPanic<F> {
    fn new(serve: F) -> CatchPanic<F> {
        CatchPanic {
            serve: Some(serve),
            panicked: false,
        }
    }

    /// The future, unless it panicked (it was dropped then).
    fn into_inner(self) -> Option<F> {
        self.serve
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for CatchPanic<F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(serve) = this.serve.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve.poll(cx)));
        match polled {
            Ok(polled) => polled,
            Err(_panic) => {
                *this.panicked = true;
                if let Some(ctx) = crate::conn::pool::this_worker() {
                    incr(&ctx.stats.panics);
                }
                crate::observe::ratelog::panicked(
                    "serving a connection panicked; closing it",
                    None,
                );
                crate::conn::connection::dropping_after_panic(|| this.serve.set(None));
                Poll::Ready(())
            }
        }
    }
}

/// Spawns one of the worker's own loops (an accept loop, the parking lot).
/// Nothing awaits them before shutdown and the runtime keeps a task's panic
/// to itself, so a panic that escaped one would silently leave the worker
/// without it: a listener still in the `SO_REUSEPORT` group that nobody
/// accepts on (its share of new connections hangs in the backlog), or
/// parked connections nobody wakes or times out. The callbacks known to
/// panic (the `on_connection` hook, handlers' `on_close`) are caught where
/// they are called; this is the backstop that makes any other one loud.
fn spawn_loop(
    what: &'static str,
    worker: usize,
    run: impl std::future::Future<Output = ()> + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures_util::FutureExt;
    tokio::task::spawn_local(async move {
        if std::panic::AssertUnwindSafe(run)
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(
                worker,
                what,
                "a worker loop panicked and stopped: this worker serves on without it (restart the server)"
            );
        }
    })
}

async fn run<S>(
    setup: WorkerSetup<S>,
    lot: Option<LotFds>,
    listeners: oneshot::Receiver<Vec<AsyncFd<StdTcpListener>>>,
) -> Drained
where
    S: HttpService + Clone + 'static,
    S::Future: 'static,
    S::ResBody: 'static,
{
    let WorkerSetup {
        index,
        service,
        config,
        stats,
        limit,
        mut shutdown,
        mut go,
        registry,
        mut adopt,
        hand_over,
        stall_alarm,
        drains: _,
        scope: _,
    } = setup;
    // A connection woken less than `park_idle_after` after it was parked is
    // busy again: it waits as a task before it is parked once more.
    let park = lot
        .zip(config.park_idle_after)
        .map(|(fds, hot_within)| ParkingLot::new(fds, limit.clone(), stats.clone(), hot_within));
    let mut ctx = WorkerContext::new(index, config.clone(), stats, park);
    ctx.registry = registry;
    ctx.limit = Some(limit.clone());
    let ctx = Rc::new(ctx);
    // TLS streams take their record buffers from this worker's pool.
    crate::conn::pool::install(&ctx);
    let tracker = ctx.tracker.clone();
    let spawn_connection = connection_spawner(&ctx, service, &tracker);
    if let Some(lot) = &ctx.park {
        lot.set_respawn(Some(spawn_connection.clone()));
        lot.set_on_close(Some(dispatch::on_parked_close(&ctx)));
    }
    let parking = spawn_loop("parking lot", index, park::run(ctx.clone()));
    // With a hub, this worker's pump takes its messages from the start. Made
    // on the first message connection instead, it found every broadcast
    // since the server started queued (unbounded) and delivered them all to
    // that connection.
    if has_hub(&ctx) {
        crate::message::worker::local(&ctx);
    }
    // Says the log counts held back once their interval is over
    // (`ratelog.rs`); asleep while nothing is held back.
    let flushing = tokio::task::spawn_local(crate::observe::ratelog::flush_held_back());
    // The stall detector's tick, for when its watchdog asks (`stall.rs`).
    let ticking = stall_alarm
        .map(|_| tokio::task::spawn_local(crate::server::stall::tick(ctx.stats.clone())));
    // Accepted on only once the server runs: until then connections wait
    // in the kernel's queue (a new process of an upgrade takes none before
    // it told the old one it serves). Stopped (or the `Started` dropped)
    // before it ran: accept nothing, adopt nothing, and shut down as usual
    // with nothing to drain.
    let going = tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => false,
        went = go.wait_for(|go| *go) => went.is_ok(),
    };
    // Handed over by `Server::start` before it returned, so before the go.
    let registered = if going {
        listeners.await.unwrap_or_default()
    } else {
        // Its copies of the listening sockets close now.
        drop(listeners);
        Vec::new()
    };
    // Named in the hand-over's log line: an upgrade's admin server and main
    // server each have a worker 0, and both hand over.
    let listening = registered
        .first()
        .map(|listener| crate::conn::socket::addr_of(listener.get_ref()));
    let adopting = going.then(|| {
        let (ctx, limit) = (ctx.clone(), limit.clone());
        tokio::task::spawn_local(async move {
            while let Some(batch) = adopt.recv().await {
                let (n, mut closed) = (batch.len(), 0);
                for parked in batch {
                    if !handover::adopt(&ctx, &limit, parked, dispatch::resume) {
                        closed += 1;
                    }
                }
                tracing::debug!(
                    worker = ctx.index,
                    adopted = n - closed,
                    closed,
                    "parked connections taken over from the previous process"
                );
            }
        })
    });
    // Another worker at the limit with nothing idle of its own may ask
    // this one's lot to make room (`accept.rs`).
    let evicting = going.then(|| {
        spawn_loop(
            "eviction for other workers",
            index,
            evict_when_asked(ctx.clone(), limit.clone(), dispatch::evictable),
        )
    });
    let acceptors: Vec<_> = registered
        .into_iter()
        .map(|listener| {
            spawn_loop(
                "accept loop",
                index,
                accept_loop(
                    listener,
                    ctx.clone(),
                    spawn_connection.clone(),
                    limit.clone(),
                    dispatch::evictable,
                    dispatch::refusal_answer,
                ),
            )
        })
        .collect();

    // Runs until the server says stop (or is dropped, which means the same).
    let _ = shutdown.wait_for(|stop| *stop).await;

    // Go's order: stop accepting, close idle connections, wait for the active
    // ones up to the deadline, then force-close what is left.
    for acceptor in &acceptors {
        acceptor.abort();
    }
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    if let Some(adopting) = adopting {
        adopting.abort();
    }
    if let Some(evicting) = evicting {
        evicting.abort();
    }
    // An upgrade: the parked connections that can move go to the next
    // process before the rest are closed.
    let sender = hand_over
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some((tx, kinds)) = sender {
        // Idle connections still waiting as tasks park first, so that they
        // move too: woken, each parks on its next poll; a few turns of the
        // loop let them all run. HTTP/2 (over TLS or not) cannot park and
        // stays an idle task; so does HTTPS/1.1, whose session cannot move
        // with the socket (parked, it would be closed at once below, not
        // given shutdown's idle grace). Both close below. Awake cleartext
        // framed connections between frames park too (when framed ones
        // move): each parks on the poll the wake brings, and this task,
        // woken behind them in the `LocalSet`'s queue, runs after them.
        let nudged = ctx.shutdown.park_all_idle(kinds.moves_framed());
        // Bounded (~200 ms): idle connections that cannot park never leave.
        for turn in 0..200 {
            let s = &ctx.stats;
            let idle_tasks = s
                .connections_idle
                .load(std::sync::atomic::Ordering::Relaxed)
                - s.connections_parked
                    .load(std::sync::atomic::Ordering::Relaxed);
            if idle_tasks <= 0 && (nudged == 0 || turn >= NUDGED_TURNS) {
                break;
            }
            if turn < 16 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let batch = ctx.park.as_ref().map_or_else(Vec::new, |lot| {
            lot.take_portable(|fd, tag, at| dispatch::export(&ctx, fd, tag, at, kinds))
        });
        // Tests have a worker panic at this line, by its text (a log layer:
        // crates/cli/upgrade.rs `WorkerPanic`, tests/lifecycle.rs).
        tracing::info!(
            worker = index,
            listen = listening.map(tracing::field::display),
            connections = batch.len(),
            "handing parked connections over"
        );
        // What stays, counted now: nothing is accepted any more, what
        // moves has left (counted closed), and the drain has not begun.
        // Awake message connections count in the gauge only while
        // registered for pushes, which is with a hub; without one, their
        // turns count them.
        let awake_unregistered = match has_hub(&ctx) {
            true => 0,
            false => ctx.shutdown.awake_message_connections(),
        };
        let s = &ctx.stats;
        let left = handover::LeftToDrain::new(
            s.connections_open
                .load(std::sync::atomic::Ordering::Relaxed),
            usize::try_from(
                s.messages
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .unwrap_or(0)
                + awake_unregistered,
        );
        let _ = tx.send((batch, left));
    }
    let parked = ctx.park.as_ref().map_or(0, ParkingLot::len);
    let open = tracker.len();
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    match config.shutdown_drain_rate {
        None => {
            // Idle HTTP/1.1 tasks are closed a grace later: a busy client's
            // next request is on its way (it read our keep-alive answer),
            // and closing under it loses it; within the grace it is served,
            // with `Connection: close` (see `conn::shutdown::IDLE_GRACE`).
            ctx.shutdown.begin(false);
            let grace = idle_grace(&config);
            let ctx = ctx.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(grace).await;
                ctx.shutdown.wake_watchers(usize::MAX);
            });
        }
        Some(rate) => {
            ctx.shutdown.begin(true);
            tokio::task::spawn_local(drain_paced(ctx.clone(), rate, deadline));
        }
    }
    tokio::task::spawn_local(end_calls(ctx.clone(), deadline));
    if tokio::time::timeout_at(deadline, parking).await.is_err() {
        // The paced drain did not finish in time: the rest close at once
        // (a request waiting in one is not served now: the deadline is here).
        if let Some(lot) = &ctx.park {
            lot.close_all_now();
        }
        ctx.shutdown.start();
    }
    tracker.close();
    let _ = tokio::time::timeout_at(deadline, tracker.wait()).await;
    ctx.stats
        .drain_pending
        .store(0, std::sync::atomic::Ordering::Relaxed);
    flushing.abort();
    if let Some(ticking) = ticking {
        // Before its tick goes: the watchdog must not take the end of the
        // loop for a stall while other workers still drain.
        ctx.stats
            .stall
            .done
            .store(true, std::sync::atomic::Ordering::SeqCst);
        ticking.abort();
    }
    if let Some(lot) = &ctx.park {
        // Breaks the ctx -> lot -> spawner -> ctx cycle.
        lot.set_respawn(None);
        lot.set_on_close(None);
    }
    Drained {
        worker: index,
        open,
        parked,
        tracker,
        deadline,
        shutdown_timeout: config.shutdown_timeout,
    }
}

/// Whether the server has a hub (its awake message connections are then
/// registered for pushes, and counted as message connections).
fn has_hub(ctx: &WorkerContext) -> bool {
    crate::message::MessageSettings::of(&ctx.config).is_some_and(|s| s.hub.is_some())
}

/// A worker's drain as its loop leaves it, counted by [`Drained::summary`]
/// once the worker's `block_on` has returned.
///
/// Not counted by the loop: its task ends inside one of the `LocalSet`'s
/// scheduling rounds, and the future `block_on` waits on (which sees that
/// end) is polled only after the round. Up to 60 more local tasks run in it
/// (`MAX_TASKS_PER_TICK`, 61, in tokio 1.54's `task/local.rs`), then up to
/// 61 of the runtime's own (a handler's `tokio::spawn`; `event_interval` in
/// `current_thread`'s `block_on`). A connection among them woken by then
/// (its handler's answer came in the same turn as the deadline) finished
/// its response after the loop had counted it forced. Once `block_on` has
/// returned nothing is polled again (the `LocalSet`'s tasks are dropped
/// unpolled), so what is open then is exactly what was forced. (Stopping
/// the connections instead would take a check at each poll of every
/// connection; this costs nothing until shutdown.) The runtime itself is
/// driven on after that, waiting for the other workers' drains, only when
/// nothing was forced: an upgraded connection's task lives on the runtime,
/// and a forced one must not run on once counted.
struct Drained {
    worker: usize,
    /// Connection tasks open when the drain began.
    open: usize,
    /// Connections parked then (they close at once: finished).
    parked: usize,
    /// The worker's connection tasks (and upgraded connections' drains).
    tracker: TaskTracker,
    /// When the drain forced what was left.
    deadline: tokio::time::Instant,
    /// The server's `shutdown_timeout`: the runtime waits for the other
    /// workers' drains that much past `deadline` at most (see [`Drains`]).
    shutdown_timeout: std::time::Duration,
}

impl Drained {
    /// How the drain went; call it once nothing of the worker runs.
    fn summary(self) -> WorkerSummary {
        let forced = self.tracker.len();
        if forced > 0 {
            tracing::warn!(
                worker = self.worker,
                forced,
                "shutdown_timeout reached; closing connections by force (raise shutdown_timeout to let them finish)"
            );
        }
        WorkerSummary {
            finished: self.open + self.parked - forced,
            forced,
        }
    }
}

/// Ends the HTTP/2 gRPC calls still open a margin before the drain's
/// `deadline` ([`goodbye_margin`]), while their connections are still
/// polled: each answers `grpc-status: 14` (UNAVAILABLE), which gRPC
/// clients retry, where the close at the deadline left them a broken
/// connection (`proto/http2.rs`, `CutWatch`). Counted in a line: the calls
/// a drain cut, as `forced` counts the connections.
async fn end_calls(ctx: Rc<WorkerContext>, deadline: tokio::time::Instant) {
    tokio::time::sleep_until(deadline - goodbye_margin(&ctx.config)).await;
    let ended = ctx.shutdown.end_calls();
    if ended > 0 {
        tracing::warn!(
            worker = ctx.index,
            calls = ended,
            "shutdown_timeout is near: ending the gRPC calls still open with UNAVAILABLE (grpc-status 14), which their clients retry (raise shutdown_timeout to let them finish)"
        );
    }
}

/// Closes this worker's connections at its share of `shutdown_drain_rate`
/// (a million clients told to reconnect in the same second would all come
/// back in that second), a few every tick, until none is left waiting:
/// awake message connections first (given their turn, each says goodbye:
/// `LocalShutdown::release_awake`), then upgraded WebSockets (`axum_ws`:
/// `release_upgraded`), then idle HTTP/1.1 tasks (woken, each closes if
/// still idle), then parked sockets. Connections that wake meanwhile are
/// served, an HTTP/1.1 answer saying `Connection: close`. A message
/// connection in the middle of a message finishes it first; one woken
/// before its turn by something else (the peer's message, a push, a ping
/// due) serves it and waits on for its turn (its `Turn` keeps its place:
/// until session 45 it said goodbye then, and a hub broadcast during the
/// drain closed every subscriber in the same instant).
///
/// Why that order. Go's `Server.Shutdown` closes idle connections first and
/// waits for active ones; nginx closes idle keep-alive connections at once;
/// envoy's gradual drain asks connections of every kind to close with a
/// probability that grows over its drain time. None paces for reconnects,
/// and what a close costs differs by kind: an HTTP/1.1 client reconnects
/// only when it has its next request, while a WebSocket, SSE or framed
/// client reconnects at once. So the eager ones go first, while the drain
/// has time: if it outlasts `shutdown_timeout`, what is left closes at
/// once, and it is best that this be connections whose clients come back
/// lazily. The awake ones also hold the most (a task and its buffers each):
/// an upgrade's two processes overlap less. Idle HTTP/1.1 tasks keep their
/// place before parked sockets (a busy client's next request meets
/// `Connection: close` meanwhile, and they close themselves).
///
/// The awake ones still waiting for a turn near the deadline say goodbye
/// together, `margin` before it (a tenth of `shutdown_timeout`, at most a
/// second): a goodbye needs time to be written, and at the deadline their
/// tasks are no longer polled (they would be reset and counted forced, as
/// none was before pacing). Idle and parked ones close at the deadline.
async fn drain_paced(ctx: Rc<WorkerContext>, per_second: u32, deadline: tokio::time::Instant) {
    use std::sync::atomic::Ordering::Relaxed;
    let share = (f64::from(per_second) / ctx.config.workers.max(1) as f64).max(1.0);
    // Ticks of 10 ms at most, one connection per tick at least.
    let (tick, per_tick) = if share >= 100.0 {
        (
            std::time::Duration::from_millis(10),
            (share / 100.0).ceil() as usize,
        )
    } else {
        (std::time::Duration::from_secs_f64(1.0 / share), 1)
    };
    let mut parked = ctx
        .park
        .as_ref()
        .map_or_else(Vec::new, ParkingLot::parked_fds);
    // What is left is counted by the closes themselves, from now on (see
    // `count_drain_pending`): every connection still open, not the turns
    // this loop gives.
    count_drain_pending(&ctx.stats);
    let awake = ctx.shutdown.awake_waiting() + ctx.shutdown.upgraded_waiting();
    let idle = ctx.shutdown.watching();
    let turns = awake + idle + parked.len();
    let seconds = turns as f64 / share;
    tracing::info!(
        worker = ctx.index,
        pending = ctx.stats.drain_pending.load(Relaxed),
        awake,
        idle,
        parked = parked.len(),
        per_second = share,
        seconds,
        "shutdown: closing connections at a bounded rate (shutdown_drain_rate): awake message connections, then idle, then parked"
    );
    if seconds > ctx.config.shutdown_timeout.as_secs_f64() {
        tracing::warn!(
            worker = ctx.index,
            seconds,
            shutdown_timeout_s = ctx.config.shutdown_timeout.as_secs_f64(),
            "the paced drain outlasts shutdown_timeout: what is left then closes at once (raise shutdown_timeout or shutdown_drain_rate)"
        );
    }
    let margin = goodbye_margin(&ctx.config);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pacing = async {
        loop {
            interval.tick().await;
            let mut closed = ctx.shutdown.release_awake(per_tick);
            if closed < per_tick {
                closed += ctx.shutdown.release_upgraded(per_tick - closed);
            }
            if closed < per_tick {
                closed += ctx.shutdown.wake_watchers(per_tick - closed);
            }
            // A parked socket with bytes waiting is woken, not closed: it
            // takes this tick's place (its task runs now), but is not
            // counted off. A message connection then waits awake for its
            // turn, given on a later tick (before session 46 it was counted
            // off at its wake, and the count read 0 while it still waited
            // for its goodbye); an HTTP/1.1 one answers and closes, and
            // stays counted until the drain ends.
            let mut woken = 0;
            if let Some(lot) = &ctx.park {
                while closed + woken < per_tick {
                    let Some(fd) = parked.pop() else { break };
                    match lot.shut_parked(fd) {
                        Some(Shut::Closed) => closed += 1,
                        Some(Shut::Woken) => woken += 1,
                        None => {}
                    }
                }
            }
            // One not in the lists at the start may join them meanwhile (a
            // message under way at the start, an upgrade just done, a push
            // resumed) and take a turn. No turn is lost: a native loop's
            // `Turn` keeps its slot while it serves something else, and
            // HTTP/2 polls its `wait` first; a message connection woken
            // during the drain stays awake until its turn (parked again, it
            // would leave the drain for its deadline).
            if closed + woken == 0 {
                // Awake connections busy meanwhile (a message in flight) say
                // goodbye once done, without a turn. What is still open
                // stays counted (new connections until their cut, answers
                // under way): the drain is not over.
                ctx.shutdown.end_pacing();
                return;
            }
        }
    };
    if tokio::time::timeout_at(deadline - margin, pacing)
        .await
        .is_err()
    {
        // The awake ones left say goodbye now, while there is time to.
        ctx.shutdown.end_pacing();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard for what every heartbeat on a parked connection is served
    /// in: the box `connection_spawner` fills at each wake-up served at
    /// once (every byte of it written there, and again as the future runs),
    /// for a service shaped as the demo's (`crates/cli/demo.rs`: one `Arc`;
    /// its future an `Either` of a ready response and a boxed one).
    /// Measured when written (session 51): 776 bytes (a debug build; the
    /// release build copies 760 into the box, where it copied 1,000 with
    /// the demo's service held field by field, its `ServerHandle` and two
    /// routes: `objdump` of `connection_spawner`). The bound adds ~4 %;
    /// the dispatcher's own guard (`dispatch.rs`, `size_guard`) bounds the
    /// same future for a function service.
    #[test]
    fn the_woken_future_stays_small() {
        use crate::Body;
        use http::{Request, Response};
        type DemoBody = http_body_util::Either<http_body_util::Full<bytes::Bytes>, Body>;
        type Answer = Result<Response<DemoBody>, std::convert::Infallible>;
        /// The demo's shape.
        #[derive(Clone)]
        struct DemoLike(#[allow(dead_code)] Arc<()>);
        impl tower::Service<Request<Body>> for DemoLike {
            type Response = Response<DemoBody>;
            type Error = std::convert::Infallible;
            type Future = futures_util::future::Either<
                std::future::Ready<Answer>,
                std::pin::Pin<Box<dyn std::future::Future<Output = Answer>>>,
            >;
            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<Body>) -> Self::Future {
                let body = http_body_util::Either::Left(http_body_util::Full::default());
                futures_util::future::Either::Left(std::future::ready(Ok(Response::new(body))))
            }
        }
        fn size_of_made<F, A, B, C, D>(_: &impl Fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size_of_made(&dispatch::serve::<DemoLike>);
        eprintln!("the woken connection's future: {size} bytes");
        assert!(size <= 808, "the woken connection's future is {size} bytes");
    }

    /// A worker that ends after `hand` checked it lives, before the hand-over
    /// (a panic on its thread can land there): the start fails with
    /// `WorkerEnded`, and the listening sockets registered for it close, so
    /// that no socket listens with nobody to accept.
    #[test]
    fn a_worker_that_ends_before_the_hand_over_fails_the_start_and_closes_its_sockets() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, worker_end) = oneshot::channel();
        let listeners = Listeners {
            worker: 3,
            runtime: runtime.handle().clone(),
            tx,
            stopping: watch::channel(false).1,
            fail_register: None,
            before_send: Some(Box::new(move || drop(worker_end))),
        };
        let handed = listeners.hand(vec![listener]);
        assert!(
            matches!(handed, Err(Error::WorkerEnded { worker: 3 })),
            "{handed:?}"
        );
        // The only socket on that port is closed: nothing listens there.
        let connect = std::net::TcpStream::connect(addr).map(drop);
        assert_eq!(
            connect.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "the listener registered for the ended worker still listens"
        );
    }
}
