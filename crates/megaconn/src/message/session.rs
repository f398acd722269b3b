//! [`Session`]: a message connection as its handler sees it while handling
//! one message: its id, the frames it sends, its topics, a close.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

use bytes::Bytes;

use crate::conn::client_auth::PeerCertificates;
use crate::message::hub::{Buffered, ConnectionId};
use crate::message::topics::SubscribeError;
use crate::message::worker::Local;

/// A connection as its handler sees it while handling one message: where
/// replies go, and which topics it hears. Frames sent are written, in
/// order, when the handler returns.
pub struct Session {
    id: ConnectionId,
    local: Rc<Local>,
    out: RefCell<Vec<Bytes>>,
    closing: Cell<bool>,
    /// The TLS client's verified chain (`ClientAuth`), the stream's one
    /// copy shared by refcount (`Parkable::shared_peer_certificates`: the
    /// same across wake-ups, where each wake copied it before); `None`
    /// without one (nothing more kept while parked: the parked TLS session
    /// has it).
    peer: Option<PeerCertificates>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("queued", &self.out.borrow().len())
            .field("closing", &self.closing.get())
            .finish()
    }
}

impl Session {
    /// The session of connection `id`, whose TLS client presented
    /// `peer` (the stream's `Parkable::shared_peer_certificates`; `None`
    /// on cleartext or without client auth).
    pub(crate) fn new(
        id: ConnectionId,
        local: Rc<Local>,
        peer: Option<PeerCertificates>,
    ) -> Session {
        Session {
            id,
            local,
            out: RefCell::default(),
            closing: Cell::default(),
            peer,
        }
    }

    /// The certificate chain the peer presented in its TLS handshake,
    /// verified against the client CA roots
    /// ([`TlsConfig::client_auth`](crate::TlsConfig::client_auth)): a
    /// framed TLS listener's or a Server-Sent Events stream's over TLS.
    /// The same after the connection parked and woke (its TLS session
    /// kept it). `None` on cleartext, with client auth off, and for a
    /// client that sent none under [`ClientAuth::Optional`](crate::ClientAuth::Optional).
    pub fn peer_certificates(&self) -> Option<&PeerCertificates> {
        self.peer.as_ref()
    }

    /// This connection's id, for pushing to it later with a [`Hub`](crate::Hub)
    /// (from any task or thread).
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Queues a frame to the peer (framed as the listener frames: a length
    /// header or a line ending is added). On a framed listener, a frame
    /// its framing cannot carry (over
    /// [`Framing::max_reply_bytes`](crate::Framing::max_reply_bytes), set
    /// by `max_outbound_frame_bytes`; a line ending or bytes not UTF-8 on
    /// lines) is not sent: the connection closes as
    /// [`CloseReason::ServerError`](crate::CloseReason::ServerError) once
    /// the handler returns (its `on_close` hears it), counted in
    /// `megaconn_limit_hits_total{limit="push_unframable"}` and logged.
    pub fn send(&self, frame: impl Into<Bytes>) {
        self.out.borrow_mut().push(frame.into());
    }

    /// Subscribes this connection to `topic`: messages published to it with
    /// [`Hub::publish`](crate::Hub::publish) reach it from now on, parked
    /// or awake, until it unsubscribes or closes. Subscribing twice is
    /// subscribing once.
    ///
    /// A connection holds at most
    /// [`Builder::max_subscriptions`](crate::Builder::max_subscriptions)
    /// topics (default 128): a new topic past that is refused with
    /// [`SubscribeError::TooMany`], counted in
    /// `megaconn_limit_hits_total{limit="max_subscriptions"}` and logged
    /// (rate-limited); the connection stays open, subscribed as before,
    /// and the handler decides what its peer hears. So is a topic whose
    /// name is over
    /// [`Builder::max_topic_bytes`](crate::Builder::max_topic_bytes)
    /// (default 255 bytes), with [`SubscribeError::TopicTooLong`].
    pub fn subscribe(&self, topic: &str) -> Result<(), SubscribeError> {
        self.local.subscribe(self.id, topic)
    }

    /// Unsubscribes this connection from `topic` (no effect if it was not
    /// subscribed).
    pub fn unsubscribe(&self, topic: &str) {
        self.local.unsubscribe(self.id, topic);
    }

    /// The peer's address, read from the socket when asked (one
    /// `getpeername`: nothing is kept per connection, parked or awake). The
    /// address of whoever connected: behind a proxy or load balancer, that
    /// one. `None` when there is no socket to ask (a WebSocket on a
    /// transport of the caller's own), or once the peer has reset the
    /// connection.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // A session lives while its handler is called on the awake
        // connection, whose task owns the socket `id` names: it is open.
        peer_of(self.id.fd())
    }

    /// The load balancer this connection came through, when it is a
    /// proxied one ([`Builder::proxy_protocol`](crate::Builder::proxy_protocol):
    /// its PROXY header named the client [`peer_addr`](Session::peer_addr)
    /// answers); the balancer's address and source port, the socket's own
    /// peer. `None` for any other connection, and after a `LOCAL` or
    /// `UNKNOWN` header. Read when asked, as `peer_addr` is (one atomic
    /// load while no proxied connection is open, else one `getpeername`
    /// and a lookup in the process's table of proxied clients).
    pub fn proxied_by(&self) -> Option<SocketAddr> {
        let fd = self.id.fd();
        if fd < 0 {
            return None;
        }
        // SAFETY: open while the session lives, as for `peer_addr`.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        crate::conn::proxy_header::balancer_of(socket)
    }

    /// How far behind this connection is: what waits in its outbound
    /// queue, pushed by the hub and not yet taken for writing
    /// ([`Buffered`]: messages and bytes; zero while it keeps up). Its
    /// peer is slow when this grows: a
    /// [`Hub::send_droppable`](crate::Hub::send_droppable) is dropped for
    /// it from half of
    /// [`Builder::outbound_queue`](crate::Builder::outbound_queue) on, and
    /// an ordinary push past the whole bound closes it as a slow consumer.
    /// On the connection's worker, so cheap: a lookup in the worker's map
    /// of awake connections and the byte count its queue keeps (8 B per
    /// awake connection; nothing for parked ones). The
    /// replies this handler queued ([`Session::send`]) are not in it: they
    /// are written when it returns, before the pushes behind them.
    pub fn buffered(&self) -> Buffered {
        self.local.buffered(self.id).unwrap_or_default()
    }

    /// Closes the connection once the queued frames are written (reported as
    /// [`CloseReason::ServerClosed`](crate::CloseReason::ServerClosed)).
    pub fn close(&self) {
        self.closing.set(true);
    }

    /// The frames queued so far, taken.
    pub(crate) fn take_out(&self) -> Vec<Bytes> {
        std::mem::take(&mut *self.out.borrow_mut())
    }

    /// True when the handler asked to close.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.get()
    }
}

/// The peer's address of socket `fd`, read from it (one `getpeername`);
/// `None` for no socket (-1: a caller's own transport) or once the peer
/// has reset it. The caller knows `fd` is open: a session's connection,
/// or one its worker found awake or parked on its own thread.
pub(crate) fn peer_of(fd: std::os::fd::RawFd) -> Option<SocketAddr> {
    // No socket (-1: a caller's own transport never parks, and its id
    // only has to be unique).
    if fd < 0 {
        return None;
    }
    // SAFETY: open, as the caller knows (above); borrowed for this call.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    // The client a trusted balancer named, if one did.
    crate::conn::proxy_header::peer_of(&socket)
}
