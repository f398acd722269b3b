//! The parked connections' part of an upgrade's control socket
//! (`upgrade.rs` drives the rest): the old process cuts its workers'
//! batches into 'P' messages and sends them, the new process reads them
//! back into states and adopts them.
//!
//! Each part fails alone, never the whole hand-over: a message the
//! socket refuses as too large for its send buffer (`EMSGSIZE`: a
//! `SOCK_SEQPACKET` message must fit in `SO_SNDBUF` whole) goes again one
//! record a message, and a record refused even alone closes its own
//! socket only, counted; a message that arrives cut short (`MSG_TRUNC`,
//! `MSG_CTRUNC`) or unreadable closes its own sockets only, counted. Each
//! used to end the whole hand-over (the sender's) or the whole receive
//! (the new process's), closing every parked connection not sent yet.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context as _};
use megaconn::{ParkedConnection, ParkedState, ServerHandle};
use nix::sys::socket as sock;

use super::{Peer, END, MAX_FDS, PARKED};

/// Most payload bytes of one message of parked connections' states (a
/// record is at most 64 KiB, `ParkedState::MAX_PAYLOAD_BYTES` and its
/// header): the receiver reads each message into a buffer this large.
pub(super) const MAX_PARKED_PAYLOAD: usize = 64 * 1024;

/// Most payload bytes of a message of several parked connections' states;
/// a larger record goes alone. A `SOCK_SEQPACKET` message must fit in the
/// sender's `SO_SNDBUF` whole, and a small one (a lowered
/// `net.core.wmem_default`) may be under 64 KiB: 16 KiB fits all but the
/// smallest, and [`fit_send_buffer`] raises it first where it can.
const PARKED_MESSAGE_TARGET: usize = 16 * 1024;

/// The wire version of the parked connections' states the new process
/// reads, sent after its pid in its hello: 1, `ParkedState`'s version 1
/// form (and version 0's). A process of a session before 47 sends no such
/// byte, and reads version 0 only: the old process then hands over its
/// HTTP/1.1 connections only, in that form (see [`parked_wire`]).
pub(super) const PARKED_WIRE_VERSION: u8 = 1;

/// What the old process's hand-over did with the parked connections its
/// workers gave up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handed {
    /// Taken out of the parking lots (they left this server's count).
    pub taken: usize,
    /// Of them, message connections (framed).
    pub messages: usize,
    /// Sent to the new process; the rest of `taken` closed here.
    pub sent: usize,
}

impl Handed {
    /// Taken but not sent: closed here (a record too large for the control
    /// socket, a form the new process cannot read, or the send failed).
    pub fn closed(&self) -> usize {
        self.taken - self.sent
    }
}

