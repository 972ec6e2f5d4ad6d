//! `tideway render --karmada` means the same as the per-member render:
//! propagating its resource templates as Karmada would (a namespaced
//! PropagationPolicy selects templates of its own namespace by apiVersion,
//! kind and name, and places them on its `clusterAffinity.clusterNames`),
//! then applying the OverridePolicies' `plaintext` JSON-patch overriders of
//! the rules targeting a member, gives each member exactly the objects the
//! per-member render gives it. An object Karmada would not deliver, or
//! deliver unpatched, fails here with its member and name.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tideway_crd_validate::yaml_documents;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn objects(files: &[tideway_controller::render::RenderedFile]) -> Vec<(String, Value)> {
    files
        .iter()
        .flat_map(|f| {
            let dir = f.path.split('/').next().unwrap_or("").to_string();
            yaml_documents(&f.text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.path))
                .into_iter()
                .map(move |d| (dir.clone(), d))
        })
        .collect()
}

fn key(o: &Value) -> String {
    format!(
        "{} {} {}/{}",
        o["apiVersion"].as_str().unwrap_or(""),
        o["kind"].as_str().unwrap_or(""),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn selects(policy: &Value, object: &Value) -> bool {
    // A namespaced policy selects only templates of its namespace.
    if policy["metadata"]["namespace"] != object["metadata"]["namespace"] {
        return false;
    }
    policy["spec"]["resourceSelectors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["apiVersion"] == object["apiVersion"]
                && s["kind"] == object["kind"]
                && s.get("name")
                    .is_none_or(|n| *n == object["metadata"]["name"])
                && s.get("namespace")
                    .is_none_or(|n| *n == object["metadata"]["namespace"])
        })
}

/// RFC 6901 pointer → RFC 6902 add / replace / remove on `target`.
fn patch(target: &mut Value, path: &str, operator: &str, value: &Value) -> Result<(), String> {
    let (parent_path, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = if parent_path.is_empty() {
        Some(&mut *target)
    } else {
        target.pointer_mut(parent_path)
    }
    .ok_or_else(|| format!("{path}: parent {parent_path} does not exist"))?;
    let map = parent
        .as_object_mut()
        .ok_or_else(|| format!("{path}: parent is not an object"))?;
    match operator {
        "add" => {
            map.insert(last, value.clone());
        }
        "replace" => {
            if !map.contains_key(&last) {
                return Err(format!(
                    "replace {path}: no such member (Karmada fails the override)"
                ));
            }
            map.insert(last, value.clone());
        }
        "remove" => {
            map.remove(&last)
                .ok_or_else(|| format!("remove {path}: no such member"))?;
        }
        other => return Err(format!("operator {other:?}")),
    }
    Ok(())
}

#[test]
fn karmada_propagation_with_overrides_equals_the_per_member_render() {
    let fleet = std::fs::read_to_string(manifests().join("examples/fleet.yaml")).expect("fleet");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(manifests().join("examples"))
        .expect("examples")
        .flatten()
        .map(|e| e.path().join("policy.yaml"))
        .filter(|p| p.exists())
        .collect();
    examples.sort();
    assert!(examples.len() >= 6);
    for example in examples {
        let policy = std::fs::read_to_string(&example).expect("policy");
        let per_member = objects(
            &tideway_controller::render_texts(&policy, &fleet, None, false).expect("render"),
        );
        let karmada = objects(
            &tideway_controller::render_texts(&policy, &fleet, None, true)
                .expect("render --karmada"),
        );
        let is =
            |o: &Value, k: &str| o["apiVersion"] == "policy.karmada.io/v1alpha1" && o["kind"] == k;
        let propagation: Vec<&Value> = karmada
            .iter()
            .map(|(_, o)| o)
            .filter(|o| is(o, "PropagationPolicy"))
            .collect();
        let overrides: Vec<&Value> = karmada
            .iter()
            .map(|(_, o)| o)
            .filter(|o| is(o, "OverridePolicy"))
            .collect();
        let templates: Vec<&Value> = karmada
            .iter()
            .map(|(_, o)| o)
            .filter(|o| !is(o, "PropagationPolicy") && !is(o, "OverridePolicy"))
            .collect();
        let mut members: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        for (member, o) in &per_member {
            members
                .entry(member.clone())
                .or_default()
                .insert(key(o), o.clone());
        }
        assert!(members.len() >= 2, "{}", example.display());
        for (member, expected) in &members {
            let mut delivered: BTreeMap<String, Value> = BTreeMap::new();
            for template in &templates {
                let placed = propagation.iter().any(|p| {
                    let names = strings(&p["spec"]["placement"]["clusterAffinity"]["clusterNames"]);
                    selects(p, template) && (names.is_empty() || names.contains(&member.as_str()))
                });
                if !placed {
                    continue;
                }
                let mut object = (*template).clone();
                for o in overrides.iter().filter(|o| selects(o, template)) {
                    for rule in o["spec"]["overrideRules"].as_array().into_iter().flatten() {
                        if !strings(&rule["targetCluster"]["clusterNames"])
                            .contains(&member.as_str())
                        {
                            continue;
                        }
                        for op in rule["overriders"]["plaintext"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            patch(
                                &mut object,
                                op["path"].as_str().unwrap_or(""),
                                op["operator"].as_str().unwrap_or(""),
                                &op["value"],
                            )
                            .unwrap_or_else(|e| {
                                panic!("{} {member} {}: {e}", example.display(), key(template))
                            });
                        }
                        for kind in rule["overriders"]
                            .as_object()
                            .into_iter()
                            .flat_map(|m| m.keys())
                        {
                            assert_eq!(
                                kind,
                                "plaintext",
                                "{}: overrider {kind} is not modelled here",
                                example.display()
                            );
                        }
                    }
                }
                delivered.insert(key(&object), object);
            }
            let missing: Vec<&String> = expected
                .keys()
                .filter(|k| !delivered.contains_key(*k))
                .collect();
            let extra: Vec<&String> = delivered
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{} {member}: Karmada would not deliver {missing:?}, would deliver extra {extra:?}",
                example.display()
            );
            for (k, object) in &delivered {
                assert_eq!(
                    object,
                    &expected[k],
                    "{} {member}: {k} differs from the per-member render",
                    example.display()
                );
            }
        }
    }
}
