//! The reports: [`LoadReport`] and [`HoldReport`] (their serde form *is* the
//! `--json` schema the bench scripts read), the error taxonomy ([`ErrorCounts`]),
//! human-readable printing, and writing JSON files.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::histogram::{show_us, Percentiles};

/// The kinds of failure a request or connection can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The server refused the connection.
    ConnectRefused,
    /// Connecting took longer than `--timeout`.
    ConnectTimeout,
    /// A response (or heartbeat reply) took longer than `--timeout`.
    ReadTimeout,
    /// The connection was reset.
    Reset,
    /// The response was not valid HTTP (or not the expected line).
    BadResponse,
    /// A 4xx status.
    Status4xx,
    /// A 5xx status.
    Status5xx,
    /// The server closed the connection with requests in flight.
    Closed,
    /// A TLS handshake failed (alert, certificate rejected, not TLS).
    Tls,
    /// Any other I/O error (including failed connects for other reasons).
    Other,
}

impl ErrorKind {
    /// Classifies an I/O error from connecting.
    pub(crate) fn of_connect(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
            std::io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
            _ => ErrorKind::Other,
        }
    }

    /// Classifies an I/O error on an established connection.
    pub(crate) fn of_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => ErrorKind::Reset,
            std::io::ErrorKind::TimedOut => ErrorKind::ReadTimeout,
            _ => ErrorKind::Other,
        }
    }
}

/// Error counts by kind (the `errors` object of the JSON reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Connections refused by the server.
    pub connect_refused: u64,
    /// Connects that timed out.
    pub connect_timeout: u64,
    /// Responses that did not arrive within the timeout.
    pub read_timeout: u64,
    /// Connections reset (ECONNRESET, EPIPE).
    pub reset: u64,
    /// Responses that were not valid HTTP/1.1.
    pub bad_response: u64,
    /// Responses with a 4xx status.
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    pub status_5xx: u64,
    /// Connections the server closed while requests were in flight.
    pub closed: u64,
    /// TLS handshakes that failed (`https://` only).
    #[serde(default)]
    pub tls: u64,
    /// Other I/O errors.
    pub other: u64,
}

