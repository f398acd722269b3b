//! HTTP/2 control-frame floods (CVE-2019-9512 PING, CVE-2019-9515 SETTINGS,
//! and the rest of the family), on real sockets: a scripted raw client
//! ([`RawH2`]) sends one kind of frame that does no work until the server
//! closes with `GOAWAY(ENHANCE_YOUR_CALM)`, once the connection spent
//! [`megaconn::HTTP2_CONTROL_BUDGET`]; honest clients, with the `h2` crate,
//! that ping a lot alongside real work are never cut. The same for a
//! client that opens its window one byte at a time (`WINDOW_UPDATE` of 1,
//! each answered by a 1-byte DATA frame), and honest uploads of small
//! messages and short writes (a gRPC-style stream, curl from a pipe) that
//! the tiny-DATA budget never cuts. Floods are bounded loops: a test fails
//! on a count of bytes or frames, never on elapsed time.

use crate::common;

use std::convert::Infallible;

use bytes::Bytes;
use common::tls::{self, Ca};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use megaconn::{
    Body, Builder, CloseReason, ConnectionEvent, ProtocolDetail, HTTP2_CONTROL_BUDGET,
    HTTP2_PING_BUDGET, HTTP2_TINY_DATA_BUDGET, HTTP2_WINDOW_DRIP_BUDGET,
};
use tokio::sync::mpsc::UnboundedReceiver;

use super::h2::{
    closed_total, event_log, frame, goaway_codes, limit_hits, start, RawFrame, RawH2, ACK, DATA,
    END_STREAM, ENHANCE_YOUR_CALM, GOAWAY, HEADERS, PING, SAFETY, SETTINGS,
};

const WINDOW_UPDATE: u8 = 0x8;
const PRIORITY: u8 = 0x2;

/// The next connection's close: its reason and the bytes read from it.
async fn closed(events: &mut UnboundedReceiver<ConnectionEvent>) -> (CloseReason, u64) {
    tokio::time::timeout(SAFETY, async {
        loop {
            let event = events.recv().await.expect("server gone");
            if let ConnectionEvent::Closed {
                reason, bytes_in, ..
            } = event
            {
                return (reason, bytes_in);
            }
        }
    })
    .await
    .expect("timed out waiting for the close event")
}

/// Sends `each` (one frame) again and again on a fresh connection until the
/// server closes it, and checks the close: `GOAWAY(ENHANCE_YOUR_CALM)`
/// once the control frames read reached the budget and not much past it
/// (the server stops reading at the read that ran it out), counted as an
/// `http2_control_flood` limit hit, a protocol error and a
/// `protocol_error` close; the server serves on. Returns the frames the
/// server sent.
async fn control_flood(each: &[u8]) -> Vec<RawFrame> {
    control_flood_over(None, each, CONTROL_FLOOD).await
}

/// The limit a control-frame flood other than PINGs runs out.
const CONTROL_FLOOD: &str = "http2_control_flood";

/// [`control_flood`] on a cleartext connection (h2c), or over TLS with
/// ALPN `h2` when given a CA (the server's certificate is one of its),
/// cut by `limit`: [`CONTROL_FLOOD`] (then within the read that ran
/// [`HTTP2_CONTROL_BUDGET`] out), or `http2_ping_flood` for PINGs, which
/// run their own budget out first ([`HTTP2_PING_BUDGET`]).
async fn control_flood_over(tls: Option<&Ca>, each: &[u8], limit: &str) -> Vec<RawFrame> {
    let mut builder = megaconn::Server::builder();
    if let Some(ca) = tls {
        let config = ca.server(&["localhost"]);
        builder = builder.tls(config);
    }
    let (builder, mut events) = event_log(builder);
    let server = start(builder).await;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tokio::net::TcpStream::connect(server.addr).await.unwrap()),
        Some(ca) => {
            let io = tls::connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
            assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            Box::new(io)
        }
    };
    let mut attacker = RawH2::over(io, &[]).await;
    let batch: Vec<u8> = (0..64).flat_map(|_| each.to_vec()).collect();
    // Four budgets, then a PING of our own: the server closes before it
    // reads that far, or answers it (and the test fails at once). The
    // kernels' socket buffers take it all either way.
    let rounds = 4 * HTTP2_CONTROL_BUDGET as usize / batch.len();
    let mut flood = batch.repeat(rounds);
    flood.extend(frame(PING, 0, 0, b"the end!"));
    attacker.send(&flood).await;
    let mut frames = Vec::new();
    while let Some(f) = attacker.next_frame().await {
        let last = f.kind == PING && f.flags & ACK != 0 && f.payload == b"the end!";
        assert!(!last, "{} bytes of control frames all read", flood.len());
        frames.push(f);
    }
    assert_eq!(
        goaway_codes(&frames),
        [ENHANCE_YOUR_CALM],
        "{:?}",
        frames.last()
    );
    let (reason, bytes_in) = closed(&mut events).await;
    assert_eq!(reason, CloseReason::Protocol(ProtocolDetail::Http2(0xb)));
    // The preface, its SETTINGS, then control frames: cut once they spent
    // the budget, within the read that did.
    if limit == CONTROL_FLOOD {
        assert!(
            bytes_in >= HTTP2_CONTROL_BUDGET,
            "cut after {bytes_in} bytes"
        );
    }
    assert!(
        bytes_in <= HTTP2_CONTROL_BUDGET + 64 * 1024,
        "read {bytes_in} bytes before the cut"
    );
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, limit), 1, "{stats:?}");
    let other = ["http2_control_flood", "http2_ping_flood"].map(|l| limit_hits(&stats, l));
    assert_eq!(other.iter().sum::<u64>(), 1, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    assert_eq!(closed_total(&server.handle, "protocol_error"), 1);
    assert_eq!(stats.requests, 0, "no request started");

    let mut client = match tls {
        None => common::h2c(server.addr).await,
        Some(ca) => {
            let io = tls::connect(server.addr, ca.client(&[b"h2"]), "localhost").await;
            let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
            tokio::spawn(conn);
            client
        }
    };
    let ready = client.ready().await.unwrap();
    client = ready;
    let (resp, _) = client
        .send_request(Request::get("http://t/").body(()).unwrap(), true)
        .unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the server serves on");
    server.stop().await;
    frames
}

