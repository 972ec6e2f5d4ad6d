//! Rendered Istio resources → the Envoy configuration a sidecar gets, the
//! way istiod translates them, so a real Envoy can run what `tideway
//! render` produces.
//!
//! Why: the filter only sets a routing header; whether traffic is steered
//! depends on the VirtualService and DestinationRule the controller renders
//! and on what Istio makes of them. This is the part of istiod's sidecar
//! outbound generation (pilot/pkg/networking/core: httproute.go, route/,
//! cluster*.go, extension/) that those objects exercise:
//!
//! - **virtual hosts**: one per service port, named `HOST:PORT`, with the
//!   domains `GenerateAltVirtualHosts` gives a client proxy in namespace
//!   `proxy.namespace` — the FQDN, and (same namespace) `name`,
//!   `name.ns`, `name.ns.svc`; (other namespace) `name.ns`, `name.ns.svc`.
//!   Sidecars ignore the port in host matching (`ignore_port_in_host_matching`),
//!   so no `:port` variants. A VirtualService's short hosts resolve against
//!   its own namespace. Unknown hosts fall to a `block_all` virtual host
//!   (502), as with `outboundTrafficPolicy: REGISTRY_ONLY`.
//! - **routes**: each `http[]` entry in order, one Envoy route per `match`
//!   (none = prefix `/`); header `exact`/`prefix`/`regex`, `uri`,
//!   `method`, `authority`, `withoutHeaders`, `queryParams`, `port`; after
//!   a catch-all route nothing more is added (istiod stops there too). No
//!   default route is appended: a request no route matches gets 404.
//! - **route actions**: one destination → `cluster`, several →
//!   `weighted_clusters`; cluster `outbound|PORT|SUBSET|HOST` (the port from
//!   the destination, or the service's only port); `timeout` (istiod's
//!   default 0s = none); `retries` (istiod's default policy when unset,
//!   none at `attempts: 0`, numeric `retryOn` entries as retriable status
//!   codes); `fault` as the fault filter's per-route config.
//! - **clusters**: `outbound|PORT||HOST` with every endpoint and one per
//!   DestinationRule subset with the endpoints its labels select, each with
//!   the DestinationRule's traffic policy merged under the subset's:
//!   `loadBalancer.simple` (istiod's default LEAST_REQUEST),
//!   `consistentHash` (RING_HASH + the route's hash policy),
//!   `connectionPool` (circuit-breaker thresholds, connect timeout),
//!   `outlierDetection` (istiod's enforcing rules).
//! - **the WasmPlugin**: applies to the proxy if it is in the plugin's
//!   namespace (or the root namespace), its `selector` matches the proxy's
//!   labels (`targetRefs` attach to gateways and waypoints, never to a
//!   sidecar) and its `match` admits the traffic direction and port; then an
//!   `envoy.filters.http.wasm` filter with `root_id` = `pluginName`, the
//!   `pluginConfig` as a JSON `StringValue`, `failStrategy` as Envoy's
//!   `failure_policy`, ordered by phase (AUTHN, AUTHZ, then the fault
//!   filter, then STATS and unspecified) and by priority (higher first).
//!   The module is a local file, as istio-agent hands it to Envoy after
//!   fetching the image.
//!
//! Everything a rendered object sets that this does not translate (mTLS,
//! locality load balancing, mirroring, …) is reported in
//! [`Translation::untranslated`], never silently dropped; a reference that
//! cannot resolve (a subset no DestinationRule defines, a host the
//! registry does not know) is an error, as it would be a 503 in the mesh.

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Istio's root namespace: a WasmPlugin there applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// A service as the registry knows it.
#[derive(Debug, Clone)]
pub struct Service {
    /// FQDN, e.g. `reviews.prod.svc.cluster.local`.
    pub hostname: String,
    pub namespace: String,
    /// Service ports (HTTP).
    pub ports: Vec<u16>,
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint (a pod, here a loopback backend).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    /// Pod labels plus the ones Istio adds (`topology.istio.io/cluster`).
    pub labels: BTreeMap<String, String>,
}

/// The client sidecar the configuration is generated for.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes cluster domain (`cluster.local`).
    pub cluster_domain: String,
}

/// Which listener the configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The sidecar's outbound listener: this workload calling a service.
    Outbound,
    /// The sidecar's inbound listener: calls into this workload.
    Inbound,
}

/// The Envoy configuration for one listener port.
#[derive(Debug, Clone)]
pub struct Translation {
    /// `RouteConfiguration` (JSON, Envoy v3).
    pub route_config: Value,
    /// `Cluster`s (STATIC, endpoints inline).
    pub clusters: Vec<Value>,
    /// The HTTP filters, router last.
    pub http_filters: Vec<Value>,
    /// Fields of the objects that were not translated, with their paths.
    pub untranslated: Vec<String>,
}

