//! What the message module's unit tests share (`census_tests.rs`, and the
//! tests of `worker.rs` and `table.rs`): a wire that frames a push as it
//! is, and worker 0's context on a server with a hub or without one. Each
//! test file had its own copy of them.

use std::sync::Arc;

use crate::conn::context::WorkerContext;
use crate::message::wire::Wire;
use crate::observe::stats::WorkerStats;

/// Frames a pushed message as it is (tests that push nothing, or read
/// back exactly what they pushed).
pub(crate) struct Plain;

impl Wire for Plain {
    fn encode(
        &self,
        payload: &bytes::Bytes,
        out: &mut bytes::BytesMut,
    ) -> Result<(), crate::observe::close::FramingError> {
        out.extend_from_slice(payload);
        Ok(())
    }
}

/// Worker 0's context on a one-worker server, with a hub or without one.
pub(crate) fn worker(hub: bool) -> WorkerContext {
    let stats = Arc::new(WorkerStats::default());
    let mut config = crate::conn::config::Config::default();
    if hub {
        let channels = Arc::new(crate::message::hub::HubChannels::new(
            std::slice::from_ref(&stats),
            16,
            1 << 20,
        ));
        crate::message::MessageSettings::update(&mut config, |s| s.hub = Some(channels));
    }
    WorkerContext::new(0, Arc::new(config), stats, None)
}
