//! A TLS stream on rustls' unbuffered API: megaconn owns the record buffers,
//! so an idle TLS connection holds none and can park like a cleartext one.
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB record buffer (and
//! more) for the connection's life. Here rustls only keeps the session
//! (keys, sequence numbers, the handshake's results); the ciphertext read
//! from the socket, the ciphertext waiting to be sent and decrypted bytes
//! the reader has not taken yet sit in buffers from the worker's pool
//! (`pool::take_local`) that go back as soon as they are empty. An idle
//! connection is its socket and the boxed session. What a peer can make a
//! stream hold is bounded: at most [`MAX_BUFFERED`] (64 KiB) of ciphertext
//! that does not complete a message yet.
//!
//! A peer that breaks the protocol (rustls rejects its record or message,
//! or it goes past that bound) fails the stream with a [`TlsFailure`]; the
//! alert rustls queued (past the bound, a `decode_error`: see
//! [`TlsIo::overrun`]), in the clear or encrypted as our records are then,
//! is the last thing sent, and the connection closes as a protocol error
//! (`tls_handshake_failed` during the handshake).
//!
//! A peer that ends the stream itself is no protocol error, whatever the
//! phase: its fatal alert (it does not trust our certificate, its user
//! gave up) fails the stream with `ConnectionAborted`, as a reset does,
//! counted by the alert's name ([`peer_alert`]), and so does its end of
//! stream in the middle of the handshake: both close as the client
//! leaving (`client_closed`; midway through a request an I/O error, as a
//! reset is).
//!
//! Parking (`TlsIo::into_parked_parts`) splits a stream into the bare socket,
//! which the parking lot keeps, and a [`ParkedTls`] (the session, and the
//! head of a record whose rest has not arrived, if any), which waits in the
//! worker's [`ParkedSessions`] table under the socket's descriptor. A wake-up
//! ([`TlsIo::resume`], [`TlsIo::poll_prefetch`]) reads and decrypts what
//! arrived without registering the socket with tokio: application data is
//! served, a KeyUpdate or a ticket request is answered and the connection
//! goes straight back, a `close_notify` closes it. Part of a record is
//! served too (HTTP/1.1 waits for the rest under `read_header_timeout`), so
//! a `tail` parked at the end of an exchange or of an idle wait is parked
//! again only once the record it began is whole.
//!
//! Records sealed with a parked session (pushes, `proto::sealed`) that its
//! socket did not take whole are owed: the session's sequence moved past
//! them, so no record it seals later may reach the peer before them, and
//! none may follow a record cut short (the peer would read its bytes as
//! the rest of that record: a bad record MAC, a decode error, where it
//! should see a clean close). One rule keeps the byte stream a prefix of a
//! valid record stream: once owed records did not go whole, nothing more
//! is written, not even `close_notify` ([`ClosingTls`] for a parked
//! connection the lot closes, [`TlsIo::poll_write_sealed`] for a woken
//! one). A close then is a bare TCP close after a truncated record, which
//! the peer reads as an end of stream without `close_notify`: what it would
//! see anyway if the close came before the rest of the record.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::client_auth::PeerCertificates;
use crate::conn::pool::{give_local, take_local, this_worker, BUFFER_CAPACITY};
use crate::conn::transport::{Parkable, Transport};
use crate::conn::woken::WokenSocket;
use crate::error::TlsFailure;
use crate::observe::alerts;
use crate::observe::ratelog::{self, Flood};

/// The most plaintext a record carries: rustls' fragment size when
/// `ServerConfig::max_fragment_size` is not set (megaconn never sets it;
/// TLS allows no more, RFC 8446 §5.1). A vectored write seals its slices
/// in records this size whatever their boundaries ([`TlsIo::poll_seal`]).
const RECORD: usize = 16 * 1024;

/// Plaintext taken per write (`poll_write`, `poll_write_vectored`): four
/// full records. Bounds the ciphertext a write buffers before it is sent.
const MAX_WRITE: usize = 4 * RECORD;

/// Free room kept in the incoming buffer for one socket read.
const READ_ROOM: usize = 4 * 1024;

/// Most ciphertext a stream holds while it waits for the rest of a record or
/// of a handshake message; a peer whose records go past it fails the stream
/// ([`TlsFailure::TooMuchBuffered`]). rustls' unbuffered API keeps every
/// record of a handshake message in our buffer until the message is whole,
/// so a 64 KiB ClientHello cut into 1-byte records held 6 bytes per byte
/// (384 KiB per connection, for the whole handshake timeout). 64 KiB is the
/// limit rustls' own buffered API sets while it joins a handshake message
/// (`DeframerVecBuffer::prepare_read`, `MAX_HANDSHAKE_SIZE`): a client any
/// rustls server takes gets through. A real ClientHello is under 2 KB (4 KB
/// with a post-quantum key share), in one record; after the handshake a
/// stream holds at most one record (under 18.5 KB) between reads. It is
/// also where the pool's 8 KiB buffers land when they double, so the
/// buffer never grows past it.
pub(crate) const MAX_BUFFERED: usize = 64 * 1024;

/// A byte no TLS record starts with (content type 255): what the bytes
/// rustls has not taken yet are made of when a peer goes past
/// [`MAX_BUFFERED`], so that rustls queues its `decode_error` alert
/// ([`TlsIo::overrun`]).
const NO_RECORD: u8 = 0xff;

/// What a client whose first bytes were a plain HTTP request is sent before
/// the close: Go's answer (`net/http`, `Server.Serve` over TLS), which
/// curl, a browser and a load balancer's health check show as they are;
/// nginx answers `400` too ("The plain HTTP request was sent to HTTPS
/// port"). `HTTP/1.0` and `Connection: close`: nothing follows it.
pub(crate) const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\
Content-Length: 48\r\n\
\r\n\
Client sent an HTTP request to an HTTPS server.\n";

/// Whether `opening`, the first bytes a client sent to a TLS port, begins
/// a plain HTTP request rather than a TLS record: upper-case letters (a
/// method: `GET`, `POST`, `PRI` ...) up to a space or to the end of what
/// came. No TLS record begins so: its first byte is its content type,
/// 20–24 (a ClientHello's 22, `0x16`), or has its high bit set (an SSLv2
/// ClientHello), never a letter. So nothing waits for more bytes than the
/// handshake read anyway, and a ClientHello cut into 1-byte segments is
/// told apart from its first byte. The space keeps other cleartext
/// protocols (`SSH-2.0-...`) out of the count.
pub(crate) fn opens_plain_http(opening: &[u8]) -> bool {
    let method = opening
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    method > 0 && opening.get(method).is_none_or(|&b| b == b' ')
}

/// A TLS connection's session, boxed (it is about 1 KB, and moves between
/// the stream, the parked table and the handshake).
pub(crate) type Session = Box<Stamped>;

/// A session and, on a stream fresh from its handshake, when its
/// connection was accepted ([`Parkable::accepted_at`]): kept in the
/// session's box, which costs it nothing more than 16 bytes there, where a
/// field of [`TlsIo`] would grow every TLS connection's future (the awake
/// WebSocket's, at its bound, three times).
pub(crate) struct Stamped {
    conn: UnbufferedServerConnection,
    accepted: Option<tokio::time::Instant>,
}

impl std::ops::Deref for Stamped {
    type Target = UnbufferedServerConnection;

    fn deref(&self) -> &UnbufferedServerConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Stamped {
    fn deref_mut(&mut self) -> &mut UnbufferedServerConnection {
        &mut self.conn
    }
}

/// A server-side TLS stream over socket `S` (a registered `TcpStream`, or a
/// socket woken from the parking lot).
pub(crate) struct TlsIo<S> {
    sock: S,
    session: Session,
    bufs: Records,
    /// The peer sent `close_notify`: reads return end of stream.
    peer_closed: bool,
    /// The socket reached end of stream (without `close_notify`).
    eof: bool,
    /// Our `close_notify` is queued, or a fatal alert: nothing more goes out.
    closing: bool,
    /// The peer broke the protocol ([`TlsFailure`]): the stream failed and
    /// reads fail at once (a lingering close reads no further, and the
    /// failure is not logged twice).
    failed: bool,
    /// The handshake read a byte: a peer that closes before one never
    /// began it (see [`TlsIo::poll_handshake`]).
    began: bool,
    /// Records sealed while parked are being written raw
    /// ([`TlsIo::poll_write_sealed`]) and did not all go yet: nothing this
    /// stream encrypts may follow them (not `close_notify`: see the module
    /// doc).
    owes_sealed: bool,
    /// The client's verified chain (`ClientAuth`) as handlers get it:
    /// taken out of the session when the handshake completes (the patched
    /// rustls' `take_peer_certificates`: the session keeps no copy), parked
    /// with it ([`ParkedTls`]) and shared by every request of the
    /// connection, across wake-ups ([`Parkable::shared_peer_certificates`]).
    /// `None`: client auth off, or no certificate sent.
    peer: Option<PeerCertificates>,
}

impl<S> std::fmt::Debug for TlsIo<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo")
            .field("alpn", &self.session.alpn_protocol())
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

/// A stream's record buffers, each from the worker's pool and absent when
/// empty; given back when dropped.
#[derive(Default)]
struct Records {
    /// Ciphertext read and not processed yet: between calls, at most the
    /// head of a record whose rest has not arrived.
    incoming: Option<BytesMut>,
    /// Ciphertext to send (records, alerts, handshake messages).
    outgoing: Option<BytesMut>,
    /// Decrypted bytes the reader has not taken yet.
    plain: Option<BytesMut>,
}

impl Drop for Records {
    fn drop(&mut self) {
        for buf in [
            self.incoming.take(),
            self.outgoing.take(),
            self.plain.take(),
        ]
        .into_iter()
        .flatten()
        {
            give_local(buf);
        }
    }
}

/// What a parked TLS connection keeps in user space besides its socket.
pub(crate) struct ParkedTls {
    session: Session,
    /// What few parked sessions have, boxed so that the others pay one
    /// pointer for it (and the worker's table, [`ParkedSessions`], eight
    /// bytes less an entry than with `tail` inline).
    rare: Option<Box<ParkedRare>>,
}

/// The rarer parts of a [`ParkedTls`]: one allocation, made only for a
/// session that has one of them.
struct ParkedRare {
    /// The head of a record whose rest had not arrived (rare).
    tail: Option<Box<[u8]>>,
    /// The client's chain, with client auth ([`TlsIo`]'s `peer`): it
    /// parks with the session, which no longer has it.
    peer: Option<PeerCertificates>,
}

/// One worker's sessions of parked TLS connections, by socket descriptor.
/// A clone is a handle on the same table (the message layer's pump keeps
/// one, to encrypt what it pushes to parked WebSockets over TLS).
#[derive(Default, Clone)]
pub(crate) struct ParkedSessions {
    parked: Rc<RefCell<HashMap<RawFd, ParkedTls>>>,
}

impl std::fmt::Debug for ParkedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedSessions")
            .field("parked", &self.parked.borrow().len())
            .finish()
    }
}

