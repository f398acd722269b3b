//! The server-wide connection limits: `max_connections` (a semaphore) and the
//! optional per-client-IP limit. A [`ConnectionSlot`] travels with its
//! connection (as axum's `ConnLimiterIo` keeps its permit), so dropping the
//! connection frees both claims and the limits cannot leak.
//!
//! A parked connection (see `park.rs`) has no task to carry a slot, so its slot
//! is *detached*: still counted as taken, released by the parking lot when the
//! socket closes, or re-attached when the connection wakes up. The lot keeps
//! the client IP that [`ConnectionSlot::detach`] returns: reading it back from
//! the socket would fail (`ENOTCONN`) once the peer has reset it, and the
//! IP's place would never be given back.
//!
//! The limit is the whole server's, so the room for a new connection may be
//! in another worker's parking lot: a worker whose own lot has nothing to
//! evict at the limit asks another one's ([`ConnectionLimit::ask_to_evict`],
//! `accept.rs`), through a `Notify` per worker that only eviction touches.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use crate::conn::admission::{AcceptRateLimit, PerIpLimit};
use crate::conn::config::AcceptRate;
use crate::observe::stats::WorkerStats;

/// Shared by every worker's acceptor.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
    per_ip: Option<Arc<PerIpLimit>>,
    accept_rate: Option<Arc<AcceptRateLimit>>,
    max: usize,
    /// The workers, for one to ask another to evict (`None`: one worker
    /// alone, or a limit made outside a server).
    evictors: Option<Arc<[Evictor]>>,
    /// Acceptors waiting at the limit now ([`WaitingAtLimit`]): an ask
    /// answered after its asker got a slot another way (a close) must not
    /// evict for nobody.
    waiting: Arc<AtomicUsize>,
    /// Refused connections the server's accept loops keep open together,
    /// waiting for their client's first bytes (`admission::Undecided`):
    /// bounded server-wide, since their descriptors count against no slot.
    refusals_waiting: Arc<AtomicUsize>,
}

/// An acceptor waiting at the limit, counted while it lives.
///
/// One race is left, narrow and bounded. The semaphore hands a freed
/// permit straight to the waiter queued on it (`acquire`) and wakes its
/// task; until that task runs and drops this guard, the limit still reads
/// full (`available_permits() == 0`, the permit being the waiter's) with
/// a waiter counted. An ask this acceptor made before (to another worker,
/// [`ConnectionLimit::ask_to_evict`]) that is answered in that window
/// ([`ConnectionLimit::someone_waits`] true) closes one batch of that
/// worker's idle keep-alive connections (at most `EVICT_MAX`, 32) for a
/// connection that already has its slot. The window is the waiter's
/// wake-up latency (microseconds on an idle worker, up to one turn of its
/// runtime on a busy one), and it needs a close anywhere to free a slot
/// between an ask and its answer; what it costs is idle keep-alive
/// connections closed early, whose clients reconnect, and the slots they
/// free stay free for the next connections. Closing it would mean not
/// queuing on the semaphore at all (a waiter that takes a visible permit
/// itself, `try_acquire` on a wake-up, uncounting itself first): every
/// connection's close would then have to wake waiters itself, a shared
/// load and a fence on the close path of every connection against the
/// lost wake-up, for a race that only ever closes idle connections early.
#[derive(Debug)]
pub(crate) struct WaitingAtLimit(Arc<AtomicUsize>);

impl Drop for WaitingAtLimit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A worker as another one at the limit sees it: how to ask it to evict,
/// and its counters, whose parked gauge says whether asking can help.
#[derive(Debug)]
struct Evictor {
    asked: Notify,
    stats: Arc<WorkerStats>,
}

