//! Compile a validated `TrafficPolicy` × `Fleet` into the Istio resources
//! each member cluster needs. Pure functions: no I/O, same input → the same
//! objects in the same order (so the same bytes once serialised).
//!
//! Per member cluster:
//! - a `WasmPlugin` per caller namespace, whose `pluginConfig` is the
//!   filter's own [`PluginConfig`] for *that* cluster (its cluster id and
//!   locality in `local`);
//! - a `DestinationRule` with one subset per destination selecting
//!   `topology.istio.io/cluster: <member>` (Istio labels every endpoint with
//!   its cluster ID), plus canary subsets, connection pool, outlier
//!   detection, locality load balancing and TLS;
//! - a `VirtualService` routing each exact value of the routing header to
//!   its subset, the canary split, retries/timeout/fault on every route, and
//!   a default route that serves whenever the filter decided nothing;
//! - `PeerAuthentication`, `AuthorizationPolicy` (ALLOW rules, and the DENY
//!   at the ingress gateways that keeps clients outside the mesh from
//!   choosing a destination by header), `ServiceEntry` (cross-region, and
//!   the hub's weights endpoint when the Fleet names one);
//! - a `PrometheusRule` and a Grafana dashboard for the filter's metrics.
//!
//! Only the `WasmPlugin`s differ between members; [`Compiled`] keeps them
//! apart so that the Karmada output can carry the difference as overrides.

use crate::api::{CallerSpec, Fleet, FleetMember, TrafficPolicy};
use crate::field_error::{FieldError, FieldErrors};
use crate::istio::{self, *};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tideway_filter::config::{
    AffinitySource, DestinationConfig, FactorWeights, HopHeaders, LocalConfig, PluginConfig,
    SchedulerConfig, ServiceConfig, TrustConfig, WeightsSourceConfig, DEFAULT_ROUTING_HEADER,
    SCHEMA_VERSION,
};

pub use crate::istio::ISTIO_ROOT_NAMESPACE;
/// Label on every rendered object (for pruning and ownership).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "tideway";
/// The policy an object was rendered from: its name and namespace.
pub const POLICY_LABEL: &str = "traffic.tideway.dev/policy";
pub const POLICY_NAMESPACE_LABEL: &str = "traffic.tideway.dev/policy-namespace";
/// The subset label Istio puts on every endpoint: its cluster ID.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// The environment variable in which Istio's injector gives every sidecar
/// and gateway its cluster ID (the same ID as [`CLUSTER_LABEL`]'s).
pub const CLUSTER_ID_ENV: &str = "ISTIO_META_CLUSTER_ID";

/// The filter image a `WasmPlugin` loads, pinned by manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `oci://host/repo@sha256:<hex>`.
    pub url: String,
    /// The manifest digest's 64 hex digits (what Istio compares for oci://).
    pub sha256: String,
}

impl Image {
    /// From `host/repo[:tag]@sha256:<hex>` (with or without `oci://`). A
    /// reference without a digest is refused: a tag can move under a
    /// running mesh, and Istio's `sha256` check needs the manifest digest.
    pub fn parse(path: &str, reference: &str) -> Result<Self, FieldError> {
        let parsed = tideway_oci::reference::ImageRef::parse(reference)
            .map_err(|e| FieldError::json(path, &reference, e.detail))?;
        let Some(digest) = parsed.digest() else {
            return Err(FieldError::json(
                path,
                &reference,
                "a reference pinned by digest: host/repo@sha256:<manifest digest> (tideway image push prints it)",
            ));
        };
        Ok(Self {
            url: parsed.wasm_plugin_url(&digest),
            sha256: digest.hex().to_string(),
        })
    }
}

/// What a render produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// Member cluster → its `WasmPlugin`s (the only per-cluster objects).
    pub plugins: BTreeMap<String, Vec<Value>>,
    /// The objects every member gets unchanged, in apply order.
    pub common: Vec<Value>,
    /// Member names in rollout order (wave, then name).
    pub order: Vec<String>,
}

