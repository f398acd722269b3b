//! `megaconn serve --topic-metrics` (session 55): the per-topic series of
//! the framed and WebSocket demos (`megaconn_topic_subscribers{topic}`,
//! `megaconn_topic_publishes_total{topic}`), reached from the command line
//! and the config file as every other setting is (one row of
//! `crates/cli/knobs.rs`), refused as the library refuses them. They were
//! the library's only (`Builder::topic_metrics`).

use crate::common;
use crate::ops48_cli::get;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{Serving, CHILD_SAFETY};

/// One line connection to the framed demo.
struct Demo(BufReader<TcpStream>);

impl Demo {
    fn connect(addr: &str) -> Demo {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(CHILD_SAFETY)).unwrap();
        Demo(BufReader::new(conn))
    }

    /// Sends `line`; the next line that comes back.
    fn say(&mut self, line: &str) -> String {
        writeln!(self.0.get_mut(), "{line}").unwrap();
        self.hear()
    }

    fn hear(&mut self) -> String {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }
}

/// The topics named on the command line are counted one by one, every
/// other topic (a device's own) in `other`.
#[test]
fn the_topics_named_by_the_flag_are_counted_on_metrics() {
    let server = Serving::serve_admin(
        "127.0.0.1:0",
        &[
            "--tcp-listen",
            "127.0.0.1:0",
            "--topic-metrics",
            "fleet, firmware",
        ],
    );
    let admin = server.admin_addr();
    let tcp = server.addr("tcp");
    let mut fleet = Demo::connect(&tcp);
    assert_eq!(fleet.say("SUB fleet"), "subscribed: fleet");
    let mut device = Demo::connect(&tcp);
    assert_eq!(device.say("SUB dev-42"), "subscribed: dev-42");
    assert_eq!(device.say("PUB fleet hello"), "published");
    assert_eq!(fleet.hear(), "hello");
    let metrics = get(&admin, "/metrics");
    for series in [
        r#"megaconn_topic_subscribers{topic="fleet"} 1"#,
        r#"megaconn_topic_subscribers{topic="firmware"} 0"#,
        r#"megaconn_topic_subscribers{topic="other"} 1"#,
        r#"megaconn_topic_publishes_total{topic="fleet"} 1"#,
        r#"megaconn_topic_publishes_total{topic="other"} 0"#,
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }
    server.stop();
}

/// The config file's key is the flag's name with `_`, the same list.
#[test]
fn the_config_file_names_them_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("megaconn.toml");
    std::fs::write(&path, "topic_metrics = \"fleet\"\n").unwrap();
    let server = Serving::serve_admin(
        "127.0.0.1:0",
        &[
            "--tcp-listen",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ],
    );
    let admin = server.admin_addr();
    let metrics = get(&admin, "/metrics");
    assert!(
        metrics.contains(r#"megaconn_topic_subscribers{topic="fleet"} 0"#),
        "{metrics}"
    );
    server.stop();
}

/// More than the cap, or `other`, exits 2 saying why (the library's own
/// check); `--help` states the cap and `other`.
#[test]
fn too_many_topics_or_other_are_refused_and_help_says_so() {
    let many: Vec<String> = (0..=megaconn::MAX_TOPIC_METRICS)
        .map(|i| format!("t{i}"))
        .collect();
    let many = many.join(",");
    for (value, why) in [
        ("fleet,other", "cannot name a topic \"other\""),
        (many.as_str(), "more than MAX_TOPIC_METRICS (256)"),
    ] {
        let out = common::output(Command::new(env!("CARGO_BIN_EXE_megaconn")).args([
            "serve",
            "--admin",
            "off",
            "--topic-metrics",
            value,
        ]));
        assert_eq!(out.status.code(), Some(2), "--topic-metrics {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
    let out =
        common::output(Command::new(env!("CARGO_BIN_EXE_megaconn")).args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&out.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("--topic-metrics"), "{help}");
    assert!(help.contains("At most 256 topics"), "{help}");
    assert!(help.contains(r#"topic="other""#), "{help}");
}
