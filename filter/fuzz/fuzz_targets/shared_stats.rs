//! The shared-data record decoder (`SharedStats::decode`) and the merge the
//! tick applies to what it reads. Another worker, an older filter version or
//! another plugin in the same shared-data namespace may have written the
//! bytes: anything must decode to a usable record or a named error.
//!
//! The whole input is one record. When it is long enough it is also two
//! records (version byte forced, so the fuzzer reaches the merge at once)
//! and a clock and decay for merging them.
//!
//! Properties:
//! - exactly the 33-byte, version-2 records decode; others name their length
//!   or version;
//! - a decoded record re-encodes to the input, except a latency estimate
//!   that is not a positive finite number, which is stored as 0 (unmeasured);
//!   and decoding is then a fixpoint;
//! - a merge keeps the later ejection, the larger counts, one of the two
//!   latency estimates and the slower of them at `now`; merging a record
//!   with itself changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::shared_stats::{DecodeError, SharedStats};

const LEN: usize = 33;
const VERSION: u8 = 2;

fn check_decode(bytes: &[u8]) -> Option<SharedStats> {
    match SharedStats::decode(bytes) {
        Err(DecodeError::Length(n)) => {
            assert_eq!(n, bytes.len());
            assert_ne!(n, LEN);
            None
        }
        Err(DecodeError::Version(v)) => {
            assert_eq!(bytes.len(), LEN);
            assert_eq!(v, bytes[0]);
            assert_ne!(v, VERSION);
            None
        }
        Ok(stats) => {
            assert_eq!(bytes.len(), LEN);
            assert_eq!(bytes[0], VERSION);
            let encoded = stats.encode();
            let raw = f64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
            if raw.is_finite() && raw > 0.0 {
                assert_eq!(&encoded[..], bytes);
            } else {
                assert_eq!(stats.latency.raw_ns(), 0.0);
                assert_eq!(encoded[0], VERSION);
                assert_eq!(&encoded[1..9], &0f64.to_le_bytes());
                assert_eq!(&encoded[9..], &bytes[9..]);
            }
            assert_eq!(SharedStats::decode(&encoded), Ok(stats));
            Some(stats)
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fuzz_target!(|data: &[u8]| {
    check_decode(data);
    if data.len() < 2 * LEN + 16 {
        return;
    }
    let record = |at: usize| {
        let mut bytes = [0u8; LEN];
        bytes.copy_from_slice(&data[at..at + LEN]);
        bytes[0] = VERSION;
        check_decode(&bytes).expect("a 33-byte version-2 record decodes")
    };
    let (a, b) = (record(0), record(LEN));
    let now_ns = u64_at(data, 2 * LEN);
    // decayMs is validated > 0; the filter passes it in nanoseconds.
    let decay_ns = u64_at(data, 2 * LEN + 8).max(1) as f64 * 1e6;

    let merged = a.merge(&b, now_ns, decay_ns);
    assert_eq!(
        merged.ejected_until_ns,
        a.ejected_until_ns.max(b.ejected_until_ns)
    );
    assert_eq!(merged.ejections, a.ejections.max(b.ejections));
    assert_eq!(
        merged.failure_streak,
        a.failure_streak.max(b.failure_streak)
    );
    assert!(merged.latency == a.latency || merged.latency == b.latency);
    let value = |s: &SharedStats| s.latency.value(now_ns, decay_ns).unwrap_or(0.0);
    assert!(!value(&merged).is_nan());
    assert!(value(&merged) >= value(&a) && value(&merged) >= value(&b));
    assert_eq!(a.merge(&a, now_ns, decay_ns), a);
    // Whichever side merges, the outcome is as slow at `now`.
    assert_eq!(value(&b.merge(&a, now_ns, decay_ns)), value(&merged));
    assert!(SharedStats::decode(&merged.encode()) == Ok(merged));
});
