//! Failover order: where a request goes when its chosen destination is
//! ejected.
//!
//! An explicit order from the config comes first; the remaining destinations
//! follow by locality relative to this proxy — same zone, then same region,
//! then the rest — as Istio's locality failover orders them, ties kept in
//! config order.

/// Destination indices in failover order.
pub fn order(names: &[&str], closeness: &[f64], explicit: &[String]) -> Vec<usize> {
    let mut out: Vec<usize> = explicit
        .iter()
        .filter_map(|name| names.iter().position(|n| n == name))
        .collect();
    let mut rest: Vec<usize> = (0..names.len()).filter(|i| !out.contains(i)).collect();
    // Stable sort: equal closeness keeps config order.
    rest.sort_by(|&a, &b| {
        let ca = closeness.get(a).copied().unwrap_or(0.0);
        let cb = closeness.get(b).copied().unwrap_or(0.0);
        cb.total_cmp(&ca)
    });
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_then_region_then_rest() {
        let names = ["far", "region", "zone", "far2"];
        let closeness = [0.0, 0.5, 1.0, 0.0];
        assert_eq!(order(&names, &closeness, &[]), vec![2, 1, 0, 3]);
    }

    #[test]
    fn explicit_order_first() {
        let names = ["a", "b", "c"];
        let closeness = [1.0, 1.0, 0.0];
        assert_eq!(order(&names, &closeness, &["c".to_string()]), vec![2, 0, 1]);
    }
}
