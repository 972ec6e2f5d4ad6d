//! The validator against the real Istio 1.30.3 and Karmada CRDs: objects a
//! user would write pass, and each known-bad variant is rejected naming the
//! field. A validator that cannot fail would pass none of the second kind.

use serde_json::{json, Value};
use std::sync::LazyLock;
use tideway_crd_validate::{istio_and_karmada, Catalog, Invalid};

static CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| istio_and_karmada().unwrap_or_else(|e| panic!("{e}")));

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn wasm_plugin() -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "tideway-reviews", "namespace": "prod",
                     "labels": {"app.kubernetes.io/managed-by": "tideway"}},
        "spec": {
            "url": format!("oci://registry.example:5000/tideway/filter@sha256:{DIGEST}"),
            "sha256": DIGEST,
            "failStrategy": "FAIL_OPEN",
            "phase": "STATS",
            "priority": 10,
            "match": [{"mode": "CLIENT", "ports": [{"number": 9080}]}],
            "selector": {"matchLabels": {"app": "productpage"}},
            "pluginConfig": {"services": [{"name": "reviews"}]}
        }
    })
}

fn virtual_service() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "prod"},
        "spec": {
            "hosts": ["reviews.prod.svc.cluster.local", "reviews"],
            "http": [
                {"name": "east", "match": [{"headers": {"x-tideway-destination": {"exact": "east"}}}],
                 "route": [{"destination": {"host": "reviews.prod.svc.cluster.local", "subset": "east",
                                            "port": {"number": 9080}}}],
                 "timeout": "2s", "retries": {"attempts": 2, "perTryTimeout": "500ms", "retryOn": "5xx,reset"}},
                {"name": "default",
                 "route": [{"destination": {"host": "reviews.prod.svc.cluster.local"}, "weight": 100}]}
            ]
        }
    })
}

fn destination_rule() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "prod"},
        "spec": {
            "host": "reviews.prod.svc.cluster.local",
            "trafficPolicy": {
                "connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http1MaxPendingRequests": 10}},
                "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s",
                                     "maxEjectionPercent": 50},
                "tls": {"mode": "ISTIO_MUTUAL"}
            },
            "subsets": [
                {"name": "east", "labels": {"topology.istio.io/cluster": "cluster-east"}},
                {"name": "west", "labels": {"topology.istio.io/cluster": "cluster-west"}}
            ]
        }
    })
}

fn propagation_policy() -> Value {
    json!({
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": "tideway-reviews", "namespace": "prod"},
        "spec": {
            "resourceSelectors": [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "name": "reviews"}],
            "placement": {"clusterAffinity": {"clusterNames": ["cluster-east", "cluster-west"]}}
        }
    })
}

fn override_policy() -> Value {
    json!({
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "OverridePolicy",
        "metadata": {"name": "tideway-reviews", "namespace": "prod"},
        "spec": {
            "resourceSelectors": [{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                                   "name": "tideway-reviews"}],
            "overrideRules": [{
                "targetCluster": {"clusterNames": ["cluster-east"]},
                "overriders": {"plaintext": [{"path": "/spec/pluginConfig/cluster", "operator": "replace",
                                              "value": "cluster-east"}]}
            }]
        }
    })
}

fn rejected(object: &Value) -> Invalid {
    match CATALOG.validate(object) {
        Ok(()) => panic!(
            "accepted an invalid object:\n{}",
            serde_json::to_string_pretty(object).unwrap_or_default()
        ),
        Err(e) => e,
    }
}

fn assert_rejected_at(object: &Value, path: &str, needle: &str) {
    let invalid = rejected(object);
    assert!(
        invalid.has(path, needle),
        "expected a violation at {path} containing {needle:?}; got\n{invalid}"
    );
}

