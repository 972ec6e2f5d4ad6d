//! The shared-data record decoder (`SharedStats::decode`) and the merge a
//! tick applies to what it reads (`PeakEwma::merge`, `SharedStats::merge`).
//! Another worker, an older filter version or another plugin in the same
//! shared-data namespace may have written the bytes: anything must decode to
//! a usable record or a named error.
//!
//! The whole input is one record. When it is long enough it is also two
//! records (version byte forced, so the fuzzer reaches the merge at once)
//! and the worker's τ and default RTT.
//!
//! Properties:
//! - exactly the 33-byte, version-2 records decode; others name their length
//!   or version;
//! - a decoded record re-encodes to the input, except a latency estimate
//!   that is not a positive finite number, which is "unmeasured" (written as
//!   estimate 0 at time 0); decoding is then a fixpoint;
//! - merging latency views is symmetric (both workers reach the same
//!   estimate), keeps the later time, lands between the two estimates and
//!   believes a later slowdown at once; merging a view into itself or
//!   nothing into a view changes nothing;
//! - the record merge keeps the later ejection and the larger counts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::ewma::{Measurement, PeakEwma};
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
                assert_eq!(
                    stats.latency.map(|m| (m.estimate_ns.to_bits(), m.at_ns)),
                    Some((raw.to_bits(), u64_at(bytes, 9)))
                );
                assert_eq!(&encoded[..], bytes);
            } else {
                assert_eq!(stats.latency, None);
                assert_eq!(encoded[0], VERSION);
                assert_eq!(&encoded[1..17], &[0u8; 16]);
                assert_eq!(&encoded[17..], &bytes[17..]);
            }
            assert_eq!(SharedStats::decode(&encoded), Ok(stats));
            Some(stats)
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// A worker that adopted `first` and then merged `second`.
fn merged(fresh: PeakEwma, first: Option<Measurement>, second: Option<Measurement>) -> PeakEwma {
    let mut e = fresh;
    e.merge(first);
    e.merge(second);
    e
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
    // decayMs and defaultRttMs are validated > 0; in nanoseconds here.
    let decay_ns = u64_at(data, 2 * LEN).max(1) as f64 * 1e6;
    let default_ns = u64_at(data, 2 * LEN + 8).max(1) as f64 * 1e6;
    let fresh = PeakEwma::new(default_ns, decay_ns);

    let ab = merged(fresh, a.latency, b.latency);
    let ba = merged(fresh, b.latency, a.latency);
    assert_eq!(ab, ba, "merge is not symmetric: {a:?} {b:?}");
    match (a.latency, b.latency) {
        (None, None) => assert_eq!(ab, fresh),
        (Some(m), None) | (None, Some(m)) => {
            // Adopted as it is (estimates under 1 ns are believed as 1 ns).
            let floored = Measurement {
                estimate_ns: m.estimate_ns.max(1.0),
                ..m
            };
            assert_eq!(ab.measurement(), Some(floored));
        }
        (Some(x), Some(y)) => {
            let m = ab.measurement().expect("measured");
            assert_eq!(m.at_ns, x.at_ns.max(y.at_ns));
            let (lo, hi) = (
                x.estimate_ns.min(y.estimate_ns).max(1.0),
                x.estimate_ns.max(y.estimate_ns).max(1.0),
            );
            assert!(
                (lo..=hi).contains(&m.estimate_ns),
                "{} outside [{lo}, {hi}]",
                m.estimate_ns
            );
            let (earlier, later) = if x.at_ns <= y.at_ns { (x, y) } else { (y, x) };
            if later.estimate_ns >= earlier.estimate_ns {
                assert_eq!(
                    m.estimate_ns,
                    later.estimate_ns.max(1.0),
                    "a later slowdown is believed at once"
                );
            }
        }
    }
    let mut again = ab;
    again.merge(ab.measurement());
    assert_eq!(again, ab, "merging a view into itself moved it");
    again.merge(None);
    assert_eq!(again, ab);

    let record = a.merge(&b, ab.measurement());
    assert_eq!(record.latency, ab.measurement());
    assert_eq!(
        record.ejected_until_ns,
        a.ejected_until_ns.max(b.ejected_until_ns)
    );
    assert_eq!(record.ejections, a.ejections.max(b.ejections));
    assert_eq!(
        record.failure_streak,
        a.failure_streak.max(b.failure_streak)
    );
    assert_eq!(SharedStats::decode(&record.encode()), Ok(record));
});
