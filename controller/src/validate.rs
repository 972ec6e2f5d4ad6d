//! Checks a schema cannot express, each error at its field path: references
//! between a policy and its fleet, uniqueness, ranges, Istio formats, and
//! combinations Istio would accept but silently ignore (locality failover
//! without outlier detection, the deprecated `consecutiveErrors`).
//!
//! Validation collects every problem rather than stopping at the first.

use crate::api::{Fleet, TrafficPolicy, TrafficPolicySpec};
use crate::field_error::{FieldError, FieldErrors};
use crate::istio::{HttpMatchRequest, StringMatch};
use std::collections::BTreeSet;
pub use tideway_filter::config::is_dns_label;

/// The namespace a policy's objects go to.
pub fn policy_namespace(policy: &TrafficPolicy) -> &str {
    policy.metadata.namespace.as_deref().unwrap_or("default")
}

/// Every problem of a fleet on its own.
pub fn fleet(fleet: &Fleet, errors: &mut FieldErrors) {
    let spec = &fleet.spec;
    if spec.clusters.is_empty() {
        errors.push(FieldError::json(
            "spec.clusters",
            &spec.clusters,
            "at least one member cluster",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, m) in spec.clusters.iter().enumerate() {
        let at = format!("spec.clusters[{i}]");
        if !is_cluster_id(&m.name) {
            errors.push(FieldError::json(
                format!("{at}.name"),
                &m.name,
                "an Istio cluster ID (letters, digits, '-', '_', '.'; 1..=63)",
            ));
        }
        if !seen.insert(m.name.as_str()) {
            errors.push(FieldError::json(
                format!("{at}.name"),
                &m.name,
                "a name no other member has (duplicate)",
            ));
        }
        if m.zone.is_some() && m.region.is_none() {
            errors.push(FieldError::missing(
                format!("{at}.region"),
                "a region when zone is set (locality is region/zone)",
            ));
        }
        for (field, v) in [("region", &m.region), ("zone", &m.zone)] {
            if let Some(v) = v {
                if v.is_empty() || v.contains('/') {
                    errors.push(FieldError::json(
                        format!("{at}.{field}"),
                        v,
                        "a non-empty name without '/'",
                    ));
                }
            }
        }
        if let Some(api) = &m.api {
            if api.kubeconfig_context.is_some() == api.secret_ref.is_some() {
                errors.push(FieldError::json(
                    format!("{at}.api"),
                    api,
                    "exactly one of kubeconfigContext or secretRef",
                ));
            }
        }
    }
    if let Some(w) = &spec.weights_endpoint {
        weights_endpoint(w, errors);
    }
    if let Some(net) = spec.mesh.as_ref().and_then(|m| m.network_config.as_ref()) {
        for (i, g) in net.gateways.iter().enumerate() {
            if !seen.contains(g.registry.as_str()) {
                errors.push(FieldError::json(
                    format!("spec.mesh.networkConfig.gateways[{i}].registry"),
                    &g.registry,
                    format!("a member cluster: one of {}", join(&seen)),
                ));
            }
            if g.port == 0 {
                errors.push(FieldError::json(
                    format!("spec.mesh.networkConfig.gateways[{i}].port"),
                    &g.port,
                    "a port 1..=65535",
                ));
            }
        }
    }
}

/// The weights endpoint: a host sidecars can name, a port, addresses that
/// are all IPs or all DNS names (one ServiceEntry resolution fits them).
fn weights_endpoint(w: &crate::api::WeightsEndpointSpec, errors: &mut FieldErrors) {
    let at = "spec.weightsEndpoint";
    if !is_dns_subdomain(&w.host) {
        errors.push(FieldError::json(
            format!("{at}.host"),
            &w.host,
            "a DNS name (lowercase labels), e.g. tideway-weights.tideway-system.global",
        ));
    }
    if w.port == 0 {
        errors.push(FieldError::json(
            format!("{at}.port"),
            &w.port,
            "a port 1..=65535",
        ));
    }
    let ips = w
        .addresses
        .iter()
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        .count();
    for (i, a) in w.addresses.iter().enumerate() {
        if a.parse::<std::net::IpAddr>().is_err() && !is_dns_subdomain(a) {
            errors.push(FieldError::json(
                format!("{at}.addresses[{i}]"),
                a,
                "an IP address or a DNS name",
            ));
        }
    }
    if ips != 0 && ips != w.addresses.len() {
        errors.push(FieldError::json(
            format!("{at}.addresses"),
            &w.addresses,
            "all IP addresses or all DNS names (not a mix)",
        ));
    }
    if let Some(ms) = w.wait_ms {
        if !(1_000..=60_000).contains(&ms) || !ms.is_multiple_of(1_000) {
            errors.push(FieldError::json(
                format!("{at}.waitMs"),
                &ms,
                "whole seconds, 1000..=60000 (wait= counts seconds; the server holds a poll at most 60 s by default)",
            ));
        }
    }
    if w.ttl_ms == Some(0) {
        errors.push(FieldError::json(
            format!("{at}.ttlMs"),
            &0,
            "a positive number of milliseconds",
        ));
    }
}

fn join(set: &BTreeSet<&str>) -> String {
    set.iter().copied().collect::<Vec<_>>().join(", ")
}

/// Every problem of `policy` against `fleet` (the fleet assumed valid),
/// section by section in the order of the spec.
pub fn policy(policy: &TrafficPolicy, fleet: &Fleet, errors: &mut FieldErrors) {
    let spec = &policy.spec;
    let fleet = FleetNames::of(fleet);
    metadata(policy, fleet.name, errors);
    service(spec, errors);
    let names = destinations(spec, &fleet, errors);
    scheduler(spec, errors);
    affinity(spec, errors);
    canary(spec, &names, errors);
    resilience(spec, errors);
    load_balancing(spec, errors);
    security(spec, errors);
    cross_region(spec, &fleet, errors);
    plugin(spec, errors);
    callers(spec, errors);
    trust(spec, errors);
    observability(spec, errors);
    tracing(spec, errors);
}

/// The Fleet as the checks of members need it.
struct FleetNames<'a> {
    name: &'a str,
    members: BTreeSet<&'a str>,
}

impl<'a> FleetNames<'a> {
    fn of(fleet: &'a Fleet) -> Self {
        Self {
            name: fleet.metadata.name.as_deref().unwrap_or(""),
            members: fleet
                .spec
                .clusters
                .iter()
                .map(|m| m.name.as_str())
                .collect(),
        }
    }
}

/// The policy's name, namespace and Fleet.
fn metadata(policy: &TrafficPolicy, fleet_name: &str, errors: &mut FieldErrors) {
    let spec = &policy.spec;
    match policy.metadata.name.as_deref() {
        Some(n) if is_dns_label(n) && n.len() <= 50 => {}
        other => errors.push(FieldError::json(
            "metadata.name",
            &other,
            "a DNS label of at most 50 characters (objects are named tideway-<name>)",
        )),
    }
    if let Some(ns) = &policy.metadata.namespace {
        if !is_dns_label(ns) {
            errors.push(FieldError::json("metadata.namespace", ns, "a DNS label"));
        }
    }
    if spec.fleet != fleet_name {
        errors.push(FieldError::json(
            "spec.fleet",
            &spec.fleet,
            format!("the name of the Fleet given ({fleet_name:?})"),
        ));
    }
}

/// The Service the policy steers.
fn service(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    let svc = &spec.service;
    if !is_dns_label(&svc.name) {
        errors.push(FieldError::json(
            "spec.service.name",
            &svc.name,
            "a Service name (DNS label)",
        ));
    }
    if let Some(ns) = &svc.namespace {
        if !is_dns_label(ns) {
            errors.push(FieldError::json(
                "spec.service.namespace",
                ns,
                "a DNS label",
            ));
        }
    }
    if svc.port == 0 {
        errors.push(FieldError::json(
            "spec.service.port",
            &svc.port,
            "a port 1..=65535",
        ));
    }
    if let Some(p) = &svc.protocol {
        if !["HTTP", "HTTP2", "GRPC"].contains(&p.as_str()) {
            errors.push(FieldError::json(
                "spec.service.protocol",
                p,
                "HTTP, HTTP2 or GRPC (the filter steers HTTP requests)",
            ));
        }
    }
    for (i, h) in svc.hosts.iter().enumerate() {
        if !is_host(h) {
            errors.push(FieldError::json(
                format!("spec.service.hosts[{i}]"),
                h,
                "a host name or *.suffix, without port",
            ));
        }
    }
    if let Some(d) = &svc.cluster_domain {
        if !is_host(d) || d.starts_with("*.") {
            errors.push(FieldError::json(
                "spec.service.clusterDomain",
                d,
                "a DNS domain, e.g. cluster.local",
            ));
        }
    }
}

/// The destinations and the failover order. Returns the destinations'
/// (subset) names: the canary's must not collide with them.
fn destinations<'a>(
    spec: &'a TrafficPolicySpec,
    fleet: &FleetNames<'_>,
    errors: &mut FieldErrors,
) -> BTreeSet<&'a str> {
    if spec.destinations.is_empty() {
        errors.push(FieldError::json(
            "spec.destinations",
            &spec.destinations,
            "at least one destination",
        ));
    }
    let mut names = BTreeSet::new();
    let mut clusters = BTreeSet::new();
    let mut any_weight = false;
    for (i, d) in spec.destinations.iter().enumerate() {
        let at = format!("spec.destinations[{i}]");
        if !fleet.members.contains(d.cluster.as_str()) {
            errors.push(FieldError::json(
                format!("{at}.cluster"),
                &d.cluster,
                format!(
                    "a member of Fleet {:?}: one of {}",
                    fleet.name,
                    join(&fleet.members)
                ),
            ));
        }
        if !clusters.insert(d.cluster.as_str()) {
            errors.push(FieldError::json(
                format!("{at}.cluster"),
                &d.cluster,
                "one destination per member cluster (duplicate)",
            ));
        }
        let name = d.subset();
        if !is_subset_name(name) {
            errors.push(FieldError::json(
                format!("{at}.name"),
                &name,
                "a subset name: lowercase letters, digits, '-', '.', '_' (1..=63)",
            ));
        }
        if !names.insert(name) {
            errors.push(FieldError::json(
                format!("{at}.name"),
                &name,
                "a name no other destination has (duplicate)",
            ));
        }
        let weight = d.weight.unwrap_or(1.0);
        non_negative(&format!("{at}.weight"), weight, errors);
        any_weight |= weight > 0.0;
        non_negative(&format!("{at}.cost"), d.cost.unwrap_or(0.0), errors);
    }
    if !spec.destinations.is_empty() && !any_weight {
        errors.push(FieldError::new(
            "spec.destinations",
            "every weight 0",
            "at least one destination with weight > 0",
        ));
    }
    for (i, f) in spec.failover.iter().enumerate() {
        if !names.contains(f.as_str()) {
            errors.push(FieldError::json(
                format!("spec.failover[{i}]"),
                f,
                format!("a destination name: one of {}", join(&names)),
            ));
        }
    }
    names
}

