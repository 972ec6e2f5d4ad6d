//! The run-time weights every proxy adopts: what the policies say, bent by
//! the operator's overrides and the health the controller sees, published
//! as one [`WeightsDocument`] under one monotonically increasing version.
//!
//! Why one owner: the document a poller receives must be a consistent
//! snapshot (a drain and the weights it changes arrive together), and the
//! version must say "something changed" exactly when the document did. Every
//! input goes through [`WeightsState`]; each call that changes the document
//! bumps the version and publishes the new snapshot on a `tokio::sync::watch`
//! channel, which wakes every waiting long-poll at once — there is no polling
//! loop anywhere, and a call that changes nothing bumps nothing.
//!
//! Inputs:
//! - the policies ([`ServiceBase::from_policy`]): base weight and cost per
//!   destination, the scheduler's factor weights per service;
//! - operator overrides ([`Overrides`]): a cluster drained for every service
//!   or for one, a destination's weight and/or cost set;
//! - health ([`WeightsState::set_no_ready_endpoints`]): a member with no
//!   ready endpoints for a service is drained for it (the fleet discovery
//!   calls this; the operator's drain and this are independent flags).
//!
//! Versions survive a restart: a new version is `max(previous + 1, now in
//! milliseconds since the Unix epoch)`, so a restarted server starts above
//! anything it published before (the filter rejects a lower version as
//! stale) without storing a counter.

use crate::api::{Fleet, FleetMember, FleetSpec, TrafficPolicy};
use crate::field_error::{FieldError, FieldErrors};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tideway_filter::config::{FactorWeights, SchedulerConfig};
use tideway_filter::weights::{DestinationWeights, ServiceWeights, WeightsDocument};
use tokio::sync::watch;

/// One service as its policy defines it: the weights before overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBase {
    /// `spec.service.name` (the plugin config's `services[].name`).
    pub name: String,
    /// The scheduler's factor weights for this service.
    pub factors: FactorWeights,
    pub destinations: Vec<DestinationBase>,
}

/// One destination as its policy defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationBase {
    /// The subset name (the plugin config's `destinations[].name`).
    pub name: String,
    /// The member cluster it is in (what `tideway drain <cluster>` names).
    pub cluster: String,
    pub weight: f64,
    pub cost: f64,
}

impl ServiceBase {
    /// The same values `tideway render` writes into the plugin config, so
    /// that a document with no overrides changes nothing in the filter.
    pub fn from_policy(policy: &TrafficPolicy) -> Self {
        let spec = &policy.spec;
        let s = &spec.scheduler;
        let d = SchedulerConfig::default().weights;
        Self {
            name: spec.service.name.clone(),
            factors: FactorWeights {
                latency: s.weight_latency.unwrap_or(d.latency),
                load: s.weight_load.unwrap_or(d.load),
                cost: s.weight_cost.unwrap_or(d.cost),
                affinity: s.weight_affinity.unwrap_or(d.affinity),
            },
            destinations: spec
                .destinations
                .iter()
                .map(|d| DestinationBase {
                    name: d.subset().to_string(),
                    cluster: d.cluster.clone(),
                    weight: d.weight.unwrap_or(1.0),
                    cost: d.cost.unwrap_or(0.0),
                })
                .collect(),
        }
    }
}

/// The services of `policies`, each validated as `tideway render` would:
/// against `fleet`, or without one against a fleet of exactly the clusters
/// the policy names (so a serve-weights for local use needs no Fleet).
pub fn services_from_policies(
    policies: &[TrafficPolicy],
    fleet: Option<&Fleet>,
) -> Result<Vec<ServiceBase>, FieldErrors> {
    let mut services = Vec::new();
    for policy in policies {
        let mut errors = FieldErrors::new(format!(
            "TrafficPolicy {}/{}",
            crate::validate::policy_namespace(policy),
            policy.metadata.name.as_deref().unwrap_or("?")
        ));
        let own;
        let fleet = match fleet {
            Some(f) => f,
            None => {
                own = own_fleet(policy);
                &own
            }
        };
        crate::validate::policy(policy, fleet, &mut errors);
        errors.into_result()?;
        services.push(ServiceBase::from_policy(policy));
    }
    check_services(&services).map_err(FieldErrors::from)?;
    Ok(services)
}

