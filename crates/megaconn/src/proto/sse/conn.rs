//! One event stream's life while it is awake: `on_open` (handed over) or
//! its route out of the side table (woken), then write what is due (the
//! handler's first events, the hub's pushes, a heartbeat comment) and wait
//! for more, or park.
//!
//! ```text
//!   handed over (on_open) / woken (a timer wake: the comment that was due;
//!   behind on a push: the rest of it first, then on as any wake)
//!        |
//!        v
//!   +-> write: events sent by on_open, pushes (a batch), a comment
//!   |     Hub::close (in the inbox) / Session::close / shutdown
//!   |        -> (the route's goodbye at shutdown) the last chunk, close
//!   |     woken and cold, nothing to wait for -> straight back to the lot
//!   |                                  v
//!   +--- pushed <---- wait: park_idle_after -> park (route to the side table)
//!                           ping due        -> comment
//!                           readable        -> the client's end, reset or
//!                                              bytes: close
//! ```
//!
//! Pushes are written as framed and WebSocket connections write theirs
//! (`message/outbound.rs`: vectored from the events the hub shares, a batch
//! of about 64 KiB at a time), bounded as HTTP/1.1's writes are (there is
//! no heartbeat from the peer to bound them by): `write_timeout`, else
//! `write_stall_timeout`; a queue that overflows meanwhile closes the
//! stream as a slow consumer after the rest of the event under way, within
//! the close's one bound (`linger_timeout`, its linger included). Counted as the socket
//! takes them: `pushes`, `frames_out` and `bytes_out` the pushes written
//! whole; the others, whatever closes the stream, in `queue_drops`.

use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::conn::context::WorkerContext;
use crate::conn::io::CloseBy;
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::poll_once;
use crate::conn::Wake;
use crate::message::hub::{ConnectionId, Overflowed, TAKE_AT_ONCE};
use crate::message::io::MessageIo;
use crate::message::live::Live;
use crate::message::outbound::{Outbound, PushFrame};
use crate::message::session::Session;
use crate::message::wake::{linger_after_unsent, resume, write_unsent_through};
use crate::message::worker::Awake;
use crate::message::MessageSettings;
use crate::observe::close::{CloseReason, ProtocolDetail};
use crate::observe::ratelog::Flood;
use crate::observe::stats::{add, incr};
use crate::proto::parked::park;
use crate::proto::sse::event::{self, COMMENT, LAST_CHUNK};
use crate::proto::sse::route::ErasedRoute;
use crate::proto::sse::{side_table, variant, SseParked, CHUNKED};
use crate::proto::{until, Ended};

/// How a stream comes to be served.
pub(crate) enum Start {
    /// Handed over after the route's `200`: its route, its framing, the
    /// request's head for `on_open`, and what the client sent after it.
    Opened {
        route: ErasedRoute,
        chunked: bool,
        /// Boxed: the future of every stream would carry its size.
        request: Option<Box<Parts>>,
        read_ahead: Bytes,
    },
    /// Woken from the parking lot: its route waits in the side table.
    Woken(Wake),
}

/// A stream's state as the message layer keeps it: its route (the handler
/// is the route's; `Live`'s handler is nothing).
type LiveStream<'a> = Live<'a, (), ErasedRoute>;

/// The handler's `on_close`, as `Live` calls it.
pub(crate) fn on_close(_: &(), id: ConnectionId, route: ErasedRoute, reason: CloseReason) {
    route.handler.on_close(id, reason);
}

/// What ended an idle wait.
enum Idle {
    Readable(io::Result<()>),
    Park,
    SendComment,
    PushFrame,
    Shutdown,
}

