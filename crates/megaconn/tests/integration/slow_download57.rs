//! A slow download over HTTP/1.1 (session 57; session 56's file-serving
//! review, defect 2): a large response frame goes out from its own bytes
//! behind what the connection buffered (one `writev`), not copied into the
//! write buffer, and the body is asked for its next frame only once that
//! one is all written (`proto/http1/exchange.rs`, `LARGE_FRAME`, 16 KiB).
//! Copied, a slow client's download held each frame twice, and the write
//! buffer took frames up to its high-water mark (64 KiB) and one past it.
//!
//! - every byte arrives, in order, at a client that reads in small steps
//!   through small socket buffers, with a `Content-Length` and chunked:
//!   frames smaller and larger than the threshold mixed, one larger than
//!   the socket's send buffer, the connection's next answer intact after
//!   it; `HEAD` of the same route says the length and sends nothing;
//! - the body is not asked for a frame while the one before it is not all
//!   written: a transport that counts what the server wrote to it, read
//!   by the body when it is asked (no timing);
//! - bytes past a `Content-Length` (dropped) are not counted in the
//!   response-bytes metric, in a small frame or a large one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::common::{self, read_response_buffered, AppServer, SAFETY};

/// The frame sizes of the mixed body: below, at and above the threshold
/// (16 KiB), one of 1 MiB (above the server's send buffer, set to 64 KiB
/// here, and the client's receive buffer), small ones between.
const MIX: [usize; 9] = [
    100,
    20_000,
    1 << 20,
    3,
    16 * 1024,
    16 * 1024 - 1,
    70_000,
    1,
    300_000,
];

/// The byte at offset `i` of a body: not one byte repeated, so that a
/// byte out of place (a frame sent twice, cut, or out of order) shows.
fn byte_at(i: usize) -> u8 {
    (i % 251) as u8
}

/// The frames of `sizes`, cut from one patterned run of bytes.
fn frames(sizes: &[usize]) -> VecDeque<Bytes> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let frame: Vec<u8> = (at..at + n).map(byte_at).collect();
            at += n;
            Bytes::from(frame)
        })
        .collect()
}

/// A body of given frames, of a known length (`sized`) or not (chunked);
/// when asked for a frame after the first, it notes how many it gave and
/// what the server had written by then (`asked`, with `written`).
struct Pieces {
    frames: VecDeque<Bytes>,
    sized: Option<u64>,
    given: usize,
    watch: Option<(Arc<AtomicU64>, Asked)>,
}

/// (frames given before the ask, bytes the server had written to the
/// socket then).
type Asked = Arc<Mutex<Vec<(usize, u64)>>>;