impl ParkedSessions {
    /// Keeps a parked connection's session while the lot keeps its socket `fd`.
    pub(crate) fn put(&self, fd: RawFd, parked: ParkedTls) {
        let stale = self.parked.borrow_mut().insert(fd, parked);
        debug_assert!(stale.is_none(), "a TLS socket parked twice");
    }

    /// Takes the session of socket `fd` back (it woke up, or is closing).
    pub(crate) fn take(&self, fd: RawFd) -> Option<ParkedTls> {
        self.parked.borrow_mut().remove(&fd)
    }

    /// Encrypts `plain` as application data with the session of parked
    /// socket `fd`, which stays parked (its write sequence moves on): the
    /// records to send on the bare socket, or `None` if `fd` has no parked
    /// session or it cannot send data now.
    pub(crate) fn seal(&self, fd: RawFd, plain: &[u8]) -> Option<Vec<u8>> {
        self.parked.borrow_mut().get_mut(&fd)?.seal(plain)
    }
}

impl ParkedTls {
    /// Encrypts `plain` as application data (see [`ParkedSessions::seal`]).
    pub(crate) fn seal(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut []);
        let Ok(ConnectionState::WriteTraffic(mut traffic)) = state else {
            return None;
        };
        // Records add 22 bytes each (TLS 1.3, AES-GCM); the error says how
        // much a record layer of another version needs.
        let mut out = vec![0u8; plain.len() + 64 + plain.len() / 512];
        let n = match traffic.encrypt(plain, &mut out) {
            Ok(n) => n,
            Err(EncryptError::InsufficientSize(e)) => {
                out.resize(e.required_size, 0);
                traffic.encrypt(plain, &mut out).ok()?
            }
            Err(_) => return None,
        };
        out.truncate(n);
        Some(out)
    }

    /// The lot is closing this parked connection (idle timeout, shutdown)
    /// and has nothing else to write: say `close_notify` on the way out,
    /// best effort (see [`ClosingTls::close_notify`]).
    pub(crate) fn close_notify(self, socket: RawFd) {
        self.closing().close_notify(socket);
    }

    /// This parked connection is being closed by the lot: what writes its
    /// last records ([`ClosingTls`]).
    pub(crate) fn closing(self) -> ClosingTls {
        ClosingTls {
            parked: self,
            torn: false,
        }
    }
}

/// A parked TLS connection the parking lot is closing (shutdown, its idle
/// or heartbeat deadline), its socket still open: its last records (what a
/// push left owed, a goodbye) and `close_notify`, each written with one
/// non-blocking `send`, in order, and nothing after a record that did not
/// go whole. Owed records that do not go now are not waited for (the lot
/// closes the socket next), so the close is a bare TCP close after a
/// truncated record, which the peer reads as an end of stream without
/// `close_notify`; a `close_notify` (or a goodbye) written after them would
/// instead be read as the rest of the record cut short, or under a
/// sequence number the peer never reached: a bad record MAC where it should
/// see a close (see the module doc). Only this type writes for a parked
/// session that is closing, so the rule is kept in one place.
pub(crate) struct ClosingTls {
    parked: ParkedTls,
    /// A record was left unwritten, whole or in part: nothing more goes.
    torn: bool,
}

