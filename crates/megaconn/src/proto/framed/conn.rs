//! One framed connection's life while it is awake: read into a pooled
//! buffer, decode whole frames, call the handler for each, write its
//! replies, and, between frames, wait for more or park.
//!
//! ```text
//!   accepted (on_open) / woken (state out of the side table)
//!        |
//!        v
//!   +-> read (pooled buffer) -> decode frames -> on_message -> write replies
//!   |                                   |
//!   |              between frames, buffer given back to the pool
//!   |                                   v
//!   +--- bytes arrive <---- wait, bounded by park_idle_after and the heartbeat
//!                             |  park_idle_after: state into the side table, Park
//!                             |  upgrade (hand-over of framed, cleartext): Park at once
//!                             |  heartbeat due:   Close(HeartbeatTimeout)
//!                             |  shutdown:        Close(Shutdown)
//! ```
//!
//! A connection in the middle of a frame never parks: it stays a task until
//! the frame completes, the heartbeat timeout passes, `message_timeout`
//! passes since the frame's first byte (`MessageTimeout`; the heartbeat,
//! restarted by every byte, does not bound a peer that trickles them; nor
//! does the end of the frame before if it came in the same read, unless
//! 8 KiB came meanwhile: `message/deadline.rs`), or the peer goes away.
//!
//! Pushes from the hub go out between the peer's frames (and in the middle
//! of one, and while the handler awaits: `proto/handling.rs`, before its
//! replies), a batch of about 64 KiB of the connection's queue at a time
//! (`Inbox::take_up_to`), written vectored from the frames the hub shares,
//! after the handler's replies (`message/outbound.rs`: a peer that stops
//! reading holds references, not a copy of its batch). A peer whose queue
//! overflows is a slow consumer:
//! the frame under way is finished first and the close lingers, so what the
//! peer reads ends on a whole frame (a framed protocol has no close frame to
//! say why it ends). The two share one bound, the close's (`conn::io::CloseBy`,
//! `Builder::linger_timeout`), as an HTTP close's last write and linger
//! do: each had a bound of its own, so a peer that took the rest just
//! before the first passed and then kept its end open held the close ~4 s.
//! (The write stall bound is not one of them: it bounds a write before the
//! overflow, which ends that write at once.) A parked one a push found
//! behind is woken to resume: it writes the rest of that push first, as
//! an awake write (bounded, ended by an overflow of its queue, which holds
//! the pushes since), and is a slow consumer only as an awake one is; one
//! woken behind to close writes that rest and lingers within the close's
//! one bound.
//!
//! Counted as the socket takes them: `frames_out` and `bytes_out` the
//! frames written whole, `pushes` the pushes among them; the pushes that
//! never go whole, whatever closes the connection (a slow consumer's
//! close, a write timeout, a peer gone: not begun, cut, or still queued),
//! in `queue_drops`.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use crate::conn::context::WorkerContext;
use crate::conn::io::CloseBy;
use crate::conn::shutdown::Turn;
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::poll_once;
use crate::conn::Wake;
use crate::message::confirm::{self, Undelivered};
use crate::message::deadline::MessageDeadline;
use crate::message::hub::{DropCause, Overflowed, TAKE_AT_ONCE};
use crate::message::io::{prefetch_woken, MessageIo};
use crate::message::live::Live;
use crate::message::outbound::{Outbound, PushFrame};
use crate::message::session::Session;
use crate::message::wake::{
    heartbeat_timed_out, linger_after_unsent, resume, write_rest, write_unsent_through,
};
use crate::message::worker::Awake;
use crate::observe::close::{CloseReason, FramingError, ProtocolDetail};
use crate::observe::lifecycle::{self, ConnectionState};
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood, OverLimit};
use crate::observe::stats::{add, incr, MessageCounters};
use crate::proto::framed::adopt::would_move;
use crate::proto::framed::codec::{FrameCodec, Framing};
use crate::proto::framed::handler::{Erased, FramedHandler};
use crate::proto::framed::{settings, side_table, write_limit, FramedParked};
use crate::proto::handling::{while_handling, Draining};
use crate::proto::parked::park;
use crate::proto::{earliest, until, Ended};

/// The setting a framed connection's heartbeat timeout comes from, for its
/// log line.
const FRAMED_HEARTBEAT: &str = "the framed listener's heartbeat_timeout";

/// How a framed connection comes to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Just accepted: a fresh state, `on_open`.
    Accepted,
    /// Woken from the parking lot: its state is in the side table.
    Woken(Wake),
}

/// What ended a read between frames: bytes read (`Some(n)`), or, for a
/// wait that held no buffer, the socket turned readable (`None`).
enum Read {
    Done(Result<io::Result<Option<usize>>, tokio::time::error::Elapsed>),
    Shutdown,
    PushFrame,
    /// An upgrade asked idle connections to park (between frames, when it
    /// may park).
    HandOver,
}

/// What ended an idle wait.
enum Idle {
    Readable(io::Result<()>),
    Park,
    HeartbeatDue,
    SendHeartbeat,
    PushFrame,
    Shutdown,
    /// An upgrade asked idle connections to park: the top of the loop asks
    /// whether this one moves.
    HandOver,
}

