//! An ordered map from connection ids to values, in one vector kept in
//! fixed-size chunks ([`Chunks`]): what a worker's list of live connections
//! (`registry::Registry`) keeps them in.
//!
//! Why not a `BTreeMap`: its nodes are allocated as connections open, a
//! node every six or so, among the allocations of the connections' tasks.
//! Once those tasks are freed (the connections park), the nodes stay, one
//! every ~10 KB of freed task memory, and keep the pages under them from
//! going back to the OS (`bench/ALLOCATORS.md`, 2026-12-04: with
//! `--debug-connections` a parked connection cost ~950 B, 24 B without).
//! The chunks are 80 KiB allocations apart from them, one per 1,024
//! connections.
//!
//! A worker's ids only grow (its thread's sequence, `ConnTrack::open`), so a
//! new one goes at the end: O(1), a new chunk when the last is full (never
//! a copy: see `chunks.rs` for what a `Vec`'s growth cost). A removed one
//! leaves a hole, found by binary search; the holes are squeezed out once
//! they outnumber the live entries. Not in one go: each insert and removal
//! that follows does a bounded step of it ([`Squeeze`]), moving the live
//! entries down over the holes 16 slots a step, then cutting the holes it
//! gathered off the end as many a step, each chunk that empties freed as it
//! goes (the room given back). Why: all of it runs under the registry's
//! lock, where the worker's accepts and closes wait. In one go, with a
//! million entries closed in a random order, the first squeeze held the
//! lock 10–13 ms of CPU (20–30 ms of wall time on a busy machine), the
//! later ones less by halves; giving a `Vec`'s room back in one go ~4.5 ms.
//!
//! In chunks, a million opens and then closes in a random order
//! (`registry::tests::lock_hold_at_a_million`, six runs of 2026-12-04 on a
//! busy machine, each also after a 30 MiB free): the inserts that added a
//! chunk held the lock at most 24–77 µs of CPU, the removals that freed one
//! at most 52–142 µs, the longest hold of all 131–570 µs (plain calls, no
//! chunk added or freed: as long as such calls took before, now and then),
//! but for one removal of 9.7 ms in one run (a plain one too). As one
//! `Vec`, growing it to 524,288 slots had held the lock 10.8 and 11.8 ms
//! after such a free, 0.18 ms without (`mremap`). The million removals took
//! 1.23–1.44 s of CPU in all.
//!
//! While a squeeze is under way, the holes it gathered lie between the
//! entries it went through and those it has yet to: each side is sorted,
//! every id of the lower one below every id of the upper one, and searches
//! and listings skip what lies between. The slots are at most 3 per live
//! entry (and a few dozen more), the room at most a chunk more than the
//! slots.

use std::ops::Range;

use crate::observe::chunks::{Chunks, SLOTS_PER_CHUNK};

/// Slots a squeeze goes through per insert or removal: the most of its
/// work one of them does under the registry's lock (16 slots of ~80 B for
/// a listing, and at most one chunk freed; see the module doc).
const SQUEEZE_STEP: usize = 16;

/// Values by ascending `u64` id (see the module doc), in chunks of `C`
/// slots.
#[derive(Debug)]
pub(crate) struct ById<V, const C: usize = SLOTS_PER_CHUNK> {
    /// Sorted by id, but for a squeeze's gap ([`Squeeze`]); `None`:
    /// removed, not squeezed out yet.
    slots: Chunks<(u64, Option<V>), C>,
    /// The slots holding a value.
    live: usize,
    /// The squeeze under way, done a step per insert or removal.
    squeeze: Option<Squeeze>,
    /// Slots visited by squeezes so far (tests bound the work per call).
    #[cfg(test)]
    visited: usize,
}

/// Holes being squeezed out, [`SQUEEZE_STEP`] slots a step: the slots
/// before `kept` are gone through (their live ones moved down over the
/// holes); those from `kept` to `next` are the holes gathered so far, the
/// gap (their ids are stale and out of order: no search or listing looks
/// at them); those from `next` on are still to go through. Every id below
/// the gap is below every id above it, so each side is searched on its
/// own. Once `next` reaches the end, the gap is cut off the end as many
/// slots a step.
#[derive(Debug, Clone, Copy)]
struct Squeeze {
    kept: usize,
    next: usize,
}

impl<V, const C: usize> Default for ById<V, C> {
    fn default() -> Self {
        ById {
            slots: Chunks::default(),
            live: 0,
            squeeze: None,
            #[cfg(test)]
            visited: 0,
        }
    }
}

