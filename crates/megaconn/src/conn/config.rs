//! Every knob of the server, with its default and the reason for it.
//!
//! [`Builder`](crate::Builder) is the public face; this module owns the values. Each
//! timeout or interval is an `Option<Duration>` where `None` disables it, and so
//! does `Some(Duration::ZERO)`, as in Go's `http.Server` and the CLI (where zero
//! disables): a zero timeout would fire at once and a zero interval spin, which
//! no caller means. Every such setter of the library (here, `Builder`'s framed
//! and WebSocket settings, `TlsConfig::handshake_timeout`) stores its value
//! through [`zero_is_off`], so the rule holds in one place.

use std::net::SocketAddr;
use std::time::Duration;

/// A duration setting as it is stored: `Some(Duration::ZERO)` is off, as
/// `None` is (see the module doc), and one longer than [`LONGEST`] is
/// [`LONGEST`].
pub(crate) fn zero_is_off(t: Option<Duration>) -> Option<Duration> {
    t.filter(|t| !t.is_zero()).map(|t| t.min(LONGEST))
}

/// The longest a duration setting is kept as: 30 years, tokio's own "far
/// future". Deadlines are `now + setting`; `Instant + Duration::MAX`
/// panics ("overflow when adding duration to instant"), so a caller who
/// writes `Some(Duration::MAX)` for "never" would have had every
/// connection panic at its first wait.
pub(crate) const LONGEST: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Default for how long a client may take to send a complete request head,
/// counted from accept or from the first byte of the next keep-alive request.
/// Ten seconds is generous for any real client and short enough to shed slowloris.
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for how long a keep-alive connection may wait for its next request.
/// Sixty seconds outlives the idle pools of common clients and load balancers.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default for how long graceful shutdown waits for in-flight requests.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`Builder::linger_timeout`](crate::Builder::linger_timeout):
/// how long a connection the server closes may take, from when its close
/// begins, to write its last bytes (a last response, the rest of a slow
/// consumer's frame and its close 1013, a TLS `close_notify`) and to
/// linger, reading and discarding what its peer still sends so that the
/// close is not a reset that destroys that answer, before its socket is
/// closed anyway. Two seconds, as Apache httpd lingers
/// (`SECONDS_TO_LINGER`); Go waits 500 ms after shutting its write side
/// (`rstAvoidanceDelay`, not a setting), nginx reads for up to 30 s
/// (`lingering_time`) in waits of up to 5 s each (`lingering_timeout`),
/// hyper does not linger. Time enough for a last answer and the peer's own
/// close to cross any real path; a peer that never reads, or never closes
/// its end, holds its connection (a task, a descriptor) for no longer.
pub const DEFAULT_LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Default [`WebSocketRoute::close_timeout`](crate::WebSocketRoute::close_timeout):
/// how long the server waits for the peer's close frame after sending its
/// own. Here, below both, because the native route and `axum_ws` (whose
/// close 1001 at shutdown waits as long) share it.
pub const DEFAULT_WS_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default [`Builder::message_send_buffer_size`](crate::Builder::message_send_buffer_size):
/// `SO_SNDBUF` of 256 KiB on each message connection (a native WebSocket
/// or an `axum_ws` socket once upgraded, a framed TCP one once accepted),
/// which Linux doubles for
/// its bookkeeping (and caps at `net.core.wmem_max`, 208 KiB on a stock
/// kernel). The kernel's autotuning lets a socket's send queue grow to
/// `tcp_wmem`'s maximum (4 MiB by default) before a write would block, and
/// a subscriber that stops reading is only found slow (and closed) once
/// its socket is full: 1,000 `/ws/chat` clients that read nothing, sent
/// 100 publishes of 60 KB, held 2.3 GB of the kernel's memory for 6 MB
/// published, and stayed open. Bounded, the hub's slow-consumer close
/// comes after about half a MiB, and what waits beyond it waits in the
/// user-space queue, where a message published to many is one copy.
/// 256 KiB keeps a loopback or LAN reader at full speed; a high
/// bandwidth × delay path (100 Mbit/s at 100 ms is 1.25 MB in flight)
/// needs more for one fast stream.
pub const DEFAULT_MESSAGE_SEND_BUFFER: usize = 256 << 10;