impl ClosingTls {
    /// Writes `records` sealed earlier with this session (what a push
    /// left owed: `Local::take_unsent`): whether all went. Not all: the
    /// stream is torn, and nothing more is written.
    pub(crate) fn send_sealed(&mut self, socket: RawFd, records: &[u8]) -> bool {
        if self.torn {
            return false;
        }
        self.torn = !send_now(socket, records);
        !self.torn
    }

    /// Seals `plain` as application data and writes its records (a
    /// goodbye): whether all went (see [`ClosingTls::send_sealed`]).
    pub(crate) fn seal_and_send(&mut self, socket: RawFd, plain: &[u8]) -> bool {
        if self.torn {
            return false;
        }
        match self.parked.seal(plain) {
            Some(records) => self.send_sealed(socket, &records),
            // A session that cannot send data now sends nothing more.
            None => {
                self.torn = true;
                false
            }
        }
    }

    /// Says `close_notify`, unless a record before it did not go whole.
    /// Best effort: a full socket buffer or an error skips it (or cuts it:
    /// a truncated last record is an end of stream without it), the close
    /// follows either way.
    pub(crate) fn close_notify(mut self, socket: RawFd) {
        if self.torn {
            return;
        }
        let mut out = [0u8; 64];
        let n = {
            let UnbufferedStatus { state, .. } = self.parked.session.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    w.queue_close_notify(&mut out).unwrap_or(0)
                }
                _ => 0,
            }
        };
        if n > 0 {
            send_now(socket, &out[..n]);
        }
    }
}

/// Writes `bytes` to `socket` with one non-blocking `send`: whether all of
/// them went. The caller keeps `socket` open for the call.
fn send_now(socket: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: borrowed for this one call, while the caller keeps it open.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) };
    matches!(crate::conn::sys::send(fd, bytes), Ok(Some(n)) if n == bytes.len())
}

/// What the session said when it ran out of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Application data may flow (or the handshake is past the point of
    /// sending it): more input is welcome.
    Ready,
    /// The handshake needs more input.
    Blocked,
    /// Both sides sent `close_notify`.
    Closed,
}

/// An error of ours in driving rustls (a record we could not encode): not
/// the peer's doing, so not `InvalidData`, which is [`TlsFailure`]'s alone.
fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// The stream fails for the peer's protocol error `e`. Logged here (limited)
/// once the handshake is done, the one place that still knows what the
/// error was for every protocol above (HTTP/2 keeps only its text); a
/// handshake's failure is logged by the handshake (`tls::handshake`).
fn peer_failed(e: TlsFailure, handshaking: bool) -> io::Error {
    if !handshaking {
        let kind = match e {
            TlsFailure::TooMuchBuffered { .. } => Flood::TlsTooMuchBuffered,
            TlsFailure::Rejected(_) => Flood::TlsProtocolError,
            // Only ever the handshake's (`TlsIo::refuse_plain_http`).
            TlsFailure::PlainHttp => Flood::TlsPlainHttp,
        };
        ratelog::log(
            kind,
            |suppressed| tracing::info!(error = %e, suppressed, "TLS peer broke the protocol; closing it"),
        );
    }
    e.into()
}

/// rustls rejected what the peer sent (`e`) in `buf`: the stream `failed`,
/// and the alert rustls queued saying why (a handshake failure, a bad
/// record) goes to `outgoing`, as the last thing the stream sends
/// (`closing`): rustls would go on encrypting, but neither data nor a
/// `close_notify` may follow a fatal alert.
///
/// The alert may stand behind records queued before it (the
/// `no_application_protocol` alert does): each call hands one out before
/// it reads any input, as long as some are queued (`wants_write`). Only
/// that long, and over the same buffer: rustls still counts the bytes it
/// took from `buf` before failing and slices past them (an empty buffer
/// panicked the connection), and a call with nothing queued would read
/// those records again and fail again (a second fatal alert).
fn rejected(
    session: &mut Session,
    buf: &mut [u8],
    outgoing: &mut Option<BytesMut>,
    [closing, failed]: [&mut bool; 2],
    e: rustls::Error,
) -> io::Error {
    *closing = true;
    *failed = true;
    if let Err(e) = take_queued(session, buf, outgoing) {
        return e;
    }
    match e {
        rustls::Error::AlertReceived(alert) => peer_alert(alert),
        e => peer_failed(e.into(), session.is_handshaking()),
    }
}

/// Moves the records rustls queued when it failed over `buf` (its alert,
/// and any records queued before it) to `outgoing` (see [`rejected`]).
fn take_queued(
    session: &mut Session,
    buf: &mut [u8],
    outgoing: &mut Option<BytesMut>,
) -> io::Result<()> {
    let out = outgoing.get_or_insert_with(take_local);
    while session.wants_write() {
        match session.process_tls_records(buf).state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => encode_onto(&mut encode, out)?,
            Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
            _ => break,
        }
    }
    if out.is_empty() {
        give_local(outgoing.take().expect("just set"));
    }
    Ok(())
}

/// The peer ended the stream with alert `alert`: a fatal one, or a warning
/// TLS 1.3 does not allow, which rustls answered with `decode_error`
/// (sent by [`rejected`]). It is the peer's decision, such as a client that
/// does not trust our certificate (`unknown_ca`, `bad_certificate`) or
/// whose user gave up (`user_canceled`), not a protocol error: the stream
/// fails with `ConnectionAborted`, which the layers above count as a reset
/// (`client_closed`, or an I/O error midway through a request), in the
/// handshake as after it. The alert's name is kept here: counted under it
/// in the worker's stats (`megaconn_tls_alerts_received_total{alert}`),
/// and logged with it, limited (after a certificate rollout this is what
/// says clients reject the new one).
fn peer_alert(alert: rustls::AlertDescription) -> io::Error {
    let code = u8::from(alert);
    if let Some(worker) = this_worker() {
        alerts::count(code, &worker.stats);
    }
    let name = alerts::label(code);
    ratelog::log(Flood::TlsAlertReceived, |suppressed| {
        tracing::info!(
            alert = name,
            code,
            suppressed,
            "TLS peer ended its connection with an alert"
        )
    });
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        rustls::Error::AlertReceived(alert),
    )
}

/// Appends `n` zeroed bytes to `buf` and returns them, for rustls to write
/// into (it takes an initialised slice).
fn room(buf: &mut BytesMut, n: usize) -> &mut [u8] {
    let len = buf.len();
    buf.resize(len + n, 0);
    &mut buf[len..]
}

