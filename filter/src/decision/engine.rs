//! The per-worker engine: the configured services and what this worker has
//! learned about their destinations.
//!
//! Built once per accepted configuration (`Engine::new`), carrying learned
//! latency and health over for destinations that keep their names, so a
//! config push does not forget that a destination is down.

use super::active_probe::ActiveProbe;
use super::outcome::grpc_failure_set;
use super::timing::Timing;
use super::{Decision, Reason};
use crate::authority::{HostTable, ProxyDomain};
use crate::config::{AffinitySource, FactorWeights, PluginConfig};
use crate::ewma::PeakEwma;
use crate::failover;
use crate::floor::LatencyFloor;
use crate::health::Health;
use crate::rng::Rng;
use crate::score::{self, FactorInputs};
use crate::shared_stats;
use crate::trace::hop_text::{HopText, HopTexts};
use crate::trace::otlp::{Batch, SpanBatches};
use crate::trace::TraceMode;

/// This proxy's identity, resolved from config or Envoy's node properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalIdentity {
    pub cluster: String,
    pub locality: Option<String>,
    /// Kubernetes namespace (`node.metadata.NAMESPACE`): which short host
    /// names are this proxy's to serve (`authority`).
    pub namespace: Option<String>,
}

/// Learned and configured state of one destination.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub cluster: String,
    /// The weight decisions use now: `base_weight`, or 0 while the
    /// destination is drained and an undrained one can take the request
    /// (`runtime_weights`).
    pub weight: f64,
    /// The static weight, or the weights channel's.
    pub base_weight: f64,
    /// Drained by the weights channel: no new traffic while any undrained
    /// destination is usable.
    pub drained: bool,
    pub cost: f64,
    pub locality_affinity: f64,
    pub latency: PeakEwma,
    /// This worker's low end of the destination's latencies (`floor`).
    pub floor: LatencyFloor,
    pub health: Health,
    pub in_flight: u32,
    /// Moving average of the in-flight count, sampled at every scored
    /// decision of its service: the load it usually carries, against which
    /// the scorer judges its current count (`score`).
    pub typical_in_flight: f64,
    pub shared_key: String,
    /// Active re-admission, when the service configures a probe.
    pub probe: Option<ActiveProbe>,
    /// Which of its requests read the clock (`timing`).
    pub(super) timing: Timing,
}

impl Destination {
    /// Not to be chosen now: ejected; back on probation and, with active
    /// probing, no probe has passed yet; or back on probation with its one
    /// client request still in flight (half-open, as a circuit breaker): a
    /// destination that is still down then costs at most one failed client
    /// request per ejection period, and none with active probing.
    pub fn is_blocked(&self, now_ns: u64) -> bool {
        self.health.is_ejected(now_ns)
            || (self.health.probation && (self.in_flight > 0 || self.awaiting_probe()))
    }

    /// Can take a request now: some weight and not blocked.
    pub(super) fn is_usable(&self, now_ns: u64) -> bool {
        self.weight > 0.0 && !self.is_blocked(now_ns)
    }

    /// Active probing is on and no probe passed for the current ejection.
    pub(super) fn awaiting_probe(&self) -> bool {
        self.probe
            .as_ref()
            .is_some_and(|p| !p.passed(self.health.ejected_until_ns))
    }
}

/// One governed service.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub routing_header: String,
    pub affinity: AffinitySource,
    pub weights: FactorWeights,
    pub destinations: Vec<Destination>,
    pub(super) failover: Vec<usize>,
    pub(super) static_only: bool,
    /// Some destination times only some of its requests: a decision may
    /// use the worker's latest clock reading (`timing`).
    pub(super) sampling: bool,
    /// Some destination is drained: weights are refreshed per decision.
    pub(super) any_drained: bool,
    // Scratch space reused by every decision: no allocation per request.
    pub(super) inputs: Vec<FactorInputs>,
    pub(super) scores: Vec<f64>,
    pub(super) effective: Vec<f64>,
    /// Smooth weighted round-robin state (static mode).
    pub(super) rotation: Vec<f64>,
    /// Decisions since the last [`Engine::drain_decision_counts`], by
    /// destination (then one slot for the mesh default) and reason.
    pub(super) decisions: Vec<[u32; 6]>,
}

