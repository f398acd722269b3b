//! Parsing of command-line values shared by `load` and `hold`: durations (the
//! grammar itself is in [`crate::units`], shared with `serve`), targets
//! (`http://…` and `https://…` URLs and `tcp://ADDR`), source-address ranges, headers, bodies and
//! escaped heartbeat lines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::error::LoadError;

/// Parses a duration in the shared grammar ([`crate::units`]): `10s`, `30sec`,
/// `1m`, `500ms`, `2h`, `1.5s`, `250us` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s)
}

/// What kind of target a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// HTTP requests in cleartext.
    Http,
    /// HTTP requests over TLS (`load` only).
    Https,
    /// Raw TCP lines (`hold` only).
    Tcp,
    /// WebSocket in cleartext (see `ws`).
    Ws,
    /// WebSocket over TLS (`hold` only).
    Wss,
}

/// A parsed and resolved target.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// HTTP or raw TCP.
    pub scheme: Scheme,
    /// The resolved socket address.
    pub addr: SocketAddr,
    /// The `Host` header value (`host[:port]` as written).
    pub host: String,
    /// The request target: path and query, at least `/`.
    pub path: String,
}

/// Parses `http://host:port/path`, `https://host:port/path`, `host:port/path`
/// (HTTP assumed) or `tcp://host:port`.
pub(crate) fn parse_target(s: &str) -> Result<Target, LoadError> {
    let bad = |hint: &str| LoadError::invalid("target", s, hint);
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = s.strip_prefix("tcp://") {
        (Scheme::Tcp, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = s.strip_prefix("ws://") {
        (Scheme::Ws, r)
    } else if let Some(r) = s.strip_prefix("wss://") {
        (Scheme::Wss, r)
    } else if s.contains("://") {
        return Err(bad(
            "use http://HOST:PORT/PATH, https://HOST:PORT/PATH, ws://HOST:PORT/PATH, wss://HOST:PORT/PATH or tcp://HOST:PORT",
        ));
    } else {
        (Scheme::Http, s)
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("missing host, e.g. http://127.0.0.1:8080/"));
    }
    if scheme == Scheme::Tcp && path != "/" {
        return Err(bad("a tcp:// target has no path; use tcp://HOST:PORT"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else if scheme == Scheme::Http || scheme == Scheme::Ws {
        format!("{authority}:80")
    } else if scheme == Scheme::Https || scheme == Scheme::Wss {
        format!("{authority}:443")
    } else {
        return Err(bad(
            "a tcp:// target needs a port, e.g. tcp://127.0.0.1:9000",
        ));
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve host: {e}")))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| bad("host resolved to no address"))?;
    Ok(Target {
        scheme,
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// Parses source addresses: `127.0.0.2`, `127.0.0.2-127.0.0.40`, or a comma-separated
/// list of those. Ranges are IPv4 and inclusive.
pub(crate) fn parse_sources(s: &str) -> Result<Vec<IpAddr>, LoadError> {
    const MAX: u64 = 1 << 16;
    let bad = |hint: &str| LoadError::invalid("--source", s, hint);
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| bad("range ends must be IPv4 addresses"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| bad("range ends must be IPv4 addresses"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a {
                return Err(bad("range end is below its start"));
            }
            if u64::from(b - a) + out.len() as u64 >= MAX {
                return Err(bad("too many source addresses (at most 65536)"));
            }
            out.extend((a..=b).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            out.push(
                part.parse()
                    .map_err(|_| bad("expected an IP address or A-B range"))?,
            );
        }
    }
    if out.is_empty() {
        return Err(bad("no address given"));
    }
    Ok(out)
}

/// Validates a `K: V` header and returns it normalised as `K: V`.
pub(crate) fn parse_header(s: &str) -> Result<(String, String), LoadError> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| LoadError::invalid("--header", s, "expected \"Name: value\""))?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(LoadError::invalid(
            "--header",
            s,
            "the header name must be a non-empty token",
        ));
    }
    let v = v.trim();
    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(LoadError::invalid(
            "--header",
            s,
            "the value must not contain line breaks",
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Reads `--body`: `@path` reads a file, anything else is the body itself.
pub(crate) fn parse_body(s: &str) -> Result<Vec<u8>, LoadError> {
    match s.strip_prefix('@') {
        Some(path) => std::fs::read(path)
            .map_err(|e| LoadError::invalid("--body", s, format!("cannot read the file: {e}"))),
        None => Ok(s.as_bytes().to_vec()),
    }
}

/// Turns `\n`, `\r`, `\t`, `\\` and `\0` escapes into bytes (for `--send`).
pub(crate) fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(other) => out.extend_from_slice(&[b'\\', other]),
            None => out.push(b'\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30sec").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn targets() {
        let t = parse_target("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(
            (t.scheme, t.addr.port(), t.path.as_str()),
            (Scheme::Http, 8080, "/a?b=1")
        );
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = parse_target("127.0.0.1:9").unwrap();
        assert_eq!((t.scheme, t.path.as_str()), (Scheme::Http, "/"));
        let t = parse_target("tcp://127.0.0.1:7000").unwrap();
        assert_eq!(t.scheme, Scheme::Tcp);
        assert!(parse_target("tcp://127.0.0.1").is_err());
        let t = parse_target("https://localhost/x").unwrap();
        assert_eq!(
            (t.scheme, t.addr.port(), t.path.as_str()),
            (Scheme::Https, 443, "/x")
        );
        assert!(parse_target("ftp://127.0.0.1:1/").is_err());
    }

    #[test]
    fn sources() {
        let s = parse_sources("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], "127.0.0.9".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
    }

    #[test]
    fn headers_and_escapes() {
        assert_eq!(
            parse_header("X-A:  b ").unwrap(),
            ("X-A".into(), "b".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
        assert_eq!(unescape(r"PING\n"), b"PING\n");
    }
}
