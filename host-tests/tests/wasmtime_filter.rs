//! The built filter (`env::filter_wasm()`) running in the wasmtime host:
//! configuration, the routing decision for given latencies, session
//! affinity under a weight change, ejection with backoff and failover on
//! the fake clock, W3C / B3 trace context and span export, workers sharing
//! statistics, and robustness against random input.

use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tideway_host_tests::env;
use tideway_host_tests::wasm_host::http_call::HttpRule;
use tideway_host_tests::wasm_host::{Action, HeaderMap, Host, HostBuilder, HttpReply};

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
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", host),
        (":path", path),
    ]
}

fn start(config: &serde_json::Value) -> Host {
    builder(config).start().unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn config_accepted() {
    let host = start(&canary_config(50.0, 50.0));
    assert_eq!(host.configured, vec![true]);
    assert_eq!(host.abi_version(), "0.2.1");
    assert!(
        host.stubbed_imports.is_empty(),
        "filter imports calls this host lacks: {:?}",
        host.stubbed_imports
    );
}

#[test]
fn config_rejected_with_message() {
    let bad = json!({ "services": [], "bogusField": 1 });
    let host = builder(&bad).build().unwrap();
    assert_eq!(host.configured, vec![false]);
    assert!(
        host.logged("bogusField"),
        "the error names the unknown field:\n{}",
        host.logs_text()
    );

    let not_json = builder(&json!(null))
        .plugin_config("{not json")
        .build()
        .unwrap();
    assert_eq!(not_json.configured, vec![false]);
}

#[test]
fn hop_headers_off_or_left_to_the_routes_leave_only_the_routing_header() {
    // `"routes"`: the controller's VirtualService sets them (envoy_rendered
    // checks what arrives upstream then); the filter must not pay for them.
    for setting in [json!(false), json!("routes")] {
        let mut config = canary_config(50.0, 50.0);
        config["hopHeaders"] = setting.clone();
        let mut host = start(&config);
        let ex = host
            .exchange(0, &request("reviews", "/r"), &[(":status", "200")])
            .unwrap();
        assert!(
            ex.upstream_request.get(ROUTING_HEADER).is_some(),
            "still routed with hopHeaders {setting}:\n{}",
            host.logs_text()
        );
        for name in ["x-cluster-source", "x-cluster-target", "x-service-name"] {
            assert_eq!(
                ex.upstream_request.get(name),
                None,
                "{name} is set by the filter with hopHeaders {setting}"
            );
        }
    }
}

#[test]
fn sets_routing_header_and_service_name() {
    let mut host = start(&canary_config(50.0, 50.0));
    let ex = host
        .exchange(0, &request("reviews", "/r"), &[(":status", "200")])
        .unwrap();
    assert_eq!(ex.request_action, Action::Continue);
    let dest = ex
        .upstream_request
        .get(ROUTING_HEADER)
        .unwrap_or_else(|| panic!("no routing header:\n{}", host.logs_text()));
    assert!(dest == "cluster-a" || dest == "cluster-b", "{dest}");
    assert_eq!(
        ex.upstream_request.get("x-service-name").as_deref(),
        Some("reviews")
    );
    assert_eq!(
        ex.upstream_request.get("x-cluster-source").as_deref(),
        Some("cluster-a")
    );
    assert!(ex.route_cache_clears >= 1);

    // A host no service claims passes untouched.
    let other = host
        .exchange(0, &request("ratings", "/"), &[(":status", "200")])
        .unwrap();
    assert_eq!(other.upstream_request.get(ROUTING_HEADER), None);
}

#[test]
fn canary_split_precision_over_100k_requests() {
    let mut host = start(&canary_config(90.0, 10.0));
    let n = 100_000;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..n {
        let path = format!("/item/{i}");
        let ex = host
            .exchange(0, &request("reviews", &path), &[(":status", "200")])
            .unwrap();
        let d = ex.upstream_request.get(ROUTING_HEADER).unwrap_or_default();
        *counts.entry(d).or_default() += 1;
    }
    let b = f64::from(*counts.get("cluster-b").unwrap_or(&0)) / f64::from(n);
    assert!(
        (b - 0.10).abs() < 0.005,
        "cluster-b share {b}, counts {counts:?}"
    );
}

#[test]
fn two_workers_merge_statistics_through_shared_data() {
    let mut host = builder(&canary_config(50.0, 50.0))
        .workers(2)
        .start()
        .unwrap();
    for w in 0..2 {
        for i in 0..50 {
            let path = format!("/w{w}/{i}");
            host.exchange(w, &request("reviews", &path), &[(":status", "200")])
                .unwrap();
        }
    }
    host.advance(Duration::from_secs(30)).unwrap();
    let keys: Vec<String> = host.shared_data().keys().cloned().collect();
    assert!(
        keys.iter().any(|k| k.starts_with("tideway/")),
        "no tideway/ shared data after ticks: {keys:?}\n{}",
        host.logs_text()
    );
    assert!(host.failure(0).is_none() && host.failure(1).is_none());
}

// --- helpers for the behaviour tests ---------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A counter's value (0 when it was never defined). The filter adds its
/// per-request decision counts (`tideway.requests.*`) to the host's
/// counters on the tick, so for those every worker ticks first; other
/// counters are read as they are, without a tick's side effects.
fn counter(host: &mut Host, name: &str) -> u64 {
    if name.starts_with("tideway.requests.") {
        host.tick_all().expect("tick");
    }
    host.metric(name).map_or(0, |m| m.value)
}

/// One request through the filter on `worker`. `upstream` sees the chosen
/// destination (the routing header, `None` for the mesh default) and says
/// how long the upstream takes (the fake clock advances by that much
/// between request and response headers) and which `:status` it answers.
/// Returns the destination and the request headers as forwarded.
fn serve(
    host: &mut Host,
    worker: usize,
    request: &[(&str, &str)],
    upstream: impl FnOnce(Option<&str>) -> (Duration, u16),
) -> (Option<String>, HeaderMap) {
    let s = host.stream(worker).unwrap();
    let action = host.request_headers(s, request, true).unwrap();
    assert_eq!(action, Action::Continue);
    let forwarded = host.upstream_request(s);
    let dest = forwarded.get(ROUTING_HEADER);
    let (latency, status) = upstream(dest.as_deref());
    if !latency.is_zero() {
        host.advance(latency).unwrap();
    }
    let status = status.to_string();
    host.response_headers(s, &[(":status", status.as_str())], true)
        .unwrap();
    host.finish(s).unwrap();
    host.drop_stream(s);
    assert!(
        host.failure(worker).is_none(),
        "worker {worker} trapped: {:?}",
        host.failure(worker)
    );
    (dest, forwarded)
}

/// The destination of one instantaneous 200 request.
fn route(host: &mut Host, worker: usize, request: &[(&str, &str)]) -> Option<String> {
    serve(host, worker, request, |_| (Duration::ZERO, 200)).0
}

fn tally(counts: &BTreeMap<String, u32>, name: &str) -> u32 {
    counts.get(name).copied().unwrap_or(0)
}

fn share(counts: &BTreeMap<String, u32>, name: &str) -> f64 {
    let total: u32 = counts.values().sum();
    f64::from(tally(counts, name)) / f64::from(total.max(1))
}

fn service(weights: Value, destinations: Value) -> Value {
    json!({ "name": "reviews", "hosts": ["reviews"], "weights": weights, "destinations": destinations })
}

fn latency_only() -> Value {
    json!({ "latency": 1.0, "load": 0.0, "cost": 0.0, "affinity": 0.0 })
}

fn static_only() -> Value {
    json!({ "latency": 0.0, "load": 0.0, "cost": 0.0, "affinity": 0.0 })
}

// --- 1. the decision for given scores ---------------------------------------------

#[test]
fn latency_only_a_ten_times_slower_destination_gets_under_5_percent() {
    // c has the largest static weight: only its latency can starve it.
    let dests = json!([{ "name": "a", "weight": 30 }, { "name": "b", "weight": 30 }, { "name": "c", "weight": 40 }]);
    let mut host = start(&json!({ "services": [service(latency_only(), dests)] }));
    let upstream = |d: Option<&str>| (if d == Some("c") { ms(20) } else { ms(2) }, 200);
    let req = request("reviews", "/");
    let mut warm: BTreeSet<String> = BTreeSet::new();
    for _ in 0..200 {
        warm.insert(serve(&mut host, 0, &req, upstream).0.expect("routed"));
    }
    assert_eq!(
        warm.len(),
        3,
        "every destination is measured during warm-up: {warm:?}"
    );
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..2000 {
        *counts
            .entry(serve(&mut host, 0, &req, upstream).0.expect("routed"))
            .or_default() += 1;
    }
    assert!(
        share(&counts, "c") < 0.05,
        "the 10x slower c still gets {:.1}%: {counts:?}",
        share(&counts, "c") * 100.0
    );
    // The fast ones split the rest by their equal weights.
    let (a, b) = (share(&counts, "a"), share(&counts, "b"));
    assert!(a > 0.35 && b > 0.35, "{counts:?}");
    assert!(counter(&mut host, "tideway.requests.reviews.a.score") > 0);
    assert_eq!(
        counter(&mut host, "tideway.requests.reviews.a.static"),
        0,
        "dynamic weights never decide statically"
    );
}

#[test]
fn latency_only_with_equal_latencies_the_split_follows_the_static_weights() {
    let dests = json!([{ "name": "a", "weight": 50 }, { "name": "b", "weight": 30 }, { "name": "c", "weight": 20 }]);
    let mut host = start(&json!({ "services": [service(latency_only(), dests)] }));
    let req = request("reviews", "/");
    let n = 4000;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(
                serve(&mut host, 0, &req, |_| (ms(5), 200))
                    .0
                    .expect("routed"),
            )
            .or_default() += 1;
    }
    // Equal latencies must not bend the split. (P2C comparing scores that
    // differ only by the idle decay of the peak-EWMA — the destination
    // served last looks a hair slower — pulls it toward uniform: 44/31/25.)
    for (name, expected) in [("a", 0.50), ("b", 0.30), ("c", 0.20)] {
        let got = share(&counts, name);
        assert!(
            (got - expected).abs() < 0.03,
            "{name}: {:.1}% (weight {:.0}%): {counts:?} — P2C must treat near-equal scores as a tie",
            got * 100.0,
            expected * 100.0
        );
    }
}

