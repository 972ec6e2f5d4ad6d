//! What the compiled objects must say, checked on the examples and on
//! policies written to break each rule.

use serde_json::Value;
use std::path::Path;
use tideway_controller::compile::{CLUSTER_LABEL, MANAGED_BY_LABEL, POLICY_LABEL};
use tideway_controller::{compile, load, Compiled, FieldErrors};
use tideway_filter::config::PluginConfig;

const DIGEST: &str = "d9b3ffabde57d6c94660e7ae683aa14bda1f5820614b9f6d4f8ccc0b2684f01e";

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn fleet_text() -> String {
    std::fs::read_to_string(examples().join("fleet.yaml")).expect("fleet")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(examples().join(name).join("policy.yaml")).expect("policy")
}

fn compile_text(policy: &str) -> Result<Compiled, FieldErrors> {
    let policy = load::policy_from_str(policy, "policy")?;
    let fleet = load::fleet_from_str(&fleet_text(), "fleet")?;
    compile(&policy, &fleet, None)
}

fn compiled(name: &str) -> Compiled {
    compile_text(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The error list of a policy that must not compile.
fn errors_of(policy: &str) -> FieldErrors {
    match compile_text(policy) {
        Ok(_) => panic!("policy compiled but must not:\n{policy}"),
        Err(e) => e,
    }
}

fn assert_error_at(policy: &str, path: &str, value_part: &str) {
    let e = errors_of(policy);
    let hit = e.errors.iter().find(|x| x.path == path);
    let Some(hit) = hit else {
        panic!("no error at {path}; got:\n{e}");
    };
    assert!(
        hit.value.contains(value_part),
        "error at {path} does not show the value {value_part:?}: {hit}"
    );
    assert!(
        !hit.expected.is_empty(),
        "error at {path} says nothing expected: {hit}"
    );
}

#[test]
fn each_member_gets_the_filters_own_config_with_its_own_identity() {
    let c = compiled("canary");
    let fleet = load::fleet_from_str(&fleet_text(), "fleet").expect("fleet");
    for member in &fleet.spec.clusters {
        let objects = c.member(&member.name);
        let plugins = of_kind(&objects, "WasmPlugin");
        assert_eq!(plugins.len(), 2, "one WasmPlugin per caller namespace");
        for p in plugins {
            // The rendered pluginConfig is what the filter parses.
            let bytes = serde_json::to_vec(&p["spec"]["pluginConfig"]).expect("json");
            let config = PluginConfig::from_json(&bytes).expect("the filter accepts it");
            assert_eq!(config.local.cluster.as_deref(), Some(member.name.as_str()));
            assert_eq!(config.local.locality, member.locality());
            let service = &config.services[0];
            assert_eq!(service.destinations.len(), 3);
            assert_eq!(
                service.hosts,
                vec!["reviews.production.svc.cluster.local".to_string()]
            );
            // The filter serves the short names from the FQDN; whether the
            // bare `reviews` is one depends on the proxy's namespace.
            assert_eq!(
                config.local.namespace.as_deref(),
                p["metadata"]["namespace"].as_str(),
                "each WasmPlugin knows the namespace of the proxies it loads in"
            );
            assert_eq!(
                p["spec"]["url"],
                format!("oci://registry.example.com/tideway/filter@sha256:{DIGEST}")
            );
            assert_eq!(p["spec"]["sha256"], DIGEST);
            assert_eq!(p["spec"]["failStrategy"], "FAIL_OPEN");
            assert_eq!(p["spec"]["match"][0]["mode"], "CLIENT");
            assert_eq!(p["spec"]["match"][0]["ports"][0]["number"], 9080);
            assert!(p["spec"].get("targetRefs").is_none());
        }
    }
}

#[test]
fn the_members_differ_only_in_their_plugins_local_identity() {
    let c = compiled("resilience");
    let a = c.member("cluster-hangzhou");
    let b = c.member("cluster-beijing");
    assert_eq!(a.len(), b.len());
    let mut differing = Vec::new();
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            let mut x = x.clone();
            let mut y = y.clone();
            x["spec"]["pluginConfig"]["local"] = Value::Null;
            y["spec"]["pluginConfig"]["local"] = Value::Null;
            assert_eq!(x, y, "beyond local, the plugins are the same");
            differing.push(x["kind"].clone());
        }
    }
    assert_eq!(differing, vec![Value::from("WasmPlugin")]);
}

