//! A message connection's way into the parking lot and, when the lot
//! closes it there itself (shutdown, its idle deadline), its way out: the
//! same steps for framed TCP, WebSocket and Server-Sent Events, which
//! wrote them three times.
//!
//! - [`park`]: the socket given up, the state into the protocol's side
//!   table under its descriptor, the lot told when to wake it;
//! - [`close_parked_tls`]: over TLS, the parked session made a
//!   [`ClosingTls`] for the close's last records and, for our own closes,
//!   `close_notify` after them;
//! - [`let_go`]: the entry taken out of the side table, what a push left
//!   owed written now if the socket takes it (cleartext or TLS: its
//!   confirmed push told the same either way), the handler told through
//!   `Live`, as an awake connection's close tells it (it leaves its topics;
//!   a panic in `on_close` is caught, counted and logged instead of
//!   unwinding through the lot's turn), then the protocol's goodbye at
//!   shutdown (not after an owed push: it would land inside that frame).
//!
//! The protocol keeps what is its own: its side table (a WebSocket's
//! releases the kind it parked as), its goodbye's bytes (a framed
//! listener's frame, an event and the last chunk, a close frame), its
//! handler and `on_close`. Here, at `proto/`'s level and not in
//! `message/`, because it ends in [`Ended`], which is the protocols'
//! (`message/` imports no protocol).

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::conn::tls_io::{ClosingTls, ParkedTls};
use crate::conn::transport::Parkable;
use crate::message;
use crate::message::io::MessageParked;
use crate::message::live::{Live, OnClose};
use crate::message::table::{Parked, SideTable};
use crate::message::worker::Local;
use crate::observe::close::CloseReason;
use crate::proto::{earliest, Ended};

/// How the lot's last words reach a parked socket it is closing.
pub(crate) enum ParkedSocket<'a> {
    /// In the clear: one non-blocking `send` of the bytes as they are.
    Plain,
    /// Over TLS, with its closing session: sealed with it, whole records
    /// only (`ClosingTls`). `None`: it has no session (nothing is written;
    /// its bytes in the clear would break the stream).
    Tls(Option<&'a mut ClosingTls>),
}

impl ParkedSocket<'_> {
    /// Whether it is TLS (its state waits in its protocol's TLS side table).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ParkedSocket::Tls(_))
    }

    /// Writes `bytes` to parked socket `fd` in one non-blocking `send`,
    /// sealed with its session over TLS: a message protocol's last words
    /// as the lot closes it (a goodbye frame or event). Best effort: what
    /// the socket does not take is lost with the close (over TLS nothing
    /// more is written after it then, not even `close_notify`: `ClosingTls`).
    fn send(&mut self, fd: RawFd, bytes: &[u8]) {
        match self {
            ParkedSocket::Plain => {
                message::hub::send_all_now(fd, bytes);
            }
            ParkedSocket::Tls(Some(session)) => {
                session.seal_and_send(fd, bytes);
            }
            ParkedSocket::Tls(None) => {}
        }
    }
}

/// Gives `io` up for parking between messages: `live`'s state goes to
/// `table` under the socket's descriptor, as `variant` (asked once the
/// socket is given up, so that a protocol that counts its parked kinds
/// claims one only for a connection that parks; `None` closes it as
/// `ServerError`, the protocol having said why), with its timers; the lot
/// wakes it at the earlier of them (`Wake::Timer`) and, over TLS, its
/// session waits in the worker's table beside it. `at_once`: parked
/// straight after serving a wake-up (`Ended::Park`).
pub(crate) fn park<H, S>(
    io: impl Parkable,
    live: Live<'_, H, S>,
    (table, variant): (&SideTable<S>, impl FnOnce() -> Option<usize>),
    (due, send_at): (Option<Instant>, Option<Instant>),
    at_once: bool,
) -> Ended<MessageParked> {
    let watched = io.still_watched();
    match io.into_parked_parts() {
        Ok((socket, session)) => {
            let Some(variant) = variant() else {
                return Ended::Close(live.close(CloseReason::ServerError));
            };
            let generation = live.id().generation();
            let parked = Parked {
                state: live.take(),
                variant,
                due,
                send_at,
                generation,
                behind: false,
            };
            table.put(socket.as_raw_fd(), parked);
            Ended::Park {
                io: (socket, session),
                deadline: earliest(due, send_at),
                at_once,
                watched,
            }
        }
        Err(e) => Ended::Close(live.close(CloseReason::io(&e))),
    }
}

