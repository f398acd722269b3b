//! Listening sockets, made with `socket2` so every option is explicit.
//!
//! Each worker gets its own `SO_REUSEPORT` listener per address and the kernel
//! balances new connections across them; no worker steals from another and there
//! is no shared accept queue lock. Options set on the listener (buffer sizes,
//! keepalive) are inherited by accepted sockets, so they cost nothing per accept.
//!
//! Binding and listening are two steps when the port is shared with other
//! processes (`reuse_port_shared`: a supervisor's worker processes). A socket
//! joins its port's `SO_REUSEPORT` group at `listen(2)`, not at `bind(2)`, and
//! from then on the kernel gives it its share of new connections; a process
//! that fails after that resets the connections queued in its share, which
//! its siblings would have served. So those sockets are only bound here and
//! listen as the last step of `Server::start` ([`listen_bound`]), once all
//! that can fail before has succeeded. One step comes after, as it must (a
//! socket not listening yet polls as hung up: `Listeners::hand` in
//! `server/worker.rs`): registering them with the workers' runtimes; should
//! that fail (the kernel out of memory, the user out of epoll watches),
//! the connections queued in those microseconds are reset, unless
//! `net.ipv4.tcp_migrate_req=1` (Linux 5.14+) has the kernel move them to
//! the group's other sockets. A socket the server has to itself listens at
//! once (`Builder::listen`): a connection made before the server starts waits
//! in its queue and is served, as callers that connect right after `listen`
//! expect, and nobody else would have served it.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::conn::config::Config;
use crate::conn::io::WriteLimit;
use crate::error::Error;
use crate::DEFAULT_WRITE_STALL_TIMEOUT;

/// Gives message connection `fd` (a native WebSocket or an `axum_ws` socket
/// at its upgrade, a framed one at accept) its `SO_SNDBUF`,
/// [`Builder::message_send_buffer_size`](crate::Builder::message_send_buffer_size):
/// set per connection, not on the listener, since the same listener's
/// HTTP responses keep the kernel's autotuning. A failure leaves the
/// socket as it was (it still works; its kernel queue is just unbounded),
/// logged at debug level: it cannot fail on a socket of ours short of a
/// kernel without the option.
pub(crate) fn bound_message_send_buffer(fd: std::os::fd::RawFd, config: &Config) {
    let Some(size) = config.message_send_buffer_size else {
        return;
    };
    // SAFETY: `fd` is the connection's socket, open while its caller holds
    // the connection; the borrow ends with this call.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Err(e) = SockRef::from(&socket).set_send_buffer_size(size) {
        tracing::debug!(error = %e, "cannot set a message connection's SO_SNDBUF");
    }
}

/// How much longer than twice the server's own write bound the kernel
/// waits for an acknowledgement ([`kernel_bound`]).
pub(crate) const KERNEL_MARGIN: Duration = Duration::from_secs(1);

/// The longest `TCP_USER_TIMEOUT` the kernel takes: it reads the option as
/// an `int` of milliseconds and refuses a negative one (`EINVAL`), which a
/// larger value (socket2 passes up to `c_uint::MAX`) would read as. About
/// 24.8 days.
const KERNEL_MAX: Duration = Duration::from_millis(i32::MAX as u64);

