//! Adoption: a weights document checked against the live plugin config.
//!
//! The channel may only adjust what the policy already lists. A service or
//! destination the config lacks is rejected as unauthorised — never added —
//! so a compromised or misconfigured controller cannot send traffic
//! anywhere the policy did not name. What the document leaves out keeps its
//! static value. The result is index-aligned with the config it was checked
//! against, so the engine applies it without a name lookup; after a config
//! change the document is checked again.

use crate::config::{ConfigError, PluginConfig};
use crate::weights::{DestinationOverride, RuntimeWeights, ServiceOverride, WeightsDocument};

/// Why a document (or an answer carrying one) was not adopted; a metrics
/// dimension (`tideway.weights.rejected.<reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a valid weights document (JSON, types, values, size).
    Malformed,
    /// A lower version than one already adopted: a stale replica or a
    /// replayed answer.
    Stale,
    /// Names a service or destination the plugin config lacks.
    Unauthorised,
    /// The server refused the poll (401, 403): the filter is not allowed
    /// to read weights, so it has none to adopt.
    Denied,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::Malformed,
        RejectReason::Stale,
        RejectReason::Unauthorised,
        RejectReason::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Stale => "stale",
            RejectReason::Unauthorised => "unauthorised",
            RejectReason::Denied => "denied",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejection: why, and the field path and value that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub error: ConfigError,
}

impl Rejection {
    pub fn new(reason: RejectReason, error: ConfigError) -> Self {
        Self { reason, error }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights rejected ({}): {}: {}",
            self.reason.as_str(),
            self.error.field,
            self.error.message
        )
    }
}

/// Check a parsed document against `config`, and its values: everything
/// [`WeightsDocument::validate`] checks, in the same pass that maps names to
/// the config's indices (names must be the config's, so an empty one is
/// unknown; a repeated one finds its slot taken). One pass rather than
/// `validate` then a mapping: the module has a size budget, and the two
/// would walk the same document twice with the same checks.
pub fn check(doc: &WeightsDocument, config: &PluginConfig) -> Result<RuntimeWeights, Rejection> {
    let malformed = |field: String, message: String| {
        Rejection::new(RejectReason::Malformed, ConfigError::new(field, message))
    };
    let unknown = |field: String, what: &str, name: &str| {
        Rejection::new(
            RejectReason::Unauthorised,
            ConfigError::new(
                field,
                format!(
                    "{name:?} is not {what} of this plugin's configuration (the weights channel cannot add one)"
                ),
            ),
        )
    };
    let mut services: Vec<ServiceOverride> = config
        .services
        .iter()
        .map(|sc| ServiceOverride {
            factors: None,
            destinations: sc.destinations.iter().map(|_| None).collect(),
        })
        .collect();
    let mut seen = vec![false; services.len()];
    for (i, sw) in doc.services.iter().enumerate() {
        let at = format!("weights.services[{i}]");
        let Some(s) = config.services.iter().position(|s| s.name == sw.name) else {
            return Err(unknown(format!("{at}.name"), "a service", &sw.name));
        };
        if std::mem::replace(&mut seen[s], true) {
            return Err(malformed(
                format!("{at}.name"),
                format!("{:?} appears twice", sw.name),
            ));
        }
        if let Some(f) = &sw.factors {
            f.validate(&format!("{at}.factors"))
                .map_err(|e| malformed(e.field, e.message))?;
        }
        let sc = &config.services[s];
        let over = &mut services[s];
        over.factors = sw.factors;
        for (j, dw) in sw.destinations.iter().enumerate() {
            let dat = format!("{at}.destinations[{j}]");
            let Some(d) = sc.destinations.iter().position(|d| d.name == dw.name) else {
                return Err(unknown(
                    format!("{dat}.name"),
                    &format!("a destination of service {:?}", sw.name),
                    &dw.name,
                ));
            };
            if over.destinations[d].is_some() {
                return Err(malformed(
                    format!("{dat}.name"),
                    format!("{:?} appears twice", dw.name),
                ));
            }
            for (field, value) in [("weight", dw.weight), ("cost", dw.cost)] {
                if !value.is_finite() || value < 0.0 {
                    return Err(malformed(
                        format!("{dat}.{field}"),
                        format!("{value} (must be a finite number ≥ 0)"),
                    ));
                }
            }
            over.destinations[d] = Some(DestinationOverride {
                weight: dw.weight,
                cost: dw.cost,
                drained: dw.drained,
            });
        }
        let any_weight = sc
            .destinations
            .iter()
            .zip(&over.destinations)
            .any(|(dc, o)| o.map_or(dc.weight, |o| o.weight) > 0.0);
        if !any_weight {
            return Err(malformed(
                format!("{at}.destinations"),
                format!(
                    "every weight of service {:?} would be 0: nothing could be chosen",
                    sw.name
                ),
            ));
        }
    }
    Ok(RuntimeWeights {
        version: doc.version,
        services,
    })
}

/// Parse an answer body (its values are checked by [`check`]).
pub fn parse(bytes: &[u8]) -> Result<WeightsDocument, Rejection> {
    serde_json::from_slice(bytes).map_err(|e| {
        Rejection::new(
            RejectReason::Malformed,
            ConfigError::new("weights", format!("not a weights document: {e}")),
        )
    })
}

