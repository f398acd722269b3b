//! The framed protocol's public knobs on [`Builder`] and [`Server`]: framed
//! listeners, in the clear or over TLS (their framing fixed at bind time,
//! as TLS listeners are), the
//! heartbeat and message timeouts, and serving a [`FramedHandler`], alone or beside an
//! HTTP service.
//!
//! Kept apart from `builder.rs` so the HTTP server's face stays as it was;
//! the settings themselves live in `proto/framed` (opaque to the core).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower_service::Service;

use crate::error::Error;
use crate::proto::framed::handler::Erased;
use crate::proto::framed::{FramedHandler, FramedSettings, Framing};
use crate::server::builder::{Builder, Server, ShutdownSummary};
use crate::service::body::Body;

/// Framed TCP listeners: message protocols (a length header or a line per
/// message) served per message by a [`FramedHandler`], with the same
/// limits, events, close reasons and shutdown as HTTP, and idle connections
/// parked at a few bytes each (plus the handler's state).
///
/// ```no_run
/// use bytes::Bytes;
/// use megaconn::{FramedHandler, Framing, Server, Session};
///
/// struct Echo;
///
/// impl FramedHandler for Echo {
///     type State = ();
///     async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
///         Some(frame)
///     }
/// }
///
/// # async fn run() -> Result<(), megaconn::Error> {
/// Server::builder()
///     .listen_framed_on("127.0.0.1:7000".parse().unwrap(), Framing::lines())
///     .heartbeat_timeout(Some(std::time::Duration::from_secs(60)))
///     .listen()?
///     .serve_framed(Echo)
///     .await?;
/// # Ok(()) }
/// ```
impl Builder {
    /// Adds a listen address whose connections speak a framed protocol,
    /// split into messages by `framing`, and are served by the handler given
    /// to [`Server::serve_framed`] (or [`Server::framed`]). Repeatable, with
    /// a framing each. In the clear, whatever [`tls`](Builder::tls) says:
    /// a framed listener over TLS is added with
    /// [`listen_framed_tls_on`](Builder::listen_framed_tls_on). A server with framed listeners must be
    /// given a handler (else their connections are closed at once, as
    /// [`CloseReason::ServerError`](crate::CloseReason::ServerError), and an
    /// error is logged).
    ///
    /// What applies to them: `max_connections`, `max_connections_per_ip`,
    /// `accept_rate`, `park_idle_after`, `write_timeout`, `shutdown_timeout`,
    /// `on_connection` (one "request" per message), and
    /// [`heartbeat_timeout`](Builder::heartbeat_timeout) instead of
    /// `idle_timeout`, [`message_timeout`](Builder::message_timeout) instead
    /// of `read_timeout`, [`write_stall_timeout`](Builder::write_stall_timeout)
    /// for a peer that stops reading.
    pub fn listen_framed_on(mut self, addr: SocketAddr, framing: Framing) -> Builder {
        let position = self.config.addrs.len();
        self.config.cleartext_listeners.push(position);
        self.config.addrs.push(addr);
        FramedSettings::update(&mut self.config, |s| s.listeners.push((position, framing)));
        self
    }

    /// [`listen_framed_on`](Builder::listen_framed_on) over TLS, with the
    /// configuration given to [`tls`](Builder::tls) (without it,
    /// [`listen`](Builder::listen) fails): each connection's TLS handshake
    /// comes first, bounded as an HTTPS one's is (the same admission and
    /// per-IP handshake rate, a place among the worker's
    /// [`max_handshakes_in_flight`](crate::TlsConfig::max_handshakes_in_flight),
    /// the [`handshake_timeout`](crate::TlsConfig::handshake_timeout)), then
    /// `framing` splits the decrypted stream into messages for the same
    /// [`FramedHandler`]. ALPN is not required: a client that offers none
    /// is served (one that offers some must share one with
    /// [`TlsConfig::alpn_protocols`](crate::TlsConfig::alpn_protocols), or
    /// rustls refuses the handshake). An idle connection parks as a cleartext one does, its TLS
    /// session kept beside its state (a WebSocket over TLS parks the same
    /// way); pushes to it are encrypted with that session and written
    /// without waking it. Our closes end with `close_notify`.
    ///
    /// Like [`listen_tls_on`](Builder::listen_tls_on), it names a TLS
    /// listen address: the addresses from
    /// [`listen_on`](Builder::listen_on) then stay cleartext. Repeatable.
    pub fn listen_framed_tls_on(mut self, addr: SocketAddr, framing: Framing) -> Builder {
        let position = self.config.addrs.len();
        self.config.tls_listeners.push(position);
        self.config.addrs.push(addr);
        FramedSettings::update(&mut self.config, |s| {
            s.tls.push(s.listeners.len());
            s.listeners.push((position, framing));
        });
        self
    }

