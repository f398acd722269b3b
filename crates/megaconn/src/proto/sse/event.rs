//! The event stream format (WHATWG HTML §9.2.5): a message's text as an
//! event's `data:` lines, [`SseEvent`] for events with `event:`, `id:` and
//! `retry:` fields, the comment line of the heartbeat, and the body framing
//! around them (an HTTP/1.1 chunk each, or nothing when the stream is
//! delimited by the close).

use bytes::{BufMut, Bytes, BytesMut};

/// The heartbeat: a comment line and the blank line after it (clients
/// ignore comments; proxies see bytes).
pub(crate) const COMMENT: &[u8] = b":\n\n";

/// The last chunk of a chunked body (no trailers): the stream ended
/// cleanly.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// An event with the fields of the format, encoded as it is built, for
/// [`Hub::send_binary`](crate::Hub::send_binary),
/// [`publish_binary`](crate::Hub::publish_binary) and
/// [`broadcast_binary`](crate::Hub::broadcast_binary) (to an SSE stream the
/// binary forms carry an encoded event, the plain ones an event's data),
/// or [`SseRoute::goodbye`](crate::SseRoute::goodbye).
///
/// ```
/// use megaconn::SseEvent;
///
/// let event = SseEvent::data("line one\nline two").event("update").id("42");
/// assert_eq!(
///     &event.into_bytes()[..],
///     b"data: line one\ndata: line two\nevent: update\nid: 42\n\n"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The fields so far, each line ending in `\n`; the blank line that
    /// ends the event is added by [`SseEvent::into_bytes`].
    fields: BytesMut,
}

impl SseEvent {
    /// An event whose data is `text`: one `data:` line per line of it
    /// (split at `\r\n`, `\r` or `\n`, as a client joins them back with
    /// `\n`).
    pub fn data(text: &str) -> SseEvent {
        let mut fields = BytesMut::with_capacity(text.len() + 8);
        put_data(text, &mut fields);
        SseEvent { fields }
    }

    /// The event's type (`event:`), which a client's `addEventListener`
    /// names; line breaks in it are cut (a field is one line).
    pub fn event(mut self, name: &str) -> SseEvent {
        self.field("event", name);
        self
    }

    /// The event's id (`id:`), which a reconnecting client sends back as
    /// `Last-Event-ID`; line breaks are cut, and an id holding NUL is
    /// dropped (clients ignore one).
    pub fn id(mut self, id: &str) -> SseEvent {
        if !id.contains('\0') {
            self.field("id", id);
        }
        self
    }

    /// How long a client waits before reconnecting (`retry:`, in
    /// milliseconds).
    pub fn retry(mut self, millis: u64) -> SseEvent {
        self.field("retry", &millis.to_string());
        self
    }

    /// The encoded event, the blank line that ends it included.
    pub fn into_bytes(self) -> Bytes {
        let mut fields = self.fields;
        fields.put_u8(b'\n');
        fields.freeze()
    }

    /// Appends `name: value`, the value cut at its first line break.
    fn field(&mut self, name: &str, value: &str) {
        let value = value.split(['\r', '\n']).next().unwrap_or_default();
        put_line(&mut self.fields, name.as_bytes(), value.as_bytes());
    }
}

impl From<SseEvent> for Bytes {
    fn from(event: SseEvent) -> Bytes {
        event.into_bytes()
    }
}

/// Appends `name: value\n`.
fn put_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 3);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_u8(b'\n');
}

