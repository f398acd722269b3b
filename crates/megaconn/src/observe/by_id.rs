//! An ordered map from connection ids to values, in one vector: what a
//! worker's list of live connections (`registry::Registry`) keeps them in.
//!
//! Why not a `BTreeMap`: its nodes are allocated as connections open, a
//! node every six or so, among the allocations of the connections' tasks.
//! Once those tasks are freed (the connections park), the nodes stay, one
//! every ~10 KB of freed task memory, and keep the pages under them from
//! going back to the OS (`bench/ALLOCATORS.md`, 2026-12-04: with
//! `--debug-connections` a parked connection cost ~950 B, 24 B without).
//! A vector is one allocation, grown by doubling, apart from them.
//!
//! A worker's ids only grow (its thread's sequence, `ConnTrack::open`), so a
//! new one goes at the end: O(1) amortised, like the map's O(log n). A
//! removed one leaves a hole, found by binary search; the holes are squeezed
//! out once they outnumber the live entries, and the room is given back
//! once a squeeze leaves a quarter or less of it used, down to twice the
//! live entries. Neither happens in one go: each insert and removal that
//! follows does a bounded step of it ([`Chore`]). A squeeze moves the live
//! entries down over the holes 16 slots a step, then cuts the holes it
//! gathered off the end as many a step; room goes back 256 KiB a step.
//! Why: all of it runs under the registry's lock, where the worker's
//! accepts and closes wait. In one go, with a million entries closed in a
//! random order, the first squeeze held the lock 10–13 ms of CPU (20–30 ms
//! of wall time on a busy machine), the later ones less by halves, giving
//! the room back in one go ~4.5 ms (glibc hands a large vector's pages back
//! to the OS at once). In steps, the longest close took 0.19, 0.45 and (once)
//! 1.8 ms of CPU in three runs: as long as plain closes (a binary search,
//! no step) take now and then on a busy machine; timed by what each call
//! did, steps took at most ~0.2 ms. The million closes took 1.84–1.92 s of
//! CPU in all, against 1.47–1.86 s
//! (`registry::tests::lock_hold_at_a_million`, 2026-12-04).
//!
//! While a squeeze is under way, the holes it gathered lie between the
//! entries it went through and those it has yet to: each side is sorted,
//! every id of the lower one below every id of the upper one, and searches
//! and listings skip what lies between. The vector holds at most 3 slots
//! per live entry (and a few dozen more). Room is given back only after a
//! squeeze, down to twice the live entries (or twice those in use when the
//! give-back ends, if more came meanwhile), so after one the capacity is up
//! to 4× the live entries; removals that leave fewer holes than live
//! entries keep the room they had. Growth is still
//! one reallocation, at the insert that fills the room: glibc moves a
//! vector of more than its mmap threshold (128 KiB, raised up to 32 MiB by
//! large frees) by remapping its pages (at most 0.6 ms of CPU in those
//! runs), a smaller one by copying it (~12 ms of CPU for one insert, in a
//! run where earlier frees had raised the threshold).

/// Slots a squeeze goes through per insert or removal: the most of its
/// work one of them does under the registry's lock (16 slots of ~80 B for
/// a listing; see the module doc).
const SQUEEZE_STEP: usize = 16;

/// Bytes of room given back per insert or removal once a squeeze has left
/// the vector mostly empty. glibc gives a large vector's pages back to the
/// OS at once (`mremap`), and that takes time by the page: shrinking a
/// million listings' vector by half in one call held the lock ~4.5 ms.
#[cfg(not(test))]
const GIVE_BACK: usize = 256 * 1024;
/// Small in unit tests, so that a small map gives its room back in steps.
#[cfg(test)]
const GIVE_BACK: usize = 1024;

/// Values by ascending `u64` id (see the module doc).
#[derive(Debug)]
pub(crate) struct ById<V> {
    /// Sorted by id, but for a squeeze's gap ([`Chore::Squeeze`]); `None`:
    /// removed, not squeezed out yet.
    slots: Vec<(u64, Option<V>)>,
    /// The slots holding a value.
    live: usize,
    /// What removals left to do, done a step per insert or removal.
    chore: Option<Chore>,
    /// Slots visited by squeezes so far (tests bound the work per call).
    #[cfg(test)]
    visited: usize,
}

