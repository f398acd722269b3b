//! axum's compression and graceful-shutdown examples, the corner cases of
//! issue 14 (`ConnectInfo`, HEAD of a stream, blocking, 100-continue,
//! TimeoutLayer), two of README's "smaller things": a handler's reason
//! phrase and `TCP_NODELAY`, and the make-services `axum::serve` is given
//! (`into_make_service()`, NormalizePath's, `into_make_service_with_connect_info()`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use crate::common::{self, read_response_buffered, SAFETY};
use crate::harness::{ask, client, raw, Answer, Pair};

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn compression_both_ways() {
    use tower_http::compression::CompressionLayer;
    use tower_http::decompression::RequestDecompressionLayer;
    let big = "megaconn serves axum apps unchanged. ".repeat(300);
    let app = Router::new()
        .route(
            "/",
            post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
        )
        .route("/big", get(move || async move { big }))
        .layer(RequestDecompressionLayer::new())
        .layer(CompressionLayer::new());
    let pair = Pair::start(app, megaconn::Server::builder()).await;
    let c = client();
    // Keys in order: serde_json's `Value` writes them sorted.
    let json = br#"{"again":"world, world, world","hello":"world","n":[1,2,3]}"#;
    let zipped = pair
        .same(&c, &ask("GET", "/big").header("accept-encoding", "gzip"))
        .await;
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gunzip(&zipped.body),
        "megaconn serves axum apps unchanged. "
            .repeat(300)
            .as_bytes()
    );
    let plain = pair.same(&c, &ask("GET", "/big")).await;
    assert_eq!(plain.header("content-encoding"), None);
    let echoed = pair
        .same(
            &c,
            &ask("POST", "/")
                .header("content-encoding", "gzip")
                .header("accept-encoding", "gzip")
                .json("")
                .body(gzip(json)),
        )
        .await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&echoed.body), json);
    pair.same(
        &c,
        &ask("POST", "/")
            .header("content-encoding", "gzip")
            .json("")
            .body(b"not gzip".to_vec()),
    )
    .await;
}

// ---------------------------------------------------------------------------
// graceful-shutdown: idle connections closed, the in-flight request finished
// with `connection: close`, then the listener gone.
// ---------------------------------------------------------------------------

/// One server's view of a graceful shutdown, as the client sees it.
#[derive(Debug, PartialEq)]
struct ShutdownSeen {
    idle_closed: bool,
    in_flight: Answer,
    refused_after: bool,
}

/// Drives one graceful shutdown. `start` serves the app (whose `/slow`
/// handler reports `entered` and waits for `release`) until its signal
/// fires, and returns the address and the serve task.
async fn graceful<F, T>(start: F) -> ShutdownSeen
where
    F: FnOnce(Router, oneshot::Receiver<()>) -> (SocketAddr, tokio::task::JoinHandle<T>),
{
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let app = {
        let release = release.clone();
        Router::new().route("/", get(|| async { "hello" })).route(
            "/slow",
            get(move || async move {
                entered_tx.send(()).unwrap();
                release.notified().await;
                "finished"
            }),
        )
    };
    let mut entered = entered;
    let (signal_tx, signal) = oneshot::channel();
    let (addr, task) = start(app, signal);

    // An idle keep-alive connection, having served one request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut idle_buf = Vec::new();
    assert_eq!(
        read_response_buffered(&mut idle, &mut idle_buf, false)
            .await
            .status,
        200
    );
    // A request in flight.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(SAFETY, entered.recv())
        .await
        .unwrap()
        .unwrap();

    signal_tx.send(()).unwrap();
    // The idle connection is closed: the server has begun its shutdown.
    let rest = common::read_to_close(&mut idle).await;
    let idle_closed = rest.is_empty();
    release.notify_one();
    let mut buf = Vec::new();
    let in_flight = Answer::from_raw(read_response_buffered(&mut busy, &mut buf, false).await);
    tokio::time::timeout(SAFETY, task)
        .await
        .expect("serve returns")
        .unwrap();
    let refused_after = TcpStream::connect(addr).await.is_err();
    ShutdownSeen {
        idle_closed,
        in_flight,
        refused_after,
    }
}