/// Serves a framed connection until it closes (`on_close` has run) or
/// parks (its state is in the side table, keyed by the returned socket).
pub(crate) async fn serve<H: FramedHandler>(
    handler: Arc<Erased<H>>,
    mut io: MessageIo,
    ctx: Rc<WorkerContext>,
    framing: Framing,
    listener: usize,
    start: Start,
) -> Ended<FramedParked> {
    let handler = &handler.0;
    let (local, table) = side_table::<H::State>(&ctx, io.is_tls());
    let counters = &ctx.stats.messages;
    let heartbeat = settings(&ctx.config).and_then(|s| s.heartbeat_timeout);
    let send_heartbeats = settings(&ctx.config).and_then(|s| s.send_heartbeat.clone());
    let fd = io.raw_fd();
    let now = Instant::now();
    // When the peer must have sent something by (the heartbeat timeout), and
    // when the server sends its next heartbeat frame.
    let mut due = heartbeat.map(|t| now + t);
    let mut send_at = send_heartbeats.as_ref().map(|(every, _)| now + *every);
    let mut message = MessageDeadline::new(settings(&ctx.config).and_then(|s| s.message_timeout));
    let (mut live, session) = match start {
        Start::Accepted => {
            let id = local.new_id(fd);
            let session = Session::new(id, local.clone(), io.shared_peer_certificates());
            let mut live = Live::new(
                handler,
                H::on_close_with_id,
                H::State::default(),
                id,
                &local,
            );
            if let Err(reason) = live.open(|h, state| h.on_open(state, &session)) {
                return closing(&mut io, &ctx, live.close(reason), None).await;
            }
            (live, session)
        }
        Start::Woken(wake) => {
            let Some(parked) = table.take(fd) else {
                tracing::error!("a woken framed connection had no state; closing it");
                return Ended::Close(CloseReason::ServerError);
            };
            let id = local.id(fd, parked.generation);
            let timers = parked.timers(local.is_resuming(id));
            let session = Session::new(id, local.clone(), io.shared_peer_certificates());
            let live = Live::new(handler, H::on_close_with_id, parked.state, id, &local);
            let every = send_heartbeats.as_ref().map(|(every, _)| *every);
            match resume(timers, wake, now, due, every, counters) {
                Ok(resumed) => {
                    (due, send_at) = (resumed.due, resumed.send_at);
                    if let (true, Some((_, frame))) = (resumed.send_heartbeat, &send_heartbeats) {
                        session.send(frame.clone());
                    }
                }
                Err(reason) => {
                    // Behind: the rest of the frame the socket took part
                    // of goes first, so the peer's last frame is whole (a
                    // framed protocol has no close frame to send after it).
                    // The rest and the linger share the close's bound.
                    // Raw: over TLS it is records sealed already.
                    let by = CloseBy::new(&ctx);
                    io.write_owed(local.take_unsent(id), &by, counters).await;
                    return closing(&mut io, &ctx, live.close(reason), Some(&by)).await;
                }
            }
            (live, session)
        }
    };
    // Pushes reach an awake connection through its outbound queue (gone
    // when it parks or closes).
    let inbox = local.awake(session.id(), table.wire(listener));
    // Woken behind on a push: the rest of it goes first, before anything
    // the connection or the hub sends it now (its queue holds the pushes
    // since), as an awake write; a slow consumer only if that stalls.
    if let Some(owed) = local.take_owed(session.id()) {
        let limit = || write_limit(&ctx.config);
        if let Err(cut) = io.resume_owed(owed, inbox.as_ref(), limit, counters).await {
            if let Some(inbox) = &inbox {
                inbox.drop_behind();
            }
            let by = CloseBy::new(&ctx);
            io.write_owed(cut.rest, &by, counters).await;
            return closing(&mut io, &ctx, live.close(cut.reason), Some(&by)).await;
        }
    }
    let mut codec = framing.codec();
    if let Err(reason) = flush(
        &mut io,
        &mut codec,
        &session,
        Vec::new(),
        &ctx,
        inbox.as_ref(),
    )
    .await
    {
        return closing(&mut io, &ctx, live.close(reason), None).await;
    }
    if session.is_closing() {
        return closing(&mut io, &ctx, live.close(CloseReason::ServerClosed), None).await;
    }
    let mut buf: Option<BytesMut> = None;
    // Its goodbye at shutdown waits for its turn in a paced drain; until
    // then it serves what wakes it (a push, the peer's frames).
    let mut turn = ctx.shutdown.turn();
    // A socket woken because it is readable goes back to the lot only after
    // it was read: re-parked unread, it would wake again at once, as "hot",
    // and then wait as a task (a second wake, a registration and a timer
    // per heartbeat).
    let mut unread_wake = matches!(start, Start::Woken(wake) if wake.readable());
    // An upgrade asked idle connections to park, and this one's handler
    // does not export its state (`adopt::would_move`): it stays awake, and
    // hears the drain's goodbye as soon as the drain begins. Parked, it
    // stayed in the lot, where the drain gave it the idle grace of a
    // connection that just parked (up to 500 ms) before closing it.
    let mut stays = false;
    // Over TLS, bytes that woke it are decrypted first, as a WebSocket's
    // over TLS are: TLS housekeeping alone (a KeyUpdate) is answered and
    // counts as read, so it parks again at once; part of a record counts
    // as read too, but is a frame begun (`holds_partial_record`), read on
    // as a task under `message_timeout`. Woken to close for the hub
    // (`Hub::close` shut its read side) it reads nothing: the loop's first
    // look at its inbox closes it, where a TLS read would only find the end
    // of the stream and take it for the peer leaving.
    if let (true, MessageIo::Tls(tls)) = (unread_wake && !local.is_kicked(session.id()), &mut io) {
        match prefetch_woken(tls) {
            Ok(read) => unread_wake = read,
            Err(reason) => return closing(&mut io, &ctx, live.close(reason), None).await,
        }
    }
    loop {
        // Every whole frame read so far, in order.
        if let Some(b) = buf.as_mut() {
            loop {
                // A framing error closes the connection, after the
                // handler's last word if it has one (sent by the flush
                // below, best effort, bounded as every write).
                let mut broke = None;
                let frame = match codec.decode(b) {
                    Ok(Some(frame)) => Some(frame),
                    Ok(None) => break,
                    Err(error) => {
                        incr(&ctx.stats.protocol_errors);
                        LimitHit::from(error).count(&ctx.stats);
                        log_framing_error(error, codec.over_limit(error, b), fd);
                        if let Some(last) = last_word(handler, live.state(), error, &ctx) {
                            session.send(last);
                        }
                        broke = Some(CloseReason::Protocol(ProtocolDetail::Framing(error)));
                        None
                    }
                };
                if let Some(frame) = frame {
                    message.ended(Instant::now);
                    lifecycle::count_request();
                    incr(&counters.frames_in);
                    lifecycle::set_state(ConnectionState::Handling);
                    // A panicking handler closes its connection, not the worker.
                    let handling =
                        AssertUnwindSafe(handler.on_message(live.state(), frame, &session))
                            .catch_unwind();
                    // Pushes that come while it awaits go out meanwhile
                    // (`proto/handling.rs`): held, they overflowed the
                    // queue of a peer that reads everything.
                    let draining = Draining::default();
                    let pushing =
                        drain_pushes(&mut io, &mut codec, &ctx, inbox.as_ref(), &draining);
                    let handled = match while_handling(handling, pushing, &draining).await {
                        Ok(handled) => handled,
                        Err(reason) => {
                            give_back(&ctx, &mut buf);
                            return closing(&mut io, &ctx, live.close(reason), None).await;
                        }
                    };
                    match handled {
                        Ok(Some(reply)) => session.send(reply),
                        Ok(None) => {}
                        Err(_panic) => {
                            give_back(&ctx, &mut buf);
                            incr(&ctx.stats.panics);
                            crate::observe::ratelog::panicked(
                                "a framed handler panicked; closing its connection",
                                None,
                            );
                            return closing(&mut io, &ctx, live.close(CloseReason::Panic), None)
                                .await;
                        }
                    }
                }
                let flushed = flush(
                    &mut io,
                    &mut codec,
                    &session,
                    Vec::new(),
                    &ctx,
                    inbox.as_ref(),
                )
                .await;
                if let Some(reason) = broke {
                    give_back(&ctx, &mut buf);
                    return closing(&mut io, &ctx, live.close(reason), None).await;
                }
                if let Err(reason) = flushed {
                    give_back(&ctx, &mut buf);
                    return closing(&mut io, &ctx, live.close(reason), None).await;
                }
                if session.is_closing() {
                    give_back(&ctx, &mut buf);
                    return closing(&mut io, &ctx, live.close(CloseReason::ServerClosed), None)
                        .await;
                }
            }
            if b.is_empty() {
                // Nothing left to decode: the buffer goes back, so a
                // connection holds none between reads.
                give_back(&ctx, &mut buf);
            }
        }

        // Part of a TLS record is part of a frame: it may not park.
        let between_frames =
            codec.between_frames(buf.as_deref().unwrap_or_default()) && !io.holds_partial_record();
        message.track(between_frames, Instant::now);
        if between_frames && turn.came() {
            return say_goodbye(live, &mut io, &mut codec, &session, &ctx, inbox.as_ref()).await;
        }
        // Messages pushed meanwhile go out, also while the peer is in the
        // middle of a frame (ours never interleave with theirs): held until
        // a slow upload's frame ended, they overflowed the queue. A batch
        // at a time: the loop comes back for the rest once the socket took
        // these (`Inbox::take_up_to`).
        if let Some(inbox) = &inbox {
            // Reset for the hub: at once, before what waits for the peer.
            if inbox.inbox.is_kicked() && inbox.inbox.kicked().is_some_and(|k| k.is_reset()) {
                give_back(&ctx, &mut buf);
                return reset(&mut io, live, inbox);
            }
            let flushed = match inbox.inbox.take_up_to(TAKE_AT_ONCE) {
                Ok(pushed) if pushed.is_empty() => Ok(()),
                Ok(pushed) => flush(&mut io, &mut codec, &session, pushed, &ctx, Some(inbox)).await,
                Err(Overflowed) => {
                    inbox.drop_behind();
                    // What was written before is whole frames: it stays
                    // readable (`linger_after_unsent`).
                    linger_after_unsent(&mut io, &CloseBy::new(&ctx)).await;
                    Err(CloseReason::SlowConsumer)
                }
            };
            if let Err(reason) = flushed {
                give_back(&ctx, &mut buf);
                return closing(&mut io, &ctx, live.close(reason), None).await;
            }
            // Closed for the hub, once what was pushed before is written
            // (`kicked` is `None` until all of it is taken).
            if inbox.inbox.kicked().is_some() {
                give_back(&ctx, &mut buf);
                return closing(&mut io, &ctx, live.close(CloseReason::Kicked), None).await;
            }
        }
        // When to park if nothing comes (between frames only).
        let mut park_at = None;
        if between_frames {
            lifecycle::set_state(ConnectionState::Idle);
            // Not once shutdown began: woken during a paced drain, parked
            // again, it would leave the drain (its fd taken from the parked
            // list, its turn dropped: merge review, session 45).
            let can_park = ctx.park.is_some() && !ctx.shutdown.is_started();
            // A push that came while the last ones were written goes first
            // (parking now would drop it with the inbox).
            let inbox_empty = inbox.as_ref().is_none_or(|i| i.inbox.is_empty());
            if !inbox_empty {
                continue;
            }
            // A woken socket that served its frames without ever waiting
            // (a heartbeat on a cold connection) goes straight back.
            if can_park && !unread_wake && io.repark_when_idle() {
                return park(io, live, (&*table, || Some(listener)), (due, send_at), true);
            }
            // An upgrade asked idle connections to park, to move with the
            // lot (as `proto/http1/conn.rs` does): awake, it would close
            // as at shutdown. Only one that moves parks for it.
            let asked = !stays && ctx.shutdown.parking_all_framed();
            if can_park && !unread_wake && !io.is_tls() && asked {
                if would_move(handler, live.state(), &ctx) {
                    return park(
                        io,
                        live,
                        (&*table, || Some(listener)),
                        (due, send_at),
                        false,
                    );
                }
                stays = true;
            }
            park_at = ctx
                .config
                .park_idle_after
                .filter(|_| can_park)
                .map(|t| Instant::now() + t);
        }
        // A socket just woken because it is readable is read at once: the
        // idle wait would only find it ready (`woken.rs`), after setting up
        // its timers for nothing.
        if between_frames && !unread_wake {
            let may_hand_over = park_at.is_some() && !io.is_tls() && !stays;
            let idle = tokio::select! {
                biased;
                ready = poll_fn(|cx| io.poll_read_ready(cx)) => Idle::Readable(ready),
                () = turn.wait() => Idle::Shutdown,
                () = until(due) => Idle::HeartbeatDue,
                () = until(send_at) => Idle::SendHeartbeat,
                () = Awake::pushed(inbox.as_ref()) => Idle::PushFrame,
                () = until(park_at) => Idle::Park,
                // Asked while it waits (the upgrade wakes it, `turn` kept).
                () = asked_to_hand_over(&ctx, may_hand_over) => Idle::HandOver,
            };
            match idle {
                Idle::Readable(Ok(())) => {}
                // A reset between frames is the client leaving.
                Idle::Readable(Err(e)) => {
                    return closing(
                        &mut io,
                        &ctx,
                        live.close(CloseReason::io_between(&e, true)),
                        None,
                    )
                    .await
                }
                Idle::Shutdown => {
                    return say_goodbye(live, &mut io, &mut codec, &session, &ctx, inbox.as_ref())
                        .await
                }
                Idle::HeartbeatDue => {
                    let reason = heartbeat_timed_out(counters, FRAMED_HEARTBEAT);
                    return closing(&mut io, &ctx, live.close(reason), None).await;
                }
                Idle::Park => {
                    return park(
                        io,
                        live,
                        (&*table, || Some(listener)),
                        (due, send_at),
                        false,
                    )
                }
                // The top of the loop writes them, or parks it for the
                // hand-over if it moves.
                Idle::PushFrame | Idle::HandOver => continue,
                Idle::SendHeartbeat => {
                    if let Some((every, frame)) = &send_heartbeats {
                        incr(&counters.heartbeats_sent);
                        session.send(frame.clone());
                        send_at = Some(Instant::now() + *every);
                    }
                    if let Err(reason) = flush(
                        &mut io,
                        &mut codec,
                        &session,
                        Vec::new(),
                        &ctx,
                        inbox.as_ref(),
                    )
                    .await
                    {
                        return closing(&mut io, &ctx, live.close(reason), None).await;
                    }
                    continue;
                }
            }
        }

        // Read, into a pooled buffer.
        lifecycle::set_state(ConnectionState::ReadingBody);
        let b = buf.get_or_insert_with(|| ctx.pool.take());
        // Usually the bytes are there (the socket was readable): then no
        // timer or select is set up for the read.
        let timers = Timers {
            due,
            park_at,
            send_at,
            message: message.at(),
        };
        let read = match poll_once(pin!(io.read_buf(b))) {
            Poll::Ready(read) => Read::Done(Ok(read.map(Some))),
            // Nothing to read between frames after all (tokio reports a
            // freshly accepted socket readable before its first read): the
            // buffer goes back and the wait holds none. Held through the
            // wait, every connection of a ramp kept 8 KiB until it parked, a
            // heap peak whose fragments glibc keeps resident afterwards
            // (bench/FRAMED.md, "Where the bytes of an idle connection go").
            Poll::Pending if between_frames && b.is_empty() => {
                give_back(&ctx, &mut buf);
                wait_read(
                    &mut io,
                    None,
                    (between_frames, !stays),
                    timers,
                    &mut turn,
                    (inbox.as_ref(), &ctx),
                )
                .await
            }
            Poll::Pending => {
                wait_read(
                    &mut io,
                    Some(b),
                    (between_frames, !stays),
                    timers,
                    &mut turn,
                    (inbox.as_ref(), &ctx),
                )
                .await
            }
        };
        // `Err`: the wait ended with nothing read, at a timer: it parks
        // below, unless a timer that passed says otherwise.
        let read = match read {
            Read::Done(read) => read,
            // An upgrade asked idle connections to park (the wait could
            // park, between frames with `park_at` set), and found nothing
            // to read: the top of the loop parks it if it moves.
            Read::HandOver => {
                unread_wake = false;
                if buf.as_ref().is_some_and(BytesMut::is_empty) {
                    give_back(&ctx, &mut buf);
                }
                continue;
            }
            Read::Shutdown => {
                give_back(&ctx, &mut buf);
                return say_goodbye(live, &mut io, &mut codec, &session, &ctx, inbox.as_ref())
                    .await;
            }
            // Nothing was read: the pushes go out (the buffer goes back
            // unless it holds part of a frame).
            Read::PushFrame => {
                if buf.as_ref().is_some_and(BytesMut::is_empty) {
                    give_back(&ctx, &mut buf);
                }
                continue;
            }
        };
        let reason = match read {
            // Readable now: read at the top of the loop, into a buffer.
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(0))) => CloseReason::ClientClosed,
            Ok(Ok(Some(n))) => {
                unread_wake = false;
                lifecycle::count_in(n);
                add(&counters.bytes_in, n as u64);
                message.read(n);
                due = heartbeat.map(|t| Instant::now() + t);
                continue;
            }
            // A reset between frames (awake, or woken from the lot by it)
            // is the client leaving; midway through one, an I/O error.
            Ok(Err(e)) => CloseReason::io_between(&e, between_frames),
            Err(_elapsed) if due.is_some_and(|due| Instant::now() >= due) => {
                heartbeat_timed_out(counters, FRAMED_HEARTBEAT)
            }
            Err(_elapsed) if message.passed(Instant::now()) => {
                message.expired(&ctx.stats, "Builder::message_timeout")
            }
            Err(_elapsed) if between_frames && send_at.is_some_and(|at| Instant::now() >= at) => {
                // Nothing was read, so the buffer is empty; the idle wait
                // sends the heartbeat at once. It must not be skipped as for
                // a wake not yet read: this one was (it found nothing), and
                // skipped, the read would time out at once again, for good.
                unread_wake = false;
                give_back(&ctx, &mut buf);
                continue;
            }
            Err(_elapsed) => {
                give_back(&ctx, &mut buf);
                // A push that came during the read goes out first.
                if inbox.as_ref().is_some_and(|i| !i.inbox.is_empty()) {
                    continue;
                }
                return park(
                    io,
                    live,
                    (&*table, || Some(listener)),
                    (due, send_at),
                    false,
                );
            }
        };
        give_back(&ctx, &mut buf);
        return closing(&mut io, &ctx, live.close(reason), None).await;
    }
}

