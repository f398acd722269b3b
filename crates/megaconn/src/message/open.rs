//! Which message connections are open, readable from any thread: for each
//! descriptor, the generation of the message connection that holds it (its
//! low 32 bits), so that [`Hub::send`](crate::Hub::send) can tell at the
//! call that a [`ConnectionId`] names a connection that has closed
//! ([`HubError::Closed`](crate::HubError::Closed)) without asking its
//! worker (whose maps are its own, and whose answer would be a round trip).
//!
//! A descriptor names one open socket of the process at a time, so one
//! table serves every worker of every server in the process: a worker
//! writes its connection's generation when it issues its id
//! (`Local::new_id`) and takes it out when the protocol reports the close
//! (`Local::closed`, before the handler's `on_close_with_id`), only if it
//! is still its own (the descriptor may have been closed and taken by a
//! connection of another worker meanwhile, which wrote its own). A send
//! reads one atomic: the id's connection is closed if its descriptor holds
//! another generation, or none.
//!
//! Only servers with a hub write here (without one nothing can send), and
//! only sockets (a caller's own transport, descriptor -1, is never known
//! closed). 4 B per descriptor, in chunks of 4,096 descriptors (16 KiB)
//! made as the first connection with a descriptor in them opens, kept for
//! the process's life: 4 MB at a million connections, against 8 for the
//! whole generation. With 32 bits, a stale id reads open only while a
//! newer connection holds its descriptor with the same low 32 bits of
//! generation, 2^32 connections later (then its pushes are dropped by the
//! worker, which compares all 46 bits, as before); it never reads closed
//! while its connection is open.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::message::hub::{ConnectionId, Generation};

/// Descriptors per chunk: 4,096 (16 KiB of generations).
const CHUNK: usize = 1 << 12;

/// Chunks in the directory: descriptors below 2^28 are tracked (the
/// kernel's `nr_open` is 2^20 by default; a descriptor past 2^28 is never
/// known closed). The directory is 1 MiB of zeroed statics (16 B an
/// entry) whose pages are touched only as chunks are made (a page per 256
/// chunks, a million descriptors).
const CHUNKS: usize = 1 << 16;

type Chunk = [AtomicU32; CHUNK];

static TABLE: [OnceLock<Box<Chunk>>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];

/// What the table holds for `generation`: its low 32 bits, never 0 (0 is
/// "no connection"): a generation whose low bits are 0 reads as 1.
fn tag(generation: Generation) -> u32 {
    (generation as u32).max(1)
}

/// The slot of descriptor `fd`, if it is tracked; made if `make`.
fn slot(fd: RawFd, make: bool) -> Option<&'static AtomicU32> {
    let fd = usize::try_from(fd).ok()?;
    let cell = TABLE.get(fd / CHUNK)?;
    let chunk = match make {
        true => cell.get_or_init(|| Box::new([const { AtomicU32::new(0) }; CHUNK])),
        false => cell.get()?,
    };
    Some(&chunk[fd % CHUNK])
}

/// Connection `id` opened (its id was just issued).
pub(crate) fn opened(id: ConnectionId) {
    if let Some(slot) = slot(id.fd(), true) {
        slot.store(tag(id.generation()), Ordering::Release);
    }
}

/// Connection `id` closed: its descriptor holds no connection, unless
/// another has taken it since.
pub(crate) fn closed(id: ConnectionId) {
    if let Some(slot) = slot(id.fd(), false) {
        let _ = slot.compare_exchange(
            tag(id.generation()),
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

/// Whether connection `id` is known to have closed: its descriptor holds
/// another connection, or none. Never true while it is open; an id of a
/// server without a hub, which records nothing, reads closed.
pub(crate) fn is_closed(id: ConnectionId) -> bool {
    if usize::try_from(id.fd()).is_ok_and(|fd| fd / CHUNK >= CHUNKS) || id.fd() < 0 {
        return false;
    }
    slot(id.fd(), false).is_none_or(|slot| slot.load(Ordering::Acquire) != tag(id.generation()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory entry is 16 B, as the doc of [`CHUNKS`] counts.
    #[test]
    fn a_directory_entry_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<OnceLock<Box<Chunk>>>(), 16);
    }

    /// Open, closed, reused by another connection: the old id reads closed
    /// and the new one open; the old one's late close does not close the
    /// new one. Descriptors far out of the way of real sockets.
    #[test]
    fn a_descriptor_names_its_latest_connection() {
        let fd = (CHUNKS as RawFd - 1) * CHUNK as RawFd + 17;
        let old = ConnectionId::new(0, fd, 5);
        let new = ConnectionId::new(1, fd, 6);
        assert!(is_closed(old), "never opened");
        opened(old);
        assert!(!is_closed(old));
        // Closed, then its descriptor taken by a connection of another
        // worker before the close was reported.
        opened(new);
        closed(old);
        assert!(is_closed(old) && !is_closed(new));
        closed(new);
        assert!(is_closed(new));
        // Low 32 bits of 0 are kept as 1, not as "none".
        let wrapped = ConnectionId::new(0, fd, 1 << 32);
        opened(wrapped);
        assert!(!is_closed(wrapped));
        closed(wrapped);
        assert!(is_closed(wrapped));
        // Untracked descriptors are never known closed.
        assert!(!is_closed(ConnectionId::new(0, -1, 3)));
        assert!(!is_closed(ConnectionId::new(0, RawFd::MAX, 3)));
    }
}
