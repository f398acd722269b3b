//! One `load` client connection: the reconnect loop shared by both protocols
//! ([`run`]: open the transport, count the handshake, hand the stream to the
//! HTTP/1.1 or HTTP/2 ([`crate::h2conn`]) exchange loop) and the HTTP/1.1 loop
//! itself. For HTTP/1.1 the request bytes are rendered once (K copies back to
//! back for `--pipeline K`), responses are parsed by [`ResponseParser`] out of
//! a buffer reused for the connection's whole life, and in-flight send times
//! sit in a fixed-capacity ring. The hot path (send, read, parse, record)
//! allocates nothing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::h2conn::{self, H2Request};
use crate::histogram::{new_histogram, record_ns};
use crate::parse::{ResponseParser, Step};
use crate::report::{ErrorCounts, ErrorKind};
use crate::schedule::{latency_ns, Schedule};
use crate::transport::{self, Endpoint, Handshake, Stream};

/// Renders one HTTP/1.1 request. A `Host` header is added unless given, and a
/// `Content-Length` whenever there is a body.
pub(crate) fn render_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = Vec::with_capacity(128 + body.len());
    r.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        r.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    for (k, v) in headers {
        r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// The protocol a run speaks on its connections.
#[derive(Debug, Clone)]
pub(crate) enum Protocol {
    /// HTTP/1.1 with the pre-rendered request in [`ConnShared::batch`].
    Http1,
    /// HTTP/2 (`--http2`): up to `streams` concurrent streams per connection.
    Http2 {
        /// Concurrent streams per connection.
        streams: usize,
        /// The request every stream sends (boxed: one per run, and the
        /// HTTP/1.1 variant should not carry its size).
        request: Box<H2Request>,
    },
}

/// What every connection of a thread shares (read-only).
#[derive(Debug, Clone)]
pub(crate) struct ConnShared {
    /// Where to connect, and TLS settings for `https://`.
    pub endpoint: Endpoint,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: Protocol,
    /// `--new-connection-per-request`: one request per connection, latency
    /// measured from the start of the connect.
    pub one_per_connection: bool,
    /// `pipeline` copies of the request, back to back.
    pub batch: Vec<u8>,
    /// Length of one request in `batch`.
    pub request_len: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Refill the pipeline when at most this many requests are in flight.
    pub refill_at: usize,
    /// Connect and response timeout.
    pub timeout: Duration,
    /// The run ends here (duration mode), or far in the future.
    pub deadline: Instant,
    /// The method is HEAD (responses have no body).
    pub head_request: bool,
}

/// Counters the progress display reads while the run goes (one writer thread each).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Live {
    /// Successful responses.
    pub requests: AtomicU64,
    /// Errors of any kind.
    pub errors: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Requests sent.
    pub sent: AtomicU64,
}

/// What a thread's connections accumulate besides the live counters.
#[derive(Debug)]
pub(crate) struct ThreadStats {
    /// Latencies, ns.
    pub hist: Histogram<u64>,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Open loop: sum of send lags, ns.
    pub lag_sum_ns: u128,
    /// Open loop: largest send lag, ns.
    pub lag_max_ns: u64,
    /// Open loop: requests due but never sent.
    pub backlog: u64,
    /// Connections opened (TLS handshake included).
    pub connects: u64,
    /// Full TLS handshakes.
    pub handshakes_full: u64,
    /// HTTP/2 requests sent again after a graceful GOAWAY refused them
    /// unprocessed.
    pub retried: u64,
    /// Resumed TLS handshakes.
    pub handshakes_resumed: u64,
    /// When the thread's last connection finished.
    pub finished_at: Instant,
}

impl ThreadStats {
    /// Empty stats.
    pub(crate) fn new() -> Self {
        ThreadStats {
            hist: new_histogram(),
            errors: ErrorCounts::default(),
            lag_sum_ns: 0,
            lag_max_ns: 0,
            backlog: 0,
            connects: 0,
            handshakes_full: 0,
            retried: 0,
            handshakes_resumed: 0,
            finished_at: Instant::now(),
        }
    }
}

/// Size of a connection's read buffer; it grows (up to [`MAX_BUF`]) only for huge heads.
const BUF: usize = 16 * 1024;
const MAX_BUF: usize = 1024 * 1024;

