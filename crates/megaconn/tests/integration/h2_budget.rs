//! What an HTTP/2 client can make the server hold for request bodies no
//! handler reads (`Builder::http2_max_unread_body_bytes`, session 49: the
//! windows it is given are capped at the budget, counted once a
//! connection when its unread DATA reaches it), that a handler that reads
//! still gets a whole upload, and a `host` field naming another authority
//! than `:authority` refused `400` (RFC 9113 §8.3.1), as HTTP/1.1 refuses
//! a duplicate `Host`.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use megaconn::{Body, Builder, ServerHandle, DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES};

use super::h2::{limit_hits, SAFETY};

/// Routes: `/hang` keeps its body unread and never answers · `/count`
/// reads its whole body and answers `bytes=N sum=S` (S: the bytes' sum,
/// wrapping) · anything else `ok`.
async fn app(req: Request<Body>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/hang" => {
            let _body = req.into_body();
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/count" => {
            let mut body = req.into_body();
            let (mut bytes, mut sum) = (0usize, 0u64);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("the body reads").into_data() {
                    bytes += data.len();
                    sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
                }
            }
            Response::new(Full::new(Bytes::from(format!("bytes={bytes} sum={sum}"))))
        }
        _ => Response::new(Full::new(Bytes::from_static(b"ok"))),
    }
}

/// A server of [`app`] on one worker on 127.0.0.1; shut down when dropped.
struct Server {
    addr: SocketAddr,
    handle: ServerHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn start(builder: Builder) -> Server {
    let server = builder
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let service = tower::service_fn(|req| async move { Ok::<_, Infallible>(app(req).await) });
    tokio::spawn(server.serve(service));
    Server { addr, handle }
}

/// An h2c client and its connection's PING handle (the connection driven
/// on its own task).
async fn client(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, h2::PingPong) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let pings = conn.ping_pong().expect("the PING handle");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, pings)
}

/// A PING answered: every frame the server sent before its answer has
/// been read by the client's connection (frames arrive in order).
async fn round_trip(pings: &mut h2::PingPong) {
    tokio::time::timeout(SAFETY, pings.ping(h2::Ping::opaque()))
        .await
        .expect("a PING answered in time")
        .expect("the PING answered");
}

/// Sends what the server's windows let through on `send`, as room comes,
/// up to `want` bytes, counting each sent byte in `sent` before it can
/// reach the wire.
pub(super) fn upload(mut send: h2::SendStream<Bytes>, want: usize, sent: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let mut left = want;
        while left > 0 {
            send.reserve_capacity(left);
            let Some(Ok(room)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else {
                return;
            };
            let n = room.min(left);
            if n == 0 {
                continue;
            }
            sent.fetch_add(n, Relaxed);
            if send.send_data(Bytes::from(vec![7u8; n]), false).is_err() {
                return;
            }
            left -= n;
        }
        // Keep the stream open: the body stays unread, not ended.
        std::future::pending::<()>().await;
    });
}

/// `n` uploads of 256 KiB each to a handler that never reads, on
/// `client`'s connection, until the server counts the budget reached (then
/// one PING round trip: what it let through by then has arrived); the
/// bytes they got through.
async fn unread_uploads(
    handle: &ServerHandle,
    client: &h2::client::SendRequest<Bytes>,
    pings: &mut h2::PingPong,
    n: usize,
) -> Arc<AtomicUsize> {
    let sent = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let mut ready = client.clone().ready().await.unwrap();
        let req = Request::post("http://t/hang").body(()).unwrap();
        let (_answer, send) = ready.send_request(req, false).unwrap();
        upload(send, 256 * 1024, sent.clone());
    }
    let counted = async {
        while limit_hits(&handle.stats(), "http2_max_unread_body_bytes") == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(SAFETY, counted)
        .await
        .unwrap_or_else(|_| panic!("never counted; {} bytes sent", sent.load(Relaxed)));
    round_trip(pings).await;
    sent
}

