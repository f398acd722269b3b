//! [`MessageDeadline`]: the bound on a message in progress
//! (`message_timeout`), the same for every per-message protocol.
//!
//! Between messages a connection is bounded by its heartbeat and parks; in
//! the middle of one it cannot park (it holds part of a message in a pooled
//! buffer, or over TLS part of a record), and the heartbeat, which every
//! byte restarts, does not bound it: a peer that trickles a byte now and
//! then would keep a task and a buffer for good (slowloris). So a message
//! gets a time of its own, from its first byte seen to its end, not
//! restarted by its bytes (as `read_header_timeout` bounds an HTTP head).
//!
//! A message's end does not always bring the connection back between
//! messages: the next one may have begun in the same read. Its time then
//! starts afresh only if the peer brought at least [`RENEW_AFTER_BYTES`]
//! since the time last started. Else a peer that, every round of just
//! under the timeout, ends the message begun and begins the next (6 bytes
//! a round on a WebSocket, 2 on a line) kept a task and its buffers for good
//! (12 KB a connection where a parked one costs tens of bytes), each
//! message whole within its time; and without the renewal a peer streaming
//! messages back to back, which a read seldom catches between two (an
//! upload over a slow link: segments do not end where messages do), would
//! be closed however fast it sent. So a connection stays in the middle of
//! messages past `message_timeout` only by bringing, since its time last
//! started, a read buffer's worth (8 KiB) or [`MIN_RATE`] (137 B/s) over
//! the time that passed, whichever is less: a floor of 137 B/s whatever
//! the timeout (8 KiB per timeout alone was 137 B/s at the default 60 s
//! but 4 KB/s at 2 s, which cut honest slow senders; Kestrel's
//! `MinRequestBodyDataRate` asks 240 B/s), which only a peer that never
//! lets its messages end between reads has to meet.
//!
//! A message whose time is not renewed keeps the time that started
//! earlier, so it has less than `message_timeout` of its own, handler time
//! between the two included.

use std::time::Duration;

use tokio::time::Instant;

use crate::conn::pool::BUFFER_CAPACITY;
use crate::observe::close::CloseReason;
use crate::observe::human::Timeout;
use crate::observe::stats::{incr, WorkerStats};

/// How many bytes a peer must have sent since its message's time started
/// for the next message, begun in the same read as one's end, to get a
/// time of its own (the module doc): one pooled read buffer, what such a
/// connection holds.
pub(crate) const RENEW_AFTER_BYTES: usize = BUFFER_CAPACITY;

/// Bytes per second since its time started that also renew a message's
/// time (the module doc): [`RENEW_AFTER_BYTES`] over the default 60 s
/// `message_timeout`, a floor that does not rise as the timeout shrinks.
pub(crate) const MIN_RATE: u64 = 137;

/// The bound on one message in progress: off between messages, started
/// when the connection is first seen in the middle of one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageDeadline {
    timeout: Option<Duration>,
    at: Option<Instant>,
    /// Bytes read since `at` was last off.
    read: usize,
}

impl MessageDeadline {
    /// A connection's bound, `timeout` per message (`None`: unbounded).
    pub(crate) fn new(timeout: Option<Duration>) -> MessageDeadline {
        MessageDeadline {
            timeout,
            at: None,
            read: 0,
        }
    }

    /// `n` bytes were read.
    pub(crate) fn read(&mut self, n: usize) {
        self.read = self.read.saturating_add(n);
    }

    /// Notes where the connection stands after reading and decoding:
    /// between messages the bound is off; in the middle of one it runs
    /// from the first time it was seen there (at `now`), whatever comes
    /// after. `now` is read only then: this runs at every read of every
    /// message connection, and nearly all of them are between messages.
    pub(crate) fn track(&mut self, between: bool, now: impl FnOnce() -> Instant) {
        if between {
            self.off();
        } else if self.at.is_none() {
            self.at = self.timeout.map(|t| now() + t);
        }
    }

