//! The parking lot of one `hold` thread: cleartext connections (HTTP,
//! `ws://`, `tcp://`) between (and during) heartbeats, with no tokio task,
//! waker or timer of their own.
//!
//! A connection's task opens it (connect, opening request) and then hands the
//! socket to the lot and waits, without being woken, for the one message the
//! lot sends it: how the connection ended. The lot is a single task per
//! thread that owns, per connection, its socket, its beat schedule and its
//! reading side (`hold_wire.rs`: replies, pushes, a WebSocket server's pings
//! to answer), plus:
//! - an epoll instance of its own (each socket registered once for its
//!   whole life; edge-triggered when read on the tick, and each edge read
//!   until the socket is drained);
//! - a second one, registered with the thread's runtime, that holds only
//!   the sockets whose send buffer was full (the rest of a large beat, pongs
//!   waiting) until what waits has gone: the thread wakes when one becomes
//!   writable, so a server that stops reading and then reads again gets
//!   the rest at once, not on a later tick (up to 100 ms each time the
//!   buffer fills). It costs nothing while empty (not polled), and a
//!   socket joins and leaves it only when its buffer fills (a beat that
//!   fills it is counted, `beats_held_back`);
//! - a timing wheel of due ticks on the beat grid (`hold_wheel.rs`; the tick
//!   is `hold_conn::beat_tick`, 10 to 100 ms by the interval): a beat, or a
//!   reply's deadline, is an append and a pass, not a timer registered and
//!   cancelled in tokio's wheel;
//! - a ticker on that grid that takes what arrived since the last tick and
//!   sends the beats due.
//!
//! HTTP replies are read on the tick, not as they arrive, and timed by the
//! kernel's receive timestamp of the last segment read (`SO_TIMESTAMPNS`):
//! a read holds the one awaited reply and nothing else, so that is the
//! reply's arrival (`hold_conn::replies_on_tick`; `ws://` and `tcp://`,
//! where a server's ping or push can share a read with a reply, wake per
//! reply). The
//! thread sleeps between ticks on a timer only (and, while a send buffer is
//! full, on that socket's writability), so a server's reply wakes nobody. On one machine that matters: on loopback the sender pays for the
//! receiver's wake-up inside its `send`, a cost the server would not have
//! with its clients on other machines, and at a million connections it was
//! one wake-up of `hold` per heartbeat (`bench/HOLD-CPU.md`). With
//! `--wake-per-reply` the lot's epoll is registered with the thread's tokio
//! runtime instead, and a reply is read (and timed) when it wakes the thread.
//! A reply that comes without a stamp is timed when read: only the first
//! packets after stamping is first turned on in the kernel can (it turns
//! it on from a work queue, a moment after the first socket asks). So are
//! the replies of a tick before which the wall clock stepped: the stamps
//! are on `CLOCK_REALTIME`, turned into `Instant`s by both clocks read once
//! per tick (`hold_stamp.rs`).
//!
//! So a heartbeat is one `send`, one `recv`, a parse and a histogram record
//! whatever the protocol:
//! with a task per connection it was also two task wake-ups, two polls of the
//! connection's future, a timer registered and another cancelled
//! (`bench/HEARTBEAT.md`, "hold's CPU per heartbeat").

use std::cell::RefCell;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;
use tokio::sync::oneshot;

use crate::hold_conn::{self, io_end, next_beat, write_now, Ended, Rng, ThreadCtx};
use crate::hold_stamp::{recv_stamped, stamp_arrivals, Arrival, Clocks, StampClock};
use crate::hold_wheel::Wheel;
use crate::hold_wire::{Verdict, Wire};

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// One parked connection.
struct Parked {
    stream: std::net::TcpStream,
    /// Tells the connection's task how the connection ended.
    done: oneshot::Sender<Ended>,
    /// The wheel entry that is current for this connection (its tick);
    /// others are stale.
    due: u64,
    /// Which occupant of the slot an epoll event is about.
    tenant: u32,
    /// When the current (or next) beat was scheduled.
    next: Instant,
    /// When the heartbeat waiting for its reply started to go out, its
    /// first write (`None`: waiting for its next beat): its latency and
    /// deadline run from then (see [`Lot::beat`]).
    waiting: Option<Instant>,
    /// Bytes the socket's send buffer had no room for (the rest of a beat,
    /// pongs), from `unsent_at` on: empty and unallocated nearly always.
    unsent: Vec<u8>,
    /// How much of `unsent` has gone already: a flush moves this on rather
    /// than the rest of `unsent` forward (a copy of a large beat's rest
    /// each time the socket takes a buffer's worth). A `u32` fits in the
    /// struct's padding (a `usize` made it 8 bytes larger); past 4 GiB the
    /// rest is moved forward after all.
    unsent_at: u32,
    /// In the writers' epoll (`unsent` waits).
    out_armed: bool,
    rng: Rng,
    wire: Wire,
}

/// The lot's state (borrowed by one call at a time, never across an await).
struct State {
    slots: Vec<Option<Parked>>,
    free: Vec<u32>,
    /// Connections with bytes waiting to go (in the writers' epoll).
    writers: u32,
    /// `(tick, slot)`: at grid tick `tick` (counted from the run's start),
    /// look at `slot` if its `due` still is `tick`.
    wheel: Wheel,
    /// The entries of the tick being served (kept for its allocation).
    due: Vec<(u64, u32)>,
    tenants: u32,
}

