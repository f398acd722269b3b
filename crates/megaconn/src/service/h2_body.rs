//! The request body of an HTTP/2 stream, the connection's count of body
//! bytes its frames go into (which counts those no stream record took
//! when it drops, [`ConnBodyBytes`]), where a body leaves the count of
//! its bytes for the stream's record ([`BodyBytes`]), and where a
//! connection's readers say they took a DATA frame ([`ReadCredit`]: the
//! tiny-DATA budget's give-back). It lives with the service
//! glue (not in `proto/http2.rs`) because [`Body`](crate::Body) wraps it:
//! the body a service sees must not depend on a protocol module.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Frame, SizeHint};

use crate::error::BodyError;
use crate::observe::clock::LazyDeadline;
use crate::observe::human::Timeout;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{incr, WorkerStats};

/// Where a connection's readers (request bodies, upgraded streams,
/// `service/h2_stream.rs`) report each DATA frame they take out of h2:
/// the connection's tiny-DATA budget (`proto/http2/flood.rs`,
/// `HTTP2_TINY_DATA_BUDGET`) gives a tiny frame back when a handler reads
/// it, as work done, so that it bounds the tiny frames nobody reads, not
/// an honest stream of small messages at the pace its handler takes them.
/// Implemented in `proto/http2.rs` (this layer does not name the budget).
/// `Send + Sync`: a body is read on whichever thread its handler runs.
pub(crate) trait ReadCredit: Send + Sync + std::fmt::Debug {
    /// A reader took a DATA frame of `len` bytes.
    fn data_read(&self, len: usize);
}

/// No budget to give back to (unit tests of the body's counts).
impl ReadCredit for () {
    fn data_read(&self, _: usize) {}
}

/// Counts a connection's request-body bytes, shared by its request
/// bodies, for `request_body_bytes`: the stream records take their share
/// ([`take`](Self::take)), and what none took (bodies kept past their
/// record, or past the connection) is counted when it drops, with the last
/// of the connection and its bodies. So every byte a body took in is
/// counted once, wherever and whenever it was read, at no allocation per
/// stream, as long as the body is dropped at all.
///
/// It used to count the tiny DATA frames handlers read too, and close a
/// connection past a lifetime allowance of 10,000 (plus one per KiB of
/// body), which only cut long honest streams of near-empty messages (a
/// gRPC stream's 10,001st). The tiny-DATA budget at the wire
/// (`proto/http2/flood.rs`, `HTTP2_TINY_DATA_BUDGET`) bounds tiny frames
/// now, and each frame recorded here gives its unit back ([`ReadCredit`]).
///
/// Atomics, not `Cell`s, because [`Body`](crate::Body) is `Send` (frameworks
/// such as axum require it): a handler may read its body on another thread,
/// and two of a connection's bodies may be polled at once.
#[derive(Debug)]
pub(crate) struct ConnBodyBytes {
    bytes: AtomicU64,
    /// Of `bytes`, those the stream records took (written only by the
    /// connection's worker thread, where the records drop).
    reported: AtomicU64,
    /// The connection's worker's counters: where its bodies count the
    /// limits they enforce, and this the bytes no record took.
    stats: Arc<WorkerStats>,
    /// The connection's budget that a frame read gives back to.
    credit: Arc<dyn ReadCredit>,
}

impl ConnBodyBytes {
    /// The count of a new connection of the worker that counts in
    /// `stats`, whose bodies' reads give back to `credit`.
    pub(crate) fn new(stats: Arc<WorkerStats>, credit: Arc<dyn ReadCredit>) -> ConnBodyBytes {
        ConnBodyBytes {
            bytes: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            stats,
            credit,
        }
    }