/// Work that removals leave, done a bounded step at a time by the inserts
/// and removals that follow.
#[derive(Debug, Clone, Copy)]
enum Chore {
    /// Holes being squeezed out, [`SQUEEZE_STEP`] slots a step: the slots
    /// before `kept` are gone through (their live ones moved down over the
    /// holes); those from `kept` to `next` are the holes gathered so far,
    /// the gap (their ids are stale and out of order: no search or listing
    /// looks at them); those from `next` on are still to go through. Every
    /// id below the gap is below every id above it, so each side is
    /// searched on its own. Once `next` reaches the end, the gap is cut off
    /// the end as many slots a step.
    Squeeze { kept: usize, next: usize },
    /// Room being given back down to `to` slots, [`GIVE_BACK`] bytes of it
    /// a step.
    GiveBack { to: usize },
}

impl<V> Default for ById<V> {
    fn default() -> Self {
        ById {
            slots: Vec::new(),
            live: 0,
            chore: None,
            #[cfg(test)]
            visited: 0,
        }
    }
}

impl<V> ById<V> {
    /// How many ids have a value.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Sets `id`'s value, returning the one it replaced. At the end when
    /// `id` is past every other (a worker's new connection), else moved in.
    pub(crate) fn insert(&mut self, id: u64, value: V) -> Option<V> {
        let old = self.put(id, value);
        self.do_chore();
        old
    }

