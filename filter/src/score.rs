//! Multi-factor scoring: latency, load, cost and locality-affinity
//! factors, each a ratio in (0, 1] (1 = best), combined as a
//! weighted geometric mean: `score = Π factorᵢ^(wᵢ / Σw)`, then divided by
//! the best candidate's so the best scores 1.
//!
//! Why a product and not a weighted sum: in a sum, factors
//! that do not tell the candidates apart (cost and affinity are equal
//! across most services' destinations) dilute the ones that do — with the
//! default weights a 6× slower destination still scored 0.7 of a fast one,
//! and drew 3% of the traffic. In a product a factor keeps its meaning
//! whatever the others do: a destination twice as slow scores
//! `2^(−w_latency / Σw)` of the fast one, whether or not it is also cheaper
//! or closer. A weight is then an exponent: how many "times better" on one
//! factor is worth one "times better" on another.
//!
//! - latency: best peak-EWMA ÷ this one's. A destination with no samples yet
//!   is scored at the default RTT (`scheduler.defaultRttMs`), not as the
//!   best: nothing known is not the same as fast (`ewma`).
//! - load: 1 unless the destination is hot — its in-flight count + 1 more
//!   than [`HOT_LOAD`] times its own typical count + 1 (a moving average
//!   taken at every decision) — and then that threshold ÷ (in-flight + 1).
//!   Together with the latency factor this is Finagle's and tower's
//!   peak-EWMA cost, latency × (in-flight + 1), with the in-flight count
//!   normalised per destination and used as Prequal uses it, to avoid hot
//!   destinations rather than to rank cold ones: raw counts compared
//!   across destinations that carry very different shares of the traffic
//!   say nothing about which is loaded — a slow destination is idle
//!   *because* it is shunned, and a raw count then scores it up (that is
//!   how LEAST_REQUEST sends 11–13% of requests to a destination 6× slower,
//!   and how this scorer's old raw load term sent it 3%). Relative to its
//!   own history, the count shows what load is for: a destination whose
//!   requests pile up past its usual count (it stalled, or a burst herded
//!   onto it) before its latency samples can show it.
//! - latency counts as equal within [`LATENCY_BAND`] of the best. It is
//!   judged twice, on the peak-EWMA and on the latency floor (`floor`: the
//!   low end of the destination's answers, against the lowest floor), and
//!   the worse of the two counts: a busy proxy adds the same delay to
//!   every answer and squeezes the peak-EWMAs' ratios into the band, where
//!   the floors keep the destinations' own service times apart.
//! - cost: cheapest 1, dearest ½, linear in between (min-max over the
//!   candidates); a factor of 0 would exclude the dearest outright.
//! - affinity: (1 + locality closeness) ÷ 2: same zone 1, same region ¾,
//!   elsewhere ½.

use crate::config::FactorWeights;

/// The observed inputs of one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactorInputs {
    /// Peak-EWMA latency in ns (the default RTT before any sample).
    pub latency_ns: f64,
    /// The latency floor in ns (`floor`); `None` while this worker has
    /// had no answer from the destination.
    pub floor_ns: Option<f64>,
    pub in_flight: u32,
    /// The destination's moving average of the in-flight count its
    /// requests found (`Destination::typical_in_flight`).
    pub typical_in_flight: f64,
    pub cost: f64,
    /// Precomputed locality closeness, 0..=1.
    pub locality_affinity: f64,
}

