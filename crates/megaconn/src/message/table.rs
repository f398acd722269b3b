//! The side table of parked message connections: one worker's states of
//! connections that left the runtime, found by socket, with their timers
//! packed small. The parking lot keeps only the protocol tag and the earlier
//! deadline; the protocol's state waits here until the socket wakes (or the
//! lot closes it).
//!
//! # Storage: a dense slab, found through a descriptor index
//!
//! Each worker has its own table (no locks), and descriptors are numbered
//! across the whole process: with W workers, a worker's sockets are about
//! every W-th descriptor, and its highest is about the process's highest.
//! The table was one slot per descriptor (`16 B + size_of::<State>()`), so
//! every worker's array grew to the process's highest descriptor: W slots
//! per connection, all but one empty, never given back (a review measured
//! 2,414 B of RSS per connection with a 256-byte state at W = 8, 330 at
//! W = 1, and the arrays stayed after every connection had closed).
//!
//! Now the states are in a slab of slots (`16 B + size_of::<State>()` each,
//! a free one holding the next free one's position in the same bytes), one
//! per connection parked on this worker, whatever W, and only the index from
//! descriptor to slab position is per descriptor: a `u32`, 4 B. Per parked
//! connection (the lot's own 8 B slot per descriptor aside):
//!
//! ```text
//!                        W = 1            W = 8            W workers
//!   before (fd-indexed)  16 + S           8 × (16 + S)     W × (16 + S)
//!   now                  16 + S + 4       16 + S + 8 × 4   16 + S + 4 W
//!   S = 0 (`()`)         16 → 20          128 → 48
//!   S = 256              272 → 276        2,176 → 304
//! ```
//!
//! A look-up is two indexed loads (index, then slot), no hashing: a hash
//! map from descriptor to state costs ~46 B an entry at its usual load plus
//! a hash per wake. A freed slot is reused first (last freed, first reused:
//! a heartbeat's wake and re-park land on the slot they left, still in the
//! cache).
//!
//! Both give their room back: the index drops its tail of empty entries
//! when its highest descriptor leaves, and both shrink once under a quarter
//! full (the slab compacted: the index tells where each live slot is, one
//! walk of it); an empty table holds nothing. So a peak of connections that
//! closed leaves nothing here (what the allocator keeps of the freed room is
//! the lot's heap trim's, `conn/park.rs`).

use std::cell::{Cell, RefCell};
use std::num::NonZeroU16;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::message::hub::{
    self, Delivered, DropCause, Generation, IfBehind, SendNow, Unsent, GENERATION_BITS,
};
use crate::message::wire::{Encoded, Wire, WireId};
use crate::message::worker::Local;
use crate::observe::stats::{add, incr, MessageCounters};

/// A parked connection's state, its variant (the protocol's own small tag:
/// framed TCP's listener, for its framing when it wakes), and its timers
/// (the lot keeps only the earlier one).
pub(crate) struct Parked<S> {
    pub state: S,
    pub variant: usize,
    /// The peer's heartbeat deadline.
    pub due: Option<tokio::time::Instant>,
    /// When the server sends its next heartbeat.
    pub send_at: Option<tokio::time::Instant>,
    /// Its [`ConnectionId`](crate::ConnectionId)'s generation.
    pub generation: Generation,
    /// A push could not be written whole: it owes the rest, and wakes to
    /// write it (`Local::overflowed`).
    pub behind: bool,
}

/// What the side table stores per parked connection: [`Parked`], packed.
/// At a million parked connections every byte here is a megabyte, so the
/// timers are milliseconds since the table's epoch in a wrapping `u32` (0:
/// none), read back relative to now, the variant is a `u16`, and the
/// 46-bit generation is a `u32` and 14 bits of a `u16` that also holds
/// `behind`: 16 bytes plus the user's state, against 56 for the plain form.
/// Topic subscriptions are not here: only connections that subscribe pay
/// for them (`worker.rs`).
struct Stored<S> {
    state: S,
    due: u32,
    send_at: u32,
    /// The generation's low 32 bits.
    generation: u32,
    variant: u16,
    /// The generation's high bits (from bit 2), `behind` (bit 1), and bit 0
    /// always set: never zero, so `Option<Stored>` needs no flag of its own.
    high: NonZeroU16,
}

/// Where `behind` is in [`Stored::high`].
const BEHIND: u16 = 0b10;

