//! Framed TCP's bounds for each direction and `Hub::reset`, over real
//! sockets, as an IoT gateway uses them: devices that send telemetry of a
//! few hundred bytes (a tight inbound bound) and are sent firmware in
//! chunks of hundreds of KiB (a large outbound one); a frame over either
//! bound, and what its sender hears; a device kicked with a reset, parked
//! or awake. Every wait is bounded and waits on a condition (an event, a
//! counter, a byte), never on time alone.

use crate::common::{self, closed_as, limit_hits, SAFETY};

use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use common::msg::{frame, read_frame};
use megaconn::{
    Builder, CloseReason, ConnectionId, FramedHandler, Framing, FramingError, HubError,
    ProtocolDetail, Server, ServerStats, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a device may send: 1 KiB a frame.
const INBOUND: usize = 1024;
/// What a device may be sent: 512 KiB a frame.
const OUTBOUND: usize = 512 * 1024;
/// A firmware chunk: 300 KiB, over the inbound bound, within the outbound.
const CHUNK: usize = 300 * 1024;

/// The gateway's framing: 4-byte length headers, each direction its bound.
fn gateway() -> Framing {
    Framing::length_prefixed(4)
        .max_inbound_frame_bytes(INBOUND)
        .max_outbound_frame_bytes(OUTBOUND)
}

/// The test handler: `firmware` is answered with a [`CHUNK`], `oversize`
/// with a frame one byte over [`OUTBOUND`]; anything else is echoed. Opens
/// and closes are reported with the connection's id.
struct Gateway {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<(ConnectionId, CloseReason)>,
}

impl FramedHandler for Gateway {
    type State = ();

    fn on_open(&self, _: &mut (), session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        match &frame[..] {
            b"firmware" => Some(Bytes::from(vec![7u8; CHUNK])),
            b"oversize" => Some(Bytes::from(vec![9u8; OUTBOUND + 1])),
            _ => Some(frame),
        }
    }

    fn on_close_with_id(&self, id: ConnectionId, _: (), reason: CloseReason) {
        let _ = self.closes.send((id, reason));
    }
}

/// A gateway server on 127.0.0.1:0, one worker: its framed listeners (in
/// the order added), hub and the [`Gateway`]'s opens and closes.
type Running = common::msg::Running<(ConnectionId, CloseReason)>;

/// Serves [`Gateway`] with `builder`, on a listener for each of `framings`.
fn start(builder: Builder, framings: &[Framing]) -> Running {
    let builder = framings.iter().fold(builder.workers(1), |b, &framing| {
        b.listen_framed_on("127.0.0.1:0".parse().unwrap(), framing)
    });
    let server = builder.listen().expect("server binds");
    Running::serve(server, |server, opens, closes| {
        let gateway = Gateway { opens, closes };
        server.start_framed(gateway).expect("server starts")
    })
}

/// A device connected to `server`'s listener `listener`, and its id.
async fn device(server: &mut Running, listener: usize) -> (TcpStream, ConnectionId) {
    let s = TcpStream::connect(server.addrs[listener])
        .await
        .expect("connect");
    s.set_nodelay(true).unwrap();
    (s, server.next_open().await)
}

/// What the next read of `s` gets (bounded): bytes, the end of the
/// stream (`Ok(0)`) or an error.
async fn next_read(s: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = [0; 64];
    tokio::time::timeout(SAFETY, s.read(&mut buf))
        .await
        .expect("timed out reading")
}

/// A 300 KiB firmware chunk goes out through a listener whose inbound
/// bound is 1 KiB, pushed by the hub and as a reply alike. With one
/// `max_frame_bytes` for both directions, a gateway had to let every
/// device send 300 KiB frames to be able to send it one.
#[tokio::test]
async fn a_large_push_and_reply_pass_a_tight_inbound_bound() {
    let mut server = start(Server::builder(), &[gateway()]);
    let (mut device, id) = device(&mut server, 0).await;
    let chunk = vec![5u8; CHUNK];
    assert_eq!(server.hub.send(id, chunk.clone()), Ok(()));
    assert_eq!(read_frame(&mut device).await, chunk);
    device.write_all(&frame(b"firmware")).await.unwrap();
    assert_eq!(read_frame(&mut device).await, vec![7u8; CHUNK]);
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "push_unframable"), 0, "{stats:?}");
    assert_eq!(stats.messages.pushes, 1);
    server.stop().await;
}

/// A device's frame over the inbound bound (2 KiB over 1 KiB) closes its
/// connection as a framing error, counted in
/// `limit_hits{limit="framed_max_frame_bytes"}`, before its body is read,
/// however large the outbound bound.
#[tokio::test]
async fn an_inbound_frame_over_its_bound_closes_with_the_metric() {
    let mut server = start(Server::builder(), &[gateway()]);
    let (mut device, id) = device(&mut server, 0).await;
    device.write_all(&frame(b"ping")).await.unwrap();
    assert_eq!(read_frame(&mut device).await, b"ping");
    // At the bound is fine.
    device.write_all(&frame(&[1; INBOUND])).await.unwrap();
    assert_eq!(read_frame(&mut device).await, vec![1; INBOUND]);
    let _ = device.write_all(&frame(&[2; 2 * INBOUND])).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SAFETY, device.read_to_end(&mut rest))
        .await
        .expect("timed out waiting for the close");
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    let too_large = CloseReason::Protocol(ProtocolDetail::Framing(FramingError::FrameTooLarge));
    assert_eq!(server.next_close().await, (id, too_large));
    server
        .wait_stats("the close counted", |s| closed_as(s, "protocol_error") == 1)
        .await;
    let stats = server.handle.stats();
    assert_eq!(limit_hits(&stats, "framed_max_frame_bytes"), 1, "{stats:?}");
    server.stop().await;
}

