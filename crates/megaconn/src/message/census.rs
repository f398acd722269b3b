//! How a worker's message connections are counted
//! (`megaconn_message_connections{protocol}`,
//! [`ServerHandle::message_connections`](crate::ServerHandle::message_connections):
//! what a broadcast reaches, and what the drain counts): each connection
//! once, from its registration to its close, the count moving with it as it
//! parks and wakes, never dropped at one step and taken again at a later one.
//! (One exception, on purpose: with no hub an awake connection is not
//! registered for pushes, so it is counted only while parked.)
//!
//! A message connection is in one of three places, and its count is where
//! it is:
//!
//! ```text
//!   awake (registered for pushes, `Local::awake`)
//!        │ SideTable::put: the count moves to the table (the awake
//!        ▼ entry goes then, not when the task drops its guard after)
//!   parked (a side table's slot)
//!        │ SideTable::take: woken, closed by the lot, or handed over
//!        ▼ (the count stays, here)
//!   waking ([`Waking`]) ──► awake again (`Local::awake`), parked again
//!                           (a hand-over that did not move it), or
//!                           closed (`Local::closed`): the one -1
//! ```
//!
//! (The table took its count out when the connection left it, and
//! `Local::awake` put one back when the woken task registered: between the
//! two, the connection was neither parked nor awake and counted nowhere. A
//! reader on another thread saw the gauge dip, `[0, 2, 1]` for `[1, 2, 1]`
//! in session 56's CI. At a park the table counted it before the awake
//! guard let go of its own: a peak of one too many.)
//!
//! [`Waking`] holds the connections between a side table and their next
//! place: one at a time almost always (a wake takes the state and registers
//! in the same poll), so the one slot serves it without hashing; the map is
//! for those that wait for something in between (a woken connection behind
//! on a push writes the rest before it closes).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;

use crate::message::hub::{ConnectionId, Generation};

/// A connection taken out of a side table, counted still, under its
/// protocol (`MessageProtocol`'s index; `None`: a table of no protocol).
type Entry = (RawFd, Generation, Option<usize>);

/// The room the map keeps when it empties: a burst of closes behind on a
/// push (thousands at once) gives the rest back, a few do not free and
/// allocate it again each time.
const KEEP: usize = 64;

/// Connections out of a side table and not yet awake or closed (see the
/// module doc), by descriptor and generation.
#[derive(Default)]
pub(crate) struct Waking {
    /// The usual one.
    one: Cell<Option<Entry>>,
    /// The others, by descriptor.
    more: RefCell<HashMap<RawFd, (Generation, Option<usize>)>>,
}

impl Waking {
    /// Connection `id` of `protocol` left its side table; what was kept for
    /// another connection on its descriptor before (one that never came
    /// back nor closed, its count to take out), if anything.
    pub(crate) fn put(&self, id: ConnectionId, protocol: Option<usize>) -> Option<Option<usize>> {
        let stale = self.take_descriptor(id.fd());
        match self.one.get() {
            None => self.one.set(Some((id.fd(), id.generation(), protocol))),
            Some(_) => {
                self.more
                    .borrow_mut()
                    .insert(id.fd(), (id.generation(), protocol));
            }
        }
        stale.map(|(_, protocol)| protocol)
    }

    /// Connection `id`'s protocol, taken, if it is waking.
    pub(crate) fn take(&self, id: ConnectionId) -> Option<Option<usize>> {
        match self.one.get() {
            Some((fd, g, protocol)) if fd == id.fd() && g == id.generation() => {
                self.one.set(None);
                Some(protocol)
            }
            _ => {
                let mut more = self.more.borrow_mut();
                if more.is_empty() {
                    return None;
                }
                let taken = match more.get(&id.fd()) {
                    Some((g, _)) if *g == id.generation() => more.remove(&id.fd()),
                    _ => None,
                };
                shrink(&mut more);
                taken.map(|(_, protocol)| protocol)
            }
        }
    }

    /// Whatever connection is waking on descriptor `fd`, taken: its
    /// generation and protocol.
    pub(crate) fn take_descriptor(&self, fd: RawFd) -> Option<(Generation, Option<usize>)> {
        if let Some((at, g, protocol)) = self.one.get() {
            if at == fd {
                self.one.set(None);
                return Some((g, protocol));
            }
        }
        let mut more = self.more.borrow_mut();
        if more.is_empty() {
            return None;
        }
        let taken = more.remove(&fd);
        shrink(&mut more);
        taken
    }
}

/// Gives back the map's room once a quarter full, down to [`KEEP`].
fn shrink(more: &mut HashMap<RawFd, (Generation, Option<usize>)>) {
    if more.capacity() > KEEP && more.len() * 4 < more.capacity() {
        more.shrink_to((more.len() * 2).max(KEEP));
    }
}
