//! What every connection of one worker shares: its settings, counters,
//! buffer pool, shutdown signal, parking lot and live-connection list.
//!
//! A worker is one thread, so this is shared by `Rc`; it sits in the core
//! because everything from the accept loop to the protocols reads it.

use std::rc::Rc;
use std::sync::Arc;

use crate::conn::blocks::BlockCache;
use crate::conn::config::{Config, HeadLimits};
use crate::conn::park::ParkingLot;
use crate::conn::pool::BufferPool;
use crate::conn::shutdown::LocalShutdown;
use crate::conn::tls_io::ParkedSessions;
use crate::observe::close::CloseReason;
use crate::observe::human::Timeout;
use crate::observe::ratelog::{self, Flood};
use crate::observe::registry::Registry;
use crate::observe::stats::{incr, StatsSource, WorkerStats};

/// What every connection of one worker shares.
#[derive(Debug)]
pub(crate) struct WorkerContext {
    pub config: Arc<Config>,
    pub limits: HeadLimits,
    pub stats: Arc<WorkerStats>,
    pub pool: BufferPool,
    /// Heap blocks for per-request futures (HTTP/1.1's exchange).
    pub blocks: BlockCache,
    pub shutdown: LocalShutdown,
    /// The worker's connection tasks, which its drain waits for; an
    /// upgraded connection, which leaves its task, joins with a token.
    pub tracker: tokio_util::task::TaskTracker,
    pub park: Option<ParkingLot>,
    /// Sessions of parked TLS connections, by socket (the lot keeps the
    /// sockets).
    pub tls_parked: ParkedSessions,
    /// The bound on this worker's TLS handshakes in flight, if TLS is
    /// served and the bound is on (`tls.rs`).
    pub tls_gate: Option<crate::conn::tls::HandshakeGate>,
    /// This worker's live-connection list, when tracking is on.
    pub registry: Option<Arc<Registry>>,
    /// The server's connection limits, for a per-IP place taken after the
    /// accept (a proxied connection's client, `conn/proxy_header.rs`).
    pub limit: Option<crate::conn::limit::ConnectionLimit>,
    pub index: usize,
    /// The message layer's per-worker state, opaque to the core: message
    /// protocols (framed) keep their parked connections' states, ids and
    /// topics there (the lot keeps only their tag).
    pub protocol_local: std::cell::OnceCell<Rc<dyn std::any::Any>>,
    /// More protocols' per-worker tables, one per type (see [`WorkerContext::local`]).
    locals: std::cell::RefCell<Vec<Rc<dyn std::any::Any>>>,
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
            blocks: BlockCache::default(),
            shutdown: LocalShutdown::default(),
            tracker: tokio_util::task::TaskTracker::new(),
            park,
            tls_parked: ParkedSessions::default(),
            tls_gate: crate::conn::tls::HandshakeGate::of(&config),
            registry: None,
            limit: None,
            config,
            stats,
            index,
            protocol_local: std::cell::OnceCell::new(),
            locals: std::cell::RefCell::default(),
        }
    }

    /// This worker's table of type `T` (made by `init` the first time): a
    /// protocol keeps its parked connections' states there, opaque to the
    /// core. A few types at most, so a scan beats a map.
    pub(crate) fn local<T: 'static>(&self, init: impl FnOnce() -> T) -> Rc<T> {
        let found = self
            .locals
            .borrow()
            .iter()
            .find_map(|l| l.clone().downcast::<T>().ok());
        found.unwrap_or_else(|| {
            let table = Rc::new(init());
            self.locals.borrow_mut().push(table.clone());
            table
        })
    }
}

impl WorkerContext {
    /// An upgraded connection's part in this worker's drain: told when
    /// shutdown begins and, if it `left_its_task` (an HTTP/1.1 upgrade; an
    /// HTTP/2 stream's connection task is counted already), counted among
    /// the connections the drain waits for.
    pub(crate) fn upgrade_drain(&self, left_its_task: bool) -> crate::conn::shutdown::Drain {
        let token = left_its_task.then(|| self.tracker.token());
        crate::conn::shutdown::Drain::new(token, self.shutdown.upgraded().clone())
    }
}