    /// Records a DATA frame of `len` payload bytes that a body's reader
    /// took, and says so to the connection's budget ([`ReadCredit`]).
    pub(crate) fn record(&self, len: usize) {
        // One read-modify-write: bodies of one connection polled on two
        // threads at once would lose counts between a load and a store.
        self.bytes.fetch_add(len as u64, Relaxed);
        self.credit.data_read(len);
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
}

impl Drop for ConnBodyBytes {
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
/// [`ConnBodyBytes`] count serves). The body is `Send`
/// and the handler may read it anywhere, while the record is the stream's:
/// the body counts in a plain field of its own as frames come and stores
/// the sum here once, when it drops (its stream's exchange has then ended
/// with it, unless the handler kept the body past its response: then the
/// record takes 0 and the [`ConnBodyBytes`] counts them when it drops).
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
    /// count, `conn_bytes`).
    tally: Option<Arc<BodyBytes>>,
    limit: u64,
    /// The connection's count of body bytes (and its worker's counters).
    conn_bytes: Arc<ConnBodyBytes>,
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
    /// A body of `stream` counted in the connection's `conn_bytes`, `limit`
    /// bytes at most, complete within `read_timeout` from now (with it
    /// off, a reader waits for DATA no longer than `idle_timeout`), that
    /// leaves the count of its bytes in `tally`, if given.
    pub(crate) fn new(
        stream: RecvStream,
        content_length: Option<u64>,
        limit: u64,
        (read_timeout, idle_timeout): (Option<Duration>, Option<Duration>),
        conn_bytes: Arc<ConnBodyBytes>,
        tally: Option<Arc<BodyBytes>>,
    ) -> RecvBody {
        RecvBody {
            stream,
            data_done: false,
            remaining: content_length,
            received: 0,
            tally,
            limit,
            conn_bytes,
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
    /// after as long with no stream open. Not for gRPC: `proto/http2.rs`
    /// gives a gRPC request's body no such bound (`stall_after` `None`),
    /// whose client- or bidi-streaming calls pause as long as their
    /// application has nothing to say (tonic's server bounds no such wait;
    /// behind nginx they were cut, session 50's review); a dead peer is
    /// then found by `http2_keep_alive_interval` or `tcp_keepalive`.
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
        incr(&self.conn_bytes.stats.timeouts);
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
        incr(&self.conn_bytes.stats.timeouts);
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
                    // Before the deadline's check: the connection's byte
                    // count is what `request_body_bytes` counts (the
                    // records their share, it the rest), and must see
                    // every frame `received` does.
                    self.conn_bytes.record(data.len());
                    if self.deadline.is_past() {
                        return self.time_out();
                    }
                    if self.received > self.limit {
                        ratelog::log(Flood::BodyTooLarge, |suppressed| {
                            tracing::info!(
                                limit = self.limit,
                                suppressed,
                                "HTTP/2 request body over max_body_bytes; refusing the rest"
                            )
                        });
                        incr(&self.conn_bytes.stats.protocol_errors);
                        LimitHit::MaxBodyBytes.count(&self.conn_bytes.stats);
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
            Ok(Some(mut trailers)) => {
                if crate::service::has_padded_value(&trailers) {
                    // Malformed (RFC 9113 §8.2.1), as in a request head
                    // (`proto/http2.rs`): counted as HTTP/1.1 counts a
                    // malformed body; the handler's read fails and the
                    // stream is reset when it drops the body.
                    ratelog::log(Flood::MalformedBody, |suppressed| {
                        tracing::info!(
                            suppressed,
                            "malformed HTTP/2 request trailers (a value with leading or trailing whitespace); failing the body"
                        )
                    });
                    incr(&self.conn_bytes.stats.protocol_errors);
                    LimitHit::MalformedRequest.count(&self.conn_bytes.stats);
                    return self.fail(BodyError::Malformed("whitespace around a trailer value"));
                }
                // As HTTP/1.1 decodes them: no framing, routing or
                // authentication field (RFC 9110 §6.5.1).
                crate::service::drop_not_trailers(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => Poll::Ready(None),
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 request trailers failed");
                if e.is_library() && e.reason() == Some(h2::Reason::PROTOCOL_ERROR) {
                    // h2 reset the stream over a malformed trailer block (a
                    // pseudo-header, patches/h2; a body shorter than its
                    // content-length): counted as HTTP/1.1 counts one.
                    incr(&self.conn_bytes.stats.protocol_errors);
                    LimitHit::MalformedRequest.count(&self.conn_bytes.stats);
                }
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

    /// Bodies of one connection read on two threads at once (a handler may
    /// hand its body anywhere) count every byte: with a load and a store,
    /// frames counted between another thread's two were lost (135,000 to
    /// 383,000 of these 2 M, in each of three runs, when this counted tiny
    /// frames too).
    #[test]
    fn frames_read_on_two_threads_at_once_are_all_counted() {
        const EACH: u64 = 1_000_000;
        let guard = ConnBodyBytes::new(Arc::default(), Arc::new(()));
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
        assert_eq!(guard.bytes.load(Relaxed), 2 * EACH);
    }
}
