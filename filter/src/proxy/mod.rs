//! The proxy-wasm layer: speaks ABI 0.2.1 to Envoy and nothing else.
//!
//! It converts between the host and the core and decides nothing: a request's
//! headers go to `Engine::route` (with what it asks for: the clock, the
//! peer's identity, header writes, entropy), what the response shows goes to
//! `Engine::complete`, and what the core reports back (an ejection, a span,
//! a replaced shared record) becomes counters and log lines.
//!
//! No host-call failure can trap the VM: every call goes through `abi`,
//! whose wrappers return the host's status instead of panicking (the SDK's
//! would), and the callbacks come through `exports`, not the SDK's
//! dispatcher. A failed call means "decide nothing, let the mesh route":
//! the request passes with the mesh's default route, nothing is recorded
//! about its destination, and the failure is counted in
//! `tideway.host_call_errors`.
//!
//! Host calls are what a request pays for here, not the scoring: measured
//! with callgrind on Envoy 1.40 (`cargo xtask bench -- --only instructions`),
//! a plain host call costs about 2k instructions and any call that returns
//! bytes about 9k more, because Envoy must call back into the VM to allocate
//! them. So per request this layer makes: one call for the whole request
//! header map (read in place by `header_map`), one for the clock, one write
//! per header it sets (`add` when the header was absent, which spares Envoy
//! a lookup), and on the response one read of `:status` and one of the
//! clock — both clock reads only for the requests the core times, which at
//! high rates is one in several per destination (`decision::timing`). It
//! does not call `clear_route_cache`: Envoy clears the route cache
//! itself on every request-header change (`Context::replaceHeaderMapValue`
//! and `addHeaderMapValue` in `source/extensions/common/wasm/context.cc`).
//! Counters are kept in the VM and added to Envoy's on the tick, and trace
//! ids come from a pool of host entropy refilled 4 KiB at a time. Shared
//! data is touched on the tick and after a failed request, never on a
//! successful one.
//!
//! Modules, one concern each:
//! - `exports`: the callbacks Envoy calls, and the contexts they reach;
//! - `abi`: the host calls, as functions that return the host's status;
//! - `worker`: one root context's state, and its (re)configuration;
//! - `request`: the per-request callbacks (route, response, end of stream);
//! - `tick`: the tick's work — merge, weights polling, probes, span export
//!   — and the answers to the calls it sends;
//! - `weights`: the weights channel's polls and events;
//! - `metrics`: metric ids, counting and the logs of what the core reports;
//! - `host`: the core's host traits over the ABI, and the proxy's identity.

mod abi;
mod exports;
mod host;
mod metrics;
mod request;
mod tick;
mod weights;
mod worker;

use abi::Level;
use worker::Worker;

fn log(level: Level, message: &str) {
    abi::log(level, message);
}

/// The host's clock; 0 when it fails (only where a time is informational).
fn now_or_zero() -> u64 {
    abi::now_ns().unwrap_or(0)
}
