//! `--plot FILE.svg|FILE.png`: the latency percentile curve (HdrHistogram
//! style: the x axis is the percentile on a "number of nines" scale, so the
//! tail is readable), as SVG or as a PNG bitmap.
//!
//! Text is laid out (and, in a PNG, drawn) with a TrueType font from the
//! system, found once per process: `MEGACONN_PLOT_FONT`, else DejaVu Sans or
//! Liberation Sans where Debian-like systems put them (package
//! `fonts-dejavu-core`). Without one the curve is still drawn, unlabelled.

use std::path::Path;
use std::sync::OnceLock;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::LoadError;

/// The plot file formats, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `.svg`
    Svg,
    /// `.png`
    Png,
}

impl Format {
    /// The format for `path`, or an error naming the accepted extensions.
    pub(crate) fn of(path: &Path) -> Result<Format, LoadError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("svg") => Ok(Format::Svg),
            Some(e) if e.eq_ignore_ascii_case("png") => Ok(Format::Png),
            _ => Err(LoadError::invalid(
                "--plot",
                path.display().to_string(),
                "name the file FILE.svg or FILE.png",
            )),
        }
    }
}

/// Where a TrueType font is looked for, in order (after `MEGACONN_PLOT_FONT`).
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font as plotters' "sans-serif" once; true if one was found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let env = std::env::var("MEGACONN_PLOT_FONT").ok();
        let found = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS)
            .filter_map(|p| std::fs::read(p).ok())
            // plotters keeps fonts for the process's life: leaking the one
            // file read is what `register_font`'s `'static` asks for.
            .any(|bytes| {
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
                    .is_ok()
            });
        found
    })
}

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

/// Draws the percentile curve of `h` (nanoseconds) into `path`, SVG or PNG by
/// its extension.
pub(crate) fn write(path: &Path, title: &str, h: &Histogram<u64>) -> Result<(), LoadError> {
    const SIZE: (u32, u32) = (900, 540);
    let err = |e: String| LoadError::Write {
        path: path.to_owned(),
        cause: std::io::Error::other(e),
    };
    let labels = font_ready();
    match Format::of(path)? {
        Format::Svg => draw(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            title,
            h,
            labels,
        ),
        Format::Png => draw(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            title,
            h,
            labels,
        ),
    }
    .map_err(err)
}

/// Draws the chart on any plotters backend; `labels` false leaves out all text.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    h: &Histogram<u64>,
    labels: bool,
) -> Result<(), String> {
    let pts = curve(h);
    let max_x = pts.last().map_or(1.0, |p| p.0);
    let max_y = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if labels {
        builder
            .caption(title, ("sans-serif", 20))
            .x_label_area_size(45)
            .y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(e)?;
    if labels {
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
            .map_err(e)?;
    }
    chart.draw_series(LineSeries::new(pts, &BLUE)).map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{new_histogram, record_ns};

    #[test]
    fn curve_is_monotonic_and_svg_and_png_are_written() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            record_ns(&mut h, i * 100);
        }
        let pts = curve(&h);
        assert!(pts.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0));
        assert!((pts.last().unwrap().1 - 1000.0).abs() < 1.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write(&path, "test", &h).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
        let png = dir.path().join("p.PNG");
        write(&png, "test", &h).unwrap();
        assert!(std::fs::read(&png)
            .unwrap()
            .starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(write(&dir.path().join("p.jpg"), "test", &h).is_err());
    }
}
