//! The connection's side of two things its request bodies do
//! (`service/h2_body.rs`): the growth of a stream's receive window while
//! its reader keeps up (`RecvBody::kept_up`), which the connection window
//! must follow, or a stream window larger than it would go unused; and
//! `min_request_body_rate`'s clock, which does not charge a body's wait
//! while the connection's window is full of other streams' unread bodies
//! (`FullClock`): only this task sees the connection's window.
//!
//! Both after each poll of the connection ([`UploadWindows::after_poll`]),
//! beside `unread.rs`'s look: a load and a comparison when nothing grew
//! and no DATA came; the streams' lock (h2's count of unread DATA) only
//! when DATA came and a window's worth has arrived in all, with the rate
//! on, or while the window is full.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::flood::FloodBudget;
use super::unread::connection_window;
use crate::conn::config::{Http2Config, MAX_WINDOW};
use crate::observe::clock;
use crate::service::h2_body::ConnBodyBytes;

/// One connection's receive window as its bodies' growth and its unread
/// DATA have it: 16 bytes in the connection's future.
#[derive(Debug, Default)]
pub(super) struct UploadWindows {
    /// The growth the connection window was last raised by (the sum of its
    /// streams', `ConnBodyBytes::grown`).
    applied: u32,
    /// The window was full of unread DATA at the last look.
    full: bool,
    /// [`FloodBudget::data_received`] at the last look.
    seen: u64,
}

impl UploadWindows {
    /// The connection window the client is given now, served with `cfg`:
    /// the budget's (`unread::connection_window`) and its streams' growth.
    pub(super) fn window(&self, cfg: &Http2Config) -> u32 {
        connection_window(cfg)
            .saturating_add(self.applied)
            .min(MAX_WINDOW)
    }

    /// After a poll of `conn`, served with `cfg`, whose bodies share
    /// `bodies`: moves the connection window to follow its streams'
    /// growth (h2 sends the `WINDOW_UPDATE`; lowered, it withholds updates
    /// until the unread DATA is under it), and tells `bodies` when the
    /// window becomes full of unread DATA, or stops being full.
    pub(super) fn after_poll<I>(
        &mut self,
        conn: &mut h2::server::Connection<I, Bytes>,
        cfg: &Http2Config,
        wire: &FloodBudget,
        bodies: &ConnBodyBytes,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let grown = bodies.grown();
        if grown != self.applied {
            self.applied = grown;
            conn.set_target_window_size(self.window(cfg));
        }
        if !bodies.clocks_full_window() {
            return;
        }
        let window = self.window(cfg);
        if !self.full {
            // It can only have filled with DATA come since the last look,
            // and only once a window's worth came in all.
            let received = wire.data_received();
            if received == self.seen || received < u64::from(window) {
                return;
            }
            self.seen = received;
        }
        // While full, at each poll: a handler's read that frees room
        // wakes this task (h2 owes the client a WINDOW_UPDATE then).
        let full = conn.unreleased_recv_data() >= window;
        if full != self.full {
            self.full = full;
            bodies.window_full(full, clock::now());
        }
    }
}
