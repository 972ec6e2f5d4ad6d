//! Peak-EWMA latency estimate of one destination, as tower's `PeakEwma` and
//! Linkerd's balancer keep it, with one rule for every update.
//!
//! For a sample `s` taken at time `t`, the estimate `e` last moved at `t₀`
//! and the time constant `τ`:
//!
//! ```text
//! e' = s                          if s ≥ e   (a rise is believed at once)
//! e' = w·e + (1 − w)·s            if s < e   (a fall is believed as time passes)
//!      with w = exp(−(t − t₀) / τ)
//! e' = s                          if t − t₀ ≥ τ·ln 2 (a stale estimate is replaced)
//! ```
//!
//! So a sample never moves the estimate away from itself: a faster sample
//! never raises it, a slower one never lowers it, and `e'` always lies
//! between `s` and `e`. The value compared with the sample is the value that
//! is kept and that the scorer reads: there is no second, "decayed" view.
//!
//! The last line is the re-measurement rule: an estimate older than its
//! half-life ([`PeakEwma::is_stale`]) is no longer known, and the picker
//! sends the destination one request to measure it again; that sample is
//! then taken as it is, like the first one. Without it a destination
//! shunned for being 10× slower would need a dozen re-measurements, each a
//! half-life apart, to be believed fast again after it recovered — half a
//! minute of a healthy destination left idle. (A destination that is still
//! slow answers slowly, and the estimate stays where it was.)
//!
//! Between samples the estimate holds. tower decays an idle estimate toward
//! zero; a destination that was shunned for being slow then looks fast again
//! without having answered anything, and draws a burst of traffic. Here the
//! time without samples only weighs the next sample (after a long silence
//! one sample replaces most of the estimate), and [`PeakEwma::is_stale`]
//! tells the picker when a destination needs re-measuring: it then sends it
//! one request, rather than pretending to know it got faster.
//!
//! Before its first sample a destination is scored at a configurable
//! default RTT (`scheduler.defaultRttMs`, as Linkerd's and Finagle's
//! balancers start one), not as the best: a destination nothing is known
//! about must not win every comparison. The first sample replaces the
//! default outright — the default is a prior, not a measurement.
//!
//! Time is in nanoseconds on the host's clock; the decay is time-based, not
//! sample-based, so the behaviour does not depend on the request rate. τ and
//! the default are stored, not passed by each caller, so every update and
//! every merge uses the same ones.

/// A measured estimate as workers share it (see `shared_stats`): the
/// estimate and when it last moved. τ and the default RTT are each worker's
/// configuration and are not shared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub estimate_ns: f64,
    pub at_ns: u64,
}

impl Measurement {
    /// A record read from shared data: `None` unless the estimate is a
    /// positive finite number.
    pub fn from_parts(estimate_ns: f64, at_ns: u64) -> Option<Self> {
        (estimate_ns.is_finite() && estimate_ns > 0.0).then_some(Self { estimate_ns, at_ns })
    }
}

/// A peak-sensitive exponentially weighted moving average of latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    /// When the estimate last moved; `None` while it is the default.
    measured_at_ns: Option<u64>,
    decay_ns: f64,
    default_ns: f64,
}

/// The smallest sample believed (1 ns): a zero would make every ratio the
/// scorer takes infinite.
const MIN_SAMPLE_NS: f64 = 1.0;

impl PeakEwma {
    /// An unmeasured estimate: `default_rtt_ns` until the first sample,
    /// falls decaying with time constant `decay_ns`. Non-positive or
    /// non-finite parameters are replaced by 1 ns (the config validation
    /// never lets them through).
    pub fn new(default_rtt_ns: f64, decay_ns: f64) -> Self {
        let positive = |v: f64| {
            if v.is_finite() && v >= MIN_SAMPLE_NS {
                v
            } else {
                MIN_SAMPLE_NS
            }
        };
        Self {
            estimate_ns: positive(default_rtt_ns),
            measured_at_ns: None,
            decay_ns: positive(decay_ns),
            default_ns: positive(default_rtt_ns),
        }
    }

    /// The same learned state under new parameters (a reconfiguration).
    pub fn retuned(self, default_rtt_ns: f64, decay_ns: f64) -> Self {
        let mut next = Self::new(default_rtt_ns, decay_ns);
        next.merge(self.measurement());
        next
    }

