//! Admission limits beyond `max_connections`: an accept-rate token bucket and a
//! per-client-IP concurrent connection limit (IPv6 counted per /64, since one
//! client usually owns a whole /64).
//!
//! Over a limit, a connection is refused right after accept ([`refuse`]):
//! told so in its listener's protocol if it has a way to say it without
//! a handshake (a cleartext HTTP listener answers `503`, or a `GOAWAY` to
//! a client whose first bytes are HTTP/2's preface; the server makes both,
//! `server/dispatch.rs`), closed, counted under the limit's name and
//! logged at most once per interval (see `accept.rs`). When the answer
//! depends on first bytes not there yet, [`Undecided`] waits for them,
//! bounded in time and number (per accept loop, and server-wide by the
//! room the open-file limit leaves, [`undecided_max`]: past either one is
//! answered at once, counted as `refusals_waiting`), in the accept loop's
//! task.
//! The per-IP table holds only IPs that have connections now, a few dozen
//! bytes each; a million connections from a handful of addresses cost a
//! handful of entries.
//!
//! [`PerIpRate`] is a token bucket per client IP, for TLS listeners
//! (`TlsConfig::handshake_rate_per_ip`): the concurrent limit bounds an
//! IP's handshakes *in flight*, not how many it makes a second, and a
//! client that replays a ClientHello and hangs up stays within any
//! concurrent bound while it costs the server a key exchange and a
//! signature each time. Its table holds at most
//! [`PerIpRate::MAX_TRACKED`] IPs; past that a new IP takes the place of
//! one it forgets, counted apart (`tls_handshake_rate_table`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Sleep};

use crate::conn::config::{AcceptRate, Config};
use crate::observe::limits::LimitHit;

/// A token bucket: `rate` connections per second, bursts up to `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long an empty bucket takes to hold one token again.
    fn refill_one(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.rate).unwrap_or(Duration::MAX)
    }

    /// How long until the next token.
    #[cfg(test)]
    fn until_next(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

/// The server's accept rate, split over its W workers without a lock
/// shared on the accept path where the split can be exact: with a burst of
/// at least W, each worker has a bucket of its own, refilled at `rate / W`
/// and holding `burst / W` tokens, the remainder one more each for the
/// first workers (so the buckets hold the burst together; the quotient
/// rounded down let a burst of 3 on 2 workers admit 2). Below W an even
/// split would give some workers no token at all, and such a worker
/// refuses every connection the kernel hands it, even the first after a
/// quiet hour; one each (as it was) admitted W where the burst said fewer
/// (a burst of 1 on 2 workers admitted 2). So below W the workers take
/// from one bucket: exact, for a lock shared across threads per accept in
/// that setting only. A worker's listeners (several addresses) take from
/// its one bucket: each used to have a bucket of the worker's share, and
/// two addresses admitted twice the rate.
#[derive(Debug)]
pub(crate) struct AcceptRateLimit {
    /// One per worker, or one for all (below W).
    buckets: Box<[Padded]>,
}

/// A bucket on a cache line of its own: one worker's accepts do not
/// invalidate its neighbour's.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(Mutex<TokenBucket>);

impl AcceptRateLimit {
    pub(crate) fn new(rate: AcceptRate, workers: usize) -> AcceptRateLimit {
        let workers = workers.max(1) as u32;
        let buckets = if rate.burst < workers {
            vec![TokenBucket::new(rate.per_second, rate.burst)]
        } else {
            let (each, rest) = (rate.burst / workers, rate.burst % workers);
            (0..workers)
                .map(|w| {
                    let burst = each + u32::from(w < rest);
                    TokenBucket::new(rate.per_second / f64::from(workers), burst)
                })
                .collect()
        };
        AcceptRateLimit {
            buckets: buckets.into_iter().map(|b| Padded(Mutex::new(b))).collect(),
        }
    }

    fn bucket(&self, worker: usize) -> std::sync::MutexGuard<'_, TokenBucket> {
        let Padded(bucket) = &self.buckets[worker % self.buckets.len()];
        bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token for a connection accepted by `worker`, if there is one.
    pub(crate) fn try_take(&self, worker: usize, now: Instant) -> bool {
        self.bucket(worker).try_take(now)
    }

    /// How long a refused client should wait before trying again, in
    /// whole seconds (HTTP's `Retry-After`): the time `worker`'s bucket
    /// takes to hold one token again, at least 1. Never 0: that says
    /// "now", and a client retrying at once only meets the empty bucket
    /// again. A second is also the rate's own unit: by then the server
    /// has admitted a second's worth more.
    /// At most an hour: a rate of 0 (or one a library caller set to
    /// nonsense, `AcceptRate::per_second` being a public `f64`) would
    /// otherwise say `Retry-After: 18446744073709551615`.
    pub(crate) fn retry_after_secs(&self, worker: usize) -> u64 {
        self.bucket(worker)
            .refill_one()
            .as_secs_f64()
            .ceil()
            .clamp(1.0, MAX_RETRY_AFTER_SECS) as u64
    }
}

/// The longest `Retry-After` a refusal says, in seconds.
const MAX_RETRY_AFTER_SECS: f64 = 3600.0;

/// Shards of the per-IP table: a worker locks one shard for one insert.
const SHARDS: usize = 64;

/// Concurrent connections per client IP (IPv6 per /64 prefix).
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    max: u32,
    shards: Box<[Mutex<HashMap<u128, u32>>]>,
}

impl PerIpLimit {
    pub(crate) fn new(max: u32) -> PerIpLimit {
        PerIpLimit {
            max: max.max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// IPv4 as itself, IPv6 by its /64 prefix.
    pub(crate) fn key(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(u32::from(v4)),
                None => (u128::from(v6) >> 64 << 64) | 1,
            },
        }
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, u32>> {
        let h = (key ^ (key >> 64)) as u64;
        let idx = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS;
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection from `ip` if it is under the limit.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> bool {
        let key = Self::key(ip);
        let mut shard = self.shard(key);
        let count = shard.entry(key).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// A connection from `ip` closed.
    pub(crate) fn release(&self, ip: IpAddr) {
        let key = Self::key(ip);
        let mut shard = self.shard(key);
        if let Some(count) = shard.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&key);
            }
        }
    }

