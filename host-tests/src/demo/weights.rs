//! The drain phase's lever: `tideway serve-weights` serving the policy's
//! weights, the filter polling it (`weightsSource` in the plugin config),
//! and `tideway drain` / `tideway undrain` as the operator runs them.
//!
//! When the CLI has no `serve-weights` (the weights server is built on its
//! own branch), the demo runs without the drain phase and says so: a drain
//! faked by editing the filter's configuration would not be `tideway drain`.

use super::DemoConfig;
use anyhow::Result;
use serde_json::Value;

/// A running weights server and the CLI that steers it.
pub struct WeightsControl {
    _private: (),
}

impl WeightsControl {
    /// Starts `tideway serve-weights` for the rendered policy; `Err` is the
    /// gap to report when the CLI cannot.
    pub fn start(config: &DemoConfig, _objects: &[Value]) -> Result<Option<Self>, String> {
        let help = super::tideway(&config.tideway_cli, &["--help"]).unwrap_or_default();
        if !help.contains("serve-weights") || !help.contains("drain") {
            return Err(
                "drain phase not run: this `tideway` has no `serve-weights`/`drain` \
                 (the weights API, issue 15, is not merged), so no operator drain can be shown"
                    .to_string(),
            );
        }
        Err("drain phase not run: `tideway serve-weights` is present but the demo does not drive it yet".to_string())
    }

    /// Point the WasmPlugin's pluginConfig at this server (`weightsSource`).
    pub fn configure(&self, _objects: &mut [Value]) -> Result<()> {
        Ok(())
    }

    /// The Envoy cluster the filter polls.
    pub fn envoy_cluster(&self) -> Value {
        Value::Null
    }

    /// `tideway drain MEMBER`.
    pub fn drain(&self, _member: &str) -> Result<()> {
        Ok(())
    }

    /// `tideway undrain` of everything drained.
    pub fn undrain_all(&self) -> Result<()> {
        Ok(())
    }
}
