//! Publishing across the worker processes of `serve --processes N`.
//!
//! Each worker process has its own [`megaconn::Hub`], which reaches only the
//! connections of that process. To reach every connection of the server, the
//! supervisor keeps one channel per worker process: a connected Unix datagram
//! socket pair, made before the worker starts (the worker's end is inherited,
//! its descriptor named in [`FD_ENV`]). A datagram keeps message boundaries,
//! so one publish is one datagram ([`encode`]), at most [`MAX_MESSAGE`] bytes.
//!
//! - A publish in a worker process ([`Publisher`]: the demo's `PUB`, the
//!   WebSocket chat) is delivered to its own connections at once and sent up
//!   to the supervisor, which forwards it to every other worker process.
//! - The supervisor's admin route `POST /publish` sends it to all of them.
//! - A worker process delivers what comes down through its hub.
//!
//! The supervisor never waits on a worker: each worker process's channel has
//! a bounded queue ([`QUEUE`] messages) drained by its own task; a message
//! that finds it full is dropped for that process, counted
//! (`megaconn_publish_dropped_total`) and logged. A worker process that dies
//! loses its channel with it; its replacement gets a new one. The same bound
//! applies to a worker's channel up to the supervisor (its drops are counted
//! in `megaconn_publish_uplink_dropped_total`). A message that cannot be
//! read is dropped and counted on either side
//! (`megaconn_publish_rejected_total` for the supervisor's,
//! `megaconn_publish_downlink_rejected_total` for the worker processes'),
//! and logged at the first, second, fourth... of each ([`note`]).
//!
//! All of this stays in the command-line tool: the library's hub is per
//! process by design, and the supervisor that owns the processes lives here.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use megaconn::Hub;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Environment variable naming a worker process's end of its channel.
pub const FD_ENV: &str = "MEGACONN_PUBLISH_FD";

/// Largest message on a channel, header included: two bytes, the topic, the
/// payload. Well under a Unix socket's default send buffer (208 KiB), so one
/// always fits in one datagram.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Longest topic name that can cross processes (its length is one byte).
pub const MAX_TOPIC: usize = u8::MAX as usize;

/// A channel message's header: its kind, and its topic name's length.
const HEADER: usize = 2;

/// The largest payload a publish to `topic` may carry between processes:
/// [`MAX_MESSAGE`] less the header and the topic's name.
pub const fn max_payload(topic: &str) -> usize {
    MAX_MESSAGE - HEADER - topic.len()
}

/// Messages that may wait for one channel's socket before new ones are
/// dropped for it.
pub const QUEUE: usize = 1024;

/// Header byte: to a topic's subscribers.
const KIND_TOPIC: u8 = b'T';
/// Header byte: to every message connection (a broadcast).
const KIND_ALL: u8 = b'A';
/// Set in the header byte (`t`, `a`): binary to WebSockets, whatever the
/// bytes ([`SendAs::Binary`]).
const BINARY: u8 = 0x20;

/// How a publish goes to WebSockets (framed connections get the bytes
/// either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendAs {
    /// Text when the bytes are UTF-8, else binary ([`megaconn::Hub::publish`]).
    Auto,
    /// Binary whatever the bytes ([`megaconn::Hub::publish_binary`]): a
    /// binary WebSocket message relayed stays binary.
    Binary,
}

/// Where a publish goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// Every message connection: a broadcast (`PUB *`).
    All,
    /// The subscribers of this topic.
    Named(&'a str),
}

impl<'a> Topic<'a> {
    /// `*` is everyone, any other name a topic.
    pub fn parse(name: &'a str) -> Topic<'a> {
        if name == "*" {
            Topic::All
        } else {
            Topic::Named(name)
        }
    }
}

/// Why a publish cannot cross processes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Topic and payload do not fit one channel message.
    #[error("a publish of {bytes} bytes (topic and payload) is over the {max}-byte limit between worker processes: send less")]
    TooLarge {
        /// Topic and payload bytes, with the header.
        bytes: usize,
        /// [`MAX_MESSAGE`].
        max: usize,
    },
    /// The topic name is too long for the channel's header.
    #[error("topic name of {0} bytes is over the {MAX_TOPIC}-byte limit between worker processes: use a shorter name")]
    TopicTooLong(usize),
    /// No worker of this process took the message, for the hub's reason:
    /// its server is not serving yet or has stopped, or each worker's hub
    /// queue was full (the hub counted the drop in
    /// `megaconn_limit_hits_total{limit="hub_queue"}` and logged it). With
    /// `--processes`, it still went to the other worker processes.
    #[error("not delivered by this process: {}", hub_reason(.0))]
    NotQueued(megaconn::HubError),
    /// The supervisor could hand the message to no worker process: each
    /// one's channel was full (counted and logged as a slow process) or
    /// it is exiting.
    #[error("delivered to no worker process: their channels are full (messages come faster than the processes take them: publish less), or they are exiting")]
    NoProcess,
}

