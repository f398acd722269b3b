//! One `hold` thread and its held connections.
//!
//! A thread is a current-thread tokio runtime; a ramp task spawns this thread's
//! connections at their scheduled start times, each as a small local task that
//! owns only its socket, one timer and a few counters. Reads go through one
//! buffer shared by all connections of the thread (`readable()` then
//! `try_read`, so no task keeps a buffer across an await); a connection only
//! allocates if a reply arrives split across reads.
//!
//! Per connection: connect (from its source address), for https:// and
//! wss:// a TLS handshake (`hold_tls.rs`: the session is all it keeps), for HTTP one `GET` at
//! open, then a heartbeat every `interval` (first one at a random offset in
//! `[0, interval)`, then ±10% jitter), watching for the server closing the
//! connection in between. Cleartext connections (HTTP, `ws://`, `tcp://`) do
//! the heartbeats in the thread's parking lot (`hold_lot.rs`) instead: their
//! task only opens them and waits, unwoken, to hear how they ended. What the
//! bytes read mean (replies, pushes, pings) is `hold_wire.rs`, the same on
//! both paths.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::histogram::{merge, new_histogram, record_ns};
use crate::hold_lot::Lot;
use crate::hold_stamp::reply_time;
use crate::hold_wire::{Verdict, Wire};
use crate::sys;
use crate::tcp_frames::{sent_at_ns, unix_now_ns, TcpFraming};

/// What the connections of one process share (read-only).
#[derive(Debug, Clone)]
pub(crate) struct HoldShared {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Source addresses (connection `j` uses `sources[global(j) % len]`); empty:
    /// the kernel's choice.
    pub sources: Vec<IpAddr>,
    /// This process's connection `j` is connection `first + j * stride` of the
    /// whole run, so sources are used evenly across processes.
    pub first: u64,
    /// See `first`: the number of processes.
    pub stride: u64,
    /// The bytes of one heartbeat (an HTTP request, or the `--send` line).
    pub heartbeat: Vec<u8>,
    /// HTTP (replies parsed as responses) or line protocol.
    pub http: bool,
    /// HTTP: the method is HEAD, so replies have no body.
    pub head_request: bool,
    /// ws:// and wss://: the upgrade and what answers a heartbeat.
    pub ws: Option<crate::ws::WsHold>,
    /// Line protocol: the reply line must contain this.
    pub expect: Option<Vec<u8>>,
    /// tcp://: how frames are delimited.
    pub framing: TcpFraming,
    /// tcp:// and ws://: count pushed frames (`t=<ns>` payloads) and time
    /// their delivery.
    pub receive: bool,
    /// Heartbeat interval.
    pub interval: Duration,
    /// The beat grid's tick ([`beat_tick`] of `interval`).
    pub tick: Duration,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// Reconnect after a drop or failed connect.
    pub reconnect: bool,
    /// The lot wakes for each reply (`--wake-per-reply`) instead of reading
    /// replies on the grid's tick, timed by their kernel receive stamps.
    pub wake_per_reply: bool,
    /// When the ramp starts.
    pub start: Instant,
    /// New connections per second (this process).
    pub ramp: f64,
    /// https://: the client configuration and the server's name.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// What a read of a held connection gave.
pub(crate) enum Read<'b> {
    /// Application bytes.
    Data(&'b [u8]),
    /// Nothing for the application (would block, or TLS housekeeping).
    Nothing,
    /// The server closed.
    Eof,
}

/// How the socket took a write of a held connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// At once, whole.
    Whole,
    /// Not whole at once (its send buffer filled: the server was not
    /// reading, or the bytes were many): the rest went out as the socket
    /// became writable. A heartbeat sent so is counted, `beats_held_back`.
    HeldBack,
}

/// A held connection's byte stream: cleartext, or TLS (`hold_tls.rs`).
pub(crate) trait Held {
    /// Waits until the socket is readable.
    async fn readable(&self) -> std::io::Result<()>;
    /// Reads what arrived without waiting; application bytes land in `buf`.
    fn try_read_app<'b>(&mut self, buf: &'b mut [u8]) -> std::io::Result<Read<'b>>;
    /// Sends application bytes (all of them, or fails), saying whether
    /// the socket took them whole at once.
    async fn write_app(&mut self, data: &[u8]) -> std::io::Result<Sent>;
    /// Forgets the socket's readiness (everything that arrived was read).
    fn forget_readiness(&self);
}

impl Held for TcpStream {
    async fn readable(&self) -> std::io::Result<()> {
        TcpStream::readable(self).await
    }

    fn try_read_app<'b>(&mut self, buf: &'b mut [u8]) -> std::io::Result<Read<'b>> {
        match self.try_read(buf) {
            Ok(0) => Ok(Read::Eof),
            Ok(n) => Ok(Read::Data(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Read::Nothing),
            Err(e) => Err(e),
        }
    }

    async fn write_app(&mut self, data: &[u8]) -> std::io::Result<Sent> {
        write_whole(self, data).await
    }

    fn forget_readiness(&self) {
        // The reply was all the server had to say: forget the socket's
        // readiness instead of finding out with a read that would block —
        // one syscall less per heartbeat, which at a million connections is
        // a good part of the client's CPU. (A hang-up that raced the reply
        // is then seen at the next heartbeat.)
        let _ = self.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
}

