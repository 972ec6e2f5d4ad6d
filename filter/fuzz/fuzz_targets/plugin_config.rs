//! `PluginConfig::from_json`, the bytes Envoy hands `on_configure`.
//!
//! Besides "never panics", a config the filter accepts must survive the trip
//! the controller makes: rendered to JSON with the same serde types and parsed
//! again, it is accepted and is the same config (the controller renders, the
//! filter parses; drift there is a silent policy change). A rejection must
//! say something.
//!
//! "The same" is exact: every field identical and every number the same
//! `f64`, bit for bit. (This target found serde_json's default,
//! best-effort float parser bringing numbers with 16-17 significant digits
//! or extreme exponents back a few ULP off; the filter now builds serde_json
//! with `float_roundtrip`, its exact parser.) serde_json writes the shortest
//! form that reads back as the same double, and that form is unique, so
//! equal renders mean equal configs; `first_difference` only names where
//! they part.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tideway_filter::config::PluginConfig;

/// Where `a` and `b` first differ (numbers compared by their bits).
fn first_difference(a: &Value, b: &Value, path: &mut String) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let bits = |n: &serde_json::Number| n.as_f64().map(f64::to_bits);
            (x != y || x.is_f64() != y.is_f64() || bits(x) != bits(y))
                .then(|| format!("{path}: {x} became {y}"))
        }
        (Value::Array(xs), Value::Array(ys)) if xs.len() == ys.len() => {
            xs.iter().zip(ys).enumerate().find_map(|(i, (x, y))| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = first_difference(x, y, path);
                path.truncate(len);
                found
            })
        }
        (Value::Object(xs), Value::Object(ys)) if xs.len() == ys.len() => {
            xs.iter().find_map(|(k, x)| {
                let Some(y) = ys.get(k) else {
                    return Some(format!("{path}.{k} disappeared"));
                };
                let len = path.len();
                path.push('.');
                path.push_str(k);
                let found = first_difference(x, y, path);
                path.truncate(len);
                found
            })
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

fn render(config: &PluginConfig) -> Vec<u8> {
    serde_json::to_vec(config).expect("an accepted config renders")
}

fn reparse(rendered: &[u8]) -> PluginConfig {
    PluginConfig::from_json(rendered).unwrap_or_else(|err| {
        panic!(
            "the rendered config is rejected: {err}\n{}",
            String::from_utf8_lossy(rendered)
        )
    })
}

fn assert_same(a: &PluginConfig, b: &PluginConfig, rendered: &[u8]) {
    if render(a) == render(b) {
        return;
    }
    let (va, vb) = (
        serde_json::to_value(a).expect("to_value"),
        serde_json::to_value(b).expect("to_value"),
    );
    let diff = first_difference(&va, &vb, &mut String::new())
        .unwrap_or_else(|| "the renders differ".to_string());
    panic!(
        "render → parse changed the config: {diff}\n{}",
        String::from_utf8_lossy(rendered)
    );
}

fuzz_target!(|data: &[u8]| {
    let config = match PluginConfig::from_json(data) {
        Ok(config) => config,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    assert!(
        config.validate().is_ok(),
        "from_json accepted a config validate rejects"
    );
    let rendered = render(&config);
    let reparsed = reparse(&rendered);
    assert_same(&config, &reparsed, &rendered);
    // And once more from the re-parsed config.
    let again = render(&reparsed);
    assert_same(&config, &reparse(&again), &again);
});
