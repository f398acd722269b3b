//! The server and clients of the tests of how a TLS message connection
//! ends (`tls_sealed_close.rs`: a woken slow consumer; `tls_parked_close.rs`:
//! the parking lot's own closes): one server serving the three message
//! protocols over TLS on one worker — WebSocket (`/ws`) and Server-Sent
//! Events (`/events`) on HTTPS/1.1, framed TCP (length-prefixed) on a TLS
//! listener of its own — whose connections park after [`PARK_IDLE_AFTER`]
//! with a [`SEND_BUFFER`] send buffer, each route with a goodbye; and
//! clients that set their protocol up over tokio-rustls, then read the raw
//! record stream to its end and say how it ended record by record
//! ([`Ending`]): whole records, a record cut short, `close_notify`, or a
//! record rustls rejects (the bad record MAC a `close_notify` written after
//! records that did not go out whole reads as).
//!
//! A consumer's receive buffer is the kernel's smallest and it reads
//! nothing until a test says, so pushes fill its server's socket after a
//! few tens of KB. Which push did not fit is read off the counters, fenced
//! by a push to another client that reads ([`TlsMsg::push_until_behind`]:
//! the worker delivers in order), never guessed from time.

use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytes::Bytes;
use megaconn::{Builder, CloseReason, ConnectionId, Framing, Hub, Server, ShutdownSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common;
use common::msg::{self, frame, set_up, tcp_to, MsgServer, FRAMED_GOODBYE, SSE_GOODBYE};
use common::tls::{handshake, Ca};
use common::SAFETY;

/// How long an idle connection waits before it parks.
pub(crate) const PARK_IDLE_AFTER: Duration = Duration::from_millis(20);

/// The server's `message_send_buffer_size` (the kernel makes it 32 KiB).
pub(crate) const SEND_BUFFER: usize = 16 << 10;

/// One of the three message protocols over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// WebSocket over HTTPS/1.1 (`wss://…/ws`).
    Wss,
    /// Length-prefixed framed TCP on the TLS listener.
    FramedTls,
    /// Server-Sent Events over HTTPS (`/events`; asked for in HTTP/1.0, so
    /// the body is delimited by the close, not chunked: see
    /// [`Proto::send`]).
    SseTls,
}

impl Proto {
    /// The protocol under the TLS.
    fn plain(self) -> msg::Proto {
        match self {
            Proto::Wss => msg::Proto::Ws,
            Proto::FramedTls => msg::Proto::Framed,
            Proto::SseTls => msg::Proto::Sse,
        }
    }

    /// What the client reads of its route's goodbye at shutdown, to the
    /// end of the stream: WebSocket's close frame 1001 (no reason), the
    /// framed goodbye frame, the SSE goodbye event (the body is
    /// close-delimited: no last chunk).
    pub(crate) fn goodbye(self) -> &'static [u8] {
        match self {
            Proto::Wss => &[0x88, 0x02, 0x03, 0xe9],
            Proto::FramedTls => b"\0\0\0\x03bye",
            Proto::SseTls => b"data: bye\n\n",
        }
    }

    /// Sends connection `id` of this protocol the tests' push: one byte,
    /// or an SSE stream's comment (the shortest event, on a close-delimited
    /// HTTP/1.0 body: a chunk's framing would make it 25 bytes), so that
    /// each push is one record of at most 24 bytes after its header, what
    /// a `close_notify` record takes whole (see [`Ending::assert_torn`]).
    fn send(self, hub: &Hub, id: ConnectionId) {
        let sent = match self {
            Proto::Wss | Proto::FramedTls => hub.send(id, "p"),
            Proto::SseTls => hub.send_binary(id, ":\n\n"),
        };
        assert_eq!(sent, Ok(()));
    }

    /// The push as the client reads it (framed by the protocol).
    pub(crate) fn push(self) -> &'static [u8] {
        match self {
            Proto::Wss => b"\x81\x01p",
            Proto::FramedTls => b"\0\0\0\x01p",
            Proto::SseTls => b":\n\n",
        }
    }
}