/// The lot's epoll instance: how the thread learns that replies arrived.
enum Epoll {
    /// Looked at on the grid's tick only (the default).
    Ticked(OwnedFd),
    /// Registered with the thread's runtime: a reply wakes the thread
    /// (`--wake-per-reply`).
    Woken(AsyncFd<OwnedFd>),
}

impl Epoll {
    fn raw(&self) -> RawFd {
        match self {
            Epoll::Ticked(fd) => fd.as_raw_fd(),
            Epoll::Woken(fd) => fd.as_raw_fd(),
        }
    }
}

/// The parking lot of one hold thread.
pub(crate) struct Lot {
    epoll: Epoll,
    /// The connections whose send buffer was full (a beat's rest, pongs
    /// waiting), for writability only: registered with the thread's
    /// runtime in both modes, so what waits goes out as soon as the socket
    /// takes it, not on a later tick. Apart from `epoll`, which by default
    /// nobody wakes on; looked at only while it has members.
    writers: AsyncFd<OwnedFd>,
    state: RefCell<State>,
    /// The clock pair stamps are turned with, read once per tick and
    /// checked for a wall-clock step since the last (`hold_stamp.rs`).
    clock: RefCell<StampClock>,
}

impl Lot {
    /// A lot with its own epoll instances: the writers' one registered with
    /// the current runtime, the readers' one too with `wake_per_reply`.
    pub(crate) fn new(wake_per_reply: bool) -> std::io::Result<Lot> {
        let fd = epoll_create()?;
        let epoll = if wake_per_reply {
            Epoll::Woken(register(fd)?)
        } else {
            Epoll::Ticked(fd)
        };
        Ok(Lot {
            epoll,
            writers: register(epoll_create()?)?,
            state: RefCell::new(State {
                slots: Vec::new(),
                free: Vec::new(),
                writers: 0,
                wheel: Wheel::new(0),
                due: Vec::new(),
                tenants: 0,
            }),
            clock: RefCell::new(StampClock::new(Clocks::read())),
        })
    }

    /// Parks an open connection (nonblocking) whose first beat is due at
    /// `next`, read by `wire`; the receiver hears how it ended.
    pub(crate) fn park(
        &self,
        ctx: &ThreadCtx,
        stream: std::net::TcpStream,
        next: Instant,
        rng: Rng,
        wire: Wire,
    ) -> std::io::Result<oneshot::Receiver<Ended>> {
        let mut st = self.state.borrow_mut();
        st.tenants = st.tenants.wrapping_add(1);
        let tenant = st.tenants;
        let slot = match st.free.last() {
            Some(&s) => s,
            None => st.slots.len() as u32,
        };
        if matches!(self.epoll, Epoll::Ticked(_)) {
            stamp_arrivals(&stream)?;
        }
        let events = match self.epoll {
            // Edge-triggered: a level-triggered socket went back on the
            // set's ready list each time it was reported, and the next
            // tick's look polled it again (`tcp_poll`) to find its reply
            // read: a poll per heartbeat, ~3 % of `hold`'s samples (`perf`,
            // `bench/MILLION.md`, session 49). An edge is reported once, so
            // each one is read until the socket is drained (`take_events`).
            Epoll::Ticked(_) => libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET,
            Epoll::Woken(_) => libc::EPOLLIN | libc::EPOLLRDHUP,
        };
        ctl(
            self.epoll.raw(),
            libc::EPOLL_CTL_ADD,
            &stream,
            slot,
            tenant,
            events,
        )?;
        if st.free.pop().is_none() {
            st.slots.push(None);
        }
        let (done, ended) = oneshot::channel();
        let due = grid_tick(ctx, next);
        st.wheel.push(due, slot);
        st.slots[slot as usize] = Some(Parked {
            stream,
            done,
            due,
            tenant,
            next,
            waiting: None,
            unsent: Vec::new(),
            unsent_at: 0,
            out_armed: false,
            rng,
            wire,
        });
        ctx.counters.parked.fetch_add(1, Relaxed);
        Ok(ended)
    }

    /// Closes every parked connection (the end of the run: a FIN on each).
    /// Heartbeats they were waiting for stay in `heartbeats_pending`.
    pub(crate) fn close_all(&self) {
        let mut st = self.state.borrow_mut();
        st.slots.clear();
        st.writers = 0;
        // The free list names slots that no longer exist: a later `park`
        // would index past the end.
        st.free.clear();
        st.wheel.clear();
    }

