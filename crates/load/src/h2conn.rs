//! One `load --http2` connection: the h2 client handshake (prior knowledge for
//! `http://`, ALPN `h2` for `https://`), then up to `--streams K` concurrent
//! streams, each sending the same request, until the budget is spent, the
//! deadline passes or the connection fails (the caller then reconnects).
//!
//! The loop mirrors the HTTP/1.1 one in `conn`: sends when a stream slot (and,
//! in open loop, the schedule) allows, one timer for the deadline, the
//! response timeout and the next intended send, and the same accounting
//! through [`Recorder`]. Unlike HTTP/1.1, each request allocates (h2 streams
//! and the `http::Request` handed to them are per request by design).
//!
//! A graceful close from the server (GOAWAY with NO_ERROR, RFC 9113 §6.8, as
//! `serve --upgrade` and connection-age limits send) is not an error: no new
//! stream is opened, the streams the server kept are answered, and the
//! connection is replaced without spending the budget. A stream it refused
//! (above the GOAWAY's last-stream-id) was not processed, so it is sent
//! again on the next connection (first, keeping its latency start in open
//! loop), counted as `retried` in the report but neither an error nor a
//! request of the budget, as the HTTP/1.1 loop reconnects uncounted after a
//! close between requests. A GOAWAY with an error code, a
//! stream the server kept but the connection lost, or a graceful close that
//! refused everything sent on the connection (one `closed` error, so a server
//! draining every connection cannot keep a run reconnecting forever) counts.

use std::future::poll_fn;
use std::pin::pin;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use h2::client::{ResponseFuture, SendRequest};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::conn::{ConnShared, End, Recorder};
use crate::error::LoadError;
use crate::report::ErrorKind;
use crate::schedule::Schedule;
use crate::transport::Stream;

/// Flow-control window the client grants each stream: large enough that a
/// response body never waits on a WINDOW_UPDATE in a benchmark.
const STREAM_WINDOW: u32 = 1 << 20;
/// Flow-control window the client grants the whole connection.
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2) or carries as pseudo-headers;
/// `-H` values for them are dropped (`Host` becomes the `:authority`).
const NOT_IN_H2: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The request every stream of a `--http2` run sends, built once.
#[derive(Debug, Clone)]
pub(crate) struct H2Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl H2Request {
    /// Builds the request: `authority` is the URL's (or a `Host:` header's),
    /// `path` its path and query; a `Content-Length` is added when there is
    /// a body, as for HTTP/1.1.
    pub(crate) fn new(
        method: &str,
        tls: bool,
        authority: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<H2Request, LoadError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| LoadError::invalid("--method", method, e.to_string()))?;
        let authority = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or(authority, |(_, v)| v.as_str());
        let uri = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| LoadError::invalid("URL", authority, format!("not a valid URI: {e}")))?;
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            if NOT_IN_H2.iter().any(|n| k.eq_ignore_ascii_case(n)) {
                continue;
            }
            let bad = |e: String| LoadError::invalid("--header", format!("{k}: {v}"), e);
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let value = HeaderValue::from_str(v).map_err(|e| bad(e.to_string()))?;
            map.append(name, value);
        }
        let wants_length = !body.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH");
        if wants_length && !map.contains_key(http::header::CONTENT_LENGTH) {
            map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        Ok(H2Request {
            method,
            uri,
            headers: map,
            body: Bytes::from(body),
        })
    }

    /// A fresh `http::Request` (h2 takes it by value, and it is not `Clone`).
    fn build(&self) -> http::Request<()> {
        let mut r = http::Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// One HTTP/2 connection's exchange loop.
pub(crate) struct Exchange<'a> {
    /// The run's shared settings.
    pub shared: &'a ConnShared,
    /// The request to send.
    pub request: &'a H2Request,
    /// Concurrent streams (`--streams`).
    pub streams: usize,
    /// Where results go.
    pub rec: Recorder<'a>,
}

