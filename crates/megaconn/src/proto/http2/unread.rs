//! `http2_max_unread_body_bytes`: how much request DATA an HTTP/2
//! connection may make the server hold that no handler has read, and the
//! count and line when a connection reaches it.
//!
//! The bound itself is h2's flow control: the windows a client is given
//! (`h2_builder`) are capped at the budget, a body's reader gives its
//! bytes back as it takes them (`service/h2_body.rs`, `release_capacity`),
//! and h2 frees a dropped or reset stream's unread DATA and gives its
//! bytes back itself. So what h2 holds for unread bodies on a connection
//! is at most the connection window, and a client past it waits for a
//! handler to read; nothing is reset or closed. Before (session 48), the
//! 1 MiB connection window let a client make the server hold ~1.1 MiB a
//! connection (400 connections: 12 → 456 MB) with no count or line.
//!
//! One exception since session 51: a stream whose reader keeps up with
//! its client has its window grown (`service/h2_body.rs`,
//! `RecvBody::kept_up`; the connection's follows, `upload.rs`), as an
//! upload over a long path moves one window per round trip. A window a
//! reader keeps up with holds nothing unread; if the reader then stops,
//! what it let in waits unread: at most `http2_max_grown_stream_window` a
//! stream, and `http2_grown_windows_budget` in all the server's
//! connections beyond this budget.
//!
//! What this module adds is the observation: after each poll of the
//! connection that brought DATA, [`UnreadBudget::look`] asks h2 how much
//! of it is unreleased (our h2 patch's `unreleased_recv_data`, one take of
//! the streams' lock), and the first time that reaches the connection
//! window the connection is counted
//! (`megaconn_limit_hits_total{limit="http2_max_unread_body_bytes"}`) and
//! logged (INFO, at most one line per 5 s per worker). Once a connection,
//! as `http2_window_drip` is: a handler slower than its client's upload
//! reaches the window again and again, which is flow control working, not
//! news. A poll that brought no DATA, or a connection that has not
//! received a window's worth of DATA in all, costs a load and a
//! comparison; a connection already counted, nothing.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::flood::FloodBudget;
use super::Addrs;
use crate::conn::config::Http2Config;
use crate::observe::limits::LimitHit;
use crate::observe::ratelog::{self, Flood};
use crate::observe::stats::WorkerStats;

/// One connection's look-out for its unread DATA reaching the budget: 8
/// bytes in the connection's future (which every open HTTP/2 connection
/// carries; the window is passed at each look).
#[derive(Debug, Default)]
pub(super) struct UnreadBudget {
    /// [`FloodBudget::data_received`] at the last look; `u64::MAX` once
    /// the connection was counted (nothing more to look at).
    seen: u64,
}

impl UnreadBudget {
    /// After a poll of `conn`, whose connection window is `window` now
    /// (`upload.rs`: the budget's, and what its uploads' windows grew by):
    /// counts and logs the connection the first time the DATA h2 holds
    /// unreleased reaches it.
    pub(super) fn look<I>(
        &mut self,
        conn: &h2::server::Connection<I, Bytes>,
        window: u32,
        wire: &FloodBudget,
        stats: &WorkerStats,
        addrs: &Addrs,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let received = wire.data_received();
        if received <= self.seen {
            // No DATA since the last look, or already counted.
            return;
        }
        self.seen = received;
        // Not a window's worth in all: nothing can be unread that did not
        // arrive, and no lock is taken.
        if received < u64::from(window) {
            return;
        }
        let unread = conn.unreleased_recv_data();
        if unread < window {
            return;
        }
        self.seen = u64::MAX;
        LimitHit::Http2MaxUnreadBody.count(stats);
        ratelog::log(Flood::Http2UnreadBody, |suppressed| {
            tracing::info!(
                suppressed,
                unread,
                "an HTTP/2 client from {} sent {window} bytes of request body that no handler has read (http2_max_unread_body_bytes, or the connection window if smaller): it waits until a handler reads (counted once a connection)",
                ratelog::peer_name(addrs.peer())
            )
        });
    }
}

/// The connection window a client is given (`h2_builder`): the configured
/// one, capped by `http2_max_unread_body_bytes`.
pub(super) fn connection_window(cfg: &Http2Config) -> u32 {
    cfg.connection_window.min(cfg.max_unread_body)
}

/// The stream window a client is given: the configured one, capped at
/// half of `http2_max_unread_body_bytes`, so that one body left unread
/// leaves half the budget to the connection's other uploads. Capped at the
/// whole budget, one held body took all of it, and an upload beside it on
/// the same connection waited for that body's handler
/// (`h2::unread_request_bodies_do_not_stall_other_uploads`, whose held
/// handler waits for the upload beside it, never finished).
pub(super) fn stream_window(cfg: &Http2Config) -> u32 {
    cfg.stream_window.min(cfg.max_unread_body / 2)
}
