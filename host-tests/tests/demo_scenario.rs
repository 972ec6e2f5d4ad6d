//! The demo (`cargo xtask demo`) in a shortened scenario, end to end: three
//! clusters, a real registry (push, pull by digest), `tideway render`,
//! Envoy 1.40 running the pulled module, paced load — and what the demo
//! claims, checked on the recorded samples:
//!
//! - the failed cluster's share falls below 1% within 1 s (503s and
//!   connection resets), and success stays ≥ 99.9% through the failure;
//! - the drained cluster's share below 1% within 1 s of `tideway drain`
//!   (when the weights server is there; otherwise the demo reports the gap);
//! - sticky sessions stay on their cluster unless theirs fails, and then
//!   stick to the one they moved to;
//! - Tideway's p99 in the slow phase is below both Envoy policies' (with
//!   the margins its test explains), and no traffic swings back to the
//!   slow cluster;
//! - the HTML report, opened in headless Chromium, draws the charts with
//!   this run's numbers.
//!
//! One run serves both tests (they would otherwise compete for the CPU the
//! latency comparison measures).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use tideway_host_tests::demo::load::{LoadSpec, ANONYMOUS};
use tideway_host_tests::demo::report::{self, phase_samples, phase_stats};
use tideway_host_tests::demo::{self, Action, DemoConfig, Outcome, Phase, Policy, Run};

struct Shared {
    outcome: Outcome,
    dir: PathBuf,
}

fn phase(name: &str, action: Action, ms: u64) -> Phase {
    Phase {
        name: name.to_string(),
        action,
        duration: Duration::from_millis(ms),
    }
}

fn shared() -> &'static Shared {
    static RUN: OnceLock<Shared> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tideway_host_tests::env::workspace_root().join("target/tideway/demo-test");
        let tideway_phases = vec![
            phase("steady", Action::Steady, 2000),
            phase(
                "hangzhou 10x slower",
                Action::Slow {
                    cluster: 0,
                    factor: 10,
                },
                5000,
            ),
            phase("shanghai 503s", Action::Fail503 { cluster: 1 }, 5000),
            phase("shanghai resets", Action::Reset { cluster: 1 }, 4000),
            phase("drain hangzhou", Action::Drain { cluster: 0 }, 2500),
            phase("recovery", Action::Recover, 1500),
        ];
        // The Envoy policies only need the phases compared with them here.
        let baseline_phases = tideway_phases[..2].to_vec();
        let load = LoadSpec {
            anonymous_rps: 800.0,
            anonymous_workers: 24,
            users: 20,
            user_rps: 0.5,
        };
        let mut config = DemoConfig::new(dir.clone(), tideway_phases, load).expect("demo config");
        config.baseline_phases = Some(baseline_phases);
        // A run on a machine that stalled is run again, up to `ATTEMPTS`
        // times; the checks judge the first quiet run, or else the least
        // stalled one (see `StallProbe`). Every run writes the same files
        // under `dir` (the module it pulls is the same build), so the last
        // run's files stand for a kept earlier one.
        let mut kept: Option<(f64, Outcome)> = None;
        for attempt in 1..=ATTEMPTS {
            let _ = std::fs::remove_dir_all(&dir);
            let probe = StallProbe::start();
            let outcome = demo::run(&config).unwrap_or_else(|e| panic!("the demo failed: {e:#}"));
            let stalls = probe.stop();
            eprintln!(
                "demo attempt {attempt}: the machine stalled {:.1}% of the run (a 1 ms sleep woke over {} ms late)",
                stalls * 100.0,
                StallProbe::LATE.as_millis()
            );
            if kept.as_ref().is_none_or(|(least, _)| stalls < *least) {
                kept = Some((stalls, outcome));
            }
            if stalls <= StallProbe::MAX_STALLED {
                break;
            }
        }
        let Some((_, outcome)) = kept else {
            unreachable!("ATTEMPTS ≥ 1");
        };
        eprintln!("{}", report::table(&outcome));
        std::fs::write(dir.join("report.html"), report::html(&outcome)).expect("report.html");
        Shared { outcome, dir }
    })
}

