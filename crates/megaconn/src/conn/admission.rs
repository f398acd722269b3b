//! Admission limits beyond `max_connections`: an accept-rate token bucket and a
//! per-client-IP concurrent connection limit (IPv6 counted per /64, since one
//! client usually owns a whole /64).
//!
//! Over a limit, a connection is closed right after accept, counted under the
//! limit's name and logged at most once per interval (see `accept.rs`). The
//! per-IP table holds only IPs that have connections now, a few dozen bytes
//! each; a million connections from a handful of addresses cost a handful of
//! entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::conn::config::AcceptRate;

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

    /// Worker `index`'s share of the server's `rate` over `workers`
    /// workers: the rate divided evenly, and the burst too, the remainder
    /// going one each to the first workers, so that the shares add up to
    /// the burst exactly (each worker's used to be the quotient, rounded
    /// down: a burst of 3 on 2 workers let 2 in). At least 1 each, or a
    /// worker would refuse every connection the kernel hands it: a burst
    /// below the worker count admits one per worker. Exact below it would
    /// take a bucket the workers share, a cross-thread atomic per accept
    /// (and shared memory across `serve --processes`), for a setting that
    /// makes little sense: a burst is meant to be many connections.
    pub(crate) fn share(rate: AcceptRate, workers: usize, index: usize) -> TokenBucket {
        let workers = workers.max(1) as u32;
        let index = index as u32;
        let (each, rest) = (rate.burst / workers, rate.burst % workers);
        let burst = each + u32::from(index < rest);
        TokenBucket::new(rate.per_second / f64::from(workers), burst.max(1))
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

    /// How long until the next token.
    #[cfg(test)]
    fn until_next(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

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
    fn key(ip: IpAddr) -> u128 {
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

/// Which admission limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    AcceptRate,
    PerIp,
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
