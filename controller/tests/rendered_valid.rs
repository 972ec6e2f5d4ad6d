//! Every object rendered from every example policy, per member and in the
//! Karmada form, is one the API server accepts: validated, freshly
//! rendered, against Istio 1.30.3's and Karmada's CRD schemas and CEL rules
//! (tideway-crd-validate over `../shared/`), and the example policies and
//! fleet against Tideway's own generated CRDs in manifests/crds.
//!
//! Independently of the compiler's own validation, policies the project
//! did not write (the examples, broken) are tried against both the CRD
//! schema (what `kubectl apply` of the policy would say) and `render`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tideway_crd_validate::{istio_and_karmada, yaml_documents, Catalog};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Istio + Karmada + PrometheusRule + Tideway's CRDs.
fn catalog() -> Catalog {
    let mut catalog = istio_and_karmada().unwrap_or_else(|e| panic!("{e}"));
    let crds = manifests().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crds)
        .unwrap_or_else(|e| panic!("{}: {e}", crds.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut loaded = 0;
    for file in files {
        loaded += catalog
            .load_yaml(&read(&file), &file.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(
        loaded >= 2,
        "TrafficPolicy and Fleet CRDs in manifests/crds"
    );
    catalog
}

fn examples() -> Vec<PathBuf> {
    let dir = manifests().join("examples");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path().join("policy.yaml"))
        .filter(|p| p.exists())
        .collect();
    out.sort();
    assert!(
        out.len() >= 6,
        "the six examples under manifests/examples: {out:?}"
    );
    out
}

fn fleet_text() -> String {
    read(&manifests().join("examples/fleet.yaml"))
}

#[test]
fn every_object_rendered_from_every_example_validates() {
    let catalog = catalog();
    let mut failures = Vec::new();
    let mut objects = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for policy in examples() {
        let policy_text = read(&policy);
        for karmada in [false, true] {
            let files =
                tideway_controller::render_texts(&policy_text, &fleet_text(), None, karmada)
                    .unwrap_or_else(|e| panic!("{}: {e}", policy.display()));
            assert!(!files.is_empty());
            for file in files {
                let docs =
                    yaml_documents(&file.text).unwrap_or_else(|e| panic!("{}: {e}", file.path));
                for doc in docs {
                    objects += 1;
                    kinds.insert(format!(
                        "{} {}",
                        doc["apiVersion"].as_str().unwrap_or(""),
                        doc["kind"].as_str().unwrap_or("")
                    ));
                    if doc["metadata"]["namespace"].as_str().is_none()
                        && catalog.namespaced(
                            doc["apiVersion"].as_str().unwrap_or(""),
                            doc["kind"].as_str().unwrap_or(""),
                        ) == Some(true)
                    {
                        failures.push(format!(
                            "{}: {}: a namespaced object without a namespace",
                            policy.display(),
                            file.path
                        ));
                    }
                    if let Err(e) = catalog.validate(&doc) {
                        failures.push(format!("{} → {}: {e}", policy.display(), file.path));
                    }
                    // The same object, broken, must fail: the rules run on
                    // what render writes, not only on test fixtures.
                    if doc["kind"] == "WasmPlugin" && !karmada {
                        let mut both = doc.clone();
                        both["spec"]["targetRefs"] = json!([{"kind": "Service", "name": "x"}]);
                        both["spec"]["selector"] = json!({"matchLabels": {"app": "x"}});
                        let rejected = catalog.validate(&both).err();
                        assert!(
                            rejected.is_some_and(
                                |e| e.has("spec", "only one of targetRefs or selector")
                            ),
                            "{}: selector + targetRefs accepted",
                            file.path
                        );
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} invalid:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // What the examples exercise: each kind the issue asks for.
    for kind in [
        "extensions.istio.io/v1alpha1 WasmPlugin",
        "networking.istio.io/v1 VirtualService",
        "networking.istio.io/v1 DestinationRule",
        "security.istio.io/v1 PeerAuthentication",
        "security.istio.io/v1 AuthorizationPolicy",
        "networking.istio.io/v1 ServiceEntry",
        "policy.karmada.io/v1alpha1 PropagationPolicy",
        "policy.karmada.io/v1alpha1 OverridePolicy",
    ] {
        assert!(kinds.contains(kind), "no example renders {kind}: {kinds:?}");
    }
    assert!(objects > 50, "{objects} objects");
}

/// With the hub's weights endpoint in the Fleet (IP and DNS forms), every
/// rendered object still validates, the weights ServiceEntry among them,
/// and the Fleet itself passes its generated CRD.
#[test]
fn renders_with_a_weights_endpoint_validate_too() {
    let catalog = catalog();
    let mut failures = Vec::new();
    let mut weights_entries = 0;
    for endpoint in [
        "    host: tideway-weights.tideway-system.global\n    port: 8080\n    addresses: [10.0.0.7]\n    waitMs: 20000\n    ttlMs: 60000\n",
        "    host: weights.hub.example\n    port: 80\n",
    ] {
        let fleet = format!("{}  weightsEndpoint:\n{endpoint}", fleet_text());
        let fleet_doc = yaml_documents(&fleet).expect("fleet yaml").remove(0);
        if let Err(e) = catalog.validate(&fleet_doc) {
            failures.push(format!("Fleet with {endpoint:?}: {e}"));
        }
        for policy in examples() {
            for karmada in [false, true] {
                let files =
                    tideway_controller::render_texts(&read(&policy), &fleet, None, karmada)
                        .unwrap_or_else(|e| panic!("{}: {e}", policy.display()));
                for file in files {
                    for doc in yaml_documents(&file.text).expect("yaml") {
                        if doc["kind"] == "ServiceEntry"
                            && doc["metadata"]["name"]
                                .as_str()
                                .is_some_and(|n| n.ends_with("-weights"))
                        {
                            weights_entries += 1;
                        }
                        if let Err(e) = catalog.validate(&doc) {
                            failures.push(format!("{} → {}: {e}", policy.display(), file.path));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        weights_entries >= 2 * 6,
        "{weights_entries} weights ServiceEntries"
    );
}

#[test]
fn the_example_policies_and_fleet_validate_against_the_generated_crds() {
    let catalog = catalog();
    let mut texts: Vec<(PathBuf, String)> = examples()
        .into_iter()
        .map(|p| (p.clone(), read(&p)))
        .collect();
    texts.push((manifests().join("examples/fleet.yaml"), fleet_text()));
    for (path, text) in texts {
        for doc in yaml_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            if let Err(e) = catalog.validate(&doc) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}

/// The first example with `mutate` applied to its (only) document.
fn broken(mutate: impl Fn(&mut Value)) -> Value {
    let path = &examples()[0];
    let mut doc = yaml_documents(&read(path)).expect("yaml").remove(0);
    mutate(&mut doc);
    doc
}

#[test]
fn broken_policies_fail_in_the_api_server_schema_and_in_render_naming_the_field() {
    let catalog = catalog();
    let fleet = fleet_text();
    let render = |doc: &Value| {
        let text = serde_json::to_string(doc).expect("json");
        tideway_controller::render_texts(&text, &fleet, None, false)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    // An unknown field: both the CRD schema and render reject it.
    let doc = broken(|d| d["spec"]["destinations"][0]["wieght"] = json!(5));
    let invalid = catalog
        .validate(&doc)
        .expect_err("schema accepted an unknown field");
    assert!(
        invalid
            .violations
            .iter()
            .any(|v| v.path == "spec.destinations[0]" && v.message.contains("wieght")),
        "{invalid}"
    );
    let err = render(&doc).expect_err("render accepted an unknown field");
    assert!(
        err.contains("spec.destinations[0]") && err.contains("wieght"),
        "{err}"
    );

    // A negative weight.
    let doc = broken(|d| d["spec"]["destinations"][0]["weight"] = json!(-5));
    let err = render(&doc).expect_err("render accepted a negative weight");
    assert!(
        err.contains("spec.destinations[0].weight") && err.contains("-5"),
        "{err}"
    );

    // A destination for a cluster not in the fleet.
    let doc = broken(|d| d["spec"]["destinations"][0]["cluster"] = json!("cluster-nowhere"));
    let err = render(&doc).expect_err("render accepted a cluster outside the fleet");
    assert!(
        err.contains("spec.destinations[0].cluster") && err.contains("cluster-nowhere"),
        "{err}"
    );

    // A duplicate destination.
    let doc = broken(|d| {
        let first = d["spec"]["destinations"][0].clone();
        if let Some(list) = d["spec"]["destinations"].as_array_mut() {
            list.push(first);
        }
    });
    let err = render(&doc).expect_err("render accepted a duplicate destination");
    assert!(err.contains("spec.destinations["), "{err}");

    // A wrong type.
    let doc = broken(|d| d["spec"]["service"]["port"] = json!("http"));
    assert!(
        catalog.validate(&doc).is_err(),
        "schema accepted a string port"
    );
    let err = render(&doc).expect_err("render accepted a string port");
    assert!(err.contains("spec.service.port"), "{err}");
}
