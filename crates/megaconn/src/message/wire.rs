//! The one thing a protocol must give the message layer: how a message goes
//! on its wire ([`Wire`]: a length header, a line ending, a WebSocket frame
//! header), and [`Encoded`], which frames a pushed or published message at
//! most once per wire, however many connections it goes to.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use crate::message::hub::Kind;
use crate::observe::close::FramingError;
use crate::observe::ratelog::{self, Flood};

/// How one kind of connection frames an outgoing message. A protocol
/// registers one per wire format it speaks on a worker (framed TCP: one per
/// listener), and gets back a [`WireId`] to tag its connections with.
pub(crate) trait Wire {
    /// Appends `payload`, framed, to `out`. Fails when the payload cannot be
    /// framed this way (longer than the header can say, a line holding a
    /// line ending, ...): then those connections do not get it.
    fn encode(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError>;

    /// [`Wire::encode`] for a message pushed as binary
    /// ([`Hub::send_binary`](crate::Hub::send_binary), ...): only a wire
    /// that tells text from binary (WebSocket) frames it otherwise.
    fn encode_binary(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        self.encode(payload, out)
    }
}

/// A registered [`Wire`], by its position in the worker's list.
pub(crate) type WireId = u16;

/// One message on its way to many connections: framed once per wire, the
/// same bytes (reference-counted, not copied) written to each connection.
pub(crate) struct Encoded {
    payload: Bytes,
    kind: Kind,
    /// Connections that did not get it: their wire could not frame it.
    pub(crate) unframable: u64,
    /// Connections that did not get it because their wire id names no wire
    /// of this worker: a bug of the server's, not a message their framing
    /// cannot carry, so not counted with [`Encoded::unframable`] (it was,
    /// and `push_unframable` told the operator to raise `max_frame_bytes`).
    pub(crate) no_wire: u64,
    /// By wire id: not yet framed (`None`), or framed (`Some`, `None` when
    /// it could not be).
    framed: Vec<Option<Option<Bytes>>>,
}

impl Encoded {
    pub(crate) fn new(payload: Bytes, kind: Kind) -> Encoded {
        Encoded {
            payload,
            kind,
            unframable: 0,
            no_wire: 0,
            framed: Vec::new(),
        }
    }

    /// The message as `wire` frames it (framed on first use), or `None` if it
    /// cannot be framed so: then the connection asking misses it, counted in
    /// [`Encoded::unframable`] (its worker adds them to
    /// `megaconn_limit_hits_total{limit="push_unframable"}`), and the first
    /// failure per wire is logged, rate-limited: a warning, as the sender
    /// was told `Ok` and its message reaches some connections or none.
    pub(crate) fn on(&mut self, wires: &[Rc<dyn Wire>], wire: WireId) -> Option<Bytes> {
        let i = usize::from(wire);
        if i >= wires.len() {
            self.no_wire += 1;
            if self.no_wire == 1 {
                ratelog::log(Flood::PushUnframable, |suppressed| {
                    tracing::error!(
                        wire,
                        wires = wires.len(),
                        suppressed,
                        "a hub message is for connections of a wire format this worker does not have (a bug of the server's); they do not get it"
                    )
                });
            }
            return None;
        }
        if self.framed.len() <= i {
            self.framed.resize(i + 1, None);
        }
        let (payload, kind) = (&self.payload, self.kind);
        let framed = self.framed[i]
            .get_or_insert_with(|| {
                let mut out = BytesMut::new();
                let wire = &wires[i];
                let framed = match kind {
                    Kind::Auto => wire.encode(payload, &mut out),
                    Kind::Binary => wire.encode_binary(payload, &mut out),
                };
                match framed {
                    Ok(()) => Some(out.freeze()),
                    Err(error) => {
                        ratelog::log(Flood::PushUnframable, |suppressed| {
                            tracing::warn!(
                                %error,
                                bytes = payload.len(),
                                suppressed,
                                "a hub message cannot be framed for some connections (over their listener's Framing::max_outbound_frame_bytes, or a line ending or bytes not UTF-8 on a lines listener); they do not get it: send what their framing carries, or raise max_outbound_frame_bytes"
                            )
                        });
                        None
                    }
                }
            })
            .clone();
        if framed.is_none() {
            self.unframable += 1;
        }
        framed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A wire that prefixes one byte and counts how often it framed.
    struct Counting(Cell<u32>, u8);

    impl Wire for Counting {
        fn encode(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
            self.0.set(self.0.get() + 1);
            if payload.len() > 3 {
                return Err(FramingError::FrameTooLarge);
            }
            out.extend_from_slice(&[self.1]);
            out.extend_from_slice(payload);
            Ok(())
        }
    }

    #[test]
    fn a_message_is_framed_once_per_wire() {
        let a = Rc::new(Counting(Cell::new(0), b'a'));
        let b = Rc::new(Counting(Cell::new(0), b'b'));
        let wires: Vec<Rc<dyn Wire>> = vec![a.clone(), b.clone()];
        let mut msg = Encoded::new(Bytes::from_static(b"hi"), Kind::Auto);
        for _ in 0..1000 {
            assert_eq!(msg.on(&wires, 0).as_deref(), Some(&b"ahi"[..]));
            assert_eq!(msg.on(&wires, 1).as_deref(), Some(&b"bhi"[..]));
        }
        assert_eq!((a.0.get(), b.0.get()), (1, 1));
        // The same bytes each time, not copies.
        assert_eq!(
            msg.on(&wires, 0).unwrap().as_ptr(),
            msg.on(&wires, 0).unwrap().as_ptr()
        );
        // Unframeable, once; an unknown wire gets nothing.
        let mut long = Encoded::new(Bytes::from_static(b"too long"), Kind::Auto);
        assert_eq!(long.on(&wires, 0), None);
        assert_eq!(long.on(&wires, 0), None);
        assert_eq!(a.0.get(), 2);
        assert_eq!(long.on(&wires, 7), None);
        // Each connection that missed it is counted, as unframable only if
        // its wire refused it (the unknown wire was counted with them).
        assert_eq!((long.unframable, long.no_wire), (2, 1));
        let mut short = Encoded::new(Bytes::from_static(b"hi"), Kind::Auto);
        assert_eq!(short.on(&wires, WireId::MAX), None);
        assert_eq!((short.unframable, short.no_wire), (0, 1));
    }
}