/// Per service of `policies`, the plugin configuration the dashboard's
/// what-if runs, against `fleet` or each policy's own fleet as
/// [`services_from_policies`] does.
pub fn dashboard_configs(
    policies: &[TrafficPolicy],
    fleet: Option<&Fleet>,
) -> Result<BTreeMap<String, serde_json::Value>, FieldErrors> {
    let mut configs = BTreeMap::new();
    for policy in policies {
        let own;
        let f = match fleet {
            Some(f) => f,
            None => {
                own = own_fleet(policy);
                &own
            }
        };
        if let Some(config) = crate::compile::what_if_config(policy, f)? {
            configs.insert(policy.spec.service.name.clone(), config);
        }
    }
    Ok(configs)
}

/// A fleet of exactly the clusters `policy` names: what a serve-weights for
/// local use validates against when it is given no Fleet.
pub fn own_fleet(policy: &TrafficPolicy) -> Fleet {
    let clusters: BTreeSet<&str> = policy
        .spec
        .destinations
        .iter()
        .map(|d| d.cluster.as_str())
        .collect();
    Fleet::new(
        &policy.spec.fleet,
        FleetSpec {
            clusters: clusters
                .into_iter()
                .map(|name| FleetMember {
                    name: name.to_string(),
                    ..FleetMember::default()
                })
                .collect(),
            mesh: None,
            weights_endpoint: None,
        },
    )
}

/// What operators changed at run time (`tideway drain`, `tideway weight set`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Overrides {
    /// Clusters drained for every service.
    #[serde(default)]
    pub drained_clusters: BTreeSet<String>,
    /// Clusters drained for one service.
    #[serde(default)]
    pub drained: BTreeSet<ServiceCluster>,
    /// Weight and cost set per service and destination.
    #[serde(default)]
    pub weights: Vec<WeightOverride>,
    /// Factor weights set per service (the dashboard's "apply", or
    /// `POST /v1/factors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<FactorsOverride>,
}

/// An operator's factor weights for one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FactorsOverride {
    pub service: String,
    pub factors: FactorWeights,
}

/// A (service, cluster) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCluster {
    pub service: String,
    pub cluster: String,
}

/// An operator's weight and/or cost for one destination of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightOverride {
    pub service: String,
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// One published state: the document and its JSON, rendered once per
/// version so that ten thousand pollers woken by a change cost one
/// serialisation, not ten thousand.
#[derive(Debug)]
pub struct Snapshot {
    pub document: WeightsDocument,
    /// `{"version":…,"services":[…]}` with every service.
    full_body: Bytes,
    /// Each service's JSON object, for `?service=` subsets.
    service_json: BTreeMap<String, Bytes>,
}

impl Snapshot {
    fn new(document: WeightsDocument) -> Self {
        let service_json: BTreeMap<String, Bytes> = document
            .services
            .iter()
            .map(|s| (s.name.clone(), Bytes::from(to_json(s))))
            .collect();
        let full_body = Bytes::from(to_json(&document));
        Self {
            document,
            full_body,
            service_json,
        }
    }

    pub fn version(&self) -> u64 {
        self.document.version
    }

    /// Whether the document has this service.
    pub fn has_service(&self, name: &str) -> bool {
        self.service_json.contains_key(name)
    }

    /// Service names, sorted.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.service_json.keys().map(String::as_str)
    }

    /// The response body: every service, or only `services` (known names,
    /// in the document's order, each once).
    pub fn body(&self, services: Option<&BTreeSet<String>>) -> Bytes {
        let Some(wanted) = services else {
            return self.full_body.clone();
        };
        let mut out = format!("{{\"version\":{},\"services\":[", self.version()).into_bytes();
        let mut first = true;
        for (name, json) in &self.service_json {
            if wanted.contains(name) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(json);
            }
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

/// Our own types hold only strings and finite numbers: serialising cannot
/// fail; an empty body would be rejected by every poller rather than panic.
fn to_json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The outcome of one input: the version now published and whether this
/// call changed the document (an idempotent repeat does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Change {
    pub version: u64,
    pub changed: bool,
}

/// The single owner of the run-time weights (see the module doc).
#[derive(Debug)]
pub struct WeightsState {
    inner: Mutex<Inner>,
    published: watch::Sender<Arc<Snapshot>>,
}

