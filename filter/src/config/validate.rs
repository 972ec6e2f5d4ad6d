//! The checks the types cannot express: ranges, names, references and the
//! relations between fields. Each error names the field path and the
//! offending value.

use super::defaults::SCHEMA_VERSION;
use super::types::*;
use crate::config_error::ConfigError;

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

impl WeightsSourceConfig {
    /// Ranges, and the relations that keep the channel working: the lease
    /// outlives the ticks that renew it, and the TTL outlives a long-poll
    /// plus a lease hand-over plus a retry, so weights do not expire while
    /// everything is healthy.
    pub(super) fn validate(&self, scheduler: &SchedulerConfig) -> Result<(), ConfigError> {
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

impl ProbeConfig {
    pub(super) fn validate(&self, at: &str, service: &ServiceConfig) -> Result<(), ConfigError> {
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

impl LocalConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl PluginConfig {
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
}

impl ServiceConfig {
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(format!("{at}.name"), "empty"));
        }
        self.validate_hosts(at)?;
        self.validate_headers(at)?;
        if let Some(weights) = &self.weights {
            weights.validate(&format!("{at}.weights"))?;
        }
        if let Some(probe) = &self.probe {
            probe.validate(&format!("{at}.probe"), self)?;
        }
        self.validate_destinations(at)?;
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

    /// Host names or `*.suffix`, no port.
    fn validate_hosts(&self, at: &str) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The routing header and an affinity header or cookie: names Envoy
    /// can match.
    fn validate_headers(&self, at: &str) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Subset names, unique; clusters, localities, costs and weights; some
    /// weight above 0.
    fn validate_destinations(&self, at: &str) -> Result<(), ConfigError> {
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
        Ok(())
    }
}

pub(super) fn check_finite_range(
    field: &str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), ConfigError> {
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
pub(super) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(super) fn is_subset_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
}
