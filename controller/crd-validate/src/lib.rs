//! Validates Kubernetes objects against CustomResourceDefinitions the way an
//! API server with strict field validation (`kubectl apply`'s default) does.
//!
//! Why: every object `tideway render` writes is applied to someone's API
//! server. An object the server rejects (an unknown field, a wrong type, a
//! `url` without a scheme Istio accepts) is a failed rollout found in
//! production; found here it is a failed test naming the field.
//!
//! What is checked, per object, against the CRD version its `apiVersion`
//! names:
//! - the structural schema ([`structural`]): types, `required`, `enum`,
//!   `oneOf`/`anyOf`/`not`, patterns, lengths, bounds, formats
//!   (`int32`/`int64` ranges, `byte`, `date-time`), `nullable`,
//!   `x-kubernetes-int-or-string`, and unknown fields rejected unless
//!   `x-kubernetes-preserve-unknown-fields`;
//! - list types ([`walk`]): `x-kubernetes-list-type: map` keys and `set`
//!   items unique;
//! - the CEL rules ([`rules`], `x-kubernetes-validations`), evaluated for
//!   real with the Kubernetes URL library the Istio CRDs use;
//! - `metadata` ([`meta`]): the ObjectMeta fields and the name, namespace,
//!   label and annotation syntax the API server enforces.
//!
//! Not checked: transition rules (`oldSelf`: there is no old object at
//! creation), CEL cost limits, and what Istio's own validating webhook adds
//! beyond its CRDs (cross-object references are checked where they matter,
//! by the Envoy translation in host-tests).

pub mod builtin;
mod meta;
mod rules;
mod structural;
mod url;
mod walk;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// One reason an object is invalid: where, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path, as the project's errors name fields:
    /// `spec.http[0].route[1].weight` (empty = the object itself).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All violations of one object, named by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub object: String,
    pub violations: Vec<Violation>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid:", self.object)?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

impl Invalid {
    /// Whether some violation is at `path` (exactly) and its message
    /// contains `needle`.
    pub fn has(&self, path: &str, needle: &str) -> bool {
        self.violations
            .iter()
            .any(|v| v.path == path && v.message.contains(needle))
    }
}

/// A CRD that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{origin}: not YAML: {source}")]
    Yaml {
        origin: String,
        source: yaml_serde::Error,
    },
    #[error("{origin}: {crd}: {message}")]
    Crd {
        origin: String,
        crd: String,
        message: String,
    },
}

/// One served version of one kind.
struct Version {
    namespaced: bool,
    plural: String,
    /// Whether the version has the `status` subresource.
    status: bool,
    /// The CRD's `openAPIV3Schema`, as written (the CEL and list-type walk
    /// reads it).
    schema: Value,
    structural: jsonschema::Validator,
}

/// The kinds of a set of CRDs, by `apiVersion` and `kind`.
pub struct Catalog {
    versions: BTreeMap<(String, String), Version>,
    rules: rules::Rules,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    pub fn new() -> Self {
        Self {
            versions: BTreeMap::new(),
            rules: rules::Rules::new(),
        }
    }