    /// Distinct IPs with connections now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// A token bucket per client IP (IPv6: its /64): `per_second` new
/// connections, bursts of one second's worth (at least 1).
///
/// The table keeps an IP while its bucket is not full again: one that made
/// no connection for a burst's refill time is swept out when the table
/// doubles past its last sweep (at least [`PerIpRate::SWEEP_AT`] entries),
/// so it holds the IPs seen in about the last `burst / per_second`
/// seconds, a few dozen bytes each.
///
/// Bounded: at most [`PerIpRate::MAX_TRACKED`] IPs. Without it, a client
/// with many addresses (an IPv6 /48 holds 65,536 /64s, a /32 four
/// billion) grew it by one entry per connection, for as long as a bucket
/// takes to refill (100 s at 0.01 a second): at accept rates of tens of
/// thousands a second, hundreds of megabytes. At the bound, once a sweep
/// (at most one per [`PerIpRate::SWEEP_AT_BOUND_EVERY`], so that a full
/// table does not cost a sweep per connection) has found nothing to
/// forget, a connection from an IP not in the table takes the place of
/// one it forgets, the oldest it took in ([`Admitted::ForgotOne`],
/// counted and logged at accept; its bucket had the longest to refill):
/// no looser than the unbounded table, in
/// which every new IP got a fresh burst too, and no lockout. Refusing new
/// IPs instead (this session's first version) let one host with an IPv6
/// /48 keep the table full at ~65,536 × rate connections a second and
/// lock every other new client out for as long as it liked (merge
/// review); nginx's `limit_req` also drops its least recently used state
/// first. A table of
/// 65,536 entries of 64 bytes (a `u128` key and a [`TokenBucket`]) in
/// hashbrown's buckets (a control byte each, 131,072 of them at its 7/8
/// load) holds about 8.5 MB, and its order of arrival (`RateTable::order`)
/// 16 B an IP more, 1 MB (up to about three times that while it still
/// lists IPs a sweep forgot).
///
/// The oldest is found in O(1), from that order. Forgetting whichever
/// the map gave first (`keys().next()`, until session 43) scanned the
/// map's control bytes from its start, which each such removal left
/// emptier: past the bound a flood of new IPs cost 4–11 µs of the
/// table's lock each (a release build: 100,000 of them at 100,000 a
/// second, 0.4–1.1 s of CPU, every worker's TLS accepts waiting on the
/// lock meanwhile; `bench/H2TLS.md`).
#[derive(Debug)]
pub(crate) struct PerIpRate {
    per_second: f64,
    burst: u32,
    max_tracked: usize,
    table: Mutex<RateTable>,
}

#[derive(Debug)]
struct RateTable {
    buckets: HashMap<u128, TokenBucket>,
    /// The keys in the order they were taken in, oldest first: every key
    /// of `buckets`, and keys a sweep forgot (passed over when met) until
    /// a sweep finds the list over twice the table and cleans it. (An IP
    /// a sweep forgot that came back is listed twice until then: its older
    /// place, met first, forgets it early, as an arbitrary choice would.)
    order: VecDeque<u128>,
    sweep_at: usize,
    /// When it was last swept, for [`PerIpRate::SWEEP_AT_BOUND_EVERY`].
    swept: Option<Instant>,
}

/// Why [`PerIpRate::try_take`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OverIpRate {
    /// Its IP's bucket is empty: the rate, per second.
    Rate(f64),
}

/// Counted under the label of why.
impl From<OverIpRate> for LimitHit {
    fn from(over: OverIpRate) -> LimitHit {
        match over {
            OverIpRate::Rate(_) => LimitHit::TlsHandshakeRatePerIp,
        }
    }
}

/// How [`PerIpRate::try_take`] let a connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Its IP's bucket had a token.
    Metered,
    /// The table was at its bound, this many IPs, and its IP not in it:
    /// one other IP's bucket was forgotten to make room (counted as
    /// `tls_handshake_rate_table`).
    ForgotOne(usize),
}

impl PerIpRate {
    /// The fewest entries at which the table is swept.
    const SWEEP_AT: usize = 1024;

    /// The most IPs the table keeps (see [`PerIpRate`]): an IPv6 /48's
    /// worth of /64s.
    pub(crate) const MAX_TRACKED: usize = 65_536;

    /// How often a table at its bound may be swept again.
    const SWEEP_AT_BOUND_EVERY: Duration = Duration::from_millis(100);

    pub(crate) fn new(per_second: f64) -> PerIpRate {
        PerIpRate::bounded(per_second, Self::MAX_TRACKED)
    }

    /// At most `max_tracked` IPs.
    fn bounded(per_second: f64, max_tracked: usize) -> PerIpRate {
        PerIpRate {
            per_second,
            burst: per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
            max_tracked: max_tracked.max(1),
            table: Mutex::new(RateTable {
                buckets: HashMap::new(),
                order: VecDeque::new(),
                sweep_at: Self::SWEEP_AT.min(max_tracked.max(1)),
                swept: None,
            }),
        }
    }

    /// The rate, per second.
    pub(crate) fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes a token for a connection from `ip`, if its bucket has one.
    pub(crate) fn try_take(&self, ip: IpAddr, now: Instant) -> Result<Admitted, OverIpRate> {
        let key = PerIpLimit::key(ip);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let full = table.buckets.len() >= self.max_tracked;
        if table.buckets.len() >= table.sweep_at
            && !(full
                && table
                    .swept
                    .is_some_and(|t| now < t + Self::SWEEP_AT_BOUND_EVERY))
            && !table.buckets.contains_key(&key)
        {
            let burst = f64::from(self.burst);
            table.buckets.retain(|_, b| {
                // What `try_take` would refill to: full means forgotten.
                let refilled =
                    b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * b.rate;
                refilled < burst
            });
            // The order keeps what the sweep forgot (passed over when met
            // at its front) until that is most of it: then each key still
            // tracked keeps its first place only, and the list is the
            // table's length again (an IP that a sweep forgets and that
            // comes back, over and over, would otherwise grow it).
            if table.order.len() > table.buckets.len() * 2 {
                let RateTable { buckets, order, .. } = &mut *table;
                let mut listed = HashSet::with_capacity(buckets.len());
                order.retain(|k| buckets.contains_key(k) && listed.insert(*k));
                order.shrink_to(buckets.len() * 2);
            }
            table.sweep_at = (table.buckets.len() * 2)
                .max(Self::SWEEP_AT)
                .min(self.max_tracked);
            table.swept = Some(now);
        }
        let mut admitted = Admitted::Metered;
        let known = table.buckets.contains_key(&key);
        if !known && table.buckets.len() >= self.max_tracked {
            // The oldest still in the table (those a sweep forgot are
            // passed over: each key is met once, so this is O(1) a
            // connection, taken over all).
            while let Some(old) = table.order.pop_front() {
                if table.buckets.remove(&old).is_some() {
                    break;
                }
            }
            admitted = Admitted::ForgotOne(self.max_tracked);
        }
        if !known {
            table.order.push_back(key);
        }
        let (rate, burst) = (self.per_second, self.burst);
        let bucket = table
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, burst));
        if bucket.try_take(now) {
            Ok(admitted)
        } else {
            Err(OverIpRate::Rate(self.per_second))
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().buckets.len()
    }
}

/// Which admission limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    AcceptRate,
    PerIp,
}

/// What a client refused on the listener at an address is told, made by
/// the server, which knows the listener's protocol (`server/dispatch.rs`):
/// the answer for a `Retry-After` of that many seconds, or `None` to close
/// without a word (a TLS listener, whose client expects a handshake; a
/// framed one, whose protocol has no refusal): [`Answer::silent`].
pub(crate) type RefusalAnswer = fn(&Config, SocketAddr, u64) -> Option<Answer>;

