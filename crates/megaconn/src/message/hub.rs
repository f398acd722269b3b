//! Pushing messages to connections from anywhere: [`Hub`] (cheap to clone,
//! `Send`) sends a message to one connection by its [`ConnectionId`],
//! publishes it to a topic's subscribers, or broadcasts it to every
//! connection, from any task or thread. Each worker drains its own channel
//! in one task and delivers on its own thread (`worker.rs`), so no lock is
//! taken on a connection's path.
//!
//! Delivery depends on where the connection is:
//! - awake (a task): the framed message joins its outbound queue and is
//!   written between the peer's frames, in order with the handler's replies,
//!   the queue taken about [`TAKE_AT_ONCE`] bytes at a time (a write
//!   buffer's worth, not the whole queue); a queue at its bound closes the
//!   connection as
//!   [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer), after
//!   the rest of the frame under way. Such a push counts in `pushes` once
//!   the socket took it whole (the protocol counts it as it writes), and in
//!   `queue_drops` if it never goes whole, whatever closes the connection
//!   (a slow consumer's close, a write timeout, a peer gone, shutdown: see
//!   [`Inbox::drop_behind`]);
//! - parked: the message is written straight to the socket, one `send`, and
//!   the connection stays parked (no task, no buffer kept). If the socket
//!   cannot take the whole message at once (a push larger than its send
//!   buffer, or a burst), the lot wakes the connection to resume
//!   (`Wake::Owed`), its read side untouched: it writes the rest of the
//!   frame the socket took part of first (kept by its worker meanwhile, not
//!   in its slot: `worker.rs`), as an awake write, and the pushes after
//!   that one wait in an outbound queue made for it then, in order, behind
//!   that rest. It is then a slow consumer by the awake rule only: its
//!   queue overflows, or its peer takes none of that rest within its write
//!   bound (closed after the rest of the frame and a WebSocket's 1013,
//!   within the close's bound). That push counts as delivered once its rest
//!   went ([`Unsent`]), else as dropped, as one whose socket is found
//!   broken is. (Until session 45 the connection was closed as a slow
//!   consumer at once: a push larger than the parked socket's send buffer
//!   closed a connection whose client read it at once.)
//!
//! So every push the pump hands to a connection, awake (offered to its
//! queue) or parked (written to its socket), counts once: in `pushes`
//! when the connection's socket took it whole, else in `queue_drops`
//! (refused by a full queue, or lost when the connection closed, for any
//! reason). `pushes + queue_drops` is what the pump handed to connections;
//! a slow consumer's closes are told apart by
//! `megaconn_connections_closed_total{reason="slow_consumer"}`.
//!
//! A send to (or a close of) a connection whose close was reported is
//! refused at the call, [`HubError::Closed`], from any thread: each
//! descriptor's current generation is kept where every thread reads it
//! (`open.rs`), one atomic load a call. A message to a connection that
//! closes after the call (its id is stale by the time the pump gets to it,
//! even if its descriptor was reused), or that the pump finds closing (a
//! slow consumer lingering before its close, a parked one a push found
//! behind, one closed by [`Hub::close`], one in its close handshake), is
//! dropped there and counted in `queue_drops`: every `send` told `Ok`
//! counts once, in `pushes` or `queue_drops` (or `push_unframable`), also
//! one its worker's stop left queued. A publish or broadcast is handed to
//! its recipients when the pump takes it (the topic's subscribers on the
//! worker then; every message connection of the worker whose id was
//! issued by then), and counts once for each of them the same way: one it
//! finds closing, or a subscriber found closed whose close had not reached
//! its topics, counts in `queue_drops`. (Until session 44 those were in no
//! counter.) A publish to a topic without subscribers reaches no one and
//! counts nothing but `hub_messages`.
//!
//! What a push does to a connection that is behind (its outbound queue
//! filling): an ordinary one ([`Hub::send`], `publish`, `publish_except`,
//! `broadcast`, `send_confirmed`) is queued up to the queue's bound, and
//! the next one closes the connection as a slow consumer; a droppable one
//! ([`Hub::send_droppable`], [`Hub::publish_droppable`],
//! [`Hub::publish_except_droppable`], [`Hub::broadcast_droppable`], each
//! with a `_binary_` form) is dropped once the queue holds half its bound
//! ([`droppable_mark`]), the connection left open. A parked connection has
//! no queue: it is behind when its socket is not writable (asked before
//! the push is written) or refuses the push (`EAGAIN`), and a droppable
//! push is then dropped and the connection left parked (`table.rs`); one
//! its socket took part of wakes it to write the rest, as any push does.
//! Drops are counted by cause ([`DropCause`]:
//! `megaconn_message_queue_drops_total{cause}`). Dropping a push never
//! reorders the others. How far behind a connection is:
//! [`Buffered`], from its session or, on its worker, [`Hub::buffered`].
//!
//! Order: each worker's pump delivers the hub's messages in the order it
//! took them from its own queue, so each caller's pushes reach each
//! connection in the order that caller made them; there is no single
//! order of a topic's messages across workers (two publishes from two
//! threads may reach subscribers on two workers in opposite orders).
//!
//! [`Hub::send_confirmed`] is a send whose caller awaits the outcome: its
//! waiter (`confirm.rs`) travels with the push, through the worker's
//! queue, the connection's outbound queue or its parked socket, and the
//! rest of a frame a parked socket took part of ([`Unsent`]), and is
//! resolved where the push is counted: `Ok` with `pushes`, an
//! [`Undelivered`] with `queue_drops` or `push_unframable`. A waiter let
//! go of unresolved resolves as not delivered, so no path that drops a
//! push can leave its caller waiting.
//!
//! [`Hub::close`] travels the same way, so it comes after what was pushed
//! before it: an awake connection's inbox takes it behind its queue; a
//! parked one is woken to close (its socket's read side shut: the lot sees
//! a hang-up), the close waiting in its worker's state, not in its slot.
//!
//! A message a connection's wire cannot frame (over a framed listener's
//! `Framing::max_outbound_frame_bytes`, which `max_frame_bytes` sets with
//! the inbound bound; a line ending or bytes not UTF-8 on a lines listener)
//! is dropped for that connection, counted
//! (`megaconn_limit_hits_total{limit="push_unframable"}`, one per
//! connection) and logged as a warning, rate-limited. The hub's call
//! refuses it only when no connection of the server could be sent it
//! ([`HubError::TooLarge`]: every listener framed, and the message over the
//! largest of their outbound bounds): an id does not say which listener its
//! connection came in on, a publish goes to connections of several
//! framings, and the wires live on the workers (`wire.rs`), which frame
//! when they deliver.
//!
//! To a WebSocket, a message goes as text when its bytes are UTF-8 and as
//! binary otherwise (`Kind::Auto`); the `*_binary` calls always send
//! binary (`Kind::Binary`).
//!
//! Each worker's queue of messages its pump has not taken yet is bounded,
//! in messages (`Builder::hub_queue`) and in bytes, payloads and entries
//! (`Builder::hub_queue_bytes`: a count alone let large payloads behind a
//! slow delivery hold hundreds of MiB). A message that finds either bound
//! reached is dropped for that worker, not waited for: the hub's calls are synchronous and made from
//! handlers on the worker threads themselves, whose pump cannot drain while
//! its thread waits; and delivery is best-effort already (a closed or slow
//! connection loses its messages). Dropping the newest keeps the queued
//! ones in order. Each drop is counted
//! (`megaconn_limit_hits_total{limit="hub_queue"}`) and logged (rate
//! limited); the queue's length is the `megaconn_message_hub_queued` gauge,
//! its bytes `megaconn_message_hub_queued_bytes` (each summed over the
//! workers).
//!
//! The hub takes messages while the server runs: from
//! [`Started::run`](crate::Started::run) (which `serve` calls), as the
//! workers accept, until they stop (each worker's pump delivers from the
//! worker's start, so a graceful drain's open connections still get
//! theirs). Outside that it refuses them ([`HubError::NotServing`],
//! [`HubError::Stopped`]) rather than queue them: queued for a server that
//! did not serve, they held memory up to the queue's bound and reported
//! success, for no connection (and the server might never serve: dropped,
//! or its start failed). The workers' ends of the channels are held by
//! the server's configuration only ([`HubChannels`]), not by the hub: a
//! server dropped without serving drops them, and its hub sees it stopped.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::conn::pool::MAX_POOLED_CAPACITY;
use crate::message::confirm::{Delivery, Undelivered, Waiter};
use crate::message::outbound::PushFrame;
use crate::message::topics::{Published, TopicMetrics};
use crate::message::wire::WireId;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::WorkerStats;

/// Identifies one message connection for [`Hub::send`], from
/// [`Session::id`](crate::Session::id). A closed connection's id names no
/// other connection, of this server or another in the process, until the
/// process has accepted 2^46 more (70 million million: over two years at a
/// million new connections a second), so an id an application kept after
/// its connection closed reaches no one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    worker: u32,
    fd: RawFd,
    generation: Generation,
}

/// Which of the process's connections a connection is, counted from 1 in
/// blocks each worker of each server takes in turn (`worker.rs`), wrapping
/// at [`GENERATION_BITS`] bits: the id tells connections apart that had the
/// same descriptor.
pub(crate) type Generation = u64;

/// The bits of a [`Generation`]: as many as a parked connection's 16-byte
/// side-table slot has room for (`table.rs`). 32 bits wrapped after 50 days
/// at a thousand new connections a second, and a stale id then named the
/// connection that had its descriptor and generation.
pub(crate) const GENERATION_BITS: u32 = 46;

/// The largest [`Generation`].
pub(crate) const GENERATION_MASK: Generation = (1 << GENERATION_BITS) - 1;

impl ConnectionId {
    /// The id as one number, to keep outside the process (a presence entry
    /// in Redis, a log field): worker, descriptor, generation and a tag of
    /// this process, so [`from_u128`](ConnectionId::from_u128) gives the
    /// same id back in this process. Kept after its connection closed, it
    /// names no one, as the id itself does (its generation is not reused
    /// for 2^46 connections).
    ///
    /// Generations count from 1 in each process, so an id of an earlier
    /// run (or of another of `--processes`) would name whichever connection
    /// of this one has the same descriptor and generation: the tag, drawn
    /// at random once per process (18 bits), makes `from_u128` refuse such
    /// a number but once in 262,144 runs. It is an address, not a secret:
    /// do not let a client name the connection to push to.
    pub fn as_u128(self) -> u128 {
        (u128::from(self.worker) << 96)
            | (u128::from(self.fd as u32) << 64)
            | (u128::from(process_tag()) << GENERATION_BITS)
            | u128::from(self.generation)
    }

