//! What a chat or game server watches its rooms by, beside the connection
//! counters: native WebSocket closes by close code and by who closed
//! (`megaconn_ws_closes_total{direction, code}`), and how long a publish
//! waited in each worker's hub queue before that worker handed it to the
//! topic's members (`megaconn_publish_lag_seconds`).
//!
//! Both are fixed arrays of relaxed atomics in each worker's counters
//! (`WorkerStats::messages.rooms`), summed at scrape time ([`RoomStats`]):
//! nothing is allocated, hashed or formatted per close or per publish, and
//! the label set is bounded whatever codes peers send (4000–4999 are one
//! label, `4xxx`; unregistered ones `other`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::observe::close::CloseReason;
use crate::observe::metrics::{DurationHistogram, DURATION_BOUNDS, DURATION_BUCKETS};
use crate::observe::stats::add;

/// Labels of `code` on `megaconn_ws_closes_total`, in counter order: the
/// registered codes a peer or megaconn sends (1005: a close frame without
/// a code; 1006: no close frame at all, the TCP connection ended or was
/// reset), the application ranges, then anything else.
pub const WS_CLOSE_CODE_LABELS: [&str; WS_CLOSE_CODES] = [
    "1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009", "1010", "1011", "1012",
    "1013", "1014", "3xxx", "4xxx", "other",
];

/// How many `code` labels there are ([`WS_CLOSE_CODE_LABELS`]).
pub const WS_CLOSE_CODES: usize = 17;

/// Labels of `direction` on `megaconn_ws_closes_total`: `sent`, the server
/// began the close (its close frame's code, or 1006 when it closed without
/// one: a write timeout, [`Hub::reset`](crate::Hub::reset), a connection
/// cut off at `shutdown_timeout` before its goodbye; one cut off in its
/// close handshake counts its goodbye's code, 1001 by default); `received`,
/// the peer did (its close frame's code, or 1006 when it dropped the TCP
/// connection without one).
pub const WS_CLOSE_DIRECTION_LABELS: [&str; 2] = ["sent", "received"];

/// A close frame's code with no code in it (RFC 6455 §7.4.1: reported, never
/// sent).
pub const NO_STATUS: u16 = 1005;

/// No close frame at all (RFC 6455 §7.4.1: reported, never sent).
pub const ABNORMAL: u16 = 1006;

/// Who began a WebSocket's close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closer {
    /// The server: its close frame, or its TCP close without one.
    Server,
    /// The peer: its close frame, or its TCP close (or reset) without one.
    Peer,
}

/// `code`'s position in [`WS_CLOSE_CODE_LABELS`].
fn code_index(code: u16) -> usize {
    match code {
        1000..=1003 => usize::from(code - 1000),
        1005..=1014 => usize::from(code - 1001),
        3000..=3999 => 14,
        4000..=4999 => 15,
        _ => 16,
    }
}

/// One worker's room counters.
#[derive(Debug, Default)]
pub(crate) struct RoomCounters {
    /// Native WebSocket closes, by [`Closer`] and [`code_index`].
    ws_closes: [[AtomicU64; WS_CLOSE_CODES]; 2],
    /// Publish lag per bucket of `metrics::DURATION_BUCKETS` (not
    /// cumulative; the last is `+Inf`), one observation per publish per
    /// worker.
    lag_buckets: [AtomicU64; DURATION_BOUNDS + 1],
    /// The sum of those lags, in nanoseconds.
    lag_nanos: AtomicU64,
}

impl RoomCounters {
    /// A native WebSocket closed: `closer` began it, with `code` (1006:
    /// without a close frame).
    pub(crate) fn ws_closed(&self, closer: Closer, code: u16) {
        let row = match closer {
            Closer::Server => 0,
            Closer::Peer => 1,
        };
        add(&self.ws_closes[row][code_index(code)], 1);
    }

    /// A publish waited `lag` in this worker's hub queue.
    pub(crate) fn publish_waited(&self, lag: Duration) {
        let nanos = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
        // Bounds in seconds, compared as such: a few float compares per
        // publish per worker (the request path's nanosecond table is
        // compiled only with the `metrics` feature).
        let seconds = lag.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BOUNDS);
        add(&self.lag_buckets[bucket], 1);
        add(&self.lag_nanos, nanos);
    }
}

