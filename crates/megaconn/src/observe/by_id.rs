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
//! out once they outnumber the live entries: amortised O(1) per removal, but
//! the squeeze itself is O(n), a pass over the whole vector under the
//! registry's lock (the worker's accepts and closes wait), once per ~n/2
//! removals. The vector shrinks when a quarter or less of its room is used,
//! to twice the live entries: its capacity may be up to 4× the live
//! entries.

/// Values by ascending `u64` id (see the module doc).
#[derive(Debug)]
pub(crate) struct ById<V> {
    /// Sorted by id; `None`: removed, not squeezed out yet.
    slots: Vec<(u64, Option<V>)>,
    /// The slots holding a value.
    live: usize,
}

impl<V> Default for ById<V> {
    fn default() -> Self {
        ById {
            slots: Vec::new(),
            live: 0,
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
        if self.slots.last().is_none_or(|&(last, _)| last < id) {
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
                self.slots.insert(i, (id, Some(value)));
                self.live += 1;
                None
            }
        }
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
        if self.slots.len() - self.live > self.live {
            self.squeeze();
        }
        Some(old)
    }

    /// The values of the ids past `after` (all of them for `None`), in id
    /// order.
    pub(crate) fn after(&self, after: Option<u64>) -> impl Iterator<Item = (u64, &V)> {
        let from = after.map_or(0, |after| {
            self.slots.partition_point(|&(id, _)| id <= after)
        });
        self.slots[from..]
            .iter()
            .filter_map(|(id, value)| value.as_ref().map(|value| (*id, value)))
    }

    /// Slots in use, holes included (tests see a squeeze by it).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    fn position(&self, id: u64) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&id, |&(id, _)| id)
    }

    /// Drops the holes, and gives back most of the room when a quarter or
    /// less of it is used (half of it stays, for connections to come).
    fn squeeze(&mut self) {
        self.slots.retain(|(_, value)| value.is_some());
        if self.slots.capacity() / 4 >= self.slots.len() {
            self.slots.shrink_to(self.slots.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(map: &ById<u64>, after: Option<u64>) -> Vec<(u64, u64)> {
        map.after(after).map(|(id, &v)| (id, v)).collect()
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

    /// Holes go once they outnumber the values, and most of the room with
    /// them once it is mostly empty; what is left is unchanged.
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
        map.remove(&500);
        assert_eq!((map.slots.len(), map.len()), (499, 499), "squeezed");
        assert_eq!(listed(&map, Some(997)), [(998, 998), (999, 999)]);
        for id in 501..1000 {
            map.remove(&id);
        }
        assert_eq!((map.len(), map.slots.capacity()), (0, 0));
        map.insert(1000, 1);
        assert_eq!(listed(&map, None), [(1000, 1)]);
    }
}
