//! One worker's topic subscriptions ([`Topics`]): each topic's subscribers,
//! for a publish, and each subscribing connection's topics, for its close;
//! with the bounds on how many one connection holds
//! ([`Builder::max_subscriptions`](crate::Builder::max_subscriptions)) and
//! on a topic's name
//! ([`Builder::max_topic_bytes`](crate::Builder::max_topic_bytes)), and
//! the error a subscription over one returns ([`SubscribeError`]).
//!
//! Every operation is a few hash lookups, whatever the number of topics:
//! a repeat is found in the topic's own subscribers, and a subscriber keeps
//! the place of the topic in its connection's list, so an unsubscribe
//! takes it out of the list with a `swap_remove`. (A scan of the list for
//! each subscribe made 80,000 `SUB`s on one connection cost 18 s of its
//! worker's CPU, and the other connections of the worker waited 100-300 ms
//! for a reply meanwhile.) Only connections that subscribe have an entry:
//! a parked connection that does not keeps nothing here.
//!
//! Each topic's audience in the whole process ([`subscribers`], what
//! [`PublishRate::allow_publish`](crate::PublishRate::allow_publish)
//! charges by) is counted as connections subscribe and leave, in a fixed
//! table of counters shared by every worker: a topic's subscribers are
//! spread over the workers, whose maps are their own (and not `Sync`), and
//! a publish asks for the sum on whatever worker it runs. The table costs
//! nothing per topic and no lock: a subscription adds one to two counters
//! its name hashes to, a leave takes it off. Names that share a counter
//! add up, so the count is never below a topic's subscribers and may be
//! above; of the two counters the smaller is taken (a count-min sketch),
//! so a small topic reads big only when both of its counters are shared
//! with big ones (with keys drawn at random, no peer can pick names that
//! do).
//!
//! # Why no exact count
//!
//! An exact count per topic (asked for by a review of session 41: a chat
//! showing "N in the room") is not offered, because it is not cheap here:
//! a topic's subscribers are in several workers' maps, which are their
//! own, so an exact sum needs either a map of names to counts shared by
//! the workers, or a question to every worker. The shared map
//! (`Mutex<HashMap<Box<str>, u32>>`, the name copied at its first
//! subscriber, removed at its last) costs **903 instructions** a count in
//! or out against the sketch's **250**, uncontended (100,000 13-byte
//! names counted in and out, callgrind, `rustc -O`: 292,587,324
//! instructions, the sketch 161,965,049, the names alone 112,065,044; the
//! same code as `measure_the_sketch`'s `exact` mode below, in a program of
//! its own), so a subscribe would cost ~2,750 instead of ~2,100 in all;
//! it holds **45 B** a topic requested from the allocator (4,576,816 B for
//! those 100,000 topics: the entry and a second copy of the name, whose
//! allocation rounds up further); and every subscribe and leave of every
//! worker takes its one lock, which a burst of joins (a room everyone
//! enters at once) makes the workers wait on. A question to every worker
//! is a round trip through each hub queue, behind whatever deliveries wait
//! there, for an answer that is stale as it arrives. The sketch reads
//! exact for a topic one of whose counters no other subscribed name
//! shares; an application that must show an exact count keeps its own
//! (one at its handler's subscribe, one off at the unsubscribe and in
//! `on_close_with_id`), on the terms of its own locking.
//!
//! Several processes that serve one set of connections (the CLI's
//! `serve --processes`, whose publishes reach every process) share one
//! table ([`share_audience`]): each counts in its own slot of a shared
//! mapping, under the same keys, and a read sums the slots (two loads a
//! process), so a publish is charged by its audience in every process, not
//! by the 1/P of it in the publisher's. A slot per process, not one table
//! for all, so that a process killed with subscriptions leaves no counts
//! behind: its slot is zeroed before another process takes it.
//!
//! Cost: the count on each subscribe and each leave is a SipHash of the
//! name and two atomic adds: **275 instructions** for a 13-byte name
//! (release, `valgrind --tool=callgrind` on `measure_the_sketch` below:
//! 100,000 names counted in and out, 173,753,413 instructions against
//! 118,753,503 for the names alone), of the **2,093** a subscribe or an
//! unsubscribe of [`Topics`] costs in all (537,373,741 for the same names
//! through it): 13 %. The hash is most of it (~86 in SipHash's `write`,
//! ~55 finishing it and picking the counters); the two adds are two
//! locked instructions, uncontended unless other workers count names on
//! the same cache lines at the same moment.
//!
//! # Per-topic series (`Builder::topic_metrics`)
//!
//! An operator may name a few topics to see in `/metrics`
//! ([`TopicMetrics`]): each named topic's subscriptions on this server and
//! the publishes to it, every other topic summed in `topic="other"`. Named,
//! not all: a gateway with a million devices and a topic each would
//! otherwise write a million series per scrape. Exact, where
//! [`subscribers`] is not, because only the named topics are counted: a
//! subscribe or leave looks its name up among them (a hash, only with the
//! setting on) and moves that topic's gauge, shared by the workers; the
//! `other` subscriptions are the exact total
//! (`megaconn_message_subscriptions`) less the named ones, read at scrape
//! time, so an unnamed topic costs nothing more.
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use crate::message::hub::{ConnectionId, Generation};
use crate::observe::stats::{gauge_own, TopicCount, WorkerStats};

/// Default [`Builder::max_subscriptions`](crate::Builder::max_subscriptions):
/// 128 topics per connection. Each costs the worker about 270 bytes with a
/// short name, 340 with one of [`DEFAULT_MAX_TOPIC_BYTES`] (the name and
/// its entries in two maps), while the connection is open, parked or
/// awake, and a framed connection has no heartbeat timeout by default: at
/// 1,024, the default before, 1,000 peers that subscribed to that many
/// 250-byte names held 353 MB of a release server (353 KB each, against
/// ~100 B for an idle connection), for as long as they stayed connected;
/// at 128, 300 such peers held 78 KB each, 536 KB at 1,024 (a debug
/// build, the replies they did not read included).
/// 128 is ample for a client that follows its rooms, devices or feeds
/// (AWS IoT Core allows 50 per connection); an application that gives a
/// connection hundreds of topics raises it.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 128;

