//! The demo app `megaconn serve` runs: a plain `tower::Service` (no router, so
//! benchmarks of `GET /` measure the engine, not a framework).
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | `Hello, World!` (text/plain) |
//! | `POST /echo` | the request body, streamed back |
//! | `GET /healthz` | `ok` |
//! | `GET /readyz` | `ready`, or `503` once shutdown began |
//! | `GET /sleep?ms=N` | waits N ms (at most 10 s), then answers |
//! | `GET /ws` | WebSocket echo on the native engine ([`WsEcho`]; idle ones park); at most [`ECHO_MAX_MESSAGE`] bytes a message |
//! | `GET /ws/chat` | WebSocket chat ([`WsChat`]): a message from one goes to every client; at most [`CHAT_MAX_MESSAGE`] bytes each |
//!
//! And on `--tcp-listen` addresses, [`FramedDemo`]: `PING` is answered `PONG`,
//! `PID` with the serving process's id, `SUB topic` / `PUB topic text` /
//! `PUB * text` subscribe, publish and broadcast (to every worker process of
//! `--processes`, through fanout.rs), any other message `echo: <message>`.
//!
//! A publish costs the server O(subscribers) (a broadcast, O(connections)),
//! so each connection's publishes, `PUB` and `/ws/chat` messages alike, are
//! held to `--publish-rate` a second with a burst of `--publish-burst`
//! ([`megaconn::PublishRate`]), each counting as one per `--publish-fanout`
//! connections it reaches (its topic's subscribers; for `PUB *`, every
//! message connection, framed or WebSocket, HTTP ones not: a broadcast
//! reaches only those; with `--processes`, in every worker process,
//! `shared_audience.rs`); past it `PUB` is answered
//! `error: publish rate; slow down` (or, for a publish whose audience is
//! over `--publish-burst × --publish-fanout`, `error: publish reaches …`)
//! and a chat message is dropped, the connection open either way.
//!
//! `PUB *` (to every message connection) is open to any peer, as the demo's
//! other commands are, but charged as a publish to everyone it reaches: on
//! a server of a few thousand framed and WebSocket connections it works as a broadcast should in a demo you
//! try with `nc`; on one of more than 20,000 (the defaults) it is refused
//! outright, so no anonymous peer can make the server deliver to all of
//! its connections. Benchmarks of a broadcast pass `--publish-rate off`.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{Either as EitherBody, Full};
use megaconn::{
    Body, ConnectionId, PublishRate, ServerHandle, WebSocketHandler, WebSocketRoute, WsMessage,
    WsSession,
};

use crate::fanout::{PublishError, Publisher, SendAs, Topic};

/// Longest `/sleep` allowed.
const MAX_SLEEP: Duration = Duration::from_secs(10);

/// The topic every `/ws/chat` client joins.
const CHAT_TOPIC: &str = "chat";

/// The largest `/ws/chat` message (65,530 bytes); a larger one closes the
/// connection with 1009 (Message Too Big), as soon as its frame header
/// says so. A chat message is a line of text, and this is what one
/// publish carries between the worker processes of `--processes`: a
/// larger message was accepted and then dropped there, heard by no one
/// (logged "chat message not published"). The route's default, 1 MiB
/// (`megaconn::DEFAULT_WS_MAX_MESSAGE_BYTES`), is for a library route
/// that knows nothing of its messages: a public endpoint sets what its
/// messages need, since a connection in the middle of a message holds
/// all of it in memory until its last byte.
pub const CHAT_MAX_MESSAGE: usize = crate::fanout::max_payload(CHAT_TOPIC);

/// The largest `/ws` message (64 KiB, as the chat's, give or take the
/// chat's topic); a larger one closes the connection with 1009 from its
/// frame header. The echo holds a message whole until its last byte and
/// then its reply until the client reads it: with the route's default
/// (16 MiB then) a client that sent 16 MiB messages and read nothing held
/// 37 MB of the server per connection until its heartbeat timeout (75 s),
/// and 100 clients each 16 MiB into a message held 890 MB. At 64 KiB
/// those two held 108 KB and 17 KB a connection (closed with 1009 at the
/// first header over it), and 100 clients that sent 64 messages of
/// 65,000 bytes each and read nothing held 142 KB a connection (debug
/// build; the kernel's buffers besides, the send buffer's bounded by
/// `Builder::message_send_buffer_size`).
pub const ECHO_MAX_MESSAGE: usize = 64 << 10;

