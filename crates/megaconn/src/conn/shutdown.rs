//! Graceful shutdown, as Go's `Server.Shutdown` orders it: stop accepting, close
//! idle connections, let in-flight exchanges finish (their responses carry
//! `Connection: close`), and force-close what is left at the deadline. Idle
//! means nothing received: the kernel is asked before an idle connection is
//! closed, and one whose request already reached its socket is served. HTTP/1.1
//! connections idle as tasks (busy recently), and parked ones that parked
//! within it (straight after an answer), close after [`IDLE_GRACE`]; other
//! parked ones at once. An HTTP/1.1 connection that has not sent a whole
//! request head (a new one, silent since its accept or midway through its
//! first head; or one midway through a later head) is given until
//! [`NEW_CONNECTION_GRACE`] after its accept, or into the drain for a later
//! head ([`LocalShutdown::head_cut`]), as Go's `Shutdown` closes a
//! `StateNew` connection once it is 5 s old: it then closes as
//! [`CloseReason::ShutdownBeforeRequest`](crate::CloseReason::ShutdownBeforeRequest),
//! a drain's close, where it held the drain until `read_header_timeout`
//! (with that off, to the deadline, counted `forced`). A connection still
//! in its TLS or HTTP/2 handshake has asked for nothing either, and closes
//! by the same rule ([`LocalShutdown::new_connection_cut`]; a TLS one was
//! waited for until its `handshake_timeout`, an HTTP/2 one cut at the
//! drain's start, the request its client had on the way lost).
//!
//! Across threads the signal is a `watch` channel owned by the server; inside a
//! worker it is a [`LocalShutdown`] flag plus a `Notify`, so a connection waiting
//! idle pays no atomic operation or channel slot for it.
//!
//! HTTP/1.1 connections wait idle once per request, so they do not register
//! with the `Notify` each time (a lock, a list insert and a removal per wait):
//! each keeps one slot in the worker's waker list for its whole life
//! ([`LocalShutdown::watch`]), refreshed only when its waker changes.
//!
//! Upgraded connections, which a handler may move to a task of its own, watch
//! a `Send` copy of the signal ([`SharedShutdown`]) in the same way, and so
//! do handlers, through [`Draining`](crate::Draining).
//!
//! Awake message connections (WebSocket, framed TCP, native SSE, waiting
//! between messages) hear it through their [`Turn`], HTTP/2 through
//! [`LocalShutdown::wait`]. Without a drain rate every turn comes when
//! shutdown begins. With one (`shutdown_drain_rate`) it comes when the
//! worker's paced drain gives it, a few a tick
//! ([`LocalShutdown::release_awake`]), so their goodbyes (a `1001`, a framed
//! goodbye, an SSE farewell, a `GOAWAY`) are spread as the idle and parked
//! ones' closes are. (They all heard one `Notify` before: in session 43's
//! review 577 of 1,200 WebSockets got their `1001` in the same instant, the
//! reconnect storm the rate is there to prevent.) Until its turn a
//! connection serves on: a push, a broadcast, the peer's messages and pings
//! (session 44's loops took any wake after the start for their turn, so a
//! broadcast closed every subscriber at once). Upgraded WebSockets
//! (`axum_ws`) get turns the same way, from a `Send` list
//! ([`SharedShutdown`], [`Drain::poll_turn`]). The worker's own loops (the
//! parking lot) and handlers' [`Draining`](crate::Draining) hear the start at
//! once: [`LocalShutdown::begun`].
//!
//! gRPC calls still open a margin before the drain's deadline
//! ([`goodbye_margin`]) are ended by the server with `UNAVAILABLE`, which
//! their clients retry, rather than cut with the connection at the
//! deadline: each such HTTP/2 stream holds a [`CallEnd`], a slot in the
//! worker's list of calls that [`LocalShutdown::end_calls`] wakes
//! (`proto/http2.rs` says what a stream answers), and each gRPC-web
//! exchange over HTTP/1.1 a [`CallSlot`] in the same list
//! (`proto/http1/exchange.rs`, `end_call`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long graceful shutdown (without `shutdown_drain_rate`) leaves an
/// HTTP/1.1 keep-alive connection idle as a task, one that served a request
/// within `park_idle_after`, before it closes it: a busy client sends its
/// next request as soon as it has read our last answer, which said
/// keep-alive, and a close at that moment loses the request (the client
/// sees the connection end under it, or a reset). Within the grace it is
/// served, its answer saying `Connection: close`. So is a connection that
/// parked within the grace (a new one parks straight after its first
/// answer, a cold one after the answer to its wake-up). Parked connections
/// parked longer ago (cold) close at once, unless a request already waits
/// in them. The price: a drain with idle tasks, or connections that just
/// parked, lasts this much longer.
pub(crate) const IDLE_GRACE: Duration = Duration::from_millis(500);

/// How long graceful shutdown waits for a request head that has not come
/// whole: a new connection's first (nothing sent since its accept, or part
/// of a head) until this long after its accept (or its wake from the
/// parking lot), at the drain's start at the earliest; a later request's
/// head begun and not whole until this long after the drain's start (its
/// first byte's time is not kept). Go's value: its `Shutdown` closes a
/// connection still in `StateNew` once it is 5 s old (`closeIdleConns`,
/// `net/http/server.go`), and one midway through a later head at once
/// (it is `StateIdle` until the head is whole); this keeps the grace for
/// a later head too, as a busy client's next request may be under way. A
/// client that connected just before the listener stopped gets its
/// request served (with `Connection: close`); a browser's preconnected
/// socket that sends nothing, or a head that trickles, no longer holds the
/// drain until `read_header_timeout` (with that off, to the deadline).
///
/// The one rule for a connection that has not asked yet, whatever it
/// waits in (HTTP/1.1's first head, a TLS or HTTP/2 handshake): it hears
/// the drain at its turn among the idle connections (the start's idle
/// grace, or a paced drain's tick), and closes then if its cut has passed,
/// else at its cut. A paced drain's turn does not close a young one
/// early: its client connected within the last 5 s, and its request, on
/// the way or about to be, would be lost unanswered on a connection that
/// served none (a client retries a request only on a reused one). Such
/// closes are not paced, but their cuts are spread as their accepts were:
/// they come no faster than the connections came. They stay in a paced
/// drain's count (`drain_pending`) until they close: it counts the
/// connections still open (`conn::connection::count_drain_pending`), not
/// the turns given (until session 55 it counted one off at its turn, and
/// read that many low, for up to 5 s).
///
/// Over TLS the 5 s count from the accept for every step, as Go's do (its
/// `StateNew` is set at the accept and kept through the TLS handshake):
/// the TLS handshake, then the first HTTP/1.1 head or the HTTP/2
/// handshake, are cut 5 s after the accept, not 5 s after the step before
/// ended (before session 55, up to ~10 s after the accept).
pub(crate) const NEW_CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// [`IDLE_GRACE`] as a server with `config` gives it: at most half its
/// `shutdown_timeout`. Idle tasks get it, and parked connections that
/// parked within it (straight after an answer: `ParkingLot::close_all_but_recent`).
pub(crate) fn idle_grace(config: &crate::conn::config::Config) -> Duration {
    IDLE_GRACE.min(config.shutdown_timeout / 2)
}

