//! `Stuck`: parked connections that droppable pushes find behind, and
//! when being behind makes one a slow consumer.
//!
//! # Why a parked connection behind is closed at all
//!
//! A droppable push to a parked connection whose socket is behind is
//! dropped, and the connection is neither woken nor closed (session 48):
//! waking it for a push it may miss would turn a flood of presence blips
//! into a flood of wake-ups. But then nothing bounds a peer that stopped
//! reading: an awake connection's write bound (`write_timeout`, else the
//! heartbeat timeout or `write_stall_timeout`) runs only while a write of
//! ours waits, and a parked one has none. With a heartbeat timeout set (and
//! so no `TCP_USER_TIMEOUT`, `conn/socket.rs`) a peer that keeps sending
//! its heartbeats and never reads stayed open for good, its send buffer
//! full, every push to it dropped; without one the kernel cut it after
//! twice the bound and a second (`TCP_USER_TIMEOUT`), as `Io(TimedOut)`,
//! a cause that says nothing of what happened.
//!
//! What a production server should do is what it does to an awake peer
//! that reads nothing: close it as a slow consumer once it has been behind,
//! taking none of our bytes, for the write bound. So the first droppable
//! push dropped for a parked connection records when it was found behind
//! and how many bytes its peer had acknowledged then (`TCP_INFO`'s
//! `tcpi_bytes_acked`, as an awake write's stall bound asks, `conn/io.rs`);
//! the first drop once the bound has passed asks again: a count that grew
//! saw progress (the peer read and its TCP took more: a slow reader, not a
//! stuck one) and starts the wait again; one that did not closes it. A push
//! its socket took whole forgets it (it caught up), and so does its close;
//! a wake does not (merge review, session 49: a peer that sent a frame now
//! and then, woken by each and parked again, started a fresh wait at each
//! and was never closed; the acknowledged count only grows, so the bytes
//! an awake turn wrote cannot pass for the peer's reading unless it read
//! them). A drop that finds it behind for the bound or longer with no
//! progress closes it:
//! `CloseReason::SlowConsumer`, counted with the closes, logged with its
//! id, peer and how long it was behind (`Local::dropped_behind`), and the
//! pushes after it count as a slow consumer's (it is woken to close as one
//! a push found behind is, `wake::resume`).
//!
//! At its next turn, not by a sweep of the lot: a connection that nothing
//! is pushed to costs what any parked one costs, whether its peer reads or
//! not, and the kernel's bound (or its heartbeat) ends it if its peer is
//! gone; it is the pushes dropped for it that are lost. A drop costs one
//! look-up in a map that holds only the parked connections found behind
//! (empty while every peer keeps up), and one `getsockopt` when found
//! behind and one each time the bound passes (not one per drop: a
//! broadcast flood to peers behind asks the kernel about each once a
//! bound), so a parked connection's slot stays 16 bytes. A peer is closed
//! one to two bounds after it last took a byte. A socket that is no TCP
//! one (no count) is closed at the bound unless a push goes whole.
//!
//! The bound is the one a write without a heartbeat gets
//! (`write_timeout`, else `write_stall_timeout`): the heartbeat timeout
//! bounds a parked peer that stops sending already (its deadline in the
//! lot), and this is for one that keeps sending and stops reading. Off
//! (`None` for both) nothing is closed, as an awake write is unbounded then.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::io::{bytes_acked, WriteLimit};
use crate::message::hub::{ConnectionId, Generation};

/// The parked connections a droppable push found behind, by descriptor,
/// since when and how many bytes their socket held then (see the module
/// doc); and the bound past which one is closed.
pub(crate) struct Stuck {
    /// How long a parked connection may be behind without progress
    /// (`None`: for ever).
    bound: Option<Duration>,
    /// The setting `bound` comes from, for the log line.
    setting: &'static str,
    behind: RefCell<HashMap<RawFd, (Generation, Since)>>,
}

/// When a parked connection was found behind (or last seen progress), and
/// how many bytes its peer had acknowledged then (`None`: no TCP socket).
#[derive(Debug, Clone, Copy)]
struct Since {
    at: Instant,
    acked: Option<u64>,
}

impl Stuck {
    /// The bound of `limit` (the write bound without a heartbeat).
    pub(crate) fn new(limit: WriteLimit) -> Stuck {
        Stuck {
            bound: limit.timeout,
            setting: limit.setting,
            behind: RefCell::default(),
        }
    }

