//! A parked framed connection whose device vanished without a FIN (an IoT
//! device off the network), with the default `heartbeat_timeout` (none):
//! the server closes it within a bound it set, not after the kernel's ~16
//! minutes of retransmission, cleartext and over TLS. The accept gives the
//! socket `TCP_USER_TIMEOUT` = 2 × `write_stall_timeout` + 1 s
//! (`conn/socket.rs`, `bound_unacknowledged`), so a push the peer never
//! acknowledges errors the socket, the lot wakes the parked connection,
//! and it closes as `Io(TimedOut)`. Before, the push was taken by the
//! kernel's send buffer, no write of ours waited (so `write_stall_timeout`
//! never applied), and the connection stayed parked and kept taking
//! pushes.
//!
//! How the device vanishes: the test runs in a network namespace of its
//! own whose `lo` is taken down once the connection is parked
//! (`common::netns`, which also has the server's bounds).

use crate::common;

use bytes::Bytes;
use common::netns;
use common::tls::{connect, Ca};
use megaconn::{CloseReason, ConnectionId, FramedHandler, Framing, Session};
use tokio::sync::mpsc;

/// Reports each connection's opening and close; echoes nothing.
struct Watch {
    opens: mpsc::UnboundedSender<ConnectionId>,
    closes: mpsc::UnboundedSender<CloseReason>,
}

impl FramedHandler for Watch {
    type State = ();

    fn on_open(&self, _: &mut (), session: &Session) {
        let _ = self.opens.send(session.id());
    }

    async fn on_message(&self, _: &mut (), _: Bytes, _: &Session) -> Option<Bytes> {
        None
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// A parked cleartext framed connection whose device vanishes closes as
/// `Io(TimedOut)` within [`netns::WAIT`] of a push to it.
#[test]
fn a_parked_framed_connection_whose_device_vanished_closes_within_the_stall_bound() {
    netns::run_in_private_netns("framed_halfopen", || vanish_and_wait(false));
}

/// The same over TLS (`listen_framed_tls_on`).
#[test]
fn a_parked_framed_tls_connection_whose_device_vanished_closes_within_the_stall_bound() {
    netns::run_in_private_netns("framed_halfopen tls", || vanish_and_wait(true));
}

/// Inside the namespace: a framed connection opened and parked, `lo` taken
/// down, one push sent, the close awaited.
async fn vanish_and_wait(tls: bool) {
    let ca = Ca::new();
    let addr = "127.0.0.1:0".parse().unwrap();
    let builder = netns::builder();
    let builder = if tls {
        let config = ca.server(&["localhost"]);
        builder
            .tls(config)
            .listen_framed_tls_on(addr, Framing::length_prefixed(4))
    } else {
        builder.listen_framed_on(addr, Framing::length_prefixed(4))
    };
    let mut server = builder.listen().expect("server binds");
    let (addr, handle) = (server.local_addr(), server.handle());
    let hub = server.hub();
    let (opened, mut opens) = mpsc::unbounded_channel();
    let (closed, mut closes) = mpsc::unbounded_channel();
    let watch = Watch {
        opens: opened,
        closes: closed,
    };
    // Run here, not in the task: the hub takes messages once the server
    // runs, which the push must not race.
    let running = server.start_framed(watch).expect("server starts").run();
    let task = tokio::spawn(running);

    // Held (not read) until the end: the device's side of the connection.
    let client: Box<dyn std::any::Any> = if tls {
        Box::new(connect(addr, ca.client(&[]), "localhost").await)
    } else {
        Box::new(tokio::net::TcpStream::connect(addr).await.unwrap())
    };
    let id = netns::opened_and_parked(&handle, &mut opens).await;

    // Taken at once (the kernel's send buffer has room): what the review
    // saw counted as sent while the device was gone.
    let push = || assert_eq!(hub.send(id, vec![7u8; 1000]), Ok(()));
    let what = format!("framed_halfopen (tls: {tls})");
    netns::vanish_and_await_close(&handle, &what, push, closes.recv()).await;
    drop(client);
    common::shut_down(&handle, task).await;
}
