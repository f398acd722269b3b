//! The WebSocket corpus (`tests/corpus/ws/`) replayed through the real
//! server over sockets, with tungstenite's server (tokio-tungstenite) as the
//! differential oracle. The property tests of the frame decoder itself, with
//! generated streams, are the library's `proto::fuzz_ws` (the decoder is
//! crate-private); they replay this corpus too, at every byte boundary.
//!
//! Each corpus file is what a client sends after its handshake (a file whose
//! name starts with `deflate-` after agreeing to permessage-deflate). Both
//! servers echo every message, under the same limits (frames of 1000
//! bytes, messages of 2500). The client sends the bytes, half-closes and
//! reads to the end: the server's frames (echoes, pongs, its close code) are
//! the answer. Properties:
//!
//! 1. The same bytes written in pieces (cut at up to 16 points, one cut per
//!    run, and one byte per write) give megaconn's exact answer.
//! 2. megaconn is never looser than tungstenite: the messages it echoes are a
//!    prefix of those tungstenite echoes. (Not for `deflate-` files:
//!    tungstenite has no permessage-deflate.)

use crate::common::msg::{read_head, tcp_to, ws_upgrade};
use crate::common::SAFETY;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use megaconn::{Server, ServerHandle, WebSocketHandler, WebSocketRoute, WsMessage, WsSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const MAX_FRAME: usize = 1000;
const MAX_MESSAGE: usize = 2500;

/// Echoes every message.
struct Echo;

impl WebSocketHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), message: WsMessage, _: &WsSession) -> Option<WsMessage> {
        Some(message)
    }
}

struct Servers {
    megaconn: SocketAddr,
    tungstenite: SocketAddr,
    handle: ServerHandle,
}

async fn start() -> Servers {
    let server = Server::builder()
        .workers(1)
        .listen_on("127.0.0.1:0".parse().unwrap())
        .listen()
        .expect("server binds");
    let megaconn = server.local_addr();
    let handle = server.handle();
    let route = || {
        WebSocketRoute::new(Echo)
            .max_frame_bytes(MAX_FRAME)
            .max_message_bytes(MAX_MESSAGE)
            .ping_interval(None)
    };
    let app = axum::Router::new()
        .route_service("/ws", route())
        .route_service("/deflate", route().permessage_deflate(true));
    tokio::spawn(server.serve(app));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tungstenite = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(tungstenite_echo(stream));
        }
    });
    Servers {
        megaconn,
        tungstenite,
        handle,
    }
}

/// tungstenite's server: echoes data messages; on an error, reads the rest
/// of the peer's bytes away before closing (so the echoes are not lost to a
/// reset).
async fn tungstenite_echo(stream: TcpStream) {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME))
        .max_message_size(Some(MAX_MESSAGE));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(_) | Message::Binary(_) = message {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    }
    let mut rest = [0u8; 4096];
    while let Ok(n) = ws.get_mut().read(&mut rest).await {
        if n == 0 {
            break;
        }
    }
}

/// One server frame as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    /// Bytes that are not a whole server frame.
    Garbled,
}

/// Handshakes, sends `bytes` cut at `cuts`, half-closes, reads to the end.
async fn exchange(addr: SocketAddr, deflate: bool, bytes: &[u8], cuts: &[usize]) -> Vec<Answer> {
    let handshake = if deflate {
        ws_upgrade(
            "/deflate",
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
        )
    } else {
        ws_upgrade("/ws", "")
    };
    let mut s = tcp_to(addr, None).await;
    s.write_all(&handshake).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    let got = send_in_cuts(&mut s, bytes, cuts, SAFETY)
        .await
        .unwrap_or_else(|| panic!("server at {addr} hung"));
    parse(&got)
}

fn parse(mut buf: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Some((first, payload, used)) = server_frame(buf) else {
            out.push(Answer::Garbled);
            break;
        };
        buf = &buf[used..];
        let payload = if first & 0x40 != 0 {
            inflate(payload)
        } else {
            payload.to_vec()
        };
        out.push(match first & 0x0f {
            0x1 => Answer::Text(payload),
            0x2 => Answer::Binary(payload),
            0xA => Answer::Pong(payload),
            0x8 => Answer::Close(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
            _ => Answer::Garbled,
        });
    }
    out
}

