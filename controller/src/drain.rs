//! Destinations without ready endpoints taken out of a policy before it is
//! compiled: what `tideway run` does with what its endpoint watches see
//! ([`crate::run::discovery`]) and what `tideway status` recomputes from
//! the drains the controller reported. Pure, so both agree.

use crate::api::TrafficPolicy;
use k8s_openapi::api::core::v1::Endpoints;
use std::collections::BTreeMap;

/// Ready addresses in an Endpoints object.
pub fn ready_addresses(endpoints: &Endpoints) -> usize {
    endpoints
        .subsets
        .iter()
        .flatten()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum()
}

/// The policy with the destinations whose member has zero ready endpoints
/// taken out (never the last one), and the names of those taken out.
/// `ready(member)` is the member's ready count for the policy's service.
pub fn drain(
    policy: &TrafficPolicy,
    ready: impl Fn(&str) -> Option<usize>,
) -> (TrafficPolicy, Vec<String>) {
    let mut out = policy.clone();
    let drained: BTreeMap<String, String> = policy
        .spec
        .destinations
        .iter()
        .filter(|d| ready(&d.cluster) == Some(0))
        .map(|d| (d.subset().to_string(), d.cluster.clone()))
        .collect();
    if drained.is_empty() || drained.len() == policy.spec.destinations.len() {
        return (out, Vec::new());
    }
    out.spec
        .destinations
        .retain(|d| !drained.contains_key(d.subset()));
    out.spec.failover.retain(|f| !drained.contains_key(f));
    (out, drained.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TrafficPolicy {
        crate::load::policy_from_str(
            r#"
apiVersion: traffic.tideway.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: production}
spec:
  fleet: f
  service: {name: reviews, port: 9080}
  destinations: [{cluster: a}, {cluster: b}, {cluster: c}]
  failover: [b, a, c]
"#,
            "policy",
        )
        .expect("policy")
    }

    #[test]
    fn zero_ready_drains_unknown_keeps_and_the_last_one_stays() {
        let p = policy();
        let (out, drained) = drain(&p, |m| match m {
            "a" => Some(0),
            "b" => None,
            _ => Some(3),
        });
        assert_eq!(drained, vec!["a".to_string()]);
        let left: Vec<&str> = out
            .spec
            .destinations
            .iter()
            .map(|d| d.cluster.as_str())
            .collect();
        assert_eq!(left, ["b", "c"]);
        assert_eq!(out.spec.failover, ["b", "c"]);
        let (out, drained) = drain(&p, |_| Some(0));
        assert!(drained.is_empty());
        assert_eq!(out.spec.destinations.len(), 3);
    }
}
