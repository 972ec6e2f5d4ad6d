//! A destination's latency floor: a low-quantile tracker of its successful
//! answers' latencies, the scorer's second look at latency (`score`).
//!
//! Why a second look. Every latency the filter measures includes the
//! proxy's own delay: the time the worker's event loop takes to get to the
//! upstream's answer. When Envoy is busy (its workers saturated, 128
//! connections on two cores in `cargo xtask bench -- --only matrix`) that
//! delay is tens of milliseconds and the same for every destination, so it
//! squeezes their ratios: 8 ms and 24 ms backends were estimated at 29 and
//! 40 ms, within the peak-EWMA band (`score::LATENCY_BAND`) that keeps
//! sampling noise from bending the weights — and the 3× slower destination
//! got a third of the traffic. The delay varies, though, and some answers
//! get through with little of it: the low end of each destination's
//! latencies keeps its own service time, and there 8 and 24 stay 3× apart.
//! The peak-EWMA still decides everything else (a slowdown, a stall, a
//! destination's spread); the floor can only make a destination look
//! slower, never faster.
//!
//! The rule: a sample below the floor lowers it to the sample at once (a
//! destination cannot answer faster than its service time, so a low answer
//! is information, not noise); a sample above raises it by a share of the
//! gap: [`RISE_GAIN`] when answers come close together (about the 1-in-64
//! low end of the recent answers), more the longer it has been since the
//! previous answer (`1 − e^(−gap/`[`WINDOW_NS`]`)`). So the floor is the low
//! end of the last 64 answers or the last 5 s of them, whichever is longer.
//! A destination shunned for being slow is re-measured by one request a
//! half-life (3.5 s) apart, and each such answer moves its floor half way
//! to it — its floor follows what it is now, not the fast days before it
//! slowed (the scorer judges every floor against the lowest one, so a stale
//! fast floor would make every healthy destination look slow beside it).
//! Why not faster: one late answer after
//! a quiet spell must not be enough to shun a destination the peak-EWMA
//! has not yet believed slower (`ewma` needs a second request for that);
//! with a 1 s window a single 20 ms answer 0.2 s after the last 2 ms one
//! did (the wasmtime tier's `a_latency_peak_on_one_worker_…` test). A
//! recovered destination's first fast answer lowers its floor at once.
//!
//! Each worker keeps its own: it sees enough samples of the destinations
//! that matter, and the shared peak-EWMA already carries what one worker
//! learns to the others. A worker that never had an answer from a
//! destination has no floor for it, and the scorer then compares by the
//! peak-EWMA alone.

/// How far one sample above the floor raises it at least, as a share of
/// the gap.
pub const RISE_GAIN: f64 = 1.0 / 64.0;

/// The time over which answers count toward the floor when they are few
/// (the default τ of the peak-EWMA).
pub const WINDOW_NS: f64 = 5e9;

/// Below this gap between answers `1 − e^(−gap/WINDOW_NS)` is under
/// [`RISE_GAIN`] (gap < `WINDOW_NS · ln(64/63)`, about 79 ms).
const QUIET_NS: f64 = WINDOW_NS * 0.015_748;

/// The low end of one destination's latencies, in ns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencyFloor {
    floor_ns: Option<f64>,
    /// When the previous answer was recorded.
    at_ns: u64,
}

impl LatencyFloor {
    /// The floor in ns; `None` before the first successful answer.
    pub fn ns(&self) -> Option<f64> {
        self.floor_ns
    }