/// Default cap on the request line plus headers (64 KiB, like Go's 1 MiB but
/// tighter: no legitimate client sends more, and the read buffer grows to it).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Default cap on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Hard ceiling for `max_headers`: the parser's header array lives on the stack.
pub const MAX_HEADERS_CEILING: usize = 512;

/// Default cap on a request body (16 MiB). Larger uploads should opt in.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// How much of an unread request body the server reads and discards after the
/// handler answered, to keep the connection usable. Past it the connection
/// closes, and a body known (its `Content-Length`) to be longer is not read
/// at all. 256 KiB, Go's figure
/// (`maxPostHandlerReadBytes`): a reused connection saves a handshake and a
/// round trip, worth a few hundred KiB on a fast link, never megabytes.
pub const DEFAULT_MAX_DRAIN_BYTES: u64 = 256 * 1024;

/// Default minimum rate, in bytes a second, at which an HTTP/1.1 or
/// HTTP/2 client must send a request body while its handler waits for it
/// ([`Builder::min_request_body_rate`](crate::Builder::min_request_body_rate)).
/// Kestrel's figure: 240 B/s is a 2 kbit/s link, under any real network
/// an upload crosses, and ~480 KB/s of upload for whoever would hold
/// 2,000 connections with bodies (one byte every 20 s held them for good).
pub const DEFAULT_MIN_REQUEST_BODY_RATE: u32 = 240;

/// Default grace of [`DEFAULT_MIN_REQUEST_BODY_RATE`]: the waiting a
/// body's client may spend before its bytes have earned any (5 s,
/// Kestrel's: TCP slow start, a 100-continue round trip, a phone's radio
/// waking).
pub const DEFAULT_MIN_REQUEST_BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// Default for how long a keep-alive connection idles as a task before it is
/// parked (see `park.rs`). Two seconds: busy connections (a request every few
/// hundred milliseconds) never pay the park/unpark cost, cold ones stop costing
/// memory quickly.
pub const DEFAULT_PARK_IDLE_AFTER: Duration = Duration::from_secs(2);

/// Default for how long a worker's event loop may be away (a handler
/// blocking its thread) before it is reported as stalled. A second is far
/// past any healthy poll and short enough to point at the culprit.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(1);

/// Default listen backlog: large, so bursts queue in the kernel rather than fail.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// File descriptors kept free below the open-file limit when deriving the default
/// `max_connections`, for log files, DNS, admin connections and the like.
pub const FD_HEADROOM: usize = 256;

/// Descriptors the accepts leave free below the open-file limit by default
/// (`Builder::fd_reserve`): room for the admin listener's connections (a
/// scrape or two), a log file, a DNS lookup or a certificate re-read while
/// the connections have taken the rest. Far inside [`FD_HEADROOM`], so a
/// server at its default `max_connections` never reaches it.
pub const DEFAULT_FD_RESERVE: usize = 32;

/// Default for how many streams a client may have open at once on one
/// connection (`SETTINGS_MAX_CONCURRENT_STREAMS`). 128, as nginx's (hyper's
/// 200, Go's 250): above RFC 9113's advice of at least 100 and what browsers
/// use, and it bounds what one connection can make h2 keep: each stream
/// opened and queued behind a shut window holds ~690 B in h2's slabs, which
/// never shrink while the connection lives (250 streams: ~280 KB a
/// connection, 128: ~196 KB, `bench/ATTACK-MEMORY.md`). A client wanting more
/// long-lived streams at once queues the rest on its side.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;