/// Who began a native WebSocket's close that ended with `reason` and no
/// close frame of the peer's, and with which code: the server's close
/// frame (`sent`, its code), else none (1006) from whoever closed. A reset,
/// an end of stream or a socket error is the peer's doing; any other
/// reason the server's.
pub(crate) fn closer_without_peer_frame(reason: CloseReason, sent: Option<u16>) -> (Closer, u16) {
    match (sent, reason) {
        (Some(code), _) => (Closer::Server, code),
        (None, CloseReason::ClientClosed | CloseReason::Io(_)) => (Closer::Peer, ABNORMAL),
        (None, _) => (Closer::Server, ABNORMAL),
    }
}

/// The room counters summed over workers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomStats {
    /// Native WebSocket closes: `[sent, received]` (see
    /// [`WS_CLOSE_DIRECTION_LABELS`]), each by code in the order of
    /// [`WS_CLOSE_CODE_LABELS`]. One per closed connection: their sum is
    /// the native WebSockets closed, those a forced shutdown cut off
    /// included (until session 48 they counted nowhere).
    pub ws_closes: [[u64; WS_CLOSE_CODES]; 2],
    /// How long publishes waited in the workers' hub queues before each
    /// worker began handing them to the topic's members: one observation
    /// per publish per worker that took it (a worker with no member
    /// observes it too), buckets as the request duration's.
    pub publish_lag: DurationHistogram,
}

impl Default for RoomStats {
    fn default() -> RoomStats {
        RoomStats {
            ws_closes: [[0; WS_CLOSE_CODES]; 2],
            publish_lag: DurationHistogram::default(),
        }
    }
}

impl RoomStats {
    /// Adds one worker's counters.
    pub(crate) fn add(&mut self, c: &RoomCounters) {
        for (sums, counters) in self.ws_closes.iter_mut().zip(&c.ws_closes) {
            for (sum, n) in sums.iter_mut().zip(counters) {
                *sum += n.load(Relaxed);
            }
        }
        for (sum, n) in self.publish_lag.counts.iter_mut().zip(&c.lag_buckets) {
            *sum += n.load(Relaxed);
        }
        self.publish_lag.sum += Duration::from_nanos(c.lag_nanos.load(Relaxed));
    }

    /// Closes begun by `direction` (`sent` or `received`) with `code`'s
    /// label (`1000`, `4xxx`, …); 0 for a label there is not.
    pub fn ws_closes(&self, direction: &str, code: &str) -> u64 {
        let row = WS_CLOSE_DIRECTION_LABELS
            .iter()
            .position(|d| *d == direction);
        let column = WS_CLOSE_CODE_LABELS.iter().position(|c| *c == code);
        match (row, column) {
            (Some(row), Some(column)) => self.ws_closes[row][column],
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_label() {
        for (code, label) in [
            (1000, "1000"),
            (1003, "1003"),
            (1004, "other"),
            (1005, "1005"),
            (1006, "1006"),
            (1013, "1013"),
            (1014, "1014"),
            (1015, "other"),
            (2999, "other"),
            (3000, "3xxx"),
            (4000, "4xxx"),
            (4999, "4xxx"),
            (5000, "other"),
            (0, "other"),
        ] {
            assert_eq!(WS_CLOSE_CODE_LABELS[code_index(code)], label, "{code}");
        }
    }

    #[test]
    fn counts_add_up_by_direction_and_code() {
        let c = RoomCounters::default();
        c.ws_closed(Closer::Peer, 1000);
        c.ws_closed(Closer::Peer, 4001);
        c.ws_closed(Closer::Server, 1008);
        c.publish_waited(Duration::from_millis(3));
        let mut s = RoomStats::default();
        s.add(&c);
        s.add(&c);
        assert_eq!(s.ws_closes("received", "1000"), 2);
        assert_eq!(s.ws_closes("received", "4xxx"), 2);
        assert_eq!(s.ws_closes("sent", "1008"), 2);
        assert_eq!(s.ws_closes("sent", "1000"), 0);
        assert_eq!(s.publish_lag.count(), 2);
        assert_eq!(s.publish_lag.sum, Duration::from_millis(6));
    }
}
