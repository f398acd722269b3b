//! `min_request_body_rate`'s accounting ([`BodyRate`]), the one rule both
//! protocols hold a request body's client to: HTTP/1.1's exchange
//! (`proto/http1/exchange.rs`, `body_too_slow`), which watches the
//! handler's waits from the connection's task, and HTTP/2's request body
//! (`service/h2_body.rs`, `RecvBody::too_slow`), which is polled by the
//! waiting handler itself. What each does when the bound binds is its own
//! (a `408` and a close; a `408` or a reset of the stream).
//!
//! Here, in `service/`, rather than beside HTTP/1.1's exchange, because
//! HTTP/2's body is service glue, which must not depend on a protocol
//! module (`service/h2_body.rs` says why).

use std::task::Context;
use std::time::Duration;

use tokio::time::Instant;

use crate::observe::clock::{self, LazyDeadline};

/// The most waiting a request body's client may bank ([`BodyRate`]): as
/// long as `idle_timeout`'s default lets it be silent, so that a client
/// past a fast stretch is held to the rate again a minute later at most.
pub(crate) const BODY_RATE_BANK: Duration = Duration::from_secs(60);

/// `min_request_body_rate` and its grace, when the rate is on: what a body
/// held to it needs of the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinRate {
    /// The slowest a client may send while its handler waits, in bytes a
    /// second (never 0: the builder turns 0 into off).
    pub(crate) per_second: u32,
    /// The waiting a body's client starts with.
    pub(crate) grace: Duration,
}

impl MinRate {
    /// `rate` bytes a second after `grace`; `None` if the rate is off.
    pub(crate) fn of(rate: Option<u32>, grace: Duration) -> Option<MinRate> {
        rate.map(|per_second| MinRate { per_second, grace })
    }
}

/// A request body's client held to `min_request_body_rate`.
///
/// Why a rate, not only a bound between reads: the stall's bound
/// (`idle_timeout`, 60 s, as nginx's `client_body_timeout`) restarts at
/// each byte, so a client that sent one byte every 20 s held its
/// connection, its task and the handler's state for good (2,000 of them,
/// ~3.2 KB each, in session 48's review), for 0.05 B/s of upload; on
/// HTTP/2 it held a stream, its handler and its slot of
/// `http2_max_concurrent_streams`. A shorter bound between reads would
/// only change the drip's pace and cut honest clients whose network
/// pauses. A rate makes holding a body open cost bandwidth: 240 B/s each,
/// ~480 KB/s for those 2,000.
///
/// Why this rate: Kestrel's `MinRequestBodyDataRate` (240 B/s after a 5 s
/// grace), measured, as there, over the handler's waits only: a handler
/// that reads slowly, or stops reading for a while, costs its client
/// nothing, since the client cannot send faster than the handler takes
/// (the kernel's buffer, or HTTP/2's window, fills). As a bucket of
/// waiting time rather than Kestrel's average since the body began: each
/// byte read earns `1 / rate` s, the client starts with the grace, and
/// banks at most [`BODY_RATE_BANK`]; a wait that spends what is left is
/// cut. An average let a client that sent 16 MiB fast then drip for its 19
/// hours' worth (16 MiB / 240 B/s); the bank holds that to a minute.
/// Bytes, not data, on HTTP/1.1: a chunked body's framing is the client's
/// sending too (its decoder bounds how much framing there can be); on
/// HTTP/2 the DATA frames' payload.
///
/// Nothing is done per read but an addition while a wait is open, and
/// nothing at all for a body whose bytes are there when read (no wait,
/// no `BodyRate`). One timer, made at the first wait: it is moved only
/// when it passes, as a wait's deadline (its start plus the credit left)
/// never comes before the last one set (a later wait starts after the
/// earlier one's time is spent, with at least its credit less that time).
///
/// Time the client could not send is not charged: on HTTP/2, while the
/// connection's window is full of other streams' unread bodies (Kestrel
/// stops its clock then too). The caller keeps that time on a clock of its
/// own, read at each call that names it (`off`, the `_off` methods): a
/// wait is charged its length less what that clock ran during it.
/// HTTP/1.1 has no such time (its calls read it as zero).
#[derive(Debug)]
pub(crate) struct BodyRate {
    /// Waiting the client may still spend, as of the open wait's start.
    credit: Duration,
    /// When the open wait began (the handler waiting, no bytes there);
    /// `None`: no wait is open.
    since: Option<Instant>,
    /// When `credit` runs out, or earlier (see the struct).
    bound: LazyDeadline,
    /// The credit ran out and the handler's wait was woken to see whether
    /// it still waits (HTTP/1.1's `BodySender::ask_again`); no bytes came
    /// since.
    asked: bool,
    /// The time-not-charged clock's reading when the open wait began.
    off: Duration,
}