/// Default [`Builder::max_topic_bytes`](crate::Builder::max_topic_bytes):
/// a topic's name is at most 255 bytes, room for a room's, a device's or
/// a feed's name with its path (and the most a topic can carry between
/// `megaconn serve --processes` worker processes, whose messages give it
/// one length byte: a name the subscription took but the processes' fan-out
/// could not carry would be heard by no one). A subscription keeps its topic's name for as long as the
/// connection is open, parked or awake, so without a bound
/// `max_subscriptions` bounded the count and not the bytes: a peer of the
/// demo's line listener that subscribed to 1,024 names of 8,000 bytes (its
/// longest line) held 8 MiB of the worker's memory per connection while it
/// sat parked; over a length-prefixed listener (64 KiB frames) or a
/// WebSocket (1 MiB messages by default, 16 MiB before) it could hold
/// 64 MiB and more. With it a connection at both bounds (and the default
/// 128 subscriptions) holds about 32 KiB of names.
pub const DEFAULT_MAX_TOPIC_BYTES: usize = 255;

/// Counters in each of an audience table's two rows (a power of two). With
/// S subscriptions in the server spread over many topics, a counter holds
/// ~S / 32,768 of other topics' besides its own: ~300 at ten million
/// subscriptions, under the 1,000 a publish of the default
/// [`PublishRate`](crate::PublishRate) covers.
const AUDIENCE_WIDTH: usize = 1 << 15;

/// Where a process's count of its message connections is in its counters
/// (shared tables only): the first of one page after the two rows.
const CONNECTIONS_AT: usize = 2 * AUDIENCE_WIDTH;

/// The counters one process keeps in an audience table: two rows of
/// 32,768 `u32`s (256 KiB), then a page (1,024 counters) whose first is
/// the process's message connections, what a broadcast reaches. A table
/// shared by P processes ([`share_audience`]) is P of these, one after the
/// other.
pub const AUDIENCE_COUNTERS: usize = CONNECTIONS_AT + 1024;

/// This process's audience table when it shares none: 256 KiB of zeroed
/// statics, its pages touched as names land on them. A `u32` each: four
/// billion subscriptions would be a terabyte of topics (~270 bytes each).
static OWN_TABLE: [AtomicU32; AUDIENCE_COUNTERS] = [const { AtomicU32::new(0) }; AUDIENCE_COUNTERS];

/// Subscriptions by the hash of their topic's name, for every server and
/// worker of the process (and, shared, of every process that maps the
/// table): see the module doc.
#[derive(Debug)]
struct Audience {
    /// Every process's counters, [`AUDIENCE_COUNTERS`] each.
    table: &'static [AtomicU32],
    /// Where this process's counters start in `table`.
    own: usize,
    /// The hash's keys: the same in every process sharing the table, so a
    /// name lands on the same counters in each.
    keys: (u64, u64),
    /// Shared with other processes ([`share_audience`]): this process
    /// counts its message connections in it too.
    shared: bool,
}

/// The process's audience table: [`OWN_TABLE`] with keys drawn at random,
/// unless [`share_audience`] gave one before the first subscription.
static AUDIENCE: OnceLock<Audience> = OnceLock::new();

fn audience() -> &'static Audience {
    AUDIENCE.get_or_init(|| {
        // Two random words: `RandomState` is seeded from the OS per
        // process (per state, after the first), so no peer can pick names
        // that share counters.
        let random = RandomState::new();
        Audience {
            table: &OWN_TABLE,
            own: 0,
            keys: (random.hash_one(0u8), random.hash_one(1u8)),
            shared: false,
        }
    })
}

impl Audience {
    /// Where `topic`'s two counters are in a process's counters: two
    /// 15-bit pieces of one keyed hash.
    fn counters(&self, topic: &str) -> [usize; 2] {
        // SipHash-2-4 under the table's keys: the one keyed hash in std
        // (`RandomState` cannot be given keys, and the processes sharing
        // a table must hash alike). Deprecated only as a name for a
        // hasher whose algorithm may change; the algorithm is fixed.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.keys.0, self.keys.1);
        topic.hash(&mut hasher);
        let hash = hasher.finish();
        let mask = AUDIENCE_WIDTH as u64 - 1;
        [
            (hash & mask) as usize,
            AUDIENCE_WIDTH + ((hash >> 32) & mask) as usize,
        ]
    }

    /// Counts `n` subscriptions to `topic` in (`joined`) or out of this
    /// process's counters.
    fn count(&self, topic: &str, n: usize, joined: bool) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        for at in self.counters(topic) {
            let counter = &self.table[self.own + at];
            if joined {
                counter.fetch_add(n, Relaxed);
            } else {
                counter.fetch_sub(n, Relaxed);
            }
        }
    }

    /// `topic`'s subscribers in every process of the table: of its two
    /// counters summed over the processes, the smaller.
    fn read(&self, topic: &str) -> usize {
        let row = |at: usize| -> u64 {
            self.table
                .chunks_exact(AUDIENCE_COUNTERS)
                .map(|process| u64::from(process[at].load(Relaxed)))
                .sum()
        };
        let [a, b] = self.counters(topic);
        usize::try_from(row(a).min(row(b))).unwrap_or(usize::MAX)
    }
}

/// Counts `n` subscriptions to `topic` in (`joined`) or out of the
/// process's audience.
fn count_audience(topic: &str, n: usize, joined: bool) {
    audience().count(topic, n, joined);
}

/// How many connections are subscribed to `topic`, on every worker of
/// every server in this process, and in every process sharing its table
/// ([`share_audience`]: the CLI's `serve --processes`): never fewer, and a
/// few more when other names share its counters (see the module doc; ~300
/// more at ten million subscriptions). Lock-free, two loads a process.
/// What [`PublishRate::allow_publish`](crate::PublishRate::allow_publish)
/// charges by. Not exact: an exact count would cost every subscribe a
/// lock shared by the workers and ~650 instructions more (the module doc
/// has the numbers); an application that must show one counts its own
/// subscribes and closes.
pub fn subscribers(topic: &str) -> usize {
    audience().read(topic)
}

/// One message connection more (`1`) or fewer (`-1`) on a worker of
/// `stats` that a broadcast reaches (awake and registered for pushes, or
/// parked): its worker's gauge
/// ([`ServerHandle::message_connections`](crate::ServerHandle::message_connections)),
/// and with a shared table this process's count in it, which the other
/// processes read ([`message_connections_in_other_processes`]). Unshared,
/// the gauge alone: no atomic add shared by the workers on each park and
/// wake.
pub(crate) fn message_connections_moved(stats: &WorkerStats, by: i64) {
    gauge_own(&stats.messages.connections, by);
    // Set from here on: a table shared later would take out connections
    // it never counted (`ShareAudienceError::InUse` instead).
    let audience = audience();
    if audience.shared {
        let counter = &audience.table[audience.own + CONNECTIONS_AT];
        if by >= 0 {
            counter.fetch_add(by as u32, Relaxed);
        } else {
            counter.fetch_sub(by.unsigned_abs() as u32, Relaxed);
        }
    }
}

