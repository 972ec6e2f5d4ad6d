//! W3C Trace Context `traceparent`: parsing and writing, per the W3C
//! Recommendation (Level 1) and its test suite.
//!
//! Why here and like this: the filter must decide per request, from a borrowed
//! header value, whether it continues the caller's trace or restarts it, and it
//! must do so exactly as the spec's versioning rules demand (a proxy that is
//! stricter or looser than the spec either breaks traces or lets garbage
//! through). Parsing is allocation-free over `&[u8]`; writing appends to a
//! caller-provided `String`.
//!
//! Rules implemented:
//! - surrounding optional whitespace (spaces, horizontal tabs) is ignored;
//! - `version-traceid-parentid-flags`, lowercase hex only (`HEXDIGLC`);
//! - trace-id and parent-id must not be all zeros;
//! - version `ff` is invalid;
//! - version `00` must be exactly 55 characters;
//! - a higher version is parsed with the `00` layout when the value is at least
//!   55 characters and, if longer, the 56th character is `-`; whatever follows
//!   is not interpreted, and such a header is re-written as version `00`;
//! - more than one `traceparent` header is invalid (see
//!   [`parse_traceparent_values`]).

use super::ids::{decode_lower_hex, write_hex_into, SpanId, TraceId};

/// Header name (lowercase, as the spec recommends for sending).
pub const TRACEPARENT: &str = "traceparent";
/// Header name (lowercase, as the spec recommends for sending).
pub const TRACESTATE: &str = "tracestate";

/// `trace-flags` bit: the caller may have recorded trace data.
pub const FLAG_SAMPLED: u8 = 0x01;
/// `trace-flags` bit (Level 2): the right-most 7 bytes of the trace id are
/// random. Preserved when continuing a trace, as Level 2 requires.
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags this implementation knows; every other bit is zeroed whenever the
/// filter writes a `traceparent` ("Vendors MUST set those to zero").
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// A trace context as carried by `traceparent`, independent of its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id; never all zeros.
    pub trace_id: TraceId,
    /// The caller's span id (`parent-id`); never all zeros.
    pub parent_id: SpanId,
    /// The `trace-flags` byte exactly as received.
    pub flags: u8,
}

impl TraceParent {
    /// `true` when the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// A successfully parsed `traceparent` and the version it was sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedTraceParent {
    /// The context (the version-00 fields).
    pub context: TraceParent,
    /// The version received; anything but 0 means the header must be
    /// downgraded (re-written as `00`) before it is forwarded.
    pub version: u8,
}

/// Optional whitespace (RFC 9110 `OWS`): space or horizontal tab.
#[inline]
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `bytes` without leading and trailing `OWS`.
pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_ows(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or(&[])
}

/// Parses one `traceparent` header value. `None` means invalid: the caller
/// restarts the trace.
pub fn parse_traceparent(value: &[u8]) -> Option<ParsedTraceParent> {
    let v = trim_ows(value);
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let mut version = [0u8; 1];
    if !decode_lower_hex(v.get(0..2)?, &mut version) || version[0] == 0xff {
        return None;
    }
    let version = version[0];
    if v.get(2) != Some(&b'-') || v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
        return None;
    }
    let trace_id = TraceId::from_hex(v.get(3..35)?)?;
    let parent_id = SpanId::from_hex(v.get(36..52)?)?;
    let mut flags = [0u8; 1];
    if !decode_lower_hex(v.get(53..55)?, &mut flags) {
        return None;
    }
    if version == 0 {
        if v.len() != TRACEPARENT_LEN {
            return None;
        }
    } else if v.len() > TRACEPARENT_LEN && v.get(TRACEPARENT_LEN) != Some(&b'-') {
        return None;
    }
    Some(ParsedTraceParent {
        context: TraceParent {
            trace_id,
            parent_id,
            flags: flags[0],
        },
        version,
    })
}

/// Parses the `traceparent` header given all of its values (in any header-name
/// case; the caller matched the name case-insensitively). Exactly one value is
/// required: duplicated `traceparent` headers are invalid (W3C test suite
/// `test_traceparent_duplicated`), so the trace restarts.
pub fn parse_traceparent_values(values: &[&[u8]]) -> Option<ParsedTraceParent> {
    match values {
        [one] => parse_traceparent(one),
        _ => None,
    }
}

