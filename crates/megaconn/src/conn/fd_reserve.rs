//! The descriptors a server's accepts leave free: the last few below the
//! open-file limit (`Builder::fd_reserve`).
//!
//! A process out of descriptors fails every accept with `EMFILE`, its
//! admin listener's too: `/metrics`, which would show the operator what is
//! happening, went unanswered for as long as the flood lasted. So the main
//! listeners stop [`DEFAULT_FD_RESERVE`](crate::DEFAULT_FD_RESERVE) short
//! of the limit, and whatever else the process opens (the admin listener's
//! connections, built with `fd_reserve(0)`, a log file, a DNS lookup, a
//! certificate re-read) still finds room.
//!
//! Checked on the descriptor an accept returns, not counted: the kernel
//! hands out the lowest free number, so a connection that lands at or
//! above `limit - reserve` means every number below it is taken. One
//! comparison per accept, and nothing per connection. A connection that
//! lands there is closed at once (as nginx closes one it has no room for)
//! and counted and logged as an `EMFILE`, with the same back-off: the
//! process is out of descriptors but for its reserve. (Closing it, not
//! keeping it queued: the accept took it off the queue already.)
//!
//! The reserve is at most a quarter of the descriptors the process had
//! free when its acceptor started: under a small open-file limit (`ulimit
//! -n 48` with two workers leaves ~14 free), a full reserve would lie below
//! the descriptors already open, and every accept would land in it.

use std::os::fd::RawFd;

/// Where one acceptor's connections stop: descriptor numbers from `line`
/// up are the reserve's.
#[derive(Debug)]
pub(crate) struct FdLine {
    reserve: usize,
    /// The descriptors open when the acceptor started: what the process
    /// had before any connection.
    base: usize,
    line: usize,
}

impl FdLine {
    /// `reserve` descriptors below the open-file limit now (at most a
    /// quarter of those still free).
    pub(crate) fn new(reserve: usize) -> FdLine {
        let base = if reserve == 0 { 0 } else { open_now() };
        FdLine {
            reserve,
            base,
            line: line(reserve, base),
        }
    }

    /// Whether an accepted connection on `fd` is in the reserve. The limit
    /// is read again first (`prlimit` may have raised it since), only when
    /// the number crossed the line as last read.
    pub(crate) fn crossed(&mut self, fd: RawFd) -> bool {
        let fd = usize::try_from(fd).unwrap_or(usize::MAX);
        if fd < self.line {
            return false;
        }
        self.line = line(self.reserve, self.base);
        fd >= self.line
    }
}

/// The first descriptor of the reserve: `usize::MAX` (never crossed) with
/// no reserve, or when the limit cannot be read. `base`: see
/// [`FdLine::base`].
fn line(reserve: usize, base: usize) -> usize {
    if reserve == 0 {
        return usize::MAX;
    }
    crate::conn::config::open_file_limit().map_or(usize::MAX, |limit| {
        limit.saturating_sub(reserve.min(limit.saturating_sub(base) / 4))
    })
}

/// How many descriptors the process has open now (`/proc/self/fd`; without
/// it, the lowest free number, which the kernel hands to the next open);
/// 0 if neither can be read (the reserve is then whole).
fn open_now() -> usize {
    use std::os::fd::AsRawFd;
    std::fs::read_dir("/proc/self/fd").map_or_else(
        |_| {
            std::fs::File::open("/dev/null")
                .map_or(0, |f| usize::try_from(f.as_raw_fd()).unwrap_or(0))
        },
        |entries| entries.count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_descriptors_below_the_limit_are_the_reserve() {
        let limit = crate::conn::config::open_file_limit().expect("RLIMIT_NOFILE reads");
        let mut line = FdLine::new(8);
        assert!(!line.crossed(0));
        assert!(!line.crossed((limit - 9) as RawFd));
        assert!(line.crossed((limit - 8) as RawFd));
        assert!(line.crossed((limit - 1) as RawFd));
        let mut none = FdLine::new(0);
        assert!(!none.crossed((limit - 1) as RawFd), "0: no reserve");
    }

    /// With few descriptors free, the reserve shrinks to a quarter of them:
    /// it never takes the room the connections would have had.
    #[test]
    fn the_reserve_is_at_most_a_quarter_of_the_free_descriptors() {
        let limit = crate::conn::config::open_file_limit().expect("RLIMIT_NOFILE reads");
        // As if 40 descriptors were free when the acceptor started.
        let mut line = FdLine {
            reserve: 32,
            base: limit - 40,
            line: 0,
        };
        assert!(!line.crossed((limit - 11) as RawFd));
        assert!(line.crossed((limit - 10) as RawFd));
    }
}