/// The filter's scheduler: factor weights, sharpness, ejection.
fn scheduler(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    let s = &spec.scheduler;
    for (field, v) in [
        ("weightLatency", s.weight_latency),
        ("weightLoad", s.weight_load),
        ("weightCost", s.weight_cost),
        ("weightAffinity", s.weight_affinity),
    ] {
        if let Some(v) = v {
            non_negative(&format!("spec.scheduler.{field}"), v, errors);
        }
    }
    if let Some(v) = s.sharpness {
        if !(v.is_finite() && (0.0..=64.0).contains(&v)) {
            errors.push(FieldError::json(
                "spec.scheduler.sharpness",
                &v,
                "a number in 0..=64",
            ));
        }
    }
    if s.decay_ms == Some(0) {
        errors.push(FieldError::json(
            "spec.scheduler.decayMs",
            &0,
            "milliseconds > 0",
        ));
    }
    if let Some(v) = s.default_rtt_ms {
        if !(1..=60_000).contains(&v) {
            errors.push(FieldError::json(
                "spec.scheduler.defaultRttMs",
                &v,
                "milliseconds in 1..=60000",
            ));
        }
    }
    if let Some(e) = &s.ejection {
        if e.consecutive_failures == Some(0) {
            errors.push(FieldError::json(
                "spec.scheduler.ejection.consecutiveFailures",
                &0,
                "a count ≥ 1",
            ));
        }
        if let Some(r) = e.error_rate {
            if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
                errors.push(FieldError::json(
                    "spec.scheduler.ejection.errorRate",
                    &r,
                    "a ratio in 0..=1",
                ));
            }
        }
        let base = e.base_ms.unwrap_or(1_000);
        let max = e.max_ms.unwrap_or(30_000);
        if base == 0 || max < base {
            errors.push(FieldError::new(
                "spec.scheduler.ejection.baseMs",
                format!("{base} with maxMs {max}"),
                "0 < baseMs ≤ maxMs",
            ));
        }
    }
}

