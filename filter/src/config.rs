//! The plugin configuration: the JSON Istio hands the filter as a
//! `WasmPlugin`'s `pluginConfig` (Istio serialises the YAML object to JSON and
//! Envoy passes those bytes to `on_configure` unchanged).
//!
//! The schema is strict (`deny_unknown_fields`) so a typo is an error rather
//! than a silently ignored setting, and every validation error names the field
//! path and the offending value. The controller renders these same types, so
//! the controller and the filter cannot disagree about the format.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The schema version this build understands. A config declaring another
/// version is rejected: the filter must not guess at semantics it lacks.
pub const SCHEMA_VERSION: u32 = 1;

/// The routing header the rendered VirtualService matches on by default.
pub const DEFAULT_ROUTING_HEADER: &str = "x-tideway-destination";

/// A configuration error: the field path (as written in the JSON) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: {}: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

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

/// The bounds [`WeightsSourceConfig`] is validated against.
pub mod weights_source_bounds {
    /// The longest long-poll the filter asks for (`waitMs`).
    pub const MAX_WAIT_MS: u64 = 300_000;
    /// The longest lease, pause and TTL (a week).
    pub const MAX_MS: u64 = 7 * 24 * 3_600_000;
    /// `maxBytes` range.
    pub const MIN_BYTES: u64 = 256;
    pub const MAX_BYTES: u64 = 64 << 20;
}

fn default_weights_path() -> String {
    crate::weights::WEIGHTS_PATH.to_string()
}
fn default_weights_wait_ms() -> u64 {
    30_000
}
fn default_weights_lease_ms() -> u64 {
    3_000
}
fn default_weights_retry_ms() -> u64 {
    1_000
}
fn default_weights_ttl_ms() -> u64 {
    300_000
}
fn default_weights_max_bytes() -> u64 {
    1 << 20
}

impl WeightsSourceConfig {
    /// Ranges, and the relations that keep the channel working: the lease
    /// outlives the ticks that renew it, and the TTL outlives a long-poll
    /// plus a lease hand-over plus a retry, so weights do not expire while
    /// everything is healthy.
    fn validate(&self, scheduler: &SchedulerConfig) -> Result<(), ConfigError> {
        use weights_source_bounds::*;
        const AT: &str = "weightsSource";
        // Visible ASCII, none of `forbidden`.
        let text = |s: &str, forbidden: &[u8]| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b > b' ' && b != 0x7f && !forbidden.contains(&b))
        };
        let texts = [
            (
                "cluster",
                &self.cluster,
                text(&self.cluster, b""),
                "an Envoy cluster name (under Istio: outbound|PORT||HOST)",
            ),
            (
                "authority",
                &self.authority,
                text(&self.authority, b"/?#@"),
                "a host[:port]",
            ),
            (
                "path",
                &self.path,
                text(&self.path, b"?#") && self.path.starts_with('/'),
                "a request path (starts with /, no spaces, no query: the filter adds it)",
            ),
        ];
        for (field, value, ok, expected) in texts {
            if !ok {
                return Err(ConfigError::new(
                    format!("{AT}.{field}"),
                    format!("{value:?} is not {expected}"),
                ));
            }
        }
        // (field, value, min, max, why the bounds); whole seconds for waitMs:
        // the API's wait= counts seconds.
        let min_lease = scheduler.tick_ms.saturating_mul(2).max(100);
        let min_ttl = self.wait_ms + self.lease_ms + self.retry_ms;
        let ranges = [
            ("waitMs", self.wait_ms, 1_000, MAX_WAIT_MS, "whole seconds"),
            ("leaseMs", self.lease_ms, min_lease, MAX_MS, "≥ 2 × scheduler.tickMs, which renews it"),
            ("retryMs", self.retry_ms, 10, MAX_MS, "the pause after a failed poll"),
            (
                "ttlMs",
                self.ttl_ms,
                min_ttl,
                MAX_MS,
                "≥ waitMs + leaseMs + retryMs, or weights expire during a healthy long-poll and lease hand-over",
            ),
            ("maxBytes", self.max_bytes, MIN_BYTES, MAX_BYTES, "bytes"),
        ];
        for (field, value, min, max, why) in ranges {
            let whole = field != "waitMs" || value.is_multiple_of(1_000);
            if !(min..=max).contains(&value) || !whole {
                return Err(ConfigError::new(
                    format!("{AT}.{field}"),
                    format!("{value} (must be {min}…{max}; {why})"),
                ));
            }
        }
        Ok(())
    }
}

