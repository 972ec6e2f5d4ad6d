//! No host-call failure can trap the VM.
//!
//! The built filter runs in the wasmtime host while one host call at a time
//! answers one error status at a time — every call the module imports,
//! every status of the ABI but `Ok` — from `on_vm_start` on: configuration,
//! requests (routed, spoofed, failing), ticks, probes and span exports. The
//! VM must never trap, every request must continue, requests routed while
//! the request path fails must take the mesh default (no routing header),
//! failures must be counted, and once the host answers again the filter
//! must route again.

use serde_json::json;
use std::time::Duration;
use tideway_host_tests::env;
use tideway_host_tests::wasm_host::{Action, Host, HostBuilder, HttpReply, Status};

const ROUTING_HEADER: &str = "x-tideway-destination";

/// Every host call the filter makes (asserted against the module's imports).
const CALLS: &[&str] = &[
    "proxy_log",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_http_call",
];

/// Calls on the path that routes a request: while one fails, the request
/// is left to the mesh.
const ROUTING_PATH: &[&str] = &[
    "proxy_get_current_time_nanoseconds",
    "proxy_get_header_map_pairs",
    "proxy_add_header_map_value",
];

/// Reads, where `NotFound` only means "absent" (not counted as a failure).
const READS: &[&str] = &[
    "proxy_get_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_get_property",
    "proxy_get_shared_data",
];

const STATUSES: &[Status] = &[
    Status::NotFound,
    Status::BadArgument,
    Status::SerializationFailure,
    Status::ParseFailure,
    Status::BadExpression,
    Status::InvalidMemoryAccess,
    Status::Empty,
    Status::CasMismatch,
    Status::ResultMismatch,
    Status::InternalFailure,
    Status::BrokenConnection,
    Status::Unimplemented,
];

/// Every path at once: affinity, trusted principals, a probe, span export,
/// the decision header.
fn config() -> serde_json::Value {
    json!({
        "services": [{
            "name": "reviews",
            "hosts": ["reviews.prod.svc.cluster.local"],
            "affinity": {"source": "header", "name": "x-user"},
            "probe": {"cluster": "outbound|9080|{destination}|reviews", "path": "/healthz"},
            "destinations": [
                {"name": "east", "weight": 1},
                {"name": "west", "weight": 1}
            ]
        }],
        "scheduler": {"ejectBaseMs": 1000, "tickMs": 100},
        "trust": {"principals": ["spiffe://cluster.local/ns/ops/sa/driver"]},
        "tracing": {"mode": "span", "collector": {"cluster": "otel", "batchSize": 2}},
        "decisionHeader": true
    })
}

fn request(user: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":path", "/".into()),
        (":authority", "reviews.prod.svc.cluster.local".into()),
        ("x-user", user.into()),
    ]
}

/// One request through the host; its upstream routing header.
fn serve(host: &mut Host, headers: &[(&str, String)], status: &str) -> Option<String> {
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ex = host
        .exchange(0, &pairs, &[(":status", status)])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs_text()));
    assert_eq!(ex.request_action, Action::Continue);
    assert_eq!(ex.response_action, Some(Action::Continue));
    ex.upstream_request.get(ROUTING_HEADER)
}

/// Requests of every kind, failures that eject and probe, ticks that
/// merge and export. Returns the routing header of each request that came
/// without one (a spoofed one may be replaced even while adds fail).
fn drive(host: &mut Host) -> Vec<Option<String>> {
    let mut routed = Vec::new();
    for i in 0..12 {
        let mut headers = request(&format!("user-{i}"));
        let spoofed = i % 3 == 0;
        if spoofed {
            // A spoofed routing header and a reserved header: the principal
            // is read, and found untrusted.
            headers.push((ROUTING_HEADER, "west".into()));
            headers.push(("x-tideway-debug", "1".into()));
        }
        let status = if i < 8 { "503" } else { "200" };
        let forwarded = serve(host, &headers, status);
        if !spoofed {
            routed.push(forwarded);
        }
    }
    // A request that never gets an answer.
    let s = host.stream(0).expect("stream");
    let headers = request("gone");
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        host.request_headers(s, &pairs, true).expect("request"),
        Action::Continue
    );
    host.finish(s).expect("finish");
    host.drop_stream(s);
    // Ticks: shared data, probes (answered), span export (answered).
    host.advance(Duration::from_secs(3)).expect("advance");
    routed
}

