//! The load generator's arguments, parsed from a command line as
//! `megaconn load` and `megaconn hold` parse theirs (clap, the same flags
//! and defaults), so that a test runs what a user would type.

use std::ffi::OsString;

use clap::Parser;
use megaconn_load::{HoldArgs, LoadArgs};

#[derive(Parser)]
struct LoadCli {
    #[command(flatten)]
    args: LoadArgs,
}

#[derive(Parser)]
struct HoldCli {
    #[command(flatten)]
    args: HoldArgs,
}

/// `argv` (`load` first) parsed as `megaconn load`'s command line.
pub fn load_argv<I, T>(argv: I) -> LoadArgs
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    LoadCli::parse_from(argv).args
}

/// `argv` (`hold` first) parsed as `megaconn hold`'s command line.
pub fn hold_argv<I, T>(argv: I) -> HoldArgs
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    HoldCli::parse_from(argv).args
}

/// `megaconn load URL -q EXTRA…`.
pub fn load_args(url: &str, extra: &[&str]) -> LoadArgs {
    load_argv([&["load", url, "-q"][..], extra].concat())
}
