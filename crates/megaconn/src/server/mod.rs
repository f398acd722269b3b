//! The server: the public builder, the per-worker threads and the dispatcher
//! that decides each connection's protocol.

pub(crate) mod builder;
pub(crate) mod dispatch;
pub(crate) mod framed;
pub(crate) mod log_scope;
pub(crate) mod message;
pub(crate) mod name;
pub(crate) mod signal;
mod spare;
pub(crate) mod stall;
pub(crate) mod worker;