#[tokio::test]
async fn graceful_shutdown() {
    let theirs = graceful(|app, signal| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async { signal.await.unwrap() })
                .await
                .unwrap()
        });
        (addr, task)
    })
    .await;
    let ours = graceful(|app, signal| {
        let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(1)
            .listen()
            .unwrap();
        let addr = server.local_addr();
        let task = tokio::spawn(async move {
            server
                .serve_with_shutdown(app, async { signal.await.unwrap() })
                .await
                .unwrap()
        });
        (addr, task)
    })
    .await;
    assert_eq!(ours, theirs);
    assert!(ours.idle_closed && ours.refused_after, "{ours:?}");
    assert_eq!(ours.in_flight.status, 200);
    assert_eq!(ours.in_flight.header("connection"), Some("close"));
    assert_eq!(ours.in_flight.body, b"finished");
}

// ---------------------------------------------------------------------------
// The corner cases of issue 14: ConnectInfo, HEAD of a stream, blocking,
// 100-continue, TimeoutLayer.
// ---------------------------------------------------------------------------

fn peer_app() -> Router {
    Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    )
}

/// GETs `/peer` and returns the answer with the client's own address in the
/// body replaced by `<peer>`, so that both servers' answers compare.
async fn ask_peer(addr: SocketAddr) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap().to_string();
    s.write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut a = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
    if a.body == me.as_bytes() {
        a.body = b"<peer>".to_vec();
        a.headers.retain(|(n, _)| n != "content-length");
    }
    a
}

#[tokio::test]
async fn connect_info_gives_the_peer_address() {
    let pair = Pair::start_with(peer_app(), peer_app(), megaconn::Server::builder(), true).await;
    let ours = ask_peer(pair.ours).await;
    assert_eq!(ours, ask_peer(pair.theirs).await);
    assert_eq!(
        (ours.status, ours.body.as_slice()),
        (200, b"<peer>".as_slice())
    );
    // Not asked for, it is missing on both (axum's 500 "Missing request
    // extension"): megaconn asks with `connect_info(true)` where axum::serve
    // asks with `into_make_service_with_connect_info`.
    let pair = Pair::start(peer_app(), megaconn::Server::builder()).await;
    let ours = ask_peer(pair.ours).await;
    assert_eq!(ours, ask_peer(pair.theirs).await);
    assert_eq!(ours.status, 500);
}

