//! `hold https://`: a held TLS connection on rustls' unbuffered client API.
//!
//! A million held TLS connections would cost the client more than the
//! server if each kept rustls' buffered connection (its record buffers are
//! allocated per connection and kept). Here a connection keeps only its
//! session (boxed) and its socket: ciphertext is read into the first half
//! of the thread's shared buffer and decrypted into its second half, so no
//! connection holds a buffer between reads. Only the head of a record whose
//! rest has not arrived yet, and records that could not be sent at once,
//! are kept per connection (rare, small).

use std::io;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::hold_conn::{write_whole, Held, Read, Sent};

/// Room for one handshake flight or record while handshaking.
const HANDSHAKE_BUF: usize = 18 * 1024;

/// A held TLS connection.
pub(crate) struct HoldTls {
    tcp: TcpStream,
    session: Box<UnbufferedClientConnection>,
    /// The head of a record whose rest has not arrived.
    tail: Vec<u8>,
    /// Records to send before anything else (a KeyUpdate's answer).
    pending: Vec<u8>,
    /// The server sent `close_notify`.
    closed: bool,
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Encodes a handshake record onto `out`.
fn encode_onto(
    encode: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::client::ClientConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    grow_onto(out, 1024, |room| {
        encode.encode(room).map_err(|e| match e {
            EncodeError::InsufficientSize(e) => Short::Room(e.required_size),
            e => Short::Failed(tls_error(e)),
        })
    })
}

/// Encrypts `data` onto `out`.
fn encrypt_onto(
    traffic: &mut WriteTraffic<'_, rustls::client::ClientConnectionData>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let need = data.len() + 64 + data.len() / 512;
    grow_onto(out, need, |room| {
        traffic.encrypt(data, room).map_err(|e| match e {
            EncryptError::InsufficientSize(e) => Short::Room(e.required_size),
            e => Short::Failed(tls_error(e)),
        })
    })
}

/// Why rustls wrote no record into the room it was given.
enum Short {
    /// The room was too small: this much is needed.
    Room(usize),
    /// Anything else.
    Failed(io::Error),
}

/// Appends to `out` what `write` writes into room at its end: `need`
/// bytes of room at first, then as much as `write` says it needs, until
/// the record fits (rustls' unbuffered API writes into the caller's
/// buffer, and says how much it needs when that is too small).
fn grow_onto(
    out: &mut Vec<u8>,
    mut need: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    let len = out.len();
    loop {
        out.resize(len + need, 0);
        match write(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(Short::Room(required)) => need = required,
            Err(Short::Failed(e)) => {
                out.truncate(len);
                return Err(e);
            }
        }
    }
}

/// What to do once a state is handled and the input discarded.
enum Next {
    Again,
    Flush,
    Read,
    Done,
}

impl HoldTls {
    /// Runs the handshake on a connected socket.
    pub(crate) async fn connect(
        mut tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<HoldTls> {
        let mut session =
            Box::new(UnbufferedClientConnection::new(config, name).map_err(tls_error)?);
        let mut inbuf = vec![0u8; HANDSHAKE_BUF];
        let mut filled = 0;
        let mut out = Vec::new();
        loop {
            let UnbufferedStatus { discard, state } =
                session.process_tls_records(&mut inbuf[..filled]);
            let next = match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_onto(&mut encode, &mut out)?;
                    Next::Again
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    Next::Flush
                }
                ConnectionState::BlockedHandshake => Next::Read,
                ConnectionState::WriteTraffic(_) => Next::Done,
                // Data before our first request: none is expected; drop it.
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        record.map_err(tls_error)?;
                    }
                    Next::Again
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("TLS handshake ended in {other:?}"),
                    ))
                }
            };
            inbuf.copy_within(discard..filled, 0);
            filled -= discard;
            match next {
                Next::Again => {}
                Next::Flush => {
                    tcp.write_all(&out).await?;
                    out.clear();
                }
                Next::Read => {
                    if filled == inbuf.len() {
                        inbuf.resize(inbuf.len() * 2, 0);
                    }
                    tcp.readable().await?;
                    match tcp.try_read(&mut inbuf[filled..]) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Next::Done => break,
            }
        }
        if !out.is_empty() {
            tcp.write_all(&out).await?;
        }
        // rustls keeps the handshake's message index (640 B) unless told
        // (patched `shrink_to_fit`, patches/README.md).
        session.shrink_to_fit();
        Ok(HoldTls {
            tcp,
            session,
            tail: inbuf[..filled].to_vec(),
            pending: Vec::new(),
            closed: false,
        })
    }
}

impl Held for HoldTls {
    async fn readable(&self) -> io::Result<()> {
        self.tcp.readable().await
    }

    fn try_read_app<'b>(&mut self, buf: &'b mut [u8]) -> io::Result<Read<'b>> {
        if self.closed {
            return Ok(Read::Eof);
        }
        // Ciphertext in the first half, plaintext (never longer) in the second.
        let (cipher, plain) = buf.split_at_mut(buf.len() / 2);
        let mut filled = self.tail.len();
        cipher[..filled].copy_from_slice(&self.tail);
        self.tail = Vec::new();
        match self.tcp.try_read(&mut cipher[filled..]) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.tail = cipher[..filled].to_vec();
                return Ok(Read::Nothing);
            }
            Err(e) => return Err(e),
        }
        let mut start = 0;
        let mut out = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.session.process_tls_records(&mut cipher[start..filled]);
            let more = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let end = out + record.payload.len();
                        if end > plain.len() {
                            return Err(io::Error::other("a reply larger than the read buffer"));
                        }
                        plain[out..end].copy_from_slice(record.payload);
                        out = end;
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_onto(&mut encode, &mut self.pending)?;
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.closed = true;
                    false
                }
                _ => false,
            };
            start += discard;
            if !more {
                break;
            }
        }
        self.tail = cipher[start..filled].to_vec();
        // Tickets and KeyUpdates regrow rustls' message index: not kept.
        self.session.shrink_to_fit();
        if !self.pending.is_empty() {
            // Answers to the server's housekeeping (a KeyUpdate) go out now
            // if the socket takes them, else before the next request.
            if let Ok(n) = self.tcp.try_write(&self.pending) {
                self.pending.drain(..n);
            }
        }
        Ok(match out {
            0 if self.closed => Read::Eof,
            0 => Read::Nothing,
            n => Read::Data(&plain[..n]),
        })
    }

    async fn write_app(&mut self, data: &[u8]) -> io::Result<Sent> {
        let mut out = std::mem::take(&mut self.pending);
        loop {
            let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    encrypt_onto(&mut traffic, data, &mut out)?;
                    break;
                }
                ConnectionState::EncodeTlsData(mut encode) => encode_onto(&mut encode, &mut out)?,
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("cannot send in TLS state {other:?}"),
                    ))
                }
            }
        }
        // Whole at once, or counted as held back if a heartbeat (the same
        // one `write(2)` as `write_all` when the socket takes it).
        write_whole(&mut self.tcp, &out).await
    }

    fn forget_readiness(&self) {
        self.tcp.forget_readiness();
    }
}
