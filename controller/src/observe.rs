//! Alerting rules and the Grafana dashboard for one policy.
//!
//! Two sources of metrics: Istio's standard `istio_requests_total` /
//! `istio_request_duration_milliseconds` (the usual HighErrorRate and
//! HighLatency alerts, here scoped to the policy's service), and the filter's
//! own counters. The filter's metric names come from
//! `tideway_filter::metrics` — the same functions the filter defines them
//! with — turned into the names Envoy's Prometheus endpoint shows
//! (`wasmcustom.` prefix, every character outside `[a-zA-Z0-9_]` → `_`,
//! `envoy_` prefix). Proxy-wasm ABI 0.2.1 metrics carry no tags, so the
//! service and destination are parts of the name; the queries name each
//! destination of the policy explicitly.

use crate::api::TrafficPolicy;
use serde_json::{json, Value};
use tideway_filter::decision::Reason;
use tideway_filter::metrics;

/// The name Prometheus scrapes for a filter metric.
pub fn prometheus_name(filter_metric: &str) -> String {
    let sanitized: String = format!("wasmcustom.{filter_metric}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("envoy_{sanitized}")
}

/// A PromQL selector for the request counters of one destination (`None`:
/// requests the filter left to the mesh default), all reasons.
fn requests_selector(service: &str, destination: Option<&str>) -> String {
    let names: Vec<String> = Reason::ALL
        .iter()
        .map(|r| prometheus_name(&metrics::requests(service, destination, *r)))
        .collect();
    format!("{{__name__=~\"{}\"}}", names.join("|"))
}

/// Every request counter of the service: each destination and `none`.
fn all_requests_selector(service: &str, destinations: &[&str]) -> String {
    let names: Vec<String> = destinations
        .iter()
        .map(|d| Some(*d))
        .chain(std::iter::once(None))
        .flat_map(|d| {
            Reason::ALL
                .iter()
                .map(move |r| prometheus_name(&metrics::requests(service, d, *r)))
        })
        .collect();
    format!("{{__name__=~\"{}\"}}", names.join("|"))
}

fn ejections_selector(service: &str, destinations: &[&str]) -> String {
    let names: Vec<String> = destinations
        .iter()
        .map(|d| prometheus_name(&metrics::ejections(service, d)))
        .collect();
    format!("{{__name__=~\"{}\"}}", names.join("|"))
}

/// `PrometheusRule.spec`.
pub fn prometheus_rule(policy: &TrafficPolicy, fqdn: &str) -> Value {
    let spec = &policy.spec;
    let o = &spec.observability;
    let service = &spec.service.name;
    let threshold = o.error_rate_threshold.unwrap_or(0.05);
    let p95 = o.latency_p95_ms.unwrap_or(1000.0);
    let destinations: Vec<&str> = spec.destinations.iter().map(|d| d.subset()).collect();
    let by = "source_workload, destination_workload, destination_cluster";
    let sel = format!("reporter=\"source\", destination_service=\"{fqdn}\"");
    let policy_name = policy.metadata.name.clone().unwrap_or_default();
    json!({
        "groups": [{
            "name": format!("tideway.{policy_name}.rules"),
            "rules": [
                {
                    "alert": "HighErrorRate",
                    "expr": format!(
                        "sum(rate(istio_requests_total{{{sel}, response_code=~\"5..\"}}[5m])) by ({by})\n/\nsum(rate(istio_requests_total{{{sel}}}[5m])) by ({by}) > {threshold}"
                    ),
                    "for": "5m",
                    "labels": {"severity": "critical", "service": service},
                    "annotations": {
                        "summary": format!("{service}: error rate above {}%", threshold * 100.0),
                        "description": "5xx ratio {{ $value | humanizePercentage }}: {{ $labels.source_workload }} -> {{ $labels.destination_workload }} in {{ $labels.destination_cluster }}",
                    },
                },
                {
                    "alert": "HighLatency",
                    "expr": format!(
                        "histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[5m])) by (le, {by})) > {p95}"
                    ),
                    "for": "5m",
                    "labels": {"severity": "warning", "service": service},
                    "annotations": {
                        "summary": format!("{service}: p95 latency above {p95} ms"),
                        "description": "p95 {{ $value }} ms: {{ $labels.source_workload }} -> {{ $labels.destination_workload }} in {{ $labels.destination_cluster }}",
                    },
                },
                {
                    "alert": "TidewayDestinationEjected",
                    "expr": format!(
                        "sum by (namespace, pod) (increase({}[5m])) > 0",
                        ejections_selector(service, &destinations)
                    ),
                    "labels": {"severity": "warning", "service": service},
                    "annotations": {
                        "summary": format!("{service}: the filter ejected a destination"),
                        "description": "{{ $labels.pod }} ({{ $labels.namespace }}) ejected a destination of the service in the last 5 minutes: its requests fail over.",
                    },
                },
                {
                    "alert": "TidewayConfigRejected",
                    "expr": format!(
                        "sum by (namespace, pod) (increase({}[10m])) > 0",
                        prometheus_name(metrics::CONFIG_REJECTED)
                    ),
                    "labels": {"severity": "critical"},
                    "annotations": {
                        "summary": "A Tideway filter rejected its configuration",
                        "description": "{{ $labels.pod }} ({{ $labels.namespace }}) refused a pluginConfig and keeps its last good one; run `tideway check-config` on the WasmPlugin.",
                    },
                },
                {
                    "alert": "TidewayNotSteering",
                    "expr": format!(
                        "sum(rate({}[10m])) / sum(rate({}[10m])) > 0.5",
                        requests_selector(service, None),
                        all_requests_selector(service, &destinations)
                    ),
                    "for": "10m",
                    "labels": {"severity": "warning", "service": service},
                    "annotations": {
                        "summary": format!("{service}: most requests take the mesh default route"),
                        "description": "Over half of the filter's requests for the service were left to the mesh default (no healthy destination, or every destination ejected).",
                    },
                },
            ],
        }],
    })
}

/// A Grafana dashboard (JSON model) for the policy.
pub fn dashboard(policy: &TrafficPolicy, fqdn: &str) -> Value {
    let spec = &policy.spec;
    let service = &spec.service.name;
    let policy_name = policy.metadata.name.clone().unwrap_or_default();
    let mut targets = Vec::new();
    for (i, d) in spec.destinations.iter().enumerate() {
        targets.push(json!({
            "refId": letter(i),
            "expr": format!("sum(rate({}[1m]))", requests_selector(service, Some(d.subset()))),
            "legendFormat": d.subset(),
        }));
    }
    targets.push(json!({
        "refId": letter(spec.destinations.len()),
        "expr": format!("sum(rate({}[1m]))", requests_selector(service, None)),
        "legendFormat": "mesh default",
    }));
    let ejections: Vec<Value> = spec
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({
                "refId": letter(i),
                "expr": format!("sum(increase({}[5m]))", prometheus_name(&metrics::ejections(service, d.subset()))),
                "legendFormat": d.subset(),
            })
        })
        .collect();
    let sel = format!("reporter=\"source\", destination_service=\"{fqdn}\"");
    let panel = |id: u32, title: &str, unit: &str, y: u32, x: u32, targets: Value| {
        json!({
            "id": id,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": targets,
        })
    };
    json!({
        "title": format!("Tideway: {policy_name} ({service})"),
        "uid": format!("tideway-{}", short_uid(&policy_name)),
        "tags": ["tideway"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{
            "name": "datasource",
            "type": "datasource",
            "query": "prometheus",
        }]},
        "panels": [
            panel(1, "Requests steered, by destination", "reqps", 0, 0, json!(targets)),
            panel(2, "Ejections (5m)", "short", 0, 12, json!(ejections)),
            panel(3, "Error ratio by destination cluster", "percentunit", 8, 0, json!([{
                "refId": "A",
                "expr": format!("sum(rate(istio_requests_total{{{sel}, response_code=~\"5..\"}}[1m])) by (destination_cluster) / sum(rate(istio_requests_total{{{sel}}}[1m])) by (destination_cluster)"),
                "legendFormat": "{{destination_cluster}}",
            }])),
            panel(4, "p95 latency by destination cluster", "ms", 8, 12, json!([{
                "refId": "A",
                "expr": format!("histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[1m])) by (le, destination_cluster))"),
                "legendFormat": "{{destination_cluster}}",
            }])),
            panel(5, "Config rejected", "short", 16, 0, json!([{
                "refId": "A",
                "expr": format!("sum(increase({}[5m]))", prometheus_name(metrics::CONFIG_REJECTED)),
                "legendFormat": "rejected",
            }])),
        ],
    })
}

fn letter(i: usize) -> String {
    let i = u8::try_from(i % 26).unwrap_or(0);
    char::from(b'A' + i).to_string()
}

/// Grafana uids are at most 40 characters.
fn short_uid(name: &str) -> String {
    name.chars().take(31).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_envoy_sanitising() {
        assert_eq!(
            prometheus_name(&metrics::ejections("reviews-v2", "cluster-a")),
            "envoy_wasmcustom_tideway_ejections_reviews_v2_cluster_a"
        );
        assert_eq!(
            prometheus_name(metrics::CONFIG_REJECTED),
            "envoy_wasmcustom_tideway_config_rejected"
        );
    }

    #[test]
    fn request_selector_lists_every_reason() {
        let s = requests_selector("reviews", Some("east"));
        for r in Reason::ALL {
            assert!(s.contains(&format!("reviews_east_{}", r.as_str())), "{s}");
        }
    }
}