// Every bit of a generation has its place in a slot.
const _: () = assert!(GENERATION_BITS == 32 + 14);

impl<S> Stored<S> {
    fn generation(&self) -> Generation {
        Generation::from(self.generation) | Generation::from(self.high.get() >> 2) << 32
    }

    fn behind(&self) -> bool {
        self.high.get() & BEHIND != 0
    }

    fn set_behind(&mut self) {
        self.high |= BEHIND;
    }
}

/// [`Stored::high`] of `generation` and `behind`.
fn high(generation: Generation, behind: bool) -> NonZeroU16 {
    // Bits 32 to 45; the mask keeps a wider one from spilling into the flags.
    let top = ((generation >> 32) & 0x3fff) as u16;
    NonZeroU16::MIN | top << 2 | if behind { BEHIND } else { 0 }
}

/// Timers further ahead than this are stored as this (a wrapping `u32` of
/// milliseconds reads back unambiguously within about 24.8 days of now).
const MAX_TIMER_AHEAD: Duration = Duration::from_secs(24 * 24 * 3600);

/// How a table's pushes reach a parked socket, if not as they are (one
/// `send` of the framed bytes): WebSockets over TLS encrypt them with the
/// connection's parked session first.
pub(crate) type SendParked = Rc<SendFn>;

/// Writes framed bytes to parked socket `fd` (see [`SendParked`]).
pub(crate) type SendFn = dyn Fn(RawFd, &Bytes) -> Pushed;

/// What writing a push to a parked socket did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// All of it went.
    Sent,
    /// The socket did not take all of it: the peer is behind. With what
    /// must still go before anything else may: the rest of the frame when
    /// the socket took part of it (a frame cannot be cut into), and over
    /// TLS every record sealed for it, taken or not (the session's sequence
    /// moved past them).
    Behind(Option<Bytes>),
    /// The connection is broken (see [`SendNow::Broken`]).
    Broken,
}

impl Pushed {
    /// How a `send` of `bytes` as they are went.
    pub(crate) fn of(sent: SendNow, bytes: &Bytes) -> Pushed {
        match sent {
            SendNow::Sent => Pushed::Sent,
            SendNow::Full { taken: 0 } => Pushed::Behind(None),
            SendNow::Full { taken } => Pushed::Behind(Some(bytes.slice(taken..))),
            SendNow::Broken => Pushed::Broken,
        }
    }
}

/// How many slots the slab and the index grow by at least (not doubling:
/// at a million connections a doubled vector would be up to half empty).
const GROW_BY: usize = 1024;

/// An index entry for a descriptor with nothing parked here (and the end of
/// the slab's free list).
const NONE: u32 = u32::MAX;

/// A slot of the slab: a parked connection's state, or the position of the
/// next free slot. The same size as `Option<Stored<S>>` (the free link sits
/// beside `Stored::high`, whose zero niche tells the two apart): 16 bytes
/// with a `()` state.
enum Slot<S> {
    Full(Stored<S>),
    Free(u32),
}

/// One worker's parked states: a dense slab and the index from descriptor
/// to slab position (see the module doc).
struct Slab<S> {
    /// Per descriptor: its slot in `slots`, or [`NONE`]. No longer than one
    /// past the highest descriptor parked here.
    index: Vec<u32>,
    slots: Vec<Slot<S>>,
    /// The first free slot (the last freed), [`NONE`] for none.
    free: u32,
    /// How many slots are full.
    full: usize,
}

impl<S> Slab<S> {
    const fn new() -> Slab<S> {
        Slab {
            index: Vec::new(),
            slots: Vec::new(),
            free: NONE,
            full: 0,
        }
    }

    /// The slot of descriptor `fd`, if something is parked there.
    fn get(&self, fd: RawFd) -> Option<&Stored<S>> {
        let at = *self.index.get(usize::try_from(fd).ok()?)?;
        match self.slots.get(at as usize)? {
            Slot::Full(stored) => Some(stored),
            Slot::Free(_) => None,
        }
    }

    fn get_mut(&mut self, fd: RawFd) -> Option<&mut Stored<S>> {
        let at = *self.index.get(usize::try_from(fd).ok()?)?;
        match self.slots.get_mut(at as usize)? {
            Slot::Full(stored) => Some(stored),
            Slot::Free(_) => None,
        }
    }