/// A flooding client's stream, in the clear or over TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}

/// The frames among `frames` of `kind` with ACK set.
fn acks(frames: &[RawFrame], kind: u8) -> usize {
    frames
        .iter()
        .filter(|f| f.kind == kind && f.flags & ACK != 0)
        .count()
}

/// CVE-2019-9512: PINGs, each answered. Before the guard, a client could
/// send them for good at ~0.84 µs of server CPU each; then the control
/// budget cut it after about 3,900 (64 KiB); now it gets
/// `GOAWAY(ENHANCE_YOUR_CALM)` after [`HTTP2_PING_BUDGET`] on a
/// connection that does nothing else (and what time gave back, one a
/// second), each of them answered until then, counted `http2_ping_flood`.
#[tokio::test]
async fn a_ping_flood_gets_goaway() {
    let frames = control_flood_over(None, &frame(PING, 0, 0, b"flooding"), PING_FLOOD).await;
    let pongs = acks(&frames, PING) as u64;
    // Each within the budget (and what time gave back meanwhile), none
    // past it.
    assert!(
        (HTTP2_PING_BUDGET..=HTTP2_PING_BUDGET + 20).contains(&pongs),
        "{pongs} PINGs answered"
    );
}

/// The limit a flood of PINGs runs out.
const PING_FLOOD: &str = "http2_ping_flood";

/// The same PING flood over TLS, ALPN `h2`: the guard wraps whatever
/// stream HTTP/2 is served on (`http2::serve`, the TLS stream's plaintext
/// here), so it is cut the same way, counted `http2_control_flood`, and
/// the server serves a new TLS connection on. No test ran it over TLS
/// before.
#[tokio::test]
async fn a_ping_flood_over_tls_gets_goaway() {
    let ping = frame(PING, 0, 0, b"flooding");
    let frames = control_flood_over(Some(&Ca::new()), &ping, PING_FLOOD).await;
    let pongs = acks(&frames, PING) as u64;
    // Each within the budget (and what time gave back meanwhile), none
    // past it.
    assert!(
        (HTTP2_PING_BUDGET..=HTTP2_PING_BUDGET + 20).contains(&pongs),
        "{pongs} PINGs answered"
    );
}

/// A batch of PINGs that runs the PING budget out within one read (2 ×
/// [`HTTP2_PING_BUDGET`] in one write, with the preface): the client sees
/// each PING within the budget answered, in order, then
/// `GOAWAY(ENHANCE_YOUR_CALM)`, then the close, and nothing else (RFC 9113
/// §6.7: a PING is answered unless the connection ends first; those past
/// the budget are refused with it). Before session 45 the read that ran
/// the budget out was dropped whole: no PING answered, then the GOAWAY
/// (failed so: "answered 0 PINGs, then [GOAWAY]").
#[tokio::test]
async fn a_batch_of_pings_past_the_budget_is_answered_up_to_it_then_goaway() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let began = std::time::Instant::now();
    let pings: Vec<u8> = (0..2 * HTTP2_PING_BUDGET)
        .flat_map(|n| frame(PING, 0, 0, &n.to_be_bytes()))
        .collect();
    let mut attacker = RawH2::connect(server.addr, &pings).await;
    // What is not about the PINGs: the server's SETTINGS (acknowledged),
    // its ACK of ours, and the WINDOW_UPDATE that opens its connection
    // window (h2 sends it when it next writes).
    let mut frames = Vec::new();
    while let Some(f) = attacker.next_frame().await {
        if !attacker.ack_settings(&f).await && f.kind != SETTINGS && f.kind != WINDOW_UPDATE {
            frames.push(f);
        }
    }
    let secs = began.elapsed().as_secs();
    let answered: Vec<u64> = frames
        .iter()
        .take_while(|f| f.kind == PING)
        .map(|f| {
            assert_eq!(f.flags, ACK, "{f:?}");
            u64::from_be_bytes(f.payload[..8].try_into().unwrap())
        })
        .collect();
    let n = answered.len() as u64;
    let after: Vec<_> = frames[answered.len()..].iter().map(|f| f.kind).collect();
    assert!(n >= HTTP2_PING_BUDGET, "answered {n} PINGs, then {after:?}");
    assert!(n <= HTTP2_PING_BUDGET + secs + 1, "answered {n} PINGs");
    assert_eq!(answered, (0..n).collect::<Vec<_>>(), "in order");
    assert_eq!(after, [GOAWAY], "the GOAWAY, then the close");
    assert_eq!(goaway_codes(&frames), [ENHANCE_YOUR_CALM]);
    let (reason, _) = closed(&mut events).await;
    assert_eq!(reason, CloseReason::Protocol(ProtocolDetail::Http2(0xb)));
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, PING_FLOOD), 1, "{stats:?}");
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    server.stop().await;
}