impl Compiled {
    /// Everything one member cluster gets, in apply order.
    pub fn member(&self, name: &str) -> Vec<Value> {
        let mut out = self.plugins.get(name).cloned().unwrap_or_default();
        out.extend(self.common.iter().cloned());
        out
    }

    /// Every member's objects, in rollout order.
    pub fn members(&self) -> Vec<(String, Vec<Value>)> {
        self.order
            .iter()
            .map(|m| (m.clone(), self.member(m)))
            .collect()
    }
}

/// Validate, then compile. `image` overrides `spec.plugin.image`.
pub fn compile(
    policy: &TrafficPolicy,
    fleet: &Fleet,
    image: Option<&Image>,
) -> Result<Compiled, FieldErrors> {
    let mut errors = FieldErrors::new(format!(
        "TrafficPolicy {}/{}",
        crate::validate::policy_namespace(policy),
        policy.metadata.name.as_deref().unwrap_or("?")
    ));
    crate::validate::fleet(fleet, &mut errors);
    if !errors.is_empty() {
        errors.source = format!("Fleet {}", fleet.metadata.name.as_deref().unwrap_or("?"));
        return Err(errors);
    }
    crate::validate::policy(policy, fleet, &mut errors);
    let image = match (image, &policy.spec.plugin.image) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(r)) => match Image::parse("spec.plugin.image", r) {
            Ok(i) => Some(i),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        (None, None) => {
            errors.push(FieldError::missing(
                "spec.plugin.image",
                "the filter image (host/repo@sha256:…), or --image",
            ));
            None
        }
    };
    let (Some(image), true) = (image, errors.is_empty()) else {
        return Err(errors);
    };
    let ctx = Context::new(policy, fleet);

    let mut plugins = BTreeMap::new();
    for member in &fleet.spec.clusters {
        let mut objs = Vec::new();
        for caller in &ctx.callers {
            let config = ctx.plugin_config(member, caller);
            // The filter's own rules are the last word on its config.
            if let Err(e) = config.validate() {
                let mut errors = FieldErrors::new(format!("pluginConfig for {}", member.name));
                errors.push(FieldError::new(e.field, "", e.message));
                return Err(errors);
            }
            objs.push(ctx.wasm_plugin(&image, caller, &config));
        }
        plugins.insert(member.name.clone(), objs);
    }

    let mut common = vec![ctx.destination_rule(), ctx.virtual_service()];
    common.extend(ctx.security());
    common.extend(ctx.service_entry());
    common.extend(ctx.weights_service_entry());
    common.extend(ctx.observability());

    let mut order: Vec<&FleetMember> = fleet.spec.clusters.iter().collect();
    order.sort_by(|a, b| (a.wave, &a.name).cmp(&(b.wave, &b.name)));
    Ok(Compiled {
        plugins,
        common,
        order: order.into_iter().map(|m| m.name.clone()).collect(),
    })
}

/// The configuration the dashboard's what-if runs for `policy`, as JSON:
/// the first member's (members' configs differ only in the proxy's own
/// identity, which the what-if sets itself). `None` without members.
pub fn what_if_config(
    policy: &TrafficPolicy,
    fleet: &Fleet,
) -> Result<Option<serde_json::Value>, FieldErrors> {
    Ok(plugin_configs(policy, fleet)?
        .into_values()
        .next()
        .map(|config| serde_json::to_value(&config).unwrap_or_default()))
}