/// Writes as much of `bytes` as the socket takes now, through `write` (one
/// `write(2)` on the socket: the lot's std sockets, a task's tokio ones):
/// how much that was. Stops at the first `WouldBlock` (the send buffer is
/// full); a write that takes nothing is an error (`WriteZero`).
pub(crate) fn write_now(
    bytes: &[u8],
    mut write: impl FnMut(&[u8]) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match write(&bytes[sent..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Writes all of `bytes` to a task's socket: what it takes at once, then
/// the rest as it becomes writable (`write_all`). The one `write(2)` a
/// small beat costs is the one `write_all` alone made; telling whether it
/// went whole costs a comparison.
pub(crate) async fn write_whole(tcp: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Sent> {
    let sent = write_now(bytes, |b| tcp.try_write(b))?;
    if sent == bytes.len() {
        return Ok(Sent::Whole);
    }
    tcp.write_all(&bytes[sent..]).await?;
    Ok(Sent::HeldBack)
}

/// Slots of [`HoldCounters::close_codes`]: 1000 to 1015, then one for
/// every other code (an application's 3000-4999).
pub(crate) const CLOSE_CODE_SLOTS: usize = 17;

/// The slot of close code `code` in [`HoldCounters::close_codes`].
pub(crate) fn close_code_slot(code: u16) -> usize {
    match code {
        1000..=1015 => usize::from(code - 1000),
        _ => CLOSE_CODE_SLOTS - 1,
    }
}

/// [`HoldCounters::close_codes`] as the report has them: code to count,
/// the codes without a slot of their own under 0, slots at 0 left out.
pub(crate) fn close_codes_map(
    codes: &[u64; CLOSE_CODE_SLOTS],
) -> std::collections::BTreeMap<u16, u64> {
    (0u16..)
        .zip(codes)
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| match usize::from(i) {
            i if i < CLOSE_CODE_SLOTS - 1 => (1000 + i as u16, *n),
            _ => (0, *n),
        })
        .collect()
}

/// The counters of one process, updated by all its threads, read by progress.
#[derive(Debug, Default)]
pub(crate) struct HoldCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Most connections open at once.
    pub peak: AtomicU64,
    /// Connections whose first attempt has finished: connect failed, or
    /// connected and (over HTTP) its opening request answered or failed
    /// (ramp progress: the ramp ends when every connection is this far).
    pub attempted: AtomicU64,
    /// Connections the server closed (EOF) or that ended so, without a
    /// WebSocket close frame.
    pub drops: AtomicU64,
    /// WebSocket connections the server closed with a close frame (a
    /// graceful drain's 1001), counted apart from drops.
    pub closed_by_server: AtomicU64,
    /// Those by status code: [`close_code_slot`]'s slots.
    pub close_codes: [AtomicU64; CLOSE_CODE_SLOTS],
    /// Connections reset.
    pub resets: AtomicU64,
    /// Failed connects.
    pub failed_connects: AtomicU64,
    /// Reconnects made.
    pub reconnects: AtomicU64,
    /// Heartbeats answered as expected.
    pub heartbeats_ok: AtomicU64,
    /// Opening requests (HTTP `GET`, WebSocket upgrade) answered as
    /// expected: kept out of `heartbeats_ok`, which would otherwise count one
    /// extra "heartbeat" per connection (a million at a million).
    pub opens_ok: AtomicU64,
    /// Heartbeats failed (and opening requests that failed: a failure
    /// stays visible in the failure counts the bench tables show),
    /// including those lost when their connection ended while they waited.
    pub heartbeat_errors: AtomicU64,
    /// Heartbeats sent and not yet answered or failed (a gauge): once the
    /// threads have stopped, those the end of the run left waiting.
    pub heartbeats_pending: AtomicU64,
    /// Pushed frames received (`--receive`).
    pub pushes_received: AtomicU64,
    /// Connections handed to a thread's parking lot (each connect counts).
    pub parked: AtomicU64,
    /// Beat ticks on which the wall clock had stepped since the last, so
    /// their replies were timed when read, not by their kernel stamps
    /// (`hold_stamp.rs`).
    pub wall_clock_steps: AtomicU64,
    /// Heartbeats the socket could not take whole (its send buffer was
    /// full: the server was not reading); their rest went out once the
    /// socket was writable (`hold_lot.rs`; TLS: [`write_whole`]).
    pub beats_held_back: AtomicU64,
    /// 0 while this process ramps; then when its ramp ended, in ns after
    /// [`HoldShared::start`] (at least 1). Heartbeats sent from then on are
    /// also timed apart, as the latency "while holding": the ramp's connects
    /// share the CPUs with the heartbeats, the hold's don't.
    pub ramp_over_ns: AtomicU64,
}

/// A point-in-time copy of [`HoldCounters`] (also the child progress message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Connections open now.
    pub open: u64,
    /// Most connections open at once.
    pub peak: u64,
    /// Connections attempted so far.
    pub attempted: u64,
    /// Drops.
    pub drops: u64,
    /// WebSocket close frames from the server.
    #[serde(default)]
    pub closed_by_server: u64,
    /// Those by status code ([`close_code_slot`]).
    #[serde(default)]
    pub close_codes: [u64; CLOSE_CODE_SLOTS],
    /// Resets.
    pub resets: u64,
    /// Failed connects.
    pub failed_connects: u64,
    /// Reconnects.
    pub reconnects: u64,
    /// Heartbeats ok.
    pub heartbeats_ok: u64,
    /// Heartbeats failed.
    pub heartbeat_errors: u64,
    /// Opening requests answered.
    #[serde(default)]
    pub opens_ok: u64,
    /// Heartbeats waiting for their reply.
    #[serde(default)]
    pub heartbeats_pending: u64,
    /// Pushed frames received.
    #[serde(default)]
    pub pushes_received: u64,
    /// Connections parked.
    #[serde(default)]
    pub parked: u64,
    /// Ticks timed when read after a wall-clock step.
    #[serde(default)]
    pub wall_clock_steps: u64,
    /// Heartbeats the socket could not take whole.
    #[serde(default)]
    pub beats_held_back: u64,
}

impl HoldCounters {
    /// Copies the counters.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            open: self.open.load(Relaxed),
            peak: self.peak.load(Relaxed),
            attempted: self.attempted.load(Relaxed),
            drops: self.drops.load(Relaxed),
            closed_by_server: self.closed_by_server.load(Relaxed),
            close_codes: std::array::from_fn(|i| self.close_codes[i].load(Relaxed)),
            resets: self.resets.load(Relaxed),
            failed_connects: self.failed_connects.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            heartbeats_ok: self.heartbeats_ok.load(Relaxed),
            heartbeat_errors: self.heartbeat_errors.load(Relaxed),
            opens_ok: self.opens_ok.load(Relaxed),
            heartbeats_pending: self.heartbeats_pending.load(Relaxed),
            pushes_received: self.pushes_received.load(Relaxed),
            parked: self.parked.load(Relaxed),
            wall_clock_steps: self.wall_clock_steps.load(Relaxed),
            beats_held_back: self.beats_held_back.load(Relaxed),
        }
    }
}

