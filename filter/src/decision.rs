//! The routing engine: per-service state and the per-request decision.
//!
//! One `Engine` lives in each worker VM. A request is matched to a service by
//! host, then:
//! - with a session key: weighted rendezvous hashing over the static weights
//!   (so a session sticks, and moves only if its destination is ejected or
//!   the weights change);
//! - without one: each candidate's effective weight is
//!   `weight × score^sharpness` (score from `score`), two candidates are
//!   drawn by effective weight, and the better-scored one wins —
//!   power-of-two-choices, so a stale score cannot herd a worker's traffic
//!   onto one destination. When the latency and load factors are off the
//!   scores cannot change between requests, and the choice is smooth
//!   weighted round-robin (nginx's algorithm) instead: a static canary split
//!   is then exact over any window, not just on average, and not bent by
//!   P2C;
//! - a chosen destination that is ejected fails over (`failover`); when no
//!   destination is usable the request goes to the mesh's default route.
//!
//! Outcomes flow back through `observe_response` and `end`: latency into
//! the peak-EWMA, status into `health`, in-flight counts into load.

use crate::affinity;
use crate::authority::{HostTable, ProxyDomain};
use crate::config::{AffinitySource, FactorWeights, PluginConfig, SchedulerConfig};
use crate::ewma::PeakEwma;
use crate::failover;
use crate::health::{Health, HealthEvent};
use crate::rng::Rng;
use crate::score::{self, FactorInputs};
use crate::shared_stats::{self, SharedStats, SharedStore, StreakOp};

/// Why a destination was chosen; a metrics dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Dynamic multi-factor scoring (P2C).
    Score,
    /// Static weights only (latency and load factors off).
    Static,
    /// Session affinity (rendezvous hashing).
    Affinity,
    /// The choice was ejected; the failover order picked another.
    Failover,
    /// A trusted caller named the destination in the routing header.
    TrustedHeader,
    /// Nothing usable: left to the mesh's default route.
    MeshDefault,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Score,
        Reason::Static,
        Reason::Affinity,
        Reason::Failover,
        Reason::TrustedHeader,
        Reason::MeshDefault,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Score => "score",
            Reason::Static => "static",
            Reason::Affinity => "affinity",
            Reason::Failover => "failover",
            Reason::TrustedHeader => "trusted_header",
            Reason::MeshDefault => "mesh_default",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub service: usize,
    /// `None`: no routing header; the mesh's default route serves it.
    pub destination: Option<usize>,
    pub reason: Reason,
}

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
    pub weight: f64,
    pub cost: f64,
    pub locality_affinity: f64,
    pub latency: PeakEwma,
    pub health: Health,
    pub in_flight: u32,
    pub shared_key: String,
    /// Active re-admission, when the service configures a probe.
    pub probe: Option<ActiveProbe>,
}

/// A destination's out-of-band re-admission probe (`ServiceConfig::probe`).
///
/// Ejections are told apart by their end time: a probe passed (or in
/// flight) for one ejection says nothing about the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveProbe {
    /// The Envoy cluster the probe is sent to.
    pub cluster: String,
    /// The ejection a probe is in flight for.
    in_flight_for: Option<u64>,
    /// The ejection a probe passed for (or that fell back to passive
    /// re-admission because no probe could be sent).
    passed_for: u64,
}

impl ActiveProbe {
    pub fn new(cluster: String) -> Self {
        Self {
            cluster,
            in_flight_for: None,
            passed_for: 0,
        }
    }
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

    /// Active probing is on and no probe passed for the current ejection.
    fn awaiting_probe(&self) -> bool {
        self.probe
            .as_ref()
            .is_some_and(|p| p.passed_for != self.health.ejected_until_ns)
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
    failover: Vec<usize>,
    static_only: bool,
    // Scratch space reused by every decision: no allocation per request.
    inputs: Vec<FactorInputs>,
    scores: Vec<f64>,
    effective: Vec<f64>,
    /// Smooth weighted round-robin state (static mode).
    rotation: Vec<f64>,
}

/// What ended a request, for health accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this `:status`.
    Status(u32),
    /// The stream ended without response headers (reset, timeout).
    Reset,
}

impl Outcome {
    /// 5xx and gateway errors count as failures, as Envoy's outlier detection
    /// counts them; 4xx are the client's doing.
    pub fn is_success(self) -> bool {
        match self {
            Outcome::Status(s) => !(500..=599).contains(&s),
            Outcome::Reset => false,
        }
    }
}

