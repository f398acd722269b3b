//! The owed-records rule (`tls_io.rs`'s module doc, "Records sealed with a
//! parked session"), tested without luck: records a parked session sealed
//! that its socket did not take whole are owed, and no record may follow
//! them unless they went first, not even `close_notify`, or the client
//! reads a bad record MAC (or a record cut short and completed with
//! garbage) where it should read an end of stream.
//!
//! The integration tests (`tests/integration/tls_sealed_close.rs`,
//! `tls_parked_close.rs`) need the kernel to cut a push at the right moment,
//! and retry when it does not. Here the cut is forced: a real rustls
//! client and our server stream over loopback TCP, the server's send
//! buffer and the client's receive buffer the kernel's smallest, the client
//! reading nothing; the session parks, a few small pushes are sealed and
//! go whole, then one far larger than both buffers together, which an empty
//! socket takes part of and can never take whole ([`push_until_owed`]).
//! Then each close path runs as the server runs it, and only after the
//! server gave up on the owed records does the client read again, so that
//! whatever the close writes next has room to go (the worst case: a close
//! that wrote `close_notify` anyway would be seen every time).
//!
//! The check does not depend on where the kernel cut: the client's bytes
//! must be a prefix of the records sealed ([`Owed::assert_torn`]); a
//! `close_notify` (or a goodbye) written after the cut is not. A real
//! rustls `ClientConnection` then reads them: no error, the pushes'
//! plaintext as far as it went, and an end of stream without
//! `close_notify`. (rustls alone cannot always tell: a `close_notify`
//! written after a cut in a 16 KiB record reads as 24 more bytes of it,
//! then a truncation, no error; the bad record MAC shows when the cut
//! record's rest is shorter than the `close_notify`, as with the 1-byte
//! pushes of `tests/integration/tls_msg.rs`.) When the owed records do go whole first (the client
//! reads meanwhile), `close_notify` follows them and the client reads a
//! clean end ([`Owed::assert_whole`]).
//!
//! The shapes: a woken framed or SSE connection that fell behind
//! (`MessageIo::write_owed`, then `MessageIo::close_notify`: the two
//! protocols share these calls), a woken WebSocket (`close_behind` in
//! `proto/ws/conn.rs`: the rest through `poll_write_unsent`, its 1013
//! only after a rest that went whole, then `ConnIo::close`), and a parked
//! connection the lot closes at shutdown without waking it
//! (`proto::parked::close_parked_tls`, `ClosingTls`).
//!
//! Here, in `proto/`, because it drives the message layer's and the
//! protocols' close paths over `conn/tls_io.rs`: a lower layer's file may
//! not import them (`tests/integration/layers.rs`).

use std::future::{poll_fn, Future};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::either::Either;

use crate::conn::config::Config;
use crate::conn::context::WorkerContext;
use crate::conn::io::{CloseBy, ConnIo};
use crate::conn::tls_io::tests::configs;
use crate::conn::tls_io::{ParkedTls, TlsIo};
use crate::conn::transport::Parkable;
use crate::conn::woken::WokenSocket;
use crate::conn::Wake;
use crate::message::hub::{send_all_now, wake_to_close, SendNow, Unsent};
use crate::message::io::MessageIo;
use crate::message::wake::write_unsent;
use crate::observe::close::CloseReason;
use crate::observe::stats::{MessageCounters, WorkerStats};
use crate::proto::parked::{close_parked_tls, ParkedSocket};
use crate::proto::ws::{self, WsIo};

/// The server's send buffer and the client's receive buffer, as asked of
/// the kernel (which doubles it, and takes its smallest for less): a socket
/// whose client reads nothing is full after a few tens of KiB.
const SMALL_BUFFER: usize = 4096;

/// The pushes that go whole before the one owed, and their size: an
/// empty socket takes them at once.
const SMALL_PUSHES: usize = 3;
const SMALL_PUSH: usize = 100;

/// The push that is owed: far more than both buffers, the client's window
/// and a whole segment in flight together, so that a socket whose client
/// reads nothing takes part of it (it is empty when it comes) and never
/// all of it. (Here it took 6,144 bytes of a 1 MiB one, and the woken
/// write 2-3 KB more; 256 KiB keeps a margin of 40.)
const BIG_PUSH: usize = 256 << 10;

