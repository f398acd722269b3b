//! Why [`WebSocketUpgrade`](super::WebSocketUpgrade) refused a request:
//! the shapes and texts of axum's `axum::extract::ws::rejection`, so that
//! code matching on axum's (`WebSocketUpgradeRejection::MethodNotGet(_)`,
//! `rejection.body_text()`, `status()`) compiles against this module by a
//! change of path and answers the same bodies.
//!
//! Two more than axum's, for requests axum answers otherwise:
//! [`NotHttp11`] (neither HTTP/1.1 nor HTTP/2: `400`; axum answers such an
//! HTTP/1.0 request `426`, [`ConnectionNotUpgradable`]) and
//! [`UnsupportedProtocol`] (an HTTP/2 extended CONNECT for another
//! `:protocol` than `websocket`: `501`, as RFC 9220 §3 asks; axum answers
//! `400`, [`InvalidProtocolPseudoheader`]).

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// One rejection: a unit struct with its status and body, as axum-core's
/// `__define_rejection!` makes them.
macro_rules! rejection {
    ($(#[$doc:meta])* $name:ident, $status:ident, $body:literal) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        #[non_exhaustive]
        pub struct $name;

        impl $name {
            /// The response body text used for this rejection.
            pub fn body_text(&self) -> String {
                self.to_string()
            }

            /// The status code used for this rejection.
            pub fn status(&self) -> StatusCode {
                StatusCode::$status
            }
        }

        impl IntoResponse for $name {
            fn into_response(self) -> Response {
                (self.status(), $body).into_response()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($body)
            }
        }

        impl std::error::Error for $name {}
    };
}

rejection!(
    /// Not a `GET` (HTTP/1.1 upgrades must be).
    MethodNotGet,
    METHOD_NOT_ALLOWED,
    "Request method must be `GET`"
);
rejection!(
    /// Over HTTP/2, not a `CONNECT` (RFC 8441 §4).
    MethodNotConnect,
    METHOD_NOT_ALLOWED,
    "Request method must be `CONNECT`"
);
rejection!(
    /// `Connection` lacks the `upgrade` token.
    InvalidConnectionHeader,
    BAD_REQUEST,
    "Connection header did not include 'upgrade'"
);
rejection!(
    /// `Upgrade` is not `websocket`.
    InvalidUpgradeHeader,
    BAD_REQUEST,
    "`Upgrade` header did not include 'websocket'"
);
rejection!(
    /// An HTTP/2 `CONNECT` without `:protocol` (a plain tunnel request).
    InvalidProtocolPseudoheader,
    BAD_REQUEST,
    "`:protocol` pseudo-header did not include 'websocket'"
);
rejection!(
    /// `Sec-WebSocket-Version` is not 13.
    InvalidWebSocketVersionHeader,
    BAD_REQUEST,
    "`Sec-WebSocket-Version` header did not include '13'"
);
rejection!(
    /// No `Sec-WebSocket-Key`.
    WebSocketKeyHeaderMissing,
    BAD_REQUEST,
    "`Sec-WebSocket-Key` header missing"
);
rejection!(
    /// The request carries no megaconn upgrade handle: not served by
    /// megaconn, or the handle was taken already.
    ConnectionNotUpgradable,
    UPGRADE_REQUIRED,
    "WebSocket request couldn't be upgraded since no upgrade state was present"
);
rejection!(
    /// Neither HTTP/1.1 nor HTTP/2 (megaconn's; axum answers `426`).
    NotHttp11,
    BAD_REQUEST,
    "WebSocket upgrades are served over HTTP/1.1 (Upgrade) and HTTP/2 (extended CONNECT)"
);
rejection!(
    /// An HTTP/2 extended `CONNECT` for another protocol than `websocket`
    /// (megaconn's: RFC 9220 §3's `501`; axum answers `400`).
    UnsupportedProtocol,
    NOT_IMPLEMENTED,
    "`:protocol` pseudo-header is not 'websocket': only WebSocket is implemented"
);

/// Why a request could not be upgraded: one variant for each way the
/// [`WebSocketUpgrade`](super::WebSocketUpgrade) extractor can fail, each
/// carrying its rejection, as axum's enum of the same name.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum WebSocketUpgradeRejection {
    MethodNotGet(MethodNotGet),
    MethodNotConnect(MethodNotConnect),
    InvalidConnectionHeader(InvalidConnectionHeader),
    InvalidUpgradeHeader(InvalidUpgradeHeader),
    InvalidProtocolPseudoheader(InvalidProtocolPseudoheader),
    InvalidWebSocketVersionHeader(InvalidWebSocketVersionHeader),
    WebSocketKeyHeaderMissing(WebSocketKeyHeaderMissing),
    ConnectionNotUpgradable(ConnectionNotUpgradable),
    NotHttp11(NotHttp11),
    UnsupportedProtocol(UnsupportedProtocol),
}

