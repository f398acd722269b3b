//! The control-frame flood guard: what a connection's frames that do no
//! work may cost, counted from their 9-byte headers as they stream by
//! (CVE-2019-9512 PING flood, CVE-2019-9515 SETTINGS flood, CVE-2019-9518's
//! empty frames, and the rest of the family: `WINDOW_UPDATE`, `PRIORITY`,
//! `RST_STREAM`, frame types h2 does not know).
//!
//! Each such frame costs the server little (a PING ~0.84 µs with its
//! answer, a SETTINGS ~1 µs, the others 4–10 µs per KiB: the session 38 CPU
//! audit), but nothing in h2 bounds how many a connection sends: h2 bounds
//! only their memory (one PING or SETTINGS answer pending at a time; it
//! reads no further frame while its answer waits for the socket). A client
//! could keep a worker busy with them for good, and the operator saw
//! nothing.
//!
//! The rule, in nginx's spirit (`ngx_http_v2.c`: it closes a connection with
//! "http2 flood detected" once all the bytes it received are over 8 times
//! the payload bytes that did work, plus 1 MiB): a connection has a budget
//! of [`HTTP2_CONTROL_BUDGET`] bytes, full at the start.
//!
//! - Every frame received other than `HEADERS`, `CONTINUATION` and a
//!   non-empty `DATA` takes its size (header and payload) out of it.
//! - Work puts bytes back, up to the budget: each request handed to the
//!   service [`REQUEST_CREDIT`] (what a client says about its streams:
//!   `RST_STREAM`, `PRIORITY`, `PRIORITY_UPDATE`), each non-empty `DATA`
//!   frame we send [`DATA_FRAME_CREDIT`] (what a client says about what it
//!   receives: `WINDOW_UPDATE`s, and gRPC's bandwidth-probing PINGs, one per
//!   burst of data received), each PING or SETTINGS we send the size of its
//!   acknowledgement, and time, [`REFILL_PER_SECOND`] (keep-alive PINGs on
//!   a connection whose stream stays open for days).
//! - Past zero, the connection is closed with `GOAWAY(ENHANCE_YOUR_CALM)`
//!   (`serve`), and no byte more of it is read. The frames before the one
//!   that ran it out, in the same read, are handed to h2 and processed as
//!   any others (session 45; before, that read was dropped whole): a batch
//!   of PINGs sees each PING within the budget answered, then the GOAWAY,
//!   then the close, in that order (RFC 9113 §6.7: a PING MUST be
//!   answered; those past the budget are refused with the connection).
//!
//! Tiny DATA frames (CVE-2019-9518's small-DATA flood) have a budget of
//! their own, [`HTTP2_TINY_DATA_BUDGET`] frames: each non-final DATA frame
//! with fewer than [`TINY_DATA_FRAME`] bytes on the wire (payload and
//! padding) takes one out as it arrives, and gives it back when a reader
//! takes it out of h2 (a request body's handler, an upgraded stream's
//! reader: `ReadCredit`, session 45); each [`BYTES_PER_TINY_DATA_FRAME`]
//! of larger DATA frames' bytes puts one back, and so does time,
//! [`TINY_DATA_PER_SECOND`] (all up to the budget). Past zero, the same
//! close, counted as `http2_data_flood`. So the budget counts the tiny
//! frames that do no work: held unread, sent to a body its handler
//! dropped, or freed unread by h2 when their stream is reset (h2 gives
//! its own small-frame budget back then, so a client that sends a
//! window's worth of tiny frames to a stream nobody reads, resets it and
//! starts again was stopped by nothing else). A frame a handler reads did
//! the work it was sent for, whatever its size: an honest stream of small
//! messages (gRPC's empty or near-empty ones: a 5-byte prefix, a pipe's
//! short writes, a WebSocket's small messages over HTTP/2) is never cut,
//! at whatever pace its handler takes them, as long as it is no more than
//! ~2,000 frames ahead of it (h2's own budget for frames buffered unread
//! is about the same). Ours gives frames back with time and h2's does not,
//! so a flood read over more than ~50 ms reached h2's bound first, which
//! closed the connection with h2's `GOAWAY` and no line of ours: since
//! session 53 each read is also held to what is left of h2's budget (read
//! through h2, `patches/h2`), and the frame that would run it out is
//! refused by ours, counted and logged as a small-DATA flood
//! (`FloodBudget::h2_refuses`), small frames of 16–255 bytes included,
//! which h2 alone bounded. Until session 45 read frames were charged too, and
//! a gRPC client streaming near-empty messages faster than 1,000 a second
//! for two seconds (a backlog flushed after a reconnect) was cut.
//!
//! What a read tiny frame costs, and why that is not a flood: 1–3 µs of
//! server CPU (a wake-up and a poll of the handler, an echo's write), the
//! application's work for a message it asked for; per byte the client
//! sends, less than an honest `GET /` costs (`bench/H2TLS.md`, "Session
//! 45", measures both in one run). Elsewhere: nginx counts a DATA
//! frame's payload as work when it goes to a request's body
//! (`ngx_http_v2_state_read_data`: `payload_bytes`), and closes a
//! connection only once all it received is over 8 times that work plus
//! 1 MiB (`ngx_http_v2_read_handler`, "http2 flood detected"): a 1-byte
//! DATA frame adds 0.25 bytes to the excess, one of 2 bytes or more none;
//! Go's x/net/http2 server writes each DATA frame's bytes into the
//! stream's pipe (`processData`) and bounds them by flow control only; h2
//! charges a frame under 256 bytes as it arrives and gives it back when
//! the handler polls it out or its stream's buffer is cleared
//! (`record_data_frame`, `release_data_frame`): memory, not CPU. Tiny
//! payloads padded to 16 bytes or more on the wire are not tiny here:
//! they cost what 16-byte frames do, per byte the client sends.
//!
//! PINGs have a budget of their own too, [`HTTP2_PING_BUDGET`] PINGs:
//! a PING received with nothing of ours sent since the client's last one
//! (no HEADERS, no non-empty DATA: grpc-go's rule for its strikes) takes
//! one out, time gives back [`PINGS_PER_SECOND`]; past zero the same
//! close, counted as `http2_ping_flood`. Why: the control budget bounds
//! PINGs by bytes, ~3,860 of them, which costs nothing batched (~0.25 µs
//! each, h2 answering a read's PINGs in one write) but 32–38 µs each paced
//! one per round trip (a wake-up, a read, an answer's write: 123–148 ms of
//! server CPU a connection, `bench/H2TLS.md`, "Session 42"). Now ~100
//! (3.2–11.2 ms measured, `bench/H2TLS.md`, "Session 43"), then 1 a
//! second (~50 µs of CPU a second). Why not slowed,
//! as the drip is: a PING is answered by h2 as it reads it, so slowing it
//! means slowing the connection's reads, every stream's requests and
//! `WINDOW_UPDATE`s behind it, without bound for a client that pings a
//! little faster than the refill; a close is what gRPC clients know
//! (grpc-go's server sends `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")`,
//! and its client doubles its keep-alive interval on it). Why it never cuts
//! an honest client: a PING after a response or DATA we sent is free (a
//! health check before each request, gRPC's and hyper's bandwidth probes,
//! one per burst of data received), and a keep-alive with nothing else on
//! the connection is far under 1 a second (gRPC clients may not go below
//! one every 10 s; Go's `ReadIdleTimeout` and browsers ping after idle
//! periods). Elsewhere: grpc-go's `keepalive.EnforcementPolicy` is far
//! stricter, `MinTime` 5 minutes by default, a PING sooner after the last
//! with no data or headers sent since is a strike, the third closes
//! (`internal/transport/http2_server.go`, `handlePing`, `maxPingStrikes`
//! 2; with no stream open and `PermitWithoutStream` off, 2 hours); nginx
//! and Go's x/net/http2 bound none (they answer each PING; Go bounds the
//! memory of queued answers, `maxQueuedControlFrames`).
//!
//! A client that opens its flow-control window a few bytes at a time
//! (`WINDOW_UPDATE` of 1, each answered by a 1-byte DATA frame) has a
//! budget of its own, [`HTTP2_WINDOW_DRIP_BUDGET`] rounds, counted where
//! the response waits (`send_body` in `http2.rs`, through `StallGate`, and
//! an upgraded stream's writes, `service/h2_stream.rs`: one budget a
//! connection, one rule, `drip_wait`): a
//! wait for room in the client's windows that ends with a grant of fewer
//! than [`DRIP_GRANT`] bytes while more of the response waits (the grant
//! is less than what the stream asked for), with fewer than [`DRIP_GRANT`]
//! bytes of DATA sent on the connection since the last such grant, takes
//! one out; time gives back
//! [`DRIP_ROUNDS_PER_SECOND`]. Past zero the connection is not closed
//! but slowed: each further round waits until time has given it back, so
//! the server spends on such rounds at most `DRIP_ROUNDS_PER_SECOND` a
//! second, counted once a connection as `http2_window_drip`. Why slowed,
//! not closed: an honest client looks the same on the wire when its
//! application reads a few bytes at a time with the window exhausted (Go's
//! client gives back each `Read`'s bytes, and a gRPC stream read message
//! by message, 5-byte prefix then a small body, opens the window that
//! little while the server is blocked); its reads are the bottleneck, so
//! a round held back a sixty-fourth of a second costs it nothing it would
//! have had (the session's review). Why a count of rounds, not bytes: such a round
//! costs the server ~35 µs whatever its size (two packets, a wake-up, a
//! frame; `bench/H2TLS.md`, "Session 41"), and no credit per frame tells
//! it from an honest client (the `WINDOW_UPDATE` of 13 bytes that lets out
//! a 1-byte frame is the size of grpc-go's bandwidth probe's connection
//! update, and a drip of 14 bytes earns what it costs; session 41's size
//! rule, reverted, cut the one and not the other). What tells them apart
//! is that the server has data blocked on flow control: a client whose
//! window is exhausted and who opens it by less than a small packet's
//! worth again and again. An honest client opens it by half a window or
//! 4 KiB at least (nghttp2, h2, Go, grpc-go: a quarter of its window), and
//! its small updates (grpc-go's and hyper's bandwidth probes, one per burst
//! of data received) come while the server is not blocked: they are not
//! counted. Grants that end no wait (the tail of a window) are not
//! counted either: a drip's every round starts at a shut window. Nor is a
//! small grant after a packet's worth of DATA went out since the last one
//! (session 43): with several downloads on a small connection window (h2's
//! client default, 65,535 bytes), h2 hands each connection
//! `WINDOW_UPDATE`'s room (32 KiB or more) to the waiting streams in turn,
//! and the last gets the end of it, often a few bytes of the chunk it
//! asked for: ~280 such grants in 64 MiB on 32 streams, ~6 in 16 MiB on
//! four (4 KiB chunks, a debug build), each counted as a round by session
//! 42's rule, so that a fast or long download ran the budget out and was
//! held back. What a round costs is the client's update that lets out less
//! than a small packet: counting the connection's DATA between small
//! grants says that whatever the streams (an attacker who drips one stream
//! and lets 256 bytes out on another per round pays the cost per byte
//! [`DRIP_GRANT`] allows).
//!
//! `HEADERS` and `CONTINUATION` floods are bounded elsewhere: h2's
//! CONTINUATION count per block, our rapid-reset guard, and each request's
//! own cost (it is a request: the service sees it, the access log and the
//! request limits count it). Large DATA is bounded by flow control (padding
//! included). Empty DATA frames (no payload, padding aside, not ending
//! their stream) count here (in the control budget, 9 bytes each) and in
//! h2's own count, 100 a connection, which ours meets first as it does
//! h2's small-DATA budget (`FloodBudget::h2_refuses`, session 54: h2's
//! `GOAWAY` came first before, with no line of ours), counted as
//! `http2_data_flood` with a line of its own. Honest clients end a
//! stream with an empty frame (END_STREAM: grpc-go's `CloseSend`, Go's
//! and curl's uploads of unknown length, browsers' streaming uploads),
//! which neither counts; a non-final empty frame is a stray flush (the
//! load balancer pattern h2 0.4.21 frees, an empty frame after data;
//! Haskell's `http2` sent one before a stream's trailers until
//! kazu-yamamoto/http2#140), which h2 does not count once after each
//! non-empty frame of its stream. Elsewhere: netty closes at 10 empty
//! frames in a row (netty/netty#9461), Traffic Server at
//! `max_empty_frames_per_minute` (apache/trafficserver#11345). Padding is neither
//! charged nor credited beyond its frame's size, measured (`bench/H2TLS.md`,
//! "padding and DATA nobody reads"): padding-only DATA is an empty frame to
//! h2 (cut after 100, by ours), padding on larger data rides on data the service
//! reads, a padded HEADERS is a request; each costs less per byte padded
//! than not. DATA nobody reads stalls on the connection window, which h2
//! does not give back for it.
//!
//! Not a setting: an honest client stays far from it (a browser's or curl's
//! connection sends a few hundred bytes of SETTINGS, WINDOW_UPDATE and
//! PRIORITY at its start, then control frames in proportion to its requests
//! and to the data it receives), and a bigger budget only buys an attacker
//! more CPU per connection.
//!
//! Cost: two 16-byte frame walkers in the connection's IO (the payload is
//! skipped, never copied), and one shared set of budgets (an `Arc`, ~100
//! bytes, of atomics read and written apart, as plain as `Cell`s on x86:
//! an upgraded stream holding it may move to another thread) per
//! connection; the clock is read once per frame a budget charges (control,
//! tiny DATA, PING; not other DATA), and the drip budget is looked at only when a response's wait for room ends.
//! h2's streams' lock is taken once per read that holds a DATA frame under
//! 256 bytes or an empty one ([`FloodBudget::h2_refuses`]): not seen
//! against 15–53 µs of server CPU a 20-byte message echoed on one stream
//! (a build without it 0.996–1.017 × as costly, paired rounds on a shared
//! machine; `bench/H2TLS.md`, "Session 54").