/// Session affinity: a header or a cookie, not both.
fn affinity(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    if let Some(a) = &spec.affinity {
        match (&a.header, &a.cookie) {
            (Some(h), None) if !is_header_name(h) => errors.push(FieldError::json(
                "spec.affinity.header",
                h,
                "a lowercase HTTP header name",
            )),
            (None, Some(c)) if c.is_empty() || c.contains([';', '=', ' ', ',']) => {
                errors.push(FieldError::json("spec.affinity.cookie", c, "a cookie name"))
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => errors.push(FieldError::json(
                "spec.affinity",
                a,
                "exactly one of header or cookie",
            )),
        }
    }
}

/// The canary: its subset names must not collide with the destinations'.
fn canary(spec: &TrafficPolicySpec, names: &BTreeSet<&str>, errors: &mut FieldErrors) {
    if let Some(c) = &spec.canary {
        if !is_subset_name(&c.name) || c.name == "stable" {
            errors.push(FieldError::json(
                "spec.canary.name",
                &c.name,
                "a subset name other than \"stable\" ([a-z0-9-._])",
            ));
        }
        for d in &spec.destinations {
            let derived = format!("{}-{}", d.subset(), c.name);
            if names.contains(derived.as_str()) || names.contains(c.name.as_str()) {
                errors.push(FieldError::json(
                    "spec.canary.name",
                    &c.name,
                    format!(
                        "a name whose subsets do not collide with destination names ({derived})"
                    ),
                ));
                break;
            }
        }
        if names.contains("stable") {
            errors.push(FieldError::json(
                "spec.canary",
                &"stable",
                "no destination named \"stable\" while a canary is set (the stable version's subset)",
            ));
        }
        if c.labels.is_empty() {
            errors.push(FieldError::missing(
                "spec.canary.labels",
                "the canary pods' labels",
            ));
        }
        if c.stable_labels.is_empty() {
            errors.push(FieldError::missing(
                "spec.canary.stableLabels",
                "the stable pods' labels",
            ));
        }
        if c.labels == c.stable_labels && !c.labels.is_empty() {
            errors.push(FieldError::json(
                "spec.canary.labels",
                &c.labels,
                "labels that differ from stableLabels",
            ));
        }
        if c.weight > 100 {
            errors.push(FieldError::json(
                "spec.canary.weight",
                &c.weight,
                "a percent 0..=100",
            ));
        }
        for (i, m) in c.matches.iter().enumerate() {
            http_match(&format!("spec.canary.match[{i}]"), m, errors);
        }
    }
}

/// Retries, timeouts, fault injection, connection pool and outlier
/// detection: Istio's own fields, checked as Istio would.
fn resilience(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    if let Some(r) = &spec.resilience {
        if let Some(t) = &r.timeout {
            duration("spec.resilience.timeout", t, errors);
        }
        if let Some(rt) = &r.retries {
            if rt.attempts < 0 {
                errors.push(FieldError::json(
                    "spec.resilience.retries.attempts",
                    &rt.attempts,
                    "a count ≥ 0",
                ));
            }
            if let Some(t) = &rt.per_try_timeout {
                duration("spec.resilience.retries.perTryTimeout", t, errors);
            }
        }
        if let Some(f) = &r.fault {
            if f.abort.is_none() && f.delay.is_none() {
                errors.push(FieldError::missing(
                    "spec.resilience.fault",
                    "abort and/or delay",
                ));
            }
            if let Some(a) = &f.abort {
                if !(200..=599).contains(&a.http_status) {
                    errors.push(FieldError::json(
                        "spec.resilience.fault.abort.httpStatus",
                        &a.http_status,
                        "an HTTP status 200..=599",
                    ));
                }
                if let Some(p) = &a.percentage {
                    percent(
                        "spec.resilience.fault.abort.percentage.value",
                        p.value,
                        errors,
                    );
                }
            }
            if let Some(d) = &f.delay {
                duration(
                    "spec.resilience.fault.delay.fixedDelay",
                    &d.fixed_delay,
                    errors,
                );
                if let Some(p) = &d.percentage {
                    percent(
                        "spec.resilience.fault.delay.percentage.value",
                        p.value,
                        errors,
                    );
                }
            }
        }
        if let Some(cp) = &r.connection_pool {
            if let Some(t) = cp.tcp.as_ref().and_then(|t| t.connect_timeout.as_ref()) {
                duration(
                    "spec.resilience.connectionPool.tcp.connectTimeout",
                    t,
                    errors,
                );
            }
            if let Some(t) = cp.tcp.as_ref().and_then(|t| t.idle_timeout.as_ref()) {
                duration("spec.resilience.connectionPool.tcp.idleTimeout", t, errors);
            }
            if let Some(t) = cp.http.as_ref().and_then(|h| h.idle_timeout.as_ref()) {
                duration("spec.resilience.connectionPool.http.idleTimeout", t, errors);
            }
        }
        if let Some(od) = &r.outlier_detection {
            let at = "spec.resilience.outlierDetection";
            if let Some(v) = od.consecutive_errors {
                errors.push(FieldError::json(
                    format!("{at}.consecutiveErrors"),
                    &v,
                    "consecutive5xxErrors or consecutiveGatewayErrors (Istio deprecated consecutiveErrors and ignores it)",
                ));
            }
            if let Some(t) = &od.interval {
                duration(&format!("{at}.interval"), t, errors);
            }
            if let Some(t) = &od.base_ejection_time {
                duration(&format!("{at}.baseEjectionTime"), t, errors);
            }
            for (field, v) in [
                ("maxEjectionPercent", od.max_ejection_percent),
                ("minHealthPercent", od.min_health_percent),
            ] {
                if let Some(v) = v {
                    if !(0..=100).contains(&v) {
                        errors.push(FieldError::json(
                            format!("{at}.{field}"),
                            &v,
                            "a percent 0..=100",
                        ));
                    }
                }
            }
        }
    }
}

/// Load balancing: the combinations Istio ignores or rejects.
fn load_balancing(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    if let Some(lb) = &spec.load_balancing {
        if let Some(s) = &lb.simple {
            if ![
                "LEAST_REQUEST",
                "LEAST_CONN",
                "ROUND_ROBIN",
                "RANDOM",
                "PASSTHROUGH",
            ]
            .contains(&s.as_str())
            {
                errors.push(FieldError::json(
                    "spec.loadBalancing.simple",
                    s,
                    "LEAST_REQUEST, ROUND_ROBIN, RANDOM or PASSTHROUGH",
                ));
            }
        }
        if let Some(l) = &lb.locality {
            let at = "spec.loadBalancing.locality";
            if !l.failover.is_empty() && !l.failover_priority.is_empty() {
                errors.push(FieldError::new(
                    at,
                    "failover and failoverPriority",
                    "only one of failover or failoverPriority (Istio)",
                ));
            }
            if !l.distribute.is_empty() && !l.failover.is_empty() {
                errors.push(FieldError::new(
                    at,
                    "distribute and failover",
                    "only one of distribute or failover (Istio)",
                ));
            }
            for (i, d) in l.distribute.iter().enumerate() {
                let sum: u64 = d.to.values().map(|v| u64::from(*v)).sum();
                if sum != 100 {
                    errors.push(FieldError::json(
                        format!("{at}.distribute[{i}].to"),
                        &d.to,
                        format!("weights adding up to 100 (they add up to {sum})"),
                    ));
                }
            }
            for (i, f) in l.failover.iter().enumerate() {
                if f.from == f.to || f.from.is_empty() || f.to.is_empty() {
                    errors.push(FieldError::json(
                        format!("{at}.failover[{i}]"),
                        f,
                        "two different regions",
                    ));
                }
            }
            let has_od = spec
                .resilience
                .as_ref()
                .is_some_and(|r| r.outlier_detection.is_some());
            if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_od {
                errors.push(FieldError::missing(
                    "spec.resilience.outlierDetection",
                    "outlier detection when locality failover is set (Istio ignores failover without it)",
                ));
            }
        }
    }
}

/// The mTLS mode, the authorization rules and the ingress gateways.
fn security(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    if let Some(sec) = &spec.security {
        if let Some(m) = &sec.mtls {
            if !["STRICT", "PERMISSIVE"].contains(&m.as_str()) {
                errors.push(FieldError::json(
                    "spec.security.mtls",
                    m,
                    "STRICT or PERMISSIVE",
                ));
            }
        }
        for (i, rule) in sec.authorization.iter().enumerate() {
            if rule.from.is_empty() && rule.to.is_empty() && rule.when.is_empty() {
                errors.push(FieldError::json(
                    format!("spec.security.authorization[{i}]"),
                    rule,
                    "a rule with from, to or when (an empty rule allows everything)",
                ));
            }
        }
        for (i, g) in sec.ingress_gateways.iter().flatten().enumerate() {
            if !is_dns_label(&g.namespace) {
                errors.push(FieldError::json(
                    format!("spec.security.ingressGateways[{i}].namespace"),
                    &g.namespace,
                    "a namespace",
                ));
            }
            if g.labels.is_empty() {
                errors.push(FieldError::missing(
                    format!("spec.security.ingressGateways[{i}].labels"),
                    "the gateway pods' labels",
                ));
            }
        }
    }
}

/// The ServiceEntry for other regions: hosts, ports, and endpoints in
/// the Fleet's members.
fn cross_region(spec: &TrafficPolicySpec, fleet: &FleetNames<'_>, errors: &mut FieldErrors) {
    if let Some(cr) = &spec.cross_region {
        let at = "spec.crossRegion";
        if cr.hosts.is_empty() {
            errors.push(FieldError::missing(
                format!("{at}.hosts"),
                "at least one host",
            ));
        }
        for (i, h) in cr.hosts.iter().enumerate() {
            if !is_host(h) {
                errors.push(FieldError::json(
                    format!("{at}.hosts[{i}]"),
                    h,
                    "a host name or *.suffix",
                ));
            }
        }
        if let Some(l) = &cr.location {
            if !["MESH_INTERNAL", "MESH_EXTERNAL"].contains(&l.as_str()) {
                errors.push(FieldError::json(
                    format!("{at}.location"),
                    l,
                    "MESH_INTERNAL or MESH_EXTERNAL",
                ));
            }
        }
        if let Some(r) = &cr.resolution {
            if !["DNS", "STATIC", "DNS_ROUND_ROBIN", "NONE"].contains(&r.as_str()) {
                errors.push(FieldError::json(
                    format!("{at}.resolution"),
                    r,
                    "DNS, STATIC, DNS_ROUND_ROBIN or NONE",
                ));
            }
        }
        if cr.ports.is_empty() {
            errors.push(FieldError::missing(
                format!("{at}.ports"),
                "at least one port",
            ));
        }
        let mut port_names = BTreeSet::new();
        for (i, p) in cr.ports.iter().enumerate() {
            if p.number == 0 {
                errors.push(FieldError::json(
                    format!("{at}.ports[{i}].number"),
                    &p.number,
                    "a port 1..=65535",
                ));
            }
            if !port_names.insert(p.name.as_str()) {
                errors.push(FieldError::json(
                    format!("{at}.ports[{i}].name"),
                    &p.name,
                    "a unique port name",
                ));
            }
            if !["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO"]
                .contains(&p.protocol.as_str())
            {
                errors.push(FieldError::json(
                    format!("{at}.ports[{i}].protocol"),
                    &p.protocol,
                    "HTTP, HTTPS, HTTP2, GRPC, TCP or TLS",
                ));
            }
        }
        for (i, e) in cr.endpoints.iter().enumerate() {
            if !fleet.members.contains(e.cluster.as_str()) {
                errors.push(FieldError::json(
                    format!("{at}.endpoints[{i}].cluster"),
                    &e.cluster,
                    format!(
                        "a member of Fleet {:?}: one of {}",
                        fleet.name,
                        join(&fleet.members)
                    ),
                ));
            }
            if e.address.is_empty() {
                errors.push(FieldError::missing(
                    format!("{at}.endpoints[{i}].address"),
                    "an address",
                ));
            }
            for name in e.ports.keys() {
                if !port_names.contains(name.as_str()) {
                    errors.push(FieldError::json(
                        format!("{at}.endpoints[{i}].ports.{name}"),
                        name,
                        format!("a port name of {at}.ports: one of {}", join(&port_names)),
                    ));
                }
            }
        }
        if cr.endpoints.is_empty() && cr.resolution.as_deref() == Some("STATIC") {
            errors.push(FieldError::missing(
                format!("{at}.endpoints"),
                "endpoints when resolution is STATIC",
            ));
        }
    }
}

/// How the WasmPlugin loads the filter.
fn plugin(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    let p = &spec.plugin;
    if let Some(f) = &p.fail_strategy {
        match f.as_str() {
            "FAIL_OPEN" | "FAIL_RELOAD" => {}
            "FAIL_CLOSE" => errors.push(FieldError::json(
                "spec.plugin.failStrategy",
                f,
                "FAIL_OPEN or FAIL_RELOAD (FAIL_CLOSE would fail every request when the filter cannot load; steering is an optimisation)",
            )),
            _ => errors.push(FieldError::json(
                "spec.plugin.failStrategy",
                f,
                "FAIL_OPEN or FAIL_RELOAD",
            )),
        }
    }
    if let Some(ph) = &p.phase {
        if !["AUTHN", "AUTHZ", "STATS"].contains(&ph.as_str()) {
            errors.push(FieldError::json(
                "spec.plugin.phase",
                ph,
                "AUTHN, AUTHZ or STATS",
            ));
        }
    }
    if let Some(s) = &p.image_pull_secret {
        if !is_dns_subdomain(s) {
            errors.push(FieldError::json(
                "spec.plugin.imagePullSecret",
                s,
                "a Secret name",
            ));
        }
    }
}

/// The caller namespaces that get the filter.
fn callers(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    let mut caller_ns = BTreeSet::new();
    for (i, c) in spec.callers.iter().enumerate() {
        let at = format!("spec.callers[{i}]");
        if !is_dns_label(&c.namespace) {
            errors.push(FieldError::json(
                format!("{at}.namespace"),
                &c.namespace,
                "a namespace",
            ));
        }
        if !caller_ns.insert(c.namespace.as_str()) {
            errors.push(FieldError::json(
                format!("{at}.namespace"),
                &c.namespace,
                "one entry per namespace (duplicate)",
            ));
        }
        if c.namespace == crate::istio::ISTIO_ROOT_NAMESPACE && c.selector.is_empty() {
            errors.push(FieldError::missing(
                format!("{at}.selector"),
                "a selector: a WasmPlugin in Istio's root namespace without one applies to every proxy of the mesh, gateways included",
            ));
        }
    }
}

/// The mTLS identities trusted to send the routing header.
fn trust(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    for (i, pr) in spec.trust.principals.iter().enumerate() {
        if pr.is_empty() || pr.contains(char::is_whitespace) {
            errors.push(FieldError::json(
                format!("spec.trust.principals[{i}]"),
                pr,
                "an mTLS identity",
            ));
        }
    }
}

/// The alerting thresholds.
fn observability(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    let o = &spec.observability;
    if let Some(ns) = &o.namespace {
        if !is_dns_label(ns) {
            errors.push(FieldError::json(
                "spec.observability.namespace",
                ns,
                "a namespace",
            ));
        }
    }
    if let Some(r) = o.error_rate_threshold {
        if !(r.is_finite() && r > 0.0 && r <= 1.0) {
            errors.push(FieldError::json(
                "spec.observability.errorRateThreshold",
                &r,
                "a ratio in (0, 1]",
            ));
        }
    }
    if let Some(ms) = o.latency_p95_ms {
        if !(ms.is_finite() && ms > 0.0) {
            errors.push(FieldError::json(
                "spec.observability.latencyP95Ms",
                &ms,
                "milliseconds > 0",
            ));
        }
    }
}

/// Tracing: the filter's own rules, reported at their path under spec.
fn tracing(spec: &TrafficPolicySpec, errors: &mut FieldErrors) {
    if let Some(t) = &spec.tracing {
        if let Err(e) = t.validate() {
            errors.push(crate::load::from_config_error(&e).under("spec"));
        }
    }
}

fn http_match(at: &str, m: &HttpMatchRequest, errors: &mut FieldErrors) {
    if m.name.is_some() {
        errors.push(FieldError::json(
            format!("{at}.name"),
            &m.name,
            "no name (Tideway names its routes)",
        ));
    }
    if m.headers.is_empty() && m.uri.is_none() && m.source_labels.is_empty() {
        errors.push(FieldError::missing(at, "headers, uri or sourceLabels"));
    }
    for (name, sm) in &m.headers {
        if !is_header_name(name) {
            errors.push(FieldError::json(
                format!("{at}.headers.{name}"),
                name,
                "a lowercase HTTP header name",
            ));
        }
        string_match(&format!("{at}.headers.{name}"), sm, errors);
    }
    if let Some(u) = &m.uri {
        string_match(&format!("{at}.uri"), u, errors);
    }
}

fn string_match(at: &str, m: &StringMatch, errors: &mut FieldErrors) {
    let n = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if n != 1 {
        errors.push(FieldError::json(
            at,
            m,
            "exactly one of exact, prefix or regex",
        ));
    }
}

fn non_negative(at: &str, v: f64, errors: &mut FieldErrors) {
    if !(v.is_finite() && v >= 0.0) {
        errors.push(FieldError::json(at, &v, "a finite number ≥ 0"));
    }
}

fn percent(at: &str, v: f64, errors: &mut FieldErrors) {
    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
        errors.push(FieldError::json(at, &v, "a percent 0..=100"));
    }
}