/// Write each candidate's score (0..=1, the best 1) into `out` (same length
/// as `inputs`).
pub fn score_all(weights: &FactorWeights, inputs: &[FactorInputs], out: &mut [f64]) {
    let total = weights.total();
    if total <= 0.0 || !total.is_finite() {
        out.iter_mut().for_each(|s| *s = 1.0);
        return;
    }
    let (wl, wn, wc, wa) = (
        weights.latency / total,
        weights.load / total,
        weights.cost / total,
        weights.affinity / total,
    );
    let mut min_cost = f64::INFINITY;
    let mut max_cost = f64::NEG_INFINITY;
    let mut best_latency = f64::INFINITY;
    let mut lowest_floor: Option<f64> = None;
    for input in inputs {
        min_cost = min_cost.min(input.cost);
        max_cost = max_cost.max(input.cost);
        best_latency = best_latency.min(peak_of(input));
        if let Some(floor) = floor_of(input) {
            lowest_floor = Some(lowest_floor.map_or(floor, |f: f64| f.min(floor)));
        }
    }
    // Within the band of the best, latency counts as equal: a candidate's
    // latency penalty is how far (in log) it lies beyond the band. Kept as
    // ratios until a candidate is beyond it, so a request to equal
    // destinations takes no logarithm at all (each is ~100 instructions in
    // the wasm module, and this runs per request).
    let peak_band_edge = band_edge(best_latency);
    // The floors are compared against the lowest floor. Not against the
    // floor of the candidate with the best peak-EWMA (the rule before):
    // on a loaded host the busy destinations catch every worker pause in
    // their peaks while a shunned one, sampled once a half-life, catches
    // none, so the shunned slow one had the best peak for seconds at a
    // time, its own floor became the yardstick, and the floors could no
    // longer tell it from the fast ones — the demo sent it half its traffic
    // for two seconds (`steering_sim`, the heavily loaded host). The cost:
    // just after a destination slows down, its floor is still that of its
    // fast days until a few answers raise it, and for that while the
    // healthy ones are judged against it too (it still scores worst, on its
    // peak).
    let floor_band_edge = lowest_floor.map(band_edge);
    let cost_span = max_cost - min_cost;
    // Each candidate's log-score; the best one's is subtracted afterwards,
    // so the factors' own "best" normalisation cancels out and only one
    // pass over the inputs is needed.
    let mut best = f64::NEG_INFINITY;
    for (input, slot) in inputs.iter().zip(out.iter_mut()) {
        let mut log_score = 0.0;
        if wl > 0.0 {
            let mut beyond = peak_of(input) / peak_band_edge;
            if let (Some(edge), Some(floor)) = (floor_band_edge, floor_of(input)) {
                beyond = beyond.max(floor / edge);
            }
            if beyond > 1.0 {
                log_score -= wl * beyond.ln();
            }
        }
        if wn > 0.0 {
            let typical = finite_or(input.typical_in_flight, 0.0).max(0.0);
            let hot_above = HOT_LOAD * (typical + 1.0);
            let load = f64::from(input.in_flight) + 1.0;
            if load > hot_above {
                log_score += wn * (hot_above / load).ln();
            }
        }
        // A factor of 1 (the cheapest, the closest) adds nothing: skip its ln.
        if wc > 0.0 && cost_span > f64::EPSILON {
            let factor = 1.0 - 0.5 * (input.cost - min_cost) / cost_span;
            if factor < 1.0 {
                log_score += wc * factor.ln();
            }
        }
        if wa > 0.0 {
            let closeness = finite_or(input.locality_affinity, 1.0).clamp(0.0, 1.0);
            if closeness < 1.0 {
                log_score += wa * ((1.0 + closeness) * 0.5).ln();
            }
        }
        *slot = log_score;
        best = best.max(log_score);
    }
    for slot in out.iter_mut() {
        *slot = if *slot == best || !best.is_finite() || !slot.is_finite() {
            1.0
        } else {
            (*slot - best).exp().clamp(0.0, 1.0)
        };
    }
}

/// A destination is hot (Prequal's term) when its in-flight count + 1 is
/// more than this many times its typical count + 1; only then does the
/// load factor fall below 1, in proportion. Below it the count is noise
/// around the destination's usual load, and rewarding a destination for
/// being below its usual load would draw traffic back to one that is being
/// shunned for being slow.
pub const HOT_LOAD: f64 = 2.0;

/// Latencies within this factor of the best count as equal. Equal
/// destinations' peak-EWMAs differ by about this much from sampling alone
/// (the estimate follows the recent peaks, and a busier destination sees
/// more of its own tail), so bending the weights inside the band would turn
/// noise into drift away from the base weights; a destination 3× slower is
/// still scored (3 ÷ 1.5)^(−w) of the fast one.
pub const LATENCY_BAND: f64 = 1.5;

/// The latency up to which a candidate counts as equal to the best one
/// (`best_ns`).
fn band_edge(best_ns: f64) -> f64 {
    best_ns * LATENCY_BAND
}

