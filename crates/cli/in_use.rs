//! What a start's bind of an address would meet, found without keeping
//! anything bound: the probe `serve --check` makes of every address a
//! start binds (listen and admin), and when two addresses overlap.
//!
//! A start binds an address twice over (crates/megaconn's `conn/socket.rs`):
//! once without `SO_REUSEPORT` (`probe_free`), which fails when anything
//! listens there, then its listeners with `SO_REUSEPORT`. The check binds
//! the same way and closes at once, never listening, so it takes no
//! connection from anyone. The second bind tells who holds the address: a
//! `SO_REUSEPORT` bind succeeds beside a listener only when that listener
//! set `SO_REUSEPORT` too and belongs to the same user, which every
//! megaconn listener of this user does. That is the running megaconn a
//! `systemctl reload` runs the check beside (its `ExecReload` runs as the
//! service's user) and `serve --upgrade` takes over from: expected, not a
//! failure. Anything else that holds the address makes a start fail; the
//! listener's user (from `/proc/net/tcp`) says whether the check can be
//! sure it is not such a megaconn: a socket of the check's own user that
//! does not share is another program, a socket of another user's may be a
//! megaconn of that user (root checking the unit's `DynamicUser`).

use std::io::{self, BufRead};
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// What holds an address, as a start's bind would find it.
#[derive(Debug)]
pub enum Holder {
    /// Nothing a start's bind meets.
    Free,
    /// A listener of this user that shares its port (`SO_REUSEPORT`), as
    /// every megaconn listener does: a start beside it fails, an upgrade
    /// takes it over.
    Sharing,
    /// A socket that does not share its port with this user's: the user
    /// id of the listener there, if one listens (`None`: a socket bound
    /// without listening, a connection's local port).
    Other {
        /// The listener's user id.
        uid: Option<u32>,
    },
    /// The bind fails for another reason: an address not on this
    /// machine, a port below 1024 without `CAP_NET_BIND_SERVICE`.
    Unbindable(io::Error),
}

/// What a start's bind of `addr` would meet; `v6_only` as the start binds
/// it ([`needs_v6_only`]). Binds at most twice and closes at once.
pub fn probe(addr: SocketAddr, v6_only: bool) -> Holder {
    match bind(addr, v6_only, false) {
        Ok(_) => Holder::Free,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => match bind(addr, v6_only, true) {
            Ok(_) => Holder::Sharing,
            Err(_) => Holder::Other {
                uid: listener_uid(addr),
            },
        },
        Err(e) => Holder::Unbindable(e),
    }
}

/// A socket bound to `addr` with the options of a start's (`SO_REUSEADDR`
/// always, `reuse_port` for a listener's bind, `IPV6_V6ONLY` as the start
/// sets it), never listening: dropped, it is closed.
fn bind(addr: SocketAddr, v6_only: bool, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if v6_only {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Whether a start binds IPv6 address `addr` `IPV6_V6ONLY`: when the same
/// listen set `addrs` has an IPv4 address on its port (the library's rule,
/// `needs_v6_only` in crates/megaconn's `conn/socket.rs`).
pub fn needs_v6_only(addr: SocketAddr, addrs: &[SocketAddr]) -> bool {
    addr.is_ipv6()
        && addr.port() != 0
        && addrs.iter().any(|a| a.is_ipv4() && a.port() == addr.port())
}

/// Whether binding `a` and `b` would meet: one port (not 0, which each
/// bind picks afresh) and one address, or a wildcard that covers the
/// other (`0.0.0.0` every IPv4 address, a dual-stack `[::]` every one).
pub fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a.port() == b.port()
        && a.port() != 0
        && (a.ip().to_canonical() == b.ip().to_canonical()
            || covers(a.ip(), b.ip())
            || covers(b.ip(), a.ip()))
}

/// The user id of the listener on `addr` (or on an address it overlaps),
/// from `/proc/net/tcp` and `/proc/net/tcp6`.
fn listener_uid(addr: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|path| {
        let file = std::fs::File::open(path).ok()?;
        listening_uid(io::BufReader::new(file), addr)
    })
}

