//! What a message connection checks first when the parking lot wakes it,
//! whatever its protocol: the same things for framed TCP, WebSocket and
//! Server-Sent Events, so they live here once.
//!
//! - a push found its socket full while parked (`behind`): the lot wakes
//!   it to resume (`Wake::Owed`), and it writes what it owes of that push
//!   first, raw, as an awake connection writes, bounded by its write limit
//!   and ended by an overflow of its queue ([`write_owed_resuming`]); it is
//!   a slow consumer only then, as an awake one is. (It was closed as one
//!   at once, whatever its client did: a push larger than the parked
//!   socket's send buffer closed a connection that read it at once.) Woken
//!   to close instead (the lot could not wake it to resume, or its
//!   heartbeat passed), it writes that rest within the close's bound
//!   ([`write_unsent`], which counts the push delivered or dropped by
//!   whether that rest went);
//! - a timer woke it and the peer's heartbeat deadline has passed: closed
//!   for the heartbeat timeout;
//! - the server's own heartbeat (a frame, a ping) is due: the protocol
//!   sends it, in its own format.

use std::future::poll_fn;
use std::io;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::io::{CloseBy, WriteBound, WriteLimit};
use crate::conn::Wake;
use crate::message::hub::{DropCause, Unsent};
use crate::message::table::Parked;
use crate::message::worker::Awake;
use crate::observe::close::CloseReason;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::{add, incr, MessageCounters};

/// A parked connection's timers and standing, read before its state is
/// taken out of the side table's entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParkedTimers {
    /// A push found its socket full.
    behind: bool,
    /// ...and the lot was asked to wake it to resume (`Local::is_resuming`).
    resuming: bool,
    due: Option<Instant>,
    send_at: Option<Instant>,
}

impl<S> Parked<S> {
    /// Its timers and standing, for [`resume`]; `resuming`: whether it was
    /// asked woken to resume after a push it fell behind on
    /// (`Local::is_resuming`), else, behind, it closes.
    pub(crate) fn timers(&self, resuming: bool) -> ParkedTimers {
        ParkedTimers {
            behind: self.behind,
            resuming,
            due: self.due,
            send_at: self.send_at,
        }
    }
}

/// A woken connection's timers once it passed [`resume`]'s checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resumed {
    /// When the peer must have sent something by.
    pub due: Option<Instant>,
    /// When the server sends its next heartbeat.
    pub send_at: Option<Instant>,
    /// The server's heartbeat is due now: the protocol sends it (counted
    /// already, in `heartbeats_sent`).
    pub send_heartbeat: bool,
}

/// Checks a connection woken at `now` by `wake`, with the timers it
/// parked with: `Err` is the reason to close it for (counted); else its
/// timers from here on (behind and resuming, it then writes what it owes
/// first: `Local::take_owed`, [`write_owed_resuming`]). `due` is the
/// peer's fresh deadline (it is kept only if bytes woke it: a timer's or
/// an owed push's wake leaves the parked one standing);
/// `heartbeat_every`: how often the server sends its own heartbeat.
pub(crate) fn resume(
    parked: ParkedTimers,
    wake: Wake,
    now: Instant,
    due: Option<Instant>,
    heartbeat_every: Option<Duration>,
    counters: &MessageCounters,
) -> Result<Resumed, CloseReason> {
    // Behind, and the lot could not wake it to resume: woken to close.
    if parked.behind && !parked.resuming {
        return Err(CloseReason::SlowConsumer);
    }
    let mut resumed = Resumed {
        due,
        send_at: parked.send_at,
        send_heartbeat: false,
    };
    // A timer (or a push, which no byte of the peer's came with): the
    // peer's heartbeat deadline passed, or it is time to send ours (then
    // the peer's deadline stays where it was).
    if !wake.readable() {
        if parked.due.is_some_and(|due| now >= due) {
            return Err(heartbeat_timed_out(
                counters,
                "heartbeat_timeout (the WebSocket route's or the framed listener's)",
            ));
        }
        resumed.due = parked.due;
    }
    if let (Some(every), Some(at)) = (heartbeat_every, resumed.send_at) {
        if now >= at {
            incr(&counters.heartbeats_sent);
            resumed.send_heartbeat = true;
            resumed.send_at = Some(now + every);
        }
    }
    Ok(resumed)
}

