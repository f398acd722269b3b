//! A worker thread's spare `HeaderMap`s: a response's map, once its head is
//! written, holds the next request's headers.
//!
//! Building a request's `HeaderMap` takes two allocations (its index table and
//! its entries) and dropping a response's map two frees: four of the eleven
//! allocator calls of a heartbeat on a parked connection (callgrind,
//! `bench/park-instructions.sh`, bench/HEARTBEAT.md). The response's map is
//! done with as soon as its head is encoded, and a cleared map keeps both of
//! its allocations, so the thread keeps a few and parses the next request's
//! headers into one of them.
//!
//! Bounded both ways: at most [`MAX_KEPT`] maps wait per thread, and a map
//! that grew past [`MAX_KEPT_CAPACITY`] headers is freed, so one large
//! response does not pin its memory. Per thread rather than per worker
//! context because the core (`conn/`) knows nothing of HTTP; a worker is one
//! thread, so it is the same pool.

use std::cell::RefCell;

use http::HeaderMap;

/// How many spare maps a thread keeps.
pub(crate) const MAX_KEPT: usize = 8;

/// Maps that can hold more headers than this are freed, not kept.
pub(crate) const MAX_KEPT_CAPACITY: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `headers` headers: a spare one if the
/// thread has one, else a new one.
pub(crate) fn take(headers: usize) -> HeaderMap {
    // Matched as `try_with` answers it: turned into a plain `Option`
    // first (`ok`, `flatten`), the map was copied whole once more on its
    // way to the caller (96 bytes, 12 user-space instructions a request;
    // callgrind, bench/CPU-PER-REQUEST.md, session 56).
    match SPARE.try_with(|spare| spare.borrow_mut().pop()) {
        // `reserve` is asked only of a map that lacks the room: it works
        // out the room it would grow to (an overflow-checked sum, a power
        // of two) even when it has it, ~13 user-space instructions a
        // request for a map that nearly always does (callgrind,
        // bench/CPU-PER-REQUEST.md, session 49). A map whose `capacity`
        // holds `headers` is one `reserve` leaves as it is.
        Ok(Some(map)) if map.capacity() >= headers => map,
        Ok(Some(mut map)) => {
            map.reserve(headers);
            map
        }
        Ok(None) | Err(_) => HeaderMap::with_capacity(headers),
    }
}

/// Keeps `map`'s allocations for a later [`take`] (emptied), unless it has
/// none, grew too large, or the thread already keeps enough.
pub(crate) fn give(mut map: HeaderMap) {
    let capacity = map.capacity();
    if capacity == 0 || capacity > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    // `try_with`: a response written while the thread's locals are being
    // destroyed just frees its map.
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < MAX_KEPT {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, HOST};
    use http::HeaderValue;

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let capacity = map.capacity();
        give(map);
        let again = take(2);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
        assert!(take(1).capacity() >= 1, "an empty pool makes a new map");
    }

    /// A spare map with less room than the head's headers is grown to
    /// it: `take` skips `reserve` only for a map that has the room.
    #[test]
    fn a_spare_map_without_the_room_grows_to_it() {
        give(HeaderMap::with_capacity(2));
        let map = take(20);
        assert!(map.is_empty());
        assert!(map.capacity() >= 20, "room for {}", map.capacity());
    }

    #[test]
    fn large_and_unallocated_maps_are_not_kept() {
        let mut large = HeaderMap::with_capacity(MAX_KEPT_CAPACITY + 1);
        large.insert(HOST, HeaderValue::from_static("a"));
        give(large);
        give(HeaderMap::new());
        assert!(SPARE.with(|s| s.borrow().is_empty()));
        for _ in 0..MAX_KEPT + 3 {
            give(HeaderMap::with_capacity(4));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), MAX_KEPT);
    }
}