#[test]
fn static_weights_decide_with_reason_static_whatever_the_latency() {
    let dests = json!([{ "name": "a", "weight": 80 }, { "name": "b", "weight": 20 }]);
    let mut host = start(&json!({ "services": [service(static_only(), dests)] }));
    let req = request("reviews", "/");
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..3000 {
        // a is 50x slower: static weights ignore it.
        let d = serve(&mut host, 0, &req, |d| {
            (if d == Some("a") { ms(50) } else { ms(1) }, 200)
        })
        .0;
        *counts.entry(d.expect("routed")).or_default() += 1;
    }
    assert!((share(&counts, "a") - 0.80).abs() < 0.025, "{counts:?}");
    assert_eq!(
        counter(&mut host, "tideway.requests.reviews.a.static"),
        u64::from(tally(&counts, "a"))
    );
    assert_eq!(
        counter(&mut host, "tideway.requests.reviews.b.static"),
        u64::from(tally(&counts, "b"))
    );
}

// --- 2. session affinity ----------------------------------------------------------

fn affinity_config(weights: [f64; 3]) -> Value {
    let mut svc = service(
        json!({ "latency": 1.0, "load": 0.5, "cost": 0.0, "affinity": 0.0 }),
        json!([
            { "name": "east", "weight": weights[0] },
            { "name": "west", "weight": weights[1] },
            { "name": "south", "weight": weights[2] }
        ]),
    );
    svc["affinity"] = json!({ "source": "header", "name": "x-user-id" });
    json!({ "services": [svc] })
}

#[test]
fn a_session_key_maps_to_one_destination_across_requests_and_workers() {
    let mut host = builder(&affinity_config([50.0, 30.0, 20.0]))
        .workers(2)
        .start()
        .unwrap();
    let mut req = request("reviews", "/");
    req.push(("x-user-id", "alice"));
    let home = route(&mut host, 0, &req).expect("routed");
    for i in 0..1000 {
        let w = i % 2;
        // Its home becoming slow changes scores, never the session's home.
        let d = serve(&mut host, w, &req, |d| {
            (
                if d == Some(home.as_str()) {
                    ms(40)
                } else {
                    ms(1)
                },
                200,
            )
        })
        .0;
        assert_eq!(
            d.as_deref(),
            Some(home.as_str()),
            "request {i} on worker {w} moved"
        );
        if i % 200 == 0 {
            host.tick_all().unwrap();
        }
    }
    assert_eq!(
        counter(
            &mut host,
            &format!("tideway.requests.reviews.{home}.affinity")
        ),
        1001
    );

    // Many keys: each sticks, and together they spread by weight.
    let mut homes: BTreeMap<String, String> = BTreeMap::new();
    for user in 0..300 {
        let id = format!("user-{user}");
        let mut req = request("reviews", "/");
        req.push(("x-user-id", id.as_str()));
        let on0 = route(&mut host, 0, &req).expect("routed");
        let on1 = route(&mut host, 1, &req).expect("routed");
        assert_eq!(on0, on1, "{id}: worker 0 and worker 1 disagree");
        homes.insert(id, on0);
    }
    let distinct: BTreeSet<&String> = homes.values().collect();
    assert_eq!(distinct.len(), 3, "keys spread over every destination");
}

