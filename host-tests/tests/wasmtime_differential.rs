//! Differential test: the same filter module, the same plugin configuration
//! and the same requests, once in real Envoy (V8) and once in the wasmtime
//! host. Every header the filter writes must arrive upstream identically.
//!
//! Only deterministic scenarios are compared: every request carries its
//! trace context (so no random ids are generated), and the decisions are
//! session affinity (a pure function of key and weights), a spoofed routing
//! header on a service with a single usable destination, and hosts no
//! service claims. This is what makes the wasmtime host a faithful stand-in
//! for Envoy in the other tests: identity from the node (Envoy 1.40 serves
//! it as `xds.node` only, which the host is told to emulate), header-map
//! reads and writes, duplicated values and property encoding.

use std::collections::BTreeMap;
use tideway_host_tests::backend::Backend;
use tideway_host_tests::env;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};
use tideway_host_tests::wasm_host::{Host, HostBuilder};

const REVIEWS: &str = "reviews.prod.svc.cluster.local";
const RATINGS: &str = "ratings.prod.svc.cluster.local";
const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// `reviews`: three weighted destinations with header affinity (and dynamic
/// scoring, which affinity must not depend on). `ratings`: `east` is its
/// only usable destination (`west` has weight 0), so a spoofed header
/// naming `west` is visible if honoured. B3 and legacy headers on.
const CONFIG: &str = r#"{
  "services": [
    {"name": "reviews", "hosts": ["reviews.prod.svc.cluster.local"],
     "affinity": {"source": "header", "name": "x-user-id"},
     "destinations": [
       {"name": "east", "cluster": "cluster-east", "weight": 70, "locality": "region-1/zone-a"},
       {"name": "west", "cluster": "cluster-west", "weight": 20, "locality": "region-1/zone-b"},
       {"name": "south", "cluster": "cluster-south", "weight": 10, "locality": "region-2/zone-a"}]},
    {"name": "ratings", "hosts": ["ratings.prod.svc.cluster.local"],
     "destinations": [
       {"name": "east", "cluster": "cluster-east", "weight": 1},
       {"name": "west", "cluster": "cluster-west", "weight": 0}]}
  ],
  "tracing": {"b3": true, "legacyHeaders": true}
}"#;

/// Headers the filter reads or writes; everything else Envoy adds
/// (`x-request-id`, `x-forwarded-proto`, …) is not compared.
const COMPARED: &[&str] = &[
    "x-tideway-destination",
    "x-cluster-source",
    "x-cluster-target",
    "x-service-name",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-trace-id",
    "x-span-id",
];

struct Scenario {
    name: String,
    host: &'static str,
    headers: Vec<(String, String)>,
}

