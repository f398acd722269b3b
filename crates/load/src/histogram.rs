//! HDR histogram helpers: every latency is recorded in nanoseconds in a
//! [`Histogram<u64>`] with 3 significant digits; this module turns one into the
//! reported [`Percentiles`] (microseconds), and (de)serializes histograms for the
//! child-process protocol (HdrHistogram V2 format, base64).

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest recordable latency (100 s, in ns); larger values are clamped.
const MAX_NS: u64 = 100_000_000_000;

/// A fresh latency histogram (nanoseconds, 1 ns .. 100 s, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Records one latency given in nanoseconds, clamping into the histogram's range.
#[inline]
pub(crate) fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, MAX_NS));
}

/// Latency percentiles in microseconds, as they appear in the JSON reports.
///
/// An empty histogram has no percentiles: they are `None` (JSON `null`),
/// not 0, so a run where nothing was timed (every request failed, a hold
/// stopped before its ramp ended) cannot read as "0 ms". `count` says how
/// many samples there were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// 99.99th percentile.
    pub p9999: Option<f64>,
    /// Largest recorded value.
    pub max: Option<f64>,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Number of recorded samples.
    pub count: u64,
}

impl Percentiles {
    /// Reads the percentiles of a nanosecond histogram, in microseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| Some(ns as f64 / 1000.0);
        Percentiles {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
            mean: Some(h.mean() / 1000.0),
            count: h.len(),
        }
    }

    /// `p50 …  p90 …  p99 …  p99.9 …  p99.99 …  max …` for the text reports.
    pub(crate) fn spread(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            show_us(self.p50),
            show_us(self.p90),
            show_us(self.p99),
            show_us(self.p999),
            show_us(self.p9999),
            show_us(self.max)
        )
    }
}

/// A percentile for the text reports: one decimal, or "—" if there is none
/// (nothing was timed).
pub(crate) fn show_us(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.1}"))
}

/// Serializes a histogram as base64 of its HdrHistogram V2 encoding.
pub(crate) fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Parses a histogram produced by [`encode`].
pub(crate) fn decode(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64 histogram: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("bad histogram encoding: {e:?}"))
}

/// Adds `src` into `dst` (both created by [`new_histogram`], so ranges agree).
pub(crate) fn merge(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    dst.add(src).expect("histograms share bounds");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_percentiles() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record_ns(&mut h, i * 1000);
        }
        let back = decode(&encode(&h)).unwrap();
        assert_eq!(back.len(), 1000);
        let p = Percentiles::of(&back);
        assert!((p.p50.unwrap() - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.max.unwrap() - 1000.0).abs() < 1.0, "{p:?}");
    }

    /// Nothing timed is not "0 µs": the scripts print "—" for null.
    #[test]
    fn an_empty_histogram_has_null_percentiles() {
        let json = serde_json::to_value(Percentiles::of(&new_histogram())).unwrap();
        for key in ["p50", "p90", "p99", "p999", "p9999", "max", "mean"] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
        assert_eq!(json["count"], 0);
        assert_eq!(show_us(Percentiles::default().p99), "—");
    }
}
