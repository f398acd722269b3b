//! Every `megaconn serve` knob, defined once.
//!
//! A [`Knob`] is one row of [`KNOBS`]: its flag name, help, default, an example
//! value, how its value is parsed and what it does to the [`Settings`]. From that
//! one row come the `--flag` (clap), the config-file key (the flag's name with
//! `_` for `-`) and the `--help` text, so a new knob is one new row and cannot be
//! forgotten in one of them. (ripgrep's `crates/core/flags/defs.rs` is the model.)
//!
//! Values use the grammar shared with `load` and `hold`
//! ([`megaconn_load::units`]): durations like `500ms`, `30s`, `1m`, `2h` (`off`,
//! or zero in any spelling, where a knob can be disabled), sizes like `64KiB`, `16MiB` or plain bytes. A
//! config-file value is parsed by the very same function as the flag's value:
//! strings and numbers are read as if typed after the flag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};
use megaconn::Builder;
use megaconn_load::units;

use crate::admin::{self, AdminAddr};
use crate::logging::LogFormat;

/// A knob's parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A duration; `None` is `off`.
    Duration(Option<Duration>),
    /// A size in bytes.
    Size(u64),
    /// A count.
    Count(u64),
    /// A positive rate.
    Rate(f64),
    /// A switch.
    Switch(bool),
    /// Socket addresses (a repeatable flag, a list in the file).
    Addrs(Vec<SocketAddr>),
    /// A file.
    Path(PathBuf),
    /// Free text.
    Text(String),
    /// The admin listener.
    Admin(AdminAddr),
    /// The log format.
    LogFormat(LogFormat),
}

/// How a knob is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `--name VALUE`; `name = VALUE` in the file.
    One,
    /// `--name VALUE`, repeatable; `name = [VALUE, …]` in the file.
    Repeated,
    /// `--name` alone; `name = true` in the file.
    Switch,
}

/// One `serve` knob: its flag, config key and help all come from here.
pub struct Knob {
    /// The long flag's name (`idle-timeout`); the config key is this with `_`.
    pub name: &'static str,
    /// The placeholder in help (`DURATION`); unused for switches.
    pub value_name: &'static str,
    /// How it is written.
    pub shape: Shape,
    /// One sentence of help.
    pub help: &'static str,
    /// More help for `--help` (may be empty).
    pub details: &'static str,
    /// The default, as help shows it.
    pub default: &'static str,
    /// A valid value that differs from the default (tests, help's config line).
    pub example: &'static str,
    /// Parses one value, from the flag or from the file.
    pub parse: fn(&str) -> Result<Value, String>,
    /// Applies the value.
    pub apply: fn(Value, &mut Settings) -> Result<(), String>,
}

/// What the knobs set: the builder, plus the settings that are resolved
/// together afterwards (listeners and TLS, the accept rate and its burst) or
/// belong to the CLI rather than the library.
#[derive(Debug, Default)]
pub struct Settings {
    /// The library's knobs.
    pub builder: Builder,
    /// `--listen` addresses.
    pub listen: Vec<SocketAddr>,
    /// `--tls-listen` addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// `--tcp-listen` addresses (the framed TCP demo).
    pub tcp_listen: Vec<SocketAddr>,
    /// `--tcp-tls-listen` addresses (the framed TCP demo over TLS).
    pub tcp_tls_listen: Vec<SocketAddr>,
    /// `--tcp-framing`.
    pub tcp_framing: Option<megaconn::Framing>,
    /// `--ws-ping-interval` and `--message-timeout` for the demo's WebSockets.
    pub demo_ws: crate::demo::DemoWs,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--self-signed`.
    pub self_signed: bool,
    /// `--tls-kx-groups`; `None`: the library's default.
    pub tls_kx_groups: Option<Vec<megaconn::KxGroup>>,
    /// `--tls-max-handshakes` (0: unbounded); `None`: the library's default.
    pub tls_max_handshakes: Option<usize>,
    /// `--tls-handshake-rate-per-ip`; `None`: no limit.
    pub tls_handshake_rate_per_ip: Option<f64>,
    /// `--tls-client-ca`: client certificates (mutual TLS) on.
    pub tls_client_ca: Option<PathBuf>,
    /// `--tls-client-auth optional` (`Some(true)`) or `required`; `None`:
    /// not given (required, with `--tls-client-ca`).
    pub tls_client_auth_optional: Option<bool>,
    /// `--tls-client-crl`.
    pub tls_client_crl: Option<PathBuf>,
    /// `--max-connections` (for the whole server: see `serve.rs`
    /// `process_share`).
    pub max_connections: Option<usize>,
    /// `--accept-rate`.
    pub accept_rate: Option<f64>,
    /// `--accept-burst`.
    pub accept_burst: Option<u32>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--processes`.
    pub processes: Option<usize>,
    /// `--admin`.
    pub admin: Option<AdminAddr>,
    /// The `--otel-*` knobs.
    pub otel: OtelKnobs,
    /// `--upgrade-socket`; `None`: [`default_upgrade_socket`].
    pub upgrade_socket: Option<PathBuf>,
    /// `--pid-file`; `None`: none written.
    pub pid_file: Option<PathBuf>,
}

/// Where a server listens for `serve --upgrade` when `--upgrade-socket` is
/// not given: one name per port, so that two servers on one host do not
/// meet, in the user's runtime directory (`$XDG_RUNTIME_DIR`, private to the
/// user under systemd) or else `/tmp`.
pub fn default_upgrade_socket(first_addr: Option<SocketAddr>) -> PathBuf {
    let dir =
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let port = first_addr.map_or(0, |a| a.port());
    dir.join(format!("megaconn-{port}.upgrade.sock"))
}

/// The `--otel-*` knobs, resolved with the `OTEL_*` variables in
/// `serve.rs` (the flags win).
#[derive(Debug, Default, Clone)]
pub struct OtelKnobs {
    /// `--otel-endpoint`: tracing is on.
    pub endpoint: Option<String>,
    /// `--otel-protocol`.
    pub protocol: Option<megaconn::otel::Protocol>,
    /// `--otel-sample-ratio`.
    pub sample_ratio: Option<f64>,
    /// `--otel-service-name`.
    pub service_name: Option<String>,
    /// `--otel-max-queue-spans`.
    pub max_queue_spans: Option<usize>,
}

impl Settings {
    fn builder(&mut self, f: impl FnOnce(Builder) -> Builder) -> Result<(), String> {
        self.builder = f(std::mem::take(&mut self.builder));
        Ok(())
    }
}

impl Knob {
    /// The config-file key: the flag's name with `_` for `-`.
    pub fn key(&self) -> String {
        self.name.replace('-', "_")
    }

    /// The example as a config-file line.
    pub fn example_line(&self) -> String {
        let value = match self.shape {
            Shape::Switch => "true".to_string(),
            Shape::Repeated => format!("[{:?}]", self.example),
            Shape::One if self.example.parse::<f64>().is_ok() => self.example.to_string(),
            Shape::One => format!("{:?}", self.example),
        };
        format!("{} = {value}", self.key())
    }

    /// The text of `--help` for this knob.
    pub fn long_help(&self) -> String {
        let mut text = self.help.to_string();
        if !self.details.is_empty() {
            text.push(' ');
            text.push_str(self.details);
        }
        text.push_str(&format!(
            "\n\nDefault: {}. Config file key: {}, e.g. {}",
            self.default,
            self.key(),
            self.example_line()
        ));
        text
    }

    /// The clap argument.
    pub fn arg(&'static self) -> Arg {
        let arg = Arg::new(self.name)
            .long(self.name)
            .help(format!("{} Default: {}.", self.help, self.default))
            .long_help(self.long_help());
        // Given twice, the last wins (Go's flag package, nginx's `-g`, a
        // systemd drop-in appending `--access-log=false` to a unit's
        // `--access-log`), where clap refused the second. A repeatable
        // knob's values add up instead.
        let arg = match self.shape {
            Shape::Switch | Shape::One => arg.overrides_with(self.name),
            Shape::Repeated => arg,
        };
        match self.shape {
            // `--name` alone is true; `--name=false` turns off what a
            // config file turned on (`=`: a switch takes no separate
            // value, so `--name ADDR`-style arguments after it stay theirs).
            Shape::Switch => arg
                .value_name("BOOL")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .action(ArgAction::Set)
                .value_parser(move |s: &str| (self.parse)(s)),
            Shape::One | Shape::Repeated => arg
                .value_name(self.value_name)
                .action(if self.shape == Shape::One {
                    ArgAction::Set
                } else {
                    ArgAction::Append
                })
                .value_parser(move |s: &str| (self.parse)(s)),
        }
    }

    /// The value given on the command line, if any.
    fn given_in(&self, m: &ArgMatches) -> Option<Value> {
        match self.shape {
            Shape::Switch | Shape::One => m.get_one::<Value>(self.name).cloned(),
            Shape::Repeated => {
                let values = m.get_many::<Value>(self.name)?;
                Some(Value::Addrs(
                    values
                        .flat_map(|v| match v {
                            Value::Addrs(a) => a.clone(),
                            _ => Vec::new(),
                        })
                        .collect(),
                ))
            }
        }
    }

    /// The value of this knob's key in a config file.
    pub fn value_of_toml(&self, v: &toml::Value) -> Result<Value, String> {
        use toml::Value as T;
        let what = match self.shape {
            Shape::Switch => "true or false",
            Shape::Repeated => "a list of strings",
            Shape::One => "a string or a number",
        };
        match (self.shape, v) {
            (Shape::Switch, T::Boolean(b)) => Ok(Value::Switch(*b)),
            (Shape::Repeated, T::Array(items)) => {
                let mut all = Vec::new();
                for item in items {
                    let T::String(s) = item else {
                        return Err(format!("expected {what}"));
                    };
                    if let Value::Addrs(a) = (self.parse)(s)? {
                        all.extend(a);
                    }
                }
                Ok(Value::Addrs(all))
            }
            (Shape::Repeated | Shape::One, T::String(s)) => (self.parse)(s),
            (Shape::One, T::Integer(i)) => (self.parse)(&i.to_string()),
            (Shape::One, T::Float(f)) => (self.parse)(&f.to_string()),
            _ => Err(format!("expected {what}")),
        }
    }
}

/// The knob a config key names.
pub fn by_key(key: &str) -> Option<&'static Knob> {
    KNOBS
        .iter()
        .find(|k| k.name.len() == key.len() && k.key() == key)
}

// Parsers: one per kind of value, shared by flags and the file.

/// A duration, or `off`. Zero in any spelling (`0`, `0s`, `0ms`) is `off`:
/// the shared grammar reads only a bare `0` as off, and a zero timeout or
/// interval would otherwise close every connection at once (or ping back to
/// back) where `0` disables it. Every duration knob can be off; one that
/// could not would need a parser of its own that refuses zero.
fn duration_or_off(s: &str) -> Result<Value, String> {
    units::parse_duration_or_off(s)
        .map(|d| d.filter(|d| !d.is_zero()))
        .map(Value::Duration)
}

fn size(s: &str) -> Result<Value, String> {
    units::parse_size(s).map(Value::Size)
}

fn count(s: &str) -> Result<Value, String> {
    s.trim()
        .replace('_', "")
        .parse::<u64>()
        .map(Value::Count)
        .map_err(|_| format!("invalid number {s:?}: a whole number like 4 or 100000"))
}

fn rate(s: &str) -> Result<Value, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Value::Rate(r)),
        _ => Err(format!(
            "invalid rate {s:?}: a positive number of connections per second"
        )),
    }
}

/// A positive rate, or `off` (an infinite one: no limit).
fn rate_or_off(s: &str) -> Result<Value, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Value::Rate(f64::INFINITY));
    }
    rate(s).map_err(|e| format!("{e}, or off"))
}

/// A count, or `off` (as 0: the knob's "none").
fn count_or_off(s: &str) -> Result<Value, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Value::Count(0));
    }
    count(s).map_err(|e| format!("{e}, or off"))
}

fn addr(s: &str) -> Result<Value, String> {
    s.trim()
        .parse::<SocketAddr>()
        .map(|a| Value::Addrs(vec![a]))
        .map_err(|_| format!("invalid address {s:?}: write IP:PORT, e.g. 0.0.0.0:80 or [::]:80"))
}