/// Translates the objects one member cluster gets (any kinds; the
/// VirtualServices, DestinationRules and WasmPlugins are read) for
/// `proxy`'s listener on `port`.
pub fn translate(
    objects: &[Value],
    services: &[Service],
    proxy: &Proxy,
    direction: Direction,
    port: u16,
    wasm_file: &Path,
) -> Result<Translation> {
    let mut untranslated = Vec::new();
    let of_kind = |kind: &str| -> Vec<&Value> {
        objects
            .iter()
            .filter(|o| {
                o["kind"] == kind
                    && o["apiVersion"]
                        .as_str()
                        .is_some_and(|a| a.contains("istio.io/"))
            })
            .collect()
    };
    let virtual_services = of_kind("VirtualService");
    let destination_rules = of_kind("DestinationRule");

    // DestinationRules by host.
    let mut rules: BTreeMap<String, &Value> = BTreeMap::new();
    for dr in &destination_rules {
        let ns = namespace(dr);
        let host = fqdn(
            dr["spec"]["host"].as_str().unwrap_or(""),
            ns,
            &proxy.cluster_domain,
        );
        rules.insert(host, dr);
    }

    let mut clusters = Vec::new();
    let mut virtual_hosts = Vec::new();
    for service in services.iter().filter(|s| s.ports.contains(&port)) {
        let dr = rules.get(&service.hostname).copied();
        clusters.extend(service_clusters(service, port, dr, &mut untranslated)?);
        let vs = virtual_services.iter().find(|vs| {
            let ns = namespace(vs);
            vs["spec"]["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|h| fqdn(h, ns, &proxy.cluster_domain) == service.hostname)
        });
        let routes = match vs {
            Some(vs) => vs_routes(
                vs,
                service,
                services,
                port,
                &rules,
                proxy,
                &mut untranslated,
            )?,
            // No VirtualService: istiod's default route to the service.
            None => vec![json!({
                "name": "default",
                "match": {"prefix": "/"},
                "route": with_default_retries(json!({
                    "cluster": cluster_name(port, "", &service.hostname),
                    "timeout": "0s"
                }))
            })],
        };
        virtual_hosts.push(json!({
            "name": format!("{}:{port}", service.hostname),
            "domains": domains(service, proxy),
            "routes": routes,
            "include_request_attempt_count": true
        }));
    }
    virtual_hosts.push(json!({
        "name": "block_all",
        "domains": ["*"],
        "routes": [{"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]
    }));
    let route_config = json!({
        "name": port.to_string(),
        "virtual_hosts": virtual_hosts,
        "validate_clusters": false,
        "ignore_port_in_host_matching": true
    });

    let http_filters = http_filters(
        &of_kind("WasmPlugin"),
        proxy,
        direction,
        port,
        wasm_file,
        &mut untranslated,
    )?;
    Ok(Translation {
        route_config,
        clusters,
        http_filters,
        untranslated,
    })
}

/// An Istio duration (Go syntax: `100ms`, `1m30s`) as protobuf JSON
/// wants it (seconds: `0.100s`), as istiod converts it.
pub fn proto_duration(go: &str) -> String {
    let mut nanos: f64 = 0.0;
    let mut number = String::new();
    let mut chars = go.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' {
                break;
            }
            unit.push(n);
            chars.next();
        }
        let value: f64 = number.parse().unwrap_or(0.0);
        number.clear();
        nanos += value
            * match unit.as_str() {
                "h" => 3.6e12,
                "m" => 6e10,
                "s" => 1e9,
                "ms" => 1e6,
                "us" | "µs" => 1e3,
                _ => 1.0,
            };
    }
    format!("{:.9}s", nanos / 1e9)
}

/// `outbound|PORT|SUBSET|HOST`.
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
}

/// A host as written in a VirtualService or DestinationRule in namespace
/// `ns`, as the FQDN istiod resolves it to (short names are relative to
/// the object's namespace).
pub fn fqdn(host: &str, ns: &str, cluster_domain: &str) -> String {
    if host.contains('.') {
        let parts: Vec<&str> = host.split('.').collect();
        // name.ns → name.ns.svc.<domain>; name.ns.svc → + domain.
        match parts.as_slice() {
            [name, namespace] => format!("{name}.{namespace}.svc.{cluster_domain}"),
            [name, namespace, "svc"] => format!("{name}.{namespace}.svc.{cluster_domain}"),
            _ => host.to_string(),
        }
    } else {
        format!("{host}.{ns}.svc.{cluster_domain}")
    }
}

/// The virtual host domains istiod generates for `service` seen from
/// `proxy` (GenerateAltVirtualHosts, port ignored in host matching).
pub fn domains(service: &Service, proxy: &Proxy) -> Vec<String> {
    let host = &service.hostname;
    let mut out = vec![host.clone()];
    let suffix = format!(".svc.{}", proxy.cluster_domain);
    if let Some(name_ns) = host.strip_suffix(&suffix) {
        if let Some((name, ns)) = name_ns.split_once('.') {
            if ns == proxy.namespace {
                out.push(name.to_string());
            }
            out.push(format!("{name_ns}.svc"));
            out.push(name_ns.to_string());
        }
    }
    out
}

fn service_clusters(
    service: &Service,
    port: u16,
    dr: Option<&Value>,
    untranslated: &mut Vec<String>,
) -> Result<Vec<Value>> {
    let top = dr
        .map(|d| d["spec"]["trafficPolicy"].clone())
        .unwrap_or(Value::Null);
    let mut out = vec![cluster(
        &cluster_name(port, "", &service.hostname),
        service.endpoints.iter().collect(),
        &top,
        "spec.trafficPolicy",
        untranslated,
    )?];
    if let Some(dr) = dr {
        for (i, subset) in dr["spec"]["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = subset["name"]
                .as_str()
                .ok_or_else(|| anyhow!("subsets[{i}] has no name"))?;
            let labels = subset["labels"].as_object().cloned().unwrap_or_default();
            let endpoints: Vec<&Endpoint> = service
                .endpoints
                .iter()
                .filter(|e| {
                    labels
                        .iter()
                        .all(|(k, v)| e.labels.get(k).map(String::as_str) == v.as_str())
                })
                .collect();
            let policy = merge(&top, &subset["trafficPolicy"]);
            out.push(cluster(
                &cluster_name(port, name, &service.hostname),
                endpoints,
                &policy,
                &format!("spec.subsets[{i}].trafficPolicy"),
                untranslated,
            )?);
        }
    }
    Ok(out)
}