/// The per-worker routing engine.
#[derive(Debug)]
pub struct Engine {
    pub config: PluginConfig,
    pub local: LocalIdentity,
    pub services: Vec<Service>,
    hosts: HostTable,
    rng: Rng,
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
                            cost: dc.cost,
                            locality_affinity: score::locality_affinity(
                                local.locality.as_deref(),
                                dc.locality.as_deref(),
                            ),
                            latency: learned.map_or(fresh_latency, |d| {
                                d.latency.retuned(default_rtt_ns, decay_ns)
                            }),
                            health: learned.map(|d| d.health).unwrap_or_default(),
                            in_flight: 0,
                            shared_key: shared_stats::key(&sc.name, &dc.name),
                            probe: sc
                                .probe
                                .as_ref()
                                .map(|p| ActiveProbe::new(p.cluster_for(&dc.name))),
                        }
                    })
                    .collect();
                let names: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
                let closeness: Vec<f64> =
                    destinations.iter().map(|d| d.locality_affinity).collect();
                let n = destinations.len();
                Service {
                    name: sc.name.clone(),
                    routing_header: sc.routing_header.clone(),
                    affinity: sc.affinity.clone(),
                    failover: failover::order(&names, &closeness, &sc.failover),
                    static_only: weights.latency == 0.0 && weights.load == 0.0,
                    weights,
                    destinations,
                    inputs: Vec::with_capacity(n),
                    scores: vec![0.0; n],
                    effective: vec![0.0; n],
                    rotation: vec![0.0; n],
                }
            })
            .collect();
        let hosts = host_table(&config, &local);
        Self {
            config,
            local,
            services,
            hosts,
            rng: Rng::from_seed(seed),
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

    /// Adopt this proxy's identity once it is known: locality closeness and
    /// failover order depend on it.
    pub fn set_local(&mut self, local: LocalIdentity) {
        for (svc, sc) in self.services.iter_mut().zip(&self.config.services) {
            for (d, dc) in svc.destinations.iter_mut().zip(&sc.destinations) {
                d.locality_affinity =
                    score::locality_affinity(local.locality.as_deref(), dc.locality.as_deref());
            }
            let names: Vec<&str> = svc.destinations.iter().map(|d| d.name.as_str()).collect();
            let closeness: Vec<f64> = svc
                .destinations
                .iter()
                .map(|d| d.locality_affinity)
                .collect();
            svc.failover = failover::order(&names, &closeness, &sc.failover);
        }
        self.hosts = host_table(&self.config, &local);
        self.local = local;
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

    /// Decide where one request goes.
    pub fn decide(&mut self, service: usize, session_key: Option<&[u8]>, now_ns: u64) -> Decision {
        let sharpness = self.config.scheduler.sharpness;
        let Some(svc) = self.services.get_mut(service) else {
            return Decision {
                service,
                destination: None,
                reason: Reason::MeshDefault,
            };
        };
        let (choice, reason) = match session_key {
            Some(key) => choose_by_affinity(svc, key, now_ns),
            None => choose_by_score(svc, &mut self.rng, now_ns, sharpness),
        };
        match choice {
            Some(d) if svc.destinations[d].is_blocked(now_ns) => {
                match svc
                    .failover
                    .iter()
                    .copied()
                    .find(|&i| usable(&svc.destinations[i], now_ns))
                {
                    Some(f) => Decision {
                        service,
                        destination: Some(f),
                        reason: Reason::Failover,
                    },
                    None => Decision {
                        service,
                        destination: None,
                        reason: Reason::MeshDefault,
                    },
                }
            }
            Some(d) => Decision {
                service,
                destination: Some(d),
                reason,
            },
            None => Decision {
                service,
                destination: None,
                reason: Reason::MeshDefault,
            },
        }
    }

    /// A request was sent to `destination`: it now counts as in flight.
    pub fn begin(&mut self, service: usize, destination: usize) {
        if let Some(d) = self.dest_mut(service, destination) {
            d.in_flight = d.in_flight.saturating_add(1);
        }
    }

    /// Response headers (or a reset) arrived after `latency_ns`.
    pub fn observe(
        &mut self,
        service: usize,
        destination: usize,
        outcome: Outcome,
        latency_ns: u64,
        now_ns: u64,
    ) -> HealthEvent {
        // Split borrows: the config is read while a destination is written.
        let Self {
            config, services, ..
        } = self;
        let Some(d) = services
            .get_mut(service)
            .and_then(|s| s.destinations.get_mut(destination))
        else {
            return HealthEvent::None;
        };
        if let Outcome::Status(_) = outcome {
            if outcome.is_success() {
                d.latency.observe(latency_ns as f64, now_ns);
            } else {
                d.latency.observe_failure(latency_ns as f64, now_ns);
            }
        }
        d.health
            .record(outcome.is_success(), now_ns, &config.scheduler)
    }

    /// The request is over: it no longer counts as in flight.
    pub fn end(&mut self, service: usize, destination: usize) {
        if let Some(d) = self.dest_mut(service, destination) {
            d.in_flight = d.in_flight.saturating_sub(1);
        }
    }

    fn dest_mut(&mut self, service: usize, destination: usize) -> Option<&mut Destination> {
        self.services
            .get_mut(service)?
            .destinations
            .get_mut(destination)
    }

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

    /// Publish one destination's record now (after an ejection that did
    /// not come from a response, such as a failed probe).
    pub fn publish(
        &mut self,
        store: &mut dyn SharedStore,
        service: usize,
        destination: usize,
        now_ns: u64,
    ) -> Option<(String, shared_stats::DecodeError)> {
        let (services, sync) = self.for_sync(now_ns);
        let d = services
            .get_mut(service)?
            .destinations
            .get_mut(destination)?;
        sync_destination(d, store, &sync, StreakOp::Keep).1
    }

    /// The scores behind the last score-based decision of `service`, for
    /// the optional `x-tideway-decision` header.
    pub fn explain(&self, decision: &Decision) -> String {
        use std::fmt::Write;
        let Some(svc) = self.services.get(decision.service) else {
            return String::new();
        };
        let mut out = String::new();
        let chosen = decision.destination.and_then(|d| svc.destinations.get(d));
        let _ = write!(
            out,
            "service={}; destination={}; reason={}; scores=",
            svc.name,
            chosen.map_or("-", |d| d.name.as_str()),
            decision.reason.as_str()
        );
        for (i, (d, s)) in svc.destinations.iter().zip(&svc.scores).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}{}:{s:.3}", d.name);
        }
        out
    }

    /// Merge every destination's record with the other workers' through
    /// shared data (on the tick).
    pub fn sync_shared(
        &mut self,
        store: &mut dyn SharedStore,
        now_ns: u64,
    ) -> Vec<(String, shared_stats::DecodeError)> {
        let (services, sync) = self.for_sync(now_ns);
        let mut bad = Vec::new();
        for svc in services.iter_mut() {
            for d in &mut svc.destinations {
                bad.extend(sync_destination(d, store, &sync, StreakOp::Keep).1);
            }
        }
        bad
    }

    /// Share a response's outcome with the other workers, after
    /// [`Engine::observe`] recorded it here.
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
    pub fn share_outcome(
        &mut self,
        store: &mut dyn SharedStore,
        service: usize,
        destination: usize,
        success: bool,
        now_ns: u64,
    ) -> (HealthEvent, Option<(String, shared_stats::DecodeError)>) {
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
        let probe_grace_ns = self.probe_grace_ns();
        let sync = SyncParams {
            now_ns,
            probe_grace_ns,
            scheduler: &self.config.scheduler,
        };
        (&mut self.services, sync)
    }

    /// How long a worker that adopted an ejection leaves the re-admission
    /// probe to the worker that ejected: long enough for that worker's
    /// probe to fail, that worker to publish and this one to adopt, even if
    /// both learn only on their ticks.
    fn probe_grace_ns(&self) -> u64 {
        self.config
            .scheduler
            .tick_ms
            .saturating_mul(3)
            .saturating_mul(1_000_000)
    }
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
) -> (HealthEvent, Option<(String, shared_stats::DecodeError)>) {
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
            Some((bytes, cas)) => match SharedStats::decode(&bytes) {
                Ok(theirs) => {
                    latency.merge(theirs.latency);
                    (mine.merge(&theirs, latency.measurement()), Some(cas))
                }
                Err(e) => {
                    bad = Some((d.shared_key.clone(), e));
                    (mine, Some(cas))
                }
            },
            None => (mine, None),
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
        if store.set(&d.shared_key, &merged.encode(), cas).is_ok() {
            d.latency = latency;
            health.merge_ejection(merged.ejected_until_ns, merged.ejections, p.probe_grace_ns);
            health.shared_streak = merged.failure_streak;
            d.health = health;
            return (event, bad);
        }
    }
    (HealthEvent::None, bad)
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

