//! systemd's readiness protocol (sd_notify(3)), for `Type=notify` units:
//! `READY=1` once the server listens, `RELOADING=1` (with
//! `MONOTONIC_USEC=`, which systemd 253 and later require beside it) when
//! SIGHUP's reload begins and `READY=1` when it is done, `STOPPING=1` when
//! the drain begins. Each is a datagram to the socket `NOTIFY_SOCKET`
//! names; without that variable (not run by systemd) nothing is sent.
//!
//! The sending is the `sd-notify` crate's (lnicola/sd-notify, 0.4: pure
//! Rust, its one dependency libc, already ours; released through 2025):
//! it knows abstract socket names (`@...`) and `MONOTONIC_USEC`'s clock,
//! which a few lines of our own over a `UnixDatagram` would have to get
//! right again.
//!
//! With `--processes` only the supervisor notifies: it starts its worker
//! processes without `NOTIFY_SOCKET` ([`hide_from`]), as under systemd's
//! default `NotifyAccess=main` only the main process is heard, and the
//! supervisor is the one that knows when all of them serve.

use sd_notify::NotifyState;

/// The variable naming the service manager's socket.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os(NOTIFY_SOCKET).is_none() {
        return;
    }
    // `false`: NOTIFY_SOCKET stays (unsetting a variable is unsound once
    // threads run; worker processes are started without it instead).
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The server listens (or a reload is done): `READY=1`, with `status` as
/// `systemctl status` shows it.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP's reload begins: `RELOADING=1` and the monotonic clock now.
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
    ]);
}

/// The drain begins: `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Starts `cmd` (a worker process) without `NOTIFY_SOCKET`: only its
/// supervisor speaks to the service manager.
pub fn hide_from(cmd: &mut tokio::process::Command) {
    cmd.env_remove(NOTIFY_SOCKET);
}
