//! Steering quality: Tideway against Envoy's own load balancers, on the same
//! Envoy binary and the same three loopback backends.
//!
//! - Heterogeneous latency (2, 2, 20 ms) and a mid-run slowdown of one
//!   destination to 10×: client-side p50/p99/p99.9, Tideway vs
//!   `ROUND_ROBIN`, `LEAST_REQUEST` (power of two choices) and `RANDOM`.
//! - Hard failure of one destination (it answers 503): time until under 1%
//!   of traffic goes there (100 ms sliding windows) and the success rate
//!   during the failure; Envoy's baselines get default `outlier_detection`.
//! - Static split 70/20/10: deviation from the configured shares.
//! - Affinity: the share of session keys that move when one destination's
//!   weight grows by 10%, Tideway (weighted rendezvous) vs `RING_HASH` and
//!   `MAGLEV` hashing the same header.
//!
//! Every variant gets a fresh Envoy (so nothing learned carries over), and
//! the variants alternate within each round. Envoy runs two workers, as an
//! Istio sidecar does by default; the load is closed-loop (`load`), 16
//! requests in flight, on loopback only.

use super::load::{self, LoadSpec, Sample};
use super::report::{fmt_num, ms, Cmp, Figure, Section};
use super::stats::median;
use super::{Mode, DESTINATIONS, HOST};
use crate::backend::Backend;
use crate::envoy::{Envoy, EnvoySpec};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// Requests in flight from the load generator.
const CONCURRENCY: usize = 16;
/// Envoy worker threads (Istio's sidecar default).
pub(super) const ENVOY_WORKERS: u32 = 2;
const FAST: Duration = Duration::from_millis(2);
const SLOW: Duration = Duration::from_millis(20);

/// Who balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Tideway,
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
    /// No filter, and the default route's cluster holds only the
    /// destinations the caller knows to be fast: perfect steering at no
    /// cost, the bound no steering filter can beat on the same machine.
    Oracle,
    /// The oracle's routing with the steering floor's filter: the probe
    /// filter making only the three host calls any steering filter needs
    /// (`cost::STEERING_FLOOR_OPS`). Perfect steering at the least a
    /// proxy-wasm filter in stock Envoy can cost.
    OracleAtFloor,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Tideway => "Tideway",
            Policy::RoundRobin => "ROUND_ROBIN",
            Policy::LeastRequest => "LEAST_REQUEST",
            Policy::Random => "RANDOM",
            Policy::RingHash => "RING_HASH",
            Policy::Maglev => "MAGLEV",
            Policy::Oracle => "ORACLE",
            Policy::OracleAtFloor => "ORACLE+FLOOR",
        }
    }
}

/// Tideway's `scheduler` section when it steers dynamically: the README's
/// defaults (weights 0.4/0.3/0.1/0.2, sharpness 4, τ 5 s), untuned, but for
/// a faster cross-worker merge. `--scheduler JSON` replaces it.
pub const DYNAMIC_SCHEDULER: &str = r#"{"tickMs":100}"#;
/// …and for an exact static split.
pub const STATIC_SCHEDULER: &str =
    r#"{"weights":{"latency":0,"load":0,"cost":0,"affinity":0},"tickMs":100}"#;

static SCHEDULER_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Use `scheduler` (a JSON object) instead of [`DYNAMIC_SCHEDULER`].
pub fn set_dynamic_scheduler(scheduler: String) {
    let _ = SCHEDULER_OVERRIDE.set(scheduler);
}

fn dynamic_scheduler() -> &'static str {
    SCHEDULER_OVERRIDE
        .get()
        .map_or(DYNAMIC_SCHEDULER, String::as_str)
}

