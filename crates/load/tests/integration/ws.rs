//! End-to-end tests of `hold ws://` and `load ws://` (round trips and
//! `--receive`) against an in-process megaconn serving WebSockets through
//! its axum-compatible socket: an echo, and a push of time-stamped messages;
//! and of `hold ws://`'s parked connections against a scripted raw
//! WebSocket server that pings them, stays silent or closes; and `hold
//! wss://` against megaconn's native WebSockets over TLS, which park
//! between the heartbeats.

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use megaconn::axum_ws::{Message, WebSocketUpgrade};
use megaconn_load::{run_hold, run_load, HoldArgs};

/// How often `/push` sends.
const PUSH_EVERY: Duration = Duration::from_millis(5);

/// A one-worker megaconn on 127.0.0.1:0: `/echo` echoes data messages (and
/// answers pings), `/push` sends `"<unix µs> tick"` every [`PUSH_EVERY`].
/// It lives until the test process ends.
fn start() -> SocketAddr {
    let app = axum::Router::new()
        .route(
            "/echo",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, Message::Text(_) | Message::Binary(_))
                            && socket.send(msg).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        )
        .route(
            "/push",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    loop {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                        let text = format!("{} tick", now.as_micros());
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(PUSH_EVERY).await;
                    }
                })
            }),
        );
    let server = megaconn::Server::bind("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .listen()
        .expect("binds");
    let addr = server.local_addr();
    common::run_on_thread(move || server.serve(app));
    addr
}

fn hold_args(target: &str, extra: &[&str]) -> HoldArgs {
    let mut v = vec![
        "hold",
        target,
        "-q",
        "--ramp",
        "20000",
        "-d",
        "400ms",
        "--timeout",
        "5s",
    ];
    v.extend_from_slice(extra);
    common::hold_argv(v)
}

#[test]
fn hold_ws_pings_every_connection() {
    let addr = start();
    let r = run_hold(hold_args(
        &format!("ws://{addr}/echo"),
        &["-c", "40", "--interval", "100ms", "-t", "2"],
    ))
    .unwrap();
    assert_eq!(r.connections_peak, 40);
    assert_eq!(r.connections_open_at_end, 40);
    assert_eq!((r.drops, r.resets, r.failed_connects), (0, 0, 0));
    assert_eq!(r.heartbeat_errors, 0);
    // The 40 upgrades are opening requests, the pings heartbeats.
    assert_eq!(r.opens_ok, 40, "{r:?}");
    assert!(r.heartbeats_ok > 40, "{r:?}");
    // Each waited in its thread's parking lot, not in a task of its own.
    assert_eq!(r.connections_parked, 40, "{r:?}");
}

#[test]
fn hold_ws_text_heartbeats_expect_the_echo() {
    let addr = start();
    let target = format!("ws://{addr}/echo");
    let extra = ["-c", "10", "--interval", "50ms", "--ws-heartbeat", "text"];
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["--send", "beat", "--expect", "beat"]);
    let r = run_hold(hold_args(&target, &args)).unwrap();
    assert_eq!(r.heartbeat_errors, 0, "{r:?}");
    assert!(r.heartbeats_ok > 10, "{r:?}");
    // An echo without the expected text is a failed heartbeat.
    args.truncate(extra.len());
    args.extend(["--send", "beat", "--expect", "nope"]);
    let r = run_hold(hold_args(&target, &args)).unwrap();
    assert!(r.heartbeat_errors > 0, "{r:?}");
}

/// An echo on megaconn's native WebSocket API (idle connections park).
struct Echo;

impl megaconn::WebSocketHandler for Echo {
    type State = ();

    async fn on_message(
        &self,
        _: &mut (),
        message: megaconn::WsMessage,
        _: &megaconn::WsSession,
    ) -> Option<megaconn::WsMessage> {
        Some(message)
    }
}