impl Pieces {
    fn new(frames: VecDeque<Bytes>, sized: bool) -> Pieces {
        let total = frames.iter().map(|f| f.len() as u64).sum();
        Pieces {
            frames,
            sized: sized.then_some(total),
            given: 0,
            watch: None,
        }
    }
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let (Some((written, asked)), true) = (&this.watch, this.given > 0) {
            asked
                .lock()
                .unwrap()
                .push((this.given, written.load(SeqCst)));
        }
        this.given += 1;
        Poll::Ready(this.frames.pop_front().map(|f| Ok(Frame::data(f))))
    }

    fn size_hint(&self) -> SizeHint {
        match self.sized {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Routes: `/sized` and `/chunked`, the [`MIX`] body with a length and
/// without; `/small`, `ok`; `/over-large`, a 50,000-byte frame under a
/// `Content-Length` of 20,000; `/over-small`, 10 bytes under 3; `/empty`.
fn app() -> impl megaconn::HttpService<Future: 'static, ResBody: 'static> + Clone + Send {
    tower::service_fn(|req: Request<megaconn::Body>| async move {
        let (sizes, sized, declared): (&[usize], bool, Option<u64>) = match req.uri().path() {
            "/sized" => (&MIX, true, None),
            "/chunked" => (&MIX, false, None),
            "/small" => (&[2], true, None),
            "/over-large" => (&[50_000], false, Some(20_000)),
            "/over-small" => (&[10], false, Some(3)),
            _ => (&[], true, None),
        };
        let mut response = Response::new(Pieces::new(frames(sizes), sized));
        if let Some(n) = declared {
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok::<_, Infallible>(response)
    })
}

/// A client socket with a small receive buffer (set before the connect,
/// so that the window is small from the start).
async fn small_window_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// One small read (at most 1,000 bytes) onto the end of `raw`, then a
/// yield: a reader slower than the server.
async fn read_a_little(s: &mut TcpStream, raw: &mut Vec<u8>) {
    let mut step = [0u8; 1000];
    let n = s.read(&mut step).await.expect("read");
    assert!(n > 0, "closed mid-response after {} bytes", raw.len());
    raw.extend_from_slice(&step[..n]);
    tokio::task::yield_now().await;
}

/// Reads one response (its first bytes in `raw`, if any) in small steps
/// ([`read_a_little`]): its head's text and its body, decoded from its
/// `Content-Length` or its chunks. What came after it is left in `raw`.
async fn read_slowly(s: &mut TcpStream, raw: &mut Vec<u8>) -> (String, Vec<u8>) {
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        read_a_little(s, raw).await;
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).unwrap();
    let mut at = head_end;
    let mut body = Vec::new();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.parse::<usize>().unwrap());
    if let Some(length) = length {
        while raw.len() < at + length {
            read_a_little(s, raw).await;
        }
        body.extend_from_slice(&raw[at..at + length]);
        raw.drain(..at + length);
        return (head, body);
    }
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    loop {
        let line_end = loop {
            if let Some(p) = raw[at..].windows(2).position(|w| w == b"\r\n") {
                break at + p;
            }
            read_a_little(s, raw).await;
        };
        let size_text = std::str::from_utf8(&raw[at..line_end]).unwrap();
        let size = usize::from_str_radix(size_text, 16).expect("a chunk size");
        at = line_end + 2;
        while raw.len() < at + size + 2 {
            read_a_little(s, raw).await;
        }
        assert_eq!(&raw[at + size..at + size + 2], b"\r\n", "a chunk's CRLF");
        if size == 0 {
            raw.drain(..at + 2);
            return (head, body);
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// The [`MIX`] body, as it should arrive.
fn mix() -> Vec<u8> {
    (0..MIX.iter().sum::<usize>()).map(byte_at).collect()
}

/// Every byte, in order, to a client that reads in small steps through
/// small buffers, with a `Content-Length` and chunked; the connection's
/// next answer is intact after it, and `HEAD` of the route says its
/// length and sends no body.
#[tokio::test]
async fn a_slow_reader_gets_every_byte_of_a_large_body_in_order() {
    let builder = megaconn::Server::builder().send_buffer_size(Some(64 * 1024));
    let server = AppServer::one_worker(builder, app());
    let total = MIX.iter().sum::<usize>();
    for route in ["/sized", "/chunked"] {
        let mut s = small_window_client(server.addr()).await;
        let head = format!("HEAD {route} HTTP/1.1\r\nhost: t\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head = read_response_buffered(&mut s, &mut buf, true).await;
        assert_eq!(head.status, 200, "{route}: HEAD");
        if route == "/sized" {
            assert_eq!(head.header("content-length"), Some(&*total.to_string()));
        }
        assert!(head.body.is_empty());
        assert!(
            buf.is_empty(),
            "{route}: bytes after the HEAD answer: {buf:?}"
        );
        // The body's request and one after it, pipelined.
        let gets = format!(
            "GET {route} HTTP/1.1\r\nhost: t\r\n\r\nGET /small HTTP/1.1\r\nhost: t\r\n\r\n"
        );
        s.write_all(gets.as_bytes()).await.unwrap();
        let (head, body) = tokio::time::timeout(SAFETY, read_slowly(&mut s, &mut buf))
            .await
            .expect("the body came within the hang guard");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body.len(), total, "{route}: the body's length");
        let wrong = body.iter().zip(mix()).position(|(got, want)| *got != want);
        assert_eq!(wrong, None, "{route}: the first byte out of place");
        let next = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(
            (next.status, &next.body[..]),
            (200, &b"\0\x01"[..]),
            "{route}"
        );
    }
}

/// The server's end of a TCP connection, counting the bytes the server
/// wrote to it: a caller's transport (`Builder::serve_connection`), which
/// writes one piece a write (it is not vectored).
struct Counting {
    io: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = wrote {
            self.written.fetch_add(n as u64, SeqCst);
        }
        wrote
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl megaconn::Transport for Counting {}

/// The body is not asked for its next frame while the frame before it is
/// not all written: each time it is asked, the server has written at
/// least the frames it gave before. Frames of 32 KiB (above the threshold,
/// below the write buffer's high-water mark, so that, copied, two of them
/// were taken before anything was written), with a length and chunked.
#[tokio::test]
async fn the_body_is_asked_for_a_frame_only_once_the_one_before_is_written() {
    const FRAME: usize = 32 * 1024;
    const COUNT: usize = 12;
    for sized in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let asked: Asked = Arc::default();
        let io = Counting {
            io: ours,
            written: written.clone(),
        };
        let watch = (written.clone(), asked.clone());
        let app = tower::service_fn(move |_: Request<megaconn::Body>| {
            let mut body = Pieces::new(frames(&[FRAME; COUNT]), sized);
            body.watch = Some(watch.clone());
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
        let builder = megaconn::Server::builder();
        let server = builder.serve_connection(io, app);
        let client = async {
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        };
        let ((), all) = tokio::time::timeout(SAFETY, async { tokio::join!(server, client) })
            .await
            .expect("served within the hang guard");
        let response = common::try_parse_response(&all, false)
            .expect("a whole response")
            .0;
        assert_eq!(response.body.len(), FRAME * COUNT, "sized: {sized}");
        let framing = if sized {
            CONTENT_LENGTH
        } else {
            TRANSFER_ENCODING
        };
        assert!(
            response.header(framing.as_str()).is_some(),
            "sized: {sized}"
        );
        let asked = asked.lock().unwrap().clone();
        // Asked after each frame, and once more for the end (chunked; a
        // sized body ends at its length, asked or not).
        assert!(asked.len() >= COUNT - 1, "sized: {sized}: {asked:?}");
        for (given, written) in asked {
            let given_bytes = (given * FRAME) as u64;
            assert!(
                written >= given_bytes,
                "sized: {sized}: the body was asked for frame {} with {written} bytes \
                 written to the socket, fewer than the {given_bytes} of the {given} \
                 frame(s) it gave before: a frame waited in the server's buffer while \
                 the body was asked for more",
                given + 1
            );
        }
    }
}

/// Bytes of a body past its `Content-Length` are dropped (session 56) and
/// not counted in `megaconn_response_body_bytes_total`: only the declared
/// length, from a large frame and from a small one.
#[tokio::test]
async fn bytes_past_the_content_length_are_not_counted_as_sent() {
    let server = AppServer::one_worker(megaconn::Server::builder(), app());
    let mut s = common::connect_from_own_address(server.addr()).await;
    let mut buf = Vec::new();
    for (path, length) in [("/over-large", 20_000), ("/over-small", 3)] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!((answer.status, answer.body.len()), (200, length), "{path}");
    }
    // Answered after the two on the same connection: their exchanges
    // ended, and their records with them. (It adds no body bytes.)
    s.write_all(b"GET /empty HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response_buffered(&mut s, &mut buf, false).await;
    assert_eq!(answer.status, 200);
    let counted = server.handle.stats().request_metrics.response_body_bytes;
    assert_eq!(
        counted,
        20_000 + 3,
        "response body bytes counted: the declared lengths only"
    );
}