/// When a read gives up waiting.
struct Timers {
    /// The peer's heartbeat deadline.
    due: Option<Instant>,
    /// When to park (between frames).
    park_at: Option<Instant>,
    /// When the server's heartbeat goes (between frames).
    send_at: Option<Instant>,
    /// When the frame in progress must be complete by (mid-frame).
    message: Option<Instant>,
}

/// Waits for bytes to read into `b` (with `None`, until the socket is
/// readable), bounded by the heartbeat deadline
/// (mid-frame: a peer that stops halfway is as silent as one that stops),
/// mid-frame by the frame's `message_timeout` too, and, between frames, by the park and heartbeat-send times too: a socket
/// woken from the lot reports itself readable without asking the kernel
/// (`woken.rs`), so a hot one may find nothing here and wait in this read.
async fn wait_read(
    io: &mut MessageIo,
    b: Option<&mut BytesMut>,
    (between_frames, may_move): (bool, bool),
    timers: Timers,
    turn: &mut Turn<'_>,
    (inbox, ctx): (Option<&Awake>, &WorkerContext),
) -> Read {
    let wake_at = if between_frames {
        earliest(timers.due, earliest(timers.park_at, timers.send_at))
    } else {
        earliest(timers.due, timers.message)
    };
    // Only a wait that could park (between frames, `park_at` set) parks
    // for an upgrade, and not over TLS (its session cannot move), nor one
    // whose handler keeps it (`may_move` false).
    let may_hand_over = may_move && between_frames && timers.park_at.is_some() && !io.is_tls();
    // Without a buffer (`b` is `None`), only until the socket is readable.
    let read_or_ready = async {
        match b {
            Some(b) => io.read_buf(b).await.map(Some),
            None => poll_fn(|cx| io.poll_read_ready(cx)).await.map(|()| None),
        }
    };
    let reading = async {
        match wake_at {
            Some(at) => tokio::time::timeout_at(at, read_or_ready).await,
            None => Ok(read_or_ready.await),
        }
    };
    // Readiness can be spurious (a freshly accepted socket, a woken one):
    // between frames, an empty read still hears shutdown and pushes. In the
    // middle of a frame, pushes still go out (the shutdown waits for the
    // frame, up to the shutdown timeout).
    if between_frames {
        tokio::select! {
            biased;
            read = reading => Read::Done(read),
            () = turn.wait() => Read::Shutdown,
            () = Awake::pushed(inbox) => Read::PushFrame,
            () = asked_to_hand_over(ctx, may_hand_over) => Read::HandOver,
        }
    } else {
        tokio::select! {
            biased;
            read = reading => Read::Done(read),
            () = Awake::pushed(inbox) => Read::PushFrame,
        }
    }
}

