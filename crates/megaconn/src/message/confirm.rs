//! A push the caller can await ([`Hub::send_confirmed`](crate::Hub::send_confirmed)):
//! the [`Delivery`] the caller holds, the [`Waiter`] that travels with the
//! push through its worker (the hub's queue, the connection's outbound
//! queue or its parked socket, the rest of a frame owed), and why it did
//! not arrive ([`Undelivered`]).
//!
//! The waiter is resolved where the push is counted: `Ok` where it counts
//! in `megaconn_message_pushes_total` (its socket took it whole; over TLS,
//! once the write flushed: a close before the flush counts the frames the
//! session took in `pushes`, but their waiters hear they did not go), an
//! [`Undelivered`] where it counts in `megaconn_message_queue_drops_total`
//! or `megaconn_limit_hits_total{limit="push_unframable"}`. Every path that
//! lets go of a push lets go of its waiter with it, and a waiter dropped
//! unresolved resolves itself as [`Undelivered::Closed`] (or
//! [`Undelivered::Shutdown`] when the worker is shutting down): the only
//! outcome a drop can mean is "not delivered", so no path can lose a
//! caller's answer, and none can turn a drop into a false `Ok`.
//!
//! A plain [`Hub::send`](crate::Hub::send) carries none: its frames take
//! no allocation for this, and its queue entries and a parked
//! connection's slot are as they were (an awake connection's queued frame
//! is 8 B larger: the room for a waiter, `None`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::message::hub::{ConnectionId, HubError};

/// Why a [`Hub::send_confirmed`](crate::Hub::send_confirmed) push did not
/// reach its connection's socket whole. Each is also counted where a plain
/// send's drop is: [`Refused`](Undelivered::Refused) nowhere but
/// `limit_hits{limit="hub_queue"}` for a full hub queue and
/// `limit_hits{limit="push_unframable"}` for [`HubError::TooLarge`],
/// [`Unframable`](Undelivered::Unframable) in
/// `megaconn_limit_hits_total{limit="push_unframable"}`, the others in
/// `megaconn_message_queue_drops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Undelivered {
    /// The hub did not take it: the connection was known closed
    /// ([`HubError::Closed`]), the id is another server's
    /// ([`HubError::OtherServer`]), the server is not serving or has
    /// stopped, the worker's hub queue was full, or no listener of the
    /// server may carry a message that large ([`HubError::TooLarge`]):
    /// [`HubError`], as [`Hub::send`](crate::Hub::send) returns.
    #[error("the hub did not take the message: {0}")]
    Refused(HubError),
    /// The connection closed before its socket took the message whole:
    /// its peer left or its socket broke, an awake write's timeout
    /// ([`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout)),
    /// [`Hub::close`](crate::Hub::close), its close under way when the
    /// worker got to it, or it had closed by then (the id names no one).
    #[error("the connection closed before its socket took the message whole")]
    Closed,
    /// The connection is a slow consumer, closed as
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer):
    /// its outbound queue
    /// ([`Builder::outbound_queue`](crate::Builder::outbound_queue))
    /// overflowed while a write waited (this push dropped, or the one under
    /// way whose rest its close could not finish), or its parked socket
    /// could not take this push and its peer did not take it within the
    /// write bound once woken. (An awake write that passes its bound
    /// closes as `WriteTimeout`: [`Undelivered::Closed`].)
    #[error("the connection is a slow consumer (its outbound queue overflowed, or it did not take a push its parked socket could not within its write bound): closed as slow_consumer")]
    SlowConsumer,
    /// The connection's framing cannot carry the message (over a framed
    /// listener's `max_frame_bytes`, a line ending or bytes not UTF-8 on
    /// a lines listener): counted in
    /// `megaconn_limit_hits_total{limit="push_unframable"}`. (Also, a bug
    /// of the server's, logged as an error: a connection whose wire
    /// format its worker does not have; counted in
    /// `megaconn_message_queue_drops_total` then, as its framing is not
    /// at fault.)
    #[error("the connection's framing cannot carry the message (push_unframable)")]
    Unframable,
    /// The server shut down before the message went: its worker stopped
    /// with it queued, or the connection was closed (or cut off at
    /// `shutdown_timeout`) by the shutdown before its socket took it whole.
    #[error("the server shut down before the message went")]
    Shutdown,
}

/// What a [`Waiter`] and its [`Delivery`] share: the outcome once known,
/// and who waits for it.
#[derive(Debug)]
struct Slot {
    /// The connection the push is for (kept here, not beside the payload
    /// in the hub's queue entry, which stays 56 bytes).
    to: ConnectionId,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    outcome: Option<Result<(), Undelivered>>,
    /// Set once the outcome was taken by the [`Delivery`].
    taken: bool,
    waker: Option<Waker>,
}

/// The worker's end of a confirmed push: resolved once, where the push
/// counts; dropped unresolved, it resolves as not delivered
/// ([`Undelivered::Closed`], or [`Undelivered::Shutdown`] while the
/// worker shuts down). One pointer wide, so `Option<Waiter>` is too.
#[derive(Debug)]
pub(crate) struct Waiter(Arc<Slot>);

