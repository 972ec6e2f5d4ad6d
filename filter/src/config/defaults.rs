//! What an absent field means: the defaults serde fills in, and the
//! constants they come from.

/// The path the weights API serves, and `weightsSource.path`'s default.
pub const WEIGHTS_PATH: &str = "/v1/weights";

/// The schema version this build understands. A config declaring another
/// version is rejected: the filter must not guess at semantics it lacks.
pub const SCHEMA_VERSION: u32 = 1;

/// The routing header the rendered VirtualService matches on by default.
pub const DEFAULT_ROUTING_HEADER: &str = "x-tideway-destination";

pub(super) fn default_weights_path() -> String {
    WEIGHTS_PATH.to_string()
}
pub(super) fn default_weights_wait_ms() -> u64 {
    30_000
}
pub(super) fn default_weights_lease_ms() -> u64 {
    3_000
}
pub(super) fn default_weights_retry_ms() -> u64 {
    1_000
}
pub(super) fn default_weights_ttl_ms() -> u64 {
    300_000
}
pub(super) fn default_weights_max_bytes() -> u64 {
    1 << 20
}

pub(super) fn default_schema_version() -> u32 {
    SCHEMA_VERSION
}

pub(super) fn default_probe_path() -> String {
    "/".to_string()
}

pub(super) fn default_probe_timeout_ms() -> u64 {
    1_000
}

pub(super) fn default_routing_header() -> String {
    DEFAULT_ROUTING_HEADER.to_string()
}

pub(super) fn default_weight() -> f64 {
    1.0
}

/// The default [`SchedulerConfig::grpc_failure_codes`].
pub const DEFAULT_GRPC_FAILURE_CODES: [u32; 6] = [2, 4, 12, 13, 14, 15];