use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::observe::clock;
use crate::service::h2_body::ReadCredit;

/// Bytes of frames that do no work (PING, SETTINGS, WINDOW_UPDATE, PRIORITY,
/// RST_STREAM, GOAWAY, empty DATA, unknown types) an HTTP/2 connection may
/// send beyond what its requests and responses earn, before it is closed
/// with `GOAWAY(ENHANCE_YOUR_CALM)`: about 3,900 PINGs or 7,300 empty
/// SETTINGS frames on a connection that does nothing else. Counted in
/// `megaconn_limit_hits_total{limit="http2_control_flood"}` (and a protocol
/// error), logged at most once per 5 s per worker.
pub const HTTP2_CONTROL_BUDGET: u64 = 64 * 1024;

/// Bytes each request handed to the service gives back to the budget.
pub(crate) const REQUEST_CREDIT: u64 = 256;

/// Bytes each DATA frame sent with a payload of 64 bytes or more gives back
/// to the budget: room for the client's PING and both `WINDOW_UPDATE`s
/// (stream and connection) after every frame it receives, 43 bytes. A
/// smaller frame gives back its payload's size: see [`earned`].
pub(crate) const DATA_FRAME_CREDIT: u64 = 64;

/// Bytes of budget a second of the connection's life gives back (with the
/// budget's bound): about 7 PINGs a second, where a keep-alive is one every
/// 10 s or more.
pub(crate) const REFILL_PER_SECOND: u64 = 128;

/// Tiny DATA frames (fewer than 16 bytes on the wire, payload and padding,
/// not ending their stream) an HTTP/2 connection may have sent and no
/// handler read, before it is closed with `GOAWAY(ENHANCE_YOUR_CALM)`;
/// each given back when a handler reads it (work done), and by time
/// (1,000 a second) and larger DATA frames' bytes (one a KiB). About what
/// h2 lets a connection hold unread (half its 1 MiB window at 255 bytes a
/// 1-byte frame: ~2,050), and 2–6 ms of server CPU. h2's bound comes
/// first by no arrival pattern: a read that would hand h2 the frame that
/// runs its own budget out is cut there, and closed as this one
/// (`FloodBudget::h2_refuses`, session 53). Counted in
/// `megaconn_limit_hits_total{limit="http2_data_flood"}` (and a protocol
/// error), logged at most once per 5 s per worker.
pub const HTTP2_TINY_DATA_BUDGET: u64 = 2_000;

/// DATA frames with fewer bytes than this on the wire (payload and padding)
/// are tiny, unless they end their stream. Uploads come in frames of KiBs, and gRPC frames each message with a
/// 5-byte prefix, so only empty or near-empty messages (up to 10 bytes)
/// are tiny; a 20-byte message never is.
pub(crate) const TINY_DATA_FRAME: u32 = 16;

/// Tiny DATA frames a second of the connection's life gives back (with
/// the budget's bound), read or not: a stream of near-empty messages that
/// its handler ignores (holds its body unread) is cut only past 1,000 a
/// second; frames nobody reads get ~1–3 ms of server CPU a second.
pub(crate) const TINY_DATA_PER_SECOND: u64 = 1_000;

/// Bytes of DATA frames that are not tiny that give back one tiny frame:
/// tiny frames among real data (a message's last bytes) never count.
pub(crate) const BYTES_PER_TINY_DATA_FRAME: u64 = 1024;

