//! The request path's tracing hook: what `service::call` starts and
//! `RequestRecord` ends, whether or not the `otel` cargo feature is on.
//!
//! With the feature off, [`Hook`] and [`SpanSlot`] are zero-sized and every
//! method here is an empty inline function: the request path carries no
//! tracing code at all. With it on, a server without [`Tracing`] pays one
//! `Option` test per request ([`SpanSlot::start`]); the rest lives in
//! `observe/otel/`.
//!
//! [`Tracing`]: crate::otel::Tracing

use crate::observe::close::CloseReason;

/// Why a request ended badly, beyond its status code (4xx and 5xx are read
/// off the status when the span ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// `read_timeout` or `write_timeout` ran out.
    Timeout,
    /// The handler or its response body panicked.
    Panic,
    /// The client closed, reset or broke the connection (or the h2 stream)
    /// before the response was complete.
    ClientGone,
    /// The server's forced shutdown (at `shutdown_timeout`) cut the
    /// exchange off before the response was complete.
    Shutdown,
}

impl ErrorClass {
    /// The class of an exchange that ended by closing for `reason`, if it is
    /// one of ours (a server error is read off the 5xx status).
    pub(crate) fn of_close(reason: &CloseReason) -> Option<ErrorClass> {
        match reason {
            CloseReason::ReadTimeout | CloseReason::WriteTimeout => Some(ErrorClass::Timeout),
            CloseReason::Panic => Some(ErrorClass::Panic),
            CloseReason::ClientClosed | CloseReason::Io(_) => Some(ErrorClass::ClientGone),
            _ => None,
        }
    }
}

/// What a worker knows about tracing: the server's [`Tracing`], if any.
///
/// [`Tracing`]: crate::otel::Tracing
#[cfg(feature = "otel")]
pub(crate) type Hook = Option<crate::observe::otel::Tracing>;

/// What a worker knows about tracing: nothing (the `otel` feature is off).
#[cfg(not(feature = "otel"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct Hook;

/// The export counters for [`ServerStats`](crate::ServerStats): `None`
/// when tracing is off.
#[inline]
pub(crate) fn export_stats(hook: &Hook) -> Option<crate::observe::stats::OtelStats> {
    #[cfg(feature = "otel")]
    return hook.as_ref().map(crate::observe::otel::Tracing::stats);
    #[cfg(not(feature = "otel"))]
    {
        let _ = hook;
        None
    }
}

/// A connection's addresses as a span names them: the peer's
/// (`client.address`) and the local one (`server.port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) struct Addrs {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The address the connection arrived on.
    pub local: std::net::SocketAddr,
}

/// One request's span, if it was sampled. Travels in the request's
/// `RequestRecord` and ends when the record drops.
#[derive(Debug, Default)]
pub(crate) struct SpanSlot {
    #[cfg(feature = "otel")]
    span: Option<Box<crate::observe::otel::span::RequestSpan>>,
}

impl SpanSlot {
    /// Decides whether `request` is traced and, if so, starts its span and
    /// hands its context to the handler (in the request's extensions).
    /// `secure`: the connection is TLS (for `url.scheme` when the request
    /// target has none). `addrs`: the connection's peer and local
    /// addresses (`client.address`, `server.port`), asked only of a
    /// request that is traced (they may cost a system call or two).
    #[inline(always)]
    pub(crate) fn start<B>(
        hook: &Hook,
        request: &mut http::Request<B>,
        secure: bool,
        addrs: impl FnOnce() -> Option<Addrs>,
    ) -> SpanSlot {
        #[cfg(feature = "otel")]
        return match hook {
            None => SpanSlot { span: None },
            Some(tracing) => SpanSlot {
                span: tracing.start(request, secure, addrs),
            },
        };
        #[cfg(not(feature = "otel"))]
        {
            let _ = (hook, request, secure, addrs);
            SpanSlot {}
        }
    }

    /// Notes why the request ended badly (the first class noted wins).
    #[inline]
    pub(crate) fn error(&mut self, class: ErrorClass) {
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.span {
            span.error(class);
        }
        #[cfg(not(feature = "otel"))]
        let _ = class;
    }

    /// Reads the route the service matched (`http.route`) off the
    /// response's extensions.
    #[inline]
    pub(crate) fn route(&mut self, extensions: &http::Extensions) {
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.span {
            span.route(extensions);
        }
        #[cfg(not(feature = "otel"))]
        let _ = extensions;
    }

    /// Ends the span with the status sent (`0`: none) and queues it for
    /// export.
    #[inline]
    pub(crate) fn end(&mut self, status: u16) {
        #[cfg(feature = "otel")]
        if let Some(span) = self.span.take() {
            end_span(span, status);
        }
        #[cfg(not(feature = "otel"))]
        let _ = status;
    }
}

/// [`SpanSlot::end`] of a traced request, out of line: inlined, it gave
/// every request's record a large frame to drop in, traced or not
/// (bench/CPU-PER-REQUEST.md, session 46).
#[cfg(feature = "otel")]
#[cold]
#[inline(never)]
fn end_span(span: Box<crate::observe::otel::span::RequestSpan>, status: u16) {
    span.end(status);
}
