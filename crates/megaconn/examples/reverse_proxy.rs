//! A reverse proxy on megaconn, nginx `proxy_pass`'s shape: every request
//! goes to one HTTP/1.1 upstream over a keep-alive pool (hyper-util's
//! legacy `Client`), bodies streamed both ways, `Upgrade` requests
//! (WebSocket) spliced to the upstream's upgraded connection. The README's
//! "Recipe: a reverse proxy" says why each step is there.
//!
//! ```text
//! cargo run --release -- serve --listen 127.0.0.1:3001 --admin off   # an upstream: megaconn's demo
//! cargo run -p megaconn --example reverse_proxy [-- LISTEN UPSTREAM]  # 127.0.0.1:3000 -> 127.0.0.1:3001
//! curl http://127.0.0.1:3000/           # Hello, World!
//! curl --data-binary @big http://127.0.0.1:3000/echo -o copy
//! ```
//!
//! Ctrl-C or SIGTERM drains: in-flight requests finish (up to
//! `shutdown_timeout`), then the workers and with them each one's pool go.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use megaconn::{Body, BoxError, ConnInfo, OnUpgrade, Server};
use tokio::sync::oneshot;

/// The upstream pool: megaconn's request [`Body`] goes out as it comes in
/// (no copy, no buffering), so an upload streams through.
type Pool = Client<HttpConnector, Upload>;
/// What the proxy answers: the upstream's body as it streams in, or a
/// short text of its own (502, 504).
type Answer = Response<Either<Incoming, Full<Bytes>>>;

/// How long the upstream may take to send its response head once it has
/// the whole request (nginx's `proxy_read_timeout`, 60 s; here shorter).
const UPSTREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The upstream's `host:port`, set once in `main`.
static UPSTREAM: OnceLock<String> = OnceLock::new();

thread_local! {
    /// One pool per megaconn worker, made on the worker's thread at its
    /// first request: its sockets are registered with that worker's
    /// reactor and its connection tasks run on that worker's runtime, the
    /// requests that use them on the same thread (no cross-thread wake).
    /// They go when the server stops, after the last worker's drain, as
    /// nginx's per-worker `keepalive` connections do.
    static POOL: Pool = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // nginx's `keepalive 32`: idle upstream connections kept per
            // worker (hyper-util keeps every one by default).
            .pool_max_idle_per_host(32)
            .build(connector)
    };
}

/// The request body on its way to the upstream, saying when it has all
/// gone. The head timeout starts then: hyper's response future resolves
/// only after the body is sent, so a timeout around the whole call would
/// cut every upload longer than it (a 10 MB upload at 1 MB/s got a 504
/// after 2 s in session 55's review).
struct Upload {
    body: Body,
    sent: Option<oneshot::Sender<()>>,
}

impl Upload {
    /// Starts the head's clock, once.
    fn gone(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        // hyper stops polling a body that says it has ended (a known
        // length all sent), so the end is looked for after each frame too.
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.gone();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and those `Connection` names: not
/// passed on either way. `Trailer` is end to end and stays: megaconn sends
/// a response's trailers only if it declares them (as hyper does). `TE`
/// is the client's to its next hop: only its `trailers` is passed on (as
/// Go's `ReverseProxy` does), so the upstream still knows the client takes
/// trailers (gRPC needs it).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocol an HTTP/1.1 upgrade request asks for (`Upgrade`, with
/// `Connection: upgrade`).
fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn text(status: StatusCode, text: &'static str) -> Answer {
    let mut answer = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *answer.status_mut() = status;
    answer
}

async fn proxy(mut req: Request<Body>) -> Result<Answer, Infallible> {
    if req.method() == Method::CONNECT {
        // A reverse proxy tunnels nothing (megaconn would hand a 2xx's
        // socket to the request's `OnUpgrade`, as for a 101).
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served\n",
        ));
    }
    let upgrade = upgrade_asked(req.headers());
    // megaconn's, not hyper's: `hyper::upgrade::on(&mut req)` finds
    // nothing under megaconn.
    let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
    let peer = req
        .extensions()
        .get::<ConnInfo>()
        .map(|info| info.peer.ip());
    // An HTTP/2 request has no `Host`: its `:authority` is in the URI.
    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        let authority = req.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let upstream = UPSTREAM.get().expect("set in main");
    let Ok(uri) = format!("http://{upstream}{path}").parse::<Uri>() else {
        return Ok(text(StatusCode::BAD_REQUEST, "bad request target\n"));
    };

    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    // hyper-util refuses a request marked HTTP/2 on an HTTP/1.1
    // connection (`UserUnsupportedVersion`): an h2 client's request must
    // be made an HTTP/1.1 one.
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    if let Some(ip) = peer {
        // Every `X-Forwarded-For` line the client sent, in order, then its
        // address (nginx's `$proxy_add_x_forwarded_for`).
        let before: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = if before.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", before.join(", "))
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded) {
            parts.headers.insert("x-forwarded-for", value);
        }
    }

    let (sent, body_sent) = oneshot::channel();
    let mut body = Upload {
        body,
        sent: Some(sent),
    };
    if body.is_end_stream() {
        body.gone();
    }
    let call = POOL.with(|pool| pool.request(Request::from_parts(parts, body)));
    // The clock starts once the body has gone (or was dropped: the
    // upstream answered without it, or failed).
    let head_timeout = async {
        let _ = body_sent.await;
        tokio::time::sleep(UPSTREAM_HEAD_TIMEOUT).await;
    };
    let mut response = tokio::select! {
        answered = call => match answered {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, "upstream request failed");
                return Ok(text(StatusCode::BAD_GATEWAY, "upstream failed\n"));
            }
        },
        () = head_timeout => return Ok(text(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")),
    };
    strip_hop_by_hop(response.headers_mut());
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(on_upgrade), Some(protocol)) = (on_upgrade, upgrade) else {
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                "upstream switched protocols unasked\n",
            ));
        };
        response.headers_mut().insert(header::UPGRADE, protocol);
        let upstream_side = hyper::upgrade::on(&mut response);
        // Both sides switch once the 101 is written (the client's) and was
        // read (the upstream's); the tunnel then runs on this worker and
        // counts as an open connection in megaconn's drain.
        tokio::spawn(async move {
            let (Ok(mut client), Ok(upstream)) = tokio::join!(on_upgrade, upstream_side) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut TokioIo::new(upstream)).await;
        });
    }
    Ok(response.map(Either::Left))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), megaconn::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()
        .expect("LISTEN is host:port");
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:3001".into());
    UPSTREAM.set(upstream.clone()).expect("set once");
    let server = Server::bind(listen)
        // `ConnInfo` (the peer's address) for `X-Forwarded-For`.
        .connect_info(true)
        // Uploads stream to the upstream: no limit of megaconn's own
        // (16 MiB by default; nginx's `client_max_body_size` is 1 MiB).
        .max_body_bytes(u64::MAX)
        .listen()?;
    println!(
        "proxying http://{} to http://{upstream}",
        server.local_addr()
    );
    let summary = server
        .serve_with_shutdown(tower::service_fn(proxy), megaconn::shutdown_signal()?)
        .await?;
    println!("{summary:?}");
    Ok(())
}
