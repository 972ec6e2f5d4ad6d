//! Zipkin B3 propagation: the single `b3` header and the multi `x-b3-*`
//! headers, and their mapping to and from the W3C context.
//!
//! Why: meshes and apps instrumented with Zipkin/Brave (and Envoy's own Zipkin
//! tracer) still speak B3; when `tracing.b3` is on the filter continues a B3
//! trace that arrived without `traceparent` and keeps B3 consistent with the
//! `traceparent` it forwards. Parsing is allocation-free over `&[u8]`.
//!
//! Formats (openzipkin/b3-propagation):
//! - single: `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`, or the
//!   sampling state alone (`0`, `1`, `d`); TraceId is 16 or 32 lower-hex,
//!   SpanId/ParentSpanId 16 lower-hex, SamplingState `1` accept, `0` deny,
//!   `d` debug, absent = defer;
//! - multi: `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
//!   `x-b3-sampled` (`1`/`0`; `true`/`false` accepted leniently, as the B3
//!   spec allows), `x-b3-flags` (`1` = debug, which implies accept).
//!
//! Mapping: a 64-bit trace id is left-padded with zeros to 128 bits; B3's
//! SpanId is the W3C `parent-id`; accept and debug map to the sampled flag.
//! When both forms are present, the single header wins (as in Brave).

use super::ids::{SpanId, TraceId};
use super::w3c::trim_ows;

/// Single-header name.
pub const B3: &str = "b3";
/// Multi-header names.
pub const X_B3_TRACEID: &str = "x-b3-traceid";
/// Multi-header names.
pub const X_B3_SPANID: &str = "x-b3-spanid";
/// Multi-header names.
pub const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
/// Multi-header names.
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
/// Multi-header names.
pub const X_B3_FLAGS: &str = "x-b3-flags";

/// A B3 sampling state (absence, "defer", is `None` where it appears).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// `0`: do not record.
    Deny,
    /// `1`: record.
    Accept,
    /// `d` / `x-b3-flags: 1`: record, debug.
    Debug,
}

impl Sampling {
    /// Whether this state means "sampled" in W3C terms.
    pub fn sampled(self) -> bool {
        !matches!(self, Sampling::Deny)
    }

    fn from_single(b: &[u8]) -> Option<Self> {
        match b {
            b"0" => Some(Sampling::Deny),
            b"1" => Some(Sampling::Accept),
            b"d" => Some(Sampling::Debug),
            _ => None,
        }
    }

    fn char(self) -> char {
        match self {
            Sampling::Deny => '0',
            Sampling::Accept => '1',
            Sampling::Debug => 'd',
        }
    }
}

/// A B3 trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B3Context {
    /// Trace id (a 64-bit one left-padded to 128 bits); never zero.
    pub trace_id: TraceId,
    /// The span id (the W3C `parent-id` for the next hop); never zero.
    pub span_id: SpanId,
    /// The parent of `span_id`, absent on a root span.
    pub parent_span_id: Option<SpanId>,
    /// Sampling state; `None` defers the decision to the receiver.
    pub sampling: Option<Sampling>,
}

/// What a set of B3 headers carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Value {
    /// A full trace context.
    Context(B3Context),
    /// Only a sampling decision (e.g. `b3: 0`), no ids.
    SamplingOnly(Sampling),
}

impl B3Value {
    /// The sampling decision it carries, if any.
    pub fn sampling(&self) -> Option<Sampling> {
        match self {
            B3Value::Context(c) => c.sampling,
            B3Value::SamplingOnly(s) => Some(*s),
        }
    }
}

