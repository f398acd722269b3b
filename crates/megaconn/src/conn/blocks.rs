//! A worker's cache of heap blocks for the per-request futures that are boxed
//! so idle connections stay small (HTTP/1.1's exchange).
//!
//! An exchange future is ~1.5 KB: too large for the allocator's per-thread
//! cache, so a fresh box per request costs a full malloc and free. The worker
//! keeps a few freed blocks instead and hands them out again to futures of the
//! same layout. A connection holds a block only while its exchange runs; at
//! most [`MAX_CACHED`] free blocks stay with the worker.

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// How many free blocks a worker keeps.
pub(crate) const MAX_CACHED: usize = 16;

/// A worker's free blocks, with their layouts. Not `Sync`: each worker owns one.
#[derive(Debug, Default)]
pub(crate) struct BlockCache {
    /// The block given back last, taken first: a connection's next
    /// exchange (the next request of a pipelined batch, or the next
    /// connection's) is most often of the same layout, and takes it with a
    /// compare, where the list's borrow, search and removal, and the push
    /// that gave it back, took ~25 user-space instructions a request
    /// (bench/CPU-PER-REQUEST.md, session 55). One of the [`MAX_CACHED`].
    last: Cell<Option<(NonNull<u8>, Layout)>>,
    /// The others.
    free: RefCell<Vec<(NonNull<u8>, Layout)>>,
}

