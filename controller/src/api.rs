//! Tideway's two custom resources, `TrafficPolicy` (namespaced) and `Fleet`
//! (cluster-scoped), in group `traffic.tideway.dev`, version `v1alpha1`.
//!
//! The Rust types are the source of truth: the CRDs in `manifests/crds/` are
//! generated from them (`tideway crds`), and a test fails when the checked-in
//! YAML drifts. Every struct denies unknown fields, so a typo in a policy is
//! an error naming its path rather than a setting silently dropped. What a
//! schema cannot say (a destination's cluster must be a member of the fleet,
//! names unique, weights ≥ 0, locality failover needs outlier detection) is
//! checked by [`crate::validate`].
//!
//! Where a policy section is Istio's own shape (retries, fault, connection
//! pool, outlier detection, locality load balancing, authorization rules) it
//! is written exactly as in a VirtualService / DestinationRule / Authorization
//! Policy (so an operator's existing Istio YAML carries over), with the
//! types of [`crate::istio`]. The
//! `tracing` section is the filter's own `TracingConfig`, passed through.

use crate::istio::{
    AuthorizationRule, ConnectionPoolSettings, HttpFaultInjection, HttpMatchRequest, HttpRetry,
    LocalityLbSetting, OutlierDetection, ServicePort,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of both resources.
pub const GROUP: &str = "traffic.tideway.dev";
/// `apiVersion` of both resources.
pub const API_VERSION: &str = "traffic.tideway.dev/v1alpha1";

/// How one service, running in several member clusters, is steered: its
/// destinations (one per member cluster), the scheduler, canary, resilience,
/// locality, security and cross-region settings. `tideway render` compiles
/// it into Istio resources for every member of its fleet.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "traffic.tideway.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "TrafficPolicyStatus",
    shortname = "tp",
    category = "tideway",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service.name"}"#,
    printcolumn = r#"{"name":"Fleet","type":"string","jsonPath":".spec.fleet"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The `Fleet` (by name) whose member clusters this policy spans.
    pub fleet: String,
    /// The service being steered.
    pub service: ServiceSpec,
    /// Where requests can go: one entry per member cluster serving it.
    #[schemars(length(min = 1))]
    pub destinations: Vec<DestinationSpec>,
    /// Factor weights and health thresholds of the filter's scheduler.
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    /// Session affinity: requests with the same key stay on one destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinitySpec>,
    /// Explicit failover order (destination names). Empty: by locality
    /// relative to the calling proxy (same zone, then region, then the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    /// A canary version of the service, by header and/or by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// Retries, timeouts, fault injection, connection pool, outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<ResilienceSpec>,
    /// Istio's endpoint load balancing inside a destination, and locality
    /// load balancing / failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancingSpec>,
    /// mTLS mode and authorization rules for the service's workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecuritySpec>,
    /// A `ServiceEntry` making the service's instances in other regions
    /// reachable by name, each endpoint labelled with its cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_region: Option<CrossRegionSpec>,
    /// Trace-context handling: the filter's own `tracing` configuration
    /// (mode propagate|span, b3, legacyHeaders, sampleRatio, tracestateKey,
    /// collector), passed to it unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub tracing: Option<tideway_filter::trace::TracingConfig>,
    /// The filter image and how Istio loads it.
    #[serde(default)]
    pub plugin: PluginSpec,
    /// Which workloads call the service (the filter runs in their sidecars'
    /// outbound path). Default: every workload in the service's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CallerSpec>,
    /// Which callers may choose a destination themselves with the routing header.
    #[serde(default)]
    pub trust: TrustSpec,
    /// Alerting rules and the Grafana dashboard.
    #[serde(default)]
    pub observability: ObservabilitySpec,
    /// Add the `x-tideway-decision` response header (reveals topology; off).
    #[serde(default)]
    pub decision_header: bool,
    /// Set `x-cluster-source`/`x-cluster-target`/`x-service-name` on routed
    /// requests. Default on. The rendered VirtualService's routes set them
    /// (`x-cluster-source` from the proxy's `ISTIO_META_CLUSTER_ID`), not
    /// the filter: Envoy's native header operations cost next to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_headers: Option<bool>,
}

/// `x-kubernetes-preserve-unknown-fields` object: the filter validates it.
fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "The filter's tracing configuration (see the README); validated by `tideway render` with the filter's own types.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The steered service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The Kubernetes Service name (same name in every member cluster).
    pub name: String,
    /// Its namespace. Default: the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The service port callers use.
    #[schemars(range(min = 1))]
    pub port: u16,
    /// `HTTP` (default), `HTTP2` or `GRPC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// More host names callers use (beyond the FQDN and the short forms
    /// Istio serves anyway), e.g. a ServiceEntry host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Labels of the service's pods (for PeerAuthentication and
    /// AuthorizationPolicy). Default: `app: <name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workload_labels: BTreeMap<String, String>,
    /// The mesh's cluster domain. Default `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
}

/// One place a request can go: the service's instances in one member cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    /// The member cluster (a `Fleet` member name = Istio's cluster ID).
    pub cluster: String,
    /// The subset name and routing-header value. Default: the cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Base traffic weight (≥ 0). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight: Option<f64>,
    /// Relative cost of serving here (≥ 0; lower is better). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cost: Option<f64>,
}

