//! The demo's numbers: per phase and policy (share per cluster, p50/p99,
//! success, time to shift away, sessions kept), over time (share and p99
//! per window), as a terminal table and one self-contained HTML file with
//! inline SVG charts.
//!
//! Every number is computed from the recorded samples; the HTML carries
//! them in `data-*` attributes too, so a browser test can check that the
//! charts drawn are this run's.

use super::cluster::ClusterSpec;
use super::load::{Sample, ANONYMOUS, NO_CLUSTER};
use super::{Action, Outcome, Run};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Resolution of "time to shift away": the avoided cluster's share is
/// measured in windows this long.
pub const SHIFT_WINDOW_MS: u32 = 250;
/// "Away" means below this share.
pub const SHIFT_THRESHOLD: f64 = 0.01;
/// The charts' time step.
pub const CHART_WINDOW_MS: u32 = 500;

/// One phase of one run, summarised.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    pub phase: String,
    pub action: Action,
    pub requests: usize,
    /// Fraction of requests served (or tried) by each cluster.
    pub share: Vec<f64>,
    /// Fraction no cluster could be named for.
    pub unattributed: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Fraction answered 200.
    pub success: f64,
    /// For a phase with a cluster to leave: ms from the phase's start
    /// until its share stays below 1% (`None`: it never did).
    pub shift_ms: Option<Option<u32>>,
    /// Users whose every successful request in the phase went to their
    /// home cluster (where their first request of the run went), of the
    /// users with a successful request in it.
    pub sessions_kept: (usize, usize),
}

/// The samples of `run` inside phase `i`.
pub fn phase_samples(run: &Run, i: usize) -> &[Sample] {
    let Some(w) = run.phases.get(i) else {
        return &[];
    };
    let from = run.samples.partition_point(|s| s.at_ms < w.start_ms);
    let to = run.samples.partition_point(|s| s.at_ms < w.end_ms);
    &run.samples[from..to]
}

/// Each user's home: the cluster of its first successful request.
pub fn homes(run: &Run) -> BTreeMap<u16, u8> {
    let mut homes = BTreeMap::new();
    for s in &run.samples {
        if s.user != ANONYMOUS && s.ok() && s.cluster != NO_CLUSTER {
            homes.entry(s.user).or_insert(s.cluster);
        }
    }
    homes
}

/// Each user's clusters (successful requests) in phase `i`.
pub fn user_clusters(run: &Run, i: usize) -> BTreeMap<u16, BTreeSet<u8>> {
    let mut out: BTreeMap<u16, BTreeSet<u8>> = BTreeMap::new();
    for s in phase_samples(run, i) {
        if s.user != ANONYMOUS && s.ok() {
            out.entry(s.user).or_default().insert(s.cluster);
        }
    }
    out
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// Whether a sample counts against the cluster to leave: served or tried
/// there, or a failure no cluster can be named for (counted against it,
/// never in its favour).
fn hits(s: &Sample, avoided: usize) -> bool {
    usize::from(s.cluster) == avoided || (s.cluster == NO_CLUSTER && !s.ok())
}

/// ms from the phase's start after which every window has the avoided
/// cluster below [`SHIFT_THRESHOLD`].
pub fn shift_ms(samples: &[Sample], start_ms: u32, end_ms: u32, avoided: usize) -> Option<u32> {
    let windows = (end_ms.saturating_sub(start_ms)).div_ceil(SHIFT_WINDOW_MS) as usize;
    let mut total = vec![0usize; windows];
    let mut on = vec![0usize; windows];
    for s in samples {
        let w = ((s.at_ms.saturating_sub(start_ms)) / SHIFT_WINDOW_MS) as usize;
        if w < windows {
            total[w] += 1;
            if hits(s, avoided) {
                on[w] += 1;
            }
        }
    }
    let above = |w: usize| total[w] > 0 && on[w] as f64 / total[w] as f64 >= SHIFT_THRESHOLD;
    match (0..windows).rev().find(|&w| above(w)) {
        None => Some(0),
        // Still above in the phase's last window: it never shifted.
        Some(w) if w + 1 == windows => None,
        Some(w) => Some((w as u32 + 1) * SHIFT_WINDOW_MS),
    }
}

/// Summaries of every phase of `run`.
pub fn phase_stats(run: &Run, clusters: usize) -> Vec<PhaseStats> {
    let homes = homes(run);
    run.phases
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let samples = phase_samples(run, i);
            let n = samples.len().max(1) as f64;
            let mut share = vec![0.0; clusters];
            let mut unattributed = 0.0;
            for s in samples {
                match share.get_mut(usize::from(s.cluster)) {
                    Some(c) => *c += 1.0 / n,
                    None => unattributed += 1.0 / n,
                }
            }
            let mut latencies: Vec<u32> = samples.iter().map(|s| s.latency_us).collect();
            latencies.sort_unstable();
            let ok = samples.iter().filter(|s| s.ok()).count();
            let users = user_clusters(run, i);
            let kept = users
                .iter()
                .filter(|(u, cs)| {
                    homes
                        .get(u)
                        .is_some_and(|h| cs.len() == 1 && cs.contains(h))
                })
                .count();
            PhaseStats {
                phase: w.name.clone(),
                action: w.action.clone(),
                requests: samples.len(),
                share,
                unattributed,
                p50_ms: percentile(&latencies, 0.50),
                p99_ms: percentile(&latencies, 0.99),
                success: ok as f64 / n,
                shift_ms: w
                    .action
                    .avoided_cluster()
                    .map(|c| shift_ms(samples, w.start_ms, w.end_ms, c)),
                sessions_kept: (kept, users.len()),
            }
        })
        .collect()
}

