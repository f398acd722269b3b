//! The client's TLS session store for `load https://…`. rustls'
//! `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server, and
//! each ticket resumes one connection only: with `-c 32` and
//! `--new-connection-per-request`, a quarter to a third of the reconnects
//! found no ticket and made a full handshake. This store keeps as many tickets
//! per server as the run has concurrent connections (twice that, for slack),
//! so "resumed handshakes/s" measures resumption, not the cache's size.
//! Key-exchange hints and TLS 1.2 sessions (reusable, one per server) stay in
//! rustls' own cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// Server names whose TLS 1.2 sessions and key-exchange hints are kept (a run
/// has one target).
const SERVERS: usize = 16;

/// A session store with room for a TLS 1.3 ticket per concurrent connection.
pub(crate) struct SessionStore {
    /// Key-exchange hints and TLS 1.2 sessions.
    inner: ClientSessionMemoryCache,
    /// TLS 1.3 tickets per server, oldest first.
    tickets: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
    /// Most tickets kept per server; the oldest goes first.
    per_server: usize,
}

impl SessionStore {
    /// A store for a run of `connections` concurrent connections.
    pub(crate) fn for_connections(connections: usize) -> SessionStore {
        SessionStore {
            inner: ClientSessionMemoryCache::new(SERVERS),
            tickets: Mutex::new(HashMap::new()),
            per_server: connections.saturating_mul(2).max(8),
        }
    }
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("per_server", &self.per_server)
            .finish_non_exhaustive()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        // A panic elsewhere cannot leave the map inconsistent: keep using it.
        let mut map = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = map.entry(server_name).or_default();
        if queue.len() >= self.per_server {
            queue.pop_front();
        }
        queue.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // The newest ticket is the furthest from expiry.
        let mut map = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        map.get_mut(server_name)?.pop_back()
    }
}
