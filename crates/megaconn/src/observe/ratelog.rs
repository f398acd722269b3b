//! Log lines a peer can repeat at will, held to one per interval per kind
//! per worker: a request over a limit, a malformed body, a refused request
//! head, a slow consumer,
//! a socket the kernel will not watch, an upgrade no handler took, a
//! WebSocket frame or message over its limit (native or `axum_ws`), a
//! framed TCP frame or line over its limit, a hub message dropped at a full
//! queue, a subscription over a connection's bound, a framed or WebSocket (native or `axum_ws`) peer or an HTTP/1.1
//! client that stopped reading, an HTTP/1.1 request head or request that
//! did not come within its timeout, a TLS handshake that timed out or failed, a
//! TLS client certificate refused, a
//! TLS peer over the record buffer's limit or in breach of the protocol
//! after its handshake, a response body that failed mid-stream, a panic
//! caught, an HTTP/2 stream whose client gave it no room, a request body
//! that stopped coming (HTTP/1.1 or HTTP/2), an HTTP/2 connection calmed, a
//! framed reply that cannot be framed, idle connections evicted at
//! `max_connections`, a hub message some connections cannot be sent, an
//! HTTP/2 stream refused past `http2_max_concurrent_streams`, a worker at
//! its bound on TLS handshakes in flight, an HTTP/2 control-frame flood, an
//! HTTP/2 upload's window not grown past `http2_grown_windows_budget`. The limits' lines name the setting to raise, a kind per setting or, for a refused request head, per status (so that a flood over one does not
//! hide another's name). Each line that gets through carries `suppressed`, how
//! many were held back since the one before; the counters
//! (`megaconn_limit_hits_total`, close reasons) keep the count of every one.
//!
//! A worker is one thread, so its logs are thread-local: no lock, and no
//! plumbing to the many places (the body readers, the message tables)
//! that log them.
//!
//! A count held back is said once its interval has passed, whether or not
//! another event of its kind comes ([`flush_held_back`], one task per
//! worker, asleep unless a count is held back): it used to wait for the
//! next event of the kind, so the end of a flood was never said (11,230
//! `accept_rate` refusals gave one line, `suppressed` nowhere). A thread
//! that is no worker's (a hub publish's) has no such task: its counts wait
//! for its next line.

use std::cell::{Cell, RefCell};
use std::io;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// At most one line per this interval for one kind of repeating event.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Logs at most once per [`LOG_INTERVAL`], counting what it held back.
#[derive(Debug, Default)]
pub(crate) struct RateLimitedLog {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
    /// The kind it logs, in the table of kinds (for the line
    /// [`flush_held_back`] says); `None` until it logged one.
    kind: Cell<Option<Flood>>,
}

impl RateLimitedLog {
    const fn new() -> RateLimitedLog {
        RateLimitedLog {
            last: Cell::new(None),
            suppressed: Cell::new(0),
            kind: Cell::new(None),
        }
    }

    /// Calls `emit` with the count held back since the last line, unless a
    /// line went out less than [`LOG_INTERVAL`] ago (then only counts).
    pub(crate) fn log(&self, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            let held = self.suppressed.get() + 1;
            self.suppressed.set(held);
            if held == 1 {
                // The first held back since the last line: have it said
                // once the interval is over, should nothing else come.
                if let Some(last) = self.last.get() {
                    flush_at(last + LOG_INTERVAL);
                }
            }
            return;
        }
        emit(self.suppressed.replace(0));
        self.last.set(Some(now));
    }

    /// The count held back, if its interval is over at `now`: taken, and
    /// the interval starts again (the line that says it counts as one).
    fn take_due(&self, now: Instant) -> Option<u64> {
        let held = self.suppressed.get();
        let last = self.last.get()?;
        if held == 0 || now.duration_since(last) < LOG_INTERVAL {
            return None;
        }
        self.suppressed.set(0);
        self.last.set(Some(now));
        Some(held)
    }

    /// When its held-back count is due, if it has one.
    fn due(&self) -> Option<Instant> {
        (self.suppressed.get() > 0)
            .then(|| self.last.get().map(|last| last + LOG_INTERVAL))
            .flatten()
    }
}

/// This thread's [`flush_held_back`] task: when it is next due, and how to
/// wake it when an earlier count is held back.
struct Flusher {
    due: Cell<Option<Instant>>,
    waker: RefCell<Option<Waker>>,
}

thread_local! {
    static FLUSHER: Flusher = const {
        Flusher {
            due: Cell::new(None),
            waker: RefCell::new(None),
        }
    };
}

/// Has this thread's [`flush_held_back`] look again at `at` (or earlier,
/// if it is due earlier already).
fn flush_at(at: Instant) {
    FLUSHER.with(|f| {
        if f.due.get().is_some_and(|due| due <= at) {
            return;
        }
        f.due.set(Some(at));
        if let Some(waker) = f.waker.borrow_mut().take() {
            waker.wake();
        }
    });
}

