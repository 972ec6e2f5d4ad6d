//! What the dashboard reads from a proxy: the filter's metrics and the
//! upstream latency histograms on Envoy's admin `/stats?format=json`.
//!
//! The filter's metrics are proxy-wasm metrics, so Envoy names them
//! `wasmcustom.tideway.…` (`tideway_filter::metrics` has the names), with
//! the service and destination inside the name (ABI 0.2.1 metrics carry no
//! tags). Latency comes from Envoy's own `upstream_rq_time` histograms of
//! the subset clusters Istio creates per destination
//! (`outbound|PORT|SUBSET|HOST`): the time Envoy measured, not the filter's
//! estimate of it. Envoy computes the quantiles per stats flush interval
//! (`interval`) and since start (`cumulative`); the live view wants the
//! interval's, and falls back to the cumulative ones before a first flush.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The admin query: only the stats the dashboard reads (Envoy's `filter`
/// is an RE2 regex over stat names, histograms included):
/// `^(wasmcustom\.tideway\.|cluster\..+\.upstream_rq_time$)`.
pub const STATS_QUERY: &str =
    "/stats?format=json&filter=%5E%28wasmcustom%5C.tideway%5C.%7Ccluster%5C..%2B%5C.upstream_rq_time%24%29";

/// One proxy's view, as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStats {
    /// `tideway.weights.version`: the weights version the filter runs (0: static).
    pub weights_version: Option<u64>,
    /// `tideway.config.generation`.
    pub config_generation: Option<u64>,
    /// `tideway.config.rejected`.
    pub config_rejected: Option<u64>,
    /// Service → destination → counters and latency.
    pub services: BTreeMap<String, BTreeMap<String, DestinationStats>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStats {
    /// Requests the filter routed there, every reason (cumulative: the
    /// page takes differences).
    pub requests: u64,
    pub ejections: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Read an admin `/stats?format=json` answer. `services` names each
/// service's hosts and destinations (its plugin config's), to attribute a
/// cluster's histogram to a service's destination. Unknown shapes are skipped, not errors: a
/// proxy of another version must not blank the page.
pub fn parse(body: &Value, services: &BTreeMap<String, ServiceNames>) -> ProxyStats {
    let mut out = ProxyStats::default();
    let Some(stats) = body.get("stats").and_then(Value::as_array) else {
        return out;
    };
    for stat in stats {
        if let (Some(name), Some(value)) = (
            stat.get("name").and_then(Value::as_str),
            stat.get("value").and_then(Value::as_u64),
        ) {
            counter(&mut out, name, value);
        } else if let Some(histograms) = stat.get("histograms") {
            latency(&mut out, histograms, services);
        }
    }
    out
}

fn counter(out: &mut ProxyStats, name: &str, value: u64) {
    let Some(name) = name.strip_prefix("wasmcustom.tideway.") else {
        return;
    };
    match name {
        "weights.version" => out.weights_version = Some(value),
        "config.generation" => out.config_generation = Some(value),
        "config.rejected" => out.config_rejected = Some(value),
        _ => {
            if let Some(rest) = name.strip_prefix("requests.") {
                // service.destination.reason; a service name may hold dots,
                // a destination and a reason do not.
                let mut parts = rest.rsplitn(3, '.');
                let (_reason, destination, service) = (parts.next(), parts.next(), parts.next());
                if let (Some(d), Some(s)) = (destination, service) {
                    entry(out, s, d).requests += value;
                }
            } else if let Some(rest) = name.strip_prefix("ejections.") {
                if let Some((s, d)) = rest.rsplit_once('.') {
                    entry(out, s, d).ejections += value;
                }
            }
        }
    }
}

fn entry<'a>(
    out: &'a mut ProxyStats,
    service: &str,
    destination: &str,
) -> &'a mut DestinationStats {
    out.services
        .entry(service.to_string())
        .or_default()
        .entry(destination.to_string())
        .or_default()
}

/// The (service, destination) an Envoy cluster serves: Istio's subset
/// cluster `outbound|PORT|SUBSET|HOST` of a service's host, or a cluster
/// named as exactly one service's destination (a hand-written Envoy
/// config, as the local fleets use).
fn attribute(cluster: &str, services: &BTreeMap<String, ServiceNames>) -> Option<(String, String)> {
    let parts: Vec<&str> = cluster.split('|').collect();
    if let [_, _, subset, host] = parts.as_slice() {
        if subset.is_empty() {
            return None;
        }
        return services
            .iter()
            .find(|(_, n)| n.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
            .map(|(s, _)| (s.clone(), subset.to_string()));
    }
    let mut owners = services
        .iter()
        .filter(|(_, n)| n.destinations.iter().any(|d| d == cluster));
    match (owners.next(), owners.next()) {
        (Some((s, _)), None) => Some((s.clone(), cluster.to_string())),
        _ => None,
    }
}

/// A service's hosts and destination names, from its plugin config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceNames {
    pub hosts: Vec<String>,
    pub destinations: Vec<String>,
}

