//! The topic audiences of `serve --processes`, shared by its worker
//! processes: one count-min table ([`megaconn::share_audience`]) in a
//! shared memory block, a slot of [`megaconn::AUDIENCE_COUNTERS`] per
//! worker process.
//!
//! A publish in one worker process reaches the subscribers of every one
//! (fanout.rs), so it is charged by all of them
//! ([`megaconn::PublishRate::allow_publish`], the demo's `PUB`): with each
//! process counting only its own, a publisher was charged about 1/P of
//! what it reached. The supervisor creates the block (a `memfd`, inherited
//! by its children, as the counter block of `shared_stats.rs` is) and
//! draws the hash's keys, naming both in the environment ([`FD_ENV`],
//! [`KEYS_ENV`]); each worker process maps the block and counts in its
//! slot ([`join`]) before it serves. A worker process that dies with
//! subscriptions (killed: no server stop took them out) leaves its counts
//! in its slot; the supervisor zeroes the slot ([`SharedAudience::retire`])
//! before it starts the next process in it, so the counts never drift.

use std::fs::File;
use std::hash::BuildHasher as _;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;

use anyhow::Context as _;

/// Environment variable naming the inherited block in a worker process.
pub const FD_ENV: &str = "MEGACONN_AUDIENCE_FD";

/// Environment variable carrying the hash's keys to a worker process (two
/// hexadecimal words, `k0:k1`).
pub const KEYS_ENV: &str = "MEGACONN_AUDIENCE_KEYS";

/// Bytes of one worker process's slot.
const SLOT_BYTES: usize = megaconn::AUDIENCE_COUNTERS * std::mem::size_of::<AtomicU32>();

/// The supervisor's block: its descriptor (inherited by the worker
/// processes) and the keys it hands them. The supervisor never maps it.
#[derive(Debug)]
pub struct SharedAudience {
    fd: OwnedFd,
    keys: (u64, u64),
}

impl SharedAudience {
    /// A zeroed block of `slots` slots (256 KiB each, in pages the kernel
    /// gives as they are written) and fresh random keys.
    pub fn create(slots: usize) -> io::Result<SharedAudience> {
        let fd = crate::shm::memfd(c"megaconn-audience", slots * SLOT_BYTES)?;
        // Two random words (`RandomState` is seeded from the OS): which
        // names share counters is no peer's to choose.
        let random = std::collections::hash_map::RandomState::new();
        let keys = (random.hash_one(0u8), random.hash_one(1u8));
        Ok(SharedAudience { fd, keys })
    }

    /// The descriptor children inherit ([`FD_ENV`]).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The keys, as [`KEYS_ENV`] carries them.
    pub fn keys_env(&self) -> String {
        format!("{:x}:{:x}", self.keys.0, self.keys.1)
    }

    /// Zeroes slot `slot`, whose worker process exited (killed, it left
    /// its subscriptions counted): the pages go back to the kernel and
    /// read as zeros in every mapping.
    pub fn retire(&self, slot: usize) -> io::Result<()> {
        let (offset, len) = (
            (slot * SLOT_BYTES) as libc::off_t,
            SLOT_BYTES as libc::off_t,
        );
        // SAFETY: integers and a descriptor we own; punching a hole in a
        // memfd only zeroes its pages (its size stays). The process that
        // wrote there is gone; the others only read the slot, atomically.
        let punched = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if punched != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// In a worker process, before it serves: maps the block its supervisor
/// passed down and counts this process's subscriptions in slot `slot`
/// ([`megaconn::share_audience`]). Without [`FD_ENV`] (a supervisor of
/// before the shared table) the process counts its own.
pub fn join(slot: usize) -> anyhow::Result<()> {
    let Ok(fd) = std::env::var(FD_ENV) else {
        return Ok(());
    };
    let fd: RawFd = fd.parse().context("a bad audience block descriptor")?;
    let keys = std::env::var(KEYS_ENV).ok();
    let keys = keys
        .as_deref()
        .and_then(|k| k.split_once(':'))
        .and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .context("no keys for the shared audience block")?;
    // SAFETY: the supervisor opened this descriptor for us and nothing else
    // in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = usize::try_from(File::from(fd.try_clone()?).metadata()?.len())?;
    let table = map(&fd, len).context("cannot map the shared audience block")?;
    megaconn::share_audience(table, slot, keys).context("cannot share the audience table")?;
    // The mapping stays when the descriptor closes.
    Ok(())
}

/// Maps `len` bytes of `fd`, shared, for the rest of the process's life.
fn map(fd: &OwnedFd, len: usize) -> io::Result<&'static [AtomicU32]> {
    if len == 0 || len % SLOT_BYTES != 0 {
        return Err(io::Error::other(format!(
            "an audience block of {len} bytes is no whole number of slots"
        )));
    }
    let ptr = crate::shm::map(fd, len)?;
    // SAFETY: `len` bytes at `ptr` are mapped, readable and writable, and
    // never unmapped (the slice lives as long as the process); page-aligned,
    // so aligned for `AtomicU32`, which has `u32`'s size and layout; the
    // memfd's bytes start as zeros (valid `u32`s) and are only ever touched
    // through atomics, by this process and the others mapping the block
    // (the supervisor only punches holes in the slot of a process that is
    // gone, which other processes' loads see as zeros): no non-atomic
    // access races with them.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU32>(), len / 4) })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::Ordering::Relaxed;

    /// Two mappings of one block (two processes' view, here in one) see
    /// each other's writes; a retired slot reads zeros in both and its
    /// neighbour keeps its counts.
    #[test]
    fn mappings_share_counts_and_a_retired_slot_reads_zero() {
        let block = SharedAudience::create(2).unwrap();
        let len = 2 * SLOT_BYTES;
        let (one, two) = (map(&block.fd, len).unwrap(), map(&block.fd, len).unwrap());
        let other_slot = megaconn::AUDIENCE_COUNTERS + 5;
        one[5].store(7, Relaxed);
        one[other_slot].store(9, Relaxed);
        assert_eq!(
            (two[5].load(Relaxed), two[other_slot].load(Relaxed)),
            (7, 9)
        );
        block.retire(1).unwrap();
        assert_eq!(
            (one[other_slot].load(Relaxed), two[other_slot].load(Relaxed)),
            (0, 0)
        );
        assert_eq!(two[5].load(Relaxed), 7, "slot 0 kept its counts");
        assert!(map(&block.fd, SLOT_BYTES + 4).is_err());
        let keys = block.keys_env();
        assert!(keys.split_once(':').is_some(), "{keys}");
    }
}