fn default_schema_version() -> u32 {
    SCHEMA_VERSION
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

fn default_probe_path() -> String {
    "/".to_string()
}

fn default_probe_timeout_ms() -> u64 {
    1_000
}

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

    fn validate(&self, at: &str, service: &ServiceConfig) -> Result<(), ConfigError> {
        if !self.cluster.contains(PROBE_CLUSTER_PLACEHOLDER) {
            return Err(ConfigError::new(
                format!("{at}.cluster"),
                format!(
                    "{:?} has no {PROBE_CLUSTER_PLACEHOLDER} (each destination needs its own cluster)",
                    self.cluster
                ),
            ));
        }
        if !self.path.starts_with('/') || self.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ConfigError::new(
                format!("{at}.path"),
                format!(
                    "{:?} is not a request path (starts with /, no spaces)",
                    self.path
                ),
            ));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                format!("{at}.timeoutMs"),
                format!("{} (must be 1…60000)", self.timeout_ms),
            ));
        }
        match &self.authority {
            Some(a) if a.is_empty() || a.bytes().any(|b| b <= b' ' || b == 0x7f) => Err(
                ConfigError::new(format!("{at}.authority"), format!("{a:?} is not a host")),
            ),
            None if self.authority_for(service).is_empty() => Err(ConfigError::new(
                format!("{at}.authority"),
                "absent, and the service has no exact host to default to",
            )),
            _ => Ok(()),
        }
    }
}

fn default_routing_header() -> String {
    DEFAULT_ROUTING_HEADER.to_string()
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

fn default_weight() -> f64 {
    1.0
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
    /// A request header, e.g. `x-user-id` (as the seed article's consistentHash).
    Header { name: String },
    /// A cookie in the `cookie` header.
    Cookie { name: String },
}

/// Weights of the scheduling factors (the seed article's weightLatency,
/// weightLoad, weightCost, weightAffinity). Only their ratios matter.
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

/// The default [`SchedulerConfig::grpc_failure_codes`].
pub const DEFAULT_GRPC_FAILURE_CODES: [u32; 6] = [2, 4, 12, 13, 14, 15];

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

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(ns) = &self.namespace {
            if !is_dns_label(ns) {
                return Err(ConfigError::new(
                    "local.namespace",
                    format!("{ns:?} is not a Kubernetes namespace name"),
                ));
            }
        }
        if let Some(domain) = &self.cluster_domain {
            if domain.is_empty() || !domain.split('.').all(is_dns_label) {
                return Err(ConfigError::new(
                    "local.clusterDomain",
                    format!("{domain:?} is not a DNS domain (e.g. cluster.local)"),
                ));
            }
        }
        Ok(())
    }
}

/// An RFC 1123 label: what Kubernetes allows in a namespace name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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

    /// Check every value the types cannot: ranges, names, references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ConfigError::new(
                "schemaVersion",
                format!(
                    "{} is not supported (this filter understands {SCHEMA_VERSION})",
                    self.schema_version
                ),
            ));
        }
        self.scheduler.validate()?;
        self.local.validate()?;
        self.tracing.validate()?;
        if let Some(source) = &self.weights_source {
            source.validate(&self.scheduler)?;
        }
        for principal in &self.trust.principals {
            if principal.is_empty() {
                return Err(ConfigError::new("trust.principals", "empty principal"));
            }
        }
        let mut names = Vec::new();
        let mut hosts: Vec<&str> = Vec::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            service.validate(&at)?;
            if names.contains(&service.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate service name {:?}", service.name),
                ));
            }
            names.push(&service.name);
            for (j, host) in service.hosts.iter().enumerate() {
                if hosts.contains(&host.as_str()) {
                    return Err(ConfigError::new(
                        format!("{at}.hosts[{j}]"),
                        format!("host {host:?} is claimed by two services"),
                    ));
                }
                hosts.push(host);
            }
        }
        Ok(())
    }
}