/// How long before the drain's deadline the connections still open say
/// what they have to say while their tasks are still polled: a paced
/// drain's awake connections their goodbyes, HTTP/2 gRPC calls their
/// `UNAVAILABLE` ([`LocalShutdown::end_calls`]). A tenth of
/// `shutdown_timeout`, at most a second: a goodbye needs time to be
/// written, and at the deadline nothing is polled any more.
pub(crate) fn goodbye_margin(config: &crate::conn::config::Config) -> Duration {
    (config.shutdown_timeout / 10).min(Duration::from_secs(1))
}

/// A worker's view of shutdown.
#[derive(Debug, Default)]
pub(crate) struct LocalShutdown {
    started: Cell<bool>,
    /// When the drain began (the first [`begin`](LocalShutdown::begin)):
    /// the head waits are cut from it ([`head_cut`](LocalShutdown::head_cut)).
    began_at: Cell<Option<Instant>>,
    /// The drain's first [`ShutdownBeforeRequest`](crate::CloseReason::ShutdownBeforeRequest)
    /// close was logged ([`closing_before_request`](LocalShutdown::closing_before_request)).
    told_before_request: Cell<bool>,
    /// Every idle connection that can park should (an upgrade hands the
    /// parking lot to the next process).
    park_all: Cell<bool>,
    /// So should awake framed connections between frames (the next
    /// process adopts framed connections too).
    park_all_framed: Cell<bool>,
    notify: Notify,
    /// Wakers of watching connections, by slot; `free` lists the vacant slots.
    watchers: RefCell<Watchers>,
    /// Upgraded connections' view of the start.
    upgraded: Arc<SharedShutdown>,
    /// True while a paced drain hands out the awake connections' turns: a
    /// [`wait`](LocalShutdown::wait) resolves at its turn, not at the start.
    pacing: Cell<bool>,
    /// Wakers of awake message connections' [`wait`](LocalShutdown::wait)s,
    /// by slot. A slot whose waker was taken while its owner still holds it
    /// is a turn given ([`release_awake`](LocalShutdown::release_awake)).
    awake: RefCell<Watchers>,
    /// [`Turn`]s alive: the awake message connections of the worker
    /// (WebSocket, framed, server-sent events), each holding one for its
    /// loop's whole life, with a hub or without (the message layer counts
    /// awake ones only while registered for pushes, which is with a hub).
    turns: Cell<usize>,
    /// True once the gRPC calls still open are to end
    /// ([`end_calls`](LocalShutdown::end_calls)).
    calls_end: Cell<bool>,
    /// Wakers of open HTTP/2 gRPC calls ([`CallEnd`]), by slot.
    calls: RefCell<Watchers>,
}

#[derive(Debug, Default)]
struct Watchers {
    wakers: Vec<Option<Waker>>,
    free: Vec<u32>,
}

impl LocalShutdown {
    /// True once graceful shutdown began.
    pub(crate) fn is_started(&self) -> bool {
        self.started.get()
    }

    /// Marks shutdown as begun and wakes every waiter, a paced drain's
    /// included. (At the deadline this comes too late for an awake
    /// connection's goodbye: the paced drain ends its pacing a margin
    /// before, `server/worker.rs` `drain_paced`.)
    pub(crate) fn start(&self) {
        self.begin(false);
        self.end_pacing();
        self.wake_watchers(usize::MAX);
    }

    /// Asks every idle (watching) connection to park now, if it can, and,
    /// with `framed`, every awake framed connection between frames
    /// ([`parking_all_framed`](LocalShutdown::parking_all_framed)). Those
    /// wait in the awake list (their [`Turn`]): each is woken with its
    /// waker left in its slot, so that no turn is taken for given (a
    /// connection in the middle of a frame, which does not look, keeps
    /// its place). Returns how many awake connections were woken.
    pub(crate) fn park_all_idle(&self, framed: bool) -> usize {
        self.park_all.set(true);
        self.park_all_framed.set(framed);
        self.wake_watchers(usize::MAX);
        if framed {
            Watchers::nudge(&self.awake)
        } else {
            0
        }
    }

    /// True once [`park_all_idle`](LocalShutdown::park_all_idle) was asked.
    pub(crate) fn parking_all(&self) -> bool {
        self.park_all.get()
    }

    /// True once [`park_all_idle`](LocalShutdown::park_all_idle) was
    /// asked of framed connections too.
    pub(crate) fn parking_all_framed(&self) -> bool {
        self.park_all_framed.get()
    }

    /// Marks shutdown as begun and wakes the [`begun`](LocalShutdown::begun)
    /// waiters, but not the watching (idle HTTP/1.1) connections: a paced
    /// drain wakes those a few at a time with
    /// [`wake_watchers`](LocalShutdown::wake_watchers). `paced`: so it does
    /// the awake connections' [`wait`](LocalShutdown::wait)s, a turn each
    /// ([`release_awake`](LocalShutdown::release_awake)), until
    /// [`end_pacing`](LocalShutdown::end_pacing); otherwise they resolve now.
    pub(crate) fn begin(&self, paced: bool) {
        self.pacing.set(paced);
        if self.began_at.get().is_none() {
            self.began_at.set(Some(Instant::now()));
        }
        self.started.set(true);
        self.upgraded.start(paced);
        self.notify.notify_waiters();
        if !paced {
            self.release_awake(usize::MAX);
        }
    }

    /// When an HTTP/1.1 connection waiting for a request head closes, now
    /// that the drain has begun (`None` before: it waits as the timeouts
    /// say): [`NEW_CONNECTION_GRACE`] after `since`, its accept (or wake)
    /// for a first request, at the drain's start at the earliest; that long
    /// after the drain's start for a later request's head (`since` `None`).
    /// See [`NEW_CONNECTION_GRACE`].
    pub(crate) fn head_cut(&self, since: Option<Instant>) -> Option<Instant> {
        let began = self.began_at.get()?;
        Some(match since {
            Some(since) => (since + NEW_CONNECTION_GRACE).max(began),
            None => began + NEW_CONNECTION_GRACE,
        })
    }