/// PINGs an HTTP/2 connection may send with nothing of ours sent between
/// them (no HEADERS, no non-empty DATA since the one before), before it is
/// closed with `GOAWAY(ENHANCE_YOUR_CALM)`; given back by time, one a
/// second. A PING after a response or DATA we sent
/// (a health check before each request, gRPC's bandwidth probe after each
/// burst of data received) is free. 3.2–11.2 ms of server CPU (measured,
/// `bench/H2TLS.md`, "Session 43") at 30–50 µs a PING paced one per round trip, where the control budget alone let
/// ~3,860 through (123–148 ms; `bench/H2TLS.md`, "Session 42"); a
/// keep-alive every second or slower, for good, is never cut. Counted in
/// `megaconn_limit_hits_total{limit="http2_ping_flood"}` (and a protocol
/// error), logged at most once per 5 s per worker.
pub const HTTP2_PING_BUDGET: u64 = 100;

/// PINGs with nothing sent between them that a second of the connection's
/// life gives back (with the budget's bound): ten times the most frequent
/// keep-alive a gRPC client may be set to (grpc-go's client floor, 10 s),
/// and ~50 µs of server CPU a second.
pub(crate) const PINGS_PER_SECOND: u64 = 1;

/// Waits for room in the client's flow-control windows ended by a grant of
/// fewer than 256 bytes, with more of the response waiting (a
/// window opened a few bytes at a time: `WINDOW_UPDATE` of 1, each
/// answered by a 1-byte DATA frame), that an HTTP/2 connection may have at
/// once before each further one waits for time to give it back
/// (64 a second): the connection is slowed, not closed. ~9–13 ms of server CPU at 35–50 µs
/// a round; up to twice that in one burst after 4 s of quiet (as every
/// budget here, time is credited when the budget runs out, up to a full
/// one: a drip on a connection 5 s old got ~520 rounds, `bench/H2TLS.md`,
/// "Session 42"). Counted in
/// `megaconn_limit_hits_total{limit="http2_window_drip"}` once a
/// connection (the first round held back), logged at most once per 5 s
/// per worker.
pub const HTTP2_WINDOW_DRIP_BUDGET: u64 = 256;

/// Drip rounds a second of the connection's life gives back (with the
/// budget's bound): ~2.2 ms of server CPU a second at most, as the
/// tiny-DATA budget's 1,000 frames; and a client whose rounds are paced by
/// a network round trip of 16 ms or more is never cut, whatever its window.
pub(crate) const DRIP_ROUNDS_PER_SECOND: u64 = 64;

/// Grants of room smaller than this (bytes) end a drip round, when the
/// stream asked for more. 256: a round that lets out 256 bytes or more
/// costs at most ~140 µs of server CPU per KiB, the order of the 16-byte
/// DATA frames a client may send for good (65–130 µs/KiB) and far below
/// `GET /` (800–1,250 µs/KiB; `bench/H2TLS.md`, "Session 41"); and no
/// client's reader opens its window by less unless it reads a few bytes
/// at a time with its window exhausted (Go's `bufio` reads 4 KiB, its JSON
/// decoder 512 bytes or more).
pub(crate) const DRIP_GRANT: usize = 256;

/// The client's connection preface, before its first frame.
const PREFACE_LEN: u32 = 24;
const FRAME_HEADER_LEN: u64 = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;
/// h2's small-DATA threshold (`DEFAULT_DATA_FRAME_OVERHEAD_THRESHOLD`):
/// a frame of fewer payload bytes takes the difference out of its budget.
const H2_SMALL_DATA: i64 = 256;

/// Which of a connection's budgets ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flooded {
    /// [`HTTP2_CONTROL_BUDGET`]: frames that do no work.
    Control = 1,
    /// [`HTTP2_TINY_DATA_BUDGET`]: tiny DATA frames.
    TinyData,
    /// [`HTTP2_PING_BUDGET`]: PINGs with nothing sent between them.
    Pings,
    /// h2's count of empty DATA frames that do not end their stream
    /// (100 a connection), which ours meets first
    /// ([`FloodBudget::h2_refuses`]).
    EmptyData,
}

impl Flooded {
    /// The budget whose code ([`Flooded`] `as u8`) is `code`; `None` for 0.
    fn of(code: u8) -> Option<Flooded> {
        [
            Flooded::Control,
            Flooded::TinyData,
            Flooded::Pings,
            Flooded::EmptyData,
        ]
        .into_iter()
        .find(|f| *f as u8 == code)
    }
}

/// A budget that work and time give back, up to `FULL`; time at
/// `PER_SECOND` units a second, credited at each charge (the clock is read
/// per charge, not per frame: a frame that charges nothing, a DATA frame
/// past the tiny size, reads none; within a parking-lot turn the reading
/// is the turn's, `observe/clock.rs`). Time the budget spent full gives
/// nothing back: a refill that fills it starts its clock again. (It counted from the
/// connection's start, or the last refill: a connection idle for 2 s, or
/// a server too busy to read for that long, then had up to twice the
/// budget for a burst, and a flood read late after a starved wait went on
/// past h2's own bound on small frames, which then closed the connection
/// with its line instead of ours: `lifecycle.rs`,
/// `an_http2_tiny_data_flood_is_logged_naming_the_budget`, 2 failures in
/// 10 under two busy loops.)
///
/// Atomics, read and written apart (`Relaxed` loads and stores, plain
/// moves on x86, as a `Cell`'s): the budget is shared with the
/// connection's upgraded streams, which a handler may move to another
/// thread (`service/h2_stream.rs`); two threads spending at once may lose
/// a unit, never memory safety. A bucket given back from other threads
/// as a matter of course (the tiny-DATA budget: a body is read wherever
/// its handler runs, for every tiny frame) is spent and given back with
/// one read-modify-write each ([`charge_shared`](Self::charge_shared),
/// [`credit_shared`](Self::credit_shared)): a unit lost now and then would
/// add up, over an honest stream of millions of frames, to a cut.
#[derive(Debug)]
struct Bucket<const FULL: u64, const PER_SECOND: u64> {
    /// Units left; below zero once run out.
    left: AtomicI64,
    /// Up to when time has been credited: nanoseconds since the budgets'
    /// start ([`FloodBudget::born`]).
    refilled_at: AtomicU64,
}

impl<const FULL: u64, const PER_SECOND: u64> Bucket<FULL, PER_SECOND> {
    /// A full budget.
    fn new() -> Self {
        Bucket {
            left: AtomicI64::new(FULL as i64),
            refilled_at: AtomicU64::new(0),
        }
    }

    /// Units left (below zero once run out).
    #[inline]
    fn left(&self) -> i64 {
        self.left.load(Relaxed)
    }

    /// Gives `n` back, up to the budget.
    #[inline]
    fn credit(&self, n: u64) {
        let left = self.left().saturating_add(n as i64);
        self.left.store(left.min(FULL as i64), Relaxed);
    }

    /// Gives `n` back, up to the budget, in one read-modify-write: for a
    /// bucket given back from other threads (see the type's doc).
    #[inline]
    fn credit_shared(&self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let _ = self.left.fetch_update(Relaxed, Relaxed, |left| {
            Some(left.saturating_add(n).min(FULL as i64))
        });
    }

    /// Spends `n`; false if the budget ran out (with what time gave back
    /// until now; `born`: the budgets' start).
    #[inline]
    fn charge(&self, n: u64, born: Instant) -> bool {
        self.refill(clock::now(), born);
        let left = self.left() - n as i64;
        self.left.store(left, Relaxed);
        left >= 0
    }

    /// [`charge`](Self::charge) in one read-modify-write, for a bucket
    /// given back from other threads (see the type's doc).
    #[inline]
    fn charge_shared(&self, n: u64, born: Instant) -> bool {
        self.refill(clock::now(), born);
        let n = n as i64;
        self.left.fetch_sub(n, Relaxed) - n >= 0
    }

    /// Credits the time since the last refill at `PER_SECOND`, up to the
    /// budget, before each charge: the bucket is then exact, as if time
    /// flowed in continuously. Time it would have spent full gives nothing
    /// back: a refill that fills it starts its clock again now (once it
    /// began only where a charge found it exactly full, so one frame left
    /// unanswered, the budget one below full, banked a quiet 2 s for a
    /// second budget's burst on top of the first: merge review, session
    /// 50). Time not yet worth a unit stays for the next refill.
    #[inline]
    fn refill(&self, now: Instant, born: Instant) {
        let now = u64::try_from(now.saturating_duration_since(born).as_nanos()).unwrap_or(u64::MAX);
        let left = self.left();
        if left >= FULL as i64 {
            self.refilled_at.store(now, Relaxed);
            return;
        }
        let since = now.saturating_sub(self.refilled_at.load(Relaxed));
        let earned = u128::from(since) * u128::from(PER_SECOND) / 1_000_000_000;
        if earned == 0 {
            return;
        }
        let earned = i64::try_from(earned).unwrap_or(i64::MAX);
        if left.saturating_add(earned) >= FULL as i64 {
            self.refilled_at.store(now, Relaxed);
        } else {
            // `earned` < FULL here: its time fits in a u64.
            let used = earned as u128 * 1_000_000_000 / u128::from(PER_SECOND);
            self.refilled_at.fetch_add(used as u64, Relaxed);
        }
        // One read-modify-write whatever the bucket.
        self.credit_shared(earned as u64);
    }
}