/// Encodes a handshake record (or alert) onto `out`.
fn encode_onto(
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut BytesMut,
) -> io::Result<()> {
    let mut need = 1024;
    loop {
        match encode.encode(room(out, need)) {
            Ok(n) => {
                out.truncate(out.len() - need + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => {
                out.truncate(out.len() - need);
                need = e.required_size;
            }
            Err(e) => return Err(tls_error(e)),
        }
    }
}

/// What a write hands the session: the first `len` bytes of `slices`
/// (`len` is at most their total: [`MAX_WRITE`] bounds it).
#[derive(Clone, Copy)]
struct Plaintext<'a, 'b> {
    slices: &'a [IoSlice<'b>],
    len: usize,
}

/// Encrypts `plain` onto `out` as application data, in records of
/// [`RECORD`] bytes but the last, across the slices' boundaries: a write of
/// a chunk's size line, its data and its CRLF is the records one slice of
/// them all would make, not one more a boundary (a record of the 7-byte
/// size line alone). Plaintext in one slice (every `poll_write`'s) is
/// sealed from where it lies; so are the whole records of a slice of
/// several; only a record that spans a boundary is gathered first
/// ([`seal_gathered`]).
fn seal(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: Plaintext<'_, '_>,
    out: &mut BytesMut,
) -> io::Result<()> {
    let first = plain.slices.iter().find(|s| !s.is_empty());
    let first: &[u8] = first.map_or(&[], |s| &s[..]);
    if first.len() >= plain.len {
        return encrypt_onto(traffic, &first[..plain.len], out);
    }
    seal_gathered(traffic, plain, out)
}

/// [`seal`] of plaintext in several slices. A record that spans a
/// boundary is copied into a record-sized scratch on the stack (here, not
/// in [`seal`]: a single slice's write does not pay for its frame) and
/// sealed from there: the records rustls makes of one call are cut at
/// [`RECORD`] bytes from the call's start, so the call after a short one
/// would begin a record of its own. The copy is at most a record a
/// boundary, where the session copies every byte it seals anyway.
#[inline(never)]
fn seal_gathered(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: Plaintext<'_, '_>,
    out: &mut BytesMut,
) -> io::Result<()> {
    let mut scratch = [MaybeUninit::<u8>::uninit(); RECORD];
    let mut record = ReadBuf::uninit(&mut scratch);
    let mut left = plain.len;
    for slice in plain.slices.iter().filter(|s| !s.is_empty()) {
        if left == 0 {
            break;
        }
        let mut piece: &[u8] = &slice[..slice.len().min(left)];
        left -= piece.len();
        if !record.filled().is_empty() {
            // The rest of a record begun in the slices before.
            let n = piece.len().min(record.remaining());
            record.put_slice(&piece[..n]);
            piece = &piece[n..];
            if record.remaining() == 0 {
                encrypt_onto(traffic, record.filled(), out)?;
                record.clear();
            }
        }
        // Whole records from where they lie, and the last slice's rest
        // (it ends the write); the head of a record the next slice
        // completes waits in the scratch.
        let direct = match left {
            0 => piece.len(),
            _ => piece.len() - piece.len() % RECORD,
        };
        if direct > 0 {
            encrypt_onto(traffic, &piece[..direct], out)?;
        }
        record.put_slice(&piece[direct..]);
    }
    if !record.filled().is_empty() {
        encrypt_onto(traffic, record.filled(), out)?;
    }
    Ok(())
}

/// Encrypts `data` onto `out` as application data (rustls cuts it into
/// records of up to [`RECORD`] bytes).
fn encrypt_onto(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut BytesMut,
) -> io::Result<()> {
    // Records add 22 bytes each (TLS 1.3, AES-GCM).
    let mut need = data.len() + 64 + data.len() / 512;
    loop {
        match traffic.encrypt(data, room(out, need)) {
            Ok(n) => {
                out.truncate(out.len() - need + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(e)) => {
                out.truncate(out.len() - need);
                need = e.required_size;
            }
            Err(e) => return Err(tls_error(e)),
        }
    }
}

impl<S> TlsIo<S> {
    /// A stream whose handshake is about to start on `sock`.
    pub(crate) fn new(sock: S, config: Arc<ServerConfig>) -> Result<TlsIo<S>, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(TlsIo::with_session(
            sock,
            Box::new(Stamped {
                conn,
                accepted: None,
            }),
        ))
    }

    /// Notes when the connection was accepted (its handshake starts): see
    /// [`Parkable::accepted_at`].
    pub(crate) fn set_accepted(&mut self, at: tokio::time::Instant) {
        self.session.accepted = Some(at);
    }

    fn with_session(sock: S, session: Session) -> TlsIo<S> {
        TlsIo {
            sock,
            session,
            bufs: Records::default(),
            peer_closed: false,
            eof: false,
            closing: false,
            failed: false,
            began: false,
            owes_sealed: false,
            peer: None,
        }
    }

    /// A parked connection's stream again, on its woken socket.
    pub(crate) fn resume(sock: S, parked: ParkedTls) -> TlsIo<S> {
        let mut io = TlsIo::with_session(sock, parked.session);
        let Some(rare) = parked.rare else {
            return io;
        };
        io.peer = rare.peer;
        if let Some(tail) = rare.tail {
            let mut incoming = take_local();
            incoming.extend_from_slice(&tail);
            io.bufs.incoming = Some(incoming);
        }
        io
    }

    /// The same stream over another socket type (a registered stream handed
    /// to a protocol that parks on woken sockets).
    pub(crate) fn map_sock<T>(self, f: impl FnOnce(S) -> T) -> TlsIo<T> {
        let TlsIo {
            sock,
            session,
            bufs,
            peer_closed,
            eof,
            closing,
            failed,
            began,
            owes_sealed,
            peer,
        } = self;
        TlsIo {
            sock: f(sock),
            session,
            bufs,
            peer_closed,
            eof,
            closing,
            failed,
            began,
            owes_sealed,
            peer,
        }
    }

    /// The socket under the stream.
    pub(crate) fn get_ref(&self) -> &S {
        &self.sock
    }

    /// The protocol the client and server agreed on by ALPN.
    pub(crate) fn alpn_protocol(&self) -> Option<&[u8]> {
        self.session.alpn_protocol()
    }

    /// Runs the session over the buffered ciphertext until it needs more
    /// input: handshake messages and alerts go to `outgoing`, decrypted
    /// bytes to `sink` while it has room and then to `plain`, and `encrypt`
    /// (if any) is encrypted into `outgoing` once the session allows.
    fn process(
        &mut self,
        mut sink: Option<&mut ReadBuf<'_>>,
        mut encrypt: Option<Plaintext<'_, '_>>,
    ) -> io::Result<Step> {
        let TlsIo {
            session,
            bufs:
                Records {
                    incoming,
                    outgoing,
                    plain,
                },
            peer_closed,
            closing,
            failed,
            ..
        } = self;
        // Records decrypted or data encrypted this round (see below).
        let mut moved = false;
        loop {
            let mut empty = [0u8; 0];
            let buf: &mut [u8] = match incoming.as_mut() {
                Some(b) => &mut b[..],
                None => &mut empty,
            };
            #[cfg(test)]
            tests::ROUNDS.with(|r| r.set(r.get() + 1));
            let UnbufferedStatus { mut discard, state } = session.process_tls_records(buf);
            let state = match state {
                Ok(state) => state,
                Err(e) => return Err(rejected(session, buf, outgoing, [closing, failed], e)),
            };
            let done = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    let mut bad_record = None;
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                bad_record = Some(e);
                                break;
                            }
                        };
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(sink) = sink.as_deref_mut() {
                            let n = payload.len().min(sink.remaining());
                            sink.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        if !payload.is_empty() {
                            plain
                                .get_or_insert_with(take_local)
                                .extend_from_slice(payload);
                        }
                    }
                    if let Some(e) = bad_record {
                        return Err(rejected(session, buf, outgoing, [closing, failed], e));
                    }
                    moved = true;
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_onto(&mut encode, outgoing.get_or_insert_with(take_local))?;
                    None
                }
                // The records are in `outgoing`; they go out at the next
                // send, in order, before anything written later.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => match encrypt.take() {
                    Some(data) => {
                        seal(&mut traffic, data, outgoing.get_or_insert_with(take_local))?;
                        moved = true;
                        None
                    }
                    None => Some(Step::Ready),
                },
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Step::Closed),
                ConnectionState::BlockedHandshake => Some(Step::Blocked),
                // Early data is never enabled (`max_early_data_size` is 0).
                other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
            };
            if discard > 0 {
                if let Some(b) = incoming.as_mut() {
                    b.advance(discard);
                }
            }
            // Records read or data encrypted, nothing left to encrypt, no
            // ciphertext left and nothing queued to send (a KeyUpdate's
            // answer, an alert would be): the next round could only say
            // `WriteTraffic`, so it is skipped, one `process_tls_records`
            // less per read and per write.
            let done = match done {
                None if moved
                    && encrypt.is_none()
                    && incoming.as_ref().is_none_or(BytesMut::is_empty)
                    && !session.wants_write() =>
                {
                    Some(Step::Ready)
                }
                done => done,
            };
            if let Some(step) = done {
                if incoming.as_ref().is_some_and(BytesMut::is_empty) {
                    give_local(incoming.take().expect("checked"));
                }
                return Ok(step);
            }
        }
    }

    /// Queues `close_notify` (once).
    fn queue_close_notify(&mut self) -> io::Result<()> {
        if self.closing {
            return Ok(());
        }
        self.closing = true;
        if self.owes_sealed {
            // Records sealed while parked did not all go: a close_notify
            // after them would be read as the rest of the one cut short.
            // The close is a bare TCP close (see the module doc).
            return Ok(());
        }
        // Whatever the session has queued goes first.
        self.process(None, None)?;
        let mut out = [0u8; 64];
        let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let n = w.queue_close_notify(&mut out).map_err(tls_error)?;
            self.bufs
                .outgoing
                .get_or_insert_with(take_local)
                .extend_from_slice(&out[..n]);
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> TlsIo<S> {
    /// Writes `records` this stream's session sealed while it was parked
    /// (a push the socket took part of) straight to the socket: they come
    /// before anything it encrypts now, so they go while it holds none of
    /// its own (a stream just resumed, before its first write).
    ///
    /// The caller passes what is left of the records each time: until a
    /// write takes all of it, they are owed, and nothing the stream
    /// encrypts goes after them (`close_notify` included: a close that
    /// gives up on them is a bare TCP close, see the module doc).
    pub(crate) fn poll_write_sealed(
        &mut self,
        cx: &mut Context<'_>,
        records: &[u8],
    ) -> Poll<io::Result<usize>> {
        debug_assert!(self.bufs.outgoing.is_none(), "records of its own wait");
        if records.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.owes_sealed = true;
        let wrote = Pin::new(&mut self.sock).poll_write(cx, records);
        if let Poll::Ready(Ok(n)) = wrote {
            self.owes_sealed = n < records.len();
        }
        wrote
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsIo<S> {
    /// [`TlsIo::process`]; on an error, the alert rustls queued goes out
    /// (best effort) before the error is returned.
    fn process_or_alert(
        &mut self,
        cx: &mut Context<'_>,
        sink: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<Step> {
        self.process(sink, None).inspect_err(|_| {
            let _ = self.poll_send(cx);
        })
    }

    /// Sends buffered ciphertext; ready when all of it went out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(out) = self.bufs.outgoing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if self.owes_sealed {
            // Sealed records owed go first, and did not (see the module doc).
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "records sealed while parked were not all written",
            )));
        }
        while !out.is_empty() {
            match Pin::new(&mut self.sock).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        give_local(self.bufs.outgoing.take().expect("checked"));
        Poll::Ready(Ok(()))
    }

    /// Reads more ciphertext from the socket; `Ok(0)` at end of stream.
    ///
    /// With no ciphertext buffered, the read goes to the stack and a pool
    /// buffer is taken only for bytes that arrived. HTTP/2 reads until the
    /// socket is empty, so most of its reads find nothing: taking a buffer
    /// for each and giving it back cost about 0.03 µs per request, more
    /// than copying the few hundred bytes of a request's records does.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Some(incoming) = self.bufs.incoming.as_mut() {
            // The head of a record (or of a handshake message) waits: the
            // rest goes after it, up to `MAX_BUFFERED`.
            let room = MAX_BUFFERED.saturating_sub(incoming.len());
            if room == 0 {
                let held = incoming.len();
                return Poll::Ready(Err(self.overrun(cx, held)));
            }
            let want = room.min(READ_ROOM);
            if incoming.capacity() - incoming.len() < want {
                incoming.reserve(want);
            }
            let mut limited = (&mut *incoming).limit(room);
            return tokio_util::io::poll_read_buf(Pin::new(&mut self.sock), cx, &mut limited);
        }
        // As much as a fresh pool buffer would take in one read; not
        // initialised (the socket's `poll_read` writes, never reads, it).
        let mut scratch = [MaybeUninit::<u8>::uninit(); BUFFER_CAPACITY];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.sock).poll_read(cx, &mut read))?;
        let got = read.filled();
        if !got.is_empty() {
            let mut incoming = take_local();
            incoming.extend_from_slice(got);
            self.bufs.incoming = Some(incoming);
        }
        Poll::Ready(Ok(got.len()))
    }

    /// The peer's records went past [`MAX_BUFFERED`] (`held` bytes) without
    /// completing a message: the stream fails, after a fatal `decode_error`
    /// alert (RFC 8446 §6.2: a message whose length could not be taken;
    /// `record_overflow` is for a record over 2^14 + 256 bytes, which these
    /// are not). The alert is rustls' own, so it goes in the clear or
    /// encrypted as our records are then: in the clear before our
    /// ServerHello (and, in a full TLS 1.2 handshake, until our
    /// ChangeCipherSpec), encrypted after a TLS 1.3 one, from which on a
    /// client takes no plaintext alert (RFC 8446 §5, §6), under the keys of
    /// our last records, which the client read.
    ///
    /// rustls 0.23's unbuffered API has no call to queue an alert (it lends
    /// the keys for data and `close_notify` only), and its own limit on a
    /// handshake message (64 KiB, `HandshakePayloadTooLarge`) sends none. So
    /// rustls is made to reject input of its own: all of `incoming` is
    /// overwritten with [`NO_RECORD`], and one more is appended. rustls
    /// resumes after the records it took (their bytes hold the message that
    /// never completed; none is ready, or it would not have waited for
    /// more), where the head of a record or nothing was, and reads a record
    /// of no known type: it fails with `InvalidContentType`, which it
    /// answers with `decode_error` (`handle_deframe_error`), and reads
    /// nothing more (the failure ends the session).
    fn overrun(&mut self, cx: &mut Context<'_>, held: usize) -> io::Error {
        if let (false, Some(incoming)) = (self.closing, self.bufs.incoming.as_mut()) {
            incoming.fill(NO_RECORD);
            incoming.put_u8(NO_RECORD);
            let buf = &mut incoming[..];
            let refused = self.session.process_tls_records(buf).state.is_err();
            // A record we could not encode leaves the close without it.
            if refused && take_queued(&mut self.session, buf, &mut self.bufs.outgoing).is_ok() {
                let _ = self.poll_send(cx);
            }
        }
        self.closing = true;
        self.failed = true;
        let failure = TlsFailure::TooMuchBuffered {
            held,
            limit: MAX_BUFFERED,
        };
        peer_failed(failure, self.session.is_handshaking())
    }

    /// Drives the handshake until it is complete (the client's Finished
    /// read, our last flight sent). A peer that closes before its first
    /// byte (a TCP health check, a port scan) fails it with
    /// `ConnectionAborted`, not `UnexpectedEof`: it never began one. So
    /// does one that closes in the middle of it (a client that gave up, a
    /// scanner that came for our certificate): it left, as one that resets
    /// or sends an alert then does; a handshake carries no data a close
    /// could truncate.
    pub(crate) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = self.process_or_alert(cx, None)?;
            if self.poll_send(cx)?.is_pending() {
                return Poll::Pending;
            }
            if !self.session.is_handshaking() {
                // The handshake's queues are empty now: give back what
                // rustls kept of them (its patched `shrink_to_fit`,
                // patches/README.md), for connections that never park (h2).
                self.session.shrink_to_fit();
                // The client's chain, moved out of the session: the one
                // copy the connection keeps (see `peer`).
                self.peer = PeerCertificates::taken(self.session.take_peer_certificates());
                return Poll::Ready(Ok(()));
            }
            if step == Step::Closed || self.peer_closed {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            match self.poll_recv(cx)? {
                Poll::Ready(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        if self.began {
                            "the peer closed in the middle of the TLS handshake"
                        } else {
                            "the peer closed before its ClientHello"
                        },
                    )))
                }
                Poll::Ready(_) if !self.began => {
                    self.began = true;
                    if self.bufs.incoming.as_deref().is_some_and(opens_plain_http) {
                        return Poll::Ready(Err(self.refuse_plain_http(cx)));
                    }
                }
                Poll::Ready(_) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The client's first bytes were a plain HTTP request
    /// ([`opens_plain_http`]): before rustls sees them (it would answer
    /// with a TLS alert, which curl shows as a "wrong version number"),
    /// [`PLAIN_HTTP_ANSWER`] goes out, once and best effort, as an alert
    /// does ([`TlsIo::overrun`]): a fresh socket's send buffer takes its
    /// 156 bytes whole. The stream fails; its close is the caller's
    /// (a FIN after the answer: the request's bytes were read, as the
    /// first read takes up to 8 KiB).
    fn refuse_plain_http(&mut self, cx: &mut Context<'_>) -> io::Error {
        self.closing = true;
        self.failed = true;
        let incoming = self.bufs.incoming.take().expect("the opening was read");
        give_local(incoming);
        // Nothing of rustls' waits: it answers nothing before a ClientHello.
        debug_assert!(self.bufs.outgoing.is_none(), "TLS records queued");
        let mut out = take_local();
        out.extend_from_slice(PLAIN_HTTP_ANSWER);
        self.bufs.outgoing = Some(out);
        let _ = self.poll_send(cx);
        TlsFailure::PlainHttp.into()
    }

    /// Reads and decrypts until there are decrypted bytes for the reader
    /// (into `sink` first), or the stream ended.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        mut sink: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        if self.failed {
            return Poll::Ready(Err(io::Error::other("the TLS session failed")));
        }
        loop {
            // With no ciphertext buffered and nothing queued to send, the
            // session has nothing to say: every earlier call ran it until it
            // wanted input. Running it anyway cost a `process_tls_records`
            // round per read, two per request batch on HTTP/2 (the read,
            // and the one that finds the socket drained).
            if self.bufs.incoming.is_some() || self.session.wants_write() {
                let start = sink.as_ref().map_or(0, |s| s.filled().len());
                let step = self.process_or_alert(cx, sink.as_deref_mut())?;
                // What the session wrote (a KeyUpdate's answer) goes out now
                // if it can; if not, before the next thing written.
                let _ = self.poll_send(cx)?;
                let got = sink.as_ref().map_or(0, |s| s.filled().len()) > start;
                if got || step == Step::Closed {
                    return Poll::Ready(Ok(()));
                }
            }
            if self.bufs.plain.is_some() || self.peer_closed || self.eof {
                return Poll::Ready(Ok(()));
            }
            match self.poll_recv(cx)? {
                Poll::Ready(0) => {
                    self.eof = true;
                    if self.bufs.incoming.is_some() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed in the middle of a TLS record",
                        )));
                    }
                }
                Poll::Ready(_) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl TlsIo<WokenSocket> {
    /// A woken parked connection: reads and decrypts what arrived, without
    /// waiting and without registering the socket with tokio (it stays bare
    /// and in the lot's set). Ok(true): there is something for the protocol
    /// (bytes, or the end); Ok(false): nothing but TLS housekeeping (a
    /// KeyUpdate, part of a record: see [`TlsIo::holds_partial_record`]).
    pub(crate) fn poll_prefetch(&mut self) -> io::Result<bool> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.sock.prefetching(true);
        let filled = self.poll_fill(&mut cx, None);
        self.sock.prefetching(false);
        match filled? {
            Poll::Ready(()) => Ok(true),
            Poll::Pending => Ok(false),
        }
    }
}

