//! Finished spans, their OTLP/HTTP JSON encoding and their export batches,
//! for span mode.
//!
//! Why hand-written JSON: the filter exports batches from inside Envoy with
//! `dispatch_http_call`; building a `serde_json::Value` tree per span would
//! allocate per field. The encoder appends each span, as it ends, straight
//! to its batch's body and follows the OTLP/JSON rules (opentelemetry-proto
//! `docs/specification.md`, "JSON Protobuf Encoding"):
//! - keys are lowerCamelCase proto field names;
//! - `traceId`/`spanId`/`parentSpanId` are hex strings, not base64;
//! - enums are integers (`kind` 3 = `SPAN_KIND_CLIENT`, status `code` 2 =
//!   `STATUS_CODE_ERROR`);
//! - 64-bit integers (`startTimeUnixNano`, `intValue`) are decimal strings.

use super::ids::{push_hex_bytes, write_hex_into, SpanId, TraceId};
use super::propagate::SpanContext;

/// The name of every span the filter records: the routing of a request.
pub const SPAN_NAME: &str = "tideway route";
/// Attribute keys.
pub const ATTR_SOURCE: &str = "tideway.cluster.source";
/// Attribute keys.
pub const ATTR_TARGET: &str = "tideway.cluster.target";
/// Attribute keys.
pub const ATTR_SERVICE: &str = "tideway.service.name";
/// Attribute keys.
pub const ATTR_HTTP_STATUS: &str = "http.response.status_code";

/// Export request bodies waiting at most this many batches (per worker): a
/// slow or unreachable collector costs bounded memory, and spans beyond it
/// are dropped (and counted).
pub const MAX_PENDING_BATCHES: usize = 16;

/// The ids of a span the filter records, carried by the request from its
/// routing to the end of its stream. `Copy`: the span's text is written only
/// when it ends, from the engine's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    /// Trace id.
    pub trace_id: TraceId,
    /// Our span id.
    pub span_id: SpanId,
    /// The caller's span, if any.
    pub parent_span_id: Option<SpanId>,
}

impl SpanIds {
    /// The ids of `ctx` if the context is to be recorded
    /// ([`SpanContext::record`]); `None` otherwise.
    pub fn recorded(ctx: &SpanContext) -> Option<Self> {
        ctx.record.then_some(SpanIds {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: ctx.parent_span_id,
        })
    }
}

/// One finished span of the filter, its text borrowed from the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedSpan<'a> {
    /// Trace, span and parent span id.
    pub ids: SpanIds,
    /// Start, unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End, unix nanoseconds (an end before the start is written as the
    /// start: the clock is not monotonic across hosts).
    pub end_unix_nanos: u64,
    /// The hop's attributes, encoded ([`push_hop_attributes`]).
    pub hop_attributes: &'a [u8],
    /// `http.response.status_code`, when a response arrived.
    pub http_status_code: Option<u16>,
}

impl FinishedSpan<'_> {
    /// The span's status is error: no response, or a 5xx.
    pub fn is_error(&self) -> bool {
        self.http_status_code.is_none_or(|s| s >= 500)
    }
}

/// One export request's body, an OTLP/HTTP JSON `ExportTraceServiceRequest`,
/// and the number of spans in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The body (UTF-8 JSON).
    pub body: Vec<u8>,
    /// Spans in it.
    pub spans: u32,
}

/// Finished spans, encoded as each ends into export bodies of at most
/// `batchSize` spans.
///
/// Why encode at the end of the request, not at export: a finished span
/// kept as a record owns copies of its names (four allocations a request,
/// and four frees at export); written straight into the body, it is one
/// copy of each name and nothing to free but the body once sent.
#[derive(Debug, Default)]
pub struct SpanBatches {
    /// The batch being filled (`spans == 0`: none).
    open: Batch,
    /// When the open batch got its first span (unix ns).
    opened_ns: u64,
    /// Full batches waiting for export.
    full: Vec<Batch>,
    /// Spans in `open` and `full`.
    pending: usize,
    /// Bodies already sent, kept for the next batches: a batch's body
    /// grows to hundreds of KiB, and allocating a fresh one each time
    /// fragments the VM's heap, which never shrinks.
    spare: Vec<Vec<u8>>,
}

