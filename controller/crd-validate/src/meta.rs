//! `metadata` as the API server checks it on create: the ObjectMeta fields
//! a client may set, and the syntax of names, namespaces, label keys and
//! values, and annotation keys (k8s.io/apimachinery's validation).

use crate::{push_key, show, Violation};
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

/// The ObjectMeta fields a client may set (the rest are the server's).
const CLIENT_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
];

static DNS_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("regex"));
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").expect("regex")
});
static QUALIFIED_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").expect("regex"));

/// Checks `metadata` of an object of a namespaced (or cluster-scoped)
/// kind.
pub(crate) fn validate(metadata: Option<&Value>, namespaced: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(Value::Object(metadata)) = metadata else {
        out.push(Violation {
            path: "metadata".into(),
            message: "required object".into(),
        });
        return out;
    };
    let mut fail = |path: String, message: String| out.push(Violation { path, message });
    for key in metadata.keys() {
        if !CLIENT_FIELDS.contains(&key.as_str()) {
            fail(
                "metadata".into(),
                format!(
                    "unknown field(s) {key} (a client sets only {})",
                    CLIENT_FIELDS.join(", ")
                ),
            );
        }
    }
    match metadata.get("name") {
        Some(Value::String(name)) => {
            if name.len() > 253 || !DNS_SUBDOMAIN.is_match(name) {
                fail(
                    "metadata.name".into(),
                    format!("{name:?} is not a DNS-1123 subdomain (lowercase alphanumerics, '-', '.', at most 253)"),
                );
            }
        }
        Some(other) => fail(
            "metadata.name".into(),
            format!("{} is not a string", show(other)),
        ),
        None if metadata.contains_key("generateName") => {}
        None => fail("metadata.name".into(), "required".into()),
    }
    match metadata.get("namespace") {
        Some(Value::String(ns)) if !namespaced => fail(
            "metadata.namespace".into(),
            format!("{ns:?} set on a cluster-scoped kind"),
        ),
        Some(Value::String(ns)) if ns.len() > 63 || !DNS_LABEL.is_match(ns) => fail(
            "metadata.namespace".into(),
            format!("{ns:?} is not a DNS-1123 label (lowercase alphanumerics and '-', at most 63)"),
        ),
        Some(Value::String(_)) => {}
        Some(other) => fail(
            "metadata.namespace".into(),
            format!("{} is not a string", show(other)),
        ),
        None => {}
    }
    for (field, values_are_labels) in [("labels", true), ("annotations", false)] {
        let Some(map) = metadata.get(field) else {
            continue;
        };
        let Some(map) = map.as_object() else {
            fail(
                format!("metadata.{field}"),
                format!("{} is not a map", show(map)),
            );
            continue;
        };
        let mut total = 0;
        for (key, value) in map {
            let mut path = format!("metadata.{field}");
            push_key(&mut path, key);
            if let Some(problem) = qualified_name_problem(key) {
                fail(path.clone(), format!("key {key:?}: {problem}"));
            }
            let Some(value) = value.as_str() else {
                fail(path, format!("{} is not a string", show(value)));
                continue;
            };
            total += key.len() + value.len();
            if values_are_labels
                && !value.is_empty()
                && (value.len() > 63 || !QUALIFIED_NAME.is_match(value))
            {
                fail(
                    path,
                    format!("{value:?} is not a label value (alphanumerics, '-', '_', '.', at most 63, alphanumeric at both ends)"),
                );
            }
        }
        if !values_are_labels && total > 256 * 1024 {
            fail(
                "metadata.annotations".into(),
                format!("{total} bytes, more than 256 KiB"),
            );
        }
    }
    out
}

/// Why `key` is not a qualified name (`[prefix/]name`), if it is not.
fn qualified_name_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() || prefix.len() > 253 || !DNS_SUBDOMAIN.is_match(prefix) {
            return Some(format!("prefix {prefix:?} is not a DNS-1123 subdomain"));
        }
    }
    if name.is_empty() || name.len() > 63 || !QUALIFIED_NAME.is_match(name) {
        return Some(format!(
            "name part {name:?} is not a qualified name (alphanumerics, '-', '_', '.', at most 63)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_labels_and_server_fields() {
        let good = json!({"name": "reviews-east", "namespace": "prod",
            "labels": {"app.kubernetes.io/managed-by": "tideway", "tideway.dev/policy": "reviews"},
            "annotations": {"note": "anything at all / here"}});
        assert!(validate(Some(&good), true).is_empty());
        let bad = json!({"name": "Reviews_East", "namespace": "prod", "uid": "x",
            "labels": {"bad key!": "v", "k": "not a label value"}});
        let errors = validate(Some(&bad), true);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"metadata.name"), "{errors:?}");
        assert!(paths.contains(&"metadata"), "{errors:?}");
        assert!(
            paths.contains(&"metadata.labels[\"bad key!\"]"),
            "{errors:?}"
        );
        assert!(paths.contains(&"metadata.labels.k"), "{errors:?}");
        let errors = validate(Some(&json!({"name": "a", "namespace": "prod"})), false);
        assert_eq!(errors[0].path, "metadata.namespace");
    }
}