#[test]
fn raising_one_weight_by_10_percent_moves_few_keys_and_only_to_it() {
    let before_weights = [50.0, 30.0, 20.0];
    let mut host = start(&affinity_config(before_weights));
    let keys: Vec<String> = (0..5000).map(|i| format!("session-{i:05}")).collect();
    let map_all = |host: &mut Host| -> Vec<String> {
        keys.iter()
            .map(|k| {
                let mut req = request("reviews", "/");
                req.push(("x-user-id", k.as_str()));
                route(host, 0, &req).expect("routed")
            })
            .collect()
    };
    let before = map_all(&mut host);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for d in &before {
        *counts.entry(d.clone()).or_default() += 1;
    }
    // Weighted rendezvous: shares follow the weights.
    for (name, expected) in [("east", 0.5), ("west", 0.3), ("south", 0.2)] {
        assert!(
            (share(&counts, name) - expected).abs() < 0.03,
            "{name}: {counts:?}"
        );
    }

    // west: 30 → 33 (+10%).
    assert!(
        host.reconfigure(affinity_config([50.0, 33.0, 20.0]).to_string())
            .unwrap(),
        "{}",
        host.logs_text()
    );
    let after = map_all(&mut host);
    let moved: Vec<(usize, &String, &String)> = before
        .iter()
        .zip(&after)
        .enumerate()
        .filter(|(_, (b, a))| b != a)
        .map(|(i, (b, a))| (i, b, a))
        .collect();
    let fraction = moved.len() as f64 / keys.len() as f64;
    assert!(fraction <= 0.11, "{:.1}% of keys moved", fraction * 100.0);
    // The minimum disruption: west's share grows from 30/100 to 33/103,
    // about 2 points; far fewer than 11%.
    assert!(
        fraction > 0.005 && fraction < 0.04,
        "{:.2}% of keys moved (expected ≈2%)",
        fraction * 100.0
    );
    for (i, from, to) in &moved {
        assert_eq!(
            to.as_str(),
            "west",
            "{} moved {from} -> {to}, not to the destination whose weight rose",
            keys[*i]
        );
    }
}

// --- 3. ejection, backoff and failover on the fake clock --------------------------

/// Three destinations, this proxy in region-1/zone-a: `east` is far
/// (region-2), `near` shares the zone, `mid` shares only the region.
fn ejection_config() -> Value {
    json!({
        "services": [service(static_only(), json!([
            { "name": "east", "locality": "region-2/zone-a", "weight": 1 },
            { "name": "mid", "locality": "region-1/zone-b", "weight": 1 },
            { "name": "near", "locality": "region-1/zone-a", "weight": 1 }
        ]))],
        "scheduler": { "ejectBaseMs": 1000, "ejectMaxMs": 30000, "tickMs": 100 }
    })
}

