//! End-to-end tests of `hold ws://` and `load ws://` (round trips and
//! `--receive`) against an in-process megaconn serving WebSockets through
//! its axum-compatible socket: an echo, and a push of time-stamped messages.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use clap::Parser;
use megaconn::axum_ws::{Message, WebSocketUpgrade};
use megaconn_load::{run_hold, run_load, HoldArgs, LoadArgs};

#[derive(Parser)]
struct HoldCli {
    #[command(flatten)]
    args: HoldArgs,
}

#[derive(Parser)]
struct LoadCli {
    #[command(flatten)]
    args: LoadArgs,
}

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
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(server.serve(app));
    });
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
    HoldCli::parse_from(v).args
}

fn load_args(url: &str, extra: &[&str]) -> LoadArgs {
    let mut v = vec!["load", url, "-q"];
    v.extend_from_slice(extra);
    LoadCli::parse_from(v).args
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
    // The 40 upgrades count as answered, and the pings came on top.
    assert!(r.heartbeats_ok > 40, "{r:?}");
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
    let r = run_load(load_args(
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
    let r = run_load(load_args(
        &format!("ws://{addr}/push"),
        &["-c", "3", "-d", "400ms", "--receive"],
    ))
    .unwrap();
    assert_eq!(r.protocol, "websocket-receive");
    assert!(r.requests >= 3, "{r:?}");
    // Every pushed message carried its send time.
    assert_eq!(r.latency_us.count, r.requests);
    assert!(r.latency_us.max < 5e6, "{r:?}");
}