/// Success over several phases together (e.g. both failure phases).
pub fn success_over(run: &Run, phases: &[usize]) -> (usize, usize) {
    phases.iter().fold((0, 0), |(ok, all), &i| {
        let s = phase_samples(run, i);
        (ok + s.iter().filter(|s| s.ok()).count(), all + s.len())
    })
}

/// One chart point: a window of the run.
#[derive(Debug, Clone)]
pub struct Window {
    pub start_ms: u32,
    pub share: Vec<f64>,
    pub p99_ms: f64,
    pub requests: usize,
}

/// The run in [`CHART_WINDOW_MS`] windows.
pub fn series(run: &Run, clusters: usize) -> Vec<Window> {
    let end = run.phases.last().map_or(0, |p| p.end_ms);
    let count = end.div_ceil(CHART_WINDOW_MS) as usize;
    let mut buckets: Vec<Vec<&Sample>> = vec![Vec::new(); count];
    for s in &run.samples {
        if let Some(b) = buckets.get_mut((s.at_ms / CHART_WINDOW_MS) as usize) {
            b.push(s);
        }
    }
    buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let n = b.len().max(1) as f64;
            let mut share = vec![0.0; clusters];
            for s in b {
                if let Some(c) = share.get_mut(usize::from(s.cluster)) {
                    *c += 1.0 / n;
                }
            }
            let mut l: Vec<u32> = b.iter().map(|s| s.latency_us).collect();
            l.sort_unstable();
            Window {
                start_ms: i as u32 * CHART_WINDOW_MS,
                share,
                p99_ms: percentile(&l, 0.99),
                requests: b.len(),
            }
        })
        .collect()
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn shift_text(s: &PhaseStats) -> String {
    match s.shift_ms {
        None => "-".to_string(),
        Some(None) => "never".to_string(),
        Some(Some(ms)) => format!("{:.2} s", f64::from(ms) / 1000.0),
    }
}

/// A few lines after a run, for the terminal's progress.
pub fn progress_lines(run: &Run, clusters: &[ClusterSpec]) -> Vec<String> {
    phase_stats(run, clusters.len())
        .iter()
        .map(|s| {
            let share: Vec<String> = clusters
                .iter()
                .zip(&s.share)
                .map(|(c, x)| format!("{} {}", c.name, pct(*x)))
                .collect();
            format!(
                "  {:<22} {}  p99 {:.1} ms  ok {:.2}%",
                s.phase,
                share.join("  "),
                s.p99_ms,
                s.success * 100.0
            )
        })
        .collect()
}

