//! A parked cleartext framed connection moving to the next process at a
//! zero-downtime upgrade (`conn/handover.rs` moves the socket and its
//! [`ParkedState`](crate::ParkedState)): here, what rides in the state's
//! payload and both ends of it.
//!
//! - [`export`] (the old process, as `ParkingLot::take_portable` asks each
//!   parked connection): the handler's state as bytes
//!   ([`FramedHandler::export`]), the connection's topic names and its
//!   heartbeat timers, taken out of the side table; the handler then hears
//!   `on_close` with [`CloseReason::HandedOver`]. A handler that does not
//!   export, a state over [`MAX_EXPORTED_STATE_BYTES`], or a connection a
//!   push left owing bytes (or that a `Hub::close` reached) stays, and
//!   closes as at shutdown.
//! - [`import`] (the new process, as `handover::adopt` resumes it): the
//!   state back ([`FramedHandler::import`]) under a new
//!   [`ConnectionId`](crate::ConnectionId), the topics subscribed again,
//!   [`FramedHandler::on_adopt`] told, the state into the side table as if
//!   the connection had parked here. Corrupt bytes or a refused state close
//!   it, counted in `handover_refused`; never a panic.
//!
//! Payload (framed, inside a version-1 record; big endian):
//!
//! ```text
//!   u32 heartbeat due, ms left (all ones: none)
//!   u32 next server heartbeat, ms left (all ones: none)
//!   u16 topics, then each: u16 length, the name (UTF-8)
//!   u32 state length, then the handler's bytes; nothing after
//! ```
//!
//! Not carried: a `Hub::close_after` deadline (the new process's hub has
//! none for the new id: the application sets it again in `on_adopt` if it
//! wants one), and pushes not yet written (a connection owing one does
//! not move).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::conn::context::WorkerContext;
use crate::message::hub::{send_all_now, SendNow};
use crate::message::live::Live;
use crate::message::session::Session;
use crate::message::table::Parked;
use crate::observe::close::CloseReason;
use crate::observe::stats::{add, incr};
use crate::proto::earliest;
use crate::proto::framed::handler::FramedHandler;
use crate::proto::framed::{accepted_on, is_tls, settings, side_table, FramedSettings};
use crate::ParkedState;

/// The most bytes [`FramedHandler::export`] may give for one connection's
/// state: 16 KiB. A state over it is refused (the connection closes as at
/// shutdown, counted in `megaconn_connections_handover_refused_total`): a
/// million connections' states cross one Unix socket during the upgrade,
/// and the bound keeps that a few seconds of copying, not minutes.
pub const MAX_EXPORTED_STATE_BYTES: usize = 16 * 1024;

/// "None" for a timer in the payload.
const NO_TIMER: u32 = u32::MAX;

/// Set once an oversized state was logged at warn (the rest at debug: an
/// upgrade may find a million of them).
static WARNED_OVERSIZED: AtomicBool = AtomicBool::new(false);

/// The old process's side: parked framed connection `fd`'s payload for
/// the next process, if its handler exports it (then its state has left
/// the side table and its handler heard `on_close(HandedOver)`).
pub(crate) fn export(ctx: &WorkerContext, fd: RawFd) -> Option<Vec<u8>> {
    let handler = FramedSettings::of(&ctx.config)?.handler.clone()?;
    handler.export_parked(ctx, fd)
}

/// The new process's side: resumes the framed connection on `socket` from
/// `payload`; the lot's deadline for it (its earlier timer), or `None`
/// for a connection refused (closed by the caller).
pub(crate) fn import(
    ctx: &Rc<WorkerContext>,
    socket: &OwnedFd,
    payload: &[u8],
) -> Option<Option<Instant>> {
    let handler = FramedSettings::of(&ctx.config)?.handler.clone()?;
    // Which listener by its local address, as for an accepted connection:
    // the new process may list its listeners in another order.
    let local = socket2::SockRef::from(socket)
        .local_addr()
        .ok()?
        .as_socket()?;
    let listener = accepted_on(&ctx.config, local)?;
    if is_tls(&ctx.config, listener) {
        return None;
    }
    handler.adopt_parked(ctx, socket.as_raw_fd(), listener, payload)
}

