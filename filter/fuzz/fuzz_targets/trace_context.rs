//! `trace::propagate`, end to end: arbitrary trace headers in, the header
//! writes the filter makes out, under every tracing setting.
//!
//! Input: byte 0 chooses the settings (bit 0 span mode, bit 1 B3, bit 2
//! legacy headers, bits 3-4 the sample ratio, bits 5-7 the random source,
//! 0 being one that only ever returns zeros); the rest, split on `\n`, is
//! headers: each line's first byte picks the name (in the case the line
//! chooses), the rest is the value.
//!
//! Properties (whatever the incoming headers):
//! - a written `traceparent` is version 00 and carries exactly the
//!   forwarded context (trace id, parent-id, known flags only); when none is
//!   written, a single valid version-00 `traceparent` came in and is the
//!   forwarded context (propagate mode);
//! - the context continues a valid incoming `traceparent`; in span mode
//!   the forwarded parent-id is new and the caller's is the span's parent;
//! - span mode writes `tracestate`, ours first, and the result is valid
//!   (every member valid, at most 32, keys unique); propagate mode never
//!   writes it: it is forwarded untouched when it belongs to the continued
//!   trace and is valid, and removed otherwise;
//! - B3 is written only when enabled, and then says the forwarded context;
//!   the legacy headers exactly when enabled, with the forwarded ids;
//! - no header is written twice, or both written and removed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tideway_filter::trace::b3::{self, B3Value, Sampling};
use tideway_filter::trace::tracestate::{check, members, MAX_MEMBERS};
use tideway_filter::trace::w3c::{parse_traceparent, FLAG_SAMPLED, KNOWN_FLAGS};
use tideway_filter::trace::{
    propagate, CollectorConfig, ContextSource, HeaderOp, HopInfo, TraceInput, TraceMode, TraceRng,
    TracingConfig,
};

const NAMES: &[&str] = &[
    "traceparent",
    "tracestate",
    b3::B3,
    b3::X_B3_TRACEID,
    b3::X_B3_SPANID,
    b3::X_B3_PARENTSPANID,
    b3::X_B3_SAMPLED,
    b3::X_B3_FLAGS,
    "x-trace-id",
    "x-other",
];

/// xorshift64*, or all zeros for seed 0 (a broken random source).
struct Rng(u64);

