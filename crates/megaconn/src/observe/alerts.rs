//! The TLS alerts peers end connections with, as a fixed set of labels
//! (`alert` of `megaconn_tls_alerts_received_total`): a peer's alert is its
//! decision (it does not trust our certificate, its user gave up), closed
//! and counted as the client leaving (`client_closed`), so this is where an
//! operator sees *why*, such as `unknown_ca` after a certificate rollout.
//! Counted when one arrives, one relaxed increment in the worker's array.

use std::sync::atomic::AtomicU64;

use crate::observe::stats::{incr, WorkerStats};

/// The alert descriptions of RFC 8446 §6 (TLS 1.3; the TLS 1.2 ones still
/// in use among them), by code, with their names as the RFC spells them.
/// Any other code counts as `other`.
const ALERTS: [(u8, &str); 27] = [
    (0, "close_notify"),
    (10, "unexpected_message"),
    (20, "bad_record_mac"),
    (22, "record_overflow"),
    (40, "handshake_failure"),
    (42, "bad_certificate"),
    (43, "unsupported_certificate"),
    (44, "certificate_revoked"),
    (45, "certificate_expired"),
    (46, "certificate_unknown"),
    (47, "illegal_parameter"),
    (48, "unknown_ca"),
    (49, "access_denied"),
    (50, "decode_error"),
    (51, "decrypt_error"),
    (70, "protocol_version"),
    (71, "insufficient_security"),
    (80, "internal_error"),
    (86, "inappropriate_fallback"),
    (90, "user_canceled"),
    (109, "missing_extension"),
    (110, "unsupported_extension"),
    (112, "unrecognized_name"),
    (113, "bad_certificate_status_response"),
    (115, "unknown_psk_identity"),
    (116, "certificate_required"),
    (120, "no_application_protocol"),
];

/// How many labels there are: one per alert of [`ALERTS`], and `other`.
pub(crate) const COUNT: usize = ALERTS.len() + 1;

/// The label of an alert whose code is not in [`ALERTS`].
const OTHER: &str = "other";

/// The worker's counters, by label (see [`labels`]).
pub(crate) type AlertCounters = [AtomicU64; COUNT];

/// The position of alert `code` among the counters.
fn index(code: u8) -> usize {
    ALERTS
        .iter()
        .position(|&(c, _)| c == code)
        .unwrap_or(ALERTS.len())
}

/// The label of alert `code` (`unknown_ca`, …, or `other`).
pub(crate) fn label(code: u8) -> &'static str {
    ALERTS.get(index(code)).map_or(OTHER, |&(_, name)| name)
}

/// Every label, in counter order.
pub(crate) fn labels() -> impl Iterator<Item = &'static str> {
    ALERTS
        .iter()
        .map(|&(_, name)| name)
        .chain(std::iter::once(OTHER))
}

/// Counts one alert `code` received in the worker's counters.
pub(crate) fn count(code: u8, stats: &WorkerStats) {
    incr(&stats.tls_alerts[index(code)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each alert lands under its own label, an unknown one under `other`,
    /// and there is a label for every counter.
    #[test]
    fn alerts_land_under_their_labels() {
        let stats = WorkerStats::default();
        count(48, &stats);
        count(48, &stats);
        count(255, &stats);
        let counted: Vec<(&str, u64)> = labels()
            .zip(&stats.tls_alerts)
            .map(|(l, c)| (l, c.load(std::sync::atomic::Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(counted, [("unknown_ca", 2), ("other", 1)]);
        assert_eq!(labels().count(), COUNT);
        assert_eq!((label(42), label(21)), ("bad_certificate", "other"));
    }
}
