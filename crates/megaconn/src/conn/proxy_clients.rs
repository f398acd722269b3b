//! The clients of proxied connections: a process-wide table from a
//! socket (its descriptor, checked by its balancer's address and its
//! kernel cookie) to the client its PROXY header named, kept for every
//! place that asks a socket for its peer; how an entry is written,
//! looked up and let go, and the guards that let it go
//! ([`OnTaskEnd`], [`ForgetsClient`]). Reading the header, and which
//! sources must send one, is `proxy_header.rs`'s.
//!
//! The client's address lives in a process-wide table by descriptor
//! ([`remember`]), not in the parking lot (which keeps no addresses for
//! any connection) nor in the connection's future: a connection with no
//! header costs nothing, a proxied one one entry (84 bytes of key and
//! value, ~90–180 with the hash table's slack) for as long as it is open.
//! Every reader of a socket's peer goes through [`peer_of`], which
//! answers the client for a proxied socket: woken from the lot, a message
//! session's `peer_addr`, a log line, a span.
//!
//! An entry dies with its connection, and no other socket can read it:
//!
//! - it is written when the header is read, and the descriptor's old
//!   entry, if any, goes first;
//! - it is removed at the close, while the descriptor is still the
//!   connection's ([`closing`]: the parking lot's own closes, a woken
//!   socket's, an upgraded connection's stream a handler drops,
//!   [`ForgetsClient`]), or once the first task that served it ended and
//!   its socket is gone ([`ended`]);
//! - it is used only for the socket it was written for: its balancer's
//!   address must be the socket's peer, and its socket cookie
//!   (`SO_COOKIE`, unique among the kernel's sockets since boot) the
//!   socket's. A descriptor number reused for another connection from
//!   the same balancer port (the balancer reuses its source port after
//!   `TIME_WAIT`), by this server or by another in the process that does
//!   not read headers, never names the old client, even where a close
//!   was missed.
//!
//! While no entry is held, no lookup, close or wake-up takes the table's
//! lock (one atomic load); while some are, an unproxied connection's
//! close takes it once, to find nothing.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// A proxied connection's client, the balancer's address (the socket's
/// peer) it came through, and its socket's cookie ([`cookie_of`]; `None`
/// on a kernel without `SO_COOKIE`, before 4.13: the balancer's address
/// is the only check then).
#[derive(Debug, Clone, Copy)]
struct Proxied {
    client: SocketAddr,
    by: SocketAddr,
    cookie: Option<u64>,
}

impl Proxied {
    /// Whether the socket at `fd` is still the one this entry was written
    /// for (one `getsockopt`).
    fn still_at(&self, fd: RawFd) -> bool {
        match self.cookie {
            Some(cookie) => cookie_of(fd) == Some(cookie),
            None => peer_at(fd) == Some(self.by),
        }
    }
}

/// The clients of proxied connections, by descriptor ([`remember`]).
static PROXIED: Mutex<Option<HashMap<RawFd, Proxied>>> = Mutex::new(None);

/// How many entries [`PROXIED`] holds, written under its lock: while 0,
/// no lookup or close takes the lock. Read relaxed: a socket's entry is
/// written on the thread that read its header, before anything else
/// could ask for that socket's peer or close it.
static LIVE: AtomicUsize = AtomicUsize::new(0);

fn table() -> std::sync::MutexGuard<'static, Option<HashMap<RawFd, Proxied>>> {
    PROXIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The cookie of the socket at `fd` (`SO_COOKIE`: a number the kernel
/// gives each socket, never reused while it runs); `None` if `fd` is no
/// open socket (any more), or the kernel has none.
pub(crate) fn cookie_of(fd: RawFd) -> Option<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a `getsockopt` into a live `u64` of its length; on a
    // descriptor that is closed (or another's by now) it fails or reads
    // that socket's cookie, which tells it from the one we knew.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// The peer of the socket at `fd`, by its raw number (it may be closed).
fn peer_at(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: `try_init` hands `getpeername` zeroed storage and its length.
    let (_, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            match libc::getpeername(fd, storage.cast(), len) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        })
    }
    .ok()?;
    addr.as_socket()
}

