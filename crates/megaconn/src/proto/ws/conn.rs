//! One WebSocket's life while it is awake: read into a pooled buffer,
//! decode frames, answer pings, call the handler per message, write its
//! replies; between messages wait for more, ping, or park; and the close
//! handshake at the end.
//!
//! ```text
//!   upgraded (on_open) / woken (state out of the side table; a timer
//!   wake sends the ping that was due, or closes a silent peer)
//!        |
//!        v
//!   +-> read (pooled buffer) -> decode -> ping: pong | message: on_message
//!   |                                  | close: echo it, close
//!   |        Hub::close (in the inbox) -> close 1008 (or the caller's code)
//!   |                                  | violation: close 1002/1007/1009
//!   |               between messages, buffers given back to the pool
//!   |                                  v
//!   +--- bytes arrive <---- wait: park_idle_after -> park (state to the side table)
//!                                 ping due        -> ping
//!                                 heartbeat due   -> close (HeartbeatTimeout)
//!                                 shutdown        -> close 1001 (or the route's goodbye)
//! ```
//!
//! In the middle of a message (its fragments so far, part of a frame, or
//! over TLS part of a record) a connection does not park: it reads on,
//! bounded by the heartbeat and by `message_timeout` from the message's
//! first byte seen (1008, `MessageTimeout`), which its bytes do not restart,
//! nor the end of the one before if it began in the same read, unless 8 KiB
//! came meanwhile (`message/deadline.rs`). Silent past its heartbeat
//! timeout, a peer gets a close 1011 if its socket takes some of it at
//! once (then all of it), and the TCP close, its answer not awaited.
//!
//! Pushes from the hub go out between the peer's messages (and in the
//! middle of one, and while the handler awaits: `proto/handling.rs`,
//! before its replies), a batch of about 64 KiB of the connection's queue at a
//! time (`Inbox::take_up_to`), the next once the socket took it; on a
//! plain socket written vectored from the frames the hub shares, after
//! the connection's own buffered frames (`message/outbound.rs`: a peer
//! that stops reading holds references, not a copy of its batch), over
//! TLS copied into the write buffer (the session copies what it seals
//! anyway). A peer whose queue overflows gets the rest of the frame under
//! way and a 1013, both written by the close within its one bound (`linger_timeout`,
//! the linger included; a parked one woken behind shares that bound
//! between the rest of its push and the close, as an awake one whose
//! socket took part of a push does).
//!
//! Counted as the socket takes them (`Unwritten`, `Outbound`): `frames_out`
//! and `bytes_out` the replies and pushes written whole, `pushes` the
//! pushes among them; the pushes that never go whole, whatever closes the
//! connection (a slow consumer's close, a write timeout, a peer gone,
//! shutdown: not begun, cut, or still queued), in `queue_drops`. (They
//! counted as they were taken from the queue: a frame lost at the close
//! counted as sent; until session 41 only a slow consumer's were counted
//! as dropped, the others in neither counter.)
//!
//! The server's close: a close frame, then the peer's close frame awaited
//! for `close_timeout` (what else it sends meanwhile is passed by its frame
//! headers, holding no buffer), then the TCP close (the server closes
//! first, RFC 6455 §7.1.1): `closing.rs`.

use std::future::{poll_fn, Future};
use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::conn::context::WorkerContext;
use crate::conn::io::{read_more, CloseBy, ConnIo, WriteBound, WriteLimit};
use crate::conn::pool::{BUFFER_CAPACITY, MAX_POOLED_CAPACITY};
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::poll_once;
use crate::message::deadline::MessageDeadline;
use crate::message::hub::{DropCause, Overflowed, Unsent, TAKE_AT_ONCE};
use crate::message::io::{prefetch_woken, reset_asked, MessageIo};
use crate::message::live::Live;
use crate::message::outbound::{Outbound, PushFrame};
use crate::message::session::Session;
use crate::message::wake::{heartbeat_timed_out, write_unsent, write_unsent_through};
use crate::message::worker::Awake;
use crate::message::MessageSettings;
use crate::observe::close::{CloseReason, ProtocolDetail};
use crate::observe::lifecycle::{self, ConnectionState};
use crate::observe::ratelog::{self, Flood};
use crate::observe::rooms::{closer_without_peer_frame, Closer, RoomCounters, ABNORMAL, NO_STATUS};
use crate::observe::stats::{add, incr, MessageCounters};
use crate::proto::handling::{while_handling, Draining};
use crate::proto::ws::closing::{close_handshake, last_word, last_word_code, FrameEnds};
use crate::proto::ws::deflate::{Codec, Deflate};
use crate::proto::ws::frame::{self, Decoder, Event, Out, Violation};
use crate::proto::ws::handler::{on_closed, ErasedRoute, WebSocketHandler, WsClose, WsSession};
use crate::proto::ws::route::{Route, Settings};
use crate::proto::ws::{
    parked_fd, poll_write_unsent, Start, Tables, WsIo, WsParked, INTERNAL_ERROR, MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
};
use crate::proto::{earliest, parked, until, Ended};

/// The setting a WebSocket's heartbeat timeout comes from, for its log line.
const WS_HEARTBEAT: &str = "WebSocketRoute::heartbeat_timeout";

/// What ended an idle wait.
enum Idle {
    Readable(std::io::Result<()>),
    Park,
    HeartbeatDue,
    SendPing,
    PushFrame,
    Shutdown,
}

/// What ended a read between messages.
enum Read {
    /// `Ok(None)`: between messages, part of a TLS record came, and nothing
    /// else (a message begun: see `between`).
    Done(Result<Option<std::io::Result<usize>>, tokio::time::error::Elapsed>),
    PushFrame,
    Shutdown,
}

/// What the connection does after an event.
enum Next {
    Go,
    /// Close: the peer's close was echoed (`None`), or send ours.
    Close(CloseReason, Option<(u16, String)>),
    /// The peer began the close with this close frame (code and reason;
    /// `None`: it carried no code), which was echoed: the close is
    /// [`CloseReason::ClientClosed`], and its handler's `on_close_with`
    /// hears the frame. Carried here, out of the loop, it is in the
    /// connection's future only while it closes: a variable of the loop's
    /// made every awake WebSocket's future 40 B larger (session 47).
    PeerClosed(Option<(u16, crate::Utf8Bytes)>),
}

/// The close sent on shutdown: the route's goodbye
/// ([`WebSocketRoute::goodbye`](crate::WebSocketRoute::goodbye); 1001,
/// going away, with no reason by default).
fn going_away(settings: &Settings) -> Next {
    Next::Close(CloseReason::Shutdown, Some(settings.goodbye.clone()))
}

