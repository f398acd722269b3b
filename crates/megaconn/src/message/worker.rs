//! One worker's message bookkeeping ([`Local`]), shared by every message
//! protocol on the worker: connection ids, awake connections' outbound
//! queues, topic subscriptions, the registered wire formats, each
//! protocol's side table of parked states, the pump that delivers the
//! [`Hub`](crate::Hub)'s messages on this worker's thread, and the
//! connections' deadlines ([`Hub::close_after`](crate::Hub::close_after))
//! with the timer task that closes them, which runs only while one waits.
//!
//! Subscriptions live here (`topics.rs`), not with the connection, so
//! they hold across park and wake at no cost to connections that do not
//! subscribe; they go when the protocol reports the connection closed
//! ([`Local::closed`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::context::WorkerContext;
use crate::conn::ProtoTag;
use crate::message::census::Waking;
use crate::message::confirm::{self, Undelivered, Waiter};
use crate::message::hub::{
    self, droppable_mark, Buffered, ConnectionId, Delivered, DropCause, Generation, HubQueue,
    IfBehind, Inbox, Kick, Push, Unsent, GENERATION_BITS, GENERATION_MASK,
};
use crate::message::outbound::PushFrame;
use crate::message::stuck::Stuck;
use crate::message::table::{ParkedSet, SendParked, SideTable};
use crate::message::topics::{message_connections_moved, SubscribeError, Topics};
use crate::message::wire::{Encoded, Wire, WireId};
use crate::message::MessageSettings;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood, OverLimit};
use crate::observe::stats::{gauge_own, incr, WorkerStats};

/// A protocol's side table: typed (for the protocol) and as a delivery
/// target (for the pump).
type Table = (ProtoTag, Rc<dyn Any>, Rc<dyn ParkedSet>);

/// What a delivery writes with: the registered wires, and the side tables
/// of parked connections.
type Targets<'a> = (&'a [Rc<dyn Wire>], &'a [Rc<dyn ParkedSet>]);

/// One worker's message state (in the worker context's protocol slot).
pub(crate) struct Local {
    /// Itself, for this thread's lists of states ([`buffered_here`]).
    me: Weak<Local>,
    /// Whether it is in this thread's list of workers' states ([`HERE`]):
    /// from its first connection on a socket of its own.
    listed: Cell<bool>,
    worker: usize,
    stats: Arc<WorkerStats>,
    /// The bound of each awake connection's outbound queue, in messages.
    queue_limit: usize,
    /// Whether the server has a hub (else no inbox is kept).
    has_hub: bool,
    /// Connections reached per second with one hub message (`None`: no limit).
    delivery_rate: Option<f64>,
    /// The last generation issued (0 before the first).
    next_generation: Cell<Generation>,
    /// Generations left in the block the worker took ([`GENERATION_BLOCK`]).
    block_left: Cell<Generation>,
    /// Awake connections' outbound queues, with their generation.
    awake: RefCell<HashMap<RawFd, (Generation, Rc<Inbox>)>>,
    /// Connections taken out of a side table (woken, closed by the lot,
    /// handed over) and not yet awake, parked again or closed: counted
    /// still, their count on its way to their next place (`census.rs`).
    waking: Waking,
    /// Topic subscriptions, both ways.
    topics: RefCell<Topics>,
    wires: RefCell<Vec<Rc<dyn Wire>>>,
    /// The protocol of each of `wires` (`MessageProtocol`), for the gauges
    /// of message connections by protocol: an awake connection is known
    /// by its wire.
    wire_protocols: RefCell<Vec<Option<usize>>>,
    /// Each protocol's side table.
    tables: RefCell<Vec<Table>>,
    /// Parked connections [`Hub::close`](crate::Hub::close) reached, until
    /// they wake (at once: their read side was shut) and take their close
    /// into their inbox ([`Local::awake`]).
    kicks: ForParked<Kick>,
    /// Parked connections a push found behind, with what of it the socket
    /// did not take (the rest of the frame it took part of; over TLS, the
    /// records sealed for it), until they wake to write it first
    /// ([`Local::take_owed`] to resume, [`Local::take_unsent`] to close).
    unsent: ForParked<Unsent>,
    /// Parked connections a push found behind and the lot wakes to resume
    /// (`Wake::Owed`): the outbound queue of each, made then, which the
    /// pushes after that one join, in order, behind what it owes (written
    /// straight to the socket, they would land inside the frame owed), and
    /// which [`Local::awake`] registers as its queue when it wakes. Its
    /// bound is an awake queue's: one that overflows before the connection
    /// woke closes it as a slow consumer once awake. What it holds when the
    /// connection closes without waking counts in `queue_drops`
    /// ([`Local::closed`]).
    resuming: ForParked<Rc<Inbox>>,
    /// Connections in their close: out of the awake map (or woken from the
    /// side table to close) and not reported closed yet ([`Local::closed`]):
    /// a slow consumer writing the rest of its frame and its 1013, a
    /// WebSocket in its close handshake. A publish or broadcast that finds
    /// one counts as dropped for it (`queue_drops`), as a send does; without
    /// this a broadcast could not tell such a connection from a descriptor
    /// holding none. Empty but while closes run.
    leaving: ForParked<()>,
    /// Parked connections droppable pushes found behind, since when, and
    /// the bound past which one closes as a slow consumer (`stuck.rs`):
    /// empty while every parked peer keeps up.
    stuck: Stuck,
    /// Connections to close at a time of their own
    /// ([`Hub::close_after`](crate::Hub::close_after)), until it comes,
    /// is cancelled or they close: empty, and no timer task, unless one
    /// has a deadline.
    deadlines: RefCell<Deadlines>,
}

/// The deadlines of [`Local::deadlines`]: by descriptor (to replace or
/// cancel one, and to forget it at the close) and in time order (for the
/// timer), with the timer task's wake-up while one runs. About 100 B per
/// connection with a deadline (an entry in each), nothing for the others.
#[derive(Default)]
struct Deadlines {
    by_fd: HashMap<RawFd, (Generation, Instant)>,
    /// The close of a deadline set with its own code
    /// ([`Hub::close_after_with`](crate::Hub::close_after_with)), by
    /// descriptor, beside its entry in `by_fd`: empty unless one was (a
    /// plain `close_after` closes with 1008 and keeps nothing here).
    kicks: HashMap<RawFd, Kick>,
    due: BTreeSet<(Instant, RawFd, Generation)>,
    /// Wakes the timer task to look at the earliest deadline again; `None`
    /// while none runs.
    timer: Option<Rc<Notify>>,
}

impl Deadlines {
    /// Takes away descriptor `fd`'s deadline, if it is of `generation`
    /// (`None`: whoever's). The map gives its room back once a quarter full,
    /// as [`ForParked`] does: a burst of authentication deadlines (a
    /// reconnect storm) left its room for the life of the worker.
    fn remove(&mut self, fd: RawFd, generation: Option<Generation>) {
        if self.by_fd.is_empty() {
            return;
        }
        let held = self.by_fd.get(&fd).copied();
        if let Some((g, at)) = held.filter(|(g, _)| generation.is_none_or(|want| *g == want)) {
            self.by_fd.remove(&fd);
            self.kicks.remove(&fd);
            self.due.remove(&(at, fd, g));
            if self.by_fd.len() * 4 < self.by_fd.capacity() {
                let room = self.by_fd.len() * 2;
                self.by_fd.shrink_to(room);
            }
            // The same for the closes with their own code: a storm of
            // `close_after_with` deadlines left its room too (review,
            // session 47).
            if self.kicks.len() * 4 < self.kicks.capacity() {
                let room = self.kicks.len() * 2;
                self.kicks.shrink_to(room);
            }
        }
    }
}

/// Closes worker `local`'s connections as their deadlines come
/// ([`Local::close_due`]), sleeping until the earliest or until `timer`
/// says one was set; ends when none is left (the next deadline starts a
/// new one) or the worker's state is gone.
async fn close_at_deadlines(local: Weak<Local>, timer: Rc<Notify>) {
    loop {
        let next = match local.upgrade() {
            Some(local) => local.close_due(),
            None => return,
        };
        let Some(next) = next else { return };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = timer.notified() => {}
        }
    }
}

/// Something kept for parked connections woken to close, by descriptor,
/// with the generation of the connection it is for, until that connection
/// wakes and takes it (or closes). Kept beside the side table, not in its
/// slots, so a parked connection pays nothing for it; it is empty but for
/// the moment between a close's cause and its wake-up; and its room goes
/// as its entries do ([`ForParked::take`]).
struct ForParked<T>(RefCell<HashMap<RawFd, (Generation, T)>>);

impl<T> Default for ForParked<T> {
    fn default() -> Self {
        ForParked(RefCell::default())
    }
}

impl<T> ForParked<T> {
    /// Keeps `value` for connection `id` (replacing one kept for it, or for
    /// a connection that had its descriptor).
    fn put(&self, id: ConnectionId, value: T) {
        self.0
            .borrow_mut()
            .insert(id.fd(), (id.generation(), value));
    }

    /// Whether something is kept for connection `id`.
    fn holds(&self, id: ConnectionId) -> bool {
        let kept = self.0.borrow();
        !kept.is_empty()
            && kept
                .get(&id.fd())
                .is_some_and(|(g, _)| *g == id.generation())
    }

    /// What is kept for connection `id`, cloned (left kept).
    fn get(&self, id: ConnectionId) -> Option<T>
    where
        T: Clone,
    {
        let kept = self.0.borrow();
        if kept.is_empty() {
            return None;
        }
        kept.get(&id.fd())
            .filter(|(g, _)| *g == id.generation())
            .map(|(_, v)| v.clone())
    }

    /// The generation of the connection something is kept for at `fd`.
    fn generation(&self, fd: RawFd) -> Option<Generation> {
        let kept = self.0.borrow();
        if kept.is_empty() {
            return None;
        }
        kept.get(&fd).map(|(g, _)| *g)
    }

    /// One past the highest descriptor something is kept for (0: none).
    fn end(&self) -> usize {
        let kept = self.0.borrow();
        let highest = kept.keys().max().map_or(-1, |&fd| fd);
        usize::try_from(highest + 1).unwrap_or(0)
    }

    /// What is kept for connection `id`, taken. The map gives its room
    /// back once it is a quarter full (all of it, empty), as the awake
    /// map and a connection's topics do: a map never shrinks by itself,
    /// and a burst (a broadcast that found thousands of parked
    /// connections behind, a `Hub::close` of as many) left the room of
    /// all of them, 57 bytes an entry, for the life of the worker.
    fn take(&self, id: ConnectionId) -> Option<T> {
        let mut kept = self.0.borrow_mut();
        if kept.is_empty() {
            return None;
        }
        let taken = match kept.get(&id.fd()) {
            Some((g, _)) if *g == id.generation() => kept.remove(&id.fd()).map(|(_, v)| v),
            _ => None,
        };
        if kept.len() * 4 < kept.capacity() {
            let room = kept.len() * 2;
            kept.shrink_to(room);
        }
        taken
    }
}

/// How many generations a worker takes from [`NEXT_BLOCK`] at a time: one
/// shared atomic per thousand connections, not per connection.
const GENERATION_BLOCK: Generation = 1 << 10;