/// Runs of the demo on a machine that stalled, at most.
const ATTEMPTS: u32 = 3;

/// How much of a run the machine itself was stalled: a thread sleeping
/// 1 ms at a time, counting the wall time of the sleeps that woke more
/// than [`StallProbe::LATE`] late. It sees the CPU the demo's processes
/// compete for (a neighbour on the host, other work on the machine), not
/// anything the filter decides.
///
/// Why: the claims compared here are wall-clock latencies on two cores.
/// One CI run had every policy's p99 at 38–48 ms in the steady phase
/// (6–9 ms on a quiet machine); there success in the 503 phase was 99.83%
/// and Tideway's mean 0.80× ROUND_ROBIN's, both on their bounds, with
/// the routing what it should be (the slowed cluster at 0.0–0.7% a
/// second). Such a run says nothing about the filter, so it is run again;
/// a filter that is wrong fails every attempt.
struct StallProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Duration, Duration)>,
}

impl StallProbe {
    /// A sleep this much later than asked counts as a stall.
    const LATE: Duration = Duration::from_millis(10);
    /// The share of the run stalled above which it is run again.
    const MAX_STALLED: f64 = 0.05;

    fn start() -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut stalled, begin) = (Duration::ZERO, std::time::Instant::now());
            while !flag.load(Ordering::Relaxed) {
                let t = std::time::Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                let slept = t.elapsed();
                if slept > Duration::from_millis(1) + Self::LATE {
                    stalled += slept;
                }
            }
            (stalled, begin.elapsed())
        });
        Self { stop, thread }
    }

    /// The share of the time since `start` spent in stalls.
    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.join() {
            Ok((stalled, all)) => stalled.as_secs_f64() / all.as_secs_f64().max(1e-9),
            Err(_) => 0.0,
        }
    }
}

fn run_of(outcome: &Outcome, policy: Policy) -> &Run {
    outcome
        .runs
        .iter()
        .find(|r| r.policy == policy)
        .unwrap_or_else(|| panic!("no {} run", policy.label()))
}

fn phase_index(run: &Run, f: impl Fn(&Action) -> bool) -> Option<usize> {
    run.phases.iter().position(|p| f(&p.action))
}

