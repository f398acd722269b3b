//! [`MessageIo`]: the socket of an awake message connection (framed TCP,
//! Server-Sent Events; a WebSocket's when it can park), and what every
//! message protocol does with it the same way: write a batch bounded by a
//! write limit and ended by an overflow of its push queue or a
//! `Hub::reset` ([`MessageIo::write_out`]), write what a push left owed while it was
//! parked, to resume ([`MessageIo::resume_owed`]) or to close
//! ([`MessageIo::write_owed`]), decrypt what woke it over TLS
//! ([`prefetch_woken`]), and say `close_notify` at the end
//! ([`MessageIo::close_notify`]).
//!
//! Here, below the protocols, because the three wrote it three times:
//! `FramedIo` (framed) and `SseIo` (SSE) were one enum with two names and
//! the same eight trait impls, their awake loops the same bounded write,
//! the same close and the same rest of a push owed at a wake-up; the
//! WebSocket's took the same downcast at its hand-over and the same TLS
//! read at a wake-up. Nothing here is about a wire format: the protocols
//! keep their frames, their loops and their reasons to close; this keeps
//! the socket.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::conn::io::{CloseBy, WriteBound, WriteLimit};
use crate::conn::tls_io::{ParkedTls, TlsIo};
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::{poll_once, WokenSocket};
use crate::message::hub::Unsent;
use crate::message::outbound::Outbound;
use crate::message::wake::{linger_after_unsent, write_owed_resuming, write_unsent, OwedCut};
use crate::message::worker::Awake;
use crate::observe::close::{client_left, CloseReason};
use crate::observe::ratelog::Flood;
use crate::observe::stats::{MessageCounters, WorkerStats};

/// What a parked message connection leaves for the dispatcher: the bare
/// socket for the lot and, over TLS, its session for the worker's table.
pub(crate) type MessageParked = (OwnedFd, Option<ParkedTls>);

/// A message connection's socket: accepted (a tokio stream, a framed
/// listener's), bare until it must wait (woken from the parking lot, or
/// handed over by HTTP/1.1 still registered with tokio: `conn/woken.rs`),
/// or TLS over such a socket (its session parks beside it, in the
/// worker's table of parked TLS sessions).
#[derive(Debug)]
pub(crate) enum MessageIo {
    /// Accepted by a framed listener.
    Tcp(TcpStream),
    /// A bare socket: woken from the lot, or handed over.
    Plain(WokenSocket),
    /// TLS over a bare socket.
    Tls(TlsIo<WokenSocket>),
}