    /// Keeps `stored` for descriptor `fd`; what was kept for it before, if
    /// anything (replaced in place).
    fn insert(&mut self, fd: usize, stored: Stored<S>) -> Option<Stored<S>> {
        if fd >= self.index.len() {
            grow(&mut self.index, fd + 1);
            self.index.resize(fd + 1, NONE);
        }
        if let Some(Slot::Full(old)) = self.slots.get_mut(self.index[fd] as usize) {
            return Some(std::mem::replace(old, stored));
        }
        let at = match self.free {
            NONE => {
                let len = self.slots.len() + 1;
                grow(&mut self.slots, len);
                self.slots.push(Slot::Full(stored));
                self.slots.len() - 1
            }
            free => {
                let slot = &mut self.slots[free as usize];
                let Slot::Free(next) = *slot else {
                    unreachable!("the free list holds free slots")
                };
                self.free = next;
                *slot = Slot::Full(stored);
                free as usize
            }
        };
        self.index[fd] = u32::try_from(at).expect("fewer than 2^32 - 1 parked connections");
        self.full += 1;
        None
    }

    /// What is kept for descriptor `fd`, taken; the room it leaves is given
    /// back as the module doc says.
    fn remove(&mut self, fd: usize) -> Option<Stored<S>> {
        let at = *self.index.get(fd)?;
        let slot = self.slots.get_mut(at as usize)?;
        let Slot::Full(_) = slot else { return None };
        let Slot::Full(stored) = std::mem::replace(slot, Slot::Free(self.free)) else {
            unreachable!("matched full above")
        };
        self.free = at;
        self.index[fd] = NONE;
        self.full -= 1;
        if self.full == 0 {
            *self = Slab::new();
        } else {
            if fd + 1 == self.index.len() {
                let end = self
                    .index
                    .iter()
                    .rposition(|&at| at != NONE)
                    .map_or(0, |i| i + 1);
                self.index.truncate(end);
                shrink(&mut self.index);
            }
            if self.slots.len() > GROW_BY && self.full * 4 < self.slots.len() {
                self.compact();
            }
        }
        Some(stored)
    }

    /// Moves the full slots to the front, in descriptor order, and gives the
    /// rest back: one walk of the index, once the slab is under a quarter
    /// full (so at least three quarters of a slab's worth of removals apart).
    fn compact(&mut self) {
        let mut slots = Vec::with_capacity(self.full);
        for at in self.index.iter_mut().filter(|at| **at != NONE) {
            let slot = std::mem::replace(&mut self.slots[*at as usize], Slot::Free(NONE));
            *at = slots.len() as u32;
            slots.push(slot);
        }
        self.slots = slots;
        self.free = NONE;
        shrink(&mut self.index);
    }
}

/// Makes room for `len` items in `v`: a [`GROW_BY`] more at least.
fn grow<T>(v: &mut Vec<T>, len: usize) {
    if len > v.capacity() {
        let more = len - v.len();
        v.reserve_exact(more.max(GROW_BY));
    }
}

/// Gives back `v`'s room beyond its length once that is over half of it.
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > GROW_BY && v.len() * 2 < v.capacity() {
        v.shrink_to(v.len() + GROW_BY / 2);
    }
}

/// One worker's states of one protocol's parked connections, by socket.
pub(crate) struct SideTable<S> {
    /// The states of the sockets parked here, by descriptor.
    parked: RefCell<Slab<S>>,
    /// How many slots are full.
    len: Cell<usize>,
    epoch: tokio::time::Instant,
    /// The worker's wire of each variant (framed: of each listener).
    wires: Vec<WireId>,
    /// How pushes are written (`None`: as they are).
    send: Option<SendParked>,
    /// The worker's message state, which counts the connections parked
    /// here in its gauges of message connections, under this protocol, as
    /// they come and go (`census.rs`: the count moves with the connection;
    /// `None`: not counted, a table of a unit test).
    counted: Option<(Weak<Local>, Option<usize>)>,
}

impl<S> SideTable<S> {
    pub(crate) fn new(wires: Vec<WireId>, send: Option<SendParked>) -> SideTable<S> {
        SideTable {
            parked: RefCell::new(Slab::new()),
            len: Cell::new(0),
            epoch: tokio::time::Instant::now(),
            wires,
            send,
            counted: None,
        }
    }