/// The hub's reason in the command line's words (its flags, not the
/// library's builder methods).
fn hub_reason(e: &megaconn::HubError) -> String {
    match e {
        megaconn::HubError::QueueFull => "its workers' hub queues are full (messages come faster than they are delivered: raise --hub-queue or --delivery-rate, or publish less)".into(),
        other => other.to_string(),
    }
}

/// A channel message that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed publish message on the worker process channel")]
pub struct Malformed;

/// One publish as a channel message.
pub fn encode(topic: Topic<'_>, payload: &[u8]) -> Result<Bytes, PublishError> {
    encode_as(topic, payload, SendAs::Auto)
}

/// [`encode`], sent to WebSockets as `body` says.
pub fn encode_as(topic: Topic<'_>, payload: &[u8], body: SendAs) -> Result<Bytes, PublishError> {
    let name = match topic {
        Topic::All => "",
        Topic::Named(name) => name,
    };
    if name.len() > MAX_TOPIC {
        return Err(PublishError::TopicTooLong(name.len()));
    }
    let bytes = HEADER + name.len() + payload.len();
    if bytes > MAX_MESSAGE {
        return Err(PublishError::TooLarge {
            bytes,
            max: MAX_MESSAGE,
        });
    }
    let mut out = BytesMut::with_capacity(bytes);
    let kind = if topic == Topic::All {
        KIND_ALL
    } else {
        KIND_TOPIC
    };
    out.put_u8(match body {
        SendAs::Auto => kind,
        SendAs::Binary => kind | BINARY,
    });
    out.put_u8(name.len() as u8);
    out.put_slice(name.as_bytes());
    out.put_slice(payload);
    Ok(out.freeze())
}

/// A channel message read back: where it goes and its payload (a slice of
/// `message`, not a copy).
pub fn decode(message: &Bytes) -> Result<(Topic<'_>, Bytes), Malformed> {
    decode_as(message).map(|(topic, payload, _)| (topic, payload))
}

/// [`decode`], with how the publish goes to WebSockets.
pub fn decode_as(message: &Bytes) -> Result<(Topic<'_>, Bytes, SendAs), Malformed> {
    let [kind, len, rest @ ..] = &message[..] else {
        return Err(Malformed);
    };
    let len = *len as usize;
    if rest.len() < len || message.len() > MAX_MESSAGE {
        return Err(Malformed);
    }
    let (kind, body) = match *kind {
        k if k & BINARY != 0 => (k & !BINARY, SendAs::Binary),
        k => (k, SendAs::Auto),
    };
    let topic = match kind {
        KIND_ALL if len == 0 => Topic::All,
        KIND_TOPIC if len > 0 => {
            Topic::Named(std::str::from_utf8(&rest[..len]).map_err(|_| Malformed)?)
        }
        _ => return Err(Malformed),
    };
    Ok((topic, message.slice(2 + len..), body))
}

/// Delivers a publish to the connections of this process: why not when
/// no worker took it (their hub queues were full, which the hub counted
/// and logged, or the server is not serving).
fn deliver(hub: &Hub, topic: Topic<'_>, payload: Bytes, body: SendAs) -> Result<(), PublishError> {
    match (topic, body) {
        (Topic::All, SendAs::Auto) => hub.broadcast(payload),
        (Topic::All, SendAs::Binary) => hub.broadcast_binary(payload),
        (Topic::Named(name), SendAs::Auto) => hub.publish(name, payload),
        (Topic::Named(name), SendAs::Binary) => hub.publish_binary(name, payload),
    }
    .map_err(PublishError::NotQueued)
}

/// A channel socket and its bounded outbound queue: the task that drains the
/// queue into the socket, so whoever queues never waits on the peer.
fn queued_sender(socket: Arc<UnixDatagram>, peer: &'static str) -> mpsc::Sender<Bytes> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if let Err(e) = socket.send(&message).await {
                // The peer is gone (a worker process died; the supervisor
                // replaces its channel) or the socket failed.
                tracing::debug!(peer, error = %e, "publish channel closed");
                break;
            }
        }
    });
    tx
}

