//! Per-destination statistics shared by the Envoy workers of one proxy.
//!
//! Each worker runs its own VM and learns from the responses it sees. On a
//! tick every worker merges its view with the record in proxy-wasm shared
//! data — compare-and-swap, retried on a mismatch — so a slowdown or an
//! ejection seen by one worker reaches all of them within a tick, while the
//! per-request path never touches shared data.
//!
//! Istio leaves `vm_id` empty, so every plugin in one Envoy shares one
//! shared-data namespace: keys are prefixed `tideway/`.
//!
//! The merge keeps the later ejection; latency views are merged by the
//! worker's own estimator with the peak-EWMA rule ([`PeakEwma::merge`]: a
//! slowdown anywhere is believed at once, a recovery as its age allows),
//! because only the estimator knows τ.
//!
//! The record also counts the destination's failure streak across workers
//! (failures since a success was last published), so a destination that
//! goes down is ejected after `ejectConsecutiveFailures` failures in the
//! whole proxy, as Envoy's outlier detection counts them, not after that
//! many on each worker. That count is not merged but changed by the
//! operation a sync carries ([`StreakOp`]).

use crate::ewma::Measurement;
#[cfg(doc)]
use crate::ewma::PeakEwma;

pub const KEY_PREFIX: &str = "tideway/";
const FORMAT_VERSION: u8 = 2;
const ENCODED_LEN: usize = 1 + 8 + 8 + 8 + 4 + 4;

/// The shared-data key of a destination's record.
pub fn key(service: &str, destination: &str) -> String {
    format!("{KEY_PREFIX}stats/{service}/{destination}")
}

/// What workers share about one destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedStats {
    /// The latency estimate and when it last moved; `None`: unmeasured.
    pub latency: Option<Measurement>,
    pub ejected_until_ns: u64,
    pub ejections: u32,
    /// Failures of the destination, on any worker, since a success was
    /// last published.
    pub failure_streak: u32,
}

/// What a sync does to the shared failure streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreakOp {
    /// Leave it (the tick).
    Keep,
    /// One more failure.
    Fail,
    /// A success ends it.
    Reset,
}

/// Why a shared record was not understood (it is then overwritten).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Version(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Length(n) => write!(
                f,
                "shared stats record has {n} bytes, expected {ENCODED_LEN}"
            ),
            Self::Version(v) => write!(
                f,
                "shared stats record version {v}, expected {FORMAT_VERSION}"
            ),
        }
    }
}

impl SharedStats {
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0] = FORMAT_VERSION;
        // Unmeasured is written as estimate 0.
        let (estimate_ns, at_ns) = self.latency.map_or((0.0, 0), |m| (m.estimate_ns, m.at_ns));
        out[1..9].copy_from_slice(&estimate_ns.to_le_bytes());
        out[9..17].copy_from_slice(&at_ns.to_le_bytes());
        out[17..25].copy_from_slice(&self.ejected_until_ns.to_le_bytes());
        out[25..29].copy_from_slice(&self.ejections.to_le_bytes());
        out[29..33].copy_from_slice(&self.failure_streak.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; ENCODED_LEN] = bytes
            .try_into()
            .map_err(|_| DecodeError::Length(bytes.len()))?;
        if bytes[0] != FORMAT_VERSION {
            return Err(DecodeError::Version(bytes[0]));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(b)
        };
        Ok(Self {
            latency: Measurement::from_parts(f64::from_bits(u64_at(1)), u64_at(9)),
            ejected_until_ns: u64_at(17),
            ejections: u32_at(25),
            failure_streak: u32_at(29),
        })
    }

    /// Merge two views' health: the later ejection, the larger failure
    /// streak (a sync then applies its [`StreakOp`] to the stored one).
    /// `latency` is this worker's estimator merged with `other.latency`
    /// ([`PeakEwma::merge`]); the result carries its measurement.
    pub fn merge(&self, other: &Self, latency: Option<Measurement>) -> Self {
        Self {
            latency,
            ejected_until_ns: self.ejected_until_ns.max(other.ejected_until_ns),
            ejections: self.ejections.max(other.ejections),
            failure_streak: self.failure_streak.max(other.failure_streak),
        }
    }
}

/// The host's shared-data store, as the core needs it.
pub trait SharedStore {
    /// The value and its CAS token; `Ok(None)` when the key is absent.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Write if `cas` still matches (`None`: the key must not exist yet is
    /// not expressible in ABI 0.2.1, so `None` writes unconditionally).
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Why a shared-data call did not do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote in between: read again and retry.
    CasMismatch,
    /// The host failed the call: this sync is given up (the next tick
    /// tries again), nothing is assumed written.
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let s = SharedStats {
            latency: Measurement::from_parts(1234.5, 99),
            ejected_until_ns: 77,
            ejections: 3,
            failure_streak: 4,
        };
        assert_eq!(SharedStats::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn bad_records_are_named() {
        assert_eq!(SharedStats::decode(b"xx"), Err(DecodeError::Length(2)));
        let unmeasured = SharedStats {
            latency: None,
            ejected_until_ns: 0,
            ejections: 0,
            failure_streak: 0,
        };
        assert_eq!(SharedStats::decode(&unmeasured.encode()), Ok(unmeasured));
        let mut bytes = SharedStats {
            latency: None,
            ejected_until_ns: 0,
            ejections: 0,
            failure_streak: 0,
        }
        .encode();
        bytes[0] = 9;
        assert_eq!(SharedStats::decode(&bytes), Err(DecodeError::Version(9)));
    }

    #[test]
    fn merge_keeps_the_later_ejection_and_the_given_latency() {
        let slow = Measurement::from_parts(50e6, 10);
        let a = SharedStats {
            latency: Measurement::from_parts(1e6, 10),
            ejected_until_ns: 0,
            ejections: 0,
            failure_streak: 1,
        };
        let b = SharedStats {
            latency: slow,
            ejected_until_ns: 500,
            ejections: 2,
            failure_streak: 0,
        };
        let m = a.merge(&b, slow);
        assert_eq!(m.latency, slow);
        assert_eq!(m.ejected_until_ns, 500);
        assert_eq!(m.ejections, 2);
        assert_eq!(m.failure_streak, 1);
        assert_eq!(b.merge(&a, slow), m);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = SharedStats::decode(&bytes);
        }
    }
}
