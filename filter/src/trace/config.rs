//! The `tracing` section of the filter configuration and its validation.
//!
//! Why separate: the controller renders this configuration and the filter
//! parses it, both through these serde types, so the field names, defaults and
//! validation rules exist exactly once. Errors name the field path (e.g.
//! `tracing.sampleRatio`) and the offending value so an operator can fix the
//! resource without reading the filter's source.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::tracestate::is_valid_key_level1;
pub use crate::config_error::ConfigError;

/// How the filter takes part in the trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceMode {
    /// Pass a valid `traceparent` (and `tracestate`) through unchanged; start a
    /// new trace only when it is missing or invalid. No spans are recorded.
    #[default]
    Propagate,
    /// Take part in the trace: send a new parent-id (our span id) downstream,
    /// keep trace id and flags, and export a span to the collector.
    Span,
}

/// Trace-context handling of the filter (`tracing` in the filter config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TracingConfig {
    /// `propagate` (default) or `span`.
    pub mode: TraceMode,
    /// Read and write Zipkin B3: the single `b3` header and the multi
    /// `x-b3-traceid`/`x-b3-spanid`/`x-b3-parentspanid`/`x-b3-sampled`/
    /// `x-b3-flags` headers. Default `false`.
    pub b3: bool,
    /// Also write the legacy `x-trace-id` and `x-span-id` headers (32 and 16
    /// lowercase hex digits) for apps that log them. Default `false`.
    pub legacy_headers: bool,
    /// Probability, in `0..=1`, that a trace the filter starts is sampled.
    /// Default `1.0`. Continued traces keep the caller's decision.
    pub sample_ratio: f64,
    /// Our `tracestate` list-member key. Default `tideway`. Must follow the
    /// W3C Level 1 key grammar (`[a-z][a-z0-9_*/-]{0,255}` or
    /// `tenant@system`).
    pub tracestate_key: String,
    /// Where span mode exports spans (OTLP/HTTP JSON). Required in span mode.
    pub collector: Option<CollectorConfig>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            mode: TraceMode::Propagate,
            b3: false,
            legacy_headers: false,
            sample_ratio: 1.0,
            tracestate_key: DEFAULT_TRACESTATE_KEY.to_string(),
            collector: None,
        }
    }
}

/// Default [`TracingConfig::tracestate_key`].
pub const DEFAULT_TRACESTATE_KEY: &str = "tideway";
/// Default [`CollectorConfig::path`] (the OTLP/HTTP traces path).
pub const DEFAULT_COLLECTOR_PATH: &str = "/v1/traces";
/// Default [`CollectorConfig::batch_size`].
pub const DEFAULT_BATCH_SIZE: u32 = 64;
/// Largest accepted [`CollectorConfig::batch_size`] (bounds filter memory).
pub const MAX_BATCH_SIZE: u32 = 8192;
/// Default [`CollectorConfig::timeout_ms`].
pub const DEFAULT_TIMEOUT_MS: u32 = 1000;
/// Default [`CollectorConfig::flush_ms`].
pub const DEFAULT_FLUSH_MS: u32 = 5000;
/// Largest accepted [`CollectorConfig::flush_ms`].
pub const MAX_FLUSH_MS: u32 = 60_000;
/// Largest accepted [`CollectorConfig::timeout_ms`].
pub const MAX_TIMEOUT_MS: u32 = 60_000;

/// The OTLP/HTTP collector spans are exported to, through an Envoy cluster
/// (proxy-wasm `dispatch_http_call`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CollectorConfig {
    /// Name of the Envoy cluster that reaches the collector. Required.
    pub cluster: String,
    /// Request path. Default `/v1/traces`.
    pub path: String,
    /// `:authority` of the export request; the cluster name when absent.
    pub authority: Option<String>,
    /// Spans per export request (`1..=8192`). Default 64.
    pub batch_size: u32,
    /// Export request timeout in milliseconds (`1..=60000`). Default 1000.
    pub timeout_ms: u32,
    /// How long a batch that is not full waits for more spans, in
    /// milliseconds (`0..=60000`; `0`: every tick sends what ended). A full
    /// batch goes at the next tick. Default 5000, the OpenTelemetry SDK's
    /// batch span processor delay (`scheduledDelayMillis`).
    pub flush_ms: u32,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            cluster: String::new(),
            path: DEFAULT_COLLECTOR_PATH.to_string(),
            authority: None,
            batch_size: DEFAULT_BATCH_SIZE,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            flush_ms: DEFAULT_FLUSH_MS,
        }
    }
}