/// The `TCP_USER_TIMEOUT` ([`bound_unacknowledged`]) of a message
/// connection whose writes the server bounds by `limit` (no heartbeat:
/// `write_timeout`, else `write_stall_timeout`): twice that bound and
/// [`KERNEL_MARGIN`], whichever of the two it is, so that where a write
/// of ours waits the server's bound ends it first, with its own reason
/// (`WriteTimeout`, `SlowConsumer`, a WebSocket's 1013), and the kernel's
/// ends only what no waiting write of ours sees (a peer gone without a
/// FIN, a window kept shut while a push sits in the kernel's buffer).
///
/// Why twice: both bounds start when a write of ours first has to wait,
/// which may be up to a bound after the peer's last acknowledgement (the
/// kernel's clock), and a stall bound restarts on progress, so it closes
/// one to two bounds after that acknowledgement (`conn/io.rs`); the whole
/// write's bound (`write_timeout`) closes one bound after its start. With
/// the kernel's bound equal to the stall bound, the kernel's first
/// zero-window probe past it and the server's timer raced (session 45);
/// with it derived from `write_stall_timeout` alone, a `write_timeout`
/// above 2 × `write_stall_timeout` + 1 s lost to the kernel, and a peer
/// whose window stayed shut closed as `Io(TimedOut)` instead of a slow
/// consumer (session 46).
///
/// Writes the server does not bound (`write_timeout` and
/// `write_stall_timeout` both off) get the default stall bound's,
/// 2 × [`DEFAULT_WRITE_STALL_TIMEOUT`] + 1 s (121 s), not the kernel's
/// default: that is `tcp_retries2`'s ~16 minutes for a peer gone without a
/// FIN, and no bound at all for one that answers the zero-window probes.
/// Turning the server's write bounds off says a slow reader may take its
/// time; a peer that takes none of our bytes for two minutes (gone, or
/// its window shut) is not reading slowly. Such a peer is closed as
/// `Io(TimedOut)`; a longer wait is a longer `write_timeout` (2 × it + 1 s
/// here too). Capped at [`KERNEL_MAX`].
pub(crate) fn kernel_bound(limit: WriteLimit) -> Duration {
    let bound = limit.timeout.unwrap_or(DEFAULT_WRITE_STALL_TIMEOUT);
    bound
        .saturating_mul(2)
        .saturating_add(KERNEL_MARGIN)
        .min(KERNEL_MAX)
}

/// Bounds how long a message connection's written bytes may go
/// unacknowledged by its peer (`TCP_USER_TIMEOUT`, `tcp(7)`), to
/// [`kernel_bound`] of `limit`, its writes' bound: past it the kernel
/// drops the connection and its next read or write fails with
/// `ETIMEDOUT` (a parked connection's socket polls `EPOLLERR | EPOLLHUP`,
/// the lot wakes it, and it closes as `CloseReason::Io(TimedOut)`).
///
/// Why: a peer gone without a FIN (a phone off the network) never
/// acknowledges a push or a heartbeat, and without this the kernel
/// retransmits for `tcp_retries2` (15 tries, about 15 minutes) before it
/// gives up, while the connection stays parked and keeps taking pushes
/// (the kernel's send buffer takes them whole: no write of ours waits, so
/// the server's own write bound never runs). The kernel applies it where
/// no write of ours waits: bytes in flight, or a zero window since Linux
/// 5.11, which aborts a peer that keeps its window shut that long even
/// while it acknowledges the probes. Set on SSE streams, framed
/// connections without a heartbeat timeout, native WebSocket routes with
/// theirs off, and `axum_ws` sockets (a heartbeat timeout closes a silent
/// peer itself). A transport without a socket of ours (`None`), or a
/// failure, leaves the kernel's default; the failure is logged at debug
/// level. The cost: a peer gone without a FIN is found in about twice the
/// bound (121 s by default) rather than once, against ~16 minutes without
/// the option.
pub(crate) fn bound_unacknowledged(fd: Option<std::os::fd::RawFd>, limit: WriteLimit) {
    let Some(fd) = fd else {
        return;
    };
    let bound = kernel_bound(limit);
    // SAFETY: `fd` is the connection's socket, open while its caller holds
    // the connection; the borrow ends with this call.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = SockRef::from(&socket).set_tcp_user_timeout(Some(bound)) {
        tracing::debug!(error = %e, "cannot set a message connection's TCP_USER_TIMEOUT");
    }
    // Elsewhere the option does not exist: the kernel's retransmission
    // bounds a vanished peer alone.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (socket, bound);
}

/// What [`bind_all`] made.
pub(crate) struct Bound {
    /// `per_worker[w]` holds worker `w`'s listeners, in address order (an
    /// address served by a taken-over group may give a worker several).
    pub per_worker: Vec<Vec<TcpListener>>,
    /// The bound address of each configured address, port 0 resolved.
    pub local_addrs: Vec<SocketAddr>,
    /// One duplicate of every distinct listening socket, for handing them
    /// to a newer process (an upgrade).
    pub sockets: Vec<TcpListener>,
}

