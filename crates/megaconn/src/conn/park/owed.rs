//! Wake-ups the hub asks for: a parked message connection whose socket a
//! push found full ([`Wake::Owed`]).
//!
//! The hub writes a push straight to a parked socket (`message/table.rs`).
//! When the socket takes only part of it, the rest is owed, and the
//! connection must become a task to write it, waiting for the socket as an
//! awake one does. It used to be woken by shutting its read side, the same
//! wake as `Hub::close`, which made the close the only way on: every push
//! larger than the parked socket's send buffer closed a healthy
//! connection as a slow consumer. Here the lot moves it to awake as if it
//! were readable, its read side untouched, so it resumes.
//!
//! The wake is asked from the worker's hub pump, in the middle of a
//! delivery: it is not served there (the woken connection would run inside
//! the pump, which holds the worker's message state), but kept until the
//! lot's next turn ([`ParkingLot::wake_owed_now`], from `park::run`). That
//! turn waits for a muted relay like any other (`park_wake_batch`): the
//! lot's batching holds every wake-up of its window, this one too.

use std::os::fd::RawFd;
use std::task::Poll;

use super::{ParkingLot, Slot, ABSENT, AWAKE};
use crate::conn::Wake;
use crate::observe::close::CloseReason;

/// At most this many requests are kept in the list's room between turns
/// (a burst that woke more gives the rest back).
const KEEP_ROOM: usize = 64;

impl ParkingLot {
    /// Asks to wake parked connection `fd` for what a push left owed
    /// ([`Wake::Owed`]) on the lot's next turn; true too when this lot woke
    /// it already and its task has not run yet (a hot wake's task, spawned,
    /// takes its state when it first runs: it finds what it owes then).
    /// False when the lot does not hold it (a connection refused a slot,
    /// above the array, is served awake and waits on its own: `awake.rs`),
    /// and nothing is asked.
    pub(crate) fn ask_wake_owed(&self, fd: RawFd) -> bool {
        let slot = self.claim.slots().get(fd as usize);
        if slot.owner() != self.claim.owner() {
            return false;
        }
        if slot.deadline == AWAKE {
            return true;
        }
        if !slot.is_parked() {
            return false;
        }
        self.owed.borrow_mut().push((fd, slot));
        if let Some(waker) = self.owed_waker.take() {
            waker.wake();
        }
        true
    }

    /// Resolves when a wake was asked ([`ParkingLot::ask_wake_owed`]) and
    /// not served yet.
    pub(super) async fn owed_asked(&self) {
        std::future::poll_fn(|cx| {
            if !self.owed.borrow().is_empty() {
                return Poll::Ready(());
            }
            match self.owed_waker.take() {
                Some(w) if w.will_wake(cx.waker()) => self.owed_waker.set(Some(w)),
                _ => self.owed_waker.set(Some(cx.waker().clone())),
            }
            Poll::Pending
        })
        .await
    }

    /// Wakes every connection asked for that is still parked here. One
    /// that woke meanwhile (bytes, its timer) is served already: its wake
    /// found what it owed. One that closed, and whose descriptor another
    /// connection parked on since, is not woken: its slot's protocol or
    /// park stamp differs from the one asked for (an HTTP/1.1 connection
    /// woken so, with no bytes, broke the rule that only bytes or a hang-up
    /// wake it: merge review, session 45). A stamp cleared by a sweep since
    /// ("long ago") is taken for the same parking.
    pub(super) fn wake_owed_now(&self) {
        let asked = {
            let mut owed = self.owed.borrow_mut();
            let room = owed.capacity().min(KEEP_ROOM);
            std::mem::replace(&mut *owed, Vec::with_capacity(room))
        };
        let respawn = self.respawn.borrow().clone();
        for (fd, asked) in asked {
            if !same_parking(self.claim.slots().get(fd as usize), asked) {
                continue;
            }
            let Some((socket, slot)) = self.unpark(fd, AWAKE) else {
                continue;
            };
            self.churned();
            match &respawn {
                Some(respawn) => self.wake(socket, slot, Wake::Owed, respawn),
                None => {
                    self.claim.slots().set(fd as usize, slot.now(ABSENT));
                    self.closed(&socket, slot, CloseReason::Shutdown);
                }
            }
        }
    }
}

/// Whether `now` is still the parking `asked` was taken from: parked, in
/// the same protocol and lot, with the same park stamp (or one a sweep
/// cleared since: [`Slot::aged`]).
fn same_parking(now: Slot, asked: Slot) -> bool {
    now.is_parked()
        && now.tag() == asked.tag()
        && now.owner() == asked.owner()
        && (now.parked_at() == asked.parked_at() || now.parked_at() == 0)
}

/// Asks this thread's parking lot to wake parked connection `fd` for what
/// a push left owed ([`ParkingLot::ask_wake_owed`]): false when there is
/// no lot, or `fd` is not parked in it (the caller wakes it otherwise).
/// Called on the worker's thread, where the connection is parked.
pub(crate) fn wake_owed(fd: RawFd) -> bool {
    crate::conn::pool::this_worker()
        .and_then(|ctx| ctx.park.as_ref().map(|lot| lot.ask_wake_owed(fd)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(tag: u8, owner: u8, stamp: u32) -> Slot {
        Slot {
            deadline: 7,
            mark: stamp << 16 | u32::from(owner) << 8 | u32::from(tag),
        }
    }

    /// The hub asked to wake a connection; before the lot's turn it closed
    /// and its descriptor parked again (say HTTP/1.1, which only bytes or a
    /// hang-up may wake): only the parking asked for is woken.
    #[test]
    fn an_owed_wake_reaches_only_the_parking_it_was_asked_for() {
        let asked = parked(5, 2, 100);
        assert!(same_parking(asked, asked));
        assert!(same_parking(parked(5, 2, 0), asked), "aged by a sweep");
        assert!(!same_parking(parked(1, 2, 100), asked), "another protocol");
        assert!(
            !same_parking(parked(5, 2, 101), asked),
            "parked again since"
        );
        assert!(!same_parking(parked(5, 3, 100), asked), "another lot's");
        assert!(!same_parking(asked.now(AWAKE), asked), "awake");
        assert!(!same_parking(asked.now(ABSENT), asked), "closed");
    }
}
