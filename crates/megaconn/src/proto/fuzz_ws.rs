//! Property tests of the WebSocket frame decoder (`ws/frame.rs`, with
//! permessage-deflate from `ws/deflate.rs`), with tungstenite's own server
//! side as the differential oracle. The socket-level half, an always-replayed
//! corpus through the real server, is `tests/integration/fuzz_ws.rs`.
//!
//! Generated client streams: text and binary messages, whole or in fragments
//! (cut inside UTF-8 characters too), compressed or not, with pings, pongs
//! and a close (code and reason) between and inside them; then, in most
//! cases, mutated frame by frame: reserved bits, reserved opcodes, unmasked
//! frames, control frames over 125 bytes or fragmented, bad UTF-8 in text
//! and close reasons, close codes of every class, a continuation without a
//! start, a new message inside a fragmented one, a frame or message over the
//! limits, and headers announcing up to 2^63 bytes. Properties:
//!
//! 1. Split invariance: the stream read in random pieces, and one byte per
//!    read, gives the same events, the same close code (or none) and the
//!    same leftover as in one read; also (one case in seven) with no limits
//!    at all, where a header announcing 2^63 bytes must only wait.
//! 2. A stream the generator did not mutate decodes to exactly the messages
//!    it was made from (so the generator is not vacuous).
//! 3. Without deflate, megaconn is never looser than tungstenite 0.29
//!    (`WebSocket` in the server role, same limits): what megaconn delivers
//!    before it fails or runs out of bytes is a prefix of what tungstenite
//!    delivers, equal element by element, and a stream megaconn takes whole
//!    is one tungstenite takes whole too. Deliberate differences, allowed
//!    and counted:
//!    - close code 1014 (Bad Gateway): registered in IANA's close code
//!      registry, so a peer (a proxy) may send it and megaconn takes it, as
//!      it takes every registered code but 1004-1006 and 1015
//!      (`frame::peer_may_send`); tungstenite 0.29 predates it and answers
//!      it with a 1002;
//!    - megaconn judges a frame by its header (mask, reserved bits, opcode,
//!      control frame size, limits), tungstenite once the payload is in, so
//!      a stream cut short inside a bad frame is refused only by megaconn
//!      (stricter, never looser).
//!
//! tungstenite has no permessage-deflate, so compressed streams get
//! properties 1 and 2 only. Close codes are compared and counted, not
//! required equal: the two check the rules in a different order.
//!
//! `PROPTEST_CASES` sets the number of cases (default 1000, about a second
//! in a debug build), `PROPTEST_RNG_SEED` the seed (default fixed, as in
//! `fuzz_http1`, so CI runs the same cases every time).
//!
//! What ran and what it found (debug build, 2 busy cores): 240,000 streams
//! (seeds 11-13 and 101-505; a minute or two per 30,000), and 30,000 more
//! with the no-limit cases (the fixed seed, 21, 22), half with
//! deflate, a third unmutated: no split dependence, no valid stream refused,
//! megaconn never looser; of the streams without deflate, half taken alike
//! by both, half refused by both (94 % with the same close code), 0.2 %
//! refused only by megaconn, and the 1014 closes. Seeded bugs are caught: a
//! ping over 125 bytes let through (by the differential), and a UTF-8 check
//! that forgot a character cut between fragments (by the model, at once).

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

use super::ws::deflate::{Codec, Deflate};
use super::ws::frame::{peer_may_send, Decoder, Event, Limits, WsMessage};

const DEFAULT_CASES: u32 = 1000;
/// The seed when `PROPTEST_RNG_SEED` is unset.
const DEFAULT_SEED: u64 = 6455;

/// Small limits, so that generated frames and messages cross them.
/// No limits at all, for split invariance only (tungstenite reserves what a
/// header announces, so it gets no stream under these).
const UNLIMITED: Limits = Limits {
    max_frame_bytes: usize::MAX,
    max_message_bytes: usize::MAX,
};

const LIMITS: Limits = Limits {
    max_frame_bytes: 1000,
    max_message_bytes: 2500,
};

/// An event as both decoders can report it (megaconn keeps no pong payload).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