/// Routes for the remaining cases.
fn corner_app() -> Router {
    use tower_http::timeout::TimeoutLayer;
    let stream = || async {
        let chunks = (0..3).map(|i| Ok::<_, Infallible>(format!("chunk{i};")));
        Body::from_stream(futures_util::stream::iter(chunks))
    };
    Router::new()
        .route("/stream", get(stream))
        .route(
            "/spawn-blocking",
            get(|| async {
                tokio::task::spawn_blocking(|| "computed off the runtime")
                    .await
                    .unwrap()
            }),
        )
        .route(
            "/block-in-place",
            get(|| async { tokio::task::block_in_place(|| "computed in place") }),
        )
        .route(
            "/len",
            post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .route("/ignore", post(|| async { "body not read" }))
        .route("/never", get(futures_util::future::pending::<&'static str>))
        .route("/quick", get(|| async { "in time" }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ))
}

#[tokio::test]
async fn head_of_a_streaming_response() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    let head = b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n";
    let ours = raw(pair.ours, head, true).await;
    assert_eq!(ours, raw(pair.theirs, head, true).await);
    assert_eq!(ours.header("content-length"), None);
    let get = b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n";
    let ours = raw(pair.ours, get, false).await;
    assert_eq!(ours, raw(pair.theirs, get, false).await);
    assert_eq!(ours.body, b"chunk0;chunk1;chunk2;");
}

/// `spawn_blocking` works on megaconn's workers as under `axum::serve`;
/// `block_in_place` needs tokio's multi-threaded runtime, which megaconn's
/// thread-per-core workers are not: the documented difference is a 500 (and
/// a log line saying to use `spawn_blocking`) where axum::serve answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_blocking_works_and_block_in_place_is_the_documented_500() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    let c = client();
    let ok = pair.same(&c, &ask("GET", "/spawn-blocking")).await;
    assert_eq!(
        (ok.status, ok.body.as_slice()),
        (200, b"computed off the runtime".as_slice())
    );

    let theirs = ask("GET", "/block-in-place").send(&c, pair.theirs).await;
    assert_eq!(
        (theirs.status, theirs.body.as_slice()),
        (200, b"computed in place".as_slice())
    );
    let ours = ask("GET", "/block-in-place").send(&c, pair.ours).await;
    assert_eq!(ours.status, 500, "{ours:?}");
    assert_eq!(pair.handle.stats().panics, 1);
    pair.same(&c, &ask("GET", "/spawn-blocking")).await;
}

#[tokio::test]
async fn expect_100_continue() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    // The handler reads the body: `100 Continue` first, then the answer.
    let mut seen = Vec::new();
    for addr in [pair.theirs, pair.ours] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let interim = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
        s.write_all(b"hello").await.unwrap();
        let last = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
        seen.push((interim, last));
    }
    assert_eq!(seen[1], seen[0]);
    assert_eq!(seen[1].0.status, 100);
    assert_eq!(
        (seen[1].1.status, seen[1].1.body.as_slice()),
        (200, b"5 bytes".as_slice())
    );

    // The handler answers without reading: no `100 Continue`, the answer
    // straight away (the client never sends the body).
    let req =
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    let mut seen = Vec::new();
    for addr in [pair.theirs, pair.ours] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        let answer = Answer::from_raw(read_response_buffered(&mut s, &mut buf, false).await);
        // Whatever the client sends next, neither reads on: the body it was
        // never asked for and a request behind it are not answered.
        let _ = s
            .write_all(b"helloGET /quick HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        let after = common::read_to_close(&mut s).await;
        seen.push((answer, after));
    }
    let (mut theirs, ours) = (seen.remove(0), seen.remove(0));
    assert_eq!(
        (ours.0.status, ours.0.body.as_slice()),
        (200, b"body not read".as_slice())
    );
    assert!(ours.1.is_empty() && theirs.1.is_empty(), "both close");
    // The documented difference: megaconn says it will close (RFC 9110
    // §10.1.1, RFC 9112 §9.6), hyper closes without saying so.
    assert_eq!(ours.0.header("connection"), Some("close"));
    assert_eq!(theirs.0.header("connection"), None);
    theirs.0.headers.push(("connection".into(), "close".into()));
    theirs.0.headers.sort();
    assert_eq!(ours.0, theirs.0);
}

#[tokio::test]
async fn timeout_layer() {
    let pair = Pair::start(corner_app(), megaconn::Server::builder()).await;
    let c = client();
    let late = pair.same(&c, &ask("GET", "/never")).await;
    assert_eq!(late.status, 408);
    let quick = pair.same(&c, &ask("GET", "/quick")).await;
    assert_eq!(
        (quick.status, quick.body.as_slice()),
        (200, b"in time".as_slice())
    );
}

// ---------------------------------------------------------------------------
// README's "Smaller things" a client can see: the reason phrase and
// TCP_NODELAY.
// ---------------------------------------------------------------------------

/// A handler that names its own reason phrase (hyper's `ReasonPhrase`).
fn reason_app() -> Router {
    use axum::response::IntoResponse;
    Router::new().route(
        "/",
        get(|| async {
            let mut response = "fine".into_response();
            response
                .extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
            response
        }),
    )
}