impl<S> TlsIo<S> {
    /// Whether the head of a record whose rest has not arrived waits.
    pub(crate) fn holds_partial_record(&self) -> bool {
        self.bufs.incoming.is_some()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(plain) = this.bufs.plain.as_mut() {
            let n = plain.len().min(buf.remaining());
            buf.put_slice(&plain[..n]);
            plain.advance(n);
            if plain.is_empty() {
                give_local(this.bufs.plain.take().expect("checked"));
            }
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        ready!(this.poll_fill(cx, Some(buf)))?;
        if buf.filled().len() == start && this.bufs.plain.is_none() && this.peer_closed {
            // The reader sees the end the peer announced: answer with our
            // own close_notify (RFC 8446 §6.1), sent now if it can be.
            this.queue_close_notify()?;
            let _ = this.poll_send(cx)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsIo<S> {
    /// A write of `slices` (`poll_write`'s one, or `poll_write_vectored`'s):
    /// up to [`MAX_WRITE`] bytes of them sealed ([`seal`]: records run
    /// across the slices' boundaries) and sent as far as the socket takes
    /// them now, the rest of the records kept for the next write or flush.
    /// Waits only while [`MAX_WRITE`] or more of sealed records wait.
    fn poll_seal(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.closing || self.owes_sealed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Bounded: what was encrypted before goes out first.
        let backlog = self.bufs.outgoing.as_ref().map_or(0, BytesMut::len);
        if backlog >= MAX_WRITE && self.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        let len = slices
            .iter()
            .fold(0usize, |len, s| len.saturating_add(s.len()))
            .min(MAX_WRITE);
        self.process(None, Some(Plaintext { slices, len }))?;
        let _ = self.poll_send(cx)?;
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_seal(cx, &[IoSlice::new(data)])
    }

    /// Seals the slices as one write would their concatenation: records
    /// of [`RECORD`] bytes across their boundaries, as many as
    /// [`MAX_WRITE`] allows, sent together. HTTP/1.1 writes a large frame
    /// so (`ConnIo::poll_flush_with`: the buffered head, the frame, its
    /// CRLF), whatever [`AsyncWrite::is_write_vectored`] says.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_seal(cx, slices)
    }

    /// `false`, though a vectored write is as good as one of the slices
    /// concatenated: callers read it as "holds nothing back", and this
    /// stream does (the records a write sealed and the socket did not
    /// take, until a flush). The message layer gives a WebSocket's or a
    /// framed connection's pushes to a vectored transport straight from
    /// the hub's frames and resolves a confirmed push once its frame is
    /// written whole (`message/outbound.rs`, `buffered`; `proto/ws`): over
    /// TLS that push could resolve `Ok` and be lost with the session
    /// (merge review of `hubwait`, session 46). h2 would chain its DATA
    /// payloads from 256 bytes rather than 1,024 (`FramedWrite`).
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.sock).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close_notify()?;
        if this.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.sock).poll_shutdown(cx)
    }
}

