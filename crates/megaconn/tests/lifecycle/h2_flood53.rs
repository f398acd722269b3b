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

use super::common;
use super::h2_flood_is_logged;

/// Frames in the flood: more than h2's budget takes (524,288 bytes at
/// 255 a frame: 2,056), fewer than the stream's window allows (16 bytes
/// each: 64 KiB is 4,096).
const FRAMES: usize = 2_200;

#[tokio::test]
async fn a_padded_small_data_flood_in_one_write_is_ours_counted_and_logged() {
    // HEADERS (END_HEADERS) on stream 1: POST /wait, :authority a.
    let wait = [
        0x83, 0x86, 0x04, 5, b'/', b'w', b'a', b'i', b't', 0x01, 1, b'a',
    ];
    let mut flood = vec![0, 0, wait.len() as u8, 0x1, 0x4, 0, 0, 0, 1];
    flood.extend_from_slice(&wait);
    for _ in 0..FRAMES {
        // DATA (PADDED), 16 bytes: pad length 14, one byte, the padding.
        flood.extend_from_slice(&[0, 0, 16, 0x0, 0x8, 0, 0, 0, 1, 14, b'x']);
        flood.extend_from_slice(&[0; 14]);
    }
    let stats = h2_flood_is_logged(
        &flood,
        "it sent more tiny DATA frames",
        "HTTP2_TINY_DATA_BUDGET (2000)",
    )
    .await;
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
}
