//! `megaconn doctor` as an operator runs it: the real binary reads this host's
//! limits. `--json` has every check, a small N passes (exit 0), an absurd N
//! fails the memory check (exit 1), `--help` explains each check, and the table
//! is aligned.

use crate::common;

use std::process::{Command, Output};

/// Every check, by its JSON id.
const CHECKS: [&str; 9] = [
    "open_files",
    "nr_open",
    "file_max",
    "somaxconn",
    "port_range",
    "tcp_mem",
    "conntrack",
    "memory",
    "migrate_req",
];

fn doctor(args: &[&str]) -> Output {
    common::output(
        Command::new(env!("CARGO_BIN_EXE_megaconn"))
            .arg("doctor")
            .args(args),
    )
}

fn json(args: &[&str]) -> (Output, serde_json::Value) {
    let out = doctor(args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out, report)
}

fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

#[test]
fn json_has_every_check() {
    let (out, report) = json(&["--json", "--connections", "1000"]);
    assert_eq!(report["connections"], 1000);
    for id in CHECKS {
        let c = check(&report, id);
        let status = c["status"].as_str().unwrap();
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&status),
            "{id}: {status}"
        );
        for field in ["name", "value", "need"] {
            assert!(c[field].is_string(), "{id} lacks {field}: {c}");
        }
    }
    assert_eq!(report["checks"].as_array().unwrap().len(), CHECKS.len());
    let ready = report["ready"].as_bool().unwrap();
    assert_eq!(out.status.success(), ready, "{report:#}");
    assert_eq!(report["limit_nofile"], "LimitNOFILE=2048");
}

#[test]
fn a_small_number_of_connections_passes() {
    let out = doctor(&["--connections", "100"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("This host can hold 100 connections."),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let (out, report) = json(&["--json", "-n", "100"]);
    assert!(out.status.success());
    assert_eq!(report["ready"], true);
    assert_eq!(check(&report, "memory")["status"], "ok");
}

#[test]
fn an_absurd_number_of_connections_fails_the_memory_check() {
    let n = "1000000000000";
    let (out, report) = json(&["--json", "--connections", n]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(report["ready"], false);
    let memory = check(&report, "memory");
    assert_eq!(memory["status"], "fail", "{memory}");
    assert!(memory["fix"].as_str().unwrap().contains("connections"));
    // And the same in words, with the fixes spelled out.
    let out = doctor(&["--connections", n]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.contains("memory (MemAvailable"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.starts_with("FAIL"), "{row}");
    assert!(stdout.contains("Fixes:"), "{stdout}");
    assert!(stdout.contains("LimitNOFILE="), "{stdout}");
    assert!(
        stdout.contains("cannot hold 1,000,000,000,000 connections"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot hold"));
}

#[test]
fn the_table_is_aligned() {
    let out = doctor(&["--connections", "1000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("check"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let rows = &lines[header..=header + CHECKS.len()];
    // The value column starts at the same offset in every row.
    let value_at = rows[0].find("value").unwrap();
    let name_at = rows[0].find("check").unwrap();
    for row in &rows[1..] {
        let status = &row[..name_at];
        assert!(
            ["ok", "warn", "FAIL", "skip"].contains(&status.trim()),
            "{row}"
        );
        assert_ne!(&row[name_at..name_at + 1], " ", "{row}");
        assert_eq!(&row[value_at - 2..value_at], "  ", "{row}");
        assert_ne!(&row[value_at..value_at + 1], " ", "{row}");
    }
}

#[test]
fn help_explains_every_check() {
    let out = doctor(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for id in CHECKS {
        assert!(help.contains(id), "--help does not explain {id}");
    }
    for words in [
        "--connections",
        "--json",
        "LimitNOFILE",
        "MemAvailable",
        "Exit status",
    ] {
        assert!(help.contains(words), "--help lacks {words}");
    }
}

/// Past what one process can have, `fs.nr_open` and `LimitNOFILE=` are
/// capped at the kernel's maximum (1073741816), and the fix says to split
/// over processes. It used to suggest `fs.nr_open=137438953472`, which the
/// kernel refuses.
#[test]
fn open_file_fixes_stay_within_the_kernel_maximum() {
    let (_, report) = json(&["--json", "--connections", "99999999999"]);
    let nr_open = check(&report, "nr_open");
    if nr_open["status"] == "skip" {
        eprintln!("skipped: no /proc/sys/fs/nr_open here");
        return;
    }
    let fix = nr_open["fix"].as_str().unwrap();
    assert!(fix.contains("fs.nr_open=1073741816"), "{fix}");
    assert!(fix.contains("--processes 94"), "{fix}");
    let out = doctor(&["--connections", "99999999999"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fs.nr_open = 1073741816\n"), "{stdout}");
    assert!(stdout.contains("LimitNOFILE=1073741816"), "{stdout}");
    assert!(!stdout.contains("137438953472"), "{stdout}");
}
