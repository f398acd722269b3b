//! The unread-body budget (`http2_max_unread_body_bytes`) is counted
//! however the DATA that reaches it is cut into reads: here its last frame
//! arrives in two, its header and most of it in one read, the rest in a
//! later one. The count looked after each poll that brought DATA, and
//! DATA was counted whole at its frame's header: the poll that ended
//! mid-frame looked too early (h2 held less than the budget), and the one
//! that brought the rest saw no new DATA and did not look. The connection
//! was never counted: `h2_budget::the_budget_is_the_builders` failed so on
//! a loaded machine (session 52, "never counted; 262144 bytes sent"), when
//! its client's last frame came in two.

use crate::common;

use std::time::Duration;

use super::h2::{frame, RawFrame, RawH2, DATA, GET_ROOT, HEADERS, SETTINGS};

/// The budget, the connection's window: two streams' windows (half each).
const BUDGET: u32 = 128 * 1024;
/// A stream's window (`unread::stream_window`: half the budget).
const STREAM_WINDOW: usize = BUDGET as usize / 2;
/// The largest DATA frame a client may send unasked (RFC 9113 §4.2).
const FRAME: usize = 16_384;
/// What comes of the last frame after the rest was read.
const TAIL: usize = 100;
const WINDOW_UPDATE: u8 = 0x8;
const END_HEADERS: u8 = 0x4;
const END_STREAM_AND_HEADERS: u8 = 0x5;
/// SETTINGS_INITIAL_WINDOW_SIZE.
const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// HPACK for `POST /wait` (the test app's handler that never reads its
/// body): :method POST, :scheme http, :path "/wait" as a literal with an
/// indexed name, :authority "a" likewise.
const POST_WAIT: [u8; 12] = [
    0x83, 0x86, 0x04, 5, b'/', b'w', b'a', b'i', b't', 0x01, 1, b'a',
];

/// Reads the server's first frames until it has given the windows this
/// test fills: its SETTINGS (acknowledged) with a stream window of
/// [`STREAM_WINDOW`], and the `WINDOW_UPDATE` that opens the connection's
/// to [`BUDGET`] (RFC 9113 §6.9.2: 65,535 until then).
async fn windows_given(raw: &mut RawH2) {
    let (mut stream_window, mut connection_window) = (None, None);
    while stream_window.is_none() || connection_window.is_none() {
        let f: RawFrame = raw.next_frame().await.expect("the server's first frames");
        if f.kind == SETTINGS && raw.ack_settings(&f).await {
            for setting in f.payload.chunks_exact(6) {
                if u16::from_be_bytes([setting[0], setting[1]]) == INITIAL_WINDOW_SIZE {
                    let size = u32::from_be_bytes(setting[2..6].try_into().unwrap());
                    stream_window = Some(size as usize);
                }
            }
        } else if f.kind == WINDOW_UPDATE && f.stream == 0 {
            let more = u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
            connection_window = Some(65_535 + more);
        }
    }
    assert_eq!(stream_window, Some(STREAM_WINDOW), "the stream window");
    assert_eq!(connection_window, Some(BUDGET), "the connection window");
}

/// Two uploads to handlers that never read (`/wait`) fill the budget
/// exactly; the last of their frames comes in two reads: first its header
/// and all but [`TAIL`] bytes, behind a `GET /` whose answer says the
/// server has read up to it, then the rest. The connection is counted
/// once the rest is in.
#[tokio::test]
async fn the_budget_is_counted_when_its_last_frame_comes_in_two_reads() {
    let server = common::TestServer::start(
        megaconn::Server::builder()
            .workers(1)
            .http2_max_unread_body_bytes(BUDGET)
            // The handlers never answer: the shutdown cuts them at once.
            .shutdown_timeout(Duration::from_millis(100)),
    )
    .await;
    let mut raw = RawH2::connect(server.addr, &[]).await;
    windows_given(&mut raw).await;
    let payload = vec![b'u'; FRAME];
    let mut first = Vec::new();
    for stream in [1, 3] {
        first.extend(frame(HEADERS, END_HEADERS, stream, &POST_WAIT));
        let frames = STREAM_WINDOW / FRAME - usize::from(stream == 3);
        for _ in 0..frames {
            first.extend(frame(DATA, 0, stream, &payload));
        }
    }
    first.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 5, &GET_ROOT));
    let last = frame(DATA, 0, 3, &payload);
    let (head_and_most, tail) = last.split_at(last.len() - TAIL);
    first.extend_from_slice(head_and_most);
    raw.send(&first).await;
    // The answer to `GET /`: the server read what came before it, and
    // (the same write) the last frame's head and most of it.
    loop {
        let f = raw.next_frame().await.expect("the answer to GET /");
        if f.kind == HEADERS && f.stream == 5 {
            break;
        }
    }
    assert_eq!(
        common::limit_hits(&server.handle.stats(), "http2_max_unread_body_bytes"),
        0,
        "counted before the budget's last bytes came"
    );
    raw.send(tail).await;
    server
        .wait_stats("the budget reached, counted", |s| {
            common::limit_hits(s, "http2_max_unread_body_bytes") == 1
        })
        .await;
    drop(raw);
    server.stop().await;
}
