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
//!
//! An upgrade in place (`serve --upgrade`) moves the service to a process
//! systemd did not start: the old process, systemd's main one, tells it
//! `MAINPID=` the new one's pid once the new one said it serves
//! ([`handed_over_to`]), and the new one says `MAINPID=` its own pid with
//! `READY=1` once it is done ([`took_over`]). Without it systemd took the
//! old process's exit for the service's, stopped the unit and killed the
//! new process with the rest of its cgroup. systemd's rules: it hears a
//! process other than the main one only with `NotifyAccess=all` (or
//! `exec`, for a process an `Exec*=` line started), and takes a `MAINPID=`
//! only for a process of the unit's cgroup (from an unprivileged sender).
//! The old process's message is the main process's, so the new one is
//! heard under the default `NotifyAccess=main` too, as the main process by
//! then; a new supervisor (`--processes`) is not named by the old one (it
//! does not know its pid), and needs `NotifyAccess=all`, which
//! `deploy/systemd/megaconn.service` sets.

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

/// An upgrade: the process `pid` took over from this one, which leaves
/// (`MAINPID=`; nothing else: `STOPPING=1` would stop the unit, the new
/// process with it).
pub fn handed_over_to(pid: u32) {
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Status("megaconn handed over; draining"),
    ]);
}

/// This process took over from the one the service manager knew (an
/// upgrade, done): `MAINPID=` its pid, `READY=1`, and `status`.
pub fn took_over(status: &str) {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
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