/// The message connections of the other processes sharing this process's
/// audience table ([`share_audience`]): what a broadcast that reaches them
/// too (the CLI's `serve --processes` relays `PUB *` to every worker
/// process) reaches beyond this server's
/// [`message_connections`](crate::ServerHandle::message_connections).
/// Exact as of their last park, wake or close; 0 when the table is not
/// shared. One load a process.
pub fn message_connections_in_other_processes() -> usize {
    let audience = audience();
    if !audience.shared {
        return 0;
    }
    let others: u64 = audience
        .table
        .chunks_exact(AUDIENCE_COUNTERS)
        .enumerate()
        .filter(|(slot, _)| slot * AUDIENCE_COUNTERS != audience.own)
        .map(|(_, process)| u64::from(process[CONNECTIONS_AT].load(Relaxed)))
        .sum();
    usize::try_from(others).unwrap_or(usize::MAX)
}

/// Why [`share_audience`] did not share the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareAudienceError {
    /// This process counted a subscription (or read an audience) already,
    /// in its own table, which it keeps: counts taken out of another
    /// table than they went into would wrap.
    #[error("this process counts its subscriptions already (share_audience must come before the first subscription)")]
    InUse,
    /// The table is not a whole number of processes'
    /// [`AUDIENCE_COUNTERS`], or `slot` is not one of them.
    #[error("an audience table of {len} counters has no process slot {slot} (each is AUDIENCE_COUNTERS long)")]
    NoSuchSlot {
        /// The table's length, in counters.
        len: usize,
        /// The slot asked for.
        slot: usize,
    },
}

/// Counts this process's subscriptions in slot `slot` of `table`, and reads
/// [`subscribers`] as the sum over every slot: for several processes that
/// serve one set of connections (the CLI's `serve --processes`, whose
/// publishes reach every process), each mapping the same `table` (shared
/// memory, [`AUDIENCE_COUNTERS`] per process) with the same `keys` (random,
/// drawn once for all: they choose which names share counters). Without
/// it each process counted its own subscribers only, and a publish that
/// reached P processes was charged about 1/P of its audience.
///
/// Call it before the process's first subscription; the process keeps its
/// own table otherwise ([`ShareAudienceError::InUse`]). A process that
/// exits takes its subscriptions out as its servers stop; one that is
/// killed leaves them in its slot, which whoever owns the table zeroes
/// before another process takes the slot.
pub fn share_audience(
    table: &'static [AtomicU32],
    slot: usize,
    keys: (u64, u64),
) -> Result<(), ShareAudienceError> {
    let whole = table.len() % AUDIENCE_COUNTERS == 0;
    if !whole || slot >= table.len() / AUDIENCE_COUNTERS {
        let len = table.len();
        return Err(ShareAudienceError::NoSuchSlot { len, slot });
    }
    let own = slot * AUDIENCE_COUNTERS;
    let shared = true;
    AUDIENCE
        .set(Audience {
            table,
            own,
            keys,
            shared,
        })
        .map_err(|_| ShareAudienceError::InUse)
}

/// The most topics [`Builder::topic_metrics`](crate::Builder::topic_metrics)
/// may name: two series each per scrape (and `other`'s), so a list that
/// grew with the fleet (a topic per device) is refused at
/// [`Builder::listen`](crate::Builder::listen) instead of writing a
/// million series.
pub const MAX_TOPIC_METRICS: usize = 256;

/// The label of every topic not named in
/// [`Builder::topic_metrics`](crate::Builder::topic_metrics), summed (a
/// topic of that name cannot be named).
pub(crate) const OTHER_TOPICS: &str = "other";

/// One server's per-topic counts for `/metrics`
/// ([`Builder::topic_metrics`](crate::Builder::topic_metrics)): the topics
/// named, each one's subscriptions (a gauge the workers move as
/// connections subscribe and leave) and the publishes to it (counted by
/// the hub, on the publishing thread), and the publishes to every other
/// topic. See the module doc.
#[derive(Debug)]
pub(crate) struct TopicMetrics {
    /// The topics named, in the order given, each once.
    names: Box<[Box<str>]>,
    /// Each name's place in `names` and in the counters (a copy of each:
    /// at most [`MAX_TOPIC_METRICS`] short names).
    index: HashMap<Box<str>, usize>,
    /// Subscriptions to each named topic on the server's workers.
    subscribers: Box<[AtomicI64]>,
    /// Publishes to each named topic, then (the last) to any other.
    publishes: Box<[AtomicU64]>,
}