impl MessageIo {
    /// The socket's descriptor, which the connection parks under.
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            MessageIo::Tcp(s) => s.as_raw_fd(),
            MessageIo::Plain(s) => s.raw_fd(),
            MessageIo::Tls(s) => s.get_ref().raw_fd(),
        }
    }

    /// Makes the socket's close a reset ([`Hub::reset`](crate::Hub::reset)):
    /// `SO_LINGER` 0, so the close sends RST (the peer reads
    /// `ECONNRESET`), drops what its send buffer holds and leaves no
    /// `TIME_WAIT`. Best effort: if the option cannot be set, the close is
    /// an ordinary one.
    pub(crate) fn reset_on_close(&self) {
        // SAFETY: the connection owns its socket, open while `self` is.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.raw_fd()) };
        let linger = socket2::SockRef::from(&socket).set_linger(Some(std::time::Duration::ZERO));
        if let Err(error) = linger {
            tracing::debug!(%error, "SO_LINGER 0 was refused; the reset closes with a FIN");
        }
    }

    /// Whether it is TLS (its state parks in its protocol's TLS side table).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, MessageIo::Tls(_))
    }

    /// Whether part of a TLS record waits: part of a message, as far as
    /// parking goes (parked with it, the connection was woken by each byte
    /// of a trickle, its heartbeat restarted, for good).
    pub(crate) fn holds_partial_record(&self) -> bool {
        matches!(self, MessageIo::Tls(s) if s.holds_partial_record())
    }

    /// Writes `bytes` raw, under the TLS stream if there is one: what a
    /// push left unsent while the connection was parked (the rest of a
    /// frame or event, or records its parked session sealed), before
    /// anything else.
    pub(crate) fn poll_write_raw(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            MessageIo::Tls(s) => s.poll_write_sealed(cx, bytes),
            io => Pin::new(io).poll_write(cx, bytes),
        }
    }

    /// Woken behind to close (a push found its parked socket full, and it
    /// closes: its heartbeat passed, or the lot could not wake it to
    /// resume), or a slow consumer cut while it resumed
    /// ([`OwedCut::rest`]): the rest of that push (`unsent`,
    /// `Local::take_unsent`'s) goes raw first, so the peer's last frame is
    /// whole, then the close lingers; the two share the close's bound
    /// (`by`, begun now). Counted delivered or dropped by whether it went
    /// (`write_unsent`).
    pub(crate) async fn write_owed(
        &mut self,
        unsent: Option<Unsent>,
        by: &CloseBy,
        counters: &MessageCounters,
    ) {
        let Some(unsent) = unsent else { return };
        let whole = write_unsent(&unsent, by, counters, |cx, b| self.poll_write_raw(cx, b)).await;
        if whole {
            linger_after_unsent(self, by).await;
        }
    }

    /// Woken behind to resume (`Wake::Owed`, or anything else that woke it
    /// first): what it owes (`Local::take_owed`) goes raw first, as an
    /// awake write bounded by `limit` and ended by an overflow of `awake`'s
    /// queue ([`write_owed_resuming`]); then the connection goes on awake.
    /// A [`Hub::reset`](crate::Hub::reset) meanwhile ends it at once: the
    /// push counts as dropped (its waiter hears `Closed`), the socket is
    /// made to reset ([`MessageIo::reset_on_close`]) and the cut says
    /// [`CloseReason::Reset`], with no rest to write. (It ended at the
    /// write bound, as a slow consumer closed with a FIN: review, session
    /// 46.)
    pub(crate) async fn resume_owed(
        &mut self,
        owed: Unsent,
        awake: Option<&Awake>,
        limit: impl FnOnce() -> WriteLimit,
        counters: &MessageCounters,
    ) -> Result<(), OwedCut> {
        let fd = Some(self.raw_fd());
        let ended = {
            // Dropped when the reset comes first: its guard counts the
            // push dropped (`write_owed_resuming`).
            let mut writing = pin!(write_owed_resuming(
                owed,
                (limit, fd),
                awake,
                counters,
                |cx, b| self.poll_write_raw(cx, b)
            ));
            let mut reset = pin!(reset_asked(awake));
            poll_fn(|cx| {
                if reset.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                writing.as_mut().poll(cx).map(Some)
            })
            .await
        };
        ended.unwrap_or_else(|| {
            self.reset_on_close();
            Err(OwedCut {
                reason: CloseReason::Reset,
                rest: None,
            })
        })
    }

    /// The end of a connection closed for `reason`: over TLS, our own
    /// closes say `close_notify` ([`CloseReason::says_close_notify`]: not
    /// after a reply cut short, nor when the peer left or the socket
    /// failed), as HTTPS/1.1's do, within the close's bound (`by`); a peer's
    /// own `close_notify` was answered as it was read. A cleartext
    /// connection is simply closed by the dispatcher.
    pub(crate) async fn close_notify(&mut self, reason: CloseReason, by: &CloseBy) {
        if let (MessageIo::Tls(tls), true) = (self, reason.says_close_notify()) {
            let shutdown = poll_fn(|cx| Pin::new(&mut *tls).poll_shutdown(cx));
            let _ = by.within(shutdown).await;
        }
    }

    /// Writes `head` from `*at` on (bytes the protocol framed itself), then
    /// `pushes` (framed by the hub, written from its frames, vectored:
    /// `Outbound`), then flushes. Usually the socket takes it all at once
    /// and no timer is set up; otherwise the write is bounded by `limit`
    /// (asked only then: `write_timeout`, else the protocol's heartbeat or
    /// `write_stall_timeout`, [`WriteLimit`]), which when it passes is
    /// counted in `stats` and logged as `flood` naming `peer`
    /// (`WriteTimeout`), and ended when `awake`'s push queue overflows
    /// meanwhile (`SlowConsumer`: the caller writes the rest of the frame
    /// under way) or [`Hub::reset`](crate::Hub::reset) reaches it
    /// (`Reset`: the socket made to reset, [`MessageIo::reset_on_close`],
    /// and nothing more is to be written; it ended at the write bound, and
    /// closed with a FIN: review, session 46). `*at` says how much of
    /// `head` went, whatever the end.
    pub(crate) async fn write_out(
        &mut self,
        (head, at): (&[u8], &mut usize),
        pushes: &mut Outbound,
        awake: Option<&Awake>,
        limit: impl FnOnce() -> WriteLimit,
        (stats, flood, peer): (&WorkerStats, Flood, &str),
    ) -> Result<(), CloseReason> {
        let io_error = |e: io::Error| CloseReason::io(&e);
        let writing = poll_fn(|cx| self.poll_out(pushes, cx, head, at));
        match poll_once(pin!(writing)) {
            Poll::Ready(written) => written.map_err(io_error),
            // A peer that stops reading must not hold the connection for
            // good, deaf to its heartbeat and its pushes.
            Poll::Pending => {
                let mut bound = WriteBound::new(limit(), Some(self.raw_fd()));
                let mut overflowed = pin!(Awake::overflowed(awake));
                let mut reset = pin!(reset_asked(awake));
                let written = poll_fn(|cx| {
                    let before = (*at, pushes.written());
                    let written = self.poll_out(pushes, cx, head, at);
                    if let Poll::Ready(written) = written {
                        return Poll::Ready(written.map_err(io_error));
                    }
                    if reset.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(CloseReason::Reset));
                    }
                    if overflowed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(CloseReason::SlowConsumer));
                    }
                    if bound.poll_passed(cx, (*at, pushes.written()) != before) {
                        bound.passed(Some(stats), flood, peer);
                        return Poll::Ready(Err(CloseReason::WriteTimeout));
                    }
                    Poll::Pending
                })
                .await;
                if written == Err(CloseReason::Reset) {
                    self.reset_on_close();
                }
                written
            }
        }
    }

    /// Writes `head` from `at` on, then the pushes, then flushes the
    /// stream: over TLS what the session sealed waits in its buffer until
    /// a flush sends it (a plain socket's flush does nothing).
    pub(crate) fn poll_out(
        &mut self,
        pushes: &mut Outbound,
        cx: &mut Context<'_>,
        head: &[u8],
        at: &mut usize,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(pushes.poll_write(Pin::new(&mut *self), cx, head, at))?;
        Pin::new(self).poll_flush(cx)
    }
}

