//! `TlsIo`'s vectored write (`poll_write_vectored`, `tls_io.rs`'s `seal`):
//! slices sealed as their concatenation would be, in records of 16 KiB but
//! the last, whatever the slices' boundaries (a chunk's 7-byte size line
//! no longer a record of its own), sent together, and no more plaintext
//! taken a call than `poll_write` takes. A real session pair: the server's
//! handshake runs over an in-memory pipe with a tokio-rustls client, then
//! its socket is swapped for a scripted one ([`Scripted`]) that takes k
//! bytes a call (answering `Pending` between calls, or not) and keeps the
//! ciphertext; the client's rustls session decrypts it, and its record
//! headers are counted.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::tests::configs;
use super::{TlsIo, MAX_WRITE, RECORD};

/// A socket that keeps what it is sent: at most `k` bytes a write call,
/// answering `Pending` (and waking the task) before every call it takes
/// bytes in if `pending_between`. Reads wait for good.
struct Scripted {
    out: Rc<RefCell<Vec<u8>>>,
    k: usize,
    pending_between: bool,
    /// The next write call answers `Pending`.
    pend_next: bool,
    /// Write calls that took bytes: the `send`s a socket would have seen.
    sends: Rc<RefCell<usize>>,
    /// Takes nothing, ever: every write call answers `Pending` (a peer
    /// that stopped reading, its socket's buffer full).
    stalled: bool,
}

impl Scripted {
    fn new(k: usize, pending_between: bool) -> Scripted {
        Scripted {
            out: Rc::default(),
            k,
            pending_between,
            pend_next: false,
            sends: Rc::default(),
            stalled: false,
        }
    }

