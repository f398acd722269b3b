//! The lot's slot array: one per process, shared by every worker's lot,
//! indexed by descriptor, each slot naming the lot that owns it.
//!
//! # Why one array, and why this one
//!
//! Descriptors are numbered across the process: with W workers, a worker's
//! sockets are about every W-th number, and its highest is about the
//! process's highest. An array per worker indexed by descriptor therefore
//! grew, in every worker, to the process's highest descriptor: W × 8 B per
//! connection, all but one slot empty, and never given back (15,000 parked
//! HTTP connections: 85 B each at W = 1, 247 B at W = 8, bench/FRAMED.md,
//! session 41). Here every lot of the process indexes the same array, and a
//! slot carries its owner, a lot id of 8 bits ([`Claim`]): 8 B per
//! descriptor once, whatever W (the kernel's own table of the process's
//! descriptors is 8 B per descriptor too).
//!
//! The other layout considered, a dense slab per worker found through a
//! process-wide descriptor index, costs 4 B per descriptor plus 8 B per
//! parked connection (about the same), but a heartbeat's wake and re-park
//! would touch two cache lines where this touches one: at a million
//! connections no array stays in the cache between a connection's
//! heartbeats, and three arrays were measurably three misses a heartbeat.
//!
//! # Sharing without locks
//!
//! A slot is one `AtomicU64`, loaded and stored `Relaxed` (plain moves on
//! x86, as the `RefCell<Vec>` was, less its borrow flag). Only its owner
//! writes a live slot: a parked socket's descriptor is held open by its lot,
//! so no other connection can hold that number; an awake one (`AWAKE`) is
//! held by the lot's own worker, which alone parks it again. Other lots
//! only read it (their sweeps walk the whole array and skip what is not
//! theirs) or, for a stale `AWAKE` left by a socket that closed elsewhere,
//! overwrite it when they park a new connection on the number. The one
//! owner transition a stranger can race, `AWAKE` to `ABSENT` by a lot that
//! no longer holds the descriptor, is a compare-and-swap
//! ([`Slots::replace`]). The array never moves: it is one anonymous mapping
//! reserved for the hard `RLIMIT_NOFILE` (no descriptor can be above it),
//! whose pages (small ones: `MADV_NOHUGEPAGE`) the kernel backs only when
//! first written, so reserving costs no memory.
//!
//! # Giving the room back
//!
//! [`Slots::top`] bounds the slots that may be in use; the sweeps walk only
//! below it. When every slot from some page up to `top` is `ABSENT` (a
//! peak of connections closed: the kernel hands out the lowest free
//! numbers, so the high ones empty first), a sweep lowers `top` and gives
//! those pages back (`MADV_DONTNEED`: they read as zeros, `ABSENT`, again).
//! Only a park can make an `ABSENT` slot live, and a park that lost that
//! race would lose its slot with the page, so the two are ordered as in
//! Dekker's algorithm, through a sequence number that is odd while a
//! release runs: the releaser makes it odd, fences, and looks at the slots
//! again; a park from `ABSENT` reads it, stores its slot, fences, and reads
//! it again. One of them sees the other: the releaser keeps the page (and
//! `top` above the slot), or the park sees a release under way and stores
//! its slot again under the lock the release holds (so after the page
//! went). `top` is never lowered below a slot the releaser saw live, so a
//! lot's walks never miss one of its own. A re-park of an awake socket, a
//! heartbeat's, needs neither fence nor look: its slot was never `ABSENT`,
//! so no release takes its page.

use std::io;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::Slot;

/// Slots per page (4 KiB of 8-byte slots): the unit given back.
const PAGE_SLOTS: usize = 512;

/// `top` is raised in steps of this many slots (two pages), so that a ramp
/// takes the lock once per 1,024 descriptors.
pub(super) const GROW_BY: usize = 1024;

/// A sweep gives pages back once at least this many slots above the
/// highest live one (rounded up to [`GROW_BY`]) are below `top`: 32 KiB, so
/// that connections coming and going around one number do not make every
/// sweep a release.
const RELEASE_MIN: usize = 4 * GROW_BY;

/// The most lots one array serves at a time (a slot's owner is 8 bits);
/// a lot beyond them gets an array of its own.
const OWNERS: usize = 256;

/// The most descriptors reserved for, whatever the limit says
/// (`/proc/sys/fs/nr_open` is at most 2^30).
const MAX_SLOTS: usize = 1 << 30;

