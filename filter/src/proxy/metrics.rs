//! Metric ids and counting: the engine's counts go to Envoy's counters on
//! the tick, and what the core reports (an ejection, a replaced shared
//! record, a dropped span) is counted and logged.

use super::abi::{self, Level, MetricKind};
use super::log;
use crate::decision::{Completion, Engine, Reason};
use crate::metrics;
use crate::weights_channel::RejectReason;

/// Metric ids, defined once per configuration (`u32::MAX`: the host
/// refused to define it, so it is skipped).
#[derive(Default)]
pub(super) struct Metrics {
    /// [service][destination, then one slot for `none`][reason]
    pub(super) requests: Vec<Vec<[u32; 6]>>,
    pub(super) ejections: Vec<Vec<u32>>,
    pub(super) generation: u32,
    pub(super) hash: u32,
    pub(super) rejected: u32,
    pub(super) decision_errors: u32,
    pub(super) host_call_errors: u32,
    pub(super) locality_known: u32,
    pub(super) spans_exported: u32,
    pub(super) spans_dropped: u32,
    pub(super) weights_adopted: u32,
    pub(super) weights_expired: u32,
    pub(super) weights_poll_errors: u32,
    pub(super) weights_version: u32,
    /// By `RejectReason::index`.
    pub(super) weights_rejected: [u32; 4],
}

pub(super) fn define(kind: MetricKind, name: &str) -> u32 {
    abi::define_metric(kind, name).unwrap_or_else(|e| {
        log(
            Level::Warn,
            &format!("tideway: could not define metric {name}: {e}"),
        );
        u32::MAX
    })
}

pub(super) fn add(id: u32, n: i64) {
    if id != u32::MAX && n != 0 {
        let _ = abi::increment_metric(id, n);
    }
}

pub(super) fn record(id: u32, value: u64) {
    if id != u32::MAX {
        let _ = abi::record_metric(id, value);
    }
}

impl Metrics {
    pub(super) fn define_fixed(&mut self) {
        self.generation = define(MetricKind::Gauge, metrics::CONFIG_GENERATION);
        self.hash = define(MetricKind::Gauge, metrics::CONFIG_HASH);
        self.rejected = define(MetricKind::Counter, metrics::CONFIG_REJECTED);
        self.decision_errors = define(MetricKind::Counter, metrics::DECISION_ERRORS);
        self.host_call_errors = define(MetricKind::Counter, metrics::HOST_CALL_ERRORS);
        self.locality_known = define(MetricKind::Gauge, metrics::LOCALITY_KNOWN);
        self.spans_exported = define(MetricKind::Counter, metrics::SPANS_EXPORTED);
        self.spans_dropped = define(MetricKind::Counter, metrics::SPANS_DROPPED);
        self.weights_adopted = define(MetricKind::Counter, metrics::WEIGHTS_ADOPTED);
        self.weights_expired = define(MetricKind::Counter, metrics::WEIGHTS_EXPIRED);
        self.weights_poll_errors = define(MetricKind::Counter, metrics::WEIGHTS_POLL_ERRORS);
        self.weights_version = define(MetricKind::Gauge, metrics::WEIGHTS_VERSION);
        self.weights_rejected =
            RejectReason::ALL.map(|r| define(MetricKind::Counter, &metrics::weights_rejected(r)));
    }

    pub(super) fn define_for(&mut self, engine: &Engine) {
        self.requests = engine
            .services
            .iter()
            .map(|s| {
                let dest_names = s
                    .destinations
                    .iter()
                    .map(|d| Some(d.name.as_str()))
                    .chain([None]);
                dest_names
                    .map(|d| {
                        Reason::ALL
                            .map(|r| define(MetricKind::Counter, &metrics::requests(&s.name, d, r)))
                    })
                    .collect()
            })
            .collect();
        self.ejections = engine
            .services
            .iter()
            .map(|s| {
                s.destinations
                    .iter()
                    .map(|d| define(MetricKind::Counter, &metrics::ejections(&s.name, &d.name)))
                    .collect()
            })
            .collect();
    }

    /// Add the engine's decision counts since the last flush to Envoy's
    /// counters.
    pub(super) fn flush(&self, engine: &mut Engine) {
        engine.drain_decision_counts(|service, slot, reason, count| {
            if let Some(id) = self
                .requests
                .get(service)
                .and_then(|s| s.get(slot))
                .map(|ids| ids[reason.index()])
            {
                add(id, i64::from(count));
            }
        });
    }
}

/// Act on what completing a request step reported.
pub(super) fn report(engine: &Engine, metrics: &Metrics, done: &Completion, now: u64) {
    if let Some(e) = done.ejection {
        report_ejection(engine, metrics, e.service, e.destination, e.until_ns, now);
    }
    if let Some((key, error)) = &done.bad_record {
        log(
            Level::Warn,
            &format!("tideway: replaced shared record {key}: {error}"),
        );
    }
    if done.span_dropped {
        add(metrics.spans_dropped, 1);
    }
}

/// Count and log an ejection.
pub(super) fn report_ejection(
    engine: &Engine,
    metrics: &Metrics,
    service: usize,
    destination: usize,
    until_ns: u64,
    now: u64,
) {
    if let Some(id) = metrics
        .ejections
        .get(service)
        .and_then(|e| e.get(destination))
    {
        add(*id, 1);
    }
    let Some(svc) = engine.services.get(service) else {
        return;
    };
    let name = svc
        .destinations
        .get(destination)
        .map_or("?", |d| d.name.as_str());
    log(
        Level::Warn,
        &format!(
            "tideway: ejected {}/{name} for {} ms",
            svc.name,
            until_ns.saturating_sub(now) / 1_000_000
        ),
    );
}