    /// The lot's task, until the thread stops: every grid tick it takes
    /// what arrived (by default) and sends the beats due; with
    /// `--wake-per-reply` it takes replies as they arrive. Either way, bytes
    /// a full send buffer held back go out as soon as the socket is
    /// writable.
    pub(crate) async fn run(&self, ctx: &ThreadCtx) {
        let mut ticker = tokio::time::interval_at(ctx.shared.start.into(), ctx.shared.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // The writers' epoll is not even polled while it is empty (the
            // usual case): a tick costs what it did without it.
            let writers = self.state.borrow().writers > 0;
            match &self.epoll {
                Epoll::Ticked(_) => tokio::select! {
                    biased;
                    tick = ticker.tick() => {
                        // Replies first: one that arrived in time is not
                        // failed by its deadline's pass in `beat`. And that
                        // pass goes up to this tick only, even if reading
                        // took past the next one: a reply that arrived since
                        // is read on the next tick, before its deadline is
                        // judged.
                        let clocks = self.clock.borrow_mut().tick(Clocks::read());
                        if clocks.is_none() {
                            ctx.counters.wall_clock_steps.fetch_add(1, Relaxed);
                        }
                        self.take_events(ctx, &mut events, clocks);
                        self.beat(ctx, tick.into_std());
                    },
                    ready = self.writers.readable(), if writers => {
                        if !on_ready(ready, || self.take_writable(ctx, &mut events)) {
                            return;
                        }
                    },
                },
                Epoll::Woken(epoll) => tokio::select! {
                    biased;
                    ready = epoll.readable() => {
                        if !on_ready(ready, || self.take_events(ctx, &mut events, None)) {
                            return;
                        }
                    },
                    _ = ticker.tick() => self.beat(ctx, Instant::now()),
                    ready = self.writers.readable(), if writers => {
                        if !on_ready(ready, || self.take_writable(ctx, &mut events)) {
                            return;
                        }
                    },
                },
            }
        }
    }

    /// Sends what waits on every connection the writers' epoll reports
    /// writable (without waiting).
    fn take_writable(&self, ctx: &ThreadCtx, events: &mut [libc::epoll_event]) {
        drain_epoll(self.writers.as_raw_fd(), events, |data, _| {
            let (slot, tenant) = (data as u32, (data >> 32) as u32);
            let flushed = {
                let mut st = self.state.borrow_mut();
                let State { slots, writers, .. } = &mut *st;
                let Some(conn) = slots[slot as usize].as_mut().filter(|c| c.tenant == tenant)
                else {
                    return false;
                };
                self.flush(conn, slot, writers)
            };
            if let Err(end) = flushed {
                self.end(ctx, slot, end);
            }
            false
        });
    }

    /// Takes every ready event of the lot's epoll (without waiting); with
    /// `clocks` (the tick's pair, if the wall clock did not step since the
    /// last tick), reads carry their kernel receive time, turned by it; else
    /// replies are timed when read.
    fn take_events(
        &self,
        ctx: &ThreadCtx,
        events: &mut [libc::epoll_event],
        clocks: Option<Clocks>,
    ) {
        let edges = matches!(self.epoll, Epoll::Ticked(_));
        drain_epoll(self.epoll.raw(), events, |data, flags| {
            let (slot, tenant) = (data as u32, (data >> 32) as u32);
            let mut more = self.on_event(ctx, slot, tenant, hung_up(flags), clocks);
            if !edges {
                return more; // level-triggered: the set reports it again
            }
            // Edge-triggered (`park`): no later look reports what this
            // edge left, so the socket is read here until it is drained
            // (a short read, `WouldBlock`, or its end).
            while more {
                more = self.on_event(ctx, slot, tenant, hung_up(flags), clocks);
            }
            false
        });
    }

