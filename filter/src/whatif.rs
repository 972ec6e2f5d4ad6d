//! What-if: the filter's own engine run on a model of a service's
//! destinations, to predict the split and latency a change would give
//! before an operator applies it.
//!
//! The dashboard runs this in the browser (compiled with wasm-bindgen,
//! `filter/web`) and the controller can run it natively; both run the same
//! code as the filter in Envoy — `Engine::route` and `Engine::complete`, the
//! weights channel's `check` — on a virtual clock, so a prediction differs
//! from the filter only where the model differs from the fleet, never
//! because the scheduler was re-implemented for the page.
//!
//! The model: `connections` closed-loop clients (each sends, waits for its
//! answer, sends again), anonymous (no session key). A destination answers
//! after its latency × a log-normal jitter (σ = 0.25, so equal destinations
//! are not identical), with HTTP 503 at its error rate. Unlimited
//! concurrency: the scenario's latency is what it states, not a queue. A
//! request the engine leaves to the mesh (no destination usable, nothing
//! decided) is counted apart as the mesh default's share, at the mean of
//! the destinations' latencies and error rates. The same input and seed
//! always give the same prediction, on every target: randomness comes from
//! the seed, and the clock is virtual.

use crate::config::{typing_error, ConfigError, PluginConfig};
use crate::decision::{Engine, HostFailure, LocalIdentity, RouteHost, StreamEvent, StreamHost};
use crate::header_map::{serialize_pairs, HeaderMap};
use crate::shared_stats::{SharedStore, StoreError};
use crate::trace::TraceRng;
use crate::weights::WeightsDocument;
use crate::weights_channel::adopt;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

const MS: u64 = 1_000_000;

/// What to predict: a service of a plugin config under stated conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// The plugin config's `services[].name`.
    pub service: String,
    /// The weights to try (what "apply" would send): base weights, costs,
    /// drain flags, factor weights. Absent: the config's static ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsDocument>,
    /// Each destination's latency and error rate. A destination not listed
    /// answers at `scheduler.defaultRttMs`, without errors.
    #[serde(default)]
    pub destinations: Vec<Condition>,
    /// The proxy the requests leave from (locality scoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Origin>,
    /// Closed-loop clients. Default 16.
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// Virtual time simulated, ms. Default 10000.
    #[serde(default = "default_duration_ms")]
    pub duration_ms: u64,
    /// Requests sent before this are not measured (the engine learns
    /// first), ms. Default 2000.
    #[serde(default = "default_warmup_ms")]
    pub warmup_ms: u64,
    /// Default 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

/// One destination's condition in a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The plugin config's `services[].destinations[].name`.
    pub name: String,
    /// Mean time to the response headers, ms (> 0).
    pub latency_ms: f64,
    /// Share of requests answered with 503 (0…1).
    #[serde(default)]
    pub error_rate: f64,
}

/// The proxy a scenario's requests leave from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Origin {
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
}

fn default_connections() -> u32 {
    16
}
fn default_duration_ms() -> u64 {
    10_000
}
fn default_warmup_ms() -> u64 {
    2_000
}
fn default_seed() -> u64 {
    1
}

