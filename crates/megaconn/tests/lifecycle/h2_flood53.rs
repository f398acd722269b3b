//! A small-DATA flood sent in one write meets megaconn's tiny-DATA guard,
//! its count and its line, never h2's own bound on small frames first
//! (session 53). The flood: DATA frames of one byte padded to 16 on the
//! wire, to a stream whose handler never reads. Not tiny to our budget
//! (it counts frames by their size on the wire), each takes 255 of h2's
//! budget (it counts payload), which h2 ran out at the 2,057th frame and
//! closed the connection with its own `GOAWAY` (`too_many_data_frames`,
//! counted `h2_enhance_your_calm`, no line naming a setting). Now the
//! read that holds that frame is cut before it and ours closes the
//! connection. (h2's bound came first too for a flood of unpadded tiny
//! frames read over more than ~50 ms, which ours gave back by time:
//! `an_http2_tiny_data_flood_is_logged_naming_the_budget`, whose pacing
//! kept it reliable.)

use super::common::{self, TestServer};
use super::{capture_log, logged, wait_for_warning};
use tokio::io::AsyncWriteExt;

/// Frames in the flood: more than h2's budget takes (524,288 bytes at
/// 255 a frame: 2,056), fewer than the stream's window allows (16 bytes
/// each: 64 KiB is 4,096).
const FRAMES: usize = 2_200;

#[tokio::test]
async fn a_padded_small_data_flood_in_one_write_is_ours_counted_and_logged() {
    capture_log();
    let server = TestServer::start(megaconn::Server::builder().workers(1)).await;
    // Its own address: the line is told from any other test's by it.
    let mut tcp = common::connect_from_own_address(server.addr).await;
    let peer = tcp.local_addr().unwrap();
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS
                                                             // HEADERS (END_HEADERS) on stream 1: POST /wait, :authority a.
    let wait = [
        0x83, 0x86, 0x04, 5, b'/', b'w', b'a', b'i', b't', 0x01, 1, b'a',
    ];
    flood.extend_from_slice(&[0, 0, wait.len() as u8, 0x1, 0x4, 0, 0, 0, 1]);
    flood.extend_from_slice(&wait);
    for _ in 0..FRAMES {
        // DATA (PADDED), 16 bytes: pad length 14, one byte, the padding.
        flood.extend_from_slice(&[0, 0, 16, 0x0, 0x8, 0, 0, 0, 1, 14, b'x']);
        flood.extend_from_slice(&[0; 14]);
    }
    // The server may close before it read everything.
    let _ = tcp.write_all(&flood).await;
    wait_for_warning(&format!(
        "HTTP/2 connection from {peer} closed with GOAWAY(ENHANCE_YOUR_CALM): it sent more tiny DATA frames"
    ))
    .await;
    assert!(logged()
        .iter()
        .any(|m| m.contains(&peer.to_string()) && m.contains("HTTP2_TINY_DATA_BUDGET (2000)")));
    let stats = server.handle.stats();
    assert_eq!(
        common::limit_hits(&stats, "http2_data_flood"),
        1,
        "{stats:?}"
    );
    assert_eq!(
        common::limit_hits(&stats, "h2_enhance_your_calm"),
        0,
        "{stats:?}"
    );
    drop(tcp);
    server.stop().await;
}