/// Default for how many of a connection's streams may wait for the client's
/// flow-control window before the first byte of their response body
/// (`Builder::http2_max_stalled_streams`). Past it the connection takes no
/// new stream until one gets room or ends: a client that keeps its windows
/// shut holds 32 exchanges, not `http2_max_concurrent_streams` (128), each
/// for `write_stall_timeout`. 32: no browser, curl or gRPC client opens
/// windows that small (they start at 64 KiB to 15 MiB); a client whose many
/// downloads share a small connection window only sees its next requests
/// wait for that window, not fail.
pub const DEFAULT_HTTP2_MAX_STALLED_STREAMS: u32 = 32;

/// Default for how much request body an HTTP/2 client may send on one
/// connection ahead of its handlers reading it, all its streams together
/// (`Builder::http2_max_unread_body_bytes`): the receive windows are
/// capped at it, so past it the client waits for a handler to read.
/// 128 KiB, nginx's order (it held ~83 KiB a connection of uploads nobody
/// read, `bench/ATTACK-MEMORY.md`); the 1 MiB connection window let 400
/// connections make the server hold 444 MB (session 48). A stream starts
/// with half of it as its window, ~1.3 MB/s at a 50 ms round trip; one
/// whose handler keeps up with it grows its window (to
/// [`DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW`], within
/// [`DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET`] for the server:
/// `service/h2_body.rs`, session 51).
pub const DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES: u32 = 128 * 1024;

/// Default for the largest receive window an HTTP/2 request body's stream
/// grows to while its handler keeps up with its upload
/// ([`Builder::http2_max_grown_stream_window`](crate::Builder::http2_max_grown_stream_window)):
/// 4 MiB, ~80 MB/s over a 50 ms round trip, where the 64 KiB a stream
/// starts with (half of [`DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES`]) gave
/// ~1.3 MB/s (an 8 MiB upload took 6.8 s, 0.55 s under tonic, whose
/// windows are 1 MiB; `bench/H2-UPLOAD.md`). A window a handler keeps up
/// with holds nothing unread: growing it costs memory only if the handler
/// then stops reading, and then at most this a stream, within
/// [`DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET`] in all.
pub const DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW: u32 = 4 << 20;

/// Default for what all of a server's HTTP/2 streams' windows may have
/// grown beyond the window they started with, together
/// ([`Builder::http2_grown_windows_budget`](crate::Builder::http2_grown_windows_budget)):
/// 64 MiB, so that uploads whose handlers kept up, then stopped reading,
/// make the server hold at most this beyond each connection's
/// [`DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES`], however many connections
/// there are (400 connections at 4 MiB each would be 1.6 GB). Sixteen
/// uploads at the full 4 MiB at once; past it a window does not grow (its
/// upload goes on at the pace of the window it has) until a grown one is
/// given back.
pub const DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET: u64 = 64 << 20;

/// Default per-stream receive window: how much request body a client may send
/// ahead of the handler reading it (256 KiB, capped at half of
/// [`DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES`]: 64 KiB in effect).
pub const DEFAULT_HTTP2_STREAM_WINDOW: u32 = 256 * 1024;

