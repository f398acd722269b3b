//! An IoT device gateway: devices on long-lived TCP with 4-byte big-endian
//! length-prefixed frames, operators on HTTP, with the settings of the
//! README's "Recipe: an IoT gateway".
//!
//! ```text
//! cargo run --release -p megaconn --example iot_gateway [-- DEVICES_ADDR [HTTP_ADDR]]
//! curl --data-binary 'reboot' http://127.0.0.1:7880/cmd/42        # one device
//! curl --data-binary 'interval 30s' http://127.0.0.1:7880/topic/fleet
//! curl http://127.0.0.1:7880/metrics
//! ```
//!
//! A device's first frame is `HELLO <id> [topic]`, its id a number
//! (answered `WELCOME <id>`; it must come within 10 s, else the device is
//! closed), then
//! readings `R <seq> <payload>`, each answered `ACK <seq>`. A device that
//! connects again with the same id takes over: the old connection is
//! closed. Devices connect to 127.0.0.1:7883 by default, operators to :7880.
//! `/metrics` counts the fleet-wide topics `fleet` and `firmware` one by
//! one (`megaconn_topic_subscribers{topic}`,
//! `megaconn_topic_publishes_total{topic}`), every other topic (a device's
//! own) summed in `topic="other"`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use bytes::Bytes;
use megaconn::{
    AcceptRate, CloseReason, ConnectionId, FramedHandler, Framing, Hub, Server, ServerHandle,
    Session,
};

/// How long a device may take to say who it is.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// Device id -> its connection, shared by the handler and the routes.
type Devices = Arc<Mutex<HashMap<u64, ConnectionId>>>;

/// The devices' protocol. Its per-connection state is the device's id
/// once it said hello: 16 bytes in the side table while it is parked, and
/// nothing on the heap. (A `Box<str>` name allocated as 10,000 devices
/// said hello at once kept 3.2 KB per parked device resident, against
/// 148 B with this: README, "Recipe: an IoT gateway".)
struct Gateway {
    devices: Devices,
    hub: Hub,
}

impl FramedHandler for Gateway {
    type State = Option<u64>;

    fn on_open(&self, _: &mut Self::State, session: &Session) {
        // The authentication deadline, cancelled by the hello.
        let _ = self.hub.close_after(session.id(), HELLO_WITHIN);
    }

    async fn on_message(
        &self,
        device: &mut Self::State,
        frame: Bytes,
        session: &Session,
    ) -> Option<Bytes> {
        let text = String::from_utf8_lossy(&frame);
        let mut words = text.split_whitespace();
        match (*device, words.next()) {
            (None, Some("HELLO")) => {
                let Some(id) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
                    session.close();
                    return Some(Bytes::from_static(b"ERR hello needs a numeric id"));
                };
                if let Some(topic) = words.next() {
                    if let Err(e) = session.subscribe(topic) {
                        session.send(format!("ERR subscribe: {e}"));
                    }
                }
                let _ = self.hub.cancel_close_after(session.id());
                let old = self.devices.lock().unwrap().insert(id, session.id());
                if let Some(old) = old {
                    // A reconnect whose old connection has not closed yet
                    // (half-open, behind a NAT that lost it).
                    let _ = self.hub.close(old);
                }
                *device = Some(id);
                Some(format!("WELCOME {id}").into())
            }
            (None, _) => {
                session.close();
                Some(Bytes::from_static(b"ERR hello first"))
            }
            (Some(_), Some("R")) => Some(format!("ACK {}", words.next().unwrap_or("?")).into()),
            (Some(_), _) => Some(Bytes::from_static(b"ERR unknown")),
        }
    }

    fn on_framing_error(
        &self,
        _: &mut Self::State,
        error: megaconn::FramingError,
    ) -> Option<Bytes> {
        Some(format!("ERR framing: {error}").into())
    }

    fn on_close_with_id(&self, id: ConnectionId, device: Self::State, reason: CloseReason) {
        if let Some(device) = device {
            // Only if it still holds this id: after a takeover the old
            // connection closes after the new one registered.
            let mut devices = self.devices.lock().unwrap();
            if devices.get(&device) == Some(&id) {
                devices.remove(&device);
            }
        }
        // megaconn logs heartbeat and message timeouts at debug only: the
        // gateway's line per device.
        tracing::info!(?device, %reason, "device closed");
    }
}

/// What the operators' routes share.
#[derive(Clone)]
struct Ops {
    hub: Hub,
    devices: Devices,
    handle: ServerHandle,
}

/// `POST /cmd/{device}`: pushed to that device; answers whether its
/// socket took it (not whether the device read it).
async fn command(State(ops): State<Ops>, Path(device): Path<String>, body: Bytes) -> String {
    let id = device.parse().ok();
    let id = id.and_then(|d: u64| ops.devices.lock().unwrap().get(&d).copied());
    let Some(id) = id else {
        return "unknown device\n".into();
    };
    match ops.hub.send_confirmed(id, body).await {
        Ok(()) => "sent\n".into(),
        Err(e) => format!("not delivered: {e}\n"),
    }
}

/// `POST /topic/{topic}`: published to every device subscribed to it.
async fn publish(State(ops): State<Ops>, Path(topic): Path<String>, body: Bytes) -> String {
    match ops.hub.publish(&topic, body) {
        Ok(()) => format!("published to ~{} devices\n", megaconn::subscribers(&topic)),
        Err(e) => format!("not published: {e}\n"),
    }
}

/// `GET /metrics`: megaconn's series and the devices that said hello.
async fn metrics(State(ops): State<Ops>) -> String {
    let named = ops.devices.lock().unwrap().len();
    format!(
        "{}gateway_devices_named {named}\n",
        ops.handle.render_metrics()
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let devices_addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7883".into())
        .parse()?;
    let http_addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7880".into())
        .parse()?;
    let framing = Framing::length_prefixed(4)
        .max_inbound_frame_bytes(1024)
        .max_outbound_frame_bytes(64 * 1024);
    let mut server = Server::builder()
        .listen_framed_on(devices_addr, framing)
        .listen_on(http_addr)
        // Devices send a reading every 60 s: one may be lost.
        .heartbeat_timeout(Some(Duration::from_secs(150)))
        .message_timeout(Some(Duration::from_secs(30)))
        // No max_connections_per_ip: devices behind a NAT share an address.
        .accept_rate(Some(AcceptRate {
            per_second: 20_000.0,
            burst: 20_000,
        }))
        .goodbye_frame(Some(Bytes::from_static(b"BYE")))
        .shutdown_drain_rate(Some(20_000))
        .shutdown_timeout(Duration::from_secs(90))
        .message_send_buffer_size(Some(32 * 1024))
        // A series per fleet-wide topic; a topic per device would be a
        // million: those are summed in `topic="other"`.
        .topic_metrics(["fleet", "firmware"])
        .listen()?;
    let hub = server.hub();
    let devices = Devices::default();
    let ops = Ops {
        hub: hub.clone(),
        devices: devices.clone(),
        handle: server.handle(),
    };
    let routes = axum::Router::new()
        .route("/cmd/{device}", post(command))
        .route("/topic/{topic}", post(publish))
        .route("/metrics", get(metrics))
        .with_state(ops);
    println!("devices on {devices_addr}, operators on http://{http_addr}");
    let summary = server
        .framed(Gateway { devices, hub })
        .serve_with_shutdown(routes, megaconn::shutdown_signal()?)
        .await?;
    println!("shut down: {summary:?}");
    Ok(())
}
