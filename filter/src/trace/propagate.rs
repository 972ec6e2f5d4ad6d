//! The per-request decision: from the incoming trace headers, the hop and the
//! configuration, compute the trace context to forward and the header writes
//! that carry it.
//!
//! Why one pure function: the proxy-wasm glue reads the headers once, calls
//! [`propagate`], applies the returned operations (replace/remove) and keeps
//! the returned [`SpanContext`] for span mode; everything between is
//! host-independent and tested natively. The output keeps all header values in
//! one `String` (a single allocation) and the operations in a fixed array.
//!
//! Rules:
//! - the incoming context is, in order: a valid `traceparent` (exactly one
//!   header); else, when `b3` is enabled, a valid B3 context; else a new trace
//!   (random non-zero ids, sampled per `sampleRatio`, or per a B3
//!   sampling-only header when `b3` is enabled);
//! - `propagate` mode: a valid version-00 `traceparent` is not rewritten (the
//!   application or Envoy's tracer owns the spans); a higher version is
//!   downgraded to `00` (the spec's "first mutation"); otherwise
//!   `traceparent` is written. The filter does not change the caller's
//!   parent-id, so it has no `tracestate` member of its own to write (W3C:
//!   a vendor adds or updates its member when it changes the parent-id):
//!   `tracestate` is forwarded untouched — no host call at all — unless it
//!   is invalid, when it is removed; a new or B3-sourced trace removes the
//!   incoming one (it belonged to a context that is not continued);
//! - `span` mode: the filter is a span: a new parent-id goes downstream with
//!   the same trace id and flags, and the incoming parent-id becomes the
//!   span's parent; `tracestate` gets our member (source and target cluster)
//!   first, the rest kept; in a new or B3-sourced trace ours is the only
//!   member;
//! - an invalid incoming `tracestate` (one member breaking the grammar, or
//!   more than 32 members) is discarded whole, in both modes (what the W3C
//!   test suite's strict level expects);
//! - flags written are masked to the known bits (sampled, random);
//! - B3 (when enabled) is rewritten to match the forwarded context unless the
//!   incoming B3 already says exactly that; legacy `x-trace-id`/`x-span-id`
//!   (when enabled) always carry the forwarded trace id and parent-id.

use super::b3::{self, B3Context, B3Value, Sampling};
use super::config::{TraceMode, TracingConfig};
use super::ids::{SpanId, TraceId, TraceRng};
use super::input::TraceInput;
use super::member::write_member_value;
use super::tracestate::{append_incoming, check, MergeStats};
use super::w3c::{self, TraceParent, FLAG_SAMPLED, KNOWN_FLAGS, TRACEPARENT, TRACESTATE};

/// Legacy trace id header (32 lowercase hex).
pub const X_TRACE_ID: &str = "x-trace-id";
/// Legacy span id header (16 lowercase hex, the forwarded parent-id).
pub const X_SPAN_ID: &str = "x-span-id";

/// The hop being routed: the filter's own cluster and the chosen target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopInfo<'a> {
    /// The cluster (or locality) the request comes from.
    pub source_cluster: &'a str,
    /// The cluster the filter routes the request to.
    pub target_cluster: &'a str,
    /// Our `tracestate` member value for this hop, when the caller keeps
    /// it encoded ([`HopText`](super::hop_text::HopText)); `None`: it is
    /// encoded here from the two names.
    pub member_value: Option<&'a str>,
}

/// Where the forwarded trace context came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextSource {
    /// A valid incoming `traceparent`.
    TraceParent,
    /// A valid incoming B3 context (no valid `traceparent`; `b3` enabled).
    B3,
    /// A new trace started here.
    New,
}

/// The trace context forwarded downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// Trace id.
    pub trace_id: TraceId,
    /// The id sent downstream as `parent-id`: our span id in span mode, the
    /// caller's parent-id passed through in propagate mode, or a new id for a
    /// new trace.
    pub span_id: SpanId,
    /// The incoming parent-id (caller's span); `None` for a new trace. In span
    /// mode it is the parent of our span.
    pub parent_span_id: Option<SpanId>,
    /// `trace-flags` forwarded (known bits only).
    pub flags: u8,
    /// Whether the trace is sampled.
    pub sampled: bool,
    /// Whether a new trace was started (no usable incoming context).
    pub restarted: bool,
    /// Where the context came from.
    pub source: ContextSource,
    /// Whether a `traceparent` was present but rejected (invalid or
    /// duplicated), for metrics.
    pub traceparent_rejected: bool,
    /// Whether the glue should record and export a span (span mode and
    /// sampled).
    pub record: bool,
}