/// [`export`] for handler `H`.
pub(crate) fn export_parked<H: FramedHandler>(
    handler: &H,
    ctx: &WorkerContext,
    fd: RawFd,
) -> Option<Vec<u8>> {
    let (local, table) = side_table::<H::State>(ctx, false);
    let parked = table.take(fd)?;
    let id = local.id(fd, parked.generation);
    // Owes the rest of a push, or a close waits for it: it cannot move
    // whole. It stays, and closes as at shutdown.
    if parked.behind || local.is_kicked(id) || local.is_resuming(id) {
        table.put(fd, parked);
        return None;
    }
    let exported = std::panic::catch_unwind(AssertUnwindSafe(|| handler.export(&parked.state)));
    let state = match exported {
        Ok(Some(state)) => state,
        Ok(None) => {
            table.put(fd, parked);
            return None;
        }
        Err(_panic) => {
            incr(&ctx.stats.panics);
            tracing::error!("a framed handler's export panicked; the connection stays");
            table.put(fd, parked);
            return None;
        }
    };
    let topics = local.topics_of(id);
    let timers = (left(parked.due), left(parked.send_at));
    let payload = (state.len() <= MAX_EXPORTED_STATE_BYTES)
        .then(|| encode(timers, &topics, &state))
        .filter(|p| p.len() <= ParkedState::MAX_PAYLOAD_BYTES);
    let Some(payload) = payload else {
        oversized(ctx, state.len());
        table.put(fd, parked);
        return None;
    };
    // It leaves this process: its topics here, and the handler hears it.
    Live::new(handler, H::on_close_with_id, parked.state, id, &local)
        .close(CloseReason::HandedOver);
    Some(payload)
}

/// A state over [`MAX_EXPORTED_STATE_BYTES`] (`bytes` long) does not move:
/// counted in `handover_refused`, the first logged at warn.
fn oversized(ctx: &WorkerContext, bytes: usize) {
    incr(&ctx.stats.handover_refused);
    if WARNED_OVERSIZED.swap(true, Ordering::Relaxed) {
        tracing::debug!(bytes, "a framed state too large to hand over; it closes");
    } else {
        tracing::warn!(
            bytes,
            max = MAX_EXPORTED_STATE_BYTES,
            "a framed handler exported a state over MAX_EXPORTED_STATE_BYTES (or with its \
             topics over ParkedState::MAX_PAYLOAD_BYTES): it closes as at shutdown \
             instead of moving (later ones at debug)"
        );
    }
}

/// Whether an awake framed connection asked to park for an upgrade
/// (`conn.rs`) would move: its handler exports `state`, within
/// [`MAX_EXPORTED_STATE_BYTES`]. Only then does it park for the hand-over;
/// one that would not stays awake and hears the drain's goodbye (and
/// `on_close` with `Shutdown`) as the drain begins. Parked all the same, it
/// stayed in the lot, which gave it the idle grace of a connection that
/// just parked (up to 500 ms) before it closed it. The bytes are thrown
/// away: [`export_parked`] asks again as the connection leaves, so a
/// handler exporting an awake connection is asked twice. A panic is caught
/// and counted, and the connection stays.
pub(crate) fn would_move<H: FramedHandler>(
    handler: &H,
    state: &H::State,
    ctx: &WorkerContext,
) -> bool {
    let exported = std::panic::catch_unwind(AssertUnwindSafe(|| handler.export(state)));
    match exported {
        Ok(Some(bytes)) if bytes.len() <= MAX_EXPORTED_STATE_BYTES => true,
        Ok(Some(bytes)) => {
            oversized(ctx, bytes.len());
            false
        }
        Ok(None) => false,
        Err(_panic) => {
            incr(&ctx.stats.panics);
            tracing::error!("a framed handler's export panicked; the connection stays");
            false
        }
    }
}

