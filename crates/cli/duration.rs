//! Durations as people write them: `10s`, `500ms`, `1m`, `2h`, `1.5s`; and `off`
//! or `none` (or `0`) to disable a timeout.

use std::time::Duration;

/// Parses a duration; `None` for `off`, `none` or `0`.
pub fn parse_optional(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") || t == "0" {
        return Ok(None);
    }
    parse(t).map(Some)
}

/// A timeout flag's value: a duration, or `None` for `off`. (A newtype, because
/// clap reads `Option<Option<T>>` as "a flag whose value may be missing".)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Option<Duration>);

/// Parses a timeout flag: `10s`, `500ms`, or `off`.
pub fn parse_timeout(text: &str) -> Result<Timeout, String> {
    parse_optional(text).map(Timeout)
}

/// Parses a duration that must be set.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: write it like 10s, 500ms, 2m or off"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {text:?}"))
}

/// serde helpers for `Option<Option<Duration>>` config fields: absent keeps the
/// default, `"off"` disables, `"10s"` sets.
pub mod serde_optional {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes `"10s"` / `"off"`.
    pub fn deserialize<'de, D>(d: D) -> Result<Option<Option<Duration>>, D::Error>
    where
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        super::parse_optional(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_optional("off").unwrap(), None);
        assert!(parse("ten").is_err());
        assert!(parse("10 parsecs").is_err());
    }
}