impl Snapshot {
    /// Adds another process's snapshot (peaks add: each process's own peak).
    pub(crate) fn add(&mut self, o: &Snapshot) {
        self.open += o.open;
        self.peak += o.peak;
        self.attempted += o.attempted;
        self.drops += o.drops;
        self.closed_by_server += o.closed_by_server;
        for (mine, theirs) in self.close_codes.iter_mut().zip(o.close_codes) {
            *mine += theirs;
        }
        self.resets += o.resets;
        self.failed_connects += o.failed_connects;
        self.reconnects += o.reconnects;
        self.heartbeats_ok += o.heartbeats_ok;
        self.heartbeat_errors += o.heartbeat_errors;
        self.opens_ok += o.opens_ok;
        self.heartbeats_pending += o.heartbeats_pending;
        self.pushes_received += o.pushes_received;
        self.parked += o.parked;
        self.wall_clock_steps += o.wall_clock_steps;
        self.beats_held_back += o.beats_held_back;
    }
}

/// The latency histograms (ns) of a thread, a process or a whole run.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    /// Every heartbeat answered (not the opening requests: see
    /// [`ThreadCtx::opened`]).
    pub heartbeats: Histogram<u64>,
    /// Those sent after the ramp ended (see [`HoldCounters::ramp_over_ns`]).
    pub holding: Histogram<u64>,
    /// Those sent one heartbeat interval or more after the ramp ended: the
    /// steady state. A ramp the machine could not keep up with leaves a
    /// backlog of late heartbeats that `hold` sends as soon as it can (an
    /// open-loop client does not skip them), and their wait is in
    /// `holding`'s first seconds; by one interval later every connection
    /// has had a beat on schedule again (the 2026-12-06 million runs:
    /// bench/MILLION.md).
    pub steady: Histogram<u64>,
    /// Push deliveries (`--receive`).
    pub pushes: Histogram<u64>,
}

impl Latencies {
    /// Empty histograms.
    pub(crate) fn new() -> Self {
        Latencies {
            heartbeats: new_histogram(),
            holding: new_histogram(),
            steady: new_histogram(),
            pushes: new_histogram(),
        }
    }

    /// Adds another thread's or process's latencies.
    pub(crate) fn add(&mut self, o: &Latencies) {
        merge(&mut self.heartbeats, &o.heartbeats);
        merge(&mut self.holding, &o.holding);
        merge(&mut self.steady, &o.steady);
        merge(&mut self.pushes, &o.pushes);
    }
}

/// Per-thread state shared by the thread's connections.
pub(crate) struct ThreadCtx {
    pub(crate) shared: HoldShared,
    pub(crate) counters: Arc<HoldCounters>,
    /// This thread's heartbeat and push latencies, each heartbeat in the
    /// one histogram of its phase only: `heartbeats` those sent during the
    /// ramp, `holding` those after it but within one interval of its end,
    /// `steady` the rest. One record per heartbeat, not up to three (the
    /// three records were 170 of `hold`'s 2,840 instructions per heartbeat,
    /// `bench/HOLD-CPU.md`, 2026-12-06); the phases follow one another, so
    /// [`ThreadCtx::latencies`] adds them up into the report's nested sets.
    by_phase: RefCell<Latencies>,
    pub(crate) buf: RefCell<Vec<u8>>,
    /// Cleartext connections: where they wait between heartbeats (see
    /// `hold_lot.rs`); TLS connections keep a task each.
    lot: Option<Lot>,
}