/// The bytes a refused client is sent ([`refuse`]), made once per listener.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Sent unless `by_opening` applies (HTTP/1.1's `503`).
    pub(crate) bytes: Box<[u8]>,
    /// Sent instead to a client whose first bytes, already received when
    /// it is refused, begin with the first slice: an HTTP/2 client with
    /// prior knowledge (its preface's first line), which reads a `503` as
    /// a protocol error, is sent a `GOAWAY`. A client whose first bytes
    /// have not arrived (or not that many of them) gets `bytes`: nothing
    /// waits for them.
    pub(crate) by_opening: Option<(&'static [u8], Box<[u8]>)>,
}

/// The longest opening [`Answer::by_opening`] may look for (read into the
/// stack).
const OPENING_MAX: usize = 32;

/// `Retry-After` of a client refused by the per-IP limit: a place comes
/// back when one of its own connections closes, which the server cannot
/// foresee; 1 s is the shortest wait the header says other than 0 ("at
/// once"), which would have a client that retries loop against the limit.
pub(crate) const PER_IP_RETRY_AFTER_SECS: u64 = 1;

/// Most bytes of a refused client's request discarded before the close
/// ([`refuse`]): a request head's worth, many times over.
const DISCARD_MAX: usize = 64 * 1024;

/// Refuses an accepted connection: sends `answer`, if any, then closes it.
/// One non-blocking `send` on the fresh socket (its send buffer is empty,
/// so a short answer goes whole); if it would block or fails, the close
/// alone. Nothing waits: the descriptor is closed before this returns and
/// the kernel alone sees the answer out, except when the answer depends on
/// the client's first bytes and they have not arrived: then the socket is
/// returned, for [`Undecided`] to answer when they do.
///
/// Which answer ([`Answer::by_opening`]): when the answer has one for a
/// given opening, one non-blocking `recv(MSG_PEEK)` first looks at the
/// client's first bytes (with `TCP_DEFER_ACCEPT` they are always there;
/// without it a client that writes at once usually wins the race to the
/// accept, but not always). The opening: its answer; anything else (or
/// the end of the stream): `bytes`; none yet, or the opening's first few
/// only: undecided.
///
/// The order keeps the answer from being reset away: the write side is
/// shut first, so our FIN follows the answer at once; then what the
/// client sent so far (its request) is discarded, since closing a socket
/// with unread bytes in its receive queue sends an RST instead of a FIN
/// (`tcp_close`) and drops what of the answer is still queued. Bytes that
/// arrive after the close still draw an RST, but behind the answer and the
/// FIN, which a Linux client reads first. Measured (2026-12-05, loopback,
/// a debug build, 100 curl and 100 Python `http.client` requests over the
/// per-IP limit, in a network namespace of their own for `nstat`): every
/// one read the `503` either way, but closing straight after the send
/// reset 192–194 of 200 (`TcpExtTCPAbortOnClose`: the request had come
/// in by the accept), shutting the write side first 23–36, and with the
/// discard 0 (6–10 RSTs for bytes that came after the close). A Linux
/// client keeps what it received before an RST; a Windows one drops it.
/// A client still sending a large body when the answer comes sees its
/// send fail (a broken pipe) whatever the order: only a lingering close,
/// which holds the socket, would spare it that.
#[must_use = "an undecided refusal is answered by `Undecided`, or closed unanswered"]
pub(crate) fn refuse(socket: OwnedFd, answer: &Answer) -> Option<OwnedFd> {
    match answer.choose(socket.as_raw_fd()) {
        Some(bytes) => {
            send_then_shut(socket.as_raw_fd(), bytes);
            None
        }
        None => Some(socket),
    }
}

impl Answer {
    /// No answer, only a close (a TLS listener's, a framed one's): a FIN
    /// once the client's first bytes are in (see [`Answer::choose`]).
    pub(crate) fn silent() -> Answer {
        Answer {
            bytes: Box::default(),
            by_opening: None,
        }
    }

    /// What to send on `fd` now, or `None` to wait for the client's first
    /// bytes: an answer by opening whose opening has not (all) come, or a
    /// silent one with nothing come yet. A silent refusal waits so that its
    /// close is a FIN: bytes that arrive on a closed socket draw a reset
    /// (`tcp_close`), and a client's first flight (a ClientHello) usually
    /// comes right behind its handshake's ACK, often after the accept.
    pub(crate) fn choose(&self, fd: std::os::fd::RawFd) -> Option<&[u8]> {
        match &self.by_opening {
            Some((opening, other)) => match first_bytes(fd, opening) {
                Opening::Is => Some(other),
                Opening::IsNot => Some(&self.bytes),
                Opening::NotYet => None,
            },
            None if self.bytes.is_empty() => {
                (first_bytes(fd, b"") != Opening::NotYet).then_some(&self.bytes)
            }
            None => Some(&self.bytes),
        }
    }
}

/// Answers a refused `fd` now by what its client sent so far: with
/// nothing yet, or part of the opening only, the default answer.
fn answer_now(fd: std::os::fd::RawFd, answer: &Answer) {
    send_then_shut(fd, answer.choose(fd).unwrap_or(&answer.bytes));
}

/// Sends `bytes` on `fd` without waiting, then, if they all went, shuts
/// and discards ([`shut_and_discard`]) before the caller closes.
pub(crate) fn send_then_shut(fd: std::os::fd::RawFd, bytes: &[u8]) {
    // SAFETY: a send from a live buffer of its length on our descriptor.
    let sent = !bytes.is_empty()
        && usize::try_from(unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }) == Ok(bytes.len());
    if bytes.is_empty() || sent {
        shut_and_discard(fd);
    }
}

/// Before a close: shuts `fd`'s write side (a FIN) and discards, without
/// waiting, what the client sent so far, so that the close that follows
/// is not a reset (closing with unread bytes sends an RST, `tcp_close`).
/// Bytes that arrive later still draw one, behind the FIN ([`refuse`]).
pub(crate) fn shut_and_discard(fd: std::os::fd::RawFd) {
    // SAFETY: plain calls on our descriptor. With MSG_TRUNC, TCP discards
    // the bytes without writing to the buffer (tcp(7)): none is passed.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
        libc::recv(
            fd,
            std::ptr::null_mut(),
            DISCARD_MAX,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        );
    }
}

/// What a refused client's first bytes say of its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// They begin with the opening looked for.
    Is,
    /// They do not (or the client closed, or the socket failed).
    IsNot,
    /// None yet, or fewer than the opening has and all of them its own.
    NotYet,
}

