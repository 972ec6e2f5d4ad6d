//! What requests get while the filter's VM is down, under each
//! `failure_policy` Istio's `failStrategy` can set — the evidence for the
//! `FAIL_OPEN` that `tideway render` writes into every WasmPlugin.
//!
//! The VM is made to crash the way a faulty filter would: the probe filter
//! (`host-tests/probe-filter`) configured with `trap` executes `unreachable`
//! in its request-headers callback. The route table is the one a render
//! produces, reduced to its shape: one route per destination on the routing
//! header, then the default route (`mesh-default`, every backend).

use tideway_host_tests::backend::Backend;
use tideway_host_tests::envoy::{Client, Envoy, EnvoySpec};

fn probe_wasm() -> std::path::PathBuf {
    let path = tideway_host_tests::env::workspace_root().join("target/tideway/probe_filter.wasm");
    assert!(
        path.exists(),
        "{} does not exist: run `cargo xtask build-wasm`",
        path.display()
    );
    path
}

/// Statuses of `n` requests through an Envoy whose filter traps on every
/// request, under `policy`; and how many requests reached the backend.
fn run(policy: &str, n: usize) -> (Vec<u16>, u64) {
    let backend = Backend::start("east", false).expect("backend");
    let mut spec = EnvoySpec::new("trap", &[("east", backend.port)]);
    spec.wasm = probe_wasm();
    spec.failure_policy = Some(policy.to_string());
    let envoy = Envoy::start(&spec).unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new();
    let statuses = (0..n)
        .map(|_| {
            client
                .get(&envoy.url("/"), "reviews.production.svc.cluster.local", &[])
                .map(|r| r.status)
                .unwrap_or_else(|e| panic!("{policy}: {e}\n{}", envoy.log_tail(30)))
        })
        .collect();
    (statuses, backend.served())
}

/// The request whose callback crashes the VM is lost (Envoy answers 503);
/// from then on the filter is bypassed and every request is served by the
/// default route. (Measured with Envoy 1.40: `[503, 200, 200, …]`.)
#[test]
fn fail_open_serves_every_request_after_the_crash_by_the_default_route() {
    let (statuses, served) = run("FAIL_OPEN", 20);
    assert_eq!(statuses[0], 503, "the crashing request: {statuses:?}");
    assert!(
        statuses[1..].iter().all(|s| *s == 200),
        "FAIL_OPEN: every later request is served: {statuses:?}"
    );
    assert_eq!(served, 19, "by the backend, through the default route");
}

#[test]
fn fail_closed_would_fail_requests_which_is_why_render_refuses_it() {
    let (statuses, served) = run("FAIL_CLOSED", 10);
    assert!(
        statuses.iter().skip(1).all(|s| *s >= 500),
        "FAIL_CLOSED: requests after the crash fail: {statuses:?}"
    );
    assert_eq!(served, 0, "nothing reaches the backend");
}

/// `FAIL_RELOAD` (accepted by render, not its default): a new VM for the
/// next request — which, for a filter that crashes on every request, crashes
/// again: every request fails, where FAIL_OPEN loses only the first.
#[test]
fn fail_reload_loses_every_request_a_crashing_vm_sees() {
    let (statuses, served) = run("FAIL_RELOAD", 10);
    assert!(
        statuses.iter().all(|s| *s == 503),
        "FAIL_RELOAD: {statuses:?}"
    );
    assert_eq!(served, 0);
}