/// The per-worker routing engine.
#[derive(Debug)]
pub struct Engine {
    pub config: PluginConfig,
    pub local: LocalIdentity,
    pub services: Vec<Service>,
    hosts: HostTable,
    pub(super) rng: Rng,
    /// Which accepted configuration this is (1, 2, …): a request routed
    /// under an older one completes without touching this one's state.
    epoch: u64,
    /// Finished spans waiting for export (span mode), encoded, bounded.
    pub(super) spans: SpanBatches,
    /// Span mode's text per hop; empty in propagate mode.
    pub(super) hop_text: HopTexts,
    /// The trace headers' values of the last request, kept for the next
    /// one's ([`crate::trace::propagate_with`]).
    pub(super) trace_values: String,
    /// `scheduler.grpcFailureCodes` as a bit set.
    pub(super) grpc_failures: u32,
    /// The latest clock reading this worker made (Unix ns; 0: none yet).
    pub(super) clock_ns: u64,
    /// When the strides were last set ([`Engine::retune_timing`]).
    retuned_ns: u64,
}

impl Engine {
    /// Build from a validated config. `previous` carries learned latency and
    /// health over a reconfiguration for destinations that keep their names.
    pub fn new(
        config: PluginConfig,
        local: LocalIdentity,
        seed: u64,
        previous: Option<&Engine>,
    ) -> Self {
        let decay_ns = config.scheduler.decay_ms as f64 * 1e6;
        let default_rtt_ns = config.scheduler.default_rtt_ms as f64 * 1e6;
        let fresh_latency = PeakEwma::new(default_rtt_ns, decay_ns);
        let services = config
            .services
            .iter()
            .map(|sc| {
                let weights = sc.weights.unwrap_or(config.scheduler.weights);
                let destinations: Vec<Destination> = sc
                    .destinations
                    .iter()
                    .map(|dc| {
                        let learned = previous.and_then(|p| p.find(&sc.name, &dc.name));
                        Destination {
                            name: dc.name.clone(),
                            cluster: dc.cluster().to_string(),
                            weight: dc.weight,
                            base_weight: dc.weight,
                            drained: false,
                            cost: dc.cost,
                            locality_affinity: score::locality_affinity(
                                local.locality.as_deref(),
                                dc.locality.as_deref(),
                            ),
                            latency: learned.map_or(fresh_latency, |d| {
                                d.latency.retuned(default_rtt_ns, decay_ns)
                            }),
                            floor: learned.map(|d| d.floor).unwrap_or_default(),
                            health: learned.map(|d| d.health).unwrap_or_default(),
                            in_flight: 0,
                            typical_in_flight: 0.0,
                            shared_key: shared_stats::key(&sc.name, &dc.name),
                            probe: sc
                                .probe
                                .as_ref()
                                .map(|p| ActiveProbe::new(p.cluster_for(&dc.name))),
                            timing: Timing::default(),
                        }
                    })
                    .collect();
                let n = destinations.len();
                let mut service = Service {
                    name: sc.name.clone(),
                    routing_header: sc.routing_header.clone(),
                    affinity: sc.affinity.clone(),
                    failover: Vec::new(),
                    static_only: weights.latency == 0.0 && weights.load == 0.0,
                    sampling: false,
                    any_drained: false,
                    weights,
                    destinations,
                    inputs: Vec::with_capacity(n),
                    scores: vec![0.0; n],
                    effective: vec![0.0; n],
                    rotation: vec![0.0; n],
                    decisions: vec![[0; 6]; n + 1],
                };
                service.failover = failover_order(&service, &sc.failover);
                service
            })
            .collect();
        let hosts = host_table(&config, &local);
        let grpc_failures = grpc_failure_set(&config.scheduler.grpc_failure_codes);
        let mut engine = Self {
            grpc_failures,
            config,
            local,
            services,
            hosts,
            rng: Rng::from_seed(seed),
            epoch: previous.map_or(1, |p| p.epoch.saturating_add(1)),
            spans: SpanBatches::default(),
            hop_text: HopTexts::default(),
            trace_values: String::new(),
            clock_ns: previous.map_or(0, |p| p.clock_ns),
            retuned_ns: previous.map_or(0, |p| p.retuned_ns),
        };
        engine.hop_text = hop_texts(&engine);
        engine
    }