/// The server (`common::msg`'s, over TLS), and a framed TLS client of it
/// that reads (the fence of [`TlsMsg::push_until_behind`], parked like the
/// others).
pub(crate) struct TlsMsg {
    server: MsgServer,
    ca: Ca,
    /// Closes heard while waiting for another connection's.
    heard: Vec<(ConnectionId, CloseReason)>,
    fence: Option<(TlsStream<TcpStream>, ConnectionId)>,
    /// Pushes sent to the fence so far (they count in `pushes` too).
    fences: u64,
}

/// The server's handle, hub and events are [`MsgServer`]'s; its clients
/// are TLS clients of its own ([`TlsMsg::connect`]).
impl Deref for TlsMsg {
    type Target = MsgServer;

    fn deref(&self) -> &MsgServer {
        &self.server
    }
}

impl DerefMut for TlsMsg {
    fn deref_mut(&mut self) -> &mut MsgServer {
        &mut self.server
    }
}

impl TlsMsg {
    /// A server with the settings above and `shape`'s on top, running, and
    /// its fence client connected and parked.
    pub(crate) async fn start(shape: impl FnOnce(Builder) -> Builder) -> TlsMsg {
        let ca = Ca::new();
        let builder = Server::builder()
            .workers(1)
            .park_idle_after(Some(PARK_IDLE_AFTER))
            .message_send_buffer_size(Some(SEND_BUFFER))
            .goodbye_frame(Some(Bytes::from_static(FRAMED_GOODBYE)))
            .tls(ca.server(&["localhost"]));
        let builder = shape(builder)
            .listen_tls_on("127.0.0.1:0".parse().unwrap())
            .listen_framed_tls_on("127.0.0.1:0".parse().unwrap(), Framing::length_prefixed(4));
        let mut server = TlsMsg {
            server: MsgServer::start(builder, Some(SSE_GOODBYE)),
            ca,
            heard: Vec::new(),
            fence: None,
            fences: 0,
        };
        server.fence = Some(server.connect(Proto::FramedTls, false).await);
        server
    }

    /// A client of `proto` (with the smallest receive buffer if it is a
    /// `slow` one), its protocol set up and its connection parked; and its
    /// id.
    pub(crate) async fn connect(
        &mut self,
        proto: Proto,
        slow: bool,
    ) -> (TlsStream<TcpStream>, ConnectionId) {
        let parked = self.handle.stats().connections_parked;
        let http: &[&[u8]] = &[b"http/1.1"];
        let (addr, alpn) = match proto {
            Proto::FramedTls => (self.framed, &[][..]),
            Proto::Wss | Proto::SseTls => (self.http, http),
        };
        let tcp = tcp_to(addr, slow.then_some(1)).await;
        let mut tls = handshake(tcp, self.ca.client(alpn), "localhost")
            .await
            .expect("handshake");
        set_up(proto.plain(), &mut tls).await;
        let id = self.next_open().await;
        self.wait_parked(parked + 1).await;
        (tls, id)
    }

    /// A slow consumer of `proto`: connected, parked, and reading nothing
    /// until the test reads its raw records ([`Consumer`]).
    pub(crate) async fn consumer(&mut self, proto: Proto) -> Consumer {
        let (tls, id) = self.connect(proto, true).await;
        let (tcp, session) = tls.into_inner();
        Consumer {
            proto,
            id,
            tcp,
            session,
            raw: Vec::new(),
        }
    }

    /// Pushes delivered whole to the consumers and dropped (`pushes`, not
    /// counting the fence's, and `queue_drops`). The count of the fence's
    /// last push may lag (it is counted once written): `pushes` may be one
    /// short until the server stopped.
    pub(crate) fn pushes(&self) -> (u64, u64) {
        let s = self.handle.stats().messages;
        (s.pushes - self.fences, s.queue_drops)
    }

    /// Wake-ups of parked connections so far.
    pub(crate) fn wakes(&self) -> u64 {
        let s = self.handle.stats();
        s.wakes_cold + s.wakes_hot
    }

