//! Active re-admission: when a destination's ejection ends, an out-of-band
//! health request (the service's `probe`) decides whether it comes back,
//! so no client request is risked on a destination still down.
//!
//! Ejections are told apart by their end time: a probe passed (or in
//! flight) for one ejection says nothing about the next. The host sends
//! what [`Engine::probes_due`] lists, reports whether it could
//! ([`Engine::probe_dispatched`]) and what came back
//! ([`Engine::probe_result`]).

use super::engine::Engine;
use crate::health::HealthEvent;

impl Engine {
    /// Destinations whose re-admission probe is due: ejection over (and,
    /// for an adopted ejection, the ejecting worker's turn over), no probe
    /// passed or in flight for it. Called on the tick.
    pub fn probes_due(&self, now_ns: u64) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.services.iter().enumerate().flat_map(move |(s, svc)| {
            svc.destinations
                .iter()
                .enumerate()
                .filter_map(move |(d, dest)| {
                    let probe = dest.probe.as_ref()?;
                    let due = dest.health.probation
                        && !dest.health.is_ejected(now_ns)
                        && dest.awaiting_probe()
                        && probe.in_flight_for.is_none();
                    due.then_some((s, d))
                })
        })
    }

    /// A probe for `destination`'s current ejection was sent (`sent`), or
    /// could not be (the cluster is unknown to Envoy, say): then the
    /// destination falls back to passive re-admission for this ejection
    /// rather than staying out for good.
    pub fn probe_dispatched(&mut self, service: usize, destination: usize, sent: bool) {
        if let Some(d) = self.dest_mut(service, destination) {
            let until = d.health.ejected_until_ns;
            if let Some(p) = d.probe.as_mut() {
                if sent {
                    p.in_flight_for = Some(until);
                } else {
                    p.passed_for = until;
                }
            }
        }
    }

    /// A probe's answer: 2xx (`passed`) re-admits the destination (on
    /// probation: its first client failure ejects it again); anything
    /// else ejects it again for the next backoff length. An answer for an
    /// ejection that has since been replaced is ignored.
    pub fn probe_result(
        &mut self,
        service: usize,
        destination: usize,
        passed: bool,
        now_ns: u64,
    ) -> HealthEvent {
        let Self {
            config, services, ..
        } = self;
        let Some(d) = services
            .get_mut(service)
            .and_then(|s| s.destinations.get_mut(destination))
        else {
            return HealthEvent::None;
        };
        let Some(p) = d.probe.as_mut() else {
            return HealthEvent::None;
        };
        let current = d.health.ejected_until_ns;
        if p.in_flight_for.take() != Some(current) || d.health.is_ejected(now_ns) {
            return HealthEvent::None;
        }
        if passed {
            p.passed_for = current;
            return HealthEvent::None;
        }
        HealthEvent::Ejected {
            until_ns: d.health.eject(now_ns, &config.scheduler),
        }
    }
}