/// How a decoder left the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// It read a close frame (what follows is not decoded).
    Closed,
    /// No violation: it waits for more (`leftover` bytes unconsumed, and
    /// whether a fragmented message is open).
    Open { leftover: usize, mid_message: bool },
    /// Failed with this close code.
    Failed(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    seen: Vec<Seen>,
    end: End,
}

fn seen(event: Event) -> Seen {
    match event {
        Event::Message(WsMessage::Text(t)) => Seen::Text(t.as_str().to_owned()),
        Event::Message(WsMessage::Binary(b)) => Seen::Binary(b.to_vec()),
        Event::Ping(p) => Seen::Ping(p.to_vec()),
        Event::Pong => Seen::Pong,
        Event::Close(c) => Seen::Close(c.map(|(code, r)| (code, r.as_str().to_owned()))),
    }
}

/// megaconn's decoder over `bytes` delivered in the pieces `cuts` make, the
/// way the connection drives it: decode all that is whole after each read,
/// stop at a violation or a close.
fn megaconn(bytes: &[u8], cuts: &[usize], deflate: bool, limits: Limits) -> Outcome {
    let codec = deflate.then(|| Rc::new(Codec::default()));
    let mut decoder = Decoder::with_deflate(codec);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if end < start {
            continue;
        }
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        loop {
            match decoder.decode(&mut buf, limits) {
                Ok(Some(event)) => {
                    let closed = matches!(event, Event::Close(_));
                    out.push(seen(event));
                    if closed {
                        return Outcome {
                            seen: out,
                            end: End::Closed,
                        };
                    }
                }
                Ok(None) => break,
                Err(violation) => {
                    return Outcome {
                        seen: out,
                        end: End::Failed(violation.code()),
                    }
                }
            }
        }
    }
    Outcome {
        seen: out,
        end: End::Open {
            leftover: buf.len(),
            mid_message: !decoder.between_messages(),
        },
    }
}

/// The client's bytes for tungstenite: each read gives the rest, then
/// `WouldBlock` (more may come), as a non-blocking socket would.
struct Feed {
    bytes: Vec<u8>,
    at: usize,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.bytes.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Feed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's server side over `bytes`, same limits. Its answer to a
/// close code it does not allow is a 1002 close in place of the peer's
/// frame (`do_close`): reported as a failure with 1002.
fn tungstenite(bytes: &[u8]) -> Outcome {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(LIMITS.max_frame_bytes))
        .max_message_size(Some(LIMITS.max_message_bytes));
    let feed = Feed {
        bytes: bytes.to_vec(),
        at: 0,
    };
    let mut ws = WebSocket::from_raw_socket(feed, Role::Server, Some(config));
    let mut out = Vec::new();
    loop {
        let failed = |code| End::Failed(code);
        let end = match ws.read() {
            Ok(Message::Text(t)) => {
                out.push(Seen::Text(t.as_str().to_owned()));
                continue;
            }
            Ok(Message::Binary(b)) => {
                out.push(Seen::Binary(b.to_vec()));
                continue;
            }
            Ok(Message::Ping(p)) => {
                out.push(Seen::Ping(p.to_vec()));
                continue;
            }
            Ok(Message::Pong(_)) => {
                out.push(Seen::Pong);
                continue;
            }
            Ok(Message::Frame(_)) => unreachable!("tungstenite reads no raw frames"),
            Ok(Message::Close(Some(frame)))
                if u16::from(frame.code) == 1002 && frame.reason == "Protocol violation" =>
            {
                failed(1002)
            }
            Ok(Message::Close(frame)) => {
                out.push(Seen::Close(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                ));
                End::Closed
            }
            // (What it holds back is not compared: its buffer is its own.)
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => End::Open {
                leftover: 0,
                mid_message: false,
            },
            Err(tungstenite::Error::Capacity(_)) => failed(1009),
            Err(tungstenite::Error::Utf8(_)) => failed(1007),
            Err(tungstenite::Error::Protocol(_)) => failed(1002),
            Err(e) => panic!("tungstenite failed unexpectedly: {e}"),
        };
        return Outcome { seen: out, end };
    }
}

