//! Peak-EWMA latency estimate of one destination, as tower's `PeakEwma` and
//! Linkerd's balancer keep it, with one rule for every update — and a rise
//! believed once a second request has seen it.
//!
//! For a sample `s` taken at time `t`, the estimate `e` last moved at `t₀`
//! and the time constant `τ`:
//!
//! ```text
//! e' = s                  the first sample, or t − t₀ ≥ τ·ln 2 (a stale
//!                         estimate is replaced: a re-measurement)
//! e' = min(s, b)          if s > e and e is a re-measurement that lowered
//!                         the estimate from b (a claim of recovery, and
//!                         this answer withdraws it)
//! e' = max(e, min(s, r))  if s > e and an earlier request, answered before
//!                         this one was sent, rose to r (a confirmed rise)
//! e' = w·e + (1 − w)·s    otherwise (a fall, or a rise not yet confirmed)
//!      with w = exp(−(t − t₀) / τ)
//! ```
//!
//! So a sample never moves the estimate away from itself: a faster sample
//! never raises it, a slower one never lowers it, and `e'` always lies
//! between `s` and `e`. The value compared with the sample is the value that
//! is kept and that the scorer reads: there is no second, "decayed" view.
//!
//! Why a rise needs a second request, and which one. Peak-EWMA believes a
//! rise at once so that a slowdown moves traffic within one response. But
//! on a real host one response in a few hundred is late for reasons that
//! are not the destination's: the proxy's worker thread or the backend's
//! was descheduled for tens of milliseconds (a loaded node, a noisy
//! neighbour, a GC pause), and every request in flight during that pause
//! comes back late together. Believed at once, such a spike puts a fast
//! destination above a genuinely slow one that is being shunned — and a
//! shunned destination gets no samples, so the spike is not corrected
//! until the re-measurement a half-life later. The demo's Envoy (two
//! workers, on a shared machine) sent half its traffic back to a cluster
//! that was 10× slower for about a second, and its p99 was the slow
//! cluster's; the simulator (`filter/tests/sim`) shows the same with
//! worker pauses or backend hiccups alone, with one worker or two. A slowdown is a property of the destination, so a
//! request sent *after* the first late answer arrived is slow too; a pause
//! is over by then. So a rise is believed at once — to the level both
//! requests agree on, the smaller of the two — when a request sent after
//! the first late answer confirms it, and a request sent after it that
//! comes back at or below the estimate refutes it. Requests that were in
//! flight together (sent before the first late answer arrived) neither
//! confirm nor refute one another: they shared whatever pause there was.
//! Until confirmed, a late sample weighs as an ordinary EWMA sample. The
//! cost is one more service time before a genuine slowdown is believed
//! (the load factor's count of requests piling up, `score`, acts before
//! either answer).
//!
//! One rise is believed at once: the first answer after a re-measurement
//! that lowered the estimate, back up to where the estimate was. A
//! re-measurement is one sample; if it came back at the lucky end of a
//! still-slow destination's spread, the destination is back in the running
//! at once, and waiting for two more answers to believe it is still slow
//! sent it a burst (seen in the simulator). Its next answer being slow
//! withdraws the claim of recovery; capped at the old estimate, it cannot
//! push a destination higher than it was known to be.
//!
//! The re-measurement rule: an estimate older than its half-life
//! ([`PeakEwma::is_stale`]) is no longer known, and the picker sends the
//! destination one request to measure it again; that sample is then taken
//! as it is, like the first one. Without it a destination shunned for
//! being 10× slower would need a dozen re-measurements, each a half-life
//! apart, to be believed fast again after it recovered — half a minute of a
//! healthy destination left idle. (A destination that is still slow
//! answers slowly, and the estimate stays where it was.)
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
//! every merge uses the same ones. Workers share only believed estimates
//! (`shared_stats`): an unconfirmed rise stays with the worker that saw it,
//! so one worker's pause does not move the others.

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
    /// A rise not yet confirmed by a later request (module doc).
    rise: Option<Rise>,
    /// The estimate before a re-measurement lowered it, until the next
    /// sample: a claim of recovery that one slower answer withdraws.
    before_remeasure_ns: Option<f64>,
}