impl ThreadCtx {
    /// A heartbeat sent at `sent` was answered as expected: counted and
    /// timed to `arrived` (the reply's kernel receive time) or, without it
    /// or if it is before `sent` (`hold_stamp::reply_time`), to now.
    /// Returns the time it was timed to.
    pub(crate) fn answered(&self, sent: Instant, arrived: Option<Instant>) -> Instant {
        let now = reply_time(sent, arrived, Instant::now);
        self.counters.heartbeats_ok.fetch_add(1, Relaxed);
        let latency = now.saturating_duration_since(sent).as_nanos() as u64;
        let l = &mut *self.by_phase.borrow_mut();
        let ramp_over = self.counters.ramp_over_ns.load(Relaxed);
        let phase = if ramp_over == 0 {
            &mut l.heartbeats
        } else {
            let sent_ns = sent.saturating_duration_since(self.shared.start).as_nanos();
            if sent_ns < ramp_over as u128 {
                &mut l.heartbeats
            } else if sent_ns < ramp_over as u128 + self.shared.interval.as_nanos() {
                &mut l.holding
            } else {
                &mut l.steady
            }
        };
        record_ns(phase, latency);
        now
    }

    /// A connection's opening request (HTTP `GET`, WebSocket upgrade) was
    /// answered: counted apart, and not timed with the heartbeats. It is not
    /// a heartbeat, and its latency (the server's first request on a fresh
    /// connection, during the ramp) is not a heartbeat's.
    fn opened(&self) {
        self.counters.opens_ok.fetch_add(1, Relaxed);
    }

    /// A heartbeat failed: no reply in time, or a wrong one.
    pub(crate) fn failed(&self) {
        self.counters.heartbeat_errors.fetch_add(1, Relaxed);
    }

    /// A data frame the server sent unasked (`tcp://`, `ws://`): in
    /// receive mode, a push (its payload carries its send time, `t=<unix
    /// ns>`) is counted and its delivery timed, to `arrived_unix_ns` (its
    /// kernel receive time) or, without it, to now.
    pub(crate) fn pushed(&self, payload: &[u8], arrived_unix_ns: Option<u64>) {
        if let Some(sent) = sent_at_ns(payload).filter(|_| self.shared.receive) {
            self.counters.pushes_received.fetch_add(1, Relaxed);
            let arrived = arrived_unix_ns.unwrap_or_else(unix_now_ns);
            let latency = arrived.saturating_sub(sent);
            record_ns(&mut self.by_phase.borrow_mut().pushes, latency);
        }
    }

    /// This thread's latencies so far: every heartbeat answered, those sent
    /// after the ramp, those in the steady state (nested, as
    /// [`Latencies`] says), and the pushes.
    pub(crate) fn latencies(&self) -> Latencies {
        let mut l = self.by_phase.borrow().clone();
        merge(&mut l.holding, &l.steady);
        merge(&mut l.heartbeats, &l.holding);
        l
    }
}

/// Runs thread `t` of `threads`: connections `t, t+T, …` below `count`, until
/// `stop` turns true. Returns the thread's latency histograms.
pub(crate) fn run_thread(
    t: u64,
    threads: u64,
    count: u64,
    shared: HoldShared,
    counters: Arc<HoldCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Latencies> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lot = if parks(&shared) {
        let _runtime = rt.enter();
        Some(Lot::new(!replies_on_tick(&shared))?)
    } else {
        None
    };
    let ctx = Rc::new(ThreadCtx {
        shared,
        counters,
        by_phase: RefCell::new(Latencies::new()),
        buf: RefCell::new(vec![0u8; 64 * 1024]),
        lot,
    });
    let local = tokio::task::LocalSet::new();
    if ctx.lot.is_some() {
        let lot_ctx = Rc::clone(&ctx);
        local.spawn_local(async move {
            if let Some(lot) = &lot_ctx.lot {
                lot.run(&lot_ctx).await;
            }
        });
    }
    let ramp_ctx = Rc::clone(&ctx);
    local.spawn_local(async move {
        let ctx = ramp_ctx;
        for j in (t..count).step_by(threads as usize) {
            let at = ctx.shared.start + Duration::from_secs_f64(j as f64 / ctx.shared.ramp);
            tokio::time::sleep_until(at.into()).await;
            tokio::task::spawn_local(hold_one(Rc::clone(&ctx), j));
        }
    });
    local.spawn_local(trim_after_opens(Rc::clone(&ctx)));
    local.block_on(&rt, async {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    });
    // Dropping the tasks (and emptying the lot) closes every socket (FIN).
    drop(local);
    if let Some(lot) = &ctx.lot {
        lot.close_all();
    }
    drop(rt);
    Ok(ctx.latencies())
}

/// How often a thread checks whether connections opened since its last
/// heap trim.
const TRIM_CHECK: Duration = Duration::from_secs(5);

/// Trims the heap once connections have opened (a ramp, reconnects) and
/// then every [`TRIM_CHECK`] while they keep opening. Each TLS handshake
/// allocates and frees tens of KB around the few KB a held connection keeps;
/// glibc keeps the freed pages resident: ~0.5 KB per held connection, half a
/// gigabyte at a million. Trimming costs a walk over the free lists, nothing
/// when idle.
async fn trim_after_opens(ctx: Rc<ThreadCtx>) {
    let c = &ctx.counters;
    let mut seen = 0;
    loop {
        tokio::time::sleep(TRIM_CHECK).await;
        let opened = c.attempted.load(Relaxed) + c.reconnects.load(Relaxed);
        if opened != seen {
            seen = opened;
            sys::trim_heap();
        }
    }
}