/// The first generation of the next block, for every worker of every
/// server in this process: a [`ConnectionId`] is worker, descriptor and
/// generation, and with each worker counting its own from 1, the first
/// connections of two servers' workers of the same index had the same
/// generation, and one accepted on the descriptor the other had closed the
/// same id (a map of ids kept across both servers, or the number
/// [`ConnectionId::as_u128`] gave, took them for one). Blocks are taken in
/// order, so each worker's generations still grow (a broadcast tells the
/// connections it owes by them, `Recipients::Every`); from 1, so that 0
/// is "none issued yet". [`GENERATION_BLOCK`] divides 2^46: a block never
/// straddles the wrap.
static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);

/// This worker's message state, made on first use (which starts the hub's
/// pump for this worker, if the server has a hub: the worker makes it at
/// its start then, `server/worker.rs`). Call from a task on the worker's
/// runtime.
pub(crate) fn local(ctx: &WorkerContext) -> Rc<Local> {
    let slot: Rc<dyn Any> = ctx
        .protocol_local
        .get_or_init(|| {
            let settings = MessageSettings::of(&ctx.config)
                .cloned()
                .unwrap_or_default();
            let local = Rc::new_cyclic(|me| Local {
                me: me.clone(),
                listed: Cell::new(false),
                worker: ctx.index,
                stats: ctx.stats.clone(),
                queue_limit: settings.outbound_queue.max(1),
                has_hub: settings.hub.is_some(),
                delivery_rate: settings.delivery_rate,
                next_generation: Cell::new(0),
                block_left: Cell::new(0),
                awake: RefCell::default(),
                waking: Waking::default(),
                topics: RefCell::new(
                    Topics::new(settings.max_subscriptions, settings.max_topic_bytes)
                        .counted(ctx.stats.clone())
                        .exporting(settings.topic_metrics.clone()),
                ),
                wires: RefCell::default(),
                wire_protocols: RefCell::default(),
                tables: RefCell::default(),
                kicks: ForParked::default(),
                unsent: ForParked::default(),
                resuming: ForParked::default(),
                leaving: ForParked::default(),
                stuck: Stuck::new(MessageSettings::write_limit_without_heartbeat(&ctx.config)),
                deadlines: RefCell::default(),
            });
            if let Some(queue) = settings.hub.and_then(|hub| hub.take_end(ctx.index)) {
                // A pump dropped before its first poll (the worker stopped
                // at once) still lets what it never took leave the gauge:
                // the queue's own drop does that.
                tokio::task::spawn_local(pump(Rc::downgrade(&local), queue));
            }
            local
        })
        .clone();
    slot.downcast()
        .unwrap_or_else(|_| unreachable!("the protocol slot holds the message layer's state"))
}

thread_local! {
    /// The message states on this thread whose connections have sockets
    /// (none on other threads), for [`buffered_here`]: a worker's queues
    /// are its own, readable only on its thread. One on a worker's thread
    /// (one per worker of each server whose worker runs there, in tests).
    /// (It was one slot, which a `Builder::serve_connection`'s state took
    /// over: the worker's `Hub::buffered` answered `None` for all its
    /// connections from then on. Session 48 made it a list of every state,
    /// each `serve_connection` run's too, which each new state walked to
    /// forget the gone ones and each `Hub::buffered` walked to find its
    /// connection: O(runs alive on the thread) each. Session 49 keeps
    /// those apart, [`FOREIGN`].)
    static HERE: RefCell<Vec<Weak<Local>>> = const { RefCell::new(Vec::new()) };

    /// The connections on this thread served on a transport of the
    /// caller's own (`Builder::serve_connection`: no socket, descriptor
    /// -1), each by the state its run made, by generation (unique in the
    /// process): one hash look-up finds it, however many runs the thread
    /// holds. In from its id's issue (`Local::new_id`), out at its close
    /// (`Local::closed`).
    static FOREIGN: RefCell<HashMap<Generation, Weak<Local>>> = RefCell::new(HashMap::new());
}

/// Lists `local` among this thread's workers' states, forgetting those
/// that are gone (a worker's of a server that stopped), so the list stays
/// as long as the states alive on the thread.
fn here(local: &Weak<Local>) {
    HERE.with(|here| {
        let mut here = here.borrow_mut();
        here.retain(|l| l.strong_count() > 0);
        here.push(local.clone());
    });
}

/// Notes connection `id`, of no socket, as `local`'s ([`FOREIGN`]). Those
/// of states gone without reporting their close are forgotten as the map
/// doubles, so it stays within twice the connections alive.
fn foreign(id: ConnectionId, local: &Weak<Local>) {
    FOREIGN.with(|foreign| {
        let mut foreign = foreign.borrow_mut();
        if foreign.len() >= 64 && foreign.len().is_power_of_two() {
            foreign.retain(|_, l| l.strong_count() > 0);
        }
        foreign.insert(id.generation(), local.clone());
    });
}

/// Connection `id`, of no socket, closed: forgotten ([`FOREIGN`]).
fn foreign_closed(id: ConnectionId) {
    FOREIGN.with(|foreign| {
        let mut foreign = foreign.borrow_mut();
        foreign.remove(&id.generation());
        if foreign.len() * 4 < foreign.capacity() {
            let room = foreign.len() * 2;
            foreign.shrink_to(room);
        }
    });
}

/// What waits in connection `id`'s outbound queue, asked on its worker's
/// thread ([`Hub::buffered`](crate::Hub::buffered)): `None` on another
/// thread, or for a connection that has closed. Parked, it has nothing
/// queued, unless a push found its socket full and it is waking to
/// resume with a queue. A connection with a socket: two lookups in the
/// worker's maps per worker state on the thread (one); one of a
/// `serve_connection` run: a hash look-up of its generation, then the
/// same in its run's state. No lock, and no walk of the runs alive on the
/// thread. The state that knows the connection answers: ids are the
/// process's own (generations are never issued twice), so no other state
/// has one of the same descriptor and generation.
pub(crate) fn buffered_here(id: ConnectionId) -> Option<Buffered> {
    if id.fd() < 0 {
        let local = FOREIGN.with(|foreign| foreign.borrow().get(&id.generation()).cloned());
        return local?.upgrade()?.buffered(id);
    }
    HERE.with(|here| {
        here.borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|local| local.worker == id.worker())
            .find_map(|local| local.buffered(id))
    })
}

impl Local {
    /// What waits in the outbound queue of this worker's connection `id`
    /// (see [`buffered_here`]).
    pub(crate) fn buffered(&self, id: ConnectionId) -> Option<Buffered> {
        let awake = match self.awake.borrow().get(&id.fd()) {
            Some((g, inbox)) if *g == id.generation() => Some(inbox.buffered()),
            _ => None,
        };
        if awake.is_some() {
            return awake;
        }
        if let Some(inbox) = self.resuming.get(id) {
            return Some(inbox.buffered());
        }
        let parked = self
            .parked_sets()
            .iter()
            .any(|set| set.generation(id.fd()) == Some(id.generation()));
        parked.then(Buffered::default)
    }

    /// The worker's counters.
    pub(crate) fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// A fresh id for a connection accepted on this worker: the next
    /// generation of the worker's block, or the first of a new one.
    pub(crate) fn new_id(&self, fd: RawFd) -> ConnectionId {
        let generation = match self.block_left.get() {
            0 => {
                self.block_left.set(GENERATION_BLOCK - 1);
                NEXT_BLOCK.fetch_add(GENERATION_BLOCK, Ordering::Relaxed) & GENERATION_MASK
            }
            left => {
                self.block_left.set(left - 1);
                self.next_generation.get().wrapping_add(1) & GENERATION_MASK
            }
        };
        self.next_generation.set(generation);
        let id = ConnectionId::new(self.worker, fd, generation);
        // A connection taken from a side table on this descriptor that
        // never came back nor reported its close (none should): its socket
        // is closed (the kernel gave its number to this one), so its count
        // goes rather than stay for the life of the worker.
        if let Some((_, protocol)) = self.waking.take_descriptor(fd) {
            connections_moved(&self.stats, protocol, -1);
        }
        // Only a hub reads it (`Hub::send` of a closed connection's id).
        if self.has_hub {
            super::open::opened(id);
        }
        // Where `Hub::buffered` finds it on this thread.
        if fd < 0 {
            foreign(id, &self.me);
        } else if !self.listed.replace(true) {
            here(&self.me);
        }
        id
    }

    /// The id of this worker's connection `fd` with `generation`.
    pub(crate) fn id(&self, fd: RawFd, generation: Generation) -> ConnectionId {
        ConnectionId::new(self.worker, fd, generation)
    }