    /// Handles one readiness event of `slot`; true if the socket may have
    /// more to read than one read took: the read filled the buffer, or
    /// took bytes while `hung_up` (the event said the server had closed
    /// or reset it), whose end is still to be read. That end came before
    /// the look that reported it, so no later event tells of it: unread
    /// now, a connection whose server sent its last words and closed (a
    /// WebSocket's `1001` and FIN) stayed open to `hold` until another
    /// socket's event (woken per reply) or the next tick. With `clocks`,
    /// the read takes the kernel's receive stamp and times the reply by it.
    fn on_event(
        &self,
        ctx: &ThreadCtx,
        slot: u32,
        tenant: u32,
        hung_up: bool,
        clocks: Option<Clocks>,
    ) -> bool {
        let (ended, more) = {
            let mut st = self.state.borrow_mut();
            let State {
                slots,
                wheel,
                writers,
                ..
            } = &mut *st;
            let Some(conn) = slots[slot as usize].as_mut().filter(|c| c.tenant == tenant) else {
                return false;
            };
            let mut pongs = Vec::new();
            let read = {
                let mut buf = ctx.buf.borrow_mut();
                let got = match clocks {
                    Some(clocks) => recv_stamped(conn.stream.as_raw_fd(), &mut buf)
                        .map(|(n, stamp)| (n, stamp.map(|s| clocks.arrival(s, Instant::now)))),
                    None => (&conn.stream).read(&mut buf).map(|n| (n, None)),
                };
                match got {
                    Ok((0, _)) => Err(Ended::Dropped),
                    Ok((n, arrived)) => conn
                        .take(ctx, wheel, slot, &buf[..n], &mut pongs, arrived)
                        .map(|()| hung_up || n == buf.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
                    Err(e) => Err(io_end(&e)),
                }
            };
            match read {
                Ok(more) if pongs.is_empty() => (None, more),
                Ok(more) => (self.send(conn, slot, writers, &pongs).err(), more),
                Err(end) => (Some(end), false),
            }
        };
        match ended {
            Some(end) => {
                self.end(ctx, slot, end);
                false
            }
            None => more,
        }
    }

    /// Sends the beats due by `now`, and fails the replies overdue by then.
    fn beat(&self, ctx: &ThreadCtx, now: Instant) {
        // The tick under way (rounded down): what is due by now.
        let tick = hold_conn::nanos_since(ctx.shared.start, now) / tick_ns(ctx);
        let mut due = {
            let mut st = self.state.borrow_mut();
            let mut due = std::mem::take(&mut st.due);
            st.wheel.take_due(tick, &mut due);
            due
        };
        for &(at, slot) in &due {
            let mut st = self.state.borrow_mut();
            let State {
                slots,
                wheel,
                writers,
                ..
            } = &mut *st;
            // Stale: the connection moved on, or left.
            let Some(conn) = slots[slot as usize].as_mut().filter(|c| c.due == at) else {
                continue;
            };
            let ended = match conn.waiting {
                // The reply's deadline passed.
                Some(_) => {
                    ctx.failed();
                    Err(Ended::Failed)
                }
                None => {
                    // The beat is timed from its first write even if the
                    // socket takes only part of it (the rest goes out as
                    // soon as the socket is writable, `take_writable`, not on
                    // a later tick): the reply cannot come before
                    // its last byte, but the wait for the server to take
                    // it is the server's (it is not reading), like a reply
                    // it is slow to send; from the last byte, a server that
                    // stopped reading would look fast. The task path
                    // (`hold_conn::exchange`) times from the same moment.
                    let sent = Instant::now();
                    conn.waiting = Some(sent);
                    ctx.counters.heartbeats_pending.fetch_add(1, Relaxed);
                    conn.due = grid_tick(ctx, sent + ctx.shared.timeout);
                    wheel.push(conn.due, slot);
                    let done = self.send(conn, slot, writers, &ctx.shared.heartbeat);
                    // Counted so that a slow beat in a report can be told
                    // apart: held back by the server, or not.
                    if !conn.unsent.is_empty() && done.is_ok() {
                        ctx.counters.beats_held_back.fetch_add(1, Relaxed);
                    }
                    done
                }
            };
            if let Err(end) = ended {
                drop(st);
                self.end(ctx, slot, end);
            }
        }
        due.clear();
        self.state.borrow_mut().due = due;
    }

    /// Sends `bytes` after any still unsent; keeps what the socket takes
    /// not (its send buffer is full) and asks for writability meanwhile
    /// (`writers`: the count of connections that do).
    fn send(
        &self,
        conn: &mut Parked,
        slot: u32,
        writers: &mut u32,
        bytes: &[u8],
    ) -> Result<(), Ended> {
        if conn.unsent.is_empty() {
            let sent = write_some(&conn.stream, bytes)?;
            conn.unsent.extend_from_slice(&bytes[sent..]);
        } else {
            // What has gone goes before more is kept, so that `unsent`
            // holds only what waits (rare: a pong, a beat, while a beat's
            // rest waits).
            conn.unsent.drain(..conn.unsent_at as usize);
            conn.unsent_at = 0;
            conn.unsent.extend_from_slice(bytes);
        }
        self.want_out(conn, slot, writers)
    }

    /// Sends what is unsent (the socket became writable).
    fn flush(&self, conn: &mut Parked, slot: u32, writers: &mut u32) -> Result<(), Ended> {
        let at = conn.unsent_at as usize;
        let at = at + write_some(&conn.stream, &conn.unsent[at..])?;
        if at == conn.unsent.len() {
            conn.unsent = Vec::new();
            conn.unsent_at = 0;
        } else if let Ok(at) = u32::try_from(at) {
            conn.unsent_at = at;
        } else {
            conn.unsent.drain(..at);
            conn.unsent_at = 0;
        }
        self.want_out(conn, slot, writers)
    }

    /// Keeps `conn` in the writers' epoll while bytes are unsent, and only
    /// then (`writers` counts those in it).
    fn want_out(&self, conn: &mut Parked, slot: u32, writers: &mut u32) -> Result<(), Ended> {
        let want = !conn.unsent.is_empty();
        if want != conn.out_armed {
            let op = if want {
                libc::EPOLL_CTL_ADD
            } else {
                libc::EPOLL_CTL_DEL
            };
            let epoll = self.writers.as_raw_fd();
            ctl(epoll, op, &conn.stream, slot, conn.tenant, libc::EPOLLOUT)
                .map_err(|e| io_end(&e))?;
            conn.out_armed = want;
            if want {
                *writers += 1;
            } else {
                *writers -= 1;
            }
        }
        Ok(())
    }

    /// Closes `slot`'s connection and tells its task how it ended. A
    /// heartbeat it was waiting for is no longer pending, and fails unless
    /// its failure is why the connection ends (already counted; the end is
    /// still the server's close if it sent one first): a drop or reset
    /// lost it.
    fn end(&self, ctx: &ThreadCtx, slot: u32, how: Ended) {
        let mut st = self.state.borrow_mut();
        if let Some(conn) = st.slots[slot as usize].take() {
            let counted = matches!(how, Ended::Failed);
            let how = conn.wire.ended(how);
            st.free.push(slot);
            if conn.out_armed {
                st.writers -= 1;
            }
            if conn.waiting.is_some() {
                ctx.counters.heartbeats_pending.fetch_sub(1, Relaxed);
                if !counted {
                    ctx.failed();
                }
            }
            // Closing the socket also takes it out of the lot's epolls.
            drop(conn.stream);
            let _ = conn.done.send(how);
        }
    }
}

impl Parked {
    /// Bytes read from the socket (arrived then, if stamped), as the
    /// connection's [`Wire`] reads them (pongs it asks for go to `pongs`);
    /// an answered heartbeat schedules the next. `Err`: the connection ends.
    fn take(
        &mut self,
        ctx: &ThreadCtx,
        wheel: &mut Wheel,
        slot: u32,
        read: &[u8],
        pongs: &mut Vec<u8>,
        arrived: Option<Arrival>,
    ) -> Result<(), Ended> {
        let sh = &ctx.shared;
        let verdict = self
            .wire
            .take(sh, self.waiting.is_some(), read, pongs, |p| {
                ctx.pushed(p, arrived.map(|a| a.unix_ns));
            });
        match (verdict, self.waiting) {
            (None, _) => Ok(()),
            (Some(Verdict::Answered { close }), Some(sent)) => {
                let now = ctx.answered(sent, arrived.map(|a| a.now));
                self.waiting = None;
                ctx.counters.heartbeats_pending.fetch_sub(1, Relaxed);
                if close {
                    return Err(Ended::Dropped);
                }
                self.next = next_beat(self.next, sh.interval, &mut self.rng, now);
                self.due = grid_tick(ctx, self.next);
                wheel.push(self.due, slot);
                Ok(())
            }
            (Some(_), _) => {
                ctx.failed();
                Err(Ended::Failed)
            }
        }
    }
}

/// A new epoll instance (level-triggered members, close-on-exec).
fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: a plain syscall; the result is checked before use.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers one of the lot's epoll instances with the current runtime:
/// the thread wakes when it has events.
fn register(epoll: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd keeps its descriptor open and always returns it.
    Ok(unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }?)
}

