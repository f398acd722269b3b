//! A socket woken from the parking lot, served without tokio until it must wait.
//!
//! A parked connection that turns readable usually carries one short request (a
//! heartbeat, a poll) and then goes quiet again for a long time. Turning it back
//! into a registered `TcpStream` for that costs two `epoll_ctl` calls on the way
//! in and two on the way out (out of the lot's set into tokio's, and back), a
//! `ScheduledIo` allocation and a timer: measured here, `epoll_ctl` alone was a
//! third of the server's CPU per heartbeat. So a woken socket starts as a bare
//! descriptor: reads and writes are plain non-blocking syscalls, and only when
//! one of them would block does the socket register with tokio and wait there
//! like any other stream (leaving the lot's set then: `park::left_for_runtime`,
//! so that tokio alone hears of its requests while it is a task). A woken connection that never had to wait goes back
//! into the lot as soon as its exchange is done (see [`Parkable::repark_when_idle`]),
//! and that costs no `epoll_ctl` at all: the lot keeps the socket in its
//! epoll set, edge-triggered, while it is awake. What the lot cannot see is
//! whether bytes that were there when it took the edge are still unread, so
//! the socket keeps count ([`Parkable::still_watched`]): a read that comes
//! back short (or would block) has taken everything that was there, and
//! whatever arrives later raises an edge of its own (`park.rs` has the whole
//! set of rules).
//!
//! A new cleartext HTTP/1.1 connection starts the same way
//! (`WokenSocket::accepted`): its opening request is usually there when it
//! is accepted, so it is answered bare and parked with one `epoll_ctl` (the
//! lot's add), where a registered stream cost three. And the lot tells a
//! wake whose edge carried the peer's hang-up (`Wake::HungUp`): then a
//! short read proves nothing, the end of the stream is still to be read, and
//! the connection reads on to it instead of parking.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::conn::sys;
use crate::conn::transport::{Parkable, Transport};
use crate::conn::Wake;

/// A woken parked socket: a bare descriptor until an operation would block,
/// then a registered [`TcpStream`].
#[derive(Debug)]
pub(crate) struct WokenSocket {
    state: State,
    /// Re-parked straight after its last request and woken again soon: the
    /// connection is busy again, so it waits as a task for `park_idle_after`
    /// like a fresh one instead of going back to the lot after each request.
    hot: bool,
    /// The parking lot woke it and keeps it in its epoll set (`park.rs`),
    /// until it registers with tokio to wait.
    in_lot: bool,
    /// Every byte that was there when the lot took its edge has been read:
    /// a read came back short, or would have blocked (a timer's wake took
    /// no edge, nor did an owed push's). Until then a full read may have left some behind, and the
    /// lot must re-poll the socket when it parks.
    heard: bool,
    /// The peer's end of stream was there when the lot took the edge
    /// ([`Wake::HungUp`]): a short read proves nothing (the end is still to
    /// be read), and the connection reads on to it rather than parking.
    hung_up: bool,
    /// A TLS wake-up's prefetch is reading ([`WokenSocket::prefetching`]):
    /// a read that would block leaves the socket bare.
    prefetching: bool,
    /// The next read is the first of a task poll that follows a wait for
    /// bytes ([`Parkable::read_follows_wake`]): tried on the readiness the
    /// runtime recorded, not polled (see `poll_read`). Taken by every read.
    after_wake: bool,
}

#[derive(Debug)]
enum State {
    /// Not registered with tokio: every operation is a direct syscall.
    Bare(OwnedFd),
    /// Registered after an operation would have blocked.
    Registered(TcpStream),
    /// Only while switching from `Bare` to `Registered` (or after that failed).
    Gone,
}

impl WokenSocket {
    /// Wraps a socket the parking lot just woke (it is non-blocking
    /// already), for bytes or for a timer as `wake` says.
    pub(crate) fn new(socket: OwnedFd, hot: bool, wake: Wake) -> WokenSocket {
        WokenSocket {
            state: State::Bare(socket),
            hot,
            in_lot: true,
            heard: !wake.readable(),
            hung_up: wake == Wake::HungUp,
            prefetching: false,
            after_wake: false,
        }
    }