    /// Protocol `tag`'s side table for states of type `S`; made on first
    /// use with the wires `wires` gives (one per variant), registered here.
    /// A protocol keeps one table per state type: its handlers may differ
    /// (WebSocket routes do), and a typed table holds states inline.
    pub(crate) fn table<S: 'static>(
        &self,
        (tag, protocol): (ProtoTag, Option<MessageProtocol>),
        wires: impl FnOnce() -> Vec<Rc<dyn Wire>>,
    ) -> Rc<SideTable<S>> {
        self.table_sending::<S>((tag, protocol), wires, || None)
    }

    /// [`Local::table`], whose pushes to parked sockets are written by
    /// `send` (made on first use) instead of as they are.
    pub(crate) fn table_sending<S: 'static>(
        &self,
        (tag, protocol): (ProtoTag, Option<MessageProtocol>),
        wires: impl FnOnce() -> Vec<Rc<dyn Wire>>,
        send: impl FnOnce() -> Option<SendParked>,
    ) -> Rc<SideTable<S>> {
        let found = self
            .tables
            .borrow()
            .iter()
            .find(|(t, table, _)| *t == tag && table.is::<SideTable<S>>())
            .map(|(_, table, _)| table.clone());
        let table = found.unwrap_or_else(|| {
            let ids = wires()
                .into_iter()
                .map(|wire| {
                    let mut all = self.wires.borrow_mut();
                    all.push(wire);
                    self.wire_protocols
                        .borrow_mut()
                        .push(protocol.map(|p| p as usize));
                    WireId::try_from(all.len() - 1).expect("fewer than 65,536 wire formats")
                })
                .collect();
            let table = SideTable::<S>::new(ids, send())
                .counted(self.me.clone(), protocol.map(|p| p as usize));
            let table = Rc::new(table);
            self.tables
                .borrow_mut()
                .push((tag, table.clone(), table.clone()));
            table
        });
        table
            .downcast()
            .unwrap_or_else(|_| unreachable!("found or made for this state type"))
    }

    /// Registers an awake connection's outbound queue (without a hub, there
    /// is nothing to queue: `None`). It is unregistered when the returned
    /// guard drops (the connection parks or closes).
    pub(crate) fn awake(self: &Rc<Self>, id: ConnectionId, wire: WireId) -> Option<Awake> {
        // Woken from a side table: counted since it left it (`census.rs`).
        let woken = self.waking.take(id);
        if !self.has_hub {
            // Awake, it is not counted without a hub (nothing to push, and
            // no broadcast reaches it: `ServerHandle::message_connections`).
            if let Some(was) = woken {
                connections_moved(&self.stats, was, -1);
            }
            return None;
        }
        // Woken to resume after a push it was behind on: the pushes since
        // wait in the queue made for it then (`Local::overflowed`).
        let inbox = self
            .resuming
            .take(id)
            .unwrap_or_else(|| Rc::new(Inbox::new(wire)));
        // Not forgotten by `stuck` (a wake is no progress: its module doc);
        // awake, its writes have their own bound meanwhile.
        // Woken to close (`Local::kick`): the close waits in its inbox, as
        // an awake connection's does.
        if let Some(kick) = self.kicks.take(id) {
            inbox.kick(kick);
        }
        let stale = self
            .awake
            .borrow_mut()
            .insert(id.fd(), (id.generation(), inbox.clone()));
        let now = self.protocol_of(wire);
        match (stale, woken) {
            // What a broadcast reaches (`ServerHandle::message_connections`).
            (None, None) => connections_moved(&self.stats, now, 1),
            // Woken: its count was kept meanwhile, and stays (`census.rs`).
            (None, Some(was)) => recounted(&self.stats, was, now),
            // It replaced a stale entry on its descriptor, counted already
            // (the total stays): under its own protocol, if another's.
            // (Merge review of `hubwait`, session 46: the stale one's
            // protocol kept it, and the new one's never counted it.)
            (Some((_, old)), None) => recounted(&self.stats, self.protocol_of(old.wire), now),
            // Both counted: the stale entry's count goes.
            (Some((_, old)), Some(was)) => {
                connections_moved(&self.stats, self.protocol_of(old.wire), -1);
                recounted(&self.stats, was, now);
            }
        }
        Some(Awake {
            local: self.clone(),
            id,
            inbox,
        })
    }

    /// Subscribes connection `id` to `topic` (again: no change), unless it
    /// holds `max_subscriptions` topics already or the name is over
    /// `max_topic_bytes`: refused, counted and logged.
    pub(crate) fn subscribe(&self, id: ConnectionId, topic: &str) -> Result<(), SubscribeError> {
        let subscribed = self.topics.borrow_mut().subscribe(id, topic);
        let Err(refused) = subscribed else {
            return subscribed;
        };
        let (hit, over, then) = refused_subscription(refused, topic.len());
        hit.count(&self.stats);
        ratelog::over_limit(over, || super::session::peer_of(id.fd()), then);
        subscribed
    }

    /// The topics connection `id` holds (for a hand-over to the next
    /// process, `proto/framed/adopt.rs`).
    pub(crate) fn topics_of(&self, id: ConnectionId) -> Vec<Rc<str>> {
        self.topics.borrow().of(id)
    }

    /// Unsubscribes connection `id` from `topic` (not subscribed: no change).
    pub(crate) fn unsubscribe(&self, id: ConnectionId, topic: &str) {
        self.topics.borrow_mut().unsubscribe(id, topic);
    }

    /// Connection `id` closed: the hub's sends to it are refused from now
    /// on (`open.rs`), it leaves its topics (and a close the hub asked for,
    /// or the rest of a push, that it did not wake to take).
    pub(crate) fn closed(&self, id: ConnectionId) {
        if self.has_hub {
            super::open::closed(id);
        }
        if id.fd() < 0 {
            foreign_closed(id);
        }
        self.leaving.take(id);
        // Taken from a side table and closed there (by the lot, handed
        // over, or woken and closed before it registered): its count goes
        // now (an awake one's goes as its registration drops).
        if let Some(was) = self.waking.take(id) {
            connections_moved(&self.stats, was, -1);
        }
        // Reported before its registration for pushes drops (framed TCP and
        // SSE close with it held): its drop must not take it for leaving.
        if let Some((g, inbox)) = self.awake.borrow().get(&id.fd()) {
            if *g == id.generation() {
                inbox.ended();
            }
        }
        self.topics.borrow_mut().closed(id);
        self.kicks.take(id);
        self.stuck.forget(id);
        self.deadlines
            .borrow_mut()
            .remove(id.fd(), Some(id.generation()));
        // Closed before it woke to write the rest of its push: the push
        // never reached the peer whole, nor did those queued behind it.
        let cause = self.behind_cause(id);
        if let Some(unsent) = self.unsent.take(id) {
            self.unsent_lost(&unsent, cause);
        }
        self.drop_resuming(id);
        super::budget::forget(id);
    }

    /// The rest of a push a parked connection owed never went whole, lost
    /// for `cause` ([`Local::behind_cause`]): counted so, and a confirmed
    /// push's waiter told [`Undelivered::SlowConsumer`] for a slow
    /// consumer's (else its drop says `Closed`, or `Shutdown` while the
    /// worker shuts down). The one rule for a close before it woke
    /// ([`Local::closed`]) and the lot's own close of it
    /// ([`Local::let_go_unsent`]), cleartext or TLS.
    fn unsent_lost(&self, unsent: &Unsent, cause: DropCause) {
        cause.count(&self.stats.messages);
        if cause == DropCause::SlowConsumer {
            confirm::resolve(unsent.waiter.as_ref(), Err(Undelivered::SlowConsumer));
        }
    }

    /// The lot closes parked connection `id` itself (shutdown, its idle
    /// deadline: `proto::parked::let_go`) while it owes the rest of a push
    /// it fell behind on: that rest is taken and written at once with
    /// `write` (one non-blocking `send` in the clear, the sealed records
    /// over TLS: whether it went whole). Whole, the push counts delivered
    /// and a confirmed one's waiter hears `Ok`; else it is lost as
    /// [`Local::closed`] loses it ([`Local::unsent_lost`]). (Session 48
    /// wrote it only over TLS, and a rest that did not go was counted
    /// there without a word to its waiter, which heard `Closed` where the
    /// cleartext path, `closed`, said `SlowConsumer`; a cleartext one that
    /// had room was not written, its waiter told it was lost.)
    pub(crate) fn let_go_unsent(&self, id: ConnectionId, write: impl FnOnce(&[u8]) -> bool) {
        let cause = self.behind_cause(id);
        let Some(unsent) = self.take_unsent(id) else {
            return;
        };
        if write(&unsent.tail) {
            super::wake::count_unsent(&unsent, Ok(()), &self.stats.messages);
        } else {
            self.unsent_lost(&unsent, cause);
        }
    }

    /// Why the push parked connection `id` fell behind on is lost if what
    /// its socket did not take of it never goes: woken to resume, to the
    /// close that came first (`closed`); woken to close (the lot could not
    /// wake it to resume), to its peer's full socket, a slow consumer's, as
    /// the pushes that find it so are (`Delivered::Behind`). (Both counted
    /// `closed` until session 48.) Asked before [`Local::take_unsent`],
    /// which forgets that it was resuming.
    pub(crate) fn behind_cause(&self, id: ConnectionId) -> DropCause {
        match self.resuming.holds(id) {
            true => DropCause::Closed,
            false => DropCause::SlowConsumer,
        }
    }

    /// Connection `id` closes without waking to resume: the pushes queued
    /// for it behind the one it owed are dropped, counted in `queue_drops`.
    fn drop_resuming(&self, id: ConnectionId) {
        if let Some(inbox) = self.resuming.take(id) {
            let cause = inbox.drop_cause();
            cause.count_n(&self.stats.messages, inbox.drop_behind() as u64);
        }
    }

    /// Whether [`Hub::close`](crate::Hub::close) reached parked connection
    /// `id`, which has not woken to take it yet.
    pub(crate) fn is_kicked(&self, id: ConnectionId) -> bool {
        self.kicks.holds(id)
    }

    /// What parked connection `id`'s socket did not take of the push that
    /// found it full, taken: the woken connection writes it first, raw on
    /// its socket (the rest of a frame, or over TLS of the records sealed
    /// for it), then closes as a slow consumer, and counts the push
    /// (`message::wake::write_unsent`). `None` when the socket took none of
    /// it (over cleartext: nothing of the frame went, so nothing is owed;
    /// the push was counted as dropped then).
    pub(crate) fn take_unsent(&self, id: ConnectionId) -> Option<Unsent> {
        // Asked only by a connection that closes (woken behind, or late for
        // its heartbeat; or closed by the lot): it is leaving until its
        // close is reported, and what the hub sends it meanwhile is dropped,
        // as is what was queued for it to resume with.
        if self.has_hub {
            self.leaving.put(id, ());
        }
        self.drop_resuming(id);
        self.unsent.take(id)
    }

    /// What woken connection `id` owes of the push that found its socket
    /// full, taken, when it resumes ([`Local::is_resuming`]): it writes
    /// that first, raw on its socket, as an awake write bounded by its
    /// write limit (`message::wake::write_owed_resuming`), then what its
    /// queue holds. `None`: nothing owed (the socket took none of that
    /// push, which waits whole in its queue).
    pub(crate) fn take_owed(&self, id: ConnectionId) -> Option<Unsent> {
        self.unsent.take(id)
    }

    /// Whether parked connection `id`, behind on a push, was asked woken to
    /// resume (`Wake::Owed`) rather than to close: its wake-up, whatever
    /// its cause, resumes it ([`Local::take_owed`]).
    pub(crate) fn is_resuming(&self, id: ConnectionId) -> bool {
        self.resuming.holds(id)
    }

    /// Connection `id` parked in a side table of `protocol`
    /// (`SideTable::put`): the count it holds moves there with it, from
    /// its registration for pushes (which goes now: parked, pushes reach
    /// it in the table) or from [`Waking`] (a hand-over that did not move
    /// it); one that held none (adopted from another process, or awake
    /// without a hub) is counted now.
    pub(crate) fn parked(&self, id: ConnectionId, protocol: Option<usize>) {
        if let Some(was) = self.waking.take(id) {
            return recounted(&self.stats, was, protocol);
        }
        if let Some(inbox) = self.unregister(id) {
            return recounted(&self.stats, self.protocol_of(inbox.wire), protocol);
        }
        connections_moved(&self.stats, protocol, 1);
    }

    /// Connection `id` left a side table of `protocol` (`SideTable::take`:
    /// woken, closed by the lot, handed over): counted still, in
    /// [`Waking`], until it registers ([`Local::awake`]), parks again or
    /// closes ([`Local::closed`]).
    pub(crate) fn left_table(&self, id: ConnectionId, protocol: Option<usize>) {
        if let Some(stale) = self.waking.put(id, protocol) {
            connections_moved(&self.stats, stale, -1);
        }
    }

    /// Connection `id`'s registration for pushes, taken out of the awake
    /// map (its queue), if it has one.
    fn unregister(&self, id: ConnectionId) -> Option<Rc<Inbox>> {
        let mut awake = self.awake.borrow_mut();
        let (g, _) = awake.get(&id.fd())?;
        if *g != id.generation() {
            return None;
        }
        let (_, inbox) = awake.remove(&id.fd())?;
        // A ramp leaves the map sized for every connection awake at once;
        // once most have parked, that room would stay (~17 bytes a slot,
        // per connection of the peak, for the life of the worker).
        if awake.capacity() > 1024 && awake.len() * 4 < awake.capacity() {
            let room = awake.len() * 2;
            awake.shrink_to(room);
        }
        Some(inbox)
    }

    /// The protocol (`MessageProtocol`) whose table registered `wire`.
    fn protocol_of(&self, wire: WireId) -> Option<usize> {
        let protocols = self.wire_protocols.borrow();
        protocols.get(usize::from(wire)).copied().flatten()
    }

    /// Whether connection `id` is parked in one of the worker's side
    /// tables (no list is made: `Awake`'s drop asks at every park).
    fn is_parked(&self, id: ConnectionId) -> bool {
        let tables = self.tables.borrow();
        tables
            .iter()
            .any(|(_, _, set)| set.generation(id.fd()) == Some(id.generation()))
    }

    /// Sets connection `id`'s deadline ([`Push::Deadline`]), replacing the
    /// one its descriptor had (its own, or a closed connection's left by a
    /// race with its close), or takes it away (`None`). Starts the timer
    /// task if none runs, else wakes it to look at the earliest again.
    fn set_deadline(self: &Rc<Self>, id: ConnectionId, at: Option<Instant>) {
        self.set_deadline_with(id, at, None);
    }

    /// [`Local::set_deadline`], closing with `kick` (`None`: 1008, as
    /// [`Hub::close`](crate::Hub::close)) when it comes.
    fn set_deadline_with(
        self: &Rc<Self>,
        id: ConnectionId,
        at: Option<Instant>,
        kick: Option<Kick>,
    ) {
        // Only for the connection open on its descriptor: a deadline or a
        // cancel for one that closed (queued before its close, taken after)
        // would otherwise replace or remove the deadline of the connection
        // now on that descriptor (an unauthenticated one kept for good).
        if self.generation_at(id.fd(), &self.parked_sets()) != Some(id.generation()) {
            return;
        }
        let mut deadlines = self.deadlines.borrow_mut();
        deadlines.remove(id.fd(), None);
        let Some(at) = at else { return };
        deadlines.by_fd.insert(id.fd(), (id.generation(), at));
        if let Some(kick) = kick {
            deadlines.kicks.insert(id.fd(), kick);
        }
        deadlines.due.insert((at, id.fd(), id.generation()));
        match &deadlines.timer {
            Some(timer) => timer.notify_one(),
            None => {
                let timer = Rc::new(Notify::new());
                deadlines.timer = Some(timer.clone());
                tokio::task::spawn_local(close_at_deadlines(Rc::downgrade(self), timer));
            }
        }
    }

    /// Closes the connections whose deadline has come (as
    /// [`Hub::close`](crate::Hub::close) does, through [`Local::kick`]);
    /// the next deadline, or `None` when none is left (the timer task
    /// ends then).
    fn close_due(&self) -> Option<Instant> {
        let now = Instant::now();
        loop {
            let due = {
                let mut deadlines = self.deadlines.borrow_mut();
                match deadlines.due.first().copied() {
                    Some((at, fd, generation)) if at <= now => {
                        let kick = deadlines.kicks.remove(&fd);
                        deadlines.remove(fd, Some(generation));
                        (self.id(fd, generation), kick)
                    }
                    Some((at, _, _)) => return Some(at),
                    None => {
                        deadlines.timer = None;
                        return None;
                    }
                }
            };
            let (due, kick) = due;
            let kick = kick.unwrap_or(Kick {
                code: hub::POLICY_VIOLATION,
                reason: bytes::Bytes::new(),
            });
            self.kick(due, kick);
        }
    }

    /// A push (`msg`) found parked connection `id` behind
    /// ([`Delivered::Overflowed`]): what its socket did not take waits here
    /// (`unsent`), and the lot wakes it to write that and resume awake
    /// (`Wake::Owed`), its read side untouched; meanwhile its pushes join a
    /// queue made for it now, framed for `wire` ([`Local::resuming`]), the
    /// first of them this push when the socket took none of it. It is a
    /// slow consumer only by the awake rule: its queue overflows, or its
    /// socket takes none of what it owes within its write limit.
    ///
    /// Only when the lot cannot wake it (it was refused a slot, and waits
    /// awake on its own: `conn/park/awake.rs`) is its read side shut,
    /// which wakes it to close as a slow consumer, as
    /// [`Hub::close`](crate::Hub::close) wakes one to close (a push none of
    /// which went is dropped then). (That was every behind connection's
    /// lot: any push larger than the parked socket's send buffer closed a
    /// connection whose client read at once.) Called right after the side
    /// table found it parked with that generation, on this thread: the
    /// socket is that connection's.
    ///
    /// A confirmed push's `waiter` goes with what it owes, or with the push
    /// in the queue; dropped (none of it went, and it cannot resume), it
    /// hears [`Undelivered::SlowConsumer`].
    fn overflowed(
        &self,
        id: ConnectionId,
        (unsent, wire): (Option<Unsent>, WireId),
        msg: &mut Encoded,
        wires: &[Rc<dyn Wire>],
        mut waiter: Option<Waiter>,
    ) {
        let unsent = unsent.map(|unsent| Unsent {
            waiter: waiter.take(),
            ..unsent
        });
        if crate::conn::park::wake_owed(id.fd()) {
            let inbox = Rc::new(Inbox::new(wire));
            match unsent {
                Some(unsent) => self.unsent.put(id, unsent),
                // The first push of a fresh queue, under any mark:
                // queued whatever it does to a connection behind.
                None => {
                    self.queue(id, &inbox, msg, wires, &mut waiter, IfBehind::Close);
                }
            }
            self.resuming.put(id, inbox);
            return;
        }
        match unsent {
            Some(unsent) => self.unsent.put(id, unsent),
            None => {
                DropCause::SlowConsumer.count(&self.stats.messages);
                confirm::resolve(waiter.as_ref(), Err(Undelivered::SlowConsumer));
            }
        }
        ratelog::log(Flood::SlowConsumer, |suppressed| {
            tracing::info!(
                connection = %id,
                peer = ?super::session::peer_of(id.fd()),
                suppressed,
                "a parked connection's socket buffer is full and it cannot be woken to resume; closing it as a slow consumer (raise Builder::message_send_buffer_size if its peer is only bursty)"
            )
        });
        hub::wake_to_close(id.fd());
    }

    /// Closes connection `id` for the hub ([`Push::Close`]): awake, its
    /// inbox takes the close behind what is queued; parked, the close waits
    /// here and its read side is shut, which wakes it (a hang-up, to the
    /// lot) to take it and close, writing to the socket as it does (a
    /// WebSocket's close frame). Closed already: nothing.
    fn kick(&self, id: ConnectionId, kick: Kick) {
        let (fd, generation) = (id.fd(), id.generation());
        let inbox = match self.awake.borrow().get(&fd) {
            Some((g, inbox)) if *g == generation => Some(inbox.clone()),
            Some(_) => return,
            None => None,
        };
        if let Some(inbox) = inbox {
            inbox.kick(kick);
            return;
        }
        let parked = self.parked_sets();
        if parked
            .iter()
            .any(|set| set.generation(fd) == Some(generation))
        {
            // As for an awake connection (`Inbox::kick`): the first close
            // stands, but a reset takes the place of a close. A close after
            // a reset replaced it here, and the parked connection woke to a
            // graceful close (merge review, session 46).
            if kick.is_reset() || !self.kicks.holds(id) {
                self.kicks.put(id, kick);
            }
            hub::wake_to_close(fd);
        }
    }

    /// Who one message from the hub goes to, taken when the pump gets to
    /// it, with its payload.
    fn recipients(&self, push: Push) -> (Recipients, Encoded) {
        match push {
            Push::To(to, payload, kind, _) => (
                Recipients::Listed(vec![(to.fd(), to.generation())].into_iter()),
                Encoded::new(payload, kind),
            ),
            Push::Topic(topic, payload, kind, _) => {
                let members = topic.recipients(&self.topics.borrow(), &self.stats);
                (
                    Recipients::Listed(members.into_iter()),
                    Encoded::new(payload, kind),
                )
            }
            Push::All(payload, kind, _) => {
                let awake_end = self.awake.borrow().keys().max().map_or(0, |&fd| fd + 1);
                let end = self
                    .parked_sets()
                    .iter()
                    .map(|set| set.slots())
                    .fold(usize::try_from(awake_end).unwrap_or(0), usize::max)
                    .max(self.leaving.end());
                let every = Recipients::Every {
                    next: 0,
                    end,
                    issued: self.next_generation.get(),
                };
                (every, Encoded::new(payload, kind))
            }
            Push::Close(..) | Push::Deadline(..) | Push::DeadlineWith(..) | Push::Confirmed(..) => {
                unreachable!("`deliver` closes, or sends a confirmed one as `To`")
            }
        }
    }

    /// How many connections `recipients` names, about (for the pending
    /// gauge: a broadcast counts the connections open now).
    fn count(&self, recipients: &Recipients, sets: &[Rc<dyn ParkedSet>]) -> usize {
        match recipients {
            Recipients::Listed(list) => list.len(),
            Recipients::Every { .. } => {
                let parked: usize = sets.iter().map(|set| set.len()).sum();
                self.awake.borrow().len() + parked
            }
        }
    }

    /// The generation of the message connection at `fd`, awake or parked.
    fn generation_at(&self, fd: RawFd, sets: &[Rc<dyn ParkedSet>]) -> Option<Generation> {
        let awake = self.awake.borrow().get(&fd).map(|(g, _)| *g);
        awake.or_else(|| sets.iter().find_map(|set| set.generation(fd)))
    }

    /// The message connection at `fd`: awake or parked, or in its close
    /// ([`Local::leaving`]).
    fn connection_at(&self, fd: RawFd, sets: &[Rc<dyn ParkedSet>]) -> Option<At> {
        match self.generation_at(fd, sets) {
            Some(generation) => Some(At::Open(generation)),
            None => self.leaving.generation(fd).map(At::Leaving),
        }
    }

    /// Delivers one message from the hub on this worker, paced: a slice of
    /// connections at a time ([`Pace`]), letting the worker's other tasks
    /// run in between (and waiting for the delivery rate, if one is set): a
    /// broadcast to a million parked connections is a million `send`s,
    /// which must not hold back the heartbeats the worker answers
    /// meanwhile. Each connection is looked up as its turn comes, so one
    /// that woke, parked or closed since the message arrived gets it where
    /// it is now (or not at all, closed). The next message waits until this
    /// one is delivered, so a connection gets its messages in order.
    async fn deliver(self: &Rc<Self>, push: Push) {
        // A confirmed send is a send whose waiter goes with it, to whatever
        // takes the push (a queue, the rest of a frame owed) or hears here
        // what became of it.
        let mut waiter = None;
        let push = match push {
            Push::Close(id, code, reason) => return self.kick(id, Kick { code, reason }),
            Push::Deadline(id, at) => return self.set_deadline(id, at),
            Push::DeadlineWith(id, at, kick) => {
                return self.set_deadline_with(id, Some(at), Some(*kick))
            }
            Push::Confirmed(w, payload, kind) => {
                let to = w.to();
                waiter = Some(w);
                Push::To(to, payload, kind, IfBehind::Close)
            }
            push => push,
        };
        let if_behind = push.if_behind();
        let (mut recipients, mut msg) = self.recipients(push);
        // A protocol's table exists before any of its connections does.
        let sets = self.parked_sets();
        let pending = &self.stats.messages.deliveries_pending;
        let mut owed = i64::try_from(self.count(&recipients, &sets)).unwrap_or(i64::MAX);
        gauge_own(pending, owed);
        let pace = Pace::new(self.delivery_rate);
        paced(pace, || {
            let Some((fd, found)) = recipients.next(|fd| self.connection_at(fd, &sets)) else {
                return Step::Done;
            };
            let generation = match found {
                Some(At::Open(generation)) => generation,
                // A broadcast's recipient in its close: dropped for it.
                Some(At::Leaving(_)) => {
                    self.missed(DropCause::Closed);
                    return Step::Skipped;
                }
                // No message connection owed it at that descriptor.
                None => return Step::Skipped,
            };
            let wires = self.wires.borrow();
            let (unframable, no_wire) = (msg.unframable, msg.no_wire);
            let to = (fd, generation);
            let delivered = self.deliver_one(to, &mut msg, (&wires, &sets), &mut waiter, if_behind);
            if delivered == Delivered::Replaced {
                // A subscriber that closed without its close reaching its
                // topics (`Topics`): it leaves them now, each stale entry
                // once, instead of staying in them for good.
                self.topics.borrow_mut().closed(self.id(fd, generation));
            }
            let handed = matches!(
                delivered,
                Delivered::Sent | Delivered::Overflowed(..) | Delivered::Lost | Delivered::Dropped
            );
            // A recipient it did not reach counts once, whoever named it:
            // the id of a send, a topic's subscriber, a broadcast's
            // connection found closing. (One its wire could not frame is
            // counted as such.)
            let framable = (msg.unframable, msg.no_wire) == (unframable, no_wire);
            if !handed && framable {
                // Found behind, parked, woken to close: a slow consumer.
                self.missed(match delivered {
                    Delivered::Behind => DropCause::SlowConsumer,
                    _ => DropCause::Closed,
                });
            } else if msg.no_wire != no_wire {
                // One on a wire its worker does not have (a bug of the
                // server's, logged by `Encoded::on`) missed it too: a drop,
                // not a push its framing cannot carry. (It was counted
                // nowhere: review, session 46.)
                self.missed(DropCause::Closed);
            }
            // Still here: written whole to a parked socket, or not handed
            // to the connection (a queue or the rest of a frame owed took
            // it otherwise, and resolves it).
            if let Some(waiter) = waiter.take() {
                waiter.resolve(match delivered {
                    Delivered::Sent => Ok(()),
                    _ if !framable => Err(Undelivered::Unframable),
                    Delivered::Behind => Err(Undelivered::SlowConsumer),
                    _ => Err(Undelivered::Closed),
                });
            }
            if owed > 0 {
                owed -= 1;
                gauge_own(pending, -1);
            }
            Step::Reached
        })
        .await;
        // A broadcast's count was an estimate: what it did not reach is not
        // pending any more either.
        gauge_own(pending, -owed.max(0));
        // A send whose connection was not found at all (no message
        // connection holds its descriptor: it closed).
        drop(waiter);
        // Told `Ok`, the sender learns of connections its message could
        // not be framed for only here (`Encoded::on` logged it).
        LimitHit::PushUnframable.count_n(&self.stats, msg.unframable);
    }

    /// A hub message for a recipient the pump could not hand it to: the
    /// connection of a `Hub::send` (told `Ok`: its close was not reported
    /// yet), a topic's subscriber, or a broadcast's connection, found
    /// closing (a slow consumer lingering before its close, one closed for
    /// the hub, a parked one whose socket is behind, one in its close
    /// handshake) or, named by a send or a topic, closed by the time the
    /// pump got to it. Counted in `queue_drops`, as a push its close leaves
    /// queued is: every push the pump hands to a recipient is in `pushes`
    /// or `queue_drops` (or `push_unframable`), once. (Session 41's review:
    /// 3,000 sends accepted while a slow consumer's close ran, 744 read,
    /// `queue_drops` +0; session 43 counted sends, session 44 publishes
    /// and broadcasts: they were in neither counter.)
    fn missed(&self, cause: DropCause) {
        cause.count(&self.stats.messages);
    }

    /// Delivers to one connection, awake or parked, if it is still open;
    /// what it found at its descriptor ([`Delivered::Replaced`]: another
    /// connection, so this one has closed). [`Delivered::Sent`],
    /// [`Delivered::Overflowed`] or [`Delivered::Lost`]: handed to it, and
    /// counted (in `pushes` or `queue_drops`, now or when it writes or
    /// closes); any other: not.
    ///
    /// `waiter` (a confirmed send's) is taken by what takes the push to
    /// write later (the connection's queue, or the rest of a frame its
    /// parked socket took part of), which resolves it; left, the caller
    /// resolves it by what was done. `if_behind`: what it does to an awake
    /// connection (or one resuming) whose queue is behind
    /// ([`Local::queue`]), or to a parked one whose socket refuses it
    /// (`table.rs`'s `send_parked`: a droppable push is dropped there, the
    /// connection left parked).
    fn deliver_one(
        &self,
        (fd, generation): (RawFd, Generation),
        msg: &mut Encoded,
        (wires, sets): Targets<'_>,
        waiter: &mut Option<Waiter>,
        if_behind: IfBehind,
    ) -> Delivered {
        let inbox = match self.awake.borrow().get(&fd) {
            Some((g, inbox)) if *g == generation => Some(inbox.clone()),
            Some(_) => return Delivered::Replaced,
            None => None,
        };
        let id = self.id(fd, generation);
        if let Some(inbox) = inbox {
            return self.queue(id, &inbox, msg, wires, waiter, if_behind);
        }
        // Closing for the hub: what comes after the close is not written.
        if self.is_kicked(id) {
            return Delivered::Closing;
        }
        // Behind on a push, waking to resume: queued behind what it owes.
        if let Some(inbox) = self.resuming.get(id) {
            return self.queue(id, &inbox, msg, wires, waiter, if_behind);
        }
        for table in sets {
            let counted = (&self.stats.messages, if_behind);
            match table.deliver((fd, generation), msg, wires, counted) {
                Delivered::NotParked => {}
                Delivered::Overflowed(unsent, wire) => {
                    self.overflowed(id, (unsent, wire), msg, wires, waiter.take());
                    return Delivered::Overflowed(None, wire);
                }
                // Its socket took one whole: it keeps up.
                Delivered::Sent => {
                    self.stuck.forget(id);
                    return Delivered::Sent;
                }
                Delivered::Dropped => {
                    self.dropped_behind(id, sets);
                    return Delivered::Dropped;
                }
                delivered => return delivered,
            }
        }
        Delivered::NotParked
    }

    /// A droppable push was dropped for parked connection `id`, its socket
    /// behind: once it has been behind for the write bound with no
    /// progress (`stuck.rs`), it is closed as a slow consumer, as one that
    /// a push found behind and the lot could not wake to resume is: marked
    /// behind in its side table (the pushes after this one count as a
    /// slow consumer's, `Delivered::Behind`) and woken to close by its
    /// read side shut (`wake::resume` says why). Logged, rate-limited,
    /// with its id, peer and how long it was behind; the close counts in
    /// `megaconn_connections_closed_total{reason="slow_consumer"}`.
    fn dropped_behind(&self, id: ConnectionId, sets: &[Rc<dyn ParkedSet>]) {
        let Some(behind_for) = self.stuck.dropped(id, Instant::now()) else {
            return;
        };
        if !sets
            .iter()
            .any(|set| set.mark_behind(id.fd(), id.generation()))
        {
            return;
        }
        let setting = self.stuck.setting();
        ratelog::log(Flood::SlowConsumer, |suppressed| {
            tracing::info!(
                connection = %id,
                peer = ?super::session::peer_of(id.fd()),
                behind_ms = behind_for.as_millis() as u64,
                bound = setting,
                suppressed,
                "a parked connection's socket took none of its pushes for its write bound (its droppable pushes dropped meanwhile); closing it as a slow consumer"
            )
        });
        hub::wake_to_close(id.fd());
    }

    /// Every protocol's side table, as delivery targets (a copy of the list,
    /// so no borrow is held while delivering).
    fn parked_sets(&self) -> Vec<Rc<dyn ParkedSet>> {
        let tables = self.tables.borrow();
        tables.iter().map(|(_, _, t)| t.clone()).collect()
    }

    /// Puts a message on connection `id`'s outbound queue:
    /// [`Delivered::Sent`] when offered (or not framable for it, counted as
    /// such, or dropped as droppable), [`Delivered::Closing`] when the
    /// connection closes for the hub. Offered, `waiter` goes with it
    /// (resolved as it is written or dropped); not framable or refused by a
    /// full queue, it is resolved here.
    ///
    /// A droppable push ([`IfBehind::Drop`]) is dropped while the queue
    /// holds [`droppable_mark`] messages or more, counted as such; the
    /// connection stays open, and the pushes it does queue keep their
    /// order (nothing is held back). Any other push that finds the queue
    /// full closes the connection as a slow consumer (logged with its id
    /// and peer, rate-limited).
    fn queue(
        &self,
        id: ConnectionId,
        inbox: &Inbox,
        msg: &mut Encoded,
        wires: &[Rc<dyn Wire>],
        waiter: &mut Option<Waiter>,
        if_behind: IfBehind,
    ) -> Delivered {
        // Closing for the hub: what comes after the close is not written.
        if inbox.is_kicked() {
            return Delivered::Closing;
        }
        let Some(framed) = msg.on(wires, inbox.wire) else {
            confirm::resolve(waiter.take().as_ref(), Err(Undelivered::Unframable));
            return Delivered::Sent;
        };
        // Accepted, it counts in `pushes` once its connection's socket took
        // it whole (the protocol counts it, as it writes it), or in
        // `queue_drops` if its connection closes first, whatever the close
        // (`Awake`'s drop, or the protocol for one it held).
        if if_behind == IfBehind::Drop
            && !inbox.has_overflowed()
            && inbox.len() >= droppable_mark(self.queue_limit)
        {
            // (A droppable push never carries a waiter.)
            confirm::resolve(waiter.take().as_ref(), Err(Undelivered::SlowConsumer));
            DropCause::Droppable.count(&self.stats.messages);
            return Delivered::Sent;
        }
        let pushed = PushFrame {
            bytes: framed,
            waiter: waiter.take(),
        };
        let first_overflow = !inbox.has_overflowed();
        if !inbox.offer(pushed, self.queue_limit) {
            DropCause::SlowConsumer.count(&self.stats.messages);
            if first_overflow {
                let limit = self.queue_limit;
                ratelog::log(Flood::SlowConsumer, |suppressed| {
                    tracing::info!(
                        connection = %id,
                        peer = ?super::session::peer_of(id.fd()),
                        limit,
                        suppressed,
                        "a connection's outbound queue is full; closing it as a slow consumer (raise Builder::outbound_queue if its peer is only bursty, or send what it may miss with Hub::send_droppable)"
                    )
                });
            }
        }
        Delivered::Sent
    }
}