fn ejection_host(config: &Value) -> Host {
    HostBuilder::from_file(env::filter_wasm())
        .unwrap()
        .plugin_config_json(config)
        .cluster_id("cluster-local")
        .locality("region-1", "zone-a", "")
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Requests until `failing` has answered `n` 503s in a row (the others
/// answer 200); returns how many requests it took.
fn fail_until_ejected(host: &mut Host, failing: &[&str], metric: &str) -> u32 {
    let before = counter(host, metric);
    let req = request("reviews", "/");
    for i in 1..=1000 {
        serve(host, 0, &req, |d| {
            (
                Duration::ZERO,
                if d.is_some_and(|d| failing.contains(&d)) {
                    503
                } else {
                    200
                },
            )
        });
        if counter(host, metric) > before {
            return i;
        }
    }
    panic!("{metric} never counted an ejection:\n{}", host.logs_text());
}

/// `n` requests now (503 from `failing`); counts by destination.
fn burst(host: &mut Host, n: u32, failing: &[&str]) -> BTreeMap<String, u32> {
    let req = request("reviews", "/");
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (d, _) = serve(host, 0, &req, |d| {
            (
                Duration::ZERO,
                if d.is_some_and(|d| failing.contains(&d)) {
                    503
                } else {
                    200
                },
            )
        });
        *counts
            .entry(d.unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    counts
}

#[test]
fn active_probes_decide_re_admission_without_a_client_request() {
    let mut config = ejection_config();
    config["services"][0]["probe"] =
        json!({ "cluster": "probe-{destination}", "path": "/healthz", "timeoutMs": 500 });
    let mut host = ejection_host(&config);
    host.known_clusters(&["probe-east", "probe-mid", "probe-near"]);
    // East's health endpoint fails once, then passes.
    host.add_http_rule(HttpRule {
        upstream: Some("probe-east".into()),
        reply: HttpReply::status(503, ""),
        delay: Duration::ZERO,
        times: Some(1),
    });
    host.on_http_call(
        Some("probe-east"),
        HttpReply::status(200, ""),
        Duration::ZERO,
    );
    let ejections = "tideway.ejections.reviews.east";
    fail_until_ejected(&mut host, &["east"], ejections);
    assert!(host.http_calls().is_empty(), "no probe while ejected");

    // The ejection ends; the next tick probes, the probe fails: ejected
    // again for twice as long, and no client request went to east.
    let mut to_east = 0;
    for _ in 0..12 {
        host.advance(ms(100)).unwrap();
        to_east += tally(&burst(&mut host, 6, &["east"]), "east");
    }
    assert_eq!(to_east, 0, "a client request was risked on east");
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].upstream, "probe-east");
    assert_eq!(calls[0].headers.get(":path").as_deref(), Some("/healthz"));
    assert_eq!(calls[0].headers.get(":method").as_deref(), Some("GET"));
    assert_eq!(
        calls[0].headers.get(":authority").as_deref(),
        Some("reviews")
    );
    assert_eq!(calls[0].timeout, ms(500));
    assert_eq!(counter(&mut host, ejections), 2);
    assert!(
        host.logged("ejected reviews/east for 2000 ms"),
        "{}",
        host.logs_text()
    );

    // Two seconds on, the next probe passes and east gets traffic again.
    for _ in 0..21 {
        host.advance(ms(100)).unwrap();
        to_east += tally(&burst(&mut host, 6, &[]), "east");
    }
    assert_eq!(host.http_calls().len(), 2);
    assert!(to_east > 0, "east never re-admitted");
    assert_eq!(counter(&mut host, ejections), 2);
}

#[test]
fn an_unknown_probe_cluster_falls_back_to_client_re_admission() {
    let mut config = ejection_config();
    config["services"][0]["probe"] = json!({ "cluster": "nowhere-{destination}" });
    let mut host = ejection_host(&config);
    host.known_clusters(&["probe-east"]);
    fail_until_ejected(&mut host, &["east"], "tideway.ejections.reviews.east");
    let mut to_east = 0;
    for _ in 0..13 {
        host.advance(ms(100)).unwrap();
        to_east += tally(&burst(&mut host, 6, &[]), "east");
    }
    assert!(to_east > 0, "east stayed out for good");
    assert!(
        host.logged("probe of reviews/east to cluster \"nowhere-east\" not sent"),
        "{}",
        host.logs_text()
    );
}

#[test]
fn five_503s_eject_for_1s_then_2s_and_failover_prefers_the_same_zone() {
    let mut host = ejection_host(&ejection_config());
    let ejections = "tideway.ejections.reviews.east";
    let failover =
        |h: &mut Host, d: &str| counter(h, &format!("tideway.requests.reviews.{d}.failover"));

    fail_until_ejected(&mut host, &["east"], ejections);
    assert_eq!(counter(&mut host, ejections), 1);
    assert_eq!(
        counter(&mut host, "tideway.requests.reviews.east.static"),
        5,
        "exactly 5 consecutive 503s eject"
    );
    assert!(
        host.logged("ejected reviews/east for 1000 ms"),
        "{}",
        host.logs_text()
    );

    // Ejected for [t, t+1s): no request reaches east; its share fails over
    // to the same-zone destination, never to the same-region one.
    for _ in 0..99 {
        host.advance(ms(10)).unwrap();
        let counts = burst(&mut host, 6, &["east"]);
        assert_eq!(
            tally(&counts, "east"),
            0,
            "east got traffic while ejected: {counts:?}"
        );
    }
    host.advance(ms(9)).unwrap(); // t + 999 ms
    let counts = burst(&mut host, 60, &["east"]);
    assert_eq!(
        tally(&counts, "east"),
        0,
        "east got traffic 1 ms before its return: {counts:?}"
    );
    assert!(
        failover(&mut host, "near") > 150,
        "east's third of ~650 requests fails over to near: {}",
        failover(&mut host, "near")
    );
    assert_eq!(
        failover(&mut host, "mid"),
        0,
        "the same zone comes before the same region"
    );
    assert_eq!(failover(&mut host, "east"), 0);

    // t + 1 s: east is back.
    host.advance(ms(1)).unwrap();
    let counts = burst(&mut host, 60, &[]);
    assert!(
        tally(&counts, "east") > 5,
        "east gets traffic again at +1 s: {counts:?}"
    );

    // It fails again: the second ejection lasts twice as long.
    fail_until_ejected(&mut host, &["east"], ejections);
    assert_eq!(counter(&mut host, ejections), 2);
    assert!(
        host.logged("ejected reviews/east for 2000 ms"),
        "{}",
        host.logs_text()
    );
    for _ in 0..19 {
        host.advance(ms(100)).unwrap();
        let counts = burst(&mut host, 6, &["east"]);
        assert_eq!(
            tally(&counts, "east"),
            0,
            "east got traffic during its 2 s ejection: {counts:?}"
        );
    }
    host.advance(ms(99)).unwrap(); // t2 + 1999 ms
    assert_eq!(tally(&burst(&mut host, 60, &["east"]), "east"), 0);
    host.advance(ms(1)).unwrap(); // t2 + 2 s
    let counts = burst(&mut host, 60, &[]);
    assert!(
        tally(&counts, "east") > 5,
        "east is back at +2 s: {counts:?}"
    );
    assert_eq!(counter(&mut host, ejections), 2);

    // A third ejection doubles again (4 s).
    fail_until_ejected(&mut host, &["east"], ejections);
    assert!(
        host.logged("ejected reviews/east for 4000 ms"),
        "{}",
        host.logs_text()
    );
}

#[test]
fn back_on_probation_the_first_failure_re_ejects_for_twice_as_long() {
    let mut host = ejection_host(&ejection_config());
    let ejections = "tideway.ejections.reviews.east";
    let to_east = |h: &mut Host| -> u64 {
        ["static", "failover", "score"]
            .iter()
            .map(|r| counter(h, &format!("tideway.requests.reviews.east.{r}")))
            .sum()
    };
    fail_until_ejected(&mut host, &["east"], ejections);
    assert_eq!(to_east(&mut host), 5);
    // east is still down when it returns: one request finds out, and it is
    // out again at once, for 2 s, then 4 s.
    for (n, backoff_ms) in [(2u64, 2000u64), (3, 4000)] {
        let previous_ms = backoff_ms / 2;
        host.advance(ms(previous_ms - 1)).unwrap();
        let sent = to_east(&mut host);
        burst(&mut host, 60, &["east"]);
        assert_eq!(
            to_east(&mut host),
            sent,
            "east got traffic before its return"
        );
        host.advance(ms(1)).unwrap();
        let counts = burst(&mut host, 60, &["east"]);
        assert_eq!(
            tally(&counts, "east"),
            1,
            "on probation one failure re-ejects: {counts:?}"
        );
        assert_eq!(counter(&mut host, ejections), n);
        assert!(
            host.logged(&format!("ejected reviews/east for {backoff_ms} ms")),
            "{}",
            host.logs_text()
        );
    }
    // Back after 4 s and healthy: one success ends the probation, and a
    // single failure no longer ejects.
    host.advance(ms(4000)).unwrap();
    let mut healthy = 0;
    while healthy == 0 {
        healthy = tally(&burst(&mut host, 1, &[]), "east");
    }
    let req = request("reviews", "/");
    let mut failed = 0;
    while failed < 3 {
        let (d, _) = serve(&mut host, 0, &req, |d| {
            (Duration::ZERO, if d == Some("east") { 503 } else { 200 })
        });
        failed += u32::from(d.as_deref() == Some("east"));
    }
    assert_eq!(
        counter(&mut host, ejections),
        3,
        "three failures after a success do not eject"
    );
}

#[test]
fn failover_goes_same_zone_then_same_region_then_mesh_default() {
    // far takes almost all traffic; near (same zone) and mid (same region)
    // have a token weight each.
    let config = json!({
        "services": [service(static_only(), json!([
            { "name": "far", "locality": "region-2/zone-a", "weight": 98 },
            { "name": "mid", "locality": "region-1/zone-b", "weight": 1 },
            { "name": "near", "locality": "region-1/zone-a", "weight": 1 }
        ]))],
        "scheduler": { "ejectBaseMs": 60000, "ejectMaxMs": 60000 }
    });
    let mut host = ejection_host(&config);
    fail_until_ejected(&mut host, &["far"], "tideway.ejections.reviews.far");
    let counts = burst(&mut host, 200, &[]);
    assert_eq!(tally(&counts, "far"), 0, "{counts:?}");
    assert!(
        tally(&counts, "near") > 180,
        "far's traffic goes to the same zone: {counts:?}"
    );
    assert!(counter(&mut host, "tideway.requests.reviews.near.failover") > 180);

    // near fails too: the same region is next.
    fail_until_ejected(
        &mut host,
        &["far", "near"],
        "tideway.ejections.reviews.near",
    );
    let before = counter(&mut host, "tideway.requests.reviews.mid.failover");
    let counts = burst(&mut host, 200, &[]);
    assert_eq!(
        tally(&counts, "far") + tally(&counts, "near"),
        0,
        "{counts:?}"
    );
    assert_eq!(tally(&counts, "mid"), 200, "{counts:?}");
    assert!(counter(&mut host, "tideway.requests.reviews.mid.failover") - before > 180);

    // Everything ejected: no routing header, the mesh default serves.
    fail_until_ejected(
        &mut host,
        &["far", "near", "mid"],
        "tideway.ejections.reviews.mid",
    );
    let (d, forwarded) = serve(&mut host, 0, &request("reviews", "/"), |_| {
        (Duration::ZERO, 200)
    });
    assert_eq!(
        d, None,
        "no routing header when every destination is ejected"
    );
    assert_eq!(forwarded.get("x-cluster-target"), None);
    assert_eq!(forwarded.get("x-service-name").as_deref(), Some("reviews"));
    assert!(counter(&mut host, "tideway.requests.reviews.none.mesh_default") >= 1);
}

#[test]
fn an_explicit_failover_list_overrides_locality() {
    let mut config = ejection_config();
    config["services"][0]["failover"] = json!(["mid"]);
    config["scheduler"]["ejectBaseMs"] = json!(60000);
    config["scheduler"]["ejectMaxMs"] = json!(60000);
    let mut host = ejection_host(&config);
    fail_until_ejected(&mut host, &["east"], "tideway.ejections.reviews.east");
    burst(&mut host, 300, &[]);
    assert!(counter(&mut host, "tideway.requests.reviews.mid.failover") > 60);
    assert_eq!(
        counter(&mut host, "tideway.requests.reviews.near.failover"),
        0
    );
}

// --- 4. trace context -------------------------------------------------------------

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
const OUR_MEMBER: &str = "tideway=s:cluster-local;t:cluster-east";

fn trace_host(tracing: Value) -> Host {
    let config = json!({
        "services": [{ "name": "reviews", "hosts": ["reviews"],
            "destinations": [{ "name": "east", "cluster": "cluster-east" }] }],
        "scheduler": { "tickMs": 100 },
        "tracing": tracing
    });
    HostBuilder::from_file(env::filter_wasm())
        .unwrap()
        .plugin_config_json(&config)
        .cluster_id("cluster-local")
        .locality("region-1", "zone-a", "")
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The request headers forwarded for a request with these extra headers.
fn traced(host: &mut Host, extra: &[(&str, &str)]) -> HeaderMap {
    let mut req = request("reviews", "/");
    req.extend_from_slice(extra);
    serve(host, 0, &req, |_| (ms(3), 200)).1
}

/// `version-traceid-parentid-flags` of a valid version-00 traceparent.
fn parse_tp(tp: &str) -> [String; 4] {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert_eq!(parts[0], "00", "{tp}");
    assert!(
        lower_hex(parts[1], 32) && parts[1] != "0".repeat(32),
        "{tp}"
    );
    assert!(
        lower_hex(parts[2], 16) && parts[2] != "0".repeat(16),
        "{tp}"
    );
    assert!(lower_hex(parts[3], 2), "{tp}");
    [0, 1, 2, 3].map(|i| parts[i].to_string())
}

#[test]
fn w3c_valid_traceparent_and_tracestate_pass_unchanged_in_propagate_mode() {
    let mut host = trace_host(json!({}));
    let up = traced(
        &mut host,
        &[("traceparent", TP), ("tracestate", TRACESTATE)],
    );
    assert_eq!(up.get_all("traceparent"), vec![TP.to_string()]);
    // Propagate mode keeps the parent-id, so it has no member of its own to
    // write: tracestate is forwarded untouched.
    assert_eq!(up.get_all("tracestate"), vec![TRACESTATE.to_string()]);

    // An earlier hop's member of ours is forwarded as it came.
    let up = traced(
        &mut host,
        &[
            ("traceparent", TP),
            ("tracestate", "tideway=s:a;t:b,congo=t61rcWkgMzE"),
        ],
    );
    assert_eq!(
        up.get("tracestate").as_deref(),
        Some("tideway=s:a;t:b,congo=t61rcWkgMzE")
    );

    // Not sampled (flags 00) passes unchanged too, and gains no tracestate.
    let unsampled = TP.replace("-01", "-00");
    let up = traced(&mut host, &[("traceparent", unsampled.as_str())]);
    assert_eq!(up.get("traceparent").as_deref(), Some(unsampled.as_str()));
    assert_eq!(up.get("tracestate"), None);
}

#[test]
fn w3c_invalid_or_duplicated_traceparent_starts_a_new_valid_trace() {
    let mut host = trace_host(json!({}));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "uppercase",
            vec![(
                "traceparent",
                "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            )],
        ),
        (
            "zero trace id",
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            )],
        ),
        (
            "zero parent id",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            )],
        ),
        (
            "version ff",
            vec![(
                "traceparent",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        ),
        (
            "version 00 with a suffix",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            )],
        ),
        (
            "short",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            )],
        ),
        ("garbage", vec![("traceparent", "garbage")]),
        ("duplicated", vec![("traceparent", TP), ("traceparent", TP)]),
        ("missing", vec![]),
    ];
    let mut trace_ids = BTreeSet::new();
    for (what, mut headers) in cases {
        headers.push(("tracestate", TRACESTATE));
        let up = traced(&mut host, &headers);
        let tps = up.get_all("traceparent");
        assert_eq!(tps.len(), 1, "{what}: {tps:?}");
        let [_, trace, parent, flags] = parse_tp(&tps[0]);
        assert_ne!(
            trace, TRACE_ID,
            "{what}: the invalid trace id was kept: {}",
            tps[0]
        );
        assert_ne!(parent, PARENT_ID, "{what}: {}", tps[0]);
        assert_eq!(flags, "01", "{what}: sampleRatio 1 samples new traces");
        // A new trace discards the old tracestate (it described another
        // trace), and propagate mode writes no member of its own.
        assert_eq!(up.get_all("tracestate"), Vec::<String>::new(), "{what}");
        assert!(trace_ids.insert(trace), "{what}: a new trace id is new");
    }
}

