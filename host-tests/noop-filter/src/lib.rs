//! The no-op proxy-wasm filter: a root context and an HTTP context whose
//! every callback returns `Continue`.
//!
//! Why it exists: the benchmark (`cargo xtask bench`) compares Tideway's
//! per-request cost with this module, built by the same toolchain route and
//! profile, so the ratio isolates what Tideway's own work costs on top of the
//! fixed price Envoy charges for any Rust proxy-wasm filter (the V8 call-ins,
//! the SDK's context bookkeeping).
//!
//! Natively this crate is empty: the SDK is only a dependency of the wasm
//! build, as in `tideway-filter`.

#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NoopRequest;

impl Context for NoopRequest {}

impl HttpContext for NoopRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