/// Serves a stream until it closes (`on_close` has run) or parks (its
/// route is in the side table, keyed by the returned socket).
pub(crate) async fn serve(
    mut io: MessageIo,
    ctx: Rc<WorkerContext>,
    start: Start,
) -> Ended<SseParked> {
    let (local, table) = side_table(&ctx, io.is_tls());
    let counters = &ctx.stats.messages;
    let fd = io.raw_fd();
    let now = Instant::now();
    // What is due before the pushes: the handler's events, a comment, all
    // framed already.
    let mut head = BytesMut::new();
    let (mut live, session, chunked, mut send_at, mut unread_wake) = match start {
        Start::Opened {
            route,
            chunked,
            request,
            read_ahead,
        } => {
            // Bytes behind the request: a pipelined request, which an
            // endless response would never answer.
            if !read_ahead.is_empty() {
                return Ended::Close(client_sent_bytes(&ctx));
            }
            let id = local.new_id(fd);
            let session = Session::new(id, local.clone(), io.shared_peer_certificates());
            let send_at = route.settings.ping_interval.map(|every| now + every);
            let mut live = Live::new(&(), on_close, route, id, &local);
            let request =
                request.unwrap_or_else(|| Box::new(http::Request::new(()).into_parts().0));
            let opened = live.open(|_, route| route.handler.on_open(&request, &session));
            drop(request);
            if let Err(reason) = opened {
                return closing(&mut io, &ctx, live.close(reason), None).await;
            }
            (live, session, chunked, send_at, false)
        }
        Start::Woken(wake) => {
            let Some(parked) = table.take(fd) else {
                tracing::error!("a woken event stream had no state; closing it");
                return Ended::Close(CloseReason::ServerError);
            };
            let id = local.id(fd, parked.generation);
            let chunked = parked.variant == CHUNKED;
            let every = parked.state.settings.ping_interval;
            let timers = parked.timers(local.is_resuming(id));
            let live = Live::new(&(), on_close, parked.state, id, &local);
            let session = Session::new(id, local.clone(), io.shared_peer_certificates());
            match resume(timers, wake, now, None, every, counters) {
                Ok(resumed) => {
                    if resumed.send_heartbeat {
                        event::frame(COMMENT, chunked, &mut head);
                    }
                    (live, session, chunked, resumed.send_at, wake.readable())
                }
                Err(reason) => {
                    // Behind: the rest of the event its socket took part
                    // of goes first, then the close (no last chunk: the
                    // client reconnects either way, and its socket is full).
                    let by = CloseBy::new(&ctx);
                    io.write_owed(local.take_unsent(id), &by, counters).await;
                    return closing(&mut io, &ctx, live.close(reason), Some(&by)).await;
                }
            }
        }
    };
    let every = live.state().settings.ping_interval;
    // Pushes reach an awake stream through its outbound queue (gone when
    // it parks or closes).
    let inbox = local.awake(session.id(), table.wire(variant(chunked)));
    // Woken behind on a push: the rest of that event goes first, before
    // the comment due and the pushes since (in its queue), as an awake
    // write; a slow consumer only if that stalls.
    if let Some(owed) = local.take_owed(session.id()) {
        let limit = || MessageSettings::write_limit_without_heartbeat(&ctx.config);
        if let Err(cut) = io.resume_owed(owed, inbox.as_ref(), limit, counters).await {
            if let Some(inbox) = &inbox {
                inbox.drop_behind();
            }
            let by = CloseBy::new(&ctx);
            io.write_owed(cut.rest, &by, counters).await;
            return closing(&mut io, &ctx, live.close(cut.reason), Some(&by)).await;
        }
    }
    // Its farewell at shutdown waits for its turn in a paced drain; until
    // then it writes what is pushed.
    let mut turn = ctx.shutdown.turn();
    loop {
        for text in session.take_out() {
            let text = String::from_utf8_lossy(&text);
            event::frame(&event::data_event(&text), chunked, &mut head);
        }
        // Reset for the hub (`Hub::reset`): at once, what waits dropped,
        // no last chunk; the close is a reset.
        if let Some(a) = inbox.as_ref().filter(|a| a.inbox.is_kicked()) {
            if a.inbox.kicked().is_some_and(|k| k.is_reset()) {
                a.drop_behind();
                io.reset_on_close();
                return Ended::Close(live.close(CloseReason::Reset));
            }
        }
        let pushed = match inbox.as_ref().map(|a| a.inbox.take_up_to(TAKE_AT_ONCE)) {
            None => Vec::new(),
            Some(Ok(pushed)) => pushed,
            Some(Err(Overflowed)) => {
                if let Some(inbox) = &inbox {
                    inbox.drop_behind();
                }
                // What went before is whole events: it stays readable.
                let by = CloseBy::new(&ctx);
                linger_after_unsent(&mut io, &by).await;
                let reason = live.close(CloseReason::SlowConsumer);
                return closing(&mut io, &ctx, reason, Some(&by)).await;
            }
        };
        if !head.is_empty() || !pushed.is_empty() {
            let written = write(&mut io, &head, pushed, &ctx, inbox.as_ref()).await;
            head.clear();
            if let Err((reason, by)) = written {
                return closing(&mut io, &ctx, live.close(reason), by.as_ref()).await;
            }
        }
        // Closed for the hub, once what was pushed before is written
        // (`kicked` is `None` until all of it is taken).
        if inbox.as_ref().is_some_and(|a| a.inbox.kicked().is_some()) {
            return end(&mut io, &ctx, live, chunked, None, CloseReason::Kicked).await;
        }
        if session.is_closing() {
            return end(
                &mut io,
                &ctx,
                live,
                chunked,
                None,
                CloseReason::ServerClosed,
            )
            .await;
        }
        if turn.came() {
            let goodbye = live.state().settings.goodbye.clone();
            return end(&mut io, &ctx, live, chunked, goodbye, CloseReason::Shutdown).await;
        }
        // A push that came while the last ones were written goes first
        // (parking now would drop it with the inbox).
        if inbox.as_ref().is_some_and(|a| !a.inbox.is_empty()) {
            continue;
        }
        // Woken because it is readable: the client's end, its reset or its
        // bytes, each a close (a Hub::close that woke it was seen above).
        if unread_wake {
            unread_wake = false;
            match client_input(&mut io, &ctx) {
                Some(reason) => return closing(&mut io, &ctx, live.close(reason), None).await,
                None => continue,
            }
        }
        // Not once shutdown began: woken during a paced drain, parked
        // again, it would leave the drain (its fd taken from the parked
        // list, its turn dropped: merge review, session 45).
        let can_park = ctx.park.is_some() && !ctx.shutdown.is_started();
        // A woken stream that wrote what woke it without waiting (the
        // comment that was due) goes straight back, and so does a new one
        // handed over bare (its head and first events written at once);
        // another waits, and parks once idle for `park_idle_after`.
        let straight_back = can_park && io.repark_when_idle();
        if !straight_back {
            let park_at = ctx
                .config
                .park_idle_after
                .filter(|_| can_park)
                .map(|t| Instant::now() + t);
            let idle = tokio::select! {
                biased;
                ready = poll_fn(|cx| io.poll_read_ready(cx)) => Idle::Readable(ready),
                () = turn.wait() => Idle::Shutdown,
                () = until(send_at) => Idle::SendComment,
                () = Awake::pushed(inbox.as_ref()) => Idle::PushFrame,
                () = until(park_at) => Idle::Park,
            };
            match idle {
                Idle::Readable(Ok(())) => match client_input(&mut io, &ctx) {
                    Some(reason) => return closing(&mut io, &ctx, live.close(reason), None).await,
                    None => continue,
                },
                Idle::Readable(Err(e)) => {
                    let reason = CloseReason::io_between(&e, true);
                    return closing(&mut io, &ctx, live.close(reason), None).await;
                }
                // The top of the loop says goodbye, or writes them.
                Idle::Shutdown | Idle::PushFrame => continue,
                Idle::SendComment => {
                    incr(&counters.heartbeats_sent);
                    event::frame(COMMENT, chunked, &mut head);
                    send_at = every.map(|every| Instant::now() + every);
                    continue;
                }
                Idle::Park => {}
            }
        }
        // Parked at once after a wake-up: a wake within `park_idle_after`
        // then means a busy stream (not after the hand-over: its next
        // wake is a wake like any other).
        let at_once = straight_back && io.reparks_a_wake();
        let parking = (&*table, || Some(variant(chunked)));
        return park(io, live, parking, (None, send_at), at_once);
    }
}

