//! A test's skipped part made visible, shared by the library's tests and the
//! command-line tests (`tests/common/mod.rs` includes this file).

/// Says on the test process's own stderr (past the harness's capture, so a
/// passing run shows it too) that a test skipped a part this host cannot
/// run, and fails instead when `MEGACONN_REQUIRE_ALL_TESTS=1` is set (set
/// nowhere by default): a host meant to run every test cannot then pass by
/// skipping one.
pub fn skip(what: &str) {
    assert!(
        std::env::var("MEGACONN_REQUIRE_ALL_TESTS").as_deref() != Ok("1"),
        "MEGACONN_REQUIRE_ALL_TESTS=1, yet skipped: {what}"
    );
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} (MEGACONN_REQUIRE_ALL_TESTS=1 makes this a failure)"
    );
}
