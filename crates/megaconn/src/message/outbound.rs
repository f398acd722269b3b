//! An awake connection's pushes on their way to its socket ([`Outbound`]):
//! the batch it took from its queue (`Inbox::take_up_to`) is written with
//! vectored writes straight from the frames the hub encoded once for all
//! their recipients (shared [`Bytes`]), after what the connection buffered
//! itself (its replies and control frames, encoded into its pooled write
//! buffer, "the head"). A peer that stops reading so holds a reference to
//! the frames of its batch, not a copy of them: an awake `/ws/chat`
//! subscriber that read nothing held ~63 KiB, its own ~5 KiB and a copy of
//! the one 60 KB frame under way in its write buffer
//! (`bench/ATTACK-MEMORY.md`, sessions 40 and 41). A frame is let go as soon
//! as the socket took it whole, not when the batch is done.
//!
//! Only for a transport that writes vectored (`is_write_vectored`: a plain
//! socket); another one (TLS, whose session copies and seals what it takes
//! anyway, a record per write) is not given the batch: the protocol copies
//! it into its write buffer, as it did for every transport.
//!
//! Counted as the socket takes them ([`Outbound::count`]): a push written
//! whole in `pushes`, `frames_out` and `bytes_out`. One that never goes
//! whole, whatever ends the write (a slow consumer's close, a write
//! timeout, a peer gone), in `queue_drops` ([`Outbound::give_up`]), the
//! bytes of it the socket took in `bytes_out`; a slow consumer's frame
//! under way is finished by its close first ([`Unsent`], as a parked one's).
//!
//! A confirmed push's waiter hears `Ok` only once its frame is in the
//! kernel: over a transport that buffers (one that does not write
//! vectored: TLS, whose session holds what it sealed, up to 64 KiB, until
//! a flush sends it), a frame written whole is in the kernel only once the
//! write flushed. A write that ends before its flush so counts such a
//! frame in `pushes` (its session took it, as the counters say for TLS)
//! but its waiter hears it did not go ([`Outbound::give_up`]): where the
//! two differ, the waiter is the conservative one. (Merge review of
//! `hubwait`, session 46: such a push resolved `Ok` and was lost with the
//! session at the close.)

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::message::confirm::{self, Undelivered, Waiter};
use crate::message::hub::{DropCause, Unsent};
use crate::observe::lifecycle;
use crate::observe::stats::{add, MessageCounters};

/// The most slices one write gives the kernel: the head and 31 frames. A
/// batch is about 64 KiB (`TAKE_AT_ONCE`), so a batch of frames of 2 KiB
/// or more goes in one write; smaller ones take a write per 31 frames.
const MAX_SLICES: usize = 32;

/// One push framed for its connection, as its outbound queue holds it and
/// its write takes it: the frame, and the waiter of a confirmed push
/// ([`Hub::send_confirmed`](crate::Hub::send_confirmed); `None` for a plain
/// one, which so costs nothing but this room). Let go of unwritten (a
/// batch dropped at a close), its waiter hears so by its drop.
#[derive(Debug)]
pub(crate) struct PushFrame {
    pub bytes: Bytes,
    pub waiter: Option<Waiter>,
}

#[cfg(test)]
impl PushFrame {
    /// A push no one awaits.
    pub(crate) fn plain(bytes: Bytes) -> PushFrame {
        PushFrame {
            bytes,
            waiter: None,
        }
    }
}

/// The pushes an awake connection took from its queue and is writing:
/// whole frames, in order, the first maybe begun.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    /// The batch. A frame written whole is replaced by an empty one (its
    /// reference dropped at once; its waiter kept until it is counted).
    frames: Vec<PushFrame>,
    /// The first frame not written whole.
    next: usize,
    /// How much of `frames[next]` was written.
    begun: usize,
    /// Frames written whole, and their bytes, not yet counted.
    whole: u64,
    whole_bytes: u64,
    /// Bytes written so far, all batches (a write's progress).
    written: u64,
    /// Whether the transport written to buffers what it takes until a
    /// flush (it does not write vectored: TLS), so that a frame written
    /// whole is not yet in the kernel. Noted at each write.
    buffered: bool,
}

