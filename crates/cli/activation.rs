//! Socket activation: listening sockets handed over by systemd (or
//! `systemd-socket-activate`), as `sd_listen_fds(3)` describes: `LISTEN_PID` is
//! this process, `LISTEN_FDS` sockets start at fd 3, `LISTEN_FDNAMES` names
//! them (`FileDescriptorName=` in the socket unit).
//!
//! `serve` finds and checks them here, then serves them instead of binding
//! addresses of its own (`Builder::listener`, `Builder::tls_listener`): those
//! named `tls` or `https…` over TLS, the others in cleartext, each worker
//! thread accepting from the same socket. One process serves them:
//! `--processes` with passed sockets is refused (see `serve::run`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};

/// The first passed file descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// One listening socket passed by systemd.
#[derive(Debug)]
pub struct Inherited {
    /// Its `FileDescriptorName=` (`unknown` when unnamed).
    pub name: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The socket, served by `Builder::listener` (or `tls_listener`).
    pub listener: TcpListener,
}

/// The sockets passed to this process, if any; consumes the environment
/// variables so that child processes do not see them. `Err` when the variables
/// are malformed or a passed descriptor is not a listening TCP socket.
pub fn take_from_env() -> Result<Vec<Inherited>, String> {
    let vars = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].map(|k| std::env::var(k).ok());
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let [pid, fds, names] = vars;
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (a parent that exec'd us without them).
        return Ok(Vec::new());
    }
    let count: RawFd = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    (0..count)
        .map(|i| {
            let fd = FIRST_FD + i;
            let name = names
                .get(i as usize)
                .copied()
                .unwrap_or("unknown")
                .to_string();
            check_listening_tcp(fd)
                .map_err(|e| format!("socket {name} (fd {fd}) from systemd: {e}"))?;
            set_cloexec(fd);
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
            // is ours) and nothing else in the process owns it.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            let addr = listener
                .local_addr()
                .map_err(|e| format!("socket {name} (fd {fd}): {e}"))?;
            Ok(Inherited {
                name,
                addr,
                listener,
            })
        })
        .collect()
}

fn getsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn check_listening_tcp(fd: RawFd) -> Result<(), String> {
    let kind = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| format!("not a socket ({e})"))?;
    if kind != libc::SOCK_STREAM {
        return Err("not a stream socket (ListenStream= in the socket unit)".into());
    }
    let domain =
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| e.to_string())?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("not a TCP socket (an IP address and port in ListenStream=)".into());
    }
    if getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| e.to_string())? != 1 {
        return Err("not listening (Accept=no in the socket unit)".into());
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}