/// Sent bodies kept for reuse, at most.
const MAX_SPARE_BODIES: usize = 2;

/// The request up to its first span: the resource (`service.name`
/// `tideway-filter`) and the instrumentation scope (`tideway`).
const ENVELOPE_HEAD: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"tideway-filter"}}]},"scopeSpans":[{"scope":{"name":"tideway"},"spans":["#;
const ENVELOPE_TAIL: &str = "]}]}]}";
/// A span's encoded size, roughly (the body is reserved by it, up to 64).
const SPAN_BYTES: usize = 512;

impl SpanBatches {
    /// Spans waiting for export.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Encodes `span` into the open batch, closing it at `batch_size`
    /// spans. `false` (and nothing written) when the backlog is full:
    /// [`MAX_PENDING_BATCHES`] batches' worth of spans wait already.
    pub fn push(&mut self, span: &FinishedSpan<'_>, batch_size: u32, now_ns: u64) -> bool {
        let batch_size = batch_size.max(1);
        if self.pending >= batch_size as usize * MAX_PENDING_BATCHES {
            return false;
        }
        if self.open.spans == 0 && self.open.body.capacity() == 0 {
            if let Some(spare) = self.spare.pop() {
                self.open.body = spare;
            }
        }
        let body = &mut self.open.body;
        if self.open.spans == 0 {
            body.clear();
            body.reserve(ENVELOPE_HEAD.len() + SPAN_BYTES * (batch_size as usize).min(64));
            body.extend_from_slice(ENVELOPE_HEAD.as_bytes());
            self.opened_ns = now_ns;
        } else {
            body.push(b',');
        }
        push_span(body, span);
        self.open.spans += 1;
        self.pending += 1;
        if self.open.spans >= batch_size {
            self.close_open();
        }
        true
    }

    fn close_open(&mut self) {
        if self.open.spans > 0 {
            self.open.body.extend_from_slice(ENVELOPE_TAIL.as_bytes());
            self.full.push(std::mem::take(&mut self.open));
        }
    }

    /// Takes back sent batches' bodies for reuse.
    pub fn recycle(&mut self, sent: Vec<Batch>) {
        for batch in sent {
            if self.spare.len() >= MAX_SPARE_BODIES {
                break;
            }
            self.spare.push(batch.body);
        }
    }

    /// The batches due for export, oldest first: every full one, and the
    /// open one once its first span has waited `flush_ns` (`0`: at once).
    pub fn take_due(&mut self, now_ns: u64, flush_ns: u64) -> Vec<Batch> {
        if self.open.spans > 0 && now_ns.saturating_sub(self.opened_ns) >= flush_ns {
            self.close_open();
        }
        let due = std::mem::take(&mut self.full);
        self.pending = self.open.spans as usize;
        due
    }
}

/// Bytes a JSON string cannot hold as they are: `"`, `\` and controls.
const JSON_ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `s` as a JSON string literal. Runs without escapes are copied
/// whole; the escaped bytes are ASCII, so every cut is a character boundary
/// and the output stays UTF-8.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !JSON_ESCAPED[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[copied..i]);
        copied = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\u00");
                push_hex_bytes(out, &[b]);
            }
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

/// `"00" "01" … "99"`: two decimal digits per division.
const DECIMAL_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `v` in decimal, quoted (OTLP/JSON writes 64-bit integers as
/// strings). Two digits at a time: every span carries two 19-digit times.
fn push_u64_str(out: &mut Vec<u8>, mut v: u64) {
    // u64::MAX has 20 digits; a quote on either side.
    let mut quoted = [b'"'; 22];
    let digits = &mut quoted[..21];
    let mut start = digits.len();
    while v >= 100 && start >= 3 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&DECIMAL_PAIRS[pair..pair + 2]);
    }
    if v >= 10 && start >= 3 {
        let pair = v as usize * 2;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&DECIMAL_PAIRS[pair..pair + 2]);
    } else if start >= 2 {
        start -= 1;
        digits[start] = b'0' + v as u8;
    }
    // The opening quote just before the first digit.
    out.extend_from_slice(&quoted[start - 1..]);
}