/// Binds `config.workers` listeners for every address, or takes the sockets
/// handed over for it (socket activation, an upgrade).
pub(crate) fn bind_all(config: &Config) -> Result<Bound, Error> {
    if config.addrs.is_empty() {
        return Err(Error::NoAddress);
    }
    let mut per_worker: Vec<Vec<TcpListener>> = (0..config.workers).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::with_capacity(config.addrs.len());
    let mut sockets = Vec::new();
    for (position, &requested) in config.addrs.iter().enumerate() {
        // A listener handed to us (systemd socket activation): every worker
        // accepts from the one socket; the kernel cannot spread connections
        // over SO_REUSEPORT queues it did not create.
        let group: Vec<&TcpListener> = match config.inherited.iter().find(|(p, _)| *p == position) {
            Some((_, inherited)) => vec![&**inherited],
            // Sockets taken over from the process this one replaces: the
            // same SO_REUSEPORT group, with its queued connections, given
            // this process's options (systemd's keep its unit's).
            None => config
                .adopted
                .iter()
                .filter(|l| l.local_addr().ok() == Some(requested))
                .map(|l| {
                    reconfigure_adopted(&**l, config, true);
                    &**l
                })
                .collect(),
        };
        if !group.is_empty() {
            share(&group, &mut per_worker).map_err(|source| listen_error(requested, source))?;
            for socket in group {
                sockets.push(
                    socket
                        .try_clone()
                        .map_err(|source| listen_error(requested, source))?,
                );
            }
            local_addrs.push(requested);
            continue;
        }
        if !config.reuse_port_shared && requested.port() != 0 {
            probe_free(requested, config)?;
        }
        // Port 0 resolves on the first bind; the other workers join that port.
        let mut addr = requested;
        let listen_now = !config.reuse_port_shared;
        for listeners in per_worker.iter_mut() {
            let listener = bind_one(addr, config, listen_now)
                .map_err(|source| bind_error(addr, config, source))?;
            addr = listener
                .local_addr()
                .map_err(|source| listen_error(addr, source))?;
            sockets.push(
                listener
                    .try_clone()
                    .map_err(|source| listen_error(addr, source))?,
            );
            listeners.push(listener);
        }
        local_addrs.push(addr);
    }
    Ok(Bound {
        per_worker,
        local_addrs,
        sockets,
    })
}

/// Spreads a group of sockets of one address over the workers so that every
/// socket has a worker accepting from it and every worker at least one
/// socket: `max(sockets, workers)` pairs, round robin on both sides.
fn share(group: &[&TcpListener], per_worker: &mut [Vec<TcpListener>]) -> io::Result<()> {
    let (n, w) = (group.len(), per_worker.len());
    for j in 0..n.max(w) {
        let listener = group[j % n].try_clone()?;
        listener.set_nonblocking(true)?;
        per_worker[j % w].push(listener);
    }
    Ok(())
}

fn listen_error(addr: SocketAddr, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::AddrInUse {
        Error::AddrInUse {
            addr,
            ipv4_taken: false,
        }
    } else {
        Error::Listen { addr, source }
    }
}

/// [`listen_error`] for a bind of `addr` as `config` makes it, saying
/// when a dual-stack `[::]:P` failed for its IPv4 side alone
/// ([`Error::AddrInUse`]'s `ipv4_taken`).
fn bind_error(addr: SocketAddr, config: &Config, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::AddrInUse && taken_on_ipv4_only(addr, config) {
        return Error::AddrInUse {
            addr,
            ipv4_taken: true,
        };
    }
    listen_error(addr, source)
}

/// Whether `addr`, whose bind failed as in use, is a dual-stack `[::]:P`
/// (unspecified, not [`needs_v6_only`]) that binds v6-only: then its IPv6
/// port is free and the socket in the way is on IPv4 port P. Where IPv6
/// sockets are v6-only already (`net.ipv6.bindv6only = 1`) the v6-only
/// bind fails as the first did. Asked only after a bind failed.
fn taken_on_ipv4_only(addr: SocketAddr, config: &Config) -> bool {
    let SocketAddr::V6(v6) = addr else {
        return false;
    };
    if !v6.ip().is_unspecified() || needs_v6_only(addr, config) {
        return false;
    }
    let Ok(probe) = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)) else {
        return false;
    };
    probe.set_reuse_address(true).is_ok()
        && probe.set_only_v6(true).is_ok()
        && probe.bind(&addr.into()).is_ok()
}