/// Resolves once an upgrade asked awake framed connections to park, to
/// move with the lot (`LocalShutdown::park_all_idle`), if `may` (the
/// connection is idle, may park, and is not over TLS); never otherwise.
/// Registers no waker: the upgrade wakes the connection through its
/// [`Turn`]'s slot, which every wait between frames holds, and the wait
/// looks again. Never once shutdown has begun: a wait first polled after
/// `begin` must not park a connection a paced drain counts on (today the
/// nudged tasks run before `begin`, by the local queue's order; this does
/// not lean on it).
fn asked_to_hand_over(ctx: &WorkerContext, may: bool) -> impl Future<Output = ()> + '_ {
    poll_fn(
        move |_| match may && ctx.shutdown.parking_all_framed() && !ctx.shutdown.is_started() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        },
    )
}

/// Logs a framing error: a frame or line over its limit at info, naming the
/// [`Framing`] setting, at most once per interval per setting and worker (a
/// peer can repeat it at will); malformed input at debug.
fn log_framing_error(error: FramingError, over: Option<OverLimit>, fd: RawFd) {
    match over {
        Some(over) => ratelog::over_limit(over, || crate::message::session::peer_of(fd), "closing"),
        None => tracing::debug!(%error, "framing error; closing"),
    }
}

/// The handler's last frame to a peer that broke the framing
/// ([`FramedHandler::on_framing_error`]); a panic in it is caught, counted
/// and logged (limited), and gives none.
fn last_word<H: FramedHandler>(
    handler: &H,
    state: &mut H::State,
    error: FramingError,
    ctx: &WorkerContext,
) -> Option<Bytes> {
    let called =
        std::panic::catch_unwind(AssertUnwindSafe(|| handler.on_framing_error(state, error)));
    called.unwrap_or_else(|_panic| {
        incr(&ctx.stats.panics);
        ratelog::panicked(
            "a framed handler's on_framing_error panicked; closing its connection",
            None,
        );
        None
    })
}

