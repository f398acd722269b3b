//! Framed TCP protocols (issue 11): length-prefixed or line-delimited
//! messages over plain TCP or TLS, served per message by a user's
//! [`FramedHandler`], on the same connection core as HTTP.
//!
//! This module owns the framed protocol's settings ([`FramedSettings`],
//! stored opaquely in the server's configuration). What is not about framing
//! (the hub, sessions, the side table of parked states) is the message
//! layer's (`crate::message`). The parking lot keeps only the protocol tag
//! ([`FRAMED`](crate::proto::FRAMED)) and the heartbeat deadline; it tells the
//! dispatcher when it closes a parked socket itself, which lands in
//! [`parked_closed`].
//!
//! Over TLS (a listener added with `Builder::listen_framed_tls_on`) the
//! dispatcher runs the handshake as for HTTPS (the same admission, places
//! among the handshakes in flight, handshake timeout), then the framing
//! reads the decrypted stream. Such a connection parks as a WebSocket over
//! TLS does: tag [`FRAMED_TLS`](crate::proto::FRAMED_TLS), its state in a
//! side table of its own whose pushes are sealed with the connection's
//! parked session ([`crate::proto::sealed`]), the session in the worker's
//! table of parked TLS sessions beside it.
//!
//! - `codec.rs`   [`Framing`]: the wire format, tokio-util's codecs
//! - `handler.rs` [`FramedHandler`]: the public message API
//! - `conn.rs`    one awake connection's loop
//! - `adopt.rs`   a parked connection moving to the next process (upgrade)

pub(crate) mod adopt;
pub(crate) mod codec;
pub(crate) mod conn;
pub(crate) mod handler;
#[cfg(test)]
mod size_guard;

use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::io::WriteLimit;
use crate::conn::tls_io::{ParkedTls, TlsIo};
use crate::conn::woken::WokenSocket;
use crate::conn::Wake;
use crate::message;
use crate::message::io::{MessageIo, MessageParked};
use crate::message::table::SideTable;
use crate::message::wire::Wire;
use crate::message::worker::Local;
use crate::message::worker::MessageProtocol;
use crate::message::MessageSettings;
use crate::observe::close::{CloseReason, FramingError};
use crate::proto::parked::{close_parked_tls, ParkedSocket};
use crate::proto::Ended;

pub use adopt::MAX_EXPORTED_STATE_BYTES;
pub use codec::{Framing, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_LINE_BYTES};
pub use handler::FramedHandler;

use conn::Start;
use handler::{ErasedHandler, LocalFuture};

/// The framed protocol's settings, kept in the server's configuration as an
/// opaque value (the core does not know protocols).
#[derive(Clone)]
pub(crate) struct FramedSettings {
    /// Framed listeners: position in the configuration's addresses, and
    /// their framing.
    pub listeners: Vec<(usize, Framing)>,
    /// The framed listeners served over TLS (positions in `listeners`).
    pub tls: Vec<usize>,
    /// The peer must send something this often (`None`: never required).
    pub heartbeat_timeout: Option<Duration>,
    /// The time a frame may take, first byte to last (`None`: unbounded).
    pub message_timeout: Option<Duration>,
    /// Send this frame every so often (a server heartbeat), between frames.
    pub send_heartbeat: Option<(Duration, bytes::Bytes)>,
    /// Sent to each connection closed between frames by a graceful shutdown.
    pub goodbye: Option<Bytes>,
    /// The handler; set when the server starts serving.
    pub handler: Option<Arc<dyn ErasedHandler>>,
}

impl std::fmt::Debug for FramedSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedSettings")
            .field("listeners", &self.listeners)
            .field("tls", &self.tls)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("message_timeout", &self.message_timeout)
            .field("send_heartbeat", &self.send_heartbeat)
            .field("goodbye", &self.goodbye)
            .field("handler", &self.handler.is_some())
            .finish()
    }
}