/// A comma-separated list of addresses and CIDR networks (`--proxy-protocol`).
fn trusted_proxies(s: &str) -> Result<Value, String> {
    s.parse::<megaconn::TrustedProxies>()
        .map(|_| Value::Text(s.trim().to_string()))
        .map_err(|e| e.to_string())
}

/// A comma-separated list of key-exchange groups (`x25519,p256`).
fn kx_groups(s: &str) -> Result<Value, String> {
    parse_kx_groups(s).map(|_| Value::Text(s.to_string()))
}

fn parse_kx_groups(s: &str) -> Result<Vec<megaconn::KxGroup>, String> {
    let groups = s
        .split(',')
        .map(|g| {
            g.trim()
                .parse::<megaconn::KxGroup>()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(groups)
}

/// `required` or `optional` (`--tls-client-auth`).
fn client_auth_mode(s: &str) -> Result<Value, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        m @ ("required" | "optional") => Ok(Value::Text(m.to_string())),
        _ => Err(format!(
            "invalid client auth mode {s:?}: required or optional"
        )),
    }
}

/// The topics of `--topic-metrics`, comma-separated; blanks dropped.
fn topics(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// A comma-separated list of topics to count one by one
/// (`--topic-metrics`), refused as the library refuses it (too many, or
/// `other`), by the library's own check.
fn topic_list(s: &str) -> Result<Value, String> {
    Builder::default()
        .topic_metrics(topics(s))
        .validate()
        .map(|()| Value::Text(topics(s).join(",")))
        .map_err(|e| e.to_string())
}

fn path(s: &str) -> Result<Value, String> {
    Ok(Value::Path(PathBuf::from(s)))
}

fn text(s: &str) -> Result<Value, String> {
    Ok(Value::Text(s.to_string()))
}

fn ratio(s: &str) -> Result<Value, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(Value::Rate(r)),
        _ => Err(format!(
            "invalid ratio {s:?}: a number from 0 (trace nothing) to 1 (trace every request)"
        )),
    }
}

fn otel_protocol(s: &str) -> Result<Value, String> {
    s.parse::<megaconn::otel::Protocol>()
        .map(|_| Value::Text(s.trim().to_string()))
        .map_err(|e| e.to_string())
}

fn url(s: &str) -> Result<Value, String> {
    let s = s.trim();
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(Value::Text(s.to_string()))
    } else {
        Err(format!(
            "invalid collector URL {s:?}: write http://HOST:PORT, e.g. http://127.0.0.1:4317"
        ))
    }
}

fn switch(s: &str) -> Result<Value, String> {
    s.parse::<bool>()
        .map(Value::Switch)
        .map_err(|_| format!("expected true or false, not {s:?}"))
}

fn admin_addr(s: &str) -> Result<Value, String> {
    admin::parse_admin(s).map(Value::Admin)
}

fn log_format(s: &str) -> Result<Value, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "human" => Ok(Value::LogFormat(LogFormat::Human)),
        "json" => Ok(Value::LogFormat(LogFormat::Json)),
        _ => Err(format!("invalid log format {s:?}: human or json")),
    }
}

// Accessors for `apply`: each knob's parser decides the variant, and the
// per-knob test runs every `apply`, so a mismatch cannot ship.

impl Value {
    fn duration(self) -> Option<Duration> {
        match self {
            Value::Duration(d) => d,
            other => unreachable!("not a duration: {other:?}"),
        }
    }

    fn bytes(self) -> u64 {
        match self {
            Value::Size(n) => n,
            other => unreachable!("not a size: {other:?}"),
        }
    }

    /// A size, for a setting the library takes as a `usize`.
    fn bytes_usize(self) -> Result<usize, String> {
        usize::try_from(self.bytes()).map_err(|_| "too large".to_string())
    }

    fn count<T: TryFrom<u64>>(self) -> Result<T, String> {
        match self {
            Value::Count(n) => T::try_from(n).map_err(|_| format!("{n} is too large")),
            other => unreachable!("not a count: {other:?}"),
        }
    }

    fn on(self) -> bool {
        match self {
            Value::Switch(b) => b,
            other => unreachable!("not a switch: {other:?}"),
        }
    }

    fn addrs(self) -> Vec<SocketAddr> {
        match self {
            Value::Addrs(a) => a,
            other => unreachable!("not addresses: {other:?}"),
        }
    }

    fn path(self) -> PathBuf {
        match self {
            Value::Path(p) => p,
            other => unreachable!("not a path: {other:?}"),
        }
    }

    fn text(self) -> String {
        match self {
            Value::Text(t) => t,
            other => unreachable!("not text: {other:?}"),
        }
    }

    fn ratio(self) -> f64 {
        match self {
            Value::Rate(r) => r,
            other => unreachable!("not a ratio: {other:?}"),
        }
    }
}

/// `n`, refused when 0 (the error is the knob's: [`apply`] names it).
fn at_least_one<T: Default + PartialEq>(n: T) -> Result<T, String> {
    if n == T::default() {
        return Err("must be at least 1".to_string());
    }
    Ok(n)
}