/// Bounds a wait that only a bug makes long.
const SAFETY: Duration = Duration::from_secs(10);

/// The client's end: its socket (blocking, read on a thread of its own:
/// [`reading`]) and its TLS session, which reads the bytes afterwards.
struct Client {
    tcp: std::net::TcpStream,
    tls: ClientConnection,
}

/// A connection whose handshake is done and whose session has parked as
/// an idle one does (`Parkable::into_parked_parts`): the bare socket, the
/// parked session, and the client, whose socket from here on holds only
/// what the parked session seals.
async fn parked_pair() -> (OwnedFd, ParkedTls, Client) {
    let (server_config, client_config) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    // Before the connect: the window it advertises follows it.
    socket.set_recv_buffer_size(SMALL_BUFFER as u32).unwrap();
    let (client, accepted) = tokio::join!(
        socket.connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    let (client, (accepted, _)) = (client.unwrap(), accepted.unwrap());
    // Bare and non-blocking, as an accepted socket is served.
    let fd = OwnedFd::from(accepted.into_std().unwrap());
    rustix::net::sockopt::set_socket_send_buffer_size(&fd, SMALL_BUFFER).unwrap();
    let mut server = TlsIo::new(WokenSocket::accepted(fd), server_config).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = ServerName::try_from("localhost").unwrap();
    let (shook, client) = tokio::join!(
        poll_fn(|cx| server.poll_handshake(cx)),
        connector.connect(name, client)
    );
    shook.unwrap();
    let mut client = client.unwrap();
    // One exchange: the client reads the server's session tickets with it.
    server.write_all(b"ready").await.unwrap();
    server.flush().await.unwrap();
    let mut ready = [0u8; 5];
    client.read_exact(&mut ready).await.unwrap();
    assert_eq!(&ready, b"ready");
    let (fd, parked) = server.into_parked_parts().unwrap();
    let (tcp, tls) = client.into_inner();
    let tcp = tcp.into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(SAFETY)).unwrap();
    (
        fd,
        parked.expect("a TLS stream parks its session"),
        Client { tcp, tls },
    )
}

/// What a parked session sealed, and what its socket took of it.
#[derive(Default)]
struct Owed {
    /// Every record sealed since the session parked, in order: what the
    /// client reads if all of them go whole.
    sealed: Vec<u8>,
    /// How much of `sealed` the socket took when each was pushed.
    taken: usize,
    /// The pushes' plaintext, in order.
    plain: Vec<u8>,
    /// The plaintext of the pushes that went whole.
    whole_plain: usize,
    /// The owed push's plaintext length (`Unsent::frame`).
    frame: usize,
}

/// Seals `plain` with the parked session and writes its records in one
/// non-blocking `send`, as a push to a parked connection over TLS does
/// (`proto::sealed`), noting both in `owed`.
fn push(fd: RawFd, parked: &mut ParkedTls, owed: &mut Owed, plain: &[u8]) -> SendNow {
    let records = parked.seal(plain).expect("a parked session seals data");
    let sent = send_all_now(fd, &records);
    owed.taken += match sent {
        SendNow::Sent => records.len(),
        SendNow::Full { taken } => taken,
        SendNow::Broken => panic!("the client's socket broke"),
    };
    owed.sealed.extend_from_slice(&records);
    owed.plain.extend_from_slice(plain);
    sent
}

/// Pushes to parked socket `fd` until a push is owed, cut short: a few
/// small ones, which go whole, then [`BIG_PUSH`], which the socket takes
/// part of (forced: see the module doc). The client reads nothing.
fn push_until_owed(fd: RawFd, parked: &mut ParkedTls) -> Owed {
    let mut owed = Owed::default();
    for i in 0..SMALL_PUSHES {
        let plain: Vec<u8> = (0..SMALL_PUSH).map(|j| (i * 7 + j) as u8).collect();
        let sent = push(fd, parked, &mut owed, &plain);
        assert_eq!(sent, SendNow::Sent, "an empty socket takes a small push");
    }
    owed.whole_plain = owed.plain.len();
    let big: Vec<u8> = (0..BIG_PUSH).map(|j| (j % 251) as u8).collect();
    owed.frame = big.len();
    match push(fd, parked, &mut owed, &big) {
        SendNow::Full { taken } if taken > 0 => {}
        sent => panic!("{BIG_PUSH} bytes pushed to a socket with small buffers: {sent:?}"),
    }
    owed
}

