//! Sharing what a worker learned with the other workers of the proxy,
//! through the host's shared data (`shared_stats` holds the record).
//!
//! On the tick every destination's record is merged ([`Engine::sync_shared`]);
//! after a failure at once ([`Engine::share_outcome`]), so a failure streak
//! is counted across workers; after an ejection that did not come from a
//! response (a failed probe) at once too ([`Engine::publish`]). A success
//! touches shared data only to end a streak it saw, so steady healthy
//! traffic makes no shared-data call at all.

use super::engine::{Destination, Engine, Service};
use crate::config::SchedulerConfig;
use crate::health::HealthEvent;
use crate::shared_stats::{self, SharedStats, SharedStore, StoreError, StreakOp};

/// A shared record that was not understood (and was replaced).
pub type BadRecord = (String, shared_stats::DecodeError);

impl Engine {
    /// Publish one destination's record now (after an ejection that did
    /// not come from a response, such as a failed probe).
    pub fn publish(
        &mut self,
        store: &mut dyn SharedStore,
        service: usize,
        destination: usize,
        now_ns: u64,
    ) -> Option<BadRecord> {
        let (services, sync) = self.for_sync(now_ns);
        let d = services
            .get_mut(service)?
            .destinations
            .get_mut(destination)?;
        sync_destination(d, store, &sync, StreakOp::Keep).1
    }

    /// Merge every destination's record with the other workers' through
    /// shared data (on the tick).
    pub fn sync_shared(&mut self, store: &mut dyn SharedStore, now_ns: u64) -> Vec<BadRecord> {
        let (services, sync) = self.for_sync(now_ns);
        let mut bad = Vec::new();
        for svc in services.iter_mut() {
            for d in &mut svc.destinations {
                bad.extend(sync_destination(d, store, &sync, StreakOp::Keep).1);
            }
        }
        bad
    }

    /// Share a response's outcome with the other workers, after it was
    /// recorded here.
    ///
    /// A failure merges the destination's record at once and adds to the
    /// shared failure streak. Why not only on the tick: were the streak
    /// counted per worker, each worker would pay its own
    /// `ejectConsecutiveFailures` before ejecting a destination that went
    /// down. Counted across workers, the failure that completes the streak
    /// anywhere ejects the destination (inside the compare-and-swap, so one
    /// worker ejects), the ejecting worker publishes at once, and every
    /// other worker adopts the ejection at its next failure, not at the next
    /// tick.
    ///
    /// A success touches shared data only when this worker last saw a
    /// streak in the record, to end it; in steady health successes make no
    /// host call at all.
    pub(super) fn share_outcome(
        &mut self,
        store: &mut dyn SharedStore,
        service: usize,
        destination: usize,
        success: bool,
        now_ns: u64,
    ) -> (HealthEvent, Option<BadRecord>) {
        let (services, sync) = self.for_sync(now_ns);
        let Some(d) = services
            .get_mut(service)
            .and_then(|s| s.destinations.get_mut(destination))
        else {
            return (HealthEvent::None, None);
        };
        let op = match (success, d.health.shared_streak) {
            (false, _) => StreakOp::Fail,
            (true, 0) => return (HealthEvent::None, None),
            (true, _) => StreakOp::Reset,
        };
        sync_destination(d, store, &sync, op)
    }

    /// The services to sync and what a sync needs, borrowed apart: the
    /// config is read while destinations are written.
    fn for_sync(&mut self, now_ns: u64) -> (&mut [Service], SyncParams<'_>) {
        let sync = SyncParams {
            now_ns,
            probe_grace_ns: probe_grace_ns(&self.config.scheduler),
            scheduler: &self.config.scheduler,
        };
        (&mut self.services, sync)
    }
}

/// How long a worker that adopted an ejection leaves the re-admission
/// probe to the worker that ejected: long enough for that worker's probe
/// to fail, that worker to publish and this one to adopt, even if both
/// learn only on their ticks.
fn probe_grace_ns(scheduler: &SchedulerConfig) -> u64 {
    scheduler
        .tick_ms
        .saturating_mul(3)
        .saturating_mul(1_000_000)
}

/// What a sync needs from the engine.
struct SyncParams<'c> {
    now_ns: u64,
    probe_grace_ns: u64,
    scheduler: &'c SchedulerConfig,
}

/// Read-merge-write one destination's shared record (compare-and-swap,
/// retried a few times against concurrent writers), applying `op` to the
/// shared failure streak; a `Fail` that completes the streak ejects the
/// destination here.
fn sync_destination(
    d: &mut Destination,
    store: &mut dyn SharedStore,
    p: &SyncParams<'_>,
    op: StreakOp,
) -> (HealthEvent, Option<BadRecord>) {
    const ATTEMPTS: usize = 4;
    let now_ns = p.now_ns;
    let mine = SharedStats {
        latency: d.latency.measurement(),
        ejected_until_ns: d.health.ejected_until_ns,
        ejections: d.health.ejections,
        failure_streak: 0,
    };
    let mut bad = None;
    for _ in 0..ATTEMPTS {
        let mut latency = d.latency;
        let (mut merged, cas) = match store.get(&d.shared_key) {
            Ok(Some((bytes, cas))) => match SharedStats::decode(&bytes) {
                Ok(theirs) => {
                    latency.merge(theirs.latency);
                    (mine.merge(&theirs, latency.measurement()), Some(cas))
                }
                Err(e) => {
                    bad = Some((d.shared_key.clone(), e));
                    (mine, Some(cas))
                }
            },
            Ok(None) => (mine, None),
            // Unread, so nothing may be written over it.
            Err(_) => break,
        };
        merged.failure_streak = match op {
            StreakOp::Keep => merged.failure_streak,
            StreakOp::Fail => merged.failure_streak.saturating_add(1),
            StreakOp::Reset => 0,
        };
        let mut health = d.health;
        let mut event = HealthEvent::None;
        if now_ns < merged.ejected_until_ns {
            // Failures during an ejection are late answers to requests sent
            // before it; they do not start the next streak.
            merged.failure_streak = 0;
        } else if op == StreakOp::Fail
            && merged.failure_streak >= p.scheduler.eject_consecutive_failures
        {
            health.ejections = health.ejections.max(merged.ejections);
            let until_ns = health.eject(now_ns, p.scheduler);
            event = HealthEvent::Ejected { until_ns };
            merged.ejected_until_ns = until_ns;
            merged.ejections = health.ejections;
            merged.failure_streak = 0;
        }
        match store.set(&d.shared_key, &merged.encode(), cas) {
            Ok(()) => {
                d.latency = latency;
                health.merge_ejection(merged.ejected_until_ns, merged.ejections, p.probe_grace_ns);
                health.shared_streak = merged.failure_streak;
                d.health = health;
                return (event, bad);
            }
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Unavailable) => break,
        }
    }
    (HealthEvent::None, bad)
}