/// Writes what the socket of a parked connection did not take of the push
/// that found it full (`Local::take_unsent`) with `poll_write`, raw on the
/// socket (under any TLS stream: it is the rest of a frame, or records
/// sealed already), within `by` (the close's bound, `linger_timeout` from
/// when the close began, which the linger after it shares; counted there
/// if it passes): whether all of it went. A slow consumer that still reads gets
/// the frame whole, and then its close (a WebSocket's 1013); one that does
/// not is closed when the bound passes, its frame cut, as an awake one's
/// would be after its close's bound. (Its socket was shut at once instead:
/// every slow consumer read a frame cut short, and no close frame.)
///
/// The push is counted here, once it is known whether it reached the peer
/// whole: delivered (`pushes`, `frames_out`, the frame's `bytes_out`), or
/// dropped (`queue_drops`: a slow consumer's when the bound passed first,
/// the close's when the socket failed). (It counted as dropped when the
/// socket took part of it, even when the peer then read it whole.)
pub(crate) async fn write_unsent(
    unsent: &Unsent,
    by: &CloseBy,
    counters: &MessageCounters,
    poll_write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
) -> bool {
    let rest = write_rest_ends(&unsent.tail, by, poll_write).await;
    settle_unsent(unsent, rest, counters)
}

/// How writing the rest of a frame ended ([`write_rest_ends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    Whole,
    /// The socket failed (or took nothing): the peer is gone.
    Broken,
    /// The close's bound passed first: the peer did not read it.
    TimedOut,
}

/// Counts the push `unsent` is the rest of by how that rest ended, for a
/// slow consumer's close; its waiter hears the same: a rest the peer did
/// not take in time is the slow consumer's, one the socket failed on is
/// the close's ([`Undelivered::Closed`](crate::Undelivered::Closed)).
/// Whether it went whole.
fn settle_unsent(unsent: &Unsent, rest: Rest, counters: &MessageCounters) -> bool {
    let (cause, reason) = match rest {
        Rest::Whole => {
            count_unsent(unsent, Ok(()), counters);
            return true;
        }
        Rest::Broken => (DropCause::Closed, crate::Undelivered::Closed),
        Rest::TimedOut => (DropCause::SlowConsumer, crate::Undelivered::SlowConsumer),
    };
    count_unsent(unsent, Err(cause), counters);
    crate::message::confirm::resolve(unsent.waiter.as_ref(), Err(reason));
    false
}

/// [`write_unsent`] through a stream (an awake slow consumer's rest of
/// the push under way, from its batch), then the stream's flush, within
/// the same bound `by`: over TLS the session only sealed what it took,
/// and the rest is in the kernel (delivered, its waiter `Ok`) only once
/// the flush sent it. (Merge review of `hubwait`, session 46: the waiter
/// heard `Ok` with the rest still in the session, lost at the close.) The
/// bytes written count as the connection's (`lifecycle::count_out`).
pub(crate) async fn write_unsent_through<W>(
    unsent: &Unsent,
    by: &CloseBy,
    counters: &MessageCounters,
    io: &mut W,
) -> bool
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use std::pin::Pin;
    let mut rest = write_rest_ends(&unsent.tail, by, |cx, b| {
        let wrote = Pin::new(&mut *io).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = wrote {
            crate::observe::lifecycle::count_out(n);
        }
        wrote
    })
    .await;
    if rest == Rest::Whole {
        let flush = poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx));
        rest = match by.within(flush).await {
            Some(Ok(())) => Rest::Whole,
            Some(Err(_)) => Rest::Broken,
            None => Rest::TimedOut,
        };
    }
    settle_unsent(unsent, rest, counters)
}

/// How [`write_owed_resuming`] ended short: the reason to close for and,
/// for a slow consumer, the rest of the frame owed, which its close writes
/// within the close's bound before anything else (a WebSocket's 1013
/// after it), as an awake slow consumer's close writes the rest of the
/// frame under way. Any other end (the peer gone, the socket broken)
/// writes nothing more: the push was counted dropped.
#[derive(Debug)]
pub(crate) struct OwedCut {
    pub reason: CloseReason,
    pub rest: Option<Unsent>,
}

