//! Session affinity by weighted rendezvous hashing.
//!
//! Each destination gets the score `w / −ln(h)` with `h` a stable hash of
//! (key, destination) mapped into (0, 1); the key goes to the highest score.
//! This is the weighted form of highest-random-weight hashing (Schindelhauer
//! & Schomaker, "Weighted distributed hash tables", 2005): a key lands on a
//! destination with probability proportional to its weight, and when one
//! weight changes only the keys that must move to honour the new weights
//! move — unlike a ring, where neighbours' keys shift as well.
//!
//! The hash must be identical in every Envoy worker, every proxy and every
//! build: it is [`crate::hash`]'s FNV-1a with a SplitMix64 finaliser.
//!
//! This is the one rendezvous chooser: the engine's session affinity and
//! its failover for an ejected session both go through [`choose`].

use crate::hash::{fnv1a, splitmix64, FNV_OFFSET};

/// A stable 64-bit hash of `key` and a destination name.
pub fn stable_hash(key: &[u8], destination: &str) -> u64 {
    // A separator that cannot occur in a destination name keeps
    // ("ab","c") and ("a","bc") apart.
    let h = fnv1a(fnv1a(FNV_OFFSET, key), &[0xff]);
    splitmix64(fnv1a(h, destination.as_bytes()))
}

/// The rendezvous score of a destination with weight `weight` for `key`.
/// Zero weight never wins.
pub fn rendezvous_score(key: &[u8], destination: &str, weight: f64) -> f64 {
    if !(weight > 0.0) {
        return f64::NEG_INFINITY;
    }
    // Top 53 bits → a uniform float strictly inside (0, 1).
    let h = ((stable_hash(key, destination) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -h.ln()
}

/// Pick the destination for `key` among `(name, weight)` candidates; `None`
/// when every weight is zero. A candidate given weight 0 (an ejected one,
/// say) never wins, and the others keep their relative order: the
/// next-highest for the same key takes its keys, the same in every worker.
pub fn choose<'a, I>(key: &[u8], candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (&'a str, f64)>,
{
    let mut best: Option<(usize, f64)> = None;
    for (i, (name, weight)) in candidates.into_iter().enumerate() {
        let s = rendezvous_score(key, name, weight);
        if s == f64::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user-{i}")).collect()
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned: changing the hash would move every session in the fleet.
        assert_eq!(stable_hash(b"user-1", "east"), 18_411_194_627_138_056_087);
        assert_eq!(stable_hash(b"", ""), 5_705_415_379_283_624_141);
        assert_ne!(stable_hash(b"ab", "c"), stable_hash(b"a", "bc"));
    }

    #[test]
    fn shares_follow_weights() {
        let dests = [("a", 70.0), ("b", 20.0), ("c", 10.0)];
        let mut counts = [0usize; 3];
        let n = 100_000;
        for k in keys(n) {
            counts[choose(k.as_bytes(), dests.iter().copied()).expect("some")] += 1;
        }
        for (i, (_, w)) in dests.iter().enumerate() {
            let share = counts[i] as f64 / n as f64 * 100.0;
            assert!((share - w).abs() < 0.6, "{i}: {share}% vs {w}%");
        }
    }

    #[test]
    fn a_weight_change_moves_only_the_minimum() {
        let before = [("a", 1.0), ("b", 1.0), ("c", 1.0)];
        let after = [("a", 1.1), ("b", 1.0), ("c", 1.0)];
        let n = 50_000;
        let moved = keys(n)
            .iter()
            .filter(|k| {
                choose(k.as_bytes(), before.iter().copied())
                    != choose(k.as_bytes(), after.iter().copied())
            })
            .count();
        // a's share goes from 1/3 to 1.1/3.1: the minimum movement is 2.15%.
        let share = moved as f64 / n as f64 * 100.0;
        assert!(share < 2.8, "{share}% moved");
        // And every mover moved *to* a.
        for k in keys(n) {
            let (b, a) = (
                choose(k.as_bytes(), before.iter().copied()),
                choose(k.as_bytes(), after.iter().copied()),
            );
            if a != b {
                assert_eq!(a, Some(0));
            }
        }
    }

    #[test]
    fn removing_a_destination_moves_only_its_keys() {
        let all = [("a", 1.0), ("b", 1.0), ("c", 1.0)];
        let without_b = [("a", 1.0), ("b", 0.0), ("c", 1.0)];
        for k in keys(10_000) {
            let before = choose(k.as_bytes(), all.iter().copied());
            let after = choose(k.as_bytes(), without_b.iter().copied());
            if before != Some(1) {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn zero_weights_choose_nothing() {
        assert_eq!(choose(b"k", [("a", 0.0), ("b", 0.0)]), None);
    }
}
