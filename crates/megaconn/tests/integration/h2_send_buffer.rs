//! `Builder::http2_max_send_buffer` (session 59; a constant,
//! `MAX_SEND_BUFFER`, before): the response bytes an HTTP/2 stream holds
//! queued before its body is polled for more, and the bounds `validate`
//! keeps it in.
//!
//! How it is seen: a client that gives a download large windows (16 MiB)
//! and then reads nothing. The server's connection writes what the
//! transport takes, then its stream queues what the setting lets it, then
//! the body is not polled again: what the body gave is the transport's
//! room, a frame or two in hand, and the setting. Over an in-memory stream
//! of a fixed size (no socket buffers that grow on their own) and on a
//! paused clock, which moves only when no task can run, so a wait on it
//! ends once the server is stuck (no timing: it is how this runtime says
//! that nothing can move).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use megaconn::{Body, Builder, Error, DEFAULT_HTTP2_MAX_SEND_BUFFER};
use tokio::io::AsyncWriteExt;

use super::h2::frame;

/// The size of each of the body's frames.
const CHUNK: usize = 16 * 1024;

/// What the body's frames are cut from.
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// What the in-memory stream holds each way: all the client lets the
/// server write before it is stuck.
const PIPE: usize = 64 * 1024;

/// The windows the client gives: far more than any setting tried here,
/// so the send buffer, not flow control, is what stops the stream.
const WINDOW: u32 = 16 << 20;

/// A response body without end, counting the bytes it gave.
struct Endless(Arc<AtomicUsize>);

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.fetch_add(CHUNK, SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS)))))
    }
}

/// The client's whole side: the preface, its settings (a stream window of
/// [`WINDOW`]), the connection's window raised as much, and a `GET /`
/// that ends its stream.
fn opening() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (4).
    let mut settings = 4u16.to_be_bytes().to_vec();
    settings.extend(WINDOW.to_be_bytes());
    bytes.extend(frame(0x4, 0, 0, &settings));
    // WINDOW_UPDATE on the connection.
    bytes.extend(frame(0x8, 0, 0, &WINDOW.to_be_bytes()));
    // :method GET, :scheme http, :path /, :authority "a" (HPACK's static
    // table, the last a literal).
    let block = [0x82, 0x86, 0x84, 0x01, 1, b'a'];
    bytes.extend(frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM | END_HEADERS
    bytes
}

/// The bytes the body gave, once the server is stuck, on a connection
/// served with `builder`'s settings to a client that sent [`opening`] and
/// reads nothing.
async fn pulled(builder: Builder) -> usize {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counted = pulled.clone();
    let app = tower::service_fn(move |_: Request<Body>| {
        let body = Endless(counted.clone());
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let (mut client, server_end) = tokio::io::duplex(PIPE);
            let builder = builder.idle_timeout(None);
            let served =
                tokio::task::spawn_local(
                    async move { builder.serve_connection(server_end, app).await },
                );
            client.write_all(&opening()).await.unwrap();
            // Each wait ends only once every task waits (the clock is
            // paused): the server is stuck when a wait found no more bytes
            // given than the one before. (A second, of no timer's: the
            // server's are the write stall's, 60 s, and the handshake's.)
            let mut seen = None;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = pulled.load(SeqCst);
                if seen == Some(now) {
                    served.abort();
                    // (The client is dropped only now: its end gone, the
                    // server would have stopped for that.)
                    drop(client);
                    return now;
                }
                seen = Some(now);
            }
            panic!("the body is still polled: {seen:?} bytes");
        })
        .await
}

/// What the body gives a client that reads nothing grows with the
/// setting, by about the setting: 16 KiB and 1 MiB differ by ~1 MiB, and
/// the default is 64 KiB. (With `MAX_SEND_BUFFER`, 64 KiB whatever the
/// setting, the three were the same.)
#[tokio::test(start_paused = true)]
async fn a_stream_queues_up_to_its_send_buffer() {
    let small = pulled(Builder::default().http2_max_send_buffer(16 << 10)).await;
    let large = pulled(Builder::default().http2_max_send_buffer(1 << 20)).await;
    let default = pulled(Builder::default()).await;
    let explicit = pulled(Builder::default().http2_max_send_buffer(64 << 10)).await;
    let said = format!("16 KiB: {small} B, 1 MiB: {large} B, default: {default} B");
    // What the setting does not hold (the stream's room, the frames in
    // hand) is the same both times: the difference is the settings'
    // (1,032,192 B), within a frame or two.
    let apart = large.saturating_sub(small);
    let want = (1 << 20) - (16 << 10);
    assert!(
        apart.abs_diff(want) <= 2 * CHUNK,
        "{apart} B apart, {want} B expected; {said}"
    );
    // And not some other bound: a setting of 16 KiB leaves little more
    // than the stream's room.
    assert!(small <= PIPE + 6 * CHUNK, "{said}");
    assert_eq!(default, explicit, "the default is 64 KiB; {said}");
    assert_eq!(DEFAULT_HTTP2_MAX_SEND_BUFFER, 64 << 10);
}

/// `validate` (and so `listen`) refuses a send buffer of 0 (no stream
/// would ever be granted room: every response with a body would wait for
/// good) and one past HTTP/2's largest window (no stream is granted more
/// than its window), naming the setting; takes both ends of the range.
#[test]
fn a_send_buffer_outside_its_range_is_refused() {
    let max = (1u32 << 31) - 1;
    for bytes in [0, max + 1, u32::MAX] {
        match Builder::default().http2_max_send_buffer(bytes).validate() {
            Err(Error::Config(e)) => assert!(
                e.contains("http2_max_send_buffer must be between 1 and 2147483647"),
                "{bytes}: {e}"
            ),
            other => panic!("{bytes}: {other:?}"),
        }
    }
    for bytes in [1, max] {
        let checked = Builder::default().http2_max_send_buffer(bytes).validate();
        assert!(checked.is_ok(), "{bytes}: {checked:?}");
    }
}