/// A connection's budgets, control bytes, tiny DATA frames, PINGs and
/// drip rounds, shared by its IO (which spends the first three and earns
/// what responses earn), its streams' responses and upgraded streams (which
/// spend the fourth, [`room_granted`](Self::room_granted)) and its loop
/// (which earns what requests earn and acts on [`tripped`](Self::tripped)).
#[derive(Debug)]
pub(crate) struct FloodBudget {
    /// When the connection started: the buckets' clocks count from it.
    born: Instant,
    control: Bucket<HTTP2_CONTROL_BUDGET, REFILL_PER_SECOND>,
    tiny: Bucket<HTTP2_TINY_DATA_BUDGET, TINY_DATA_PER_SECOND>,
    pings: Bucket<HTTP2_PING_BUDGET, PINGS_PER_SECOND>,
    drip: Bucket<HTTP2_WINDOW_DRIP_BUDGET, DRIP_ROUNDS_PER_SECOND>,
    /// A drip round was held back on this connection (counted once).
    drip_slowed: AtomicBool,
    /// A HEADERS or non-empty DATA frame went out since the client's last
    /// PING: the next PING is paid for (module doc).
    worked: AtomicBool,
    /// Bytes of larger DATA frames not yet worth a tiny frame.
    data_bytes: AtomicU64,
    /// DATA payload bytes sent since the last small grant of room
    /// ([`room_granted`](Self::room_granted)).
    data_out: AtomicU64,
    /// Which budget ran out ([`Flooded::code`]), 0 while none did.
    tripped: AtomicU8,
    /// Bytes of DATA received over the connection's life, padding
    /// included (what flow control counts), in frames that arrived whole:
    /// whether a poll brought any, for `http2_max_unread_body_bytes`' look
    /// (`unread.rs`). Written by the connection's task alone (its reads,
    /// [`MeteredIo`]). A frame counts once its last byte is read, not at
    /// its header: counted at the header, a frame whose payload came in a
    /// later read was counted in a poll where h2 could not hand it to its
    /// stream yet, and the poll that brought the rest brought no new DATA
    /// by this count, so the look never saw the budget reached (CI,
    /// session 52: `h2_budget::the_budget_is_the_builders`, "never
    /// counted; 262144 bytes sent").
    data_in: AtomicU64,
    /// The lengths of the DATA frames whose headers were read, in all, and
    /// the length of the last frame's if it was DATA (else 0): what
    /// [`data_walked`](Self::data_walked) makes `data_in` of. Here in the
    /// budget's allocation, not in the frame walker, because the walker is
    /// in every HTTP/2 connection's future (its size guard).
    data_headed: AtomicU64,
    data_open: AtomicU32,
    /// h2's own bounds on DATA frames, its budget for small ones buffered
    /// unread and its count of empty ones, read through h2 (`patches/h2`),
    /// once the handshake made the connection: no flood may reach either
    /// before ours closes the connection ([`h2_refuses`](Self::h2_refuses)).
    /// No frame is read before: h2's handshake reads the preface alone.
    h2_probe: OnceLock<h2::server::DataFrameBudgetProbe>,
    /// What the last frame read takes out of h2's small-DATA budget
    /// ([`h2_charge`]), if DATA (else 0), and whether h2 counts it as an
    /// empty one ([`h2_empty`]): when its payload is still coming as the
    /// next read begins, h2 has not counted it yet.
    h2_open: AtomicI64,
    h2_open_empty: AtomicBool,
}

impl FloodBudget {
    /// Full budgets, for a connection that starts now.
    pub(crate) fn new() -> FloodBudget {
        FloodBudget {
            born: clock::now(),
            control: Bucket::new(),
            tiny: Bucket::new(),
            pings: Bucket::new(),
            drip: Bucket::new(),
            drip_slowed: AtomicBool::new(false),
            worked: AtomicBool::new(false),
            data_bytes: AtomicU64::new(0),
            data_out: AtomicU64::new(0),
            tripped: AtomicU8::new(0),
            data_in: AtomicU64::new(0),
            data_headed: AtomicU64::new(0),
            data_open: AtomicU32::new(0),
            h2_probe: OnceLock::new(),
            h2_open: AtomicI64::new(0),
            h2_open_empty: AtomicBool::new(false),
        }
    }

    /// The connection h2 made (its bounds on small and on empty DATA
    /// frames read through `probe`): from now on no read hands h2 the
    /// DATA frame that would run either out ([`h2_refuses`](Self::h2_refuses)).
    pub(crate) fn watch_h2(&self, probe: h2::server::DataFrameBudgetProbe) {
        let _ = self.h2_probe.set(probe);
    }

    /// A read's room in h2's bounds, not asked yet, with what the frame
    /// whose payload is still coming (`mid_frame`) takes once whole.
    #[inline]
    fn h2_room(&self, mid_frame: bool) -> H2Room {
        H2Room {
            small: None,
            empty: None,
            open_small: if mid_frame {
                self.h2_open.load(Relaxed).max(0)
            } else {
                0
            },
            open_empty: mid_frame && self.h2_open_empty.load(Relaxed),
        }
    }

    /// Whether h2 would end the connection over DATA frame `h` (`first`:
    /// its payload's first byte, if the read holds it), which ours then
    /// does first, with its count and its line (`Some`: the tiny-DATA
    /// budget's close for h2's small-DATA budget, the empty-DATA close
    /// for its count of empty frames): `room` is what was left of each
    /// when the read came ([`H2Room`]: asked of h2 at the read's first
    /// frame that takes from it, less what a frame whose payload was still
    /// coming takes once whole), less what the read's frames before this
    /// one take.
    ///
    /// Why: ours gives tiny frames back with time (1,000 a second) and
    /// h2's does not, so a flood read over more than a few tens of
    /// milliseconds (a busy machine's reads, or a flood larger than the
    /// socket's buffers) got past ours' 2,000 and met h2's bound (~2,056
    /// 1-byte frames, `H2_DATA_FRAME_BUDGET` in `http2.rs`), which closed
    /// the connection with h2's `GOAWAY` and no line of ours
    /// (`lifecycle.rs`, `an_http2_tiny_data_flood_is_logged_naming_the_budget`,
    /// 6 and 10 failures in 20 runs, session 52). Exact, not a second
    /// estimate: every frame read before this read has been processed by
    /// h2 when the read comes (its codec reads only once the frames it
    /// holds are handed on), so h2's count then is the truth, and this
    /// read's frames take from it in order. Give-backs within the read
    /// (a large frame's) are not counted: the room only shrinks, so ours
    /// is the stricter. The same holds for small frames that are not tiny
    /// (16–255 bytes): h2 bounds them too, and its close now comes ours.
    ///
    /// And for empty DATA frames that do not end their stream (no
    /// payload, padding aside; `Some(Flooded::EmptyData)`): h2 counts 100
    /// over the connection's life and then closes it with its `GOAWAY`,
    /// where ours charged each 9 bytes of the control budget (64 KiB):
    /// h2's close came first, always, with no line of ours (session 54).
    /// h2 does not count a stream's first such frame, nor one after each
    /// non-empty frame the stream received (0.4.21, `allow_empty_data`);
    /// ours counts every one against the room h2 said was left when the
    /// read came, so it is the stricter within a read, and exact again at
    /// the next: an honest client that follows its data with an empty
    /// frame (the pattern h2 0.4.21 frees) leaves h2's count where it was,
    /// and would be cut only with more than 100 such frames in one read.
    fn h2_refuses(&self, h: Head, first: Option<u8>, room: &mut H2Room) -> Option<Flooded> {
        let charge = h2_charge(h, first);
        let empty = h2_empty(h, first);
        self.h2_open.store(charge, Relaxed);
        self.h2_open_empty.store(empty, Relaxed);
        if charge <= 0 && !empty {
            return None;
        }
        let probe = self.h2_probe.get()?;
        let (open_small, open_empty) = (room.open_small, i64::from(room.open_empty));
        if empty {
            let left = room.empty.get_or_insert_with(|| {
                i64::try_from(probe.empty_left()).unwrap_or(i64::MAX) - open_empty
            });
            if *left < 1 {
                return Some(Flooded::EmptyData);
            }
            *left -= 1;
        }
        if charge > 0 {
            let left = room.small.get_or_insert_with(|| {
                i64::try_from(probe.left()).unwrap_or(i64::MAX) - open_small
            });
            if charge > *left {
                return Some(Flooded::TinyData);
            }
            *left -= charge;
        }
        None
    }