impl WorkerContext {
    /// When a connection starting now is to be retired (`max_connection_age`):
    /// the age less up to 10% jitter, so connections opened together (after a
    /// scale-out, a restart) do not all leave together.
    pub(crate) fn retire_at(&self) -> Option<tokio::time::Instant> {
        let age = self.config.max_connection_age?;
        // A cheap spread from the accept counter (Fibonacci hashing).
        let n = self
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let jitter = (n >> 54) as f64 / 1024.0 * 0.1;
        Some(tokio::time::Instant::now() + age.mul_f64(1.0 - jitter))
    }

    /// Counts and logs a connection retired for its age.
    pub(crate) fn aged_out(&self) {
        incr(&self.stats.aged_out);
        tracing::debug!(
            worker = self.index,
            "connection older than max_connection_age: closing it at this idle point"
        );
    }
}

impl StatsSource for WorkerContext {
    fn worker_stats(&self) -> &WorkerStats {
        &self.stats
    }
}

impl WorkerContext {
    /// This worker's counters, as the per-request metrics hold them.
    pub(crate) fn stats_source(self: &Rc<Self>) -> Rc<dyn StatsSource> {
        self.clone()
    }
}

impl WorkerContext {
    /// Runs a protocol's opening handshake (TLS, HTTP/2) bounded by
    /// `timeout`, the one shape every handshake takes: on time-out it counts
    /// in `timeouts` and closes as `timed_out`; on failure it closes as
    /// `failed` says. A connection in its handshake has asked for nothing
    /// yet: graceful shutdown closes it as it closes an HTTP/1.1 one
    /// waiting for its first head, at its turn and 5 s after `since` (the
    /// accept, for a TLS handshake and for an HTTP/2 one after it, as Go
    /// counts a new connection's 5 s from its accept, TLS handshake
    /// included; HTTP/2's start after an h2c hand-over), as
    /// `ShutdownBeforeRequest`, `peer` naming the client in
    /// the drain's first such line (`LocalShutdown::new_connection_cut`).
    /// A client that connected just before the drain finishes its
    /// handshake and gets its first request served; one stuck in it no
    /// longer holds the drain (a TLS one was waited for until its
    /// `handshake_timeout`, with that off to the deadline; an HTTP/2 one
    /// was cut at the drain's start, its request on the way lost).
    pub(crate) async fn handshake<T, E>(
        &self,
        timeout: Option<std::time::Duration>,
        handshake: impl std::future::Future<Output = Result<T, E>>,
        timed_out: CloseReason,
        failed: impl FnOnce(E) -> CloseReason,
        since: tokio::time::Instant,
        peer: impl FnOnce() -> String,
    ) -> Result<T, CloseReason> {
        let bounded = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, handshake).await.ok(),
                None => Some(handshake.await),
            }
        };
        // Logged inside the branch, not in its handler: `select!` drops
        // every branch first, the handshake with the socket it owns (h2c),
        // and `peer` may read the address from that socket.
        let cut = async {
            self.shutdown.new_connection_cut(since).await;
            self.shutdown.closing_before_request(peer);
        };
        tokio::select! {
            biased;
            () = cut => Err(CloseReason::ShutdownBeforeRequest),
            r = bounded => match r {
                None => {
                    incr(&self.stats.timeouts);
                    // A TLS handshake's, logged (limited) as the limits are:
                    // a peer holding handshakes open is what an operator
                    // looks for. HTTP/2's stays at debug, as HTTP/1.1's
                    // `read_header_timeout` does.
                    if timed_out == CloseReason::TlsHandshakeTimeout {
                        ratelog::log(Flood::TlsHandshakeTimeout, |suppressed| {
                            tracing::info!(
                                timeout = %Timeout(timeout),
                                suppressed,
                                "TLS handshake not done within TlsConfig::handshake_timeout; closing the connection"
                            )
                        });
                    } else {
                        tracing::debug!(reason = %timed_out, "handshake not done within read_header_timeout; closing the connection");
                    }
                    Err(timed_out)
                }
                Some(Err(e)) => Err(failed(e)),
                Some(Ok(done)) => Ok(done),
            },
        }
    }
}