/// Every `serve` knob, in `--help` order.
pub static KNOBS: &[Knob] = &[
    Knob {
        name: "listen",
        value_name: "ADDR",
        shape: Shape::Repeated,
        help: "Address to listen on (repeatable).",
        details: "TLS with --tls-cert/--self-signed, unless --tls-listen says which addresses are TLS.",
        default: "127.0.0.1:8080, unless --tls-listen is given",
        example: "0.0.0.0:80",
        parse: addr,
        apply: |v, s| {
            s.listen.extend(v.addrs());
            Ok(())
        },
    },
    Knob {
        name: "tls-listen",
        value_name: "ADDR",
        shape: Shape::Repeated,
        help: "Address to listen on with TLS, next to the cleartext --listen ones (repeatable).",
        details: "Needs --tls-cert/--tls-key or --self-signed.",
        default: "none",
        example: "0.0.0.0:443",
        parse: addr,
        apply: |v, s| {
            s.tls_listen.extend(v.addrs());
            Ok(())
        },
    },
    Knob {
        name: "tcp-listen",
        value_name: "ADDR",
        shape: Shape::Repeated,
        help: "Address to serve the framed TCP demo on (repeatable): PING -> PONG, SUB topic, PUB topic text, PUB * text (to all), any other message -> echo: <message>.",
        details: "Framing by --tcp-framing (lines by default; try it with nc: `SUB news` in one, `PUB news hello` or `PUB * hello` in another). Without --listen or --tls-listen, no HTTP listener is opened.",
        default: "none",
        example: "0.0.0.0:7000",
        parse: addr,
        apply: |v, s| {
            s.tcp_listen.extend(v.addrs());
            Ok(())
        },
    },
    Knob {
        name: "tcp-tls-listen",
        value_name: "ADDR",
        shape: Shape::Repeated,
        help: "Address to serve the framed TCP demo on over TLS (repeatable), as --tcp-listen does in the clear.",
        details: "Needs --tls-cert/--tls-key or --self-signed; handshakes bounded as HTTPS's (--tls-max-handshakes, --tls-handshake-rate-per-ip). Like --tls-listen, it leaves the --listen addresses cleartext. Try it with `openssl s_client -quiet -connect ADDR`.",
        default: "none",
        example: "0.0.0.0:7001",
        parse: addr,
        apply: |v, s| {
            s.tcp_tls_listen.extend(v.addrs());
            Ok(())
        },
    },
    Knob {
        name: "tcp-framing",
        value_name: "FRAMING",
        shape: Shape::One,
        help: "How --tcp-listen and --tcp-tls-listen split messages: lines (\\n or \\r\\n), or a big-endian length header of u8, u16, u32 or u64.",
        details: "",
        default: "lines",
        example: "u32",
        parse: |text| match text {
            "lines" | "u8" | "u16" | "u32" | "u64" => Ok(Value::Text(text.into())),
            _ => Err(format!("{text:?}: expected lines, u8, u16, u32 or u64")),
        },
        apply: |v, s| {
            let Value::Text(text) = v else {
                return Err("tcp-framing: expected text".into());
            };
            s.tcp_framing = Some(match text.as_str() {
                "u8" => megaconn::Framing::length_prefixed(1),
                "u16" => megaconn::Framing::length_prefixed(2),
                "u32" => megaconn::Framing::length_prefixed(4),
                "u64" => megaconn::Framing::length_prefixed(8),
                _ => megaconn::Framing::lines(),
            });
            Ok(())
        },
    },
    Knob {
        name: "ws-ping-interval",
        value_name: "DURATION",
        shape: Shape::One,
        help: "The demo's WebSockets (/ws, /ws/chat): ping a peer not heard from for this long; off disables.",
        details: "A peer that sends its own heartbeats more often than this is never pinged: set it above the clients' heartbeat interval. A peer silent for 2.5 × this is closed (heartbeat timeout; 75 s at the default).",
        default: "30s",
        example: "60s",
        parse: duration_or_off,
        apply: |v, s| {
            s.demo_ws.ping_interval = Some(v.duration());
            Ok(())
        },
    },
    Knob {
        name: "publish-rate",
        value_name: "PER_SECOND",
        shape: Shape::One,
        help: "The demo's PUB (framed TCP) and /ws/chat: publishes a second each connection may make (token bucket, burst --publish-burst; a publish to many counts as several, --publish-fanout); off disables.",
        details: "A publish costs the server a delivery per subscriber (a broadcast, per connection: ~5 us each to a parked one), so one connection publishing at will made it spend CPU in proportion to its audience on every line. Past it PUB is answered `error: publish rate; slow down` and a chat message is dropped; the connection stays open; counted in megaconn_limit_hits_total{limit=\"publish_rate\"} and logged with the connection's id and peer. Per connection (megaconn::PublishRate). off: no limit on publishes, whatever their audience (benchmarks of a broadcast; a 0 is not off, it allows the burst and then nothing).",
        default: "10",
        example: "100",
        parse: rate_or_off,
        apply: |v, s| {
            s.demo_ws.publish.per_second = v.ratio();
            Ok(())
        },
    },
    Knob {
        name: "publish-burst",
        value_name: "N",
        shape: Shape::One,
        help: "Burst allowed by --publish-rate: publishes a connection may make at once after a quiet spell.",
        details: "",
        default: "20",
        example: "100",
        parse: count,
        apply: |v, s| {
            s.demo_ws.publish.burst = at_least_one(v.count::<u32>()?)?;
            Ok(())
        },
    },
    Knob {
        name: "publish-fanout",
        value_name: "N",
        shape: Shape::One,
        help: "--publish-rate by audience: a publish counts as one per N connections it reaches (its topic's subscribers; every framed and WebSocket connection for PUB *); off: one each, whatever the audience.",
        details: "The budget is then in deliveries, --publish-rate × N a second per connection (10,000 at the defaults, ~50 ms of CPU), and a publish reaching more than --publish-burst × N connections (20,000) is refused whatever the bucket holds: PUB is answered `error: publish reaches N connections, more than ...`, a chat message to a room that large is dropped; counted and logged as --publish-rate's. With --processes the audience is counted in every worker process, as a publish reaches them all.",
        default: "1000",
        example: "100",
        parse: count_or_off,
        apply: |v, s| {
            s.demo_ws.publish.fanout = match v.count::<u32>()? {
                0 => None,
                n => Some(n),
            };
            Ok(())
        },
    },
    Knob {
        name: "heartbeat-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Framed TCP: close a connection whose peer sent nothing for this long; off disables.",
        details: "",
        default: "off",
        example: "60s",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.heartbeat_timeout(v.duration())),
    },
    Knob {
        name: "write-stall-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "HTTP/1.1 responses (HTTP/2: per stream), and framed TCP and WebSockets without a heartbeat timeout: close a connection whose peer took none of our bytes for this long; off disables.",
        details: "A peer that sends requests and never reads the replies (an HTTP/1.1 client that asks for a large response and never reads it) otherwise holds its connection (a task, its buffers and the kernel's send buffer) for good; nginx's send_timeout is the same bound. The clock starts again whenever a write of ours makes progress and, when it runs out, if the kernel says the peer acknowledged bytes meanwhile: a slow but steady reader is not cut off, and one that stops taking bytes is closed one to two bounds after its last. With --heartbeat-timeout (a WebSocket route's heartbeat timeout) that bounds the stall instead; --write-timeout bounds each whole write instead of either. Close reason write_timeout, counted in megaconn_timeouts_total. HTTP/2 (with --write-timeout off): a stream whose client gives its response no room in its flow-control windows for this long is reset (RST_STREAM CANCEL), also counted. Message connections without a heartbeat of the server's (SSE streams, an axum Sse response included, axum_ws sockets, framed TCP without --heartbeat-timeout, WebSocket routes with theirs off; not the demo's WebSockets, whose heartbeat timeout closes a silent peer) also get the kernel's bound on bytes their peer leaves unacknowledged, TCP_USER_TIMEOUT (Linux): 2 × this + 1 s (121 s at the default), or 2 × --write-timeout + 1 s when that is set, and 121 s with both off. A peer gone without a FIN (a phone off the network) is cut that long after the first bytes it did not acknowledge (a push, a keep-alive comment), as io_error, instead of after the kernel's ~16 minutes of retransmission. Twice the bound, so that where a write of ours waits, this bound ends it first with its own close reason.",
        default: "60s",
        example: "5m",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.write_stall_timeout(v.duration())),
    },
    Knob {
        name: "http2-max-stalled-streams",
        value_name: "N",
        shape: Shape::One,
        help: "HTTP/2: the most streams of one connection whose response may wait for the client's flow-control window before its first byte; 0 disables.",
        details: "A client may keep its windows shut (SETTINGS_INITIAL_WINDOW_SIZE 0, no WINDOW_UPDATE: CVE-2019-9517's internal data buffering); each stream whose response it will not take then holds its exchange until --write-stall-timeout resets it (~4.4 KB a stream: ~560 KB a connection at the default 128 concurrent streams, were there no such limit; ~1 MB at 250). Past it the connection takes no new stream until one of them gets room or ends: its next requests wait unprocessed (nothing is reset; a client whose downloads wait for its own small window only sees its next requests wait for it too). Counted in megaconn_limit_hits_total{limit=\"http2_max_stalled_streams\"} once each time a connection reaches it, and logged.",
        default: "32",
        example: "8",
        parse: count,
        apply: |v, s| {
            let n = v.count::<u32>()?;
            s.builder(|b| b.http2_max_stalled_streams(Some(n)))
        },
    },
    Knob {
        name: "http2-max-unread-body-bytes",
        value_name: "SIZE",
        shape: Shape::One,
        help: "HTTP/2: the most request body a client may send on one connection ahead of its handlers reading it, all its streams together (its flow-control windows are capped at it); at least 65535 bytes, the window every connection starts with.",
        details: "A client that sends request bodies no handler reads made the server hold up to the connection window, 1 MiB (~1.1 MiB a connection with buffers: 400 connections took the server from 12 to 456 MB, bench/ATTACK-MEMORY.md). Past this, the client waits for a handler to read: nothing is reset or closed. Counted in megaconn_limit_hits_total{limit=\"http2_max_unread_body_bytes\"} once a connection, the first time its unread DATA reaches it, and logged. Each stream's window is capped at half of it, so one body left unread leaves the other half to the connection's other uploads. The price: an upload to a handler that reads moves at most half of it per round trip (at 128KiB: ~6.5 MB/s over a 10 ms path); raise it for large uploads over long paths.",
        default: "128KiB",
        example: "1MiB",
        parse: size,
        apply: |v, s| {
            let n = u32::try_from(v.bytes()).map_err(|_| "too large".to_string())?;
            s.builder(|b| b.http2_max_unread_body_bytes(n))
        },
    },
    Knob {
        name: "http2-max-grown-stream-window",
        value_name: "SIZE",
        shape: Shape::One,
        help: "HTTP/2: the largest receive window an upload's stream grows to while its handler keeps up with it; 0 disables (every stream keeps the window it starts with, half of --http2-max-unread-body-bytes); at most 2^31 - 1 bytes.",
        details: "An upload moves at most one window per round trip: the 64 KiB a stream starts with is ~1.3 MB/s over a 50 ms path, 4 MiB ~80 MB/s (an 8 MiB upload over 50 ms: 7.1 s with 64 KiB, 0.52 s grown; bench/H2-UPLOAD.md). Each time the handler has read a whole window and waits for more, the window doubles, up to this, and the connection's window grows by as much. A window the handler keeps up with holds nothing unread; a handler that then stops reading leaves up to this much of its stream's body waiting in the server, beyond --http2-max-unread-body-bytes, all streams together within --http2-grown-windows-budget.",
        default: "4MiB",
        example: "1MiB",
        parse: size,
        apply: |v, s| {
            // Past u32, the library's check refuses it with its bound.
            let n = u32::try_from(v.bytes()).unwrap_or(u32::MAX);
            s.builder(|b| b.http2_max_grown_stream_window(n))
        },
    },
    Knob {
        name: "http2-grown-windows-budget",
        value_name: "SIZE",
        shape: Shape::One,
        help: "HTTP/2: what all uploads' stream windows may have grown by together (--http2-max-grown-stream-window), per worker process; 0 disables growth.",
        details: "Bounds what uploads whose handlers kept up, then stopped reading, can make the server hold beyond --http2-max-unread-body-bytes a connection, however many connections there are (400 connections at 4 MiB each would be 1.6 GB). A stream's growth comes back when its body ends or is dropped. Past it a window does not grow (its upload goes on at the pace of the window it has; nothing is refused or reset): each growth refused is counted in megaconn_limit_hits_total{limit=\"http2_grown_windows_budget\"} and logged (one line per 5 s per worker); megaconn_http2_grown_windows_bytes is what is in use.",
        default: "64MiB",
        example: "256MiB",
        parse: size,
        apply: |v, s| {
            let n = v.bytes();
            s.builder(|b| b.http2_grown_windows_budget(n))
        },
    },
    Knob {
        name: "http2-max-send-buffer",
        value_name: "SIZE",
        shape: Shape::One,
        help: "HTTP/2: the response bytes a stream holds queued for its client before its body is polled for more; between 1 byte and 2^31 - 1.",
        details: "A stream is granted room by the client's windows (a browser's are 6 MiB) until it has this much queued, so a slow client's download holds this much all the time, beside the body's frame in hand: at 256KiB a slow h2c download of 64 KiB chunks took 413 KB of RSS, at 64KiB 220 KB (bench/FILES.md). Smaller than the body's frames, a stream waits for room in the middle of each frame (a fast download at 32KiB with 64 KiB chunks: 598 MB/s against 746). Larger may help a fast download over a long round trip, which the socket's send buffer does not cover.",
        default: "64KiB",
        example: "256KiB",
        parse: size,
        apply: |v, s| {
            // Past u32, the library's check refuses it with its bound.
            let n = u32::try_from(v.bytes()).unwrap_or(u32::MAX);
            s.builder(|b| b.http2_max_send_buffer(n))
        },
    },
    Knob {
        name: "message-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Framed TCP and the demo's WebSockets: how long one message may take from its first byte to its last; off disables.",
        details: "Bounds a peer that begins a frame (a WebSocket message, with its fragments) and then trickles it: its bytes do not restart the clock, and a connection in the middle of a message holds a read buffer and cannot park. Past it a WebSocket gets close 1008 and framed TCP is closed (close reason message_timeout, counted in megaconn_timeouts_total). A message begun in the same read as one ends keeps the earlier one's time unless the peer brought 8 KiB, or 137 B/s, since it started. A 1 MiB WebSocket message (the library's default bound; the demo's routes take 64 KiB) needs about 17.5 KB/s to finish in 60 s: raise it for larger, slower uploads.",
        default: "60s",
        example: "5m",
        parse: duration_or_off,
        apply: |v, s| {
            let bound = v.duration();
            s.demo_ws.message_timeout = Some(bound);
            s.builder(|b| b.message_timeout(bound))
        },
    },
    Knob {
        name: "delivery-rate",
        value_name: "PER_SECOND",
        shape: Shape::One,
        help: "Framed TCP and WebSocket: connections each worker reaches per second with one publish or broadcast.",
        details: "A broadcast goes a few hundred connections at a time, heartbeats served in between; a rate also pauses between those slices, so a broadcast to many connections takes longer but leaves CPU for the heartbeats. Later messages wait their turn, up to --hub-queue per worker; past it they are dropped and counted (megaconn_limit_hits_total{limit=\"hub_queue\"}). Per worker thread (and per worker process with --processes). megaconn_message_deliveries_pending shows what is left.",
        default: "unlimited",
        example: "20000",
        parse: rate,
        apply: |v, s| s.builder(|b| b.delivery_rate(Some(v.ratio()))),
    },
    Knob {
        name: "hub-queue",
        value_name: "N",
        shape: Shape::One,
        help: "Framed TCP and WebSocket: messages of the hub (publish, broadcast, push) that may wait for each worker to deliver them.",
        details: "A message that finds its worker's queue full is dropped for that worker (the publisher is not held up), counted in megaconn_limit_hits_total{limit=\"hub_queue\"} and logged; megaconn_message_hub_queued shows the queues' length. Per worker thread (and per worker process with --processes).",
        default: "65536",
        example: "1024",
        parse: count,
        apply: |v, s| {
            let n = at_least_one(v.count()?)?;
            s.builder(|b| b.hub_queue(n))
        },
    },
    Knob {
        name: "hub-queue-bytes",
        value_name: "SIZE",
        shape: Shape::One,
        help: "Framed TCP and WebSocket: bytes of hub messages (payloads and entries) that may wait for each worker to deliver them.",
        details: "Bounds the memory of --hub-queue's messages: a message that would take its worker's queue past it is dropped for that worker and counted as --hub-queue's are (megaconn_limit_hits_total{limit=\"hub_queue\"}); one larger than the bound still goes into an empty queue, alone. A publish counts its payload in each worker's queue. Per worker thread (and per worker process with --processes).",
        default: "32MiB",
        example: "4MiB",
        parse: size,
        apply: |v, s| {
            let n = v.bytes_usize()?;
            s.builder(|b| b.hub_queue_bytes(n))
        },
    },
    Knob {
        name: "max-subscriptions",
        value_name: "N",
        shape: Shape::One,
        help: "Framed TCP and WebSocket: the most topics one connection may subscribe to.",
        details: "A subscription to a new topic past it is refused (the demo answers `error: ...`; the connection stays open), counted in megaconn_limit_hits_total{limit=\"max_subscriptions\"} and logged. Each subscription holds about 270 bytes of its worker's memory while the connection is open, parked or not (bench/subscribe-memory.sh). 0 refuses every subscription.",
        default: "128",
        example: "1024",
        parse: count,
        apply: |v, s| {
            let n = v.count()?;
            s.builder(|b| b.max_subscriptions(n))
        },
    },
    Knob {
        name: "max-topic-bytes",
        value_name: "SIZE",
        shape: Shape::One,
        help: "Framed TCP and WebSocket: the longest topic name a connection may subscribe to.",
        details: "A subscription to a longer name is refused (the demo answers `error: ...`; the connection stays open), counted in megaconn_limit_hits_total{limit=\"max_topic_bytes\"} and logged. A subscription keeps its topic's name while the connection is open, parked or not: without the bound 1,024 names of 8,000 bytes held 8 MiB per connection. With --processes above 1, names over 255 bytes cannot cross between processes: such a publish is refused, so keep it at 255 or below.",
        default: "255B",
        example: "1KiB",
        parse: size,
        apply: |v, s| {
            let n = v.bytes_usize()?;
            s.builder(|b| b.max_topic_bytes(n))
        },
    },
    Knob {
        name: "topic-metrics",
        value_name: "TOPICS",
        shape: Shape::One,
        help: "Framed TCP and WebSocket: topics counted one by one on /metrics, comma-separated: megaconn_topic_subscribers{topic} (subscriptions now, exact) and megaconn_topic_publishes_total{topic} (publishes the hub took).",
        details: "At most 256 topics (MAX_TOPIC_METRICS); every topic not named is summed in topic=\"other\", which therefore cannot be named. Named, not every topic, so that the series stay as few as chosen whatever the fleet: a gateway whose million devices each have a topic of their own names its few fleet-wide topics and sees the devices' as other. Each subscribe, leave and publish looks the name up among those named. With --processes above 1 the supervisor's /metrics shows them for the whole server: subscribers summed, publishes the largest count of one process (every process's hub takes each publish).",
        default: "none",
        example: "fleet,firmware",
        parse: topic_list,
        apply: |v, s| s.builder(|b| b.topic_metrics(topics(&v.text()))),
    },
    Knob {
        name: "message-send-buffer",
        value_name: "SIZE",
        shape: Shape::One,
        help: "Framed TCP, WebSocket and HTTP/1.1 server-sent-event streams (text/event-stream): each connection's kernel send buffer (SO_SNDBUF, which Linux doubles); 0 leaves the kernel's autotuning.",
        details: "Bounds what the kernel holds for a peer that stops reading: once its buffer is full a publish closes it as a slow consumer (close reason slow_consumer). With the autotuning each socket took up to tcp_wmem's maximum (4 MiB by default) first: 1,000 /ws/chat clients that read nothing held 2.3 GB of kernel memory for 6 MB published. Raise it for peers that are only bursty, or far away and streaming fast (a connection moves about twice this per round trip).",
        default: "256KiB",
        example: "1MiB",
        parse: size,
        apply: |v, s| {
            let n = v.bytes_usize()?;
            s.builder(|b| b.message_send_buffer_size((n > 0).then_some(n)))
        },
    },
    Knob {
        name: "workers",
        value_name: "N",
        shape: Shape::One,
        help: "Worker threads (one runtime and listener each).",
        details: "",
        default: "the number of CPUs",
        example: "7",
        parse: count,
        apply: |v, s| {
            let n = at_least_one(v.count()?)?;
            s.builder(|b| b.workers(n))
        },
    },
    Knob {
        name: "read-header-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Time to receive a request head; off disables.",
        details: "Counted from accept, or from the first byte of the next keep-alive request.",
        default: "10s",
        example: "3s",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.read_header_timeout(v.duration())),
    },
    Knob {
        name: "read-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Time to receive a request body after its head; off disables.",
        details: "",
        default: "off",
        example: "30s",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.read_timeout(v.duration())),
    },
    Knob {
        name: "write-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Time to write one response; off disables.",
        details: "Also bounds each write of a WebSocket or framed TCP message (and an axum_ws socket's sends), instead of --write-stall-timeout or a heartbeat timeout. Where it is set, message connections without a heartbeat of the server's (SSE streams, axum_ws sockets, framed TCP without --heartbeat-timeout, WebSocket routes with theirs off) get TCP_USER_TIMEOUT (Linux) = 2 × this + 1 s instead of 2 × --write-stall-timeout + 1 s: a peer gone without a FIN is cut that long after the first bytes it did not acknowledge, as io_error (with both off, 121 s).",
        default: "off",
        example: "30s",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.write_timeout(v.duration())),
    },
    Knob {
        name: "idle-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Keep-alive wait for the next request; off disables.",
        details: "With --read-timeout off, also how long a handler's body read may wait for bytes that do not come (the read fails, HTTP/1.1 answers 408 and closes; counted in megaconn_timeouts_total).",
        default: "60s",
        example: "5m",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.idle_timeout(v.duration())),
    },
    Knob {
        name: "min-request-body-rate",
        value_name: "BYTES_PER_SECOND",
        shape: Shape::One,
        help: "HTTP/1.1 and HTTP/2: the slowest a client may send a request body while its handler waits for it, in bytes a second; off disables.",
        details: "Each byte earns the client 1/rate s of the handler's waiting; it starts with 5 s (Builder::min_request_body_rate_grace) and banks at most 60 s. A wait that spends what is left fails the handler's body read: 408 if the response has not begun; HTTP/1.1 then closes the connection (read_timeout; a response begun, just the close), HTTP/2 ends only the stream (RST_STREAM(NO_ERROR) after the 408, RST_STREAM(CANCEL) if the response had begun) and serves on; counted in megaconn_timeouts_total and megaconn_limit_hits_total{limit=\"min_request_body_rate\"}, logged with the peer. Only the handler's waits count: a handler that reads slowly costs its client nothing. --idle-timeout bounds one silence; without a rate a client sending a byte every 20 s held its connection for good. A client that waits for the server's answer before it sends more (a duplex stream over one request) is cut by it: off for such a service. Kestrel's default.",
        default: "240",
        example: "1000",
        parse: count_or_off,
        apply: |v, s| {
            let n = v.count::<u32>()?;
            s.builder(|b| b.min_request_body_rate(Some(n)))
        },
    },
    Knob {
        name: "park-after",
        value_name: "DURATION",
        shape: Shape::One,
        help: "How long a keep-alive connection idles as a task before it is parked.",
        details: "A connection answered without waiting parks at once: a woken parked one (a heartbeat), and a new cleartext HTTP/1.1 one whose opening request came with it. A parked connection leaves the runtime: 13-17 B of server memory per connection at a million by PSS (36-56 B by RSS in the quiet runs since 2026-12-04 in bench/MILLION.md), 33-93 B at 15,000 in one process (the runs in README, \"The idle-memory figures and how each was measured\"); off keeps every idle connection a task (~2 KB each, bench/ALLOCATORS.md).",
        default: "2s",
        example: "500ms",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.park_idle_after(v.duration())),
    },
    Knob {
        name: "park-wake-batch",
        value_name: "DURATION",
        shape: Shape::One,
        help: "While parked connections wake often, serve those that wake within this window in one wake-up of the worker; off answers each at once.",
        details: "A worker whose parking lot served a wake-up less than two windows ago stops hearing of parked sockets for one window, then serves all that woke meanwhile in one turn: their requests wait up to the window longer, only while the worker is that busy. At a million connections with 30 s heartbeats, each heartbeat otherwise wakes its worker process alone, which costs about as much as serving it: 20ms took a fifth to a quarter off the server's CPU per heartbeat there, for heartbeat p50/p99 of 11/22 ms; 5ms saved nothing (bench/HEARTBEAT.md). Watch megaconn_parking_wakeups_total against megaconn_connections_wakes_total.",
        default: "off",
        example: "5ms",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.park_wake_batch(v.duration().unwrap_or_default())),
    },
    Knob {
        name: "shutdown-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Graceful shutdown deadline; off (or 0) force-closes at once.",
        details: "",
        default: "30s",
        example: "1m",
        parse: duration_or_off,
        apply: |v, s| {
            let t = v.duration().unwrap_or(Duration::ZERO);
            s.builder(|b| b.shutdown_timeout(t))
        },
    },
    Knob {
        name: "linger-timeout",
        value_name: "DURATION",
        shape: Shape::One,
        help: "How long a connection the server closes may take to write its last bytes and linger before it is closed anyway; off (or 0) does not wait.",
        details: "One bound for a close's steps together: the last response (Connection: close, 408, 413), a slow consumer's last frame and its close 1013, TLS close_notify, then reading and discarding what the peer still sends until it closes its end (at most 256 KiB), so that the close is not a reset that destroys the answer (nginx's lingering close). A close it cuts is counted in megaconn_limit_hits_total{limit=\"linger_timeout\"} and logged. A peer that never reads or never closes holds its connection this long; raise it for slow readers that must get a slow consumer's last frame whole over a long path. Not the 500 ms linger of idle closes at shutdown. Apache httpd lingers 2 s, Go 500 ms after its last response, nginx up to 30 s (lingering_time).",
        default: "2s",
        example: "10s",
        parse: duration_or_off,
        apply: |v, s| {
            let t = v.duration().unwrap_or(Duration::ZERO);
            s.builder(|b| b.linger_timeout(t))
        },
    },
    Knob {
        name: "shutdown-drain-rate",
        value_name: "PER_SECOND",
        shape: Shape::One,
        help: "Connections closed per second at shutdown and at an upgrade's drain (all at once when unset).",
        details: "So that a million clients are not told to reconnect in the same second. Awake WebSocket, framed, SSE and HTTP/2 connections get their goodbye (`1001`, `GOAWAY`) first, at this pace (one in the middle of a message finishes it first), then idle HTTP/1.1 ones and parked ones of every protocol close. Requests arriving meanwhile are served with `Connection: close`. Keep --shutdown-timeout above connections / rate: the rest closes at the deadline. Progress: megaconn_shutdown_drain_pending at a stop; during an upgrade /metrics is the new process's at once (its gauge reads 0), so the draining process logs its progress every 2 s (`draining: N left, M closed`), at a stop too. Without it, a stop or upgrade leaving 1,000 connections or more warns that their clients will reconnect together.",
        default: "unlimited",
        example: "10000",
        parse: count,
        apply: |v, s| {
            let n = at_least_one(v.count::<u32>()?)?;
            s.builder(|b| b.shutdown_drain_rate(Some(n)))
        },
    },
    Knob {
        name: "max-connection-age",
        value_name: "DURATION",
        shape: Shape::One,
        help: "Close a connection older than this at its next idle point (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2), to rebalance after a scale-out.",
        details: "Each connection's limit is drawn between 90% and 100% of it (jitter). Counted in megaconn_connections_aged_out_total; deploy/README.md, scaling past one machine.",
        default: "off",
        example: "30m",
        parse: duration_or_off,
        apply: |v, s| s.builder(|b| b.max_connection_age(v.duration())),
    },
    Knob {
        name: "max-header-bytes",
        value_name: "SIZE",
        shape: Shape::One,
        help: "Largest request head (431 above; 414 for a request line that long), e.g. 64KiB.",
        details: "",
        default: "64KiB",
        example: "16KiB",
        parse: size,
        apply: |v, s| {
            let n = v.bytes_usize()?;
            s.builder(|b| b.max_header_bytes(n))
        },
    },
    Knob {
        name: "max-headers",
        value_name: "N",
        shape: Shape::One,
        help: "Most request headers (431 above).",
        details: "At most 512. HTTP/1.1 and HTTP/2 (pseudo-headers such as :path not counted); counted in megaconn_limit_hits_total{limit=\"max_headers\"}.",
        default: "100",
        example: "50",
        parse: count,
        apply: |v, s| {
            let n = v.count()?;
            s.builder(|b| b.max_headers(n))
        },
    },
    Knob {
        name: "max-body-bytes",
        value_name: "SIZE",
        shape: Shape::One,
        help: "Largest request body (413 above), e.g. 16MiB.",
        details: "",
        default: "16MiB",
        example: "1GiB",
        parse: size,
        apply: |v, s| {
            let n = v.bytes();
            s.builder(|b| b.max_body_bytes(n))
        },
    },
    Knob {
        name: "max-connections",
        value_name: "N",
        shape: Shape::One,
        help: "Most concurrent connections.",
        details: "At the limit a worker with a connection waiting closes its longest-idle parked HTTP/1.1 keep-alive connections to make room, or, with none of its own, has another worker close some of its own (counted in megaconn_connections_closed_total{reason=\"evicted\"}); with none anywhere it stops accepting until one closes. For the whole server: with --processes P each worker process takes N/P (rounded up) and makes room among its own connections only; the default is per process.",
        default: "the open-file limit minus 256",
        example: "1000000",
        parse: count,
        apply: |v, s| {
            s.max_connections = Some(at_least_one(v.count()?)?);
            Ok(())
        },
    },
    Knob {
        name: "refuse-at-max-connections",
        value_name: "",
        shape: Shape::Switch,
        help: "At --max-connections with nothing idle to close, refuse new connections (503 with Retry-After) instead of leaving them in the backlog.",
        details: "Without it a connection over the limit waits in the kernel's backlog, its handshake done, hearing nothing until a connection closes or its client gives up: WebSockets and framed connections are never closed to make room, so a server full of them leaves every newcomer waiting (as Go's LimitListener and nginx's worker_connections do). With it, once a round of eviction (100 ms) freed nothing, the newcomer is accepted and refused at once, for 100 ms the ones after it too: on a cleartext HTTP listener answered 503 with Retry-After 1 to 3 s (spread over the refusals) and closed, on a TLS or framed listener closed without an answer; counted in megaconn_limit_hits_total{limit=\"max_connections\"} and logged (limited).",
        default: "off",
        example: "",
        parse: switch,
        apply: |v, s| {
            let on = v.on();
            s.builder(|b| b.refuse_at_max_connections(on))
        },
    },
    Knob {
        name: "backlog",
        value_name: "N",
        shape: Shape::One,
        help: "Listen backlog (capped by net.core.somaxconn).",
        details: "",
        default: "4096",
        example: "65535",
        parse: count,
        apply: |v, s| {
            let n = v.count()?;
            s.builder(|b| b.backlog(n))
        },
    },
    Knob {
        name: "accept-rate",
        value_name: "PER_SECOND",
        shape: Shape::One,
        help: "New connections admitted per second (token bucket).",
        details: "Over it a connection is refused at once and counted: on a cleartext HTTP listener answered 503 with Retry-After (the seconds a worker's bucket takes to refill one token, at least 1, or one of the two seconds after it, spread over the refusals so that they do not all retry together) and closed; on a TLS or framed listener closed without an answer. For the whole server: with --processes P each worker process admits 1/P of it (and of --accept-burst, rounded up).",
        default: "unlimited",
        example: "5000",
        parse: rate,
        apply: |v, s| {
            let Value::Rate(r) = v else {
                unreachable!("not a rate: {v:?}")
            };
            s.accept_rate = Some(r);
            Ok(())
        },
    },
    Knob {
        name: "accept-burst",
        value_name: "N",
        shape: Shape::One,
        help: "Burst allowed by --accept-rate.",
        details: "",
        default: "one second's worth",
        example: "100",
        parse: count,
        apply: |v, s| {
            s.accept_burst = Some(v.count()?);
            Ok(())
        },
    },
    Knob {
        name: "max-connections-per-ip",
        value_name: "N",
        shape: Shape::One,
        help: "Most concurrent connections per client IP (IPv6: per /64).",
        details: "Over it a connection is refused at once and counted: on a cleartext HTTP listener answered 503 with Retry-After: 1 and closed; on a TLS or framed listener closed without an answer. At least 1 (leave it out for no limit). Per process: with --processes P the kernel spreads one IP's connections over the processes (SO_REUSEPORT), so it may hold up to P times N.",
        default: "unlimited",
        example: "1000",
        parse: count,
        apply: |v, s| {
            // The library takes 0 as 1 (a limit that let nothing in would
            // only ever be a mistake); said here rather than done in silence.
            let n = at_least_one(v.count::<u32>()?)
                .map_err(|e| format!("{e} (leave it out for no per-IP limit)"))?;
            s.builder(|b| b.max_connections_per_ip(Some(n)))
        },
    },
    Knob {
        name: "proxy-protocol",
        value_name: "CIDRS",
        shape: Shape::One,
        help: "Read the PROXY protocol (v1, v2) from these load balancers (addresses and CIDR networks, comma-separated).",
        details: "For megaconn behind an AWS NLB, HAProxy (send-proxy-v2), Envoy or an ingress in TCP mode: a connection from one of these sources must start with a PROXY header (before its TLS handshake or first request, within --read-header-timeout), and the client it names is the connection's address from then on: logs, ConnectInfo, OpenTelemetry's client.address, --max-connections-per-ip (counted on the client, not the balancer) and --tls-handshake-rate-per-ip. Without a valid header such a connection is closed, counted in megaconn_proxy_headers_total{result} and logged (limited); a v2 LOCAL header (a health check) or v1 UNKNOWN keeps the socket's address. From any other source no header is read: a client cannot name an address (an HTTP client's PROXY line is answered 400). nginx: listen ... proxy_protocol with set_real_ip_from; Go: pires/go-proxyproto with a policy.",
        default: "off",
        example: "10.0.0.0/8,192.168.1.5",
        parse: trusted_proxies,
        apply: |v, s| {
            let Value::Text(t) = v else {
                unreachable!("not text: {v:?}")
            };
            let trusted = t.parse::<megaconn::TrustedProxies>().map_err(|e| e.to_string())?;
            s.builder(|b| b.proxy_protocol(Some(trusted)))
        },
    },
    Knob {
        name: "no-keep-alive",
        value_name: "",
        shape: Shape::Switch,
        help: "Disable keep-alive (one request per connection).",
        details: "",
        default: "keep-alive on",
        example: "",
        parse: switch,
        apply: |v, s| {
            let off = v.on();
            s.builder(|b| b.keep_alive(!off))
        },
    },
    Knob {
        name: "server-header",
        value_name: "VALUE",
        shape: Shape::One,
        help: "`Server` header value to send.",
        details: "",
        default: "none",
        example: "megaconn",
        parse: text,
        apply: |v, s| {
            let Value::Text(t) = v else {
                unreachable!("not text: {v:?}")
            };
            s.builder(|b| b.server_header(Some(&t)))
        },
    },
    Knob {
        name: "tls-cert",
        value_name: "FILE",
        shape: Shape::One,
        help: "TLS certificate chain (PEM) for every --listen address (or for the --tls-listen ones); needs --tls-key.",
        details: "HTTP/2 is negotiated by ALPN. SIGHUP reloads the certificate and key files.",
        default: "cleartext",
        example: "/etc/megaconn/fullchain.pem",
        parse: path,
        apply: |v, s| {
            s.tls_cert = Some(v.path());
            Ok(())
        },
    },
    Knob {
        name: "tls-key",
        value_name: "FILE",
        shape: Shape::One,
        help: "TLS private key (PEM) matching --tls-cert.",
        details: "",
        default: "none",
        example: "/etc/megaconn/key.pem",
        parse: path,
        apply: |v, s| {
            s.tls_key = Some(v.path());
            Ok(())
        },
    },
    Knob {
        name: "self-signed",
        value_name: "",
        shape: Shape::Switch,
        help: "Serve TLS with a throwaway self-signed certificate for localhost and 127.0.0.1.",
        details: "For trying HTTPS and HTTP/2; clients must skip verification.",
        default: "off",
        example: "",
        parse: switch,
        apply: |v, s| {
            s.self_signed = v.on();
            Ok(())
        },
    },
    Knob {
        name: "tls-kx-groups",
        value_name: "GROUPS",
        shape: Shape::One,
        help: "TLS key-exchange groups offered, comma-separated, in order of preference: x25519, p256, p384.",
        details: "A client that offers none of them fails the handshake (alert handshake_failure). P-384 is left out by default: its key exchange costs the server 4-5 times P-256's (about 1 ms a handshake), and every browser offers X25519 or P-256. SIGHUP applies a changed value from the config file.",
        default: "x25519,p256",
        example: "x25519,p256,p384",
        parse: kx_groups,
        apply: |v, s| {
            let Value::Text(t) = v else {
                unreachable!("not a list of groups: {v:?}")
            };
            s.tls_kx_groups = Some(parse_kx_groups(&t)?);
            Ok(())
        },
    },
    Knob {
        name: "tls-max-handshakes",
        value_name: "N",
        shape: Shape::One,
        help: "The most TLS handshakes one worker computes at once; 0 disables.",
        details: "A handshake counts while the server has work of its own to do on it (its key exchange and signature): from its accept until it waits for the client, and again when the client answers. At the bound the worker stops accepting on its TLS listeners (connections wait in the kernel's backlog) until one is done; established connections and cleartext listeners are served meanwhile, so a flood of ClientHellos queues at most this many handshakes (~0.2 ms each with X25519 and an ECDSA P-256 key) ahead of them. A client that sends nothing holds no place. Counted in megaconn_limit_hits_total{limit=\"tls_handshakes_in_flight\"} each time the bound stops accepting, and logged. SIGHUP applies a changed value from the config file, on the running workers at once. 0, or 2^40 (1099511627776) and over, is unbounded.",
        default: "16",
        example: "64",
        parse: count,
        apply: |v, s| {
            s.tls_max_handshakes = Some(v.count::<usize>()?);
            Ok(())
        },
    },
    Knob {
        name: "tls-handshake-rate-per-ip",
        value_name: "PER_SECOND",
        shape: Shape::One,
        help: "New TLS connections a client IP (IPv6: per /64) may open per second (token bucket, bursts of one second's worth).",
        details: "Over it a connection is closed right after its accept, before any TLS work (a FIN, not a reset), counted in megaconn_limit_hits_total{limit=\"tls_handshake_rate_per_ip\"} and logged. --max-connections-per-ip bounds an IP's connections open at once, not how many handshakes it makes a second: a client replaying a ClientHello and hanging up costs the server a key exchange and a signature each time within any such bound. Browsers open a handful of connections and then resume: a few per second leaves them alone, unless many users share one address (a NAT). With --processes P each worker process admits 1/P of it (the kernel spreads an IP's connections over them). SIGHUP applies a changed value from the config file (an unchanged one keeps each IP's bucket).",
        default: "unlimited",
        example: "20",
        parse: rate,
        apply: |v, s| {
            let Value::Rate(r) = v else {
                unreachable!("not a rate: {v:?}")
            };
            s.tls_handshake_rate_per_ip = Some(r);
            Ok(())
        },
    },
    Knob {
        name: "tls-client-ca",
        value_name: "FILE",
        shape: Shape::One,
        help: "CA certificates (PEM) that TLS clients' certificates must chain to: turns on client certificates (mutual TLS).",
        details: "Every TLS listener then asks clients for a certificate, verified against these roots; a client without one that verifies fails the handshake (rustls' alert: certificate_required, unknown_ca, certificate_expired, ...), counted in megaconn_tls_handshakes_total{outcome=\"client_cert\"} and logged, unless --tls-client-auth optional. Handlers see the chain: the PeerCertificates request extension (HTTP/1.1, HTTP/2), Session::peer_certificates (framed TCP, SSE), WsSession::peer_certificates (WebSocket). SIGHUP reads the file again (and --tls-client-crl); session resumption starts afresh when they changed.",
        default: "off (no client certificates)",
        example: "/etc/megaconn/devices-ca.pem",
        parse: path,
        apply: |v, s| {
            s.tls_client_ca = Some(v.path());
            Ok(())
        },
    },
    Knob {
        name: "tls-client-auth",
        value_name: "MODE",
        shape: Shape::One,
        help: "With --tls-client-ca: required (a client without a certificate that verifies is refused) or optional (one without any is let in; one that sends a bad one is still refused).",
        details: "",
        default: "required",
        example: "optional",
        parse: client_auth_mode,
        apply: |v, s| {
            s.tls_client_auth_optional = Some(v.text() == "optional");
            Ok(())
        },
    },
    Knob {
        name: "tls-client-crl",
        value_name: "FILE",
        shape: Shape::One,
        help: "Certificate revocation lists (PEM, X509 CRL blocks) client certificates are checked against; needs --tls-client-ca.",
        details: "A client's own certificate is checked (not its intermediates'); one whose issuer has no CRL here is let in; refusals are counted by reason in megaconn_tls_client_cert_refusals_total{reason}. A CRL that does not read, that names a root of --tls-client-ca as its issuer but is not signed by it, or whose root has a KeyUsage without cRLSign is refused at startup and at SIGHUP (the error names the file; on SIGHUP the lists that worked stay); one whose nextUpdate is past is used, with a warning naming the file and its nextUpdate. SIGHUP reads the file again: revoke a device, replace the CRL, send SIGHUP (the device's open connections stay open until they close or reach --max-connection-age; new handshakes are checked, and no session resumes past a changed CRL: its resumption is refused and the client makes a full handshake).",
        default: "none",
        example: "/etc/megaconn/devices.crl.pem",
        parse: path,
        apply: |v, s| {
            s.tls_client_crl = Some(v.path());
            Ok(())
        },
    },
    Knob {
        name: "log-format",
        value_name: "FORMAT",
        shape: Shape::One,
        help: "Log format: human or json.",
        details: "",
        default: "human",
        example: "json",
        parse: log_format,
        apply: |v, s| {
            let Value::LogFormat(f) = v else {
                unreachable!("not a log format: {v:?}")
            };
            s.log_format = Some(f);
            Ok(())
        },
    },
    Knob {
        name: "admin",
        value_name: "ADDR",
        shape: Shape::One,
        help: "Admin listener (/metrics, /debug/runtime, /debug/pprof) address, or off.",
        details: "If the default address is taken, the admin listener is skipped with a warning.",
        default: "127.0.0.1:9090",
        example: "0.0.0.0:9090",
        parse: admin_addr,
        apply: |v, s| {
            let Value::Admin(a) = v else {
                unreachable!("not an admin address: {v:?}")
            };
            s.admin = Some(a);
            Ok(())
        },
    },
    Knob {
        name: "debug-connections",
        value_name: "",
        shape: Shape::Switch,
        help: "Keep a live list of connections (peer, worker, state, age, requests) for the admin listener's /debug/connections.",
        details: "Costs an uncontended lock and an ordered insert per connection (and a removal at its close), a lock and a binary search each time one parks or wakes (a wake also allocates its track and its listing's entry), and a few relaxed atomic stores per request. In memory: ~210 B per parked connection against ~36 B without it at 15,000 in one process (its track and its listing, kept while parked; bench/ALLOCATORS.md), so leave it off where a million connections are held.",
        default: "off",
        example: "",
        parse: switch,
        apply: |v, s| {
            let on = v.on();
            s.builder(|b| b.track_connections(on))
        },
    },
    Knob {
        name: "access-log",
        value_name: "",
        shape: Shape::Switch,
        help: "Log one line per request (target megaconn::access: peer, method, path, status, duration, bytes).",
        details: "Keeps a small track per connection for the peer and counts: ~125 B per parked connection against ~36 B without it at 15,000 in one process (bench/ALLOCATORS.md).",
        default: "off",
        example: "",
        parse: switch,
        apply: |v, s| {
            let on = v.on();
            s.builder(|b| b.access_log(on))
        },
    },
    Knob {
        name: "upgrade-socket",
        value_name: "PATH",
        shape: Shape::One,
        help: "Unix socket where this server hands its listening sockets and parked connections to a newer process started with `serve --upgrade` (same flag).",
        details: "The listening sockets stay open throughout, so no connection is refused: this one accepts until the newer process says it is ready, which accepts only from then on (one that fails before takes no connection on the sockets it took over; an address the old one did not have it binds afresh before), and which prints `megaconn upgrade done` once it serves, and its idle cleartext HTTP/1.1 keep-alive connections move without a reconnect. Every other connection (every WebSocket, ws and wss; framed TCP; TLS; HTTP/2) closes in the old process's drain as at a stop, and its client reconnects: the old process's `megaconn handed over` line counts them, and warns from 1,000 on without --shutdown-drain-rate. Only the same user (or root) may take over. With --processes P, worker process k uses PATH.k. `off`: none, for a server never upgraded in place (a container replaced on a rollout), which would otherwise warn at each start where it cannot bind one (a read-only root).",
        default: "$XDG_RUNTIME_DIR (or /tmp)/megaconn-PORT.upgrade.sock, PORT the first listen address's",
        example: "/run/megaconn/upgrade.sock",
        parse: path,
        apply: |v, s| {
            s.upgrade_socket = Some(v.path());
            Ok(())
        },
    },
    Knob {
        name: "pid-file",
        value_name: "PATH",
        shape: Shape::One,
        help: "Write the server's process id to this file once it listens, and remove it at a clean exit.",
        details: "As nginx's `pid`: a file left by a process that was killed is overwritten. With --processes, the supervisor's id (its worker processes write none). An upgrade in place (`serve --upgrade` with the same flag) writes the new process's id once it serves, and the old process leaves the file to it. Its directory must exist (checked before anything listens, and by `serve --check`). Under systemd, Type=notify tells the service manager the same (deploy/README.md).",
        default: "none",
        example: "/run/megaconn/megaconn.pid",
        parse: path,
        apply: |v, s| {
            s.pid_file = Some(v.path());
            Ok(())
        },
    },
    Knob {
        name: "processes",
        value_name: "P",
        shape: Shape::One,
        help: "Worker processes under a supervisor, for hosts whose per-process open-file limit caps connections.",
        details: "Each process has its own listeners and --workers threads. The supervisor restarts one that dies; a worker process (re)starting listens only once everything that can fail has been made (its runtimes, threads, parking lots), so one that fails to start takes no share of the port's connections from the others. One window remains: its listeners are registered with its runtimes right after they listen, and if that fails (out of memory or epoll watches), the connections queued in those microseconds are reset (with net.ipv4.tcp_migrate_req=1, Linux 5.14+, the kernel moves them to the other processes instead).",
        default: "1 (no supervisor)",
        example: "4",
        parse: count,
        apply: |v, s| {
            s.processes = Some(at_least_one(v.count()?)?);
            Ok(())
        },
    },
    Knob {
        name: "otel-endpoint",
        value_name: "URL",
        shape: Shape::One,
        help: "Trace requests with OpenTelemetry: a span per request, sent to this OTLP collector.",
        details: "gRPC: http://HOST:4317; HTTP/protobuf (with --otel-protocol http/protobuf): \
                  http://HOST:4318/v1/traces (or http://HOST:4318: a URL with no path gets /v1/traces, as \
                  OTEL_EXPORTER_OTLP_ENDPOINT does). Tracing is also on when OTEL_EXPORTER_OTLP_ENDPOINT \
                  or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (OTEL_SDK_DISABLED=true or \
                  OTEL_TRACES_EXPORTER=none turn it off); the other standard variables \
                  (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_*, \
                  OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT, ...) are read, and the otel-* knobs win over them. \
                  Spans leave from a bounded queue on a thread of their own: a slow or dead \
                  collector costs spans (megaconn_otel_spans_dropped_total), never requests.",
        default: "off",
        example: "http://127.0.0.1:4317",
        parse: url,
        apply: |v, s| {
            s.otel.endpoint = Some(v.text());
            Ok(())
        },
    },
    Knob {
        name: "otel-protocol",
        value_name: "PROTOCOL",
        shape: Shape::One,
        help: "The OTLP transport: grpc or http/protobuf.",
        details: "",
        default: "grpc (or OTEL_EXPORTER_OTLP_PROTOCOL)",
        example: "http/protobuf",
        parse: otel_protocol,
        apply: |v, s| {
            s.otel.protocol = Some(v.text().parse().map_err(|e| format!("{e}"))?);
            Ok(())
        },
    },
    Knob {
        name: "otel-sample-ratio",
        value_name: "RATIO",
        shape: Shape::One,
        help: "The share of requests traced, from 0 to 1, when the request has no traceparent (one with a traceparent follows its sampled flag, unless OTEL_TRACES_SAMPLER is always_on, always_off or traceidratio: then the ratio decides for every request).",
        details: "An unsampled request costs one header lookup and one random number.",
        default: "1 (or OTEL_TRACES_SAMPLER_ARG)",
        example: "0.01",
        parse: ratio,
        apply: |v, s| {
            s.otel.sample_ratio = Some(v.ratio());
            Ok(())
        },
    },
    Knob {
        name: "otel-service-name",
        value_name: "NAME",
        shape: Shape::One,
        help: "The service.name of the spans.",
        details: "",
        default: "megaconn (or OTEL_SERVICE_NAME)",
        example: "edge",
        parse: text,
        apply: |v, s| {
            s.otel.service_name = Some(v.text());
            Ok(())
        },
    },
    Knob {
        name: "otel-max-queue-spans",
        value_name: "N",
        shape: Shape::One,
        help: "Finished spans that may wait for export; past this they are dropped and counted.",
        details: "",
        default: "2048 (or OTEL_BSP_MAX_QUEUE_SIZE)",
        example: "8192",
        parse: count,
        apply: |v, s| {
            s.otel.max_queue_spans = Some(at_least_one(v.count()?)?);
            Ok(())
        },
    },
];