impl BodyRate {
    /// A body's first wait, beginning `now`, with `grace` to spend and
    /// what the body's `bytes` so far earned at `rate`.
    pub(crate) fn new(grace: Duration, bytes: u64, rate: u32, now: Instant) -> BodyRate {
        let credit = (grace + earning(bytes, rate)).min(BODY_RATE_BANK);
        BodyRate {
            credit,
            since: Some(now),
            bound: LazyDeadline::after(Some(credit)),
            asked: false,
            off: Duration::ZERO,
        }
    }

    /// The first wait began with the time-not-charged clock reading `off`.
    pub(crate) fn off_at_start(mut self, off: Duration) -> BodyRate {
        self.off = off;
        self
    }

    /// Whether a wait is open.
    pub(crate) fn is_waiting(&self) -> bool {
        self.since.is_some()
    }

    /// The open wait, if any, ends `now`: its time is spent.
    pub(crate) fn close_wait(&mut self, now: Instant) {
        self.close_wait_off(now, Duration::ZERO);
    }

    /// The open wait, if any, ends `now`, the time-not-charged clock
    /// reading `off`: its time is spent, but what that clock ran.
    pub(crate) fn close_wait_off(&mut self, now: Instant, off: Duration) {
        if let Some(since) = self.since.take() {
            let spent = self.spent(since, now, off);
            self.credit = self.credit.saturating_sub(spent);
        }
    }

    /// What a wait from `since` to `now` costs, the time-not-charged clock
    /// reading `off` now (it read `self.off` at `since`).
    fn spent(&self, since: Instant, now: Instant, off: Duration) -> Duration {
        now.saturating_duration_since(since)
            .saturating_sub(off.saturating_sub(self.off))
    }

    /// `n` bytes of the body were read: a wait open ends, and they earn
    /// `n / rate` seconds, up to the bank.
    pub(crate) fn earned(&mut self, n: usize, rate: u32) {
        if self.since.is_some() {
            self.close_wait(clock::now());
        }
        self.asked = false;
        self.credit = (self.credit + earning(n as u64, rate)).min(BODY_RATE_BANK);
    }

    /// The handler dropped the body `now`: its wait, if one is open, ends,
    /// and no answer to a wake is awaited from it (what is left is drained,
    /// HTTP/1.1's exchange then waiting).
    pub(crate) fn handler_gone(&mut self, now: Instant) {
        self.close_wait(now);
        self.asked = false;
    }

    /// Whether the handler's wait was woken with the credit spent
    /// ([`asking`](Self::asking)) and no bytes came since: waiting again,
    /// it is cut.
    pub(crate) fn is_asked(&self) -> bool {
        self.asked
    }

    /// The handler waits `now` (a wait opens if none is open): whether its
    /// client has spent the waiting its bytes earned; else the task is
    /// woken when it would have.
    pub(crate) fn poll_spent(&mut self, now: Instant, cx: &mut Context<'_>) -> bool {
        self.poll_spent_off(now, Duration::ZERO, cx)
    }

