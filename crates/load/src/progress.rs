//! Live progress on stderr: an indicatif bar with a live message when stderr is a
//! terminal, plain periodic lines (about one a second) when it is not, nothing
//! with `--quiet`.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the drivers sample their counters for the display.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Interval between plain progress lines.
const PLAIN_EVERY: Duration = Duration::from_millis(950);

/// A progress display.
pub(crate) enum Progress {
    /// A terminal bar.
    Bar(ProgressBar),
    /// Plain lines; remembers when the last was printed.
    Plain {
        /// When the run started.
        start: Instant,
        /// When the last line was printed.
        last: Instant,
    },
    /// No output.
    Off,
}

impl Progress {
    /// A display for a run whose position goes from 0 to `length` (`unit` names it).
    pub(crate) fn new(length: u64, unit: &str, quiet: bool) -> Self {
        let now = Instant::now();
        if quiet {
            return Progress::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Plain {
                start: now,
                last: now,
            };
        }
        let bar =
            ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr_with_hz(10));
        let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress::Bar(bar)
    }

    /// Updates the display; `message` is only built when something is shown.
    pub(crate) fn update(&mut self, position: u64, message: impl FnOnce() -> String) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(position);
                bar.set_message(message());
            }
            Progress::Plain { start, last } => {
                let now = Instant::now();
                if now.duration_since(*last) >= PLAIN_EVERY {
                    *last = now;
                    eprintln!(
                        "[{:7.1}s] {}",
                        now.duration_since(*start).as_secs_f64(),
                        message()
                    );
                }
            }
            Progress::Off => {}
        }
    }

    /// Removes the bar (plain lines stay).
    pub(crate) fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