    /// Tells `local` of each connection that parks here and leaves, as of
    /// `protocol` (`worker::MessageProtocol`), so that it counts it in its
    /// gauges of message connections (what a broadcast reaches) as one
    /// connection from its registration to its close (`census.rs`).
    pub(crate) fn counted(mut self, local: Weak<Local>, protocol: Option<usize>) -> SideTable<S> {
        self.counted = Some((local, protocol));
        self
    }

    /// One slot more (`1`) or fewer (`-1`) is full: connection
    /// (`fd`, `generation`) parked here or left.
    fn moved(&self, by: isize, (fd, generation): (RawFd, Generation)) {
        self.len.set(self.len.get().wrapping_add_signed(by));
        let Some((local, protocol)) = &self.counted else {
            return;
        };
        let Some(local) = local.upgrade() else { return };
        let id = local.id(fd, generation);
        match by {
            1 => local.parked(id, *protocol),
            _ => local.left_table(id, *protocol),
        }
    }

    /// The worker's wire for connections of `variant` (a table with one
    /// wire frames every variant with it: WebSocket's variants are routes).
    pub(crate) fn wire(&self, variant: usize) -> WireId {
        match self.wires[..] {
            [only] => only,
            _ => self.wires.get(variant).copied().unwrap_or(WireId::MAX),
        }
    }

    pub(crate) fn put(&self, fd: RawFd, parked: Parked<S>) {
        let generation = parked.generation;
        let stored = Stored {
            state: parked.state,
            due: self.pack(parked.due),
            send_at: self.pack(parked.send_at),
            variant: u16::try_from(parked.variant).expect("fewer than 65,536 variants"),
            generation: parked.generation as u32,
            high: high(parked.generation, parked.behind),
        };
        let Ok(slot) = usize::try_from(fd) else {
            return;
        };
        let stale = self.parked.borrow_mut().insert(slot, stored);
        debug_assert!(stale.is_none(), "a socket parked twice");
        if stale.is_none() {
            self.moved(1, (fd, generation));
        }
    }

    pub(crate) fn take(&self, fd: RawFd) -> Option<Parked<S>> {
        let stored = self.parked.borrow_mut().remove(usize::try_from(fd).ok()?)?;
        let (generation, behind) = (stored.generation(), stored.behind());
        self.moved(-1, (fd, generation));
        Some(Parked {
            state: stored.state,
            variant: usize::from(stored.variant),
            due: self.unpack(stored.due),
            send_at: self.unpack(stored.send_at),
            generation,
            behind,
        })
    }

    /// The bytes one slot of this table's slab takes (for size guards; the
    /// index adds 4 per descriptor up to the highest parked here).
    #[cfg(test)]
    pub(crate) const fn slot_bytes() -> usize {
        std::mem::size_of::<Slot<S>>()
    }

    /// The bytes this table's storage holds from the allocator (for tests).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        let parked = self.parked.borrow();
        parked.slots.capacity() * Self::slot_bytes() + parked.index.capacity() * 4
    }

    /// A parked connection's variant, if `fd` is parked here.
    pub(crate) fn variant(&self, fd: RawFd) -> Option<usize> {
        let parked = self.parked.borrow();
        parked.get(fd).map(|p| usize::from(p.variant))
    }

    fn millis_now(&self) -> u64 {
        tokio::time::Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }

    fn pack(&self, at: Option<tokio::time::Instant>) -> u32 {
        let Some(at) = at else { return 0 };
        let at = at.min(tokio::time::Instant::now() + MAX_TIMER_AHEAD);
        // Wrapping on purpose; 0 means "none", so a timer that lands on it
        // moves a millisecond.
        (at.saturating_duration_since(self.epoch).as_millis() as u32).max(1)
    }

    fn unpack(&self, packed: u32) -> Option<tokio::time::Instant> {
        if packed == 0 {
            return None;
        }
        let now = self.millis_now();
        // The stored instant is the one within ±24.8 days of now.
        let ahead = i64::from(packed.wrapping_sub(now as u32) as i32);
        let millis = (now as i64 + ahead).max(0) as u64;
        Some(self.epoch + Duration::from_millis(millis))
    }
}

