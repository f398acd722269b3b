//! The one thing a protocol must give the message layer: how a message goes
//! on its wire ([`Wire`]: a length header, a line ending, a WebSocket frame
//! header), and [`Encoded`], which frames a pushed or published message at
//! most once per wire, however many connections it goes to.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use crate::observe::close::FramingError;

/// How one kind of connection frames an outgoing message. A protocol
/// registers one per wire format it speaks on a worker (framed TCP: one per
/// listener), and gets back a [`WireId`] to tag its connections with.
pub(crate) trait Wire {
    /// Appends `payload`, framed, to `out`. Fails when the payload cannot be
    /// framed this way (longer than the header can say, a line holding a
    /// line ending, ...): then those connections do not get it.
    fn encode(&self, payload: &Bytes, out: &mut BytesMut) -> Result<(), FramingError>;
}

/// A registered [`Wire`], by its position in the worker's list.
pub(crate) type WireId = u16;

/// One message on its way to many connections: framed once per wire, the
/// same bytes (reference-counted, not copied) written to each connection.
pub(crate) struct Encoded {
    payload: Bytes,
    /// By wire id: not yet framed (`None`), or framed (`Some`, `None` when
    /// it could not be).
    framed: Vec<Option<Option<Bytes>>>,
}

impl Encoded {
    pub(crate) fn new(payload: Bytes) -> Encoded {
        Encoded {
            payload,
            framed: Vec::new(),
        }
    }

    /// The message as `wire` frames it (framed on first use), or `None` if it
    /// cannot be framed so.
    pub(crate) fn on(&mut self, wires: &[Rc<dyn Wire>], wire: WireId) -> Option<Bytes> {
        let i = usize::from(wire);
        if self.framed.len() <= i {
            self.framed.resize(i + 1, None);
        }
        self.framed[i]
            .get_or_insert_with(|| {
                let mut out = BytesMut::new();
                match wires.get(i)?.encode(&self.payload, &mut out) {
                    Ok(()) => Some(out.freeze()),
                    Err(error) => {
                        tracing::debug!(%error, "a pushed message cannot be framed for some connections; they do not get it");
                        None
                    }
                }
            })
            .clone()
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
        let mut msg = Encoded::new(Bytes::from_static(b"hi"));
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
        let mut long = Encoded::new(Bytes::from_static(b"too long"));
        assert_eq!(long.on(&wires, 0), None);
        assert_eq!(long.on(&wires, 0), None);
        assert_eq!(a.0.get(), 2);
        assert_eq!(long.on(&wires, 7), None);
    }
}