/// Whether this process's connections wait in a [`Lot`] between heartbeats:
/// cleartext ones (TLS needs its session's state machine on every read).
fn parks(sh: &HoldShared) -> bool {
    sh.tls.is_none()
}

/// The lot reads replies on the grid's tick, timed by their kernel receive
/// stamps (`hold_lot.rs`), unless told not to: for HTTP only. A read then
/// holds nothing but the one awaited reply (anything else is a wrong
/// reply), so the stamp of its last segment is the reply's. A WebSocket
/// server's pings and a `tcp://` server's pushes can share a read with a
/// reply, and would give it their later stamp: those wake per reply.
fn replies_on_tick(sh: &HoldShared) -> bool {
    !sh.wake_per_reply && sh.http && sh.ws.is_none()
}

/// How a held connection ended.
pub(crate) enum Ended {
    /// The server closed it (EOF), without a WebSocket close frame.
    Dropped,
    /// The server sent a WebSocket close frame with this status code
    /// (then closed or reset it).
    Closed(u16),
    /// It was reset (or another I/O error hit it).
    Reset,
    /// A reply timed out or was wrong; we closed it.
    Failed,
}

/// One held connection, reconnecting if asked to.
async fn hold_one(ctx: Rc<ThreadCtx>, j: u64) {
    let sh = &ctx.shared;
    let c = &ctx.counters;
    let global = sh.first + j * sh.stride;
    let source =
        (!sh.sources.is_empty()).then(|| sh.sources[(global % sh.sources.len() as u64) as usize]);
    let mut rng = Rng::new(j);
    let mut first = true;
    loop {
        let connected = sys::connect(sh.addr, source, sh.timeout).await;
        let first_attempt = std::mem::replace(&mut first, false);
        if first_attempt && connected.is_err() {
            c.attempted.fetch_add(1, Relaxed);
        }
        let ended = match connected {
            Ok(stream) => {
                let open = c.open.fetch_add(1, Relaxed) + 1;
                c.peak.fetch_max(open, Relaxed);
                let ended = match (&sh.tls, &ctx.lot) {
                    (None, Some(lot)) => {
                        parked_session(&ctx, lot, stream, &mut rng, first_attempt).await
                    }
                    (None, None) => session(&ctx, stream, &mut rng, first_attempt).await,
                    // Boxed: a TLS session's state would otherwise
                    // size the future of every connection, parked too.
                    (Some((config, name)), _) => {
                        Box::pin(async {
                            let tls = crate::hold_tls::HoldTls::connect(
                                stream,
                                config.clone(),
                                name.clone(),
                            );
                            match tls.await {
                                Ok(tls) => session(&ctx, tls, &mut rng, first_attempt).await,
                                Err(e) => {
                                    if first_attempt {
                                        c.attempted.fetch_add(1, Relaxed);
                                    }
                                    io_end(&e)
                                }
                            }
                        })
                        .await
                    }
                };
                c.open.fetch_sub(1, Relaxed);
                match ended {
                    Ended::Dropped => c.drops.fetch_add(1, Relaxed),
                    Ended::Closed(code) => {
                        c.close_codes[close_code_slot(code)].fetch_add(1, Relaxed);
                        c.closed_by_server.fetch_add(1, Relaxed)
                    }
                    Ended::Reset => c.resets.fetch_add(1, Relaxed),
                    Ended::Failed => 0,
                };
                true
            }
            Err(_) => {
                c.failed_connects.fetch_add(1, Relaxed);
                false
            }
        };
        if !sh.reconnect {
            return;
        }
        // Back off before reconnecting (longer after a failed connect), with jitter.
        let base = if ended { 10 } else { 500 };
        tokio::time::sleep(Duration::from_millis(base + rng.below(base))).await;
        c.reconnects.fetch_add(1, Relaxed);
    }
}

/// Opens a session on an established connection: the opening request
/// (HTTP, WebSocket), counting the connection's first attempt as done.
/// Returns when its first beat is due.
///
/// `first_attempt`: this is the connection's first, which counts as attempted
/// once its opening request is answered (or fails).
async fn open_session(
    ctx: &ThreadCtx,
    stream: &mut impl Held,
    wire: &mut Wire,
    rng: &mut Rng,
    first_attempt: bool,
) -> Result<Instant, Ended> {
    let sh = &ctx.shared;
    let opened = match &sh.ws {
        Some(ws) => {
            // Frames read with the `101` go to the frame decoder.
            let upgraded = |read: &[u8], pongs: &mut Vec<u8>| {
                wire.take_upgrade(sh, read, pongs, |p| ctx.pushed(p, None))
            };
            exchange(ctx, stream, &ws.upgrade, Exchange::Opening, upgraded).await
        }
        None if sh.http => {
            let heard = |read: &[u8], pongs: &mut Vec<u8>| {
                wire.take(sh, true, read, pongs, |p| ctx.pushed(p, None))
            };
            exchange(ctx, stream, &sh.heartbeat, Exchange::Opening, heard).await
        }
        None => Ok(()),
    };
    if first_attempt {
        ctx.counters.attempted.fetch_add(1, Relaxed);
    }
    opened?;
    let interval_ns = sh.interval.as_nanos() as u64;
    Ok(Instant::now() + Duration::from_nanos(rng.below(interval_ns.max(1))))
}