    /// Resolves when a new connection that has not asked for anything yet,
    /// waiting since `since` in a handshake (TLS, HTTP/2), is to close:
    /// once the drain has begun and given it its turn among the idle
    /// connections, at its [`head_cut`](LocalShutdown::head_cut) (at once
    /// if that has passed). HTTP/1.1's first head follows the same rule in
    /// its own wait (`proto/http1/conn.rs`, which keeps its slot for the
    /// connection's life); see [`NEW_CONNECTION_GRACE`].
    ///
    /// Until the drain it costs a slot in the watching list and a borrow
    /// per poll; its timer is made only after the turn.
    pub(crate) async fn new_connection_cut(&self, since: Instant) {
        NewTurn {
            shutdown: self,
            slot: None,
        }
        .await;
        if let Some(cut) = self.head_cut(Some(since)) {
            tokio::time::sleep_until(cut).await;
        }
    }

    /// A connection closes at its [`head_cut`](LocalShutdown::head_cut)
    /// (a handshake at its [`new_connection_cut`](LocalShutdown::new_connection_cut)):
    /// logged at INFO for the drain's first (a line per connection would
    /// be a flood with many), at DEBUG for each. `peer`: the client's
    /// address, asked only for a line that goes out.
    pub(crate) fn closing_before_request(&self, peer: impl FnOnce() -> String) {
        if !self.told_before_request.replace(true) {
            tracing::info!(
                peer = %peer(),
                grace_s = NEW_CONNECTION_GRACE.as_secs(),
                "shutdown: closing connections with no whole request head (a TLS or HTTP/2 handshake not done counts as none) within the grace for new connections (as Go's Shutdown closes a new connection 5 s old); counted as closed{{reason=\"shutdown_before_request\"}}, not forced"
            );
        } else {
            tracing::debug!(
                peer = %peer(),
                "shutdown: closing a connection with no whole request head"
            );
        }
    }

    /// Gives at most `n` awake connections waiting in
    /// [`wait`](LocalShutdown::wait) their turn (each then says goodbye),
    /// the latest slots first; returns how many.
    pub(crate) fn release_awake(&self, n: usize) -> usize {
        Watchers::wake(&self.awake, n)
    }

    /// The paced drain is over (or its deadline came): every awake
    /// connection's [`wait`](LocalShutdown::wait), now or later, resolves
    /// at once.
    pub(crate) fn end_pacing(&self) {
        self.pacing.set(false);
        self.release_awake(usize::MAX);
        self.upgraded.end_pacing();
    }

    /// Awake connections waiting for their turn.
    pub(crate) fn awake_waiting(&self) -> usize {
        self.awake.borrow().waiting()
    }

    /// Gives at most `n` upgraded WebSockets (`axum_ws`) waiting for their
    /// turn theirs (each then sends its `1001`); returns how many.
    pub(crate) fn release_upgraded(&self, n: usize) -> usize {
        self.upgraded.release(n)
    }

    /// Upgraded WebSockets (`axum_ws`) waiting for their turn.
    pub(crate) fn upgraded_waiting(&self) -> usize {
        self.upgraded.turns().waiting()
    }

    /// Wakes at most `n` watching connections, the latest slots first, as
    /// the parking lot's drain (each then closes if it is still idle);
    /// returns how many.
    pub(crate) fn wake_watchers(&self, n: usize) -> usize {
        Watchers::wake(&self.watchers, n)
    }

    /// Watching connections not woken yet.
    pub(crate) fn watching(&self) -> usize {
        self.watchers.borrow().waiting()
    }

    /// Resolves once shutdown has begun (at once if it already has), for
    /// the worker's own loops (the parking lot): never paced.
    pub(crate) async fn begun(&self) {
        let notified = self.notify.notified();
        if self.started.get() {
            return;
        }
        notified.await;
    }

    /// A one-off wait for an awake connection's turn (an HTTP/2
    /// connection's `GOAWAY`): resolves once
    /// shutdown has begun, or, during a paced drain, once the drain gives
    /// it its turn ([`release_awake`](LocalShutdown::release_awake)).
    ///
    /// Dropped, it gives its slot back, and a turn it was given with it; a
    /// wait made anew joins the list again. So its caller polls it before
    /// anything else that may wake it (HTTP/2's loop: first in a biased
    /// `select!`). A loop that waits between messages keeps a [`Turn`]
    /// instead, which outlives each wait.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            slot: None,
        }
    }

    /// An awake message connection's place among the paced drain's turns,
    /// kept for as long as its loop runs: see [`Turn`].
    pub(crate) fn turn(&self) -> Turn<'_> {
        self.turns.set(self.turns.get() + 1);
        Turn {
            shutdown: self,
            place: Place::Out,
        }
    }

    /// Makes sure `waker` is woken when shutdown begins, using (and keeping)
    /// the caller's slot; cheap when the slot already holds the same waker.
    /// Check [`is_started`](Self::is_started) before: a watch set after the
    /// start is never woken.
    ///
    /// Returns true when the slot already held this waker.
    pub(crate) fn watch(&self, slot: &mut Option<u32>, waker: &Waker) -> bool {
        self.watchers.borrow_mut().watch(slot, waker)
    }

    /// Gives the caller's slot back.
    pub(crate) fn unwatch(&self, slot: &mut Option<u32>) {
        self.watchers.borrow_mut().unwatch(slot);
    }

    /// The awake message connections (WebSocket, framed, server-sent
    /// events on the native engine) of this worker now: the [`Turn`]s
    /// alive. An upgrade counts what its drain is left with by it
    /// (`server/worker.rs`), hub or not.
    pub(crate) fn awake_message_connections(&self) -> usize {
        self.turns.get()
    }

    /// The signal upgraded connections watch, which may live on any task.
    pub(crate) fn upgraded(&self) -> &Arc<SharedShutdown> {
        &self.upgraded
    }

    /// An open gRPC call's place in the list [`end_calls`](Self::end_calls)
    /// wakes: see [`CallEnd`].
    pub(crate) fn call_end(&self) -> CallEnd<'_> {
        CallEnd {
            shutdown: self,
            slot: Cell::new(None),
        }
    }

    /// The drain's deadline is a margin away ([`goodbye_margin`]): every
    /// open gRPC call ([`CallEnd`], [`CallSlot`]), and any that asks
    /// later, is to end now. Returns how many were woken for it.
    pub(crate) fn end_calls(&self) -> usize {
        self.calls_end.set(true);
        Watchers::wake(&self.calls, usize::MAX)
    }

    /// True once the call of `slot` is to end ([`end_calls`](Self::end_calls)),
    /// its slot then given back; else the caller's waker is kept in the
    /// slot (one borrow and a `will_wake` when it is the same as last time).
    pub(crate) fn poll_call_end(&self, slot: &mut CallSlot, cx: &Context<'_>) -> bool {
        let mut calls = self.calls.borrow_mut();
        let end = self.calls_end.get();
        if end {
            calls.unwatch(&mut slot.0);
        } else {
            calls.watch(&mut slot.0, cx.waker());
        }
        end
    }

    /// Gives `slot` back to the list of open calls (nothing if it holds
    /// none).
    pub(crate) fn leave_calls(&self, slot: &mut CallSlot) {
        if slot.0.is_some() {
            self.calls.borrow_mut().unwatch(&mut slot.0);
        }
    }
}

