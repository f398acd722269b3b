//! Parked connections moving to another process (a zero-downtime upgrade).
//!
//! A parked connection is a bare socket plus what the parking lot keeps for
//! it: its protocol tag and its idle deadline. That is all a parked HTTP/1.1
//! connection has (no buffers, no task), so the old process can pass the
//! socket (`SCM_RIGHTS`, done by the caller) and these few bytes, and the new
//! process parks it in its own lot as if it had always been there: the client
//! sees nothing. A parked cleartext framed connection moves too when its
//! handler opts in ([`FramedHandler::export`](crate::FramedHandler::export)):
//! its protocol's payload (the handler's state as bytes, its topics, its
//! heartbeat timers: `proto/framed/adopt.rs`) rides along in the same
//! record. Idle connections still awake park for the hand-over first
//! (HTTP/1.1 tasks; framed ones between frames, `proto/framed/conn.rs`).
//! TLS connections (rustls cannot rebuild a session from its secrets),
//! busy ones and framed ones whose handler does not opt in are not
//! portable and close as in a graceful shutdown; so are all framed ones
//! when the next process adopts HTTP/1.1 only ([`HandOverKinds`]).
//!
//! Here: the wire form of that state, and adopting a connection into a lot.
//! Which tags are portable, and what each protocol exports and resumes, is
//! the server's call (`server/dispatch.rs`).
//!
//! # Wire form (version 1)
//!
//! ```text
//!   0      1   version: 0xC1 (a protocol tag fits in 6 bits, so the first
//!              byte of version 0's 5-byte form, a tag, is never >= 0x40)
//!   1      1   protocol tag
//!   2..6   4   idle time left, ms, big endian (all ones: none)
//!   6..10  4   payload length, big endian (0 for HTTP/1.1)
//!   10..       payload (the protocol's), at most MAX_PAYLOAD_BYTES
//! ```
//!
//! Version 0 (sessions before 47: the tag and the time left, 5 bytes, no
//! length) is refused by [`ParkedState::from_bytes`], never misread; it is
//! read by [`ParkedState::from_v0_bytes`] and written by
//! [`ParkedState::to_v0_bytes`] (HTTP/1.1 only), so that an upgrade from or
//! back to an older process still moves its HTTP/1.1 connections: the
//! caller (`crates/cli/upgrade.rs`) picks the form per message, and tells
//! the old sender its own (a wire-version byte in its hello).

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

/// Cleartext HTTP/1.1's protocol tag, the one protocol a process before
/// session 47 adopts (version 0 records). Named here, not taken from
/// `proto` (a lower layer never imports an upper one); `proto/mod.rs`
/// checks at compile time that its `HTTP1` tag is this one.
pub(crate) const V0_HTTP1: u8 = 1;

/// Which parked connections a hand-over moves
/// ([`ServerHandle::hand_over_parked_of`](crate::ServerHandle::hand_over_parked_of)):
/// what the next process can adopt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandOverKinds {
    /// Every kind that can move: idle cleartext HTTP/1.1, and parked (or
    /// idle awake, which park for it) cleartext framed connections whose
    /// handler exports its state. The default.
    #[default]
    All,
    /// Idle cleartext HTTP/1.1 only: the next process adopts nothing else
    /// (a megaconn of a session before 47, which reads version 0 records).
    /// Framed handlers are not asked to export: their connections stay
    /// and close as at shutdown (their goodbye frame, `on_close` with
    /// `Shutdown`), where exported they heard `HandedOver`, lost their
    /// state and were closed without a goodbye.
    Http1Only,
}

impl HandOverKinds {
    /// Whether framed connections are asked to move.
    pub(crate) fn moves_framed(self) -> bool {
        self == HandOverKinds::All
    }
}

/// What a hand-over leaves to the old server's drain: the connections
/// still open once its workers stopped accepting and took out the ones
/// that move, counted by each worker at that moment (after the take,
/// before its drain begins), summed over those that handed over so far
/// ([`ParkedHandOver::left_to_drain`](crate::ParkedHandOver::left_to_drain)).
/// Counted there rather than as open connections less those handed over:
/// connections opened or closed in between, a hub-less server's awake
/// message connections ([`ServerHandle::message_connections`](crate::ServerHandle::message_connections)
/// counts awake ones only with a hub) and batches a caller dropped unsent
/// made that difference wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeftToDrain {
    /// Connections left open, of every protocol.
    pub connections: usize,
    /// Of them, message connections (WebSocket, framed TCP, server-sent
    /// events on the native engine), awake or parked: their peers hear a
    /// goodbye and reconnect.
    pub message_connections: usize,
}