/// Returns the read buffer, if any, to the pool.
fn give_back(ctx: &WorkerContext, buf: &mut Option<BytesMut>) {
    if let Some(b) = buf.take() {
        ctx.pool.give(b);
    }
}

/// Closes a connection between frames for shutdown, after the messages
/// already pushed to it and the server's goodbye frame, if it has one (best
/// effort: a peer that does not take them within the write bound is closed
/// without them).
async fn say_goodbye<H: FramedHandler>(
    live: Live<'_, H, H::State>,
    io: &mut MessageIo,
    codec: &mut FrameCodec,
    session: &Session,
    ctx: &WorkerContext,
    inbox: Option<&Awake>,
) -> Ended<FramedParked> {
    // Accepted pushes go out before the goodbye, which
    // then goes on its own (`flush` writes the handler's frames first), a
    // batch at a time as always.
    let flushed = loop {
        let pushed = inbox
            .map(|a| a.inbox.take_up_to(TAKE_AT_ONCE).unwrap_or_default())
            .unwrap_or_default();
        let last = pushed.is_empty();
        let flushed = flush(io, codec, session, pushed, ctx, None).await;
        if last || flushed.is_err() {
            break flushed;
        }
    };
    if flushed.is_ok() {
        if let Some(goodbye) = settings(&ctx.config).and_then(|s| s.goodbye.clone()) {
            session.send(goodbye);
            let _ = flush(io, codec, session, Vec::new(), ctx, None).await;
        }
    }
    closing(io, ctx, live.close(CloseReason::Shutdown), None).await
}

