//! A private network namespace for a test whose peer must vanish without a
//! FIN (a device or phone gone off the network): the test runs on a thread
//! of its own that `unshare(CLONE_NEWNET)`s (that thread alone; a server's
//! worker threads started from it are in it too), and [`set_lo`] takes the
//! namespace's `lo` down once the connection is where the test wants it:
//! from then on every segment either side sends is dropped, as if the path
//! went away. Needs `CAP_SYS_ADMIN` (CI runs as root); where `unshare` is
//! refused the test says it skipped ([`super::skip`]).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Runs `test` on a current-thread runtime on a new thread in a network
/// namespace of its own, `lo` up; a panic inside is the caller's. Where the
/// namespace is refused it skips, naming `name`.
pub fn run_in_private_netns<F, Fut>(name: &'static str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // The namespace is this thread's (and its children's) alone: the
    // harness's other test threads keep the host's.
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare(2) of the network namespace, for this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            super::skip(&format!(
                "{name}: unshare(CLONE_NEWNET) refused ({e}); needs CAP_SYS_ADMIN"
            ));
            return;
        }
        set_lo(true).expect("lo up in the new namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Brings this network namespace's `lo` up or down (`SIOCSIFFLAGS`, what
/// `ip link set lo up|down` does).
pub fn set_lo(up: bool) -> io::Result<()> {
    // SAFETY: a plain socket(2); its descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(b"lo") {
        *to = *from as libc::c_char;
    }
    // SAFETY: both ioctls read and write `req`, which outlives them.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        let up_flag = libc::IFF_UP as libc::c_short;
        let flags = req.ifr_ifru.ifru_flags;
        req.ifr_ifru.ifru_flags = if up {
            flags | up_flag
        } else {
            flags & !up_flag
        };
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asserts a vanished peer's connection closed as `Io(TimedOut)` and waits
/// until the server counted that close: the dispatcher counts it after the
/// handler's `on_close` returns, so it is waited for, not read at once
/// (merge review: read at once it failed under load).
pub async fn assert_timed_out_and_counted(
    handle: &megaconn::ServerHandle,
    reason: &megaconn::CloseReason,
) {
    let timed_out = megaconn::CloseReason::Io(io::ErrorKind::TimedOut);
    assert_eq!(reason, &timed_out);
    let label = timed_out.label();
    super::wait_stats(handle, "the close counted as an I/O error", |s| {
        super::closed_as(s, label) == 1
    })
    .await;
}