/// Keeps `client` as the peer of socket `fd` (its cookie `cookie`), which
/// `by` (a trusted balancer) connected.
pub(crate) fn remember(fd: RawFd, client: SocketAddr, by: SocketAddr, cookie: Option<u64>) {
    let mut table = table();
    let entry = Proxied { client, by, cookie };
    if table
        .get_or_insert_with(HashMap::new)
        .insert(fd, entry)
        .is_none()
    {
        LIVE.fetch_add(1, Relaxed);
    }
}

/// The socket at `fd`, still open, closes (or is a new connection's):
/// the entry of a proxied connection there goes. Called by the parking
/// lot's closes and a woken socket's, before the descriptor is let go,
/// so the entry removed is that socket's, never a later one's.
#[inline]
pub(crate) fn closing(fd: RawFd) {
    if LIVE.load(Relaxed) != 0 {
        remove(fd, |_| true);
    }
}

/// A task that served the socket at `fd` ended: closed, parked, or
/// handed over (an upgrade). Its entry goes unless the descriptor still
/// holds the socket it was written for (parked, or upgraded); a later
/// socket's entry there, written meanwhile, stays.
pub(crate) fn ended(fd: RawFd) {
    if LIVE.load(Relaxed) == 0 {
        return;
    }
    if let Some(entry) = entry_at(fd) {
        if !entry.still_at(fd) {
            remove(fd, |e| e.cookie == entry.cookie && e.by == entry.by);
        }
    }
}

/// Calls [`ended`] for its descriptor when dropped: at the end of a
/// proxied connection's first task, however it ends (a forced shutdown
/// drops it), once the socket is let go (declared before the future that
/// takes the socket, it drops after it).
pub(crate) struct OnTaskEnd(pub(crate) RawFd);

impl Drop for OnTaskEnd {
    fn drop(&mut self) {
        ended(self.0);
    }
}

/// Removes `fd`'s entry if `which` says it is the one meant; the table
/// is let go once empty, and shrunk when mostly empty.
#[cold]
fn remove(fd: RawFd, which: impl FnOnce(&Proxied) -> bool) {
    let mut table = table();
    let Some(map) = table.as_mut() else { return };
    if !map.get(&fd).is_some_and(which) {
        return;
    }
    let _gone = map.remove(&fd);
    #[cfg(feature = "test-util")]
    if let Some(gone) = _gone {
        test_util::gone(fd, &gone);
    }
    LIVE.fetch_sub(1, Relaxed);
    if map.is_empty() {
        // A peak's table given back whole.
        *table = None;
    } else if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// A copy of `fd`'s entry, the lock held only to copy it.
fn entry_at(fd: RawFd) -> Option<Proxied> {
    table().as_ref()?.get(&fd).copied()
}

/// The client socket `fd` (whose own peer is `socket_peer`) was proxied
/// for, if it was, and if its entry is this socket's (an entry found
/// stale goes).
fn client_of(fd: RawFd, socket_peer: SocketAddr) -> Option<SocketAddr> {
    if LIVE.load(Relaxed) == 0 {
        return None;
    }
    let entry = entry_at(fd)?;
    // The caller holds the socket: an entry that is not its own (another
    // balancer's, another cookie) was left by a socket gone.
    if entry.by != socket_peer || !entry.still_at(fd) {
        remove(fd, |e| e.cookie == entry.cookie);
        return None;
    }
    Some(entry.client)
}

/// The peer of `socket` as megaconn shows it: the client a trusted
/// balancer named in its PROXY header, else the socket's own peer (one
/// `getpeername`; `None` once the peer has reset it).
pub(crate) fn peer_of(socket: &impl AsFd) -> Option<SocketAddr> {
    peer_and_balancer_of(socket).map(|(peer, _)| peer)
}

/// [`peer_of`], and the balancer the socket came through if its PROXY
/// header named the client (the socket's own peer then): one lookup for
/// both, as a woken connection's requests carry both
/// ([`ProxiedBy`](crate::ProxiedBy)).
pub(crate) fn peer_and_balancer_of(socket: &impl AsFd) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let peer = socket2::SockRef::from(socket)
        .peer_addr()
        .ok()?
        .as_socket()?;
    Some(match client_of(socket.as_fd().as_raw_fd(), peer) {
        Some(client) => (client, Some(peer)),
        None => (peer, None),
    })
}

