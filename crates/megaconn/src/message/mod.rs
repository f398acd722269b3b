//! The message layer: what a per-message protocol keeps beyond one
//! connection, whatever its wire format. It sits between `service/` and
//! `proto/`: protocols (framed TCP; WebSocket next) import it, it imports
//! no protocol.
//!
//! - `budget.rs`   [`PublishRate`]: each connection's budget of publishes,
//!   charged by audience (a publish costs O(subscribers)), kept per worker
//!   by connection id
//! - `census.rs`  how a worker counts its message connections: once from
//!   registration to close, the count moving with each across park and wake
//! - `deadline.rs` `MessageDeadline`: the bound on a message in progress
//!   (`message_timeout`)
//! - `hub.rs`     [`Hub`]: push by [`ConnectionId`], publish to a topic,
//!   broadcast; [`Inbox`](hub::Inbox), an awake connection's bounded
//!   outbound queue
//! - `io.rs`      `MessageIo`: a message connection's socket (plain or
//!   TLS), its bounded writes, its owed rest of a push, its `close_notify`
//! - `live.rs`    `Live`: an awake connection's state, so its handler hears
//!   of the close exactly once
//! - `open.rs`    which connection ids are open, for every thread: what
//!   lets [`Hub::send`] refuse a closed connection's id at the call
//! - `outbound.rs` `Outbound`: an awake connection's batch of pushes,
//!   written vectored from the frames the hub shares, not copied
//! - `session.rs` [`Session`]: a connection as its handler sees it (replies,
//!   topics, close)
//! - `stuck.rs`   `Stuck`: parked connections droppable pushes find behind,
//!   closed as slow consumers once behind for the write bound
//! - `topics.rs`  `Topics`: each topic's subscribers and each connection's
//!   topics, at most `max_subscriptions` a connection, of names of at most
//!   `max_topic_bytes` ([`SubscribeError`]); [`subscribers`], a topic's
//!   audience in the process (or the processes of a table shared with
//!   [`share_audience`])
//! - `table.rs`   the side table of parked connections' states, per worker
//!   and protocol, with delivery straight to parked sockets
//! - `wake.rs`    `resume`: what a woken connection checks first (behind,
//!   heartbeat deadline, the server's heartbeat due), and how it writes
//!   what a push left owed (resuming, or closing)
//! - `wire.rs`    [`Wire`](wire::Wire): how a protocol frames a message;
//!   [`Encoded`](wire::Encoded): framed once per wire for any number of
//!   connections
//! - `worker.rs`  one worker's ids, queues, topics, tables, the hub's pump
//!   and the connections' deadlines ([`Hub::close_after`])
//!
//! # How a protocol plugs in
//!
//! A protocol that serves connections per message (framed TCP does; a
//! WebSocket one would the same way):
//!
//! 1. implements [`Wire`](wire::Wire) for each wire format it speaks (framed:
//!    its `Framing`; WebSocket: a frame header before the payload);
//! 2. gets its worker's state with [`worker::local`] and its side table with
//!    `Local::table::<S>(its ProtoTag, || its wires)` (`S`: the user's
//!    per-connection state type; the table's *variant* is the protocol's own
//!    index into its wires, e.g. the listener);
//! 3. per connection: on accept `Local::new_id(fd)`, a [`Session`] for the
//!    handler, and while awake `Local::awake(id, wire)`, whose inbox it
//!    drains between messages (`Inbox::take_up_to`: a batch of framed
//!    messages to write, written from their shared bytes by `Outbound`
//!    where the transport writes vectored; or `Overflowed`, which it
//!    closes as `CloseReason::SlowConsumer`) and
//!    whose `pushed()` it awaits beside the socket; once `Inbox::kicked`
//!    says [`Hub::close`] reached it, it writes what it took and closes as
//!    `CloseReason::Kicked` (a parked one is woken for it: `worker.rs`);
//! 4. parks with `SideTable::put(fd, Parked { .. })`, wakes with `take(fd)`;
//!    when the parking lot closes a parked socket itself it `take`s the
//!    state too; woken behind (a push its socket could not take whole),
//!    it reads its timers with `Parked::timers(Local::is_resuming(id))`:
//!    resuming (the lot woke it, `Wake::Owed`, or anything woke it first),
//!    it registers its queue (`Local::awake` hands it the one the pushes
//!    since wait in) and writes what `Local::take_owed` gives, raw on its
//!    socket, before anything else, as an awake write
//!    (`MessageIo::resume_owed`, `wake::write_owed_resuming`), then goes
//!    on; closing (`wake::resume` says why), it writes what
//!    `Local::take_unsent` gives within the close's bound
//!    (`wake::write_unsent`), then closes;
//! 5. on every close calls `Local::closed(id)` (the connection leaves its
//!    topics), and counts each push it took and did not write whole in
//!    `queue_drops`, whatever the close (`Outbound::give_up`; those left
//!    in its queue are counted by `Awake`'s drop).
//!
//! The hub then reaches its connections with no protocol code: awake ones
//! through their inbox, parked ones with one `send` of bytes framed once.