/// Adds, changes or removes `stream` in `epoll`, waiting for `events`; its
/// events carry `slot` and `tenant`.
fn ctl(
    epoll: RawFd,
    op: libc::c_int,
    stream: &std::net::TcpStream,
    slot: u32,
    tenant: u32,
    events: libc::c_int,
) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: u64::from(slot) | u64::from(tenant) << 32,
    };
    // SAFETY: both descriptors are open; `ev` is a valid epoll_event (the
    // kernel ignores it for EPOLL_CTL_DEL).
    let r = unsafe { libc::epoll_ctl(epoll, op, stream.as_raw_fd(), &mut ev) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an event's `flags` say the peer closed (FIN) or reset the
/// connection: what is left to read then ends in its end.
fn hung_up(flags: u32) -> bool {
    flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
}

/// Takes every ready event of `epoll` without waiting, handing each one's
/// data and flags to `on` (true: that socket may have more to read, so
/// look again), until a look finds no more.
fn drain_epoll(
    epoll: RawFd,
    events: &mut [libc::epoll_event],
    mut on: impl FnMut(u64, u32) -> bool,
) {
    loop {
        // SAFETY: `events` is valid for `events.len()` entries.
        let n =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as libc::c_int, 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        // A full batch, or a read that filled the buffer, may leave more.
        let mut again = n as usize == events.len();
        for ev in &events[..n as usize] {
            let (data, flags) = (ev.u64, ev.events);
            again |= on(data, flags);
        }
        if !again {
            return;
        }
    }
}

/// Runs `take` on a lot descriptor the runtime reported ready, then clears
/// its readiness (`take` has taken every event); false if the runtime is
/// shutting down.
fn on_ready(ready: std::io::Result<AsyncFdReadyGuard<'_, OwnedFd>>, take: impl FnOnce()) -> bool {
    match ready {
        Ok(mut guard) => {
            take();
            guard.clear_ready();
            true
        }
        Err(_) => false,
    }
}

/// Writes as much of `bytes` as the socket takes now: how much that was.
fn write_some(stream: &std::net::TcpStream, bytes: &[u8]) -> Result<usize, Ended> {
    write_now(bytes, |b| (&*stream).write(b)).map_err(|e| io_end(&e))
}

/// The beat grid's tick (`HoldShared::tick`) in nanoseconds.
fn tick_ns(ctx: &ThreadCtx) -> u64 {
    ctx.shared.tick.as_nanos() as u64
}

/// The grid tick (counted from the run's start) a beat due at `at` goes out
/// on: rounded up, as a task's beat is (`hold_conn::grid_tick`).
fn grid_tick(ctx: &ThreadCtx, at: Instant) -> u64 {
    hold_conn::grid_tick(at, ctx.shared.start, tick_ns(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold_conn::HoldShared;
    use std::time::Duration;

    /// The lot's tick in [`the_rest_of_a_held_back_beat_goes_out_when_the_socket_is_writable`]:
    /// far longer than the grid's (100 ms at most), so that "on writability"
    /// and "on the next tick" are seconds apart.
    const TICK: Duration = Duration::from_secs(2);

    /// A beat the socket cannot take whole (the server is not reading):
    /// once the server reads, its rest goes out as the socket becomes
    /// writable, on both of the lot's ways of reading replies, before the
    /// lot's next tick. Before, on the tick (the default way), the rest
    /// went out on the next ticks, a send buffer per tick.
    #[test]
    fn the_rest_of_a_held_back_beat_goes_out_when_the_socket_is_writable() {
        for wake_per_reply in [false, true] {
            let (ran, whole) = held_back_beat(wake_per_reply);
            assert!(
                whole < ran + TICK,
                "wake_per_reply {wake_per_reply}: the server had the whole beat {:?} after \
                 the lot started running, on or after its next tick ({TICK:?})",
                whole.duration_since(ran)
            );
        }
    }

    /// Replies read on the tick come from an edge-triggered set: a
    /// level-triggered one put each reported socket back on its ready list,
    /// for the next look to poll again (a `tcp_poll` per heartbeat).
    #[test]
    fn sockets_read_on_the_tick_are_edge_triggered() {
        for wake_per_reply in [false, true] {
            let (client, _server) = socket_pair();
            let (ctx, _rt, lot) = ws_lot(wake_per_reply, Instant::now());
            let wire = Wire::new(&ctx.shared);
            let _ended = lot
                .park(&ctx, client, Instant::now(), Rng::new(1), wire)
                .unwrap();
            let fdinfo = format!("/proc/self/fdinfo/{}", lot.epoll.raw());
            let info = std::fs::read_to_string(&fdinfo).unwrap();
            let events: Vec<u32> = info
                .lines()
                .filter_map(|l| l.strip_prefix("tfd:"))
                .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "events:").nth(1))
                .map(|hex| u32::from_str_radix(hex, 16).unwrap())
                .collect();
            let edge = libc::EPOLLET as u32;
            let want = if wake_per_reply { 0 } else { edge };
            assert!(
                events.len() == 1 && events[0] & edge == want,
                "wake_per_reply {wake_per_reply}: the lot's set holds {events:x?} \
                 (EPOLLET {edge:x} expected {want:x}), {fdinfo}:\n{info}"
            );
        }
    }

    /// A reply larger than the read buffer, all of it in the socket before
    /// the tick that reads it: the tick reads it to its end and the
    /// heartbeat is answered. (Edge-triggered, a read that filled the
    /// buffer and a look at the set for more found no new edge: the rest
    /// waited for bytes that never came, until the reply's deadline.)
    #[test]
    fn a_reply_larger_than_the_read_buffer_is_read_whole_on_its_tick() {
        let (client, mut server) = socket_pair();
        let mut shared = HoldShared::for_test();
        shared.heartbeat = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        // As in `held_back_beat`: the beat, due at the start, goes out on
        // the beat pass for now, and the ticker's first tick is at once.
        let start = Instant::now() - TICK;
        let (ctx, rt, lot) = test_lot(shared, false, start);
        let client_fd = client.as_raw_fd();
        let wire = Wire::new(&ctx.shared);
        let _ended = lot.park(&ctx, client, start, Rng::new(1), wire).unwrap();
        lot.beat(&ctx, Instant::now());
        let beat = &ctx.shared.heartbeat;
        let mut got = vec![0u8; beat.len()];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, beat, "the server did not read the heartbeat");
        let body = vec![b'x'; ctx.buf.borrow().len() + 4096];
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let total = head.len() + body.len();
        server.write_all(head.as_bytes()).unwrap();
        server.write_all(&body).unwrap();
        // The whole reply in the client's socket before the lot looks.
        let waited = Instant::now();
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int.
            let r = unsafe { libc::ioctl(client_fd, libc::FIONREAD, &mut queued) };
            assert_eq!(r, 0, "FIONREAD failed");
            if queued as usize == total {
                break;
            }
            assert!(
                waited.elapsed() < CLOSE_WAIT,
                "only {queued} of the reply's {total} bytes reached the client"
            );
            std::thread::yield_now();
        }
        let answered = || ctx.counters.heartbeats_ok.load(Relaxed);
        rt.block_on(async {
            tokio::select! {
                () = lot.run(&ctx) => unreachable!("the lot runs until dropped"),
                () = async {
                    while answered() == 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } => {}
                () = tokio::time::sleep(CLOSE_WAIT) => {}
            }
        });
        assert_eq!(
            (answered(), ctx.counters.heartbeat_errors.load(Relaxed)),
            (1, 0),
            "(heartbeats answered, failed) {CLOSE_WAIT:?} after the lot started, the \
             {total}-byte reply in the socket"
        );
    }

    /// A server's last words and its FIN read in one look: a WebSocket
    /// close frame (`1001`, as a draining server sends) and the end of
    /// the stream, both in the socket before the lot reads it. The lot
    /// reads the frame, then the end at once, on both of its ways of
    /// reading. Before, the read that took the frame left the end unread
    /// (the buffer was not filled, so the lot did not look again):
    /// reading on the tick, the end waited for the next tick; woken per
    /// reply, it waited for some other socket's event or the
    /// connection's next beat, as it is only a new event that wakes the
    /// thread, and the end had already come. After an upgrade of a
    /// server holding 10,000 WebSockets, `hold` counted 7 and 1 of them
    /// still open long after the old process had exited (session 44,
    /// `bench/DIGEST.md`).
    #[test]
    fn a_close_frame_and_the_fin_in_one_read_end_the_connection_at_once() {
        for wake_per_reply in [false, true] {
            let (ran, ended) = close_then_fin(wake_per_reply);
            match ended {
                Some((at, how)) => {
                    assert!(
                        matches!(how, Ended::Closed(1001)),
                        "wake_per_reply {wake_per_reply}: the connection ended otherwise \
                         than by the server's 1001"
                    );
                    assert!(
                        at < ran + TICK / 2,
                        "wake_per_reply {wake_per_reply}: the connection ended {:?} after \
                         the lot started running, on its next tick ({TICK:?}) or later",
                        at.duration_since(ran)
                    );
                }
                None => panic!(
                    "wake_per_reply {wake_per_reply}: the connection had not ended \
                     {CLOSE_WAIT:?} after the server's close frame and FIN"
                ),
            }
        }
    }

    /// The server's close (`1001`, then its FIN) while a heartbeat waits
    /// for its pong: the heartbeat fails, once, and the connection's end
    /// is the server's close, on both of the lot's ways of reading.
    /// Before, the connection was counted as failed only (not as closed
    /// by the server), so an upgrade that told every WebSocket `1001`
    /// read as fewer in `hold`'s report.
    #[test]
    fn a_close_while_a_heartbeat_waits_fails_it_and_ends_as_the_close() {
        for wake_per_reply in [false, true] {
            let (how, failed, pending) = close_while_a_beat_waits(wake_per_reply);
            assert!(
                matches!(how, Some(Ended::Closed(1001))),
                "wake_per_reply {wake_per_reply}: the connection did not end as the \
                 server's 1001 (it ended otherwise, or not within {CLOSE_WAIT:?})"
            );
            assert_eq!(
                (failed, pending),
                (1, 0),
                "wake_per_reply {wake_per_reply}: (heartbeats failed, pending)"
            );
        }
    }

    /// Parks a WebSocket connection, sends its beat (a ping), and has the
    /// server read it and answer with a `1001` close frame and its FIN;
    /// runs the lot until the connection ends (at most [`CLOSE_WAIT`]).
    /// Returns how it ended, and the heartbeats failed and still pending.
    fn close_while_a_beat_waits(wake_per_reply: bool) -> (Option<Ended>, u64, u64) {
        let (client, mut server) = socket_pair();
        // As in `held_back_beat`: the beat, due at the start, goes out on
        // the beat pass for now.
        let start = Instant::now() - TICK;
        let (ctx, rt, lot) = ws_lot(wake_per_reply, start);
        let wire = Wire::new(&ctx.shared);
        let ended = lot.park(&ctx, client, start, Rng::new(1), wire).unwrap();
        lot.beat(&ctx, Instant::now());
        let beat = &ctx.shared.heartbeat;
        let mut ping = vec![0u8; beat.len()];
        server.read_exact(&mut ping).unwrap();
        assert_eq!(&ping, beat, "the server did not read the heartbeat's ping");
        server.write_all(&[0x88, 0x02, 0x03, 0xe9]).unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let how = run_until_ended(&rt, &lot, &ctx, ended).map(|(_, how)| how);
        let counters = &ctx.counters;
        let failed = counters.heartbeat_errors.load(Relaxed);
        (how, failed, counters.heartbeats_pending.load(Relaxed))
    }

    /// How long a test here waits for its connection to end.
    const CLOSE_WAIT: Duration = Duration::from_secs(10);

    /// Parks a WebSocket connection whose server has sent a `1001` close
    /// frame and its FIN (both in the client's socket: `poll` says
    /// `POLLRDHUP`), its next beat an hour away, and runs the lot. Returns
    /// when the lot started running (its next tick comes a [`TICK`]
    /// later), and when and how the connection ended (`None`: not within
    /// [`CLOSE_WAIT`]).
    fn close_then_fin(wake_per_reply: bool) -> (Instant, Option<(Instant, Ended)>) {
        let (client, mut server) = socket_pair();
        // An unmasked close frame with status 1001 (0x03e9), then the FIN.
        server.write_all(&[0x88, 0x02, 0x03, 0xe9]).unwrap();
        server.shutdown(std::net::Shutdown::Write).unwrap();
        let mut fds = libc::pollfd {
            fd: client.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let polled = unsafe { libc::poll(&mut fds, 1, 5_000) };
        assert!(
            polled == 1 && fds.revents & libc::POLLRDHUP != 0,
            "the client's socket did not get the server's FIN"
        );
        let start = Instant::now();
        let (ctx, rt, lot) = ws_lot(wake_per_reply, start);
        let next = start + ctx.shared.interval;
        let wire = Wire::new(&ctx.shared);
        let ended = lot.park(&ctx, client, next, Rng::new(1), wire).unwrap();
        let ran = Instant::now();
        let ended = run_until_ended(&rt, &lot, &ctx, ended);
        drop(server);
        (ran, ended)
    }

    /// A connected pair on loopback: `hold`'s end (nonblocking) and the
    /// server's.
    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        socket_pair_sized(None)
    }

    /// [`socket_pair`], the server's receive buffer `server_recv` bytes if
    /// given (asked before it connects: the window it offers is sized then).
    fn socket_pair_sized(server_recv: Option<usize>) -> (std::net::TcpStream, std::net::TcpStream) {
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(size) = server_recv {
            listener.set_recv_buffer_size(size).unwrap();
        }
        let local: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&local.into()).unwrap();
        listener.listen(1).unwrap();
        let listener: std::net::TcpListener = listener.into();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// A `ws://` hold thread's context ([`test_lot`]'s: ping heartbeats an
    /// hour apart) for a run that started at `start`, with its runtime and
    /// its lot.
    fn ws_lot(wake_per_reply: bool, start: Instant) -> (ThreadCtx, tokio::runtime::Runtime, Lot) {
        let mut shared = HoldShared::for_test();
        let (ws, beat) = crate::ws::WsHold::new(
            &crate::args::parse_target("ws://127.0.0.1:9/").unwrap(),
            crate::ws::WsHeartbeat::Ping,
            b"",
        );
        shared.ws = Some(ws);
        shared.heartbeat = beat;
        test_lot(shared, wake_per_reply, start)
    }

    /// A hold thread's context of `shared` with the settings every test
    /// here shares (heartbeats an hour apart, a minute's reply timeout,
    /// the lot's tick [`TICK`], replies read as `wake_per_reply` says) for
    /// a run that started at `start`, with its runtime and its lot.
    fn test_lot(
        mut shared: HoldShared,
        wake_per_reply: bool,
        start: Instant,
    ) -> (ThreadCtx, tokio::runtime::Runtime, Lot) {
        shared.interval = Duration::from_secs(3600);
        shared.timeout = Duration::from_secs(60);
        shared.tick = TICK;
        shared.wake_per_reply = wake_per_reply;
        shared.start = start;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lot = {
            let _runtime = rt.enter();
            Lot::new(wake_per_reply).unwrap()
        };
        (ThreadCtx::for_test(shared), rt, lot)
    }

    /// Runs `lot` until `ended` says how its connection ended: when and
    /// how (`None`: not within [`CLOSE_WAIT`]).
    fn run_until_ended(
        rt: &tokio::runtime::Runtime,
        lot: &Lot,
        ctx: &ThreadCtx,
        ended: oneshot::Receiver<Ended>,
    ) -> Option<(Instant, Ended)> {
        rt.block_on(async {
            tokio::select! {
                () = lot.run(ctx) => unreachable!("the lot runs until dropped"),
                how = ended => Some((Instant::now(), how.expect("the lot dropped the sender"))),
                () = tokio::time::sleep(CLOSE_WAIT) => None,
            }
        })
    }

    /// Parks a connection whose one beat is larger than its send buffer and
    /// the server's receive buffer together (both set small, so the
    /// machine's `tcp_wmem` does not decide), sends the beat while the
    /// server is not reading, checks that its rest waits in the writers'
    /// epoll set, then runs the lot while the server reads everything.
    /// Returns when the lot started running (its next tick comes a [`TICK`]
    /// later) and when the server had the whole beat.
    fn held_back_beat(wake_per_reply: bool) -> (Instant, Instant) {
        let (client, mut server) = socket_pair_sized(Some(64 * 1024));
        let client_sock = socket2::SockRef::from(&client);
        client_sock.set_send_buffer_size(64 * 1024).unwrap();
        // What the kernel granted (it doubles what is asked), with a wide
        // margin: a write and the receiver may each go a segment over.
        let buffers = client_sock.send_buffer_size().unwrap()
            + socket2::SockRef::from(&server).recv_buffer_size().unwrap();
        let beat = 8 * buffers;

        let mut shared = HoldShared::for_test();
        // Bytes that differ by position: a rest sent from the wrong place
        // shows.
        let sent: Vec<u8> = (0..beat).map(|i| (i % 251) as u8).collect();
        shared.heartbeat = sent.clone();
        // The run started a tick ago, so that the beat pass for now is
        // tick 1's: the beat, due at the start, goes out on it. (The first
        // tick, 0, hands out nothing: `Wheel::push` puts nothing before
        // tick 1; and the ticker's first pass is tick 0's.)
        let start = Instant::now() - TICK;
        let (ctx, rt, lot) = test_lot(shared, wake_per_reply, start);
        let wire = Wire::new(&ctx.shared);
        let _ended = lot.park(&ctx, client, start, Rng::new(1), wire).unwrap();
        lot.beat(&ctx, Instant::now());
        {
            let st = lot.state.borrow();
            let unsent = st.slots[0]
                .as_ref()
                .map_or(0, |c| c.unsent.len() - c.unsent_at as usize);
            assert!(
                unsent > 0 && st.writers == 1,
                "wake_per_reply {wake_per_reply}: the socket took the whole {beat}-byte beat \
                 ({unsent} bytes wait, {} sockets in the writers' set)",
                st.writers
            );
        }

        let (tx, rx) = tokio::sync::oneshot::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = Vec::with_capacity(beat);
            while got.len() < beat {
                let n = server.read(&mut buf).unwrap();
                assert!(
                    n > 0,
                    "the client closed with {} of {beat} bytes sent",
                    got.len()
                );
                got.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(Instant::now());
            assert!(got == sent, "the server got other bytes than the beat's");
        });
        let ran = Instant::now();
        let whole = rt.block_on(async {
            tokio::select! {
                () = lot.run(&ctx) => unreachable!("the lot runs until dropped"),
                whole = rx => whole.expect("the server thread failed"),
                () = tokio::time::sleep(Duration::from_secs(60)) => {
                    panic!("the server did not get the whole beat in 60 s")
                }
            }
        });
        reader.join().unwrap();
        (ran, whole)
    }
}