/// The user id of the first listener in `table` (the text of
/// `/proc/net/tcp` or `tcp6`) whose address overlaps `addr`. The kernel
/// lists its listeners first: reading stops at the first line that is not
/// one, so a server's million connections are not read (their lines would
/// be ~150 MB).
fn listening_uid(table: impl BufRead, addr: SocketAddr) -> Option<u32> {
    // sl local_address rem_address st ... uid: `st` 0A is TCP_LISTEN.
    for line in table.lines().skip(1) {
        let line = line.ok()?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        if fields
            .get(1)
            .and_then(|f| proc_addr(f))
            .is_some_and(|local| overlap(local, addr))
        {
            return fields.get(7)?.parse().ok();
        }
    }
    None
}

/// An address as `/proc/net/tcp` writes it: `0100007F:1F90` is
/// 127.0.0.1:8080. Each 32-bit word of the address is printed as this
/// machine reads the bytes it holds in network order; the port is plain.
fn proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for at in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(at..at + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The effective user id of this process: its sockets' owner.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// One port and an address, or a wildcard of the family (a dual-stack
    /// `[::]` covers IPv4 too); port 0 never meets.
    #[test]
    fn addresses_overlap_as_binds_meet() {
        assert!(overlap(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlap(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlap(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(overlap(addr("[::]:80"), addr("127.0.0.1:80")));
        assert!(overlap(addr("[::ffff:127.0.0.1]:80"), addr("127.0.0.1:80")));
        assert!(!overlap(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(!overlap(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlap(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!overlap(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
    }

    /// `/proc/net/tcp`'s listeners: the uid of one that overlaps; reading
    /// stops at the first line that is not a listener.
    #[test]
    fn the_listener_s_user_is_read_from_the_kernel_s_table() {
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        let any = 0u32;
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {any:08X}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 111 1\n\
             \x20  1: {lo:08X}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 222 1\n\
             \x20  2: {lo:08X}:1F91 {lo:08X}:C000 01 00000000:00000000 00:00000000 00000000     7        0 333 1\n\
             \x20  3: {lo:08X}:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     9        0 444 1\n"
        );
        let uid = |a: &str| listening_uid(table.as_bytes(), addr(a));
        assert_eq!(uid("127.0.0.1:8080"), Some(33));
        assert_eq!(uid("0.0.0.0:8080"), Some(33));
        assert_eq!(uid("127.0.0.1:80"), Some(1001));
        // A connection's local port is no listener; past it, none is read.
        assert_eq!(uid("127.0.0.1:8081"), None);
        assert_eq!(uid("127.0.0.1:8082"), None);
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert_eq!(
            proc_addr(&format!("{:024X}{one:08X}:1F90", 0)),
            Some(addr("[::1]:8080"))
        );
    }

    /// Real sockets: a free address, one a listener without
    /// `SO_REUSEPORT` holds (found with this process's uid), and one a
    /// listener that shares its port holds, as a megaconn's do. None of
    /// them is disturbed: the probe's sockets never listen.
    #[test]
    fn a_probe_tells_free_shared_and_other_holders_apart() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = plain.local_addr().unwrap();
        match probe(at, false) {
            Holder::Other { uid } => assert_eq!(uid, Some(euid())),
            other => panic!("{other:?}"),
        }
        // Bound without listening, with `SO_REUSEADDR` (a port held for a
        // child, as tests/common's `ReservedPort`): a start binds beside it.
        let held = bind(addr("127.0.0.1:0"), false, false).unwrap();
        let at = held.local_addr().unwrap().as_socket().unwrap();
        assert!(matches!(probe(at, false), Holder::Free));
        let shared = bind(addr("127.0.0.1:0"), false, true).unwrap();
        let at = shared.local_addr().unwrap().as_socket().unwrap();
        shared.listen(8).unwrap();
        assert!(matches!(probe(at, false), Holder::Sharing));
        let _client = std::net::TcpStream::connect(at).unwrap();
        let (_served, _) = shared.accept().unwrap();
        let far = probe(addr("192.0.2.1:8080"), false);
        assert!(
            matches!(far, Holder::Unbindable(ref e) if e.kind() == io::ErrorKind::AddrNotAvailable),
            "{far:?}"
        );
    }
}
