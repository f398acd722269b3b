//! WebSocket (`ws://`) for `hold` and `load`.
//!
//! * `hold ws://HOST:PORT/PATH`: each held connection upgrades with one
//!   pre-rendered request, then heartbeats with a masked ping (the reply is
//!   the pong) or, with `--ws-heartbeat text`, a masked text frame of the
//!   `--send` text (the reply is any data frame, containing `--expect` if
//!   given). Frames are written from pre-rendered bytes and read from the
//!   hold thread's shared buffer; between heartbeats the connection waits in
//!   the thread's parking lot (`hold_lot`, `hold_wire`), so a held WebSocket
//!   costs the client no more than a held line connection: no task, no
//!   timer, many thousands per process. Server pings are answered.
//! * `load ws://…`: message round trips per second with latency percentiles
//!   (each connection sends a text message and waits for the echo, closed
//!   loop), or with `--receive`, counts the messages the server pushes and,
//!   for those that carry their send time, the delivery latency. The client
//!   is tokio-tungstenite (RFC 6455 in full: fragments, UTF-8, close).
//!
//! A pushed message carries its send time when its text starts with the
//! Unix time in microseconds, as decimal digits followed by a space or the
//! end: `1764489600123456 hello`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{parse_body, parse_target, Target};
use crate::error::LoadError;
use crate::histogram::{merge, new_histogram, record_ns, Percentiles};
use crate::load::LoadArgs;
use crate::progress::{Progress, TICK};
use crate::report::{write_json, ErrorCounts, ErrorKind, LoadReport};
use crate::sys::{self, InterruptGuard};
use crate::tcp_frames::TooLarge;

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// The client's masking key. Masking exists to stop cache poisoning by
/// browser scripts; a load generator may use a fixed key (the server must
/// unmask all the same), which lets frames be rendered once.
const MASK: [u8; 4] = [0x6d, 0x63, 0x6f, 0x6e];

/// A fixed `Sec-WebSocket-Key` (16 bytes, base64) and the accept value a
/// server must answer with (RFC 6455 §4.2.2), computed once and checked
/// against tungstenite's derivation in the tests below.
const KEY: &str = "bWVnYWNvbm4taG9sZC1rZQ==";
const ACCEPT: &str = "RTRF/Z4FHwkhbWUeQ4gpUE25L4A=";

/// What a held connection heartbeats with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WsHeartbeat {
    /// A ping; the pong answers it.
    #[default]
    Ping,
    /// A text frame of the `--send` text; any data frame answers it.
    Text,
}

/// What `hold ws://` connections share: the upgrade request and what
/// answers a heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct WsHold {
    /// The rendered upgrade request.
    pub upgrade: Vec<u8>,
    /// The frame that answers a heartbeat: a pong, or any data frame.
    pub beat: WsHeartbeat,
}

impl WsHold {
    /// The upgrade to `target` and the heartbeat frame.
    pub(crate) fn new(target: &Target, beat: WsHeartbeat, text: &[u8]) -> (WsHold, Vec<u8>) {
        let upgrade = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.host
        )
        .into_bytes();
        let frame = match beat {
            WsHeartbeat::Ping => client_frame(PING, b"hb"),
            WsHeartbeat::Text => client_frame(TEXT, text),
        };
        (WsHold { upgrade, beat }, frame)
    }
}

/// A masked client frame with `payload` (FIN set).
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// Longest server frame a held connection takes (a push, say); a longer
/// one fails the connection rather than growing its buffer without bound.
const MAX_HELD_FRAME: u64 = 1 << 20;

/// A server frame: its opcode, its payload and the frame's length.
pub(crate) type ServerFrame<'d> = (u8, &'d [u8], usize);

