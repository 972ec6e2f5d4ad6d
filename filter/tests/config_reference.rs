//! The configuration reference in `filter/README.md` is held against the
//! parser itself, so the two cannot drift: every field the parser accepts is
//! documented, and every documented field is one the parser accepts.
//!
//! The parser is asked for its fields rather than a list kept here: each
//! object of a configuration that uses every section gets an unknown field,
//! and serde's `deny_unknown_fields` error names the fields it expected.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tideway_filter::config::PluginConfig;

const PROBE: &str = "zzzNotAField";

/// A configuration with every object the schema has, so each can be probed.
fn every_section() -> Value {
    json!({
        "schemaVersion": 1,
        "services": [{
            "name": "reviews",
            "hosts": ["reviews.production.svc.cluster.local"],
            "routingHeader": "x-tideway-destination",
            "affinity": {"source": "header", "name": "x-user-id"},
            "failover": ["a", "b"],
            "weights": {"latency": 1, "load": 1, "cost": 1, "affinity": 1},
            "probe": {"cluster": "outbound|9080|{destination}|reviews", "path": "/healthz"},
            "destinations": [
                {"name": "a", "cluster": "cluster-a", "locality": "r/z", "weight": 1, "cost": 1},
                {"name": "b"}
            ]
        }],
        "scheduler": {"weights": {"latency": 0.4, "load": 0.3, "cost": 0.1, "affinity": 0.2}},
        "local": {"cluster": "cluster-a"},
        "trust": {"allSources": false},
        "tracing": {"mode": "span", "collector": {"cluster": "otel"}},
        "decisionHeader": false,
        "hopHeaders": true,
        "weightsSource": {"cluster": "weights", "authority": "weights:8080"}
    })
}

/// The field paths (`services.destinations.name`: arrays dropped) the parser
/// accepts, found by probing every object of `every_section()`.
fn fields_the_parser_accepts() -> BTreeSet<String> {
    let base = every_section();
    let mut accepted = BTreeSet::new();
    let mut objects = Vec::new();
    collect_objects(&base, String::new(), String::new(), &mut objects);
    for (pointer, path) in objects {
        let mut probed = base.clone();
        let Some(Value::Object(map)) = probed.pointer_mut(&pointer) else {
            panic!("no object at {pointer}");
        };
        map.insert(PROBE.to_string(), json!(0));
        let bytes = serde_json::to_vec(&probed).expect("serialise");
        let message = match PluginConfig::from_json(&bytes) {
            Ok(_) => panic!("an unknown field at `{pointer}` was accepted"),
            Err(e) => e.to_string(),
        };
        let needle = format!("unknown field `{PROBE}`, expected");
        let Some(at) = message.find(&needle) else {
            panic!("probing `{pointer}` gave no list of fields: {message}");
        };
        for name in backticked(&message[at + needle.len()..]) {
            accepted.insert(join(&path, &name));
        }
    }
    accepted
}

/// Every JSON object in `value` with its JSON pointer and its field path
/// (an array contributes its first element).
fn collect_objects(value: &Value, pointer: String, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            out.push((pointer.clone(), path.clone()));
            for (key, child) in map {
                collect_objects(child, format!("{pointer}/{key}"), join(&path, key), out);
            }
        }
        Value::Array(items) => {
            if let Some(first) = items.first() {
                collect_objects(first, format!("{pointer}/0"), path, out);
            }
        }
        _ => {}
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The reference table's rows: (field path without `[]`, the row's text).
fn documented_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("filter/README.md");
    let start = readme
        .find("Every field (defaults in brackets):")
        .expect("the reference table's heading in filter/README.md");
    readme[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|row| {
            let first_cell = row.split(" | ").next().unwrap_or_default();
            let name = backticked(first_cell)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("a row without a field: {row}"));
            let path = name.replace('…', "services[].").replace("[]", "");
            (path, row.to_string())
        })
        .collect()
}

#[test]
fn every_field_the_parser_accepts_is_in_the_reference() {
    let rows = documented_rows();
    assert!(
        rows.len() > 40,
        "the table was not found whole: {} rows",
        rows.len()
    );
    let documented = |field: &str| {
        // Its own row, rows of its fields (a section), or named in its
        // parent's row.
        rows.iter()
            .any(|(path, _)| path == field || path.starts_with(&format!("{field}.")))
            || field.rsplit_once('.').is_some_and(|(parent, name)| {
                rows.iter()
                    .any(|(path, row)| path == parent && row.contains(&format!("`{name}`")))
            })
    };
    let missing: Vec<_> = fields_the_parser_accepts()
        .into_iter()
        .filter(|field| !documented(field))
        .collect();
    assert!(
        missing.is_empty(),
        "fields missing from filter/README.md's reference: {missing:?}"
    );
}

#[test]
fn every_field_in_the_reference_is_one_the_parser_accepts() {
    let accepted = fields_the_parser_accepts();
    // The affinity's `source` is serde's enum tag, which the parser does not
    // list among a variant's fields.
    let unknown: Vec<_> = documented_rows()
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| !accepted.contains(path) && path != "services.affinity.source")
        .filter(|path| !accepted.iter().any(|a| a.starts_with(&format!("{path}."))))
        .collect();
    assert!(
        unknown.is_empty(),
        "documented fields the parser refuses: {unknown:?}"
    );
}

#[test]
fn the_probed_configuration_is_valid() {
    let bytes = serde_json::to_vec(&every_section()).expect("serialise");
    PluginConfig::from_json(&bytes).expect("every_section() must be a valid configuration");
}
