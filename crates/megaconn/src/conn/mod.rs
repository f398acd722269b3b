//! The connection core: what every protocol stands on.
//!
//! Accepting under the limits, the socket options, one connection's buffers and
//! deadlines, TLS, and the parking lot where idle connections of any protocol
//! wait outside the runtime. Nothing here knows HTTP: the protocols (`proto/`)
//! sit above it and the server (`server/`) above them.

pub(crate) mod accept;
pub(crate) mod admission;
pub(crate) mod blocks;
pub(crate) mod client_auth;
pub(crate) mod config;
#[cfg(test)]
mod config_tests;
pub(crate) mod connection;
pub(crate) mod context;
pub(crate) mod fd_reserve;
pub(crate) mod handover;
pub(crate) mod io;
pub(crate) mod limit;
pub(crate) mod park;
pub(crate) mod pool;
pub(crate) mod proxy_clients;
pub(crate) mod proxy_header;
pub(crate) mod rewind;
pub(crate) mod shutdown;
pub(crate) mod socket;
pub(crate) mod sys;
pub(crate) mod tls;
pub(crate) mod tls_io;
pub(crate) mod transport;
pub(crate) mod woken;

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

/// Which protocol a parked connection resumes in: an opaque tag the parking
/// lot keeps per socket (the protocols define their tags in `proto/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProtoTag(pub u8);

/// Why a parked connection woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Bytes (or a hang-up) arrived.
    Readable,
    /// Readable, and the peer had shut its side down (or the socket failed)
    /// by the time the lot took the edge: after its bytes comes the end of
    /// the stream, and no later edge will announce it. A short read then
    /// does not mean everything was read (`woken.rs`).
    HungUp,
    /// The timer it asked for when it parked fired (server-sent heartbeats).
    Timer,
    /// A push from the hub found its socket full and left part of itself
    /// owed: it resumes awake to write that rest (`message/worker.rs`,
    /// `conn/park/owed.rs`). No bytes came, as for a timer.
    Owed,
}

impl Wake {
    /// Bytes (or the end of the stream) are there to read.
    pub(crate) fn readable(self) -> bool {
        matches!(self, Wake::Readable | Wake::HungUp)
    }
}

/// The addresses of a connection, handed to services as a request extension
/// (and as axum's `ConnectInfo<SocketAddr>` with the `axum` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
}

impl ConnInfo {
    /// Reads both addresses off a socket (two syscalls: for sockets woken
    /// from the parking lot, which keeps no addresses); the peer is the
    /// client a trusted balancer's PROXY header named, if it did
    /// (`proxy_header::peer_of`).
    pub(crate) fn of(socket: &impl AsFd) -> Option<ConnInfo> {
        ConnInfo::and_balancer_of(socket).map(|(info, _)| info)
    }

    /// [`ConnInfo::of`], and the balancer the socket came through if a
    /// PROXY header named its client (one lookup for both: a woken
    /// proxied connection's requests carry both, `ProxiedBy`).
    pub(crate) fn and_balancer_of(socket: &impl AsFd) -> Option<(ConnInfo, Option<SocketAddr>)> {
        let (peer, by) = proxy_header::peer_and_balancer_of(socket)?;
        let local = socket2::SockRef::from(socket)
            .local_addr()
            .ok()?
            .as_socket()?;
        Some((ConnInfo { peer, local }, by))
    }
}

/// A connection to serve: freshly accepted, or woken from the parking lot.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Accepted by a listener (TLS, if configured, starts here): a bare
    /// non-blocking socket the runtime does not watch yet (`accept.rs`),
    /// and when it is to be retired (`max_connection_age`, drawn at the
    /// accept; `None`: the option is off); on a TLS listener, its place
    /// among the worker's handshakes in flight (`tls::HandshakeGate`).
    Accepted(
        OwnedFd,
        ConnInfo,
        Option<tokio::time::Instant>,
        Option<crate::conn::tls::HandshakePlace>,
    ),
    /// A parked socket that woke up, to resume in protocol `proto`; `hot`
    /// when it had been re-parked straight after its last message and woke
    /// again within `park_idle_after` (see `woken.rs`).
    Woken {
        socket: OwnedFd,
        hot: bool,
        proto: ProtoTag,
        wake: Wake,
    },
    /// An idle connection the lot could not park (its descriptor is above
    /// the process's slot array): served awake, a task waiting for what
    /// would have woken it parked (`park/awake.rs`), on the terms it
    /// would have parked on.
    Refused {
        socket: OwnedFd,
        parking: crate::conn::park::Parking,
    },
}