/// A Tideway configuration over the three destinations.
pub fn tideway_config(weights: [f64; 3], scheduler: &str, affinity: bool) -> String {
    let affinity = if affinity {
        r#""affinity":{"source":"header","name":"x-user-id"},"#
    } else {
        ""
    };
    let dests: Vec<String> = DESTINATIONS
        .iter()
        .zip(weights)
        .map(|(n, w)| format!(r#"{{"name":"{n}","cluster":"cluster-{n}","weight":{w}}}"#))
        .collect();
    format!(
        r#"{{"services":[{{"name":"reviews","hosts":["{HOST}"],{affinity}"destinations":[{}]}}],"scheduler":{scheduler}}}"#,
        dests.join(",")
    )
}

/// The three loopback backends every steering benchmark runs against.
pub(super) struct Fleet {
    pub(super) backends: Vec<Backend>,
}

impl Fleet {
    /// The three backends, healthy and without delay; none queues, however
    /// many requests are in flight.
    pub(super) fn start() -> Result<Self> {
        let backends = DESTINATIONS
            .iter()
            .map(|n| Backend::start(n, false))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { backends })
    }

    /// Every backend healthy (200), with these delays.
    pub(super) fn reset(&self, delays: [Duration; 3]) {
        for (b, d) in self.backends.iter().zip(delays) {
            b.set_delay(d);
            b.set_status(200);
        }
    }

    fn dests(&self) -> Vec<(&str, u16)> {
        self.backends.iter().map(|b| (b.name(), b.port)).collect()
    }

    /// The Envoy for `policy`. Tideway: its filter with `config`, one route
    /// per destination. Envoy's balancers: no filter, everything falls to
    /// the `mesh-default` cluster holding the three backends (the oracle's:
    /// only those with the lowest delay now set).
    pub(super) fn spec(
        &self,
        policy: Policy,
        config: &str,
        weights: &[u32],
        outlier_detection: bool,
    ) -> EnvoySpec {
        let mut spec = EnvoySpec::new(config, &self.dests());
        spec.concurrency = ENVOY_WORKERS;
        if matches!(policy, Policy::Oracle | Policy::OracleAtFloor) {
            // The fastest destinations as they are set now, balanced as
            // Envoy balances best without a filter.
            let fastest = self.backends.iter().map(Backend::delay).min();
            let (kept, kept_weights): (Vec<_>, Vec<_>) = spec
                .destinations
                .iter()
                .cloned()
                .zip(weights.iter().copied().chain(std::iter::repeat(1)))
                .zip(&self.backends)
                .filter(|(_, b)| Some(b.delay()) == fastest)
                .map(|(kept, _)| kept)
                .unzip();
            spec.destinations = kept;
            spec.filter_config = None;
            spec.lb_policy = Policy::LeastRequest.name().to_string();
            spec.mesh_default_weights = kept_weights;
            if policy == Policy::OracleAtFloor {
                spec.filter_config = Some(super::cost::STEERING_FLOOR_OPS.to_string());
                spec.wasm = super::probe_wasm();
            }
        } else if policy != Policy::Tideway {
            spec.filter_config = None;
            spec.lb_policy = policy.name().to_string();
            spec.mesh_default_weights = weights.to_vec();
            if outlier_detection {
                spec.outlier_detection = Some(json!({}));
            }
            if matches!(policy, Policy::RingHash | Policy::Maglev) {
                spec.hash_header = Some("x-user-id".to_string());
            }
        }
        spec
    }

    fn load<'a>(
        &self,
        envoy: &Envoy,
        duration: Duration,
        total: Option<u64>,
        headers: Option<load::HeaderFn<'a>>,
    ) -> LoadSpec<'a> {
        LoadSpec {
            port: envoy.port,
            host: HOST,
            concurrency: CONCURRENCY,
            duration,
            total,
            backends: &DESTINATIONS,
            headers,
        }
    }
}

/// The steering benchmarks' names, for `--only`.
pub const PARTS: [&str; 4] = ["latency", "failure", "split", "affinity"];

