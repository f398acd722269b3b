//! HTTP/2's tiny-DATA budget (`proto/http2/flood.rs`,
//! [`HTTP2_TINY_DATA_BUDGET`]: DATA frames under 16 bytes) from the honest
//! side: streams of small messages whose handler reads them as they come
//! are never cut, however fast they go, over a request body (a gRPC
//! client streaming empty messages: a 5-byte prefix each) and over an
//! upgraded stream (a `CONNECT` tunnel, as a WebSocket over HTTP/2 is),
//! because a tiny frame a handler reads gives its unit back (session 45).
//! Before, every tiny frame was charged as it arrived, read or not, and
//! such a stream faster than 1,000 messages a second was cut with
//! `GOAWAY(ENHANCE_YOUR_CALM)` after ~2,000 plus 1,000 a second. The
//! other side, tiny frames nobody reads, stays cut: `h2::a_paced_small_data_flood_is_cut_by_our_guard`,
//! `h2::a_burst_of_unread_small_data_frames_is_cut`. Bounded loops; the
//! paced streams on paused time, over an in-memory stream.

use crate::common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use megaconn::{Body, Builder, CloseReason};

use super::h2::{close_reason, event_log, limit_hits, start, SAFETY};

/// Messages each honest stream sends: five times the budget, so that a
/// stream charged for every frame is cut unless it took over 8 s
/// (`TINY_DATA_PER_SECOND`, 1,000 a second back).
const MESSAGES: usize = 5 * megaconn::HTTP2_TINY_DATA_BUDGET as usize;

/// How many messages a client may have sent and not yet had back: what
/// keeps a burst within what h2 lets a connection hold unread (its own
/// budget for frames under 256 bytes, ~2,000 tiny ones with our 1 MiB
/// window; a memory bound, not ours to lift), half of it.
const AHEAD: usize = 1_000;

/// An empty gRPC message: its 5-byte prefix (not compressed, length 0).
const EMPTY_MESSAGE: [u8; 5] = [0; 5];

/// An h2c client of `addr`, ready, with a connection window as hyper's
/// (1 MiB): h2's budget for small frames it holds unread is half of it,
/// and an echo of small messages is small frames too (its default 64 KiB
/// cut an echo at ~150, session 41). Its connection runs on a task.
pub(super) async fn wide_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_connection_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    (client.ready().await.unwrap(), conn)
}

/// Sends [`MESSAGES`] empty messages on `upload` as fast as the echo on
/// `response` comes back (never more than [`AHEAD`] in flight: a client
/// flushing a backlog), each its own DATA frame, and reads the echo as it
/// comes, on a task of its own. Panics naming how far it got if the
/// stream or its connection is cut.
async fn echo_burst(mut upload: h2::SendStream<Bytes>, response: h2::client::ResponseFuture) {
    let (echoed_tx, mut echoed) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let response = tokio::time::timeout(SAFETY, response).await.unwrap();
        let response = response.map_err(|e| format!("no response: {e}"))?;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut got = 0usize;
        while let Some(chunk) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
            let chunk = chunk.map_err(|e| {
                let n = got / EMPTY_MESSAGE.len();
                format!("cut after {n} of {MESSAGES} messages echoed: {e}")
            })?;
            got += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
            let _ = echoed_tx.send(got);
        }
        Ok::<usize, String>(got)
    });
    let began = std::time::Instant::now();
    for n in 0..MESSAGES {
        if n >= AHEAD {
            let oldest = (n - AHEAD + 1) * EMPTY_MESSAGE.len();
            let back = echoed.wait_for(|&got| got >= oldest);
            if tokio::time::timeout(SAFETY, back).await.unwrap().is_err() {
                // The reader ended: it says why.
                break;
            }
        }
        let message = Bytes::from_static(&EMPTY_MESSAGE);
        if upload.send_data(message, false).is_err() {
            break;
        }
    }
    let _ = upload.send_data(Bytes::new(), true);
    let got = tokio::time::timeout(SAFETY, reader).await.unwrap().unwrap();
    let took = began.elapsed();
    let rate = MESSAGES as f64 / took.as_secs_f64();
    match got {
        Ok(got) => assert_eq!(got, MESSAGES * EMPTY_MESSAGE.len(), "every message back"),
        Err(e) => panic!("{e} ({took:?}, ~{rate:.0} messages a second)"),
    }
}

/// A gRPC client streaming empty messages as fast as its echo comes back
/// (bidirectional; a backlog flushed after a reconnect, bursty telemetry):
/// 10,000 tiny DATA frames, at several thousand a second on loopback.
/// Never cut: each one the handler reads gives its unit back. Failed so
/// before session 45 ("cut after 1896 of 10000 messages echoed: stream
/// closed because of a broken pipe", the server's `GOAWAY` after ~2,500
/// sent).
#[tokio::test]
async fn a_burst_of_empty_messages_echoed_as_they_come_is_never_cut() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let (mut client, conn) = wide_client(server.addr).await;
    let post = Request::post("http://t/echo").body(()).unwrap();
    let (response, upload) = client.send_request(post, false).unwrap();
    echo_burst(upload, response).await;
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), 0, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    drop(client);
    let _ = tokio::time::timeout(SAFETY, conn).await;
    assert_eq!(close_reason(&mut events).await, CloseReason::ClientClosed);
    server.stop().await;
}

