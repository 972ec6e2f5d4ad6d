//! Objects of Kubernetes' built-in kinds (the controller's own manifests,
//! a rendered dashboard ConfigMap), checked with k8s-openapi's types.
//!
//! k8s-openapi deserialises leniently (an unknown field is skipped), so a
//! strict check is a round trip: parse into the typed object, serialise it
//! back, and every field of the input the typed object did not keep is an
//! unknown field. A wrong type fails the parse, naming where.

use crate::{field_path, push_key, show, Violation};
use serde_json::Value;

/// `(apiVersion, kind)` of the built-in kinds this module checks, and
/// whether they are namespaced.
pub const KINDS: &[(&str, &str, bool)] = &[
    ("v1", "Namespace", false),
    ("v1", "ServiceAccount", true),
    ("v1", "Service", true),
    ("v1", "ConfigMap", true),
    ("v1", "Secret", true),
    ("apps/v1", "Deployment", true),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", false),
    ("rbac.authorization.k8s.io/v1", "Role", true),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", true),
    ("policy/v1", "PodDisruptionBudget", true),
];

/// The built-in resources (RBAC names) an RBAC rule of Tideway's may
/// name, by API group: the kinds above plus what the controller reads.
pub const RESOURCES: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "namespaces",
            "serviceaccounts",
            "services",
            "endpoints",
            "configmaps",
            "secrets",
            "events",
            "pods",
        ],
    ),
    ("apps", &["deployments"]),
    // `tideway status` reads the Istio CRDs (by name) for their release.
    ("apiextensions.k8s.io", &["customresourcedefinitions"]),
    ("coordination.k8s.io", &["leases"]),
    ("discovery.k8s.io", &["endpointslices"]),
    ("events.k8s.io", &["events"]),
    (
        "rbac.authorization.k8s.io",
        &[
            "clusterroles",
            "clusterrolebindings",
            "roles",
            "rolebindings",
        ],
    ),
    // prometheus-operator's CRD (not in shared/): the kind Tideway renders.
    ("monitoring.coreos.com", &["prometheusrules"]),
];

/// The verbs of the Kubernetes authorizer.
pub const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Whether `(apiVersion, kind)` is a built-in kind this module checks.
pub fn is_builtin(api_version: &str, kind: &str) -> Option<bool> {
    KINDS
        .iter()
        .find(|(a, k, _)| *a == api_version && *k == kind)
        .map(|(_, _, namespaced)| *namespaced)
}

/// Round-trips `object` through its k8s-openapi type.
pub(crate) fn validate(object: &Value, kind: &str) -> Vec<Violation> {
    use k8s_openapi::api::{apps, core, policy, rbac};
    match kind {
        "Namespace" => round_trip::<core::v1::Namespace>(object),
        "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(object),
        "Service" => round_trip::<core::v1::Service>(object),
        "ConfigMap" => round_trip::<core::v1::ConfigMap>(object),
        "Secret" => round_trip::<core::v1::Secret>(object),
        "Deployment" => round_trip::<apps::v1::Deployment>(object),
        "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(object),
        "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(object),
        "Role" => round_trip::<rbac::v1::Role>(object),
        "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(object),
        "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(object),
        other => vec![Violation {
            path: "kind".into(),
            message: format!("{other:?} is not a built-in kind this validator checks"),
        }],
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> Vec<Violation> {
    let text = object.to_string();
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let typed: T = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(t) => t,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            return vec![Violation {
                path: dotted(&path, object),
                message: e.inner().to_string(),
            }];
        }
    };
    let back = match serde_json::to_value(&typed) {
        Ok(v) => v,
        Err(e) => {
            return vec![Violation {
                path: String::new(),
                message: format!("does not serialise back: {e}"),
            }]
        }
    };
    let mut out = Vec::new();
    dropped(object, &back, String::new(), &mut out);
    out
}

/// serde_path_to_error's `a.b[0].c` is already the project's form, except
/// that it prints keys that are not identifiers bare.
fn dotted(path: &str, object: &Value) -> String {
    let pointer: String = path
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect();
    field_path(&pointer, object)
}

/// Fields of `input` that `kept` lost: unknown to the typed object.
fn dropped(input: &Value, kept: &Value, path: String, out: &mut Vec<Violation>) {
    match (input, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let mut child = path.clone();
                push_key(&mut child, key);
                match b.get(key) {
                    Some(kept_value) => dropped(value, kept_value, child, out),
                    // An empty or null value the typed object does not
                    // serialise back (`args: []`) is not an unknown field.
                    None if is_empty(value) => {}
                    None => out.push(Violation {
                        path: if path.is_empty() {
                            String::new()
                        } else {
                            path.clone()
                        },
                        message: format!("unknown field(s) {key} (value {})", show(value)),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                dropped(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}
