//! The message layer's public knobs: the [`Hub`] of a server (push,
//! publish, broadcast to message connections), the bound of each
//! connection's outbound queue and of each worker's queue of hub messages,
//! the pace of the hub's deliveries, how many topics a connection may
//! subscribe to, which topics `/metrics` counts one by one, and how long a
//! write may stall.
//! Protocol-neutral: they apply to every message protocol's connections
//! (framed TCP; the write stall bound WebSocket's too, native and
//! `axum_ws`, and HTTP/1.1 responses').

use std::sync::Arc;
use std::time::Duration;

use crate::conn::config::Config;
use crate::error::Error;
use crate::message::hub::HubChannels;
use crate::message::topics::TopicMetrics;
use crate::message::{Hub, MessageSettings};
use crate::server::builder::{Builder, Server};

impl Builder {
    /// Message connections (WebSocket, Server-Sent Events, framed): how
    /// many pushed messages may wait in an awake connection's outbound
    /// queue. The connection takes them as they come (about 64 KiB at a
    /// time), between the peer's messages, in the middle of one, and while
    /// its handler awaits; so they wait there only while its socket does
    /// not take what it is writing (a peer that does not read, or reads
    /// slower than they come). A push that finds the queue full closes the
    /// connection as
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer)
    /// (a WebSocket gets a close 1013 after the frame under way) and
    /// counts a queue drop. A parked connection has no queue: a push is one
    /// `send`; one its socket buffer cannot take whole wakes it to write the
    /// rest and resume awake, a slow consumer only by this rule (or closed
    /// as one at once if it cannot be woken). Default:
    /// [`DEFAULT_OUTBOUND_QUEUE`](crate::DEFAULT_OUTBOUND_QUEUE).
    pub fn outbound_queue(mut self, messages: usize) -> Builder {
        MessageSettings::update(&mut self.config, |s| s.outbound_queue = messages.max(1));
        self
    }

    /// Message connections: at most `per_second` connections reached per
    /// second by each worker with one message of the [`Hub`] (a publish or
    /// broadcast), so a broadcast to many connections takes its time and
    /// leaves CPU for the heartbeats and requests the worker serves
    /// meanwhile. Delivery always goes a slice of a few hundred connections
    /// at a time, letting the worker's other work run between slices; the
    /// rate adds a pause between slices. Later messages wait (in order)
    /// until the one under way is delivered, up to
    /// [`hub_queue`](Builder::hub_queue) per worker; past it they are
    /// dropped and counted (`megaconn_limit_hits_total{limit="hub_queue"}`),
    /// so a rate slower than messages come drops the excess.
    /// The `megaconn_message_deliveries_pending` gauge shows what is left,
    /// `megaconn_message_hub_queued` what waits behind it.
    /// Default: `None`, as fast as the worker can.
    pub fn delivery_rate(mut self, per_second: Option<f64>) -> Builder {
        let rate = per_second.filter(|r| r.is_finite() && *r > 0.0);
        MessageSettings::update(&mut self.config, |s| s.delivery_rate = rate);
        self
    }

    /// Message connections: how many messages of the [`Hub`] (each `send`,
    /// and each `publish` or `broadcast` once per worker) may wait for each
    /// worker to deliver them. A message that finds its worker's queue full
    /// is dropped for that worker, not waited for (the hub's calls return
    /// at once, and are often made on the very worker that must drain the
    /// queue), counted in `megaconn_limit_hits_total{limit="hub_queue"}`
    /// and logged (at most once per 5 s per thread); [`Hub::send`] then
    /// returns [`HubError::QueueFull`](crate::HubError::QueueFull), and
    /// [`Hub::publish`] or [`Hub::broadcast`] when no worker took it. The queue's length is the
    /// `megaconn_message_hub_queued` gauge. Without the bound, publishing
    /// faster than the workers deliver (a slow
    /// [`delivery_rate`](Builder::delivery_rate), or a big topic where each
    /// client message publishes) grew memory with nothing to show it. At
    /// least 1. Default
    /// [`DEFAULT_HUB_QUEUE`](crate::DEFAULT_HUB_QUEUE) (65,536 messages).
    pub fn hub_queue(mut self, messages: usize) -> Builder {
        MessageSettings::update(&mut self.config, |s| s.hub_queue = messages.max(1));
        self
    }

    /// Message connections: how many bytes of [`Hub`] messages may wait for
    /// each worker to deliver them, counting each message's payload (and
    /// topic) and its 56-byte entry, as [`hub_queue`](Builder::hub_queue)
    /// counts messages. A message that would take the queue past it is
    /// dropped for that worker as one over `hub_queue` is (counted in
    /// `megaconn_limit_hits_total{limit="hub_queue"}`, logged,
    /// [`HubError::QueueFull`](crate::HubError::QueueFull)); a message
    /// larger than the bound still goes into an empty queue, alone. A
    /// publish or broadcast counts its payload in each worker's queue,
    /// though they share one copy: the bound is on what one worker can be
    /// made to hold. Without it a full queue of 65,536 messages of 8 KiB
    /// held 512 MiB per worker. Ask for the [`Hub`] after setting it.
    /// Default [`DEFAULT_HUB_QUEUE_BYTES`](crate::DEFAULT_HUB_QUEUE_BYTES)
    /// (32 MiB).
    pub fn hub_queue_bytes(mut self, bytes: usize) -> Builder {
        MessageSettings::update(&mut self.config, |s| s.hub_queue_bytes = bytes);
        self
    }

    /// Message connections (framed, WebSocket): the most topics one
    /// connection may be subscribed to at once. A subscription to a new
    /// topic past it is refused:
    /// [`Session::subscribe`](crate::Session::subscribe) returns
    /// [`SubscribeError::TooMany`](crate::SubscribeError::TooMany), counted
    /// in `megaconn_limit_hits_total{limit="max_subscriptions"}` and logged
    /// (at most once per 5 s per worker); the connection stays open with
    /// the topics it has. Each subscription holds about 250 bytes of its
    /// worker's memory for as long as the connection is open, parked or
    /// not: without a bound a peer that sent 80,000 `SUB`s held 20 MB.
    /// Zero refuses every subscription. Default
    /// [`DEFAULT_MAX_SUBSCRIPTIONS`](crate::DEFAULT_MAX_SUBSCRIPTIONS)
    /// (128; 1,024 before).
    pub fn max_subscriptions(mut self, topics: usize) -> Builder {
        MessageSettings::update(&mut self.config, |s| s.max_subscriptions = topics);
        self
    }

    /// Message connections (framed, WebSocket): the longest topic name, in
    /// bytes, a connection may subscribe to. A longer one is refused:
    /// [`Session::subscribe`](crate::Session::subscribe) returns
    /// [`SubscribeError::TopicTooLong`](crate::SubscribeError::TopicTooLong),
    /// counted in `megaconn_limit_hits_total{limit="max_topic_bytes"}` and
    /// logged (at most once per 5 s per worker); the connection stays open.
    /// A subscription keeps its topic's name while the connection is open,
    /// parked or not (a name several connections hold is kept once), so
    /// with [`max_subscriptions`](Builder::max_subscriptions) this bounds
    /// what one connection's topics hold: without it a peer's 1,024 names
    /// of its longest message were kept. Publishing to a longer topic is
    /// not refused (it has no subscribers). Default
    /// [`DEFAULT_MAX_TOPIC_BYTES`](crate::DEFAULT_MAX_TOPIC_BYTES) (255).
    pub fn max_topic_bytes(mut self, bytes: usize) -> Builder {
        MessageSettings::update(&mut self.config, |s| s.max_topic_bytes = bytes);
        self
    }

    /// Message connections (framed, WebSocket, SSE): the topics `/metrics`
    /// counts one by one: `megaconn_topic_subscribers{topic}`, the
    /// subscriptions to each held on this server's connections now (exact),
    /// and `megaconn_topic_publishes_total{topic}`, the publishes to it the
    /// hub took ([`Hub::publish`] and its forms, each once whatever its
    /// subscribers), each topic named a series and every other topic summed
    /// in `topic="other"`. Named, not every topic, so that the series stay
    /// as few as the operator chose whatever the fleet: a gateway whose
    /// million devices each subscribe to a topic of their own names its few
    /// fleet-wide topics (`fleet`, `firmware`) and sees the devices' as
    /// `other` (a series per device would be a million a scrape). At most
    /// [`MAX_TOPIC_METRICS`](crate::MAX_TOPIC_METRICS) names, and not
    /// `other`, else [`listen`](Builder::listen) returns
    /// [`Error::Config`]; a repeat counts once, and a later call replaces
    /// the list. Costs a subscribe, a leave and a publish one lookup of the
    /// name among those named (and, for a named topic, an atomic add shared
    /// by the workers); nothing when unset. Default: none (an empty list
    /// turns it off).
    pub fn topic_metrics<S: AsRef<str>>(mut self, topics: impl IntoIterator<Item = S>) -> Builder {
        let metrics = TopicMetrics::new(topics);
        let metrics = (!metrics.is_empty()).then(|| Arc::new(metrics));
        MessageSettings::update(&mut self.config, |s| s.topic_metrics = metrics);
        self
    }

    /// HTTP/1.1 responses, and framed and WebSocket connections without a
    /// heartbeat timeout ([`Builder::heartbeat_timeout`],
    /// [`WebSocketRoute::heartbeat_timeout`](crate::WebSocketRoute::heartbeat_timeout);
    /// a `megaconn::axum_ws` socket has none):
    /// how long a write may wait with the peer taking none of our bytes;
    /// past it the connection closes with
    /// [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout)
    /// (counted in `megaconn_timeouts_total` and by close reason, logged at
    /// most once per 5 s per worker and protocol; an `axum_ws` socket's
    /// send fails with the timeout as its error). Without it a peer that
    /// sends requests and never reads the replies (an HTTP/1.1 client that
    /// asks for a large response and never reads it) holds its task, its
    /// buffers and the kernel's send buffer for good, and holds a graceful
    /// shutdown until `shutdown_timeout`. (nginx's `send_timeout`, 60 s by
    /// default, is the same bound.)
    ///
    /// A slow reader of a large backlog is not cut off: the bound starts
    /// again whenever a write of ours makes progress, and, when it passes,
    /// if the kernel says the peer acknowledged bytes since it started
    /// (`TCP_INFO`, one `getsockopt` per bound that passes). A peer that
    /// stops taking bytes is closed one to two bounds after its last.
    ///
    /// With a heartbeat timeout (HTTP/1.1 has none), that bounds the stall
    /// instead; [`write_timeout`](Builder::write_timeout), when set, bounds
    /// each whole write instead of either (an HTTP/1.1 response's from its
    /// head).
    ///
    /// A parked message connection has no write of ours waiting: one whose
    /// socket droppable pushes find full ([`Hub::send_droppable`](crate::Hub::send_droppable))
    /// is closed as a slow consumer by the first of them dropped once it
    /// has taken none of our bytes for this long (`write_timeout` when
    /// set), heartbeat timeout or not: a peer that keeps sending its
    /// heartbeats and stops reading is caught too.
    ///
    /// A peer gone without a FIN (a device or phone off the network) takes
    /// a parked connection's push into no write of ours that waits (the
    /// kernel's send buffer takes it whole), so the kernel is given a bound
    /// too, the socket's `TCP_USER_TIMEOUT` (Linux): twice the bound that
    /// applies to the connection's writes and a second, i.e. 2 × this + 1 s
    /// (121 s by default), or 2 × [`write_timeout`](Builder::write_timeout) +
    /// 1 s when that is set (it bounds the writes instead). Twice, so that
    /// where a write of ours waits the server's bound, which closes one to
    /// two bounds after the peer's last acknowledgement, ends it first with
    /// its own reason (`WriteTimeout`, `SlowConsumer`, a WebSocket's 1013).
    /// Bytes unacknowledged that long (or a receive window kept shut that
    /// long, Linux 5.11 on) error the socket and the connection closes as
    /// [`CloseReason::Io`](crate::CloseReason::Io)`(TimedOut)`, not after
    /// the kernel's ~16 minutes of retransmission. So on SSE streams,
    /// framed connections without a heartbeat timeout, WebSocket routes
    /// with theirs off and `megaconn::axum_ws` sockets (a heartbeat timeout
    /// closes a silent peer itself). It needs bytes in flight: a connection
    /// nothing is sent to stays until its heartbeat, or its peer, closes it.
    /// With this and `write_timeout` both off the kernel still gets 121 s
    /// (the default's): a peer that takes none of our bytes for two minutes
    /// is gone, not slow; give a longer `write_timeout` to wait longer.
    ///
    /// An HTTP/2 response (with `write_timeout` off) is bounded by it too,
    /// per stream: a wait for room in the client's flow-control windows
    /// that h2 grants none of for this long resets the stream
    /// (`RST_STREAM(CANCEL)`, counted in `megaconn_timeouts_total`, logged
    /// at most once per 5 s per worker); each grant starts the bound again.
    /// Without it a client that keeps its windows shut holds each stream,
    /// its handler and its response for good, and its connection, which is
    /// not idle while a stream is open. `None` or zero: unbounded. Default
    /// [`DEFAULT_WRITE_STALL_TIMEOUT`](crate::DEFAULT_WRITE_STALL_TIMEOUT)
    /// (60 s).
    pub fn write_stall_timeout(mut self, t: Option<Duration>) -> Builder {
        let t = crate::conn::config::zero_is_off(t);
        MessageSettings::update(&mut self.config, |s| s.write_stall_timeout = t);
        self
    }
}