impl LeftToDrain {
    /// `connections` left, `message_connections` of them message ones.
    pub(crate) fn new(connections: i64, message_connections: usize) -> LeftToDrain {
        LeftToDrain {
            connections: usize::try_from(connections).unwrap_or(0),
            message_connections,
        }
    }
}

impl std::ops::AddAssign for LeftToDrain {
    fn add_assign(&mut self, other: LeftToDrain) {
        self.connections += other.connections;
        self.message_connections += other.message_connections;
    }
}

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

/// What a parked connection carries besides its socket: its protocol, how
/// much idle time it had left, and its protocol's payload (a framed
/// connection's state; none for HTTP/1.1). [`to_bytes`](ParkedState::to_bytes)
/// gives its wire form (the module doc of `conn/handover.rs` draws it),
/// [`from_bytes`](ParkedState::from_bytes) reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedState {
    tag: u8,
    /// Milliseconds of idle time left; `u32::MAX`: no idle timeout.
    idle_left_ms: u32,
    /// The protocol's own bytes (at most [`ParkedState::MAX_PAYLOAD_BYTES`]).
    payload: Box<[u8]>,
}

/// Why [`ParkedState::from_bytes`] refused its bytes: the connection they
/// came with cannot be adopted (close it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParkedStateError {
    /// Fewer bytes than a record's header, or than its payload length says.
    #[error("a parked connection's state is cut short ({have} of {need} bytes)")]
    Short {
        /// Bytes there were.
        have: usize,
        /// Bytes the record needs.
        need: usize,
    },
    /// Another version of the wire form: version 0 (a process of a session
    /// before 47, 5 bytes a record) or a later one this process does not
    /// know.
    #[error("a parked connection's state is of wire version {0:#04x}, not 0xc1")]
    Version(u8),
    /// A payload over [`ParkedState::MAX_PAYLOAD_BYTES`].
    #[error("a parked connection's payload is {0} bytes, over the most a hand-over carries")]
    TooLarge(usize),
}

impl ParkedState {
    /// The wire form's version byte (see the module doc).
    pub const VERSION: u8 = 0xC1;

    /// Bytes of a record's header, before its payload.
    pub const HEADER_BYTES: usize = 10;

    /// The largest payload a record carries (a framed connection's state,
    /// topics and timers; its handler's own bytes are bounded lower, by
    /// [`MAX_EXPORTED_STATE_BYTES`](crate::MAX_EXPORTED_STATE_BYTES)).
    /// A whole record fits in 64 KiB, so a caller that passes one record
    /// per message, or several up to that, can read each message into a
    /// 64 KiB buffer.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 - ParkedState::HEADER_BYTES;

    pub(crate) fn new(tag: ProtoTag, idle_left: Option<Duration>, payload: Vec<u8>) -> ParkedState {
        debug_assert!(payload.len() <= ParkedState::MAX_PAYLOAD_BYTES);
        ParkedState {
            tag: tag.0,
            idle_left_ms: idle_left.map_or(u32::MAX, |d| {
                u32::try_from(d.as_millis()).unwrap_or(u32::MAX - 1)
            }),
            payload: payload.into_boxed_slice(),
        }
    }

    /// Bytes of [`to_bytes`](ParkedState::to_bytes): the header and the
    /// payload.
    pub fn wire_len(&self) -> usize {
        ParkedState::HEADER_BYTES + self.payload.len()
    }

