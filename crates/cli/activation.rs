//! Socket activation: listening sockets handed over by systemd (or
//! `systemd-socket-activate`), as `sd_listen_fds(3)` describes: `LISTEN_PID` is
//! this process, `LISTEN_FDS` sockets start at fd 3, `LISTEN_FDNAMES` names
//! them (`FileDescriptorName=` in the socket unit).
//!
//! `serve` finds and checks them here, then serves them instead of binding
//! addresses of its own (`Builder::listener`, `Builder::tls_listener`), each
//! worker thread accepting from the same socket. One process serves them:
//! `--processes` with passed sockets is refused (see `serve::run`).
//!
//! Which sockets speak TLS ([`Named`]), by their name:
//! - `tls` or `https…`: TLS, with the certificate of `--tls-cert`/`--tls-key`
//!   or `--self-signed` (refused without one);
//! - `http…` (not `https…`): cleartext, always, certificate or not;
//! - any other name (systemd's default is the socket unit's name,
//!   `megaconn.socket`; `unknown` when `LISTEN_FDNAMES` is not set): as a
//!   `--listen` address, TLS when a certificate is given and nothing else
//!   says which listeners are TLS (no socket named for TLS, no
//!   `--tls-listen`), cleartext otherwise ([`others_are_tls`]).
//!
//! A certificate that no listener would use (every socket named `http…`, no
//! `--listen`, no `--tls-listen`) is refused as a mistake rather than ignored.

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

/// What a passed socket's name says about TLS (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// `tls` or `https…`: served over TLS.
    Tls,
    /// `http…` but not `https…`: served in cleartext.
    Cleartext,
    /// Any other name: as a `--listen` address ([`others_are_tls`]).
    Other,
}

impl Named {
    /// What `name` (a `FileDescriptorName=`) says.
    pub fn of(name: &str) -> Named {
        if name == "tls" || name.starts_with("https") {
            Named::Tls
        } else if name.starts_with("http") {
            Named::Cleartext
        } else {
            Named::Other
        }
    }
}

/// Whether the passed sockets whose name says nothing ([`Named::Other`]),
/// and the `--listen` addresses, are served over TLS: when a certificate is
/// given (`certificate`) and nothing names the TLS listeners, neither a
/// socket named for TLS nor a `--tls-listen` address (`tls_listen`). The
/// same rule as for `--listen` alone (`tls.rs`): a certificate applies to
/// every listener unless some are picked out for it.
pub fn others_are_tls(sockets: &[Inherited], certificate: bool, tls_listen: bool) -> bool {
    certificate && !tls_listen && !sockets.iter().any(|s| s.named() == Named::Tls)
}

impl Inherited {
    /// What this socket's name says about TLS.
    pub fn named(&self) -> Named {
        Named::of(&self.name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(name: &str) -> Inherited {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Inherited {
            name: name.into(),
            addr: listener.local_addr().unwrap(),
            listener,
        }
    }

    #[test]
    fn names_say_tls_cleartext_or_nothing() {
        for name in ["tls", "https", "https-admin"] {
            assert_eq!(Named::of(name), Named::Tls, "{name}");
        }
        for name in ["http", "http-alt", "http2"] {
            assert_eq!(Named::of(name), Named::Cleartext, "{name}");
        }
        for name in ["unknown", "megaconn.socket", "web", "tlsx", ""] {
            assert_eq!(Named::of(name), Named::Other, "{name}");
        }
    }

    /// The others are TLS only when a certificate is given and no listener
    /// is named or listed for TLS; a socket named `http` never changes that.
    #[test]
    fn the_others_follow_the_certificate_unless_tls_is_named() {
        let http_and_web = [socket("http"), socket("web")];
        assert!(others_are_tls(&http_and_web, true, false));
        assert!(!others_are_tls(&http_and_web, false, false));
        assert!(!others_are_tls(&http_and_web, true, true), "--tls-listen");
        let with_https = [socket("http"), socket("web"), socket("https")];
        assert!(!others_are_tls(&with_https, true, false));
    }
}