/// The plugin config each member's filter runs for `policy` (its first
/// caller's: the configs of a policy's callers differ only in where they
/// run), validated as [`compile`] validates it, without needing an image:
/// the dashboard's what-if runs the engine on exactly this config.
pub fn plugin_configs(
    policy: &TrafficPolicy,
    fleet: &Fleet,
) -> Result<BTreeMap<String, PluginConfig>, FieldErrors> {
    let mut errors = FieldErrors::new(format!(
        "TrafficPolicy {}/{}",
        crate::validate::policy_namespace(policy),
        policy.metadata.name.as_deref().unwrap_or("?")
    ));
    crate::validate::fleet(fleet, &mut errors);
    crate::validate::policy(policy, fleet, &mut errors);
    errors.into_result()?;
    let ctx = Context::new(policy, fleet);
    let mut out = BTreeMap::new();
    for member in &fleet.spec.clusters {
        if let Some(caller) = ctx.callers.first() {
            let config = ctx.plugin_config(member, caller);
            if let Err(e) = config.validate() {
                let mut errors = FieldErrors::new(format!("pluginConfig for {}", member.name));
                errors.push(FieldError::new(e.field, "", e.message));
                return Err(errors);
            }
            out.insert(member.name.clone(), config);
        }
    }
    Ok(out)
}

/// The resolved facts every object is built from.
struct Context<'a> {
    policy: &'a TrafficPolicy,
    fleet: &'a Fleet,
    name: String,
    policy_ns: String,
    service_ns: String,
    fqdn: String,
    callers: Vec<CallerSpec>,
    routing_header: String,
}

impl<'a> Context<'a> {
    fn new(policy: &'a TrafficPolicy, fleet: &'a Fleet) -> Self {
        let spec = &policy.spec;
        let policy_ns = crate::validate::policy_namespace(policy).to_string();
        let service_ns = spec
            .service
            .namespace
            .clone()
            .unwrap_or_else(|| policy_ns.clone());
        let domain = spec
            .service
            .cluster_domain
            .as_deref()
            .unwrap_or("cluster.local");
        let fqdn = format!("{}.{service_ns}.svc.{domain}", spec.service.name);
        let mut callers = spec.callers.clone();
        if callers.is_empty() {
            callers.push(CallerSpec {
                namespace: service_ns.clone(),
                selector: BTreeMap::new(),
            });
        }
        callers.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Self {
            policy,
            fleet,
            name: format!("tideway-{}", policy.metadata.name.as_deref().unwrap_or("")),
            policy_ns,
            service_ns,
            fqdn,
            callers,
            routing_header: DEFAULT_ROUTING_HEADER.to_string(),
        }
    }