/// The caller's end of [`Hub::send_confirmed`](crate::Hub::send_confirmed):
/// a future that resolves once the message's bytes were handed to the
/// kernel whole (`Ok`), or it was dropped, with why ([`Undelivered`]).
/// `Send` and `'static`: await it anywhere, or drop it (the push still
/// goes; no one hears of it).
///
/// `Ok` says the connection's socket took the frame whole: it is in the
/// kernel (over TLS, its session sealed it and the write flushed). That is
/// what `megaconn_message_pushes_total` counts, but for one case: over
/// TLS, a write ended by a close before its flush counts the frames its
/// session took in `pushes`, while their waiters hear they did not go (the
/// session's buffer is lost with the close). Whether the peer read it only
/// the peer can tell.
#[derive(Debug)]
#[must_use = "a Delivery does nothing unless awaited (the push goes either way)"]
pub struct Delivery(Inner);

#[derive(Debug)]
enum Inner {
    /// Refused at the call.
    Now(Option<Result<(), Undelivered>>),
    Waiting(Arc<Slot>),
}

impl Delivery {
    /// A push the hub refused at the call.
    pub(crate) fn refused(error: HubError) -> Delivery {
        Delivery(Inner::Now(Some(Err(Undelivered::Refused(error)))))
    }

    /// A push to `to` about to be offered: its waiter and the caller's end.
    pub(crate) fn new(to: ConnectionId) -> (Waiter, Delivery) {
        let slot = Arc::new(Slot {
            to,
            state: Mutex::default(),
        });
        (Waiter(slot.clone()), Delivery(Inner::Waiting(slot)))
    }
}

impl Future for Delivery {
    type Output = Result<(), Undelivered>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.0 {
            Inner::Now(outcome) => {
                Poll::Ready(outcome.take().expect("a Delivery polled after it resolved"))
            }
            Inner::Waiting(slot) => {
                let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(outcome) = state.outcome {
                    assert!(!state.taken, "a Delivery polled after it resolved");
                    state.taken = true;
                    return Poll::Ready(outcome);
                }
                match &state.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => state.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Waiter {
    /// The connection the push is for.
    pub(crate) fn to(&self) -> ConnectionId {
        self.0.to
    }

    /// Settles the push (the first outcome holds) and wakes its caller.
    /// By reference, so a waiter kept in a struct others read (`Unsent`)
    /// is resolved where the push is counted; its drop then does nothing.
    pub(crate) fn resolve(&self, outcome: Result<(), Undelivered>) {
        let waker = {
            let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves `waiter`, if there is one, with `outcome`.
pub(crate) fn resolve(waiter: Option<&Waiter>, outcome: Result<(), Undelivered>) {
    if let Some(waiter) = waiter {
        waiter.resolve(outcome);
    }
}

/// A waiter let go of unresolved: the push it waits for was let go of
/// with it (a batch dropped at a close, a connection's task dropped at the
/// shutdown deadline), so it did not go.
impl Drop for Waiter {
    fn drop(&mut self) {
        // Most were resolved where they counted: why one was dropped (a
        // thread-local and the shutdown's state) is asked only if not.
        let state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        let resolved = state.outcome.is_some();
        drop(state);
        if !resolved {
            self.resolve(Err(dropped_reason()));
        }
    }
}

/// A [`Delivery`] is awaited anywhere: `Send` and `'static`, as its doc
/// says (a compile error here, not in a caller's spawned task, if a field
/// ever makes it not so).
const _: () = {
    const fn send_and_static<T: Send + 'static>() {}
    send_and_static::<Delivery>();
};

/// Compared by identity (a [`Waiter`] sits in structs compared in tests).
impl PartialEq for Waiter {
    fn eq(&self, other: &Waiter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Waiter {}

/// Why a push let go of without a word did not go: the worker's shutdown
/// (begun, or its forced end cutting connections off), else its
/// connection's close.
fn dropped_reason() -> Undelivered {
    let shutting_down = crate::observe::metrics::is_dropping_forced()
        || crate::conn::pool::this_worker().is_some_and(|ctx| ctx.shutdown.is_started());
    if shutting_down {
        Undelivered::Shutdown
    } else {
        Undelivered::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(delivery: &mut Delivery) -> Poll<Result<(), Undelivered>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(delivery).poll(&mut cx)
    }

    /// The first outcome holds; a waiter dropped unresolved is a push not
    /// delivered; the waiter is one pointer wide (and so its option).
    #[test]
    fn a_waiter_resolves_once_and_a_drop_is_not_delivered() {
        let id = ConnectionId::new(0, 5, 1);
        let (waiter, mut delivery) = Delivery::new(id);
        assert_eq!(waiter.to(), id);
        assert_eq!(poll(&mut delivery), Poll::Pending);
        waiter.resolve(Ok(()));
        waiter.resolve(Err(Undelivered::SlowConsumer));
        drop(waiter);
        assert_eq!(poll(&mut delivery), Poll::Ready(Ok(())));

        let (waiter, mut delivery) = Delivery::new(id);
        drop(waiter);
        assert_eq!(poll(&mut delivery), Poll::Ready(Err(Undelivered::Closed)));

        let mut refused = Delivery::refused(HubError::Closed);
        let want = Err(Undelivered::Refused(HubError::Closed));
        assert_eq!(poll(&mut refused), Poll::Ready(want));

        assert_eq!(std::mem::size_of::<Option<Waiter>>(), 8);
    }
}