    /// The id [`as_u128`](ConnectionId::as_u128) gave in this process;
    /// `None` for any other number (one of another process, or of none).
    pub fn from_u128(n: u128) -> Option<ConnectionId> {
        let low = n as u64;
        (low >> GENERATION_BITS == process_tag()).then_some(ConnectionId {
            worker: (n >> 96) as u32,
            fd: (n >> 64) as u32 as RawFd,
            generation: low & GENERATION_MASK,
        })
    }
}

/// This process's tag in [`ConnectionId::as_u128`]: the bits of a `u64`
/// above a generation's, random per process (std's hasher keys are).
fn process_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        let random = std::hash::RandomState::new().build_hasher().finish();
        random >> GENERATION_BITS
    })
}

/// `worker:descriptor:generation`, e.g. `1:17:4521`, for logs.
impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.worker, self.fd, self.generation)
    }
}

/// Sends messages to connections by id, topic or to all, from any task or
/// thread. Get it from [`Server::hub`](crate::Server::hub); clones share it.
///
/// Each message is framed as the connection's protocol and listener frame it
/// (a length header, a line ending), once per worker and wire format, and the
/// same bytes go to every connection: a broadcast to a million connections
/// frames once and makes a million `send` calls, no copies.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// One message on its way to a worker's connections. The [`Kind`] sits in
/// each variant, not in a struct with the payload: beside the tag it takes
/// no room (a struct would pad it to 8 bytes: 64 a message, not 56).
#[derive(Debug)]
pub(crate) enum Push {
    /// To one connection.
    To(ConnectionId, Bytes, Kind, IfBehind),
    /// To one connection, whose caller awaits the outcome
    /// ([`Hub::send_confirmed`]): the waiter holds the connection's id, so
    /// the entry is no larger than [`Push::To`]'s.
    Confirmed(Waiter, Bytes, Kind),
    /// To the subscribers of a topic (but one, with
    /// [`Hub::publish_except`]).
    Topic(Published, Bytes, Kind, IfBehind),
    /// To every message connection.
    All(Bytes, Kind, IfBehind),
    /// Close one connection ([`Hub::close`]): after what was pushed to it
    /// before, with this WebSocket close code and reason.
    Close(ConnectionId, u16, Bytes),
    /// Close one connection at this time ([`Hub::close_after`]), or no
    /// more (`None`: [`Hub::cancel_close_after`]).
    Deadline(ConnectionId, Option<tokio::time::Instant>),
    /// Close one connection at this time with this close
    /// ([`Hub::close_after_with`]); boxed, so that a hub message stays 56
    /// bytes.
    DeadlineWith(ConnectionId, tokio::time::Instant, Box<Kick>),
}

/// How a pushed message goes to a WebSocket (other wires frame bytes as
/// bytes and ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A text message if the bytes are UTF-8, else a binary one
    /// ([`Hub::send`], [`Hub::publish`], [`Hub::broadcast`]).
    Auto,
    /// A binary message, whatever the bytes ([`Hub::send_binary`], ...).
    Binary,
}

/// What a push does to a connection that is behind (awake: its outbound
/// queue past a mark; parked: its socket refused the push): closes it as a
/// slow consumer when the queue is full ([`Hub::send`]), or is dropped for
/// it, the connection left open ([`Hub::send_droppable`]). Beside [`Kind`]
/// in [`Push`], it takes no room either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfBehind {
    /// Queued up to the queue's bound; one over it closes the connection
    /// as a slow consumer.
    Close,
    /// Dropped (and counted, `cause="droppable"`) once an awake
    /// connection's queue holds [`droppable_mark`] messages, or when a
    /// parked connection's socket is not writable or takes none of it
    /// (`table.rs`, `send_parked`): a parked connection has no queue, so
    /// behind is what its socket says, and it stays parked, neither woken
    /// nor closed. (Until session 48 such a push woke it to write the
    /// push, and closed it as a slow consumer if it could not be woken.)
    Drop,
}

/// How many messages an awake connection's queue may hold before a
/// droppable push ([`IfBehind::Drop`]) is dropped for it: half the queue's
/// bound (at least 1). Not the bound itself: droppable pushes up to the
/// bound would leave no room for the next ordinary push, which would then
/// close the connection as a slow consumer, the very thing the application
/// chose droppable pushes to avoid; below half, the other half stays for
/// ordinary pushes (128 of the default 256).
pub(crate) fn droppable_mark(queue_limit: usize) -> usize {
    (queue_limit / 2).max(1)
}

/// The four ways a push of the hub's calls is sent, each call naming one:
/// text or binary to a WebSocket ([`Kind`]), and what it does to a
/// connection that is behind ([`IfBehind`]).
const ORDINARY: (Kind, IfBehind) = (Kind::Auto, IfBehind::Close);
const BINARY: (Kind, IfBehind) = (Kind::Binary, IfBehind::Close);
const DROPPABLE: (Kind, IfBehind) = (Kind::Auto, IfBehind::Drop);
const BINARY_DROPPABLE: (Kind, IfBehind) = (Kind::Binary, IfBehind::Drop);

impl Push {
    /// What it does to a connection that is behind (a close, a deadline
    /// and a confirmed send are never dropped for being behind).
    pub(crate) fn if_behind(&self) -> IfBehind {
        match self {
            Push::To(.., if_behind) | Push::Topic(.., if_behind) | Push::All(.., if_behind) => {
                *if_behind
            }
            _ => IfBehind::Close,
        }
    }

    /// What the message holds in a worker's queue, for its bound in bytes:
    /// its entry and its payload (and topic), counted whole in each queue
    /// it is in, though the workers a publish goes to share one copy.
    fn queued_bytes(&self) -> i64 {
        let held = match self {
            Push::To(_, payload, ..)
            | Push::Confirmed(_, payload, _)
            | Push::All(payload, ..)
            | Push::Close(_, _, payload) => payload.len(),
            Push::Topic(topic, payload, ..) => topic.topic().len() + payload.len(),
            Push::Deadline(..) => 0,
            Push::DeadlineWith(_, _, kick) => kick.reason.len(),
        };
        i64::try_from(std::mem::size_of::<Push>() + held).unwrap_or(i64::MAX)
    }
}

/// Why the [`Hub`] did not take a message. Its calls return at once, so
/// none of these is waited out: the message is not queued, and nothing
/// will deliver it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The server is not serving yet: the hub takes messages once
    /// [`Started::run`](crate::Started::run) (which
    /// [`Server::serve`](crate::Server::serve) calls) lets the workers
    /// accept; before, no connection could get them. Ask for the hub
    /// before serving, push once it serves (a handler's pushes always do).
    #[error("the server is not serving yet: the hub takes messages once it runs (Server::serve, or Started::run after Server::start)")]
    NotServing,
    /// The server has stopped (its workers are gone), or was dropped
    /// without serving.
    #[error("the server has stopped (or was dropped without serving): no worker takes messages")]
    Stopped,
    /// The worker's queue of hub messages is full
    /// ([`Builder::hub_queue`](crate::Builder::hub_queue) messages, or
    /// [`Builder::hub_queue_bytes`](crate::Builder::hub_queue_bytes)): the
    /// message is dropped for it, counted in
    /// `megaconn_limit_hits_total{limit="hub_queue"}` and logged. For a
    /// publish or broadcast: every worker's queue was full. What helps:
    /// room for bursts (`hub_queue_bytes`, `hub_queue`), the message sent
    /// again later, or sends paced to what the workers deliver.
    /// [`Builder::delivery_rate`](crate::Builder::delivery_rate) is no
    /// cure: it caps how fast a publish or broadcast is delivered (unset,
    /// as fast as the worker can) and does nothing for a burst of
    /// [`Hub::send`]s.
    #[error("the workers' hub queues are full: messages come faster than they are delivered (raise Builder::hub_queue_bytes or hub_queue for bursts, send the message again later, or pace the sends)")]
    QueueFull,
    /// The [`ConnectionId`] names a worker this server does not have: it
    /// came from another server.
    #[error("the connection id is from another server (it names a worker this one does not have)")]
    OtherServer,
    /// [`Hub::close_with`] was given a close code no close frame may
    /// carry (RFC 6455 §7.4: 1004-1006 and 1015 are never sent, 0-999 and
    /// 1016-2999 are invalid): nothing is queued, the connection stays
    /// open.
    #[error(
        "close code {0} may not be sent (RFC 6455 §7.4): use 1000-1003, 1007-1014 or 3000-4999"
    )]
    CloseCode(u16),
    /// The connection the [`ConnectionId`] names has closed
    /// ([`Hub::send`], [`Hub::close`]): nothing is queued, and nothing sent
    /// to this id will ever be delivered (ids are not reused). Drop the id
    /// from wherever the application keeps it: its handler's
    /// `on_close_with_id` has run, or is about to.
    #[error("the connection has closed: its id names no one any more (drop it from your map of ids; the handler's on_close_with_id tells when each connection closes)")]
    Closed,
    /// The message is larger than any connection of this server may be
    /// sent ([`Hub::send`], [`Hub::publish`], [`Hub::broadcast`]): a
    /// server whose listeners are all framed refuses, at the call, a
    /// message over the largest of their
    /// [`Framing::max_outbound_frame_bytes`](crate::Framing::max_outbound_frame_bytes)
    /// (`limit`). Nothing is queued; counted in
    /// `megaconn_limit_hits_total{limit="push_unframable"}`. (A server
    /// with an HTTP listener may have WebSocket or SSE connections, whose
    /// bounds it does not know: its connections that cannot carry a
    /// message miss it when their worker delivers it, counted there per
    /// connection.) Send it in smaller pieces, or raise the bound.
    #[error("the message is {bytes} bytes, over the largest frame this server's listeners may send, {limit} (Framing::max_outbound_frame_bytes): send it in smaller pieces or raise that bound")]
    TooLarge {
        /// The message's size.
        bytes: usize,
        /// The largest message the server's connections may be sent.
        limit: usize,
    },
}

