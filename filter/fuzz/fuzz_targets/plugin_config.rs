//! `PluginConfig::from_json`, the bytes Envoy hands `on_configure`.
//!
//! Besides "never panics", a config the filter accepts must survive the trip
//! the controller makes: rendered to JSON with the same serde types and parsed
//! again, it is accepted and is the same config (the controller renders, the
//! filter parses; drift there is a silent policy change). A rejection must
//! say something.
//!
//! "The same" allows one thing, found by this target and documented in the
//! README: serde_json's default float parser is best-effort, so a number
//! whose shortest form needs 16-17 significant digits, or has an extreme
//! exponent, can come back a few ULP off (its exact parser, the
//! `float_roundtrip` feature, costs the wasm module 21 KB and would break
//! its 300 KB budget). Every other field must be identical, and every number
//! within a relative `MAX_RELATIVE_ERROR` (or `TINY` absolutely, where
//! subnormal numbers have no relative precision to keep).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tideway_filter::config::PluginConfig;

/// How far a rendered-and-reparsed number may move, relative to itself
/// (about four ULP).
const MAX_RELATIVE_ERROR: f64 = 4.0 * f64::EPSILON;
/// Below this, an absolute error is allowed instead.
const TINY: f64 = 1e-300;

fn close(a: f64, b: f64) -> bool {
    let error = (a - b).abs();
    error <= MAX_RELATIVE_ERROR * a.abs().max(b.abs()) || error < TINY
}

/// `a` and `b` are the same JSON, numbers `close`.
fn same(a: &Value, b: &Value, path: &mut String) -> Result<(), String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_f64(), y.as_f64()) {
            (Some(fx), Some(fy)) if x.is_f64() && y.is_f64() && close(fx, fy) => Ok(()),
            _ => Err(format!("{path}: {x} became {y}")),
        },
        (Value::Array(xs), Value::Array(ys)) if xs.len() == ys.len() => {
            for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                same(x, y, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        (Value::Object(xs), Value::Object(ys)) if xs.len() == ys.len() => {
            for (k, x) in xs {
                let y = ys.get(k).ok_or_else(|| format!("{path}.{k} disappeared"))?;
                let len = path.len();
                path.push('.');
                path.push_str(k);
                same(x, y, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ if a == b => Ok(()),
        _ => Err(format!("{path}: {a} became {b}")),
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
    let (va, vb) = (
        serde_json::to_value(a).expect("to_value"),
        serde_json::to_value(b).expect("to_value"),
    );
    if let Err(diff) = same(&va, &vb, &mut String::new()) {
        panic!(
            "render → parse changed the config: {diff}\n{}",
            String::from_utf8_lossy(rendered)
        );
    }
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
    // And once more from the re-parsed config: the drift does not walk.
    let again = render(&reparsed);
    assert_same(&config, &reparse(&again), &again);
});
