//! Log output: human-readable on a terminal, JSON lines with `--log-format json`.
//! The level comes from `RUST_LOG` (default `info`).
//!
//! One more layer sits on the subscriber: a test gate that makes a worker
//! panic at its hand-over's line (`upgrade::WorkerPanic`, debug builds
//! only, when a test sets its variable). Otherwise it is `None`, and an
//! `Option` of a layer that is `None` is a layer that does nothing (it
//! takes no event and filters none out), so that the subscriber is built
//! the same way in every build. Being a layer, it sees only what the
//! filter above lets through.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable (colours on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    // A `RUST_LOG` that does not parse falls back to `info`, and says so
    // once the subscriber is up (it used to fall back in silence).
    let mut bad = None;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|e| {
        if let Ok(value) = std::env::var(EnvFilter::DEFAULT_ENV) {
            bad = Some((value, e));
        }
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A test's worker panic (debug builds only; none otherwise).
    let panic = crate::upgrade::WorkerPanic::from_env();
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(panic)
            .init(),
        LogFormat::Json => builder.json().finish().with(panic).init(),
    }
    if let Some((value, error)) = bad {
        tracing::warn!(RUST_LOG = %value, %error, "RUST_LOG is not a valid filter (e.g. info, megaconn=debug,warn); logging at info");
    }
}