/// Resets the connection for the hub ([`Hub::reset`](crate::Hub::reset)):
/// what its queue holds is dropped (counted in `queue_drops`), and its
/// socket closes with `SO_LINGER` 0 when the dispatcher drops it, without
/// a `close_notify` or a linger: the peer reads a reset.
fn reset<H: FramedHandler>(
    io: &mut MessageIo,
    live: Live<'_, H, H::State>,
    inbox: &Awake,
) -> Ended<FramedParked> {
    inbox.drop_behind();
    io.reset_on_close();
    Ended::Close(live.close(CloseReason::Reset))
}

/// The end of a connection closed for `reason`: `close_notify` over TLS
/// for our own closes ([`MessageIo::close_notify`]), within the close's
/// bound: `by`, when a step of the close began it (the rest of a frame
/// owed), else one from now. A slow consumer's close otherwise ran its
/// steps within their own bound already (the rest of the frame under way
/// and the linger, [`behind`], or the linger after an overflow), and the
/// linger's shutdown said `close_notify`: none again (a second bound held
/// a peer that reads nothing for two `linger_timeout`s, counted twice:
/// merge review, session 50). A cleartext connection is simply closed by
/// the dispatcher (no bound to build).
async fn closing(
    io: &mut MessageIo,
    ctx: &WorkerContext,
    reason: CloseReason,
    by: Option<&CloseBy>,
) -> Ended<FramedParked> {
    if matches!(io, MessageIo::Tls(_)) {
        match by {
            Some(by) => io.close_notify(reason, by).await,
            None if reason == CloseReason::SlowConsumer => {}
            None => io.close_notify(reason, &CloseBy::new(ctx)).await,
        }
    }
    Ended::Close(reason)
}

