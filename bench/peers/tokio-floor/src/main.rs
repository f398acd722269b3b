//! bench/peers/tokio-floor — a ruler, not a server (issue 15).
//!
//! The least a keep-alive HTTP/1.1 server built on tokio can spend per
//! request, at four levels, so that what each layer costs can be read off
//! (`bench/lower-bound.sh` counts user-space instructions per request of each
//! with callgrind, beside `bench/peers/floor.c` and megaconn):
//!
//! | level | per request |
//! |---|---|
//! | `raw` | tokio only: a task per connection, `read` into a reused buffer, count the heads by their empty line (as floor.c does), one `write` of fixed responses per read |
//! | `parse` | + `httparse` on each head |
//! | `request` | + an owned `http::Request<()>`: `Method`, a `Uri` and a `HeaderMap` of `HeaderValue`s sliced from the frozen head (no copy), dropped after the "call" |
//! | `full` | + an `http::Response<Bytes>` with one header (what a tower service returns) and its head encoded from it: status line, the headers, a cached `date`, `content-length` |
//!
//! `full` is the floor of any server that speaks `http::Request`/`Response`
//! (tower, axum, hyper, megaconn) on tokio's readiness I/O. It handles none of
//! what a server must (bodies, limits, timeouts, errors beyond closing): it
//! is a lower bound, not a peer.
//!
//! Run: `tokio-floor serve ADDR LEVEL` (current-thread runtime, SIGTERM ends
//! it), or `tokio-floor compute LEVEL N`: the per-request work N times on one
//! buffered request, no I/O (the compute part alone).

use std::hint::black_box;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `megaconn load` sends for `GET http://127.0.0.1:PORT/`.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:24000\r\n\r\n";

/// The fixed answer of `raw` and `parse` (the same as floor.c's).
const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\
Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\nHello, World!";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Raw,
    Parse,
    Request,
    Full,
}

fn level(s: &str) -> Level {
    match s {
        "raw" => Level::Raw,
        "parse" => Level::Parse,
        "request" => Level::Request,
        "full" => Level::Full,
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: tokio-floor serve ADDR raw|parse|request|full\n       tokio-floor compute raw|parse|request|full N");
    std::process::exit(2)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 4 => serve(&args[2], level(&args[3])),
        Some("compute") if args.len() == 4 => {
            let lvl = level(&args[2]);
            let n: u64 = args[3].parse().unwrap_or_else(|_| usage());
            let mut wbuf = BytesMut::with_capacity(4096);
            let mut rbuf = BytesMut::with_capacity(4096);
            for _ in 0..n {
                rbuf.extend_from_slice(REQUEST);
                while answer(&mut rbuf, &mut wbuf, lvl, &mut 0) {}
                black_box(&wbuf[..]);
                wbuf.clear();
            }
            Ok(())
        }
        _ => usage(),
    }
}

fn serve(addr: &str, lvl: Level) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (sock, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = term.recv() => return Ok(()),
            };
            sock.set_nodelay(true)?;
            tokio::spawn(connection(sock, lvl));
        }
    })
}

async fn connection(mut sock: tokio::net::TcpStream, lvl: Level) -> io::Result<()> {
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut wbuf = BytesMut::with_capacity(8192);
    let mut matched = 0u8;
    loop {
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(8192);
        }
        if sock.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        while answer(&mut rbuf, &mut wbuf, lvl, &mut matched) {}
        if !wbuf.is_empty() {
            sock.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
}

/// Answers the first complete request in `rbuf` into `wbuf`; false when none
/// is complete. `matched`: bytes of the empty line seen so far (`raw`).
fn answer(rbuf: &mut BytesMut, wbuf: &mut BytesMut, lvl: Level, matched: &mut u8) -> bool {
    if lvl == Level::Raw {
        // floor.c's count: every "\r\n\r\n" ends a head.
        let mut m = *matched;
        for (i, &ch) in rbuf.iter().enumerate() {
            if ch == if m & 1 == 1 { b'\n' } else { b'\r' } {
                m += 1;
                if m == 4 {
                    *matched = 0;
                    rbuf.advance(i + 1);
                    wbuf.extend_from_slice(RESP);
                    return true;
                }
            } else {
                m = u8::from(ch == b'\r');
            }
        }
        *matched = m;
        rbuf.clear();
        return false;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(rbuf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return false,
        Err(_) => {
            rbuf.clear();
            return false;
        }
    };
    if lvl == Level::Parse {
        black_box(&req);
        rbuf.advance(len);
        wbuf.extend_from_slice(RESP);
        return true;
    }
    // Offsets into the head, so that the head can be frozen and sliced.
    let base = rbuf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let method = Method::from_bytes(req.method.unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let path = at(req.path.unwrap_or("/").as_bytes());
    let mut fields = [((0, 0), (0, 0)); 32];
    let count = req.headers.len();
    for (slot, h) in fields.iter_mut().zip(req.headers.iter()) {
        *slot = (at(h.name.as_bytes()), at(h.value));
    }
    let head: Bytes = rbuf.split_to(len).freeze();
    let slice = |(off, n): (usize, usize)| head.slice(off..off + n);
    let Ok(uri) = Uri::from_maybe_shared(slice(path)) else {
        return true;
    };
    let mut map = HeaderMap::with_capacity(count);
    for &((name_at, name_len), value) in &fields[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[name_at..name_at + name_len]),
            HeaderValue::from_maybe_shared(slice(value)),
        ) else {
            return true;
        };
        map.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    let request = black_box(request);
    if lvl == Level::Request {
        drop(request);
        wbuf.extend_from_slice(RESP);
        return true;
    }
    // The "service": what a tower handler returns for `GET /`.
    let response = black_box(service(request));
    encode(&response, wbuf);
    true
}

fn service(request: Request<()>) -> Response<Bytes> {
    drop(request);
    let mut res = Response::new(Bytes::from_static(b"Hello, World!"));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The response head from the `http` types: status line, every header, a
/// cached `date` (one formatting per second in a real server), the length.
fn encode(response: &Response<Bytes>, wbuf: &mut BytesMut) {
    let status = response.status();
    if status == StatusCode::OK {
        wbuf.put_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        wbuf.put_slice(b"HTTP/1.1 ");
        wbuf.put_slice(status.as_str().as_bytes());
        wbuf.put_u8(b' ');
        wbuf.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        wbuf.put_slice(b"\r\n");
    }
    for (name, value) in response.headers() {
        wbuf.put_slice(name.as_str().as_bytes());
        wbuf.put_slice(b": ");
        wbuf.put_slice(value.as_bytes());
        wbuf.put_slice(b"\r\n");
    }
    wbuf.put_slice(b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\ncontent-length: ");
    let body = response.body();
    let mut digits = [0u8; 20];
    let mut n = body.len();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    wbuf.put_slice(&digits[i..]);
    wbuf.put_slice(b"\r\n\r\n");
    wbuf.put_slice(body);
}