impl SchedulerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.weights.validate("scheduler.weights")?;
        check_finite_range("scheduler.sharpness", self.sharpness, 0.0, 64.0)?;
        check_finite_range("scheduler.ejectErrorRate", self.eject_error_rate, 0.0, 1.0)?;
        if self.decay_ms == 0 {
            return Err(ConfigError::new("scheduler.decayMs", "0 (must be > 0)"));
        }
        if !(1..=60_000).contains(&self.default_rtt_ms) {
            return Err(ConfigError::new(
                "scheduler.defaultRttMs",
                format!("{} (must be 1…60000)", self.default_rtt_ms),
            ));
        }
        if self.tick_ms == 0 {
            return Err(ConfigError::new("scheduler.tickMs", "0 (must be > 0)"));
        }
        if self.eject_consecutive_failures == 0 {
            return Err(ConfigError::new(
                "scheduler.ejectConsecutiveFailures",
                "0 (must be ≥ 1)",
            ));
        }
        for (i, &code) in self.grpc_failure_codes.iter().enumerate() {
            let at = format!("scheduler.grpcFailureCodes[{i}]");
            if !(1..=16).contains(&code) {
                return Err(ConfigError::new(
                    at,
                    format!("{code} (must be a gRPC status code 1..=16; 0 is OK)"),
                ));
            }
            if self.grpc_failure_codes[..i].contains(&code) {
                return Err(ConfigError::new(at, format!("{code} is listed twice")));
            }
        }
        if self.eject_base_ms == 0 || self.eject_max_ms < self.eject_base_ms {
            return Err(ConfigError::new(
                "scheduler.ejectBaseMs",
                format!(
                    "{} with ejectMaxMs {} (need 0 < ejectBaseMs ≤ ejectMaxMs)",
                    self.eject_base_ms, self.eject_max_ms
                ),
            ));
        }
        Ok(())
    }
}

impl FactorWeights {
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (name, value) in [
            ("latency", self.latency),
            ("load", self.load),
            ("cost", self.cost),
            ("affinity", self.affinity),
        ] {
            check_finite_range(&format!("{at}.{name}"), value, 0.0, f64::MAX)?;
        }
        Ok(())
    }

    pub fn total(&self) -> f64 {
        self.latency + self.load + self.cost + self.affinity
    }
}