/// Run the steering benchmarks (`only`: just one of [`PARTS`]).
pub fn run(mode: Mode, only: Option<&str>) -> Result<Vec<Section>> {
    let fleet = Fleet::start()?;
    let want = |part: &str| only.is_none_or(|o| o == part);
    let mut sections = Vec::new();
    if want("latency") {
        sections.push(latency(mode, &fleet, Scenario::Heterogeneous)?);
        sections.push(latency(mode, &fleet, Scenario::Slowdown)?);
    }
    if want("failure") {
        sections.push(failure(mode, &fleet)?);
    }
    if want("split") {
        sections.push(split(mode, &fleet)?);
    }
    if want("affinity") {
        sections.push(affinity(mode, &fleet)?);
    }
    Ok(sections)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// 2, 2, 20 ms from the start; the first second is not measured.
    Heterogeneous,
    /// 2, 2, 2 ms; east becomes 20 ms half-way; the second half is measured.
    Slowdown,
}

/// One round of one policy in a latency part: (p50, p99, p99.9 in ms, the slow
/// backend's share of requests, requests measured).
type LatencyRound = (f64, f64, f64, f64, usize);

fn latency(mode: Mode, fleet: &Fleet, scenario: Scenario) -> Result<Section> {
    let policies = [
        Policy::Tideway,
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::Random,
    ];
    let rounds = mode.pick(1, 3);
    let duration = Duration::from_secs(mode.pick(4, 10));
    let (title, delays, measure_from) = match scenario {
        Scenario::Heterogeneous => (
            "Heterogeneous latency (2, 2, 20 ms)",
            [FAST, FAST, SLOW],
            Duration::from_secs(1),
        ),
        Scenario::Slowdown => ("Slowdown mid-run (east 2 → 20 ms)", [FAST; 3], duration / 2),
    };
    let config = tideway_config([1.0; 3], dynamic_scheduler(), false);
    // [policy][round]
    let mut results: Vec<Vec<LatencyRound>> = vec![Vec::new(); policies.len()];
    for round in 0..rounds {
        for (i, &policy) in policies.iter().enumerate() {
            fleet.reset(delays);
            let envoy = Envoy::start(&fleet.spec(policy, &config, &[], false))?;
            let spec = fleet.load(&envoy, duration, None, None);
            let mut events: Vec<load::Event> = Vec::new();
            if scenario == Scenario::Slowdown {
                let east = &fleet.backends[0];
                events.push((measure_from, Box::new(move || east.set_delay(SLOW))));
            }
            let samples = load::run(&spec, events)?;
            load::check_some_ok(&samples, policy.name())?;
            let from = measure_from.as_micros() as u64;
            let measured: Vec<&Sample> = samples.iter().filter(|s| s.done_us >= from).collect();
            let (p50, p99, p999) = load::latency_percentiles(measured.iter().copied());
            let slow_share = measured
                .iter()
                .filter(|s| {
                    s.backend == 0 && scenario == Scenario::Slowdown
                        || s.backend == 2 && scenario == Scenario::Heterogeneous
                })
                .count() as f64
                / measured.len().max(1) as f64;
            eprintln!(
                "[{}] round {} {:<14} p50 {} p99 {} p99.9 {} ms, slow share {:.1}%, {} requests",
                match scenario {
                    Scenario::Heterogeneous => "hetero",
                    Scenario::Slowdown => "slowdown",
                },
                round + 1,
                policy.name(),
                ms(p50),
                ms(p99),
                ms(p999),
                slow_share * 100.0,
                measured.len()
            );
            results[i].push((p50, p99, p999, slow_share, measured.len()));
        }
    }
    fleet.reset([FAST; 3]);
    let ratio = |a: usize, b: usize, f: fn(&(f64, f64, f64, f64, usize)) -> f64| {
        median(
            &results[a]
                .iter()
                .zip(&results[b])
                .map(|(x, y)| f(x) / f(y))
                .collect::<Vec<_>>(),
        )
    };
    let command = format!(
        "tideway-bench load: {CONCURRENCY} keep-alive connections, closed loop, {} s per run, {rounds} round(s) alternating {}; envoy --concurrency {ENVOY_WORKERS}; measured: {}",
        duration.as_secs(),
        policies.map(Policy::name).join(" "),
        match scenario {
            Scenario::Heterogeneous => "after the first second".to_string(),
            Scenario::Slowdown => format!("from the slowdown at {} s to the end", measure_from.as_secs_f64()),
        }
    );
    let mut section = Section::new(
        title,
        vec![command.clone(), format!("Tideway config: {config}")],
        &[
            "Policy",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "slow backend's share",
            "p99 ÷ ROUND_ROBIN",
            "p99 ÷ LEAST_REQUEST",
            "rounds min–max: slow share",
            "rounds min–max: p99 ÷ ROUND_ROBIN",
        ],
    );
    // Every round counts, not only the median.
    let span = |values: Vec<f64>, fmt: &dyn Fn(f64) -> String| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{}–{}", fmt(min), fmt(max))
    };
    let mut raw = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let m = |f: fn(&(f64, f64, f64, f64, usize)) -> f64| {
            median(&results[i].iter().map(f).collect::<Vec<_>>())
        };
        section.rows.push(vec![
            p.name().to_string(),
            ms(m(|r| r.0)),
            ms(m(|r| r.1)),
            ms(m(|r| r.2)),
            format!("{:.1}%", m(|r| r.3) * 100.0),
            format!("{:.2}", ratio(i, 1, |r| r.1)),
            format!("{:.2}", ratio(i, 2, |r| r.1)),
            span(results[i].iter().map(|r| r.3 * 100.0).collect(), &|v| {
                format!("{v:.1}%")
            }),
            span(
                results[i]
                    .iter()
                    .zip(&results[1])
                    .map(|(x, y)| x.1 / y.1)
                    .collect(),
                &|v| format!("{v:.2}"),
            ),
        ]);
        raw.push(json!({"policy": p.name(), "rounds": results[i].iter().map(|r| json!({
            "p50_us": r.0, "p99_us": r.1, "p999_us": r.2, "slow_share": r.3, "requests": r.4})).collect::<Vec<_>>()}));
    }
    let short = match scenario {
        Scenario::Heterogeneous => "heterogeneous",
        Scenario::Slowdown => "slowdown",
    };
    section.figures.push(
        Figure::new(
            format!("{short}: Tideway p99 ÷ ROUND_ROBIN p99"),
            ratio(0, 1, |r| r.1),
            "×",
            &command,
        )
        .target(Cmp::AtMost, 0.5),
    );
    section.figures.push(
        Figure::new(
            format!("{short}: Tideway p99 ÷ LEAST_REQUEST p99"),
            ratio(0, 2, |r| r.1),
            "×",
            &command,
        )
        .target(Cmp::AtMost, 0.8),
    );
    section.notes.push(
        "Ratios are medians of the per-round ratios (each round runs every policy back to back)."
            .to_string(),
    );
    section.raw = json!(raw);
    Ok(section)
}

