//! The load generator's end-to-end tests (`load` and `hold` against real
//! servers on 127.0.0.1), one module per subject, built as one test binary.
//!
//! One binary rather than a file each: each file under `tests/` is its own
//! crate that compiles the shared fixtures (`../common`) and links every
//! dependency again, for nothing. Tests run in parallel threads of this one
//! process as they did within each binary before; what they share is the
//! process-wide open-file limit, which `hold` only ever raises. Run one
//! subject with a filter, e.g. `cargo test -p megaconn-load --test integration hold::`.

#[path = "../common/mod.rs"]
mod common;

mod h2_goaway;
mod hold;
mod hold_framed;
mod load;
mod tls_h2;
mod ws;
