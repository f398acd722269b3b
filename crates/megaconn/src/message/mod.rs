//! The message layer: what a per-message protocol keeps beyond one
//! connection, whatever its wire format. It sits between `service/` and
//! `proto/`: protocols (framed TCP today) import it, it imports no protocol.
//!
//! - `hub.rs`     [`Hub`]: push a frame to a connection by [`ConnectionId`]
//! - `session.rs` [`Session`]: a connection as its handler sees it
//! - `table.rs`   the side table of parked connections' states, per worker

pub(crate) mod hub;
pub(crate) mod session;
pub(crate) mod table;

pub use hub::{ConnectionId, Hub};
pub use session::Session;