    fn member(&self, name: &str) -> Option<&FleetMember> {
        self.fleet.spec.clusters.iter().find(|m| m.name == name)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (
                POLICY_LABEL.to_string(),
                self.policy.metadata.name.clone().unwrap_or_default(),
            ),
            (POLICY_NAMESPACE_LABEL.to_string(), self.policy_ns.clone()),
        ])
    }

    fn object(
        &self,
        api_version: &str,
        kind: &str,
        name: &str,
        namespace: &str,
        spec: impl Serialize,
    ) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": self.labels(),
            },
            "spec": to_value(&spec),
        })
    }

    /// The hosts the filter matches. The filter itself serves a Kubernetes
    /// FQDN under every name Istio does (`name.ns.svc`, `name.ns`, and bare
    /// `name` from a proxy in the service's namespace, any port), so the FQDN
    /// plus the policy's extra names is the whole list.
    fn filter_hosts(&self) -> Vec<String> {
        let mut hosts = vec![self.fqdn.clone()];
        for h in &self.policy.spec.service.hosts {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        hosts
    }

    /// The filter's configuration for proxies in `member`, namespace of `caller`.
    fn plugin_config(&self, member: &FleetMember, caller: &CallerSpec) -> PluginConfig {
        let spec = &self.policy.spec;
        let s = &spec.scheduler;
        let defaults = SchedulerConfig::default();
        let dw = defaults.weights;
        let e = spec.scheduler.ejection.clone().unwrap_or_default();
        let scheduler = SchedulerConfig {
            weights: FactorWeights {
                latency: s.weight_latency.unwrap_or(dw.latency),
                load: s.weight_load.unwrap_or(dw.load),
                cost: s.weight_cost.unwrap_or(dw.cost),
                affinity: s.weight_affinity.unwrap_or(dw.affinity),
            },
            sharpness: s.sharpness.unwrap_or(defaults.sharpness),
            decay_ms: s.decay_ms.unwrap_or(defaults.decay_ms),
            default_rtt_ms: s.default_rtt_ms.unwrap_or(defaults.default_rtt_ms),
            eject_consecutive_failures: e
                .consecutive_failures
                .unwrap_or(defaults.eject_consecutive_failures),
            eject_error_rate: e.error_rate.unwrap_or(defaults.eject_error_rate),
            eject_min_requests: e.min_requests.unwrap_or(defaults.eject_min_requests),
            eject_base_ms: e.base_ms.unwrap_or(defaults.eject_base_ms),
            eject_max_ms: e.max_ms.unwrap_or(defaults.eject_max_ms),
            ..defaults
        };
        let affinity = match &spec.affinity {
            Some(a) => match (&a.header, &a.cookie) {
                (Some(h), _) => AffinitySource::Header { name: h.clone() },
                (None, Some(c)) => AffinitySource::Cookie { name: c.clone() },
                (None, None) => AffinitySource::None,
            },
            None => AffinitySource::None,
        };
        let destinations = spec
            .destinations
            .iter()
            .map(|d| DestinationConfig {
                name: d.subset().to_string(),
                cluster: Some(d.cluster.clone()),
                locality: self.member(&d.cluster).and_then(FleetMember::locality),
                cost: d.cost.unwrap_or(0.0),
                weight: d.weight.unwrap_or(1.0),
            })
            .collect();
        PluginConfig {
            schema_version: SCHEMA_VERSION,
            services: vec![ServiceConfig {
                name: spec.service.name.clone(),
                hosts: self.filter_hosts(),
                destinations,
                routing_header: self.routing_header.clone(),
                affinity,
                failover: spec.failover.clone(),
                weights: None,
                probe: None,
            }],
            scheduler,
            // Each WasmPlugin serves one member and one caller namespace:
            // its identity is known here, whatever Envoy's node says.
            local: LocalConfig {
                cluster: Some(member.name.clone()),
                locality: member.locality(),
                namespace: Some(caller.namespace.clone()),
                cluster_domain: spec.service.cluster_domain.clone(),
            },
            trust: TrustConfig {
                all_sources: false,
                principals: spec.trust.principals.clone(),
            },
            tracing: spec.tracing.clone().unwrap_or_default(),
            decision_header: spec.decision_header,
            // The VirtualService's routes set them (`hop_headers`).
            hop_headers: if self.hop_headers_on() {
                HopHeaders::Routes
            } else {
                HopHeaders::Off
            },
            weights_source: self.weights_source(),
        }
    }

    /// Where the filter polls for run-time weights: the hub's endpoint as
    /// the ServiceEntry of [`Self::weights_service_entry`] names it (Istio
    /// calls that Envoy cluster `outbound|PORT||HOST`). Built through the
    /// filter's own deserialiser so its defaults (path, lease, retry) are
    /// the filter's, not a copy of them.
    fn weights_source(&self) -> Option<WeightsSourceConfig> {
        let w = self.fleet.spec.weights_endpoint.as_ref()?;
        let mut source = json!({
            "cluster": format!("outbound|{}||{}", w.port, w.host),
            "authority": w.host,
        });
        if let Some(ms) = w.wait_ms {
            source["waitMs"] = json!(ms);
        }
        if let Some(ms) = w.ttl_ms {
            source["ttlMs"] = json!(ms);
        }
        serde_json::from_value(source).ok()
    }

    /// The `ServiceEntry` that makes the hub's weights endpoint a known
    /// service in every member (its sidecars only call what the mesh
    /// knows), when the Fleet names one.
    fn weights_service_entry(&self) -> Option<Value> {
        let w = self.fleet.spec.weights_endpoint.as_ref()?;
        let all_ips = !w.addresses.is_empty()
            && w.addresses
                .iter()
                .all(|a| a.parse::<std::net::IpAddr>().is_ok());
        Some(
            self.object(
                istio::NETWORKING_V1,
                "ServiceEntry",
                &format!("{}-weights", self.name),
                &self.service_ns,
                ServiceEntrySpec {
                    hosts: vec![w.host.clone()],
                    location: "MESH_INTERNAL".into(),
                    resolution: if all_ips { "STATIC" } else { "DNS" }.into(),
                    ports: vec![ServicePort {
                        number: w.port,
                        protocol: "HTTP".into(),
                        name: "http-weights".into(),
                    }],
                    endpoints: w
                        .addresses
                        .iter()
                        .map(|a| WorkloadEntry {
                            address: a.clone(),
                            ports: BTreeMap::new(),
                            labels: BTreeMap::new(),
                            locality: None,
                            network: None,
                        })
                        .collect(),
                },
            ),
        )
    }

    fn wasm_plugin(&self, image: &Image, caller: &CallerSpec, config: &PluginConfig) -> Value {
        let plugin = &self.policy.spec.plugin;
        let spec = WasmPluginSpec {
            url: image.url.clone(),
            sha256: image.sha256.clone(),
            // Pinned by digest: what is cached is what is wanted.
            image_pull_policy: Some("IfNotPresent".into()),
            image_pull_secret: plugin.image_pull_secret.clone(),
            selector: (!caller.selector.is_empty()).then(|| WorkloadSelector {
                match_labels: caller.selector.clone(),
            }),
            // AUTHN: first in the client-side chain, so filters that read
            // the route (fault, CORS, ext_authz) see the steered one.
            phase: plugin.phase.clone().unwrap_or_else(|| "AUTHN".into()),
            priority: plugin.priority.unwrap_or(10),
            // Steering is an optimisation: when the module cannot be fetched
            // or its VM fails, requests skip the filter and the
            // VirtualService's default route serves them.
            fail_strategy: plugin
                .fail_strategy
                .clone()
                .unwrap_or_else(|| "FAIL_OPEN".into()),
            plugin_type: "HTTP".into(),
            // Outbound only, and only the listener of the service's port.
            traffic_match: vec![TrafficSelector {
                mode: "CLIENT".into(),
                ports: vec![PortSelector {
                    number: self.policy.spec.service.port,
                }],
            }],
            plugin_config: to_value(config),
        };
        self.object(
            istio::EXTENSIONS_V1ALPHA1,
            "WasmPlugin",
            &self.name,
            &caller.namespace,
            spec,
        )
    }

    fn canary_applies_to_all(&self) -> bool {
        self.policy
            .spec
            .canary
            .as_ref()
            .is_some_and(|c| c.matches.is_empty())
    }

    fn destination_rule(&self) -> Value {
        let spec = &self.policy.spec;
        let canary = spec.canary.as_ref();
        let mut subsets = Vec::new();
        for d in &spec.destinations {
            let mut labels = BTreeMap::from([(CLUSTER_LABEL.to_string(), d.cluster.clone())]);
            if let Some(c) = canary {
                labels.extend(c.stable_labels.clone());
            }
            subsets.push(Subset {
                name: d.subset().to_string(),
                labels,
            });
            if let Some(c) = canary {
                let mut labels = BTreeMap::from([(CLUSTER_LABEL.to_string(), d.cluster.clone())]);
                labels.extend(c.labels.clone());
                subsets.push(Subset {
                    name: format!("{}-{}", d.subset(), c.name),
                    labels,
                });
            }
        }
        if let Some(c) = canary {
            subsets.push(Subset {
                name: "stable".into(),
                labels: c.stable_labels.clone(),
            });
            subsets.push(Subset {
                name: c.name.clone(),
                labels: c.labels.clone(),
            });
        }

        let lb = spec.load_balancing.clone().unwrap_or_default();
        let consistent_hash = spec.affinity.as_ref().map(|a| ConsistentHash {
            http_header_name: a.header.clone(),
            http_cookie: a.cookie.as_ref().map(|c| HttpCookie {
                name: c.clone(),
                ttl: "0s".into(),
            }),
        });
        let simple = if consistent_hash.is_some() {
            None
        } else {
            lb.simple.map(|s| {
                if s == "LEAST_CONN" {
                    "LEAST_REQUEST".into()
                } else {
                    s
                }
            })
        };
        let load_balancer = (simple.is_some()
            || consistent_hash.is_some()
            || lb.locality.is_some())
        .then(|| LoadBalancerSettings {
            simple,
            consistent_hash,
            locality_lb_setting: lb.locality.clone(),
        });
        let resilience = spec.resilience.clone().unwrap_or_default();
        let tls = spec
            .security
            .as_ref()
            .filter(|s| s.mtls.as_deref().unwrap_or("STRICT") == "STRICT")
            .map(|_| ClientTls {
                mode: "ISTIO_MUTUAL".into(),
            });
        let traffic_policy = TrafficPolicySettings {
            load_balancer,
            connection_pool: resilience.connection_pool,
            outlier_detection: resilience.outlier_detection,
            tls,
        };
        let traffic_policy =
            (traffic_policy != TrafficPolicySettings::default()).then_some(traffic_policy);
        self.object(
            istio::NETWORKING_V1,
            "DestinationRule",
            &self.name,
            &self.service_ns,
            DestinationRuleSpec {
                host: self.fqdn.clone(),
                traffic_policy,
                subsets,
            },
        )
    }

    /// A route of the VirtualService. `target`: the member cluster every
    /// destination of the route is in (a route for one filter decision),
    /// `None` for the mesh's own choice.
    fn route(
        &self,
        name: String,
        matches: Vec<HttpMatchRequest>,
        route: Vec<HttpRouteDestination>,
        target: Option<&str>,
    ) -> HttpRoute {
        let r = self.policy.spec.resilience.clone().unwrap_or_default();
        HttpRoute {
            name,
            matches,
            route,
            timeout: r.timeout,
            retries: r.retries,
            fault: r.fault,
            headers: self.hop_headers(target),
        }
    }

    /// Whether the policy wants the hop headers (on unless it says not).
    fn hop_headers_on(&self) -> bool {
        self.policy.spec.hop_headers.unwrap_or(true)
    }

    /// The hop headers, set by the route rather than by the filter: a
    /// route's headers are native to Envoy, each header the filter writes
    /// is a host call (`HopHeaders`). The route knows the target cluster
    /// (its subset's), the service is the policy's, and the source is the
    /// proxy's own cluster ID, which Istio's injector puts in the sidecar's
    /// (and gateway's) `ISTIO_META_CLUSTER_ID` and Envoy's `%ENVIRONMENT%`
    /// operator reads. `set` overwrites a client's copy; without a
    /// decision the target is unknown and a client's copy is removed.
    fn hop_headers(&self, target: Option<&str>) -> Option<Headers> {
        if !self.hop_headers_on() {
            return None;
        }
        let mut request = HeaderOperations::default();
        request.set.insert(
            "x-cluster-source".into(),
            format!("%ENVIRONMENT({CLUSTER_ID_ENV})%"),
        );
        request.set.insert(
            "x-service-name".into(),
            self.policy.spec.service.name.clone(),
        );
        match target {
            Some(cluster) => {
                request
                    .set
                    .insert("x-cluster-target".into(), cluster.to_string());
            }
            None => request.remove.push("x-cluster-target".into()),
        }
        Some(Headers { request })
    }

    fn to(&self, subset: Option<&str>, weight: Option<i32>) -> HttpRouteDestination {
        HttpRouteDestination {
            destination: istio::Destination {
                host: self.fqdn.clone(),
                subset: subset.map(str::to_string),
                port: PortSelector {
                    number: self.policy.spec.service.port,
                },
            },
            weight,
        }
    }

    /// Stable and canary by weight; a 0 or 100 split is a single destination.
    fn split(&self, stable: &str, canary: &str, canary_weight: u32) -> Vec<HttpRouteDestination> {
        match canary_weight {
            0 => vec![self.to(Some(stable), None)],
            100 => vec![self.to(Some(canary), None)],
            w => {
                let w = i32::try_from(w).unwrap_or(100);
                vec![
                    self.to(Some(stable), Some(100 - w)),
                    self.to(Some(canary), Some(w)),
                ]
            }
        }
    }

    fn header_match(
        &self,
        base: Option<&HttpMatchRequest>,
        subset: &str,
        name: String,
    ) -> HttpMatchRequest {
        let mut m = base.cloned().unwrap_or_default();
        m.name = Some(name);
        m.headers
            .insert(self.routing_header.clone(), StringMatch::exact(subset));
        m
    }

    fn virtual_service(&self) -> Value {
        let spec = &self.policy.spec;
        let mut http = Vec::new();
        if let Some(c) = spec.canary.as_ref().filter(|c| !c.matches.is_empty()) {
            // Canary requests first: each condition, per destination (the
            // filter still picks the cluster), then without a decision.
            for (i, m) in c.matches.iter().enumerate() {
                for d in &spec.destinations {
                    let subset = d.subset();
                    let name = format!("canary-{i}-{subset}");
                    http.push(self.route(
                        name.clone(),
                        vec![self.header_match(Some(m), subset, name)],
                        self.split(subset, &format!("{subset}-{}", c.name), c.weight),
                        Some(&d.cluster),
                    ));
                }
                let mut m = m.clone();
                m.name = Some(format!("canary-{i}"));
                http.push(self.route(
                    format!("canary-{i}"),
                    vec![m],
                    self.split("stable", &c.name, c.weight),
                    None,
                ));
            }
        }
        for d in &spec.destinations {
            let subset = d.subset();
            let route = match &spec.canary {
                Some(c) if self.canary_applies_to_all() => {
                    self.split(subset, &format!("{subset}-{}", c.name), c.weight)
                }
                _ => vec![self.to(Some(subset), None)],
            };
            let name = format!("destination-{subset}");
            http.push(self.route(
                name.clone(),
                vec![self.header_match(None, subset, name)],
                route,
                Some(&d.cluster),
            ));
        }
        // The mesh's own choice: no header (filter absent, failed open, or
        // it decided nothing). Without a canary: no subset, every endpoint.
        let default = match &spec.canary {
            Some(c) if self.canary_applies_to_all() => self.split("stable", &c.name, c.weight),
            Some(_) => vec![self.to(Some("stable"), None)],
            None => vec![self.to(None, None)],
        };
        http.push(self.route("default".into(), Vec::new(), default, None));

        let mut hosts = vec![self.fqdn.clone()];
        for h in &spec.service.hosts {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        self.object(
            istio::NETWORKING_V1,
            "VirtualService",
            &self.name,
            &self.service_ns,
            VirtualServiceSpec { hosts, http },
        )
    }

    fn workload_selector(&self) -> WorkloadSelector {
        let svc = &self.policy.spec.service;
        let labels = if svc.workload_labels.is_empty() {
            BTreeMap::from([("app".to_string(), svc.name.clone())])
        } else {
            svc.workload_labels.clone()
        };
        WorkloadSelector {
            match_labels: labels,
        }
    }

    fn security(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let sec = self.policy.spec.security.clone().unwrap_or_default();
        if self.policy.spec.security.is_some() {
            out.push(self.object(
                istio::SECURITY_V1,
                "PeerAuthentication",
                &self.name,
                &self.service_ns,
                PeerAuthenticationSpec {
                    selector: self.workload_selector(),
                    mtls: PeerMtls {
                        mode: sec.mtls.clone().unwrap_or_else(|| "STRICT".into()),
                    },
                },
            ));
            if !sec.authorization.is_empty() {
                out.push(self.object(
                    istio::SECURITY_V1,
                    "AuthorizationPolicy",
                    &self.name,
                    &self.service_ns,
                    AuthorizationPolicySpec {
                        selector: self.workload_selector(),
                        action: "ALLOW".into(),
                        rules: sec.authorization.clone(),
                    },
                ));
            }
        }
        // A request that enters the mesh through an ingress gateway with the
        // routing header set must not reach a sidecar whose filter is not
        // running (failed open) and have the VirtualService honour it.
        let gateways = sec.ingress_gateways.clone().unwrap_or_else(|| {
            vec![crate::api::GatewayRef {
                namespace: ISTIO_ROOT_NAMESPACE.into(),
                labels: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
            }]
        });
        for g in gateways {
            out.push(self.object(
                istio::SECURITY_V1,
                "AuthorizationPolicy",
                &format!("{}-no-routing-header", self.name),
                &g.namespace,
                AuthorizationPolicySpec {
                    selector: WorkloadSelector {
                        match_labels: g.labels.clone(),
                    },
                    action: "DENY".into(),
                    rules: vec![AuthorizationRule {
                        when: vec![Condition {
                            key: format!("request.headers[{}]", self.routing_header),
                            values: vec!["*".into()],
                            not_values: Vec::new(),
                        }],
                        ..AuthorizationRule::default()
                    }],
                },
            ));
        }
        out
    }

    fn service_entry(&self) -> Option<Value> {
        let cr = self.policy.spec.cross_region.as_ref()?;
        let endpoints = cr
            .endpoints
            .iter()
            .map(|e| {
                let member = self.member(&e.cluster);
                WorkloadEntry {
                    address: e.address.clone(),
                    ports: e.ports.clone(),
                    labels: BTreeMap::from([(CLUSTER_LABEL.to_string(), e.cluster.clone())]),
                    locality: e
                        .locality
                        .clone()
                        .or_else(|| member.and_then(FleetMember::locality)),
                    network: member.and_then(|m| m.network.clone()),
                }
            })
            .collect();
        Some(
            self.object(
                istio::NETWORKING_V1,
                "ServiceEntry",
                &self.name,
                &self.service_ns,
                ServiceEntrySpec {
                    hosts: cr.hosts.clone(),
                    location: cr
                        .location
                        .clone()
                        .unwrap_or_else(|| "MESH_INTERNAL".into()),
                    resolution: cr.resolution.clone().unwrap_or_else(|| "DNS".into()),
                    ports: cr.ports.clone(),
                    endpoints,
                },
            ),
        )
    }

    fn observability(&self) -> Vec<Value> {
        let o = &self.policy.spec.observability;
        let ns = o.namespace.clone().unwrap_or_else(|| "monitoring".into());
        let mut out = Vec::new();
        if o.prometheus_rule {
            let rules = crate::observe::prometheus_rule(self.policy, &self.fqdn);
            out.push(self.object(
                "monitoring.coreos.com/v1",
                "PrometheusRule",
                &self.name,
                &ns,
                rules,
            ));
        }
        if o.dashboard {
            let dashboard = crate::observe::dashboard(self.policy, &self.fqdn);
            let text = serde_json::to_string_pretty(&dashboard).unwrap_or_default();
            let mut cm = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": format!("{}-dashboard", self.name),
                    "namespace": ns,
                    "labels": self.labels(),
                },
                "data": { format!("{}.json", self.name): text },
            });
            // Grafana's dashboard sidecar loads ConfigMaps with this label.
            cm["metadata"]["labels"]["grafana_dashboard"] = json!("1");
            out.push(cm);
        }
        out
    }
}

/// Serialise our own types; they contain only maps with string keys and
/// finite numbers (validated), so this cannot fail in practice — and if it
/// ever did, an explicit null shows up in review rather than a panic.
fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
