//! The steering scenarios on real Envoy, under the README's default
//! scheduler with no tuning at all (`"scheduler": {}`: weights 0.4 / 0.3 /
//! 0.1 / 0.2, sharpness 4, τ 5 s, the 200 ms tick), every round reported:
//!
//! - **slow matrix**: three destinations of 8 ms, the last one 3×, 6× or
//!   10× slower, at 8, 32 and 128 closed-loop connections; Tideway against
//!   `ROUND_ROBIN` and `LEAST_REQUEST` on the same backends. Per round: the
//!   slow destination's share, p99, throughput; the targets hold only if
//!   they hold in the worst round.
//! - **shift**: base weights 70/20/10, the 70% destination 10× slower for
//!   a while and then healthy again: how soon its traffic leaves, how much
//!   stays, how soon its share comes back (an idle destination must be
//!   re-measured, not forgotten).
//! - **equal**: 70/20/10, every destination healthy and equal: the split
//!   against the base weights, throughput against `LEAST_REQUEST` with the
//!   same endpoint weights.
//! - **canary**: latency and load weights 0, the 70% destination 10×
//!   slower: the split stays exactly the base weights.
//!
//! Why separate from [`super::steering`]'s latency part: that one keeps the
//! earlier benchmark's 2/2/20 ms scenario with a faster merge tick so runs
//! stay comparable with the figures already quoted; this one is the issue's
//! definition, untuned.

use super::load::{self, LoadSpec, Sample};
use super::machine;
use super::report::{fmt_num, ms, Cmp, Figure, Section};
use super::stats::median;
use super::steering::{tideway_config, Fleet, Policy, ENVOY_WORKERS};
use super::{Mode, DESTINATIONS, HOST};
use crate::envoy::Envoy;
use anyhow::Result;
use serde_json::json;
use std::cell::Cell;
use std::time::Duration;

/// The README's default scheduler, untuned.
const DEFAULT_SCHEDULER: &str = "{}";
/// A canary: only the base weights decide.
const CANARY_SCHEDULER: &str = r#"{"weights":{"latency":0,"load":0,"cost":0.1,"affinity":0.2}}"#;
const BASE: Duration = Duration::from_millis(8);
const FACTORS: [u32; 3] = [3, 6, 10];
const CONNECTIONS: [usize; 3] = [8, 32, 128];
/// The slow destination in the matrix (`south`).
const SLOW: usize = 2;
/// The matrix's policies, in the order its tables index them. The oracles
/// are the bounds: what perfect steering achieves on this machine at no
/// cost, and at the steering floor's (the three host calls any proxy-wasm
/// steering filter makes).
const COMPARED: [Policy; 5] = [
    Policy::Tideway,
    Policy::RoundRobin,
    Policy::LeastRequest,
    Policy::Oracle,
    Policy::OracleAtFloor,
];
const ORACLE: usize = 3;
const ORACLE_AT_FLOOR: usize = 4;

static CELLS: std::sync::OnceLock<Vec<(u32, usize)>> = std::sync::OnceLock::new();

