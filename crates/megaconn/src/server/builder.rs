//! The public face: [`Builder`] (every knob) → [`Server`] (sockets bound, addresses
//! known) → [`Server::serve`] (workers running until shutdown), or in two
//! steps: [`Server::start`] (workers made, not accepting; may fail) →
//! [`Started::run`] (accepting; cannot fail).

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::{mpsc, watch};

use crate::conn::config::{
    self, zero_is_off, AcceptRate, Config, KeepaliveConfig, MAX_HEADERS_CEILING,
};
use crate::conn::context::WorkerContext;
use crate::conn::handover::{HandOverKinds, LeftToDrain, ParkedConnection};
use crate::conn::limit::ConnectionLimit;
use crate::conn::tls::TlsConfig;
use crate::conn::transport::Transport;
use crate::error::Error;
use crate::observe::stats::{ServerStats, WorkerStats};
use crate::server::worker::{self, WorkerSetup, WorkerSummary};
use crate::service::{HttpService, IntoHttpService};

/// A megaconn server: bound listeners, ready to serve (listening, except on
/// a shared port: see [`Builder::reuse_port_shared`]).
///
/// ```no_run
/// # async fn run() -> Result<(), megaconn::Error> {
/// # let app = axum::Router::new();
/// let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap()).listen()?;
/// println!("listening on {}", server.local_addr());
/// let summary = server.serve(app).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    pub(crate) config: Arc<Config>,
    listeners: Vec<Vec<TcpListener>>,
    local_addrs: Vec<SocketAddr>,
    max_connections: usize,
    handle: ServerHandle,
    /// Per worker: parked connections taken over from another process.
    adopt: Vec<mpsc::UnboundedReceiver<Vec<ParkedConnection>>>,
}

/// Configures a [`Server`]. Every setter documents its default and unit; for
/// timeouts, `None` disables.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    pub(crate) config: Config,
    /// [`Builder::name`] (`server/name.rs`).
    pub(crate) name: Option<Arc<str>>,
}

impl Server {
    /// Starts configuring a server listening on `addr` (add more with
    /// [`Builder::listen_on`]). Port 0 picks a free port, shared by all workers.
    pub fn bind(addr: SocketAddr) -> Builder {
        Builder::default().listen_on(addr)
    }

    /// Starts configuring a server with no address yet.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The bound addresses, in the order given (with port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The first bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Whether connections to `addr`, one of [`local_addrs`](Server::local_addrs),
    /// are served over TLS (for printing `https://` or `http://`).
    pub fn is_tls(&self, addr: SocketAddr) -> bool {
        crate::conn::tls::tls_for_local(&self.config, addr).is_some()
    }

    /// How many worker threads will serve.
    pub fn workers(&self) -> usize {
        self.config.workers
    }

    /// The connection limit in force (configured, or derived from the open-file
    /// limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A handle to read counters and trigger shutdown from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves `service` until [`ServerHandle::shutdown`] is called (or this future
    /// is dropped), then drains gracefully.
    ///
    /// A shutdown called before this future is first polled (a handle
    /// taken and shut down first, a `tokio::select!` or a test harness
    /// that polls it late) makes it return `Ok` at once, having accepted
    /// nothing, as `axum::serve`'s graceful shutdown does with a signal
    /// already complete.
    ///
    /// `service`: an axum `Router` or any [`HttpService`], or axum's
    /// `app.into_make_service()` or
    /// `app.into_make_service_with_connect_info::<SocketAddr>()`
    /// ([`IntoHttpService`]).
    pub async fn serve<A, M>(self, service: A) -> Result<ShutdownSummary, Error>
    where
        A: IntoHttpService<M>,
    {
        self.serve_with_shutdown(service, std::future::pending())
            .await
    }

    /// Serves `service` until `signal` completes (or [`ServerHandle::shutdown`] is
    /// called), then shuts down gracefully: stop accepting, close idle
    /// connections, let in-flight requests finish (their responses carry
    /// `Connection: close`) for up to `shutdown_timeout`, then close the rest.
    ///
    /// The same as [`start`](Server::start) then
    /// [`Started::run_with_shutdown`].
    pub async fn serve_with_shutdown<A, M, F>(
        self,
        service: A,
        signal: F,
    ) -> Result<ShutdownSummary, Error>
    where
        A: IntoHttpService<M>,
        F: Future<Output = ()>,
    {
        Ok(self.start(service)?.run_with_shutdown(signal).await)
    }

    /// Starts serving `service` in two steps: this one makes everything
    /// that can fail and sets the workers up, but none accepts a connection
    /// nor adopts a parked one yet; [`Started::run`] lets them, and cannot
    /// fail. Between the two, connections wait in the kernel's queues.
    ///
    /// Made here, in this order: the thread that joins the workers; each
    /// worker's runtime, parking lot (its epoll set) and thread; the stall
    /// watchdog's thread; then, last, listening on the sockets bound for a
    /// shared port ([`Builder::reuse_port_shared`]), and each worker's
    /// listening sockets registered with its runtime. An error names what
    /// failed and says what to do about it ([`Error::Worker`],
    /// [`Error::ParkingLot`], [`Error::Thread`], [`Error::Listen`],
    /// [`Error::Register`]).
    ///
    /// For a zero-downtime upgrade: a new process starts its server, then
    /// tells the old one it takes over, then runs; should the start fail,
    /// the old process has not been told and serves on. For a process
    /// joining a port others serve (a supervisor's worker process): one
    /// whose start fails took no share of the port's connections, but if
    /// it fails registering its sockets, which comes right after they
    /// listen: those queued in that window are reset (moved to the port's
    /// other processes instead with `net.ipv4.tcp_migrate_req=1`). Dropping the [`Started`] stops its workers,
    /// which have accepted nothing. A [`ServerHandle::shutdown`] before
    /// (or during) this call does not fail it: the workers stop as told,
    /// and [`Started::run`] returns at once.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), megaconn::Error> {
    /// # let app = axum::Router::new();
    /// let started = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
    ///     .listen()?
    ///     .start(app)?; // errors here, before anything is accepted
    /// // ... tell whoever waits that this server will serve ...
    /// let summary = started.run().await; // accepts from now on
    /// # Ok(()) }
    /// ```
    pub fn start<A, M>(self, service: A) -> Result<Started, Error>
    where
        A: IntoHttpService<M>,
    {
        let service = service.into_http_service();
        let Server {
            mut config,
            listeners,
            max_connections,
            handle,
            adopt,
            ..
        } = self;
        if A::CONNECT_INFO && !config.connect_info {
            // axum's `into_make_service_with_connect_info`: its
            // `ConnectInfo` is made from the address each request carries.
            Arc::make_mut(&mut config).connect_info = true;
        }
        let limit = ConnectionLimit::new(max_connections, config.max_connections_per_ip)
            .with_accept_rate(config.accept_rate, config.workers)
            .shared_by(&handle.0.workers);
        // Opened by `run`: before it, nothing would deliver a message.
        let hub = crate::message::MessageSettings::of(&config)
            .and_then(|s| s.hub.as_ref())
            .map(|channels| channels.hub());
        // Returning early (or dropping the `Started`) stops the workers
        // started so far, before they accept anything.
        let stop = StopOnDrop(handle.clone());
        let (go, go_rx) = watch::channel(false);
        let JoinThread { threads, joined } = join_thread(
            handle.0.hand_over.clone(),
            handle.0.name.as_deref(),
            worker::test_failure(&config, crate::WorkerStartFailure::JoinThread, 0),
        )?;
        let stall_alarm = config
            .stall_threshold
            .map(|_| crate::server::stall::Alarm::new());
        // Taken here, on the caller's thread (`log_scope.rs`).
        let scope = crate::server::log_scope::ServerScope::of_this_thread(handle.0.name.clone());
        let mut workers = Vec::with_capacity(listeners.len());
        for ((index, listeners), adopt) in listeners.into_iter().enumerate().zip(adopt) {
            let setup = WorkerSetup {
                stall_alarm: stall_alarm.clone(),
                adopt,
                hand_over: handle.0.hand_over.clone(),
                index,
                service: service.clone(),
                config: config.clone(),
                stats: handle.0.workers[index].clone(),
                limit: limit.clone(),
                shutdown: handle.0.shutdown_tx.subscribe(),
                go: go_rx.clone(),
                registry: handle.0.registries.get(index).cloned(),
                drains: handle.0.drains.clone(),
                scope: scope.clone(),
            };
            let worker = worker::spawn(setup)?;
            // Joined from now on, whatever happens next.
            let _ = threads.send(worker.thread);
            workers.push((worker.listeners, listeners));
        }
        // The join thread has them all.
        drop(threads);

        // Dropped when serving ends, which stops the watchdog thread.
        let stall_watch = match config.stall_threshold.zip(stall_alarm) {
            Some((threshold, alarm)) => Some(crate::server::stall::watch(
                handle.0.workers.clone(),
                handle.0.registries.clone(),
                threshold,
                alarm,
                handle.0.wakes.clone().expect("made with a stall threshold"),
                scope,
                worker::test_failure(&config, crate::WorkerStartFailure::StallWatchThread, 0),
            )?),
            None => None,
        };
        // Last: a socket bound for a shared port joins its `SO_REUSEPORT`
        // group here, once nothing above failed (`conn/socket.rs`); and a
        // socket is registered with a runtime only once it listens (see
        // `Listeners::hand`).
        crate::conn::socket::listen_bound(workers.iter().flat_map(|(_, l)| l), &config)?;
        let n = workers.len();
        for (to, listeners) in workers {
            to.hand(listeners)?;
        }
        Ok(Started {
            handle,
            go,
            hub,
            workers: n,
            joined,
            stall_watch,
            stop,
        })
    }
}

/// The thread that joins a server's workers, made by [`join_thread`].
struct JoinThread {
    /// Where the workers' threads go, to be joined; dropped once all went.
    threads: std::sync::mpsc::Sender<std::thread::JoinHandle<WorkerSummary>>,
    /// The workers' summaries, once all of them have ended.
    joined: tokio::sync::oneshot::Receiver<Vec<WorkerSummary>>,
}

/// Starts the thread that joins the workers, as they are made. Joining is
/// blocking: a thread of its own does it, so that [`Started::run`] needs
/// none (its fallback was to join on the caller's executor thread,
/// blocking a current-thread runtime up to `shutdown_timeout`). Made
/// first: a start that fails after some workers were made has them
/// joined too (they stop at once), none left running on its own.
///
/// Named after the server (`name::join_thread`), and so is it in
/// [`Error::Thread`] should it not start; `injected`: the error a test
/// makes it fail with (`WorkerStartFailure::JoinThread`).
fn join_thread(
    hand_over: HandOverSlot,
    server: Option<&str>,
    injected: Option<std::io::Error>,
) -> Result<JoinThread, Error> {
    let name = crate::server::name::join_thread(server);
    if let Some(source) = injected {
        return Err(Error::Thread { name, source });
    }
    let (threads, to_join) = std::sync::mpsc::channel::<std::thread::JoinHandle<WorkerSummary>>();
    let (joined_tx, joined) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let summaries = to_join
                .into_iter()
                .map(|t| t.join().unwrap_or_default())
                .collect::<Vec<_>>();
            // Whoever waits for a hand-over sees it end, even if a worker
            // died, and also when the server was started and dropped
            // without running (so not in `run`).
            lock(&hand_over).take();
            let _ = joined_tx.send(summaries);
        })
        .map_err(|source| Error::Thread { name, source })?;
    Ok(JoinThread { threads, joined })
}

