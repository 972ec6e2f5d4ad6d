//! Passive health: an error-rate EWMA and a consecutive-failure count per
//! destination, and temporary ejection with exponential backoff.
//!
//! Envoy's outlier detection evaluates every 10 s by default; here a
//! destination is ejected on the response that crosses the threshold, so a
//! failing cluster stops receiving traffic within a few requests. The first
//! ejection lasts `eject_base`, each further one doubles up to `eject_max`; a
//! destination that stays healthy for `eject_max` after returning starts
//! over at the base.
//!
//! A destination coming back from an ejection is on probation: its first
//! failure ejects it again at once (for twice as long) instead of after
//! another streak, so a cluster that is still down costs one failed request
//! per ejection period, not `eject_consecutive_failures`. Its first success
//! ends the probation.

use crate::config::SchedulerConfig;

/// Health state of one destination as seen by this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Health {
    /// Error-rate EWMA over responses (0 healthy … 1 all failing).
    pub error_rate: f64,
    /// Responses seen since the last ejection (saturating).
    pub responses: u32,
    pub consecutive_failures: u32,
    /// Ejected until this time (ns); 0 when never ejected.
    pub ejected_until_ns: u64,
    /// Ejections in the current backoff series.
    pub ejections: u32,
    /// Back from an ejection and not yet proven healthy.
    pub probation: bool,
    /// For an ejection adopted from another worker: this worker does not
    /// send the re-admission probe before this time (ns), leaving it to the
    /// worker that ejected. See [`Health::merge_ejection`].
    pub probe_not_before_ns: u64,
    /// The failure streak of the shared record (all workers' failures since
    /// a published success) as this worker last read it. Non-zero means a
    /// success here must be published to end it; zero keeps successes off
    /// shared data.
    pub shared_streak: u32,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    None,
    /// The destination was ejected until the given time.
    Ejected {
        until_ns: u64,
    },
}

