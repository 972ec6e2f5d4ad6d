//! The borrowed request-header values trace propagation reads.
//!
//! Why: the proxy-wasm glue fetches the request headers once (one host call,
//! `get_http_request_headers_bytes`) and hands the core borrowed slices; the
//! core never calls the host, so it is tested natively. Header names are
//! matched ASCII case-insensitively (the W3C spec requires it for
//! `traceparent`/`tracestate`; B3 names are case-insensitive HTTP names too).
//! Single-valued headers keep only their first value and a count, so
//! duplicates are detected without a heap allocation; `tracestate` keeps every
//! value, in order, because its fields are combined.

use super::b3::{self, B3MultiValues, B3Value};
use super::w3c::{TRACEPARENT, TRACESTATE};

/// A header that must appear at most once: its first value and how many
/// values were seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OneValue<'a> {
    first: Option<&'a [u8]>,
    count: u32,
}

impl<'a> OneValue<'a> {
    /// A header seen once with `value`.
    pub fn new(value: &'a [u8]) -> Self {
        Self {
            first: Some(value),
            count: 1,
        }
    }

    /// Records one more value of the header.
    pub fn push(&mut self, value: &'a [u8]) {
        if self.first.is_none() {
            self.first = Some(value);
        }
        self.count = self.count.saturating_add(1);
    }

    /// The value if the header was seen exactly once; `None` when absent or
    /// duplicated.
    pub fn single(&self) -> Option<&'a [u8]> {
        if self.count == 1 {
            self.first
        } else {
            None
        }
    }

    /// How many values were seen.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the header was seen at all.
    pub fn is_present(&self) -> bool {
        self.count > 0
    }
}

/// Every trace-context request header value the core may read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceInput<'a> {
    /// `traceparent` (two or more values make it invalid).
    pub traceparent: OneValue<'a>,
    /// `tracestate`, every field value in order.
    pub tracestate: Vec<&'a [u8]>,
    /// `b3` single header.
    pub b3: OneValue<'a>,
    /// `x-b3-traceid`
    pub b3_trace_id: OneValue<'a>,
    /// `x-b3-spanid`
    pub b3_span_id: OneValue<'a>,
    /// `x-b3-parentspanid`
    pub b3_parent_span_id: OneValue<'a>,
    /// `x-b3-sampled`
    pub b3_sampled: OneValue<'a>,
    /// `x-b3-flags`
    pub b3_flags: OneValue<'a>,
}

impl<'a> TraceInput<'a> {
    /// Routes one request header to its field, matching `name` ASCII
    /// case-insensitively. Returns `false` for headers this module ignores.
    pub fn push_header(&mut self, name: &[u8], value: &'a [u8]) -> bool {
        // Every request's every header comes through here: most are none
        // of these, and their length alone says so.
        if !matches!(name.len(), 2 | 10 | 11 | 12 | 17) {
            return false;
        }
        let slot = if name.eq_ignore_ascii_case(TRACEPARENT.as_bytes()) {
            &mut self.traceparent
        } else if name.eq_ignore_ascii_case(TRACESTATE.as_bytes()) {
            self.tracestate.push(value);
            return true;
        } else if name.eq_ignore_ascii_case(b3::B3.as_bytes()) {
            &mut self.b3
        } else if name.eq_ignore_ascii_case(b3::X_B3_TRACEID.as_bytes()) {
            &mut self.b3_trace_id
        } else if name.eq_ignore_ascii_case(b3::X_B3_SPANID.as_bytes()) {
            &mut self.b3_span_id
        } else if name.eq_ignore_ascii_case(b3::X_B3_PARENTSPANID.as_bytes()) {
            &mut self.b3_parent_span_id
        } else if name.eq_ignore_ascii_case(b3::X_B3_SAMPLED.as_bytes()) {
            &mut self.b3_sampled
        } else if name.eq_ignore_ascii_case(b3::X_B3_FLAGS.as_bytes()) {
            &mut self.b3_flags
        } else {
            return false;
        };
        slot.push(value);
        true
    }

    /// Whether the request has header `name` (lowercase), for the headers
    /// this input collects; `None` for any other name.
    pub fn has(&self, name: &str) -> Option<bool> {
        let one = match name {
            TRACEPARENT => &self.traceparent,
            TRACESTATE => return Some(!self.tracestate.is_empty()),
            b3::B3 => &self.b3,
            b3::X_B3_TRACEID => &self.b3_trace_id,
            b3::X_B3_SPANID => &self.b3_span_id,
            b3::X_B3_PARENTSPANID => &self.b3_parent_span_id,
            b3::X_B3_SAMPLED => &self.b3_sampled,
            b3::X_B3_FLAGS => &self.b3_flags,
            _ => return None,
        };
        Some(one.is_present())
    }

