//! [`PublishRate`]: a per-connection budget of publishes, for an
//! application whose peers publish ([`Hub::publish`](crate::Hub::publish),
//! a broadcast).
//!
//! A publish costs the server O(subscribers): one 8-byte message to 500
//! parked connections took ~2.5 ms of server CPU (~5 µs a delivery; the
//! audit's `bcast.py`), so a peer that may publish at will makes the server
//! spend CPU in proportion to its audience on each line it sends, and
//! neither the hub's queue (one message) nor `delivery_rate` (the same CPU,
//! spread over time) bounds that. An application checks
//! [`PublishRate::allow`] before it publishes on a peer's behalf; past the
//! budget the publish is refused, counted
//! (`megaconn_limit_hits_total{limit="publish_rate"}`) and logged
//! (rate-limited), and the application says what its peer hears.
//!
//! The budgets are kept here, per worker thread, by [`ConnectionId`], not
//! in the connection's state: a parked connection's side-table slot holds
//! the state inline (`table.rs`), and 8 bytes more in each would be 8 MB
//! at a million parked connections of which almost none publish. A budget
//! exists only while it is below full, from a connection's publish until
//! its bucket has refilled (2 s at the defaults), so the map holds the
//! connections that published in the last few seconds and nothing for the
//! others. Each entry is a GCRA "theoretical arrival time" (one `u64` of
//! nanoseconds: the token bucket's state in one number).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::message::hub::ConnectionId;
use crate::observe::clock;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};

/// Default [`PublishRate::per_second`]: 10 publishes a second per
/// connection, sustained. A person chatting sends well under one message a
/// second; a device reporting, one every few seconds. At the audit's
/// ~5 µs a delivery, 10 publishes a second to 1,000 connections is ~50 ms
/// of CPU a second per publisher (5% of a core) where unbounded it was
/// whatever the peer's line rate allowed. (EMQX's per-client
/// `messages_rate` and Centrifugo PRO's per-connection `publish` bucket
/// are the same limit, off by default there; Ably's default refuses a
/// connection's publishes past its per-connection inbound rate and keeps
/// the connection.)
pub const DEFAULT_PUBLISH_RATE: f64 = 10.0;

/// Default [`PublishRate::burst`]: 20 publishes at once after a quiet
/// spell (two seconds' worth): a pasted block of lines, or what a client
/// queued while it reconnected, goes through whole.
pub const DEFAULT_PUBLISH_BURST: u32 = 20;

/// How many publishes each connection may make: a token bucket refilled at
/// `per_second` and holding at most `burst` (GCRA), one bucket per
/// connection. The application keeps one `PublishRate` (in its handler)
/// and asks [`allow`](PublishRate::allow) before each publish a peer asks
/// for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRate {
    /// Publishes a second each connection may make, sustained. Not positive
    /// (or not a number): none past the burst.
    pub per_second: f64,
    /// Publishes a connection may make at once after a quiet spell (0 is
    /// taken as 1).
    pub burst: u32,
}

impl Default for PublishRate {
    /// [`DEFAULT_PUBLISH_RATE`] a second, [`DEFAULT_PUBLISH_BURST`] at once.
    fn default() -> Self {
        PublishRate {
            per_second: DEFAULT_PUBLISH_RATE,
            burst: DEFAULT_PUBLISH_BURST,
        }
    }
}

impl PublishRate {
    /// Takes one publish from `connection`'s budget: `true` if it may
    /// publish now. `false` when it has published its burst and the bucket
    /// has not refilled one since; then the refusal is counted in
    /// `megaconn_limit_hits_total{limit="publish_rate"}` and logged
    /// (at most a line per 5 s per worker), and the connection is left as
    /// it is: the application answers its peer (the CLI's demo says
    /// `error: publish rate; slow down`) or drops the message.
    ///
    /// Call it on the worker serving `connection` (in its handler): the
    /// budgets are the worker's. One budget per connection, whatever the
    /// `PublishRate`: two rates asked for one connection share its bucket.
    pub fn allow(&self, connection: ConnectionId) -> bool {
        let now = clock::now_nanos();
        let allowed = BUDGETS.with(|b| b.borrow_mut().allow(connection, self.terms(), now));
        if !allowed {
            self.refused();
        }
        allowed
    }

    /// The GCRA terms: the nanoseconds a publish costs and how far ahead
    /// of now a connection's arrival time may run (the burst's room).
    fn terms(&self) -> Terms {
        // A rate not positive (0, negative, NaN) refills nothing; `as`
        // saturates a tiny one to u64::MAX as well.
        let interval = if self.per_second > 0.0 {
            ((1e9 / self.per_second) as u64).max(1)
        } else {
            u64::MAX
        };
        // At most 2^62 for the whole burst: `room` and an arrival time a burst
        // ahead must not saturate, or every publish would fit (a rate of 0
        // or 1e-9 with a burst of 20 allowed all). 2^62 ns is 146 years.
        let interval = interval.min((1u64 << 62) / u64::from(self.burst.max(1)));
        let room = interval.saturating_mul(u64::from(self.burst.max(1) - 1));
        Terms { interval, room }
    }

    /// Counts and logs a refused publish.
    fn refused(&self) {
        if let Some(ctx) = crate::conn::pool::this_worker() {
            LimitHit::PublishRate.count(&ctx.stats);
        }
        ratelog::log(Flood::PublishRate, |suppressed| {
            tracing::info!(
                per_second = self.per_second,
                burst = self.burst,
                suppressed,
                "a connection published past its PublishRate; that publish refused (the connection stays open)"
            )
        });
    }
}

