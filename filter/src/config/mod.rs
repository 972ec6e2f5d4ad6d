//! The plugin configuration: the JSON Istio hands the filter as a
//! `WasmPlugin`'s `pluginConfig` (Istio serialises the YAML object to JSON and
//! Envoy passes those bytes to `on_configure` unchanged).
//!
//! The schema is strict (`deny_unknown_fields`) so a typo is an error rather
//! than a silently ignored setting, and every validation error names the field
//! path and the offending value. The controller renders these same types, so
//! the controller and the filter cannot disagree about the format.
//!
//! Modules: `types` (the schema), `defaults` (what an absent field means),
//! `validate` (what the types cannot check), `json_path` (where in the
//! JSON a typing error is).

mod defaults;
mod json_path;
mod types;
mod validate;

pub use defaults::{
    DEFAULT_GRPC_FAILURE_CODES, DEFAULT_ROUTING_HEADER, SCHEMA_VERSION, WEIGHTS_PATH,
};
pub(crate) use json_path::typing_error;
pub use json_path::ROOT;
pub use types::*;
pub use validate::{is_dns_label, weights_source_bounds};

pub use crate::config_error::ConfigError;

impl PluginConfig {
    /// Parse and validate the bytes Envoy hands `on_configure`. Empty bytes
    /// mean "no configuration": nothing is governed.
    ///
    /// Istio writes these bytes from the WasmPlugin's YAML, so a line and
    /// column would point into JSON the user never saw: a typing error
    /// names the full field path (`services[0].destinations[1].weigths`,
    /// `scheduler.decayMs`) and the value instead. Only malformed JSON,
    /// which Istio never sends, is reported by position.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let trimmed = bytes.iter().all(|b| b.is_ascii_whitespace());
        if trimmed {
            return Ok(Self::default());
        }
        let config: PluginConfig =
            serde_json::from_slice(bytes).map_err(|e| typing_error(bytes, e))?;
        config.validate()?;
        Ok(config)
    }

    /// Type and validate a configuration already parsed into a JSON value
    /// (from YAML, by the CLI), with the same error paths as
    /// [`PluginConfig::from_json`].
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ConfigError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| ConfigError::new(ROOT, format!("not representable as JSON: {e}")))?;
        Self::from_json(&bytes)
    }
}

#[cfg(test)]
mod tests;