/// The status line of the answer to one `GET /` (the reqwest client does
/// not show the reason phrase: raw TCP).
async fn status_line(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = common::read_to_close(&mut s).await;
    let raw = String::from_utf8_lossy(&raw);
    raw.split("\r\n").next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_handlers_reason_phrase_is_sent_by_axum_serve_not_by_megaconn() {
    let pair = Pair::start(reason_app(), megaconn::Server::builder()).await;
    assert_eq!(status_line(pair.theirs).await, "HTTP/1.1 200 Fine Thanks");
    // The documented difference: megaconn writes the status's standard
    // reason whatever the handler asked for.
    assert_eq!(status_line(pair.ours).await, "HTTP/1.1 200 OK");
}

/// The server's end of the client connection `client` to `server`, found
/// among this process's descriptors (both servers run in the test's
/// process): a duplicate, so that it stays valid while it is looked at.
fn server_end(server: SocketAddr, client: SocketAddr) -> socket2::Socket {
    use std::os::fd::{FromRawFd, OwnedFd};
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; a descriptor closed
        // meanwhile makes it fail (-1), and one reused is simply another
        // file, which the addresses below tell apart.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` is a new descriptor that nothing else owns.
        let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(dup) });
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        if local == Some(server) && peer == Some(client) {
            return socket;
        }
    }
    panic!("no socket of this process serves {client} on {server}");
}

/// Whether the server's end of a connection that got an answer has
/// `TCP_NODELAY` set.
async fn nodelay_of_an_answered_connection(server: SocketAddr) -> bool {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Answered: the server has accepted the connection and set its
    // options; the connection stays open (keep-alive) while it is looked at.
    let mut buf = Vec::new();
    assert_eq!(
        read_response_buffered(&mut s, &mut buf, false).await.status,
        200
    );
    server_end(server, s.local_addr().unwrap())
        .nodelay()
        .unwrap()
}

#[tokio::test]
async fn tcp_nodelay_is_on_under_megaconn_and_off_under_axum_serve() {
    let app = Router::new().route("/", get(|| async { "hello" }));
    let pair = Pair::start(app.clone(), megaconn::Server::builder()).await;
    assert!(!nodelay_of_an_answered_connection(pair.theirs).await);
    assert!(nodelay_of_an_answered_connection(pair.ours).await);
    // And `Builder::nodelay(false)` turns it off.
    let off = Pair::start(app, megaconn::Server::builder().nodelay(false)).await;
    assert!(!nodelay_of_an_answered_connection(off.ours).await);
}

// ---------------------------------------------------------------------------
// `into_make_service()`: what `axum::serve` is usually handed, served as is.
// ---------------------------------------------------------------------------