/// One header operation to apply to the upstream request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderOp<'a> {
    /// Replace every value of `name` with `value` (proxy-wasm
    /// `replace_http_request_header`).
    Set {
        /// Lowercase header name.
        name: &'static str,
        /// Header value.
        value: &'a str,
    },
    /// Remove `name` (proxy-wasm `remove_http_request_header`).
    Remove {
        /// Lowercase header name.
        name: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RawOp {
    Set(&'static str, usize, usize),
    Remove(&'static str),
}

/// Maximum operations one call can produce: traceparent, tracestate, b3, five
/// x-b3-* and two legacy headers.
const MAX_OPS: usize = 10;

/// The result of [`propagate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceOutput {
    /// The forwarded context.
    pub context: SpanContext,
    /// What happened to the incoming `tracestate` members: forwarded
    /// (`kept`), or the list discarded.
    pub tracestate: MergeStats,
    buf: String,
    ops: [Option<RawOp>; MAX_OPS],
    len: usize,
}

impl TraceOutput {
    /// An output writing its values into `buf` (cleared), so a caller can
    /// reuse one buffer across requests.
    fn new(context: SpanContext, mut buf: String) -> Self {
        buf.clear();
        Self {
            context,
            tracestate: MergeStats::default(),
            // Allocated by the first write if `buf` is new: propagate mode
            // forwarding a valid `traceparent` (the common case) writes
            // nothing.
            buf,
            ops: [None; MAX_OPS],
            len: 0,
        }
    }

    /// The values' buffer, for the next [`propagate_with`].
    pub fn into_buffer(self) -> String {
        self.buf
    }

    fn push(&mut self, op: RawOp) {
        if let Some(slot) = self.ops.get_mut(self.len) {
            *slot = Some(op);
            self.len += 1;
        }
    }

    fn set_with<R>(&mut self, name: &'static str, write: impl FnOnce(&mut String) -> R) -> R {
        if self.buf.capacity() == 0 {
            self.buf.reserve(160);
        }
        let start = self.buf.len();
        let r = write(&mut self.buf);
        let end = self.buf.len();
        self.push(RawOp::Set(name, start, end));
        r
    }

    fn set_static(&mut self, name: &'static str, value: &str) {
        self.set_with(name, |s| s.push_str(value));
    }

    fn remove(&mut self, name: &'static str) {
        self.push(RawOp::Remove(name));
    }

    /// The header operations, in order.
    pub fn ops(&self) -> impl Iterator<Item = HeaderOp<'_>> + '_ {
        self.ops
            .iter()
            .take(self.len)
            .flatten()
            .map(move |op| match *op {
                RawOp::Set(name, start, end) => HeaderOp::Set {
                    name,
                    value: self.buf.get(start..end).unwrap_or(""),
                },
                RawOp::Remove(name) => HeaderOp::Remove { name },
            })
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when no header needs to change (the cheap pass-through case).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value set for `name`, if any.
    pub fn value_of(&self, name: &str) -> Option<&str> {
        self.ops().find_map(|op| match op {
            HeaderOp::Set { name: n, value } if n == name => Some(value),
            _ => None,
        })
    }

    /// Whether `name` is removed.
    pub fn removes(&self, name: &str) -> bool {
        self.ops()
            .any(|op| matches!(op, HeaderOp::Remove { name: n } if n == name))
    }
}

/// `true` with probability `ratio`, drawing 8 bytes from `rng` unless the
/// ratio is 0 or 1 (or NaN, which never samples).
pub fn sample(ratio: f64, rng: &mut dyn TraceRng) -> bool {
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    let x = u64::from_le_bytes(b) >> 11; // 53 random bits
    (x as f64) * (1.0 / (1u64 << 53) as f64) < ratio
}

/// Computes the trace context to forward and the header operations.
pub fn propagate(
    cfg: &TracingConfig,
    input: &TraceInput<'_>,
    hop: &HopInfo<'_>,
    rng: &mut dyn TraceRng,
) -> TraceOutput {
    propagate_with(cfg, input, hop, rng, String::new())
}

/// [`propagate`], writing the header values into `buf` (its contents are
/// dropped; take it back with [`TraceOutput::into_buffer`]): span mode
/// writes on every request, and a kept buffer saves an allocation each.
pub fn propagate_with(
    cfg: &TracingConfig,
    input: &TraceInput<'_>,
    hop: &HopInfo<'_>,
    rng: &mut dyn TraceRng,
    buf: String,
) -> TraceOutput {
    let inbound = Inbound::read(cfg, input);
    let trace = Trace::continued_or_new(cfg, &inbound, rng);
    let span_id = our_span_id(cfg.mode, trace.parent, rng);
    let sampled = trace.flags & FLAG_SAMPLED != 0;
    let mut out = TraceOutput::new(
        SpanContext {
            trace_id: trace.id,
            span_id,
            parent_span_id: trace.parent,
            flags: trace.flags,
            sampled,
            restarted: trace.source == ContextSource::New,
            source: trace.source,
            traceparent_rejected: input.traceparent.is_present() && inbound.w3c.is_none(),
            record: cfg.mode == TraceMode::Span && sampled,
        },
        buf,
    );
    write_traceparent(&mut out, cfg, &inbound, &trace, span_id);
    write_tracestate(&mut out, cfg, input, hop, trace.source);
    if cfg.b3 {
        write_b3_context(&mut out, cfg, input, &inbound, &trace, span_id);
    }
    if cfg.legacy_headers {
        out.set_with(X_TRACE_ID, |s| trace.id.write_hex(s));
        out.set_with(X_SPAN_ID, |s| span_id.write_hex(s));
    }
    out
}

/// The trace context a request arrived with: a valid `traceparent`, and
/// the B3 value when B3 is on.
struct Inbound {
    w3c: Option<w3c::ParsedTraceParent>,
    b3: Option<B3Value>,
    /// The B3 value's ids, when it has them.
    b3_context: Option<B3Context>,
}

impl Inbound {
    fn read(cfg: &TracingConfig, input: &TraceInput<'_>) -> Self {
        let b3 = if cfg.b3 { input.b3_value() } else { None };
        Self {
            w3c: input.traceparent.single().and_then(w3c::parse_traceparent),
            b3,
            b3_context: match b3 {
                Some(B3Value::Context(c)) => Some(c),
                _ => None,
            },
        }
    }
}

/// The trace the request belongs to: the one it came with (`traceparent`
/// first, then B3), or a new one.
struct Trace {
    id: TraceId,
    /// The caller's span.
    parent: Option<SpanId>,
    flags: u8,
    source: ContextSource,
}

impl Trace {
    fn continued_or_new(cfg: &TracingConfig, inbound: &Inbound, rng: &mut dyn TraceRng) -> Self {
        let flags = |sampled: bool| if sampled { FLAG_SAMPLED } else { 0 };
        if let Some(p) = inbound.w3c {
            return Self {
                id: p.context.trace_id,
                parent: Some(p.context.parent_id),
                flags: p.context.flags & KNOWN_FLAGS,
                source: ContextSource::TraceParent,
            };
        }
        if let Some(c) = inbound.b3_context {
            let sampled = match c.sampling {
                Some(s) => s.sampled(),
                None => sample(cfg.sample_ratio, rng),
            };
            return Self {
                id: c.trace_id,
                parent: Some(c.span_id),
                flags: flags(sampled),
                source: ContextSource::B3,
            };
        }
        let id = TraceId::random(rng);
        let sampled = match inbound.b3.and_then(|v| v.sampling()) {
            Some(s) => s.sampled(),
            None => sample(cfg.sample_ratio, rng),
        };
        Self {
            id,
            parent: None,
            flags: flags(sampled),
            source: ContextSource::New,
        }
    }
}

/// The span id the request leaves with: the caller's in propagate mode,
/// a new one (never the caller's) for our own span.
fn our_span_id(mode: TraceMode, parent: Option<SpanId>, rng: &mut dyn TraceRng) -> SpanId {
    match (mode, parent) {
        (TraceMode::Propagate, Some(p)) => p,
        (TraceMode::Span, Some(p)) => {
            let s = SpanId::random(rng);
            if s == p {
                SpanId::random(rng)
            } else {
                s
            }
        }
        (_, None) => SpanId::random(rng),
    }
}

/// `traceparent`, unless propagate mode forwards a version-00 one as it
/// came.
fn write_traceparent(
    out: &mut TraceOutput,
    cfg: &TracingConfig,
    inbound: &Inbound,
    trace: &Trace,
    span_id: SpanId,
) {
    let passthrough =
        cfg.mode == TraceMode::Propagate && matches!(inbound.w3c, Some(p) if p.version == 0);
    if passthrough {
        return;
    }
    let tp = TraceParent {
        trace_id: trace.id,
        parent_id: span_id,
        flags: trace.flags,
    };
    out.set_with(TRACEPARENT, |s| w3c::write_traceparent(&tp, s));
}

/// `tracestate`: in span mode our member first (we changed the parent-id),
/// then the incoming members of a continued trace; in propagate mode no
/// member of ours, the incoming ones forwarded as they came or dropped.
fn write_tracestate(
    out: &mut TraceOutput,
    cfg: &TracingConfig,
    input: &TraceInput<'_>,
    hop: &HopInfo<'_>,
    source: ContextSource,
) {
    let continued = source == ContextSource::TraceParent;
    match cfg.mode {
        TraceMode::Span => {
            let incoming: &[&[u8]] = if continued { &input.tracestate } else { &[] };
            let key = cfg.tracestate_key.as_str();
            out.tracestate = out.set_with(TRACESTATE, |s| {
                s.push_str(key);
                s.push('=');
                match hop.member_value {
                    Some(v) => s.push_str(v),
                    None => write_member_value(s, hop.source_cluster, hop.target_cluster),
                }
                append_incoming(s, key, incoming)
            });
        }
        TraceMode::Propagate if !input.tracestate.is_empty() => {
            let checked = check(&input.tracestate);
            if !continued || !checked.is_forwardable() {
                out.tracestate = MergeStats {
                    invalid: checked.invalid,
                    discarded: true,
                    ..MergeStats::default()
                };
                out.remove(TRACESTATE);
            } else {
                out.tracestate.kept = checked.valid;
            }
        }
        TraceMode::Propagate => {}
    }
}

/// The B3 headers, unless they already say what we would write.
fn write_b3_context(
    out: &mut TraceOutput,
    cfg: &TracingConfig,
    input: &TraceInput<'_>,
    inbound: &Inbound,
    trace: &Trace,
    span_id: SpanId,
) {
    let same_trace_in = inbound.b3_context.filter(|c| c.trace_id == trace.id);
    let parent_span_id = match cfg.mode {
        TraceMode::Span => trace.parent,
        TraceMode::Propagate => same_trace_in
            .filter(|c| c.span_id == span_id)
            .and_then(|c| c.parent_span_id),
    };
    let debug_in = inbound.b3.and_then(|v| v.sampling()) == Some(Sampling::Debug)
        && (inbound.b3_context.is_none() || same_trace_in.is_some());
    let sampled = trace.flags & FLAG_SAMPLED != 0;
    let sampling = match (sampled, debug_in) {
        (true, true) => Sampling::Debug,
        (true, false) => Sampling::Accept,
        (false, _) => Sampling::Deny,
    };
    let b3_out = B3Context {
        trace_id: trace.id,
        span_id,
        parent_span_id,
        sampling: Some(sampling),
    };
    if inbound.b3 != Some(B3Value::Context(b3_out)) {
        write_b3(out, &b3_out, input);
    }
}

fn write_b3(out: &mut TraceOutput, ctx: &B3Context, input: &TraceInput<'_>) {
    out.set_with(b3::B3, |s| b3::write_single(ctx, s));
    out.set_with(b3::X_B3_TRACEID, |s| ctx.trace_id.write_hex(s));
    out.set_with(b3::X_B3_SPANID, |s| ctx.span_id.write_hex(s));
    match ctx.parent_span_id {
        Some(p) => {
            out.set_with(b3::X_B3_PARENTSPANID, |s| p.write_hex(s));
        }
        None if input.b3_parent_span_id.is_present() => out.remove(b3::X_B3_PARENTSPANID),
        None => {}
    }
    for (name, value) in b3::multi_sampled_and_flags(ctx) {
        let present = if name == b3::X_B3_SAMPLED {
            input.b3_sampled.is_present()
        } else {
            input.b3_flags.is_present()
        };
        match value {
            Some(v) => out.set_static(name, v),
            None if present => out.remove(name),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::config::CollectorConfig;
    use crate::trace::ids::TestRng;
    use crate::trace::member::parse_member_value;
    use crate::trace::tracestate::{members, MAX_MEMBERS};
    use proptest::prelude::*;

    const TID: &str = "12345678901234567890123456789012";
    const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";
    const HOP: HopInfo<'static> = HopInfo {
        source_cluster: "eu-west",
        target_cluster: "us-east",
        member_value: None,
    };

    fn cfg() -> TracingConfig {
        TracingConfig::default()
    }

    fn span_cfg() -> TracingConfig {
        TracingConfig {
            mode: TraceMode::Span,
            collector: Some(CollectorConfig {
                cluster: "otel".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(cfg: &TracingConfig, headers: &[(&str, &str)]) -> TraceOutput {
        let input =
            TraceInput::from_headers(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        propagate(cfg, &input, &HOP, &mut TestRng(42))
    }

    /// The traceparent seen downstream: the written one, else the incoming one.
    fn downstream_tp(
        out: &TraceOutput,
        headers: &[(&str, &str)],
    ) -> Option<w3c::ParsedTraceParent> {
        match out.value_of(TRACEPARENT) {
            Some(v) => w3c::parse_traceparent(v.as_bytes()),
            None => {
                let vals: Vec<&[u8]> = headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(TRACEPARENT))
                    .map(|(_, v)| v.as_bytes())
                    .collect();
                w3c::parse_traceparent_values(&vals)
            }
        }
    }

    fn ts_keys(out: &TraceOutput) -> Vec<String> {
        let v = out.value_of(TRACESTATE).unwrap_or("");
        let vals = [v.as_bytes()];
        members(&vals)
            .filter_map(Result::ok)
            .map(|m| m.key.to_string())
            .collect()
    }

    #[test]
    fn propagate_mode_valid_traceparent_passes_unchanged() {
        let h = [("traceparent", TP), ("tracestate", "foo=1,bar=2")];
        let out = run(&cfg(), &h);
        assert_eq!(
            out.value_of(TRACEPARENT),
            None,
            "traceparent is not rewritten"
        );
        assert!(
            out.is_empty(),
            "nothing is written, tracestate included: {:?}",
            out.ops().collect::<Vec<_>>()
        );
        assert_eq!(out.tracestate.kept, 2);
        let c = out.context;
        assert_eq!(c.trace_id.to_string(), TID);
        assert_eq!(c.span_id.to_string(), "1234567890123456");
        assert_eq!(
            c.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("1234567890123456")
        );
        assert!(c.sampled && !c.restarted && !c.record && !c.traceparent_rejected);
        assert_eq!(c.source, ContextSource::TraceParent);
        // header name case does not matter
        let out = run(&cfg(), &[("TrAcEpArEnT", TP)]);
        assert_eq!(out.value_of(TRACEPARENT), None);
        assert!(!out.context.restarted);
        // OWS around a valid value: still valid, still untouched
        let padded = format!("\t {TP} \t");
        let out = run(&cfg(), &[("traceparent", &padded)]);
        assert_eq!(out.value_of(TRACEPARENT), None);
        assert!(!out.context.restarted);
    }

    #[test]
    fn propagate_mode_future_version_downgraded() {
        let v =
            "cc-12345678901234567890123456789012-1234567890123456-07-what-the-future-will-be-like";
        let out = run(&cfg(), &[("traceparent", v), ("tracestate", "foo=1")]);
        // unknown flag bits zeroed, same ids, version 00
        assert_eq!(
            out.value_of(TRACEPARENT),
            Some("00-12345678901234567890123456789012-1234567890123456-03")
        );
        assert_eq!(
            out.value_of(TRACESTATE),
            None,
            "parent-id unchanged: no member"
        );
        assert!(!out.removes(TRACESTATE));
        assert!(!out.context.restarted);
    }

    #[test]
    fn propagate_mode_forwards_a_valid_tracestate_as_it_came() {
        for ts in [
            "foo=1,tideway=old,bar=2",
            "foo=1,foo=2",
            "foo=1 , ,bar=2",
            "",
        ] {
            let out = run(&cfg(), &[("traceparent", TP), ("tracestate", ts)]);
            assert!(
                out.is_empty(),
                "{ts:?}: {:?}",
                out.ops().collect::<Vec<_>>()
            );
            assert!(!out.tracestate.discarded);
        }
        let parts: Vec<String> = (1..=32).map(|i| format!("k{i}=v")).collect();
        let (a, b) = (parts[..16].join(","), parts[16..].join(","));
        let out = run(
            &cfg(),
            &[("traceparent", TP), ("tracestate", &a), ("tracestate", &b)],
        );
        assert!(out.is_empty(), "32 members across two fields pass");
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_whole_in_both_modes() {
        let thirty_three: String = (1..=33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for ts in [
            "foo=1,BAD=2",
            "foo=bar=baz",
            "foo=,bar=3",
            "@foo=1,bar=2",
            thirty_three.as_str(),
        ] {
            let h = [("traceparent", TP), ("tracestate", ts)];
            let out = run(&cfg(), &h);
            assert!(out.removes(TRACESTATE), "propagate: {ts}");
            assert_eq!(out.len(), 1, "{ts}");
            assert!(out.tracestate.discarded);
            let out = run(&span_cfg(), &h);
            assert_eq!(ts_keys(&out), ["tideway"], "span: only ours for {ts}");
            assert!(out.tracestate.discarded);
        }
        // Split across fields, the bad member still discards all of it.
        let h = [
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", "Bar=2"),
        ];
        assert!(run(&cfg(), &h).removes(TRACESTATE));
    }

    #[test]
    fn missing_or_invalid_traceparent_restarts() {
        let invalid = [
            "ff-12345678901234567890123456789012-1234567890123456-01",
            "00-00000000000000000000000000000000-1234567890123456-01",
            "00-12345678901234567890123456789012-0000000000000000-01",
            "00-12345678901234567890123456789012-1234567890123456-01.",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            "00-1234567890123456789012345678901A-1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
        ];
        for tp in invalid {
            let h = [("traceparent", tp), ("tracestate", "foo=1,tideway=old")];
            let out = run(&cfg(), &h);
            let c = out.context;
            assert!(c.restarted && c.traceparent_rejected, "{tp}");
            assert_ne!(c.trace_id.to_string(), TID);
            assert!(c.trace_id.is_valid() && c.span_id.is_valid());
            assert_eq!(c.parent_span_id, None);
            let written = downstream_tp(&out, &h).expect("valid traceparent written");
            assert_eq!(written.version, 0);
            assert_eq!(written.context.trace_id, c.trace_id);
            assert_eq!(written.context.parent_id, c.span_id);
            assert!(
                out.removes(TRACESTATE),
                "incoming tracestate discarded for {tp}"
            );
        }
        let out = run(&cfg(), &[("tracestate", "foo=1,bar=2")]);
        assert!(out.context.restarted && !out.context.traceparent_rejected);
        assert!(out.removes(TRACESTATE));
        assert_eq!(out.value_of(TRACESTATE), None);
        // No tracestate came: none is removed or written.
        let out = run(&cfg(), &[]);
        assert!(!out.removes(TRACESTATE) && out.value_of(TRACESTATE).is_none());
    }

    #[test]
    fn duplicated_traceparent_restarts() {
        let h = [
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            (
                "traceparent",
                "00-12345678901234567890123456789012-1234567890123456-01",
            ),
        ];
        let out = run(&cfg(), &h);
        let c = out.context;
        assert!(c.restarted && c.traceparent_rejected);
        let tp = out.value_of(TRACEPARENT).expect("written");
        assert!(!tp.contains("1234567890123456789012345678901"));
    }

    #[test]
    fn restart_uses_sample_ratio() {
        let never = TracingConfig {
            sample_ratio: 0.0,
            ..cfg()
        };
        let out = run(&never, &[]);
        assert!(!out.context.sampled);
        assert!(out
            .value_of(TRACEPARENT)
            .is_some_and(|v| v.ends_with("-00")));
        let always = run(&cfg(), &[]);
        assert!(always.context.sampled);
        assert!(always
            .value_of(TRACEPARENT)
            .is_some_and(|v| v.ends_with("-01")));
        // about half with 0.5
        let half = TracingConfig {
            sample_ratio: 0.5,
            ..cfg()
        };
        let mut rng = TestRng(1);
        let n = (0..2000)
            .filter(|_| {
                propagate(&half, &TraceInput::default(), &HOP, &mut rng)
                    .context
                    .sampled
            })
            .count();
        assert!((850..1150).contains(&n), "{n}");
    }

    #[test]
    fn new_ids_differ_per_request() {
        let mut rng = TestRng(9);
        let a = propagate(&cfg(), &TraceInput::default(), &HOP, &mut rng).context;
        let b = propagate(&cfg(), &TraceInput::default(), &HOP, &mut rng).context;
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
    }

    #[test]
    fn span_mode_new_parent_id_same_trace_and_flags() {
        let h = [
            (
                "traceparent",
                "00-12345678901234567890123456789012-1234567890123456-03",
            ),
            ("tracestate", "foo=1,tideway=old,bar=2"),
        ];
        let out = run(&span_cfg(), &h);
        let c = out.context;
        let tp = downstream_tp(&out, &h).expect("written");
        assert_eq!(tp.context.trace_id.to_string(), TID);
        assert_ne!(tp.context.parent_id.to_string(), "1234567890123456");
        assert_eq!(tp.context.parent_id, c.span_id);
        assert_eq!(tp.context.flags, 0x03, "sampled and random kept");
        assert_eq!(
            c.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("1234567890123456")
        );
        assert!(c.record && !c.restarted);
        assert_eq!(ts_keys(&out), ["tideway", "foo", "bar"]);
        let ts = out.value_of(TRACESTATE).unwrap_or("");
        let ours = ts
            .split(',')
            .next()
            .and_then(|m| m.strip_prefix("tideway="))
            .unwrap_or("");
        assert_eq!(
            parse_member_value(ours),
            Some(("eu-west".into(), "us-east".into()))
        );
        // not sampled -> not recorded
        let h = [(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-00",
        )];
        assert!(!run(&span_cfg(), &h).context.record);
        // unknown flag bits are zeroed when rewriting
        let h = [(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-ff",
        )];
        assert!(run(&span_cfg(), &h)
            .value_of(TRACEPARENT)
            .is_some_and(|v| v.ends_with("-03")));
    }

    #[test]
    fn span_mode_writes_ours_first_and_truncates_a_full_list_from_the_end() {
        let many: Vec<String> = (1..=32).map(|i| format!("bar{i:02}={i:02}")).collect();
        let a = many[..20].join(",");
        let b = many[20..].join(",");
        let h = [
            ("traceparent", TP),
            ("tracestate", a.as_str()),
            ("tracestate", b.as_str()),
        ];
        let out = run(&span_cfg(), &h);
        let keys = ts_keys(&out);
        assert_eq!(keys.len(), MAX_MEMBERS);
        assert_eq!(keys[0], "tideway");
        assert_eq!(keys[1], "bar01");
        assert_eq!(keys[31], "bar31");
        assert_eq!(out.tracestate.truncated, 1);
        // the written header itself is fully valid
        let v = [out.value_of(TRACESTATE).unwrap_or("").as_bytes()];
        assert!(members(&v).all(|m| m.is_ok()));
    }

    #[test]
    fn span_mode_restart() {
        let out = run(&span_cfg(), &[("tracestate", "foo=1")]);
        let c = out.context;
        assert!(c.restarted && c.record && c.parent_span_id.is_none());
        assert_eq!(ts_keys(&out), ["tideway"]);
    }

    #[test]
    fn b3_disabled_ignores_b3() {
        let h = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")];
        let out = run(&cfg(), &h);
        assert!(out.context.restarted);
        assert!(out.value_of("b3").is_none());
    }

    #[test]
    fn b3_continues_trace_without_traceparent() {
        let c = TracingConfig { b3: true, ..cfg() };
        let h = [
            (
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            ),
            ("tracestate", "foo=1"),
        ];
        let out = run(&c, &h);
        let ctx = out.context;
        assert_eq!(ctx.source, ContextSource::B3);
        assert!(!ctx.restarted && ctx.sampled);
        assert_eq!(
            out.value_of(TRACEPARENT),
            Some("00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01")
        );
        assert!(
            out.removes(TRACESTATE),
            "tracestate without traceparent is discarded"
        );
        // B3 already says exactly this: not rewritten
        assert!(out.value_of("b3").is_none());
        assert!(out.value_of(b3::X_B3_TRACEID).is_none());
        // 64-bit multi, span mode: padded trace id, new span, parent = incoming span
        let s = TracingConfig {
            b3: true,
            ..span_cfg()
        };
        let h = [
            ("X-B3-TraceId", "a3ce929d0e0e4736"),
            ("X-B3-SpanId", "e457b5a2e4d86bd1"),
            ("X-B3-Sampled", "0"),
        ];
        let out = run(&s, &h);
        let ctx = out.context;
        assert_eq!(ctx.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!ctx.sampled && !ctx.record);
        assert_eq!(
            ctx.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("e457b5a2e4d86bd1")
        );
        let span = ctx.span_id.to_string();
        assert_eq!(
            out.value_of(TRACEPARENT),
            Some(format!("00-0000000000000000a3ce929d0e0e4736-{span}-00").as_str())
        );
        assert_eq!(
            out.value_of("b3"),
            Some(format!("0000000000000000a3ce929d0e0e4736-{span}-0-e457b5a2e4d86bd1").as_str())
        );
        assert_eq!(out.value_of(b3::X_B3_SPANID), Some(span.as_str()));
        assert_eq!(
            out.value_of(b3::X_B3_PARENTSPANID),
            Some("e457b5a2e4d86bd1")
        );
        assert_eq!(out.value_of(b3::X_B3_SAMPLED), Some("0"));
    }

    #[test]
    fn b3_written_consistent_with_traceparent() {
        let c = TracingConfig { b3: true, ..cfg() };
        let h = [
            ("traceparent", TP),
            ("x-b3-flags", "1"),
            ("x-b3-parentspanid", "0000000000000001"),
            ("b3", "1"),
        ];
        let out = run(&c, &h);
        assert_eq!(out.value_of(TRACEPARENT), None);
        assert_eq!(
            out.value_of("b3"),
            Some("12345678901234567890123456789012-1234567890123456-1")
        );
        assert_eq!(out.value_of(b3::X_B3_TRACEID), Some(TID));
        assert_eq!(out.value_of(b3::X_B3_SPANID), Some("1234567890123456"));
        assert_eq!(out.value_of(b3::X_B3_SAMPLED), Some("1"));
        assert!(out.removes(b3::X_B3_FLAGS), "stale debug flag removed");
        assert!(out.removes(b3::X_B3_PARENTSPANID), "stale parent removed");
        // B3 that disagrees with a valid traceparent loses
        let h = [
            ("traceparent", TP),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ];
        let out = run(&c, &h);
        assert_eq!(out.context.trace_id.to_string(), TID);
        assert_eq!(
            out.value_of("b3"),
            Some("12345678901234567890123456789012-1234567890123456-1")
        );
        // debug carried when B3 describes the same trace
        let h = [
            ("traceparent", TP),
            ("b3", "12345678901234567890123456789012-1234567890123456-d"),
        ];
        let out = run(&c, &h);
        assert_eq!(
            out.value_of("b3"),
            None,
            "{:?}",
            out.ops().collect::<Vec<_>>()
        );
        assert_eq!(out.value_of(TRACEPARENT), None);
        let s = TracingConfig {
            b3: true,
            ..span_cfg()
        };
        let out = run(&s, &h);
        assert!(out
            .value_of("b3")
            .is_some_and(|v| v.contains("-d-1234567890123456")));
        assert_eq!(out.value_of(b3::X_B3_FLAGS), Some("1"));
        assert_eq!(out.value_of(b3::X_B3_SAMPLED), None);
    }

    #[test]
    fn b3_sampling_only_decides_new_trace() {
        let c = TracingConfig { b3: true, ..cfg() };
        let out = run(&c, &[("b3", "0")]);
        assert!(out.context.restarted && !out.context.sampled);
        assert!(out.value_of("b3").is_some_and(|v| v.ends_with("-0")));
        let out = run(&c, &[("b3", "d")]);
        assert!(out.context.sampled);
        assert!(out.value_of("b3").is_some_and(|v| v.ends_with("-d")));
    }

    #[test]
    fn legacy_headers() {
        let c = TracingConfig {
            legacy_headers: true,
            ..cfg()
        };
        let out = run(&c, &[("traceparent", TP)]);
        assert_eq!(out.value_of(X_TRACE_ID), Some(TID));
        assert_eq!(out.value_of(X_SPAN_ID), Some("1234567890123456"));
        assert_eq!(out.len(), 2, "the legacy pair only");
        let s = TracingConfig {
            legacy_headers: true,
            ..span_cfg()
        };
        let out = run(&s, &[("traceparent", TP)]);
        assert_eq!(
            out.value_of(X_SPAN_ID),
            Some(out.context.span_id.to_string().as_str())
        );
    }

    #[test]
    fn all_options_fit_in_the_op_array() {
        let c = TracingConfig {
            b3: true,
            legacy_headers: true,
            ..span_cfg()
        };
        let h = [
            ("traceparent", TP),
            ("x-b3-parentspanid", "0000000000000001"),
            ("x-b3-flags", "0"),
            ("x-b3-sampled", "1"),
        ];
        let out = run(&c, &h);
        // traceparent, tracestate, b3, traceid, spanid, parentspanid, sampled, flags(remove), 2 legacy
        assert_eq!(out.len(), MAX_OPS);
        assert!(out.removes(b3::X_B3_FLAGS));
    }

    #[test]
    fn sample_bounds() {
        let mut r = TestRng(3);
        assert!(sample(1.0, &mut r));
        assert!(!sample(0.0, &mut r));
        assert!(!sample(f64::NAN, &mut r));
        assert!(!sample(-1.0, &mut r));
        assert!(sample(2.0, &mut r));
    }

    fn header_strategy() -> impl Strategy<Value = (String, Vec<u8>)> {
        let names = prop_oneof![
            Just("traceparent"),
            Just("tracestate"),
            Just("b3"),
            Just("x-b3-traceid"),
            Just("x-b3-spanid"),
            Just("x-b3-parentspanid"),
            Just("x-b3-sampled"),
            Just("x-b3-flags"),
        ];
        (names, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(n, v)| (n.to_string(), v))
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic_and_output_is_valid(
            headers in proptest::collection::vec(header_strategy(), 0..8),
            mode in prop_oneof![Just(TraceMode::Propagate), Just(TraceMode::Span)],
            b3 in any::<bool>(), legacy in any::<bool>(), seed in any::<u64>(),
        ) {
            let cfg = TracingConfig { mode, b3, legacy_headers: legacy, ..span_cfg() };
            let input = TraceInput::from_headers(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())));
            let out = propagate(&cfg, &input, &HOP, &mut TestRng(seed));
            prop_assert!(out.len() <= MAX_OPS);
            if let Some(tp) = out.value_of(TRACEPARENT) {
                let p = w3c::parse_traceparent(tp.as_bytes());
                prop_assert!(p.is_some_and(|p| p.version == 0 && p.context.trace_id == out.context.trace_id && p.context.parent_id == out.context.span_id));
            }
            if let Some(ts) = out.value_of(TRACESTATE) {
                let v = [ts.as_bytes()];
                prop_assert!(members(&v).all(|m| m.is_ok()));
                prop_assert!(members(&v).count() <= MAX_MEMBERS);
            }
            if let Some(b) = out.value_of("b3") {
                prop_assert!(b3::parse_single(b.as_bytes()).is_some());
            }
        }

        #[test]
        fn valid_contexts_continue(t in any::<[u8; 16]>(), p in any::<[u8; 8]>(), flags in any::<u8>(), seed in any::<u64>(), span in any::<bool>()) {
            let ctx = TraceParent { trace_id: TraceId(t), parent_id: SpanId(p), flags };
            prop_assume!(ctx.trace_id.is_valid() && ctx.parent_id.is_valid());
            let mut tp = String::new();
            w3c::write_traceparent(&ctx, &mut tp);
            let cfg = if span { span_cfg() } else { cfg() };
            let input = TraceInput::from_headers([("traceparent", tp.as_bytes())]);
            let out = propagate(&cfg, &input, &HOP, &mut TestRng(seed));
            prop_assert_eq!(out.context.trace_id, ctx.trace_id);
            prop_assert_eq!(out.context.parent_span_id, Some(ctx.parent_id));
            prop_assert_eq!(out.context.sampled, flags & 1 == 1);
            prop_assert!(!out.context.restarted);
            if span {
                prop_assert_ne!(out.context.span_id, ctx.parent_id);
            } else {
                prop_assert_eq!(out.value_of(TRACEPARENT), None);
                prop_assert_eq!(out.len(), 0, "nothing written in propagate mode");
            }
        }
    }
}
