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

use std::collections::VecDeque;

use tideway_filter::closed_loop::{jitter, quantile_ms, request_headers, Timeline, Worker};
use tideway_filter::config::PluginConfig;
use tideway_filter::decision::memory::{MemoryHost, SplitMix};
use tideway_filter::decision::{Engine, InFlight, LocalIdentity};

pub use tideway_filter::closed_loop::MS;
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

impl Scenario {
    /// One worker on a quiet host, the README's scheduler, clients that
    /// send again 50 µs after an answer.
    pub fn new(
        name: String,
        connections: usize,
        destinations: Vec<DestSpec>,
        duration: u64,
        warmup: u64,
    ) -> Self {
        Self {
            name,
            connections,
            destinations,
            duration,
            warmup,
            think: 50_000,
            scheduler: None,
            workers: 1,
            noise: Noise::default(),
        }
    }
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
        quantile_ms(&mut l, q)
    }

    /// A latency quantile of the requests issued in `[from, to)`, ms.
    pub fn quantile_between_ms(&self, q: f64, from: u64, to: u64) -> f64 {
        let mut l: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.issued >= from && s.issued < to)
            .map(|s| s.latency)
            .collect();
        quantile_ms(&mut l, q)
    }

    /// Completed requests per second of measured time.
    pub fn throughput(&self) -> f64 {
        let n = self.measured().count() as f64;
        n / ((self.duration - self.measured_from) as f64 / S as f64)
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
    Tideway(Box<Worker>),
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

/// One run in progress.
struct Sim<'a> {
    scenario: &'a Scenario,
    rng: SplitMix,
    /// Every worker's host: one clock, one shared store.
    host: MemoryHost,
    routers: Vec<Router>,
    /// Per worker, its pauses (`pause_schedule`).
    pauses: Vec<Vec<(u64, u64)>>,
    headers: Vec<u8>,
    dests: Vec<DestState>,
    pending: Vec<Pending>,
    timeline: Timeline<Event>,
    samples: Vec<Sample>,
}

/// Run `scenario` under `policy` with `seed`.
pub fn run(scenario: &Scenario, policy: PolicyKind, seed: u64) -> Run {
    let mut sim = Sim::new(scenario, policy, seed);
    while let Some((now, event)) = sim.timeline.pop() {
        if now >= scenario.duration {
            break;
        }
        sim.host.now = now;
        sim.run_ticks(now);
        match event {
            Event::Send { client, issued } => sim.send(now, client, issued),
            Event::Finish { request } => sim.finish(now, request),
            Event::Deliver { request } => sim.deliver(now, request),
        }
    }
    Run {
        samples: sim.samples,
        measured_from: scenario.warmup,
        duration: scenario.duration,
        destinations: scenario.destinations.len(),
    }
}