/// Run only these (slow factor, connections) cells of the matrix, from
/// `--cells 3x128,10x8`.
pub fn set_cells(spec: &str) -> Result<()> {
    let cells = spec
        .split(',')
        .map(|cell| {
            let parsed = cell
                .trim()
                .split_once('x')
                .and_then(|(f, c)| Some((f.parse().ok()?, c.parse().ok()?)));
            parsed.ok_or_else(|| {
                anyhow::anyhow!("--cells: {cell:?} is not FACTORxCONNECTIONS (e.g. 3x128)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let _ = CELLS.set(cells);
    Ok(())
}

fn cells() -> Vec<(u32, usize)> {
    CELLS.get().cloned().unwrap_or_else(|| {
        FACTORS
            .iter()
            .flat_map(|&f| CONNECTIONS.iter().map(move |&c| (f, c)))
            .collect()
    })
}

/// Each destination's share of the responses after `from`, for the log
/// ("70.1/29.9/0.0").
fn split(samples: &[Sample], from: Duration) -> String {
    let from_us = from.as_micros() as u64;
    let mut counts = [0usize; DESTINATIONS.len()];
    for s in samples.iter().filter(|s| s.done_us >= from_us) {
        if let Some(c) = counts.get_mut(usize::from(s.backend)) {
            *c += 1;
        }
    }
    let all = counts.iter().sum::<usize>().max(1) as f64;
    counts
        .iter()
        .map(|c| format!("{:.1}", *c as f64 * 100.0 / all))
        .collect::<Vec<_>>()
        .join("/")
}

/// The slow destination's share and the p99 in each second of a run, for
/// the log (where a bad round's tail came from: the slow destination, or a
/// stretch of the run).
fn per_second(samples: &[Sample], duration: Duration) -> String {
    (0..duration.as_secs())
        .map(|s| {
            let (from, to) = (s * 1_000_000, (s + 1) * 1_000_000);
            let window: Vec<&Sample> = samples
                .iter()
                .filter(|x| (from..to).contains(&x.done_us))
                .collect();
            let slow = window
                .iter()
                .filter(|x| usize::from(x.backend) == SLOW)
                .count();
            let (_, p99, _) = load::latency_percentiles(window.iter().copied());
            format!(
                "{:.1}%/{}",
                slow as f64 * 100.0 / window.len().max(1) as f64,
                ms(p99)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The base weights of the shift, equal and canary scenarios.
const BASE_WEIGHTS: [f64; 3] = [70.0, 20.0, 10.0];
/// The same as Envoy endpoint weights.
const ENDPOINT_WEIGHTS: [u32; 3] = [70, 20, 10];

/// `" --quick"` in a quick run, for the commands the report prints.
fn quick_flag(mode: Mode) -> &'static str {
    if mode.quick {
        " --quick"
    } else {
        ""
    }
}

/// The scenarios' names, for `--only`.
pub const PARTS: [&str; 4] = ["matrix", "shift", "equal", "canary"];

/// Where the CPU went over a run, from its warm-up's end to its last
/// response: is the cell measuring steering, or a saturated machine?
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    /// Envoy's CPU time (all its threads, user + system) per response.
    envoy_us_per_request: f64,
    /// The benchmark process's own (the load client and the backends,
    /// which share the machine with Envoy) per response.
    harness_us_per_request: f64,
    /// The machine's idle share (both cores).
    machine_idle: f64,
}

/// One closed-loop run against a fresh Envoy for `policy`, with the CPU
/// it used after `warm_up`.
#[allow(clippy::too_many_arguments)]
fn run_once(
    fleet: &Fleet,
    policy: Policy,
    config: &str,
    weights: [u32; 3],
    connections: usize,
    duration: Duration,
    warm_up: Duration,
    events: Vec<load::Event<'_>>,
) -> Result<(Vec<Sample>, CpuUse)> {
    let envoy = Envoy::start(&fleet.spec(policy, config, &weights, false))?;
    let load = LoadSpec {
        port: envoy.port,
        host: HOST,
        concurrency: connections,
        duration,
        total: None,
        backends: &DESTINATIONS,
        headers: None,
    };
    let (pid, ticks) = (envoy.pid(), machine::clock_ticks_per_second());
    let cpu_now = || {
        (
            machine::cpu_seconds(pid, ticks),
            machine::cpu_seconds(std::process::id(), ticks),
            machine::cpu_ticks(),
        )
    };
    let at_warm_up = Cell::new(None);
    let mut events: Vec<load::Event<'_>> = events;
    events.push((warm_up, Box::new(|| at_warm_up.set(Some(cpu_now())))));
    let samples = load::run(&load, events)?;
    let (envoy_end, harness_end, machine_end) = cpu_now();
    load::check_some_ok(&samples, policy.name())?;
    let warm_up_us = warm_up.as_micros() as u64;
    let responses = samples.iter().filter(|s| s.done_us >= warm_up_us).count();
    let cpu = match at_warm_up.get() {
        Some((envoy_start, harness_start, machine_start)) => CpuUse {
            envoy_us_per_request: (envoy_end - envoy_start) * 1e6 / responses.max(1) as f64,
            harness_us_per_request: (harness_end - harness_start) * 1e6 / responses.max(1) as f64,
            machine_idle: match (machine_start, machine_end) {
                (Some((b0, i0)), Some((b1, i1))) => {
                    (i1 - i0) as f64 / ((b1 + i1) - (b0 + i0)).max(1) as f64
                }
                _ => f64::NAN,
            },
        },
        None => CpuUse {
            envoy_us_per_request: f64::NAN,
            harness_us_per_request: f64::NAN,
            machine_idle: f64::NAN,
        },
    };
    Ok((samples, cpu))
}

/// Run the scenarios (`only`: just one of [`PARTS`]).
pub fn run(mode: Mode, only: Option<&str>) -> Result<Vec<Section>> {
    let fleet = Fleet::start()?;
    let want = |part: &str| only.is_none_or(|o| o == part);
    let mut sections = Vec::new();
    if want("matrix") {
        sections.push(matrix(mode, &fleet)?);
    }
    if want("shift") {
        sections.push(shift(mode, &fleet)?);
    }
    if want("equal") {
        sections.push(equal(mode, &fleet)?);
    }
    if want("canary") {
        sections.push(canary(mode, &fleet)?);
    }
    Ok(sections)
}

/// What one run of one policy measured, after the warm-up.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Share of responses from [`SLOW`].
    slow_share: f64,
    p99_us: f64,
    /// Responses per second over the measured span.
    rps: f64,
    requests: usize,
    errors: usize,
}

fn measure(samples: &[Sample], from: Duration, to: Duration) -> Measured {
    let (from_us, to_us) = (from.as_micros() as u64, to.as_micros() as u64);
    let kept: Vec<&Sample> = samples
        .iter()
        .filter(|s| (from_us..to_us).contains(&s.done_us))
        .collect();
    let (_, p99_us, _) = load::latency_percentiles(kept.iter().copied());
    Measured {
        slow_share: kept
            .iter()
            .filter(|s| usize::from(s.backend) == SLOW)
            .count() as f64
            / kept.len().max(1) as f64,
        p99_us,
        rps: kept.len() as f64 / (to - from).as_secs_f64(),
        requests: kept.len(),
        errors: kept.iter().filter(|s| !s.ok()).count(),
    }
}

fn min_max(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

fn span(values: impl IntoIterator<Item = f64>, digits: usize) -> String {
    let (lo, hi) = min_max(values);
    format!("{lo:.digits$}–{hi:.digits$}")
}

/// The slow matrix: 3 factors × 3 connection counts × the compared
/// policies, alternating within each round.
fn matrix(mode: Mode, fleet: &Fleet) -> Result<Section> {
    let rounds = mode.pick(1, 3);
    let warm_up = Duration::from_secs(1);
    let duration = Duration::from_secs(mode.pick(3, 6));
    let config = tideway_config([1.0; 3], DEFAULT_SCHEDULER, false);
    let command = format!(
        "cargo xtask bench -- --only matrix{}: backends 8, 8, 8×k ms (k = 3, 6, 10; each an event loop on one thread, timed to the µs, no queueing), closed loop at 8, 32 and 128 keep-alive connections (one client thread), {} s per run measured after the first {} s, {rounds} round(s), each round alternating {} (ORACLE: no filter, LEAST_REQUEST over the two 8 ms backends only; ORACLE+FLOOR: the same with the probe filter making the steering floor's three host calls); a fresh Envoy per run, envoy --concurrency {ENVOY_WORKERS}",
        quick_flag(mode),
        duration.as_secs(),
        warm_up.as_secs(),
        COMPARED.map(Policy::name).join(" ")
    );
    let mut section = Section::new(
        "Slow destination matrix, default scheduler",
        vec![command.clone(), format!("Tideway config: {config}")],
        &[
            "slower, connections",
            "Tideway slow share % (rounds min–max)",
            "Tideway p99 ms",
            "p99 ÷ ROUND_ROBIN (ORACLE / ORACLE+FLOOR)",
            "p99 ÷ LEAST_REQUEST (ORACLE / ORACLE+FLOOR)",
            "req/s ÷ LEAST_REQUEST (ORACLE / ORACLE+FLOOR)",
            "ROUND_ROBIN p99 ms",
            "LEAST_REQUEST p99 ms / slow share %",
            "Envoy CPU µs/request, Tideway / LEAST_REQUEST / ORACLE / ORACLE+FLOOR",
            "client + backends CPU µs/request",
            "machine idle %, Tideway / ROUND_ROBIN / LEAST_REQUEST / ORACLE / ORACLE+FLOOR",
        ],
    );
    let mut raw = Vec::new();
    for cell in cells() {
        let (results, cpus) = run_cell(fleet, &config, cell, rounds, duration, warm_up)?;
        raw.push(report_cell(&mut section, &command, cell, &results, &cpus));
    }
    fleet.reset([BASE; 3]);
    section.notes.push(
        "Every figure is the worst round's: a target holds only if it held in every round. The ratios pair each Tideway run with the baseline run of the same round.".to_string(),
    );
    section.notes.push(
        "CPU, after the warm-up: Envoy's utime + stime (all its threads, /proc/<pid>/stat) ÷ the responses; the same for the benchmark's own process (the load client and the three backends, all policies' runs); the machine's idle share (/proc/stat, both cores, which Envoy, the client and the backends share). ORACLE is the bound on steering here: no filter, and only the two 8 ms destinations. ORACLE+FLOOR is the bound on a proxy-wasm steering filter: the same routing with the probe filter making only the three host calls steering needs (read the request headers, write the routing header, read :status). Where ORACLE+FLOOR's best round misses a target, no steering filter in this Envoy can meet it on this machine.".to_string(),
    );
    section.raw = json!(raw);
    Ok(section)
}

/// A figure per compared policy and round: `[policy][round]`.
type ByPolicy<T> = Vec<Vec<T>>;

/// Each round runs every compared policy once on one cell.
fn run_cell(
    fleet: &Fleet,
    config: &str,
    (factor, connections): (u32, usize),
    rounds: usize,
    duration: Duration,
    warm_up: Duration,
) -> Result<(ByPolicy<Measured>, ByPolicy<CpuUse>)> {
    // [policy][round]
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); COMPARED.len()];
    let mut cpus: Vec<Vec<CpuUse>> = vec![Vec::new(); COMPARED.len()];
    for round in 0..rounds {
        for (i, &policy) in COMPARED.iter().enumerate() {
            fleet.reset([BASE, BASE, BASE * factor]);
            let (samples, cpu) = run_once(
                fleet,
                policy,
                config,
                [1; 3],
                connections,
                duration,
                warm_up,
                Vec::new(),
            )?;
            let m = measure(&samples, warm_up, duration);
            eprintln!(
                "[matrix] {factor}x slower, {connections:>3} conns, round {} {:<14} slow share {:.2}% (split {}), p99 {} ms, {:.0} req/s, {} errors, Envoy CPU {:.0} µs/request, client + backends {:.0} µs/request, machine idle {:.1}%; per second, slow share/p99 ms: {}",
                round + 1,
                policy.name(),
                m.slow_share * 100.0,
                split(&samples, warm_up),
                ms(m.p99_us),
                m.rps,
                m.errors,
                cpu.envoy_us_per_request,
                cpu.harness_us_per_request,
                cpu.machine_idle * 100.0,
                per_second(&samples, duration)
            );
            results[i].push(m);
            cpus[i].push(cpu);
        }
    }
    Ok((results, cpus))
}

/// Adds one cell's row and figures to `section`; returns its raw rounds.
fn report_cell(
    section: &mut Section,
    command: &str,
    (factor, connections): (u32, usize),
    results: &[Vec<Measured>],
    cpus: &[Vec<CpuUse>],
) -> serde_json::Value {
    // `of` against `base`, round by round (each pair ran in the
    // same round).
    let ratios = |of: usize, base: usize, f: &dyn Fn(&Measured, &Measured) -> f64| {
        results[of]
            .iter()
            .zip(&results[base])
            .map(|(o, b)| f(o, b))
            .collect::<Vec<f64>>()
    };
    let p99 = |o: &Measured, b: &Measured| o.p99_us / b.p99_us;
    let rps = |o: &Measured, b: &Measured| o.rps / b.rps;
    let p99_rr = ratios(0, 1, &p99);
    let p99_lr = ratios(0, 2, &p99);
    let rps_lr = ratios(0, 2, &rps);
    // Tideway's span, then the two oracles' in parentheses.
    let with_oracles = |base: usize, f: &dyn Fn(&Measured, &Measured) -> f64, digits| {
        format!(
            "{} ({} / {})",
            span(ratios(0, base, f), digits),
            span(ratios(ORACLE, base, f), digits),
            span(ratios(ORACLE_AT_FLOOR, base, f), digits)
        )
    };
    let shares: Vec<f64> = results[0].iter().map(|m| m.slow_share * 100.0).collect();
    let cell = format!("{factor}×, {connections}");
    section.rows.push(vec![
        cell.clone(),
        span(shares.iter().copied(), 2),
        span(results[0].iter().map(|m| m.p99_us / 1000.0), 1),
        with_oracles(1, &p99, 3),
        with_oracles(2, &p99, 3),
        with_oracles(2, &rps, 2),
        span(results[1].iter().map(|m| m.p99_us / 1000.0), 1),
        format!(
            "{} / {}",
            span(results[2].iter().map(|m| m.p99_us / 1000.0), 1),
            span(results[2].iter().map(|m| m.slow_share * 100.0), 1)
        ),
        [0, 2, ORACLE, ORACLE_AT_FLOOR]
            .map(|i| span(cpus[i].iter().map(|c| c.envoy_us_per_request), 0))
            .join(" / "),
        span(cpus.iter().flatten().map(|c| c.harness_us_per_request), 0),
        cpus.iter()
            .map(|cs| span(cs.iter().map(|c| c.machine_idle * 100.0), 0))
            .collect::<Vec<_>>()
            .join(" / "),
    ]);
    let worst_share = min_max(shares.iter().copied()).1;
    let worst_rr = min_max(p99_rr.iter().copied()).1;
    let worst_lr = min_max(p99_lr.iter().copied()).1;
    let worst_rps = min_max(rps_lr.iter().copied()).0;
    section.figures.push(
        Figure::new(
            format!("{cell}: Tideway slow share, worst round"),
            worst_share,
            "%",
            command,
        )
        .target(Cmp::AtMost, 0.5),
    );
    section.figures.push(
        Figure::new(
            format!("{cell}: Tideway p99 ÷ ROUND_ROBIN, worst round"),
            worst_rr,
            "×",
            command,
        )
        .target(Cmp::AtMost, 0.5),
    );
    section.figures.push(
        Figure::new(
            format!("{cell}: Tideway p99 ÷ LEAST_REQUEST, worst round"),
            worst_lr,
            "×",
            command,
        )
        .target(Cmp::AtMost, 0.8),
    );
    section.figures.push(
        Figure::new(
            format!("{cell}: Tideway req/s ÷ LEAST_REQUEST, worst round"),
            worst_rps,
            "×",
            command,
        )
        .target(Cmp::AtLeast, 1.0),
    );
    // The bounds, without a target: where an oracle misses a target
    // in its own best round, no steering of its cost can meet it here.
    for oracle in [ORACLE, ORACLE_AT_FLOOR] {
        let name = COMPARED[oracle].name();
        section.figures.push(Figure::new(
            format!("{cell}: {name} p99 ÷ ROUND_ROBIN, best round"),
            min_max(ratios(oracle, 1, &p99)).0,
            "×",
            command,
        ));
        section.figures.push(Figure::new(
            format!("{cell}: {name} req/s ÷ LEAST_REQUEST, best round"),
            min_max(ratios(oracle, 2, &rps)).1,
            "×",
            command,
        ));
    }
    json!({
        "factor": factor,
        "connections": connections,
        "policies": COMPARED.iter().zip(results.iter().zip(cpus)).map(|(p, (rs, cs))| json!({
            "policy": p.name(),
            "rounds": rs.iter().zip(cs).map(|(m, c)| json!({
                "slow_share": m.slow_share, "p99_us": m.p99_us, "rps": m.rps,
                "requests": m.requests, "errors": m.errors,
                "envoy_cpu_us_per_request": c.envoy_us_per_request,
                "harness_cpu_us_per_request": c.harness_us_per_request,
                "machine_idle": c.machine_idle,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Share of responses from destination 0 among those completed in
/// `[from, to)` µs; `None` when none completed.
fn share_of_first(samples: &[Sample], from: u64, to: u64) -> Option<f64> {
    let mut all = 0usize;
    let mut first = 0usize;
    for s in samples.iter().filter(|s| (from..to).contains(&s.done_us)) {
        all += 1;
        first += usize::from(s.backend == 0);
    }
    (all > 0).then(|| first as f64 / all as f64)
}

/// What one run of the shift scenario measured.
#[derive(Debug, Clone, Copy)]
struct ShiftRun {
    before: f64,
    /// From the slowdown until every later 250 ms window of the slow span
    /// sends it at most 2%.
    left_ms: f64,
    /// Its share from 1 s after the slowdown to the recovery.
    slowed_share: f64,
    /// The largest 250 ms window share in that span.
    worst_window: f64,
    /// From the recovery until a 500 ms window gives it ≥ 65% again.
    back_ms: f64,
    /// Its share over the last 2 s.
    end_share: f64,
}

fn shift(mode: Mode, fleet: &Fleet) -> Result<Section> {
    let rounds = mode.pick(1, 3);
    let connections = 32;
    let slow_at = Duration::from_secs(4);
    let recover_at = Duration::from_secs(mode.pick(8, 10));
    let duration = recover_at + Duration::from_secs(8);
    let config = tideway_config(BASE_WEIGHTS, DEFAULT_SCHEDULER, false);
    let command = format!(
        "cargo xtask bench -- --only shift{}: base weights 70/20/10, every backend 8 ms; the 70% one (east) 80 ms from {} s to {} s; {connections} connections, closed loop, {} s per run, {rounds} round(s); envoy --concurrency {ENVOY_WORKERS}",
        quick_flag(mode),
        slow_at.as_secs(),
        recover_at.as_secs(),
        duration.as_secs()
    );
    let mut runs = Vec::new();
    for round in 0..rounds {
        fleet.reset([BASE; 3]);
        let east = &fleet.backends[0];
        let events: Vec<load::Event<'_>> = vec![
            (slow_at, Box::new(move || east.set_delay(BASE * 10))),
            (recover_at, Box::new(move || east.set_delay(BASE))),
        ];
        let (samples, _) = run_once(
            fleet,
            Policy::Tideway,
            &config,
            ENDPOINT_WEIGHTS,
            connections,
            duration,
            Duration::ZERO,
            events,
        )?;
        let us = |d: Duration| d.as_micros() as u64;
        let (slow, recover, end) = (us(slow_at), us(recover_at), us(duration));
        let windows = |from: u64, to: u64, width: u64| -> Vec<(u64, f64)> {
            (from..to.saturating_sub(width))
                .step_by(50_000)
                .filter_map(|t| share_of_first(&samples, t, t + width).map(|s| (t, s)))
                .collect()
        };
        let slowed = windows(slow, recover, 250_000);
        let left_ms = slowed
            .iter()
            .rposition(|(_, s)| *s > 0.02)
            .map_or(Some(0.0), |i| {
                slowed
                    .get(i + 1)
                    .map(|(t, _)| (t + 250_000 - slow) as f64 / 1000.0)
            })
            .unwrap_or(f64::NAN);
        let worst_window = slowed
            .iter()
            .filter(|(t, _)| *t >= slow + 1_000_000)
            .map(|(_, s)| *s)
            .fold(0.0, f64::max);
        let back_ms = windows(recover, end, 500_000)
            .iter()
            .find(|(_, s)| *s >= 0.65)
            .map_or(f64::NAN, |(t, _)| (t + 500_000 - recover) as f64 / 1000.0);
        let r = ShiftRun {
            before: share_of_first(&samples, 1_000_000, slow).unwrap_or(f64::NAN),
            left_ms,
            slowed_share: share_of_first(&samples, slow + 1_000_000, recover).unwrap_or(f64::NAN),
            worst_window,
            back_ms,
            end_share: share_of_first(&samples, end - 2_000_000, end).unwrap_or(f64::NAN),
        };
        eprintln!(
            "[shift] round {}: east {:.1}% before, ≤ 2% in every 250 ms window from {} ms after the slowdown, {:.2}% from 1 s after it (worst 250 ms window {:.1}%), ≥ 65% again {} ms after recovery, {:.1}% over the last 2 s",
            round + 1,
            r.before * 100.0,
            fmt_num(r.left_ms),
            r.slowed_share * 100.0,
            r.worst_window * 100.0,
            fmt_num(r.back_ms),
            r.end_share * 100.0
        );
        runs.push(r);
    }
    fleet.reset([BASE; 3]);
    let mut section = Section::new(
        "Base weights 70/20/10, the 70% destination 10× slower and back",
        vec![command.clone(), format!("Tideway config: {config}")],
        &[
            "round",
            "its share before",
            "≤ 2% in every later 250 ms window after (ms)",
            "its share from 1 s after the slowdown",
            "worst 250 ms window then",
            "≥ 65% in a 500 ms window after recovery (ms)",
            "its share, last 2 s",
        ],
    );
    for (i, r) in runs.iter().enumerate() {
        section.rows.push(vec![
            (i + 1).to_string(),
            format!("{:.1}%", r.before * 100.0),
            fmt_num(r.left_ms),
            format!("{:.2}%", r.slowed_share * 100.0),
            format!("{:.1}%", r.worst_window * 100.0),
            fmt_num(r.back_ms),
            format!("{:.1}%", r.end_share * 100.0),
        ]);
    }
    let worst = |f: fn(&ShiftRun) -> f64| {
        runs.iter().map(f).fold(f64::NEG_INFINITY, |a, b| {
            if b.is_nan() {
                f64::INFINITY
            } else {
                a.max(b)
            }
        })
    };
    section.figures.push(
        Figure::new(
            "shift: its share from 1 s after the slowdown, worst round",
            worst(|r| r.slowed_share) * 100.0,
            "%",
            &command,
        )
        .target(Cmp::AtMost, 2.0),
    );
    section.figures.push(
        Figure::new(
            "shift: time until its share is back (≥ 65%), worst round",
            worst(|r| r.back_ms),
            "ms",
            &command,
        )
        .target(Cmp::AtMost, 5000.0),
    );
    section.raw = json!(runs
        .iter()
        .map(|r| json!({
            "before": r.before, "left_ms": r.left_ms, "slowed_share": r.slowed_share,
            "worst_window": r.worst_window, "back_ms": r.back_ms, "end_share": r.end_share,
        }))
        .collect::<Vec<_>>());
    Ok(section)
}

/// Shares of each destination among the successful requests issued in
/// `[from, to)`, in %. By issue time, not completion: every request issued
/// before the load stops completes, so no slow request is cut off at the
/// span's edge.
fn split_of(samples: &[Sample], from: Duration, to: Duration) -> [f64; 3] {
    let (from, to) = (from.as_micros() as u64, to.as_micros() as u64);
    let issued = |s: &Sample| s.done_us.saturating_sub(u64::from(s.latency_us));
    let mut counts = [0usize; 3];
    for s in samples
        .iter()
        .filter(|s| s.ok() && (from..to).contains(&issued(s)))
    {
        if let Some(c) = counts.get_mut(usize::from(s.backend)) {
            *c += 1;
        }
    }
    let total = counts.iter().sum::<usize>().max(1) as f64;
    counts.map(|c| c as f64 / total * 100.0)
}

fn deviation(split: [f64; 3], target: [f64; 3]) -> f64 {
    split
        .iter()
        .zip(target)
        .map(|(s, t)| (s - t).abs())
        .fold(0.0, f64::max)
}

fn equal(mode: Mode, fleet: &Fleet) -> Result<Section> {
    let rounds = mode.pick(1, 3);
    let connections = 32;
    let warm_up = Duration::from_secs(1);
    let duration = Duration::from_secs(mode.pick(3, 6));
    let target = BASE_WEIGHTS;
    let config = tideway_config(target, DEFAULT_SCHEDULER, false);
    let command = format!(
        "cargo xtask bench -- --only equal{}: base weights 70/20/10 (LEAST_REQUEST: endpoint weights 70/20/10), every backend 8 ms; {connections} connections, closed loop, {} s per run measured after the first {} s, {rounds} round(s) alternating Tideway LEAST_REQUEST; envoy --concurrency {ENVOY_WORKERS}",
        quick_flag(mode),
        duration.as_secs(),
        warm_up.as_secs()
    );
    let mut rows = Vec::new();
    let mut devs = Vec::new();
    let mut rps_ratios = Vec::new();
    let mut raw = Vec::new();
    for round in 0..rounds {
        fleet.reset([BASE; 3]);
        let (t, _) = run_once(
            fleet,
            Policy::Tideway,
            &config,
            ENDPOINT_WEIGHTS,
            connections,
            duration,
            warm_up,
            Vec::new(),
        )?;
        let (l, _) = run_once(
            fleet,
            Policy::LeastRequest,
            &config,
            ENDPOINT_WEIGHTS,
            connections,
            duration,
            warm_up,
            Vec::new(),
        )?;
        let (ts, ls) = (
            split_of(&t, warm_up, duration),
            split_of(&l, warm_up, duration),
        );
        let (tm, lm) = (
            measure(&t, warm_up, duration),
            measure(&l, warm_up, duration),
        );
        let dev = deviation(ts, target);
        let ratio = tm.rps / lm.rps;
        eprintln!(
            "[equal] round {}: Tideway {:.1}/{:.1}/{:.1}% (max deviation {dev:.2} pp) {:.0} req/s; LEAST_REQUEST {:.1}/{:.1}/{:.1}% {:.0} req/s; ratio {ratio:.3}",
            round + 1,
            ts[0], ts[1], ts[2], tm.rps, ls[0], ls[1], ls[2], lm.rps
        );
        rows.push(vec![
            (round + 1).to_string(),
            format!("{:.2} / {:.2} / {:.2}", ts[0], ts[1], ts[2]),
            format!("{dev:.2}"),
            format!("{:.1} / {:.1} / {:.1}", ls[0], ls[1], ls[2]),
            format!("{:.0} / {:.0}", tm.rps, lm.rps),
            format!("{ratio:.3}"),
        ]);
        raw.push(json!({"tideway_split": ts, "least_request_split": ls, "tideway_rps": tm.rps, "least_request_rps": lm.rps}));
        devs.push(dev);
        rps_ratios.push(ratio);
    }
    fleet.reset([BASE; 3]);
    Ok(Section {
        title: "All destinations equal and healthy, base weights 70/20/10".to_string(),
        commands: vec![command.clone(), format!("Tideway config: {config}")],
        columns: [
            "round",
            "Tideway east / west / south %",
            "max deviation (pp)",
            "LEAST_REQUEST split %",
            "req/s Tideway / LEAST_REQUEST",
            "req/s ratio",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        figures: vec![
            Figure::new(
                "equal: Tideway's deviation from 70/20/10, worst round",
                min_max(devs).1,
                "pp",
                &command,
            )
            .target(Cmp::AtMost, 2.0),
            Figure::new(
                "equal: Tideway req/s ÷ LEAST_REQUEST, worst round",
                min_max(rps_ratios.iter().copied()).0,
                "×",
                &command,
            )
            .target(Cmp::AtLeast, 0.95),
            Figure::new(
                "equal: Tideway req/s ÷ LEAST_REQUEST, median",
                median(&rps_ratios),
                "×",
                &command,
            ),
        ],
        notes: Vec::new(),
        raw: json!(raw),
    })
}

fn canary(mode: Mode, fleet: &Fleet) -> Result<Section> {
    let connections = 32;
    let warm_up = Duration::from_secs(1);
    let duration = Duration::from_secs(mode.pick(4, 8));
    let target = BASE_WEIGHTS;
    let config = tideway_config(target, CANARY_SCHEDULER, false);
    let command = format!(
        "cargo xtask bench -- --only canary{}: base weights 70/20/10, east (70%) 80 ms, the others 8 ms; latency and load weights 0; {connections} connections, {} s measured after the first {} s; envoy --concurrency {ENVOY_WORKERS}",
        quick_flag(mode),
        duration.as_secs(),
        warm_up.as_secs()
    );
    fleet.reset([BASE * 10, BASE, BASE]);
    let (samples, _) = run_once(
        fleet,
        Policy::Tideway,
        &config,
        ENDPOINT_WEIGHTS,
        connections,
        duration,
        warm_up,
        Vec::new(),
    )?;
    fleet.reset([BASE; 3]);
    let split = split_of(&samples, warm_up, duration);
    let measured = measure(&samples, warm_up, duration);
    let dev = deviation(split, target);
    eprintln!(
        "[canary] {:.2}/{:.2}/{:.2}% of {} requests (max deviation {dev:.3} pp)",
        split[0], split[1], split[2], measured.requests
    );
    Ok(Section {
        title: "Canary: latency and load weights 0, the 70% destination 10× slower".to_string(),
        commands: vec![command.clone(), format!("Tideway config: {config}")],
        columns: ["requests", "east / west / south %", "max deviation (pp)"].map(String::from).to_vec(),
        rows: vec![vec![
            measured.requests.to_string(),
            format!("{:.3} / {:.3} / {:.3}", split[0], split[1], split[2]),
            format!("{dev:.3}"),
        ]],
        figures: vec![Figure::new("canary: deviation from 70/20/10", dev, "pp", &command).target(Cmp::AtMost, 0.1)],
        notes: vec!["Requests are counted by when they were issued (every one issued completes), so a slow request is not cut off at the span's edges.".to_string()],
        raw: json!({"split_pct": split, "requests": measured.requests}),
    })
}