/// Serves a WebSocket until it closes (`on_close` has run) or parks (its
/// state is in the side table, keyed by the returned socket).
pub(crate) async fn serve<H: WebSocketHandler>(
    route: Arc<Route<H>>,
    io: WsIo,
    ctx: Rc<WorkerContext>,
    start: Start,
) -> Ended<WsParked> {
    let settings = &route.settings;
    // Over TLS, its own side tables (and its session parks beside them).
    let tables = Tables::of_io(&ctx, &io);
    let counters = &ctx.stats.messages;
    let mut count = CloseCount(Some(&counters.rooms));
    let fd = parked_fd(&io);
    let now = Instant::now();
    // When the peer must have sent something by, and when our next ping goes.
    let mut due = settings.heartbeat_timeout.map(|t| now + t);
    let mut send_at = settings.ping_interval.map(|t| now + t);
    let mut conn = ConnIo::new(io, ctx.clone());
    // permessage-deflate, as the handshake agreed (kept across parking).
    let deflate = match start {
        Start::Upgraded(_, deflate, _) | Start::Woken(_, deflate) => deflate,
    };
    let codec = deflate.map(|d| (&*tables.codec, d));
    // A socket woken because it is readable goes back to the lot only after
    // it was read: re-parked unread, it would wake again at once, as "hot",
    // and then wait as a task until `park_idle_after` (a second wake, a
    // registration, a timer and the task's memory per ping; the framed
    // protocol had the same bug).
    let mut unread_wake = matches!(start, Start::Woken(wake, _) if wake.readable());
    // Woken only to take pongs (the answers to our pings): it parks again at
    // once even if the lot calls the wake "hot" (a pong comes right after the
    // ping we parked behind, and waiting as a task for `park_idle_after`
    // would keep 1 in 15 idle WebSockets awake at a 30 s ping interval).
    let mut only_pongs = matches!(start, Start::Woken(..));
    // We sent our own ping during this wake: the peer's next bytes (its pong,
    // or its own heartbeat crossing our ping) answer us, so the lot must not
    // take them for a chatty peer ("hot", kept as a task for
    // `park_idle_after`): this wake parks as a cold one would.
    let mut pinged = false;
    // What a push it fell behind on while parked left owed, to write first.
    let mut owed = None;
    let (mut live, session) = match start {
        Start::Upgraded(read_ahead, _, opened) => {
            if !read_ahead.is_empty() {
                conn.rbuf_and_io().0.extend_from_slice(&read_ahead);
            }
            let id = tables.local.new_id(fd);
            let session = WsSession::new(Session::new(
                id,
                tables.local.clone(),
                conn.io.shared_peer_certificates(),
            ));
            let mut live = Live::new(
                &route.handler,
                on_closed::<H>,
                // The upgrade hook's state (of this route: its type).
                opened
                    .and_then(|state| state.downcast::<H::State>().ok())
                    .map_or_else(H::State::default, |state| *state),
                id,
                &tables.local,
            );
            if let Err(reason) = live.open(|h, state| h.on_open(state, &session)) {
                count.count(Closer::Server, ABNORMAL);
                return Ended::Close(live.close(reason));
            }
            (live, session)
        }
        Start::Woken(wake, _) => {
            // `serve_woken` found it in this table (by its variant).
            let Some(parked) = tables.take::<H::State>(fd) else {
                tracing::error!("a woken WebSocket had no state; closing it");
                // Every native WebSocket close counts once (`RoomStats`).
                count.count(Closer::Server, ABNORMAL);
                return Ended::Close(CloseReason::ServerError);
            };
            let id = tables.local.id(fd, parked.generation);
            let timers = parked.timers(tables.local.is_resuming(id));
            let session = WsSession::new(Session::new(
                id,
                tables.local.clone(),
                conn.io.shared_peer_certificates(),
            ));
            let live = Live::new(
                &route.handler,
                on_closed::<H>,
                parked.state,
                id,
                &tables.local,
            );
            match crate::message::wake::resume(
                timers,
                wake,
                now,
                due,
                settings.ping_interval,
                counters,
            ) {
                Ok(resumed) => {
                    (due, send_at) = (resumed.due, resumed.send_at);
                    if resumed.send_heartbeat {
                        pinged = true;
                        frame::encode(conn.wbuf(), Out::Ping, b"");
                    }
                }
                Err(reason) => {
                    // Behind: the rest of the frame the socket took part
                    // of goes first (raw: over TLS it is records sealed
                    // already), then the 1013.
                    let unsent = tables.local.take_unsent(id);
                    let behind = unsent.map(|unsent| (unsent, Raw::Sealed));
                    close_behind(&mut conn, behind, reason, (counters, &mut count)).await;
                    return Ended::Close(live.close(reason));
                }
            }
            // Over TLS, bytes that woke it are decrypted first: TLS
            // housekeeping alone (a KeyUpdate) is answered and counts as
            // read, so it parks again at once; part of a record counts as
            // read too, but is a message begun: it is read on as a task,
            // under `message_timeout` (as HTTP/1.1 over TLS serves one
            // under `read_header_timeout`).
            // Woken to close for the hub (`Hub::close`: its read side was
            // shut) it reads nothing: the loop's first look at its inbox
            // closes it, and a TLS read would only find the end of the
            // stream and take it for the client leaving.
            // Owing sealed records, it writes them before its session
            // writes anything of its own (a prefetch may answer the peer):
            // what woke it is read after them.
            owed = tables.local.take_owed(id);
            let kicked = tables.local.is_kicked(id);
            if let (true, false, None, Either::Left(MessageIo::Tls(tls))) =
                (wake.readable(), kicked, &owed, &mut conn.io)
            {
                match prefetch_woken(tls) {
                    Ok(read) => unread_wake = read,
                    Err(reason) => {
                        // The peer's reset or end found by the prefetch: its
                        // close without a frame, as the awake read path
                        // counts it (review, session 47).
                        count.count(Closer::Peer, ABNORMAL);
                        return Ended::Close(live.close(reason));
                    }
                }
            }
            (live, session)
        }
    };
    // Pushes reach an awake connection through its outbound queue (gone
    // when it parks or closes).
    let awake = tables
        .local
        .awake(session.id(), tables.table::<H::State>().wire(0));
    // Woken behind on a push: the rest of it goes first, before the ping
    // due and the pushes since (in its queue), as an awake write; a slow
    // consumer (its 1013 after that rest) only if that stalls.
    if let (Some(owed), Either::Left(io)) = (owed, &mut conn.io) {
        let limit = || write_limit(&ctx.config, settings.heartbeat_timeout);
        if let Err(cut) = io.resume_owed(owed, awake.as_ref(), limit, counters).await {
            drop(awake);
            // Reset for the hub while it wrote: nothing more, no close
            // frame (`resume_owed` made the socket's close a reset).
            if cut.reason == CloseReason::Reset {
                count.count(Closer::Server, ABNORMAL);
                return Ended::Close(live.close(cut.reason));
            }
            let rest = cut.rest.map(|rest| (rest, Raw::Sealed));
            close_behind(&mut conn, rest, cut.reason, (counters, &mut count)).await;
            return Ended::Close(live.close(cut.reason));
        }
    }
    let mut decoder = Decoder::with_deflate(deflate.map(|_| tables.codec.clone()));
    let mut message = MessageDeadline::new(settings.message_timeout);
    let mut out = Writing::default();
    // Its goodbye at shutdown waits for its turn in a paced drain; until
    // then it serves what wakes it (a push, the peer's ping).
    let mut turn = ctx.shutdown.turn();
    let next = 'serve: loop {
        // Every frame whole in the buffer, in order.
        while conn.rbuf_len() > 0 {
            let decoded = decoder.decode(conn.rbuf_and_io().0, settings.limits);
            let event = match decoded {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(violation) => break 'serve violated(&ctx, violation, fd),
            };
            only_pongs &= matches!(event, Event::Pong);
            // A message (or a control frame outside one) ended: the next
            // one's time starts with its own first byte.
            if decoder.between_messages() {
                message.ended(Instant::now);
            }
            let acting = on_event(
                &mut conn,
                &mut live,
                (&session, &mut out),
                (codec, awake.as_ref(), settings.heartbeat_timeout),
                event,
            );
            match acting.await {
                Next::Go => {}
                close => break 'serve close,
            }
        }
        if let Some(close) = queued(&mut conn, &session, &mut out.unwritten, codec) {
            break 'serve close;
        }
        // Part of a TLS record is part of a message: parked with it, the
        // connection was woken by each byte of a trickle, and its heartbeat
        // restarted, for good. On a caller's TLS, which never parks, no
        // byte of it reaches here: only the heartbeat bounded it, unless
        // the stream says it holds one (`Transport::holds_partial_input`).
        let between =
            decoder.between_messages() && conn.rbuf_len() == 0 && !conn.io.holds_partial_input();
        message.track(between, Instant::now);
        // Messages pushed meanwhile go out, also while the peer is in the
        // middle of a message (ours never interleave with theirs): held
        // until a slow upload's message ended, they overflowed the queue.
        // A batch at a time: the loop comes back for the rest once the
        // socket took these (`Inbox::take_up_to`).
        if let Some(awake) = awake.as_ref() {
            // Reset for the hub (`Hub::reset`): at once, no close frame,
            // what waits dropped; the close is a reset.
            if awake.inbox.is_kicked() && awake.inbox.kicked().is_some_and(|k| k.is_reset()) {
                awake.drop_behind();
                if let Either::Left(io) = &conn.io {
                    io.reset_on_close();
                }
                break 'serve Next::Close(CloseReason::Reset, None);
            }
            match awake.inbox.take_up_to(TAKE_AT_ONCE) {
                // Written from the hub's frames, not copied (`Outbound`);
                // so are confirmed pushes over any transport, whose waiters
                // hear as their frames go (and what follows them, in order).
                Ok(pushed) if conn.io.is_write_vectored() || out.takes_whole(&pushed) => {
                    out.pushes.take(pushed)
                }
                // Over TLS (and a caller's transport that does not write
                // vectored) one write a frame would seal a record each, and
                // the session copies what it takes anyway.
                Ok(pushed) => {
                    let waiters = out.copy_pushes(&mut conn, pushed);
                    debug_assert!(waiters.is_empty(), "confirmed ones go whole");
                }
                Err(Overflowed) => break 'serve Next::Close(CloseReason::SlowConsumer, None),
            }
            // Closed for the hub, after what was pushed before (`kicked` is
            // `None` until all of it is taken): its close frame follows them.
            if let Some(kick) = awake.inbox.kicked() {
                // (`Hub::close_with` took only a code that may be sent.)
                break 'serve Next::Close(CloseReason::Kicked, Some((kick.code, kick.reason())));
            }
        }
        let flushed = flush(
            &mut conn,
            settings.heartbeat_timeout,
            awake.as_ref(),
            (&mut out, counters),
        );
        if let Err(close) = flushed.await {
            break 'serve close;
        }
        // Buffers left empty go back to the pool, also in the middle of a
        // message (the write buffer after a pong or a reply; the read
        // buffer when the decoder took all it held): a peer that keeps one
        // begun held both, for as long as its message had time. But not,
        // in the middle of one, a read buffer a large frame grew.
        let grown = (!between).then(|| kept_grown(&mut conn)).flatten();
        conn.buffers.release();
        if grown.is_some() {
            conn.buffers.rbuf = grown;
        }
        let mut park_at = None;
        if between {
            if turn.came() {
                break 'serve going_away(settings);
            }
            // A push that came while the last ones were written goes first
            // (parking now would drop it with the queue).
            if awake.as_ref().is_some_and(|a| !a.inbox.is_empty()) {
                continue;
            }
            lifecycle::set_state(ConnectionState::Idle);
            // Not once shutdown began: a connection woken during a paced
            // drain (a message, a push, a timer) parked again would leave
            // the drain: its fd was taken from the parked list, and its turn
            // goes with it (merge review, session 45). Awake, it keeps its
            // place among the awake, which the drain serves first.
            let can_park = ctx.park.is_some()
                && matches!(conn.io, Either::Left(_))
                && !ctx.shutdown.is_started();
            // A woken socket that served its frames (or sent its ping)
            // without waiting goes straight back.
            if can_park && !unread_wake && (only_pongs || conn.io.repark_when_idle()) {
                // After our ping or the peer's pong the exchange is ours,
                // not the peer's chatter: the next wake is judged cold. So
                // is the first park of a connection upgraded on a socket
                // served bare from its accept (it answered no wake).
                let chatty = !(pinged || only_pongs) && conn.io.reparks_a_wake();
                let parked = park(&route, conn, live, &tables, deflate, (due, send_at), chatty);
                return count.parked(parked);
            }
            park_at = ctx
                .config
                .park_idle_after
                .filter(|_| can_park)
                .map(|t| Instant::now() + t);
            let idle = tokio::select! {
                biased;
                ready = poll_fn(|cx| conn.io.poll_read_ready(cx)) => Idle::Readable(ready),
                () = turn.wait() => Idle::Shutdown,
                () = until(due) => Idle::HeartbeatDue,
                () = until(send_at) => Idle::SendPing,
                () = Awake::pushed(awake.as_ref()) => Idle::PushFrame,
                () = until(park_at) => Idle::Park,
            };
            match idle {
                Idle::Readable(Ok(())) => {}
                // A reset between messages is the client leaving.
                Idle::Readable(Err(e)) => {
                    break 'serve Next::Close(CloseReason::io_between(&e, true), None)
                }
                Idle::Shutdown => break 'serve going_away(settings),
                Idle::HeartbeatDue => {
                    let reason = heartbeat_timed_out(counters, WS_HEARTBEAT);
                    break 'serve Next::Close(reason, None);
                }
                Idle::Park => {
                    let parked = park(&route, conn, live, &tables, deflate, (due, send_at), false);
                    return count.parked(parked);
                }
                // The top of the loop writes them.
                Idle::PushFrame => continue,
                Idle::SendPing => {
                    incr(&counters.heartbeats_sent);
                    frame::encode(conn.wbuf(), Out::Ping, b"");
                    send_at = settings.ping_interval.map(|t| Instant::now() + t);
                    continue;
                }
            }
        }
        // Read. Mid-message the heartbeat and the message's time bound the
        // wait; between messages the park time and the ping (a woken socket reports itself
        // readable without asking the kernel, so a hot one may wait here,
        // and still hears shutdown and pushes).
        lifecycle::set_state(ConnectionState::ReadingBody);
        let wake_at = if between {
            earliest(due, earliest(park_at, send_at))
        } else {
            earliest(due, message.at())
        };
        let read = {
            let (rbuf, io) = conn.rbuf_and_io();
            let reading = async {
                let reading = poll_fn(|cx| {
                    let read = read_more(io, rbuf, cx);
                    // Its bound starts now, not when the wait next ends (a
                    // ping, the heartbeat: a caller's TLS never parks).
                    if read.is_pending() && between && io.holds_partial_input() {
                        return Poll::Ready(None);
                    }
                    read.map(Some)
                });
                match wake_at {
                    Some(at) => tokio::time::timeout_at(at, reading).await,
                    None => Ok(reading.await),
                }
            };
            if between {
                tokio::select! {
                    biased;
                    read = reading => Read::Done(read),
                    () = turn.wait() => Read::Shutdown,
                    () = Awake::pushed(awake.as_ref()) => Read::PushFrame,
                }
            } else {
                // Mid-message, pushes still go out (the shutdown waits for
                // the message, up to the shutdown timeout).
                tokio::select! {
                    biased;
                    read = reading => Read::Done(read),
                    () = Awake::pushed(awake.as_ref()) => Read::PushFrame,
                }
            }
        };
        let read = match read {
            Read::Done(read) => read,
            Read::Shutdown => break 'serve going_away(settings),
            Read::PushFrame => continue,
        };
        match read {
            // The top of the loop starts the message's time.
            Ok(None) => continue,
            Ok(Some(Ok(0))) => break 'serve Next::Close(CloseReason::ClientClosed, None),
            Ok(Some(Ok(n))) => {
                unread_wake = false;
                add(&counters.bytes_in, n as u64);
                message.read(n);
                let now = Instant::now();
                due = settings.heartbeat_timeout.map(|t| now + t);
                // A peer just heard from needs no ping for a while: pings go
                // to silent peers only (a client with its own heartbeat gets
                // none, and its wake is one, not two).
                send_at = settings.ping_interval.map(|t| now + t);
            }
            // A reset between messages (awake, or woken from the lot by it)
            // is the client leaving; midway through one, an I/O error.
            Ok(Some(Err(e))) => {
                break 'serve Next::Close(CloseReason::io_between(&e, between), None)
            }
            Err(_elapsed) if due.is_some_and(|due| Instant::now() >= due) => {
                let reason = heartbeat_timed_out(counters, WS_HEARTBEAT);
                break 'serve Next::Close(reason, None);
            }
            Err(_elapsed) if message.passed(Instant::now()) => {
                let reason = message.expired(&ctx.stats, "WebSocketRoute::message_timeout");
                let why = "message timeout".to_owned();
                break 'serve Next::Close(reason, Some((POLICY_VIOLATION, why)));
            }
            // Nothing came: the idle wait pings or parks.
            Err(_elapsed) => conn.buffers.release(),
        }
    };
    drop((awake, turn));
    // The peer's close frame, for its handler's `on_close_with` (shared
    // bytes: no copy) and the close-code counter.
    let (reason, ours, peer_close) = match next {
        Next::Close(reason, ours) => (reason, ours, None),
        Next::PeerClosed(frame) => {
            let frame = frame.unwrap_or((NO_STATUS, Default::default()));
            (CloseReason::ClientClosed, None, Some(frame))
        }
        Next::Go => unreachable!("the loop ends with a close"),
    };
    // A reset (`Hub::reset`) writes nothing more: not what the write
    // buffer holds, no close frame, no lingering read of the peer's input
    // (and over TLS no `close_notify`). The socket's drop sends the RST
    // (`reset_on_close` set `SO_LINGER` 0). Pushes taken and not yet gone
    // count as dropped; confirmed ones hear `Closed` by their waiters'
    // drop. Before, it ran the close below: a flush bounded by the close
    // timeout and, with a peer mid-frame, a FIN and up to 2 s of reading
    // (merge review, session 46).
    if matches!(reason, CloseReason::Reset) {
        count.count(Closer::Server, ABNORMAL);
        drop(out.pushes.give_up(false, counters));
        out.unwritten
            .settle(conn.wbuf_len(), false, (counters, DropCause::Closed));
        return Ended::Close(live.close(reason));
    }
    // A slow consumer whose socket took part of a push: the rest of it
    // goes (a frame cannot be cut into), then the 1013, as for a parked
    // one woken behind.
    if let Some(rest) = out.rest.take() {
        let behind = Some((rest, Raw::Stream));
        close_behind(&mut conn, behind, reason, (counters, &mut count)).await;
        return Ended::Close(live.close(reason));
    }
    // Pushes taken and not written (a kick's close follows them) go from
    // the write buffer, which the close writes; confirmed ones hear
    // whether it went.
    let mut waiters = Vec::new();
    if !out.pushes.is_empty() {
        let left = out.pushes.drain(counters);
        waiters = out.copy_pushes(&mut conn, left);
    }
    // Flushes what is left. After our close frame the close handshake has
    // read the peer's input up to its close frame (or close_timeout), which
    // is what a lingering close would do: it is not done twice. What the
    // buffer held before our close frame (`owed`) counts if it all went.
    let owed = conn.wbuf_len();
    // Without a close frame of ours, the last word for `reason`, if any.
    let said = match &ours {
        Some(_) => 0,
        None => last_word(&mut conn, reason),
    };
    // Counted by who began the close: the peer's frame, ours, our last
    // word (if it went out), or none. Counted now, as the close is decided:
    // a connection dropped while it closes (a forced shutdown in the close
    // handshake) counted what its peer got.
    let sent = ours.as_ref().map(|(code, _)| *code);
    let (closer, code) = match (&peer_close, sent.or(last_word_code(reason, said))) {
        (Some((code, _)), _) => (Closer::Peer, *code),
        (None, sent) => closer_without_peer_frame(reason, sent),
    };
    count.count(closer, code);
    let (io_reason, appended) = match ours {
        Some((code, why)) => {
            // After a violation the peer's next bytes are the rest of what
            // broke the protocol: not frames to look for its close in
            // (RFC 6455 §7.1.7: after failing the connection, process none
            // of its data, a close frame included). A frame or message over
            // a size limit broke no rule of the framing (1009 is a close,
            // not a failure): the read buffer still begins at that frame's
            // header (or, for a message that inflated past the limit, after
            // the frame), so its payload is counted off by its length and
            // the peer's close answered at once. Waiting the whole
            // `close_timeout` there kept mainstream clients (python
            // `websockets`, which waits for the server to close first) 5 s.
            // After any violation a read that is one whole close frame
            // alone (the client's answer to ours) still ends the wait: it
            // is not processed as data, only taken as the peer being done
            // (`closing.rs`, session 46).
            let find_close = !matches!(reason, CloseReason::Protocol(_)) || code == MESSAGE_TOO_BIG;
            let timeout = settings.close_timeout;
            let appended = Box::pin(close_handshake(
                &mut conn,
                (code, &why),
                timeout,
                find_close,
            ))
            .await;
            (CloseReason::ServerClosed, appended)
        }
        None => (reason, said),
    };
    let flushed = Box::pin(conn.close(io_reason)).await;
    let went = conn.wbuf_len() <= appended;
    let cause = DropCause::of_close(&reason);
    out.unwritten.settle(owed, went, (counters, cause));
    // Confirmed pushes hear `Ok` once their bytes are in the kernel: on a
    // bare socket, once they left the buffer; over TLS (or a caller's
    // transport) they may wait in the stream after that, until a flush
    // that the close's tells of. (Only the buffer was looked at: a TLS
    // close whose flush timed out told them `Ok`; review, session 46.
    // The counters keep the buffer's word: `Hub::send_confirmed`.)
    if went && (flushed || !holds_after_write(&conn.io)) {
        for waiter in waiters {
            waiter.resolve(Ok(()));
        }
    }
    let Some((code, why)) = peer_close else {
        return Ended::Close(live.close(reason));
    };
    let peer = Some((code, why.as_str()));
    Ended::Close(live.close_by(reason, |handler, id, state, reason| {
        handler.on_close_with(state, &WsClose::new(id, reason, peer))
    }))
}

