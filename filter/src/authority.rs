//! Which governed service a request is for, from its `:authority`, matched
//! the way Istio serves hosts.
//!
//! Istio puts a Kubernetes service on one virtual host under several names
//! (pilot's `GenerateAltVirtualHosts`): for `reviews.production.svc.cluster.local`
//! a sidecar answers to the FQDN, the FQDN with a trailing dot,
//! `reviews.production.svc` and `reviews.production` from any namespace, and
//! to `reviews` only from the service's own namespace (elsewhere the short
//! name is another namespace's service). Each of them with or without the
//! port. Callers in the same namespace mostly use the short name, so the
//! filter must steer all of them, and only those.
//!
//! Names are compared ASCII case-insensitively; a `*.suffix` pattern matches
//! any host that ends in `.suffix` (as an Istio VirtualService host does).
//! Exact names (and their aliases) win over wildcards, a longer suffix over
//! a shorter one, and a host a service lists itself over another service's
//! alias.
//!
//! The table is built once per configuration (and again when the proxy's
//! namespace becomes known); a request costs one binary search of its host,
//! lowercased on the stack, and nothing is allocated. (A sorted table rather
//! than a `HashMap`: as fast for a few dozen names, and the hasher would
//! cost the module several KB.)

/// The cluster DNS domain Kubernetes uses unless told otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Longest host the table can hold or look up (a DNS name is at most 253
/// bytes; the trailing-dot form one more).
const MAX_HOST_LEN: usize = 254;

/// Host names compiled for lookup.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    /// Every name a request may carry, lowercase, without port; sorted.
    names: Names,
    /// `.suffix` of each `*.suffix` pattern, lowercase; sorted.
    suffixes: Names,
}

/// Names → service, sorted by name, one entry per name.
#[derive(Debug, Clone, Default)]
struct Names(Vec<(Box<[u8]>, usize)>);

impl Names {
    /// Add `name` unless it is there already (the first service given a
    /// name keeps it). Insertion into the sorted table: a few dozen names
    /// once per configuration, and no sort routine in the module.
    fn insert(&mut self, name: &str, service: usize) {
        if let Err(at) = self.position(name.as_bytes()) {
            self.0.insert(at, (name.as_bytes().into(), service));
        }
    }

    fn position(&self, name: &[u8]) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    fn get(&self, name: &[u8]) -> Option<usize> {
        self.position(name)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, s)| *s)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where this proxy is, for the names Istio serves only to the service's
/// own namespace.
#[derive(Debug, Clone, Copy)]
pub struct ProxyDomain<'a> {
    /// `node.metadata.NAMESPACE` (or `local.namespace`); `None`: unknown,
    /// and the bare short names are not served.
    pub namespace: Option<&'a str>,
    /// The cluster DNS domain, `cluster.local` by default.
    pub cluster_domain: &'a str,
}