impl Default for FramedSettings {
    fn default() -> Self {
        FramedSettings {
            listeners: Vec::new(),
            tls: Vec::new(),
            heartbeat_timeout: None,
            message_timeout: Some(message::DEFAULT_MESSAGE_TIMEOUT),
            send_heartbeat: None,
            goodbye: None,
            handler: None,
        }
    }
}

impl FramedSettings {
    /// The framed settings in `config`, if any.
    pub(crate) fn of(config: &Config) -> Option<&FramedSettings> {
        config.framed.as_deref()?.downcast_ref()
    }

    /// Changes the framed settings in `config` (creating them).
    pub(crate) fn update(config: &mut Config, change: impl FnOnce(&mut FramedSettings)) {
        let mut settings = FramedSettings::of(config).cloned().unwrap_or_default();
        change(&mut settings);
        config.framed = Some(Arc::new(settings));
    }

    /// Which of the framed listeners a connection to `local` arrived on.
    fn listener_for(&self, config: &Config, local: SocketAddr) -> Option<usize> {
        let addr = config.listener_at(local)?;
        self.listeners.iter().position(|(i, _)| *i == addr)
    }
}

/// The framed settings of `config` (for the connection loop).
pub(crate) fn settings(config: &Config) -> Option<&FramedSettings> {
    FramedSettings::of(config)
}

/// How a framed write that has to wait is bounded: by `write_timeout`, else
/// the heartbeat timeout, else `write_stall_timeout`, as WebSocket's are
/// ([`WriteLimit::resolve`]).
pub(crate) fn write_limit(config: &Config) -> WriteLimit {
    let heartbeat = settings(config).and_then(|s| s.heartbeat_timeout);
    WriteLimit::resolve(
        config.write_timeout,
        heartbeat.map(|t| (t, "Builder::heartbeat_timeout")),
        MessageSettings::write_stall_timeout(config),
    )
}

/// This worker's message state and the framed side table for states of
/// type `S`, whose variants are the framed listeners (one wire each); `tls`:
/// the one of connections over TLS (tag `FRAMED_TLS`), whose pushes to a
/// parked connection are sealed with its parked session.
pub(crate) fn side_table<S: 'static>(
    ctx: &WorkerContext,
    tls: bool,
) -> (Rc<Local>, Rc<SideTable<S>>) {
    let local = message::worker::local(ctx);
    let wires = || {
        let listeners = settings(&ctx.config).map_or(&[][..], |s| &s.listeners[..]);
        listeners
            .iter()
            .map(|&(_, framing)| Rc::new(framing) as Rc<dyn Wire>)
            .collect()
    };
    let table = if tls {
        let sessions = ctx.tls_parked.clone();
        local.table_sending::<S>(
            (crate::proto::FRAMED_TLS, Some(MessageProtocol::Framed)),
            wires,
            || Some(crate::proto::sealed(sessions)),
        )
    } else {
        local.table::<S>((crate::proto::FRAMED, Some(MessageProtocol::Framed)), wires)
    };
    (local, table)
}

/// The largest message the hub may be given for a server with `config`
/// (`Hub::send` refuses a larger one at the call, `HubError::TooLarge`):
/// when every listener is framed, the largest frame any of them may send
/// ([`Framing::max_reply_bytes`]); else none (`usize::MAX`), as an HTTP
/// listener may serve WebSocket and SSE routes, whose bounds the server's
/// configuration does not know.
pub(crate) fn largest_outbound(config: &Config) -> usize {
    let Some(settings) = FramedSettings::of(config) else {
        return usize::MAX;
    };
    if settings.listeners.len() < config.addrs.len() {
        return usize::MAX;
    }
    let largest = settings.listeners.iter().map(|(_, f)| f.max_reply_bytes());
    largest.max().unwrap_or(usize::MAX)
}

/// The goodbye frame, if the server has one, framed as `listener` frames:
/// what a parked connection on it gets as the parking lot closes it for
/// shutdown (`proto::parked::let_go` writes it).
pub(crate) fn goodbye_frame(config: &Config, listener: usize) -> Option<BytesMut> {
    let settings = FramedSettings::of(config)?;
    let (Some(goodbye), Some(&(_, framing))) =
        (&settings.goodbye, settings.listeners.get(listener))
    else {
        return None;
    };
    let mut out = BytesMut::new();
    framing.encode(goodbye, &mut out).ok()?;
    Some(out)
}