fn scenario(name: impl Into<String>, host: &'static str, headers: &[(&str, &str)]) -> Scenario {
    Scenario {
        name: name.into(),
        host,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn scenarios() -> Vec<Scenario> {
    let mut out = vec![
        // (a) session affinity.
        scenario(
            "alice",
            REVIEWS,
            &[
                ("x-user-id", "alice"),
                ("traceparent", TP),
                ("tracestate", TRACESTATE),
            ],
        ),
        // (b) a valid traceparent and tracestate.
        scenario(
            "w3c",
            REVIEWS,
            &[
                ("x-user-id", "carol"),
                ("traceparent", TP),
                ("tracestate", TRACESTATE),
            ],
        ),
        scenario(
            "future version",
            REVIEWS,
            &[
                ("x-user-id", "dave"),
                (
                    "traceparent",
                    "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later",
                ),
            ],
        ),
        scenario(
            "our member replaced",
            REVIEWS,
            &[
                ("x-user-id", "erin"),
                ("traceparent", TP),
                ("tracestate", "tideway=s:a;t:b,congo=t61rcWkgMzE"),
            ],
        ),
        scenario(
            "b3 multi",
            REVIEWS,
            &[
                ("x-user-id", "frank"),
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
                ("x-b3-sampled", "1"),
            ],
        ),
        scenario(
            "b3 single",
            REVIEWS,
            &[
                ("x-user-id", "grace"),
                ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
            ],
        ),
        // (c) an untrusted routing header is ignored: both re-decide.
        scenario(
            "spoofed, single destination",
            RATINGS,
            &[("x-tideway-destination", "west"), ("traceparent", TP)],
        ),
        scenario(
            "spoofed, affinity",
            REVIEWS,
            &[
                ("x-tideway-destination", "south"),
                ("x-user-id", "alice"),
                ("traceparent", TP),
            ],
        ),
        // A host no service claims passes untouched.
        scenario(
            "unclaimed host",
            "other.example.com",
            &[("traceparent", TP), ("tracestate", TRACESTATE)],
        ),
    ];
    for user in 0..24 {
        let id = format!("user-{user}");
        out.push(scenario(
            format!("affinity {id}"),
            REVIEWS,
            &[("x-user-id", id.as_str()), ("traceparent", TP)],
        ));
    }
    out
}

type Compared = BTreeMap<&'static str, Vec<String>>;

fn compared(get_all: impl Fn(&str) -> Vec<String>) -> Compared {
    COMPARED
        .iter()
        .map(|name| (*name, get_all(name)))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn in_envoy(scenarios: &[Scenario]) -> Vec<Compared> {
    let backends: Vec<Backend> = ["east", "west", "south"]
        .iter()
        .map(|n| Backend::start(n, true).expect("backend"))
        .collect();
    let dests: Vec<(&str, u16)> = backends.iter().map(|b| (b.name(), b.port)).collect();
    let mut spec = EnvoySpec::new(CONFIG, &dests);
    spec.concurrency = 2;
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new();
    scenarios
        .iter()
        .map(|s| {
            let headers: Vec<(&str, &str)> = s
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let reply = client
                .get(&envoy.url("/"), s.host, &headers)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", s.name, envoy.log_tail(30)));
            assert_eq!(reply.status, 200, "{}: {}", s.name, envoy.log_tail(30));
            let mut recorded: Vec<Vec<(String, String)>> =
                backends.iter().flat_map(|b| b.take_recorded()).collect();
            assert_eq!(recorded.len(), 1, "{}: one upstream request", s.name);
            let recorded = recorded.pop().unwrap_or_default();
            compared(|name| {
                recorded
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
        })
        .collect()
}

fn in_wasmtime(scenarios: &[Scenario]) -> (Vec<Compared>, Host) {
    let mut host = HostBuilder::from_file(env::filter_wasm())
        .expect("filter wasm")
        .plugin_config(CONFIG)
        .cluster_id("cluster-local")
        .locality("region-1", "zone-a", "")
        // Envoy 1.40 serves the node only as `xds.node`.
        .legacy_node(false)
        .workers(2)
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let results = scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut headers: Vec<(&str, &str)> = vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", s.host),
                (":path", "/"),
            ];
            headers.extend(s.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let ex = host
                .exchange(i % 2, &headers, &[(":status", "200")])
                .unwrap_or_else(|e| panic!("{}: {e:#}\n{}", s.name, host.logs_text()));
            compared(|name| ex.upstream_request.get_all(name))
        })
        .collect();
    (results, host)
}

#[test]
fn envoy_and_the_wasmtime_host_forward_identical_headers() {
    let scenarios = scenarios();
    let (host_results, host) = in_wasmtime(&scenarios);
    let envoy_results = in_envoy(&scenarios);
    let mut mismatches = Vec::new();
    for ((s, h), e) in scenarios.iter().zip(&host_results).zip(&envoy_results) {
        if h != e {
            mismatches.push(format!("{}:\n  wasmtime: {h:?}\n  envoy:    {e:?}", s.name));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} scenario(s) differ:\n{}\nhost logs:\n{}",
        mismatches.len(),
        mismatches.join("\n"),
        host.logs_text()
    );

    // The comparison is not vacuous: the filter acted in both.
    let by_name: BTreeMap<&str, &Compared> = scenarios
        .iter()
        .map(|s| s.name.as_str())
        .zip(&host_results)
        .collect();
    let get =
        |scenario: &str, header: &str| by_name[scenario].get(header).cloned().unwrap_or_default();
    assert_eq!(get("alice", "x-cluster-source"), ["cluster-local"]);
    assert_eq!(get("alice", "x-tideway-destination").len(), 1);
    assert_eq!(
        get("spoofed, affinity", "x-tideway-destination"),
        get("alice", "x-tideway-destination")
    );
    assert_eq!(get("w3c", "traceparent"), [TP]);
    // Propagate mode keeps the parent-id, so it has no member of its own to
    // write: tracestate is forwarded untouched (W3C trace-context §3.3).
    assert_eq!(get("w3c", "tracestate"), [TRACESTATE]);
    assert_eq!(get("future version", "traceparent"), [TP]);
    assert_eq!(
        get("b3 multi", "traceparent"),
        ["00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"]
    );
    assert_eq!(
        get("spoofed, single destination", "x-tideway-destination"),
        ["east"]
    );
    assert_eq!(
        get("unclaimed host", "x-tideway-destination"),
        Vec::<String>::new()
    );
    assert_eq!(get("unclaimed host", "tracestate"), [TRACESTATE]);
    let homes: std::collections::BTreeSet<String> = scenarios
        .iter()
        .zip(&host_results)
        .filter(|(s, _)| s.name.starts_with("affinity "))
        .flat_map(|(_, r)| r.get("x-tideway-destination").cloned().unwrap_or_default())
        .collect();
    assert!(
        homes.len() >= 2,
        "sessions spread over destinations: {homes:?}"
    );
}
