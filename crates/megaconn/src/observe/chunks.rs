//! A vector kept in fixed-size chunks: what `by_id::ById` keeps its slots
//! in, so that growing it never moves what it holds.
//!
//! Why: a `ById` is a worker's list of live connections, and every call on
//! it runs under the registry's lock, where the worker's accepts and closes
//! wait. A `Vec` grows by one reallocation, all its elements moved at
//! once: from 262,144 slots of 80 B to twice that, a copy of 21 MB into
//! 42 MB of fresh pages, faulted in under the lock, held it 10.8 and
//! 11.8 ms of CPU once a 30 MiB free had raised glibc's mmap threshold (as
//! a server's large frees do), 0.18 ms by `mremap` without
//! (`registry::tests::lock_hold_at_a_million`, 2026-12-04). Here growth
//! allocates one more chunk and moves nothing (at most 77 µs of CPU in
//! the same test: the allocation and a page fault or two); emptying the
//! last chunk frees it, so the room follows the slots in use down as well
//! as up, a chunk at a time.
//! The cost: an index is a division and a remainder by a power of two (a
//! shift and a mask) and two loads, the chunk's address and then the slot.
//!
//! All chunks are full but the last, which is never empty: slot `i` is
//! `chunks[i / C][i % C]`. The chunks' own list (24 B a chunk) is a plain
//! `Vec`, ~1,000 handles at a million slots of the default size: its
//! growth copies at most ~24 KB.

use std::ops::{Index, IndexMut};

/// Slots per chunk by default: 80 KiB for a listing's 80 B slots, below
/// glibc's smallest mmap threshold (128 KiB), so a chunk comes from the
/// worker's heap, not from an `mmap` (and goes back without a `munmap`),
/// and its pages are faulted in one at a time as slots are written. Small
/// next to the room a doubling vector left unused (up to half of it).
pub(crate) const SLOTS_PER_CHUNK: usize = 1024;

/// Values by index, in chunks of `C` (see the module doc).
#[derive(Debug)]
pub(crate) struct Chunks<T, const C: usize> {
    /// Each allocated for exactly `C` values and never pushed past them (so
    /// never reallocated); all full but the last, which is not empty.
    chunks: Vec<Vec<T>>,
    /// Values in all the chunks.
    len: usize,
}