    /// [`poll_spent`](Self::poll_spent), the time-not-charged clock reading
    /// `off` now: what it ran since the wait began is not spent, and the
    /// bound, passed early, moves to where the credit then ends.
    pub(crate) fn poll_spent_off(
        &mut self,
        now: Instant,
        off: Duration,
        cx: &mut Context<'_>,
    ) -> bool {
        let since = match self.since {
            Some(since) => since,
            None => {
                self.off = off;
                *self.since.insert(now)
            }
        };
        if !self.bound.poll_passed(cx) {
            return false;
        }
        let spent = self.spent(since, now, off);
        if let Some(left) = self.credit.checked_sub(spent).filter(|l| !l.is_zero()) {
            // Early (see the struct): to where this wait's credit ends.
            self.bound.restart(left);
            let _ = self.bound.poll_passed(cx);
            return false;
        }
        true
    }

    /// The credit is spent and the handler's wait is woken `now` to see
    /// whether it still waits: the wait closes, and the next one is cut
    /// unless bytes come first ([`is_asked`](Self::is_asked)).
    pub(crate) fn asking(&mut self, now: Instant) {
        self.close_wait(now);
        self.asked = true;
    }
}

/// The waiting `bytes` earn at `rate` bytes a second.
fn earning(bytes: u64, rate: u32) -> Duration {
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::task::Waker;

    /// The credit: the grace and what the bytes earned, banked up to a
    /// minute; a wait spends it, bytes earn more.
    #[tokio::test(start_paused = true)]
    async fn bytes_earn_waiting_and_a_wait_spends_it() {
        let mut cx = Context::from_waker(Waker::noop());
        let start = Instant::now();
        // 1 s of grace and 500 bytes at 1,000 B/s: 1.5 s.
        let mut rate = BodyRate::new(Duration::from_secs(1), 500, 1000, start);
        assert!(!rate.poll_spent(start, &mut cx));
        tokio::time::advance(Duration::from_millis(1400)).await;
        assert!(!rate.poll_spent(Instant::now(), &mut cx), "0.1 s left");
        // 200 bytes come: the wait (1.4 s) closes, 0.3 s left.
        rate.earned(200, 1000);
        tokio::time::advance(Duration::from_millis(290)).await;
        assert!(!rate.poll_spent(Instant::now(), &mut cx), "a new wait");
        tokio::time::advance(Duration::from_millis(310)).await;
        assert!(rate.poll_spent(Instant::now(), &mut cx), "0.3 s spent");
        // A fast stretch banks a minute at most.
        let big = BodyRate::new(Duration::from_secs(5), 1 << 30, 240, start);
        assert_eq!(big.credit, BODY_RATE_BANK);
    }

    /// Time on the time-not-charged clock (HTTP/2: the connection's window
    /// full of other streams' unread bodies) is not spent: a wait of 3 s
    /// of which 2.5 s ran on it costs 0.5 s, and the bound, passed, moves.
    #[tokio::test(start_paused = true)]
    async fn time_the_client_could_not_send_is_not_charged() {
        let mut cx = Context::from_waker(Waker::noop());
        let start = Instant::now();
        let off = Duration::from_secs(7);
        let mut rate = BodyRate::new(Duration::from_secs(1), 0, 1000, start).off_at_start(off);
        let mut plain = BodyRate::new(Duration::from_secs(1), 0, 1000, start);
        assert!(!rate.poll_spent_off(start, off, &mut cx));
        tokio::time::advance(Duration::from_secs(3)).await;
        let later = off + Duration::from_millis(2500);
        assert!(
            !rate.poll_spent_off(Instant::now(), later, &mut cx),
            "0.5 s of 1 s spent"
        );
        rate.close_wait_off(Instant::now(), later);
        assert_eq!(rate.credit, Duration::from_millis(500));
        // Without the clock's time, the same wait is cut.
        assert!(plain.poll_spent(Instant::now(), &mut cx));
    }
}
