//! The framed protocol's public message API: [`FramedHandler`] (what a user
//! writes) and [`Session`] (what a handler uses to answer), plus the erased
//! form the server stores ([`ErasedHandler`]), so that neither the worker nor
//! the dispatcher is generic over the user's handler type.
//!
//! The API is per message, not per connection, on purpose: a task per
//! connection cannot leave the runtime, a handler called per message can. Between
//! messages a connection is a bare socket in the parking lot plus its
//! [`State`](FramedHandler::State) in this worker's side table (`mod.rs`).

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;

use crate::conn::context::WorkerContext;
use crate::message::hub::ConnectionId;
use crate::message::io::MessageIo;
use crate::message::live::OnClose;
use crate::message::session::Session;
use crate::message::table::Parked;
use crate::observe::close::{CloseReason, FramingError};
use crate::proto::framed::adopt;
use crate::proto::framed::codec::Framing;
use crate::proto::framed::conn::{self, Start};
use crate::proto::framed::{goodbye_frame, side_table, FramedParked};
use crate::proto::parked::{let_go, ParkedSocket};
use crate::proto::Ended;

/// A framed protocol's behaviour, called once per message. Serve it with
/// [`Server::serve_framed`](crate::Server::serve_framed) on listeners added
/// with [`Builder::listen_framed_on`](crate::Builder::listen_framed_on).
///
/// One handler serves every connection of the server (it is shared across
/// workers, hence `Send + Sync`); what is per connection goes in
/// [`State`](FramedHandler::State), which the server keeps for the connection
/// while it is idle, even while it is parked outside the runtime. Keep it
/// small: a parked connection's state is kept once, inline in a slot of its
/// worker's side table (16 B plus `size_of::<State>()`), with 4 B of
/// descriptor index in each worker of the server, so at a million
/// connections each byte of it is a megabyte, whatever the worker count
/// (what it owns on the heap comes on top). Before 2026-12-05 the slot was
/// per descriptor in every worker: W workers kept W slots per connection.
///
/// ```
/// use bytes::Bytes;
/// use megaconn::{CloseReason, FramedHandler, Session};
///
/// /// Echoes every frame and counts them per connection.
/// struct Echo;
///
/// impl FramedHandler for Echo {
///     type State = u64;
///
///     async fn on_message(&self, seen: &mut u64, frame: Bytes, _: &Session) -> Option<Bytes> {
///         *seen += 1;
///         Some(frame)
///     }
///
///     fn on_close(&self, seen: u64, reason: CloseReason) {
///         println!("closed after {seen} frames: {reason}");
///     }
/// }
/// ```
pub trait FramedHandler: Send + Sync + 'static {
    /// What the server keeps per connection between messages.
    type State: Default + 'static;

    /// A connection opened (after accept, before its first frame), with a
    /// default state. May greet the peer through `session`.
    fn on_open(&self, state: &mut Self::State, session: &Session) {
        let _ = (state, session);
    }

    /// One frame arrived (without its header or line ending). The returned
    /// frame, if any, is written after the ones sent with
    /// [`Session::send`]. While this runs the connection reads nothing more:
    /// frames are handled one at a time, in order.
    ///
    /// While it awaits, pushes to the connection ([`Hub`](crate::Hub)) go
    /// out as they come, before its replies: a peer that reads is not a
    /// slow consumer however long it awaits, and they wait in the
    /// connection's queue ([`Builder::outbound_queue`](crate::Builder::outbound_queue))
    /// only while its socket does not take them. If its peer does not read
    /// them (the queue overflows while a write is stuck, or the write bound
    /// passes) the connection closes meanwhile, and this future is dropped
    /// at its await (`on_close` still runs, with the state as the handler
    /// left it at that await; a push that finds the socket broken closes
    /// it so too: whether the handler finishes then depends on pushes).
    /// (Until session 46 pushes
    /// waited for it to return, and `outbound_queue` of them closed a
    /// reading peer as a slow consumer.) Work that must not be cut short
    /// by such a close can be spawned and answered with
    /// [`Hub::send`](crate::Hub::send).
    fn on_message(
        &self,
        state: &mut Self::State,
        frame: Bytes,
        session: &Session,
    ) -> impl Future<Output = Option<Bytes>>;

    /// The peer broke the framing: a line over
    /// [`Framing::max_line_bytes`](crate::Framing::max_line_bytes), a frame
    /// over [`max_inbound_frame_bytes`](crate::Framing::max_inbound_frame_bytes), a bad
    /// length header or a line not UTF-8. The connection closes
    /// (`on_close` then hears `CloseReason::Protocol(ProtocolDetail::Framing(error))`)
    /// after writing the frame returned here, if any, as a last word the
    /// peer can read (an `error: …` line, say); otherwise the peer sees the
    /// close alone and cannot tell why. Default: none.
    fn on_framing_error(&self, state: &mut Self::State, error: FramingError) -> Option<Bytes> {
        let _ = (state, error);
        None
    }

    /// The connection closed, for `reason` (the peer hung up, a framing
    /// error, the heartbeat timeout, shutdown, ...). Called exactly once per
    /// connection whose `on_open` ran, parked or not.
    fn on_close(&self, state: Self::State, reason: CloseReason) {
        let _ = (state, reason);
    }

    /// [`on_close`](FramedHandler::on_close) with the connection's id (the
    /// one [`Session::id`] gave), to drop it from an application's own map
    /// of ids without keeping a copy of it in every state. The server calls
    /// this one; by default it calls `on_close`: implement one of the two.
    ///
    /// A map keyed by something else (a device's name) must remove the
    /// entry only if it still holds this id: after a reconnect took over
    /// (the new connection registered, then [`Hub::close`](crate::Hub::close)
    /// of the old one), the old connection's close comes after the new
    /// one's registration, and removing by name would mark an online
    /// device offline:
    ///
    /// ```text
    /// // devices: Mutex<HashMap<String, ConnectionId>>, the name in the state
    /// let mut devices = self.devices.lock().unwrap();
    /// if devices.get(&state.name) == Some(&id) { devices.remove(&state.name); }
    /// ```
    fn on_close_with_id(&self, id: ConnectionId, state: Self::State, reason: CloseReason) {
        let _ = id;
        self.on_close(state, reason);
    }

    /// Opts this handler's connections in to moving to the next process at
    /// a zero-downtime upgrade ([`ServerHandle::hand_over_parked`](crate::ServerHandle::hand_over_parked),
    /// `megaconn serve --upgrade`): `state` as bytes, which the next
    /// process's [`import`](FramedHandler::import) reads back. `None`
    /// (the default): the connection closes as at shutdown (goodbye frame,
    /// `on_close` with [`CloseReason::Shutdown`]), as before session 47.
    ///
    /// Asked at the hand-over for each **idle** connection on a
    /// **cleartext** framed listener: parked ones, and awake ones between
    /// frames, which park for it if this gives their state (so an awake
    /// one is asked twice: before it parks, and as it leaves; one that
    /// gets `None` stays awake and hears the goodbye as the drain begins).
    /// Busy connections (a handler running, a
    /// frame half read, a push being written) close as at shutdown; so do
    /// connections over TLS, whatever this returns (rustls cannot rebuild
    /// a session from its secrets, so no process but this one can go on
    /// with its stream). Never asked when the next process adopts
    /// HTTP/1.1 only (one of a session before 47, a rollback:
    /// [`HandOverKinds::Http1Only`](crate::HandOverKinds::Http1Only)):
    /// then every framed connection closes as at shutdown.
    ///
    /// What moves with the state: the socket (the device sees nothing: no
    /// close, and its next frame is answered by the new process), its topic
    /// names (subscribed again there), and the time left to its heartbeat
    /// timeout and to the server's next heartbeat. What does not: a
    /// [`Hub::close_after`](crate::Hub::close_after) deadline (set it again
    /// in [`on_adopt`](FramedHandler::on_adopt)), and a connection that
    /// owes part of a push (it closes as at shutdown).
    ///
    /// At most [`MAX_EXPORTED_STATE_BYTES`](crate::MAX_EXPORTED_STATE_BYTES)
    /// (16 KiB): a longer state is refused, the connection closes as at
    /// shutdown, counted in `megaconn_connections_handover_refused_total`.
    /// Once exported, the connection has left this process: `on_close`
    /// (and [`on_close_with_id`](FramedHandler::on_close_with_id)) hears
    /// [`CloseReason::HandedOver`] with the state, here, so that maps of
    /// ids can drop it. That is told before the state is sent, so it does
    /// not prove the next process took the connection: should the send
    /// fail (or the state be too large for the control socket), or the
    /// next process refuse it, it closes without a goodbye frame or
    /// another `on_close`. A panic here is caught and counted; the
    /// connection stays.
    fn export(&self, state: &Self::State) -> Option<Vec<u8>> {
        let _ = state;
        None
    }

    /// The next process's side of [`export`](FramedHandler::export): the
    /// state back from its bytes, or `None` to refuse it (the connection
    /// closes, counted in `megaconn_connections_handover_refused_total`;
    /// the default refuses every one). Bytes of another version of the
    /// application are the application's to tell apart (a version byte of
    /// its own); corrupt framing around them never reaches here. A panic
    /// is caught and counted, and closes the connection.
    fn import(&self, bytes: &[u8]) -> Option<Self::State> {
        let _ = bytes;
        None
    }

    /// A connection handed over by the previous process was adopted here,
    /// with the state [`import`](FramedHandler::import) gave: what
    /// [`on_open`](FramedHandler::on_open) is to an accepted connection,
    /// but on a connection that is parked and whose peer sent nothing.
    ///
    /// **Its id is new.** [`Session::id`] is this process's id for it (a
    /// [`ConnectionId`] names a descriptor of a worker of one process, and
    /// both differ here), so an application's own map (device → id) must
    /// be rebuilt from here, as `on_open` builds it; the previous process's
    /// map is gone with it (there `on_close` heard
    /// [`CloseReason::HandedOver`]). Its topics are subscribed again
    /// before this is called (a topic this process's limits refuse is
    /// counted and dropped). Frames sent through `session` are written at
    /// once in one non-blocking send (a socket that does not take them
    /// whole closes the connection); [`Session::close`] closes it.
    /// Adoptions are counted in `megaconn_connections_adopted_total`
    /// ([`ServerStats::adopted`](crate::ServerStats::adopted)). A panic
    /// here is caught and counted, and closes the connection.
    fn on_adopt(&self, state: &mut Self::State, session: &Session) {
        let _ = (state, session);
    }
}

