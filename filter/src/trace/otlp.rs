//! Finished span records and their OTLP/HTTP JSON encoding, for span mode.
//!
//! Why hand-written JSON: the filter exports batches from inside Envoy with
//! `dispatch_http_call`; building a `serde_json::Value` tree per span would
//! allocate per field. The encoder appends straight to one `String` and
//! follows the OTLP/JSON rules (opentelemetry-proto `docs/specification.md`,
//! "JSON Protobuf Encoding"):
//! - keys are lowerCamelCase proto field names;
//! - `traceId`/`spanId`/`parentSpanId` are hex strings, not base64;
//! - enums are integers (`kind` 3 = `SPAN_KIND_CLIENT`, status `code` 2 =
//!   `STATUS_CODE_ERROR`);
//! - 64-bit integers (`startTimeUnixNano`, `intValue`) are decimal strings.

use super::ids::{hex_char, SpanId, TraceId};
use super::propagate::{HopInfo, SpanContext};

/// `service.name` of the resource.
pub const SERVICE_NAME: &str = "tideway-filter";
/// Instrumentation scope name.
pub const SCOPE_NAME: &str = "tideway";
/// `Content-Type` of an export request.
pub const CONTENT_TYPE: &str = "application/json";
/// `SPAN_KIND_CLIENT`: the filter's span is the client side of the hop.
pub const SPAN_KIND_CLIENT: u8 = 3;
/// `STATUS_CODE_ERROR`.
pub const STATUS_CODE_ERROR: u8 = 2;

/// Attribute keys.
pub const ATTR_SOURCE: &str = "tideway.cluster.source";
/// Attribute keys.
pub const ATTR_TARGET: &str = "tideway.cluster.target";
/// Attribute keys.
pub const ATTR_SERVICE: &str = "tideway.service.name";
/// Attribute keys.
pub const ATTR_HTTP_STATUS: &str = "http.response.status_code";

/// One finished span of the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanRecord {
    /// Trace id.
    pub trace_id: TraceId,
    /// Our span id.
    pub span_id: SpanId,
    /// The caller's span, if any.
    pub parent_span_id: Option<SpanId>,
    /// Span name.
    pub name: String,
    /// Start, unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End, unix nanoseconds.
    pub end_unix_nanos: u64,
    /// `tideway.cluster.source`
    pub source_cluster: String,
    /// `tideway.cluster.target`
    pub target_cluster: String,
    /// `tideway.service.name` (the routed service).
    pub service_name: String,
    /// `http.response.status_code`, when a response arrived.
    pub http_status_code: Option<u16>,
    /// Whether the span's status is error.
    pub error: bool,
}

impl SpanRecord {
    /// Starts a record for `ctx` if the context is to be recorded
    /// ([`SpanContext::record`]); `None` otherwise.
    pub fn start(
        ctx: &SpanContext,
        hop: &HopInfo<'_>,
        name: &str,
        service_name: &str,
        start_unix_nanos: u64,
    ) -> Option<Self> {
        ctx.record.then(|| SpanRecord {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: ctx.parent_span_id,
            name: name.to_string(),
            start_unix_nanos,
            end_unix_nanos: start_unix_nanos,
            source_cluster: hop.source_cluster.to_string(),
            target_cluster: hop.target_cluster.to_string(),
            service_name: service_name.to_string(),
            http_status_code: None,
            error: false,
        })
    }