// ---- generation ----

/// One frame before encoding. `announce` overrides the length in the header
/// (the payload sent stays as it is).
#[derive(Debug, Clone)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
    announce: Option<u64>,
}

impl Frame {
    fn new(fin: bool, opcode: u8, payload: Vec<u8>) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            masked: true,
            payload,
            announce: None,
        }
    }

    fn encode(&self, mask: [u8; 4], out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0xf));
        let bit = if self.masked { 0x80 } else { 0 };
        match self.announce.unwrap_or(self.payload.len() as u64) {
            n @ 0..=125 => out.push(bit | n as u8),
            n @ 126..=0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&mask);
            out.extend(
                self.payload
                    .iter()
                    .zip(mask.iter().cycle())
                    .map(|(b, m)| b ^ m),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
    }
}

/// A piece of the stream as generated: its frames and what it should give.
#[derive(Debug, Clone)]
struct Part {
    frames: Vec<Frame>,
    expect: Vec<Seen>,
    /// False for a close code a peer may not send (the stream is then
    /// refused, and the model does not apply).
    valid: bool,
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z ]{0,40}",
        3 => "[a-zé€😀\u{7ff}\u{10ffff} ]{0,30}",
        1 => "[a-z]{300,1200}",
    ]
}

fn binary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => proptest::collection::vec(any::<u8>(), 100..1100),
    ]
}

/// Cuts `data` at the fractions in `cuts` (sorted, deduplicated; empty
/// fragments allowed, as RFC 6455 allows them).
fn cut(data: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|f| (*f as usize * (data.len() + 1)) >> 16)
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut last = 0;
    for a in at {
        pieces.push(data[last..a].to_vec());
        last = a;
    }
    pieces.push(data[last..].to_vec());
    pieces
}

fn control() -> impl Strategy<Value = Part> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(|p| Part {
            frames: vec![Frame::new(true, 0x9, p.clone())],
            expect: vec![Seen::Ping(p)],
            valid: true,
        }),
        2 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(|p| Part {
            frames: vec![Frame::new(true, 0xA, p)],
            expect: vec![Seen::Pong],
            valid: true,
        }),
    ]
}

/// A data message, whole or fragmented (with controls between fragments),
/// compressed with the worker codec when `deflate`.
fn message(deflate: bool) -> impl Strategy<Value = Part> {
    (
        prop_oneof![1 => text().prop_map(|t| (true, t.into_bytes())), 1 => binary().prop_map(|b| (false, b))],
        prop_oneof![3 => Just(vec![]), 2 => proptest::collection::vec(any::<u16>(), 1..4)],
        proptest::collection::vec(proptest::option::weighted(0.2, control()), 4),
        any::<bool>(),
    )
        .prop_map(move |((is_text, data), cuts, between, compress)| {
            let compress = deflate && compress;
            let wire = if compress {
                let mut out = Vec::new();
                Codec::default().compress(Deflate { window_bits: 15 }, &data, &mut out);
                out
            } else {
                data.clone()
            };
            let pieces = cut(&wire, &cuts);
            // Within the limits, or the model does not apply.
            let valid = data.len() <= LIMITS.max_message_bytes
                && wire.len() <= LIMITS.max_message_bytes
                && pieces.iter().all(|p| p.len() <= LIMITS.max_frame_bytes);
            let last = pieces.len() - 1;
            let mut frames = Vec::new();
            let mut expect = Vec::new();
            for (i, piece) in pieces.into_iter().enumerate() {
                let opcode = match (i, is_text) {
                    (0, true) => 1,
                    (0, false) => 2,
                    _ => 0,
                };
                let mut frame = Frame::new(i == last, opcode, piece);
                if i == 0 && compress {
                    frame.rsv = 4;
                }
                frames.push(frame);
                if i < last {
                    if let Some(Some(c)) = between.get(i) {
                        frames.extend(c.frames.iter().cloned());
                        expect.extend(c.expect.iter().cloned());
                    }
                }
            }
            expect.push(if is_text {
                Seen::Text(String::from_utf8(data).expect("generated text"))
            } else {
                Seen::Binary(data)
            });
            Part { frames, expect, valid }
        })
}