/// Looks at the first bytes received on `fd` without waiting and without
/// taking them (a peek: they are discarded with the rest before the
/// close, and a partial opening must still be there when the rest comes).
/// An empty `opening` asks whether any byte came: one is peeked.
fn first_bytes(fd: std::os::fd::RawFd, opening: &[u8]) -> Opening {
    let mut first = [0u8; OPENING_MAX];
    let len = opening.len().clamp(1, OPENING_MAX);
    // SAFETY: a recv into a live stack buffer of at least `len` bytes, on
    // our descriptor, that never blocks.
    let read = unsafe {
        libc::recv(
            fd,
            first.as_mut_ptr().cast(),
            len,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    let Ok(read) = usize::try_from(read) else {
        let would_block = std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
        return if would_block {
            Opening::NotYet
        } else {
            Opening::IsNot
        };
    };
    let opening = &opening[..opening.len().min(OPENING_MAX)];
    if read == 0 || !opening.starts_with(&first[..read.min(opening.len())]) {
        Opening::IsNot
    } else if read >= opening.len() {
        Opening::Is
    } else {
        Opening::NotYet
    }
}

/// Most refusals one accept loop keeps waiting for their client's first
/// bytes ([`Undecided`]); past it the oldest is answered at once.
pub(crate) const UNDECIDED_MAX: usize = 64;

/// Which bound on waiting refusals had one answered at once, without
/// waiting for its client's first bytes ([`Undecided::add`]), and the
/// setting that refused the one answered (`knob`, for the log line: the
/// operator's next step is to raise it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// The server's accept loops' together ([`undecided_max`], given): the
    /// refusal being added was answered at once.
    Server(usize, &'static str),
    /// Its accept loop's own ([`UNDECIDED_MAX`]): the oldest one waiting
    /// was answered at once to make room; `knob` is the one that refused
    /// it, which may not be the newest's (the line named the newest's
    /// until session 45). Reached first with fewer than 16 accept loops
    /// (`UNDECIDED_SERVER_MAX` / `UNDECIDED_MAX`), where it used to go
    /// uncounted.
    Loop(usize, &'static str),
}

/// Most refusals a server's accept loops keep waiting together
/// ([`Undecided`]) under an open-file limit of `open_files`, with
/// `max_connections` (the process's own) and `fd_reserve` descriptors kept
/// free: half the room the connections and the reserve leave below the
/// limit, at most [`UNDECIDED_SERVER_MAX`]; 0 (none waits, each is
/// answered at once) when they leave none. At the default
/// `max_connections` (the limit less [`FD_HEADROOM`](crate::conn::config::FD_HEADROOM)) and reserve, 112.
///
/// Their descriptors count against no connection slot (a refused
/// connection's is given back at once): 64 per accept loop alone, times
/// the workers and listeners, outgrew the room, and real accepts met
/// `EMFILE` with one connection open. The other half of the room is the
/// process's own (its runtimes, listeners, log file). Computed from the
/// actual room, not from [`FD_HEADROOM`](crate::conn::config::FD_HEADROOM): with `max_connections` raised
/// above its default, the headroom's half still let 112 wait in room the
/// connections need, and a server full of real clients met `EMFILE`
/// while a flood's refusals waited for their first bytes.
pub(crate) fn undecided_max(open_files: usize, max_connections: usize, fd_reserve: usize) -> usize {
    (open_files
        .saturating_sub(max_connections)
        .saturating_sub(fd_reserve)
        / 2)
    .min(UNDECIDED_SERVER_MAX)
}

/// The most refusals a server keeps waiting together, however much room
/// the open-file limit leaves ([`undecided_max`]): a socket and an epoll
/// registration each, for a second at most; 16 accept loops' worth of
/// [`UNDECIDED_MAX`].
pub(crate) const UNDECIDED_SERVER_MAX: usize = 1024;

/// How long a refusal waits for its client's first bytes ([`Undecided`]):
/// a client that speaks first sends them right behind its handshake's ACK,
/// so they are usually there in microseconds; a second also covers a lost
/// segment's retransmission (Linux's shortest RTO is 200 ms).
pub(crate) const UNDECIDED_WAIT: Duration = Duration::from_secs(1);

/// Refused connections whose answer depends on first bytes that had not
/// arrived when they were refused ([`refuse`]): on a cleartext listener
/// that serves HTTP/2 with prior knowledge, an HTTP/1.1 client is told
/// `503` and an HTTP/2 one `GOAWAY`, and each reads the other's answer as
/// garbage (the `h2` client's connection ended in a broken pipe, its
/// request with it, nothing saying it was safe to retry); a silent
/// refusal's close (a TLS listener's) is a FIN only if the client's first
/// flight came before it (one arriving on a closed socket draws a reset).
/// A client's first bytes follow its handshake's ACK, and an accept can
/// come between them.
///
/// Each waits until its first bytes say which answer (the socket is
/// registered with the runtime for readability), at most
/// [`UNDECIDED_WAIT`]; a silent one is then given the default answer
/// (`Answer::bytes`). Bounded for the overload path: at most
/// [`UNDECIDED_MAX`] of one accept loop, past which the oldest is answered
/// at once (by what it sent so far, else the default), and polled by the
/// accept loop's own task (no task of its own, no timer per entry): a
/// flood of silent connections over a limit costs what it did, plus two
/// `epoll_ctl`s a connection. Their descriptors count against no slot
/// (their connections are counted closed when refused), so the server's
/// accept loops together keep at most [`undecided_max`] waiting, past
/// which a refusal is answered at once. An HTTP/1.1 client also gains: its `503`
/// now follows its request, which is then discarded before the close, so
/// the close is a FIN, not the reset its request drew when it came after.
pub(crate) struct Undecided<'a> {
    waiting: RefCell<VecDeque<Waiting<'a>>>,
    /// The server's accept loops' count of waiting refusals, together, and
    /// its bound ([`undecided_max`]).
    in_server: &'a AtomicUsize,
    max_in_server: usize,
    /// The accept loop's task, woken when one is added.
    task: RefCell<Option<Waker>>,
    /// Fires at the oldest one's deadline.
    timer: RefCell<Pin<Box<Sleep>>>,
}

struct Waiting<'a> {
    socket: AsyncFd<OwnedFd>,
    answer: &'a Answer,
    /// The setting that refused it ([`Bound::Loop`] names it).
    knob: &'static str,
    until: Instant,
    _place: Place<'a>,
}

/// A place among the server's waiting refusals, given back when dropped.
struct Place<'a>(&'a AtomicUsize);