/// The terminal table: every phase of every policy.
pub fn table(outcome: &Outcome) -> String {
    let names: Vec<&str> = outcome.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut out = String::new();
    let _ = write!(out, "{:<20} {:<20}", "policy", "phase");
    for n in &names {
        let _ = write!(out, " {n:>9}");
    }
    let _ = writeln!(
        out,
        " {:>8} {:>8} {:>9} {:>7} {:>9}",
        "p50 ms", "p99 ms", "success", "shift", "sessions"
    );
    for run in &outcome.runs {
        for s in phase_stats(run, names.len()) {
            let _ = write!(out, "{:<20} {:<20}", run.policy.label(), s.phase);
            for x in &s.share {
                let _ = write!(out, " {:>9}", pct(*x));
            }
            let _ = writeln!(
                out,
                " {:>8.1} {:>8.1} {:>8.2}% {:>7} {:>9}",
                s.p50_ms,
                s.p99_ms,
                s.success * 100.0,
                shift_text(&s),
                format!("{}/{}", s.sessions_kept.0, s.sessions_kept.1)
            );
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];
const W: f64 = 900.0;
const H: f64 = 200.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 26.0;

fn x_of(ms: u32, end_ms: u32) -> f64 {
    LEFT + (W - LEFT - RIGHT) * f64::from(ms) / f64::from(end_ms.max(1))
}

/// The phase boundaries and names over a chart.
fn phase_marks(svg: &mut String, run: &Run, end_ms: u32) {
    for p in &run.phases {
        let x = x_of(p.start_ms, end_ms);
        let _ = write!(
            svg,
            r##"<line class="phase" data-phase="{}" data-start-ms="{}" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#444">{}</text>"##,
            esc(&p.name),
            p.start_ms,
            H - BOTTOM,
            x + 3.0,
            TOP - 8.0,
            esc(&p.name)
        );
    }
}

fn x_axis(svg: &mut String, end_ms: u32) {
    let step = if end_ms > 60_000 { 10_000 } else { 5_000 };
    let mut t = 0;
    while t <= end_ms {
        let x = x_of(t, end_ms);
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#666">{} s</text>"##,
            H - 8.0,
            t / 1000
        );
        t += step;
    }
}

fn share_chart(run: &Run, windows: &[Window], clusters: &[ClusterSpec]) -> String {
    let end_ms = run.phases.last().map_or(1, |p| p.end_ms);
    let y = |f: f64| TOP + (H - TOP - BOTTOM) * (1.0 - f);
    let mut svg = format!(
        r##"<svg class="chart share" data-policy="{}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" role="img"><title>Traffic share per cluster, {}</title>"##,
        run.policy.id(),
        esc(run.policy.label())
    );
    for f in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#666">{:.0}%</text>"##,
            W - RIGHT,
            y(f),
            y(f),
            LEFT - 4.0,
            y(f) + 3.0,
            f * 100.0
        );
    }
    phase_marks(&mut svg, run, end_ms);
    for (c, spec) in clusters.iter().enumerate() {
        let points: Vec<String> = windows
            .iter()
            .map(|w| {
                format!(
                    "{:.1},{:.1}",
                    x_of(w.start_ms + CHART_WINDOW_MS / 2, end_ms),
                    y(w.share[c])
                )
            })
            .collect();
        let values: Vec<String> = windows
            .iter()
            .map(|w| format!("{:.1}", w.share[c] * 100.0))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline data-series="{}" data-values="{}" points="{}" fill="none" stroke="{}" stroke-width="2"/>"##,
            esc(&spec.name),
            values.join(","),
            points.join(" "),
            COLOURS[c % COLOURS.len()]
        );
    }
    x_axis(&mut svg, end_ms);
    svg.push_str("</svg>");
    svg
}

/// p99 on a log scale from 1 ms to `max_ms` (shared by every policy so
/// the charts compare).
fn p99_chart(run: &Run, windows: &[Window], max_ms: f64) -> String {
    let end_ms = run.phases.last().map_or(1, |p| p.end_ms);
    let top = max_ms.max(10.0).log10();
    let y = |ms: f64| TOP + (H - TOP - BOTTOM) * (1.0 - ms.max(1.0).log10() / top);
    let mut svg = format!(
        r##"<svg class="chart p99" data-policy="{}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" role="img"><title>p99 latency, {}</title>"##,
        run.policy.id(),
        esc(run.policy.label())
    );
    for tick in [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    ] {
        if tick > max_ms.max(10.0) {
            break;
        }
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#666">{tick} ms</text>"##,
            W - RIGHT,
            y(tick),
            y(tick),
            LEFT - 4.0,
            y(tick) + 3.0
        );
    }
    phase_marks(&mut svg, run, end_ms);
    let points: Vec<String> = windows
        .iter()
        .map(|w| {
            format!(
                "{:.1},{:.1}",
                x_of(w.start_ms + CHART_WINDOW_MS / 2, end_ms),
                y(w.p99_ms)
            )
        })
        .collect();
    let values: Vec<String> = windows.iter().map(|w| format!("{:.1}", w.p99_ms)).collect();
    let _ = write!(
        svg,
        r##"<polyline data-series="p99" data-values="{}" points="{}" fill="none" stroke="#d62728" stroke-width="2"/>"##,
        values.join(","),
        points.join(" ")
    );
    x_axis(&mut svg, end_ms);
    svg.push_str("</svg>");
    svg
}

