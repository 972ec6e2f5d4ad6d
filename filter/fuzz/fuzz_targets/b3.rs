//! Zipkin B3: the single `b3` header (`parse_single`) and the multi
//! `x-b3-*` headers (`parse_multi`), as `TraceInput` collects them.
//!
//! The whole input is a single-header value. Its first byte is also a mask
//! of which multi headers are present, and the rest, split on `\n`, gives
//! their values in order (trace id, span id, parent span id, sampled, flags).
//!
//! Properties:
//! - an accepted single value re-formats (`write_single`) to its canonical
//!   self: the input without optional whitespace, a 64-bit trace id
//!   left-padded to 128 bits; and parses back to the same context;
//! - a sampling-only value is one character;
//! - accepted multi headers, written back as the filter writes them
//!   (`write_hex`, `multi_sampled_and_flags`), parse to the same context;
//! - ids are never zero;
//! - `TraceInput` prefers a valid single header and otherwise agrees with
//!   `parse_multi`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::trace::b3::{
    multi_sampled_and_flags, parse_multi, parse_single, write_single, B3Context, B3MultiValues,
    B3Value, B3, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID,
};
use tideway_filter::trace::TraceInput;

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn check_ids(c: &B3Context) {
    assert!(c.trace_id.is_valid() && c.span_id.is_valid());
    assert!(c.parent_span_id.is_none_or(|p| p.is_valid()));
}

fn check_single(value: &[u8]) {
    match parse_single(value) {
        None => {}
        Some(B3Value::SamplingOnly(_)) => assert_eq!(trim_ows(value).len(), 1),
        Some(B3Value::Context(c)) => {
            check_ids(&c);
            let mut written = String::new();
            write_single(&c, &mut written);
            let canonical = trim_ows(value);
            let expected = if canonical.get(16) == Some(&b'-') {
                [b"0000000000000000".as_slice(), canonical].concat()
            } else {
                canonical.to_vec()
            };
            assert_eq!(
                written.as_bytes(),
                expected.as_slice(),
                "b3 {:?} is not canonical",
                String::from_utf8_lossy(value)
            );
            assert_eq!(parse_single(written.as_bytes()), Some(B3Value::Context(c)));
        }
    }
}

fn check_multi(h: &B3MultiValues<'_>) -> Option<B3Value> {
    let parsed = parse_multi(h);
    match parsed {
        None => {}
        Some(B3Value::SamplingOnly(_)) => assert!(h.trace_id.is_none() && h.span_id.is_none()),
        Some(B3Value::Context(c)) => {
            check_ids(&c);
            let (mut t, mut s, mut p) = (String::new(), String::new(), String::new());
            c.trace_id.write_hex(&mut t);
            c.span_id.write_hex(&mut s);
            if let Some(parent) = c.parent_span_id {
                parent.write_hex(&mut p);
            }
            let [(_, sampled), (_, flags)] = multi_sampled_and_flags(&c);
            let written = B3MultiValues {
                trace_id: Some(t.as_bytes()),
                span_id: Some(s.as_bytes()),
                parent_span_id: c.parent_span_id.map(|_| p.as_bytes()),
                sampled: sampled.map(str::as_bytes),
                flags: flags.map(str::as_bytes),
            };
            assert_eq!(parse_multi(&written), Some(B3Value::Context(c)));
        }
    }
    parsed
}

fuzz_target!(|data: &[u8]| {
    check_single(data);
    let Some((&mask, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let mut next = |bit: u8| {
        if mask & (1 << bit) != 0 {
            Some(lines.next().unwrap_or_default())
        } else {
            None
        }
    };
    let h = B3MultiValues {
        trace_id: next(0),
        span_id: next(1),
        parent_span_id: next(2),
        sampled: next(3),
        flags: next(4),
    };
    // Bit 5: a single `b3` header too, the next line.
    let single = next(5);
    for value in [
        h.trace_id,
        h.span_id,
        h.parent_span_id,
        h.sampled,
        h.flags,
        single,
    ]
    .into_iter()
    .flatten()
    {
        check_single(value);
    }
    let multi = check_multi(&h);

    let headers = [
        (X_B3_TRACEID, h.trace_id),
        (X_B3_SPANID, h.span_id),
        (X_B3_PARENTSPANID, h.parent_span_id),
        (X_B3_SAMPLED, h.sampled),
        (X_B3_FLAGS, h.flags),
        (B3, single),
    ];
    let input = TraceInput::from_headers(
        headers
            .iter()
            .filter_map(|(name, value)| value.map(|v| (name.as_bytes(), v))),
    );
    assert_eq!(input.has_b3(), headers.iter().any(|(_, v)| v.is_some()));
    let expected = single.and_then(parse_single).or(
        // The multi headers count only when an id or a sampling header is
        // there (a lone parent span id carries nothing).
        if h.trace_id.is_some() || h.span_id.is_some() || h.sampled.is_some() || h.flags.is_some() {
            multi
        } else {
            None
        },
    );
    assert_eq!(input.b3_value(), expected);
});