/// Default connection receive window (1 MiB), capped by
/// [`DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES`]: the smaller of the two is the
/// window a client gets, and bounds what one connection can make us buffer.
pub const DEFAULT_HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Default largest frame payload we accept (the protocol's minimum, 16 KiB).
pub const DEFAULT_HTTP2_MAX_FRAME_SIZE: u32 = 16 * 1024;

/// Default largest decoded request header list (64 KiB, as HTTP/1.1's
/// `max_header_bytes`).
pub const DEFAULT_HTTP2_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Default wait for the answer to a keep-alive PING before the connection is
/// closed.
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Default for the response bytes an HTTP/2 stream has buffered before its
/// body is polled again
/// ([`Builder::http2_max_send_buffer`](crate::Builder::http2_max_send_buffer);
/// h2's `max_send_buffer_size`, which grants a stream room by the peer's
/// windows, a browser's 6 MiB, until the stream has this much queued):
/// 64 KiB. A slow client's stream holds it all the time, beside the body's
/// frame and `ServeDir`'s file buffer: 413 KB of RSS a slow h2c download
/// of 64 KiB chunks at 256 KiB (h2's own default is ~400 KB), 220 KB at
/// 64 KiB, 227 KB at 32 KiB (500 clients at 20 kB/s; nginx 19 KB). A fast
/// download lost nothing measurable at 64 KiB (1 GiB over loopback, one
/// client, interleaved: server CPU a GiB median 0.84 s against 0.97 s;
/// 746 against 777 MB/s on average in one run, 686 against 706 in
/// another, within the rounds' spread; at 32 KiB 598 MB/s against 777). A
/// long round trip was not measured: the socket's send buffer, which the
/// connection fills from here between two polls of the stream, should
/// cover it. `bench/FILES.md`, session 58.
pub const DEFAULT_HTTP2_MAX_SEND_BUFFER: u32 = 64 * 1024;

/// TCP keepalive probes, so the kernel notices peers that vanished silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

/// An accept-rate limit: a token bucket refilled at `per_second`, holding at
/// most `burst` tokens. Each worker gets an equal share (the kernel spreads
/// connections evenly across workers), so no lock is shared, unless the
/// burst is below the worker count: then they share one bucket
/// ([`Builder::accept_rate`](crate::Builder::accept_rate)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcceptRate {
    /// Sustained new connections per second, for the whole server.
    pub per_second: f64,
    /// Connections accepted at once after a quiet period.
    pub burst: u32,
}

/// A step of a worker's start that a test makes fail
/// ([`Builder::fail_worker_start_for_test`](crate::Builder::fail_worker_start_for_test)).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStartFailure {
    /// Making its parking lot fails with `EMFILE`, as at the open-file
    /// limit.
    Lot,
    /// Registering its listening sockets fails with `ENOSPC`, as at the
    /// user's epoll watch limit.
    Register,
    /// Its thread panics as it sets the worker up, before it takes its
    /// listening sockets, as a bug there would.
    Panic,
    /// Starting the server's thread that joins its workers fails with
    /// `EAGAIN`, as at the thread limit (give worker 0).
    JoinThread,
    /// Starting the server's stall watchdog thread fails with `EAGAIN`
    /// (give worker 0).
    StallWatchThread,
}

