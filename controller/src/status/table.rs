//! The status report as the terminal shows it.

use super::{EndpointsView, MemberReport, StatusReport, WeightsView};
use crate::api::READY;
use std::fmt::Write;

/// The report as the terminal shows it: a summary line, the controller's
/// conditions, a table with one row per member, each member's objects, and
/// the problems.
pub fn table(report: &StatusReport) -> String {
    let mut out = String::new();
    summary(&mut out, report);
    controller(&mut out, report);
    out.push('\n');
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    rows.extend(
        report
            .members
            .iter()
            .map(|m| member_row(m, &report.expected_revision)),
    );
    for line in aligned(&rows) {
        let _ = writeln!(out, "{line}");
    }
    objects(&mut out, report);
    if !report.problems.is_empty() {
        let _ = writeln!(out, "\nproblems:");
        for p in &report.problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

const HEADER: [&str; 10] = [
    "MEMBER",
    "WAVE",
    "API",
    "ISTIO",
    "OBJECTS",
    "REVISION",
    "DRIFT",
    "ENDPOINTS",
    "WEIGHTS",
    "CONTROLLER",
];

/// The policy, its health and the revision its members should have.
fn summary(out: &mut String, report: &StatusReport) {
    let p = &report.policy;
    let _ = writeln!(
        out,
        "TrafficPolicy {}/{} (fleet {}, service {}): {}",
        p.namespace,
        p.name,
        p.fleet,
        p.service,
        if report.healthy {
            "healthy"
        } else {
            "DEGRADED"
        }
    );
    let _ = writeln!(
        out,
        "expected revision {} (from the {})",
        report.expected_revision, report.revision_source
    );
}

/// What the controller says in the hub's copy of the policy.
fn controller(out: &mut String, report: &StatusReport) {
    let Some(c) = &report.controller else {
        let _ = writeln!(
            out,
            "controller: the hub was not asked (no --hub-context), or does not have the policy"
        );
        return;
    };
    let _ = writeln!(
        out,
        "controller: generation {}, observed {}{}",
        c.generation.map_or("-".into(), |g| g.to_string()),
        c.observed_generation.map_or("-".into(), |g| g.to_string()),
        if c.drained.is_empty() {
            String::new()
        } else {
            format!(", drained: {}", c.drained.join(", "))
        }
    );
    for cond in &c.conditions {
        let _ = writeln!(
            out,
            "  {}={} {}: {}",
            cond.type_, cond.status, cond.reason, cond.message
        );
    }
}

/// A member's row, in the order of [`HEADER`].
fn member_row(m: &MemberReport, expected_revision: &str) -> Vec<String> {
    let api = if m.api.reachable {
        m.api.version.clone().unwrap_or_else(|| "up".into())
    } else {
        "UNREACHABLE".into()
    };
    let [istio, objects, revision, drift] = if m.api.reachable {
        member_objects(m, expected_revision)
    } else {
        ["?".into(), "?".into(), "?".into(), "?".into()]
    };
    vec![
        m.name.clone(),
        m.wave.to_string(),
        api,
        istio,
        objects,
        revision,
        drift,
        endpoints_cell(m.endpoints.as_ref()),
        weights_cell(m.weights.as_ref()),
        controller_cell(m),
    ]
}

/// The ISTIO, OBJECTS, REVISION and DRIFT cells of a reachable member.
fn member_objects(m: &MemberReport, expected_revision: &str) -> [String; 4] {
    let served = m.istio.kinds.iter().filter(|k| k.served).count();
    let istio = match (&m.istio.version, served == m.istio.kinds.len()) {
        (Some(v), true) => v.clone(),
        (None, true) => "ok".into(),
        (_, false) => format!("MISSING {}", m.istio.kinds.len() - served),
    };
    let present = m.objects.iter().filter(|o| o.present).count();
    let drifted = m
        .objects
        .iter()
        .filter(|o| o.drift.as_ref().is_some_and(|d| !d.is_empty()))
        .count();
    [
        istio,
        format!("{present}/{}", m.objects.len()),
        m.revision.as_deref().map_or_else(
            || "mixed".to_string(),
            |r| {
                if r == expected_revision {
                    r.to_string()
                } else {
                    format!("{} (OLD)", r)
                }
            },
        ),
        if drifted == 0 {
            "-".to_string()
        } else {
            format!("DRIFT {drifted}")
        },
    ]
}

fn endpoints_cell(endpoints: Option<&EndpointsView>) -> String {
    match endpoints {
        None => "-".to_string(),
        Some(EndpointsView {
            ready: Some(n),
            not_ready,
            ..
        }) => format!(
            "{n} ready{}",
            not_ready.map_or(String::new(), |u| if u > 0 {
                format!(" +{u}")
            } else {
                String::new()
            })
        ),
        Some(_) => "?".to_string(),
    }
}

fn weights_cell(weights: Option<&WeightsView>) -> String {
    let Some(w) = weights else {
        return "?".to_string();
    };
    let list = w
        .destinations
        .iter()
        .map(|d| format!("{}", d.weight))
        .collect::<Vec<_>>()
        .join("/");
    match &w.source {
        Some(s) => format!("{list} via {s}, schema {}", w.schema_version),
        None => format!("{list} static, schema {}", w.schema_version),
    }
}

/// The member's Ready condition as the controller wrote it: `Ready`, or
/// why not.
fn controller_cell(m: &MemberReport) -> String {
    m.conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map_or("-".to_string(), |c| {
            if c.status == "True" {
                "Ready".to_string()
            } else {
                c.reason.clone()
            }
        })
}

/// The rows as lines, each column as wide as its widest cell.
fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            line.join("  ").trim_end().to_string()
        })
        .collect()
}

/// Each member's objects and what state each is in.
fn objects(out: &mut String, report: &StatusReport) {
    for m in &report.members {
        if m.objects.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}:", m.name);
        for o in &m.objects {
            let state = if !o.present {
                "MISSING".to_string()
            } else if !o.current {
                format!("at {}", o.revision.as_deref().unwrap_or("no revision"))
            } else if o.drift.as_ref().is_some_and(|d| !d.is_empty()) {
                "DRIFT".to_string()
            } else {
                "ok".to_string()
            };
            let image = match (&o.image, &o.sha256) {
                (Some(url), _) => format!("  {url}"),
                _ => String::new(),
            };
            let _ = writeln!(out, "  {:<8} {}{image}", state, o.object);
        }
    }
}
