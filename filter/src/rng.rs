//! A small, fast PRNG for load-balancing draws (xoshiro256++).
//!
//! Draws happen on every request, so they must not cost a host call; the
//! generator is seeded once per VM from the host's entropy (WASI
//! `random_get`). Trace ids are not drawn from here: they take fresh host
//! randomness, as the W3C spec asks for unpredictable ids.

use crate::hash::splitmix64;

#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            splitmix64(x)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index drawn with probability proportional to `weights[i]`;
    /// `None` when all are zero.
    pub fn weighted_index(&mut self, weights: &[f64]) -> Option<usize> {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if !(total > 0.0) {
            return None;
        }
        let mut target = self.next_f64() * total;
        let mut last = None;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                if target < w {
                    return Some(i);
                }
                target -= w;
                last = Some(i);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_index_matches_weights() {
        let mut rng = Rng::from_seed(7);
        let w = [70.0, 0.0, 20.0, 10.0];
        let mut counts = [0u32; 4];
        for _ in 0..200_000 {
            counts[rng.weighted_index(&w).expect("some")] += 1;
        }
        assert_eq!(counts[1], 0);
        let pct = |c: u32| f64::from(c) / 2000.0;
        assert!((pct(counts[0]) - 70.0).abs() < 0.5);
        assert!((pct(counts[2]) - 20.0).abs() < 0.5);
        assert!((pct(counts[3]) - 10.0).abs() < 0.5);
    }

    #[test]
    fn all_zero_is_none() {
        assert_eq!(Rng::from_seed(1).weighted_index(&[0.0, 0.0]), None);
        assert_eq!(Rng::from_seed(1).weighted_index(&[]), None);
    }
}