#[test]
fn subsets_select_each_member_cluster_and_routes_match_the_header_exactly() {
    let c = compiled("resilience");
    let objects = c.member("cluster-shanghai");
    let dr = of_kind(&objects, "DestinationRule")[0];
    let vs = of_kind(&objects, "VirtualService")[0];
    let subsets = dr["spec"]["subsets"].as_array().expect("subsets");
    assert_eq!(subsets.len(), 3);
    for s in subsets {
        assert_eq!(
            s["labels"][CLUSTER_LABEL], s["name"],
            "subset per member cluster"
        );
    }
    let routes = vs["spec"]["http"].as_array().expect("routes");
    assert_eq!(routes.len(), 4, "three destinations and a default");
    for (r, s) in routes.iter().zip(subsets) {
        assert_eq!(
            r["match"][0]["headers"]["x-tideway-destination"]["exact"],
            s["name"]
        );
        assert_eq!(r["route"][0]["destination"]["subset"], s["name"]);
        assert_eq!(
            r["route"][0]["destination"]["host"],
            "payment.production.svc.cluster.local"
        );
        assert_eq!(r["retries"]["attempts"], 3);
        assert_eq!(r["timeout"], "10s");
        assert_eq!(r["fault"]["abort"]["httpStatus"], 503);
    }
    let default = routes.last().expect("default");
    assert!(
        default.get("match").is_none(),
        "the default route matches everything"
    );
    assert!(default["route"][0]["destination"].get("subset").is_none());
    assert_eq!(
        dr["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
        7
    );
    assert_eq!(
        dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"],
        100
    );
}

#[test]
fn canary_routes_split_matched_requests_per_destination_and_keep_the_rest_stable() {
    let c = compiled("canary");
    let objects = c.member("cluster-hangzhou");
    let vs = of_kind(&objects, "VirtualService")[0];
    let routes = vs["spec"]["http"].as_array().expect("routes");
    // 2 conditions × (3 destinations + 1 undecided) + 3 destinations + default.
    assert_eq!(routes.len(), 2 * 4 + 3 + 1);
    let first = &routes[0];
    assert_eq!(
        first["match"][0]["headers"]["x-user-type"]["exact"],
        "internal"
    );
    assert_eq!(
        first["match"][0]["headers"]["x-tideway-destination"]["exact"],
        "cluster-hangzhou"
    );
    assert_eq!(
        first["route"][0]["destination"]["subset"],
        "cluster-hangzhou"
    );
    assert_eq!(first["route"][0]["weight"], 90);
    assert_eq!(
        first["route"][1]["destination"]["subset"],
        "cluster-hangzhou-v2"
    );
    assert_eq!(first["route"][1]["weight"], 10);
    let source = &routes[4];
    assert_eq!(source["match"][0]["sourceLabels"]["version"], "v1");
    let plain = &routes[8];
    assert_eq!(
        plain["match"][0]["headers"]["x-tideway-destination"]["exact"],
        "cluster-hangzhou"
    );
    assert_eq!(plain["route"].as_array().map(Vec::len), Some(1));
    let default = routes.last().expect("default");
    assert_eq!(default["route"][0]["destination"]["subset"], "stable");
    let dr = of_kind(&objects, "DestinationRule")[0];
    let names: Vec<&str> = dr["spec"]["subsets"]
        .as_array()
        .expect("subsets")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for n in ["cluster-hangzhou", "cluster-hangzhou-v2", "stable", "v2"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert_eq!(
        dr["spec"]["trafficPolicy"]["loadBalancer"]["simple"],
        "LEAST_REQUEST"
    );
    assert_eq!(dr["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL");
}

#[test]
fn every_object_is_labelled_for_ownership() {
    for name in [
        "canary",
        "resilience",
        "intelligent-load-balancing",
        "locality",
        "security",
        "cross-region",
    ] {
        let c = compiled(name);
        for (_, objects) in c.members() {
            for o in objects {
                assert_eq!(
                    o["metadata"]["labels"][MANAGED_BY_LABEL], "tideway",
                    "{name}: {}",
                    o["kind"]
                );
                assert!(o["metadata"]["labels"][POLICY_LABEL].is_string());
                assert!(o["metadata"]["namespace"].is_string());
            }
        }
    }
}

#[test]
fn outside_clients_cannot_choose_a_destination_by_header() {
    let c = compiled("security");
    let objects = c.member("cluster-beijing");
    let aps = of_kind(&objects, "AuthorizationPolicy");
    let deny = aps
        .iter()
        .find(|a| a["spec"]["action"] == "DENY")
        .expect("a DENY policy");
    assert_eq!(deny["metadata"]["namespace"], "istio-system");
    assert_eq!(
        deny["spec"]["selector"]["matchLabels"]["istio"],
        "ingressgateway"
    );
    assert_eq!(
        deny["spec"]["rules"][0]["when"][0]["key"],
        "request.headers[x-tideway-destination]"
    );
    let allow = aps
        .iter()
        .find(|a| a["spec"]["action"] == "ALLOW")
        .expect("ALLOW");
    assert_eq!(allow["spec"]["rules"].as_array().map(Vec::len), Some(2));
    let pa = of_kind(&objects, "PeerAuthentication")[0];
    assert_eq!(pa["spec"]["mtls"]["mode"], "STRICT");
    let wp = of_kind(&objects, "WasmPlugin")[0];
    assert_eq!(wp["spec"]["imagePullSecret"], "tideway-registry");
    assert_eq!(
        wp["spec"]["pluginConfig"]["trust"]["principals"][0],
        "spiffe://cluster.local/ns/ops/sa/canary-driver"
    );
}

#[test]
fn cross_region_service_entry_takes_localities_from_the_fleet() {
    let c = compiled("cross-region");
    let objects = c.member("cluster-hangzhou");
    let se = of_kind(&objects, "ServiceEntry")[0];
    let eps = se["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 3);
    assert_eq!(eps[2]["locality"], "north-china/beijing-a");
    assert_eq!(eps[2]["labels"][CLUSTER_LABEL], "cluster-beijing");
    assert!(of_kind(&objects, "PrometheusRule").len() == 1);
}

#[test]
fn prometheus_rule_has_the_seed_alerts_and_the_filters() {
    let c = compiled("resilience");
    let objects = c.member("cluster-hangzhou");
    let rule = of_kind(&objects, "PrometheusRule")[0];
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for a in [
        "HighErrorRate",
        "HighLatency",
        "TidewayDestinationEjected",
        "TidewayConfigRejected",
    ] {
        assert!(alerts.contains(&a), "{a} in {alerts:?}");
    }
    let ejected = rule["spec"]["groups"][0]["rules"][2]["expr"]
        .as_str()
        .expect("expr");
    assert!(
        ejected.contains("envoy_wasmcustom_tideway_ejections_payment_cluster_hangzhou"),
        "{ejected}"
    );
    let dash = of_kind(&objects, "ConfigMap")[0];
    let text = dash["data"]["tideway-payment-resilience.json"]
        .as_str()
        .expect("dashboard");
    let parsed: Value = serde_json::from_str(text).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 4));
}

#[test]
fn karmada_form_overrides_only_local_per_member() {
    let policy = example("canary");
    let files =
        tideway_controller::render_texts(&policy, &fleet_text(), None, true).expect("karmada");
    let docs: Vec<Value> = files
        .iter()
        .map(|f| yaml_serde::from_str(&f.text).expect("yaml"))
        .collect();
    let overrides = of_kind(&docs, "OverridePolicy");
    assert_eq!(overrides.len(), 2, "one per caller namespace");
    let rules = overrides[0]["spec"]["overrideRules"]
        .as_array()
        .expect("rules");
    assert_eq!(rules.len(), 3);
    for r in rules {
        let member = r["targetCluster"]["clusterNames"][0]
            .as_str()
            .expect("member");
        let o = &r["overriders"]["plaintext"][0];
        assert_eq!(o["path"], "/spec/pluginConfig/local");
        assert_eq!(o["value"]["cluster"], member);
    }
    let props = of_kind(&docs, "PropagationPolicy");
    let namespaces: Vec<&str> = props
        .iter()
        .filter_map(|p| p["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(
        namespaces,
        vec!["frontend", "istio-system", "monitoring", "production"]
    );
    for p in &props {
        for sel in p["spec"]["resourceSelectors"]
            .as_array()
            .expect("selectors")
        {
            assert_eq!(
                sel["namespace"], p["metadata"]["namespace"],
                "a PropagationPolicy selects its own namespace"
            );
        }
    }
    let plugins = of_kind(&docs, "WasmPlugin");
    assert!(plugins
        .iter()
        .all(|p| p["spec"]["pluginConfig"]["local"] == serde_json::json!({})));
    // Applying each member's override to the template gives exactly the
    // WasmPlugin the per-member render gives that member.
    let per_member = compiled("canary");
    for o in &overrides {
        let ns = &o["metadata"]["namespace"];
        let template = plugins
            .iter()
            .find(|p| &p["metadata"]["namespace"] == ns)
            .expect("template in the override's namespace");
        for r in o["spec"]["overrideRules"].as_array().expect("rules") {
            let member = r["targetCluster"]["clusterNames"][0]
                .as_str()
                .expect("member");
            let mut applied = (*template).clone();
            applied["spec"]["pluginConfig"]["local"] =
                r["overriders"]["plaintext"][0]["value"].clone();
            let own = per_member.member(member);
            let own = own
                .iter()
                .find(|p| p["kind"] == "WasmPlugin" && &p["metadata"]["namespace"] == ns)
                .expect("member plugin");
            assert_eq!(&applied, own, "{member} in {ns}");
        }
    }
}

// ---- bad policies ---------------------------------------------------------

fn resilience_with(from: &str, to: &str) -> String {
    let p = example("resilience");
    assert!(p.contains(from), "fixture text {from:?}");
    p.replacen(from, to, 1)
}

#[test]
fn unknown_field_is_refused_at_its_path() {
    let p = resilience_with(
        "  - cluster: cluster-shanghai\n",
        "  - cluster: cluster-shanghai\n    weigth: 3\n",
    );
    assert_error_at(&p, "spec.destinations[1].weigth", "weigth");
    let p = resilience_with("    retries:\n", "    retrys:\n");
    assert_error_at(&p, "spec.resilience.retrys", "retrys");
}

#[test]
fn negative_weight_is_refused() {
    let p = resilience_with(
        "  - cluster: cluster-beijing\n",
        "  - cluster: cluster-beijing\n    weight: -5\n",
    );
    assert_error_at(&p, "spec.destinations[2].weight", "-5");
}

#[test]
fn destination_outside_the_fleet_is_refused() {
    let p = resilience_with(
        "  - cluster: cluster-beijing\n",
        "  - cluster: cluster-guangzhou\n",
    );
    assert_error_at(&p, "spec.destinations[2].cluster", "cluster-guangzhou");
}

#[test]
fn duplicate_names_are_refused() {
    let p = resilience_with(
        "  - cluster: cluster-beijing\n",
        "  - cluster: cluster-beijing\n    name: cluster-shanghai\n",
    );
    assert_error_at(&p, "spec.destinations[2].name", "cluster-shanghai");
    let p = resilience_with(
        "  - cluster: cluster-beijing\n",
        "  - cluster: cluster-shanghai\n",
    );
    assert_error_at(&p, "spec.destinations[2].cluster", "cluster-shanghai");
}

#[test]
fn every_error_is_reported_at_once() {
    let p = resilience_with(
        "  - cluster: cluster-beijing\n",
        "  - cluster: nowhere\n    weight: -1\n",
    );
    let e = errors_of(&p);
    assert!(
        e.has_path("spec.destinations[2].cluster") && e.has_path("spec.destinations[2].weight"),
        "{e}"
    );
}

#[test]
fn fail_close_and_unpinned_images_are_refused() {
    let p = resilience_with("failStrategy: FAIL_OPEN", "failStrategy: FAIL_CLOSE");
    assert_error_at(&p, "spec.plugin.failStrategy", "FAIL_CLOSE");
    let p = resilience_with(&format!("filter@sha256:{DIGEST}"), "filter:v1");
    assert_error_at(&p, "spec.plugin.image", "filter:v1");
}

#[test]
fn silently_ignored_istio_settings_are_refused() {
    let p = resilience_with("consecutive5xxErrors: 7", "consecutiveErrors: 7");
    assert_error_at(
        &p,
        "spec.resilience.outlierDetection.consecutiveErrors",
        "7",
    );
    let p = example("locality").replace(
        "  resilience:\n    outlierDetection:\n      consecutiveGatewayErrors: 10\n      interval: 30s\n      baseEjectionTime: 300s\n",
        "",
    );
    let e = errors_of(&p);
    assert!(e.has_path("spec.resilience.outlierDetection"), "{e}");
}

#[test]
fn bad_durations_and_types_name_their_value() {
    let p = resilience_with("timeout: 10s", "timeout: 10");
    assert_error_at(&p, "spec.resilience.timeout", "10");
    let p = resilience_with("maxConnections: 100", "maxConnections: many");
    assert_error_at(
        &p,
        "spec.resilience.connectionPool.tcp.maxConnections",
        "many",
    );
}

#[test]
fn filter_tracing_errors_keep_their_path_under_spec() {
    let p = example("intelligent-load-balancing").replace(
        "    legacyHeaders: true\n",
        "    legacyHeaders: true\n    sampleRatio: 2\n",
    );
    assert_error_at(&p, "spec.tracing.sampleRatio", "2");
}

/// The example fleet with the hub's weights endpoint added.
fn fleet_with_weights(endpoint: &str) -> String {
    format!("{}  weightsEndpoint:\n{endpoint}", fleet_text())
}

fn compile_with_fleet(policy: &str, fleet: &str) -> Result<Compiled, FieldErrors> {
    let policy = load::policy_from_str(policy, "policy")?;
    let fleet = load::fleet_from_str(fleet, "fleet")?;
    compile(&policy, &fleet, None)
}

#[test]
fn a_fleet_weights_endpoint_gives_every_member_a_service_entry_and_a_weights_source() {
    let fleet = fleet_with_weights(
        "    host: tideway-weights.tideway-system.global\n    port: 8080\n    addresses: [10.0.0.7, 10.0.0.8]\n    waitMs: 20000\n",
    );
    let c = compile_with_fleet(&example("intelligent-load-balancing"), &fleet).expect("compiles");
    for (member, objects) in c.members() {
        let se: Vec<_> = of_kind(&objects, "ServiceEntry")
            .into_iter()
            .filter(|o| o["metadata"]["name"] == "tideway-api-intelligent-lb-weights")
            .collect();
        assert_eq!(se.len(), 1, "{member}");
        let spec = &se[0]["spec"];
        assert_eq!(spec["hosts"][0], "tideway-weights.tideway-system.global");
        assert_eq!(spec["resolution"], "STATIC", "IP addresses");
        assert_eq!(spec["ports"][0]["number"], 8080);
        assert_eq!(spec["endpoints"][1]["address"], "10.0.0.8");
        for plugin in of_kind(&objects, "WasmPlugin") {
            // Through the filter's own parser and rules.
            let config: PluginConfig =
                serde_json::from_value(plugin["spec"]["pluginConfig"].clone()).expect("parses");
            config.validate().expect("valid");
            let source = config.weights_source.expect("weightsSource");
            assert_eq!(
                source.cluster,
                "outbound|8080||tideway-weights.tideway-system.global"
            );
            assert_eq!(source.authority, "tideway-weights.tideway-system.global");
            assert_eq!(source.wait_ms, 20000);
            // The rest are the filter's defaults, not copies of them.
            let defaults: tideway_filter::config::WeightsSourceConfig =
                serde_json::from_value(serde_json::json!({"cluster": "c", "authority": "a"}))
                    .unwrap();
            assert_eq!(source.ttl_ms, defaults.ttl_ms);
            assert_eq!(source.path, defaults.path);
        }
    }
    // DNS names resolve by DNS; no addresses: no endpoints, the host itself.
    let fleet = fleet_with_weights("    host: weights.hub.example\n    port: 80\n");
    let c = compile_with_fleet(&example("canary"), &fleet).expect("compiles");
    let objects = c.member("cluster-beijing");
    let se = of_kind(&objects, "ServiceEntry")[0];
    assert_eq!(se["spec"]["resolution"], "DNS");
    assert!(se["spec"].get("endpoints").is_none(), "{se}");
    // Without the field: neither.
    let c = compiled("canary");
    let objects = c.member("cluster-beijing");
    assert!(of_kind(&objects, "ServiceEntry").is_empty());
    for plugin in of_kind(&objects, "WasmPlugin") {
        assert!(plugin["spec"]["pluginConfig"]
            .get("weightsSource")
            .is_none());
    }
}

#[test]
fn a_bad_weights_endpoint_is_refused_at_its_path() {
    for (endpoint, path, value) in [
        (
            "    host: Not_A_Host\n    port: 80\n",
            "spec.weightsEndpoint.host",
            "Not_A_Host",
        ),
        (
            "    host: w.example\n    port: 0\n",
            "spec.weightsEndpoint.port",
            "0",
        ),
        (
            "    host: w.example\n    port: 80\n    addresses: [10.0.0.1, lb.example]\n",
            "spec.weightsEndpoint.addresses",
            "lb.example",
        ),
        (
            "    host: w.example\n    port: 80\n    addresses: ['bad address']\n",
            "spec.weightsEndpoint.addresses[0]",
            "bad address",
        ),
        (
            "    host: w.example\n    port: 80\n    waitMs: 90000\n",
            "spec.weightsEndpoint.waitMs",
            "90000",
        ),
        (
            "    host: w.example\n    port: 80\n    waitMs: 1500\n",
            "spec.weightsEndpoint.waitMs",
            "1500",
        ),
    ] {
        let e = compile_with_fleet(&example("canary"), &fleet_with_weights(endpoint))
            .expect_err(endpoint);
        let hit = e.errors.iter().find(|x| x.path == path);
        assert!(
            hit.is_some_and(|h| h.value.contains(value) && !h.expected.is_empty()),
            "{endpoint}: {e}"
        );
    }
}