/// Bytes from the client after its request: counted as a protocol error.
fn client_sent_bytes(ctx: &WorkerContext) -> CloseReason {
    incr(&ctx.stats.protocol_errors);
    tracing::debug!("an event stream's client sent bytes; closing it");
    CloseReason::Protocol(ProtocolDetail::Sse)
}

/// Reads what made the socket readable, without waiting: the client's end
/// of stream or reset, or bytes, each the reason to close; `None` when
/// there was nothing after all (readiness can be spurious, and over TLS a
/// record may carry only TLS's own messages).
fn client_input(io: &mut MessageIo, ctx: &WorkerContext) -> Option<CloseReason> {
    let mut scratch = [0u8; 64];
    match poll_once(pin!(io.read(&mut scratch))) {
        Poll::Pending => None,
        Poll::Ready(Ok(0)) => Some(CloseReason::ClientClosed),
        Poll::Ready(Ok(_)) => Some(client_sent_bytes(ctx)),
        Poll::Ready(Err(e)) => Some(CloseReason::io_between(&e, true)),
    }
}

/// Ends the stream for `reason`: the `goodbye` event if any, then (chunked)
/// the last chunk, so the client sees a response that completed; best
/// effort within the close's bound (`linger_timeout`).
async fn end(
    io: &mut MessageIo,
    ctx: &WorkerContext,
    live: LiveStream<'_>,
    chunked: bool,
    goodbye: Option<Bytes>,
    reason: CloseReason,
) -> Ended<SseParked> {
    let mut last = BytesMut::new();
    if let Some(goodbye) = goodbye {
        event::frame(&goodbye, chunked, &mut last);
    }
    if chunked {
        last.extend_from_slice(LAST_CHUNK);
    }
    let by = (!last.is_empty()).then(|| CloseBy::new(ctx));
    if let Some(by) = &by {
        let mut at = 0;
        let mut none = Outbound::default();
        let writing = poll_fn(|cx| io.poll_out(&mut none, cx, &last, &mut at));
        let _ = by.within(writing).await;
    }
    closing(io, ctx, live.close(reason), by.as_ref()).await
}