/// `SO_REUSEPORT` would let us silently share a port with another program running
/// as the same user. Binding once without it first turns that into an error.
/// It is made as the listeners will be ([`needs_v6_only`]), so that a
/// dual-stack `[::]:P` finds a program on `0.0.0.0:P` too.
fn probe_free(addr: SocketAddr, config: &Config) -> Result<(), Error> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| listen_error(addr, source))?;
    probe
        .set_reuse_address(true)
        .map_err(|source| listen_error(addr, source))?;
    if needs_v6_only(addr, config) {
        probe
            .set_only_v6(true)
            .map_err(|source| listen_error(addr, source))?;
    }
    probe
        .bind(&addr.into())
        .map_err(|source| bind_error(addr, config, source))
}

/// Whether IPv6 address `addr` must be bound `IPV6_V6ONLY`: only when the
/// same listen set has an IPv4 address on its port. An IPv6 socket
/// otherwise keeps the system's default (`net.ipv6.bindv6only`, 0 on
/// Linux: `[::]:P` takes IPv4 connections too, as `axum::serve`'s tokio
/// listener, Go's `:P` and a plain socket do). Beside `0.0.0.0:P` (or
/// `127.0.0.1:P`) a dual-stack `[::]:P` would claim the IPv4 port too:
/// without `SO_REUSEPORT` the second bind fails with `EADDRINUSE`, with it
/// (ours) both join one group and IPv4 connections would be spread over
/// the two addresses' sockets. v6-only there gives each address its own
/// family, as the user listed them.
fn needs_v6_only(addr: SocketAddr, config: &Config) -> bool {
    addr.is_ipv6()
        && addr.port() != 0
        && config
            .addrs
            .iter()
            .any(|a| a.is_ipv4() && a.port() == addr.port())
}