/// A rate as [`Budgets`] applies it, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Terms {
    /// What one publish adds to a connection's arrival time.
    interval: u64,
    /// How far past now the arrival time may be before a publish: the
    /// burst less one, in intervals.
    room: u64,
}

/// The fewest entries at which [`Budgets`] looks for full buckets to drop.
const PRUNE_AT_LEAST: usize = 64;

/// This worker's budgets: the connections whose bucket is not full, each
/// with its theoretical arrival time (GCRA: the bucket is full when that
/// is in the past).
#[derive(Debug, Default)]
struct Budgets {
    arrival: HashMap<ConnectionId, u64>,
    /// Drop full buckets once the map holds this many (doubles with what
    /// stays, so pruning is amortised O(1) a publish).
    prune_at: usize,
}

impl Budgets {
    fn allow(&mut self, connection: ConnectionId, terms: Terms, now: u64) -> bool {
        let arrival = self.arrival.get(&connection).map_or(now, |&t| t.max(now));
        if arrival - now > terms.room {
            return false;
        }
        if self.arrival.len() >= self.prune_at.max(PRUNE_AT_LEAST) {
            // A bucket whose arrival time has passed is full: the same as
            // no entry. Closed connections' entries go this way too.
            self.arrival.retain(|_, &mut t| t > now);
            self.prune_at = self.arrival.len() * 2;
        }
        self.arrival
            .insert(connection, arrival.saturating_add(terms.interval));
        true
    }
}

/// Forgets closed connection `connection`'s budget (its id never comes
/// back; a bucket that never refills, at a rate of 0, would stay for good).
/// Called on every message connection's close: one thread-local look when
/// nobody published.
pub(crate) fn forget(connection: ConnectionId) {
    BUDGETS.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            if !b.arrival.is_empty() {
                b.arrival.remove(&connection);
            }
        }
    });
}

thread_local! {
    /// The budgets of the connections of the worker on this thread.
    static BUDGETS: RefCell<Budgets> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn id(fd: i32) -> ConnectionId {
        ConnectionId::new(0, fd, 1)
    }

    /// A burst goes through whole, the next publish is refused, and the
    /// bucket refills one publish per interval, never past the burst.
    #[test]
    fn a_burst_then_the_rate() {
        let terms = PublishRate {
            per_second: 10.0,
            burst: 3,
        }
        .terms();
        let mut budgets = Budgets::default();
        let t0 = 1_000 * SECOND;
        assert!((0..3).all(|_| budgets.allow(id(5), terms, t0)));
        assert!(!budgets.allow(id(5), terms, t0), "past the burst");
        assert!(budgets.allow(id(6), terms, t0), "another connection's own");
        assert!(!budgets.allow(id(5), terms, t0 + SECOND / 10 - 1));
        assert!(
            budgets.allow(id(5), terms, t0 + SECOND / 10),
            "one refilled"
        );
        assert!(!budgets.allow(id(5), terms, t0 + SECOND / 10));
        // An hour later the bucket holds the burst, not 36,000.
        let later = t0 + 3_600 * SECOND;
        assert!((0..3).all(|_| budgets.allow(id(5), terms, later)));
        assert!(!budgets.allow(id(5), terms, later));
    }

    /// A rate of 0 allows the burst once; a burst of 0 is one.
    #[test]
    fn a_rate_of_zero_allows_the_burst_only() {
        let mut budgets = Budgets::default();
        let none = PublishRate {
            per_second: 0.0,
            burst: 0,
        }
        .terms();
        assert!(budgets.allow(id(1), none, SECOND));
        assert!(!budgets.allow(id(1), none, 1_000_000 * SECOND));
        // With a burst, exactly the burst: a rate of 0 (or NaN, or one so
        // small its interval saturates) once let every publish through.
        for per_second in [0.0, f64::NAN, 1e-9, 1e-12] {
            let terms = PublishRate {
                per_second,
                burst: 20,
            }
            .terms();
            let mut budgets = Budgets::default();
            let allowed = (0..1_000)
                .filter(|_| budgets.allow(id(2), terms, SECOND))
                .count();
            assert_eq!(allowed, 20, "per_second {per_second}");
        }
    }

    /// A closed connection's budget goes with it, even one that would never
    /// refill (a rate of 0).
    #[test]
    fn a_closed_connections_budget_is_forgotten() {
        let rate = PublishRate {
            per_second: 0.0,
            burst: 2,
        };
        assert!(rate.allow(id(3)));
        assert_eq!(BUDGETS.with(|b| b.borrow().arrival.len()), 1);
        forget(id(3));
        assert_eq!(BUDGETS.with(|b| b.borrow().arrival.len()), 0);
    }

    /// Full buckets leave the map: it holds the connections that published
    /// lately, not every one that ever did.
    #[test]
    fn full_buckets_are_dropped() {
        let terms = PublishRate::default().terms();
        let mut budgets = Budgets::default();
        for fd in 0..1_000 {
            assert!(budgets.allow(id(fd), terms, SECOND));
        }
        // Ten seconds later all are full; the next publishes prune them.
        for fd in 0..PRUNE_AT_LEAST as i32 {
            assert!(budgets.allow(id(10_000 + fd), terms, 11 * SECOND));
        }
        assert!(
            budgets.arrival.len() <= 2 * PRUNE_AT_LEAST,
            "{}",
            budgets.arrival.len()
        );
    }

    /// Refused off a worker thread: not counted (no worker), and no panic.
    #[test]
    fn refusals_past_the_burst() {
        let rate = PublishRate {
            per_second: 0.001,
            burst: 2,
        };
        let refused = (0..5).filter(|_| !rate.allow(id(42))).count();
        assert_eq!(refused, 3);
    }
}
