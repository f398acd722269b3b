//! The PROXY protocol (HAProxy's, v1 text and v2 binary) from trusted load
//! balancers: which sources must send it ([`TrustedProxies`], the
//! `proxy_protocol` setting, or a listener's own, [`ListenerProxies`]),
//! reading and consuming the header before any protocol sees the
//! connection, counting and logging the refused ones, and what the task
//! serving a proxied connection knows of it ([`ProxiedTask`]). The
//! client's address it names is kept by `proxy_clients.rs`.
//!
//! ```text
//!  accepted, peer in proxy_protocol? -- no --> as before (a header's bytes are the protocol's:
//!        | yes                                 an HTTP client's `PROXY ...` line gets a 400)
//!        v
//!  read_header (read_header_timeout, 10 s with it off; peeks, so no buffer is kept while it waits,
//!        |      and consumes exactly the header: what follows stays in the kernel)
//!        +-- PROXY TCP4/TCP6 (v1), PROXY with an IPv4/IPv6 family (v2) -> the client's address
//!        +-- v2 LOCAL, v1 UNKNOWN, v2 UNSPEC/UNIX family             -> the socket's own address
//!        +-- none (other bytes, a close, the deadline), a broken one,
//!            one over MAX_PROXY_HEADER_BYTES                         -> closed, counted, logged
//! ```
//!
//! Why a trusted source must send it and nobody else may (as nginx's
//! `proxy_protocol` and the spec say): a receiver must not guess, and a
//! header taken from anyone would let any client name any address.
//!
//! The client's address, once read, is kept for the connection's life in
//! the process-wide table of proxied clients (`proxy_clients.rs`, which
//! owns its entries, their checks and their ends; its lookups are
//! re-exported here, where the callers found them before it was a
//! module of its own).
//!
//! What a proxied connection's protocols ask beyond its client (the
//! balancer, for its requests' [`ProxiedBy`](crate::ProxiedBy); its
//! accept, from which a drain's 5 s for its first request count) is not
//! looked up per request: the task serving it knows ([`ProxiedTask`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::str::FromStr;
use std::time::Duration;

use ppp::PartialResult;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::conn::context::WorkerContext;
pub(crate) use crate::conn::proxy_clients::{
    balancer_of, closing, is_proxied, peer_and_balancer_of, peer_of, ForgetsClient, OnTaskEnd,
};
use crate::conn::proxy_clients::{cookie_of, remember};
use crate::observe::close::{client_left, CloseReason, ProtocolDetail};
use crate::observe::ratelog::{self, Flood};

/// The most bytes a PROXY header may take: v1's are at most 107; v2's
/// carry TLVs (AWS's VPC endpoint id, a TLS summary), which the
/// protocol lets grow to 64 KiB but no balancer sends many of. Over it,
/// the connection is closed as `too_large`.
pub const MAX_PROXY_HEADER_BYTES: usize = 1024;

/// How long a trusted source's header is waited for when
/// `read_header_timeout` is off (with it on, it is the bound). Its
/// default, as a header is the balancer's first bytes, written with the
/// connection (HAProxy's `send-proxy`, an NLB's): a source that sent none
/// within it is broken, and meanwhile it holds a task, and on a TLS
/// listener a place among the handshakes in flight. nginx's stream
/// module waits 30 s (`proxy_protocol_timeout`), Caddy's wrapper 5 s.
pub(crate) const PROXY_HEADER_TIMEOUT: Duration = crate::conn::config::DEFAULT_READ_HEADER_TIMEOUT;

/// The length of a v2 header's fixed part (signature, version and
/// command, family, length).
const V2_FIXED: usize = 16;

/// The longest v1 line, its CRLF included (the spec's 107).
const V1_MAX: usize = 107;

/// The networks whose connections carry a PROXY protocol header
/// ([`Builder::proxy_protocol`](crate::Builder::proxy_protocol)): parsed
/// from a comma-separated list of addresses and CIDR networks, such as
/// `"10.0.0.0/8,192.168.1.5,fd00::/8"`. An IPv4 client of a dual-stack
/// listener (`::ffff:10.0.0.1`) is matched as its IPv4 address.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