/// Makes a socket for `addr` with every option of `config` and binds it;
/// `listen`: listens on it too (otherwise [`listen_bound`] does, later).
fn bind_one(addr: SocketAddr, config: &Config, listen: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if needs_v6_only(addr, config) {
        socket.set_only_v6(true)?;
    }
    set_connection_options(&socket, config)?;
    if let Some(wait) = config.defer_accept {
        set_defer_accept(&socket, wait)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if listen {
        socket.listen(backlog(config))?;
    }
    Ok(socket.into())
}

/// The options of `config` a connection has from its start: set on a
/// listener, every socket it accepts inherits them; set on a connection
/// taken over from another process ([`reconfigure_adopted`]), they replace
/// that process's. `TCP_NODELAY`, the buffer sizes and keepalive; a size
/// or keepalive `config` leaves unset is left as it is.
fn set_connection_options(socket: &Socket, config: &Config) -> io::Result<()> {
    socket.set_nodelay(config.nodelay)?;
    if let Some(size) = config.recv_buffer_size {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = config.send_buffer_size {
        socket.set_send_buffer_size(size)?;
    }
    if let Some(ka) = config.tcp_keepalive {
        let params = TcpKeepalive::new()
            .with_time(ka.idle)
            .with_interval(ka.interval)
            .with_retries(ka.count);
        socket.set_tcp_keepalive(&params)?;
    }
    Ok(())
}

/// Gives a socket taken over from the process this one replaces (a
/// listener of its `SO_REUSEPORT` group, or a parked connection) this
/// process's options instead of that one's: a process started with a
/// changed configuration (`--send-buffer-size`, `--tcp-keepalive`, ...)
/// has it apply to the connections it took over and to those its taken
/// listeners accept, as to those it accepts on sockets of its own. A
/// listener gets `TCP_DEFER_ACCEPT` too. Set, not undone: an option this
/// configuration leaves unset (a buffer size, keepalive, `defer_accept`)
/// keeps the old process's value (a buffer size once set cannot go back
/// to the kernel's autotuning). The options a message connection gets at
/// its upgrade (`SO_SNDBUF`, `TCP_USER_TIMEOUT`) need nothing here: only
/// cleartext HTTP/1.1 connections move, and they upgrade in this process.
/// A failure is logged at debug level and leaves the socket as it was
/// (it still works).
pub(crate) fn reconfigure_adopted(
    socket: &impl std::os::fd::AsFd,
    config: &Config,
    listener: bool,
) {
    let socket = SockRef::from(socket);
    let mut set = set_connection_options(&socket, config);
    if let (Ok(()), true, Some(wait)) = (&set, listener, config.defer_accept) {
        set = set_defer_accept(&socket, wait);
    }
    if let Err(e) = set {
        tracing::debug!(error = %e, listener, "cannot give a socket taken over this process's options");
    }
}

fn backlog(config: &Config) -> i32 {
    i32::try_from(config.backlog).unwrap_or(i32::MAX)
}

/// Listens on each of `listeners` not listening yet (bound by [`bind_all`]
/// for a shared port; see the module doc), the last step of
/// `Server::start`. One already listening is left as it is, its backlog
/// too: bound and listened on by `bind_all`, handed over by systemd, or
/// taken over from the process this one replaces (whose queue it is).
pub(crate) fn listen_bound<'a>(
    listeners: impl IntoIterator<Item = &'a TcpListener>,
    config: &Config,
) -> Result<(), Error> {
    for listener in listeners {
        let socket = SockRef::from(listener);
        let addr = || addr_of(listener);
        // SO_ACCEPTCONN: whether it listens. Copies of one socket (an
        // address shared by several workers) see the first `listen`.
        if socket
            .is_listener()
            .map_err(|source| listen_error(addr(), source))?
        {
            continue;
        }
        // Binding with SO_REUSEPORT checked the port; listening checks it
        // again (a socket without the option may have taken it meanwhile).
        socket
            .listen(backlog(config))
            .map_err(|source| listen_error(addr(), source))?;
    }
    Ok(())
}

/// `listener`'s address, to name it in errors and logs: `0.0.0.0:0` if it
/// cannot be read (`getsockname` fails only on a socket already broken).
pub(crate) fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// `TCP_DEFER_ACCEPT`: the kernel wakes us only once the client sent data, so a
/// silent connection never reaches user space until it speaks.
#[cfg(target_os = "linux")]
fn set_defer_accept(socket: &Socket, wait: std::time::Duration) -> io::Result<()> {
    let secs = libc::c_int::try_from(wait.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: a plain setsockopt with an int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_defer_accept(_socket: &Socket, _wait: std::time::Duration) -> io::Result<()> {
    Ok(())
}

/// Per accepted socket: `TCP_NODELAY` (not reliably inherited on every OS).
pub(crate) fn configure_accepted(socket: &impl std::os::fd::AsFd, config: &Config) {
    if config.nodelay {
        let _ = SockRef::from(socket).set_nodelay(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    /// The kernel's bound is twice the server's write bound that applies
    /// and a second: `write_timeout` when set (also above the stall
    /// bound, which it replaces), else `write_stall_timeout`, else (both
    /// off) the default stall bound's; capped at what the kernel takes.
    #[test]
    fn the_kernel_waits_twice_the_bound_that_applies_and_a_second() {
        let resolve = |timeout, stall| kernel_bound(WriteLimit::resolve(timeout, None, stall));
        // The stall bound alone (the default: 121 s).
        assert_eq!(resolve(None, secs(60)), Duration::from_secs(121));
        assert_eq!(resolve(None, secs(2)), Duration::from_secs(5));
        // `write_timeout` bounds the writes instead, above the stall
        // bound's 2 × 2 s + 1 s or below it: the kernel waits past it.
        assert_eq!(resolve(secs(10), secs(2)), Duration::from_secs(21));
        assert_eq!(resolve(secs(1), secs(60)), Duration::from_secs(3));
        assert!(resolve(secs(10), secs(2)) > Duration::from_secs(10));
        // Stall bound off: `write_timeout`'s; both off: the default's.
        assert_eq!(resolve(secs(10), None), Duration::from_secs(21));
        assert_eq!(
            resolve(None, None),
            2 * DEFAULT_WRITE_STALL_TIMEOUT + KERNEL_MARGIN
        );
        // A bound the kernel would refuse is capped, not overflowed.
        assert_eq!(resolve(secs(u64::MAX / 4), None), KERNEL_MAX);
        assert_eq!(resolve(secs(30 * 86_400), None), KERNEL_MAX);
    }

    /// A dual-stack `[::]:P` whose IPv4 port P is another socket's says
    /// so, and what to do: the operator's `ss` shows that socket on
    /// `127.0.0.1:P`, not on `[::]:P`. With IPv6 port P taken, the plain
    /// text.
    #[test]
    fn a_dual_stack_address_taken_on_ipv4_says_so() {
        let dual_stack = std::net::TcpListener::bind("[::1]:0").is_ok()
            && std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only")
                .is_ok_and(|v| v.trim() == "0");
        if !dual_stack {
            eprintln!("skipped: no IPv6 loopback, or IPv6 sockets v6-only by default");
            return;
        }
        let bind = |port| {
            let config = Config {
                addrs: vec![SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))],
                workers: 1,
                ..Config::default()
            };
            match bind_all(&config) {
                Ok(_) => panic!("[::]:{port} bound beside another socket"),
                Err(e) => e,
            }
        };
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        // `Some(ipv4_taken)` of an address in use.
        let ipv4_taken = |err: &Error| match err {
            Error::AddrInUse { ipv4_taken, .. } => Some(*ipv4_taken),
            _ => None,
        };
        let err = bind(port);
        assert_eq!(ipv4_taken(&err), Some(true), "{err}");
        let text = err.to_string();
        for said in [
            format!("IPv4 port {port} is in use"),
            "dual-stack".to_owned(),
            format!("ss -ltnp 'sport = :{port}'"),
        ] {
            assert!(text.contains(&said), "{said:?} not in {text}");
        }
        // IPv6 port P taken: the address asked for is the one in use.
        let taken = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind(port);
        assert_eq!(ipv4_taken(&err), Some(false), "{err}");
        assert!(!err.to_string().contains("IPv4"), "{err}");
    }

    /// The options under test: a send buffer other than the kernel's
    /// default and keepalive, which a socket made without them lacks.
    fn changed_config() -> Config {
        Config {
            send_buffer_size: Some(48 << 10),
            tcp_keepalive: Some(crate::conn::config::KeepaliveConfig {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(5),
                count: 3,
            }),
            ..Config::default()
        }
    }

    /// Whether `socket` has [`changed_config`]'s options (Linux doubles a
    /// buffer size it is given).
    fn has_changed_options(socket: &impl std::os::fd::AsFd) -> bool {
        let socket = SockRef::from(socket);
        socket.send_buffer_size().unwrap() == 2 * (48 << 10) && socket.keepalive().unwrap()
    }

    /// A listener taken over from the process this one replaces (made
    /// there without this configuration's options) serves with this
    /// process's: the connections it accepts inherit them. Before, it kept
    /// the old process's, and so did every connection it accepted.
    #[test]
    fn an_adopted_listener_takes_this_process_s_options() {
        let old = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(
            !has_changed_options(&old),
            "the test's options are not the defaults"
        );
        let addr = old.local_addr().unwrap();
        let config = Config {
            addrs: vec![addr],
            workers: 1,
            adopted: vec![std::sync::Arc::new(old)],
            ..changed_config()
        };
        let bound = bind_all(&config).unwrap();
        let listener = &bound.per_worker[0][0];
        assert_eq!(listener.local_addr().unwrap(), addr);
        assert!(has_changed_options(listener));
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // The workers' copies do not block; this test waits in `accept`.
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(has_changed_options(&accepted));
    }

    /// A connection taken over (a parked one, `conn/handover.rs`) gets this
    /// process's options too.
    #[test]
    fn an_adopted_connection_takes_this_process_s_options() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (connection, _) = listener.accept().unwrap();
        assert!(!has_changed_options(&connection));
        reconfigure_adopted(&connection, &changed_config(), false);
        assert!(has_changed_options(&connection));
    }
}