impl Exchange<'_> {
    /// Drives one established connection (opened at `opened`) until the budget
    /// is spent ([`End::Finished`]) or it fails or, with
    /// `--new-connection-per-request`, its one request is answered
    /// ([`End::Reconnect`]).
    pub(crate) async fn serve(
        self,
        io: Stream,
        opened: Instant,
        budget: &mut u64,
        mut schedule: Option<&mut Schedule>,
    ) -> End {
        let sh = self.shared;
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(io);
        let limit = tokio::time::Instant::from_std(sh.deadline.min(opened + sh.timeout));
        let (mut client, connection) = match tokio::time::timeout_at(limit, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return self.fail(&e, budget),
            Err(_) if Instant::now() >= sh.deadline => return End::Finished,
            Err(_) => {
                self.rec.error(ErrorKind::ReadTimeout);
                *budget -= 1;
                return End::Reconnect;
            }
        };
        // The connection task does the socket I/O; it ends when `client` and
        // every stream are dropped (or on a connection error).
        tokio::task::spawn_local(async move {
            let _ = connection.await;
        });

        let streams = if sh.one_per_connection {
            1
        } else {
            self.streams
        };
        let mut inflight = FuturesUnordered::new();
        let mut sent_here = 0u64;
        let mut now = Instant::now();
        let mut last_progress = now;
        let mut free_since = now;
        let mut timer = pin!(tokio::time::sleep_until(tokio::time::Instant::from_std(
            sh.deadline
        )));
        let mut timer_at = sh.deadline;
        // The server sent a graceful GOAWAY: open nothing more, let the
        // streams it kept finish, then reconnect.
        let mut draining = false;
        // Streams answered (any status) or failed on this connection.
        let mut done_here = 0u64;
        loop {
            if draining && inflight.is_empty() {
                if sent_here > 0 && done_here == 0 {
                    // Closed "gracefully" with every request refused: a
                    // server that drains every connection it accepts would
                    // otherwise keep the run reconnecting forever, unseen.
                    self.rec.error(ErrorKind::Closed);
                    *budget -= 1;
                }
                return End::Reconnect;
            }
            // Open streams while a slot, the budget and (open loop) the
            // schedule allow; h2 says when the server's stream limit is reached.
            let mut blocked = false;
            while !draining
                && inflight.len() < streams
                && (inflight.len() as u64) < *budget
                && !(sh.one_per_connection && sent_here > 0)
                && schedule.as_deref().is_none_or(|s| s.next_due() <= now)
            {
                match poll_fn(|cx| client.poll_ready(cx)).now_or_never() {
                    None => {
                        blocked = true;
                        break;
                    }
                    Some(Err(e)) if graceful(&e) => {
                        draining = true;
                        break;
                    }
                    Some(Err(e)) => return self.fail(&e, budget),
                    Some(Ok(())) => {}
                }
                // A request a graceful GOAWAY refused goes first, with
                // the latency start of its first send.
                let again = schedule.as_deref_mut().and_then(Schedule::take_again);
                let start = match (again, schedule.as_deref_mut()) {
                    (Some(start), _) => start,
                    (None, Some(s)) => match s.take(now) {
                        Some(intended) => s.latency_start(intended, free_since, now),
                        None => break,
                    },
                    // A connection of its own: latency includes connect and handshake.
                    (None, None) if sh.one_per_connection => opened,
                    (None, None) => now,
                };
                let response = match self.send(&mut client) {
                    Ok(r) => r,
                    Err(e) if graceful(&e) => {
                        // Nothing went on the wire: the request is sent
                        // on the next connection, keeping its start
                        // (counted sent once, when it goes).
                        self.rec.sent(1);
                        self.refused(start, schedule.as_deref_mut());
                        draining = true;
                        break;
                    }
                    Err(e) => return self.fail(&e, budget),
                };
                if inflight.is_empty() {
                    last_progress = now;
                }
                inflight.push(receive(response, start));
                sent_here += 1;
                self.rec.sent(1);
            }

            // Wake-up time: deadline, response timeout, next intended send.
            let mut wake = sh.deadline;
            if !inflight.is_empty() {
                wake = wake.min(last_progress + sh.timeout);
            }
            if let Some(s) = schedule.as_deref() {
                if inflight.len() < streams && !blocked && !draining {
                    wake = wake.min(s.next_due());
                }
            }
            if wake < timer_at || timer.is_elapsed() {
                timer.as_mut().reset(tokio::time::Instant::from_std(wake));
                timer_at = wake;
            }

            tokio::select! {
                biased;
                Some((start, result)) = inflight.next(), if !inflight.is_empty() => {
                    now = Instant::now();
                    last_progress = now;
                    if inflight.len() + 1 == streams {
                        free_since = now; // a slot frees up now
                    }
                    match result {
                        Err(e) if graceful(&e) => {
                            // Refused by a graceful GOAWAY, so not processed
                            // (RFC 9113 §6.8): sent again on the next
                            // connection, neither an error nor a request of
                            // the budget. The streams the server kept go on.
                            self.refused(start, schedule.as_deref_mut());
                            draining = true;
                            continue;
                        }
                        Ok((status, bytes)) => {
                            done_here += 1;
                            *budget -= 1;
                            self.rec.read(bytes);
                            let ok = self.rec.response(status, start, now);
                            self.rec.succeeded(ok);
                        }
                        Err(e) => {
                            done_here += 1;
                            *budget -= 1;
                            self.rec.error(error_kind(&e));
                            // A reset of this one stream leaves the others going.
                            if !stream_only(&e) {
                                return End::Reconnect;
                            }
                        }
                    }
                    if *budget == 0 {
                        return End::Finished;
                    }
                    if sh.one_per_connection {
                        return End::Reconnect;
                    }
                }
                ready = poll_fn(|cx| client.poll_ready(cx)), if blocked => {
                    now = Instant::now();
                    match ready {
                        Err(e) if graceful(&e) => draining = true,
                        Err(e) => return self.fail(&e, budget),
                        Ok(()) => {}
                    }
                }
                () = timer.as_mut() => {
                    now = Instant::now();
                    if now >= sh.deadline {
                        return End::Finished;
                    }
                    if !inflight.is_empty() && now >= last_progress + sh.timeout {
                        // Nothing answered for a whole timeout: every stream in
                        // flight failed.
                        let failed = (inflight.len() as u64).min(*budget);
                        for _ in 0..failed {
                            self.rec.error(ErrorKind::ReadTimeout);
                        }
                        *budget -= failed;
                        return End::Reconnect;
                    }
                    // Open-loop send due, or the timer was early: re-arm.
                    timer_at = now;
                }
            }
        }
    }

    /// Opens a stream and sends the request on it.
    fn send(&self, client: &mut SendRequest<Bytes>) -> Result<ResponseFuture, h2::Error> {
        let body = &self.request.body;
        let (response, mut stream) = client.send_request(self.request.build(), body.is_empty())?;
        if !body.is_empty() {
            // Without reserved capacity h2 buffers what the window does not
            // yet allow; a load-test body is small.
            stream.send_data(body.clone(), true)?;
        }
        Ok(response)
    }

    /// A request (latency clock started at `start`) a graceful GOAWAY
    /// refused unprocessed: counted as retried and, in open loop, given
    /// back to the schedule so that it goes first on the next connection
    /// with its start (in closed loop the next send simply takes its
    /// place). Its send is uncounted: it counts when it goes again.
    fn refused(&self, start: Instant, schedule: Option<&mut Schedule>) {
        self.rec.retried();
        if let Some(s) = schedule {
            s.give_back(start);
        }
    }

    /// Counts a connection-level failure and asks for a reconnect.
    fn fail(&self, e: &h2::Error, budget: &mut u64) -> End {
        self.rec.error(error_kind(e));
        *budget -= 1;
        End::Reconnect
    }
}