/// Writes the frames the handler sent, framed (from a pooled buffer), then
/// `pushed` (framed by the hub: written from its frames, vectored,
/// `Outbound`). A write that waits is bounded ([`WriteBound`]), and ends
/// when the connection's outbound queue (`awake`) overflows meanwhile: a
/// slow consumer, which gets the rest of the frame under way first
/// ([`behind`]). Counted as the socket takes them; a push that does not
/// go whole, however the write ends, in `queue_drops`.
async fn flush(
    io: &mut MessageIo,
    codec: &mut FrameCodec,
    session: &Session,
    pushed: Vec<PushFrame>,
    ctx: &WorkerContext,
    awake: Option<&Awake>,
) -> Result<(), CloseReason> {
    let frames = session.take_out();
    flush_frames(io, codec, frames, pushed, ctx, awake).await
}

/// While the handler awaits: each batch pushed to the connection is
/// written as it comes ([`flush_frames`], bounded and ended by an
/// overflow as every write), the handler's frames left for after it
/// returns. Ends with `Ok` only after a write once the handler returned
/// ([`Draining::stopped`]), or with the close a write ended in (a slow
/// consumer's after the rest of the frame under way, as [`flush`]'s).
async fn drain_pushes(
    io: &mut MessageIo,
    codec: &mut FrameCodec,
    ctx: &WorkerContext,
    awake: Option<&Awake>,
    draining: &Draining,
) -> Result<(), CloseReason> {
    let Some(inbox) = awake else {
        return std::future::pending().await;
    };
    loop {
        Awake::pushed(awake).await;
        // Reset for the hub: nothing more is written, the pushes queued
        // before it included; the loop drops them once the handler
        // returned (review, session 46: the drain wrote them).
        if inbox.inbox.kicked().is_some_and(|k| k.is_reset()) {
            return std::future::pending().await;
        }
        let pushed = match inbox.inbox.take_up_to(TAKE_AT_ONCE) {
            Ok(pushed) => pushed,
            Err(Overflowed) => {
                // A write under way for `while_handling`: the handler's
                // return must not drop the close half-way (its reply then
                // went into a shut socket, `Io(BrokenPipe)` for
                // `SlowConsumer`, or the linger ran twice: merge review,
                // session 46).
                draining.writing(true);
                inbox.drop_behind();
                linger_after_unsent(io, &CloseBy::new(ctx)).await;
                return Err(CloseReason::SlowConsumer);
            }
        };
        if pushed.is_empty() {
            // Closed for the hub: the loop closes it once the handler
            // returned (a reset too: it waits for the handler in
            // progress, as `Hub::reset` says). Else a wake-up whose push
            // was taken already.
            if inbox.inbox.kicked().is_some() {
                return std::future::pending().await;
            }
            continue;
        }
        draining.writing(true);
        flush_frames(io, codec, Vec::new(), pushed, ctx, awake).await?;
        lifecycle::set_state(ConnectionState::Handling);
        draining.writing(false);
        if draining.stopped() {
            return Ok(());
        }
    }
}