fn push_string_attr(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(b"{\"key\":\"");
    // Our keys are constants with nothing to escape.
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\",\"value\":{\"stringValue\":");
    push_json_str(out, value);
    out.extend_from_slice(b"}}");
}

/// Appends a hop's span attributes, as JSON array elements:
/// `tideway.cluster.source`, `tideway.cluster.target` and
/// `tideway.service.name`.
pub fn push_hop_attributes(out: &mut Vec<u8>, source: &str, target: &str, service: &str) {
    push_string_attr(out, ATTR_SOURCE, source);
    out.push(b',');
    push_string_attr(out, ATTR_TARGET, target);
    out.push(b',');
    push_string_attr(out, ATTR_SERVICE, service);
}

fn push_span(out: &mut Vec<u8>, s: &FinishedSpan<'_>) {
    // The ids' hex written in place into the span's fixed opening: one copy.
    let mut ids =
        *b"{\"traceId\":\"00000000000000000000000000000000\",\"spanId\":\"0000000000000000\"";
    let (_, rest) = ids.split_at_mut(b"{\"traceId\":\"".len());
    let (trace, rest) = rest.split_at_mut(TraceId::HEX_LEN);
    write_hex_into(&s.ids.trace_id.0, trace);
    let (_, rest) = rest.split_at_mut(b"\",\"spanId\":\"".len());
    write_hex_into(&s.ids.span_id.0, rest);
    out.extend_from_slice(&ids);
    if let Some(p) = s.ids.parent_span_id {
        let mut parent = *b",\"parentSpanId\":\"0000000000000000\"";
        let (_, rest) = parent.split_at_mut(b",\"parentSpanId\":\"".len());
        write_hex_into(&p.0, rest);
        out.extend_from_slice(&parent);
    }
    // SPAN_NAME, which needs no escaping.
    out.extend_from_slice(b",\"name\":\"tideway route\",\"kind\":3,\"startTimeUnixNano\":");
    push_u64_str(out, s.start_unix_nanos);
    out.extend_from_slice(b",\"endTimeUnixNano\":");
    push_u64_str(out, s.end_unix_nanos.max(s.start_unix_nanos));
    out.extend_from_slice(b",\"attributes\":[");
    out.extend_from_slice(s.hop_attributes);
    if let Some(code) = s.http_status_code {
        if !s.hop_attributes.is_empty() {
            out.push(b',');
        }
        // ATTR_HTTP_STATUS.
        out.extend_from_slice(b"{\"key\":\"http.response.status_code\",\"value\":{\"intValue\":");
        push_u64_str(out, u64::from(code));
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
    if s.is_error() {
        out.extend_from_slice(b",\"status\":{\"code\":2}");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn ids() -> SpanIds {
        SpanIds {
            trace_id: TraceId::from_hex(b"4bf92f3577b34da6a3ce929d0e0e4736").expect("id"),
            span_id: SpanId::from_hex(b"00f067aa0ba902b7").expect("id"),
            parent_span_id: SpanId::from_hex(b"b7ad6b7169203331"),
        }
    }

    fn attributes(source: &str) -> Vec<u8> {
        let mut out = Vec::new();
        push_hop_attributes(&mut out, source, "eu-west", "reviews");
        out
    }

    fn span(hop_attributes: &[u8]) -> FinishedSpan<'_> {
        FinishedSpan {
            ids: ids(),
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_123_456_789,
            hop_attributes,
            http_status_code: Some(503),
        }
    }

    /// The bodies of every batch, exported at once.
    fn encode(spans: &[FinishedSpan<'_>], batch_size: u32) -> Vec<Value> {
        let mut batches = SpanBatches::default();
        for s in spans {
            assert!(batches.push(s, batch_size, 0));
        }
        batches
            .take_due(0, 0)
            .iter()
            .map(|b| serde_json::from_slice(&b.body).expect("valid JSON"))
            .collect()
    }

    fn spans_of(export: &Value) -> &Vec<Value> {
        export["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .expect("spans")
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
        let attrs = attributes("outbound|8080||a.default.svc.cluster.local");
        let v = &encode(&[span(&attrs)], 8)[0];
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
        assert_eq!(span["name"], SPAN_NAME);
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
    fn optional_fields_omitted_and_an_early_end_is_the_start() {
        let a = attributes("a");
        let s = FinishedSpan {
            ids: SpanIds {
                parent_span_id: None,
                ..ids()
            },
            http_status_code: Some(200),
            end_unix_nanos: 5,
            ..span(&a)
        };
        let v = &encode(&[s, s], 8)[0];
        let spans = spans_of(v);
        assert_eq!(spans.len(), 2);
        assert!(spans[0].get("parentSpanId").is_none());
        assert!(spans[0].get("status").is_none(), "a 200 is not an error");
        assert_eq!(spans[0]["endTimeUnixNano"], spans[0]["startTimeUnixNano"]);
        let no_response = FinishedSpan {
            http_status_code: None,
            ..s
        };
        let v = &encode(&[no_response], 8)[0];
        assert!(attr(&spans_of(v)[0], ATTR_HTTP_STATUS).is_none());
        assert_eq!(
            spans_of(v)[0]["status"]["code"],
            2,
            "no response is an error"
        );
    }

    #[test]
    fn no_hop_attributes_still_valid_json() {
        let v = &encode(&[span(&[])], 8)[0];
        let attrs = spans_of(v)[0]["attributes"]
            .as_array()
            .expect("array")
            .clone();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0]["key"], ATTR_HTTP_STATUS);
    }

    #[test]
    fn nothing_ended_nothing_due() {
        let mut batches = SpanBatches::default();
        assert!(batches.take_due(0, 0).is_empty());
        assert_eq!(batches.pending(), 0);
    }

    #[test]
    fn a_full_batch_is_due_at_once_a_partial_one_after_the_flush_interval() {
        let a = attributes("a");
        let mut batches = SpanBatches::default();
        for i in 0..5 {
            assert!(batches.push(&span(&a), 2, 1_000 + i));
        }
        assert_eq!(batches.pending(), 5);
        let due = batches.take_due(1_500, 1_000);
        assert_eq!(due.iter().map(|b| b.spans).collect::<Vec<_>>(), [2, 2]);
        for b in &due {
            assert_eq!(
                spans_of(&serde_json::from_slice(&b.body).expect("JSON")).len(),
                2
            );
        }
        assert_eq!(
            batches.pending(),
            1,
            "the fifth waits: its batch opened at 1004"
        );
        assert!(batches.take_due(2_003, 1_000).is_empty());
        let due = batches.take_due(2_004, 1_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].spans, 1);
        assert_eq!(batches.pending(), 0);
        // The next span opens a fresh batch.
        assert!(batches.push(&span(&a), 2, 3_000));
        let due = batches.take_due(3_000, 0);
        assert_eq!(
            spans_of(&serde_json::from_slice(&due[0].body).expect("JSON")).len(),
            1
        );
    }

    #[test]
    fn sent_bodies_are_reused() {
        let a = attributes("a");
        let mut batches = SpanBatches::default();
        for _ in 0..6 {
            assert!(batches.push(&span(&a), 2, 0));
        }
        let sent = batches.take_due(0, 0);
        let buffers: Vec<*const u8> = sent.iter().map(|b| b.body.as_ptr()).collect();
        batches.recycle(sent);
        for _ in 0..4 {
            assert!(batches.push(&span(&a), 2, 0));
        }
        let again = batches.take_due(0, 0);
        assert_eq!(again.len(), 2);
        for b in &again {
            assert!(buffers.contains(&b.body.as_ptr()), "a kept buffer");
            assert_eq!(
                spans_of(&serde_json::from_slice(&b.body).expect("JSON")).len(),
                2
            );
        }
    }

    #[test]
    fn the_backlog_is_bounded() {
        let a = attributes("a");
        let mut batches = SpanBatches::default();
        let cap = 3 * MAX_PENDING_BATCHES;
        for _ in 0..cap {
            assert!(batches.push(&span(&a), 3, 0));
        }
        assert!(!batches.push(&span(&a), 3, 0), "over the bound");
        assert_eq!(batches.pending(), cap);
        assert_eq!(batches.take_due(0, 10).len(), MAX_PENDING_BATCHES);
        assert!(batches.push(&span(&a), 3, 0), "room again once taken");
    }

    #[test]
    fn decimal_and_hex_forms() {
        for v in [
            0,
            9,
            10,
            99,
            100,
            101,
            1_234_567_890,
            1_700_000_000_123_456_789,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64_str(&mut out, v);
            assert_eq!(out, format!("\"{v}\"").into_bytes());
        }
        let mut out = Vec::new();
        push_json_str(&mut out, "\u{1}a\u{1f}é\\");
        assert_eq!(out, "\"\\u0001a\\u001fé\\\\\"".as_bytes());
    }

    proptest! {
        #[test]
        fn decimal_form_of_any_u64(v in any::<u64>()) {
            let mut out = Vec::new();
            push_u64_str(&mut out, v);
            prop_assert_eq!(out, format!("\"{v}\"").into_bytes());
        }

        #[test]
        fn any_strings_give_valid_json(src in any::<String>(), start in any::<u64>(), status in proptest::option::of(any::<u16>()), parent in any::<bool>()) {
            let attrs = attributes(&src);
            let ids = SpanIds { parent_span_id: ids().parent_span_id.filter(|_| parent), ..ids() };
            let s = FinishedSpan { ids, start_unix_nanos: start, end_unix_nanos: start, http_status_code: status, ..span(&attrs) };
            let v = &encode(&[s], 1)[0];
            let span = &spans_of(v)[0];
            prop_assert_eq!(&span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
            prop_assert_eq!(span.get("parentSpanId").is_some(), parent);
            prop_assert_eq!(attr(span, ATTR_SOURCE).map(|v| v["stringValue"].clone()), Some(Value::from(src.clone())));
            prop_assert_eq!(&span["startTimeUnixNano"], &Value::from(start.to_string()));
            prop_assert_eq!(span.get("status").is_some(), status.is_none_or(|s| s >= 500));
        }

        #[test]
        fn every_span_is_exported_once_in_order(n in 1usize..40, batch_size in 1u32..9) {
        let a = attributes("a");
            let mut batches = SpanBatches::default();
            let n = n.min(batch_size as usize * MAX_PENDING_BATCHES);
            let starts: Vec<u64> = (0..n as u64).collect();
            for &start in &starts {
                let s = FinishedSpan { start_unix_nanos: start, ..span(&a) };
                prop_assert!(batches.push(&s, batch_size, 0));
            }
            let due = batches.take_due(0, 0);
            let mut seen = Vec::new();
            for b in &due {
                let v: Value = serde_json::from_slice(&b.body).expect("JSON");
                prop_assert!(b.spans <= batch_size);
                prop_assert_eq!(spans_of(&v).len(), b.spans as usize);
                seen.extend(spans_of(&v).iter().map(|s| s["startTimeUnixNano"].as_str().and_then(|t| t.parse::<u64>().ok())));
            }
            prop_assert_eq!(seen, starts.into_iter().map(Some).collect::<Vec<_>>());
        }
    }
}
