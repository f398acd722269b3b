//! Operating-system facts and sockets: the open-file limit (RLIMIT_NOFILE), the
//! ephemeral port range, binding connections to source addresses
//! (SO_REUSEADDR + IP_BIND_ADDRESS_NO_PORT), the process's own CPU time, and
//! giving freed heap pages back (`malloc_trim`).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; failure leaves the old limit in place.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// Gives the heap's free pages back to the OS (glibc's `malloc_trim`; a
/// no-op elsewhere). Handshakes leave free holes between the connections'
/// long-lived allocations that glibc keeps resident on its own.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Descriptors left free in each process for everything that is not a held connection.
pub(crate) const FD_HEADROOM: u64 = 512;

/// Connections one process can hold under a descriptor limit of `nofile`.
pub(crate) fn connections_per_process(nofile: u64) -> u64 {
    nofile.saturating_sub(FD_HEADROOM).max(16)
}

/// The number of ephemeral ports per (source, destination) pair, from
/// /proc/sys/net/ipv4/ip_local_port_range (28232 if unreadable, the Linux default).
pub(crate) fn local_port_count() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            let lo = it.next()??;
            let hi = it.next()??;
            (hi >= lo).then(|| hi - lo + 1)
        })
        .unwrap_or(28_232)
}

/// Checks that `ip` is an address this machine can bind a socket to.
pub(crate) fn check_source(ip: IpAddr) -> std::io::Result<()> {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0)).map(drop)
}

/// Connects to `dest`, from `source` when given (the port is chosen at connect
/// time, so many sources can each use the whole port range), within `timeout`.
pub(crate) async fn connect(
    dest: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let sock = if dest.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.set_reuseaddr(true)?;
        set_bind_address_no_port(&sock);
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(timeout, sock.connect(dest))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sets IP_BIND_ADDRESS_NO_PORT (Linux ≥ 4.2); ignored where unsupported.
fn set_bind_address_no_port(sock: &TcpSocket) {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// User + system CPU time of this process so far, in seconds.
pub(crate) fn cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_SELF)
}

/// User + system CPU time of this process's reaped children so far, in seconds.
pub(crate) fn children_cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_CHILDREN)
}

fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Set by SIGINT/SIGTERM while an [`InterruptGuard`] is alive.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_sig: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM (so a run can stop early and still report) until
/// dropped, then restores the previous handlers.
pub(crate) struct InterruptGuard {
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

impl InterruptGuard {
    /// Installs the handlers.
    pub(crate) fn install() -> Self {
        INTERRUPTED.store(false, std::sync::atomic::Ordering::SeqCst);
        let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous =
            [libc::SIGINT, libc::SIGTERM].map(|sig| (sig, unsafe { libc::signal(sig, handler) }));
        InterruptGuard { previous }
    }

    /// True once SIGINT or SIGTERM arrived.
    pub(crate) fn interrupted(&self) -> bool {
        INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (sig, old) in self.previous {
            if old != libc::SIG_ERR {
                // SAFETY: restoring the handler that was installed before.
                unsafe { libc::signal(sig, old) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_sources() {
        assert!(raise_nofile() >= 16);
        assert!(local_port_count() > 0);
        assert!(check_source("127.0.0.7".parse().unwrap()).is_ok());
        // TEST-NET-3 is never configured on a test machine.
        assert!(check_source("203.0.113.9".parse().unwrap()).is_err());
    }

    /// CPU time of the calling thread, from the kernel's per-thread clock:
    /// an independent measure to check [`cpu_secs`] against.
    fn thread_cpu_secs() -> f64 {
        // SAFETY: an all-zero timespec is valid for clock_gettime to overwrite.
        let mut t: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid, writable timespec.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) },
            0
        );
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }

    /// Burning 0.2 s of CPU on this thread (as the kernel's thread clock
    /// counts it) must add at least that much to the process's CPU time.
    /// Other tests' threads only add to it, so there is no upper bound.
    #[test]
    fn cpu_secs_counts_cpu_burnt() {
        const BURN: f64 = 0.2;
        let before = cpu_secs();
        let start = thread_cpu_secs();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while thread_cpu_secs() - start < BURN {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(std::time::Instant::now() < give_up, "no CPU time in 60 s");
        }
        let grew = cpu_secs() - before;
        // getrusage rounds to microseconds (older kernels to a 10 ms tick).
        assert!(
            grew >= BURN - 0.011,
            "cpu_secs grew by {grew} s after {BURN} s of CPU"
        );
    }
}