pub(crate) mod budget;
pub(crate) mod census;
#[cfg(test)]
mod census_tests;
pub(crate) mod confirm;
pub(crate) mod deadline;
pub(crate) mod hub;
pub(crate) mod io;
pub(crate) mod live;
pub(crate) mod open;
pub(crate) mod outbound;
pub(crate) mod session;
pub(crate) mod stuck;
pub(crate) mod table;
#[cfg(test)]
pub(crate) mod test_support;
pub(crate) mod topics;
pub(crate) mod wake;
pub(crate) mod wire;
pub(crate) mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::conn::config::Config;
use crate::conn::io::WriteLimit;

pub use budget::{
    PublishRate, DEFAULT_PUBLISH_BURST, DEFAULT_PUBLISH_FANOUT, DEFAULT_PUBLISH_RATE,
};
pub use confirm::{Delivery, Undelivered};
pub use hub::{Buffered, ConnectionId, Hub, HubError};
pub use session::Session;
pub use topics::{
    message_connections_in_other_processes, share_audience, subscribers, ShareAudienceError,
    SubscribeError, AUDIENCE_COUNTERS, DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_MAX_TOPIC_BYTES,
    MAX_TOPIC_METRICS,
};

/// Default bound of an awake connection's outbound queue: 256 messages.
/// A push that finds it full closes the connection as a slow consumer.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 256;

/// Default bound of each worker's queue of [`Hub`] messages waiting for its
/// pump ([`Builder::hub_queue`](crate::Builder::hub_queue)): 65,536
/// messages. Room for a burst of one [`Hub::send`] to each of 65,536
/// connections of a worker, or for a publish every millisecond behind a
/// broadcast that takes a minute. An entry is 56 bytes besides its payload
/// (which the workers a publish goes to share), so a full queue holds
/// 3.5 MiB of entries; the payloads are bounded apart, by
/// [`DEFAULT_HUB_QUEUE_BYTES`]. A message over either bound is dropped and
/// counted (`megaconn_limit_hits_total{limit="hub_queue"}`).
pub const DEFAULT_HUB_QUEUE: usize = 65_536;

/// Default bound of the bytes in each worker's queue of [`Hub`] messages
/// ([`Builder::hub_queue_bytes`](crate::Builder::hub_queue_bytes)): 32 MiB,
/// payloads and entries. The count bound alone let a worker queue 65,536
/// messages of any size: 8 KiB ones held 512 MiB per worker (20,000 of
/// them behind a slow delivery rate grew the server by 155 MiB). 32 MiB
/// holds a full queue of the default 65,536 messages of up to ~450 bytes,
/// or 512 of the 64 KiB the CLI's admin publish and its supervisor's fan-out
/// take at most; larger messages queue fewer.
pub const DEFAULT_HUB_QUEUE_BYTES: usize = 32 << 20;