/// Config keys kept from earlier releases: `keep_alive = false` is
/// `no_keep_alive = true`.
fn legacy_key(key: &str, v: &toml::Value) -> Option<Result<(&'static Knob, Value), String>> {
    (key == "keep_alive").then(|| {
        let knob = by_key("no_keep_alive").expect("no-keep-alive is a knob");
        match v {
            toml::Value::Boolean(b) => Ok((knob, Value::Switch(!b))),
            _ => Err("expected true or false".to_string()),
        }
    })
}

/// The knob key closest to a config file's unknown `key`, if one is close:
/// clap's measure and bar for a mistyped flag (Jaro-Winkler above 0.7), so
/// a file and the command line suggest alike.
fn nearest_key(key: &str) -> Option<String> {
    KNOBS
        .iter()
        .map(|k| k.key())
        .map(|k| (strsim::jaro_winkler(key, &k), k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Knob values by flag name.
pub type Values = BTreeMap<&'static str, Value>;

/// Parses a config file's text: every key must be a knob's.
pub fn parse_file(text: &str) -> Result<Values, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut values = Values::new();
    for (key, v) in &table {
        let (knob, value) = match legacy_key(key, v) {
            Some(r) => r.map_err(|e| format!("key `{key}`: {e}"))?,
            None => {
                let knob = by_key(key).ok_or_else(|| match nearest_key(key) {
                    Some(near) => format!("unknown key `{key}`: did you mean `{near}`? (keys are the serve flags' names with `_` for `-`, see `megaconn serve --help`)"),
                    None => format!("unknown key `{key}` (keys are the serve flags' names with `_` for `-`, see `megaconn serve --help`)"),
                })?;
                let value = knob
                    .value_of_toml(v)
                    .map_err(|e| format!("key `{key}`: {e}"))?;
                (knob, value)
            }
        };
        values.insert(knob.name, value);
    }
    Ok(values)
}

/// The knob values given as flags.
pub fn from_matches(m: &ArgMatches) -> Values {
    KNOBS
        .iter()
        .filter_map(|k| Some((k.name, k.given_in(m)?)))
        .collect()
}

/// Applies flag values over file values over defaults. A value refused
/// here (`0`, a count too large for its setting) is an error naming where
/// it came from, `--flag` or the file's key, as a value that does not
/// parse is.
#[cfg(test)]
pub fn apply(flags: &Values, file: &Values) -> Result<Settings, String> {
    apply_from(flags, file, None)
}

/// [`apply`], with the config file's path (`path`) named in an error
/// about one of its keys: an operator with several files (a unit's, a
/// drop-in's) sees which one to fix.
pub fn apply_from(
    flags: &Values,
    file: &Values,
    path: Option<&std::path::Path>,
) -> Result<Settings, String> {
    let mut settings = Settings::default();
    for knob in KNOBS {
        let Some(v) = flags.get(knob.name).or_else(|| file.get(knob.name)) else {
            continue;
        };
        (knob.apply)(v.clone(), &mut settings)
            .map_err(|e| format!("{}: {e}", origin(knob.name, flags, path)))?;
    }
    Ok(settings)
}

/// Where knob `name`'s value came from, as an error names it: `--name`
/// when the flag gave it (or nothing did), else the config file's key,
/// `` key `name` `` and, when known, `` in config file PATH ``.
pub fn origin(name: &str, flags: &Values, path: Option<&std::path::Path>) -> String {
    if flags.contains_key(name) {
        return format!("--{name}");
    }
    let key = name.replace('-', "_");
    match path {
        Some(path) => format!("key `{key}` in config file {}", path.display()),
        None => format!("key `{key}`"),
    }
}

/// The log format the flags, else the file, chose; `None`: neither did.
pub fn chosen_log_format(flags: &Values, file: &Values) -> Option<LogFormat> {
    match flags.get("log-format").or_else(|| file.get("log-format")) {
        Some(Value::LogFormat(f)) => Some(*f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: crate::serve::ServeArgs,
    }

    fn flags(argv: &[&str]) -> Result<Values, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .map(|w| w.args.flags)
    }

    fn argv(knob: &Knob) -> Vec<String> {
        let mut argv = vec![format!("--{}", knob.name)];
        if knob.shape != Shape::Switch {
            argv.push(knob.example.to_string());
        }
        argv
    }

    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The test each knob gets: its flag parses, its config key is the flag's
    /// name with `_` and gives the same value and the same settings, the value
    /// changes something, and `--help` shows it.
    #[test]
    fn every_knob_has_a_flag_a_config_key_and_help() {
        let help = squash(&Wrapper::command().render_long_help().to_string());
        let short_help = squash(&Wrapper::command().render_help().to_string());
        let default = format!("{:?}", apply(&Values::new(), &Values::new()).unwrap());
        for knob in KNOBS {
            let name = knob.name;
            assert_eq!(knob.key(), name.replace('-', "_"));
            assert!(by_key(&knob.key()).is_some_and(|k| k.name == name));
            let argv = argv(knob);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let from_flag = flags(&argv).unwrap_or_else(|e| panic!("--{name}: {e}"));
            let from_file = parse_file(&knob.example_line())
                .unwrap_or_else(|e| panic!("{}: {e}", knob.example_line()));
            assert_eq!(from_flag.len(), 1, "--{name}");
            assert_eq!(from_flag, from_file, "--{name} and its config key differ");
            let by_flag = format!("{:?}", apply(&from_flag, &Values::new()).unwrap());
            let by_file = format!("{:?}", apply(&Values::new(), &from_file).unwrap());
            assert_eq!(by_flag, by_file, "--{name}");
            assert_ne!(
                by_flag, default,
                "--{name} {} changes nothing",
                knob.example
            );
            assert!(help.contains(&format!("--{name}")), "--help lacks --{name}");
            assert!(
                help.contains(&squash(knob.help)),
                "--help lacks {name}'s help"
            );
            assert!(
                help.contains(&squash(&format!("Default: {}.", knob.default))),
                "--help lacks {name}'s default"
            );
            assert!(
                help.contains(&squash(&knob.example_line())),
                "--help lacks {name}'s config key"
            );
            assert!(
                short_help.contains(&format!("--{name}")),
                "-h lacks --{name}"
            );
        }
    }

    /// Every default `--help` states is what the server does without the
    /// knob: the library's constant where it exports one, the builder's
    /// setting (or the CLI's) where the default is "off" or "unlimited". A
    /// knob with no check here fails the test, so a default cannot drift
    /// from its help (12 of 46 were checked).
    #[test]
    fn help_defaults_are_the_library_defaults() {
        let unset = format!("{:#?}", apply(&Values::new(), &Values::new()).unwrap());
        let otel = format!("{:?}", megaconn::otel::OtlpConfig::default());
        let duration = |text: &str| units::parse_duration(text).unwrap();
        let size = |text: &str| units::parse_size(text).unwrap();
        // The first word, before an "(or OTEL_…)".
        let first = |text: &'static str| text.split_whitespace().next().unwrap();
        // Without the knob, the setting it sets is in this state (`Debug`).
        let left = |field: &str| assert!(unset.contains(field), "{field} not in {unset}");
        for knob in KNOBS {
            let (name, text) = (knob.name, knob.default);
            match name {
                "idle-timeout" => assert_eq!(duration(text), megaconn::DEFAULT_IDLE_TIMEOUT),
                "park-after" => assert_eq!(duration(text), megaconn::DEFAULT_PARK_IDLE_AFTER),
                "read-header-timeout" => {
                    assert_eq!(duration(text), megaconn::DEFAULT_READ_HEADER_TIMEOUT)
                }
                "write-stall-timeout" => {
                    let stall = megaconn::DEFAULT_WRITE_STALL_TIMEOUT;
                    assert_eq!(duration(text), stall);
                    // The kernel's bound it derives (`conn/socket.rs`,
                    // `kernel_bound`): 2 × it + 1 s, 121 s at the default.
                    let kernel = (stall * 2 + Duration::from_secs(1)).as_secs();
                    assert!(knob.details.contains("2 × this + 1 s"));
                    assert!(knob
                        .details
                        .contains(&format!("({kernel} s at the default)")));
                    assert!(knob.details.contains(&format!("{kernel} s with both off")));
                }
                "message-timeout" => {
                    assert_eq!(duration(text), megaconn::DEFAULT_MESSAGE_TIMEOUT);
                    left("message_timeout: None,");
                }
                "shutdown-timeout" => {
                    assert_eq!(duration(text), megaconn::DEFAULT_SHUTDOWN_TIMEOUT);
                    left(&format!("shutdown_timeout: {text},"));
                }
                "linger-timeout" => {
                    assert_eq!(duration(text), megaconn::DEFAULT_LINGER_TIMEOUT);
                    left(&format!("linger_timeout: {text},"));
                }
                "ws-ping-interval" => {
                    let every = megaconn::DEFAULT_WS_PING_INTERVAL;
                    assert_eq!(duration(text), every);
                    // "A peer silent for 2.5 × this is closed (…; 75 s at
                    // the default)".
                    let per_ping = megaconn::HEARTBEAT_TIMEOUT_PER_PING;
                    let timeout = megaconn::DEFAULT_WS_HEARTBEAT_TIMEOUT;
                    let secs = timeout.as_secs();
                    assert!(knob.details.contains(&format!("{per_ping} × this")));
                    assert!(knob.details.contains(&format!("{secs} s at the default")));
                    assert_eq!(every.mul_f64(per_ping), timeout);
                    // The demo's routes keep the library's default.
                    left("ping_interval: None,");
                }
                "max-header-bytes" => {
                    assert_eq!(size(text), megaconn::DEFAULT_MAX_HEADER_BYTES as u64)
                }
                "max-headers" => assert_eq!(size(text), megaconn::DEFAULT_MAX_HEADERS as u64),
                "max-body-bytes" => assert_eq!(size(text), megaconn::DEFAULT_MAX_BODY_BYTES),
                "min-request-body-rate" => {
                    let rate = megaconn::DEFAULT_MIN_REQUEST_BODY_RATE;
                    assert_eq!(size(text), u64::from(rate));
                    // On when the knob is left out.
                    left("min_request_body_rate: Some(");
                }
                "backlog" => assert_eq!(size(text), u64::from(megaconn::DEFAULT_BACKLOG)),
                "hub-queue" => assert_eq!(size(text), megaconn::DEFAULT_HUB_QUEUE as u64),
                "hub-queue-bytes" => {
                    assert_eq!(size(text), megaconn::DEFAULT_HUB_QUEUE_BYTES as u64)
                }
                "max-topic-bytes" => {
                    assert_eq!(size(text), megaconn::DEFAULT_MAX_TOPIC_BYTES as u64)
                }
                "publish-rate" => {
                    assert_eq!(text.parse::<f64>().unwrap(), megaconn::DEFAULT_PUBLISH_RATE);
                    left(&format!(
                        "per_second: {:?},",
                        megaconn::DEFAULT_PUBLISH_RATE
                    ));
                }
                "publish-burst" => {
                    assert_eq!(size(text), u64::from(megaconn::DEFAULT_PUBLISH_BURST));
                    left(&format!("burst: {},", megaconn::DEFAULT_PUBLISH_BURST));
                }
                "publish-fanout" => {
                    assert_eq!(size(text), u64::from(megaconn::DEFAULT_PUBLISH_FANOUT));
                    let compact = unset.replace([' ', '\n'], "");
                    let fanout = format!("fanout:Some({},),", megaconn::DEFAULT_PUBLISH_FANOUT);
                    assert!(compact.contains(&fanout), "{fanout} not in {unset}");
                }
                "max-subscriptions" => {
                    assert_eq!(size(text), megaconn::DEFAULT_MAX_SUBSCRIPTIONS as u64)
                }
                "message-send-buffer" => {
                    assert_eq!(size(text), megaconn::DEFAULT_MESSAGE_SEND_BUFFER as u64)
                }
                "http2-max-unread-body-bytes" => {
                    let n = megaconn::DEFAULT_HTTP2_MAX_UNREAD_BODY_BYTES;
                    assert_eq!(size(text), u64::from(n));
                    left(&format!("max_unread_body: {n},"));
                }
                "http2-max-grown-stream-window" => {
                    let n = megaconn::DEFAULT_HTTP2_MAX_GROWN_STREAM_WINDOW;
                    assert_eq!(size(text), u64::from(n));
                    left(&format!("max_grown_stream_window: {n},"));
                }
                "http2-grown-windows-budget" => {
                    let n = megaconn::DEFAULT_HTTP2_GROWN_WINDOWS_BUDGET;
                    assert_eq!(size(text), n);
                    left(&format!("grown_windows_budget: {n},"));
                }
                "http2-max-send-buffer" => {
                    let n = megaconn::DEFAULT_HTTP2_MAX_SEND_BUFFER;
                    assert_eq!(size(text), u64::from(n));
                    left(&format!("max_send_buffer: {n},"));
                }
                "http2-max-stalled-streams" => {
                    let n = megaconn::DEFAULT_HTTP2_MAX_STALLED_STREAMS;
                    assert_eq!(size(text), u64::from(n));
                    // On when the knob is left out (`{:#?}` puts the
                    // number on a line of its own).
                    left("max_stalled_streams: Some(");
                }
                "otel-max-queue-spans" => {
                    let n = megaconn::otel::DEFAULT_MAX_QUEUE_SPANS;
                    assert_eq!(size(first(text)), n as u64);
                    left("max_queue_spans: None,");
                }
                "max-connections" => {
                    let headroom = megaconn::FD_HEADROOM;
                    assert_eq!(text, format!("the open-file limit minus {headroom}"));
                    left("max_connections: None,");
                }
                "workers" => {
                    let cpus = std::thread::available_parallelism().unwrap();
                    assert_eq!(text, "the number of CPUs");
                    left(&format!("workers: {cpus},"));
                }
                "listen" => assert!(text.starts_with(crate::serve::DEFAULT_LISTEN)),
                "admin" => assert_eq!(text, admin::DEFAULT_ADMIN),
                "upgrade-socket" => {
                    let path = default_upgrade_socket(Some("127.0.0.1:7".parse().unwrap()));
                    assert!(path.ends_with("megaconn-7.upgrade.sock"), "{path:?}");
                    assert!(text.contains("megaconn-PORT.upgrade.sock"), "{text}");
                    left("upgrade_socket: None,");
                }
                "otel-protocol" => {
                    assert_eq!(first(text), "grpc");
                    assert!(otel.contains("protocol: Grpc,"), "{otel}");
                }
                "otel-sample-ratio" => {
                    assert_eq!(first(text), "1");
                    assert!(otel.contains("sample_ratio: 1.0,"), "{otel}");
                }
                // Resolved in `serve.rs` when unset.
                "tcp-framing" => (assert_eq!(text, "lines"), left("tcp_framing: None,")).1,
                "log-format" => (assert_eq!(text, "human"), left("log_format: None,")).1,
                "processes" => {
                    (
                        assert_eq!(text, "1 (no supervisor)"),
                        left("processes: None,"),
                    )
                        .1
                }
                "otel-service-name" => {
                    (
                        assert_eq!(first(text), "megaconn"),
                        left("service_name: None,"),
                    )
                        .1
                }
                // Off unless given: the setting is unset without the knob.
                "read-timeout" => (assert_eq!(text, "off"), left("read_timeout: None,")).1,
                "write-timeout" => (assert_eq!(text, "off"), left("write_timeout: None,")).1,
                "park-wake-batch" => (assert_eq!(text, "off"), left("park_wake_batch: 0ns,")).1,
                "max-connection-age" => {
                    (assert_eq!(text, "off"), left("max_connection_age: None,")).1
                }
                "shutdown-drain-rate" => {
                    (
                        assert_eq!(text, "unlimited"),
                        left("shutdown_drain_rate: None,"),
                    )
                        .1
                }
                "max-connections-per-ip" => {
                    (
                        assert_eq!(text, "unlimited"),
                        left("max_connections_per_ip: None,"),
                    )
                        .1
                }
                "proxy-protocol" => (assert_eq!(text, "off"), left("proxy_protocol: None,")).1,
                "accept-rate" => (assert_eq!(text, "unlimited"), left("accept_rate: None,")).1,
                "accept-burst" => {
                    (
                        assert_eq!(text, "one second's worth"),
                        left("accept_burst: None,"),
                    )
                        .1
                }
                "server-header" => (assert_eq!(text, "none"), left("server_header: None,")).1,
                "no-keep-alive" => (assert_eq!(text, "keep-alive on"), left("keep_alive: true,")).1,
                "debug-connections" => {
                    (assert_eq!(text, "off"), left("track_connections: false,")).1
                }
                "access-log" => (assert_eq!(text, "off"), left("access_log: false,")).1,
                "refuse-at-max-connections" => {
                    (
                        assert_eq!(text, "off"),
                        left("refuse_at_max_connections: false,"),
                    )
                        .1
                }
                "tls-listen" => (assert_eq!(text, "none"), left("tls_listen: [],")).1,
                "tcp-listen" => (assert_eq!(text, "none"), left("tcp_listen: [],")).1,
                "tcp-tls-listen" => (assert_eq!(text, "none"), left("tcp_tls_listen: [],")).1,
                "tls-cert" => (assert_eq!(text, "cleartext"), left("tls_cert: None,")).1,
                "pid-file" => (assert_eq!(text, "none"), left("pid_file: None,")).1,
                "tls-key" => (assert_eq!(text, "none"), left("tls_key: None,")).1,
                "self-signed" => (assert_eq!(text, "off"), left("self_signed: false,")).1,
                "tls-kx-groups" => {
                    let names: Vec<_> = megaconn::DEFAULT_TLS_KX_GROUPS
                        .iter()
                        .map(|g| g.name())
                        .collect();
                    assert_eq!(text, names.join(","));
                    left("tls_kx_groups: None,");
                }
                "tls-max-handshakes" => {
                    let n = megaconn::DEFAULT_TLS_MAX_HANDSHAKES_IN_FLIGHT;
                    assert_eq!(size(text), n as u64);
                    left("tls_max_handshakes: None,");
                }
                "tls-handshake-rate-per-ip" => {
                    (
                        assert_eq!(text, "unlimited"),
                        left("tls_handshake_rate_per_ip: None,"),
                    )
                        .1
                }
                "tls-client-ca" => {
                    (
                        assert_eq!(text, "off (no client certificates)"),
                        left("tls_client_ca: None,"),
                    )
                        .1
                }
                // Required unless said (resolved in `tls.rs`).
                "tls-client-auth" => {
                    (
                        assert_eq!(text, "required"),
                        left("tls_client_auth_optional: None,"),
                    )
                        .1
                }
                "tls-client-crl" => (assert_eq!(text, "none"), left("tls_client_crl: None,")).1,
                "otel-endpoint" => (assert_eq!(text, "off"), left("endpoint: None,")).1,
                // The cap and the summed label the help states are the
                // library's.
                "topic-metrics" => {
                    let cap = megaconn::MAX_TOPIC_METRICS;
                    assert!(knob.details.contains(&format!("At most {cap} topics")));
                    assert!(knob.details.contains("topic=\"other\""));
                    (assert_eq!(text, "none"), left("message: None,")).1
                }
                // The message settings are unset (the library's defaults:
                // no heartbeat timeout, no delivery rate) without either.
                "heartbeat-timeout" | "delivery-rate" => {
                    assert!(matches!(text, "off" | "unlimited"), "--{name} {text}");
                    left("message: None,");
                }
                _ => panic!("--{name}: its default ({text}) is checked against nothing"),
            }
        }
    }

    #[test]
    fn a_file_with_every_key_parses() {
        let text: String = KNOBS.iter().map(|k| k.example_line() + "\n").collect();
        let values = parse_file(&text).unwrap();
        assert_eq!(values.len(), KNOBS.len());
    }

    #[test]
    fn flags_win_over_the_file_and_lists_replace() {
        let file =
            parse_file("workers = 2\nlisten = [\"127.0.0.1:9\"]\nidle_timeout = \"5s\"").unwrap();
        let flags = flags(&[
            "--workers",
            "4",
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:2",
        ])
        .unwrap();
        let s = apply(&flags, &file).unwrap();
        let dbg = format!("{:?}", s.builder);
        assert!(dbg.contains("workers: 4"), "{dbg}");
        assert!(dbg.contains("idle_timeout: Some(5s)"), "{dbg}");
        assert_eq!(s.listen.len(), 2);
    }

    #[test]
    fn durations_and_sizes_use_the_shared_grammar() {
        let v = flags(&[
            "--idle-timeout",
            "30sec",
            "--max-body-bytes",
            "16MiB",
            "--max-header-bytes",
            "65536",
            "--read-timeout",
            "off",
        ])
        .unwrap();
        assert_eq!(
            v["idle-timeout"],
            Value::Duration(Some(Duration::from_secs(30)))
        );
        assert_eq!(v["max-body-bytes"], Value::Size(16 << 20));
        assert_eq!(v["max-header-bytes"], Value::Size(65536));
        assert_eq!(v["read-timeout"], Value::Duration(None));
        // The file takes the same words, and numbers as numbers.
        let f = parse_file("idle_timeout = \"30sec\"\nmax_body_bytes = \"16MiB\"\nmax_header_bytes = 65536\nread_timeout = \"off\"\nshutdown_timeout = 5").unwrap();
        assert_eq!(f["idle-timeout"], v["idle-timeout"]);
        assert_eq!(f["max-body-bytes"], v["max-body-bytes"]);
        assert_eq!(f["max-header-bytes"], v["max-header-bytes"]);
        assert_eq!(f["read-timeout"], v["read-timeout"]);
        assert_eq!(
            f["shutdown-timeout"],
            Value::Duration(Some(Duration::from_secs(5)))
        );
        let err = flags(&["--idle-timeout", "soon"]).unwrap_err().to_string();
        assert!(err.contains("10s"), "{err}");
        let err = parse_file("max_body_bytes = \"16 parsecs\"").unwrap_err();
        assert!(
            err.contains("max_body_bytes") && err.contains("parsecs"),
            "{err}"
        );
    }

    /// An operator's typo in the file gets the key meant, as a mistyped
    /// flag does from clap; a key like none gets no guess.
    #[test]
    fn an_unknown_key_suggests_the_nearest() {
        let err = parse_file("idle_timout = \"5s\"").unwrap_err();
        assert!(err.contains("did you mean `idle_timeout`?"), "{err}");
        let err = parse_file("max_conections = 10").unwrap_err();
        assert!(err.contains("did you mean `max_connections`?"), "{err}");
        let err = parse_file("zzzz = 1").unwrap_err();
        assert!(
            err.contains("unknown key `zzzz`") && !err.contains("did you mean"),
            "{err}"
        );
    }

    /// Every duration knob, by flag and in the file: zero in any spelling
    /// is off, as `0` is, never a zero timeout.
    #[test]
    fn a_zero_duration_in_any_spelling_is_off() {
        let durations = KNOBS
            .iter()
            .filter(|k| matches!((k.parse)(k.example), Ok(Value::Duration(_))));
        let mut seen = 0;
        for knob in durations {
            let (name, key) = (knob.name, knob.key());
            let off = parse_file(&format!("{key} = 0")).unwrap();
            assert_eq!(off[name], Value::Duration(None), "{key} = 0");
            for zero in ["0s", "0ms", "0m", "off"] {
                let file = parse_file(&format!("{key} = {zero:?}")).unwrap();
                assert_eq!(file, off, "{key} = {zero:?}");
                let flag = flags(&[&format!("--{name}"), zero]).unwrap();
                assert_eq!(flag, off, "--{name} {zero}");
            }
            seen += 1;
        }
        assert!(seen >= 10, "only {seen} duration knobs");
    }

    #[test]
    fn no_keep_alive_is_a_config_key_and_keep_alive_still_works() {
        for text in ["no_keep_alive = true", "keep_alive = false"] {
            let s = apply(&Values::new(), &parse_file(text).unwrap()).unwrap();
            assert!(
                format!("{:?}", s.builder).contains("keep_alive: false"),
                "{text}"
            );
        }
        let s = apply(&Values::new(), &parse_file("keep_alive = true").unwrap()).unwrap();
        assert!(format!("{:?}", s.builder).contains("keep_alive: true"));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            ("idle_timeuot = \"5s\"", "idle_timeuot"),
            ("workers = \"many\"", "workers"),
            ("listen = \"127.0.0.1:1\"", "127.0.0.1:1"),
            ("access_log = \"yes\"", "access_log"),
            ("config = \"x.toml\"", "config"),
        ] {
            match parse_file(text) {
                Err(e) => assert!(e.contains(needle), "{text}: {e}"),
                // A single address where a list is expected is accepted.
                Ok(v) => assert_eq!(text, "listen = \"127.0.0.1:1\"", "{v:?}"),
            }
        }
        let e = apply(&Values::new(), &parse_file("workers = 0").unwrap()).unwrap_err();
        assert_eq!(e, "key `workers`: must be at least 1");
    }

    /// `--publish-rate off` (`publish_rate = "off"`) is no limit at all;
    /// `--publish-fanout off` (`"off"`, 0) charges one a publish, whatever
    /// its audience. A rate of 0 is refused with the way to say off (it
    /// meant "the burst, then nothing" to the library).
    #[test]
    fn the_publish_knobs_take_off() {
        let by_flag = flags(&["--publish-rate", "off", "--publish-fanout", "off"]).unwrap();
        let by_file = parse_file("publish_rate = \"off\"\npublish_fanout = \"off\"").unwrap();
        let zero = parse_file("publish_rate = \"OFF\"\npublish_fanout = 0").unwrap();
        for values in [by_flag, by_file, zero] {
            let publish = apply(&values, &Values::new()).unwrap().demo_ws.publish;
            assert!(publish.is_off(), "{values:?}");
            assert_eq!(publish.fanout, None, "{values:?}");
        }
        let default = apply(&Values::new(), &Values::new())
            .unwrap()
            .demo_ws
            .publish;
        assert_eq!(default, megaconn::PublishRate::default());
        assert!(!default.is_off());
        let e = flags(&["--publish-rate", "0"]).unwrap_err().to_string();
        assert!(e.contains("or off"), "{e}");
        let e = parse_file("publish_fanout = \"some\"").unwrap_err();
        assert!(e.contains("publish_fanout") && e.contains("or off"), "{e}");
    }

    /// Every switch takes `=false` on the command line, which turns off
    /// what the config file turned on (`--access-log=false` was a clap
    /// error, so a file's `access_log = true` could not be overridden);
    /// alone it is `true`, as before.
    #[test]
    fn a_switch_is_turned_off_by_its_flag() {
        for knob in KNOBS.iter().filter(|k| k.shape == Shape::Switch) {
            let on = flags(&[&format!("--{}", knob.name)]).unwrap();
            assert_eq!(
                on.get(knob.name),
                Some(&Value::Switch(true)),
                "{}",
                knob.name
            );
            let off = flags(&[&format!("--{}=false", knob.name)]).unwrap();
            assert_eq!(
                off.get(knob.name),
                Some(&Value::Switch(false)),
                "{}",
                knob.name
            );
            let file = parse_file(&format!("{} = true", knob.key())).unwrap();
            let by_file = format!("{:?}", apply(&Values::new(), &file).unwrap());
            let overridden = format!("{:?}", apply(&off, &file).unwrap());
            let default = format!("{:?}", apply(&Values::new(), &Values::new()).unwrap());
            assert_eq!(overridden, default, "{}", knob.name);
            assert_ne!(by_file, default, "{}", knob.name);
            assert!(flags(&[&format!("--{}=maybe", knob.name)]).is_err());
        }
    }

    /// A knob given twice takes the last value, as Go's flags and nginx
    /// do (clap refused the second: "cannot be used multiple times"); a
    /// repeatable one keeps them all.
    #[test]
    fn the_last_of_a_knob_given_twice_wins() {
        for knob in KNOBS {
            let name = knob.name;
            let (first, last) = match knob.shape {
                Shape::Switch => (format!("--{name}"), format!("--{name}=false")),
                _ => continue,
            };
            let v = flags(&[&first, &last]).unwrap_or_else(|e| panic!("--{name}: {e}"));
            assert_eq!(v.get(name), Some(&Value::Switch(false)), "--{name}");
            let v = flags(&[&last, &first]).unwrap();
            assert_eq!(v.get(name), Some(&Value::Switch(true)), "--{name}");
        }
        let v = flags(&["--workers", "2", "--idle-timeout", "5s", "--workers", "3"]).unwrap();
        assert_eq!(v["workers"], Value::Count(3));
        let v = flags(&["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:2"]).unwrap();
        assert!(matches!(&v["listen"], Value::Addrs(a) if a.len() == 2));
    }
}