/// Delivery to parked connections, whatever their state type: what the
/// worker's pump sees of each protocol's side table.
pub(crate) trait ParkedSet {
    /// Writes `msg` to the connection parked at `to` (descriptor and
    /// generation), counted in `counted`'s counters; its `IfBehind`: what
    /// it does if the socket refuses it ([`send_parked`]).
    fn deliver(
        &self,
        to: (RawFd, Generation),
        msg: &mut Encoded,
        wires: &[Rc<dyn Wire>],
        counted: (&MessageCounters, IfBehind),
    ) -> Delivered;

    /// The generation of the connection parked at `fd`, if one is.
    fn generation(&self, fd: RawFd) -> Option<Generation>;

    /// Marks the connection parked at `fd` of `generation` behind, so that
    /// it closes as a slow consumer when it wakes (`wake::resume`) and the
    /// pushes that find it meanwhile are a slow consumer's: whether it is
    /// parked here.
    fn mark_behind(&self, fd: RawFd, generation: Generation) -> bool;

    /// How many connections are parked here.
    fn len(&self) -> usize;

    /// One past the highest descriptor a connection may be parked at.
    fn slots(&self) -> usize;
}

impl<S> ParkedSet for SideTable<S> {
    fn deliver(
        &self,
        (fd, generation): (RawFd, Generation),
        msg: &mut Encoded,
        wires: &[Rc<dyn Wire>],
        counted: (&MessageCounters, IfBehind),
    ) -> Delivered {
        let mut parked = self.parked.borrow_mut();
        match parked.get_mut(fd) {
            Some(stored) if stored.generation() == generation => send_parked(
                fd,
                stored,
                (self.wire(usize::from(stored.variant)), self.send.as_deref()),
                (msg, wires),
                counted,
            ),
            Some(_) => Delivered::Replaced,
            None => Delivered::NotParked,
        }
    }

    fn generation(&self, fd: RawFd) -> Option<Generation> {
        self.parked.borrow().get(fd).map(Stored::generation)
    }

    fn mark_behind(&self, fd: RawFd, generation: Generation) -> bool {
        let mut parked = self.parked.borrow_mut();
        match parked.get_mut(fd) {
            Some(stored) if stored.generation() == generation => {
                stored.set_behind();
                true
            }
            _ => false,
        }
    }

    fn len(&self) -> usize {
        self.len.get()
    }

    fn slots(&self) -> usize {
        self.parked.borrow().index.len()
    }
}

