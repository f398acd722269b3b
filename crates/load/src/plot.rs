//! `--plot FILE.svg`: the latency percentile curve (HdrHistogram style: the x axis
//! is the percentile on a "number of nines" scale, so the tail is readable).

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::error::LoadError;

/// The points of the curve: (nines, latency µs) with nines = -log10(1 - q),
/// from the median-less 0 up to what the sample count supports (at most 6 nines).
pub(crate) fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let max_nines = (h.len() as f64).log10().clamp(1.0, 6.0);
    let steps = (max_nines * 40.0) as usize;
    let mut pts: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let x = max_nines * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    pts.push((max_nines, h.max() as f64 / 1000.0));
    pts
}

/// Draws the percentile curve of `h` (nanoseconds) into an SVG file at `path`.
pub(crate) fn write_svg(path: &Path, title: &str, h: &Histogram<u64>) -> Result<(), LoadError> {
    let pts = curve(h);
    let max_x = pts.last().map_or(1.0, |p| p.0);
    let max_y = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let err = |e: String| LoadError::Write {
        path: path.to_owned(),
        cause: std::io::Error::other(e),
    };
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        // One label per "nine": 0%, 90%, 99%, 99.9%, ...
        .x_labels(max_x.floor() as usize + 1)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let decimals = (x.round() as usize).saturating_sub(2);
            format!("{p:.decimals$}%")
        })
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(pts, &BLUE))
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{new_histogram, record_ns};

    #[test]
    fn curve_is_monotonic_and_svg_is_written() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            record_ns(&mut h, i * 100);
        }
        let pts = curve(&h);
        assert!(pts.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0));
        assert!((pts.last().unwrap().1 - 1000.0).abs() < 1.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write_svg(&path, "test", &h).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    }
}
