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
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::acceptor::accept_loop;
use crate::body::Body;
use crate::config::Config;
use crate::http1::{self, head::HeadLimits, ConnEnd};
use crate::lifecycle::{ConnTrack, Registry, Tracked};
use crate::limit::{ConnectionLimit, ConnectionSlot};
use crate::park::{self, ParkingLot, Respawn};
use crate::pool::BufferPool;
use crate::shutdown::LocalShutdown;
use crate::stats::{gauge, incr, WorkerStats};
use crate::woken::WokenSocket;
use crate::BoxError;

/// What every connection of one worker shares.
#[derive(Debug)]
pub(crate) struct WorkerContext {
    pub config: Arc<Config>,
    pub limits: HeadLimits,
    pub stats: Arc<WorkerStats>,
    pub pool: BufferPool,
    pub shutdown: LocalShutdown,
    pub park: Option<ParkingLot>,
    /// This worker's live-connection list, when tracking is on.
    pub registry: Option<Arc<Registry>>,
    pub index: usize,
}

impl WorkerContext {
    pub(crate) fn new(
        index: usize,
        config: Arc<Config>,
        stats: Arc<WorkerStats>,
        park: Option<ParkingLot>,
    ) -> WorkerContext {
        WorkerContext {
            limits: HeadLimits {
                max_header_bytes: config.max_header_bytes,
                max_headers: config.max_headers,
                max_body_bytes: config.max_body_bytes,
            },
            pool: BufferPool::new(stats.clone()),
            shutdown: LocalShutdown::default(),
            park,
            registry: None,
            config,
            stats,
            index,
        }
    }
}

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

/// A connection to serve: freshly accepted, or woken from the parking lot.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Accepted by a listener (TLS, if configured, starts here).
    Accepted(TcpStream),
    /// A parked socket that turned readable; `hot` when it had been re-parked
    /// straight after its last request and woke again within
    /// `park_idle_after` (see `woken.rs`).
    Woken { socket: OwnedFd, hot: bool },
}

/// Spawns the task serving one connection; shared by the acceptor and the
/// parking lot.
pub(crate) fn connection_spawner<S, B>(
    ctx: &Rc<WorkerContext>,
    service: S,
    tracker: &TaskTracker,
) -> Respawn
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + 'static,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let ctx = Rc::downgrade(ctx);
    let tracker = tracker.clone();
    Rc::new(
        move |incoming: Incoming, slot: ConnectionSlot, track: Option<Rc<ConnTrack>>| {
            let Some(ctx) = ctx.upgrade() else { return };
            let service = service.clone();
            let spawn = |conn| spawn_tracked(&tracker, ctx.clone(), conn, slot, track);
            match incoming {
                Incoming::Accepted(stream) => spawn(Either::Left(crate::tls::serve_accepted(
                    stream,
                    service,
                    ctx.clone(),
                ))),
                // Only cleartext HTTP/1 connections are ever parked.
                Incoming::Woken { socket, hot } => spawn(Either::Right(http1::serve_connection(
                    WokenSocket::new(socket, hot),
                    service,
                    ctx.clone(),
                ))),
            }
        },
    )
}

/// Runs one connection's future as a task and settles its accounts when it
/// closes (or hands the connection to the parking lot).
fn spawn_tracked(
    tracker: &TaskTracker,
    ctx: Rc<WorkerContext>,
    conn: impl std::future::Future<Output = ConnEnd> + 'static,
    slot: ConnectionSlot,
    track: Option<Rc<ConnTrack>>,
) {
    let conn = Tracked::new(conn, track.clone());
    tokio::task::spawn_local(tracker.track_future(async move {
        match conn.await {
            ConnEnd::Closed(reason) => {
                drop(slot);
                gauge(&ctx.stats.connections_open, -1);
                incr(&ctx.stats.closed);
                if let Some(track) = track {
                    track.close(reason);
                }
            }
            // Still open, now a bare socket in the parking lot, which
            // releases the slot (and reports the close) when it closes.
            ConnEnd::Parked => slot.detach(),
        }
    }));
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
    let tracker = TaskTracker::new();
    let spawn_connection = connection_spawner(&ctx, service, &tracker);
    if let Some(lot) = &ctx.park {
        lot.set_respawn(Some(spawn_connection.clone()));
    }
    let parking = tokio::task::spawn_local(park::run(ctx.clone()));
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
    if let Some(lot) = &ctx.park {
        // Breaks the ctx -> lot -> spawner -> ctx cycle.
        lot.set_respawn(None);
    }
    WorkerSummary {
        finished: open - forced + parked,
        forced,
    }
}
