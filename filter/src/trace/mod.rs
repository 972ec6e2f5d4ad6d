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
//! 4. in span mode, when [`SpanContext::record`] is set, keeps the
//!    [`otlp::SpanIds`], encodes the span when the stream ends into
//!    [`otlp::SpanBatches`] and exports the batches due on the tick to the
//!    configured collector cluster. A hop's names are encoded once
//!    ([`hop_text::HopText`]).
//!
//! Submodules, one concept each: [`config`], [`ids`], [`w3c`] (`traceparent`),
//! [`tracestate`], [`member`] (our tracestate value), [`b3`], [`input`],
//! [`mod@propagate`], [`otlp`], [`hop_text`].

pub mod b3;
pub mod config;
pub mod hop_text;
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
pub use propagate::{
    propagate, propagate_with, ContextSource, HeaderOp, HopInfo, SpanContext, TraceOutput,
};