/// An awake connection's registration for pushes: its outbound queue,
/// unregistered on drop (the connection parked or closed).
pub(crate) struct Awake {
    local: Rc<Local>,
    id: ConnectionId,
    /// The connection's outbound queue.
    pub inbox: Rc<Inbox>,
}

impl Awake {
    /// Resolves when a message was pushed to this connection; never
    /// without one (no hub).
    pub(crate) async fn pushed(awake: Option<&Awake>) {
        match awake {
            Some(awake) => awake.inbox.pushed().await,
            None => std::future::pending().await,
        }
    }

    /// The connection closes: the messages its queue still holds are
    /// dropped and counted in `queue_drops` (a slow consumer's now, before
    /// its handler hears of the close; any other's when it unregisters, and
    /// again, for none, for a slow consumer).
    pub(crate) fn drop_behind(&self) {
        let cause = self.inbox.drop_cause();
        let dropped = self.inbox.drop_behind();
        cause.count_n(&self.local.stats.messages, dropped as u64);
    }

    /// Resolves when this connection's outbound queue overflowed; never
    /// without one (no hub).
    pub(crate) async fn overflowed(awake: Option<&Awake>) {
        match awake {
            Some(awake) => awake.inbox.overflow().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Awake {
    fn drop(&mut self) {
        self.drop_behind();
        // Not parked (the protocols park before they drop this) and not
        // reported closed: it leaves for its close, which may take seconds
        // (a slow consumer's 1013, a close handshake), and what the hub
        // sends it meanwhile counts as dropped (`Local::leaving`).
        if !self.inbox.has_ended() && !self.local.is_parked(self.id) {
            self.local.leaving.put(self.id, ());
        }
        // Still registered: it closes (parked, its registration went as
        // it parked, its count with it: `Local::parked`).
        if self.local.unregister(self.id).is_some() {
            let protocol = self.local.protocol_of(self.inbox.wire);
            connections_moved(&self.local.stats, protocol, -1);
        }
    }
}

/// What holds a descriptor, for a delivery: an open message connection
/// (awake or parked) of this generation, or one in its close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Open(Generation),
    Leaving(Generation),
}

impl At {
    fn generation(self) -> Generation {
        match self {
            At::Open(g) | At::Leaving(g) => g,
        }
    }
}

/// Who one message from the hub goes to, visited one at a time.
enum Recipients {
    /// Taken when the pump got to the message: one connection, or a topic's
    /// subscribers (by descriptor and generation).
    Listed(std::vec::IntoIter<(RawFd, Generation)>),
    /// Every message connection whose id was issued before the pump got to
    /// the message: a cursor over descriptors (dense, as the kernel hands
    /// them out), so a broadcast holds no list of all its recipients (8 B a
    /// connection, a heap peak the allocator kept after the delivery).
    Every {
        next: usize,
        end: usize,
        /// The last generation issued when the delivery began.
        issued: Generation,
    },
}

impl Recipients {
    /// The next descriptor to look at and the connection there that is
    /// owed the message (`None`: no such connection, skip); `None` when
    /// all were visited. `connection_at` tells the connection at a
    /// descriptor now (a listed one is taken as named: the delivery finds
    /// where it is).
    fn next(
        &mut self,
        connection_at: impl FnOnce(RawFd) -> Option<At>,
    ) -> Option<(RawFd, Option<At>)> {
        match self {
            Recipients::Listed(list) => list.next().map(|(fd, g)| (fd, Some(At::Open(g)))),
            Recipients::Every { next, end, issued } => {
                if *next >= *end {
                    return None;
                }
                let fd = RawFd::try_from(*next).ok()?;
                *next += 1;
                let owed = connection_at(fd).filter(|at| issued_by(at.generation(), *issued));
                Some((fd, owed))
            }
        }
    }
}

/// Whether generation `g` was issued no later than `last` (generations
/// wrap: "no later" means within the half of them issued before it).
fn issued_by(g: Generation, last: Generation) -> bool {
    last.wrapping_sub(g) & GENERATION_MASK < 1 << (GENERATION_BITS - 1)
}

/// How many connections a message reaches before the pump lets the worker's
/// other tasks run: a quarter of a millisecond or so of `send`s, short
/// enough that a heartbeat behind it waits little.
const SLICE: usize = 256;

/// How many descriptors a broadcast may look at in one slice (most hold a
/// message connection; the others cost a lookup each).
const LOOK_PER_SLICE: usize = 16 * SLICE;

/// The longest a paced delivery waits for its rate between two slices.
const A_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// How the pump spreads one delivery over time.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Connections reached per turn.
    slice: usize,
    /// Connections reached per second (`None`: no limit).
    rate: Option<f64>,
}

impl Pace {
    fn new(rate: Option<f64>) -> Pace {
        // A slice of at most ~10 ms at the rate, so a slow rate spreads
        // evenly instead of in bursts of a full slice.
        let slice = rate.map_or(SLICE, |r| SLICE.min((r / 100.0).ceil() as usize).max(1));
        Pace { slice, rate }
    }
}

/// What one step of a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A connection was reached.
    Reached,
    /// A descriptor held no connection owed the message.
    Skipped,
    /// Every recipient was visited.
    Done,
}

