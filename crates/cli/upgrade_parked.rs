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

    /// `batch` was taken out of the lots but is not sent (the send failed
    /// before it): its connections close here with it.
    pub fn dropped(&mut self, batch: Vec<ParkedConnection>) {
        self.count_taken(&batch);
    }

    /// `batch` left the lots: counted as taken.
    fn count_taken(&mut self, batch: &[ParkedConnection]) {
        self.taken += batch.len();
        self.messages += batch.iter().filter(|c| !c.state.is_http1()).count();
    }
}

/// `batch` cut into messages: at most [`MAX_FDS`] sockets and `target`
/// bytes of states each, a larger record alone (a framed connection's
/// state may be kilobytes; HTTP/1.1's are 10 bytes).
fn parked_messages(batch: &[ParkedConnection], target: usize) -> Vec<&[ParkedConnection]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, c) in batch.iter().enumerate() {
        let len = c.state.wire_len();
        if i > start && (i - start == MAX_FDS || bytes + len > target) {
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

/// The parked-connection messages for `batch`, of at most `target` bytes
/// of states each but for a larger record alone. `v0`: the new process is
/// of a session before 47 (its hello had no [`PARKED_WIRE_VERSION`]) and
/// reads only version 0's 5-byte records: the batch holds HTTP/1.1
/// connections only (`HandOverKinds::Http1Only`), sent in that form; any
/// other (none) would not be sent, and closes here.
fn parked_wire(batch: &[ParkedConnection], v0: bool, target: usize) -> Vec<Wire> {
    if v0 {
        let old: Vec<_> = batch
            .iter()
            .filter_map(|c| Some((c.state.to_v0_bytes()?, c.socket.as_raw_fd())))
            .collect();
        let per_message = (target / ParkedState::V0_BYTES).clamp(1, MAX_FDS);
        return old
            .chunks(per_message)
            .map(|chunk| {
                let mut wire = Wire::default();
                for (record, fd) in chunk {
                    wire.push(record, *fd);
                }
                wire
            })
            .collect();
    }
    parked_messages(batch, target)
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

/// What Linux keeps of a unix socket's send buffer from a datagram's
/// length: it refuses (`EMSGSIZE`) a `SOCK_SEQPACKET` message longer than
/// the buffer `getsockopt(SO_SNDBUF)` reads back less this
/// (`unix_dgram_sendmsg` in `net/unix/af_unix.c`: `len > sk_sndbuf - 32`).
const SEND_BUFFER_RESERVED: usize = 32;

/// The longest message the control socket takes now, its kind byte
/// included, from the send buffer the kernel holds (what it gave, not
/// what was asked); `None` if it cannot be read.
fn largest_message(peer: &Peer) -> Option<usize> {
    let have = sock::getsockopt(peer.0.as_raw_fd(), sock::sockopt::SndBuf).ok()?;
    Some(have.saturating_sub(SEND_BUFFER_RESERVED))
}

/// Raises the control socket's `SO_SNDBUF`, where it is lower, to take
/// the largest message of parked connections (1 + [`MAX_PARKED_PAYLOAD`]
/// bytes; the kernel refuses a message over its buffer with `EMSGSIZE`).
/// [`fit_send_buffer_to`] with that.
pub(super) fn fit_send_buffer(peer: &Peer) -> Option<usize> {
    fit_send_buffer_to(peer, 1 + MAX_PARKED_PAYLOAD + SEND_BUFFER_SLACK)
}

/// Raises the control socket's send buffer, where it is lower, to take a
/// message of `want` bytes and reads back what the kernel gave: the
/// longest message it takes now ([`largest_message`]). Without
/// privileges the kernel clamps the buffer to `net.core.wmem_max`
/// silently (and doubles it): once clamped under `want` it says so, and
/// [`send_parked`] cuts its messages to what was given, skipping a record
/// over it. It used to take the buffer for raised.
pub(super) fn fit_send_buffer_to(peer: &Peer, want: usize) -> Option<usize> {
    let fd = peer.0.as_raw_fd();
    if largest_message(peer).is_some_and(|room| room >= want) {
        return largest_message(peer);
    }
    // The kernel holds twice what is set: room for a second message
    // while the new process reads one.
    if let Err(e) = sock::setsockopt(fd, sock::sockopt::SndBuf, &want) {
        tracing::debug!(error = %e, "upgrade: cannot raise the control socket's send buffer");
    }
    let room = largest_message(peer);
    if let Some(room) = room.filter(|&room| room < want) {
        tracing::warn!(
            wanted = want,
            given = room,
            "upgrade: the kernel gave the control socket a smaller send buffer than asked (net.core.wmem_max): parked connections go in smaller messages, and one whose state is over it closes instead of moving"
        );
    }
    room
}

/// Sends `batch`'s parked connections to the new process (as
/// [`parked_wire`] cuts them, in messages the socket's send buffer takes,
/// as the kernel reads it back), counting into `handed`. A record over
/// that buffer is not sent, and its socket closes here with the batch (a
/// framed connection's handler heard `HandedOver` already), counted in
/// [`Handed::closed`]; so is one the socket refuses as too large even
/// alone (`EMSGSIZE`), after a message it refused went again one record a
/// message. Any other error ends the hand-over (the new process went
/// away).
pub(super) fn send_parked(
    peer: &Peer,
    batch: &[ParkedConnection],
    v0: bool,
    handed: &mut Handed,
) -> anyhow::Result<()> {
    handed.count_taken(batch);
    // The kind byte goes before the states.
    let room = largest_message(peer).map_or(PARKED_MESSAGE_TARGET, |l| l.saturating_sub(1));
    let target = PARKED_MESSAGE_TARGET.min(room);
    for wire in parked_wire(batch, v0, target) {
        if wire.payload.len() > room {
            // One record alone (`parked_messages` cuts the rest to fit):
            // the socket would refuse it.
            over_send_buffer(wire.payload.len());
            continue;
        }
        match peer.send_raw(PARKED, &wire.payload, &wire.fds) {
            Ok(()) => handed.sent += wire.fds.len(),
            Err(nix::Error::EMSGSIZE) => {
                for (record, fd) in wire.records() {
                    match peer.send_raw(PARKED, record, &[fd]) {
                        Ok(()) => handed.sent += 1,
                        Err(nix::Error::EMSGSIZE) => over_send_buffer(record.len()),
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

/// Sends the workers' `batches` to the new process ([`send_parked`] each),
/// counting into `handed`, until a send fails: the batches after it are
/// taken all the same and closed here, counted in [`Handed::closed`]
/// (their connections left the lots; dropping the rest unread hid them
/// from the count, and kept what each worker left to its drain, which
/// comes with its batch, from the caller). The first error, if any.
pub(super) fn send_batches(
    peer: &Peer,
    batches: &mut dyn Iterator<Item = Vec<ParkedConnection>>,
    v0: bool,
    handed: &mut Handed,
) -> anyhow::Result<()> {
    let mut sending = Ok(());
    for batch in batches {
        match sending {
            Ok(()) => sending = send_parked(peer, &batch, v0, handed),
            Err(_) => handed.dropped(batch),
        }
        // Dropping the batch closes this process's descriptors; the
        // sockets live on in the new process (those not sent close).
    }
    sending
}

/// A parked connection's state of `bytes` is over the control socket's
/// send buffer: not sent, it closes.
fn over_send_buffer(bytes: usize) {
    tracing::warn!(
        bytes,
        "upgrade: a parked connection's state is over the control socket's send buffer (raise net.core.wmem_max); that connection closes"
    );
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
    /// three records (12 KiB) go in messages the buffer takes, and a
    /// 20 KiB record, over it even alone, is skipped: its socket closes,
    /// counted, and the records after it go on. The first `EMSGSIZE` ended
    /// the whole hand-over, closing every one not sent.
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

    /// Every message the new process's end reads until the old one's
    /// closes: how many records each held.
    fn count_messages(new: Peer) -> std::thread::JoinHandle<Vec<usize>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok((kind, payload, fds)) = new.recv() {
                assert_eq!(kind, PARKED);
                got.push(parked_states(&payload, fds.len()).unwrap().len());
            }
            got
        })
    }

    /// Records are cut into messages by the send buffer the kernel holds
    /// (read back), not the one asked for: over a buffer that takes 8 KiB
    /// messages, three 3 KB records go as two messages (two records, then
    /// one), none refused. Sized for 16 KiB, the first message was refused
    /// (`EMSGSIZE`) and all three went again one a message. And
    /// `fit_send_buffer_to` says what the kernel gave: over
    /// `net.core.wmem_max`, less than asked.
    #[test]
    fn records_are_cut_to_the_send_buffer_the_kernel_gave() {
        let (old, new) = control_pair();
        lower_send_buffer(&old, 4096);
        let given = largest_message(&old).unwrap();
        assert_eq!(given, 2 * 4096 - SEND_BUFFER_RESERVED);
        let counting = count_messages(new);
        let (batch, _theirs) = batch(&[3000, 3000, 3000]);
        let mut handed = Handed::default();
        send_parked(&old, &batch, false, &mut handed).unwrap();
        assert_eq!(handed.sent, 3, "{handed:?}");
        drop((old, batch));
        assert_eq!(counting.join().unwrap(), [2, 1]);

        let (old, _new) = control_pair();
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Privileged (root), a process may set more than wmem_max only
        // with SO_SNDBUFFORCE: SO_SNDBUF clamps for every process.
        let want = 2 * wmem_max + 64 * 1024;
        let room = fit_send_buffer_to(&old, want).unwrap();
        assert!(room < want, "clamped: {room} of {want}");
        assert_eq!(Some(room), largest_message(&old));
        assert_eq!(room, 2 * wmem_max - SEND_BUFFER_RESERVED);
    }

    /// A send that fails (the new process went away) ends the sending, but
    /// the batches after it are taken and counted all the same: 3 taken,
    /// none sent, 3 closed here. The rest were dropped unread, and the
    /// hand-over's counts missed them.
    #[test]
    fn the_batches_after_a_failed_send_are_counted_closed() {
        let (old, new) = control_pair();
        drop(new);
        let (first, _a) = batch(&[0]);
        let (second, _b) = batch(&[0, 10]);
        let mut batches = vec![first, second].into_iter();
        let mut handed = Handed::default();
        let sent = send_batches(&old, &mut batches, false, &mut handed);
        assert!(sent.is_err(), "the new process is gone");
        assert_eq!(
            handed,
            Handed {
                taken: 3,
                messages: 1,
                sent: 0
            }
        );
        assert_eq!(handed.closed(), 3);
        assert_eq!(batches.next().map(|b| b.len()), None, "all taken");
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