    /// Record one successful answer's latency, answered at `now_ns`.
    /// Non-finite or non-positive samples are ignored.
    pub fn observe(&mut self, sample_ns: f64, now_ns: u64) {
        if !sample_ns.is_finite() || sample_ns <= 0.0 {
            return;
        }
        let since = now_ns.saturating_sub(self.at_ns) as f64;
        self.at_ns = self.at_ns.max(now_ns);
        self.floor_ns = Some(match self.floor_ns {
            Some(floor) if sample_ns > floor => {
                // Answers close together (a busy destination's, the common
                // case) rise by the minimum gain without an `exp`.
                let gain = if since < QUIET_NS {
                    RISE_GAIN
                } else {
                    (1.0 - (-since / WINDOW_NS).exp()).max(RISE_GAIN)
                };
                floor + (sample_ns - floor) * gain
            }
            _ => sample_ns,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const MS_U: u64 = 1_000_000;

    #[test]
    fn unknown_until_an_answer_then_the_first_answer() {
        let mut f = LatencyFloor::default();
        assert_eq!(f.ns(), None);
        f.observe(f64::NAN, 0);
        f.observe(0.0, 0);
        assert_eq!(f.ns(), None, "junk samples are no answer");
        f.observe(8.0 * MS, 0);
        assert_eq!(f.ns(), Some(8.0 * MS));
    }

    #[test]
    fn a_lower_answer_lowers_it_at_once_a_close_higher_one_barely_moves_it() {
        let mut f = LatencyFloor::default();
        f.observe(24.0 * MS, 0);
        f.observe(8.0 * MS, MS_U);
        assert_eq!(
            f.ns(),
            Some(8.0 * MS),
            "a recovered destination's first fast answer"
        );
        f.observe(40.0 * MS, MS_U);
        let raised = f.ns().unwrap_or_default();
        assert!(
            (raised - (8.0 + 32.0 / 64.0) * MS).abs() < 1.0,
            "one late answer right after raises it by 1/64 of the gap: {raised}"
        );
    }

    #[test]
    fn sparse_answers_carry_it_to_what_the_destination_is_now() {
        // A destination shunned since it slowed: its re-measurements, a
        // half-life apart, carry its floor up to what it is now, half way
        // each time (1 − e^(−3.5/5) ≈ 0.5).
        let mut f = LatencyFloor::default();
        f.observe(2.0 * MS, 0);
        f.observe(20.0 * MS, 3_500 * MS_U);
        let once = f.ns().unwrap_or_default();
        assert!((10.5 * MS..11.5 * MS).contains(&once), "{once}");
        f.observe(20.0 * MS, 7_000 * MS_U);
        f.observe(20.0 * MS, 10_500 * MS_U);
        let thrice = f.ns().unwrap_or_default();
        assert!(thrice > 17.5 * MS, "{thrice}");
        // A single late answer soon after barely moves it.
        let mut g = LatencyFloor::default();
        g.observe(2.0 * MS, 0);
        g.observe(20.0 * MS, 200 * MS_U);
        let after = g.ns().unwrap_or_default();
        assert!(after < 3.0 * MS, "{after}");
    }

    #[test]
    fn under_a_common_proxy_delay_the_floors_keep_the_service_times_apart() {
        // 8 ms and 24 ms destinations behind a proxy adding 0–30 ms to each
        // answer (most answers get more than 10 ms of it), answers 0.2 ms
        // apart: the floors stay about 3× apart where the means are about 1.6×.
        let mut fast = LatencyFloor::default();
        let mut slow = LatencyFloor::default();
        let mut rng = crate::rng::Rng::from_seed(7);
        let (mut fast_sum, mut slow_sum, n) = (0.0, 0.0, 20_000u64);
        for i in 0..n {
            let delay = |rng: &mut crate::rng::Rng| 30.0 * MS * rng.next_f64().sqrt();
            let (a, b) = (8.0 * MS + delay(&mut rng), 24.0 * MS + delay(&mut rng));
            fast.observe(a, i * 200_000);
            slow.observe(b, i * 200_000);
            fast_sum += a;
            slow_sum += b;
        }
        let ratio_of_means = slow_sum / fast_sum;
        let ratio_of_floors = slow.ns().unwrap_or_default() / fast.ns().unwrap_or(1.0);
        assert!(ratio_of_means < 1.7, "{ratio_of_means}");
        assert!(
            ratio_of_floors > 2.0,
            "floors {:?} {:?}",
            fast.ns(),
            slow.ns()
        );
    }
}