impl HubError {
    /// The error of a message that no worker took, from two workers'
    /// reasons: the one that says most about a serving server (a full
    /// queue: it serves but is behind), then a stop, then not yet serving.
    fn worse(self, other: HubError) -> HubError {
        let rank = |e: HubError| match e {
            HubError::NotServing => 0,
            HubError::Stopped => 1,
            HubError::QueueFull => 2,
            HubError::OtherServer => 3,
            // (Refused before any worker is tried: never ranked.)
            HubError::CloseCode(_) | HubError::Closed | HubError::TooLarge { .. } => 4,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// The hub's channels to the workers, one each (the senders), shared by
/// every clone of the [`Hub`].
#[derive(Debug)]
pub(crate) struct HubInner {
    lanes: Vec<Lane>,
    /// The bound of each lane's queue, in messages.
    limit: i64,
    /// The bound of each lane's queue, in bytes ([`Push::queued_bytes`]).
    limit_bytes: i64,
    /// The largest message any connection may be sent, when the server
    /// knows it ([`HubError::TooLarge`]; `usize::MAX`: not known).
    max_message_bytes: usize,
    /// Where publishes are counted by topic (`Builder::topic_metrics`;
    /// `None`: not).
    topic_metrics: Option<Arc<TopicMetrics>>,
}

/// The hub as the server's configuration holds it: its channels, and the
/// workers' ends of them, which each worker takes when it starts, for its
/// pump (`worker.rs`). Only the configuration holds this, not the [`Hub`]:
/// a server dropped before its workers took their ends drops them, which
/// closes the channels, and the hub reports it stopped instead of queuing
/// for it.
#[derive(Debug)]
pub(crate) struct HubChannels {
    hub: Arc<HubInner>,
    ends: Vec<Mutex<Option<HubQueue>>>,
}

/// A worker's end of its hub channel. However it goes (its pump's task
/// dropped when the worker stops, even before its first poll; or never
/// taken, the server dropped or its start failed), what is left in it will
/// never be delivered: it leaves the `hub_queued` gauges too.
#[derive(Debug)]
pub(crate) struct HubQueue {
    rx: mpsc::UnboundedReceiver<Push>,
    stats: Arc<WorkerStats>,
}

impl HubQueue {
    /// The next message, its room in the worker's queue freed; `None` once
    /// the hub is gone.
    pub(crate) async fn next(&mut self) -> Option<Push> {
        let push = self.rx.recv().await?;
        self.taken(&push);
        Some(push)
    }

    /// The pump took `push` from the queue (or dropped it at the worker's
    /// end): its room is free again.
    fn taken(&self, push: &Push) {
        let queued = &self.stats.messages;
        queued.hub_queued.fetch_sub(1, Relaxed);
        queued
            .hub_queued_bytes
            .fetch_sub(push.queued_bytes(), Relaxed);
    }
}

impl HubQueue {
    /// The pump stopped with `push` taken and not delivered (its worker's
    /// state is gone), or the worker stopped with it still queued: it
    /// counts in `queue_drops{cause="shutdown"}`, and a confirmed one's
    /// caller hears [`Undelivered::Shutdown`]. A send counts once, for its
    /// connection. A publish or broadcast counts once for this worker, not
    /// once per recipient: who they would have been is not known any more
    /// (the worker's connections close before its queue goes, and its
    /// topics with them). (Until session 48 those counted nowhere: a
    /// publish left in a stopped worker's queue vanished from every
    /// counter.) A close or a deadline is no push: nothing to count.
    pub(crate) fn lost(&self, push: Push) {
        match push {
            Push::To(..) | Push::Topic(..) | Push::All(..) => {
                DropCause::Shutdown.count(&self.stats.messages)
            }
            Push::Confirmed(waiter, ..) => {
                DropCause::Shutdown.count(&self.stats.messages);
                waiter.resolve(Err(Undelivered::Shutdown));
            }
            Push::Close(..) | Push::Deadline(..) | Push::DeadlineWith(..) => {}
        }
    }
}

impl Drop for HubQueue {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(push) = self.rx.try_recv() {
            self.taken(&push);
            self.lost(push);
        }
    }
}

/// The way to one worker: its channel and its counters, whose
/// `hub_queued` and `hub_queued_bytes` gauges are also what bounds the
/// channel (the channel itself is unbounded: a bounded tokio channel would
/// keep a second count of the same messages, one the metrics cannot read).
/// So the gauges cost the publish path nothing of their own: they are the
/// bound's counts, which a scrape sums over the workers.
#[derive(Debug)]
struct Lane {
    sender: mpsc::UnboundedSender<Push>,
    stats: Arc<WorkerStats>,
    /// Set once the worker took its end of the channel: it serves.
    serving: AtomicBool,
}

impl HubChannels {
    /// The channels to the workers whose counters are `workers`, each
    /// holding at most `limit` messages (at least one) and `limit_bytes`
    /// bytes (but always one message, however large).
    pub(crate) fn new(
        workers: &[Arc<WorkerStats>],
        limit: usize,
        limit_bytes: usize,
    ) -> HubChannels {
        let (lanes, ends) = workers
            .iter()
            .map(|stats| {
                let (sender, rx) = mpsc::unbounded_channel();
                let lane = Lane {
                    sender,
                    stats: stats.clone(),
                    serving: AtomicBool::new(false),
                };
                let end = HubQueue {
                    rx,
                    stats: stats.clone(),
                };
                (lane, Mutex::new(Some(end)))
            })
            .unzip();
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let limit_bytes = i64::try_from(limit_bytes).unwrap_or(i64::MAX);
        HubChannels {
            hub: Arc::new(HubInner {
                lanes,
                limit,
                limit_bytes,
                max_message_bytes: usize::MAX,
                topic_metrics: None,
            }),
            ends,
        }
    }

    /// Messages over `bytes` are refused at the call
    /// ([`HubError::TooLarge`]): no connection of the server could be sent
    /// one (`proto::framed::largest_outbound`). Before any hub is handed out.
    pub(crate) fn refusing_over(mut self, bytes: usize) -> HubChannels {
        if let Some(hub) = Arc::get_mut(&mut self.hub) {
            hub.max_message_bytes = bytes;
        }
        self
    }

    /// Publishes are counted by topic in `metrics` (`None`: not). Before
    /// any hub is handed out.
    pub(crate) fn counting_topics(mut self, metrics: Option<Arc<TopicMetrics>>) -> HubChannels {
        if let Some(hub) = Arc::get_mut(&mut self.hub) {
            hub.topic_metrics = metrics;
        }
        self
    }

    /// The hub on these channels.
    pub(crate) fn hub(&self) -> Hub {
        Hub {
            inner: self.hub.clone(),
        }
    }

    /// Worker `index`'s end, once (for its pump, from the worker's start).
    pub(crate) fn take_end(&self, index: usize) -> Option<HubQueue> {
        self.ends.get(index)?.lock().ok()?.take()
    }
}

impl HubInner {
    /// Puts `push` in `lane`'s queue if its worker serves and it has room.
    fn offer(&self, lane: &Lane, push: Push) -> Result<(), HubError> {
        if !lane.serving.load(Acquire) {
            // Closed before it ran: the server was dropped, or stopped
            // before it ran.
            return Err(if lane.sender.is_closed() {
                HubError::Stopped
            } else {
                HubError::NotServing
            });
        }
        let (queued, bytes) = (
            &lane.stats.messages.hub_queued,
            &lane.stats.messages.hub_queued_bytes,
        );
        let cost = push.queued_bytes();
        // Room is taken before the send, so the pump, which gives it back
        // when it takes a message, never sees the gauge below zero. A
        // message larger than the byte bound still goes into an empty
        // queue, alone: else a bound set below one message refused all.
        let room = queued.fetch_update(Relaxed, Relaxed, |n| (n < self.limit).then_some(n + 1));
        let taken = room.and_then(|_| {
            let fits = |n: i64| n == 0 || n.saturating_add(cost) <= self.limit_bytes;
            let taken = bytes.fetch_update(Relaxed, Relaxed, |n| {
                fits(n).then_some(n.saturating_add(cost))
            });
            if taken.is_err() {
                queued.fetch_sub(1, Relaxed);
            }
            taken
        });
        if taken.is_err() {
            LimitHit::HubQueue.count(&lane.stats);
            ratelog::log(Flood::HubQueueFull, |suppressed| {
                tracing::warn!(
                    limit = self.limit,
                    limit_bytes = self.limit_bytes,
                    suppressed,
                    "a worker's hub queue is full; dropping the message for its connections (messages come faster than the worker delivers them: raise Builder::hub_queue_bytes or hub_queue for bursts; a steady excess needs the sends paced or retried later)"
                )
            });
            return Err(HubError::QueueFull);
        }
        if lane.sender.send(push).is_err() {
            // The worker's pump ended: the server stopped.
            queued.fetch_sub(1, Relaxed);
            bytes.fetch_sub(cost, Relaxed);
            return Err(HubError::Stopped);
        }
        Ok(())
    }
}

impl Hub {
    /// The server runs ([`Started::run`](crate::Started::run)): the hub
    /// takes messages for its workers from now on (each worker's pump has
    /// taken its end already, or takes it and what waits in it when it
    /// starts). Before, nothing would deliver them.
    pub(crate) fn open(&self) {
        for lane in &self.inner.lanes {
            lane.serving.store(true, Release);
        }
    }

    /// Sends `message` to connection `to`. Returns at once: `Ok` when its
    /// worker queued it; else why not ([`HubError`]: the connection has
    /// closed, the server is not serving yet or has stopped, or the
    /// worker's queue is full,
    /// [`Builder::hub_queue`](crate::Builder::hub_queue), where the message
    /// is dropped and counted).
    ///
    /// [`HubError::Closed`] says the connection is gone (a device went
    /// away): it is returned from the moment the connection's close is
    /// reported, before its handler's `on_close_with_id` runs, on every
    /// thread (one atomic load per call: the hub keeps, per descriptor,
    /// the generation of the connection holding it; no round trip to the
    /// worker). A send racing the close on another thread may get either
    /// answer; one made after the handler's `on_close_with_id` has begun,
    /// or from it, gets `Closed`. (An id of a connection closed so long
    /// ago that a connection 2^32 later holds its descriptor with the same
    /// low 32 bits of generation is `Ok`, and its message dropped, as
    /// before.)
    ///
    /// # What `Ok` means
    ///
    /// Queued, not delivered: the connection was open when the call
    /// looked, and the message waits in its worker's queue. What happens
    /// to it later is not told to the caller, message by message (a caller
    /// that must know awaits [`send_confirmed`](Hub::send_confirmed)
    /// instead, which resolves with it); it is counted, once, in one of:
    /// - `megaconn_message_pushes_total`: the connection's socket took it
    ///   whole (the kernel has it; whether the peer read it, only the
    ///   peer can say: an application that must know has it acknowledge);
    /// - `megaconn_message_queue_drops_total`: it never went whole. The
    ///   connection closed before the pump got to it or before its turn to
    ///   be written (its peer gone, a timeout, shutdown, the worker's stop),
    ///   or the pump found it closing (a slow consumer lingering before its
    ///   close, one closed by [`Hub::close`], one in its close handshake),
    ///   or its outbound queue
    ///   ([`Builder::outbound_queue`](crate::Builder::outbound_queue)) was
    ///   full, or, woken to write a push its parked socket took only part
    ///   of, its peer took none of that within its write bound: it is then
    ///   closed as a slow consumer, and its handler's `on_close_with_id` hears
    ///   [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer)
    ///   (`megaconn_connections_closed_total{reason="slow_consumer"}`);
    /// - `megaconn_limit_hits_total{limit="push_unframable"}`: its framing
    ///   cannot carry it (below).
    ///
    /// So a message the peer never got shows as a close of its connection
    /// (`on_close_with_id`, with why) or in these counters, never as
    /// nothing. [`publish`](Hub::publish) and
    /// [`broadcast`](Hub::broadcast) count the same way, once per
    /// connection they are handed to.
    ///
    /// To a WebSocket, the message goes as a text message when its bytes
    /// are UTF-8 and as a binary one otherwise: a binary protocol whose
    /// bytes happen to be ASCII uses [`send_binary`](Hub::send_binary).
    ///
    /// A message the connection's framing cannot carry (over a framed
    /// listener's [`Framing::max_reply_bytes`](crate::Framing::max_reply_bytes),
    /// a line ending or bytes not UTF-8 on a lines listener) is dropped when
    /// its worker gets to it, counted in
    /// `megaconn_limit_hits_total{limit="push_unframable"}` and logged
    /// (a warning, rate-limited). The hub refuses it here,
    /// [`HubError::TooLarge`], only when no connection of the server could
    /// be sent it (every listener framed, the message over the largest of
    /// their [`Framing::max_outbound_frame_bytes`](crate::Framing::max_outbound_frame_bytes)):
    /// an id does not say which listener (or protocol) its connection came
    /// in on, and the framings live on the workers.
    pub fn send(&self, to: ConnectionId, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.send_with(to, message.into(), ORDINARY)
    }

    /// [`send`](Hub::send), as a binary message to a WebSocket whatever the
    /// bytes (to a framed connection, the same as `send`).
    pub fn send_binary(&self, to: ConnectionId, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.send_with(to, message.into(), BINARY)
    }

    /// [`send`](Hub::send) of a message the peer may miss (a typing
    /// indicator, a presence blip, a game state superseded by the next):
    /// while the connection is behind, it is dropped for it instead of
    /// closing it. Behind means its outbound queue
    /// ([`Builder::outbound_queue`](crate::Builder::outbound_queue), 256
    /// messages by default) holds half its bound or more: the other half
    /// stays for ordinary pushes, which a queue filled by droppable ones
    /// would otherwise turn into a slow consumer's close. A dropped one
    /// counts in
    /// `megaconn_message_queue_drops_total{cause="droppable"}` and its
    /// connection stays open; one that goes counts in
    /// `megaconn_message_pushes_total`, as any push.
    ///
    /// Order is kept: a droppable push is dropped or queued when its
    /// worker delivers it, in the order of the hub's calls for that
    /// connection, so those that are delivered arrive in order with every
    /// other push (none is held back to go later). Returns at once, with
    /// the errors of [`send`](Hub::send).
    ///
    /// What a peer that is behind gets, by push:
    /// - [`send`](Hub::send), [`publish`](Hub::publish),
    ///   [`broadcast`](Hub::broadcast): queued up to the queue's bound;
    ///   the next one closes the connection as a slow consumer (a
    ///   WebSocket gets 1013), and what it still held is dropped
    ///   (`cause="slow_consumer"`);
    /// - [`send_confirmed`](Hub::send_confirmed): the same, and its
    ///   caller hears why;
    /// - `send_droppable`, [`publish_droppable`](Hub::publish_droppable),
    ///   [`publish_except_droppable`](Hub::publish_except_droppable) and
    ///   [`broadcast_droppable`](Hub::broadcast_droppable): dropped from
    ///   half the queue on, the connection left open.
    ///
    /// An awake peer that reads nothing at all is still closed, by its
    /// write bound: the heartbeat timeout, else
    /// [`Builder::write_stall_timeout`](crate::Builder::write_stall_timeout)
    /// (60 s), past which a write its socket took nothing of closes it as
    /// a slow consumer, droppable pushes or not. A *parked* one that only
    /// droppable pushes reach has no write of ours waiting (below): it is
    /// closed as a slow consumer by the first droppable push dropped for it
    /// once its socket has taken none of our bytes for `write_timeout`,
    /// else `write_stall_timeout` (its peer acknowledged none meanwhile,
    /// and no push went whole), whatever its heartbeat timeout and however
    /// often its peer's frames wake it;
    /// logged with its id, peer and how long it was behind. (Until session
    /// 49 it stayed open: with a heartbeat timeout, for good.)
    ///
    /// A parked connection has no queue: behind means its socket is not
    /// writable (`poll` for `POLLOUT`, asked before the push is written:
    /// on Linux, over two thirds of its send buffer queued) or refuses
    /// the push (`EAGAIN`). A droppable push to a parked connection that
    /// is behind is dropped, counted as above, and the connection stays
    /// parked, neither woken nor closed; else it is written to its socket
    /// as any push. Asked first because a frame the socket took part of (a
    /// short write, how a socket usually fills) has begun and must end
    /// before anything else goes: the connection is then woken to write
    /// the rest, as for any push, and resumes awake with a queue, whose
    /// mark drops the droppable ones after it. After a yes, only a push
    /// over a third of the send buffer can be taken in part. Over TLS,
    /// asking first also spares sealing a push that would be dropped
    /// (sealed records must all go). The cost: one `poll` per droppable
    /// push to a parked connection.
    ///
    /// How far behind a connection is: [`Session::buffered`](crate::Session::buffered),
    /// [`WsSession::buffered`](crate::WsSession::buffered), or
    /// [`Hub::buffered`] on the connection's worker.
    pub fn send_droppable(
        &self,
        to: ConnectionId,
        message: impl Into<Bytes>,
    ) -> Result<(), HubError> {
        self.send_with(to, message.into(), DROPPABLE)
    }

    /// [`send_droppable`](Hub::send_droppable), as a binary message to a
    /// WebSocket whatever the bytes.
    pub fn send_binary_droppable(
        &self,
        to: ConnectionId,
        message: impl Into<Bytes>,
    ) -> Result<(), HubError> {
        self.send_with(to, message.into(), BINARY_DROPPABLE)
    }

    /// The one path of every send but a confirmed one.
    fn send_with(
        &self,
        to: ConnectionId,
        message: Bytes,
        (kind, if_behind): (Kind, IfBehind),
    ) -> Result<(), HubError> {
        self.fits(&message)?;
        self.to_worker_of(to, Push::To(to, message, kind, if_behind))
    }

    /// How far behind connection `id` is: what waits in its outbound
    /// queue, not yet taken for writing ([`Buffered`]), when asked on the
    /// connection's own worker thread (from a handler of any of that
    /// worker's connections, or a task spawned there); `None` from any
    /// other thread, and for a connection that has closed. A parked
    /// connection has nothing queued (zero).
    ///
    /// Only on its worker because the queue is that worker's own: an
    /// answer for every thread would need a counter every connection
    /// shares with other threads, which parked connections (most of them)
    /// would pay for in memory, or a round trip to the worker. A handler
    /// that fans out to connections of its own worker (one worker, or
    /// rooms placed by worker) can skip a peer that is behind; elsewhere,
    /// [`send_droppable`](Hub::send_droppable) makes that choice where the
    /// queue is.
    pub fn buffered(&self, id: ConnectionId) -> Option<Buffered> {
        super::worker::buffered_here(id)
    }

    /// [`send`](Hub::send), with the outcome to await: the returned
    /// [`Delivery`] resolves `Ok` once the connection's socket took the
    /// message whole (handed to the kernel: written to it parked or awake,
    /// cleartext or over TLS, also when a parked socket took part of it
    /// and the rest was written once it woke), or with why it did not
    /// ([`Undelivered`]): refused at the call ([`HubError`], as `send`
    /// returns it), the connection closed first, a slow consumer (its
    /// outbound queue full, or its peer took nothing within its write
    /// bound), its framing cannot carry it, or the server shut down first.
    /// Whatever happens to the message, the future resolves: every path
    /// that drops a push resolves its waiter, and one let go of without a
    /// word resolves as [`Undelivered::Closed`] (or
    /// [`Undelivered::Shutdown`] while its worker shuts down), never as
    /// delivered. Each outcome is counted as a plain `send`'s is ("What
    /// `Ok` means" there): `Ok` is a push in
    /// `megaconn_message_pushes_total`.
    ///
    /// For a command or a firmware chunk to one device: send the next
    /// chunk once the last one went, and retry or report the device gone
    /// on an error. `Ok` is not the peer's acknowledgement (it may still
    /// lose the connection before it reads): a protocol that must know
    /// has the device acknowledge. The call itself returns at once, as
    /// `send` does; dropping the [`Delivery`] does not take the message
    /// back.
    ///
    /// Costs a plain `send` nothing: a confirmed push carries its waiter
    /// (one allocation, this call's), a plain one none.
    pub fn send_confirmed(&self, to: ConnectionId, message: impl Into<Bytes>) -> Delivery {
        self.send_confirmed_as(to, message.into(), Kind::Auto)
    }

    /// [`send_confirmed`](Hub::send_confirmed), as a binary message to a
    /// WebSocket whatever the bytes (to a framed connection, the same).
    pub fn send_binary_confirmed(&self, to: ConnectionId, message: impl Into<Bytes>) -> Delivery {
        self.send_confirmed_as(to, message.into(), Kind::Binary)
    }

    fn send_confirmed_as(&self, to: ConnectionId, message: Bytes, kind: Kind) -> Delivery {
        if let Err(e) = self.fits(&message) {
            return Delivery::refused(e);
        }
        let (waiter, delivery) = Delivery::new(to);
        match self.to_worker_of(to, Push::Confirmed(waiter, message, kind)) {
            Ok(()) => delivery,
            // The waiter went with the refused push, resolved by its drop:
            // the caller hears the refusal itself.
            Err(e) => Delivery::refused(e),
        }
    }

    /// Refuses `message` if no connection of the server may be sent one
    /// that large ([`HubError::TooLarge`]), counted once, on the first
    /// worker's counters.
    fn fits(&self, message: &Bytes) -> Result<(), HubError> {
        let limit = self.inner.max_message_bytes;
        if message.len() <= limit {
            return Ok(());
        }
        if let Some(lane) = self.inner.lanes.first() {
            LimitHit::PushUnframable.count(&lane.stats);
        }
        Err(HubError::TooLarge {
            bytes: message.len(),
            limit,
        })
    }

    /// Closes connection `id` from outside its handler (a gateway revoking
    /// a device's token, a ban): what was pushed to it before goes out
    /// first, then a WebSocket gets a close frame 1008 (policy violation)
    /// and the close handshake, a framed connection the TCP close. Its
    /// handler's `on_close_with_id` runs once, with
    /// [`CloseReason::Kicked`](crate::CloseReason::Kicked) (counted as
    /// `megaconn_connections_closed_total{reason="kicked"}`). Parked or
    /// awake alike: a parked one is woken to close (its read side is shut,
    /// so the close handshake does not wait for the peer's answer).
    ///
    /// Returns at once, with the errors of [`send`](Hub::send):
    /// [`HubError::Closed`] for a connection known to have closed (it
    /// names no one: nothing happens). `Ok` says the close is queued, not
    /// done: its handler's `on_close_with_id` tells when the connection
    /// has closed, and why (`Kicked`, or another reason if it closed
    /// otherwise first; for one that closes before its worker gets to the
    /// close, nothing more happens). What was pushed before it and not
    /// taken by the peer within the close's bound, and what its worker
    /// takes for it after the close (sends, publishes and broadcasts
    /// alike), is not written: each counts in
    /// `megaconn_message_queue_drops_total`.
    pub fn close(&self, id: ConnectionId) -> Result<(), HubError> {
        self.close_with(id, POLICY_VIOLATION, "")
    }

    /// Resets connection `id` from outside its handler (a gateway kicking
    /// an abusive or duplicate device): the socket is closed with
    /// `SO_LINGER` 0, so the peer reads a reset (`ECONNRESET`), no
    /// `TIME_WAIT` is left, and no close waits on a peer that does not
    /// read. Unlike [`close`](Hub::close) nothing goes before it: what
    /// was pushed to it and not yet written is dropped (counted in
    /// `megaconn_message_queue_drops_total`), a WebSocket gets no close
    /// frame, a TLS connection no `close_notify`. Its handler's
    /// `on_close_with_id` runs once, with
    /// [`CloseReason::Reset`](crate::CloseReason::Reset) (counted as
    /// `megaconn_connections_closed_total{reason="reset"}`). Parked or
    /// awake alike (a parked one is woken to close, as for `close`); a
    /// frame the peer is in the middle of sending is not waited for, nor
    /// a write its peer does not take (a push, or the rest of one its
    /// parked socket took part of): it ends there, the frame cut short
    /// (until session 47 it ended at its write bound, and closed as
    /// `WriteTimeout` or `SlowConsumer`, with a FIN). Not at once in one
    /// case: a connection whose handlers are busy (`on_message` in
    /// progress, then any whole messages already read) is reset once they
    /// return, the pushes queued before the reset not written (a framed
    /// connection's replies go first); if a write of pushes made while the
    /// handler awaits is under way, it ends at once as above and the
    /// handler's future is dropped, as for any close that ends that
    /// write. A reset after a `close` that has not closed
    /// the connection yet takes its place, and a `close` after a reset
    /// does not undo it.
    ///
    /// Returns at once, with the errors of [`send`](Hub::send); `Ok` says
    /// the reset is queued (its worker takes it in order with the hub's
    /// other messages to it).
    pub fn reset(&self, id: ConnectionId) -> Result<(), HubError> {
        self.to_worker_of(id, Push::Close(id, RESET, Bytes::new()))
    }

    /// [`close`](Hub::close) with the WebSocket close code and reason to
    /// send (a framed connection hears neither): an application's code
    /// (3000-4999) or a registered one a server may send (1000-1003,
    /// 1007-1014), as [`WsSession::close_with`](crate::WsSession::close_with)
    /// takes. Any other is refused here, [`HubError::CloseCode`], and
    /// nothing is queued: the connection stays open. The reason is cut to
    /// 123 bytes (at a character boundary), what a close frame holds, when
    /// the hub takes it: the worker's hub queue holds no more of it.
    pub fn close_with(&self, id: ConnectionId, code: u16, reason: &str) -> Result<(), HubError> {
        if !close_code_may_be_sent(code) {
            return Err(HubError::CloseCode(code));
        }
        let reason = Bytes::copy_from_slice(close_reason(reason).as_bytes());
        self.to_worker_of(id, Push::Close(id, code, reason))
    }

    /// Closes connection `id` as [`close`](Hub::close) does (a WebSocket
    /// gets 1008, policy violation; its handler hears
    /// [`CloseReason::Kicked`](crate::CloseReason::Kicked)) once `after`
    /// has passed, unless [`cancel_close_after`](Hub::cancel_close_after)
    /// comes first: an authentication deadline (set in `on_open`, cancelled
    /// when the peer has authenticated), an idle kick (set again at each
    /// message the application counts as activity; a new deadline replaces
    /// the one before). Parked or awake alike, the application keeps no
    /// map and runs no sweep.
    ///
    /// The deadline is kept by the connection's worker, from when its pump
    /// takes this call (in order with the hub's other messages to it) until
    /// it fires, is cancelled or the connection closes: a connection without
    /// one pays nothing for it (nothing in its side-table slot), one with
    /// one an entry in two maps of its worker (about 100 B), and a worker a
    /// timer task while any waits. Returns at once, with the errors of
    /// [`send`](Hub::send). Resolution is the runtime's timer (a
    /// millisecond); a deadline more than a year away waits a year.
    pub fn close_after(&self, id: ConnectionId, after: Duration) -> Result<(), HubError> {
        let now = tokio::time::Instant::now();
        let at = now.checked_add(after.min(A_YEAR)).unwrap_or(now);
        self.to_worker_of(id, Push::Deadline(id, Some(at)))
    }

    /// [`close_after`](Hub::close_after) with the WebSocket close code and
    /// reason to send when the time comes, as
    /// [`close_with`](Hub::close_with) takes them (a code that may not be
    /// sent is refused here, [`HubError::CloseCode`], and nothing is
    /// queued): an authentication deadline that says so (4001,
    /// "authentication timeout"), an idle kick with 1000. Replaces, and is
    /// cancelled by, `close_after` and
    /// [`cancel_close_after`](Hub::cancel_close_after) alike. Costs two
    /// allocations per call (the close, boxed to keep hub messages at 56
    /// bytes, and its reason's copy; none for an empty reason) and, while
    /// it waits, the close beside the deadline's entry in its worker.
    pub fn close_after_with(
        &self,
        id: ConnectionId,
        after: Duration,
        code: u16,
        reason: &str,
    ) -> Result<(), HubError> {
        if !close_code_may_be_sent(code) {
            return Err(HubError::CloseCode(code));
        }
        let reason = Bytes::copy_from_slice(close_reason(reason).as_bytes());
        let now = tokio::time::Instant::now();
        let at = now.checked_add(after.min(A_YEAR)).unwrap_or(now);
        let kick = Box::new(Kick { code, reason });
        self.to_worker_of(id, Push::DeadlineWith(id, at, kick))
    }

    /// Cancels connection `id`'s [`close_after`](Hub::close_after) (none
    /// set: no change). Ordered with the hub's other calls for the
    /// connection, so a cancel made after a `close_after` cancels it, if
    /// it has not fired yet (the close may be under way: its worker fires
    /// a deadline once its time has come, whatever comes behind in its
    /// queue). With the errors of [`send`](Hub::send).
    pub fn cancel_close_after(&self, id: ConnectionId) -> Result<(), HubError> {
        self.to_worker_of(id, Push::Deadline(id, None))
    }

    /// Queues `push` for the worker of connection `to`, unless that
    /// connection is known to have closed (one atomic load: `open.rs`).
    fn to_worker_of(&self, to: ConnectionId, push: Push) -> Result<(), HubError> {
        let Some(lane) = self.inner.lanes.get(to.worker as usize) else {
            return Err(HubError::OtherServer);
        };
        if super::open::is_closed(to) {
            return Err(HubError::Closed);
        }
        self.inner.offer(lane, push)
    }

    /// Sends `message` to every connection subscribed to `topic` (with
    /// [`Session::subscribe`](crate::Session::subscribe)), on every worker,
    /// framed and WebSocket alike: topics are the server's, shared by all
    /// its message protocols. Returns at once: `Ok` when at least one
    /// worker queued it; else why none did ([`HubError`]: the server is not
    /// serving yet or has stopped, or every worker's queue is full,
    /// [`Builder::hub_queue`](crate::Builder::hub_queue)). A worker whose
    /// queue is full drops it, counted once for that worker
    /// (`megaconn_limit_hits_total{limit="hub_queue"}`, not per
    /// subscriber), and its subscribers miss it.
    ///
    /// `Ok` says nothing of its subscribers: a topic with none is `Ok` and
    /// reaches no one. Each worker hands the message to the topic's
    /// subscribers it has when its pump takes it (one who subscribes after
    /// does not get it), and each of them counts it once, as a
    /// [`send`](Hub::send) does (see "What `Ok` means" there): in
    /// `megaconn_message_pushes_total` once its socket took it whole, else
    /// in `megaconn_message_queue_drops_total` (a subscriber closing when
    /// the pump met it included; until session 44 those were in no
    /// counter). A subscriber parked whose socket cannot take it whole (a
    /// message larger than its send buffer) is woken to write the rest and
    /// gets it whole if it reads, as an awake one does, with what is
    /// published after it, in order.
    ///
    /// Text or binary to a WebSocket, and a message some connections'
    /// framing cannot carry: as for [`send`](Hub::send) (those connections
    /// miss it, counted per connection; the others get it).
    pub fn publish(&self, topic: &str, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.publish_to((topic, None), message.into(), ORDINARY)
    }

    /// [`publish`](Hub::publish), as a binary message to WebSockets whatever
    /// the bytes.
    pub fn publish_binary(&self, topic: &str, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.publish_to((topic, None), message.into(), BINARY)
    }

    /// [`publish`](Hub::publish) of a message a subscriber may miss: for
    /// each subscriber that is behind (its outbound queue holds half its
    /// bound or more; parked, its socket refuses it), dropped instead of
    /// closing it, counted in
    /// `megaconn_message_queue_drops_total{cause="droppable"}`, as
    /// [`send_droppable`](Hub::send_droppable) says; the others get it, in
    /// order with everything else pushed to them.
    ///
    /// There is no single order of a topic's messages across workers:
    /// each worker has its own queue of the hub's messages and delivers
    /// them in the order it took them, so two publishes from two threads
    /// may reach subscribers on two workers in opposite orders. What is
    /// kept: each caller's messages reach each connection in the order
    /// that caller made them (one thread's publishes go to every worker's
    /// queue in its order), droppable or not.
    pub fn publish_droppable(
        &self,
        topic: &str,
        message: impl Into<Bytes>,
    ) -> Result<(), HubError> {
        self.publish_to((topic, None), message.into(), DROPPABLE)
    }

    /// [`publish_droppable`](Hub::publish_droppable), as a binary message
    /// to WebSockets whatever the bytes.
    pub fn publish_binary_droppable(
        &self,
        topic: &str,
        message: impl Into<Bytes>,
    ) -> Result<(), HubError> {
        self.publish_to((topic, None), message.into(), BINARY_DROPPABLE)
    }

    /// [`publish`](Hub::publish) to every subscriber of `topic` but
    /// `except` (a chat message to everyone in the room but its author,
    /// who has it already). `except` need not be subscribed, nor open.
    /// Costs what `publish` does: the skipped id travels in the publish's
    /// one allocation (`message/topics.rs`'s `Published`), and each
    /// worker drops it from the topic's members it lists anyway.
    pub fn publish_except(
        &self,
        topic: &str,
        message: impl Into<Bytes>,
        except: ConnectionId,
    ) -> Result<(), HubError> {
        self.publish_to((topic, Some(except)), message.into(), ORDINARY)
    }

    /// [`publish_except`](Hub::publish_except), as a binary message to
    /// WebSockets whatever the bytes.
    pub fn publish_binary_except(
        &self,
        topic: &str,
        message: impl Into<Bytes>,
        except: ConnectionId,
    ) -> Result<(), HubError> {
        self.publish_to((topic, Some(except)), message.into(), BINARY)
    }

    /// [`publish_except`](Hub::publish_except) of a message a subscriber
    /// may miss: dropped for each subscriber that is behind, as
    /// [`publish_droppable`](Hub::publish_droppable) does (a room's typing
    /// indicator to everyone but the one typing).
    pub fn publish_except_droppable(
        &self,
        topic: &str,
        message: impl Into<Bytes>,
        except: ConnectionId,
    ) -> Result<(), HubError> {
        self.publish_to((topic, Some(except)), message.into(), DROPPABLE)
    }

    /// [`publish_except_droppable`](Hub::publish_except_droppable), as a
    /// binary message to WebSockets whatever the bytes.
    pub fn publish_binary_except_droppable(
        &self,
        topic: &str,
        message: impl Into<Bytes>,
        except: ConnectionId,
    ) -> Result<(), HubError> {
        self.publish_to((topic, Some(except)), message.into(), BINARY_DROPPABLE)
    }

    /// The one path of every publish: to `topic`'s subscribers (but
    /// `except`), as text or binary and droppable or not.
    fn publish_to(
        &self,
        (topic, except): (&str, Option<ConnectionId>),
        message: Bytes,
        (kind, if_behind): (Kind, IfBehind),
    ) -> Result<(), HubError> {
        self.fits(&message)?;
        let published = Published::new(topic, except);
        self.to_every_worker(|| Push::Topic(published.clone(), message.clone(), kind, if_behind))?;
        if let Some(metrics) = &self.inner.topic_metrics {
            metrics.published(topic);
        }
        Ok(())
    }

    /// Sends `message` to every message connection of the server, parked or
    /// awake, framed and WebSocket alike: each worker hands it to its
    /// connections open when its pump takes it (and to none opened after).
    /// Returns at once; `Ok` (which promises no recipient), the errors, the
    /// counting per connection, text or binary and unframable messages as
    /// for [`publish`](Hub::publish).
    pub fn broadcast(&self, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.broadcast_as(message.into(), ORDINARY)
    }

    /// [`broadcast`](Hub::broadcast), as a binary message to WebSockets
    /// whatever the bytes.
    pub fn broadcast_binary(&self, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.broadcast_as(message.into(), BINARY)
    }

    /// [`broadcast`](Hub::broadcast) of a message a connection may miss
    /// (a server-wide presence count, a clock tick): dropped for each
    /// connection that is behind, which stays open, as
    /// [`send_droppable`](Hub::send_droppable) says (awake: its queue holds
    /// half its bound or more; parked: its socket refuses it), counted in
    /// `megaconn_message_queue_drops_total{cause="droppable"}`; the others
    /// get it, in order with everything else pushed to them.
    pub fn broadcast_droppable(&self, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.broadcast_as(message.into(), DROPPABLE)
    }

    /// [`broadcast_droppable`](Hub::broadcast_droppable), as a binary
    /// message to WebSockets whatever the bytes.
    pub fn broadcast_binary_droppable(&self, message: impl Into<Bytes>) -> Result<(), HubError> {
        self.broadcast_as(message.into(), BINARY_DROPPABLE)
    }

    /// The one path of every broadcast.
    fn broadcast_as(
        &self,
        message: Bytes,
        (kind, if_behind): (Kind, IfBehind),
    ) -> Result<(), HubError> {
        self.fits(&message)?;
        self.to_every_worker(|| Push::All(message.clone(), kind, if_behind))
    }

    fn to_every_worker(&self, push: impl Fn() -> Push) -> Result<(), HubError> {
        let mut refused: Option<HubError> = None;
        let mut any = false;
        for lane in &self.inner.lanes {
            match self.inner.offer(lane, push()) {
                Ok(()) => any = true,
                Err(e) => refused = Some(refused.map_or(e, |r| r.worse(e))),
            }
        }
        match refused {
            Some(e) if !any => Err(e),
            _ => Ok(()),
        }
    }
}

/// Whether a close code may appear in a close frame (RFC 6455 §7.4.1,
/// §7.4.2): the registered ones except 1004-1006 and 1015 (never sent),
/// and 3000-4999. The same rule holds for both ends. (Here, below the
/// protocols, as [`Hub::close_with`] checks it too.)
pub(crate) fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The furthest [`Hub::close_after`] waits.
const A_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most of a close reason a close frame carries: its payload is at
/// most 125 bytes (RFC 6455 §5.5), 2 of them the code.
pub(crate) const MAX_CLOSE_REASON: usize = 123;

/// `reason` cut to [`MAX_CLOSE_REASON`] bytes at a character boundary (a
/// close frame's reason must be UTF-8, §5.5.1).
pub(crate) fn close_reason(reason: &str) -> &str {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    &reason[..cut]
}

/// The close code [`Hub::close`] sends a WebSocket (RFC 6455 §7.4.1:
/// policy violation, "a generic status code ... when there is no other
/// more suitable": a revoked token, a ban).
pub(crate) const POLICY_VIOLATION: u16 = 1008;

/// The code of a [`Kick`] that is a [`Hub::reset`]: 1006, the code RFC
/// 6455 §7.4.1 reserves for a connection closed without a close frame,
/// which no close frame may carry (so no [`Hub::close_with`] can ask for
/// it).
pub(crate) const RESET: u16 = 1006;

/// A close asked for through [`Hub::close`]: the WebSocket close code and
/// reason (a framed connection closes without either); or a
/// [`Hub::reset`] ([`Kick::is_reset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kick {
    pub code: u16,
    pub reason: Bytes,
}

impl Kick {
    /// Whether this is a [`Hub::reset`]: closed at once with `SO_LINGER`
    /// 0, what is queued dropped, no close frame.
    pub(crate) fn is_reset(&self) -> bool {
        self.code == RESET
    }