/// A late sample waiting for a second request to confirm or refute it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rise {
    sample_ns: f64,
    /// When it was answered: only a request sent from then on is another
    /// look at the destination rather than the same moment seen twice.
    answered_at_ns: u64,
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
            rise: None,
            before_remeasure_ns: None,
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
    /// doc). The request was sent `sample_ns` before `now_ns`.
    pub fn observe(&mut self, sample_ns: f64, now_ns: u64) {
        let Some(sample_ns) = believable(sample_ns) else {
            return;
        };
        let Some(at) = self.measured_at_ns else {
            self.estimate_ns = sample_ns;
            self.measured_at_ns = Some(now_ns);
            self.rise = None;
            return;
        };
        let elapsed = now_ns.saturating_sub(at);
        let sent_at = now_ns.saturating_sub(sample_ns as u64);
        // A pending rise this request can judge: it was sent after the
        // rise's answer came back.
        let judged = self.rise.filter(|r| sent_at >= r.answered_at_ns);
        let claim = self.before_remeasure_ns.take();
        self.estimate_ns = if elapsed as f64 >= self.half_life_ns() {
            self.rise = None;
            if sample_ns < self.estimate_ns {
                self.before_remeasure_ns = Some(self.estimate_ns);
            }
            sample_ns
        } else if sample_ns > self.estimate_ns {
            match (claim, judged) {
                (Some(before), _) => {
                    self.rise = None;
                    sample_ns.min(before)
                }
                (None, Some(r)) => {
                    self.rise = None;
                    self.estimate_ns.max(r.sample_ns.min(sample_ns))
                }
                (None, None) => {
                    self.rise.get_or_insert(Rise {
                        sample_ns,
                        answered_at_ns: now_ns,
                    });
                    blend(self.estimate_ns, sample_ns, elapsed, self.decay_ns)
                }
            }
        } else {
            if judged.is_some() {
                // Refuted: a later look found it no slower than believed.
                self.rise = None;
            }
            blend(self.estimate_ns, sample_ns, elapsed, self.decay_ns)
        };
        self.measured_at_ns = Some(at.max(now_ns));
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

    fn half_life_ns(&self) -> f64 {
        self.decay_ns * core::f64::consts::LN_2
    }

    /// The merge rule: another worker's estimate is a believed one, so a
    /// rise is taken at once and a fall as its age allows (or outright, for
    /// a stale estimate).
    fn rule(estimate_ns: f64, sample_ns: f64, elapsed_ns: u64, decay_ns: f64) -> f64 {
        if sample_ns >= estimate_ns || elapsed_ns as f64 >= decay_ns * core::f64::consts::LN_2 {
            // A rise, or a re-measurement of a stale estimate (`is_stale`):
            // the old value is more than a half-life old, and the fresh
            // sample is what is known now.
            return sample_ns;
        }
        blend(estimate_ns, sample_ns, elapsed_ns, decay_ns)
    }

    /// The default RTT an unmeasured destination is scored at.
    pub fn default_ns(&self) -> f64 {
        self.default_ns
    }
}