impl ErrorCounts {
    /// Counts one error of `kind`.
    pub(crate) fn add(&mut self, kind: ErrorKind) {
        *self.slot(kind) += 1;
    }

    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::ConnectRefused => &mut self.connect_refused,
            ErrorKind::ConnectTimeout => &mut self.connect_timeout,
            ErrorKind::ReadTimeout => &mut self.read_timeout,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::BadResponse => &mut self.bad_response,
            ErrorKind::Status4xx => &mut self.status_4xx,
            ErrorKind::Status5xx => &mut self.status_5xx,
            ErrorKind::Closed => &mut self.closed,
            ErrorKind::Tls => &mut self.tls,
            ErrorKind::Other => &mut self.other,
        }
    }

    /// Adds another set of counts into this one.
    pub fn merge(&mut self, o: &ErrorCounts) {
        for (a, b) in self.fields_mut().into_iter().zip(o.fields()) {
            *a += b;
        }
    }

    /// All errors together.
    pub fn total(&self) -> u64 {
        self.fields().iter().sum()
    }

    fn fields(&self) -> [u64; 10] {
        [
            self.connect_refused,
            self.connect_timeout,
            self.read_timeout,
            self.reset,
            self.bad_response,
            self.status_4xx,
            self.status_5xx,
            self.closed,
            self.tls,
            self.other,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 10] {
        [
            &mut self.connect_refused,
            &mut self.connect_timeout,
            &mut self.read_timeout,
            &mut self.reset,
            &mut self.bad_response,
            &mut self.status_4xx,
            &mut self.status_5xx,
            &mut self.closed,
            &mut self.tls,
            &mut self.other,
        ]
    }

    /// `kind=count` pairs of the non-zero counts, for human output.
    fn nonzero(&self) -> String {
        const NAMES: [&str; 10] = [
            "connect_refused",
            "connect_timeout",
            "read_timeout",
            "reset",
            "bad_response",
            "status_4xx",
            "status_5xx",
            "closed",
            "tls",
            "other",
        ];
        let parts: Vec<String> = NAMES
            .iter()
            .zip(self.fields())
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

/// The result of a `load` run (the `--json` schema).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// The target URL.
    pub url: String,
    /// Connections used.
    pub connections: usize,
    /// Threads used.
    pub threads: usize,
    /// Requests in flight per connection (HTTP/1.1 pipelining; 1 with `--http2`).
    pub pipeline: usize,
    /// `"http/1.1"` or `"h2"`.
    #[serde(default = "http1_name")]
    pub protocol: String,
    /// `--http2`: concurrent streams per connection; `null` for HTTP/1.1.
    #[serde(default)]
    pub streams: Option<usize>,
    /// `--new-connection-per-request`: each request had a connection (and TLS
    /// handshake) of its own.
    #[serde(default)]
    pub new_connection_per_request: bool,
    /// Connections opened successfully during the run (TLS handshake included).
    #[serde(default)]
    pub connections_opened: u64,
    /// `connections_opened / duration_secs`.
    #[serde(default)]
    pub connections_per_sec: f64,
    /// TLS handshakes (`https://` only, else `null`).
    #[serde(default)]
    pub tls: Option<TlsStats>,
    /// Completed responses with a non-error status (1xx-3xx).
    pub requests: u64,
    /// `--http2`: requests a graceful GOAWAY refused unprocessed (RFC 9113
    /// §6.8: above its last-stream-id, or opened after it), sent again on
    /// the next connection: neither errors nor requests of the budget (in
    /// open loop each keeps its latency start, so the wait shows).
    #[serde(default)]
    pub retried: u64,
    /// Errors by kind (4xx/5xx responses included).
    pub errors: ErrorCounts,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// Wall-clock length of the run, in seconds.
    pub duration_secs: f64,
    /// `requests / duration_secs`.
    pub rps: f64,
    /// Response bytes read (heads and bodies).
    pub bytes_read: u64,
    /// `bytes_read / duration_secs`.
    pub bytes_per_sec: f64,
    /// CPU time (user + system) the load generator itself used, in seconds.
    pub client_cpu_secs: f64,
    /// `requests / client_cpu_secs`: the client's efficiency.
    pub requests_per_client_cpu_sec: f64,
    /// Latency percentiles in microseconds (from the intended send time in
    /// open loop); `null` if no request completed.
    pub latency_us: Percentiles,
    /// `--rate`, if the run was open loop.
    pub target_rate: Option<f64>,
    /// Requests sent per second (completed or not).
    pub achieved_rate: f64,
    /// Open loop: how far the achieved rate fell short of the target, in percent.
    pub rate_shortfall_pct: Option<f64>,
    /// Open loop: requests that were due but never sent by the end.
    pub behind_requests: Option<u64>,
    /// Open loop: mean lag of actual sends behind their intended times, in microseconds.
    pub send_lag_mean_us: Option<f64>,
    /// Open loop: largest send lag, in microseconds.
    pub send_lag_max_us: Option<f64>,
}

impl LoadReport {
    /// Reads a report written by `load --json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let concurrency = match self.streams {
            Some(k) => format!("{k} streams each"),
            None => format!("pipeline {}", self.pipeline),
        };
        let _ = writeln!(
            s,
            "load {} ({}{}): {} connections on {} threads, {concurrency}, {:.2}s",
            self.url,
            self.protocol,
            if self.new_connection_per_request {
                ", a new connection per request"
            } else {
                ""
            },
            self.connections,
            self.threads,
            self.duration_secs
        );
        let _ = writeln!(s, "  latency us   {}", l.spread());
        let _ = writeln!(
            s,
            "  requests     {} ok, {:.0} req/s, {} read/s",
            self.requests,
            self.rps,
            human_bytes(self.bytes_per_sec)
        );
        let _ = writeln!(
            s,
            "  errors       {} ({})",
            self.errors_total,
            self.errors.nonzero()
        );
        if self.retried > 0 {
            let _ = writeln!(
                s,
                "  retried      {} refused unprocessed by a graceful GOAWAY, sent again",
                self.retried
            );
        }
        let _ = writeln!(
            s,
            "  client cpu   {:.3}s, {:.0} requests per client CPU-second",
            self.client_cpu_secs, self.requests_per_client_cpu_sec
        );
        // New connections opened over the run (the -c connections, plus any
        // reopened after the server closed one, or one per request with
        // --new-connection-per-request), and how many per second that was.
        let _ = writeln!(
            s,
            "  connections  {} opened during the run, {:.0} new connections/s (-c {})",
            self.connections_opened, self.connections_per_sec, self.connections
        );
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "  tls          {} full handshakes ({:.0}/s), {} resumed ({:.0}/s), resumption {}",
                t.handshakes_full,
                t.full_per_sec,
                t.handshakes_resumed,
                t.resumed_per_sec,
                if t.resumption { "on" } else { "off" }
            );
        }
        if let Some(target) = self.target_rate {
            let _ = writeln!(
                s,
                "  open loop    target {:.0} req/s, achieved {:.0} req/s ({:.1}% behind), {} requests never sent, send lag mean {:.0}us max {:.0}us",
                target,
                self.achieved_rate,
                self.rate_shortfall_pct.unwrap_or(0.0),
                self.behind_requests.unwrap_or(0),
                self.send_lag_mean_us.unwrap_or(0.0),
                self.send_lag_max_us.unwrap_or(0.0),
            );
        }
        s
    }
}