/// A worker's task (spawned once per worker thread, with its other loops):
/// says each count held back once its interval is over, in one line per
/// kind ([`say_held_back`]), though no other event of its kind came. Asleep
/// (no timer) while nothing is held back. Runs until aborted.
pub(crate) async fn flush_held_back() {
    flush_held_back_with(say_held_back).await
}

/// [`flush_held_back`], saying each count with `say`.
async fn flush_held_back_with(mut say: impl FnMut(Flood, u64)) {
    use std::future::Future as _;
    loop {
        let due = std::future::poll_fn(|cx| {
            FLUSHER.with(|f| match f.due.get() {
                Some(due) => Poll::Ready(due),
                None => {
                    *f.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        // An earlier count held back meanwhile moves the wake-up earlier.
        let sleep = tokio::time::sleep_until(due);
        tokio::pin!(sleep);
        std::future::poll_fn(|cx| {
            FLUSHER.with(|f| {
                let now_due = f.due.get().unwrap_or(due);
                if now_due < sleep.deadline() {
                    sleep.as_mut().reset(now_due);
                }
                *f.waker.borrow_mut() = Some(cx.waker().clone());
            });
            sleep.as_mut().poll(cx)
        })
        .await;
        let now = Instant::now();
        let next = LOGS.with(|logs| {
            for log in logs {
                if let (Some(held), Some(kind)) = (log.take_due(now), log.kind.get()) {
                    say(kind, held);
                }
            }
            logs.iter().filter_map(RateLimitedLog::due).min()
        });
        FLUSHER.with(|f| f.due.set(next));
    }
}

/// The line for a count held back and not said by a later event of its
/// kind: what the kind is, and how many.
/// At the kind's own level ([`Flood::level`]): it was always a WARN.
fn say_held_back(kind: Flood, suppressed: u64) {
    macro_rules! say {
        ($level:ident) => {
            tracing::$level!(
                kind = ?kind,
                suppressed,
                "{suppressed} more {kind:?} events held back since the last line of the kind (one line per {LOG_INTERVAL:?} per worker; {} counts every one)",
                kind.counter()
            )
        };
    }
    match kind.level() {
        tracing::Level::ERROR => say!(error),
        tracing::Level::WARN => say!(warn),
        tracing::Level::INFO => say!(info),
        tracing::Level::DEBUG => say!(debug),
        _ => say!(trace),
    }
}

/// The kinds of repeating event, each with its own limit per worker.
/// (`repr(u8)`: a kind is its index in the table of limiters.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Flood {
    /// A request body over `max_body_bytes` (HTTP/1.1 and HTTP/2).
    BodyTooLarge,
    /// A malformed chunked request body.
    MalformedBody,
    /// A request head refused before any service saw it with a status that
    /// has no kind of its own: HTTP/1.1's 400 (malformed) and 417 (an
    /// `Expect` other than `100-continue`), answered and closed. The limits'
    /// refusals are a kind per status, so that a flood over one does not
    /// hide another's line: [`RefusedHeadFields`](Flood::RefusedHeadFields)
    /// (431), [`RefusedBodyLength`](Flood::RefusedBodyLength) (413),
    /// [`RefusedUriLength`](Flood::RefusedUriLength) (414) and
    /// [`RefusedVersion`](Flood::RefusedVersion) (505);
    /// [`Flood::refused_head`] picks one. Each kind is one across protocols
    /// (HTTP/1.1's and HTTP/2's refusals alike).
    RefusedHead,
    /// A connection closed as a slow consumer (queue or socket buffer full).
    SlowConsumer,
    /// A socket the kernel would not watch (`epoll_ctl` failed).
    CannotWatch,
    /// A handler switched protocols without waiting on `OnUpgrade`, or
    /// answered an upgrade request `426` the way axum's own WebSocket
    /// extractor does under megaconn (each such request a peer sends logs
    /// it; one kind, as both lines give the same remedy), or a
    /// `WebSocketRoute::on_upgrade` hook refused with a `1xx` (answered 500).
    UnclaimedUpgrade,
    /// A native WebSocket closed with 1009 for a frame over
    /// `WebSocketRoute::max_frame_bytes`. The WebSocket kinds, native or
    /// `axum_ws`, are two limit hits (`ws_frame_too_big`,
    /// `ws_message_too_big`) but a log kind per setting: a line names the
    /// setting it went over, and a peer over one must not hold back the
    /// line naming another.
    WsFrameTooBig,
    /// A native WebSocket closed with 1009 for a message over
    /// `WebSocketRoute::max_message_bytes` (or inflating past it).
    WsMessageTooBig,
    /// An `axum_ws` socket closed with 1009 for a frame over
    /// `WebSocketUpgrade::max_frame_size`. (Without the `axum` feature
    /// nothing logs the two `axum_ws` kinds; they keep their places.)
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    AxumWsFrameTooBig,
    /// An `axum_ws` socket closed with 1009 for a message over
    /// `WebSocketUpgrade::max_message_size` (or over a limit both settings
    /// share, which tungstenite does not tell apart).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    AxumWsMessageTooBig,
    /// A framed TCP connection closed for a frame over
    /// `Framing::max_frame_bytes` (or over what its length header can say).
    FramedFrameTooBig,
    /// A framed TCP connection closed for a line over
    /// `Framing::max_line_bytes`.
    FramedLineTooLong,
    /// A hub message dropped at a worker's full queue (`Builder::hub_queue`).
    /// Logged on the thread that published it, which may be no worker's:
    /// each thread has its own limiter.
    HubQueueFull,
    /// A subscription refused: the connection held
    /// `Builder::max_subscriptions` topics already. A kind per setting: one
    /// shared with [`TopicTooLong`](Flood::TopicTooLong) held back the
    /// line naming `max_topic_bytes` after one naming `max_subscriptions`.
    TooManySubscriptions,
    /// A framed TCP connection closed because its peer took none of our
    /// bytes in time (`write_timeout`, the heartbeat timeout or
    /// `write_stall_timeout`). A kind per protocol, as their heartbeat
    /// settings differ.
    FramedWriteTimeout,
    /// A native WebSocket closed because its peer took none of our bytes
    /// in time (`write_timeout`, the route's heartbeat timeout or
    /// `write_stall_timeout`).
    WsWriteTimeout,
    /// A native Server-Sent Events stream closed because its peer took
    /// none of our bytes in time (`write_timeout` or `write_stall_timeout`).
    SseWriteTimeout,
    /// An `axum_ws` socket's send failed because its peer took none of
    /// our bytes in time (`write_timeout` or `write_stall_timeout`).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    AxumWsWriteTimeout,
    /// A TLS handshake not done within `TlsConfig::handshake_timeout`.
    TlsHandshakeTimeout,
    /// A TLS handshake that failed (a bad ClientHello, no shared cipher
    /// suite, plaintext other than HTTP sent to a TLS port, ...).
    TlsHandshakeFailed,
    /// A TLS peer whose records held more than the stream buffers
    /// (`tls_io::MAX_BUFFERED`) without completing a message.
    TlsTooMuchBuffered,
    /// A TLS peer that broke the protocol after its handshake (rustls
    /// rejected a record or a message).
    TlsProtocolError,
    /// A TLS peer that ended its connection with a fatal alert (it does
    /// not trust our certificate, it gave up): its decision, not a failure
    /// of ours, but what an operator looks for after a certificate rollout.
    TlsAlertReceived,
    /// An HTTP/1 response body that failed mid-stream on its own (not
    /// because the request's body failed): the service's error; and a
    /// response body of either HTTP version that went on past its
    /// `Content-Length` (`proto::log_body_overran`).
    ResponseBodyFailed,
    /// An HTTP/1.1 connection closed because its client took none of our
    /// response's bytes in time (`write_timeout` or `write_stall_timeout`).
    Http1WriteTimeout,
    /// An HTTP/1.1 connection closed because its request head did not
    /// come whole within `read_header_timeout` (a slowloris, or a client
    /// that connected and sent nothing).
    Http1HeaderTimeout,
    /// An HTTP/1.1 connection closed because its request did not come
    /// whole within `read_timeout`.
    Http1ReadTimeout,
    /// A panic caught (a handler's, a response body's, one that escaped
    /// the protocols' guards): what megaconn did about it. A peer can make
    /// a buggy handler panic at will; `megaconn_panics_total` counts every one.
    Panic,
    /// A panic on a worker thread, as [`install_panic_hook`] reports it
    /// (its message and where): a kind of its own, so that the line saying
    /// what was done is not held back by the one saying what happened.
    PanicReport,
    /// An HTTP/2 stream reset because its client gave its response no room
    /// (no window) for `write_stall_timeout`.
    Http2WriteStall,
    /// A request body whose client sent nothing for `idle_timeout` (with
    /// `read_timeout` off) while its handler waited: an HTTP/2 stream's
    /// read fails, an HTTP/1.1 connection closes (both protocols: one
    /// setting).
    BodyStall,
    /// An HTTP/2 connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` (rapid
    /// reset, small-DATA flood, or h2's own guards).
    Http2Calm,
    /// A framed TCP connection closed because its handler's reply could
    /// not be framed (over `Framing::max_reply_bytes`): the handler's bug,
    /// but one a peer may trigger at will (an echo of a frame at the limit).
    FramedReplyUnframable,
    /// Idle keep-alive connections closed at `max_connections` to let new
    /// ones in (`CloseReason::Evicted`): one line per interval, naming the
    /// setting to raise.
    Evicted,
    /// A hub message its connections' wire cannot frame (over a framed
    /// listener's `Framing::max_frame_bytes`, a line ending or bytes not
    /// UTF-8 on a lines listener): dropped for them.
    PushUnframable,
    /// An HTTP/2 stream h2 refused (`RST_STREAM(REFUSED_STREAM)`) for
    /// opening past `http2_max_concurrent_streams`. (h2's other refusal,
    /// `431` for a header list over `http2_max_header_list_size`, is a
    /// [`RefusedHeadFields`](Flood::RefusedHeadFields).)
    Http2RefusedStream,
    /// An HTTP/2 connection reached `http2_max_stalled_streams` responses
    /// waiting for room in its client's flow-control windows.
    Http2StalledStreams,
    /// A handler's `WsSession::close_with` named a close code no close
    /// frame may carry (sent as 1011 instead): a handler may pass on a
    /// code its peer chose. (`Hub::close_with` refuses one at the call.)
    BadCloseCode,
    /// A publish refused by `PublishRate::allow`: a connection published
    /// past its burst.
    PublishRate,
    /// A worker reached `TlsConfig::max_handshakes_in_flight` and stopped
    /// accepting on its TLS listeners until a handshake leaves.
    TlsHandshakesInFlight,
    /// A TLS connection refused at accept by
    /// `TlsConfig::handshake_rate_per_ip`.
    TlsHandshakeRatePerIp,
    /// A request head refused `431`: over `max_header_bytes`, more than
    /// `max_headers` fields, or (h2's own) a header list over
    /// `http2_max_header_list_size`.
    RefusedHeadFields,
    /// A request head refused `413`: its `Content-Length` over
    /// `max_body_bytes`.
    RefusedBodyLength,
    /// An HTTP/1.1 request head refused `414`: its target over the limit.
    RefusedUriLength,
    /// An HTTP/1.1 request head refused `505`: an HTTP version other than 1.x.
    RefusedVersion,
    /// An HTTP/2 connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` for a
    /// control-frame flood (`HTTP2_CONTROL_BUDGET`): a kind apart from
    /// [`Http2Calm`](Flood::Http2Calm), as its line names the constant.
    Http2ControlFrames,
    /// An HTTP/2 connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` for a
    /// tiny-DATA flood (`HTTP2_TINY_DATA_BUDGET`), its line naming the
    /// constant as the control-frame one does.
    Http2TinyData,
    /// An HTTP/2 connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` for an
    /// empty-DATA flood (h2's count of 100, met by ours first).
    Http2EmptyData,
    /// A subscription refused: its topic's name was over
    /// `Builder::max_topic_bytes`.
    TopicTooLong,
    /// A connection refused at accept by `accept_rate`.
    AcceptRate,
    /// A connection refused at accept by `max_connections_per_ip`.
    MaxConnectionsPerIp,
    /// A worker at `max_connections` with a connection waiting.
    AtMaxConnections,
    /// An `accept` that failed (not a transient error): the listener
    /// backs off.
    AcceptFailed,
    /// A connection refused at accept answered at once, without waiting
    /// for its client's first bytes, because the server's refusals waiting
    /// for theirs were at their bound (`admission::undecided_max`).
    RefusalsWaiting,
    /// A TLS connection let in at accept by forgetting another IP's bucket:
    /// the table of `TlsConfig::handshake_rate_per_ip`'s buckets was at its
    /// bound (`admission::PerIpRate::MAX_TRACKED`) and its IP not in it.
    TlsHandshakeRateTable,
    /// An HTTP/2 connection slowed for a window opened a few bytes at a
    /// time (`HTTP2_WINDOW_DRIP_BUDGET`), its line naming the constant as
    /// the control-frame one does.
    Http2WindowDrip,
    /// An idle connection kept awake instead of parked: its descriptor is
    /// above the parking lot's slot array (`conn/park/awake.rs`).
    ParkSlots,
    /// An HTTP/2 connection closed with `GOAWAY(ENHANCE_YOUR_CALM)` for a
    /// PING flood (`HTTP2_PING_BUDGET`), its line naming the constant as
    /// the control-frame one does.
    Http2Pings,
    /// A TLS handshake refused for the client's certificate
    /// (`TlsConfig::client_auth`): none sent where one is required, or one
    /// that does not verify; its line names the reason (`CertRefusal`). A kind apart from
    /// [`TlsHandshakeFailed`](Flood::TlsHandshakeFailed): after a CA
    /// rollout a fleet's refusals must not hide other failures' lines, nor
    /// theirs it.
    TlsClientCertRefused,
    /// A TLS handshake failed on a CRL of the server's own
    /// (`ClientCa::with_crl_*`: an intermediate CA's, which only a
    /// handshake can check) that webpki found bad: the server's to fix, at
    /// WARN, apart from the clients' failures.
    TlsServerCrl,
    /// A plain HTTP request sent to a TLS port (answered `400`): a client
    /// configured with `http://` for an `https://` address. A kind apart
    /// from [`TlsHandshakeFailed`](Flood::TlsHandshakeFailed): a fleet so
    /// misconfigured must not hide other failures' lines, nor theirs it.
    TlsPlainHttp,
    /// An HTTP/2 connection whose unread request DATA reached
    /// `http2_max_unread_body_bytes` (its client waits for its handlers).
    Http2UnreadBody,
    /// A request body whose client sent slower than
    /// `min_request_body_rate` while it was awaited: the connection closed
    /// (HTTP/1.1), the stream ended (HTTP/2).
    BodyTooSlow,
    /// A close cut short by `Builder::linger_timeout`: its peer did not
    /// take our last bytes, or did not close its end, in time.
    LingerTimeout,
    /// An HTTP/2 upload's window not grown: the server's streams' windows
    /// had grown by `http2_grown_windows_budget` (`service/h2_body.rs`).
    Http2GrownWindows,
    /// A connection from a `proxy_protocol` source closed without a valid
    /// PROXY header (`conn/proxy_header.rs`): a balancer not sending it.
    ProxyHeader,
}

impl Flood {
    /// The metric that counts every event of the kind, which the line
    /// saying a count held back names: `megaconn_limit_hits_total` for
    /// most, not for the timeouts, TLS handshakes and panics, which have
    /// their own (the line named `limit_hits` for all of them until
    /// session 48's review).
    pub(crate) fn counter(self) -> &'static str {
        match self {
            Flood::Http1HeaderTimeout => {
                "megaconn_timeouts_total (and megaconn_closed_total{reason=\"header_timeout\"})"
            }
            Flood::TlsHandshakeTimeout => "megaconn_tls_handshakes_total{outcome=\"timeout\"}",
            Flood::TlsHandshakeFailed => "megaconn_tls_handshakes_total{outcome=\"failed\"}",
            Flood::TlsClientCertRefused => "megaconn_tls_handshakes_total{outcome=\"client_cert\"}",
            Flood::TlsServerCrl => "megaconn_tls_handshakes_total{outcome=\"crl\"}",
            Flood::Panic | Flood::PanicReport => "megaconn_panics_total",
            Flood::ProxyHeader => "megaconn_proxy_headers_total",
            _ => "megaconn_limit_hits_total",
        }
    }

    /// The level its lines are logged at, which the line saying a count
    /// held back ([`say_held_back`]) takes too: a flood of a kind logged at
    /// INFO (a peer's doing, e.g. a body over its limit) said at WARN once
    /// its interval was over, the only warning the operator saw of it, and
    /// one at ERROR (an accept failing) was said lower than itself. One
    /// place per kind, the match making a new kind choose;
    /// `tests::each_kind_is_said_at_the_level_of_its_own_lines` checks it
    /// against the kinds' own lines in the source.
    pub(crate) fn level(self) -> tracing::Level {
        use tracing::Level;
        match self {
            // The server's, or the process's, state: an operator acts.
            Flood::AcceptFailed | Flood::Panic | Flood::PanicReport => Level::ERROR,
            // The limits that refuse whole connections, what the server
            // does about a full queue or an unframable push, and the
            // handler's (or server's) mistakes a peer can repeat.
            Flood::AcceptRate
            | Flood::MaxConnectionsPerIp
            | Flood::AtMaxConnections
            | Flood::Evicted
            | Flood::RefusalsWaiting
            | Flood::TlsHandshakeRatePerIp
            | Flood::TlsHandshakeRateTable
            | Flood::TlsHandshakesInFlight
            | Flood::CannotWatch
            | Flood::ParkSlots
            | Flood::UnclaimedUpgrade
            | Flood::HubQueueFull
            // Logged at ERROR too, for a hub message for a wire the worker
            // does not have (a bug of the server's, once per message); its
            // peer-made line, a message a framing cannot carry, is a WARN.
            | Flood::PushUnframable
            | Flood::ResponseBodyFailed
            | Flood::FramedReplyUnframable
            | Flood::BadCloseCode
            | Flood::TlsServerCrl
            // A balancer that does not send what it was said to: the
            // operator's to fix.
            | Flood::ProxyHeader => Level::WARN,
            // A peer's doing, one connection or request at a time.
            Flood::BodyTooLarge
            | Flood::MalformedBody
            | Flood::RefusedHead
            | Flood::RefusedHeadFields
            | Flood::RefusedBodyLength
            | Flood::RefusedUriLength
            | Flood::RefusedVersion
            | Flood::SlowConsumer
            | Flood::WsFrameTooBig
            | Flood::WsMessageTooBig
            | Flood::AxumWsFrameTooBig
            | Flood::AxumWsMessageTooBig
            | Flood::FramedFrameTooBig
            | Flood::FramedLineTooLong
            | Flood::TooManySubscriptions
            | Flood::TopicTooLong
            | Flood::FramedWriteTimeout
            | Flood::WsWriteTimeout
            | Flood::SseWriteTimeout
            | Flood::AxumWsWriteTimeout
            | Flood::Http1WriteTimeout
            | Flood::Http1HeaderTimeout
            | Flood::Http1ReadTimeout
            | Flood::TlsHandshakeTimeout
            | Flood::TlsHandshakeFailed
            | Flood::TlsTooMuchBuffered
            | Flood::TlsProtocolError
            | Flood::TlsAlertReceived
            | Flood::Http2WriteStall
            | Flood::BodyStall
            | Flood::Http2Calm
            | Flood::Http2RefusedStream
            | Flood::Http2StalledStreams
            | Flood::Http2ControlFrames
            | Flood::Http2TinyData
            | Flood::Http2EmptyData
            | Flood::Http2WindowDrip
            | Flood::Http2Pings
            | Flood::TlsClientCertRefused
            | Flood::TlsPlainHttp
            | Flood::Http2UnreadBody
            | Flood::BodyTooSlow
            | Flood::LingerTimeout
            | Flood::Http2GrownWindows
            | Flood::PublishRate => Level::INFO,
        }
    }

    /// The kind a request head refused with `status` is limited as: one per
    /// limit's status, [`RefusedHead`](Flood::RefusedHead) for the rest.
    pub(crate) fn refused_head(status: http::StatusCode) -> Flood {
        match status {
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Flood::RefusedHeadFields,
            http::StatusCode::PAYLOAD_TOO_LARGE => Flood::RefusedBodyLength,
            http::StatusCode::URI_TOO_LONG => Flood::RefusedUriLength,
            http::StatusCode::HTTP_VERSION_NOT_SUPPORTED => Flood::RefusedVersion,
            _ => Flood::RefusedHead,
        }
    }
}

/// How many [`Flood`] kinds there are.
const KINDS: usize = 66;

// The last kind's index is in the table: a kind added without counting it
// fails the build, not a worker.
const _: () = assert!(Flood::ProxyHeader as usize == KINDS - 1);

thread_local! {
    static LOGS: [RateLimitedLog; KINDS] = const {
        [const { RateLimitedLog::new() }; KINDS]
    };
}

/// Logs one event of `kind` through this worker's limiter for it.
pub(crate) fn log(kind: Flood, emit: impl FnOnce(u64)) {
    LOGS.with(|logs| {
        let log = &logs[kind as usize];
        log.kind.set(Some(kind));
        log.log(emit)
    });
}

/// Logs a caught panic: `what` panicked and what was done (an error line,
/// with the panic's message when known), held to one per interval per
/// worker like any flood.
pub(crate) fn panicked(what: &'static str, panic: Option<&str>) {
    log(Flood::Panic, |suppressed| match panic {
        Some(panic) => tracing::error!(panic, suppressed, "{what}"),
        None => tracing::error!(suppressed, "{what}"),
    });
}

/// The name every unnamed server's worker thread's name starts with (a
/// named one's is the server's: `server/name.rs`).
pub(crate) const WORKER_THREAD: &str = "megaconn-worker-";

thread_local! {
    /// Set on a worker's thread as it starts: the panics the hook below
    /// reports. A flag, not the thread's name, which is the server's when
    /// it has one (`Builder::name`).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread a worker's, for [`install_panic_hook`].
pub(crate) fn mark_worker_thread() {
    ON_WORKER.with(|on| on.set(true));
}

/// Installs a process-wide panic hook under which a panic on a megaconn
/// worker thread is reported by one `tracing` error line (the panic's
/// message and location; JSON under a JSON subscriber) at most once per
/// 5 s per worker, with `suppressed` counting the ones held back, instead
/// of the standard hook's lines on stderr: a peer that can make a handler
/// panic could otherwise write them at will (1,000 panics were 4,000 lines,
/// not JSON). megaconn catches these panics and the worker serves on;
/// `megaconn_panics_total` counts every one. Panics on any other thread go
/// to the hook that was installed before. Call it once, at startup, after
/// setting up logging (`megaconn serve` does).
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_worker = ON_WORKER.try_with(Cell::get).unwrap_or(false);
        if !on_worker {
            return previous(info);
        }
        log(Flood::PanicReport, |suppressed| {
            tracing::error!(panic = %info, suppressed, "a worker thread panicked");
        });
    }));
}