/// One network: its address, masked to its prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// A `proxy_protocol` list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proxy_protocol: {problem} (a comma-separated list of addresses and CIDR networks, e.g. \"10.0.0.0/8,192.168.1.5\")")]
pub struct TrustedProxiesError {
    problem: String,
}

impl TrustedProxies {
    /// Whether a connection from `ip` is a trusted balancer's, which must
    /// send a header.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(ip))
    }
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(net) == u32::from(ip) & mask_v4(self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(net) == u128::from(ip) & mask_v6(self.prefix)
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let problem = |problem: String| TrustedProxiesError { problem };
        let nets = s
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (addr, prefix) = entry.split_once('/').unwrap_or((entry, ""));
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| problem(format!("{entry:?} is not an IP address")))?;
                let addr = addr.to_canonical();
                let bits = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = if prefix.is_empty() {
                    bits
                } else {
                    prefix
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= bits)
                        .ok_or_else(|| {
                            problem(format!("{entry:?}: the prefix must be 0 to {bits}"))
                        })?
                };
                let addr = match addr {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_v4(prefix)).into()),
                    IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_v6(prefix)).into()),
                };
                Ok(Net { addr, prefix })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nets.is_empty() {
            return Err(problem("no address or network given".into()));
        }
        Ok(TrustedProxies { nets })
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}/{}", net.addr, net.prefix)?;
        }
        Ok(())
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedProxies(\"{self}\")")
    }
}

/// How a trusted source's header went: the `result` label of
/// `megaconn_proxy_headers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderOutcome {
    /// A header naming the client: its address is the connection's.
    Ok,
    /// v2 `LOCAL` (a balancer's own health check), v1 `UNKNOWN`, or an
    /// address family without addresses: the socket's address stays.
    Local,
    /// No header: other bytes came first, the source closed, or
    /// `read_header_timeout` passed ([`PROXY_HEADER_TIMEOUT`] with it off).
    Missing,
    /// A header that does not parse.
    Invalid,
    /// A header over [`MAX_PROXY_HEADER_BYTES`].
    TooLarge,
}

impl HeaderOutcome {
    /// The labels, in the order of the outcomes.
    const LABELS: [&'static str; 5] = crate::observe::stats::PROXY_HEADER_RESULTS;

    fn count(self, ctx: &WorkerContext) {
        crate::observe::stats::incr(&ctx.stats.proxy_headers[self as usize]);
    }
}

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// The client's address.
    Client(SocketAddr),
    /// The socket's own address stands ([`HeaderOutcome::Local`]).
    Local,
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A whole header of this many bytes.
    Whole(usize, Header),
    /// The start of one: more bytes are needed.
    Partial,
    /// Not a header, a broken one, or one too large.
    Refused(HeaderOutcome),
}

