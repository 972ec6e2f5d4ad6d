//! W3C `traceparent` parsing (`parse_traceparent`, `parse_traceparent_values`).
//!
//! The input is one header value; split on `\n` it is also a list of values
//! (duplicated headers). Properties of an accepted value:
//! - it re-formats to a 55-character version-00 string that parses back to
//!   the same context;
//! - a version-00 value re-formats to exactly its canonical self (the input
//!   without optional whitespace): nothing the parser accepted is lost or
//!   altered; a higher version keeps the 00 fields verbatim;
//! - ids are never all zero, version is never `ff`.
//!
//! A list of values is accepted only when it has exactly one value, and then
//! as that value alone.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::trace::w3c::{
    parse_traceparent, parse_traceparent_values, write_traceparent, ParsedTraceParent,
    TRACEPARENT_LEN,
};

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn check(value: &[u8]) -> Option<ParsedTraceParent> {
    let parsed = parse_traceparent(value)?;
    let ctx = parsed.context;
    assert!(ctx.trace_id.is_valid() && ctx.parent_id.is_valid());
    assert_ne!(parsed.version, 0xff);
    let mut written = String::new();
    write_traceparent(&ctx, &mut written);
    assert_eq!(written.len(), TRACEPARENT_LEN);
    assert_eq!(
        parse_traceparent(written.as_bytes()),
        Some(ParsedTraceParent {
            context: ctx,
            version: 0
        })
    );
    let canonical = trim_ows(value);
    if parsed.version == 0 {
        assert_eq!(written.as_bytes(), canonical, "version 00 is not canonical");
    } else {
        assert_eq!(
            &written.as_bytes()[2..],
            &canonical[2..TRACEPARENT_LEN],
            "a higher version's 00 fields changed"
        );
        assert_eq!(
            canonical[..2],
            format!("{:02x}", parsed.version).into_bytes()[..]
        );
    }
    Some(parsed)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let many = parse_traceparent_values(&values);
    match values.as_slice() {
        [one] => assert_eq!(many, parse_traceparent(one)),
        _ => assert_eq!(many, None, "duplicated traceparent accepted"),
    }
    for value in &values {
        check(value);
    }
});
