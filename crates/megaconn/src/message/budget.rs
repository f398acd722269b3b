//! [`PublishRate`]: a per-connection budget of publishes, for an
//! application whose peers publish ([`Hub::publish`](crate::Hub::publish),
//! a broadcast), charged by the audience each publish reaches.
//!
//! A publish costs the server O(subscribers): one 8-byte message to 500
//! parked connections took ~2.5 ms of server CPU (~5 µs a delivery; the
//! audit's `bcast.py`), so a peer that may publish at will makes the server
//! spend CPU in proportion to its audience on each line it sends, and
//! neither the hub's queue (one message) nor `delivery_rate` (the same CPU,
//! spread over time) bounds that. An application checks
//! [`PublishRate::allow_publish`] (or [`allow`](PublishRate::allow), one
//! publish whatever its audience) before it publishes on a peer's behalf;
//! past the budget the publish is refused, counted
//! (`megaconn_limit_hits_total{limit="publish_rate"}`) and logged
//! (rate-limited, with the connection's id and peer), and the application
//! says what its peer hears.
//!
//! **Charged by audience.** A count of publishes alone bounded the
//! messages, not the work: at 10 a second, one peer publishing to a topic
//! of a million subscribers (or broadcasting) made the server deliver ten
//! million messages a second, ~50 s of CPU each second. So a publish costs
//! one publish of the budget per [`fanout`](PublishRate::fanout)
//! connections it reaches (1,000 by default, rounded up, at least one):
//! the budget is in deliveries, `per_second × fanout` a second (10,000 at
//! the defaults: ~50 ms of CPU a second, 5% of a core, per publisher), and
//! one publish reaches at most `burst × fanout` connections (20,000): a
//! publish to more is refused whatever the bucket holds. This is how the
//! hosted services meter fan-out (Ably and Pusher count a message
//! published to a channel of 100 subscribers as 100 messages delivered,
//! against per-second limits), and it is one rule an operator can read off
//! the flags: a message to a big room costs what many messages to a small
//! one do. The alternative, a per-worker budget of deliveries a second,
//! would bound the CPU but not say whose publish to refuse (one peer's
//! `PUB *` loop would use it up for everyone's), and it is what
//! `Builder::delivery_rate` already paces.
//!
//! The audience of a topic is [`subscribers`](crate::subscribers): this
//! process's subscribers of that name (and those of the processes that
//! share its table, [`share_audience`](crate::share_audience)), counted
//! when they subscribe (`topics.rs`); a broadcast's is the application's to give
//! ([`allow_to`](PublishRate::allow_to), e.g. the server's
//! [`message_connections`](crate::ServerHandle::message_connections), the
//! framed and WebSocket ones a broadcast reaches, which is what the CLI's
//! demo gives for `PUB *`).
//!
//! The budgets are kept here, per worker thread, by [`ConnectionId`], not
//! in the connection's state: a parked connection's side-table slot holds
//! the state inline (`table.rs`), and 8 bytes more in each would be 8 MB
//! at a million parked connections of which almost none publish. A budget
//! exists only while it is below full, from a connection's publish until
//! its bucket has refilled (2 s at the defaults), so the map holds the
//! connections that published in the last few seconds and nothing for the
//! others; its room follows it down once a burst of publishers is over.
//! Each entry is a GCRA "theoretical arrival time" (one `u64` of
//! nanoseconds: the token bucket's state in one number).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

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

/// Default [`PublishRate::fanout`]: a publish costs one publish of the
/// budget per 1,000 connections it reaches. A chat room or a device's
/// followers of up to 1,000 cost what the rate says (10 a second); a
/// publish to 5,000 costs 5; one to more than `burst × fanout` (20,000)
/// is refused: at ~5 µs a delivery that is 100 ms of a worker's CPU for
/// one line of one peer. 10 publishes a second to 1,000 connections
/// (10,000 deliveries, ~50 ms of CPU) is the sustained most per publisher
/// either way.
pub const DEFAULT_PUBLISH_FANOUT: u32 = 1_000;