    /// The reason as text (it was a `&str` when the hub took it).
    pub(crate) fn reason(&self) -> String {
        String::from_utf8_lossy(&self.reason).into_owned()
    }
}

/// About how many bytes of its outbound queue an awake connection copies
/// into its write buffer at a time ([`Inbox::take_up_to`]); it takes the
/// next ones once the socket took those. What the pool keeps of a buffer
/// ([`MAX_POOLED_CAPACITY`], 64 KiB): a batch within it leaves the write
/// buffer reusable, and what keeps a reader's link busy meanwhile is its
/// socket's send buffer (`message_send_buffer_size`, 256 KiB, which Linux
/// doubles), filled batch after batch, not a larger batch. Taken whole, a
/// queue of `outbound_queue` (256) messages of 1 MiB was copied at once:
/// 256 MiB of write buffer for one connection, besides the messages
/// themselves, which the queues of all their recipients share.
pub(crate) const TAKE_AT_ONCE: usize = MAX_POOLED_CAPACITY;

/// An awake connection's outbound queue: messages pushed to it, framed for
/// its wire, waiting to be written between the peer's frames. Bounded by
/// the server's `outbound_queue`, in messages; taken about
/// [`TAKE_AT_ONCE`] bytes at a time.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// How this connection frames messages.
    pub wire: WireId,
    queue: RefCell<VecDeque<PushFrame>>,
    /// The bytes of the frames in `queue` ([`Inbox::buffered`]).
    bytes: Cell<usize>,
    notify: Notify,
    /// A push found the queue full: the connection is closed as a slow
    /// consumer at its next look.
    overflowed: Cell<bool>,
    /// [`Hub::close`] reached it: the connection closes once the queue
    /// before it is written; nothing is queued after it.
    kicked: RefCell<Option<Kick>>,
    /// The task of a write under way, woken when [`Hub::reset`] reaches
    /// the connection ([`Inbox::reset_asked`]).
    reset_waker: RefCell<Option<Waker>>,
    /// Its connection's close was reported while this inbox was
    /// registered (framed TCP and SSE close holding it): its registration's
    /// drop does not take it for a connection leaving (`worker.rs`).
    ended: Cell<bool>,
}

