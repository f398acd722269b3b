//! One close, one bound (`Builder::linger_timeout`) on framed TCP over TLS
//! (`Builder::listen_framed_tls_on`): a slow consumer's close writes the
//! rest of the frame under way, then lingers (its shutdown says
//! `close_notify`), all its steps within one `linger_timeout`
//! (`conn::io::CloseBy`), as the HTTP listeners' closes do
//! (`linger_timeout.rs`, `linger_once.rs`). Two servers side by side, each
//! with a client that reads nothing, one bound a millisecond, the other an
//! hour: what is asserted is the order of their closes and what each
//! client reads, never how long anything took, and every wait waits on a
//! condition (a handler's close, a counter, the socket's end).

use std::time::Duration;

use megaconn::{ConnectionId, Framing};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::msg::{read_frame, MsgServer};
use crate::common::tls::{connect, Ca};
use crate::common::SAFETY;
use crate::linger_once::{stick_then_overflow, STUCK};
use crate::linger_timeout::{
    cut_and_counted_once, ended_uncounted, slow_consumers, still_in_its_close, GENEROUS, TINY,
};

/// A server of one worker (HTTPS, unused, and framed TLS, length-prefixed,
/// its frames up to 8 MiB; connections kept awake, a queue of two) whose
/// close bound is `linger`, a TLS client of its framed listener that reads
/// nothing, and that client's connection: a slow consumer, a 4 MiB frame
/// under way when its queue overflowed ([`stick_then_overflow`]).
async fn slow_consumer(linger: Duration) -> (MsgServer, TlsStream<TcpStream>, ConnectionId) {
    let ca = Ca::new();
    let framing = Framing::length_prefixed(4).max_frame_bytes(8 << 20);
    let builder = slow_consumers(linger)
        .tls(ca.server(&["localhost"]))
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen_framed_tls_on("127.0.0.1:0".parse().unwrap(), framing);
    let mut server = MsgServer::start(builder, None);
    // No ALPN: a framed client offers none.
    let tls = connect(server.framed, ca.client(&[]), "localhost").await;
    let id = server.next_open().await;
    stick_then_overflow(&mut server, id, tls.get_ref().0).await;
    (server, tls, id)
}

/// Two framed TLS slow consumers whose clients read nothing, the first
/// with an hour to close, the second a millisecond: the second's close is
/// cut (the rest of its frame never goes), ends (its handler hears
/// `slow_consumer`, its client's socket ends) and is counted once, while
/// the first is still open, uncounted. Then the first's client reads: the
/// frame under way, whole, then `close_notify` (a clean end: no frame
/// after, the queued pushes dropped), and only its hanging up ends that
/// close, uncounted. A close whose steps each took a bound of their own
/// counted the cut twice (the rest of the frame, then `close_notify`: the
/// event stream's case, merge review of session 50).
#[tokio::test]
async fn a_framed_tls_close_ends_at_its_own_bound_counted_once() {
    let (mut generous, mut patient, patient_id) = slow_consumer(GENEROUS).await;
    let (mut tiny, mut silent, silent_id) = slow_consumer(TINY).await;

    cut_and_counted_once(&mut tiny, silent_id).await;
    // Its socket ended (a FIN after what it holds, or a reset): the
    // ciphertext, read under rustls, to its end.
    let got = read_to_its_end(silent.get_mut().0).await;
    assert!(
        got < STUCK,
        "the cut close sent the whole {STUCK}-byte frame ({got} bytes of ciphertext)"
    );

    // The generous one's close began first, and has not ended.
    still_in_its_close(&mut generous);

    // Its client reads at last: the frame under way whole, then the
    // close's `close_notify` (a clean end of the TLS stream).
    let frame = read_frame(&mut patient).await;
    assert!(
        frame.len() == STUCK && frame.iter().all(|b| *b == b'a'),
        "not the whole frame under way: {} bytes",
        frame.len()
    );
    let mut after = Vec::new();
    tokio::time::timeout(SAFETY, patient.read_to_end(&mut after))
        .await
        .expect("the close's close_notify in time")
        .expect("a clean end (close_notify), not a cut one");
    assert!(after.is_empty(), "{} bytes after the frame", after.len());
    // Its hanging up ends the close (its EOF, read by the linger).
    drop(patient);
    ended_uncounted(&mut generous, patient_id).await;
    drop(silent);
    tiny.stop().await;
    generous.stop().await;
}

/// Reads `tcp` to its end (EOF, or a reset), bounded by [`SAFETY`]: how
/// many bytes came.
async fn read_to_its_end(tcp: &mut TcpStream) -> usize {
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    let end = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(SAFETY, end)
        .await
        .expect("the socket ended in time");
    got
}
