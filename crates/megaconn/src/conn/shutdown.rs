//! Graceful shutdown, as Go's `Server.Shutdown` orders it: stop accepting, close
//! idle connections, let in-flight exchanges finish (their responses carry
//! `Connection: close`), and force-close what is left at the deadline. Idle
//! means nothing received: the kernel is asked before an idle connection is
//! closed, and one whose request already reached its socket is served. HTTP/1.1
//! connections idle as tasks (busy recently), and parked ones that parked
//! within it (straight after an answer), close after [`IDLE_GRACE`]; other
//! parked ones at once.
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
//! Awake message connections (WebSocket, framed TCP, native SSE, HTTP/2,
//! waiting between messages) hear it through [`LocalShutdown::wait`]. Without
//! a drain rate every wait resolves when shutdown begins. With one
//! (`shutdown_drain_rate`) a wait resolves at its connection's *turn*: the
//! worker's paced drain hands out turns a few a tick
//! ([`LocalShutdown::release_awake`]), so their goodbyes (a `1001`, a framed
//! goodbye, an SSE farewell, a `GOAWAY`) are spread as the idle and parked
//! ones' closes are. (They all heard one `Notify` before: in session 43's
//! review 577 of 1,200 WebSockets got their `1001` in the same instant, the
//! reconnect storm the rate is there to prevent.) The worker's own loops
//! (the parking lot) hear the start at once: [`LocalShutdown::begun`].

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::sync::Notify;

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

/// [`IDLE_GRACE`] as a server with `config` gives it: at most half its
/// `shutdown_timeout`. Idle tasks get it, and parked connections that
/// parked within it (straight after an answer: `ParkingLot::close_all_but_recent`).
pub(crate) fn idle_grace(config: &crate::conn::config::Config) -> Duration {
    IDLE_GRACE.min(config.shutdown_timeout / 2)
}

/// A worker's view of shutdown.
#[derive(Debug, Default)]
pub(crate) struct LocalShutdown {
    started: Cell<bool>,
    /// Every idle connection that can park should (an upgrade hands the
    /// parking lot to the next process).
    park_all: Cell<bool>,
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

    /// Asks every idle (watching) connection to park now, if it can.
    pub(crate) fn park_all_idle(&self) {
        self.park_all.set(true);
        self.wake_watchers(usize::MAX);
    }

    /// True once [`park_all_idle`](LocalShutdown::park_all_idle) was asked.
    pub(crate) fn parking_all(&self) -> bool {
        self.park_all.get()
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
        self.started.set(true);
        self.upgraded.start();
        self.notify.notify_waiters();
        if !paced {
            self.release_awake(usize::MAX);
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
    }

    /// Awake connections waiting for their turn.
    pub(crate) fn awake_waiting(&self) -> usize {
        self.awake.borrow().waiting()
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

    /// An awake connection's wait between messages: resolves once
    /// shutdown has begun, or, during a paced drain, once the drain gives
    /// this connection its turn ([`release_awake`](LocalShutdown::release_awake)).
    ///
    /// Dropped (the connection woke for something else first), it gives its
    /// slot back, and a turn it was given with it: the connection, awake
    /// after shutdown began, says its goodbye when its loop comes round
    /// (`is_started`), so that turn was used. A wait made anew joins the
    /// list again.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            slot: None,
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

    /// The signal upgraded connections watch, which may live on any task.
    pub(crate) fn upgraded(&self) -> &Arc<SharedShutdown> {
        &self.upgraded
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
        let mut awake = s.awake.borrow_mut();
        // Its waker taken while it kept the slot: its turn came (or the
        // start, unpaced).
        let turn = this
            .slot
            .is_some_and(|i| awake.wakers[i as usize].is_none());
        if turn || (s.started.get() && !s.pacing.get()) {
            awake.unwatch(&mut this.slot);
            return std::task::Poll::Ready(());
        }
        awake.watch(&mut this.slot, cx.waker());
        std::task::Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.shutdown.awake.borrow_mut().unwatch(&mut self.slot);
        }
    }
}

/// Shutdown as an upgraded connection sees it (an `axum_ws` socket, a
/// handler's `OnUpgrade` tunnel), and a handler's
/// [`Draining`](crate::Draining): a handler may move it to a task of its
/// own (`tokio::spawn`), so the signal is `Send`, at the cost of a lock
/// each time a waiter's waker changes (a [`Drain`] keeps the last one),
/// which only these waiters pay.
#[derive(Debug, Default)]
pub(crate) struct SharedShutdown {
    started: AtomicBool,
    watchers: Mutex<Watchers>,
}

impl SharedShutdown {
    /// Marks shutdown as begun and wakes every watcher.
    fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        let wakers = self.lock().take(usize::MAX);
        for waker in wakers {
            waker.wake();
        }
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
}

/// An upgraded connection's place in its worker's graceful shutdown, as
/// hyper-util's graceful watcher or axum's `ConnLimiterIo` travel with the
/// connection: the drain waits for it (up to `shutdown_timeout`; past it
/// the worker's runtime ends and drops it, counted as forced), and it can
/// tell when shutdown began.
pub(crate) struct Drain {
    /// Counts it among the worker's connection tasks; `None` on an HTTP/2
    /// stream, whose connection's task is counted.
    _token: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
    shutdown: Arc<SharedShutdown>,
    /// Its waker's slot in `shutdown`'s list, once watched.
    slot: Option<u32>,
    /// The waker last put in that slot: while the task's waker stays the
    /// same, a poll reads the flag and takes no lock.
    watching: Option<Waker>,
    /// After shutdown began, how long the connection may still hold the
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

    /// True once shutdown began, registering no waker: for a poll whose
    /// task may not be the one watching (an `axum_ws` socket's `Sink` half).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn started(&self) -> bool {
        self.shutdown.started.load(Ordering::SeqCst)
    }

    /// True once shutdown began; until then `waker` is woken when it does.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn poll_started(&mut self, waker: &Waker) -> bool {
        if self.watching.as_ref().is_some_and(|w| w.will_wake(waker)) {
            // That waker is still in the list: only `start` takes it out,
            // and only after setting the flag this reads.
            return self.shutdown.started.load(Ordering::SeqCst);
        }
        let started = self.shutdown.poll_started(&mut self.slot, waker);
        if !started {
            self.watching = Some(waker.clone());
        }
        started
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.shutdown.unwatch(&mut self.slot);
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
        assert!(!drain.poll_started(&wa));
        let held = s.upgraded().lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let poller = std::thread::spawn(move || {
            let started = drain.poll_started(&wa);
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
        assert!(drain.poll_started(&wb));
    }

    /// Polls `wait` once with `waker`: true when it resolved.
    fn ready(wait: &mut Wait<'_>, waker: &Waker) -> bool {
        Pin::new(wait)
            .poll(&mut Context::from_waker(waker))
            .is_ready()
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
        assert!(begun
            .as_mut()
            .poll(&mut Context::from_waker(noop))
            .is_pending());
        s.begin(true);
        assert!(begun
            .as_mut()
            .poll(&mut Context::from_waker(noop))
            .is_ready());
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
