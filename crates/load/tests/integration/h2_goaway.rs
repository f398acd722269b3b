//! `load --http2` across a server's graceful close (GOAWAY with NO_ERROR,
//! RFC 9113 §6.8), as `serve --upgrade` drains: the client reconnects without
//! counting an error or spending the budget, retries the streams the GOAWAY
//! refused (not processed), and every request is answered exactly once.
//!
//! Three servers on 127.0.0.1: a hand-written one that writes the frames
//! itself, so that which streams are refused does not depend on timing (and,
//! refusing everything, shows that such a server is still counted); an
//! `h2::server` that calls `graceful_shutdown()` after a few answers; and
//! megaconn itself with `max_connection_age`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use megaconn_load::{run_load, LoadReport};

use crate::common::serve_on_thread;
use crate::tls_h2::{args, start_with};

/// Frame types and flags used by the hand-written server (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM_AND_HEADERS: u8 = 0x5;
/// HPACK: `:status: 200` is entry 8 of the static table.
const STATUS_200: [u8; 1] = [0x88];

fn write_frame(w: &mut TcpStream, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    w.write_all(&f).unwrap();
}

/// Reads one frame: (type, flags, stream id), or `None` at EOF or error.
fn read_frame(r: &mut TcpStream) -> Option<(u8, u8, u32)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).ok()?;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], id))
}

/// A server that, on each connection, waits for the streams the client opens
/// (`--streams 4`, or fewer when fewer requests remain of `total`), then
/// sends GOAWAY(NO_ERROR) keeping only the first `keep` of four, answers
/// those and closes. With four streams in flight, `4 - keep` are refused
/// every time: which ones is fixed by the frames, not by timing. With `keep`
/// 0 it refuses everything as soon as one stream arrives. Returns the address
/// and the count of answered requests.
fn refusing_server(total: u64, keep: usize) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&answered);
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            let remaining = total.saturating_sub(count.load(SeqCst)).min(4) as usize;
            let (wait_for, kept) = match (keep, remaining) {
                (0, _) => (1, 0),
                (_, 4) => (4, keep),
                (_, n) => (n, n),
            };
            if let Some(kept) = refuse(&mut sock, wait_for, kept) {
                count.fetch_add(kept, SeqCst);
            }
        }
    });
    (addr, answered)
}

/// One connection of [`refusing_server`]: reads `wait_for` requests, keeps
/// and answers the first `kept`; `None` if the client went away first.
fn refuse(sock: &mut TcpStream, wait_for: usize, kept: usize) -> Option<u64> {
    let mut preface = [0u8; 24];
    sock.read_exact(&mut preface).ok()?;
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    write_frame(sock, SETTINGS, 0, 0, &[]);
    let mut ids = Vec::new();
    while ids.len() < wait_for {
        match read_frame(sock)? {
            (SETTINGS, flags, 0) if flags & ACK == 0 => write_frame(sock, SETTINGS, ACK, 0, &[]),
            (HEADERS, _, id) => ids.push(id),
            _ => {}
        }
    }
    let last = if kept == 0 { 0 } else { ids[kept - 1] };
    let mut goaway = last.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
    write_frame(sock, GOAWAY, 0, 0, &goaway);
    for &id in &ids[..kept] {
        write_frame(sock, HEADERS, END_STREAM_AND_HEADERS, id, &STATUS_200);
    }
    // Half-close, then read until the client closes: closing with its
    // frames unread would reset the connection under the answers.
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(sock, &mut std::io::sink());
    Some(kept as u64)
}

/// Runs `load --http2` against `url` with four streams a connection and a
/// 5 s timeout, as every run here: `run` says how many requests (`-n`) or
/// how long (`-d`), on how many connections (`-c`), and any more flags.
fn load_h2(url: &str, run: &[&str]) -> LoadReport {
    let flags = [&["--http2", "--streams", "4", "-t", "5"][..], run].concat();
    run_load(args(url, &flags)).unwrap()
}