/// A boxed connection future: framed connections are boxed so the
/// dispatcher's future does not grow by a handler's future size.
pub(crate) type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A [`FramedHandler`] with its types erased, as the server's configuration
/// stores it.
pub(crate) trait ErasedHandler: Send + Sync {
    /// Serves one framed connection until it closes or parks.
    fn serve(
        self: std::sync::Arc<Self>,
        io: MessageIo,
        ctx: Rc<WorkerContext>,
        framing: Framing,
        listener: usize,
        start: Start,
    ) -> LocalFuture<Ended<FramedParked>>;

    /// The parking lot closed a parked connection itself (its deadline, or
    /// shutdown): drop its state, telling the handler, then write the
    /// goodbye frame at shutdown (`proto::parked::let_go`). `socket`: cleartext,
    /// or over TLS (its state in the TLS side table) with its closing
    /// session, which seals the goodbye.
    fn parked_closed(
        &self,
        ctx: &WorkerContext,
        fd: RawFd,
        reason: CloseReason,
        socket: ParkedSocket<'_>,
    );

    /// Where a woken connection's state is: its listener's position, if the
    /// connection is known (`tls`: one over TLS).
    fn parked_listener(&self, ctx: &WorkerContext, fd: RawFd, tls: bool) -> Option<usize>;