/// Writes what a resuming connection owes of the push that found its
/// socket full while parked (`Local::take_owed`) with `poll_write`, raw on
/// its socket (the rest of a frame, or records its parked session sealed
/// already), before anything else: as an awake connection's write, at
/// once if the socket takes it, else bounded by `limit` (asked only then:
/// `write_timeout`, else the protocol's heartbeat or `write_stall_timeout`,
/// progress restarting a stall: a client reading a large push slowly is
/// not cut off) on socket `fd`, and ended by an overflow of its queue
/// (`awake`: the pushes since wait there). A client that reads takes it
/// whole, and the connection goes on awake; one that stops reading is a
/// slow consumer when the bound passes or its queue overflows
/// ([`OwedCut`]), logged as one: the push it fell behind on never went.
///
/// Counted once whole (`pushes`, `frames_out`, the frame's `bytes_out`),
/// or dropped if it ended on anything but a slow consumer (whose close
/// writes the rest: [`OwedCut::rest`]); dropped too if this future is
/// dropped before it ends (its connection's task cut off at the shutdown
/// deadline: [`OwedGuard`]), where the push was counted nowhere.
pub(crate) async fn write_owed_resuming(
    unsent: Unsent,
    (limit, fd): (impl FnOnce() -> WriteLimit, Option<std::os::fd::RawFd>),
    awake: Option<&Awake>,
    counters: &MessageCounters,
    mut poll_write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
) -> Result<(), OwedCut> {
    let mut guard = OwedGuard {
        unsent: Some(unsent),
        counters,
    };
    let tail = &guard.unsent.as_ref().expect("held until the end").tail;
    let mut at = 0;
    let mut limit = Some(limit);
    let mut bound: Option<WriteBound> = None;
    let mut overflowed = std::pin::pin!(Awake::overflowed(awake));
    let ended = poll_fn(|cx| {
        let before = at;
        while at < tail.len() {
            match poll_write(cx, &tail[at..]) {
                Poll::Ready(Ok(0)) => {
                    let zero = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(CloseReason::io(&zero)));
                }
                Poll::Ready(Ok(n)) => at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(CloseReason::io(&e))),
                Poll::Pending => break,
            }
        }
        if at == tail.len() {
            return Poll::Ready(Ok(()));
        }
        if std::future::Future::poll(overflowed.as_mut(), cx).is_ready() {
            return Poll::Ready(Err(CloseReason::SlowConsumer));
        }
        // The bound starts with the first wait, as an awake write's does.
        let bound = bound.get_or_insert_with(|| {
            let limit = limit.take().expect("made once")();
            WriteBound::new(limit, fd)
        });
        if bound.poll_passed(cx, at != before) {
            ratelog::log(Flood::SlowConsumer, |suppressed| {
                tracing::info!(
                    suppressed,
                    "a connection woken to write the rest of a push its parked socket could not take did not take it in time; closing it as a slow consumer"
                )
            });
            return Poll::Ready(Err(CloseReason::SlowConsumer));
        }
        Poll::Pending
    })
    .await;
    let unsent = guard.unsent.take().expect("held until the end");
    match ended {
        Ok(()) => {
            count_unsent(&unsent, Ok(()), counters);
            Ok(())
        }
        Err(CloseReason::SlowConsumer) => Err(OwedCut {
            reason: CloseReason::SlowConsumer,
            rest: Some(Unsent {
                tail: unsent.tail.slice(at..),
                frame: unsent.frame,
                waiter: unsent.waiter,
            }),
        }),
        Err(reason) => {
            count_unsent(&unsent, Err(DropCause::Closed), counters);
            Err(OwedCut { reason, rest: None })
        }
    }
}

/// The push [`write_owed_resuming`] is writing, until it ends: dropped
/// with it (its connection's task dropped at the shutdown deadline, in the
/// middle of the write), the push counts as dropped, and its waiter hears
/// so ([`Undelivered::Shutdown`](crate::Undelivered::Shutdown) then, by
/// its drop). Merge review D1, session 45: such a push was counted in
/// neither `pushes` nor `queue_drops`.
struct OwedGuard<'a> {
    unsent: Option<Unsent>,
    counters: &'a MessageCounters,
}

impl Drop for OwedGuard<'_> {
    fn drop(&mut self) {
        if let Some(unsent) = self.unsent.take() {
            DropCause::Closed.count(self.counters);
            drop(unsent);
        }
    }
}

/// Counts the push `unsent` is the rest of, once it is known whether that
/// rest went whole (`went`): delivered (`pushes`, `frames_out`, the
/// frame's `bytes_out`) or dropped for the cause given (`queue_drops`: a
/// slow consumer's when its peer did not take the rest in time, the
/// close's when the socket failed or the close did not wait; all counted
/// `closed` until session 48); its waiter, a confirmed push's, hears the
/// same (dropped: its close, by its drop, unless the caller resolved it).
/// By [`write_unsent`], and by a parked connection's close that writes the
/// rest at once (`proto::parked::let_go`).
pub(crate) fn count_unsent(
    unsent: &Unsent,
    went: Result<(), DropCause>,
    counters: &MessageCounters,
) {
    match went {
        Ok(()) => {
            incr(&counters.pushes);
            incr(&counters.frames_out);
            add(&counters.bytes_out, unsent.frame as u64);
            crate::message::confirm::resolve(unsent.waiter.as_ref(), Ok(()));
        }
        Err(cause) => cause.count(counters),
    }
}