/// Resolves once [`Hub::reset`](crate::Hub::reset) reached the connection
/// of `awake` ([`Inbox::reset_asked`](crate::message::hub::Inbox::reset_asked));
/// never without one (no hub). A write its peer does not take polls it
/// beside [`Awake::overflowed`], to end at once on a reset.
pub(crate) async fn reset_asked(awake: Option<&Awake>) {
    match awake {
        Some(awake) => awake.inbox.reset_asked().await,
        None => std::future::pending().await,
    }
}

/// Over TLS, what woke a parked connection readable is decrypted first:
/// TLS housekeeping alone (a KeyUpdate) is answered and counts as read, so
/// it parks again at once (`Ok(false)`: nothing for the protocol to read);
/// part of a record counts as read too (`Ok(true)`), but is a message
/// begun, read on as a task under `message_timeout`. A peer that reset or
/// left closes as [`CloseReason::ClientClosed`], not a TLS error; a TLS
/// error (the peer's, logged by the stream) as a protocol error, counted
/// by the close. Not for a connection woken to close for the hub
/// (`Hub::close` shut its read side): a read would only find the end of
/// the stream and take it for the peer leaving.
pub(crate) fn prefetch_woken(tls: &mut TlsIo<WokenSocket>) -> Result<bool, CloseReason> {
    match tls.poll_prefetch() {
        Ok(read) => Ok(read),
        Err(e) if client_left(&e) => Err(CloseReason::ClientClosed),
        Err(e) => Err(CloseReason::io(&e)),
    }
}