/// The resolved configuration a server runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub addrs: Vec<SocketAddr>,
    pub workers: usize,
    pub read_header_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub park_idle_after: Option<Duration>,
    /// The parking lot's wake-up batching window (park.rs `run`); zero: off.
    pub park_wake_batch: Duration,
    pub shutdown_timeout: Duration,
    /// How long a close may take to write its last bytes and linger
    /// (`conn/io.rs`, `CloseBy`); zero: what the socket takes at once,
    /// never counted as a limit hit.
    pub linger_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_drain_bytes: u64,
    /// The request body rate below which a handler's wait for body bytes
    /// fails, in bytes a second, on HTTP/1.1 and HTTP/2
    /// (`service/body_rate.rs`, `BodyRate`); `None`: no bound but the
    /// stall's.
    pub min_request_body_rate: Option<u32>,
    /// The waiting `min_request_body_rate` allows a body before its bytes
    /// earned any.
    pub min_request_body_rate_grace: Duration,
    pub max_connections: Option<usize>,
    /// At `max_connections` with nothing idle to close: refuse the next
    /// connection (`503`) instead of leaving it in the backlog.
    pub refuse_at_max_connections: bool,
    pub accept_rate: Option<AcceptRate>,
    pub max_connections_per_ip: Option<u32>,
    /// Sources whose connections start with a PROXY protocol header
    /// (`conn/proxy_header.rs`); `None`: no connection's is read.
    pub proxy_protocol: Option<crate::conn::proxy_header::TrustedProxies>,
    /// Listeners with a list of their own instead
    /// (`Builder::proxy_protocol_on`): by position in `addrs` (`None`: no
    /// listener was added at the address given, which `validate` refuses),
    /// the address, and the list (`None`: no header read there).
    pub proxy_protocol_listeners: Vec<crate::conn::proxy_header::ListenerProxies>,
    /// Descriptors the accepts leave free below the open-file limit
    /// (`fd_reserve.rs`); 0: none.
    pub fd_reserve: usize,
    pub keep_alive: bool,
    pub server_header: Option<http::HeaderValue>,
    pub backlog: u32,
    pub nodelay: bool,
    pub defer_accept: Option<Duration>,
    pub tcp_keepalive: Option<KeepaliveConfig>,
    pub recv_buffer_size: Option<usize>,
    pub send_buffer_size: Option<usize>,
    /// `SO_SNDBUF` set on each message connection (native WebSocket at its
    /// upgrade, framed TCP at accept); `None`: left as accepted.
    pub message_send_buffer_size: Option<usize>,
    /// Share the port with other processes of ours (worker processes): skip the
    /// "already in use" probe.
    pub reuse_port_shared: bool,
    /// HTTP/2 settings (h2.rs).
    pub http2: Http2Config,
    /// What the server's HTTP/2 streams' windows have grown by now, in
    /// all, against `http2.grown_windows_budget` (`service/h2_body.rs`
    /// takes from it and gives back). State, not a setting: here because
    /// the configuration is what one server's workers share. A fresh one
    /// for each server (`Builder::listen`); the connections that one
    /// builder serves itself (`Builder::serve_connection`) share its own.
    pub http2_grown_windows: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// TLS for every listener, or for those in `tls_listeners` (tls.rs);
    /// `None` is cleartext.
    pub tls: Option<crate::conn::tls::TlsConfig>,
    /// Positions in `addrs` of the listeners served over TLS; empty: all of
    /// them when `tls` is set (tls.rs), but those in `cleartext_listeners`.
    pub tls_listeners: Vec<usize>,
    /// Positions in `addrs` of listeners that are never TLS, whatever `tls`
    /// says (cleartext framed listeners: `Builder::listen_framed_on`).
    pub cleartext_listeners: Vec<usize>,
    /// Listening sockets handed to the server (socket activation), by their
    /// position in `addrs`; shared by every worker.
    pub inherited: Vec<(usize, std::sync::Arc<std::net::TcpListener>)>,
    /// Listening sockets taken over from a running server (an upgrade): an
    /// address whose sockets are here is served by them instead of new ones.
    pub adopted: Vec<std::sync::Arc<std::net::TcpListener>>,
    /// Idle connections closed per second (whole server) at shutdown;
    /// `None`: all at once.
    pub shutdown_drain_rate: Option<u32>,
    /// A connection older than this is closed at its next idle point.
    pub max_connection_age: Option<Duration>,
    /// Called on every connection open and close (lifecycle.rs).
    pub on_connection: Option<crate::observe::lifecycle::ConnectionHook>,
    /// Keep a live list of connections and their states (lifecycle.rs).
    pub track_connections: bool,
    /// Log one line per request (target `megaconn::access`).
    pub access_log: bool,
    /// The framed protocol's listeners, handler and heartbeat (`proto/framed`),
    /// opaque here: the core does not know protocols.
    pub framed: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    /// The message layer's settings (`message/`: the hub, the outbound
    /// queue bound), opaque here for the same reason.
    pub message: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    /// Hand each request its connection's addresses ([`ConnInfo`](crate::ConnInfo),
    /// and axum's `ConnectInfo<SocketAddr>`).
    pub connect_info: bool,
    /// How long a worker's event loop may stay away before the stall
    /// detector reports it (server/stall.rs); `None` turns it off.
    pub stall_threshold: Option<Duration>,
    /// OpenTelemetry: a span per request (observe/trace.rs); zero-sized
    /// without the `otel` feature.
    pub tracing: crate::observe::trace::Hook,
    /// A step of a worker's start made to fail, for tests only
    /// (`Builder::fail_worker_start_for_test`).
    pub fail_worker_start: Option<(WorkerStartFailure, usize)>,
}