/// Why a connection's inner loop ended.
pub(crate) enum End {
    /// Reconnect (error already counted, or the server asked to close).
    Reconnect,
    /// The budget is spent or the deadline passed.
    Finished,
}

/// Counts what happens on a thread's connections: errors, responses
/// (latency and status class) and opened connections with their handshakes.
#[derive(Clone, Copy)]
pub(crate) struct Recorder<'a> {
    stats: &'a RefCell<ThreadStats>,
    live: &'a Live,
}

impl Recorder<'_> {
    /// Counts one error of `kind`.
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.stats.borrow_mut().errors.add(kind);
        self.live.errors.fetch_add(1, Relaxed);
    }

    /// Counts a request refused unprocessed that will be sent again; its
    /// send is taken back (it counts when it goes again).
    pub(crate) fn retried(&self) {
        self.stats.borrow_mut().retried += 1;
        self.live.sent.fetch_sub(1, Relaxed);
    }

    /// Counts `n` sent requests.
    pub(crate) fn sent(&self, n: u64) {
        self.live.sent.fetch_add(n, Relaxed);
    }

    /// Counts `n` bytes read.
    pub(crate) fn read(&self, n: u64) {
        self.live.bytes.fetch_add(n, Relaxed);
    }

    /// Counts `n` successful responses for the progress display (the
    /// histogram already has them: see [`Recorder::response`]).
    pub(crate) fn succeeded(&self, n: u64) {
        self.live.requests.fetch_add(n, Relaxed);
    }

    /// Records a complete response started at `start`: its latency, and its
    /// status as an error for 4xx/5xx. Returns 1 if it counts as successful.
    #[inline]
    pub(crate) fn response(&self, status: u16, start: Instant, now: Instant) -> u64 {
        let mut st = self.stats.borrow_mut();
        record_ns(&mut st.hist, latency_ns(start, now));
        let kind = match status {
            400..=499 => ErrorKind::Status4xx,
            500..=599 => ErrorKind::Status5xx,
            _ => return 1,
        };
        st.errors.add(kind);
        self.live.errors.fetch_add(1, Relaxed);
        0
    }

    /// Counts an opened connection and its handshake.
    fn opened(&self, handshake: Handshake) {
        let mut st = self.stats.borrow_mut();
        st.connects += 1;
        match handshake {
            Handshake::None => {}
            Handshake::Full => st.handshakes_full += 1,
            Handshake::Resumed => st.handshakes_resumed += 1,
        }
    }
}

/// Runs one connection until it has completed `budget` requests (each error also
/// consumes one, so a dead server cannot keep it alive) or the deadline passes,
/// reconnecting whenever the connection ends early (or after each request with
/// `--new-connection-per-request`). `schedule` is `Some` in open loop.
pub(crate) async fn run(
    shared: Rc<ConnShared>,
    mut budget: u64,
    mut schedule: Option<Schedule>,
    stats: Rc<RefCell<ThreadStats>>,
    live: Arc<Live>,
) {
    let rec = Recorder {
        stats: &stats,
        live: &live,
    };
    // HTTP/1.1 state; the buffer is allocated on the first HTTP/1.1 connection.
    let mut buf = Vec::new();
    let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(shared.pipeline);
    let mut parser = ResponseParser::new(shared.head_request);
    let mut conn = Conn {
        shared: &shared,
        buf: &mut buf,
        inflight: &mut inflight,
        parser: &mut parser,
        rec,
        free_since: Instant::now(),
    };
    while budget > 0 && Instant::now() < shared.deadline {
        let opened = Instant::now();
        let stream = match transport::open(&shared.endpoint, shared.timeout).await {
            Ok((stream, handshake)) => {
                rec.opened(handshake);
                stream
            }
            Err(kind) => {
                rec.error(kind);
                budget -= 1;
                // Do not spin on a dead server: wait a little before retrying.
                tokio::time::sleep_until(tokio::time::Instant::from_std(
                    (Instant::now() + Duration::from_millis(10)).min(shared.deadline),
                ))
                .await;
                continue;
            }
        };
        let end = match &shared.protocol {
            Protocol::Http1 => {
                conn.serve(stream, opened, &mut budget, schedule.as_mut())
                    .await
            }
            Protocol::Http2 { streams, request } => {
                let exchange = h2conn::Exchange {
                    shared: &shared,
                    request,
                    streams: *streams,
                    rec,
                };
                exchange
                    .serve(stream, opened, &mut budget, schedule.as_mut())
                    .await
            }
        };
        match end {
            End::Reconnect => continue,
            End::Finished => break,
        }
    }
    if let Some(s) = &schedule {
        let mut st = stats.borrow_mut();
        st.lag_sum_ns += s.lag_sum_ns();
        st.lag_max_ns = st.lag_max_ns.max(s.lag_max_ns());
        if budget > 0 {
            st.backlog += s.backlog(Instant::now().min(shared.deadline)).min(budget);
        }
    }
}

