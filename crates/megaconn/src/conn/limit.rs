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

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::conn::admission::PerIpLimit;

/// Shared by every worker's acceptor.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
    per_ip: Option<Arc<PerIpLimit>>,
    max: usize,
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
            max,
        }
    }

    /// The configured maximum.
    pub(crate) fn max(&self) -> usize {
        self.max
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
