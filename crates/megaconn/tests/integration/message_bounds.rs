//! What one peer or one publisher can make a worker hold for the message
//! connections, over real sockets: the topics a connection subscribes to
//! (`Builder::max_subscriptions`) and their names
//! (`Builder::max_topic_bytes`), and the bytes of hub messages waiting
//! for a worker (`Builder::hub_queue_bytes`). Each bound refuses, counts
//! (`megaconn_limit_hits_total`) and leaves the connection serving. Every
//! wait is bounded and waits on a byte or a counter.

use crate::common::SAFETY;

use bytes::Bytes;
use megaconn::{
    Builder, FramedHandler, Framing, Hub, HubError, Server, ServerHandle, ServerStats, Session,
    ShutdownSummary, SubscribeError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Lines: `sub T` answers `ok`, or `refused: <why>`; `unsub T` answers
/// `ok`; anything else is echoed.
struct Subscriber;

impl FramedHandler for Subscriber {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, session: &Session) -> Option<Bytes> {
        let line = std::str::from_utf8(&frame).expect("UTF-8 lines");
        let answer = match line.split_once(' ') {
            Some(("sub", topic)) => match session.subscribe(topic) {
                Ok(()) => "ok".to_string(),
                Err(e @ SubscribeError::TooMany { .. }) => format!("refused: {e}"),
                Err(e @ SubscribeError::TopicTooLong { .. }) => format!("too long: {e}"),
                Err(e) => format!("other: {e}"),
            },
            Some(("unsub", topic)) => {
                session.unsubscribe(topic);
                "ok".to_string()
            }
            _ => return Some(frame),
        };
        Some(answer.into())
    }
}

/// A one-worker line server running [`Subscriber`], stopped on drop.
struct Lines {
    addr: std::net::SocketAddr,
    handle: ServerHandle,
    hub: Hub,
    task: Option<tokio::task::JoinHandle<ShutdownSummary>>,
}

impl Lines {
    async fn start(builder: Builder) -> Lines {
        let mut server = builder
            .workers(1)
            .park_idle_after(None)
            .listen_framed_on("127.0.0.1:0".parse().unwrap(), Framing::lines())
            .listen()
            .expect("server binds");
        let (addr, handle, hub) = (server.local_addr(), server.handle(), server.hub());
        // Run here, not in the task: the hub takes messages once the
        // server runs, which the tests' first publishes must not race.
        let running = server.start_framed(Subscriber).expect("starts").run();
        Lines {
            addr,
            handle,
            hub,
            task: Some(tokio::spawn(running)),
        }
    }

    /// A server whose pump is held: its delivery rate is so low that
    /// after the first slice of a broadcast (its one connection, returned)
    /// it waits over a quarter of an hour, so what the hub takes next stays
    /// queued.
    async fn held(builder: Builder) -> (Lines, TcpStream) {
        let server = Lines::start(builder.delivery_rate(Some(0.001))).await;
        let mut s = server.connect().await;
        assert_eq!(ask(&mut s, "hello").await, "hello");
        assert_eq!(server.hub.broadcast("first"), Ok(()));
        assert_eq!(read_line(&mut s).await, "first");
        (server, s)
    }

