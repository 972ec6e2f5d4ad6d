//! W3C `tracestate`: list-member parsing, the merge that puts our member
//! first, and the encoding of our member's value.
//!
//! The input split on `\n` is the list of `tracestate` header values; its
//! first two lines (lossily UTF-8) are also the hop's source and target
//! cluster names, encoded into our member value.
//!
//! Properties:
//! - our member value is always a valid tracestate value, and decodes back
//!   to the two names (exactly when they fit the 251-character budget, as a
//!   prefix otherwise);
//! - the merged header is itself a valid `tracestate`: every member valid,
//!   ours first, keys unique, at most 32 members;
//! - the members after ours are exactly what the policy of
//!   `tracestate::append_incoming` says (modelled here independently: one
//!   invalid member or more than 32 discard the incoming list whole;
//!   otherwise ours and repeated keys are dropped and the rest cut to 31),
//!   and its statistics account for every incoming member.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::trace::member::{parse_member_value, write_member_value};
use tideway_filter::trace::tracestate::{
    check, is_valid_key, is_valid_value, members, write_tracestate, MAX_MEMBERS, MAX_VALUE_LEN,
};

const OWN_KEY: &str = "tideway";

fn encoded_len(name: &str) -> usize {
    name.bytes()
        .map(|b| {
            if (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b',' | b'=' | b';') {
                1
            } else {
                3
            }
        })
        .sum()
}

/// `decoded` is `name` or, truncated, a prefix of it (possibly ending in a
/// replacement character where a multi-byte character was cut).
fn is_decoded_prefix(decoded: &str, name: &str) -> bool {
    name.starts_with(decoded)
        || decoded
            .strip_suffix('\u{fffd}')
            .is_some_and(|d| name.starts_with(d))
}

fn check_member_value(source: &str, target: &str) -> String {
    let mut value = String::new();
    write_member_value(&mut value, source, target);
    assert!(
        is_valid_value(value.as_bytes()),
        "invalid own value {value:?}"
    );
    assert!(value.len() <= MAX_VALUE_LEN);
    let (s, t) = parse_member_value(&value).expect("our own value decodes");
    if encoded_len(source) + encoded_len(target) <= MAX_VALUE_LEN - "s:;t:".len() {
        assert_eq!((s.as_str(), t.as_str()), (source, target));
    } else {
        assert!(is_decoded_prefix(&s, source), "{s:?} / {source:?}");
        assert!(is_decoded_prefix(&t, target), "{t:?} / {target:?}");
    }
    value
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let source = String::from_utf8_lossy(values.first().copied().unwrap_or_default());
    let target = String::from_utf8_lossy(values.get(1).copied().unwrap_or_default());
    let own_value = check_member_value(&source, &target);

    // The model: a list with an invalid member, or more than 32, is
    // discarded whole; otherwise valid members in order, ours and repeated
    // keys dropped, then cut so that the whole list, ours included, has 32
    // members.
    let mut total = 0usize;
    let mut invalid = 0usize;
    let mut skipped = 0usize;
    let mut model: Vec<(&str, &str)> = Vec::new();
    let mut truncated = 0usize;
    for member in members(&values) {
        total += 1;
        let Ok(m) = member else {
            invalid += 1;
            continue;
        };
        assert!(is_valid_key(m.key.as_bytes()) && is_valid_value(m.value.as_bytes()));
        if m.key == OWN_KEY || model.iter().any(|(k, _)| *k == m.key) {
            skipped += 1;
        } else if model.len() < MAX_MEMBERS - 1 {
            model.push((m.key, m.value));
        } else {
            truncated += 1;
        }
    }
    let discarded = invalid > 0 || total - invalid > MAX_MEMBERS;
    let check = check(&values);
    assert_eq!((check.valid, check.invalid), (total - invalid, invalid));
    assert_eq!(check.is_forwardable(), !discarded);
    if discarded {
        model.clear();
        (skipped, truncated) = (0, 0);
    }

    let mut out = String::new();
    let stats = write_tracestate(&mut out, OWN_KEY, &own_value, &values);
    let written = [out.as_bytes()];
    let merged: Vec<(&str, &str)> = members(&written)
        .map(|m| {
            let m = m.unwrap_or_else(|()| panic!("the merged tracestate is invalid: {out:?}"));
            (m.key, m.value)
        })
        .collect();
    assert!(merged.len() <= MAX_MEMBERS, "{} members", merged.len());
    assert_eq!(merged.first(), Some(&(OWN_KEY, own_value.as_str())));
    assert_eq!(&merged[1..], model.as_slice());
    assert!(!out.contains(",,") && !out.ends_with(','));
    assert_eq!(stats.kept, model.len());
    assert_eq!(stats.invalid, invalid);
    assert_eq!(stats.discarded, discarded);
    assert_eq!(stats.replaced_or_duplicate, skipped);
    assert_eq!(stats.truncated, truncated);
    if !discarded {
        assert_eq!(
            stats.kept + stats.replaced_or_duplicate + stats.truncated,
            total
        );
    }
});