/// A native WebSocket's count in `megaconn_ws_closes_total`, owed from
/// the start of its serving: counted once, by the close path as it decides
/// the close (before it writes or waits for anything), or else by this
/// guard's drop, when the connection's future is dropped before it closed
/// (a forced shutdown at `shutdown_timeout`, a panic unwinding through
/// it): as the server's close without a close frame (1006), which is what
/// its peer gets then, the socket closed with nothing more written. A
/// connection that parks owes nothing (the lot counts its close). Before
/// session 48 the dropped ones counted nowhere, and the counter's sum fell
/// short of the WebSockets closed. (`None`: counted, or parked; 8 bytes.)
struct CloseCount<'a>(Option<&'a RoomCounters>);

impl CloseCount<'_> {
    /// The close: `closer` began it, with `code`; counted if not yet.
    fn count(&mut self, closer: Closer, code: u16) {
        if let Some(rooms) = self.0.take() {
            rooms.ws_closed(closer, code);
        }
    }

    /// What [`park`] ended in: parked, nothing is owed; closed instead (its
    /// kind could not be claimed, its socket could not be taken back), no
    /// close frame went, from whoever's close it was.
    fn parked(mut self, ended: Ended<WsParked>) -> Ended<WsParked> {
        match &ended {
            Ended::Close(reason) => {
                let (closer, code) = closer_without_peer_frame(*reason, None);
                self.count(closer, code);
            }
            _ => self.0 = None,
        }
        ended
    }
}

