//! gRPC as the protocols see it, for HTTP/2 (`proto/http2.rs`) and
//! HTTP/1.1 (gRPC-web, `proto/http1/exchange.rs`) alike: which gRPC a
//! request speaks (by its `content-type`), and the statuses megaconn
//! answers a call with on its own: a handler that panicked or a service
//! that failed (`grpc-status: 13`, INTERNAL, what gRPC's spec and
//! grpc-go's recovery give a server error) and a call the drain's
//! deadline ends (`grpc-status: 14`, UNAVAILABLE, which gRPC clients
//! retry).
//!
//! Such an answer is trailers-only when no response began (gRPC over
//! HTTP/2's "Trailers-Only": the head ends the stream and carries the
//! status; gRPC-web's, over HTTP/1.1 too: "a header block"), or HTTP/2
//! trailers after the messages sent, or, for gRPC-web, which has no HTTP
//! trailers, a trailer frame at the end of its body
//! ([`Status::web_trailer_frame`]). Never a `500` for a gRPC call: its
//! clients read a status without `grpc-status` as a transport failure and
//! a text body as a message frame (tonic: "invalid compression flag").

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Which gRPC a request speaks, by its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grpc {
    /// Not gRPC.
    No,
    /// `application/grpc`, `application/grpc+proto`, ...
    Native,
    /// `application/grpc-web`, `application/grpc-web+proto`, ...
    Web,
    /// `application/grpc-web-text` (base64), `application/grpc-web-text+proto`.
    WebText,
}

impl Grpc {
    /// The gRPC of a request with `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Grpc {
        let Some(ct) = headers.get(header::CONTENT_TYPE) else {
            return Grpc::No;
        };
        let ct = ct.as_bytes();
        // The subtype, then `+codec` or `;` parameters, or nothing.
        let is = |prefix: &[u8]| {
            ct.len() >= prefix.len()
                && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
                && matches!(ct.get(prefix.len()), None | Some(b'+' | b';'))
        };
        if is(b"application/grpc") {
            Grpc::Native
        } else if is(b"application/grpc-web") {
            Grpc::Web
        } else if is(b"application/grpc-web-text") {
            Grpc::WebText
        } else {
            Grpc::No
        }
    }

    /// The `content-type` a response of its own to it carries.
    pub(crate) fn content_type(self) -> Option<HeaderValue> {
        match self {
            Grpc::No => None,
            Grpc::Native => Some(HeaderValue::from_static("application/grpc")),
            Grpc::Web => Some(HeaderValue::from_static("application/grpc-web")),
            Grpc::WebText => Some(HeaderValue::from_static("application/grpc-web-text")),
        }
    }
}

/// A status megaconn ends a gRPC call with on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// `grpc-status`: the code, in decimal.
    code: &'static str,
    /// `grpc-message`, plain (percent-encoded when sent).
    pub(crate) message: &'static str,
}

/// The handler panicked: INTERNAL.
pub(crate) const PANICKED: Status = Status {
    code: "13",
    message: "the handler panicked",
};

/// The service returned an error rather than a response: INTERNAL.
pub(crate) const FAILED: Status = Status {
    code: "13",
    message: "the service failed",
};

/// The drain's deadline came with the call still open: UNAVAILABLE, which
/// gRPC clients (tonic's, grpc-go's) take as retryable.
pub(crate) const SHUTTING_DOWN: Status = Status {
    code: "14",
    message: "the server is shutting down",
};

impl Status {
    /// Its fields, `grpc-status` and `grpc-message`: as trailers after a
    /// response's messages, or in a trailers-only head
    /// ([`head_fields`](Status::head_fields)).
    pub(crate) fn fields(self) -> [(HeaderName, HeaderValue); 2] {
        // Percent-encoded as gRPC's spec asks (space, and anything outside
        // printable ASCII or `%`); the messages are ours and plain.
        let message = self.message.replace(' ', "%20");
        [
            (
                HeaderName::from_static("grpc-status"),
                HeaderValue::from_static(self.code),
            ),
            (
                HeaderName::from_static("grpc-message"),
                HeaderValue::from_str(&message).expect("plain ASCII"),
            ),
        ]
    }

    /// A trailers-only head's fields for a call speaking `grpc`: its
    /// `content-type`, then [`fields`](Status::fields); `None` if it is no
    /// gRPC call. No `content-length` on HTTP/2 (hyper sends none for an
    /// empty body either, and tonic's client lists the head's fields as
    /// the status's metadata).
    pub(crate) fn head_fields(self, grpc: Grpc) -> Option<[(HeaderName, HeaderValue); 3]> {
        let content_type = grpc.content_type()?;
        let [status, message] = self.fields();
        Some([(header::CONTENT_TYPE, content_type), status, message])
    }