/// An open gRPC call's slot in its worker's list of calls, kept by an
/// owner that has the worker's [`LocalShutdown`] at hand at each poll and
/// when it ends, and asks through it ([`LocalShutdown::poll_call_end`],
/// [`LocalShutdown::leave_calls`]): HTTP/1.1's exchange, which holds its
/// connection (and through it the worker's context) mutably for its whole
/// life, so cannot also hold a [`CallEnd`], a borrow of the context. Its
/// owner gives it back when it drops; one never given back keeps a waker
/// in the list until the worker ends.
#[derive(Debug, Default)]
pub(crate) struct CallSlot(Option<u32>);

/// An HTTP/2 gRPC call's slot in its worker's list of open calls, held by
/// the stream's exchange from its start (a call whose handler waits is
/// polled by nothing else when the time comes) and given back when it is
/// dropped. A slot and a reference: the list is the worker's, so a
/// connection keeps no list and no timer of its own for it, and a stream
/// that is not a gRPC call holds none (`Option`).
pub(crate) struct CallEnd<'a> {
    shutdown: &'a LocalShutdown,
    slot: Cell<Option<u32>>,
}

impl CallEnd<'_> {
    /// True once the call is to end ([`LocalShutdown::end_calls`]); else
    /// the caller's waker is kept in the slot (one borrow and a
    /// `will_wake` when it is the same as last time).
    pub(crate) fn poll_end(&self, cx: &Context<'_>) -> bool {
        let mut slot = CallSlot(self.slot.get());
        let end = self.shutdown.poll_call_end(&mut slot, cx);
        self.slot.set(slot.0);
        end
    }
}

impl Drop for CallEnd<'_> {
    fn drop(&mut self) {
        self.shutdown.leave_calls(&mut CallSlot(self.slot.get()));
    }
}

impl Watchers {
    /// [`LocalShutdown::watch`]'s slot keeping.
    fn watch(&mut self, slot: &mut Option<u32>, waker: &Waker) -> bool {
        match *slot {
            Some(i) => {
                let entry = &mut self.wakers[i as usize];
                match entry {
                    Some(w) if w.will_wake(waker) => return true,
                    _ => *entry = Some(waker.clone()),
                }
            }
            None => {
                let i = match self.free.pop() {
                    Some(i) => {
                        self.wakers[i as usize] = Some(waker.clone());
                        i
                    }
                    None => {
                        self.wakers.push(Some(waker.clone()));
                        (self.wakers.len() - 1) as u32
                    }
                };
                *slot = Some(i);
            }
        }
        false
    }

    fn unwatch(&mut self, slot: &mut Option<u32>) {
        if let Some(i) = slot.take() {
            self.wakers[i as usize] = None;
            self.free.push(i);
        }
    }

    /// Wakes at most `n` of `list`'s wakers, the latest slots first
    /// ([`take`](Watchers::take)); returns how many.
    fn wake(list: &RefCell<Watchers>, n: usize) -> usize {
        // Taken out first: a woken task may run (and unwatch) at once.
        let wakers = list.borrow_mut().take(n);
        let woken = wakers.len();
        for waker in wakers {
            waker.wake();
        }
        woken
    }

    /// Wakes every waker of `list` and leaves each in its slot (a wake
    /// that is not a turn); returns how many.
    fn nudge(list: &RefCell<Watchers>) -> usize {
        // Cloned out first: a woken task may run (and unwatch) at once.
        let wakers: Vec<Waker> = list.borrow().wakers.iter().flatten().cloned().collect();
        let woken = wakers.len();
        for waker in wakers {
            waker.wake();
        }
        woken
    }

    /// One poll of a wait that keeps `slot` in `list` ([`Wait`],
    /// [`NewTurn`]): ready, its slot given back, when `turn` says so from
    /// whether the list took its waker (`None`: it holds no slot yet);
    /// else its waker is kept in the slot.
    fn poll_wait(
        list: &RefCell<Watchers>,
        slot: &mut Option<u32>,
        cx: &Context<'_>,
        turn: impl FnOnce(Option<bool>) -> bool,
    ) -> std::task::Poll<()> {
        let mut list = list.borrow_mut();
        let taken = slot.map(|i| list.wakers[i as usize].is_none());
        if turn(taken) {
            list.unwatch(slot);
            return std::task::Poll::Ready(());
        }
        list.watch(slot, cx.waker());
        std::task::Poll::Pending
    }

    /// Gives a dropped wait's `slot` back to `list`, if it holds one.
    fn leave(list: &RefCell<Watchers>, slot: &mut Option<u32>) {
        if slot.is_some() {
            list.borrow_mut().unwatch(slot);
        }
    }

    /// Slots holding a waker (not woken yet).
    fn waiting(&self) -> usize {
        self.wakers.iter().filter(|w| w.is_some()).count()
    }

    /// Takes out at most `n` wakers, the latest slots first (their slots
    /// stay their owners').
    fn take(&mut self, n: usize) -> Vec<Waker> {
        self.wakers
            .iter_mut()
            .rev()
            .filter_map(Option::take)
            .take(n)
            .collect()
    }
}

/// [`LocalShutdown::new_connection_cut`]'s first step: a new connection's
/// turn among the watching (idle) ones. It comes when the drain takes its
/// waker out of its slot ([`LocalShutdown::wake_watchers`]: the start's
/// idle grace, a paced drain's tick, the deadline), or at once for a wait
/// first polled after the start (the start's wake may have gone by: as
/// [`LocalShutdown::watch`] says, a watch set after it may never be
/// woken). A waker taken before the start (an
/// upgrade's [`park_all_idle`](LocalShutdown::park_all_idle)) is no turn:
/// it is put back.
#[must_use = "a turn is heard only by polling"]
struct NewTurn<'a> {
    shutdown: &'a LocalShutdown,
    slot: Option<u32>,
}

impl Future for NewTurn<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<()> {
        let this = &mut *self;
        let s = this.shutdown;
        // Its waker taken (or no slot yet) once the drain began.
        Watchers::poll_wait(&s.watchers, &mut this.slot, cx, |taken| {
            s.started.get() && taken != Some(false)
        })
    }
}