impl Drop for CloseCount<'_> {
    fn drop(&mut self) {
        self.count(Closer::Server, ABNORMAL);
    }
}

/// Whether bytes written to `io` may wait in it, not yet in the kernel,
/// until its flush: a TLS session's sealed records, or a caller's own
/// transport (which may buffer). A bare socket holds none.
fn holds_after_write(io: &WsIo) -> bool {
    !matches!(io, Either::Left(MessageIo::Plain(_) | MessageIo::Tcp(_)))
}

/// How the rest of a slow consumer's push is written at its close.
enum Raw {
    /// Raw on the socket, under any TLS stream: a parked connection's,
    /// sealed already (`poll_write_unsent`).
    Sealed,
    /// Through the stream: an awake connection's, from its batch.
    Stream,
}

/// Closes a slow consumer: the rest of the push its socket took part of
/// (`behind`, if any) goes first, then the 1013 (if the rest went), then
/// the TCP close, all within the close's one bound (`CloseBy`,
/// `linger_timeout`: the rest, the 1013 and the linger share it), awake or
/// woken behind alike.
async fn close_behind(
    conn: &mut ConnIo<WsIo>,
    behind: Option<(Unsent, Raw)>,
    reason: CloseReason,
    (counters, count): (&MessageCounters, &mut CloseCount<'_>),
) {
    let by = CloseBy::new(&conn.ctx);
    let whole = match behind {
        Some((unsent, Raw::Sealed)) => {
            let io = &mut conn.io;
            let poll_write =
                |cx: &mut std::task::Context<'_>, b: &[u8]| poll_write_unsent(io, cx, b);
            write_unsent(&unsent, &by, counters, poll_write).await
        }
        // Flushed too: over TLS the rest is sealed, not yet sent.
        Some((unsent, Raw::Stream)) => {
            write_unsent_through(&unsent, &by, counters, &mut conn.io).await
        }
        None => true,
    };
    let said = if whole { last_word(conn, reason) } else { 0 };
    let sent = last_word_code(reason, said);
    let (closer, code) = closer_without_peer_frame(reason, sent);
    count.count(closer, code);
    Box::pin(conn.close_within(reason, &by)).await;
}

/// What the connection writes and has not counted yet.
#[derive(Debug, Default)]
struct Writing {
    /// Where the frames of the write buffer end, noted as a flush begins.
    ends: FrameEnds,
    /// The data frames in the write buffer.
    unwritten: Unwritten,
    /// Pushes written from the hub's frames, after the write buffer.
    pushes: Outbound,
    /// The rest of a push a slow consumer's socket took part of, which its
    /// close writes before the 1013.
    rest: Option<Unsent>,
}

impl Writing {
    /// Copies `pushes` into the write buffer, after what it holds; the
    /// waiters of confirmed ones are returned, to resolve once the buffer
    /// went (none: no allocation).
    fn copy_pushes(
        &mut self,
        conn: &mut ConnIo<WsIo>,
        pushes: Vec<PushFrame>,
    ) -> Vec<crate::message::confirm::Waiter> {
        self.unwritten.pushed(conn.wbuf_len(), pushes.len());
        let mut waiters = Vec::new();
        for framed in pushes {
            conn.wbuf().extend_from_slice(&framed.bytes);
            waiters.extend(framed.waiter);
        }
        waiters
    }

    /// Whether `pushed` goes to [`Outbound`] whole rather than copied: it
    /// holds a confirmed push, whose waiter hears when its own frame went,
    /// or pushes are there already, which it must follow.
    fn takes_whole(&self, pushed: &[PushFrame]) -> bool {
        !self.pushes.is_empty() || pushed.iter().any(|p| p.waiter.is_some())
    }
}

/// The data frames (replies, pushes) the write buffer holds that are not
/// counted yet: `frames_out` and `pushes` count each once the socket took
/// it whole, `bytes_out` the bytes it took. (They counted as they were put
/// in the buffer, taken from the queue: what a slow consumer's close then
/// dropped counted as sent, and its pushes stayed in `pushes`.) Pushes that
/// did not go count in `queue_drops`, whatever closed the connection, as
/// the messages its queue still held do (`Awake`'s drop). Over TLS "the
/// socket" is the TLS session: records it holds when a slow consumer is
/// cut count as written (bounded by the session's buffer).
#[derive(Debug, Default)]
struct Unwritten {
    frames: u64,
    pushes: u64,
    /// Where in the buffer its pushes begin (they follow everything else).
    pushes_from: Option<usize>,
}

impl Unwritten {
    /// The handler's replies, `n` of them, were put in the buffer.
    fn replies(&mut self, n: usize) {
        self.frames += n as u64;
    }

    /// `n` pushes were put in the buffer, from `at` on.
    fn pushed(&mut self, at: usize, n: usize) {
        if n > 0 {
            self.pushes_from.get_or_insert(at);
            self.frames += n as u64;
            self.pushes += n as u64;
        }
    }

    /// The socket took the whole buffer, `bytes` long (none: nothing to
    /// count, as when a flush wrote pushes alone).
    fn went(&mut self, bytes: usize, counters: &MessageCounters) {
        if bytes == 0 {
            return;
        }
        add(&counters.frames_out, self.frames);
        add(&counters.pushes, self.pushes);
        add(&counters.bytes_out, bytes as u64);
        *self = Unwritten::default();
    }

    /// A flush stopped after `written` bytes of the buffer `ends` noted:
    /// the frames they hold whole are counted; of the rest, `kept` bytes
    /// stay in the buffer (the rest of the frame under way, which a slow
    /// consumer's close still writes), whose frame stays owed, and the
    /// others are dropped: the pushes among them count in `queue_drops`,
    /// for `cause` (a slow consumer's, or the close's; all `closed` until
    /// session 48).
    fn cut(
        &mut self,
        (written, kept): (usize, usize),
        ends: &FrameEnds,
        (counters, cause): (&MessageCounters, DropCause),
    ) {
        let (frames, pushes) = ends.data_within((0, written), self.pushes_from);
        add(&counters.frames_out, frames);
        add(&counters.pushes, pushes);
        add(&counters.bytes_out, written as u64);
        let under_way = (written, written + kept);
        let (owed, owed_pushes) = ends.data_within(under_way, self.pushes_from);
        let dropped = self.pushes.saturating_sub(pushes + owed_pushes);
        cause.count_n(counters, dropped);
        *self = Unwritten {
            frames: owed,
            pushes: owed_pushes,
            pushes_from: (owed_pushes > 0).then_some(0),
        };
    }

    /// The close is over: what the buffer held before it (`owed` bytes)
    /// went, all of it, or not (then the pushes in it are dropped, for
    /// `cause`).
    fn settle(
        &mut self,
        owed: usize,
        went: bool,
        (counters, cause): (&MessageCounters, DropCause),
    ) {
        if owed == 0 {
            return;
        }
        if went {
            self.went(owed, counters);
        } else {
            cause.count_n(counters, self.pushes);
        }
    }
}

/// Writes what is queued. A peer that stops reading must not hold the
/// connection for good, deaf to its heartbeat and its pushes: the write is
/// bounded ([`WriteLimit`]: `write_timeout` for the whole write, or when
/// that is off a stall without progress, bounded by the route's
/// `heartbeat` timeout, else by `write_stall_timeout`), and a push queue
/// that overflows meanwhile closes it as a slow consumer at once. Usually
/// the socket takes it all in one go, and no timer is set up.
async fn flush(
    conn: &mut ConnIo<WsIo>,
    heartbeat: Option<std::time::Duration>,
    awake: Option<&Awake>,
    (out, counters): (&mut Writing, &MessageCounters),
) -> Result<(), Next> {
    let started = conn.wbuf_len();
    if started == 0 && out.pushes.is_empty() {
        return Ok(());
    }
    // Its frames, should the write be cut short: to count what went whole
    // and, for a slow consumer, to give way to the 1013 after the frame
    // under way (`last_word`). (One header read, for one frame.)
    if started > 0 {
        out.ends.note(conn.wbuf());
    }
    let at_once = poll_once(pin!(poll_fn(|cx| poll_out(conn, &mut out.pushes, cx))));
    let flushed = match at_once {
        Poll::Ready(Ok(())) => {
            out.unwritten.went(started, counters);
            out.pushes.count(counters);
            return Ok(());
        }
        Poll::Ready(Err(e)) => Err(Next::Close(CloseReason::io(&e), None)),
        Poll::Pending => flush_stuck(conn, &mut out.pushes, heartbeat, awake).await,
    };
    let left = conn.wbuf_len();
    match &flushed {
        Ok(()) => {
            out.unwritten.went(started, counters);
            out.pushes.count(counters);
        }
        Err(Next::Close(CloseReason::SlowConsumer, _)) => {
            // The rest of the frame under way goes, then the 1013; the
            // backlog behind it would only hold the close back. The frame
            // under way is the buffer's, or else (all of the buffer went)
            // a push's.
            let rest = out.ends.rest_of_frame(left);
            if let Some(wbuf) = conn.buffers.wbuf.as_mut() {
                wbuf.truncate(rest);
            }
            let slow = (counters, DropCause::SlowConsumer);
            out.unwritten.cut((started - left, rest), &out.ends, slow);
            out.rest = out.pushes.give_up(true, counters);
        }
        Err(_) => {
            // Nothing more goes (a write timeout or a broken socket).
            let closed = (counters, DropCause::Closed);
            out.unwritten.cut((started - left, 0), &out.ends, closed);
            if let Some(wbuf) = conn.buffers.wbuf.as_mut() {
                wbuf.clear();
            }
            out.pushes.give_up(false, counters);
        }
    }
    flushed
}

/// Writes the write buffer, then the pushes taken from the queue, from the
/// hub's frames (`Outbound`), vectored; then flushes the stream.
fn poll_out(
    conn: &mut ConnIo<WsIo>,
    pushes: &mut Outbound,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<()>> {
    if pushes.is_empty() {
        return conn.poll_flush(cx);
    }
    let ConnIo { io, buffers, .. } = conn;
    let mut at = 0;
    let head = buffers.wbuf.as_deref().unwrap_or_default();
    let written = pushes.poll_write(Pin::new(&mut *io), cx, head, &mut at);
    if let Some(wbuf) = buffers.wbuf.as_mut() {
        wbuf.advance(at);
    }
    std::task::ready!(written)?;
    Pin::new(io).poll_flush(cx)
}

/// How a WebSocket's write that has to wait is bounded: `write_timeout`,
/// else a stall bounded by the route's `heartbeat` timeout, else by
/// `write_stall_timeout` ([`WriteLimit::resolve`]).
fn write_limit(
    config: &crate::conn::config::Config,
    heartbeat: Option<std::time::Duration>,
) -> WriteLimit {
    WriteLimit::resolve(
        config.write_timeout,
        heartbeat.map(|t| (t, "WebSocketRoute::heartbeat_timeout")),
        MessageSettings::write_stall_timeout(config),
    )
}

/// [`flush`] once the socket did not take it all at once: bounded, and
/// ended by an overflow of the push queue or by a
/// [`Hub::reset`](crate::Hub::reset), at once: the socket made to reset
/// (`reset_on_close`), and the close writes nothing more. (A reset waited
/// for the write bound, then closed as `WriteTimeout` with a FIN: review,
/// session 46.)
async fn flush_stuck(
    conn: &mut ConnIo<WsIo>,
    pushes: &mut Outbound,
    heartbeat: Option<std::time::Duration>,
    awake: Option<&Awake>,
) -> Result<(), Next> {
    let io_error = |e: std::io::Error| Next::Close(CloseReason::io(&e), None);
    lifecycle::set_state(ConnectionState::Writing);
    let limit = write_limit(&conn.ctx.config, heartbeat);
    // The socket's descriptor, unless it is a caller's own transport (-1).
    let socket = Some(parked_fd(&conn.io)).filter(|fd| *fd >= 0);
    let mut bound = WriteBound::new(limit, socket);
    let mut overflowed = pin!(Awake::overflowed(awake));
    let mut reset = pin!(reset_asked(awake));
    poll_fn(|cx| {
        let before = (conn.wbuf_len(), pushes.written());
        if let Poll::Ready(flushed) = poll_out(conn, pushes, cx) {
            return Poll::Ready(flushed.map_err(io_error));
        }
        if reset.as_mut().poll(cx).is_ready() {
            if let Either::Left(io) = &conn.io {
                io.reset_on_close();
            }
            return Poll::Ready(Err(Next::Close(CloseReason::Reset, None)));
        }
        if overflowed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Next::Close(CloseReason::SlowConsumer, None)));
        }
        let progressed = conn.wbuf_len() < before.0 || pushes.written() > before.1;
        if bound.poll_passed(cx, progressed) {
            bound.passed(
                Some(&conn.ctx.stats),
                Flood::WsWriteTimeout,
                "a WebSocket peer",
            );
            return Poll::Ready(Err(Next::Close(CloseReason::WriteTimeout, None)));
        }
        Poll::Pending
    })
    .await
}

