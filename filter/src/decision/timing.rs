//! Which requests read the clock: at high rates, one in `stride` per
//! destination.
//!
//! Why: under Envoy each clock read is a host call (about 1.5k
//! instructions, `cargo xtask bench -- --only instructions`), and a timed
//! request makes two, at its start and at its response: more than half of
//! what the filter costs over the steering floor (3,048 of 5,125 in the
//! quick instruction run). A latency estimate does not need
//! every request's sample once a destination draws thousands a second; it
//! needs samples often enough to see a change within a few milliseconds.
//! So on the tick each destination's stride is set from the requests it
//! drew since the last one, to keep about [`TIMED_PER_SECOND`] of them
//! timed; below twice that rate every request is timed, as before, and a
//! destination that is being shunned (a few requests a second) is timed
//! on every one. A failure is timed whatever the stride (it weighs on the
//! estimate: `PeakEwma::observe_failure`).
//!
//! An untimed request still needs "now" for its decision (ejections,
//! staleness, decay): it uses the worker's latest clock reading, which,
//! while any stride is above 1, a timed request refreshed a fraction of a
//! millisecond earlier (and the tick at the latest a tick ago, after
//! traffic stops).

/// Timed requests a second to keep per destination and worker, at least.
pub const TIMED_PER_SECOND: f64 = 1000.0;

/// One destination's timing on one worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Requests sent there since the last retune.
    requests: u32,
    /// Time one request in this many (0 and 1: every one).
    stride: u32,
    /// Untimed requests left before the next timed one.
    untimed_left: u32,
}

impl Timing {
    /// Count a request sent there; whether it is to be timed.
    pub fn next_is_timed(&mut self) -> bool {
        self.requests = self.requests.saturating_add(1);
        if self.untimed_left == 0 {
            self.untimed_left = self.stride.saturating_sub(1);
            true
        } else {
            self.untimed_left -= 1;
            false
        }
    }

    /// Set the stride from the requests counted over the last `elapsed_ns`
    /// (the tick), and start counting again.
    pub fn retune(&mut self, elapsed_ns: u64) {
        let stride = if elapsed_ns == 0 {
            1.0
        } else {
            let per_second = f64::from(self.requests) * 1e9 / elapsed_ns as f64;
            (per_second / TIMED_PER_SECOND).floor().max(1.0)
        };
        self.stride = stride.min(f64::from(u32::MAX)) as u32;
        self.untimed_left = self.untimed_left.min(self.stride.saturating_sub(1));
        self.requests = 0;
    }

    /// Some requests go untimed.
    pub fn is_sampling(&self) -> bool {
        self.stride > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn timed_of(t: &mut Timing, n: u32) -> u32 {
        (0..n).map(|_| u32::from(t.next_is_timed())).sum()
    }

    #[test]
    fn every_request_is_timed_until_a_tick_has_seen_a_high_rate() {
        let mut t = Timing::default();
        assert_eq!(timed_of(&mut t, 5000), 5000);
        assert!(!t.is_sampling());
        // 1,900 a second: below twice the target, every one still timed.
        let mut t = Timing::default();
        timed_of(&mut t, 380);
        t.retune(SECOND / 5);
        assert!(!t.is_sampling());
        assert_eq!(timed_of(&mut t, 1000), 1000);
    }

    #[test]
    fn at_a_high_rate_about_the_target_rate_is_timed_and_a_drop_restores_every_one() {
        let mut t = Timing::default();
        // 20,000 a second over a 200 ms tick.
        timed_of(&mut t, 4000);
        t.retune(SECOND / 5);
        assert!(t.is_sampling());
        let timed = timed_of(&mut t, 4000);
        assert_eq!(timed, 200, "one in 20");
        // The rate falls to 100 a second: the next tick times every one.
        t.retune(SECOND / 5);
        timed_of(&mut t, 20);
        t.retune(SECOND / 5);
        assert!(!t.is_sampling());
        assert_eq!(timed_of(&mut t, 50), 50);
    }

    #[test]
    fn a_zero_length_tick_times_every_request() {
        let mut t = Timing::default();
        timed_of(&mut t, 100_000);
        t.retune(0);
        assert_eq!(timed_of(&mut t, 10), 10);
    }
}
