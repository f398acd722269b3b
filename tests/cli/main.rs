//! The `megaconn` command line as users and operators run it: each module
//! starts the real binary (`CARGO_BIN_EXE_megaconn`) as child processes,
//! each owned by a guard that kills it if the test fails, and talks to it
//! over real sockets. One module per command or subject, built as one test
//! binary: a file each under `tests/` compiled the shared fixtures
//! (`../common`) and linked every dependency again, for nothing.
//!
//! Run one subject with a filter, e.g. `cargo test --test cli processes::`.

#[path = "../common/mod.rs"]
mod common;

mod activation_cli;
mod admin_cli;
mod admin_fds_cli;
mod doctor_cli;
mod emfile56_cli;
mod flags_cli;
mod h2_grown_cli;
mod hold_cli;
mod limits_cli;
mod logs_cli;
mod ops48_cli;
mod ops49_cli;
mod ops50_cli;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod park_cli;
mod processes;
mod serve_cli;
mod supervisor57_cli;
mod topics55_cli;
mod upgrade_cli;
mod upgrade_framed_cli;
