//! The benchmark harness behind `cargo xtask bench` (binary `tideway-bench`).
//!
//! Kept apart from the tests: the tests assert behaviour, these modules
//! measure cost and steering quality and report numbers. Every comparison
//! runs its variants side by side in one run, alternating A B C A B C …, and
//! reports per-variant medians over the rounds plus the ratios between them;
//! on shared, noisy machines the ratios are the figures that count.
//!
//! - [`load`]: a closed-loop HTTP/1.1 client of our own (per-request latency
//!   and which backend answered, for the steering runs);
//! - [`wrk`]: runs `wrk` and parses its output (the filter-cost runs);
//! - [`cost`]: the filter's cost (throughput, latency, memory, VM start);
//! - [`instructions`]: the filter's cost in instructions per request,
//!   counted by callgrind (exact where throughput is noisy), and the price
//!   of each host call;
//! - [`steering`]: Tideway against Envoy's own load balancers;
//! - [`tail`]: the steering scenarios (a slow destination at 3/6/10× and
//!   8/32/128 connections, a 70/20/10 shift, equal, canary) under the
//!   default scheduler, every round reported;
//! - [`report`]: the markdown table and the JSON file;
//! - [`machine`]: the environment every figure is reported with.
//!
//! All traffic goes to 127.0.0.1 only.

pub mod cost;
pub mod instructions;
pub mod load;
pub mod machine;
pub mod report;
pub mod stats;
pub mod steering;
pub mod tail;
pub mod wrk;

use std::path::PathBuf;

/// The governed service's host in every benchmark configuration.
pub const HOST: &str = "reviews.prod.svc.cluster.local";

/// The three destinations (loopback backends standing for member clusters).
pub const DESTINATIONS: [&str; 3] = ["east", "west", "south"];

/// How long and how often: `--quick` for a smoke test, full by default.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub quick: bool,
}

impl Mode {
    pub fn name(self) -> &'static str {
        if self.quick {
            "quick"
        } else {
            "full"
        }
    }

    /// Pick the quick or the full value.
    pub fn pick<T>(self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// The no-op baseline filter module (`cargo xtask build-wasm` writes it).
pub fn noop_wasm() -> PathBuf {
    built_module("TIDEWAY_NOOP_WASM", "noop_filter.wasm", "no-op")
}

/// The probe filter module (`cargo xtask build-wasm` writes it).
pub fn probe_wasm() -> PathBuf {
    built_module("TIDEWAY_PROBE_WASM", "probe_filter.wasm", "probe")
}

/// A module `cargo xtask build-wasm` writes to `target/tideway/`, or the
/// path in `env_var` (set by `cargo xtask bench`).
fn built_module(env_var: &str, file_name: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::env::workspace_root()
                .join("target/tideway")
                .join(file_name)
        });
    assert!(
        path.exists(),
        "the {what} filter module {} does not exist: run `cargo xtask build-wasm` (or `cargo xtask bench`)",
        path.display()
    );
    path
}

/// Where results and scratch files go: `target/tideway/bench/`.
pub fn out_dir() -> PathBuf {
    crate::env::workspace_root().join("target/tideway/bench")
}
