//! [`shutdown_signal`]: what a server run by a service manager waits on
//! before its graceful shutdown. Ctrl-C sends SIGINT; systemd (`systemctl
//! stop`), `docker stop` and Kubernetes stop a process with SIGTERM, whose
//! default action ends it on the spot, without a drain.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

use crate::Error;

/// A future that completes when the process receives SIGINT (Ctrl-C) or
/// SIGTERM, for [`Server::serve_with_shutdown`](crate::Server::serve_with_shutdown)
/// (or [`Started::run_with_shutdown`](crate::Started::run_with_shutdown)):
///
/// ```no_run
/// # async fn run(server: megaconn::Server, app: axum::Router) -> Result<(), megaconn::Error> {
/// let summary = server.serve_with_shutdown(app, megaconn::shutdown_signal()?).await?;
/// # Ok(()) }
/// ```
///
/// `tokio::signal::ctrl_c()` alone waits for SIGINT only: a server under
/// systemd, Docker or Kubernetes then dies at SIGTERM with its in-flight
/// requests cut, and never drains.
///
/// Both handlers are installed by this call, not when the future is first
/// polled, so a signal that comes between the two is not lost (nor kills the
/// process). Once installed, tokio keeps them for the life of the process:
/// a second SIGINT or SIGTERM during the drain does not end it
/// ([`shutdown_timeout`](crate::Builder::shutdown_timeout) bounds it). The
/// signal that came is logged at INFO.
///
/// # Errors
///
/// [`Error::Signal`] if a handler cannot be installed (the process is out
/// of file descriptors: tokio's signal driver needs a pipe).
///
/// # Panics
///
/// Outside a Tokio runtime with its I/O driver enabled (`#[tokio::main]`
/// enables it).
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    let install = |kind: SignalKind| signal(kind).map_err(|source| Error::Signal { source });
    let mut interrupt = install(SignalKind::interrupt())?;
    let mut terminate = install(SignalKind::terminate())?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down gracefully");
    })
}