/// A cleartext connection: opened here, then parked in the thread's
/// [`Lot`] until it ends (this task is not woken in between).
async fn parked_session(
    ctx: &ThreadCtx,
    lot: &Lot,
    mut stream: TcpStream,
    rng: &mut Rng,
    first_attempt: bool,
) -> Ended {
    let mut wire = Wire::new(&ctx.shared);
    // Boxed: the opening exchange's state is needed only until the
    // connection parks, not in the future that waits for its end.
    let opened = Box::pin(open_session(
        ctx,
        &mut stream,
        &mut wire,
        rng,
        first_attempt,
    ));
    let next = match opened.await {
        Ok(next) => next,
        Err(e) => return wire.ended(e),
    };
    let parked = stream
        .into_std()
        .and_then(|std| lot.park(ctx, std, next, rng.fork(), wire));
    match parked {
        // The lot dropped the sender only if the thread is stopping.
        Ok(ended) => ended.await.unwrap_or(Ended::Failed),
        Err(e) => io_end(&e),
    }
}

/// Drives an established connection (TLS) with a task of its own until it
/// ends.
///
/// `first_attempt`: see [`open_session`].
async fn session(
    ctx: &ThreadCtx,
    mut stream: impl Held,
    rng: &mut Rng,
    first_attempt: bool,
) -> Ended {
    let mut wire = Wire::new(&ctx.shared);
    let ended = drive(ctx, &mut stream, &mut wire, rng, first_attempt).await;
    wire.ended(ended)
}

/// [`session`]'s connection until it ends, as its socket says.
async fn drive(
    ctx: &ThreadCtx,
    stream: &mut impl Held,
    wire: &mut Wire,
    rng: &mut Rng,
    first_attempt: bool,
) -> Ended {
    let sh = &ctx.shared;
    let mut next = match open_session(ctx, stream, wire, rng, first_attempt).await {
        Ok(next) => next,
        Err(e) => return e,
    };
    loop {
        // Idle until the next heartbeat, noticing if the server goes away,
        // answering its pings and counting its pushes.
        loop {
            tokio::select! {
                biased;
                r = stream.readable() => {
                    if r.is_err() {
                        return Ended::Reset;
                    }
                    let heard = |read: &[u8], pongs: &mut Vec<u8>| {
                        wire.take(sh, false, read, pongs, |p| ctx.pushed(p, None))
                    };
                    match read_step(ctx, stream, heard).await {
                        Ok(None) => {}
                        // With no heartbeat waiting, only a failure can come.
                        Ok(Some(_)) => {
                            ctx.failed();
                            return Ended::Failed;
                        }
                        Err(end) => return end,
                    }
                }
                () = tokio::time::sleep_until(on_tick(next, sh.start, sh.tick).into()) => break,
            }
        }
        if let Err(e) = heartbeat(ctx, stream, wire).await {
            return e;
        }
        next = next_beat(next, sh.interval, rng, Instant::now());
    }
}

/// The beat after one scheduled at `last`, answered at `now`: one interval
/// on, ±10% so beats stay spread out, and never in the past.
pub(crate) fn next_beat(last: Instant, interval: Duration, rng: &mut Rng, now: Instant) -> Instant {
    let interval_ns = interval.as_nanos() as u64;
    let jitter = interval_ns / 5;
    let next = last + Duration::from_nanos(interval_ns - jitter / 2 + rng.below(jitter.max(1)));
    next.max(now)
}

/// Heartbeats go out on a grid of ticks, so a thread wakes once per tick for
/// all the beats due then instead of once per beat: with a wake-up per beat,
/// context switches were a fifth of `hold`'s CPU. The tick is 1/300 of the
/// interval, between 10 ms and 100 ms ([`beat_tick`]): far finer than the
/// beats' jitter (±10% of the interval, 60× the tick), and the server still
/// sees beats from every hold thread at its own moments.
pub(crate) const BEAT_TICK: Duration = Duration::from_millis(10);

/// The longest tick: at 30 s heartbeats (the million run) each of a
/// process's ~630 beats a second used to be a wake-up of its own every 10 ms
/// tick (6 beats), and a wake-up cost as much as the beats it served
/// (`bench/HEARTBEAT.md`, "both ends at 30 s heartbeats").
const MAX_BEAT_TICK: Duration = Duration::from_millis(100);

/// The beat grid's tick for heartbeats every `interval`: `interval / 300`,
/// at least [`BEAT_TICK`] and at most 100 ms.
pub(crate) fn beat_tick(interval: Duration) -> Duration {
    (interval / 300).clamp(BEAT_TICK, MAX_BEAT_TICK)
}

/// `at` rounded up to the next `tick` counted from `epoch`: the task
/// path's beat time ([`grid_tick`]'s tick, as the lot counts it).
fn on_tick(at: Instant, epoch: Instant, tick: Duration) -> Instant {
    let tick_ns = tick.as_nanos() as u64;
    epoch + Duration::from_nanos(grid_tick(at, epoch, tick_ns) * tick_ns)
}

