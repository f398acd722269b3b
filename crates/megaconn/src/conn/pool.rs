//! The per-worker buffer pool.
//!
//! An idle keep-alive connection holds no read or write buffer. When its socket
//! becomes readable it takes a buffer here; when the exchange is done the buffer
//! comes back (cleared). Buffers that grew past [`MAX_POOLED_CAPACITY`] are freed
//! rather than pooled, and the pool keeps at most [`MAX_POOLED`] buffers.
//!
//! A burst (a ramp of new connections, each reading at once) can still fill
//! the pool to [`MAX_POOLED`], 8 MiB per worker that no idle connection
//! needs: at 19,000 parked connections a process, that alone would be ~440 B
//! per connection. So the pool also *decays*: [`BufferPool::decay`] (the
//! parking lot calls it every second) frees the buffers that stayed in the
//! pool through the whole interval, i.e. the ones the last second's traffic
//! did not need.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::BytesMut;

use crate::conn::context::WorkerContext;
use crate::observe::stats::WorkerStats;

/// Capacity of a fresh buffer: one read of a typical request head, or one
/// typical response, fits.
pub(crate) const BUFFER_CAPACITY: usize = 8 * 1024;

/// Buffers that grew beyond this (a large head, a burst of pipelined responses)
/// are not kept.
pub(crate) const MAX_POOLED_CAPACITY: usize = 64 * 1024;

/// How many free buffers a worker keeps.
pub(crate) const MAX_POOLED: usize = 1024;

/// How many unused buffers [`BufferPool::decay`] leaves, so that a trickle of
/// requests after a quiet second does not allocate.
pub(crate) const KEEP_WARM: usize = 4;

/// A worker's pool of byte buffers. Not `Sync`: each worker owns one.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    /// The fewest free buffers since the last [`decay`](Self::decay): that
    /// many were not needed in the interval.
    low_water: Cell<usize>,
    stats: Arc<WorkerStats>,
}

impl BufferPool {
    pub(crate) fn new(stats: Arc<WorkerStats>) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::new()),
            low_water: Cell::new(0),
            stats,
        }
    }

    /// Frees the buffers no one took since the last call (all but
    /// [`KEEP_WARM`] of them) and returns how many it freed.
    pub(crate) fn decay(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low_water.get().min(free.len());
        let drop_n = unused.saturating_sub(KEEP_WARM);
        // The oldest buffers are at the bottom of the stack (take pops the
        // top), so the ones dropped are the coldest.
        free.drain(..drop_n);
        if drop_n > 0 {
            free.shrink_to_fit();
            bump(&self.stats.buffers_pooled, -(drop_n as i64));
        }
        self.low_water.set(free.len());
        drop_n
    }

    /// Whether decaying has nothing left to give back (at most
    /// [`KEEP_WARM`] free buffers): the lot's sweep need not come back for it.
    pub(crate) fn settled(&self) -> bool {
        self.free.borrow().len() <= KEEP_WARM
    }

    /// Takes a cleared buffer of at least three quarters of
    /// [`BUFFER_CAPACITY`] bytes (a fresh one has all of it).
    pub(crate) fn take(&self) -> BytesMut {
        bump(&self.stats.buffers_checked_out, 1);
        let mut free = self.free.borrow_mut();
        match free.pop() {
            Some(buf) => {
                bump(&self.stats.buffers_pooled, -1);
                if free.len() < self.low_water.get() {
                    self.low_water.set(free.len());
                }
                buf
            }
            None => BytesMut::with_capacity(BUFFER_CAPACITY),
        }
    }

    /// Gives a buffer back. Its contents are discarded.
    pub(crate) fn give(&self, mut buf: BytesMut) {
        bump(&self.stats.buffers_checked_out, -1);
        let mut free = self.free.borrow_mut();
        if free.len() >= MAX_POOLED {
            return;
        }
        // Reading advances the buffer's start; clearing and reserving moves it
        // back to the start of its allocation (no copy: it is empty and unique).
        // Only once the buffer has lost a quarter of its room: a buffer that
        // served one small request keeps its offset (reserving costs ~60
        // instructions per buffer per request; this, once in a few hundred).
        buf.clear();
        if buf.capacity() < BUFFER_CAPACITY - BUFFER_CAPACITY / 4 {
            buf.reserve(BUFFER_CAPACITY);
        }
        if buf.capacity() > MAX_POOLED_CAPACITY {
            return;
        }
        free.push(buf);
        bump(&self.stats.buffers_pooled, 1);
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        bump(
            &self.stats.buffers_pooled,
            -(self.free.borrow().len() as i64),
        );
    }
}

