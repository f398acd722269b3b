//! A worker's live list of connections, for `ServerHandle::connections`
//! (the admin listener's `/debug/connections`) and the stall report: kept
//! only with connection tracking on (`track_connections`), written by the
//! worker through its connections' tracks (`lifecycle::ConnTrack`), read a
//! chunk at a time from any thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::observe::by_id::ById;
use crate::observe::lifecycle::{ConnectionInfo, ConnectionState};

/// One worker's live connections (only with connection tracking on). Written
/// by its worker, read by `ServerHandle::connections` ([`page`]) and the
/// stall report, a [`CHUNK`] at a time ([`Listing`]).
///
/// Ordered by id (a [`ById`], where a hash map's order changes as it
/// grows): a listing takes the lock once per chunk (at most [`CHUNK`]
/// entries, through at most [`VISITS`] slots, holes included) and goes on
/// after the last id it went through, so it holds no lock between chunks
/// and still lists each connection open throughout once. Copying a million
/// entries under one lock held the worker's every accept, close and state
/// change off for the whole copy.
///
/// The map is locked and searched only when a connection opens, parks,
/// wakes, closes or is listed. Its requests and state change per request:
/// those go straight into its [`Entry`], which its track holds too while
/// it is served (`ConnTrack::entry`; a parked connection's entry is kept by
/// value here and its track holds none, [`Listed::Parked`]), so an update
/// costs no lock and no lookup (it cost both, O(log n) in the connections
/// open, twice or more per request).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: std::sync::Mutex<ById<Listed>>,
}

/// A listed connection as its registry keeps it.
#[derive(Debug)]
pub(super) enum Listed {
    /// Served by a task: the entry its track updates.
    Awake(Arc<Entry>),
    /// Parked: its entry by value, as it was when it parked (nothing
    /// updates it until it wakes, [`Registry::wake`]).
    Parked(Entry),
}

impl Listed {
    fn entry(&self) -> &Entry {
        match self {
            Listed::Awake(entry) => entry,
            Listed::Parked(entry) => entry,
        }
    }
}

/// Connections a listing copies per lock of a registry.
#[cfg(not(test))]
const CHUNK: usize = 256;
/// Small in unit tests, so that a few connections span several chunks.
#[cfg(test)]
const CHUNK: usize = 3;

/// Slots a listing goes through per lock, holes included: past a run of
/// closed connections' holes it takes the lock again rather than walk them
/// all under it (past half a million holes, the first chunk of a million
/// listings took ~3.4 ms of CPU).
const VISITS: usize = 4 * CHUNK;

/// One listed connection, shared by the registry and the connection's track.
/// Only the connection's worker writes it (one writer: a plain load and
/// store, not a locked `fetch_add`); a listing reads it from any thread.
///
/// Its fields are separate relaxed atomics: each is read whole (no torn
/// value) and soon current, but not together with the other. A listing
/// taken while the worker moves on may show `requests` already counting a
/// request beside the `state` of the one before (or the reverse) for a
/// moment; nothing orders the two, and nothing needs to.
#[derive(Debug)]
pub(crate) struct Entry {
    peer: SocketAddr,
    worker: usize,
    opened: Instant,
    /// A [`ConnectionState`] as its discriminant
    /// ([`ConnectionState::from_index`]).
    state: AtomicU8,
    requests: AtomicU64,
}

impl Entry {
    fn new(peer: SocketAddr, worker: usize, state: ConnectionState) -> Arc<Entry> {
        Arc::new(Entry {
            peer,
            worker,
            opened: Instant::now(),
            state: AtomicU8::new(state as u8),
            requests: AtomicU64::new(0),
        })
    }

    /// A copy with the values its atomics hold now.
    fn copied(&self) -> Entry {
        Entry {
            peer: self.peer,
            worker: self.worker,
            opened: self.opened,
            state: AtomicU8::new(self.state.load(Relaxed)),
            requests: AtomicU64::new(self.requests.load(Relaxed)),
        }
    }