/// Parses the first bytes of a connection with `ppp`: v2 when they begin
/// with its signature, v1 when with `PROXY `, else no header.
fn parse(bytes: &[u8]) -> Parsed {
    let v2 = ppp::v2::PROTOCOL_PREFIX;
    if bytes.starts_with(&v2[..bytes.len().min(v2.len())]) {
        return parse_v2(bytes);
    }
    let v1 = b"PROXY ";
    if bytes.starts_with(&v1[..bytes.len().min(v1.len())]) {
        return parse_v1(bytes);
    }
    Parsed::Refused(HeaderOutcome::Missing)
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    use ppp::v2::{Addresses, Command, ParseError};
    let header = match ppp::v2::Header::try_from(bytes) {
        Ok(header) => header,
        // It says its length up front: one over the bound is refused
        // without waiting for the rest.
        Err(ParseError::Partial(_, rest)) if V2_FIXED + rest > MAX_PROXY_HEADER_BYTES => {
            return Parsed::Refused(HeaderOutcome::TooLarge)
        }
        Err(e) if e.is_incomplete() => return Parsed::Partial,
        Err(_) => return Parsed::Refused(HeaderOutcome::Invalid),
    };
    let client = match (header.command, header.addresses) {
        (Command::Local, _) => Header::Local,
        (_, Addresses::IPv4(a)) => Header::Client((a.source_address, a.source_port).into()),
        (_, Addresses::IPv6(a)) => Header::Client((a.source_address, a.source_port).into()),
        (_, Addresses::Unspecified | Addresses::Unix(_)) => Header::Local,
    };
    // TLVs are within the header's length, skipped with it.
    Parsed::Whole(header.header.len(), client)
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    use ppp::v1::{Addresses, BinaryParseError, ParseError};
    // Parsed once its line's end is in: `ppp` takes a line cut right
    // after a space (`... 51234 `) for a broken one.
    if !bytes[..bytes.len().min(V1_MAX)].contains(&b'\n') {
        return if bytes.len() >= V1_MAX {
            Parsed::Refused(HeaderOutcome::TooLarge)
        } else {
            Parsed::Partial
        };
    }
    let header = match ppp::v1::Header::try_from(bytes) {
        Ok(header) => header,
        Err(BinaryParseError::Parse(ParseError::HeaderTooLong)) => {
            return Parsed::Refused(HeaderOutcome::TooLarge)
        }
        Err(_) => return Parsed::Refused(HeaderOutcome::Invalid),
    };
    let client = match header.addresses {
        Addresses::Tcp4(a) => Header::Client((a.source_address, a.source_port).into()),
        Addresses::Tcp6(a) => Header::Client((a.source_address, a.source_port).into()),
        Addresses::Unknown => Header::Local,
    };
    Parsed::Whole(header.header.len(), client)
}

/// Why reading a header ended without one.
#[derive(Debug)]
enum NoHeader {
    /// Refused as the outcome says.
    Refused(HeaderOutcome),
    /// The source closed first.
    Closed,
    /// The socket failed.
    Io(io::Error),
}

/// Reads the PROXY header of `stream`, a connection from a trusted
/// source, within `read_header_timeout`, or [`PROXY_HEADER_TIMEOUT`]
/// with it off (graceful shutdown cuts it as it cuts a connection that
/// sent no request yet, 5 s after `accepted`): the client's address,
/// `None` when the socket's own stands (`LOCAL`, `UNKNOWN`), or the close
/// reason of a connection refused (counted in
/// `megaconn_proxy_headers_total` and logged, limited, here).
///
/// It peeks and consumes exactly the header, so the bytes behind it (a
/// request, a ClientHello) stay in the kernel for the protocol, and
/// nothing is kept between reads: the peek's buffer lives on the stack
/// for one system call.
pub(crate) async fn read_header(
    stream: &TcpStream,
    ctx: &WorkerContext,
    accepted: tokio::time::Instant,
) -> Result<Option<SocketAddr>, CloseReason> {
    let fd = stream.as_raw_fd();
    let balancer = stream.peer_addr().ok();
    // A descriptor's entry from an earlier connection goes first: the
    // descriptor is this socket's now, so no other can write it meanwhile.
    closing(fd);
    let peer = || ratelog::peer_name(balancer);
    // Bounded also with `read_header_timeout` off: unbounded, a source
    // that connected and sent nothing held its task (and a TLS
    // handshake's place) for as long as it kept the connection open.
    let timeout = ctx
        .config
        .read_header_timeout
        .or(Some(PROXY_HEADER_TIMEOUT));
    let read = ctx.handshake(
        timeout,
        read_until_whole(stream),
        CloseReason::HeaderTimeout,
        |failed| refused(ctx, failed, balancer),
        accepted,
        peer,
    );
    match read.await {
        Ok(Header::Client(client)) => {
            HeaderOutcome::Ok.count(ctx);
            if let Some(balancer) = balancer {
                remember(fd, client, balancer, cookie_of(fd));
            }
            tracing::debug!(%client, proxied_by = ?balancer, "PROXY protocol header read");
            Ok(Some(client))
        }
        Ok(Header::Local) => {
            HeaderOutcome::Local.count(ctx);
            Ok(None)
        }
        Err(reason) => {
            if reason == CloseReason::HeaderTimeout {
                HeaderOutcome::Missing.count(ctx);
                let timeout = crate::observe::human::Timeout::from(PROXY_HEADER_TIMEOUT);
                match ctx.config.read_header_timeout {
                    Some(_) => log_refused(
                        HeaderOutcome::Missing,
                        balancer,
                        "none within read_header_timeout",
                    ),
                    None => log_refused(
                        HeaderOutcome::Missing,
                        balancer,
                        format_args!(
                            "none within {timeout} (PROXY_HEADER_TIMEOUT: read_header_timeout is off)"
                        ),
                    ),
                }
            }
            Err(reason)
        }
    }
}