/// Counts an event in `counter` and logs it with `log` (given the count so
/// far): the first, then every power of two (a flood of drops or of bad
/// messages must not become a flood of log lines).
fn note(counter: &AtomicU64, log: impl FnOnce(u64)) {
    let n = counter.fetch_add(1, Relaxed) + 1;
    if n.is_power_of_two() {
        log(n);
    }
}

/// Counts a message dropped at a full channel queue, and logs it ([`note`]).
fn note_drop(counter: &AtomicU64, what: &'static str) {
    note(counter, |n| {
        tracing::warn!(
            dropped_total = n,
            "{what}: publish channel queue full ({QUEUE} messages), message dropped (logged at the 1st, 2nd, 4th... drop)"
        )
    });
}

/// Counts a channel message of `bytes` bytes from `from` that could not be
/// read (dropped), and logs it ([`note`]): a bug, or another program
/// writing to the channel, must not flood the log.
fn note_malformed(counter: &AtomicU64, from: &'static str, bytes: usize) {
    note(counter, |n| {
        tracing::warn!(
            bytes,
            rejected_total = n,
            "a malformed publish message from {from} on its channel; dropped (logged at the 1st, 2nd, 4th... one)"
        )
    });
}

/// The supervisor's side: one channel per worker process.
#[derive(Debug, Default)]
pub struct Fanout {
    links: Mutex<Vec<Option<Link>>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
}

#[derive(Debug)]
struct Link {
    tx: mpsc::Sender<Bytes>,
    reader: AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The supervisor's publish counters, for its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutCounts {
    /// Messages queued to a worker process's channel.
    pub forwarded: u64,
    /// Messages dropped for a worker process whose queue was full.
    pub dropped: u64,
    /// Malformed messages from a worker process (dropped).
    pub rejected: u64,
}

impl Fanout {
    /// A fan-out for `processes` worker processes, none attached yet.
    pub fn new(processes: usize) -> Arc<Fanout> {
        let links = Mutex::new((0..processes).map(|_| None).collect());
        Arc::new(Fanout {
            links,
            ..Fanout::default()
        })
    }