/// The failure bench's Tideway variant with active re-admission probes.
const PROBED: &str = "Tideway, probe configured (active re-admission)";

/// Failure of east (503) at `fail_at`, lasting to the end of the run.
fn failure(mode: Mode, fleet: &Fleet) -> Result<Section> {
    // Envoy's defaults cap ejection at max_ejection_percent 10%, which of
    // three hosts is none; the 100% variants show outlier detection at work.
    let all = json!({"max_ejection_percent": 100});
    let variants: [(Policy, Option<serde_json::Value>, &str); 5] = [
        (Policy::Tideway, None, "Tideway"),
        (Policy::Tideway, None, PROBED),
        (
            Policy::RoundRobin,
            Some(json!({})),
            "ROUND_ROBIN + outlier_detection {} (defaults)",
        ),
        (
            Policy::RoundRobin,
            Some(all.clone()),
            "ROUND_ROBIN + outlier_detection {max_ejection_percent: 100}",
        ),
        (
            Policy::LeastRequest,
            Some(all),
            "LEAST_REQUEST + outlier_detection {max_ejection_percent: 100}",
        ),
    ];
    let policies = variants.each_ref().map(|v| v.0);
    let rounds = mode.pick(1, 3);
    let fail_at = Duration::from_millis(mode.pick(1500, 2000));
    let duration = fail_at + Duration::from_secs(mode.pick(3, 6));
    let config = tideway_config([1.0; 3], dynamic_scheduler(), false);
    // The same, re-admitting by an out-of-band probe of the destination's
    // Envoy cluster (`dest-<name>` in the harness's Envoy) instead of a
    // client's request.
    let probed = config.replacen(
        r#""destinations""#,
        r#""probe":{"cluster":"dest-{destination}","path":"/"},"destinations""#,
        1,
    );
    // [policy][round] = (time to <1% in ms, success rate, share after 1 s, max later window share)
    let mut results: Vec<Vec<FailureRun>> = vec![Vec::new(); policies.len()];
    for round in 0..rounds {
        for (i, &policy) in policies.iter().enumerate() {
            fleet.reset([FAST; 3]);
            let variant_config = if variants[i].2 == PROBED {
                &probed
            } else {
                &config
            };
            let mut spec = fleet.spec(policy, variant_config, &[], false);
            spec.outlier_detection = variants[i].1.clone();
            let envoy = Envoy::start(&spec)?;
            let spec = fleet.load(&envoy, duration, None, None);
            let east = &fleet.backends[0];
            let samples = load::run(
                &spec,
                vec![(fail_at, Box::new(move || east.set_status(503)))],
            )?;
            fleet.reset([FAST; 3]);
            let r = failure_metrics(&samples, fail_at, duration);
            eprintln!(
                "[failure] round {} {:<60} <1% after {} ms, success {:.3}% ({} failed, {} in the first 100 ms), share after 1 s {:.2}%, max later 100 ms window {:.1}%",
                round + 1,
                variants[i].2,
                fmt_num(r.settle_ms),
                r.success * 100.0,
                r.failed,
                r.failed_first_100ms,
                r.share_after_1s * 100.0,
                r.max_window_share_after * 100.0
            );
            results[i].push(r);
        }
    }
    let command = format!(
        "tideway-bench load: {CONCURRENCY} connections, closed loop, {:.1} s per run, east answers 503 from {:.1} s to the end; {rounds} round(s) alternating {}; envoy --concurrency {ENVOY_WORKERS}",
        duration.as_secs_f64(),
        fail_at.as_secs_f64(),
        variants.each_ref().map(|v| v.2).join(", ")
    );
    let mut section = Section::new(
        "Hard failure of one destination",
        vec![
            command.clone(),
            format!("Tideway config: {config}"),
            format!("{PROBED} config: {probed}"),
        ],
        &[
            "Policy",
            "time to < 1% (ms)",
            "success rate during failure",
            "failed requests",
            "of which in the first 100 ms",
            "failed destination's share after 1 s",
            "max 100 ms window share after first < 1%",
        ],
    );
    let mut raw = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let m = |f: fn(&FailureRun) -> f64| median(&results[i].iter().map(f).collect::<Vec<_>>());
        let name = variants[i].2.to_string();
        section.rows.push(vec![
            name,
            fmt_num(m(|r| r.settle_ms)),
            format!("{:.3}%", m(|r| r.success) * 100.0),
            format!("{:.0}", m(|r| r.failed)),
            format!("{:.0}", m(|r| r.failed_first_100ms)),
            format!("{:.2}%", m(|r| r.share_after_1s) * 100.0),
            format!("{:.1}%", m(|r| r.max_window_share_after) * 100.0),
        ]);
        raw.push(json!({"policy": p.name(), "variant": variants[i].2, "outlier_detection": variants[i].1, "rounds": results[i].iter().map(|r| json!({
            "time_to_under_1pct_ms": r.settle_ms, "success_rate": r.success, "share_after_1s": r.share_after_1s, "max_window_share_after": r.max_window_share_after,
            "failed": r.failed, "failed_first_100ms": r.failed_first_100ms})).collect::<Vec<_>>()}));
    }
    let m =
        |i: usize, f: fn(&FailureRun) -> f64| median(&results[i].iter().map(f).collect::<Vec<_>>());
    // Both Tideway rows carry the targets.
    for (i, name) in [(0, "Tideway"), (1, PROBED)] {
        section.figures.push(
            Figure::new(
                format!("{name}: time until < 1% of traffic goes to the failed destination"),
                m(i, |r| r.settle_ms),
                "ms",
                &command,
            )
            .target(Cmp::AtMost, 1000.0),
        );
        section.figures.push(
            Figure::new(
                format!("{name}: success rate during the failure"),
                m(i, |r| r.success) * 100.0,
                "%",
                &command,
            )
            .target(Cmp::AtLeast, 99.95),
        );
    }
    for (i, v) in variants.iter().enumerate().skip(2) {
        section.figures.push(Figure::new(
            format!("{}: time until < 1%", v.2),
            m(i, |r| r.settle_ms),
            "ms",
            &command,
        ));
        section.figures.push(Figure::new(
            format!("{}: success rate", v.2),
            m(i, |r| r.success) * 100.0,
            "%",
            &command,
        ));
    }
    section.notes.push("Time to < 1%: from the failure until the first 100 ms window (sliding in 10 ms steps, by response completion time) in which under 1% of responses came from the failed destination. Success: 2xx among all responses completed after the failure began. The last column shows re-admission probes: Tideway re-admits an ejected destination after ejectBaseMs (1 s, doubling) by letting one client request through, or, with a probe configured, by an out-of-band health request that no client pays for; Envoy's outlier detection after base_ejection_time (30 s). Envoy's default max_ejection_percent (10%) permits no ejection among three hosts (its stats count ejections_overflow instead), hence the two ROUND_ROBIN rows.".to_string());
    section.raw = json!(raw);
    Ok(section)
}