impl<'a> Place<'a> {
    /// One if fewer than `max` are taken.
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Place<'a>> {
        count
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Place(count))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl<'a> Undecided<'a> {
    /// An accept loop's, counted in `in_server` (its server's accept
    /// loops' together) with at most `max_in_server` there.
    pub(crate) fn new(in_server: &'a AtomicUsize, max_in_server: usize) -> Undecided<'a> {
        Undecided {
            waiting: RefCell::new(VecDeque::new()),
            in_server,
            max_in_server,
            task: RefCell::new(None),
            timer: RefCell::new(Box::pin(tokio::time::sleep(Duration::ZERO))),
        }
    }

    /// Keeps `socket`, refused with `answer` ([`refuse`] returned it), until
    /// its first bytes say which answer it gets. At the server's bound
    /// ([`undecided_max`], given as `max_in_server`) it is answered at once
    /// instead; at the loop's ([`UNDECIDED_MAX`]) the oldest waiting is.
    /// Either way `at_bound` is called first, with the bound and the
    /// answered one's `knob` (to count and log it before the client can
    /// read its answer). `knob`: the setting that refused `socket`.
    pub(crate) fn add(
        &self,
        socket: OwnedFd,
        answer: &'a Answer,
        knob: &'static str,
        at_bound: impl FnOnce(Bound),
    ) {
        let Some(place) = Place::take(self.in_server, self.max_in_server) else {
            // The server's bound: answered at once, by what it sent so far,
            // as before there was a wait.
            at_bound(Bound::Server(self.max_in_server, knob));
            return answer_now(socket.as_raw_fd(), answer);
        };
        // SAFETY: an OwnedFd owns its descriptor, open and unchanged for as
        // long as the AsyncFd holds it.
        let registered =
            unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) };
        let socket = match registered {
            Ok(socket) => socket,
            // Not registered (the runtime's error, e.g. out of memory): the
            // default answer at once, as before there was a wait.
            Err(e) => {
                let (socket, e) = e.into_parts();
                tracing::debug!(error = %e, "a refused connection answered without waiting");
                return send_then_shut(socket.as_raw_fd(), &answer.bytes);
            }
        };
        let mut waiting = self.waiting.borrow_mut();
        waiting.push_back(Waiting {
            socket,
            answer,
            knob,
            until: Instant::now() + UNDECIDED_WAIT,
            _place: place,
        });
        if waiting.len() > UNDECIDED_MAX {
            if let Some(oldest) = waiting.pop_front() {
                at_bound(Bound::Loop(UNDECIDED_MAX, oldest.knob));
                oldest.settle();
            }
        }
        if let Some(task) = self.task.borrow_mut().take() {
            task.wake();
        }
    }

    /// Answers each one as its first bytes come or its wait ends; runs for
    /// as long as the accept loop (polled beside it, in its task).
    pub(crate) async fn run(&self) {
        std::future::poll_fn(|cx| self.poll(cx)).await;
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let mut waiting = self.waiting.borrow_mut();
        // Answered and dropped (deregistered, closed) when ready.
        let mut i = 0;
        while i < waiting.len() {
            if waiting[i].poll(cx, now).is_ready() {
                if let Some(ready) = waiting.remove(i) {
                    ready.settle();
                }
            } else {
                i += 1;
            }
        }
        if let Some(oldest) = waiting.front() {
            let mut timer = self.timer.borrow_mut();
            if timer.deadline() != oldest.until {
                timer.as_mut().reset(oldest.until);
            }
            // Ready only at or after the oldest one's deadline, which the
            // retain above already answered: polled to be woken.
            let _ = timer.as_mut().poll(cx);
        }
        *self.task.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// The accept loop ends (its task aborted at shutdown or at an upgrade's
/// hand-over, `server/worker.rs`): each one still waiting is answered by
/// what it sent so far, as at its deadline, not closed with no answer.
impl Drop for Undecided<'_> {
    fn drop(&mut self) {
        for waiting in self.waiting.get_mut().drain(..) {
            waiting.settle();
        }
    }
}

impl Waiting<'_> {
    /// Ready when its first bytes have come or its wait is over.
    fn poll(&self, cx: &mut Context<'_>, now: Instant) -> Poll<()> {
        if now >= self.until {
            return Poll::Ready(());
        }
        loop {
            match self.socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(mut ready)) => {
                    if self
                        .answer
                        .choose(self.socket.get_ref().as_raw_fd())
                        .is_some()
                    {
                        return Poll::Ready(());
                    }
                    // The client's FIN came behind part of the opening:
                    // no more will come, and tokio never clears a
                    // read-closed readiness, so waiting on would peek the
                    // same bytes in a spin until the deadline. Settled now
                    // (the default answer).
                    if ready.ready().is_read_closed() {
                        return Poll::Ready(());
                    }
                    // The opening's first bytes only: wait for more.
                    ready.clear_ready();
                }
            }
        }
    }

    /// Answers by what the client sent so far: with nothing yet (its wait
    /// is over, or it made room for a newer one), or part of the opening
    /// only, the default answer. Dropped after: deregistered and closed.
    fn settle(self) {
        answer_now(self.socket.get_ref().as_raw_fd(), self.answer);
    }
}