impl Config {
    /// The position in `addrs` of the listener a connection to `local`
    /// arrived on: the one bound at `local`, else a wildcard address's
    /// (`0.0.0.0`, `[::]`) on its port, of `local`'s address family
    /// first. `addrs` holds the bound addresses once the server listens
    /// (the requested ones before: a builder asks with those). The one
    /// search for every setting held per listener: its TLS
    /// (`tls::tls_for_local`), its framing (`proto/framed`), its own
    /// `proxy_protocol` list (`proxy_header.rs`).
    ///
    /// Why the family first: beside `0.0.0.0:P`, `[::]:P` is bound
    /// `IPV6_V6ONLY` (`socket.rs`, `needs_v6_only`), so they are two
    /// listeners with maybe settings of their own, and an IPv4
    /// connection (local `127.0.0.1:P`) came in on the first, whichever
    /// was added first. A dual-stack `[::]:P` alone sees its IPv4
    /// clients as IPv6 (`::ffff:a.b.c.d`), of its family; the other
    /// family's wildcard is the fallback all the same.
    pub(crate) fn listener_at(&self, local: SocketAddr) -> Option<usize> {
        let addrs = &self.addrs;
        let wildcard = |same_family: bool| {
            addrs.iter().position(|a| {
                a.port() == local.port()
                    && a.ip().is_unspecified()
                    && (!same_family || a.is_ipv4() == local.is_ipv4())
            })
        };
        addrs
            .iter()
            .position(|&a| a == local)
            .or_else(|| wildcard(true))
            .or_else(|| wildcard(false))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addrs: Vec::new(),
            workers: default_workers(),
            read_header_timeout: Some(DEFAULT_READ_HEADER_TIMEOUT),
            read_timeout: None,
            write_timeout: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            park_idle_after: Some(DEFAULT_PARK_IDLE_AFTER),
            park_wake_batch: Duration::ZERO,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            linger_timeout: DEFAULT_LINGER_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_drain_bytes: DEFAULT_MAX_DRAIN_BYTES,
            min_request_body_rate: Some(DEFAULT_MIN_REQUEST_BODY_RATE),
            min_request_body_rate_grace: DEFAULT_MIN_REQUEST_BODY_RATE_GRACE,
            max_connections: None,
            refuse_at_max_connections: false,
            accept_rate: None,
            max_connections_per_ip: None,
            proxy_protocol: None,
            proxy_protocol_listeners: Vec::new(),
            fd_reserve: DEFAULT_FD_RESERVE,
            keep_alive: true,
            server_header: None,
            backlog: DEFAULT_BACKLOG,
            nodelay: true,
            defer_accept: None,
            tcp_keepalive: None,
            recv_buffer_size: None,
            send_buffer_size: None,
            message_send_buffer_size: Some(DEFAULT_MESSAGE_SEND_BUFFER),
            reuse_port_shared: false,
            http2: Http2Config::default(),
            http2_grown_windows: Default::default(),
            tls: None,
            tls_listeners: Vec::new(),
            cleartext_listeners: Vec::new(),
            inherited: Vec::new(),
            adopted: Vec::new(),
            shutdown_drain_rate: None,
            max_connection_age: None,
            on_connection: None,
            track_connections: false,
            access_log: false,
            connect_info: false,
            stall_threshold: Some(DEFAULT_STALL_THRESHOLD),
            framed: None,
            message: None,
            tracing: Default::default(),
            fail_worker_start: None,
        }
    }
}