/// When a worker with `pauses` runs again if it is paused at `t`.
fn resumes(pauses: &[(u64, u64)], t: u64) -> Option<u64> {
    let i = pauses.partition_point(|&(start, _)| start <= t);
    i.checked_sub(1)
        .map(|i| pauses[i])
        .filter(|&(_, end)| t < end)
        .map(|(_, end)| end)
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario, policy: PolicyKind, seed: u64) -> Self {
        let mut rng = SplitMix(seed ^ 0x5eed);
        let routers = routers(scenario, policy, seed);
        let workers = routers.len();
        let pauses = (0..workers)
            .map(|_| pause_schedule(&scenario.noise, scenario.duration, &mut rng))
            .collect();
        let dests = (0..scenario.destinations.len())
            .map(|_| DestState {
                busy: 0,
                queue: VecDeque::new(),
                active: 0,
            })
            .collect();
        let mut timeline = Timeline::default();
        for client in 0..scenario.connections {
            // Staggered starts: clients do not move in lockstep.
            let at = (client as u64 * scenario.think.max(1000)) % (MS.max(1));
            timeline.push(at, Event::Send { client, issued: at });
        }
        Self {
            scenario,
            rng,
            host: MemoryHost::simulated(seed),
            routers,
            pauses,
            headers: request_headers("svc.local"),
            dests,
            pending: Vec::new(),
            timeline,
            samples: Vec::new(),
        }
    }

    fn worker_of(&self, client: usize) -> usize {
        client % self.routers.len()
    }

    fn resumes(&self, worker: usize, t: u64) -> Option<u64> {
        resumes(&self.pauses[worker], t)
    }

    /// A worker's ticks while it is paused run when it resumes.
    fn run_ticks(&mut self, now: u64) {
        for (router, pauses) in self.routers.iter_mut().zip(&self.pauses) {
            if let Router::Tideway(worker) = router {
                worker.run_ticks(now, &mut self.host.store, |t| {
                    resumes(pauses, t).unwrap_or(t)
                });
            }
        }
    }

    fn send(&mut self, now: u64, client: usize, issued: u64) {
        let w = self.worker_of(client);
        if let Some(resume) = self.resumes(w, now) {
            self.timeline.push(resume, Event::Send { client, issued });
            return;
        }
        let (destination, flight) = self.choose(w);
        let request = self.pending.len();
        self.pending.push(Pending {
            client,
            issued,
            destination,
            flight,
        });
        let d = &mut self.dests[destination];
        d.active += 1;
        if d.busy < self.scenario.destinations[destination].limit {
            d.busy += 1;
            let t = service_time(self.scenario, destination, now, &mut self.rng);
            self.timeline.push(now + t, Event::Finish { request });
        } else {
            d.queue.push_back(request);
        }
    }

    /// Worker `w`'s router's choice, and Tideway's request in flight.
    fn choose(&mut self, w: usize) -> (usize, Option<InFlight>) {
        let n = self.dests.len();
        match &mut self.routers[w] {
            Router::Tideway(worker) => {
                let flight = worker
                    .send(&self.headers, &mut self.host)
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
                let (a, b) = (self.rng.below(n), self.rng.below(n));
                let d = if self.dests[b].active < self.dests[a].active {
                    b
                } else {
                    a
                };
                (d, None)
            }
        }
    }

    /// The backend is done: its slot goes to the next in line.
    fn finish(&mut self, now: u64, request: usize) {
        let destination = self.pending[request].destination;
        let d = &mut self.dests[destination];
        d.active -= 1;
        if let Some(next) = d.queue.pop_front() {
            let t = service_time(self.scenario, destination, now, &mut self.rng);
            self.timeline.push(now + t, Event::Finish { request: next });
        } else {
            d.busy -= 1;
        }
        let w = self.worker_of(self.pending[request].client);
        let at = self.resumes(w, now).unwrap_or(now);
        self.timeline.push(at, Event::Deliver { request });
    }

    fn deliver(&mut self, now: u64, request: usize) {
        let w = self.worker_of(self.pending[request].client);
        if let Some(resume) = self.resumes(w, now) {
            self.timeline.push(resume, Event::Deliver { request });
            return;
        }
        let p = &mut self.pending[request];
        if let (Router::Tideway(worker), Some(flight)) = (&mut self.routers[w], p.flight.as_mut()) {
            worker.answer(flight, &mut self.host);
        }
        p.flight = None;
        self.samples.push(Sample {
            issued: p.issued,
            latency: now - p.issued,
            destination: p.destination,
        });
        let client = p.client;
        let at = now + self.scenario.think;
        self.timeline.push(at, Event::Send { client, issued: at });
    }
}

/// One router per proxy worker; Tideway's each with its own engine and
/// its tick offset, as Envoy's timers are.
fn routers(scenario: &Scenario, policy: PolicyKind, seed: u64) -> Vec<Router> {
    let workers = scenario.workers.max(1);
    (0..workers)
        .map(|w| match policy {
            PolicyKind::Tideway => {
                let config = PluginConfig::from_json(tideway_config(scenario).as_bytes())
                    .expect("the scenario's config is valid");
                let tick = config.scheduler.tick_ms.max(1) * MS;
                let engine = Engine::new(
                    config,
                    LocalIdentity {
                        cluster: "local".into(),
                        locality: None,
                        namespace: None,
                    },
                    seed.wrapping_add(w as u64 * 0x9e37),
                    None,
                );
                let first_tick = w as u64 * tick / workers as u64;
                Router::Tideway(Box::new(Worker::new(engine, first_tick, tick)))
            }
            PolicyKind::RoundRobin => Router::RoundRobin(w),
            PolicyKind::LeastRequest => Router::LeastRequest,
        })
        .collect()
}