    /// Makes the worker's parking lot stop hearing of its parked sockets
    /// (the server must run with `Builder::park_wake_batch`, a window longer
    /// than the test): the fence is woken twice (an echo each), and a lot
    /// that served a wake-up within two windows of the last switches its
    /// relay off for one window (counted in `parking_wake_batches`). A
    /// parked connection a push finds behind then stays parked, its wake
    /// to close unheard, until the lot closes it itself.
    pub(crate) async fn mute_the_lot(&mut self) {
        for round in 0..2 {
            let parked = self.handle.stats().connections_parked;
            let echo = frame(format!("wake {round}").as_bytes());
            let (fence, _) = self.fence.as_mut().expect("the fence");
            fence.write_all(&echo).await.unwrap();
            fence.flush().await.unwrap();
            let mut back = vec![0u8; echo.len()];
            tokio::time::timeout(SAFETY, fence.read_exact(&mut back))
                .await
                .expect("echo in time")
                .unwrap();
            assert_eq!(back, echo);
            if round == 0 {
                self.wait_parked(parked).await;
            }
        }
        common::wait_stats(&self.handle, "the lot's relay switched off", |s| {
            s.parking_wake_batches >= 1
        })
        .await;
        common::wait_stats(&self.handle, "the fence parked again", |s| {
            s.connections_parked >= 2
        })
        .await;
    }

    /// Pushes the push of its protocol ([`Proto::send`]) to `consumer`
    /// (parked, reading nothing) until one does not go out whole: the
    /// connection is then behind, that push's records owed (the session
    /// sealed them), and every push after it is dropped. And the socket
    /// mostly stays full, so that what is owed does not go unless the
    /// client reads: pushes go until bytes wait unsent (the client's
    /// window closed), and the rest only once every byte sent is
    /// acknowledged (the server's `TCP_INFO`). A socket that filled with
    /// bytes in flight gets room back as their acknowledgements come (a
    /// delayed ACK, tens of milliseconds later), and a close then writes
    /// what is owed after all. It still does, now and then (the window is
    /// not shut to 0, a few hundred bytes stay open, and the kernel sends
    /// into them as it will): [`Ending::went_whole`] tells that case.
    ///
    /// After each batch a push to the fence, read by its client, says that
    /// every push before it was delivered (one worker, in order, counted
    /// before the fence's was written), and `queue_drops` whether one of
    /// them found the connection behind.
    pub(crate) async fn push_until_behind(&mut self, consumer: &Consumer) {
        let drops = self.handle.stats().messages.queue_drops;
        let waiting = |c: &Consumer| server_tcp_info(&c.tcp).tcpi_notsent_bytes > 0;
        self.push_until(consumer, 16, waiting).await;
        let deadline = tokio::time::Instant::now() + SAFETY;
        loop {
            let info = server_tcp_info(&consumer.tcp);
            if info.tcpi_unacked == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "bytes in flight ({} segments)",
                info.tcpi_unacked
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            self.handle.stats().messages.queue_drops,
            drops,
            "behind early"
        );
        let handle = self.handle.clone();
        let behind = move |_: &Consumer| handle.stats().messages.queue_drops > drops;
        self.push_until(consumer, 128, behind).await;
    }

    /// Pushes to `consumer` `batch` at a time, each batch fenced, until
    /// `done`.
    async fn push_until(
        &mut self,
        consumer: &Consumer,
        batch: usize,
        done: impl Fn(&Consumer) -> bool,
    ) {
        for _ in 0..10_000 {
            for _ in 0..batch {
                consumer.proto.send(&self.hub, consumer.id);
            }
            self.fence().await;
            if done(consumer) {
                return;
            }
        }
        panic!("the socket never filled");
    }

    /// A push to the fence, read: every push sent before it was delivered.
    async fn fence(&mut self) {
        let body = Bytes::from_static(b"fence");
        let (fence, id) = self.fence.as_mut().expect("the fence");
        assert_eq!(self.server.hub.send(*id, body.clone()), Ok(()));
        self.fences += 1;
        let mut got = [0u8; 9];
        tokio::time::timeout(SAFETY, fence.read_exact(&mut got))
            .await
            .expect("the fence's push in time")
            .unwrap();
        assert_eq!(got[..], frame(&body)[..]);
    }

    /// The reason connection `id` closed, when it does.
    pub(crate) async fn close_of(&mut self, id: ConnectionId) -> CloseReason {
        loop {
            if let Some(at) = self.heard.iter().position(|(c, _)| *c == id) {
                return self.heard.remove(at).1;
            }
            let heard = self.next_close().await;
            self.heard.push(heard);
        }
    }