    /// Records what the connection is doing.
    pub(crate) fn set_state(&self, state: ConnectionState) {
        self.state.store(state as u8, Relaxed);
    }

    /// Counts a request on the connection.
    pub(crate) fn count_request(&self) {
        self.requests
            .store(self.requests.load(Relaxed) + 1, Relaxed);
    }

    fn info(&self, id: u64, now: Instant) -> ConnectionInfo {
        ConnectionInfo {
            id,
            peer: self.peer,
            worker: self.worker,
            age: now.saturating_duration_since(self.opened),
            // Only ever stored from a state: the fallback is never taken.
            state: ConnectionState::from_index(self.state.load(Relaxed))
                .unwrap_or(ConnectionState::ReadingHead),
            requests: self.requests.load(Relaxed),
        }
    }
}

impl Registry {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ById<Listed>> {
        #[cfg(test)]
        tests::LOCKS.with(|l| l.set(l.get() + 1));
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists connection `id`, just opened (`reading_head`): its entry, for
    /// its track to update.
    pub(crate) fn open(&self, id: u64, peer: SocketAddr, worker: usize) -> Arc<Entry> {
        let entry = Entry::new(peer, worker, ConnectionState::ReadingHead);
        self.lock().insert(id, Listed::Awake(entry.clone()));
        entry
    }

    /// Connection `id` closed: no longer listed.
    pub(crate) fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Connection `id` parks: its entry is kept by value from now on, and
    /// the `Arc` its track shared is let go.
    pub(crate) fn park(&self, id: u64) {
        let mut entries = self.lock();
        let Some(listed) = entries.get_mut(id) else {
            return;
        };
        if let Listed::Awake(entry) = listed {
            entry.set_state(ConnectionState::Parked);
            *listed = Listed::Parked(entry.copied());
        }
    }

    /// Connection `id` wakes: its entry, shared again with its track (still
    /// `parked` until its protocol says what it does).
    pub(crate) fn wake(&self, id: u64) -> Option<Arc<Entry>> {
        let mut entries = self.lock();
        let listed = entries.get_mut(id)?;
        let entry = match listed {
            Listed::Awake(entry) => entry.clone(),
            Listed::Parked(entry) => Arc::new(entry.copied()),
        };
        *listed = Listed::Awake(entry.clone());
        Some(entry)
    }

    /// How many connections are listed.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The live connections in id order, copied a [`CHUNK`] at a time, with
    /// their ages as of `now`.
    pub(crate) fn listing(&self, now: Instant) -> Listing<'_> {
        Listing {
            registry: self,
            now,
            chunk: std::collections::VecDeque::new(),
            after: None,
            done: false,
        }
    }
}

/// A registry's connections in id order (see [`Registry::listing`]): each
/// chunk is copied under the lock, then handed out with no lock held.
pub(crate) struct Listing<'r> {
    registry: &'r Registry,
    now: Instant,
    chunk: std::collections::VecDeque<ConnectionInfo>,
    /// The last id gone through (copied, or a hole): the next chunk
    /// starts after it.
    after: Option<u64>,
    /// No slot is left after `after`.
    done: bool,
}

impl Listing<'_> {
    /// The next connection's id, copying the next chunk if needed: up to
    /// [`CHUNK`] connections, through up to [`VISITS`] slots, per lock.
    fn peek_id(&mut self) -> Option<u64> {
        while self.chunk.is_empty() && !self.done {
            let entries = self.registry.lock();
            let mut slots = entries.after(self.after);
            #[cfg(test)]
            let mut visits = 0;
            for (id, listed) in slots.by_ref().take(VISITS) {
                #[cfg(test)]
                {
                    visits += 1;
                }
                self.after = Some(id);
                if let Some(listed) = listed {
                    self.chunk.push_back(listed.entry().info(id, self.now));
                    if self.chunk.len() == CHUNK {
                        break;
                    }
                }
            }
            self.done = slots.next().is_none();
            #[cfg(test)]
            tests::MOST_VISITS.with(|m| m.set(m.get().max(visits)));
        }
        self.chunk.front().map(|c| c.id)
    }
}