    /// Framed connections: the peer must send something (a frame or part of
    /// one) within this time, else the connection closes with
    /// [`CloseReason::HeartbeatTimeout`](crate::CloseReason::HeartbeatTimeout).
    /// Parked connections keep it too (as a deadline in the parking lot, checked
    /// once a second, so a parked connection may close up to a second late).
    /// Default: none (a framed connection may stay silent until the peer
    /// closes it). Without it a device gone without a FIN (off the
    /// network) is closed only once bytes of ours go unacknowledged for
    /// twice the writes' bound and a second
    /// ([`write_timeout`](Builder::write_timeout) when set, else
    /// [`write_stall_timeout`](Builder::write_stall_timeout): 121 s by
    /// default; the socket's `TCP_USER_TIMEOUT`, as [`CloseReason::Io`](crate::CloseReason::Io)`(TimedOut)`):
    /// after the first push to it, or [`send_heartbeat`](Builder::send_heartbeat);
    /// until then it stays (parked, costing little), and a push to it is
    /// taken by the kernel and counted as sent.
    ///
    /// It also bounds a write the peer takes none of our bytes of (unless
    /// [`write_timeout`](Builder::write_timeout) is set, which bounds each
    /// whole write), as [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout);
    /// without it, [`write_stall_timeout`](Builder::write_stall_timeout)
    /// (60 s by default) does. A slow peer that keeps reading is not cut
    /// off.
    pub fn heartbeat_timeout(mut self, t: Option<Duration>) -> Builder {
        let t = crate::conn::config::zero_is_off(t);
        FramedSettings::update(&mut self.config, |s| s.heartbeat_timeout = t);
        self
    }

    /// Framed connections: how long the peer may take over one frame (or
    /// line), from its first byte to its last, however steadily the bytes
    /// come; past it the connection closes with
    /// [`CloseReason::MessageTimeout`](crate::CloseReason::MessageTimeout).
    /// A connection in the middle of a frame cannot park, and the
    /// [`heartbeat_timeout`](Builder::heartbeat_timeout), restarted by every
    /// byte (and off by default), does not bound a peer that trickles one
    /// (slowloris). Between frames it does not apply. A frame that begins
    /// in the same read as one ends gets a time of its own only once the
    /// peer brought 8 KiB, or 137 B/s over the time passed, since the time
    /// started; else the time runs on, so a peer that never lets the
    /// connection get back between frames must bring 137 B/s (or 8 KiB per
    /// timeout), whatever the timeout.
    /// [`read_timeout`](Builder::read_timeout) is HTTP's and does not apply
    /// to framed connections. `None` or zero: unbounded. Default
    /// [`DEFAULT_MESSAGE_TIMEOUT`](crate::DEFAULT_MESSAGE_TIMEOUT) (60 s).
    pub fn message_timeout(mut self, t: Option<Duration>) -> Builder {
        let t = crate::conn::config::zero_is_off(t);
        FramedSettings::update(&mut self.config, |s| s.message_timeout = t);
        self
    }
}

