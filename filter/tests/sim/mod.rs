//! A deterministic steering simulator: virtual time, closed-loop clients,
//! destinations with a service-time distribution and a concurrency limit,
//! and the filter's real core (`Engine::route` / `Engine::complete`)
//! choosing where each request goes — next to models of Envoy's
//! ROUND_ROBIN and LEAST_REQUEST (power of two choices on active requests)
//! run in the same simulator on the same load.
//!
//! Why a simulator: wall-clock benches on a shared 2-core machine move by
//! tens of percent from round to round, and a steering rule's tail effect
//! hides in that noise. Here a (scenario, seed) pair always gives the same
//! numbers, so a threshold can be a test, and a table of rounds shows the
//! spread that comes from the seed alone.
//!
//! The model: `connections` clients each send a request, wait for its
//! answer, and send the next one after `think` (the proxy's own time per
//! request). A destination serves `limit` requests at once; the others wait
//! in FIFO order (the bench's backends are thread pools of that size). A
//! service time is the destination's base time × its current slowdown ×
//! a log-normal jitter (σ = 0.25).

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use tideway_filter::config::PluginConfig;
use tideway_filter::decision::{
    Engine, HostFailure, InFlight, LocalIdentity, RouteHost, StreamEvent, StreamHost,
};
use tideway_filter::header_map::HeaderMap;
use tideway_filter::shared_stats::{SharedStore, StoreError};
use tideway_filter::trace::TraceRng;

pub const MS: u64 = 1_000_000;
pub const S: u64 = 1_000 * MS;

/// One destination of a scenario.
#[derive(Debug, Clone)]
pub struct DestSpec {
    pub name: &'static str,
    pub weight: f64,
    pub service_ms: f64,
    /// Requests served at once; the rest queue.
    pub limit: usize,
    /// (from time, slowdown factor) steps, in time order.
    pub slowdowns: Vec<(u64, f64)>,
}

impl DestSpec {
    pub fn new(name: &'static str, weight: f64, service_ms: f64, limit: usize) -> Self {
        Self {
            name,
            weight,
            service_ms,
            limit,
            slowdowns: Vec::new(),
        }
    }

    fn factor(&self, now: u64) -> f64 {
        self.slowdowns
            .iter()
            .rev()
            .find(|(at, _)| *at <= now)
            .map_or(1.0, |(_, f)| *f)
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub connections: usize,
    pub destinations: Vec<DestSpec>,
    pub duration: u64,
    /// Requests issued before this are not measured.
    pub warmup: u64,
    pub think: u64,
    /// The Tideway scheduler config (`None`: the defaults).
    pub scheduler: Option<String>,
}

/// Who chooses the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Tideway,
    RoundRobin,
    LeastRequest,
}

impl PolicyKind {
    pub fn label(self) -> &'static str {
        match self {
            PolicyKind::Tideway => "Tideway",
            PolicyKind::RoundRobin => "ROUND_ROBIN",
            PolicyKind::LeastRequest => "LEAST_REQUEST",
        }
    }
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub issued: u64,
    pub latency: u64,
    pub destination: usize,
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Run {
    pub samples: Vec<Sample>,
    pub measured_from: u64,
    pub duration: u64,
    pub destinations: usize,
}

impl Run {
    fn measured(&self) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(|s| s.issued >= self.measured_from)
    }

    /// Share of measured requests sent to `destination`.
    pub fn share(&self, destination: usize) -> f64 {
        self.share_between(destination, self.measured_from, u64::MAX)
    }

    /// Share of requests issued in `[from, to)` sent to `destination`.
    pub fn share_between(&self, destination: usize, from: u64, to: u64) -> f64 {
        let (mut hit, mut all) = (0u64, 0u64);
        for s in self
            .samples
            .iter()
            .filter(|s| s.issued >= from && s.issued < to)
        {
            all += 1;
            hit += u64::from(s.destination == destination);
        }
        if all == 0 {
            0.0
        } else {
            hit as f64 / all as f64
        }
    }

    /// A latency quantile of the measured requests, ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut l: Vec<u64> = self.measured().map(|s| s.latency).collect();
        if l.is_empty() {
            return 0.0;
        }
        l.sort_unstable();
        let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
        l[i] as f64 / MS as f64
    }

    /// Completed requests per second of measured time.
    pub fn throughput(&self) -> f64 {
        let n = self.measured().count() as f64;
        n / ((self.duration - self.measured_from) as f64 / S as f64)
    }
}

/// The sim's random numbers (splitmix64): deterministic per seed.
struct SimRng(u64);

impl SimRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The host the engine sees: the virtual clock, a 200 answer, an in-memory
/// shared store (one worker).
struct SimHost {
    now: u64,
    store: MemStore,
    trace: SimTraceRng,
}

#[derive(Default)]
struct MemStore(std::collections::HashMap<String, (Vec<u8>, u32)>);

