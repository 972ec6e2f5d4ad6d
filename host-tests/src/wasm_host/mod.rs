//! A proxy-wasm ABI 0.2.1 host on wasmtime, for tests.
//!
//! Real Envoy proves the filter works; this host lets tests control what
//! Envoy cannot: the clock, the number of worker VMs, shared data,
//! HTTP-call replies, timeouts and failures — thousands of requests in
//! milliseconds, reproducibly, with no network.
//!
//! Compared with `proxy-wasm/test-framework` (wasmtime 23, one VM, stubbed
//! shared data), this host runs several workers of one module against one
//! shared-data store with Envoy's CAS semantics, and a fake clock that
//! drives ticks and timeouts.
//!
//! Modules, one concept each:
//! - [`abi`]: status codes and enums of the ABI;
//! - [`pairs`]: header maps and their wire format;
//! - [`memory`]: bounds-checked guest memory access and allocation;
//! - [`clock`]: the controllable clock;
//! - [`shared_data`]: shared data and queues;
//! - [`metrics`]: counters, gauges, histograms;
//! - [`properties`]: `get_property` values encoded as Envoy encodes them;
//! - [`http_call`]: dispatched calls and scripted replies;
//! - [`logs`]: captured logs;
//! - [`state`]: per-VM and per-stream state;
//! - [`imports`]: the `env.proxy_*` host functions;
//! - [`unimplemented`]: what answers `Unimplemented` (never a fake success);
//! - [`vm`]: one worker VM;
//! - [`host`]: the test API ([`HostBuilder`], [`Host`], [`HttpStream`]).
//!
//! WASI preview1 (`random_get`, clocks, `fd_write`, environ, `proc_exit`)
//! comes from `wasmtime_wasi::p1`, wired to the fake clock, seeded
//! randomness, and stdout/stderr captured into the logs.

pub mod abi;
pub mod clock;
pub mod host;
pub mod http_call;
pub mod imports;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod pairs;
pub mod properties;
pub mod shared_data;
pub mod state;
pub mod unimplemented;
pub mod vm;

pub use abi::{Action, LogLevel, Status};
pub use clock::FakeClock;
pub use host::{Exchange, Host, HostBuilder, HttpStream};
pub use http_call::{HttpCall, HttpReply, HttpRule};
pub use logs::{LogRecord, LogSource};
pub use pairs::HeaderMap;
pub use properties::{Locality, PropValue};
