//! [`Live`]: an awake message connection's per-connection state, owned so
//! that its handler hears of the close exactly once, however the
//! connection ends: closed by the protocol ([`Live::close`]), parked (the
//! state moves to the side table, [`Live::take`]) or dropped (a forced
//! shutdown drops the task: `on_close` then says
//! [`CloseReason::Shutdown`]; a panic unwinding through it,
//! [`CloseReason::Panic`]). Every per-message protocol (framed TCP,
//! WebSocket) needs exactly this, so it lives here once.

use std::rc::Rc;

use crate::message::hub::ConnectionId;
use crate::message::worker::Local;
use crate::observe::close::CloseReason;

/// A handler's close callback: `FramedHandler::on_close_with_id`,
/// `WebSocketHandler::on_close_with_id`, as a plain function of the handler.
pub(crate) type OnClose<H, S> = fn(&H, ConnectionId, S, CloseReason);

/// One awake connection's state and what must happen when it ends.
pub(crate) struct Live<'h, H, S> {
    handler: &'h H,
    on_close: OnClose<H, S>,
    state: Option<S>,
    id: ConnectionId,
    local: Rc<Local>,
}

impl<'h, H, S> Live<'h, H, S> {
    /// Takes charge of connection `id`'s `state`; `on_close` is called with
    /// it once, when the connection ends.
    pub(crate) fn new(
        handler: &'h H,
        on_close: OnClose<H, S>,
        state: S,
        id: ConnectionId,
        local: &Rc<Local>,
    ) -> Self {
        Live {
            handler,
            on_close,
            state: Some(state),
            id,
            local: local.clone(),
        }
    }

    /// The handler (for its next call).
    pub(crate) fn handler(&self) -> &'h H {
        self.handler
    }

    /// The connection's id.
    pub(crate) fn id(&self) -> ConnectionId {
        self.id
    }

    /// The state, for the handler's next call.
    pub(crate) fn state(&mut self) -> &mut S {
        self.state.as_mut().expect("the state stays until the end")
    }

    /// Runs the handler's `on_open` on the state; a panic in it is caught,
    /// counted and logged, and gives [`CloseReason::Panic`] to close with
    /// (as a panic in `on_message` does), not a worker's unwinding.
    pub(crate) fn open(&mut self, on_open: impl FnOnce(&H, &mut S)) -> Result<(), CloseReason> {
        let handler = self.handler;
        let state = self.state();
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_open(handler, state)));
        opened.map_err(|_panic| {
            crate::observe::stats::incr(&self.local.stats().panics);
            tracing::error!("a message handler's on_open panicked; closing its connection");
            CloseReason::Panic
        })
    }

    /// The state, out of the guard: the connection parks (its state goes to
    /// the side table and the handler hears nothing yet).
    pub(crate) fn take(mut self) -> S {
        self.state.take().expect("the state stays until the end")
    }

    /// Ends the connection: it leaves its topics, the handler hears why;
    /// returns the reason for the dispatcher to count.
    pub(crate) fn close(mut self, reason: CloseReason) -> CloseReason {
        self.end(reason, self.on_close);
        reason
    }

    /// [`Live::close`], the handler told by `on_close` instead of the
    /// connection's callback: for a close that carries what that callback
    /// cannot (a WebSocket peer's close frame, `proto/ws/conn.rs`).
    pub(crate) fn close_by(
        mut self,
        reason: CloseReason,
        on_close: impl FnOnce(&H, ConnectionId, S, CloseReason),
    ) -> CloseReason {
        self.end(reason, on_close);
        reason
    }

    /// A panic in `on_close` is caught (here it may run in a drop, during
    /// another unwinding, or on the parking lot's turn), counted and logged.
    fn end(
        &mut self,
        reason: CloseReason,
        on_close: impl FnOnce(&H, ConnectionId, S, CloseReason),
    ) {
        if let Some(state) = self.state.take() {
            self.local.closed(self.id);
            let (handler, id) = (self.handler, self.id);
            let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                on_close(handler, id, state, reason)
            }));
            if closed.is_err() {
                crate::observe::stats::incr(&self.local.stats().panics);
                tracing::error!("a message handler's on_close panicked");
            }
        }
    }
}

impl<H, S> Drop for Live<'_, H, S> {
    fn drop(&mut self) {
        self.end(crate::conn::connection::dropped_reason(), self.on_close);
    }
}
