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

use std::time::Duration;

use tokio::time::Instant;

use crate::observe::close::CloseReason;
use crate::observe::stats::{incr, WorkerStats};

/// The bound on one message in progress: off between messages, started
/// when the connection is first seen in the middle of one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageDeadline {
    timeout: Option<Duration>,
    at: Option<Instant>,
}

impl MessageDeadline {
    /// A connection's bound, `timeout` per message (`None`: unbounded).
    pub(crate) fn new(timeout: Option<Duration>) -> MessageDeadline {
        MessageDeadline { timeout, at: None }
    }

    /// Notes where the connection stands after reading and decoding:
    /// between messages the bound is off; in the middle of one it runs
    /// from the first time it was seen there (at `now`), whatever comes
    /// after. `now` is read only then: this runs at every read of every
    /// message connection, and nearly all of them are between messages.
    pub(crate) fn track(&mut self, between: bool, now: impl FnOnce() -> Instant) {
        if between {
            self.at = None;
        } else if self.at.is_none() {
            self.at = self.timeout.map(|t| now() + t);
        }
    }

    /// A message ended (decoded whole): the next one, even if its first
    /// bytes came with this one's last, gets its own time. (Else a peer
    /// streaming messages back to back, never caught between two, would be
    /// closed however fast it sent.)
    pub(crate) fn ended(&mut self) {
        self.at = None;
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
            timeout = ?self.timeout,
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
        // One ended and the next began in the same read: a fresh time.
        deadline.ended();
        deadline.track(false, || now + 3 * second);
        assert_eq!(deadline.at(), Some(now + 4 * second));
        // Off: never bounded.
        let mut off = MessageDeadline::new(crate::conn::config::zero_is_off(Some(Duration::ZERO)));
        off.track(false, || now);
        assert_eq!(off.at(), None);
    }
}