/// A process's slot array (see the module doc).
pub(super) struct Slots {
    base: std::ptr::NonNull<AtomicU64>,
    /// Slots reserved: descriptors from this one up cannot park.
    cap: usize,
    /// Every slot from here up is `ABSENT` (but for one a park is storing).
    top: AtomicUsize,
    /// Odd while a release runs; bumped twice by each.
    seq: AtomicUsize,
    /// Held while `top` is raised or a release lowers it.
    grow: Mutex<()>,
    /// Which owner ids are taken (a bit each).
    owners: Mutex<[u64; OWNERS / 64]>,
    /// Pages given back so far (for tests).
    released: AtomicUsize,
}

// SAFETY: the mapping is owned by the array and only reached through
// atomics; `Slots` holds no thread-bound state.
unsafe impl Send for Slots {}
// SAFETY: as above: every access to the mapping is atomic.
unsafe impl Sync for Slots {}

impl Slots {
    /// An array for `slots` descriptors (rounded up to a page), reserved
    /// but not backed. Where the reservation is refused (ENOMEM: a hard
    /// open-file limit of 2^30, as containers under systemd have, is 8 GiB
    /// of address space, which `vm.overcommit_memory = 2` or `ulimit -v`
    /// may not allow, though `MAP_NORESERVE` backs none of it), half as
    /// many are asked for, down to a page's worth: the server starts, and
    /// a connection on a descriptor above the array stays awake as a task
    /// instead of parking (`awake.rs`: counted `park_slots`, logged).
    pub(super) fn new(slots: usize) -> io::Result<Slots> {
        let mut cap = slots
            .clamp(PAGE_SLOTS, MAX_SLOTS)
            .next_multiple_of(PAGE_SLOTS);
        let base = loop {
            // SAFETY: a fresh anonymous mapping; no memory of ours is passed.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap * 8,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if base != libc::MAP_FAILED {
                break base;
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOMEM) || cap <= PAGE_SLOTS {
                return Err(error);
            }
            cap = (cap / 2).next_multiple_of(PAGE_SLOTS);
        };
        if cap < slots.min(MAX_SLOTS) {
            tracing::warn!(
                slots = cap,
                open_file_limit = slots,
                "the parking lot's slot array was reserved for fewer descriptors than the \
                 open-file limit (the address space was refused: vm.overcommit_memory = 2 or \
                 ulimit -v); a connection on a descriptor above it stays awake as a task (~1 KB) \
                 instead of parking (8 B): lower the hard open-file limit (LimitNOFILE) to what \
                 the server needs, or allow the address space (ulimit -v)"
            );
        }
        // Small pages, whatever the transparent-huge-page mode: with `always`,
        // the first slot written would back 2 MiB at once (15,000
        // connections' 120 KB of slots: 140 B each), and a release could not
        // give back less. Advice only: a kernel without THP says EINVAL.
        // SAFETY: the mapping just made, whole.
        unsafe { libc::madvise(base, cap * 8, libc::MADV_NOHUGEPAGE) };
        Ok(Slots {
            base: std::ptr::NonNull::new(base.cast()).expect("mmap never maps page 0"),
            cap,
            top: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
            grow: Mutex::new(()),
            owners: Mutex::new([0; OWNERS / 64]),
            released: AtomicUsize::new(0),
        })
    }

    /// The process's array, reserved at its first use for the hard
    /// `RLIMIT_NOFILE` then.
    fn global() -> io::Result<Arc<Slots>> {
        static GLOBAL: OnceLock<Arc<Slots>> = OnceLock::new();
        if let Some(slots) = GLOBAL.get() {
            return Ok(slots.clone());
        }
        let made = Arc::new(Slots::new(hard_nofile())?);
        Ok(GLOBAL.get_or_init(|| made).clone())
    }

    fn at(&self, fd: usize) -> &AtomicU64 {
        debug_assert!(fd < self.cap);
        // SAFETY: `fd` is below `cap` (callers check), inside the mapping,
        // which lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(fd) }
    }

    /// Whether descriptor `fd` has a slot.
    pub(super) fn holds(&self, fd: usize) -> bool {
        fd < self.cap
    }

    /// How many descriptors have a slot (from 0 up).
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// Slot `fd` (`ABSENT` for one beyond the array).
    #[inline]
    pub(super) fn get(&self, fd: usize) -> Slot {
        if fd >= self.cap {
            return Slot::default();
        }
        Slot::from_bits(self.at(fd).load(Ordering::Relaxed))
    }

    /// Writes slot `fd`, which the caller owns and which is live (not
    /// `ABSENT`) or becomes `ABSENT` (see the module doc for what may write
    /// what).
    #[inline]
    pub(super) fn set(&self, fd: usize, slot: Slot) {
        self.at(fd).store(slot.bits(), Ordering::Relaxed);
    }

    /// Writes a live slot `fd` that was not live and owned by the writer
    /// before (a park from `ABSENT`, or over another lot's stale `AWAKE`):
    /// ordered against a release, and `top` raised past it if it is not.
    pub(super) fn claim(&self, fd: usize, slot: Slot) {
        // Acquire: read before the slot is stored.
        let seq = self.seq.load(Ordering::Acquire);
        self.set(fd, slot);
        fence(Ordering::SeqCst);
        if seq & 1 == 0
            && self.seq.load(Ordering::Relaxed) == seq
            && fd < self.top.load(Ordering::Relaxed)
        {
            return;
        }
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        if fd >= self.top.load(Ordering::Relaxed) {
            self.top.store(
                (fd + 1).next_multiple_of(GROW_BY).min(self.cap),
                Ordering::Release,
            );
        }
        // After any release that was under way: its page may have gone.
        self.set(fd, slot);
    }

    /// Replaces slot `fd` by `new` if it is still `old` (a stranger may
    /// have claimed it since); whether it did.
    pub(super) fn replace(&self, fd: usize, old: Slot, new: Slot) -> bool {
        fd < self.cap
            && self
                .at(fd)
                .compare_exchange(old.bits(), new.bits(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// One past the highest slot that may be live.
    pub(super) fn top(&self) -> usize {
        self.top.load(Ordering::Acquire)
    }

    /// Every slot below [`Slots::top`], with its descriptor.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, Slot)> + '_ {
        // A slice, not `get` per descriptor: no bounds check per slot in
        // the sweep's walk of the whole array.
        // SAFETY: `top` never exceeds `cap`: inside the mapping, which
        // lives as long as `self`.
        let live = unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.top()) };
        live.iter()
            .enumerate()
            .map(|(fd, slot)| (fd, Slot::from_bits(slot.load(Ordering::Relaxed))))
    }

    /// Gives back the pages above the highest live slot, if enough of
    /// them are below `top` ([`RELEASE_MIN`]): a look down from `top`, which
    /// stops at once where the top slots are in use (a sweep calls it
    /// every time), and walks an empty tail only when it is long enough to
    /// give back. Returns whether it gave any back.
    pub(super) fn release_empty_tail(&self) -> bool {
        let top = self.top();
        if top < RELEASE_MIN {
            return false;
        }
        // One live slot in the last RELEASE_MIN keeps them all.
        if (top - RELEASE_MIN..top)
            .rev()
            .any(|fd| self.get(fd).is_live())
        {
            return false;
        }
        let live = (0..top - RELEASE_MIN)
            .rev()
            .find(|&fd| self.get(fd).is_live())
            .map_or(0, |fd| fd + 1);
        self.release_above(live)
    }

    /// Gives back the pages above `live` (one past the highest live slot
    /// seen), if enough of them are below `top` ([`RELEASE_MIN`]).
    /// Returns whether it gave any back.
    pub(super) fn release_above(&self, live: usize) -> bool {
        let keep = live.next_multiple_of(GROW_BY);
        if self.top.load(Ordering::Relaxed) < keep + RELEASE_MIN {
            return false;
        }
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.top.load(Ordering::Relaxed);
        if old < keep + RELEASE_MIN {
            return false;
        }
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // A park that stored its slot before it could see the release is
        // seen here (the module doc): its page stays.
        let highest = (keep..old).rev().find(|&fd| self.get(fd).is_live());
        let keep = highest.map_or(keep, |fd| (fd + 1).next_multiple_of(GROW_BY));
        if keep >= old {
            self.seq.fetch_add(1, Ordering::Release);
            return false;
        }
        self.top.store(keep, Ordering::Release);
        // SAFETY: a page-aligned range inside the mapping (both ends are
        // multiples of GROW_BY slots, which are whole pages); its slots are
        // all `ABSENT`, and a park into it stores its slot again under
        // `grow`, which is held.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(keep).cast(),
                (old - keep) * 8,
                libc::MADV_DONTNEED,
            )
        };
        self.seq.fetch_add(1, Ordering::Release);
        if rc == 0 {
            self.released
                .fetch_add((old - keep) / PAGE_SLOTS, Ordering::Relaxed);
        }
        rc == 0
    }

    /// Pages given back so far.
    #[cfg(test)]
    pub(super) fn released(&self) -> usize {
        self.released.load(Ordering::Relaxed)
    }

    /// A free owner id, taken.
    fn take_owner(&self) -> Option<u8> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let (word, bit) = owners
            .iter()
            .enumerate()
            .find_map(|(i, w)| (*w != u64::MAX).then(|| (i, w.trailing_ones() as usize)))?;
        owners[word] |= 1 << bit;
        Some((word * 64 + bit) as u8)
    }

    fn give_owner(&self, owner: u8) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners[usize::from(owner) / 64] &= !(1 << (owner % 64));
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.cap * 8) };
    }
}