/// CVE-2019-9515: SETTINGS frames, each acknowledged.
#[tokio::test]
async fn a_settings_flood_gets_goaway() {
    // SETTINGS_MAX_CONCURRENT_STREAMS 100: valid, and a change to apply.
    let param = [0, 0x3, 0, 0, 0, 100];
    let frames = control_flood(&frame(SETTINGS, 0, 0, &param)).await;
    // Our own SETTINGS' acknowledgement is the client's: every ACK is one
    // of the flood's, or the client's first SETTINGS. Those within the
    // budget are acknowledged (session 45: the frames before the one that
    // ran it out reach h2), with what time gave back meanwhile (128 bytes
    // a second, 10 s at most here), and none past it.
    let acked = acks(&frames, SETTINGS) as u64;
    assert!(
        acked <= 1 + (HTTP2_CONTROL_BUDGET + 10 * 128) / 15,
        "{acked} SETTINGS acknowledged"
    );
}

/// WINDOW_UPDATEs on the connection, one byte each: no answer, a little
/// work each (the audit: 4–10 µs per KiB).
#[tokio::test]
async fn a_window_update_flood_gets_goaway() {
    control_flood(&frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes())).await;
}

/// PRIORITY frames for a stream never opened (RFC 9113 §6.3: legal in any
/// state; h2 ignores them).
#[tokio::test]
async fn a_priority_flood_gets_goaway() {
    control_flood(&frame(PRIORITY, 0, 3, &[0, 0, 0, 0, 16])).await;
}

/// Frames of a type HTTP/2 does not define, which a receiver must ignore
/// (RFC 9113 §5.5): h2 reads and drops them.
#[tokio::test]
async fn an_unknown_frame_flood_gets_goaway() {
    control_flood(&frame(0xfa, 0, 0, &[0; 100])).await;
}

/// Messages each way in the honest client's bidirectional stream.
const MESSAGES: usize = 5_000;

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, megaconn::BoxError>;

/// An honest client pinging as much as real ones do alongside real work is
/// never cut. A PING after each of 5,000 requests answered without a body
/// (a connection health check before each use), then a PING after each of
/// 5,000 small messages echoed on one stream (gRPC's bandwidth probe, one
/// per burst of data received, on a bidirectional call where each burst
/// is one message). Each PING is 17 bytes: 85,000 bytes each time, past the
/// budget on their own; the requests and the DATA frames sent earn them.
/// Fails without either credit (`REQUEST_CREDIT`, `DATA_FRAME_CREDIT`).
/// The messages are not tiny (`ECHOED` is 20 bytes, past `TINY_DATA_FRAME`):
/// 5,000 tiny frames spend the tiny-DATA budget faster than time gives it
/// back once the loop runs at over ~1,000 a second for 3 s, which a debug
/// build can on a quiet machine: with 8-byte messages the test failed now
/// and then with a broken pipe (the one limit the loop could reach; not
/// confirmed by its counter). That budget has tests of its own.
#[tokio::test]
async fn an_honest_client_that_pings_a_lot_is_never_cut() {
    const ECHOED: &str = "a message, 20 bytes.";
    let app = tower::service_fn(|req: Request<Body>| async move {
        let body: TestBody = if req.uri().path() == "/echo" {
            req.into_body()
                .map_err(megaconn::BoxError::from)
                .boxed_unsync()
        } else {
            http_body_util::Empty::new()
                .map_err(|e| match e {})
                .boxed_unsync()
        };
        Ok::<_, Infallible>(Response::new(body))
    });
    let (builder, mut events) = event_log(
        Builder::default()
            .workers(1)
            .listen_on("127.0.0.1:0".parse().unwrap()),
    );
    let server = common::AppServer::start(builder, app);
    let tcp = tokio::net::TcpStream::connect(server.addrs[0])
        .await
        .unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong taken once");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    for _ in 0..MESSAGES {
        let (resp, _) = client
            .send_request(Request::get("http://t/").body(()).unwrap(), true)
            .unwrap();
        let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
        assert!(resp.body().is_end_stream(), "no body: no DATA frame");
        ping(&mut pings).await;
        client = client.ready().await.unwrap();
    }
    let (resp, mut upload) = client
        .send_request(Request::post("http://t/echo").body(()).unwrap(), false)
        .unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    let mut body = resp.into_body();
    for _ in 0..MESSAGES {
        upload
            .send_data(Bytes::from_static(ECHOED.as_bytes()), false)
            .unwrap();
        let chunk = tokio::time::timeout(SAFETY, body.data()).await.unwrap();
        let chunk = chunk.expect("an echo").expect("the stream is not cut");
        assert_eq!(chunk, ECHOED);
        body.flow_control().release_capacity(chunk.len()).unwrap();
        ping(&mut pings).await;
    }
    upload.send_data(Bytes::new(), true).unwrap();
    while let Some(rest) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
        assert_eq!(rest.unwrap(), "", "nothing more to echo");
    }
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_control_flood"), 0, "{stats:?}");
    drop((client, body, upload, pings));
    let _ = tokio::time::timeout(SAFETY, conn).await;
    let (reason, _) = closed(&mut events).await;
    assert_eq!(reason, CloseReason::ClientClosed);
    assert!(server.stop().await);
}