fn close() -> impl Strategy<Value = Part> {
    let code = prop_oneof![
        4 => prop_oneof![
            Just(1000u16), Just(1001), Just(1003), Just(1008), Just(1011), Just(1012), Just(1013),
            Just(3000), Just(4999),
        ],
        2 => prop_oneof![
            Just(0u16), Just(999), Just(1004), Just(1005), Just(1006), Just(1014), Just(1015),
            Just(1016), Just(2999), Just(5000), Just(u16::MAX),
        ],
        1 => any::<u16>(),
    ];
    prop_oneof![
        1 => Just(Part { frames: vec![Frame::new(true, 0x8, vec![])], expect: vec![Seen::Close(None)], valid: true }),
        4 => (code, "[a-z é]{0,20}").prop_map(|(code, reason)| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            Part {
                frames: vec![Frame::new(true, 0x8, payload)],
                expect: vec![Seen::Close(Some((code, reason)))],
                valid: peer_may_send(code),
            }
        }),
    ]
}

/// One change to one frame (picked by a fraction of the count).
#[derive(Debug, Clone)]
enum Mutation {
    Rsv(u16, u8),
    Opcode(u16, u8),
    Unmasked(u16),
    Fin(u16),
    /// A control frame's payload grown past 125 bytes (or any frame's).
    Grow(u16, usize),
    /// A byte of the payload set (bad UTF-8 when 0xff or 0xc3).
    Byte(u16, u16, u8),
    /// The last byte of the payload dropped (cuts a character or a code).
    Truncate(u16),
    Announce(u16, u64),
    Drop(u16),
    Duplicate(u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let f = any::<u16>;
    prop_oneof![
        2 => (f(), 1u8..8).prop_map(|(i, r)| Mutation::Rsv(i, r)),
        2 => (f(), 0u8..16).prop_map(|(i, o)| Mutation::Opcode(i, o)),
        1 => f().prop_map(Mutation::Unmasked),
        1 => f().prop_map(Mutation::Fin),
        1 => (f(), prop_oneof![Just(126usize), Just(200), Just(1001), Just(3000)])
            .prop_map(|(i, n)| Mutation::Grow(i, n)),
        3 => (f(), f(), prop_oneof![Just(0xffu8), Just(0xc3), Just(0x80), Just(0xed), any::<u8>()])
            .prop_map(|(i, at, b)| Mutation::Byte(i, at, b)),
        1 => f().prop_map(Mutation::Truncate),
        1 => (f(), prop_oneof![
            Just(126u64), Just(65_536), Just(1001), Just(1 << 32), Just(1 << 62), Just(u64::MAX >> 1), Just(u64::MAX)
        ]).prop_map(|(i, n)| Mutation::Announce(i, n)),
        1 => f().prop_map(Mutation::Drop),
        1 => f().prop_map(Mutation::Duplicate),
    ]
}

fn apply(frames: &mut Vec<Frame>, m: &Mutation) {
    if frames.is_empty() {
        return;
    }
    let len = frames.len();
    let pick = |f: u16| (f as usize * len) >> 16;
    match *m {
        Mutation::Rsv(i, r) => frames[pick(i)].rsv = r,
        Mutation::Opcode(i, o) => frames[pick(i)].opcode = o,
        Mutation::Unmasked(i) => frames[pick(i)].masked = false,
        Mutation::Fin(i) => {
            let i = pick(i);
            frames[i].fin = !frames[i].fin;
        }
        Mutation::Grow(i, n) => {
            let p = &mut frames[pick(i)].payload;
            p.resize(n.max(p.len()), b'g');
        }
        Mutation::Byte(i, at, b) => {
            let p = &mut frames[pick(i)].payload;
            if !p.is_empty() {
                let at = (at as usize * p.len()) >> 16;
                p[at] = b;
            }
        }
        Mutation::Truncate(i) => {
            frames[pick(i)].payload.pop();
        }
        Mutation::Announce(i, n) => frames[pick(i)].announce = Some(n),
        Mutation::Drop(i) => {
            frames.remove(pick(i));
        }
        Mutation::Duplicate(i) => {
            let i = pick(i);
            let copy = frames[i].clone();
            frames.insert(i, copy);
        }
    }
}

/// A case: the stream's bytes, whether deflate was agreed, the expected
/// events when unmutated, and the cut points of the split run.
#[derive(Debug, Clone)]
struct Case {
    bytes: Vec<u8>,
    deflate: bool,
    /// Decoded under [`UNLIMITED`] rather than [`LIMITS`].
    unlimited: bool,
    expect: Option<Vec<Seen>>,
    cuts: Vec<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    any::<bool>()
        .prop_flat_map(|deflate| {
            let part = prop_oneof![6 => message(deflate), 2 => control()];
            (
                Just(deflate),
                proptest::collection::vec(part, 1..6),
                proptest::option::weighted(0.3, close()),
                prop_oneof![2 => Just(vec![]), 3 => proptest::collection::vec(mutation(), 1..3)],
                any::<[u8; 4]>(),
                prop_oneof![
                    6 => proptest::collection::vec(any::<u16>(), 1..8).prop_map(Some),
                    1 => Just(None),
                ],
                proptest::bool::weighted(0.15),
            )
        })
        .prop_map(
            |(deflate, parts, close, mutations, mask, cuts, unlimited)| {
                let mut frames = Vec::new();
                let mut expect = Vec::new();
                let mut valid = mutations.is_empty();
                for part in parts.into_iter().chain(close) {
                    frames.extend(part.frames);
                    expect.extend(part.expect);
                    valid &= part.valid;
                }
                for m in &mutations {
                    apply(&mut frames, m);
                }
                let mut bytes = Vec::new();
                for frame in &frames {
                    frame.encode(mask, &mut bytes);
                }
                let cuts = read_cuts(cuts.as_deref(), bytes.len());
                Case {
                    bytes,
                    deflate,
                    unlimited,
                    expect: valid.then_some(expect),
                    cuts,
                }
            },
        )
}

/// Where megaconn is looser than tungstenite on purpose: it takes a close
/// with code 1014 (Bad Gateway), which tungstenite answers with a 1002.
fn close_1014(ours: &Outcome, theirs: &Outcome) -> bool {
    matches!(ours.seen.last(), Some(Seen::Close(Some((1014, _)))))
        && theirs.end == End::Failed(1002)
        && theirs.seen[..] == ours.seen[..ours.seen.len() - 1]
}

#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    deflate: AtomicUsize,
    model: AtomicUsize,
    same: AtomicUsize,
    both_failed: AtomicUsize,
    same_code: AtomicUsize,
    stricter: AtomicUsize,
    code_1014: AtomicUsize,
}

