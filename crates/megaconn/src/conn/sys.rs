//! `recv(2)`, `send(2)` and `sendmsg(2)` on a non-blocking socket, as bare
//! system calls.
//!
//! glibc's `recv` and `send` are thread cancellation points: around every
//! call they switch asynchronous cancellation on and off
//! (`__pthread_enable_asynccancel`, `__pthread_disable_asynccancel`) and
//! read `errno` through a thread-local: 59 user-space instructions per call
//! (callgrind, `bench/profile.sh`), and a keep-alive request makes one of
//! each. megaconn never cancels a thread, so it makes the calls through
//! rustix (already in the tree, under `tempfile` and `clap`), whose Linux
//! backend issues the `syscall` instruction inline and returns the error
//! code directly. mio (under tokio's `TcpStream`) and std go through the
//! glibc wrappers, which is why a registered socket reads and writes
//! through these too (`woken.rs`).
//!
//! Both return what the kernel did, with "would block" as `None` and an
//! interrupted call retried.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

/// Receives into `buf` without blocking: the byte count (0 at the end of the
/// stream), or `None` if nothing is there.
#[inline]
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<Option<usize>> {
    recv_with(fd, buf, RecvFlags::DONTWAIT)
}

/// Whether bytes wait unread in the socket's receive buffer, asked of the
/// kernel itself (`MSG_PEEK`, nothing taken): not the end of the stream,
/// not an error, not "would block". Graceful shutdown asks it before it
/// closes an idle connection (`conn/park.rs`, `proto/http1/conn.rs`): a
/// request that reached the socket is served, not reset. One system call;
/// a runtime's cached readiness is not enough, as it learns of bytes only
/// when its driver next polls.
pub(crate) fn input_waiting(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    matches!(
        recv_with(fd, &mut byte, RecvFlags::DONTWAIT | RecvFlags::PEEK),
        Ok(Some(n)) if n > 0
    )
}

#[inline]
fn recv_with(
    fd: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
    flags: RecvFlags,
) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::recv(fd, &mut *buf, flags) {
            Ok(((filled, _), _)) => return Ok(Some(filled.len())),
            Err(e) => match would_block(e) {
                Some(done) => return done,
                None => continue,
            },
        }
    }
}

/// Sends as much of `data` as the socket takes without blocking: the byte
/// count, or `None` if its buffer is full. A peer that went away is an
/// error, not `SIGPIPE`.
#[inline]
pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::send(fd, data, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) => return Ok(Some(n)),
            Err(e) => match would_block(e) {
                Some(done) => return done,
                None => continue,
            },
        }
    }
}

/// [`send`] of `slices`, one after the other, in one `sendmsg` (a
/// vectored write: the message protocols write pushes from the frames the
/// hub encoded once for all their recipients, `message/outbound.rs`): the
/// byte count, or `None` if the socket's buffer is full.
#[inline]
pub(crate) fn send_vectored(
    fd: BorrowedFd<'_>,
    slices: &[io::IoSlice<'_>],
) -> io::Result<Option<usize>> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    loop {
        let mut control = rustix::net::SendAncillaryBuffer::default();
        match rustix::net::sendmsg(fd, slices, &mut control, flags) {
            Ok(n) => return Ok(Some(n)),
            Err(e) => match would_block(e) {
                Some(done) => return done,
                None => continue,
            },
        }
    }
}

/// A failed call's answer: `None` to try again (interrupted), "would block"
/// as `Ok(None)`, anything else the error.
#[cold]
fn would_block(e: Errno) -> Option<io::Result<Option<usize>>> {
    match e {
        Errno::INTR => None,
        Errno::AGAIN => Some(Ok(None)),
        e => Some(Err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        a.set_nonblocking(true).expect("non-blocking");
        (a, b)
    }

    #[test]
    fn recv_tells_nothing_there_from_bytes_and_from_the_end() {
        let (a, mut b) = pair();
        let mut buf = [MaybeUninit::new(0u8); 16];
        assert_eq!(recv(a.as_fd(), &mut buf).unwrap(), None);
        b.write_all(b"ping").unwrap();
        assert_eq!(recv(a.as_fd(), &mut buf).unwrap(), Some(4));
        // SAFETY: recv initialised the first 4 bytes.
        let got: Vec<u8> = buf[..4]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, b"ping");
        drop(b);
        assert_eq!(recv(a.as_fd(), &mut buf).unwrap(), Some(0));
    }

    #[test]
    fn input_waiting_sees_bytes_without_taking_them_and_not_the_end() {
        let (a, mut b) = pair();
        assert!(!input_waiting(a.as_fd()));
        b.write_all(b"GET").unwrap();
        assert!(input_waiting(a.as_fd()));
        assert!(input_waiting(a.as_fd()), "a peek takes nothing");
        let mut buf = [MaybeUninit::new(0u8); 16];
        assert_eq!(recv(a.as_fd(), &mut buf).unwrap(), Some(3));
        assert!(!input_waiting(a.as_fd()));
        drop(b);
        assert!(
            !input_waiting(a.as_fd()),
            "the end of the stream is no input"
        );
    }

    #[test]
    fn send_fills_the_buffer_then_says_so_and_fails_on_a_gone_peer() {
        let (a, mut b) = pair();
        assert_eq!(send(a.as_fd(), b"pong").unwrap(), Some(4));
        let mut got = [0u8; 4];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        let chunk = [7u8; 64 * 1024];
        let mut full = false;
        for _ in 0..1024 {
            if send(a.as_fd(), &chunk).unwrap().is_none() {
                full = true;
                break;
            }
        }
        assert!(full, "a peer that never reads fills the socket buffer");
        drop(b);
        let gone = send(a.as_fd(), b"x").expect_err("the peer is gone");
        assert_eq!(gone.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_socket_that_is_not_connected_is_an_error_not_would_block() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
        assert!(send(socket.as_fd(), b"x").is_err());
    }
}