/// A client's keep-alive PING every 10 s on a connection whose one stream
/// stays open for 12 hours (a watch): 4,320 PINGs, 73 KB, and nothing else
/// the client sends; time refills the budget (`REFILL_PER_SECOND`). Paused
/// time, over an in-memory stream.
#[tokio::test(start_paused = true)]
async fn keep_alive_pings_on_a_long_watch_are_never_cut() {
    pings_on_a_watch(std::time::Duration::from_secs(10), 12 * 360).await;
}

/// A client's PING every `every`, `pings` times, on a connection whose one
/// stream is a watch (one chunk, then nothing for good) and nothing else:
/// each answered, the connection never cut. Paused time, over an in-memory
/// stream.
async fn pings_on_a_watch(every: std::time::Duration, pings: u32) {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let builder = megaconn::Server::builder().idle_timeout(None);
    let service = tower::service_fn(|_req: Request<Body>| async {
        // One chunk, then nothing, for good.
        let tick = futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(
            Bytes::from_static(b"tick"),
        ))]);
        let body = futures_util::StreamExt::chain(tick, futures_util::stream::pending());
        Ok::<_, Infallible>(Response::new(StreamBody::new(body)))
    });
    tokio::task::LocalSet::new()
        .run_until(async move {
            let served = tokio::task::spawn_local(async move {
                builder.serve_connection(server_end, service).await
            });
            let (client, mut conn) = h2::client::handshake(client_end).await.unwrap();
            let mut pinger = conn.ping_pong().unwrap();
            let conn = tokio::task::spawn_local(conn);
            let mut client = client.ready().await.unwrap();
            let (resp, _) = client
                .send_request(Request::get("http://t/watch").body(()).unwrap(), true)
                .unwrap();
            let mut body = resp.await.unwrap().into_body();
            assert_eq!(body.data().await.unwrap().unwrap(), "tick");
            for n in 0..pings {
                tokio::time::sleep(every).await;
                pinger
                    .ping(h2::Ping::opaque())
                    .await
                    .unwrap_or_else(|e| panic!("PING {n}: {e}"));
            }
            drop((client, body, pinger));
            conn.abort();
            served.abort();
        })
        .await;
}

/// Sends a PING and waits for its answer.
async fn ping(pings: &mut h2::PingPong) {
    let pong = pings.ping(h2::Ping::opaque());
    tokio::time::timeout(SAFETY, pong)
        .await
        .unwrap()
        .expect("PONG");
}

/// How many messages the gRPC-style client may have sent and not yet had
/// back.
const AHEAD: usize = 1_000;

/// A gRPC-style stream of small messages, echoed: 20,000 messages, each
/// one DATA frame of a 5-byte prefix and 10 to 49 bytes, and an empty
/// message (5 bytes) every 20th. 1,500 of them are tiny (under 16 bytes),
/// under [`HTTP2_TINY_DATA_BUDGET`] however fast they go; the others earn
/// more. Never cut, whatever the speed (no clock in the count). The client
/// stays at most [`AHEAD`] messages ahead of the echo: unpaced, h2's own
/// small-DATA budget (frames under 256 bytes buffered unread: half the
/// 1 MiB connection window at 256 less their size each, ~2,400 of these)
/// cut this stream after ~4,000 messages, the server's h2 ingesting the
/// window before the handler read (seen in this test; with or without our
/// budget: `h2_enhance_your_calm`, not `http2_data_flood`; `bench/H2TLS.md`,
/// "Session 41").
#[tokio::test]
async fn a_grpc_style_stream_of_small_messages_is_never_cut() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let (mut client, conn) = super::h2_tiny_data::wide_client(server.addr).await;
    let (resp, mut upload) = client
        .send_request(Request::post("http://t/echo").body(()).unwrap(), false)
        .unwrap();
    let mut sent = 0usize;
    let mut tiny = 0usize;
    // Read the echo as it comes, on its own task: the windows stay open.
    let (echoed_tx, mut echoed) = tokio::sync::watch::channel(0usize);
    let echo = tokio::spawn(async move {
        let mut body = tokio::time::timeout(SAFETY, resp)
            .await
            .unwrap()
            .unwrap()
            .into_body();
        let mut got = 0usize;
        while let Some(chunk) = tokio::time::timeout(SAFETY, body.data()).await.unwrap() {
            let chunk = chunk.expect("the stream is not cut");
            got += chunk.len();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            let _ = echoed_tx.send(got);
        }
        got
    });
    let mut ahead = std::collections::VecDeque::new();
    for i in 0..20_000usize {
        let len = if i % 20 == 19 { 0 } else { 10 + i % 40 };
        let mut message = vec![0u8, 0, 0, 0, len as u8];
        message.extend(std::iter::repeat_n(b'm', len));
        tiny += usize::from(message.len() < 16);
        sent += message.len();
        ahead.push_back(sent);
        upload.send_data(Bytes::from(message), false).unwrap();
        if ahead.len() == AHEAD {
            // The oldest message in flight must be back before the next.
            let oldest = ahead.pop_front().unwrap();
            let back = echoed.wait_for(|&got| got >= oldest);
            tokio::time::timeout(SAFETY, back).await.unwrap().unwrap();
        }
    }
    assert_eq!(tiny, 1_500);
    assert!(tiny < HTTP2_TINY_DATA_BUDGET as usize);
    upload.send_data(Bytes::new(), true).unwrap();
    let got = tokio::time::timeout(SAFETY, echo).await.unwrap().unwrap();
    assert_eq!(got, sent, "every message echoed");
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), 0, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    drop((client, upload));
    let _ = tokio::time::timeout(SAFETY, conn).await;
    let (reason, _) = closed(&mut events).await;
    assert_eq!(reason, CloseReason::ClientClosed);
    server.stop().await;
}