/// The EWMA step: `sample_ns` weighs as much as the time since the
/// estimate last moved allows.
fn blend(estimate_ns: f64, sample_ns: f64, elapsed_ns: u64, decay_ns: f64) -> f64 {
    let w = (-(elapsed_ns as f64) / decay_ns).exp();
    // Clamped: rounding must not carry the result outside [s, e].
    let (lo, hi) = if sample_ns < estimate_ns {
        (sample_ns, estimate_ns)
    } else {
        (estimate_ns, sample_ns)
    };
    (w * estimate_ns + (1.0 - w) * sample_ns).clamp(lo, hi)
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
        // 100 ms, then 50 ms 2.5 s later, τ = 5 s. With idle decay toward
        // zero the estimate would read 36.8 ms before the sample and
        // 68.4 ms after it: the faster sample would raise it.
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

    /// A destination answering every millisecond at `ms` until `until`.
    fn busy(ms: f64, until: u64) -> PeakEwma {
        let mut e = ewma();
        for t in (0..=until).step_by(MS as usize) {
            e.observe(ms * MS_F, t);
        }
        e
    }

    #[test]
    fn a_rise_seen_by_a_later_request_is_taken_at_once() {
        let mut e = busy(10.0, 100 * MS);
        // Sent at 1 ms, answered at 101 ms.
        e.observe(100.0 * MS_F, 101 * MS);
        assert!(e.estimate_ns() < 10.1 * MS_F, "{}", e.estimate_ns());
        // Sent after that answer came back, and slow too: believed, at the
        // level both agree on.
        e.observe(80.0 * MS_F, 182 * MS);
        assert_eq!(e.estimate_ns(), 80.0 * MS_F);
    }

    #[test]
    fn a_lone_late_answer_is_refuted_by_the_next_request() {
        let mut e = busy(4.0, 1_000 * MS);
        // A 40 ms pause: three requests in flight come back late together.
        for (i, late_ms) in [40u64, 38, 35].into_iter().enumerate() {
            e.observe(late_ms as f64 * MS_F, 1_001 * MS + i as u64 * 10_000);
        }
        assert!(e.estimate_ns() < 4.1 * MS_F, "{}", e.estimate_ns());
        // The next request, sent after the pause, is fast: refuted.
        e.observe(4.0 * MS_F, 1_006 * MS);
        assert!(e.estimate_ns() < 4.1 * MS_F, "{}", e.estimate_ns());
        // A later late answer starts afresh: it too needs a second look.
        e.observe(30.0 * MS_F, 1_007 * MS);
        assert!(e.estimate_ns() < 4.1 * MS_F, "{}", e.estimate_ns());
        e.observe(25.0 * MS_F, 1_033 * MS);
        assert_eq!(e.estimate_ns(), 25.0 * MS_F);
    }

    #[test]
    fn requests_in_flight_together_do_not_confirm_each_other() {
        let mut e = busy(4.0, 100 * MS);
        e.observe(30.0 * MS_F, 101 * MS);
        // Sent at 72 ms, before the first late answer arrived: the same
        // moment seen twice.
        e.observe(30.0 * MS_F, 102 * MS);
        assert!(e.estimate_ns() < 4.1 * MS_F, "{}", e.estimate_ns());
        // Nor does a fast one sent then refute it.
        e.observe(4.0 * MS_F, 103 * MS);
        e.observe(31.0 * MS_F, 132 * MS);
        assert_eq!(e.estimate_ns(), 30.0 * MS_F);
    }

    #[test]
    fn a_re_measurement_that_claims_recovery_is_withdrawn_by_a_slow_answer() {
        let mut e = busy(20.0, 10 * MS);
        // Shunned for a half-life; re-measured at the lucky end of its
        // spread.
        e.observe(12.0 * MS_F, 4_000 * MS);
        assert_eq!(e.estimate_ns(), 12.0 * MS_F);
        // Its next answer is slow: believed at once, up to the old estimate.
        e.observe(26.0 * MS_F, 4_030 * MS);
        assert_eq!(e.estimate_ns(), 20.0 * MS_F);
        // A real recovery stays: the next answers are fast.
        let mut r = busy(20.0, 10 * MS);
        r.observe(2.0 * MS_F, 4_000 * MS);
        r.observe(2.1 * MS_F, 4_003 * MS);
        assert!(r.estimate_ns() <= 2.1 * MS_F, "{}", r.estimate_ns());
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
        // Slow failures raise it as slow successes do: confirmed by a
        // request sent after the first came back.
        e.observe_failure(200.0 * MS_F, 200 * MS);
        e.observe_failure(210.0 * MS_F, 410 * MS);
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
            if !was_measured {
                prop_assert_eq!(after, s, "the first sample is taken as is");
            } else if s >= before {
                prop_assert!(after >= before, "a slower sample lowered {} to {}", before, after);
                prop_assert!(after <= s, "overshot the sample: {} > {}", after, s);
            } else {
                prop_assert!(after <= before, "a faster sample raised {} to {}", before, after);
                prop_assert!(after >= s, "overshot the sample: {} < {}", after, s);
            }
        }

        #[test]
        fn a_rise_is_believed_when_a_later_request_sees_it_and_not_before(
            e0 in sample_ms(), s in sample_ms(), r in sample_ms(),
            t1 in 1u64..3_000 * MS, gap in 0u64..5_000 * MS,
        ) {
            let mut e = ewma();
            e.observe(e0, 0);
            e.observe(s, t1);
            let one = e.estimate_ns();
            // Alone, a slower answer weighs as an EWMA sample.
            let w = (-(t1 as f64) / DECAY).exp();
            prop_assert!(one <= (w * e0 + (1.0 - w) * s).max(e0) * (1.0 + 1e-12));
            // A request sent after it came back: believed to the level both
            // agree on (or, refuted, the estimate stays between them).
            let sent = t1 + gap;
            e.observe(r, sent + r as u64);
            prop_assert!(e.estimate_ns() >= s.min(r) * (1.0 - 1e-12), "{} after {} then {}", e.estimate_ns(), s, r);
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