    /// Loads every CustomResourceDefinition in a (multi-document) YAML
    /// text; other documents are ignored. Returns how many CRDs were read.
    /// Every CEL rule is compiled here, so a rule this validator cannot
    /// evaluate is a load error, never a rule silently skipped.
    pub fn load_yaml(&mut self, text: &str, origin: &str) -> Result<usize, LoadError> {
        let mut count = 0;
        for document in yaml_serde::Deserializer::from_str(text) {
            let value: Value =
                serde::Deserialize::deserialize(document).map_err(|source| LoadError::Yaml {
                    origin: origin.to_string(),
                    source,
                })?;
            if value.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                self.load_crd(&value, origin)?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// Loads one CustomResourceDefinition (apiextensions.k8s.io/v1).
    pub fn load_crd(&mut self, crd: &Value, origin: &str) -> Result<(), LoadError> {
        let name = crd["metadata"]["name"].as_str().unwrap_or("?").to_string();
        let fail = |message: String| LoadError::Crd {
            origin: origin.to_string(),
            crd: name.clone(),
            message,
        };
        let spec = &crd["spec"];
        let group = spec["group"]
            .as_str()
            .ok_or_else(|| fail("no spec.group".into()))?;
        let kind = spec["names"]["kind"]
            .as_str()
            .ok_or_else(|| fail("no spec.names.kind".into()))?;
        let plural = spec["names"]["plural"]
            .as_str()
            .ok_or_else(|| fail("no spec.names.plural".into()))?;
        let namespaced = match spec["scope"].as_str() {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => return Err(fail(format!("spec.scope is {other:?}"))),
        };
        let versions = spec["versions"]
            .as_array()
            .ok_or_else(|| fail("no spec.versions".into()))?;
        for version in versions {
            if version["served"].as_bool() != Some(true) {
                continue;
            }
            let version_name = version["name"]
                .as_str()
                .ok_or_else(|| fail("a version without a name".into()))?;
            let schema = version["schema"]["openAPIV3Schema"].clone();
            if !schema.is_object() {
                return Err(fail(format!("{version_name}: no openAPIV3Schema")));
            }
            let api_version = format!("{group}/{version_name}");
            let structural = structural::compile(&schema, &api_version, kind)
                .map_err(|e| fail(format!("{version_name}: {e}")))?;
            self.rules
                .compile_all(&schema)
                .map_err(|e| fail(format!("{version_name}: {e}")))?;
            self.versions.insert(
                (api_version, kind.to_string()),
                Version {
                    namespaced,
                    plural: plural.to_string(),
                    status: version["subresources"].get("status").is_some(),
                    schema,
                    structural,
                },
            );
        }
        Ok(())
    }

    /// Whether `apiVersion`/`kind` is a kind of this catalog.
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.versions
            .contains_key(&(api_version.to_string(), kind.to_string()))
    }

    /// Whether `resource` (a plural, or `plural/status`) of `group` is
    /// served by some loaded version: what an RBAC rule may name.
    pub fn serves_resource(&self, group: &str, resource: &str) -> bool {
        let (plural, subresource) = match resource.split_once('/') {
            Some((p, s)) => (p, Some(s)),
            None => (resource, None),
        };
        self.versions.iter().any(|((api_version, _), v)| {
            api_version.rsplit_once('/').map(|(g, _)| g) == Some(group)
                && v.plural == plural
                && match subresource {
                    None => true,
                    Some("status") => v.status,
                    Some(_) => false,
                }
        })
    }

    /// Whether objects of `kind` in `group` are namespaced (`None`: not
    /// loaded).
    pub fn namespaced(&self, api_version: &str, kind: &str) -> Option<bool> {
        self.versions
            .get(&(api_version.to_string(), kind.to_string()))
            .map(|v| v.namespaced)
    }

    /// The plural (RBAC resource name) of a kind.
    pub fn plural(&self, api_version: &str, kind: &str) -> Option<&str> {
        self.versions
            .get(&(api_version.to_string(), kind.to_string()))
            .map(|v| v.plural.as_str())
    }

    /// Every `(apiVersion, kind)` loaded.
    pub fn kinds(&self) -> impl Iterator<Item = (&str, &str)> {
        self.versions.keys().map(|(a, k)| (a.as_str(), k.as_str()))
    }

    /// Validates one object. An object of a kind the catalog does not
    /// know is invalid (a typo in `apiVersion` is the commonest mistake).
    pub fn validate(&self, object: &Value) -> Result<(), Invalid> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let label = match object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            Some(ns) => format!("{kind} {ns}/{name} ({api_version})"),
            None => format!("{kind} {name} ({api_version})"),
        };
        let invalid = |violations| Invalid {
            object: label.clone(),
            violations,
        };
        if let Some(namespaced) = builtin::is_builtin(api_version, kind) {
            let mut violations = builtin::validate(object, kind);
            violations.extend(meta::validate(object.get("metadata"), namespaced));
            if matches!(kind, "ClusterRole" | "Role") {
                violations.extend(self.rbac_rules(object));
            }
            return if violations.is_empty() {
                Ok(())
            } else {
                Err(invalid(violations))
            };
        }
        let Some(version) = self
            .versions
            .get(&(api_version.to_string(), kind.to_string()))
        else {
            return Err(invalid(vec![Violation {
                path: String::new(),
                message: format!(
                    "no CRD serves apiVersion {api_version:?} kind {kind:?} (known: {})",
                    self.versions
                        .keys()
                        .filter(|(_, k)| k == kind)
                        .map(|(a, _)| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }]));
        };
        let mut violations = structural::validate(&version.structural, object);
        violations.extend(meta::validate(object.get("metadata"), version.namespaced));
        // The CEL rules see only what the structural schema admits: on a
        // structurally invalid object they would report the same fault
        // twice, or fail to evaluate.
        if violations.is_empty() {
            walk::validate(&version.schema, object, &self.rules, &mut violations);
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(invalid(violations))
        }
    }
}

impl Catalog {
    /// The rules of a ClusterRole or Role name real things: verbs of the
    /// authorizer, resources some API group serves (a built-in, or a CRD of
    /// this catalog, `/status` only where the CRD has that subresource), no
    /// wildcards, and `resourceNames` only with verbs they can restrict.
    pub fn rbac_rules(&self, role: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        let rules = role
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let strings = |rule: &Value, field: &str| -> Vec<String> {
            rule.get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (i, rule) in rules.iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            let groups = strings(rule, "apiGroups");
            let resources = strings(rule, "resources");
            let verbs = strings(rule, "verbs");
            let names = strings(rule, "resourceNames");
            if groups.is_empty() {
                out.push(Violation {
                    path: at("apiGroups"),
                    message: "empty: the rule grants nothing".into(),
                });
            }
            if verbs.is_empty() {
                out.push(Violation {
                    path: at("verbs"),
                    message: "empty: the rule grants nothing".into(),
                });
            }
            for (field, values) in [
                ("apiGroups", &groups),
                ("resources", &resources),
                ("verbs", &verbs),
            ] {
                if values.iter().any(|v| v == "*") {
                    out.push(Violation {
                        path: at(field),
                        message: "a wildcard is not least privilege".into(),
                    });
                }
            }
            for verb in &verbs {
                if verb != "*" && !builtin::VERBS.contains(&verb.as_str()) {
                    out.push(Violation {
                        path: at("verbs"),
                        message: format!(
                            "{verb:?} is not a verb of the Kubernetes authorizer ({})",
                            builtin::VERBS.join(", ")
                        ),
                    });
                }
            }
            for resource in &resources {
                let served = groups.iter().all(|group| {
                    builtin::RESOURCES
                        .iter()
                        .any(|(g, rs)| g == group && rs.contains(&resource.as_str()))
                        || self.serves_resource(group, resource)
                });
                if resource != "*" && !served {
                    out.push(Violation {
                        path: at("resources"),
                        message: format!("{resource:?} is not served by API group(s) {groups:?}"),
                    });
                }
            }
            if !names.is_empty() {
                for verb in &verbs {
                    if matches!(verb.as_str(), "create" | "deletecollection") {
                        out.push(Violation {
                            path: at("resourceNames"),
                            message: format!("resourceNames cannot restrict {verb:?}: the rule would never match it"),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Turns a JSON pointer (`/spec/http/0/route`) into the project's field
/// path (`spec.http[0].route`), reading the instance to tell list indices
/// from map keys that look like numbers.
pub(crate) fn field_path(pointer: &str, root: &Value) -> String {
    let mut out = String::new();
    let mut at = Some(root);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match at {
            Some(Value::Array(items)) => {
                out.push_str(&format!("[{segment}]"));
                at = segment.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            other => {
                push_key(&mut out, &segment);
                at = other.and_then(|v| v.get(&segment));
            }
        }
    }
    out
}

/// Appends a map key to a field path: `.key`, or `["key"]` when the key
/// is not a plain identifier (label keys with `/` and `.`).
pub(crate) fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push_str(&format!("[{key:?}]"));
    }
}

/// A short rendering of a value for an error message.
pub(crate) fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(77).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// `shared/` of the project: `$TIDEWAY_SHARED`, else the nearest
/// `shared/` beside the workspace root or one of its ancestors (a git
/// worktree may sit deeper), else beside the local checkout this one was
/// cloned from.
pub fn shared_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("TIDEWAY_SHARED") {
        return dir.into();
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // controller/crd-validate → the workspace root → its ancestors.
    let root = manifest.ancestors().nth(2).unwrap_or(manifest);
    // A clone of a local checkout (CI clones main into a temporary
    // directory) finds it beside the checkout it was cloned from.
    let origin = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["config", "--get", "remote.origin.url"])
        .output()
        .ok()
        .map(|out| std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|path| path.is_absolute() && path.is_dir());
    let near = |dir: &std::path::Path| {
        dir.ancestors()
            .skip(1)
            .map(|dir| dir.join("shared"))
            .find(|dir| dir.join("istio/crd-all.gen.yaml").exists())
    };
    near(root)
        .or_else(|| origin.as_deref().and_then(near))
        .unwrap_or_else(|| root.join("../shared"))
}

/// prometheus-operator's `PrometheusRule` (monitoring.coreos.com/v1), as a
/// CRD of the catalog. Hand-written from its published API reference (its
/// CRD is not in shared/): the fields Tideway renders and their neighbours,
/// so an unknown field is still an error.
pub fn prometheus_rule_crd() -> Value {
    serde_json::from_str(include_str!("prometheus_rule.json")).unwrap_or(Value::Null)
}

/// The catalog of Istio 1.30.3's and Karmada's CRDs from `shared/`, plus
/// [`prometheus_rule_crd`].
pub fn istio_and_karmada() -> Result<Catalog, String> {
    let shared = shared_dir();
    let mut catalog = Catalog::new();
    let mut files = vec![shared.join("istio/crd-all.gen.yaml")];
    let karmada = shared.join("karmada");
    let mut karmada_files: Vec<_> = std::fs::read_dir(&karmada)
        .map_err(|e| format!("{}: {e}", karmada.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    karmada_files.sort();
    files.extend(karmada_files);
    catalog
        .load_crd(&prometheus_rule_crd(), "prometheus_rule.json")
        .map_err(|e| e.to_string())?;
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        catalog
            .load_yaml(&text, &file.display().to_string())
            .map_err(|e| e.to_string())?;
    }
    Ok(catalog)
}

/// The documents of a (multi-document) YAML text, empty ones skipped.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}
