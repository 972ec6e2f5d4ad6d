//! Tideway's traffic-steering filter.
//!
//! The crate has two layers, as Kuadrant's wasm-shim does:
//! - a host-independent core (every module but `proxy`): configuration,
//!   scoring, affinity, health, failover and trace context, and the policy
//!   that ties them together (`decision`: which inbound headers are trusted,
//!   where the session key comes from, what counts as a failure). It is
//!   plain Rust, unit-tested natively, and reused by the controller so that
//!   what the controller renders is exactly what the filter parses;
//! - `proxy`: the thin proxy-wasm layer, compiled only for `wasm32`, that
//!   converts between Envoy and the core: it hands the core the request
//!   headers and what it asks for, and writes back what the core decided.

// Nothing reachable from the host may panic: a panic traps the VM, and a
// trapped VM takes the listener's traffic with it (Kuadrant's wasm-shim
// denies the same).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod affinity;
pub mod authority;
pub mod closed_loop;
pub mod config;
pub mod config_error;
pub mod decision;
pub mod ewma;
pub mod failover;
pub mod floor;
pub mod hash;
pub mod header_map;
pub mod health;
pub mod metrics;
pub mod rng;
pub mod score;
pub mod shared_stats;
pub mod trace;
pub mod weights;
pub mod weights_channel;
pub mod whatif;

// The proxy-wasm layer links only into the filter's wasm module (WASI);
// clippy checks it natively too (it is never linked there). The browser
// build of the core (wasm32-unknown-unknown, `filter/web`) must not carry
// it: its exports and `env` imports would make the page's module
// uninstantiable.
#[cfg(any(all(target_arch = "wasm32", target_os = "wasi"), clippy))]
mod proxy;