/// A lot's place in an array: the array and its owner id there, given
/// back when the lot goes.
pub(super) struct Claim {
    slots: Arc<Slots>,
    owner: u8,
}

impl Claim {
    /// An owner id in the process's array, or, if all 256 are taken, an
    /// array of its own.
    pub(super) fn new() -> io::Result<Claim> {
        let slots = Slots::global()?;
        match slots.take_owner() {
            Some(owner) => Ok(Claim { slots, owner }),
            None => Claim::private(),
        }
    }

    /// An array of its own (a lot beyond the 256th, and tests that look at
    /// what a release gives back).
    pub(super) fn private() -> io::Result<Claim> {
        let slots = Arc::new(Slots::new(hard_nofile())?);
        let owner = slots.take_owner().expect("a fresh array has every id free");
        Ok(Claim { slots, owner })
    }

    /// An array of its own for `slots` descriptors (at least a page's
    /// worth: tests of a descriptor above it).
    #[cfg(test)]
    pub(super) fn private_of(slots: usize) -> io::Result<Claim> {
        let slots = Arc::new(Slots::new(slots)?);
        let owner = slots.take_owner().expect("a fresh array has every id free");
        Ok(Claim { slots, owner })
    }

    /// A second lot's place in the same array (tests).
    #[cfg(test)]
    pub(super) fn beside(&self) -> Claim {
        let owner = self.slots.take_owner().expect("a free owner id");
        Claim {
            slots: self.slots.clone(),
            owner,
        }
    }

