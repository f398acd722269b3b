//! Thread-per-core workers.
//!
//! Each worker is one OS thread running a current-thread tokio runtime with a
//! `LocalSet`, its own `SO_REUSEPORT` listeners, buffer pool, parking lot and
//! counters. Nothing on the request path is shared between workers, so nothing
//! is locked or contended, and connection state can use `Rc`/`Cell` instead of
//! atomics. The kernel spreads new connections across the workers' listeners.
//! (The same idea as pingora's `pingora-runtime`, with one runtime per thread
//! instead of a pool.)

use std::net::TcpListener as StdTcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::conn::accept::accept_loop;
use crate::conn::config::Config;
use crate::conn::connection::Connection;
use crate::conn::context::WorkerContext;
use crate::conn::limit::ConnectionLimit;
use crate::conn::park::{self, ParkingLot, Respawn};
use crate::conn::Incoming;
use crate::observe::close::CloseReason;
use crate::observe::lifecycle::{Registry, Tracked};
use crate::observe::stats::WorkerStats;
use crate::server::dispatch;
use crate::service::HttpService;

/// How one worker's drain went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WorkerSummary {
    /// Connections that closed by themselves during the drain (idle and parked
    /// ones included: they close at once).
    pub finished: usize,
    /// Connections still open at the deadline, closed by force.
    pub forced: usize,
}

/// Everything a worker thread needs, moved into it.
pub(crate) struct WorkerSetup<S> {
    pub index: usize,
    pub listeners: Vec<StdTcpListener>,
    pub service: S,
    pub config: Arc<Config>,
    pub stats: Arc<WorkerStats>,
    pub limit: ConnectionLimit,
    pub shutdown: watch::Receiver<bool>,
    pub registry: Option<Arc<Registry>>,
}

/// Starts a worker thread; it runs until the shutdown signal and its drain end.
pub(crate) fn spawn<S>(setup: WorkerSetup<S>) -> std::io::Result<JoinHandle<WorkerSummary>>
where
    S: HttpService + Clone + Send + 'static,
    S::Future: 'static,
    S::ResBody: 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("megaconn-worker-{}", setup.index))
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(setup))
        })
}

/// Spawns the task serving one connection; shared by the acceptor and the
/// parking lot.
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
    let ctx = Rc::downgrade(ctx);
    let tracker = tracker.clone();
    Rc::new(move |incoming: Incoming, conn: Connection| {
        let Some(ctx) = ctx.upgrade() else {
            conn.close(CloseReason::Shutdown);
            return;
        };
        let track = conn.track().cloned();
        let serve = dispatch::serve(incoming, service.clone(), ctx, conn);
        tokio::task::spawn_local(tracker.track_future(Tracked::new(serve, track)));
    })
}

async fn run<S>(setup: WorkerSetup<S>) -> WorkerSummary
where
    S: HttpService + Clone + 'static,
    S::Future: 'static,
    S::ResBody: 'static,
{
    let WorkerSetup {
        index,
        listeners,
        service,
        config,
        stats,
        limit,
        mut shutdown,
        registry,
    } = setup;
    // A connection woken less than `park_idle_after` after it was parked is
    // busy again: it waits as a task before it is parked once more.
    let park = config.park_idle_after.and_then(|hot_within| {
        ParkingLot::new(limit.clone(), stats.clone(), hot_within)
            .map_err(|e| tracing::warn!(worker = index, error = %e, "no parking lot; idle connections stay tasks"))
            .ok()
    });
    let mut ctx = WorkerContext::new(index, config.clone(), stats, park);
    ctx.registry = registry;
    let ctx = Rc::new(ctx);
    // TLS streams take their record buffers from this worker's pool.
    crate::conn::pool::install(&ctx);
    let tracker = TaskTracker::new();
    let spawn_connection = connection_spawner(&ctx, service, &tracker);
    if let Some(lot) = &ctx.park {
        lot.set_respawn(Some(spawn_connection.clone()));
        lot.set_on_close(Some(dispatch::on_parked_close(&ctx)));
    }
    let parking = tokio::task::spawn_local(park::run(ctx.clone()));
    let ticking = config
        .stall_threshold
        .map(|t| tokio::task::spawn_local(crate::server::stall::tick(ctx.stats.clone(), t)));
    let mut acceptors = Vec::with_capacity(listeners.len());
    for listener in listeners {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => acceptors.push(tokio::task::spawn_local(accept_loop(
                listener,
                ctx.clone(),
                spawn_connection.clone(),
                limit.clone(),
            ))),
            Err(e) => tracing::error!(worker = index, error = %e, "cannot register listener"),
        }
    }

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
    let parked = ctx.park.as_ref().map_or(0, ParkingLot::len);
    let open = tracker.len();
    ctx.shutdown.start();
    let _ = parking.await;
    tracker.close();
    let _ = tokio::time::timeout(config.shutdown_timeout, tracker.wait()).await;
    let forced = tracker.len();
    if forced > 0 {
        tracing::warn!(
            worker = index,
            forced,
            "shutdown deadline reached; closing connections by force"
        );
    }
    if let Some(ticking) = ticking {
        ticking.abort();
    }
    if let Some(lot) = &ctx.park {
        // Breaks the ctx -> lot -> spawner -> ctx cycle.
        lot.set_respawn(None);
        lot.set_on_close(None);
    }
    WorkerSummary {
        finished: open - forced + parked,
        forced,
    }
}