impl BlockCache {
    /// Builds a future with `make` directly in a block (a cached one of its
    /// layout if any) and returns it pinned there; the block comes back here
    /// when it is dropped.
    ///
    /// Built in place because a future passed by value is built on the stack
    /// first and then copied whole (its full size, ~1.5 KB for HTTP/1.1's
    /// exchange, ~200 instructions per request), while `make`'s result is
    /// written straight into the block.
    #[inline(always)]
    pub(crate) fn pin_with<F: Future>(&self, make: impl FnOnce() -> F) -> CachedBox<'_, F> {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::<F>::dangling().cast()
        } else {
            self.take(layout)
        };
        let ptr = block.cast::<F>();
        // Given back if `make` panics (no future was written).
        let guard = EmptyBlock {
            block,
            layout,
            cache: self,
        };
        let future = make();
        std::mem::forget(guard);
        // SAFETY: `block` is valid for writes of `layout` (fresh or cached with
        // that exact layout) and aligned for `F`.
        unsafe { ptr.as_ptr().write(future) };
        CachedBox { ptr, cache: self }
    }

    /// A block of `layout`: the last one given back if it is of that
    /// layout (inlined where the future is built), else [`take_listed`](Self::take_listed).
    #[inline(always)]
    fn take(&self, layout: Layout) -> NonNull<u8> {
        if let Some((block, l)) = self.last.get() {
            if l == layout {
                self.last.set(None);
                return block;
            }
        }
        self.take_listed(layout)
    }

    /// A listed block of `layout`, or a fresh one.
    #[inline(never)]
    fn take_listed(&self, layout: Layout) -> NonNull<u8> {
        let mut free = self.free.borrow_mut();
        if let Some(i) = free.iter().rposition(|(_, l)| *l == layout) {
            return free.swap_remove(i).0;
        }
        drop(free);
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        let p = unsafe { alloc::alloc(layout) };
        NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout))
    }

    /// Keeps `block` as the one taken first (inlined where the future is
    /// dropped); the one it displaces joins the list ([`give_listed`](Self::give_listed)).
    #[inline(always)]
    fn give(&self, block: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        if let Some((block, layout)) = self.last.replace(Some((block, layout))) {
            self.give_listed(block, layout);
        }
    }

    /// Lists `block`, or frees it when the list is full.
    #[inline(never)]
    fn give_listed(&self, block: NonNull<u8>, layout: Layout) {
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_CACHED - 1 {
            free.push((block, layout));
        } else {
            drop(free);
            // SAFETY: allocated by `take` with this layout.
            unsafe { alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        let last = self.last.take();
        for (block, layout) in self.free.get_mut().drain(..).chain(last) {
            // SAFETY: allocated by `take` with this layout, owned by the cache.
            unsafe { alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

/// A block taken for a future not yet written into it: given back if the
/// future's construction unwinds.
struct EmptyBlock<'a> {
    block: NonNull<u8>,
    layout: Layout,
    cache: &'a BlockCache,
}

impl Drop for EmptyBlock<'_> {
    fn drop(&mut self) {
        self.cache.give(self.block, self.layout);
    }
}

/// A future pinned in a block of a [`BlockCache`]; dropping it drops the future
/// in place and gives the block back.
pub(crate) struct CachedBox<'a, F> {
    ptr: NonNull<F>,
    cache: &'a BlockCache,
}

impl<F: Future> Future for CachedBox<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in the block, which never moves and is
        // freed only after the future is dropped in place (`Drop`).
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for CachedBox<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live `F`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        self.cache.give(self.ptr.cast(), Layout::new::<F>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    async fn make(keep: Option<Rc<()>>, v: u8) -> u8 {
        let _keep = keep;
        let big = [v; 1500];
        std::future::ready(()).await;
        big[1499]
    }

    /// The free blocks the cache keeps, the last one given back included.
    fn kept(cache: &BlockCache) -> usize {
        cache.free.borrow().len() + usize::from(cache.last.get().is_some())
    }

    #[test]
    fn blocks_are_reused_and_futures_dropped_in_place() {
        let cache = BlockCache::default();
        let dropped = Rc::new(());
        let boxed = cache.pin_with(|| make(Some(dropped.clone()), 7));
        let first = boxed.ptr.cast::<u8>();
        drop(boxed);
        assert_eq!(Rc::strong_count(&dropped), 1, "the future was dropped");
        assert_eq!(kept(&cache), 1);
        let boxed = cache.pin_with(|| make(None, 8));
        assert_eq!(boxed.ptr.cast::<u8>(), first, "the same block came back");
        assert_eq!(futures_util::FutureExt::now_or_never(boxed), Some(8));
        assert_eq!(kept(&cache), 1);
        // Another layout gets its own block, and the one given back last
        // is not handed to a future of another layout.
        let other = cache.pin_with(|| async { 1u64 });
        assert_eq!(kept(&cache), 1);
        drop(other);
        assert_eq!(kept(&cache), 2);
        let again = cache.pin_with(|| make(None, 9));
        assert_eq!(again.ptr.cast::<u8>(), first, "found behind the last one");
        assert_eq!(kept(&cache), 1);
        let small = cache.pin_with(|| async { 2u64 });
        assert_eq!(kept(&cache), 0);
        drop((again, small));
        assert_eq!(kept(&cache), 2);
    }

    /// At most [`MAX_CACHED`] free blocks stay with the worker, however
    /// many futures were alive at once.
    #[test]
    fn at_most_max_cached_blocks_are_kept() {
        let cache = BlockCache::default();
        let many: Vec<_> = (0..MAX_CACHED + 4)
            .map(|_| cache.pin_with(|| make(None, 1)))
            .collect();
        assert_eq!(kept(&cache), 0);
        drop(many);
        assert_eq!(kept(&cache), MAX_CACHED);
    }

    /// A future whose construction panics leaves its block to the cache,
    /// which hands it to the next future of that layout.
    #[test]
    fn a_block_whose_future_panicked_while_made_comes_back() {
        let cache = BlockCache::default();
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _never =
                cache.pin_with(|| -> std::future::Ready<[u8; 1500]> { panic!("make failed") });
        }));
        assert!(made.is_err());
        assert_eq!(kept(&cache), 1, "the block came back");
        let boxed = cache.pin_with(|| std::future::ready([7u8; 1500]));
        assert_eq!(kept(&cache), 0, "and was used again");
        assert_eq!(futures_util::FutureExt::now_or_never(boxed).unwrap()[0], 7);
    }
}
