//! The parking lot's schedule (`hold_lot.rs`): which connection to look at
//! on which tick of the beat grid (its next beat, or its reply's deadline).
//!
//! A hashed timing wheel: one bucket per tick, 4,096 of them, round-robin;
//! an entry a whole turn or more ahead waits in its bucket for its turn. Every
//! heartbeat schedules two entries (the reply's deadline, then the next beat)
//! and takes them out again, so this is on the hot path: with a binary heap
//! of ~40,000 entries (a hold process's 19,000 connections at 30 s
//! heartbeats, each with a stale deadline) a pop walked ~15 levels of it,
//! ~10% of `hold`'s CPU (`perf`, `bench/HEARTBEAT.md`); here an entry is an
//! append to the bucket of its tick and one pass over that bucket when the
//! tick comes, and the entries of a tick sit next to each other. Written by
//! hand: the timer crates schedule callbacks or owned values one by one
//! with cancellation, where the lot needs plain `(tick, slot)` pairs taken
//! a tick's worth at a time, with stale ones left for the caller to skip.

/// Buckets (a power of two): 41 s of 10 ms ticks, 6.8 min of 100 ms ones,
/// more than a beat interval and its timeout span at the grid's usual tick,
/// so an entry rarely waits a turn.
const BUCKETS: usize = 4096;

/// Due ticks of the lot's connections.
#[derive(Debug)]
pub(crate) struct Wheel {
    /// `(tick, slot)` by `tick % BUCKETS`.
    buckets: Vec<Vec<(u64, u32)>>,
    /// Every entry due by this tick has been handed out.
    done: u64,
}

impl Wheel {
    /// An empty wheel; ticks up to `done` count as handed out already.
    pub(crate) fn new(done: u64) -> Wheel {
        Wheel {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            done,
        }
    }

    /// Schedules `slot` at `tick` (one already past is handed out with the
    /// next [`take_due`](Wheel::take_due)).
    pub(crate) fn push(&mut self, tick: u64, slot: u32) {
        let at = tick.max(self.done + 1);
        self.buckets[bucket(at)].push((tick, slot));
    }

    /// Moves every entry due by `now` into `out` (ticks in order from one
    /// bucket to the next; within a tick, in the order they were pushed).
    pub(crate) fn take_due(&mut self, now: u64, out: &mut Vec<(u64, u32)>) {
        if now <= self.done {
            return;
        }
        // A gap of a whole turn or more visits every bucket once.
        let span = (now - self.done).min(BUCKETS as u64);
        for t in self.done + 1..=self.done + span {
            self.buckets[bucket(t)].retain(|&entry| {
                let due = entry.0 <= now;
                if due {
                    out.push(entry);
                }
                !due
            });
        }
        self.done = now;
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.buckets.iter_mut().for_each(Vec::clear);
    }
}

/// The bucket of `tick`.
fn bucket(tick: u64) -> usize {
    (tick % BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(wheel: &mut Wheel, now: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        wheel.take_due(now, &mut out);
        out
    }

    #[test]
    fn entries_come_out_on_their_tick_in_order() {
        let mut w = Wheel::new(0);
        w.push(3, 30);
        w.push(1, 10);
        w.push(3, 31);
        w.push(2, 20);
        assert_eq!(due(&mut w, 0), vec![]);
        assert_eq!(due(&mut w, 1), vec![(1, 10)]);
        assert_eq!(due(&mut w, 1), vec![]);
        assert_eq!(due(&mut w, 3), vec![(2, 20), (3, 30), (3, 31)]);
        assert_eq!(due(&mut w, 100), vec![]);
    }

    #[test]
    fn a_past_tick_comes_out_next_time() {
        let mut w = Wheel::new(0);
        assert_eq!(due(&mut w, 50), vec![]);
        w.push(7, 1);
        w.push(50, 2);
        assert_eq!(due(&mut w, 51), vec![(7, 1), (50, 2)]);
    }

    #[test]
    fn entries_turns_ahead_wait_for_their_turn() {
        let mut w = Wheel::new(0);
        let far = 5 + 2 * BUCKETS as u64;
        w.push(far, 1);
        w.push(5, 2);
        assert_eq!(due(&mut w, 5), vec![(5, 2)]);
        assert_eq!(due(&mut w, 5 + BUCKETS as u64), vec![]);
        assert_eq!(due(&mut w, far - 1), vec![]);
        assert_eq!(due(&mut w, far), vec![(far, 1)]);
    }

    #[test]
    fn a_gap_longer_than_a_turn_hands_out_everything_due() {
        let mut w = Wheel::new(0);
        let ticks: Vec<u64> = (1..=3 * BUCKETS as u64).step_by(97).collect();
        for (i, &t) in ticks.iter().enumerate() {
            w.push(t, i as u32);
        }
        let now = 2 * BUCKETS as u64 + 10;
        let mut out = due(&mut w, now);
        out.sort_unstable();
        let want: Vec<(u64, u32)> = ticks
            .iter()
            .enumerate()
            .filter(|(_, &t)| t <= now)
            .map(|(i, &t)| (t, i as u32))
            .collect();
        assert_eq!(out, want);
        let rest = due(&mut w, 4 * BUCKETS as u64);
        assert_eq!(rest.len(), ticks.len() - want.len());
        assert!(rest.iter().all(|&(t, _)| t > now));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut w = Wheel::new(0);
        w.push(2, 1);
        w.clear();
        assert_eq!(due(&mut w, 10), vec![]);
    }
}