impl Outbound {
    /// Adds `batch` (framed pushes, taken from the connection's queue) to
    /// what is to be written.
    pub(crate) fn take(&mut self, batch: Vec<PushFrame>) {
        // (A frame is never empty: it has a header, or a line its ending.)
        debug_assert!(batch.iter().all(|frame| !frame.bytes.is_empty()));
        if self.is_empty() {
            // All went whole and were counted (a write that ends counts
            // or gives up), their waiters with them.
            debug_assert!(self.whole == 0, "frames written whole and not counted");
            self.frames = batch;
            (self.next, self.begun) = (0, 0);
        } else {
            self.frames.extend(batch);
        }
    }

    /// Whether every frame taken was written whole (or given up).
    pub(crate) fn is_empty(&self) -> bool {
        self.next >= self.frames.len()
    }

    /// The bytes written so far: moving, the write is making progress.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Writes `head` from `at` on, then the frames, as much as `io` takes
    /// now, a vectored write at a time; `at` and the frames' place move
    /// past what it took. Ready once all went (frames counted by
    /// [`Outbound::count`]).
    pub(crate) fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
        head: &[u8],
        at: &mut usize,
    ) -> Poll<io::Result<()>> {
        // A plain socket writes vectored and holds nothing back; TLS (and
        // a caller's own transport that does not) may.
        self.buffered = !io.is_write_vectored();
        loop {
            if *at >= head.len() && self.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let wrote = if *at >= head.len() && self.next + 1 == self.frames.len() {
                // One frame left and nothing before it (a push between the
                // peer's messages, the usual case): a plain write of it.
                io.as_mut()
                    .poll_write(cx, &self.frames[self.next].bytes[self.begun..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                if *at < head.len() {
                    slices[0] = IoSlice::new(&head[*at..]);
                    n = 1;
                }
                let mut begun = self.begun;
                for frame in self.frames.iter().skip(self.next) {
                    if n == MAX_SLICES {
                        break;
                    }
                    slices[n] = IoSlice::new(&frame.bytes[begun..]);
                    (n, begun) = (n + 1, 0);
                }
                io.as_mut().poll_write_vectored(cx, &slices[..n])
            };
            let took = match ready!(wrote) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(took) => took,
                Err(e) => return Poll::Ready(Err(e)),
            };
            lifecycle::count_out(took);
            self.advance(head.len(), at, took);
        }
    }

    /// `took` bytes went: the head's first (from `at`), then the frames'.
    fn advance(&mut self, head: usize, at: &mut usize, mut took: usize) {
        self.written += took as u64;
        let of_head = took.min(head - *at);
        (*at, took) = (*at + of_head, took - of_head);
        while took > 0 {
            let Some(frame) = self.frames.get_mut(self.next) else {
                break;
            };
            let rest = frame.bytes.len() - self.begun;
            if took < rest {
                self.begun += took;
                return;
            }
            took -= rest;
            self.whole += 1;
            self.whole_bytes += frame.bytes.len() as u64;
            // Let go of it now: a slow reader holds only what it has yet
            // to take. (Its waiter hears at the count, once the write
            // flushed: over TLS, once the session gave it to the socket.)
            frame.bytes = Bytes::new();
            (self.next, self.begun) = (self.next + 1, 0);
        }
    }

    /// Counts the frames written whole since the last count (pushes, each
    /// a frame out, their bytes); once all went, the batch's list goes too.
    /// Their waiters hear they went.
    pub(crate) fn count(&mut self, counters: &MessageCounters) {
        if self.whole > 0 {
            add(&counters.frames_out, self.whole);
            add(&counters.pushes, self.whole);
            add(&counters.bytes_out, self.whole_bytes);
            self.settle_whole();
            (self.whole, self.whole_bytes) = (0, 0);
        }
        if self.is_empty() && !self.frames.is_empty() {
            self.frames = Vec::new();
            (self.next, self.begun) = (0, 0);
        }
    }

    /// Resolves the waiters of the frames written whole, `Ok`: those
    /// before `next` (one already resolved is left as it is).
    fn settle_whole(&mut self) {
        for frame in &mut self.frames[..self.next] {
            if let Some(waiter) = frame.waiter.take() {
                waiter.resolve(Ok(()));
            }
        }
    }

    /// The write ends before all went: counts what did ([`Outbound::count`])
    /// and drops the rest, each push in `queue_drops` (by cause: a slow
    /// consumer's with `finish`, else the close's); with `finish` (a
    /// slow consumer's close, which gets the rest of the frame under way
    /// before its close), the rest of a frame begun is returned instead,
    /// to write and count ([`write_unsent`](crate::message::wake::write_unsent)).
    /// The bytes of a begun frame the socket took count in `bytes_out`.
    ///
    /// The waiters of the pushes dropped hear why: a slow consumer's
    /// ([`Undelivered::SlowConsumer`], `finish`), or the close (their drop);
    /// the rest's goes with it. Over a transport that buffers, so do the
    /// waiters of the frames written whole since the last count: the
    /// write did not flush, so they may never have left the session
    /// (counted in `pushes` all the same, as the session took them).
    pub(crate) fn give_up(&mut self, finish: bool, counters: &MessageCounters) -> Option<Unsent> {
        if self.buffered {
            let reason = Undelivered::SlowConsumer;
            for frame in &mut self.frames[..self.next] {
                // Not flushed: not known to be in the kernel.
                let waiter = frame.waiter.take();
                if finish {
                    confirm::resolve(waiter.as_ref(), Err(reason));
                }
            }
        }
        self.count(counters);
        let mut rest = None;
        if self.begun > 0 {
            add(&counters.bytes_out, self.begun as u64);
            if finish {
                let under_way = &mut self.frames[self.next];
                let tail = under_way.bytes.slice(self.begun..);
                rest = Some(Unsent {
                    frame: tail.len(),
                    tail,
                    waiter: under_way.waiter.take(),
                });
                self.next += 1;
            }
        }
        let dropped = self.frames.len().saturating_sub(self.next);
        let cause = match finish {
            true => DropCause::SlowConsumer,
            false => DropCause::Closed,
        };
        cause.count_n(counters, dropped as u64);
        if finish {
            for frame in self.frames.iter().skip(self.next) {
                let slow = Err(Undelivered::SlowConsumer);
                confirm::resolve(frame.waiter.as_ref(), slow);
            }
        }
        *self = Outbound {
            written: self.written,
            ..Outbound::default()
        };
        rest
    }

    /// What is left to write, from the rest of the frame under way on,
    /// for a close that writes from its own buffer (those written whole
    /// are counted first); cleared. Each is a push, with its waiter (the
    /// close resolves it).
    pub(crate) fn drain(&mut self, counters: &MessageCounters) -> Vec<PushFrame> {
        self.count(counters);
        let mut left: Vec<PushFrame> = self.frames.drain(..).skip(self.next).collect();
        if let Some(first) = left.first_mut() {
            first.bytes = first.bytes.slice(self.begun..);
        }
        *self = Outbound {
            written: self.written,
            ..Outbound::default()
        };
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// A socket that takes at most `room` bytes a write, vectored or not,
    /// and `Pending` once `left` is spent.
    struct Sink {
        got: Vec<u8>,
        room: usize,
        left: usize,
        vectored: bool,
        writes: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(self.room).min(self.left);
            if n == 0 {
                return Poll::Pending;
            }
            self.writes += 1;
            self.left -= n;
            self.got.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = slices.iter().find(|s| !s.is_empty()).map_or(&[][..], |s| s);
                return self.poll_write(cx, first);
            }
            let all: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            self.poll_write(cx, &all)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn sink(room: usize, left: usize, vectored: bool) -> Sink {
        Sink {
            got: Vec::new(),
            room,
            left,
            vectored,
            writes: 0,
        }
    }

    fn frames(lens: &[usize]) -> Vec<PushFrame> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| PushFrame::plain(Bytes::from(vec![i as u8 + 1; len])))
            .collect()
    }

    fn bytes(frames: &[PushFrame]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| f.bytes.iter().copied())
            .collect()
    }

    fn poll(out: &mut Outbound, io: &mut Sink, head: &[u8], at: &mut usize) -> Poll<()> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        out.poll_write(Pin::new(io), &mut cx, head, at)
            .map(|r| r.unwrap())
    }

    /// The head, then the frames in order, whatever each write takes,
    /// vectored or one slice a write; every frame counted once it went
    /// whole, and its reference dropped then.
    #[test]
    fn the_head_then_the_frames_in_order_counted_as_they_go() {
        let head = b"reply".to_vec();
        let lens = [3, 100, 1, 7000, 40];
        let want: Vec<u8> = [head.clone(), bytes(&frames(&lens))].concat();
        for vectored in [true, false] {
            for room in [1, 2, 5, 64, 1 << 20] {
                let mut out = Outbound::default();
                out.take(frames(&lens));
                let mut io = sink(room, usize::MAX, vectored);
                let mut at = 0;
                assert_eq!(poll(&mut out, &mut io, &head, &mut at), Poll::Ready(()));
                assert_eq!(io.got, want, "room {room}, vectored {vectored}");
                assert_eq!(at, head.len());
                assert!(out.is_empty());
                let counters = MessageCounters::default();
                out.count(&counters);
                assert_eq!(counters.pushes.load(Relaxed), lens.len() as u64);
                assert_eq!(counters.frames_out.load(Relaxed), lens.len() as u64);
                let bytes: usize = lens.iter().sum();
                assert_eq!(counters.bytes_out.load(Relaxed), bytes as u64);
                assert_eq!(out.written(), want.len() as u64);
            }
        }
        // Vectored, a batch of small frames goes in one write per
        // `MAX_SLICES` slices.
        let mut out = Outbound::default();
        out.take(frames(&[10; 40]));
        let mut io = sink(usize::MAX, usize::MAX, true);
        assert_eq!(poll(&mut out, &mut io, b"h", &mut 0), Poll::Ready(()));
        assert_eq!(io.writes, 2);
    }

    /// A write that stops midway: the frames that went whole count, the
    /// one under way is let go of only once it went; given up, the rest of
    /// it is what a slow consumer's close finishes, and the frames not
    /// begun are queue drops (all of them, and the one begun, for another
    /// close).
    #[test]
    fn a_write_cut_short_counts_what_went_and_drops_the_rest() {
        let lens = [10, 20, 30, 40];
        for finish in [true, false] {
            let mut out = Outbound::default();
            let batch = frames(&lens);
            let kept = batch[2].bytes.clone();
            out.take(batch);
            // The head (4), the first two frames and 5 bytes of the third.
            let mut io = sink(7, 4 + 10 + 20 + 5, true);
            let mut at = 0;
            assert_eq!(poll(&mut out, &mut io, b"head", &mut at), Poll::Pending);
            assert_eq!((at, out.written()), (4, 39));
            let counters = MessageCounters::default();
            let rest = out.give_up(finish, &counters);
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
            assert_eq!(load(&counters.pushes), 2);
            assert_eq!(load(&counters.bytes_out), 10 + 20 + 5);
            match finish {
                true => {
                    let rest = rest.expect("the rest of the third");
                    assert_eq!(rest.tail, kept.slice(5..));
                    assert_eq!(rest.frame, 25, "its bytes still to count");
                    assert_eq!(load(&counters.queue_drops_slow_consumer), 1);
                    assert_eq!(load(&counters.queue_drops), 0);
                }
                false => {
                    assert_eq!(rest, None);
                    assert_eq!(load(&counters.queue_drops), 2);
                }
            }
            assert!(out.is_empty());
        }
        // Stopped between frames (or before the first): nothing to finish.
        let mut out = Outbound::default();
        out.take(frames(&lens));
        let mut io = sink(usize::MAX, 10, true);
        assert_eq!(poll(&mut out, &mut io, b"", &mut 0), Poll::Pending);
        let counters = MessageCounters::default();
        assert_eq!(out.give_up(true, &counters), None);
        assert_eq!(counters.pushes.load(Relaxed), 1);
        assert_eq!(counters.queue_drops_slow_consumer.load(Relaxed), 3);
    }

    /// Confirmed pushes hear as their frames are counted: one written
    /// whole `Ok` (at the count, not before), the one under way goes with
    /// the rest a slow consumer's close writes, those not begun hear
    /// `SlowConsumer`; for another close (`finish` false), their drop says
    /// the connection closed.
    #[test]
    fn waiters_hear_as_their_frames_are_counted() {
        use crate::message::confirm::{Delivery, Undelivered};
        use std::future::Future;
        let poll = |d: &mut Delivery| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            Pin::new(d).poll(&mut cx)
        };
        for finish in [true, false] {
            let id = crate::message::hub::ConnectionId::new(0, 3, 1);
            let mut deliveries = Vec::new();
            let batch: Vec<PushFrame> = frames(&[10, 20, 30])
                .into_iter()
                .map(|mut frame| {
                    let (waiter, delivery) = Delivery::new(id);
                    frame.waiter = Some(waiter);
                    deliveries.push(delivery);
                    frame
                })
                .collect();
            let mut out = Outbound::default();
            out.take(batch);
            let mut io = sink(usize::MAX, 10 + 5, true);
            assert_eq!(poll_write(&mut out, &mut io), Poll::Pending);
            assert_eq!(poll(&mut deliveries[0]), Poll::Pending, "not counted yet");
            let counters = MessageCounters::default();
            let rest = out.give_up(finish, &counters);
            assert_eq!(poll(&mut deliveries[0]), Poll::Ready(Ok(())));
            if finish {
                let rest = rest.expect("the rest of the second");
                assert_eq!(poll(&mut deliveries[1]), Poll::Pending, "its rest is owed");
                crate::message::wake::count_unsent(&rest, Ok(()), &counters);
                assert_eq!(poll(&mut deliveries[1]), Poll::Ready(Ok(())));
                let slow = Err(Undelivered::SlowConsumer);
                assert_eq!(poll(&mut deliveries[2]), Poll::Ready(slow));
            } else {
                let closed = Poll::Ready(Err(Undelivered::Closed));
                assert_eq!(poll(&mut deliveries[1]), closed);
                assert_eq!(poll(&mut deliveries[2]), closed);
            }
        }
    }

    /// Over a transport that buffers what it takes until a flush (one
    /// that does not write vectored: TLS), a frame written whole but not
    /// flushed when the write ends is counted in `pushes` (its session
    /// took it) but its waiter does not hear `Ok`: a slow consumer's close
    /// says `SlowConsumer`, another close its drop (`Closed`). Written
    /// whole and counted (the write flushed), it is `Ok`.
    #[test]
    fn over_a_buffering_transport_a_frame_not_flushed_is_not_delivered() {
        use crate::message::confirm::{Delivery, Undelivered};
        use std::future::Future;
        let poll = |d: &mut Delivery| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            Pin::new(d).poll(&mut cx)
        };
        for finish in [true, false] {
            let id = crate::message::hub::ConnectionId::new(0, 3, 1);
            let mut deliveries = Vec::new();
            let batch: Vec<PushFrame> = frames(&[10, 20])
                .into_iter()
                .map(|mut frame| {
                    let (waiter, delivery) = Delivery::new(id);
                    frame.waiter = Some(waiter);
                    deliveries.push(delivery);
                    frame
                })
                .collect();
            let mut out = Outbound::default();
            out.take(batch);
            // The first whole, the second not begun.
            let mut io = sink(usize::MAX, 10, false);
            assert_eq!(poll_write(&mut out, &mut io), Poll::Pending);
            let counters = MessageCounters::default();
            assert_eq!(out.give_up(finish, &counters), None);
            assert_eq!(counters.pushes.load(Relaxed), 1, "the session took it");
            let not = match finish {
                true => Undelivered::SlowConsumer,
                false => Undelivered::Closed,
            };
            assert_eq!(poll(&mut deliveries[0]), Poll::Ready(Err(not)));
            assert_eq!(poll(&mut deliveries[1]), Poll::Ready(Err(not)));
        }
    }

    /// A queued frame is a `Bytes` and 8 B of room for a waiter (40 B, not
    /// 32): what a plain push pays, and only while an awake connection
    /// holds it queued or in a batch (a parked connection holds none).
    #[test]
    fn a_queued_frame_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<Bytes>(), 32);
        assert_eq!(std::mem::size_of::<PushFrame>(), 40);
    }

    fn poll_write(out: &mut Outbound, io: &mut Sink) -> Poll<()> {
        poll(out, io, b"", &mut 0)
    }

    /// What is left, drained as bytes: the rest of the frame under way,
    /// then the frames not begun.
    #[test]
    fn drained_from_the_frame_under_way() {
        let mut out = Outbound::default();
        out.take(frames(&[10, 20]));
        out.take(frames(&[5]));
        let mut io = sink(usize::MAX, 13, true);
        assert_eq!(poll(&mut out, &mut io, b"", &mut 0), Poll::Pending);
        let counters = MessageCounters::default();
        let left = out.drain(&counters);
        assert_eq!(counters.pushes.load(Relaxed), 1, "the first went whole");
        assert_eq!(left.len(), 2);
        assert_eq!(bytes(&left), [vec![2u8; 17], vec![1u8; 5]].concat());
        assert!(out.is_empty());
        assert_eq!(out.written(), 13);
    }
}