/// The read buffer, empty, if a frame grew it past what the pool keeps:
/// in the middle of a message it is kept for the next frames (given back,
/// the pool freed it, and the next large frame grew one again from 8 KiB:
/// a message of 8 fragments of 1 MiB, each read whole, cost 67
/// reallocations where 11 do). It is at most `max_frame_bytes`, which a
/// frame arriving could hold anyway, and goes between messages.
fn kept_grown(conn: &mut ConnIo<WsIo>) -> Option<BytesMut> {
    conn.buffers.rbuf.take_if(|rbuf| {
        // Its room back from where reading left it (no copy: it is empty),
        // to see how large it is.
        rbuf.is_empty() && {
            rbuf.reserve(BUFFER_CAPACITY);
            rbuf.capacity() > MAX_POOLED_CAPACITY
        }
    })
}

/// Acts on one decoded event.
async fn on_event<H: WebSocketHandler>(
    conn: &mut ConnIo<WsIo>,
    live: &mut Live<'_, H, H::State>,
    (session, out): (&WsSession, &mut Writing),
    (codec, awake, heartbeat): (Option<(&Codec, Deflate)>, Option<&Awake>, Option<Duration>),
    event: Event,
) -> Next {
    match event {
        Event::Ping(payload) => frame::encode(conn.wbuf(), Out::Pong, &payload),
        Event::Pong => {}
        Event::Close(peer) => {
            // Echo the peer's code (§5.5.1); the TCP close follows.
            match &peer {
                Some((code, _)) => frame::encode_close(conn.wbuf(), *code, ""),
                None => frame::encode(conn.wbuf(), Out::Close, b""),
            }
            return Next::PeerClosed(peer);
        }
        Event::Message(message) => {
            lifecycle::count_request();
            incr(&conn.ctx.stats.messages.frames_in);
            lifecycle::set_state(ConnectionState::Handling);
            // A panicking handler closes its connection, not the worker.
            let handling =
                AssertUnwindSafe(live.handler().on_message(live.state(), message, session))
                    .catch_unwind();
            // Pushes that come while it awaits go out meanwhile
            // (`proto/handling.rs`): held, they overflowed the queue of a
            // peer that reads everything.
            let draining = Draining::default();
            let ctx = conn.ctx.clone();
            let counters = &ctx.stats.messages;
            let pushing = drain_pushes(conn, heartbeat, awake, (out, counters), &draining);
            let handled = match while_handling(handling, pushing, &draining).await {
                Ok(handled) => handled,
                Err(close) => return close,
            };
            match handled {
                Ok(Some(reply)) => session.send(reply),
                Ok(None) => {}
                Err(_panic) => {
                    incr(&conn.ctx.stats.panics);
                    crate::observe::ratelog::panicked(
                        "a WebSocket handler panicked; closing its connection",
                        None,
                    );
                    return Next::Close(CloseReason::Panic, Some((INTERNAL_ERROR, String::new())));
                }
            }
            if let Some(close) = queued(conn, session, &mut out.unwritten, codec) {
                return close;
            }
        }
    }
    Next::Go
}