#[test]
fn w3c_a_future_version_is_downgraded_to_00_with_the_same_ids() {
    let mut host = trace_host(json!({}));
    for future in [
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-will-be-like",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ] {
        let up = traced(
            &mut host,
            &[("traceparent", future), ("tracestate", TRACESTATE)],
        );
        assert_eq!(up.get_all("traceparent"), vec![TP.to_string()], "{future}");
        // Still the caller's trace: its tracestate is forwarded untouched.
        assert_eq!(up.get("tracestate").as_deref(), Some(TRACESTATE));
    }
    // A future version with a non-dash after the flags is invalid.
    let up = traced(
        &mut host,
        &[(
            "traceparent",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01.x",
        )],
    );
    assert_ne!(parse_tp(&up.get("traceparent").unwrap())[1], TRACE_ID);
}

fn collector_tracing(extra: Value) -> Value {
    let mut t =
        json!({ "mode": "span", "collector": { "cluster": "otel-collector", "batchSize": 8 } });
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    t
}

/// `tracing.collector.flushMs` by default, and one tick to notice.
const DEFAULT_FLUSH: Duration = Duration::from_millis(5000 + 200);

fn exported_spans(host: &Host) -> Vec<Value> {
    host.http_calls()
        .iter()
        .filter(|c| c.upstream == "otel-collector")
        .flat_map(|c| {
            let export: Value = serde_json::from_slice(&c.body).expect("OTLP JSON");
            export["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn span_mode_new_parent_id_downstream_and_the_exported_span_obeys_the_parent_id_rule() {
    let mut host = trace_host(collector_tracing(json!({})));
    host.on_http_call(
        Some("otel-collector"),
        HttpReply::status(200, ""),
        Duration::ZERO,
    );
    let mut downstream_parents = Vec::new();
    for _ in 0..3 {
        let up = traced(
            &mut host,
            &[("traceparent", TP), ("tracestate", TRACESTATE)],
        );
        let [_, trace, parent, flags] = parse_tp(&up.get("traceparent").expect("traceparent"));
        assert_eq!(trace, TRACE_ID, "same trace");
        assert_eq!(flags, "01");
        assert_ne!(parent, PARENT_ID, "a new parent-id goes downstream");
        assert_eq!(
            up.get("tracestate").as_deref(),
            Some(format!("{OUR_MEMBER},{TRACESTATE}").as_str())
        );
        downstream_parents.push(parent);
    }
    let distinct: BTreeSet<&String> = downstream_parents.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each request is its own span: {downstream_parents:?}"
    );
    // Not sampled: no span is recorded.
    traced(
        &mut host,
        &[("traceparent", TP.replace("-01", "-00").as_str())],
    );

    assert!(
        host.http_calls().is_empty(),
        "spans are exported on the tick, not per request"
    );
    host.advance(host.tick_period(0)).unwrap();
    assert!(
        host.http_calls().is_empty(),
        "a batch that is not full waits for more spans (flushMs)"
    );
    host.advance(DEFAULT_FLUSH).unwrap();
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "one batch once flushMs passed: {calls:?}");
    let call = &calls[0];
    assert_eq!(call.headers.get(":method").as_deref(), Some("POST"));
    assert_eq!(call.headers.get(":path").as_deref(), Some("/v1/traces"));
    assert_eq!(
        call.headers.get("content-type").as_deref(),
        Some("application/json")
    );
    let spans = exported_spans(&host);
    assert_eq!(
        spans.len(),
        3,
        "the unsampled request has no span: {spans:?}"
    );
    for (span, parent) in spans.iter().zip(&downstream_parents) {
        assert_eq!(span["traceId"], TRACE_ID);
        assert_eq!(
            span["parentSpanId"], PARENT_ID,
            "the span's parent is the incoming parent-id"
        );
        assert_eq!(
            span["spanId"].as_str(),
            Some(parent.as_str()),
            "the span is the downstream parent-id"
        );
    }
    assert_eq!(counter(&mut host, "tideway.spans.exported"), 3);
    host.advance(host.tick_period(0) * 3).unwrap();
    assert_eq!(host.http_calls().len(), 1, "nothing new to export");
}

#[test]
fn span_mode_a_full_batch_goes_at_the_next_tick_the_rest_waits_for_flush_ms() {
    let mut host = trace_host(collector_tracing(json!({})));
    host.on_http_call(
        Some("otel-collector"),
        HttpReply::status(200, ""),
        Duration::ZERO,
    );
    // batchSize 8: nine spans are one full batch and one started.
    for _ in 0..9 {
        traced(&mut host, &[("traceparent", TP)]);
    }
    host.advance(host.tick_period(0)).unwrap();
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1, "the full batch at once: {calls:?}");
    assert_eq!(exported_spans(&host).len(), 8);
    host.advance(Duration::from_millis(4000)).unwrap();
    assert_eq!(host.http_calls().len(), 1, "the ninth waits for flushMs");
    host.advance(Duration::from_millis(1200)).unwrap();
    assert_eq!(host.http_calls().len(), 2);
    assert_eq!(exported_spans(&host).len(), 9);
    assert_eq!(counter(&mut host, "tideway.spans.exported"), 9);
}