/// How many publishes each connection may make: a token bucket refilled at
/// `per_second` and holding at most `burst` (GCRA), one bucket per
/// connection, each publish costing one per `fanout` connections it
/// reaches. The application keeps one `PublishRate` (in its handler)
/// and asks [`allow_publish`](PublishRate::allow_publish) (or
/// [`allow_to`](PublishRate::allow_to), [`allow`](PublishRate::allow))
/// before each publish a peer asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRate {
    /// Publishes a second each connection may make, sustained. Not positive
    /// (or not a number): none past the burst. Infinite: no limit
    /// ([`PublishRate::off`]).
    pub per_second: f64,
    /// Publishes a connection may make at once after a quiet spell (0 is
    /// taken as 1).
    pub burst: u32,
    /// Connections one publish may reach for the cost of one: a publish to
    /// `audience` connections costs `ceil(audience / fanout)` publishes (at
    /// least one; `Some(0)` is taken as 1), and one that costs more than
    /// `burst` is refused. `None`: every publish costs one, whatever its
    /// audience (the budget counts messages, not deliveries).
    pub fanout: Option<u32>,
}

impl Default for PublishRate {
    /// [`DEFAULT_PUBLISH_RATE`] a second, [`DEFAULT_PUBLISH_BURST`] at once,
    /// one per [`DEFAULT_PUBLISH_FANOUT`] connections reached.
    fn default() -> Self {
        PublishRate {
            per_second: DEFAULT_PUBLISH_RATE,
            burst: DEFAULT_PUBLISH_BURST,
            fanout: Some(DEFAULT_PUBLISH_FANOUT),
        }
    }
}

impl PublishRate {
    /// No limit: every publish is allowed, whatever its audience, and no
    /// budget is kept (`per_second` infinite). What `--publish-rate off`
    /// gives the CLI's demo; a rate of 0 is not this, but "the burst, then
    /// nothing".
    pub const fn off() -> PublishRate {
        PublishRate {
            per_second: f64::INFINITY,
            burst: DEFAULT_PUBLISH_BURST,
            fanout: None,
        }
    }

    /// Whether this is no limit ([`PublishRate::off`]: an infinite rate).
    pub fn is_off(&self) -> bool {
        self.per_second == f64::INFINITY
    }

    /// Takes one publish from `connection`'s budget, whatever its audience:
    /// `true` if it may publish now. `false` when it has published its
    /// burst and the bucket has not refilled one since; then the refusal
    /// is counted in `megaconn_limit_hits_total{limit="publish_rate"}` and
    /// logged with the connection's id and peer (at most a line per 5 s
    /// per worker), and the connection is left as it is: the application
    /// answers its peer (the CLI's demo says `error: publish rate; slow
    /// down`) or drops the message.
    ///
    /// Call it on the worker serving `connection` (in its handler): the
    /// budgets are the worker's. One budget per connection, whatever the
    /// `PublishRate`: two rates asked for one connection share its bucket.
    /// `connection` must be the connection being served: a refusal's log
    /// line names the peer of the socket its id holds, and a stale id (a
    /// connection since closed, its descriptor reused) would log another
    /// connection's peer.
    pub fn allow(&self, connection: ConnectionId) -> bool {
        self.allow_n(connection, 1)
    }

    /// Takes what a publish to `topic` costs from `connection`'s budget:
    /// one per [`fanout`](PublishRate::fanout) of the topic's
    /// [`subscribers`](crate::subscribers) (in this process, or in every
    /// process sharing its audience table: [`share_audience`](crate::share_audience);
    /// at least one).
    /// Otherwise as [`allow`](PublishRate::allow).
    pub fn allow_publish(&self, connection: ConnectionId, topic: &str) -> bool {
        if self.is_off() {
            return true;
        }
        let audience = match self.fanout {
            Some(_) => crate::message::topics::subscribers(topic),
            None => 0,
        };
        self.allow_to(connection, audience)
    }