#[test]
fn the_catalog_has_the_kinds_tideway_renders() {
    for (api_version, kind) in [
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("networking.istio.io/v1", "VirtualService"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("networking.istio.io/v1", "ServiceEntry"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("policy.karmada.io/v1alpha1", "PropagationPolicy"),
        ("policy.karmada.io/v1alpha1", "OverridePolicy"),
    ] {
        assert!(CATALOG.knows(api_version, kind), "{api_version} {kind}");
    }
}

#[test]
fn objects_a_user_writes_pass() {
    for object in [
        wasm_plugin(),
        virtual_service(),
        destination_rule(),
        propagation_policy(),
        override_policy(),
    ] {
        if let Err(e) = CATALOG.validate(&object) {
            panic!("{e}");
        }
    }
}

#[test]
fn an_unknown_field_is_rejected_with_its_path() {
    let mut vs = virtual_service();
    vs["spec"]["http"][0]["retries"]["attemps"] = json!(3);
    assert_rejected_at(&vs, "spec.http[0].retries", "unknown field(s) attemps");
    let mut wp = wasm_plugin();
    wp["spec"]["failstrategy"] = json!("FAIL_OPEN");
    assert_rejected_at(&wp, "spec", "failstrategy");
    // pluginConfig preserves unknown fields: anything goes inside it.
    let mut wp = wasm_plugin();
    wp["spec"]["pluginConfig"]["whatever"] = json!({"deep": [1, 2]});
    assert!(CATALOG.validate(&wp).is_ok());
    // Karmada too.
    let mut pp = propagation_policy();
    pp["spec"]["placement"]["clusterAfinity"] = json!({});
    assert_rejected_at(&pp, "spec.placement", "clusterAfinity");
}

#[test]
fn a_wrong_type_or_enum_value_is_rejected() {
    let mut dr = destination_rule();
    dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"] = json!("100");
    assert_rejected_at(
        &dr,
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "\"100\"",
    );
    let mut wp = wasm_plugin();
    wp["spec"]["failStrategy"] = json!("FAIL_SOFT");
    assert_rejected_at(&wp, "spec.failStrategy", "FAIL_SOFT");
    let mut wp = wasm_plugin();
    wp["spec"]["priority"] = json!(3_000_000_000_i64);
    assert_rejected_at(&wp, "spec.priority", "3000000000");
    let mut vs = virtual_service();
    vs["spec"]["http"][1]["route"][0]["weight"] = json!(1.5);
    assert_rejected_at(&vs, "spec.http[1].route[0].weight", "1.5");
}

#[test]
fn a_header_match_with_two_match_types_is_rejected_by_one_of() {
    let mut vs = virtual_service();
    vs["spec"]["http"][0]["match"][0]["headers"]["x-tideway-destination"] =
        json!({"exact": "east", "prefix": "e"});
    assert_rejected_at(
        &vs,
        "spec.http[0].match[0].headers.x-tideway-destination",
        "more than one",
    );
}

#[test]
fn selector_and_target_refs_together_are_rejected_by_the_cel_rule() {
    let mut wp = wasm_plugin();
    wp["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "reviews"}]);
    assert_rejected_at(&wp, "spec", "only one of targetRefs or selector can be set");
    // Each alone is fine.
    wp["spec"].as_object_mut().map(|s| s.remove("selector"));
    assert!(CATALOG.validate(&wp).is_ok(), "{:?}", CATALOG.validate(&wp));
}

#[test]
fn a_bad_sha256_is_rejected() {
    for bad in [
        "ABCDEF",
        &DIGEST.to_uppercase(),
        &DIGEST[1..],
        &format!("sha256:{DIGEST}"),
    ] {
        let mut wp = wasm_plugin();
        wp["spec"]["sha256"] = json!(bad);
        assert_rejected_at(&wp, "spec.sha256", "does not match");
    }
}

#[test]
fn the_url_rule_is_evaluated_as_kubernetes_parses_urls() {
    // A registry with a port and no scheme: Go reads `localhost` as the
    // scheme, and the WasmPlugin rule rejects it.
    let mut wp = wasm_plugin();
    wp["spec"]["url"] = json!(format!("localhost:5000/tideway/filter@sha256:{DIGEST}"));
    assert_rejected_at(&wp, "spec.url", "url must have schema one of");
    let mut wp = wasm_plugin();
    wp["spec"]["url"] = json!("ftp://registry.example/filter");
    assert_rejected_at(&wp, "spec.url", "url must have schema one of");
    // Without a scheme, a plain host/path is retried as http:// and passes.
    for good in [
        "registry.example/tideway/filter".to_string(),
        format!("oci://localhost:5000/tideway/filter@sha256:{DIGEST}"),
        "https://example.com/filter.wasm".to_string(),
        "file:///opt/filter.wasm".to_string(),
    ] {
        let mut wp = wasm_plugin();
        wp["spec"]["url"] = json!(good);
        assert!(
            CATALOG.validate(&wp).is_ok(),
            "{good}: {:?}",
            CATALOG.validate(&wp)
        );
    }
}

#[test]
fn durations_below_a_millisecond_fail_the_cel_rule() {
    let mut vs = virtual_service();
    vs["spec"]["http"][0]["timeout"] = json!("500us");
    assert_rejected_at(
        &vs,
        "spec.http[0].timeout",
        "duration(self) >= duration('1ms')",
    );
    let mut dr = destination_rule();
    dr["spec"]["trafficPolicy"]["outlierDetection"]["interval"] = json!("0s");
    assert_rejected_at(
        &dr,
        "spec.trafficPolicy.outlierDetection.interval",
        "duration",
    );
    let mut dr = destination_rule();
    dr["spec"]["trafficPolicy"]["outlierDetection"]["interval"] = json!("ten seconds");
    assert_rejected_at(
        &dr,
        "spec.trafficPolicy.outlierDetection.interval",
        "could not be evaluated",
    );
}

#[test]
fn label_rules_and_map_lists() {
    let mut dr = destination_rule();
    dr["spec"]["workloadSelector"] = json!({"matchLabels": {"app.kubernetes.io/name": "rev*"}});
    assert_rejected_at(
        &dr,
        "spec.workloadSelector.matchLabels[\"app.kubernetes.io/name\"]",
        "wildcard not allowed",
    );
    dr["spec"]["workloadSelector"] = json!({"matchLabels": {"": "reviews"}});
    assert_rejected_at(
        &dr,
        "spec.workloadSelector.matchLabels",
        "key must not be empty",
    );
    let mut wp = wasm_plugin();
    wp["spec"]["match"][0]["ports"] = json!([{"number": 9080}, {"number": 9080}]);
    assert_rejected_at(&wp, "spec.match[0].ports[1]", "duplicate entry");
    let mut wp = wasm_plugin();
    wp["spec"]["targetRefs"] =
        json!([{"kind": "Service", "name": "reviews", "namespace": "other"}]);
    wp["spec"].as_object_mut().map(|s| s.remove("selector"));
    assert_rejected_at(&wp, "spec.targetRefs[0].namespace", "cross namespace");
}

#[test]
fn service_entry_and_security_rules() {
    let se = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "reviews-west", "namespace": "prod"},
        "spec": {"hosts": ["reviews.west.global"], "location": "MESH_INTERNAL", "resolution": "NONE",
                 "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
                 "endpoints": [{"address": "10.0.0.1"}]}
    });
    // resolution NONE with endpoints breaks a CEL rule.
    assert_rejected_at(&se, "spec", "endpoints");
    let mut se_ok = se.clone();
    se_ok["spec"]["resolution"] = json!("STATIC");
    assert!(
        CATALOG.validate(&se_ok).is_ok(),
        "{:?}",
        CATALOG.validate(&se_ok)
    );
    let mut se_port = se_ok.clone();
    se_port["spec"]["ports"][0]["number"] = json!(0);
    assert_rejected_at(&se_port, "spec.ports[0].number", "");

    let pa = json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "prod"},
        "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"9080": {"mode": "PERMISSIVE"}}}
    });
    // portLevelMtls needs a selector.
    assert_rejected_at(&pa, "spec", "portLevelMtls");
    let ap = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "tideway-header", "namespace": "prod"},
        "spec": {"action": "DENY", "rules": [{
            "from": [{"source": {"notPrincipals": ["*"], "serviceAccounts": ["x"]}}],
            "when": [{"key": "request.headers[x-tideway-destination]", "values": ["*"]}]}]}
    });
    assert_rejected_at(&ap, "spec.rules[0].from[0].source", "");
}

#[test]
fn metadata_and_kind_are_checked() {
    let mut vs = virtual_service();
    vs["metadata"]["name"] = json!("Reviews_VS");
    assert_rejected_at(&vs, "metadata.name", "DNS-1123");
    let mut vs = virtual_service();
    vs["metadata"]["labels"] = json!({"tideway.dev/policy": "a value with spaces"});
    assert_rejected_at(
        &vs,
        "metadata.labels[\"tideway.dev/policy\"]",
        "label value",
    );
    let mut vs = virtual_service();
    vs["apiVersion"] = json!("networking.istio.io/v2");
    assert_rejected_at(&vs, "", "no CRD serves");
}