/// [`flush`] of `frames` (the handler's, framed here) and `pushed`.
async fn flush_frames(
    io: &mut MessageIo,
    codec: &mut FrameCodec,
    frames: Vec<Bytes>,
    pushed: Vec<PushFrame>,
    ctx: &WorkerContext,
    awake: Option<&Awake>,
) -> Result<(), CloseReason> {
    if frames.is_empty() && pushed.is_empty() {
        return Ok(());
    }
    let counters = &ctx.stats.messages;
    // Where each reply ends, when there are several (one keeps no list):
    // a slow consumer's close comes after the frame under way.
    let replies = frames.len();
    let mut ends = Vec::new();
    let mut out = BytesMut::new();
    if replies > 0 {
        out = ctx.pool.take();
    }
    for frame in frames {
        if let Err(error) = codec.encode(frame, &mut out) {
            // The handler's bug, not the peer's: the frame cannot be sent
            // as this listener frames. Held to a line per interval: a peer
            // may be able to make the handler do it at will (an echo of a
            // frame at the limit). Counted as a push its framing cannot
            // carry is (the handler hears the close).
            LimitHit::PushUnframable.count(&ctx.stats);
            ratelog::log(Flood::FramedReplyUnframable, |suppressed| {
                tracing::warn!(
                    %error,
                    suppressed,
                    "a framed reply cannot be framed (over Framing::max_reply_bytes: \
                     raise Framing::max_outbound_frame_bytes, or send less); \
                     closing the connection"
                );
            });
            ctx.pool.give(out);
            // The hub's pushes taken with it are lost to the close it
            // makes: counted by that close's cause, their waiters told so
            // now (left to their drop, they heard `Shutdown` once the
            // worker was shutting down, though the handler's frame lost
            // them).
            let reason = CloseReason::ServerError;
            DropCause::of_close(&reason).count_n(counters, pushed.len() as u64);
            for push in &pushed {
                confirm::resolve(push.waiter.as_ref(), Err(Undelivered::Closed));
            }
            return Err(reason);
        }
        if replies > 1 {
            ends.push(out.len());
        }
    }
    let mut pushes = Outbound::default();
    pushes.take(pushed);
    lifecycle::set_state(ConnectionState::Writing);
    // Usually the socket takes it all at once: then no timer is set up.
    // Otherwise the write is bounded (`write_limit`: `write_timeout` for
    // the whole write, or when that is off a stall without progress; on by
    // default, as without a hub no slow-consumer close would end it).
    let mut at = 0;
    let written = io
        .write_out(
            (&out, &mut at),
            &mut pushes,
            awake,
            || write_limit(&ctx.config),
            (&ctx.stats, Flood::FramedWriteTimeout, "a framed peer"),
        )
        .await;
    match written {
        Ok(()) => {
            count_replies((&out, at), &ends, counters);
            pushes.count(counters);
        }
        Err(CloseReason::SlowConsumer) => {
            if let Some(awake) = awake {
                awake.drop_behind();
            }
            behind(io, ctx, (&out, at), &ends, &mut pushes, counters).await;
        }
        // Nothing more goes (a write timeout or a broken socket).
        Err(_) => {
            count_replies((&out, at), &ends, counters);
            pushes.give_up(false, counters);
        }
    }
    if replies > 0 {
        ctx.pool.give(out);
    }
    written
}

/// Counts the replies that went of `out`, written up to `at`: the frames
/// whole in it (`ends`: where each ends, when it holds several), and its
/// bytes.
fn count_replies((out, at): (&[u8], usize), ends: &[usize], counters: &MessageCounters) {
    let frames = match ends {
        [] => usize::from(!out.is_empty() && at == out.len()),
        ends => ends.iter().take_while(|e| **e <= at).count(),
    };
    add(&counters.frames_out, frames as u64);
    add(&counters.bytes_out, at as u64);
}

/// A write stuck on a slow consumer (its queue overflowed meanwhile) is
/// ended on a whole frame: the rest of the frame under way goes, a reply's
/// (`out` written up to `at`; `ends`: where its frames end, when it holds
/// several) or, once all of them went, a push's ([`Outbound::give_up`]),
/// within the close's bound, as a parked one's does (`write_unsent`), and
/// then the close lingers (`linger_after_unsent`). A framed protocol has
/// no close frame: a frame cut short was the peer's last word from the
/// server, which it could take for a frame of the wrong length or a line
/// that ends wrong. What went is counted: its frames and bytes, the pushes
/// among them in `pushes`, the others in `queue_drops`. The rest of the
/// frame and the linger share one bound (`CloseBy`: `linger_timeout` from
/// here), as a close's last writes and linger do (`ConnIo::close`).
async fn behind(
    io: &mut MessageIo,
    ctx: &WorkerContext,
    (out, at): (&[u8], usize),
    ends: &[usize],
    pushes: &mut Outbound,
    counters: &MessageCounters,
) {
    let by = CloseBy::new(ctx);
    let end = end_of_frame_under_way(ends, at, out.len());
    let rest = &out[at..end];
    let mut whole = write_rest(rest, &by, |cx, b| Pin::new(&mut *io).poll_write(cx, b)).await;
    let written = if whole { end } else { at };
    lifecycle::count_out(written - at);
    count_replies((out, written), ends, counters);
    // A push begun (all the replies went before it): its rest.
    if let Some(rest) = pushes.give_up(true, counters) {
        whole = write_unsent_through(&rest, &by, counters, io).await;
    }
    if whole {
        linger_after_unsent(io, &by).await;
    }
}

/// Where the frame under way ends in a buffer written up to `at`: `at`
/// itself when nothing of it was written (or all), else the first frame
/// end at or past it (`ends`, or the buffer's `len` when it is one frame).
fn end_of_frame_under_way(ends: &[usize], at: usize, len: usize) -> usize {
    if at == 0 {
        return 0;
    }
    ends.iter().copied().find(|&end| end >= at).unwrap_or(len)
}