impl HostTable {
    /// Compile `(service index, its hosts)`; hosts are as validated by the
    /// config (`name` or `*.suffix`, no port).
    pub fn new<'a>(
        services: impl IntoIterator<Item = (usize, &'a [String])> + Clone,
        domain: ProxyDomain<'_>,
    ) -> Self {
        let mut table = Self::default();
        // Listed hosts first, so an alias never takes a listed name.
        for (service, hosts) in services.clone() {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => table.suffixes.insert(suffix, service),
                    None => table.names.insert(&host, service),
                }
            }
        }
        for (service, hosts) in services {
            for host in hosts.iter().filter(|h| !h.starts_with('*')) {
                for alias in aliases(&host.to_ascii_lowercase(), domain) {
                    table.names.insert(&alias, service);
                }
            }
        }
        table
    }

    /// The service governing `authority` (`host[:port]`, raw header bytes).
    pub fn lookup(&self, authority: &[u8]) -> Option<usize> {
        // One pass for both the port's colon and any capital letter.
        let mut last_colon = None;
        let mut upper = false;
        for (i, &b) in authority.iter().enumerate() {
            if b == b':' {
                last_colon = Some(i);
            }
            upper |= b.is_ascii_uppercase();
        }
        let host = match (authority.first(), last_colon) {
            (Some(b'['), _) => strip_port(authority),
            (_, Some(colon)) => authority.get(..colon).unwrap_or(authority),
            (_, None) => authority,
        };
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return None;
        }
        // Clients send lowercase hosts nearly always: look those up as they
        // are, and copy to a lowercased buffer only when there is a capital.
        if !upper {
            return self.lookup_lowercase(host);
        }
        self.lookup_lowered(host)
    }

    /// [`HostTable::lookup`] of a host with capitals, lowercased on the stack.
    #[inline(never)]
    fn lookup_lowered(&self, host: &[u8]) -> Option<usize> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let lower = buf.get_mut(..host.len())?;
        for (out, b) in lower.iter_mut().zip(host) {
            *out = b.to_ascii_lowercase();
        }
        self.lookup_lowercase(lower)
    }

    /// [`HostTable::lookup`] of a host already lowercase and without port.
    fn lookup_lowercase(&self, lower: &[u8]) -> Option<usize> {
        if let Some(s) = self.names.get(lower) {
            return Some(s);
        }
        if self.suffixes.is_empty() {
            return None;
        }
        // Longest suffix first: each dot after the first byte starts one.
        lower
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, &b)| b == b'.')
            .find_map(|(i, _)| lower.get(i..).and_then(|s| self.suffixes.get(s)))
    }
}

/// The other names Istio serves `host` (lowercase, no port) under, for a
/// proxy in `domain`: the trailing-dot FQDN always; for a Kubernetes
/// service `name.ns.svc.<cluster domain>` also `name.ns.svc` and `name.ns`,
/// and `name` when the proxy is in `ns`.
fn aliases(host: &str, domain: ProxyDomain<'_>) -> Vec<String> {
    let mut out = vec![format!("{host}.")];
    let cluster_domain = domain.cluster_domain.trim_matches('.').to_ascii_lowercase();
    let Some(service_part) = host
        .strip_suffix(cluster_domain.as_str())
        .and_then(|h| h.strip_suffix(".svc."))
    else {
        return out;
    };
    let Some((name, ns)) = service_part.split_once('.') else {
        return out;
    };
    if name.is_empty() || ns.is_empty() || ns.contains('.') {
        return out;
    }
    out.push(format!("{name}.{ns}.svc"));
    out.push(format!("{name}.{ns}"));
    if domain
        .namespace
        .is_some_and(|own| own.eq_ignore_ascii_case(ns))
    {
        out.push(name.to_string());
    }
    out
}