/// curl uploading from a pipe over h2c (`--http2-prior-knowledge -T -`),
/// fed 1,500 short lines (12 bytes) one write each, then 256 KiB at once:
/// curl sends what each read of the pipe got, tiny frames as they come,
/// and the echo comes back whole, with no limit hit. Skipped (said on
/// stderr) without curl.
#[tokio::test]
async fn curl_uploading_short_writes_from_a_pipe_is_never_cut() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let server = start(megaconn::Server::builder()).await;
    let child = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-T",
            "-",
            "--max-time",
            "20",
        ])
        .arg(format!("http://{}/echo", server.addr))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(child) = child else {
        common::skip("curl_uploading_short_writes_from_a_pipe_is_never_cut: no curl");
        server.stop().await;
        return;
    };
    // Owned by the test: killed if it fails before curl is done.
    struct Curl(std::process::Child);
    impl Drop for Curl {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut curl = Curl(child);
    let mut stdin = curl.0.stdin.take().unwrap();
    let mut expected = Vec::new();
    let writer = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..1_500 {
            let line = format!("line {i:>06}\n");
            assert_eq!(line.len(), 12);
            stdin.write_all(line.as_bytes()).unwrap();
            stdin.flush().unwrap();
            all.extend_from_slice(line.as_bytes());
        }
        let big = vec![b'b'; 256 * 1024];
        stdin.write_all(&big).unwrap();
        all.extend(big);
        all
    });
    let mut stdout = curl.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
        out
    });
    let out = tokio::task::spawn_blocking(move || {
        let written = writer.join().unwrap();
        (written, reader.join().unwrap())
    });
    let (written, out) = tokio::time::timeout(SAFETY, out).await.unwrap().unwrap();
    expected.extend(written);
    let status = tokio::task::spawn_blocking(move || {
        let status = curl.0.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(curl.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    });
    let (status, err) = tokio::time::timeout(SAFETY, status).await.unwrap().unwrap();
    assert!(status.success(), "curl: {status} {err}");
    assert_eq!(out.len(), expected.len(), "the echo's length");
    assert!(out == expected, "the echo differs");
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_data_flood"), 0, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    server.stop().await;
}

/// Drip rounds a second of a connection's life gives back: megaconn's
/// `DRIP_ROUNDS_PER_SECOND` (`proto/http2/flood.rs`).
const DRIP_ROUNDS_PER_SECOND: u64 = 64;

/// `SETTINGS_INITIAL_WINDOW_SIZE` (0x4) set to `size`.
fn initial_window(size: u32) -> Vec<u8> {
    let mut param = vec![0, 0x4];
    param.extend(size.to_be_bytes());
    frame(SETTINGS, 0, 0, &param)
}

/// A HEADERS block for `GET /big` (the test app's 1 MiB).
const GET_BIG: [u8; 11] = [0x82, 0x86, 0x04, 4, b'/', b'b', b'i', b'g', 0x01, 1, b'a'];

/// What a dripping client got: the rounds it ran (`WINDOW_UPDATE`s sent
/// with the window it opens used up), the bytes of `/big` it received,
/// and the frames from the server's GOAWAY to the close if it was cut.
struct Dripped {
    rounds: u64,
    received: usize,
    goaway: Option<Vec<RawFrame>>,
}

/// Asks for `/big` and opens a window `increment` bytes a round: the
/// stream's (its initial window 0, the connection's opened wide), or the
/// connection's (the stream's as large as it goes; the connection's
/// first 65,535 bytes used up first), one `WINDOW_UPDATE` each time the
/// server used up what the last one gave, as a dripping client does (each
/// round a wake-up, a frame and two packets on the server: ~35 µs of its
/// CPU; `bench/H2TLS.md`, "Session 41"). Stops after `max_rounds`, at the
/// end of `/big`, or at the close.
async fn drip(
    addr: std::net::SocketAddr,
    increment: u32,
    on_connection: bool,
    max_rounds: u64,
) -> Dripped {
    drip_on(addr, &GET_BIG, increment, on_connection, max_rounds).await
}

