//! A locality that is never silently missing: without one, locality
//! scoring and locality-ordered failover are off, so the filter says so
//! once and exposes `tideway.local.locality_known`.

use serde_json::json;
use tideway_host_tests::env;
use tideway_host_tests::wasm_host::{Host, HostBuilder};

const WARNING: &str = "locality is unknown";

fn config(local: serde_json::Value) -> serde_json::Value {
    json!({
        "services": [{
            "name": "reviews",
            "hosts": ["reviews.prod.svc.cluster.local"],
            "destinations": [
                {"name": "east", "locality": "region-1/zone-a"},
                {"name": "west", "locality": "region-2/zone-a"}
            ]
        }],
        "local": local
    })
}

fn requests(host: &mut Host, n: usize) {
    for _ in 0..n {
        let ex = host
            .exchange(
                0,
                &[
                    (":authority", "reviews.prod.svc.cluster.local"),
                    (":path", "/"),
                ],
                &[(":status", "200")],
            )
            .expect("exchange");
        assert!(ex.upstream_request.get("x-tideway-destination").is_some());
    }
}

fn gauge(host: &Host) -> Option<u64> {
    host.metric("tideway.local.locality_known").map(|m| m.value)
}

fn warnings(host: &Host) -> usize {
    host.logs()
        .iter()
        .filter(|r| r.message.contains(WARNING))
        .count()
}

#[test]
fn an_unknown_locality_is_warned_about_once_and_gauged() {
    // No node.locality (Istio sets none without the pod label or cloud
    // metadata) and no local.locality.
    let mut host = HostBuilder::from_file(env::filter_wasm())
        .expect("wasm")
        .plugin_config_json(&config(json!({})))
        .cluster_id("cluster-a")
        .start()
        .expect("start");
    requests(&mut host, 5);
    host.reconfigure(config(json!({})).to_string())
        .expect("reconfigure");
    requests(&mut host, 5);
    assert_eq!(warnings(&host), 1, "{}", host.logs_text());
    assert!(host.logged("topology.istio.io/locality"));
    assert_eq!(gauge(&host), Some(0));
}

#[test]
fn a_known_locality_is_gauged_and_not_warned_about() {
    for (builder, how) in [
        (
            HostBuilder::from_file(env::filter_wasm())
                .expect("wasm")
                .plugin_config_json(&config(json!({})))
                .cluster_id("cluster-a")
                .locality("region-1", "zone-a", ""),
            "node.locality",
        ),
        (
            HostBuilder::from_file(env::filter_wasm())
                .expect("wasm")
                .plugin_config_json(&config(json!({"locality": "region-1/zone-a"})))
                .cluster_id("cluster-a"),
            "local.locality",
        ),
    ] {
        let mut host = builder.start().expect("start");
        requests(&mut host, 3);
        assert_eq!(warnings(&host), 0, "{how}: {}", host.logs_text());
        assert_eq!(gauge(&host), Some(1), "{how}");
    }
}
