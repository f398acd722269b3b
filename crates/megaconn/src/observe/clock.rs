//! The worker's clock: one reading for a whole turn of the parking lot.
//!
//! A heartbeat on a parked connection is served on the lot's own turn
//! (`conn/park.rs`), together with the others that woke in the same
//! `epoll_wait`. Each used to read the clock five or six times: the lot on
//! wake and on park, the idle deadline, the request's stopwatch, the `Date`
//! header. At a million connections a worker wakes for a few heartbeats at a
//! time, every read then misses the cache on the clock's data page, and the
//! reads were ~7% of the server's user time. Within a turn they all take the
//! turn's reading instead: deadlines are seconds, and a request's duration
//! then counts from when its turn began, which is when it was already
//! waiting, not later. Outside a turn (a connection served as a task)
//! [`now`] reads the clock as before. (The `Date` header no longer reads
//! this clock: it takes its second from the coarse wall clock, a read that
//! needs no timestamp counter; `proto/date.rs`.)
//!
//! Request durations are kept in nanoseconds ([`now_nanos`], the same
//! clock as `Instant`): a duration is then one subtraction, where
//! `Instant`'s took ~45 user-space instructions (`Timespec::sub_timespec`,
//! `Duration` normalising, and std's checks around the read; callgrind,
//! `bench/profile.sh`). Read through libc, not rustix: rustix finds the vDSO
//! itself and crashes doing so under valgrind, which `bench/profile.sh` uses.

use std::cell::Cell;
use std::future::Future;

use tokio::time::Instant;

thread_local! {
    static TURN: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The current time: the turn's reading inside [`turn`], a fresh one
/// elsewhere.
#[inline]
pub(crate) fn now() -> Instant {
    TURN.with(Cell::get).map_or_else(Instant::now, |(at, _)| at)
}

/// The current time in nanoseconds on the monotonic clock (from an
/// arbitrary start): the turn's reading inside [`turn`], a fresh one
/// elsewhere.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))] // request durations only
pub(crate) fn now_nanos() -> u64 {
    TURN.with(Cell::get)
        .map_or_else(read_nanos, |(_, nanos)| nanos)
}

/// Reads the monotonic clock, in nanoseconds: always a fresh reading, even
/// within a turn (the end of a request's duration).
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))] // request durations only
pub(crate) fn read_nanos() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is valid writable memory for one timespec. The monotonic
    // clock always exists on Linux, so the call cannot fail (if it did, `t`
    // stays zero: a duration of zero, not undefined behaviour).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    // Never negative: the monotonic clock counts up from boot.
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// Runs `f` as one turn: [`now`] returns the same reading, taken here, until
/// `f` returns (or unwinds). Turns nest; the inner one keeps the outer
/// reading.
pub(crate) fn turn<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(Instant, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TURN.with(|t| t.set(self.0));
        }
    }
    let outer = TURN.with(Cell::get);
    let _restore = Restore(outer);
    TURN.with(|t| {
        t.set(Some(
            outer.unwrap_or_else(|| (Instant::now(), read_nanos())),
        ))
    });
    f()
}

/// A deadline whose timer is set up only when something first waits for it:
/// most reads and writes complete without waiting, and then cost no timer
/// registration and no allocation. (HTTP/2's `read_timeout` on a request
/// body and `write_timeout` on a response.)
#[derive(Debug)]
pub(crate) struct LazyDeadline {
    at: Option<Instant>,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl LazyDeadline {
    /// `timeout` from now ([`now`]); none: never passes.
    pub(crate) fn after(timeout: Option<std::time::Duration>) -> LazyDeadline {
        LazyDeadline {
            at: timeout.map(|t| now() + t),
            timer: None,
        }
    }

    /// True once the deadline passed, by the clock, without a timer.
    pub(crate) fn is_past(&self) -> bool {
        self.at.is_some_and(|at| now() >= at)
    }

    /// True once the deadline passed; else the task is woken when it does.
    pub(crate) fn poll_passed(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let Some(at) = self.at else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(cx).is_ready()
    }

    /// A stall bound: true once the deadline passed with no progress since
    /// it (re)started, as `progressed` says when asked (only when it
    /// passes: nothing is checked per read or write); progress restarts it
    /// `timeout` from then. Else the task is woken when it would pass.
    pub(crate) fn poll_stalled(
        &mut self,
        cx: &mut std::task::Context<'_>,
        timeout: std::time::Duration,
        mut progressed: impl FnMut() -> bool,
    ) -> bool {
        while self.poll_passed(cx) {
            if !progressed() {
                return true;
            }
            self.restart(timeout);
        }
        false
    }

    /// The deadline moved to `timeout` from now, keeping its timer if it has
    /// one (a write that made progress starts its bound again).
    pub(crate) fn restart(&mut self, timeout: std::time::Duration) {
        let at = now() + timeout;
        self.at = Some(at);
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(at);
        }
    }

    /// No deadline any more (what it bounded is done).
    pub(crate) fn clear(&mut self) {
        *self = LazyDeadline::after(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_reads_the_clock_once_and_ends_with_its_closure() {
        let before = now();
        let (a, b) = turn(|| (now(), now()));
        assert_eq!(a, b, "one reading for the whole turn");
        assert!(a >= before);
        let (x, y) = turn(|| (now_nanos(), now_nanos()));
        assert_eq!(x, y, "one reading in nanoseconds too");
        assert!(now_nanos() >= x, "the clock does not go back after a turn");
        let nested = turn(|| {
            let outer = now();
            (outer, turn(now))
        });
        assert_eq!(nested.0, nested.1, "an inner turn keeps the outer reading");
        assert_eq!(TURN.with(Cell::get), None, "nothing leaks past the turn");
        let _ = std::panic::catch_unwind(|| turn(|| panic!("unwinds")));
        assert_eq!(TURN.with(Cell::get), None, "an unwinding turn ends too");
    }
}
