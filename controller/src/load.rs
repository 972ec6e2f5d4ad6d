//! Reading user documents (YAML or JSON, one or many per file) into typed
//! values, with every error at its field path.
//!
//! Documents are first read into a `serde_json::Value` (YAML is a superset of
//! JSON, so one reader serves both) and then deserialised through
//! `serde_path_to_error`, which records where in the document serde was when
//! it failed. serde's own message already carries the value and what was
//! expected (`invalid type: floating point `5000.5`, expected u64`); this
//! module splits it into the shared [`FieldError`] shape.

use crate::api::{Fleet, TrafficPolicy, API_VERSION};
use crate::field_error::{FieldError, FieldErrors};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// Every document in `text` (YAML multi-document, or JSON). Empty documents
/// (a trailing `---`) are skipped.
pub fn documents(text: &str) -> Result<Vec<Value>, FieldError> {
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default();
            FieldError::new(
                format!("(document {i})"),
                format!("unparsable text{at}"),
                format!("YAML or JSON ({e})"),
            )
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Deserialise `value` as `T`; an error names the path from the document's
/// root, prefixed by `prefix` (e.g. `spec.pluginConfig`).
pub fn from_value<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        serde_error(&path, &e.into_inner().to_string()).under(prefix)
    })
}

/// Split serde's message into value and expectation.
fn serde_error(path: &str, message: &str) -> FieldError {
    split_serde_message(path, message)
        .unwrap_or_else(|| FieldError::new(path, "?", message.to_string()))
}

/// The filter's own `ConfigError` (field path + message) in the shared
/// shape: serde's typing messages split into value and expectation, the
/// filter's validation messages (which say value and rule) kept whole.
pub fn from_config_error(e: &tideway_filter::config::ConfigError) -> FieldError {
    split_serde_message(&e.field, &e.message)
        .map(|mut f| {
            // The filter already completed the path with the field named.
            f.path = e.field.clone();
            f
        })
        .unwrap_or_else(|| {
            // The filter's own rule messages: `<value> (expected <rule>)`
            // or `<value> (must be <rule>)`.
            let m = e.message.as_str();
            for marker in [" (expected ", " (must be "] {
                if let Some((value, rule)) = m.split_once(marker) {
                    if let Some(rule) = rule.strip_suffix(')') {
                        return FieldError::new(e.field.clone(), value, rule);
                    }
                }
            }
            FieldError::new(e.field.clone(), m, "")
        })
}

fn split_serde_message(path: &str, message: &str) -> Option<FieldError> {
    // `unknown field `weigths`, expected one of `cluster`, `name``
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once("`, ") {
            let path = if path.is_empty() {
                field.to_string()
            } else if path.ends_with(field) {
                path.to_string()
            } else {
                format!("{path}.{field}")
            };
            let expected = expected.strip_prefix("expected ").unwrap_or(expected);
            return Some(FieldError::new(
                path,
                format!("unknown field `{field}`"),
                format!("a known field: {expected}"),
            ));
        }
        if let Some(field) = rest.strip_suffix('`') {
            return Some(FieldError::new(
                format!("{path}.{field}")
                    .trim_start_matches('.')
                    .to_string(),
                format!("unknown field `{field}`"),
                "no fields here",
            ));
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        let path = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return Some(FieldError::missing(path, "this required field"));
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((value, expected)) = rest.rsplit_once(", expected ") {
                return Some(FieldError::new(path, value, expected));
            }
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((variant, expected)) = rest.split_once("`, expected ") {
            return Some(FieldError::new(path, format!("`{variant}`"), expected));
        }
    }
    None
}

/// Top-level keys every Kubernetes object may have.
const OBJECT_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
/// `metadata` keys a user may write (kube's `ObjectMeta` ignores unknown ones;
/// we do not).
const METADATA_KEYS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

/// Check `apiVersion`/`kind` and the keys kube's types would silently drop.
fn check_envelope(doc: &Value, kind: &str, errors: &mut FieldErrors) {
    let Some(map) = doc.as_object() else {
        errors.push(FieldError::json("", doc, format!("a {kind} object")));
        return;
    };
    for key in map.keys() {
        if !OBJECT_KEYS.contains(&key.as_str()) {
            errors.push(FieldError::new(
                key.clone(),
                format!("unknown field `{key}`"),
                format!("a known field: one of {}", OBJECT_KEYS.join(", ")),
            ));
        }
    }
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => errors.push(FieldError::json("apiVersion", v, API_VERSION)),
        None => errors.push(FieldError::missing("apiVersion", API_VERSION)),
    }
    match map.get("kind") {
        Some(Value::String(v)) if v == kind => {}
        Some(v) => errors.push(FieldError::json("kind", v, kind)),
        None => errors.push(FieldError::missing("kind", kind)),
    }
    match map.get("metadata").and_then(Value::as_object) {
        Some(meta) => {
            for key in meta.keys() {
                if !METADATA_KEYS.contains(&key.as_str()) {
                    errors.push(FieldError::new(
                        format!("metadata.{key}"),
                        format!("unknown field `{key}`"),
                        "a known metadata field (name, namespace, labels, annotations, …)",
                    ));
                }
            }
            match meta.get("name") {
                Some(Value::String(n)) if !n.is_empty() => {}
                Some(v) => errors.push(FieldError::json("metadata.name", v, "a name")),
                None => errors.push(FieldError::missing("metadata.name", "a name")),
            }
        }
        None => errors.push(FieldError::missing("metadata", "an object with a name")),
    }
}

