//! The checks that read schema and value side by side: the CEL rules at
//! each node, and the uniqueness that `x-kubernetes-list-type` demands.

use crate::rules::{Outcome, Rules};
use crate::{push_key, show, Violation};
use serde_json::Value;

/// Walks `value` along `schema` from the root.
pub(crate) fn validate(schema: &Value, value: &Value, rules: &Rules, out: &mut Vec<Violation>) {
    let context = rules.context();
    node(schema, value, String::new(), rules, &context, out);
}

fn node(
    schema: &Value,
    value: &Value,
    path: String,
    rules: &Rules,
    context: &cel::Context,
    out: &mut Vec<Violation>,
) {
    if let Some(Value::Array(validations)) = schema.get("x-kubernetes-validations") {
        for validation in validations {
            let Some(rule) = validation.get("rule").and_then(Value::as_str) else {
                continue;
            };
            let at = match validation.get("fieldPath").and_then(Value::as_str) {
                Some(field) => format!("{path}{field}"),
                None => path.clone(),
            };
            let message = validation
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("failed rule: {}", rule.replace('\n', " ")));
            match rules.evaluate(context, rule, value) {
                Outcome::Holds | Outcome::NotApplicable => {}
                Outcome::Fails => out.push(Violation {
                    path: at,
                    message: format!(
                        "{message} (rule {}, value {})",
                        rule.replace('\n', " "),
                        show(value)
                    ),
                }),
                Outcome::Error(e) => out.push(Violation {
                    path: at,
                    message: format!(
                        "rule {} could not be evaluated on {}: {e}",
                        rule.replace('\n', " "),
                        show(value)
                    ),
                }),
            }
        }
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let child_schema = properties.and_then(|p| p.get(key)).or(additional);
                if let Some(child_schema) = child_schema {
                    let mut child_path = path.clone();
                    push_key(&mut child_path, key);
                    node(child_schema, child, child_path, rules, context, out);
                }
            }
        }
        Value::Array(items) => {
            list_type(schema, items, &path, out);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    node(
                        item_schema,
                        item,
                        format!("{path}[{i}]"),
                        rules,
                        context,
                        out,
                    );
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: map` (items unique by their keys) and `set`
/// (items unique).
fn list_type(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Violation>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen: Vec<Vec<&Value>> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<&Value> = keys
                    .iter()
                    .map(|k| item.get(*k).unwrap_or(&Value::Null))
                    .collect();
                if seen.contains(&key) {
                    out.push(Violation {
                        path: format!("{path}[{i}]"),
                        message: format!(
                            "duplicate entry of a map list: key ({}) = {}",
                            keys.join(", "),
                            key.iter().map(|v| show(v)).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                seen.push(key);
            }
        }
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    out.push(Violation {
                        path: format!("{path}[{i}]"),
                        message: format!("duplicate value in a set: {}", show(item)),
                    });
                }
            }
        }
        _ => {}
    }
}
