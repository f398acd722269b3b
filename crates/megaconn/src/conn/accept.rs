//! The accept loop of one worker listener.
//!
//! When a connection is waiting on its listener, it takes a slot from the
//! server-wide connection limit and accepts it. At the limit the worker's
//! parking lot closes idle keep-alive connections to make room, longest
//! idle first (as nginx reuses them); with none of its own to close (all
//! its connections busy), it asks another worker's lot to
//! ([`evict_when_asked`]): the limit is the whole server's, and a worker
//! that only waited locked newcomers out while another held thousands of
//! idle ones. With none anywhere, it stops accepting (connections wait in
//! the kernel backlog) until a connection closes; or, with
//! `refuse_at_max_connections`, refuses it after accept as an accept-rate
//! refusal is refused (`503` and `Retry-After` on a cleartext HTTP
//! listener), counted as `limit_hits{limit="max_connections"}`: a client
//! left in the backlog heard nothing until its own timeout. An idle
//! acceptor holds no slot.
//!
//! Under `serve --processes P` each worker process has its own limit (its
//! share of the whole, `max_connections / P`) and makes room among its own
//! connections only, as nginx's `worker_connections` is per worker process:
//! one process full of busy connections does not take idle ones from
//! another.
//!
//! On a TLS listener a connection also takes a place among the worker's
//! handshakes in flight before it is accepted (`tls::HandshakeGate`): at
//! that bound the loop waits, counted and logged, and the connection stays
//! in the kernel's backlog; the place travels with it to its handshake.
//!
//! Over the accept rate or the per-IP limit (`admission.rs`) a connection
//! is refused right after accept: answered if its listener's protocol can
//! say it without a handshake (a cleartext HTTP listener's `503`, or its
//! `GOAWAY` for a client whose first bytes are HTTP/2's preface; the server
//! makes both once per listener, `server/dispatch.rs`), then closed; the
//! loop keeps nothing of it and never waits on it, but for a refusal whose
//! client's first bytes have not come to say which answer: those the loop
//! keeps, bounded, and answers beside its accepts (`admission::Undecided`);
//! one past the server's bound on those is answered at once, and so is the
//! oldest past the loop's own, each counted
//! (`limit_hits{limit="refusals_waiting"}`) and logged (limited).
//! A refusal's `Retry-After` is spread over [`RETRY_AFTER_SPREAD`] values
//! (1–3 s at the least), one picked per refusal: a storm refused with the
//! same value came back in the same second, to be refused again.
//! A TLS listener's
//! connection over its IP's handshake rate (`TlsConfig::handshake_rate_per_ip`)
//! is closed the same way, before any TLS work. A connection from a trusted
//! load balancer (`proxy_protocol`) is held to neither per-IP bound here,
//! nor tracked: its address is the balancer's, every client behind it one
//! IP; both apply to the client its PROXY header names, once it is in
//! (`dispatch::serve_proxied`).
//!
//! Resource errors (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), and a
//! connection accepted into the descriptors kept free for the rest of the
//! process (`fd_reserve.rs`), make it back off with a growing, capped delay
//! and log at most once per interval: never spin, never exit. Out of
//! descriptors, the line counts who holds them (`Holders`): this server's
//! connections and listening sockets, and the others (a handler's upstream
//! pool, files), which `max_connections` does not know of.
//!
//! Sockets are accepted bare (`accept4`, non-blocking), not registered with
//! the runtime: cleartext HTTP/1.1 reads its opening request straight from
//! the socket and, if it never has to wait, parks it without tokio ever
//! watching it (`woken.rs`) — one `epoll_ctl` per connection (the lot's),
//! where a registered stream cost three (tokio's add and delete, then the
//! lot's add). The protocols that wait from the start register it
//! themselves (`dispatch.rs`).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use crate::conn::admission::{
    refuse, undecided_max, Admitted, Answer, Bound, OverIpRate, Refusal, RefusalAnswer, Undecided,
    PER_IP_RETRY_AFTER_SECS, UNDECIDED_MAX, UNDECIDED_SERVER_MAX,
};
use crate::conn::connection::Connection;
use crate::conn::context::WorkerContext;
use crate::conn::fd_reserve::FdLine;
use crate::conn::limit::ConnectionLimit;
use crate::conn::park::Respawn;
use crate::conn::socket::configure_accepted;
use crate::conn::{ConnInfo, Incoming, ProtoTag};
use crate::observe::close::CloseReason;
use crate::observe::lifecycle::ConnTrack;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::incr;