/// TLS handshake counts of a `load` run over `https://`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsStats {
    /// Whether the client kept a session cache (off with `--no-tls-resume`).
    pub resumption: bool,
    /// Full handshakes completed.
    pub handshakes_full: u64,
    /// Resumed (abbreviated) handshakes completed.
    pub handshakes_resumed: u64,
    /// `handshakes_full / duration_secs`.
    pub full_per_sec: f64,
    /// `handshakes_resumed / duration_secs`.
    pub resumed_per_sec: f64,
}

fn http1_name() -> String {
    "http/1.1".into()
}

/// `closed_by_server 7971 (1001: 7971)`: WebSocket close frames from the
/// server by status code (0: the codes past 1015), for progress and the
/// summary; empty when there were none.
pub(crate) fn closes_text(total: u64, codes: &std::collections::BTreeMap<u16, u64>) -> String {
    if total == 0 {
        return String::new();
    }
    let by_code: Vec<String> = codes
        .iter()
        .map(|(code, n)| match code {
            0 => format!("other: {n}"),
            _ => format!("{code}: {n}"),
        })
        .collect();
    format!("closed_by_server {total} ({})", by_code.join(", "))
}

/// The result of a `hold` run (the `--json` schema).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldReport {
    /// The target.
    pub target: String,
    /// Connections asked for (`-c`).
    pub target_connections: u64,
    /// Most connections open at once (summed over processes at each progress tick,
    /// or the exact peak with one process).
    pub connections_peak: u64,
    /// Connections still open when the hold duration ended.
    pub connections_open_at_end: u64,
    /// Time from the first connect until every connection had been attempted, in seconds.
    pub ramp_secs: f64,
    /// Time connections were held after the ramp, in seconds.
    pub hold_secs: f64,
    /// Connections the server closed (EOF) without a WebSocket close frame.
    pub drops: u64,
    /// WebSocket connections the server closed with a close frame (a
    /// graceful drain's 1001): not drops.
    #[serde(default)]
    pub closed_by_server: u64,
    /// Those by status code (codes past 1015 under 0).
    #[serde(default)]
    pub close_codes: std::collections::BTreeMap<u16, u64>,
    /// Connections reset.
    pub resets: u64,
    /// Connects that failed.
    pub failed_connects: u64,
    /// Reconnects made (`--reconnect`).
    pub reconnects: u64,
    /// Heartbeats answered as expected (not the opening requests: those
    /// are `opens_ok`).
    pub heartbeats_ok: u64,
    /// Heartbeats that failed (timeout, bad reply, error status, or lost
    /// with their connection), and opening requests that failed.
    pub heartbeat_errors: u64,
    /// Opening requests (HTTP `GET`, WebSocket upgrade; none for tcp://)
    /// answered as expected, one per connection made. Reports from before
    /// this field counted them in `heartbeats_ok` and its latencies.
    #[serde(default)]
    pub opens_ok: u64,
    /// Heartbeats sent and still waiting for their reply when the run
    /// stopped: neither ok nor failed. (A heartbeat whose connection ended
    /// while it waited counts in `heartbeat_errors`.)
    #[serde(default)]
    pub heartbeats_pending_at_end: u64,
    /// Heartbeat latency percentiles in microseconds (`null` if none was
    /// answered).
    pub heartbeat_latency_us: Percentiles,
    /// The same for the heartbeats sent after the ramp (in each process,
    /// once its every connection had been tried): the hold alone, without
    /// the connects that share the CPUs during the ramp.
    #[serde(default)]
    pub heartbeat_latency_holding_us: Percentiles,
    /// The same for the heartbeats sent one interval or more after the ramp
    /// (in each process): the steady state, without the backlog of
    /// heartbeats a ramp the machine could not keep up with left behind.
    #[serde(default)]
    pub heartbeat_latency_steady_us: Percentiles,
    /// Pushed frames received (`--receive`).
    #[serde(default)]
    pub pushes_received: u64,
    /// Push delivery latency (now minus the send time the push carries)
    /// percentiles in microseconds; `max` is the time to the last delivery.
    #[serde(default)]
    pub push_latency_us: Percentiles,
    /// Connections that waited between heartbeats in a thread's parking
    /// lot, with no task of their own (every cleartext one; TLS ones keep a
    /// task each); each connect counts.
    #[serde(default)]
    pub connections_parked: u64,
    /// http:// beat ticks on which the wall clock (`CLOCK_REALTIME`) had
    /// stepped since the last tick (NTP, `date -s`): their replies were
    /// timed when read (at most a tick late), not by the kernel's receive
    /// stamps, which the step would have shifted.
    #[serde(default)]
    pub wall_clock_steps: u64,
    /// Heartbeats the socket could not take whole (its send buffer was
    /// full: the server was not reading), on cleartext and TLS connections
    /// alike; their rest went out as soon as the socket was writable, and
    /// they were timed from their first write, so the wait for the server
    /// to read them is in their latency.
    #[serde(default)]
    pub beats_held_back: u64,
    /// Processes used.
    pub processes: usize,
    /// Source addresses used (empty: the kernel's choice).
    pub sources: usize,
    /// CPU time (user + system) of the run: this process and its child processes, in seconds.
    pub client_cpu_secs: f64,
}