fn slash_app() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// `serve_with_shutdown(app.into_make_service(), …)` and axum's documented
/// NormalizePath pattern (`ServiceExt::<Request>::into_make_service` of a
/// layered router) compile and serve under megaconn as under `axum::serve`.
/// (Neither compiled: E0271, expected `Response`, found `Router`.)
#[tokio::test]
async fn into_make_service_is_served_as_under_axum_serve() {
    use axum::extract::Request;
    use axum::ServiceExt;
    use tower::Layer;
    use tower_http::normalize_path::NormalizePathLayer;

    let c = client();
    // The plain one, with a shutdown signal, as in axum's graceful-shutdown
    // example.
    let server = crate::harness::listen(megaconn::Server::builder());
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(
        server.serve_with_shutdown(slash_app().into_make_service(), async {
            let _ = stopped.await;
        }),
    );
    let ours = ask("GET", "/hello").send(&c, addr).await;
    assert_eq!((ours.status, &ours.body[..]), (200, &b"hello"[..]));
    stop.send(()).unwrap();
    tokio::time::timeout(SAFETY, served)
        .await
        .expect("shut down")
        .unwrap()
        .unwrap();

    // NormalizePath around the router, made a make-service.
    let normalized = || {
        ServiceExt::<Request>::into_make_service(
            NormalizePathLayer::trim_trailing_slash().layer(slash_app()),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let theirs = listener.local_addr().unwrap();
    let theirs_task =
        tokio::spawn(async move { axum::serve(listener, normalized()).await.unwrap() });
    let server = crate::harness::listen(megaconn::Server::builder());
    let ours_addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.serve(normalized()));
    for path in ["/hello/", "/hello", "/nothing/"] {
        let a = ask("GET", path);
        let t = a.send(&c, theirs).await;
        let o = a.send(&c, ours_addr).await;
        assert_eq!(o, t, "{path}: megaconn (left) vs axum::serve");
    }
    assert_eq!(ask("GET", "/hello/").send(&c, ours_addr).await.status, 200);
    handle.shutdown();
    theirs_task.abort();
}

/// A `Connected` type of the app's own, made from the peer's address:
/// `axum::serve` makes it from its `IncomingStream`, megaconn from the
/// peer's `SocketAddr`. Each one made is counted ([`PEERS_MADE`]).
#[derive(Clone)]
struct Peer(SocketAddr);

/// How many [`Peer`]s were made, by either server.
static PEERS_MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        PEERS_MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<SocketAddr> for Peer {
    fn connect_info(peer: SocketAddr) -> Peer {
        PEERS_MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Peer(peer)
    }
}

/// `/peer` as in [`peer_app`], and `/who`, the address a [`Peer`] holds.
fn who_app() -> Router {
    peer_app().route(
        "/who",
        get(|ConnectInfo(Peer(peer)): ConnectInfo<Peer>| async move { peer.to_string() }),
    )
}

/// Sends `GET path` twice, pipelined on one connection (so that megaconn
/// answers both without parking it in between); returns both answers'
/// bodies and the client's address.
async fn get_twice(addr: SocketAddr, path: &str) -> (Vec<String>, SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let me = s.local_addr().unwrap();
    let one = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(format!("{one}{one}").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let r = read_response_buffered(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200, "{r:?}");
        bodies.push(String::from_utf8(r.body).unwrap());
    }
    (bodies, me)
}

/// GETs `path` over h2c; returns the answer's status and body and the
/// client's address.
async fn h2c_get(addr: SocketAddr, path: &str) -> (u16, String, SocketAddr) {
    let (client, me) = common::h2c_from(addr).await;
    let mut client = client.ready().await.expect("client ready");
    let req = axum::http::Request::get(format!("http://t{path}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).expect("send request");
    let response = tokio::time::timeout(SAFETY, response)
        .await
        .expect("an answer")
        .expect("a response");
    let status = response.status().as_u16();
    let mut recv = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        body.extend_from_slice(&chunk.expect("a body"));
    }
    (status, String::from_utf8(body).unwrap(), me)
}

/// [`who_app`] as `into_make_service_with_connect_info::<C>()`, served by
/// `axum::serve` and by megaconn (which is not asked for `connect_info`).
async fn serve_with_connect_info<C>() -> Pair
where
    C: axum::extract::connect_info::Connected<SocketAddr>
        + for<'a> axum::extract::connect_info::Connected<
            axum::serve::IncomingStream<'a, tokio::net::TcpListener>,
        >,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let theirs = listener.local_addr().unwrap();
    let app = who_app().into_make_service_with_connect_info::<C>();
    let hyper = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = crate::harness::listen(megaconn::Server::builder());
    let ours = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.serve(who_app().into_make_service_with_connect_info::<C>()));
    Pair {
        theirs,
        ours,
        handle,
        hyper,
    }
}