/// First back-off delay after a resource error.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// Longest back-off delay.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At the limit with nothing of this worker's to evict, how often to look
/// (and ask another worker) again while waiting for a slot: its idle
/// connections park within `park_idle_after`, and a connection of another
/// worker that closes, or that another worker evicts, frees a slot without
/// any wake-up here being needed.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// How many `Retry-After` values a refusal's answer is spread over: the
/// base (an accept rate's refill time, 1 s otherwise) and the next seconds.
/// Refused clients that all retried after the same second were refused
/// together again, the storm moved one second on.
pub(crate) const RETRY_AFTER_SPREAD: u64 = 3;

/// A listener's answers to refused clients, one per `Retry-After` value
/// from `base` on ([`RETRY_AFTER_SPREAD`] of them), made once.
struct SpreadAnswers(Vec<Answer>);

impl SpreadAnswers {
    fn new(answer: RefusalAnswer, ctx: &WorkerContext, local: SocketAddr, base: u64) -> Self {
        SpreadAnswers(
            (0..RETRY_AFTER_SPREAD)
                .map(|k| answer(&ctx.config, local, base + k).unwrap_or_else(Answer::silent))
                .collect(),
        )
    }

    /// The answer for the refusal numbered `n` (a counter of refusals): a
    /// cheap spread of consecutive numbers over the values (Fibonacci
    /// hashing, as `WorkerContext::retire_at` draws a connection's age),
    /// scaled by multiply-shift: the product's high half taken modulo 3
    /// ran in streaks of 6–7 equal answers for consecutive refusals, the
    /// scaled one changes at nearly every refusal.
    fn pick(&self, n: u64) -> &Answer {
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let i = ((h as u128 * self.0.len() as u128) >> 64) as usize;
        &self.0[i]
    }
}

