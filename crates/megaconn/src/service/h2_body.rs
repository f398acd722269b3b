//! The request body of an HTTP/2 stream, the connection's small-DATA flood
//! guard its frames count against (which also counts the connection's body
//! bytes, and counts those no stream record took when it drops), and where
//! a body leaves the count of its bytes for the stream's record
//! ([`BodyBytes`]). It lives with the service
//! glue (not in `proto/http2.rs`) because [`Body`](crate::Body) wraps it:
//! the body a service sees must not depend on a protocol module.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use h2::RecvStream;
use http_body::{Frame, SizeHint};

use crate::error::BodyError;
use crate::observe::clock::LazyDeadline;
use crate::observe::human::Timeout;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, WorkerStats};

/// DATA frames with fewer payload bytes than this are "tiny": they count
/// against [`SMALL_DATA_FRAME_ALLOWANCE`]. Real uploads come in frames of
/// KiBs (curl, browsers and h2 fill up to the 16 KiB frame size), and gRPC
/// frames each message with a 5-byte prefix, so only empty or near-empty
/// messages fall under 16 bytes; a 20-byte message is never counted.
pub(crate) const TINY_DATA_FRAME: usize = 16;

/// Tiny DATA frames one connection may send before it is closed with
/// `GOAWAY(ENHANCE_YOUR_CALM)`, plus one more per [`BYTES_PER_TINY_FRAME`] of
/// body data it sent. Generous, because we cannot tell a gRPC stream of empty
/// keep-alive messages from an attacker except by count (no clocks: a rate
/// would make the guard depend on scheduling). It bounds the handler polls
/// one connection can buy with 10-byte frames; then the attacker must open
/// a new connection, which the accept-rate and per-IP limits govern. The
/// price: a connection carrying more than 10,000 sub-16-byte messages and
/// little else is closed, and its client reconnects.
pub(crate) const SMALL_DATA_FRAME_ALLOWANCE: u64 = 10_000;

/// Body bytes that earn a connection one more tiny DATA frame, so that tiny
/// frames among real data (the last bytes of messages) are never a problem.
pub(crate) const BYTES_PER_TINY_FRAME: u64 = 1024;

/// Counts a connection's tiny DATA frames (small-DATA flood, CVE-2019-9518
/// class), shared by its request bodies. It sees the frames that handlers
/// read; frames left unread are h2's to bound (its small-frame budget).
///
/// It also counts the body bytes of them all, every frame's, for
/// `request_body_bytes`: the stream records take their share
/// ([`take`](Self::take)), and what none took (bodies kept past their
/// record, or past the connection) is counted when the guard drops, with
/// the last of the connection and its bodies. So every byte a body took
/// in is counted once, wherever and whenever it was read, at no allocation
/// per stream, as long as the body is dropped at all.
///
/// Atomics, not `Cell`s, because [`Body`](crate::Body) is `Send` (frameworks
/// such as axum require it): a handler may read its body on another thread,
/// and two of a connection's bodies may be polled at once.
#[derive(Debug)]
pub(crate) struct DataFloodGuard {
    tiny_frames: AtomicU64,
    bytes: AtomicU64,
    /// Of `bytes`, those the stream records took (written only by the
    /// connection's worker thread, where the records drop).
    reported: AtomicU64,
    tripped: AtomicBool,
    /// The connection loop, to wake when the guard trips.
    waker: AtomicWaker,
    /// The connection's worker's counters: where its bodies count the
    /// limits they enforce, and the guard the bytes no record took.
    stats: Arc<WorkerStats>,
}

impl DataFloodGuard {
    /// The guard of a new connection of the worker that counts in `stats`.
    pub(crate) fn new(stats: Arc<WorkerStats>) -> DataFloodGuard {
        DataFloodGuard {
            tiny_frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            stats,
        }
    }