/// One unmasked server frame: (first byte, payload, bytes used).
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (first, second) = (*buf.first()?, *buf.get(1)?);
    let (len, at) = match second & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    Some((first, buf.get(at..at + len)?, at + len))
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut decompress = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(64 * 1024);
    let input = [data, &[0, 0, 0xff, 0xff][..]].concat();
    decompress
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("the server's deflate data");
    out
}

fn messages(answers: &[Answer]) -> Vec<&Answer> {
    answers
        .iter()
        .filter(|a| matches!(a, Answer::Text(_) | Answer::Binary(_)))
        .collect()
}

pub(crate) fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Writes `bytes` to `s` in pieces cut at `cuts` (a millisecond apart,
/// so that the server reads each piece on its own; a cut not past the one
/// before, or at the end, is skipped), half-closes, and meanwhile reads
/// until the server closes (or resets): what it read, `None` if that took
/// longer than `within`. A write the server refused (it closed) ends the
/// writes, not the read. The exchange of every fuzz test here
/// (`fuzz_ws.rs`, `fuzz_framed.rs`, `fuzz_http1.rs`).
pub(crate) async fn send_in_cuts(
    s: &mut TcpStream,
    bytes: &[u8],
    cuts: &[usize],
    within: Duration,
) -> Option<Vec<u8>> {
    let (mut rd, mut wr) = s.split();
    let write = async {
        let mut last = 0;
        for &at in cuts {
            if at <= last || at >= bytes.len() {
                continue;
            }
            if wr.write_all(&bytes[last..at]).await.is_err() {
                return;
            }
            last = at;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if wr.write_all(&bytes[last..]).await.is_ok() {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        // Read by hand, not `read_to_end`: what came before a reset is
        // kept, and the reset ends the read as a close does.
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        got
    };
    let both = async { tokio::join!(write, read) };
    tokio::time::timeout(within, both)
        .await
        .ok()
        .map(|(_, got)| got)
}

/// Up to 16 cut points spread over `len` bytes, one run each, and one byte
/// per write (inputs up to 512 bytes: a write costs a millisecond).
pub(crate) fn cut_runs(len: usize) -> Vec<Vec<usize>> {
    let step = len.div_ceil(16).max(1);
    let mut runs: Vec<Vec<usize>> = (1..len).step_by(step).map(|at| vec![at]).collect();
    if len <= 512 {
        runs.push((1..len).collect());
    }
    runs
}

#[tokio::test]
async fn corpus_replays_split_invariant_and_never_looser_than_tungstenite() {
    let servers = start().await;
    let files = corpus("tests/corpus/ws");
    assert!(files.len() >= 30, "the corpus has {} inputs", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let deflate = name.starts_with("deflate-");
        let bytes = std::fs::read(path).unwrap();
        let ours = exchange(servers.megaconn, deflate, &bytes, &[]).await;
        if std::env::var_os("FUZZ_WS_VERBOSE").is_some() {
            eprintln!("{name}: {ours:?}");
        }
        if !deflate {
            let theirs = exchange(servers.tungstenite, false, &bytes, &[]).await;
            let (ours, theirs) = (messages(&ours), messages(&theirs));
            if ours.len() > theirs.len() || ours[..] != theirs[..ours.len()] {
                failures.push(format!(
                    "{name}: megaconn looser than tungstenite\n  megaconn:    {ours:?}\n  tungstenite: {theirs:?}"
                ));
            }
        }
        for cuts in cut_runs(bytes.len()) {
            let split = exchange(servers.megaconn, deflate, &bytes, &cuts).await;
            if split != ours {
                failures.push(format!(
                    "{name}: cut at {cuts:?}\n  whole: {ours:?}\n  cut:   {split:?}"
                ));
                break;
            }
        }
    }
    servers.handle.shutdown();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