/// The knobs of the demo's WebSocket routes (`None`: the library's
/// default, `Some(None)`: off), and its publish rate (framed `PUB` and
/// `/ws/chat` alike).
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoWs {
    /// `--publish-rate` and `--publish-burst`: each connection's publishes.
    pub publish: PublishRate,
    /// `--ws-ping-interval`.
    pub ping_interval: Option<Option<Duration>>,
    /// `--message-timeout`.
    pub message_timeout: Option<Option<Duration>>,
}

/// The demo service: one `Arc` of what its routes share.
///
/// Why one: the server clones its service for every connection and for
/// every wake-up of a parked one (a heartbeat), as hyper and axum clone
/// theirs per connection: tower's `poll_ready` and `call` take `&mut self`,
/// so an instance shared between connections could lose a waker or merge
/// their per-instance state (a `RateLimit`'s, a `ConcurrencyLimit`'s
/// permit). Held field by field, a clone was twelve reference counts
/// (the `ServerHandle`'s `Arc`s and the two routes'), each a locked
/// increment and, when the wake-up's clone is dropped, a locked decrement,
/// and the service, kept in several places of the connection's future, made
/// it 1,000 bytes to copy at every wake-up; now it is one count, and 760
/// bytes (`bench/HEARTBEAT.md`, session 51).
#[derive(Debug, Clone)]
pub struct Demo {
    shared: Arc<DemoShared>,
}

/// What every clone of a [`Demo`] shares.
#[derive(Debug)]
struct DemoShared {
    handle: ServerHandle,
    ws: WebSocketRoute<WsEcho>,
    chat: WebSocketRoute<WsChat>,
}

/// A response body: a fixed text or the streamed request body.
pub type DemoBody = EitherBody<Full<Bytes>, Body>;
type BoxedFuture = Pin<Box<dyn Future<Output = Result<Response<DemoBody>, Infallible>>>>;

impl Demo {
    /// A demo app reporting readiness from `handle`; its chat publishes
    /// through `publisher`; its WebSocket routes take `knobs`.
    pub fn new(handle: ServerHandle, publisher: Publisher, knobs: DemoWs) -> Demo {
        let (mut ws, mut chat) = (
            WebSocketRoute::new(WsEcho).max_message_bytes(ECHO_MAX_MESSAGE),
            WebSocketRoute::new(WsChat {
                publisher,
                publish_rate: knobs.publish,
            })
            .max_message_bytes(CHAT_MAX_MESSAGE),
        );
        if let Some(every) = knobs.ping_interval {
            ws = ws.ping_interval(every);
            chat = chat.ping_interval(every);
        }
        if let Some(bound) = knobs.message_timeout {
            ws = ws.message_timeout(bound);
            chat = chat.message_timeout(bound);
        }
        Demo {
            shared: Arc::new(DemoShared { handle, ws, chat }),
        }
    }
}