/// Default [`Builder::write_stall_timeout`](crate::Builder::write_stall_timeout)
/// of HTTP/1.1 responses and of framed and WebSocket connections that have
/// no heartbeat timeout: 60 s. A write the peer takes none of our bytes of
/// for that long closes the connection (nginx's `send_timeout`, the same
/// bound between two successful writes). Without it a peer that sends
/// requests and never reads the replies holds its task and its buffers for
/// good.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Default `message_timeout` of the message protocols
/// ([`WebSocketRoute::message_timeout`](crate::WebSocketRoute::message_timeout),
/// [`Builder::message_timeout`](crate::Builder::message_timeout)): how long
/// a peer may take over one message, from its first byte to its last. 60 s,
/// nginx's `client_header_timeout`/`client_body_timeout`: a connection in
/// the middle of a message cannot park (it holds a task and a pooled
/// buffer), and its heartbeat, which each byte restarts, does not bound a
/// peer that trickles one. Generous for any real message: a framed one is
/// capped at 64 KiB by default, and a WebSocket one of the default 1 MiB
/// cap needs 17.5 KB/s to make it (raise it for larger, slower uploads).
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The message layer's settings, kept in the server's configuration as an
/// opaque value (the core does not know this layer).
#[derive(Debug, Clone)]
pub(crate) struct MessageSettings {
    /// The push channels, once [`Server::hub`](crate::Server::hub) was
    /// asked for (with the workers' ends, which only this holds).
    pub hub: Option<Arc<hub::HubChannels>>,
    /// The bound of each awake connection's outbound queue, in messages.
    pub outbound_queue: usize,
    /// The bound of each worker's queue of hub messages, in messages.
    pub hub_queue: usize,
    /// The bound of each worker's queue of hub messages, in bytes.
    pub hub_queue_bytes: usize,
    /// The most topics one connection may subscribe to.
    pub max_subscriptions: usize,
    /// The longest topic name a connection may subscribe to, in bytes.
    pub max_topic_bytes: usize,
    /// The topics counted one by one in `/metrics`, and their counts
    /// (`Builder::topic_metrics`; `None`: none). Made afresh for each
    /// server at `listen`.
    pub topic_metrics: Option<Arc<topics::TopicMetrics>>,
    /// How many connections each worker reaches per second with one
    /// message of the hub (`None`: as fast as it can, a slice at a time).
    pub delivery_rate: Option<f64>,
    /// Without a heartbeat timeout (HTTP/1.1 has none), how long a write
    /// may go with the peer taking none of our bytes (`None`: unbounded).
    pub write_stall_timeout: Option<Duration>,
}

impl Default for MessageSettings {
    fn default() -> Self {
        MessageSettings {
            hub: None,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            hub_queue: DEFAULT_HUB_QUEUE,
            hub_queue_bytes: DEFAULT_HUB_QUEUE_BYTES,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_topic_bytes: DEFAULT_MAX_TOPIC_BYTES,
            topic_metrics: None,
            delivery_rate: None,
            write_stall_timeout: Some(DEFAULT_WRITE_STALL_TIMEOUT),
        }
    }
}

impl MessageSettings {
    /// The message settings in `config`, if any were set.
    pub(crate) fn of(config: &Config) -> Option<&MessageSettings> {
        config.message.as_deref()?.downcast_ref()
    }

    /// `write_stall_timeout` in `config` (for `conn::io::WriteLimit`).
    pub(crate) fn write_stall_timeout(config: &Config) -> Option<Duration> {
        MessageSettings::of(config)
            .map_or(Some(DEFAULT_WRITE_STALL_TIMEOUT), |s| s.write_stall_timeout)
    }

    /// How the writes of a protocol without a heartbeat of its own are
    /// bounded (HTTP/1.1 responses, an HTTP/2 stream's waits for room, an
    /// upgraded connection speaking WebSocket through `axum_ws`): by the
    /// native protocols' rule ([`WriteLimit::resolve`]) with no heartbeat,
    /// so `write_timeout`, else `write_stall_timeout`.
    pub(crate) fn write_limit_without_heartbeat(config: &Config) -> WriteLimit {
        WriteLimit::resolve(
            config.write_timeout,
            None,
            MessageSettings::write_stall_timeout(config),
        )
    }

    /// Changes the message settings in `config` (creating them).
    pub(crate) fn update(config: &mut Config, change: impl FnOnce(&mut MessageSettings)) {
        let mut settings = MessageSettings::of(config).cloned().unwrap_or_default();
        change(&mut settings);
        config.message = Some(Arc::new(settings));
    }
}