/// One connection's claim on the limits; dropping it frees them.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    slots: Option<Arc<Semaphore>>,
    ip: Option<(Arc<PerIpLimit>, IpAddr)>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize, per_ip: Option<u32>) -> ConnectionLimit {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            per_ip: per_ip.map(|n| Arc::new(PerIpLimit::new(n))),
            accept_rate: None,
            max,
            evictors: None,
            waiting: Arc::new(AtomicUsize::new(0)),
            refusals_waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The same limit, shared by the workers whose counters are `workers`
    /// (by index), which may ask one another to evict
    /// ([`ask_to_evict`](ConnectionLimit::ask_to_evict)).
    pub(crate) fn shared_by(mut self, workers: &[Arc<WorkerStats>]) -> ConnectionLimit {
        self.evictors = (workers.len() > 1).then(|| {
            workers
                .iter()
                .map(|stats| Evictor {
                    asked: Notify::new(),
                    stats: stats.clone(),
                })
                .collect()
        });
        self
    }

    /// The same limit, with the server's accept rate (if any) split over
    /// its `workers` ([`AcceptRateLimit`]).
    pub(crate) fn with_accept_rate(
        mut self,
        rate: Option<AcceptRate>,
        workers: usize,
    ) -> ConnectionLimit {
        self.accept_rate = rate.map(|r| Arc::new(AcceptRateLimit::new(r, workers)));
        self
    }

    /// The count of refusals waiting for their client's first bytes, the
    /// server's accept loops' together (`admission::Undecided`).
    pub(crate) fn refusals_waiting(&self) -> &AtomicUsize {
        &self.refusals_waiting
    }

    /// The accept rate, if there is one.
    pub(crate) fn accept_rate(&self) -> Option<&AcceptRateLimit> {
        self.accept_rate.as_deref()
    }

    /// Whether every slot is taken.
    pub(crate) fn is_full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Counts an acceptor as waiting at the limit until the guard drops.
    pub(crate) fn wait_at_limit(&self) -> WaitingAtLimit {
        self.waiting.fetch_add(1, Relaxed);
        WaitingAtLimit(self.waiting.clone())
    }

    /// Whether the limit is full and an acceptor waits at it: the only
    /// time an ask to evict is worth answering.
    pub(crate) fn someone_waits(&self) -> bool {
        self.is_full() && self.waiting.load(Relaxed) > 0
    }

    /// At the limit, with nothing of its own to evict: worker `me` asks the
    /// next worker after `*asked_last` that has connections parked to
    /// close some of its idle ones ([`asked_to_evict`](ConnectionLimit::asked_to_evict)),
    /// and returns which it asked (`None`: no other worker has any parked).
    /// In turn, so that one whose parked connections cannot be evicted
    /// (message protocols, timers) does not keep the others from being
    /// asked. One atomic load per worker, only while a connection waits at
    /// the limit.
    pub(crate) fn ask_to_evict(&self, me: usize, asked_last: &mut usize) -> Option<usize> {
        let evictors = self.evictors.as_ref()?;
        let n = evictors.len();
        let next = (1..=n)
            .map(|step| (*asked_last + step) % n)
            .find(|&w| w != me && evictors[w].stats.connections_parked.load(Relaxed) > 0)?;
        *asked_last = next;
        evictors[next].asked.notify_one();
        Some(next)
    }

    /// Waits until another worker asks worker `me` to evict (for ever
    /// without other workers). Asks made while nobody waits are kept as one.
    pub(crate) async fn asked_to_evict(&self, me: usize) {
        match self.evictors.as_ref().and_then(|e| e.get(me)) {
            Some(evictor) => evictor.asked.notified().await,
            None => std::future::pending().await,
        }
    }

    /// The configured maximum.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The slots held now: the server's open connections (for the log
    /// line of an accept out of descriptors, `accept.rs`; read nowhere
    /// else).
    pub(crate) fn held(&self) -> usize {
        self.max
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.slots.available_permits())
    }

    /// Takes a slot at once if one is free.
    pub(crate) fn try_acquire(&self) -> Option<ConnectionSlot> {
        let permit = self.slots.try_acquire().ok()?;
        permit.forget();
        Some(self.attached())
    }

    /// Waits for a free slot.
    pub(crate) async fn acquire(&self) -> ConnectionSlot {
        let permit = self
            .slots
            .acquire()
            .await
            .expect("the connection semaphore is never closed");
        permit.forget();
        self.attached()
    }

    /// Claims a place for `ip` in `slot` if the per-IP limit allows; true when
    /// there is no per-IP limit.
    pub(crate) fn admit_ip(&self, slot: &mut ConnectionSlot, ip: IpAddr) -> bool {
        let Some(per_ip) = &self.per_ip else {
            return true;
        };
        if !per_ip.try_acquire(ip) {
            return false;
        }
        slot.ip = Some((per_ip.clone(), ip));
        true
    }

    /// The peer IP of a socket, when the per-IP limit needs it (`None` too
    /// for a socket the peer has already reset).
    pub(crate) fn peer_ip(&self, socket: &impl AsFd) -> Option<IpAddr> {
        self.per_ip.as_ref()?;
        let addr = socket2::SockRef::from(socket).peer_addr().ok()?;
        addr.as_socket().map(|a| a.ip())
    }

    /// The slot of a parked connection leaving the lot (woken, or closed
    /// while parked), with the IP its detached slot held (`detach`'s answer).
    /// It never gave its places up, so nothing is taken again: the slot only
    /// owns them once more, and dropping it frees them.
    pub(crate) fn reattach(&self, ip: Option<IpAddr>) -> ConnectionSlot {
        let mut slot = self.attached();
        if let (Some(per_ip), Some(ip)) = (&self.per_ip, ip) {
            slot.ip = Some((per_ip.clone(), ip));
        }
        slot
    }

    /// Gives back the places of a parked connection leaving for good
    /// (woken and closed, or closed while parked), with the IP its detached
    /// slot held: what dropping [`reattach`](ConnectionLimit::reattach)'s
    /// slot does, without taking a reference to the semaphore only to drop
    /// it (a locked increment and decrement a close, where an awake
    /// connection's close drops the reference it holds: one).
    pub(crate) fn release_detached(&self, ip: Option<IpAddr>) {
        self.slots.add_permits(1);
        if let (Some(per_ip), Some(ip)) = (&self.per_ip, ip) {
            per_ip.release(ip);
        }
    }

    fn attached(&self) -> ConnectionSlot {
        ConnectionSlot {
            slots: Some(self.slots.clone()),
            ip: None,
        }
    }
}