impl Iterator for Listing<'_> {
    type Item = ConnectionInfo;

    fn next(&mut self) -> Option<ConnectionInfo> {
        self.peek_id()?;
        self.chunk.pop_front()
    }
}

/// The live connections of `registries` in id order, from `offset`, at most
/// `limit` of them, and how many there are in all: the listings merged, a
/// chunk of each copied at a time, so that neither a lock nor memory is
/// held for all of them (the connections before `offset` are walked past,
/// not kept).
pub(crate) fn page(
    registries: &[Arc<Registry>],
    offset: usize,
    limit: usize,
) -> (usize, Vec<ConnectionInfo>) {
    let total: usize = registries.iter().map(|r| r.len()).sum();
    let now = Instant::now();
    let mut listings: Vec<Listing<'_>> = registries.iter().map(|r| r.listing(now)).collect();
    let mut page = Vec::with_capacity(limit.min(total.saturating_sub(offset)));
    let mut skip = offset;
    while page.len() < limit {
        let mut lowest: Option<(u64, usize)> = None;
        for (i, listing) in listings.iter_mut().enumerate() {
            if let Some(id) = listing.peek_id() {
                if lowest.is_none_or(|(low, _)| id < low) {
                    lowest = Some((id, i));
                }
            }
        }
        let Some((_, i)) = lowest else { break };
        let Some(connection) = listings[i].next() else {
            break;
        };
        if skip > 0 {
            skip -= 1;
        } else {
            page.push(connection);
        }
    }
    (total, page)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Locks of a registry taken on this thread.
        pub(crate) static LOCKS: Cell<usize> = const { Cell::new(0) };
        /// The most slots a listing went through under one lock on this
        /// thread.
        pub(crate) static MOST_VISITS: Cell<usize> = const { Cell::new(0) };
    }

    fn entry(id: u64) -> Listed {
        let entry = Entry::new(
            SocketAddr::from(([127, 0, 0, 1], id as u16)),
            0,
            ConnectionState::Idle,
        );
        entry.requests.store(id, Relaxed);
        Listed::Awake(entry)
    }

    /// Registries listing `ids`, one per slice.
    fn registries(ids: &[&[u64]]) -> Vec<Arc<Registry>> {
        ids.iter()
            .map(|ids| {
                let registry = Arc::new(Registry::default());
                for &id in *ids {
                    registry.lock().insert(id, entry(id));
                }
                registry
            })
            .collect()
    }

    fn ids(list: &[ConnectionInfo]) -> Vec<u64> {
        list.iter().map(|c| c.id).collect()
    }

    /// Listings span several chunks ([`CHUNK`] is 3 here) of registries whose
    /// ids interleave: every connection once, in id order; a page from
    /// `offset`, at most `limit`, and the total.
    #[test]
    fn a_page_merges_the_registries_a_chunk_at_a_time() {
        let even: Vec<u64> = (0..20).step_by(2).collect();
        let odd: Vec<u64> = (1..9).step_by(2).collect();
        let all: Vec<u64> = (0..9).chain((10..20).step_by(2)).collect();
        let rs = registries(&[&even, &odd]);
        let (total, list) = page(&rs, 0, 100);
        assert_eq!((total, ids(&list)), (14, all.clone()));
        assert_eq!(list[3].requests, 3, "each entry's own fields");
        let (total, list) = page(&rs, 4, 5);
        assert_eq!((total, ids(&list)), (14, all[4..9].to_vec()));
        assert_eq!(ids(&page(&rs, 13, 5).1), [18]);
        assert!(page(&rs, 14, 5).1.is_empty());
        assert!(page(&rs, 0, 0).1.is_empty());
        let (total, list) = page(&[], 0, 10);
        assert!(total == 0 && list.is_empty());
    }

    /// A listing holds no lock between chunks, so the worker opens and
    /// closes connections meanwhile: one closed before its chunk was copied
    /// is not listed, one opened after the listing's place is.
    #[test]
    fn a_listing_holds_no_lock_between_chunks() {
        let rs = registries(&[&[1, 2, 3, 4, 5, 6, 7]]);
        let mut listing = rs[0].listing(Instant::now());
        assert_eq!(listing.next().map(|c| c.id), Some(1));
        let mut entries = rs[0].entries.try_lock().expect("no lock held");
        entries.remove(&5);
        entries.insert(9, entry(9));
        drop(entries);
        assert_eq!(
            listing.map(|c| c.id).collect::<Vec<_>>(),
            [2, 3, 4, 6, 7, 9]
        );
    }

    /// Holes left in the middle of a listing's way, enough to squeeze them
    /// out (they outnumber the live entries): the listing goes on after the
    /// last id it copied, in the squeezed vector, missing and repeating
    /// none.
    #[test]
    fn a_listing_goes_on_across_a_squeeze() {
        let rs = registries(&[&[1, 2, 3, 4, 5, 6, 7, 9]]);
        let mut listing = rs[0].listing(Instant::now());
        let first: Vec<u64> = listing.by_ref().take(CHUNK).map(|c| c.id).collect();
        assert_eq!(first, [1, 2, 3], "the first chunk");
        let mut entries = rs[0].entries.try_lock().expect("no lock held");
        for id in 2..=6 {
            entries.remove(&id);
        }
        assert_eq!(entries.slot_count(), 3, "squeezed");
        drop(entries);
        assert_eq!(listing.map(|c| c.id).collect::<Vec<_>>(), [7, 9]);
    }

    /// A listing past a run of holes (closed connections not squeezed out
    /// yet: fewer than the live ones) goes through [`VISITS`] slots per
    /// lock, not the whole run under one, and still lists every connection
    /// once, in order.
    #[test]
    fn a_listing_walks_a_bounded_number_of_holes_per_lock() {
        let ids: Vec<u64> = (0..60).collect();
        let rs = registries(&[&ids]);
        for id in 0..29 {
            rs[0].close(id);
        }
        assert_eq!(rs[0].lock().slot_count(), 60, "not squeezed");
        MOST_VISITS.with(|m| m.set(0));
        let listed: Vec<u64> = rs[0].listing(Instant::now()).map(|c| c.id).collect();
        assert_eq!(listed, (29..60).collect::<Vec<_>>());
        let most = MOST_VISITS.with(Cell::get);
        assert!(most <= VISITS, "{most} slots under one lock");
    }

    /// Not a test: how long one worker's registry lock is held by each
    /// open and close of a million parked connections, closed in a random
    /// order (timings for a report, not asserted): the worst single hold,
    /// and the holds that grew the room or gave it back on their own. Run
    /// twice: in the process as it starts, then after a 30 MiB block was
    /// freed, as a server that has run a while has freed large blocks:
    /// glibc then raises its mmap threshold to that size, and a block below
    /// it is allocated on the heap (a `Vec` below it grows by a copy into
    /// fresh pages, not by `mremap`). Each call's CPU time on this thread
    /// is measured beside its wall time, which a busy machine swells with
    /// preemptions. Run it on a release build: `cargo test --release -p
    /// megaconn --lib lock_hold_at_a_million -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn lock_hold_at_a_million() {
        use std::time::Duration;
        /// One call's hold: CPU and wall time, page faults (minor and
        /// major: a hold that did little work but took long mostly
        /// faulted), and the room (slots allocated) before and after it.
        struct Hold {
            cpu: Duration,
            wall: Duration,
            faults: i64,
            room: (usize, usize),
        }
        fn thread_faults() -> i64 {
            // SAFETY: all zeroes is a valid rusage (integers only).
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: a valid `who` and a pointer to a live rusage.
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
            usage.ru_minflt + usage.ru_majflt
        }
        fn thread_cpu() -> Duration {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock id and a pointer to a live timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        }
        fn timed(registry: &Registry, call: impl FnOnce(&mut ById<Listed>)) -> Hold {
            // The page faults read outside the times, which count the rest.
            let faults = thread_faults();
            let (wall, cpu) = (Instant::now(), thread_cpu());
            let mut entries = registry.lock();
            let before = entries.room();
            call(&mut entries);
            let room = (before, entries.room());
            drop(entries);
            let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
            Hold {
                cpu,
                wall,
                faults: thread_faults() - faults,
                room,
            }
        }
        fn report(what: &str, holds: &[Hold]) {
            let total: Duration = holds.iter().map(|h| h.cpu).sum();
            let longest_wall = holds.iter().map(|h| h.wall).max().unwrap_or_default();
            let over_1ms = holds.iter().filter(|h| h.cpu.as_micros() > 1000).count();
            let mut cpu: Vec<Duration> = holds.iter().map(|h| h.cpu).collect();
            cpu.sort_unstable();
            let top: Vec<_> = cpu.iter().rev().take(5).collect();
            println!(
                "  {what}: {} calls, CPU time: total {total:?}, median {:?}, p99.9 {:?}, \
                 longest {top:?}, {over_1ms} over 1 ms; longest wall time {longest_wall:?}",
                holds.len(),
                cpu[cpu.len() / 2],
                cpu[cpu.len() * 999 / 1000],
            );
            let resized: Vec<(usize, &Hold)> = (holds.iter().enumerate())
                .filter(|(_, h)| h.room.0 != h.room.1)
                .collect();
            let worst_wall = resized.iter().map(|h| h.1.wall).max().unwrap_or_default();
            println!(
                "    {} of them resized the room: longest CPU time {}; longest wall time \
                 {worst_wall:?}",
                resized.len(),
                longest(resized.iter().copied()),
            );
        }
        /// The hold of the most CPU time among `holds` (each with its
        /// call's number): how long, which call, its page faults and the
        /// room around it.
        fn longest<'h>(holds: impl Iterator<Item = (usize, &'h Hold)>) -> String {
            holds
                .max_by_key(|(_, h)| h.cpu)
                .map_or("none".into(), |(i, h)| {
                    format!(
                        "{:?} (call {}, {} page faults, room {:?} slots)",
                        h.cpu, i, h.faults, h.room
                    )
                })
        }
        const N: u64 = 1_000_000;
        let parked = |id: u64| {
            let Listed::Awake(entry) = entry(id) else {
                unreachable!()
            };
            Listed::Parked(entry.copied())
        };
        // A fixed shuffle (xorshift), so that runs close in the same order.
        let mut order: Vec<u64> = (0..N).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for pass in ["as the process starts", "after a 30 MiB block was freed"] {
            if pass.starts_with("after") {
                // Above the 128 KiB threshold: mmapped, and its free raises
                // the threshold to its size (up to 32 MiB).
                drop(std::hint::black_box(vec![1u8; 30 << 20]));
            }
            let registry = Registry::default();
            let mut opens = Vec::with_capacity(N as usize);
            for id in 0..N {
                let listed = parked(id);
                opens.push(timed(&registry, |entries| {
                    entries.insert(id, listed);
                }));
            }
            let mut closes = Vec::with_capacity(N as usize);
            for &id in &order {
                closes.push(timed(&registry, |entries| {
                    entries.remove(&id);
                }));
            }
            let worst_wall = opens.iter().chain(&closes).map(|h| h.wall).max();
            println!(
                "{pass}: worst single hold {} of CPU time (calls: the opens, then the \
                 closes), {worst_wall:?} of wall time",
                longest(opens.iter().chain(&closes).enumerate()),
            );
            report("open", &opens);
            report("close", &closes);
        }
    }
}