impl tower::Service<Request<Body>> for Demo {
    type Response = Response<DemoBody>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<DemoBody>, Infallible>>, BoxedFuture>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let now = |r| Either::Left(ready(Ok(r)));
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/") => {
                now(text_in(&mut req, StatusCode::OK, "Hello, World!"))
            }
            (&Method::GET, "/healthz") => now(text_in(&mut req, StatusCode::OK, "ok")),
            (&Method::GET, "/readyz") if self.shared.handle.is_shutting_down() => now(text_in(
                &mut req,
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down",
            )),
            (&Method::GET, "/readyz") => now(text_in(&mut req, StatusCode::OK, "ready")),
            (&Method::POST, "/echo") => now(echo(req)),
            // The route answers a non-handshake itself (426/400, with why).
            (_, "/ws") => now(route(&self.shared.ws, req)),
            (_, "/ws/chat") => now(route(&self.shared.chat, req)),
            (&Method::GET, "/sleep") => {
                let ms = query_u64(req.uri().query(), "ms").unwrap_or(0);
                let wait = Duration::from_millis(ms).min(MAX_SLEEP);
                Either::Right(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    Ok(text(
                        StatusCode::OK,
                        format!("slept {} ms", wait.as_millis()),
                    ))
                }))
            }
            (_, "/" | "/healthz" | "/readyz" | "/echo" | "/sleep") => now(text_in(
                &mut req,
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )),
            _ => now(text_in(&mut req, StatusCode::NOT_FOUND, "not found")),
        }
    }
}

/// A WebSocket route's answer to a request, as a demo response.
fn route<H: WebSocketHandler>(ws: &WebSocketRoute<H>, req: Request<Body>) -> Response<DemoBody> {
    // Only an `on_upgrade` hook makes a route's answer wait: these have
    // none. Its `call` takes `&mut self`: a clone of the route (one count)
    // per handshake, not per request of every connection.
    let answered =
        futures_util::FutureExt::now_or_never(tower::Service::call(&mut ws.clone(), req));
    let Ok(response) = answered.expect("a WebSocketRoute without on_upgrade answers at once");
    response.map(|body| EitherBody::Left(Full::new(Bytes::from(body))))
}

/// The demo's `Content-Type` for text. A constant, so its bytes are checked
/// once, when it is compiled: `HeaderValue::from_static` outside a `const`
/// checks them on every call.
const TEXT_PLAIN: header::HeaderValue =
    header::HeaderValue::from_static("text/plain; charset=utf-8");

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<DemoBody> {
    let mut res = Response::new(EitherBody::Left(Full::new(body.into())));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, TEXT_PLAIN);
    res
}