/// A peer's frame, message or line over a limit, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverLimit {
    /// The kind it is limited as: one per setting.
    pub(crate) kind: Flood,
    /// What went over, e.g. `WebSocket frame`.
    pub(crate) what: &'static str,
    /// The setting that limits it, e.g. `Framing::max_line_bytes`.
    pub(crate) setting: &'static str,
    /// Its size, where known cheaply.
    pub(crate) size: Option<u64>,
    /// The limit it went over.
    pub(crate) limit: u64,
}

/// Logs (limited, as `over.kind`) that a peer went over a limit, naming
/// the setting, the peer where known (an operator looks for the device or
/// client that did it, as a broker's line names its client) and `then`,
/// what the connection does about it. `peer` is asked only for a line that
/// goes out (it may cost a system call).
pub(crate) fn over_limit(
    over: OverLimit,
    peer: impl FnOnce() -> Option<std::net::SocketAddr>,
    then: &str,
) {
    log(over.kind, |suppressed| {
        let from = peer().map(|p| format!(" from {p}")).unwrap_or_default();
        tracing::info!(
            size = over.size,
            limit = over.limit,
            suppressed,
            "{}{from} over {}; {then}",
            over.what,
            over.setting
        )
    });
}

/// Logs a request head refused before any service saw it at INFO, held to
/// one line per interval per worker and status ([`Flood::refused_head`]: a
/// peer can send them at will), naming the status, why (`reason`, which
/// names the setting), the peer (`-` when unknown) and `then`, what was
/// done. `peer` is asked only for a line that goes out (it may cost a
/// system call).
pub(crate) fn refused_head(
    peer: impl FnOnce() -> Option<std::net::SocketAddr>,
    status: http::StatusCode,
    reason: &str,
    then: &str,
) {
    log(Flood::refused_head(status), |suppressed| {
        let peer = peer_name(peer());
        tracing::info!(
            suppressed,
            "refused a request head from {peer}: {status} ({reason}); {then}"
        );
    });
}

