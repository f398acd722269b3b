//! The protocols, each on the connection core: HTTP/1.1, HTTP/2 and framed
//! TCP (length-prefixed or line messages, `framed/`), WebSocket (`ws/`) and
//! Server-Sent Events (`sse/`).
//!
//! A protocol serves a connection until it ends and says how: closed (with a
//! reason), parked (idle at a message boundary, nothing buffered) or handed
//! over to another protocol. It never calls the parking lot or another
//! protocol; the dispatcher (`server/dispatch.rs`) does.

pub(crate) mod date;
pub(crate) mod framed;
#[cfg(test)]
mod fuzz_framed;
#[cfg(test)]
mod fuzz_ws;
pub(crate) mod handling;
pub(crate) mod http1;
pub(crate) mod http2;
#[cfg(test)]
mod owed_tests;
pub(crate) mod parked;
pub(crate) mod sse;
pub(crate) mod ws;

use std::rc::Rc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::conn::tls_io::ParkedSessions;
use crate::conn::{ConnInfo, ProtoTag};
use crate::message;
use crate::message::hub::SendNow;
use crate::message::table::{Pushed, SendParked};
use crate::observe::close::CloseReason;
use crate::service::upgrade::{NativeUpgrade, UpgradeSender};

/// Logs a response body that went on past the `Content-Length` its head
/// sent (HTTP/1.1's `body_overran`, HTTP/2's `overran`): the length went
/// out, the rest was dropped unread. Rate-limited as the other failures of
/// a response body: a file that grows while `ServeDir` serves it does this
/// on every download of it.
#[cold]
pub(crate) fn log_body_overran() {
    use crate::observe::ratelog::{self, Flood};
    ratelog::log(Flood::ResponseBodyFailed, |suppressed| {
        tracing::warn!(
            suppressed,
            "response body longer than its Content-Length; sent that length, dropped the rest (a file that grew while it was served, or a handler's wrong length)"
        )
    });
}

/// The parking lot's tag for a connection that resumes as HTTP/1.1.
pub(crate) const HTTP1: ProtoTag = ProtoTag(1);
// A process before session 47 adopts only this tag's records
// (`conn/handover.rs`): it may never change.
const _: () = assert!(HTTP1.0 == crate::conn::handover::V0_HTTP1);

/// The parking lot's tag for a framed connection (its state waits in the
/// framed protocol's side table).
pub(crate) const FRAMED: ProtoTag = ProtoTag(2);

/// The parking lot's tag for a connection that resumes as HTTP/1.1 over TLS
/// (its session waits in the worker's table of parked TLS sessions).
pub(crate) const HTTP1_TLS: ProtoTag = ProtoTag(3);

/// The parking lot's tag for a native WebSocket (its state waits in the
/// WebSocket side table).
pub(crate) const WEBSOCKET: ProtoTag = ProtoTag(4);

/// The parking lot's tag for a native WebSocket over TLS: its state waits
/// in the WebSocket side table for TLS (`WEBSOCKET_TLS`'s), its session in
/// the worker's table of parked TLS sessions; a wake-up resumes the session
/// first, then the WebSocket.
pub(crate) const WEBSOCKET_TLS: ProtoTag = ProtoTag(5);

/// The parking lot's tag for a framed connection over TLS: its state waits
/// in the framed side table for TLS (`FRAMED_TLS`'s), its session in the
/// worker's table of parked TLS sessions; a wake-up resumes the session
/// first, then the framed connection.
pub(crate) const FRAMED_TLS: ProtoTag = ProtoTag(6);

/// The parking lot's tag for a native Server-Sent Events stream (its route
/// waits in the SSE side table).
pub(crate) const SSE: ProtoTag = ProtoTag(7);

/// The parking lot's tag for a native Server-Sent Events stream over TLS:
/// its route waits in the SSE side table for TLS, its session in the
/// worker's table of parked TLS sessions.
pub(crate) const SSE_TLS: ProtoTag = ProtoTag(8);

/// How a protocol finished with a connection, for the dispatcher to act on.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    /// Closed (the protocol flushed its last words and lingered if it had to).
    Close(CloseReason),
    /// Idle at a message boundary with nothing buffered: park `io` until it
    /// is readable or the idle `deadline` passes. `at_once`: parked straight
    /// after serving a wake-up (see `conn/woken.rs`), not after idling.
    /// `watched`: the parking lot still watches the socket, nothing unheard
    /// (`Parkable::still_watched`, taken before the stream became `io`).
    Park {
        io: T,
        deadline: Option<Instant>,
        at_once: bool,
        watched: bool,
    },
    /// Another protocol takes the connection over.
    HandOver(HandOver<T>),
}

/// Where a connection goes when its protocol changes.
#[derive(Debug)]
pub(crate) enum HandOver<T> {
    /// HTTP/2 with prior knowledge: the client's first bytes were the
    /// preface, which `read_ahead` holds for HTTP/2 to read again.
    /// `info`: the connection's addresses, for HTTP/2's requests.
    /// `since`: when its first request began to be awaited (the accept,
    /// or the wake from the lot), from which a drain counts the 5 s it
    /// leaves HTTP/2's handshake, as HTTP/1.1 counted them for its first
    /// head (`http1/conn.rs`, `head_cut`): counted from the hand-over, an
    /// h2c connection whose preface came late had up to 5 s more.
    H2c {
        io: T,
        read_ahead: Bytes,
        info: Option<Box<ConnInfo>>,
        since: Option<Instant>,
    },
    /// `101 Switching Protocols`: the handler gets the socket.
    Upgrade {
        io: T,
        read_ahead: Bytes,
        tx: UpgradeSender,
    },
    /// `101 Switching Protocols` to a protocol of the server's own (the
    /// response carried `to`), or an event stream's `200` (the SSE route's):
    /// the dispatcher serves it, no handler task.
    Native {
        io: T,
        read_ahead: Bytes,
        to: NativeUpgrade,
    },
}

/// The client's first line when it speaks HTTP/2 from the start (h2c prior
/// knowledge). The whole preface is this plus `SM\r\n\r\n`; h2 checks that.
pub(crate) const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// True when a connection's first bytes are the HTTP/2 preface.
pub(crate) fn is_h2_preface(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(H2_PREFACE_HEAD)
}

/// How pushes reach a parked message connection over TLS (WebSocket,
/// framed, Server-Sent Events): the frame encrypted with its parked session (which stays
/// parked), one `send` of the records. The frame is encoded once for all;
/// the encryption is per connection. A socket that does not take them all
/// leaves every record it did not take to be written when the connection
/// wakes, even with none taken: the session's sequence moved past them, so
/// no later record could be read without them. Shared by the protocols
/// (which never import each other).
pub(crate) fn sealed(sessions: ParkedSessions) -> SendParked {
    Rc::new(move |fd, frame| match sessions.seal(fd, frame) {
        Some(records) => {
            let records = Bytes::from(records);
            match message::hub::send_all_now(fd, &records) {
                SendNow::Full { taken } => Pushed::Behind(Some(records.slice(taken..))),
                sent => Pushed::of(sent, &records),
            }
        }
        // No session that can send (it is closing): nothing is written,
        // and the connection's own wake-up finds out why.
        None => Pushed::Broken,
    })
}

/// The earlier of two optional instants (a protocol's timers).
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `at`, or forever.
pub(crate) async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
