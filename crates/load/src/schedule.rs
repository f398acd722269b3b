//! The open-loop send schedule (`load --rate R`) and its coordinated-omission
//! correction, as in wrk2.
//!
//! The total rate is split evenly over connections; connection `k` of `c` sends its
//! `i`-th request at the *intended* time `start + (k / c + i) · c / R`. A request
//! that could not be sent on time (the connection was still waiting for earlier
//! responses) is sent as soon as possible, but its latency is still measured from
//! its intended time, so a server stall shows up in every request it delayed,
//! not just the one in flight. (Only a delay caused by waiting on the server is
//! charged: see [`Schedule::latency_start`] for timer slack.) The schedule also keeps how far sends lagged
//! behind their intended times, which the report turns into "fell behind by".

use std::time::{Duration, Instant};

/// One connection's open-loop schedule.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// Intended send time of request 0.
    first: Instant,
    /// Time between intended sends, in nanoseconds.
    interval_ns: f64,
    /// Index of the next request to send.
    next: u64,
    /// Largest send lag seen (actual send − intended send), in ns.
    lag_max_ns: u64,
    /// Sum of all send lags, in ns.
    lag_sum_ns: u128,
    /// How late the client's own delays (timer slack) made the last request
    /// go out, relative to when it would have gone out without them: see
    /// [`Schedule::latency_start`].
    slack: Duration,
    /// Latency starts of requests the server refused unprocessed (HTTP/2: a
    /// graceful GOAWAY, RFC 9113 §6.8), oldest first: each is sent again
    /// before any new one and keeps its start, so a retry neither uses up a
    /// later request's slot of the schedule nor hides the wait it caused.
    again: Vec<Instant>,
}

impl Schedule {
    /// The schedule of connection `index` of `connections` sharing `total_rate` req/s
    /// starting at `start`. Connections are staggered so sends are evenly spread.
    pub(crate) fn for_connection(
        start: Instant,
        total_rate: f64,
        connections: usize,
        index: usize,
    ) -> Self {
        let interval_ns = 1e9 * connections as f64 / total_rate;
        let offset = interval_ns * index as f64 / connections as f64;
        Schedule {
            first: start + Duration::from_nanos(offset as u64),
            interval_ns,
            next: 0,
            lag_max_ns: 0,
            lag_sum_ns: 0,
            slack: Duration::ZERO,
            again: Vec::new(),
        }
    }

    /// Intended send time of request `i`.
    pub(crate) fn intended(&self, i: u64) -> Instant {
        self.first + Duration::from_nanos((self.interval_ns * i as f64) as u64)
    }

    /// Intended send time of the next request not yet sent (a request
    /// given back by [`Schedule::give_back`] is due at once: its start).
    pub(crate) fn next_due(&self) -> Instant {
        match self.again.first() {
            Some(&start) => start.min(self.intended(self.next)),
            None => self.intended(self.next),
        }
    }

    /// Gives back a request the server refused without processing it,
    /// whose latency clock started at `start`: it is sent again (by
    /// [`Schedule::take_again`]) before the schedule's next request.
    pub(crate) fn give_back(&mut self, start: Instant) {
        self.again.push(start);
    }

    /// The oldest request given back, if any: its latency start (it keeps
    /// the one of its first send, see [`Schedule::give_back`]).
    pub(crate) fn take_again(&mut self) -> Option<Instant> {
        if self.again.is_empty() {
            None
        } else {
            Some(self.again.remove(0))
        }
    }

    /// If the next request is due at `now`, takes it: records its send lag and
    /// returns its intended send time (the start of its corrected latency).
    #[inline]
    pub(crate) fn take(&mut self, now: Instant) -> Option<Instant> {
        let intended = self.next_due();
        if intended > now {
            return None;
        }
        let lag = now.duration_since(intended).as_nanos() as u64;
        self.lag_max_ns = self.lag_max_ns.max(lag);
        self.lag_sum_ns += u128::from(lag);
        self.next += 1;
        Some(intended)
    }

    /// Requests sent so far.
    #[cfg(test)]
    pub(crate) fn sent(&self) -> u64 {
        self.next
    }

    /// Requests that were due by `now` but not sent (how far the run is
    /// behind), given-back ones still unsent included.
    pub(crate) fn backlog(&self, now: Instant) -> u64 {
        let again = self.again.len() as u64;
        if now < self.first {
            return again;
        }
        let due = (now.duration_since(self.first).as_nanos() as f64 / self.interval_ns) as u64 + 1;
        due.saturating_sub(self.next) + again
    }

    /// Largest send lag, in ns.
    pub(crate) fn lag_max_ns(&self) -> u64 {
        self.lag_max_ns
    }

    /// Sum of send lags, in ns.
    pub(crate) fn lag_sum_ns(&self) -> u128 {
        self.lag_sum_ns
    }