/// What one hard-failure run measured.
#[derive(Debug, Clone, Copy)]
struct FailureRun {
    /// Time until < 1% of a 100 ms window went to the failed destination (ms).
    settle_ms: f64,
    /// 2xx among responses completed after the failure began.
    success: f64,
    /// The failed destination's share after the first second.
    share_after_1s: f64,
    /// The largest 100 ms window share after it first fell under 1%.
    max_window_share_after: f64,
    /// Failed responses after the failure began…
    failed: f64,
    /// …and how many of them within its first 100 ms.
    failed_first_100ms: f64,
}

fn failure_metrics(samples: &[Sample], fail_at: Duration, duration: Duration) -> FailureRun {
    let f = fail_at.as_micros() as u64;
    let end = duration.as_micros() as u64;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.done_us >= f).collect();
    let success = after.iter().filter(|s| s.ok()).count() as f64 / after.len().max(1) as f64;
    let window = 100_000u64;
    let share_in = |lo: u64, hi: u64| -> Option<f64> {
        let w: Vec<&&Sample> = after
            .iter()
            .filter(|s| s.done_us > lo && s.done_us <= hi)
            .collect();
        (!w.is_empty()).then(|| w.iter().filter(|s| s.backend == 0).count() as f64 / w.len() as f64)
    };
    let mut settled: Option<u64> = None;
    let mut max_after = 0.0f64;
    let mut t = f + window;
    while t <= end {
        if let Some(share) = share_in(t - window, t) {
            match settled {
                None if share < 0.01 => settled = Some(t),
                Some(_) => max_after = max_after.max(share),
                None => {}
            }
        }
        t += 10_000;
    }
    let after_1s = share_in(f + 1_000_000, u64::MAX).unwrap_or(f64::NAN);
    let time_ms = settled.map_or(f64::NAN, |t| (t - f) as f64 / 1000.0);
    let failed: Vec<&&Sample> = after.iter().filter(|s| !s.ok()).collect();
    FailureRun {
        settle_ms: time_ms,
        success,
        share_after_1s: after_1s,
        max_window_share_after: max_after,
        failed: failed.len() as f64,
        failed_first_100ms: failed.iter().filter(|s| s.done_us < f + window).count() as f64,
    }
}

