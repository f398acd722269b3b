//! Thread-per-core workers.
//!
//! Each worker is one OS thread running a current-thread tokio runtime with a
//! `LocalSet`, its own `SO_REUSEPORT` listeners, buffer pool and counters. Nothing
//! on the request path is shared between workers, so nothing is locked or
//! contended, and connection state can use `Rc`/`Cell` instead of atomics. The
//! kernel spreads new connections across the workers' listeners. (The same idea
//! as pingora's `pingora-runtime`, with one runtime per thread instead of a pool.)

use std::net::TcpListener as StdTcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::acceptor::accept_loop;
use crate::body::Body;
use crate::config::Config;
use crate::http1::head::HeadLimits;
use crate::limit::ConnectionLimit;
use crate::pool::BufferPool;
use crate::shutdown::LocalShutdown;
use crate::stats::WorkerStats;
use crate::BoxError;

/// What every connection of one worker shares.
#[derive(Debug)]
pub(crate) struct WorkerContext {
    pub config: Arc<Config>,
    pub limits: HeadLimits,
    pub stats: Arc<WorkerStats>,
    pub pool: BufferPool,
    pub shutdown: LocalShutdown,
    pub index: usize,
}

impl WorkerContext {
    pub(crate) fn new(index: usize, config: Arc<Config>, stats: Arc<WorkerStats>) -> WorkerContext {
        WorkerContext {
            limits: HeadLimits {
                max_header_bytes: config.max_header_bytes,
                max_headers: config.max_headers,
                max_body_bytes: config.max_body_bytes,
            },
            pool: BufferPool::new(stats.clone()),
            shutdown: LocalShutdown::default(),
            config,
            stats,
            index,
        }
    }
}

/// How one worker's drain went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WorkerSummary {
    /// Connections that closed by themselves during the drain.
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
}

/// Starts a worker thread; it runs until the shutdown signal and its drain end.
pub(crate) fn spawn<S, B>(setup: WorkerSetup<S>) -> std::io::Result<JoinHandle<WorkerSummary>>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
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

async fn run<S, B>(setup: WorkerSetup<S>) -> WorkerSummary
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let WorkerSetup {
        index,
        listeners,
        service,
        config,
        stats,
        limit,
        mut shutdown,
    } = setup;
    let ctx = Rc::new(WorkerContext::new(index, config.clone(), stats));
    let tracker = TaskTracker::new();
    let mut acceptors = Vec::with_capacity(listeners.len());
    for listener in listeners {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => acceptors.push(tokio::task::spawn_local(accept_loop(
                listener,
                ctx.clone(),
                service.clone(),
                limit.clone(),
                tracker.clone(),
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
    ctx.shutdown.start();
    tracker.close();
    let open = tracker.len();
    let _ = tokio::time::timeout(config.shutdown_timeout, tracker.wait()).await;
    let forced = tracker.len();
    if forced > 0 {
        tracing::warn!(
            worker = index,
            forced,
            "shutdown deadline reached; closing connections by force"
        );
    }
    WorkerSummary {
        finished: open - forced,
        forced,
    }
}