/// How far behind a connection is: what waits in its outbound queue, not
/// yet taken for writing ([`Hub::buffered`],
/// [`Session::buffered`](crate::Session::buffered),
/// [`WsSession::buffered`](crate::WsSession::buffered)). Besides it, the
/// connection may be writing one batch (about 64 KiB at most) and its
/// socket's send buffer hold what the peer has not read yet: those are
/// not counted. Zero while the connection keeps up (a push waits only
/// until its connection's task next runs).
///
/// A droppable push ([`Hub::send_droppable`]) is dropped while
/// `messages` is half of
/// [`Builder::outbound_queue`](crate::Builder::outbound_queue) or more;
/// an ordinary one past the whole bound closes the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Buffered {
    /// Pushes queued.
    pub messages: usize,
    /// Their bytes, framed (a WebSocket frame's header included).
    pub bytes: usize,
}

/// Why a push handed to a connection did not reach its peer whole: the
/// `cause` label of `megaconn_message_queue_drops_total`. Each cause has
/// its own counter (`MessageCounters`), whose sum is the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropCause {
    /// Refused by the connection's full outbound queue, or left in it (or
    /// unwritten) when that overflow closed the connection as a slow
    /// consumer; or found behind, parked, woken to close.
    SlowConsumer,
    /// A droppable push ([`Hub::send_droppable`]) the connection was too
    /// far behind for (awake, its queue at the mark; parked, its socket
    /// refused it); the connection stays open.
    Droppable,
    /// Left in its worker's hub queue when the worker stopped: once per
    /// send, and once per worker for a publish or broadcast
    /// ([`HubQueue::lost`]).
    Shutdown,
    /// Lost to any other close: the peer gone, a write timeout, shutdown's
    /// close of the connection, [`Hub::close`], a stale id.
    Closed,
}