    /// Takes what a publish reaching `audience` connections costs from
    /// `connection`'s budget ([`cost`](PublishRate::cost)): for a
    /// broadcast, or an audience the application counts itself. Otherwise
    /// as [`allow`](PublishRate::allow), `connection` being the one served.
    pub fn allow_to(&self, connection: ConnectionId, audience: usize) -> bool {
        self.allow_n(connection, self.cost(audience))
    }

    /// Publishes of the budget a publish reaching `audience` connections
    /// costs: `ceil(audience / fanout)`, at least one; one without a
    /// `fanout`.
    pub fn cost(&self, audience: usize) -> u32 {
        let Some(fanout) = self.fanout else {
            return 1;
        };
        let cost = audience.div_ceil(fanout.max(1) as usize).max(1);
        u32::try_from(cost).unwrap_or(u32::MAX)
    }

    /// Takes `cost` publishes from `connection`'s budget at once: `true` if
    /// the bucket holds them (a cost over `burst` never fits), and they
    /// are taken; `false`, counted and logged, and nothing taken,
    /// otherwise. A cost of 0 is taken as 1. `connection` must be the one
    /// being served, as for [`allow`](PublishRate::allow) (its socket names
    /// the peer a refusal logs).
    pub fn allow_n(&self, connection: ConnectionId, cost: u32) -> bool {
        let Some(terms) = self.terms() else {
            return true;
        };
        let now = clock::now_nanos();
        let allowed = BUDGETS.with(|b| b.borrow_mut().allow(connection, terms, cost.max(1), now));
        if !allowed {
            self.refused(connection, cost);
        }
        allowed
    }

    /// The GCRA terms: the nanoseconds a publish costs and how far ahead
    /// of now a connection's arrival time may run (the burst's room);
    /// `None` when [off](PublishRate::off).
    fn terms(&self) -> Option<Terms> {
        if self.is_off() {
            return None;
        }
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
        Some(Terms { interval, room })
    }

    /// Counts and logs a refused publish of `connection` that cost `cost`.
    fn refused(&self, connection: ConnectionId, cost: u32) {
        if let Some(ctx) = crate::conn::pool::this_worker() {
            LimitHit::PublishRate.count(&ctx.stats);
        }
        ratelog::log(Flood::PublishRate, |suppressed| {
            // Asked only when a line is written (one per 5 s per worker).
            // The id as `ConnectionId::as_u128` gives it to an application
            // (its own logs, a presence entry) to match this line with.
            let peer = peer_of(connection).map_or_else(|| "-".to_string(), |p| p.to_string());
            tracing::info!(
                connection = connection.as_u128(),
                peer = %peer,
                cost,
                per_second = self.per_second,
                burst = self.burst,
                fanout = self.fanout,
                suppressed,
                "a connection published past its PublishRate; that publish refused (the connection stays open); raise per_second, burst or fanout (serve: --publish-rate, --publish-fanout) if it is honest"
            )
        });
    }
}

/// The peer of the socket `connection` names: one `getpeername`, for the
/// log line. `allow` is asked in the connection's handler, whose task owns
/// that socket; `None` without a socket (a caller's own transport: -1) or
/// once the peer has reset it.
fn peer_of(connection: ConnectionId) -> Option<SocketAddr> {
    if connection.fd() < 0 {
        return None;
    }
    // SAFETY: the descriptor is open while the connection's handler runs
    // (see above); a borrow for one `getpeername` outlives nothing.
    let socket = unsafe { BorrowedFd::borrow_raw(connection.fd()) };
    crate::conn::proxy_header::peer_of(&socket)
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

/// The fewest entries at which [`Budgets`] looks for full buckets to drop,
/// and the least room it keeps.
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
    /// The latest arrival time in the map: once it has passed, every
    /// bucket is full and the map is dropped whole (a burst of publishers
    /// over, whatever its size, leaves nothing behind it).
    latest: u64,
}

