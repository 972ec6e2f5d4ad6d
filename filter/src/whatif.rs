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

use crate::closed_loop::{jitter, quantile_ms, request_headers, Timeline, Worker, MS};
use crate::config::{typing_error, ConfigError, PluginConfig, ServiceConfig};
use crate::decision::memory::{MemoryHost, SplitMix};
use crate::decision::{Engine, InFlight, LocalIdentity};
use crate::weights::WeightsDocument;
use crate::weights_channel::adopt;
use serde::{Deserialize, Serialize};

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
    Ok(model.run(engine, scenario))
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
        check_run(scenario)?;
        let default_ns = config.scheduler.default_rtt_ms as f64 * MS as f64;
        let conditions = conditions(sc, &scenario.destinations, default_ns)?;
        let n = conditions.len().max(1) as f64;
        let mesh_default = (
            conditions.iter().map(|c| c.0).sum::<f64>() / n,
            conditions.iter().map(|c| c.1).sum::<f64>() / n,
        );
        Ok(Self {
            service,
            authority: authority(sc),
            conditions,
            mesh_default,
        })
    }

    fn run(&self, engine: Engine, scenario: &Scenario) -> Prediction {
        let mut rng = SplitMix(scenario.seed ^ 0x0077_6968_6174_6966);
        let mut host = MemoryHost::simulated(scenario.seed);
        let mut worker = Worker::new(engine, 0, 1_000 * MS);
        let headers = request_headers(&self.authority);
        let duration = scenario.duration_ms * MS;
        let n = self.conditions.len();
        let mut timeline = Timeline::default();
        let mut pending: Vec<Option<Pending>> = Vec::new();
        for client in 0..scenario.connections as usize {
            // Staggered starts, 37 µs apart: clients do not move in lockstep.
            timeline.push(client as u64 * 37_000, Event::Send(client));
        }
        let mut samples = Samples::new(n, scenario.warmup_ms * MS);
        while let Some((now, event)) = timeline.pop() {
            if now >= duration || pending.len() >= MAX_REQUESTS {
                break;
            }
            host.now = now;
            worker.run_ticks(now, &mut host.store, |at| at);
            match event {
                Event::Send(client) => {
                    let (p, took) = self.send(&mut worker, &mut host, &headers, &mut rng);
                    pending.push(Some(Pending { client, ..p }));
                    timeline.push(now + took, Event::Answer(pending.len() - 1));
                }
                Event::Answer(request) => {
                    let Some(mut p) = pending.get_mut(request).and_then(Option::take) else {
                        continue;
                    };
                    host.set_status(if p.failed { 503 } else { 200 });
                    if let Some(flight) = p.flight.as_mut() {
                        worker.answer(flight, &mut host);
                    }
                    samples.record(&p, now);
                    timeline.push(now + THINK, Event::Send(p.client));
                }
            }
        }
        self.predict(&worker.engine, scenario, samples)
    }

    /// One request sent now: its destination as routed (`n`: the mesh
    /// default), whether it fails and how long its answer takes.
    fn send(
        &self,
        worker: &mut Worker,
        host: &mut MemoryHost,
        headers: &[u8],
        rng: &mut SplitMix,
    ) -> (Pending, u64) {
        let n = self.conditions.len();
        let flight = worker.send(headers, host);
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
        let took = ((latency * jitter(rng)) as u64).max(1_000);
        let failed = error_rate > 0.0 && rng.unit() < error_rate;
        let pending = Pending {
            client: 0,
            issued: host.now,
            destination,
            failed,
            flight,
        };
        (pending, took)
    }

    /// The prediction from the measured requests' samples.
    fn predict(&self, engine: &Engine, scenario: &Scenario, mut samples: Samples) -> Prediction {
        let total = samples.all.len() as u64;
        let share = |count: usize| {
            if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            }
        };
        let destinations = engine.config.services[self.service]
            .destinations
            .iter()
            .enumerate()
            .map(|(d, dc)| {
                let errors = samples.errors[d];
                let l = &mut samples.by_destination[d];
                DestinationPrediction {
                    name: dc.name.clone(),
                    share: share(l.len()),
                    requests: l.len() as u64,
                    errors,
                    p50_ms: quantile_ms(l, 0.5),
                    p99_ms: quantile_ms(l, 0.99),
                }
            })
            .collect();
        let errors = samples.errors.iter().sum::<u64>() as usize;
        let measured_s = (scenario.duration_ms * MS - scenario.warmup_ms * MS) as f64 / 1e9;
        let n = self.conditions.len();
        Prediction {
            service: scenario.service.clone(),
            requests: total,
            success_rate: if total == 0 { 0.0 } else { 1.0 - share(errors) },
            p50_ms: quantile_ms(&mut samples.all, 0.5),
            p99_ms: quantile_ms(&mut samples.all, 0.99),
            requests_per_second: total as f64 / measured_s,
            destinations,
            mesh_default_share: share(samples.by_destination[n].len()),
        }
    }
}

/// The `:authority` the clients send: the service's first exact host, or
/// a name under its first wildcard.
fn authority(sc: &ServiceConfig) -> String {
    sc.hosts
        .iter()
        .find(|h| !h.starts_with("*."))
        .cloned()
        .or_else(|| {
            sc.hosts
                .first()
                .map(|h| format!("what-if{}", h.trim_start_matches('*')))
        })
        .unwrap_or_default()
}

/// The run's size: clients, duration and warmup within bounds.
fn check_run(scenario: &Scenario) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Per config destination: (latency ns, error rate), `default_ns` and no
/// errors for a destination the scenario does not list.
fn conditions(
    sc: &ServiceConfig,
    listed: &[Condition],
    default_ns: f64,
) -> Result<Vec<(f64, f64)>, ConfigError> {
    let mut conditions = vec![(default_ns, 0.0); sc.destinations.len()];
    for (i, c) in listed.iter().enumerate() {
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
    Ok(conditions)
}

/// A client's wait between an answer and its next request.
const THINK: u64 = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client sends its next request.
    Send(usize),
    /// A pending request's answer arrives.
    Answer(usize),
}

/// A request sent and not yet answered.
struct Pending {
    client: usize,
    issued: u64,
    /// Its destination; the destinations' count for the mesh default.
    destination: usize,
    failed: bool,
    flight: Option<InFlight>,
}

/// The latencies of the measured requests (those issued after the warmup).
struct Samples {
    from: u64,
    all: Vec<u64>,
    /// Per destination, the mesh default last.
    by_destination: Vec<Vec<u64>>,
    errors: Vec<u64>,
}

impl Samples {
    fn new(destinations: usize, from: u64) -> Self {
        Self {
            from,
            all: Vec::new(),
            by_destination: vec![Vec::new(); destinations + 1],
            errors: vec![0; destinations + 1],
        }
    }

    fn record(&mut self, p: &Pending, answered: u64) {
        if p.issued < self.from {
            return;
        }
        let latency = answered - p.issued;
        self.all.push(latency);
        self.by_destination[p.destination].push(latency);
        self.errors[p.destination] += u64::from(p.failed);
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