impl CollectorConfig {
    /// The `:authority` to send: `authority`, or the cluster name.
    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }
}

/// An invalid `tracing` setting: the filter's one [`ConfigError`], naming
/// the field path from the config root (e.g. `tracing.sampleRatio`), the
/// offending value as written and what is expected instead.
fn err(field: &'static str, value: impl fmt::Debug, expected: &'static str) -> ConfigError {
    ConfigError::new(field, format!("{value:?} (expected {expected})"))
}

/// Header-value-safe: visible ASCII only (no spaces, controls or non-ASCII).
fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl TracingConfig {
    /// Checks every rule the types cannot express. The first violation is
    /// returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.sample_ratio.is_finite() && (0.0..=1.0).contains(&self.sample_ratio)) {
            return Err(err(
                "tracing.sampleRatio",
                self.sample_ratio,
                "a number in 0..=1",
            ));
        }
        if !is_valid_key_level1(self.tracestate_key.as_bytes()) {
            return Err(err(
                "tracing.tracestateKey",
                &self.tracestate_key,
                "a W3C tracestate key: [a-z][a-z0-9_*/-]{0,255} or tenant@system \
                 (tenant [a-z0-9][a-z0-9_*/-]{0,240}, system [a-z][a-z0-9_*/-]{0,13})",
            ));
        }
        match (&self.collector, self.mode) {
            (None, TraceMode::Span) => {
                return Err(err(
                    "tracing.collector",
                    None::<()>,
                    "required when tracing.mode is \"span\"",
                ));
            }
            (Some(c), _) => c.validate()?,
            (None, TraceMode::Propagate) => {}
        }
        Ok(())
    }
}