impl<V, const C: usize> ById<V, C> {
    /// How many ids have a value.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Sets `id`'s value, returning the one it replaced. At the end when
    /// `id` is past every other (a worker's new connection), else moved in.
    pub(crate) fn insert(&mut self, id: u64, value: V) -> Option<V> {
        let old = self.put(id, value);
        self.squeeze_step();
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
        if self.squeeze.is_none() && self.slots.len() - self.live > self.live {
            self.squeeze = Some(Squeeze { kept: 0, next: 0 });
        }
        self.squeeze_step();
        Some(old)
    }

    /// The ids past `after` (all of them for `None`) in order, with their
    /// values, and the holes among them (`None`: a listing counts them as
    /// work done, and goes on after the last it saw).
    pub(crate) fn after(&self, after: Option<u64>) -> impl Iterator<Item = (u64, Option<&V>)> {
        let from = |part: Range<usize>| {
            let end = part.end;
            let start = after.map_or(part.start, |after| {
                self.slots.partition_point(part, |&(id, _)| id <= after)
            });
            start..end
        };
        let [below, above] = self.sorted();
        from(below).chain(from(above)).map(move |i| {
            let (id, value) = &self.slots[i];
            (*id, value.as_ref())
        })
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
        self.slots.room()
    }

    /// `insert` but for the squeeze's step.
    fn put(&mut self, id: u64, value: V) -> Option<V> {
        let [below, above] = self.sorted();
        let last = if above.is_empty() {
            below.end.checked_sub(1)
        } else {
            Some(above.end - 1)
        };
        if last.is_none_or(|last| self.slots[last].0 < id) {
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
                if let Some(Squeeze { kept, next }) = &mut self.squeeze {
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
    fn sorted(&self) -> [Range<usize>; 2] {
        let len = self.slots.len();
        let (kept, next) = self.squeeze.map_or((len, len), |s| (s.kept, s.next));
        [0..kept, next..len]
    }

    /// Where `id` is (`Ok`), or would go among the sorted slots (`Err`).
    fn position(&self, id: u64) -> Result<usize, usize> {
        let [below, above] = self.sorted();
        let part = if !above.is_empty() && self.slots[above.start].0 <= id {
            above
        } else {
            below
        };
        let end = part.end;
        let i = self.slots.partition_point(part, |&(slot, _)| slot < id);
        if i < end && self.slots[i].0 == id {
            Ok(i)
        } else {
            Err(i)
        }
    }

    /// [`SQUEEZE_STEP`] slots of the squeeze under way, if any
    /// ([`Squeeze`]).
    fn squeeze_step(&mut self) {
        let Some(Squeeze { mut kept, mut next }) = self.squeeze else {
            return;
        };
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
                // A chunk this empties is freed: the room given back.
                self.slots.pop();
                next -= 1;
            } else {
                self.squeeze = None;
                return;
            }
        }
        self.squeeze = Some(Squeeze { kept, next });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of 4 slots: a few entries span several.
    type Small = ById<u64, 4>;

    fn listed<const C: usize>(map: &ById<u64, C>, after: Option<u64>) -> Vec<(u64, u64)> {
        map.after(after)
            .filter_map(|(id, v)| v.map(|&v| (id, v)))
            .collect()
    }

    /// Ids in order with their own values, after any id (one removed
    /// included), whether inserted at the end or not, replaced or not,
    /// across chunk boundaries.
    #[test]
    fn values_are_found_and_listed_in_id_order() {
        let mut map = Small::default();
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
        assert_eq!(map.insert(1, 10), None, "moved in at the start");
        assert_eq!(listed(&map, Some(1)).len(), 5);
        assert_eq!(listed(&map, Some(0))[0], (1, 10));
    }

    /// Growth past a chunk boundary moves no value: each stays where it
    /// was written (a `Vec` moved them all at once, under the registry's
    /// lock), and the room grows a chunk at a time, never more than one
    /// chunk past the slots in use.
    #[test]
    fn growth_moves_no_value() {
        let mut map = Small::default();
        map.insert(0, 0);
        let first = std::ptr::from_mut(map.get_mut(0).unwrap());
        for id in 1..103 {
            let room = map.room();
            map.insert(id, id);
            assert!(
                map.room() - room <= 4,
                "{} slots at once",
                map.room() - room
            );
            assert_eq!(map.room(), map.slot_count().div_ceil(4) * 4);
            assert_eq!(
                std::ptr::from_mut(map.get_mut(0).unwrap()),
                first,
                "at {id}"
            );
        }
        assert_eq!(map.get_mut(102).copied(), Some(102));
    }

    /// Holes go once they outnumber the values, a few slots per call while
    /// new ids keep coming, moved down across chunk boundaries; each chunk
    /// the squeeze empties is given back, down to the chunks the values
    /// fill, and to nothing once all are removed; what is left is
    /// unchanged.
    #[test]
    fn holes_are_squeezed_out_and_the_room_given_back() {
        let mut map = Small::default();
        for id in 0..1000 {
            map.insert(id, id);
        }
        // Four slots in five holes, across every chunk boundary, up to as
        // many holes as values (kept), then one more.
        let holes: Vec<u64> = (0..1000).filter(|id| id % 5 != 0).take(501).collect();
        for id in &holes[..500] {
            map.remove(id);
        }
        assert!(map.squeeze.is_none(), "half holes: kept");
        assert_eq!((map.slot_count(), map.room()), (1000, 1000));
        map.remove(&holes[500]);
        let mut end = 1000;
        while map.squeeze.is_some() {
            let (room, before) = (map.room(), map.slot_count());
            map.insert(end, end);
            end += 1;
            let given_back = room.saturating_sub(map.room());
            assert!(
                given_back <= SQUEEZE_STEP,
                "{given_back} slots given back at once"
            );
            assert!(before + 1 - map.slot_count() <= SQUEEZE_STEP);
        }
        let live = map.len();
        assert_eq!(map.slot_count(), live, "squeezed");
        assert_eq!(map.room(), live.div_ceil(4) * 4, "the room given back");
        let model: Vec<u64> = (0..end).filter(|id| !holes.contains(id)).collect();
        let all = listed(&map, None);
        assert_eq!(all.iter().map(|&(id, _)| id).collect::<Vec<_>>(), model);
        assert!(all.iter().all(|&(id, v)| id == v));
        for &id in &model {
            map.remove(&id);
        }
        assert_eq!((map.len(), map.room()), (0, 0));
        map.insert(end, 1);
        assert_eq!(listed(&map, None), [(end, 1)]);
    }

    /// No insert or removal goes through more than [`SQUEEZE_STEP`] slots
    /// of a squeeze, gives back more than that and a chunk of room, or
    /// grows it by more than a chunk (the removal that made the holes
    /// outnumber the values went through every slot and gave the room back
    /// at once, under the registry's lock: ~13 ms of CPU at a million),
    /// while ids open and close in waves, at random, the oldest and newest
    /// alike, and now and then one goes back in below the newest.
    /// Meanwhile every value is found and listed in order from any id,
    /// mid-squeeze too, the holes stay bounded, and the room is never a
    /// chunk past the slots in use. With chunks of one slot, of a few, and
    /// of the default size.
    #[test]
    fn no_call_does_more_than_a_step_of_a_squeeze() {
        random_waves::<1>();
        random_waves::<4>();
        random_waves::<SLOTS_PER_CHUNK>();
    }

    fn random_waves<const C: usize>() {
        let mut map: ById<u64, C> = ById::default();
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
            let (visited, slots, room) = (map.visited, map.slot_count(), map.room());
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
            let at = format!("chunks of {C}, round {round}");
            assert!(map.visited - visited <= SQUEEZE_STEP, "{at}");
            squeezed_out += slots.saturating_sub(map.slot_count());
            let given_back = room.saturating_sub(map.room());
            assert!(
                given_back <= SQUEEZE_STEP + C,
                "{at}: {given_back} slots of room given back at once"
            );
            assert!(map.room().saturating_sub(room) <= C, "{at}: grown");
            given_back_in_all += given_back;
            assert!(
                map.slot_count() <= 3 * map.len() + 2 * SQUEEZE_STEP,
                "{at}: {} slots for {}",
                map.slot_count(),
                map.len()
            );
            assert_eq!(map.room(), map.slot_count().div_ceil(C) * C, "{at}");
            if round % 101 == 0 {
                let from = random(end + 1);
                let want: Vec<(u64, u64)> =
                    model.range(from + 1..).map(|(&k, &v)| (k, v)).collect();
                assert_eq!(listed(&map, Some(from)), want, "{at}");
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