impl<S: Transport> Transport for TlsIo<S> {
    const SECURE: bool = true;

    /// Ready when decrypted bytes (or the end) wait already, else when the
    /// socket is: an idle connection waits holding no buffer.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.bufs.plain.is_some() || self.peer_closed || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.sock.poll_read_ready(cx)
    }

    /// Sends what was encrypted already and shuts the socket, with no
    /// `close_notify`, then or later (a `close_notify` read while the close
    /// lingers is not answered).
    fn poll_shutdown_truncated(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.closing = true;
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }

    fn holds_partial_input(&self) -> bool {
        self.holds_partial_record()
    }
}

impl<S: Parkable> Parkable for TlsIo<S> {
    const PARKABLE: bool = S::PARKABLE;

    fn lot_fd(&self) -> Option<std::os::fd::RawFd> {
        self.sock.lot_fd()
    }

    fn repark_when_idle(&self) -> bool {
        self.bufs.plain.is_none() && self.bufs.outgoing.is_none() && self.sock.repark_when_idle()
    }

    fn reparks_a_wake(&self) -> bool {
        self.repark_when_idle() && self.sock.reparks_a_wake()
    }

    /// The socket's: ciphertext read ahead parks with the session (`tail`).
    fn still_watched(&self) -> bool {
        self.sock.still_watched()
    }