/// Framed connections frame pushed messages as their listener frames.
impl Wire for Framing {
    fn encode(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        self.codec().encode(payload.clone(), out)
    }
}

/// Which framed listener an accepted connection came in on, if any: then it
/// is served by [`serve_accepted`] (or, on a TLS one, [`serve_accepted_tls`]
/// once its handshake is done). Free for servers with no framed listener.
pub(crate) fn accepted_on(config: &Config, local: SocketAddr) -> Option<usize> {
    FramedSettings::of(config)?.listener_for(config, local)
}

/// Whether framed listener `listener` ([`accepted_on`]'s) is served over TLS
/// (added with `Builder::listen_framed_tls_on`).
pub(crate) fn is_tls(config: &Config, listener: usize) -> bool {
    FramedSettings::of(config).is_some_and(|s| s.tls.contains(&listener))
}

/// What a framed connection parks: the bare socket for the lot and, over
/// TLS, its session for the worker's table.
pub(crate) type FramedParked = MessageParked;

/// Serves a connection accepted on framed listener `listener`.
pub(crate) fn serve_accepted(
    stream: TcpStream,
    ctx: Rc<WorkerContext>,
    listener: usize,
) -> LocalFuture<Ended<FramedParked>> {
    serve_new(MessageIo::Tcp(stream), ctx, listener)
}

/// Serves a connection accepted on TLS framed listener `listener`, its
/// handshake done: the framing reads the decrypted stream.
pub(crate) fn serve_accepted_tls(
    tls: TlsIo<TcpStream>,
    ctx: Rc<WorkerContext>,
    listener: usize,
) -> LocalFuture<Ended<FramedParked>> {
    // Bare once it parks, as a woken one is (its socket stays registered
    // with tokio until then, `WokenSocket::registered_stream`).
    let io = MessageIo::Tls(tls.map_sock(WokenSocket::registered_stream));
    serve_new(io, ctx, listener)
}