/// The HTML report: one file, no external resources.
pub fn html(outcome: &Outcome) -> String {
    let clusters = &outcome.clusters;
    let all: Vec<(&Run, Vec<Window>, Vec<PhaseStats>)> = outcome
        .runs
        .iter()
        .map(|r| (r, series(r, clusters.len()), phase_stats(r, clusters.len())))
        .collect();
    let max_p99 = all
        .iter()
        .flat_map(|(_, w, _)| w.iter().map(|w| w.p99_ms))
        .fold(10.0, f64::max);
    let mut h = String::new();
    h.push_str(r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Tideway demo report</title><style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px}h3{font-size:14px;margin:12px 0 4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:4px}
.gap{background:#fff4d6;border:1px solid #e8c36a;padding:6px 10px;font-size:13px}code{font-size:12px}
</style></head><body>"#);
    let _ = write!(
        h,
        "<h1>Tideway demo</h1><p>One caller sidecar (Envoy 1.40) in <code>{}</code> calling <code>{}</code> in three member clusters. \
         The filter came from the registry: <code>{}</code>; Envoy loaded the module <code>tideway image pull</code> wrote \
         (<code>{}</code>), configured from <code>tideway render</code> (WasmPlugin url <code>{}</code>). \
         The same scenario then runs with the filter removed and Envoy's own ROUND_ROBIN and LEAST_REQUEST on the same backends, \
         load and DestinationRule (outlier detection, istiod's default retries); <code>tideway drain</code> reaches only the filter, \
         so Envoy's balancers keep sending to a drained cluster.</p>",
        super::LOCAL_MEMBER,
        super::SERVICE_HOST,
        esc(&outcome.artifact.reference),
        esc(&outcome.artifact.pulled_module.display().to_string()),
        esc(&outcome.artifact.wasm_plugin_url),
    );
    h.push_str(
        "<table><tr><th class=l>cluster</th><th>latency</th><th>slots</th><th>cost</th></tr>",
    );
    for c in clusters {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{} ms</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            c.latency.as_millis(),
            c.capacity,
            c.cost
        );
    }
    h.push_str("</table>");
    if let Some(url) = &outcome.dashboard {
        let _ = write!(
            h,
            "<p class=dashboard>Fleet dashboard (live while the demo runs): <a id=dashboard href=\"{0}\">{0}</a></p>",
            esc(url)
        );
    }
    for gap in &outcome.gaps {
        let _ = write!(h, "<p class=gap>{}</p>", esc(gap));
    }
    h.push_str("<p class=legend>");
    for (i, c) in clusters.iter().enumerate() {
        let _ = write!(
            h,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            COLOURS[i % COLOURS.len()],
            esc(&c.name)
        );
    }
    h.push_str("</p>");
    for (run, windows, stats) in &all {
        let _ = write!(
            h,
            r#"<section class="policy" data-policy="{}"><h2>{}</h2><h3>Traffic share per cluster ({} ms windows)</h3>{}<h3>p99 latency (log scale)</h3>{}"#,
            run.policy.id(),
            esc(run.policy.label()),
            CHART_WINDOW_MS,
            share_chart(run, windows, clusters),
            p99_chart(run, windows, max_p99)
        );
        h.push_str("<table class=phases><tr><th class=l>phase</th>");
        for c in clusters {
            let _ = write!(h, "<th>{}</th>", esc(&c.name));
        }
        h.push_str("<th>requests</th><th>p50 ms</th><th>p99 ms</th><th>success</th><th>shift away</th><th>sessions kept</th></tr>");
        for s in stats {
            let _ = write!(
                h,
                r#"<tr data-phase="{}" data-p99-ms="{:.1}" data-success="{:.5}"><td class=l>{}</td>"#,
                esc(&s.phase),
                s.p99_ms,
                s.success,
                esc(&s.phase)
            );
            for x in &s.share {
                let _ = write!(h, "<td>{}</td>", pct(*x));
            }
            let _ = write!(
                h,
                "<td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}%</td><td>{}</td><td>{}/{}</td></tr>",
                s.requests,
                s.p50_ms,
                s.p99_ms,
                s.success * 100.0,
                shift_text(s),
                s.sessions_kept.0,
                s.sessions_kept.1
            );
        }
        h.push_str("</table></section>");
    }
    // Marks each drawn series with its rendered length: a browser test
    // reads these back (the charts were laid out, not just parsed).
    h.push_str(r#"<script>
addEventListener('load',function(){var n=0;document.querySelectorAll('polyline[data-series]').forEach(function(p){p.setAttribute('data-rendered-length',p.getTotalLength().toFixed(1));p.setAttribute('data-rendered-points',String(p.points.numberOfItems));n++;});document.body.setAttribute('data-charts-rendered',String(n));});
</script></body></html>"#);
    h
}
