//! What the fuzz targets (`filter/fuzz`, `cargo xtask fuzz`) found, kept as
//! plain tests so it holds without a fuzzer.

use tideway_filter::config::PluginConfig;

/// plugin_config: the controller renders a `PluginConfig` with serde_json
/// and the filter parses it back; the two must be the same policy, bit for
/// bit. serde_json's default float parser is best-effort and brought
/// `123456789.12345679` (the shortest form of the double nearest
/// 123456789.123456789, which is what rendering writes) back one ULP off;
/// the filter now builds serde_json with `float_roundtrip`, its exact
/// parser.
#[test]
fn rendered_floats_parse_back_exactly() {
    let json = br#"{"scheduler":{"weights":{"cost":123456789.123456789}}}"#;
    let config = PluginConfig::from_json(json).expect("valid");
    let written = config.scheduler.weights.cost;
    // The double nearest the written number, whose shortest form is this.
    assert_eq!(written.to_bits(), 123456789.12345679f64.to_bits());
    let rendered = serde_json::to_vec(&config).expect("renders");
    let reparsed = PluginConfig::from_json(&rendered).expect("reparses");
    let value = reparsed.scheduler.weights.cost;
    assert_eq!(
        value.to_bits(),
        written.to_bits(),
        "{written} became {value} ({} ULP)",
        value.to_bits().abs_diff(written.to_bits())
    );
}

/// The kinds of number the default parser got wrong (16-17 significant
/// digits, extreme exponents, subnormals) come back exactly.
#[test]
fn hard_floats_parse_back_exactly() {
    let hard: [f64; 8] = [
        123456789.12345679,
        0.1 + 0.2,
        f64::MIN_POSITIVE,
        5e-324,
        1.7976931348623157e308,
        9007199254740991.0,
        8.98846567431158e307,
        1e-300 / 3.0,
    ];
    for cost in hard {
        let json = format!(r#"{{"scheduler":{{"weights":{{"cost":{cost:?}}}}}}}"#);
        let config = PluginConfig::from_json(json.as_bytes()).expect("valid");
        let value = config.scheduler.weights.cost;
        assert_eq!(
            value.to_bits(),
            cost.to_bits(),
            "{json}: read back {value:?}"
        );
    }
}