/// Serves a new connection on framed listener `listener`.
fn serve_new(
    io: MessageIo,
    ctx: Rc<WorkerContext>,
    listener: usize,
) -> LocalFuture<Ended<FramedParked>> {
    let Some(settings) = FramedSettings::of(&ctx.config) else {
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    let (Some(handler), Some(&(_, framing))) =
        (settings.handler.clone(), settings.listeners.get(listener))
    else {
        tracing::error!("a framed listener without a handler; closing the connection");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    handler.serve(io, ctx, framing, listener, Start::Accepted)
}

/// Serves a framed connection woken from the parking lot.
pub(crate) fn serve_woken(
    socket: OwnedFd,
    hot: bool,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<FramedParked>> {
    let io = MessageIo::Plain(WokenSocket::new(socket, hot, wake));
    serve_parked(io, wake, ctx)
}

/// Serves a framed connection over TLS woken from the parking lot, its
/// session resumed (the dispatcher took it from the worker's table).
pub(crate) fn serve_woken_tls(
    io: TlsIo<WokenSocket>,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<FramedParked>> {
    serve_parked(MessageIo::Tls(io), wake, ctx)
}

/// Serves woken framed connection `io`, its state in its side table.
fn serve_parked(
    io: MessageIo,
    wake: Wake,
    ctx: Rc<WorkerContext>,
) -> LocalFuture<Ended<FramedParked>> {
    let (fd, tls) = (io.raw_fd(), io.is_tls());
    let found = FramedSettings::of(&ctx.config).and_then(|settings| {
        let handler = settings.handler.clone()?;
        let listener = handler.parked_listener(&ctx, fd, tls)?;
        let &(_, framing) = settings.listeners.get(listener)?;
        Some((handler, listener, framing))
    });
    let Some((handler, listener, framing)) = found else {
        tracing::error!("a woken framed connection is unknown; closing it");
        return Box::pin(std::future::ready(Ended::Close(CloseReason::ServerError)));
    };
    handler.serve(io, ctx, framing, listener, Start::Woken(wake))
}

/// The parking lot closed parked framed connection `fd` itself (its
/// deadline passed without a wake-up, or shutdown): its state goes, and
/// the handler hears why.
pub(crate) fn parked_closed(ctx: &WorkerContext, fd: RawFd, reason: CloseReason) {
    if let Some(handler) = FramedSettings::of(&ctx.config).and_then(|s| s.handler.as_ref()) {
        handler.parked_closed(ctx, fd, reason, ParkedSocket::Plain);
    }
}

/// [`parked_closed`] for a framed connection over TLS, with its parked
/// `session`: the goodbye frame (at shutdown) is sealed with it, and our
/// own closes (shutdown, the idle timeout) end with `close_notify`, as a
/// WebSocket's over TLS and HTTPS/1.1's do: after whole records only (what
/// a push left owed goes first, if the socket takes it now; if it does
/// not, or the goodbye does not go whole, nothing more is written:
/// `ClosingTls`).
pub(crate) fn parked_closed_tls(
    ctx: &WorkerContext,
    fd: RawFd,
    reason: CloseReason,
    session: Option<ParkedTls>,
) {
    close_parked_tls(fd, reason, session, |socket| {
        if let Some(handler) = FramedSettings::of(&ctx.config).and_then(|s| s.handler.as_ref()) {
            handler.parked_closed(ctx, fd, reason, socket);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::hub::{Inbox, Kick, RESET};
    use crate::Server;

    /// A reset (`Hub::reset`) does not wait for the queue before it, as a
    /// close does, and takes the place of a close still waiting for its
    /// queue; a close after a reset does not undo it.
    #[test]
    fn a_reset_does_not_wait_for_the_queue() {
        let kick = |code| Kick {
            code,
            reason: Bytes::new(),
        };
        let inbox = Inbox::new(0);
        assert!(inbox.offer(
            crate::message::outbound::PushFrame::plain(Bytes::from_static(b"unread")),
            8
        ));
        inbox.kick(kick(1008));
        assert_eq!(inbox.kicked(), None, "a close waits for the push");
        inbox.kick(kick(RESET));
        assert!(inbox.kicked().is_some_and(|k| k.is_reset()));
        inbox.kick(kick(1008));
        assert!(inbox.kicked().is_some_and(|k| k.is_reset()));
        assert!(!kick(1008).is_reset());
    }

    /// A framed connection's writes are bounded out of the box: 60 s
    /// without progress, or the heartbeat timeout when there is one;
    /// `None` or zero turns the stall bound off. (WebSocket's, with its
    /// route's heartbeat, resolve by the same rule: `conn::io::WriteLimit`.)
    #[test]
    fn writes_stall_for_at_most_a_minute_by_default() {
        assert_eq!(
            message::DEFAULT_WRITE_STALL_TIMEOUT,
            Duration::from_secs(60)
        );
        let stall = |b: crate::Builder| {
            let limit = write_limit(&b.config);
            (limit.timeout, limit.setting)
        };
        let framed =
            || Server::builder().listen_framed_on(([127, 0, 0, 1], 0).into(), Framing::lines());
        assert_eq!(
            stall(framed()),
            (
                Some(Duration::from_secs(60)),
                "Builder::write_stall_timeout"
            )
        );
        let heartbeat = framed().heartbeat_timeout(Some(Duration::from_secs(90)));
        assert_eq!(
            stall(heartbeat),
            (Some(Duration::from_secs(90)), "Builder::heartbeat_timeout")
        );
        for off in [None, Some(Duration::ZERO)] {
            assert_eq!(stall(framed().write_stall_timeout(off)).0, None, "{off:?}");
        }
        let set = framed().write_stall_timeout(Some(Duration::from_secs(5)));
        assert_eq!(stall(set).0, Some(Duration::from_secs(5)));
    }
}