fn split(mode: Mode, fleet: &Fleet) -> Result<Section> {
    let policies = [Policy::Tideway, Policy::RoundRobin, Policy::Random];
    let n: u64 = mode.pick(20_000, 100_000);
    let target = [70.0, 20.0, 10.0];
    let config = tideway_config(target, STATIC_SCHEDULER, false);
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut tideway_dev = f64::NAN;
    for &policy in &policies {
        fleet.reset([Duration::ZERO; 3]);
        let envoy = Envoy::start(&fleet.spec(policy, &config, &[70, 20, 10], false))?;
        let before: Vec<u64> = fleet.backends.iter().map(Backend::served).collect();
        let spec = fleet.load(&envoy, Duration::from_secs(300), Some(n), None);
        let samples = load::run(&spec, Vec::new())?;
        let served: Vec<u64> = fleet
            .backends
            .iter()
            .zip(&before)
            .map(|(b, s)| b.served() - s)
            .collect();
        let total: u64 = served.iter().sum();
        let shares: Vec<f64> = served
            .iter()
            .map(|s| *s as f64 / total.max(1) as f64 * 100.0)
            .collect();
        let dev = shares
            .iter()
            .zip(target)
            .map(|(s, t)| (s - t).abs())
            .fold(0.0, f64::max);
        let errors = samples.iter().filter(|s| !s.ok()).count();
        eprintln!(
            "[split] {:<14} {:?} → max deviation {dev:.3} pp ({errors} errors)",
            policy.name(),
            shares
        );
        if policy == Policy::Tideway {
            tideway_dev = dev;
        }
        rows.push(vec![
            policy.name().to_string(),
            total.to_string(),
            shares
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" / "),
            format!("{dev:.3}"),
        ]);
        raw.push(json!({"policy": policy.name(), "served": served, "shares_pct": shares, "max_deviation_pp": dev, "errors": errors}));
    }
    fleet.reset([FAST; 3]);
    // A weighted random choice of n requests has per-share standard
    // deviation sqrt(p(1-p)/n); for the 70% share:
    let sd = (0.7f64 * 0.3 / n as f64).sqrt() * 100.0;
    let command = format!(
        "tideway-bench load: {n} requests, {CONCURRENCY} connections, backends without delay; shares counted at the backends; envoy --concurrency {ENVOY_WORKERS}; Envoy baselines: mesh-default endpoints with load_balancing_weight 70/20/10"
    );
    Ok(Section {
        title: "Static split 70/20/10".to_string(),
        commands: vec![command.clone(), format!("Tideway config: {config}")],
        columns: vec!["Policy".into(), "requests".into(), "east / west / south %".into(), "max deviation (pp)".into()],
        rows,
        figures: vec![Figure::new("Tideway: largest deviation from 70/20/10", tideway_dev, "pp", &command).target(Cmp::AtMost, 0.1)],
        notes: vec![format!(
            "For reference: a per-request weighted random choice over {n} requests has a standard deviation of {sd:.3} pp on the 70% share, so 0.1 pp is within reach of a random picker only by luck; Envoy's weighted ROUND_ROBIN (EDF) is deterministic."
        )],
        raw: json!(raw),
    })
}

