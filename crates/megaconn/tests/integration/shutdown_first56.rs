//! A server told to stop before its `serve` future is first polled: an
//! application that takes a [`ServerHandle`](megaconn::ServerHandle) and
//! calls `shutdown()` first, or polls `serve` late (a `tokio::select!`'s
//! order, a test harness). `serve` returns `Ok` at once, having accepted
//! nothing, as `axum::serve`'s graceful shutdown does when its signal is
//! already complete (its accept loop ends at the signal and it returns
//! `Ok(())`).
//!
//! It failed with `Error::WorkerEnded`, "it panicked", whenever a worker's
//! thread saw the stop before the start handed it its listening sockets
//! (found by session 55's embedding review): nothing had panicked.

use crate::common;

use common::{test_app, SAFETY};
use megaconn::{Server, ShutdownSummary};

/// Starts in a row: each races its workers' threads (which see the stop
/// and end) against the start that hands them their sockets. One lost
/// race was enough to fail.
const ROUNDS: usize = 10;

/// Workers per server: the first ones' threads have the others' making
/// to see the stop in, before their sockets come.
const WORKERS: usize = 4;

/// `serve` after its handle's `shutdown()`: `Ok`, nothing accepted or
/// served, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polled_after_its_handles_shutdown_returns_ok_at_once() {
    for round in 0..ROUNDS {
        let (app, _probe) = test_app();
        let server = Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(WORKERS)
            .listen()
            .unwrap();
        let handle = server.handle();
        handle.shutdown();
        let served = tokio::time::timeout(SAFETY, server.serve(app))
            .await
            .expect("serve returns once stopped");
        match served {
            Ok(summary) => assert_nothing_served(&summary),
            Err(e) => panic!("round {round}: serve after shutdown failed: {e}"),
        }
        assert_eq!(handle.stats().accepted, 0);
    }
}

/// The same in two steps: a start after the handle's `shutdown()` does
/// not fail, and its run ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_its_handles_shutdown_runs_and_ends_at_once() {
    for round in 0..ROUNDS {
        let (app, _probe) = test_app();
        let server = Server::bind("127.0.0.1:0".parse().unwrap())
            .workers(WORKERS)
            .listen()
            .unwrap();
        server.handle().shutdown();
        let started = server
            .start(app)
            .unwrap_or_else(|e| panic!("round {round}: start after shutdown failed: {e}"));
        let summary = tokio::time::timeout(SAFETY, started.run())
            .await
            .expect("the run ends once stopped");
        assert_nothing_served(&summary);
    }
}

fn assert_nothing_served(summary: &ShutdownSummary) {
    assert_eq!(
        (
            summary.accepted,
            summary.requests,
            summary.finished,
            summary.forced
        ),
        (0, 0, 0, 0),
        "{summary:?}"
    );
}