/// `batch` cut into messages: at most [`MAX_FDS`] sockets and
/// [`PARKED_MESSAGE_TARGET`] bytes of states each, a larger record alone
/// (a framed connection's state may be kilobytes; HTTP/1.1's are 10 bytes).
fn parked_messages(batch: &[ParkedConnection]) -> Vec<&[ParkedConnection]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, c) in batch.iter().enumerate() {
        let len = c.state.wire_len();
        if i > start && (i - start == MAX_FDS || bytes + len > PARKED_MESSAGE_TARGET) {
            out.push(&batch[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < batch.len() {
        out.push(&batch[start..]);
    }
    out
}

/// One message of parked connections: its states' bytes, where each
/// record ends in them, and the sockets (one a record, in order).
#[derive(Debug, Default)]
struct Wire {
    payload: Vec<u8>,
    ends: Vec<usize>,
    fds: Vec<RawFd>,
}

impl Wire {
    fn push(&mut self, record: &[u8], fd: RawFd) {
        self.payload.extend_from_slice(record);
        self.ends.push(self.payload.len());
        self.fds.push(fd);
    }

    /// Each record and its socket.
    fn records(&self) -> impl Iterator<Item = (&[u8], RawFd)> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .zip(&self.fds)
            .map(|((start, &end), &fd)| (&self.payload[start..end], fd))
    }
}

/// The parked-connection messages for `batch`. `v0`: the new process is
/// of a session before 47 (its hello had no [`PARKED_WIRE_VERSION`]) and
/// reads only version 0's 5-byte records: the batch holds HTTP/1.1
/// connections only (`HandOverKinds::Http1Only`), sent in that form; any
/// other (none) would not be sent, and closes here.
fn parked_wire(batch: &[ParkedConnection], v0: bool) -> Vec<Wire> {
    if v0 {
        let old: Vec<_> = batch
            .iter()
            .filter_map(|c| Some((c.state.to_v0_bytes()?, c.socket.as_raw_fd())))
            .collect();
        return old
            .chunks(MAX_FDS)
            .map(|chunk| {
                let mut wire = Wire::default();
                for (record, fd) in chunk {
                    wire.push(record, *fd);
                }
                wire
            })
            .collect();
    }
    parked_messages(batch)
        .into_iter()
        .map(|chunk| {
            let mut wire = Wire::default();
            for c in chunk {
                wire.push(&c.state.to_bytes(), c.socket.as_raw_fd());
            }
            wire
        })
        .collect()
}

/// Room the control socket's send buffer is given beyond the largest
/// message, so that the next one can be queued while the new process
/// reads one.
const SEND_BUFFER_SLACK: usize = 4096;

/// Raises the control socket's `SO_SNDBUF`, where it is lower, to take
/// the largest message of parked connections (1 + [`MAX_PARKED_PAYLOAD`]
/// bytes; the kernel refuses a message over its buffer with `EMSGSIZE`).
/// Bounded by `net.core.wmem_max` without privileges: a message still
/// over it is cut up, or its record skipped ([`send_parked`]).
pub(super) fn fit_send_buffer(peer: &Peer) {
    let fd = peer.0.as_raw_fd();
    let want = 1 + MAX_PARKED_PAYLOAD + SEND_BUFFER_SLACK;
    // What `getsockopt` says is what the kernel holds, twice what was set.
    if sock::getsockopt(fd, sock::sockopt::SndBuf).is_ok_and(|have| have >= 2 * want) {
        return;
    }
    if let Err(e) = sock::setsockopt(fd, sock::sockopt::SndBuf, &want) {
        tracing::debug!(error = %e, "upgrade: cannot raise the control socket's send buffer");
    }
}

/// Sends `batch`'s parked connections to the new process (as
/// [`parked_wire`] cuts them), counting into `handed`. A message the
/// socket refuses as too large (`EMSGSIZE`: over its send buffer, which
/// [`fit_send_buffer`] could not raise enough) goes again one record a
/// message; a record refused even alone is not sent, and its socket
/// closes here with the batch (a framed connection's handler heard
/// `HandedOver` already), counted in [`Handed::closed`]. Any other error
/// ends the hand-over (the new process went away).
pub(super) fn send_parked(
    peer: &Peer,
    batch: &[ParkedConnection],
    v0: bool,
    handed: &mut Handed,
) -> anyhow::Result<()> {
    handed.taken += batch.len();
    handed.messages += batch.iter().filter(|c| !c.state.is_http1()).count();
    for wire in parked_wire(batch, v0) {
        match peer.send_raw(PARKED, &wire.payload, &wire.fds) {
            Ok(()) => handed.sent += wire.fds.len(),
            Err(nix::Error::EMSGSIZE) => {
                for (record, fd) in wire.records() {
                    match peer.send_raw(PARKED, record, &[fd]) {
                        Ok(()) => handed.sent += 1,
                        Err(nix::Error::EMSGSIZE) => {
                            tracing::warn!(
                                bytes = record.len(),
                                "upgrade: a parked connection's state is over the control socket's send buffer (raise net.core.wmem_max); that connection closes"
                            );
                        }
                        Err(e) => {
                            return Err(e).context("cannot write to the upgrade control socket")
                        }
                    }
                }
            }
            Err(e) => return Err(e).context("cannot write to the upgrade control socket"),
        }
    }
    Ok(())
}

/// The states of one message of parked connections, `fds` sockets: all
/// version 1 records (variable length, a framed connection's state rides
/// in its own, each saying its length), or all version 0's 5-byte records
/// (an old process's, HTTP/1.1 only), told by the first byte (a tag is
/// below 0x40, never the version byte) and the length. Anything else is
/// refused, never misread.
fn parked_states(payload: &[u8], fds: usize) -> anyhow::Result<Vec<ParkedState>> {
    if payload.first() != Some(&ParkedState::VERSION)
        && fds > 0
        && payload.len() == ParkedState::V0_BYTES * fds
    {
        return Ok(payload
            .chunks_exact(ParkedState::V0_BYTES)
            .map(|b| ParkedState::from_v0_bytes(b.try_into().expect("5 bytes")))
            .collect());
    }
    let mut states = Vec::with_capacity(fds);
    let mut rest = payload;
    while !rest.is_empty() {
        let (state, used) = ParkedState::from_bytes(rest)
            .context("upgrade: a parked connection's state is unreadable")?;
        states.push(state);
        rest = &rest[used..];
    }
    if states.len() != fds {
        bail!(
            "upgrade: {} parked states for {} sockets",
            states.len(),
            fds
        );
    }
    Ok(states)
}

/// The new process's side: adopts the parked connections the old process
/// sends into `handle`, until its end message; how many were adopted. A
/// message cut short on the way (`MSG_TRUNC`, `MSG_CTRUNC`) or unreadable
/// closes its own sockets only, logged with their count: the next ones may
/// be fine.
pub(super) fn receive_parked(peer: &Peer, handle: &ServerHandle) -> anyhow::Result<usize> {
    let mut received = 0usize;
    loop {
        let message = peer.recv_any()?;
        let (kind, payload, fds) = match message.cut {
            None => (message.kind, message.payload, message.fds),
            Some(why) if message.kind == PARKED => {
                closed(message.fds, &anyhow::anyhow!("{why}"));
                continue;
            }
            Some(why) => bail!("{why}"),
        };
        match kind {
            PARKED => {
                let states = match parked_states(&payload, fds.len()) {
                    Ok(states) => states,
                    Err(e) => {
                        closed(fds, &e);
                        continue;
                    }
                };
                let batch: Vec<ParkedConnection> = fds
                    .into_iter()
                    .zip(states)
                    .map(|(socket, state)| ParkedConnection { socket, state })
                    .collect();
                received += batch.len();
                handle.adopt_parked(batch);
            }
            END => return Ok(received),
            k => bail!("unexpected upgrade message {:?}", k as char),
        }
    }
}

/// Closes the sockets of a message of parked connections that cannot be
/// adopted (`why`), saying how many.
fn closed(fds: Vec<OwnedFd>, why: &anyhow::Error) {
    tracing::warn!(
        closed = fds.len(),
        error = format!("{why:#}"),
        "upgrade: a message of parked connections was unreadable; its connections closed"
    );
    drop(fds);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ask, control_pair, served};
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A version 1 state of protocol `tag` with a `payload`-byte payload.
    fn state(tag: u8, payload: usize) -> ParkedState {
        let mut b = vec![ParkedState::VERSION, tag, 0xff, 0xff, 0xff, 0xff];
        b.extend_from_slice(&(payload as u32).to_be_bytes());
        b.resize(ParkedState::HEADER_BYTES + payload, 7);
        ParkedState::from_bytes(&b).unwrap().0
    }

    /// Parked connections with these payload sizes (0: HTTP/1.1, tag 1;
    /// else framed, tag 2), each on one end of a socket pair; the other
    /// ends, to see which closed.
    fn batch(payloads: &[usize]) -> (Vec<ParkedConnection>, Vec<UnixStream>) {
        payloads
            .iter()
            .map(|&n| {
                let (ours, theirs) = UnixStream::pair().unwrap();
                let tag = if n == 0 { 1 } else { 2 };
                let c = ParkedConnection {
                    socket: OwnedFd::from(ours),
                    state: state(tag, n),
                };
                (c, theirs)
            })
            .unzip()
    }

    /// Every message the new process's end reads until the old one's
    /// closes: the states' payload lengths, one per socket received.
    fn read_all(new: Peer) -> std::thread::JoinHandle<Vec<usize>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok((kind, payload, fds)) = new.recv() {
                assert_eq!(kind, PARKED);
                let states = parked_states(&payload, fds.len()).unwrap();
                got.extend(
                    states
                        .iter()
                        .map(|s| s.wire_len() - ParkedState::HEADER_BYTES),
                );
            }
            got
        })
    }

    /// Lowers `peer`'s send buffer to `bytes` (the kernel holds twice).
    fn lower_send_buffer(peer: &Peer, bytes: usize) {
        sock::setsockopt(peer.0.as_raw_fd(), sock::sockopt::SndBuf, &bytes).unwrap();
    }

    /// Over a send buffer of 8 KiB (a lowered `net.core.wmem_default`),
    /// a message of three records (12 KiB) goes again one record a
    /// message, and a 20 KiB record, refused even alone, is skipped: its
    /// socket closes, counted, and the records after it go on. The first
    /// `EMSGSIZE` ended the whole hand-over, closing every one not sent.
    #[test]
    fn a_message_over_the_send_buffer_is_split_and_a_record_over_it_skipped() {
        let (old, new) = control_pair();
        lower_send_buffer(&old, 4096);
        let reading = read_all(new);
        let (batch, theirs) = batch(&[0, 6000, 6000, 20_000, 0]);
        let mut handed = Handed::default();
        send_parked(&old, &batch, false, &mut handed).expect("the hand-over goes on");
        assert_eq!(
            handed,
            Handed {
                taken: 5,
                messages: 3,
                sent: 4
            }
        );
        assert_eq!(handed.closed(), 1);
        drop((old, batch));
        assert_eq!(reading.join().unwrap(), [0, 6000, 6000, 0]);
        // The skipped one's only descriptor was the batch's: closed.
        let mut skipped = &theirs[3];
        skipped.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut skipped, &mut buf).unwrap(), 0);
    }

    /// `fit_send_buffer` raises a lowered send buffer to take the largest
    /// record: a 60 KiB state then goes whole (where `net.core.wmem_max`
    /// allows; it is 208 KiB by default).
    #[test]
    fn a_lowered_send_buffer_is_raised_to_take_the_largest_record() {
        let (old, new) = control_pair();
        lower_send_buffer(&old, 4096);
        fit_send_buffer(&old);
        let reading = read_all(new);
        let (batch, _theirs) = batch(&[60 * 1024]);
        let mut handed = Handed::default();
        send_parked(&old, &batch, false, &mut handed).unwrap();
        assert_eq!(handed.sent, 1, "{handed:?}");
        drop((old, batch));
        assert_eq!(reading.join().unwrap(), [60 * 1024]);
    }

    /// A message of parked connections over the receiver's buffer arrives
    /// cut short (`MSG_TRUNC`): its own socket closes, and the next
    /// message's connection is adopted and served. The receive used to end
    /// there, closing every connection after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_cut_short_closes_its_own_connections_only() {
        let (handle, _) = served();
        let (old, new) = control_pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut clients, mut accepted) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            clients.push(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap());
            let (s, _) = listener.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            accepted.push(s);
        }
        // 70 KiB: over the 1 + 64 KiB the receiver reads a message into.
        let huge = vec![ParkedState::VERSION; 70 * 1024];
        old.send(PARKED, &huge, &[accepted[0].as_raw_fd()]).unwrap();
        let http1 = state(1, 0).to_bytes();
        old.send(PARKED, &http1, &[accepted[1].as_raw_fd()])
            .unwrap();
        old.send(END, &1u64.to_be_bytes(), &[]).unwrap();
        drop(accepted);
        let received = tokio::task::spawn_blocking(move || receive_parked(&new, &handle))
            .await
            .unwrap();
        assert_eq!(received.expect("the receive goes on"), 1);
        let answers =
            tokio::task::spawn_blocking(move || clients.iter_mut().map(ask).collect::<Vec<_>>())
                .await
                .unwrap();
        assert_eq!(answers[0], "", "the cut message's connection closed");
        assert!(answers[1].starts_with("HTTP/1.1 "), "{:?}", answers[1]);
    }
}
