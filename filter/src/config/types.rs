//! The configuration's types, as the JSON spells them: every field, its
//! meaning, its serde shape and each type's `Default`. The defaults of
//! single fields and the constants are in `defaults`, the checks the types
//! cannot express in `validate`.

use super::defaults::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The whole plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfig {
    /// Must equal [`SCHEMA_VERSION`] when present.
    #[serde(default = "default_schema_version")]
    pub schema_version: u32,
    /// The governed services. A request whose host matches none passes untouched.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Factor weights and health thresholds shared by all services.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// This proxy's own cluster and locality (default: Envoy's node properties).
    #[serde(default)]
    pub local: LocalConfig,
    /// Which inbound routing decisions are honoured.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Trace-context propagation.
    #[serde(default)]
    pub tracing: crate::trace::TracingConfig,
    /// Add an `x-tideway-decision` response header explaining the choice.
    /// Off by default: it reveals topology to clients.
    #[serde(default)]
    pub decision_header: bool,
    /// Who sets `x-cluster-source`, `x-cluster-target` and `x-service-name`
    /// (the hop's annotations that the seed's tracing code reads):
    /// [`HopHeaders`]. JSON `true` (the default: this filter), `false`
    /// (nobody) or `"routes"` (the routes the controller renders).
    #[serde(default)]
    pub hop_headers: HopHeaders,
    /// Where run-time weights come from (the controller's weights API).
    /// Absent: the static weights above are all there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_source: Option<WeightsSourceConfig>,
}

/// The controller's weights API, polled by one worker per proxy (the lease
/// holder) with `dispatch_http_call`; the document it answers is
/// [`crate::weights::WeightsDocument`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightsSourceConfig {
    /// The Envoy cluster the poll goes to; under Istio
    /// `outbound|PORT||HOST`, e.g.
    /// `outbound|8080||tideway-controller.tideway-system.svc.cluster.local`.
    pub cluster: String,
    /// The poll's `:authority` (Envoy rejects a call without one).
    pub authority: String,
    /// Default `/v1/weights`.
    #[serde(default = "default_weights_path")]
    pub path: String,
    /// How long the server may hold a poll open when nothing changed
    /// (long-poll, `wait=`), in milliseconds. Default 30000.
    #[serde(default = "default_weights_wait_ms")]
    pub wait_ms: u64,
    /// The lease one worker holds to poll for the whole proxy; another
    /// worker takes over when it lapses. Default 3000 ms.
    #[serde(default = "default_weights_lease_ms")]
    pub lease_ms: u64,
    /// Pause after a failed poll before the next, in milliseconds. Default 1000.
    #[serde(default = "default_weights_retry_ms")]
    pub retry_ms: u64,
    /// How long the last good weights are kept while the server cannot be
    /// reached; after that the static weights apply. Default 300000 (5 min).
    #[serde(default = "default_weights_ttl_ms")]
    pub ttl_ms: u64,
    /// The largest answer body adopted, in bytes; a larger one is rejected
    /// unread (it is not a document of this plugin's size). Default 1 MiB.
    #[serde(default = "default_weights_max_bytes")]
    pub max_bytes: u64,
}

/// Who sets the hop headers (`x-cluster-source`, `x-cluster-target`,
/// `x-service-name`) on a routed request.
///
/// Why not always the filter: each header a proxy-wasm filter writes costs
/// Envoy a host call (about 3.7k instructions in Envoy 1.40, `cargo xtask
/// bench -- --only instructions`), while a route's `request_headers_to_add`
/// is native and costs next to nothing. Two of the three are constant per
/// route (the target cluster of the route's subset, the service) and the
/// third per proxy (its cluster ID, which Istio's sidecar has in
/// `ISTIO_META_CLUSTER_ID`), so the controller renders them into the
/// VirtualService and tells the filter, with `"routes"`, not to write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HopHeaders {
    /// This filter writes them on every request it routes (JSON `true`):
    /// for a filter configured by hand, whose routes do not set them.
    #[default]
    Filter,
    /// The routes set them (JSON `"routes"`): the filter writes none.
    Routes,
    /// Nobody sets them (JSON `false`).
    Off,
}

impl HopHeaders {
    /// Whether the filter itself writes them.
    pub fn written_by_filter(self) -> bool {
        self == HopHeaders::Filter
    }
}