/// A one-worker megaconn over TLS (self-signed) on 127.0.0.1:0 serving the
/// native [`Echo`] at `/ws`, parking WebSockets idle for 20 ms. It lives
/// until the test process ends.
fn start_wss() -> (SocketAddr, megaconn::ServerHandle) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let tls = megaconn::TlsConfig::from_pem(
        cert.cert.pem().as_bytes(),
        cert.key_pair.serialize_pem().as_bytes(),
    )
    .unwrap();
    let server = megaconn::Server::builder()
        .workers(1)
        .tls(tls)
        .park_idle_after(Some(Duration::from_millis(20)))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    let app = axum::Router::new().route_service("/ws", megaconn::WebSocketRoute::new(Echo));
    common::run_on_thread(move || server.serve(app));
    (addr, handle)
}

#[test]
fn hold_wss_pings_and_texts_over_tls_while_the_server_parks_them() {
    let (addr, server) = start_wss();
    let target = format!("wss://{addr}/ws");
    let r = run_hold(hold_args(
        &target,
        &["-k", "-c", "20", "--interval", "100ms"],
    ))
    .unwrap();
    assert_eq!((r.connections_peak, r.connections_open_at_end), (20, 20));
    assert_eq!(
        (r.drops, r.resets, r.failed_connects, r.heartbeat_errors),
        (0, 0, 0, 0),
        "{r:?}"
    );
    // The upgrades, then pings answered by pongs, decrypted.
    assert_eq!(r.opens_ok, 20, "{r:?}");
    assert!(r.heartbeats_ok > 20, "{r:?}");
    // Text heartbeats expect their echo.
    let text = [
        "-k",
        "-c",
        "10",
        "--interval",
        "50ms",
        "--ws-heartbeat",
        "text",
    ];
    let r = run_hold(hold_args(
        &target,
        &[&text[..], &["--send", "beat", "--expect", "beat"]].concat(),
    ))
    .unwrap();
    assert_eq!(r.heartbeat_errors, 0, "{r:?}");
    assert!(r.heartbeats_ok > 10, "{r:?}");
    // The server parked them between heartbeats (TLS session and
    // WebSocket state aside, socket in the lot) and woke them for each.
    let stats = server.stats();
    assert!(stats.parks >= 30, "{stats:?}");
    assert!(stats.wakes_cold + stats.wakes_hot >= 30, "{stats:?}");
    // Every upgrade was served (the server's only other connections are
    // hold's reachability checks, a TCP connect and close before each run).
    assert_eq!(stats.request_metrics.upgraded, 30, "{stats:?}");
    assert_eq!(stats.messages.heartbeat_timeouts, 0, "{stats:?}");
    // Without a trust choice, wss:// is refused before any connection.
    let err = run_hold(hold_args(&target, &["-c", "1"])).unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");
}

#[test]
fn hold_ws_refuses_a_plain_http_server() {
    // The upgrade is answered 404 by a route that does not upgrade.
    let addr = start();
    let r = run_hold(hold_args(&format!("ws://{addr}/nowhere"), &["-c", "3"])).unwrap();
    assert_eq!(r.heartbeat_errors, 3, "{r:?}");
    assert_eq!(r.connections_open_at_end, 0);
}

#[test]
fn load_ws_counts_round_trips() {
    let addr = start();
    let r = run_load(common::load_args(
        &format!("ws://{addr}/echo"),
        &["-c", "4", "-t", "2", "-d", "400ms", "--body", "ping me"],
    ))
    .unwrap();
    assert_eq!(r.protocol, "websocket");
    assert_eq!(r.errors_total, 0, "{r:?}");
    assert_eq!(r.connections_opened, 4);
    assert!(r.requests > 10, "{r:?}");
    assert_eq!(r.latency_us.count, r.requests);
    assert_eq!(r.bytes_read, r.requests * "ping me".len() as u64);
}

#[test]
fn load_ws_receive_measures_delivery() {
    let addr = start();
    let r = run_load(common::load_args(
        &format!("ws://{addr}/push"),
        &["-c", "3", "-d", "400ms", "--receive"],
    ))
    .unwrap();
    assert_eq!(r.protocol, "websocket-receive");
    assert!(r.requests >= 3, "{r:?}");
    // Every pushed message carried its send time.
    assert_eq!(r.latency_us.count, r.requests);
    assert!(r.latency_us.max.unwrap() < 5e6, "{r:?}");
}