/// The candidate's peak-EWMA in ns, at least 1.
fn peak_of(input: &FactorInputs) -> f64 {
    finite_or(input.latency_ns, 1.0).max(1.0)
}

/// The candidate's latency floor in ns, at least 1; `None` when unknown.
fn floor_of(input: &FactorInputs) -> Option<f64> {
    input
        .floor_ns
        .filter(|f| f.is_finite() && *f > 0.0)
        .map(|f| f.max(1.0))
}

fn finite_or(v: f64, fallback: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        fallback
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
            floor_ns: None,
            in_flight,
            typical_in_flight: 0.0,
            cost,
            locality_affinity: 1.0,
        }
    }

    /// Latency alone decides.
    const LATENCY_ONLY: FactorWeights = FactorWeights {
        latency: 1.0,
        load: 0.0,
        cost: 0.0,
        affinity: 0.0,
    };

    /// A candidate with this peak-EWMA and floor, in ms.
    fn with_floor(peak_ms: f64, floor_ms: f64) -> FactorInputs {
        FactorInputs {
            floor_ns: Some(floor_ms * 1e6),
            ..input(peak_ms, 0, 0.0)
        }
    }

    #[test]
    fn slower_destination_scores_lower_in_proportion() {
        let w = LATENCY_ONLY;
        let mut out = [0.0; 3];
        score_all(
            &w,
            &[input(1.0, 0, 0.0), input(1.0, 0, 0.0), input(10.0, 0, 0.0)],
            &mut out,
        );
        assert_eq!(out[0], 1.0);
        // 10× slower, less the band: 1.5 ÷ 10.
        assert!((out[2] - 1.5 / 10.0).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn a_busy_proxy_squeezes_the_peaks_but_not_the_floors() {
        let w = LATENCY_ONLY;
        // What a saturated Envoy measured for 8, 8 and 24 ms backends: the
        // peak-EWMAs 29, 29 and 40 ms (within the band), the floors about
        // the backends' own times.
        let mut out = [0.0; 3];
        let busy = [
            with_floor(29.0, 8.2),
            with_floor(29.0, 8.3),
            with_floor(40.0, 24.4),
        ];
        score_all(&w, &busy, &mut out);
        assert_eq!(&out[..2], &[1.0, 1.0], "{out:?}");
        let expected = 8.2 * LATENCY_BAND / 24.4;
        assert!((out[2] - expected).abs() < 1e-9, "{out:?}");
        // By the peaks alone (no floors known) all three are equal.
        let peaks_only = [
            input(29.0, 0, 0.0),
            input(29.0, 0, 0.0),
            input(40.0, 0, 0.0),
        ];
        score_all(&w, &peaks_only, &mut out);
        assert_eq!(out, [1.0, 1.0, 1.0]);
        // A floor can only make a destination look slower: a slow peak
        // with a fast floor (it just slowed down) is judged by its peak.
        let slowed = [with_floor(8.0, 8.0), with_floor(80.0, 8.0)];
        let mut two = [0.0; 2];
        score_all(&w, &slowed, &mut two);
        assert!((two[1] - 1.5 / 10.0).abs() < 1e-9, "{two:?}");
        // Its old fast floor is the yardstick until answers raise it: the
        // demo's 2 ms cluster just slowed to 20 ms still has a 2 ms floor,
        // and the 4 and 8 ms ones are judged against it (edge 3 ms) as well
        // as by their peaks (edge 6 ms). The slowed one still scores worst.
        let just_slowed = [
            with_floor(20.0, 2.0),
            with_floor(4.0, 4.0),
            with_floor(8.0, 8.0),
        ];
        score_all(&w, &just_slowed, &mut out);
        assert_eq!(out[1], 1.0, "{out:?}");
        assert!((out[2] - (3.0 / 8.0) / (3.0 / 4.0)).abs() < 1e-9, "{out:?}");
        assert!(
            (out[0] - (6.0 / 20.0) / (3.0 / 4.0)).abs() < 1e-9,
            "{out:?}"
        );
        assert!(out[0] < out[2], "{out:?}");
    }

    /// The swing-back on a loaded host: the busy fast destinations' peaks
    /// caught a worker pause (35 and 40 ms) and the shunned slow one's did
    /// not (its last re-measurement, 21 ms), so it has the best peak. Its
    /// floor, raised by its answers to 20 ms, still shows it 5× slower than
    /// the 4 ms one: it scores a third of it, not as the best.
    #[test]
    fn a_shunned_destination_with_the_best_peak_is_judged_by_the_lowest_floor() {
        let w = LATENCY_ONLY;
        let paused = [
            with_floor(21.0, 20.0),
            with_floor(35.0, 4.0),
            with_floor(40.0, 8.0),
        ];
        let mut out = [0.0; 3];
        score_all(&w, &paused, &mut out);
        // The 4 ms one is best, just beyond the peaks' band (35 ÷ 31.5);
        // the others lie beyond the floors' (edge 6 ms).
        let best = 31.5 / 35.0;
        assert_eq!(out[1], 1.0, "{out:?}");
        assert!((out[0] - (6.0 / 20.0) / best).abs() < 1e-9, "{out:?}");
        assert!((out[2] - (6.0 / 8.0) / best).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn latency_within_the_band_counts_as_equal() {
        let w = LATENCY_ONLY;
        let mut out = [0.0; 3];
        score_all(
            &w,
            &[input(8.0, 0, 0.0), input(11.9, 0, 0.0), input(24.0, 0, 0.0)],
            &mut out,
        );
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], 1.0, "{out:?}");
        assert!((out[2] - 0.5).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn unmeasured_destination_scores_at_the_default_rtt_not_as_the_best() {
        let w = LATENCY_ONLY;
        let unmeasured = crate::ewma::PeakEwma::new(30e6, 5e9);
        let mut out = [0.0; 2];
        let mut fresh = input(0.0, 0, 0.0);
        fresh.latency_ns = unmeasured.estimate_ns();
        score_all(&w, &[fresh, input(5.0, 0, 0.0)], &mut out);
        assert_eq!(out[1], 1.0);
        assert!((out[0] - 1.5 * 5.0 / 30.0).abs() < 1e-9, "{out:?}");
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
        score_all(&w, &[input(1.0, 0, 1.0), input(1.0, 7, 3.0)], &mut out);
        assert_eq!(out[0], 1.0);
        // Load ¼ (8 in flight + 1 against a hot threshold of 2 × 1), cost
        // ½ (the dearest), each to the power ½.
        assert!((out[1] - (0.25f64 * 0.5).sqrt()).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn load_is_judged_against_each_destinations_own_typical_load() {
        let w = FactorWeights {
            latency: 0.0,
            load: 1.0,
            cost: 0.0,
            affinity: 0.0,
        };
        // A busy destination at its usual load and an idle one at its
        // usual load (none) are equally loaded: raw counts would say the
        // idle one is 17 times better.
        let mut busy = input(1.0, 16, 0.0);
        busy.typical_in_flight = 16.0;
        let idle = input(1.0, 0, 0.0);
        let mut out = [0.0; 2];
        score_all(&w, &[busy, idle], &mut out);
        assert_eq!(out, [1.0, 1.0]);
        // Up to twice its usual count it is not hot: noise, not load.
        busy.in_flight = 33;
        score_all(&w, &[busy, idle], &mut out);
        assert_eq!(out, [1.0, 1.0]);
        // Requests piling up past that lower its score in proportion.
        busy.in_flight = 67;
        score_all(&w, &[busy, idle], &mut out);
        assert!((out[0] - 0.5).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn factors_multiply_so_an_idle_cheap_close_destination_stays_slow() {
        // The default weights: a 6× slower destination that is cheaper
        // and closer must still score well below the fast one. As a
        // weighted sum it scored 0.7 of it.
        let w = FactorWeights::default();
        let mut fast = input(8.0, 16, 1.0);
        fast.typical_in_flight = 16.0;
        fast.locality_affinity = 0.5;
        let slow = input(48.0, 0, 0.0);
        let mut out = [0.0; 2];
        score_all(&w, &[fast, slow], &mut out);
        // (6 ÷ 1.5)^-0.4 × (1 / ¾^0.2) × (1 / ½^0.1) of the fast one.
        let expected = 4f64.powf(-0.4) / 0.75f64.powf(0.2) / 0.5f64.powf(0.1);
        assert!((out[1] / out[0] - expected).abs() < 1e-9, "{out:?}");
        assert!(out[1] < 0.7 * out[0], "{out:?}");
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