impl Serialize for HopHeaders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HopHeaders::Filter => s.serialize_bool(true),
            HopHeaders::Off => s.serialize_bool(false),
            HopHeaders::Routes => s.serialize_str("routes"),
        }
    }
}

impl<'de> Deserialize<'de> for HopHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HopHeaders;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"true (the filter writes them), false (off) or "routes""#)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<HopHeaders, E> {
                Ok(if v {
                    HopHeaders::Filter
                } else {
                    HopHeaders::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HopHeaders, E> {
                match v {
                    "routes" => Ok(HopHeaders::Routes),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One governed service: the hosts it answers to and where it can be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Service name, used in metrics, `x-service-name` and shared-data keys.
    pub name: String,
    /// Hosts matched against `:authority` (any port, any case): exact names,
    /// or `*.suffix` which matches any host ending in `.suffix`. A
    /// Kubernetes FQDN (`reviews.production.svc.cluster.local`) also matches
    /// the names Istio serves it under: `reviews.production.svc`,
    /// `reviews.production`, and `reviews` from a proxy in `production`.
    pub hosts: Vec<String>,
    /// The candidate destinations (member clusters or subsets).
    pub destinations: Vec<DestinationConfig>,
    /// The header the rendered VirtualService routes on.
    #[serde(default = "default_routing_header")]
    pub routing_header: String,
    /// Where the session-affinity key comes from.
    #[serde(default)]
    pub affinity: AffinitySource,
    /// Explicit failover order (destination names). Empty: by locality
    /// relative to this proxy — same zone, then same region, then the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    /// Per-service factor weights, overriding `scheduler.weights`. A canary
    /// that must split exactly sets latency and load to zero here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<FactorWeights>,
    /// Active re-admission: when an ejection ends, an out-of-band health
    /// request decides whether the destination comes back, instead of a
    /// client's request. Absent: the first client request after the
    /// ejection is the probe (as Envoy's outlier detection re-admits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeConfig>,
}

/// The out-of-band health request of [`ServiceConfig::probe`], sent by the
/// filter itself (proxy-wasm `dispatch_http_call`) to the destination's
/// Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeConfig {
    /// The Envoy cluster of a destination, `{destination}` standing for its
    /// name. Under Istio, the subset's outbound cluster:
    /// `outbound|9080|{destination}|reviews.prod.svc.cluster.local`.
    pub cluster: String,
    /// Request path (`GET`); a 2xx answer re-admits.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// `:authority` of the probe. Default: the service's first exact host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// No answer within this time is a failed probe.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
}

/// What [`ProbeConfig::cluster`] substitutes a destination's name for.
pub const PROBE_CLUSTER_PLACEHOLDER: &str = "{destination}";

impl ProbeConfig {
    /// The Envoy cluster probed for `destination`.
    pub fn cluster_for(&self, destination: &str) -> String {
        self.cluster.replace(PROBE_CLUSTER_PLACEHOLDER, destination)
    }

    /// The probe's `:authority` for `service`.
    pub fn authority_for<'a>(&'a self, service: &'a ServiceConfig) -> &'a str {
        self.authority
            .as_deref()
            .or_else(|| {
                service
                    .hosts
                    .iter()
                    .find(|h| !h.starts_with("*."))
                    .map(String::as_str)
            })
            .unwrap_or("")
    }
}

/// One destination: the routing header's value selects it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationConfig {
    /// The subset name: the routing header's value and the DestinationRule subset.
    pub name: String,
    /// The member cluster (`topology.istio.io/cluster`). Default: `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `region/zone/subzone` (any suffix may be omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Relative cost of serving here (any unit, ≥ 0; lower is better).
    #[serde(default)]
    pub cost: f64,
    /// Static traffic weight (≥ 0): the canary split when dynamic factors are off.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

impl DestinationConfig {
    pub fn cluster(&self) -> &str {
        self.cluster.as_deref().unwrap_or(&self.name)
    }
}

/// Where a request's session-affinity key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", tag = "source")]
pub enum AffinitySource {
    /// No session affinity.
    #[default]
    None,
    /// A request header, e.g. `x-user-id`: a consistent hash of its value.
    Header { name: String },
    /// A cookie in the `cookie` header.
    Cookie { name: String },
}

/// Weights of the scheduling factors: latency, load, cost and locality
/// affinity. Only their ratios matter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FactorWeights {
    #[serde(default)]
    pub latency: f64,
    #[serde(default)]
    pub load: f64,
    #[serde(default)]
    pub cost: f64,
    /// Locality affinity: preference for destinations near this proxy.
    #[serde(default)]
    pub affinity: f64,
}

/// Scheduler tuning shared by every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SchedulerConfig {
    pub weights: FactorWeights,
    /// How strongly the score bends the static weights: a destination's
    /// effective weight is `weight × score^sharpness`.
    pub sharpness: f64,
    /// Time constant τ of the latency and error EWMAs, in milliseconds: a
    /// latency fall is believed as `1 − e^(−Δt/τ)` of the time since the
    /// last sample (`ewma`).
    pub decay_ms: u64,
    /// The latency an unmeasured destination is scored at until its first
    /// response, in milliseconds (Linkerd's balancer starts at 30 ms too).
    pub default_rtt_ms: u64,
    /// Consecutive failures that eject a destination.
    pub eject_consecutive_failures: u32,
    /// Error-rate EWMA (0..1) that ejects a destination…
    pub eject_error_rate: f64,
    /// …once it has seen at least this many responses.
    pub eject_min_requests: u32,
    /// First ejection's length; each further one doubles it…
    pub eject_base_ms: u64,
    /// …up to this cap.
    pub eject_max_ms: u64,
    /// How often each worker merges statistics through shared data.
    pub tick_ms: u64,
    /// For gRPC requests (`content-type` `application/grpc` or
    /// `application/grpc+…`; not grpc-web, as in Envoy), the
    /// `grpc-status` codes that count as the destination's failure. Default:
    /// those Envoy's outlier detection counts (the codes its gRPC-to-HTTP
    /// mapping turns into a 5xx): UNKNOWN 2, DEADLINE_EXCEEDED 4,
    /// UNIMPLEMENTED 12, INTERNAL 13, UNAVAILABLE 14, DATA_LOSS 15.
    pub grpc_failure_codes: Vec<u32>,
}

