//! One worker's message bookkeeping ([`Local`]), shared by every message
//! protocol on the worker: connection ids, awake connections' outbound
//! queues, topic subscriptions, the registered wire formats, each
//! protocol's side table of parked states, and the pump that delivers the
//! [`Hub`](crate::Hub)'s messages on this worker's thread.
//!
//! Subscriptions live here, not with the connection, so they hold across
//! park and wake at no cost to connections that do not subscribe; they go
//! when the protocol reports the connection closed ([`Local::closed`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::conn::context::WorkerContext;
use crate::conn::ProtoTag;
use crate::message::hub::{ConnectionId, Delivered, Inbox, Push};
use crate::message::table::{ParkedSet, SendParked, SideTable};
use crate::message::wire::{Encoded, Wire, WireId};
use crate::message::MessageSettings;
use crate::observe::stats::{incr, WorkerStats};

/// A subscribing connection's generation and topics.
type Subscribed = (u32, Vec<Rc<str>>);

/// A protocol's side table: typed (for the protocol) and as a delivery
/// target (for the pump).
type Table = (ProtoTag, Rc<dyn Any>, Rc<dyn ParkedSet>);

/// One worker's message state (in the worker context's protocol slot).
pub(crate) struct Local {
    worker: usize,
    stats: Arc<WorkerStats>,
    /// The bound of each awake connection's outbound queue, in messages.
    queue_limit: usize,
    /// Whether the server has a hub (else no inbox is kept).
    has_hub: bool,
    next_generation: Cell<u32>,
    /// Awake connections' outbound queues, with their generation.
    awake: RefCell<HashMap<RawFd, (u32, Rc<Inbox>)>>,
    /// Each topic's subscribers (fd -> generation).
    topics: RefCell<HashMap<Rc<str>, HashMap<RawFd, u32>>>,
    /// Each subscribing connection's topics, for its close.
    subscriptions: RefCell<HashMap<RawFd, Subscribed>>,
    wires: RefCell<Vec<Rc<dyn Wire>>>,
    /// Each protocol's side table.
    tables: RefCell<Vec<Table>>,
}

/// This worker's message state, made on first use (which starts the hub's
/// pump for this worker, if the server has a hub). Call from a task on the
/// worker's runtime.
pub(crate) fn local(ctx: &WorkerContext) -> Rc<Local> {
    let slot: Rc<dyn Any> = ctx
        .protocol_local
        .get_or_init(|| {
            let settings = MessageSettings::of(&ctx.config)
                .cloned()
                .unwrap_or_default();
            let local = Rc::new(Local {
                worker: ctx.index,
                stats: ctx.stats.clone(),
                queue_limit: settings.outbound_queue.max(1),
                has_hub: settings.hub.is_some(),
                next_generation: Cell::new(0),
                awake: RefCell::default(),
                topics: RefCell::default(),
                subscriptions: RefCell::default(),
                wires: RefCell::default(),
                tables: RefCell::default(),
            });
            if let Some(rx) = settings.hub.and_then(|hub| hub.take_receiver(ctx.index)) {
                tokio::task::spawn_local(pump(Rc::downgrade(&local), rx));
            }
            local
        })
        .clone();
    slot.downcast()
        .unwrap_or_else(|_| unreachable!("the protocol slot holds the message layer's state"))
}

impl Local {
    /// A fresh id for a connection accepted on this worker.
    pub(crate) fn new_id(&self, fd: RawFd) -> ConnectionId {
        let generation = self.next_generation.get().wrapping_add(1);
        self.next_generation.set(generation);
        ConnectionId::new(self.worker, fd, generation)
    }

    /// The id of this worker's connection `fd` with `generation`.
    pub(crate) fn id(&self, fd: RawFd, generation: u32) -> ConnectionId {
        ConnectionId::new(self.worker, fd, generation)
    }