/// Calls `step` until it is done, a slice at a time: after `pace.slice`
/// connections reached (or [`LOOK_PER_SLICE`] steps), it yields to the
/// worker's other tasks, and with a rate it also waits until the rate
/// allows the next slice.
async fn paced(pace: Pace, mut step: impl FnMut() -> Step) {
    let started = tokio::time::Instant::now();
    let mut reached_total: u64 = 0;
    loop {
        let (mut reached, mut looked) = (0, 0);
        while reached < pace.slice && looked < LOOK_PER_SLICE {
            looked += 1;
            match step() {
                Step::Reached => reached += 1,
                Step::Skipped => {}
                Step::Done => return,
            }
        }
        reached_total += reached as u64;
        // (A rate so low that the wait overflows a `Duration` waits a year.)
        let due = pace.rate.map(|rate| {
            let wait = Duration::try_from_secs_f64(reached_total as f64 / rate);
            started + wait.unwrap_or(Duration::MAX).min(A_YEAR)
        });
        match due {
            Some(due) if due > tokio::time::Instant::now() => tokio::time::sleep_until(due).await,
            _ => tokio::task::yield_now().await,
        }
    }
}

/// Delivers one worker's pushes, in order, until the hub is gone or the
/// worker stops. Each message taken frees its room in the worker's hub
/// queue (`hub.rs`).
async fn pump(local: Weak<Local>, mut queue: HubQueue) {
    while let Some(push) = queue.next().await {
        let Some(local) = local.upgrade() else {
            return queue.lost(push);
        };
        incr(&local.stats.messages.hub_messages);
        local.deliver(push).await;
    }
}

