//! Which governed service a request is for, from its `:authority`.
//!
//! Istio routes by host, so the filter does too: the port is dropped, the
//! comparison is ASCII case-insensitive, and a `*.suffix` pattern matches
//! any host that ends in `.suffix` (as an Istio VirtualService host does).
//! Exact names win over wildcards, and a longer suffix over a shorter one.

/// Host patterns compiled for lookup.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    exact: Vec<(String, usize)>,
    /// (".suffix", service), longest first.
    suffixes: Vec<(String, usize)>,
}

impl HostTable {
    pub fn new<'a>(services: impl IntoIterator<Item = (usize, &'a [String])>) -> Self {
        let mut table = Self::default();
        for (service, hosts) in services {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => table.suffixes.push((suffix.to_string(), service)),
                    None => table.exact.push((host, service)),
                }
            }
        }
        table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        table
    }

    /// The service governing `authority` (`host[:port]`, raw header bytes).
    pub fn lookup(&self, authority: &[u8]) -> Option<usize> {
        let host = strip_port(authority);
        if host.is_empty() {
            return None;
        }
        if let Some((_, s)) = self
            .exact
            .iter()
            .find(|(h, _)| h.as_bytes().eq_ignore_ascii_case(host))
        {
            return Some(*s);
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            })
            .map(|(_, s)| *s)
    }
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

    fn table() -> HostTable {
        let a = vec![
            "reviews.prod.svc.cluster.local".to_string(),
            "reviews".to_string(),
        ];
        let b = vec!["*.svc.cluster.local".to_string()];
        let c = vec!["*.prod.svc.cluster.local".to_string()];
        HostTable::new([(0, a.as_slice()), (1, b.as_slice()), (2, c.as_slice())])
    }

    #[test]
    fn exact_then_longest_suffix() {
        let t = table();
        assert_eq!(t.lookup(b"reviews.prod.svc.cluster.local:9080"), Some(0));
        assert_eq!(t.lookup(b"REVIEWS"), Some(0));
        assert_eq!(t.lookup(b"ratings.prod.svc.cluster.local"), Some(2));
        assert_eq!(t.lookup(b"ratings.dev.svc.cluster.local"), Some(1));
        assert_eq!(t.lookup(b"svc.cluster.local"), None);
        assert_eq!(t.lookup(b"example.com"), None);
        assert_eq!(t.lookup(b""), None);
        assert_eq!(t.lookup(b":80"), None);
        assert_eq!(t.lookup(b"[::1]:80"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = table().lookup(&bytes);
        }
    }
}
