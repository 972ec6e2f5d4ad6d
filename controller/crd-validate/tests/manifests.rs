//! Everything under `manifests/` is an object an API server accepts: the
//! CRDs, the controller's RBAC / Deployment / Service / ServiceAccount, the
//! member-cluster RBAC, the example policies and every object rendered from
//! them. And the pieces fit together: bindings name roles and accounts that
//! exist, the Service selects the Deployment's pods, probes name declared
//! ports, and the member role may apply every kind a render emits.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tideway_crd_validate::{istio_and_karmada, yaml_documents, Catalog};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
}

/// Every document under manifests/, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&manifests_dir(), &mut files);
    assert!(
        !files.is_empty(),
        "no YAML under {}",
        manifests_dir().display()
    );
    let mut out = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let docs = yaml_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        out.extend(docs.into_iter().map(|d| (file.clone(), d)));
    }
    out
}

/// Istio, Karmada, PrometheusRule, and Tideway's own CRDs from manifests/.
fn catalog(documents: &[(PathBuf, Value)]) -> Catalog {
    let mut catalog = istio_and_karmada().unwrap_or_else(|e| panic!("{e}"));
    for (file, doc) in documents {
        if doc["kind"] == "CustomResourceDefinition" {
            catalog
                .load_crd(doc, &file.display().to_string())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    catalog
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], k: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| kind(d) == k)
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn every_object_under_manifests_validates() {
    let docs = documents();
    let catalog = catalog(&docs);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, doc) in &docs {
        let shown = file
            .strip_prefix(manifests_dir())
            .unwrap_or(file)
            .display()
            .to_string();
        match kind(doc) {
            // The CRDs were loaded (and their schemas compiled) above.
            "CustomResourceDefinition" => {
                if doc["apiVersion"] != "apiextensions.k8s.io/v1" {
                    failures.push(format!(
                        "{shown}: CRD {} is not apiextensions.k8s.io/v1",
                        name(doc)
                    ));
                }
            }
            // Not an API object: kustomize's own file (checked below).
            "Kustomization" => {}
            _ => {
                if let Err(e) = catalog.validate(doc) {
                    failures.push(format!("{shown}: {e}"));
                }
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} objects invalid:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_controller_manifests_fit_together() {
    let docs = documents();
    let accounts: BTreeSet<(String, String)> = of_kind(&docs, "ServiceAccount")
        .iter()
        .map(|d| {
            (
                d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                name(d).to_string(),
            )
        })
        .collect();
    let cluster_roles: BTreeSet<&str> = of_kind(&docs, "ClusterRole")
        .iter()
        .map(|d| name(d))
        .collect();
    let roles: BTreeSet<(&str, &str)> = of_kind(&docs, "Role")
        .iter()
        .map(|d| (d["metadata"]["namespace"].as_str().unwrap_or(""), name(d)))
        .collect();
    for binding in of_kind(&docs, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(&docs, "RoleBinding"))
    {
        let namespace = binding["metadata"]["namespace"].as_str().unwrap_or("");
        let role = binding["roleRef"]["name"].as_str().unwrap_or("");
        let exists = match binding["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => cluster_roles.contains(role),
            Some("Role") => roles.contains(&(namespace, role)),
            other => panic!(
                "{} {}: roleRef.kind {other:?}",
                kind(binding),
                name(binding)
            ),
        };
        assert!(
            exists,
            "{} {}: roleRef {role} is not in manifests/",
            kind(binding),
            name(binding)
        );
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["kind"], "ServiceAccount", "{subject}");
            let key = (
                subject["namespace"].as_str().unwrap_or("").to_string(),
                subject["name"].as_str().unwrap_or("").to_string(),
            );
            assert!(
                accounts.contains(&key),
                "{}: subject {key:?} has no ServiceAccount",
                name(binding)
            );
        }
    }
    // No Secret is readable cluster-wide.
    for role in of_kind(&docs, "ClusterRole") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let resources = rule["resources"].to_string();
            assert!(
                !resources.contains("\"secrets\""),
                "ClusterRole {} grants secrets",
                name(role)
            );
        }
    }

    let deployments = of_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1, "one controller Deployment");
    let deployment = deployments[0];
    let pod = &deployment["spec"]["template"];
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("");
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap_or("");
    assert!(
        accounts.contains(&(namespace.to_string(), account.to_string())),
        "{account}"
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["args"][0], "run",
        "the controller runs `tideway run`"
    );
    let ports: BTreeSet<&str> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = container[probe]["httpGet"]["port"].as_str().unwrap_or("");
        assert!(
            ports.contains(port),
            "{probe} names port {port:?}, not one of {ports:?}"
        );
    }
    let labels = pod["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Deployment's selector misses its pods"
    );
    for service in of_kind(&docs, "Service") {
        let selects = service["spec"]["selector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(!selects.is_empty());
        assert!(
            selects.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "Service {} selects no controller pod",
            name(service)
        );
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            let target = port["targetPort"].as_str().unwrap_or("");
            assert!(
                ports.contains(target),
                "Service port targets {target:?}, not one of {ports:?}"
            );
        }
    }
    // The leader-election Lease is in the Deployment's namespace.
    assert!(
        roles.iter().any(|(ns, _)| *ns == namespace),
        "no Role in {namespace}"
    );
}