/// The end of a stream closed for `reason`: `close_notify` over TLS for
/// our own closes ([`MessageIo::close_notify`]), within the close's bound:
/// `by`, when a step of the close began it (the rest of an event, the
/// linger, the last chunk), so a peer that reads nothing holds the close
/// for one `linger_timeout`, counted once (it held it for two, counted
/// twice: merge review, session 50); else one from now. A cleartext one is
/// simply closed by the dispatcher (no bound to build).
async fn closing(
    io: &mut MessageIo,
    ctx: &WorkerContext,
    reason: CloseReason,
    by: Option<&CloseBy>,
) -> Ended<SseParked> {
    if matches!(io, MessageIo::Tls(_)) {
        match by {
            Some(by) => io.close_notify(reason, by).await,
            None => io.close_notify(reason, &CloseBy::new(ctx)).await,
        }
    }
    Ended::Close(reason)
}

/// Writes `head` (events and comments framed already), then `pushed`
/// (framed by the hub: written from its events, vectored, `Outbound`). A
/// write that waits is bounded as an HTTP/1.1 response's
/// (`write_timeout`, else `write_stall_timeout`), and ends when the
/// stream's outbound queue (`awake`) overflows meanwhile: a slow consumer,
/// which gets the rest of the push under way first. Counted as the socket
/// takes them; a push that does not go whole, however the write ends, in
/// `queue_drops`.
async fn write(
    io: &mut MessageIo,
    head: &[u8],
    pushed: Vec<PushFrame>,
    ctx: &WorkerContext,
    awake: Option<&Awake>,
) -> Result<(), (CloseReason, Option<CloseBy>)> {
    let counters = &ctx.stats.messages;
    let mut pushes = Outbound::default();
    pushes.take(pushed);
    let mut at = 0;
    let written = io
        .write_out(
            (head, &mut at),
            &mut pushes,
            awake,
            || MessageSettings::write_limit_without_heartbeat(&ctx.config),
            (
                &ctx.stats,
                Flood::SseWriteTimeout,
                "an event stream's client",
            ),
        )
        .await;
    add(&counters.bytes_out, at as u64);
    match written {
        Ok(()) => {
            pushes.count(counters);
            Ok(())
        }
        Err(CloseReason::SlowConsumer) => {
            if let Some(awake) = awake {
                awake.drop_behind();
            }
            // The rest of the push under way, then the close lingers
            // (within one bound), so what the client read ends on a whole
            // event. (A comment or the handler's events cut short are let
            // go: the client drops an event cut by the close.)
            let by = CloseBy::new(ctx);
            let mut whole = true;
            if let Some(rest) = pushes.give_up(true, counters) {
                whole = write_unsent_through(&rest, &by, counters, io).await;
            }
            if whole {
                linger_after_unsent(io, &by).await;
            }
            // The close's `close_notify` within the same bound.
            Err((CloseReason::SlowConsumer, Some(by)))
        }
        Err(reason) => {
            pushes.give_up(false, counters);
            Err((reason, None))
        }
    }
}
