//! What `tideway apply --dry-run` shows per object: the live object against
//! what the server would make of the render (its answer to a server-side
//! apply with `dryRun=All`, so defaults, other managers' fields and the
//! merge are the server's own), as a unified diff of YAML.

use serde::Serialize;
use serde_json::Value;

/// The parts of an object a user compares: fields the server maintains
/// itself (resourceVersion, uid, managedFields, timestamps, generation) and
/// status are left out, or every dry run would show them changing.
pub fn comparable<T: Serialize>(object: &T) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            meta.remove(key);
        }
    }
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    value
}

/// A unified diff (`--- live`, `+++ render`), empty when equal. `Null`
/// (no live object) diffs as an empty file.
pub fn unified(object: &str, before: &Value, after: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        v => yaml_serde::to_string(v).unwrap_or_default(),
    };
    let (before, after) = (text(before), text(after));
    if before == after {
        return String::new();
    }
    similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live {object}"), &format!("render {object}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_fields_do_not_count_as_a_change() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "1", "uid": "x"}, "spec": {"n": 1}});
        let would = json!({"metadata": {"name": "a", "resourceVersion": "2", "uid": "x"}, "spec": {"n": 1}});
        assert_eq!(unified("A a", &comparable(&live), &comparable(&would)), "");
    }

    #[test]
    fn a_changed_field_shows_as_minus_and_plus() {
        let live = json!({"spec": {"n": 1}});
        let would = json!({"spec": {"n": 2}});
        let d = unified("A a", &live, &would);
        assert!(d.contains("--- live A a"), "{d}");
        assert!(d.contains("-  n: 1") && d.contains("+  n: 2"), "{d}");
    }
}