    /// A clock reading: the latest one stands in for "now" where a request
    /// goes untimed (`timing`).
    pub(super) fn note_time(&mut self, now_ns: u64) {
        self.clock_ns = self.clock_ns.max(now_ns);
    }

    /// On the tick: set each destination's timing stride from the requests
    /// it drew since the last tick. In span mode every request is timed
    /// (a span needs its own start and end).
    pub fn retune_timing(&mut self, now_ns: u64) {
        self.note_time(now_ns);
        let elapsed = now_ns.saturating_sub(self.retuned_ns);
        let first = self.retuned_ns == 0;
        self.retuned_ns = now_ns;
        let spans = self.config.tracing.mode == TraceMode::Span;
        for svc in &mut self.services {
            for d in &mut svc.destinations {
                // The first tick has no interval to judge a rate by.
                d.timing.retune(if first || spans { 0 } else { elapsed });
            }
            svc.sampling = svc.destinations.iter().any(|d| d.timing.is_sampling());
        }
    }

    fn find(&self, service: &str, destination: &str) -> Option<&Destination> {
        self.services
            .iter()
            .find(|s| s.name == service)?
            .destinations
            .iter()
            .find(|d| d.name == destination)
    }

    /// Which accepted configuration this engine serves (1 for the first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Adopt this proxy's identity once it is known: locality closeness and
    /// failover order depend on it.
    pub fn set_local(&mut self, local: LocalIdentity) {
        for (svc, sc) in self.services.iter_mut().zip(&self.config.services) {
            for (d, dc) in svc.destinations.iter_mut().zip(&sc.destinations) {
                d.locality_affinity =
                    score::locality_affinity(local.locality.as_deref(), dc.locality.as_deref());
            }
            svc.failover = failover_order(svc, &sc.failover);
        }
        self.hosts = host_table(&self.config, &local);
        self.local = local;
        self.hop_text = hop_texts(self);
    }

    /// The service governing `authority`, if any.
    pub fn service_for(&self, authority: &[u8]) -> Option<usize> {
        self.hosts.lookup(authority)
    }

    /// The destination a routing-header value names.
    pub fn destination_named(&self, service: usize, name: &[u8]) -> Option<usize> {
        self.services
            .get(service)?
            .destinations
            .iter()
            .position(|d| d.name.as_bytes() == name)
    }

    pub(super) fn dest_mut(
        &mut self,
        service: usize,
        destination: usize,
    ) -> Option<&mut Destination> {
        self.services
            .get_mut(service)?
            .destinations
            .get_mut(destination)
    }

    /// Count a decision for the `tideway.requests.*` counters.
    pub(super) fn count(&mut self, d: &Decision) {
        let Some(svc) = self.services.get_mut(d.service) else {
            return;
        };
        let slot = d.destination.unwrap_or(svc.destinations.len());
        if let Some(counts) = svc.decisions.get_mut(slot) {
            let c = &mut counts[d.reason.index()];
            *c = c.saturating_add(1);
        }
    }