/// Writes `rest` (the rest of a frame a slow consumer's socket took part
/// of) with `poll_write` within `by`, the bound its close began (writing
/// the rest of its frame and lingering after it share it: each had a bound
/// of its own, and a peer that took the rest just in time and then kept
/// its end open held the close for twice the bound, ~4 s): whether all of
/// it went.
pub(crate) async fn write_rest(
    rest: &[u8],
    by: &CloseBy,
    poll_write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
) -> bool {
    write_rest_ends(rest, by, poll_write).await == Rest::Whole
}

/// [`write_rest`], saying how it ended.
async fn write_rest_ends(
    rest: &[u8],
    by: &CloseBy,
    mut poll_write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
) -> Rest {
    let mut at = 0;
    let writing = poll_fn(|cx| {
        while at < rest.len() {
            match ready!(poll_write(cx, &rest[at..])) {
                Ok(0) | Err(_) => return Poll::Ready(Rest::Broken),
                Ok(n) => at += n,
            }
        }
        Poll::Ready(Rest::Whole)
    });
    by.within(writing).await.unwrap_or(Rest::TimedOut)
}

/// After [`write_unsent`] wrote a behind connection's tail whole (or an
/// awake one's, `proto/framed/conn.rs`): half-closes
/// and reads and drops what the peer sends until its end of stream (at most
/// 256 KiB, within `by`, the close's bound that writing the tail began). A
/// peer still talking (an app
/// heartbeat) has bytes queued since its socket was shut for reading, and a
/// close with them unread is a reset, which destroys the tail still in the
/// kernel's buffers on both sides: the lingering close HTTP makes for the
/// same reason.
pub(crate) async fn linger_after_unsent<T>(io: &mut T, by: &CloseBy)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Boxed, so that only a close that lingers pays for it: inline, its
    // scratch buffer (held across the reads) and `within`'s two copies of
    // the step (4,336 B) sat in every future that may linger, three times
    // in a framed connection's (11,816 B in release, ~12 KB on the heap
    // per awake connection, all of them awake at once in a reconnect
    // storm: review53, `proto/framed/size_guard.rs`).
    let _ = Box::pin(by.within(async {
        io.shutdown().await?;
        let mut scratch = [0u8; 2048];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match io.read(&mut scratch).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, io::Error>(())
    }))
    .await;
}