/// Parse one object of `kind` from `doc` (envelope checked, spec strict).
pub fn object<T: DeserializeOwned>(
    doc: &Value,
    kind: &str,
    source: &str,
) -> Result<T, FieldErrors> {
    let mut errors = FieldErrors::new(source);
    check_envelope(doc, kind, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    from_value(doc, "").map_err(|e| {
        let mut errors = FieldErrors::new(source);
        errors.push(e);
        errors
    })
}

/// The document of `kind` in a file holding one or several; others are
/// ignored only when they are of a different kind.
fn single<T: DeserializeOwned>(text: &str, kind: &str, source: &str) -> Result<T, FieldErrors> {
    let docs = documents(text).map_err(|e| FieldErrors {
        source: source.to_string(),
        errors: vec![e],
    })?;
    let mut matching: Vec<(usize, &Value)> = docs
        .iter()
        .enumerate()
        .filter(|(_, d)| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    match matching.len() {
        1 => {
            let (i, doc) = matching.remove(0);
            let source = if docs.len() > 1 {
                format!("{source} (document {i})")
            } else {
                source.to_string()
            };
            object(doc, kind, &source)
        }
        0 if docs.len() == 1 => object(&docs[0], kind, source),
        n => Err(FieldError::new(
            "kind",
            format!("{n} documents of kind {kind}"),
            format!("exactly one {kind} in the file"),
        )
        .into())
        .map_err(|mut e: FieldErrors| {
            e.source = source.to_string();
            e
        }),
    }
}

pub fn policy_from_str(text: &str, source: &str) -> Result<TrafficPolicy, FieldErrors> {
    single(text, "TrafficPolicy", source)
}

pub fn fleet_from_str(text: &str, source: &str) -> Result<Fleet, FieldErrors> {
    single(text, "Fleet", source)
}

/// Every `TrafficPolicy` in `text` (other kinds, e.g. a Fleet or rendered
/// objects next to it, are skipped).
pub fn policies_from_str(text: &str, source: &str) -> Result<Vec<TrafficPolicy>, FieldErrors> {
    let docs = documents(text).map_err(|e| FieldErrors {
        source: source.to_string(),
        errors: vec![e],
    })?;
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) == Some("TrafficPolicy") {
            let source = if docs.len() > 1 {
                format!("{source} (document {i})")
            } else {
                source.to_string()
            };
            out.push(object(doc, "TrafficPolicy", &source)?);
        }
    }
    Ok(out)
}

/// Every `TrafficPolicy` under `paths`: files, or directories searched
/// recursively for `*.yaml`, `*.yml` and `*.json` (in name order, so the
/// same tree always loads the same way). Errors name the file.
pub fn policies_from_paths(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<TrafficPolicy>> {
    fn files(path: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
        if !path.is_dir() {
            out.push(path.to_path_buf());
            return Ok(());
        }
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| anyhow::anyhow!("reading directory {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let document = entry
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"));
            if entry.is_dir() || document {
                files(&entry, out)?;
            }
        }
        Ok(())
    }
    let mut all = Vec::new();
    for path in paths {
        files(path, &mut all)?;
    }
    let mut policies = Vec::new();
    for file in all {
        let text = read(&file)?;
        let source = file.display().to_string();
        policies.extend(policies_from_str(&text, &source).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    Ok(policies)
}

/// Read a file, naming it in the error.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Inner {
        weight: f64,
        decay_ms: u64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    fn err(yaml: &str) -> FieldError {
        let docs = documents(yaml).expect("parses");
        from_value::<Outer>(&docs[0], "spec").expect_err("must fail")
    }

    #[test]
    fn unknown_field_named_with_full_path() {
        let e = err("items:\n- weight: 1\n  decayMs: 1\n- weigths: 2\n");
        assert_eq!(e.path, "spec.items[1].weigths", "{e}");
        assert!(e.value.contains("weigths"), "{e}");
        assert!(e.expected.contains("`weight`"), "{e}");
    }

    #[test]
    fn wrong_type_names_value_and_expectation() {
        let e = err("items:\n- weight: 1\n  decayMs: 5000.5\n");
        assert_eq!(e.path, "spec.items[0].decayMs", "{e}");
        assert!(e.value.contains("5000.5"), "{e}");
        assert_eq!(e.expected, "u64");
    }

    #[test]
    fn missing_field_named() {
        let e = err("items:\n- weight: 1\n");
        assert_eq!(e.path, "spec.items[0].decayMs", "{e}");
        assert!(e.value.is_empty());
    }

    #[test]
    fn json_is_read_too_and_blank_documents_skipped() {
        let docs = documents("{\"a\": 1}").expect("json");
        assert_eq!(docs.len(), 1);
        let docs = documents("a: 1\n---\n---\nb: 2\n").expect("yaml");
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn bad_yaml_reports_line() {
        let e = documents("a: [1, 2\n").expect_err("unclosed");
        assert!(e.value.contains("line"), "{e}");
    }

    #[test]
    fn envelope_rejects_unknown_top_level_and_metadata_keys() {
        let doc = documents(
            "apiVersion: traffic.tideway.dev/v1alpha1\nkind: Fleet\nmetadata:\n  name: f\n  nmespace: x\nspecc: {}\n",
        )
        .expect("yaml");
        let e = object::<Fleet>(&doc[0], "Fleet", "f.yaml").expect_err("bad");
        assert!(e.has_path("specc"), "{e}");
        assert!(e.has_path("metadata.nmespace"), "{e}");
    }
}
