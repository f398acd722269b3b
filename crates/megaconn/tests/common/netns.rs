//! A private network namespace for a test whose peer must vanish without a
//! FIN (a device or phone gone off the network): the test runs on a thread
//! of its own that `unshare(CLONE_NEWNET)`s (that thread alone; a server's
//! worker threads started from it are in it too), and [`set_lo`] takes the
//! namespace's `lo` down once the connection is where the test wants it:
//! from then on every segment either side sends is dropped, as if the path
//! went away. Needs `CAP_SYS_ADMIN` (CI runs as root); where `unshare` is
//! refused the test says it skipped ([`super::skip`]).
//!
//! Also what the half-open tests (`framed_halfopen.rs`, `sse_halfopen.rs`,
//! `ws_halfopen.rs`) share: their server's bounds ([`STALL`], [`WAIT`],
//! [`builder`]), a connection opened and parked ([`opened_and_parked`]),
//! and its peer vanishing and the close it must get
//! ([`vanish_and_await_close`]).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use megaconn::{Builder, CloseReason, ConnectionId, Server, ServerHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The half-open tests' `write_stall_timeout`: their sockets'
/// `TCP_USER_TIMEOUT` is 2 × it + 1 s (5 s; `conn/socket.rs`,
/// `kernel_bound`).
pub const STALL: Duration = Duration::from_secs(2);

/// How long a half-open test waits for the close. Without the bound the
/// kernel gives up after `tcp_retries2` (~16 minutes), so the test fails
/// here; with it the close comes about 2 × [`STALL`] + 1 s after the
/// first bytes the peer does not acknowledge, plus the lot's wake.
pub const WAIT: Duration = Duration::from_secs(30);

/// A one-worker server whose idle connections park at once (50 ms) and
/// whose writes' stall bound is [`STALL`].
pub fn builder() -> Builder {
    Server::builder()
        .workers(1)
        .park_idle_after(Some(Duration::from_millis(50)))
        .write_stall_timeout(Some(STALL))
}

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

/// Writes `request` on `io` and reads the response's head to its blank line
/// (and whatever came with it), which must start with `status` (e.g.
/// `HTTP/1.1 101`).
pub async fn request_head<S>(io: &mut S, request: &[u8], status: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(request).await.unwrap();
    io.flush().await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(super::SAFETY, io.read(&mut buf))
            .await
            .expect("the head in time")
            .unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(status.as_bytes()), "{head:?}");
}

/// Waits for the id `on_open` reports (`opens`) and for the connection to
/// park; returns the id.
pub async fn opened_and_parked(
    handle: &ServerHandle,
    opens: &mut mpsc::UnboundedReceiver<ConnectionId>,
) -> ConnectionId {
    let id = tokio::time::timeout(super::SAFETY, opens.recv())
        .await
        .expect("on_open in time")
        .expect("on_open");
    super::wait_stats(handle, "parked", |s| s.connections_parked == 1).await;
    id
}

/// The peer vanishes: takes `lo` down, then runs `push` (what gives the
/// kernel bytes the peer will not acknowledge, if the server sends none of
/// its own), and waits up to [`WAIT`] for `closed` (the close `on_close`
/// reports), which must be `Io(TimedOut)` and counted. `what` names the
/// connection in the failure and in the line that says how long it took.
pub async fn vanish_and_await_close(
    handle: &ServerHandle,
    what: &str,
    push: impl FnOnce(),
    closed: impl Future<Output = Option<CloseReason>>,
) {
    set_lo(false).expect("lo down");
    let vanished = Instant::now();
    push();
    let reason = tokio::time::timeout(WAIT, closed)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} whose peer vanished was not closed within {WAIT:?} (parked: {})",
                handle.stats().connections_parked
            )
        })
        .expect("on_close");
    let took = vanished.elapsed();
    eprintln!("{what}: closed as {reason:?} {took:?} after lo went down");
    assert_timed_out_and_counted(handle, &reason).await;
}

/// Asserts a vanished peer's connection closed as `Io(TimedOut)` and waits
/// until the server counted that close: the dispatcher counts it after the
/// handler's `on_close` returns, so it is waited for, not read at once
/// (merge review: read at once it failed under load).
async fn assert_timed_out_and_counted(
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