/// Parses a single `b3` header value. `None` when invalid.
pub fn parse_single(value: &[u8]) -> Option<B3Value> {
    let v = trim_ows(value);
    if v.len() == 1 {
        return Sampling::from_single(v).map(B3Value::SamplingOnly);
    }
    let mut parts = v.split(|&b| b == b'-');
    let trace_id = TraceId::from_hex_64_or_128(parts.next()?)?;
    let span_id = SpanId::from_hex(parts.next()?)?;
    let sampling = match parts.next() {
        Some(s) => Some(Sampling::from_single(s)?),
        None => None,
    };
    let parent_span_id = match parts.next() {
        Some(p) => Some(SpanId::from_hex(p)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(B3Value::Context(B3Context {
        trace_id,
        span_id,
        parent_span_id,
        sampling,
    }))
}

/// Borrowed values of the multi headers (each `None` when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct B3MultiValues<'a> {
    /// `x-b3-traceid`
    pub trace_id: Option<&'a [u8]>,
    /// `x-b3-spanid`
    pub span_id: Option<&'a [u8]>,
    /// `x-b3-parentspanid`
    pub parent_span_id: Option<&'a [u8]>,
    /// `x-b3-sampled`
    pub sampled: Option<&'a [u8]>,
    /// `x-b3-flags`
    pub flags: Option<&'a [u8]>,
}

/// Parses the multi headers. `None` when there is nothing usable or the ids
/// are invalid (an invalid `x-b3-parentspanid` invalidates the context too).
/// An unknown `x-b3-sampled` value means "defer"; `x-b3-flags: 1` means debug
/// and wins over `x-b3-sampled`.
pub fn parse_multi(h: &B3MultiValues<'_>) -> Option<B3Value> {
    let debug = h.flags.map(trim_ows) == Some(b"1");
    let sampling = if debug {
        Some(Sampling::Debug)
    } else {
        match h.sampled.map(trim_ows) {
            Some(b"1") | Some(b"true") => Some(Sampling::Accept),
            Some(b"0") | Some(b"false") => Some(Sampling::Deny),
            _ => None,
        }
    };
    match (h.trace_id, h.span_id) {
        (None, None) => sampling.map(B3Value::SamplingOnly),
        (Some(t), Some(s)) => {
            let trace_id = TraceId::from_hex_64_or_128(trim_ows(t))?;
            let span_id = SpanId::from_hex(trim_ows(s))?;
            let parent_span_id = match h.parent_span_id {
                Some(p) => Some(SpanId::from_hex(trim_ows(p))?),
                None => None,
            };
            Some(B3Value::Context(B3Context {
                trace_id,
                span_id,
                parent_span_id,
                sampling,
            }))
        }
        _ => None,
    }
}

/// Appends the single-header value for `ctx` (128-bit trace id; the sampling
/// state is written when known, the parent only after it).
pub fn write_single(ctx: &B3Context, out: &mut String) {
    out.reserve(32 + 1 + 16 + 2 + 17);
    ctx.trace_id.write_hex(out);
    out.push('-');
    ctx.span_id.write_hex(out);
    if let Some(s) = ctx.sampling {
        out.push('-');
        out.push(s.char());
        if let Some(p) = ctx.parent_span_id {
            out.push('-');
            p.write_hex(out);
        }
    }
}

/// The multi-header values for `ctx`, in the form the propagation output
/// needs: `(header, Some(value))` to set, `(header, None)` to remove.
/// Debug is `x-b3-flags: 1` without `x-b3-sampled` ("debug implies accept, so
/// don't also send X-B3-Sampled").
pub fn multi_sampled_and_flags(ctx: &B3Context) -> [(&'static str, Option<&'static str>); 2] {
    match ctx.sampling {
        Some(Sampling::Debug) => [(X_B3_SAMPLED, None), (X_B3_FLAGS, Some("1"))],
        Some(Sampling::Accept) => [(X_B3_SAMPLED, Some("1")), (X_B3_FLAGS, None)],
        Some(Sampling::Deny) => [(X_B3_SAMPLED, Some("0")), (X_B3_FLAGS, None)],
        None => [(X_B3_SAMPLED, None), (X_B3_FLAGS, None)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T128: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const S: &str = "e457b5a2e4d86bd1";
    const P: &str = "05e3ac9a4f6e3b90";

    fn ctx(v: Option<B3Value>) -> B3Context {
        match v {
            Some(B3Value::Context(c)) => c,
            other => panic!("expected a context, got {other:?}"),
        }
    }

    #[test]
    fn single_full_and_partial() {
        let c = ctx(parse_single(format!("{T128}-{S}-1-{P}").as_bytes()));
        assert_eq!(c.trace_id.to_string(), T128);
        assert_eq!(c.span_id.to_string(), S);
        assert_eq!(c.parent_span_id.map(|p| p.to_string()), Some(P.to_string()));
        assert_eq!(c.sampling, Some(Sampling::Accept));
        let c = ctx(parse_single(format!("{T128}-{S}-d").as_bytes()));
        assert_eq!(c.sampling, Some(Sampling::Debug));
        assert_eq!(c.parent_span_id, None);
        let c = ctx(parse_single(format!("{T128}-{S}").as_bytes()));
        assert_eq!(c.sampling, None);
        // 64-bit trace id, left-padded
        let c = ctx(parse_single(b"a3ce929d0e0e4736-e457b5a2e4d86bd1-0"));
        assert_eq!(c.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(c.sampling, Some(Sampling::Deny));
    }

    #[test]
    fn single_sampling_only() {
        assert_eq!(
            parse_single(b"0"),
            Some(B3Value::SamplingOnly(Sampling::Deny))
        );
        assert_eq!(
            parse_single(b"d"),
            Some(B3Value::SamplingOnly(Sampling::Debug))
        );
        assert_eq!(
            parse_single(b"1"),
            Some(B3Value::SamplingOnly(Sampling::Accept))
        );
        assert_eq!(
            parse_single(b" 0 "),
            Some(B3Value::SamplingOnly(Sampling::Deny))
        );
        assert_eq!(parse_single(b"2"), None);
    }

    #[test]
    fn single_invalid() {
        for bad in [
            String::new(),
            "-".into(),
            T128.to_string(),
            format!("{T128}-"),
            format!("{T128}-{S}-"),
            format!("{T128}-{S}-x"),
            format!("{T128}-{S}-true"),
            format!("{T128}-{S}-1-"),
            format!("{T128}-{S}-1-{P}-x"),
            format!("{T128}-{S}-{P}"),
            format!("{}-{S}-1", T128.to_uppercase()),
            format!("{}-{S}", "0".repeat(32)),
            format!("{T128}-{}", "0".repeat(16)),
            format!("{T128}-{S}-1-{}", "0".repeat(16)),
            format!("{}-{S}", &T128[..20]),
        ] {
            assert_eq!(parse_single(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn multi_headers() {
        let h = B3MultiValues {
            trace_id: Some(T128.as_bytes()),
            span_id: Some(S.as_bytes()),
            parent_span_id: Some(P.as_bytes()),
            sampled: Some(b"1"),
            flags: None,
        };
        let c = ctx(parse_multi(&h));
        assert_eq!(c.sampling, Some(Sampling::Accept));
        assert_eq!(c.parent_span_id.map(|p| p.to_string()), Some(P.to_string()));
        let c = ctx(parse_multi(&B3MultiValues {
            sampled: Some(b"false"),
            ..h
        }));
        assert_eq!(c.sampling, Some(Sampling::Deny));
        let c = ctx(parse_multi(&B3MultiValues {
            flags: Some(b"1"),
            sampled: Some(b"0"),
            ..h
        }));
        assert_eq!(c.sampling, Some(Sampling::Debug));
        let c = ctx(parse_multi(&B3MultiValues { sampled: None, ..h }));
        assert_eq!(c.sampling, None);
        assert_eq!(parse_multi(&B3MultiValues { span_id: None, ..h }), None);
        assert_eq!(
            parse_multi(&B3MultiValues {
                parent_span_id: Some(b"zz"),
                ..h
            }),
            None
        );
        assert_eq!(
            parse_multi(&B3MultiValues {
                sampled: Some(b"0"),
                ..Default::default()
            }),
            Some(B3Value::SamplingOnly(Sampling::Deny))
        );
        assert_eq!(parse_multi(&B3MultiValues::default()), None);
    }

    #[test]
    fn debug_written_as_flags_without_sampled() {
        let c = ctx(parse_single(format!("{T128}-{S}-d").as_bytes()));
        assert_eq!(
            multi_sampled_and_flags(&c),
            [(X_B3_SAMPLED, None), (X_B3_FLAGS, Some("1"))]
        );
    }

    fn arb_ctx() -> impl Strategy<Value = B3Context> {
        (
            any::<[u8; 16]>(),
            any::<[u8; 8]>(),
            proptest::option::of(any::<[u8; 8]>()),
            proptest::option::of(prop_oneof![
                Just(Sampling::Deny),
                Just(Sampling::Accept),
                Just(Sampling::Debug)
            ]),
        )
            .prop_filter_map("zero ids", |(t, s, p, sampling)| {
                let (t, s, p) = (TraceId(t), SpanId(s), p.map(SpanId));
                (t.is_valid() && s.is_valid() && p.is_none_or(|p| p.is_valid())).then_some(
                    B3Context {
                        trace_id: t,
                        span_id: s,
                        parent_span_id: p,
                        sampling,
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(a in proptest::collection::vec(any::<u8>(), 0..90),
                                       b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_single(&a);
            let _ = parse_multi(&B3MultiValues { trace_id: Some(&a), span_id: Some(&b), parent_span_id: Some(&b), sampled: Some(&a), flags: Some(&b) });
        }

        #[test]
        fn single_round_trips(c in arb_ctx()) {
            let mut s = String::new();
            write_single(&c, &mut s);
            let mut expect = c;
            if c.sampling.is_none() {
                // the parent is only written after a sampling state
                expect.parent_span_id = None;
            }
            prop_assert_eq!(parse_single(s.as_bytes()), Some(B3Value::Context(expect)));
        }

        #[test]
        fn multi_round_trips(c in arb_ctx()) {
            let (mut t, mut s, mut p) = (String::new(), String::new(), String::new());
            c.trace_id.write_hex(&mut t);
            c.span_id.write_hex(&mut s);
            if let Some(pp) = c.parent_span_id { pp.write_hex(&mut p); }
            let [(_, sampled), (_, flags)] = multi_sampled_and_flags(&c);
            let h = B3MultiValues {
                trace_id: Some(t.as_bytes()),
                span_id: Some(s.as_bytes()),
                parent_span_id: c.parent_span_id.map(|_| p.as_bytes()),
                sampled: sampled.map(str::as_bytes),
                flags: flags.map(str::as_bytes),
            };
            prop_assert_eq!(parse_multi(&h), Some(B3Value::Context(c)));
        }
    }
}