/// Waits for a response and reads its body (and trailers) to the end, giving
/// the flow-control window back as it goes; returns the status and body bytes.
async fn receive(
    response: ResponseFuture,
    start: Instant,
) -> (Instant, Result<(u16, u64), h2::Error>) {
    let result = async {
        let response = response.await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        body.trailers().await?;
        Ok((status, bytes))
    }
    .await;
    (start, result)
}

/// The report's error kind for an h2 failure.
fn error_kind(e: &h2::Error) -> ErrorKind {
    if let Some(io) = e.get_io() {
        return match io.kind() {
            std::io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            _ => ErrorKind::of_io(io),
        };
    }
    if e.is_go_away() {
        ErrorKind::Closed
    } else if e.is_reset() {
        ErrorKind::Reset
    } else {
        ErrorKind::BadResponse
    }
}

/// True for the server's graceful close: a GOAWAY it sent with NO_ERROR.
/// h2 reports it for every stream opened after it (the connection's error)
/// and for each in-flight stream above its last-stream-id (not processed).
fn graceful(e: &h2::Error) -> bool {
    e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
}

/// True when only one stream failed (RST_STREAM) and the connection lives on.
fn stream_only(e: &h2::Error) -> bool {
    e.is_reset() && !e.is_go_away() && !e.is_io()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_move_host_to_authority_and_drop_connection_headers() {
        let headers = vec![
            ("Host".to_string(), "example.test".to_string()),
            ("Connection".to_string(), "close".to_string()),
            ("X-A".to_string(), "1".to_string()),
        ];
        let r = H2Request::new(
            "POST",
            true,
            "127.0.0.1:8443",
            "/e?x=1",
            &headers,
            b"abc".to_vec(),
        )
        .unwrap()
        .build();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().to_string(), "https://example.test/e?x=1");
        assert_eq!(r.headers().len(), 2, "{:?}", r.headers());
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["content-length"], "3");
        let r = H2Request::new("GET", false, "127.0.0.1:80", "/", &[], Vec::new()).unwrap();
        assert!(r.build().headers().is_empty());
        assert_eq!(r.uri.scheme_str(), Some("http"));
    }
}