#[derive(Debug)]
struct Inner {
    services: Vec<ServiceBase>,
    overrides: Overrides,
    /// (service, cluster) with no ready endpoints.
    unready: BTreeSet<ServiceCluster>,
}

impl WeightsState {
    /// A state over these services (names must be unique: see
    /// [`check_services`]), with these overrides.
    pub fn new(services: Vec<ServiceBase>, overrides: Overrides) -> Result<Self, FieldError> {
        check_services(&services)?;
        let inner = Inner {
            services,
            overrides,
            unready: BTreeSet::new(),
        };
        let document = inner.document(next_version(0));
        let (published, _) = watch::channel(Arc::new(Snapshot::new(document)));
        Ok(Self {
            inner: Mutex::new(inner),
            published,
        })
    }

    /// The state for these policies, without overrides.
    pub fn from_policies(policies: &[TrafficPolicy]) -> Result<Self, FieldError> {
        Self::new(
            policies.iter().map(ServiceBase::from_policy).collect(),
            Overrides::default(),
        )
    }

    /// The snapshot published now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.borrow().clone()
    }

    /// A receiver that sees every published snapshot (the long-poll waits on it).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.published.subscribe()
    }

    /// The operator overrides in force (to persist or to show).
    pub fn overrides(&self) -> Overrides {
        self.lock().overrides.clone()
    }

    /// Replace the policies (a policy added, changed or deleted). Overrides
    /// stay, also for services now gone, so a policy that comes back keeps
    /// its drain.
    pub fn replace_services(&self, services: Vec<ServiceBase>) -> Result<Change, FieldError> {
        check_services(&services)?;
        self.update(|inner| {
            inner.services = services;
            Ok(())
        })
    }

    /// Drain (or undrain) `cluster`: for every service, or for `service`.
    ///
    /// Undraining a cluster everywhere also lifts its per-service drains
    /// (what an operator undoing `tideway drain <cluster>` expects); while a
    /// cluster is drained everywhere, undraining it for one service is
    /// refused rather than silently doing nothing.
    pub fn drain(
        &self,
        cluster: &str,
        service: Option<&str>,
        drained: bool,
    ) -> Result<Change, FieldError> {
        self.update(|inner| {
            match service {
                None => {
                    if !inner.services.iter().any(|s| s.has_cluster(cluster)) {
                        return Err(FieldError::json(
                            "cluster",
                            &cluster,
                            format!(
                                "a cluster some policy sends traffic to ({})",
                                inner.known_clusters()
                            ),
                        ));
                    }
                    let o = &mut inner.overrides;
                    if drained {
                        o.drained_clusters.insert(cluster.to_string());
                    } else {
                        o.drained_clusters.remove(cluster);
                        o.drained.retain(|d| d.cluster != cluster);
                    }
                }
                Some(service) => {
                    let base = inner.service(service)?;
                    if !base.has_cluster(cluster) {
                        return Err(FieldError::json(
                            "cluster",
                            &cluster,
                            format!(
                                "a cluster of service {service:?} ({})",
                                join(base.destinations.iter().map(|d| d.cluster.as_str()))
                            ),
                        ));
                    }
                    let key = ServiceCluster {
                        service: service.to_string(),
                        cluster: cluster.to_string(),
                    };
                    let o = &mut inner.overrides;
                    if drained {
                        o.drained.insert(key);
                    } else {
                        if o.drained_clusters.contains(cluster) {
                            return Err(FieldError::json(
                                "service",
                                &service,
                                format!(
                                    "no service: cluster {cluster:?} is drained for every service; undrain it without a service"
                                ),
                            ));
                        }
                        o.drained.remove(&key);
                    }
                }
            }
            Ok(())
        })
    }

    /// Set a destination's weight and/or cost (`None` keeps the current
    /// override, if any); with both `None` and `reset`, back to the policy's.
    pub fn set_weight(
        &self,
        service: &str,
        destination: &str,
        weight: Option<f64>,
        cost: Option<f64>,
        reset: bool,
    ) -> Result<Change, FieldError> {
        for (field, value) in [("weight", weight), ("cost", cost)] {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(FieldError::json(field, &v, "a finite number ≥ 0"));
                }
            }
        }
        if !reset && weight.is_none() && cost.is_none() {
            return Err(FieldError::missing(
                "weight",
                "a weight, a cost, or both (or reset)",
            ));
        }
        self.update(|inner| {
            let base = inner.service(service)?;
            if !base.destinations.iter().any(|d| d.name == destination) {
                return Err(FieldError::json(
                    "destination",
                    &destination,
                    format!(
                        "a destination of service {service:?} ({})",
                        join(base.destinations.iter().map(|d| d.name.as_str()))
                    ),
                ));
            }
            let list = &mut inner.overrides.weights;
            let at = list
                .iter()
                .position(|w| w.service == service && w.destination == destination);
            let mut entry = match at {
                Some(i) => list.remove(i),
                None => WeightOverride {
                    service: service.to_string(),
                    destination: destination.to_string(),
                    weight: None,
                    cost: None,
                },
            };
            if reset {
                entry.weight = None;
                entry.cost = None;
            }
            entry.weight = weight.or(entry.weight);
            entry.cost = cost.or(entry.cost);
            if entry.weight.is_some() || entry.cost.is_some() {
                list.push(entry);
                list.sort_by(|a, b| {
                    (&a.service, &a.destination).cmp(&(&b.service, &b.destination))
                });
            }
            Ok(())
        })
    }

    /// Service → destination → the member cluster it is in (what a drain
    /// names), for the dashboard.
    pub fn destination_clusters(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.lock()
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.destinations
                        .iter()
                        .map(|d| (d.name.clone(), d.cluster.clone()))
                        .collect(),
                )
            })
            .collect()
    }

    /// Set a service's factor weights (`None`: back to the policy's).
    pub fn set_factors(
        &self,
        service: &str,
        factors: Option<FactorWeights>,
    ) -> Result<Change, FieldError> {
        if let Some(f) = &factors {
            for (name, v) in [
                ("latency", f.latency),
                ("load", f.load),
                ("cost", f.cost),
                ("affinity", f.affinity),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(FieldError::json(
                        format!("factors.{name}"),
                        &v,
                        "a finite number ≥ 0",
                    ));
                }
            }
        }
        self.update(|inner| {
            inner.service(service)?;
            let list = &mut inner.overrides.factors;
            list.retain(|f| f.service != service);
            if let Some(factors) = factors {
                list.push(FactorsOverride {
                    service: service.to_string(),
                    factors,
                });
                list.sort_by(|a, b| a.service.cmp(&b.service));
            }
            Ok(())
        })
    }

    /// The health input: `cluster` has (no) ready endpoints for `service`.
    /// Recorded even for a service no policy names yet (discovery may see a
    /// cluster before the policy arrives); it applies once one does.
    pub fn set_no_ready_endpoints(&self, cluster: &str, service: &str, no_ready: bool) -> Change {
        let key = ServiceCluster {
            service: service.to_string(),
            cluster: cluster.to_string(),
        };
        let result = self.update(|inner| {
            if no_ready {
                inner.unready.insert(key);
            } else {
                inner.unready.remove(&key);
            }
            Ok(())
        });
        // The closure never fails.
        result.unwrap_or_else(|_| Change {
            version: self.snapshot().version(),
            changed: false,
        })
    }

    /// Apply `change`; publish a new version only when the document changed.
    fn update(
        &self,
        change: impl FnOnce(&mut Inner) -> Result<(), FieldError>,
    ) -> Result<Change, FieldError> {
        let mut inner = self.lock();
        change(&mut inner)?;
        let current = self.published.borrow().clone();
        let mut document = inner.document(current.version());
        if document.services == current.document.services {
            return Ok(Change {
                version: current.version(),
                changed: false,
            });
        }
        document.version = next_version(current.version());
        let version = document.version;
        // Published under the lock: versions leave in the order they were made.
        self.published
            .send_replace(Arc::new(Snapshot::new(document)));
        Ok(Change {
            version,
            changed: true,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated in a
        // way that matters (each update publishes a whole document or none).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ServiceBase {
    fn has_cluster(&self, cluster: &str) -> bool {
        self.destinations.iter().any(|d| d.cluster == cluster)
    }
}

impl Inner {
    fn service(&self, name: &str) -> Result<&ServiceBase, FieldError> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                FieldError::json(
                    "service",
                    &name,
                    format!(
                        "a service some policy steers ({})",
                        join(self.services.iter().map(|s| s.name.as_str()))
                    ),
                )
            })
    }

    fn known_clusters(&self) -> String {
        let all: BTreeSet<&str> = self
            .services
            .iter()
            .flat_map(|s| s.destinations.iter().map(|d| d.cluster.as_str()))
            .collect();
        join(all.into_iter())
    }

    /// The effective document (services sorted by name, destinations in
    /// policy order).
    fn document(&self, version: u64) -> WeightsDocument {
        let o = &self.overrides;
        let mut services: Vec<ServiceWeights> = self
            .services
            .iter()
            .map(|s| ServiceWeights {
                name: s.name.clone(),
                factors: Some(
                    o.factors
                        .iter()
                        .find(|f| f.service == s.name)
                        .map_or(s.factors, |f| f.factors),
                ),
                destinations: s
                    .destinations
                    .iter()
                    .map(|d| {
                        let key = ServiceCluster {
                            service: s.name.clone(),
                            cluster: d.cluster.clone(),
                        };
                        let set = o
                            .weights
                            .iter()
                            .find(|w| w.service == s.name && w.destination == d.name);
                        DestinationWeights {
                            name: d.name.clone(),
                            weight: set.and_then(|w| w.weight).unwrap_or(d.weight),
                            cost: set.and_then(|w| w.cost).unwrap_or(d.cost),
                            drained: o.drained_clusters.contains(&d.cluster)
                                || o.drained.contains(&key)
                                || self.unready.contains(&key),
                        }
                    })
                    .collect(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        WeightsDocument { version, services }
    }
}

/// Service names must be unique: the filter finds a service's weights by
/// name, and two policies for one name would fight over them.
pub fn check_services(services: &[ServiceBase]) -> Result<(), FieldError> {
    for (i, s) in services.iter().enumerate() {
        if services[..i].iter().any(|o| o.name == s.name) {
            return Err(FieldError::json(
                "spec.service.name",
                &s.name,
                "one policy per service name (two policies name it)",
            ));
        }
    }
    Ok(())
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none known".to_string()
    } else {
        format!("known: {}", names.join(", "))
    }
}

/// `max(previous + 1, now in ms)`: see the module doc.
fn next_version(previous: u64) -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    previous.saturating_add(1).max(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, clusters: &[&str]) -> ServiceBase {
        ServiceBase {
            name: name.into(),
            factors: SchedulerConfig::default().weights,
            destinations: clusters
                .iter()
                .map(|c| DestinationBase {
                    name: c.to_string(),
                    cluster: c.to_string(),
                    weight: 1.0,
                    cost: 0.0,
                })
                .collect(),
        }
    }

    fn drained(state: &WeightsState) -> Vec<(String, String)> {
        let snap = state.snapshot();
        snap.document
            .services
            .iter()
            .flat_map(|s| {
                s.destinations
                    .iter()
                    .filter(|d| d.drained)
                    .map(|d| (s.name.clone(), d.name.clone()))
            })
            .collect()
    }

    #[test]
    fn drain_by_cluster_reaches_every_service_and_undo_lifts_per_service_drains() {
        let state = WeightsState::new(
            vec![service("a", &["east", "west"]), service("b", &["east"])],
            Overrides::default(),
        )
        .unwrap();
        let v0 = state.snapshot().version();
        let c = state.drain("east", None, true).unwrap();
        assert!(c.changed && c.version > v0);
        assert_eq!(
            drained(&state),
            [("a".into(), "east".into()), ("b".into(), "east".into())]
        );
        // Repeating a drain changes nothing and bumps nothing.
        assert_eq!(state.drain("east", None, true).unwrap().version, c.version);
        // While drained everywhere, a per-service undo is refused.
        let e = state.drain("east", Some("a"), false).unwrap_err();
        assert_eq!(e.path, "service");
        state.drain("west", Some("a"), true).unwrap();
        state.drain("east", None, false).unwrap();
        assert_eq!(drained(&state), [("a".into(), "west".into())]);
        state.drain("west", None, false).unwrap();
        assert!(drained(&state).is_empty());
    }

    #[test]
    fn unknown_names_are_errors_naming_the_parameter() {
        let state = WeightsState::new(vec![service("a", &["east"])], Overrides::default()).unwrap();
        let e = state.drain("north", None, true).unwrap_err();
        assert_eq!(e.path, "cluster");
        assert!(
            e.value.contains("north") && e.expected.contains("east"),
            "{e}"
        );
        assert_eq!(
            state.drain("east", Some("zz"), true).unwrap_err().path,
            "service"
        );
        assert_eq!(
            state
                .set_weight("a", "nowhere", Some(1.0), None, false)
                .unwrap_err()
                .path,
            "destination"
        );
        let e = state
            .set_weight("a", "east", Some(-1.0), None, false)
            .unwrap_err();
        assert_eq!((e.path.as_str(), e.value.as_str()), ("weight", "-1.0"));
        assert!(state
            .set_weight("a", "east", Some(f64::NAN), None, false)
            .is_err());
    }

    #[test]
    fn weight_set_overrides_then_reset_restores_the_policy() {
        let state = WeightsState::new(vec![service("a", &["east"])], Overrides::default()).unwrap();
        state
            .set_weight("a", "east", Some(5.0), None, false)
            .unwrap();
        state
            .set_weight("a", "east", None, Some(2.0), false)
            .unwrap();
        let d = state.snapshot().document.services[0].destinations[0].clone();
        assert_eq!((d.weight, d.cost), (5.0, 2.0));
        state.set_weight("a", "east", None, None, true).unwrap();
        let d = state.snapshot().document.services[0].destinations[0].clone();
        assert_eq!((d.weight, d.cost), (1.0, 0.0));
        assert!(state.overrides().weights.is_empty());
    }

    #[test]
    fn factors_override_the_policys_then_reset_restores_them() {
        let state = WeightsState::new(vec![service("a", &["east"])], Overrides::default()).unwrap();
        let policy = state.snapshot().document.services[0].factors;
        let canary = FactorWeights {
            latency: 0.0,
            load: 0.0,
            cost: 0.0,
            affinity: 1.0,
        };
        let c = state.set_factors("a", Some(canary)).unwrap();
        assert!(c.changed);
        assert_eq!(state.snapshot().document.services[0].factors, Some(canary));
        assert_eq!(state.overrides().factors.len(), 1, "kept as an override");
        assert!(
            !state.set_factors("a", Some(canary)).unwrap().changed,
            "idempotent"
        );
        state.set_factors("a", None).unwrap();
        assert_eq!(state.snapshot().document.services[0].factors, policy);
        let e = state
            .set_factors(
                "a",
                Some(FactorWeights {
                    latency: -1.0,
                    ..canary
                }),
            )
            .unwrap_err();
        assert_eq!(e.path, "factors.latency");
        assert!(e.value.contains("-1"), "{e}");
        assert_eq!(state.set_factors("zz", None).unwrap_err().path, "service");
    }

    #[test]
    fn no_ready_endpoints_drains_independently_of_the_operator() {
        let state =
            WeightsState::new(vec![service("a", &["east", "west"])], Overrides::default()).unwrap();
        assert!(state.set_no_ready_endpoints("west", "a", true).changed);
        state.drain("west", None, true).unwrap();
        state.drain("west", None, false).unwrap();
        // The operator's undrain does not revive a cluster with no endpoints.
        assert_eq!(drained(&state), [("a".into(), "west".into())]);
        assert!(state.set_no_ready_endpoints("west", "a", false).changed);
        assert!(drained(&state).is_empty());
        // A service not (yet) in any policy: recorded, nothing published.
        assert!(!state.set_no_ready_endpoints("west", "later", true).changed);
    }

    #[test]
    fn versions_only_increase_and_subsets_are_valid_documents() {
        let state = WeightsState::new(
            vec![service("b", &["east"]), service("a", &["east"])],
            Overrides::default(),
        )
        .unwrap();
        let mut last = state.snapshot().version();
        for i in 0..50u32 {
            let c = state.drain("east", None, i.is_multiple_of(2)).unwrap();
            assert!(c.version > last, "{} after {last}", c.version);
            last = c.version;
        }
        let snap = state.snapshot();
        let full = WeightsDocument::parse(&snap.body(None)).unwrap();
        assert_eq!(full, snap.document);
        let only_b =
            WeightsDocument::parse(&snap.body(Some(&BTreeSet::from(["b".to_string()])))).unwrap();
        assert_eq!(only_b.version, snap.version());
        assert_eq!(only_b.services.len(), 1);
        assert_eq!(only_b.services[0].name, "b");
    }

    #[test]
    fn duplicate_service_names_are_refused() {
        let e = WeightsState::new(
            vec![service("a", &["east"]), service("a", &["west"])],
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.service.name");
    }
}