/// The same burst through a `CONNECT` tunnel whose handler echoes what it
/// reads (`service/h2_stream.rs`: a WebSocket over HTTP/2 reads its small
/// messages the same way): never cut, its reads giving back as a body's
/// do. Failed so before session 45 ("cut after 1896 of 10000 messages
/// echoed").
#[tokio::test]
async fn a_burst_of_small_writes_through_a_tunnel_read_as_they_come_is_never_cut() {
    let app = tower::service_fn(|mut req: Request<Body>| async move {
        if let Some(on_upgrade) = req.extensions_mut().remove::<megaconn::OnUpgrade>() {
            tokio::task::spawn_local(async move {
                let io = on_upgrade.await.expect("upgraded");
                let (mut from, mut to) = tokio::io::split(io);
                // Ends when the client ends its half.
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut to).await;
            });
        }
        let empty =
            http_body_util::Empty::<Bytes>::new().map_err(|e| -> megaconn::BoxError { match e {} });
        Ok::<_, Infallible>(Response::new(empty))
    });
    let builder = Builder::default()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(builder, app);
    let (mut client, conn) = wide_client(server.addrs[0]).await;
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri("tunnel.test:443")
        .body(())
        .unwrap();
    let (response, upload) = client.send_request(connect, false).unwrap();
    echo_burst(upload, response).await;
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    drop(client);
    let _ = tokio::time::timeout(SAFETY, conn).await;
    assert!(server.stop().await);
}

/// A long gRPC-style upload of near-empty messages (5 bytes: an empty
/// message's prefix, one DATA frame each), 12,000 of them at 500 a second,
/// read by the handler as they come: never cut, however long it runs.
/// `DataFloodGuard`'s lifetime allowance (10,000 tiny frames read, plus
/// one per KiB) closed it at ~10,060 with `GOAWAY(ENHANCE_YOUR_CALM)`
/// (fails so on the code before its removal, session 42).
#[tokio::test(start_paused = true)]
async fn a_long_stream_of_near_empty_messages_is_never_cut() {
    near_empty_messages(12_000, 1, Duration::from_millis(2)).await;
}

/// 10,000 near-empty messages at 5,000 a second (five every millisecond:
/// tokio's timers count whole milliseconds), read by the handler as they
/// come: never cut. Before session 45 the budget charged each as it
/// arrived and time gave back 1,000 a second, so this ran it out after
/// 0.5 s, at the 2,500th.
#[tokio::test(start_paused = true)]
async fn near_empty_messages_at_5000_a_second_are_never_cut() {
    near_empty_messages(10_000, 5, Duration::from_millis(1)).await;
}

/// Uploads `messages` near-empty messages, `each` every `every`, to a
/// handler that reads its body as it comes and answers how many frames
/// and bytes it read; checks that all of them arrived. Paused time, over
/// an in-memory stream.
async fn near_empty_messages(messages: usize, each: usize, every: Duration) {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let builder = megaconn::Server::builder().idle_timeout(None);
    let service = tower::service_fn(|req: Request<Body>| async move {
        let mut body = req.into_body();
        let (mut frames, mut bytes) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        // Not the empty one that ends the stream.
                        frames += usize::from(!data.is_empty());
                        bytes += data.len();
                    }
                }
                Err(e) => {
                    let mut r = Response::new(Body::from_bytes(format!("body error: {e}")));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return Ok::<_, Infallible>(r);
                }
            }
        }
        Ok(Response::new(Body::from_bytes(format!("{frames} {bytes}"))))
    });
    tokio::task::LocalSet::new()
        .run_until(async move {
            let served = tokio::task::spawn_local(async move {
                builder.serve_connection(server_end, service).await
            });
            let (client, conn) = h2::client::handshake(client_end).await.unwrap();
            let conn = tokio::task::spawn_local(conn);
            let mut client = client.ready().await.unwrap();
            let (resp, mut upload) = client
                .send_request(Request::post("http://t/upload").body(()).unwrap(), false)
                .unwrap();
            for n in 0..messages {
                if n % each == 0 {
                    tokio::time::sleep(every).await;
                }
                upload
                    .send_data(Bytes::from_static(&EMPTY_MESSAGE), false)
                    .unwrap_or_else(|e| panic!("message {n}: {e}"));
            }
            upload.send_data(Bytes::new(), true).unwrap();
            let resp = resp.await.expect("the response");
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                text.extend_from_slice(&chunk.unwrap());
            }
            let text = String::from_utf8(text).unwrap();
            assert_eq!(text, format!("{messages} {}", 5 * messages));
            drop((client, body));
            conn.abort();
            served.abort();
        })
        .await;
}