    /// The setting the bound comes from (for the log line).
    pub(crate) fn setting(&self) -> &'static str {
        self.setting
    }

    /// A droppable push was dropped for parked connection `id`, its socket
    /// behind, at `now`: how long it has been behind with no progress, once
    /// that is the bound or longer (it is to be closed as a slow consumer,
    /// and is forgotten here); `None` while it is not.
    pub(crate) fn dropped(&self, id: ConnectionId, now: Instant) -> Option<Duration> {
        let bound = self.bound?;
        let mut behind = self.behind.borrow_mut();
        let since = match behind.get_mut(&id.fd()) {
            Some((generation, since)) if *generation == id.generation() => since,
            // First found behind (or its descriptor's last connection was).
            _ => {
                let fresh = Since {
                    at: now,
                    acked: bytes_acked(id.fd()),
                };
                behind.insert(id.fd(), (id.generation(), fresh));
                return None;
            }
        };
        let behind_for = now.saturating_duration_since(since.at);
        if behind_for < bound {
            return None;
        }
        // The bound passed: did the peer take any of our bytes since?
        let acked = bytes_acked(id.fd());
        if let (Some(before), Some(after)) = (since.acked, acked) {
            if after > before {
                *since = Since { at: now, acked };
                return None;
            }
        }
        drop(behind);
        self.forget(id);
        Some(behind_for)
    }

    /// Connection `id` caught up (its socket took a push whole) or closed:
    /// forgotten (not when it merely woke: see the module doc). The map gives its room back once a quarter full,
    /// as the worker's other maps of parked connections do. Costs a branch
    /// while no connection is behind.
    pub(crate) fn forget(&self, id: ConnectionId) {
        let mut behind = self.behind.borrow_mut();
        if behind.is_empty() {
            return;
        }
        if behind
            .get(&id.fd())
            .is_some_and(|(g, _)| *g == id.generation())
        {
            behind.remove(&id.fd());
        }
        if behind.len() * 4 < behind.capacity() {
            let room = behind.len() * 2;
            behind.shrink_to(room);
        }
    }

    /// How many connections are held as behind (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.behind.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn stuck(bound: u64) -> Stuck {
        Stuck::new(WriteLimit::resolve(
            None,
            None,
            Some(Duration::from_millis(bound)),
        ))
    }

    fn id(fd: RawFd, generation: Generation) -> ConnectionId {
        ConnectionId::new(0, fd, generation)
    }

    /// Behind for the bound with no progress: to be closed, then
    /// forgotten; a push that went in between, or another connection on
    /// the descriptor, starts again.
    #[test]
    fn behind_for_the_bound_without_progress_is_stuck() {
        let stuck = stuck(1000);
        let t0 = Instant::now();
        let (a, b) = (id(-1, 5), id(-1, 6));
        assert_eq!(stuck.dropped(a, t0), None);
        assert_eq!(stuck.dropped(a, t0 + Duration::from_millis(999)), None);
        let late = t0 + Duration::from_millis(1500);
        assert_eq!(stuck.dropped(a, late), Some(Duration::from_millis(1500)));
        assert_eq!(stuck.len(), 0, "forgotten once closed");
        // Caught up in between: it starts again.
        assert_eq!(stuck.dropped(a, t0), None);
        stuck.forget(a);
        assert_eq!(stuck.dropped(a, late), None);
        // Another connection on the descriptor starts its own.
        assert_eq!(stuck.dropped(b, t0 + Duration::from_secs(9)), None);
        assert_eq!(stuck.len(), 1);
    }

    /// With no bound (`write_stall_timeout` and `write_timeout` off)
    /// nothing is kept and nothing is closed.
    #[test]
    fn no_bound_keeps_nothing() {
        let stuck = Stuck::new(WriteLimit::UNBOUNDED);
        let t0 = Instant::now();
        assert_eq!(stuck.dropped(id(3, 1), t0), None);
        assert_eq!(
            stuck.dropped(id(3, 1), t0 + Duration::from_secs(3600)),
            None
        );
        assert_eq!(stuck.len(), 0);
    }

    /// A socket whose peer read some of what it held shows progress: the
    /// wait starts again.
    #[cfg(target_os = "linux")]
    #[test]
    fn progress_on_the_socket_starts_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        // Fill until the socket refuses more: bytes held unacknowledged.
        let chunk = [7u8; 64 * 1024];
        let mut written = 0u64;
        while let Ok(n) = ours.write(&chunk) {
            written += n as u64;
        }
        let fd = ours.as_raw_fd();
        assert!(bytes_acked(fd).unwrap() < written);
        let stuck = stuck(1000);
        let t0 = Instant::now();
        assert_eq!(stuck.dropped(id(fd, 1), t0), None);
        // The peer reads it all; the kernel sends the rest on, until every
        // byte is acknowledged (then the count holds still).
        peer.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while bytes_acked(fd).unwrap() < written {
            assert!(std::time::Instant::now() < deadline, "never acknowledged");
            let _ = std::io::Read::read(&mut peer, &mut sink);
        }
        let late = t0 + Duration::from_millis(1500);
        assert_eq!(stuck.dropped(id(fd, 1), late), None, "progress");
        assert_eq!(
            stuck.dropped(id(fd, 1), late + Duration::from_millis(1000)),
            Some(Duration::from_millis(1000))
        );
    }
}