/// A subset's traffic policy over the DestinationRule's: istiod replaces
/// whole sections (connectionPool, outlierDetection, loadBalancer, tls).
fn merge(top: &Value, subset: &Value) -> Value {
    let mut out = top.as_object().cloned().unwrap_or_default();
    if let Some(sub) = subset.as_object() {
        for (k, v) in sub {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn cluster(
    name: &str,
    endpoints: Vec<&Endpoint>,
    policy: &Value,
    at: &str,
    untranslated: &mut Vec<String>,
) -> Result<Value> {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints":
            endpoints.iter().map(|e| json!({"endpoint": {"address": {"socket_address":
                {"address": e.address, "port_value": e.port}}}})).collect::<Vec<_>>()
        }]}
    });
    let Some(policy) = policy.as_object() else {
        return Ok(cluster);
    };
    for (section, value) in policy {
        match section.as_str() {
            "loadBalancer" => {
                if let Some(simple) = value["simple"].as_str() {
                    cluster["lb_policy"] = json!(match simple {
                        "ROUND_ROBIN" => "ROUND_ROBIN",
                        "RANDOM" => "RANDOM",
                        "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => "LEAST_REQUEST",
                        other => bail!("{at}.loadBalancer.simple {other:?} is not translated"),
                    });
                } else if value.get("consistentHash").is_some() {
                    cluster["lb_policy"] =
                        json!(if value["consistentHash"].get("maglev").is_some() {
                            "MAGLEV"
                        } else {
                            "RING_HASH"
                        });
                }
                for key in value.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !matches!(key.as_str(), "simple" | "consistentHash") {
                        untranslated.push(format!("{name}: {at}.loadBalancer.{key}"));
                    }
                }
            }
            "connectionPool" => {
                let mut threshold = Map::new();
                let pairs = [
                    ("tcp", "maxConnections", "max_connections"),
                    ("http", "http1MaxPendingRequests", "max_pending_requests"),
                    ("http", "http2MaxRequests", "max_requests"),
                    ("http", "maxRetries", "max_retries"),
                ];
                for (group, field, envoy) in pairs {
                    if let Some(n) = value[group][field].as_u64() {
                        threshold.insert(envoy.into(), json!(n));
                    }
                }
                if !threshold.is_empty() {
                    cluster["circuit_breakers"] = json!({"thresholds": [Value::Object(threshold)]});
                }
                if let Some(t) = value["tcp"]["connectTimeout"].as_str() {
                    cluster["connect_timeout"] = json!(proto_duration(t));
                }
                for (group, fields) in value.as_object().into_iter().flatten() {
                    for key in fields.as_object().into_iter().flat_map(|m| m.keys()) {
                        let done = pairs.iter().any(|(g, f, _)| g == group && f == key)
                            || (group == "tcp" && key == "connectTimeout");
                        if !done {
                            untranslated.push(format!("{name}: {at}.connectionPool.{group}.{key}"));
                        }
                    }
                }
            }
            "outlierDetection" => {
                let mut od = Map::new();
                for (field, envoy, enforcing) in [
                    (
                        "consecutive5xxErrors",
                        "consecutive_5xx",
                        "enforcing_consecutive_5xx",
                    ),
                    (
                        "consecutiveGatewayErrors",
                        "consecutive_gateway_failure",
                        "enforcing_consecutive_gateway_failure",
                    ),
                ] {
                    if let Some(n) = value[field].as_u64() {
                        od.insert(envoy.into(), json!(n));
                        od.insert(enforcing.into(), json!(if n > 0 { 100 } else { 0 }));
                    } else {
                        // istiod leaves Envoy's 5xx detection off unless asked.
                        od.insert(enforcing.into(), json!(0));
                    }
                }
                for (field, envoy) in [
                    ("interval", "interval"),
                    ("baseEjectionTime", "base_ejection_time"),
                ] {
                    if let Some(d) = value[field].as_str() {
                        od.insert(envoy.into(), json!(proto_duration(d)));
                    }
                }
                if let Some(p) = value["maxEjectionPercent"].as_u64() {
                    od.insert("max_ejection_percent".into(), json!(p));
                }
                od.insert("enforcing_success_rate".into(), json!(0));
                cluster["outlier_detection"] = Value::Object(od);
                if let Some(p) = value["minHealthPercent"].as_u64() {
                    cluster["common_lb_config"] = json!({"healthy_panic_threshold": {"value": p}});
                }
                for key in value.as_object().into_iter().flat_map(|m| m.keys()) {
                    let done = matches!(
                        key.as_str(),
                        "consecutive5xxErrors"
                            | "consecutiveGatewayErrors"
                            | "interval"
                            | "baseEjectionTime"
                            | "maxEjectionPercent"
                            | "minHealthPercent"
                    );
                    if !done {
                        untranslated.push(format!("{name}: {at}.outlierDetection.{key}"));
                    }
                }
            }
            other => untranslated.push(format!("{name}: {at}.{other}")),
        }
    }
    Ok(cluster)
}

