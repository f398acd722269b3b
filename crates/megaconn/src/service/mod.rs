//! The HTTP service glue: the request body handed to services, upgrades, and
//! the one bound every protocol serves.

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
