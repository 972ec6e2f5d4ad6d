//! The controller's Prometheus metrics (`/metrics`, text exposition format),
//! with the `prometheus-client` crate: reconciles by result, reconcile
//! errors, per-member apply latency, and whether this replica leads.
//!
//! Labels are member and policy names only: nothing from a kubeconfig or a
//! Secret is ever a label value.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `applied` (every member has the render), `degraded` (some member
    /// does not), `invalid` (the policy does not compile; nothing applied),
    /// `error` (the hub API failed; retried with backoff).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabel {
    pub member: String,
    /// `applied`, `unreachable`, `conflict`, `rejected`, `failed`, `skipped`.
    pub outcome: String,
}

type HistogramFamily = Family<MemberLabel, Histogram, fn() -> Histogram>;

/// Every metric the controller exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_errors: Counter,
    pub member_apply_seconds: HistogramFamily,
    pub leader: Gauge,
}

fn apply_buckets() -> Histogram {
    // 5 ms … ~20 s: one object on a loopback API server to a whole policy
    // across an ocean.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tideway_controller");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "TrafficPolicy reconciles, by result",
            reconciles.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on the hub API and were retried with backoff",
            reconcile_errors.clone(),
        );
        let member_apply_seconds = HistogramFamily::new_with_constructor(apply_buckets);
        registry.register(
            "member_apply_seconds",
            "Time of one policy's rollout in one member cluster (apply, prune, revision record)",
            member_apply_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            leader.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            reconciles,
            reconcile_errors,
            member_apply_seconds,
            leader,
        }
    }
}

impl Metrics {
    pub fn count_reconcile(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn observe_member(&self, member: &str, outcome: &str, seconds: f64) {
        self.member_apply_seconds
            .get_or_create(&MemberLabel {
                member: member.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(seconds);
    }

    /// The text exposition (`text/plain; version=0.0.4` compatible
    /// OpenMetrics text).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latency_show_in_the_text() {
        let m = Metrics::default();
        m.count_reconcile("applied");
        m.count_reconcile("applied");
        m.reconcile_errors.inc();
        m.observe_member("cluster-a", "applied", 0.02);
        let text = m.encode();
        assert!(
            text.contains("tideway_controller_reconciles_total{result=\"applied\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tideway_controller_reconcile_errors_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tideway_controller_member_apply_seconds_count{member=\"cluster-a\",outcome=\"applied\"} 1"
            ),
            "{text}"
        );
    }
}