/// istiod's retry policy when a route sets none (Istio 1.30's
/// pilot/pkg/networking/core/route/retry `DefaultPolicy`): two retries on
/// connect-failure, refused-stream, unavailable and cancelled. Its
/// `retriable-status-codes` condition names no code: since Istio 1.24 the
/// default does not retry a 503 (unsafe for a request that is not
/// idempotent; the compatibility switch `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`
/// went in 1.27), so an upstream's 503 reaches the caller. Retries prefer
/// hosts not yet tried (`previous_hosts`), except under a consistent-hash
/// load balancer, where the hash must choose (`DefaultConsistentHashPolicy`).
fn default_retry_policy(consistent_hash: bool) -> Value {
    let mut policy = json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "host_selection_retry_max_attempts": 5
    });
    if !consistent_hash {
        policy["retry_host_predicate"] = json!([{"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]);
    }
    policy
}

fn with_default_retries(mut action: Value) -> Value {
    action["retry_policy"] = default_retry_policy(false);
    action
}

fn vs_routes(
    vs: &Value,
    service: &Service,
    services: &[Service],
    port: u16,
    rules: &BTreeMap<String, &Value>,
    proxy: &Proxy,
    untranslated: &mut Vec<String>,
) -> Result<Vec<Value>> {
    let ns = namespace(vs);
    let vs_name = vs["metadata"]["name"].as_str().unwrap_or("?");
    let mut out = Vec::new();
    'routes: for (i, http) in vs["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("VirtualService {ns}/{vs_name} spec.http[{i}]");
        for key in http.as_object().into_iter().flat_map(|m| m.keys()) {
            if !matches!(
                key.as_str(),
                "name" | "match" | "route" | "timeout" | "retries" | "fault" | "headers"
            ) {
                untranslated.push(format!("{at}.{key}"));
            }
        }
        let action = route_action(http, &at, ns, service, services, port, rules, proxy)?;
        let fault = http.get("fault").map(fault_config);
        let matches: Vec<Value> = match http["match"].as_array() {
            Some(m) if !m.is_empty() => m.clone(),
            _ => vec![json!({})],
        };
        for (j, m) in matches.iter().enumerate() {
            // A match bound to another port or to other source workloads
            // does not apply to this listener / proxy.
            if m["port"].as_u64().is_some_and(|p| p != u64::from(port)) {
                continue;
            }
            if let Some(labels) = m["sourceLabels"].as_object() {
                if !labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k).map(String::as_str) == v.as_str())
                {
                    continue;
                }
            }
            if m["sourceNamespace"]
                .as_str()
                .is_some_and(|s| s != proxy.namespace)
            {
                continue;
            }
            let route_match = translate_match(m, &format!("{at}.match[{j}]"), untranslated)?;
            let name = match (http["name"].as_str(), m["name"].as_str()) {
                (Some(r), Some(m)) => format!("{r}.{m}"),
                (Some(r), None) => r.to_string(),
                (None, Some(m)) => m.to_string(),
                (None, None) => String::new(),
            };
            let mut route = json!({"match": route_match.clone(), "route": action});
            if !name.is_empty() {
                route["name"] = json!(name);
            }
            request_header_operations(http, &at, &mut route)?;
            if let Some(fault) = &fault {
                route["typed_per_filter_config"] = json!({"envoy.filters.http.fault": fault});
            }
            out.push(route);
            if is_catch_all(&route_match) {
                break 'routes;
            }
        }
    }
    Ok(out)
}

/// `HTTPRoute.headers.request` as istiod renders it on the route: `set`
/// overwrites (`OVERWRITE_IF_EXISTS_OR_ADD`), `add` appends, `remove`
/// drops. Values pass through verbatim, so Envoy's command operators
/// (`%ENVIRONMENT(…)%`) work as they do under istiod.
fn request_header_operations(http: &Value, at: &str, route: &mut Value) -> Result<()> {
    let Some(ops) = http.get("headers") else {
        return Ok(());
    };
    for key in ops.as_object().into_iter().flat_map(|m| m.keys()) {
        if key != "request" {
            bail!("{at}.headers.{key}: not translated here");
        }
    }
    let request = &ops["request"];
    let mut add = Vec::new();
    for (field, action) in [
        ("set", "OVERWRITE_IF_EXISTS_OR_ADD"),
        ("add", "APPEND_IF_EXISTS_OR_ADD"),
    ] {
        for (name, value) in request[field].as_object().into_iter().flatten() {
            let value = value
                .as_str()
                .ok_or_else(|| anyhow!("{at}.headers.request.{field}.{name}: not a string"))?;
            add.push(json!({"header": {"key": name, "value": value}, "append_action": action}));
        }
    }
    if !add.is_empty() {
        route["request_headers_to_add"] = json!(add);
    }
    if let Some(remove) = request["remove"].as_array() {
        route["request_headers_to_remove"] = json!(remove);
    }
    Ok(())
}

fn is_catch_all(route_match: &Value) -> bool {
    let keys: Vec<&String> = route_match
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    keys.len() == 1 && route_match["prefix"] == "/"
}