    /// A socket just accepted (non-blocking): served bare like a woken one
    /// (its opening request is usually there already), but never in the
    /// lot's set, so the lot adds it when it parks.
    pub(crate) fn accepted(socket: OwnedFd) -> WokenSocket {
        WokenSocket {
            state: State::Bare(socket),
            hot: false,
            in_lot: false,
            heard: false,
            hung_up: false,
            prefetching: false,
            after_wake: false,
        }
    }

    /// A socket registered with tokio already (a connection that changed
    /// protocol without parking): it waits for real readiness, and can
    /// park later like a woken one.
    pub(crate) fn registered_stream(stream: TcpStream) -> WokenSocket {
        WokenSocket {
            state: State::Registered(stream),
            hot: true,
            in_lot: false,
            heard: false,
            hung_up: false,
            prefetching: false,
            after_wake: false,
        }
    }

    /// The socket's descriptor (-1 only after a failed registration).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        match &self.state {
            State::Bare(fd) => fd.as_raw_fd(),
            State::Registered(stream) => stream.as_raw_fd(),
            State::Gone => -1,
        }
    }

    /// Registers the socket with tokio (once), so the caller can wait on it.
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if let State::Bare(_) = self.state {
            let State::Bare(fd) = std::mem::replace(&mut self.state, State::Gone) else {
                unreachable!("checked just above")
            };
            let raw = fd.as_raw_fd();
            self.state = State::Registered(TcpStream::from_std(std::net::TcpStream::from(fd))?);
            // Tokio watches it now: the lot's set lets it go (it is added
            // back when it parks), or its every request would wake the lot too.
            if std::mem::take(&mut self.in_lot) {
                crate::conn::park::left_for_runtime(raw);
            }
        }
        match &mut self.state {
            State::Registered(stream) => Ok(stream),
            _ => Err(lost()),
        }
    }

    /// While on, a read that would block on the bare socket returns
    /// `Pending` without registering with tokio (nothing will wake the
    /// caller: it must not wait on it). A TLS wake-up reads what arrived
    /// this way (`TlsIo::poll_prefetch`): when that was only housekeeping
    /// (a KeyUpdate), the socket parks again still bare and in the lot's
    /// set, with no `epoll_ctl`; registering it cost four and a wait.
    pub(crate) fn prefetching(&mut self, on: bool) {
        self.prefetching = on;
    }

    fn bare(&self) -> Option<BorrowedFd<'_>> {
        match &self.state {
            State::Bare(fd) => Some(fd.as_fd()),
            _ => None,
        }
    }
}

/// Polls `future` once, with a waker that does nothing: its result if it
/// is ready without waiting. A woken connection's work usually is (its
/// bytes are there, the reply fits the socket buffer), and then it needs
/// no task, no timer and no registration. A future that returns `Pending`
/// here must be polled again with a real waker (spawned, or awaited) before
/// it waits: whatever it registered with this one wakes nobody.
pub(crate) fn poll_once<F: std::future::Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(std::task::Waker::noop()))
}

/// The error of a socket lost while registering with the runtime.
fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the woken socket could not be registered with the runtime",
    )
}

/// One non-blocking read or write of up to `len` bytes on a registered
/// stream, through [`sys`]'s bare system calls, waiting for readiness as
/// tokio's own `poll_read` and `poll_write` do: readiness first (which also
/// spends the task's cooperative budget), and readiness cleared when the
/// call would block or moved fewer than `len` bytes (on epoll that shows the
/// socket drained, or its buffer full: no second call just to hear
/// `EAGAIN`).
fn poll_io(
    stream: &TcpStream,
    interest: Interest,
    len: usize,
    cx: &mut Context<'_>,
    mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<Option<usize>>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(if interest.is_readable() {
            stream.poll_read_ready(cx)
        } else {
            stream.poll_write_ready(cx)
        })?;
        if let Some(done) = try_once(stream, interest, len, &mut op) {
            return Poll::Ready(done);
        }
    }
}