    /// Records a DATA frame of `len` payload bytes; true once the connection
    /// has sent more tiny frames than it is allowed.
    pub(crate) fn record(&self, len: usize) -> bool {
        let bytes = self.bytes.fetch_add(len as u64, Relaxed) + len as u64;
        // Only a tiny frame can trip the guard (a larger one raises the
        // allowance, and skips the count). The count is one
        // read-modify-write: bodies of one connection polled on two threads
        // at once would lose counts between a load and a store. Its price,
        // on tiny frames only (2026-12-04, 2 cores): 5-13 ns more than the
        // load and store, of ~0.8 us of server CPU per 8-byte DATA frame
        // echoed; 1.8 M of them cost 1.4% more CPU, within the runs' 6%
        // spread.
        if len < TINY_DATA_FRAME {
            let tiny = self.tiny_frames.fetch_add(1, Relaxed) + 1;
            if tiny > SMALL_DATA_FRAME_ALLOWANCE + bytes / BYTES_PER_TINY_FRAME
                && !self.tripped.swap(true, Relaxed)
            {
                self.waker.wake();
            }
        }
        self.tripped.load(Relaxed)
    }

    /// The bytes a stream's record counts, as it drops (on the connection's
    /// worker thread, the only one that writes `reported`: a load and a
    /// store): with the access log on, its own body's, `own` (0 if the
    /// body has not dropped yet: then the guard counts them later); with
    /// it off, whatever arrived since the last record took (only the sum
    /// is counted then, and no counter is allocated per stream).
    pub(crate) fn take(&self, own: Option<&BodyBytes>) -> u64 {
        let reported = self.reported.load(Relaxed);
        let (taken, now) = match own {
            Some(own) => {
                let n = own.get();
                (n, reported + n)
            }
            None => {
                let bytes = self.bytes.load(Relaxed);
                (bytes - reported, bytes)
            }
        };
        self.reported.store(now, Relaxed);
        taken
    }