fn service_time(scenario: &Scenario, destination: usize, now: u64, rng: &mut SplitMix) -> u64 {
    let d = &scenario.destinations[destination];
    let mut ms = d.service_ms * d.factor(now) * jitter(rng);
    let noise = &scenario.noise;
    if noise.hiccup_share > 0.0 && rng.unit() < noise.hiccup_share {
        let (lo, hi) = noise.hiccup_ms;
        ms += lo + (hi - lo) * rng.unit();
    }
    (ms * MS as f64).max(1_000.0) as u64
}

/// Each worker's pauses, `(start, end)` in time order: a Poisson process of
/// `pauses_per_s`, each lasting uniformly within `pause_ms`.
fn pause_schedule(noise: &Noise, duration: u64, rng: &mut SplitMix) -> Vec<(u64, u64)> {
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
    let destinations = vec![
        DestSpec::new("a", 1.0, 8.0, connections),
        DestSpec::new("b", 1.0, 8.0, connections),
        DestSpec::new("c", 1.0, 8.0 * slower, connections),
    ];
    let name = format!("one {slower}× slower, {connections} conns");
    Scenario::new(name, connections, destinations, 20 * S, 2 * S)
}

/// Base weights 70/20/10, all equal (8 ms), the 70% one slowed 10× from
/// `slow_at` until `recover_at`.
pub fn weighted_slowdown(slow_at: u64, recover_at: u64) -> Scenario {
    let mut a = DestSpec::new("a", 70.0, 8.0, 64);
    a.slowdowns = vec![(slow_at, 10.0), (recover_at, 1.0)];
    let destinations = vec![
        a,
        DestSpec::new("b", 20.0, 8.0, 64),
        DestSpec::new("c", 10.0, 8.0, 64),
    ];
    let name = "70/20/10, the 70% one 10× slower for a while".into();
    Scenario::new(name, 32, destinations, recover_at + 10 * S, S)
}

/// The demo's fleet (`cargo xtask demo`): clusters of 2, 4 and 8 ms with
/// 24, 16 and 16 slots and equal weights, about 800 requests a second from
/// 24 connections over Envoy's two workers, the demo's scheduler (latency
/// first, decay 2 s); the 2 ms one is 10× slower from `slow_at` until
/// `recover_at`, on a host with `noise`.
pub fn demo_slowdown(slow_at: u64, recover_at: u64, noise: Noise) -> Scenario {
    let mut a = DestSpec::new("hangzhou", 1.0, 2.0, 24);
    a.slowdowns = vec![(slow_at, 10.0), (recover_at, 1.0)];
    let destinations = vec![
        a,
        DestSpec::new("shanghai", 1.0, 4.0, 16),
        DestSpec::new("beijing", 1.0, 8.0, 16),
    ];
    let name = "demo fleet, the 2 ms cluster 10× slower for a while".into();
    Scenario {
        think: 26 * MS,
        scheduler: Some(
            r#"{"weights":{"latency":0.7,"load":0.2,"cost":0.05,"affinity":0.05},"sharpness":4,"decayMs":2000}"#
                .into(),
        ),
        workers: 2,
        noise,
        ..Scenario::new(name, 24, destinations, recover_at + 5 * S, S)
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
    let destinations = vec![
        DestSpec::new("a", weights[0], 8.0, connections),
        DestSpec::new("b", weights[1], 8.0, connections),
        DestSpec::new("c", weights[2], 8.0, connections),
    ];
    let name = format!("all equal, weights {weights:?}, {connections} conns");
    Scenario::new(name, connections, destinations, 20 * S, 2 * S)
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