impl TraceRng for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            if self.0 == 0 {
                *b = 0;
                continue;
            }
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            *b = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let span = settings & 1 != 0;
    let cfg = TracingConfig {
        mode: if span {
            TraceMode::Span
        } else {
            TraceMode::Propagate
        },
        b3: settings & 2 != 0,
        legacy_headers: settings & 4 != 0,
        sample_ratio: [1.0, 0.0, 0.5, 1e-9][usize::from((settings >> 3) & 3)],
        collector: span.then(|| CollectorConfig {
            cluster: "otel".into(),
            ..CollectorConfig::default()
        }),
        ..TracingConfig::default()
    };
    assert!(cfg.validate().is_ok());
    let mut rng = Rng(u64::from(settings >> 5).wrapping_mul(0x9e37_79b9_7f4a_7c15));

    // Header names: the line's first byte picks one and its case.
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<&[u8]> = Vec::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = NAMES[usize::from(pick & 0x0f) % NAMES.len()];
        names.push(if pick & 0x10 != 0 {
            name.to_ascii_uppercase()
        } else {
            name.to_string()
        });
        values.push(value);
    }
    let input = TraceInput::from_headers(
        names
            .iter()
            .map(String::as_bytes)
            .zip(values.iter().copied()),
    );
    let hop = HopInfo {
        source_cluster: "eu-west",
        target_cluster: "outbound|9080|us-east|reviews.prod.svc.cluster.local",
        member_value: None,
    };
    let out = propagate(&cfg, &input, &hop, &mut rng);
    let ctx = out.context;

    assert!(ctx.trace_id.is_valid() && ctx.span_id.is_valid());
    assert_eq!(ctx.flags & !KNOWN_FLAGS, 0, "unknown flags forwarded");
    assert_eq!(ctx.sampled, ctx.flags & FLAG_SAMPLED != 0);
    assert_eq!(ctx.record, span && ctx.sampled);
    assert_eq!(ctx.restarted, ctx.source == ContextSource::New);

    let incoming = input.traceparent.single().and_then(parse_traceparent);
    assert_eq!(
        ctx.traceparent_rejected,
        input.traceparent.is_present() && incoming.is_none()
    );
    match incoming {
        Some(p) => {
            assert_eq!(ctx.source, ContextSource::TraceParent);
            assert_eq!(ctx.trace_id, p.context.trace_id);
            assert_eq!(ctx.flags, p.context.flags & KNOWN_FLAGS);
            assert_eq!(ctx.parent_span_id, Some(p.context.parent_id));
            if span {
                assert_ne!(
                    ctx.span_id, p.context.parent_id,
                    "span mode reused the caller's id"
                );
            } else {
                assert_eq!(ctx.span_id, p.context.parent_id);
            }
        }
        None => assert_ne!(ctx.source, ContextSource::TraceParent),
    }
    if ctx.source == ContextSource::B3 {
        assert!(cfg.b3);
    }

    // Each header is touched at most once.
    let ops: Vec<HeaderOp<'_>> = out.ops().collect();
    let name_of = |op: &HeaderOp<'_>| match *op {
        HeaderOp::Set { name, .. } | HeaderOp::Remove { name } => name,
    };
    for (i, op) in ops.iter().enumerate() {
        assert!(
            ops[..i].iter().all(|o| name_of(o) != name_of(op)),
            "{} touched twice: {ops:?}",
            name_of(op)
        );
    }

    match out.value_of("traceparent") {
        Some(tp) => {
            let p = parse_traceparent(tp.as_bytes()).expect("a written traceparent parses");
            assert_eq!(p.version, 0);
            assert_eq!(p.context.trace_id, ctx.trace_id);
            assert_eq!(p.context.parent_id, ctx.span_id);
            assert_eq!(p.context.flags, ctx.flags);
        }
        None => {
            let p = incoming.expect("traceparent left as it came only when it was valid");
            assert!(!span && p.version == 0);
        }
    }
    assert!(!out.removes("traceparent"));

    match out.value_of("tracestate") {
        Some(ts) => {
            assert!(span, "propagate mode wrote tracestate {ts:?}");
            let written = [ts.as_bytes()];
            let mut keys: Vec<&str> = Vec::new();
            for m in members(&written) {
                let m = m.unwrap_or_else(|()| panic!("written tracestate is invalid: {ts:?}"));
                assert!(!keys.contains(&m.key), "duplicate key in {ts:?}");
                keys.push(m.key);
            }
            assert!(keys.len() <= MAX_MEMBERS);
            assert_eq!(keys.first(), Some(&cfg.tracestate_key.as_str()), "{ts:?}");
            if ctx.source != ContextSource::TraceParent {
                assert_eq!(keys.len(), 1, "a new trace kept old members: {ts:?}");
            }
        }
        None => {
            assert!(!span, "span mode did not write tracestate");
            let forwardable = ctx.source == ContextSource::TraceParent
                && check(&input.tracestate).is_forwardable();
            assert_eq!(
                out.removes("tracestate"),
                !input.tracestate.is_empty() && !forwardable,
                "tracestate {:?}",
                input.tracestate
            );
        }
    }

    let b3_names = [
        b3::B3,
        b3::X_B3_TRACEID,
        b3::X_B3_SPANID,
        b3::X_B3_PARENTSPANID,
        b3::X_B3_SAMPLED,
        b3::X_B3_FLAGS,
    ];
    if !cfg.b3 {
        assert!(ops.iter().all(|op| !b3_names.contains(&name_of(op))));
    }
    if let Some(single) = out.value_of(b3::B3) {
        let Some(B3Value::Context(c)) = b3::parse_single(single.as_bytes()) else {
            panic!("written b3 {single:?} does not parse");
        };
        assert_eq!((c.trace_id, c.span_id), (ctx.trace_id, ctx.span_id));
        assert_eq!(c.sampling.map(Sampling::sampled), Some(ctx.sampled));
        let mut hex = String::new();
        ctx.trace_id.write_hex(&mut hex);
        assert_eq!(out.value_of(b3::X_B3_TRACEID), Some(hex.as_str()));
        hex.clear();
        ctx.span_id.write_hex(&mut hex);
        assert_eq!(out.value_of(b3::X_B3_SPANID), Some(hex.as_str()));
    }

    if cfg.b3 && out.value_of(b3::B3).is_none() {
        // Not rewritten: the incoming B3 already says the forwarded context.
        match input.b3_value() {
            Some(B3Value::Context(c)) => {
                assert_eq!((c.trace_id, c.span_id), (ctx.trace_id, ctx.span_id));
                assert_eq!(c.sampling.map(Sampling::sampled), Some(ctx.sampled));
            }
            other => panic!("b3 enabled, none written, incoming {other:?}"),
        }
    }

    let legacy = (out.value_of("x-trace-id"), out.value_of("x-span-id"));
    if cfg.legacy_headers {
        let (mut t, mut s) = (String::new(), String::new());
        ctx.trace_id.write_hex(&mut t);
        ctx.span_id.write_hex(&mut s);
        assert_eq!(legacy, (Some(t.as_str()), Some(s.as_str())));
    } else {
        assert_eq!(legacy, (None, None));
    }
});