/// Counts a peer that sent nothing within its heartbeat timeout, logs which
/// setting `knob` bounded it, and gives the close reason.
pub(crate) fn heartbeat_timed_out(counters: &MessageCounters, knob: &'static str) -> CloseReason {
    incr(&counters.heartbeat_timeouts);
    tracing::debug!("the peer sent nothing within {knob}; closing the connection");
    CloseReason::HeartbeatTimeout
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    fn timers(behind: bool, due: Option<Instant>, send_at: Option<Instant>) -> ParkedTimers {
        ParkedTimers {
            behind,
            resuming: false,
            due,
            send_at,
        }
    }

    fn resumed(due: Option<Instant>, send_at: Option<Instant>, send_heartbeat: bool) -> Resumed {
        Resumed {
            due,
            send_at,
            send_heartbeat,
        }
    }

    /// A slow consumer that takes the rest of its frame just before the
    /// close's bound and then keeps its end open (reads nothing more, never
    /// closes) is closed at that bound: the rest and the linger after it
    /// share it. (Each had a bound of its own: this close took 3.9 s.)
    #[tokio::test(start_paused = true)]
    async fn the_rest_of_a_frame_and_the_linger_share_one_bound() {
        use std::pin::Pin;
        use tokio::io::{AsyncReadExt, AsyncWrite};

        let bound = crate::conn::config::DEFAULT_LINGER_TIMEOUT;
        let (mut ours, mut peer) = tokio::io::duplex(1024);
        let rest = vec![7u8; 8192];
        let reader = tokio::spawn(async move {
            tokio::time::sleep(bound - Duration::from_millis(100)).await;
            let mut got = vec![0; 8192];
            peer.read_exact(&mut got).await.unwrap();
            // Kept open: returned, not dropped.
            peer
        });
        let started = Instant::now();
        let by = CloseBy::after(bound, None);
        let whole = write_rest(&rest, &by, |cx, b| Pin::new(&mut ours).poll_write(cx, b)).await;
        assert!(whole, "the rest went, just in time");
        linger_after_unsent(&mut ours, &by).await;
        assert_eq!(started.elapsed(), bound);
        let _peer = reader.await.unwrap();
    }

    /// The rest of a push its peer does not take within the close's bound
    /// is a slow consumer's drop; one whose socket fails is the close's;
    /// one that goes is a push. (The first counted `closed`: session 48.)
    #[tokio::test(start_paused = true)]
    async fn a_rest_the_peer_did_not_take_in_time_is_a_slow_consumers_drop() {
        use std::pin::Pin;
        use tokio::io::AsyncWrite;
        let counters = MessageCounters::default();
        let by = || CloseBy::after(crate::conn::config::DEFAULT_LINGER_TIMEOUT, None);
        let unsent = || Unsent {
            tail: bytes::Bytes::from(vec![7u8; 4096]),
            frame: 4096,
            waiter: None,
        };
        // Room for 1 KiB, never read: the bound passes.
        let (mut ours, _peer) = tokio::io::duplex(1024);
        let whole = write_unsent(&unsent(), &by(), &counters, |cx, b| {
            Pin::new(&mut ours).poll_write(cx, b)
        })
        .await;
        assert!(!whole);
        assert_eq!(counters.queue_drops_slow_consumer.load(Relaxed), 1);
        assert_eq!(counters.queue_drops.load(Relaxed), 0);
        // The peer gone: the close's.
        let (mut ours, peer) = tokio::io::duplex(1024);
        drop(peer);
        let whole = write_unsent(&unsent(), &by(), &counters, |cx, b| {
            Pin::new(&mut ours).poll_write(cx, b)
        })
        .await;
        assert!(!whole);
        assert_eq!(counters.queue_drops.load(Relaxed), 1);
        // Room for all of it: a push.
        let (mut ours, _peer) = tokio::io::duplex(8192);
        let whole = write_unsent(&unsent(), &by(), &counters, |cx, b| {
            Pin::new(&mut ours).poll_write(cx, b)
        })
        .await;
        assert!(whole);
        assert_eq!(counters.pushes.load(Relaxed), 1);
        assert_eq!(counters.queue_drops_slow_consumer.load(Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_check_in_its_order() {
        let counters = MessageCounters::default();
        let now = Instant::now();
        let (past, later, fresh) = (
            Some(now - Duration::from_secs(1)),
            Some(now + Duration::from_secs(5)),
            Some(now + Duration::from_secs(30)),
        );
        let every = Some(Duration::from_secs(10));
        // Behind comes first, whatever the timers say.
        let behind = resume(
            timers(true, past, past),
            Wake::Timer,
            now,
            fresh,
            every,
            &counters,
        );
        assert_eq!(behind, Err(CloseReason::SlowConsumer));
        // Behind, and asked woken to resume: it resumes, whatever woke it,
        // its timers as for a timer's wake (no byte of the peer's came).
        for wake in [Wake::Owed, Wake::Readable] {
            let resuming = ParkedTimers {
                resuming: true,
                ..timers(true, later, later)
            };
            let resumed = resume(resuming, wake, now, fresh, every, &counters);
            let due = if wake == Wake::Owed { later } else { fresh };
            assert_eq!(resumed, Ok(self::resumed(due, later, false)), "{wake:?}");
        }
        // A timer past the peer's deadline: a heartbeat timeout.
        let late = resume(
            timers(false, past, None),
            Wake::Timer,
            now,
            fresh,
            every,
            &counters,
        );
        assert_eq!(late, Err(CloseReason::HeartbeatTimeout));
        assert_eq!(counters.heartbeat_timeouts.load(Relaxed), 1);
        // Bytes woke it: the same past deadline does not matter, it is fresh.
        let read = resume(
            timers(false, past, later),
            Wake::Readable,
            now,
            fresh,
            every,
            &counters,
        );
        assert_eq!(read, Ok(resumed(fresh, later, false)));
        // A timer for our heartbeat: sent, the next one scheduled, the
        // peer's deadline kept.
        let send = resume(
            timers(false, later, past),
            Wake::Timer,
            now,
            fresh,
            every,
            &counters,
        );
        let next = Some(now + Duration::from_secs(10));
        assert_eq!(send, Ok(resumed(later, next, true)));
        assert_eq!(counters.heartbeats_sent.load(Relaxed), 1);
    }
}