/// One whole frame at the start of `data`; `None` while it is incomplete.
pub(crate) fn split(data: &[u8]) -> Result<Option<ServerFrame<'_>>, TooLarge> {
    let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
        return Ok(None);
    };
    let (len, mut at): (u64, usize) = match b1 & 0x7f {
        126 => match data.get(2..4) {
            Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
            None => return Ok(None),
        },
        127 => match data.get(2..10) {
            Some(l) => (u64::from_be_bytes(l.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_HELD_FRAME {
        return Err(TooLarge);
    }
    if b1 & 0x80 != 0 {
        at += 4; // a masked server frame is a protocol error; skip its key
    }
    let end = at + len as usize;
    Ok(data.get(at..end).map(|payload| (b0 & 0x0f, payload, end)))
}

/// The verdict on the reply to the upgrade request ([`upgrade_reply`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// The head is not whole yet: read on.
    Incomplete,
    /// `101` with the right `Sec-WebSocket-Accept`, its head `head` bytes
    /// long: what follows it in the same read is the server's first frames
    /// (a welcome message, a ping, a close), for the frame decoder.
    Switched {
        /// The head's length, its blank line included.
        head: usize,
    },
    /// Anything else (or a head over 16 KiB).
    Refused,
}

/// The verdict on the reply to the upgrade request: `101` with the right
/// `Sec-WebSocket-Accept`, and where its head ends.
pub(crate) fn upgrade_reply(data: &[u8]) -> Upgrade {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if data.len() > 16 * 1024 {
            Upgrade::Refused
        } else {
            Upgrade::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    let switched = head.starts_with("http/1.1 101") && head.contains(&ACCEPT.to_ascii_lowercase());
    if switched {
        Upgrade::Switched { head: end + 4 }
    } else {
        Upgrade::Refused
    }
}

/// Microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send time a pushed text carries (see the module docs).
fn stamp(text: &str) -> Option<u64> {
    let token = text.split(' ').next()?;
    // 1e15 µs is 2001: a smaller number is not a timestamp.
    token
        .parse::<u64>()
        .ok()
        .filter(|&t| t >= 1_000_000_000_000_000)
}

/// The counters of a `load ws://` run, read by the progress display.
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    errors: AtomicU64,
    connected: AtomicU64,
    bytes: AtomicU64,
}

/// What one connection task records.
struct ThreadStats {
    hist: Histogram<u64>,
    errors: ErrorCounts,
}

/// Runs `megaconn load ws://…` (called by `run_load` for a `ws://` URL).
pub(crate) fn run_load(args: &LoadArgs) -> Result<LoadReport, LoadError> {
    let Some(duration) = args.duration else {
        return Err(LoadError::invalid(
            "--duration",
            "",
            "load ws:// runs for a time: give -d, e.g. -d 10s",
        ));
    };
    if args.connections == 0 {
        return Err(LoadError::invalid(
            "--connections",
            "0",
            "need at least one connection",
        ));
    }
    let target = parse_target(&args.url)?;
    std::net::TcpStream::connect_timeout(&target.addr, args.timeout).map_err(|cause| {
        LoadError::Unreachable {
            addr: target.addr,
            cause,
        }
    })?;
    let payload = match &args.body {
        Some(b) => String::from_utf8(parse_body(b)?)
            .map_err(|_| LoadError::invalid("--body", b, "ws:// messages are text: use UTF-8"))?,
        None => "hello".to_owned(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).clamp(1, args.connections);
    let start = Instant::now();
    let deadline = start + duration;
    let counters = Arc::new(Counters::default());
    let cpu0 = sys::cpu_secs();
    let guard = InterruptGuard::install();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for t in 0..threads {
        let conns: Vec<usize> = (t..args.connections).step_by(threads).collect();
        let (url, payload, counters) = (args.url.clone(), payload.clone(), Arc::clone(&counters));
        let (receive, timeout, stop) = (args.receive, args.timeout, stop_rx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("load-ws-{t}"))
            .spawn(move || {
                run_thread(
                    conns.len(),
                    &url,
                    &payload,
                    receive,
                    timeout,
                    deadline,
                    &counters,
                    stop,
                )
            })
            .map_err(|e| LoadError::io("cannot start a load thread", e))?;
        handles.push(handle);
    }
    let mut progress = Progress::new(duration.as_millis() as u64, "ms", args.quiet);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(TICK);
        if guard.interrupted() && !*stop_tx.borrow() {
            let _ = stop_tx.send(true);
        }
        let at = start.elapsed().as_millis() as u64;
        progress.update(at.min(duration.as_millis() as u64), || {
            format!(
                "{} connected, {} messages, {} errors",
                counters.connected.load(Relaxed),
                counters.messages.load(Relaxed),
                counters.errors.load(Relaxed)
            )
        });
    }
    progress.finish();
    drop(guard);
    let mut hist = new_histogram();
    let mut errors = ErrorCounts::default();
    for h in handles {
        let stats = h.join().map_err(|_| {
            LoadError::io("a load thread panicked", std::io::Error::other("panic"))
        })??;
        merge(&mut hist, &stats.hist);
        errors.merge(&stats.errors);
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let cpu = (sys::cpu_secs() - cpu0).max(0.0);
    let messages = counters.messages.load(Relaxed);
    let bytes = counters.bytes.load(Relaxed);
    let connects = counters.connected.load(Relaxed);
    let report = LoadReport {
        url: args.url.clone(),
        connections: args.connections,
        threads,
        pipeline: 1,
        protocol: if args.receive {
            "websocket-receive"
        } else {
            "websocket"
        }
        .into(),
        streams: None,
        new_connection_per_request: false,
        connections_opened: connects,
        connections_per_sec: connects as f64 / elapsed,
        tls: None,
        requests: messages,
        retried: 0,
        errors_total: errors.total(),
        errors,
        duration_secs: elapsed,
        rps: messages as f64 / elapsed,
        bytes_read: bytes,
        bytes_per_sec: bytes as f64 / elapsed,
        client_cpu_secs: cpu,
        requests_per_client_cpu_sec: if cpu > 0.0 {
            messages as f64 / cpu
        } else {
            0.0
        },
        latency_us: Percentiles::of(&hist),
        target_rate: None,
        achieved_rate: messages as f64 / elapsed,
        rate_shortfall_pct: None,
        behind_requests: None,
        send_lag_mean_us: None,
        send_lag_max_us: None,
    };
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

/// One thread: a current-thread runtime running `count` connections.
#[allow(clippy::too_many_arguments)]
fn run_thread(
    count: usize,
    url: &str,
    payload: &str,
    receive: bool,
    timeout: Duration,
    deadline: Instant,
    counters: &Counters,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ThreadStats, LoadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::io("cannot build a tokio runtime", e))?;
    let stats = RefCell::new(ThreadStats {
        hist: new_histogram(),
        errors: ErrorCounts::default(),
    });
    let until = tokio::time::Instant::from_std(deadline);
    rt.block_on(async {
        let conns = futures_util::future::join_all((0..count).map(|_| {
            let one = one_connection(url, payload, receive, timeout, counters, &stats);
            async move {
                let _ = tokio::time::timeout_at(until, one).await;
            }
        }));
        tokio::select! {
            _ = conns => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    });
    Ok(stats.into_inner())
}

/// One connection: round trips, or receiving, until cut off by the caller.
async fn one_connection(
    url: &str,
    payload: &str,
    receive: bool,
    timeout: Duration,
    counters: &Counters,
    stats: &RefCell<ThreadStats>,
) {
    let fail = |kind: ErrorKind| {
        counters.errors.fetch_add(1, Relaxed);
        stats.borrow_mut().errors.add(kind);
    };
    // Small buffers: a load run may open thousands of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut socket = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => {
            return fail(ErrorKind::of_connect(&e))
        }
        Ok(Err(_)) => return fail(ErrorKind::BadResponse),
        Err(_) => return fail(ErrorKind::ConnectTimeout),
    };
    counters.connected.fetch_add(1, Relaxed);
    let text = Rc::<str>::from(payload);
    loop {
        let sent = Instant::now();
        if !receive && socket.send(Message::text(&*text)).await.is_err() {
            return fail(ErrorKind::Reset);
        }
        // The echo (or the next pushed message); pings and pongs are not.
        let message = loop {
            let next = if receive {
                socket.next().await
            } else {
                match tokio::time::timeout(timeout, socket.next()).await {
                    Ok(next) => next,
                    Err(_) => return fail(ErrorKind::ReadTimeout),
                }
            };
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return fail(ErrorKind::Closed),
                Some(Ok(m)) => break m,
                Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => {
                    return fail(ErrorKind::of_io(&e))
                }
                Some(Err(_)) => return fail(ErrorKind::BadResponse),
            }
        };
        counters.messages.fetch_add(1, Relaxed);
        counters.bytes.fetch_add(message.len() as u64, Relaxed);
        let latency_ns = if receive {
            match message.to_text().ok().and_then(stamp) {
                Some(at) => unix_micros().saturating_sub(at) * 1000,
                None => continue,
            }
        } else {
            sent.elapsed().as_nanos() as u64
        };
        record_ns(&mut stats.borrow_mut().hist, latency_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_matches_the_key() {
        // RFC 6455 §4.2.2: base64(SHA-1(key + GUID)), computed by tungstenite.
        assert_eq!(
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes()),
            ACCEPT
        );
    }

    #[test]
    fn frames_round_trip() {
        let ping = client_frame(PING, b"hb");
        assert_eq!(ping[..2], [0x89, 0x82]);
        let (opcode, payload, len) = split(&ping).unwrap().unwrap();
        assert_eq!((opcode, payload.len(), len), (PING, 2, 8));
        let big = client_frame(TEXT, &[b'x'; 300]);
        assert_eq!(big[1], 0x80 | 126);
        assert_eq!(split(&big[..big.len() - 1]), Ok(None));
        // Every prefix of a frame is incomplete, whatever its length field.
        let long = [&[0x82, 127][..], &70_000u64.to_be_bytes(), &[0; 70_000]].concat();
        for cut in [0, 1, 2, 9, 10, long.len() - 1] {
            assert_eq!(split(&long[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(split(&long).unwrap().unwrap().2, long.len());
        // Server frames are unmasked; one claiming more than a held
        // connection takes is refused before it is buffered.
        assert_eq!(split(&[0x8a, 0, 0x81]), Ok(Some((PONG, &[][..], 2))));
        let huge = [&[0x82, 127][..], &(1u64 << 40).to_be_bytes()].concat();
        assert_eq!(split(&huge), Err(TooLarge));
    }

    #[test]
    fn upgrade_replies() {
        let ok =
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n");
        let head = ok.len();
        assert_eq!(upgrade_reply(ok.as_bytes()), Upgrade::Switched { head });
        // Frames read with the head are after it, not part of it.
        let ahead = [ok.as_bytes(), &[0x88, 2, 0x03, 0xe9]].concat();
        assert_eq!(upgrade_reply(&ahead), Upgrade::Switched { head });
        assert_eq!(upgrade_reply(b"HTTP/1.1 101 S"), Upgrade::Incomplete);
        assert_eq!(upgrade_reply(b"HTTP/1.1 426 No\r\n\r\n"), Upgrade::Refused);
    }

    #[test]
    fn stamps() {
        assert_eq!(stamp("1764489600123456 hi"), Some(1_764_489_600_123_456));
        assert_eq!(stamp("1764489600123456"), Some(1_764_489_600_123_456));
        assert_eq!(stamp("42 hi"), None);
        assert_eq!(stamp("hello"), None);
    }
}