    /// Gives `n` bytes back to the control budget, up to its size.
    #[inline]
    pub(crate) fn credit(&self, n: u64) {
        self.control.credit(n);
    }

    /// A frame we sent: gives back what it earns ([`earned`]); a HEADERS
    /// or a non-empty DATA frame pays for the client's next PING, and a
    /// DATA frame's bytes count toward the room the client gave
    /// ([`room_granted`](Self::room_granted)).
    #[inline]
    fn sent(&self, h: Head) {
        self.credit(earned(h));
        if h.kind == DATA && h.len > 0 {
            let out = self.data_out.load(Relaxed);
            self.data_out
                .store(out.saturating_add(u64::from(h.len)), Relaxed);
            self.worked.store(true, Relaxed);
        } else if h.kind == HEADERS {
            self.worked.store(true, Relaxed);
        }
    }

    /// A response's (or an upgraded stream's) wait for room in the
    /// client's windows ended with `granted` bytes, of the `wanted` it
    /// waits to send: a drip round if fewer than both [`DRIP_GRANT`] and
    /// `wanted`, charged to the drip budget. `Some` if that ran the budget
    /// out: how long the round must wait before it sends, for time to give
    /// it back (the rounds held back by then, this one's included, at
    /// [`DRIP_ROUNDS_PER_SECOND`]), with whether it is the connection's
    /// first round held back (to count and log once).
    pub(crate) fn room_granted(&self, granted: usize, wanted: usize) -> Option<(Duration, bool)> {
        if granted >= wanted || granted >= DRIP_GRANT {
            return None;
        }
        // The connection let out a small packet's worth or more since the
        // last small grant: the client's windows were opened wide, and this
        // stream got the end of what others took (module doc).
        if self.data_out.swap(0, Relaxed) >= DRIP_GRANT as u64 || self.drip.charge(1, self.born) {
            return None;
        }
        let behind = self.drip.left().unsigned_abs();
        let wait =
            Duration::from_nanos(behind.saturating_mul(1_000_000_000 / DRIP_ROUNDS_PER_SECOND));
        Some((wait, !self.drip_slowed.swap(true, Relaxed)))
    }

    /// Charges a frame received to the budget it is for; `Some` names the
    /// budget it ran out.
    #[inline]
    fn receive(&self, h: Head) -> Option<Flooded> {
        let born = self.born;
        // One writer (the connection's reads): loads and stores.
        if h.kind == DATA {
            let headed = self.data_headed.load(Relaxed);
            self.data_headed.store(headed + u64::from(h.len), Relaxed);
            self.data_open.store(h.len, Relaxed);
        } else {
            self.data_open.store(0, Relaxed);
        }
        let within = match h.kind {
            // Requests: their own cost, bounded elsewhere (module doc).
            HEADERS | CONTINUATION => true,
            DATA if h.len == 0 => self.control.charge(FRAME_HEADER_LEN, born),
            DATA if h.len < TINY_DATA_FRAME && h.flags & END_STREAM == 0 => {
                return (!self.tiny.charge_shared(1, born)).then_some(Flooded::TinyData);
            }
            DATA => {
                let bytes = self.data_bytes.load(Relaxed) + u64::from(h.len);
                self.data_bytes
                    .store(bytes % BYTES_PER_TINY_DATA_FRAME, Relaxed);
                let earned = bytes / BYTES_PER_TINY_DATA_FRAME;
                if earned > 0 {
                    self.tiny.credit_shared(earned);
                }
                true
            }
            // A PING with nothing of ours sent since the last one spends
            // the PING budget as well as the control budget's bytes.
            PING if h.flags & ACK == 0 => {
                let paid = self.worked.swap(false, Relaxed);
                if !paid && !self.pings.charge(1, born) {
                    return Some(Flooded::Pings);
                }
                self.control
                    .charge(FRAME_HEADER_LEN + u64::from(h.len), born)
            }
            _ => self
                .control
                .charge(FRAME_HEADER_LEN + u64::from(h.len), born),
        };
        (!within).then_some(Flooded::Control)
    }

    /// After a read, with `mid_frame` whether its last frame's payload
    /// has bytes still to come: the DATA frames read whole so far become
    /// [`data_received`](Self::data_received)'s count.
    #[inline]
    fn data_walked(&self, mid_frame: bool) {
        let open = if mid_frame {
            self.data_open.load(Relaxed)
        } else {
            0
        };
        let whole = self.data_headed.load(Relaxed) - u64::from(open);
        self.data_in.store(whole, Relaxed);
    }

    /// Bytes of DATA received so far in whole frames, padding included.
    #[inline]
    pub(crate) fn data_received(&self) -> u64 {
        self.data_in.load(Relaxed)
    }

    /// Whether a budget ran out (the connection reads no more).
    pub(crate) fn is_tripped(&self) -> bool {
        self.tripped.load(Relaxed) != 0
    }

    /// Resolves once a budget ran out, with which. No waker is kept: a
    /// budget runs out inside a read of the connection's own task, which
    /// wakes itself.
    pub(crate) async fn tripped(&self) -> Flooded {
        poll_fn(|_| match Flooded::of(self.tripped.load(Relaxed)) {
            Some(which) => Poll::Ready(which),
            None => Poll::Pending,
        })
        .await
    }
}

impl ReadCredit for FloodBudget {
    /// A reader (a request body, an upgraded stream) took a DATA frame
    /// of `len` bytes out of h2: a tiny one did the work it was sent for,
    /// and gives its unit back to the tiny-DATA budget (module doc), up to
    /// the budget. Called on whichever thread the handler reads on.
    ///
    /// The reader sees the payload, not the frame: a final frame's or a
    /// padded one's (neither charged) gives a unit back too. That buys an
    /// attacker one unread tiny frame per frame a handler reads, each
    /// costing what a 16-byte frame costs, which is not bounded either;
    /// and nothing is banked past the budget.
    #[inline]
    fn data_read(&self, len: usize) {
        if len > 0 && len < TINY_DATA_FRAME as usize {
            self.tiny.credit_shared(1);
        }
    }
}

/// What is left of h2's bounds on DATA frames for a read's frames
/// ([`FloodBudget::h2_refuses`]): each asked of h2 at the read's first
/// frame that takes from it, less what the frame begun in an earlier read
/// and still coming takes once whole (h2 has not counted it yet), then
/// less what each of the read's frames before takes. On the stack of the
/// read, not in the connection's future.
#[derive(Debug)]
struct H2Room {
    /// h2's small-DATA budget ([`h2_charge`]'s units), once asked.
    small: Option<i64>,
    /// h2's count of empty DATA frames ([`h2_empty`]) left, once asked.
    empty: Option<i64>,
    /// What the frame still coming takes from each.
    open_small: i64,
    open_empty: bool,
}

/// A frame header as it went by.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
}

/// Follows a stream of frames from their headers: skips each payload (and,
/// inbound, the client's preface), gathers headers split across reads.
#[derive(Debug)]
struct FrameWalk {
    /// Bytes of the current payload (or the preface) still to go by.
    skip: u32,
    /// A header split across reads, `got` bytes of it so far.
    head: [u8; 9],
    got: u8,
}

impl FrameWalk {
    fn new(skip: u32) -> FrameWalk {
        FrameWalk {
            skip,
            head: [0; 9],
            got: 0,
        }
    }

    /// Walks `bytes`, the next ones of the stream, calling `on_head` for
    /// each frame header completed, with its payload's first byte if
    /// `bytes` holds it. Stops when `on_head` does (false),
    /// with where in `bytes` that frame's header began (0 if it began in
    /// an earlier call): every byte before it belongs to frames whose
    /// headers `on_head` accepted. `None` once all of `bytes` is walked.
    #[inline]
    fn walk(
        &mut self,
        mut bytes: &[u8],
        mut on_head: impl FnMut(Head, Option<u8>) -> bool,
    ) -> Option<usize> {
        let all = bytes.len();
        loop {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
            }
            if bytes.is_empty() {
                return None;
            }
            let start = if self.got == 0 { all - bytes.len() } else { 0 };
            let head = if self.got == 0 && bytes.len() >= 9 {
                let h = parse(&bytes[..9]);
                bytes = &bytes[9..];
                h
            } else {
                let got = usize::from(self.got);
                let n = bytes.len().min(9 - got);
                self.head[got..got + n].copy_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if got + n < 9 {
                    self.got = (got + n) as u8;
                    return None;
                }
                self.got = 0;
                parse(&self.head)
            };
            self.skip = head.len;
            let first = if head.len > 0 {
                bytes.first().copied()
            } else {
                None
            };
            if !on_head(head, first) {
                return Some(start);
            }
        }
    }
}

