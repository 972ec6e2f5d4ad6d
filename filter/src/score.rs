//! Multi-factor scoring: the seed article's weighted sum of latency, load,
//! cost and affinity, with each factor normalised to 0..=1 (1 = best) so the
//! weights mean the same thing whatever the units.
//!
//! - latency: best peak-EWMA ÷ this one's. A destination with no samples yet
//!   is scored at the default RTT (`scheduler.defaultRttMs`), not as the
//!   best: nothing known is not the same as fast (`ewma`).
//! - load: (least in-flight + 1) ÷ (this one's in-flight + 1).
//! - cost: min-max over the candidates (cheapest 1, dearest 0).
//! - affinity: locality closeness to this proxy (same zone 1, same region ½).

use crate::config::FactorWeights;

/// The observed inputs of one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactorInputs {
    /// Peak-EWMA latency in ns (the default RTT before any sample).
    pub latency_ns: f64,
    pub in_flight: u32,
    pub cost: f64,
    /// Precomputed locality closeness, 0..=1.
    pub locality_affinity: f64,
}

/// Write each candidate's score (0..=1) into `out` (same length as `inputs`).
pub fn score_all(weights: &FactorWeights, inputs: &[FactorInputs], out: &mut [f64]) {
    let total = weights.total();
    if total <= 0.0 {
        out.iter_mut().for_each(|s| *s = 1.0);
        return;
    }
    let mut best_latency = f64::INFINITY;
    let mut least_in_flight = u32::MAX;
    let mut min_cost = f64::INFINITY;
    let mut max_cost = f64::NEG_INFINITY;
    for input in inputs {
        best_latency = best_latency.min(input.latency_ns.max(1.0));
        least_in_flight = least_in_flight.min(input.in_flight);
        min_cost = min_cost.min(input.cost);
        max_cost = max_cost.max(input.cost);
    }
    let cost_span = max_cost - min_cost;
    for (input, slot) in inputs.iter().zip(out.iter_mut()) {
        let latency = if best_latency.is_finite() && input.latency_ns.is_finite() {
            best_latency / input.latency_ns.max(1.0)
        } else {
            1.0
        };
        let load = (f64::from(least_in_flight) + 1.0) / (f64::from(input.in_flight) + 1.0);
        let cost = if cost_span > f64::EPSILON {
            1.0 - (input.cost - min_cost) / cost_span
        } else {
            1.0
        };
        let sum = weights.latency * latency
            + weights.load * load
            + weights.cost * cost
            + weights.affinity * input.locality_affinity;
        *slot = (sum / total).clamp(0.0, 1.0);
    }
}

/// Locality closeness of a destination to this proxy: 1 same zone (or same
/// sub-zone), ½ same region, 0 otherwise. Unknown localities are neutral (1)
/// so a config without localities is not skewed.
pub fn locality_affinity(local: Option<&str>, destination: Option<&str>) -> f64 {
    let (Some(local), Some(dest)) = (local, destination) else {
        return 1.0;
    };
    let mut l = local.split('/');
    let mut d = dest.split('/');
    let (lr, dr) = (l.next().unwrap_or(""), d.next().unwrap_or(""));
    if lr.is_empty() || dr.is_empty() {
        return 1.0;
    }
    if lr != dr {
        return 0.0;
    }
    match (l.next(), d.next()) {
        (Some(lz), Some(dz)) if !lz.is_empty() && lz == dz => 1.0,
        _ => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(latency_ms: f64, in_flight: u32, cost: f64) -> FactorInputs {
        FactorInputs {
            latency_ns: latency_ms * 1e6,
            in_flight,
            cost,
            locality_affinity: 1.0,
        }
    }

    #[test]
    fn slower_destination_scores_lower_in_proportion() {
        let w = FactorWeights {
            latency: 1.0,
            load: 0.0,
            cost: 0.0,
            affinity: 0.0,
        };
        let mut out = [0.0; 3];
        score_all(
            &w,
            &[input(1.0, 0, 0.0), input(1.0, 0, 0.0), input(10.0, 0, 0.0)],
            &mut out,
        );
        assert_eq!(out[0], 1.0);
        assert!((out[2] - 0.1).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn unmeasured_destination_scores_at_the_default_rtt_not_as_the_best() {
        let w = FactorWeights {
            latency: 1.0,
            load: 0.0,
            cost: 0.0,
            affinity: 0.0,
        };
        let unmeasured = crate::ewma::PeakEwma::new(30e6, 5e9);
        let mut out = [0.0; 2];
        let mut fresh = input(0.0, 0, 0.0);
        fresh.latency_ns = unmeasured.estimate_ns();
        score_all(&w, &[fresh, input(5.0, 0, 0.0)], &mut out);
        assert_eq!(out[1], 1.0);
        assert!((out[0] - 5.0 / 30.0).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn load_and_cost_normalise() {
        let w = FactorWeights {
            latency: 0.0,
            load: 1.0,
            cost: 1.0,
            affinity: 0.0,
        };
        let mut out = [0.0; 2];
        score_all(&w, &[input(1.0, 0, 1.0), input(1.0, 3, 3.0)], &mut out);
        assert_eq!(out[0], 1.0);
        assert!((out[1] - (0.25 + 0.0) / 2.0).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn equal_inputs_score_equal_whatever_the_weights() {
        let w = FactorWeights::default();
        let mut out = [0.0; 3];
        score_all(&w, &[input(2.0, 1, 4.0); 3], &mut out);
        assert!(out.iter().all(|s| *s == out[0]));
    }

    #[test]
    fn zero_weights_are_neutral() {
        let w = FactorWeights {
            latency: 0.0,
            load: 0.0,
            cost: 0.0,
            affinity: 0.0,
        };
        let mut out = [0.0; 2];
        score_all(&w, &[input(1.0, 0, 0.0), input(9.0, 9, 9.0)], &mut out);
        assert_eq!(out, [1.0, 1.0]);
    }

    #[test]
    fn locality_closeness() {
        assert_eq!(
            locality_affinity(Some("us-east/a"), Some("us-east/a/x")),
            1.0
        );
        assert_eq!(locality_affinity(Some("us-east/a"), Some("us-east/b")), 0.5);
        assert_eq!(locality_affinity(Some("us-east/a"), Some("eu-west/a")), 0.0);
        assert_eq!(locality_affinity(None, Some("eu-west/a")), 1.0);
        assert_eq!(locality_affinity(Some("us-east"), Some("us-east")), 0.5);
    }
}