    /// A message ended (decoded whole) at `now`: the next one, even if
    /// its first bytes came with this one's last, gets its own time, once
    /// the peer brought [`RENEW_AFTER_BYTES`], or [`MIN_RATE`] over the
    /// time passed, since the time started; before that the time runs on
    /// (the module doc says why both). `now` is read only when the bytes
    /// alone do not renew it.
    pub(crate) fn ended(&mut self, now: impl FnOnce() -> Instant) {
        if self.read >= RENEW_AFTER_BYTES {
            self.off();
            return;
        }
        let (Some(at), Some(timeout)) = (self.at, self.timeout) else {
            return;
        };
        let since = now().saturating_duration_since(at - timeout);
        if self.read as u128 * 1000 >= u128::from(MIN_RATE) * since.as_millis() {
            self.off();
        }
    }

    fn off(&mut self) {
        self.at = None;
        self.read = 0;
    }

    /// When the message in progress must be complete by, if one is.
    pub(crate) fn at(&self) -> Option<Instant> {
        self.at
    }

    /// Whether the message in progress is past its bound at `now`.
    pub(crate) fn passed(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| now >= at)
    }

    /// The bound passed: counted (`megaconn_timeouts_total`, and the
    /// close reason's label), logged with the knob that sets it.
    pub(crate) fn expired(&self, stats: &WorkerStats, knob: &'static str) -> CloseReason {
        incr(&stats.timeouts);
        tracing::debug!(
            timeout = %Timeout(self.timeout),
            "a message did not complete within its time; closing the connection (raise {knob})"
        );
        CloseReason::MessageTimeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_runs_from_the_first_sight_of_a_message_until_it_ends() {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        let mut deadline = MessageDeadline::new(Some(second));
        deadline.track(true, || now);
        assert_eq!(deadline.at(), None, "between messages");
        deadline.track(false, || now);
        assert_eq!(deadline.at(), Some(now + second));
        // More of the same message: the bound stays where it was.
        deadline.track(false, || now + second / 2);
        assert_eq!(deadline.at(), Some(now + second));
        assert!(!deadline.passed(now + second / 2));
        assert!(deadline.passed(now + second));
        // The message ended: the next one gets its own time.
        deadline.track(true, || now + second);
        assert!(!deadline.passed(now + 2 * second));
        deadline.track(false, || now + 2 * second);
        assert_eq!(deadline.at(), Some(now + 3 * second));
        // One ended and the next began in the same read, a few bytes
        // since the time started 0.9 s ago (under 137 B/s): the time runs on.
        let later = |ms: u64| now + Duration::from_millis(ms);
        deadline.read(6);
        deadline.ended(|| later(2900));
        deadline.track(false, || later(2900));
        assert_eq!(deadline.at(), Some(now + 3 * second));
        // A read buffer's worth since: a fresh time.
        deadline.read(RENEW_AFTER_BYTES - 6);
        deadline.ended(|| later(2950));
        deadline.track(false, || now + 3 * second);
        assert_eq!(deadline.at(), Some(now + 4 * second));
        // Counted from there, not from the first time: 100 bytes in 0.99 s
        // is under 137 B/s, 150 is over.
        deadline.read(100);
        deadline.ended(|| later(3990));
        deadline.track(false, || later(3990));
        assert_eq!(deadline.at(), Some(now + 4 * second));
        deadline.read(50);
        deadline.ended(|| later(3990));
        deadline.track(false, || later(3990));
        assert_eq!(deadline.at(), Some(later(4990)));
        // Between messages: off, and the count starts over (else the 150
        // bytes before would renew what one byte in 0.5 s does not).
        deadline.track(true, || now + 5 * second);
        deadline.track(false, || now + 5 * second);
        deadline.read(1);
        deadline.ended(|| later(5500));
        deadline.track(false, || later(5500));
        assert_eq!(deadline.at(), Some(now + 6 * second));
        // Off: never bounded.
        let mut off = MessageDeadline::new(crate::conn::config::zero_is_off(Some(Duration::ZERO)));
        off.track(false, || now);
        assert_eq!(off.at(), None);
    }
}