    /// A new channel for worker process `index` (replacing its old one): the
    /// end the worker process inherits is returned, close-on-exec set (the
    /// caller clears it in the child only). Needs the runtime.
    pub fn attach(self: &Arc<Self>, index: usize) -> io::Result<OwnedFd> {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()?;
        ours.set_nonblocking(true)?;
        let ours = Arc::new(UnixDatagram::from_std(ours)?);
        let tx = queued_sender(ours.clone(), "worker process");
        let this = Arc::downgrade(self);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; MAX_MESSAGE + 1];
            loop {
                let n = match ours.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(worker = index, error = %e, "publish channel closed");
                        return;
                    }
                };
                let Some(this) = this.upgrade() else { return };
                let message = Bytes::copy_from_slice(&buf[..n]);
                if decode(&message).is_err() {
                    note_malformed(&this.rejected, "a worker process", n);
                    continue;
                }
                this.send(Some(index), &message);
            }
        })
        .abort_handle();
        let mut links = self.links.lock().expect("not poisoned");
        links[index] = Some(Link { tx, reader });
        Ok(theirs.into())
    }

    /// Forgets worker process `index`'s channel (it exited).
    pub fn detach(&self, index: usize) {
        self.links.lock().expect("not poisoned")[index] = None;
    }

    /// Publishes to every worker process (the admin route). Returns how many
    /// worker processes it was queued for.
    pub fn publish(&self, topic: Topic<'_>, payload: &[u8]) -> Result<usize, PublishError> {
        Ok(self.send(None, &encode(topic, payload)?))
    }

    /// Queues `message` to every worker process but `except`; never waits.
    fn send(&self, except: Option<usize>, message: &Bytes) -> usize {
        let links = self.links.lock().expect("not poisoned");
        let mut queued = 0;
        for (i, link) in links.iter().enumerate() {
            let Some(link) = link.as_ref().filter(|_| Some(i) != except) else {
                continue;
            };
            match link.tx.try_send(message.clone()) {
                Ok(()) => {
                    queued += 1;
                    self.forwarded.fetch_add(1, Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    note_drop(&self.dropped, "a worker process is slow")
                }
                // Its writer stopped: the process is exiting.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// The counters so far.
    pub fn counts(&self) -> FanoutCounts {
        FanoutCounts {
            forwarded: self.forwarded.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }
}

/// A worker process's end of its publish channel to the supervisor, ready
/// for [`Publisher::worker`]. Opened apart, before the process binds its
/// listeners: what can fail is done before the kernel queues connections
/// for it.
#[derive(Debug)]
pub struct Channel(Arc<UnixDatagram>);

impl Channel {
    /// The inherited channel `fd`, non-blocking and registered with the
    /// current runtime.
    pub fn open(fd: OwnedFd) -> io::Result<Channel> {
        let socket = std::os::unix::net::UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        Ok(Channel(Arc::new(UnixDatagram::from_std(socket)?)))
    }
}

/// How the demo publishes: to this process's hub, and in a worker process of
/// a supervisor also up to the supervisor, which forwards to the others.
#[derive(Debug, Clone)]
pub struct Publisher {
    hub: Hub,
    uplink: Option<mpsc::Sender<Bytes>>,
    dropped: Arc<AtomicU64>,
    /// Messages from the supervisor that could not be read (dropped).
    rejected: Arc<AtomicU64>,
}

/// A worker process's counters of its publish channel, copied to the
/// supervisor's `/metrics` through the shared stats block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Publishes dropped on their way up to the supervisor (the channel's
    /// queue was full).
    pub uplink_dropped: u64,
    /// Malformed messages from the supervisor (dropped).
    pub rejected: u64,
}

impl Publisher {
    /// Publishes within this process only (a single-process server).
    pub fn local(hub: Hub) -> Publisher {
        Publisher {
            hub,
            uplink: None,
            dropped: Arc::default(),
            rejected: Arc::default(),
        }
    }

    /// A worker process's publisher over its publish `channel`: what
    /// comes down is delivered to this process's connections. Needs the
    /// runtime.
    pub fn worker(hub: Hub, channel: Channel) -> Publisher {
        let Channel(socket) = channel;
        let uplink = queued_sender(socket.clone(), "supervisor");
        let down = hub.clone();
        let rejected = Arc::<AtomicU64>::default();
        let malformed = rejected.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; MAX_MESSAGE + 1];
            // Ends when the supervisor is gone (this process follows it).
            while let Ok(n) = socket.recv(&mut buf).await {
                let message = Bytes::copy_from_slice(&buf[..n]);
                match decode_as(&message) {
                    // Not taken (full hub queues, or the server not
                    // serving): the hub counted and logged a full queue;
                    // nobody here is waiting for an answer.
                    Ok((topic, payload, body)) => {
                        let _ = deliver(&down, topic, payload, body);
                    }
                    Err(Malformed) => note_malformed(&malformed, "the supervisor", n),
                }
            }
        });
        Publisher {
            hub,
            uplink: Some(uplink),
            dropped: Arc::default(),
            rejected,
        }
    }

    /// Delivers `payload` to `topic`'s subscribers (or everyone) on every
    /// process: here at once, elsewhere through the supervisor. Never waits;
    /// a worker process's full channel drops the message for the other
    /// processes (counted, logged). [`PublishError::NotQueued`] when no
    /// worker of this process took it (it still went up to the supervisor).
    pub fn publish(&self, topic: Topic<'_>, payload: Bytes) -> Result<(), PublishError> {
        self.publish_as(topic, payload, SendAs::Auto)
    }

    /// [`Publisher::publish`], sent to WebSockets as `body` says.
    pub fn publish_as(
        &self,
        topic: Topic<'_>,
        payload: Bytes,
        body: SendAs,
    ) -> Result<(), PublishError> {
        let Some(uplink) = &self.uplink else {
            return deliver(&self.hub, topic, payload, body);
        };
        // Checked first, so a publish too large to cross processes reaches
        // no one rather than only this process's connections.
        let message = encode_as(topic, &payload, body)?;
        let here = deliver(&self.hub, topic, payload, body);
        match uplink.try_send(message) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                note_drop(&self.dropped, "the supervisor is slow")
            }
        }
        here
    }

    /// This process's channel counters: messages it could not send up to
    /// the supervisor (its queue was full), and malformed ones that came
    /// down.
    pub fn counts(&self) -> ChannelCounts {
        ChannelCounts {
            uplink_dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }
}

