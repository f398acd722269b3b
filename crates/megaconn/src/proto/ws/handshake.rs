//! The opening handshake, server side (RFC 6455 §4.2): checks an HTTP/1.1
//! request and builds the `101` that accepts it (with permessage-deflate
//! when the route offers it and the client asks: `deflate.rs`), or the
//! `400`/`403`/`426` that says what was wrong with it (`501` to an HTTP/2
//! extended CONNECT, which the native engine does not serve).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use super::deflate::{self, Deflate};
use crate::service::upgrade::NativeRefusal;

/// The origin hook: judges the `Origin` header (`None`: not sent).
pub(crate) type OriginFn = dyn Fn(Option<&HeaderValue>) -> bool + Send + Sync;

/// Why a request is not a WebSocket handshake we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
    /// Whether the answer closes the connection (`Connection: close`).
    close: bool,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str) -> Rejection {
        Rejection {
            status,
            reason,
            close: false,
        }
    }

    /// The response: the reason as a plain-text body, and the headers that
    /// tell a client what would work (RFC 6455 §4.2.2, RFC 9110 §15.5.22).
    pub(crate) fn response(self) -> Response<String> {
        let mut response = Response::new(format!("{}\n", self.reason));
        *response.status_mut() = self.status;
        response.extensions_mut().insert(NativeRefusal);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// What an accepted handshake settled.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// `Sec-WebSocket-Accept`.
    accept: String,
    /// The subprotocol chosen, if any.
    pub protocol: Option<HeaderValue>,
    /// permessage-deflate, if agreed: its terms and the answer's header value.
    pub deflate: Option<(Deflate, HeaderValue)>,
}

impl Accepted {
    /// The `101 Switching Protocols` answer (the engine adds
    /// `Connection: upgrade`).
    pub(crate) fn response(&self) -> Response<String> {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&self.accept).expect("base64 is a valid header value"),
        );
        if let Some(protocol) = &self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        if let Some((_, extension)) = &self.deflate {
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, extension.clone());
        }
        response
    }
}

