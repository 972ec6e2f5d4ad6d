//! Names of the filter's metrics.
//!
//! They are proxy-wasm metrics, so Envoy shows them on `/stats` with the
//! `wasmcustom.` prefix (and on `/stats/prometheus` as
//! `envoy_wasmcustom_…`). The service, destination and reason are parts of
//! the name because ABI 0.2.1 metrics carry no tags.

use crate::decision::Reason;

/// Requests routed, by service, destination (`none` for the mesh default)
/// and reason.
pub fn requests(service: &str, destination: Option<&str>, reason: Reason) -> String {
    format!(
        "tideway.requests.{service}.{}.{}",
        destination.unwrap_or("none"),
        reason.as_str()
    )
}

/// Ejections of a destination.
pub fn ejections(service: &str, destination: &str) -> String {
    format!("tideway.ejections.{service}.{destination}")
}

/// Gauge: the number of configurations this VM has accepted.
pub const CONFIG_GENERATION: &str = "tideway.config.generation";
/// Gauge: a stable hash (low 32 bits of FNV-1a) of the accepted config bytes,
/// to see which version each proxy runs.
pub const CONFIG_HASH: &str = "tideway.config.hash";
/// Counter: configurations rejected as invalid.
pub const CONFIG_REJECTED: &str = "tideway.config.rejected";
/// Counter: requests the filter could not decide for (e.g. unreadable
/// headers); they pass untouched to the mesh default.
pub const DECISION_ERRORS: &str = "tideway.decision_errors";
/// Counter: host calls that failed (any status but `Ok`, and `NotFound`
/// from a read, which only means "absent"). Each such failure made the
/// filter decide nothing for what it was doing: the request took the mesh's
/// default route, or the tick's merge waits for the next tick.
pub const HOST_CALL_ERRORS: &str = "tideway.host_call_errors";
/// Gauge: 1 when this proxy's locality is known (from `local.locality` or
/// Envoy's `node.locality`), 0 when it is not and locality scoring and
/// locality-ordered failover are off.
pub const LOCALITY_KNOWN: &str = "tideway.local.locality_known";
/// Counter: spans exported / dropped (span mode).
pub const SPANS_EXPORTED: &str = "tideway.spans.exported";
pub const SPANS_DROPPED: &str = "tideway.spans.dropped";

/// Counter: weights documents a worker adopted (a new version, or one
/// confirmed again after its TTL had run out).
pub const WEIGHTS_ADOPTED: &str = "tideway.weights.adopted";
/// Counter: times the TTL ran out and the static weights applied again.
pub const WEIGHTS_EXPIRED: &str = "tideway.weights.expired";
/// Counter: polls of the weights API that failed (not sent, no answer,
/// reset, timeout, an unexpected status).
pub const WEIGHTS_POLL_ERRORS: &str = "tideway.weights.poll_errors";
/// Gauge: the weights version last adopted (0: static weights).
pub const WEIGHTS_VERSION: &str = "tideway.weights.version";

/// Counter: weights documents or answers rejected, by reason.
pub fn weights_rejected(reason: crate::weights_channel::RejectReason) -> String {
    format!("tideway.weights.rejected.{}", reason.as_str())
}

/// FNV-1a of the config bytes, folded to 32 bits for a gauge.
pub fn config_hash(bytes: &[u8]) -> u64 {
    let h = crate::hash::fnv1a(crate::hash::FNV_OFFSET, bytes);
    (h ^ (h >> 32)) & 0xffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            requests("svc", Some("east"), Reason::Affinity),
            "tideway.requests.svc.east.affinity"
        );
        assert_eq!(
            requests("svc", None, Reason::MeshDefault),
            "tideway.requests.svc.none.mesh_default"
        );
        assert_ne!(config_hash(b"a"), config_hash(b"b"));
        assert!(config_hash(b"abc") <= u64::from(u32::MAX));
    }
}