/// [`drip`] on the stream a HEADERS block `block` opens (without
/// `END_STREAM`: its end is the server's to say).
async fn drip_on(
    addr: std::net::SocketAddr,
    block: &[u8],
    increment: u32,
    on_connection: bool,
    max_rounds: u64,
) -> Dripped {
    let stream = if on_connection { 0 } else { 1 };
    let more = frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
    let mut hello = initial_window(if on_connection { (1 << 31) - 1 } else { 0 });
    hello.extend(frame(HEADERS, 0x5, 1, block));
    // What the server may send before the next round.
    let mut window: i64 = 65_535;
    let mut rounds = 0;
    if !on_connection {
        hello.extend(frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()));
        hello.extend_from_slice(&more);
        window = i64::from(increment);
        rounds = 1;
    }
    let mut client = RawH2::connect(addr, &hello).await;
    let mut received = 0;
    loop {
        let Some(f) = client.next_frame().await else {
            return Dripped {
                rounds,
                received,
                goaway: Some(Vec::new()),
            };
        };
        if client.ack_settings(&f).await {
            continue;
        }
        if f.kind == GOAWAY {
            let mut end = vec![f];
            end.extend(client.frames_until_close().await);
            return Dripped {
                rounds,
                received,
                goaway: Some(end),
            };
        }
        if f.kind != DATA || f.stream != 1 {
            continue;
        }
        received += f.payload.len();
        window -= f.payload.len() as i64;
        assert!(window >= 0, "the server sent past the window");
        if f.flags & END_STREAM != 0 || (window == 0 && rounds == max_rounds) {
            return Dripped {
                rounds,
                received,
                goaway: None,
            };
        }
        if window == 0 {
            client.send(&more).await;
            rounds += 1;
            window = i64::from(increment);
        }
    }
}

/// A client opening its window a few bytes at a time: before the drip
/// budget, nothing bounded it (session 41: 7,693 rounds of `WINDOW_UPDATE`
/// of 1, 247–292 ms of server CPU, on main); now, past
/// [`HTTP2_WINDOW_DRIP_BUDGET`] rounds, each round waits for time to give
/// it back (`DRIP_ROUNDS_PER_SECOND`), so the server spends at most that
/// many a second on it; counted `http2_window_drip` once, and the
/// connection is not closed (an honest client whose application reads a
/// few bytes at a time looks the same on the wire). Whatever the
/// increment under 256 (14 beat session 41's size rule), and on the
/// stream's window or the connection's. Checked from below only, so it
/// holds however slow the machine: the rounds past the budget took at
/// least their share of time (without the wait they took a few
/// milliseconds: fails with "not slowed").
async fn drip_is_slowed(increment: u32, on_connection: bool) {
    let server = start(megaconn::Server::builder()).await;
    slowed_drip(
        server.addr,
        &server.handle,
        &GET_BIG,
        increment,
        on_connection,
    )
    .await;
    server.stop().await;
}