/// This proxy's identity. Unset fields come from Envoy's node properties as
/// Istio sets them (`node.metadata.CLUSTER_ID`, `node.locality`,
/// `node.metadata.NAMESPACE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalConfig {
    /// This proxy's member cluster (`x-cluster-source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `region/zone/subzone` of this proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// This proxy's Kubernetes namespace: a service's bare short name
    /// (`reviews`) is matched only from the service's own namespace, as
    /// Istio serves it (`authority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The cluster DNS domain that Kubernetes service hosts end in
    /// (`name.ns.svc.<clusterDomain>`). Default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
}

impl LocalConfig {
    /// [`LocalConfig::cluster_domain`], or `cluster.local`.
    pub fn cluster_domain(&self) -> &str {
        self.cluster_domain
            .as_deref()
            .unwrap_or(crate::authority::DEFAULT_CLUSTER_DOMAIN)
    }
}

/// Whether a routing header that arrives with the request is honoured.
///
/// By default it is not: a client outside the mesh must not pick its
/// destination, so the decision is made anew and overwrites the header, and
/// every other `x-tideway-*` request header is removed
/// (`decision::request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TrustConfig {
    /// Honour inbound routing headers from every source. For internal
    /// gateways whose callers are all trusted.
    pub all_sources: bool,
    /// Honour them when the downstream peer's mTLS identity (URI SAN, e.g.
    /// `spiffe://cluster.local/ns/ops/sa/canary-driver`) is listed here.
    pub principals: Vec<String>,
}

impl FactorWeights {
    pub fn total(&self) -> f64 {
        self.latency + self.load + self.cost + self.affinity
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            services: Vec::new(),
            scheduler: SchedulerConfig::default(),
            local: LocalConfig::default(),
            trust: TrustConfig::default(),
            tracing: crate::trace::TracingConfig::default(),
            decision_header: false,
            hop_headers: HopHeaders::Filter,
            weights_source: None,
        }
    }
}

impl Default for FactorWeights {
    fn default() -> Self {
        Self {
            latency: 0.4,
            load: 0.3,
            cost: 0.1,
            affinity: 0.2,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            weights: FactorWeights::default(),
            sharpness: 4.0,
            decay_ms: 5_000,
            default_rtt_ms: 30,
            eject_consecutive_failures: 5,
            eject_error_rate: 0.5,
            eject_min_requests: 10,
            eject_base_ms: 1_000,
            eject_max_ms: 30_000,
            tick_ms: 200,
            grpc_failure_codes: DEFAULT_GRPC_FAILURE_CODES.to_vec(),
        }
    }
}