fn builder() -> HostBuilder {
    HostBuilder::from_file(env::filter_wasm())
        .expect("filter wasm readable")
        .plugin_config_json(&config())
        .cluster_id("cluster-a")
        .locality("region-1", "zone-a", "")
}

fn answer_calls(host: &mut Host) {
    host.on_http_call(None, HttpReply::status(200, "ok"), Duration::from_millis(5));
}

#[test]
fn the_list_covers_every_host_call_the_filter_imports() {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::from_file(&engine, env::filter_wasm()).expect("module");
    let mut missing: Vec<String> = module
        .imports()
        .filter(|i| i.module() == "env")
        .map(|i| i.name().to_string())
        .filter(|n| !CALLS.contains(&n.as_str()))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "the filter imports host calls this test never fails: {missing:?}"
    );
    let host = builder().start().expect("start");
    assert!(
        host.stubbed_imports.is_empty(),
        "{:?}",
        host.stubbed_imports
    );
}

#[test]
fn every_host_call_failing_with_every_status_never_traps_and_leaves_routing_to_the_mesh() {
    let mut failures = Vec::new();
    for call in CALLS {
        for status in STATUSES {
            let label = format!("{call} answering {status:?}");
            let mut host = builder()
                .failing_call(call, *status)
                .build()
                .unwrap_or_else(|e| panic!("{label}: {e:#}"));
            answer_calls(&mut host);
            let routed = drive(&mut host);
            if let Some(trap) = host.failure(0) {
                failures.push(format!("{label}: trapped: {trap}"));
                continue;
            }
            if ROUTING_PATH.contains(call) && *status != Status::NotFound {
                if let Some(r) = routed.iter().flatten().next() {
                    failures.push(format!("{label}: a request was routed to {r}"));
                }
            }
            // The host answers again: the filter serves and routes.
            host.clear_failing_calls();
            let counted = host
                .metric("tideway.host_call_errors")
                .map_or(0, |m| m.value);
            let reconfigured = host
                .reconfigure(config().to_string())
                .unwrap_or_else(|e| panic!("{label}: {e:#}"));
            host.advance(Duration::from_millis(200)).expect("tick");
            let after = host
                .metric("tideway.host_call_errors")
                .map_or(0, |m| m.value);
            let counts_itself = !matches!(*call, "proxy_define_metric" | "proxy_increment_metric");
            // A CAS mismatch on a write is the host saying another worker
            // wrote first: retried, not a failure.
            let expected = (READS.contains(call) && *status == Status::NotFound)
                || (*call == "proxy_set_shared_data" && *status == Status::CasMismatch);
            if counts_itself && !expected && counted.max(after) == 0 {
                failures.push(format!("{label}: no failure counted"));
            }
            if !reconfigured {
                failures.push(format!("{label}: the good configuration was refused"));
                continue;
            }
            let now = serve(&mut host, &request("after"), "200");
            if now.is_none() {
                failures.push(format!("{label}: not routed once the host recovered"));
            }
            if let Some(trap) = host.failure(0) {
                failures.push(format!("{label}: trapped after recovery: {trap}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_spoofed_routing_header_never_survives_a_failed_replace() {
    // Replacing the client's routing header fails: the filter removes it
    // instead, so the client cannot choose the destination.
    let mut host = builder()
        .failing_call("proxy_replace_header_map_value", Status::InternalFailure)
        .start()
        .expect("start");
    let mut headers = request("mallory");
    headers.push((ROUTING_HEADER, "west".into()));
    assert_eq!(serve(&mut host, &headers, "200"), None);
}