impl DestinationSpec {
    /// The subset name.
    pub fn subset(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.cluster)
    }
}

/// The filter's scheduler, with the factor names the filter's
/// configuration uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SchedulerSpec {
    /// Weight of observed latency (peak-EWMA). Default 0.4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight_latency: Option<f64>,
    /// Weight of requests in flight. Default 0.3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight_load: Option<f64>,
    /// Weight of the destinations' cost. Default 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight_cost: Option<f64>,
    /// Weight of locality affinity (nearer is better). Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub weight_affinity: Option<f64>,
    /// How strongly scores bend the base weights (`weight × score^sharpness`). Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 64.0))]
    pub sharpness: Option<f64>,
    /// Time constant of the latency and error EWMAs, ms. Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_ms: Option<u64>,
    /// The latency an unmeasured destination is scored at, ms. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rtt_ms: Option<u64>,
    /// When a destination is ejected, and for how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<EjectionSpec>,
}

/// Ejection thresholds of the filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EjectionSpec {
    /// Consecutive failures that eject. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Error-rate EWMA (0..1) that ejects… Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_rate: Option<f64>,
    /// …after at least this many responses. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// First ejection length, ms (doubles each time). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ms: Option<u64>,
    /// Longest ejection, ms. Default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
}

/// Where the session-affinity key comes from: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AffinitySpec {
    /// A request header, e.g. `x-user-id` (lowercase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A canary version of the service: its pods are those with `labels`; the
/// stable version's with `stableLabels`. Requests that match `match` (any
/// entry) — or all requests when `match` is empty — send `weight` percent
/// to the canary. The destination cluster is still the filter's choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanarySpec {
    /// The canary's subset name, e.g. `v2`.
    pub name: String,
    /// Labels of the canary's pods, e.g. `version: v2`.
    pub labels: BTreeMap<String, String>,
    /// Labels of the stable version's pods, e.g. `version: v1`.
    pub stable_labels: BTreeMap<String, String>,
    /// Percent of the matched requests sent to the canary (0..=100).
    #[schemars(range(max = 100))]
    pub weight: u32,
    /// Which requests take part (Istio `HTTPMatchRequest`s: headers, uri,
    /// sourceLabels). Empty: all requests.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
}

/// Istio's resilience settings, as written in a VirtualService route and a
/// DestinationRule's `trafficPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResilienceSpec {
    /// Route timeout, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Istio's load balancing inside each destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancingSpec {
    /// `LEAST_REQUEST`, `ROUND_ROBIN`, `RANDOM`, `PASSTHROUGH` (`LEAST_CONN`
    /// is Istio's deprecated alias of `LEAST_REQUEST`). Ignored when
    /// `affinity` is set (consistent hashing on the affinity key instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    /// Istio locality load balancing and failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityLbSetting>,
}

/// mTLS and authorization for the service's workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecuritySpec {
    /// `STRICT` (default) or `PERMISSIVE` (while migrating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<String>,
    /// ALLOW rules (Istio `AuthorizationPolicy` rules). Empty: no ALLOW
    /// policy is rendered (the mesh default applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthorizationRule>,
    /// The ingress gateways where clients from outside the mesh enter; a
    /// request carrying the routing header is refused there. Default:
    /// `istio-system` / `istio: ingressgateway`. Empty list: none rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_gateways: Option<Vec<GatewayRef>>,
}

/// A gateway deployment by namespace and pod labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayRef {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// A `ServiceEntry` for the service's instances in other regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossRegionSpec {
    /// Host names (may start with `*.`).
    pub hosts: Vec<String>,
    /// `MESH_INTERNAL` (default) or `MESH_EXTERNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `DNS` (default), `STATIC`, `DNS_ROUND_ROBIN` or `NONE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    pub ports: Vec<ServicePort>,
    /// One endpoint per member cluster; its locality and network default to
    /// the fleet member's.
    pub endpoints: Vec<CrossRegionEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossRegionEndpoint {
    /// The fleet member this endpoint is in.
    pub cluster: String,
    pub address: String,
    /// Port name → port number on this endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    /// Default: the member's `region/zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
}

/// The filter image and how Istio loads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginSpec {
    /// `host/repo@sha256:<manifest digest>` (`tideway image push` prints it).
    /// `tideway render --image` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret in each caller namespace,
    /// for a registry that needs credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// `FAIL_OPEN` (default) or `FAIL_RELOAD`. `FAIL_CLOSE` is refused: a
    /// steering filter must never take traffic down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_strategy: Option<String>,
    /// `AUTHN` (default), `AUTHZ` or `STATS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Order among plugins of the same phase (higher first). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// Workloads that call the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CallerSpec {
    pub namespace: String,
    /// Pod labels; empty: every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// Who may choose a destination with the routing header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustSpec {
    /// mTLS identities (`spiffe://cluster.local/ns/ops/sa/canary-driver`)
    /// whose routing header is honoured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
}