/// A server whose workers run but accept nothing yet
/// ([`Server::start`]); [`run`](Started::run) lets them. Dropping it stops
/// the workers (they close their listening sockets' copies and any
/// parked connections handed to [`ServerHandle::adopt_parked`]), and
/// closes the [`ServerHandle`]'s copies too, so connections waiting in the
/// kernel's queues are reset; it does not wait for the workers' threads to
/// end (they do on their own, soon: they have nothing to drain).
#[must_use = "a started server accepts nothing until it is run; dropped, it stops"]
pub struct Started {
    handle: ServerHandle,
    /// Set once: the workers may accept. Dropped unset, they stop.
    go: watch::Sender<bool>,
    /// The server's hub, if it has one: opened with the go.
    hub: Option<crate::Hub>,
    /// How many workers; they are joined by the `megaconn-join` thread
    /// (`NAME-join` in a named server).
    workers: usize,
    /// The workers' summaries, once all of them have ended.
    joined: tokio::sync::oneshot::Receiver<Vec<WorkerSummary>>,
    stall_watch: Option<crate::server::stall::Watchdog>,
    stop: StopOnDrop,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Started {
    /// A handle to read counters and trigger shutdown from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Lets the workers accept, now (not when the future is first polled),
    /// and serves until [`ServerHandle::shutdown`] is called (or the future
    /// is dropped), then drains gracefully; see [`Server::serve`]. Nothing
    /// here can fail.
    pub fn run(self) -> impl Future<Output = ShutdownSummary> {
        self.run_with_shutdown(std::future::pending())
    }

    /// [`run`](Started::run) until `signal` completes too; see
    /// [`Server::serve_with_shutdown`].
    pub fn run_with_shutdown<F>(self, signal: F) -> impl Future<Output = ShutdownSummary>
    where
        F: Future<Output = ()>,
    {
        let Started {
            handle,
            go,
            hub,
            joined,
            stall_watch,
            stop,
            ..
        } = self;
        // The hub takes messages from here, as the workers accept.
        if let Some(hub) = hub {
            hub.open();
        }
        go.send_replace(true);
        async move {
            // Dropping this future (or returning) stops the workers and the
            // watchdog, and closes the handle's copies of the listening
            // sockets.
            let stop = stop;
            let _go = go;
            let _stall_watch = stall_watch;
            let mut stopped = handle.0.shutdown_tx.subscribe();
            tokio::select! {
                () = signal => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
            // From here nobody takes the listening sockets over: closing them
            // with the workers' copies refuses new connections again.
            drop(stop);
            // The join thread cannot panic (a worker's panic is its default
            // summary), so the summaries always come.
            let summaries = joined.await.unwrap_or_default();
            let stats = handle.stats();
            ShutdownSummary {
                finished: summaries.iter().map(|s| s.finished).sum(),
                forced: summaries.iter().map(|s| s.forced).sum(),
                accepted: stats.accepted,
                requests: stats.requests.saturating_sub(stats.requests_forced),
            }
        }
    }
}

/// Dropped, stops the workers and closes the handle's copies of the
/// listening sockets: with the workers' copies closed, none is left in the
/// `SO_REUSEPORT` group with nobody accepting (connections would wait there,
/// neither served nor reset, while any [`ServerHandle`] clone lives).
struct StopOnDrop(ServerHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let ServerHandle(shared) = &self.0;
        self.0.shutdown();
        lock(&shared.sockets).clear();
    }
}

/// Reads a running server's counters and triggers its shutdown. Cheap to
/// clone: one pointer, one reference count (a service that holds one by
/// value is cloned for each connection and each wake-up of a parked one,
/// and a handle of a dozen `Arc`s cost a dozen locked increments and
/// decrements each time).
#[derive(Debug, Clone)]
pub struct ServerHandle(Arc<HandleShared>);

/// What every clone of a [`ServerHandle`] shares.
#[derive(Debug)]
struct HandleShared {
    workers: Arc<[Arc<WorkerStats>]>,
    /// Per-worker live-connection lists (empty unless tracking is on).
    registries: Arc<[Arc<crate::observe::registry::Registry>]>,
    shutdown_tx: watch::Sender<bool>,
    /// The span export's counters come from here.
    tracing: crate::observe::trace::Hook,
    /// The certificate reloads' counters and the certificates' expiry
    /// come from here (`None`: no TLS).
    tls: Option<TlsConfig>,
    /// One duplicate of each listening socket, until shutdown begins.
    sockets: std::sync::Mutex<Vec<TcpListener>>,
    /// Where workers send their parked connections at shutdown, when an
    /// upgrade asked for them.
    hand_over: HandOverSlot,
    /// Per worker: where parked connections from another process go.
    adopt: Box<[mpsc::UnboundedSender<Vec<ParkedConnection>>]>,
    /// The stall detector's signs of work ([`ServerHandle::loop_wakes`]);
    /// `None` without one.
    wakes: Option<crate::server::stall::WakeSignal>,
    /// [`Builder::shutdown_drain_rate`], for what a drain will be.
    drain_rate: Option<u32>,
    /// [`Builder::topic_metrics`]' counts (`None`: not set).
    topic_metrics: Option<Arc<crate::message::topics::TopicMetrics>>,
    /// Workers whose drain has not ended ([`ServerHandle::workers_draining`]).
    drains: worker::Drains,
    /// [`Builder::name`].
    name: Option<Arc<str>>,
}

/// Where workers hand their parked connections at shutdown (with what
/// each left to its drain), and which kinds; `None`: they close them.
pub(crate) type HandOverSlot = Arc<
    std::sync::Mutex<
        Option<(
            std::sync::mpsc::Sender<(Vec<ParkedConnection>, LeftToDrain)>,
            HandOverKinds,
        )>,
    >,
>;

/// Locks a mutex nobody panics under (a poisoned one is still consistent).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The parked connections a server hands over at shutdown, as its workers
/// give them up: one batch per worker (see
/// [`ServerHandle::hand_over_parked`]). Iterating blocks until the next
/// batch; it ends after the last worker's.
#[derive(Debug)]
pub struct ParkedHandOver {
    rx: std::sync::mpsc::Receiver<(Vec<ParkedConnection>, LeftToDrain)>,
    /// Workers whose batch has not come yet.
    workers_left: usize,
    /// What the workers whose batch came left to their drains.
    left_to_drain: LeftToDrain,
}

impl ParkedHandOver {
    /// What the server's drain is left with, summed over the workers whose
    /// batch came so far: once the iteration ended, the whole server's
    /// (see [`LeftToDrain`]). A batch dropped unsent is not among it (its
    /// connections left the server as it was taken).
    pub fn left_to_drain(&self) -> LeftToDrain {
        self.left_to_drain
    }
}

impl Iterator for ParkedHandOver {
    type Item = Vec<ParkedConnection>;

    fn next(&mut self) -> Option<Vec<ParkedConnection>> {
        if self.workers_left == 0 {
            return None;
        }
        self.workers_left -= 1;
        let (batch, left) = self.rx.recv().ok()?;
        self.left_to_drain += left;
        Some(batch)
    }
}

impl ServerHandle {
    /// Duplicates of every listening socket, for a process taking this
    /// server's place (a zero-downtime upgrade: it passes them to
    /// [`Builder::adopt_listeners`]). While both hold them, connections
    /// queue in the kernel and whichever process accepts serves them, so
    /// none is refused. Empty once shutdown has begun.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<TcpListener>> {
        lock(&self.0.sockets)
            .iter()
            .map(TcpListener::try_clone)
            .collect()
    }

    /// Makes the shutdown that follows hand this server's parked (idle)
    /// connections over instead of closing them: each worker, once it has
    /// stopped accepting, takes the connections that can move out of its
    /// parking lot and sends them here, one batch per worker; they count as
    /// closed here (`handed_over`). What moves: cleartext HTTP/1.1 (idle
    /// keep-alive connections, which keep no other state), and cleartext
    /// framed connections whose handler exports its state
    /// ([`FramedHandler::export`](crate::FramedHandler::export): the state's
    /// bytes, topic names and heartbeat timers ride in the
    /// [`ParkedState`](crate::ParkedState); the handler hears `on_close`
    /// with [`CloseReason::HandedOver`](crate::CloseReason::HandedOver)).
    /// The others close as in any graceful shutdown: anything over TLS
    /// (its session cannot be rebuilt elsewhere), HTTP/2, WebSocket and
    /// SSE, framed connections whose handler does not export (or whose
    /// state is over [`MAX_EXPORTED_STATE_BYTES`](crate::MAX_EXPORTED_STATE_BYTES)),
    /// and framed connections busy at that moment (a frame half read, a
    /// handler running, a push being written). Pass them to the next
    /// process's [`adopt_parked`](ServerHandle::adopt_parked).
    ///
    /// Framed connections awake and idle at that moment (between frames,
    /// nothing owed) park for it and move too, as idle HTTP/1.1 tasks do.
    /// [`hand_over_parked_of`](ServerHandle::hand_over_parked_of) narrows
    /// it to what an older next process can adopt.
    pub fn hand_over_parked(&self) -> ParkedHandOver {
        self.hand_over_parked_of(HandOverKinds::All)
    }

    /// [`hand_over_parked`](ServerHandle::hand_over_parked), moving only
    /// the `kinds` the next process adopts: with
    /// [`HandOverKinds::Http1Only`] (a next process of a session before
    /// 47) framed handlers are never asked to export, and their
    /// connections close as at shutdown.
    pub fn hand_over_parked_of(&self, kinds: HandOverKinds) -> ParkedHandOver {
        let (tx, rx) = std::sync::mpsc::channel();
        *lock(&self.0.hand_over) = Some((tx, kinds));
        ParkedHandOver {
            rx,
            workers_left: self.0.workers.len(),
            left_to_drain: LeftToDrain::default(),
        }
    }

    /// Parks connections handed over by the server this one replaces
    /// ([`hand_over_parked`](ServerHandle::hand_over_parked)), spread over the
    /// workers, under this server's connection limits: one that does not fit,
    /// of a protocol this server cannot resume, or a framed one whose state
    /// is corrupt or its handler's [`import`](crate::FramedHandler::import)
    /// refuses, is closed, counted in [`ServerStats::handover_refused`].
    /// Adopted ones are counted in [`ServerStats::adopted`]; a framed one
    /// gets a new [`ConnectionId`](crate::ConnectionId) here, its handler's
    /// [`on_adopt`](crate::FramedHandler::on_adopt) told.
    ///
    /// Called between [`Server::start`] and [`Started::run`], the
    /// connections wait in a channel and are adopted once the workers may
    /// accept; should the server stop before it runs (the [`Started`]
    /// dropped, or shutdown), they are closed.
    pub fn adopt_parked(&self, connections: Vec<ParkedConnection>) {
        let n = self.0.adopt.len();
        let mut shares: Vec<Vec<ParkedConnection>> = (0..n).map(|_| Vec::new()).collect();
        for (i, c) in connections.into_iter().enumerate() {
            shares[i % n].push(c);
        }
        for (tx, share) in self.0.adopt.iter().zip(shares) {
            if !share.is_empty() {
                // A worker that is gone drops them, which closes them.
                let _ = tx.send(share);
            }
        }
    }

