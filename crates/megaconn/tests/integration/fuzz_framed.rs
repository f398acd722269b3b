//! The framed TCP corpus (`tests/corpus/framed/`) replayed through the real
//! server over sockets. The property tests of the codecs themselves, with
//! generated streams, are the library's `proto::fuzz_framed`.
//!
//! A file's name starts with its framing: `len4` (4-byte big-endian header,
//! frames up to 64 bytes), `len2le` (2-byte little-endian header that counts
//! itself, up to 64), `len1` (1-byte header), `len8nolimit` (8-byte header,
//! no limit: `max_frame_bytes(usize::MAX)`), `lines16` (lines up to 16
//! bytes), `lines16crlf` (the same, replies ending in `\r\n`). The server
//! echoes every frame; the client sends the file, half-closes and reads to
//! the end. The answer is the bytes the client read and the reason the
//! handler was told the connection closed: a framing error's documented
//! reason (`FrameTooLarge`, `LineTooLong`, `NotUtf8`, `BadHeader`), or the
//! peer's close. Property: the same bytes written in pieces (cut at up to 16
//! points, one cut per run, and one byte per write) give the exact answer.

use crate::common::SAFETY;
use crate::fuzz_ws::{corpus, cut_runs, send_in_cuts};

use std::net::SocketAddr;

use bytes::Bytes;
use megaconn::{CloseReason, FramedHandler, Framing, Server, ServerHandle, Session};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Echoes every frame; reports each close's reason.
struct Echo(mpsc::UnboundedSender<CloseReason>);

impl FramedHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }

    fn on_close(&self, _: (), reason: CloseReason) {
        let _ = self.0.send(reason);
    }
}

struct Listener {
    addr: SocketAddr,
    handle: ServerHandle,
    closes: mpsc::UnboundedReceiver<CloseReason>,
}

fn framing(prefix: &str) -> Framing {
    match prefix {
        "len4" => Framing::length_prefixed(4).max_frame_bytes(64),
        "len2le" => Framing::length_prefixed(2)
            .little_endian()
            .length_adjustment(-2)
            .max_frame_bytes(64),
        "len1" => Framing::length_prefixed(1),
        "len8nolimit" => Framing::length_prefixed(8).max_frame_bytes(usize::MAX),
        "lines16" => Framing::lines().max_line_bytes(16),
        "lines16crlf" => Framing::lines().max_line_bytes(16).crlf(),
        other => panic!("no framing for corpus prefix {other:?}"),
    }
}

async fn start(framing: Framing) -> Listener {
    let server = Server::builder()
        .workers(1)
        .listen_framed_on("127.0.0.1:0".parse().unwrap(), framing)
        .listen()
        .expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let (tx, closes) = mpsc::unbounded_channel();
    tokio::spawn(server.serve_framed(Echo(tx)));
    Listener {
        addr,
        handle,
        closes,
    }
}

/// Sends `bytes` cut at `cuts`, half-closes, reads to the end; returns what
/// was read and the close reason the handler was given.
async fn exchange(server: &mut Listener, bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, CloseReason) {
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let got = send_in_cuts(&mut s, bytes, cuts, SAFETY)
        .await
        .expect("the server hung");
    let reason = tokio::time::timeout(SAFETY, server.closes.recv())
        .await
        .expect("on_close in time")
        .expect("handler gone");
    (got, reason)
}

#[tokio::test]
async fn corpus_replays_split_invariant_with_the_documented_close() {
    let files = corpus("tests/corpus/framed");
    assert!(files.len() >= 15, "the corpus has {} inputs", files.len());
    let mut servers: Vec<(String, Listener)> = Vec::new();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let prefix = name.split('-').next().unwrap().to_owned();
        let at = match servers.iter().position(|(p, _)| *p == prefix) {
            Some(at) => at,
            None => {
                servers.push((prefix.clone(), start(framing(&prefix)).await));
                servers.len() - 1
            }
        };
        let server = &mut servers[at].1;
        let bytes = std::fs::read(path).unwrap();
        let whole = exchange(server, &bytes, &[]).await;
        for cuts in cut_runs(bytes.len()) {
            let split = exchange(server, &bytes, &cuts).await;
            if split != whole {
                failures.push(format!(
                    "{name}: cut at {cuts:?}\n  whole: {whole:?}\n  cut:   {split:?}"
                ));
                break;
            }
        }
        if std::env::var_os("FUZZ_FRAMED_VERBOSE").is_some() {
            eprintln!("{name}: {whole:?}");
        }
    }
    for (_, server) in servers {
        server.handle.shutdown();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