fn string_matcher(m: &Value, at: &str) -> Result<Value> {
    if let Some(s) = m["exact"].as_str() {
        Ok(json!({"exact": s}))
    } else if let Some(s) = m["prefix"].as_str() {
        Ok(json!({"prefix": s}))
    } else if let Some(s) = m["regex"].as_str() {
        Ok(json!({"safe_regex": {"regex": s}}))
    } else {
        bail!("{at}: no exact, prefix or regex")
    }
}

fn translate_match(m: &Value, at: &str, untranslated: &mut Vec<String>) -> Result<Value> {
    let mut out = json!({});
    match m.get("uri") {
        Some(uri) if uri.get("exact").is_some() => out["path"] = uri["exact"].clone(),
        Some(uri) if uri.get("prefix").is_some() => out["prefix"] = uri["prefix"].clone(),
        Some(uri) if uri.get("regex").is_some() => {
            out["safe_regex"] = json!({"regex": uri["regex"]})
        }
        Some(_) => bail!("{at}.uri: no exact, prefix or regex"),
        None => out["prefix"] = json!("/"),
    }
    if m["ignoreUriCase"].as_bool() == Some(true) {
        out["case_sensitive"] = json!(false);
    }
    let mut headers = Vec::new();
    for (field, invert) in [("headers", false), ("withoutHeaders", true)] {
        let mut names: Vec<(&String, &Value)> =
            m[field].as_object().into_iter().flatten().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, value) in names {
            let mut header = json!({"name": name.to_ascii_lowercase()});
            if value.as_object().is_some_and(|o| o.is_empty()) {
                header["present_match"] = json!(true);
            } else {
                header["string_match"] = string_matcher(value, &format!("{at}.{field}.{name}"))?;
            }
            if invert {
                header["invert_match"] = json!(true);
            }
            headers.push(header);
        }
    }
    for (field, pseudo) in [
        ("method", ":method"),
        ("authority", ":authority"),
        ("scheme", ":scheme"),
    ] {
        if let Some(value) = m.get(field) {
            headers.push(json!({"name": pseudo, "string_match": string_matcher(value, &format!("{at}.{field}"))?}));
        }
    }
    if !headers.is_empty() {
        out["headers"] = json!(headers);
    }
    if let Some(params) = m["queryParams"].as_object() {
        let mut list = Vec::new();
        for (name, value) in params {
            list.push(json!({"name": name, "string_match": string_matcher(value, &format!("{at}.queryParams.{name}"))?}));
        }
        out["query_parameters"] = json!(list);
    }
    for key in m.as_object().into_iter().flat_map(|o| o.keys()) {
        let done = matches!(
            key.as_str(),
            "name"
                | "uri"
                | "ignoreUriCase"
                | "headers"
                | "withoutHeaders"
                | "method"
                | "authority"
                | "scheme"
                | "queryParams"
                | "port"
                | "sourceLabels"
                | "sourceNamespace"
        );
        if !done {
            untranslated.push(format!("{at}.{key}"));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn route_action(
    http: &Value,
    at: &str,
    vs_ns: &str,
    service: &Service,
    services: &[Service],
    port: u16,
    rules: &BTreeMap<String, &Value>,
    proxy: &Proxy,
) -> Result<Value> {
    let destinations = http["route"].as_array().cloned().unwrap_or_default();
    if destinations.is_empty() {
        bail!("{at}: no route (redirect and direct responses are not produced by Tideway)");
    }
    let mut clusters = Vec::new();
    for (k, d) in destinations.iter().enumerate() {
        let host_raw = d["destination"]["host"]
            .as_str()
            .ok_or_else(|| anyhow!("{at}.route[{k}].destination.host missing"))?;
        let host = fqdn(host_raw, vs_ns, &proxy.cluster_domain);
        let target = services
            .iter()
            .find(|s| s.hostname == host)
            .ok_or_else(|| {
                anyhow!(
                    "{at}.route[{k}].destination.host {host_raw:?} ({host}) is no known service"
                )
            })?;
        let dest_port = match d["destination"]["port"]["number"].as_u64() {
            Some(p) => {
                u16::try_from(p).map_err(|_| anyhow!("{at}.route[{k}].destination.port {p}"))?
            }
            None if target.ports.len() == 1 => target.ports[0],
            None if target.hostname == service.hostname => port,
            None => bail!("{at}.route[{k}].destination.port: required, {host} has several ports"),
        };
        let subset = d["destination"]["subset"].as_str().unwrap_or("");
        if !subset.is_empty() {
            let defined = rules.get(&host).is_some_and(|dr| {
                dr["spec"]["subsets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == subset)
            });
            if !defined {
                bail!("{at}.route[{k}].destination.subset {subset:?}: no DestinationRule for {host} defines it (istiod would route to a cluster that does not exist: 503)");
            }
        }
        let weight = d["weight"]
            .as_u64()
            .unwrap_or(if destinations.len() == 1 { 100 } else { 0 });
        clusters.push((cluster_name(dest_port, subset, &host), weight, host));
    }
    let mut action = if clusters.len() == 1 {
        json!({"cluster": clusters[0].0})
    } else {
        // istiod drops zero-weight destinations.
        let weighted: Vec<Value> = clusters
            .iter()
            .filter(|(_, w, _)| *w > 0)
            .map(|(c, w, _)| json!({"name": c, "weight": w}))
            .collect();
        if weighted.is_empty() {
            bail!("{at}.route: every weight is 0");
        }
        json!({"weighted_clusters": {"clusters": weighted}})
    };
    action["timeout"] = json!(proto_duration(http["timeout"].as_str().unwrap_or("0s")));
    // Consistent hashing of the destination's DestinationRule → the
    // route's hash policy.
    let mut consistent_hash = false;
    if let Some(dr) = rules.get(&clusters[0].2) {
        let hash = &dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"];
        consistent_hash = hash.is_object();
        if let Some(header) = hash["httpHeaderName"].as_str() {
            action["hash_policy"] = json!([{"header": {"header_name": header}}]);
        } else if let Some(cookie) = hash["httpCookie"]["name"].as_str() {
            action["hash_policy"] = json!([{"cookie": {"name": cookie, "ttl": hash["httpCookie"]["ttl"].as_str().unwrap_or("0s")}}]);
        }
    }
    match http.get("retries") {
        None => action["retry_policy"] = default_retry_policy(consistent_hash),
        Some(r) if r["attempts"].as_u64() == Some(0) => {}
        Some(r) => {
            // istiod's ConvertPolicy: the default, with the route's fields
            // over it; numeric `retryOn` entries are status codes.
            let mut policy = default_retry_policy(consistent_hash);
            policy["num_retries"] = json!(r["attempts"].as_u64().unwrap_or(2));
            if let Some(on) = r["retryOn"].as_str().filter(|s| !s.trim().is_empty()) {
                let mut retry_on = Vec::new();
                let mut codes = Vec::new();
                for item in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match item.parse::<u32>() {
                        Ok(code) => codes.push(code),
                        Err(_) => retry_on.push(item.to_string()),
                    }
                }
                if !codes.is_empty() && !retry_on.iter().any(|r| r == "retriable-status-codes") {
                    retry_on.push("retriable-status-codes".into());
                }
                policy["retry_on"] = json!(retry_on.join(","));
                if !codes.is_empty() {
                    policy["retriable_status_codes"] = json!(codes);
                }
            }
            if let Some(t) = r["perTryTimeout"].as_str() {
                policy["per_try_timeout"] = json!(proto_duration(t));
            }
            action["retry_policy"] = policy;
        }
    }
    Ok(action)
}

/// A VirtualService `fault` → the fault filter's per-route `HTTPFault`
/// (percentages in millionths, as istiod writes them).
fn fault_config(fault: &Value) -> Value {
    let percent = |p: &Value| {
        let value = p["value"].as_f64().unwrap_or(100.0);
        json!({"numerator": (value * 10_000.0).round() as u64, "denominator": "MILLION"})
    };
    let mut out =
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
    if let Some(delay) = fault.get("delay") {
        out["delay"] = json!({"fixed_delay": proto_duration(delay["fixedDelay"].as_str().unwrap_or("0s")), "percentage": percent(&delay["percentage"])});
    }
    if let Some(abort) = fault.get("abort") {
        out["abort"] = json!({"http_status": abort["httpStatus"], "percentage": percent(&abort["percentage"])});
    }
    out
}

/// Whether `plugin` applies to `proxy`'s listener for `direction`/`port`.
pub fn plugin_applies(plugin: &Value, proxy: &Proxy, direction: Direction, port: u16) -> bool {
    let ns = namespace(plugin);
    if ns != proxy.namespace && ns != ROOT_NAMESPACE {
        return false;
    }
    let spec = &plugin["spec"];
    if spec.get("targetRefs").is_some() || spec.get("targetRef").is_some() {
        // Gateways and waypoints only.
        return false;
    }
    if let Some(labels) = spec["selector"]["matchLabels"].as_object() {
        if !labels
            .iter()
            .all(|(k, v)| proxy.labels.get(k).map(String::as_str) == v.as_str())
        {
            return false;
        }
    }
    let Some(matches) = spec["match"].as_array().filter(|m| !m.is_empty()) else {
        return true;
    };
    matches.iter().any(|m| {
        let mode = m["mode"].as_str().unwrap_or("UNDEFINED");
        let direction_ok = match direction {
            Direction::Outbound => matches!(mode, "CLIENT" | "CLIENT_AND_SERVER" | "UNDEFINED"),
            Direction::Inbound => matches!(mode, "SERVER" | "CLIENT_AND_SERVER" | "UNDEFINED"),
        };
        let ports: Vec<u64> = m["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["number"].as_u64())
            .collect();
        direction_ok && (ports.is_empty() || ports.contains(&u64::from(port)))
    })
}

/// The wasm filter Envoy gets for a WasmPlugin (istiod → ECDS, with the
/// module already fetched to a local file by istio-agent).
pub fn wasm_filter(plugin: &Value, wasm_file: &Path) -> Value {
    let spec = &plugin["spec"];
    let config_json = spec
        .get("pluginConfig")
        .map(Value::to_string)
        .unwrap_or_default();
    let mut config = json!({
        "name": format!("{}.{}", namespace(plugin), plugin["metadata"]["name"].as_str().unwrap_or("")),
        "root_id": spec["pluginName"].as_str().unwrap_or(""),
        "vm_config": {
            "vm_id": "",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": wasm_file.display().to_string()}}
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config_json}
    });
    match spec["failStrategy"].as_str() {
        Some("FAIL_OPEN") => config["failure_policy"] = json!("FAIL_OPEN"),
        Some("FAIL_RELOAD") => config["failure_policy"] = json!("FAIL_RELOAD"),
        _ => config["failure_policy"] = json!("FAIL_CLOSED"),
    }
    json!({
        "name": config["name"].clone(),
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}
    })
}

fn http_filters(
    plugins: &[&Value],
    proxy: &Proxy,
    direction: Direction,
    port: u16,
    wasm_file: &Path,
    untranslated: &mut Vec<String>,
) -> Result<Vec<Value>> {
    let mut applied: Vec<&Value> = plugins
        .iter()
        .copied()
        .filter(|p| plugin_applies(p, proxy, direction, port))
        .collect();
    // Higher priority first; ties by namespace/name (istiod's order).
    applied.sort_by(|a, b| {
        let pa = a["spec"]["priority"].as_i64().unwrap_or(0);
        let pb = b["spec"]["priority"].as_i64().unwrap_or(0);
        pb.cmp(&pa)
            .then_with(|| namespace(a).cmp(namespace(b)))
            .then_with(|| {
                a["metadata"]["name"]
                    .as_str()
                    .cmp(&b["metadata"]["name"].as_str())
            })
    });
    for p in &applied {
        for key in p["spec"].as_object().into_iter().flat_map(|m| m.keys()) {
            if matches!(
                key.as_str(),
                "imagePullSecret" | "imagePullPolicy" | "verificationKey" | "vmConfig" | "type"
            ) {
                untranslated.push(format!("WasmPlugin {}: spec.{key}", p["metadata"]["name"]));
            }
        }
    }
    let phase = |p: &&Value| {
        p["spec"]["phase"]
            .as_str()
            .unwrap_or("UNSPECIFIED_PHASE")
            .to_string()
    };
    let mut out = Vec::new();
    for wanted in ["AUTHN", "AUTHZ"] {
        out.extend(
            applied
                .iter()
                .filter(|p| phase(p) == wanted)
                .map(|p| wasm_filter(p, wasm_file)),
        );
    }
    out.push(json!({"name": "envoy.filters.http.fault",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}));
    for wanted in ["STATS", "UNSPECIFIED_PHASE"] {
        out.extend(
            applied
                .iter()
                .filter(|p| phase(p) == wanted)
                .map(|p| wasm_filter(p, wasm_file)),
        );
    }
    out.push(json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    Ok(out)
}

impl Translation {
    /// An Envoy bootstrap serving this translation on a loopback listener,
    /// with the node identity istiod's sidecar has (`CLUSTER_ID`,
    /// locality). `without_wasm` drops the WasmPlugin filters (the filter
    /// removed: the mesh's own routing alone).
    pub fn bootstrap(
        &self,
        cluster_id: &str,
        locality: (&str, &str),
        log_dir: &Path,
        without_wasm: bool,
    ) -> Value {
        let filters: Vec<Value> = self
            .http_filters
            .iter()
            .filter(|f| {
                !(without_wasm
                    && f["typed_config"]["@type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("wasm.v3.Wasm")))
            })
            .cloned()
            .collect();
        json!({
            "node": {
                "id": format!("sidecar~127.0.0.1~client.{cluster_id}~cluster.local"),
                "cluster": "client",
                "metadata": {"CLUSTER_ID": cluster_id},
                "locality": {"region": locality.0, "zone": locality.1}
            },
            "admin": {
                "access_log_path": log_dir.join("admin.log").display().to_string(),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
            },
            "static_resources": {
                "listeners": [{
                    "name": format!("0.0.0.0_{}", self.route_config["name"].as_str().unwrap_or("")),
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "outbound",
                            "route_config": self.route_config,
                            "http_filters": filters
                        }
                    }]}]
                }],
                "clusters": self.clusters
            }
        })
    }

    /// The wasm filters in the chain (what `plugin_applies` admitted).
    pub fn wasm_filters(&self) -> usize {
        self.http_filters
            .iter()
            .filter(|f| {
                f["typed_config"]["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("wasm.v3.Wasm"))
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_retry_policy_does_not_retry_503_as_istiod_does() {
        // Istio >= 1.24: connection-level failures only; a 503 answer
        // reaches the caller.
        let policy = &with_default_retries(json!({"cluster": "c"}))["retry_policy"];
        assert_eq!(policy.get("retriable_status_codes"), None);
        assert_eq!(
            policy["retry_on"],
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
        assert_eq!(policy["num_retries"], 2);
        assert!(policy["retry_host_predicate"].is_array());
        // Under consistent hashing the hash chooses the retry's host too.
        assert_eq!(default_retry_policy(true).get("retry_host_predicate"), None);
    }

    fn proxy(ns: &str) -> Proxy {
        Proxy {
            namespace: ns.into(),
            labels: BTreeMap::from([("app".to_string(), "productpage".to_string())]),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn service() -> Service {
        Service {
            hostname: "reviews.prod.svc.cluster.local".into(),
            namespace: "prod".into(),
            ports: vec![9080],
            endpoints: ["east", "west"]
                .iter()
                .enumerate()
                .map(|(i, c)| Endpoint {
                    address: "127.0.0.1".into(),
                    port: 10_000 + i as u16,
                    labels: BTreeMap::from([(
                        "topology.istio.io/cluster".to_string(),
                        format!("cluster-{c}"),
                    )]),
                })
                .collect(),
        }
    }

    fn objects() -> Vec<Value> {
        vec![
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "reviews", "namespace": "prod"},
                "spec": {"hosts": ["reviews"], "http": [
                    {"name": "east", "match": [{"headers": {"x-tideway-destination": {"exact": "east"}}}],
                     "route": [{"destination": {"host": "reviews", "subset": "east"}}]},
                    {"name": "default", "route": [{"destination": {"host": "reviews"}}]},
                    {"name": "unreachable", "route": [{"destination": {"host": "reviews"}}]}]}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "reviews", "namespace": "prod"},
                "spec": {"host": "reviews.prod.svc.cluster.local",
                    "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 3}, "tls": {"mode": "ISTIO_MUTUAL"}},
                    "subsets": [{"name": "east", "labels": {"topology.istio.io/cluster": "cluster-east"}},
                                {"name": "west", "labels": {"topology.istio.io/cluster": "cluster-west"}}]}}),
            json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                "metadata": {"name": "tideway", "namespace": "prod"},
                "spec": {"url": "oci://r/f", "match": [{"mode": "CLIENT"}], "pluginConfig": {"a": 1}}}),
        ]
    }

    #[test]
    fn routes_clusters_and_domains_as_istiod_builds_them() {
        let t = translate(
            &objects(),
            &[service()],
            &proxy("prod"),
            Direction::Outbound,
            9080,
            Path::new("/f.wasm"),
        )
        .expect("translates");
        let vh = &t.route_config["virtual_hosts"][0];
        assert_eq!(vh["name"], "reviews.prod.svc.cluster.local:9080");
        assert_eq!(
            vh["domains"],
            json!([
                "reviews.prod.svc.cluster.local",
                "reviews",
                "reviews.prod.svc",
                "reviews.prod"
            ])
        );
        let routes = vh["routes"].as_array().expect("routes");
        // The catch-all ends the list: "unreachable" is not emitted.
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!(
            routes[0]["match"]["headers"][0]["string_match"]["exact"],
            "east"
        );
        assert_eq!(
            routes[0]["route"]["cluster"],
            "outbound|9080|east|reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            routes[1]["route"]["cluster"],
            "outbound|9080||reviews.prod.svc.cluster.local"
        );
        let names: Vec<&str> = t
            .clusters
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "outbound|9080||reviews.prod.svc.cluster.local",
                "outbound|9080|east|reviews.prod.svc.cluster.local",
                "outbound|9080|west|reviews.prod.svc.cluster.local"
            ]
        );
        let east = &t.clusters[1];
        assert_eq!(
            east["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(east["outlier_detection"]["consecutive_5xx"], 3);
        assert_eq!(east["outlier_detection"]["enforcing_consecutive_5xx"], 100);
        assert!(
            t.untranslated.iter().any(|u| u.contains("tls")),
            "{:?}",
            t.untranslated
        );
        assert_eq!(t.wasm_filters(), 1);
        // No phase: after the fault filter, right before the router.
        assert_eq!(t.http_filters[0]["name"], "envoy.filters.http.fault");
        let config = &t.http_filters[1]["typed_config"]["config"];
        assert_eq!(config["configuration"]["value"], r#"{"a":1}"#);
        assert_eq!(config["failure_policy"], "FAIL_CLOSED");
    }

    #[test]
    fn a_client_mode_plugin_never_runs_inbound_nor_for_other_namespaces_or_with_target_refs() {
        let objects = objects();
        let t = translate(
            &objects,
            &[service()],
            &proxy("prod"),
            Direction::Inbound,
            9080,
            Path::new("/f.wasm"),
        )
        .expect("ok");
        assert_eq!(t.wasm_filters(), 0);
        let other = translate(
            &objects,
            &[service()],
            &proxy("other"),
            Direction::Outbound,
            9080,
            Path::new("/f.wasm"),
        )
        .expect("ok");
        assert_eq!(other.wasm_filters(), 0);
        // From another namespace, the short name is not a domain.
        let domains = other.route_config["virtual_hosts"][0]["domains"].clone();
        assert!(
            !domains
                .as_array()
                .expect("list")
                .iter()
                .any(|d| d == "reviews"),
            "{domains}"
        );
        let mut with_refs = objects.clone();
        with_refs[2]["spec"]["targetRefs"] = json!([{"kind": "Service", "name": "reviews"}]);
        let t = translate(
            &with_refs,
            &[service()],
            &proxy("prod"),
            Direction::Outbound,
            9080,
            Path::new("/f.wasm"),
        )
        .expect("ok");
        assert_eq!(t.wasm_filters(), 0, "targetRefs do not attach to sidecars");
        let mut selected = objects;
        selected[2]["spec"]["selector"] = json!({"matchLabels": {"app": "ratings"}});
        let t = translate(
            &selected,
            &[service()],
            &proxy("prod"),
            Direction::Outbound,
            9080,
            Path::new("/f.wasm"),
        )
        .expect("ok");
        assert_eq!(t.wasm_filters(), 0, "the selector does not match the proxy");
    }

    #[test]
    fn a_subset_no_destination_rule_defines_is_an_error() {
        let mut objects = objects();
        objects[0]["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("south");
        let err = translate(
            &objects,
            &[service()],
            &proxy("prod"),
            Direction::Outbound,
            9080,
            Path::new("/f.wasm"),
        )
        .expect_err("must fail");
        assert!(
            err.to_string()
                .contains("spec.http[0].route[0].destination.subset \"south\""),
            "{err}"
        );
    }
}
