//! The filter's scheduling core, compiled for the browser
//! (`wasm32-unknown-unknown`, wasm-bindgen): the dashboard's what-if calls
//! [`predict`], which runs the very engine the filter runs in Envoy
//! (`tideway_filter::whatif`), so a prediction on the page is the native
//! core's prediction for the same input, number for number.
//!
//! Only the host-independent core is linked: the proxy-wasm layer is
//! compiled for WASI alone, and its exports and `env` imports would make
//! this module uninstantiable in a page.

use wasm_bindgen::prelude::*;

/// Predict a scenario (JSON, `tideway_filter::whatif::Scenario`) for a
/// plugin config (the JSON the filter runs): the prediction as JSON, or an
/// error naming the field path and value.
#[wasm_bindgen]
pub fn predict(config_json: &str, scenario_json: &str) -> Result<String, JsError> {
    predict_native(config_json, scenario_json).map_err(|e| JsError::new(&e))
}

/// [`predict`] without the JavaScript types, for native callers and tests.
pub fn predict_native(config_json: &str, scenario_json: &str) -> Result<String, String> {
    let prediction =
        tideway_filter::whatif::predict_json(config_json.as_bytes(), scenario_json.as_bytes())
            .map_err(|e| e.to_string())?;
    serde_json::to_string(&prediction).map_err(|e| format!("prediction not serialisable: {e}"))
}

/// The core's version, so the page can show which scheduler it runs.
#[wasm_bindgen]
pub fn scheduler_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
