//! Connections the lot cannot take: served awake instead of parked.
//!
//! The slot array is reserved once, for the hard open-file limit at the
//! server's start (`slots.rs`). A descriptor can still be above it: the
//! hard limit was raised since (by a privileged `prlimit`), or the
//! reservation was refused and halved (`ulimit -v`,
//! `vm.overcommit_memory = 2`). Such a connection has no slot, so it cannot
//! park; it used to be closed when it tried, under a client that had done
//! nothing wrong. Now the lot hands it back to its worker
//! ([`Incoming::Refused`]) and it waits as a task for what would have woken
//! it parked: bytes or a hang-up, its deadline, the shutdown
//! ([`ParkingLot::stay_awake`]). Then it is served as a hot wake (it idles
//! as a task for `park_idle_after` before it tries to park again), so a
//! busy connection above the array is an ordinary task, and an idle one
//! costs a task, a registration and a timer (~1 KB) where a parked one
//! costs its 8 B slot. Each refusal counts (`park_slots` in
//! `megaconn_limit_hits_total`) and logs (rate-limited) what to do: restart
//! the server once the limit is where it should stay, or let the
//! reservation through.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{AtDeadline, Parking, ParkingLot};
use crate::conn::connection::Connection;
use crate::conn::shutdown::LocalShutdown;
use crate::conn::{Incoming, Wake};
use crate::observe::close::CloseReason;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog;
use crate::observe::stats::{incr, IdleOwn};

/// What ended a refused connection's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awoke {
    /// Bytes, or the peer's hang-up (its protocol reads which).
    Readable,
    /// Its deadline: closed as idle, or woken for its protocol's timer.
    Deadline,
    /// The worker's shutdown woke it (as it wakes idle HTTP/1.1 tasks:
    /// after the idle grace, or a few at a time with a paced drain).
    Shutdown,
}

impl ParkingLot {
    /// A connection whose descriptor has no slot: counted, logged
    /// (rate-limited), and handed back to the worker to be served awake
    /// ([`Incoming::Refused`], [`ParkingLot::stay_awake`]). Without a way
    /// back (the worker is closing), it closes as at shutdown.
    pub(super) fn refuse(&self, socket: OwnedFd, parking: Parking, conn: Connection) {
        let fd = socket.as_raw_fd();
        LimitHit::ParkSlots.count(self.stats());
        ratelog::above_park_slots(fd, self.claim.slots().cap());
        let respawn = self.respawn.borrow().clone();
        match respawn {
            Some(respawn) => respawn(Incoming::Refused { socket, parking }, conn),
            None => {
                conn.close(CloseReason::Shutdown);
                self.tell_closed(fd, parking.proto, CloseReason::Shutdown);
            }
        }
    }

    /// Serves a connection the lot refused ([`ParkingLot::refuse`]) awake:
    /// registered with the runtime, it waits for what would have woken it
    /// parked, then is served as a hot wake (a new task, through the lot's
    /// respawn), closed at its deadline (`AtDeadline::Close`, as idle), or,
    /// at shutdown, closed unless a request already waits in it (then
    /// served, as [`ParkingLot::close_parked`] does). Counted idle while it
    /// waits.
    pub(crate) async fn stay_awake(
        &self,
        socket: OwnedFd,
        parking: Parking,
        conn: Connection,
        shutdown: &LocalShutdown,
    ) {
        let fd = socket.as_raw_fd();
        // The socket comes back on failure, so that the protocol hears of
        // the close (`tell_closed`) while its descriptor is open.
        // SAFETY: an `OwnedFd` keeps its descriptor open and the same while
        // the `AsyncFd` owns it.
        let registered = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        let (awoke, socket) = match registered {
            Ok(watched) => {
                let _idle = IdleOwn::enter(&self.stats().connections_idle);
                let awoke = wait(&watched, parking, shutdown).await;
                (Ok(awoke), watched.into_inner())
            }
            Err(failed) => {
                let (socket, error) = failed.into_parts();
                ratelog::cannot_watch(&error, "cannot keep a connection awake");
                (Err(CloseReason::io(&error)), socket)
            }
        };
        let waiting = || crate::conn::sys::input_waiting(socket.as_fd());
        let wake = match awoke {
            Ok(Awoke::Readable) => Ok(Wake::Readable),
            Ok(Awoke::Deadline) if parking.at_deadline == AtDeadline::Wake => Ok(Wake::Timer),
            Ok(Awoke::Deadline) => {
                incr(&self.stats().timeouts);
                Err(CloseReason::IdleTimeout)
            }
            Ok(Awoke::Shutdown) if waiting() => Ok(Wake::Readable),
            Ok(Awoke::Shutdown) => Err(CloseReason::Shutdown),
            Err(reason) => Err(reason),
        };
        let respawn = self.respawn.borrow().clone();
        match (wake, respawn) {
            (Ok(wake), Some(respawn)) => respawn(
                Incoming::Woken {
                    socket,
                    hot: true,
                    proto: parking.proto,
                    wake,
                },
                conn,
            ),
            (Ok(_), None) => self.close_refused(fd, parking, conn, CloseReason::Shutdown),
            (Err(reason), _) => self.close_refused(fd, parking, conn, reason),
        }
    }