impl Owed {
    /// What the socket did not take: the rest of the owed push's records,
    /// as `Local::take_unsent` gives it back.
    fn unsent(&self) -> Unsent {
        Unsent {
            tail: Bytes::copy_from_slice(&self.sealed[self.taken..]),
            frame: self.frame,
            waiter: None,
        }
    }

    /// The client read what the socket took (the small pushes whole, part
    /// of the big one's records, maybe more of them) and then the end of
    /// the stream: no record after the one cut short, not even
    /// `close_notify`. Its bytes are a prefix of the records sealed, and
    /// rustls reads them without an error, the pushes' plaintext as far as
    /// it went, then an end of stream without `close_notify`.
    fn assert_torn(&self, raw: &[u8], tls: &mut ClientConnection) {
        let ending = Ending::of(tls, raw);
        let sound = common_prefix(raw, &self.sealed);
        let after = &raw[sound..];
        assert!(
            after.is_empty(),
            "nothing after the records sealed: the client read {} bytes, the first {sound} \
             of them the records sealed ({} bytes), then {} more: {:02x?}; {ending:?}",
            raw.len(),
            self.sealed.len(),
            after.len(),
            &after[..after.len().min(32)],
        );
        assert!(
            self.taken <= raw.len() && raw.len() < self.sealed.len(),
            "the client read what the socket took ({} bytes) and not all of the \
             records ({}): {} bytes",
            self.taken,
            self.sealed.len(),
            raw.len()
        );
        assert!(ending.rejected.is_none(), "{ending:?}");
        assert_eq!(
            ending.end,
            Some(Err(io::ErrorKind::UnexpectedEof)),
            "an end of stream without close_notify: {ending:?}"
        );
        assert!(
            ending.plain.len() >= self.whole_plain && self.plain.starts_with(&ending.plain),
            "the pushes' plaintext, as far as it went: {ending:?}"
        );
    }

    /// The owed records went whole, then `then` (a close frame, sealed by
    /// the stream), then `close_notify`: the client reads every push and
    /// `then`, and a clean end.
    fn assert_whole(&self, raw: &[u8], tls: &mut ClientConnection, then: &[u8]) {
        let ending = Ending::of(tls, raw);
        assert!(
            raw.starts_with(&self.sealed),
            "the records sealed, whole, come first: {} bytes of {} read, {} of them \
             the records; {ending:?}",
            raw.len(),
            self.sealed.len(),
            common_prefix(raw, &self.sealed)
        );
        assert!(ending.rejected.is_none(), "{ending:?}");
        assert_eq!(ending.end, Some(Ok(())), "close_notify: {ending:?}");
        let mut want = self.plain.clone();
        want.extend_from_slice(then);
        assert!(
            ending.plain == want,
            "every push, then {then:02x?}: {ending:?}"
        );
    }
}

/// How many bytes `a` and `b` begin with alike.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What a real rustls client made of the bytes it read, then of the end of
/// the stream.
struct Ending {
    /// The plaintext it gave.
    plain: Vec<u8>,
    /// What it rejected (a bad record MAC, a corrupt record): never right.
    rejected: Option<rustls::Error>,
    /// How its last read ended: `Ok` at `close_notify`, an error at an end
    /// of stream without it (`UnexpectedEof`); `None` if it was rejected
    /// first.
    end: Option<Result<(), io::ErrorKind>>,
}

impl std::fmt::Debug for Ending {
    /// The plaintext's length and last bytes, not all of it: a failure's
    /// message stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = &self.plain[self.plain.len().saturating_sub(8)..];
        f.debug_struct("Ending")
            .field("plain_len", &self.plain.len())
            .field("plain_tail", &tail)
            .field("rejected", &self.rejected)
            .field("end", &self.end)
            .finish()
    }
}