#[test]
fn span_mode_a_new_trace_has_a_root_span() {
    let mut host = trace_host(collector_tracing(json!({})));
    host.on_http_call(
        Some("otel-collector"),
        HttpReply::status(200, ""),
        Duration::ZERO,
    );
    let up = traced(&mut host, &[("traceparent", "garbage")]);
    let [_, trace, parent, _] = parse_tp(&up.get("traceparent").unwrap());
    host.advance(DEFAULT_FLUSH).unwrap();
    let spans = exported_spans(&host);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["traceId"].as_str(), Some(trace.as_str()));
    assert_eq!(spans[0]["spanId"].as_str(), Some(parent.as_str()));
    assert!(
        spans[0]
            .get("parentSpanId")
            .is_none_or(|p| p.is_null() || p == ""),
        "a root span: {}",
        spans[0]
    );
}

const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";
const B3_PARENT: &str = "05e3ac9a4f6e3b90";

#[test]
fn b3_multi_and_single_are_written_consistent_with_traceparent() {
    let mut host = trace_host(json!({ "b3": true, "legacyHeaders": true }));
    // From a traceparent (propagate mode): B3 carries the same ids.
    let up = traced(&mut host, &[("traceparent", TP)]);
    assert_eq!(up.get("traceparent").as_deref(), Some(TP));
    assert_eq!(
        up.get("b3").as_deref(),
        Some(format!("{TRACE_ID}-{PARENT_ID}-1").as_str())
    );
    assert_eq!(up.get("x-b3-traceid").as_deref(), Some(TRACE_ID));
    assert_eq!(up.get("x-b3-spanid").as_deref(), Some(PARENT_ID));
    assert_eq!(up.get("x-b3-sampled").as_deref(), Some("1"));
    assert_eq!(up.get("x-b3-parentspanid"), None);
    assert_eq!(up.get("x-trace-id").as_deref(), Some(TRACE_ID));
    assert_eq!(up.get("x-span-id").as_deref(), Some(PARENT_ID));

    // From B3 multi alone: traceparent is built from it, B3 kept as is.
    let up = traced(
        &mut host,
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-parentspanid", B3_PARENT),
            ("x-b3-sampled", "1"),
        ],
    );
    assert_eq!(
        up.get("traceparent"),
        Some(format!("00-{B3_TRACE}-{B3_SPAN}-01"))
    );
    assert_eq!(up.get("x-b3-traceid").as_deref(), Some(B3_TRACE));
    assert_eq!(up.get("x-b3-spanid").as_deref(), Some(B3_SPAN));
    assert_eq!(up.get("x-b3-parentspanid").as_deref(), Some(B3_PARENT));
    assert_eq!(up.get("x-b3-sampled").as_deref(), Some("1"));
    // Propagate mode: no tracestate member of ours.
    assert_eq!(up.get("tracestate"), None);
    assert_eq!(up.get("x-trace-id").as_deref(), Some(B3_TRACE));

    // From B3 single, not sampled.
    let up = traced(
        &mut host,
        &[("b3", format!("{B3_TRACE}-{B3_SPAN}-0").as_str())],
    );
    assert_eq!(
        up.get("traceparent"),
        Some(format!("00-{B3_TRACE}-{B3_SPAN}-00"))
    );

    // traceparent wins over a conflicting B3, which is rewritten to match.
    let up = traced(
        &mut host,
        &[
            ("traceparent", TP),
            ("b3", format!("{B3_TRACE}-{B3_SPAN}-1").as_str()),
        ],
    );
    assert_eq!(up.get("traceparent").as_deref(), Some(TP));
    assert_eq!(
        up.get("b3").as_deref(),
        Some(format!("{TRACE_ID}-{PARENT_ID}-1").as_str())
    );
    assert_eq!(up.get("x-b3-traceid").as_deref(), Some(TRACE_ID));

    // Disabled: B3 is neither read nor written.
    let mut plain = trace_host(json!({}));
    let up = traced(
        &mut plain,
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-sampled", "1"),
        ],
    );
    assert_ne!(parse_tp(&up.get("traceparent").unwrap())[1], B3_TRACE);
    assert_eq!(up.get("b3"), None);
    assert_eq!(up.get("x-trace-id"), None);
}

