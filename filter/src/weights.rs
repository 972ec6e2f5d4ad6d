//! The weights channel's wire format: what the controller's weights API
//! (`GET /v1/weights`) answers and what the filter adopts.
//!
//! The controller owns base weights, costs, drain flags and factor weights at
//! run time; the plugin config holds the static values the filter falls back
//! to. Both sides use these types, so the server cannot write a document the
//! filter does not parse.
//!
//! HTTP contract (the server is `tideway run` or `tideway serve-weights`):
//! - `GET /v1/weights?service=a,b` (absent: every service) answers
//!   `200 application/json` with a [`WeightsDocument`] and
//!   `ETag: "<version>"`;
//! - `If-None-Match: "<version>"` with `wait=<seconds>s` holds the request
//!   until the version differs or the wait ends (then `304`, no body), so a
//!   change reaches every poller at once without polling load;
//! - `version` only ever increases for one server; a poller rejects a lower
//!   one (a stale replica or a replayed answer).
//!
//! A document may only adjust what the plugin config already names: a
//! service or destination the config lacks is rejected, so the weights
//! channel can never send traffic somewhere the policy did not list.

use crate::config::{ConfigError, FactorWeights};
use serde::{Deserialize, Serialize};

/// The path the weights API serves; it is `weightsSource.path`'s default,
/// so the configuration defines it.
pub use crate::config::WEIGHTS_PATH;

/// Everything the weights API says at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightsDocument {
    /// Monotonically increasing per server; `ETag` carries it too.
    pub version: u64,
    pub services: Vec<ServiceWeights>,
}

/// One service's run-time weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceWeights {
    /// The plugin config's `services[].name`.
    pub name: String,
    /// Factor weights replacing the config's for this service; absent: keep them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factors: Option<FactorWeights>,
    pub destinations: Vec<DestinationWeights>,
}

/// One destination's run-time weight, cost and drain flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationWeights {
    /// The plugin config's `services[].destinations[].name`.
    pub name: String,
    /// Base weight (≥ 0).
    pub weight: f64,
    /// Relative cost (≥ 0).
    pub cost: f64,
    /// Drained: sent no new traffic while any undrained destination is
    /// healthy (an operator's `tideway drain`, or no ready endpoints).
    #[serde(default)]
    pub drained: bool,
}

impl WeightsDocument {
    /// Parses and validates a document; errors name the field path and value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let document: Self = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new("weights", format!("not a weights document: {e}")))?;
        document.validate()?;
        Ok(document)
    }

    /// Checks values and uniqueness of names; the check against a plugin
    /// config is the adopter's (it knows which config is live).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if service.name.is_empty() {
                return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
            }
            if self.services[..i].iter().any(|s| s.name == service.name) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("{:?} appears twice", service.name),
                ));
            }
            if let Some(f) = &service.factors {
                for (field, value) in [
                    ("latency", f.latency),
                    ("load", f.load),
                    ("cost", f.cost),
                    ("affinity", f.affinity),
                ] {
                    check_non_negative(&format!("{at}.factors.{field}"), value)?;
                }
            }
            for (j, d) in service.destinations.iter().enumerate() {
                let at = format!("{at}.destinations[{j}]");
                if d.name.is_empty() {
                    return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
                }
                if service.destinations[..j].iter().any(|o| o.name == d.name) {
                    return Err(ConfigError::new(
                        format!("{at}.name"),
                        format!("{:?} appears twice", d.name),
                    ));
                }
                check_non_negative(&format!("{at}.weight"), d.weight)?;
                check_non_negative(&format!("{at}.cost"), d.cost)?;
            }
        }
        Ok(())
    }
}

fn check_non_negative(field: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} (must be a finite number ≥ 0)"),
        ))
    }
}

/// One destination's run-time values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DestinationOverride {
    pub weight: f64,
    pub cost: f64,
    pub drained: bool,
}

/// One service's run-time values; `None`: the static config value stays.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceOverride {
    pub factors: Option<FactorWeights>,
    /// Index-aligned with the config's `services[i].destinations`.
    pub destinations: Vec<Option<DestinationOverride>>,
}

/// A document as the engine applies it, checked against one config.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeWeights {
    pub version: u64,
    /// Index-aligned with the config's `services`.
    pub services: Vec<ServiceOverride>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_fields() {
        let doc = WeightsDocument {
            version: 7,
            services: vec![ServiceWeights {
                name: "reviews".into(),
                factors: None,
                destinations: vec![DestinationWeights {
                    name: "hangzhou".into(),
                    weight: 70.0,
                    cost: 1.0,
                    drained: true,
                }],
            }],
        };
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(WeightsDocument::parse(&bytes).unwrap(), doc);

        let bad = br#"{"version":1,"services":[{"name":"r","destinations":[{"name":"a","weight":-1,"cost":0}]}]}"#;
        let err = WeightsDocument::parse(bad).unwrap_err();
        assert_eq!(err.field, "services[0].destinations[0].weight");
        assert!(err.message.contains("-1"), "{err}");

        let dup = br#"{"version":1,"services":[{"name":"r","destinations":[]},{"name":"r","destinations":[]}]}"#;
        assert_eq!(
            WeightsDocument::parse(dup).unwrap_err().field,
            "services[1].name"
        );
        assert!(WeightsDocument::parse(b"{\"version\":1}").is_err());
    }
}