    /// Writes the HTTP/1.1 answer of a gRPC-web call (any gRPC
    /// `content-type`) that ends with this status before its response
    /// began: `200`, the status in the head (trailers-only), no body, and
    /// `connection: close`, as every answer megaconn writes on its own
    /// after a failure (`encode_error`, which writes the text `500` of any
    /// other request). `date` is the `Date` field's value: the caller's
    /// (proto's clock; this layer reads none). Returns false, writing
    /// nothing, if it is no gRPC call.
    pub(crate) fn encode_http1(self, grpc: Grpc, date: &[u8], dst: &mut BytesMut) -> bool {
        let Some(fields) = self.head_fields(grpc) else {
            return false;
        };
        dst.put_slice(b"HTTP/1.1 200 OK\r\n");
        for (name, value) in &fields {
            dst.put_slice(name.as_str().as_bytes());
            dst.put_slice(b": ");
            dst.put_slice(value.as_bytes());
            dst.put_slice(b"\r\n");
        }
        dst.put_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
        dst.put_slice(date);
        dst.put_slice(b"\r\n\r\n");
        true
    }

    /// The gRPC-web trailer frame that ends, with this status, a response
    /// whose messages went out (gRPC-web has no HTTP trailers: "Response
    /// status encoded as part of the response body", grpc's
    /// `PROTOCOL-WEB.md`): flag byte `0x80`, the block's length (4 bytes,
    /// big-endian), and the fields as an HTTP/1 header block without its
    /// last line (`name:value\r\n` each, as tonic-web and Envoy write
    /// them). Base64 for `grpc-web-text`, whose every frame is (padded:
    /// the spec has clients take padding between frames). `None` for a
    /// call that is no gRPC-web call: native gRPC's status goes in HTTP/2
    /// trailers.
    pub(crate) fn web_trailer_frame(self, grpc: Grpc) -> Option<Vec<u8>> {
        if !matches!(grpc, Grpc::Web | Grpc::WebText) {
            return None;
        }
        let mut block = Vec::new();
        for (name, value) in self.fields() {
            block.extend_from_slice(name.as_str().as_bytes());
            block.push(b':');
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        let mut frame = Vec::with_capacity(5 + block.len());
        frame.push(0x80);
        frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
        frame.extend_from_slice(&block);
        Some(match grpc {
            Grpc::WebText => base64(&frame),
            _ => frame,
        })
    }
}

/// `bytes` in base64 (RFC 4648 §4, padded), for `grpc-web-text`'s frames
/// (a few dozen bytes, once a call at most: no crate for it).
fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // A chunk of k bytes gives k + 1 characters, then padding.
        for i in 0..4 {
            out.push(match i <= chunk.len() {
                true => ALPHABET[((n >> (18 - 6 * i)) & 63) as usize],
                false => b'=',
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_speaks_grpc_by_its_content_type() {
        let of = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            Grpc::of(&headers)
        };
        assert_eq!(of("application/grpc"), Grpc::Native);
        assert_eq!(of("Application/GRPC+proto"), Grpc::Native);
        assert_eq!(of("application/grpc-web;charset=x"), Grpc::Web);
        assert_eq!(of("application/grpc-web-text+proto"), Grpc::WebText);
        assert_eq!(of("application/grpcx"), Grpc::No);
        assert_eq!(of("application/json"), Grpc::No);
        assert_eq!(Grpc::of(&HeaderMap::new()), Grpc::No);
    }

    #[test]
    fn a_grpc_web_answer_over_http1_is_a_header_block() {
        let mut dst = BytesMut::new();
        let date = b"Mon, 07 Dec 2026 02:00:00 GMT";
        assert!(!PANICKED.encode_http1(Grpc::No, date, &mut dst));
        assert!(dst.is_empty());
        assert!(PANICKED.encode_http1(Grpc::Web, date, &mut dst));
        let text = std::str::from_utf8(&dst).unwrap();
        assert!(
            text.starts_with(
                "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web\r\n\
                 grpc-status: 13\r\ngrpc-message: the%20handler%20panicked\r\n\
                 content-length: 0\r\nconnection: close\r\ndate: "
            ),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
    }

    #[test]
    fn base64_is_rfc_4648s() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded.as_bytes(), "{plain}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), b"+/8=");
    }

    /// A gRPC-web status after the messages is a trailer frame: `0x80`,
    /// the length, the fields as a header block; base64 for text; none
    /// for native gRPC (HTTP/2 trailers) or a call that is no gRPC call.
    #[test]
    fn a_grpc_web_status_after_the_messages_is_a_trailer_frame() {
        let block: &[u8] =
            b"grpc-status:14\r\ngrpc-message:the%20server%20is%20shutting%20down\r\n";
        let mut frame = vec![0x80, 0, 0, 0, block.len() as u8];
        frame.extend_from_slice(block);
        assert_eq!(
            SHUTTING_DOWN.web_trailer_frame(Grpc::Web),
            Some(frame.clone())
        );
        assert_eq!(
            SHUTTING_DOWN.web_trailer_frame(Grpc::WebText),
            Some(base64(&frame))
        );
        assert_eq!(SHUTTING_DOWN.web_trailer_frame(Grpc::Native), None);
        assert_eq!(SHUTTING_DOWN.web_trailer_frame(Grpc::No), None);
    }
}