impl ServiceConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(format!("{at}.name"), "empty"));
        }
        if self.hosts.is_empty() {
            return Err(ConfigError::new(format!("{at}.hosts"), "no hosts"));
        }
        for (j, host) in self.hosts.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && host.len() <= 253
                && !bare.contains('*')
                && !bare.contains(':')
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
            if !valid {
                return Err(ConfigError::new(
                    format!("{at}.hosts[{j}]"),
                    format!("{host:?} is not a host name or `*.suffix` (no port)"),
                ));
            }
        }
        if !is_header_name(&self.routing_header) {
            return Err(ConfigError::new(
                format!("{at}.routingHeader"),
                format!(
                    "{:?} is not a lowercase HTTP header name",
                    self.routing_header
                ),
            ));
        }
        match &self.affinity {
            AffinitySource::None => {}
            AffinitySource::Header { name } if !is_header_name(name) => {
                return Err(ConfigError::new(
                    format!("{at}.affinity.name"),
                    format!("{name:?} is not a lowercase HTTP header name"),
                ))
            }
            AffinitySource::Cookie { name }
                if name.is_empty() || name.contains([';', '=', ' ']) =>
            {
                return Err(ConfigError::new(
                    format!("{at}.affinity.name"),
                    format!("{name:?} is not a cookie name"),
                ))
            }
            _ => {}
        }
        if let Some(weights) = &self.weights {
            weights.validate(&format!("{at}.weights"))?;
        }
        if let Some(probe) = &self.probe {
            probe.validate(&format!("{at}.probe"), self)?;
        }
        if self.destinations.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.destinations"),
                "no destinations",
            ));
        }
        let mut any_weight = false;
        for (k, dest) in self.destinations.iter().enumerate() {
            let dat = format!("{at}.destinations[{k}]");
            if dest.name.is_empty() || !dest.name.bytes().all(is_subset_name_byte) {
                return Err(ConfigError::new(
                    format!("{dat}.name"),
                    format!("{:?} is not a valid subset name ([a-z0-9-._])", dest.name),
                ));
            }
            if self.destinations[..k].iter().any(|d| d.name == dest.name) {
                return Err(ConfigError::new(
                    format!("{dat}.name"),
                    format!("duplicate destination {:?}", dest.name),
                ));
            }
            if let Some(cluster) = &dest.cluster {
                if cluster.is_empty() {
                    return Err(ConfigError::new(format!("{dat}.cluster"), "empty"));
                }
            }
            if let Some(locality) = &dest.locality {
                if locality.is_empty() || locality.split('/').count() > 3 {
                    return Err(ConfigError::new(
                        format!("{dat}.locality"),
                        format!("{locality:?} is not region[/zone[/subzone]]"),
                    ));
                }
            }
            check_finite_range(&format!("{dat}.cost"), dest.cost, 0.0, f64::MAX)?;
            check_finite_range(&format!("{dat}.weight"), dest.weight, 0.0, f64::MAX)?;
            any_weight |= dest.weight > 0.0;
        }
        if !any_weight {
            return Err(ConfigError::new(
                format!("{at}.destinations"),
                "every weight is 0: nothing could be chosen",
            ));
        }
        for (k, name) in self.failover.iter().enumerate() {
            if !self.destinations.iter().any(|d| &d.name == name) {
                return Err(ConfigError::new(
                    format!("{at}.failover[{k}]"),
                    format!("{name:?} is not one of the destinations"),
                ));
            }
        }
        Ok(())
    }
}

/// A serde error as a [`ConfigError`]. Malformed JSON keeps its position:
/// there is no field to name. A typing error gets the field path of the
/// position serde_json reports instead (the position itself is dropped).
///
/// Hand-written rather than `serde_path_to_error`: that crate wraps every
/// visitor generically and grew the filter module by 44 KB, past its
/// 300 KB budget; locating the path from the error's position is a small
/// scan done only when the configuration is rejected.
pub(crate) fn typing_error(json: &[u8], e: serde_json::Error) -> ConfigError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ConfigError::new(ROOT, format!("not valid JSON: {e}"))
        }
        Category::Data => {
            let text = e.to_string();
            let position = format!(" at line {} column {}", e.line(), e.column());
            let message = text.strip_suffix(&position).unwrap_or(&text);
            let path = path_at(json, byte_offset(json, e.line(), e.column()));
            ConfigError::new(field_path(&path, message), message)
        }
    }
}

/// The byte offset of serde_json's 1-based `line` and `column` (a column
/// counts bytes).
fn byte_offset(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(json.len(), |(i, _)| i + 1)
    };
    (line_start + column).min(json.len())
}

/// One level of the path while scanning JSON text.
enum Level<'a> {
    /// In an object: the key of the member being read, once read.
    Object(Option<&'a [u8]>),
    /// In an array: the index of the element being read.
    Array(usize),
}

