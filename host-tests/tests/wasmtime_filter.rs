//! The built filter (`env::filter_wasm()`) running in the wasmtime host:
//! configuration, the routing decision, split precision, workers sharing
//! statistics, and robustness against random input.

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tideway_host_tests::env;
use tideway_host_tests::wasm_host::{Action, Host, HostBuilder};

const ROUTING_HEADER: &str = "x-tideway-destination";

fn builder(config: &serde_json::Value) -> HostBuilder {
    HostBuilder::from_file(env::filter_wasm())
        .expect("filter wasm readable")
        .plugin_config_json(config)
        .cluster_id("cluster-a")
        .locality("us-east1", "us-east1-b", "")
}

fn canary_config(a: f64, b: f64) -> serde_json::Value {
    json!({
        "services": [{
            "name": "reviews",
            "hosts": ["reviews.default.svc.cluster.local", "reviews"],
            "weights": { "latency": 0.0, "load": 0.0, "cost": 0.0, "affinity": 0.0 },
            "destinations": [
                { "name": "cluster-a", "locality": "us-east1/us-east1-b", "weight": a },
                { "name": "cluster-b", "locality": "us-west1/us-west1-a", "weight": b }
            ]
        }]
    })
}

fn request<'a>(host: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![(":method", "GET"), (":scheme", "http"), (":authority", host), (":path", path)]
}

fn start(config: &serde_json::Value) -> Host {
    builder(config).start().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn config_accepted() {
    let host = start(&canary_config(50.0, 50.0));
    assert_eq!(host.configured, vec![true]);
    assert_eq!(host.abi_version(), "0.2.1");
    assert!(host.stubbed_imports.is_empty(), "filter imports calls this host lacks: {:?}", host.stubbed_imports);
}

#[test]
fn config_rejected_with_message() {
    let bad = json!({ "services": [], "bogusField": 1 });
    let host = builder(&bad).build().unwrap();
    assert_eq!(host.configured, vec![false]);
    assert!(host.logged("bogusField"), "the error names the unknown field:\n{}", host.logs_text());

    let not_json = builder(&json!(null)).plugin_config("{not json").build().unwrap();
    assert_eq!(not_json.configured, vec![false]);
}

#[test]
fn sets_routing_header_and_service_name() {
    let mut host = start(&canary_config(50.0, 50.0));
    let ex = host.exchange(0, &request("reviews", "/r"), &[(":status", "200")]).unwrap();
    assert_eq!(ex.request_action, Action::Continue);
    let dest = ex.upstream_request.get(ROUTING_HEADER).unwrap_or_else(|| panic!("no routing header:\n{}", host.logs_text()));
    assert!(dest == "cluster-a" || dest == "cluster-b", "{dest}");
    assert_eq!(ex.upstream_request.get("x-service-name").as_deref(), Some("reviews"));
    assert_eq!(ex.upstream_request.get("x-cluster-source").as_deref(), Some("cluster-a"));
    assert!(ex.route_cache_clears >= 1);

    // A host no service claims passes untouched.
    let other = host.exchange(0, &request("ratings", "/"), &[(":status", "200")]).unwrap();
    assert_eq!(other.upstream_request.get(ROUTING_HEADER), None);
}

#[test]
fn canary_split_precision_over_100k_requests() {
    let mut host = start(&canary_config(90.0, 10.0));
    let n = 100_000;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..n {
        let path = format!("/item/{i}");
        let ex = host.exchange(0, &request("reviews", &path), &[(":status", "200")]).unwrap();
        let d = ex.upstream_request.get(ROUTING_HEADER).unwrap_or_default();
        *counts.entry(d).or_default() += 1;
    }
    let b = f64::from(*counts.get("cluster-b").unwrap_or(&0)) / f64::from(n);
    assert!((b - 0.10).abs() < 0.005, "cluster-b share {b}, counts {counts:?}");
}

#[test]
fn two_workers_merge_statistics_through_shared_data() {
    let mut host = builder(&canary_config(50.0, 50.0)).workers(2).start().unwrap();
    for w in 0..2 {
        for i in 0..50 {
            let path = format!("/w{w}/{i}");
            host.exchange(w, &request("reviews", &path), &[(":status", "200")]).unwrap();
        }
    }
    host.advance(Duration::from_secs(30)).unwrap();
    let keys: Vec<String> = host.shared_data().keys().cloned().collect();
    assert!(keys.iter().any(|k| k.starts_with("tideway/")), "no tideway/ shared data after ticks: {keys:?}\n{}", host.logs_text());
    assert!(host.failure(0).is_none() && host.failure(1).is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn random_headers_never_trap(
        headers in proptest::collection::vec(("[a-z:-]{1,12}", "\\PC{0,40}"), 0..12),
        status in "[0-9]{0,3}",
    ) {
        let mut host = start(&canary_config(50.0, 50.0));
        let mut req: Vec<(&str, &str)> = request("reviews", "/");
        req.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let r = host.exchange(0, &req, &[(":status", status.as_str())]);
        prop_assert!(r.is_ok(), "{:?}\n{}", r.err(), host.logs_text());
    }

    #[test]
    fn random_config_bytes_never_trap(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let host = builder(&json!(null)).plugin_config(bytes).build();
        prop_assert!(host.is_ok(), "{:?}", host.err());
        prop_assert!(host.unwrap().failure(0).is_none());
    }
}
