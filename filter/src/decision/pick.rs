//! Choosing a destination for one request.
//!
//! - With a session key: weighted rendezvous hashing over the static
//!   weights (`affinity`), so a session sticks, and moves only if its
//!   destination is ejected or the weights change;
//! - without one: each candidate's effective weight is
//!   `weight × score^sharpness` (score from `score`), two different
//!   candidates are drawn by effective weight, and the better-scored one
//!   wins (unless their scores are within a few percent: then the first
//!   draw stands, so equal destinations split by weight) —
//!   power-of-two-choices, so a stale score cannot herd a worker's traffic
//!   onto one destination. When the latency and load factors are off the
//!   scores cannot change between requests, and the choice is smooth
//!   weighted round-robin (nginx's algorithm) instead: a static canary split
//!   is then exact over any window, not just on average, and not bent by
//!   P2C;
//! - a chosen destination that is blocked (ejected, or half-open with its
//!   one request out) fails over in the `failover` order; when no
//!   destination is usable the request goes to the mesh's default route.

use super::engine::{Engine, Service};
use super::{Decision, Reason};
use crate::affinity;
use crate::rng::Rng;
use crate::score::{self, FactorInputs};

impl Engine {
    /// Decide where one request of `service` goes.
    pub(super) fn decide(
        &mut self,
        service: usize,
        session_key: Option<&[u8]>,
        now_ns: u64,
    ) -> Decision {
        let sharpness = self.config.scheduler.sharpness;
        let mesh_default = Decision {
            service,
            destination: None,
            reason: Reason::MeshDefault,
        };
        let Some(svc) = self.services.get_mut(service) else {
            return mesh_default;
        };
        if svc.any_drained {
            svc.set_drained_aside(now_ns);
        }
        let (choice, reason) = match session_key {
            Some(key) => by_affinity(svc, key, now_ns),
            None => by_score(svc, &mut self.rng, now_ns, sharpness),
        };
        match choice {
            Some(d) if svc.destinations[d].is_blocked(now_ns) => svc
                .failover
                .iter()
                .copied()
                .find(|&i| svc.destinations[i].is_usable(now_ns))
                .map_or(mesh_default, |f| Decision {
                    service,
                    destination: Some(f),
                    reason: Reason::Failover,
                }),
            Some(d) => Decision {
                service,
                destination: Some(d),
                reason,
            },
            None => mesh_default,
        }
    }
}

/// Weighted rendezvous over static weights. If the session's own
/// destination is blocked, the next-highest usable one for the same key
/// takes it — the same for every worker, so the session still sticks.
fn by_affinity(svc: &Service, key: &[u8], now_ns: u64) -> (Option<usize>, Reason) {
    let names = || svc.destinations.iter().map(|d| d.name.as_str());
    let home = affinity::choose(key, names().zip(svc.destinations.iter().map(|d| d.weight)));
    match home {
        Some(h) if svc.destinations[h].is_blocked(now_ns) => {
            let usable =
                svc.destinations
                    .iter()
                    .map(|d| if d.is_blocked(now_ns) { 0.0 } else { d.weight });
            match affinity::choose(key, names().zip(usable)) {
                Some(u) => (Some(u), Reason::Failover),
                // Nothing usable: the engine's failover finds nothing either.
                None => (Some(h), Reason::Affinity),
            }
        }
        Some(h) => (Some(h), Reason::Affinity),
        None => (None, Reason::MeshDefault),
    }
}

/// Smooth weighted round-robin: every candidate gains its weight, the
/// leader is chosen and pays back the total. Over any `total` consecutive
/// picks each candidate is chosen in proportion to its weight, interleaved
/// rather than in bursts.
fn smooth_weighted_round_robin(weights: &[f64], rotation: &mut [f64]) -> Option<usize> {
    let mut total = 0.0;
    let mut best: Option<usize> = None;
    for i in 0..weights.len().min(rotation.len()) {
        let w = weights[i];
        if w.is_nan() || w <= 0.0 {
            continue;
        }
        rotation[i] += w;
        total += w;
        if best.is_none_or(|b| rotation[i] > rotation[b]) {
            best = Some(i);
        }
    }
    if let Some(b) = best {
        rotation[b] -= total;
    }
    best
}