#[test]
fn the_kustomization_lists_every_file_beside_it() {
    let dir = manifests_dir().join("controller");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization.yaml");
    let kustomization = &yaml_documents(&text).expect("yaml")[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}

/// The member role may create, patch and delete every kind a render
/// emits into a member cluster (else the first apply fails with 403).
#[test]
fn the_member_role_covers_every_rendered_kind() {
    let docs = documents();
    let catalog = catalog(&docs);
    let member = of_kind(&docs, "ClusterRole")
        .into_iter()
        .filter(|r| name(r).starts_with("tideway-member"))
        .collect::<Vec<_>>();
    assert!(!member.is_empty(), "no tideway-member ClusterRole");
    let grants = |group: &str, resource: &str, verb: &str| {
        member.iter().any(|role| {
            role["rules"].as_array().into_iter().flatten().any(|rule| {
                let has = |field: &str, value: &str| {
                    rule[field]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v == value)
                };
                has("apiGroups", group)
                    && has("resources", resource)
                    && has("verbs", verb)
                    && rule.get("resourceNames").is_none()
            })
        })
    };
    let mut rendered_kinds = BTreeSet::new();
    for (file, doc) in &docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or("");
        let in_a_member = [
            "networking.istio.io/",
            "security.istio.io/",
            "extensions.istio.io/",
            "monitoring.coreos.com/",
        ]
        .iter()
        .any(|g| api_version.starts_with(g));
        if !in_a_member {
            continue;
        }
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let resource = catalog
            .plural(api_version, kind(doc))
            .unwrap_or_else(|| panic!("{}: unknown kind {}", file.display(), kind(doc)));
        rendered_kinds.insert((group.to_string(), resource.to_string()));
    }
    for (group, resource) in &rendered_kinds {
        for verb in ["get", "create", "patch", "delete"] {
            assert!(
                grants(group, resource, verb),
                "tideway-member cannot {verb} {group}/{resource}"
            );
        }
    }
}

/// The checks on the built-in kinds can fail: each mutation of a real
/// manifest is rejected at its path.
#[test]
fn broken_controller_manifests_are_rejected() {
    let docs = documents();
    let catalog = catalog(&docs);
    let find = |k: &str, n: &str| {
        docs.iter()
            .map(|(_, d)| d)
            .find(|d| kind(d) == k && name(d) == n)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} {n}"))
    };
    let rejected = |doc: &Value, path: &str, needle: &str| {
        let invalid = catalog
            .validate(doc)
            .expect_err("accepted a broken manifest");
        assert!(
            invalid.has(path, needle),
            "want {path} / {needle:?}, got\n{invalid}"
        );
    };
    let mut deployment = find("Deployment", "tideway-controller");
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "Always".into();
    rejected(
        &deployment,
        "spec.template.spec.containers[0]",
        "unknown field(s) imagePullPolicy2",
    );
    let mut deployment = find("Deployment", "tideway-controller");
    deployment["spec"]["replicas"] = "two".into();
    rejected(&deployment, "spec.replicas", "invalid type");
    let mut role = find("ClusterRole", "tideway-member");
    role["rules"][0]["verbs"] = serde_json::json!(["get", "apply"]);
    rejected(&role, "rules[0].verbs", "\"apply\" is not a verb");
    let mut role = find("ClusterRole", "tideway-member");
    role["rules"][0]["resources"] = serde_json::json!(["virtualservice"]);
    rejected(
        &role,
        "rules[0].resources",
        "\"virtualservice\" is not served",
    );
    let mut role = find("ClusterRole", "tideway-member");
    role["rules"][0]["verbs"] = serde_json::json!(["*"]);
    rejected(&role, "rules[0].verbs", "wildcard");
    let mut role = find("Role", "tideway-controller");
    role["rules"][1]["verbs"] = serde_json::json!(["create", "get"]);
    rejected(
        &role,
        "rules[1].resourceNames",
        "cannot restrict \"create\"",
    );
    let mut service = find("Service", "tideway-controller");
    service["metadata"]["namespace"] = "Tideway_System".into();
    rejected(&service, "metadata.namespace", "DNS-1123 label");
}