    /// An upgrade takes parked cleartext connection `fd` to the next
    /// process: its payload, if the handler exports it (`adopt.rs`).
    fn export_parked(&self, ctx: &WorkerContext, fd: RawFd) -> Option<Vec<u8>>;

    /// The previous process handed over connection `fd`, parked, on framed
    /// listener `listener`: resumed from `payload`, its lot deadline; or
    /// `None`, refused (`adopt.rs`).
    fn adopt_parked(
        &self,
        ctx: &WorkerContext,
        fd: RawFd,
        listener: usize,
        payload: &[u8],
    ) -> Option<Option<tokio::time::Instant>>;
}

/// Erases a handler's types.
pub(crate) struct Erased<H>(pub H);

impl<H: FramedHandler> ErasedHandler for Erased<H> {
    fn serve(
        self: std::sync::Arc<Self>,
        io: MessageIo,
        ctx: Rc<WorkerContext>,
        framing: Framing,
        listener: usize,
        start: Start,
    ) -> LocalFuture<Ended<FramedParked>> {
        Box::pin(conn::serve(self, io, ctx, framing, listener, start))
    }

    fn parked_closed(
        &self,
        ctx: &WorkerContext,
        fd: RawFd,
        reason: CloseReason,
        socket: ParkedSocket<'_>,
    ) {
        let (local, table) = side_table::<H::State>(ctx, socket.is_tls());
        if let Some(parked) = table.take(fd) {
            let goodbye = |parked: &Parked<H::State>| goodbye_frame(&ctx.config, parked.variant);
            let on_close = (&self.0, H::on_close_with_id as OnClose<H, H::State>);
            let_go((&local, parked), (fd, reason), socket, goodbye, on_close);
        }
    }

    fn parked_listener(&self, ctx: &WorkerContext, fd: RawFd, tls: bool) -> Option<usize> {
        side_table::<H::State>(ctx, tls).1.variant(fd)
    }

    fn export_parked(&self, ctx: &WorkerContext, fd: RawFd) -> Option<Vec<u8>> {
        adopt::export_parked(&self.0, ctx, fd)
    }

    fn adopt_parked(
        &self,
        ctx: &WorkerContext,
        fd: RawFd,
        listener: usize,
        payload: &[u8],
    ) -> Option<Option<tokio::time::Instant>> {
        adopt::adopt_parked(&self.0, ctx, fd, listener, payload)
    }
}