/// A plain TCP transport as a [`WokenSocket`] (an accepted stream stays
/// registered with tokio, so it waits for real readiness, holding no
/// buffer), TLS over one as TLS over a [`WokenSocket`]: a connection
/// HTTP/1.1 handed over (a native WebSocket's `101`, an event stream's
/// `200`), on its accepted stream or after it was parked. Any other
/// transport (a caller's own, `Builder::serve_connection`) is given back
/// as it is.
pub(crate) fn parkable<T: Transport + 'static>(io: T) -> Result<MessageIo, Box<T>> {
    let any: Box<dyn std::any::Any> = Box::new(io);
    let any = match any.downcast::<TcpStream>() {
        Ok(stream) => return Ok(MessageIo::Plain(WokenSocket::registered_stream(*stream))),
        Err(any) => any,
    };
    let any = match any.downcast::<WokenSocket>() {
        Ok(socket) => return Ok(MessageIo::Plain(*socket)),
        Err(any) => any,
    };
    let any = match any.downcast::<TlsIo<TcpStream>>() {
        Ok(tls) => return Ok(MessageIo::Tls(tls.map_sock(WokenSocket::registered_stream))),
        Err(any) => any,
    };
    match any.downcast::<TlsIo<WokenSocket>>() {
        Ok(tls) => Ok(MessageIo::Tls(*tls)),
        Err(any) => Err(any
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("it is a T"))),
    }
}

impl AsyncRead for MessageIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MessageIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            MessageIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MessageIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MessageIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MessageIo::Tcp(s) => Pin::new(s).poll_write(cx, data),
            MessageIo::Plain(s) => Pin::new(s).poll_write(cx, data),
            MessageIo::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MessageIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, slices),
            MessageIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, slices),
            MessageIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, slices),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MessageIo::Tcp(s) => s.is_write_vectored(),
            MessageIo::Plain(s) => s.is_write_vectored(),
            MessageIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MessageIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            MessageIo::Plain(s) => Pin::new(s).poll_flush(cx),
            MessageIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MessageIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            MessageIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MessageIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Transport for MessageIo {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MessageIo::Tcp(s) => Transport::poll_read_ready(s, cx),
            MessageIo::Plain(s) => s.poll_read_ready(cx),
            MessageIo::Tls(s) => s.poll_read_ready(cx),
        }
    }

    fn holds_partial_input(&self) -> bool {
        self.holds_partial_record()
    }
}

impl Parkable for MessageIo {
    const PARKABLE: bool = true;

    fn repark_when_idle(&self) -> bool {
        match self {
            MessageIo::Tcp(s) => s.repark_when_idle(),
            MessageIo::Plain(s) => s.repark_when_idle(),
            MessageIo::Tls(s) => s.repark_when_idle(),
        }
    }

    fn reparks_a_wake(&self) -> bool {
        match self {
            MessageIo::Tcp(s) => s.reparks_a_wake(),
            MessageIo::Plain(s) => s.reparks_a_wake(),
            MessageIo::Tls(s) => s.reparks_a_wake(),
        }
    }

    fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match self {
            MessageIo::Tls(s) => s.peer_certificates(),
            MessageIo::Tcp(_) | MessageIo::Plain(_) => None,
        }
    }

    /// The TLS stream's one copy, shared: a session made at each wake-up
    /// copies nothing (`Session::new`).
    fn shared_peer_certificates(&self) -> Option<crate::conn::client_auth::PeerCertificates> {
        match self {
            MessageIo::Tls(s) => s.shared_peer_certificates(),
            MessageIo::Tcp(_) | MessageIo::Plain(_) => None,
        }
    }

    fn still_watched(&self) -> bool {
        match self {
            MessageIo::Tcp(s) => s.still_watched(),
            MessageIo::Plain(s) => s.still_watched(),
            MessageIo::Tls(s) => s.still_watched(),
        }
    }

    fn into_parked_parts(self) -> io::Result<MessageParked> {
        match self {
            MessageIo::Tcp(s) => s.into_parked_parts(),
            MessageIo::Plain(s) => s.into_parked_parts(),
            MessageIo::Tls(s) => s.into_parked_parts(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket of ours is taken as a bare one (still registered with
    /// tokio), and a transport of a caller's own is given back as it is,
    /// to be served without parking.
    #[tokio::test]
    async fn parkable_takes_sockets_and_gives_back_other_transports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let fd = client.as_raw_fd();
        match parkable(client) {
            Ok(io @ MessageIo::Plain(_)) => {
                assert_eq!(io.raw_fd(), fd);
                assert!(!io.is_tls() && !io.holds_partial_record());
            }
            other => panic!("not a plain socket: {other:?}"),
        }
        let (duplex, _other_end) = tokio::io::duplex(64);
        assert!(parkable(duplex).is_err());
    }
}