    /// Finishes the span: end time, response status (`None` when no response
    /// arrived), and error = no response or a 5xx.
    pub fn finish(&mut self, end_unix_nanos: u64, http_status_code: Option<u16>) {
        self.end_unix_nanos = end_unix_nanos.max(self.start_unix_nanos);
        self.http_status_code = http_status_code;
        self.error = http_status_code.is_none_or(|s| s >= 500);
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as u32 as u8;
                out.push_str("\\u00");
                out.push(hex_char(b >> 4));
                out.push(hex_char(b));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_u64_str(out: &mut String, v: u64) {
    use core::fmt::Write;
    out.push('"');
    let _ = write!(out, "{v}");
    out.push('"');
}

fn push_string_attr(out: &mut String, key: &str, value: &str) {
    out.push_str("{\"key\":");
    push_json_str(out, key);
    out.push_str(",\"value\":{\"stringValue\":");
    push_json_str(out, value);
    out.push_str("}}");
}

fn push_span(out: &mut String, s: &SpanRecord) {
    out.push_str("{\"traceId\":\"");
    s.trace_id.write_hex(out);
    out.push_str("\",\"spanId\":\"");
    s.span_id.write_hex(out);
    out.push('"');
    if let Some(p) = s.parent_span_id {
        out.push_str(",\"parentSpanId\":\"");
        p.write_hex(out);
        out.push('"');
    }
    out.push_str(",\"name\":");
    push_json_str(out, &s.name);
    out.push_str(",\"kind\":3,\"startTimeUnixNano\":");
    push_u64_str(out, s.start_unix_nanos);
    out.push_str(",\"endTimeUnixNano\":");
    push_u64_str(out, s.end_unix_nanos);
    out.push_str(",\"attributes\":[");
    push_string_attr(out, ATTR_SOURCE, &s.source_cluster);
    out.push(',');
    push_string_attr(out, ATTR_TARGET, &s.target_cluster);
    out.push(',');
    push_string_attr(out, ATTR_SERVICE, &s.service_name);
    if let Some(code) = s.http_status_code {
        out.push_str(",{\"key\":\"");
        out.push_str(ATTR_HTTP_STATUS);
        out.push_str("\",\"value\":{\"intValue\":");
        push_u64_str(out, u64::from(code));
        out.push_str("}}");
    }
    out.push(']');
    if s.error {
        out.push_str(",\"status\":{\"code\":2}");
    }
    out.push('}');
}

/// Appends an OTLP/HTTP JSON `ExportTraceServiceRequest` with `spans` to
/// `out`. Writes nothing and returns `false` for an empty batch (the OTLP spec:
/// senders SHOULD NOT send empty envelopes).
pub fn encode_batch(spans: &[SpanRecord], out: &mut String) -> bool {
    if spans.is_empty() {
        return false;
    }
    out.reserve(160 + spans.len() * 480);
    out.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    push_string_attr(out, "service.name", SERVICE_NAME);
    out.push_str("]},\"scopeSpans\":[{\"scope\":{\"name\":");
    push_json_str(out, SCOPE_NAME);
    out.push_str("},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_span(out, s);
    }
    out.push_str("]}]}]}");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::propagate::ContextSource;
    use proptest::prelude::*;
    use serde_json::Value;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: TraceId::from_hex(b"4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
            span_id: SpanId::from_hex(b"00f067aa0ba902b7").expect("id"),
            parent_span_id: SpanId::from_hex(b"b7ad6b7169203331"),
            name: "tideway \"route\"\n".into(),
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_123_456_789,
            source_cluster: "outbound|8080||a.default.svc.cluster.local".into(),
            target_cluster: "eu-west".into(),
            service_name: "reviews".into(),
            http_status_code: Some(503),
            error: true,
        }
    }

    fn encode(spans: &[SpanRecord]) -> Value {
        let mut s = String::new();
        assert!(encode_batch(spans, &mut s));
        serde_json::from_str(&s).expect("valid JSON")
    }

    fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
        span["attributes"]
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| &a["value"])
    }

    #[test]
    fn otlp_json_shape() {
        let v = encode(&[record()]);
        let rs = &v["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "tideway-filter"
        );
        let ss = &rs["scopeSpans"][0];
        assert_eq!(ss["scope"]["name"], "tideway");
        let span = &ss["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["spanId"], "00f067aa0ba902b7");
        assert_eq!(span["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(span["name"], "tideway \"route\"\n");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(span["endTimeUnixNano"], "1700000000123456789");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            attr(span, ATTR_SOURCE).map(|v| &v["stringValue"]),
            Some(&Value::from("outbound|8080||a.default.svc.cluster.local"))
        );
        assert_eq!(
            attr(span, ATTR_TARGET).map(|v| &v["stringValue"]),
            Some(&Value::from("eu-west"))
        );
        assert_eq!(
            attr(span, ATTR_SERVICE).map(|v| &v["stringValue"]),
            Some(&Value::from("reviews"))
        );
        assert_eq!(
            attr(span, ATTR_HTTP_STATUS).map(|v| &v["intValue"]),
            Some(&Value::from("503"))
        );
    }

    #[test]
    fn optional_fields_omitted() {
        let r = SpanRecord {
            parent_span_id: None,
            http_status_code: None,
            error: false,
            ..record()
        };
        let v = encode(&[r.clone(), r]);
        let spans = v["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .expect("spans")
            .clone();
        assert_eq!(spans.len(), 2);
        assert!(spans[0].get("parentSpanId").is_none());
        assert!(spans[0].get("status").is_none());
        assert!(attr(&spans[0], ATTR_HTTP_STATUS).is_none());
    }

    #[test]
    fn empty_batch_writes_nothing() {
        let mut s = String::new();
        assert!(!encode_batch(&[], &mut s));
        assert!(s.is_empty());
    }

    #[test]
    fn start_and_finish() {
        let ctx = SpanContext {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: Some(SpanId([3; 8])),
            flags: 1,
            sampled: true,
            restarted: false,
            source: ContextSource::TraceParent,
            traceparent_rejected: false,
            record: true,
        };
        let hop = HopInfo {
            source_cluster: "a",
            target_cluster: "b",
        };
        let mut r = SpanRecord::start(&ctx, &hop, "route", "svc", 10).expect("recorded");
        assert_eq!(r.parent_span_id, Some(SpanId([3; 8])));
        r.finish(20, Some(200));
        assert!(!r.error);
        r.finish(5, None);
        assert!(r.error);
        assert_eq!(r.end_unix_nanos, 10);
        r.finish(30, Some(500));
        assert!(r.error);
        assert!(SpanRecord::start(
            &SpanContext {
                record: false,
                ..ctx
            },
            &hop,
            "route",
            "svc",
            10
        )
        .is_none());
    }

    proptest! {
        #[test]
        fn any_strings_give_valid_json(name in any::<String>(), src in any::<String>(), start in any::<u64>(), status in proptest::option::of(any::<u16>())) {
            let r = SpanRecord { name: name.clone(), source_cluster: src.clone(), start_unix_nanos: start, http_status_code: status, ..record() };
            let v = encode(&[r]);
            let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
            prop_assert_eq!(&span["name"], &Value::from(name));
            prop_assert_eq!(attr(span, ATTR_SOURCE).map(|v| v["stringValue"].clone()), Some(Value::from(src)));
            prop_assert_eq!(&span["startTimeUnixNano"], &Value::from(start.to_string()));
        }
    }
}