fn bump(counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn check(case: &Case, tally: &Tally) -> Result<(), String> {
    bump(&tally.cases);
    let limits = if case.unlimited { UNLIMITED } else { LIMITS };
    let ours = megaconn(&case.bytes, &[], case.deflate, limits);
    // 1. Split invariance.
    for cuts in [
        &case.cuts[..],
        &(1..case.bytes.len()).collect::<Vec<_>>()[..],
    ] {
        let split = megaconn(&case.bytes, cuts, case.deflate, limits);
        if split != ours {
            return Err(format!(
                "split dependence at {cuts:?}\n  whole: {ours:?}\n  split: {split:?}"
            ));
        }
    }
    // 2. The generator's messages, when unmutated.
    if let Some(expect) = &case.expect {
        bump(&tally.model);
        if &ours.seen != expect || matches!(ours.end, End::Failed(_)) {
            return Err(format!(
                "a valid stream decoded wrong\n  want: {expect:?}\n  got:  {ours:?}"
            ));
        }
    }
    if case.deflate || case.unlimited {
        if case.deflate {
            bump(&tally.deflate);
        }
        return Ok(());
    }
    // 3. Never looser than tungstenite.
    let theirs = tungstenite(&case.bytes);
    let prefix =
        ours.seen.len() <= theirs.seen.len() && ours.seen[..] == theirs.seen[..ours.seen.len()];
    let ok = match (&ours.end, &theirs.end) {
        (End::Failed(a), End::Failed(b)) if prefix => {
            if ours.seen.len() == theirs.seen.len() {
                bump(&tally.both_failed);
                if a == b {
                    bump(&tally.same_code);
                }
            } else {
                bump(&tally.stricter);
            }
            true
        }
        (End::Failed(_), _) if prefix => {
            bump(&tally.stricter);
            true
        }
        (End::Open { .. } | End::Closed, End::Open { .. } | End::Closed)
            if ours.seen == theirs.seen =>
        {
            bump(&tally.same);
            true
        }
        (End::Closed, End::Failed(_)) if close_1014(&ours, &theirs) => {
            bump(&tally.code_1014);
            true
        }
        _ => false,
    };
    if !ok {
        return Err(format!(
            "megaconn looser than (or different from) tungstenite\n  megaconn:    {ours:?}\n  tungstenite: {theirs:?}"
        ));
    }
    Ok(())
}

/// Where the reads of a split run end: at fractions (of 65536) of `len`,
/// or (`None`) after every byte. Shared with `fuzz_framed`.
pub(super) fn read_cuts(fractions: Option<&[u16]>, len: usize) -> Vec<usize> {
    let Some(fractions) = fractions else {
        return (1..len).collect();
    };
    let mut at: Vec<usize> = fractions
        .iter()
        .map(|f| (*f as usize * len) >> 16)
        .collect();
    at.sort_unstable();
    at.dedup();
    at
}

/// A runner for `PROPTEST_CASES` cases (default `cases`) from the seed
/// `PROPTEST_RNG_SEED` names, or `seed`: CI tries the same cases on every
/// run, so a failure there is the code's and reproduces. Shared with
/// `fuzz_framed`.
pub(super) fn runner(cases: u32, seed: u64) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let rng_seed = match Config::default().rng_seed {
        RngSeed::Random => RngSeed::Fixed(seed),
        chosen => chosen,
    };
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 1024,
        rng_seed,
        ..Config::default()
    })
}

