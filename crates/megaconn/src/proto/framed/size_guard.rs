//! A regression guard for what every awake framed connection carries: its
//! boxed connection future (`conn::serve`, boxed by `Erased::serve`), as
//! `server/dispatch.rs` guards the HTTP one and `proto/ws/mod.rs` the
//! awake WebSocket one.
//!
//! Why it matters: a parked framed connection keeps only its state in the
//! side table, but an awake one keeps this whole future on the heap, and a
//! reconnect storm (devices back after an outage or a deploy) makes every
//! connection awake at once. Found by review53 (an IoT gateway's review):
//! the future was 11,816 B in release (with a small handler), because the
//! rare lingering close (`message::wake::linger_after_unsent`, a 2 KiB
//! scratch buffer held twice by `CloseBy::within`) sat inline three times:
//! 10,000 devices arriving at ~5,000/s, each answered once, took the
//! process to 113 MB at its peak (VmHWM, one worker), 48–52 MB with the
//! linger boxed (what stays once they parked is another matter: the
//! README's IoT recipe, on a state's heap allocations).

use bytes::Bytes;

use crate::message::session::Session;
use crate::proto::framed::conn;
use crate::proto::framed::handler::FramedHandler;

/// The smallest handler: what is measured is the connection's loop, not
/// a handler's own future (which comes on top, inline).
struct Echo;

impl FramedHandler for Echo {
    type State = ();

    async fn on_message(&self, _: &mut (), frame: Bytes, _: &Session) -> Option<Bytes> {
        Some(frame)
    }
}

/// The bound [`the_awake_framed_future_stays_small`] holds the future to.
const BOUND: usize = 4_300;

fn size_of_future<F, A, B, C, D, E, G, Fut>(_: F) -> usize
where
    F: Fn(A, B, C, D, E, G) -> Fut,
{
    std::mem::size_of::<Fut>()
}

/// Measured when written (review53, debug build, Echo): 11,832 bytes with
/// the lingering close inline, 3,976 once it is boxed; the bound adds ~8%
/// (release with the gateway's handler: 11,816, then 3,960). If it fails,
/// something large went inline across an await (a buffer, or a future an
/// `async` block awaits after taking it by value, which stores it twice):
/// box it, or keep it in a path only a close takes.
#[test]
fn the_awake_framed_future_stays_small() {
    let size = size_of_future(conn::serve::<Echo>);
    eprintln!("awake framed future: {size} bytes");
    assert!(size <= BOUND, "the awake framed future is {size} bytes");
}