    /// Shuts the server down and waits for it: its summary.
    pub(crate) async fn stop(self) -> ShutdownSummary {
        self.server.stop().await
    }
}

/// A slow consumer after its protocol's setup: its socket and its TLS
/// session, taken out of tokio-rustls, and the raw records read so far
/// (none until the test reads).
pub(crate) struct Consumer {
    pub proto: Proto,
    pub id: ConnectionId,
    tcp: TcpStream,
    session: rustls::ClientConnection,
    raw: Vec<u8>,
}

impl Consumer {
    /// Reads until at least `n` whole records arrived.
    pub(crate) async fn read_records(&mut self, n: usize) {
        tokio::time::timeout(SAFETY, async {
            while walk(&self.raw).0.len() < n {
                let mut buf = [0u8; 16 << 10];
                let got = self.tcp.read(&mut buf).await.expect("reading");
                assert!(got > 0, "the end before {n} records");
                self.raw.extend_from_slice(&buf[..got]);
            }
        })
        .await
        .expect("the records in time");
    }

    /// Reads to the end of the stream (or a reset), and says how it ended.
    pub(crate) async fn read_to_end(mut self) -> Ending {
        let reset = tokio::time::timeout(SAFETY, async {
            loop {
                let mut buf = [0u8; 16 << 10];
                match self.tcp.read(&mut buf).await {
                    Ok(0) => return false,
                    Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                    Err(e) => panic!("reading: {e}"),
                }
            }
        })
        .await
        .expect("the end in time");
        Ending::of(self.proto, &self.raw, &mut self.session, reset)
    }
}