/// How [`raw_ws`] answers a client's ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Pings back first and sends the pong only once its own ping is
    /// answered: a heartbeat succeeds only if the client answers pings.
    PingsBack,
    /// Never.
    Silent,
    /// With a close frame (1000).
    Closes,
    /// With the pong and, in the same write, a close frame (1001, going
    /// away, as a draining server sends it); then it closes.
    GoesAway,
    /// Writes a close frame (1001) in the same write as its `101`, then
    /// closes: the frame arrives in the client's read of the `101`.
    GoesAwayAtUpgrade,
    /// Writes a ping in the same write as its `101`, then answers
    /// heartbeats as [`Raw::PingsBack`] does, once that ping is answered.
    PingsAtUpgrade,
}

/// A WebSocket server on 127.0.0.1:0, a thread per connection: completes
/// the upgrade, then answers each client ping as `mode` says. It lives until
/// the test process ends.
fn raw_ws(mode: Raw) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            std::thread::spawn(move || raw_ws_conn(sock, mode));
        }
    });
    addr
}

/// One connection of [`raw_ws`], until the client closes it.
fn raw_ws_conn(mut sock: std::net::TcpStream, mode: Raw) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte)? == 0 {
            return Ok(()); // hold's reachability probe
        }
        request.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&request);
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key:"))
        .unwrap_or_default()
        .trim();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let switched = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    // One write each: the frames after the head reach the client in the
    // read that brings the head.
    let ahead: &[u8] = match mode {
        Raw::GoesAwayAtUpgrade => &[0x88, 2, 0x03, 0xe9],
        Raw::PingsAtUpgrade => &[0x89, 2, b'h', b'i'],
        _ => &[],
    };
    sock.write_all(&[switched.as_bytes(), ahead].concat())?;
    if mode == Raw::GoesAwayAtUpgrade {
        return sock.shutdown(std::net::Shutdown::Write);
    }
    // The pong owed to the client's ping, until our ping is answered
    // (`PingsAtUpgrade`: ours went with the `101`).
    let mut owed: Option<Vec<u8>> = None;
    let mut answered = false;
    loop {
        // A masked client frame; hold's are shorter than 126 bytes.
        let mut head = [0u8; 6];
        sock.read_exact(&mut head)?;
        let mut payload = vec![0; usize::from(head[1] & 0x7f)];
        sock.read_exact(&mut payload)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= head[2 + i % 4];
        }
        let pong = |p: &[u8]| [&[0x8a, p.len() as u8][..], p].concat();
        match (head[0] & 0x0f, mode) {
            (0xa, Raw::PingsAtUpgrade) if payload == b"hi" => answered = true,
            (0x9, Raw::PingsAtUpgrade) if answered => sock.write_all(&pong(&payload))?,
            (0x9, Raw::PingsBack) => {
                owed = Some(payload);
                sock.write_all(&[0x89, 2, b'h', b'i'])?;
            }
            (0xa, Raw::PingsBack) if payload == b"hi" => {
                if let Some(p) = owed.take() {
                    sock.write_all(&pong(&p))?;
                }
            }
            (0x9, Raw::Closes) => sock.write_all(&[0x88, 2, 0x03, 0xe8])?,
            (0x9, Raw::GoesAway) => {
                sock.write_all(&[pong(&payload), vec![0x88, 2, 0x03, 0xe9]].concat())?;
                return sock.shutdown(std::net::Shutdown::Write);
            }
            _ => {}
        }
    }
}