    /// Closes a refused connection's accounts, and tells its protocol while
    /// the descriptor (which the caller drops after) is still open.
    fn close_refused(&self, fd: i32, parking: Parking, conn: Connection, reason: CloseReason) {
        conn.close(reason);
        self.tell_closed(fd, parking.proto, reason);
    }
}

/// Waits for bytes or a hang-up on `watched`, its deadline, or the
/// shutdown, whichever comes first.
async fn wait(watched: &AsyncFd<OwnedFd>, parking: Parking, shutdown: &LocalShutdown) -> Awoke {
    // A slot among the worker's idle waiters, as an idle HTTP/1.1 task
    // keeps: the shutdown wakes them after its grace, or a few at a time.
    let mut slot = None;
    let deadline = async {
        match parking.deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let awoke = tokio::select! {
        biased;
        // An error (the socket's) is the protocol's to read.
        _ = watched.readable() => Awoke::Readable,
        () = std::future::poll_fn(|cx| {
            if shutdown.is_started() {
                return std::task::Poll::Ready(());
            }
            shutdown.watch(&mut slot, cx.waker());
            std::task::Poll::Pending
        }) => Awoke::Shutdown,
        () = deadline => Awoke::Deadline,
    };
    shutdown.unwatch(&mut slot);
    awoke
}

#[cfg(test)]
mod tests {
    //! A lot whose array is a page (512 descriptors), a real socket moved
    //! to a descriptor above it, a respawn that keeps what it is handed.

    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::rc::Rc;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::conn::limit::ConnectionLimit;
    use crate::conn::park::slots::Claim;
    use crate::conn::park::tests::{lot_on, pair};
    use crate::conn::ProtoTag;

    type Handed = Rc<RefCell<Vec<Incoming>>>;

    /// A lot on an array of one page; what its respawn is handed, and
    /// what its protocol is told closed.
    fn lot() -> (
        ParkingLot,
        ConnectionLimit,
        Handed,
        Rc<RefCell<Vec<CloseReason>>>,
    ) {
        let (lot, limit, _) = lot_on(ConnectionLimit::new(4, None), Claim::private_of(0).unwrap());
        assert_eq!(lot.claim.slots().cap(), 512);
        let handed: Handed = Rc::default();
        let keep = handed.clone();
        lot.set_respawn(Some(Rc::new(move |incoming, conn: Connection| {
            keep.borrow_mut().push(incoming);
            // The accounts go with the test's copy of the socket.
            drop(conn.park());
        })));
        let told: Rc<RefCell<Vec<CloseReason>>> = Rc::default();
        let tell = told.clone();
        lot.set_on_close(Some(Rc::new(move |_, tag, reason| {
            assert_eq!(tag, ProtoTag(3));
            tell.borrow_mut().push(reason);
        })));
        (lot, limit, handed, told)
    }

    /// A server socket on a descriptor above the lot's array, its client.
    fn high_pair() -> (OwnedFd, std::net::TcpStream) {
        let (low, client) = pair();
        // SAFETY: fcntl(2) on an open descriptor; the new one is owned at once.
        let high = unsafe { libc::fcntl(low.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 600) };
        assert!(high >= 600, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        (
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) },
            client,
        )
    }

    /// Parks `socket` (refused: above the array) and returns what the lot
    /// handed back.
    fn refused(
        lot: &ParkingLot,
        limit: &ConnectionLimit,
        handed: &Handed,
        socket: OwnedFd,
        at_deadline: AtDeadline,
        deadline: Option<Instant>,
    ) -> (OwnedFd, Parking) {
        let conn = Connection::open(limit.try_acquire().unwrap(), lot.stats().clone(), None);
        let parking = Parking::of(deadline, false, true, ProtoTag(3), at_deadline);
        lot.park(socket, parking, conn);
        assert_eq!(lot.len(), 0, "not parked");
        match handed.borrow_mut().pop() {
            Some(Incoming::Refused { socket, parking }) => (socket, parking),
            other => panic!("handed back {other:?}"),
        }
    }

    fn conn(lot: &ParkingLot, limit: &ConnectionLimit) -> Connection {
        Connection::open(limit.try_acquire().unwrap(), lot.stats().clone(), None)
    }

    /// Refused, counted, and handed back; awake, bytes wake it as a hot
    /// wake of its protocol. (It was closed.)
    #[tokio::test]
    async fn a_descriptor_above_the_array_is_handed_back_and_woken_by_bytes() {
        let (lot, limit, handed, told) = lot();
        let (socket, mut client) = high_pair();
        let fd = socket.as_raw_fd();
        let (socket, parking) = refused(&lot, &limit, &handed, socket, AtDeadline::Close, None);
        assert_eq!(socket.as_raw_fd(), fd);
        assert_eq!(
            lot.stats().limit_hits[LimitHit::ParkSlots as usize].load(Relaxed),
            1
        );
        let shutdown = LocalShutdown::default();
        client.write_all(b"GET").unwrap();
        lot.stay_awake(socket, parking, conn(&lot, &limit), &shutdown)
            .await;
        match handed.borrow_mut().pop() {
            Some(Incoming::Woken {
                socket,
                hot: true,
                proto: ProtoTag(3),
                wake: Wake::Readable,
            }) => assert_eq!(socket.as_raw_fd(), fd),
            other => panic!("handed back {other:?}"),
        }
        assert!(told.borrow().is_empty());
        assert_eq!(lot.stats().connections_idle.load(Relaxed), 0);
    }

    /// Its deadline closes it as idle (its protocol told, while the
    /// descriptor is open), or wakes it for its protocol's timer.
    #[tokio::test(start_paused = true)]
    async fn its_deadline_closes_it_or_wakes_its_timer() {
        let (lot, limit, handed, told) = lot();
        let shutdown = LocalShutdown::default();
        let (socket, mut client) = high_pair();
        let at = Some(Instant::now() + Duration::from_secs(5));
        let (socket, parking) = refused(&lot, &limit, &handed, socket, AtDeadline::Close, at);
        lot.stay_awake(socket, parking, conn(&lot, &limit), &shutdown)
            .await;
        assert_eq!(*told.borrow(), [CloseReason::IdleTimeout]);
        assert_eq!(lot.stats().timeouts.load(Relaxed), 1);
        assert!(handed.borrow().is_empty());
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(client.read(&mut [0; 8]).unwrap(), 0, "closed");

        let (socket, _client) = high_pair();
        let (socket, parking) = refused(&lot, &limit, &handed, socket, AtDeadline::Wake, at);
        lot.stay_awake(socket, parking, conn(&lot, &limit), &shutdown)
            .await;
        assert!(matches!(
            handed.borrow().as_slice(),
            [Incoming::Woken {
                hot: true,
                wake: Wake::Timer,
                ..
            }]
        ));
    }

    /// The shutdown (as it wakes idle tasks) closes it, unless a request
    /// already waits in it: then it is served.
    #[tokio::test]
    async fn the_shutdown_closes_it_unless_a_request_waits() {
        let (lot, limit, handed, told) = lot();
        let shutdown = LocalShutdown::default();
        let (socket, _client) = high_pair();
        let (socket, parking) = refused(&lot, &limit, &handed, socket, AtDeadline::Close, None);
        let awake = lot.stay_awake(socket, parking, conn(&lot, &limit), &shutdown);
        let stop = async {
            tokio::task::yield_now().await;
            assert_eq!(shutdown.watching(), 1, "waits among the idle");
            shutdown.start();
        };
        tokio::join!(awake, stop);
        assert_eq!(*told.borrow(), [CloseReason::Shutdown]);
        assert!(handed.borrow().is_empty());
        // Started already: a refused one with a request waiting is served.
        let (socket, mut client) = high_pair();
        let (socket, parking) = refused(&lot, &limit, &handed, socket, AtDeadline::Close, None);
        client.write_all(b"GET").unwrap();
        // Only the kernel knows it is there: the runtime has not polled yet.
        lot.stay_awake(socket, parking, conn(&lot, &limit), &shutdown)
            .await;
        assert!(matches!(
            handed.borrow().as_slice(),
            [Incoming::Woken {
                wake: Wake::Readable,
                ..
            }]
        ));
        assert_eq!(told.borrow().len(), 1);
    }
}