/// The balancer the socket at `fd` came through, if its PROXY header
/// named the client (`Session::proxied_by`): nothing asked of the socket
/// while no proxied connection is open (one atomic load), else one
/// `getpeername` and a lookup.
pub(crate) fn balancer_of(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    if LIVE.load(Relaxed) == 0 {
        return None;
    }
    peer_and_balancer_of(&fd).and_then(|(_, by)| by)
}

/// Whether `socket` is a proxied connection's: its client's address is
/// this process's only (an upgrade's next process would read the
/// balancer's), so it does not move to another process.
pub(crate) fn is_proxied(socket: BorrowedFd<'_>) -> bool {
    LIVE.load(Relaxed) != 0
        && socket2::SockRef::from(&socket)
            .peer_addr()
            .ok()
            .and_then(|p| p.as_socket())
            .and_then(|peer| client_of(socket.as_raw_fd(), peer))
            .is_some()
}

pin_project_lite::pin_project! {
    /// A proxied connection's stream handed to a handler (an upgrade:
    /// axum's `WebSocketUpgrade`, an `OnUpgrade`), which may keep it past
    /// the task that read its header, and drops it on a task of its own:
    /// its client's entry goes when it drops, before its socket closes
    /// (the descriptor still this connection's), as axum's `ConnLimiterIo`
    /// frees its permit. Without it the entry stayed until the
    /// descriptor's next proxied connection (unread: its cookie differed),
    /// and while it did, every close in the process took the table's lock.
    pub(crate) struct ForgetsClient<T> {
        #[pin]
        io: T,
        fd: RawFd,
    }

    impl<T> PinnedDrop for ForgetsClient<T> {
        fn drop(this: Pin<&mut Self>) {
            closing(this.fd);
        }
    }
}