/// [`text`], its headers held in `req`'s header map, emptied first (`req`
/// keeps the response's new, unallocated map).
///
/// Why: `GET /` is what benchmarks of the engine ask for. Built afresh, the
/// response's map took two allocations and the request's map, dropped with
/// the request, two frees: 371 and 274 user-space instructions a request of
/// the ~5,640 `megaconn serve` took (callgrind, bench/CPU-PER-REQUEST.md,
/// session 47). An emptied map keeps its allocations, and the server keeps
/// a written response's map for a later request's headers. `req` is
/// borrowed, not moved: moved, it was copied whole on its way in (a call
/// to `memcpy`).
fn text_in(req: &mut Request<Body>, status: StatusCode, body: &'static str) -> Response<DemoBody> {
    let mut res = Response::new(EitherBody::Left(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    std::mem::swap(headers, req.headers_mut());
    // Nothing of the request's may reach the response.
    headers.clear();
    headers.insert(header::CONTENT_TYPE, TEXT_PLAIN);
    res
}

fn echo(req: Request<Body>) -> Response<DemoBody> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let mut res = Response::new(EitherBody::Right(req.into_body()));
    if let Some(ct) = content_type {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    res
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// The framed TCP demo on `--tcp-listen`, in the listener's framing (lines,
/// for `nc`; or a length header with `--tcp-framing`):
///
/// | message | answer |
/// |---|---|
/// | `PING` | `PONG` |
/// | `PID` | `pid <id>`: the process serving this connection (which worker process, with `--processes`) |
/// | `SUB topic` | `subscribed: topic` (publishes to `topic` reach this connection) |
/// | `SUB topic` past `--max-subscriptions`, or a name over `--max-topic-bytes` | `error: <why>` (the connection stays open) |
/// | `UNSUB topic` | `unsubscribed: topic` |
/// | `PUB topic text` | `published` (`text` goes to `topic`'s subscribers) |
/// | `PUB * text` | `published` (`text` goes to every framed and WebSocket connection: a broadcast) |
/// | `PUB …` past the connection's `--publish-rate` (burst `--publish-burst`, a publish counting one per `--publish-fanout` connections it reaches) | `error: publish rate; slow down` (not published; the connection stays open) |
/// | `PUB …` reaching more than `--publish-burst × --publish-fanout` connections (20,000) | `error: publish reaches <n> connections, …` (not published, now or later; the connection stays open) |
/// | `PUB …` that cannot cross processes (over 64 KiB) | `error: <why>` |
/// | `PUB …` no worker took (full hub queues, or the server is stopping) | `error: not delivered by this process: <why>` |
/// | anything else | `echo: <message>` |
/// | anything else, too long to echo in this framing | `error: too long to echo` |
/// | a line over 8 KiB (a frame over 64 KiB, a bad length header, not UTF-8) | `error: line too long; closing` (`frame too large`, …), then the close |
///
/// Publishes reach every connection of the server: with `--processes N`,
/// those of the other worker processes too (through the supervisor).
///
/// At `serve --upgrade` an idle connection moves to the new process with
/// its subscriptions (the state it has): the device sees no close, and
/// `PID` then names the new process.
#[derive(Debug, Clone)]
pub struct FramedDemo {
    /// How `PUB` publishes.
    pub publisher: Publisher,
    /// How many `PUB`s each connection may make, charged by audience: a
    /// publish costs the server a delivery per subscriber (~5 µs each to
    /// parked ones), so an unbounded `PUB *` loop made it spend CPU in
    /// proportion to its connections on every 8-byte line.
    pub publish_rate: PublishRate,
    /// The server, whose message connections are a `PUB *`'s audience.
    pub server: ServerHandle,
    /// The largest reply the listener's framing carries
    /// ([`megaconn::Framing::max_reply_bytes`]): an echo over it is
    /// answered `error:` (a reply that cannot be framed would close the
    /// connection as the handler's error).
    pub max_reply: usize,
}

/// What the framed demo's echo puts before the message.
const ECHO: &[u8] = b"echo: ";

/// The framed demo's answer to a `PUB` past the connection's publish rate.
const PUBLISH_RATE_REFUSED: &[u8] = b"error: publish rate; slow down";

impl megaconn::FramedHandler for FramedDemo {
    type State = ();

    async fn on_message(
        &self,
        _: &mut (),
        frame: Bytes,
        session: &megaconn::Session,
    ) -> Option<Bytes> {
        if frame == "PING" {
            return Some(Bytes::from_static(b"PONG"));
        }
        if frame == "PID" {
            return Some(format!("pid {}", std::process::id()).into());
        }
        if let Some(command) = demo_command(&frame) {
            return Some(match command {
                Command::Sub(topic) => match session.subscribe(topic) {
                    Ok(()) => format!("subscribed: {topic}").into(),
                    Err(e) => format!("error: {e}").into(),
                },
                Command::Unsub(topic) => {
                    session.unsubscribe(topic);
                    format!("unsubscribed: {topic}").into()
                }
                Command::Pub(topic, text) => {
                    let topic = Topic::parse(topic);
                    if let Some(refused) = self.refused(topic, session.id()) {
                        return Some(refused);
                    }
                    match self.publisher.publish(topic, frame.slice_ref(text)) {
                        Ok(()) => Bytes::from_static(b"published"),
                        Err(e) => format!("error: {e}").into(),
                    }
                }
            });
        }
        if ECHO.len() + frame.len() > self.max_reply {
            return Some(Bytes::from_static(b"error: too long to echo"));
        }
        let mut reply = Vec::with_capacity(ECHO.len() + frame.len());
        reply.extend_from_slice(ECHO);
        reply.extend_from_slice(&frame);
        Some(reply.into())
    }

    /// Says why before the close, as the demo's other refusals do: `nc`
    /// otherwise shows the connection ending and nothing more.
    fn on_framing_error(&self, _: &mut (), error: megaconn::FramingError) -> Option<Bytes> {
        Some(format!("error: {error}; closing").into())
    }

    /// Opted in to moving at `megaconn serve --upgrade`, so that the
    /// binary's own upgrade moves idle framed connections (and its tests
    /// prove it end to end, `tests/cli/upgrade_framed_cli.rs`): a device
    /// stays connected, and its topics (`SUB`), which are all it has here,
    /// move with it. The state itself is empty.
    fn export(&self, _: &()) -> Option<Vec<u8>> {
        Some(Vec::new())
    }

    /// An empty state, as [`export`](Self::export) gives; anything else is
    /// another application's, refused.
    fn import(&self, bytes: &[u8]) -> Option<()> {
        bytes.is_empty().then_some(())
    }
}

impl FramedDemo {
    /// Takes a publish to `topic` from `connection`'s budget, charged by its
    /// audience (the topic's subscribers; for `*`, the server's message
    /// connections; with `--processes`, in every worker process, which a
    /// publish reaches): `None` if it may publish, else the
    /// answer to its peer (the refusal is counted and logged by
    /// [`PublishRate`]).
    fn refused(&self, topic: Topic<'_>, connection: ConnectionId) -> Option<Bytes> {
        let rate = &self.publish_rate;
        let audience = match topic {
            // Counted only when it is charged for.
            _ if rate.is_off() || rate.fanout.is_none() => 0,
            // With --processes, a broadcast reaches every worker process's.
            Topic::All => {
                self.server.message_connections()
                    + megaconn::message_connections_in_other_processes()
            }
            Topic::Named(name) => megaconn::subscribers(name),
        };
        if rate.allow_to(connection, audience) {
            return None;
        }
        if rate.cost(audience) <= rate.burst.max(1) {
            return Some(Bytes::from_static(PUBLISH_RATE_REFUSED));
        }
        // Never allowed: saying "slow down" would have the peer retry.
        let most = u64::from(rate.burst.max(1)) * u64::from(rate.fanout.unwrap_or(1).max(1));
        Some(format!(
            "error: publish reaches {audience} connections, more than --publish-burst x --publish-fanout ({most}) allow; not published"
        ).into())
    }
}

/// The WebSocket demo at `/ws`: every message is sent back as it came.
#[derive(Debug, Clone, Copy)]
pub struct WsEcho;

impl WebSocketHandler for WsEcho {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }
}

/// The WebSocket chat at `/ws/chat`: every client joins topic `chat`, and a
/// message from one is published to all of them (the sender too), parked or
/// awake, text as text and binary as binary.
///
/// Each message is charged by the room's size (in every worker process of
/// `--processes`, which the message reaches: [`PublishRate::allow_publish`]: one per `--publish-fanout` members), so
/// a room larger than `--publish-burst × --publish-fanout` (20,000 at the
/// defaults) takes no messages from its members: each would cost the
/// server a delivery per member. A message past the connection's publish
/// rate is dropped (counted and logged by [`PublishRate`]), the connection
/// left open: a chat
/// client has no channel for an error but the chat itself, where a reply
/// would read as a message, and its own message not coming back is what
/// it sees. Not closed (1008), even for a long flood: a refused message
/// costs the server what an echo on `/ws` does (a read and a parse), not
/// the fan-out the rate bounds, so a close would spare no CPU, and a
/// person whose paste ran over the burst would lose the connection.
#[derive(Debug, Clone)]
pub struct WsChat {
    publisher: Publisher,
    publish_rate: PublishRate,
}

impl WebSocketHandler for WsChat {
    type State = ();

    fn on_open(&self, _: &mut (), session: &WsSession) {
        // Refused only with --max-subscriptions 0, which the server counted
        // and logged: the client then only sends.
        let _ = session.subscribe(CHAT_TOPIC);
    }

    async fn on_message(
        &self,
        _: &mut (),
        message: WsMessage,
        session: &WsSession,
    ) -> Option<WsMessage> {
        if !self.publish_rate.allow_publish(session.id(), CHAT_TOPIC) {
            return None;
        }
        // Binary relayed as binary (it was dropped: the README promises
        // every client hears every message).
        let (bytes, body) = match message {
            WsMessage::Text(text) => (Bytes::copy_from_slice(text.as_bytes()), SendAs::Auto),
            WsMessage::Binary(bytes) => (bytes, SendAs::Binary),
        };
        match self
            .publisher
            .publish_as(Topic::Named(CHAT_TOPIC), bytes, body)
        {
            // The hub counted and logged a full queue's drop
            // (rate-limited); a line per chat message here would flood
            // the log. (Not serving, it runs no handler.)
            Ok(()) | Err(PublishError::NotQueued(_)) => {}
            Err(e) => tracing::warn!(error = %e, "chat message not published"),
        }
        None
    }
}

/// A demo command other than `PING`.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Sub(&'a str),
    Unsub(&'a str),
    /// Topic (`*`: everyone), then the text as bytes.
    Pub(&'a str, &'a [u8]),
}

/// Parses `SUB t`, `UNSUB t` or `PUB t text` (the text may be any bytes).
fn demo_command(frame: &[u8]) -> Option<Command<'_>> {
    let (verb, rest) = split_word(frame)?;
    match verb {
        b"SUB" | b"UNSUB" => {
            let topic = std::str::from_utf8(rest)
                .ok()
                .filter(|t| !t.is_empty() && !t.contains(' '))?;
            Some(if verb == b"SUB" {
                Command::Sub(topic)
            } else {
                Command::Unsub(topic)
            })
        }
        b"PUB" => {
            let (topic, text) = split_word(rest)?;
            Some(Command::Pub(std::str::from_utf8(topic).ok()?, text))
        }
        _ => None,
    }
}

/// The first space-separated word of `bytes` and what follows the space.
fn split_word(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = bytes.iter().position(|&b| b == b' ')?;
    let (word, rest) = (&bytes[..space], &bytes[space + 1..]);
    (!word.is_empty()).then_some((word, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server clones the service for every wake-up of a parked
    /// connection: a demo clone is one reference count, and the demo adds
    /// 8 bytes to each connection's future (it was the `ServerHandle` and
    /// two routes, field by field: see [`Demo`]).
    #[test]
    fn the_demo_service_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Demo>(), std::mem::size_of::<usize>());
        let by_field =
            std::mem::size_of::<(ServerHandle, WebSocketRoute<WsEcho>, WebSocketRoute<WsChat>)>();
        eprintln!("the demo's fields, held by value: {by_field} bytes");
    }

    /// The response `GET /` gets in its request's header map carries
    /// none of the request's headers, whatever they were, and is the one
    /// [`text`] makes.
    #[test]
    fn a_text_answer_in_the_requests_map_has_only_its_own_headers() {
        let mut req = Request::get("/")
            .header(header::HOST, "t")
            .header("x-secret", "s3cret")
            .header(header::SET_COOKIE, "a=b")
            .body(Body::empty())
            .unwrap();
        for i in 0..40 {
            req.headers_mut()
                .append("x-many", header::HeaderValue::from(i));
        }
        let res = text_in(&mut req, StatusCode::OK, "Hello, World!");
        let fresh = text(StatusCode::OK, "Hello, World!");
        assert_eq!(res.status(), fresh.status());
        assert_eq!(res.headers(), fresh.headers());
        assert_eq!(res.headers().len(), 1);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn demo_commands_parse() {
        assert_eq!(demo_command(b"SUB news"), Some(Command::Sub("news")));
        assert_eq!(demo_command(b"UNSUB news"), Some(Command::Unsub("news")));
        assert_eq!(
            demo_command(b"PUB news big day"),
            Some(Command::Pub("news", b"big day"))
        );
        assert_eq!(
            demo_command(b"PUB * \x00\xff"),
            Some(Command::Pub("*", b"\x00\xff"))
        );
        for not in [
            &b"SUB"[..],
            b"SUB ",
            b"SUB a b",
            b"PUB news",
            b"PUBLISH x y",
            b"hello world",
        ] {
            assert_eq!(
                demo_command(not),
                None,
                "{:?}",
                String::from_utf8_lossy(not)
            );
        }
    }
}
