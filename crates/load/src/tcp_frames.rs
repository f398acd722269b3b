//! `hold tcp://`'s framing and receive mode: how heartbeats are framed
//! ([`TcpFraming`]: lines, or a big-endian length header as `megaconn serve
//! --tcp-framing` speaks), how a whole frame is split off what a connection
//! read (`hold_wire.rs` takes them in turn), and how a pushed frame is told
//! from a heartbeat reply: a push
//! carries its send time, its payload starting `t=<unix nanoseconds>`, so
//! `--receive` can count pushes and time their delivery (sender and holder
//! on one machine share the clock).

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest frame `hold` accepts from a server; a longer one fails the
/// connection (a server that misframes would otherwise make it buffer forever).
pub(crate) const MAX_FRAME: usize = 64 * 1024;

/// How a `hold tcp://` target frames messages (`--tcp-framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFraming {
    /// A line ending in `\n` (a `\r` before it is dropped).
    Lines,
    /// A big-endian length header of this many bytes (1, 2, 4 or 8), then the body.
    Length(usize),
}

/// `--tcp-framing`: `lines`, `u8`, `u16`, `u32` or `u64`.
pub(crate) fn parse_tcp_framing(s: &str) -> Result<TcpFraming, String> {
    Ok(match s {
        "lines" => TcpFraming::Lines,
        "u8" => TcpFraming::Length(1),
        "u16" => TcpFraming::Length(2),
        "u32" => TcpFraming::Length(4),
        "u64" => TcpFraming::Length(8),
        _ => return Err(format!("{s:?}: expected lines, u8, u16, u32 or u64")),
    })
}

/// The frame did not fit [`MAX_FRAME`] (or its header says more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

impl TcpFraming {
    /// The bytes of one heartbeat carrying `send` (the unescaped `--send`):
    /// as given for lines; for a length header, the text without its line
    /// ending, behind the header.
    pub(crate) fn heartbeat(self, send: &[u8]) -> Vec<u8> {
        match self {
            TcpFraming::Lines => send.to_vec(),
            TcpFraming::Length(n) => {
                let body = send.strip_suffix(b"\n").unwrap_or(send);
                let body = body.strip_suffix(b"\r").unwrap_or(body);
                let len = (body.len() as u64).to_be_bytes();
                let mut out = len[8 - n..].to_vec();
                out.extend_from_slice(body);
                out
            }
        }
    }

    /// The first whole frame in `data`: where its payload is and how many
    /// bytes it took; `None` while it is incomplete.
    pub(crate) fn split(self, data: &[u8]) -> Result<Option<(Range<usize>, usize)>, TooLarge> {
        match self {
            TcpFraming::Lines => match data.iter().position(|&b| b == b'\n') {
                Some(eol) => {
                    let end = if eol > 0 && data[eol - 1] == b'\r' {
                        eol - 1
                    } else {
                        eol
                    };
                    Ok(Some((0..end, eol + 1)))
                }
                None if data.len() > MAX_FRAME => Err(TooLarge),
                None => Ok(None),
            },
            TcpFraming::Length(n) => {
                let Some(head) = data.get(..n) else {
                    return Ok(None);
                };
                let len = head.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                if len > MAX_FRAME as u64 {
                    return Err(TooLarge);
                }
                let end = n + len as usize;
                Ok((data.len() >= end).then_some((n..end, end)))
            }
        }
    }
}

/// A pushed frame's send time in nanoseconds since the Unix epoch, if its
/// payload starts with `t=<digits>`.
pub(crate) fn sent_at_ns(payload: &[u8]) -> Option<u64> {
    let digits = payload.strip_prefix(b"t=")?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings_parse() {
        assert_eq!(parse_tcp_framing("lines"), Ok(TcpFraming::Lines));
        assert_eq!(parse_tcp_framing("u32"), Ok(TcpFraming::Length(4)));
        assert!(parse_tcp_framing("u24").is_err());
    }

    #[test]
    fn heartbeats_are_framed() {
        assert_eq!(TcpFraming::Lines.heartbeat(b"PING\n"), b"PING\n");
        assert_eq!(TcpFraming::Length(2).heartbeat(b"PING\r\n"), b"\0\x04PING");
        assert_eq!(TcpFraming::Length(1).heartbeat(b""), b"\0");
    }

    #[test]
    fn frames_split_whole_or_not_at_all() {
        let lines = TcpFraming::Lines;
        assert_eq!(lines.split(b"PONG\r\nnext"), Ok(Some((0..4, 6))));
        assert_eq!(lines.split(b"PO"), Ok(None));
        assert_eq!(lines.split(&[b'x'; MAX_FRAME + 1]), Err(TooLarge));
        let u16 = TcpFraming::Length(2);
        assert_eq!(u16.split(b"\0\x02hi\0"), Ok(Some((2..4, 4))));
        assert_eq!(u16.split(b"\0\x02h"), Ok(None));
        assert_eq!(u16.split(b"\0"), Ok(None));
        assert_eq!(u16.split(b"\0\0"), Ok(Some((2..2, 2))));
        assert_eq!(TcpFraming::Length(4).split(b"\0\x01\0\x01"), Err(TooLarge));
        // Every split point of two frames gives the first only when whole.
        let wire = [&u16.heartbeat(b"one")[..], &u16.heartbeat(b"two")[..]].concat();
        for cut in 0..wire.len() {
            let got = u16.split(&wire[..cut]).unwrap();
            assert_eq!(got.is_some(), cut >= 5, "cut at {cut}");
        }
    }

    #[test]
    fn pushes_carry_their_send_time() {
        assert_eq!(sent_at_ns(b"t=1234 padding"), Some(1234));
        assert_eq!(sent_at_ns(b"t=99"), Some(99));
        assert_eq!(sent_at_ns(b"PONG"), None);
        assert_eq!(sent_at_ns(b"t=x"), None);
        assert!(unix_now_ns() > 1_700_000_000_000_000_000);
    }
}