/// `host:port` → `host`; IPv6 literals keep their brackets.
fn strip_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        return match authority.iter().position(|&b| b == b']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => &authority[..colon],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCTION: ProxyDomain<'static> = ProxyDomain {
        namespace: Some("production"),
        cluster_domain: DEFAULT_CLUSTER_DOMAIN,
    };

    fn table_in(domain: ProxyDomain<'_>) -> HostTable {
        let a = vec![
            "reviews.production.svc.cluster.local".to_string(),
            "reviews-legacy".to_string(),
        ];
        let b = vec!["*.svc.cluster.local".to_string()];
        let c = vec!["*.prod.svc.cluster.local".to_string()];
        let d = vec!["ratings.staging.svc.cluster.local".to_string()];
        HostTable::new(
            [
                (0, a.as_slice()),
                (1, b.as_slice()),
                (2, c.as_slice()),
                (3, d.as_slice()),
            ],
            domain,
        )
    }

    #[test]
    fn every_name_istio_serves_in_the_same_namespace() {
        let t = table_in(PRODUCTION);
        for host in [
            "reviews.production.svc.cluster.local",
            "reviews.production.svc.cluster.local:9080",
            "reviews.production.svc.cluster.local.",
            "reviews.production.svc.cluster.local.:9080",
            "reviews.production.svc",
            "reviews.production.svc:9080",
            "reviews.production",
            "reviews.production:9080",
            "reviews",
            "reviews:9080",
            "REVIEWS:9080",
            "Reviews.Production.Svc.Cluster.Local",
            "reviews-legacy",
        ] {
            assert_eq!(t.lookup(host.as_bytes()), Some(0), "{host}");
        }
        // Another namespace's service: qualified names only.
        assert_eq!(t.lookup(b"ratings.staging:9080"), Some(3));
        assert_eq!(t.lookup(b"ratings.staging.svc"), Some(3));
        assert_eq!(t.lookup(b"ratings"), None);
    }

    #[test]
    fn the_short_name_only_in_the_services_namespace() {
        for other in [
            ProxyDomain {
                namespace: Some("default"),
                ..PRODUCTION
            },
            ProxyDomain {
                namespace: None,
                ..PRODUCTION
            },
        ] {
            let t = table_in(other);
            assert_eq!(t.lookup(b"reviews:9080"), None, "{other:?}");
            assert_eq!(t.lookup(b"reviews.production:9080"), Some(0));
            assert_eq!(t.lookup(b"reviews.production.svc:9080"), Some(0));
        }
    }

    #[test]
    fn the_cluster_domain_is_configurable() {
        let hosts = vec!["reviews.production.svc.corp.example".to_string()];
        let corp = HostTable::new(
            [(0, hosts.as_slice())],
            ProxyDomain {
                namespace: Some("production"),
                cluster_domain: "corp.example",
            },
        );
        assert_eq!(corp.lookup(b"reviews:9080"), Some(0));
        assert_eq!(corp.lookup(b"reviews.production"), Some(0));
        // Under the default domain it is not a Kubernetes service name.
        let default = HostTable::new([(0, hosts.as_slice())], PRODUCTION);
        assert_eq!(default.lookup(b"reviews"), None);
        assert_eq!(default.lookup(b"reviews.production"), None);
        assert_eq!(
            default.lookup(b"reviews.production.svc.corp.example:80"),
            Some(0)
        );
    }

    #[test]
    fn a_listed_host_wins_over_another_services_alias() {
        let a = vec!["reviews.production.svc.cluster.local".to_string()];
        let b = vec!["reviews".to_string()];
        let t = HostTable::new([(0, a.as_slice()), (1, b.as_slice())], PRODUCTION);
        assert_eq!(t.lookup(b"reviews"), Some(1));
        assert_eq!(t.lookup(b"reviews.production"), Some(0));
    }

    #[test]
    fn exact_then_longest_suffix() {
        let t = table_in(PRODUCTION);
        assert_eq!(t.lookup(b"ratings.prod.svc.cluster.local"), Some(2));
        assert_eq!(t.lookup(b"ratings.dev.svc.cluster.local:80"), Some(1));
        assert_eq!(t.lookup(b"RATINGS.DEV.SVC.CLUSTER.LOCAL"), Some(1));
        assert_eq!(t.lookup(b"svc.cluster.local"), None);
        assert_eq!(t.lookup(b".svc.cluster.local"), None);
        assert_eq!(t.lookup(b"example.com"), None);
        assert_eq!(t.lookup(b""), None);
        assert_eq!(t.lookup(b":80"), None);
        assert_eq!(t.lookup(b"[::1]:80"), None);
        assert_eq!(t.lookup("r".repeat(300).as_bytes()), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = table_in(PRODUCTION).lookup(&bytes);
        }

        #[test]
        fn case_and_port_never_change_the_answer(
            host in "[a-z][a-z0-9.-]{0,40}", upper in proptest::collection::vec(proptest::bool::ANY, 41), port in 0u16..,
        ) {
            let t = table_in(PRODUCTION);
            let mixed: String = host.chars().zip(&upper)
                .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c }).collect();
            let with_port = format!("{mixed}:{port}");
            proptest::prop_assert_eq!(t.lookup(host.as_bytes()), t.lookup(with_port.as_bytes()));
        }
    }
}