impl DropCause {
    /// The cause of pushes a connection's close for `reason` loses: a
    /// slow consumer's, or any other close's.
    pub(crate) fn of_close(reason: &crate::CloseReason) -> DropCause {
        match reason {
            crate::CloseReason::SlowConsumer => DropCause::SlowConsumer,
            _ => DropCause::Closed,
        }
    }

    /// Counts `n` pushes dropped for this cause.
    pub(crate) fn count_n(self, counters: &crate::observe::stats::MessageCounters, n: u64) {
        let counter = match self {
            DropCause::SlowConsumer => &counters.queue_drops_slow_consumer,
            DropCause::Droppable => &counters.queue_drops_droppable,
            DropCause::Shutdown => &counters.queue_drops_shutdown,
            DropCause::Closed => &counters.queue_drops,
        };
        crate::observe::stats::add(counter, n);
    }

    /// Counts one push dropped for this cause.
    pub(crate) fn count(self, counters: &crate::observe::stats::MessageCounters) {
        self.count_n(counters, 1);
    }
}

/// The outbound queue overflowed: close the connection as a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflowed;

impl Inbox {
    pub(crate) fn new(wire: WireId) -> Inbox {
        Inbox {
            wire,
            queue: RefCell::default(),
            bytes: Cell::new(0),
            notify: Notify::new(),
            overflowed: Cell::new(false),
            kicked: RefCell::default(),
            reset_waker: RefCell::default(),
            ended: Cell::new(false),
        }
    }

