//! The one grammar for durations and sizes, shared by `megaconn serve`, `load`
//! and `hold` (flags and the config file alike).
//!
//! **Durations**: a number (decimals allowed) and a unit, with or without a space:
//! `250us`, `500ms`, `30s`, `30sec`, `1.5s`, `1m`, `5min`, `2h`, `1d`; a bare
//! number is seconds (`30` = `30s`). Where a knob can be disabled, `off` (or
//! `none`, or `0`) disables it.
//!
//! **Sizes**: a number and an optional unit: plain bytes (`65536`, `65536B`),
//! binary units `KiB`, `MiB`, `GiB`, `TiB` (×1024) and decimal units `KB`, `MB`,
//! `GB`, `TB` (×1000); `K`, `M`, `G`, `T` alone are binary, as in `ulimit` and
//! systemd. Units are case-insensitive (`16mib` works).

use std::time::Duration;

/// The largest duration accepted: about 31 years.
const MAX_SECS: f64 = 1e9;

/// Every duration unit and its length in seconds.
const DURATION_UNITS: &[(&[&str], f64)] = &[
    (&["us", "µs", "usec", "usecs"], 1e-6),
    (&["ms", "msec", "msecs"], 1e-3),
    (&["", "s", "sec", "secs", "second", "seconds"], 1.0),
    (&["m", "min", "mins", "minute", "minutes"], 60.0),
    (&["h", "hr", "hrs", "hour", "hours"], 3600.0),
    (&["d", "day", "days"], 86400.0),
];

/// Every size unit (lower case) and its multiplier.
const SIZE_UNITS: &[(&[&str], u64)] = &[
    (&["", "b"], 1),
    (&["k", "kib"], 1 << 10),
    (&["m", "mib"], 1 << 20),
    (&["g", "gib"], 1 << 30),
    (&["t", "tib"], 1 << 40),
    (&["kb"], 1_000),
    (&["mb"], 1_000_000),
    (&["gb"], 1_000_000_000),
    (&["tb"], 1_000_000_000_000),
];

/// How a duration is written, for error messages and help.
pub const DURATION_HELP: &str = "like 500ms, 10s, 1m or 2h (a bare number is seconds)";

/// How a size is written, for error messages and help.
pub const SIZE_HELP: &str = "like 65536, 64KiB, 16MiB or 1GiB (KB, MB, GB are powers of 1000)";

/// Splits `"1.5 s"` into `("1.5", "s")`.
fn split_number(t: &str) -> (&str, &str) {
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (n, u) = t.split_at(at);
    (n, u.trim())
}

fn parse_number(n: &str) -> Option<f64> {
    if n.is_empty() {
        return None;
    }
    n.replace('_', "")
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

/// Parses a duration that must be set: `500ms`, `30s`, `1m`, `2h`, `30` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = split_number(t);
    let value = parse_number(number)
        .ok_or_else(|| format!("invalid duration {text:?}: write it {DURATION_HELP}"))?;
    let scale = DURATION_UNITS
        .iter()
        .find(|(names, _)| names.contains(&unit))
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            format!("invalid duration unit {unit:?} in {text:?}: use us, ms, s, m, h or d")
        })?;
    let secs = value * scale;
    if !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// True for the words that disable a knob: `off`, `none`, `0`.
pub fn is_off(text: &str) -> bool {
    let t = text.trim();
    t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") || t == "0"
}

/// Parses a duration that may be disabled: `None` for `off`, `none` or `0`.
pub fn parse_duration_or_off(text: &str) -> Result<Option<Duration>, String> {
    if is_off(text) {
        return Ok(None);
    }
    parse_duration(text)
        .map(Some)
        .map_err(|e| format!("{e}, or off"))
}

/// Parses a size in bytes: `65536`, `64KiB`, `16MiB`, `1GiB`, `64KB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = split_number(t);
    let value = parse_number(number)
        .ok_or_else(|| format!("invalid size {text:?}: write it {SIZE_HELP}"))?;
    let lower = unit.to_ascii_lowercase();
    let scale = SIZE_UNITS
        .iter()
        .find(|(names, _)| names.contains(&lower.as_str()))
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            format!("invalid size unit {unit:?} in {text:?}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
        })?;
    let bytes = value * scale as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("size {text:?} is out of range"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("size {text:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Writes a duration back in the grammar (`1500ms`, `30s`, `2m`): the
/// largest unit that represents it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{}us", d.as_micros());
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Writes a size back in the grammar (`64KiB`, `16MiB`, `1000`).
pub fn format_size(n: u64) -> String {
    for (unit, scale) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if n >= scale && n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("30sec"), Duration::from_secs(30));
        assert_eq!(d("30 secs"), Duration::from_secs(30));
        assert_eq!(d("30"), Duration::from_secs(30));
        assert_eq!(d("1m"), Duration::from_secs(60));
        assert_eq!(d("5min"), Duration::from_secs(300));
        assert_eq!(d("2h"), Duration::from_secs(7200));
        assert_eq!(d("1d"), Duration::from_secs(86400));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in ["", "s", "ten", "10 parsecs", "-1s", "1e99h", ".", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn off() {
        assert_eq!(parse_duration_or_off("off").unwrap(), None);
        assert_eq!(parse_duration_or_off("OFF").unwrap(), None);
        assert_eq!(parse_duration_or_off("none").unwrap(), None);
        assert_eq!(parse_duration_or_off("0").unwrap(), None);
        assert_eq!(
            parse_duration_or_off("30sec").unwrap(),
            Some(Duration::from_secs(30))
        );
        assert!(parse_duration("off").is_err());
        assert!(parse_duration_or_off("of").unwrap_err().contains("or off"));
    }

    #[test]
    fn sizes() {
        let s = |t| parse_size(t).unwrap();
        assert_eq!(s("65536"), 65536);
        assert_eq!(s("65536B"), 65536);
        assert_eq!(s("64KiB"), 65536);
        assert_eq!(s("64kib"), 65536);
        assert_eq!(s("64K"), 65536);
        assert_eq!(s("16MiB"), 16 << 20);
        assert_eq!(s("16 MiB"), 16 << 20);
        assert_eq!(s("1GiB"), 1 << 30);
        assert_eq!(s("1.5KiB"), 1536);
        assert_eq!(s("64KB"), 64_000);
        assert_eq!(s("2MB"), 2_000_000);
        assert_eq!(s("1_000_000"), 1_000_000);
        for bad in ["", "KiB", "ten", "16 parsecs", "-1", "1.5", "1e30TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for d in ["500ms", "30s", "2m", "2h", "90s", "250us", "0s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        for s in ["64KiB", "16MiB", "1GiB", "1000", "0"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