    /// `id`'s value, to change.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        let i = self.position(id).ok()?;
        self.slots[i].1.as_mut()
    }

    /// Takes `id`'s value out.
    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        let i = self.position(*id).ok()?;
        let old = self.slots[i].1.take()?;
        self.live -= 1;
        let squeezing = matches!(self.chore, Some(Chore::Squeeze { .. }));
        if !squeezing && self.slots.len() - self.live > self.live {
            self.chore = Some(Chore::Squeeze { kept: 0, next: 0 });
        }
        self.do_chore();
        Some(old)
    }

    /// The ids past `after` (all of them for `None`) in order, with their
    /// values, and the holes among them (`None`: a listing counts them as
    /// work done, and goes on after the last it saw).
    pub(crate) fn after(&self, after: Option<u64>) -> impl Iterator<Item = (u64, Option<&V>)> {
        let [below, above] = self.sorted();
        let from = |part: &[(u64, Option<V>)]| {
            after.map_or(0, |after| part.partition_point(|&(id, _)| id <= after))
        };
        below[from(below)..]
            .iter()
            .chain(&above[from(above)..])
            .map(|(id, value)| (*id, value.as_ref()))
    }

    /// Slots in use, holes included (tests see a squeeze by it).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Slots allocated, in use or not (tests see growth and give-back by
    /// it).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.slots.capacity()
    }

    /// `insert` but for the chore.
    fn put(&mut self, id: u64, value: V) -> Option<V> {
        let [below, above] = self.sorted();
        if above
            .last()
            .or(below.last())
            .is_none_or(|&(last, _)| last < id)
        {
            self.slots.push((id, Some(value)));
            self.live += 1;
            return None;
        }
        match self.position(id) {
            Ok(i) => {
                let old = self.slots[i].1.replace(value);
                if old.is_none() {
                    self.live += 1;
                }
                old
            }
            Err(i) => {
                // Never at a worker's (its ids only grow): O(n), as it was.
                self.slots.insert(i, (id, Some(value)));
                if let Some(Chore::Squeeze { kept, next }) = &mut self.chore {
                    if i <= *kept {
                        *kept += 1;
                        *next += 1;
                    }
                }
                self.live += 1;
                None
            }
        }
    }

    /// The slots below a squeeze's gap and those above it (all of them
    /// below, and none above, when no squeeze is under way): each sorted by
    /// id, every id of the first below every id of the second.
    fn sorted(&self) -> [&[(u64, Option<V>)]; 2] {
        let (kept, next) = match self.chore {
            Some(Chore::Squeeze { kept, next }) => (kept, next),
            _ => (self.slots.len(), self.slots.len()),
        };
        [&self.slots[..kept], &self.slots[next..]]
    }

    fn position(&self, id: u64) -> Result<usize, usize> {
        let [below, above] = self.sorted();
        let search = |part: &[(u64, Option<V>)]| part.binary_search_by_key(&id, |&(id, _)| id);
        if above.first().is_some_and(|&(first, _)| first <= id) {
            let gap_end = self.slots.len() - above.len();
            search(above).map(|i| i + gap_end).map_err(|i| i + gap_end)
        } else {
            search(below)
        }
    }

    /// A step of the chore under way, if any.
    fn do_chore(&mut self) {
        match self.chore {
            None => {}
            Some(Chore::Squeeze { kept, next }) => self.squeeze(kept, next),
            Some(Chore::GiveBack { to }) => self.give_back(to),
        }
    }

    /// [`SQUEEZE_STEP`] slots of the squeeze at `kept` and `next`
    /// ([`Chore::Squeeze`]). Once it is done, gives back most of the room
    /// when a quarter or less of it is used (half of it stays, for
    /// connections to come).
    fn squeeze(&mut self, mut kept: usize, mut next: usize) {
        for _ in 0..SQUEEZE_STEP {
            #[cfg(test)]
            {
                self.visited += 1;
            }
            if next < self.slots.len() {
                if self.slots[next].1.is_some() {
                    // Over the gap's first hole, which takes its place.
                    self.slots.swap(kept, next);
                    kept += 1;
                }
                next += 1;
            } else if kept < next {
                self.slots.pop();
                next -= 1;
            } else {
                self.chore = None;
                let len = self.slots.len();
                if self.slots.capacity() / 4 >= len {
                    self.give_back(len * 2);
                }
                return;
            }
        }
        self.chore = Some(Chore::Squeeze { kept, next });
    }

    /// [`GIVE_BACK`] bytes of room, on the way down to `to` slots.
    ///
    /// Never below twice the slots in use now: entries that arrived since
    /// the give-back began raise its floor. With a fixed `to` it would cut
    /// the room back to the slots in use at every step once they passed it,
    /// and each insert that filled it would move the whole vector again.
    fn give_back(&mut self, to: usize) {
        let to = to.max(self.slots.len().saturating_mul(2));
        let step = (GIVE_BACK / size_of::<(u64, Option<V>)>()).max(1);
        let now = to.max(self.slots.capacity().saturating_sub(step));
        self.slots.shrink_to(now);
        self.chore = (now > to).then_some(Chore::GiveBack { to });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(map: &ById<u64>, after: Option<u64>) -> Vec<(u64, u64)> {
        map.after(after)
            .filter_map(|(id, v)| v.map(|&v| (id, v)))
            .collect()
    }

    /// A give-back that new entries overtake stops, rather than cutting the
    /// room back to the entries in use at every step (each insert that then
    /// filled it would move the whole vector under the registry's lock).
    #[test]
    fn a_give_back_overtaken_by_new_entries_stops() {
        let mut map: ById<u64> = ById::default();
        map.slots.reserve_exact(100_000);
        for id in 0..2 {
            map.insert(id, id);
        }
        map.chore = Some(Chore::GiveBack { to: 4 });
        let (mut grows, mut room) = (0, map.slots.capacity());
        for id in 2..20_000 {
            map.insert(id, id);
            let now = map.slots.capacity();
            grows += usize::from(now > room);
            room = now;
        }
        assert!(map.chore.is_none(), "still giving back: {:?}", map.chore);
        // A map filled from empty grows ~12 times to 20,000 (by doubling).
        assert!(grows <= 12, "{grows} grows");
    }

    /// Ids in order with their own values, after any id (one removed
    /// included), whether inserted at the end or not, replaced or not.
    #[test]
    fn values_are_found_and_listed_in_id_order() {
        let mut map = ById::default();
        for id in [2, 4, 6, 8] {
            assert_eq!(map.insert(id, id * 10), None);
        }
        assert_eq!(map.insert(5, 50), None, "moved in, not at the end");
        assert_eq!(map.insert(4, 41), Some(40), "replaced");
        assert_eq!(map.remove(&6), Some(60));
        assert_eq!(map.remove(&6), None, "once");
        assert_eq!(map.remove(&7), None, "never there");
        assert_eq!(map.len(), 4);
        assert_eq!(listed(&map, None), [(2, 20), (4, 41), (5, 50), (8, 80)]);
        assert_eq!(listed(&map, Some(5)), [(8, 80)]);
        assert_eq!(listed(&map, Some(6)), [(8, 80)], "after a removed id");
        assert_eq!(listed(&map, Some(8)), []);
        *map.get_mut(8).unwrap() = 81;
        assert!(map.get_mut(6).is_none());
        assert_eq!(map.insert(6, 61), None, "a hole filled again");
        assert_eq!(listed(&map, Some(4)), [(5, 50), (6, 61), (8, 81)]);
    }

    /// Holes go once they outnumber the values, a few slots per call while
    /// new ids keep coming, and most of the room with them once it is
    /// mostly empty; what is left is unchanged.
    #[test]
    fn holes_are_squeezed_out_and_the_room_given_back() {
        let mut map = ById::default();
        for id in 0..1000 {
            map.insert(id, id);
        }
        for id in 0..500 {
            map.remove(&id);
        }
        assert_eq!(map.slots.len(), 1000, "half holes: kept");
        assert!(map.chore.is_none());
        map.remove(&500);
        let mut end = 1000;
        while matches!(map.chore, Some(Chore::Squeeze { .. })) {
            map.insert(end, end);
            end += 1;
        }
        let live = (end - 501) as usize;
        assert_eq!((map.slots.len(), map.len()), (live, live), "squeezed");
        assert_eq!(
            listed(&map, Some(end - 3)),
            [(end - 2, end - 2), (end - 1, end - 1)]
        );
        for id in 501..end {
            map.remove(&id);
        }
        assert_eq!((map.len(), map.slots.capacity()), (0, 0));
        map.insert(end, 1);
        assert_eq!(listed(&map, None), [(end, 1)]);
    }

    /// No insert or removal goes through more than [`SQUEEZE_STEP`] slots
    /// of a squeeze or gives back more than [`GIVE_BACK`] bytes of room
    /// (the removal that made the holes outnumber the values went through
    /// every slot and gave the room back at once, under the registry's
    /// lock: ~13 ms of CPU at a million), while ids open and close in waves,
    /// at random, the oldest and newest alike, and now and then one goes
    /// back in below the newest. Meanwhile every value is found and listed
    /// in order from any id, mid-squeeze too, and the holes stay bounded.
    #[test]
    fn no_call_does_more_than_a_step_of_a_squeeze() {
        let mut map = ById::default();
        let mut model = std::collections::BTreeMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random = move |below: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % below.max(1)
        };
        let (mut end, mut squeezed_out, mut given_back_in_all) = (0u64, 0, 0);
        for round in 0..60_000u64 {
            let (visited, slots, room) = (map.visited, map.slot_count(), map.slots.capacity());
            let growing = round / 5000 % 2 == 0;
            let roll = random(64);
            if roll == 0 {
                let id = random(end + 1);
                assert_eq!(map.insert(id, round), model.insert(id, round));
            } else if (roll % 4 != 0) == growing {
                assert_eq!(map.insert(end, round), None);
                model.insert(end, round);
                end += 1;
            } else {
                let at = random(end);
                let id = model
                    .range(at..)
                    .chain(&model)
                    .next()
                    .map_or(at, |(&id, _)| id);
                assert_eq!(map.remove(&id), model.remove(&id));
            }
            assert!(map.visited - visited <= SQUEEZE_STEP, "round {round}");
            squeezed_out += slots.saturating_sub(map.slot_count());
            let given_back = room.saturating_sub(map.slots.capacity());
            assert!(
                given_back * size_of::<(u64, Option<u64>)>() <= GIVE_BACK,
                "round {round}: {given_back} slots of room given back at once"
            );
            given_back_in_all += given_back;
            assert!(
                map.slot_count() <= 3 * map.len() + 2 * SQUEEZE_STEP,
                "round {round}: {} slots for {}",
                map.slot_count(),
                map.len()
            );
            if round % 101 == 0 {
                let from = random(end + 1);
                let want: Vec<(u64, u64)> =
                    model.range(from + 1..).map(|(&k, &v)| (k, v)).collect();
                assert_eq!(listed(&map, Some(from)), want, "round {round}");
                assert_eq!(listed(&map, None).len(), model.len());
                let id = random(end);
                assert_eq!(map.get_mut(id).copied(), model.get(&id).copied());
            }
        }
        assert_eq!(map.len(), model.len());
        assert!(squeezed_out > 20_000, "{squeezed_out} holes squeezed out");
        assert!(
            given_back_in_all > 10_000,
            "{given_back_in_all} slots of room given back"
        );
    }
}