/// Ten requests over one connection slot with four streams, through a
/// [`refusing_server`] answering two a connection (`extra`: more flags).
/// Five connections, eight refused streams (two on each of the first four)
/// sent again; every request answered once, none an error.
fn ten_through_two_a_connection(extra: &[&str]) -> LoadReport {
    let (addr, answered) = refusing_server(10, 2);
    let run = [&["-n", "10", "-c", "1"][..], extra].concat();
    let r = load_h2(&format!("http://{addr}/"), &run);
    assert_eq!((r.requests, r.errors_total), (10, 0), "{:?}", r.errors);
    assert_eq!(answered.load(SeqCst), 10);
    assert_eq!(r.connections_opened, 5);
    // The report says so, and a request sent twice counts as sent once.
    assert_eq!(r.retried, 8);
    let sent = (r.achieved_rate * r.duration_secs).round() as u64;
    assert_eq!(sent, 10, "each retry counted as sent once");
    r
}

#[test]
fn h2_streams_refused_by_a_graceful_goaway_are_retried_not_errors() {
    let r = ten_through_two_a_connection(&[]);
    assert!(r.to_text().contains("retried      8 refused unprocessed"));
}

#[test]
fn h2_in_open_loop_a_refused_stream_keeps_its_place_in_the_schedule() {
    // The server waits for four streams before its GOAWAY, so each
    // connection again has two refused. They go first on the next
    // connection, with their first send's latency start, and use up no
    // later request's slot: none left behind.
    let r = ten_through_two_a_connection(&["--rate", "2000"]);
    assert_eq!(r.behind_requests, Some(0));
}

#[test]
fn h2_a_server_refusing_every_stream_gracefully_is_counted_and_ends_the_run() {
    // Not hidden, and no endless reconnecting (`-n` alone has no deadline):
    // each connection that answered nothing spends one request as `closed`.
    let (addr, answered) = refusing_server(u64::MAX, 0);
    let r = load_h2(&format!("http://{addr}/"), &["-n", "3", "-c", "1"]);
    assert_eq!((r.requests, r.errors_total), (0, 3), "{:?}", r.errors);
    assert_eq!(r.errors.closed, 3);
    assert_eq!(answered.load(SeqCst), 0);
    assert_eq!(r.connections_opened, 3);
}

/// An `h2::server` that answers `per_conn` requests on each connection, then
/// calls `graceful_shutdown()` (GOAWAY(2^31-1), PING, GOAWAY(last id)) and
/// answers whatever it accepted meanwhile. Returns the address and the count
/// of answered requests.
fn draining_server(per_conn: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&answered);
    serve_on_thread(listener, move |sock, _| {
        let count = Arc::clone(&count);
        async move {
            let Ok(mut conn) = h2::server::handshake(sock).await else {
                return;
            };
            let mut here = 0;
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                let _ = respond.send_response(http::Response::new(()), true);
                count.fetch_add(1, SeqCst);
                here += 1;
                if here == per_conn {
                    conn.graceful_shutdown();
                }
            }
        }
    });
    (addr, answered)
}

#[test]
fn h2_graceful_shutdown_reconnects_without_errors() {
    let (addr, answered) = draining_server(5);
    let r = load_h2(&format!("http://{addr}/"), &["-n", "40", "-c", "2"]);
    assert_eq!((r.requests, r.errors_total), (40, 0), "{:?}", r.errors);
    assert_eq!(answered.load(SeqCst), 40);
    // Each connection is closed after a few answers: 40 requests on two
    // clients cannot all fit on the first two connections.
    assert!(r.connections_opened > 2, "{}", r.connections_opened);
}

#[test]
fn h2_across_megaconns_connection_age_goaways_counts_no_error() {
    // megaconn's own graceful close: `max_connection_age` sends GOAWAY to
    // each connection once it is 0.9-1 s old, so a 3 s run meets several
    // (as an upgrade's drain does). However many, none is an error.
    let server = start_with(None, |b| {
        b.max_connection_age(Some(std::time::Duration::from_secs(1)))
    });
    let r = load_h2(&server.url(), &["-d", "3s", "-c", "2"]);
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert!(r.requests > 0);
    // The server also answered what was in flight at the deadline.
    assert!(server.http2() >= r.requests);
    // The two clients were told to go at least once each.
    assert!(r.connections_opened >= 4, "{}", r.connections_opened);
}