    /// The wire form (version 1): the version byte, the protocol tag, the
    /// idle time left (ms, big endian; all ones for none), the payload's
    /// length (big endian) and the payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.write_to(&mut out);
        out
    }

    /// Appends [`to_bytes`](ParkedState::to_bytes)'s form to `out` (for
    /// several records in one message).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.payload.len()).expect("a payload under 64 KiB");
        out.push(ParkedState::VERSION);
        out.push(self.tag);
        out.extend_from_slice(&self.idle_left_ms.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// Reads the record at the front of `bytes` ([`to_bytes`](ParkedState::to_bytes)'s
    /// form), and how many bytes it took (records follow each other).
    /// Another version, a short record or a payload over
    /// [`MAX_PAYLOAD_BYTES`](ParkedState::MAX_PAYLOAD_BYTES) is refused,
    /// never misread.
    pub fn from_bytes(bytes: &[u8]) -> Result<(ParkedState, usize), ParkedStateError> {
        let need = ParkedState::HEADER_BYTES;
        let short = |need| ParkedStateError::Short {
            have: bytes.len(),
            need,
        };
        match bytes.first() {
            Some(&ParkedState::VERSION) => {}
            Some(&other) => return Err(ParkedStateError::Version(other)),
            None => return Err(short(need)),
        }
        let header = bytes.get(..need).ok_or_else(|| short(need))?;
        let word = |at: usize| {
            u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let len = word(6) as usize;
        if len > ParkedState::MAX_PAYLOAD_BYTES {
            return Err(ParkedStateError::TooLarge(len));
        }
        let payload = bytes
            .get(need..need + len)
            .ok_or_else(|| short(need + len))?;
        let state = ParkedState {
            tag: header[1],
            idle_left_ms: word(2),
            payload: payload.into(),
        };
        Ok((state, need + len))
    }

    /// Bytes of a version 0 record (a process of a session before 47: the
    /// tag and the idle time left, no version byte, no length).
    pub const V0_BYTES: usize = 5;

    /// Reads a version 0 record (see [`V0_BYTES`](ParkedState::V0_BYTES)):
    /// an HTTP/1.1 connection handed over by an older process, no payload.
    /// Its first byte is a tag (below 0x40), never the version byte 0xC1, so
    /// a message's form is told by its first byte and its length.
    pub fn from_v0_bytes(b: [u8; ParkedState::V0_BYTES]) -> ParkedState {
        ParkedState {
            tag: b[0],
            idle_left_ms: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
            payload: Box::default(),
        }
    }

    /// The version 0 form, for a process of a session before 47 (it reads
    /// nothing else): only a cleartext HTTP/1.1 connection has one (no
    /// payload); `None` for any other, which that process could not adopt.
    pub fn to_v0_bytes(&self) -> Option<[u8; ParkedState::V0_BYTES]> {
        if self.tag != V0_HTTP1 || !self.payload.is_empty() {
            return None;
        }
        let ms = self.idle_left_ms.to_be_bytes();
        Some([self.tag, ms[0], ms[1], ms[2], ms[3]])
    }

    /// Whether it is a cleartext HTTP/1.1 connection (else a message
    /// connection: framed, the one other protocol that moves).
    pub fn is_http1(&self) -> bool {
        self.tag == V0_HTTP1
    }

    pub(crate) fn tag(&self) -> ProtoTag {
        ProtoTag(self.tag)
    }

    /// The protocol's payload (empty for HTTP/1.1).
    pub(crate) fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The idle time it had left (`None`: no idle timeout).
    pub(crate) fn idle_left(&self) -> Option<Duration> {
        (self.idle_left_ms != u32::MAX).then(|| Duration::from_millis(self.idle_left_ms.into()))
    }
}

/// How an adopted connection waits in this process's lot, as its protocol
/// resumed it (`server/dispatch.rs`'s `resume`): until when, and what that
/// deadline does.
pub(crate) struct Resumed {
    /// When the lot closes it (HTTP/1.1's idle timeout) or wakes it (a
    /// framed connection's heartbeat timers).
    pub deadline: Option<Instant>,
    /// Closed or woken at `deadline`.
    pub at_deadline: AtDeadline,
}

/// What resumes a handed-over connection's protocol in this process: its
/// state put where the protocol looks for it (a framed connection's side
/// table), or `None` to close it (a tag this server does not serve, a
/// state refused).
pub(crate) type Resume = fn(&Rc<WorkerContext>, &OwnedFd, &ParkedState) -> Option<Resumed>;

/// Parks a connection handed over by another process in this worker's lot,
/// under the connection limits; `resume` resumes its protocol (HTTP/1.1's
/// idle deadline; a framed connection's state into its side table) or
/// refuses it. Returns false when it was closed instead (a protocol this
/// server cannot resume, a state refused, no lot, over a limit), counted
/// in `handover_refused`.
pub(crate) fn adopt(
    ctx: &Rc<WorkerContext>,
    limit: &ConnectionLimit,
    parked: ParkedConnection,
    resume: Resume,
) -> bool {
    let adopted = adopt_or_refuse(ctx, limit, parked, resume);
    if !adopted {
        // Dropping the socket closed it; it never counted as open here.
        incr(&ctx.stats.handover_refused);
    }
    adopted
}

/// [`adopt`], without the count of a refusal.
fn adopt_or_refuse(
    ctx: &Rc<WorkerContext>,
    limit: &ConnectionLimit,
    parked: ParkedConnection,
    resume: Resume,
) -> bool {
    let ParkedConnection { socket, state } = parked;
    let Some(lot) = ctx.park.as_ref() else {
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
    // Last, once nothing else can refuse it: a resumed framed connection
    // has its state in the side table and its handler has heard of it.
    let Some(resumed) = resume(ctx, &socket, &state) else {
        return false;
    };
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
            deadline: resumed.deadline,
            at_once: false,
            proto: state.tag(),
            at_deadline: resumed.at_deadline,
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
            for payload in [vec![], vec![7u8; 300]] {
                let s = ParkedState::new(ProtoTag(1), left, payload);
                let mut two = s.to_bytes();
                s.write_to(&mut two);
                let (back, used) = ParkedState::from_bytes(&two).unwrap();
                assert_eq!((&back, used), (&s, s.wire_len()));
                assert_eq!(ParkedState::from_bytes(&two[used..]).unwrap().0, s);
                assert_eq!(back.idle_left(), left);
            }
        }
    }

    /// An old process's 5-byte form (tag first), a record cut short and a
    /// payload length over the bound are refused, not misread.
    #[test]
    fn other_versions_and_short_or_huge_records_are_refused() {
        let old = [1u8, 0, 0, 0xea, 0x60];
        assert_eq!(
            ParkedState::from_bytes(&old),
            Err(ParkedStateError::Version(1))
        );
        let s = ParkedState::new(ProtoTag(2), None, vec![1, 2, 3]).to_bytes();
        for cut in 0..s.len() {
            assert!(
                matches!(
                    ParkedState::from_bytes(&s[..cut]),
                    Err(ParkedStateError::Short { .. })
                ),
                "{cut}"
            );
        }
        let mut huge = ParkedState::new(ProtoTag(2), None, vec![]).to_bytes();
        huge[6..10].copy_from_slice(&(ParkedState::MAX_PAYLOAD_BYTES as u32 + 1).to_be_bytes());
        assert!(matches!(
            ParkedState::from_bytes(&huge),
            Err(ParkedStateError::TooLarge(_))
        ));
    }

    /// Version 0 (a pre-47 process's 5-byte form) round-trips for HTTP/1.1,
    /// and is never written for a connection an old process cannot adopt.
    #[test]
    fn version_0_round_trips_for_http1_only() {
        let old = [1u8, 0, 0, 0xea, 0x60];
        let s = ParkedState::from_v0_bytes(old);
        assert_eq!(s.tag(), ProtoTag(V0_HTTP1));
        assert_eq!(s.idle_left(), Some(Duration::from_secs(60)));
        assert!(s.payload().is_empty());
        assert_eq!(s.to_v0_bytes(), Some(old));
        let none = ParkedState::new(ProtoTag(V0_HTTP1), None, vec![]);
        assert_eq!(none.to_v0_bytes(), Some([1, 0xff, 0xff, 0xff, 0xff]));
        // Framed cleartext's tag (2): no version 0 form.
        let framed = ParkedState::new(ProtoTag(V0_HTTP1 + 1), None, vec![]);
        assert_eq!(framed.to_v0_bytes(), None);
        let with_payload = ParkedState::new(ProtoTag(V0_HTTP1), None, vec![1]);
        assert_eq!(with_payload.to_v0_bytes(), None);
    }
}