/// Counts and logs a header refused, and says how the connection closes.
fn refused(ctx: &WorkerContext, failed: NoHeader, balancer: Option<SocketAddr>) -> CloseReason {
    match failed {
        NoHeader::Refused(outcome) => {
            outcome.count(ctx);
            // A protocol error as every protocol's refusal of bad bytes is.
            crate::observe::stats::incr(&ctx.stats.protocol_errors);
            let what = match outcome {
                HeaderOutcome::Missing => "its first bytes are not a PROXY header",
                HeaderOutcome::TooLarge => {
                    "a header over MAX_PROXY_HEADER_BYTES (1024 bytes with its TLVs)"
                }
                _ => "a header that does not parse",
            };
            log_refused(outcome, balancer, what);
            CloseReason::Protocol(ProtocolDetail::ProxyHeader)
        }
        NoHeader::Closed => {
            HeaderOutcome::Missing.count(ctx);
            CloseReason::ClientClosed
        }
        NoHeader::Io(e) => {
            HeaderOutcome::Missing.count(ctx);
            if client_left(&e) {
                CloseReason::ClientClosed
            } else {
                CloseReason::io(&e)
            }
        }
    }
}

fn log_refused(outcome: HeaderOutcome, balancer: Option<SocketAddr>, what: impl fmt::Display) {
    ratelog::log(Flood::ProxyHeader, |suppressed| {
        tracing::warn!(
            peer = %ratelog::peer_name(balancer),
            result = HeaderOutcome::LABELS[outcome as usize],
            suppressed,
            "connection from a proxy_protocol source closed: {what} (a trusted source must start every connection with a PROXY protocol v1 or v2 header: turn it on in the balancer, e.g. HAProxy's send-proxy-v2, or take the source out of proxy_protocol)"
        )
    });
}

/// Waits until the first bytes of `stream` are a whole header, then
/// consumes it.
async fn read_until_whole(stream: &TcpStream) -> Result<Header, NoHeader> {
    loop {
        let ready = stream
            .ready(Interest::READABLE)
            .await
            .map_err(NoHeader::Io)?;
        // A partial header is "would block": its readiness is cleared, and
        // the next bytes wake this again. After the source's FIN no more
        // will come (a peek still finds the part that came).
        match stream.try_io(Interest::READABLE, || step(stream.as_fd())) {
            Ok(done) => return done,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Err(NoHeader::Closed)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(NoHeader::Io(e)),
        }
    }
}