impl Drop for NewTurn<'_> {
    fn drop(&mut self) {
        Watchers::leave(&self.shutdown.watchers, &mut self.slot);
    }
}

/// [`LocalShutdown::wait`]'s future. Its slot in the awake list is taken
/// on its first poll and kept across polls: one borrow and a slot, where a
/// `Notify` took a lock each way.
#[must_use = "a wait does nothing unless polled"]
pub(crate) struct Wait<'a> {
    shutdown: &'a LocalShutdown,
    slot: Option<u32>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<()> {
        let this = &mut *self;
        let s = this.shutdown;
        // Its waker taken while it kept the slot: its turn came (or the
        // start, unpaced).
        Watchers::poll_wait(&s.awake, &mut this.slot, cx, |taken| {
            taken == Some(true) || (s.started.get() && !s.pacing.get())
        })
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        Watchers::leave(&self.shutdown.awake, &mut self.slot);
    }
}

/// An awake message connection's (WebSocket, framed, SSE) place among a
/// paced drain's turns, held by its loop from start to end.
///
/// Its slot in the awake list outlives each wait between messages, so the
/// turn reaches the connection whatever it is doing: given while it serves
/// a message, a push or the peer's ping (whatever woke it first), it waits
/// in the slot until the loop next asks ([`came`](Turn::came)). A loop that
/// took "shutdown began" for its turn instead, as they did until session
/// 45, said goodbye as soon as anything woke it: a hub broadcast during a
/// paced drain woke every subscriber, and each closed at once, undoing the
/// pacing. Before shutdown a wait costs what a [`Wait`] did, and less (the
/// slot is taken once, not at every wait).
#[must_use = "a turn is heard only by its owner's waits and checks"]
pub(crate) struct Turn<'a> {
    shutdown: &'a LocalShutdown,
    place: Place,
}

/// Where a [`Turn`] is: 8 bytes, so that a [`Turn`] is two words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Not in the awake list (it has not waited yet).
    Out,
    /// In the awake list, at this slot: a turn given takes its waker out
    /// ([`LocalShutdown::release_awake`]).
    In(u32),
    /// Its turn came (or shutdown began unpaced, or the pacing ended): the
    /// slot went back.
    Came,
}

impl<'a> Turn<'a> {
    /// True once this connection is to say goodbye: its turn came (during
    /// a paced drain), or shutdown began without one, or the pacing ended.
    /// Registers no waker; one `Cell` read until shutdown begins.
    pub(crate) fn came(&mut self) -> bool {
        let s = self.shutdown;
        match self.place {
            Place::Came => return true,
            _ if !s.started.get() => return false,
            Place::Out if s.pacing.get() => return false,
            Place::In(i) if s.pacing.get() => {
                let mut awake = s.awake.borrow_mut();
                // Its waker still in the slot: no turn yet.
                if awake.wakers[i as usize].is_some() {
                    return false;
                }
                awake.unwatch(&mut Some(i));
            }
            Place::In(i) => s.awake.borrow_mut().unwatch(&mut Some(i)),
            Place::Out => {}
        }
        self.place = Place::Came;
        true
    }

    /// Resolves once this connection's turn [`came`](Turn::came); cancel
    /// safe (the slot stays), so it may lose a `select!` to anything.
    pub(crate) fn wait<'t>(&'t mut self) -> impl Future<Output = ()> + use<'t, 'a> {
        std::future::poll_fn(|cx| {
            if self.came() {
                return std::task::Poll::Ready(());
            }
            let mut slot = match self.place {
                Place::In(i) => Some(i),
                _ => None,
            };
            self.shutdown
                .awake
                .borrow_mut()
                .watch(&mut slot, cx.waker());
            if let Some(i) = slot {
                self.place = Place::In(i);
            }
            std::task::Poll::Pending
        })
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let turns = &self.shutdown.turns;
        turns.set(turns.get() - 1);
        if let Place::In(i) = self.place {
            self.shutdown.awake.borrow_mut().unwatch(&mut Some(i));
        }
    }
}

/// Shutdown as an upgraded connection sees it (an `axum_ws` socket, a
/// handler's `OnUpgrade` tunnel), and a handler's
/// [`Draining`](crate::Draining): a handler may move it to a task of its
/// own (`tokio::spawn`), so the signal is `Send`, at the cost of a lock
/// each time a waiter's waker changes (a [`Drain`] keeps the last one),
/// which only these waiters pay.
///
/// Two lists: handlers' [`Draining`](crate::Draining) waits hear the start
/// at once (`watchers`); upgraded WebSockets' [`Drain`]s wait for their
/// turn (`turns`), which a paced drain gives a few a tick
/// ([`LocalShutdown::release_upgraded`]), as the native loops' [`Turn`]s.
#[derive(Debug, Default)]
pub(crate) struct SharedShutdown {
    started: AtomicBool,
    /// True while a paced drain hands out the turns.
    pacing: AtomicBool,
    watchers: Mutex<Watchers>,
    /// Upgraded WebSockets' drains, by slot: a slot whose waker was taken
    /// while its owner holds it is a turn given, as in `LocalShutdown`'s
    /// awake list.
    turns: Mutex<Watchers>,
}

impl SharedShutdown {
    /// Marks shutdown as begun and wakes every watcher; `paced`: the
    /// upgraded WebSockets wait for their turns
    /// ([`release`](SharedShutdown::release)), else they hear it now.
    fn start(&self, paced: bool) {
        // Before `started`: a drain that sees the start sees the pacing.
        self.pacing.store(paced, Ordering::SeqCst);
        self.started.store(true, Ordering::SeqCst);
        let wakers = self.lock().take(usize::MAX);
        for waker in wakers {
            waker.wake();
        }
        if !paced {
            self.release(usize::MAX);
        }
    }

    /// Gives at most `n` upgraded WebSockets their turn; returns how many.
    fn release(&self, n: usize) -> usize {
        // Taken out first: a woken task may run (and poll) on another thread.
        let wakers = self.turns().take(n);
        let given = wakers.len();
        for waker in wakers {
            waker.wake();
        }
        given
    }

    /// The pacing is over: every upgraded WebSocket's turn comes now.
    fn end_pacing(&self) {
        self.pacing.store(false, Ordering::SeqCst);
        self.release(usize::MAX);
    }

    /// True once shutdown began.
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// True once shutdown began; until then `waker` is woken when it does
    /// (the caller's slot kept, as in [`LocalShutdown::watch`]).
    pub(crate) fn poll_started(&self, slot: &mut Option<u32>, waker: &Waker) -> bool {
        if self.started.load(Ordering::SeqCst) {
            return true;
        }
        self.lock().watch(slot, waker);
        // `start` may have taken the wakers just before this one went in.
        self.started.load(Ordering::SeqCst)
    }

