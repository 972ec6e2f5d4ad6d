//! Rendered objects → YAML files, per member cluster or for Karmada.
//!
//! On-disk layout (what `tideway render -o DIR` writes, and what tests and
//! other tools read):
//!
//! ```text
//! DIR/<member>/<NN>-<kind>-<namespace>-<name>.yaml   one object per file, apply order
//! DIR/karmada/<NN>-<kind>-<namespace>-<name>.yaml    with --karmada: the objects once,
//!                                                     plus PropagationPolicy / OverridePolicy
//! ```
//!
//! `NN` is the object's position (two digits), `kind` lowercased. Every file
//! is a single YAML document with keys in a fixed (sorted) order, so the
//! same policy always gives byte-identical files. `kubectl apply -f
//! DIR/<member>/` applies one member.

use crate::compile::{Compiled, MANAGED_BY, MANAGED_BY_LABEL};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// One file to write: its path relative to the output directory, and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub text: String,
}

/// One object as a YAML document.
pub fn to_yaml(object: &Value) -> String {
    // Values are built from our own types and JSON: always serialisable.
    yaml_serde::to_string(object).unwrap_or_default()
}

fn file_name(index: usize, object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("object").to_lowercase();
    let name = object["metadata"]["name"].as_str().unwrap_or("unnamed");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{:02}-{kind}-{ns}-{name}.yaml", index + 1),
        None => format!("{:02}-{kind}-{name}.yaml", index + 1),
    }
}

fn files(dir: &str, objects: &[Value]) -> Vec<RenderedFile> {
    objects
        .iter()
        .enumerate()
        .map(|(i, o)| RenderedFile {
            path: format!("{dir}/{}", file_name(i, o)),
            text: to_yaml(o),
        })
        .collect()
}

/// One folder per member cluster.
pub fn per_member(compiled: &Compiled) -> Vec<RenderedFile> {
    compiled
        .members()
        .iter()
        .flat_map(|(member, objects)| files(member, objects))
        .collect()
}

/// The Karmada form: the objects once (each `WasmPlugin` with an empty
/// `local`), a `PropagationPolicy` per namespace sending them to every
/// member, and an `OverridePolicy` per caller namespace filling in each
/// member's own cluster id and locality.
pub fn karmada_objects(compiled: &Compiled, policy_name: &str) -> Vec<Value> {
    let Some(first) = compiled.order.first() else {
        return Vec::new();
    };
    let template_plugins: Vec<Value> = compiled
        .plugins
        .get(first)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut p| {
            p["spec"]["pluginConfig"]["local"] = json!({});
            p
        })
        .collect();
    let mut objects = template_plugins.clone();
    objects.extend(compiled.common.iter().cloned());

    let labels = objects
        .first()
        .map(|o| o["metadata"]["labels"].clone())
        .unwrap_or_else(|| json!({ MANAGED_BY_LABEL: MANAGED_BY }));
    let name = format!("tideway-{policy_name}");

    // Namespace → the selectors of its objects (PropagationPolicy is namespaced).
    let mut by_ns: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in &objects {
        let ns = o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        by_ns.entry(ns.clone()).or_default().push(json!({
            "apiVersion": o["apiVersion"],
            "kind": o["kind"],
            "name": o["metadata"]["name"],
            "namespace": ns,
        }));
    }
    let mut policies = Vec::new();
    for (ns, selectors) in &by_ns {
        policies.push(json!({
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "PropagationPolicy",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "resourceSelectors": selectors,
                "placement": {"clusterAffinity": {"clusterNames": compiled.order}},
            },
        }));
    }
    for plugin in &template_plugins {
        let ns = plugin["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let plugin_name = plugin["metadata"]["name"].as_str().unwrap_or("");
        let rules: Vec<Value> = compiled
            .order
            .iter()
            .filter_map(|member| {
                let own = compiled
                    .plugins
                    .get(member)?
                    .iter()
                    .find(|p| p["metadata"]["namespace"] == plugin["metadata"]["namespace"])?;
                Some(json!({
                    "targetCluster": {"clusterNames": [member]},
                    "overriders": {"plaintext": [{
                        "path": "/spec/pluginConfig/local",
                        "operator": "replace",
                        "value": own["spec"]["pluginConfig"]["local"],
                    }]},
                }))
            })
            .collect();
        policies.push(json!({
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "OverridePolicy",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "resourceSelectors": [{
                    "apiVersion": plugin["apiVersion"],
                    "kind": "WasmPlugin",
                    "name": plugin_name,
                    "namespace": ns,
                }],
                "overrideRules": rules,
            },
        }));
    }
    objects.extend(policies);
    objects
}

pub fn karmada(compiled: &Compiled, policy_name: &str) -> Vec<RenderedFile> {
    files("karmada", &karmada_objects(compiled, policy_name))
}

/// Write files under `dir` (folders created). Existing files of the same
/// name are replaced; others are left alone.
pub fn write(dir: &Path, files: &[RenderedFile]) -> anyhow::Result<()> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, &f.text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