    /// The estimate in ns: the default until the first sample.
    pub fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }

    /// Whether any sample has been taken (or adopted from another worker).
    pub fn is_measured(&self) -> bool {
        self.measured_at_ns.is_some()
    }

    /// What workers share: `None` while unmeasured.
    pub fn measurement(&self) -> Option<Measurement> {
        self.measured_at_ns.map(|at_ns| Measurement {
            estimate_ns: self.estimate_ns,
            at_ns,
        })
    }

    /// The estimate needs a fresh sample: never measured, or so long ago
    /// that the next sample would outweigh it (more than τ·ln 2, the
    /// estimate's half-life).
    pub fn is_stale(&self, now_ns: u64) -> bool {
        match self.measured_at_ns {
            None => true,
            Some(at) => now_ns.saturating_sub(at) as f64 >= self.decay_ns * core::f64::consts::LN_2,
        }
    }

    /// Record one successful response's latency (the rule in the module
    /// doc).
    pub fn observe(&mut self, sample_ns: f64, now_ns: u64) {
        let Some(sample_ns) = believable(sample_ns) else {
            return;
        };
        self.estimate_ns = match self.measured_at_ns {
            None => sample_ns,
            Some(at) => self.next(sample_ns, now_ns.saturating_sub(at)),
        };
        self.measured_at_ns = Some(self.measured_at_ns.map_or(now_ns, |at| at.max(now_ns)));
    }

    /// Record a failed response's latency: it may only raise the estimate.
    /// A destination that answers 503 at once must not look fast and draw
    /// traffic; one that fails slowly is at least that slow.
    pub fn observe_failure(&mut self, sample_ns: f64, now_ns: u64) {
        if believable(sample_ns).is_some_and(|s| s > self.estimate_ns) {
            self.observe(sample_ns, now_ns);
        }
    }

    /// Fold in another worker's view with the same rule, as if its latest
    /// estimate were a sample taken when it last moved: the later of the two
    /// is applied to the earlier. A slowdown anywhere is believed at once;
    /// a recovery seen elsewhere is believed as its age allows. Symmetric:
    /// both workers reach the same estimate.
    pub fn merge(&mut self, other: Option<Measurement>) {
        let Some(theirs) = other else {
            return;
        };
        let Some(theirs_ns) = believable(theirs.estimate_ns) else {
            return;
        };
        let Some(mine_at) = self.measured_at_ns else {
            self.estimate_ns = theirs_ns;
            self.measured_at_ns = Some(theirs.at_ns);
            return;
        };
        let (earlier, later, later_at) = if theirs.at_ns > mine_at
            || (theirs.at_ns == mine_at && theirs_ns > self.estimate_ns)
        {
            (self.estimate_ns, theirs_ns, theirs.at_ns)
        } else {
            (theirs_ns, self.estimate_ns, mine_at)
        };
        let elapsed = later_at.saturating_sub(mine_at.min(theirs.at_ns));
        self.estimate_ns = Self::rule(earlier, later, elapsed, self.decay_ns);
        self.measured_at_ns = Some(later_at);
    }

    fn next(&self, sample_ns: f64, elapsed_ns: u64) -> f64 {
        Self::rule(self.estimate_ns, sample_ns, elapsed_ns, self.decay_ns)
    }

    /// The update rule of the module doc.
    fn rule(estimate_ns: f64, sample_ns: f64, elapsed_ns: u64, decay_ns: f64) -> f64 {
        if sample_ns >= estimate_ns || elapsed_ns as f64 >= decay_ns * core::f64::consts::LN_2 {
            // A rise, or a re-measurement of a stale estimate (`is_stale`):
            // the old value is more than a half-life old, and the fresh
            // sample is what is known now.
            return sample_ns;
        }
        let w = (-(elapsed_ns as f64) / decay_ns).exp();
        // Clamped: rounding must not carry the result outside [s, e].
        (w * estimate_ns + (1.0 - w) * sample_ns).clamp(sample_ns, estimate_ns)
    }

    /// The default RTT an unmeasured destination is scored at.
    pub fn default_ns(&self) -> f64 {
        self.default_ns
    }
}