/// [`poll_io`]'s call, on the readiness the runtime has recorded, without
/// polling it: `None` when that says not ready or the call would block
/// (readiness then cleared), for the caller to wait.
fn try_once(
    stream: &TcpStream,
    interest: Interest,
    len: usize,
    mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<Option<usize>>,
) -> Option<io::Result<usize>> {
    let fd = stream.as_fd();
    let mut moved = None;
    // `try_io` clears readiness only on "would block", so a short call
    // reports that (its count kept in `moved`).
    let done = stream.try_io(interest, || match op(fd)? {
        Some(n) if n == 0 || n >= len => Ok(n),
        Some(n) => {
            moved = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        None => Err(io::ErrorKind::WouldBlock.into()),
    });
    match (done, moved) {
        (_, Some(n)) => Some(Ok(n)),
        (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => None,
        (done, None) => Some(done),
    }
}

impl AsyncRead for WokenSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Not `initialize_unfilled`: zeroing a whole pooled buffer for a
        // heartbeat of a few bytes would cost more than the read.
        // SAFETY: recv only writes into the memory; nothing is read from it.
        let unfilled = unsafe { buf.unfilled_mut() };
        let asked = unfilled.len();
        let mut bare = false;
        let after_wake = std::mem::take(&mut self.after_wake);
        let n = match &self.state {
            // A busy connection's usual case: registered already. Right
            // after its wait for bytes, tried first on the readiness the
            // runtime recorded: polling it again (`Registration::poll_ready`:
            // the task budget, then the readiness) took ~75 user-space
            // instructions a request (`bench/CPU-PER-REQUEST.md`, session
            // 40), and the wait's own poll registered the waker already. The budget it skips is a fresh task poll's
            // (the read is the first thing the woken task does), which one
            // operation cannot exhaust. Not ready: polled as usual.
            State::Registered(stream) => {
                let tried = after_wake
                    .then(|| {
                        try_once(stream, Interest::READABLE, asked, |fd| {
                            sys::recv(fd, unfilled)
                        })
                    })
                    .flatten();
                match tried {
                    Some(done) => done?,
                    None => ready!(poll_io(stream, Interest::READABLE, asked, cx, |fd| {
                        sys::recv(fd, unfilled)
                    }))?,
                }
            }
            State::Bare(fd) => match sys::recv(fd.as_fd(), unfilled) {
                Ok(Some(n)) => {
                    bare = true;
                    n
                }
                Err(e) => return Poll::Ready(Err(e)),
                // Nothing to read: from here on, wait like any stream
                // (unless the caller only looks, see `prefetching`).
                Ok(None) => {
                    self.heard = true;
                    if self.prefetching {
                        return Poll::Pending;
                    }
                    let stream = self.registered()?;
                    ready!(poll_io(stream, Interest::READABLE, asked, cx, |fd| {
                        sys::recv(fd, unfilled)
                    }))?
                }
            },
            State::Gone => return Poll::Ready(Err(lost())),
        };
        // SAFETY: recv initialised the first `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        // A short read took everything that was there, unless the lot saw
        // the peer hang up: then the end of the stream is still to be read.
        self.heard |= n < asked && !(bare && self.hung_up);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WokenSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &self.state {
            // A busy connection's usual case: registered already (matched
            // here because `registered()` checks for a bare socket first).
            State::Registered(stream) => {
                return poll_io(stream, Interest::WRITABLE, data.len(), cx, |fd| {
                    sys::send(fd, data)
                })
            }
            State::Bare(fd) => match sys::send(fd.as_fd(), data) {
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                Err(e) => return Poll::Ready(Err(e)),
                // The send buffer is full: wait for room like any stream.
                Ok(None) => {}
            },
            State::Gone => return Poll::Ready(Err(lost())),
        }
        let stream = self.registered()?;
        poll_io(stream, Interest::WRITABLE, data.len(), cx, |fd| {
            sys::send(fd, data)
        })
    }

    /// One `sendmsg` of the slices (as [`poll_write`](Self::poll_write)
    /// makes one `send`): the message protocols write their pushes from
    /// the frames the hub shares between connections (`message/outbound.rs`).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = slices.iter().map(|s| s.len()).sum();
        match &self.state {
            State::Registered(stream) => {
                return poll_io(stream, Interest::WRITABLE, len, cx, |fd| {
                    sys::send_vectored(fd, slices)
                })
            }
            State::Bare(fd) => match sys::send_vectored(fd.as_fd(), slices) {
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                Err(e) => return Poll::Ready(Err(e)),
                Ok(None) => {}
            },
            State::Gone => return Poll::Ready(Err(lost())),
        }
        let stream = self.registered()?;
        poll_io(stream, Interest::WRITABLE, len, cx, |fd| {
            sys::send_vectored(fd, slices)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.state {
            State::Registered(stream) => Pin::new(stream).poll_flush(cx),
            // A socket has nothing of ours to flush.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(fd) = self.bare() {
            let done = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
            return Poll::Ready(done.map_err(io::Error::from));
        }
        let stream = self.registered()?;
        Pin::new(stream).poll_shutdown(cx)
    }
}

impl Drop for WokenSocket {
    /// A socket the lot woke that closes still bare (served and closed, or
    /// a hang-up read to its end) tells the lot, which would otherwise keep
    /// its slot `AWAKE` for good (`park::woken_closing`). Parking it again
    /// ([`Parkable::into_parked`]) or registering it with tokio
    /// (`registered`) is no close: nothing is told then.
    #[inline]
    fn drop(&mut self) {
        match (self.in_lot, &self.state) {
            (true, State::Bare(fd)) => crate::conn::park::woken_closing(fd.as_raw_fd()),
            // Registered to wait, then closed: a proxied connection's
            // client goes with it (`proxy_header::closing`).
            (_, State::Registered(stream)) => {
                crate::conn::proxy_header::closing(stream.as_raw_fd())
            }
            _ => {}
        }
    }
}

impl Transport for WokenSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.state {
            State::Registered(stream) => stream.poll_read_ready(cx),
            // The lot woke us because the socket is readable, and a read that
            // would block registers it (see `poll_read`).
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl Parkable for WokenSocket {
    const PARKABLE: bool = true;

    fn read_follows_wake(&mut self) {
        self.after_wake = true;
    }

    fn lot_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.raw_fd())
    }

    fn repark_when_idle(&self) -> bool {
        // A hung-up peer's end of stream is still to be read: no edge would
        // wake the lot for it, so the connection reads on and closes.
        !self.hot && !self.hung_up && matches!(self.state, State::Bare(_))
    }

    fn still_watched(&self) -> bool {
        self.in_lot && self.heard
    }

    fn reparks_a_wake(&self) -> bool {
        // Only the lot's wakes start in its set; an accepted socket never was.
        self.repark_when_idle() && self.in_lot
    }

    fn into_parked(self) -> io::Result<OwnedFd> {
        // Taken without `Drop` (parking is no close): a `mem::replace`
        // made this a call with drop glue on every heartbeat's re-park,
        // ~30 instructions (`bench/FRAMED.md`, session 42).
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, and its other
        // fields are plain `bool`s: the state is moved out exactly once.
        let state = unsafe { std::ptr::read(&this.state) };
        match state {
            State::Bare(fd) => Ok(fd),
            State::Registered(stream) => Ok(stream.into_std()?.into()),
            State::Gone => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the woken socket was lost while registering",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    //! What a woken socket tells the lot when it parks, on a real socket pair.

    use std::io::Write;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::conn::park::tests::pair;

    /// Reads into a buffer of `len` bytes, on the socket as it is now.
    fn read_now(socket: &mut WokenSocket, len: usize) -> Poll<usize> {
        let mut buf = vec![0u8; len];
        poll_once(std::pin::pin!(socket.read(&mut buf))).map(|r| r.unwrap())
    }

    /// A read that follows a wake ([`Parkable::read_follows_wake`]) is tried
    /// on the readiness tokio recorded: it reads what is there, and where
    /// nothing is (or a short read cleared the readiness) it waits as any
    /// read does, its waker registered, so the next bytes wake it.
    #[tokio::test]
    async fn a_read_after_a_wake_reads_or_waits_as_any_read() {
        /// Waits until tokio has the socket readable, then reads as a
        /// woken wait does.
        async fn read_when_ready(socket: &mut WokenSocket) -> Poll<usize> {
            std::future::poll_fn(|cx| socket.poll_read_ready(cx))
                .await
                .unwrap();
            socket.read_follows_wake();
            read_now(socket, 8)
        }
        let (fd, mut client) = pair();
        let mut socket = WokenSocket::new(fd, false, Wake::Readable);
        assert_eq!(read_now(&mut socket, 8), Poll::Pending, "registers it");
        socket.read_follows_wake();
        assert_eq!(read_now(&mut socket, 8), Poll::Pending, "nothing there");
        assert!(!socket.after_wake, "every read takes the hint");
        client.write_all(b"xyz").unwrap();
        assert_eq!(read_when_ready(&mut socket).await, Poll::Ready(3));
        // The short read cleared the readiness: the next one waits, and
        // bytes sent later still wake it.
        socket.read_follows_wake();
        assert_eq!(read_now(&mut socket, 8), Poll::Pending);
        client.write_all(b"ab").unwrap();
        assert_eq!(read_when_ready(&mut socket).await, Poll::Ready(2));
        drop(client);
        assert_eq!(
            read_when_ready(&mut socket).await,
            Poll::Ready(0),
            "the end of the stream"
        );
    }

    /// Bytes were there when the lot took the edge: until a read comes back
    /// short (or would block), some may be left that no edge will announce.
    #[tokio::test]
    async fn a_readable_wake_is_watched_again_after_a_short_read() {
        let (fd, mut client) = pair();
        client.write_all(b"abcdef").unwrap();
        let mut socket = WokenSocket::new(fd, false, Wake::Readable);
        assert!(!socket.still_watched(), "nothing read yet");
        assert_eq!(read_now(&mut socket, 3), Poll::Ready(3));
        assert!(!socket.still_watched(), "a full read may leave bytes");
        assert_eq!(read_now(&mut socket, 3), Poll::Ready(3));
        assert!(!socket.still_watched(), "exactly full: still may");
        assert_eq!(read_now(&mut socket, 3), Poll::Pending);
        assert!(
            !socket.still_watched(),
            "it waits on tokio's epoll now, out of the lot's set"
        );
        assert!(!socket.repark_when_idle(), "it waits like any stream now");

        let (fd, mut client) = pair();
        client.write_all(b"ab").unwrap();
        let mut socket = WokenSocket::new(fd, false, Wake::Readable);
        assert_eq!(read_now(&mut socket, 3), Poll::Ready(2));
        assert!(socket.still_watched(), "a short read took everything");
        assert!(socket.repark_when_idle());
    }

    /// A timer's wake took no edge: nothing can be unheard. A socket that
    /// never was in the lot (a protocol change) is never watched.
    #[tokio::test]
    async fn timer_wakes_are_watched_and_foreign_sockets_never() {
        let (fd, _client) = pair();
        assert!(WokenSocket::new(fd, false, Wake::Timer).still_watched());
        let (fd, _client) = pair();
        let stream = std::net::TcpStream::from(fd);
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        assert!(!WokenSocket::registered_stream(stream).still_watched());
    }
}