/// The lot closed parked connection `fd` over TLS itself, with its parked
/// `session`: `close` lets the connection go ([`let_go`], through its
/// protocol) with the session closing, whose last records it writes; then
/// our own closes (shutdown, the idle timeout) end with `close_notify`, as
/// HTTPS/1.1's do, after whole records only (if what a push left owed or
/// the goodbye did not go whole, nothing more is written: `ClosingTls`).
pub(crate) fn close_parked_tls(
    fd: RawFd,
    reason: CloseReason,
    session: Option<ParkedTls>,
    close: impl FnOnce(ParkedSocket<'_>),
) {
    let mut closing = session.map(ParkedTls::closing);
    close(ParkedSocket::Tls(closing.as_mut()));
    if let Some(closing) = closing {
        if matches!(reason, CloseReason::IdleTimeout | CloseReason::Shutdown) {
            closing.close_notify(fd);
        }
    }
}

/// Lets go of parked connection `fd` (its entry `parked`, taken out of its
/// side table) that the lot closes for `reason`: what a push it fell
/// behind on left owed goes now if the socket takes it without waiting,
/// counted as a woken connection's is, or it is lost as a close loses it
/// (`Local::let_go_unsent`; over TLS the session says nothing more); the
/// handler hears why (`on_close`
/// through `Live`); then at shutdown, unless it was behind, the
/// protocol's `goodbye` for it, if any, goes in one non-blocking `send`.
pub(crate) fn let_go<H, S>(
    (local, parked): (&Rc<Local>, Parked<S>),
    (fd, reason): (RawFd, CloseReason),
    mut socket: ParkedSocket<'_>,
    goodbye: impl FnOnce(&Parked<S>) -> Option<BytesMut>,
    (handler, on_close): (&H, OnClose<H, S>),
) {
    let id = local.id(fd, parked.generation);
    // Cleartext or TLS alike (`Local::let_go_unsent`): the rest goes now if
    // the socket takes it whole, and its waiter hears what a close before
    // it woke would tell it otherwise. A TLS socket without its session
    // writes nothing: its close counts the rest lost (`Local::closed`).
    if parked.behind {
        match &mut socket {
            ParkedSocket::Plain => local.let_go_unsent(id, |rest| {
                message::hub::send_all_now(fd, rest) == message::hub::SendNow::Sent
            }),
            ParkedSocket::Tls(Some(session)) => {
                local.let_go_unsent(id, |rest| session.send_sealed(fd, rest));
            }
            ParkedSocket::Tls(None) => {}
        }
    }
    // Framed before the state goes to `on_close` (an event stream's
    // goodbye is its route's), written after it: a panic in `on_close` is
    // counted by the time the peer reads its goodbye (a WebSocket's test
    // asserts so), and is caught, so the goodbye still goes.
    let last = (reason == CloseReason::Shutdown && !parked.behind)
        .then(|| goodbye(&parked))
        .flatten();
    Live::new(handler, on_close, parked.state, id, local).close(reason);
    if let Some(last) = last {
        socket.send(fd, &last);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The lot's last words go as they are on a cleartext socket, and not
    /// at all on a TLS one without its session: in the clear they would
    /// break the peer's TLS stream. (Framed and SSE wrote them in the clear
    /// then, WebSocket wrote nothing; now all three write nothing.)
    #[test]
    fn a_tls_socket_without_its_session_gets_nothing_in_the_clear() {
        let (ours, peer) = UnixStream::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut got = [0u8; 8];
        ParkedSocket::Tls(None).send(ours.as_raw_fd(), b"bye");
        let nothing = (&peer).read(&mut got).map_err(|e| e.kind());
        assert_eq!(nothing, Err(ErrorKind::WouldBlock), "{got:?}");
        ParkedSocket::Plain.send(ours.as_raw_fd(), b"bye");
        assert_eq!((&peer).read(&mut got).unwrap(), 3);
        assert_eq!(&got[..3], b"bye");
    }
}