/// The tick of the beat grid (every `tick_ns` from `epoch`, counted from
/// there) that a beat due at `at` goes out on: rounded up, never early.
/// One rule for both paths, a task's sleep ([`on_tick`]) and the lot's
/// wheel (`hold_lot.rs`). In `u64` nanoseconds (584 years): `u128`
/// division was a tenth of the lot's instructions per heartbeat.
pub(crate) fn grid_tick(at: Instant, epoch: Instant, tick_ns: u64) -> u64 {
    nanos_since(epoch, at).div_ceil(tick_ns)
}

/// Nanoseconds from `epoch` to `at` (0 if `at` is before it).
pub(crate) fn nanos_since(epoch: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(epoch).as_nanos() as u64
}

/// How a connection that hit `e` ended.
pub(crate) fn io_end(e: &std::io::Error) -> Ended {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Ended::Dropped,
        _ => Ended::Reset,
    }
}

/// Sends one heartbeat and waits for its reply, as `wire` reads it.
async fn heartbeat(ctx: &ThreadCtx, stream: &mut impl Held, wire: &mut Wire) -> Result<(), Ended> {
    let sh = &ctx.shared;
    let heard = |read: &[u8], pongs: &mut Vec<u8>| {
        wire.take(sh, true, read, pongs, |p| ctx.pushed(p, None))
    };
    exchange(ctx, stream, &sh.heartbeat, Exchange::Heartbeat, heard).await
}

/// What an [`exchange`] is, for how its answer is counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// A connection's opening request: `opens_ok`.
    Opening,
    /// A heartbeat: `heartbeats_ok` and the latency histograms.
    Heartbeat,
}

/// Sends `request` and reads until `hear` settles its reply (sending the
/// pongs it asks for); counts and times the reply, or fails it after
/// `--timeout`. A reply that never comes because the connection ended
/// first (drop, reset) fails too: the request was lost, and counting only
/// the drop left it out of every heartbeat count. A heartbeat still
/// waiting when the run stops (this future dropped) stays counted in
/// `heartbeats_pending`.
async fn exchange(
    ctx: &ThreadCtx,
    stream: &mut impl Held,
    request: &[u8],
    what: Exchange,
    hear: impl FnMut(&[u8], &mut Vec<u8>) -> Option<Verdict>,
) -> Result<(), Ended> {
    let pending = &ctx.counters.heartbeats_pending;
    if what == Exchange::Heartbeat {
        pending.fetch_add(1, Relaxed);
    }
    // From before the first write, however long the socket takes to
    // accept the whole request, as the lot times its beats (`Lot::beat`).
    let sent = Instant::now();
    let reply = await_reply(ctx, stream, request, what, sent, hear).await;
    if what == Exchange::Heartbeat {
        pending.fetch_sub(1, Relaxed);
    }
    match reply {
        Ok(close) => {
            match what {
                Exchange::Opening => ctx.opened(),
                Exchange::Heartbeat => {
                    ctx.answered(sent, None);
                }
            }
            stream.forget_readiness();
            if close {
                Err(Ended::Dropped)
            } else {
                Ok(())
            }
        }
        Err(end) => {
            ctx.failed();
            Err(end)
        }
    }
}

/// The I/O of an [`exchange`] sent at `sent`: `Ok(close)` if answered as
/// expected (`close`: the server closes after it), else how the connection
/// ends (`Failed`: no reply in time, or a wrong one). A heartbeat the
/// socket could not take whole is counted, as the lot counts its own
/// (`Lot::beat`; this path is TLS connections'), once its rest has gone (a
/// connection that ends before fails the beat instead).
async fn await_reply(
    ctx: &ThreadCtx,
    stream: &mut impl Held,
    request: &[u8],
    what: Exchange,
    sent: Instant,
    mut hear: impl FnMut(&[u8], &mut Vec<u8>) -> Option<Verdict>,
) -> Result<bool, Ended> {
    let wrote = stream.write_app(request).await.map_err(|e| io_end(&e))?;
    if wrote == Sent::HeldBack && what == Exchange::Heartbeat {
        ctx.counters.beats_held_back.fetch_add(1, Relaxed);
    }
    let deadline = sent + ctx.shared.timeout;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.readable()).await {
            Err(_) => return Err(Ended::Failed),
            Ok(Err(e)) => return Err(io_end(&e)),
            Ok(Ok(())) => {}
        }
        match read_step(ctx, stream, &mut hear).await? {
            None => {}
            Some(Verdict::Answered { close }) => return Ok(close),
            Some(Verdict::Failed) => return Err(Ended::Failed),
        }
    }
}