/// [`import`] for handler `H`, the connection at `fd` on framed listener
/// `listener`.
pub(crate) fn adopt_parked<H: FramedHandler>(
    handler: &H,
    ctx: &WorkerContext,
    fd: RawFd,
    listener: usize,
    payload: &[u8],
) -> Option<Option<Instant>> {
    let Some(exported) = Exported::decode(payload) else {
        tracing::debug!("a handed-over framed state is corrupt; closing the connection");
        return None;
    };
    let imported = std::panic::catch_unwind(AssertUnwindSafe(|| handler.import(exported.state)));
    let state = match imported {
        Ok(Some(state)) => state,
        Ok(None) => {
            tracing::debug!("a framed handler refused a handed-over state; closing it");
            return None;
        }
        Err(_panic) => {
            incr(&ctx.stats.panics);
            tracing::error!("a framed handler's import panicked; closing the connection");
            return None;
        }
    };
    let (local, table) = side_table::<H::State>(ctx, false);
    // A new id: its descriptor (and worker) here differ from the old
    // process's, and ids are descriptor, worker and generation.
    let id = local.new_id(fd);
    for topic in exported.topics {
        // Refused (this process's `max_subscriptions` or `max_topic_bytes`
        // is lower): counted and logged by `subscribe`; it moves without.
        let _ = local.subscribe(id, topic);
    }
    let session = Session::new(id, local.clone(), None);
    let mut live = Live::new(handler, H::on_close_with_id, state, id, &local);
    if let Err(reason) = live.open(|h, state| h.on_adopt(state, &session)) {
        live.close(reason);
        return None;
    }
    if let Err(reason) = send_now(ctx, fd, listener, session.take_out()) {
        live.close(reason);
        return None;
    }
    if session.is_closing() {
        live.close(CloseReason::ServerClosed);
        return None;
    }
    let (due, send_at) = timers(ctx, (exported.due, exported.send_at));
    let parked = Parked {
        generation: id.generation(),
        state: live.take(),
        variant: listener,
        due,
        send_at,
        behind: false,
    };
    table.put(fd, parked);
    Some(earliest(due, send_at))
}

/// This process's timers for an adopted connection, from the time each had
/// left in the old one: never later than this process's own settings
/// would set them now, and fresh where the old one had none.
fn timers(
    ctx: &WorkerContext,
    (due, send_at): (Option<Duration>, Option<Duration>),
) -> (Option<Instant>, Option<Instant>) {
    let now = Instant::now();
    let framed = settings(&ctx.config);
    let heartbeat = framed.and_then(|s| s.heartbeat_timeout);
    let every = framed.and_then(|s| s.send_heartbeat.as_ref().map(|(every, _)| *every));
    let at = |limit: Option<Duration>, left: Option<Duration>| {
        limit.map(|limit| now + left.map_or(limit, |left| left.min(limit)))
    };
    (at(heartbeat, due), at(every, send_at))
}

/// Writes the frames `on_adopt` sent to the parked socket in one
/// non-blocking `send`, as the lot writes a goodbye: a socket just handed
/// over has room for a few. One that does not take them whole closes the
/// connection (`ServerError`): a frame cut short cannot be finished from
/// here.
fn send_now(
    ctx: &WorkerContext,
    fd: RawFd,
    listener: usize,
    frames: Vec<Bytes>,
) -> Result<(), CloseReason> {
    if frames.is_empty() {
        return Ok(());
    }
    let framing = settings(&ctx.config)
        .and_then(|s| s.listeners.get(listener))
        .map(|&(_, framing)| framing)
        .ok_or(CloseReason::ServerError)?;
    let mut codec = framing.codec();
    let mut out = BytesMut::new();
    let n = frames.len() as u64;
    for frame in frames {
        codec
            .encode(frame, &mut out)
            .map_err(|_| CloseReason::ServerError)?;
    }
    match send_all_now(fd, &out) {
        SendNow::Sent => {
            let counters = &ctx.stats.messages;
            add(&counters.frames_out, n);
            add(&counters.bytes_out, out.len() as u64);
            Ok(())
        }
        SendNow::Full { .. } | SendNow::Broken => Err(CloseReason::ServerError),
    }
}

/// The time left to `at`, if it is set.
fn left(at: Option<Instant>) -> Option<Duration> {
    at.map(|at| at.saturating_duration_since(Instant::now()))
}

