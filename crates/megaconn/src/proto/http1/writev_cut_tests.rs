//! A large response frame written from its own bytes (`exchange.rs`'s
//! `LARGE_FRAME`, `conn/io.rs`'s `ConnIo::poll_flush_with`) cut at every
//! boundary, on a scripted stream (no socket): a writer that takes k = 1..9
//! bytes a call, vectored (across the buffered head, the frame and its
//! tail in one call) or one piece a call as TLS takes them, and once more
//! answering `Pending` between every two calls. A connection is asked for
//! a sized answer and a chunked one, each with frames under and over 16
//! KiB mixed (the chunked one with trailers), and a small answer pipelined
//! behind them: every byte must come out, in order, exactly once, framed
//! as the head says. A real socket takes what its buffer has room for, so
//! where a write is cut is up to the kernel; here every offset of every
//! boundary (a head's end, a chunk's size line, a frame's last byte, its
//! CRLF) is cut at by some k.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::serve_connection;
use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::transport::{Parkable, Transport};
use crate::observe::stats::WorkerStats;
use crate::Body;

/// The data frames of both large answers: small ones, ones of exactly
/// `LARGE_FRAME` (16 KiB) and one byte either side of it, and a larger.
const FRAMES: &[usize] = &[100, 16_384, 7, 16_385, 1, 16_383, 20_000, 3];

/// The trailer the chunked answer declares and sends.
const TRAILER: (&str, &str) = ("x-check", "42");

/// How the scripted writer takes bytes.
#[derive(Debug, Clone, Copy)]
struct Script {
    /// Bytes taken a call, at most.
    k: usize,
    /// Takes from every slice of a vectored write in one call (a socket's
    /// `writev`), else from the first non-empty one only (tokio's default
    /// for a stream that does not write vectored, such as a caller's own;
    /// TLS takes from every slice since session 59).
    vectored: bool,
    /// Answers `Pending` (waking the task) before every call it takes
    /// bytes in.
    pending_between: bool,
}

/// A stream whose reads give `input` (then wait for good) and whose writes
/// take bytes as its [`Script`] says, into `out`.
struct Scripted {
    input: Vec<u8>,
    read: usize,
    out: Rc<RefCell<Vec<u8>>>,
    script: Script,
    /// The next write call answers `Pending`.
    pend_next: bool,
}