/// Checks `request` as a WebSocket opening handshake. `protocols`: the
/// subprotocols the server speaks, preferred first; `origin_ok` judges the
/// `Origin` header (absent for non-browser clients); `deflate`: whether
/// permessage-deflate is on offer.
pub(crate) fn check<B>(
    request: &Request<B>,
    protocols: &[HeaderValue],
    origin_ok: Option<&OriginFn>,
    deflate: bool,
) -> Result<Accepted, Rejection> {
    let headers = request.headers();
    // An HTTP/2 extended CONNECT (RFC 8441): this engine parks a WebSocket
    // as a socket of its own, which a stream of a shared connection is not.
    // 501, as RFC 9220 §3 answers a protocol the server does not serve.
    if request.version() == Version::HTTP_2 && request.method() == Method::CONNECT {
        return Err(Rejection::new(
            StatusCode::NOT_IMPLEMENTED,
            "this WebSocket route serves HTTP/1.1 upgrades only: WebSocket over HTTP/2 \
             (RFC 8441 extended CONNECT) is not served by megaconn's native route; \
             open it on an HTTP/1.1 connection",
        ));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: send `Upgrade: websocket` and `Connection: upgrade`",
        ));
    }
    if request.version() != Version::HTTP_11 {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake is an HTTP/1.1 request (WebSocket over HTTP/2 is not served)",
        ));
    }
    if request.method() != Method::GET {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake is a GET request",
        ));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake needs `Connection: upgrade`",
        ));
    }
    // A handshake has no body (RFC 6455 §4.1 gives it none). One that
    // declares a body is refused and its connection closed: the engine
    // would otherwise read that body before switching, so a client that
    // never sends it would hold the connection with its `101` promised
    // and no bound but `read_timeout` (off by default). Closing also spares
    // reading a body nobody wants.
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
    {
        return Err(Rejection {
            close: true,
            ..Rejection::new(
                StatusCode::BAD_REQUEST,
                "a WebSocket handshake carries no body: send no `Content-Length` or \
                 `Transfer-Encoding`",
            )
        });
    }
    let versions = headers.get_all(header::SEC_WEBSOCKET_VERSION);
    if versions
        .iter()
        .map(HeaderValue::as_bytes)
        .ne([b"13".as_slice()])
    {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: send `Sec-WebSocket-Version: 13`",
        ));
    }
    let key = match headers
        .get_all(header::SEC_WEBSOCKET_KEY)
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [key] if is_valid_key(key.as_bytes()) => key,
        _ => {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` must be one base64-encoded 16-byte value",
            ))
        }
    };
    if let Some(origin_ok) = origin_ok {
        if !origin_ok(headers.get(header::ORIGIN)) {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "this WebSocket endpoint does not accept requests from that Origin",
            ));
        }
    }
    Ok(Accepted {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        protocol: choose_protocol(headers, protocols),
        deflate: deflate.then(|| deflate::negotiate(headers)).flatten(),
    })
}

/// True when a comma-separated header has `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A key is 16 bytes in base64: 24 characters, the last two `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// The server's most preferred subprotocol the client offered.
fn choose_protocol(headers: &HeaderMap, ours: &[HeaderValue]) -> Option<HeaderValue> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    ours.iter()
        .find(|p| offered.iter().any(|o| p.as_bytes() == o.as_bytes()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> http::request::Builder {
        Request::get("/ws")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn the_rfc_example_is_accepted() {
        let accepted = check(&request().body(()).unwrap(), &[], None, false).unwrap();
        let response = accepted.response();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn an_http2_extended_connect_is_not_implemented_here() {
        let req = Request::connect("http://localhost/ws")
            .version(Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let rejection = check(&req, &[], None, false).unwrap_err();
        assert_eq!(rejection.status, StatusCode::NOT_IMPLEMENTED);
        assert!(rejection.reason.contains("HTTP/1.1"));
    }

    #[test]
    fn subprotocol_is_the_servers_first_choice_offered() {
        let req = request()
            .header("sec-websocket-protocol", "chat, superchat")
            .body(())
            .unwrap();
        let ours = [
            HeaderValue::from_static("superchat"),
            HeaderValue::from_static("chat"),
        ];
        let accepted = check(&req, &ours, None, false).unwrap();
        assert_eq!(accepted.protocol.unwrap(), "superchat");
        let none = check(&req, &[HeaderValue::from_static("mqtt")], None, false).unwrap();
        assert!(none.protocol.is_none());
    }

    #[test]
    fn deflate_is_agreed_only_when_offered_both_ways() {
        let req = request()
            .header("sec-websocket-extensions", "permessage-deflate")
            .body(())
            .unwrap();
        let on = check(&req, &[], None, true).unwrap().response();
        assert_eq!(
            on.headers()["sec-websocket-extensions"],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let off = check(&req, &[], None, false).unwrap().response();
        assert!(off.headers().get("sec-websocket-extensions").is_none());
        let plain = check(&request().body(()).unwrap(), &[], None, true).unwrap();
        assert!(plain.deflate.is_none());
    }

    #[test]
    fn bad_handshakes_say_why() {
        let status = |req: Request<()>| check(&req, &[], None, false).unwrap_err().status;
        let plain = Request::get("/ws").body(()).unwrap();
        assert_eq!(status(plain), StatusCode::UPGRADE_REQUIRED);
        let post = request().method("POST").body(()).unwrap();
        assert_eq!(status(post), StatusCode::BAD_REQUEST);
        let v8 = request().header("sec-websocket-version", "8");
        let mut v8 = v8.body(()).unwrap();
        v8.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(status(v8), StatusCode::UPGRADE_REQUIRED);
        let mut short_key = request().body(()).unwrap();
        short_key
            .headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(status(short_key), StatusCode::BAD_REQUEST);
        let deny = |_: Option<&HeaderValue>| false;
        let req = request()
            .header("origin", "https://evil.example")
            .body(())
            .unwrap();
        assert_eq!(
            check(&req, &[], Some(&deny), false).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }
}