impl Ending {
    /// Feeds `raw` to `tls`, then the end of the stream, reading the
    /// plaintext as it goes, as a client reading the stream would.
    fn of(tls: &mut ClientConnection, raw: &[u8]) -> Ending {
        let mut ending = Ending {
            plain: Vec::new(),
            rejected: None,
            end: None,
        };
        let mut rest = raw;
        let mut buf = vec![0u8; 32 << 10];
        loop {
            // Every byte, and then a read of none: the end of the stream.
            let at_end = rest.is_empty();
            tls.read_tls(&mut rest).expect("rustls takes bytes");
            if let Err(e) = tls.process_new_packets() {
                ending.rejected = Some(e);
                return ending;
            }
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => {
                        ending.end = Some(Ok(()));
                        return ending;
                    }
                    Ok(n) => ending.plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        ending.end = Some(Err(e.kind()));
                        return ending;
                    }
                }
            }
            assert!(!at_end, "rustls saw the end of the stream: {ending:?}");
        }
    }
}

/// Reads `tcp` to the end of the stream on a thread of its own (the
/// server's side runs on the test's runtime meanwhile), then closes it:
/// everything the client read.
fn reading(mut tcp: std::net::TcpStream) -> JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw)?;
        Ok(raw)
    })
}

/// Waits for the client's thread: what it read.
fn read(reader: JoinHandle<io::Result<Vec<u8>>>) -> Vec<u8> {
    reader
        .join()
        .expect("the client's thread")
        .expect("the stream ends with its end, not an error")
}

/// Runs `f` on paused time: a write to a client that reads nothing gives
/// up at its bound (`CloseBy`, 2 s) as soon as nothing else can happen,
/// without waiting it out.
async fn on_paused_time<F: Future>(f: F) -> F::Output {
    tokio::time::pause();
    let out = f.await;
    tokio::time::resume();
    out
}

/// A close's bound as a worker's connection has it by default, begun now.
fn by() -> CloseBy {
    CloseBy::after(crate::conn::config::DEFAULT_LINGER_TIMEOUT, None)
}

/// A parked connection that fell behind, woken to close as the hub wakes
/// it (`wake_to_close`: its read side shut, so the close's reads find the
/// end of the stream at once and it does not linger for the client).
fn woken(fd: OwnedFd, parked: ParkedTls) -> TlsIo<WokenSocket> {
    wake_to_close(fd.as_raw_fd());
    TlsIo::resume(WokenSocket::new(fd, false, Wake::HungUp), parked)
}

/// A woken framed or SSE connection behind on a push writes the rest
/// (`write_owed`), which the client does not take in time; then the client
/// reads again, and the connection closes (`close_notify`, as
/// `proto/framed/conn.rs` and `proto/sse/conn.rs` close): nothing after the
/// torn record.
#[tokio::test]
async fn a_woken_framed_or_sse_close_writes_nothing_after_a_torn_record() {
    let (fd, mut parked, Client { tcp, mut tls }) = parked_pair().await;
    let owed = push_until_owed(fd.as_raw_fd(), &mut parked);
    let mut io = MessageIo::Tls(woken(fd, parked));
    let counters = MessageCounters::default();
    on_paused_time(io.write_owed(Some(owed.unsent()), &by(), &counters)).await;
    let reader = reading(tcp);
    io.close_notify(CloseReason::SlowConsumer, &by()).await;
    drop(io);
    owed.assert_torn(&read(reader), &mut tls);
}

/// The same connection whose client reads while the rest is written: the
/// rest goes whole, then `close_notify`, and the client reads a clean end.
#[tokio::test]
async fn a_woken_framed_or_sse_close_says_close_notify_after_the_owed_records() {
    let (fd, mut parked, Client { tcp, mut tls }) = parked_pair().await;
    let owed = push_until_owed(fd.as_raw_fd(), &mut parked);
    let mut io = MessageIo::Tls(woken(fd, parked));
    let counters = MessageCounters::default();
    let reader = reading(tcp);
    io.write_owed(Some(owed.unsent()), &by(), &counters).await;
    io.close_notify(CloseReason::SlowConsumer, &by()).await;
    drop(io);
    owed.assert_whole(&read(reader), &mut tls, b"");
}

/// A woken WebSocket's connection, as a slow consumer's close has it.
fn ws_conn(tls: TlsIo<WokenSocket>) -> ConnIo<WsIo> {
    let stats = Arc::new(WorkerStats::default());
    let ctx = WorkerContext::new(0, Arc::new(Config::default()), stats, None);
    ConnIo::new(Either::Left(MessageIo::Tls(tls)), Rc::new(ctx))
}

