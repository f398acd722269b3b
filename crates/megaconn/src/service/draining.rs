//! [`Draining`]: how a handler learns that graceful shutdown began, so that
//! a stream it serves (server-sent events, a long poll, a tunnel) can end
//! itself cleanly before `shutdown_timeout` forces it, as hyper-util's
//! `graceful::Watcher` or a signal of the app's own does under
//! `axum::serve`.
//!
//! It is found through the worker the handler runs on, not carried by the
//! request: an extension on every request would cost each one an
//! allocation (`http::Extensions` allocates its map at the first insert,
//! and plain requests carry none) and an `Arc` clone (an atomic), for the
//! few handlers that ever ask. The clone is paid by [`Draining::current`]
//! (or the axum extractor) instead.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use crate::conn::shutdown::SharedShutdown;

/// Tells a handler that the server's graceful shutdown began.
///
/// Shutdown waits for in-flight responses up to `shutdown_timeout`, then
/// closes what is left by force (counted in
/// [`ShutdownSummary::forced`](crate::ShutdownSummary::forced)). A response
/// that never ends by itself (server-sent events, a long poll) or an
/// [`OnUpgrade`](crate::OnUpgrade) tunnel would be forced: with a
/// `Draining` it can end itself when shutdown begins (a last event, an
/// empty long-poll answer, a goodbye on the tunnel), and the drain finishes
/// early, nothing forced.
///
/// Take it in the handler, on the worker that serves the request, with
/// [`Draining::current`] or, with the `axum` feature, as an extractor; it
/// is `Send + Sync + Clone`, so it may then go anywhere (into a response
/// body's stream, a spawned task). It is the same on HTTP/1.1 and HTTP/2.
///
/// Server-sent events with axum: a tick a second until shutdown begins,
/// then a last event, and the response ends (well before
/// `shutdown_timeout`). Without axum, `Draining::current()` in the handler.
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// use axum::response::sse::{Event, Sse};
/// use futures_util::stream::{self, Stream, StreamExt};
/// use megaconn::Draining;
///
/// async fn events(draining: Draining) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
///     let ticks = stream::unfold(0u64, |n| async move {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Some((Event::default().data(n.to_string()), n + 1))
///     })
///     .take_until(async move { draining.started().await })
///     .chain(stream::once(async { Event::default().event("bye").data("") }))
///     .map(Ok);
///     Sse::new(ticks)
/// }
///
/// let app: axum::Router = axum::Router::new().route("/events", axum::routing::get(events));
/// ```
#[derive(Debug, Clone)]
pub struct Draining {
    /// The worker's signal; `None`: never starts ([`Draining::never`]).
    shutdown: Option<Arc<SharedShutdown>>,
}

impl Draining {
    /// The signal of the megaconn worker this runs on: call it from a
    /// handler (its `call` or its future), which megaconn runs on the
    /// worker serving the request. `None` elsewhere: off megaconn's
    /// workers (under `axum::serve`, in `spawn_blocking`, on a runtime of
    /// the app's own) and under
    /// [`Builder::serve_connection`](crate::Builder::serve_connection),
    /// which has no server to shut down.
    pub fn current() -> Option<Draining> {
        crate::conn::pool::this_worker().map(|ctx| Draining {
            shutdown: Some(ctx.shutdown.upgraded().clone()),
        })
    }

    /// A signal that never starts, for code that also runs where
    /// [`Draining::current`] finds no server (tests, `axum::serve`).
    pub fn never() -> Draining {
        Draining { shutdown: None }
    }

    /// True once graceful shutdown began.
    pub fn is_started(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| s.is_started())
    }

    /// Resolves once graceful shutdown began (at once if it already has);
    /// never for [`Draining::never`]. Cancel-safe, and cheap to drop.
    pub async fn started(&self) {
        let Some(shutdown) = &self.shutdown else {
            return std::future::pending().await;
        };
        let mut watch = Watch {
            shutdown,
            slot: None,
        };
        poll_fn(|cx| {
            if watch.shutdown.poll_started(&mut watch.slot, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// A waiting [`Draining::started`]'s place in the signal's waker list,
/// given back when it ends or is dropped.
struct Watch<'a> {
    shutdown: &'a SharedShutdown,
    slot: Option<u32>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.shutdown.unwatch(&mut self.slot);
    }
}

/// `async fn handler(draining: megaconn::Draining)`: the worker's signal
/// ([`Draining::current`]), or one that never starts where there is none
/// (the same handler under `axum::serve`).
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Draining {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Draining::current().unwrap_or_else(Draining::never))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::shutdown::LocalShutdown;

    #[tokio::test]
    async fn started_resolves_at_the_start_and_a_dropped_wait_gives_its_slot_back() {
        let local = LocalShutdown::default();
        let draining = Draining {
            shutdown: Some(local.upgraded().clone()),
        };
        assert!(!draining.is_started());
        // A wait dropped before the start leaves nothing behind.
        let dropped = tokio::time::timeout(std::time::Duration::ZERO, draining.started()).await;
        assert!(dropped.is_err());
        let clone = draining.clone();
        let waiter = tokio::spawn(async move { clone.started().await });
        tokio::task::yield_now().await;
        local.begin(false);
        waiter.await.unwrap();
        assert!(draining.is_started());
        draining.started().await;
        assert!(!Draining::never().is_started());
    }
}