/// Appends a version-00 `traceparent` value for `ctx` to `out`. The flags are
/// written as given; [`KNOWN_FLAGS`] masking is the caller's decision.
pub fn write_traceparent(ctx: &TraceParent, out: &mut String) {
    // `00-` trace-id `-` parent-id `-` flags, composed in place: one copy.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let (trace, rest) = value[3..].split_at_mut(TraceId::HEX_LEN);
    write_hex_into(&ctx.trace_id.0, trace);
    let (parent, rest) = rest[1..].split_at_mut(SpanId::HEX_LEN);
    write_hex_into(&ctx.parent_id.0, parent);
    write_hex_into(&[ctx.flags], &mut rest[1..]);
    // Hex digits and dashes are ASCII, so this never fails.
    if let Ok(value) = core::str::from_utf8(&value) {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TID: &str = "12345678901234567890123456789012";

    fn parse(s: &str) -> Option<ParsedTraceParent> {
        parse_traceparent(s.as_bytes())
    }

    fn trace_id_of(s: &str) -> Option<String> {
        parse(s).map(|p| p.context.trace_id.to_string())
    }

    #[test]
    fn spec_examples() {
        let p = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(p.version, 0);
        assert_eq!(
            p.context.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(p.context.parent_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(p.context.flags, 0x01);
        assert!(p.context.sampled());
        let p = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!p.context.sampled());
        // the header-format section's example
        assert!(parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some());
    }

    #[test]
    fn flags_are_a_bit_field() {
        let p = parse(&format!("00-{TID}-1234567890123456-03")).expect("valid");
        assert!(p.context.sampled());
        assert_eq!(p.context.flags & FLAG_RANDOM, FLAG_RANDOM);
        let p = parse(&format!("00-{TID}-1234567890123456-02")).expect("valid");
        assert!(!p.context.sampled());
    }

    #[test]
    fn uppercase_hex_rejected() {
        assert!(parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01").is_none());
        assert!(parse(&format!("00-{TID}-1234567890123456-0A")).is_none());
        assert!(parse(&format!("0A-{TID}-1234567890123456-01")).is_none());
    }

    #[test]
    fn all_zero_ids_rejected() {
        assert!(parse("00-00000000000000000000000000000000-1234567890123456-01").is_none());
        assert!(parse(&format!("00-{TID}-0000000000000000-01")).is_none());
    }

    #[test]
    fn version_ff_rejected() {
        assert!(parse(&format!("ff-{TID}-1234567890123456-01")).is_none());
    }

    #[test]
    fn version_00_must_be_exactly_55_chars() {
        assert!(parse(&format!("00-{TID}-1234567890123456-01.")).is_none());
        assert!(parse(&format!(
            "00-{TID}-1234567890123456-01-what-the-future-will-be-like"
        ))
        .is_none());
    }

    #[test]
    fn future_version_parsed_as_00() {
        let p = parse(&format!("cc-{TID}-1234567890123456-01")).expect("valid");
        assert_eq!(p.version, 0xcc);
        assert_eq!(p.context.trace_id.to_string(), TID);
        let p = parse(&format!(
            "cc-{TID}-1234567890123456-01-what-the-future-will-be-like"
        ))
        .expect("valid");
        assert_eq!(p.context.parent_id.to_string(), "1234567890123456");
        assert!(parse(&format!(
            "cc-{TID}-1234567890123456-01.what-the-future-will-be-like"
        ))
        .is_none());
        // shorter than 55 is never parsed, whatever the version
        assert!(parse(&format!("cc-{TID}-1234567890123456-1")).is_none());
        // the future part is not interpreted, even if it is not ASCII
        let mut v = format!("01-{TID}-1234567890123456-01-").into_bytes();
        v.extend_from_slice(&[0xff, 0x00, b'x']);
        assert!(parse_traceparent(&v).is_some());
    }

    #[test]
    fn test_suite_illegal_field_shapes() {
        for bad in [
            format!(".0-{TID}-1234567890123456-01"),
            format!("0.-{TID}-1234567890123456-01"),
            format!("000-{TID}-1234567890123456-01"),
            format!("0000-{TID}-1234567890123456-01"),
            format!("0-{TID}-1234567890123456-01"),
            "00-.2345678901234567890123456789012-1234567890123456-01".to_string(),
            "00-1234567890123456789012345678901.-1234567890123456-01".to_string(),
            "00-123456789012345678901234567890123-1234567890123456-01".to_string(),
            "00-1234567890123456789012345678901-1234567890123456-01".to_string(),
            format!("00-{TID}-.234567890123456-01"),
            format!("00-{TID}-123456789012345.-01"),
            format!("00-{TID}-12345678901234567-01"),
            format!("00-{TID}-123456789012345-01"),
            format!("00-{TID}-1234567890123456-.0"),
            format!("00-{TID}-1234567890123456-0."),
            format!("00-{TID}-1234567890123456-001"),
            format!("00-{TID}-1234567890123456-1"),
            String::new(),
            "00".to_string(),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?} must be invalid");
        }
    }

    #[test]
    fn ows_trimmed() {
        for v in [
            format!(" 00-{TID}-1234567890123456-01"),
            format!("\t00-{TID}-1234567890123456-01"),
            format!("00-{TID}-1234567890123456-01 "),
            format!("00-{TID}-1234567890123456-01\t"),
            format!("\t 00-{TID}-1234567890123456-01 \t"),
        ] {
            assert_eq!(trace_id_of(&v).as_deref(), Some(TID), "{v:?}");
        }
        // other whitespace is not OWS
        assert!(parse(&format!("\n00-{TID}-1234567890123456-01")).is_none());
        assert!(parse(&format!("00-{TID}-1234567890123456-01\r")).is_none());
    }

    #[test]
    fn duplicated_headers_invalid() {
        let a = format!("00-{TID}-1234567890123456-01");
        let b = "00-12345678901234567890123456789011-1234567890123456-01".to_string();
        assert!(parse_traceparent_values(&[a.as_bytes(), b.as_bytes()]).is_none());
        assert!(parse_traceparent_values(&[a.as_bytes(), a.as_bytes()]).is_none());
        assert!(parse_traceparent_values(&[]).is_none());
        assert!(parse_traceparent_values(&[a.as_bytes()]).is_some());
    }

    #[test]
    fn write_matches_spec_example() {
        let p = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        let mut s = String::new();
        write_traceparent(&p.context, &mut s);
        assert_eq!(s, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_traceparent(&bytes);
        }

        #[test]
        fn near_valid_strings_never_panic(s in "[ \t]{0,2}[0-9a-fA-F.-]{0,70}[ \t]{0,2}") {
            let _ = parse_traceparent(s.as_bytes());
        }

        #[test]
        fn write_then_parse_round_trips(t in any::<[u8; 16]>(), p in any::<[u8; 8]>(), flags in any::<u8>()) {
            let ctx = TraceParent { trace_id: TraceId(t), parent_id: SpanId(p), flags };
            prop_assume!(ctx.trace_id.is_valid() && ctx.parent_id.is_valid());
            let mut s = String::new();
            write_traceparent(&ctx, &mut s);
            prop_assert_eq!(s.len(), TRACEPARENT_LEN);
            let back = parse_traceparent(s.as_bytes());
            prop_assert_eq!(back, Some(ParsedTraceParent { context: ctx, version: 0 }));
        }

        #[test]
        fn future_versions_with_suffix_parse(
            t in any::<[u8; 16]>(), p in any::<[u8; 8]>(), flags in any::<u8>(),
            version in 1u8..0xff, suffix in "(-[ -~]{0,20})?",
        ) {
            let ctx = TraceParent { trace_id: TraceId(t), parent_id: SpanId(p), flags };
            prop_assume!(ctx.trace_id.is_valid() && ctx.parent_id.is_valid());
            let mut s = String::new();
            write_traceparent(&ctx, &mut s);
            let mut v = format!("{version:02x}");
            v.push_str(s.get(2..).unwrap_or(""));
            v.push_str(&suffix);
            prop_assert_eq!(parse_traceparent(v.as_bytes()), Some(ParsedTraceParent { context: ctx, version }));
        }
    }
}
