//! Which limit refused a request, closed a connection, (`hub_queue`)
//! dropped a hub message, (`http2_grown_windows_budget`) kept an HTTP/2
//! upload's window from growing, (`max_subscriptions`, `max_topic_bytes`) refused a subscription or (`publish_rate`) a publish, or (`refusals_waiting`) answered a refused connection without waiting for its first bytes, as a fixed set of labels (`limit` of
//! `megaconn_limit_hits_total`): the close reasons say only
//! `protocol_error` for the ones that close. Counted on the rejection path
//! only, one relaxed increment in the worker's array.

use std::sync::atomic::AtomicU64;

use crate::observe::stats::{add, incr, WorkerStats};

/// A limit (or a check a request failed) that refused a request, closed
/// a connection or dropped a hub message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// HTTP/1.1 431: the request head over `max_header_bytes`.
    MaxHeaderBytes,
    /// HTTP/1.1 431: more than `max_headers` header fields.
    MaxHeaders,
    /// 413, or a streamed body cut: a request body over `max_body_bytes`.
    MaxBodyBytes,
    /// HTTP/1.1 414: a request target too long.
    UriTooLong,
    /// HTTP/1.1 400: a malformed request head or chunked body.
    MalformedRequest,
    /// HTTP/1.1 505: an HTTP version other than 1.x.
    HttpVersion,
    /// HTTP/2 `GOAWAY(ENHANCE_YOUR_CALM)`: a flood h2 or our guards stopped
    /// (but a control-frame flood: [`Http2ControlFlood`](LimitHit::Http2ControlFlood)).
    H2EnhanceYourCalm,
    /// WebSocket close 1009: a message over `max_message_bytes` (on an
    /// `axum_ws` socket, its `max_message_size`, or a limit it shares with
    /// `max_frame_size`, which tungstenite does not tell apart).
    WsMessageTooBig,
    /// WebSocket close 1009: a frame over `max_frame_bytes` (on an
    /// `axum_ws` socket, its `max_frame_size`).
    WsFrameTooBig,
    /// Framed TCP: a length header over `Framing::max_frame_bytes`.
    FramedFrameTooLarge,
    /// Framed TCP: a line over `Framing::max_line_bytes`.
    FramedLineTooLong,
    /// Framed TCP: a bad length header or a line not UTF-8.
    FramedMalformed,
    /// A message of the hub dropped at a worker's full queue
    /// (`Builder::hub_queue`); no connection is closed.
    HubQueue,
    /// A subscription refused: the connection held
    /// `Builder::max_subscriptions` topics already; it stays open.
    MaxSubscriptions,
    /// A subscription refused: the topic's name was over
    /// `Builder::max_topic_bytes`; the connection stays open.
    MaxTopicBytes,
    /// A TLS handshake failed for records that held more than the TLS
    /// stream buffers (64 KiB) without completing a message: a ClientHello
    /// cut into tiny records.
    TlsHandshakeBuffer,
    /// A hub message a connection's wire cannot frame (over its listener's
    /// `Framing::max_outbound_frame_bytes`, a line ending or bytes not
    /// UTF-8 on a lines listener): that connection misses it, one hit each;
    /// it stays open. Also a framed handler's reply its listener cannot
    /// frame: that connection closes as `server_error`.
    PushUnframable,
    /// HTTP/2 `431`, answered by h2 itself: a request's header list over
    /// `http2_max_header_list_size`.
    Http2MaxHeaderListSize,
    /// HTTP/2 `RST_STREAM(REFUSED_STREAM)`, sent by h2 itself: a stream
    /// opened past `http2_max_concurrent_streams`; the connection serves on.
    Http2MaxConcurrentStreams,
    /// HTTP/2: a connection reached `http2_max_stalled_streams` streams
    /// waiting for the client's window; it takes no new stream meanwhile
    /// (counted once each time it reaches it).
    Http2MaxStalledStreams,
    /// A publish refused: the connection had published its
    /// `PublishRate`'s burst and its bucket had not refilled one since
    /// (the application asked `PublishRate::allow`); it stays open.
    PublishRate,
    /// A worker's accept loop found `TlsConfig::max_handshakes_in_flight`
    /// handshakes in flight with a TLS connection waiting: it waits (the
    /// connection stays in the kernel's backlog) until one leaves. Counted
    /// once each time.
    TlsHandshakesInFlight,
    /// A TLS connection refused right after its accept, before any TLS
    /// work: its client IP had made `TlsConfig::handshake_rate_per_ip`'s
    /// burst of connections and its bucket had not refilled one since.
    TlsHandshakeRatePerIp,
    /// HTTP/2 `GOAWAY(ENHANCE_YOUR_CALM)`: a connection's control frames
    /// (PING, SETTINGS, WINDOW_UPDATE, ...) cost more than
    /// `HTTP2_CONTROL_BUDGET` beyond what its requests and responses earned
    /// (a control-frame flood; not also counted as `h2_enhance_your_calm`).
    Http2ControlFlood,
    /// A connection refused at accept (per IP, accept rate, TLS handshake
    /// rate) answered at once, without waiting for its client's first
    /// bytes to choose its answer: the server's refusals waiting for
    /// theirs were at their bound (half the room `max_connections` and
    /// `fd_reserve` leave below the open-file limit, at most 1024), or its
    /// accept loop's were (64: the oldest of them is the one answered; with
    /// fewer than 16 accept loops this bound is the one met). Its client
    /// may read the wrong answer (an HTTP/2 one a `503`), or a TLS client
    /// a reset. Also counted under its refusal's own label.
    RefusalsWaiting,
    /// A TLS connection let in by forgetting another IP's bucket: the table of
    /// `TlsConfig::handshake_rate_per_ip`'s buckets held its bound of IPs
    /// (65,536) and its IP was not among them.
    TlsHandshakeRateTable,
    /// HTTP/2 `GOAWAY(ENHANCE_YOUR_CALM)`: a connection's tiny DATA frames
    /// went past `HTTP2_TINY_DATA_BUDGET` beyond what time, its larger DATA
    /// and its handlers' reads gave back (a tiny frame a handler reads gives
    /// its unit back, so an honest burst of small gRPC messages read as they
    /// come is not cut; what counts are tiny frames nobody reads: a
    /// small-DATA flood; not also `h2_enhance_your_calm`); or its empty
    /// DATA frames went past h2's count of 100, which ours meets first
    /// (an empty-DATA flood, its own line). See `proto/http2/flood.rs`.
    Http2DataFlood,
    /// An HTTP/2 connection's client opened its flow-control window a few
    /// bytes at a time, past `HTTP2_WINDOW_DRIP_BUDGET` rounds beyond what
    /// time gave back: its responses and upgraded streams slowed, not
    /// closed; counted once a connection.
    Http2WindowDrip,
    /// A connection refused at `max_connections` with nothing idle to close
    /// for it (`Builder::refuse_at_max_connections`): answered `503` with
    /// `Retry-After` on a cleartext HTTP listener, closed on the others,
    /// where it used to wait in the kernel's backlog with no answer.
    MaxConnections,
    /// An idle connection that could not park: its descriptor is above the
    /// parking lot's slot array (reserved once, for the hard open-file
    /// limit at the start, or less if the address space was refused). It
    /// stays awake as a task instead (counted each time it would park).
    ParkSlots,
    /// HTTP/2 `GOAWAY(ENHANCE_YOUR_CALM)`: a connection's client sent PINGs
    /// with nothing sent to it in between past `HTTP2_PING_BUDGET` beyond
    /// what time gave back (a PING flood; not also `h2_enhance_your_calm`).
    Http2PingFlood,
    /// An HTTP/2 connection's DATA that no handler has read reached
    /// `http2_max_unread_body_bytes` (its client's windows are shut until
    /// a handler reads: it waits, nothing is reset); counted once a
    /// connection. See `proto/http2/unread.rs`.
    Http2MaxUnreadBody,
    /// A request body's client sent slower than
    /// `Builder::min_request_body_rate` while its handler waited (or while
    /// an HTTP/1.1 connection drained it unread): the read failed, `408` if
    /// the response had not begun, and the connection closed (HTTP/1.1) or
    /// the stream ended (HTTP/2).
    MinRequestBodyRate,
    /// HTTP/1.1: a request body its handler left unread was, or was known
    /// by its `Content-Length` to be, over `Builder::max_drain_bytes`: not
    /// drained past it, the connection closes after the response.
    MaxDrainBytes,
    /// A connection the server closed did not finish its close within
    /// `Builder::linger_timeout`: its peer did not take the last bytes
    /// (a last response, the rest of a slow consumer's frame, its 1013),
    /// or did not close its end while the close lingered; closed anyway.
    /// Once a connection (`conn/io.rs`, `CloseBy`).
    LingerTimeout,
    /// An HTTP/2 stream whose handler keeps up with its upload was due a
    /// larger receive window, and the server's streams' windows had grown
    /// by `Builder::http2_grown_windows_budget` already: its window stays
    /// as it is (the upload goes on at its pace; nothing is refused or
    /// reset). Counted each time a growth is refused
    /// (`service/h2_body.rs`, `RecvBody::kept_up`).
    Http2GrownWindowsBudget,
}

