//! The HTTP service glue: the request body handed to services, upgrades, and
//! the one bound every protocol serves.

use crate::conn::ConnInfo;

pub(crate) mod body;
pub(crate) mod h2_body;
pub(crate) mod upgrade;

/// The message a caught panic carries, for the log line.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Gives a request its connection's addresses: megaconn's [`ConnInfo`] and,
/// with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (so the
/// extractor works as under `axum::serve` with connect info).
pub(crate) fn insert_conn_info(extensions: &mut http::Extensions, info: ConnInfo) {
    #[cfg(feature = "axum")]
    extensions.insert(axum::extract::ConnectInfo(info.peer));
    extensions.insert(info);
}
