//! The probe filter: per request it makes exactly the host calls its plugin
//! configuration lists, and nothing else.
//!
//! Why it exists: Tideway's per-request cost in Envoy is dominated by host
//! calls, not by its own code, and what each call costs is a property of
//! Envoy's proxy-wasm host (V8 and `source/extensions/common/wasm`), not
//! something our code can see. The instruction benchmark (`cargo xtask
//! bench -- --only instructions`) runs this module with one call listed
//! and subtracts the no-op filter's count, which prices that call; the
//! price list says which of the filter's calls are worth saving.
//!
//! Configuration: a comma-separated list of operations, each run once per
//! request in order; unknown names are ignored (an empty list is a no-op):
//! - `clock`: `proxy_get_current_time_nanoseconds` (a call returning a number);
//! - `read_authority`: the request's `:authority` (a call returning bytes,
//!   which Envoy copies into memory it asks the VM to allocate);
//! - `read_missing`: a request header that is absent (the same call, nothing
//!   to copy back);
//! - `read_request_headers`: the whole request header map in one call;
//! - `add_header` / `replace_header`: one request header written;
//! - `read_status`: the response's `:status`, in the response callback;
//! - `trap`: execute `unreachable` — the VM traps, as a crashing filter's
//!   would (the fail-strategy tests watch what Envoy does with requests then).

#![cfg(target_arch = "wasm32")]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot { ops: Rc::new(Vec::new()) }) });
}}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: i32, data: *mut *mut u8, size: *mut usize) -> i32;
}

/// The whole request header map as Tideway reads it: one call, the
/// serialized buffer kept as bytes (the SDK's `get_map_bytes` would also
/// build a `String` per name, which is not what is being priced).
fn read_request_headers() {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host allocates the buffer through the SDK's allocator
    // (a Vec with capacity == size); rebuilding the Vec frees it.
    unsafe {
        if proxy_get_header_map_pairs(MapType::HttpRequestHeaders as i32, &mut data, &mut size) == 0
            && !data.is_null()
        {
            drop(Vec::from_raw_parts(data, size, size));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Clock,
    ReadAuthority,
    ReadMissing,
    ReadRequestHeaders,
    AddHeader,
    ReplaceHeader,
    ReadStatus,
    Trap,
}

impl Op {
    fn parse(name: &str) -> Option<Self> {
        Some(match name.trim() {
            "clock" => Op::Clock,
            "read_authority" => Op::ReadAuthority,
            "read_missing" => Op::ReadMissing,
            "read_request_headers" => Op::ReadRequestHeaders,
            "add_header" => Op::AddHeader,
            "replace_header" => Op::ReplaceHeader,
            "read_status" => Op::ReadStatus,
            "trap" => Op::Trap,
            _ => return None,
        })
    }

    fn run(self) {
        let _ = match self {
            Op::Clock => hostcalls::get_current_time().map(drop),
            Op::ReadAuthority => {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":authority").map(drop)
            }
            Op::ReadMissing => {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-probe-absent")
                    .map(drop)
            }
            Op::ReadRequestHeaders => {
                read_request_headers();
                Ok(())
            }
            Op::AddHeader => hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-probe", "1"),
            Op::ReplaceHeader => {
                hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-probe", Some("1"))
            }
            Op::ReadStatus => {
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").map(drop)
            }
            Op::Trap => core::arch::wasm32::unreachable(),
        };
    }
}

struct ProbeRoot {
    ops: Rc<Vec<Op>>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        self.ops = Rc::new(config.split(',').filter_map(Op::parse).collect());
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeRequest {
            ops: Rc::clone(&self.ops),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeRequest {
    ops: Rc<Vec<Op>>,
}

impl Context for ProbeRequest {}

impl HttpContext for ProbeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.ops
            .iter()
            .filter(|op| **op != Op::ReadStatus)
            .for_each(|op| op.run());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.ops
            .iter()
            .filter(|op| **op == Op::ReadStatus)
            .for_each(|op| op.run());
        Action::Continue
    }
}