/// A worker's count of each [`LimitHit`], indexed by it. A type of its
/// own because `Default` is derived for arrays of at most 32 elements,
/// and there are more labels.
#[derive(Debug)]
pub(crate) struct LimitCounters([AtomicU64; LimitHit::COUNT]);

impl Default for LimitCounters {
    fn default() -> Self {
        LimitCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl std::ops::Deref for LimitCounters {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        &self.0
    }
}

impl LimitHit {
    /// How many labels there are.
    pub(crate) const COUNT: usize = LimitHit::Http2GrownWindowsBudget as usize + 1;

    /// Metric labels, by discriminant.
    pub(crate) const LABELS: [&'static str; LimitHit::COUNT] = [
        "max_header_bytes",
        "max_headers",
        "max_body_bytes",
        "uri_too_long",
        "malformed_request",
        "http_version",
        "h2_enhance_your_calm",
        "ws_message_too_big",
        "ws_frame_too_big",
        "framed_max_frame_bytes",
        "framed_max_line_bytes",
        "framed_malformed",
        "hub_queue",
        "max_subscriptions",
        "max_topic_bytes",
        "tls_handshake_buffer",
        "push_unframable",
        "http2_max_header_list_size",
        "http2_max_concurrent_streams",
        "http2_max_stalled_streams",
        "publish_rate",
        "tls_handshakes_in_flight",
        "tls_handshake_rate_per_ip",
        "http2_control_flood",
        "refusals_waiting",
        "tls_handshake_rate_table",
        "http2_data_flood",
        "http2_window_drip",
        "max_connections",
        "park_slots",
        "http2_ping_flood",
        "http2_max_unread_body_bytes",
        "min_request_body_rate",
        "max_drain_bytes",
        "linger_timeout",
        "http2_grown_windows_budget",
    ];