    /// Its connection's close was reported (`Local::closed`).
    pub(crate) fn ended(&self) {
        self.ended.set(true);
    }

    /// Whether [`Inbox::ended`] was called.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.get()
    }

    /// Closes the connection once what is queued now is written
    /// ([`Hub::close`]); wakes it.
    pub(crate) fn kick(&self, kick: Kick) {
        let mut kicked = self.kicked.borrow_mut();
        // A reset takes the place of a close still waiting for its queue.
        if kick.is_reset() {
            *kicked = Some(kick);
            if let Some(writing) = self.reset_waker.take() {
                writing.wake();
            }
        } else {
            kicked.get_or_insert(kick);
        }
        self.notify.notify_one();
    }

    /// Whether [`Hub::close`] reached this connection (nothing more is
    /// queued for it).
    pub(crate) fn is_kicked(&self) -> bool {
        self.kicked.borrow().is_some()
    }

    /// The close [`Hub::close`] asked for, once the queue before it was
    /// taken ([`Inbox::take_up_to`]): the connection closes with it. While
    /// messages pushed before it wait, `None`: they go first.
    pub(crate) fn kicked(&self) -> Option<Kick> {
        let kicked = self.kicked.borrow();
        // A reset does not wait for the queue (the connection drops it).
        if !self.queue.borrow().is_empty() && !kicked.as_ref().is_some_and(Kick::is_reset) {
            return None;
        }
        kicked.clone()
    }

    /// Queues framed bytes unless the queue holds `limit` already; false
    /// (and the connection marked behind) when it is full: its waiter, if
    /// any, hears [`Undelivered::SlowConsumer`]. (The caller logs the
    /// first overflow: it knows the connection, `Local::queue`.)
    pub(crate) fn offer(&self, framed: PushFrame, limit: usize) -> bool {
        let mut queue = self.queue.borrow_mut();
        let accepted = !self.overflowed.get() && queue.len() < limit;
        if accepted {
            self.bytes.set(self.bytes.get() + framed.bytes.len());
            queue.push_back(framed);
        } else {
            crate::message::confirm::resolve(
                framed.waiter.as_ref(),
                Err(Undelivered::SlowConsumer),
            );
            self.overflowed.set(true);
        }
        // Wake the connection either way: to write, or to close.
        self.notify.notify_one();
        accepted
    }

    /// Whether a push found the queue full (the connection closes as a
    /// slow consumer at its next look).
    pub(crate) fn has_overflowed(&self) -> bool {
        self.overflowed.get()
    }

    /// How many messages wait in the queue (for the droppable mark,
    /// `droppable_mark`).
    pub(crate) fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// What waits in the queue, not yet taken for writing
    /// ([`Hub::buffered`]).
    pub(crate) fn buffered(&self) -> Buffered {
        Buffered {
            messages: self.len(),
            bytes: self.bytes.get(),
        }
    }

    /// The queued messages from the oldest on, up to `bytes` of them, at
    /// least one (a larger message goes alone); or the overflow, which
    /// closes the connection. The connection writes them and comes back
    /// for the rest ([`Inbox::pushed`] resolves while any wait): what it
    /// holds in its write buffer stays about one batch ([`TAKE_AT_ONCE`])
    /// however much waits. Only the queue's bound in messages counts
    /// toward an overflow: one taken is out of the queue.
    pub(crate) fn take_up_to(&self, bytes: usize) -> Result<Vec<PushFrame>, Overflowed> {
        if self.overflowed.get() {
            return Err(Overflowed);
        }
        let mut queue = self.queue.borrow_mut();
        let (mut size, mut count) = (0, 0);
        for next in queue.iter() {
            size += next.bytes.len();
            if count > 0 && size > bytes {
                break;
            }
            count += 1;
        }
        let taken: Vec<PushFrame> = queue.drain(..count).collect();
        let bytes: usize = taken.iter().map(|p| p.bytes.len()).sum();
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
        Ok(taken)
    }

    /// Drops the accepted messages left queued when the connection closes
    /// (or parks, with none left): how many, for `queue_drops`
    /// (`Awake::drop_behind`), whatever the close. (Until session 41 only
    /// a slow consumer's were counted: a peer gone, a write timeout or
    /// shutdown lost them in neither `pushes` nor `queue_drops`.) Their
    /// waiters hear why: a slow consumer's, [`Undelivered::SlowConsumer`];
    /// any other's, its close (the waiter's drop). Counted by the caller
    /// under [`Inbox::drop_cause`].
    pub(crate) fn drop_behind(&self) -> usize {
        let mut queue = self.queue.borrow_mut();
        let n = queue.len();
        self.bytes.set(0);
        if self.overflowed.get() {
            for pushed in queue.iter() {
                let slow = Err(Undelivered::SlowConsumer);
                crate::message::confirm::resolve(pushed.waiter.as_ref(), slow);
            }
        }
        queue.clear();
        n
    }

    /// Why what its queue holds is dropped at its close: a slow
    /// consumer's overflow, or the close.
    pub(crate) fn drop_cause(&self) -> DropCause {
        match self.overflowed.get() {
            true => DropCause::SlowConsumer,
            false => DropCause::Closed,
        }
    }

    /// True when nothing waits (and there is no overflow or close to act
    /// on).
    pub(crate) fn is_empty(&self) -> bool {
        !self.overflowed.get() && self.queue.borrow().is_empty() && !self.is_kicked()
    }

    /// Resolves when something was pushed (or the queue overflowed, or the
    /// hub closes the connection): at once while something waits, such as
    /// what a batch ([`Inbox::take_up_to`]) left, whose push's wake-up was
    /// taken already (by this wait or by [`Inbox::overflow`]'s).
    pub(crate) async fn pushed(&self) {
        if !self.is_empty() {
            return;
        }
        self.notify.notified().await;
    }

    /// Resolves once a push found the queue full (never otherwise). Taking
    /// the wake-ups of pushes meanwhile is harmless: the connection looks at
    /// the queue itself ([`Inbox::is_empty`]) before it waits again.
    pub(crate) async fn overflow(&self) {
        while !self.overflowed.get() {
            self.notify.notified().await;
        }
    }

    /// Resolves once [`Hub::reset`] reached the connection (never
    /// otherwise): polled beside [`Inbox::overflow`] by a write its peer
    /// does not take, which then ends at once and resets, instead of at
    /// its write bound. Its own waker, not the queue's `Notify`: two
    /// waiters there take each other's `notify_one` (a push's wake-up
    /// taken by this one left an overflow unseen).
    pub(crate) async fn reset_asked(&self) {
        std::future::poll_fn(|cx| {
            if self.kicked.borrow().as_ref().is_some_and(Kick::is_reset) {
                return Poll::Ready(());
            }
            let mut waker = self.reset_waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl ConnectionId {
    /// The id of worker `worker`'s connection `fd` with `generation`.
    pub(crate) fn new(worker: usize, fd: RawFd, generation: Generation) -> ConnectionId {
        ConnectionId {
            worker: worker as u32,
            fd,
            generation,
        }
    }

    pub(crate) fn generation(self) -> Generation {
        self.generation
    }

    pub(crate) fn fd(self) -> RawFd {
        self.fd
    }

    /// The index of the worker the connection is on.
    pub(crate) fn worker(self) -> usize {
        self.worker as usize
    }
}

/// What a push to a parked connection did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Written whole.
    Sent,
    /// The socket took less than the message, just now: the connection is
    /// to be woken to write what it still owes of the push ([`Unsent`]; none
    /// when the socket took none of it, in the clear) and resume awake,
    /// its pushes framed for `wire` from here on queued
    /// (`Local::overflowed`, in `worker.rs`).
    Overflowed(Option<Unsent>, WireId),
    /// A push found it behind already, woken to close (the lot could not
    /// wake it to resume): nothing was written; the pump counts it dropped.
    Behind,
    /// Closing for the hub ([`Hub::close`]): nothing was written; the pump
    /// counts it dropped.
    Closing,
    /// Its socket was found broken: nothing went, counted in `queue_drops`
    /// (its hang-up wakes it to close).
    Lost,
    /// A droppable push its socket refused (not writable, or took none of
    /// it): dropped, counted as such
    /// ([`DropCause::Droppable`]), the connection left parked.
    Dropped,
    /// Not a parked connection of that generation (or not framable for it).
    NotParked,
    /// Another connection holds the descriptor now: the one sought has
    /// closed (a descriptor names one open socket at a time).
    Replaced,
}

/// What a connection still owes of the push its socket took part of:
/// the rest of the frame (parked, over TLS, the records sealed for it),
/// written first when it wakes, to resume or to close (`message/wake.rs`),
/// or by an awake slow consumer's close (`message/outbound.rs`). The push is counted once that
/// tells whether it reached the peer whole: in `pushes` and `bytes_out`
/// then, else in `queue_drops`; its waiter, if it is a confirmed one, is
/// resolved there too (`message::wake::count_unsent`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unsent {
    /// The bytes still to write.
    pub tail: Bytes,
    /// The frame's bytes still to count in `bytes_out` once the rest went:
    /// a parked push's whole frame (what a push written at once counts:
    /// the frame, not its TLS records), an awake one's rest (what its
    /// socket took was counted as it went).
    pub frame: usize,
    /// The caller awaiting the push ([`Hub::send_confirmed`]), if any.
    pub waiter: Option<Waiter>,
}

/// What a non-blocking write to a parked socket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendNow {
    /// All the bytes went.
    Sent,
    /// The socket buffer took less than all (`taken` bytes, maybe none):
    /// the peer is behind.
    Full { taken: usize },
    /// The connection is broken (the peer reset or closed it); the parking
    /// lot sees that as a hang-up and wakes it to be closed.
    Broken,
}