    async fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        s
    }

    fn limit_hits(&self, label: &str) -> u64 {
        let stats = self.handle.stats();
        let hit = stats.limit_hits.iter().find(|(l, _)| *l == label);
        hit.expect("a limit of that label").1
    }

    async fn stop(mut self) -> ShutdownSummary {
        let task = self.task.take().expect("running");
        crate::common::shut_down(&self.handle, task).await
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Sends `line` and reads one line back (bounded).
async fn ask(s: &mut TcpStream, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    read_line(s).await
}

/// Reads one line (bounded), without its `\n`.
async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tokio::time::timeout(SAFETY, s.read_exact(&mut byte))
        .await
        .expect("timed out reading a line")
        .is_ok()
    {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// A connection holds at most `max_subscriptions` topics: the next new one
/// is refused with `SubscribeError::TooMany`, counted and shown in the
/// metrics; the connection keeps its topics and serves on, a topic it
/// holds can be subscribed again, and one it leaves makes room. (Before,
/// there was no bound: a peer could subscribe to any number of topics,
/// each ~250 bytes held for the life of the connection, and each subscribe
/// scanned the connection's list: 80,000 cost 18 s of worker CPU.)
#[tokio::test]
async fn a_subscription_past_the_bound_is_refused_counted_and_the_connection_serves_on() {
    let server = Lines::start(Server::builder().max_subscriptions(3)).await;
    let mut s = server.connect().await;
    for topic in ["a", "b", "c"] {
        assert_eq!(ask(&mut s, &format!("sub {topic}")).await, "ok");
    }
    let refused = ask(&mut s, "sub d").await;
    assert!(
        refused.starts_with("refused: ") && refused.contains("3 subscriptions"),
        "{refused}"
    );
    assert_eq!(server.limit_hits("max_subscriptions"), 1);
    assert!(server
        .handle
        .render_metrics()
        .contains("megaconn_limit_hits_total{limit=\"max_subscriptions\"} 1"));
    // Still open, still subscribed to its three, and not to the fourth.
    assert_eq!(ask(&mut s, "still there?").await, "still there?");
    assert_eq!(server.hub.publish("d", "not for you"), Ok(()));
    assert_eq!(server.hub.publish("c", "for you"), Ok(()));
    assert_eq!(read_line(&mut s).await, "for you");
    // A topic it holds is no new subscription; one it leaves makes room.
    assert_eq!(ask(&mut s, "sub a").await, "ok");
    assert_eq!(ask(&mut s, "unsub b").await, "ok");
    assert_eq!(ask(&mut s, "sub d").await, "ok");
    assert_eq!(server.limit_hits("max_subscriptions"), 1);
    assert_eq!(server.hub.publish("b", "left"), Ok(()));
    assert_eq!(server.hub.publish("d", "joined"), Ok(()));
    assert_eq!(read_line(&mut s).await, "joined");
    // The bound is per connection: another one has its own three.
    let mut other = server.connect().await;
    for topic in ["x", "y", "z"] {
        assert_eq!(ask(&mut other, &format!("sub {topic}")).await, "ok");
    }
    server.stop().await;
}

/// A topic's name is at most `max_topic_bytes` (255 by default): a longer
/// one is refused with `SubscribeError::TopicTooLong`, counted and shown in
/// the metrics; the connection stays open with its topics, and one at the
/// bound is taken and delivered to. (Before, any name a peer's message
/// could carry was kept while the connection was open: 1,024 of them, each
/// as long as the listener's longest message, parked at no cost to it.)
#[tokio::test]
async fn a_topic_name_over_the_bound_is_refused_counted_and_the_connection_serves_on() {
    assert_eq!(megaconn::DEFAULT_MAX_TOPIC_BYTES, 255);
    let server = Lines::start(Server::builder()).await;
    let mut s = server.connect().await;
    let (at, over) = ("t".repeat(255), "t".repeat(256));
    assert_eq!(ask(&mut s, &format!("sub {at}")).await, "ok");
    let refused = ask(&mut s, &format!("sub {over}")).await;
    assert!(
        refused.starts_with("too long: ") && refused.contains("over 255 bytes"),
        "{refused}"
    );
    assert_eq!(server.limit_hits("max_topic_bytes"), 1);
    assert_eq!(server.limit_hits("max_subscriptions"), 0);
    assert!(server
        .handle
        .render_metrics()
        .contains("megaconn_limit_hits_total{limit=\"max_topic_bytes\"} 1"));
    assert_eq!(server.hub.publish(&over, "not for you"), Ok(()));
    assert_eq!(server.hub.publish(&at, "for you"), Ok(()));
    assert_eq!(read_line(&mut s).await, "for you");
    // A bound set lower holds for every connection.
    let low = Lines::start(Server::builder().max_topic_bytes(3)).await;
    let mut s = low.connect().await;
    assert_eq!(ask(&mut s, "sub abc").await, "ok");
    assert!(ask(&mut s, "sub abcd").await.contains("over 3 bytes"));
    low.stop().await;
    server.stop().await;
}

/// Large messages behind a slow delivery: each worker's hub queue is
/// bounded in bytes too (32 MiB by default, payload and entry), so of a
/// hundred 1 MiB broadcasts 31 wait and the rest are refused, counted as
/// `hub_queue` limit hits; the `hub_queued` gauge shows the 31, and after
/// the worker stops, nothing. (Before, only the count of messages was
/// bounded, 65,536: all hundred were queued, and 8 KiB messages could hold
/// 512 MiB per worker.) The pump is held ([`Lines::held`]).
#[tokio::test]
async fn large_hub_messages_over_the_byte_bound_are_refused_and_counted() {
    let (server, _s) = Lines::held(Server::builder()).await;
    // One payload, shared by every message: the test holds 1 MiB, the
    // queue counts each message's.
    let payload = Bytes::from(vec![b'x'; 1 << 20]);
    let taken = (0..100)
        .filter(|_| server.hub.broadcast(payload.clone()).is_ok())
        .count();
    let fit = megaconn::DEFAULT_HUB_QUEUE_BYTES / ((1 << 20) + 56);
    assert_eq!((taken, fit), (31, 31));
    let stats: ServerStats = server.handle.stats();
    assert_eq!(stats.messages.hub_queued, 31, "{stats:?}");
    assert_eq!(server.limit_hits("hub_queue"), 69);
    assert_eq!(
        server.hub.publish("t", payload.clone()),
        Err(HubError::QueueFull)
    );
    // Small messages still fit in what is left.
    assert_eq!(server.hub.publish("t", "small"), Ok(()));
    let handle = server.handle.clone();
    server.stop().await;
    assert_eq!(handle.stats().messages.hub_queued, 0);
}

/// With a byte bound below one message, a message still goes into an
/// empty queue, alone (else such a bound refused every large message).
#[tokio::test]
async fn a_message_larger_than_the_byte_bound_goes_alone() {
    let (server, _s) = Lines::held(Server::builder().hub_queue_bytes(1000)).await;
    let big = Bytes::from(vec![b'y'; 4096]);
    assert_eq!(server.hub.broadcast(big.clone()), Ok(()));
    assert_eq!(server.hub.broadcast("small"), Err(HubError::QueueFull));
    assert_eq!(server.hub.broadcast(big), Err(HubError::QueueFull));
    assert_eq!(server.limit_hits("hub_queue"), 2);
    assert_eq!(server.handle.stats().messages.hub_queued, 1);
    server.stop().await;
}

/// While a slow delivery holds messages in the worker's queue, the metrics
/// (the body of `/metrics`) show how full the queue is, in messages and in
/// bytes: each message's payload, its topic for a publish, and its 56-byte
/// entry, what `Builder::hub_queue_bytes` bounds. Both gauges are back to
/// 0 once the worker stops. (Before, only the count was shown: a queue
/// near its byte bound, which refuses messages while the count looks
/// low, could not be seen.) The pump is held ([`Lines::held`]).
#[tokio::test]
async fn the_bytes_a_slow_delivery_holds_queued_are_a_gauge() {
    let (server, _s) = Lines::held(Server::builder()).await;
    let payload = Bytes::from(vec![b'x'; 1000]);
    for _ in 0..3 {
        assert_eq!(server.hub.broadcast(payload.clone()), Ok(()));
    }
    assert_eq!(server.hub.publish("topic", payload.clone()), Ok(()));
    let bytes = 3 * (56 + 1000) + (56 + "topic".len() + 1000);
    let metrics = server.handle.render_metrics();
    for line in [
        "megaconn_message_hub_queued 4\n".to_string(),
        format!("megaconn_message_hub_queued_bytes {bytes}\n"),
    ] {
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    assert_eq!(
        server.handle.stats().messages.hub_queued_bytes,
        bytes as u64
    );
    let handle = server.handle.clone();
    server.stop().await;
    let stats = handle.stats().messages;
    assert_eq!((stats.hub_queued, stats.hub_queued_bytes), (0, 0));
    assert!(handle
        .render_metrics()
        .contains("megaconn_message_hub_queued_bytes 0\n"));
}

/// By default a connection holds at most 128 topics
/// (`DEFAULT_MAX_SUBSCRIPTIONS`): the 129th is refused, counted, and the
/// connection serves on. At 1,024, the default before, 1,000 peers that
/// subscribed to that many 250-byte names held 353 MB of a release server,
/// for as long as they stayed connected: a framed connection has no
/// heartbeat timeout by default.
#[tokio::test]
async fn by_default_a_connection_holds_at_most_128_topics() {
    assert_eq!(megaconn::DEFAULT_MAX_SUBSCRIPTIONS, 128);
    let server = Lines::start(Server::builder()).await;
    let mut s = server.connect().await;
    for topic in 0..128 {
        assert_eq!(ask(&mut s, &format!("sub {topic}")).await, "ok");
    }
    let refused = ask(&mut s, "sub 128").await;
    assert!(
        refused.starts_with("refused: ") && refused.contains("128 subscriptions"),
        "{refused}"
    );
    assert_eq!(server.limit_hits("max_subscriptions"), 1);
    assert_eq!(ask(&mut s, "still there?").await, "still there?");
    server.stop().await;
}

/// A framed connection's socket gets `Builder::message_send_buffer_size`
/// (256 KiB by default, which the kernel doubles) at accept, as a native
/// WebSocket's at its upgrade: what the kernel holds for a peer that stops
/// reading is bounded, and a push past it closes the peer as a slow
/// consumer (before, the socket autotuned up to `tcp_wmem`'s 4 MiB first).
#[tokio::test]
async fn a_framed_connection_gets_the_message_send_buffer_at_accept() {
    use crate::common::{kernel_send_buffer, server_send_buffer};
    for (builder, set) in [
        (Server::builder(), megaconn::DEFAULT_MESSAGE_SEND_BUFFER),
        (
            Server::builder().message_send_buffer_size(Some(64 << 10)),
            64 << 10,
        ),
    ] {
        let server = Lines::start(builder).await;
        let mut s = server.connect().await;
        assert_eq!(ask(&mut s, "hello").await, "hello");
        assert_eq!(server_send_buffer(&s), kernel_send_buffer(set));
        server.stop().await;
    }
}