/// One read of a task's connection, the same whether a reply is awaited
/// ([`await_reply`]) or not ([`drive`]): takes what arrived (without
/// waiting, into the thread's buffer), hands its application bytes to
/// `hear`, then sends the pongs `hear` asked for. `Ok(None)`: nothing is
/// settled yet (nothing arrived for the application, or not a whole
/// reply); `Err`: how the connection ended (the server closed it, an I/O
/// error).
async fn read_step(
    ctx: &ThreadCtx,
    stream: &mut impl Held,
    mut hear: impl FnMut(&[u8], &mut Vec<u8>) -> Option<Verdict>,
) -> Result<Option<Verdict>, Ended> {
    let mut pongs = Vec::new();
    let verdict = {
        // Not held across the pongs' write: the buffer is the thread's.
        let mut buf = ctx.buf.borrow_mut();
        match stream.try_read_app(&mut buf) {
            Ok(Read::Eof) => return Err(Ended::Dropped),
            Ok(Read::Data(read)) => hear(read, &mut pongs),
            Ok(Read::Nothing) => None,
            Err(e) => return Err(io_end(&e)),
        }
    };
    if !pongs.is_empty() {
        stream.write_app(&pongs).await.map_err(|e| io_end(&e))?;
    }
    Ok(verdict)
}

/// A tiny splitmix64 generator for jitter (no allocation, no shared state).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(t))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A generator for the same connection's parked life (moved to the lot).
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }

    /// Uniform-ish in `[0, n)`; `n` must be positive.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
impl HoldShared {
    /// Cleartext HTTP to a port nothing listens on, a beat every 30 s.
    pub(crate) fn for_test() -> HoldShared {
        HoldShared {
            addr: "127.0.0.1:9".parse().unwrap(),
            sources: Vec::new(),
            first: 0,
            stride: 1,
            heartbeat: Vec::new(),
            http: true,
            head_request: false,
            ws: None,
            expect: None,
            framing: TcpFraming::Lines,
            receive: false,
            interval: Duration::from_secs(30),
            tick: beat_tick(Duration::from_secs(30)),
            timeout: Duration::from_secs(5),
            reconnect: false,
            wake_per_reply: false,
            start: Instant::now(),
            ramp: 1.0,
            tls: None,
        }
    }
}

#[cfg(test)]
impl ThreadCtx {
    /// A thread's context with no lot of its own.
    pub(crate) fn for_test(shared: HoldShared) -> ThreadCtx {
        ThreadCtx {
            shared,
            counters: Arc::default(),
            by_phase: RefCell::new(Latencies::new()),
            buf: RefCell::new(vec![0u8; 64 * 1024]),
            lot: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_round_up_to_the_tick_grid() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let tick = ms(10);
        assert_eq!(on_tick(epoch, epoch, tick), epoch);
        assert_eq!(on_tick(epoch + ms(1), epoch, tick), epoch + ms(10));
        assert_eq!(on_tick(epoch + ms(10), epoch, tick), epoch + ms(10));
        assert_eq!(
            on_tick(epoch + ms(10) + Duration::from_nanos(1), epoch, tick),
            epoch + ms(20)
        );
        assert_eq!(on_tick(epoch + ms(101), epoch, ms(100)), epoch + ms(200));
    }

    #[test]
    fn the_tick_is_a_300th_of_the_interval_within_10_to_100_ms() {
        let ms = Duration::from_millis;
        assert_eq!(beat_tick(ms(1000)), ms(10));
        assert_eq!(beat_tick(Duration::from_secs(3)), ms(10));
        assert_eq!(beat_tick(Duration::from_secs(6)), ms(20));
        assert_eq!(beat_tick(Duration::from_secs(30)), ms(100));
        assert_eq!(beat_tick(Duration::from_secs(300)), ms(100));
    }

    /// A held connection's task future stays small: it lives as long as the
    /// connection, a million of them at once.
    #[test]
    fn a_held_connection_future_is_small() {
        let ctx = Rc::new(ThreadCtx::for_test(HoldShared::for_test()));
        // 840 bytes in a debug build of 2026-11-30 (tokio 1.54, rustls 0.23),
        // with the TLS session and the opening exchange boxed.
        let size = std::mem::size_of_val(&hold_one(ctx, 0));
        assert!(
            size <= 1024,
            "a held connection's future grew to {size} bytes, paid by each of a \
             million connections: box the part only a handshake or a reply needs"
        );
    }

    /// A heartbeat counts "after the ramp" once it was sent after this
    /// process's ramp ended, and "steady" once sent one interval after
    /// that: a ramp's backlog of late beats is sent within that interval.
    #[test]
    fn heartbeats_are_timed_apart_after_the_ramp_and_one_interval_later() {
        let mut shared = HoldShared::for_test();
        shared.interval = Duration::from_secs(30);
        let start = shared.start;
        let ctx = ThreadCtx::for_test(shared);
        let s = Duration::from_secs;
        // During the ramp: neither.
        ctx.answered(start + s(5), Some(start + s(6)));
        ctx.counters
            .ramp_over_ns
            .store(s(10).as_nanos() as u64, Relaxed);
        // Sent before the ramp ended, answered after: still the ramp's.
        ctx.answered(start + s(9), Some(start + s(11)));
        // After the ramp, within one interval of its end: after the ramp only.
        ctx.answered(start + s(10), Some(start + s(12)));
        ctx.answered(start + s(39), Some(start + s(40)));
        // One interval after: both.
        ctx.answered(
            start + s(40),
            Some(start + s(40) + Duration::from_millis(3)),
        );
        let l = ctx.latencies();
        assert_eq!(l.heartbeats.len(), 5);
        assert_eq!(l.holding.len(), 3);
        assert_eq!(l.steady.len(), 1);
        assert!(l.steady.max() < 4_000_000, "{}", l.steady.max());
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut r = Rng::new(7);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