/// The `TCP_INFO` of the server's end of `client`'s connection.
fn server_tcp_info(client: &TcpStream) -> libc::tcp_info {
    common::with_server_end(client, |fd| {
        // SAFETY: all-zero is a valid `tcp_info` (integers only).
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` has room for `len` bytes; a read-only call.
        let got = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        assert_eq!(got, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info
    })
}

/// The whole records at the head of `raw` (their lengths, as their headers
/// say), and where the rest begins.
fn walk(raw: &[u8]) -> (Vec<usize>, usize) {
    let (mut records, mut at) = (Vec::new(), 0);
    while raw.len() - at >= 5 {
        let len = usize::from(u16::from_be_bytes([raw[at + 3], raw[at + 4]]));
        if raw.len() - at < 5 + len {
            break;
        }
        records.push(len);
        at += 5 + len;
    }
    (records, at)
}

/// How a consumer's record stream ended, from its protocol's setup on.
pub(crate) struct Ending {
    proto: Proto,
    /// The plaintext of the records rustls took.
    pub plain: Vec<u8>,
    /// The whole records' lengths (their headers'), in order.
    pub records: Vec<usize>,
    /// What came after the last whole record: a record cut short.
    pub torn: Vec<u8>,
    /// The peer said `close_notify`.
    pub close_notify: bool,
    /// What rustls rejected, if anything (a bad record MAC, a corrupt
    /// record): never right.
    pub rejected: Option<rustls::Error>,
    /// The stream ended with a reset (no FIN).
    pub reset: bool,
}

impl std::fmt::Debug for Ending {
    /// Records as runs of one length (`22 x 1300`), the plaintext's size
    /// and its last bytes: a failure's message stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &len in &self.records {
            match runs.last_mut() {
                Some((l, n)) if *l == len => *n += 1,
                _ => runs.push((len, 1)),
            }
        }
        let runs: Vec<String> = runs.iter().map(|(l, n)| format!("{l} x {n}")).collect();
        let tail = &self.plain[self.plain.len().saturating_sub(32)..];
        f.debug_struct("Ending")
            .field("proto", &self.proto)
            .field("records", &runs.join(", "))
            .field("torn", &self.torn)
            .field("close_notify", &self.close_notify)
            .field("rejected", &self.rejected)
            .field("reset", &self.reset)
            .field("plain_len", &self.plain.len())
            .field("plain_tail", &String::from_utf8_lossy(tail))
            .finish()
    }
}

/// The length (its header's) of a TLS 1.3 record holding `close_notify`:
/// the 2-byte alert, its content type and the 16-byte tag.
const CLOSE_NOTIFY_RECORD: usize = 19;

impl Ending {
    /// Feeds `raw` to the client's `session`, as a client reading the
    /// stream would, and walks its records.
    fn of(proto: Proto, raw: &[u8], session: &mut rustls::ClientConnection, reset: bool) -> Ending {
        let (records, at) = walk(raw);
        let mut ending = Ending {
            proto,
            plain: Vec::new(),
            records,
            torn: raw[at..].to_vec(),
            close_notify: false,
            rejected: None,
            reset,
        };
        let mut rest = raw;
        while !rest.is_empty() {
            session.read_tls(&mut rest).expect("rustls takes bytes");
            if let Err(e) = session.process_new_packets() {
                ending.rejected = Some(e);
                return ending;
            }
            let mut buf = [0u8; 16 << 10];
            loop {
                match session.reader().read(&mut buf) {
                    Ok(0) => {
                        ending.close_notify = true;
                        break;
                    }
                    Ok(n) => ending.plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("reading plaintext: {e}"),
                }
            }
        }
        ending
    }

    /// The length (its header's) of one push's record: the push, framed,
    /// its content type and the 16-byte tag.
    fn push_record(&self) -> usize {
        self.proto.push().len() + 17
    }

    /// `n` pushes, as the client reads them.
    fn pushes(&self, n: usize) -> Vec<u8> {
        self.proto.push().repeat(n)
    }

    /// The stream holds pushes, each a whole record, and then at
    /// most part of one more (the push owed, cut short): nothing after the
    /// record that did not go whole, not even `close_notify`. Whatever a
    /// close wrote after it shows here, wherever the cut: a `close_notify`
    /// (24 bytes) after a record never sent is a whole record of 19 bytes
    /// under a sequence number the client never reached (rustls rejects
    /// it: a bad record MAC); after part of one it breaks that record's
    /// header (cut within its first 5 bytes) or completes its body (a
    /// push's is at most 24 bytes: [`Proto::send`]), a record rustls
    /// rejects.
    pub(crate) fn assert_torn(&self) {
        let whole = self.records.len();
        let push = self.push_record();
        assert!(self.rejected.is_none(), "a record rejected: {self:?}");
        assert!(
            whole > 0 && self.records.iter().all(|&len| len == push),
            "whole pushes of {push} bytes, nothing else whole: {self:?}"
        );
        let head = [0x17, 0x03, 0x03, (push >> 8) as u8, push as u8];
        let n = self.torn.len().min(head.len());
        assert!(
            self.torn.len() < 5 + push && self.torn[..n] == head[..n],
            "after the whole records, at most part of the push owed: {self:?}"
        );
        assert!(!self.close_notify, "no close_notify after a torn record");
        assert_eq!(self.plain, self.pushes(whole), "{self:?}");
    }

    /// Every record went whole and rustls took them all, the last one
    /// `close_notify`: the socket took what was owed after all (see
    /// [`TlsMsg::push_until_behind`]), and what followed it is sound.
    pub(crate) fn went_whole(&self) -> bool {
        self.rejected.is_none() && self.torn.is_empty() && self.close_notify
    }

    /// The stream holds the pushes that went whole, the push that was
    /// owed, whole too, and then `close_notify`: how many pushes, the owed
    /// one with them.
    pub(crate) fn assert_owed_went(&self) -> usize {
        let push = self.push_record();
        assert!(self.rejected.is_none(), "a record rejected: {self:?}");
        let pushes = self.records.len().saturating_sub(1);
        let mut expected = vec![push; pushes];
        expected.push(CLOSE_NOTIFY_RECORD);
        assert!(pushes > 0 && self.records == expected, "{self:?}");
        assert!(self.torn.is_empty() && self.close_notify, "{self:?}");
        assert_eq!(self.plain, self.pushes(pushes), "{self:?}");
        pushes
    }

    /// The stream holds the protocol's goodbye, then `close_notify`.
    pub(crate) fn assert_goodbye(&self) {
        assert!(self.rejected.is_none(), "a record rejected: {self:?}");
        assert_eq!(
            String::from_utf8_lossy(&self.plain),
            String::from_utf8_lossy(self.proto.goodbye()),
            "{self:?}"
        );
        assert!(self.torn.is_empty() && self.close_notify, "{self:?}");
    }
}