fn affinity(mode: Mode, fleet: &Fleet) -> Result<Section> {
    let policies = [Policy::Tideway, Policy::RingHash, Policy::Maglev];
    let keys: u64 = mode.pick(2_000, 10_000);
    fleet.reset([Duration::ZERO; 3]);
    let headers = |seq: u64| vec![("x-user-id".to_string(), format!("session-{}", seq % keys))];
    let route_all = |spec: &EnvoySpec| -> Result<HashMap<u64, u8>> {
        let envoy = Envoy::start(spec)?;
        let load = fleet.load(&envoy, Duration::from_secs(120), Some(keys), Some(&headers));
        let samples = load::run(&load, Vec::new())?;
        Ok(samples
            .iter()
            .filter(|s| s.ok())
            .map(|s| (s.seq % keys, s.backend))
            .collect())
    };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut figures = Vec::new();
    let ideal = (1.1 / 3.1 - 1.0 / 3.0) * 100.0;
    let command = format!(
        "tideway-bench load: {keys} session keys (x-user-id) routed once under weights 1/1/1 (Envoy: 10/10/10), again under the same weights, then under east ×1.1 (1.1/1/1; Envoy 11/10/10); a fresh Envoy each time; envoy --concurrency {ENVOY_WORKERS}"
    );
    for &policy in &policies {
        let (w0, w1): ([f64; 3], [f64; 3]) = ([1.0, 1.0, 1.0], [1.1, 1.0, 1.0]);
        let spec_for = |w: [f64; 3]| {
            let config = tideway_config(w, dynamic_scheduler(), true);
            let ints: Vec<u32> = w.iter().map(|x| (x * 10.0).round() as u32).collect();
            fleet.spec(policy, &config, &ints, false)
        };
        let before =
            route_all(&spec_for(w0)).with_context(|| format!("{}: first pass", policy.name()))?;
        let again = route_all(&spec_for(w0))?;
        let after = route_all(&spec_for(w1))?;
        let compare = |a: &HashMap<u64, u8>, b: &HashMap<u64, u8>| {
            let common: Vec<u64> = a.keys().filter(|k| b.contains_key(k)).copied().collect();
            let moved = common.iter().filter(|k| a[k] != b[k]).count();
            (
                moved as f64 / common.len().max(1) as f64 * 100.0,
                common.len(),
            )
        };
        let (unstable, _) = compare(&before, &again);
        let (moved, compared) = compare(&before, &after);
        let east_share = |m: &HashMap<u64, u8>| {
            m.values().filter(|b| **b == 0).count() as f64 / m.len().max(1) as f64 * 100.0
        };
        eprintln!(
            "[affinity] {:<10} moved {moved:.2}% of {compared} keys (unchanged config: {unstable:.2}%), east {:.1}% → {:.1}%",
            policy.name(),
            east_share(&before),
            east_share(&after)
        );
        rows.push(vec![
            policy.name().to_string(),
            format!("{moved:.2}%"),
            format!("{:.2}", moved / ideal),
            format!("{unstable:.2}%"),
            format!("{:.1}% → {:.1}%", east_share(&before), east_share(&after)),
        ]);
        raw.push(json!({"policy": policy.name(), "keys": compared, "moved_pct": moved, "unstable_pct": unstable,
            "east_share_before": east_share(&before), "east_share_after": east_share(&after)}));
        let f = Figure::new(
            format!("{}: sessions moved by a 10% weight change", policy.name()),
            moved,
            "%",
            &command,
        );
        figures.push(if policy == Policy::Tideway {
            f.target(Cmp::AtMost, 11.0)
        } else {
            f
        });
    }
    fleet.reset([FAST; 3]);
    Ok(Section {
        title: "Affinity under a weight change".to_string(),
        commands: vec![command],
        columns: vec!["Policy".into(), "sessions moved".into(), "÷ minimum possible".into(), "moved with no change".into(), "east's share".into()],
        rows,
        figures,
        notes: vec![format!(
            "The least any scheme can move is the change in east's share, {ideal:.2}% (1/3 → 1.1/3.1). Envoy: RING_HASH and MAGLEV with their default table sizes, route hash_policy on the x-user-id header."
        )],
        raw: json!(raw),
    })
}