#[test]
fn the_scenario_shows_failover_drain_affinity_and_latency_as_claimed() {
    let Shared { outcome, .. } = shared();
    let clusters = outcome.clusters.len();

    // The published artifact is what ran.
    let built = std::fs::read(tideway_host_tests::env::filter_wasm()).expect("built filter");
    let pulled = std::fs::read(&outcome.artifact.pulled_module).expect("pulled module");
    assert!(
        built == pulled,
        "the pulled module differs from the pushed one"
    );
    assert_eq!(
        outcome.artifact.wasm_plugin_url,
        format!("oci://{}", outcome.artifact.reference)
    );

    // The report links to the dashboard the demo served while it ran.
    let dashboard = outcome
        .dashboard
        .as_deref()
        .expect("the demo serves the dashboard");
    assert!(dashboard.ends_with("/ui/"), "{dashboard}");
    assert!(
        report::html(outcome).contains(&format!("<a id=dashboard href=\"{dashboard}\">")),
        "the report links to the dashboard"
    );

    let tideway = run_of(outcome, Policy::Tideway);
    let stats = phase_stats(tideway, clusters);

    // Failover: below 1% within 1 s, in both failure modes.
    let failure: Vec<usize> = (0..tideway.phases.len())
        .filter(|&i| tideway.phases[i].action.is_failure())
        .collect();
    assert_eq!(failure.len(), 2, "a 503 phase and a reset phase");
    // The bounds users expect of failover. On a 2-core machine that is compiling something
    // else at the same time, a stall of the load generator or of one Envoy
    // worker can cost a few requests a machine running only this test
    // never loses (7 of 6,900 in one such run); `cargo test` runs one test
    // binary at a time, and this binary's other tests wait for this run.
    check_failover(tideway, &stats, &failure, 1000, 0.999);

    // Drain, when the weights server is wired; otherwise a reported gap.
    check_drain(outcome, tideway, &stats, 1000);
    // Sticky sessions: stay home unless home fails (or is drained); a
    // session that had to leave sticks to the one cluster it moved to
    // (after the first second), and may return home once it is re-admitted.
    let homes = report::homes(tideway);
    assert!(homes.len() >= 15, "too few sessions: {homes:?}");
    let failed = 1u8;
    let first_failure_ms = tideway.phases[failure[0]].start_ms;
    let mut moved_to: BTreeMap<u16, BTreeSet<u8>> = BTreeMap::new();
    for &i in &failure {
        for s in phase_samples(tideway, i) {
            if s.user != ANONYMOUS
                && s.ok()
                && s.at_ms >= first_failure_ms + 1000
                && homes.get(&s.user) == Some(&failed)
            {
                moved_to.entry(s.user).or_default().insert(s.cluster);
            }
        }
    }
    for (user, clusters) in &moved_to {
        assert!(
            clusters.len() == 1,
            "user-{user}, homed on the failed cluster, moved to {clusters:?}, not to one cluster"
        );
    }
    // Where a session belongs in a phase: home, and for one homed on the
    // failed cluster, from the failure on, also where it moved.
    let allowed_for = |user: u16, phase_start_ms: u32| -> BTreeSet<u8> {
        let home = homes[&user];
        let mut allowed = BTreeSet::from([home]);
        if home == failed && phase_start_ms >= first_failure_ms {
            allowed.extend(moved_to.get(&user).into_iter().flatten());
        }
        allowed
    };
    for (i, p) in tideway.phases.iter().enumerate() {
        let avoided = p.action.avoided_cluster().map(|c| c as u8);
        // Sessions sent away in the phase before come back once the filter
        // learns of it (the weights API's answer, a re-admission): their
        // first second is not judged.
        let returning = i
            .checked_sub(1)
            .and_then(|j| tideway.phases[j].action.avoided_cluster())
            .map(|c| c as u8);
        let mut served: BTreeMap<u16, BTreeSet<u8>> = BTreeMap::new();
        for s in phase_samples(tideway, i) {
            if s.user == ANONYMOUS || !s.ok() {
                continue;
            }
            let allowed = allowed_for(s.user, p.start_ms);
            if returning.is_some_and(|r| allowed.contains(&r)) && s.at_ms < p.start_ms + 1000 {
                continue;
            }
            served.entry(s.user).or_default().insert(s.cluster);
        }
        for (user, served) in served {
            let allowed = allowed_for(user, p.start_ms);
            // Where this session belongs is being avoided: it must move.
            if avoided.is_some_and(|a| allowed.contains(&a)) {
                continue;
            }
            assert!(
                served.is_subset(&allowed),
                "phase {}: user-{user} (allowed {allowed:?}) was served by {served:?}",
                p.name
            );
        }
    }
}

/// The failed cluster's share below 1% within `within_ms` of each failure
/// phase's start, and success at least `min_success` through them.
fn check_failover(
    tideway: &Run,
    stats: &[report::PhaseStats],
    failure: &[usize],
    within_ms: u32,
    min_success: f64,
) {
    for &i in failure {
        let s = &stats[i];
        match s.shift_ms {
            Some(Some(ms)) if ms <= within_ms => {}
            other => panic!(
                "{}: the failed cluster's share did not stay below 1% within {within_ms} ms ({other:?}); share {:?}",
                s.phase, s.share
            ),
        }
    }
    let (ok, all) = report::success_over(tideway, failure);
    let success = ok as f64 / all.max(1) as f64;
    assert!(all > 3000, "too few requests in the failure phases: {all}");
    let failures: Vec<String> = failure
        .iter()
        .flat_map(|&i| {
            let start = tideway.phases[i].start_ms;
            phase_samples(tideway, i)
                .iter()
                .filter(|s| !s.ok())
                .map(move |s| format!("+{}ms:{}@{}", s.at_ms - start, s.status, s.cluster))
        })
        .collect();
    assert!(
        success >= min_success,
        "success during the failure phases {:.3}% ({} of {all} failed), below {:.1}%; failures (offset in phase: status@cluster): {failures:?}",
        success * 100.0,
        all - ok,
        min_success * 100.0
    );
}