/// axum's documented way to get `ConnectInfo`,
/// `app.into_make_service_with_connect_info::<SocketAddr>()`, is served by
/// megaconn as by `axum::serve` (without `Builder::connect_info`): the
/// handler gets the peer's address, on HTTP/1.1 and h2c. So is one with a
/// `Connected` type of the app's own that implements
/// `Connected<SocketAddr>`, made once for a connection's requests as under
/// `axum::serve`, and again, unlike it, when megaconn wakes the connection
/// from the parking lot. (Neither compiled: `IntoMakeServiceWithConnectInfo`
/// was not an `IntoHttpService`.)
#[tokio::test]
async fn into_make_service_with_connect_info_is_served_as_under_axum_serve() {
    let pair = serve_with_connect_info::<SocketAddr>().await;
    let (theirs, ours) = (pair.theirs, pair.ours);
    let o = ask_peer(ours).await;
    assert_eq!(o, ask_peer(theirs).await, "megaconn (left) vs axum::serve");
    assert_eq!((o.status, o.body.as_slice()), (200, b"<peer>".as_slice()));
    for addr in [theirs, ours] {
        let (status, body, me) = h2c_get(addr, "/peer").await;
        assert_eq!((status, body), (200, me.to_string()), "h2c to {addr}");
    }
    drop(pair);

    // A `Connected` type of the app's: one made per connection on both.
    let pair = serve_with_connect_info::<Peer>().await;
    let (theirs, ours) = (pair.theirs, pair.ours);
    for addr in [theirs, ours] {
        use std::sync::atomic::Ordering::SeqCst;
        let before = PEERS_MADE.load(SeqCst);
        let (bodies, me) = get_twice(addr, "/who").await;
        assert_eq!(bodies, [me.to_string(), me.to_string()], "{addr}");
        assert_eq!(PEERS_MADE.load(SeqCst) - before, 1, "Peers made for {addr}");
        let (status, body, me) = h2c_get(addr, "/who").await;
        assert_eq!((status, body), (200, me.to_string()), "h2c to {addr}");
    }
    drop(pair);

    // A connection that megaconn parks between two requests: it makes the
    // `Peer` again when the connection wakes, where `axum::serve` made one
    // for the connection (README, "ConnectInfo").
    let pair = serve_with_connect_info::<Peer>().await;
    for (addr, made) in [(pair.theirs, 1), (pair.ours, 2)] {
        use std::sync::atomic::Ordering::SeqCst;
        let before = PEERS_MADE.load(SeqCst);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let me = s.local_addr().unwrap().to_string();
        let mut buf = Vec::new();
        for i in 0..2 {
            if i == 1 && addr == pair.ours {
                common::wait_stats(&pair.handle, "the connection parked", |st| {
                    st.connections_parked == 1
                })
                .await;
            }
            s.write_all(b"GET /who HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let r = read_response_buffered(&mut s, &mut buf, false).await;
            assert_eq!((r.status, r.body), (200, me.clone().into_bytes()), "{addr}");
        }
        assert_eq!(
            PEERS_MADE.load(SeqCst) - before,
            made,
            "Peers made for {addr}"
        );
    }
}

// ---------------------------------------------------------------------------
// axum's http-proxy example: `hyper::upgrade::on` for a CONNECT.
// ---------------------------------------------------------------------------

/// A `CONNECT` answered `200` by a handler that asked hyper for the
/// connection in a task of its own, keeping the request (axum's http-proxy
/// example): under megaconn the connection closes after the `200` (hyper's
/// upgrade finds nothing), and a warning says to take megaconn's
/// `OnUpgrade`, as for a `101` nobody waits for. (It closed without a
/// word: the request, still alive when the `200` went out, took the
/// connection and dropped it.) Deterministic: the request is held until the
/// client has read the `200`.
#[tokio::test]
async fn connect_2xx_taken_by_nobody_is_logged() {
    common::logs::capture();
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (keep_tx, mut kept) =
        tokio::sync::mpsc::unbounded_channel::<axum::http::Request<megaconn::Body>>();
    let proxy = tower::service_fn(move |mut req: axum::http::Request<megaconn::Body>| {
        let (held_tx, keep_tx) = (held_tx.clone(), keep_tx.clone());
        async move {
            assert_eq!(req.method(), axum::http::Method::CONNECT);
            // What the example's task does first; under megaconn it fails.
            let hyper_upgrade = hyper::upgrade::on(&mut req);
            assert!(hyper_upgrade.await.is_err());
            keep_tx.send(req).unwrap();
            held_tx.send(()).unwrap();
            Ok::<_, Infallible>(axum::http::Response::new(Body::empty()))
        }
    });
    let server = crate::harness::listen(megaconn::Server::builder());
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(server.serve(proxy));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    held.recv().await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        use tokio::io::AsyncReadExt;
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200 "), "{head:?}");
    // The 200 is out: the example's task ends, the request with it.
    drop(kept.recv().await.unwrap());
    let rest = common::read_to_close(&mut s).await;
    assert!(rest.is_empty(), "{rest:?}");
    let warnings = common::logs::warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("hyper::upgrade::on") && w.contains("megaconn::OnUpgrade")),
        "no warning among {warnings:?}"
    );
    handle.shutdown();
}