    /// Each worker's counters (for the hub, whose queues count there).
    pub(crate) fn worker_stats(&self) -> &[Arc<WorkerStats>] {
        &self.0.workers
    }

    /// The server's counters, summed over workers.
    pub fn stats(&self) -> ServerStats {
        let mut stats = ServerStats::sum(&self.0.workers);
        if let Some(topics) = &self.0.topic_metrics {
            stats.messages.topics = topics.counts(stats.messages.subscriptions);
        }
        stats.otel = crate::observe::trace::export_stats(&self.0.tracing);
        stats.tls = self.0.tls.as_ref().map(TlsConfig::stats);
        stats
    }

    /// The connections open now, summed over the workers: `stats()`'s
    /// `connections_open` without the rest (one load a worker, no
    /// allocation). HTTP connections included: a broadcast's audience is
    /// [`message_connections`](ServerHandle::message_connections).
    pub fn connections_open(&self) -> usize {
        let open: i64 = self
            .0
            .workers
            .iter()
            .map(|w| {
                w.connections_open
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        usize::try_from(open).unwrap_or(0)
    }

    /// The message connections a broadcast
    /// ([`Hub::broadcast`](crate::Hub::broadcast)) reaches now, summed over
    /// the workers: framed TCP connections and WebSockets on the native
    /// engine, awake or parked (an awake one counts while it is registered
    /// for pushes, which it is when the server has a hub). HTTP connections
    /// are not among them, however many are open. Exact (each worker
    /// counts its own as they wake, park and close), one load a worker;
    /// what an application charges a peer's broadcast by
    /// ([`PublishRate::allow_to`](crate::PublishRate::allow_to)).
    pub fn message_connections(&self) -> usize {
        let open: i64 = self
            .0
            .workers
            .iter()
            .map(|w| {
                w.messages
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        usize::try_from(open).unwrap_or(0)
    }

    /// When the workers woke to do something, as the stall detector sees
    /// them: a reader that copies [`stats`](ServerHandle::stats)
    /// elsewhere waits for [`LoopWakes::woken`](crate::LoopWakes::woken)
    /// after a look that found them unchanged, instead of looking again
    /// and again at an idle server. `None` when the server has no stall
    /// detector ([`Builder::stall_threshold`] off), which is what watches
    /// the workers' loops.
    pub fn loop_wakes(&self) -> Option<crate::LoopWakes> {
        self.0
            .wakes
            .as_ref()
            .map(crate::server::stall::LoopWakes::new)
    }

    /// The server's metrics as Prometheus text: a snapshot summed over workers,
    /// rendered by [`metrics::render_with`](crate::observe::metrics::render_with) (names and types
    /// are listed there) with this process's `megaconn_build_info` and
    /// `process_*` series, read from `/proc` at the call. Serve it at `/metrics` with the content type
    /// [`metrics::OPENMETRICS_CONTENT_TYPE`](crate::metrics::OPENMETRICS_CONTENT_TYPE)
    /// (it is OpenMetrics text: labelled `text/plain; version=0.0.4` its
    /// counters parse as untyped); cheap enough to scrape every second.
    pub fn render_metrics(&self) -> String {
        crate::observe::metrics::render_with(
            &self.stats(),
            crate::observe::metrics::ProcessCollector::this_process(),
        )
    }

    /// Puts this server's metrics into an application's own
    /// `prometheus-client` registry, to be served on the application's own
    /// `/metrics` with its series: the `megaconn_` series of
    /// [`render_metrics`](ServerHandle::render_metrics), read from the
    /// server at each scrape (one collector; nothing is recorded twice).
    /// Not the `process_*` series nor `megaconn_build_info`: an application
    /// usually has those of its own, and a name twice in one exposition is
    /// refused by Prometheus; register
    /// [`ProcessCollector::this_process`](crate::metrics::ProcessCollector::this_process)
    /// for them in a registry without a prefix (a collector takes its
    /// registry's prefix: under `with_prefix("app")` they would read
    /// `app_process_*`, not the names dashboards look for).
    ///
    /// Under a prefix of the application's (`Registry::with_prefix("app")`)
    /// the names become `app_megaconn_…`. The registry must be of
    /// megaconn's `prometheus-client` (0.25:
    /// [`metrics::prometheus_client`](crate::metrics::prometheus_client)).
    ///
    /// A server with a [`Builder::name`] labels its series
    /// `server="NAME"`, and several named servers share one registry: each
    /// family is written once, with a series per server (one collector per
    /// registry, whatever the number of servers). Without names they could
    /// not be told apart: registering a second server in a registry that
    /// has one already fails with [`Error::Config`] unless both are named,
    /// with different names (the registry is left as it was). A server
    /// alone in its registry needs no name, and its series are what they
    /// were before names existed. Register every server into the same
    /// `&mut Registry`: each call of `Registry::sub_registry_with_prefix`
    /// makes a new sub-registry, where a server cannot see the others, and
    /// the scrape would then repeat every family (which Prometheus refuses).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), megaconn::Error> {
    /// use megaconn::metrics::prometheus_client::{encoding::text::encode, registry::Registry};
    /// let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap()).listen()?;
    /// let mut registry = Registry::default(); // the application's, with its own metrics
    /// server.handle().register_metrics(&mut registry)?;
    /// let mut text = String::new();
    /// encode(&mut text, &registry).unwrap(); // at each scrape of the app's /metrics
    /// assert!(text.contains("megaconn_connections_open"));
    /// # Ok(()) }
    /// ```
    pub fn register_metrics(
        &self,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<(), Error> {
        let handle = self.clone();
        crate::observe::app_registry::register(registry, self.0.name.clone(), move || {
            handle.stats()
        })
    }

    /// The server's [`Builder::name`], if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// The live connections, sorted by id, from `offset`, at most `limit` of
    /// them, and how many there are in all. Empty unless the server was built
    /// with [`Builder::track_connections`].
    ///
    /// Each worker's list is read a few hundred connections per lock, which
    /// that worker's accepts and closes wait for, and only the page is kept:
    /// a page from a million connections holds no worker off for long (one
    /// far from the start still walks past the connections before it).
    pub fn connections(&self, offset: usize, limit: usize) -> (usize, Vec<crate::ConnectionInfo>) {
        crate::observe::registry::page(&self.0.registries, offset, limit)
    }

    /// True when the server keeps a live list of connections.
    pub fn tracks_connections(&self) -> bool {
        !self.0.registries.is_empty()
    }

    /// Begins graceful shutdown. Idempotent.
    pub fn shutdown(&self) {
        self.0.shutdown_tx.send_replace(true);
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.0.shutdown_tx.borrow()
    }

    /// Waits until shutdown has begun (at once if it has): for what
    /// watches a drain, whoever began it (a signal, an upgrade's
    /// hand-over).
    pub async fn shutdown_started(&self) {
        let mut rx = self.0.shutdown_tx.subscribe();
        // The sender lives as long as `self`: no error while we wait.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Workers of this server whose drain has not ended: all of them
    /// while it serves, fewer as each one's drain ends at shutdown, 0 once
    /// every worker has drained (or before it started). Each worker keeps
    /// its runtime, and so the tasks handlers spawned on it and the
    /// sockets registered with it, until this is 0: a request still
    /// finishing on one worker can use an actor or a pooled connection
    /// another worker made.
    pub fn workers_draining(&self) -> usize {
        self.0.drains.left()
    }

    /// The server's [`Builder::shutdown_drain_rate`]: idle connections
    /// closed per second at shutdown, `None` for all at once.
    pub fn shutdown_drain_rate(&self) -> Option<u32> {
        self.0.drain_rate
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownSummary {
    /// Connections that were open when shutdown began and closed by themselves
    /// (idle ones closed at once, active ones after their response).
    pub finished: usize,
    /// Connections still open at the `shutdown_timeout` deadline, closed by force.
    pub forced: usize,
    /// Connections accepted over the server's life.
    pub accepted: u64,
    /// Requests served over the server's life: handed to the service, but
    /// for those the forced shutdown cut off
    /// ([`ServerStats::requests_forced`]).
    pub requests: u64,
}

impl Builder {
    /// Whether connections to `addr`, one of the addresses added, will be
    /// served over TLS: as [`Server::is_tls`], known before anything is
    /// bound (a supervisor of worker processes prints its workers' URLs
    /// while the ports are another generation's).
    pub fn is_tls(&self, addr: SocketAddr) -> bool {
        crate::conn::tls::tls_for_local(&self.config, addr).is_some()
    }
}

impl Builder {
    /// Adds a listen address (IPv4 or IPv6). May be called several times.
    pub fn listen_on(mut self, addr: SocketAddr) -> Builder {
        self.config.addrs.push(addr);
        self
    }

    /// Worker threads, each with its own runtime and `SO_REUSEPORT` listener per
    /// address. Default: the number of CPUs this process may use.
    pub fn workers(mut self, n: usize) -> Builder {
        self.config.workers = n;
        self
    }

    /// Time allowed to receive a whole request head, from accept (first request)
    /// or from the first byte of a later request. Default: 10 s. A head that
    /// started but did not finish gets `408`. `None` (or zero) disables.
    pub fn read_header_timeout(mut self, t: Option<Duration>) -> Builder {
        self.config.read_header_timeout = zero_is_off(t);
        self
    }

    /// Time allowed to receive the request body, from when the head arrived.
    /// Past it an HTTP/1.1 request gets `408` and its connection closes; an
    /// HTTP/2 handler's body read fails with [`BodyError::TimedOut`](crate::BodyError::TimedOut).
    /// Default: none (uploads may be slow; bound them with `max_body_bytes`;
    /// with it off, a body that stops coming is bounded by
    /// [`idle_timeout`](Builder::idle_timeout)). `None` (or zero) disables.
    pub fn read_timeout(mut self, t: Option<Duration>) -> Builder {
        self.config.read_timeout = zero_is_off(t);
        self
    }

    /// Time allowed to write one response, from when the handler returned it
    /// (on HTTP/1.1, from when its head is written: a head held back until
    /// the client sends a body it announced with `Expect: 100-continue`
    /// waits on that body, which `read_timeout` bounds).
    /// Past it an HTTP/1.1 connection closes and an HTTP/2 stream is reset
    /// (`INTERNAL_ERROR`, as Go's server does). On HTTP/1.1 it bounds the
    /// response to its last byte written (answers to pipelined requests
    /// then go out one by one, not batched). On the
    /// native WebSocket route ([`WebSocketRoute`](crate::WebSocketRoute))
    /// and framed connections it bounds each write. When it is off,
    /// [`write_stall_timeout`](Builder::write_stall_timeout) (or a
    /// WebSocket route's or framed connection's heartbeat timeout) bounds a
    /// stall of an HTTP/1.1 response's or a message connection's write: a
    /// peer that stops reading is closed as
    /// [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout).
    /// A `megaconn::axum_ws` socket's sends are bounded the same way (it
    /// has no heartbeat: this, else `write_stall_timeout`), where axum's
    /// are not: past it the send fails and the socket closes. Where this
    /// bounds a message connection's writes, the kernel's bound on its
    /// unacknowledged bytes (`TCP_USER_TIMEOUT`) is 2 × this + 1 s, so that
    /// this ends a write first ([`write_stall_timeout`](Builder::write_stall_timeout)
    /// says which connections get it).
    /// Default: none, because streaming responses (SSE, long-poll) are normal
    /// here. `None` (or zero) disables.
    pub fn write_timeout(mut self, t: Option<Duration>) -> Builder {
        self.config.write_timeout = zero_is_off(t);
        self
    }

    /// How long a keep-alive connection may wait for its next request. Default:
    /// 60 s. `None` (or zero) disables (connections stay until the client
    /// closes).
    ///
    /// With [`read_timeout`](Builder::read_timeout) off, it also bounds a
    /// handler's wait for request body bytes that do not come, as nginx's
    /// `client_body_timeout` (60 s) does: on HTTP/2 the read fails with
    /// [`BodyError::TimedOut`](crate::BodyError::TimedOut) (nginx resets
    /// the stream); on HTTP/1.1 it fails too, the request is answered
    /// `408` if its response has not begun, and the connection closes
    /// ([`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout), as
    /// after nginx's `408`). Either is counted in `megaconn_timeouts_total`
    /// and logged at most once per 5 s per worker. A request waiting on its
    /// client keeps the connection from its idle timeout, so without it a
    /// client that announced a body and sent none (or half) held an
    /// HTTP/1.1 connection, or 128 HTTP/2 streams a connection, for good.
    /// Only a wait counts: a handler that stops reading the body (it keeps
    /// it and does something else) is not cut; an HTTP/1.1 body the handler
    /// left unread is drained under the same bound once its response is
    /// done. Each byte (of a chunked HTTP/1.1 body, its framing too: size
    /// lines, their extensions, CRLFs and trailers; on HTTP/2, each DATA
    /// frame) starts the bound again
    /// (checked when it passes: a client is cut one to two bounds after its
    /// last byte), so a slow but steady upload is not cut; a gRPC
    /// streaming call whose client sends nothing for that long is.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Builder {
        self.config.idle_timeout = zero_is_off(t);
        self
    }

    /// How long a keep-alive connection idles as a task before it is parked:
    /// taken out of the runtime and kept as a bare socket in the worker's epoll
    /// set, costing a few bytes instead of about a kilobyte, until bytes arrive.
    /// Default: 2 s. `None` (or zero) never parks (every idle connection
    /// stays a task).
    ///
    /// A connection that never had to wait goes to the lot without idling
    /// first: a parked one that woke, was answered and is quiet again (a
    /// heartbeat), and a new cleartext HTTP/1.1 one whose opening request was
    /// there when it was accepted and was answered at once. One that comes
    /// back within this time after such a park is busy: it waits as a task
    /// (told apart within about 131 s at most: a longer setting still idles
    /// connections that long before parking them, but a parked one that
    /// comes back later than that is never taken for busy).
    pub fn park_idle_after(mut self, t: Option<Duration>) -> Builder {
        self.config.park_idle_after = zero_is_off(t);
        self
    }

    /// Batches the wake-ups of parked connections when they come often: a
    /// worker whose parking lot served a wake-up less than twice `window`
    /// ago stops hearing of parked sockets for `window`, then serves every
    /// one that woke meanwhile in one turn. A parked connection's request
    /// then waits up to `window` longer, only while the worker is busy with
    /// them (a quiet lot answers at once). Default: zero, off.
    ///
    /// What it buys: at a million connections with 30 s heartbeats each
    /// worker process gets one every 1-2 ms, and each woke the process alone
    /// (a context switch; for the client, a cross-CPU wake-up in its
    /// `send`), which costs about as much as serving it. `bench/HEARTBEAT.md`
    /// has the figures. Counted: `megaconn_parking_wakeups_total` against
    /// `megaconn_connections_wakes_total`.
    pub fn park_wake_batch(mut self, window: Duration) -> Builder {
        self.config.park_wake_batch = window;
        self
    }

    /// Connections older than this are closed at their next idle point, so
    /// that long-lived connections spread over new instances after a
    /// scale-out (behind an L4 load balancer, a client only moves when it
    /// reconnects): HTTP/1.1 answers its next request with `Connection:
    /// close`; HTTP/2 gets a `GOAWAY` (open streams finish). Each connection
    /// draws its limit between 90% and 100% of `age`, so those opened together
    /// do not leave together. The age counts from accept, also for a
    /// connection that parks between requests (the parking lot keeps it, to
    /// the second); for one handed over by an upgrade, from when the new
    /// process adopted it. Counted in `megaconn_connections_aged_out_total`.
    /// Default: `None`; zero is `None` too.
    pub fn max_connection_age(mut self, age: Option<Duration>) -> Builder {
        self.config.max_connection_age = zero_is_off(age);
        self
    }

    /// Connections closed per second (over all workers) at shutdown and at
    /// an upgrade's drain, so that a million clients are not all told to
    /// reconnect in the same second. A few every 10 ms: first awake
    /// WebSocket, framed, SSE and HTTP/2 connections waiting between
    /// messages (each gets its goodbye, `1001` or `GOAWAY`, at its turn;
    /// one in the middle of a message finishes it first, and one woken
    /// before its turn by its own traffic or a push serves it and waits on
    /// for its turn), then [`axum_ws`](crate::axum_ws) sockets (their
    /// `1001` at their turn too; a handler that only sends hears it once
    /// the pacing ends), then idle HTTP/1.1 connections, then parked ones
    /// of any protocol; one that sends a request meanwhile is served
    /// (`Connection: close`). Raw upgraded tunnels are not paced: the
    /// drain waits for them, and [`Draining`](crate::Draining) tells their
    /// handlers at the start. Keep `shutdown_timeout` above connections
    /// / rate: what is left at the deadline closes at once (logged at the
    /// start). Progress: `megaconn_shutdown_drain_pending` (during an
    /// upgrade's drain the old process's own metrics, which its admin
    /// listener no longer serves: `megaconn serve` logs its drain instead).
    /// Default: `None`, all at once.
    pub fn shutdown_drain_rate(mut self, per_second: Option<u32>) -> Builder {
        self.config.shutdown_drain_rate = per_second.filter(|&r| r > 0);
        self
    }

    /// How long graceful shutdown waits for in-flight requests before closing
    /// them by force. Default: 30 s.
    pub fn shutdown_timeout(mut self, t: Duration) -> Builder {
        self.config.shutdown_timeout = t.min(config::LONGEST);
        self
    }

    /// How long a connection the server closes may take, from when its
    /// close begins, to write its last bytes and to linger before its
    /// socket is closed anyway. The last bytes: an HTTP/1.1 response that
    /// ends with the connection (a `Connection: close`, a `408`, a `413`),
    /// a slow consumer's last frame (the rest of the one under way, never
    /// cut into) and its close `1013`, a framed or SSE peer's last frame or
    /// event, TLS's `close_notify`. Lingering: reading and discarding what
    /// the peer still sends until it closes its end (at most 256 KiB), for
    /// a close with unread input is a reset, and a reset destroys the
    /// answer still on its way (nginx's `lingering_close`). One bound for
    /// all of a close's steps together. A close it cuts short is counted
    /// in `megaconn_limit_hits_total{limit="linger_timeout"}` (once a
    /// connection) and logged (at most once per 5 s per worker).
    ///
    /// A peer that never reads or never closes its end holds its
    /// connection this long. Raise it for slow readers on long paths that
    /// must get a large last frame whole (a slow consumer reads what its
    /// sockets hold, up to about a MiB, after its close began); lower it
    /// to free connections sooner; zero writes what the sockets take at
    /// once and closes without lingering (nginx's `lingering_close off`),
    /// and counts and logs nothing (no wait was cut: none was asked for).
    /// Not the drain at shutdown, whose idle closes linger 500 ms (a
    /// request crossing our `FIN`), nor a WebSocket's wait for its peer's
    /// close frame ([`WebSocketRoute::close_timeout`](crate::WebSocketRoute::close_timeout)).
    /// Default: [`DEFAULT_LINGER_TIMEOUT`](crate::DEFAULT_LINGER_TIMEOUT), 2 s.
    pub fn linger_timeout(mut self, t: Duration) -> Builder {
        self.config.linger_timeout = t.min(config::LONGEST);
        self
    }

    /// Largest request line plus headers, in bytes; larger gets `431`, or `414`
    /// when the request line itself has not ended by then. Default:
    /// 64 KiB.
    pub fn max_header_bytes(mut self, n: usize) -> Builder {
        self.config.max_header_bytes = n;
        self
    }

    /// Most request headers; more gets `431`, over HTTP/1.1 (the connection
    /// then closes) and HTTP/2 (the stream ends; pseudo-headers such as
    /// `:path` not counted), counted as
    /// `megaconn_limit_hits_total{limit="max_headers"}`. Default: 100; at
    /// most 512.
    pub fn max_headers(mut self, n: usize) -> Builder {
        self.config.max_headers = n;
        self
    }

    /// Largest request body, in bytes. A larger `Content-Length` gets `413`
    /// before the handler runs; a chunked body that grows past it fails the
    /// handler's body read (after the bytes up to one past it, so that an
    /// app's own limit at or under this one fails first, as under
    /// `axum::serve`) and closes the connection. Default: 16 MiB.
    pub fn max_body_bytes(mut self, n: u64) -> Builder {
        self.config.max_body_bytes = n;
        self
    }

    /// How much unread request body the server discards after a response to keep
    /// the connection usable; past it the connection closes. HTTP/1.1: a
    /// body whose `Content-Length` says it has more left than this when
    /// its handler drops it unread is not read at all (the connection
    /// closes after the response, whose head is the handler's, as under
    /// `axum::serve`); either way counted as
    /// `megaconn_limit_hits_total{limit="max_drain_bytes"}`. Default:
    /// 256 KiB, as Go's `net/http`; 0 closes after every unread body.
    pub fn max_drain_bytes(mut self, n: u64) -> Builder {
        self.config.max_drain_bytes = n;
        self
    }

    /// HTTP/1.1 and HTTP/2: the slowest a client may send a request body
    /// while its handler waits for it, in bytes a second. A client earns
    /// `1 / rate` seconds of waiting per byte (its chunked framing
    /// included; on HTTP/2, DATA payload), starts with
    /// [`min_request_body_rate_grace`](Builder::min_request_body_rate_grace)
    /// (5 s) of it and may bank at most 60 s; when a wait of the handler's
    /// spends what is left, the handler's body read fails with
    /// [`BodyError::TimedOut`](crate::BodyError::TimedOut) and the request
    /// is answered `408` if its response has not begun. HTTP/1.1: else the
    /// connection just closes; either way it closes as
    /// [`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout).
    /// HTTP/2: the handler is dropped and only the stream ends (after the
    /// `408`, `RST_STREAM(NO_ERROR)`; a response begun, `RST_STREAM(CANCEL)`);
    /// the connection and its other streams go on. Counted in
    /// `megaconn_timeouts_total` and
    /// `megaconn_limit_hits_total{limit="min_request_body_rate"}`, and
    /// logged (at most once per 5 s per worker) with the peer. An unread
    /// HTTP/1.1 body drained after its response is held to the same rate.
    ///
    /// Only the handler's waits count (Kestrel's `MinRequestBodyDataRate`
    /// does the same): a handler that reads slowly, or not for a while,
    /// costs its client nothing. `idle_timeout` bounds one silence (60 s
    /// between two bytes, as nginx's `client_body_timeout`); that alone let
    /// a client send a byte every 20 s and hold its connection for good.
    /// A client that waits for the server's answer before it sends more
    /// (a duplex stream over one request) is cut by it: turn it off for
    /// such a service (an HTTP/2 gRPC request, `content-type:
    /// application/grpc*`, is never held to it). Default: 240 B/s, as Kestrel; `None` (or 0)
    /// disables, leaving `idle_timeout`'s bound (or
    /// [`read_timeout`](Builder::read_timeout)'s, on the whole body, where
    /// it is set; this one applies with it too).
    pub fn min_request_body_rate(mut self, bytes_per_second: Option<u32>) -> Builder {
        self.config.min_request_body_rate = bytes_per_second.filter(|&r| r > 0);
        self
    }

    /// The waiting [`min_request_body_rate`](Builder::min_request_body_rate)
    /// allows a request body before its bytes have earned any: for TCP slow
    /// start, a `100 Continue` round trip, a phone's radio waking. Capped
    /// at the 60 s a client may bank. Default: 5 s, as Kestrel.
    pub fn min_request_body_rate_grace(mut self, grace: Duration) -> Builder {
        self.config.min_request_body_rate_grace = grace.min(config::LONGEST);
        self
    }

    /// Most concurrent connections over all workers. At the limit, idle
    /// HTTP/1.1 keep-alive connections are closed to make room, longest
    /// idle first (the waiting connection's worker closes its own, or asks
    /// another worker to close its own); with none, the server stops
    /// accepting (new connections wait in the backlog) until one closes.
    /// Default: the open-file limit (raised to its hard cap) minus 256. A
    /// limit above that is kept, with a warning at [`listen`](Builder::listen):
    /// accepts past the open-file limit fail (`EMFILE`).
    pub fn max_connections(mut self, n: usize) -> Builder {
        self.config.max_connections = Some(n);
        self
    }

    /// At [`max_connections`](Builder::max_connections) with nothing idle to
    /// close for a new connection (all busy, or WebSockets and framed
    /// connections, which are never evicted): refuse it right after accept
    /// instead of leaving it in the kernel's backlog, where its client,
    /// whose handshake the kernel completed, hears nothing until its own
    /// timeout. On a cleartext HTTP listener it is answered `503 Service
    /// Unavailable` with a `Retry-After` of 1 to 3 s (spread, so that the
    /// refused clients do not all come back in the same second), on a TLS
    /// or framed listener closed without an answer; counted
    /// (`megaconn_limit_hits_total{limit="max_connections"}`) and logged at
    /// most once per interval. The server still tries to make room first:
    /// a connection is refused only once a round of eviction (this
    /// worker's idle connections, then another worker's) freed no slot
    /// within 100 ms, and for the next 100 ms the ones after it are refused
    /// at once. Default: off, as Go's `netutil.LimitListener` and nginx's
    /// `worker_connections` (and HAProxy's `maxconn`) leave connections
    /// over the limit in the backlog.
    pub fn refuse_at_max_connections(mut self, on: bool) -> Builder {
        self.config.refuse_at_max_connections = on;
        self
    }

    /// Limits how fast new connections are admitted (a token bucket; see
    /// [`AcceptRate`]). Over the rate a connection is refused right after
    /// accept: on a cleartext HTTP listener answered `503 Service
    /// Unavailable` with `Retry-After` (the seconds a worker's bucket takes
    /// to refill one token, at least 1, or one of the two seconds after it:
    /// spread over the refusals, so that they do not all retry in the same
    /// second), on a TLS or framed listener closed
    /// without an answer; counted (`ServerStats::rejected_accept_rate`) and
    /// logged at most once per interval. Default: none.
    ///
    /// With a burst of at least the W [`workers`](Builder::workers), each
    /// has a bucket of its own (no lock shared on the accept path),
    /// refilled at `per_second / W` and holding `burst / W` tokens, the
    /// remainder one more each for the first workers, so the buckets hold
    /// `burst` together; the kernel hands a connection to a worker by a
    /// hash of its addresses, so a burst that all lands on one worker is
    /// held to that worker's share. Below W the workers take from one
    /// bucket (a lock shared across threads per accept, in that setting
    /// only): a split would leave some workers no token, refusing every
    /// connection the kernel gave them. A worker's listeners share its
    /// bucket. (`serve --processes P` gives each process `burst / P` first,
    /// rounded up, at least 1; its workers split that.)
    pub fn accept_rate(mut self, rate: Option<AcceptRate>) -> Builder {
        self.config.accept_rate = rate;
        self
    }

    /// Most concurrent connections from one client IP (IPv6: one /64). Over it
    /// a connection is refused right after accept: on a cleartext HTTP
    /// listener answered `503 Service Unavailable` with `Retry-After: 1`, on
    /// a TLS or framed listener closed without an answer; counted
    /// (`ServerStats::rejected_per_ip`) and logged at most once per interval.
    /// Default: none.
    pub fn max_connections_per_ip(mut self, n: Option<u32>) -> Builder {
        self.config.max_connections_per_ip = n;
        self
    }

    /// Reads the PROXY protocol (HAProxy's, v1 and v2) from the load
    /// balancers in `trusted` (parsed from `"10.0.0.0/8,192.168.1.5"`),
    /// on every listener (HTTP, TLS, framed; one may have its own list,
    /// [`proxy_protocol_on`](Builder::proxy_protocol_on)): a connection from one of
    /// them must start with a header, before its TLS handshake or first
    /// request, within `read_header_timeout` (10 s with it off, as
    /// [`DEFAULT_READ_HEADER_TIMEOUT`](crate::DEFAULT_READ_HEADER_TIMEOUT)),
    /// and the client it names is
    /// the connection's peer from then on: [`ConnInfo`](crate::ConnInfo)
    /// (axum's `ConnectInfo`), `Session::peer_addr`, log lines, spans'
    /// `client.address`, the `on_connection` hook and
    /// `max_connections_per_ip` (checked on the client once the header is
    /// in, not on the balancer at accept; so is
    /// `TlsConfig::handshake_rate_per_ip`); the balancer's own address is
    /// the [`ProxiedBy`](crate::ProxiedBy) request extension (with
    /// [`connect_info`](Builder::connect_info)) and
    /// [`Session::proxied_by`](crate::Session::proxied_by). A v2 `LOCAL` header (a
    /// balancer's health check) or a v1 `UNKNOWN` one keeps the socket's
    /// address, as the spec says. From a trusted source, a connection
    /// without a valid header is closed (`megaconn_proxy_headers_total`
    /// says why; logged at most once per interval), as nginx's
    /// `proxy_protocol` does; from any other source no header is read,
    /// so a client cannot name an address: its bytes are the protocol's
    /// (an HTTP client's `PROXY ...` line is answered `400`). v2 TLVs are
    /// skipped; a header over [`MAX_PROXY_HEADER_BYTES`](crate::MAX_PROXY_HEADER_BYTES)
    /// is refused. Default: `None`, no header read.
    pub fn proxy_protocol(mut self, trusted: Option<crate::TrustedProxies>) -> Builder {
        self.config.proxy_protocol = trusted;
        self
    }

    /// [`proxy_protocol`](Builder::proxy_protocol) for one listener: the
    /// one added last at `addr` (with [`listen_on`](Builder::listen_on),
    /// [`listen_tls_on`](Builder::listen_tls_on), `listen_framed_on`,
    /// `listen_framed_tls_on`, [`listener`](Builder::listener)), whose
    /// connections read their header from the sources in `trusted`
    /// instead of the server's (`None`: no header is read on it, whatever
    /// the server's list says). Every other listener keeps the server's
    /// list. For a listener behind a balancer beside one that clients
    /// reach directly, as nginx's `proxy_protocol` is a parameter of each
    /// `listen`. Called again for the same listener, the last call counts.
    /// An address no listener was added at is refused by
    /// [`listen`](Builder::listen). Default: every listener has the
    /// server's list.
    pub fn proxy_protocol_on(
        mut self,
        addr: SocketAddr,
        trusted: Option<crate::TrustedProxies>,
    ) -> Builder {
        let listener = self.config.addrs.iter().rposition(|a| *a == addr);
        self.config
            .proxy_protocol_listeners
            .push(crate::conn::proxy_header::ListenerProxies {
                listener,
                addr,
                trusted,
            });
        self
    }

    /// Descriptors the accepts leave free below the open-file limit, for
    /// what else the process opens: an admin server's connections (build
    /// that one with `fd_reserve(0)`, so that it may use them), log files,
    /// DNS lookups. A connection accepted into them is closed at once,
    /// counted as an `EMFILE` accept error and logged, as when the process
    /// is out of descriptors. Default: [`DEFAULT_FD_RESERVE`](crate::DEFAULT_FD_RESERVE)
    /// (32), far inside the default `max_connections`' headroom; 0 accepts
    /// up to the limit.
    pub fn fd_reserve(mut self, n: usize) -> Builder {
        self.config.fd_reserve = n;
        self
    }

    /// Calls `hook` on every connection open and close ([`ConnectionEvent`](crate::ConnectionEvent)),
    /// with the close reason, duration, requests and bytes. It runs on the
    /// worker thread: keep it quick (count, log, or send to a channel). Tracking
    /// costs nothing while no hook is installed. A panic in the hook is
    /// caught, logged and counted in `panics`; the connection is served on.
    pub fn on_connection(
        mut self,
        hook: impl Fn(&crate::ConnectionEvent) + Send + Sync + 'static,
    ) -> Builder {
        self.config.on_connection = Some(crate::observe::lifecycle::ConnectionHook(Arc::new(hook)));
        self
    }

    /// Keeps a live list of connections with their peer, worker, state, age and
    /// requests served, for [`ServerHandle::connections`] (the admin listener's
    /// `/debug/connections`). Costs an uncontended lock and an insert into
    /// (and a removal from) the worker's list per connection (ordered by
    /// id, so a listing can be read a chunk per lock without holding up
    /// accepts and closes), a lock and a binary search each time a
    /// connection parks or wakes (a parked one's entry is kept by value in
    /// the list; a wake also allocates the track's `Rc` and the entry's
    /// `Arc`), and a few relaxed atomic stores per request (into the
    /// connection's own entry: no lock, no lookup), so it is off by default.
    pub fn track_connections(mut self, on: bool) -> Builder {
        self.config.track_connections = on;
        self
    }

    /// How long a worker's event loop may stay away before it is reported
    /// as stalled: a handler blocking its thread (`std::thread::sleep`,
    /// synchronous I/O, a long computation) delays every connection on that
    /// worker, since workers are one thread each. A stall is logged once,
    /// saying what held the worker from its thread's times over the stall
    /// (field `cause`: `blocked` off its CPU, `no_cpu` waiting for a core,
    /// `kernel` in system calls, `user_code`; `unknown` where `/proc` does
    /// not tell), with the connections it was handling when
    /// [`track_connections`](Builder::track_connections) is on, and counted
    /// in `megaconn_worker_stalls_total`. Default: 1 s; `None` (or zero)
    /// turns the detector off.
    pub fn stall_threshold(mut self, t: Option<Duration>) -> Builder {
        self.config.stall_threshold = zero_is_off(t);
        self
    }

    /// Logs one line per request at info level, target `megaconn::access`:
    /// connection id, peer, method, path, status, duration, body bytes. On
    /// HTTP/1.1 and HTTP/2, the answers sent before a handler runs included
    /// (a refused head, a 408, a 503 when the service is not ready, a 500
    /// when `call` panics), with `-` for what a malformed head did not give.
    /// Off by default (it formats a line per request).
    pub fn access_log(mut self, on: bool) -> Builder {
        self.config.access_log = on;
        self
    }

    /// Traces requests with OpenTelemetry (the `otel` cargo feature): a
    /// span per request, sampled and exported as `tracing` says (see
    /// [`otel`](crate::otel)). Default: off; off, a request pays one branch.
    /// Call [`Tracing::shutdown`](crate::otel::Tracing::shutdown) after
    /// `serve` returns to send the last spans.
    #[cfg(feature = "otel")]
    pub fn tracing(mut self, tracing: crate::otel::Tracing) -> Builder {
        self.config.tracing = Some(tracing);
        self
    }

    /// Whether each request carries its connection's addresses as a
    /// [`ConnInfo`](crate::ConnInfo) extension, and (with the `axum` cargo
    /// feature, on by default) as axum's `ConnectInfo<SocketAddr>`, which
    /// `axum::serve` gives only with `into_make_service_with_connect_info`:
    /// this is megaconn's way to ask for it (serving that make-service
    /// turns it on too); with the `tonic` feature, also as tonic's
    /// `TcpConnectInfo`, so that `tonic::Request::remote_addr()` answers.
    /// Default: off, as under
    /// `axum::serve`, because it costs every request its extension map (4
    /// small allocations, ~1,000 instructions, ~10% of megaconn's user-space
    /// work per request: `bench/CPU-PER-REQUEST.md`) and a connection woken
    /// from the parking lot two syscalls to read its addresses back.
    pub fn connect_info(mut self, on: bool) -> Builder {
        self.config.connect_info = on;
        self
    }

    /// Whether connections are kept open between requests. Default: true.
    pub fn keep_alive(mut self, on: bool) -> Builder {
        self.config.keep_alive = on;
        self
    }

    /// A `Server` header added to responses that have none. Default: none.
    pub fn server_header(mut self, value: Option<&str>) -> Builder {
        self.config.server_header = value.and_then(|v| HeaderValue::from_str(v).ok());
        self
    }

    /// For tests only, not a setting: makes `step` of worker `worker`'s
    /// start fail, as no test can make a real limit fail one worker of one
    /// server (the open-file and epoll watch limits are the user's or the
    /// system's, and hit the runtime first). The command line sets it from
    /// its own test knob, in debug builds only (`crates/cli/upgrade.rs`).
    #[doc(hidden)]
    pub fn fail_worker_start_for_test(
        mut self,
        step: crate::WorkerStartFailure,
        worker: usize,
    ) -> Builder {
        self.config.fail_worker_start = Some((step, worker));
        self
    }

    /// Listen backlog. Default: 4096 (the kernel caps it at `net.core.somaxconn`).
    pub fn backlog(mut self, n: u32) -> Builder {
        self.config.backlog = n;
        self
    }

    /// `TCP_NODELAY` on accepted sockets. Default: on (responses leave at once).
    pub fn nodelay(mut self, on: bool) -> Builder {
        self.config.nodelay = on;
        self
    }

    /// `TCP_DEFER_ACCEPT` (Linux): accept only once the client sent data, waiting
    /// at most this long. Default: off; `None` or zero turns it off.
    pub fn defer_accept(mut self, wait: Option<Duration>) -> Builder {
        self.config.defer_accept = zero_is_off(wait);
        self
    }

    /// TCP keepalive probes. Default: off (HTTP idle timeouts cover most cases).
    ///
    /// On a message connection without a heartbeat (framed, WebSocket or
    /// SSE, `axum_ws` too) the socket also has `TCP_USER_TIMEOUT` (twice
    /// its write bound and a second, 121 s by default), and Linux then ends
    /// an idle connection whose probes go unanswered only once that much
    /// time passed since the peer's last acknowledgement, whatever the
    /// probe count says: a dead idle peer is found in about the larger of
    /// the two. To find one sooner, give it a heartbeat (or a shorter
    /// `write_stall_timeout`).
    pub fn tcp_keepalive(mut self, keepalive: Option<KeepaliveConfig>) -> Builder {
        self.config.tcp_keepalive = keepalive;
        self
    }

    /// `SO_RCVBUF` in bytes. Default: the kernel's (autotuned).
    pub fn recv_buffer_size(mut self, n: Option<usize>) -> Builder {
        self.config.recv_buffer_size = n;
        self
    }

    /// `SO_SNDBUF` in bytes. Default: the kernel's (autotuned). Message
    /// connections get [`message_send_buffer_size`](Builder::message_send_buffer_size)
    /// instead, unless that is `None`.
    pub fn send_buffer_size(mut self, n: Option<usize>) -> Builder {
        self.config.send_buffer_size = n;
        self
    }

    /// `SO_SNDBUF` in bytes of each message connection: a native WebSocket
    /// ([`WebSocketRoute`](crate::WebSocketRoute)) or a
    /// [`megaconn::axum_ws`](crate::axum_ws) socket from its upgrade, a
    /// framed TCP one from its accept, and an HTTP/1.1 server-sent-event
    /// stream (a response whose head says `Content-Type: text/event-stream`,
    /// an axum `Sse`) from its head; other responses keep the kernel's
    /// autotuning, which a download needs (one `setsockopt`; Linux caps the value
    /// at `net.core.wmem_max`, then doubles it: on a stock kernel, 212,992,
    /// the default 256 KiB gives 416 KiB, and more needs that sysctl raised). It bounds what the
    /// kernel holds for a peer that stops reading: a push to a parked
    /// connection whose buffer is full wakes it to write the rest as an
    /// awake connection writes, and an awake one's writes wait while its
    /// [`outbound_queue`](Builder::outbound_queue) fills (either is closed
    /// as [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer)
    /// when that queue overflows; a woken one also when its peer takes
    /// none of that rest within its write bound,
    /// [`write_stall_timeout`](Builder::write_stall_timeout) or the
    /// protocol's heartbeat timeout). A push larger than this buffer goes
    /// whole to a client that reads. With the kernel's
    /// autotuning a socket took up to 4 MiB (`tcp_wmem`'s maximum) before
    /// that: a thousand subscribers that read nothing held 2.3 GB of kernel
    /// memory for 6 MB published. A peer that is only bursty, or one far
    /// away that must stream fast (one connection moves at most about
    /// twice this per round trip), needs more. `None` leaves the socket
    /// as accepted: [`send_buffer_size`](Builder::send_buffer_size), else
    /// the kernel's autotuning. Default
    /// [`DEFAULT_MESSAGE_SEND_BUFFER`](crate::DEFAULT_MESSAGE_SEND_BUFFER)
    /// (256 KiB).
    pub fn message_send_buffer_size(mut self, n: Option<usize>) -> Builder {
        self.config.message_send_buffer_size = n;
        self
    }

    /// Allow sharing the port with other processes that also use `SO_REUSEPORT`
    /// (megaconn's own worker processes). Default: false, so a port already in
    /// use is an error rather than a silent share.
    ///
    /// On, [`listen`](Builder::listen) binds the sockets it makes without
    /// listening on them, and [`Server::start`] listens as its last step: a
    /// socket joins its port's `SO_REUSEPORT` group when it listens, and the
    /// kernel then gives it its share of new connections, which a process
    /// that failed to start would have reset while the other processes
    /// could have served them. Until then nothing connects to them, and
    /// their copies from [`ServerHandle::listening_sockets`] do not listen
    /// either. (Sockets given with [`listener`](Builder::listener) or taken
    /// over with [`adopt_listeners`](Builder::adopt_listeners) listen
    /// already, and are left so.)
    pub fn reuse_port_shared(mut self, on: bool) -> Builder {
        self.config.reuse_port_shared = on;
        self
    }

    /// Checks the settings as [`listen`](Builder::listen) does first,
    /// binding nothing: the errors `listen` would return for a bad knob
    /// (`Error::Config`), for a configuration check (the CLI's `serve
    /// --check`) to report without touching a socket.
    pub fn validate(&self) -> Result<(), Error> {
        let c = &self.config;
        if c.workers == 0 {
            return Err(Error::Config("workers must be at least 1".into()));
        }
        if c.max_headers == 0 || c.max_headers > MAX_HEADERS_CEILING {
            return Err(Error::Config(format!(
                "max_headers must be between 1 and {MAX_HEADERS_CEILING}"
            )));
        }
        if c.max_header_bytes < 64 {
            return Err(Error::Config("max_header_bytes must be at least 64".into()));
        }
        if !c.tls_listeners.is_empty() && c.tls.is_none() {
            return Err(Error::Config(
                "a TLS listen address needs a certificate: call Builder::tls".into(),
            ));
        }
        if c.max_connections == Some(0) {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        if let Some(own) = c
            .proxy_protocol_listeners
            .iter()
            .find(|o| o.listener.is_none())
        {
            return Err(Error::Config(format!(
                "proxy_protocol_on({}): no listener was added at that address \
                 (add it first: listen_on, listen_tls_on, listen_framed_on)",
                own.addr
            )));
        }
        if c.http2.max_grown_stream_window > config::MAX_WINDOW {
            return Err(Error::Config(format!(
                "http2_max_grown_stream_window must be at most {} bytes (2^31 - 1, HTTP/2's \
                 largest window), or 0 for no growth; got {}",
                config::MAX_WINDOW,
                c.http2.max_grown_stream_window
            )));
        }
        if c.http2.max_send_buffer == 0 || c.http2.max_send_buffer > config::MAX_WINDOW {
            return Err(Error::Config(format!(
                "http2_max_send_buffer must be between 1 and {} bytes (2^31 - 1, HTTP/2's \
                 largest window); got {}",
                config::MAX_WINDOW,
                c.http2.max_send_buffer
            )));
        }
        crate::server::message::check_topic_metrics(c)?;
        if let Some(name) = &self.name {
            crate::server::name::check(name)?;
        }
        Ok(())
    }

    /// Validates the configuration and binds every listener (one per worker per
    /// address), listening on it at once: a connection made before the server
    /// starts waits in the queue. Errors here, not later: a port in use, a bad
    /// address, a bad knob. With [`reuse_port_shared`](Builder::reuse_port_shared)
    /// the sockets are bound only, and listen at the end of
    /// [`Server::start`].
    pub fn listen(self) -> Result<Server, Error> {
        self.validate()?;
        let Builder { mut config, name } = self;
        let crate::conn::socket::Bound {
            per_worker: listeners,
            local_addrs,
            sockets,
        } = crate::conn::socket::bind_all(&config)?;
        for unused in config
            .adopted
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .filter(|a| !local_addrs.contains(a))
        {
            tracing::warn!(
                addr = %unused,
                "a listening socket taken over is not among this server's addresses; closing it (connections queued on it are reset): listen on the same addresses as the server you replace"
            );
        }
        // The server's own duplicates only: the builder keeps no socket open.
        config.adopted.clear();
        // Its own grown windows' count, not one shared with the builder's
        // other servers.
        config.http2_grown_windows = Default::default();
        // And its own per-topic counts (`Builder::topic_metrics`).
        let topic_metrics = crate::server::message::own_topic_metrics(&mut config);
        config.addrs.clone_from(&local_addrs);
        let max_connections = match config.max_connections {
            Some(n) => config::checked_max_connections(n),
            None => config::default_max_connections(),
        };
        let registries: Arc<[Arc<crate::observe::registry::Registry>]> = if config.track_connections
        {
            (0..config.workers).map(|_| Arc::default()).collect()
        } else {
            Arc::new([])
        };
        let workers: Arc<[Arc<WorkerStats>]> = (0..config.workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        let (shutdown_tx, _) = watch::channel(false);
        let wakes = config
            .stall_threshold
            .map(|_| Arc::new(watch::channel(()).0));
        let tracing = config.tracing.clone();
        let tls = config.tls.clone();
        let (adopt_tx, adopt): (Vec<_>, Vec<_>) = (0..config.workers)
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let drain_rate = config.shutdown_drain_rate;
        Ok(Server {
            config: Arc::new(config),
            listeners,
            local_addrs,
            max_connections,
            adopt,
            handle: ServerHandle(Arc::new(HandleShared {
                tracing,
                tls,
                registries,
                workers,
                shutdown_tx,
                sockets: std::sync::Mutex::new(sockets),
                hand_over: HandOverSlot::default(),
                adopt: adopt_tx.into(),
                wakes,
                drain_rate,
                drains: worker::Drains::default(),
                topic_metrics,
                name,
            })),
        })
    }

    /// Binds and serves until `handle.shutdown()`; see [`Server::serve`].
    pub async fn serve<A, M>(self, service: A) -> Result<ShutdownSummary, Error>
    where
        A: IntoHttpService<M>,
    {
        self.listen()?.serve(service).await
    }

    /// Serves HTTP/1.1 on one already-connected stream, on the current task, with
    /// this builder's settings (addresses, workers and limits on connections do
    /// not apply). For custom transports, and for tests on in-memory streams or
    /// with paused time. Requests carry no peer address here (a transport
    /// has none megaconn knows), so a service that needs one (axum's
    /// `into_make_service_with_connect_info`, turned into an
    /// [`HttpService`] by hand through
    /// [`IntoHttpService`](crate::IntoHttpService)) answers every request
    /// 500: give it to [`Builder::serve`] instead.
    pub async fn serve_connection<T, S>(&self, io: T, service: S)
    where
        T: Transport + Send + 'static,
        S: HttpService,
    {
        let ctx = Rc::new(WorkerContext::new(
            0,
            Arc::new(self.config.clone()),
            Arc::new(WorkerStats::default()),
            None,
        ));
        crate::server::dispatch::serve_foreign(io, service, ctx).await;
    }
}

/// HTTP/2 knobs. A connection speaks HTTP/2 when TLS negotiates `h2` (see
/// [`TlsConfig`](crate::TlsConfig)) or, in cleartext, when the client starts
/// with the HTTP/2 preface (prior knowledge). `idle_timeout` applies to HTTP/2
/// too: a connection with no open stream for that long gets `GOAWAY` and is
/// closed; `read_header_timeout` bounds the HTTP/2 handshake.
impl Builder {
    /// Whether cleartext connections that start with the HTTP/2 preface are
    /// served as HTTP/2 (h2c with prior knowledge, as `curl
    /// --http2-prior-knowledge` and gRPC clients do). Default: true. Off, they
    /// get `505` like any other unsupported version, as does the preface
    /// over TLS, where only ALPN's `h2` chooses HTTP/2 (RFC 9113 §3.3).
    pub fn http2_prior_knowledge(mut self, on: bool) -> Builder {
        self.config.http2.prior_knowledge = on;
        self
    }

    /// Most streams a client may have open at once on one connection.
    /// Default: 128 ([`DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS`](crate::DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS)).
    ///
    /// The `h2` crate enforces it: a stream past it is reset with
    /// `RST_STREAM(REFUSED_STREAM)` (RFC 9113 §5.1.2; the client may retry
    /// it) before any service sees it. Each is counted in
    /// `megaconn_limit_hits_total{limit="http2_max_concurrent_streams"}`
    /// (not as a protocol error) and logged at INFO, naming the peer, at
    /// most once per 5 s per worker. Clients that honour the setting
    /// (browsers, curl, gRPC) queue their requests instead.
    pub fn http2_max_concurrent_streams(mut self, n: u32) -> Builder {
        self.config.http2.max_concurrent_streams = n;
        self
    }

    /// Most streams of one connection whose response may wait for the
    /// client's flow-control window before the first byte of its body.
    /// Default: 32 ([`DEFAULT_HTTP2_MAX_STALLED_STREAMS`](crate::DEFAULT_HTTP2_MAX_STALLED_STREAMS));
    /// `None` or 0 turns it off.
    ///
    /// A client may keep its windows shut (`SETTINGS_INITIAL_WINDOW_SIZE` 0,
    /// no `WINDOW_UPDATE`, CVE-2019-9517's "internal data buffering"): each
    /// stream whose response it will not take holds its exchange until
    /// [`write_stall_timeout`](Builder::write_stall_timeout) resets it.
    /// Past this many, the connection takes no new stream until one of them
    /// gets room or ends: its next requests wait unprocessed in h2's queue
    /// (bounded by [`http2_max_concurrent_streams`](Builder::http2_max_concurrent_streams)),
    /// nothing is reset, and the connection is still served (its window
    /// updates, pings, resets). Counted once each time a connection
    /// reaches it, in `megaconn_limit_hits_total{limit="http2_max_stalled_streams"}`,
    /// and logged at INFO (at most one line per 5 s per worker). A stream
    /// that sent part of its body does not count (a download in progress).
    pub fn http2_max_stalled_streams(mut self, n: Option<u32>) -> Builder {
        self.config.http2.max_stalled_streams = n.filter(|&n| n > 0);
        self
    }

    /// Request body an HTTP/2 client may send on one connection ahead of
    /// its handlers reading it, all its streams together, in bytes.
    /// Default: 128 KiB ([`DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES`](crate::DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES)).
    /// At least 65,535 (the connection window every HTTP/2 connection
    /// starts with, which no SETTINGS lowers), at most 2^31 - 1; there is
    /// no "off" (raise it to the windows'
    /// sizes for the windows alone).
    ///
    /// Enforced by flow control: the connection window a client is given
    /// is capped at it, and each stream's window at half of it (so one
    /// body left unread leaves the other half to the connection's other
    /// uploads)
    /// ([`http2_initial_stream_window_size`](Builder::http2_initial_stream_window_size),
    /// [`http2_initial_connection_window_size`](Builder::http2_initial_connection_window_size)),
    /// and room comes back as handlers read. A well-behaved client waits;
    /// nothing is reset. What a connection can make the server hold for
    /// bodies nobody reads is this, not the 1 MiB connection window
    /// (~1.1 MiB a connection before, `bench/ATTACK-MEMORY.md`). Counted
    /// once a connection, the first time its unread DATA reaches it, in
    /// `megaconn_limit_hits_total{limit="http2_max_unread_body_bytes"}`,
    /// and logged at INFO (at most one line per 5 s per worker). The price:
    /// an upload to a reading handler moves at most half this much per
    /// round trip (~6.5 MB/s over a 10 ms path at the default), the
    /// connection's uploads together this much.
    pub fn http2_max_unread_body_bytes(mut self, n: u32) -> Builder {
        self.config.http2.max_unread_body = n.clamp(65_535, config::MAX_WINDOW);
        self
    }

    /// The largest receive window, in bytes, that an HTTP/2 request body's
    /// stream grows to while its handler keeps up with the upload.
    /// Default: 4 MiB ([`DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW`](crate::DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW));
    /// 0 turns growth off (every stream keeps the window it starts with,
    /// half of [`http2_max_unread_body_bytes`](Builder::http2_max_unread_body_bytes),
    /// as before session 51), as does a value at or below that window. At
    /// most 2^31 - 1 (HTTP/2's largest window): more is refused by
    /// [`listen`](Builder::listen) and [`validate`](Builder::validate)
    /// (`Error::Config`).
    ///
    /// An upload moves at most one window per round trip: 64 KiB is
    /// ~1.3 MB/s over a 50 ms path, 4 MiB ~80 MB/s (`bench/H2-UPLOAD.md`).
    /// When the handler has read a whole window since the window last
    /// grew and waits for more, the window doubles, up to this, and the
    /// connection's window grows by as much. The memory it bounds: a
    /// window a handler keeps up with holds nothing unread, but a handler
    /// that then stops reading leaves up to this much of its stream's
    /// body waiting in the server, beyond `http2_max_unread_body_bytes`;
    /// all such streams together are bounded by
    /// [`http2_grown_windows_budget`](Builder::http2_grown_windows_budget).
    pub fn http2_max_grown_stream_window(mut self, n: u32) -> Builder {
        self.config.http2.max_grown_stream_window = n;
        self
    }

    /// What all of the server's HTTP/2 streams' receive windows may have
    /// grown by ([`http2_max_grown_stream_window`](Builder::http2_max_grown_stream_window)),
    /// together, in bytes. Default: 64 MiB ([`DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET`](crate::DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET));
    /// 0 turns growth off. Per server (per worker process with `megaconn
    /// serve --processes`); the connections one builder serves through
    /// [`serve_connection`](Builder::serve_connection) share one of their own.
    ///
    /// The memory it bounds: what uploads whose handlers kept up, then
    /// stopped reading, can make the server hold beyond each connection's
    /// [`http2_max_unread_body_bytes`](Builder::http2_max_unread_body_bytes),
    /// however many connections there are (400 connections at 4 MiB each
    /// would be 1.6 GB). A stream's growth comes back when its body ends
    /// or is dropped. Past it a window does not grow (its upload goes on
    /// at the pace of the window it has; nothing is refused or reset):
    /// each growth refused is counted in
    /// `megaconn_limit_hits_total{limit="http2_grown_windows_budget"}` and
    /// logged at INFO (at most one line per 5 s per worker, naming this
    /// setting); `megaconn_http2_grown_windows_bytes` is what is in use.
    pub fn http2_grown_windows_budget(mut self, n: u64) -> Builder {
        self.config.http2.grown_windows_budget = n;
        self
    }

    /// Per-stream receive window in bytes: request body a client may send
    /// before the handler reads it. Default: 256 KiB. At most 2^31 - 1, and
    /// capped at half of [`http2_max_unread_body_bytes`](Builder::http2_max_unread_body_bytes)
    /// (64 KiB by default).
    pub fn http2_initial_stream_window_size(mut self, n: u32) -> Builder {
        self.config.http2.stream_window = n.min(config::MAX_WINDOW);
        self
    }

    /// Connection receive window in bytes: unread request body over all of a
    /// connection's streams. Default: 1 MiB. At most 2^31 - 1, and capped by
    /// [`http2_max_unread_body_bytes`](Builder::http2_max_unread_body_bytes)
    /// (128 KiB by default: raise both for large uploads over long paths).
    pub fn http2_initial_connection_window_size(mut self, n: u32) -> Builder {
        self.config.http2.connection_window = n.min(config::MAX_WINDOW);
        self
    }

    /// Largest frame payload accepted, in bytes; clamped to the protocol's
    /// range 16 KiB ..= 16 MiB - 1. Default: 16 KiB.
    pub fn http2_max_frame_size(mut self, n: u32) -> Builder {
        self.config.http2.max_frame_size = n.clamp(16_384, 16_777_215);
        self
    }

    /// Largest decoded request header list, in bytes (RFC 9113's accounting:
    /// names, values and 32 bytes per field). Default: 64 KiB.
    ///
    /// The `h2` crate enforces it: a request over it is answered `431` by h2
    /// itself before any service sees it. It is counted in
    /// `megaconn_limit_hits_total{limit="http2_max_header_list_size"}` and
    /// `megaconn_protocol_errors_total`, and logged as a refused request
    /// head (at INFO, naming the peer, at most once per 5 s per worker), but
    /// it is no request: no `megaconn_requests_total`, no access line. One
    /// far over it (four times, as it decodes) ends the connection with
    /// `GOAWAY(ENHANCE_YOUR_CALM)`, counted as `h2_enhance_your_calm`.
    pub fn http2_max_header_list_size(mut self, n: u32) -> Builder {
        self.config.http2.max_header_list_size = n;
        self
    }

    /// Sends a PING this often and closes the connection when the answer does
    /// not come within [`http2_keep_alive_timeout`](Builder::http2_keep_alive_timeout)
    /// (close reason [`CloseReason::HeartbeatTimeout`](crate::CloseReason::HeartbeatTimeout)).
    /// Finds dead peers behind NATs and load balancers. Default: off; `None`
    /// or zero turns it off.
    pub fn http2_keep_alive_interval(mut self, every: Option<Duration>) -> Builder {
        self.config.http2.keep_alive_interval = zero_is_off(every);
        self
    }

    /// How long to wait for the answer to a keep-alive PING. Default: 20 s.
    pub fn http2_keep_alive_timeout(mut self, t: Duration) -> Builder {
        self.config.http2.keep_alive_timeout = t;
        self
    }

    /// Whether the server sends `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC
    /// 8441), letting clients open a WebSocket on an HTTP/2 stream with an
    /// extended `CONNECT` (`:protocol websocket`) instead of a connection
    /// of its own. [`megaconn::axum_ws`](crate::axum_ws) accepts those; a
    /// handler of its own gets an [`OnUpgrade`](crate::OnUpgrade) on every
    /// HTTP/2 `CONNECT` and the stream once it answers 2xx. The native
    /// [`WebSocketRoute`](crate::WebSocketRoute) does not serve them (it
    /// answers `501`, its WebSockets park as sockets of their own): turn
    /// this off when browsers reach such a route over TLS, since a browser
    /// that holds an HTTP/2 connection to the origin opens its WebSockets
    /// on it once this is advertised. Default: true.
    pub fn http2_enable_connect_protocol(mut self, on: bool) -> Builder {
        self.config.http2.enable_connect_protocol = on;
        self
    }

    /// Response bytes, at most, that an HTTP/2 stream holds queued for the
    /// client before its body is polled for more (h2's send buffer), per
    /// stream. Default: 64 KiB ([`DEFAULT_HTTP2_MAX_SEND_BUFFER`](crate::DEFAULT_HTTP2_MAX_SEND_BUFFER)).
    /// At least 1 and at most 2^31 - 1 (HTTP/2's largest window: a stream
    /// is never granted more than its window, so more would never be
    /// used); outside that [`listen`](Builder::listen) and
    /// [`validate`](Builder::validate) refuse it (`Error::Config`).
    ///
    /// A stream is granted room by the client's windows (a browser's are
    /// 6 MiB) until it has this much queued; a slow client's download
    /// holds this much all the time, beside the body's frame in hand
    /// (`ServeDir`'s chunk): at 256 KiB a slow h2c download of 64 KiB
    /// chunks took 413 KB of RSS, at 64 KiB 220 KB. Smaller than a frame
    /// of the body, a stream waits for room in the middle of each frame
    /// (a fast download at 32 KiB with 64 KiB chunks: 598 MB/s against
    /// 746; `bench/FILES.md`, session 58). Larger may help a fast download
    /// over a long round trip, where the socket's send buffer, which the
    /// connection fills from here between two polls of the stream, does
    /// not cover it (not measured).
    pub fn http2_max_send_buffer(mut self, bytes: u32) -> Builder {
        self.config.http2.max_send_buffer = bytes;
        self
    }
}

impl Builder {
    /// Serves every listener over TLS with `tls` (HTTP/2 when the client
    /// negotiates `h2` by ALPN, HTTP/1.1 otherwise) — or, when any address was
    /// added with [`listen_tls_on`](Builder::listen_tls_on), only those. Keep a
    /// clone of `tls` to [`reload`](TlsConfig::reload) certificates while the
    /// server runs. Default: none (cleartext; HTTP/2 only with prior knowledge).
    pub fn tls(mut self, tls: TlsConfig) -> Builder {
        self.config.tls = Some(tls);
        self
    }

    /// Serves an already-bound, listening socket — one handed over by systemd
    /// socket activation (`LISTEN_FDS`), say — next to any bound addresses.
    /// Every worker accepts from this one socket (the kernel balances only
    /// the `SO_REUSEPORT` listeners megaconn binds itself). Repeatable.
    pub fn listener(self, listener: std::net::TcpListener) -> Result<Builder, Error> {
        self.inherit(listener, false)
    }

    /// Like [`listener`](Builder::listener), served over TLS with the
    /// configuration given to [`tls`](Builder::tls).
    pub fn tls_listener(self, listener: std::net::TcpListener) -> Result<Builder, Error> {
        self.inherit(listener, true)
    }

    fn inherit(mut self, listener: std::net::TcpListener, tls: bool) -> Result<Builder, Error> {
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let position = self.config.addrs.len();
        if tls {
            self.config.tls_listeners.push(position);
        }
        self.config.addrs.push(addr);
        self.config
            .inherited
            .push((position, std::sync::Arc::new(listener)));
        Ok(self)
    }

    /// Listening sockets taken over from the running server this one
    /// replaces (a zero-downtime upgrade; see
    /// [`ServerHandle::listening_sockets`]): at [`listen`](Builder::listen),
    /// an address given to this builder that one or more of them are bound
    /// to is served by them (the old server's `SO_REUSEPORT` group, spread
    /// over this server's workers) instead of new sockets. Sockets bound to
    /// no address of this builder are closed with a warning.
    pub fn adopt_listeners(mut self, listeners: Vec<TcpListener>) -> Builder {
        self.config
            .adopted
            .extend(listeners.into_iter().map(Arc::new));
        self
    }

    /// Adds a listen address served over TLS, with the configuration given to
    /// [`tls`](Builder::tls), next to cleartext ones: once any address is
    /// added this way, the addresses from [`listen_on`](Builder::listen_on)
    /// stay cleartext. Repeatable. Without `tls`, [`listen`](Builder::listen)
    /// fails.
    pub fn listen_tls_on(mut self, addr: SocketAddr) -> Builder {
        self.config.tls_listeners.push(self.config.addrs.len());
        self.config.addrs.push(addr);
        self
    }
}

#[cfg(test)]
mod tests {
    //! Zero durations are off in every setter family (`conn/config.rs`
    //! `zero_is_off`): a zero timeout used to fire at once.

    use super::*;
    use crate::proto::framed::FramedSettings;
    use crate::Framing;

    const ZERO: Option<Duration> = Some(Duration::ZERO);

    #[test]
    fn the_builders_zero_durations_are_off() {
        let b = Server::builder()
            .read_header_timeout(ZERO)
            .read_timeout(ZERO)
            .write_timeout(ZERO)
            .idle_timeout(ZERO)
            .park_idle_after(ZERO)
            .max_connection_age(ZERO)
            .stall_threshold(ZERO)
            .defer_accept(ZERO)
            .http2_keep_alive_interval(ZERO);
        let c = &b.config;
        let stored = [
            c.read_header_timeout,
            c.read_timeout,
            c.write_timeout,
            c.idle_timeout,
            c.park_idle_after,
            c.max_connection_age,
            c.stall_threshold,
            c.defer_accept,
            c.http2.keep_alive_interval,
        ];
        assert_eq!(stored, [None; 9]);
        // A non-zero one is kept as given.
        let second = Some(Duration::from_secs(1));
        let b = Server::builder().read_header_timeout(second);
        assert_eq!(b.config.read_header_timeout, second);
    }

    #[test]
    fn framed_websocket_and_tls_zero_durations_are_off() {
        let b = Server::builder()
            .listen_framed_on(SocketAddr::from(([127, 0, 0, 1], 0)), Framing::lines())
            .heartbeat_timeout(ZERO)
            .send_heartbeat(ZERO, "ping");
        let framed = FramedSettings::of(&b.config).unwrap();
        assert_eq!(framed.heartbeat_timeout, None);
        assert!(framed.send_heartbeat.is_none());

        struct Echo;
        impl crate::WebSocketHandler for Echo {
            type State = ();

            async fn on_message(
                &self,
                _: &mut (),
                m: crate::WsMessage,
                _: &crate::WsSession,
            ) -> Option<crate::WsMessage> {
                Some(m)
            }
        }
        let route = crate::WebSocketRoute::new(Echo)
            .ping_interval(ZERO)
            .heartbeat_timeout(ZERO);
        let dbg = format!("{route:?}");
        assert!(dbg.contains("ping_interval: None"), "{dbg}");
        assert!(dbg.contains("heartbeat_timeout: None"), "{dbg}");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = TlsConfig::from_pem(
            cert.cert.pem().as_bytes(),
            cert.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap()
        .handshake_timeout(ZERO);
        let dbg = format!("{tls:?}");
        assert!(dbg.contains("handshake_timeout: None"), "{dbg}");
    }
}