impl TopicMetrics {
    /// Counts for `names` (a repeat counted once), from zero.
    pub(crate) fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> TopicMetrics {
        let mut index: HashMap<Box<str>, usize> = HashMap::new();
        let mut kept: Vec<Box<str>> = Vec::new();
        for name in names {
            let name = name.as_ref();
            if !index.contains_key(name) {
                index.insert(name.into(), kept.len());
                kept.push(name.into());
            }
        }
        let n = kept.len();
        TopicMetrics {
            names: kept.into(),
            index,
            subscribers: (0..n).map(|_| AtomicI64::new(0)).collect(),
            publishes: (0..=n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether it names no topic.
    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The same names, counted from zero: a server's own counts, not those
    /// of another server built from the same builder.
    pub(crate) fn fresh(&self) -> TopicMetrics {
        TopicMetrics::new(self.names.iter())
    }

    /// Why these names cannot be exported, if they cannot: more than
    /// [`MAX_TOPIC_METRICS`], or one named `other`.
    pub(crate) fn refusal(&self) -> Option<String> {
        if self.names.len() > MAX_TOPIC_METRICS {
            return Some(format!(
                "topic_metrics names {} topics, more than MAX_TOPIC_METRICS ({MAX_TOPIC_METRICS}): \
                 name the few an operator watches, the rest are summed in topic=\"{OTHER_TOPICS}\"",
                self.names.len()
            ));
        }
        self.index.contains_key(OTHER_TOPICS).then(|| {
            format!("topic_metrics cannot name a topic \"{OTHER_TOPICS}\": it labels every topic not named")
        })
    }

    /// `n` subscriptions to `topic` joined (or left), if it is named.
    fn moved(&self, topic: &str, n: usize, joined: bool) {
        if let Some(&i) = self.index.get(topic) {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.subscribers[i].fetch_add(if joined { n } else { -n }, Relaxed);
        }
    }

    /// The hub took a publish to `topic`.
    pub(crate) fn published(&self, topic: &str) {
        let i = self.index.get(topic).copied().unwrap_or(self.names.len());
        self.publishes[i].fetch_add(1, Relaxed);
    }

    /// The counts now: each named topic's, then `other`'s, whose
    /// subscriptions are the server's `subscriptions` (its exact total) less
    /// the named ones'.
    pub(crate) fn counts(&self, subscriptions: u64) -> Vec<TopicCount> {
        let mut named_subscribers = 0u64;
        let mut counts: Vec<TopicCount> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let subscribers = self.subscribers[i].load(Relaxed).max(0) as u64;
                named_subscribers += subscribers;
                let publishes = self.publishes[i].load(Relaxed);
                TopicCount::new(&**name, subscribers, publishes)
            })
            .collect();
        let other_publishes = self.publishes[self.names.len()].load(Relaxed);
        counts.push(TopicCount::new(
            OTHER_TOPICS,
            subscriptions.saturating_sub(named_subscribers),
            other_publishes,
        ));
        counts
    }
}

/// Why [`Session::subscribe`](crate::Session::subscribe) (or
/// [`WsSession::subscribe`](crate::WsSession::subscribe)) did not subscribe
/// the connection. The connection stays open and keeps its other topics;
/// what to tell the peer is the handler's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The connection holds `limit` subscriptions already, the most
    /// [`Builder::max_subscriptions`](crate::Builder::max_subscriptions)
    /// allows. Counted in
    /// `megaconn_limit_hits_total{limit="max_subscriptions"}` and logged
    /// (at most once per 5 s per worker). A topic it holds already is no
    /// new subscription: subscribing to it again succeeds.
    #[error("this connection holds {limit} subscriptions, the most max_subscriptions allows (Builder::max_subscriptions, serve --max-subscriptions): unsubscribe from one first")]
    TooMany {
        /// The bound.
        limit: usize,
    },
    /// The topic's name is longer than `limit` bytes, the most
    /// [`Builder::max_topic_bytes`](crate::Builder::max_topic_bytes)
    /// allows. Counted in
    /// `megaconn_limit_hits_total{limit="max_topic_bytes"}` and logged (at
    /// most once per 5 s per worker, with the subscriptions refused at
    /// `max_subscriptions`).
    #[error("the topic's name is over {limit} bytes, the most max_topic_bytes allows (Builder::max_topic_bytes, serve --max-topic-bytes)")]
    TopicTooLong {
        /// The bound, in bytes.
        limit: usize,
    },
}

/// A publish's topic on its way to every worker: the name, when it was
/// published (for `megaconn_publish_lag_seconds`) and the connection it
/// skips ([`Hub::publish_except`](crate::Hub::publish_except): the
/// author of a chat message), in one allocation shared by the workers, as
/// the `Arc<str>` of the name alone was: a hub message stays 56 bytes
/// (`hub.rs`'s `a_queued_message_is_56_bytes`) and a publish makes one
/// allocation, excluding or not.
///
/// Laid out as [`PUBLISHED_HEADER`] bytes (the publish's time, in
/// nanoseconds since the process's first publish; the skipped connection's
/// descriptor and generation, generation 0 for none, as generations count
/// from 1) and the name's bytes.
#[derive(Debug, Clone)]
pub(crate) struct Published(Arc<[u8]>);

/// The bytes before a [`Published`] topic's name: 8 of time, 4 of
/// descriptor, 8 of generation.
const PUBLISHED_HEADER: usize = 20;

/// When the process first published: what a [`Published`] time counts from.
fn publish_epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Published {
    /// `topic`, published now, to every subscriber but `except`.
    pub(crate) fn new(topic: &str, except: Option<ConnectionId>) -> Published {
        let at = publish_epoch().elapsed().as_nanos();
        let at = u64::try_from(at).unwrap_or(u64::MAX);
        let (fd, generation) = except.map_or((0, 0), |id| (id.fd(), id.generation()));
        let mut header = [0u8; PUBLISHED_HEADER];
        header[..8].copy_from_slice(&at.to_le_bytes());
        header[8..12].copy_from_slice(&fd.to_le_bytes());
        header[12..].copy_from_slice(&generation.to_le_bytes());
        // One allocation: the iterator knows its length (`TrustedLen`).
        Published(header.into_iter().chain(topic.bytes()).collect())
    }

    /// The topic's name.
    pub(crate) fn topic(&self) -> &str {
        std::str::from_utf8(&self.0[PUBLISHED_HEADER..]).expect("made from a str")
    }

    /// The connection the publish skips: its descriptor and generation.
    fn except(&self) -> Option<(RawFd, Generation)> {
        let fd = RawFd::from_le_bytes(self.0[8..12].try_into().expect("4 bytes"));
        let generation = Generation::from_le_bytes(self.0[12..20].try_into().expect("8 bytes"));
        (generation != 0).then_some((fd, generation))
    }

    /// How long ago it was published.
    fn waited(&self) -> std::time::Duration {
        let at = u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"));
        let now = publish_epoch().elapsed();
        now.saturating_sub(std::time::Duration::from_nanos(at))
    }

    /// A worker took the publish from its hub queue: the lag it waited
    /// there is observed once (in `stats`, if counted), and its recipients
    /// are the topic's members on this worker now, but the one it skips.
    pub(crate) fn recipients(
        &self,
        topics: &Topics,
        stats: &WorkerStats,
    ) -> Vec<(RawFd, Generation)> {
        stats.messages.rooms.publish_waited(self.waited());
        let mut members = topics.members(self.topic());
        if let Some(except) = self.except() {
            members.retain(|member| *member != except);
        }
        members
    }
}

impl From<&str> for Published {
    fn from(topic: &str) -> Published {
        Published::new(topic, None)
    }
}

/// A topic's subscriber at a descriptor: which connection (its
/// generation), and where the topic is in that connection's list (for an
/// unsubscribe without a scan). The generation is kept as two `u32`s so
/// that an entry with its descriptor is 16 bytes, as one with a `u64`
/// generation alone was (an aligned `u64` made it 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    generation: [u32; 2],
    slot: u32,
}

