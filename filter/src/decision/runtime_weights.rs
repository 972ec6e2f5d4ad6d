//! Run-time weights: the weights channel's base weights, costs, drain flags
//! and factor weights applied to the engine, and the static ones from the
//! plugin config restored (TTL expiry, or no document).
//!
//! A drained destination gets no new traffic while any undrained one is
//! usable (some weight, not ejected, not half-open): its decision weight is
//! 0 then, so the static split, the score draw, affinity and failover all
//! pass it by. When no undrained destination is usable, drained ones take
//! traffic again at their base weight — draining must not turn an outage of
//! the rest into a failed request. That choice depends on health, which
//! changes between requests, so it is made per decision, and only for a
//! service with a drained destination (a pass over its destinations, no
//! allocation, no host call).

use super::engine::{Engine, Service};
use crate::weights::RuntimeWeights;

impl Engine {
    /// Apply `weights` (checked against this engine's config), or restore
    /// the static weights (`None`).
    pub fn apply_weights(&mut self, weights: Option<&RuntimeWeights>) {
        let defaults = self.config.scheduler.weights;
        for (s, (svc, sc)) in self
            .services
            .iter_mut()
            .zip(&self.config.services)
            .enumerate()
        {
            let over = weights.and_then(|w| w.services.get(s));
            let factors = over
                .and_then(|o| o.factors)
                .or(sc.weights)
                .unwrap_or(defaults);
            svc.weights = factors;
            svc.static_only = factors.latency == 0.0 && factors.load == 0.0;
            for (d, (dest, dc)) in svc
                .destinations
                .iter_mut()
                .zip(&sc.destinations)
                .enumerate()
            {
                let o = over.and_then(|o| o.destinations.get(d).copied().flatten());
                dest.base_weight = o.map_or(dc.weight, |o| o.weight);
                dest.cost = o.map_or(dc.cost, |o| o.cost);
                dest.drained = o.is_some_and(|o| o.drained);
                dest.weight = dest.base_weight;
            }
            svc.any_drained = svc.destinations.iter().any(|d| d.drained);
        }
    }

    /// Whether the engine runs on a document's weights for `service`'s
    /// destination (tests and the decision header read it).
    pub fn is_drained(&self, service: usize, destination: usize) -> bool {
        self.services
            .get(service)
            .and_then(|s| s.destinations.get(destination))
            .is_some_and(|d| d.drained)
    }
}

impl Service {
    /// Set each destination's decision weight for this decision: drained
    /// ones at 0 while an undrained one is usable (see the module doc).
    pub(super) fn set_drained_aside(&mut self, now_ns: u64) {
        let undrained_usable = self
            .destinations
            .iter()
            .any(|d| !d.drained && d.base_weight > 0.0 && !d.is_blocked(now_ns));
        for d in &mut self.destinations {
            d.weight = if d.drained && undrained_usable {
                0.0
            } else {
                d.base_weight
            };
        }
    }
}
