//! The `megaconn` command: `serve`, `load`, `hold` and `doctor`.
//!
//! `main` stays thin (as in ripgrep): parse, dispatch, map the result to an exit
//! code. 0 is success, 1 a runtime failure, 2 a usage or configuration error
//! with a message saying what to fix, 3 `serve --upgrade` with no server to
//! take over from (nothing answers on the control socket).

mod activation;
mod admin;
mod admin_guard;
mod announce;
mod demo;
mod doctor;
mod fanout;
mod in_use;
mod knobs;
mod logging;
mod pid_file;
mod readiness;
mod serve;
mod shared_audience;
mod shared_families;
#[cfg(test)]
mod shared_families_tests;
mod shared_stats;
mod shm;
mod supervisor;
mod tls;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: jemalloc::Jemalloc = jemalloc::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// megaconn: serve, load-test and hold a million HTTP connections.
#[derive(Debug, Parser)]
#[command(name = "megaconn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server: the demo app on 127.0.0.1:8080 unless told otherwise.
    Serve(serve::ServeArgs),
    /// Generate HTTP/1.1 or HTTP/2 request load (cleartext or TLS) against a URL and report latency percentiles.
    Load(megaconn_load::LoadArgs),
    /// Open and hold many concurrent connections (up to a million), with heartbeats.
    Hold(megaconn_load::HoldArgs),
    /// Check whether this host can hold N connections (open files, ports, tcp_mem, conntrack, memory) and print the fixes.
    #[command(after_long_help = doctor::CHECKS_HELP)]
    Doctor(doctor::DoctorArgs),
}

/// Prints a line to stdout, ignoring a closed stdout (a supervisor or pipe
/// that went away must not turn into a panic); JSON in JSON log mode
/// ([`announce::say`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::announce::say(format_args!($($arg)*))
    };
}

/// A mistake in the command line or config file (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Load(args) => megaconn_load::run_load(args)
            .map(drop)
            .map_err(anyhow::Error::new),
        Command::Hold(args) => megaconn_load::run_hold(args)
            .map(drop)
            .map_err(anyhow::Error::new),
        Command::Doctor(args) => doctor::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stdout (piped into `head`) is not a failure.
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            announce::last_words(format_args!("megaconn: {e:#}"));
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else if e.downcast_ref::<upgrade::NothingToTakeOver>().is_some() {
                ExitCode::from(upgrade::NOTHING_TO_TAKE_OVER_EXIT as u8)
            } else if e.downcast_ref::<upgrade::SlotTaken>().is_some() {
                ExitCode::from(upgrade::SLOT_TAKEN_EXIT as u8)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