impl Refusal {
    /// The setting that refused it, for the log line (the operator's next
    /// step is to raise it).
    pub(crate) fn knob(self) -> &'static str {
        match self {
            Refusal::AcceptRate => "accept_rate",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused connection's metric label is the setting its log line
    /// names (`megaconn_connections_rejected_total{limit}`): the per-IP one
    /// was `per_ip` beside a line naming `max_connections_per_ip`.
    #[test]
    fn the_rejected_label_is_the_setting_the_line_names() {
        let knobs = [Refusal::AcceptRate.knob(), Refusal::PerIp.knob()];
        assert_eq!(crate::observe::metrics::REJECTED_LABELS, knobs);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(10.0, 3);
        let now = Instant::now();
        assert!(b.try_take(now) && b.try_take(now) && b.try_take(now));
        assert!(!b.try_take(now));
        assert_eq!(b.until_next(), std::time::Duration::from_millis(100));
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(b.try_take(Instant::now()));
        assert!(!b.try_take(Instant::now()));
    }

    /// At least W tokens of burst: a bucket per worker, the remainder one
    /// more each for the first; below W, one bucket for all, exact.
    #[tokio::test(start_paused = true)]
    async fn the_accept_rate_splits_over_the_workers_only_when_it_can() {
        let now = Instant::now();
        let rate = |burst| AcceptRate {
            per_second: 4.0,
            burst,
        };
        let split = AcceptRateLimit::new(rate(5), 2);
        let taken = |l: &AcceptRateLimit, w| (0..10).filter(|_| l.try_take(w, now)).count();
        assert_eq!((taken(&split, 0), taken(&split, 1)), (3, 2));
        // Each refills at 2 a second: a token in 1 s, said as 1.
        assert_eq!(split.retry_after_secs(0), 1);
        let shared = AcceptRateLimit::new(rate(1), 2);
        assert_eq!(taken(&shared, 1), 1);
        assert_eq!(taken(&shared, 0), 0, "the one token went to worker 1");
        let slow = AcceptRateLimit::new(
            AcceptRate {
                per_second: 0.1,
                burst: 4,
            },
            2,
        );
        assert_eq!(slow.retry_after_secs(1), 20, "0.05 a second each");
        // A rate of nothing (a library caller's) says an hour, not u64::MAX.
        for per_second in [0.0, -1.0, f64::NAN] {
            let never = AcceptRateLimit::new(
                AcceptRate {
                    per_second,
                    burst: 4,
                },
                2,
            );
            assert_eq!(never.retry_after_secs(0), 3600, "{per_second}");
        }
    }

    #[test]
    fn per_ip_rate_takes_per_ip_and_forgets_full_buckets() {
        let start = Instant::now();
        let l = PerIpRate::new(2.0);
        let take = |ip, at| l.try_take(ip, at).is_ok();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert!(take(a, start) && take(a, start));
        assert_eq!(
            l.try_take(a, start),
            Err(OverIpRate::Rate(2.0)),
            "a burst of one second's worth"
        );
        assert!(take(b, start) && take(b_same_64, start));
        assert!(!take(b, start), "IPv6 counts per /64");
        assert!(take(a, start + Duration::from_millis(500)));
        // Two seconds later a's and b's buckets are full again: the sweep
        // when the table reaches its size drops them, and keeps the new
        // IPs, whose buckets each gave a token just now.
        let later = start + Duration::from_secs(2);
        for i in 0..PerIpRate::SWEEP_AT as u32 {
            assert!(take(IpAddr::from((0x0b00_0000 + i).to_be_bytes()), later));
        }
        assert_eq!(
            l.tracked(),
            PerIpRate::SWEEP_AT,
            "2 + {} - 2",
            PerIpRate::SWEEP_AT
        );
        // Below one a second: a burst of 1.
        let slow = PerIpRate::new(0.01);
        assert!(slow.try_take(a, start).is_ok() && slow.try_take(a, start).is_err());
    }

    /// The table holds at most its bound: a new IP past it takes the place
    /// of one it forgets (`ForgotOne`, which accept counts and logs), never
    /// refused for it, and once a sweep (at most one per
    /// `SWEEP_AT_BOUND_EVERY`) finds buckets full again, they are all
    /// forgotten. Unbounded, 2,000 IPs held 2,000 entries.
    #[test]
    fn per_ip_rate_table_is_bounded() {
        let start = Instant::now();
        let l = PerIpRate::bounded(0.5, 1500);
        let ip = |i: u32| IpAddr::from((0x0b00_0000 + i).to_be_bytes());
        // IPv6 too: one /48's /64s, each its own key.
        let v6 = |i: u16| IpAddr::from([0x2001, 0xdb8, 0, i, 0, 0, 0, 1]);
        for i in 0..1000 {
            assert_eq!(l.try_take(ip(i), start), Ok(Admitted::Metered));
        }
        for i in 0..1000 {
            let took = l.try_take(v6(i), start);
            if i < 500 {
                assert_eq!(took, Ok(Admitted::Metered), "{i}");
            } else {
                assert_eq!(took, Ok(Admitted::ForgotOne(1500)), "{i}");
            }
        }
        assert_eq!(l.tracked(), 1500);
        assert_eq!(
            l.try_take(v6(999), start),
            Err(OverIpRate::Rate(0.5)),
            "an IP in the table is metered as before"
        );
        // Three seconds on (a burst of 1 at 0.5 a second refills in 2 s):
        // every bucket is full again, and the next sweep forgets them, but
        // one within SWEEP_AT_BOUND_EVERY of the last does not run (a new
        // IP then takes one's place).
        let soon = start + PerIpRate::SWEEP_AT_BOUND_EVERY / 2;
        assert_eq!(l.try_take(v6(1001), soon), Ok(Admitted::ForgotOne(1500)));
        assert_eq!(l.tracked(), 1500);
        let later = start + Duration::from_secs(3);
        assert_eq!(l.try_take(v6(1002), later), Ok(Admitted::Metered));
        assert_eq!(l.tracked(), 1);
        // The entry the bound's memory figure (`PerIpRate`) counts.
        assert_eq!(std::mem::size_of::<(u128, TokenBucket)>(), 64);
    }

    /// At its bound the table forgets the oldest IP it took in, one per new
    /// IP, whatever the map's order: the first IP's next connection is a
    /// new IP's (a fresh bucket, taking the second's place), the third is
    /// still metered. (It forgot whichever the map gave first, by scanning
    /// its control bytes from the start: 4-11 µs a connection in a flood
    /// past the bound, `bench/H2TLS.md`.)
    #[test]
    fn at_its_bound_the_table_forgets_the_oldest_ip() {
        let start = Instant::now();
        let l = PerIpRate::bounded(0.5, 1500);
        let ip = |i: u32| IpAddr::from((0x0b00_0000 + i).to_be_bytes());
        for i in 0..1500 {
            assert_eq!(l.try_take(ip(i), start), Ok(Admitted::Metered));
        }
        assert_eq!(l.try_take(ip(1500), start), Ok(Admitted::ForgotOne(1500)));
        assert_eq!(
            l.try_take(ip(0), start),
            Ok(Admitted::ForgotOne(1500)),
            "the oldest was forgotten: a fresh bucket"
        );
        assert_eq!(
            l.try_take(ip(2), start),
            Err(OverIpRate::Rate(0.5)),
            "the third oldest is still metered"
        );
        assert_eq!(
            l.try_take(ip(1), start),
            Ok(Admitted::ForgotOne(1500)),
            "the second went for ip 0"
        );
        let table = l.table.lock().unwrap();
        assert_eq!((table.buckets.len(), table.order.len()), (1500, 1500));
    }

    /// A cleartext listener's answers: `503`, or `GOAWAY` to a client whose
    /// first bytes are `opening`.
    fn h2c_answer(opening: &'static [u8]) -> Answer {
        Answer {
            bytes: Box::from(&b"503"[..]),
            by_opening: Some((opening, Box::from(&b"GOAWAY"[..]))),
        }
    }

    /// A client of `listener`, refused before its first bytes and kept
    /// waiting in `undecided`.
    fn waiting_refusal<'a>(
        listener: &std::net::TcpListener,
        undecided: &Undecided<'a>,
        answer: &'a Answer,
    ) -> std::net::TcpStream {
        refused_into(listener, undecided, (answer, "max_connections"), |bound| {
            panic!("at a bound: {bound:?}")
        })
    }