/// What h2 takes out of its small-DATA budget for DATA frame `h` once it
/// has it whole (`record_data_frame` in `patches/h2`'s
/// `proto/streams/counts.rs`): a frame that does not end its stream, with
/// `n` bytes of payload (padding not counted), `0 < n < 256`, takes
/// `256 - n`; an empty one nothing (h2 counts those apart); a larger one
/// gives `n - 256` back (negative here). A padded frame's payload is its
/// length less its pad-length byte and the padding that byte names
/// (`first`, when the read holds it; else as small as the frame allows,
/// which takes the most).
#[inline]
fn h2_charge(h: Head, first: Option<u8>) -> i64 {
    if h.kind != DATA || h.flags & END_STREAM != 0 {
        return 0;
    }
    let len = i64::from(h.len);
    let payload = match (h.flags & PADDED != 0, first) {
        (false, _) => len,
        (true, Some(pad)) => len - 1 - i64::from(pad),
        (true, None) => (len - H2_SMALL_DATA).max(1),
    };
    if payload <= 0 {
        return 0;
    }
    H2_SMALL_DATA - payload
}

/// Whether h2 counts DATA frame `h` as an empty one once it has it whole
/// (`record_data_frame` in `patches/h2`'s `proto/streams/counts.rs`): a
/// frame that does not end its stream with no payload, padding aside
/// (padding-only: its pad-length byte, `first`, names all the rest). A
/// padded frame whose pad-length byte is not in the read yet may be one:
/// counted (it is the stricter; honest clients do not pad DATA).
#[inline]
fn h2_empty(h: Head, first: Option<u8>) -> bool {
    if h.kind != DATA || h.flags & END_STREAM != 0 {
        return false;
    }
    match (h.flags & PADDED != 0, first) {
        (false, _) => h.len == 0,
        (true, Some(pad)) => h.len <= 1 + u32::from(pad),
        (true, None) => true,
    }
}

#[inline]
fn parse(h: &[u8]) -> Head {
    Head {
        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
        kind: h[3],
        flags: h[4],
    }
}

/// What a frame we send gives back to the control budget: see the module
/// doc. Any non-empty DATA frame [`DATA_FRAME_CREDIT`], whatever its size:
/// a client's answer to it (a `WINDOW_UPDATE`, a bandwidth probe's PING)
/// does not depend on its size either.
#[inline]
fn earned(h: Head) -> u64 {
    match h.kind {
        DATA if h.len > 0 => DATA_FRAME_CREDIT,
        // Its acknowledgement: the same frame with ACK, empty for SETTINGS.
        PING if h.flags & ACK == 0 => FRAME_HEADER_LEN + u64::from(h.len),
        SETTINGS if h.flags & ACK == 0 => FRAME_HEADER_LEN,
        _ => 0,
    }
}

pin_project_lite::pin_project! {
    /// A connection's IO as h2 sees it, metering its frames against the
    /// [`FloodBudget`]. Once a budget runs out, reads return nothing
    /// more, and the task is woken for its loop to close the connection
    /// (`GOAWAY(ENHANCE_YOUR_CALM)`). The read that ran it out is cut at
    /// the frame that did: h2 gets the frames before it, each within its
    /// budget and answered as any other (a PING's ACK before the GOAWAY,
    /// as RFC 9113 §6.7 asks of every PING received), and none from it on
    /// (what the GOAWAY refuses).
    #[derive(Debug)]
    pub(crate) struct MeteredIo<I> {
        #[pin]
        io: I,
        budget: Arc<FloodBudget>,
        inbound: FrameWalk,
        outbound: FrameWalk,
    }
}

impl<I> MeteredIo<I> {
    /// Meters `io`, a server connection from its client's preface on.
    pub(crate) fn new(io: I, budget: Arc<FloodBudget>) -> MeteredIo<I> {
        MeteredIo {
            io,
            budget,
            inbound: FrameWalk::new(PREFACE_LEN),
            outbound: FrameWalk::new(0),
        }
    }
}

