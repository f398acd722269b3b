//! The HTTP service glue: the request body handed to services, upgrades, and
//! the one bound every protocol serves.

use crate::conn::ConnInfo;

pub(crate) mod body;
pub(crate) mod h2_body;
pub(crate) mod upgrade;

/// What tokio's panic says when a handler calls `block_in_place` on a
/// current-thread runtime, which every megaconn worker is.
const BLOCK_IN_PLACE_PANIC: &str =
    "can call blocking only when running on the multi-threaded runtime";

/// The message a caught panic carries, for the log line; for the panic of
/// `tokio::task::block_in_place`, what to use instead.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    let message = if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(non-string panic payload)"
    };
    if message.contains(BLOCK_IN_PLACE_PANIC) {
        return "tokio::task::block_in_place is not available on megaconn's workers \
                (one current-thread runtime per core): run blocking work with \
                tokio::task::spawn_blocking and await its handle";
    }
    message
}

/// Gives a request its connection's addresses: megaconn's [`ConnInfo`] and,
/// with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (so the
/// extractor works as under `axum::serve` with connect info).
pub(crate) fn insert_conn_info(extensions: &mut http::Extensions, info: ConnInfo) {
    #[cfg(feature = "axum")]
    extensions.insert(axum::extract::ConnectInfo(info.peer));
    extensions.insert(info);
}