#[test]
fn b3_in_span_mode_names_the_incoming_parent() {
    let mut host = trace_host(collector_tracing(json!({ "b3": true })));
    let up = traced(&mut host, &[("traceparent", TP)]);
    let [_, trace, parent, _] = parse_tp(&up.get("traceparent").unwrap());
    assert_eq!(trace, TRACE_ID);
    assert_eq!(
        up.get("b3"),
        Some(format!("{TRACE_ID}-{parent}-1-{PARENT_ID}"))
    );
    assert_eq!(up.get("x-b3-traceid").as_deref(), Some(TRACE_ID));
    assert_eq!(up.get("x-b3-spanid"), Some(parent));
    assert_eq!(up.get("x-b3-parentspanid").as_deref(), Some(PARENT_ID));
    assert_eq!(up.get("x-b3-sampled").as_deref(), Some("1"));
}

// --- 5. workers merging statistics through shared data ----------------------------

fn two_worker_host(weights: Value) -> Host {
    let config = json!({
        "services": [service(weights, json!([{ "name": "east", "weight": 1 }, { "name": "west", "weight": 1 }]))],
        // Ticks only when the test says so.
        "scheduler": { "tickMs": 3_600_000, "ejectBaseMs": 600_000, "ejectMaxMs": 600_000 }
    });
    builder(&config).workers(2).start().unwrap()
}

fn east_share(
    host: &mut Host,
    worker: usize,
    n: u32,
    upstream: impl Fn(Option<&str>) -> (Duration, u16),
) -> f64 {
    let req = request("reviews", "/");
    let mut east = 0;
    for _ in 0..n {
        if serve(host, worker, &req, &upstream).0.as_deref() == Some("east") {
            east += 1;
        }
    }
    f64::from(east) / f64::from(n)
}

/// Worker 0 fails east until it ejects it (publishing the ejection with the
/// failure that caused it); returns the host.
fn worker_0_ejects_east() -> Host {
    let mut host = two_worker_host(static_only());
    let req = request("reviews", "/");
    let mut failures = 0;
    while counter(&mut host, "tideway.ejections.reviews.east") == 0 {
        serve(&mut host, 0, &req, |d| {
            (Duration::ZERO, if d == Some("east") { 503 } else { 200 })
        });
        failures += 1;
        assert!(failures < 100, "worker 0 never ejected east");
    }
    assert_eq!(
        east_share(&mut host, 0, 100, |_| (Duration::ZERO, 200)),
        0.0,
        "worker 0 ejected east"
    );
    host
}

#[test]
fn an_ejection_on_one_worker_reaches_the_other_at_its_next_tick() {
    let mut host = worker_0_ejects_east();
    // Worker 1 has not heard of it: successes never read shared data.
    let before = east_share(&mut host, 1, 200, |_| (Duration::ZERO, 200));
    assert!(
        before > 0.3,
        "worker 1 still routes to east before a tick: {before}"
    );
    // Worker 0 published when it ejected: worker 1's own tick is enough.
    host.tick(1).unwrap();
    let after = east_share(&mut host, 1, 300, |_| (Duration::ZERO, 200));
    assert_eq!(after, 0.0, "worker 1 still routes to east after its tick");
    assert!(counter(&mut host, "tideway.requests.reviews.west.failover") > 100);
    assert_eq!(
        counter(&mut host, "tideway.ejections.reviews.east"),
        1,
        "the merge adopts, it does not count again"
    );
}

#[test]
fn an_ejection_on_one_worker_reaches_the_other_at_its_next_failure() {
    let mut host = worker_0_ejects_east();
    // No tick anywhere: worker 1's first failure at east brings the news,
    // instead of its own streak of five.
    let req = request("reviews", "/");
    let mut sent_to_east = 0;
    while sent_to_east == 0 {
        if serve(&mut host, 1, &req, |d| {
            (Duration::ZERO, if d == Some("east") { 503 } else { 200 })
        })
        .0
        .as_deref()
            == Some("east")
        {
            sent_to_east += 1;
        }
    }
    let after = east_share(&mut host, 1, 300, |_| (Duration::ZERO, 200));
    assert_eq!(
        after, 0.0,
        "worker 1 still routes to east after one failure there"
    );
    assert_eq!(
        counter(&mut host, "tideway.ejections.reviews.east"),
        1,
        "adopted, not ejected again"
    );
}