    /// The chain taken out of the session at the handshake (`peer`; the
    /// session has none left).
    fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.peer.as_ref().map(PeerCertificates::chain)
    }

    /// The one copy, taken at the handshake, shared by refcount (HTTP/1.1
    /// asks at every request): never copied, also across wake-ups.
    fn shared_peer_certificates(&self) -> Option<PeerCertificates> {
        self.peer.clone()
    }

    fn accepted_at(&self) -> Option<tokio::time::Instant> {
        self.session.accepted
    }

    /// Splits an idle stream for parking: the socket for the lot, the
    /// session for the worker's table. Fails (and the connection closes) if
    /// decrypted bytes wait, or ciphertext cannot be sent without waiting.
    fn into_parked_parts(mut self) -> io::Result<(OwnedFd, Option<ParkedTls>)> {
        if self.bufs.plain.is_some() {
            return Err(io::Error::other("decrypted bytes wait unread"));
        }
        if self.bufs.outgoing.is_some() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if !matches!(self.poll_send(&mut cx), Poll::Ready(Ok(()))) {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "TLS records could not be sent before parking",
                ));
            }
        }
        let tail = self.bufs.incoming.take().map(|b| {
            let tail = Box::<[u8]>::from(&b[..]);
            give_local(b);
            tail
        });
        let TlsIo {
            sock,
            mut session,
            peer,
            ..
        } = self;
        // What a wake-up allocated in rustls (a KeyUpdate's message index,
        // a record queue) is not kept while parked.
        session.shrink_to_fit();
        // Woken, a first request's wait counts from the wake.
        session.accepted = None;
        let rare = (tail.is_some() || peer.is_some()).then(|| Box::new(ParkedRare { tail, peer }));
        Ok((sock.into_parked()?, Some(ParkedTls { session, rare })))
    }
}