fn believable(sample_ns: f64) -> Option<f64> {
    sample_ns.is_finite().then(|| sample_ns.max(MIN_SAMPLE_NS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const MS_F: f64 = MS as f64;
    const DECAY: f64 = 5_000.0 * MS_F;
    const DEFAULT: f64 = 30.0 * MS_F;

    fn ewma() -> PeakEwma {
        PeakEwma::new(DEFAULT, DECAY)
    }

    #[test]
    fn a_faster_sample_after_a_pause_does_not_raise_the_estimate() {
        // The issue's case: 100 ms, then 50 ms later, τ = 5 s. It used to
        // read 36.8 ms before the sample (idle decay toward zero) and
        // 68.4 ms after it: the faster sample raised it.
        let mut e = ewma();
        e.observe(100.0 * MS_F, 0);
        let before = e.estimate_ns();
        e.observe(50.0 * MS_F, 2_500 * MS);
        let after = e.estimate_ns();
        assert!(after <= before, "{before} -> {after}");
        // Exactly the rule: e^-½·100 + (1 − e^-½)·50.
        let w = (-0.5f64).exp();
        let expected = (w * 100.0 + (1.0 - w) * 50.0) * MS_F;
        assert!((after - expected).abs() < 1.0, "{after} vs {expected}");
        assert!(after > 50.0 * MS_F);
    }

    #[test]
    fn a_sample_after_the_half_life_re_measures() {
        // Five seconds later the estimate is stale: the sample replaces it,
        // whether it is lower or higher.
        let mut e = ewma();
        e.observe(100.0 * MS_F, 0);
        assert!(e.is_stale(5_000 * MS));
        e.observe(50.0 * MS_F, 5_000 * MS);
        assert_eq!(e.estimate_ns(), 50.0 * MS_F);
        // Just inside the half-life it is still the rule.
        let mut f = ewma();
        f.observe(100.0 * MS_F, 0);
        f.observe(50.0 * MS_F, 3_400 * MS);
        assert!(f.estimate_ns() > 74.0 * MS_F, "{}", f.estimate_ns());
        // The same holds for another worker's view: merged, a fresh one
        // replaces a stale one.
        let mut stale = ewma();
        stale.observe(100.0 * MS_F, 0);
        let mut fresh = ewma();
        fresh.observe(50.0 * MS_F, 5_000 * MS);
        stale.merge(fresh.measurement());
        assert_eq!(stale.estimate_ns(), 50.0 * MS_F);
    }

    #[test]
    fn an_idle_estimate_holds() {
        let mut e = ewma();
        e.observe(100.0 * MS_F, 0);
        // No sample for a minute: the slow destination does not look fast.
        assert_eq!(e.estimate_ns(), 100.0 * MS_F);
        assert!(!e.is_stale(3_000 * MS));
        assert!(e.is_stale(3_500 * MS), "past the half-life: re-measure it");
        // The next sample after the silence replaces most of it.
        e.observe(10.0 * MS_F, 60_000 * MS);
        assert!(e.estimate_ns() < 10.1 * MS_F, "{}", e.estimate_ns());
    }

    #[test]
    fn rise_is_taken_at_once() {
        let mut e = ewma();
        e.observe(10.0 * MS_F, 0);
        e.observe(100.0 * MS_F, 1);
        assert_eq!(e.estimate_ns(), 100.0 * MS_F);
    }

    #[test]
    fn fall_decays_with_time_not_sample_count() {
        let mut e = ewma();
        e.observe(100.0 * MS_F, 0);
        // A thousand fast samples within one millisecond barely move it.
        for i in 0..1000 {
            e.observe(MS_F, i * 1000);
        }
        assert!(e.estimate_ns() > 99.0 * MS_F, "{}", e.estimate_ns());
        // One decay period of fast samples brings it most of the way down.
        let mut t = MS;
        while t < 5_000 * MS {
            t += 10 * MS;
            e.observe(MS_F, t);
        }
        assert!(e.estimate_ns() < 40.0 * MS_F, "{}", e.estimate_ns());
    }

    #[test]
    fn unmeasured_starts_at_the_default_and_the_first_sample_replaces_it() {
        let e = ewma();
        assert_eq!(e.estimate_ns(), DEFAULT);
        assert!(!e.is_measured() && e.is_stale(0));
        assert_eq!(e.measurement(), None);
        let mut fast = e;
        fast.observe(2.0 * MS_F, 7);
        assert_eq!(fast.estimate_ns(), 2.0 * MS_F);
        assert_eq!(
            fast.measurement(),
            Some(Measurement {
                estimate_ns: 2.0 * MS_F,
                at_ns: 7
            })
        );
    }

    #[test]
    fn a_failure_only_raises() {
        let mut e = ewma();
        e.observe_failure(MS_F, 0);
        assert!(!e.is_measured(), "a fast failure is no measurement");
        e.observe(50.0 * MS_F, 1);
        e.observe_failure(MS_F, 2);
        assert_eq!(e.estimate_ns(), 50.0 * MS_F);
        e.observe_failure(200.0 * MS_F, 3);
        assert_eq!(e.estimate_ns(), 200.0 * MS_F);
    }

    #[test]
    fn garbage_samples_are_ignored() {
        let mut e = ewma();
        e.observe(f64::NAN, 0);
        e.observe(f64::INFINITY, 0);
        assert!(!e.is_measured());
        assert_eq!(Measurement::from_parts(f64::INFINITY, 3), None);
        assert_eq!(Measurement::from_parts(0.0, 3), None);
        assert_eq!(Measurement::from_parts(-1.0, 3), None);
        let mut m = ewma();
        m.merge(Some(Measurement {
            estimate_ns: f64::NAN,
            at_ns: 1,
        }));
        assert!(!m.is_measured());
    }

    #[test]
    fn merge_believes_a_later_slowdown_and_an_old_one_fades() {
        let mut slow_then = ewma();
        slow_then.observe(100.0 * MS_F, 0);
        let mut fast_now = ewma();
        fast_now.observe(10.0 * MS_F, 60_000 * MS);
        // A slowdown a minute ago does not outweigh a fresh fast view.
        let mut a = slow_then;
        a.merge(fast_now.measurement());
        assert!(a.estimate_ns() < 10.1 * MS_F, "{}", a.estimate_ns());
        // A fresh slowdown is believed at once.
        let mut b = fast_now;
        let mut slow_now = ewma();
        slow_now.observe(100.0 * MS_F, 60_001 * MS);
        b.merge(slow_now.measurement());
        assert_eq!(b.estimate_ns(), 100.0 * MS_F);
        // An unmeasured worker adopts the view; nothing is learned from none.
        let mut c = ewma();
        c.merge(slow_now.measurement());
        assert_eq!(c.measurement(), slow_now.measurement());
        let mut d = slow_now;
        d.merge(None);
        assert_eq!(d, slow_now);
    }

    #[test]
    fn retuning_keeps_the_measurement() {
        let mut e = ewma();
        e.observe(7.0 * MS_F, 9);
        let r = e.retuned(10.0 * MS_F, 1_000.0 * MS_F);
        assert_eq!(r.measurement(), e.measurement());
        assert_eq!(r.default_ns(), 10.0 * MS_F);
        assert_eq!(
            ewma().retuned(10.0 * MS_F, DECAY).estimate_ns(),
            10.0 * MS_F
        );
    }

    fn sample_ms() -> impl Strategy<Value = f64> {
        (0.001f64..10_000.0).prop_map(|ms| ms * MS_F)
    }

    /// A history of (sample, time step) pairs.
    fn history() -> impl Strategy<Value = Vec<(f64, u64)>> {
        proptest::collection::vec((sample_ms(), 0u64..20_000 * MS), 0..20)
    }

    fn replay(h: &[(f64, u64)]) -> (PeakEwma, u64) {
        let mut e = ewma();
        let mut t = 0;
        for &(s, dt) in h {
            t += dt;
            e.observe(s, t);
        }
        (e, t)
    }

    proptest! {
        #[test]
        fn a_sample_never_moves_the_estimate_away_from_itself(
            h in history(), s in sample_ms(), dt in 0u64..60_000 * MS,
        ) {
            let (mut e, t) = replay(&h);
            let before = e.estimate_ns();
            let was_measured = e.is_measured();
            e.observe(s, t + dt);
            let after = e.estimate_ns();
            if !was_measured || s >= before {
                prop_assert_eq!(after, s, "a rise (or the first sample) is taken as is");
            } else {
                prop_assert!(after <= before, "a faster sample raised {} to {}", before, after);
                prop_assert!(after >= s, "overshot the sample: {} < {}", after, s);
            }
        }

        #[test]
        fn a_later_fast_sample_weighs_at_least_as_much(
            h in history(), s in sample_ms(), dt1 in 0u64..30_000 * MS, extra in 0u64..30_000 * MS,
        ) {
            // The same faster sample, arriving later, lowers the estimate at
            // least as far: time is what makes a fall believable.
            let (e, t) = replay(&h);
            prop_assume!(e.is_measured() && s < e.estimate_ns());
            let (mut sooner, mut later) = (e, e);
            sooner.observe(s, t + dt1);
            later.observe(s, t + dt1 + extra);
            // (Within rounding: the two weights may be one ulp apart.)
            prop_assert!(later.estimate_ns() <= sooner.estimate_ns() * (1.0 + 1e-12));
        }

        #[test]
        fn a_failure_never_lowers(h in history(), s in sample_ms(), dt in 0u64..60_000 * MS) {
            let (mut e, t) = replay(&h);
            let before = e.estimate_ns();
            e.observe_failure(s, t + dt);
            prop_assert!(e.estimate_ns() >= before);
        }

        #[test]
        fn merge_is_symmetric_and_bounded(a in history(), b in history()) {
            let (x, _) = replay(&a);
            let (y, _) = replay(&b);
            let mut xy = x;
            xy.merge(y.measurement());
            let mut yx = y;
            yx.merge(x.measurement());
            prop_assert_eq!(xy.measurement(), yx.measurement());
            if let (Some(mx), Some(my)) = (x.measurement(), y.measurement()) {
                let lo = mx.estimate_ns.min(my.estimate_ns);
                let hi = mx.estimate_ns.max(my.estimate_ns);
                prop_assert!((lo..=hi).contains(&xy.estimate_ns()));
                // Merging again changes nothing.
                let mut again = xy;
                again.merge(yx.measurement());
                prop_assert_eq!(again.measurement(), xy.measurement());
            }
        }
    }
}
