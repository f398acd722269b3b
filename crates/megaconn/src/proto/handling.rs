//! A message handler's await, with the connection's pushes written
//! meanwhile (WebSocket and framed): [`while_handling`].
//!
//! A handler's future borrows the connection's `Session` and state, not
//! its socket, so the socket can take the pushes that arrive while the
//! handler awaits (a database lookup, a call to another service). Held
//! until it returned, they piled up in the connection's outbound queue,
//! and a peer that read everything was closed as a slow consumer (1013)
//! once `Builder::outbound_queue` of them came during one await (review,
//! session 46, D1). Now only a peer whose socket does not take them, for
//! the usual write bound, is one.
//!
//! Order on the wire: what the connection wrote before, the pushes
//! written while the handler awaits, then the handler's replies, then the
//! pushes after. A write of pushes under way when the handler returns is
//! finished first (a frame is never cut into by a reply).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

/// What a drain loop and [`while_handling`] share: whether a write is
/// under way, and whether the handler returned (the drain stops after
/// the write under way).
#[derive(Debug, Default)]
pub(crate) struct Draining {
    writing: Cell<bool>,
    stop: Cell<bool>,
}

impl Draining {
    /// A write of pushes begins (`true`) or ended (`false`).
    pub(crate) fn writing(&self, writing: bool) {
        self.writing.set(writing);
    }

    /// Whether the handler returned: the drain ends after its write.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.get()
    }
}

/// Awaits `handling` (the handler's future) while `draining` writes the
/// connection's pushes as they arrive. `draining` ends early only with a
/// close (`Err`: a slow consumer, a write timeout, a socket gone): then
/// the handler's future is dropped, as its connection is gone. Once the
/// handler returns, a write of `draining` under way is finished (`Ok`
/// when it ends, after it sees [`Draining::stopped`]); one that was only
/// waiting for a push is dropped.
pub(crate) async fn while_handling<T, E>(
    handling: impl Future<Output = T>,
    draining: impl Future<Output = Result<(), E>>,
    state: &Draining,
) -> Result<T, E> {
    let mut handling = pin!(handling);
    let mut draining = pin!(draining);
    let handled = poll_fn(|cx| {
        // The handler first: a reply ready needs no write of pushes begun.
        if let Poll::Ready(handled) = handling.as_mut().poll(cx) {
            return Poll::Ready(Ok(handled));
        }
        match draining.as_mut().poll(cx) {
            Poll::Ready(Err(close)) => Poll::Ready(Err(close)),
            // A drain ends with `Ok` only once stopped.
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
        }
    })
    .await?;
    state.stop.set(true);
    if state.writing.get() {
        draining.await?;
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A write under way when the handler returns is finished before
    /// `while_handling` returns; a drain that ends with a close drops the
    /// handler.
    #[tokio::test(start_paused = true)]
    async fn a_write_under_way_finishes_and_a_close_drops_the_handler() {
        let state = Draining::default();
        let wrote = Rc::new(Cell::new(false));
        let drain = async {
            state.writing(true);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            wrote.set(true);
            state.writing(false);
            assert!(state.stopped());
            Ok::<(), ()>(())
        };
        let handler = async {
            tokio::task::yield_now().await;
            7
        };
        let handled = while_handling(handler, drain, &state).await;
        assert_eq!(handled, Ok(7));
        assert!(wrote.get(), "the write under way finished");

        let state = Draining::default();
        let drain = async { Err::<(), _>("slow consumer") };
        let handled = while_handling(std::future::pending::<u8>(), drain, &state).await;
        assert_eq!(handled, Err("slow consumer"));
    }
}