pub(crate) async fn accept_loop(
    listener: AsyncFd<TcpListener>,
    ctx: Rc<WorkerContext>,
    spawn_connection: Respawn,
    limit: ConnectionLimit,
    evictable: fn(ProtoTag) -> bool,
    answer: RefusalAnswer,
) {
    let mut backoff = BACKOFF_START;
    let local = crate::conn::socket::addr_of(listener.get_ref());
    // What a refused client is told on this listener, made once.
    // None from the server: no answer, only a close, with a FIN.
    let per_ip_answer =
        answer(&ctx.config, local, PER_IP_RETRY_AFTER_SECS).unwrap_or_else(Answer::silent);
    let rate_answers = limit
        .accept_rate()
        .map(|r| SpreadAnswers::new(answer, &ctx, local, r.retry_after_secs(ctx.index)));
    // Refused at max_connections (`refuse_at_max_connections`).
    let full_answers = ctx
        .config
        .refuse_at_max_connections
        .then(|| SpreadAnswers::new(answer, &ctx, local, 1));
    // While set and not past, a connection at the limit is refused at once:
    // the last round of eviction freed nothing (`slot_or_refuse`).
    let mut refusing_until: Option<Instant> = None;
    let silent = Answer::silent();
    let mut fd_line = FdLine::new(ctx.config.fd_reserve);
    // A TLS listener's connections take a place among the worker's
    // handshakes in flight before they are accepted (`tls::HandshakeGate`).
    let tls = crate::conn::tls::tls_for_local(&ctx.config, local).cloned();
    let gate = tls.as_ref().and(ctx.tls_gate.clone());
    // Refusals waiting for their client's first bytes to choose between
    // answers (h2c's `GOAWAY` or HTTP/1.1's `503`), answered beside the loop.
    // At most `undecided_max` of the whole server's: their descriptors count
    // against no slot, so they take room the open-file limit leaves past
    // the connections and the reserve. (Unknown limit: the room the
    // default max_connections leaves.)
    let open_files = crate::conn::config::open_file_limit()
        .unwrap_or_else(|| limit.max().saturating_add(crate::conn::config::FD_HEADROOM));
    let undecided = Undecided::new(
        limit.refusals_waiting(),
        undecided_max(open_files, limit.max(), ctx.config.fd_reserve),
    );
    // Answered at once at a bound (the server's, or this loop's, whose
    // oldest then goes): counted, and logged (limited). What happened is a
    // refusal (by `knob`) answered without waiting to choose its answer's
    // form: the client was refused either way, and an HTTP/1.1 one got the
    // 503 it would have got. The line used to tell the operator of an
    // accept-rate storm to raise the open-file limit, as if the refusals
    // were the server running out of room. Below 16 accept loops the
    // loop's bound comes first, and went uncounted (session 43).
    let at_bound = |bound: Bound| {
        LimitHit::RefusalsWaiting.count(&ctx.stats);
        ratelog::log(Flood::RefusalsWaiting, |suppressed| {
            match bound {
            Bound::Server(bound, knob) => tracing::warn!(
                worker = ctx.index,
                refused_by = knob,
                refusals_waiting = bound,
                open_file_limit = open_files,
                max_connections = limit.max(),
                fd_reserve = ctx.config.fd_reserve,
                suppressed,
                "many connections refused by {knob} at once: {bound} refusals already wait for their client's first bytes (so that an HTTP/2 client reads a GOAWAY and an HTTP/1.1 one a 503, and a TLS or framed one, answered nothing, gets a FIN rather than a reset), the most the open-file limit leaves room for past max_connections and fd_reserve (half that room, at most {UNDECIDED_SERVER_MAX}), so this one was answered at once: an HTTP/1.1 client read its 503 all the same, an HTTP/2 one may read a 503 instead of a GOAWAY, a TLS or framed one a reset. The refusals are {knob}'s doing: if the clients are legitimate, raise {knob}; nothing to do otherwise"
            ),
            Bound::Loop(bound, knob) => tracing::warn!(
                worker = ctx.index,
                listen = %local,
                refused_by = knob,
                refusals_waiting_in_loop = bound,
                suppressed,
                "many connections refused by {knob} at once on one listener: {bound} refusals already wait in its accept loop for their client's first bytes (so that an HTTP/2 client reads a GOAWAY and an HTTP/1.1 one a 503, and a TLS or framed one, answered nothing, gets a FIN rather than a reset), a loop's most ({UNDECIDED_MAX}), so the oldest was answered at once: an HTTP/1.1 client read its 503 all the same, an HTTP/2 one may read a 503 instead of a GOAWAY, a TLS or framed one a reset. The refusals are {knob}'s doing: if the clients are legitimate, raise {knob}; nothing to do otherwise"
            ),
        }
        });
    };
    let accepting = async {
        loop {
            // A connection first, then a slot for it: a slot taken before the
            // wait sat idle with this acceptor while a connection queued on
            // another listener (another worker's, or this worker's other
            // address) waited for one, with fewer than max_connections open.
            let accepted = match listener.readable().await {
                Err(e) => Err(e),
                Ok(mut ready) => {
                    let place = match &gate {
                        None => None,
                        Some(gate) => match gate.try_enter() {
                            Some(place) => Some(place),
                            None if !has_queued(listener.get_ref()) => {
                                ready.clear_ready();
                                continue;
                            }
                            None => Some(gate.enter_at_cap(&ctx).await),
                        },
                    };
                    // `None`: refused at the limit (`refuse_at_max_connections`).
                    let held = match limit.try_acquire() {
                        Some(s) => Some(s),
                        // Readiness stays set after an accept until one finds
                        // the queue empty: ask the kernel before counting a wait.
                        None if !has_queued(listener.get_ref()) => {
                            ready.clear_ready();
                            continue;
                        }
                        None => {
                            incr(&ctx.stats.accept_waits_at_limit);
                            if full_answers.is_some() {
                                slot_or_refuse(&limit, &ctx, evictable, &mut refusing_until).await
                            } else {
                                Some(slot_at_limit(&limit, &ctx, evictable).await)
                            }
                        }
                    };
                    match ready.try_io(|l| accept4(l.get_ref())) {
                        // Into the reserve: closed (dropped) here, and taken
                        // for what it is, the process out of descriptors.
                        Ok(Ok((socket, _))) if fd_line.crossed(socket.as_raw_fd()) => {
                            Err(io::Error::from_raw_os_error(libc::EMFILE))
                        }
                        Ok(accepted) => accepted.map(|a| (a, held, place)),
                        // Taken by now (another process on a shared socket, or
                        // a connection reset in the queue): readiness cleared,
                        // the slot given back, wait again.
                        Err(_would_block) => continue,
                    }
                }
            };
            match accepted {
                Ok(((socket, peer), None, _)) => {
                    // Refused at max_connections: it holds no slot, and is
                    // answered and closed as an accept-rate refusal is.
                    backoff = BACKOFF_START;
                    LimitHit::MaxConnections.count(&ctx.stats);
                    let n = ctx.stats.limit_hits[LimitHit::MaxConnections as usize]
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let answer = full_answers.as_ref().map_or(&silent, |a| a.pick(n));
                    if let Some(socket) = refuse(socket, answer) {
                        undecided.add(socket, answer, "max_connections", at_bound);
                    }
                    ratelog::log(Flood::AtMaxConnections, |suppressed| {
                        tracing::warn!(
                            worker = ctx.index,
                            max_connections = limit.max(),
                            %peer,
                            suppressed,
                            "at max_connections, nothing idle to close: connection refused (503 with Retry-After on cleartext HTTP; refuse_at_max_connections); raise max_connections (and the open-file limit with it) if the machine has room"
                        )
                    });
                }
                Ok(((socket, peer), Some(mut held), place)) => {
                    backoff = BACKOFF_START;
                    incr(&ctx.stats.accepted);
                    // A trusted balancer's connection: its client, named by
                    // its PROXY header, is tracked and held to the per-IP
                    // limits once the header is in (`dispatch::serve_proxied`).
                    let proxied = crate::conn::proxy_header::expected(&ctx.config, local, peer);
                    let track = if proxied {
                        None
                    } else {
                        open_track(&ctx, peer, local)
                    };
                    let refusal = if !limit
                        .accept_rate()
                        .is_none_or(|r| r.try_take(ctx.index, Instant::now()))
                    {
                        Some(Refusal::AcceptRate)
                    } else if !proxied && !limit.admit_ip(&mut held, peer.ip()) {
                        Some(Refusal::PerIp)
                    } else {
                        None
                    };
                    let conn = Connection::open(held, ctx.stats.clone(), track);
                    if let Some(refusal) = refusal {
                        // Answered (if the listener's protocol can say it,
                        // `admission::refuse`) and closed at once, counted
                        // like any close.
                        // The worker's log kinds (`ratelog`): their counts
                        // held back are said once the interval is over.
                        let (counter, kind, answer) = match refusal {
                            Refusal::AcceptRate => (
                                &ctx.stats.rejected_accept_rate,
                                Flood::AcceptRate,
                                rate_answers.as_ref().map_or(&silent, |a| {
                                    a.pick(
                                        ctx.stats
                                            .rejected_accept_rate
                                            .load(std::sync::atomic::Ordering::Relaxed),
                                    )
                                }),
                            ),
                            Refusal::PerIp => (
                                &ctx.stats.rejected_per_ip,
                                Flood::MaxConnectionsPerIp,
                                &per_ip_answer,
                            ),
                        };
                        // Counted before the client can read the answer.
                        incr(counter);
                        if let Some(socket) = refuse(socket, answer) {
                            undecided.add(socket, answer, refusal.knob(), at_bound);
                        }
                        conn.close(CloseReason::Limit);
                        ratelog::log(kind, |suppressed| {
                            tracing::warn!(
                                worker = ctx.index,
                                limit = refusal.knob(),
                                %peer,
                                suppressed,
                                "connection refused by {} (raise it if the peer is legitimate)",
                                refusal.knob()
                            )
                        });
                        continue;
                    }
                    let admitted = tls
                        .as_ref()
                        .filter(|_| !proxied)
                        .map(|t| t.admit_from(peer.ip()));
                    if let Some(Ok(Admitted::ForgotOne(ips))) = admitted {
                        LimitHit::TlsHandshakeRateTable.count(&ctx.stats);
                        log_rate_table_full(&ctx, peer, ips);
                    }
                    if let Some(Err(over)) = admitted {
                        // Before any TLS work: closed without an answer, as a
                        // TLS listener's other refusals; with a FIN, not the
                        // reset its unread ClientHello would draw (nor one
                        // that comes after the close: it is waited for).
                        LimitHit::from(over).count(&ctx.stats);
                        if let Some(socket) = refuse(socket, &silent) {
                            let knob = "tls_handshake_rate_per_ip";
                            undecided.add(socket, &silent, knob, at_bound);
                        }
                        conn.close(CloseReason::Limit);
                        log_over_ip_rate(&ctx, peer, over);
                        continue;
                    }
                    configure_accepted(&socket, &ctx.config);
                    // The connection's age, drawn once: the lot keeps it (to the
                    // second) for its wake-ups, the connection starts with it.
                    let retire_at = ctx.retire_at();
                    if let Some(lot) = &ctx.park {
                        lot.note_retire_at(socket.as_raw_fd(), retire_at);
                    }
                    let info = ConnInfo { peer, local };
                    spawn_connection(Incoming::Accepted(socket, info, retire_at, place), conn);
                }
                Err(e) => {
                    incr(&ctx.stats.accept_errors);
                    ctx.stats.accept_failed(&e);
                    if is_transient(&e) {
                        continue;
                    }
                    ratelog::log(Flood::AcceptFailed, |suppressed| {
                        if let Some(held) = Holders::when_out_of_descriptors(&e, &ctx, &limit) {
                            return held.log(&ctx, &e, backoff, suppressed);
                        }
                        tracing::error!(
                            worker = ctx.index,
                            error = %e,
                            retry_in_ms = backoff.as_millis() as u64,
                            fd_reserve = ctx.config.fd_reserve,
                            suppressed,
                            "accept failed; backing off (raise the open-file limit or lower max_connections)"
                        )
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    };
    tokio::join!(accepting, undecided.run());
}

/// Who holds the process's descriptors, counted when an accept meets
/// `EMFILE` or `ENFILE`, for its log line (once per interval: the line is
/// rate-limited, and nothing is counted for a line held back).
///
/// Why: the default `max_connections` (the open-file limit less 256,
/// `config::default_max_connections`) knows nothing of the descriptors a
/// handler opens. A reverse proxy's upstream pool opened ~1,950 sockets
/// for 19,000 clients (session 55's proxy review) and accepts failed with
/// `EMFILE` well below the limit on connections, with a line that said
/// only "raise the open-file limit or lower max_connections", not by how
/// much, nor that the application held them. `process_open_fds` less
/// `megaconn_connections_open` shows the same at any scrape.
#[derive(Debug)]
struct Holders {
    /// The process's open descriptors.
    open: usize,
    /// This server's connections (their slots: every open one holds one).
    connections: usize,
    /// This server's listening sockets: one per address per worker, and
    /// the handle's copy of each (`ServerHandle`, kept until shutdown).
    listening: usize,
    /// Refused connections kept open to be answered (`admission::Undecided`).
    refusals: usize,
}

impl Holders {
    /// Counted if `e` says the process (`EMFILE`) or the system
    /// (`ENFILE`) is out of descriptors; `None` for any other error, or
    /// when they cannot be counted.
    fn when_out_of_descriptors(
        e: &io::Error,
        ctx: &WorkerContext,
        limit: &ConnectionLimit,
    ) -> Option<Holders> {
        let errno = e.raw_os_error()?;
        if errno != libc::EMFILE && errno != libc::ENFILE {
            return None;
        }
        // By `poll(2)` over the descriptor table, not by listing
        // `/proc/self/fd`, whose dentries the kernel keeps
        // (`observe/process.rs`). It reads `/proc/self/status`, which
        // takes a descriptor: with none left (no `fd_reserve`), every
        // number below the open-file limit is taken, which is what
        // `EMFILE` means.
        let open = crate::observe::process::open_fds_of_this_process()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .or_else(|| {
                (errno == libc::EMFILE)
                    .then(crate::conn::config::open_file_limit)
                    .flatten()
            })?;
        Some(Holders {
            open,
            connections: limit.held(),
            listening: ctx.config.addrs.len() * ctx.config.workers * 2,
            refusals: limit
                .refusals_waiting()
                .load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Logs the accept's failure with who holds the descriptors, and what
    /// to change: `max_connections` lower by the others' count (they are
    /// not the server's to close), or the open-file limit higher.
    fn log(&self, ctx: &WorkerContext, e: &io::Error, backoff: Duration, suppressed: u64) {
        let ours = self.connections + self.listening + self.refusals;
        let others = self.open.saturating_sub(ours);
        let raise = match e.raw_os_error() {
            Some(libc::ENFILE) => "the system's limit (fs.file-max; the system is out of them)",
            _ => "the open-file limit (ulimit -n, LimitNOFILE= under systemd)",
        };
        tracing::error!(
            worker = ctx.index,
            error = %e,
            open_fds = self.open,
            connections = self.connections,
            listening = self.listening,
            refusals_waiting = self.refusals,
            others,
            retry_in_ms = backoff.as_millis() as u64,
            fd_reserve = ctx.config.fd_reserve,
            suppressed,
            "accept failed; backing off (out of file descriptors): {} descriptors open, {ours} \
             of them this server's connections and listening sockets, {others} others (the \
             application's: upstream sockets, files; another server's; a few of the \
             runtime's per worker): lower max_connections by {others} or raise {raise}",
            self.open
        );
    }
}

/// A new connection's lifecycle track, if connections are tracked: with
/// an `on_connection` hook, a registry (`/debug/connections`), or the
/// access log (which reads the peer from the track). `peer`: the client,
/// as a proxied connection's header named it once it is in.
#[inline]
pub(crate) fn open_track(
    ctx: &WorkerContext,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<Rc<ConnTrack>> {
    let hook = ctx.config.on_connection.as_ref();
    let tracked = hook.is_some() || ctx.registry.is_some() || ctx.config.access_log;
    tracked.then(|| {
        ConnTrack::open(
            hook,
            ctx.registry.as_ref(),
            peer,
            local,
            ctx.index,
            &ctx.stats,
        )
    })
}

/// Logs (limited) a TLS connection let in by forgetting another IP's
/// bucket: the table of `TlsConfig::handshake_rate_per_ip`'s IPs was at its
/// bound.
pub(crate) fn log_rate_table_full(ctx: &WorkerContext, peer: SocketAddr, ips: usize) {
    ratelog::log(Flood::TlsHandshakeRateTable, |suppressed| {
        tracing::warn!(
            worker = ctx.index,
            %peer,
            tracked_ips = ips,
            suppressed,
            "TLS handshake rate per IP: its table already tracks {ips} IPs (IPv6 per /64), its bound; another IP's bucket was forgotten to admit this one (connections from that many addresses within a bucket's refill time: a flood from many addresses, which the rate per IP does not stop; --tls-max-handshakes and --accept-rate bound it)"
        )
    });
}

/// Logs (limited) a TLS connection refused by
/// `TlsConfig::handshake_rate_per_ip`: its IP over the rate.
pub(crate) fn log_over_ip_rate(ctx: &WorkerContext, peer: SocketAddr, over: OverIpRate) {
    match over {
        OverIpRate::Rate(per_second) => ratelog::log(Flood::TlsHandshakeRatePerIp, |suppressed| {
            tracing::warn!(
                worker = ctx.index,
                %peer,
                handshake_rate_per_ip = per_second,
                suppressed,
                "TLS connection refused: its IP is over the handshake rate per IP (raise --tls-handshake-rate-per-ip if the peer is legitimate, e.g. a NAT)"
            )
        }),
    }
}

/// A slot for a connection waiting on the listener at `max_connections`:
/// this worker's parking lot closes idle connections for it, longest idle
/// first (`ParkingLot::evict`), as nginx reuses idle keep-alive
/// connections; the alternative, waiting until one closes by itself, let a
/// server full of idle keep-alive clients lock every new one out until
/// `idle_timeout`. With none of its own evictable (all busy, or idle as
/// tasks, or of a message protocol), it asks another worker's lot, in
/// turn ([`ConnectionLimit::ask_to_evict`]). Without lots (parking off) it
/// waits; with them it looks again every [`EVICT_RETRY`].
async fn slot_at_limit(
    limit: &ConnectionLimit,
    ctx: &WorkerContext,
    evictable: fn(ProtoTag) -> bool,
) -> crate::conn::limit::ConnectionSlot {
    let mut asked_last = ctx.index;
    let _waiting = limit.wait_at_limit();
    // Refusing at the limit, the refusal's line says it (`accept_loop`):
    // these, of the same kind, would use its interval up.
    let quiet = ctx.config.refuse_at_max_connections;
    loop {
        if let Some(lot) = &ctx.park {
            match lot.evict(evictable) {
                0 => {
                    let asked = limit.ask_to_evict(ctx.index, &mut asked_last);
                    if !quiet {
                        ratelog::log(Flood::AtMaxConnections, |suppressed| {
                            match asked {
                        Some(other) => tracing::warn!(
                            worker = ctx.index,
                            max_connections = limit.max(),
                            asked_worker = other,
                            suppressed,
                            "at max_connections, nothing idle of this worker's to close: asked another worker to close idle keep-alive connections"
                        ),
                        None => nothing_idle(ctx, limit, suppressed),
                    }
                        });
                    }
                }
                evicted => log_evicted(ctx, limit, evicted, false),
            }
        } else if !quiet {
            ratelog::log(Flood::AtMaxConnections, |suppressed| {
                nothing_idle(ctx, limit, suppressed)
            });
        }
        // The slots just freed go to the waiters in order: this one's, or
        // another worker's acceptor's, which then accepts as well.
        tokio::select! {
            biased;
            slot = limit.acquire() => return slot,
            () = tokio::time::sleep(EVICT_RETRY), if ctx.park.is_some() => {}
        }
    }
}

/// [`slot_at_limit`] for a server that refuses at the limit
/// (`refuse_at_max_connections`): one round of it (this worker's lot
/// evicts, or another worker's is asked to), a slot if one came within
/// [`EVICT_RETRY`], else `None` (refuse the connection), and `None` at once
/// for the next [`EVICT_RETRY`] after that: a storm over the limit is
/// refused at the accept rate, not one connection per round, while the
/// server still looks for room every round.
async fn slot_or_refuse(
    limit: &ConnectionLimit,
    ctx: &WorkerContext,
    evictable: fn(ProtoTag) -> bool,
    refusing_until: &mut Option<Instant>,
) -> Option<crate::conn::limit::ConnectionSlot> {
    if refusing_until.is_some_and(|until| Instant::now() < until) {
        return None;
    }
    match tokio::time::timeout(EVICT_RETRY, slot_at_limit(limit, ctx, evictable)).await {
        Ok(slot) => {
            *refusing_until = None;
            Some(slot)
        }
        Err(_) => {
            *refusing_until = Some(Instant::now() + EVICT_RETRY);
            None
        }
    }
}

/// Answers the other workers' asks ([`ConnectionLimit::ask_to_evict`]):
/// while the server is still at the limit when one comes, this worker's
/// lot closes idle keep-alive connections for the connection waiting on
/// the other worker's listener, as it would for one on its own. A task of
/// its own, asleep but for the asks: nothing on the request path, and a
/// cross-thread wake-up only while a connection waits at the limit.
pub(crate) async fn evict_when_asked(
    ctx: Rc<WorkerContext>,
    limit: ConnectionLimit,
    evictable: fn(ProtoTag) -> bool,
) {
    let Some(lot) = ctx.park.as_ref() else {
        return;
    };
    loop {
        limit.asked_to_evict(ctx.index).await;
        // A slot came free since (a connection closed), or the asker got
        // one another way and waits no more: nothing to make room for.
        if !limit.someone_waits() {
            continue;
        }
        let evicted = lot.evict(evictable);
        if evicted > 0 {
            log_evicted(&ctx, &limit, evicted, true);
        }
    }
}

/// Logs (limited) idle connections evicted at the limit; `for_another`: for
/// a connection waiting on another worker's listener.
fn log_evicted(ctx: &WorkerContext, limit: &ConnectionLimit, evicted: usize, for_another: bool) {
    ratelog::log(Flood::Evicted, |suppressed| {
        tracing::warn!(
            worker = ctx.index,
            max_connections = limit.max(),
            evicted,
            for_another_worker = for_another,
            suppressed,
            "at max_connections: closed idle keep-alive connections for new ones (raise max_connections)"
        )
    });
}

/// At the limit with nothing idle anywhere to close.
fn nothing_idle(ctx: &WorkerContext, limit: &ConnectionLimit, suppressed: u64) {
    tracing::warn!(
        worker = ctx.index,
        max_connections = limit.max(),
        suppressed,
        "at max_connections, nothing idle to close: not accepting until a connection closes; raise max_connections (and the open-file limit with it) if the machine has room"
    )
}

/// Whether a connection is queued on `listener` now (`poll`, no wait; a
/// failed poll says yes, and the accept that follows tells).
fn has_queued(listener: &TcpListener) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one initialised pollfd; timeout 0 never blocks.
    unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: one system call, where
/// std's accept (or socket2's) would need a second one for non-blocking.
fn accept4(listener: &TcpListener) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: try_init hands accept4 zeroed address storage and its length.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            match libc::accept4(
                listener.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            ) {
                -1 => Err(io::Error::last_os_error()),
                fd => Ok(fd),
            }
        })?
    };
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "accepted a connection that is not TCP/IP",
        )
    })?;
    Ok((socket, peer))
}

/// Errors about one half-open connection, not about the listener or the process.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}
