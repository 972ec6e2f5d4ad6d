//! A CRD's structural schema as the JSON Schema it means, validated by the
//! `jsonschema` crate.
//!
//! Kubernetes' OpenAPI v3 dialect differs from JSON Schema in a few
//! keywords; each is translated here rather than validated by hand:
//! - an object schema without `x-kubernetes-preserve-unknown-fields`
//!   admits only its `properties` (strict field validation rejects the
//!   rest): `additionalProperties: false` unless it has its own;
//! - `nullable: true` admits `null`; without it `null` is rejected (the
//!   API server would prune it, but a `null` in rendered output is a
//!   serialisation bug worth failing on);
//! - `x-kubernetes-int-or-string` admits an integer or a string;
//! - `format: int32` / `int64` (and schemars' `uint8/16/32`) are ranges
//!   (the fields are protobuf int32s in Istio; a larger number fails its
//!   conversion), `byte` is base64, `date-time` is RFC 3339; formats the
//!   API server does not know are ignored, as it ignores them;
//! - the root admits `apiVersion` (this version), `kind` and `metadata`
//!   (checked by [`crate::meta`]), as every object's root does.
//!
//! Patterns are Go RE2 regular expressions; the `regex` crate is RE2's
//! dialect, so it is the pattern engine here.

use crate::{field_path, show, Violation};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Compiles the structural validator of one CRD version.
pub(crate) fn compile(
    schema: &Value,
    api_version: &str,
    kind: &str,
) -> Result<jsonschema::Validator, String> {
    let mut root = translate(schema);
    if let Some(root) = root.as_object_mut() {
        let properties = root
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(properties) = properties.as_object_mut() {
            properties.insert("apiVersion".into(), json!({"enum": [api_version]}));
            properties.insert("kind".into(), json!({"enum": [kind]}));
            properties.insert("metadata".into(), json!({"type": "object"}));
        }
        let required = root
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(required) = required.as_array_mut() {
            for field in ["apiVersion", "kind", "metadata"] {
                if !required.iter().any(|r| r == field) {
                    required.push(json!(field));
                }
            }
        }
        root.insert("type".into(), json!("object"));
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .should_validate_formats(true)
        // The API server ignores formats it does not know (schemars writes
        // `uint32`, `float`, …); the ones it knows are checked.
        .should_ignore_unknown_formats(true)
        .with_format("byte", |s: &str| {
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        })
        // Formats of numbers: jsonschema applies `format` to strings only;
        // the ranges are translated to bounds below.
        .with_format("int32", |_: &str| true)
        .with_format("int64", |_: &str| true)
        .with_format("double", |_: &str| true)
        .build(&root)
        .map_err(|e| format!("the schema does not compile: {e}"))
}

/// Validates `object`; every violation, with its field path.
pub(crate) fn validate(validator: &jsonschema::Validator, object: &Value) -> Vec<Violation> {
    validator
        .iter_errors(object)
        .map(|error| {
            let path = field_path(error.instance_path().as_str(), object);
            let message = match error.kind() {
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    format!("unknown field(s) {}", unexpected.join(", "))
                }
                _ => format!("{error} (value {})", show(error.instance())),
            };
            Violation { path, message }
        })
        .collect()
}