#[test]
fn failures_on_two_workers_add_up_to_one_streak() {
    let mut host = two_worker_host(static_only());
    let req = request("reviews", "/");
    // East fails on both workers, alternately: neither sees five in a row
    // of its own before the proxy has seen five.
    let mut east_failures = [0u32; 2];
    let mut turn = 0;
    while counter(&mut host, "tideway.ejections.reviews.east") == 0 {
        let worker = turn % 2;
        let (d, _) = serve(&mut host, worker, &req, |d| {
            (Duration::ZERO, if d == Some("east") { 503 } else { 200 })
        });
        if d.as_deref() == Some("east") {
            east_failures[worker] += 1;
            turn += 1;
        }
        assert!(
            east_failures.iter().sum::<u32>() <= 5,
            "no ejection after {east_failures:?}"
        );
    }
    assert_eq!(east_failures.iter().sum::<u32>(), 5, "{east_failures:?}");
    assert!(east_failures.iter().all(|n| *n < 5), "{east_failures:?}");
    // The worker that completed the streak stops at once; the other at its
    // next failure, without ejecting again.
    let ejector = (turn - 1) % 2;
    assert_eq!(
        east_share(&mut host, ejector, 100, |_| (Duration::ZERO, 200)),
        0.0
    );
    let other = 1 - ejector;
    for _ in 0..100 {
        let (d, _) = serve(&mut host, other, &req, |d| {
            (Duration::ZERO, if d == Some("east") { 503 } else { 200 })
        });
        if d.as_deref() == Some("east") {
            break;
        }
    }
    assert_eq!(
        east_share(&mut host, other, 100, |_| (Duration::ZERO, 200)),
        0.0
    );
    assert_eq!(counter(&mut host, "tideway.ejections.reviews.east"), 1);
}

#[test]
fn a_latency_peak_on_one_worker_reaches_the_other_after_both_ticked() {
    let mut host = two_worker_host(latency_only());
    // Both workers learn: east and west answer in 2 ms.
    for w in 0..2 {
        east_share(&mut host, w, 100, |_| (ms(2), 200));
    }
    // Worker 0 sees east become 10x slower.
    let mut slow_seen = 0;
    for _ in 0..200 {
        let (d, _) = serve(&mut host, 0, &request("reviews", "/"), |d| {
            (if d == Some("east") { ms(20) } else { ms(2) }, 200)
        });
        slow_seen += u32::from(d.as_deref() == Some("east"));
    }
    assert!(slow_seen >= 1);
    let on0 = east_share(&mut host, 0, 300, |d| {
        (if d == Some("east") { ms(20) } else { ms(2) }, 200)
    });
    assert!(on0 < 0.05, "worker 0 shuns the slow east: {on0}");
    // Worker 1's own upstream view stays healthy (2 ms for both): only the
    // merge can tell it about the peak.
    let before = east_share(&mut host, 1, 300, |_| (ms(2), 200));
    assert!(before > 0.3, "worker 1 does not know yet: {before}");
    host.tick(0).unwrap();
    host.tick(1).unwrap();
    let after = east_share(&mut host, 1, 300, |_| (ms(2), 200));
    assert!(after < 0.05, "worker 1 adopted the peak: {after}");
}

// --- Envoy 1.40 serves the node only as `xds.node` --------------------------------

#[test]
fn identity_is_read_from_xds_node_when_node_is_not_served() {
    // With the locality unknown every destination would be equally close
    // and failover would follow config order (mid first).
    let config = json!({
        "services": [service(static_only(), json!([
            { "name": "far", "cluster": "cluster-far", "locality": "eu-west1/eu-west1-a", "weight": 98 },
            { "name": "mid", "cluster": "cluster-mid", "locality": "us-east1/us-east1-c", "weight": 1 },
            { "name": "near", "cluster": "cluster-near", "locality": "us-east1/us-east1-b", "weight": 1 }
        ]))],
        "scheduler": { "ejectBaseMs": 60000, "ejectMaxMs": 60000 }
    });
    let mut host = builder(&config).legacy_node(false).start().unwrap();
    let (_, up) = serve(&mut host, 0, &request("reviews", "/"), |_| {
        (Duration::ZERO, 200)
    });
    assert_eq!(
        up.get("x-cluster-source").as_deref(),
        Some("cluster-a"),
        "{}",
        host.logs_text()
    );
    assert!(!host.logged("reading property"), "{}", host.logs_text());
    fail_until_ejected(&mut host, &["far"], "tideway.ejections.reviews.far");
    burst(&mut host, 100, &[]);
    assert!(
        counter(&mut host, "tideway.requests.reviews.near.failover") > 80,
        "{:?}",
        host.metrics()
    );
    assert_eq!(
        counter(&mut host, "tideway.requests.reviews.mid.failover"),
        0
    );
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

/// Clock reads a request costs, as the built module makes them: two while
/// the rate is low, far fewer per request once a tick has seen thousands a
/// second per destination (`decision::timing`), and two again after the
/// rate falls.
#[test]
fn at_a_high_rate_most_requests_make_no_clock_read() {
    let config = json!({
        "services": [{
            "name": "reviews",
            "hosts": ["reviews"],
            "destinations": [
                { "name": "cluster-a", "weight": 70 },
                { "name": "cluster-b", "weight": 30 }
            ]
        }]
    });
    let mut host = start(&config);
    // `requests` requests, `gap` apart on the fake clock (ticks fire as
    // they fall due): the clock reads per request.
    let serve = |host: &mut Host, requests: u32, gap: Duration| -> f64 {
        let before = host.clock_reads();
        for i in 0..requests {
            host.advance(gap).expect("advance");
            let ex = host
                .exchange(
                    0,
                    &request("reviews", &format!("/{i}")),
                    &[(":status", "200")],
                )
                .expect("exchange");
            assert!(ex.upstream_request.get(ROUTING_HEADER).is_some());
        }
        (host.clock_reads() - before) as f64 / f64::from(requests)
    };
    let slow = Duration::from_millis(5);
    let fast = Duration::from_micros(50);
    // 200 a second: every request timed (two reads), plus the ticks'.
    let low = serve(&mut host, 100, slow);
    assert!(low >= 2.0, "{low} clock reads a request at 200 a second");
    // 20,000 a second for 0.5 s: the ticks set strides of about 14 and 6
    // (a: ~14,000 a second, b: ~6,000).
    serve(&mut host, 10_000, fast);
    let high = serve(&mut host, 10_000, fast);
    assert!(
        high < 0.6,
        "{high} clock reads a request at 20,000 a second"
    );
    // Back to 200 a second: after a tick, two reads a request again.
    serve(&mut host, 60, slow);
    let again = serve(&mut host, 100, slow);
    assert!(
        again >= 2.0,
        "{again} clock reads a request back at 200 a second"
    );
}
