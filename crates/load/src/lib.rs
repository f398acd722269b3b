//! `megaconn-load`: the load generator behind `megaconn load` and `megaconn hold`.
//!
//! * [`run_load`] drives request load: HTTP/1.1 or HTTP/2 (`--http2`), cleartext
//!   or TLS (`https://`), keep-alive connections (or one per request) spread over
//!   threads (one current-thread tokio runtime each), closed loop or open loop
//!   (`--rate`, with coordinated-omission correction), optional pipelining, and
//!   reports latency percentiles, throughput, errors by kind and the client's own
//!   CPU time.
//! * [`run_hold`] opens and holds many concurrent connections (up to a million,
//!   spread over source addresses and child processes), sends periodic heartbeats
//!   and reports heartbeat latency, drops, WebSocket closes by code, resets and
//!   reconnects.
//!
//! Module map:
//!
//! | module | owns |
//! | --- | --- |
//! | `args` | parsing of targets, source ranges, headers, bodies (durations via `units`) |
//! | [`units`] | the duration and size grammar shared with `megaconn serve` |
//! | `load` | [`LoadArgs`] and the `load` driver (threads, runtimes, aggregation) |
//! | `conn` | a `load` connection's reconnect loop; the lean HTTP/1.1 exchange: pre-rendered requests, reused buffers |
//! | `h2conn` | the HTTP/2 exchange (`--http2`): concurrent streams on one connection |
//! | `transport` | a connection's byte stream (TCP or TLS), connect + handshake, handshake kind |
//! | `tls` | rustls client config (`--cacert`, `--insecure`, ALPN, session cache), probe handshake |
//! | `sessions` | the TLS session store: a TLS 1.3 ticket per concurrent connection |
//! | `parse` | incremental HTTP/1.1 response parsing (Content-Length, chunked, EOF) |
//! | `parse_fast` | the plain heads of `hold`'s replies without `httparse` (anything else goes to it) |
//! | `schedule` | open-loop send schedule and coordinated-omission arithmetic |
//! | `hold` | [`HoldArgs`] and the `hold` driver (validation, ramp, process split) |
//! | `hold_conn` | one held connection: open request, heartbeats, drop detection |
//! | `hold_lot` | a hold thread's parking lot: cleartext connections (HTTP, ws://, tcp://) between heartbeats, no task each |
//! | `hold_stamp` | when a reply read on the lot's tick arrived: kernel receive stamps, turned to the monotonic clock, wall-clock steps caught |
//! | `hold_wheel` | the lot's schedule: which connection to look at on which tick of the beat grid |
//! | `hold_tls` | `hold https://` and `wss://`: a held TLS connection on rustls' unbuffered client API |
//! | `hold_wire` | what a held connection's bytes mean, per protocol: the heartbeat's reply, pushes, pings to answer |
//! | `tcp_frames` | `hold tcp://`: lines or length-prefixed frames, pushes and their delivery time (`--receive`) |
//! | `children` | multi-process `hold`: spawning, child protocol, merging |
//! | `error` | [`LoadError`]: every message says what went wrong and what to do |
//! | `sys` | OS limits and sockets: RLIMIT_NOFILE, port range, source binding, CPU time |
//! | `histogram` | HDR histogram helpers: percentiles, (de)serialization, merging |
//! | `report` | the report types, their JSON form and human printing |
//! | `progress` | the live progress display (indicatif on a TTY, plain lines otherwise) |
//! | `plot` | the latency percentile plot, SVG or PNG |
//! | `ws` | `ws://`: the held WebSocket's upgrade and frames, and `load ws://` (round trips, `--receive`) |

mod args;
mod children;
mod conn;
mod error;
mod h2conn;
mod histogram;
mod hold;
mod hold_conn;
mod hold_lot;
mod hold_stamp;
mod hold_tls;
mod hold_wheel;
mod hold_wire;
mod load;
mod parse;
mod parse_fast;
mod plot;
mod progress;
mod report;
mod schedule;
mod sessions;
mod sys;
mod tcp_frames;
mod tls;
mod transport;
pub mod units;
mod ws;

pub use error::LoadError;
pub use histogram::Percentiles;
pub use hold::{run_hold, HoldArgs};
pub use load::{run_load, LoadArgs};
pub use report::{ErrorCounts, HoldReport, LoadReport, TlsStats};
pub use tcp_frames::TcpFraming;
pub use ws::WsHeartbeat;