fn usable(d: &Destination, now_ns: u64) -> bool {
    d.weight > 0.0 && !d.is_blocked(now_ns)
}

/// Weighted rendezvous over static weights. If the session's own
/// destination is ejected, the next-highest for the same key takes it —
/// the same for every worker, so the session still sticks.
fn choose_by_affinity(svc: &mut Service, key: &[u8], now_ns: u64) -> (Option<usize>, Reason) {
    let mut best: Option<(usize, f64)> = None;
    let mut best_usable: Option<(usize, f64)> = None;
    for (i, d) in svc.destinations.iter().enumerate() {
        let s = affinity::rendezvous_score(key, &d.name, d.weight);
        if s == f64::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
        if !d.is_blocked(now_ns) && best_usable.is_none_or(|(_, b)| s > b) {
            best_usable = Some((i, s));
        }
    }
    match (best, best_usable) {
        (Some((b, _)), Some((u, _))) if b != u => (Some(u), Reason::Failover),
        (Some((b, _)), _) => (Some(b), Reason::Affinity),
        (None, _) => (None, Reason::MeshDefault),
    }
}

/// Smooth weighted round-robin: every candidate gains its weight, the
/// leader is chosen and pays back the total. Over any `total` consecutive
/// picks each candidate is chosen in proportion to its weight, interleaved
/// rather than in bursts.
fn smooth_weighted_round_robin(weights: &[f64], rotation: &mut [f64]) -> Option<usize> {
    let mut total = 0.0;
    let mut best: Option<usize> = None;
    for i in 0..weights.len().min(rotation.len()) {
        let w = weights[i];
        if !(w > 0.0) {
            continue;
        }
        rotation[i] += w;
        total += w;
        if best.is_none_or(|b| rotation[i] > rotation[b]) {
            best = Some(i);
        }
    }
    if let Some(b) = best {
        rotation[b] -= total;
    }
    best
}