fn latency(out: &mut ProxyStats, histograms: &Value, services: &BTreeMap<String, ServiceNames>) {
    let quantiles: Vec<f64> = histograms
        .get("supported_quantiles")
        .and_then(Value::as_array)
        .map(|q| q.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let (Some(p50), Some(p99)) = (
        quantiles.iter().position(|q| *q == 50.0),
        quantiles.iter().position(|q| *q == 99.0),
    ) else {
        return;
    };
    let Some(computed) = histograms
        .get("computed_quantiles")
        .and_then(Value::as_array)
    else {
        return;
    };
    for h in computed {
        let Some(name) = h.get("name").and_then(Value::as_str) else {
            continue;
        };
        let Some(cluster) = name
            .strip_prefix("cluster.")
            .and_then(|n| n.strip_suffix(".upstream_rq_time"))
        else {
            continue;
        };
        let Some((service, subset)) = attribute(cluster, services) else {
            continue;
        };
        let values = h.get("values").and_then(Value::as_array);
        let at = |i: usize| {
            let v = values?.get(i)?;
            v.get("interval")
                .and_then(Value::as_f64)
                .or_else(|| v.get("cumulative").and_then(Value::as_f64))
        };
        let d = entry(out, &service, &subset);
        d.p50_ms = at(p50);
        d.p99_ms = at(p99);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_filters_counters_and_envoys_histograms() {
        // The shape Envoy 1.40's admin answers (trimmed).
        let body: Value = serde_json::from_str(
            r#"{"stats":[
            {"name":"wasmcustom.tideway.requests.reviews.hangzhou.scored","value":90},
            {"name":"wasmcustom.tideway.requests.reviews.hangzhou.affinity","value":10},
            {"name":"wasmcustom.tideway.requests.reviews.beijing.failover","value":3},
            {"name":"wasmcustom.tideway.requests.reviews.none.no_destination","value":1},
            {"name":"wasmcustom.tideway.ejections.reviews.beijing","value":2},
            {"name":"wasmcustom.tideway.weights.version","value":7},
            {"name":"wasmcustom.tideway.config.generation","value":1},
            {"histograms":{"supported_quantiles":[0,25,50,75,90,95,99,99.5,99.9,100],
              "computed_quantiles":[
              {"name":"cluster.outbound|9080|hangzhou|reviews.prod.svc.cluster.local.upstream_rq_time",
               "values":[{"interval":null,"cumulative":1},{"interval":null,"cumulative":2},
               {"interval":4.05,"cumulative":5},{"interval":null,"cumulative":6},{"interval":null,"cumulative":7},
               {"interval":null,"cumulative":8},{"interval":null,"cumulative":21.5},{"interval":null,"cumulative":30},
               {"interval":null,"cumulative":40},{"interval":null,"cumulative":50}]},
              {"name":"cluster.outbound|9080||reviews.prod.svc.cluster.local.upstream_rq_time","values":[]},
              {"name":"cluster.outbound|80|x|other.example.upstream_rq_time","values":[]},
              {"name":"cluster.beijing.upstream_rq_time","values":[{"cumulative":1},{"cumulative":1},
               {"cumulative":9},{"cumulative":1},{"cumulative":1},{"cumulative":1},{"cumulative":80}]}]}}]}"#,
        )
        .unwrap();
        let services = BTreeMap::from([(
            "reviews".to_string(),
            ServiceNames {
                hosts: vec!["reviews.prod.svc.cluster.local".to_string()],
                destinations: vec!["hangzhou".into(), "beijing".into()],
            },
        )]);
        let p = parse(&body, &services);
        assert_eq!(p.weights_version, Some(7));
        assert_eq!(p.config_generation, Some(1));
        let reviews = &p.services["reviews"];
        assert_eq!(reviews["hangzhou"].requests, 100);
        assert_eq!(reviews["hangzhou"].p50_ms, Some(4.05), "the interval's");
        assert_eq!(
            reviews["hangzhou"].p99_ms,
            Some(21.5),
            "else the cumulative"
        );
        assert_eq!(reviews["beijing"].requests, 3);
        assert_eq!(reviews["beijing"].ejections, 2);
        assert_eq!(
            (reviews["beijing"].p50_ms, reviews["beijing"].p99_ms),
            (Some(9.0), Some(80.0)),
            "a cluster named as the destination"
        );
        assert_eq!(reviews["none"].requests, 1, "the mesh default is shown too");
        assert!(!p.services.contains_key("other"));
    }

    #[test]
    fn an_unexpected_answer_reads_as_nothing() {
        for body in [
            r#"[]"#,
            r#"{"stats":7}"#,
            r#"{"stats":[{"name":1},{"histograms":[]}]}"#,
        ] {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(parse(&v, &BTreeMap::new()), ProxyStats::default());
        }
    }
}