/// One look at the socket's first bytes: a whole header is consumed and
/// returned; a partial one is `WouldBlock`.
fn step(socket: BorrowedFd<'_>) -> io::Result<Result<Header, NoHeader>> {
    let mut buf = [0u8; MAX_PROXY_HEADER_BYTES];
    let n = recv(socket.as_raw_fd(), &mut buf, libc::MSG_PEEK)?;
    if n == 0 {
        return Ok(Err(NoHeader::Closed));
    }
    match parse(&buf[..n]) {
        Parsed::Partial => Err(io::ErrorKind::WouldBlock.into()),
        Parsed::Refused(outcome) => Ok(Err(NoHeader::Refused(outcome))),
        Parsed::Whole(len, header) => {
            // Peeked, so all there: taken off the queue in one call.
            let taken = recv(socket.as_raw_fd(), &mut buf[..len], 0)?;
            if taken != len {
                return Ok(Err(NoHeader::Io(io::ErrorKind::UnexpectedEof.into())));
            }
            Ok(Ok(header))
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: a receive into a live buffer of its length on our descriptor.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A listener's own `proxy_protocol` list
/// ([`Builder::proxy_protocol_on`](crate::Builder::proxy_protocol_on)).
#[derive(Debug, Clone)]
pub(crate) struct ListenerProxies {
    /// The listener's position among the server's addresses; `None` when
    /// none was added at `addr` (`Builder::validate` says so).
    pub(crate) listener: Option<usize>,
    /// The address it was given for.
    pub(crate) addr: SocketAddr,
    /// Its sources; `None`: no header is read on it.
    pub(crate) trusted: Option<TrustedProxies>,
}

/// Whether a connection accepted from `peer` on the listener at `local`
/// must start with a header.
#[inline]
pub(crate) fn expected(
    config: &crate::conn::config::Config,
    local: SocketAddr,
    peer: SocketAddr,
) -> bool {
    trusted_on(config, local).is_some_and(|trusted| trusted.contains(peer.ip()))
}

/// The sources trusted on the listener at `local`: its own list, if it
/// was given one, else the server's. With no listener given a list of
/// its own (the usual case), the server's at once.
#[inline]
fn trusted_on(config: &crate::conn::config::Config, local: SocketAddr) -> Option<&TrustedProxies> {
    if config.proxy_protocol_listeners.is_empty() {
        return config.proxy_protocol.as_ref();
    }
    own_list(config, local).unwrap_or(config.proxy_protocol.as_ref())
}

/// The list of its own the listener at `local` was given, if any (its
/// `None`: none trusted there), the listener found as every
/// per-listener setting's is ([`Config::listener_at`](crate::conn::config::Config::listener_at)).
#[cold]
fn own_list(
    config: &crate::conn::config::Config,
    local: SocketAddr,
) -> Option<Option<&TrustedProxies>> {
    let listener = config.listener_at(local)?;
    config
        .proxy_protocol_listeners
        .iter()
        .rev()
        .find(|own| own.listener == Some(listener))
        .map(|own| own.trusted.as_ref())
}

/// What a task serving a proxied connection knows of it that its socket
/// and its stream do not say: the balancer its header came through
/// (`None` after a `LOCAL` or `UNKNOWN` header: the socket's own peer
/// stands, and nothing was proxied), and, in its first task, when it was
/// accepted (the header's wait came before its protocol's).
///
/// Why in the task ([`serving`]), not in the stream (as TLS keeps its
/// accept in its session's box): a proxied cleartext connection is served
/// on the same stream types as every other (`TcpStream`, then the parking
/// lot's `WokenSocket`), which have no room to spare (a field grows every
/// cleartext connection's future, at its bound), and a stream type of its
/// own would build the HTTP/1.1 engine, and h2c's HTTP/2, once more for
/// it. A task without it pays a thread-local read where it is asked: a
/// first request's wait ([`accepted_here`]) and, with `connect_info`,
/// each request ([`balancer_here`]); no lookup, no system call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxiedTask {
    /// The balancer's address (the socket's peer), when the header named
    /// a client.
    pub(crate) by: Option<SocketAddr>,
    /// The connection's accept, in the task that read its header; `None`
    /// in a task that woke it from the parking lot (its wait began then).
    pub(crate) accepted: Option<tokio::time::Instant>,
}

tokio::task_local! {
    /// The proxied connection the current task serves ([`ProxiedTask`]).
    static SERVING: ProxiedTask;
}

/// Runs `serve` as the task serving the proxied connection `task` says.
pub(crate) fn serving<F: std::future::Future>(
    task: ProxiedTask,
    serve: F,
) -> impl std::future::Future<Output = F::Output> {
    SERVING.scope(task, serve)
}

/// The balancer whose PROXY header named the client of the connection the
/// current task serves, if it is one ([`ProxiedTask::by`]).
#[inline]
pub(crate) fn balancer_here() -> Option<SocketAddr> {
    SERVING.try_with(|task| task.by).ok().flatten()
}

/// When the proxied connection the current task serves was accepted, in
/// the task that read its header ([`ProxiedTask::accepted`]): a drain's
/// 5 s for its first request count from there
/// ([`Parkable::accepted_at`](crate::conn::transport::Parkable::accepted_at)).
#[inline]
pub(crate) fn accepted_here() -> Option<tokio::time::Instant> {
    SERVING.try_with(|task| task.accepted).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_ipv4(client: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut body = client.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(tlvs);
        v2(1, 0x11, &body)
    }

    /// The docs say in words how long a header is waited for with
    /// `read_header_timeout` off ("10 s"; the log line prints the
    /// constant): the README's section, the builder's doc and this
    /// module's map say what [`PROXY_HEADER_TIMEOUT`] is.
    #[test]
    fn the_docs_say_the_header_timeout_the_constant_is() {
        assert_eq!(
            PROXY_HEADER_TIMEOUT.subsec_nanos(),
            0,
            "said in whole seconds"
        );
        let said = format!("{} s with it off", PROXY_HEADER_TIMEOUT.as_secs());
        let readme = include_str!("../../../../README.md");
        let section = readme
            .split("### Behind a load balancer (PROXY protocol)")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("the README's PROXY protocol section");
        let builder = include_str!("../server/builder.rs");
        let doc = builder
            .split("pub fn proxy_protocol(")
            .next()
            .and_then(|before| before.rsplit("\n\n").next())
            .expect("Builder::proxy_protocol's doc");
        let map = include_str!("proxy_header.rs")
            .split("\nuse ")
            .next()
            .expect("this module's doc");
        for (what, text) in [("README", section), ("builder", doc), ("module map", map)] {
            // Joined as a reader sees it, across the doc's line breaks.
            let text = text
                .replace("\n", " ")
                .replace("/// ", "")
                .replace("//! ", "");
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(text.contains(&said), "the {what} does not say {said:?}");
        }
    }

    /// The metric's labels are the outcomes', in their order.
    #[test]
    fn each_outcome_has_its_label() {
        use HeaderOutcome::*;
        let labels =
            [Ok, Local, Missing, Invalid, TooLarge].map(|o| HeaderOutcome::LABELS[o as usize]);
        assert_eq!(labels, ["ok", "local", "missing", "invalid", "too_large"]);
    }

    #[test]
    fn trusted_networks_parse_and_match() {
        let t: TrustedProxies = " 10.0.0.0/8, 192.168.1.5 ,fd00::/8".parse().unwrap();
        assert_eq!(t.to_string(), "10.0.0.0/8,192.168.1.5/32,fd00::/8");
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(
            t.contains("::ffff:10.1.1.1".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(t.contains("192.168.1.5".parse().unwrap()));
        assert!(!t.contains("192.168.1.6".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        let all: TrustedProxies = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert_eq!(
            "10.1.2.3/8".parse::<TrustedProxies>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "",
            " , ",
            "10.0.0.0/33",
            "fd00::/129",
            "example.com",
            "10.0.0.0/x",
        ] {
            let e = bad.parse::<TrustedProxies>().unwrap_err().to_string();
            assert!(e.starts_with("proxy_protocol: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn v1_headers_name_the_client_and_their_length() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        let len = h.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(
            parse(h),
            Parsed::Whole(len, Header::Client("203.0.113.7:51234".parse().unwrap()))
        );
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            parse(h6),
            Parsed::Whole(
                h6.len(),
                Header::Client("[2001:db8::7]:4000".parse().unwrap())
            )
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Whole(15, Header::Local)
        );
    }

    #[test]
    fn v2_headers_name_the_client_and_skip_their_tlvs() {
        let tlvs = [0x04, 0x00, 0x02, 0xAB, 0xCD]; // NOOP, 2 bytes
        let mut h = v2_ipv4([198, 51, 100, 9], 40000, &tlvs);
        let len = h.len();
        h.extend_from_slice(b"\x16\x03\x01"); // a ClientHello behind it
        assert_eq!(
            parse(&h),
            Parsed::Whole(len, Header::Client("198.51.100.9:40000".parse().unwrap()))
        );
        assert_eq!(
            parse(&v2(0, 0, &[])),
            Parsed::Whole(16, Header::Local),
            "LOCAL"
        );
        assert_eq!(
            parse(&v2(1, 0, &[])),
            Parsed::Whole(16, Header::Local),
            "UNSPEC"
        );
    }

    /// Every prefix of a header is partial, never refused: a header split
    /// across reads waits for its rest.
    #[test]
    fn every_prefix_of_a_header_is_partial() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n".to_vec();
        let v2 = v2_ipv4([198, 51, 100, 9], 40000, &[0x04, 0x00, 0x01, 0x00]);
        for h in [v1, v2] {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Parsed::Partial, "{cut} of {}", h.len());
            }
            assert!(matches!(parse(&h), Parsed::Whole(n, _) if n == h.len()));
        }
    }

    #[test]
    fn other_bytes_broken_and_oversized_headers_are_refused() {
        use HeaderOutcome::*;
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Refused(Missing));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parsed::Refused(Missing));
        assert_eq!(
            parse(b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"),
            Parsed::Refused(Invalid)
        );
        assert_eq!(parse(b"PROXY TCP9 a b c d\r\n"), Parsed::Refused(Invalid));
        // A v1 line with no end within 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Parsed::Refused(TooLarge));
        // A v2 header announcing more than the bound: refused from its
        // first 16 bytes.
        let mut big = v2(1, 0x11, &[]);
        big[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&big), Parsed::Refused(TooLarge));
        // A bad version or command.
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x31;
        assert_eq!(parse(&bad), Parsed::Refused(Invalid));
    }

    /// Bytes made up at random, most of them a valid header with a few
    /// bytes changed, added or cut (a cheap fuzz, seeded), never panic
    /// the parser, and what it answers holds up: a whole header of `len`
    /// bytes parses alone as the same header (it needs nothing past
    /// itself and takes all of itself: a length off by one either way
    /// fails here), ends as its version says (v1 with its line's end, v2
    /// at the length it announces) within the bound; a partial one is
    /// shorter than the most a header may take (a parser waiting past it
    /// would hold the connection to its timeout). The rounds reach each
    /// answer: a fuzz that saw only refusals would test nothing.
    #[test]
    fn random_bytes_give_answers_that_hold() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        let valid = [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_ipv4([198, 51, 100, 9], 40000, &[0x04, 0x00, 0x01, 0x00]),
            v2(0, 0, &[]),
        ];
        let alphabet = b"0123456789abcdef.: PROXYTCP46UNKNOWN\r\n\x00\x01\x11\x20\x21\x31\xff";
        let mut seen = [0usize; 3];
        for round in 0..50_000 {
            let mut bytes = valid[round % valid.len()].clone();
            for _ in 0..next() % 4 {
                let at = next() % (bytes.len() + 1);
                let b = alphabet[next() % alphabet.len()];
                match next() % 4 {
                    0 if at < bytes.len() => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            if next() % 2 == 0 {
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            }
            match parse(&bytes) {
                Parsed::Whole(len, header) => {
                    seen[0] += 1;
                    assert!(len <= bytes.len().min(MAX_PROXY_HEADER_BYTES), "{bytes:?}");
                    assert_eq!(
                        parse(&bytes[..len]),
                        Parsed::Whole(len, header),
                        "the header alone: {bytes:?}"
                    );
                    if bytes.starts_with(b"PROXY ") {
                        assert!(len <= V1_MAX && bytes[len - 1] == b'\n', "{len} {bytes:?}");
                    } else {
                        let announced = u16::from_be_bytes([bytes[14], bytes[15]]);
                        assert_eq!(len, V2_FIXED + usize::from(announced), "{bytes:?}");
                    }
                }
                Parsed::Partial => {
                    seen[1] += 1;
                    let most = if bytes.starts_with(b"PROXY ") {
                        V1_MAX
                    } else {
                        MAX_PROXY_HEADER_BYTES
                    };
                    assert!(bytes.len() < most, "partial at {}: {bytes:?}", bytes.len());
                }
                Parsed::Refused(_) => seen[2] += 1,
            }
        }
        assert!(
            seen.iter().all(|n| *n > 1_000),
            "whole, partial, refused: {seen:?}"
        );
    }
}