/// An Istio duration: one or more `<number><unit>` (`h`, `m`, `s`, `ms`,
/// `us`, `ns`), at least 1ms in total (Istio's CRDs check `>= 1ms`).
fn duration(at: &str, v: &str, errors: &mut FieldErrors) {
    match parse_duration_ns(v) {
        Some(ns) if ns >= 1e6 => {}
        _ => errors.push(FieldError::json(
            at,
            &v,
            "a duration ≥ 1ms, e.g. 250ms, 2s, 1m30s",
        )),
    }
}

/// Nanoseconds of a Go/CEL-style duration string.
pub fn parse_duration_ns(v: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit, scale) = [
            ("ms", 1e6),
            ("us", 1e3),
            ("ns", 1.0),
            ("h", 3.6e12),
            ("m", 6e10),
            ("s", 1e9),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += num * scale;
    }
    Some(total)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_cluster_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_subset_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
}

fn is_host(h: &str) -> bool {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    !bare.is_empty()
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("2s"), Some(2e9));
        assert_eq!(parse_duration_ns("30ms"), Some(3e7));
        assert_eq!(parse_duration_ns("1m30s"), Some(9e10));
        assert_eq!(parse_duration_ns("1.5h"), Some(5.4e12));
        assert_eq!(parse_duration_ns("10"), None);
        assert_eq!(parse_duration_ns("s"), None);
        assert_eq!(parse_duration_ns(""), None);
        assert_eq!(parse_duration_ns("5 s"), None);
        let mut e = FieldErrors::default();
        duration("x", "500us", &mut e);
        assert!(e.has_path("x"), "below 1ms is refused");
    }

    #[test]
    fn names() {
        assert!(is_dns_label("reviews"));
        assert!(!is_dns_label("Reviews"));
        assert!(!is_dns_label("-a"));
        assert!(is_host("*.global.production.svc.cluster.local"));
        assert!(!is_host("reviews:9080"));
        assert!(is_cluster_id("cluster-hangzhou"));
    }
}
