//! An empty-DATA flood meets megaconn's guard, its count and its line,
//! never h2's own count of empty frames first (session 54). The flood:
//! DATA frames with no payload that do not end their stream, plain
//! (length 0) and padding-only (a pad-length byte naming the rest), to a
//! stream whose handler never reads. h2 counts 100 such frames a
//! connection (a stream's first is free) and then closed the connection
//! with its own `GOAWAY(ENHANCE_YOUR_CALM, "too_many_data_frames")`,
//! counted `h2_enhance_your_calm`, with no line naming the peer; ours
//! charged each 9 bytes of the 64 KiB control budget, so h2's came
//! first, always. Now each read is held to what is left of h2's count
//! and ours closes the connection no later than h2 would have: at the
//! frame h2 would have closed it on when paced, one frame earlier within
//! one read (where ours counts the stream's free first frame too, not
//! telling which h2 lets through). Sent in one write, and paced one frame a read (each followed by a
//! SETTINGS frame whose acknowledgement says it was read and processed,
//! so that every read finds h2's count where the frames before left it).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{self, TestServer, SAFETY};
use super::{capture_log, logged, wait_for_line, Whose};

/// Frames sent at most: more than h2 counts (100, beyond the stream's
/// first), far fewer than the control budget would take (7,281 empty
/// frames at 9 bytes).
const FRAMES: usize = 150;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// `ENHANCE_YOUR_CALM`'s code.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame of `kind` on `stream`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The `n`th frame of the flood on stream 1: empty, or padding-only (a
/// pad length of 8 and 8 bytes of padding: no payload to h2) every other.
fn empty_frame(n: usize) -> Vec<u8> {
    if n % 2 == 0 {
        frame(DATA, 0, 1, &[])
    } else {
        frame(DATA, PADDED, 1, &[8, 0, 0, 0, 0, 0, 0, 0, 0])
    }
}

/// The preface, an empty SETTINGS frame and `POST /wait` on stream 1,
/// its body open (the handler never reads it).
fn hello() -> Vec<u8> {
    let wait = [
        0x83, 0x86, 0x04, 5, b'/', b'w', b'a', b'i', b't', 0x01, 1, b'a',
    ];
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_HEADERS, 1, &wait));
    hello
}

/// The server's next frame (kind, flags, payload), `None` once the
/// connection ended.
async fn next_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, u8, Vec<u8>)> {
    loop {
        if buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() >= 9 + len {
                let frame = (buf[3], buf[4], buf[9..9 + len].to_vec());
                buf.drain(..9 + len);
                return Some(frame);
            }
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(SAFETY, tcp.read(&mut chunk))
            .await
            .expect("the server writes or closes within SAFETY");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server of its own (one worker) and a connection to it from an
/// address of its own (its line is told from any other test's by it).
async fn start() -> (TestServer, TcpStream) {
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1)).await;
    let tcp = common::connect_from_own_address(server.addr).await;
    (server, tcp)
}

/// Waits until the server counted the connection's close, and asserts
/// it was ours (`http2_data_flood`) and not h2's own `GOAWAY`
/// (`h2_enhance_your_calm`, with h2's line), then that ours logged its
/// line naming the peer and h2's count.
async fn closed_by_ours(server: &TestServer, peer: std::net::SocketAddr) {
    common::wait_stats(&server.handle, "the close counted, ours or h2's", |s| {
        common::limit_hits(s, "http2_data_flood") + common::limit_hits(s, "h2_enhance_your_calm")
            > 0
    })
    .await;
    let stats = server.handle.stats();
    if common::limit_hits(&stats, "h2_enhance_your_calm") > 0 {
        // The lines of h2's closes (other tests' too: the log is shared).
        let calmed: Vec<String> = logged()
            .iter()
            .filter(|m| m.contains("closed with GOAWAY(ENHANCE_YOUR_CALM)"))
            .cloned()
            .collect();
        panic!(
            "h2's own GOAWAY closed the connection first (h2_enhance_your_calm): {:?}; {:?}",
            &calmed[calmed.len().saturating_sub(3)..],
            stats.limit_hits
        );
    }
    assert_eq!(
        common::limit_hits(&stats, "http2_data_flood"),
        1,
        "{stats:?}"
    );
    wait_for_line(
        Whose::Peer(peer),
        &format!("HTTP/2 connection from {peer} closed with GOAWAY(ENHANCE_YOUR_CALM): it sent more empty DATA frames"),
    )
    .await;
    let peer = peer.to_string();
    assert!(logged()
        .iter()
        .any(|m| m.contains(&peer) && m.contains("H2_EMPTY_DATA_FRAMES, 100")));
}

#[tokio::test]
async fn an_empty_data_flood_in_one_write_is_ours_counted_and_logged() {
    let (server, mut tcp) = start().await;
    let peer = tcp.local_addr().unwrap();
    let mut flood = hello();
    for n in 0..FRAMES {
        flood.extend(empty_frame(n));
    }
    // The server may close before it read everything.
    let _ = tcp.write_all(&flood).await;
    closed_by_ours(&server, peer).await;
    drop(tcp);
    server.stop().await;
}

#[tokio::test]
async fn a_paced_empty_data_flood_is_ours_counted_and_logged() {
    let (server, mut tcp) = start().await;
    let peer = tcp.local_addr().unwrap();
    tcp.write_all(&hello()).await.unwrap();
    let mut buf = Vec::new();
    // The acknowledgement of the preface's SETTINGS: each round's comes
    // after it.
    loop {
        match next_frame(&mut tcp, &mut buf).await {
            Some((SETTINGS, ACK, _)) => break,
            Some(_) => {}
            None => panic!("the connection ended before its SETTINGS were acknowledged"),
        }
    }
    let mut goaway = None;
    let mut sent = 0;
    'rounds: for n in 0..FRAMES {
        let mut round = empty_frame(n);
        round.extend(frame(SETTINGS, 0, 0, &[]));
        if tcp.write_all(&round).await.is_err() {
            break;
        }
        sent += 1;
        // Until the server has read and processed the frame (the SETTINGS
        // after it acknowledged), or closed the connection.
        loop {
            match next_frame(&mut tcp, &mut buf).await {
                Some((SETTINGS, ACK, _)) => break,
                Some((GOAWAY, _, payload)) => {
                    goaway = Some(payload);
                    break 'rounds;
                }
                Some(_) => {}
                None => break 'rounds,
            }
        }
    }
    // h2 would have closed it at the 102nd frame (the stream's first is
    // free): ours closes it there too, with no debug data (h2's says
    // `too_many_data_frames`).
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} frames"));
    let code = u32::from_be_bytes(goaway[4..8].try_into().unwrap());
    let debug = String::from_utf8_lossy(&goaway[8..]).into_owned();
    assert_eq!(
        (code, debug.as_str(), sent),
        (ENHANCE_YOUR_CALM, "", 102),
        "GOAWAY's code, debug data, frames sent"
    );
    closed_by_ours(&server, peer).await;
    drop(tcp);
    server.stop().await;
}