// A vectored write's records and back-pressure, on a scripted socket.
#[cfg(test)]
#[path = "tls_io_vectored_tests.rs"]
mod vectored_tests;

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;
    use std::future::poll_fn;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::conn::pool;

    thread_local! {
        /// `process_tls_records` rounds `TlsIo::process` ran on this thread.
        pub(super) static ROUNDS: Cell<usize> = const { Cell::new(0) };
    }

    fn rounds() -> usize {
        ROUNDS.with(|r| r.replace(0))
    }

    /// A server and a client config, on one throwaway certificate.
    pub(crate) fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    type Client = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

    /// A server stream whose handshake is done, and its client (which
    /// has sent nothing yet).
    async fn handshaken() -> (TlsIo<tokio::io::DuplexStream>, Client) {
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
        (server, client.unwrap())
    }

    /// Polls one read of `server` that must find nothing to read.
    async fn read_finds_nothing(server: &mut TlsIo<tokio::io::DuplexStream>) {
        let mut buf = [0u8; 64];
        let pending = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut *server).poll_read(cx, &mut rb).is_pending())
        })
        .await;
        assert!(pending, "nothing was sent");
    }

    /// A read that finds the socket empty, as HTTP/2's last read of each
    /// batch does, takes no buffer from the pool (it took one and gave it
    /// back), and a read of a request takes one, for its ciphertext, which
    /// goes back once decrypted: the idle stream holds none.
    #[tokio::test]
    async fn a_read_that_finds_the_socket_empty_takes_no_pool_buffer() {
        let (mut server, mut client) = handshaken().await;
        client.write_all(b"request").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"request");

        pool::tests::taken_local();
        read_finds_nothing(&mut server).await;
        read_finds_nothing(&mut server).await;
        assert_eq!(
            pool::tests::taken_local(),
            0,
            "buffers taken by empty reads"
        );

        client.write_all(b"next").await.unwrap();
        client.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"next");
        read_finds_nothing(&mut server).await;
        assert_eq!(pool::tests::taken_local(), 1, "buffers taken by a request");
        assert!(
            server.bufs.incoming.is_none()
                && server.bufs.plain.is_none()
                && server.bufs.outgoing.is_none(),
            "an idle TLS stream holds no buffer"
        );
    }

    /// One request-response exchange as HTTP/2 drives it: a read that gets
    /// the client's record, a read that finds the socket drained, a write
    /// of the answer and a flush. The session runs one round for the record
    /// read and one for the write (it ran six: one more per read before
    /// looking at the socket, one more after decrypting and after
    /// encrypting to learn there was nothing else), and the answer still
    /// arrives whole.
    #[tokio::test]
    async fn an_exchange_runs_the_session_once_per_record_and_per_write() {
        let (mut server, mut client) = handshaken().await;
        // The client reads the server's session tickets along the way.
        client.write_all(b"request").await.unwrap();
        client.flush().await.unwrap();

        rounds();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"request");
        read_finds_nothing(&mut server).await;
        assert_eq!(
            rounds(),
            1,
            "rounds for the record read and the drained read"
        );

        server.write_all(b"response").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(rounds(), 1, "rounds for the write");
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"response");
    }

    /// Reads `want` bytes of plaintext from `server` while `client` sends
    /// `records` (one TLS record each), then finds the stream idle: no
    /// ciphertext buffer kept.
    async fn read_records(
        server: &mut TlsIo<tokio::io::DuplexStream>,
        client: &mut Client,
        records: &[&[u8]],
    ) {
        let want: Vec<u8> = records.concat();
        let send = async {
            for record in records {
                client.write_all(record).await.unwrap();
                client.flush().await.unwrap();
            }
        };
        let mut got = vec![0u8; want.len()];
        let (_, read) = tokio::join!(send, server.read_exact(&mut got));
        read.unwrap();
        assert!(got == want, "the plaintext arrives whole and in order");
        read_finds_nothing(server).await;
        assert!(
            server.bufs.incoming.is_none(),
            "an idle TLS stream keeps no ciphertext buffer"
        );
    }

    /// A record larger than the first read's stack scratch (8 KiB) goes on
    /// into a pool buffer and decrypts whole.
    #[tokio::test]
    async fn a_record_larger_than_the_scratch_is_read_whole() {
        let (mut server, mut client) = handshaken().await;
        let big = vec![b'x'; 12 * 1024];
        read_records(&mut server, &mut client, &[&big]).await;
    }

    /// A record that arrives a few bytes at a time: its head, kept after
    /// the first read, takes the rest, and the stream holds no buffer once
    /// it is read. (The record is cut by hand: a pipe of a few bytes would
    /// stall the handshake instead, on the session tickets the server
    /// sends after it and the client does not read until it reads data.)
    #[tokio::test]
    async fn a_record_arriving_in_pieces_is_read_whole() {
        let (mut server, mut client) = handshaken().await;
        let (raw, session) = client.get_mut();
        std::io::Write::write_all(&mut session.writer(), b"a request in pieces").unwrap();
        let mut record = Vec::new();
        while session.wants_write() {
            session.write_tls(&mut record).unwrap();
        }
        let mut buf = [0u8; 64];
        let mut pieces = record.chunks(7).peekable();
        while let Some(piece) = pieces.next() {
            raw.write_all(piece).await.unwrap();
            raw.flush().await.unwrap();
            if pieces.peek().is_some() {
                read_finds_nothing(&mut server).await;
                assert!(server.bufs.incoming.is_some(), "the record's head is kept");
            }
        }
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"a request in pieces");
        read_finds_nothing(&mut server).await;
        assert!(
            server.bufs.incoming.is_none(),
            "an idle TLS stream keeps no ciphertext buffer"
        );
    }

    /// The stream ending in the middle of a record is an error, not an
    /// end of stream (a truncation attack must not pass for a close).
    #[tokio::test]
    async fn end_of_stream_mid_record_is_an_error() {
        let (mut server, client) = handshaken().await;
        let (mut raw, _) = client.into_inner();
        // An application-data record's header promising 100 bytes, then 3.
        raw.write_all(&[0x17, 0x03, 0x03, 0x00, 100, 1, 2, 3])
            .await
            .unwrap();
        drop(raw);
        let mut buf = [0u8; 64];
        let read = server.read(&mut buf).await;
        assert!(read.is_err(), "{read:?}");
    }

    /// What opens a plain HTTP request, and what does not: a TLS record's
    /// first byte, another cleartext protocol, an empty read.
    #[test]
    fn a_method_and_a_space_open_plain_http_and_no_tls_record_does() {
        for opening in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x",
            b"PRI * HTTP/2.0",
            b"G",
            b"OPTIONS",
        ] {
            assert!(opens_plain_http(opening), "{opening:?}");
        }
        for opening in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"\x16",
            b"\x80\x2e\x01",
            b"SSH-2.0-OpenSSH",
            b"get / HTTP/1.1",
            b" GET",
            b"",
        ] {
            assert!(!opens_plain_http(opening), "{opening:?}");
        }
        let (head, body) = PLAIN_HTTP_ANSWER.split_at(
            PLAIN_HTTP_ANSWER
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap()
                + 4,
        );
        let head = std::str::from_utf8(head).unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
    }

    /// A plain HTTP request where a ClientHello belongs is answered `400`
    /// in plain text (no TLS alert), and the handshake fails as
    /// `TlsFailure::PlainHttp`, holding no buffer.
    #[tokio::test]
    async fn a_plain_http_request_is_answered_400_in_plain_text() {
        let (server_config, _) = configs();
        let (server_half, mut client) = tokio::io::duplex(64 * 1024);
        let mut server = TlsIo::new(server_half, server_config).unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let failed = poll_fn(|cx| server.poll_handshake(cx)).await.unwrap_err();
        assert!(
            matches!(TlsFailure::of(&failed), Some(TlsFailure::PlainHttp)),
            "{failed:?}"
        );
        assert!(server.bufs.incoming.is_none() && server.bufs.outgoing.is_none());
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, PLAIN_HTTP_ANSWER);
    }
}