impl SharedStore for MemStore {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.0.get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let next = match (self.0.get(key), cas) {
            (Some((_, have)), Some(want)) if *have != want => return Err(StoreError::CasMismatch),
            (Some((_, have)), _) => have + 1,
            (None, _) => 1,
        };
        self.0.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

struct SimTraceRng(u64);

impl TraceRng for SimTraceRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.0 >> 56) as u8;
        }
    }
}

impl RouteHost for SimHost {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        Ok(self.now)
    }
    fn peer_principal(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn set_request_header(
        &mut self,
        _name: &str,
        _value: Option<&[u8]>,
        _present: bool,
    ) -> Result<(), HostFailure> {
        Ok(())
    }
    fn trace_rng(&mut self) -> &mut dyn TraceRng {
        &mut self.trace
    }
}

impl StreamHost for SimHost {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        Ok(self.now)
    }
    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        Ok((name == ":status").then(|| b"200".to_vec()))
    }
    fn response_trailer(&mut self, _name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        Ok(None)
    }
    fn response_flags(&mut self) -> Result<u64, HostFailure> {
        Ok(0)
    }
    fn shared_store(&mut self) -> &mut dyn SharedStore {
        &mut self.store
    }
}

fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The Tideway config of a scenario: one service, its destinations, the
/// scheduler as given (the README's defaults when `None`).
pub fn tideway_config(scenario: &Scenario) -> String {
    let destinations: Vec<String> = scenario
        .destinations
        .iter()
        .map(|d| format!(r#"{{"name":"{}","weight":{}}}"#, d.name, d.weight))
        .collect();
    let scheduler = scenario
        .scheduler
        .as_deref()
        .map(|s| format!(r#","scheduler":{s}"#))
        .unwrap_or_default();
    format!(
        r#"{{"services":[{{"name":"svc","hosts":["svc.local"],"destinations":[{}]}}]{scheduler}}}"#,
        destinations.join(",")
    )
}

enum Router {
    Tideway(Box<Engine>),
    RoundRobin(usize),
    LeastRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client sends its next request.
    Send { client: usize },
    /// A destination finishes the request in service slot order.
    Finish { request: usize },
}

struct Pending {
    client: usize,
    issued: u64,
    destination: usize,
    flight: Option<InFlight>,
}

struct DestState {
    busy: usize,
    queue: VecDeque<usize>,
    active: u32,
}

/// Run `scenario` under `policy` with `seed`.
pub fn run(scenario: &Scenario, policy: PolicyKind, seed: u64) -> Run {
    let mut rng = SimRng(seed ^ 0x5eed);
    let mut host = SimHost {
        now: 0,
        store: MemStore::default(),
        trace: SimTraceRng(seed),
    };
    let mut router = match policy {
        PolicyKind::Tideway => {
            let config = PluginConfig::from_json(tideway_config(scenario).as_bytes())
                .expect("the scenario's config is valid");
            Router::Tideway(Box::new(Engine::new(
                config,
                LocalIdentity {
                    cluster: "local".into(),
                    locality: None,
                    namespace: None,
                },
                seed,
                None,
            )))
        }
        PolicyKind::RoundRobin => Router::RoundRobin(0),
        PolicyKind::LeastRequest => Router::LeastRequest,
    };
    let headers = serialize(&[
        (":authority", "svc.local"),
        (":path", "/"),
        (":method", "GET"),
    ]);
    let n = scenario.destinations.len();
    let mut dests: Vec<DestState> = (0..n)
        .map(|_| DestState {
            busy: 0,
            queue: VecDeque::new(),
            active: 0,
        })
        .collect();
    let mut pending: Vec<Pending> = Vec::new();
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    for client in 0..scenario.connections {
        // Staggered starts: clients do not move in lockstep.
        let at = (client as u64 * scenario.think.max(1000)) % (MS.max(1));
        push(&mut events, at, Event::Send { client });
    }
    let mut samples = Vec::new();
    let mut next_tick = 0u64;
    let tick = 1_000 * MS;
    while let Some(Reverse((now, _, event))) = events.pop() {
        if now >= scenario.duration {
            break;
        }
        host.now = now;
        if let Router::Tideway(engine) = &mut router {
            while next_tick <= now {
                let _ = engine.sync_shared(&mut host.store, next_tick);
                next_tick += tick;
            }
        }
        match event {
            Event::Send { client } => {
                let (destination, flight) = match &mut router {
                    Router::Tideway(engine) => {
                        let flight = engine
                            .route(&HeaderMap::parse(&headers), &mut host)
                            .expect("svc.local is governed");
                        let d = flight
                            .decision
                            .destination
                            .expect("a destination is chosen");
                        (d, Some(flight))
                    }
                    Router::RoundRobin(next) => {
                        let d = *next % n;
                        *next += 1;
                        (d, None)
                    }
                    Router::LeastRequest => {
                        let (a, b) = (rng.below(n), rng.below(n));
                        let d = if dests[b].active < dests[a].active {
                            b
                        } else {
                            a
                        };
                        (d, None)
                    }
                };
                let request = pending.len();
                pending.push(Pending {
                    client,
                    issued: now,
                    destination,
                    flight,
                });
                let d = &mut dests[destination];
                d.active += 1;
                if d.busy < scenario.destinations[destination].limit {
                    d.busy += 1;
                    let t = service_time(&scenario.destinations[destination], now, &mut rng);
                    push(&mut events, now + t, Event::Finish { request });
                } else {
                    d.queue.push_back(request);
                }
            }
            Event::Finish { request } => {
                let p = &mut pending[request];
                let destination = p.destination;
                if let (Router::Tideway(engine), Some(flight)) = (&mut router, p.flight.as_mut()) {
                    let _ = engine.complete(flight, StreamEvent::ResponseHeaders, &mut host);
                    let _ = engine.complete(flight, StreamEvent::End, &mut host);
                }
                p.flight = None;
                samples.push(Sample {
                    issued: p.issued,
                    latency: now - p.issued,
                    destination,
                });
                let client = p.client;
                let d = &mut dests[destination];
                d.active -= 1;
                if let Some(next) = d.queue.pop_front() {
                    let t = service_time(&scenario.destinations[destination], now, &mut rng);
                    push(&mut events, now + t, Event::Finish { request: next });
                } else {
                    d.busy -= 1;
                }
                push(&mut events, now + scenario.think, Event::Send { client });
            }
        }
    }
    Run {
        samples,
        measured_from: scenario.warmup,
        duration: scenario.duration,
        destinations: n,
    }
}

fn service_time(d: &DestSpec, now: u64, rng: &mut SimRng) -> u64 {
    let jitter = (0.25 * rng.normal()).exp();
    (d.service_ms * d.factor(now) * jitter * MS as f64).max(1_000.0) as u64
}

/// Three equal-weight destinations, the last `slower`× slower, at
/// `connections` closed-loop connections. Each destination can serve every
/// connection at once (no queueing): only latency tells them apart.
pub fn one_slow(slower: f64, connections: usize) -> Scenario {
    Scenario {
        name: format!("one {slower}× slower, {connections} conns"),
        connections,
        destinations: vec![
            DestSpec::new("a", 1.0, 8.0, connections),
            DestSpec::new("b", 1.0, 8.0, connections),
            DestSpec::new("c", 1.0, 8.0 * slower, connections),
        ],
        duration: 20 * S,
        warmup: 2 * S,
        think: 50_000,
        scheduler: None,
    }
}

/// Base weights 70/20/10, all equal (8 ms), the 70% one slowed 10× from
/// `slow_at` until `recover_at`.
pub fn weighted_slowdown(slow_at: u64, recover_at: u64) -> Scenario {
    let mut a = DestSpec::new("a", 70.0, 8.0, 64);
    a.slowdowns = vec![(slow_at, 10.0), (recover_at, 1.0)];
    Scenario {
        name: "70/20/10, the 70% one 10× slower for a while".into(),
        connections: 32,
        destinations: vec![
            a,
            DestSpec::new("b", 20.0, 8.0, 64),
            DestSpec::new("c", 10.0, 8.0, 64),
        ],
        duration: recover_at + 10 * S,
        warmup: S,
        think: 50_000,
        scheduler: None,
    }
}

/// All destinations equal and healthy, with these base weights.
pub fn all_equal(weights: [f64; 3], connections: usize) -> Scenario {
    Scenario {
        name: format!("all equal, weights {weights:?}, {connections} conns"),
        connections,
        destinations: vec![
            DestSpec::new("a", weights[0], 8.0, connections),
            DestSpec::new("b", weights[1], 8.0, connections),
            DestSpec::new("c", weights[2], 8.0, connections),
        ],
        duration: 20 * S,
        warmup: 2 * S,
        think: 50_000,
        scheduler: None,
    }
}

/// When `destination`'s share, over windows of `window` issued from
/// `from`, first drops to at most `max` and stays there until `until`:
/// the time from `from`, or `None` if it never settles.
pub fn settles_below(
    run: &Run,
    destination: usize,
    max: f64,
    from: u64,
    until: u64,
    window: u64,
) -> Option<u64> {
    let mut t = from;
    let mut settled: Option<u64> = None;
    while t + window <= until {
        let share = run.share_between(destination, t, t + window);
        match (share <= max, settled) {
            (true, None) => settled = Some(t - from),
            (false, Some(_)) => settled = None,
            _ => {}
        }
        t += window;
    }
    settled
}

/// When `destination`'s share over windows of `window` from `from` first
/// reaches `min`: the time from `from`.
pub fn reaches(run: &Run, destination: usize, min: f64, from: u64, window: u64) -> Option<u64> {
    let mut t = from;
    while t + window <= run.duration {
        if run.share_between(destination, t, t + window) >= min {
            return Some(t + window - from);
        }
        t += window;
    }
    None
}