    /// Resolves once the guard tripped.
    pub(crate) async fn tripped(&self) {
        poll_fn(|cx| {
            if self.tripped.load(Relaxed) {
                return Poll::Ready(());
            }
            // Keeps the waker it has when it is this task's (no clone).
            self.waker.register(cx.waker());
            if self.tripped.load(Relaxed) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for DataFloodGuard {
    /// Counts the bytes no stream record took: the last of the connection
    /// and its bodies is gone, so none can come. Runs on whichever thread
    /// dropped the last (a body handed to a task elsewhere may be it),
    /// hence the worker's counter written from any thread.
    fn drop(&mut self) {
        let left = *self.bytes.get_mut() - *self.reported.get_mut();
        self.stats.request_body_bytes(left);
    }
}

/// Where an HTTP/2 stream's request body leaves the count of the bytes it
/// took in, for the stream's `RequestRecord` to count as HTTP/1.1's
/// exchange counts the body it reads (`request_bytes`); made only when
/// the access log is on, whose line needs each request's own count (an
/// allocation per upload: without the log, the connection's
/// [`DataFloodGuard`] count serves). The body is `Send`
/// and the handler may read it anywhere, while the record is the stream's:
/// the body counts in a plain field of its own as frames come and stores
/// the sum here once, when it drops (its stream's exchange has then ended
/// with it, unless the handler kept the body past its response: then the
/// record takes 0 and the [`DataFloodGuard`] counts them when it drops).
#[derive(Debug, Default)]
pub(crate) struct BodyBytes(AtomicU64);

impl BodyBytes {
    /// The bytes the body took in, once it dropped (0 before).
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A request body arriving in HTTP/2 DATA frames. Each frame's bytes are given
/// back to the flow-control window as the handler takes them, so a handler that
/// does not read stops the client (after one window) instead of making us buffer.
#[derive(Debug)]
pub(crate) struct RecvBody {
    stream: RecvStream,
    data_done: bool,
    /// Bytes still expected when the client sent `content-length`.
    remaining: Option<u64>,
    /// Bytes taken in, every DATA frame's, refused or not.
    received: u64,
    /// Where `received` goes when the body drops, when the access log is
    /// on (otherwise the record takes its share of the connection's
    /// `flood` count).
    tally: Option<Arc<BodyBytes>>,
    limit: u64,
    /// The connection's small-DATA flood counter.
    flood: Arc<DataFloodGuard>,
    /// `read_timeout`, from when the request's head arrived: the whole body
    /// must have arrived by then (as on HTTP/1.1).
    deadline: LazyDeadline,
    /// With `read_timeout` off, `idle_timeout`: how long a reader may wait
    /// for DATA that does not come ([`stalled`](Self::stalled)).
    stall_after: Option<Duration>,
    /// That bound, made when the reader first waits, and `received` when
    /// it (re)started.
    stall: Option<(LazyDeadline, u64)>,
    /// An error was returned: the body ends there (a reader that goes on
    /// must not wait for a client that stalled, or for the rest of an
    /// upload refused as too large).
    failed: bool,
    /// The body went past `limit`, and the bytes up to one past it were
    /// handed over: the next poll fails (`body::up_to_one_past`).
    past_limit: bool,
}

impl RecvBody {
    /// A body of `stream` under the connection's `flood` guard, `limit`
    /// bytes at most, complete within `read_timeout` from now (with it
    /// off, a reader waits for DATA no longer than `idle_timeout`), that
    /// leaves the count of its bytes in `tally`, if given.
    pub(crate) fn new(
        stream: RecvStream,
        content_length: Option<u64>,
        limit: u64,
        (read_timeout, idle_timeout): (Option<Duration>, Option<Duration>),
        flood: Arc<DataFloodGuard>,
        tally: Option<Arc<BodyBytes>>,
    ) -> RecvBody {
        RecvBody {
            stream,
            data_done: false,
            remaining: content_length,
            received: 0,
            tally,
            limit,
            flood,
            deadline: LazyDeadline::after(read_timeout),
            stall_after: idle_timeout.filter(|_| read_timeout.is_none()),
            stall: None,
            failed: false,
            past_limit: false,
        }
    }

    /// Whether the reader, waiting now, has waited for DATA `stall_after`
    /// with none coming; else the task is woken when it would have. The
    /// bound is made when the reader first waits (a body whose DATA is
    /// there when read costs none) and nothing is done per frame: when it
    /// passes, bytes taken in since it (re)started restart it. So a client
    /// that sends nothing more is cut one to two bounds after its last
    /// DATA (one, if it never sent any), as a peer that stops reading is
    /// by `write_stall_timeout`; a slow but steady upload is not. Why a
    /// default bound: a handler waiting on a body holds its stream open,
    /// and an open stream keeps the connection from its idle timeout, so
    /// 250 streams a connection whose bodies never come were held for
    /// good (nginx resets such a stream after `client_body_timeout`, 60 s
    /// between two reads). `idle_timeout` is that bound here: the client
    /// is idle on the stream, and its connection would have been closed
    /// after as long with no stream open. The price: a gRPC client- or
    /// bidi-streaming call whose client sends nothing for that long is
    /// cut too (as behind nginx), unless `read_timeout` is set or
    /// `idle_timeout` raised.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(after) = self.stall_after else {
            return false;
        };
        let received = self.received;
        let (bound, mark) = self
            .stall
            .get_or_insert_with(|| (LazyDeadline::after(Some(after)), received));
        bound.poll_stalled(cx, after, || std::mem::replace(mark, received) != received)
    }

    /// Ends the body: the client sent no DATA for `idle_timeout` while the
    /// reader waited ([`stalled`](Self::stalled)).
    fn stall_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        ratelog::log(Flood::BodyStall, |suppressed| {
            tracing::info!(
                idle_timeout = %Timeout(self.stall_after),
                suppressed,
                "an HTTP/2 request body sent no DATA for idle_timeout; failing its read"
            )
        });
        incr(&self.flood.stats.timeouts);
        self.fail(BodyError::TimedOut)
    }

    /// Ends the body with `error`.
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.data_done = true;
        self.failed = true;
        Poll::Ready(Some(Err(error)))
    }

    /// Ends the body: `read_timeout` passed.
    fn time_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // The stream's exchange ends when the handler drops the body: h2
        // then resets the stream, as a stall or a trickle must not hold it
        // for good.
        tracing::debug!("HTTP/2 request body not complete within read_timeout");
        incr(&self.flood.stats.timeouts);
        self.fail(BodyError::TimedOut)
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if std::mem::take(&mut self.past_limit) {
            return self.fail(BodyError::TooLarge { limit: self.limit });
        }
        if !self.data_done {
            // The deadline is looked at (and its timer set up) only when the
            // body makes its reader wait, or when a frame comes after it.
            let polled = match self.stream.poll_data(cx) {
                Poll::Pending if self.deadline.poll_passed(cx) => return self.time_out(),
                Poll::Pending if self.stalled(cx) => return self.stall_out(),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(polled) => polled,
            };
            match polled {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    // Counted as it comes, as HTTP/1.1 counts what it
                    // decodes, whether or not a limit refuses it.
                    self.received += data.len() as u64;
                    // Before the deadline's check: the guard's byte count
                    // is what `request_body_bytes` counts (the records
                    // their share, the guard the rest), and must see every
                    // frame `received` does.
                    let flooded = self.flood.record(data.len());
                    if self.deadline.is_past() {
                        return self.time_out();
                    }
                    if flooded {
                        // The connection loop sends GOAWAY; the handler
                        // learns the body is not coming.
                        return self.fail(BodyError::Malformed(
                            "too many tiny DATA frames (small-DATA flood)",
                        ));
                    }
                    if self.received > self.limit {
                        ratelog::log(Flood::BodyTooLarge, |suppressed| {
                            tracing::info!(
                                limit = self.limit,
                                suppressed,
                                "HTTP/2 request body over max_body_bytes; refusing the rest"
                            )
                        });
                        incr(&self.flood.stats.protocol_errors);
                        LimitHit::MaxBodyBytes.count(&self.flood.stats);
                        self.past_limit = true;
                        let past = self.received - self.limit;
                        let data = crate::service::body::up_to_one_past(data, past);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if let Some(left) = self.remaining.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 request body failed");
                    return self.fail(BodyError::Incomplete);
                }
                None => {
                    self.data_done = true;
                    self.deadline.clear();
                }
            }
        }
        match std::task::ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 request trailers failed");
                Poll::Ready(Some(Err(BodyError::Incomplete)))
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(tally) = &self.tally {
            tally.0.store(self.received, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_flood_guard_counts_only_tiny_frames_beyond_what_real_data_earns() {
        // Empty frames (should h2 ever pass them on) earn nothing.
        let g = DataFloodGuard::new(Arc::default());
        for _ in 0..SMALL_DATA_FRAME_ALLOWANCE {
            assert!(!g.record(0));
        }
        assert!(g.record(0), "one past the allowance");
        assert!(g.record(16 * 1024), "it stays tripped");

        let grpc = DataFloodGuard::new(Arc::default());
        for _ in 0..10 * SMALL_DATA_FRAME_ALLOWANCE {
            assert!(!grpc.record(TINY_DATA_FRAME), "16-byte frames are not tiny");
        }

        // Each KiB of body earns one tiny frame more.
        let mixed = DataFloodGuard::new(Arc::default());
        for _ in 0..SMALL_DATA_FRAME_ALLOWANCE {
            assert!(!mixed.record(0));
        }
        assert!(!mixed.record(BYTES_PER_TINY_FRAME as usize * 100));
        for _ in 0..100 {
            assert!(!mixed.record(0));
        }
        assert!(mixed.record(0));
    }

    /// Bodies of one connection read on two threads at once (a handler may
    /// hand its body anywhere) count every tiny frame: with a load and a
    /// store, frames counted between another thread's two were lost (135,000
    /// to 383,000 of these 2 M, in each of three runs), and a flood split
    /// over bodies on two threads went on past the allowance.
    #[test]
    fn tiny_frames_read_on_two_threads_at_once_are_all_counted() {
        const EACH: u64 = 1_000_000;
        let guard = DataFloodGuard::new(Arc::default());
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..EACH {
                        guard.record(1);
                    }
                });
            }
        });
        assert_eq!(guard.tiny_frames.load(Relaxed), 2 * EACH);
        assert_eq!(guard.bytes.load(Relaxed), 2 * EACH);
    }
}