    /// Counts one hit in the worker's counters.
    pub(crate) fn count(self, stats: &WorkerStats) {
        incr(&stats.limit_hits[self as usize]);
    }

    /// Counts `n` hits at once (a message many connections missed).
    pub(crate) fn count_n(self, stats: &WorkerStats, n: u64) {
        add(&stats.limit_hits[self as usize], n);
    }
}

impl From<crate::observe::close::FramingError> for LimitHit {
    fn from(e: crate::observe::close::FramingError) -> LimitHit {
        use crate::observe::close::FramingError;
        match e {
            FramingError::FrameTooLarge => LimitHit::FramedFrameTooLarge,
            FramingError::LineTooLong => LimitHit::FramedLineTooLong,
            // (A framed connection never reads `NotAnEvent`: it is an
            // event stream's push, counted as `push_unframable`.)
            FramingError::BadHeader | FramingError::NotUtf8 | FramingError::NotAnEvent => {
                LimitHit::FramedMalformed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each hit lands in its own slot, and every slot has a label.
    #[test]
    fn labels_line_up_with_the_counters() {
        let stats = WorkerStats::default();
        LimitHit::Http2GrownWindowsBudget.count(&stats);
        LimitHit::MaxHeaderBytes.count(&stats);
        assert_eq!(
            LimitHit::Http2GrownWindowsBudget as usize,
            LimitHit::COUNT - 1
        );
        let hits: Vec<u64> = stats
            .limit_hits
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(hits[0], 1);
        assert_eq!(hits[LimitHit::COUNT - 1], 1);
        assert_eq!(hits.iter().sum::<u64>(), 2);
    }

    /// The README's list of `megaconn_limit_hits_total` labels (the
    /// paragraph after the `/metrics` example) names every label, and
    /// every bare snake_case name it puts in backticks is a label or one of
    /// the few other things it mentions: a label added without its line
    /// there, or a line left for a label gone, fails here.
    #[test]
    fn the_readme_lists_every_label() {
        let readme = include_str!("../../../../README.md");
        let start = readme
            .find("`megaconn_limit_hits_total{limit}` does, one series per")
            .expect("README lists the limit_hits labels");
        let list = &readme[start..];
        let list = &list[..list
            .find("Log lines a peer can repeat")
            .expect("end of the list")];
        // Named in the list, but not labels: close reasons, an alert, a
        // module and the knob a label is named after.
        const NOT_LABELS: [&str; 3] = ["tls_handshake_failed", "decode_error", "axum_ws"];
        let named: std::collections::BTreeSet<&str> = list
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .filter(|w| !NOT_LABELS.contains(w))
            .collect();
        let labels: std::collections::BTreeSet<&str> = LimitHit::LABELS.into_iter().collect();
        assert_eq!(
            named.difference(&labels).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "README names these as limit_hits labels; the code has no such label"
        );
        assert_eq!(
            labels.difference(&named).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "README's limit_hits list leaves these labels out"
        );
    }
}