    /// Where the latency clock of an open-loop request intended at
    /// `intended` and sent `now` starts; its slot became free at
    /// `free_since` (the last full-to-free transition).
    ///
    /// A request that fell behind its intended time because the connection
    /// had no free slot (all `--pipeline` requests were waiting on the
    /// server) is charged from its intended time: that wait is the server's
    /// doing, and dropping it is coordinated omission. A request that went
    /// out late only because the client's timer woke late (tokio's timer
    /// has millisecond granularity) is charged from its actual send time:
    /// that slack is the client's, not the server's.
    ///
    /// The slack also delays what follows: a request sent 0.9 ms late by the
    /// timer is answered 0.9 ms late, and the next one, due meanwhile, finds
    /// the slot busy. At intervals under the timer's granularity (64
    /// connections at 93k req/s: 0.69 ms each) that made every other request
    /// "wait on the server" for the client's slack. So the slack is carried
    /// forward: the slot is taken to have been free when it would have been
    /// without it (`free_since - slack`), and the request sent then (its
    /// ideal send time, at the latest `now`) is charged from its intended
    /// time plus the delay the client added since. A server stall is still
    /// charged in full to every request due during it, less at most the
    /// client's slack carried in (the timer's granularity on a client with
    /// CPU to spare; more if the client itself was starved).
    pub(crate) fn latency_start(
        &mut self,
        intended: Instant,
        free_since: Instant,
        now: Instant,
    ) -> Instant {
        let freed = free_since.checked_sub(self.slack).unwrap_or(intended);
        let ideal = intended.max(freed).min(now);
        self.slack = now.duration_since(ideal);
        intended + self.slack
    }
}