impl<I: AsyncRead> AsyncRead for MeteredIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let budget = &**this.budget;
        if budget.is_tripped() {
            // The loop closes the connection; h2 reads no more till then.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        std::task::ready!(this.io.poll_read(cx, buf))?;
        let mut flooded = None;
        // h2's bounds on DATA frames as this read's frames take from them
        // (`FloodBudget::h2_refuses`); a frame begun in an earlier read and
        // still coming is not in h2's counts yet.
        let mut room = budget.h2_room(this.inbound.skip > 0);
        let cut = this.inbound.walk(&buf.filled()[before..], |h, first| {
            flooded = budget
                .receive(h)
                .or_else(|| budget.h2_refuses(h, first, &mut room));
            flooded.is_none()
        });
        budget.data_walked(this.inbound.skip > 0);
        let (Some(cut), Some(which)) = (cut, flooded) else {
            return Poll::Ready(Ok(()));
        };
        budget.tripped.store(which as u8, Relaxed);
        // Until session 45 the whole read was dropped: a batch of PINGs
        // that ran the budget out went unanswered, those within it too,
        // and the client saw nothing but the GOAWAY.
        buf.set_filled(before + cut);
        cx.waker().wake_by_ref();
        if cut > 0 {
            Poll::Ready(Ok(()))
        } else {
            // Nothing to hand over: an empty read would be the end of the
            // stream to h2.
            Poll::Pending
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for MeteredIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let n = std::task::ready!(this.io.poll_write(cx, data))?;
        let budget = &**this.budget;
        this.outbound.walk(&data[..n], |h, _| {
            budget.sent(h);
            true
        });
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let n = std::task::ready!(this.io.poll_write_vectored(cx, bufs))?;
        let budget = &**this.budget;
        let mut left = n;
        for slice in bufs {
            if left == 0 {
                break;
            }
            let take = slice.len().min(left);
            left -= take;
            this.outbound.walk(&slice[..take], |h, _| {
                budget.sent(h);
                true
            });
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload_len: usize) -> Vec<u8> {
        let len = payload_len as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend(std::iter::repeat_n(0xee, payload_len));
        f
    }

    /// The walker finds every header, whatever the reads' boundaries: one
    /// byte at a time, and all at once, give the same frames.
    #[test]
    fn headers_are_found_across_any_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let frames = [
            (SETTINGS, 0, 12),
            (HEADERS, 5, 30),
            (DATA, 0, 1000),
            (PING, 0, 8),
        ];
        for (kind, flags, len) in frames {
            stream.extend(frame(kind, flags, len));
        }
        for chunk in [1, 7, 9, 10, 4096] {
            let mut walk = FrameWalk::new(PREFACE_LEN);
            let mut seen = Vec::new();
            for part in stream.chunks(chunk) {
                let stopped = walk.walk(part, |h, _| {
                    seen.push((h.kind, h.flags, h.len as usize));
                    true
                });
                assert_eq!(stopped, None);
            }
            assert_eq!(seen, frames, "in reads of {chunk}");
        }
    }

    /// A DATA frame counts as received once its last byte is read, in
    /// reads of any size, and never twice: counted at its header, the
    /// frame the budget's look needed came in a read with nothing h2 could
    /// hand over yet, and the read that completed it counted nothing new
    /// (fails so: "after 30 bytes of frames, in reads of 1", 1000 against
    /// 0).
    #[tokio::test(start_paused = true)]
    async fn data_counts_when_its_frame_is_whole() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut ends = Vec::new();
        for (kind, len) in [
            (SETTINGS, 12),
            (DATA, 1000),
            (PING, 8),
            (DATA, 16384),
            (DATA, 0),
        ] {
            stream.extend(frame(kind, 0, len));
            ends.push((stream.len(), kind, len));
        }
        for chunk in [1, 9, 10, 1009, 4096, 8192] {
            let budget = FloodBudget::new();
            let mut walk = FrameWalk::new(PREFACE_LEN);
            let mut read = 0;
            for part in stream.chunks(chunk) {
                walk.walk(part, |h, _| budget.receive(h).is_none());
                budget.data_walked(walk.skip > 0);
                read += part.len();
                let whole: u64 = ends
                    .iter()
                    .filter(|&&(end, kind, _)| kind == DATA && end <= read)
                    .map(|&(_, _, len)| len as u64)
                    .sum();
                let frame_bytes = read.saturating_sub(PREFACE_LEN as usize);
                assert_eq!(
                    budget.data_received(),
                    whole,
                    "after {frame_bytes} bytes of frames, in reads of {chunk}"
                );
            }
        }
    }

    fn head(kind: u8, flags: u8, len: u32) -> Head {
        Head { len, kind, flags }
    }

    /// Control frames spend, request frames do not, and the budget runs out
    /// at its size; credit gives back no more than the budget.
    #[tokio::test(start_paused = true)]
    async fn the_budget_runs_out_on_control_frames_only() {
        let budget = FloodBudget::new();
        // Each after a response of ours: the PING budget's, not spent.
        let ping = |budget: &FloodBudget| {
            budget.sent(head(HEADERS, 4, 10));
            budget.receive(head(PING, 0, 8))
        };
        assert_eq!(budget.receive(head(DATA, 0, 16_384)), None);
        assert_eq!(budget.receive(head(HEADERS, 0, 16_384)), None);
        budget.credit(1 << 30);
        let pings = HTTP2_CONTROL_BUDGET / (FRAME_HEADER_LEN + 8);
        for _ in 0..pings {
            assert_eq!(ping(&budget), None);
        }
        assert_eq!(ping(&budget), Some(Flooded::Control), "one PING too many");
    }

    /// Tiny DATA frames spend their own budget, one each, whatever else
    /// the connection earned; a final one does not; larger frames give
    /// back one per KiB.
    #[tokio::test(start_paused = true)]
    async fn tiny_data_frames_run_out_their_own_budget() {
        let budget = FloodBudget::new();
        budget.credit(1 << 30);
        let tiny = head(DATA, 0, TINY_DATA_FRAME - 1);
        assert_eq!(budget.receive(head(DATA, 0, TINY_DATA_FRAME)), None);
        assert_eq!(budget.receive(head(DATA, END_STREAM, 1)), None);
        for _ in 0..HTTP2_TINY_DATA_BUDGET {
            assert_eq!(budget.receive(tiny), None);
        }
        // 16 + 1 bytes so far (the final frame's is real data too); 1,024
        // earn one more, not before.
        let not_tiny = head(DATA, 0, TINY_DATA_FRAME);
        assert_eq!(budget.receive(head(DATA, 0, 1024 - 17 - 16)), None);
        assert_eq!(budget.tiny.left(), 0);
        assert_eq!(budget.receive(not_tiny), None);
        assert_eq!(budget.receive(tiny), None);
        assert_eq!(budget.receive(tiny), Some(Flooded::TinyData));
        assert_eq!(budget.control.left(), HTTP2_CONTROL_BUDGET as i64);
    }

    /// A tiny frame a reader takes gives its unit back (work done): a
    /// stream of them read as they come never runs the budget out,
    /// however long. Frames nobody reads still do; a read of a frame that
    /// is not tiny gives nothing back, and reads bank nothing past the
    /// budget. Fails without the give-back ("a tiny frame read, 2000").
    #[tokio::test(start_paused = true)]
    async fn tiny_frames_a_reader_takes_give_their_unit_back() {
        let budget = FloodBudget::new();
        let tiny = head(DATA, 0, TINY_DATA_FRAME - 1);
        for n in 0..10 * HTTP2_TINY_DATA_BUDGET {
            assert_eq!(budget.receive(tiny), None, "a tiny frame read, {n}");
            budget.data_read(TINY_DATA_FRAME as usize - 1);
        }
        assert_eq!(budget.tiny.left(), HTTP2_TINY_DATA_BUDGET as i64);
        // Charged and not read: the budget runs out as before.
        for _ in 0..HTTP2_TINY_DATA_BUDGET {
            assert_eq!(budget.receive(tiny), None);
        }
        budget.data_read(0);
        budget.data_read(TINY_DATA_FRAME as usize);
        assert_eq!(budget.receive(tiny), Some(Flooded::TinyData));

        // More reads than frames charged (a final frame's, a padded one's
        // payload): nothing banked past the budget.
        let budget = FloodBudget::new();
        for _ in 0..HTTP2_TINY_DATA_BUDGET {
            assert_eq!(budget.receive(tiny), None);
        }
        for _ in 0..HTTP2_TINY_DATA_BUDGET / 2 {
            budget.data_read(1);
        }
        assert_eq!(budget.tiny.left(), HTTP2_TINY_DATA_BUDGET as i64 / 2);
        for _ in 0..3 * HTTP2_TINY_DATA_BUDGET {
            budget.data_read(1);
        }
        for _ in 0..HTTP2_TINY_DATA_BUDGET {
            assert_eq!(budget.receive(tiny), None);
        }
        assert_eq!(budget.receive(tiny), Some(Flooded::TinyData));
    }

    /// Frames charged on the connection's thread and read on another at
    /// once (a handler's body read wherever it runs) all give their unit
    /// back: with a load and a store on each side, units were lost both
    /// ways, and lost give-backs add up to a cut of an honest stream.
    #[test]
    fn tiny_frames_read_on_another_thread_all_give_back() {
        const FRAMES: usize = 1_000_000;
        let budget = FloodBudget::new();
        let tiny = head(DATA, 0, 5);
        let charged = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..FRAMES {
                    // The wire never runs ahead of the reader by more than
                    // a tenth of the budget.
                    while charged.load(Relaxed) >= HTTP2_TINY_DATA_BUDGET as usize / 10 {
                        std::hint::spin_loop();
                    }
                    assert_eq!(budget.receive(tiny), None);
                    charged.fetch_add(1, Relaxed);
                }
            });
            s.spawn(|| {
                let mut read = 0;
                while read < FRAMES {
                    if charged.load(Relaxed) > 0 {
                        charged.fetch_sub(1, Relaxed);
                        budget.data_read(5);
                        read += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
        });
        assert_eq!(budget.tiny.left(), HTTP2_TINY_DATA_BUDGET as i64);
    }

    /// An `AsyncRead` that hands out one scripted chunk a read.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(chunk) = self.0.pop_front() {
                buf.put_slice(&chunk);
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads `io` once into an empty 64 KiB buffer: what it handed over.
    fn read_once<I: AsyncRead + Unpin>(io: &mut MeteredIo<I>) -> Poll<Vec<u8>> {
        let mut space = vec![0u8; 64 * 1024];
        let mut buf = ReadBuf::new(&mut space);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(io)
            .poll_read(&mut cx, &mut buf)
            .map(|r| r.map(|()| buf.filled().to_vec()).unwrap())
    }

    /// A read that runs a budget out hands h2 the frames before the one
    /// that did (each within the budget, to be answered: a PING's ACK
    /// before the GOAWAY), and nothing more is read. Before session 45 the
    /// whole read was dropped, and a batch of PINGs was left unanswered
    /// ("left: Pending").
    #[tokio::test(start_paused = true)]
    async fn a_read_that_runs_a_budget_out_hands_over_the_frames_before() {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0));
        let pings: Vec<u8> = (0..HTTP2_PING_BUDGET + 50)
            .flat_map(|_| frame(PING, 0, 8))
            .collect();
        let mut batch = hello.clone();
        batch.extend(&pings);
        let budget = Arc::new(FloodBudget::new());
        let mut io = MeteredIo::new(Chunks([batch].into()), budget.clone());
        let within = hello.len() + HTTP2_PING_BUDGET as usize * 17;
        assert_eq!(read_once(&mut io).map(|b| b.len()), Poll::Ready(within));
        assert!(budget.is_tripped());
        assert_eq!(read_once(&mut io), Poll::Pending, "nothing more");

        // The frame that ran it out first in its read: nothing to hand
        // over (an empty read would be the stream's end to h2).
        let mut first = hello;
        first.extend(&pings[..HTTP2_PING_BUDGET as usize * 17]);
        let rest = pings[HTTP2_PING_BUDGET as usize * 17..].to_vec();
        let budget = Arc::new(FloodBudget::new());
        let mut io = MeteredIo::new(Chunks([first.clone(), rest].into()), budget.clone());
        assert_eq!(read_once(&mut io), Poll::Ready(first));
        assert!(!budget.is_tripped());
        assert_eq!(read_once(&mut io), Poll::Pending);
        assert!(budget.is_tripped());
    }

    /// A DATA frame sent earns at most its payload: a 1-byte one, 1 byte
    /// (less than the 13 of the `WINDOW_UPDATE` that let it out).
    #[test]
    fn data_sent_earns_the_same_whatever_its_size() {
        assert_eq!(earned(head(DATA, 0, 1)), DATA_FRAME_CREDIT);
        assert_eq!(earned(head(DATA, 0, 0)), 0);
        assert_eq!(earned(head(DATA, 0, 16_384)), DATA_FRAME_CREDIT);
        assert_eq!(earned(head(PING, 0, 8)), 17);
        assert_eq!(earned(head(PING, ACK, 8)), 0);
    }

    /// h2 counts a DATA frame as empty when it has no payload, padding
    /// aside, and does not end its stream; a padded one whose pad-length
    /// byte is not in the read yet may be, and is counted (the stricter).
    /// A padding-only frame takes nothing from h2's small-DATA budget.
    #[test]
    fn empty_data_frames_are_told_as_h2_tells_them() {
        assert!(h2_empty(head(DATA, 0, 0), None));
        assert!(h2_empty(head(DATA, PADDED, 9), Some(8)));
        assert!(h2_empty(head(DATA, PADDED, 9), None));
        assert_eq!(h2_charge(head(DATA, PADDED, 9), Some(8)), 0);
        assert!(!h2_empty(head(DATA, END_STREAM, 0), None));
        assert!(!h2_empty(head(DATA, PADDED | END_STREAM, 9), Some(8)));
        assert!(!h2_empty(head(DATA, PADDED, 9), Some(7)));
        assert!(!h2_empty(head(DATA, 0, 1), Some(b'x')));
        assert!(!h2_empty(head(PING, 0, 0), None));
    }

    /// A grant smaller than [`DRIP_GRANT`] and than what the stream waits
    /// to send is a drip round; a grant of all it waits for (a small
    /// frame's), or of [`DRIP_GRANT`] bytes, is not. The budget runs out
    /// after [`HTTP2_WINDOW_DRIP_BUDGET`] rounds: each round past it waits
    /// a sixty-fourth of a second more than the one before (the rounds
    /// held back, at [`DRIP_ROUNDS_PER_SECOND`]), the first one said as
    /// such (counted once), and time gives back [`DRIP_ROUNDS_PER_SECOND`].
    /// Nothing trips: the connection is slowed, not closed.
    #[tokio::test(start_paused = true)]
    async fn small_grants_with_more_waiting_run_out_the_drip_budget() {
        let round = Duration::from_nanos(1_000_000_000 / DRIP_ROUNDS_PER_SECOND);
        let budget = FloodBudget::new();
        for _ in 0..10 * HTTP2_WINDOW_DRIP_BUDGET {
            assert_eq!(budget.room_granted(10, 10), None, "all it waited for");
            assert_eq!(budget.room_granted(DRIP_GRANT, 1 << 20), None);
        }
        for _ in 0..HTTP2_WINDOW_DRIP_BUDGET {
            assert_eq!(budget.room_granted(1, 1 << 20), None);
        }
        assert_eq!(
            budget.room_granted(DRIP_GRANT - 1, DRIP_GRANT),
            Some((round, true)),
            "one too many: held back, the first"
        );
        assert_eq!(budget.room_granted(1, 1 << 20), Some((2 * round, false)));
        assert!(!budget.is_tripped(), "slowed, never closed");

        let budget = FloodBudget::new();
        for _ in 0..HTTP2_WINDOW_DRIP_BUDGET {
            assert_eq!(budget.room_granted(1, 2), None);
        }
        tokio::time::advance(round).await;
        assert_eq!(budget.room_granted(1, 2), None, "time gave one back");
        assert_eq!(budget.room_granted(1, 2), Some((round, true)));
        // Waited out, the next round is held back one round again: 64 a second.
        tokio::time::advance(round).await;
        assert_eq!(budget.room_granted(1, 2), Some((round, false)));
    }

    /// Downloads sharing a small connection window: the stream that gets
    /// the end of a `WINDOW_UPDATE`'s room after the others took theirs
    /// ends its wait with a few bytes of more. Not a round when the
    /// connection sent [`DRIP_GRANT`] bytes of DATA or more since the last
    /// small grant, however many such grants: the client opened its
    /// windows wide. A drip's rounds let out less than that each.
    #[tokio::test(start_paused = true)]
    async fn a_small_grant_after_a_packet_of_data_is_not_a_round() {
        let budget = FloodBudget::new();
        for _ in 0..10 * HTTP2_WINDOW_DRIP_BUDGET {
            budget.sent(head(DATA, 0, 4096));
            assert_eq!(budget.room_granted(3, 4096), None);
            budget.sent(head(DATA, 0, DRIP_GRANT as u32));
            assert_eq!(budget.room_granted(DRIP_GRANT - 1, 4096), None);
        }
        assert_eq!(budget.drip.left(), HTTP2_WINDOW_DRIP_BUDGET as i64);
        // Less than that between them: each is a round.
        for _ in 0..HTTP2_WINDOW_DRIP_BUDGET {
            budget.sent(head(DATA, 0, DRIP_GRANT as u32 - 1));
            assert_eq!(budget.room_granted(DRIP_GRANT - 1, 4096), None);
        }
        assert!(budget.room_granted(1, 4096).is_some(), "run out");
    }

    /// PINGs with nothing sent since the one before run the PING budget
    /// out at [`HTTP2_PING_BUDGET`] (time gives back
    /// [`PINGS_PER_SECOND`]); a PING after a HEADERS or a non-empty DATA
    /// frame we sent is free, however many; our own PINGs' answers (ACK)
    /// are never counted.
    #[tokio::test(start_paused = true)]
    async fn pings_with_nothing_sent_between_run_out_their_budget() {
        let budget = FloodBudget::new();
        let ping = head(PING, 0, 8);
        for _ in 0..10 * HTTP2_PING_BUDGET {
            budget.sent(head(HEADERS, 4, 20));
            assert_eq!(budget.receive(ping), None);
            budget.sent(head(DATA, 0, 5));
            assert_eq!(budget.receive(ping), None);
            budget.sent(head(DATA, 0, 0));
            assert_eq!(budget.receive(head(PING, ACK, 8)), None);
            budget.credit(1 << 20);
        }
        assert_eq!(budget.pings.left(), HTTP2_PING_BUDGET as i64);
        for _ in 0..HTTP2_PING_BUDGET {
            assert_eq!(budget.receive(ping), None);
        }
        assert_eq!(budget.receive(ping), Some(Flooded::Pings));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            budget.receive(ping),
            None,
            "two seconds: two back, one spent"
        );
        assert_eq!(budget.receive(ping), Some(Flooded::Pings));
    }

    /// One tiny frame no handler reads leaves the bucket one below full;
    /// 2 s of quiet then refill it to full, no more: the burst after gets
    /// one budget (its clock once restarted only at a charge that found it
    /// exactly full, and the quiet bought a second budget on top of the
    /// first: 3,999 frames; merge review, session 50).
    #[tokio::test(start_paused = true)]
    async fn quiet_after_a_frame_below_full_buys_no_second_budget() {
        let budget = FloodBudget::new();
        let tiny = head(DATA, 0, TINY_DATA_FRAME - 1);
        assert_eq!(budget.receive(tiny), None, "one frame no handler reads");
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut passed = 0u64;
        while budget.receive(tiny).is_none() {
            passed += 1;
        }
        // Paused time: the burst itself earns nothing.
        assert_eq!(passed, HTTP2_TINY_DATA_BUDGET, "frames in one burst");
    }

    /// A burst after the connection was idle (or its server too busy to
    /// read) finds the budget full, no fuller: the time it stayed full
    /// gives nothing back. It counted from the connection's start, so 2 s
    /// of quiet let a burst of twice the budget through (and a flood read
    /// late went on past h2's own bound on small frames, which closed the
    /// connection first, with its line).
    #[tokio::test(start_paused = true)]
    async fn time_spent_full_gives_nothing_back() {
        let budget = FloodBudget::new();
        tokio::time::advance(Duration::from_secs(2)).await;
        let tiny = head(DATA, 0, TINY_DATA_FRAME - 1);
        for n in 0..HTTP2_TINY_DATA_BUDGET {
            assert_eq!(budget.receive(tiny), None, "{n}");
        }
        assert_eq!(budget.receive(tiny), Some(Flooded::TinyData));
        // Time while it is below full still gives back.
        tokio::time::advance(Duration::from_millis(10)).await;
        for n in 0..9 {
            assert_eq!(budget.receive(tiny), None, "{n}: 10 ms, 10 back, 1 owed");
        }
        assert_eq!(budget.receive(tiny), Some(Flooded::TinyData));
    }

    /// Time gives back [`REFILL_PER_SECOND`], fractions of a byte kept for
    /// later; the tiny-DATA budget [`TINY_DATA_PER_SECOND`] frames.
    #[tokio::test(start_paused = true)]
    async fn time_refills_the_budget() {
        let budget = FloodBudget::new();
        assert!(!budget
            .control
            .charge(HTTP2_CONTROL_BUDGET + 100, budget.born));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            !budget.control.charge(0, budget.born),
            "half a second: 64 bytes of 100"
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(budget.control.charge(0, budget.born), "0.8 s: 102 bytes");
        assert_eq!(budget.control.left(), 2);

        let budget = FloodBudget::new();
        assert!(!budget.tiny.charge(HTTP2_TINY_DATA_BUDGET + 10, budget.born));
        tokio::time::advance(Duration::from_millis(9)).await;
        assert!(!budget.tiny.charge(0, budget.born), "9 ms: 9 frames of 10");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(budget.tiny.charge(0, budget.born), "10 ms: 10 frames");
    }
}