/// A usable destination whose latency estimate is stale and that has no
/// request in flight gets this one: the estimate holds while a destination
/// is idle (`ewma`), so a destination that was shunned for being slow is
/// measured again by one request — never assumed to have become fast.
/// One at a time and one per half-life each: a share of one request.
fn remeasure(svc: &Service, now_ns: u64) -> Option<usize> {
    if svc.weights.latency <= 0.0 {
        return None;
    }
    svc.destinations
        .iter()
        .position(|d| d.in_flight == 0 && d.latency.is_stale(now_ns) && d.is_usable(now_ns))
}

/// `score^sharpness`, without a `powf` where none is needed: the best
/// candidate (score 1) and whole exponents (the default is 4), which take a
/// few multiplications instead of a `powf`'s log and exp. This runs per
/// candidate per request.
fn sharpened(score: f64, sharpness: f64) -> f64 {
    if score >= 1.0 {
        1.0
    } else if sharpness.fract() == 0.0 && (0.0..=64.0).contains(&sharpness) {
        score.powi(sharpness as i32)
    } else {
        score.powf(sharpness)
    }
}

/// How far each decision moves a destination's typical in-flight count
/// toward its current one: an average over about the service's last 64
/// decisions — tens of milliseconds at thousands of requests a second.
const TYPICAL_LOAD_GAIN: f64 = 1.0 / 64.0;

/// Relative score difference below which P2C keeps its first draw.
const SCORE_TIE: f64 = 0.05;

fn by_score(
    svc: &mut Service,
    rng: &mut Rng,
    now_ns: u64,
    sharpness: f64,
) -> (Option<usize>, Reason) {
    if let Some(stale) = remeasure(svc, now_ns) {
        return (Some(stale), Reason::Score);
    }
    // Every decision samples every destination's in-flight count, so the
    // typical count is a time average. Sampled only when a destination is
    // chosen it would be biased low: it wins most when its count is low.
    if svc.weights.load > 0.0 {
        for d in &mut svc.destinations {
            d.typical_in_flight +=
                (f64::from(d.in_flight) - d.typical_in_flight) * TYPICAL_LOAD_GAIN;
        }
    }
    svc.inputs.clear();
    svc.inputs
        .extend(svc.destinations.iter().map(|d| FactorInputs {
            latency_ns: d.latency.estimate_ns(),
            floor_ns: d.floor.ns(),
            in_flight: d.in_flight,
            typical_in_flight: d.typical_in_flight,
            cost: d.cost,
            locality_affinity: d.locality_affinity,
        }));
    score::score_all(&svc.weights, &svc.inputs, &mut svc.scores);
    for ((e, d), s) in svc
        .effective
        .iter_mut()
        .zip(&svc.destinations)
        .zip(&svc.scores)
    {
        *e = d.weight * sharpened(*s, sharpness);
    }
    if svc.static_only {
        return (
            smooth_weighted_round_robin(&svc.effective, &mut svc.rotation),
            Reason::Static,
        );
    }
    let Some(first) = rng.weighted_index(&svc.effective) else {
        return (None, Reason::MeshDefault);
    };
    // The second candidate is drawn from the others: drawn with
    // replacement, a destination that loses every comparison would still be
    // chosen whenever it is drawn twice (its effective weight's share,
    // squared: 0.6% for a 3× slower one), and those requests are the tail.
    let kept = std::mem::replace(&mut svc.effective[first], 0.0);
    let second = rng.weighted_index(&svc.effective);
    svc.effective[first] = kept;
    let Some(second) = second else {
        return (Some(first), Reason::Score);
    };
    let rank = |i: usize| {
        if svc.destinations[i].is_blocked(now_ns) {
            -1.0
        } else {
            svc.scores[i]
        }
    };
    // Scores within a few percent are a tie and the first draw stands:
    // equal destinations' estimates differ by sampling noise, and a strict
    // comparison would turn that noise into a steady drift away from the
    // configured weights.
    let choice = if rank(second) > rank(first) * (1.0 + SCORE_TIE) {
        second
    } else {
        first
    };
    (Some(choice), Reason::Score)
}
