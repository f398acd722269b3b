//! A named server's own threads (not its workers) in its errors and in the
//! kernel's list: `Error::Thread` named `megaconn-stall-watch` for a
//! named server's watchdog, whose thread is `NAME-stall-watch`, and the
//! thread that joins the workers stayed `megaconn-join` whatever the name
//! (session 55's review of `Builder::name`). Both now follow the name,
//! and an unnamed server's keep theirs.
//!
//! A real thread limit cannot be made to fail one thread of one server
//! (root, as CI runs, is not held to `RLIMIT_NPROC`), so the start is told
//! to fail it (`Builder::fail_worker_start_for_test`), as for the workers'
//! steps (`start.rs`).

use std::time::Duration;

use crate::common;

use common::{test_app, AppServer, SAFETY};
use megaconn::{Server, WorkerStartFailure};

/// The error a server's start fails with when `step` (one of the server's
/// own threads) cannot start, for a server named `name` (if any).
fn start_failing(name: Option<&str>, step: WorkerStartFailure) -> megaconn::Error {
    let (app, _probe) = test_app();
    let builder = match name {
        Some(name) => Server::builder().name(name),
        None => Server::builder(),
    };
    let server = builder
        .listen_on("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .stall_threshold(Some(Duration::from_secs(1)))
        .fail_worker_start_for_test(step, 0)
        .listen()
        .unwrap();
    match server.start(app) {
        Ok(_) => panic!("{step:?}: the start did not fail"),
        Err(e) => e,
    }
}

/// Each thread of the server's own that cannot start is named in the
/// error as it would have been named: after the server, or `megaconn-…`.
#[test]
fn a_thread_that_cannot_start_is_named_as_it_would_have_been() {
    for (name, step, thread) in [
        (
            Some("t56"),
            WorkerStartFailure::StallWatchThread,
            "t56-stall-watch",
        ),
        (Some("t56"), WorkerStartFailure::JoinThread, "t56-join"),
        (
            None,
            WorkerStartFailure::StallWatchThread,
            "megaconn-stall-watch",
        ),
        (None, WorkerStartFailure::JoinThread, "megaconn-join"),
    ] {
        let failed = start_failing(name, step);
        assert!(
            matches!(&failed, megaconn::Error::Thread { name, .. } if name == thread),
            "{step:?} of {name:?}: {failed:?}"
        );
        let said = failed.to_string();
        assert!(
            said.starts_with(&format!("cannot start the {thread} thread: ")),
            "{said}"
        );
    }
}

/// A running named server's join thread is `NAME-join` (the kernel's
/// name, its first 15 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_servers_join_thread_carries_its_name() {
    let (app, _probe) = test_app();
    let server = AppServer::one_worker(Server::builder().name("jn56"), app);
    // A thread names itself as it starts: looked for until it has, with
    // nothing else to wait on (bounded).
    let found = tokio::time::timeout(SAFETY, async {
        loop {
            if threads().iter().any(|t| t == "jn56-join") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "no jn56-join thread in {:?}", threads());
    server.summary().await;
}

/// The names of this process's threads, as the kernel keeps them.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .collect()
}
