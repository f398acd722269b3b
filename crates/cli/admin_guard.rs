//! The admin listener's guard against requests a web browser makes for
//! another site: it has no authentication, so any page open in a browser on
//! the host could otherwise `POST /broadcast` to `127.0.0.1:9090` (a "simple"
//! cross-origin request, `Content-Type: text/plain`, is sent without a CORS
//! preflight; only its answer is hidden from the page), and a DNS-rebinding
//! page (its own name made to resolve to 127.0.0.1) could read `/metrics`
//! and the debug routes as well.
//!
//! Refused with `403 Forbidden`, saying why:
//!
//! - an `Origin` header that is not the admin listener's own origin
//!   (`http://` + an allowed host, below, + the admin port): browsers send
//!   it on every cross-origin `POST` and on rebinding-free cross-origin
//!   fetches; `null` (sandboxed frames, file pages) is refused too;
//! - a `Host` that is a DNS name other than `localhost` (or `*.localhost`,
//!   which browsers resolve to loopback themselves): a rebinding page's
//!   requests carry its own name. An IP literal cannot be rebound, so
//!   `Host` may be the address the listener is bound to, or any IP when it is
//!   bound to all addresses (`0.0.0.0:9090` in a pod, scraped by pod IP).
//!
//! Requests without either header (curl, Prometheus, scripts over HTTP/1.0)
//! pass: only a browser carries a page's intent, and a browser always sends
//! `Host`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use http::{header, Request, Response, StatusCode};
use megaconn::Body;

use crate::admin::{AdminBody, AdminFuture};

/// An admin service `S` behind the guard, for the listener bound at `own`.
#[derive(Debug, Clone)]
pub struct SameSite<S> {
    inner: S,
    own: SocketAddr,
}

impl<S> SameSite<S> {
    /// Guards `inner`, served on the admin listener bound at `own`.
    pub fn new(inner: S, own: SocketAddr) -> SameSite<S> {
        SameSite { inner, own }
    }
}

impl<S> tower::Service<Request<Body>> for SameSite<S>
where
    S: tower::Service<
        Request<Body>,
        Response = Response<AdminBody>,
        Error = Infallible,
        Future = AdminFuture,
    >,
{
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = AdminFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> AdminFuture {
        match refusal(&req, self.own) {
            Some(why) => {
                tracing::warn!(reason = %why, "admin: cross-site request refused");
                let res = crate::admin::text(StatusCode::FORBIDDEN, format!("{why}\n"));
                Box::pin(std::future::ready(Ok(res)))
            }
            None => self.inner.call(req),
        }
    }
}

/// Why `req` to the admin listener bound at `own` is refused, if it is.
fn refusal(req: &Request<Body>, own: SocketAddr) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or(""))
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !allowed_host(host_name(host), own.ip()) {
            return Some(format!(
                "refused: Host {host:?} is not this admin listener's address nor a loopback name \
                 (a browser page can reach it by a name of its own, DNS rebinding); \
                 use http://{own}/ or http://localhost:{}/",
                own.port()
            ));
        }
    }
    let origin = req.headers().get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    if !own_origin(origin, own) {
        return Some(format!(
            "refused: Origin {origin:?} is another site's (a web page in a browser): \
             the admin listener has no authentication and takes requests from itself only"
        ));
    }
    None
}

/// The host of a `Host` value (or an origin's authority), without its port
/// and IPv6 brackets.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// `host` (no port) names the listener bound at `own`: a loopback name, its
/// address, or any IP literal when it is bound to all addresses.
fn allowed_host(host: &str, own: IpAddr) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == own || own.is_unspecified(),
        Err(_) => false,
    }
}

/// `origin` is the admin listener's own: `http://HOST:PORT` with an allowed
/// host and the listener's port.
fn own_origin(origin: &str, own: SocketAddr) -> bool {
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    let port = match authority.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse::<u16>().ok(),
        // No port: 80.
        _ => Some(80),
    };
    port == Some(own.port()) && allowed_host(host_name(authority), own.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: Option<&str>, origin: Option<&str>) -> Request<Body> {
        let mut b = Request::post("/broadcast");
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn hosts_and_origins() {
        let own: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let passes = |h, o| refusal(&request(h, o), own).is_none();
        assert!(passes(None, None));
        assert!(passes(Some("127.0.0.1:9090"), None));
        assert!(passes(Some("localhost:9090"), None));
        assert!(passes(Some("[::1]:9090"), None));
        assert!(passes(Some("LOCALHOST."), None));
        assert!(passes(
            Some("localhost:9090"),
            Some("http://localhost:9090")
        ));
        assert!(passes(
            Some("127.0.0.1:9090"),
            Some("http://127.0.0.1:9090")
        ));
        assert!(!passes(Some("attacker.example:9090"), None));
        assert!(!passes(
            Some("127.0.0.1:9090"),
            Some("http://attacker.example")
        ));
        assert!(!passes(Some("127.0.0.1:9090"), Some("null")));
        // Another local site (another port) is another origin.
        assert!(!passes(
            Some("127.0.0.1:9090"),
            Some("http://localhost:3000")
        ));
        assert!(!passes(
            Some("127.0.0.1:9090"),
            Some("https://127.0.0.1:9090")
        ));
        // Bound to a private address: that address, not another one.
        let private: SocketAddr = "10.0.0.5:9090".parse().unwrap();
        assert!(refusal(&request(Some("10.0.0.5:9090"), None), private).is_none());
        assert!(refusal(&request(Some("10.0.0.6:9090"), None), private).is_some());
        // Bound to all addresses: any IP literal (a pod scraped by its IP).
        let all: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert!(refusal(&request(Some("10.1.2.3:9090"), None), all).is_none());
        assert!(refusal(&request(Some("rebound.example:9090"), None), all).is_some());
    }
}
