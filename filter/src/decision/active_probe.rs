//! A destination's active re-admission probe: where it is sent and which
//! ejection it is in flight for or passed for. Ejections are told apart
//! by their end time, so a probe passed for one says nothing about the
//! next. The engine's probe calls (`probe`) move it on.

/// A destination's out-of-band re-admission probe (`ServiceConfig::probe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveProbe {
    /// The Envoy cluster the probe is sent to.
    pub cluster: String,
    /// The ejection a probe is in flight for.
    pub(super) in_flight_for: Option<u64>,
    /// The ejection a probe passed for (or that fell back to passive
    /// re-admission because no probe could be sent).
    pub(super) passed_for: u64,
}

impl ActiveProbe {
    pub fn new(cluster: String) -> Self {
        Self {
            cluster,
            in_flight_for: None,
            passed_for: 0,
        }
    }

    /// A probe passed for the ejection ending at `ejected_until_ns`.
    pub(super) fn passed(&self, ejected_until_ns: u64) -> bool {
        self.passed_for == ejected_until_ns
    }
}