impl ConnectionSlot {
    /// Keeps the places taken without an owner; the parking lot releases them.
    /// Returns the client IP whose per-IP place stays taken (only with a
    /// per-IP limit), for the lot to hand back to [`ConnectionLimit::reattach`].
    pub(crate) fn detach(mut self) -> Option<IpAddr> {
        self.slots = None;
        self.ip.take().map(|(_, ip)| ip)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(slots) = &self.slots {
            slots.add_permits(1);
            if let Some((per_ip, ip)) = &self.ip {
                per_ip.release(*ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker asks the others in turn, skipping itself and those with
    /// nothing parked, and asks none when no other has any.
    #[tokio::test]
    async fn a_worker_asks_the_others_with_parked_connections_in_turn() {
        let workers: Vec<Arc<WorkerStats>> = (0..4).map(|_| Arc::default()).collect();
        let limit = ConnectionLimit::new(1, None).shared_by(&workers);
        let mut asked_last = 0;
        assert_eq!(limit.ask_to_evict(0, &mut asked_last), None);
        for (w, parked) in [(0, 5), (1, 1), (3, 2)] {
            workers[w].connections_parked.store(parked, Relaxed);
        }
        // Nobody asked yet: a worker waiting to be asked waits.
        let mut unasked = std::pin::pin!(limit.asked_to_evict(1));
        assert!(futures_util::poll!(unasked.as_mut()).is_pending());
        let asked: Vec<_> = (0..3)
            .map(|_| limit.ask_to_evict(0, &mut asked_last))
            .collect();
        assert_eq!(asked, [Some(1), Some(3), Some(1)]);
        assert!(
            futures_util::poll!(unasked).is_ready(),
            "worker 1, waiting, hears it was asked"
        );
        // An ask made while the worker did not wait is kept for it; one
        // never asked (worker 2) is not woken.
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(5), limit.asked_to_evict(1));
        assert!(waited.await.is_ok(), "worker 1 hears it was asked");
        let mut never = std::pin::pin!(limit.asked_to_evict(2));
        assert!(futures_util::poll!(never.as_mut()).is_pending());
        assert!(
            ConnectionLimit::new(1, None)
                .shared_by(&workers[..1])
                .ask_to_evict(0, &mut 0)
                .is_none(),
            "one worker alone has no one to ask"
        );
    }

    /// A slot holds its place in the limit and its client's per-IP place
    /// until it drops; detached (its connection parked) it holds both with
    /// no owner, and re-attached with the IP `detach` gave, dropping it
    /// gives both back.
    #[test]
    fn a_slot_holds_its_places_until_it_drops_detached_or_not() {
        let limit = ConnectionLimit::new(2, Some(1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = limit.try_acquire().unwrap();
        assert!(limit.admit_ip(&mut a, ip));
        assert!(!limit.is_full());
        let mut b = limit.try_acquire().unwrap();
        assert!(limit.is_full() && limit.try_acquire().is_none());
        assert!(!limit.admit_ip(&mut b, ip), "one per IP");
        assert!(limit.admit_ip(&mut b, "192.0.2.2".parse().unwrap()));
        drop(b);
        assert!(!limit.is_full(), "b's place given back");
        let parked = a.detach();
        assert_eq!(parked, Some(ip), "the IP whose place stays taken");
        let mut c = limit.try_acquire().unwrap();
        assert!(limit.is_full(), "a's place is still taken while detached");
        assert!(!limit.admit_ip(&mut c, ip), "and its IP's");
        drop(c);
        drop(limit.reattach(parked));
        let mut d = limit.try_acquire().unwrap();
        assert!(limit.admit_ip(&mut d, ip), "a's IP place given back");
        let _e = limit.try_acquire().expect("and its place in the limit");
        // Without a per-IP limit every IP is admitted and none is kept.
        let open = ConnectionLimit::new(1, None);
        let mut f = open.try_acquire().unwrap();
        assert!(open.admit_ip(&mut f, ip) && open.admit_ip(&mut f, ip));
        assert_eq!(f.detach(), None);
        assert_eq!((open.max(), limit.max()), (1, 2));
    }

    /// An ask to evict is worth answering only while the limit is full and
    /// an acceptor waits at it.
    #[tokio::test]
    async fn someone_waits_only_at_a_full_limit_with_an_acceptor_waiting() {
        let limit = ConnectionLimit::new(1, None);
        assert!(!limit.someone_waits(), "not full, nobody waiting");
        let waiting = limit.wait_at_limit();
        assert!(!limit.someone_waits(), "waiting, but not full");
        let slot = limit.acquire().await;
        assert!(limit.someone_waits(), "full, one waiting");
        let other = limit.wait_at_limit();
        drop(waiting);
        assert!(limit.someone_waits(), "full, the other still waiting");
        drop(other);
        assert!(!limit.someone_waits(), "full, nobody waiting");
        // `acquire` waits for the place to come back.
        let mut next = std::pin::pin!(limit.acquire());
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        drop(slot);
        assert!(futures_util::poll!(next.as_mut()).is_ready());
    }

    /// The per-IP limit needs the peer's IP: read from the socket with the
    /// limit on, not at all without it. The accept rate is there when set.
    #[test]
    fn the_peer_ip_is_read_only_for_a_per_ip_limit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let ip = client.local_addr().unwrap().ip();
        assert_eq!(ConnectionLimit::new(1, Some(1)).peer_ip(&server), Some(ip));
        assert_eq!(ConnectionLimit::new(1, None).peer_ip(&server), None);
        let rate = AcceptRate {
            per_second: 10.0,
            burst: 1,
        };
        let limit = ConnectionLimit::new(1, None);
        assert!(limit.accept_rate().is_none());
        let limit = limit.with_accept_rate(Some(rate), 2);
        assert!(limit.accept_rate().is_some());
    }
}