/// Corrected latency of a response completed at `done` for a request whose
/// latency clock started at `start` (the intended send time in open loop, the
/// actual send time in closed loop), in ns.
#[inline]
pub(crate) fn latency_ns(start: Instant, done: Instant) -> u64 {
    done.saturating_duration_since(start).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Simulates one connection with one request in flight at 1000 req/s (1 ms apart)
    /// against a server that answers in 0.1 ms, except request 10 which takes 100 ms.
    /// Returns (corrected latencies, final schedule, end time).
    fn simulate(count: u64) -> (Vec<u64>, Schedule, Instant) {
        let t0 = Instant::now();
        let at = |ns: u64| t0 + Duration::from_nanos(ns);
        let mut s = Schedule::for_connection(t0, 1000.0, 1, 0);
        let mut now = t0;
        let mut latencies = Vec::new();
        let mut free_since = t0;
        for i in 0..count {
            // Idle until the next request is due, then send it.
            now = now.max(s.next_due());
            let intended = s.take(now).expect("request is due");
            assert_eq!(intended, at(i * MS), "intended time of request {i}");
            let start = s.latency_start(intended, free_since, now);
            let service = if i == 10 { 100 * MS } else { MS / 10 };
            now += Duration::from_nanos(service);
            free_since = now; // the response frees the only slot
            latencies.push(latency_ns(start, now));
        }
        (latencies, s, now)
    }

    #[test]
    fn stall_is_charged_to_every_delayed_request() {
        let (lat, s, end) = simulate(200);
        // Before the stall: just the service time.
        assert!(lat[..10].iter().all(|&l| l == MS / 10));
        // The stalled request itself.
        assert_eq!(lat[10], 100 * MS);
        // Request 11 was due at 11 ms but sent at 110 ms, answered at 110.1 ms.
        assert_eq!(lat[11], 110 * MS + MS / 10 - 11 * MS);
        // Each following request catches up 0.9 ms (1 ms schedule, 0.1 ms service)...
        for i in 12..120 {
            assert_eq!(lat[i - 1] - lat[i], 9 * MS / 10, "request {i}");
        }
        // ...until the backlog is gone and latency is the service time again.
        let caught_up = (11..200).find(|&i| lat[i] == MS / 10).unwrap();
        assert_eq!(caught_up, 121);
        assert!(lat[caught_up..].iter().all(|&l| l == MS / 10));
        // Closed loop would have seen one slow request out of 200; corrected, 111
        // (requests 10 through 120) are slower than the service time.
        assert_eq!(lat.iter().filter(|&&l| l > MS / 10).count(), 111);
        // Send lag: request 11 went out 99 ms late.
        assert_eq!(s.lag_max_ns(), 99 * MS);
        assert_eq!(s.sent(), 200);
        // At the end nothing due is left unsent.
        assert_eq!(s.backlog(end), 0);
    }

    #[test]
    fn timer_slack_is_not_charged_but_server_delay_is() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let mut s = Schedule::for_connection(t0, 1000.0, 1, 0);
        // Slot free since 0; request intended at 1000 us, timer woke at 1900 us:
        // the clock starts at the actual send.
        assert_eq!(s.latency_start(at(1000), at(0), at(1900)), at(1900));
        // The slot only freed at 1500 us (a response arrived): the 500 us before
        // that were spent waiting on the server, so the clock starts at 1000 us.
        let mut s = Schedule::for_connection(t0, 1000.0, 1, 0);
        assert_eq!(s.latency_start(at(1000), at(1500), at(1500)), at(1000));
    }

    /// One connection, one request in flight, requests every `interval_ns`
    /// answered after `service(i)` ns, the client's timer waking on whole
    /// milliseconds (rounded up, as tokio's does). Returns (intended send,
    /// response time, corrected latency) in ns since the start, per request.
    fn simulate_ms_timer(
        count: u64,
        interval_ns: u64,
        service: impl Fn(u64) -> u64,
    ) -> Vec<(u64, u64, u64)> {
        let t0 = Instant::now();
        let ns = |t: Instant| t.duration_since(t0).as_nanos() as u64;
        let mut s = Schedule::for_connection(t0, 1e9 / interval_ns as f64, 1, 0);
        let (mut now, mut free_since) = (t0, t0);
        let mut out = Vec::new();
        for i in 0..count {
            let due = s.next_due();
            if due > now {
                // Nothing due after the last response: sleep, and wake on
                // the next millisecond at or after the due time.
                now = t0 + Duration::from_nanos(ns(due).div_ceil(MS) * MS);
            }
            let intended = s.take(now).expect("request is due");
            let start = s.latency_start(intended, free_since, now);
            now += Duration::from_nanos(service(i));
            free_since = now;
            out.push((ns(intended), ns(now), latency_ns(start, now)));
        }
        out
    }

    /// 93k req/s over 64 connections is one request per 0.69 ms on each,
    /// under the timer's 1 ms: with a 50 us server, every request's latency
    /// is 50 us, none is charged the timer's slack of the one before it.
    #[test]
    fn timer_slack_is_not_charged_at_sub_millisecond_intervals() {
        let run = simulate_ms_timer(2000, 690_000, |_| 50_000);
        for (i, &(_, _, latency)) in run.iter().enumerate() {
            assert!(
                latency.abs_diff(50_000) <= 1_000,
                "request {i}: {latency} ns"
            );
        }
    }

    /// The same, with the server stalled 20 ms on request 10: every request
    /// due during the stall is charged the stall from its intended time
    /// (less at most the client's timer slack, under 1 ms).
    #[test]
    fn a_server_stall_is_charged_at_sub_millisecond_intervals() {
        let service = |i| if i == 10 { 20 * MS } else { 50_000 };
        let run = simulate_ms_timer(2000, 690_000, service);
        let stall_end = run[10].1;
        assert!(run[10].2 >= 20 * MS, "{:?}", run[10]);
        let due_in_stall: Vec<_> = run[11..]
            .iter()
            .filter(|&&(intended, _, _)| intended < stall_end)
            .collect();
        assert!(due_in_stall.len() >= 28, "{}", due_in_stall.len());
        for &&(intended, done, latency) in &due_in_stall {
            assert!(latency <= done - intended, "{intended}: {latency}");
            assert!(
                latency + MS >= stall_end - intended,
                "due at {intended} ns, during the stall to {stall_end}: charged only {latency}"
            );
        }
        // Once caught up, the service time again.
        assert!(run[1900..].iter().all(|r| r.2.abs_diff(50_000) <= 1_000));
    }

    #[test]
    fn backlog_counts_due_but_unsent() {
        let t0 = Instant::now();
        let s = Schedule::for_connection(t0, 100.0, 2, 0); // 50 req/s: 20 ms apart
        assert_eq!(s.backlog(t0), 1);
        assert_eq!(s.backlog(t0 + Duration::from_millis(99)), 5);
        let s1 = Schedule::for_connection(t0, 100.0, 2, 1); // staggered by 10 ms
        assert_eq!(s1.intended(0), t0 + Duration::from_millis(10));
        assert_eq!(s1.backlog(t0), 0);
    }

    #[test]
    fn a_request_given_back_is_sent_first_and_keeps_its_start() {
        let t0 = Instant::now();
        let mut s = Schedule::for_connection(t0, 1000.0, 1, 0);
        let first = s.take(t0).expect("request 0 is due at t0");
        // Refused unprocessed at 5 ms: due again at once, before request 1
        // (due at 1 ms), with the start of its first send.
        s.give_back(first);
        let now = t0 + Duration::from_millis(5);
        assert_eq!(s.next_due(), first);
        assert_eq!(s.backlog(now), 5 + 1, "requests 1-5 and the one given back");
        assert_eq!(s.take_again(), Some(first));
        assert_eq!(s.take_again(), None);
        // The schedule's own next request is untouched: request 1, not 2.
        assert_eq!(s.take(now), Some(t0 + Duration::from_millis(1)));
        assert_eq!(s.sent(), 2);
    }
}