/// Writes a message straight to one parked socket, framed for its wire. A
/// socket that cannot take it whole is marked behind, and the caller wakes
/// the connection at once to write what it still owes and resume
/// ([`Delivered::Overflowed`], with what the socket did not take and the
/// wire, for the pushes after it: `Local::overflowed`). (Bytes pushed to a
/// parked connection are not in its lifecycle counts: it has no current
/// track while parked.)
///
/// A droppable push ([`IfBehind::Drop`]) is dropped instead while the
/// connection is behind, and the connection stays parked, not marked:
/// parked, it has no queue to measure, so behind is what its socket says:
/// not writable ([`hub::writable_now`], asked first: over two thirds of
/// its send buffer queued), or a `send` that took none of the push
/// (`EAGAIN`). Nothing of it went, nothing is owed, nothing to wake for.
/// Asked first, not only told by the `send`: a socket fills by short
/// writes (the kernel appends to its last segment without looking at the
/// buffer's bound, then refuses a new one), and a frame the socket took
/// part of cannot be dropped: its rest must go before anything else, so
/// the connection wakes to write it (as for any push; under a flood that
/// is the likely end, the last segment's room seldom a whole number of
/// frames). Over TLS the push is
/// sealed before it is written and sealed records must all go: asked
/// first, it is dropped unsealed. Asking costs one `poll` per droppable
/// push to a parked connection; a push over a third of the send buffer
/// may still be taken in part after a yes, and wakes it.
fn send_parked<S>(
    fd: RawFd,
    stored: &mut Stored<S>,
    (wire, send): (WireId, Option<&SendFn>),
    (msg, wires): (&mut Encoded, &[Rc<dyn Wire>]),
    (counters, if_behind): (&MessageCounters, IfBehind),
) -> Delivered {
    if stored.behind() {
        return Delivered::Behind;
    }
    let Some(bytes) = msg.on(wires, wire) else {
        return Delivered::NotParked;
    };
    let droppable = if_behind == IfBehind::Drop;
    let sent = match send {
        _ if droppable && !hub::writable_now(fd) => Pushed::Behind(None),
        Some(send) => send(fd, &bytes),
        None => Pushed::of(hub::send_all_now(fd, &bytes), &bytes),
    };
    let unsent = match sent {
        Pushed::Sent => {
            incr(&counters.pushes);
            incr(&counters.frames_out);
            add(&counters.bytes_out, bytes.len() as u64);
            return Delivered::Sent;
        }
        // The peer is gone; its hang-up wakes it to be closed as such. The
        // push is lost: dropped, as one its close leaves queued is.
        Pushed::Broken => {
            incr(&counters.queue_drops);
            return Delivered::Lost;
        }
        // Nothing of it went, nothing is owed: dropped, left parked.
        Pushed::Behind(None) if droppable => {
            DropCause::Droppable.count(counters);
            return Delivered::Dropped;
        }
        Pushed::Behind(unsent) => unsent,
    };
    // Counted when the connection wakes and writes the rest (or none of
    // it went, and it queues whole), or closes without (`Unsent`).
    stored.set_behind();
    let unsent = unsent.map(|tail| Unsent {
        tail,
        frame: bytes.len(),
        waiter: None,
    });
    Delivered::Overflowed(unsent, wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::test_support::Plain;

    /// A regression guard for what a parked framed connection costs beyond
    /// the lot's few bytes: its side-table slot (the packed form; the slot's
    /// index is the socket), the user's state on top. 16 bytes with `()`.
    #[test]
    fn a_parked_entry_stays_small() {
        let size = std::mem::size_of::<Option<Stored<()>>>();
        assert!(size <= 16, "a side-table slot is {size} bytes");
    }

    /// Every bit of a generation survives the slot, and `behind` beside
    /// it; the slot stays 16 bytes (`a_parked_entry_stays_small`).
    #[test]
    fn generations_and_behind_survive_packing() {
        let table = SideTable::<()>::new(vec![0], None);
        let max = crate::message::hub::GENERATION_MASK;
        for generation in [0, 1, 5, u64::from(u32::MAX), 1 << 32, (1 << 32) | 5, max] {
            for behind in [false, true] {
                table.put(
                    3,
                    Parked {
                        state: (),
                        variant: 65_535,
                        due: None,
                        send_at: None,
                        generation,
                        behind,
                    },
                );
                assert_eq!(table.generation(3), Some(generation));
                let back = table.take(3).unwrap();
                assert_eq!(
                    (back.generation, back.behind, back.variant),
                    (generation, behind, 65_535)
                );
            }
        }
        // Marked behind by a push: the generation stays.
        table.put(
            3,
            Parked {
                state: (),
                variant: 0,
                due: None,
                send_at: None,
                generation: max,
                behind: false,
            },
        );
        table.parked.borrow_mut().get_mut(3).unwrap().set_behind();
        let back = table.take(3).unwrap();
        assert_eq!((back.generation, back.behind), (max, true));
    }

    #[test]
    fn slots_grow_by_a_chunk_not_by_doubling() {
        let table = SideTable::<()>::new(vec![0], None);
        let parked = |state| Parked {
            state,
            variant: 0,
            due: None,
            send_at: None,
            generation: 1,
            behind: false,
        };
        for fd in 0..5000 {
            table.put(fd, parked(()));
        }
        assert_eq!(table.len.get(), 5000);
        let capacity = table.parked.borrow().slots.capacity();
        assert!(capacity < 5000 + 2 * GROW_BY, "{capacity} slots for 5000");
        assert!(table.take(4999).is_some());
        assert!(table.take(4999).is_none(), "taken once");
        assert!(table.take(-1).is_none() && table.take(70_000).is_none());
        assert_eq!(table.len.get(), 4999);
    }

    fn parked<S>(state: S, generation: Generation) -> Parked<S> {
        Parked {
            state,
            variant: 0,
            due: None,
            send_at: None,
            generation,
            behind: false,
        }
    }

    /// A worker of eight gets about every eighth descriptor of the process:
    /// its table holds a slot per connection parked on it, not one per
    /// descriptor up to the highest (it did: 8 slots per connection, 7 of
    /// them empty, 2,176 B per connection with a 256-byte state).
    #[test]
    fn a_table_holds_a_slot_per_connection_not_per_descriptor() {
        const WORKERS: RawFd = 8;
        const N: usize = 5_000;
        let table = SideTable::<[u8; 256]>::new(vec![0], None);
        for i in 0..N as RawFd {
            table.put(i * WORKERS + 3, parked([i as u8; 256], 1));
        }
        let per_connection = table.held_bytes() / N;
        // The slot (272 B) once, 4 B of index per descriptor (8 of them),
        // and the growth step's slack: ~320 B, where it was 2,176.
        let slot = SideTable::<[u8; 256]>::slot_bytes();
        assert!(
            per_connection < slot + 4 * WORKERS as usize + 32,
            "{per_connection} B per parked connection with {WORKERS} workers"
        );
        for i in (0..N as RawFd).rev() {
            let back = table.take(i * WORKERS + 3).expect("parked");
            assert_eq!(back.state, [i as u8; 256]);
        }
    }

    /// Once the connections of a peak have left (closed, or woken), the
    /// table gives their room back: all of it when none is left, and most
    /// of it when a few are (it kept an array sized for the peak for the
    /// life of the worker).
    #[test]
    fn a_table_gives_back_the_room_of_a_peak() {
        let table = SideTable::<u64>::new(vec![0], None);
        for fd in 0..20_000 {
            table.put(fd, parked(fd as u64, 1));
        }
        let peak = table.held_bytes();
        assert!(peak >= 20_000 * 28, "{peak} B for 20,000");
        // The oldest 500 stay: low descriptors, so the index keeps its length.
        for fd in 500..20_000 {
            assert_eq!(table.take(fd).map(|p| p.state), Some(fd as u64));
        }
        let left = table.held_bytes();
        assert!(
            left * 4 < peak,
            "{left} B of {peak} B held for 500 of 20,000"
        );
        for fd in 0..500 {
            assert_eq!(table.take(fd).map(|p| p.state), Some(fd as u64));
        }
        assert_eq!(table.held_bytes(), 0, "empty, it holds nothing");
        assert_eq!((table.len(), ParkedSet::slots(&table)), (0, 0));
        // The newest 500 stay: the slab compacts, the index keeps its length.
        for fd in 0..20_000 {
            table.put(fd, parked(fd as u64, 1));
        }
        for fd in 0..19_500 {
            assert_eq!(table.take(fd).map(|p| p.state), Some(fd as u64));
        }
        let slots = table.parked.borrow().slots.capacity();
        assert!(slots < 2 * GROW_BY, "{slots} slots for 500");
        assert_eq!(ParkedSet::slots(&table), 20_000);
        for fd in 19_500..20_000 {
            assert_eq!(table.generation(fd), Some(1));
            assert_eq!(table.take(fd).map(|p| p.state), Some(fd as u64));
        }
        assert_eq!(table.held_bytes(), 0);
    }

    /// Random parks, wake-ups, pushes' look-ups and re-parks agree with a
    /// map of what is parked where, through growth, compaction and the
    /// index's shrinking tail.
    #[test]
    fn the_slab_agrees_with_a_map() {
        let table = SideTable::<u64>::new(vec![0], None);
        let mut model = std::collections::HashMap::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..40_000u64 {
            // Phases: filling up, then draining, so the slab compacts.
            let span = if (round / 10_000) % 2 == 0 {
                6_000
            } else {
                300
            };
            let fd = (next() % 6_000) as RawFd;
            let generation = next() & 0xffff;
            if next() % 3 != 0 && (fd as u64) < span && !model.contains_key(&fd) {
                table.put(fd, parked(generation, generation));
                model.insert(fd, generation);
            } else {
                let back = table.take(fd).map(|p| (p.state, p.generation));
                assert_eq!(back, model.remove(&fd).map(|g| (g, g)), "fd {fd}");
            }
            let probe = (next() % 6_100) as RawFd;
            assert_eq!(table.generation(probe), model.get(&probe).copied());
            assert_eq!(table.len(), model.len());
            let end = model.keys().max().map_or(0, |&fd| fd as usize + 1);
            assert_eq!(ParkedSet::slots(&table), end);
        }
    }

    /// A socket whose send buffer is full (its peer, returned, reads
    /// nothing): a non-blocking stream pair, written to until `EAGAIN`.
    fn full_socket() -> (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ) {
        use std::io::Write;
        let (ours, peer) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let chunk = [0u8; 4096];
        while (&ours).write(&chunk).is_ok() {}
        (ours, peer)
    }

    /// Pushes `payload` to the connection parked at `fd` in `table`, as
    /// `if_behind` says, counted in `counters`.
    fn push_to<S>(
        table: &SideTable<S>,
        fd: RawFd,
        if_behind: IfBehind,
        counters: &MessageCounters,
    ) -> Delivered {
        let wires: Vec<Rc<dyn Wire>> = vec![Rc::new(Plain)];
        let mut msg = Encoded::new(Bytes::from_static(b"typing"), hub::Kind::Auto);
        table.deliver((fd, 1), &mut msg, &wires, (counters, if_behind))
    }

    /// A droppable push to a parked connection whose socket takes none of
    /// it is dropped, counted as droppable, and the connection stays
    /// parked, not marked behind (nothing owed, nothing to wake for);
    /// over TLS it is not even sealed (the socket is asked first). An
    /// ordinary push to the same socket marks it behind, to wake. (A
    /// droppable one marked it behind too, and woke it: session 48.)
    #[test]
    fn a_droppable_push_to_a_full_parked_socket_is_dropped_and_it_stays_parked() {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::Relaxed;
        let (ours, _peer) = full_socket();
        let fd = ours.as_raw_fd();
        let sealed = Rc::new(Cell::new(0));
        let seals = sealed.clone();
        let tls: SendParked = Rc::new(move |fd, bytes: &Bytes| {
            seals.set(seals.get() + 1);
            Pushed::of(hub::send_all_now(fd, bytes), bytes)
        });
        for send in [None, Some(tls)] {
            let over_tls = send.is_some();
            let table = SideTable::<()>::new(vec![0], send);
            table.put(fd, parked((), 1));
            let counters = MessageCounters::default();
            for _ in 0..3 {
                let delivered = push_to(&table, fd, IfBehind::Drop, &counters);
                assert_eq!(delivered, Delivered::Dropped, "over TLS: {over_tls}");
            }
            assert_eq!(counters.queue_drops_droppable.load(Relaxed), 3);
            assert_eq!(counters.queue_drops.load(Relaxed), 0);
            assert_eq!(counters.queue_drops_slow_consumer.load(Relaxed), 0);
            assert_eq!(sealed.get(), 0, "nothing sealed for a full socket");
            let still = table.take(fd).expect("still parked");
            assert!(!still.behind, "not marked behind: nothing to wake for");
            table.put(fd, parked((), 1));
            let ordinary = push_to(&table, fd, IfBehind::Close, &counters);
            assert!(
                matches!(ordinary, Delivered::Overflowed(..)),
                "{ordinary:?}"
            );
            assert!(table.take(fd).expect("parked").behind);
            sealed.set(0);
        }
    }

    /// A droppable push a parked socket has room for goes, as any push.
    #[test]
    fn a_droppable_push_a_parked_socket_takes_goes() {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::Relaxed;
        let (ours, _peer) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let table = SideTable::<()>::new(vec![0], None);
        table.put(ours.as_raw_fd(), parked((), 1));
        let counters = MessageCounters::default();
        let delivered = push_to(&table, ours.as_raw_fd(), IfBehind::Drop, &counters);
        assert_eq!(delivered, Delivered::Sent);
        assert_eq!(counters.pushes.load(Relaxed), 1);
        assert_eq!(counters.queue_drops_droppable.load(Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timers_survive_packing() {
        let table = SideTable::<u8>::new(vec![0], None);
        tokio::time::advance(Duration::from_secs(3)).await;
        let now = tokio::time::Instant::now();
        for at in [
            None,
            Some(now),
            Some(now + Duration::from_millis(1234)),
            Some(now - Duration::from_millis(500)),
            Some(now + Duration::from_secs(20 * 24 * 3600)),
        ] {
            table.put(
                7,
                Parked {
                    state: 1,
                    variant: 3,
                    due: at,
                    send_at: None,
                    generation: 9,
                    behind: false,
                },
            );
            let back = table.take(7).unwrap();
            assert_eq!((back.state, back.variant, back.send_at), (1, 3, None));
            assert_eq!(back.due, at, "{at:?}");
        }
        // Far ahead is clamped, not wrapped into the past.
        table.put(
            7,
            Parked {
                state: 0,
                variant: 0,
                due: Some(now + Duration::from_secs(400 * 24 * 3600)),
                send_at: None,
                generation: 9,
                behind: false,
            },
        );
        assert_eq!(table.take(7).unwrap().due, Some(now + MAX_TIMER_AHEAD));
    }
}