impl Health {
    /// Not to be sent traffic: ejected, or (for an adopted ejection) the
    /// ejecting worker's probe still has precedence.
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        now_ns < self.ejected_until_ns || now_ns < self.probe_not_before_ns
    }

    /// Record one response (or reset) outcome.
    pub fn record(&mut self, success: bool, now_ns: u64, config: &SchedulerConfig) -> HealthEvent {
        // Count-based smoothing: the error rate reflects about the last
        // `eject_min_requests` responses, whatever the request rate.
        let alpha = 2.0 / (f64::from(config.eject_min_requests.max(1)) + 1.0);
        let x = if success { 0.0 } else { 1.0 };
        self.error_rate += alpha * (x - self.error_rate);
        self.responses = self.responses.saturating_add(1);
        if success {
            self.consecutive_failures = 0;
            if !self.is_ejected(now_ns) {
                self.probation = false;
            }
            let max_ns = config.eject_max_ms.saturating_mul(1_000_000);
            if self.ejections > 0 && now_ns >= self.ejected_until_ns.saturating_add(max_ns) {
                self.ejections = 0;
            }
            return HealthEvent::None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.is_ejected(now_ns) {
            // Late responses from before the ejection do not extend it.
            return HealthEvent::None;
        }
        let by_probation = self.probation;
        let by_streak = self.consecutive_failures >= config.eject_consecutive_failures;
        let by_rate = self.responses >= config.eject_min_requests
            && self.error_rate >= config.eject_error_rate;
        if !(by_probation || by_streak || by_rate) {
            return HealthEvent::None;
        }
        HealthEvent::Ejected {
            until_ns: self.eject(now_ns, config),
        }
    }

    /// Eject now, for the next length in the backoff series; returns the
    /// end of the ejection.
    pub fn eject(&mut self, now_ns: u64, config: &SchedulerConfig) -> u64 {
        self.ejections = self.ejections.saturating_add(1);
        let until_ns = now_ns.saturating_add(Self::backoff_ns(self.ejections, config));
        self.ejected_until_ns = until_ns;
        // Ejected here: this worker probes first.
        self.probe_not_before_ns = 0;
        // The destination comes back with a clean slate: it must fail
        // afresh to be ejected again (for longer).
        self.consecutive_failures = 0;
        self.error_rate = 0.0;
        self.responses = 0;
        self.probation = true;
        until_ns
    }

    /// Length of the `n`th ejection (n ≥ 1) in a series.
    pub fn backoff_ns(n: u32, config: &SchedulerConfig) -> u64 {
        let shift = n.saturating_sub(1).min(32);
        let ms = config
            .eject_base_ms
            .saturating_mul(1u64 << shift)
            .min(config.eject_max_ms);
        ms.saturating_mul(1_000_000)
    }

    /// Adopt another worker's view: an ejection anywhere applies here too.
    ///
    /// The adopting worker holds back for `probe_grace_ns` after the
    /// ejection ends, so the worker that ejected sends the one
    /// re-admission probe: if the destination is still down, that worker
    /// ejects it again and this one adopts the new ejection before its own
    /// grace ends. Without it every worker would probe at the same instant,
    /// and a destination still down would cost one failed request per
    /// worker per ejection period instead of one. The shared record keeps
    /// the real end of the ejection; the grace is this worker's alone, so
    /// it never compounds through the merge.
    pub fn merge_ejection(&mut self, ejected_until_ns: u64, ejections: u32, probe_grace_ns: u64) {
        if ejected_until_ns > self.ejected_until_ns {
            self.ejected_until_ns = ejected_until_ns;
            self.probe_not_before_ns = ejected_until_ns.saturating_add(probe_grace_ns);
            self.probation = true;
            self.consecutive_failures = 0;
            self.error_rate = 0.0;
            self.responses = 0;
        }
        self.ejections = self.ejections.max(ejections);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn consecutive_failures_eject_with_doubling_backoff() {
        let config = SchedulerConfig::default();
        let mut h = Health::default();
        for i in 0..4 {
            assert_eq!(h.record(false, i, &config), HealthEvent::None);
        }
        assert_eq!(
            h.record(false, 10, &config),
            HealthEvent::Ejected {
                until_ns: 10 + 1000 * MS
            }
        );
        assert!(h.is_ejected(10 + 999 * MS));
        assert!(!h.is_ejected(10 + 1000 * MS));
        // Back on probation: the first failure ejects again, twice as long.
        let t = 2000 * MS;
        assert_eq!(
            h.record(false, t, &config),
            HealthEvent::Ejected {
                until_ns: t + 2000 * MS
            }
        );
        // Back again and healthy: probation ends, a streak is needed again.
        let t = t + 2000 * MS;
        assert_eq!(h.record(true, t, &config), HealthEvent::None);
        assert!(!h.probation);
        for _ in 0..4 {
            assert_eq!(h.record(false, t, &config), HealthEvent::None);
        }
        assert_eq!(
            h.record(false, t, &config),
            HealthEvent::Ejected {
                until_ns: t + 4000 * MS
            }
        );
    }

    #[test]
    fn backoff_is_capped() {
        let config = SchedulerConfig::default();
        assert_eq!(Health::backoff_ns(1, &config), 1000 * MS);
        assert_eq!(Health::backoff_ns(3, &config), 4000 * MS);
        assert_eq!(Health::backoff_ns(10, &config), 30_000 * MS);
        assert_eq!(Health::backoff_ns(u32::MAX, &config), 30_000 * MS);
    }

    #[test]
    fn interleaved_failures_eject_by_rate() {
        let config = SchedulerConfig::default();
        let mut h = Health::default();
        let mut ejected = false;
        for i in 0..40u64 {
            // Two failures, one success: never five in a row.
            let ok = i % 3 == 0;
            if let HealthEvent::Ejected { .. } = h.record(ok, i, &config) {
                ejected = true;
                break;
            }
        }
        assert!(ejected, "{h:?}");
    }

    #[test]
    fn occasional_errors_do_not_eject() {
        let config = SchedulerConfig::default();
        let mut h = Health::default();
        for i in 0..1000u64 {
            assert_eq!(h.record(i % 20 != 0, i, &config), HealthEvent::None);
        }
    }

    #[test]
    fn long_health_resets_the_backoff_series() {
        let config = SchedulerConfig::default();
        let mut h = Health::default();
        for _ in 0..5 {
            h.record(false, 0, &config);
        }
        assert_eq!(h.ejections, 1);
        h.record(true, 1000 * MS + 30_000 * MS, &config);
        assert_eq!(h.ejections, 0);
    }
}
