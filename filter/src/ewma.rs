//! Peak-EWMA latency estimate, as Linkerd's balancer and tower's `PeakEwma`
//! keep it.
//!
//! A rise is taken at once (the estimate jumps to a slower sample), a fall
//! decays with time constant `decay`: one fast response does not erase a
//! slowdown. While a destination receives no traffic its estimate decays
//! toward zero, so a destination that was shunned for being slow is tried
//! again after a while and can prove it recovered.
//!
//! Time is in nanoseconds on the host's clock; the decay is time-based, not
//! sample-based, so the behaviour does not depend on the request rate.

/// A peak-sensitive exponentially weighted moving average of latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    updated_at_ns: u64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    pub const fn new() -> Self {
        Self {
            estimate_ns: 0.0,
            updated_at_ns: 0,
        }
    }

    /// Rebuild from shared state (see `shared_stats`).
    pub fn from_parts(estimate_ns: f64, updated_at_ns: u64) -> Self {
        let estimate_ns = if estimate_ns.is_finite() && estimate_ns > 0.0 {
            estimate_ns
        } else {
            0.0
        };
        Self {
            estimate_ns,
            updated_at_ns,
        }
    }

    pub fn updated_at_ns(&self) -> u64 {
        self.updated_at_ns
    }

    /// The raw estimate at its last update (not decayed for idleness).
    pub fn raw_ns(&self) -> f64 {
        self.estimate_ns
    }

    /// Record one observed latency.
    pub fn observe(&mut self, sample_ns: f64, now_ns: u64, decay_ns: f64) {
        let sample_ns = if sample_ns.is_finite() {
            sample_ns.max(1.0)
        } else {
            return;
        };
        if self.estimate_ns <= 0.0 || sample_ns > self.estimate_ns {
            self.estimate_ns = sample_ns;
        } else {
            let elapsed = now_ns.saturating_sub(self.updated_at_ns) as f64;
            let keep = (-elapsed / decay_ns).exp();
            self.estimate_ns = self.estimate_ns * keep + sample_ns * (1.0 - keep);
        }
        self.updated_at_ns = self.updated_at_ns.max(now_ns);
    }

    /// The estimate at `now`, decayed toward zero for the time without
    /// samples. `None` until the first sample.
    pub fn value(&self, now_ns: u64, decay_ns: f64) -> Option<f64> {
        if self.estimate_ns <= 0.0 {
            return None;
        }
        let idle = now_ns.saturating_sub(self.updated_at_ns) as f64;
        Some(self.estimate_ns * (-idle / decay_ns).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const DECAY: f64 = 5_000.0 * MS as f64;

    #[test]
    fn rise_is_taken_at_once() {
        let mut e = PeakEwma::new();
        e.observe(10.0 * MS as f64, 0, DECAY);
        e.observe(100.0 * MS as f64, 1, DECAY);
        assert_eq!(e.value(1, DECAY), Some(100.0 * MS as f64));
    }

    #[test]
    fn fall_decays_with_time_not_sample_count() {
        let mut e = PeakEwma::new();
        e.observe(100.0 * MS as f64, 0, DECAY);
        // A thousand fast samples within one millisecond barely move it.
        for i in 0..1000 {
            e.observe(1.0 * MS as f64, i * 1000, DECAY);
        }
        let v = e.value(MS, DECAY).expect("value");
        assert!(v > 99.0 * MS as f64, "{v}");
        // One decay period of fast samples brings it most of the way down.
        let mut t = MS;
        while t < 5_000 * MS {
            t += 10 * MS;
            e.observe(1.0 * MS as f64, t, DECAY);
        }
        let v = e.value(t, DECAY).expect("value");
        assert!(v < 40.0 * MS as f64, "{v}");
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let mut e = PeakEwma::new();
        assert_eq!(e.value(0, DECAY), None);
        e.observe(100.0 * MS as f64, 0, DECAY);
        let later = e.value(10_000 * MS, DECAY).expect("value");
        assert!(later < 100.0 * MS as f64 * 0.14, "{later}");
    }

    #[test]
    fn garbage_samples_are_ignored() {
        let mut e = PeakEwma::new();
        e.observe(f64::NAN, 0, DECAY);
        assert_eq!(e.value(0, DECAY), None);
        assert_eq!(PeakEwma::from_parts(f64::INFINITY, 3).value(3, DECAY), None);
    }
}
