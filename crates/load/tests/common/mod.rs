//! A tiny HTTP/1.1 (and line-protocol) test server for the load generator's tests:
//! counts requests, connections open and their peak, records what the clients
//! sent (methods, headers, source addresses), and can misbehave on purpose.
#![allow(dead_code, missing_docs)]

mod args;
mod on_thread;
pub use args::{hold_argv, load_args, load_argv};
pub use on_thread::{run_on_thread, serve_on_thread};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `200` with a Content-Length body.
    Fixed,
    /// `200` with a chunked body.
    Chunked,
    /// Every n-th request (server-wide) gets a `500`.
    Every500(u64),
    /// Every n-th response on a connection says `Connection: close`, then closes.
    CloseEvery(u64),
    /// The first connection to send a request is closed right after its response.
    DropFirst,
    /// Line protocol: answers each `PING` line with `PONG`.
    Lines,
    /// Reads requests and never answers.
    Silent,
    /// Reads any bytes (HTTP or not) and never answers.
    Deaf,
    /// Answers each connection's first request only (then reads and never answers).
    AnswerFirst,
    /// Answers each connection's first request, then closes the connection
    /// on the next without answering it.
    AnswerFirstThenClose,
    /// `200` like `Fixed`, each answer written in two pieces a few ms apart
    /// (so the client most likely reads it in two).
    Split,
    /// Closes the connection on each request without answering.
    CloseWithoutReply,
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// `200` with a body of this many bytes, written in one piece (more than
    /// a client's read buffer takes at once).
    Big(usize),
    /// `200` like `Fixed`, each answer written only after this delay (one
    /// request at a time per connection): a connection can never be served
    /// faster than one request per delay, so an open-loop client asking for
    /// more must fall behind.
    Delay(Duration),
}

/// `hold` arguments (after the target) for heartbeats that go unanswered:
/// 3 connections, a beat every 20 ms that fails after 1 s, held 3 s after
/// the ramp (2 s more than every first beat needs to fail, however loaded
/// the machine). `--timeout` also bounds each connect and opening request
/// (the upgrade, the first HTTP request), which a loaded machine may take
/// more than the 100 ms it once was to answer.
pub const UNANSWERED: [&str; 9] = [
    "-q",
    "-c",
    "3",
    "--interval",
    "20ms",
    "--timeout",
    "1s",
    "-d",
    "3s",
];

#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered (lines, in `Lines` mode).
    pub requests: AtomicU64,
    /// Request body bytes received.
    pub body_bytes: AtomicU64,
    /// Connections accepted (including the clients' reachability probes).
    pub accepted: AtomicU64,
    /// Connections open now that have sent at least one request (or line).
    pub open: AtomicU64,
    /// Most such connections open at once.
    pub peak: AtomicU64,
    /// Connections that sent at least one request (or line).
    pub active: AtomicU64,
    /// HTTP requests by method, as the server parsed them.
    pub methods: Mutex<BTreeMap<String, u64>>,
    /// HTTP requests by header, as `(lower-case name, value)`.
    pub headers: Mutex<BTreeMap<(String, String), u64>>,
    /// Connections that sent at least one request (or line), by the client's
    /// source IP address the server saw.
    pub peers: Mutex<BTreeMap<IpAddr, u64>>,
}

impl Stats {
    /// The requests seen with `method`.
    pub fn method(&self, method: &str) -> u64 {
        self.methods
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// The requests seen carrying the header `name: value` (`name` lower case).
    pub fn header(&self, name: &str, value: &str) -> u64 {
        let key = (name.to_string(), value.to_string());
        self.headers.lock().unwrap().get(&key).copied().unwrap_or(0)
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}/hello", self.addr)
    }
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(SeqCst)
    }
}

/// Starts a server on 127.0.0.1 (an ephemeral port) in its own thread.
pub fn start(mode: Mode) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let s = Arc::clone(&stats);
    serve_on_thread(listener, move |sock, peer| {
        s.accepted.fetch_add(1, SeqCst);
        let s = Arc::clone(&s);
        async move {
            let mut active = false;
            let _ = serve(sock, peer.ip(), mode, &s, &mut active).await;
            if active {
                s.open.fetch_sub(1, SeqCst);
            }
        }
    });
    Server { addr, stats }
}

async fn serve(
    mut sock: TcpStream,
    peer: IpAddr,
    mode: Mode,
    s: &Stats,
    active: &mut bool,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    let mut served_here = 0u64;
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !*active {
            *active = true;
            let open = s.open.fetch_add(1, SeqCst) + 1;
            s.peak.fetch_max(open, SeqCst);
            s.active.fetch_add(1, SeqCst);
            *s.peers.lock().unwrap().entry(peer).or_default() += 1;
        }
        let mut close = false;
        if mode == Mode::Deaf {
            buf.clear();
            continue;
        }
        if mode == Mode::Lines {
            while let Some(eol) = buf.iter().position(|&b| b == b'\n') {
                buf.drain(..=eol);
                s.requests.fetch_add(1, SeqCst);
                out.extend_from_slice(b"PONG\n");
            }
        } else {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                let head = match req.parse(&buf) {
                    Ok(httparse::Status::Complete(h)) => h,
                    Ok(httparse::Status::Partial) => break,
                    Err(_) => return Ok(()),
                };
                let len: usize = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value)
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap()
                    });
                if buf.len() < head + len {
                    break;
                }
                *s.methods
                    .lock()
                    .unwrap()
                    .entry(req.method.unwrap_or("").to_string())
                    .or_default() += 1;
                {
                    let mut seen = s.headers.lock().unwrap();
                    for h in req.headers.iter() {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        *seen
                            .entry((h.name.to_ascii_lowercase(), value))
                            .or_default() += 1;
                    }
                }
                buf.drain(..head + len);
                s.body_bytes.fetch_add(len as u64, SeqCst);
                let nth = s.requests.fetch_add(1, SeqCst) + 1;
                served_here += 1;
                match mode {
                    Mode::Silent => continue,
                    Mode::AnswerFirst if served_here > 1 => continue,
                    Mode::AnswerFirstThenClose if served_here > 1 => return Ok(()),
                    Mode::Split => {
                        sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await?;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        out.extend_from_slice(b"ngth: 12\r\n\r\nhello world\n");
                    }
                    Mode::CloseWithoutReply => return Ok(()),
                    Mode::Garbage => out.extend_from_slice(b"SSH-2.0-nope\r\n\r\n"),
                    Mode::Big(len) => {
                        out.extend_from_slice(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                        out.resize(out.len() + len, b'x');
                    }
                    Mode::Chunked => out.extend_from_slice(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                    ),
                    Mode::Every500(k) if nth % k == 0 => {
                        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
                    }
                    Mode::CloseEvery(k) if served_here % k == 0 => {
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
                        close = true;
                    }
                    Mode::Delay(d) => {
                        // Answers are written in order, each after its delay.
                        if !out.is_empty() {
                            sock.write_all(&out).await?;
                            out.clear();
                        }
                        tokio::time::sleep(d).await;
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n");
                    }
                    Mode::DropFirst if nth == 1 => {
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        close = true;
                    }
                    _ => out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n"),
                }
                if close {
                    break;
                }
            }
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
    }
}

/// A port on 127.0.0.1 with nothing listening.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Waits (polling, at most 20 s: reached only when a test fails) until `cond`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