impl Member {
    fn new(generation: Generation, slot: u32) -> Member {
        // (A generation has 46 bits: the high half holds the rest.)
        let low = generation as u32;
        let high = (generation >> 32) as u32;
        Member {
            generation: [low, high],
            slot,
        }
    }

    fn generation(self) -> Generation {
        Generation::from(self.generation[0]) | Generation::from(self.generation[1]) << 32
    }
}

/// A subscribing connection's topics, in the order of their slots.
#[derive(Debug)]
struct Subscribed {
    generation: Generation,
    topics: Vec<Rc<str>>,
}

/// One worker's topic subscriptions.
#[derive(Debug)]
pub(crate) struct Topics {
    /// Each topic's subscribers, by descriptor.
    members: HashMap<Rc<str>, HashMap<RawFd, Member>>,
    /// Each subscribing connection's topics, for its close.
    connections: HashMap<RawFd, Subscribed>,
    /// The most topics one connection may hold.
    limit: usize,
    /// The longest topic name a connection may subscribe to, in bytes.
    max_topic_bytes: usize,
    /// The worker's counters, whose gauge of subscriptions this keeps
    /// (`None`: a unit test's, not counted).
    stats: Option<Arc<WorkerStats>>,
    /// The server's per-topic counts, whose named topics' gauges this
    /// moves too (`None`: `Builder::topic_metrics` not set).
    exported: Option<Arc<TopicMetrics>>,
}

impl Topics {
    /// No subscriptions yet; at most `limit` per connection (and at most
    /// `u32::MAX`, what a slot counts to), to topics of at most
    /// `max_topic_bytes` bytes.
    pub(crate) fn new(limit: usize, max_topic_bytes: usize) -> Topics {
        Topics {
            members: HashMap::new(),
            connections: HashMap::new(),
            limit: limit.min(u32::MAX as usize),
            max_topic_bytes,
            stats: None,
            exported: None,
        }
    }

    /// Counts the subscriptions in `stats`' gauge
    /// (`megaconn_message_subscriptions`).
    pub(crate) fn counted(mut self, stats: Arc<WorkerStats>) -> Topics {
        self.stats = Some(stats);
        self
    }

    /// Counts the subscriptions to the topics `exported` names in its
    /// gauges too (`Builder::topic_metrics`; `None`: not set).
    pub(crate) fn exporting(mut self, exported: Option<Arc<TopicMetrics>>) -> Topics {
        self.exported = exported;
        self
    }

    /// `n` subscriptions to `topic` joined (or left): the process's
    /// audience of the name, the worker's gauge of subscriptions, and the
    /// topic's own gauge if it is exported.
    fn moved(&self, topic: &str, n: usize, joined: bool) {
        count_audience(topic, n, joined);
        if let Some(exported) = &self.exported {
            exported.moved(topic, n, joined);
        }
        if let Some(stats) = &self.stats {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            gauge_own(&stats.messages.subscriptions, if joined { n } else { -n });
        }
    }

    /// Subscribes connection `id` to `topic` (again: no change), unless it
    /// holds the most topics allowed or the name is too long.
    pub(crate) fn subscribe(
        &mut self,
        id: ConnectionId,
        topic: &str,
    ) -> Result<(), SubscribeError> {
        if topic.len() > self.max_topic_bytes {
            let limit = self.max_topic_bytes;
            return Err(SubscribeError::TopicTooLong { limit });
        }
        let (fd, generation) = (id.fd(), id.generation());
        let known = self.members.get_key_value(topic);
        if known.is_some_and(|(_, members)| is_member(members, fd, generation)) {
            return Ok(());
        }
        let known = known.map(|(key, _)| key.clone());
        if let Some(stale) = self.connections.get(&fd).map(|c| c.generation) {
            if stale != generation {
                // An entry of a connection that closed on this descriptor
                // and was never reported closed: it leaves its topics now.
                // (Clearing only its list left its entries in every topic
                // it held, each topic kept alive by them for good.)
                self.forget(fd);
            }
        }
        let mine = self.connections.entry(fd).or_insert_with(|| Subscribed {
            generation,
            topics: Vec::new(),
        });
        if mine.topics.len() >= self.limit {
            if mine.topics.is_empty() {
                self.connections.remove(&fd);
            }
            return Err(SubscribeError::TooMany { limit: self.limit });
        }
        let slot = u32::try_from(mine.topics.len()).expect("at most u32::MAX topics (new)");
        let key = known.unwrap_or_else(|| Rc::from(topic));
        mine.topics.push(key.clone());
        let member = Member::new(generation, slot);
        if self
            .members
            .entry(key)
            .or_default()
            .insert(fd, member)
            .is_none()
        {
            self.moved(topic, 1, true);
        }
        Ok(())
    }

    /// Unsubscribes connection `id` from `topic` (not subscribed: no
    /// change).
    pub(crate) fn unsubscribe(&mut self, id: ConnectionId, topic: &str) {
        let (fd, generation) = (id.fd(), id.generation());
        let Some(member) = self.leave(topic, fd, generation) else {
            return;
        };
        let Some(mine) = self.connections.get_mut(&fd) else {
            return;
        };
        let slot = member.slot as usize;
        if slot >= mine.topics.len() {
            return;
        }
        mine.topics.swap_remove(slot);
        if let Some(moved) = mine.topics.get(slot) {
            // The last topic took the place of the one that left.
            let entry = self.members.get_mut(moved).and_then(|m| m.get_mut(&fd));
            if let Some(entry) = entry {
                entry.slot = member.slot;
            }
        }
        if mine.topics.is_empty() {
            self.connections.remove(&fd);
        } else if mine.topics.capacity() > 16 && mine.topics.len() * 4 < mine.topics.capacity() {
            // A connection that dropped most of its topics does not keep
            // the room of the most it held.
            let room = mine.topics.len() * 2;
            mine.topics.shrink_to(room);
        }
    }

    /// Connection `id` closed: it leaves its topics. (Also what a delivery
    /// calls when it finds a subscriber's descriptor held by another
    /// connection: one never reported closed, `worker.rs`.)
    pub(crate) fn closed(&mut self, id: ConnectionId) {
        let (fd, generation) = (id.fd(), id.generation());
        if self
            .connections
            .get(&fd)
            .is_some_and(|mine| mine.generation == generation)
        {
            self.forget(fd);
        }
    }