/// A peer's address for a log line, `-` when unknown.
pub(crate) fn peer_name(peer: Option<std::net::SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.to_string())
}

/// Logs (limited) that a connection's socket could not be added to an epoll
/// set, and closes nothing: the caller does. `ENOSPC` is the kernel's
/// per-user watch limit, which only a sysctl raises.
pub(crate) fn cannot_watch(error: &io::Error, what: &'static str) {
    log(Flood::CannotWatch, |suppressed| {
        if error.raw_os_error() == Some(libc::ENOSPC) {
            tracing::warn!(
                %error,
                suppressed,
                "{what}: at the kernel's epoll watch limit; closing it (raise the sysctl fs.epoll.max_user_watches)"
            );
        } else {
            tracing::warn!(%error, suppressed, "{what}; closing it");
        }
    });
}

/// Logs (limited) that an idle connection stays awake because its
/// descriptor `fd` is above the parking lot's slot array of `slots`.
pub(crate) fn above_park_slots(fd: i32, slots: usize) {
    log(Flood::ParkSlots, |suppressed| {
        tracing::warn!(
            fd,
            slots,
            suppressed,
            "an idle connection's descriptor is above the parking lot's slot array: it stays awake \
             as a task (~1 KB) instead of parking (8 B); the array was reserved at the start for \
             the hard open-file limit then (less if the address space was refused: see the \
             warning at the start): restart the server once the hard open-file limit \
             (LimitNOFILE) is where it stays, or allow the address space (ulimit -v)"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thousand events in a burst give one line; the next line, an
    /// interval later, says how many were held back.
    #[tokio::test(start_paused = true)]
    async fn a_burst_gives_one_line_and_the_next_counts_the_rest() {
        let limiter = RateLimitedLog::default();
        let mut lines = Vec::new();
        for _ in 0..1_000 {
            limiter.log(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, [0]);
        tokio::time::advance(LOG_INTERVAL / 2).await;
        limiter.log(|suppressed| lines.push(suppressed));
        assert_eq!(lines, [0], "half an interval later, still held back");
        tokio::time::advance(LOG_INTERVAL / 2).await;
        limiter.log(|suppressed| lines.push(suppressed));
        assert_eq!(lines, [0, 1_000]);
    }

    /// Kinds are limited apart: a flood of one does not hide the other.
    #[tokio::test(start_paused = true)]
    async fn kinds_are_limited_apart() {
        let mut lines = Vec::new();
        for _ in 0..10 {
            log(Flood::BodyTooLarge, |_| lines.push(Flood::BodyTooLarge));
            log(Flood::MalformedBody, |_| lines.push(Flood::MalformedBody));
        }
        assert_eq!(lines, [Flood::BodyTooLarge, Flood::MalformedBody]);
    }

    /// The count held back at the end of a flood is said once its interval
    /// is over, though no event of its kind comes again: one line per kind,
    /// with the count, and nothing more after it. It waited for the next
    /// event, so a flood's end was never said.
    #[tokio::test(start_paused = true)]
    async fn a_count_held_back_is_said_once_the_interval_is_over() {
        let said = std::rc::Rc::new(RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let into = said.clone();
                let flusher = tokio::task::spawn_local(flush_held_back_with(move |kind, n| {
                    into.borrow_mut().push((kind, n))
                }));
                let mut lines = 0;
                for _ in 0..1_000 {
                    log(Flood::AcceptRate, |_| lines += 1);
                }
                tokio::time::advance(LOG_INTERVAL / 2).await;
                for _ in 0..10 {
                    log(Flood::PublishRate, |_| lines += 1);
                }
                assert_eq!(lines, 2);
                tokio::time::sleep(LOG_INTERVAL / 2 + Duration::from_millis(1)).await;
                assert_eq!(*said.borrow(), [(Flood::AcceptRate, 999)]);
                tokio::time::sleep(LOG_INTERVAL).await;
                assert_eq!(
                    *said.borrow(),
                    [(Flood::AcceptRate, 999), (Flood::PublishRate, 9)]
                );
                // Nothing held back any more: nothing more said.
                tokio::time::sleep(LOG_INTERVAL * 4).await;
                assert_eq!(said.borrow().len(), 2);
                flusher.abort();
            })
            .await;
    }

    /// The line saying a count held back is at its kind's own level: an
    /// INFO kind's at INFO, a WARN kind's at WARN, an ERROR kind's at ERROR.
    /// It was a WARN whatever the kind.
    #[test]
    fn a_count_held_back_is_said_at_its_kinds_level() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;
        struct Levels(Arc<Mutex<Vec<tracing::Level>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Levels {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0.lock().unwrap().push(*event.metadata().level());
            }
        }
        let said = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Levels(said.clone()));
        let kinds = [Flood::BodyTooLarge, Flood::AcceptRate, Flood::AcceptFailed];
        tracing::subscriber::with_default(subscriber, || {
            for kind in kinds {
                say_held_back(kind, 3);
            }
        });
        use tracing::Level;
        assert_eq!(
            kinds.map(Flood::level),
            [Level::INFO, Level::WARN, Level::ERROR]
        );
        assert_eq!(*said.lock().unwrap(), kinds.map(Flood::level));
    }

    /// Every kind, by its name.
    fn by_name(name: &str) -> Option<Flood> {
        (0..KINDS as u8)
            // SAFETY: `Flood` is `repr(u8)` with the default discriminants,
            // 0 to KINDS - 1 (the last one is checked against KINDS).
            .map(|i| unsafe { std::mem::transmute::<u8, Flood>(i) })
            .find(|k| format!("{k:?}") == name)
    }

    /// The last char boundary of `text` at or before `at`.
    fn boundary(text: &str, mut at: usize) -> usize {
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    }

    /// [`Flood::level`] says what each kind's own lines say: in every
    /// source file, a `log(Flood::X, ...)` whose line is a `tracing`
    /// macro of its own is at X's level, and so is every kind that
    /// [`over_limit`], [`refused_head`] or a write bound's `passed` (INFO
    /// lines) logs. A line whose level changes fails here until the table
    /// follows it.
    #[test]
    fn each_kind_is_said_at_the_level_of_its_own_lines() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src];
        let mut checked = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // `log(Flood::X, |suppressed| ... tracing::level!`, with the
            // call on one line or its arguments on the next.
            for (at, _) in text.match_indices("log(") {
                let rest = text[at + 4..].trim_start();
                let Some(name) = rest.strip_prefix("Flood::") else {
                    continue;
                };
                let name: String = name
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    continue; // `Flood::refused_head(status)`: below.
                }
                // None: in a comment (the code's names compile).
                let Some(kind) = by_name(&name) else {
                    continue;
                };
                // The first macro of the closure, before the next call.
                let body =
                    &rest[..boundary(rest, rest.find("\n    }").unwrap_or(rest.len()).min(600))];
                let Some(level) = ["error", "warn", "info", "debug", "trace"]
                    .into_iter()
                    .filter_map(|l| body.find(&format!("tracing::{l}!")).map(|i| (i, l)))
                    .min()
                    .map(|(_, l)| l)
                else {
                    continue;
                };
                // The one kind with lines at two levels (`Flood::level`).
                if kind == Flood::PushUnframable && level == "error" {
                    continue;
                }
                assert_eq!(
                    level,
                    kind.level().as_str().to_ascii_lowercase(),
                    "{path:?}: {kind:?}"
                );
                checked += 1;
            }
            // The helpers that log at INFO for the kind they are given.
            for helper in ["kind: Flood::", "passed(", "Flood::Axum"] {
                for (at, _) in text.match_indices(helper) {
                    let after = &text[at..boundary(&text, (at + 200).min(text.len()))];
                    let Some(start) = after.find("Flood::") else {
                        continue;
                    };
                    let name: String = after[start + 7..]
                        .chars()
                        .take_while(char::is_ascii_alphanumeric)
                        .collect();
                    if let Some(kind) = by_name(&name) {
                        assert_eq!(kind.level(), tracing::Level::INFO, "{path:?}: {kind:?}");
                        checked += 1;
                    }
                }
            }
        }
        for status in [400, 413, 414, 417, 431, 505] {
            let status = http::StatusCode::from_u16(status).unwrap();
            assert_eq!(Flood::refused_head(status).level(), tracing::Level::INFO);
        }
        assert!(checked > 50, "{checked} call sites: the scan found them");
    }
}