/// Four uploads to a handler that never reads, each wanting 256 KiB (the
/// per-stream window before session 49; four of them the 1 MiB connection
/// window): together they get exactly the budget, 128 KiB, and no more
/// once the server has seen it all (a PING round trip after the count:
/// any window the server opened would have come before its answer); the
/// connection is counted once, nothing is reset, and it serves on.
/// Before: 1 MiB went through, and nothing counted it.
#[tokio::test]
async fn unread_uploads_stop_at_the_budget_and_are_counted_once() {
    let server = start(Builder::default());
    let (client, mut pings) = client(server.addr).await;
    let sent = unread_uploads(&server.handle, &client, &mut pings, 4).await;
    let budget = DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES as usize;
    assert_eq!(sent.load(Relaxed), budget, "sent when counted");
    round_trip(&mut pings).await;
    assert_eq!(sent.load(Relaxed), budget, "no window opened past it");
    // The connection serves on, and is counted once.
    let mut ready = client.ready().await.unwrap();
    let (answer, _) = ready
        .send_request(Request::get("http://t/").body(()).unwrap(), true)
        .unwrap();
    let answer = tokio::time::timeout(SAFETY, answer).await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let stats = server.handle.stats();
    assert_eq!(
        limit_hits(&stats, "http2_max_unread_body_bytes"),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

/// The budget is the builder's: at 256 KiB, two uploads of 256 KiB to
/// handlers that never read get 256 KiB between them.
#[tokio::test]
async fn the_budget_is_the_builders() {
    let budget = 256 * 1024;
    let server = start(Builder::default().http2_max_unread_body_bytes(budget as u32));
    let (client, mut pings) = client(server.addr).await;
    let sent = unread_uploads(&server.handle, &client, &mut pings, 2).await;
    assert_eq!(sent.load(Relaxed), budget);
}

/// A handler that reads gets a 4 MiB upload whole, 32 times the budget,
/// the room coming back as it reads.
#[tokio::test]
async fn a_reading_handler_gets_the_whole_upload() {
    const LEN: usize = 4 << 20;
    let server = start(Builder::default());
    let (client, _pings) = client(server.addr).await;
    let mut ready = client.ready().await.unwrap();
    let req = Request::post("http://t/count").body(()).unwrap();
    let (answer, mut send) = ready.send_request(req, false).unwrap();
    let uploaded = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < LEN {
            send.reserve_capacity(LEN - sent);
            let room = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
            let n = room.expect("open").expect("room").min(LEN - sent);
            let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
            send.send_data(Bytes::from(chunk), false).unwrap();
            sent += n;
        }
        send.send_data(Bytes::new(), true).unwrap();
    });
    let answer = tokio::time::timeout(SAFETY, answer)
        .await
        .expect("answered in time")
        .unwrap();
    uploaded.await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let mut body = answer.into_body();
    let mut text = Vec::new();
    while let Some(data) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
        text.extend_from_slice(&data.unwrap());
    }
    let sum = (0..LEN).fold(0u64, |s, i| s.wrapping_add((i % 251) as u64));
    assert_eq!(
        String::from_utf8(text).unwrap(),
        format!("bytes={LEN} sum={sum}")
    );
    assert_eq!(server.handle.stats().protocol_errors, 0);
}

/// Sends `GET http://t/` with `hosts` as its `host` fields; the status.
async fn get_with_hosts(client: &h2::client::SendRequest<Bytes>, hosts: &[&str]) -> StatusCode {
    let mut ready = client.clone().ready().await.unwrap();
    let mut req = Request::get("http://t/");
    for host in hosts {
        req = req.header("host", *host);
    }
    let (answer, _) = ready.send_request(req.body(()).unwrap(), true).unwrap();
    tokio::time::timeout(SAFETY, answer)
        .await
        .expect("answered in time")
        .expect("answered, not reset")
        .status()
}

/// A `host` naming another authority than `:authority` (`t`), or two
/// `host` fields, is refused `400` and counted as HTTP/1.1's refused heads
/// are (`malformed_request`, a protocol error); the same authority in
/// another case or with the scheme's default port is served, and the
/// connection serves on. Before, all were handed to the handler.
#[tokio::test]
async fn a_host_other_than_the_authority_is_refused() {
    let server = start(Builder::default());
    let client = common::h2c(server.addr).await;
    assert_eq!(get_with_hosts(&client, &["t"]).await, StatusCode::OK);
    assert_eq!(get_with_hosts(&client, &["T:80"]).await, StatusCode::OK);
    assert_eq!(get_with_hosts(&client, &[]).await, StatusCode::OK);
    assert_eq!(
        get_with_hosts(&client, &["other.example"]).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get_with_hosts(&client, &["t:8080"]).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get_with_hosts(&client, &["t", "t"]).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get_with_hosts(&client, &["t"]).await, StatusCode::OK);
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "malformed_request"), 3, "{stats:?}");
    assert_eq!(stats.protocol_errors, 3, "{stats:?}");
}
