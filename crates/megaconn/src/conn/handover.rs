//! Parked connections moving to another process (a zero-downtime upgrade).
//!
//! A parked connection is a bare socket plus what the parking lot keeps for
//! it: its protocol tag and its idle deadline. That is all a parked HTTP/1.1
//! connection has (no buffers, no task), so the old process can pass the
//! socket (`SCM_RIGHTS`, done by the caller) and these few bytes, and the new
//! process parks it in its own lot as if it had always been there: the client
//! sees nothing. Protocols with per-connection state besides the tag (framed,
//! whose side table holds a handler's session; TLS, whose keys live in the
//! process) are not portable and close as in a graceful shutdown.
//!
//! Here: the wire form of that state, and adopting a connection into a lot.
//! Which tags are portable is the server's call (`server/dispatch.rs`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::connection::{CloseTrack, Connection};
use crate::conn::context::WorkerContext;
use crate::conn::limit::ConnectionLimit;
use crate::conn::park::{AtDeadline, Parking};
use crate::conn::{ConnInfo, ProtoTag};
use crate::observe::close::CloseReason;
use crate::observe::lifecycle::ConnTrack;
use crate::observe::stats::incr;

/// A parked (idle) connection leaving one server for another: the socket and
/// its [`ParkedState`]. Made by [`ServerHandle::hand_over_parked`](crate::ServerHandle::hand_over_parked),
/// taken by [`ServerHandle::adopt_parked`](crate::ServerHandle::adopt_parked).
#[derive(Debug)]
pub struct ParkedConnection {
    /// The connected socket (non-blocking).
    pub socket: OwnedFd,
    /// What the parking lot knew of it.
    pub state: ParkedState,
}

/// What a parked connection carries besides its socket: its protocol and
/// how much idle time it had left. [`WIRE_BYTES`](ParkedState::WIRE_BYTES)
/// bytes on the wire ([`to_bytes`](ParkedState::to_bytes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedState {
    tag: u8,
    /// Milliseconds of idle time left; `u32::MAX`: no idle timeout.
    idle_left_ms: u32,
}

impl ParkedState {
    /// Bytes of [`to_bytes`](ParkedState::to_bytes).
    pub const WIRE_BYTES: usize = 5;

    pub(crate) fn new(tag: ProtoTag, idle_left: Option<Duration>) -> ParkedState {
        ParkedState {
            tag: tag.0,
            idle_left_ms: idle_left.map_or(u32::MAX, |d| {
                u32::try_from(d.as_millis()).unwrap_or(u32::MAX - 1)
            }),
        }
    }

    /// The wire form: the protocol tag, then the idle time left (ms, big
    /// endian; all ones for none).
    pub fn to_bytes(self) -> [u8; ParkedState::WIRE_BYTES] {
        let ms = self.idle_left_ms.to_be_bytes();
        [self.tag, ms[0], ms[1], ms[2], ms[3]]
    }

    /// Reads [`to_bytes`](ParkedState::to_bytes)'s form back.
    pub fn from_bytes(b: [u8; ParkedState::WIRE_BYTES]) -> ParkedState {
        ParkedState {
            tag: b[0],
            idle_left_ms: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
        }
    }

    pub(crate) fn tag(self) -> ProtoTag {
        ProtoTag(self.tag)
    }

    fn idle_left(self) -> Option<Duration> {
        (self.idle_left_ms != u32::MAX).then(|| Duration::from_millis(self.idle_left_ms.into()))
    }
}

/// Parks a connection handed over by another process in this worker's lot,
/// under the connection limits; `portable` says which tags this server can
/// resume. Returns false when it was closed instead (not portable, no lot,
/// over a limit).
pub(crate) fn adopt(
    ctx: &Rc<WorkerContext>,
    limit: &ConnectionLimit,
    parked: ParkedConnection,
    portable: fn(ProtoTag) -> bool,
) -> bool {
    let ParkedConnection { socket, state } = parked;
    let Some(lot) = ctx.park.as_ref().filter(|_| portable(state.tag())) else {
        // Dropping the socket closes it; it never counted here.
        return false;
    };
    let Some(mut held) = limit.try_acquire() else {
        return false;
    };
    let info = ConnInfo::of(&socket);
    if let (Some(ip), Some(info)) = (limit.peer_ip(&socket), info) {
        debug_assert_eq!(ip, info.peer.ip());
        if !limit.admit_ip(&mut held, ip) {
            return false;
        }
    }
    let hook = ctx.config.on_connection.as_ref();
    let track = match info {
        Some(info) if hook.is_some() || ctx.registry.is_some() || ctx.config.access_log => {
            Some(ConnTrack::open(
                hook,
                ctx.registry.as_ref(),
                info.peer,
                info.local,
                ctx.index,
                &ctx.stats,
            ))
        }
        _ => None,
    };
    // Its options are this process's from here on, as an accepted one's.
    crate::conn::socket::reconfigure_adopted(&socket, &ctx.config, false);
    let conn = Connection::open(held, ctx.stats.clone(), track);
    incr(&ctx.stats.adopted);
    // Its age counts here from the adoption.
    lot.note_retire_at(socket.as_raw_fd(), ctx.retire_at());
    lot.park(
        socket,
        Parking {
            deadline: state.idle_left().map(|left| Instant::now() + left),
            at_once: false,
            proto: state.tag(),
            at_deadline: AtDeadline::Close,
            // A socket from another process: never in this lot's set.
            watched: false,
        },
        conn,
    );
    true
}

/// Closes the accounts of a parked connection leaving for another process.
pub(crate) fn handed_over<K: CloseTrack>(conn: Connection<K>) {
    conn.close(CloseReason::HandedOver);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_on_the_wire() {
        for left in [None, Some(Duration::ZERO), Some(Duration::from_secs(59))] {
            let s = ParkedState::new(ProtoTag(1), left);
            assert_eq!(ParkedState::from_bytes(s.to_bytes()), s);
            assert_eq!(s.idle_left(), left);
        }
    }
}