    /// Collects the relevant headers from all request headers.
    pub fn from_headers<N, I>(headers: I) -> Self
    where
        N: AsRef<[u8]>,
        I: IntoIterator<Item = (N, &'a [u8])>,
    {
        let mut input = Self::default();
        for (name, value) in headers {
            input.push_header(name.as_ref(), value);
        }
        input
    }

    /// Whether any B3 header is present (single or multi).
    pub fn has_b3(&self) -> bool {
        self.b3.is_present()
            || self.b3_trace_id.is_present()
            || self.b3_span_id.is_present()
            || self.b3_parent_span_id.is_present()
            || self.b3_sampled.is_present()
            || self.b3_flags.is_present()
    }

    /// The multi-header values (a duplicated header counts as absent, which
    /// invalidates the context if it is an id).
    pub fn b3_multi(&self) -> B3MultiValues<'a> {
        B3MultiValues {
            trace_id: self.b3_trace_id.single(),
            span_id: self.b3_span_id.single(),
            parent_span_id: self.b3_parent_span_id.single(),
            sampled: self.b3_sampled.single(),
            flags: self.b3_flags.single(),
        }
    }

    /// The incoming B3 state: the single header if present and valid,
    /// otherwise the multi headers.
    pub fn b3_value(&self) -> Option<B3Value> {
        self.b3
            .single()
            .and_then(b3::parse_single)
            .or_else(|| parse_multi_if_present(self))
    }
}

fn parse_multi_if_present(input: &TraceInput<'_>) -> Option<B3Value> {
    if input.b3_trace_id.is_present()
        || input.b3_span_id.is_present()
        || input.b3_sampled.is_present()
        || input.b3_flags.is_present()
    {
        b3::parse_multi(&input.b3_multi())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_routed() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("TraceParent", b"tp"),
            ("TRACESTATE", b"a=1"),
            ("tracestate", b"b=2"),
            ("B3", b"0"),
            ("X-B3-TraceId", b"t"),
            ("X-B3-SpanId", b"s"),
            ("X-B3-ParentSpanId", b"p"),
            ("X-B3-Sampled", b"1"),
            ("X-B3-Flags", b"1"),
            ("trace-parent", b"ignored"),
            ("trace.state", b"ignored"),
            (":path", b"/"),
        ];
        let i = TraceInput::from_headers(headers);
        assert_eq!(i.traceparent.single(), Some(&b"tp"[..]));
        assert_eq!(i.tracestate, vec![&b"a=1"[..], b"b=2"]);
        assert_eq!(i.b3.single(), Some(&b"0"[..]));
        assert!(i.has_b3());
        assert_eq!(i.b3_multi().parent_span_id, Some(&b"p"[..]));
    }

    #[test]
    fn has_answers_for_every_header_propagation_writes_but_the_legacy_pair() {
        use crate::trace::propagate::{X_SPAN_ID, X_TRACE_ID};
        let all = [
            TRACEPARENT,
            TRACESTATE,
            b3::B3,
            b3::X_B3_TRACEID,
            b3::X_B3_SPANID,
            b3::X_B3_PARENTSPANID,
            b3::X_B3_SAMPLED,
            b3::X_B3_FLAGS,
        ];
        for name in all {
            let mut i = TraceInput::default();
            assert_eq!(i.has(name), Some(false), "{name}");
            i.push_header(name.to_ascii_uppercase().as_bytes(), b"v");
            assert_eq!(i.has(name), Some(true), "{name}");
            for other in all.iter().filter(|o| **o != name) {
                assert_eq!(i.has(other), Some(false), "{other} after {name}");
            }
        }
        let i = TraceInput::default();
        assert_eq!(i.has(X_TRACE_ID), None);
        assert_eq!(i.has(X_SPAN_ID), None);
    }

    #[test]
    fn duplicates_counted() {
        let mut v = OneValue::default();
        assert_eq!(v.single(), None);
        v.push(b"a");
        assert_eq!(v.single(), Some(&b"a"[..]));
        v.push(b"b");
        assert_eq!(v.single(), None);
        assert_eq!(v.count(), 2);
        assert!(v.is_present());
    }

    #[test]
    fn single_b3_wins_over_multi() {
        let mut i = TraceInput::default();
        i.push_header(b"b3", b"0");
        i.push_header(b"x-b3-sampled", b"1");
        assert_eq!(
            i.b3_value().and_then(|v| v.sampling()),
            Some(b3::Sampling::Deny)
        );
        // invalid single falls back to multi
        let mut i = TraceInput::default();
        i.push_header(b"b3", b"zz");
        i.push_header(b"x-b3-sampled", b"1");
        assert_eq!(
            i.b3_value().and_then(|v| v.sampling()),
            Some(b3::Sampling::Accept)
        );
    }
}