impl<T> ForgetsClient<T> {
    /// `io`, whose socket is `fd`, a proxied connection's.
    pub(crate) fn new(io: T, fd: RawFd) -> ForgetsClient<T> {
        ForgetsClient { io, fd }
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for ForgetsClient<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for ForgetsClient<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// What megaconn's own tests ask of the table of proxied clients (the
/// cargo feature `test-util`, off by default; the crate's tests turn it
/// on through a dev-dependency on the crate itself): whether an entry
/// went with its connection, which no request or log line can tell.
///
/// Not a stable API: it exists for the crate's tests and may change with
/// them.
#[cfg(feature = "test-util")]
pub mod test_util {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Mutex;

    use super::{table, Proxied};

    /// The entries watched, by socket cookie: `None` while held, then
    /// whether it went while its socket was still at its descriptor.
    static WATCHED: Mutex<Option<HashMap<u64, Option<bool>>>> = Mutex::new(None);

    /// How many [`WatchedClient`]s are alive: while none, a removal
    /// records nothing (one atomic load).
    static WATCHING: AtomicUsize = AtomicUsize::new(0);

    fn watched() -> std::sync::MutexGuard<'static, Option<HashMap<u64, Option<bool>>>> {
        WATCHED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What became of a watched entry ([`WatchedClient::state`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ClientEntry {
        /// The table still holds it.
        Held,
        /// It went while its socket was still at its descriptor: at the
        /// connection's close, as it must.
        GoneWithItsSocket,
        /// It went once another socket was at its descriptor (a later
        /// connection's header read, or a lookup found it stale): it
        /// outlived its connection.
        GoneAfterItsSocket,
    }

    /// A proxied connection's entry, watched by its socket's cookie
    /// (`SO_COOKIE`, never reused while the kernel runs) from when
    /// [`watch_proxied_client`] found it: told apart from any later
    /// connection's entry at the same descriptor, so that one taking the
    /// descriptor after a missed close cannot pass for the close.
    #[derive(Debug)]
    pub struct WatchedClient {
        cookie: u64,
        client: SocketAddr,
    }

    /// Watches the entry of the connection from `by` (a balancer's
    /// address and port): `None` if the table holds none, or the kernel
    /// gives no socket cookies (before Linux 4.13).
    pub fn watch_proxied_client(by: SocketAddr) -> Option<WatchedClient> {
        // The table's lock held while the watch is set, which a removal
        // also takes first: none can fall between the two.
        let table = table();
        let entry = table.as_ref()?.values().find(|e| e.by == by)?;
        let cookie = entry.cookie?;
        watched()
            .get_or_insert_with(HashMap::new)
            .insert(cookie, None);
        WATCHING.fetch_add(1, Relaxed);
        Some(WatchedClient {
            cookie,
            client: entry.client,
        })
    }

    impl WatchedClient {
        /// The client the entry names.
        pub fn client(&self) -> SocketAddr {
            self.client
        }

        /// Whether the table still holds the entry, and if not, whether
        /// it went with its socket.
        pub fn state(&self) -> ClientEntry {
            match watched()
                .as_ref()
                .and_then(|w| w.get(&self.cookie).copied())
            {
                Some(Some(true)) => ClientEntry::GoneWithItsSocket,
                Some(Some(false)) => ClientEntry::GoneAfterItsSocket,
                _ => ClientEntry::Held,
            }
        }
    }

    impl Drop for WatchedClient {
        fn drop(&mut self) {
            if let Some(w) = watched().as_mut() {
                w.remove(&self.cookie);
            }
            WATCHING.fetch_sub(1, Relaxed);
        }
    }

    /// `fd`'s entry `entry` was removed (the table's lock held): recorded
    /// if watched, with whether its socket was still at `fd`.
    pub(super) fn gone(fd: RawFd, entry: &Proxied) {
        let Some(cookie) = entry.cookie else { return };
        if WATCHING.load(Relaxed) == 0 {
            return;
        }
        if let Some(state) = watched().as_mut().and_then(|w| w.get_mut(&cookie)) {
            *state = Some(entry.still_at(fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

    /// A connected pair on loopback: the accepted side and the client's.
    fn pair(listener: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (accepted, client)
    }

    /// A client socket bound to `from` (reused, as a balancer reuses its
    /// source port), connected to `listener`; and the accepted side.
    fn pair_from(
        from: SocketAddr,
        listener: &std::net::TcpListener,
    ) -> (std::net::TcpStream, std::net::TcpStream) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&from.into()).unwrap();
        socket
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (accepted, socket.into())
    }

    /// Puts `socket` at descriptor number `fd` (`dup2`), as the kernel
    /// gives a closed connection's number to the next accept.
    fn reuse(fd: RawFd, socket: &impl AsRawFd) {
        // SAFETY: both are descriptors of this test's; `fd` is owned by
        // the caller, which closes it once.
        assert_eq!(unsafe { libc::dup2(socket.as_raw_fd(), fd) }, fd);
    }

    /// The table answers a proxied socket's client only for that socket:
    /// its own peer must be the balancer it was remembered with.
    #[test]
    fn a_remembered_client_is_answered_only_for_its_balancer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (accepted, _client) = pair(&listener);
        let by = accepted.peer_addr().unwrap();
        let fd = accepted.as_raw_fd();
        let client: SocketAddr = "203.0.113.9:1234".parse().unwrap();
        remember(fd, client, by, cookie_of(fd));
        assert_eq!(peer_of(&accepted), Some(client));
        let other = SocketAddr::new(by.ip(), by.port().wrapping_add(1));
        assert_eq!(client_of(fd, other), None, "another connection on the fd");
        assert!(entry_at(fd).is_none(), "found stale, it went");
        assert_eq!(peer_of(&accepted), Some(by));
    }

    /// A descriptor number reused for a new connection from the same
    /// balancer port (its port reused after `TIME_WAIT`), where no
    /// header is read (another server in the process, without
    /// `proxy_protocol`), is not the old connection's client: the entry
    /// is the old socket's (its cookie), and found stale it goes.
    #[test]
    fn a_new_socket_on_the_descriptor_from_the_same_balancer_port_is_not_the_client() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (old, balancer) = pair_from("127.0.0.1:0".parse().unwrap(), &first);
        let by = old.peer_addr().unwrap();
        let fd = old.into_raw_fd();
        let client: SocketAddr = "203.0.113.10:1234".parse().unwrap();
        remember(fd, client, by, cookie_of(fd));
        // The same balancer port, to another server: its socket takes the
        // old connection's descriptor number.
        let (new, _new_client) = pair_from(by, &second);
        reuse(fd, &new);
        drop(new);
        drop(balancer);
        // SAFETY: `fd` is the new socket's now, owned here only.
        let reused = unsafe { OwnedFd::from_raw_fd(fd) };
        assert_eq!(
            socket2::SockRef::from(&reused)
                .peer_addr()
                .unwrap()
                .as_socket(),
            Some(by)
        );
        assert_eq!(peer_of(&reused), Some(by), "the old connection's client");
        assert!(entry_at(fd).is_none(), "found stale, it went");
    }

    /// An entry goes at its socket's close ([`closing`]); after a task's
    /// end ([`ended`]) it stays while its socket is at its descriptor (it
    /// parked), goes once another socket is, and a newer socket's entry
    /// there is not taken for the old one's.
    #[test]
    fn an_entry_dies_with_its_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, _a_client) = pair(&listener);
        let fd = a.as_raw_fd();
        let client: SocketAddr = "203.0.113.11:1".parse().unwrap();
        remember(fd, client, a.peer_addr().unwrap(), cookie_of(fd));
        closing(fd);
        assert!(entry_at(fd).is_none(), "closing: gone");
        remember(fd, client, a.peer_addr().unwrap(), cookie_of(fd));
        ended(fd);
        assert_eq!(peer_of(&a), Some(client), "parked: its entry stays");
        // Its socket gone, another at the number, with an entry of its own.
        let (b, _b_client) = pair(&listener);
        let other: SocketAddr = "203.0.113.12:2".parse().unwrap();
        let a = a.into_raw_fd();
        reuse(a, &b);
        ended(fd);
        assert!(entry_at(fd).is_none(), "the socket gone: gone");
        remember(fd, other, b.peer_addr().unwrap(), cookie_of(fd));
        ended(fd);
        assert_eq!(
            entry_at(fd).map(|e| e.client),
            Some(other),
            "the new one's stays"
        );
        closing(fd);
        // SAFETY: `a` is the number `b` was put at, owned here only.
        drop(unsafe { OwnedFd::from_raw_fd(a) });
    }

    /// What a proxied connection's address lookup costs, and what the
    /// process-wide lock adds when both workers look up at once: the
    /// lookup alone (the lock and the hash), and `peer_of` (its
    /// `getpeername` and `getsockopt` around it), from one thread and
    /// from two, over a table of 10,000 entries. A measurement, not a
    /// check: run with `--ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: --ignored --nocapture"]
    fn lookups_measured_from_one_and_two_threads() {
        const N: u32 = 200_000;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets: Vec<_> = (0..2).map(|_| pair(&listener)).collect();
        let client: SocketAddr = "203.0.113.13:1".parse().unwrap();
        for (s, _) in &sockets {
            let fd = s.as_raw_fd();
            remember(fd, client, s.peer_addr().unwrap(), cookie_of(fd));
        }
        let filler: RawFd = 2_000_000;
        for i in 0..10_000 {
            remember(filler + i, client, client, None);
        }
        let time = |threads: usize, lookup: &(dyn Fn(&std::net::TcpStream) + Sync)| {
            let start = std::time::Instant::now();
            std::thread::scope(|scope| {
                for (s, _) in &sockets[..threads] {
                    scope.spawn(move || {
                        for _ in 0..N {
                            lookup(s);
                        }
                    });
                }
            });
            start.elapsed().as_nanos() as f64 / f64::from(N)
        };
        let table_only = |s: &std::net::TcpStream| {
            std::hint::black_box(entry_at(s.as_raw_fd()));
        };
        let whole = |s: &std::net::TcpStream| {
            std::hint::black_box(peer_of(s));
        };
        let floor = |s: &std::net::TcpStream| {
            std::hint::black_box(peer_at(s.as_raw_fd()));
        };
        for (name, f) in [
            (
                "table lookup (lock + hash)",
                &table_only as &(dyn Fn(&std::net::TcpStream) + Sync),
            ),
            ("peer_of (getpeername + lookup + getsockopt)", &whole),
            ("getpeername alone", &floor),
        ] {
            let one = time(1, f);
            let two = time(2, f);
            eprintln!("{name}: {one:.0} ns a lookup from one thread, {two:.0} ns from each of two at once ({:.2}x)", two / one);
        }
        for i in 0..10_000 {
            closing(filler + i);
        }
        for (s, _) in &sockets {
            closing(s.as_raw_fd());
        }
    }
}