    /// Gives the caller's slot back.
    pub(crate) fn unwatch(&self, slot: &mut Option<u32>) {
        if slot.is_some() {
            self.lock().unwatch(slot);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn turns(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An upgraded connection's place in its worker's graceful shutdown, as
/// hyper-util's graceful watcher or axum's `ConnLimiterIo` travel with the
/// connection: the drain waits for it (up to `shutdown_timeout`; past it
/// the worker's runtime ends and drops it, counted as forced), and it can
/// tell when its turn to go came (an `axum_ws` socket's `1001`): at the
/// start, or during a paced drain once the drain gives it (a raw tunnel
/// never asks, and is never given one).
pub(crate) struct Drain {
    /// Counts it among the worker's connection tasks; `None` on an HTTP/2
    /// stream, whose connection's task is counted.
    _token: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
    shutdown: Arc<SharedShutdown>,
    /// Its waker's slot in `shutdown`'s turns, once watched; kept after its
    /// turn was given (the slot's waker taken), which is how
    /// [`turn_came`](Drain::turn_came) tells.
    slot: Option<u32>,
    /// The waker last put in that slot: while the task's waker stays the
    /// same, a poll before shutdown reads the flag and takes no lock.
    watching: Option<Waker>,
    /// After its turn came, how long the connection may still hold the
    /// drain ([`Drain::poll_grace_over`]); armed by the first poll.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drain {
    pub(crate) fn new(
        token: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
        shutdown: Arc<SharedShutdown>,
    ) -> Drain {
        Drain {
            _token: token,
            shutdown,
            slot: None,
            watching: None,
            grace: None,
        }
    }

    /// True once `grace` has passed since the first call; until then the
    /// task is woken when it does.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_grace_over(&mut self, cx: &mut Context<'_>, grace: Duration) -> bool {
        self.grace
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }

    /// True once its turn came, registering no waker: for a poll whose
    /// task may not be the one watching (an `axum_ws` socket's `Sink`
    /// half). During a paced drain it takes the lock.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn turn_came(&self) -> bool {
        let s = &*self.shutdown;
        if !s.started.load(Ordering::SeqCst) {
            return false;
        }
        !s.pacing.load(Ordering::SeqCst) || self.given(&s.turns())
    }

    /// Its slot is held and its waker was taken: its turn was given.
    fn given(&self, turns: &Watchers) -> bool {
        self.slot
            .is_some_and(|i| turns.wakers[i as usize].is_none())
    }

    /// True once its turn came: at the start, or during a paced drain when
    /// the drain gave it; until then `waker` is woken when it does.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_turn(&mut self, waker: &Waker) -> bool {
        let s = &*self.shutdown;
        if self.watching.as_ref().is_some_and(|w| w.will_wake(waker))
            && !s.started.load(Ordering::SeqCst)
        {
            // That waker is still in the list: only the start, or a turn
            // after it, takes it out, and only after setting the flag this
            // reads.
            return false;
        }
        if s.started.load(Ordering::SeqCst) && !s.pacing.load(Ordering::SeqCst) {
            return true;
        }
        let mut turns = s.turns();
        if s.started.load(Ordering::SeqCst) && self.given(&turns) {
            return true;
        }
        turns.watch(&mut self.slot, waker);
        // `start` or `end_pacing` may have taken the wakers just before
        // this one went in (each sets its flag first, then locks).
        let came = s.started.load(Ordering::SeqCst) && !s.pacing.load(Ordering::SeqCst);
        drop(turns);
        if !came {
            self.watching = Some(waker.clone());
        }
        came
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.shutdown.turns().unwatch(&mut self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A head wait's cut: none before the drain; a first request's
    /// `NEW_CONNECTION_GRACE` after its accept, at the drain's start at the
    /// earliest (Go closes a new connection once it is 5 s old); a later
    /// head's that long into the drain. The drain's start is its first
    /// `begin`: the deadline's `start` does not move it.
    #[test]
    fn head_cuts_follow_gos_rule_for_new_connections() {
        let s = LocalShutdown::default();
        assert_eq!(s.head_cut(Some(Instant::now())), None, "no drain yet");
        assert_eq!(s.head_cut(None), None, "no drain yet");
        s.begin(true);
        let began = s.began_at.get().expect("the drain began");
        let old = began - NEW_CONNECTION_GRACE * 2;
        assert_eq!(s.head_cut(Some(old)), Some(began), "5 s old: at once");
        let young = began - NEW_CONNECTION_GRACE / 5;
        assert_eq!(
            s.head_cut(Some(young)),
            Some(young + NEW_CONNECTION_GRACE),
            "1 s old: 4 s into the drain"
        );
        assert_eq!(s.head_cut(None), Some(began + NEW_CONNECTION_GRACE));
        s.start();
        assert_eq!(s.began_at.get(), Some(began), "the first begin's");
    }

    /// A handshake's cut (`new_connection_cut`) follows the same rule as a
    /// first head's: nothing before the drain; at the drain, its turn
    /// among the idle ones first (a paced drain's tick), then its
    /// `head_cut`: at once for a connection 5 s old, else 5 s after its
    /// start. Its slot in the watching list goes back when it ends or is
    /// dropped.
    #[tokio::test(start_paused = true)]
    async fn a_handshake_is_cut_at_its_turn_and_its_head_cut() {
        let s = LocalShutdown::default();
        let noop = Waker::noop();
        let old = Instant::now();
        tokio::time::advance(NEW_CONNECTION_GRACE * 2).await;
        let young = Instant::now() - NEW_CONNECTION_GRACE / 5;
        let mut old_cut = std::pin::pin!(s.new_connection_cut(old));
        let mut young_cut = std::pin::pin!(s.new_connection_cut(young));
        assert!(!resolves(old_cut.as_mut(), noop), "no drain yet");
        assert!(!resolves(young_cut.as_mut(), noop), "no drain yet");
        assert_eq!(s.watching(), 2, "each waits among the idle ones");
        s.begin(true);
        assert!(!resolves(old_cut.as_mut(), noop), "paced: no turn yet");
        assert_eq!(s.wake_watchers(2), 2, "both turns given");
        assert!(resolves(old_cut.as_mut(), noop), "5 s old: at its turn");
        assert!(!resolves(young_cut.as_mut(), noop), "1 s old: its cut");
        assert_eq!(s.watching(), 0);
        tokio::time::advance(NEW_CONNECTION_GRACE * 4 / 5 - Duration::from_millis(1)).await;
        assert!(!resolves(young_cut.as_mut(), noop), "not before 5 s old");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(resolves(young_cut.as_mut(), noop), "5 s after its start");
        // One that first looks after the start takes its turn at once.
        let mut late = std::pin::pin!(s.new_connection_cut(old));
        assert!(resolves(late.as_mut(), noop));
        let watchers = s.watchers.borrow();
        assert_eq!(
            watchers.free.len(),
            watchers.wakers.len(),
            "every slot back"
        );
    }

    /// A waker taken before the drain (an upgrade asks every idle
    /// connection to park) is no turn: the handshake waits on, in its slot.
    #[test]
    fn a_wake_before_the_drain_is_no_handshake_turn() {
        let s = LocalShutdown::default();
        let mut cut = std::pin::pin!(s.new_connection_cut(Instant::now()));
        assert!(!resolves(cut.as_mut(), Waker::noop()));
        s.park_all_idle(false);
        assert!(!resolves(cut.as_mut(), Waker::noop()));
        assert_eq!(s.watching(), 1, "watching again");
    }

    #[test]
    fn watchers_are_woken_once_and_slots_reused() {
        let s = LocalShutdown::default();
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let b = Arc::new(Count(AtomicUsize::new(0)));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut sa, mut sb) = (None, None);
        assert!(!s.watch(&mut sa, &wa));
        assert!(s.watch(&mut sa, &wa), "the same waker is kept");
        assert!(!s.watch(&mut sb, &wb));
        s.unwatch(&mut sb);
        assert_eq!(sb, None);
        assert!(!s.watch(&mut sb, &wb));
        assert_eq!(sb, Some(1), "the freed slot is reused");
        s.start();
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        s.unwatch(&mut sa);
        s.unwatch(&mut sb);
        s.start();
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
    }

    /// A socket polled again by the same task (every `recv` of an idle
    /// `axum_ws` socket) reads the flag only: it needs no lock, so it goes
    /// on while another thread holds it.
    #[test]
    fn a_drain_polled_with_the_same_waker_takes_no_lock() {
        let s = LocalShutdown::default();
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let wa = Waker::from(a.clone());
        let mut drain = Drain::new(None, s.upgraded().clone());
        assert!(!drain.poll_turn(&wa));
        let held = s.upgraded().turns();
        let (tx, rx) = std::sync::mpsc::channel();
        let poller = std::thread::spawn(move || {
            let started = drain.poll_turn(&wa);
            tx.send(started).unwrap();
            drain
        });
        let polled = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        let drain = poller.join().unwrap();
        assert_eq!(polled, Ok(false), "the second poll waited for the lock");
        s.begin(false);
        assert_eq!(a.0.load(Ordering::SeqCst), 1, "the waker is still watched");
        let wb = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut drain = drain;
        assert!(drain.poll_turn(&wb));
    }

    /// A paced drain gives upgraded WebSockets (`axum_ws`) their turns a
    /// few at a time, as the native loops': a drain polled after the start
    /// waits for its own (before session 45 every one heard the start at
    /// once and sent its `1001`), and `turn_came` (the `Sink`'s check)
    /// agrees; a handler's `Draining` hears the start at once.
    #[test]
    fn a_paced_drain_gives_upgraded_websockets_their_turns() {
        let s = LocalShutdown::default();
        let counts: Vec<_> = (0..2)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<_> = counts.iter().map(|c| Waker::from(c.clone())).collect();
        let mut drains: Vec<_> = (0..2)
            .map(|_| Drain::new(None, s.upgraded().clone()))
            .collect();
        for (d, w) in drains.iter_mut().zip(&wakers) {
            assert!(!d.poll_turn(w));
        }
        let handler = Arc::new(Count(AtomicUsize::new(0)));
        let mut slot = None;
        assert!(!s
            .upgraded()
            .poll_started(&mut slot, &Waker::from(handler.clone())));
        s.begin(true);
        assert_eq!(handler.0.load(Ordering::SeqCst), 1, "Draining: at once");
        assert_eq!(s.upgraded_waiting(), 2);
        for (d, w) in drains.iter_mut().zip(&wakers) {
            assert!(!d.poll_turn(w), "paced: no turn yet");
            assert!(!d.turn_came());
        }
        assert_eq!(s.release_upgraded(1), 1);
        let came: Vec<_> = drains
            .iter_mut()
            .zip(&wakers)
            .map(|(d, w)| d.poll_turn(w))
            .collect();
        assert_eq!(came.iter().filter(|c| **c).count(), 1, "{came:?}");
        let given = came.iter().position(|c| *c).unwrap();
        assert!(drains[given].turn_came());
        assert!(!drains[1 - given].turn_came());
        assert_eq!(counts[given].0.load(Ordering::SeqCst), 1, "woken");
        s.end_pacing();
        assert_eq!(s.upgraded_waiting(), 0);
        assert!(drains[1 - given].poll_turn(&wakers[1 - given]));
        s.upgraded().unwatch(&mut slot);
    }

    /// A connection's `Turn` keeps its slot across its waits: a turn given
    /// while it was busy (its wait dropped for a push, a peer's message)
    /// is heard by its next look (`came`), and not before; anything that
    /// woke it meanwhile is no turn. (The loops took any wake after the
    /// start for their turn: a broadcast closed every subscriber at once.)
    #[test]
    fn a_turn_given_while_busy_is_kept_and_only_a_turn_counts() {
        let s = LocalShutdown::default();
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let wa = Waker::from(a.clone());
        let (mut one, mut two) = (s.turn(), s.turn());
        assert!(!one.came(), "not started");
        for turn in [&mut one, &mut two] {
            assert!(!resolves(std::pin::pin!(turn.wait()), &wa));
        }
        assert_eq!(s.awake_waiting(), 2, "each kept its slot");
        s.begin(true);
        assert!(!one.came() && !two.came(), "woken for something else");
        assert_eq!(s.release_awake(1), 1);
        let (first, second) = (one.came(), two.came());
        assert!(first ^ second, "one turn given: {first} {second}");
        assert_eq!(s.awake_waiting(), 1, "the other still waits");
        let (mut given, mut waiting) = if first { (one, two) } else { (two, one) };
        assert!(given.came(), "a turn, once come, stays");
        let mut wait = std::pin::pin!(waiting.wait());
        assert!(!resolves(wait.as_mut(), &wa));
        assert_eq!(s.awake_waiting(), 1, "in the same slot, once");
        s.end_pacing();
        assert!(resolves(wait.as_mut(), &wa));
        drop(given);
    }

    /// A `Turn` dropped gives its slot back: a connection that parks or
    /// closes leaves the drain's count.
    #[test]
    fn a_dropped_turn_leaves_the_list() {
        let s = LocalShutdown::default();
        let mut turn = s.turn();
        {
            assert!(!resolves(std::pin::pin!(turn.wait()), Waker::noop()));
        }
        assert_eq!(s.awake_waiting(), 1);
        drop(turn);
        assert_eq!(s.awake_waiting(), 0);
        let mut again = s.turn();
        s.begin(false);
        assert!(again.came(), "unpaced: at the start");
    }

    /// Open gRPC calls are woken once when calls end, a call polled again
    /// with the same waker keeps its one slot, and a call that ended (or
    /// asks after) gives its slot back: the list holds the open calls only.
    #[test]
    fn calls_are_woken_once_when_they_end_and_leave_the_list() {
        let s = LocalShutdown::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let (a, b) = (s.call_end(), s.call_end());
        assert!(!a.poll_end(&cx) && !a.poll_end(&cx) && !b.poll_end(&cx));
        assert_eq!(s.calls.borrow().waiting(), 2, "one slot a call");
        drop(b);
        assert_eq!(s.calls.borrow().waiting(), 1);
        s.begin(false);
        assert!(!a.poll_end(&cx), "the start alone ends no call");
        assert_eq!(s.end_calls(), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(a.poll_end(&cx) && s.call_end().poll_end(&cx));
        drop(a);
        let calls = s.calls.borrow();
        assert_eq!(calls.free.len(), calls.wakers.len(), "every slot back");
    }

    /// A `CallSlot` (HTTP/1.1's gRPC-web exchange) is a place in the same
    /// list: woken once by `end_calls`, its slot back when its call ends or
    /// its owner gives it back, and a slot given back is woken no more.
    #[test]
    fn call_slots_share_the_list_of_calls() {
        let s = LocalShutdown::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let (mut open, mut left) = (CallSlot::default(), CallSlot::default());
        assert!(!s.poll_call_end(&mut open, &cx) && !s.poll_call_end(&mut left, &cx));
        assert!(!s.poll_call_end(&mut open, &cx), "polled again");
        assert_eq!(s.calls.borrow().waiting(), 2, "one slot a call");
        s.leave_calls(&mut left);
        assert_eq!(s.end_calls(), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(s.poll_call_end(&mut open, &cx));
        s.leave_calls(&mut open);
        let calls = s.calls.borrow();
        assert_eq!(calls.free.len(), calls.wakers.len(), "every slot back");
    }

    /// Every turn alive counts as an awake message connection, waiting or
    /// not, its turn come or not, until it is dropped: what an upgrade's
    /// drain is left with (a server without a hub counted none of them).
    #[test]
    fn each_turn_alive_is_an_awake_message_connection() {
        let s = LocalShutdown::default();
        let mut waiting = s.turn();
        let serving = s.turn();
        assert!(!resolves(std::pin::pin!(waiting.wait()), Waker::noop()));
        assert_eq!(s.awake_message_connections(), 2);
        s.begin(false);
        assert!(waiting.came());
        assert_eq!(s.awake_message_connections(), 2, "until it closes");
        drop(serving);
        assert_eq!(s.awake_message_connections(), 1);
        drop(waiting);
        assert_eq!(s.awake_message_connections(), 0);
    }

    /// Polls `wait` once with `waker`: true when it resolved.
    fn ready(wait: &mut Wait<'_>, waker: &Waker) -> bool {
        resolves(Pin::new(wait), waker)
    }

    /// Polls `future` once with `waker`: true when it resolved.
    fn resolves(future: Pin<&mut impl Future<Output = ()>>, waker: &Waker) -> bool {
        future.poll(&mut Context::from_waker(waker)).is_ready()
    }

    /// With a paced drain, awake connections' waits resolve at their turn,
    /// a few at a time, and all once the drain ends; the worker's own
    /// `begun` hears the start at once. (Before, every wait resolved at
    /// the start: the awake ones' goodbyes all went at once.)
    #[test]
    fn a_paced_drain_gives_awake_waits_their_turns() {
        let s = LocalShutdown::default();
        let counts: Vec<_> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<_> = counts.iter().map(|c| Waker::from(c.clone())).collect();
        let mut waits: Vec<_> = (0..3).map(|_| s.wait()).collect();
        for (w, k) in waits.iter_mut().zip(&wakers) {
            assert!(!ready(w, k));
        }
        assert_eq!(s.awake_waiting(), 3);
        let mut begun = std::pin::pin!(s.begun());
        let noop = Waker::noop();
        assert!(!resolves(begun.as_mut(), noop));
        s.begin(true);
        assert!(resolves(begun.as_mut(), noop));
        let resolved = |waits: &mut Vec<Wait<'_>>| {
            waits
                .iter_mut()
                .zip(&wakers)
                .map(|(w, k)| usize::from(ready(w, k)))
                .sum::<usize>()
        };
        assert_eq!(resolved(&mut waits), 0, "paced: nobody's turn yet");
        assert_eq!(s.release_awake(1), 1);
        assert_eq!(s.awake_waiting(), 2);
        let woken: usize = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).sum();
        assert_eq!(woken, 1, "the one given its turn is woken");
        assert_eq!(resolved(&mut waits), 1);
        // A wait made meanwhile joins the list.
        let mut late = s.wait();
        assert!(!ready(&mut late, &wakers[0]));
        drop(late);
        assert_eq!(s.awake_waiting(), 2, "a dropped wait leaves the list");
        s.end_pacing();
        assert_eq!(s.awake_waiting(), 0);
        let mut after = s.wait();
        assert!(ready(&mut after, &wakers[0]), "the drain is over: at once");
    }

    /// Without a drain rate every awake wait resolves at the start.
    #[test]
    fn unpaced_awake_waits_resolve_at_the_start() {
        let s = LocalShutdown::default();
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let wa = Waker::from(a.clone());
        let (mut one, mut two) = (s.wait(), s.wait());
        assert!(!ready(&mut one, &wa) && !ready(&mut two, &wa));
        s.begin(false);
        assert_eq!(a.0.load(Ordering::SeqCst), 2);
        assert!(ready(&mut one, &wa) && ready(&mut two, &wa));
        assert_eq!(s.awake_waiting(), 0);
    }

    #[test]
    fn upgraded_connections_hear_the_start_once() {
        let s = LocalShutdown::default();
        let a = Arc::new(Count(AtomicUsize::new(0)));
        let wa = Waker::from(a.clone());
        let mut slot = None;
        assert!(!s.upgraded().poll_started(&mut slot, &wa));
        assert!(!s.upgraded().poll_started(&mut slot, &wa), "one slot kept");
        s.begin(false);
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert!(s.upgraded().poll_started(&mut slot, &wa));
        s.upgraded().unwatch(&mut slot);
        assert_eq!(slot, None);
    }
}