/// Applies `$do` to the variant's rejection, whichever it is.
macro_rules! each {
    ($self:expr, $inner:ident => $do:expr) => {
        match $self {
            WebSocketUpgradeRejection::MethodNotGet($inner) => $do,
            WebSocketUpgradeRejection::MethodNotConnect($inner) => $do,
            WebSocketUpgradeRejection::InvalidConnectionHeader($inner) => $do,
            WebSocketUpgradeRejection::InvalidUpgradeHeader($inner) => $do,
            WebSocketUpgradeRejection::InvalidProtocolPseudoheader($inner) => $do,
            WebSocketUpgradeRejection::InvalidWebSocketVersionHeader($inner) => $do,
            WebSocketUpgradeRejection::WebSocketKeyHeaderMissing($inner) => $do,
            WebSocketUpgradeRejection::ConnectionNotUpgradable($inner) => $do,
            WebSocketUpgradeRejection::NotHttp11($inner) => $do,
            WebSocketUpgradeRejection::UnsupportedProtocol($inner) => $do,
        }
    };
}

impl WebSocketUpgradeRejection {
    /// The response body text used for this rejection.
    pub fn body_text(&self) -> String {
        each!(self, inner => inner.body_text())
    }

    /// The status code used for this rejection.
    pub fn status(&self) -> StatusCode {
        each!(self, inner => inner.status())
    }
}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        each!(self, inner => inner.into_response())
    }
}

impl std::fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        each!(self, inner => std::fmt::Display::fmt(inner, f))
    }
}

impl std::error::Error for WebSocketUpgradeRejection {}

/// `From` each rejection into the enum, as axum's.
macro_rules! from {
    ($($name:ident),+) => {
        $(impl From<$name> for WebSocketUpgradeRejection {
            fn from(inner: $name) -> Self {
                Self::$name(inner)
            }
        })+
    };
}

from!(
    MethodNotGet,
    MethodNotConnect,
    InvalidConnectionHeader,
    InvalidUpgradeHeader,
    InvalidProtocolPseudoheader,
    InvalidWebSocketVersionHeader,
    WebSocketKeyHeaderMissing,
    ConnectionNotUpgradable,
    NotHttp11,
    UnsupportedProtocol
);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::rejection as ax;

    /// axum's rejections and these: the same status and body text, variant
    /// by variant (checked against axum's own values, so that a change of
    /// axum's texts shows here).
    #[test]
    fn the_texts_and_statuses_are_axums() {
        let pairs: [(WebSocketUpgradeRejection, ax::WebSocketUpgradeRejection); 8] = [
            (MethodNotGet.into(), ax::MethodNotGet::default().into()),
            (
                MethodNotConnect.into(),
                ax::MethodNotConnect::default().into(),
            ),
            (
                InvalidConnectionHeader.into(),
                ax::InvalidConnectionHeader::default().into(),
            ),
            (
                InvalidUpgradeHeader.into(),
                ax::InvalidUpgradeHeader::default().into(),
            ),
            (
                InvalidProtocolPseudoheader.into(),
                ax::InvalidProtocolPseudoheader::default().into(),
            ),
            (
                InvalidWebSocketVersionHeader.into(),
                ax::InvalidWebSocketVersionHeader::default().into(),
            ),
            (
                WebSocketKeyHeaderMissing.into(),
                ax::WebSocketKeyHeaderMissing::default().into(),
            ),
            (
                ConnectionNotUpgradable.into(),
                ax::ConnectionNotUpgradable::default().into(),
            ),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours.body_text(), theirs.body_text(), "{ours:?}");
            assert_eq!(ours.status(), theirs.status(), "{ours:?}");
            assert_eq!(ours.to_string(), theirs.to_string(), "{ours:?}");
        }
    }

    /// The response is the status and the body text, for megaconn's own
    /// two as for axum's.
    #[tokio::test]
    async fn the_response_is_the_status_and_the_body_text() {
        let all: [WebSocketUpgradeRejection; 3] = [
            MethodNotGet.into(),
            NotHttp11.into(),
            UnsupportedProtocol.into(),
        ];
        let statuses = [
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_IMPLEMENTED,
        ];
        for (rejection, status) in all.into_iter().zip(statuses) {
            let text = rejection.body_text();
            assert_eq!(rejection.status(), status, "{text}");
            let response = rejection.into_response();
            assert_eq!(response.status(), status, "{text}");
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(body, text.as_bytes());
        }
    }
}
