//! Observation beside the core: close reasons, per-worker counters, Prometheus
//! metrics and lifecycle events. Everything below counts into these; they
//! import nothing from the layers above.

pub(crate) mod alerts;
pub(crate) mod app_registry;
pub(crate) mod by_id;
pub(crate) mod caller_log;
pub(crate) mod chunks;
pub(crate) mod clock;
pub(crate) mod close;
pub(crate) mod families;
pub(crate) mod human;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub(crate) mod process;
pub(crate) mod ratelog;
pub(crate) mod registry;
pub(crate) mod rooms;
pub(crate) mod stats;
pub(crate) mod trace;