impl Builder {
    /// Framed connections: send `frame` (framed as the listener frames)
    /// every `every`, between the peer's frames, so the peer can tell the
    /// server is alive. A parked connection is woken by the parking lot's
    /// timer for it: one write, no task kept (the lot's timers have a
    /// one-second granularity). Default: none.
    pub fn send_heartbeat(mut self, every: Option<Duration>, frame: impl Into<Bytes>) -> Builder {
        let every = crate::conn::config::zero_is_off(every);
        let frame = frame.into();
        FramedSettings::update(&mut self.config, |s| {
            s.send_heartbeat = every.map(|every| (every, frame));
        });
        self
    }
}

impl Builder {
    /// Framed connections: on a graceful shutdown, send `frame` (framed as
    /// the listener frames) to each connection as it is closed between
    /// frames, parked ones included, so the peer can tell a shutdown from a
    /// failure and reconnect elsewhere. Best effort: a peer that cannot take
    /// it at once (parked) or within `write_timeout` (awake) is closed
    /// without it; connections forced at `shutdown_timeout` get none.
    /// Default: none.
    pub fn goodbye_frame(mut self, frame: Option<Bytes>) -> Builder {
        FramedSettings::update(&mut self.config, |s| s.goodbye = frame);
        self
    }
}

impl Builder {
    /// Whether connections to `addr`, one of the addresses added, will
    /// speak a framed protocol: as [`Server::is_framed`], known before
    /// anything is bound.
    pub fn is_framed(&self, addr: SocketAddr) -> bool {
        crate::proto::framed::accepted_on(&self.config, addr).is_some()
    }
}

impl Server {
    /// Whether connections to `addr`, one of
    /// [`local_addrs`](Server::local_addrs), speak a framed protocol (for
    /// printing `tcp://` beside `http://`).
    pub fn is_framed(&self, addr: SocketAddr) -> bool {
        crate::proto::framed::accepted_on(&self.config, addr).is_some()
    }

    /// Sets the handler of the framed listeners, for a server that also
    /// serves HTTP on its other listeners: `server.framed(handler).serve(app)`,
    /// or in two steps `server.framed(handler).start(app)?.run()` (see
    /// [`Server::start`]).
    pub fn framed<H: FramedHandler>(mut self, handler: H) -> Server {
        let config = Arc::make_mut(&mut self.config);
        FramedSettings::update(config, |s| s.handler = Some(Arc::new(Erased(handler))));
        self
    }

    /// Serves `handler` on the framed listeners until
    /// [`ServerHandle::shutdown`](crate::ServerHandle::shutdown) (or this
    /// future is dropped), then shuts down gracefully: stop accepting, close
    /// connections between frames (parked ones at once), let those mid-frame
    /// or in their handler finish for up to `shutdown_timeout`. Any HTTP
    /// listeners answer `404`.
    pub async fn serve_framed<H: FramedHandler>(
        self,
        handler: H,
    ) -> Result<ShutdownSummary, Error> {
        self.serve_framed_with_shutdown(handler, std::future::pending())
            .await
    }

    /// [`serve_framed`](Server::serve_framed) until `signal` completes.
    pub async fn serve_framed_with_shutdown<H: FramedHandler>(
        self,
        handler: H,
        signal: impl Future<Output = ()>,
    ) -> Result<ShutdownSummary, Error> {
        Ok(self.start_framed(handler)?.run_with_shutdown(signal).await)
    }

    /// [`serve_framed`](Server::serve_framed) in two steps, as
    /// [`Server::start`] is to [`Server::serve`]: this one makes what can
    /// fail, [`Started::run`](crate::Started::run) accepts.
    pub fn start_framed<H: FramedHandler>(self, handler: H) -> Result<crate::Started, Error> {
        if FramedSettings::of(&self.config).is_none_or(|s| s.listeners.is_empty()) {
            return Err(Error::Config(
                "serve_framed and start_framed need a framed listener: call Builder::listen_framed_on".into(),
            ));
        }
        self.framed(handler).start(NotFound)
    }
}

/// The HTTP service of a framed-only server: its HTTP listeners, if any,
/// answer `404`.
#[derive(Debug, Clone, Copy)]
struct NotFound;

impl Service<Request<Body>> for NotFound {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::NOT_FOUND;
        std::future::ready(Ok(response))
    }
}