/// Parse and check an answer body in one step.
pub fn parse_and_check(bytes: &[u8], config: &PluginConfig) -> Result<RuntimeWeights, Rejection> {
    check(&parse(bytes)?, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FactorWeights;

    fn config() -> PluginConfig {
        PluginConfig::from_json(
            br#"{"services":[{"name":"reviews","hosts":["reviews"],
                "destinations":[{"name":"east","weight":3},{"name":"west","cost":2}]},
                {"name":"ratings","hosts":["ratings"],"destinations":[{"name":"east"}]}]}"#,
        )
        .expect("valid")
    }

    #[test]
    fn a_document_overrides_only_what_it_names() {
        let doc = br#"{"version":4,"services":[{"name":"reviews",
            "factors":{"cost":1},
            "destinations":[{"name":"west","weight":0.5,"cost":9,"drained":true}]}]}"#;
        let w = parse_and_check(doc, &config()).expect("adopted");
        assert_eq!(w.version, 4);
        assert_eq!(w.services.len(), 2);
        assert_eq!(
            w.services[0].destinations[0], None,
            "east keeps its static values"
        );
        assert_eq!(
            w.services[0].destinations[1],
            Some(DestinationOverride {
                weight: 0.5,
                cost: 9.0,
                drained: true
            })
        );
        assert_eq!(w.services[0].factors.map(|f| f.cost), Some(1.0));
        assert_eq!(w.services[1].destinations, vec![None]);
    }

    #[test]
    fn unknown_names_are_unauthorised_and_named() {
        let cases = [
            (
                r#"{"version":1,"services":[{"name":"payments","destinations":[]}]}"#,
                "weights.services[0].name",
                "\"payments\"",
            ),
            (
                r#"{"version":1,"services":[{"name":"ratings","destinations":[{"name":"east","weight":1,"cost":0},{"name":"evil","weight":1,"cost":0}]}]}"#,
                "weights.services[0].destinations[1].name",
                "\"evil\"",
            ),
        ];
        for (json, field, value) in cases {
            let r = parse_and_check(json.as_bytes(), &config()).unwrap_err();
            assert_eq!(r.reason, RejectReason::Unauthorised, "{json}");
            assert_eq!(r.error.field, field, "{json}");
            assert!(r.error.message.contains(value), "{r}");
        }
    }

    proptest::proptest! {
        /// The one-pass check rejects everything the document's own
        /// validation rejects (the controller's side), so the two cannot
        /// drift apart.
        #[test]
        fn check_rejects_whatever_validate_rejects(
            services in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["reviews", "ratings", ""]),
                    proptest::option::of(proptest::sample::select(vec![-1.0, 0.0, 0.5])),
                    proptest::collection::vec(
                        (
                            proptest::sample::select(vec!["east", "west", ""]),
                            proptest::sample::select(vec![-1.0, 0.0, 2.0]),
                            proptest::sample::select(vec![-0.5, 0.0, 1.0]),
                        ),
                        0..4,
                    ),
                ),
                0..4,
            )
        ) {
            let doc = WeightsDocument {
                version: 1,
                services: services
                    .into_iter()
                    .map(|(name, load, destinations)| crate::weights::ServiceWeights {
                        name: name.to_string(),
                        factors: load.map(|load| FactorWeights { load, ..FactorWeights::default() }),
                        destinations: destinations
                            .into_iter()
                            .map(|(name, weight, cost)| crate::weights::DestinationWeights {
                                name: name.to_string(),
                                weight,
                                cost,
                                drained: false,
                            })
                            .collect(),
                    })
                    .collect(),
            };
            if doc.validate().is_err() {
                proptest::prop_assert!(check(&doc, &config()).is_err(), "{doc:?}");
            }
        }
    }

    #[test]
    fn malformed_documents_are_named() {
        let cases = [
            ("not json", "weights", "not a weights document"),
            (
                r#"{"version":1,"services":[{"name":"reviews","destinations":[{"name":"east","weight":"x","cost":0}]}]}"#,
                "weights",
                "invalid type",
            ),
            (
                r#"{"version":1,"services":[{"name":"reviews","destinations":[{"name":"east","weight":-2,"cost":0}]}]}"#,
                "weights.services[0].destinations[0].weight",
                "-2",
            ),
            (
                r#"{"version":1,"services":[{"name":"reviews","destinations":[{"name":"east","weight":0,"cost":0},{"name":"west","weight":0,"cost":0}]}]}"#,
                "weights.services[0].destinations",
                "every weight",
            ),
        ];
        let more = [
            (
                r#"{"version":1,"services":[{"name":"reviews","destinations":[]},{"name":"reviews","destinations":[]}]}"#,
                "weights.services[1].name",
                "appears twice",
            ),
            (
                r#"{"version":1,"services":[{"name":"reviews","destinations":[{"name":"east","weight":1,"cost":0},{"name":"east","weight":1,"cost":0}]}]}"#,
                "weights.services[0].destinations[1].name",
                "appears twice",
            ),
            (
                r#"{"version":1,"services":[{"name":"reviews","factors":{"load":-1},"destinations":[]}]}"#,
                "weights.services[0].factors.load",
                "-1",
            ),
            (
                r#"{"version":1,"services":[{"name":"reviews","destinations":[{"name":"east","weight":1,"cost":-0.5}]}]}"#,
                "weights.services[0].destinations[0].cost",
                "-0.5",
            ),
        ];
        for (json, field, value) in cases.into_iter().chain(more) {
            let r = parse_and_check(json.as_bytes(), &config()).unwrap_err();
            assert_eq!(r.reason, RejectReason::Malformed, "{json}");
            assert_eq!(r.error.field, field, "{json}: {r}");
            assert!(r.error.message.contains(value), "{r}");
        }
    }
}
