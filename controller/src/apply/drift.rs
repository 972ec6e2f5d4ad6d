//! Drift: an object Tideway applied that was changed since by someone else.
//!
//! Two independent signs, both from the live object alone:
//! - its `managedFields` name another manager (a `kubectl edit`, a
//!   `kubectl label`, an operator's own apply) whose entry is at least as
//!   recent as Tideway's last apply — server-side apply records who wrote
//!   which field and when, so this needs no record of our own;
//! - a field the render sets has another value (a forced apply can take
//!   ownership away entirely; the value check catches that too).
//!
//! Only the controller's own status manager and Tideway are not "someone
//! else"; entries that touch nothing but `status` are ignored.

use serde::Serialize;
use serde_json::Value;

/// Who changed an object since Tideway last applied it, and which of the
/// render's fields now differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// Other field managers that wrote the object at or after Tideway's
    /// last apply (sorted, unique).
    pub managers: Vec<String>,
    /// Paths of the render's fields whose live value differs
    /// (`.spec.priority`, `.spec.pluginConfig.services[0].destinations`).
    pub fields: Vec<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.managers.is_empty() && self.fields.is_empty()
    }
}

/// The drift of `live` (the object as the member stores it, as JSON)
/// against `rendered` (what Tideway applies), for Tideway's manager
/// `ours`; `also_ours` are managers of our own that are not drift (the
/// controller's status writer).
pub fn drift(rendered: &Value, live: &Value, ours: &str, also_ours: &[&str]) -> Drift {
    let entries = live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let our_time = entries
        .iter()
        .filter(|e| e["manager"].as_str() == Some(ours))
        .filter_map(|e| e["time"].as_str())
        .max()
        .map(str::to_string);
    let mut managers: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            let manager = e["manager"].as_str()?;
            if manager == ours || also_ours.contains(&manager) {
                return None;
            }
            let touches_more_than_status = e["fieldsV1"]
                .as_object()
                .is_some_and(|f| f.keys().any(|k| k != "f:status"));
            if !touches_more_than_status {
                return None;
            }
            // RFC 3339 in UTC with whole seconds, as the API server writes
            // them: the strings order as the times do. Same second counts
            // as after (an edit right after the apply is the usual case).
            let after = match (&our_time, e["time"].as_str()) {
                (Some(ours), Some(theirs)) => theirs >= ours.as_str(),
                _ => true,
            };
            after.then(|| manager.to_string())
        })
        .collect();
    managers.sort();
    managers.dedup();
    let mut fields = Vec::new();
    for top in ["spec", "data"] {
        if let Some(want) = rendered.get(top) {
            differences(&format!(".{top}"), want, &live[top], &mut fields);
        }
    }
    if let Some(labels) = rendered["metadata"]["labels"].as_object() {
        for (key, want) in labels {
            if &live["metadata"]["labels"][key] != want {
                fields.push(format!(".metadata.labels[{key:?}]"));
            }
        }
    }
    Drift { managers, fields }
}

/// Paths under `path` where `live` lacks or differs from what `want` sets.
/// Fields `live` has beyond `want` (server defaults, other managers' own
/// additions) are not differences. Lists compare element by element; a
/// list of another length is one difference at the list.
fn differences(path: &str, want: &Value, live: &Value, out: &mut Vec<String>) {
    match (want, live) {
        (Value::Object(w), Value::Object(l)) => {
            for (key, value) in w {
                let at = format!("{path}.{key}");
                match l.get(key) {
                    Some(found) => differences(&at, value, found, out),
                    None if value.is_null() => {}
                    None => out.push(at),
                }
            }
        }
        (Value::Array(w), Value::Array(l)) if w.len() == l.len() => {
            for (i, (a, b)) in w.iter().zip(l).enumerate() {
                differences(&format!("{path}[{i}]"), a, b, out);
            }
        }
        // 10 and 10.0 are the same number to the API server.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        _ => out.push(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(manager: &str, time: &str, fields: Value) -> Value {
        json!({"manager": manager, "operation": "Update", "time": time, "fieldsV1": fields})
    }

    fn live(entries: Vec<Value>, spec: Value) -> Value {
        json!({"metadata": {"managedFields": entries, "labels": {"a": "1"}}, "spec": spec})
    }

    #[test]
    fn an_edit_after_the_apply_is_drift_with_its_manager_and_field() {
        let rendered =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"priority": 10, "url": "x"}});
        let object = live(
            vec![
                entry("tideway", "2026-12-01T10:00:00Z", json!({"f:spec": {}})),
                entry(
                    "kubectl-edit",
                    "2026-12-01T10:05:00Z",
                    json!({"f:spec": {"f:priority": {}}}),
                ),
            ],
            json!({"priority": 7, "url": "x"}),
        );
        let d = drift(&rendered, &object, "tideway", &[]);
        assert_eq!(d.managers, ["kubectl-edit"]);
        assert_eq!(d.fields, [".spec.priority"]);
    }

    #[test]
    fn an_edit_before_the_last_apply_and_status_writers_are_not_drift() {
        let rendered = json!({"spec": {"priority": 10, "list": [1, 2]}});
        let object = live(
            vec![
                entry(
                    "kubectl-edit",
                    "2026-12-01T09:00:00Z",
                    json!({"f:spec": {}}),
                ),
                entry("tideway", "2026-12-01T10:00:00Z", json!({"f:spec": {}})),
                entry("istiod", "2026-12-01T11:00:00Z", json!({"f:status": {}})),
                entry(
                    "tideway-controller",
                    "2026-12-01T11:00:00Z",
                    json!({"f:metadata": {}}),
                ),
            ],
            // 10.0 is 10; a server default beyond the render is not drift.
            json!({"priority": 10.0, "list": [1, 2], "defaulted": true}),
        );
        let d = drift(&rendered, &object, "tideway", &["tideway-controller"]);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn a_forced_takeover_shows_in_the_values_and_list_elements_are_named() {
        let rendered = json!({"spec": {"d": [{"w": 50}, {"w": 30}], "gone": "x"}, "metadata": {"labels": {"a": "2"}}});
        let object = live(
            vec![entry("ops", "2026-12-01T10:00:00Z", json!({"f:spec": {}}))],
            json!({"d": [{"w": 50}, {"w": 31}]}),
        );
        let d = drift(&rendered, &object, "tideway", &[]);
        // Tideway has no entry at all: every other writer counts.
        assert_eq!(d.managers, ["ops"]);
        assert_eq!(
            d.fields,
            [".spec.d[1].w", ".spec.gone", ".metadata.labels[\"a\"]"]
        );
    }
}