/// Writes `bytes` to a parked socket without blocking (a bare system call:
/// `conn/sys.rs` says why).
pub(crate) fn send_all_now(fd: RawFd, bytes: &[u8]) -> SendNow {
    // SAFETY: `fd` is open: the caller found its side-table entry, on the
    // worker's own thread, or is the lot closing it (`goodbye_parked`). An
    // entry is a parked socket, kept by the lot, or a hot wake's socket
    // whose task is spawned but not yet polled (it takes the entry when it
    // first runs), owned by that task's future on this same thread.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    match crate::conn::sys::send(socket, bytes) {
        Ok(Some(n)) if n == bytes.len() => SendNow::Sent,
        Ok(taken) => SendNow::Full {
            taken: taken.unwrap_or(0),
        },
        Err(_) => SendNow::Broken,
    }
}

/// Whether a parked socket is writable now (`poll` for `POLLOUT`, not
/// waiting): what a droppable push to a parked connection asks before it
/// is written (`table.rs`'s `send_parked`). Linux says writable while at
/// least a third of the socket's send buffer is free
/// (`sk_stream_is_writeable`); an error says writable, so that the `send`
/// after finds it out.
pub(crate) fn writable_now(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: as in `send_all_now`; `poll` reads and writes the one
    // `pollfd` it is given, which lives across the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready != 0 && (ready < 0 || poll.revents != 0)
}

/// Wakes a parked socket to close ([`Hub::close`], or a push that found it
/// full when the lot cannot wake it to resume: `Local::overflowed`): its
/// read side shut, the parking lot sees a hang-up and hands it
/// to its protocol, which can still write (the rest of a frame, a
/// WebSocket's close frame). Reads give the end of the stream from here on,
/// so the close does not wait for the peer's answer. (Both sides shut, a
/// slow consumer's frame under way was cut and its close frame never went.)
pub(crate) fn wake_to_close(fd: RawFd) {
    // SAFETY: as in `send_all_now`; shutdown takes no memory arguments.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// An awake connection takes its queue a batch at a time, about
    /// `bytes` (at least one message, a larger one alone), oldest first:
    /// taken whole, a queue of 256 messages of 1 MiB went into one write
    /// buffer, 256 MiB. Its bound in messages is unchanged: what is taken
    /// leaves room; a push over the bound is refused and the next take
    /// reports the overflow, whatever waits.
    #[test]
    fn an_inbox_is_taken_a_batch_at_a_time() {
        let inbox = Inbox::new(0);
        let message = |i: u8, len: usize| Bytes::from(vec![i; len]);
        for (i, len) in [(0, 10), (1, 20), (2, 30), (3, 100), (4, 5)] {
            assert!(inbox.offer(PushFrame::plain(message(i, len)), 8));
        }
        let lens = |taken: Vec<PushFrame>| -> Vec<(u8, usize)> {
            taken.iter().map(|p| (p.bytes[0], p.bytes.len())).collect()
        };
        // Up to the bound, inclusive.
        assert_eq!(
            lens(inbox.take_up_to(60).unwrap()),
            [(0, 10), (1, 20), (2, 30)]
        );
        // One larger than the bound goes alone.
        assert_eq!(lens(inbox.take_up_to(60).unwrap()), [(3, 100)]);
        assert!(!inbox.is_empty());
        assert_eq!(lens(inbox.take_up_to(60).unwrap()), [(4, 5)]);
        assert!(inbox.is_empty());
        assert!(inbox.take_up_to(60).unwrap().is_empty());
        // The bound in messages: 3 fit, a fourth overflows; then taking
        // reports the overflow, not what waits.
        for i in 0..3 {
            assert!(inbox.offer(PushFrame::plain(message(i, 1 << 20)), 3));
        }
        assert_eq!(inbox.take_up_to(TAKE_AT_ONCE).unwrap().len(), 1);
        let fourth = PushFrame::plain(message(3, 1 << 20));
        assert!(inbox.offer(fourth, 3), "one taken left room");
        assert!(!inbox.offer(PushFrame::plain(message(4, 1 << 20)), 3));
        assert!(matches!(inbox.take_up_to(TAKE_AT_ONCE), Err(Overflowed)));
    }

    /// A close from the hub comes after what was pushed before it: the
    /// connection sees it only once its queue is all taken, and a wait for
    /// pushes ends at once while anything is left (the wake-up of the
    /// pushes left was taken already by the first batch's).
    #[tokio::test]
    async fn a_kick_waits_for_the_queue_before_it() {
        let inbox = Inbox::new(0);
        for i in 0..3u8 {
            assert!(inbox.offer(PushFrame::plain(Bytes::from(vec![i; 100])), 8));
        }
        inbox.kick(Kick {
            code: 1008,
            reason: Bytes::new(),
        });
        inbox.pushed().await;
        assert_eq!(inbox.take_up_to(150).unwrap().len(), 1);
        assert_eq!(inbox.kicked(), None, "two pushed before it wait");
        let left = tokio::time::timeout(std::time::Duration::from_secs(5), inbox.pushed());
        left.await.expect("what waits ends the wait at once");
        assert_eq!(inbox.take_up_to(TAKE_AT_ONCE).unwrap().len(), 2);
        assert_eq!(inbox.kicked().map(|k| k.code), Some(1008));
    }

    /// A queued message is 56 bytes besides its payload, as
    /// `DEFAULT_HUB_QUEUE`'s doc says (3.5 MiB for a full default queue).
    #[test]
    fn a_queued_message_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Push>(), 56);
    }

    /// A serving hub of one worker, and that worker's counters.
    fn serving() -> (Hub, Arc<WorkerStats>, Arc<HubChannels>) {
        let stats = Arc::new(WorkerStats::default());
        let channels = Arc::new(HubChannels::new(std::slice::from_ref(&stats), 16, 1 << 20));
        let hub = channels.hub();
        hub.open();
        (hub, stats, channels)
    }

    /// An id the hub takes for an open connection's (`open.rs`), on a
    /// descriptor no socket of the test process has.
    fn open_id() -> ConnectionId {
        let id = ConnectionId::new(0, 900_007, 1);
        crate::message::open::opened(id);
        id
    }

    /// What a worker's stop leaves in its hub queue counts once per push
    /// in `queue_drops{cause="shutdown"}`: a send for its connection, a
    /// publish and a broadcast (droppable or not) each once for the
    /// worker; a close or a deadline is no push. (Publishes and
    /// broadcasts counted nowhere: session 48.)
    #[test]
    fn pushes_left_in_a_stopped_workers_queue_count_as_shutdown() {
        let (hub, stats, channels) = serving();
        let id = open_id();
        assert_eq!(hub.send(id, "a"), Ok(()));
        assert_eq!(hub.publish("news", "b"), Ok(()));
        assert_eq!(hub.publish_except_droppable("news", "c", id), Ok(()));
        assert_eq!(hub.broadcast("d"), Ok(()));
        assert_eq!(hub.broadcast_binary_droppable("e"), Ok(()));
        assert_eq!(hub.close(id), Ok(()));
        assert_eq!(hub.close_after(id, Duration::from_secs(1)), Ok(()));
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 7);
        drop(channels.take_end(0).expect("the worker's end"));
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 0);
        let counted = &stats.messages;
        assert_eq!(counted.queue_drops_shutdown.load(Relaxed), 5);
        assert_eq!(counted.queue_drops.load(Relaxed), 0);
    }

    /// Each droppable call queues its push droppable, text or binary as
    /// named; the ordinary ones not.
    #[test]
    fn each_call_queues_its_kind_of_push() {
        let (hub, _stats, channels) = serving();
        let id = open_id();
        let mut end = channels.take_end(0).expect("the worker's end");
        let (auto, binary) = (Kind::Auto, Kind::Binary);
        let (closes, drops) = (IfBehind::Close, IfBehind::Drop);
        let calls: [(Result<(), HubError>, Kind, IfBehind); 12] = [
            (hub.send(id, "m"), auto, closes),
            (hub.send_binary_droppable(id, "m"), binary, drops),
            (hub.publish("t", "m"), auto, closes),
            (hub.publish_binary_droppable("t", "m"), binary, drops),
            (hub.publish_except("t", "m", id), auto, closes),
            (hub.publish_binary_except("t", "m", id), binary, closes),
            (hub.publish_except_droppable("t", "m", id), auto, drops),
            (
                hub.publish_binary_except_droppable("t", "m", id),
                binary,
                drops,
            ),
            (hub.broadcast("m"), auto, closes),
            (hub.broadcast_binary("m"), binary, closes),
            (hub.broadcast_droppable("m"), auto, drops),
            (hub.broadcast_binary_droppable("m"), binary, drops),
        ];
        for (i, (sent, kind, if_behind)) in calls.into_iter().enumerate() {
            assert_eq!(sent, Ok(()), "call {i}");
            let push = end.rx.try_recv().expect("queued");
            let got = match &push {
                Push::To(_, _, k, _) | Push::Topic(_, _, k, _) | Push::All(_, k, _) => *k,
                other => panic!("call {i}: {other:?}"),
            };
            assert_eq!((got, push.if_behind()), (kind, if_behind), "call {i}");
            if let Push::Topic(topic, ..) = &push {
                assert_eq!(topic.topic(), "t");
            }
            end.taken(&push);
        }
    }

    /// `close_with` refuses a code no close frame may carry, at the call:
    /// nothing is queued (it was queued, and logged on the worker, a line
    /// per call, and the connection closed with 1011 instead).
    #[test]
    fn close_with_refuses_a_code_that_may_not_be_sent() {
        let (hub, stats, _channels) = serving();
        let id = open_id();
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(
                hub.close_with(id, code, "x"),
                Err(HubError::CloseCode(code)),
                "{code}"
            );
        }
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 0);
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert_eq!(hub.close_with(id, code, ""), Ok(()), "{code}");
        }
        assert_eq!(stats.messages.hub_queued.load(Relaxed), 6);
    }

    /// `close_with`'s reason is cut to what a close frame holds (123
    /// bytes, at a character boundary) when the hub takes it: the worker's
    /// queue holds no more of it (a 1 MiB reason held 1 MiB until sent).
    #[test]
    fn close_with_keeps_at_most_a_close_frames_reason() {
        let (hub, stats, _channels) = serving();
        let id = open_id();
        let entry = std::mem::size_of::<Push>() as i64;
        // 2-byte characters: 123 bytes would cut the 62nd in two.
        let long = "é".repeat(1 << 19);
        assert_eq!(hub.close_with(id, 4000, &long), Ok(()));
        let queued = stats.messages.hub_queued_bytes.load(Relaxed);
        assert_eq!(queued, entry + 122);
        assert_eq!(close_reason(&long), "é".repeat(61));
        assert_eq!(close_reason("short"), "short");
        assert_eq!(close_reason(&"a".repeat(200)).len(), MAX_CLOSE_REASON);
    }
}