/// The socket harness's corpus (`tests/corpus/ws/`), through the decoder:
/// split at every byte boundary, and (files not named `deflate-`) against
/// tungstenite.
#[test]
fn corpus_replays_at_every_split_and_never_looser_than_tungstenite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/ws");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/corpus/ws exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus has {} inputs", files.len());
    let tally = Tally::default();
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let deflate = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("deflate-"));
        let case = Case {
            bytes: bytes.clone(),
            deflate,
            unlimited: false,
            expect: None,
            cuts: vec![],
        };
        // Whole, one byte per read, and against tungstenite.
        if let Err(e) = check(&case, &tally) {
            failures.push(format!("{}: {e}", path.display()));
            continue;
        }
        let whole = megaconn(&bytes, &[], deflate, LIMITS);
        let cut = |at: &usize| megaconn(&bytes, &[*at], deflate, LIMITS);
        if let Some(at) = (1..bytes.len()).find(|at| cut(at) != whole) {
            failures.push(format!("{}: split dependence at {at}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn generated_client_streams_split_invariant_and_never_looser_than_tungstenite() {
    let tally = Tally::default();
    let mut runner = runner(DEFAULT_CASES, DEFAULT_SEED);
    let result = runner.run(&case(), |case| {
        check(&case, &tally)
            .map_err(|e| TestCaseError::fail(format!("{e}\n  bytes: {:02x?}", case.bytes)))
    });
    let n = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    eprintln!(
        "fuzz_ws: {} streams ({} with deflate, {} unmutated and decoded as generated); \
         against tungstenite: {} taken alike, {} refused by both ({} with the same code), \
         {} refused earlier by megaconn only, {} close 1014 taken by megaconn only",
        n(&tally.cases),
        n(&tally.deflate),
        n(&tally.model),
        n(&tally.same),
        n(&tally.both_failed),
        n(&tally.same_code),
        n(&tally.stricter),
        n(&tally.code_1014),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