impl Server {
    /// The server's [`Hub`]: pushes messages to message connections by
    /// [`ConnectionId`](crate::ConnectionId), to a topic's subscribers, or to
    /// all, from any task or thread. Ask before serving (a handler that
    /// pushes is usually given a clone); every call returns the same hub.
    /// It takes messages while the server runs, from
    /// [`Started::run`](crate::Started::run) (which [`serve`](Server::serve)
    /// calls) until its workers stop: before and after, its calls return
    /// [`HubError::NotServing`](crate::HubError::NotServing) and
    /// [`HubError::Stopped`](crate::HubError::Stopped) (also once this
    /// server is dropped without serving).
    pub fn hub(&mut self) -> Hub {
        let workers = self.handle().worker_stats().to_vec();
        // A message larger than every connection may be sent is refused at
        // the call (`HubError::TooLarge`), when the server knows that bound.
        let largest = crate::proto::framed::largest_outbound(&self.config);
        let config = Arc::make_mut(&mut self.config);
        MessageSettings::update(config, |s| {
            let (limit, limit_bytes) = (s.hub_queue, s.hub_queue_bytes);
            let topic_metrics = s.topic_metrics.clone();
            s.hub.get_or_insert_with(|| {
                let channels = HubChannels::new(&workers, limit, limit_bytes);
                Arc::new(
                    channels
                        .refusing_over(largest)
                        .counting_topics(topic_metrics),
                )
            });
        });
        MessageSettings::of(&self.config)
            .and_then(|s| s.hub.as_ref())
            .expect("just set")
            .hub()
    }
}

/// Why `config`'s [`Builder::topic_metrics`] cannot be exported, as
/// [`Builder::validate`] reports it: too many names, or one named `other`.
pub(crate) fn check_topic_metrics(config: &Config) -> Result<(), Error> {
    let refusal = MessageSettings::of(config)
        .and_then(|s| s.topic_metrics.as_ref())
        .and_then(|m| m.refusal());
    refusal.map_or(Ok(()), |why| Err(Error::Config(why)))
}

/// Gives the server being bound (`config`) per-topic counts of its own
/// ([`Builder::topic_metrics`]), counted from zero, not the builder's
/// (which another server built from a clone of it shares); returns them
/// for its handle's [`stats`](crate::ServerHandle::stats).
pub(crate) fn own_topic_metrics(config: &mut Config) -> Option<Arc<TopicMetrics>> {
    let own = Arc::new(MessageSettings::of(config)?.topic_metrics.as_ref()?.fresh());
    MessageSettings::update(config, |s| s.topic_metrics = Some(own.clone()));
    Some(own)
}
