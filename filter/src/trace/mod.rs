//! Trace context for the filter: W3C Trace Context (`traceparent`,
//! `tracestate`), Zipkin B3, legacy `x-trace-id`/`x-span-id`, and OTLP/JSON
//! span export — host-independent, allocation-light, panic-free on any input.
//!
//! The proxy-wasm glue:
//! 1. reads the request headers once and builds a [`TraceInput`] of borrowed
//!    values ([`TraceInput::from_headers`]);
//! 2. calls [`propagate()`] with the validated [`TracingConfig`], the
//!    [`HopInfo`] and a [`TraceRng`] over WASI `random_get`;
//! 3. applies [`TraceOutput::ops`] (replace / remove request headers) — none in
//!    the common propagate-mode pass-through case;
//! 4. in span mode, when [`SpanContext::record`] is set, keeps a
//!    [`otlp::SpanRecord`], finishes it on the response and exports batches
//!    with [`otlp::encode_batch`] to the configured collector cluster.
//!
//! Submodules, one concept each: [`config`], [`ids`], [`w3c`] (`traceparent`),
//! [`tracestate`], [`member`] (our tracestate value), [`b3`], [`input`],
//! [`mod@propagate`], [`otlp`].

pub mod b3;
pub mod config;
pub mod ids;
pub mod input;
pub mod member;
pub mod otlp;
pub mod propagate;
pub mod tracestate;
pub mod w3c;

pub use config::{CollectorConfig, ConfigError, TraceMode, TracingConfig};
pub use ids::{SpanId, TraceId, TraceRng};
pub use input::{OneValue, TraceInput};
pub use propagate::{propagate, ContextSource, HeaderOp, HopInfo, SpanContext, TraceOutput};