impl Scripted {
    /// One write call on `bufs`.
    fn take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.pend_next {
            self.pend_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pend_next = self.script.pending_between;
        let mut out = self.out.borrow_mut();
        let mut room = self.script.k;
        for buf in bufs.iter().filter(|b| !b.is_empty()) {
            let n = room.min(buf.len());
            out.extend_from_slice(&buf[..n]);
            room -= n;
            if room == 0 || !self.script.vectored {
                break;
            }
        }
        Poll::Ready(Ok(self.script.k - room))
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read == this.input.len() {
            // No end of stream: that would read as the client leaving.
            return Poll::Pending;
        }
        let n = buf.remaining().min(this.input.len() - this.read);
        buf.put_slice(&this.input[this.read..this.read + n]);
        this.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().take(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().take(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.script.vectored
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for Scripted {}

impl Parkable for Scripted {
    const PARKABLE: bool = false;
}

/// A response body of data frames, then trailers if any: each ready when
/// polled.
struct Frames {
    frames: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match this.frames.pop_front() {
            Some(data) => Some(Frame::data(data)),
            None => this.trailers.take().map(Frame::trailers),
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.trailers.is_none()
    }
}

/// The body bytes of the answer whose pattern starts at `seed`: no two
/// neighbours alike, so a byte lost, repeated or moved shows.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((seed + i) % 251) as u8).collect()
}

/// [`FRAMES`] cut out of `body`.
fn frames_of(body: &[u8]) -> VecDeque<Bytes> {
    let mut at = 0;
    FRAMES
        .iter()
        .map(|&n| {
            at += n;
            Bytes::copy_from_slice(&body[at - n..at])
        })
        .collect()
}

fn sized_body() -> Vec<u8> {
    pattern(0, FRAMES.iter().sum())
}

fn chunked_body() -> Vec<u8> {
    pattern(100, FRAMES.iter().sum())
}

/// The service: `/sized` (a `Content-Length`), `/chunked` (declared
/// trailers), anything else `ok`.
async fn answer(request: Request<Body>) -> Result<Response<Frames>, std::convert::Infallible> {
    let mut response = Response::new(Frames {
        frames: VecDeque::new(),
        trailers: None,
    });
    match request.uri().path() {
        "/sized" => {
            let body = sized_body();
            response.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(body.len() as u64),
            );
            response.body_mut().frames = frames_of(&body);
        }
        "/chunked" => {
            response
                .headers_mut()
                .insert(http::header::TRAILER, HeaderValue::from_static(TRAILER.0));
            let mut trailers = HeaderMap::new();
            trailers.insert(TRAILER.0, HeaderValue::from_static(TRAILER.1));
            response.body_mut().frames = frames_of(&chunked_body());
            response.body_mut().trailers = Some(trailers);
        }
        _ => {
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            response.body_mut().frames = [Bytes::from_static(b"ok")].into();
        }
    }
    Ok(response)
}

/// One answer read off the wire: its status, body and trailers.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    trailers: Fields,
}

/// The answers in `wire`, read strictly (a chunk's size line is hex and
/// CRLF, its data is followed by CRLF); `Err` says where the framing broke.
fn answers(wire: &[u8]) -> Result<Vec<Answer>, String> {
    let mut at = 0;
    let mut found = Vec::new();
    while at < wire.len() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut head = httparse::Response::new(&mut headers);
        let len = match head.parse(&wire[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            other => {
                return Err(format!(
                    "answer {} at byte {at}: head {other:?}",
                    found.len()
                ))
            }
        };
        let status = head.code.unwrap_or_default();
        let header = |name: &str| {
            head.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let length = header("content-length");
        let chunked = header("transfer-encoding").is_some_and(|v| v == "chunked");
        at += len;
        let (body, trailers) = match (length, chunked) {
            (Some(n), false) => {
                let n: usize = n.parse().map_err(|_| format!("content-length {n}"))?;
                let body = wire.get(at..at + n).ok_or_else(|| {
                    format!(
                        "answer {}: {n} bytes announced, {} came",
                        found.len(),
                        wire.len() - at
                    )
                })?;
                at += n;
                (body.to_vec(), Vec::new())
            }
            (None, true) => dechunk(wire, &mut at)?,
            framing => return Err(format!("answer {}: framing {framing:?}", found.len())),
        };
        found.push(Answer {
            status,
            body,
            trailers,
        });
    }
    Ok(found)
}

/// Header fields, as read: lower-case names and their values.
type Fields = Vec<(String, String)>;

/// A chunked body from `wire[*at..]`, and its trailers; `*at` moves past it.
fn dechunk(wire: &[u8], at: &mut usize) -> Result<(Vec<u8>, Fields), String> {
    let line = |at: &mut usize| -> Result<String, String> {
        let rest = &wire[*at..];
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| format!("no CRLF after byte {at}"))?;
        *at += end + 2;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let mut body = Vec::new();
    loop {
        let start = *at;
        let size = line(at)?;
        let size = usize::from_str_radix(&size, 16)
            .map_err(|_| format!("chunk size line {size:?} at byte {start}"))?;
        if size == 0 {
            break;
        }
        let data = wire
            .get(*at..*at + size)
            .ok_or_else(|| format!("chunk of {size} at byte {start} cut short"))?;
        body.extend_from_slice(data);
        *at += size;
        if wire.get(*at..*at + 2) != Some(b"\r\n") {
            return Err(format!("no CRLF after the chunk of {size} at byte {start}"));
        }
        *at += 2;
    }
    let mut trailers = Vec::new();
    loop {
        let field = line(at)?;
        if field.is_empty() {
            return Ok((body, trailers));
        }
        let (name, value) = field
            .split_once(": ")
            .ok_or_else(|| format!("trailer {field:?}"))?;
        trailers.push((name.to_ascii_lowercase(), value.to_string()));
    }
}

/// Serves the three pipelined requests over a [`Scripted`] stream, polling
/// the connection (a no-op waker: the script never waits on anything but
/// the next poll) until ten polls in a row write nothing; returns what
/// was written.
fn serve(script: Script) -> Vec<u8> {
    let out = Rc::new(RefCell::new(Vec::new()));
    let stream = Scripted {
        input: b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n\
GET /chunked HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n\
GET /small HTTP/1.1\r\nHost: t\r\n\r\n"
            .to_vec(),
        read: 0,
        out: out.clone(),
        script,
        pend_next: false,
    };
    let ctx = Rc::new(WorkerContext::new(
        0,
        Arc::new(Config::default()),
        Arc::new(WorkerStats::default()),
        None,
    ));
    let app = tower::service_fn(answer);
    // Unconstrained: polled in a loop within one poll of the test's task,
    // tokio's budget would run out and make its timers answer `Pending`.
    let mut conn = Box::pin(tokio::task::unconstrained(serve_connection(
        stream, app, ctx, None, None,
    )));
    let mut cx = Context::from_waker(Waker::noop());
    let (mut idle, mut polls) = (0, 0u64);
    while idle < 10 {
        let before = out.borrow().len();
        assert!(
            conn.as_mut().poll(&mut cx).is_pending(),
            "{script:?}: the connection ended"
        );
        idle = if out.borrow().len() == before {
            idle + 1
        } else {
            0
        };
        polls += 1;
        // A hang guard: a write of at least a byte a poll in two.
        assert!(
            polls < 1_000_000,
            "{script:?}: still writing after {polls} polls"
        );
    }
    drop(conn);
    out.take()
}

/// Every byte of every answer, whatever the cut: the sized and chunked
/// answers' bodies whole and in order, the trailer, and the pipelined
/// `ok` behind them, nothing more.
#[tokio::test(start_paused = true)]
async fn a_large_frame_cut_at_every_boundary_comes_out_whole_and_in_order() {
    for vectored in [true, false] {
        for pending_between in [false, true] {
            for k in 1..=9 {
                let script = Script {
                    k,
                    vectored,
                    pending_between,
                };
                let wire = serve(script);
                let found = answers(&wire).unwrap_or_else(|e| panic!("{script:?}: {e}"));
                let statuses: Vec<u16> = found.iter().map(|a| a.status).collect();
                assert_eq!(statuses, [200, 200, 200], "{script:?}");
                for (got, (name, want)) in found.iter().zip([
                    ("sized", sized_body()),
                    ("chunked", chunked_body()),
                    ("small", b"ok".to_vec()),
                ]) {
                    let first_wrong = got.body.iter().zip(&want).position(|(a, b)| a != b);
                    assert!(
                        got.body == want,
                        "{script:?}: the {name} answer's body: {} bytes, {} due; first wrong byte at {first_wrong:?}",
                        got.body.len(),
                        want.len()
                    );
                }
                let trailer = (TRAILER.0.to_string(), TRAILER.1.to_string());
                assert_eq!(found[1].trailers, [trailer], "{script:?}");
            }
        }
    }
}