/// The path (`services[0].destinations[1].weigths`; empty at the top) of
/// what `json` holds just before byte `offset`: the members and elements
/// entered and not yet left, down to the last key read.
fn path_at(json: &[u8], offset: usize) -> String {
    let mut levels: Vec<Level<'_>> = Vec::new();
    let mut i = 0;
    let end = offset.min(json.len());
    while i < end {
        match json.get(i) {
            Some(b'{') => levels.push(Level::Object(None)),
            Some(b'[') => levels.push(Level::Array(0)),
            Some(b'}') | Some(b']') => {
                levels.pop();
            }
            Some(b',') => match levels.last_mut() {
                Some(Level::Array(index)) => *index += 1,
                Some(Level::Object(key)) => *key = None,
                None => {}
            },
            Some(b'"') => {
                let (text, next) = json_string(json, i + 1);
                if let Some(Level::Object(key @ None)) = levels.last_mut() {
                    *key = Some(text);
                }
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(core::str::from_utf8(key).unwrap_or("?"));
            }
            Level::Object(None) => {}
            Level::Array(index) => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// The string starting after its opening quote at `start`: its text
/// (escapes kept as written; keys in this schema have none) and the index
/// after its closing quote.
fn json_string(json: &[u8], start: usize) -> (&[u8], usize) {
    let mut i = start;
    while let Some(&b) = json.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return (json.get(start..i).unwrap_or_default(), i + 1),
            _ => i += 1,
        }
    }
    (&[], json.len())
}

/// The field name of an error about the configuration as a whole.
pub const ROOT: &str = "(top level)";

/// The full path of a typing error: the `path` the error was found at,
/// completed with the field an unknown-field or missing-field message
/// names when the path stops at its parent.
fn field_path(path: &str, message: &str) -> String {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match named {
        Some(field) if path.is_empty() => field.to_string(),
        Some(field) if path.rsplit('.').next() != Some(field) => format!("{path}.{field}"),
        _ if path.is_empty() => ROOT.to_string(),
        _ => path.to_string(),
    }
}

fn check_finite_range(field: &str, value: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    if !value.is_finite() || value < min || value > max {
        let range = if max == f64::MAX {
            format!("a finite number ≥ {min}")
        } else {
            format!("a number in {min}..={max}")
        };
        return Err(ConfigError::new(
            field,
            format!("{value} (must be {range})"),
        ));
    }
    Ok(())
}

/// Envoy stores header names lowercase; a mixed-case name would never match.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_subset_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> &'static str {
        r#"{"services":[{"name":"reviews","hosts":["reviews.prod.svc.cluster.local"],
            "destinations":[{"name":"east","weight":90},{"name":"west","weight":10}]}]}"#
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = PluginConfig::from_json(minimal().as_bytes()).expect("valid");
        assert_eq!(config.schema_version, SCHEMA_VERSION);
        let service = &config.services[0];
        assert_eq!(service.routing_header, DEFAULT_ROUTING_HEADER);
        assert_eq!(service.affinity, AffinitySource::None);
        assert_eq!(service.destinations[1].cluster(), "west");
        assert_eq!(config.scheduler, SchedulerConfig::default());
        assert!(!config.trust.all_sources);
        assert_eq!(
            config.hop_headers,
            HopHeaders::Filter,
            "the hop headers are the filter's to write unless configured otherwise"
        );
        assert_eq!(
            config,
            PluginConfig {
                services: config.services.clone(),
                ..PluginConfig::default()
            }
        );
    }

    #[test]
    fn empty_bytes_govern_nothing() {
        assert!(PluginConfig::from_json(b"")
            .expect("empty ok")
            .services
            .is_empty());
        assert!(PluginConfig::from_json(b" \n")
            .expect("blank ok")
            .services
            .is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = PluginConfig::from_json(br#"{"servics":[]}"#).unwrap_err();
        assert_eq!(err.field, "servics", "{err}");
    }

    #[test]
    fn hop_headers_accept_a_bool_or_routes_and_round_trip() {
        for (json, want) in [
            ("true", HopHeaders::Filter),
            ("false", HopHeaders::Off),
            (r#""routes""#, HopHeaders::Routes),
        ] {
            let config = PluginConfig::from_json(format!(r#"{{"hopHeaders":{json}}}"#).as_bytes())
                .unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(config.hop_headers, want, "{json}");
            let back = serde_json::to_value(config.hop_headers).expect("serialises");
            assert_eq!(
                back.to_string(),
                json,
                "what the controller renders is what was parsed"
            );
        }
        let err = PluginConfig::from_json(br#"{"hopHeaders":"filter"}"#).unwrap_err();
        assert_eq!(err.field, "hopHeaders", "{err}");
        assert!(err.to_string().contains("filter"), "{err}");
    }

    /// Typing errors (serde's) name the full path and the value, and never
    /// a line or column: Istio wrote the JSON, not the user.
    #[test]
    fn typing_errors_name_the_full_path_and_the_value() {
        let two_destinations = |second: &str| {
            format!(
                r#"{{"services":[{{"name":"a","hosts":["a"],"destinations":[{{"name":"x"}},{second}]}}]}}"#
            )
        };
        let cases = [
            (
                r#"{"scheduler":{"decayMs":5000.5}}"#.to_string(),
                "scheduler.decayMs",
                "5000.5",
            ),
            (
                two_destinations(r#"{"name":"y","weigths":3}"#),
                "services[0].destinations[1].weigths",
                "weigths",
            ),
            (
                two_destinations(r#"{"name":"y","weight":"heavy"}"#),
                "services[0].destinations[1].weight",
                "heavy",
            ),
            (
                two_destinations(r#"{"weight":1}"#),
                "services[0].destinations[1].name",
                "missing",
            ),
            (
                r#"{"scheduler":{"tickMs":-5}}"#.to_string(),
                "scheduler.tickMs",
                "-5",
            ),
            (
                r#"{"tracing":{"mode":"spann"}}"#.to_string(),
                "tracing.mode",
                "spann",
            ),
            (
                r#"{"tracing":{"collector":{"cluster":"otel","batchsize":3}}}"#.to_string(),
                "tracing.collector.batchsize",
                "batchsize",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"affinity":{"source":"header","nmae":"x"},"destinations":[{"name":"x"}]}]}"#.to_string(),
                "services[0].affinity.nmae",
                "nmae",
            ),
            (
                r#"{"services":[{"name":"a","hosts":"a","destinations":[{"name":"x"}]}]}"#.to_string(),
                "services[0].hosts",
                r#""a""#,
            ),
            (
                r#"{"local":{"namespace":"Prod"}}"#.to_string(),
                "local.namespace",
                "Prod",
            ),
            (
                r#"{"scheduler":{"defaultRttMs":0}}"#.to_string(),
                "scheduler.defaultRttMs",
                "0",
            ),
            (r#""reviews""#.to_string(), ROOT, "reviews"),
        ];
        for (json, field, value) in cases {
            let err = PluginConfig::from_json(json.as_bytes()).expect_err(&json);
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.message.contains(value), "{json}: {err}");
            let text = err.to_string();
            assert!(
                !text.contains("line") && !text.contains("column"),
                "{json}: {text}"
            );
            // The same document laid out over many lines, and handed over
            // as a value (the CLI's YAML route): the same error.
            let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
            let pretty = serde_json::to_string_pretty(&parsed).expect("pretty");
            assert_eq!(
                PluginConfig::from_json(pretty.as_bytes()).err(),
                Some(err.clone())
            );
            assert_eq!(PluginConfig::from_value(&parsed).err(), Some(err));
        }
    }

    #[test]
    fn the_path_survives_strings_that_look_like_json() {
        let json = r#"{"services":[{"name":"a{,[\"]","hosts":["x,y]"],
            "destinations":[{"name":"p"},{"name":"q","cluster":"}{,"},{"name":"r","cost":"free"}]}]}"#;
        let err = PluginConfig::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(err.field, "services[0].destinations[2].cost", "{err}");
        assert!(err.message.contains("free"), "{err}");
    }

    #[test]
    fn malformed_json_is_reported_by_position() {
        let err = PluginConfig::from_json(br#"{"services": [}"#).unwrap_err();
        assert_eq!(err.field, ROOT);
        assert!(
            err.message.contains("not valid JSON") && err.message.contains("column"),
            "{err}"
        );
    }

    #[test]
    fn local_fields_parse_with_defaults() {
        let config =
            PluginConfig::from_json(br#"{"local":{"namespace":"production"}}"#).expect("valid");
        assert_eq!(config.local.namespace.as_deref(), Some("production"));
        assert_eq!(config.local.cluster_domain(), "cluster.local");
        let config = PluginConfig::from_json(br#"{"local":{"clusterDomain":"corp.example"}}"#)
            .expect("valid");
        assert_eq!(config.local.cluster_domain(), "corp.example");
        let err =
            PluginConfig::from_json(br#"{"local":{"clusterDomain":"bad domain"}}"#).unwrap_err();
        assert_eq!(err.field, "local.clusterDomain");
        assert_eq!(config.scheduler.default_rtt_ms, 30);
    }

    #[test]
    fn errors_name_field_and_value() {
        let cases = [
            (r#"{"schemaVersion":2}"#, "schemaVersion", "2"),
            (
                r#"{"scheduler":{"weights":{"latency":-1}}}"#,
                "scheduler.weights.latency",
                "-1",
            ),
            (
                r#"{"scheduler":{"sharpness":100}}"#,
                "scheduler.sharpness",
                "100",
            ),
            (
                r#"{"scheduler":{"grpcFailureCodes":[14,0]}}"#,
                "scheduler.grpcFailureCodes[1]",
                "0 (must be a gRPC status code",
            ),
            (
                r#"{"scheduler":{"grpcFailureCodes":[14,17]}}"#,
                "scheduler.grpcFailureCodes[1]",
                "17",
            ),
            (
                r#"{"scheduler":{"grpcFailureCodes":[14,14]}}"#,
                "scheduler.grpcFailureCodes[1]",
                "14 is listed twice",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a:80"],"destinations":[{"name":"x"}]}]}"#,
                "services[0].hosts[0]",
                "a:80",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"routingHeader":"X-Route","destinations":[{"name":"x"}]}]}"#,
                "services[0].routingHeader",
                "X-Route",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"destinations":[{"name":"x","weight":0}]}]}"#,
                "services[0].destinations",
                "every weight is 0",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"destinations":[{"name":"x"},{"name":"x"}]}]}"#,
                "services[0].destinations[1].name",
                "duplicate",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"failover":["y"],"destinations":[{"name":"x"}]}]}"#,
                "services[0].failover[0]",
                "\"y\"",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"destinations":[{"name":"x","cost":-3}]}]}"#,
                "services[0].destinations[0].cost",
                "-3",
            ),
            (
                r#"{"services":[{"name":"a","hosts":["a"],"affinity":{"source":"header","name":"X-User"},"destinations":[{"name":"x"}]}]}"#,
                "services[0].affinity.name",
                "X-User",
            ),
        ];
        for (json, field, value) in cases {
            let err = PluginConfig::from_json(json.as_bytes()).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.to_string().contains(value), "{json}: {err}");
        }
    }

    #[test]
    fn probe_config_parses_and_expands_the_cluster() {
        let json = r#"{"services":[{"name":"reviews","hosts":["*.x","reviews.prod"],
            "probe":{"cluster":"outbound|9080|{destination}|reviews.prod","path":"/healthz"},
            "destinations":[{"name":"east"}]}]}"#;
        let config = PluginConfig::from_json(json.as_bytes()).expect("valid");
        let service = &config.services[0];
        let probe = service.probe.as_ref().expect("probe");
        assert_eq!(probe.cluster_for("east"), "outbound|9080|east|reviews.prod");
        assert_eq!(
            probe.authority_for(service),
            "reviews.prod",
            "first exact host"
        );
        assert_eq!(probe.timeout_ms, 1000);
    }

    #[test]
    fn weights_source_gets_defaults() {
        let config = PluginConfig::from_json(
            br#"{"weightsSource":{"cluster":"outbound|8080||tideway.tideway-system.svc.cluster.local",
                "authority":"tideway.tideway-system.svc.cluster.local:8080"}}"#,
        )
        .expect("valid");
        let source = config.weights_source.expect("present");
        assert_eq!(source.path, "/v1/weights");
        assert_eq!(
            (
                source.wait_ms,
                source.lease_ms,
                source.retry_ms,
                source.ttl_ms,
                source.max_bytes
            ),
            (30_000, 3_000, 1_000, 300_000, 1 << 20)
        );
    }

    #[test]
    fn bad_weights_source_is_named() {
        let with = |fields: &str| {
            format!(r#"{{"weightsSource":{{"cluster":"c","authority":"a:80"{fields}}}}}"#)
        };
        let cases = [
            (
                r#"{"weightsSource":{"cluster":"","authority":"a"}}"#.to_string(),
                "weightsSource.cluster",
                "\"\"",
            ),
            (
                r#"{"weightsSource":{"cluster":"c","authority":"a b"}}"#.to_string(),
                "weightsSource.authority",
                "\"a b\"",
            ),
            (
                with(r#","path":"/v1/weights?x=1""#),
                "weightsSource.path",
                "no query",
            ),
            (with(r#","waitMs":1500"#), "weightsSource.waitMs", "1500"),
            (with(r#","waitMs":0"#), "weightsSource.waitMs", "0 (must"),
            (
                with(r#","leaseMs":300"#),
                "weightsSource.leaseMs",
                "300 (must be 400",
            ),
            (with(r#","retryMs":0"#), "weightsSource.retryMs", "0 (must"),
            (
                with(r#","ttlMs":30000"#),
                "weightsSource.ttlMs",
                "30000 (must be 34000",
            ),
            (with(r#","maxBytes":10"#), "weightsSource.maxBytes", "10"),
            (with(r#","ttl":1"#), "weightsSource.ttl", "ttl"),
            (
                r#"{"weightsSource":{"authority":"a"}}"#.to_string(),
                "weightsSource.cluster",
                "missing",
            ),
        ];
        for (json, field, value) in cases {
            let err = PluginConfig::from_json(json.as_bytes()).expect_err(&json);
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.message.contains(value), "{json}: {err}");
        }
        // The lease bound follows the tick.
        let slow_tick =
            r#"{"scheduler":{"tickMs":2000},"weightsSource":{"cluster":"c","authority":"a"}}"#;
        let err = PluginConfig::from_json(slow_tick.as_bytes()).unwrap_err();
        assert_eq!(err.field, "weightsSource.leaseMs", "{err}");
        assert!(err.message.contains("4000"), "{err}");
    }

    #[test]
    fn bad_probe_config_is_named() {
        let with = |probe: &str, hosts: &str| {
            format!(
                r#"{{"services":[{{"name":"a","hosts":{hosts},"probe":{probe},"destinations":[{{"name":"x"}}]}}]}}"#
            )
        };
        let cases = [
            (
                with(r#"{"cluster":"east"}"#, r#"["a.svc"]"#),
                "services[0].probe.cluster",
                "\"east\"",
            ),
            (
                with(
                    r#"{"cluster":"c-{destination}","path":"healthz"}"#,
                    r#"["a.svc"]"#,
                ),
                "services[0].probe.path",
                "\"healthz\"",
            ),
            (
                with(
                    r#"{"cluster":"c-{destination}","timeoutMs":0}"#,
                    r#"["a.svc"]"#,
                ),
                "services[0].probe.timeoutMs",
                "0",
            ),
            (
                with(r#"{"cluster":"c-{destination}"}"#, r#"["*.a.svc"]"#),
                "services[0].probe.authority",
                "no exact host",
            ),
        ];
        for (json, field, value) in cases {
            let err = PluginConfig::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(err.message.contains(value), "{json}: {err}");
        }
    }

    #[test]
    fn affinity_sources_parse() {
        let json = r#"{"services":[{"name":"a","hosts":["*.a.svc"],
            "affinity":{"source":"cookie","name":"session"},"destinations":[{"name":"x"}]}]}"#;
        let config = PluginConfig::from_json(json.as_bytes()).expect("valid");
        assert_eq!(
            config.services[0].affinity,
            AffinitySource::Cookie {
                name: "session".into()
            }
        );
    }

    #[test]
    fn round_trips_through_json() {
        let config = PluginConfig::from_json(minimal().as_bytes()).expect("valid");
        let rendered = serde_json::to_vec(&config).expect("serialise");
        assert_eq!(PluginConfig::from_json(&rendered).expect("reparse"), config);
    }
}