/// [`drip_is_slowed`]'s drip and checks on the server at `addr`, through
/// the stream `block` opens.
async fn slowed_drip(
    addr: std::net::SocketAddr,
    handle: &megaconn::ServerHandle,
    block: &[u8],
    increment: u32,
    on_connection: bool,
) {
    let began = std::time::Instant::now();
    let rounds = HTTP2_WINDOW_DRIP_BUDGET + 2 * DRIP_ROUNDS_PER_SECOND;
    let dripped = drip_on(addr, block, increment, on_connection, rounds).await;
    let took = began.elapsed();
    assert!(
        dripped.goaway.is_none(),
        "closed after {} rounds: a drip is slowed, not closed",
        dripped.rounds
    );
    assert_eq!(dripped.rounds, rounds);
    let least = std::time::Duration::from_secs_f64(
        (rounds - HTTP2_WINDOW_DRIP_BUDGET - 1) as f64 / DRIP_ROUNDS_PER_SECOND as f64,
    );
    assert!(
        took >= least,
        "not slowed: {rounds} rounds in {took:?}, at least {least:?}"
    );
    let stats = handle.stats();
    assert_eq!(limit_hits(&stats, "http2_window_drip"), 1, "{stats:?}");
    assert_eq!(limit_hits(&stats, "http2_control_flood"), 0, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    let mut client = common::h2c(addr).await;
    let (resp, _) = client
        .send_request(Request::get("http://t/").body(()).unwrap(), true)
        .unwrap();
    let resp = tokio::time::timeout(SAFETY, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the server serves on");
}

#[tokio::test]
async fn a_window_opened_one_byte_at_a_time_is_slowed() {
    drip_is_slowed(1, false).await;
}

#[tokio::test]
async fn a_window_opened_14_bytes_at_a_time_is_slowed() {
    drip_is_slowed(14, false).await;
}

#[tokio::test]
async fn a_window_opened_255_bytes_at_a_time_is_slowed() {
    drip_is_slowed(255, false).await;
}

#[tokio::test]
async fn a_connection_window_opened_one_byte_at_a_time_is_slowed() {
    drip_is_slowed(1, true).await;
}

/// A HEADERS block for a plain `CONNECT` (RFC 9113 §8.5; HPACK: :method
/// "CONNECT" as a literal with an indexed name, :authority "a").
const CONNECT_A: [u8; 12] = [
    0x02, 7, b'C', b'O', b'N', b'N', b'E', b'C', b'T', 0x01, 1, b'a',
];

/// An empty response body.
fn empty() -> TestBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// The same drip through an upgraded stream: a `CONNECT` tunnel (as a
/// WebSocket over HTTP/2 is: `service/h2_stream.rs` writes both) whose
/// handler writes 1 MiB into it, its client opening the stream's window
/// one byte at a time. Slowed past the connection's drip budget and
/// counted once, as a response is; before, the tunnel's writes waited for
/// room on their own and nothing counted them (fails so without the
/// budget in `H2Stream::poll_write`: "not slowed: 384 rounds in …").
#[tokio::test]
async fn a_tunnel_whose_window_opens_one_byte_at_a_time_is_slowed() {
    let app = tower::service_fn(|mut req: Request<Body>| async move {
        if let Some(on_upgrade) = req.extensions_mut().remove::<megaconn::OnUpgrade>() {
            tokio::task::spawn_local(async move {
                let mut io = on_upgrade.await.expect("upgraded");
                // Ends with an error when the client leaves.
                let _ = tokio::io::AsyncWriteExt::write_all(&mut io, &vec![b't'; 1 << 20]).await;
            });
        }
        Ok::<_, Infallible>(Response::new(empty()))
    });
    let builder = Builder::default()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(builder, app);
    slowed_drip(server.addrs[0], &server.handle, &CONNECT_A, 1, false).await;
    assert!(server.stop().await);
}

/// Downloads at once on a connection whose client keeps a small
/// connection window (h2's `initial_connection_window_size(65_535)`, its
/// default): four of 4 MiB in 4 KiB chunks (the review's case), then 32 of
/// 2 MiB in 4 KiB chunks and 16 of 2 MiB in 1,000-byte chunks with 1 MiB
/// stream windows, where the window's edges fall more often inside a
/// chunk. h2 hands a connection `WINDOW_UPDATE`'s room to the waiting
/// streams in turn, so the last may end its wait with a few bytes of what
/// it asked, the others having taken the rest: ~280 such grants on the
/// 32-stream connection, ~6 on the 4-stream one (counted on a debug build,
/// session 43). Session 42's rule counted each as a drip round, and past
/// the budget's 256 and 64 a second (a faster build, a longer download)
/// held the downloads back; they are not rounds since more than
/// `DRIP_GRANT` bytes went out between them (`proto/http2/flood.rs`;
/// `flood::tests::a_small_grant_after_a_packet_of_data_is_not_a_round`
/// fails on the old rule). Never counted, and all bytes arrive.
#[tokio::test]
async fn downloads_sharing_a_small_connection_window_are_never_slowed() {
    let app = tower::service_fn(|req: Request<Body>| async move {
        // `/EACH/CHUNK`: EACH bytes in chunks of CHUNK.
        let mut path = req.uri().path()[1..].split('/').map(|n| n.parse().unwrap());
        let (each, chunk): (usize, usize) = (path.next().unwrap(), path.next().unwrap());
        let chunks = (0..each / chunk).map(move |_| {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![b'd'; chunk])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        Ok::<_, Infallible>(Response::new(body))
    });
    let builder = Builder::default()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap());
    let server = common::AppServer::start(builder, app);
    for (streams, chunk, stream_window, each) in [
        (4, 4096, 65_535, 4 << 20),
        (32, 4096, 65_535, 2 << 20),
        (16, 1000, 1 << 20, 2 << 20),
    ] {
        let tcp = tokio::net::TcpStream::connect(server.addrs[0])
            .await
            .unwrap();
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(stream_window)
            .initial_connection_window_size(65_535)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let downloads = (0..streams).map(|_| {
            let mut client = client.clone();
            async move {
                client = client.ready().await.unwrap();
                let get = Request::get(format!("http://t/{each}/{chunk}"));
                let (resp, _) = client.send_request(get.body(()).unwrap(), true).unwrap();
                let mut body = resp.await.unwrap().into_body();
                let mut got = 0;
                while let Some(data) = body.data().await {
                    let data = data.expect("the download is not cut");
                    got += data.len();
                    body.flow_control().release_capacity(data.len()).unwrap();
                }
                got
            }
        });
        let got = tokio::time::timeout(SAFETY, futures_util::future::join_all(downloads))
            .await
            .expect("downloaded in time");
        assert_eq!(got, vec![each / chunk * chunk; streams]);
        drop(client);
        let _ = tokio::time::timeout(SAFETY, conn).await;
        let stats = server.handle.stats();
        assert_eq!(
            limit_hits(&stats, "http2_window_drip"),
            0,
            "{streams} downloads of {each} bytes in chunks of {chunk}, stream window \
             {stream_window}: {stats:?}"
        );
        assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    }
    assert!(server.stop().await);
}

/// A PING flood paced one per round trip (the next PING sent once the
/// last one is answered: ~32–38 µs of server CPU each, where a batch costs
/// ~0.25 µs a PING) on a connection that does nothing else: the control
/// budget let ~3,860 through (123–148 ms of server CPU a connection,
/// `bench/H2TLS.md`, "Session 42"); now [`HTTP2_PING_BUDGET`] and what
/// time gave back (one a second), then `GOAWAY(ENHANCE_YOUR_CALM)`,
/// counted `http2_ping_flood` (fails without the PING budget: "still open
/// after 1000 PINGs").
#[tokio::test]
async fn a_paced_ping_flood_gets_goaway() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let began = std::time::Instant::now();
    let mut attacker = RawH2::connect(server.addr, &frame(PING, 0, 0, b"paced!!!")).await;
    let mut pongs = 0u64;
    let mut frames = Vec::new();
    'flood: while pongs < 1_000 {
        loop {
            let Some(f) = attacker.next_frame().await else {
                break 'flood;
            };
            if attacker.ack_settings(&f).await {
                continue;
            }
            let pong = f.kind == PING && f.flags & ACK != 0;
            let gone = f.kind == GOAWAY;
            frames.push(f);
            if gone {
                frames.extend(attacker.frames_until_close().await);
                break 'flood;
            }
            if pong {
                pongs += 1;
                attacker.send(&frame(PING, 0, 0, b"paced!!!")).await;
                break;
            }
        }
    }
    let secs = began.elapsed().as_secs();
    assert!(pongs < 1_000, "still open after {pongs} PINGs");
    assert!(
        pongs >= HTTP2_PING_BUDGET && pongs <= HTTP2_PING_BUDGET + secs + 1,
        "{pongs} PINGs answered in {secs} s"
    );
    assert_eq!(goaway_codes(&frames), [ENHANCE_YOUR_CALM], "{frames:?}");
    let (reason, _) = closed(&mut events).await;
    assert_eq!(reason, CloseReason::Protocol(ProtocolDetail::Http2(0xb)));
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, PING_FLOOD), 1, "{stats:?}");
    assert_eq!(limit_hits(&stats, "http2_control_flood"), 0, "{stats:?}");
    assert_eq!(limit_hits(&stats, "h2_enhance_your_calm"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    server.stop().await;
}

/// A keep-alive client pinging every second on a connection where nothing
/// else happens (a watch's one stream open, nothing sent on it after its
/// first chunk), 1,000 times, ten times [`HTTP2_PING_BUDGET`]: never cut,
/// as time gives one back a second.
#[tokio::test(start_paused = true)]
async fn a_client_pinging_every_second_is_never_cut() {
    pings_on_a_watch(std::time::Duration::from_secs(1), 1_000).await;
}

/// The drip's bound, from the other side: a window opened 256 bytes a
/// round (a client with a window that small, reading a packet's worth at
/// a time) is not a drip. All of `/big`, 4,096 rounds, and no close.
#[tokio::test]
async fn a_window_opened_256_bytes_at_a_time_is_never_cut() {
    let server = start(megaconn::Server::builder()).await;
    let dripped = drip(server.addr, 256, false, u64::MAX).await;
    assert!(
        dripped.goaway.is_none(),
        "cut after {} rounds",
        dripped.rounds
    );
    assert_eq!(dripped.received, 1 << 20);
    assert_eq!(dripped.rounds, (1 << 20) / 256);
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_window_drip"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    server.stop().await;
}

/// A HEADERS block for `POST /echo` (HPACK: :method POST, :scheme http,
/// :path "/echo" as a literal with an indexed name, :authority "a").
const POST_ECHO: [u8; 12] = [
    0x83, 0x86, 0x04, 5, b'/', b'e', b'c', b'h', b'o', 0x01, 1, b'a',
];

/// grpc-go's flow control on a bidirectional stream of small messages:
/// each DATA frame it receives answered with a connection `WINDOW_UPDATE`
/// of its size and a bandwidth-probing PING (its BDP estimator; hyper's
/// adaptive window sends the PING alone), the stream's window given back
/// once a quarter of it (16 KiB) is owed. 10,000 messages of 20 bytes,
/// echoed, one at a time: each round spends 30 bytes of control frames and
/// opens the connection window by 20 bytes, the pattern session 41's size
/// rule cut after 6,568 rounds. Never cut: the server is never blocked on
/// the window, so no round is a drip, and each DATA frame it sends earns
/// the control budget more than the round spends.
#[tokio::test]
async fn a_grpc_go_style_client_probing_bandwidth_on_every_message_is_never_cut() {
    let (builder, mut events) = event_log(megaconn::Server::builder());
    let server = start(builder).await;
    let mut client = RawH2::connect(server.addr, &frame(HEADERS, 0x4, 1, &POST_ECHO)).await;
    let message = [
        0u8, 0, 0, 0, 15, b'm', b'm', b'm', b'm', b'm', b'm', b'm', b'm', b'm', b'm', b'm', b'm',
        b'm', b'm', b'm',
    ];
    let (mut owed, mut pongs) = (0usize, 0usize);
    for n in 0..10_000u64 {
        client.send(&frame(DATA, 0, 1, &message)).await;
        loop {
            let f = client.next_frame().await;
            let f = f.unwrap_or_else(|| panic!("closed after {n} messages"));
            if client.ack_settings(&f).await {
                continue;
            }
            assert_ne!(f.kind, GOAWAY, "GOAWAY after {n} messages: {f:?}");
            pongs += usize::from(f.kind == PING && f.flags & ACK != 0);
            if f.kind != DATA || f.stream != 1 {
                continue;
            }
            assert_eq!(f.payload, message, "the echo");
            let mut answer = frame(WINDOW_UPDATE, 0, 0, &(message.len() as u32).to_be_bytes());
            answer.extend(frame(PING, 0, 0, &n.to_be_bytes()));
            owed += message.len();
            if owed >= 16 * 1024 {
                answer.extend(frame(WINDOW_UPDATE, 0, 1, &(owed as u32).to_be_bytes()));
                owed = 0;
            }
            client.send(&answer).await;
            break;
        }
    }
    client.send(&frame(DATA, END_STREAM, 1, &[])).await;
    // The echo's end.
    loop {
        let f = client.next_frame().await.expect("the echo's end");
        assert_ne!(f.kind, GOAWAY, "{f:?}");
        if f.stream == 1 && f.flags & END_STREAM != 0 {
            break;
        }
    }
    assert!(pongs > 9_000, "{pongs} PINGs answered");
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "http2_window_drip"), 0, "{stats:?}");
    assert_eq!(limit_hits(&stats, "http2_control_flood"), 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    drop(client);
    let (reason, _) = closed(&mut events).await;
    assert_eq!(reason, CloseReason::ClientClosed);
    server.stop().await;
}