    /// Hand every decision count gathered since the last call to `f`
    /// (service, destination slot — `destinations.len()` for the mesh
    /// default —, reason, count) and reset them. The host adds them to its
    /// counters on the tick: one host call per counter that moved, not one
    /// per request.
    pub fn drain_decision_counts(&mut self, mut f: impl FnMut(usize, usize, Reason, u32)) {
        for (s, svc) in self.services.iter_mut().enumerate() {
            for (slot, counts) in svc.decisions.iter_mut().enumerate() {
                for (reason, count) in Reason::ALL.iter().zip(counts.iter_mut()) {
                    if *count > 0 {
                        f(s, slot, *reason, *count);
                        *count = 0;
                    }
                }
            }
        }
    }

    /// The span export requests due at `now_ns` (span mode), oldest
    /// first: full batches, and the one being filled once it has waited
    /// `tracing.collector.flushMs`; without a time (before a
    /// reconfiguration, or when the clock cannot be read), all of them.
    pub fn take_span_batches(&mut self, now_ns: Option<u64>) -> Vec<Batch> {
        match (now_ns, &self.config.tracing.collector) {
            (Some(now), Some(c)) => self.spans.take_due(now, u64::from(c.flush_ms) * 1_000_000),
            _ => self.spans.take_due(0, 0),
        }
    }

    /// Hands sent span batches back: their buffers serve the next ones.
    pub fn recycle_span_batches(&mut self, sent: Vec<Batch>) {
        self.spans.recycle(sent);
    }

    /// The latency estimates now and the scores behind the last
    /// score-based decision of `service`, for the optional
    /// `x-tideway-decision` header
    /// (`service=…; destination=…; reason=…; latency_ms=a:2.1,…; scores=a:1.000,…`).
    pub fn explain(&self, decision: &Decision) -> String {
        use std::fmt::Write;
        let Some(svc) = self.services.get(decision.service) else {
            return String::new();
        };
        let mut out = String::new();
        let chosen = decision.destination.and_then(|d| svc.destinations.get(d));
        let _ = write!(
            out,
            "service={}; destination={}; reason={}; latency_ms=",
            svc.name,
            chosen.map_or("-", |d| d.name.as_str()),
            decision.reason.as_str()
        );
        // The estimates the scores came from (the default RTT while
        // unmeasured).
        for (i, d) in svc.destinations.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}{}:{:.1}", d.name, d.latency.estimate_ns() / 1e6);
        }
        out.push_str("; scores=");
        for (i, (d, s)) in svc.destinations.iter().zip(&svc.scores).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}{}:{s:.3}", d.name);
        }
        out
    }
}

/// Span mode's text for every hop of `engine`'s services: one per
/// destination, then one for the mesh default (no target).
fn hop_texts(engine: &Engine) -> HopTexts {
    if engine.config.tracing.mode != TraceMode::Span {
        return HopTexts::default();
    }
    let source = engine.local.cluster.as_str();
    let texts = engine
        .services
        .iter()
        .map(|svc| {
            svc.destinations
                .iter()
                .map(|d| d.cluster.as_str())
                .chain([""])
                .map(|target| HopText::new(source, target, &svc.name))
                .collect()
        })
        .collect();
    HopTexts(texts)
}

/// The host table for this proxy's namespace and cluster domain.
fn host_table(config: &PluginConfig, local: &LocalIdentity) -> HostTable {
    HostTable::new(
        config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.hosts.as_slice())),
        ProxyDomain {
            namespace: local.namespace.as_deref(),
            cluster_domain: config.local.cluster_domain(),
        },
    )
}

/// The failover order of `svc`'s destinations by their current locality
/// closeness, after the configured explicit order.
fn failover_order(svc: &Service, explicit: &[String]) -> Vec<usize> {
    let names: Vec<&str> = svc.destinations.iter().map(|d| d.name.as_str()).collect();
    let closeness: Vec<f64> = svc
        .destinations
        .iter()
        .map(|d| d.locality_affinity)
        .collect();
    failover::order(&names, &closeness, explicit)
}