/// Appends `text` as `data:` lines, one per line of it (CRLF, CR and LF
/// each end a line, as the format's parser reads them).
fn put_data(text: &str, out: &mut BytesMut) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                put_line(out, b"data", &bytes[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                put_line(out, b"data", &bytes[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    put_line(out, b"data", &bytes[start..]);
}

/// `text` as a whole event: its `data:` lines and the blank line.
pub(crate) fn data_event(text: &str) -> Bytes {
    SseEvent::data(text).into_bytes()
}

/// Whether `bytes` is one whole event as [`SseEvent`] encodes one (or the
/// comment): UTF-8, lines ending in `\n` only, none blank but the last,
/// which ends it. What a binary push must be to go on an event stream
/// unchanged (anything else could end an event early or run into the
/// next).
pub(crate) fn is_one_event(bytes: &[u8]) -> bool {
    let Some(body) = bytes.strip_suffix(b"\n\n") else {
        return false;
    };
    std::str::from_utf8(bytes).is_ok()
        && !body.is_empty()
        && !body.contains(&b'\r')
        && !body.windows(2).any(|w| w == b"\n\n")
}

/// Appends `event` to `out` framed for the stream: an HTTP/1.1 chunk
/// (`chunked`), or as it is (a close-delimited HTTP/1.0 body).
pub(crate) fn frame(event: &[u8], chunked: bool, out: &mut BytesMut) {
    if event.is_empty() {
        // An empty chunk would be the last one.
        return;
    }
    if chunked {
        out.reserve(event.len() + 12);
        out.put_slice(format!("{:x}\r\n", event.len()).as_bytes());
        out.put_slice(event);
        out.put_slice(b"\r\n");
    } else {
        out.put_slice(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> String {
        String::from_utf8(data_event(text).to_vec()).unwrap()
    }

    /// A message's lines become `data:` lines, whatever ends them (WHATWG:
    /// CRLF, CR, LF), so the client's data is the text with `\n` between
    /// its lines; an empty message and a trailing line break keep their
    /// empty line, which the client reads back.
    #[test]
    fn every_line_of_a_message_is_a_data_line() {
        assert_eq!(data("hi"), "data: hi\n\n");
        assert_eq!(data("a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(data("a\r\nb\rc"), "data: a\ndata: b\ndata: c\n\n");
        assert_eq!(data("a\r\r\nb"), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(data(""), "data: \n\n");
        assert_eq!(data("end\n"), "data: end\ndata: \n\n");
        assert_eq!(data(" lead"), "data:  lead\n\n");
        assert_eq!(data("data: x"), "data: data: x\n\n");
    }

    /// Fields are one line each: a line break cuts the value; an id with
    /// NUL goes (clients ignore it).
    #[test]
    fn fields_are_one_line() {
        let event = SseEvent::data("x")
            .event("a\nid: 666")
            .id("7\r\nretry: 1")
            .id("bad\0")
            .retry(3000);
        assert_eq!(
            &event.into_bytes()[..],
            b"data: x\nevent: a\nid: 7\nretry: 3000\n\n"
        );
        let bytes: Bytes = SseEvent::data("y").into();
        assert_eq!(&bytes[..], b"data: y\n\n");
    }

    /// Only one whole event passes as a binary push.
    #[test]
    fn one_event_is_checked() {
        assert!(is_one_event(&SseEvent::data("a\nb").id("1").into_bytes()));
        assert!(is_one_event(COMMENT));
        for bad in [
            &b"data: a\n"[..],
            b"data: a\n\ndata: b\n\n",
            b"data: a\r\n\r\n",
            b"\n\n",
            b"data: \xff\n\n",
            b"",
        ] {
            assert!(!is_one_event(bad), "{bad:?}");
        }
    }

    #[test]
    fn chunks_carry_their_length_in_hex() {
        let mut out = BytesMut::new();
        frame(&[b'x'; 26], true, &mut out);
        assert_eq!(&out[..4], b"1a\r\n");
        assert_eq!(&out[out.len() - 2..], b"\r\n");
        assert_eq!(out.len(), 4 + 26 + 2);
        let mut plain = BytesMut::new();
        frame(b"data: x\n\n", false, &mut plain);
        assert_eq!(&plain[..], b"data: x\n\n");
        frame(b"", true, &mut plain);
        assert_eq!(&plain[..], b"data: x\n\n", "no empty chunk");
    }
}