/// The drained cluster's share below 1% within `within_ms` of `tideway drain`.
fn check_drain(outcome: &Outcome, tideway: &Run, stats: &[report::PhaseStats], within_ms: u32) {
    // Drain, when the weights server is wired; otherwise a reported gap.
    let drain = phase_index(tideway, |a| matches!(a, Action::Drain { .. }));
    match drain {
        Some(i) => match stats[i].shift_ms {
            Some(Some(ms)) if ms <= within_ms => {}
            other => panic!(
                "the drained cluster's share did not fall below 1% within {within_ms} ms of `tideway drain` ({other:?}); share {:?}",
                stats[i].share
            ),
        },
        None => assert!(
            outcome.gaps.iter().any(|g| g.contains("drain")),
            "no drain phase and no gap reported: {:?}",
            outcome.gaps
        ),
    }
}

/// The p99 of `latencies_us` in ms (0 for none), sorting them in place.
fn p99_ms(latencies_us: &mut [u32]) -> f64 {
    latencies_us.sort_unstable();
    let at = (latencies_us.len() as f64 * 0.99).ceil() as usize;
    latencies_us
        .get(
            at.saturating_sub(1)
                .min(latencies_us.len().saturating_sub(1)),
        )
        .map_or(0.0, |us| f64::from(*us) / 1000.0)
}

/// What the slow-phase test compares, for one run's slow phase.
struct SlowPhase {
    /// Mean latency over the whole phase, ms (printed, not asserted).
    mean_ms: f64,
    /// The whole phase's p99, ms (printed, not asserted: see the test).
    whole_p99_ms: f64,
    /// The p99 of each second after the phase's first, ms.
    second_p99s_ms: Vec<f64>,
    /// The slow cluster's share of each second after the first.
    second_shares: Vec<f64>,
    /// The slow cluster's largest share of a 500 ms window (stepped by
    /// 250 ms) after the first second.
    worst_window_share: f64,
    /// The slow cluster's share of the phase's first second.
    first_second_share: f64,
}

impl SlowPhase {
    fn of(run: &Run, slow: usize) -> SlowPhase {
        let i = phase_index(run, |a| matches!(a, Action::Slow { .. })).expect("a slow phase");
        let p = &run.phases[i];
        let samples = phase_samples(run, i);
        let in_window = |from: u32, ms: u32| {
            samples
                .iter()
                .filter(move |s| (from..from + ms).contains(&s.at_ms))
        };
        let slow_share = |from: u32, ms: u32| {
            let (hit, all) = in_window(from, ms).fold((0usize, 0usize), |(h, a), s| {
                (h + usize::from(usize::from(s.cluster) == slow), a + 1)
            });
            hit as f64 / all.max(1) as f64
        };
        let seconds: Vec<u32> = (p.start_ms + 1000..p.end_ms.saturating_sub(999))
            .step_by(1000)
            .collect();
        SlowPhase {
            mean_ms: samples.iter().map(|s| f64::from(s.latency_us)).sum::<f64>()
                / samples.len().max(1) as f64
                / 1000.0,
            whole_p99_ms: p99_ms(&mut samples.iter().map(|s| s.latency_us).collect::<Vec<_>>()),
            second_p99s_ms: seconds
                .iter()
                .map(|&from| {
                    p99_ms(
                        &mut in_window(from, 1000)
                            .map(|s| s.latency_us)
                            .collect::<Vec<_>>(),
                    )
                })
                .collect(),
            second_shares: seconds.iter().map(|&from| slow_share(from, 1000)).collect(),
            first_second_share: slow_share(p.start_ms, 1000),
            worst_window_share: (p.start_ms + 1000..p.end_ms.saturating_sub(500))
                .step_by(250)
                .map(|from| slow_share(from, 500))
                .fold(0.0, f64::max),
        }
    }

    /// The p99 of a typical second: the lower median of the per-second
    /// p99s, which one stalled second cannot move.
    fn typical_second_p99_ms(&self) -> f64 {
        let mut p99s = self.second_p99s_ms.clone();
        p99s.sort_by(f64::total_cmp);
        p99s.get(p99s.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0)
    }
}