impl Budgets {
    /// Takes `cost` publishes (at least 1) from `connection`'s bucket at
    /// `now`, if it holds them.
    fn allow(&mut self, connection: ConnectionId, terms: Terms, cost: u32, now: u64) -> bool {
        self.drop_if_full(now);
        let arrival = self.arrival.get(&connection).map_or(now, |&t| t.max(now));
        // The last of the `cost` publishes must fit the room, as one does.
        let cost = cost.max(1);
        let extra = terms.interval.saturating_mul(u64::from(cost - 1));
        if (arrival - now).saturating_add(extra) > terms.room {
            return false;
        }
        if self.arrival.len() >= self.prune_at.max(PRUNE_AT_LEAST) {
            // A bucket whose arrival time has passed is full: the same as
            // no entry. Closed connections' entries go this way too.
            self.arrival.retain(|_, &mut t| t > now);
            self.prune_at = self.arrival.len() * 2;
            self.shrink();
        }
        let charge = terms.interval.saturating_mul(u64::from(cost));
        let arrival = arrival.saturating_add(charge);
        self.arrival.insert(connection, arrival);
        self.latest = self.latest.max(arrival);
        true
    }

    /// Forgets `connection`'s bucket (at `now`).
    fn forget(&mut self, connection: ConnectionId, now: u64) {
        if self.arrival.remove(&connection).is_some() {
            self.shrink();
        }
        self.drop_if_full(now);
    }

    /// Drops the map, room and all, when every bucket in it is full at
    /// `now`: one comparison, where a prune looks at every entry.
    fn drop_if_full(&mut self, now: u64) {
        if now >= self.latest && self.arrival.capacity() > 0 {
            self.arrival = HashMap::new();
            self.prune_at = 0;
        }
    }