/// A usable destination whose latency estimate is stale and that has no
/// request in flight gets this one: the estimate holds while a destination
/// is idle (`ewma`), so a destination that was shunned for being slow is
/// measured again by one request — never assumed to have become fast.
/// One at a time and one per half-life each: a share of one request.
fn remeasure(svc: &Service, now_ns: u64) -> Option<usize> {
    if svc.weights.latency <= 0.0 {
        return None;
    }
    svc.destinations
        .iter()
        .position(|d| d.in_flight == 0 && d.latency.is_stale(now_ns) && usable(d, now_ns))
}

/// Relative score difference below which P2C keeps its first draw.
const SCORE_TIE: f64 = 0.05;

fn choose_by_score(
    svc: &mut Service,
    rng: &mut Rng,
    now_ns: u64,
    sharpness: f64,
) -> (Option<usize>, Reason) {
    if let Some(stale) = remeasure(svc, now_ns) {
        return (Some(stale), Reason::Score);
    }
    svc.inputs.clear();
    svc.inputs
        .extend(svc.destinations.iter().map(|d| FactorInputs {
            latency_ns: d.latency.estimate_ns(),
            in_flight: d.in_flight,
            cost: d.cost,
            locality_affinity: d.locality_affinity,
        }));
    score::score_all(&svc.weights, &svc.inputs, &mut svc.scores);
    for ((e, d), s) in svc
        .effective
        .iter_mut()
        .zip(&svc.destinations)
        .zip(&svc.scores)
    {
        *e = d.weight * s.powf(sharpness);
    }
    if svc.static_only {
        return (
            smooth_weighted_round_robin(&svc.effective, &mut svc.rotation),
            Reason::Static,
        );
    }
    let Some(first) = rng.weighted_index(&svc.effective) else {
        return (None, Reason::MeshDefault);
    };
    let Some(second) = rng.weighted_index(&svc.effective) else {
        return (Some(first), Reason::Score);
    };
    let rank = |i: usize| {
        if svc.destinations[i].is_blocked(now_ns) {
            -1.0
        } else {
            svc.scores[i]
        }
    };
    // Scores within a few percent are a tie and the first draw stands:
    // equal destinations' estimates differ by sampling noise, and a strict
    // comparison would turn that noise into a steady drift away from the
    // configured weights.
    let choice = if rank(second) > rank(first) * (1.0 + SCORE_TIE) {
        second
    } else {
        first
    };
    (Some(choice), Reason::Score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MS: u64 = 1_000_000;

    fn engine(json: &str) -> Engine {
        let config = PluginConfig::from_json(json.as_bytes()).expect("valid config");
        Engine::new(
            config,
            LocalIdentity {
                cluster: "local".into(),
                locality: Some("r1/z1".into()),
                namespace: None,
            },
            42,
            None,
        )
    }

    fn three(weights: &str, extra: &str) -> String {
        format!(
            r#"{{"services":[{{"name":"svc","hosts":["svc.local"],{extra}
            "destinations":[{{"name":"a","weight":70,"locality":"r1/z1"}},{{"name":"b","weight":20,"locality":"r1/z2"}},{{"name":"c","weight":10,"locality":"r2/z1"}}]}}],
            "scheduler":{{"weights":{weights}}}}}"#
        )
    }

    fn static_weights() -> &'static str {
        r#"{"latency":0,"load":0,"cost":0,"affinity":0}"#
    }

    #[test]
    fn static_split_is_exact_within_a_tenth_of_a_point() {
        let mut e = engine(&three(static_weights(), ""));
        let mut counts = [0u32; 3];
        let n = 100_000;
        for i in 0..n {
            let d = e.decide(0, None, i);
            assert_eq!(d.reason, Reason::Static);
            counts[d.destination.expect("chosen")] += 1;
        }
        for (c, w) in counts.iter().zip([70.0, 20.0, 10.0]) {
            let pct = f64::from(*c) / f64::from(n as u32) * 100.0;
            assert!((pct - w).abs() <= 0.1, "{pct} vs {w}: {counts:?}");
        }
        // Exact over any window of 100 (the weights' total), interleaved.
        let window: Vec<usize> = (0..100)
            .filter_map(|i| e.decide(0, None, i).destination)
            .collect();
        assert_eq!(window.iter().filter(|d| **d == 2).count(), 10);
        assert!(
            window.windows(2).filter(|w| w[0] == 2 && w[1] == 2).count() == 0,
            "{window:?}"
        );
    }

    #[test]
    fn slow_destination_loses_most_traffic() {
        let mut e = engine(&three(
            r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
            "",
        ));
        // Equalise the weights so the effect is the latency's alone.
        for d in &mut e.services[0].destinations {
            d.weight = 1.0;
        }
        let mut now = 0;
        let mut counts = [0u32; 3];
        for i in 0..20_000u64 {
            now += MS / 10;
            let d = e.decide(0, None, now).destination.expect("chosen");
            counts[d] += 1;
            let latency = if d == 2 { 50 * MS } else { 5 * MS };
            e.begin(0, d);
            e.observe(0, d, Outcome::Status(200), latency, now);
            e.end(0, d);
            let _ = i;
        }
        let share = f64::from(counts[2]) / 20_000.0;
        assert!(share < 0.05, "slow share {share}: {counts:?}");
        assert!(counts[2] > 0, "the slow one is still probed");
    }

    /// Issue 12's mechanism: an idle estimate used to decay toward zero, so
    /// a slow destination starved for a few seconds looked fast again and
    /// drew a burst. Now it holds, and the destination is re-measured by a
    /// single request per half-life.
    #[test]
    fn a_shunned_slow_destination_is_remeasured_not_assumed_fast() {
        let mut e = engine(&three(
            r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
            "",
        ));
        for d in &mut e.services[0].destinations {
            d.weight = 1.0;
        }
        let mut now = 0;
        let mut per_second = vec![[0u32; 3]; 30];
        for _ in 0..30_000u64 {
            now += MS;
            let d = e.decide(0, None, now).destination.expect("chosen");
            per_second[(now / (1000 * MS)).min(29) as usize][d] += 1;
            let latency = if d == 2 { 50 * MS } else { 5 * MS };
            e.begin(0, d);
            e.observe(0, d, Outcome::Status(200), latency, now);
            e.end(0, d);
        }
        for (second, counts) in per_second.iter().enumerate() {
            assert!(
                counts[2] <= 3,
                "second {second}: the slow one got {} of {}: {per_second:?}",
                counts[2],
                counts.iter().sum::<u32>()
            );
        }
        let remeasured: u32 = per_second.iter().map(|c| c[2]).sum();
        assert!(
            remeasured >= 8,
            "re-measured about every 3.5 s: {remeasured}"
        );
        let slow = &e.services[0].destinations[2].latency;
        assert_eq!(slow.estimate_ns(), 50.0 * MS as f64);
    }

    #[test]
    fn an_unmeasured_destination_is_not_taken_for_the_best() {
        let mut e = engine(&three(
            r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
            "",
        ));
        for d in &mut e.services[0].destinations {
            d.weight = 1.0;
        }
        for d in [0, 1] {
            e.observe(0, d, Outcome::Status(200), 5 * MS, 1);
        }
        // c has never answered; its first request stays in flight.
        let mut counts = [0u32; 3];
        for t in 0..3000 {
            let d = e.decide(0, None, 2 + t).destination.expect("chosen");
            e.begin(0, d);
            counts[d] += 1;
        }
        assert!(
            (1..=30).contains(&counts[2]),
            "one request to measure it, then scored at the default 30 ms: {counts:?}"
        );
    }

    #[test]
    fn session_sticks_and_only_fails_over_when_ejected() {
        let mut e = engine(&three(
            r#"{"latency":1,"load":1,"cost":0,"affinity":0}"#,
            r#""affinity":{"source":"header","name":"x-user"},"#,
        ));
        let first = e.decide(0, Some(b"alice"), 0);
        assert_eq!(first.reason, Reason::Affinity);
        for t in 0..100 {
            assert_eq!(
                e.decide(0, Some(b"alice"), t).destination,
                first.destination
            );
        }
        let home = first.destination.expect("chosen");
        e.services[0].destinations[home].health.ejected_until_ns = 1000;
        let moved = e.decide(0, Some(b"alice"), 10);
        assert_eq!(moved.reason, Reason::Failover);
        assert_ne!(moved.destination, first.destination);
        assert_eq!(
            e.decide(0, Some(b"alice"), 1000).destination,
            first.destination
        );
    }

    #[test]
    fn failing_destination_is_ejected_and_traffic_fails_over_by_locality() {
        let mut e = engine(&three(static_weights(), ""));
        for _ in 0..5 {
            e.observe(0, 0, Outcome::Status(503), MS, 0);
        }
        assert!(e.services[0].destinations[0].health.is_ejected(1));
        let mut counts = HashMap::new();
        for t in 0..10_000 {
            let d = e.decide(0, None, t + 1);
            *counts.entry((d.destination, d.reason)).or_insert(0) += 1;
        }
        assert_eq!(counts.get(&(Some(0), Reason::Static)), None, "{counts:?}");
        assert_eq!(counts.get(&(Some(0), Reason::Failover)), None, "{counts:?}");
        // a's share fails over to b (same region), not c (other region).
        assert!(
            counts
                .get(&(Some(1), Reason::Failover))
                .copied()
                .unwrap_or(0)
                > 6500,
            "{counts:?}"
        );
        assert_eq!(counts.get(&(Some(2), Reason::Failover)), None, "{counts:?}");
    }

    const PROBE: &str =
        r#""probe":{"cluster":"outbound|80|{destination}|svc.local","path":"/healthz"},"#;

    /// Eject destination a (index 0) by a streak of 503s at time 0.
    fn eject_a(e: &mut Engine) -> u64 {
        for _ in 0..5 {
            e.observe(0, 0, Outcome::Status(503), MS, 0);
        }
        e.services[0].destinations[0].health.ejected_until_ns
    }

    #[test]
    fn with_active_probing_a_returning_destination_waits_for_a_passing_probe() {
        let mut e = engine(&three(static_weights(), PROBE));
        assert_eq!(
            e.services[0].destinations[0]
                .probe
                .as_ref()
                .map(|p| p.cluster.as_str()),
            Some("outbound|80|a|svc.local")
        );
        let until = eject_a(&mut e);
        assert_eq!(e.probes_due(until - 1).count(), 0, "still ejected");
        // The ejection is over, but no client request goes there: a probe does.
        assert!(e.services[0].destinations[0].is_blocked(until));
        assert_eq!(e.probes_due(until).collect::<Vec<_>>(), vec![(0, 0)]);
        e.probe_dispatched(0, 0, true);
        assert_eq!(e.probes_due(until).count(), 0, "one probe at a time");
        // It fails: ejected again, twice as long, and no client paid for it.
        let again = match e.probe_result(0, 0, false, until + MS) {
            HealthEvent::Ejected { until_ns } => until_ns,
            other => panic!("{other:?}"),
        };
        assert_eq!(again, until + MS + 2000 * MS);
        for t in [until, again - 1, again] {
            assert!(e.services[0].destinations[0].is_blocked(t), "at {t}");
        }
        // The next probe passes: clients may go there again.
        assert_eq!(e.probes_due(again).collect::<Vec<_>>(), vec![(0, 0)]);
        e.probe_dispatched(0, 0, true);
        assert_eq!(e.probe_result(0, 0, true, again + MS), HealthEvent::None);
        assert!(!e.services[0].destinations[0].is_blocked(again + MS));
        assert_eq!(e.probes_due(again + MS).count(), 0);
    }

    #[test]
    fn a_probe_that_cannot_be_sent_falls_back_to_a_client_request() {
        let mut e = engine(&three(static_weights(), PROBE));
        let until = eject_a(&mut e);
        e.probe_dispatched(0, 0, false);
        assert!(!e.services[0].destinations[0].is_blocked(until));
        assert_eq!(e.probes_due(until).count(), 0);
    }

    #[test]
    fn a_probe_answer_for_a_replaced_ejection_is_ignored() {
        let mut e = engine(&three(static_weights(), PROBE));
        let until = eject_a(&mut e);
        e.probe_dispatched(0, 0, true);
        // Meanwhile another worker's newer ejection is adopted.
        let newer = until + 5000 * MS;
        e.services[0].destinations[0]
            .health
            .merge_ejection(newer, 2, 0);
        assert_eq!(e.probe_result(0, 0, true, until + MS), HealthEvent::None);
        assert!(e.services[0].destinations[0].is_blocked(newer));
        assert_eq!(e.probes_due(newer).collect::<Vec<_>>(), vec![(0, 0)]);
    }

    #[test]
    fn without_a_probe_config_no_probe_is_ever_due() {
        let mut e = engine(&three(static_weights(), ""));
        let until = eject_a(&mut e);
        assert_eq!(e.probes_due(until).count(), 0);
        assert!(!e.services[0].destinations[0].is_blocked(until));
    }

    #[test]
    fn a_returning_destination_gets_one_probe_at_a_time() {
        let mut e = engine(&three(static_weights(), ""));
        for _ in 0..5 {
            e.observe(0, 0, Outcome::Status(503), MS, 0);
        }
        let back = 1000 * MS;
        let probe = loop {
            let d = e.decide(0, None, back);
            if d.destination == Some(0) {
                break d;
            }
        };
        assert_eq!(probe.reason, Reason::Static);
        e.begin(0, 0);
        for _ in 0..1000 {
            assert_ne!(
                e.decide(0, None, back).destination,
                Some(0),
                "a second probe while the first is out"
            );
        }
        e.observe(0, 0, Outcome::Status(200), MS, back + MS);
        e.end(0, 0);
        e.begin(0, 0);
        // Healthy again: in-flight requests no longer block it.
        assert!((0..100).any(|_| e.decide(0, None, back + MS).destination == Some(0)));
    }

    #[test]
    fn everything_ejected_goes_to_the_mesh_default() {
        let mut e = engine(&three(static_weights(), ""));
        for d in &mut e.services[0].destinations {
            d.health.ejected_until_ns = 100;
        }
        let d = e.decide(0, None, 5);
        assert_eq!((d.destination, d.reason), (None, Reason::MeshDefault));
        let d = e.decide(0, Some(b"k"), 5);
        assert_eq!(d.destination, None);
    }

    #[test]
    fn equal_latencies_keep_the_static_split_under_p2c() {
        let mut e = engine(&three(
            r#"{"latency":1,"load":0,"cost":0,"affinity":0}"#,
            "",
        ));
        let mut counts = [0u32; 3];
        let mut now = 0;
        for _ in 0..20_000 {
            now += MS;
            let d = e.decide(0, None, now).destination.expect("chosen");
            counts[d] += 1;
            e.observe(0, d, Outcome::Status(200), 5 * MS, now);
        }
        for (c, w) in counts.iter().zip([70.0, 20.0, 10.0]) {
            let pct = f64::from(*c) / 200.0;
            assert!((pct - w).abs() < 3.0, "{pct} vs {w}: {counts:?}");
        }
    }

    #[test]
    fn resets_and_5xx_count_as_failures_4xx_do_not() {
        assert!(!Outcome::Reset.is_success());
        assert!(!Outcome::Status(502).is_success());
        assert!(Outcome::Status(404).is_success());
        assert!(Outcome::Status(200).is_success());
    }

    #[test]
    fn reconfiguration_keeps_learned_state() {
        let mut e = engine(&three(static_weights(), ""));
        e.observe(0, 1, Outcome::Status(200), 7 * MS, 1);
        let config =
            PluginConfig::from_json(three(static_weights(), "").as_bytes()).expect("valid");
        let e2 = Engine::new(config, e.local.clone(), 1, Some(&e));
        assert_eq!(
            e2.services[0].destinations[1].latency,
            e.services[0].destinations[1].latency
        );
    }

    #[derive(Default)]
    struct MemStore {
        map: HashMap<String, (Vec<u8>, u32)>,
        /// Host calls made (gets and sets).
        calls: usize,
    }

    impl SharedStore for MemStore {
        fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.calls += 1;
            self.map.get(key).cloned()
        }
        fn set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), shared_stats::CasMismatch> {
            self.calls += 1;
            let entry = self.map.entry(key.to_string()).or_insert((Vec::new(), 0));
            if let Some(cas) = cas {
                if cas != entry.1 {
                    return Err(shared_stats::CasMismatch);
                }
            }
            entry.0 = value.to_vec();
            entry.1 = entry.1.wrapping_add(1).max(1);
            Ok(())
        }
    }

    #[test]
    fn workers_share_ejections_and_latency_peaks() {
        let mut w1 = engine(&three(static_weights(), ""));
        let mut w2 = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        for _ in 0..5 {
            w1.observe(0, 2, Outcome::Status(503), MS, 10);
        }
        w1.observe(0, 1, Outcome::Status(200), 80 * MS, 10);
        assert!(w1.sync_shared(&mut store, 20).is_empty());
        assert!(!w2.services[0].destinations[2].health.is_ejected(30));
        w2.sync_shared(&mut store, 30);
        assert!(w2.services[0].destinations[2].health.is_ejected(30));
        assert_eq!(
            w2.services[0].destinations[1].latency.estimate_ns(),
            80.0 * MS as f64
        );
    }

    #[test]
    fn only_the_ejecting_worker_probes_when_the_ejection_ends() {
        let mut w1 = engine(&three(static_weights(), ""));
        let mut w2 = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        for _ in 0..5 {
            w1.observe(0, 2, Outcome::Status(503), MS, 10);
        }
        let until = w1.services[0].destinations[2].health.ejected_until_ns;
        assert!(until > 10);
        w1.sync_shared(&mut store, 20);
        w2.sync_shared(&mut store, 30);
        let tick = w2.config.scheduler.tick_ms * MS;
        let (d1, d2) = (
            &w1.services[0].destinations[2],
            &w2.services[0].destinations[2],
        );
        // When the ejection ends, the worker that ejected may probe…
        assert!(!d1.is_blocked(until));
        // …the adopting one holds back for three ticks, then probes too.
        assert!(d2.is_blocked(until));
        assert!(d2.is_blocked(until + 3 * tick - 1));
        assert!(!d2.is_blocked(until + 3 * tick));

        // The probe fails: w1 ejects again for twice as long, publishes,
        // and w2 adopts it before its grace is over.
        w1.observe(0, 2, Outcome::Status(503), MS, until);
        let again = w1.services[0].destinations[2].health.ejected_until_ns;
        assert_eq!(again, until + 2000 * MS);
        w1.sync_shared(&mut store, until + tick);
        w2.sync_shared(&mut store, until + 2 * tick);
        assert!(w2.services[0].destinations[2].is_blocked(until + 3 * tick));
        assert!(!w1.services[0].destinations[2].is_blocked(again));
        // The shared record carries the real end, never a worker's grace.
        let shared = SharedStats::decode(&store.map[&w1.services[0].destinations[2].shared_key].0)
            .expect("record");
        assert_eq!(shared.ejected_until_ns, again);
    }

    #[test]
    fn a_failure_adopts_another_workers_ejection_at_once() {
        let mut w1 = engine(&three(static_weights(), ""));
        let mut w2 = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        // Both workers see the destination fail; w1 reaches the streak
        // first and publishes the ejection with the failure that caused it.
        w2.observe(0, 2, Outcome::Status(503), MS, 10);
        w2.share_outcome(&mut store, 0, 2, false, 10);
        for _ in 0..5 {
            w1.observe(0, 2, Outcome::Status(503), MS, 11);
            w1.share_outcome(&mut store, 0, 2, false, 11);
        }
        assert!(w1.services[0].destinations[2].is_blocked(12));
        assert!(
            !w2.services[0].destinations[2].is_blocked(12),
            "w2 has not heard yet"
        );
        // w2's next failure, well before any tick, brings the news: it stops
        // after 2 failures instead of its own 5.
        w2.observe(0, 2, Outcome::Status(503), MS, 12);
        w2.share_outcome(&mut store, 0, 2, false, 12);
        assert!(w2.services[0].destinations[2].is_blocked(13));
        assert_eq!(
            w2.services[0].destinations[2].health.ejections, 1,
            "adopted, not ejected twice"
        );
    }

    /// One failure (or success) as the proxy layer records it.
    fn respond(w: &mut Engine, store: &mut MemStore, status: u32, now: u64) -> HealthEvent {
        let outcome = Outcome::Status(status);
        let local = w.observe(0, 2, outcome, MS, now);
        let (shared, _) = w.share_outcome(store, 0, 2, outcome.is_success(), now);
        match (local, shared) {
            (e @ HealthEvent::Ejected { .. }, _) | (_, e) => e,
        }
    }

    #[test]
    fn a_streak_split_across_workers_ejects_at_the_threshold() {
        let mut w1 = engine(&three(static_weights(), ""));
        let mut w2 = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        for t in 0..3 {
            assert_eq!(respond(&mut w1, &mut store, 503, t), HealthEvent::None);
        }
        assert_eq!(respond(&mut w2, &mut store, 503, 3), HealthEvent::None);
        // The fifth failure in the proxy, the second on w2: ejected.
        assert!(matches!(
            respond(&mut w2, &mut store, 503, 4),
            HealthEvent::Ejected { .. }
        ));
        assert!(w2.services[0].destinations[2].is_blocked(5));
        // w1 adopts it with its next (late) failure, without ejecting again.
        assert_eq!(respond(&mut w1, &mut store, 503, 5), HealthEvent::None);
        assert!(w1.services[0].destinations[2].is_blocked(6));
        let shared = SharedStats::decode(&store.map[&w1.services[0].destinations[2].shared_key].0)
            .expect("record");
        assert_eq!(shared.ejections, 1);
        assert_eq!(shared.failure_streak, 0, "an ejection ends the streak");
    }

    #[test]
    fn a_success_ends_the_shared_streak() {
        let mut w1 = engine(&three(static_weights(), ""));
        let mut w2 = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        for t in 0..2 {
            respond(&mut w1, &mut store, 503, t);
            respond(&mut w2, &mut store, 503, t);
        }
        // Four failures in a row so far; a success on w2 breaks the run…
        assert_eq!(respond(&mut w2, &mut store, 200, 3), HealthEvent::None);
        // …so two more failures are not the fifth and sixth in a row.
        assert_eq!(respond(&mut w1, &mut store, 503, 4), HealthEvent::None);
        assert_eq!(respond(&mut w2, &mut store, 503, 5), HealthEvent::None);
        assert!(!w1.services[0].destinations[2].is_blocked(6));
        assert!(!w2.services[0].destinations[2].is_blocked(6));
    }

    #[test]
    fn successes_in_steady_health_make_no_shared_data_call() {
        let mut w = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        for t in 0..100 {
            respond(&mut w, &mut store, 200, t);
        }
        assert_eq!(store.calls, 0);
        // After a failure the next success publishes the end of the
        // streak, once.
        respond(&mut w, &mut store, 503, 100);
        let after_failure = store.calls;
        respond(&mut w, &mut store, 200, 101);
        respond(&mut w, &mut store, 200, 102);
        assert_eq!(store.calls, after_failure + 2, "one get and one set");
    }

    #[test]
    fn a_fast_failure_does_not_make_a_destination_look_fast() {
        let mut w = engine(&three(static_weights(), ""));
        w.observe(0, 2, Outcome::Status(200), 50 * MS, 10);
        let before = w.services[0].destinations[2].latency.estimate_ns();
        w.observe(0, 2, Outcome::Status(503), MS, 11);
        assert_eq!(w.services[0].destinations[2].latency.estimate_ns(), before);
        // A slow failure still raises it (peak-EWMA believes a rise).
        w.observe(0, 2, Outcome::Status(503), 200 * MS, 12);
        assert_eq!(
            w.services[0].destinations[2].latency.estimate_ns(),
            200.0 * MS as f64
        );
    }

    #[test]
    fn corrupt_shared_records_are_reported_and_replaced() {
        let mut w = engine(&three(static_weights(), ""));
        let mut store = MemStore::default();
        store
            .map
            .insert(shared_stats::key("svc", "a"), (b"junk".to_vec(), 3));
        let bad = w.sync_shared(&mut store, 1);
        assert_eq!(bad.len(), 1);
        assert!(SharedStats::decode(&store.map[&shared_stats::key("svc", "a")].0).is_ok());
    }
}