    /// The connection subscribed at `fd`, whatever its generation, leaves
    /// every topic it holds.
    fn forget(&mut self, fd: RawFd) {
        let Some(mine) = self.connections.remove(&fd) else {
            return;
        };
        for topic in mine.topics {
            self.leave(&topic, fd, mine.generation);
        }
    }

    /// The topics connection `id` holds, in the order it took them (a
    /// framed connection handed to the next process takes their names
    /// along: `proto/framed/adopt.rs`).
    pub(crate) fn of(&self, id: ConnectionId) -> Vec<Rc<str>> {
        match self.connections.get(&id.fd()) {
            Some(mine) if mine.generation == id.generation() => mine.topics.clone(),
            _ => Vec::new(),
        }
    }

    /// `topic`'s subscribers now, by descriptor and generation.
    pub(crate) fn members(&self, topic: &str) -> Vec<(RawFd, Generation)> {
        match self.members.get(topic) {
            Some(members) => members
                .iter()
                .map(|(&fd, member)| (fd, member.generation()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Takes connection (`fd`, `generation`) out of `topic`'s subscribers
    /// (and the topic out of the map once it has none); its entry, if it
    /// was one.
    fn leave(&mut self, topic: &str, fd: RawFd, generation: Generation) -> Option<Member> {
        let members = self.members.get_mut(topic)?;
        let left = if is_member(members, fd, generation) {
            members.remove(&fd)
        } else {
            None
        };
        if members.is_empty() {
            self.members.remove(topic);
        }
        if left.is_some() {
            self.moved(topic, 1, false);
        }
        left
    }
}

impl Drop for Topics {
    /// A stopped worker's subscriptions leave the process's audience (its
    /// connections are gone; the counters outlive the server).
    fn drop(&mut self) {
        for (topic, members) in &self.members {
            self.moved(topic, members.len(), false);
        }
    }
}

/// Whether connection (`fd`, `generation`) is among `members`.
fn is_member(members: &HashMap<RawFd, Member>, fd: RawFd, generation: Generation) -> bool {
    members
        .get(&fd)
        .is_some_and(|m| m.generation() == generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::message::hub::GENERATION_MASK;

    fn id(fd: RawFd, generation: Generation) -> ConnectionId {
        ConnectionId::new(0, fd, generation)
    }

    fn members(topics: &Topics, topic: &str) -> Vec<(RawFd, Generation)> {
        let mut found = topics.members(topic);
        found.sort_unstable();
        found
    }

    /// The connection's list and the topics' slots agree: each topic the
    /// connection holds names its place in the list.
    fn check_slots(topics: &Topics, fd: RawFd) {
        let Some(mine) = topics.connections.get(&fd) else {
            return;
        };
        for (slot, topic) in mine.topics.iter().enumerate() {
            let member = topics.members[topic][&fd];
            assert_eq!(member.slot as usize, slot, "{topic}");
            assert_eq!(member.generation(), mine.generation, "{topic}");
        }
    }

    #[test]
    fn a_member_with_its_descriptor_is_sixteen_bytes_and_keeps_its_generation() {
        assert_eq!(std::mem::size_of::<(RawFd, Member)>(), 16);
        for g in [0, 1, u32::MAX as Generation, 1 << 32, GENERATION_MASK] {
            assert_eq!(Member::new(g, 7).generation(), g);
        }
    }

    #[test]
    fn subscribe_repeat_unsubscribe_and_close() {
        let mut topics = Topics::new(8, usize::MAX);
        let (a, b) = (id(5, 1), id(6, 2));
        assert_eq!(topics.subscribe(a, "news"), Ok(()));
        assert_eq!(topics.subscribe(a, "news"), Ok(()), "a repeat");
        assert_eq!(topics.subscribe(a, "sport"), Ok(()));
        assert_eq!(topics.subscribe(a, "weather"), Ok(()));
        assert_eq!(topics.subscribe(b, "news"), Ok(()));
        assert_eq!(topics.connections[&5].topics.len(), 3);
        assert_eq!(members(&topics, "news"), [(5, 1), (6, 2)]);
        // Out of the middle: the last takes its place.
        topics.unsubscribe(a, "news");
        check_slots(&topics, 5);
        assert_eq!(members(&topics, "news"), [(6, 2)]);
        topics.unsubscribe(a, "news");
        topics.unsubscribe(a, "nothing");
        assert_eq!(topics.connections[&5].topics.len(), 2);
        // Another connection's id at the same descriptor changes nothing.
        topics.unsubscribe(id(5, 9), "sport");
        topics.closed(id(5, 9));
        assert_eq!(members(&topics, "sport"), [(5, 1)]);
        topics.closed(a);
        assert!(topics.members("sport").is_empty());
        assert!(topics.members("weather").is_empty());
        topics.closed(b);
        assert!(topics.members.is_empty() && topics.connections.is_empty());
    }

    /// Past the bound a new topic is refused and nothing changes; a topic
    /// held already is still no error; one unsubscribed makes room.
    #[test]
    fn the_bound_refuses_new_topics_only() {
        let mut topics = Topics::new(2, usize::MAX);
        let a = id(3, 1);
        assert_eq!(topics.subscribe(a, "x"), Ok(()));
        assert_eq!(topics.subscribe(a, "y"), Ok(()));
        assert_eq!(
            topics.subscribe(a, "z"),
            Err(SubscribeError::TooMany { limit: 2 })
        );
        assert!(topics.members("z").is_empty(), "no empty topic left behind");
        assert_eq!(topics.subscribe(a, "x"), Ok(()));
        topics.unsubscribe(a, "x");
        assert_eq!(topics.subscribe(a, "z"), Ok(()));
        check_slots(&topics, 3);
        // Bound zero: nothing at all, and no entry for the connection.
        let mut none = Topics::new(0, usize::MAX);
        assert!(none.subscribe(a, "x").is_err());
        assert!(none.connections.is_empty() && none.members.is_empty());
    }

    /// A name over the bound is refused and nothing changes, whether the
    /// topic has subscribers or not; one at the bound is taken.
    #[test]
    fn a_topic_name_over_the_bound_is_refused() {
        let mut topics = Topics::new(8, 5);
        let (a, b) = (id(3, 1), id(4, 2));
        assert_eq!(topics.subscribe(a, "12345"), Ok(()));
        let too_long = Err(SubscribeError::TopicTooLong { limit: 5 });
        assert_eq!(topics.subscribe(a, "123456"), too_long);
        assert_eq!(topics.subscribe(b, "123456"), too_long);
        assert!(topics.members("123456").is_empty());
        assert_eq!(topics.connections[&3].topics.len(), 1);
        assert!(!topics.connections.contains_key(&4), "no entry left behind");
    }

    /// A connection that was never reported closed, its descriptor reused:
    /// the new one starts with no topics, and the old one leaves every
    /// topic it held as soon as the new one subscribes (before, only its
    /// list was cleared: its entries stayed in each of its topics, and kept
    /// each topic alive, for the life of the worker).
    #[test]
    fn a_stale_entry_leaves_its_topics_when_its_descriptor_subscribes() {
        let mut topics = Topics::new(2, usize::MAX);
        assert_eq!(topics.subscribe(id(4, 1), "old"), Ok(()));
        assert_eq!(topics.subscribe(id(4, 1), "shared"), Ok(()));
        assert_eq!(topics.subscribe(id(8, 3), "shared"), Ok(()));
        assert_eq!(topics.subscribe(id(4, 2), "new"), Ok(()), "not counted");
        assert_eq!(members(&topics, "new"), [(4, 2)]);
        assert!(topics.members("old").is_empty(), "the stale entry left");
        assert!(!topics.members.contains_key("old"), "and its topic went");
        assert_eq!(members(&topics, "shared"), [(8, 3)]);
        check_slots(&topics, 4);
        topics.unsubscribe(id(4, 2), "old");
        topics.closed(id(4, 1));
        assert_eq!(
            members(&topics, "new"),
            [(4, 2)],
            "a stale close: no change"
        );
        topics.closed(id(4, 2));
        topics.closed(id(8, 3));
        assert!(topics.members.is_empty() && topics.connections.is_empty());
    }

    /// A thousand connections on one descriptor, each closed without a
    /// report, each on a topic of its own: what the worker holds stays one
    /// connection's (before, a topic per stale connection piled up).
    #[test]
    fn unreported_closes_on_a_reused_descriptor_do_not_pile_up() {
        let mut topics = Topics::new(4, usize::MAX);
        for generation in 1..=1000 {
            let topic = format!("room-{generation}");
            assert_eq!(topics.subscribe(id(5, generation), &topic), Ok(()));
            assert_eq!(topics.subscribe(id(5, generation), "lobby"), Ok(()));
        }
        assert_eq!(topics.members.len(), 2, "{:?}", topics.members.keys());
        assert_eq!(members(&topics, "lobby"), [(5, 1000)]);
    }

    /// Random subscribes and unsubscribes keep the list and the slots in
    /// step.
    #[test]
    fn slots_follow_every_swap() {
        let mut topics = Topics::new(usize::MAX, usize::MAX);
        let a = id(9, 1);
        let mut state: u32 = 12345;
        for _ in 0..5_000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let topic = format!("t{}", (state >> 16) % 64);
            if state & 1 == 0 {
                assert_eq!(topics.subscribe(a, &topic), Ok(()));
            } else {
                topics.unsubscribe(a, &topic);
            }
            check_slots(&topics, 9);
        }
    }

    /// 200,000 topics subscribed on one connection, each twice, then left
    /// one by one: a few hash lookups each, well under a second. With a
    /// scan of the connection's list per subscribe and per unsubscribe
    /// (before), that was 4·10^10 string comparisons: minutes in a release
    /// build, more here. Run on its own thread under a 60 s bound (a bound
    /// the linear code misses by two orders of magnitude, not a timing).
    #[test]
    fn two_hundred_thousand_topics_on_one_connection_take_linear_time() {
        const N: usize = 200_000;
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut topics = Topics::new(usize::MAX, usize::MAX);
            let a = id(7, 1);
            let names: Vec<String> = (0..N).map(|i| format!("topic-{i:08}")).collect();
            for name in names.iter().chain(&names) {
                assert_eq!(topics.subscribe(a, name), Ok(()));
            }
            let held = topics.connections[&7].topics.len();
            for name in &names {
                topics.unsubscribe(a, name);
            }
            let _ = done.send((held, topics.members.len(), topics.connections.len()));
        });
        let result = finished.recv_timeout(Duration::from_secs(60));
        assert_eq!(result, Ok((N, 0, 0)), "done in 60 s, all left");
    }

    /// A topic's audience in the process counts its subscribers on every
    /// worker (two `Topics` here), never fewer, and loses them as they
    /// unsubscribe, close, or their worker stops. (Other tests subscribe
    /// at the same time, to names that may share a counter: the bounds
    /// leave them room.)
    #[test]
    fn the_audience_counts_every_workers_subscribers() {
        let topic = "audience-test-a-name-no-other-test-uses";
        let base = subscribers(topic);
        let mut one = Topics::new(8, usize::MAX);
        let mut two = Topics::new(8, usize::MAX);
        for fd in 0..1_000 {
            let topics = if fd % 2 == 0 { &mut one } else { &mut two };
            assert_eq!(topics.subscribe(id(fd, 1), topic), Ok(()));
            assert_eq!(topics.subscribe(id(fd, 1), topic), Ok(()), "a repeat");
        }
        assert!(subscribers(topic) >= 1_000, "{}", subscribers(topic));
        // 250 unsubscribe, 250 close: 500 left, all on worker two.
        for fd in (0..1_000).step_by(2) {
            if fd % 4 == 0 {
                one.unsubscribe(id(fd, 1), topic);
            } else {
                one.closed(id(fd, 1));
            }
        }
        let left = subscribers(topic);
        assert!((500..1_000).contains(&left), "{left}");
        drop(two);
        assert!(subscribers(topic) < 500, "{}", subscribers(topic));
        assert!(
            subscribers(topic) <= base + 100,
            "{} (was {base})",
            subscribers(topic)
        );
    }

    /// The worker's gauge of subscriptions (`megaconn_message_subscriptions`)
    /// follows every way a subscription comes and goes: a repeat and a
    /// refusal add none, an unsubscribe, a close, a stale connection's
    /// leave (its descriptor subscribing anew) and the worker's stop take
    /// theirs off.
    #[test]
    fn the_subscriptions_gauge_is_exact() {
        let stats = Arc::new(WorkerStats::default());
        let gauge = || stats.messages.subscriptions.load(Relaxed);
        let mut topics = Topics::new(2, 8).counted(stats.clone());
        let (a, b) = (id(5, 1), id(6, 2));
        for (who, topic) in [(a, "x"), (a, "x"), (a, "y"), (b, "x")] {
            assert_eq!(topics.subscribe(who, topic), Ok(()));
        }
        assert_eq!(gauge(), 3);
        assert!(topics.subscribe(a, "z").is_err(), "a third");
        assert!(topics.subscribe(b, "far too long").is_err());
        assert_eq!(gauge(), 3);
        topics.unsubscribe(a, "x");
        topics.unsubscribe(a, "x");
        assert_eq!(gauge(), 2);
        // `a` closed unreported; its descriptor's next connection
        // subscribes: `a` leaves `y`.
        assert_eq!(topics.subscribe(id(5, 3), "z"), Ok(()));
        assert_eq!(gauge(), 2);
        topics.closed(b);
        assert_eq!(gauge(), 1);
        drop(topics);
        assert_eq!(gauge(), 0);
    }

    /// `subscribers` never reads below a topic's subscribers, whatever
    /// their connections do on two workers: subscribe, unsubscribe, close,
    /// close unreported (their descriptor reused), and a worker's stop.
    /// (What the README and [`subscribers`] promise; it may read high.)
    #[test]
    fn the_audience_never_reads_low() {
        let names: Vec<String> = (0..6).map(|i| format!("never-low-{i}")).collect();
        let mut workers = [Topics::new(3, 64), Topics::new(3, 64)];
        let mut generation = [[1 as Generation; 16]; 2];
        let mut state: u32 = 4242;
        for step in 0..20_000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let r = (state >> 8) as usize;
            let w = r % 2;
            let fd = (r / 2) % 16;
            let name = &names[(r / 32) % names.len()];
            let who = id(fd as RawFd, generation[w][fd]);
            match (r / 256) % 8 {
                0..=3 => {
                    let _ = workers[w].subscribe(who, name);
                }
                4 => workers[w].unsubscribe(who, name),
                5 => {
                    workers[w].closed(who);
                    generation[w][fd] += 1;
                }
                // Closed unreported: the next connection on the
                // descriptor has another generation.
                6 => generation[w][fd] += 1,
                _ if step % 1_000 == 0 => {
                    workers[w] = Topics::new(3, 64);
                }
                _ => {}
            }
            for name in &names {
                let exact: usize = workers.iter().map(|t| t.members(name).len()).sum();
                let read = subscribers(name);
                assert!(
                    read >= exact,
                    "step {step}: {name} read {read}, {exact} subscribed"
                );
            }
        }
    }

    /// Two processes sharing a table (two `Audience`s over one table, a
    /// slot each, the same keys): each counts in its own slot, each reads
    /// the sum; zeroing a slot (its process killed) takes its counts out
    /// and no other's. A table of another length, or a slot past its end,
    /// is refused.
    #[test]
    fn processes_sharing_a_table_read_each_others_subscribers() {
        let table: &'static [AtomicU32] = Box::leak(
            (0..2 * AUDIENCE_COUNTERS)
                .map(|_| AtomicU32::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let keys = (7, 11);
        let one = Audience {
            table,
            own: 0,
            keys,
            shared: true,
        };
        let two = Audience {
            table,
            own: AUDIENCE_COUNTERS,
            keys,
            shared: true,
        };
        one.count("room", 3, true);
        two.count("room", 5, true);
        two.count("other", 1, true);
        assert_eq!((one.read("room"), two.read("room")), (8, 8));
        assert_eq!(one.read("other"), 1);
        two.count("room", 1, false);
        assert_eq!(one.read("room"), 7);
        for counter in &table[AUDIENCE_COUNTERS..] {
            counter.store(0, Relaxed);
        }
        assert_eq!((one.read("room"), one.read("other")), (3, 0));
        let short: &'static [AtomicU32] = Box::leak(Box::new([const { AtomicU32::new(0) }; 3]));
        assert_eq!(
            share_audience(short, 0, keys),
            Err(ShareAudienceError::NoSuchSlot { len: 3, slot: 0 })
        );
        assert_eq!(
            share_audience(table, 2, keys),
            Err(ShareAudienceError::NoSuchSlot {
                len: 2 * AUDIENCE_COUNTERS,
                slot: 2
            })
        );
        // This process read an audience: it keeps its own table.
        let _ = subscribers("room");
        assert_eq!(
            share_audience(table, 1, keys),
            Err(ShareAudienceError::InUse)
        );
    }

    /// What the README's and the module doc's cost of the sketch is
    /// measured on, not a check: 100,000 subscribes and as many
    /// unsubscribes of one connection (`MEGACONN_SKETCH=topics`), the
    /// sketch's part alone (`sketch`: its count in and out for each name),
    /// an exact shared map's instead (`exact`), or neither (`none`: the names only), each run under
    /// `valgrind --tool=callgrind` (release) and the runs subtracted.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn measure_the_sketch() {
        const N: usize = 100_000;
        let names: Vec<String> = (0..N).map(|i| format!("room-{i:08}")).collect();
        let mode = std::env::var("MEGACONN_SKETCH").unwrap_or_default();
        let mut topics = Topics::new(usize::MAX, usize::MAX);
        let a = id(7, 1);
        match mode.as_str() {
            "topics" => {
                for name in &names {
                    assert_eq!(topics.subscribe(a, name), Ok(()));
                }
                for name in &names {
                    topics.unsubscribe(a, name);
                }
            }
            "sketch" => {
                for name in &names {
                    count_audience(std::hint::black_box(name), 1, true);
                }
                for name in &names {
                    count_audience(std::hint::black_box(name), 1, false);
                }
            }
            // What an exact count shared by the workers would cost (the
            // module doc's "Why no exact count").
            "exact" => {
                let exact = std::sync::Mutex::new(HashMap::<Box<str>, u32>::new());
                for joined in [true, false] {
                    for name in &names {
                        let name = std::hint::black_box(name.as_str());
                        let mut map = exact.lock().expect("not poisoned");
                        match (map.get_mut(name), joined) {
                            (Some(n), true) => *n += 1,
                            (None, true) => {
                                map.insert(name.into(), 1);
                            }
                            (Some(n), false) if *n > 1 => *n -= 1,
                            (Some(_), false) => {
                                map.remove(name);
                            }
                            (None, false) => {}
                        }
                    }
                }
                assert!(exact.lock().expect("not poisoned").is_empty());
            }
            _ => {
                for name in &names {
                    std::hint::black_box(name);
                }
            }
        }
        assert!(topics.members.is_empty());
    }
}