/// While the handler awaits: each batch pushed to the connection is
/// written as it comes, bounded as every write ([`flush`]: a write bound,
/// ended by an overflow of the queue), after what the write buffer holds
/// (pongs and replies to the messages before, in order). Ends with
/// `Ok` only after a write once the handler returned
/// ([`Draining::stopped`]), or with the close a write ended in. Raw
/// pushes between compressed replies need nothing of the compressor:
/// without context takeover each compressed message stands alone
/// (`deflate.rs`), and replies are encoded after the handler returns, so
/// after every push it wrote.
async fn drain_pushes(
    conn: &mut ConnIo<WsIo>,
    heartbeat: Option<Duration>,
    awake: Option<&Awake>,
    (out, counters): (&mut Writing, &MessageCounters),
    draining: &Draining,
) -> Result<(), Next> {
    let Some(inbox) = awake.map(|a| &a.inbox) else {
        return std::future::pending().await;
    };
    loop {
        Awake::pushed(awake).await;
        // Reset for the hub: nothing more is written, the pushes queued
        // before it included; the loop drops them once the handler
        // returned (review, session 46: the drain wrote them).
        if inbox.kicked().is_some_and(|k| k.is_reset()) {
            return std::future::pending().await;
        }
        let pushed = match inbox.take_up_to(TAKE_AT_ONCE) {
            Ok(pushed) => pushed,
            Err(Overflowed) => return Err(Next::Close(CloseReason::SlowConsumer, None)),
        };
        if pushed.is_empty() {
            // Closed for the hub: the loop closes it once the handler
            // returned (its close frame after the replies). Else a
            // wake-up whose push was taken already.
            if inbox.kicked().is_some() {
                return std::future::pending().await;
            }
            continue;
        }
        draining.writing(true);
        // As the loop does: confirmed pushes go whole, so their waiters
        // hear as their frames go. Copied, their waiters were dropped here
        // and heard `Closed` for a push then written (merge review,
        // session 46).
        if conn.io.is_write_vectored() || out.takes_whole(&pushed) {
            out.pushes.take(pushed);
        } else {
            let waiters = out.copy_pushes(conn, pushed);
            debug_assert!(waiters.is_empty(), "confirmed ones go whole");
        }
        flush(conn, heartbeat, awake, (&mut *out, counters)).await?;
        lifecycle::set_state(ConnectionState::Handling);
        draining.writing(false);
        if draining.stopped() {
            return Ok(());
        }
    }
}