impl HoldReport {
    /// Reads a report written by `hold --json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let l = &self.heartbeat_latency_us;
        let _ = writeln!(
            s,
            "hold {}: {} connections asked, peak {}, open at end {}, {} process(es)",
            self.target,
            self.target_connections,
            self.connections_peak,
            self.connections_open_at_end,
            self.processes
        );
        let _ = writeln!(
            s,
            "  ramp {:.2}s, held {:.2}s",
            self.ramp_secs, self.hold_secs
        );
        let _ = writeln!(
            s,
            "  drops {}  resets {}  failed connects {}  reconnects {}",
            self.drops, self.resets, self.failed_connects, self.reconnects
        );
        if self.closed_by_server > 0 {
            let _ = writeln!(
                s,
                "  {}",
                closes_text(self.closed_by_server, &self.close_codes)
            );
        }
        let _ = writeln!(
            s,
            "  heartbeats   {} ok, {} failed, {} waiting at the end; opening requests {} ok",
            self.heartbeats_ok,
            self.heartbeat_errors,
            self.heartbeats_pending_at_end,
            self.opens_ok
        );
        let _ = writeln!(s, "  latency us   {}", l.spread());
        let h = &self.heartbeat_latency_holding_us;
        let _ = writeln!(s, "  after ramp   {} ({} heartbeats)", h.spread(), h.count);
        let h = &self.heartbeat_latency_steady_us;
        let _ = writeln!(
            s,
            "  steady       {} ({} heartbeats sent one interval or more after the ramp)",
            h.spread(),
            h.count
        );
        if self.wall_clock_steps > 0 {
            let _ = writeln!(
                s,
                "  wall clock   stepped before {} tick(s): their replies timed when read",
                self.wall_clock_steps
            );
        }
        if self.beats_held_back > 0 {
            let _ = writeln!(
                s,
                "  held back    {} heartbeat(s) the socket could not take whole (the server was not reading)",
                self.beats_held_back
            );
        }
        if self.pushes_received > 0 {
            let p = &self.push_latency_us;
            let _ = writeln!(s, "  pushes       {} received", self.pushes_received);
            let _ = writeln!(
                s,
                "  delivery us  p50 {}  p90 {}  p99 {}  p99.9 {}  max {} (the last delivery)",
                show_us(p.p50),
                show_us(p.p90),
                show_us(p.p99),
                show_us(p.p999),
                show_us(p.max)
            );
        }
        s
    }
}

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LoadError> {
    let text = serde_json::to_string_pretty(value).expect("reports always serialize");
    std::fs::write(path, text + "\n").map_err(|cause| LoadError::Write {
        path: path.to_owned(),
        cause,
    })
}

/// `1.2 MB`-style formatting of a byte rate.
fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counts_merge_and_total() {
        let mut a = ErrorCounts::default();
        a.add(ErrorKind::Status5xx);
        a.add(ErrorKind::Reset);
        let mut b = ErrorCounts::default();
        b.add(ErrorKind::Status5xx);
        a.merge(&b);
        assert_eq!((a.status_5xx, a.reset, a.total()), (2, 1, 3));
        assert_eq!(a.nonzero(), "reset=1 status_5xx=2");
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["status_5xx"], 2);
        assert_eq!(json["connect_refused"], 0);
    }
}
