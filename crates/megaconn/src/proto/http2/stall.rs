//! `http2_max_stalled_streams`: how many of a connection's streams may wait
//! for the client's flow-control window before the first byte of their
//! response body, and what happens past it (the memory audit's H1, the
//! "internal data buffering" class of CVE-2019-9517).
//!
//! A client may keep its windows shut (`SETTINGS_INITIAL_WINDOW_SIZE` 0, no
//! `WINDOW_UPDATE`): legal, and each stream whose response it will not take
//! then holds its exchange (the response, its body, h2's stream) for
//! `write_stall_timeout`, 60 s by default. A client that opens streams as
//! fast as they are cancelled made megaconn hold ~1 MB a connection for the
//! 8.5 KB it sent (250 streams × 4.4 KB), 21 GB at the default
//! `max_connections`.
//!
//! ```text
//!  accept ──> unpolled ──> (handler, head) ──> body needs room, none granted
//!                                              yet: stalled ──> first grant,
//!                                                               or the end
//!  the connection takes a new stream only while unpolled + stalled < limit
//! ```
//!
//! Past the limit the connection takes **no new stream** until one of the
//! stalled ones gets room or ends (`write_stall_timeout` resets it): the
//! requests h2 has queued wait there unprocessed (h2 bounds them by
//! `http2_max_concurrent_streams`), as they do while the service is not
//! ready; the connection is still driven (its `WINDOW_UPDATE`s, PINGs and
//! resets are read). Nothing is refused or reset: an honest client whose
//! streams wait for its own window (a small connection window shared by
//! many downloads: h2 hands the room out first come, first served, so the
//! later streams wait for their first byte) only sees its next requests
//! wait for that same window, in order. Refusing a stream whose handler
//! ran would be wrong (`REFUSED_STREAM` says it was not processed, RFC
//! 9113 §8.7) and resetting it would fail a request an honest client made.
//!
//! Only a wait for the *first* room counts: a stream that sent part of its
//! body is a download in progress, and one that waits on a slow socket
//! (h2's send buffer full) got room before. Streams accepted but not yet
//! polled count too, so that a burst of new streams (h2 hands over all it
//! read before any exchange runs) cannot all stall at once past the limit.
//!
//! Every wait for room ends here too ([`StallGate::room`]): a grant of a
//! few bytes while more of the response waits is a round of a window
//! opened a few bytes at a time, counted against the connection's drip
//! budget (`flood.rs`, [`HTTP2_WINDOW_DRIP_BUDGET`](super::HTTP2_WINDOW_DRIP_BUDGET)).

use std::cell::Cell;
use std::sync::Arc;
use std::task::{Context, Waker};

use super::drip_wait;
use super::flood::FloodBudget;

use crate::conn::context::WorkerContext;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::WorkerStats;

/// One connection's count of streams that wait for their first room, and
/// of new streams not yet run; see the module docs.
pub(super) struct StallGate {
    /// `http2_max_stalled_streams`; `None`: no limit.
    limit: Option<u32>,
    /// Streams taken whose exchange has not run yet.
    unpolled: Cell<u32>,
    /// Streams whose response waits for its first room.
    stalled: Cell<u32>,
    /// The connection loop, while it takes no new stream.
    held: Cell<Option<Waker>>,
    /// The limit was reached and counted, and has not been left since.
    reached: Cell<bool>,
    /// The connection's flood budgets, whose drip budget each wait's grant
    /// may spend ([`room`](Self::room)).
    budget: Arc<FloodBudget>,
}

impl StallGate {
    /// A gate for `limit` stalled streams (`None`: none), on a connection
    /// with `budget`.
    pub(super) fn new(limit: Option<u32>, budget: Arc<FloodBudget>) -> StallGate {
        StallGate {
            limit,
            unpolled: Cell::new(0),
            stalled: Cell::new(0),
            held: Cell::new(None),
            reached: Cell::new(false),
            budget,
        }
    }

    /// A stream's wait for room ended with `granted` bytes of the `wanted`
    /// it waits to send: a drip round if a few bytes of more
    /// ([`drip_wait`]). `Some` if that ran the drip budget out: how long
    /// the stream waits before it sends.
    pub(super) fn room(
        &self,
        granted: usize,
        wanted: usize,
        stats: &WorkerStats,
    ) -> Option<std::time::Duration> {
        drip_wait(&self.budget, stats, granted, wanted)
    }

    /// The connection's flood budgets, for its upgraded streams' writes.
    pub(super) fn budget(&self) -> &Arc<FloodBudget> {
        &self.budget
    }

    /// Whether the connection may take a new stream now. If not, the
    /// connection loop is woken when it may; the first time the stalled
    /// streams alone reach the limit (not a burst of new ones, which is
    /// ordinary), it is counted (`megaconn_limit_hits_total{limit=
    /// "http2_max_stalled_streams"}`) and logged (at most one line per 5 s
    /// per worker).
    pub(super) fn admits(&self, cx: &mut Context<'_>, ctx: &WorkerContext) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        if self.unpolled.get() + self.stalled.get() < limit {
            return true;
        }
        self.held.set(Some(cx.waker().clone()));
        if self.stalled.get() >= limit && !self.reached.replace(true) {
            LimitHit::Http2MaxStalledStreams.count(&ctx.stats);
            ratelog::log(Flood::Http2StalledStreams, |suppressed| {
                tracing::info!(
                    http2_max_stalled_streams = limit,
                    suppressed,
                    "an HTTP/2 client keeps http2_max_stalled_streams responses waiting for room in its flow-control windows; its connection takes no new stream until one gets room or ends"
                )
            });
        }
        false
    }

    /// A new stream was taken (its exchange not yet run).
    pub(super) fn taken(&self) {
        self.unpolled.set(self.unpolled.get() + 1);
    }

    /// A new stream's exchange runs.
    pub(super) fn running(&self) {
        self.unpolled.set(self.unpolled.get().saturating_sub(1));
        self.release();
    }

    /// A stream's response waits for its first room, until the returned
    /// slot drops (room granted, the stream reset or ended).
    pub(super) fn stall(&self) -> StallSlot<'_> {
        self.stalled.set(self.stalled.get() + 1);
        StallSlot(self)
    }

    /// Wakes the connection loop if it held back and may take a stream now.
    fn release(&self) {
        let Some(limit) = self.limit else { return };
        if self.unpolled.get() + self.stalled.get() < limit {
            if self.stalled.get() < limit {
                self.reached.set(false);
            }
            if let Some(waker) = self.held.take() {
                waker.wake();
            }
        }
    }
}

/// A stream counted as stalled while this lives ([`StallGate::stall`]).
pub(super) struct StallSlot<'a>(&'a StallGate);

impl Drop for StallSlot<'_> {
    fn drop(&mut self) {
        let gate = self.0;
        gate.stalled.set(gate.stalled.get().saturating_sub(1));
        gate.release();
    }
}