/// A worker process's channel end, from [`FD_ENV`]; `None` when the
/// supervisor gave none. Close-on-exec is set again.
pub fn inherited_fd() -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(FD_ENV).ok()?.parse().ok()?;
    // SAFETY: fcntl on a plain integer: fails harmlessly if it is not open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: the supervisor opened this descriptor for this process and
    // nothing else here owns it (read once, at start-up).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lets `raw` survive `exec` in a child (call between fork and exec only).
pub fn keep_across_exec(raw: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments;
    // async-signal-safe, so fine between fork and exec.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = encode(Topic::Named("news"), b"big day").unwrap();
        assert_eq!(
            decode(&m).unwrap(),
            (Topic::Named("news"), Bytes::from_static(b"big day"))
        );
        let m = encode(Topic::All, b"").unwrap();
        assert_eq!(decode(&m).unwrap(), (Topic::All, Bytes::new()));
        // Binary stays binary across processes.
        let m = encode_as(Topic::Named("chat"), b"hi", SendAs::Binary).unwrap();
        assert_eq!(
            decode_as(&m).unwrap(),
            (
                Topic::Named("chat"),
                Bytes::from_static(b"hi"),
                SendAs::Binary
            )
        );
        let m = encode(Topic::All, b"hi").unwrap();
        assert_eq!(decode_as(&m).unwrap().2, SendAs::Auto);
    }

    #[test]
    fn limits_are_errors() {
        let big = vec![0; MAX_MESSAGE];
        assert!(matches!(
            encode(Topic::All, &big),
            Err(PublishError::TooLarge { .. })
        ));
        assert!(encode(Topic::All, &big[..MAX_MESSAGE - 2]).is_ok());
        let long = "t".repeat(MAX_TOPIC + 1);
        assert_eq!(
            encode(Topic::Named(&long), b"x"),
            Err(PublishError::TopicTooLong(MAX_TOPIC + 1))
        );
    }

    /// Counts the warnings whose message mentions "malformed".
    struct MalformedLines(Arc<AtomicU64>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MalformedLines {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(bool);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        self.0 |= format!("{v:?}").contains("malformed");
                    }
                }
            }
            let mut message = Message(false);
            event.record(&mut message);
            if message.0 && *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Relaxed);
            }
        }
    }

    /// Waits (bounded) until `count` says `n`.
    async fn counted(what: &str, n: u64, count: impl Fn() -> u64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {}",
                count()
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(count(), n, "{what}");
    }

    /// 100 malformed channel messages each way, from a real socket pair:
    /// each side counts all of them (the worker processes' side counted
    /// none: now `megaconn_publish_downlink_rejected_total`), and logs the
    /// 1st, 2nd, 4th ... 64th, 7 lines, not 100 (each side logged every
    /// one).
    #[tokio::test]
    async fn malformed_channel_messages_are_counted_and_logged_sparingly() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let lines = Arc::new(AtomicU64::new(0));
        let subscriber = tracing_subscriber::registry().with(MalformedLines(lines.clone()));
        // (This test's runtime runs every task on this thread.)
        let _log = tracing::subscriber::set_default(subscriber);
        let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(1)
            .listen()
            .unwrap()
            .hub();
        // A worker process's side: the supervisor's end is `supervisor`.
        let (supervisor, worker) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let publisher = Publisher::worker(server, Channel::open(worker.into()).unwrap());
        for _ in 0..100 {
            supervisor.send(b"X\x00").unwrap();
        }
        counted("rejected from the supervisor", 100, || {
            publisher.counts().rejected
        })
        .await;
        assert_eq!(lines.load(Relaxed), 7);
        // The supervisor's side: worker process 0 sends them.
        let fanout = Fanout::new(1);
        let worker = std::os::unix::net::UnixDatagram::from(fanout.attach(0).unwrap());
        for _ in 0..100 {
            worker.send(b"T\x05ab").unwrap();
        }
        counted("rejected from a worker process", 100, || {
            fanout.counts().rejected
        })
        .await;
        assert_eq!(lines.load(Relaxed), 14);
        assert_eq!(fanout.counts().forwarded, 0);
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"T",
            b"T\x05ab",
            b"X\x00",
            b"A\x01a",
            b"T\x00x",
            b"T\x01\xff",
        ] {
            assert_eq!(
                decode(&Bytes::copy_from_slice(bad)),
                Err(Malformed),
                "{bad:?}"
            );
        }
    }
}