/// One schema node of the Kubernetes dialect → JSON Schema.
fn translate(node: &Value) -> Value {
    let Some(node) = node.as_object() else {
        return node.clone();
    };
    let mut out = Map::new();
    let flag = |name: &str| node.get(name).and_then(Value::as_bool) == Some(true);
    let preserve = flag("x-kubernetes-preserve-unknown-fields");
    let int_or_string = flag("x-kubernetes-int-or-string");
    let nullable = flag("nullable");
    let embedded = flag("x-kubernetes-embedded-resource");

    for (key, value) in node {
        match key.as_str() {
            "properties" => {
                let mut properties: Map<String, Value> = value
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| (k.clone(), translate(v))).collect())
                    .unwrap_or_default();
                if embedded {
                    for field in ["apiVersion", "kind"] {
                        properties
                            .entry(field)
                            .or_insert_with(|| json!({"type": "string"}));
                    }
                    properties
                        .entry("metadata")
                        .or_insert_with(|| json!({"type": "object"}));
                }
                out.insert(key.clone(), Value::Object(properties));
            }
            "additionalProperties" | "items" | "not" => {
                out.insert(key.clone(), translate(value));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let branches = value
                    .as_array()
                    .map(|b| b.iter().map(translate).collect())
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Array(branches));
            }
            "type" if int_or_string => {}
            "type" => {
                if nullable {
                    out.insert(key.clone(), json!([value, "null"]));
                } else {
                    out.insert(key.clone(), value.clone());
                }
            }
            "enum" => {
                let mut values = value.as_array().cloned().unwrap_or_default();
                if nullable {
                    values.push(Value::Null);
                }
                out.insert(key.clone(), Value::Array(values));
            }
            "format" => {
                match value.as_str() {
                    Some("int32") => {
                        out.insert("minimum".into(), json!(i32::MIN));
                        out.insert("maximum".into(), json!(i32::MAX));
                    }
                    Some("int64") => {
                        out.insert("minimum".into(), json!(i64::MIN));
                        out.insert("maximum".into(), json!(i64::MAX));
                    }
                    // schemars' unsigned formats (Tideway's own CRDs): the
                    // Rust type's range.
                    Some("uint8") => {
                        out.insert("minimum".into(), json!(0));
                        out.insert("maximum".into(), json!(u8::MAX));
                    }
                    Some("uint16") => {
                        out.insert("minimum".into(), json!(0));
                        out.insert("maximum".into(), json!(u16::MAX));
                    }
                    Some("uint32") => {
                        out.insert("minimum".into(), json!(0));
                        out.insert("maximum".into(), json!(u32::MAX));
                    }
                    _ => {}
                }
                out.insert(key.clone(), value.clone());
            }
            "required" | "pattern" | "minimum" | "maximum" | "exclusiveMinimum"
            | "exclusiveMaximum" | "minLength" | "maxLength" | "minItems" | "maxItems"
            | "uniqueItems" | "minProperties" | "maxProperties" | "multipleOf" => {
                // A bound already set from `format` stays the tighter one.
                match (key.as_str(), out.get(key.as_str()), value.as_f64()) {
                    ("minimum", Some(Value::Number(n)), Some(v))
                        if n.as_f64().unwrap_or(f64::MIN) > v => {}
                    ("maximum", Some(Value::Number(n)), Some(v))
                        if n.as_f64().unwrap_or(f64::MAX) < v => {}
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            // Documentation, defaults and the x-kubernetes-* keywords the
            // walk in crate::walk handles.
            _ => {}
        }
    }
    if int_or_string && !out.contains_key("anyOf") {
        out.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    let is_object = node.get("type").and_then(Value::as_str) == Some("object")
        || node.contains_key("properties");
    if is_object && !preserve && !node.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), json!(false));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: Value, object: Value) -> Vec<Violation> {
        let validator = compile(&schema, "x.io/v1", "X").expect("compiles");
        validate(&validator, &object)
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}, "spec": spec})
    }

    #[test]
    fn unknown_fields_are_rejected_unless_preserved() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "string"},
                           "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let errors = check(schema.clone(), obj(json!({"a": "x", "b": 1})));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec");
        assert!(
            errors[0].message.contains("unknown field(s) b"),
            "{errors:?}"
        );
        assert!(check(schema, obj(json!({"free": {"anything": [1]}}))).is_empty());
    }

    #[test]
    fn int32_is_a_range_and_int_or_string_admits_both() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "n": {"type": "integer", "format": "int32"},
            "p": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}}}});
        assert!(check(schema.clone(), obj(json!({"n": 5, "p": "80%"}))).is_empty());
        assert!(check(schema.clone(), obj(json!({"p": 80}))).is_empty());
        let errors = check(schema.clone(), obj(json!({"n": 2_147_483_648_i64})));
        assert_eq!(errors[0].path, "spec.n", "{errors:?}");
        let errors = check(schema, obj(json!({"p": true})));
        assert_eq!(errors[0].path, "spec.p", "{errors:?}");
    }

    #[test]
    fn null_only_where_nullable() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "integer", "nullable": true}, "b": {"type": "integer"}}}}});
        assert!(check(schema.clone(), obj(json!({"a": null}))).is_empty());
        assert_eq!(check(schema, obj(json!({"b": null})))[0].path, "spec.b");
    }

    #[test]
    fn the_root_names_its_own_version_and_kind() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let mut wrong = obj(json!({}));
        wrong["apiVersion"] = json!("x.io/v2");
        assert_eq!(check(schema, wrong)[0].path, "apiVersion");
    }
}
