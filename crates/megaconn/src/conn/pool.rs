//! The per-worker buffer pool.
//!
//! An idle keep-alive connection holds no read or write buffer. When its socket
//! becomes readable it takes a buffer here; when the exchange is done the buffer
//! comes back (cleared). Buffers that grew past [`MAX_POOLED_CAPACITY`] are freed
//! rather than pooled, and the pool keeps at most [`MAX_POOLED`] buffers, so a
//! burst does not pin memory forever.

use std::cell::RefCell;
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

/// A worker's pool of byte buffers. Not `Sync`: each worker owns one.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    stats: Arc<WorkerStats>,
}

impl BufferPool {
    pub(crate) fn new(stats: Arc<WorkerStats>) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::new()),
            stats,
        }
    }

    /// Takes a cleared buffer of at least three quarters of
    /// [`BUFFER_CAPACITY`] bytes (a fresh one has all of it).
    pub(crate) fn take(&self) -> BytesMut {
        bump(&self.stats.buffers_checked_out, 1);
        match self.free.borrow_mut().pop() {
            Some(buf) => {
                bump(&self.stats.buffers_pooled, -1);
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

/// A buffer from this thread's worker's pool; off a worker thread, a fresh one.
pub(crate) fn take_local() -> BytesMut {
    match WORKER.with(|w| w.borrow().upgrade()) {
        Some(ctx) => ctx.pool.take(),
        None => BytesMut::with_capacity(BUFFER_CAPACITY),
    }
}

/// Gives a buffer from [`take_local`] back; off a worker thread it is freed.
pub(crate) fn give_local(buf: BytesMut) {
    if let Some(ctx) = WORKER.with(|w| w.borrow().upgrade()) {
        ctx.pool.give(buf);
    }
}