impl CollectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() || !is_visible_ascii(&self.cluster) {
            return Err(err(
                "tracing.collector.cluster",
                &self.cluster,
                "a non-empty Envoy cluster name without spaces or control characters",
            ));
        }
        if !self.path.starts_with('/') || !is_visible_ascii(&self.path) {
            return Err(err(
                "tracing.collector.path",
                &self.path,
                "an absolute request path starting with '/', visible ASCII only",
            ));
        }
        if let Some(a) = &self.authority {
            if a.is_empty() || !is_visible_ascii(a) {
                return Err(err(
                    "tracing.collector.authority",
                    a,
                    "a non-empty host[:port] without spaces or control characters",
                ));
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(err(
                "tracing.collector.batchSize",
                self.batch_size,
                "an integer in 1..=8192",
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(err(
                "tracing.collector.timeoutMs",
                self.timeout_ms,
                "an integer in 1..=60000",
            ));
        }
        if self.flush_ms > MAX_FLUSH_MS {
            return Err(err(
                "tracing.collector.flushMs",
                self.flush_ms,
                "an integer in 0..=60000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TracingConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn defaults() {
        let c = parse("{}").expect("empty object");
        assert_eq!(c, TracingConfig::default());
        assert_eq!(c.mode, TraceMode::Propagate);
        assert!(!c.b3 && !c.legacy_headers);
        assert_eq!(c.sample_ratio, 1.0);
        assert_eq!(c.tracestate_key, "tideway");
        assert!(c.collector.is_none());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn full_config_camel_case() {
        let c = parse(
            r#"{"mode":"span","b3":true,"legacyHeaders":true,"sampleRatio":0.25,
                "tracestateKey":"acme@tideway",
                "collector":{"cluster":"otel-collector","authority":"otel:4318"}}"#,
        )
        .expect("valid");
        assert_eq!(c.mode, TraceMode::Span);
        assert!(c.b3 && c.legacy_headers);
        let col = c.collector.as_ref().expect("collector");
        assert_eq!(col.path, "/v1/traces");
        assert_eq!(col.batch_size, 64);
        assert_eq!(col.timeout_ms, 1000);
        assert_eq!(col.flush_ms, 5000);
        assert_eq!(col.authority(), "otel:4318");
        assert_eq!(c.validate(), Ok(()));
        // serialising gives the same camelCase document back
        let back: TracingConfig =
            serde_json::from_value(serde_json::to_value(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_fields_rejected() {
        assert!(parse(r#"{"sample_ratio":0.5}"#).is_err());
        assert!(parse(r#"{"collector":{"cluster":"c","batch":1}}"#).is_err());
        assert!(parse(r#"{"mode":"record"}"#).is_err());
    }

    #[test]
    fn validation_names_field_and_value() {
        let bad = TracingConfig {
            sample_ratio: 1.5,
            ..Default::default()
        };
        let e = bad.validate().expect_err("1.5");
        assert_eq!(e.field, "tracing.sampleRatio");
        assert!(e.message.starts_with("1.5 "), "{e}");
        assert!(
            e.to_string()
                .contains("tracing.sampleRatio: 1.5 (expected a number in 0..=1)"),
            "{e}"
        );
        for r in [-0.1, f64::NAN, f64::INFINITY] {
            assert!(TracingConfig {
                sample_ratio: r,
                ..Default::default()
            }
            .validate()
            .is_err());
        }
        for r in [0.0, 1.0, 0.5] {
            assert!(TracingConfig {
                sample_ratio: r,
                ..Default::default()
            }
            .validate()
            .is_ok());
        }
        for k in ["Tideway", "", "foo@", "0abc", "a b", "x@y@z"] {
            let e = TracingConfig {
                tracestate_key: k.into(),
                ..Default::default()
            }
            .validate()
            .expect_err(k);
            assert_eq!(e.field, "tracing.tracestateKey");
            assert!(e.message.starts_with(&format!("{k:?} ")), "{e}");
        }
        let e = TracingConfig {
            mode: TraceMode::Span,
            ..Default::default()
        }
        .validate()
        .expect_err("span");
        assert_eq!(e.field, "tracing.collector");
    }

    #[test]
    fn collector_validation() {
        let ok = CollectorConfig {
            cluster: "otel".into(),
            ..Default::default()
        };
        let with = |c: CollectorConfig| TracingConfig {
            mode: TraceMode::Span,
            collector: Some(c),
            ..Default::default()
        };
        assert_eq!(with(ok.clone()).validate(), Ok(()));
        assert_eq!(ok.authority(), "otel");
        let cases = [
            (
                CollectorConfig {
                    cluster: String::new(),
                    ..ok.clone()
                },
                "tracing.collector.cluster",
            ),
            (
                CollectorConfig {
                    cluster: "a b".into(),
                    ..ok.clone()
                },
                "tracing.collector.cluster",
            ),
            (
                CollectorConfig {
                    path: "v1/traces".into(),
                    ..ok.clone()
                },
                "tracing.collector.path",
            ),
            (
                CollectorConfig {
                    authority: Some(String::new()),
                    ..ok.clone()
                },
                "tracing.collector.authority",
            ),
            (
                CollectorConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "tracing.collector.batchSize",
            ),
            (
                CollectorConfig {
                    batch_size: 100_000,
                    ..ok.clone()
                },
                "tracing.collector.batchSize",
            ),
            (
                CollectorConfig {
                    timeout_ms: 0,
                    ..ok.clone()
                },
                "tracing.collector.timeoutMs",
            ),
            (
                CollectorConfig {
                    flush_ms: 60_001,
                    ..ok.clone()
                },
                "tracing.collector.flushMs",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(
                with(c).validate().map_err(|e| e.field),
                Err(field.to_string())
            );
        }
        // a collector in propagate mode is validated too, but allowed
        let p = TracingConfig {
            collector: Some(ok),
            ..Default::default()
        };
        assert_eq!(p.validate(), Ok(()));
    }
}