/// A frame over the outbound bound is not sent, and its sender hears of
/// it: the hub refuses it at the call (`HubError::TooLarge`, by id, topic
/// or broadcast alike), counted in `limit_hits{limit="push_unframable"}`,
/// the connection left as it was; a handler's reply closes its connection
/// as `ServerError`, counted the same. (Before, the hub said `Ok` and the
/// push was dropped on the worker: the sender could not tell.)
#[tokio::test]
async fn an_outbound_frame_over_its_bound_is_refused_and_counted() {
    let mut server = start(Server::builder(), &[gateway()]);
    let (mut device, id) = device(&mut server, 0).await;
    let over = vec![3u8; OUTBOUND + 1];
    let refused = Err(HubError::TooLarge {
        bytes: OUTBOUND + 1,
        limit: OUTBOUND,
    });
    assert_eq!(server.hub.send(id, over.clone()), refused);
    assert_eq!(server.hub.publish("fw", over.clone()), refused);
    assert_eq!(server.hub.broadcast(over), refused);
    let unframable = |s: &ServerStats| limit_hits(s, "push_unframable");
    assert_eq!(unframable(&server.handle.stats()), 3);
    assert_eq!(server.handle.stats().messages.hub_queued, 0);
    // At the bound it goes, and the connection is as it was.
    assert_eq!(server.hub.send(id, vec![4u8; OUTBOUND]), Ok(()));
    assert_eq!(read_frame(&mut device).await, vec![4u8; OUTBOUND]);
    device.write_all(&frame(b"ping")).await.unwrap();
    assert_eq!(read_frame(&mut device).await, b"ping");
    // A reply over the bound: the handler hears of it as its close.
    device.write_all(&frame(b"oversize")).await.unwrap();
    assert_eq!(server.next_close().await, (id, CloseReason::ServerError));
    assert_eq!(unframable(&server.handle.stats()), 4);
    server.stop().await;
}

/// Two listeners, devices on one sent at most 1 KiB, on the other 512
/// KiB: a message one can carry is not refused at the call; the
/// connections that cannot carry it miss it when their worker delivers
/// it, counted per connection, and stay open.
#[tokio::test]
async fn a_push_only_some_listeners_carry_is_dropped_for_the_others_and_counted() {
    let small = Framing::length_prefixed(4).max_frame_bytes(INBOUND);
    let mut server = start(Server::builder(), &[small, gateway()]);
    let (mut on_small, small_id) = device(&mut server, 0).await;
    let (mut on_large, large_id) = device(&mut server, 1).await;
    let two_kib = vec![6u8; 2 * INBOUND];
    assert_eq!(server.hub.send(small_id, two_kib.clone()), Ok(()));
    assert_eq!(server.hub.send(large_id, two_kib.clone()), Ok(()));
    assert_eq!(read_frame(&mut on_large).await, two_kib);
    server
        .wait_stats("the small one's miss counted", |s| {
            limit_hits(s, "push_unframable") == 1
        })
        .await;
    on_small.write_all(&frame(b"still here")).await.unwrap();
    assert_eq!(read_frame(&mut on_small).await, b"still here");
    // Over both: refused at the call.
    let over = vec![0u8; OUTBOUND + 1];
    assert!(matches!(
        server.hub.send(small_id, over),
        Err(HubError::TooLarge {
            limit: OUTBOUND,
            ..
        })
    ));
    server.stop().await;
}

/// `Hub::reset` closes a device's connection with a reset, parked or
/// awake: the device reads `ECONNRESET` (a `Hub::close` ends with the end
/// of the stream), the handler hears `CloseReason::Reset`, counted as
/// `closed_total{reason="reset"}`; its id is closed from then on.
#[tokio::test]
async fn hub_reset_resets_a_connection_parked_or_awake() {
    for parks in [true, false] {
        let park_after = parks.then_some(Duration::from_millis(20));
        let builder = Server::builder().park_idle_after(park_after);
        let mut server = start(builder, &[gateway()]);
        let (mut device, id) = device(&mut server, 0).await;
        device.write_all(&frame(b"hello")).await.unwrap();
        assert_eq!(read_frame(&mut device).await, b"hello");
        if parks {
            server
                .wait_stats("parked", |s| s.connections_parked == 1)
                .await;
        }
        assert_eq!(server.hub.reset(id), Ok(()));
        // A close that follows does not undo the reset: parked, it replaced
        // it (merge review, session 46). Refused if the worker already
        // took the reset, queued behind it if not.
        let close = server.hub.close(id);
        assert!(matches!(close, Ok(()) | Err(HubError::Closed)), "{close:?}");
        assert_eq!(
            server.next_close().await,
            (id, CloseReason::Reset),
            "parks: {parks}"
        );
        let read = next_read(&mut device).await;
        assert_eq!(
            read.as_ref().map_err(std::io::Error::kind),
            Err(ErrorKind::ConnectionReset),
            "parks: {parks}: {read:?}"
        );
        // Counted as the dispatcher closes it, just after `on_close`.
        server
            .wait_stats("the reset counted", |s| closed_as(s, "reset") == 1)
            .await;
        assert_eq!(closed_as(&server.handle.stats(), "kicked"), 0);
        assert_eq!(server.hub.reset(id), Err(HubError::Closed));
        assert_eq!(server.hub.send(id, "x"), Err(HubError::Closed));
        server.stop().await;
    }
}