/// A server that closes each WebSocket with a close frame (1001, as a
/// graceful drain does) has it counted as closed by the server with its
/// code, not as a drop (as it was: 7,971 "drops" in a drain where every
/// close was clean), connection after connection with --reconnect.
#[test]
fn hold_ws_counts_a_close_frame_apart_from_drops() {
    let addr = raw_ws(Raw::GoesAway);
    let target = format!("ws://{addr}/");
    let args = ["-c", "4", "--interval", "50ms", "--reconnect"];
    let r = run_hold(hold_args(&target, &args)).unwrap();
    assert!(r.closed_by_server >= 4, "{r:?}");
    assert_eq!(r.close_codes.get(&1001), Some(&r.closed_by_server), "{r:?}");
    assert_eq!(r.drops, 0, "{r:?}");
    assert!(r.to_text().contains("closed_by_server"), "{}", r.to_text());
}

/// A frame the server writes in the same write as its `101` is read, not
/// dropped with the rest of the upgrade's read: here a close frame (1001),
/// then the server's close, counted as closed by the server with its code.
/// (Dropped, the close read as a drop: `closed_by_server` 0, `drops` 3.)
#[test]
fn hold_ws_reads_a_frame_sent_with_the_101() {
    let addr = raw_ws(Raw::GoesAwayAtUpgrade);
    let target = format!("ws://{addr}/");
    let r = run_hold(hold_args(&target, &["-c", "3", "--interval", "50ms"])).unwrap();
    assert_eq!(r.opens_ok, 3, "{r:?}");
    assert_eq!((r.closed_by_server, r.drops), (3, 0), "{r:?}");
    assert_eq!(r.close_codes.get(&1001), Some(&3), "{r:?}");
}

/// A ping the server writes with its `101` is answered: this server
/// answers no heartbeat until it is. (Dropped with the upgrade's read, it
/// was never answered, and every heartbeat failed.)
#[test]
fn hold_ws_answers_a_ping_sent_with_the_101() {
    let addr = raw_ws(Raw::PingsAtUpgrade);
    let target = format!("ws://{addr}/");
    let r = run_hold(hold_args(&target, &["-c", "3", "--interval", "50ms"])).unwrap();
    assert_eq!(r.opens_ok, 3, "{r:?}");
    assert_eq!(
        (r.connections_open_at_end, r.heartbeat_errors),
        (3, 0),
        "{r:?}"
    );
    assert!(r.heartbeats_ok > 3, "{r:?}");
}

/// Parked WebSockets answer the server's pings from the lot: here no
/// heartbeat is answered unless the client's pong to the server's ping
/// came first.
#[test]
fn parked_ws_answer_the_servers_pings() {
    let addr = raw_ws(Raw::PingsBack);
    let r = run_hold(hold_args(
        &format!("ws://{addr}/"),
        &["-c", "5", "--interval", "50ms"],
    ))
    .unwrap();
    assert_eq!(r.connections_parked, 5, "{r:?}");
    assert_eq!(
        (r.connections_open_at_end, r.heartbeat_errors),
        (5, 0),
        "{r:?}"
    );
    // The 5 upgrades are opening requests; pings answered on top.
    assert_eq!(r.opens_ok, 5, "{r:?}");
    assert!(r.heartbeats_ok > 5, "{r:?}");
}

/// A missing pong fails the heartbeat after --timeout, a close instead of
/// the pong at once; either way hold closes the connection.
#[test]
fn parked_ws_without_a_pong_fail() {
    for mode in [Raw::Silent, Raw::Closes] {
        let addr = raw_ws(mode);
        let target = format!("ws://{addr}/");
        let argv = ["hold", &target].into_iter().chain(common::UNANSWERED);
        let r = run_hold(common::hold_argv(argv)).unwrap();
        // The upgrades were answered; every first ping failed.
        assert_eq!(
            (r.opens_ok, r.heartbeats_ok, r.heartbeat_errors),
            (3, 0, 3),
            "{mode:?}: {r:?}"
        );
        assert_eq!(r.connections_open_at_end, 0, "{mode:?}: {r:?}");
        assert_eq!((r.drops, r.resets), (0, 0), "{mode:?}: {r:?}");
        assert_eq!(r.connections_parked, 3, "{mode:?}: {r:?}");
    }
}
