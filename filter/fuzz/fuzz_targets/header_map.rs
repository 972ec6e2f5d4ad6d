//! `HeaderMap::parse`, the reader of the buffer `proxy_get_header_map_pairs`
//! returns (ABI 0.2.1: u32 count, (u32 name len, u32 value len) per header,
//! then each name and value NUL-terminated).
//!
//! Properties: a map that parses yields exactly `len()` pairs (validation up
//! front is what lets iteration skip error paths); those pairs, serialised
//! again (by this target's own writer of the format), are byte for byte the
//! prefix of the input the parser read, with only the terminator bytes
//! normalised to NUL (so the parser reads the format, not something near
//! it), and parse back to themselves; `get` agrees with iteration; the
//! cookie reader never panics on any value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::header_map::{cookie, HeaderMap};

/// The format as Envoy's `exportPairs` writes it.
fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).expect("fits").to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let map = HeaderMap::parse(data);
    let pairs: Vec<(&[u8], &[u8])> = map.iter().collect();
    assert_eq!(pairs.len(), map.len(), "a parsed map yields every header");
    assert_eq!(map.is_empty(), pairs.is_empty());

    if pairs.is_empty() {
        // An empty map is either a valid count of 0 or malformed input.
        return;
    }
    let rendered = serialize(&pairs);
    assert!(rendered.len() <= data.len());
    let mut expected = data[..rendered.len()].to_vec();
    let mut at = 4 + 8 * pairs.len();
    for (name, value) in &pairs {
        at += name.len();
        expected[at] = 0;
        at += 1 + value.len();
        expected[at] = 0;
        at += 1;
    }
    assert_eq!(at, rendered.len());
    assert_eq!(
        rendered, expected,
        "the pairs are not what the buffer holds"
    );
    let reparsed: Vec<(&[u8], &[u8])> = HeaderMap::parse(&rendered).iter().collect();
    assert_eq!(reparsed, pairs);

    for (name, value) in &pairs {
        if let Ok(name) = std::str::from_utf8(name) {
            let first = pairs
                .iter()
                .find(|(n, _)| *n == name.as_bytes())
                .map(|p| p.1);
            assert_eq!(map.get(name), first);
        }
        if let Some(found) = cookie(value, "session") {
            // A cookie value is a sub-slice of the header, trimmed.
            assert!(found.len() <= value.len());
            assert!(found.first().is_none_or(|b| !b.is_ascii_whitespace()));
            assert!(found.last().is_none_or(|b| !b.is_ascii_whitespace()));
        }
    }
});