/// Moves one of the pool's gauges. The pool is their only writer, and it
/// lives on one thread (it is not `Sync`, and every worker has its own
/// stats): a plain load and store, where `fetch_add` would be a locked
/// instruction, four of them per request.
fn bump(g: &AtomicI64, delta: i64) {
    g.store(g.load(Relaxed) + delta, Relaxed);
}

thread_local! {
    /// The worker running on this thread, for buffers taken by code that
    /// cannot hold its context: a TLS stream must be `Send` (an upgraded
    /// connection may leave the worker), and the context is an `Rc`.
    static WORKER: RefCell<Weak<WorkerContext>> = const { RefCell::new(Weak::new()) };
}

/// Makes `ctx`'s pool the one [`take_local`] and [`give_local`] use on this
/// thread (a worker's thread runs only that worker).
pub(crate) fn install(ctx: &Rc<WorkerContext>) {
    WORKER.with(|w| *w.borrow_mut() = Rc::downgrade(ctx));
}

/// The worker running on this thread, if any (its parking lot hears of a
/// woken socket that leaves it: `park::left_for_runtime`).
pub(crate) fn this_worker() -> Option<Rc<WorkerContext>> {
    // `try_with`: a TLS stream is `Send` and may be dropped on any thread,
    // also while that thread's locals are being destroyed, where `with`
    // would panic inside a destructor and abort the process. A thread
    // whose `WORKER` is gone has no worker any more.
    WORKER.try_with(|w| w.borrow().upgrade()).ok().flatten()
}

/// A buffer from this thread's worker's pool; off a worker thread, a fresh one.
pub(crate) fn take_local() -> BytesMut {
    #[cfg(test)]
    tests::TAKEN_LOCAL.with(|t| t.set(t.get() + 1));
    match this_worker() {
        Some(ctx) => ctx.pool.take(),
        None => BytesMut::with_capacity(BUFFER_CAPACITY),
    }
}