/// The per-connection state borrowed by the inner loop.
struct Conn<'a> {
    shared: &'a ConnShared,
    buf: &'a mut Vec<u8>,
    inflight: &'a mut VecDeque<Instant>,
    parser: &'a mut ResponseParser,
    rec: Recorder<'a>,
    /// Open loop: when the pipeline last went from full to having a free slot.
    free_since: Instant,
}

impl Conn<'_> {
    fn error(&self, kind: ErrorKind) {
        self.rec.error(kind);
    }

    /// The connection ends with the requests in flight unanswered: each is
    /// lost, so each counts as an error of `kind` and a request of the
    /// budget (at least `at_least`: the failure itself). Counting one per
    /// connection hid every pipelined request behind the first, where
    /// `h2conn` counts each stream.
    fn lose_inflight(&mut self, kind: ErrorKind, budget: &mut u64, at_least: usize) {
        let lost = self.inflight.len().max(at_least) as u64;
        self.inflight.clear();
        for _ in 0..lost {
            self.error(kind);
        }
        *budget = budget.saturating_sub(lost);
    }

    /// Drives one established connection, opened at `opened`.
    async fn serve(
        &mut self,
        mut stream: Stream,
        opened: Instant,
        budget: &mut u64,
        mut schedule: Option<&mut Schedule>,
    ) -> End {
        let sh = self.shared;
        if self.buf.is_empty() {
            self.buf.resize(BUF, 0);
        }
        self.inflight.clear();
        self.parser.reset();
        let (mut pos, mut filled) = (0usize, 0usize);
        // The clock is read once per wake-up: after a read (or the timer), parsing
        // and the next send follow at once, so that reading serves as their time.
        let mut now = Instant::now();
        let mut last_progress = now;
        self.free_since = now;
        // One timer per connection, re-armed lazily: it wakes for the deadline, a
        // response timeout, or (open loop) the next intended send.
        let mut timer = pin!(tokio::time::sleep_until(tokio::time::Instant::from_std(
            sh.deadline
        )));
        let mut timer_at = sh.deadline;
        loop {
            // Refill the pipeline once it has drained to the low-water mark, so
            // requests go out in batches (one write, one segment) rather than
            // one per response.
            let room = if self.inflight.len() <= sh.refill_at {
                (sh.pipeline - self.inflight.len()) as u64
            } else {
                0
            };
            let room = room.min(budget.saturating_sub(self.inflight.len() as u64));
            let mut n = 0usize;
            if room > 0 {
                match schedule.as_deref_mut() {
                    Some(s) => {
                        while (n as u64) < room {
                            let Some(intended) = s.take(now) else { break };
                            let start = s.latency_start(intended, self.free_since, now);
                            self.inflight.push_back(start);
                            n += 1;
                        }
                    }
                    None => {
                        // A connection of its own: the request's latency
                        // includes the connect and the TLS handshake.
                        let start = if sh.one_per_connection { opened } else { now };
                        for _ in 0..room {
                            self.inflight.push_back(start);
                        }
                        n = room as usize;
                    }
                }
            }
            if n > 0 {
                if self.inflight.len() == n {
                    last_progress = now;
                }
                if let Err(e) = stream.write_all(&sh.batch[..n * sh.request_len]).await {
                    self.lose_inflight(ErrorKind::of_io(&e), budget, 1);
                    return End::Reconnect;
                }
                self.rec.sent(n as u64);
            }
            if *budget == 0 {
                return End::Finished;
            }

            // Wake-up time: deadline, response timeout, next intended send.
            let mut wake = sh.deadline;
            if !self.inflight.is_empty() {
                wake = wake.min(last_progress + sh.timeout);
            }
            if let Some(s) = schedule.as_deref() {
                if self.inflight.len() < sh.pipeline {
                    wake = wake.min(s.next_due());
                }
            }
            if wake < timer_at || timer.is_elapsed() {
                timer.as_mut().reset(tokio::time::Instant::from_std(wake));
                timer_at = wake;
            }

            let read = tokio::select! {
                biased;
                r = stream.read(&mut self.buf[filled..]) => Some(r),
                () = timer.as_mut() => None,
            };
            now = Instant::now();
            let Some(read) = read else {
                if now >= sh.deadline {
                    return End::Finished;
                }
                if !self.inflight.is_empty() && now >= last_progress + sh.timeout {
                    self.lose_inflight(ErrorKind::ReadTimeout, budget, 1);
                    return End::Reconnect;
                }
                // Open-loop send due, or the timer was early: re-arm.
                timer_at = now;
                continue;
            };
            let got = match read {
                Ok(0) => {
                    if let Some(resp) = self.parser.on_eof() {
                        let ok = self.complete(resp.status, now, budget);
                        self.rec.succeeded(ok);
                        // Requests pipelined behind a close-delimited
                        // response are lost with the connection.
                        self.lose_inflight(ErrorKind::Closed, budget, 0);
                        return End::Reconnect;
                    }
                    if !self.inflight.is_empty() || !self.parser.idle() {
                        self.lose_inflight(ErrorKind::Closed, budget, 1);
                    }
                    return End::Reconnect;
                }
                Ok(n) => n,
                Err(e) => {
                    self.lose_inflight(ErrorKind::of_io(&e), budget, 1);
                    return End::Reconnect;
                }
            };
            filled += got;
            self.rec.read(got as u64);
            last_progress = now;
            let mut ok = 0u64;
            loop {
                match self.parser.parse(&self.buf[pos..filled]) {
                    Ok(Step::Partial { consumed }) => {
                        pos += consumed;
                        break;
                    }
                    Ok(Step::Done { consumed, response }) => {
                        pos += consumed;
                        ok += self.complete(response.status, now, budget);
                        if response.close || *budget == 0 || sh.one_per_connection {
                            self.rec.succeeded(ok);
                            // After a `Connection: close` the server reads
                            // no further: requests pipelined behind it are
                            // lost, not merely resent. (With the budget
                            // spent, or one request per connection, nothing
                            // is in flight.)
                            self.lose_inflight(ErrorKind::Closed, budget, 0);
                            return if *budget == 0 {
                                End::Finished
                            } else {
                                End::Reconnect
                            };
                        }
                    }
                    Err(_) => {
                        self.rec.succeeded(ok);
                        // The bad response, and those behind it, which the
                        // reconnect gives up.
                        self.lose_inflight(ErrorKind::BadResponse, budget, 1);
                        return End::Reconnect;
                    }
                }
            }
            self.rec.succeeded(ok);
            // Keep the unparsed tail at the front of the buffer.
            if pos == filled {
                pos = 0;
                filled = 0;
            } else if filled == self.buf.len() {
                if pos > 0 {
                    self.buf.copy_within(pos..filled, 0);
                    filled -= pos;
                    pos = 0;
                } else if self.buf.len() < MAX_BUF {
                    let len = self.buf.len() * 2;
                    self.buf.resize(len, 0);
                } else {
                    self.lose_inflight(ErrorKind::BadResponse, budget, 1);
                    return End::Reconnect;
                }
            }
        }
    }

    /// Accounts one complete response; returns 1 if it counts as a successful request.
    #[inline]
    fn complete(&mut self, status: u16, now: Instant, budget: &mut u64) -> u64 {
        if self.inflight.len() == self.shared.pipeline {
            self.free_since = now; // a slot frees up now
        }
        let Some(start) = self.inflight.pop_front() else {
            // A response nobody asked for.
            self.error(ErrorKind::BadResponse);
            return 0;
        };
        *budget -= 1;
        self.rec.response(status, start, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests() {
        let r = render_request("GET", "127.0.0.1:8080", "/x", &[], b"");
        assert_eq!(r, b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
        let h = vec![
            ("Host".to_string(), "h".to_string()),
            ("X-A".to_string(), "1".to_string()),
        ];
        let r = render_request("POST", "ignored", "/", &h, b"abc");
        assert_eq!(
            r,
            b"POST / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc"
        );
    }
}
