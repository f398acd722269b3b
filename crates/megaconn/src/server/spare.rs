//! One spare allocation for the connection futures a worker serves at once.
//!
//! A heartbeat on a parked connection is served on the lot's turn
//! (`worker::connection_spawner`): its future is built in a box, so that it
//! can still move into a task should it have to wait, polled once, and
//! usually done. A new box for each was a `malloc` and a `free` of 760
//! bytes per heartbeat (138 instructions of the allocator's, callgrind). A [`Spare`] keeps the box of a future that finished
//! for the next one; a future that moved into a task keeps its box, freed
//! when the task ends, and the next wake-up allocates again.
//!
//! A `Cell`, not a borrow held across the poll: a future polled from the
//! spawner can call the spawner again (its connection parked and handed
//! back by the lot), and the inner call then simply finds no spare.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::pin::Pin;

/// At most one allocation for an `F`, kept between the futures of one
/// worker's spawner.
pub(crate) struct Spare<F>(Cell<Option<Box<MaybeUninit<F>>>>);

impl<F> Spare<F> {
    /// An empty spare for the futures `make` returns (`F` is usually an
    /// `impl Future` that cannot be named).
    pub(crate) fn for_fn<A, B, C, D>(_make: &impl Fn(A, B, C, D) -> F) -> Spare<F> {
        Spare(Cell::new(None))
    }

    /// `make()`'s value in a box (the spare one, else a new one), written
    /// straight into it where the compiler can (`Box::new(make())` builds
    /// the value first, then copies it): where `make` is inlined whole; a
    /// call left in it returns its value on the stack, copied in.
    #[inline(always)]
    pub(crate) fn boxed(&self, make: impl FnOnce() -> F) -> Pin<Box<F>> {
        let mut slot = self.0.take().unwrap_or_else(Box::new_uninit);
        slot.write(make());
        // SAFETY: written just above.
        Box::into_pin(unsafe { slot.assume_init() })
    }

    /// Drops `done` in its box and keeps the box for the next future. (If
    /// the drop panics, the box is lost, not freed: no worse than a leak of
    /// one allocation, and the panic goes on as it would have.)
    pub(crate) fn keep(&self, done: Pin<Box<F>>) {
        // SAFETY: the value is dropped where it is, never moved (`Pin`'s
        // promise), and the allocation, now uninitialised, is a
        // `MaybeUninit<F>`'s: the same layout, freed by the same allocator.
        unsafe {
            let raw = Box::into_raw(Pin::into_inner_unchecked(done));
            std::ptr::drop_in_place(raw);
            self.0
                .set(Some(Box::from_raw(raw.cast::<MaybeUninit<F>>())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn make(a: u8, b: u8, c: u8, d: Rc<()>) -> (u64, u8, Rc<()>) {
        (u64::from(a + b + c), 0, d)
    }

    /// A finished value is dropped (its `Rc` count falls) and its box is
    /// the next one's; a box kept by its value (a task's) is not reused.
    #[test]
    fn a_kept_box_is_reused_and_its_value_dropped() {
        let spare = Spare::for_fn(&make);
        let count = Rc::new(());
        let first = spare.boxed(|| make(1, 2, 3, count.clone()));
        let at: *const (u64, u8, Rc<()>) = &*first;
        assert_eq!(first.0, 6);
        spare.keep(first);
        assert_eq!(Rc::strong_count(&count), 1, "the value was dropped");
        let kept = spare.0.take().expect("the box is kept");
        assert!(std::ptr::eq(kept.as_ptr(), at), "its own box");
        spare.0.set(Some(kept));
        let second = spare.boxed(|| make(0, 0, 1, count.clone()));
        assert!(std::ptr::eq(&*second, at), "the same allocation");
        assert_eq!(second.0, 1);
        let third = spare.boxed(|| make(0, 0, 2, count.clone()));
        assert!(
            !std::ptr::eq(&*third, at),
            "a new one while the second is held"
        );
        spare.keep(third);
        drop(second);
        drop(spare);
        assert_eq!(Rc::strong_count(&count), 1);
    }
}