/// What the engine did in a scenario, over its measured requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prediction {
    pub service: String,
    pub requests: u64,
    /// Share answered without error.
    pub success_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests_per_second: f64,
    /// In the config's order.
    pub destinations: Vec<DestinationPrediction>,
    /// Requests the engine left to the mesh's default route.
    pub mesh_default_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPrediction {
    pub name: String,
    pub share: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Bounds that keep one prediction to well under a second of CPU.
const MAX_CONNECTIONS: u32 = 1_024;
const MAX_DURATION_MS: u64 = 120_000;
const MAX_REQUESTS: usize = 2_000_000;

/// Predict `scenario` (JSON) for `config` (the plugin config JSON the
/// filter runs): the entry point the browser build and the CLI share.
/// Errors name the field path and value, as the filter's config errors do.
pub fn predict_json(config: &[u8], scenario: &[u8]) -> Result<Prediction, ConfigError> {
    let config = PluginConfig::from_json(config).map_err(|e| ConfigError {
        field: prefixed("config", &e.field),
        message: e.message,
    })?;
    let scenario: Scenario = serde_json::from_slice(scenario).map_err(|e| {
        let e = typing_error(scenario, e);
        ConfigError {
            field: prefixed("scenario", &e.field),
            message: e.message,
        }
    })?;
    predict(&config, &scenario)
}

fn prefixed(root: &str, field: &str) -> String {
    if field.is_empty() || field == crate::config::ROOT {
        root.to_string()
    } else {
        format!("{root}.{field}")
    }
}

/// Predict `scenario` for a validated `config`.
pub fn predict(config: &PluginConfig, scenario: &Scenario) -> Result<Prediction, ConfigError> {
    let model = Model::new(config, scenario)?;
    let mut engine = Engine::new(
        config.clone(),
        LocalIdentity {
            cluster: scenario
                .from
                .as_ref()
                .map_or_else(|| "what-if".to_string(), |o| o.cluster.clone()),
            locality: scenario.from.as_ref().and_then(|o| o.locality.clone()),
            namespace: None,
        },
        scenario.seed,
        None,
    );
    if let Some(doc) = &scenario.weights {
        let runtime = adopt::check(doc, config).map_err(|r| ConfigError {
            field: prefixed("scenario.weights", &r.error.field),
            message: r.error.message,
        })?;
        engine.apply_weights(Some(&runtime));
    }
    Ok(model.run(&mut engine, scenario))
}

/// A scenario checked against its config.
struct Model {
    service: usize,
    authority: String,
    /// Per config destination: (latency ns, error rate).
    conditions: Vec<(f64, f64)>,
    mesh_default: (f64, f64),
}

impl Model {
    fn new(config: &PluginConfig, scenario: &Scenario) -> Result<Self, ConfigError> {
        let Some(service) = config
            .services
            .iter()
            .position(|s| s.name == scenario.service)
        else {
            return Err(ConfigError::new(
                "scenario.service",
                format!("{:?} is not a service of the config", scenario.service),
            ));
        };
        let sc = &config.services[service];
        let authority = sc
            .hosts
            .iter()
            .find(|h| !h.starts_with("*."))
            .cloned()
            .or_else(|| {
                sc.hosts
                    .first()
                    .map(|h| format!("what-if{}", h.trim_start_matches('*')))
            })
            .unwrap_or_default();
        if !(1..=MAX_CONNECTIONS).contains(&scenario.connections) {
            return Err(ConfigError::new(
                "scenario.connections",
                format!("{} (must be 1…{MAX_CONNECTIONS})", scenario.connections),
            ));
        }
        if !(1..=MAX_DURATION_MS).contains(&scenario.duration_ms) {
            return Err(ConfigError::new(
                "scenario.durationMs",
                format!("{} (must be 1…{MAX_DURATION_MS})", scenario.duration_ms),
            ));
        }
        if scenario.warmup_ms >= scenario.duration_ms {
            return Err(ConfigError::new(
                "scenario.warmupMs",
                format!(
                    "{} (must be below durationMs, {})",
                    scenario.warmup_ms, scenario.duration_ms
                ),
            ));
        }
        let default_ns = config.scheduler.default_rtt_ms as f64 * MS as f64;
        let mut conditions = vec![(default_ns, 0.0); sc.destinations.len()];
        for (i, c) in scenario.destinations.iter().enumerate() {
            let at = format!("scenario.destinations[{i}]");
            let Some(d) = sc.destinations.iter().position(|d| d.name == c.name) else {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("{:?} is not a destination of service {:?}", c.name, sc.name),
                ));
            };
            if !(c.latency_ms.is_finite() && c.latency_ms > 0.0 && c.latency_ms <= 600_000.0) {
                return Err(ConfigError::new(
                    format!("{at}.latencyMs"),
                    format!("{} (must be > 0 and ≤ 600000)", c.latency_ms),
                ));
            }
            if !(0.0..=1.0).contains(&c.error_rate) {
                return Err(ConfigError::new(
                    format!("{at}.errorRate"),
                    format!("{} (must be 0…1)", c.error_rate),
                ));
            }
            conditions[d] = (c.latency_ms * MS as f64, c.error_rate);
        }
        let n = conditions.len().max(1) as f64;
        let mesh_default = (
            conditions.iter().map(|c| c.0).sum::<f64>() / n,
            conditions.iter().map(|c| c.1).sum::<f64>() / n,
        );
        Ok(Self {
            service,
            authority,
            conditions,
            mesh_default,
        })
    }

    fn run(&self, engine: &mut Engine, scenario: &Scenario) -> Prediction {
        let mut rng = SplitMix(scenario.seed ^ 0x0077_6968_6174_6966);
        let mut host = VirtualHost {
            now: 0,
            status: 200,
            store: MemStore::default(),
            trace: SplitMix(scenario.seed),
        };
        let headers = serialize_pairs(&[
            (":authority", &self.authority),
            (":path", "/"),
            (":method", "GET"),
        ]);
        let duration = scenario.duration_ms * MS;
        let warmup = scenario.warmup_ms * MS;
        let n = self.conditions.len();
        // (time, sequence, event): the sequence keeps equal times in FIFO
        // order, so the run is the same on every target.
        let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
        let mut seq = 0u64;
        // Per pending request: its flight, issue time, destination (n: the
        // mesh default) and whether it fails.
        let mut pending: Vec<Option<Pending>> = Vec::new();
        for client in 0..scenario.connections as usize {
            seq += 1;
            // Staggered starts, 37 µs apart: clients do not move in lockstep.
            events.push(Reverse((client as u64 * 37_000, seq, Event::Send(client))));
        }
        let mut samples: Vec<(u64, usize, bool)> = Vec::new();
        let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); n + 1];
        let mut next_tick = 0u64;
        let think = 50_000u64;
        while let Some(Reverse((now, _, event))) = events.pop() {
            if now >= duration || pending.len() >= MAX_REQUESTS {
                break;
            }
            host.now = now;
            while next_tick <= now {
                let _ = engine.sync_shared(&mut host.store, next_tick);
                engine.retune_timing(next_tick);
                next_tick += 1_000 * MS;
            }
            match event {
                Event::Send(client) => {
                    let flight = engine.route(&HeaderMap::parse(&headers), &mut host);
                    let destination = flight
                        .as_ref()
                        .and_then(|f| (f.decision.service == self.service).then_some(f))
                        .and_then(|f| f.decision.destination)
                        .filter(|d| *d < n)
                        .unwrap_or(n);
                    let (latency, error_rate) = self
                        .conditions
                        .get(destination)
                        .copied()
                        .unwrap_or(self.mesh_default);
                    let jitter = (0.25 * rng.normal()).exp();
                    let took = ((latency * jitter) as u64).max(1_000);
                    let failed = error_rate > 0.0 && rng.unit() < error_rate;
                    pending.push(Some(Pending {
                        client,
                        issued: now,
                        destination,
                        failed,
                        flight,
                    }));
                    seq += 1;
                    events.push(Reverse((now + took, seq, Event::Answer(pending.len() - 1))));
                }
                Event::Answer(request) => {
                    let Some(mut p) = pending.get_mut(request).and_then(Option::take) else {
                        continue;
                    };
                    host.status = if p.failed { 503 } else { 200 };
                    if let Some(flight) = p.flight.as_mut() {
                        let _ = engine.complete(flight, StreamEvent::ResponseHeaders, &mut host);
                        let _ = engine.complete(flight, StreamEvent::End, &mut host);
                    }
                    if p.issued >= warmup {
                        samples.push((now - p.issued, p.destination, p.failed));
                        latencies[p.destination].push(now - p.issued);
                    }
                    seq += 1;
                    events.push(Reverse((now + think, seq, Event::Send(p.client))));
                }
            }
        }
        let total = samples.len() as u64;
        let share = |count: usize| {
            if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            }
        };
        let mut all: Vec<u64> = samples.iter().map(|s| s.0).collect();
        let destinations = engine.config.services[self.service]
            .destinations
            .iter()
            .enumerate()
            .map(|(d, dc)| {
                let l = &mut latencies[d];
                DestinationPrediction {
                    name: dc.name.clone(),
                    share: share(l.len()),
                    requests: l.len() as u64,
                    errors: samples.iter().filter(|s| s.1 == d && s.2).count() as u64,
                    p50_ms: quantile_ms(l, 0.5),
                    p99_ms: quantile_ms(l, 0.99),
                }
            })
            .collect();
        let errors = samples.iter().filter(|s| s.2).count();
        let measured_s = (duration - warmup) as f64 / 1e9;
        Prediction {
            service: scenario.service.clone(),
            requests: total,
            success_rate: if total == 0 { 0.0 } else { 1.0 - share(errors) },
            p50_ms: quantile_ms(&mut all, 0.5),
            p99_ms: quantile_ms(&mut all, 0.99),
            requests_per_second: total as f64 / measured_s,
            destinations,
            mesh_default_share: share(latencies[n].len()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client sends its next request.
    Send(usize),
    /// A pending request's answer arrives.
    Answer(usize),
}

struct Pending {
    client: usize,
    issued: u64,
    destination: usize,
    failed: bool,
    flight: Option<crate::decision::InFlight>,
}

/// The `q` quantile (nearest rank) in ms; 0 when there are no samples.
fn quantile_ms(samples: &mut [u64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[rank] as f64 / MS as f64
}

/// splitmix64: small, and the same sequence on every target.
struct SplitMix(u64);

impl SplitMix {
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
}

impl TraceRng for SplitMix {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One worker's shared data, in memory.
#[derive(Default)]
struct MemStore(HashMap<String, (Vec<u8>, u32)>);

impl SharedStore for MemStore {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.0.get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let next = match (self.0.get(key), cas) {
            (Some((_, have)), Some(want)) if *have != want => return Err(StoreError::CasMismatch),
            (Some((_, have)), _) => have.wrapping_add(1),
            (None, _) => 1,
        };
        self.0.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

/// The host the engine sees: the virtual clock and the modelled answer.
struct VirtualHost {
    now: u64,
    status: u16,
    store: MemStore,
    trace: SplitMix,
}

impl RouteHost for VirtualHost {
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

impl StreamHost for VirtualHost {
    fn now_ns(&mut self) -> Result<u64, HostFailure> {
        Ok(self.now)
    }
    fn response_header(&mut self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        Ok((name == ":status").then(|| self.status.to_string().into_bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
        "destinations":[{"name":"hangzhou","weight":1},{"name":"shanghai","weight":1},
        {"name":"beijing","weight":1}]}]}"#;

    fn scenario(extra: &str) -> String {
        format!(
            r#"{{"service":"reviews","destinations":[{{"name":"hangzhou","latencyMs":8}},
            {{"name":"shanghai","latencyMs":8}},{{"name":"beijing","latencyMs":8}}]{extra}}}"#
        )
    }

    fn predict_str(config: &str, scenario: &str) -> Result<Prediction, ConfigError> {
        predict_json(config.as_bytes(), scenario.as_bytes())
    }

    fn share(p: &Prediction, name: &str) -> f64 {
        p.destinations
            .iter()
            .find(|d| d.name == name)
            .map_or(f64::NAN, |d| d.share)
    }

    #[test]
    fn equal_destinations_split_evenly() {
        let p = predict_str(CONFIG, &scenario("")).unwrap();
        for d in &p.destinations {
            assert!((d.share - 1.0 / 3.0).abs() < 0.05, "{p:?}");
        }
        assert!(p.requests > 10_000, "{p:?}");
        assert_eq!(p.success_rate, 1.0);
        assert!((7.0..9.5).contains(&p.p50_ms), "{p:?}");
    }

    #[test]
    fn a_slow_destination_is_avoided_and_the_tail_with_it() {
        let slow = r#"{"service":"reviews","destinations":[{"name":"hangzhou","latencyMs":8},
            {"name":"shanghai","latencyMs":8},{"name":"beijing","latencyMs":80}]}"#;
        let p = predict_str(CONFIG, slow).unwrap();
        assert!(share(&p, "beijing") < 0.02, "{p:?}");
        assert!(p.p99_ms < 40.0, "{p:?}");
    }

    #[test]
    fn a_failing_destination_is_ejected() {
        let failing = r#"{"service":"reviews","destinations":[{"name":"hangzhou","latencyMs":8},
            {"name":"shanghai","latencyMs":8},{"name":"beijing","latencyMs":8,"errorRate":1}]}"#;
        let p = predict_str(CONFIG, failing).unwrap();
        assert!(share(&p, "beijing") < 0.02, "{p:?}");
        assert!(p.success_rate > 0.98, "{p:?}");
    }

    #[test]
    fn proposed_weights_are_the_channels_own() {
        // A drain and a 4:1 split through the weights document, as "apply"
        // sends it; the static mode (latency and load at 0) makes it exact.
        let doc = r#","weights":{"version":1,"services":[{"name":"reviews",
            "factors":{"latency":0,"load":0,"cost":0,"affinity":0},
            "destinations":[{"name":"hangzhou","weight":4,"cost":1},
            {"name":"shanghai","weight":1,"cost":1},
            {"name":"beijing","weight":1,"cost":1,"drained":true}]}]}"#;
        let p = predict_str(CONFIG, &scenario(doc)).unwrap();
        assert!((share(&p, "hangzhou") - 0.8).abs() < 0.01, "{p:?}");
        assert!((share(&p, "shanghai") - 0.2).abs() < 0.01, "{p:?}");
        assert_eq!(share(&p, "beijing"), 0.0, "{p:?}");
    }

    #[test]
    fn the_same_input_gives_the_same_prediction() {
        let a = predict_str(CONFIG, &scenario(r#","seed":7"#)).unwrap();
        let b = predict_str(CONFIG, &scenario(r#","seed":7"#)).unwrap();
        let c = predict_str(CONFIG, &scenario(r#","seed":8"#)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c, "the seed drives the jitter");
    }

    #[test]
    fn errors_name_the_field_path_and_value() {
        let cases = [
            (scenario(r#","connections":0"#), "scenario.connections", "0"),
            (
                r#"{"service":"ratings"}"#.to_string(),
                "scenario.service",
                "ratings",
            ),
            (
                r#"{"service":"reviews","destinations":[{"name":"x","latencyMs":1}]}"#.to_string(),
                "scenario.destinations[0].name",
                "\"x\"",
            ),
            (
                r#"{"service":"reviews","destinations":[{"name":"beijing","latencyMs":-1}]}"#
                    .to_string(),
                "scenario.destinations[0].latencyMs",
                "-1",
            ),
            (
                r#"{"service":"reviews","destinations":[{"name":"beijing","latncyMs":1}]}"#
                    .to_string(),
                "scenario.destinations[0].latncyMs",
                "latncyMs",
            ),
            (
                scenario(
                    r#","weights":{"version":1,"services":[{"name":"reviews","destinations":[{"name":"paris","weight":1,"cost":1}]}]}"#,
                ),
                "scenario.weights",
                "paris",
            ),
        ];
        for (input, field, value) in cases {
            let e = predict_str(CONFIG, &input).unwrap_err();
            assert!(e.field.starts_with(field), "{input}: {e:?}");
            assert!(e.message.contains(value), "{input}: {e:?}");
        }
        let e = predict_str(r#"{"scheduler":{"decayMs":-5}}"#, &scenario("")).unwrap_err();
        assert_eq!(e.field, "config.scheduler.decayMs", "{e:?}");
    }
}