impl std::fmt::Display for SlowPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f64], scale: f64| {
            v.iter()
                .map(|x| format!("{:.1}", x * scale))
                .collect::<Vec<_>>()
                .join(" ")
        };
        write!(
            f,
            "mean {:.2} ms, whole p99 {:.1} ms, p99 per second after the first [{}] ms (typical {:.1}), slow share in the first second {:.1}%, per second after it [{}] %, worst 500 ms window {:.1}%",
            self.mean_ms,
            self.whole_p99_ms,
            list(&self.second_p99s_ms, 1.0),
            self.typical_second_p99_ms(),
            self.first_second_share * 100.0,
            list(&self.second_shares, 100.0),
            self.worst_window_share * 100.0
        )
    }
}

/// The slow phase: Tideway leaves the slow cluster, Envoy's balancers cannot
/// (round robin) or only partly (least request).
///
/// Until the scorer believed a rise only once a second request saw it
/// (`filter/src/ewma.rs`), one late answer from a fast cluster on the
/// loaded machine put it above the slow one, and about half the traffic
/// went back to the slow cluster for about a second (the swing-back).
/// What is asserted, with margins a correct scorer clears on a loaded
/// machine and the swing-back does not:
/// - the slowed cluster gets at most 20% of the phase's first second (it
///   had 80–96% of the steady phase, LEAST_REQUEST keeps about 20% on it;
///   Tideway's first second held 3.8–8% in quiet runs, about 9% in a CI
///   run whose machine stalled throughout);
/// - after that second no 500 ms window sends it more than 5% of the
///   requests (its sessions and re-measurements are 0.1–0.7% a second; the
///   swing-back was about half);
/// - a typical second's p99 after the first (the lower median of the
///   per-second p99s) is at most 0.8× each Envoy policy's (about 10.5 ms
///   against 25.5 in runs on a quiet machine).
///
/// Why these statistics, not the p99 of the phase's samples pooled, nor its
/// mean: at 800 requests a second, one stall of this 2-core machine (the
/// load generator or an Envoy worker descheduled for ~100 ms) delays about
/// 2% of a 4-second sample, and the pooled p99 is then the stall's,
/// whatever the policy; that failed this test in about one run in three
/// when it pooled a 2 s sample. A stall moves one second's p99, not the
/// median second's. A machine that is slow throughout adds its delay to
/// every policy's latencies and squeezes their ratios: in one CI run the
/// mean was 0.80× ROUND_ROBIN's with the routing right, so the reaction is
/// judged on the routing (the first second's share), which the noise does
/// not move, and a run the machine stalled through is run again
/// (`StallProbe`). The means and the pooled p99 (the figure the demo's
/// table shows) are printed.
#[test]
fn tideway_p99_in_the_slow_phase_is_below_both_envoy_policies() {
    let Shared { outcome, .. } = shared();
    let tideway = run_of(outcome, Policy::Tideway);
    let i = phase_index(tideway, |a| matches!(a, Action::Slow { .. })).expect("a slow phase");
    let Action::Slow { cluster: slow, .. } = tideway.phases[i].action else {
        unreachable!("a slow phase");
    };
    let ours = SlowPhase::of(tideway, slow);
    eprintln!("slow phase, tideway: {ours}");
    let baselines: Vec<(Policy, SlowPhase)> = [Policy::RoundRobin, Policy::LeastRequest]
        .into_iter()
        .map(|policy| (policy, SlowPhase::of(run_of(outcome, policy), slow)))
        .collect();
    for (policy, b) in &baselines {
        eprintln!("slow phase, {}: {b}", policy.label());
    }
    assert!(
        ours.first_second_share <= 0.20,
        "slow phase: the slowed cluster kept {:.1}% of the phase's first second ({ours})",
        ours.first_second_share * 100.0
    );
    assert!(
        ours.worst_window_share <= 0.05,
        "slow phase: {:.1}% of a 500 ms window after the first second went back to the slow cluster ({ours})",
        ours.worst_window_share * 100.0
    );
    for (policy, b) in baselines {
        assert!(
            ours.typical_second_p99_ms() <= 0.8 * b.typical_second_p99_ms(),
            "slow phase, a typical second's p99 after the first: tideway {:.1} ms is not below 0.8 × {}'s {:.1} ms (tideway: {ours}; {}: {b})",
            ours.typical_second_p99_ms(),
            policy.label(),
            b.typical_second_p99_ms(),
            policy.label()
        );
    }
}

fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser"] {
        if Command::new(bin).arg("--version").output().is_ok() {
            return bin;
        }
    }
    panic!("chromium is not installed (Debian package chromium; `cargo xtask setup` installs it)");
}

/// `attr="value"` of every element starting with `tag` in `dom`.
fn attributes<'a>(dom: &'a str, tag: &str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    dom.match_indices(tag)
        .filter_map(|(i, _)| {
            let element = &dom[i..dom[i..].find('>').map_or(dom.len(), |e| i + e)];
            let at = element.find(&needle)? + needle.len();
            let end = element[at..].find('"')? + at;
            Some(&element[at..end])
        })
        .collect()
}

#[test]
fn the_html_report_renders_this_runs_charts_in_headless_chromium() {
    let Shared { outcome, dir } = shared();
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, report::html(outcome)).expect("writing the report");
    let bin = chromium();
    let url = format!("file://{}", html_path.display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ];
    let out = Command::new(bin)
        .args(common)
        .args(["--virtual-time-budget=3000", "--dump-dom", &url])
        .output()
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let clusters = outcome.clusters.len();
    let series_count: usize = outcome.runs.len() * (clusters + 1);
    assert_eq!(
        attributes(&dom, "<body", "data-charts-rendered"),
        vec![series_count.to_string().as_str()],
        "the page's script did not lay out every chart"
    );
    let lengths = attributes(&dom, "<polyline", "data-rendered-length");
    assert_eq!(lengths.len(), series_count);
    for l in &lengths {
        let l: f64 = l.parse().expect("a length");
        assert!(l > 100.0, "a series was drawn {l} px long");
    }
    // The drawn values are this run's: every series, in order.
    let values = attributes(&dom, "<polyline", "data-values");
    let points = attributes(&dom, "<polyline", "data-rendered-points");
    let mut expected_values = Vec::new();
    let mut expected_points = Vec::new();
    for run in &outcome.runs {
        let windows = report::series(run, clusters);
        for c in 0..clusters {
            let v: Vec<String> = windows
                .iter()
                .map(|w| format!("{:.1}", w.share[c] * 100.0))
                .collect();
            expected_values.push(v.join(","));
            expected_points.push(windows.len().to_string());
        }
        let v: Vec<String> = windows.iter().map(|w| format!("{:.1}", w.p99_ms)).collect();
        expected_values.push(v.join(","));
        expected_points.push(windows.len().to_string());
    }
    assert_eq!(
        values, expected_values,
        "the charts' data is not this run's"
    );
    assert_eq!(points, expected_points);
    // Phase boundaries are marked on every chart.
    let marks = attributes(&dom, "<line class=\"phase\"", "data-phase");
    let expected_marks: usize = outcome.runs.iter().map(|r| 2 * r.phases.len()).sum();
    assert_eq!(marks.len(), expected_marks);
    // Each phase's table row carries the run's p99.
    let tideway = run_of(outcome, Policy::Tideway);
    let rows = attributes(&dom, "<tr data-phase", "data-p99-ms");
    for (i, s) in phase_stats(tideway, clusters).iter().enumerate() {
        assert_eq!(rows[i], format!("{:.1}", s.p99_ms), "row of {}", s.phase);
    }

    // A screenshot, to look at.
    let png = dir.join("report.png");
    let shot = Command::new(bin)
        .args(common)
        .args([
            "--window-size=1000,2400",
            "--virtual-time-budget=3000",
            &format!("--screenshot={}", png.display()),
            &url,
        ])
        .output()
        .expect("running chromium --screenshot");
    assert!(
        shot.status.success() && png.exists(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
}