/// A message protocol, where its connections count in
/// `MessageCounters::connections_by_protocol` (its value: the index, in
/// the order of `metrics::MESSAGE_PROTOCOL_LABELS`), cleartext and TLS
/// alike. Its protocol names it when it asks for its side table
/// ([`Local::table`]): the message layer does not know the protocols'
/// parking tags (a lower layer imports no upper one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageProtocol {
    /// Framed TCP.
    Framed = 0,
    /// WebSocket.
    WebSocket = 1,
    /// Server-sent events.
    Sse = 2,
}

/// A message connection joined (`by` 1) or left (-1) the worker's count of
/// what a broadcast reaches, awake or parked, and its protocol's
/// (`MessageProtocol`; `megaconn_message_connections{protocol}`), so the
/// protocols' gauges sum to `ServerHandle::message_connections`.
pub(crate) fn connections_moved(stats: &WorkerStats, protocol: Option<usize>, by: i64) {
    message_connections_moved(stats, by);
    protocol_moved(stats, protocol, by);
}

/// A connection counted under protocol `was` is counted under `now`: the
/// total stays, and the protocols' gauges move only if they differ.
fn recounted(stats: &WorkerStats, was: Option<usize>, now: Option<usize>) {
    if was != now {
        protocol_moved(stats, was, -1);
        protocol_moved(stats, now, 1);
    }
}

/// `protocol`'s gauge alone moved by `by` (the total not).
fn protocol_moved(stats: &WorkerStats, protocol: Option<usize>, by: i64) {
    if let Some(gauge) = protocol.and_then(|p| stats.messages.connections_by_protocol.get(p)) {
        gauge_own(gauge, by);
    }
}