/// Encodes what the handler queued (compressed, with permessage-deflate);
/// its close, if it asked for one.
fn queued(
    conn: &mut ConnIo<WsIo>,
    session: &WsSession,
    unwritten: &mut Unwritten,
    codec: Option<(&Codec, Deflate)>,
) -> Option<Next> {
    let out = session.take_out();
    unwritten.replies(out.len());
    for message in out {
        frame::encode_message(conn.wbuf(), &message, codec);
    }
    session
        .take_closing()
        .map(|close| Next::Close(CloseReason::ServerClosed, Some(close)))
}

/// A frame broke the protocol: counted, logged, closed with its code. A
/// limit hit is logged at info, naming the setting, at most once per
/// interval per setting and worker (a peer can repeat it at will), as an
/// `axum_ws` socket's 1009 is; other violations at debug.
fn violated(ctx: &WorkerContext, violation: Violation, fd: RawFd) -> Next {
    let code = violation.code();
    incr(&ctx.stats.protocol_errors);
    if let Violation::TooBig(too_big) = violation {
        too_big.limit_hit().count(&ctx.stats);
        let over = too_big.over_limit();
        ratelog::over_limit(
            over,
            || crate::message::session::peer_of(fd),
            "closing with 1009",
        );
    } else {
        tracing::debug!(
            code,
            reason = violation.reason(),
            "WebSocket protocol error; closing"
        );
    }
    Next::Close(
        CloseReason::Protocol(ProtocolDetail::WebSocket(code)),
        Some((code, violation.reason().to_owned())),
    )
}