/// Gives a buffer from [`take_local`] back; off a worker thread it is freed.
pub(crate) fn give_local(buf: BytesMut) {
    if let Some(ctx) = this_worker() {
        ctx.pool.give(buf);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Buffers [`take_local`] handed out on this thread.
        pub(super) static TAKEN_LOCAL: Cell<usize> = const { Cell::new(0) };
    }

    /// Buffers [`take_local`] handed out on this thread since the last call.
    pub(crate) fn taken_local() -> usize {
        TAKEN_LOCAL.with(|t| t.replace(0))
    }

    /// A buffer given back (or taken) by a destructor that runs after this
    /// thread's `WORKER` is gone, as a TLS stream's can on a user thread's
    /// exit, is freed (or fresh): no panic inside a destructor, which
    /// aborts the process.
    #[test]
    fn a_buffer_given_back_after_the_threads_worker_is_gone_is_freed() {
        struct GivesBackOnDrop;
        impl Drop for GivesBackOnDrop {
            fn drop(&mut self) {
                give_local(take_local());
                assert!(this_worker().is_none());
            }
        }
        thread_local! {
            static LATE: GivesBackOnDrop = const { GivesBackOnDrop };
        }
        std::thread::spawn(|| {
            // Thread locals are destroyed in the reverse order of their
            // first use: `LATE` first used, `WORKER` after, so `WORKER`
            // goes first.
            LATE.with(|_| ());
            assert!(this_worker().is_none());
        })
        .join()
        .unwrap();
    }

    fn pool_of(n: usize) -> BufferPool {
        let pool = BufferPool::new(Arc::default());
        let taken: Vec<_> = (0..n).map(|_| pool.take()).collect();
        taken.into_iter().for_each(|b| pool.give(b));
        pool
    }

    #[test]
    fn decay_frees_what_the_last_interval_did_not_take() {
        let pool = pool_of(100);
        // The first interval starts with the burst's buffers all free.
        pool.decay();
        assert_eq!(pool.free.borrow().len(), 100, "the burst used them all");
        // Ten in use at once at the busiest moment of the next interval.
        let busy: Vec<_> = (0..10).map(|_| pool.take()).collect();
        busy.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.decay(), 90 - KEEP_WARM);
        assert_eq!(pool.free.borrow().len(), 10 + KEEP_WARM);
        assert_eq!(
            pool.stats.buffers_pooled.load(Relaxed),
            (10 + KEEP_WARM) as i64
        );
        // A quiet interval: all but the warm ones go.
        assert_eq!(pool.decay(), 10);
        assert_eq!(pool.free.borrow().len(), KEEP_WARM);
        assert_eq!(pool.decay(), 0);
    }

    /// The gauges: a buffer counts as checked out from `take` to `give`,
    /// and as pooled while the pool holds it, until the pool goes.
    #[test]
    fn the_gauges_count_buffers_out_and_pooled() {
        let stats: Arc<WorkerStats> = Arc::default();
        let gauges = || {
            (
                stats.buffers_checked_out.load(Relaxed),
                stats.buffers_pooled.load(Relaxed),
            )
        };
        let pool = BufferPool::new(stats.clone());
        let (a, b) = (pool.take(), pool.take());
        assert_eq!(gauges(), (2, 0));
        pool.give(a);
        pool.give(b);
        assert_eq!(gauges(), (0, 2));
        let a = pool.take();
        assert_eq!(gauges(), (1, 1));
        pool.give(a);
        drop(pool);
        assert_eq!(gauges(), (0, 0), "a dropped pool holds none");
    }

    /// At most [`MAX_POOLED`] free buffers, none that grew past
    /// [`MAX_POOLED_CAPACITY`], each handed out with at least three
    /// quarters of [`BUFFER_CAPACITY`] room: a buffer whose reads ate more
    /// than a quarter of it is moved back to its start, one that lost less
    /// keeps its offset (no reserve per request).
    #[test]
    fn the_pool_keeps_what_it_promises_and_no_more() {
        let pool = BufferPool::new(Arc::default());
        let many: Vec<_> = (0..MAX_POOLED + 10).map(|_| pool.take()).collect();
        many.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free.borrow().len(), MAX_POOLED);
        let pool = BufferPool::new(Arc::default());
        pool.give(BytesMut::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert!(pool.free.borrow().is_empty(), "grown too large: freed");
        pool.give(BytesMut::with_capacity(MAX_POOLED_CAPACITY));
        assert_eq!(pool.free.borrow().len(), 1, "as large as allowed: kept");
        let three_quarters = BUFFER_CAPACITY - BUFFER_CAPACITY / 4;
        for (ate, room) in [
            (BUFFER_CAPACITY - three_quarters, three_quarters),
            (BUFFER_CAPACITY - three_quarters + 1, BUFFER_CAPACITY),
        ] {
            let pool = BufferPool::new(Arc::default());
            let mut buf = pool.take();
            assert_eq!(buf.capacity(), BUFFER_CAPACITY);
            buf.resize(ate, 0);
            drop(buf.split_to(ate));
            pool.give(buf);
            let buf = pool.take();
            assert!(buf.is_empty());
            assert_eq!(buf.capacity(), room, "{ate} bytes read");
            pool.give(buf);
        }
    }

    /// The pool is settled (the sweep need not come back for it) with at
    /// most [`KEEP_WARM`] free buffers.
    #[test]
    fn settled_is_at_most_the_warm_ones() {
        assert!(pool_of(0).settled());
        assert!(pool_of(KEEP_WARM).settled());
        assert!(!pool_of(KEEP_WARM + 1).settled());
    }
}