/// A refused subscription's limit hit, log line (a [`Flood`] kind per
/// setting, so that a line naming one does not hold back the other's) and
/// what was done; `topic_len`: the topic name's length.
fn refused_subscription(
    refused: SubscribeError,
    topic_len: usize,
) -> (LimitHit, OverLimit, &'static str) {
    match refused {
        SubscribeError::TooMany { limit } => (
            LimitHit::MaxSubscriptions,
            OverLimit {
                kind: Flood::TooManySubscriptions,
                what: "a connection's subscription",
                setting: "max_subscriptions",
                size: None,
                limit: limit as u64,
            },
            "refused (its handler gets SubscribeError::TooMany)",
        ),
        SubscribeError::TopicTooLong { limit } => (
            LimitHit::MaxTopicBytes,
            OverLimit {
                kind: Flood::TopicTooLong,
                what: "a subscription's topic name",
                setting: "max_topic_bytes",
                size: Some(topic_len as u64),
                limit: limit as u64,
            },
            "refused (its handler gets SubscribeError::TopicTooLong)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::message::hub::TAKE_AT_ONCE;
    use crate::message::test_support::{worker, Plain};

    /// A subscription over `max_topic_bytes` and one over
    /// `max_subscriptions` are logged as kinds apart: they shared one, and
    /// the line naming `max_topic_bytes` right after one naming
    /// `max_subscriptions` was held back.
    #[test]
    fn each_subscription_limit_is_its_own_log_kind() {
        let (_, many, _) = refused_subscription(SubscribeError::TooMany { limit: 1 }, 3);
        let (_, long, _) = refused_subscription(SubscribeError::TopicTooLong { limit: 2 }, 3);
        assert_ne!(many.kind, long.kind);
    }

    /// After a burst (thousands of parked connections woken to close at
    /// once), what is kept for parked connections gives its room back as
    /// they take their entries: a quarter full, it shrinks; empty, it holds
    /// nothing. (A `HashMap` keeps its capacity: the map stayed sized for
    /// the burst.) A stale id takes nothing, and its look-up shrinks too.
    #[test]
    fn what_is_kept_for_parked_connections_gives_its_room_back() {
        let kept = ForParked::<u64>::default();
        let id = |fd: RawFd| ConnectionId::new(0, fd, 1);
        for fd in 0..10_000 {
            kept.put(id(fd), fd as u64);
        }
        let burst = kept.0.borrow().capacity();
        assert!(burst >= 10_000);
        for fd in 0..9_000 {
            assert_eq!(kept.take(id(fd)), Some(fd as u64));
        }
        let left = kept.0.borrow().capacity();
        assert!(
            left * 4 <= burst,
            "{left} of {burst} after 9,000 of 10,000 went"
        );
        assert!(left >= 1_000);
        assert!(kept.holds(id(9_500)));
        let stale = ConnectionId::new(0, 9_500, 2);
        assert!(!kept.holds(stale));
        assert_eq!(kept.take(stale), None);
        for fd in 9_000..10_000 {
            assert_eq!(kept.take(id(fd)), Some(fd as u64));
        }
        assert_eq!(kept.0.borrow().capacity(), 0, "empty, it holds nothing");
        // One at a time (the usual case) keeps nothing between them either.
        kept.put(id(3), 3);
        assert_eq!(kept.take(id(3)), Some(3));
        assert_eq!(kept.0.borrow().capacity(), 0);
    }

    /// The connection accepted 2^32 after another, on the same descriptor,
    /// gets another id, and a push to the old id does not find it parked
    /// (with a wrapping `u32` generation it got the old id, and a stale id
    /// an application kept reached an unrelated connection).
    #[test]
    fn ids_do_not_repeat_after_two_to_the_32_connections() {
        let config = Arc::new(crate::conn::config::Config::default());
        let ctx = WorkerContext::new(0, config, Default::default(), None);
        let local = local(&ctx);
        let first = local.new_id(7);
        // As if 2^32 - 1 more connections came and went meanwhile.
        let skipped = first.generation().wrapping_add(u32::MAX.into());
        local.next_generation.set(skipped);
        let later = local.new_id(7);
        assert_ne!(first, later, "an id named two connections");
        let table = SideTable::<()>::new(vec![0], None);
        table.put(
            7,
            crate::message::table::Parked {
                state: (),
                variant: 0,
                due: None,
                send_at: None,
                generation: later.generation(),
                behind: false,
            },
        );
        let parked = ParkedSet::generation(&table, 7);
        assert_eq!(parked, Some(later.generation()));
        assert_ne!(parked, Some(first.generation()));
    }

    /// Messages published before a worker's pump ever ran leave the
    /// `hub_queued` gauge when the worker stops first (the pump's task
    /// dropped unpolled). The pump wrapped its receiver only once it ran,
    /// so they stayed counted for good.
    #[test]
    fn a_pump_dropped_before_it_ran_leaves_nothing_in_the_gauge() {
        use crate::message::HubError;
        let stats = Arc::new(WorkerStats::default());
        let channels = Arc::new(crate::message::hub::HubChannels::new(
            std::slice::from_ref(&stats),
            16,
            1 << 20,
        ));
        let hub = channels.hub();
        let mut config = crate::conn::config::Config::default();
        crate::message::MessageSettings::update(&mut config, |s| s.hub = Some(channels));
        // The server runs; its worker has not started yet.
        hub.open();
        assert_eq!(hub.broadcast("before the worker started"), Ok(()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let set = tokio::task::LocalSet::new();
        {
            let _runtime = runtime.enter();
            let _set = set.enter();
            let ctx = WorkerContext::new(0, Arc::new(config), stats.clone(), None);
            // Takes the worker's end and spawns the pump, which never gets
            // a turn.
            local(&ctx);
        }
        assert_eq!(hub.publish("news", "before the pump ran"), Ok(()));
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 2);
        drop(set);
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 0);
        // And the hub knows the worker is gone.
        assert_eq!(hub.broadcast("after"), Err(HubError::Stopped));
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 0);
    }

    /// On descriptor `fd` (one no socket of the test process has): a
    /// connection that closed (`old`), and the one open there now (`new`),
    /// awake, on a test table's wire.
    fn closed_then_reopened(local: &Rc<Local>, fd: RawFd) -> (ConnectionId, ConnectionId, Awake) {
        let table = local.table::<()>((ProtoTag(1), None), || vec![Rc::new(Plain)]);
        let old = local.new_id(fd);
        local.closed(old);
        let new = local.new_id(fd);
        let awake = local.awake(new, table.wire(0)).unwrap();
        (old, new, awake)
    }

    /// An awake connection that replaces a stale entry on its descriptor
    /// (another protocol's, whose guard did not remove it) moves the count
    /// from that protocol's gauge to its own; the total stays one.
    #[tokio::test]
    async fn replacing_a_stale_entry_moves_the_gauge_to_the_new_protocol() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let framed = local.table::<()>((ProtoTag(2), Some(MessageProtocol::Framed)), || {
                vec![Rc::new(Plain)]
            });
            let ws = local.table::<()>((ProtoTag(3), Some(MessageProtocol::WebSocket)), || {
                vec![Rc::new(Plain)]
            });
            let gauges = || {
                let by = &local.stats.messages.connections_by_protocol;
                [0, 1, 2].map(|p| by[p].load(std::sync::atomic::Ordering::Relaxed))
            };
            let old = local.new_id(900_090);
            let stale = local.awake(old, framed.wire(0)).unwrap();
            assert_eq!(gauges(), [1, 0, 0]);
            // Its guard kept (not dropped): its entry is stale once another
            // connection holds the descriptor.
            std::mem::forget(stale);
            local.closed(old);
            let new = local.new_id(900_090);
            let awake = local.awake(new, ws.wire(0)).unwrap();
            assert_eq!(gauges(), [0, 1, 0]);
            drop(awake);
            assert_eq!(gauges(), [0, 0, 0]);
        })
        .await;
    }

    /// A deadline or a cancel for a connection that closed, queued before
    /// its close and taken after, leaves the deadline of the connection now
    /// on its descriptor (it replaced or removed it: an unauthenticated
    /// connection kept for good; found by the session's merge review).
    #[tokio::test]
    async fn a_stale_deadline_leaves_the_new_connections_deadline() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let (old, new, _awake) = closed_then_reopened(&local, 900_070);
            let at = Instant::now() + Duration::from_secs(3600);
            local.deliver(Push::Deadline(new, Some(at))).await;
            // The old connection's cancel, then its deadline, queued before
            // its close.
            local.deliver(Push::Deadline(old, None)).await;
            local
                .deliver(Push::Deadline(old, Some(Instant::now())))
                .await;
            let kept = local.deadlines.borrow().by_fd.get(&900_070).copied();
            assert_eq!(kept, Some((new.generation(), at)), "the new one's deadline");
        })
        .await;
    }

    /// A parked connection that closes before it woke to write the rest of
    /// the push it fell behind on loses that push: to a slow consumer's
    /// full socket when it was woken to close (the lot could not wake it
    /// to resume), to the close when it was to resume. (Both counted
    /// `closed`: session 48.)
    #[tokio::test]
    async fn the_rest_a_closed_connection_owed_counts_by_why_it_was_woken() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let owed = || Unsent {
                tail: bytes::Bytes::from_static(b"rest"),
                frame: 10,
                waiter: None,
            };
            let counted = &local.stats.messages;
            let woken_to_close = local.new_id(900_080);
            local.unsent.put(woken_to_close, owed());
            local.closed(woken_to_close);
            assert_eq!(counted.queue_drops_slow_consumer.load(Relaxed), 1);
            assert_eq!(counted.queue_drops.load(Relaxed), 0);
            let resuming = local.new_id(900_081);
            local.unsent.put(resuming, owed());
            local.resuming.put(resuming, Rc::new(Inbox::new(0)));
            local.closed(resuming);
            assert_eq!(counted.queue_drops_slow_consumer.load(Relaxed), 1);
            assert_eq!(counted.queue_drops.load(Relaxed), 1);
        })
        .await;
    }

    /// The lot's own close of a parked connection behind on a confirmed
    /// push tells its waiter what a close before it woke tells it
    /// (`closed`), whatever the socket: `Ok` when the rest went whole,
    /// `SlowConsumer` when it was woken to close and the rest did not go,
    /// and the push counted the same way. (Over TLS a rest that did not go
    /// left its waiter to its drop: `Closed`, where cleartext said
    /// `SlowConsumer`.)
    #[tokio::test]
    async fn the_lots_close_tells_a_confirmed_push_what_a_close_tells_it() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let counted = &local.stats.messages;
            let owing = |fd| {
                let id = local.new_id(fd);
                let (waiter, delivery) = confirm::Delivery::new(id);
                let unsent = Unsent {
                    tail: bytes::Bytes::from_static(b"rest"),
                    frame: 10,
                    waiter: Some(waiter),
                };
                local.unsent.put(id, unsent);
                (id, delivery)
            };
            // Closed before it woke (the cleartext path): the reference.
            let (closing, closed) = owing(900_100);
            local.closed(closing);
            assert_eq!(closed.await, Err(Undelivered::SlowConsumer));
            // The lot's close, the rest not taken.
            let (cut, delivery) = owing(900_101);
            local.let_go_unsent(cut, |_| false);
            local.closed(cut);
            assert_eq!(delivery.await, Err(Undelivered::SlowConsumer));
            assert_eq!(counted.queue_drops_slow_consumer.load(Relaxed), 2);
            // The lot's close, the rest taken whole.
            let (whole, delivery) = owing(900_102);
            let mut wrote = Vec::new();
            local.let_go_unsent(whole, |rest| {
                wrote.extend_from_slice(rest);
                true
            });
            local.closed(whole);
            assert_eq!((delivery.await, &wrote[..]), (Ok(()), &b"rest"[..]));
            assert_eq!(counted.pushes.load(Relaxed), 1);
            assert_eq!(counted.queue_drops_slow_consumer.load(Relaxed), 2);
        })
        .await;
    }

    /// `Hub::buffered` answers on a worker's thread for that worker's
    /// connections whatever other message state the thread made since (a
    /// `Builder::serve_connection` run there makes its own, which took
    /// the thread's one slot: `None` from then on, and after it ended).
    #[tokio::test]
    async fn buffered_answers_for_the_workers_connections_beside_another_state() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let table = local.table::<()>((ProtoTag(1), None), || vec![Rc::new(Plain)]);
            let id = local.new_id(900_090);
            let _awake = local.awake(id, table.wire(0)).unwrap();
            assert_eq!(buffered_here(id), Some(Buffered::default()));
            let other = WorkerContext::new(
                0,
                Arc::new(crate::conn::config::Config::default()),
                Arc::new(WorkerStats::default()),
                None,
            );
            let theirs = super::local(&other);
            assert_eq!(buffered_here(id), Some(Buffered::default()), "beside it");
            drop(theirs);
            drop(other);
            assert_eq!(buffered_here(id), Some(Buffered::default()), "after it");
            // Gone states are forgotten as the next one comes.
            let next = worker(true);
            let _next = super::local(&next);
            let all_live = HERE.with(|here| here.borrow().iter().all(|l| l.strong_count() > 0));
            assert!(all_live, "the gone state forgotten");
        })
        .await;
    }

    /// `Hub::buffered` finds a connection without walking the states of
    /// the `serve_connection` runs alive on its thread: the list it walks
    /// holds the worker's state alone, however many runs there are, and a
    /// run's connection (no socket, descriptor -1) is found by its
    /// generation, until its close. (Before: every run's state was in the
    /// list, 201 here, walked by each new state and by each look-up.)
    #[tokio::test]
    async fn buffered_walks_no_list_of_serve_connection_runs() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let table = local.table::<()>((ProtoTag(1), None), || vec![Rc::new(Plain)]);
            let id = local.new_id(900_090);
            let _awake = local.awake(id, table.wire(0)).unwrap();
            let runs: Vec<_> = (0..200)
                .map(|_| {
                    let run = WorkerContext::new(
                        0,
                        Arc::new(crate::conn::config::Config::default()),
                        Arc::new(WorkerStats::default()),
                        None,
                    );
                    let state = super::local(&run);
                    let theirs = state.new_id(-1);
                    let _ = state.table::<()>((ProtoTag(1), None), || vec![Rc::new(Plain)]);
                    (run, state, theirs)
                })
                .collect();
            assert_eq!(HERE.with(|here| here.borrow().len()), 1, "the worker's");
            assert_eq!(buffered_here(id), Some(Buffered::default()));
            // Each run's connection, by its generation, with its state.
            let (_, state, theirs) = &runs[123];
            let found = FOREIGN.with(|f| f.borrow().get(&theirs.generation()).cloned());
            assert!(found
                .and_then(|l| l.upgrade())
                .is_some_and(|l| Rc::ptr_eq(&l, state)));
            assert_eq!(FOREIGN.with(|f| f.borrow().len()), 200);
            for (_, state, theirs) in &runs {
                state.closed(*theirs);
            }
            assert_eq!(FOREIGN.with(|f| f.borrow().len()), 0, "forgotten at close");
            assert_eq!(buffered_here(runs[7].2), None);
        })
        .await;
    }

    /// A confirmed send on the pump: to a connection whose descriptor
    /// another holds now (it closed) it resolves `Closed` at once; to an
    /// awake one it goes into its queue with its waiter, which hears `Ok`
    /// once written and counted, or its close when the queue is dropped;
    /// to a full queue, `SlowConsumer`. The pump never leaves one waiting.
    #[tokio::test]
    async fn a_confirmed_send_resolves_wherever_the_pump_takes_it() {
        use crate::message::confirm::Delivery;
        use crate::message::outbound::Outbound;
        use std::future::Future;
        let poll = |d: &mut Delivery| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            std::pin::Pin::new(d).poll(&mut cx)
        };
        let confirmed = |to: ConnectionId| {
            let (waiter, delivery) = Delivery::new(to);
            let push = Push::Confirmed(waiter, bytes::Bytes::from_static(b"cmd"), hub::Kind::Auto);
            (push, delivery)
        };
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let (old, new, awake) = closed_then_reopened(&local, 900_080);
            let (push, mut to_old) = confirmed(old);
            local.deliver(push).await;
            let closed = std::task::Poll::Ready(Err(Undelivered::Closed));
            assert_eq!(poll(&mut to_old), closed);
            // Queued; written and counted: `Ok`.
            let (push, mut written) = confirmed(new);
            local.deliver(push).await;
            assert!(poll(&mut written).is_pending());
            let mut out = Outbound::default();
            out.take(awake.inbox.take_up_to(TAKE_AT_ONCE).unwrap());
            let mut sink = Vec::new();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let io = std::pin::Pin::new(&mut sink);
            assert!(out.poll_write(io, &mut cx, b"", &mut 0).is_ready());
            out.count(&local.stats.messages);
            assert_eq!(poll(&mut written), std::task::Poll::Ready(Ok(())));
            // Queued, then the connection closes with it queued.
            let (push, mut dropped) = confirmed(new);
            local.deliver(push).await;
            awake.drop_behind();
            assert_eq!(poll(&mut dropped), closed);
            // A full queue: a slow consumer.
            for _ in 0..local.queue_limit {
                local
                    .deliver(Push::To(new, "x".into(), hub::Kind::Auto, IfBehind::Close))
                    .await;
            }
            let (push, mut refused) = confirmed(new);
            local.deliver(push).await;
            let slow = std::task::Poll::Ready(Err(Undelivered::SlowConsumer));
            assert_eq!(poll(&mut refused), slow);
        })
        .await;
    }

    /// A push to a connection whose wire its worker does not have (a bug
    /// of the server's) is counted once, in `queue_drops` (not in
    /// `push_unframable`: its framing is not at fault), and a confirmed
    /// one resolves `Unframable`. It was counted nowhere (review,
    /// session 46).
    #[tokio::test]
    async fn a_push_for_an_unknown_wire_counts_as_a_drop() {
        use crate::message::confirm::Delivery;
        use crate::observe::limits::LimitHit;
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            // Its table has one wire (id 0 of its own); the connection
            // names another.
            let table = local.table::<()>((ProtoTag(1), None), || vec![Rc::new(Plain)]);
            let id = local.new_id(900_060);
            let awake = local.awake(id, table.wire(0) + 7).unwrap();
            local
                .deliver(Push::To(id, "x".into(), hub::Kind::Auto, IfBehind::Close))
                .await;
            let (waiter, delivery) = Delivery::new(id);
            let confirmed = Push::Confirmed(waiter, "y".into(), hub::Kind::Auto);
            local.deliver(confirmed).await;
            assert_eq!(delivery.await, Err(Undelivered::Unframable));
            let stats = &local.stats;
            assert_eq!(stats.messages.queue_drops.load(Relaxed), 2);
            let unframable = &stats.limit_hits[LimitHit::PushUnframable as usize];
            assert_eq!(unframable.load(Relaxed), 0);
            assert!(awake.inbox.take_up_to(TAKE_AT_ONCE).unwrap().is_empty());
        })
        .await;
    }

    /// A publish that finds a subscriber's descriptor held by another
    /// connection (the subscriber closed, and its close never reached its
    /// topics) takes the stale entry out of every topic it held: the next
    /// publish does not look at it again, and its topics do not keep it.
    /// The new connection on the descriptor gets nothing of the old one's.
    #[tokio::test]
    async fn a_publish_removes_a_subscriber_whose_descriptor_was_reused() {
        let ctx = worker(true);
        let set = tokio::task::LocalSet::new();
        set.run_until(async {
            let local = local(&ctx);
            let table = local.table::<()>((ProtoTag(1), None), || vec![Rc::new(Plain)]);
            let wire = table.wire(0);
            // Descriptors no socket of the test process has: ids issued with a
            // hub are recorded process-wide (`open.rs`).
            let (stale, other) = (local.new_id(900_050), local.new_id(900_051));
            for topic in ["news", "sport"] {
                assert_eq!(local.subscribe(stale, topic), Ok(()));
            }
            assert_eq!(local.subscribe(other, "news"), Ok(()));
            // `stale` closed unreported; a new connection has its descriptor.
            let new = local.new_id(900_050);
            let (new_awake, other_awake) = (local.awake(new, wire), local.awake(other, wire));
            let (new_awake, other_awake) = (new_awake.unwrap(), other_awake.unwrap());
            local
                .deliver(Push::Topic(
                    "news".into(),
                    "hi".into(),
                    crate::message::hub::Kind::Auto,
                    IfBehind::Close,
                ))
                .await;
            assert_eq!(other_awake.inbox.take_up_to(TAKE_AT_ONCE).unwrap().len(), 1);
            assert!(new_awake.inbox.is_empty(), "not the old one's message");
            let topics = local.topics.borrow();
            assert_eq!(topics.members("news"), [(900_051, other.generation())]);
            assert!(
                topics.members("sport").is_empty(),
                "gone from all its topics"
            );
        })
        .await;
    }

    /// A delivery to 3000 connections lets another task (a heartbeat's)
    /// run between its slices, not only after the last, and never in the
    /// middle of one: on one thread, with no timing.
    #[tokio::test]
    async fn a_long_delivery_yields_between_slices() {
        let delivered = Rc::new(Cell::new(0));
        let seen_by_other: Rc<RefCell<Vec<usize>>> = Rc::default();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let count = delivered.clone();
                let broadcast = tokio::task::spawn_local(async move {
                    paced(Pace::new(None), || match count.get() {
                        3000 => Step::Done,
                        n => {
                            count.set(n + 1);
                            Step::Reached
                        }
                    })
                    .await
                });
                let (count, seen) = (delivered.clone(), seen_by_other.clone());
                let other = tokio::task::spawn_local(async move {
                    while count.get() < 3000 {
                        seen.borrow_mut().push(count.get());
                        tokio::task::yield_now().await;
                    }
                });
                broadcast.await.unwrap();
                other.await.unwrap();
            })
            .await;
        assert_eq!(delivered.get(), 3000);
        let seen = seen_by_other.borrow();
        assert!(seen.iter().any(|&n| n > 0 && n < 3000), "{seen:?}");
        assert!(seen.iter().all(|n| n % SLICE == 0), "{seen:?}");
        // Every slice boundary was seen by the other task.
        assert!(seen.len() >= 3000 / SLICE, "{seen:?}");
    }

    /// Descriptors that hold no recipient count against a slice's look
    /// budget, so a sparse broadcast still yields.
    #[tokio::test]
    async fn skipped_descriptors_still_yield() {
        let steps = Rc::new(Cell::new(0));
        let yields = Rc::new(Cell::new(0));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let count = steps.clone();
                let delivery = tokio::task::spawn_local(async move {
                    paced(Pace::new(None), || {
                        count.set(count.get() + 1);
                        if count.get() > 3 * LOOK_PER_SLICE {
                            Step::Done
                        } else {
                            Step::Skipped
                        }
                    })
                    .await
                });
                let (count, yields) = (steps.clone(), yields.clone());
                let other = tokio::task::spawn_local(async move {
                    while count.get() <= 3 * LOOK_PER_SLICE {
                        yields.set(yields.get() + 1);
                        tokio::task::yield_now().await;
                    }
                });
                delivery.await.unwrap();
                other.await.unwrap();
            })
            .await;
        assert!(
            yields.get() >= 3,
            "{} turns for the other task",
            yields.get()
        );
    }

    /// With a rate, a delivery takes as long as the rate says (paused
    /// time: the clock moves only when every task waits), in slices of at
    /// most 10 ms' worth.
    #[tokio::test(start_paused = true)]
    async fn a_rate_spreads_the_delivery() {
        let pace = Pace::new(Some(1000.0));
        assert_eq!(pace.slice, 10);
        let started = tokio::time::Instant::now();
        let mut n = 0;
        paced(pace, || {
            n += 1;
            if n > 3000 {
                Step::Done
            } else {
                Step::Reached
            }
        })
        .await;
        let took = started.elapsed();
        // The last slice goes without waiting after it: 2.99 s for 3000.
        assert!(
            took >= Duration::from_millis(2990) && took < Duration::from_millis(3100),
            "{took:?}"
        );
        assert_eq!(Pace::new(None).slice, SLICE);
        assert_eq!(Pace::new(Some(0.5)).slice, 1);
    }

    /// A rate too low for a `Duration` still makes a delivery that waits
    /// (a year), not a panic.
    #[tokio::test(start_paused = true)]
    async fn a_tiny_rate_waits_without_overflow() {
        let mut n = 0;
        let delivery = paced(Pace::new(Some(1e-300)), || {
            n += 1;
            if n > 2 {
                Step::Done
            } else {
                Step::Reached
            }
        });
        let waited = tokio::time::timeout(Duration::from_secs(3600), delivery).await;
        assert!(waited.is_err(), "still waiting after an hour");
    }

    #[test]
    fn generations_issued_wrap() {
        assert!(issued_by(5, 5) && issued_by(4, 5) && !issued_by(6, 5));
        assert!(issued_by(GENERATION_MASK, 2), "issued just before the wrap");
        assert!(
            !issued_by(3, GENERATION_MASK - 1),
            "3 comes 5 after the last but one"
        );
        assert!(issued_by(1, 1 << 32), "2^32 is no wrap");
        assert!(!issued_by(1 << 32, 1), "2^32 is no wrap");
    }
}