/// Milliseconds of `left` on the wire (all ones: none).
fn millis(left: Option<Duration>) -> u32 {
    left.map_or(NO_TIMER, |d| {
        u32::try_from(d.as_millis()).unwrap_or(NO_TIMER - 1)
    })
}

/// The payload of a framed connection (the module doc's form).
fn encode(
    (due, send_at): (Option<Duration>, Option<Duration>),
    topics: &[Rc<str>],
    state: &[u8],
) -> Vec<u8> {
    let names: usize = topics.iter().map(|t| 2 + t.len()).sum();
    let mut out = Vec::with_capacity(14 + names + state.len());
    out.extend_from_slice(&millis(due).to_be_bytes());
    out.extend_from_slice(&millis(send_at).to_be_bytes());
    // A topic's name is at most `max_topic_bytes` (255 by default), and a
    // connection holds at most `max_subscriptions` (128): both fit; one
    // that would not is left behind rather than cut.
    let topics: Vec<&Rc<str>> = topics
        .iter()
        .filter(|t| t.len() <= 0xffff)
        .take(0xffff)
        .collect();
    out.extend_from_slice(&(topics.len() as u16).to_be_bytes());
    for topic in topics {
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
    }
    out.extend_from_slice(&(state.len() as u32).to_be_bytes());
    out.extend_from_slice(state);
    out
}

/// A framed connection's payload, read back (borrowing its bytes).
#[derive(Debug, PartialEq, Eq)]
struct Exported<'a> {
    due: Option<Duration>,
    send_at: Option<Duration>,
    topics: Vec<&'a str>,
    state: &'a [u8],
}

impl<'a> Exported<'a> {
    /// Reads [`encode`]'s form; `None` for anything else (short, long, a
    /// topic not UTF-8, a state over the bound).
    fn decode(bytes: &'a [u8]) -> Option<Exported<'a>> {
        let mut r = Reader(bytes);
        let timer = |ms: u32| (ms != NO_TIMER).then(|| Duration::from_millis(ms.into()));
        let due = timer(r.u32()?);
        let send_at = timer(r.u32()?);
        let n = r.u16()?;
        let mut topics = Vec::with_capacity(usize::from(n).min(256));
        for _ in 0..n {
            let len = r.u16()?;
            topics.push(std::str::from_utf8(r.take(len.into())?).ok()?);
        }
        let len = r.u32()? as usize;
        if len > MAX_EXPORTED_STATE_BYTES {
            return None;
        }
        let state = r.take(len)?;
        r.0.is_empty().then_some(Exported {
            due,
            send_at,
            topics,
            state,
        })
    }
}

/// A cursor over a payload: each read takes from the front, or fails.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_round_trips() {
        let topics: Vec<Rc<str>> = vec!["news".into(), "".into(), "dev/42".into()];
        let timers = (Some(Duration::from_millis(1500)), None);
        let bytes = encode(timers, &topics, b"state");
        let back = Exported::decode(&bytes).expect("decodes");
        assert_eq!(
            back,
            Exported {
                due: timers.0,
                send_at: None,
                topics: vec!["news", "", "dev/42"],
                state: b"state",
            }
        );
    }

    /// Every cut, a byte more, a topic not UTF-8 and a state length over
    /// the bound are refused, never misread nor a panic.
    #[test]
    fn corrupt_payloads_are_refused() {
        let topics: Vec<Rc<str>> = vec!["t".into()];
        let bytes = encode((None, None), &topics, b"abc");
        for cut in 0..bytes.len() {
            assert_eq!(Exported::decode(&bytes[..cut]), None, "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Exported::decode(&longer), None);
        let mut not_utf8 = bytes.clone();
        not_utf8[12] = 0xff;
        assert_eq!(Exported::decode(&not_utf8), None);
        let mut huge = encode((None, None), &[], b"");
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&(MAX_EXPORTED_STATE_BYTES as u32 + 1).to_be_bytes());
        huge.resize(at + 4 + MAX_EXPORTED_STATE_BYTES + 1, 0);
        assert_eq!(Exported::decode(&huge), None);
    }
}
