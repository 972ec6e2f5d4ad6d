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
//!
//! What a real host adds, when a scenario asks for it ([`Noise`]): several
//! proxy workers, each with its own engine, merging through one shared
//! store on the configured tick (Envoy's workers and proxy-wasm shared
//! data), clients spread over them as connections are; pauses of a worker
//! (descheduled on a loaded node: nothing it handles moves until it runs
//! again, so every answer it was waiting for arrives late together); and
//! backend hiccups (one answer in a few dozen late by some milliseconds).
//! Without noise and with one worker the run is the model above.

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
    /// Proxy workers, each its own engine; client `i` uses worker
    /// `i % workers`.
    pub workers: usize,
    pub noise: Noise,
}

/// A real host's disturbances (module doc). The default is none.
#[derive(Debug, Clone, Default)]
pub struct Noise {
    /// Pauses per second of each worker.
    pub pauses_per_s: f64,
    /// A pause lasts uniformly between these (ms).
    pub pause_ms: (f64, f64),
    /// Share of answers that a backend hiccup makes late …
    pub hiccup_share: f64,
    /// … by uniformly between these (ms).
    pub hiccup_ms: (f64, f64),
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

    /// A latency quantile of the requests issued in `[from, to)`, ms.
    pub fn quantile_between_ms(&self, q: f64, from: u64, to: u64) -> f64 {
        let mut l: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.issued >= from && s.issued < to)
            .map(|s| s.latency)
            .collect();
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
    /// A client sends its next request (at `issued`; the worker may pick it
    /// up later, after a pause).
    Send { client: usize, issued: u64 },
    /// A destination finishes the request in service slot order.
    Finish { request: usize },
    /// The answer reaches the proxy worker (after its pause, if any) and
    /// the client.
    Deliver { request: usize },
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
    let workers = scenario.workers.max(1);
    let mut routers: Vec<Router> = (0..workers)
        .map(|w| match policy {
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
                    seed.wrapping_add(w as u64 * 0x9e37),
                    None,
                )))
            }
            PolicyKind::RoundRobin => Router::RoundRobin(w),
            PolicyKind::LeastRequest => Router::LeastRequest,
        })
        .collect();
    let pauses: Vec<Vec<(u64, u64)>> = (0..workers)
        .map(|_| pause_schedule(&scenario.noise, scenario.duration, &mut rng))
        .collect();
    // When worker `w` runs again if it is paused at `t`.
    let resumes = |w: usize, t: u64| -> Option<u64> {
        let p = &pauses[w];
        let i = p.partition_point(|&(start, _)| start <= t);
        i.checked_sub(1)
            .map(|i| p[i])
            .filter(|&(_, end)| t < end)
            .map(|(_, end)| end)
    };
    let headers = tideway_filter::header_map::serialize_pairs(&[
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
        push(&mut events, at, Event::Send { client, issued: at });
    }
    let mut samples = Vec::new();
    // Each worker merges on its own tick (offset, as Envoy's timers are).
    let tick = match &routers[0] {
        Router::Tideway(engine) => engine.config.scheduler.tick_ms.max(1) * MS,
        _ => 1_000 * MS,
    };
    let mut next_tick: Vec<u64> = (0..workers as u64)
        .map(|w| w * tick / workers as u64)
        .collect();
    while let Some(Reverse((now, _, event))) = events.pop() {
        if now >= scenario.duration {
            break;
        }
        host.now = now;
        // A worker's ticks while it is paused run when it resumes.
        for (w, router) in routers.iter_mut().enumerate() {
            if let Router::Tideway(engine) = router {
                while next_tick[w] <= now {
                    let at = resumes(w, next_tick[w]).unwrap_or(next_tick[w]);
                    if at > now {
                        break;
                    }
                    let _ = engine.sync_shared(&mut host.store, at);
                    engine.retune_timing(at);
                    next_tick[w] += tick;
                }
            }
        }
        let worker_of = |client: usize| client % workers;
        match event {
            Event::Send { client, issued } => {
                let w = worker_of(client);
                if let Some(resume) = resumes(w, now) {
                    push(&mut events, resume, Event::Send { client, issued });
                    continue;
                }
                let (destination, flight) = match &mut routers[w] {
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
                    issued,
                    destination,
                    flight,
                });
                let d = &mut dests[destination];
                d.active += 1;
                if d.busy < scenario.destinations[destination].limit {
                    d.busy += 1;
                    let t = service_time(scenario, destination, now, &mut rng);
                    push(&mut events, now + t, Event::Finish { request });
                } else {
                    d.queue.push_back(request);
                }
            }
            Event::Finish { request } => {
                // The backend is done: its slot goes to the next in line.
                let destination = pending[request].destination;
                let d = &mut dests[destination];
                d.active -= 1;
                if let Some(next) = d.queue.pop_front() {
                    let t = service_time(scenario, destination, now, &mut rng);
                    push(&mut events, now + t, Event::Finish { request: next });
                } else {
                    d.busy -= 1;
                }
                let w = worker_of(pending[request].client);
                let at = resumes(w, now).unwrap_or(now);
                push(&mut events, at, Event::Deliver { request });
            }
            Event::Deliver { request } => {
                let p = &mut pending[request];
                let w = worker_of(p.client);
                if let Some(resume) = resumes(w, now) {
                    push(&mut events, resume, Event::Deliver { request });
                    continue;
                }
                if let (Router::Tideway(engine), Some(flight)) =
                    (&mut routers[w], p.flight.as_mut())
                {
                    let _ = engine.complete(flight, StreamEvent::ResponseHeaders, &mut host);
                    let _ = engine.complete(flight, StreamEvent::End, &mut host);
                }
                p.flight = None;
                samples.push(Sample {
                    issued: p.issued,
                    latency: now - p.issued,
                    destination: p.destination,
                });
                let client = p.client;
                let at = now + scenario.think;
                push(&mut events, at, Event::Send { client, issued: at });
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

fn service_time(scenario: &Scenario, destination: usize, now: u64, rng: &mut SimRng) -> u64 {
    let d = &scenario.destinations[destination];
    let jitter = (0.25 * rng.normal()).exp();
    let mut ms = d.service_ms * d.factor(now) * jitter;
    let noise = &scenario.noise;
    if noise.hiccup_share > 0.0 && rng.unit() < noise.hiccup_share {
        let (lo, hi) = noise.hiccup_ms;
        ms += lo + (hi - lo) * rng.unit();
    }
    (ms * MS as f64).max(1_000.0) as u64
}

/// Each worker's pauses, `(start, end)` in time order: a Poisson process of
/// `pauses_per_s`, each lasting uniformly within `pause_ms`.
fn pause_schedule(noise: &Noise, duration: u64, rng: &mut SimRng) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if noise.pauses_per_s <= 0.0 {
        return out;
    }
    let mut t = 0.0f64;
    let (lo, hi) = noise.pause_ms;
    loop {
        t += -rng.unit().ln() / noise.pauses_per_s * S as f64;
        if t >= duration as f64 {
            return out;
        }
        let start = t as u64;
        let end = start + ((lo + (hi - lo) * rng.unit()) * MS as f64) as u64;
        // Pauses do not overlap: one that starts inside another extends it.
        match out.last_mut() {
            Some((_, last_end)) if start <= *last_end => *last_end = (*last_end).max(end),
            _ => out.push((start, end)),
        }
    }
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
        workers: 1,
        noise: Noise::default(),
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
        workers: 1,
        noise: Noise::default(),
    }
}

/// The demo's fleet (`cargo xtask demo`): clusters of 2, 4 and 8 ms with
/// 24, 16 and 16 slots and equal weights, about 800 requests a second from
/// 24 connections over Envoy's two workers, the demo's scheduler (latency
/// first, decay 2 s); the 2 ms one is 10× slower from `slow_at` until
/// `recover_at`, on a host with `noise`.
pub fn demo_slowdown(slow_at: u64, recover_at: u64, noise: Noise) -> Scenario {
    let mut a = DestSpec::new("hangzhou", 1.0, 2.0, 24);
    a.slowdowns = vec![(slow_at, 10.0), (recover_at, 1.0)];
    Scenario {
        name: "demo fleet, the 2 ms cluster 10× slower for a while".into(),
        connections: 24,
        destinations: vec![
            a,
            DestSpec::new("shanghai", 1.0, 4.0, 16),
            DestSpec::new("beijing", 1.0, 8.0, 16),
        ],
        duration: recover_at + 5 * S,
        warmup: S,
        think: 26 * MS,
        scheduler: Some(
            r#"{"weights":{"latency":0.7,"load":0.2,"cost":0.05,"affinity":0.05},"sharpness":4,"decayMs":2000}"#
                .into(),
        ),
        workers: 2,
        noise,
    }
}

/// A loaded node, as the demo's machine is while other builds run: each
/// worker paused three times a second for 5–30 ms, and one backend answer
/// in fifty late by 5–25 ms.
pub fn loaded_host() -> Noise {
    Noise {
        pauses_per_s: 3.0,
        pause_ms: (5.0, 30.0),
        hiccup_share: 0.02,
        hiccup_ms: (5.0, 25.0),
    }
}

/// A heavily loaded node, as the demo's machine was in a run where every
/// second's p99 was 36–52 ms whatever the routing: each worker paused six
/// times a second for 10–60 ms, and one backend answer in twenty late by
/// 10–40 ms.
pub fn heavily_loaded_host() -> Noise {
    Noise {
        pauses_per_s: 6.0,
        pause_ms: (10.0, 60.0),
        hiccup_share: 0.05,
        hiccup_ms: (10.0, 40.0),
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
        workers: 1,
        noise: Noise::default(),
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