    /// Gives back the room of a burst of publishers once most have gone, as
    /// the worker's map of awake connections does (`worker.rs`): a quarter
    /// full, it keeps twice what it holds (nothing once empty), so a spell
    /// of 100,000 publishers does not keep ~1.8 MB a worker for good.
    fn shrink(&mut self) {
        let (len, capacity) = (self.arrival.len(), self.arrival.capacity());
        if len == 0 && capacity > 0 {
            self.arrival = HashMap::new();
        } else if capacity > PRUNE_AT_LEAST && len * 4 < capacity {
            self.arrival.shrink_to(len * 2);
        }
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
                b.forget(connection, clock::now_nanos());
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

    /// A connection without a socket (descriptor -1: the log line's
    /// `getpeername` must not ask a descriptor of the test process).
    fn id(n: i32) -> ConnectionId {
        ConnectionId::new(0, -1, n as u64 + 1)
    }

    /// A burst goes through whole, the next publish is refused, and the
    /// bucket refills one publish per interval, never past the burst.
    #[test]
    fn a_burst_then_the_rate() {
        let terms = PublishRate {
            per_second: 10.0,
            burst: 3,
            fanout: None,
        }
        .terms()
        .unwrap();
        let mut budgets = Budgets::default();
        let t0 = 1_000 * SECOND;
        assert!((0..3).all(|_| budgets.allow(id(5), terms, 1, t0)));
        assert!(!budgets.allow(id(5), terms, 1, t0), "past the burst");
        assert!(
            budgets.allow(id(6), terms, 1, t0),
            "another connection's own"
        );
        assert!(!budgets.allow(id(5), terms, 1, t0 + SECOND / 10 - 1));
        assert!(
            budgets.allow(id(5), terms, 1, t0 + SECOND / 10),
            "one refilled"
        );
        assert!(!budgets.allow(id(5), terms, 1, t0 + SECOND / 10));
        // An hour later the bucket holds the burst, not 36,000.
        let later = t0 + 3_600 * SECOND;
        assert!((0..3).all(|_| budgets.allow(id(5), terms, 1, later)));
        assert!(!budgets.allow(id(5), terms, 1, later));
    }

    /// A rate of 0 allows the burst once; a burst of 0 is one.
    #[test]
    fn a_rate_of_zero_allows_the_burst_only() {
        let mut budgets = Budgets::default();
        let none = PublishRate {
            per_second: 0.0,
            burst: 0,
            fanout: None,
        }
        .terms()
        .unwrap();
        assert!(budgets.allow(id(1), none, 1, SECOND));
        assert!(!budgets.allow(id(1), none, 1, 1_000_000 * SECOND));
        // With a burst, exactly the burst: a rate of 0 (or NaN, or one so
        // small its interval saturates) once let every publish through.
        for per_second in [0.0, f64::NAN, 1e-9, 1e-12] {
            let terms = PublishRate {
                per_second,
                burst: 20,
                fanout: None,
            }
            .terms()
            .unwrap();
            let mut budgets = Budgets::default();
            let allowed = (0..1_000)
                .filter(|_| budgets.allow(id(2), terms, 1, SECOND))
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
            fanout: None,
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
        let terms = PublishRate::default().terms().unwrap();
        let mut budgets = Budgets::default();
        for fd in 0..1_000 {
            assert!(budgets.allow(id(fd), terms, 1, SECOND));
        }
        // Ten seconds later all are full; the next publishes prune them.
        for fd in 0..PRUNE_AT_LEAST as i32 {
            assert!(budgets.allow(id(10_000 + fd), terms, 1, 11 * SECOND));
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
            fanout: None,
        };
        let refused = (0..5).filter(|_| !rate.allow(id(42))).count();
        assert_eq!(refused, 3);
    }

    /// A publish to a big audience costs more of the budget than one to a
    /// small audience: at the defaults (10 a second, burst 20, one per
    /// 1,000 reached) a full bucket takes 20 publishes to 500 connections,
    /// 4 to 5,000 and none to 50,000 (over `burst × fanout`); with no
    /// `fanout`, 20 whatever the audience.
    #[test]
    fn a_big_audience_is_refused_sooner() {
        let rate = PublishRate::default();
        let terms = rate.terms().unwrap();
        let fits = |audience: usize, rate: PublishRate| {
            let mut budgets = Budgets::default();
            let cost = rate.cost(audience);
            (0..100)
                .take_while(|_| budgets.allow(id(1), terms, cost, SECOND))
                .count()
        };
        assert_eq!(fits(0, rate), 20);
        assert_eq!(fits(500, rate), 20);
        assert_eq!(fits(1_000, rate), 20);
        assert_eq!(fits(1_001, rate), 10);
        assert_eq!(fits(5_000, rate), 4);
        assert_eq!(fits(20_000, rate), 1);
        assert_eq!(fits(20_001, rate), 0);
        assert_eq!(fits(1_000_000, rate), 0);
        let messages = PublishRate {
            fanout: None,
            ..rate
        };
        assert_eq!(fits(1_000_000, messages), 20);
        assert_eq!(rate.cost(usize::MAX), u32::MAX);
        let one = PublishRate {
            fanout: Some(0),
            ..rate
        };
        assert_eq!(one.cost(7), 7, "a fanout of 0 is taken as 1");
    }

    /// A refused publish of several takes nothing: the bucket still holds
    /// what a smaller one needs; and it refills at the rate, one publish
    /// of the budget per interval, whatever the audience.
    #[test]
    fn a_refused_big_publish_takes_nothing() {
        let terms = PublishRate::default().terms().unwrap();
        let mut budgets = Budgets::default();
        assert!(budgets.allow(id(1), terms, 15, SECOND), "15 of 20");
        assert!(!budgets.allow(id(1), terms, 6, SECOND), "6 of the 5 left");
        assert!(budgets.allow(id(1), terms, 5, SECOND), "the 5 left");
        assert!(!budgets.allow(id(1), terms, 1, SECOND));
        // Half a second refills 5 (10 a second).
        assert!(!budgets.allow(id(1), terms, 6, SECOND + SECOND / 2));
        assert!(budgets.allow(id(1), terms, 5, SECOND + SECOND / 2));
        // A cost of 0 is one.
        let once = PublishRate {
            per_second: 0.0,
            burst: 1,
            fanout: None,
        };
        assert!(once.allow_n(id(9), 0));
        assert!(!once.allow_n(id(9), 0));
    }

    /// Off allows every publish, whatever its audience, and keeps nothing;
    /// a rate of 0 is not off.
    #[test]
    fn off_allows_everything_and_keeps_nothing() {
        let off = PublishRate::off();
        assert!(off.is_off() && off.terms().is_none());
        assert!((0..10_000).all(|_| off.allow_to(id(7), usize::MAX)));
        assert!(off.allow_n(id(7), u32::MAX));
        assert!(off.allow_publish(id(7), "news"));
        assert!(!BUDGETS.with(|b| b.borrow().arrival.contains_key(&id(7))));
        let zero = PublishRate {
            per_second: 0.0,
            ..PublishRate::default()
        };
        assert!(!zero.is_off());
    }

    /// The map gives its room back once a burst of publishers is over:
    /// dropped whole once every bucket in it is full; a quarter full after
    /// a prune or after closes, it keeps twice what it holds; emptied by
    /// closes, nothing.
    #[test]
    fn the_map_shrinks_after_a_burst() {
        let terms = PublishRate::default().terms().unwrap();
        let mut budgets = Budgets::default();
        for n in 0..10_000 {
            assert!(budgets.allow(id(n), terms, 1, SECOND));
        }
        let peak = budgets.arrival.capacity();
        assert!(peak >= 10_000, "{peak}");
        // Ten seconds later all are full: the next publish finds the map
        // gone, and it holds one.
        assert!(budgets.allow(id(20_000), terms, 1, 11 * SECOND));
        assert_eq!(budgets.arrival.len(), 1);
        assert!(
            budgets.arrival.capacity() < 8,
            "{} (was {peak})",
            budgets.arrival.capacity()
        );
        // Its close leaves no room at all.
        budgets.forget(id(20_000), 11 * SECOND);
        assert_eq!(budgets.arrival.capacity(), 0);
        // Closes that leave a hundred of 10,000 shrink it as they go.
        for n in 0..10_000 {
            assert!(budgets.allow(id(n), terms, 1, 100 * SECOND));
        }
        for n in 100..10_000 {
            budgets.forget(id(n), 100 * SECOND);
        }
        assert_eq!(budgets.arrival.len(), 100);
        assert!(
            budgets.arrival.capacity() <= 4 * 100,
            "{}",
            budgets.arrival.capacity()
        );
        // A prune that finds most full shrinks it too, while one bucket
        // (20 publishes: full at 202 s) keeps the map from being dropped.
        let mut budgets = Budgets::default();
        assert!(budgets.allow(id(-2), terms, 20, 200 * SECOND));
        for n in 0..10_000 {
            assert!(budgets.allow(id(n), terms, 1, 200 * SECOND));
        }
        // New publishers at 201 s, until the map's growth prunes it.
        let mut n = 10_000;
        loop {
            let before = budgets.arrival.len();
            assert!(budgets.allow(id(n), terms, 1, 201 * SECOND));
            n += 1;
            if budgets.arrival.len() <= before {
                break;
            }
            assert!(n < 100_000, "never pruned");
        }
        let (len, capacity) = (budgets.arrival.len(), budgets.arrival.capacity());
        assert!(len < 10_000, "{len}");
        assert!(len * 4 >= capacity, "{len} in room for {capacity}");
        assert!(budgets.arrival.contains_key(&id(-2)));
    }
}