/// A woken WebSocket's slow-consumer close, in `close_behind`'s steps
/// (`proto/ws/conn.rs`): the rest of the push raw (`poll_write_unsent`)
/// within the close's bound, on paused time if the client reads nothing
/// (`paused`); `between` (the client may read again); its 1013 only after a
/// rest that went whole; then the connection's close. Whether the rest
/// went whole.
async fn close_behind(
    conn: &mut ConnIo<WsIo>,
    unsent: Unsent,
    paused: bool,
    between: impl FnOnce(),
) -> bool {
    let counters = MessageCounters::default();
    let rest = async {
        write_unsent(&unsent, &by(), &counters, |cx, b| {
            ws::poll_write_unsent(&mut conn.io, cx, b)
        })
        .await
    };
    let whole = match paused {
        true => on_paused_time(rest).await,
        false => rest.await,
    };
    between();
    if whole {
        ws::closing::last_word(conn, CloseReason::SlowConsumer);
    }
    conn.close(CloseReason::SlowConsumer).await;
    whole
}

/// A woken WebSocket behind on a push whose client does not take the rest
/// in time sends no 1013 and no `close_notify` after it, even once the
/// client reads again: nothing after the torn record.
#[tokio::test]
async fn a_woken_wss_close_writes_nothing_after_a_torn_record() {
    let (fd, mut parked, Client { tcp, mut tls }) = parked_pair().await;
    let owed = push_until_owed(fd.as_raw_fd(), &mut parked);
    let mut conn = ws_conn(woken(fd, parked));
    let mut reader = None;
    let whole = close_behind(&mut conn, owed.unsent(), true, || {
        reader = Some(reading(tcp));
    })
    .await;
    assert!(!whole, "the client took the rest");
    drop(conn);
    owed.assert_torn(&read(reader.expect("read")), &mut tls);
}

/// A woken WebSocket behind on a push whose client reads meanwhile: the
/// rest goes whole, then its 1013 and `close_notify`, which the client
/// reads as the end.
#[tokio::test]
async fn a_woken_wss_close_sends_its_1013_and_close_notify_after_the_owed_records() {
    let (fd, mut parked, Client { tcp, mut tls }) = parked_pair().await;
    let owed = push_until_owed(fd.as_raw_fd(), &mut parked);
    let mut conn = ws_conn(woken(fd, parked));
    let reader = reading(tcp);
    let whole = close_behind(&mut conn, owed.unsent(), false, || {}).await;
    assert!(whole, "the client read: the rest went");
    drop(conn);
    let mut close_frame = BytesMut::new();
    ws::frame::encode_close(&mut close_frame, ws::TRY_AGAIN_LATER, "slow consumer");
    owed.assert_whole(&read(reader), &mut tls, &close_frame);
}

/// Waits until the socket `fd` holds nothing unsent or unacknowledged
/// (`SIOCOUTQ`): its client took everything it was sent, and the next
/// `send` has room.
fn wait_until_taken(fd: RawFd) {
    let deadline = std::time::Instant::now() + SAFETY;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: `fd` is open (the caller's); the call writes one int.
        let got = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        assert_eq!(got, 0, "SIOCOUTQ: {}", io::Error::last_os_error());
        if queued == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queued} bytes unread"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A parked connection behind on a push, closed by the lot at shutdown
/// without being woken (`close_parked_tls`): the rest of the push, written
/// as `let_go` writes it, does not go whole (the client reads nothing);
/// then the client reads again and takes everything, and neither a goodbye
/// nor `close_notify` follows the torn record, though the socket has room
/// for both.
#[tokio::test]
async fn a_parked_close_writes_nothing_after_a_torn_record() {
    let (fd, mut parked, Client { tcp, mut tls }) = parked_pair().await;
    let socket = fd.as_raw_fd();
    let owed = push_until_owed(socket, &mut parked);
    let mut reader = None;
    close_parked_tls(socket, CloseReason::Shutdown, Some(parked), |parked| {
        let ParkedSocket::Tls(Some(closing)) = parked else {
            panic!("a TLS socket with its session");
        };
        let whole = closing.send_sealed(socket, &owed.unsent().tail);
        assert!(!whole, "the client took the rest");
        reader = Some(reading(tcp));
        wait_until_taken(socket);
        let goodbye = closing.seal_and_send(socket, b"goodbye");
        assert!(!goodbye, "a goodbye after a torn record");
    });
    drop(fd);
    owed.assert_torn(&read(reader.expect("read")), &mut tls);
}
