//! The message layer's public knobs: the [`Hub`] of a server (push,
//! publish, broadcast to message connections) and the bound of each
//! connection's outbound queue. Protocol-neutral: they apply to every
//! message protocol's connections (framed TCP today).

use std::sync::Arc;

use crate::message::hub::HubInner;
use crate::message::{Hub, MessageSettings};
use crate::server::builder::{Builder, Server};

impl Builder {
    /// Message connections (framed): how many pushed messages may wait in an
    /// awake connection's outbound queue (it is written between the peer's
    /// frames). A push that finds it full closes the connection as
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer) and
    /// counts a queue drop. A parked connection has no queue: a push is one
    /// `send`, and a socket buffer that cannot take it closes it the same
    /// way. Default: [`DEFAULT_OUTBOUND_QUEUE`](crate::DEFAULT_OUTBOUND_QUEUE).
    pub fn outbound_queue(mut self, messages: usize) -> Builder {
        MessageSettings::update(&mut self.config, |s| s.outbound_queue = messages.max(1));
        self
    }
}

impl Server {
    /// The server's [`Hub`]: pushes messages to message connections by
    /// [`ConnectionId`](crate::ConnectionId), to a topic's subscribers, or to
    /// all, from any task or thread. Ask before serving (a handler that
    /// pushes is usually given a clone); every call returns the same hub.
    pub fn hub(&mut self) -> Hub {
        let workers = self.config.workers;
        let config = Arc::make_mut(&mut self.config);
        MessageSettings::update(config, |s| {
            s.hub
                .get_or_insert_with(|| Arc::new(HubInner::new(workers)));
        });
        let inner = MessageSettings::of(&self.config)
            .and_then(|s| s.hub.clone())
            .expect("just set");
        Hub::new(inner)
    }
}