    pub(super) fn slots(&self) -> &Slots {
        &self.slots
    }

    pub(super) fn owner(&self) -> u8 {
        self.owner
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.slots.give_owner(self.owner);
    }
}

/// The hard `RLIMIT_NOFILE`: no descriptor of the process can be above it
/// (only a privileged process can raise it, and the array is reserved at
/// the first lot's start, after the server raised its soft limit to it).
fn hard_nofile() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1 << 20;
    }
    usize::try_from(lim.rlim_max)
        .unwrap_or(MAX_SLOTS)
        .min(MAX_SLOTS)
}

#[cfg(test)]
mod tests {
    //! The array on its own: owner ids, and parks racing releases.

    use super::*;
    use crate::conn::park::{AWAKE, NO_DEADLINE};

    fn live(owner: u8) -> Slot {
        Slot {
            deadline: NO_DEADLINE,
            mark: u32::from(owner) << 8 | 1,
        }
    }

    /// Every id is taken once; the 257th lot gets an array of its own; an
    /// id given back is taken again.
    #[test]
    fn owner_ids_are_unique_and_given_back() {
        let slots = Slots::new(4096).unwrap();
        let ids: Vec<u8> = (0..OWNERS).map(|_| slots.take_owner().unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), OWNERS);
        assert_eq!(slots.take_owner(), None);
        slots.give_owner(77);
        assert_eq!(slots.take_owner(), Some(77));
    }

    /// Parks from `ABSENT` racing releases of the pages they land on: a
    /// slot stored by a park that returned is never lost to a release, and
    /// once every slot is `ABSENT` again a release gives the pages back.
    #[test]
    fn a_park_racing_a_release_keeps_its_slot() {
        let slots = Arc::new(Slots::new(64 * PAGE_SLOTS).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let releaser = {
            let (slots, stop) = (slots.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut released = 0;
                while !stop.load(Ordering::Relaxed) {
                    released += usize::from(slots.release_above(0));
                }
                released
            })
        };
        let parkers: Vec<_> = (0..3u8)
            .map(|owner| {
                let slots = slots.clone();
                std::thread::spawn(move || {
                    for round in 0..20_000usize {
                        // Each owner its own descriptors, spread over pages.
                        let fd = RELEASE_MIN + (round % 40) * PAGE_SLOTS / 2 + usize::from(owner);
                        slots.claim(fd, live(owner));
                        assert_eq!(slots.get(fd), live(owner), "round {round}");
                        slots.set(fd, live(owner).now(AWAKE));
                        assert_eq!(slots.get(fd), live(owner).now(AWAKE));
                        slots.set(fd, Slot::default());
                    }
                })
            })
            .collect();
        for parker in parkers {
            parker.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let raced = releaser.join().unwrap();
        slots.release_above(0);
        assert_eq!(slots.top(), 0);
        assert!(slots.released() > 0, "{raced} releases while parking");
    }
}