/// Alerting and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// Render a `PrometheusRule` (prometheus-operator). Default true.
    #[serde(default = "default_true")]
    pub prometheus_rule: bool,
    /// Render the Grafana dashboard ConfigMap. Default true.
    #[serde(default = "default_true")]
    pub dashboard: bool,
    /// Namespace of the PrometheusRule and dashboard. Default `monitoring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// HighErrorRate fires above this 5xx ratio (0..1). Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_threshold: Option<f64>,
    /// HighLatency fires above this p95, ms. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_ms: Option<f64>,
}

fn default_true() -> bool {
    true
}

impl Default for ObservabilitySpec {
    fn default() -> Self {
        Self {
            prometheus_rule: true,
            dashboard: true,
            namespace: None,
            error_rate_threshold: None,
            latency_p95_ms: None,
        }
    }
}

/// The member clusters Tideway spreads a service over.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "traffic.tideway.dev",
    version = "v1alpha1",
    kind = "Fleet",
    shortname = "twfleet",
    category = "tideway",
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".spec.clusters[*].name"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FleetSpec {
    #[schemars(length(min = 1))]
    pub clusters: Vec<FleetMember>,
    /// The multi-cluster mesh these members form (informational for
    /// rendering; the east-west gateways per network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshSpec>,
    /// Where the members' sidecars reach the hub's weights API (`tideway
    /// run` or `tideway serve-weights`) for run-time weights and drains.
    /// Absent: the filters use the static weights of their plugin config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_endpoint: Option<WeightsEndpointSpec>,
}

/// The hub's weights API as the members' sidecars reach it. Every render
/// then carries a `ServiceEntry` for `host` and a `weightsSource` in each
/// WasmPlugin's configuration pointing at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightsEndpointSpec {
    /// The host name sidecars use for it (the ServiceEntry's host), e.g.
    /// `tideway-weights.tideway-system.global`.
    pub host: String,
    /// Its port (plain HTTP inside the mesh; the sidecars' mTLS protects it).
    #[schemars(range(min = 1))]
    pub port: u16,
    /// Where it is, as seen from the members: IP addresses (resolution
    /// STATIC) or DNS names (resolution DNS) of the hub's gateway or load
    /// balancer. Empty: `host` itself is resolved by DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// How long the server may hold a poll (long-poll), ms, whole seconds.
    /// Default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 60000))]
    pub wait_ms: Option<u64>,
    /// How long a filter keeps the last weights while the API cannot be
    /// reached, before falling back to its static weights, ms. Default 300000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// One member cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FleetMember {
    /// Istio's cluster ID (`values.global.multiCluster.clusterName`,
    /// `ISTIO_META_CLUSTER_ID`); also the Karmada cluster name.
    pub name: String,
    /// Region of the cluster's nodes (`topology.kubernetes.io/region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Zone (`topology.kubernetes.io/zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Istio network (`topology.istio.io/network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Rollout wave: lower waves are updated first. Default 0.
    #[serde(default)]
    pub wave: u32,
    /// How the controller reaches this cluster's API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiAccess>,
}

impl FleetMember {
    /// `region/zone` (or `region`), as Envoy's node locality and the filter
    /// write it.
    pub fn locality(&self) -> Option<String> {
        match (&self.region, &self.zone) {
            (Some(r), Some(z)) => Some(format!("{r}/{z}")),
            (Some(r), None) => Some(r.clone()),
            _ => None,
        }
    }
}

/// Exactly one of a kubeconfig context or a Secret holding a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiAccess {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub namespace: String,
    pub name: String,
    /// Default `kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A Fleet's `mesh:` block: the Istio multi-network setup its members share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<NetworkConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<MeshGateway>,
}

/// An east-west gateway: which member's registry, its Service and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshGateway {
    pub registry: String,
    pub service: String,
    pub port: u16,
}

/// What `tideway run` last did with a policy: the policy-wide conditions
/// (`Ready`, `Progressing`, `Degraded`) and one entry per member cluster
/// with that member's own. Written by the controller only (the status
/// subresource); never holds credentials, only the API servers' messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The render's revision (a digest of every member's objects): what the
    /// members' `traffic.tideway.dev/revision` annotation says once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per member cluster, in rollout order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRolloutStatus>,
    /// Destinations (subset names) taken out of the render because their
    /// member has no ready endpoints for the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<String>,
}

/// One member cluster's state for a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberRolloutStatus {
    pub name: String,
    pub wave: u32,
    /// The revision the member has (absent until one was applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The condition types of a policy's and a member's status: what `tideway
/// run` writes and `tideway status` reads.
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A condition as Kubernetes writes them (`metav1.Condition`'s fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase, for machines (`Applied`, `InvalidPolicy`, `Rejected`, …).
    pub reason: String,
    /// For humans: what happened, the field or the API server's message.
    /// Never empty (1.20's API servers read `""` here as null and refuse
    /// it; a defaulted field would put `default: null` into the CRD).
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339; changes only when `status` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The CRDs of both resources, as YAML documents (`tideway crds`).
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Fleet::crd(), TrafficPolicy::crd()]
}
