//! `tideway check-config`: check a filter configuration exactly as the filter
//! will parse it, but with errors at their full path.
//!
//! Accepts the plugin configuration as JSON or YAML, or a whole `WasmPlugin`
//! (its `spec.pluginConfig` is checked; every WasmPlugin of a multi-document
//! file is), so what `tideway render` wrote or what is in the cluster
//! (`kubectl get wasmplugin -o yaml`) can be checked directly.

use crate::field_error::{FieldError, FieldErrors};
use crate::load;
use serde_json::Value;
use tideway_filter::config::PluginConfig;

/// One checked configuration: where it came from and what it holds.
#[derive(Debug)]
pub struct Checked {
    /// `spec.pluginConfig of WasmPlugin ns/name`, or empty for a bare config.
    pub origin: String,
    pub config: PluginConfig,
}

/// Check every configuration in `text`.
pub fn check(text: &str, source: &str) -> Result<Vec<Checked>, FieldErrors> {
    let docs = load::documents(text).map_err(|e| FieldErrors {
        source: source.to_string(),
        errors: vec![e],
    })?;
    if docs.is_empty() {
        // Empty bytes are "no configuration" for the filter: nothing governed.
        return Ok(vec![Checked {
            origin: String::new(),
            config: PluginConfig::default(),
        }]);
    }
    let mut out = Vec::new();
    let mut errors = FieldErrors::new(source);
    let many = docs.len() > 1;
    for (i, doc) in docs.iter().enumerate() {
        let (prefix, config, origin) =
            if doc.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
                let meta = &doc["metadata"];
                let origin = format!(
                    "WasmPlugin {}/{}",
                    meta["namespace"].as_str().unwrap_or("default"),
                    meta["name"].as_str().unwrap_or("?")
                );
                let config = doc
                    .get("spec")
                    .and_then(|s| s.get("pluginConfig"))
                    .cloned()
                    .unwrap_or(Value::Null);
                ("spec.pluginConfig", config, origin)
            } else if many {
                // Other objects of a rendered folder are not filter configs.
                continue;
            } else {
                ("", doc.clone(), String::new())
            };
        match check_value(&config, prefix) {
            Ok(config) => out.push(Checked { origin, config }),
            Err(mut e) => {
                if many {
                    // Several objects: say which one the path is in.
                    e.path = format!("(document {i}, {origin}) {}", e.path);
                }
                errors.push(e)
            }
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(FieldError::new(
            "kind",
            "no WasmPlugin",
            "a plugin configuration, or WasmPlugin objects",
        ));
    }
    errors.into_result().map(|()| out)
}

/// Parse and validate one configuration value with the filter's own
/// [`PluginConfig::from_value`] (the function `on_configure` uses), paths
/// under `prefix`.
pub fn check_value(config: &Value, prefix: &str) -> Result<PluginConfig, FieldError> {
    if config.is_null() {
        return Ok(PluginConfig::default());
    }
    PluginConfig::from_value(config).map_err(|e| load::from_config_error(&e).under(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
        "destinations":[{"name":"east","weight":90},{"name":"west","weight":10}]}]}"#;

    #[test]
    fn bare_json_and_yaml_are_read() {
        assert_eq!(
            check(GOOD, "c.json").expect("json")[0]
                .config
                .services
                .len(),
            1
        );
        let yaml =
            "services:\n- name: reviews\n  hosts: [reviews]\n  destinations:\n  - name: east\n";
        assert_eq!(
            check(yaml, "c.yaml").expect("yaml")[0].config.services[0].name,
            "reviews"
        );
    }

    #[test]
    fn float_where_integer_expected_names_path_and_value() {
        let e = check(r#"{"scheduler":{"decayMs":5000.5}}"#, "c.json").expect_err("bad");
        assert_eq!(e.errors[0].path, "scheduler.decayMs", "{e}");
        assert!(e.errors[0].value.contains("5000.5"), "{e}");
    }

    #[test]
    fn typo_names_full_path() {
        let bad = GOOD.replace(r#""weight":10"#, r#""weigths":10"#);
        let e = check(&bad, "c.json").expect_err("typo");
        assert_eq!(
            e.errors[0].path, "services[0].destinations[1].weigths",
            "{e}"
        );
    }

    #[test]
    fn wasm_plugin_spec_plugin_config_is_checked() {
        let wp = format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: t, namespace: prod}}\nspec:\n  url: oci://r.example/f@sha256:{}\n  pluginConfig: {}\n",
            "a".repeat(64),
            GOOD.replace(r#""weight":90"#, r#""weight":-1"#)
        );
        let e = check(&wp, "wp.yaml").expect_err("negative weight");
        assert_eq!(
            e.errors[0].path, "spec.pluginConfig.services[0].destinations[0].weight",
            "{e}"
        );
        let ok = wp.replace("-1", "90");
        let checked = check(&ok, "wp.yaml").expect("valid");
        assert_eq!(checked[0].origin, "WasmPlugin prod/t");
    }
}