/// One worker per core the process may run on.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The default connection limit: the open-file limit (raised to its hard cap
/// first) minus [`FD_HEADROOM`], so normal load never meets `EMFILE`.
pub(crate) fn default_max_connections() -> usize {
    let limit = raise_nofile_limit();
    limit.saturating_sub(FD_HEADROOM).max(16)
}

/// A configured connection limit `n`, checked against the open-file limit
/// (raised to its hard cap first, as for the default): a limit above it less
/// [`FD_HEADROOM`] is kept, and a warning says what will happen. It used to
/// be taken in silence, and the soft limit left unraised.
pub(crate) fn checked_max_connections(n: usize) -> usize {
    let files = raise_nofile_limit();
    let room = files.saturating_sub(FD_HEADROOM);
    if n > room {
        tracing::warn!(
            max_connections = n,
            open_file_limit = files,
            "max_connections is above what the open-file limit allows: past about {room} connections accepts fail (EMFILE, counted in megaconn_accept_errors_total); raise the limit (ulimit -n, LimitNOFILE= under systemd) or lower max_connections"
        );
    }
    n
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as Go's runtime does) and
/// returns the resulting soft limit.
pub(crate) fn raise_nofile_limit() -> usize {
    let Some(mut lim) = nofile() else {
        return 1024;
    };
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// The soft open-file limit now, as it is (`None` if it cannot be read).
pub(crate) fn open_file_limit() -> Option<usize> {
    nofile().map(|lim| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// `RLIMIT_NOFILE`, soft and hard.
fn nofile() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// The limits that apply while parsing a head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
}

/// HTTP/2 settings, set through the `Builder::http2_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http2Config {
    pub prior_knowledge: bool,
    pub max_concurrent_streams: u32,
    /// Streams that may wait for their first room (`proto/http2/stall.rs`);
    /// `None`: no limit.
    pub max_stalled_streams: Option<u32>,
    pub stream_window: u32,
    pub connection_window: u32,
    /// Request body a client may send ahead of its handlers, all of a
    /// connection's streams together: both windows are capped at it.
    pub max_unread_body: u32,
    /// The largest a stream's window grows to while its reader keeps up
    /// (`service/h2_body.rs`, `RecvBody::kept_up`); 0: no growth.
    pub max_grown_stream_window: u32,
    /// What a server's streams' windows may have grown by, together; 0:
    /// no growth.
    pub grown_windows_budget: u64,
    pub max_frame_size: u32,
    pub max_header_list_size: u32,
    pub keep_alive_interval: Option<Duration>,
    pub keep_alive_timeout: Duration,
    /// Send `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441): clients may
    /// open WebSockets (`:protocol websocket`) on a stream.
    pub enable_connect_protocol: bool,
    /// Response bytes a stream buffers before its body is polled again
    /// (h2's `max_send_buffer_size`).
    pub max_send_buffer: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            prior_knowledge: true,
            max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            max_stalled_streams: Some(DEFAULT_HTTP2_MAX_STALLED_STREAMS),
            stream_window: DEFAULT_HTTP2_STREAM_WINDOW,
            connection_window: DEFAULT_HTTP2_CONNECTION_WINDOW,
            max_unread_body: DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES,
            max_grown_stream_window: DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW,
            grown_windows_budget: DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET,
            max_frame_size: DEFAULT_HTTP2_MAX_FRAME_SIZE,
            max_header_list_size: DEFAULT_HTTP2_MAX_HEADER_LIST_SIZE,
            keep_alive_interval: None,
            keep_alive_timeout: DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            enable_connect_protocol: true,
            max_send_buffer: DEFAULT_HTTP2_MAX_SEND_BUFFER,
        }
    }
}

/// Largest value a window may have (2^31 - 1).
pub(crate) const MAX_WINDOW: u32 = (1 << 31) - 1;