    /// Protocol `tag`'s side table for states of type `S`; made on first
    /// use with the wires `wires` gives (one per variant), registered here.
    /// A protocol keeps one table per state type: its handlers may differ
    /// (WebSocket routes do), and a typed table holds states inline.
    pub(crate) fn table<S: 'static>(
        &self,
        tag: ProtoTag,
        wires: impl FnOnce() -> Vec<Rc<dyn Wire>>,
    ) -> Rc<SideTable<S>> {
        self.table_sending::<S>(tag, wires, || None)
    }

    /// [`Local::table`], whose pushes to parked sockets are written by
    /// `send` (made on first use) instead of as they are.
    pub(crate) fn table_sending<S: 'static>(
        &self,
        tag: ProtoTag,
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
                    WireId::try_from(all.len() - 1).expect("fewer than 65,536 wire formats")
                })
                .collect();
            let table = Rc::new(SideTable::<S>::new(ids, send()));
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
        if !self.has_hub {
            return None;
        }
        let inbox = Rc::new(Inbox::new(wire));
        self.awake
            .borrow_mut()
            .insert(id.fd(), (id.generation(), inbox.clone()));
        Some(Awake {
            local: self.clone(),
            id,
            inbox,
        })
    }

    /// Subscribes connection `id` to `topic` (again: no change).
    pub(crate) fn subscribe(&self, id: ConnectionId, topic: &str) {
        let mut topics = self.topics.borrow_mut();
        let key: Rc<str> = match topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Rc::from(topic),
        };
        topics
            .entry(key.clone())
            .or_default()
            .insert(id.fd(), id.generation());
        let mut subscriptions = self.subscriptions.borrow_mut();
        let (generation, mine) = subscriptions
            .entry(id.fd())
            .or_insert_with(|| (id.generation(), Vec::new()));
        if *generation != id.generation() {
            // A stale entry of a closed connection on the same descriptor.
            *generation = id.generation();
            mine.clear();
        }
        if !mine.contains(&key) {
            mine.push(key);
        }
    }

    /// Unsubscribes connection `id` from `topic` (not subscribed: no change).
    pub(crate) fn unsubscribe(&self, id: ConnectionId, topic: &str) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        if let Some((generation, mine)) = subscriptions.get_mut(&id.fd()) {
            if *generation == id.generation() {
                mine.retain(|t| &**t != topic);
                if mine.is_empty() {
                    subscriptions.remove(&id.fd());
                }
            }
        }
        self.leave(topic, id);
    }

    /// Connection `id` closed: it leaves its topics.
    pub(crate) fn closed(&self, id: ConnectionId) {
        let mine = {
            let mut subscriptions = self.subscriptions.borrow_mut();
            match subscriptions.get(&id.fd()) {
                Some((generation, _)) if *generation == id.generation() => {
                    subscriptions.remove(&id.fd()).map(|(_, t)| t)
                }
                _ => None,
            }
        };
        for topic in mine.unwrap_or_default() {
            self.leave(&topic, id);
        }
    }

    fn leave(&self, topic: &str, id: ConnectionId) {
        let mut topics = self.topics.borrow_mut();
        if let Some(members) = topics.get_mut(topic) {
            if members.get(&id.fd()) == Some(&id.generation()) {
                members.remove(&id.fd());
            }
            if members.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// The connections one message from the hub goes to, by descriptor and
    /// generation, taken when the pump gets to it.
    fn recipients(&self, push: &Push) -> Vec<(RawFd, u32)> {
        match push {
            Push::To(to, _) => vec![(to.fd(), to.generation())],
            Push::Topic(topic, _) => match self.topics.borrow().get(&**topic) {
                Some(members) => members.iter().map(|(&fd, &g)| (fd, g)).collect(),
                None => Vec::new(),
            },
            Push::All(_) => {
                let mut all: Vec<(RawFd, u32)> = self
                    .awake
                    .borrow()
                    .iter()
                    .map(|(&fd, (g, _))| (fd, *g))
                    .collect();
                for table in self.parked_sets() {
                    table.members(&mut all);
                }
                all
            }
        }
    }

    /// Delivers one message from the hub on this worker, [`CHUNK`]
    /// connections at a time, letting the worker's other tasks run in
    /// between: a broadcast to a million parked connections is a million
    /// `send`s (about a second), which must not hold back the heartbeats
    /// the worker answers meanwhile. Each connection is looked up as its
    /// turn comes, so one that woke, parked or closed since the message
    /// arrived gets it where it is now (or not at all, closed).
    async fn deliver(&self, push: Push) {
        let recipients = self.recipients(&push);
        let (Push::To(_, payload) | Push::Topic(_, payload) | Push::All(payload)) = push;
        let mut msg = Encoded::new(payload);
        // A protocol's table exists before any of its connections does.
        let sets = self.parked_sets();
        in_chunks(recipients, CHUNK, |(fd, generation)| {
            let wires = self.wires.borrow();
            self.deliver_one(fd, generation, &mut msg, &wires, &sets);
        })
        .await;
    }

    /// Delivers to one connection, awake or parked, if it is still open.
    fn deliver_one(
        &self,
        fd: RawFd,
        generation: u32,
        msg: &mut Encoded,
        wires: &[Rc<dyn Wire>],
        sets: &[Rc<dyn ParkedSet>],
    ) {
        let inbox = self
            .awake
            .borrow()
            .get(&fd)
            .filter(|(g, _)| *g == generation)
            .map(|(_, inbox)| inbox.clone());
        if let Some(inbox) = inbox {
            self.queue(&inbox, msg, wires);
            return;
        }
        for table in sets {
            let delivered = table.deliver(fd, generation, msg, wires, &self.stats.messages);
            if delivered != Delivered::NotParked {
                return;
            }
        }
    }

    /// Every protocol's side table, as delivery targets (a copy of the list,
    /// so no borrow is held while delivering).
    fn parked_sets(&self) -> Vec<Rc<dyn ParkedSet>> {
        let tables = self.tables.borrow();
        tables.iter().map(|(_, _, t)| t.clone()).collect()
    }

    /// Puts a message on an awake connection's outbound queue.
    fn queue(&self, inbox: &Inbox, msg: &mut Encoded, wires: &[Rc<dyn Wire>]) {
        let Some(framed) = msg.on(wires, inbox.wire) else {
            return;
        };
        if inbox.offer(framed, self.queue_limit) {
            incr(&self.stats.messages.pushes);
        } else {
            incr(&self.stats.messages.queue_drops);
        }
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

impl Drop for Awake {
    fn drop(&mut self) {
        let mut awake = self.local.awake.borrow_mut();
        if awake
            .get(&self.id.fd())
            .is_some_and(|(g, _)| *g == self.id.generation())
        {
            awake.remove(&self.id.fd());
            // A ramp leaves the map sized for every connection awake at once;
            // once most have parked, that room would stay (~17 bytes a slot,
            // per connection of the peak, for the life of the worker).
            if awake.capacity() > 1024 && awake.len() * 4 < awake.capacity() {
                let room = awake.len() * 2;
                awake.shrink_to(room);
            }
        }
    }
}

/// How many connections a message is delivered to before the pump lets
/// the worker's other tasks run: about a millisecond of `send`s.
const CHUNK: usize = 1024;

/// Calls `each` on every item, yielding to the worker's other tasks after
/// every `chunk` of them.
async fn in_chunks<T>(items: Vec<T>, chunk: usize, mut each: impl FnMut(T)) {
    let len = items.len();
    for (i, item) in items.into_iter().enumerate() {
        each(item);
        let done = i + 1;
        if done % chunk == 0 && done < len {
            tokio::task::yield_now().await;
        }
    }
}

/// Delivers one worker's pushes, in order, until the hub is gone or the
/// worker stops.
async fn pump(local: Weak<Local>, mut rx: mpsc::UnboundedReceiver<Push>) {
    while let Some(push) = rx.recv().await {
        let Some(local) = local.upgrade() else { return };
        local.deliver(push).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A broadcast to 3000 connections lets another task (a heartbeat's)
    /// run between its chunks of 1024, not only after the last: on one
    /// thread, with no timing.
    #[tokio::test]
    async fn a_long_delivery_yields_between_chunks() {
        let delivered = Rc::new(Cell::new(0));
        let seen_by_other: Rc<RefCell<Vec<usize>>> = Rc::default();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let count = delivered.clone();
                let broadcast = tokio::task::spawn_local(async move {
                    in_chunks((0..3000).collect(), CHUNK, |_| count.set(count.get() + 1)).await
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
        // The other task ran while the broadcast was under way, between
        // chunks, never in the middle of one.
        let seen = seen_by_other.borrow();
        assert!(seen.iter().any(|&n| n > 0 && n < 3000), "{seen:?}");
        assert!(seen.iter().all(|n| n % CHUNK == 0), "{seen:?}");
    }
}