/// Gives the socket up for parking, its state kept in the side table (and
/// over TLS, its session beside it, for the dispatcher to keep).
fn park<H: WebSocketHandler>(
    route: &Arc<Route<H>>,
    conn: ConnIo<WsIo>,
    live: Live<'_, H, H::State>,
    tables: &Tables,
    deflate: Option<Deflate>,
    timers: (Option<Instant>, Option<Instant>),
    at_once: bool,
) -> Ended<WsParked> {
    // No buffer is kept: `release` gave back the empty ones, and a
    // connection parks only between messages with nothing buffered.
    let ConnIo { io, buffers, .. } = conn;
    drop(buffers);
    // A side-table entry tells its kind in 16 bits: a worker with
    // WebSockets of 65,536 routes parked at once (one built per request,
    // against the rule on `WebSocketRoute`) closes instead of parking.
    let claim = || {
        let route: Arc<dyn ErasedRoute> = route.clone();
        let variant = tables.claim(&route, deflate);
        if variant.is_none() {
            tracing::error!(
                "a worker has WebSockets of 65,536 WebSocketRoute values parked; closing this one instead (build each WebSocketRoute once, not per request)"
            );
        }
        variant
    };
    parked::park(
        io,
        live,
        (&tables.table::<H::State>(), claim),
        timers,
        at_once,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    /// A slow consumer's flush cut short: of four pushes in the write
    /// buffer, the one the socket took whole is a push, the one under way
    /// stays owed, and the two behind it are the slow consumer's drops
    /// (`cause="slow_consumer"`); any other close's are the close's.
    /// (Both counted `closed`: session 48.)
    #[test]
    fn pushes_a_cut_drops_count_by_the_cut_s_cause() {
        for cause in [DropCause::SlowConsumer, DropCause::Closed] {
            let frame = |i: u8| [&[0x82, 100][..], &[i; 100]].concat();
            let wbuf: Vec<u8> = (0..4).flat_map(frame).collect();
            let mut ends = FrameEnds::default();
            ends.note(&wbuf);
            let mut unwritten = Unwritten::default();
            unwritten.pushed(0, 4);
            let counters = MessageCounters::default();
            // One frame whole and half the next: 51 bytes of it left.
            let written = 102 + 51;
            let kept = ends.rest_of_frame(wbuf.len() - written);
            assert_eq!(kept, 51);
            unwritten.cut((written, kept), &ends, (&counters, cause));
            assert_eq!(counters.pushes.load(Relaxed), 1);
            let (slow, closed) = (
                counters.queue_drops_slow_consumer.load(Relaxed),
                counters.queue_drops.load(Relaxed),
            );
            match cause {
                DropCause::SlowConsumer => assert_eq!((slow, closed), (2, 0)),
                _ => assert_eq!((slow, closed), (0, 2)),
            }
            assert_eq!(unwritten.pushes, 1, "the one under way stays owed");
        }
    }
}