    /// A socket whose buffer is full for good.
    fn stalled() -> Scripted {
        Scripted {
            stalled: true,
            ..Scripted::new(1, false)
        }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Pending;
        }
        if this.pend_next {
            this.pend_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pend_next = this.pending_between;
        let n = this.k.min(buf.len());
        this.out.borrow_mut().extend_from_slice(&buf[..n]);
        *this.sends.borrow_mut() += 1;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A server stream whose handshake is done, on `sock`, and the client's
/// session, which has read everything the server sent so far (its
/// session tickets, and one record of data): from here on it reads only
/// what `sock` keeps.
async fn on_scripted(sock: Scripted) -> (TlsIo<Scripted>, ClientConnection) {
    let (server_config, client_config) = configs();
    let (server_half, client_half) = tokio::io::duplex(64 * 1024);
    let mut server = TlsIo::new(server_half, server_config).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = ServerName::try_from("localhost").unwrap();
    let (shook, client) = tokio::join!(
        poll_fn(|cx| server.poll_handshake(cx)),
        connector.connect(name, client_half)
    );
    shook.unwrap();
    let mut client = client.unwrap();
    server.write_all(b"ready").await.unwrap();
    server.flush().await.unwrap();
    let mut ready = [0u8; 5];
    client.read_exact(&mut ready).await.unwrap();
    assert_eq!(&ready, b"ready");
    let (_, session) = client.into_inner();
    (server.map_sock(|_| sock), session)
}

/// Writes all of `slices` through `poll_write_vectored` (moving past what
/// each call took, as `ConnIo::poll_flush_with` does), then flushes.
/// Returns what each call took.
async fn write_vectored(server: &mut TlsIo<Scripted>, slices: &[&[u8]]) -> Vec<usize> {
    let mut taken = Vec::new();
    let (mut at, mut within) = (0, 0);
    while at < slices.len() {
        let mut bufs = vec![IoSlice::new(&slices[at][within..])];
        bufs.extend(slices[at + 1..].iter().map(|s| IoSlice::new(s)));
        let n = poll_fn(|cx| Pin::new(&mut *server).poll_write_vectored(cx, &bufs))
            .await
            .unwrap();
        assert!(n > 0, "a write took nothing");
        taken.push(n);
        let mut n = within + n;
        while at < slices.len() && n >= slices[at].len() {
            n -= slices[at].len();
            at += 1;
        }
        within = n;
    }
    server.flush().await.unwrap();
    taken
}

/// The lengths of the TLS records in `ciphertext` (their 5-byte headers
/// read one after the other), each an application-data record (type 23:
/// TLS 1.3 sends nothing else once the handshake is done).
fn records(ciphertext: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut rest = ciphertext;
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a record header cut short");
        assert_eq!(rest[0], 23, "an application-data record");
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        assert!(rest.len() >= 5 + len, "a record cut short");
        lens.push(len);
        rest = &rest[5 + len..];
    }
    lens
}

/// What the client's session decrypts of `ciphertext`.
fn decrypt(client: &mut ClientConnection, ciphertext: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    let mut rest = ciphertext;
    while !rest.is_empty() {
        client.read_tls(&mut rest).unwrap();
        client.process_new_packets().unwrap();
        let _ = io::Read::read_to_end(&mut client.reader(), &mut plain);
    }
    plain
}

/// A chunked answer's large frame as HTTP/1.1 writes it, and more: pieces
/// from 1 byte to 40 KiB, some a record long or a byte either side of one.
fn pieces() -> Vec<Vec<u8>> {
    [
        7,
        1,
        40 << 10,
        3,
        RECORD,
        RECORD - 1,
        2,
        RECORD + 1,
        20_000,
        5,
    ]
    .iter()
    .enumerate()
    .map(|(i, &len)| (0..len).map(|j| (i * 31 + j % 251) as u8).collect())
    .collect()
}

/// Every byte arrives, in order, and in as few records as the bytes
/// would make in one slice (all of 16 KiB but the last): none cut short
/// at a slice's end. So on a socket that takes everything, one that takes
/// a few bytes a call, and one that answers `Pending` between calls.
#[tokio::test]
async fn slices_are_sealed_in_whole_records_and_arrive_in_order() {
    let pieces = pieces();
    let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let want: Vec<u8> = pieces.concat();
    for (k, pending_between) in [
        (usize::MAX, false),
        (usize::MAX, true),
        (1, true),
        (7, false),
        (4096, true),
        (RECORD + 27, false),
    ] {
        let (mut server, mut client) = on_scripted(Scripted::new(k, pending_between)).await;
        let out = server.get_ref().out.clone();
        let taken = write_vectored(&mut server, &slices).await;
        assert!(
            taken.iter().all(|&n| n <= MAX_WRITE),
            "no more taken a call than poll_write takes: {taken:?}"
        );
        let ciphertext = out.borrow().clone();
        let got = decrypt(&mut client, &ciphertext);
        assert!(
            got == want,
            "k = {k}, pending between: {pending_between}: {} bytes of {} arrived, \
             the first {} in order",
            got.len(),
            want.len(),
            got.iter().zip(&want).take_while(|(a, b)| a == b).count()
        );
        let lens = records(&ciphertext);
        assert_eq!(
            lens.len(),
            want.len().div_ceil(RECORD),
            "k = {k}: records for {} bytes in {} slices: {lens:?}",
            want.len(),
            slices.len()
        );
        assert!(
            server.bufs.outgoing.is_none(),
            "an idle stream holds no buffer once its records went"
        );
    }
}

/// A chunk of 64 KiB as HTTP/1.1's chunked answer writes it from its own
/// bytes (its size line, the data, its CRLF: `ConnIo::poll_flush_with`):
/// five records and two sends (a call's plaintext is at most four
/// records), where a slice a call made six and three.
#[tokio::test]
async fn a_64_kib_chunk_takes_five_records_and_two_sends() {
    let data = vec![b'x'; 64 << 10];
    let slices: [&[u8]; 3] = [b"10000\r\n", &data, b"\r\n"];
    let (mut server, mut client) = on_scripted(Scripted::new(usize::MAX, false)).await;
    let out = server.get_ref().out.clone();
    let sends = server.get_ref().sends.clone();
    *sends.borrow_mut() = 0;
    let taken = write_vectored(&mut server, &slices).await;
    assert_eq!(taken, [MAX_WRITE, 9], "what each call took");
    let ciphertext = out.borrow().clone();
    assert_eq!(decrypt(&mut client, &ciphertext), slices.concat());
    assert_eq!(
        records(&ciphertext),
        [RECORD, RECORD, RECORD, RECORD, 9].map(|plain| plain + 17),
        "records' lengths (plaintext, its content type and a 16-byte tag)"
    );
    assert_eq!(*sends.borrow(), 2, "sends");
}

/// Back-pressure as `poll_write`'s: a vectored write takes at most
/// `MAX_WRITE` bytes; with that much sealed and the socket taking none of
/// it, the next write waits, and takes nothing.
#[tokio::test]
async fn a_vectored_write_waits_as_a_plain_one_does() {
    let big = vec![1u8; 50 << 10];
    let slices = [IoSlice::new(&big), IoSlice::new(&big)];
    let (mut server, _client) = on_scripted(Scripted::stalled()).await;
    let first =
        poll_fn(|cx| Poll::Ready(Pin::new(&mut server).poll_write_vectored(cx, &slices))).await;
    assert!(
        matches!(first, Poll::Ready(Ok(MAX_WRITE))),
        "the first write takes MAX_WRITE: {first:?}"
    );
    let second =
        poll_fn(|cx| Poll::Ready(Pin::new(&mut server).poll_write_vectored(cx, &slices))).await;
    assert!(second.is_pending(), "a full backlog waits: {second:?}");
    let plain = poll_fn(|cx| Poll::Ready(Pin::new(&mut server).poll_write(cx, &big))).await;
    assert!(plain.is_pending(), "as a plain write does: {plain:?}");
}