    /// [`waiting_refusal`], refused by `knob`, `at_bound` called if it (or
    /// the oldest one waiting) is answered at a bound.
    fn refused_into<'a>(
        listener: &std::net::TcpListener,
        undecided: &Undecided<'a>,
        (answer, knob): (&'a Answer, &'static str),
        at_bound: impl FnOnce(Bound),
    ) -> std::net::TcpStream {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = refuse(OwnedFd::from(socket), answer).expect("no bytes yet");
        undecided.add(socket, answer, knob, at_bound);
        client
    }

    /// A client that sends part of the opening and then its FIN: the socket
    /// stays readable (tokio never clears a read-closed readiness) and the
    /// peek sees the same partial opening each time, so the wait would poll
    /// the accept loop's task in a spin until its deadline. Settled by the
    /// FIN instead: the default answer at once, in a few polls.
    #[tokio::test]
    async fn a_partial_opening_then_fin_does_not_spin() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let answer = h2c_answer(b"PRI * HTTP/2.0");
        let in_server = AtomicUsize::new(0);
        let undecided = Undecided::new(&in_server, usize::MAX);
        let mut client = waiting_refusal(&listener, &undecided, &answer);
        client.write_all(b"PR").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        // Polled until the entry is settled (by the FIN, or at the latest
        // by its deadline): a count of polls, not of time.
        let mut polls = 0u64;
        let settled = std::future::poll_fn(|cx| {
            polls += 1;
            let _ = undecided.poll(cx);
            if undecided.len() == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(UNDECIDED_WAIT * 10, settled)
            .await
            .expect("settled by its deadline at the latest");
        assert!(
            polls < 100,
            "the accept loop's task was polled {polls} times"
        );
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"503");
    }

    /// The accept loop's end (shutdown, an upgrade) answers the refusals
    /// still waiting, by what they sent so far: closed with no answer, an
    /// HTTP/1.1 client read an empty response.
    #[tokio::test]
    async fn refusals_still_waiting_are_answered_when_the_loop_ends() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let answer = h2c_answer(b"PRI * HTTP/2.0");
        let in_server = AtomicUsize::new(0);
        let undecided = Undecided::new(&in_server, usize::MAX);
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(waiting_refusal(&listener, &undecided, &answer));
        }
        clients[1].write_all(b"PRI").unwrap();
        drop(undecided);
        for client in &mut clients {
            let mut out = Vec::new();
            client.read_to_end(&mut out).unwrap();
            assert_eq!(out, b"503", "silent, and part of the opening only");
        }
    }

    /// The bound on waiting refusals is half the room `max_connections`
    /// and the reserve leave below the open-file limit, whatever
    /// `max_connections` is (it was half of `FD_HEADROOM` less the
    /// reserve, the default's room, 112 even with no room at all), and at
    /// most [`UNDECIDED_SERVER_MAX`].
    #[test]
    fn the_bound_on_waiting_refusals_is_half_the_room_left() {
        use crate::conn::config::FD_HEADROOM;
        let reserve = crate::DEFAULT_FD_RESERVE;
        let default_max = |files: usize| files - FD_HEADROOM;
        for files in [1024, 20_000, 1_048_576] {
            assert_eq!(undecided_max(files, default_max(files), reserve), 112);
        }
        assert_eq!(undecided_max(20_000, 19_900, reserve), 34, "(100 - 32) / 2");
        assert_eq!(undecided_max(20_000, 20_000 - reserve, reserve), 0);
        assert_eq!(
            undecided_max(20_000, 20_000, reserve),
            0,
            "no room: none waits"
        );
        assert_eq!(undecided_max(20_000, 50_000, reserve), 0, "over the limit");
        assert_eq!(undecided_max(20_000, 19_000, 0), 500);
        assert_eq!(
            undecided_max(1_048_576, 10_000, reserve),
            UNDECIDED_SERVER_MAX,
            "bounded however much room"
        );
    }

    /// The server's accept loops together keep at most their bound waiting
    /// ([`undecided_max`]): past it a refusal is answered at once (and the
    /// caller told, to count and log it), and a place given back (here by
    /// a loop's end) lets the next one wait.
    #[tokio::test]
    async fn waiting_refusals_are_bounded_server_wide() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let answer = h2c_answer(b"PRI");
        let in_server = AtomicUsize::new(0);
        let (one, other) = (Undecided::new(&in_server, 3), Undecided::new(&in_server, 3));
        let mut clients: Vec<_> = [&one, &one, &other]
            .into_iter()
            .map(|undecided| waiting_refusal(&listener, undecided, &answer))
            .collect();
        let mut told = None;
        let by = (&answer, "accept_rate");
        clients.push(refused_into(&listener, &other, by, |bound| {
            told = Some(bound)
        }));
        assert_eq!(
            told,
            Some(Bound::Server(3, "accept_rate")),
            "at the bound: told, with the bound and its knob"
        );
        assert_eq!((one.len(), other.len()), (2, 1));
        assert_eq!(in_server.load(Relaxed), 3);
        let mut out = Vec::new();
        clients[3].read_to_end(&mut out).unwrap();
        assert_eq!(out, b"503", "over the bound: answered at once");
        drop(one);
        assert_eq!(in_server.load(Relaxed), 1, "places given back");
        clients.push(waiting_refusal(&listener, &other, &answer));
        assert_eq!(other.len(), 2);
        drop(other);
        assert_eq!(in_server.load(Relaxed), 0);
    }

    /// Refusals whose answer waits for the client's first bytes: answered
    /// by them when they come (all of the opening, or not it from its
    /// first byte), by the default when none came within
    /// [`UNDECIDED_WAIT`], and never more than [`UNDECIDED_MAX`] waiting
    /// (the oldest answered at once, and the caller told so, to count and
    /// log it: it was answered uncounted, session 43's finding), naming
    /// the setting that refused the oldest, not the newest's (session 45).
    #[tokio::test(start_paused = true)]
    async fn undecided_refusals_wait_bounded_for_their_first_bytes() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let answer = h2c_answer(b"PRI");
        let in_server = AtomicUsize::new(0);
        let undecided = Undecided::new(&in_server, usize::MAX);
        let mut clients = Vec::new();
        let mut told = Vec::new();
        for i in 0..=UNDECIDED_MAX {
            let knob = if i == 0 {
                "accept_rate"
            } else {
                "max_connections"
            };
            clients.push(refused_into(&listener, &undecided, (&answer, knob), |b| {
                told.push(b)
            }));
        }
        assert_eq!(undecided.len(), UNDECIDED_MAX);
        assert_eq!(
            told,
            [Bound::Loop(UNDECIDED_MAX, "accept_rate")],
            "the oldest answered early at the loop's bound: told once, by its own knob"
        );
        let answered = |client: &mut std::net::TcpStream| {
            let mut out = Vec::new();
            client.read_to_end(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(answered(&mut clients[0]), "503", "the oldest made room");
        clients[1].write_all(b"PRI * HTTP/2.0").unwrap();
        clients[2].write_all(b"GET / HTTP/1.1").unwrap();
        clients[3].write_all(b"PR").unwrap();
        let running = undecided.run();
        tokio::pin!(running);
        let run_for = |wait| async move { tokio::time::sleep(wait).await };
        tokio::select! {
            () = &mut running => unreachable!(),
            () = run_for(UNDECIDED_WAIT / 4) => {}
        }
        assert_eq!(answered(&mut clients[1]), "GOAWAY");
        assert_eq!(answered(&mut clients[2]), "503");
        assert_eq!(
            undecided.len(),
            UNDECIDED_MAX - 2,
            "a partial opening waits"
        );
        clients[3].write_all(b"I").unwrap();
        tokio::select! {
            () = &mut running => unreachable!(),
            () = run_for(UNDECIDED_WAIT / 4) => {}
        }
        assert_eq!(answered(&mut clients[3]), "GOAWAY");
        tokio::select! {
            () = &mut running => unreachable!(),
            () = run_for(UNDECIDED_WAIT) => {}
        }
        assert_eq!(undecided.len(), 0, "the silent ones' wait is over");
        assert_eq!(answered(&mut clients[4]), "503");
        assert_eq!(answered(&mut clients[UNDECIDED_MAX]), "503");
    }

    /// IPv6 /64 number `i` of one /32: a key of its own each.
    fn v6_of(i: u32) -> IpAddr {
        let [a, b, c, d] = i.to_be_bytes();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        IpAddr::from([0x2001, 0x0db8, hi, lo, 0, 0, 0, 1])
    }

    /// `n` new IPs from `from` on, one every `every` from `at`.
    fn new_ips(l: &PerIpRate, from: u32, n: u32, at: Instant, every: Duration) {
        for i in 0..n {
            let _ = std::hint::black_box(l.try_take(v6_of(from + i), at + every * i));
        }
    }

    /// Fills a table with `n` IPs at once.
    #[inline(never)]
    fn bench_fill(l: &PerIpRate, n: u32, at: Instant) {
        new_ips(l, 0, n, at, Duration::ZERO);
    }

    /// `times` sweeps of the whole table, none forgetting anything (each
    /// forced by a new IP with the sweep due).
    #[inline(never)]
    fn bench_sweeps(l: &PerIpRate, from: u32, times: u32, at: Instant) {
        for i in 0..times {
            l.table.lock().unwrap().sweep_at = 0;
            let _ = std::hint::black_box(l.try_take(v6_of(from + i), at));
        }
    }

    /// `n` connections from IPs already in the table.
    #[inline(never)]
    fn bench_known_ips(l: &PerIpRate, n: u32, at: Instant) {
        for i in 0..n {
            let _ = std::hint::black_box(l.try_take(v6_of(i), at));
        }
    }

    /// 100,000 new IPs past a full table's bound, 100,000 a second.
    #[inline(never)]
    fn bench_flood_past_the_bound(l: &PerIpRate, from: u32, at: Instant) {
        new_ips(l, from, 100_000, at, Duration::from_micros(10));
    }

    /// The bytes this process has resident, from `/proc/self/statm`.
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Not a check: what the per-IP rate table costs, for `bench/H2TLS.md`
    /// ("The per-IP rate table under a flood of addresses"), run under
    /// callgrind (the instructions of each `bench_*` function, inclusive):
    /// a table filled with `MEGACONN_BENCH_ENTRIES` IPs (65,536 if unset,
    /// its bound), 10 sweeps of it, 100,000 connections from IPs it holds
    /// (at most `entries`); then a table at its bound (65,536) and 100,000
    /// new IPs past it at 100,000 a second, a sweep due every
    /// `SWEEP_AT_BOUND_EVERY` (not with `MEGACONN_BENCH_NO_FLOOD` set), and
    /// the eviction before session 43 on the same map, side by side. Prints
    /// the resident memory the first table took and its capacity, and each
    /// phase's wall time (for ratios: the machine may be busy).
    #[test]
    #[ignore = "a bench, run by hand under callgrind: bench/H2TLS.md"]
    fn bench_the_rate_table() {
        let entries: u32 = std::env::var("MEGACONN_BENCH_ENTRIES")
            .map_or(PerIpRate::MAX_TRACKED as u32, |n| n.parse().unwrap());
        // 0.01 a second: a bucket refills in 100 s, so no sweep here
        // forgets anything (each scans the whole table).
        let l = PerIpRate::bounded(0.01, entries as usize + 10);
        let start = Instant::now();
        let before = resident_bytes();
        bench_fill(&l, entries, start);
        let after = resident_bytes();
        let capacity = l.table.lock().unwrap().buckets.capacity();
        println!(
            "{entries} IPs: {} bytes resident more ({:.1} a tracked IP), capacity {capacity}",
            after - before,
            (after - before) as f64 / f64::from(entries)
        );
        // Wall time too, for ratios within one run (callgrind's counts are
        // the figures).
        let timed = |what: &str, n: u32, f: &dyn Fn()| {
            let t = std::time::Instant::now();
            f();
            let us = t.elapsed().as_secs_f64() * 1e6;
            println!("{what}: {:.3} µs each ({n})", us / f64::from(n));
        };
        timed("sweep", 10, &|| {
            bench_sweeps(&l, entries, 10, start + Duration::from_millis(1))
        });
        assert_eq!(l.tracked(), entries as usize + 10);
        let known = 100_000.min(entries);
        timed("known IP", known, &|| {
            bench_known_ips(&l, known, start + Duration::from_millis(2))
        });
        drop(l);
        // (Set for callgrind runs of the sweeps alone.)
        if std::env::var_os("MEGACONN_BENCH_NO_FLOOD").is_some() {
            return;
        }
        let full = PerIpRate::new(0.01);
        let bound = PerIpRate::MAX_TRACKED as u32;
        new_ips(&full, 0, bound, start, Duration::ZERO);
        timed("new IP past the bound", 100_000, &|| {
            bench_flood_past_the_bound(&full, bound, start + Duration::from_secs(1))
        });
        assert_eq!(full.tracked(), PerIpRate::MAX_TRACKED);
        // Side by side, the eviction before session 43 on the same map: the
        // first key the map gives, then the new one in its place.
        let old: RefCell<HashMap<u128, TokenBucket>> = RefCell::new(
            (0..bound)
                .map(|i| (PerIpLimit::key(v6_of(i)), TokenBucket::new(0.01, 1)))
                .collect(),
        );
        timed("new IP past the bound, keys().next()", 100_000, &|| {
            bench_old_eviction(&mut old.borrow_mut(), bound, start)
        });
    }

    /// 100,000 new IPs past a full map's bound, each taking the place of
    /// the first key the map gives (the eviction before session 43).
    #[inline(never)]
    fn bench_old_eviction(map: &mut HashMap<u128, TokenBucket>, from: u32, at: Instant) {
        for i in 0..100_000 {
            if let Some(first) = map.keys().next().copied() {
                map.remove(&first);
            }
            let key = PerIpLimit::key(v6_of(from + i));
            let bucket = map.entry(key).or_insert_with(|| TokenBucket::new(0.01, 1));
            let _ = std::hint::black_box(bucket.try_take(at));
        }
    }

    #[test]
    fn per_ip_counts_and_forgets() {
        let l = PerIpLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert!(l.try_acquire(a) && l.try_acquire(a));
        assert!(!l.try_acquire(a));
        assert!(l.try_acquire(b) && l.try_acquire(b_same_64));
        assert!(!l.try_acquire(b), "IPv6 counts per /64");
        l.release(a);
        assert!(l.try_acquire(a));
        for _ in 0..2 {
            l.release(a);
            l.release(b);
        }
        assert_eq!(l.tracked(), 0, "empty entries are removed");
    }
}