impl<T, const C: usize> Default for Chunks<T, C> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T, const C: usize> Chunks<T, C> {
    /// How many values there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated, in use or not: whole chunks (tests see growth and
    /// give-back by it).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.chunks.len() * C
    }

    /// Adds `value` at the end: in the last chunk, or in a new one when it
    /// is full. Nothing already there moves.
    pub(crate) fn push(&mut self, value: T) {
        const { assert!(C > 0, "a chunk holds at least one value") };
        match self.chunks.last_mut() {
            Some(last) if last.len() < C => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(C);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// Takes the last value off; frees its chunk when that empties it.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let last = self.chunks.last_mut()?;
        let value = last.pop();
        if last.is_empty() {
            self.chunks.pop();
            // The chunks' own list follows them down (it is small: at most
            // 24 B a chunk), so that an emptied map holds nothing.
            if self.chunks.len() <= self.chunks.capacity() / 4 {
                self.chunks.shrink_to(self.chunks.len() * 2);
            }
        }
        self.len -= 1;
        value
    }

    /// Swaps the values at `a` and `b`, in the same chunk or not.
    ///
    /// # Panics
    /// If either is past the end.
    pub(crate) fn swap(&mut self, a: usize, b: usize) {
        let (low, high) = (a.min(b), a.max(b));
        let (low_chunk, high_chunk) = (low / C, high / C);
        if low_chunk == high_chunk {
            self.chunks[low_chunk].swap(low % C, high % C);
        } else {
            let (below, from_high) = self.chunks.split_at_mut(high_chunk);
            std::mem::swap(&mut below[low_chunk][low % C], &mut from_high[0][high % C]);
        }
    }

    /// Puts `value` at `at`, moving those from `at` on up by one: O(n) (a
    /// swap per value moved).
    ///
    /// # Panics
    /// If `at` is past the end.
    pub(crate) fn insert(&mut self, at: usize, value: T) {
        assert!(
            at <= self.len,
            "inserted at {at}, past the end ({})",
            self.len
        );
        self.push(value);
        for i in (at + 1..self.len).rev() {
            self.swap(i - 1, i);
        }
    }

    /// The first index in `range` whose value is not `below` (`range.end`
    /// if none), for values whose `below` ones all come first: a binary
    /// search, as `slice::partition_point`.
    pub(crate) fn partition_point(
        &self,
        range: std::ops::Range<usize>,
        below: impl Fn(&T) -> bool,
    ) -> usize {
        let (mut low, mut high) = (range.start, range.end);
        while low < high {
            let mid = low + (high - low) / 2;
            if below(&self[mid]) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

impl<T, const C: usize> Index<usize> for Chunks<T, C> {
    type Output = T;

    /// # Panics
    /// If `i` is past the end (every chunk but the last is full, so its
    /// chunk's own bound check is the end's).
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / C][i % C]
    }
}

impl<T, const C: usize> IndexMut<usize> for Chunks<T, C> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / C][i % C]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const C: usize>(chunks: &Chunks<u32, C>) -> Vec<u32> {
        (0..chunks.len()).map(|i| chunks[i]).collect()
    }

    /// Growth past a chunk's end allocates one chunk and moves no value
    /// (each stays at the address it was written to: a `Vec` moved them
    /// all at once); the room is whole chunks, one more at each boundary,
    /// each allocated whole (6 slots: a `Vec` grown by pushes would have
    /// moved its values at 4).
    #[test]
    fn growth_at_a_chunk_boundary_moves_nothing() {
        let mut chunks: Chunks<u32, 6> = Chunks::default();
        let mut addresses = Vec::new();
        for n in 0..20u32 {
            chunks.push(n);
            addresses.push(std::ptr::from_ref(&chunks[n as usize]));
            let len = n as usize + 1;
            assert_eq!(chunks.room(), len.div_ceil(6) * 6, "after {len}");
            for (i, &address) in addresses.iter().enumerate() {
                assert_eq!(
                    std::ptr::from_ref(&chunks[i]),
                    address,
                    "{i} moved at {len}"
                );
            }
        }
        assert_eq!(values(&chunks), (0..20).collect::<Vec<_>>());
        assert!(chunks.chunks.iter().all(|c| c.capacity() == 6));
    }

    /// Popping frees a chunk exactly when it empties it, down to nothing;
    /// values come off last first, across boundaries, and pushing again
    /// after that works as from new.
    #[test]
    fn popping_gives_back_a_chunk_as_it_empties() {
        let mut chunks: Chunks<u32, 4> = Chunks::default();
        for n in 0..9 {
            chunks.push(n);
        }
        for n in (0..9).rev() {
            assert_eq!(chunks.pop(), Some(n));
            assert_eq!(chunks.room(), (n as usize).div_ceil(4) * 4, "at {n}");
        }
        assert_eq!(chunks.pop(), None);
        assert_eq!((chunks.len(), chunks.chunks.capacity()), (0, 0));
        chunks.push(7);
        assert_eq!((values(&chunks), chunks.room()), (vec![7], 4));
    }

    /// Swaps within a chunk and across chunks (either order), and inserts
    /// at the start, a boundary, the middle and the end.
    #[test]
    fn swaps_and_inserts_across_chunks() {
        let mut chunks: Chunks<u32, 3> = Chunks::default();
        for n in 0..7 {
            chunks.push(n);
        }
        chunks.swap(0, 2);
        chunks.swap(6, 1);
        chunks.swap(4, 4);
        assert_eq!(values(&chunks), [2, 6, 0, 3, 4, 5, 1]);
        let mut chunks: Chunks<u32, 3> = Chunks::default();
        for n in [10, 30, 40, 60] {
            chunks.push(n);
        }
        chunks.insert(1, 20);
        chunks.insert(0, 0);
        chunks.insert(5, 50);
        chunks.insert(7, 70);
        assert_eq!(values(&chunks), [0, 10, 20, 30, 40, 50, 60, 70]);
        assert_eq!(chunks.room(), 9);
        assert_eq!(chunks.partition_point(0..8, |&v| v < 35), 4);
        assert_eq!(chunks.partition_point(2..4, |&v| v < 35), 4);
        assert_eq!(chunks.partition_point(5..8, |&v| v < 35), 5);
        assert_eq!(chunks.partition_point(0..8, |&v| v < 99), 8);
    }

    /// An index past the end panics, even where its chunk has room.
    #[test]
    #[should_panic(expected = "out of bounds")]
    fn an_index_past_the_end_panics() {
        let mut chunks: Chunks<u32, 4> = Chunks::default();
        chunks.push(1);
        let _ = chunks[1];
    }
}
